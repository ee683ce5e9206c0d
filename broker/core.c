/*
 * core.c — what a search and a sticker lookup do, whichever door they came in by (HTTP in
 * http.c, ZeroMQ in front.c): check the request, analyze the query once, fetch the user's
 * centroids (cached), fan out one SearchRequest to every shard (encoded once, pool.c stamping
 * each attempt's request id), merge the replies' hits with ps_merge_hits exactly as a single node
 * ranks them, and with explain fetch the stored fields of every hit from the shard holding it.
 *
 * A shard that no replica answered in time makes the answer partial (its failure recorded);
 * when no shard answers the request fails with PS_EUNAVAIL. Input errors are PS_E* codes
 * whose ps_err_http_status is a 4xx.
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
    broker_pool_t *pool;
    broker_version_t *version; /* the cluster's snapshot version (shared; NULL: the shards') */
    broker_clicks_t *clicks;   /* clicks in flight to the profile primary (NULL: none) */
    broker_profcache_t *profiles;
    broker_metrics_t *metrics;
    broker_limits lim;
    ps_analyzer_t *analyzer;
    ps_tokens tokens;
    const char **tok; /* PS_WIRE_MAX_TOKENS pointers into tokens */
    ps_hit *hits;     /* nshards × R_max */
    size_t hits_cap;
    broker_call *calls; /* one per shard */
    broker_failure *failures;
    Persrv__Envelope **sticker_env; /* explain: the replies holding fields[i] */
    Persrv__GetStickerReply **fields;
    size_t nfields;
};

double broker_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

broker_core_t *broker_core_new(broker_pool_t *pool, broker_profcache_t *profiles,
                               broker_metrics_t *metrics, const broker_limits *lim, ps_err *err)
{
    broker_core_t *c = calloc(1, sizeof *c);
    uint32_t ns = broker_pool_nshards(pool);
    uint32_t rmax = lim->R > lim->max_k ? lim->R : lim->max_k;
    if (!c) goto oom;
    ps_tokens_init(&c->tokens);
    c->pool = pool;
    c->profiles = profiles;
    c->metrics = metrics;
    c->lim = *lim;
    c->hits_cap = (size_t)ns * rmax;
    if (!(c->tok = calloc(PS_WIRE_MAX_TOKENS, sizeof *c->tok)) ||
        !(c->hits = malloc(c->hits_cap * sizeof *c->hits)) ||
        !(c->calls = calloc(ns, sizeof *c->calls)) ||
        !(c->failures = calloc(ns, sizeof *c->failures)) ||
        !(c->sticker_env = calloc(lim->max_k, sizeof *c->sticker_env)) ||
        !(c->fields = calloc(lim->max_k, sizeof *c->fields)))
        goto oom;
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

static void release_fields(broker_core_t *c)
{
    for (size_t i = 0; i < c->nfields; i++) {
        ps_wire_free(c->sticker_env[i]);
        c->sticker_env[i] = NULL;
        c->fields[i] = NULL;
    }
    c->nfields = 0;
}

void broker_core_free(broker_core_t *c)
{
    if (!c) return;
    release_fields(c);
    ps_analyzer_free(c->analyzer);
    ps_tokens_free(&c->tokens);
    free(c->tok);
    free(c->hits);
    free(c->calls);
    free(c->failures);
    free(c->sticker_env);
    free(c->fields);
    free(c);
}

broker_pool_t *broker_core_pool(broker_core_t *c)
{
    return c->pool;
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

typedef struct search_args {
    const char *const *tokens;
    size_t ntokens;
    ps_search_opts opts;
    uint64_t version;
} search_args;

typedef struct sticker_args {
    uint64_t id, version;
} sticker_args;

static int encode_get_sticker(void *arg, uint64_t request_id, uint32_t deadline_ms, uint8_t **buf,
                              size_t *len, ps_err *err)
{
    const sticker_args *a = arg;
    return ps_wire_encode_get_sticker_emb(request_id, deadline_ms, a->id, 0, a->version, buf, len,
                                          err);
}

/* Fetch the stored fields of hits[0..n) into c->fields (NULL where the shard did not answer
 * or does not hold it). One pool run asks every shard for at most one sticker, so the hits
 * take as many rounds as the most any one shard holds. */
static int fetch_fields(broker_core_t *c, size_t n, uint64_t version, ps_err *err)
{
    uint32_t ns = broker_pool_nshards(c->pool);
    sticker_args ids[BROKER_MAX_SHARDS];
    size_t at[BROKER_MAX_SHARDS];
    char *done = calloc(n ? n : 1, 1);
    if (!done) return ps_err_set(err, PS_ENOMEM, "out of memory for explain");
    c->nfields = n;
    for (size_t left = n; left > 0;) {
        size_t nc = 0;
        uint32_t used[BROKER_MAX_SHARDS / 32 + 1] = {0};
        for (size_t i = 0; i < n; i++) {
            if (done[i]) continue;
            uint32_t s = ps_jump_hash(c->hits[i].id, ns);
            if (used[s / 32] & (1u << (s % 32))) continue;
            used[s / 32] |= 1u << (s % 32);
            ids[nc] = (sticker_args){c->hits[i].id, version};
            at[nc] = i;
            c->calls[nc] = (broker_call){.shard = s,
                                         .replica = -1,
                                         .expect = PERSRV__ENVELOPE__BODY_STICKER_REPLY,
                                         .encode = encode_get_sticker,
                                         .arg = &ids[nc]};
            nc++;
        }
        int rc = broker_pool_run(c->pool, c->calls, nc, err);
        for (size_t j = 0; j < nc; j++) {
            broker_call *call = &c->calls[j];
            size_t i = at[j];
            done[i] = 1;
            left--;
            broker_metrics_shard(c->metrics, call->shard, call->reply != NULL, call->seconds,
                                 call->failovers);
            if (!call->reply) continue;
            const Persrv__GetStickerReply *r = call->reply->sticker_reply;
            if (r->found && r->id == ids[j].id) {
                c->sticker_env[i] = call->reply;
                c->fields[i] = call->reply->sticker_reply;
            } else {
                ps_wire_free(call->reply);
            }
            call->reply = NULL;
        }
        if (rc) {
            free(done);
            return rc;
        }
    }
    free(done);
    return 0;
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

int broker_core_search(broker_core_t *c, const broker_query *q, broker_result *res, ps_err *err)
{
    memset(res, 0, sizeof *res);
    release_fields(c);
    uint32_t k = q->k ? q->k : BROKER_DEFAULT_K;
    if (k > c->lim.max_k)
        return ps_err_set(err, PS_EINVAL, "k: must be an integer in 1..%u", c->lim.max_k);
    if (!q->q || q->qlen == 0) return ps_err_set(err, PS_EQUERY, "q: a query is required");
    if (q->qlen > c->lim.max_query_bytes)
        return ps_err_set(err, PS_ETOOBIG, "q: %zu bytes, more than max-query-bytes %zu", q->qlen,
                          c->lim.max_query_bytes);
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

    search_args a = {.tokens = c->tok, .ntokens = c->tokens.n};
    ps_search_opts_default(&a.opts);
    a.opts.R = c->lim.R > k ? c->lim.R : k;
    a.opts.k = k;
    a.opts.profile = user ? broker_profcache_get(c->profiles, user) : NULL;
    a.version = want_version(c);

    /* One request for every shard, encoded once (request_id 0, no deadline: the pool stamps
     * each attempt's). An encoding failure is the client's input (nothing was sent). */
    uint8_t *frame = NULL;
    size_t flen = 0;
    if ((rc = ps_wire_encode_search(0, 0, a.tokens, a.ntokens, &a.opts, a.version, &frame, &flen,
                                    err)))
        return rc;
    uint32_t ns = broker_pool_nshards(c->pool);
    for (uint32_t s = 0; s < ns; s++)
        c->calls[s] = (broker_call){.shard = s,
                                    .replica = -1,
                                    .expect = PERSRV__ENVELOPE__BODY_SEARCH_REPLY,
                                    .frame = frame,
                                    .len = flen};
    rc = broker_pool_run(c->pool, c->calls, ns, err);
    free(frame);
    if (rc) return rc;

    size_t nh = 0;
    for (uint32_t s = 0; s < ns; s++) {
        broker_call *call = &c->calls[s];
        if (call->reply) {
            size_t got = 0;
            ps_err e = {0, ""};
            const Persrv__SearchReply *r = call->reply->search_reply;
            if (r->shard != s) {
                snprintf(call->reason, sizeof call->reason, "reply from shard %u, not %u", r->shard,
                         s);
            } else if (r->n_hits > a.opts.R) {
                snprintf(call->reason, sizeof call->reason, "%zu hits, more than R = %u", r->n_hits,
                         a.opts.R);
            } else if (a.version ? r->snapshot_version != a.version
                                 : res->version && r->snapshot_version != res->version) {
                /* never merge two versions: this shard's answer does not count */
                snprintf(call->reason, sizeof call->reason,
                         "answered from snapshot version %llu, not %llu",
                         (unsigned long long)r->snapshot_version,
                         (unsigned long long)(a.version ? a.version : res->version));
            } else if (ps_wire_to_hits(r, c->hits + nh, c->hits_cap - nh, &got, &e)) {
                snprintf(call->reason, sizeof call->reason, "%s", e.msg);
            } else {
                nh += got;
                res->ok++;
                res->version = r->snapshot_version;
            }
            ps_wire_free(call->reply);
            call->reply = NULL;
        }
        broker_metrics_shard(c->metrics, s, call->reason[0] == '\0', call->seconds,
                             call->failovers);
        if (call->reason[0]) {
            res->timed_out |= call->timed_out;
            broker_failure *f = &c->failures[res->nfailures++];
            f->shard = s;
            snprintf(f->reason, sizeof f->reason, "%s", call->reason);
        }
    }
    res->nshards = ns;
    res->failures = c->failures;
    if (res->ok == 0)
        return ps_err_set(err, PS_EUNAVAIL, "no shard answered (shard 0: %s)", c->calls[0].reason);
    if (res->ok < ns)
        ps_log(PS_LOG_WARN, "broker", "partial", "shards=%u failed=%u", ns, ns - res->ok);
    /* Not knowing the cluster's version yet, adopt the one every shard answered from. */
    if (!a.version && res->ok == ns && c->version) broker_version_adopt(c->version, res->version);
    res->personalized = a.opts.profile != NULL;
    res->hits = c->hits;
    res->nhits = ps_merge_hits(c->hits, nh, a.opts.R, a.opts.k);
    if (q->explain) {
        if ((rc = fetch_fields(c, res->nhits, res->version, err))) return rc;
        res->fields = c->fields;
    }
    return 0;
}

/* ---- clicks ------------------------------------------------------------------------------ */

static int encode_get_sticker_emb(void *arg, uint64_t request_id, uint32_t deadline_ms,
                                  uint8_t **buf, size_t *len, ps_err *err)
{
    const sticker_args *a = arg;
    return ps_wire_encode_get_sticker_emb(request_id, deadline_ms, a->id, 1, a->version, buf, len,
                                          err);
}

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
    char click_id[PS_WIRE_MAX_CLICK_ID + 1];
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
    free(j);
}

int broker_core_click(broker_core_t *c, const broker_click *k, broker_click_fn done, void *arg,
                      ps_err *err)
{
    const char *user = k->user, *query = k->query ? k->query : "";
    size_t ulen = user ? strlen(user) : 0;
    int rc;
    if (ulen == 0) return ps_err_set(err, PS_EINVAL, "user: required, a non-empty string");
    if (ulen > BROKER_MAX_USER_BYTES)
        return ps_err_set(err, PS_ETOOBIG, "user: %zu bytes, at most %d", ulen,
                          BROKER_MAX_USER_BYTES);
    if (!ps_utf8_valid(user, ulen)) return ps_err_set(err, PS_EUTF8, "user: not valid UTF-8");
    if (!printable(user, ulen))
        return ps_err_set(err, PS_EINVAL, "user: must not contain control characters");
    if (strlen(query) > c->lim.max_query_bytes)
        return ps_err_set(err, PS_ETOOBIG, "query: %zu bytes, more than max-query-bytes %zu",
                          strlen(query), c->lim.max_query_bytes);
    if (!ps_utf8_valid(query, strlen(query)))
        return ps_err_set(err, PS_EUTF8, "query: not valid UTF-8");
    if (k->click_id && k->click_id[0] &&
        (rc = ps_wire_check_click_id(k->click_id, "click_id", err)))
        return rc;
    if (!c->clicks)
        return ps_err_set(err, PS_EUNAVAIL,
                          "clicks need the profile service (broker --profile-primary)");

    /* The sticker's embedding, from the shard that holds it (within the search deadline). */
    uint32_t s = ps_jump_hash(k->sticker_id, broker_pool_nshards(c->pool));
    sticker_args sa = {k->sticker_id, want_version(c)};
    broker_call call = {.shard = s,
                        .replica = -1,
                        .expect = PERSRV__ENVELOPE__BODY_STICKER_REPLY,
                        .encode = encode_get_sticker_emb,
                        .arg = &sa};
    if ((rc = broker_pool_run(c->pool, &call, 1, err))) return rc;
    broker_metrics_shard(c->metrics, s, call.reply != NULL, call.seconds, call.failovers);
    if (!call.reply)
        return ps_err_set(err, PS_EUNAVAIL, "shard %u holding sticker %llu: %s", s,
                          (unsigned long long)k->sticker_id, call.reason);
    Persrv__GetStickerReply *st = call.reply->sticker_reply;
    if (!st->found || st->id != k->sticker_id) {
        ps_wire_free(call.reply);
        return ps_err_set(err, PS_ENOTFOUND, "sticker_id: no sticker %llu",
                          (unsigned long long)k->sticker_id);
    }
    if (st->n_embedding == 0) {
        ps_wire_free(call.reply);
        return ps_err_set(err, PS_EUNAVAIL, "shard %u sent no embedding for sticker %llu", s,
                          (unsigned long long)k->sticker_id);
    }

    click_job *j = malloc(sizeof *j + ulen + 1);
    if (!j) {
        ps_wire_free(call.reply);
        return ps_err_set(err, PS_ENOMEM, "out of memory for a click");
    }
    j->core = c;
    j->done = done;
    j->arg = arg;
    memcpy(j->user, user, ulen + 1);
    if (k->click_id && k->click_id[0])
        snprintf(j->click_id, sizeof j->click_id, "%s", k->click_id);
    else
        derive_click_id(j->click_id);
    Persrv__ClickRequest click = PERSRV__CLICK_REQUEST__INIT;
    click.user = (char *)user;
    click.sticker_id = k->sticker_id;
    click.query = (char *)query;
    click.click_id = j->click_id;
    click.n_embedding = st->n_embedding;
    click.embedding = st->embedding;
    rc = broker_clicks_send(c->clicks, &click, click_done, j, err);
    ps_wire_free(call.reply);
    if (rc)
        free(j);
    else
        broker_metrics_click_sent(c->metrics);
    return rc;
}

/* ---- stickers ---------------------------------------------------------------------------- */

int broker_core_sticker(broker_core_t *c, uint64_t id, Persrv__Envelope **reply, ps_err *err)
{
    *reply = NULL;
    uint32_t s = ps_jump_hash(id, broker_pool_nshards(c->pool));
    sticker_args sa = {id, want_version(c)};
    broker_call call = {.shard = s,
                        .replica = -1,
                        .expect = PERSRV__ENVELOPE__BODY_STICKER_REPLY,
                        .encode = encode_get_sticker,
                        .arg = &sa};
    int rc;
    if ((rc = broker_pool_run(c->pool, &call, 1, err))) return rc;
    broker_metrics_shard(c->metrics, s, call.reply != NULL, call.seconds, call.failovers);
    if (!call.reply)
        return ps_err_set(err, PS_EUNAVAIL, "shard %u holding sticker %llu: %s", s,
                          (unsigned long long)id, call.reason);
    const Persrv__GetStickerReply *r = call.reply->sticker_reply;
    if (!r->found || r->id != id) {
        ps_wire_free(call.reply);
        return ps_err_set(err, PS_ENOTFOUND, "sticker %llu: no such sticker",
                          (unsigned long long)id);
    }
    *reply = call.reply;
    return 0;
}

uint32_t broker_core_shards_up(broker_core_t *c, uint32_t *down, uint32_t cap, uint32_t *ndown)
{
    uint32_t ns = broker_pool_nshards(c->pool), up = 0;
    *ndown = 0;
    for (uint32_t s = 0; s < ns; s++) {
        if (broker_pool_shard_up(c->pool, s))
            up++;
        else if (*ndown < cap)
            down[(*ndown)++] = s;
    }
    return up;
}
