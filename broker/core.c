/*
 * core.c — what a search and a sticker lookup do, whichever door they came in by (HTTP in
 * http.c, ZeroMQ in front.c): check the request, analyze the query once, fetch the user's
 * centroids (cached), fan out one SearchRequest to every shard (encoded once, fan.c stamping
 * each attempt's request id), merge the replies' hits with ps_merge_hits exactly as a single node
 * ranks them, and with explain fetch the stored fields of every hit from the shard holding it —
 * every hit's GetSticker sent at once, one round whatever the hits' shards.
 *
 * Nothing here waits: a search is a job that lives from broker_core_search until its done
 * callback, and the lane serves other requests meanwhile (many jobs at once per lane).
 *
 * A shard that no replica answered in time makes the answer partial (its failure recorded);
 * when no shard answers the request fails with PS_EUNAVAIL. Input errors are PS_E* codes
 * whose ps_err_http_status is a 4xx, returned before anything is sent.
 *
 * A click is checked here, its sticker's embedding fetched from the shard holding it, and then
 * it leaves through clicks.c under its click id (the client's, or one derived here) without the
 * lane waiting for the profile primary: the door that took it answers when clicks.c reports.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"
#include "ps/index.h"
#include "ps/log.h"
#include "ps/rand.h"
#include "ps/wire_engine.h"

struct broker_core {
    broker_fan_t *fan;
    broker_version_t *version; /* the cluster's snapshot version (shared; NULL: the shards') */
    broker_clicks_t *clicks;   /* clicks in flight to the profile primary (NULL: none) */
    broker_profcache_t *profiles;
    broker_metrics_t *metrics;
    broker_limits lim;
    ps_analyzer_t *analyzer;
    ps_tokens tokens;                  /* scratch of the search being started */
    const char **tok;                  /* PS_WIRE_MAX_TOKENS pointers into tokens */
    uint32_t depth_R, depth_ns, depth; /* ps_shard_depth(depth_R, depth_ns), the last asked */
};

uint32_t broker_core_max_k(const broker_core_t *c)
{
    return c->lim.live ? atomic_load(&c->lim.live->max_k) : c->lim.max_k;
}

static size_t query_cap(const broker_core_t *c)
{
    return c->lim.live ? (size_t)atomic_load(&c->lim.live->max_query_bytes)
                       : c->lim.max_query_bytes;
}

double broker_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

broker_core_t *broker_core_new(broker_fan_t *fan, broker_profcache_t *profiles,
                               broker_metrics_t *metrics, const broker_limits *lim, ps_err *err)
{
    broker_core_t *c = calloc(1, sizeof *c);
    if (!c) goto oom;
    ps_tokens_init(&c->tokens);
    c->fan = fan;
    c->profiles = profiles;
    c->metrics = metrics;
    c->lim = *lim;
    if (!(c->tok = calloc(PS_WIRE_MAX_TOKENS, sizeof *c->tok))) goto oom;
    if (!(c->analyzer = ps_analyzer_new(err))) {
        broker_core_free(c);
        return NULL;
    }
    return c;
oom:
    broker_core_free(c);
    ps_err_set(err, PS_ENOMEM, "out of memory for the search state");
    return NULL;
}

void broker_core_free(broker_core_t *c)
{
    if (!c) return;
    ps_analyzer_free(c->analyzer);
    ps_tokens_free(&c->tokens);
    free(c->tok);
    free(c);
}

broker_fan_t *broker_core_fan(broker_core_t *c)
{
    return c->fan;
}

uint32_t broker_core_nshards(const broker_core_t *c)
{
    return broker_fan_nshards(c->fan);
}

void broker_core_set_clicks(broker_core_t *c, broker_clicks_t *clicks)
{
    c->clicks = clicks;
}

void broker_core_set_version(broker_core_t *c, broker_version_t *v)
{
    c->version = v;
}

/* The version a request starts with: every shard call it makes names this one. */
static uint64_t want_version(const broker_core_t *c)
{
    return c->version ? atomic_load(&c->version->current) : 0;
}

/* ---- search ------------------------------------------------------------------------------ */

typedef struct sticker_args {
    uint64_t id, version;
    const char *trace;  /* the request's trace id, or NULL */
    int with_embedding; /* a click's: the sticker's embedding too */
} sticker_args;

static int encode_get_sticker(void *arg, uint64_t request_id, uint32_t deadline_ms, uint8_t **buf,
                              size_t *len, ps_err *err)
{
    const sticker_args *a = arg;
    int rc = ps_wire_encode_get_sticker_emb(request_id, deadline_ms, a->id, a->with_embedding,
                                            a->version, buf, len, err);
    if (!rc && (rc = ps_wire_append_trace(buf, len, a->trace, err))) {
        free(*buf);
        *buf = NULL;
    }
    return rc;
}

/* A search from broker_core_search to its done callback. */
typedef struct search_job {
    broker_core_t *c;
    broker_search_fn done;
    void *arg;
    uint32_t ns, R, k;
    uint32_t keep;     /* the recall depth of the answer: R less the excluded ids' room */
    uint32_t offset;   /* ranks skipped */
    uint64_t *exclude; /* nexclude ids never returned */
    size_t nexclude;
    int allow_partial;
    double t_end;     /* a per-request timeout's end (broker_now), or 0 */
    char *trace;      /* the request's trace id, or NULL */
    uint32_t depth;   /* hits asked of each shard in the first round (<= R) */
    uint64_t version; /* asked for (0: the shards' active one) */
    int explain, personalized;
    uint8_t *frame;   /* the SearchRequest every call sends (attempts re-send it) */
    uint8_t *frame_r; /* the same at depth R, for a second round (depth < R) */
    size_t flen_r;
    broker_call *calls;       /* ns */
    broker_call *calls2;      /* ns: the second round's */
    broker_failure *failures; /* ns */
    ps_hit *hits;             /* ns × R: shard s's hits at s × R, then the merge */
    uint32_t *nhit;           /* ns: hits of shard s (answered shards) */
    uint8_t *answered;        /* ns */
    ps_hit *scratch;          /* ns × depth: the first round's hits in recall order */
    broker_result res;
    /* explain: one call per hit */
    broker_call *fcalls;
    sticker_args *fargs;
    Persrv__Envelope **fenv; /* the replies holding fields[i] */
    Persrv__GetStickerReply **fields;
} search_job;

static void job_free(search_job *j)
{
    if (!j) return;
    for (size_t i = 0; j->fenv && i < j->res.nhits; i++) ps_wire_free(j->fenv[i]);
    free(j->frame);
    free(j->frame_r);
    free(j->exclude);
    free(j->trace);
    free(j->calls);
    free(j->calls2);
    free(j->failures);
    free(j->hits);
    free(j->nhit);
    free(j->answered);
    free(j->scratch);
    free(j->fcalls);
    free(j->fargs);
    free(j->fenv);
    free(j->fields);
    free(j);
}

static void job_finish(search_job *j, int rc, const ps_err *err)
{
    j->done(j->arg, rc, err, rc == 0 || rc == PS_EUNAVAIL ? &j->res : NULL);
    job_free(j);
}

/* Explain's round has ended: the fields of every hit whose shard answered. */
static void fields_done(void *arg, broker_call *calls, size_t n)
{
    search_job *j = arg;
    for (size_t i = 0; i < n; i++) {
        broker_call *call = &calls[i];
        broker_metrics_shard(j->c->metrics, call->shard, call->reply != NULL, call->seconds,
                             call->failovers);
        if (!call->reply) continue;
        const Persrv__GetStickerReply *r = call->reply->sticker_reply;
        if (r->found && r->id == j->fargs[i].id) {
            j->fenv[i] = call->reply;
            j->fields[i] = call->reply->sticker_reply;
        } else {
            ps_wire_free(call->reply);
        }
        call->reply = NULL;
    }
    j->res.fields = j->fields;
    job_finish(j, 0, NULL);
}

/* What is left of a per-request timeout, in ms for a call's budget (0: no timeout; at least 1). */
static uint32_t budget_left(const search_job *j)
{
    if (j->t_end == 0) return 0;
    double ms = (j->t_end - broker_now()) * 1e3;
    return ms < 1 ? 1 : (uint32_t)ms;
}

/* Start fetching the stored fields of the merged hits, all in one round. */
static int fetch_fields(search_job *j, ps_err *err)
{
    size_t n = j->res.nhits;
    if (!(j->fcalls = calloc(n, sizeof *j->fcalls)) || !(j->fargs = calloc(n, sizeof *j->fargs)) ||
        !(j->fenv = calloc(n, sizeof *j->fenv)) || !(j->fields = calloc(n, sizeof *j->fields)))
        return ps_err_set(err, PS_ENOMEM, "out of memory for explain");
    for (size_t i = 0; i < n; i++) {
        j->fargs[i] = (sticker_args){j->hits[i].id, j->res.version, j->trace, 0};
        j->fcalls[i] = (broker_call){.shard = ps_jump_hash(j->hits[i].id, j->ns),
                                     .replica = -1,
                                     .expect = PERSRV__ENVELOPE__BODY_STICKER_REPLY,
                                     .encode = encode_get_sticker,
                                     .arg = &j->fargs[i],
                                     .budget_ms = budget_left(j)};
    }
    return broker_fan_start(j->c->fan, j->fcalls, n, fields_done, j, err);
}

/* Take call's reply as shard s's hits (at most limit) into its slot of j->hits; on any fault
 * call->reason says why and the slot is left as it was. Returns 1 when taken. */
static int take_reply(search_job *j, broker_call *call, uint32_t s, uint32_t limit)
{
    broker_result *res = &j->res;
    int ok = 0;
    if (!call->reply) return 0;
    size_t got = 0;
    ps_err e = {0, ""};
    const Persrv__SearchReply *r = call->reply->search_reply;
    if (r->shard != s) {
        snprintf(call->reason, sizeof call->reason, "reply from shard %u, not %u", r->shard, s);
    } else if (ps_wire_reply_nhits(r) > limit) {
        snprintf(call->reason, sizeof call->reason, "%zu hits, more than the %u asked for",
                 ps_wire_reply_nhits(r), limit);
    } else if (j->version ? r->snapshot_version != j->version
                          : res->version && r->snapshot_version != res->version) {
        /* never merge two versions: this shard's answer does not count */
        snprintf(call->reason, sizeof call->reason, "answered from snapshot version %llu, not %llu",
                 (unsigned long long)r->snapshot_version,
                 (unsigned long long)(j->version ? j->version : res->version));
    } else if (ps_wire_to_hits(r, j->hits + (size_t)s * j->R, j->R, &got, &e)) {
        snprintf(call->reason, sizeof call->reason, "%s", e.msg);
    } else {
        j->nhit[s] = (uint32_t)got;
        res->version = r->snapshot_version;
        ok = 1;
    }
    ps_wire_free(call->reply);
    call->reply = NULL;
    return ok;
}

static void record_failure(search_job *j, const broker_call *call, uint32_t s)
{
    broker_result *res = &j->res;
    res->timed_out |= call->timed_out;
    broker_failure *f = &j->failures[res->nfailures++];
    f->shard = s;
    snprintf(f->reason, sizeof f->reason, "%s", call->reason);
}

/* After a first round at depth < R: the shards whose unseen hits could still be in the top R.
 * A shard that returned fewer than depth hits has no more. Any other shard's unseen hits all
 * rank after its last one (it returned its best depth in recall order, ties by id), so it is
 * done when that last hit ranks no better than the R-th of everything returned; when fewer
 * than R came back in all, it is not. Marks them in need[]; returns how many. */
static uint32_t incomplete(search_job *j, uint8_t *need)
{
    size_t n = 0;
    for (uint32_t s = 0; s < j->ns; s++)
        if (j->answered[s]) {
            memcpy(j->scratch + n, j->hits + (size_t)s * j->R, j->nhit[s] * sizeof *j->hits);
            n += j->nhit[s];
        }
    const ps_hit *rth = NULL;
    if (n >= j->R) {
        qsort(j->scratch, n, sizeof *j->scratch, ps_hit_cmp_recall);
        rth = &j->scratch[j->R - 1];
    }
    uint32_t count = 0;
    for (uint32_t s = 0; s < j->ns; s++) {
        need[s] = 0;
        if (!j->answered[s] || j->nhit[s] < j->depth) continue;
        const ps_hit *h = j->hits + (size_t)s * j->R, *last = &h[0];
        for (uint32_t i = 1; i < j->nhit[s]; i++)
            if (ps_hit_cmp_recall(last, &h[i]) < 0) last = &h[i];
        if (rth && ps_hit_cmp_recall(last, rth) >= 0) continue;
        need[s] = 1;
        count++;
    }
    return count;
}

/* Merge the answered shards' hits into the top k and finish (or fetch explain's fields). */
static void merge_finish(search_job *j)
{
    broker_core_t *c = j->c;
    broker_result *res = &j->res;
    size_t nh = 0;
    for (uint32_t s = 0; s < j->ns; s++)
        if (j->answered[s]) {
            memmove(j->hits + nh, j->hits + (size_t)s * j->R, j->nhit[s] * sizeof *j->hits);
            nh += j->nhit[s];
        }
    if (res->ok < j->ns) {
        ps_log(PS_LOG_WARN, "broker", "partial", "shards=%u failed=%u trace=%s", j->ns,
               j->ns - res->ok, j->trace ? j->trace : "-");
        if (!j->allow_partial) {
            ps_err e;
            int code = res->timed_out ? PS_ETIMEDOUT : PS_EUNAVAIL;
            ps_err_set(&e, code,
                       "%u of %u shards did not answer (shard %u: %s); allow_partial is "
                       "false",
                       j->ns - res->ok, j->ns, res->failures[0].shard, res->failures[0].reason);
            job_finish(j, code, &e);
            return;
        }
    }
    /* Not knowing the cluster's version yet, adopt the one every shard answered from. */
    if (!j->version && res->ok == j->ns && c->version)
        broker_version_adopt(c->version, res->version);
    res->personalized = j->personalized;
    res->hits = j->hits;
    res->nhits = ps_rank_hits(j->hits, nh, j->keep, j->exclude, j->nexclude, j->offset, j->k);
    if (j->explain && res->nhits) {
        ps_err e = {0, ""};
        int rc = fetch_fields(j, &e);
        if (rc) job_finish(j, rc, &e);
        return;
    }
    if (j->explain) res->fields = j->fields; /* no hit: nothing to fetch */
    job_finish(j, 0, NULL);
}

/* The second round has ended: a shard that answered at depth R replaces its first-round hits;
 * one that did not counts as not answered (its first-round hits may lack some of its share, and
 * a reply that failed to decode may have overwritten them), so the answer is partial. */
static void search_done2(void *arg, broker_call *calls, size_t n)
{
    search_job *j = arg;
    for (size_t i = 0; i < n; i++) {
        broker_call *call = &calls[i];
        uint32_t s = call->shard;
        int ok = take_reply(j, call, s, j->R);
        broker_metrics_shard(j->c->metrics, s, ok, call->seconds, call->failovers);
        if (!ok) {
            if (!call->reason[0]) snprintf(call->reason, sizeof call->reason, "no answer");
            record_failure(j, call, s);
            j->answered[s] = 0;
            j->res.ok--;
        }
    }
    merge_finish(j);
}

/* Take shard s's first-round answer (call: its reply, or why there is none). */
static void first_round_take(search_job *j, broker_call *call, uint32_t s)
{
    j->answered[s] = (uint8_t)take_reply(j, call, s, j->depth);
    j->res.ok += j->answered[s];
    if (call->reason[0]) record_failure(j, call, s);
}

static void first_round_end(search_job *j);

static void search_done(void *arg, broker_call *calls, size_t n)
{
    search_job *j = arg;
    (void)n;
    for (uint32_t s = 0; s < j->ns; s++) {
        broker_call *call = &calls[s];
        first_round_take(j, call, s);
        broker_metrics_shard(j->c->metrics, s, call->reason[0] == '\0', call->seconds,
                             call->failovers);
    }
    first_round_end(j);
}

/* Every shard's first-round answer is in: merge, or first ask again at depth R the shards whose
 * hits may not hold all of their share of the top R. */
static void first_round_end(search_job *j)
{
    broker_core_t *c = j->c;
    broker_result *res = &j->res;
    res->nshards = j->ns;
    res->failures = j->failures;
    if (res->ok == 0) {
        ps_err e;
        ps_err_set(&e, PS_EUNAVAIL, "no shard answered (shard %u: %s)", j->failures[0].shard,
                   j->failures[0].reason);
        job_finish(j, PS_EUNAVAIL, &e);
        return;
    }
    if (j->depth < j->R) {
        uint8_t need[j->ns];
        uint32_t n2 = incomplete(j, need), m = 0;
        if (n2 > 0) {
            for (uint32_t s = 0; s < j->ns; s++)
                if (need[s])
                    j->calls2[m++] = (broker_call){.shard = s,
                                                   .replica = -1,
                                                   .expect = PERSRV__ENVELOPE__BODY_SEARCH_REPLY,
                                                   .frame = j->frame_r,
                                                   .len = j->flen_r,
                                                   .budget_ms = budget_left(j)};
            broker_metrics_second_round(c->metrics, n2);
            ps_err e = {0, ""};
            int rc = broker_fan_start(c->fan, j->calls2, m, search_done2, j, &e);
            if (rc) job_finish(j, rc, &e);
            return;
        }
    }
    merge_finish(j);
}

/* A user id (valid UTF-8) free of control characters: C0, DEL and C1 (U+0080..U+009F, UTF-8
 * C2 80..C2 9F), which would let an id forge log lines or terminal output. */
static int printable(const char *u, size_t n)
{
    const unsigned char *p = (const unsigned char *)u;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < 0x20 || p[i] == 0x7f) return 0;
        if (p[i] == 0xC2 && i + 1 < n && p[i + 1] >= 0x80 && p[i + 1] <= 0x9F) return 0;
    }
    return 1;
}

/* Check q, analyze it and build its job: the shards' request frame (j->frame, and j->frame_r
 * for a second round), at a first-round depth below R unless one_round. Returns 0 with *out, or
 * a PS_E* code (nothing built). */
static int search_prepare(broker_core_t *c, const broker_query *q, int one_round,
                          broker_search_fn done, void *arg, search_job **out, size_t *flen_out,
                          ps_err *err)
{
    *out = NULL;
    uint32_t k = q->k ? q->k : BROKER_DEFAULT_K;
    uint32_t max_k = broker_core_max_k(c);
    size_t max_query_bytes = query_cap(c);
    if (k > max_k) return ps_err_set(err, PS_EINVAL, "k: must be an integer in 1..%u", max_k);
    if (!q->q || q->qlen == 0) return ps_err_set(err, PS_EQUERY, "q: a query is required");
    if (q->qlen > max_query_bytes)
        return ps_err_set(err, PS_ETOOBIG, "q: %zu bytes, more than max-query-bytes %zu", q->qlen,
                          max_query_bytes);
    const char *user = q->user && q->user_len ? q->user : NULL;
    if (user && (q->user_len > BROKER_MAX_USER_BYTES || strlen(user) != q->user_len ||
                 !ps_utf8_valid(user, q->user_len) || !printable(user, q->user_len)))
        return ps_err_set(err, PS_EINVAL,
                          "user: must be valid UTF-8 without control characters, at most %d bytes",
                          BROKER_MAX_USER_BYTES);

    /* Analyze once; the shards take the distinct tokens as they are. */
    int rc;
    if ((rc = ps_analyze(c->analyzer, q->q, q->qlen, "q", &c->tokens, err))) return rc;
    ps_tokens_distinct(&c->tokens);
    if (c->tokens.n == 0) return ps_err_set(err, PS_EQUERY, "q: the query has no searchable token");
    if (c->tokens.n > PS_WIRE_MAX_TOKENS)
        return ps_err_set(err, PS_ETOOBIG, "q: %zu distinct tokens, more than %d", c->tokens.n,
                          PS_WIRE_MAX_TOKENS);
    for (size_t i = 0; i < c->tokens.n; i++) c->tok[i] = c->tokens.text + c->tokens.off[i];

    uint32_t keep = c->lim.R > k ? c->lim.R : k, ns = broker_fan_nshards(c->fan);
    if (q->offset && (uint64_t)q->offset + k > keep)
        return ps_err_set(err, PS_EINVAL,
                          "offset: offset + k = %llu is beyond the recall depth %u (paging stops "
                          "at R)",
                          (unsigned long long)q->offset + k, keep);
    if (q->nexclude > BROKER_MAX_EXCLUDE)
        return ps_err_set(err, PS_ETOOBIG, "exclude: more than %d ids", BROKER_MAX_EXCLUDE);
    if (q->timeout_ms > BROKER_MAX_TIMEOUT)
        return ps_err_set(err, PS_EINVAL, "timeout: must be 1..%d ms", BROKER_MAX_TIMEOUT);
    /* The excluded ids may be among the best: the shards return that many more. */
    uint32_t R = keep + (uint32_t)q->nexclude;
    if (R > PS_SEARCH_MAX_R) R = PS_SEARCH_MAX_R;
    ps_search_opts opts;
    ps_search_opts_default(&opts);
    opts.R = R;
    opts.k = k;
    opts.profile = user ? broker_profcache_get_traced(c->profiles, user, q->trace) : NULL;

    /* Each shard is asked first for its best `depth`, its share of R with room for all but
     * ~1 search in 1,000 (ps_shard_depth); the few shards that may hold more of the top R are
     * asked again at R (search_done). R rarely changes: the depth is kept for the last one. */
    uint32_t depth = R;
    if (ns > 1 && !one_round) {
        if (c->lim.shard_depth) {
            depth = c->lim.shard_depth;
        } else {
            if (c->depth_R != R || c->depth_ns != ns) {
                c->depth = ps_shard_depth(R, ns);
                c->depth_R = R;
                c->depth_ns = ns;
            }
            depth = c->depth;
        }
        if (depth > R) depth = R;
    }
    search_job *j = calloc(1, sizeof *j);
    if (!j || !(j->calls = calloc(ns, sizeof *j->calls)) ||
        !(j->calls2 = calloc(ns, sizeof *j->calls2)) ||
        !(j->failures = calloc(ns, sizeof *j->failures)) ||
        !(j->hits = malloc((size_t)ns * R * sizeof *j->hits)) ||
        !(j->nhit = calloc(ns, sizeof *j->nhit)) || !(j->answered = calloc(ns, 1)) ||
        !(j->scratch = malloc((size_t)ns * depth * sizeof *j->scratch)) ||
        (q->nexclude && !(j->exclude = malloc(q->nexclude * sizeof *j->exclude))) ||
        (q->trace && !(j->trace = strdup(q->trace)))) {
        job_free(j);
        return ps_err_set(err, PS_ENOMEM, "out of memory for a search");
    }
    j->depth = depth;
    j->c = c;
    j->done = done;
    j->arg = arg;
    j->ns = ns;
    j->R = R;
    j->k = k;
    j->version = want_version(c);
    j->explain = q->explain;
    j->personalized = opts.profile != NULL;
    j->keep = keep;
    j->offset = q->offset;
    j->nexclude = q->nexclude;
    if (q->nexclude) memcpy(j->exclude, q->exclude, q->nexclude * sizeof *j->exclude);
    j->allow_partial = q->allow_partial;
    j->t_end = q->timeout_ms ? broker_now() + q->timeout_ms / 1e3 : 0;

    /* One request for every shard, encoded once (request_id 0, no deadline: the fan-out stamps
     * each attempt's). An encoding failure is the client's input (nothing was sent). */
    size_t flen = 0;
    if (depth < R && ((rc = ps_wire_encode_search(0, 0, c->tok, c->tokens.n, &opts, j->version,
                                                  &j->frame_r, &j->flen_r, err)) ||
                      (rc = ps_wire_append_trace(&j->frame_r, &j->flen_r, j->trace, err)))) {
        job_free(j);
        return rc;
    }
    opts.R = depth;
    opts.k = k < depth ? k : depth;
    if ((rc = ps_wire_encode_search(0, 0, c->tok, c->tokens.n, &opts, j->version, &j->frame, &flen,
                                    err)) ||
        (rc = ps_wire_append_trace(&j->frame, &flen, j->trace, err))) {
        job_free(j);
        return rc;
    }
    *out = j;
    *flen_out = flen;
    return 0;
}

int broker_core_search(broker_core_t *c, const broker_query *q, broker_search_fn done, void *arg,
                       ps_err *err)
{
    search_job *j;
    size_t flen;
    int rc = search_prepare(c, q, 0, done, arg, &j, &flen, err);
    if (rc) return rc;
    for (uint32_t s = 0; s < j->ns; s++)
        j->calls[s] = (broker_call){.shard = s,
                                    .replica = -1,
                                    .expect = PERSRV__ENVELOPE__BODY_SEARCH_REPLY,
                                    .frame = j->frame,
                                    .len = flen,
                                    .budget_ms = q->timeout_ms};
    rc = broker_fan_start(c->fan, j->calls, j->ns, search_done, j, err);
    if (rc) job_free(j);
    return rc;
}

/* ---- batches (POST /v1/msearch) ----------------------------------------------------------- */

/* Many searches in one round: each shard gets one BatchRequest holding every search's request
 * (at depth R, so no second round), and answers each in its place. */
typedef struct batch_job {
    broker_core_t *c;
    size_t n;
    search_job *jobs[BROKER_MAX_BATCH];
    uint8_t *frame;
    broker_call *calls; /* one per shard */
} batch_job;

static void batch_free(batch_job *b)
{
    for (size_t i = 0; i < b->n; i++) job_free(b->jobs[i]);
    free(b->frame);
    free(b->calls);
    free(b);
}

/* Every shard has answered the batch or given up: each search takes its shards' answers and
 * ends as a search of its own does (explain's fields fetched by its own round). */
static void batch_done(void *arg, broker_call *calls, size_t ns)
{
    batch_job *b = arg;
    for (uint32_t s = 0; s < ns; s++) {
        broker_call *call = &calls[s];
        const Persrv__BatchReply *br = call->reply ? call->reply->batch_reply : NULL;
        if (br && br->n_replies != b->n)
            snprintf(call->reason, sizeof call->reason, "%zu answers to a batch of %zu",
                     br->n_replies, b->n);
        broker_metrics_shard(b->c->metrics, s, call->reason[0] == '\0', call->seconds,
                             call->failovers);
        for (size_t i = 0; i < b->n; i++) {
            broker_call one = {.timed_out = call->timed_out};
            snprintf(one.reason, sizeof one.reason, "%s", call->reason);
            if (!one.reason[0]) {
                ps_err e = {0, ""};
                const ProtobufCBinaryData *d = &br->replies[i];
                if (ps_wire_decode(d->data, d->len, SIZE_MAX, &one.reply, &e))
                    snprintf(one.reason, sizeof one.reason, "answer %zu: %s", i, e.msg);
                else if (one.reply->body_case == PERSRV__ENVELOPE__BODY_ERROR)
                    snprintf(one.reason, sizeof one.reason, "%s: %s", one.reply->error->code,
                             one.reply->error->message);
                else if (one.reply->body_case != PERSRV__ENVELOPE__BODY_SEARCH_REPLY)
                    snprintf(one.reason, sizeof one.reason, "answer %zu: not a search reply", i);
                if (one.reason[0]) {
                    ps_wire_free(one.reply);
                    one.reply = NULL;
                }
            }
            first_round_take(b->jobs[i], &one, s);
        }
        ps_wire_free(call->reply);
        call->reply = NULL;
    }
    for (size_t i = 0; i < b->n; i++) {
        search_job *j = b->jobs[i];
        b->jobs[i] = NULL;
        first_round_end(j); /* ends j (depth R: no second round) */
    }
    b->n = 0;
    batch_free(b);
}

int broker_core_msearch(broker_core_t *c, const broker_query *qs, size_t n, broker_search_fn done,
                        void *const *args, int *rcs, ps_err *errs, const char *trace,
                        size_t *started, ps_err *err)
{
    *started = 0;
    if (n > BROKER_MAX_BATCH)
        return ps_err_set(err, PS_ETOOBIG, "searches: more than %d in one batch", BROKER_MAX_BATCH);
    batch_job *b = calloc(1, sizeof *b);
    uint32_t ns = broker_fan_nshards(c->fan), budget = 0;
    if (!b || !(b->calls = calloc(ns, sizeof *b->calls))) {
        free(b);
        return ps_err_set(err, PS_ENOMEM, "out of memory for a batch");
    }
    b->c = c;
    const uint8_t *frames[BROKER_MAX_BATCH];
    size_t lens[BROKER_MAX_BATCH];
    for (size_t i = 0; i < n; i++) {
        search_job *j;
        ps_err_clear(&errs[i]);
        if ((rcs[i] = search_prepare(c, &qs[i], 1, done, args[i], &j, &lens[b->n], &errs[i])))
            continue;
        frames[b->n] = j->frame;
        b->jobs[b->n++] = j;
        /* the batch's calls get the shortest of the searches' timeouts */
        if (qs[i].timeout_ms && (!budget || qs[i].timeout_ms < budget)) budget = qs[i].timeout_ms;
    }
    int rc = 0;
    size_t flen = 0;
    if (b->n == 0) {
        batch_free(b);
        return 0;
    }
    if ((rc = ps_wire_encode_batch(0, 0, 0, frames, lens, b->n, &b->frame, &flen, err)) ||
        (rc = ps_wire_append_trace(&b->frame, &flen, trace, err))) {
        batch_free(b);
        return rc;
    }
    for (uint32_t s = 0; s < ns; s++)
        b->calls[s] = (broker_call){.shard = s,
                                    .replica = -1,
                                    .expect = PERSRV__ENVELOPE__BODY_BATCH_REPLY,
                                    .frame = b->frame,
                                    .len = flen,
                                    .budget_ms = budget};
    size_t nb = b->n;
    if ((rc = broker_fan_start(c->fan, b->calls, ns, batch_done, b, err))) {
        batch_free(b);
        return rc;
    }
    *started = nb;
    return 0;
}

/* ---- clicks ------------------------------------------------------------------------------ */

/* A click id for a click that came without one: 128 random bits as 32 hex digits, unlike any
 * other broker's. Only the broker's answer names it, so only a client that reads it back can
 * retry safely (every answer does, the in-doubt one included). */
static void derive_click_id(char out[33])
{
    ps_random_hex_id(out, (uint64_t)(uintptr_t)out);
}

/* A click on its way: what the core keeps until the primary's outcome. */
typedef struct click_job {
    broker_core_t *core;
    broker_click_fn done;
    void *arg;
    broker_call call; /* the sticker's embedding */
    sticker_args sa;
    char click_id[PS_WIRE_MAX_CLICK_ID + 1];
    char *trace; /* the request's trace id, or NULL */
    char *query; /* NUL-terminated, after user */
    char user[]; /* NUL-terminated */
} click_job;

static void click_done(void *arg, int rc, const ps_err *err, const Persrv__ClickReply *reply)
{
    click_job *j = arg;
    /* the next read of the user must come from a node that applied the click (a duplicate's
     * seq is the latest, which covers the first click's) */
    if (rc == 0) broker_profcache_clicked(j->core->profiles, j->user, reply->seq);
    broker_metrics_click_done(j->core->metrics, rc, rc == 0 && reply->duplicate);
    j->done(j->arg, rc, err, reply, j->click_id);
    free(j->trace);
    free(j);
}

/* The sticker's embedding came (or not): send the click to the primary. */
static void click_fetched(void *arg, broker_call *calls, size_t n)
{
    click_job *j = arg;
    broker_core_t *c = j->core;
    broker_call *call = &calls[0];
    ps_err err = {0, ""};
    int rc;
    (void)n;
    broker_metrics_shard(c->metrics, call->shard, call->reply != NULL, call->seconds,
                         call->failovers);
    Persrv__GetStickerReply *st = call->reply ? call->reply->sticker_reply : NULL;
    if (!st) {
        rc = ps_err_set(&err, PS_EUNAVAIL, "shard %u holding sticker %llu: %s", call->shard,
                        (unsigned long long)j->sa.id, call->reason);
    } else if (!st->found || st->id != j->sa.id) {
        rc = ps_err_set(&err, PS_ENOTFOUND, "sticker_id: no sticker %llu",
                        (unsigned long long)j->sa.id);
    } else if (st->n_embedding == 0) {
        rc = ps_err_set(&err, PS_EUNAVAIL, "shard %u sent no embedding for sticker %llu",
                        call->shard, (unsigned long long)j->sa.id);
    } else {
        Persrv__ClickRequest click = PERSRV__CLICK_REQUEST__INIT;
        click.user = j->user;
        click.sticker_id = j->sa.id;
        click.query = j->query;
        click.click_id = j->click_id;
        click.n_embedding = st->n_embedding;
        click.embedding = st->embedding;
        if (!c->clicks)
            rc = ps_err_set(&err, PS_EUNAVAIL, "clicks need the profile service");
        else
            rc = broker_clicks_send(c->clicks, &click, j->trace, click_done, j, &err);
        if (rc == 0) {
            broker_metrics_click_sent(c->metrics);
            ps_wire_free(call->reply);
            return; /* click_done answers */
        }
    }
    ps_wire_free(call->reply);
    j->done(j->arg, rc, &err, NULL, j->click_id);
    free(j->trace);
    free(j);
}

int broker_core_click(broker_core_t *c, const broker_click *k, broker_click_fn done, void *arg,
                      ps_err *err)
{
    const char *user = k->user, *query = k->query ? k->query : "";
    size_t ulen = user ? strlen(user) : 0, qlen = strlen(query);
    int rc;
    if (ulen == 0) return ps_err_set(err, PS_EINVAL, "user: required, a non-empty string");
    if (ulen > BROKER_MAX_USER_BYTES)
        return ps_err_set(err, PS_ETOOBIG, "user: %zu bytes, at most %d", ulen,
                          BROKER_MAX_USER_BYTES);
    if (!ps_utf8_valid(user, ulen)) return ps_err_set(err, PS_EUTF8, "user: not valid UTF-8");
    if (!printable(user, ulen))
        return ps_err_set(err, PS_EINVAL, "user: must not contain control characters");
    if (qlen > query_cap(c))
        return ps_err_set(err, PS_ETOOBIG, "query: %zu bytes, more than max-query-bytes %zu", qlen,
                          query_cap(c));
    if (!ps_utf8_valid(query, qlen)) return ps_err_set(err, PS_EUTF8, "query: not valid UTF-8");
    if (k->click_id && k->click_id[0] &&
        (rc = ps_wire_check_click_id(k->click_id, "click_id", err)))
        return rc;
    if (!c->clicks)
        return ps_err_set(err, PS_EUNAVAIL,
                          "clicks need the profile service (broker --profile-primary)");

    click_job *j = calloc(1, sizeof *j + ulen + 1 + qlen + 1);
    if (!j) return ps_err_set(err, PS_ENOMEM, "out of memory for a click");
    j->core = c;
    j->done = done;
    j->arg = arg;
    memcpy(j->user, user, ulen + 1);
    j->query = j->user + ulen + 1;
    memcpy(j->query, query, qlen + 1);
    if (k->click_id && k->click_id[0])
        snprintf(j->click_id, sizeof j->click_id, "%s", k->click_id);
    else
        derive_click_id(j->click_id);
    /* The sticker's embedding, from the shard that holds it (within the search deadline). */
    j->sa = (sticker_args){k->sticker_id, want_version(c), NULL, 1};
    if (k->trace && !(j->trace = strdup(k->trace))) {
        free(j);
        return ps_err_set(err, PS_ENOMEM, "out of memory for a click");
    }
    j->sa.trace = j->trace;
    j->call = (broker_call){.shard = ps_jump_hash(k->sticker_id, broker_fan_nshards(c->fan)),
                            .replica = -1,
                            .expect = PERSRV__ENVELOPE__BODY_STICKER_REPLY,
                            .encode = encode_get_sticker,
                            .arg = &j->sa};
    if ((rc = broker_fan_start(c->fan, &j->call, 1, click_fetched, j, err))) {
        free(j->trace);
        free(j);
    }
    return rc;
}

/* ---- stickers ---------------------------------------------------------------------------- */

/* A sticker lookup on its way. */
typedef struct sticker_job {
    broker_sticker_fn done;
    void *arg;
    broker_metrics_t *metrics;
    broker_call call;
    sticker_args sa;
} sticker_job;

static void sticker_fetched(void *arg, broker_call *calls, size_t n)
{
    sticker_job *j = arg;
    broker_call *call = &calls[0];
    ps_err err = {0, ""};
    (void)n;
    broker_metrics_shard(j->metrics, call->shard, call->reply != NULL, call->seconds,
                         call->failovers);
    if (!call->reply) {
        ps_err_set(&err, PS_EUNAVAIL, "shard %u holding sticker %llu: %s", call->shard,
                   (unsigned long long)j->sa.id, call->reason);
        j->done(j->arg, err.code, &err, NULL);
    } else if (!call->reply->sticker_reply->found || call->reply->sticker_reply->id != j->sa.id) {
        ps_wire_free(call->reply);
        ps_err_set(&err, PS_ENOTFOUND, "sticker %llu: no such sticker",
                   (unsigned long long)j->sa.id);
        j->done(j->arg, err.code, &err, NULL);
    } else {
        j->done(j->arg, 0, NULL, call->reply);
    }
    free(j);
}

int broker_core_sticker(broker_core_t *c, uint64_t id, broker_sticker_fn done, void *arg,
                        ps_err *err)
{
    sticker_job *j = calloc(1, sizeof *j);
    if (!j) return ps_err_set(err, PS_ENOMEM, "out of memory for a sticker lookup");
    j->done = done;
    j->arg = arg;
    j->metrics = c->metrics;
    j->sa = (sticker_args){id, want_version(c), NULL, 0};
    j->call = (broker_call){.shard = ps_jump_hash(id, broker_fan_nshards(c->fan)),
                            .replica = -1,
                            .expect = PERSRV__ENVELOPE__BODY_STICKER_REPLY,
                            .encode = encode_get_sticker,
                            .arg = &j->sa};
    int rc = broker_fan_start(c->fan, &j->call, 1, sticker_fetched, j, err);
    if (rc) free(j);
    return rc;
}

uint32_t broker_core_shards_up(broker_core_t *c, uint32_t *down, uint32_t cap, uint32_t *ndown)
{
    uint32_t ns = broker_fan_nshards(c->fan), up = 0;
    *ndown = 0;
    for (uint32_t s = 0; s < ns; s++) {
        if (broker_fan_shard_up(c->fan, s))
            up++;
        else if (*ndown < cap)
            down[(*ndown)++] = s;
    }
    return up;
}
