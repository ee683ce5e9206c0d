/*
 * cmd_push.c — `builder push-profiles`: build the offline profiles exactly as `builder build`
 * does (same corpus, clicks, kmax, seed) and load them into the profile service's primary: for
 * each user the centroids and the click history (the distinct stickers clicked, with their
 * embeddings; at most --history of them), which the primary then updates online as clicks
 * arrive. The primary merges a load with what it holds (profile/store.c "Loads merge"): online
 * clicks made since are kept, a user with none gets exactly these centroids, and loading the
 * same profiles again changes nothing, so a push can be repeated at any time.
 *
 * Two ways in, one load_profile envelope per user either way:
 *   --primary EP   ZeroMQ (ps_zreq), one request in flight at a time; each must be
 *                  acknowledged (the primary answers once the write is durable) within
 *                  --timeout-ms, else the push stops with an error naming the user; a primary
 *                  nobody listens at stops it at once ("connection refused").
 *   --admin URL    the primary's admin HTTP port (libcurl): POST /admin/load-profiles with
 *                  --batch users per request, each framed as u32LE length + envelope, with
 *                  the bearer token from --token-file or PERSRV_ADMIN_TOKEN (never printed).
 *                  The URL and token are checked before the profiles are built; the primary
 *                  checks every frame of a request before applying any; a request that fails
 *                  in transport or with a 5xx is sent again (loads are idempotent).
 */
#include <curl/curl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "builder.h"
#include "pipeline.h"
#include "ps/admin.h"
#include "ps/buf.h"
#include "ps/curve.h"
#include "ps/log.h"
#include "ps/wire.h"
#include "ps/zreq.h"

#define BATCH_DEFAULT 64 /* users per admin request */
#define BATCH_MAX_BYTES                                                                            \
    (32u << 20)                /* ... and at most this many bytes (the primary's                   \
                                  admin-max-body defaults to 128 MiB) */
#define ADMIN_TRIES 3          /* attempts of one admin request */
#define REPLY_MAX   (1u << 20) /* bytes of an admin reply kept */

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: builder push-profiles --corpus FILE.jsonl --embeddings FILE.npy\n"
        "                             --clicks FILE.tsv (--primary EP | --admin URL) [options]\n\n"
        "Builds the user style profiles as `builder build` does and loads them, with each\n"
        "user's click history, into the profile service's primary (`profile --role primary`).\n"
        "A load merges with what the primary holds: clicks users made since are kept, so the\n"
        "push can be repeated at any time.\n\n"
        "options:\n" BUILDER_INPUT_USAGE
        "  --primary EP        the primary's ZeroMQ endpoint (tcp://host:port)\n"
        "  --admin URL         or its admin HTTP port (http://host:port), in batches\n"
        "  --token-file F      admin token: first line of F (default: $PERSRV_ADMIN_TOKEN)\n"
        "  --batch N           users per admin request (default %d)\n"
        "  --history N         clicked stickers sent per user, newest kept (default 200, at\n"
        "                      most %d)\n"
        "  --timeout-ms MS     time each user's load (ZeroMQ) or each request (admin) may\n"
        "                      take (default 30000)\n"
        "  --help              this text\n",
        BATCH_DEFAULT, PS_WIRE_MAX_HISTORY);
}

/* Pack user u of b into one load_profile envelope. OUT *buf (caller frees), *len; *nitems
 * grows by the history entries sent. */
static int pack_user(const builder_corpus *c, const builder_built *b, size_t u, uint32_t history,
                     long timeout_ms, uint64_t request_id, uint8_t **buf, size_t *len,
                     size_t *nitems, ps_err *err)
{
    const ps_profile *p = &b->profiles[u];
    size_t dim = c->emb.cols;
    uint32_t nrows = b->user_nrows[u];
    uint32_t first = nrows > history ? nrows - history : 0;
    size_t nh = nrows - first;
    Persrv__Centroid cs[PS_PROFILE_KMAX], *csp[PS_PROFILE_KMAX];
    Persrv__HistoryItem *items = calloc(nh ? nh : 1, sizeof *items);
    Persrv__HistoryItem **itemp = calloc(nh ? nh : 1, sizeof *itemp);
    int rc = 0;
    if (!items || !itemp) {
        rc = ps_err_set(err, PS_ENOMEM, "out of memory for user %s", b->users[u]);
        goto out;
    }
    for (uint32_t i = 0; i < p->k; i++) {
        persrv__centroid__init(&cs[i]);
        cs[i].n_vector = p->dim;
        cs[i].vector = p->centroids + (size_t)i * p->dim;
        cs[i].radius = p->radius[i];
        csp[i] = &cs[i];
    }
    for (size_t i = 0; i < nh; i++) {
        uint32_t row = b->user_rows[u][first + i];
        persrv__history_item__init(&items[i]);
        items[i].sticker_id = c->recs[row].id;
        items[i].n_embedding = dim;
        items[i].embedding = c->emb.data + (size_t)row * dim;
        itemp[i] = &items[i];
    }
    Persrv__LoadProfileRequest l = PERSRV__LOAD_PROFILE_REQUEST__INIT;
    l.user = b->users[u];
    l.n_centroids = p->k;
    l.centroids = csp;
    l.n_history = nh;
    l.history = itemp;
    Persrv__Envelope e = PERSRV__ENVELOPE__INIT;
    e.version = PS_WIRE_VERSION;
    e.request_id = request_id;
    e.deadline_ms = (uint32_t)timeout_ms;
    e.body_case = PERSRV__ENVELOPE__BODY_LOAD_PROFILE;
    e.load_profile = &l;
    if ((rc = ps_wire_pack(&e, buf, len, err))) ps_err_prefix(err, "user '%s'", b->users[u]);
    *nitems += nh;
out:
    free(items);
    free(itemp);
    return rc;
}

/* Load user u of b into the primary over ZeroMQ: one attempt of timeout_ms (ps_zreq_call
 * stamps its request id and deadline on the frame). */
static int push_user(ps_zreq_t *z, const builder_corpus *c, const builder_built *b, size_t u,
                     uint32_t history, long timeout_ms, size_t *nitems, ps_err *err)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    Persrv__Envelope *r = NULL;
    int rc = pack_user(c, b, u, history, 0, 0, &buf, &len, nitems, err);
    if (rc) return rc;
    uint32_t ms = timeout_ms > (long)UINT32_MAX ? UINT32_MAX : (uint32_t)timeout_ms;
    rc = ps_zreq_call(z, buf, len, ms, 1, &r, err); /* err: no answer in time, or refused */
    free(buf);
    if (!rc && r->body_case == PERSRV__ENVELOPE__BODY_ERROR) {
        rc = ps_err_set(err, ps_wire_error_code(r->error), "%s: %s", r->error->code,
                        r->error->message);
    } else if (!rc && r->body_case != PERSRV__ENVELOPE__BODY_CLICK_REPLY) {
        rc = ps_err_set(err, PS_EPARSE, "unexpected reply body %d", (int)r->body_case);
    }
    ps_wire_free(r);
    if (rc) ps_err_prefix(err, "user '%s'", b->users[u]);
    return rc;
}

/**************************************************************************
 * The admin HTTP way
 */

typedef struct admin_conn {
    CURL *curl;
    struct curl_slist *hdrs; /* holds the token: wiped before it is freed */
    char *url;               /* BASE/admin/load-profiles */
    long timeout_ms;
    ps_buf reply; /* the last reply's body, NUL-terminated, at most REPLY_MAX bytes */
} admin_conn;

static size_t on_reply(char *p, size_t size, size_t n, void *arg)
{
    admin_conn *a = arg;
    size_t len = size * n, take = a->reply.n + len > REPLY_MAX ? REPLY_MAX - a->reply.n : len;
    ps_buf_add(&a->reply, p, take);
    return a->reply.rc ? 0 : len; /* out of memory: libcurl fails the transfer */
}

/* Before a transfer: no body, and no error left from the last one. */
static void reply_clear(admin_conn *a)
{
    ps_buf_free(&a->reply);
}

/* Drop the reply's trailing newline (messages quote it). */
static void reply_trim(admin_conn *a)
{
    while (a->reply.n && (a->reply.p[a->reply.n - 1] == '\n' || a->reply.p[a->reply.n - 1] == '\r'))
        a->reply.p[--a->reply.n] = '\0';
}

static void admin_close(admin_conn *a)
{
    for (struct curl_slist *h = a->hdrs; h; h = h->next) memset(h->data, 0, strlen(h->data));
    curl_slist_free_all(a->hdrs);
    if (a->curl) curl_easy_cleanup(a->curl);
    free(a->url);
    ps_buf_free(&a->reply);
    memset(a, 0, sizeof *a);
}

static int admin_open(admin_conn *a, const char *base, const char *token, long timeout_ms,
                      ps_err *err)
{
    size_t bl = strlen(base);
    while (bl && base[bl - 1] == '/') bl--;
    int scheme = strstr(base, "://") != NULL;
    size_t ul = bl + 32, hl = strlen(token) + 32;
    char *auth = malloc(hl);
    memset(a, 0, sizeof *a);
    a->timeout_ms = timeout_ms;
    if (!auth || !(a->url = malloc(ul)) || !(a->curl = curl_easy_init())) {
        free(auth);
        admin_close(a);
        return ps_err_set(err, PS_ENOMEM, "out of memory (libcurl)");
    }
    snprintf(a->url, ul, "%s%.*s/admin/load-profiles", scheme ? "" : "http://", (int)bl, base);
    snprintf(auth, hl, "Authorization: Bearer %s", token);
    struct curl_slist *h = curl_slist_append(NULL, auth);
    if (h) a->hdrs = h;
    if (h && (h = curl_slist_append(a->hdrs, "Content-Type: application/octet-stream")))
        a->hdrs = h;
    if (h && (h = curl_slist_append(a->hdrs, "Expect:"))) a->hdrs = h; /* no 100-continue */
    memset(auth, 0, hl);
    free(auth);
    if (!h) {
        admin_close(a);
        return ps_err_set(err, PS_ENOMEM, "out of memory (libcurl headers)");
    }
    CURL *c = a->curl;
    curl_easy_setopt(c, CURLOPT_URL, a->url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, a->hdrs);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms < 10000 ? timeout_ms : 10000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_reply);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, a);
    return 0;
}

/* The message of a JSON error reply, or the start of whatever came back. */
static void reply_message(const admin_conn *a, char *out, size_t cap)
{
    json_t *j = a->reply.p ? json_loads(a->reply.p, 0, NULL) : NULL;
    const char *code = NULL, *msg = NULL;
    if (j) json_unpack(j, "{s:{s?s, s?s}}", "error", "code", &code, "message", &msg);
    if (msg)
        snprintf(out, cap, "%s: %s", code ? code : "error", msg);
    else
        snprintf(out, cap, "%.200s", a->reply.p ? a->reply.p : "(no body)");
    json_decref(j);
}

/* POST one batch (frames[0..len), `users` of them). OUT *seq: the primary's sequence number
 * once the batch is durable. Transport failures and 5xx are retried; a 4xx is not. */
static int admin_post(admin_conn *a, const uint8_t *frames, size_t len, size_t users, uint64_t *seq,
                      ps_err *err)
{
    int rc = 0;
    for (int attempt = 1; attempt <= ADMIN_TRIES; attempt++) {
        char msg[512];
        long status = 0;
        reply_clear(a);
        curl_easy_setopt(a->curl, CURLOPT_POSTFIELDS, (const char *)frames);
        curl_easy_setopt(a->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        CURLcode cc = curl_easy_perform(a->curl);
        if (cc == CURLE_OK) curl_easy_getinfo(a->curl, CURLINFO_RESPONSE_CODE, &status);
        reply_trim(a);
        if (cc != CURLE_OK) {
            rc = ps_err_set(err, cc == CURLE_OPERATION_TIMEDOUT ? PS_ETIMEDOUT : PS_EUNAVAIL,
                            "%s: %s", a->url, curl_easy_strerror(cc));
        } else if (status == 200) {
            json_t *j = json_loads(a->reply.p ? a->reply.p : "", 0, NULL);
            json_int_t n = -1, s = -1;
            if (!j || json_unpack(j, "{s:I, s:I}", "users", &n, "seq", &s) ||
                n != (json_int_t)users)
                rc = ps_err_set(err, PS_EPARSE, "%s: unexpected answer to %zu users: %.200s",
                                a->url, users, a->reply.p ? a->reply.p : "");
            else
                *seq = (uint64_t)s;
            json_decref(j);
            return rc;
        } else {
            reply_message(a, msg, sizeof msg);
            rc = ps_err_set(err,
                            status == 401   ? PS_EUNAUTH
                            : status == 403 ? PS_EFORBIDDEN
                            : status < 500  ? PS_EINVAL
                                            : PS_EUNAVAIL,
                            "%s: HTTP %ld: %s", a->url, status, msg);
            if (status < 500) return rc;
        }
        if (attempt < ADMIN_TRIES) {
            ps_log(PS_LOG_WARN, "builder", "admin_retry", "attempt=%d msg=\"%s\"", attempt,
                   err->msg);
            struct timespec ts = {0, 500000000L * attempt};
            nanosleep(&ts, NULL);
        }
    }
    return rc;
}

/* Before the profiles are built (minutes at full scale): the URL must answer /healthz as a
 * primary, and the token must be accepted. An empty load is the probe: the primary refuses it
 * with 400 (no frames) once the token passed, 401/403 before; nothing is stored either way. */
static int admin_preflight(admin_conn *a, ps_err *err)
{
    char health[4096], msg[512];
    size_t ul = strlen(a->url) - strlen("/admin/load-profiles");
    long status = 0;
    snprintf(health, sizeof health, "%.*s/healthz", (int)ul, a->url);
    CURL *c = curl_easy_init();
    if (!c) return ps_err_set(err, PS_ENOMEM, "out of memory (libcurl)");
    reply_clear(a);
    curl_easy_setopt(c, CURLOPT_URL, health);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, a->timeout_ms);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_reply);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, a);
    CURLcode cc = curl_easy_perform(c);
    if (cc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    reply_trim(a);
    if (cc != CURLE_OK)
        return ps_err_set(err, PS_EUNAVAIL, "%s: %s", health, curl_easy_strerror(cc));
    json_t *j = status == 200 && a->reply.p ? json_loads(a->reply.p, 0, NULL) : NULL;
    const char *role = NULL;
    if (j) json_unpack(j, "{s:s}", "role", &role);
    int primary = role && !strcmp(role, "primary");
    json_decref(j);
    if (!primary)
        return ps_err_set(err, PS_EINVAL, "%s: HTTP %ld, not a profile primary: %.200s", health,
                          status, a->reply.p ? a->reply.p : "");
    reply_clear(a);
    curl_easy_setopt(a->curl, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(a->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
    if ((cc = curl_easy_perform(a->curl)) != CURLE_OK)
        return ps_err_set(err, PS_EUNAVAIL, "%s: %s", a->url, curl_easy_strerror(cc));
    curl_easy_getinfo(a->curl, CURLINFO_RESPONSE_CODE, &status);
    reply_trim(a);
    if (status == 400) return 0; /* the token passed; the empty body was refused */
    reply_message(a, msg, sizeof msg);
    return ps_err_set(err,
                      status == 401   ? PS_EUNAUTH
                      : status == 403 ? PS_EFORBIDDEN
                                      : PS_EUNAVAIL,
                      "%s: HTTP %ld: %s", a->url, status, msg);
}

/* Append a u32LE length and the frame to batch. */
static int append_frame(ps_buf *batch, const uint8_t *f, size_t fl, ps_err *err)
{
    ps_buf_u32le(batch, (uint32_t)fl);
    ps_buf_add(batch, f, fl);
    return batch->rc ? ps_err_set(err, PS_ENOMEM, "out of memory for a batch of %zu bytes",
                                  batch->n + 4 + fl)
                     : 0;
}

/* Every user of b through the admin port, `batch` users (at most BATCH_MAX_BYTES) a request.
 * OUT *seq: the primary's sequence number after the last batch. */
static int push_admin(admin_conn *a, const builder_corpus *c, const builder_built *b,
                      uint32_t history, long timeout_ms, uint32_t batch, uint64_t *id,
                      size_t *nitems, uint64_t *seq, ps_err *err)
{
    uint8_t *buf = NULL;
    ps_buf frames = PS_BUF_INIT;
    size_t len = 0, users = 0;
    int rc = 0;
    builder_progress pr;
    builder_progress_start(&pr, "push profiles", b->nusers, 1);
    for (size_t u = 0; u < b->nusers && !rc; u++) {
        if ((rc = pack_user(c, b, u, history, timeout_ms, ++*id, &buf, &len, nitems, err))) break;
        if (users && frames.n + 4 + len > BATCH_MAX_BYTES) { /* send what is there first */
            if ((rc = admin_post(a, (const uint8_t *)frames.p, frames.n, users, seq, err))) break;
            ps_buf_reset(&frames);
            users = 0;
        }
        rc = append_frame(&frames, buf, len, err);
        free(buf);
        buf = NULL;
        if (!rc && ++users == batch) {
            rc = admin_post(a, (const uint8_t *)frames.p, frames.n, users, seq, err);
            ps_buf_reset(&frames);
            users = 0;
        }
        if (!rc) builder_progress_tick(&pr, u + 1);
    }
    if (!rc && users) rc = admin_post(a, (const uint8_t *)frames.p, frames.n, users, seq, err);
    if (!rc) builder_progress_end(&pr, b->nusers);
    free(buf);
    ps_buf_free(&frames);
    return rc;
}

int builder_cmd_push_profiles(int argc, char **argv)
{
    const char *primary = NULL, *admin = NULL, *token_file = NULL;
    uint32_t history = 200, batch = BATCH_DEFAULT;
    long timeout_ms = 30000;
    builder_inputs inp = {0};
    builder_cfg_defaults(&inp.cfg);
    inp.cfg.progress = 1;
    static const struct option opts[] = {BUILDER_INPUT_OPTIONS,
                                         {"primary", required_argument, 0, 'p'},
                                         {"admin", required_argument, 0, 'a'},
                                         {"token-file", required_argument, 0, 'T'},
                                         {"batch", required_argument, 0, 'B'},
                                         {"history", required_argument, 0, 'H'},
                                         {"timeout-ms", required_argument, 0, 't'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        int taken = builder_input_opt(ch, optarg, &inp, "push-profiles");
        if (taken < 0) return 2;
        if (taken) continue;
        switch (ch) {
        case 'p':
            primary = optarg;
            break;
        case 'a':
            admin = optarg;
            break;
        case 'T':
            token_file = optarg;
            break;
        case 'B':
            batch = (uint32_t)strtoul(optarg, &end, 10);
            if (*end || batch < 1 || batch > 100000) {
                fprintf(stderr, "builder push-profiles: --batch must be 1..100000\n");
                return 2;
            }
            break;
        case 'H':
            history = (uint32_t)strtoul(optarg, &end, 10);
            if (*end || history < 1 || history > PS_WIRE_MAX_HISTORY) {
                fprintf(stderr, "builder push-profiles: --history must be 1..%d\n",
                        PS_WIRE_MAX_HISTORY);
                return 2;
            }
            break;
        case 't':
            timeout_ms = strtol(optarg, &end, 10);
            if (*end || timeout_ms < 1) {
                fprintf(stderr, "builder push-profiles: --timeout-ms must be a positive number\n");
                return 2;
            }
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!inp.corpus || !inp.npy || !inp.clicks || !primary == !admin || optind != argc) {
        fprintf(stderr, "builder push-profiles: --corpus, --embeddings, --clicks and one of "
                        "--primary or --admin are required\n");
        usage(stderr);
        return 2;
    }
    ps_err err = {0};
    char *token = NULL;
    if (admin) {
        const char *env = token_file ? NULL : getenv("PERSRV_ADMIN_TOKEN");
        if (ps_admin_token_load(env, token_file, &token, &err)) {
            fprintf(stderr, "builder push-profiles: %s\n",
                    token_file ? err.msg : "PERSRV_ADMIN_TOKEN: not a valid token");
            return 2;
        }
        if (!token) {
            fprintf(stderr, "builder push-profiles: --admin needs the admin token: --token-file "
                            "FILE or PERSRV_ADMIN_TOKEN\n");
            return 2;
        }
    }

    builder_corpus c = {0};
    builder_built b = {0};
    ps_clicklog log = {0};
    void *zctx = NULL;
    ps_zreq_t *zr = NULL;
    ps_curve_t *curve = NULL;
    admin_conn ac = {0};
    size_t nitems = 0;
    uint64_t seq = 0;
    int rc = 1, curl_up = 0;
    const char *to = admin ? admin : primary;
    double t0 = builder_now();
    uint64_t id = (uint64_t)(t0 * 1e6);
    if (admin) { /* fail fast: a wrong URL or token before minutes of building */
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            ps_err_set(&err, PS_EINTERNAL, "libcurl: global init failed");
            goto fail;
        }
        curl_up = 1;
        if (admin_open(&ac, admin, token, timeout_ms, &err) || admin_preflight(&ac, &err))
            goto fail;
    }
    inp.cfg.reorder_fields = 0; /* only the profiles are sent, and they ignore doc numbers */
    if (ps_clicklog_read(inp.clicks, &log, &err) ||
        builder_corpus_load(inp.corpus, inp.npy, 1, &c, &err) ||
        builder_build_index(&c, &log, &inp.cfg, 0, &b, &err))
        goto fail;
    if (admin) {
        if (push_admin(&ac, &c, &b, history, timeout_ms, batch, &id, &nitems, &seq, &err))
            goto fail;
    } else {
        /* CURVE from PERSRV_CURVE_KEY / PERSRV_CURVE_SERVERS when the primary runs it */
        if (!(curve = ps_curve_from_env(&err)) && err.code) goto fail;
        ps_zreq_opts zo = {.timeout_ms = (uint32_t)timeout_ms, .curve = curve};
        if (!(zctx = zmq_ctx_new())) {
            ps_err_set(&err, PS_EINTERNAL, "zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
            goto fail;
        }
        if (!(zr = ps_zreq_new(zctx, &primary, 1, &zo, &err))) {
            ps_err_prefix(&err, "--primary");
            goto fail;
        }
        builder_progress pr;
        builder_progress_start(&pr, "push profiles", b.nusers, 1);
        for (size_t u = 0; u < b.nusers; u++) {
            if (push_user(zr, &c, &b, u, history, timeout_ms, &nitems, &err)) goto fail;
            builder_progress_tick(&pr, u + 1);
        }
        builder_progress_end(&pr, b.nusers);
    }
    ps_log(PS_LOG_INFO, "builder", "push_done", "to=%s users=%zu history_items=%zu seconds=%.2f",
           to, b.nusers, nitems, builder_now() - t0);
    printf("pushed %zu user profiles (%zu history items) to %s in %.1f s", b.nusers, nitems, to,
           builder_now() - t0);
    if (admin) printf(" (primary seq %llu)", (unsigned long long)seq);
    printf("\n");
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "builder push-profiles: %s\n", err.msg);
out:
    ps_zreq_free(zr);
    if (zctx) zmq_ctx_term(zctx);
    ps_curve_free(curve);
    admin_close(&ac);
    if (curl_up) curl_global_cleanup();
    if (token) memset(token, 0, strlen(token));
    free(token);
    builder_built_free(&b);
    builder_corpus_free(&c);
    ps_clicklog_free(&log);
    return rc;
}
