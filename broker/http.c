/*
 * http.c — the broker's HTTP/JSON endpoints on libevent evhttp (DESIGN §3, §3.1):
 *
 *   GET /v1/search?q=&user=&k=&explain=   search the cluster (k 1..max-k, default 10; every
 *                                         hit carries its score breakdown, so explain (0|1)
 *                                         is accepted and checked but changes nothing yet)
 *   GET /v1/stickers/{id}                 a sticker's stored fields, from the shard holding it
 *   GET /healthz                          the process is alive
 *   GET /readyz                           every shard has a replica answering (else 503)
 *   GET /metrics                          Prometheus text (metrics.c)
 *
 * Every error is {"error": {"code", "type", "message"}} with the status of ps_err_http_status
 * (404 for an unknown path, 405 for a method other than GET or HEAD): malformed input is a
 * 4xx, never a 5xx. Sticker ids are JSON strings, since 19-digit ids exceed the integers a
 * JSON number carries exactly; scores are doubles printed by jansson ("%.17g"), so they
 * round-trip bit for bit.
 *
 * Search: the query is analyzed once (ps_analyze + ps_tokens_distinct) and checked here, so
 * a shard never sees a query it would reject; then one SearchRequest (R, the tokens, the
 * user's centroids) goes to one replica of every shard (pool.c), and the replies' hits are
 * merged with ps_merge_hits, exactly as a single node ranks them. A shard that no replica
 * answered in time makes the answer partial (200, named in shards.failures); when no shard
 * answers the request fails with 503 unavailable. The handler blocks the event loop while the
 * shards work (at most deadline-ms × (retries + 1)): this first version serves one request
 * at a time.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker.h"
#include "ps/index.h"
#include "ps/log.h"
#include "ps/wire.h"

#define MAX_USER_BYTES 256 /* a user name longer than this is an error */

struct broker_http {
    broker_pool_t *pool;
    broker_profcache_t *profiles;
    broker_metrics_t *metrics;
    broker_limits lim;
    ps_analyzer_t *analyzer;
    ps_tokens tokens;
    const char **tok; /* PS_WIRE_MAX_TOKENS pointers into tokens */
    ps_hit *hits;     /* nshards × R_max */
    size_t hits_cap;
    broker_call *calls; /* one per shard */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- replies ----------------------------------------------------------------------------- */

/* Send `body` (consumed) with `status`. Returns status. */
static int reply_json(struct evhttp_request *req, int status, json_t *body)
{
    char *s = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!s) {
        ps_log(PS_LOG_ERROR, "broker", "out_of_memory", "where=reply");
        abort();
    }
    struct evbuffer *out = evhttp_request_get_output_buffer(req);
    evbuffer_add(out, s, strlen(s));
    evbuffer_add(out, "\n", 1);
    free(s);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    const char *reason = status == 200   ? "OK"
                         : status == 400 ? "Bad Request"
                         : status == 404 ? "Not Found"
                         : status == 405 ? "Method Not Allowed"
                         : status == 413 ? "Payload Too Large"
                         : status == 503 ? "Service Unavailable"
                                         : "Error";
    evhttp_send_reply(req, status, reason, NULL);
    return status;
}

/* An error reply: code is a stable name (ps_errname, or "method_not_allowed"). The message
 * is made ASCII-safe (other bytes become '?'), since it may quote a client's input. */
static int reply_error(struct evhttp_request *req, int status, const char *code, const char *fmt,
                       ...) __attribute__((format(printf, 4, 5)));
static int reply_error(struct evhttp_request *req, int status, const char *code, const char *fmt,
                       ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f) *p = '?';
    const char *type = status == 404  ? "not_found"
                       : status < 500 ? "invalid_request"
                                      : "server_error";
    json_t *e =
        json_pack("{s:{s:s, s:s, s:s}}", "error", "code", code, "type", type, "message", msg);
    return reply_json(req, status, e);
}

static int reply_err(struct evhttp_request *req, const ps_err *err)
{
    return reply_error(req, ps_err_http_status(err->code), ps_errname(err->code), "%s", err->msg);
}

/* ---- query string ------------------------------------------------------------------------ */

enum { P_Q, P_USER, P_K, P_EXPLAIN, NPARAMS };
static const char *const param_names[NPARAMS] = {"q", "user", "k", "explain"};

typedef struct params {
    char *v[NPARAMS]; /* decoded values (malloc'd), NULL when absent */
    size_t len[NPARAMS];
} params;

static void params_free(params *p)
{
    for (int i = 0; i < NPARAMS; i++) free(p->v[i]);
}

/* Parse the raw query string (still percent-encoded; '+' is a space). Unknown parameters are
 * ignored; a known one given twice is an error. Values may hold any bytes, NUL included. */
static int params_parse(const char *query, params *p, ps_err *err)
{
    memset(p, 0, sizeof *p);
    if (!query) return 0;
    while (*query) {
        size_t n = strcspn(query, "&");
        const char *eq = memchr(query, '=', n);
        size_t klen = eq ? (size_t)(eq - query) : n;
        char key[16];
        int which = -1;
        if (klen < sizeof key) {
            memcpy(key, query, klen);
            key[klen] = '\0';
            for (int i = 0; i < NPARAMS; i++)
                if (!strcmp(key, param_names[i])) which = i;
        }
        if (which >= 0) {
            if (p->v[which])
                return ps_err_set(err, PS_EINVAL, "%s: given more than once", param_names[which]);
            size_t vlen = eq ? n - klen - 1 : 0;
            char *raw = strndup(eq ? eq + 1 : "", vlen);
            if (!raw) return ps_err_set(err, PS_ENOMEM, "out of memory for parameters");
            p->v[which] = evhttp_uridecode(raw, 1, &p->len[which]);
            free(raw);
            if (!p->v[which]) return ps_err_set(err, PS_ENOMEM, "out of memory for parameters");
        }
        query += n;
        if (*query == '&') query++;
    }
    return 0;
}

/* A decimal integer in [lo, hi], digits only. */
static int parse_uint(const char *s, size_t len, uint64_t lo, uint64_t hi, uint64_t *out)
{
    if (len == 0 || len > 20) return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    if (v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/* ---- search ------------------------------------------------------------------------------ */

typedef struct search_args {
    const char *const *tokens;
    size_t ntokens;
    ps_search_opts opts;
} search_args;

static int encode_search(void *arg, uint64_t request_id, uint32_t deadline_ms, uint8_t **buf,
                         size_t *len, ps_err *err)
{
    const search_args *a = arg;
    return ps_wire_encode_search(request_id, deadline_ms, a->tokens, a->ntokens, &a->opts, 0, buf,
                                 len, err);
}

static json_t *hit_json(const ps_hit *h)
{
    char id[24];
    snprintf(id, sizeof id, "%llu", (unsigned long long)h->id);
    return json_pack("{s:s, s:f, s:f, s:f, s:f, s:f, s:i}", "id", id, "score", h->score, "recall",
                     h->recall, "relevance", h->relevance, "utility", h->utility, "preference",
                     h->preference, "centroid", (int)h->centroid);
}

static int handle_search(broker_http_t *h, struct evhttp_request *req, const char *query, double t0)
{
    params p;
    ps_err err = {0, ""};
    int status;
    if (params_parse(query, &p, &err)) {
        status = reply_err(req, &err);
        goto out;
    }
    uint64_t k = 10;
    if (p.v[P_K] && parse_uint(p.v[P_K], p.len[P_K], 1, h->lim.max_k, &k)) {
        status = reply_error(req, 400, "invalid_argument", "k: must be an integer in 1..%u",
                             h->lim.max_k);
        goto out;
    }
    if (p.v[P_EXPLAIN] && strcmp(p.v[P_EXPLAIN], "0") && strcmp(p.v[P_EXPLAIN], "1") &&
        strcmp(p.v[P_EXPLAIN], "true") && strcmp(p.v[P_EXPLAIN], "false")) {
        status = reply_error(req, 400, "invalid_argument", "explain: must be 0, 1, true or false");
        goto out;
    }
    if (!p.v[P_Q] || p.len[P_Q] == 0) {
        status = reply_error(req, 400, "invalid_query", "q: a query is required");
        goto out;
    }
    if (p.len[P_Q] > h->lim.max_query_bytes) {
        status = reply_error(req, 413, "too_large", "q: %zu bytes, more than max-query-bytes %zu",
                             p.len[P_Q], h->lim.max_query_bytes);
        goto out;
    }
    const char *user = p.v[P_USER] && p.len[P_USER] ? p.v[P_USER] : NULL;
    if (user && (p.len[P_USER] > MAX_USER_BYTES || strlen(user) != p.len[P_USER] ||
                 !ps_utf8_valid(user, p.len[P_USER]))) {
        status =
            reply_error(req, 400, "invalid_argument",
                        "user: must be valid UTF-8 without NUL, at most %d bytes", MAX_USER_BYTES);
        goto out;
    }

    /* Analyze once; the shards take the distinct tokens as they are. */
    if (ps_analyze(h->analyzer, p.v[P_Q], p.len[P_Q], "q", &h->tokens, &err)) {
        status = reply_err(req, &err);
        goto out;
    }
    ps_tokens_distinct(&h->tokens);
    if (h->tokens.n == 0) {
        status = reply_error(req, 400, "invalid_query", "q: the query has no searchable token");
        goto out;
    }
    if (h->tokens.n > PS_WIRE_MAX_TOKENS) {
        status = reply_error(req, 413, "too_large", "q: %zu distinct tokens, more than %d",
                             h->tokens.n, PS_WIRE_MAX_TOKENS);
        goto out;
    }
    for (size_t i = 0; i < h->tokens.n; i++) h->tok[i] = h->tokens.text + h->tokens.off[i];

    search_args a = {.tokens = h->tok, .ntokens = h->tokens.n};
    ps_search_opts_default(&a.opts);
    a.opts.R = h->lim.R > k ? h->lim.R : (uint32_t)k;
    a.opts.k = (uint32_t)k;
    a.opts.profile = user ? broker_profcache_get(h->profiles, user) : NULL;

    uint32_t ns = broker_pool_nshards(h->pool);
    for (uint32_t s = 0; s < ns; s++)
        h->calls[s] = (broker_call){.shard = s,
                                    .replica = -1,
                                    .expect = PERSRV__ENVELOPE__BODY_SEARCH_REPLY,
                                    .encode = encode_search,
                                    .arg = &a};
    if (broker_pool_run(h->pool, h->calls, ns, &err)) {
        status = reply_err(req, &err); /* the request could not be encoded: the client's input */
        goto out;
    }

    size_t nh = 0;
    uint32_t ok = 0;
    int timed_out = 0;
    uint64_t version = 0;
    json_t *failures = json_array();
    for (uint32_t s = 0; s < ns; s++) {
        broker_call *c = &h->calls[s];
        if (c->reply) {
            size_t got = 0;
            ps_err e = {0, ""};
            const Persrv__SearchReply *r = c->reply->search_reply;
            if (r->shard != s) {
                snprintf(c->reason, sizeof c->reason, "reply from shard %u, not %u", r->shard, s);
            } else if (r->n_hits > a.opts.R) {
                snprintf(c->reason, sizeof c->reason, "%zu hits, more than R = %u", r->n_hits,
                         a.opts.R);
            } else if (ps_wire_to_hits(r, h->hits + nh, h->hits_cap - nh, &got, &e)) {
                snprintf(c->reason, sizeof c->reason, "%s", e.msg);
            } else {
                nh += got;
                ok++;
                if (r->snapshot_version > version) version = r->snapshot_version;
            }
            ps_wire_free(c->reply);
            c->reply = NULL;
        }
        broker_metrics_shard(h->metrics, s, c->reason[0] == '\0', c->seconds, c->failovers);
        if (c->reason[0]) {
            timed_out |= c->timed_out;
            json_array_append_new(failures,
                                  json_pack("{s:i, s:s}", "shard", (int)s, "reason", c->reason));
        }
    }
    if (ok == 0) {
        json_decref(failures);
        status = reply_error(req, 503, "unavailable", "no shard answered (shard 0: %s)",
                             h->calls[0].reason);
        goto out;
    }
    size_t nres = ps_merge_hits(h->hits, nh, a.opts.R, a.opts.k);
    json_t *hits = json_array();
    for (size_t i = 0; i < nres; i++) json_array_append_new(hits, hit_json(&h->hits[i]));
    json_t *body = json_pack("{s:I, s:b, s:b, s:I, s:b, s:{s:i, s:i, s:i, s:o}, s:o}", "took",
                             (json_int_t)((now_s() - t0) * 1e3), "timed_out", timed_out, "partial",
                             ok < ns, "version", (json_int_t)version, "personalized",
                             a.opts.profile != NULL, "shards", "total", (int)ns, "successful",
                             (int)ok, "failed", (int)(ns - ok), "failures", failures, "hits", hits);
    if (ok < ns) ps_log(PS_LOG_WARN, "broker", "partial", "shards=%u failed=%u", ns, ns - ok);
    status = reply_json(req, 200, body);
out:
    params_free(&p);
    return status;
}

/* ---- stickers ---------------------------------------------------------------------------- */

static int encode_get_sticker(void *arg, uint64_t request_id, uint32_t deadline_ms, uint8_t **buf,
                              size_t *len, ps_err *err)
{
    return ps_wire_encode_get_sticker(request_id, deadline_ms, *(const uint64_t *)arg, buf, len,
                                      err);
}

static int handle_sticker(broker_http_t *h, struct evhttp_request *req, const char *idtext)
{
    uint64_t id;
    if (parse_uint(idtext, strlen(idtext), 0, UINT64_MAX, &id))
        return reply_error(req, 400, "invalid_argument",
                           "id: must be an unsigned 64-bit decimal integer");
    uint32_t s = ps_jump_hash(id, broker_pool_nshards(h->pool));
    broker_call c = {.shard = s,
                     .replica = -1,
                     .expect = PERSRV__ENVELOPE__BODY_STICKER_REPLY,
                     .encode = encode_get_sticker,
                     .arg = &id};
    ps_err err = {0, ""};
    if (broker_pool_run(h->pool, &c, 1, &err)) return reply_err(req, &err);
    broker_metrics_shard(h->metrics, s, c.reply != NULL, c.seconds, c.failovers);
    if (!c.reply)
        return reply_error(req, 503, "unavailable", "shard %u holding sticker %llu: %s", s,
                           (unsigned long long)id, c.reason);
    const Persrv__GetStickerReply *r = c.reply->sticker_reply;
    int status;
    if (!r->found || r->id != id) {
        status = reply_error(req, 404, "not_found", "sticker %llu: no such sticker",
                             (unsigned long long)id);
    } else {
        char idbuf[24];
        snprintf(idbuf, sizeof idbuf, "%llu", (unsigned long long)id);
        status = reply_json(req, 200,
                            json_pack("{s:s, s:i, s:f, s:s, s:s, s:s, s:s, s:s}", "id", idbuf,
                                      "shard", (int)s, "utility", r->utility, "ocr", r->ocr,
                                      "queries", r->queries, "keywords", r->keywords, "desc",
                                      r->desc, "emotion", r->emotion));
    }
    ps_wire_free(c.reply);
    return status;
}

/* ---- the rest ---------------------------------------------------------------------------- */

static int handle_readyz(broker_http_t *h, struct evhttp_request *req)
{
    uint32_t ns = broker_pool_nshards(h->pool), up = 0;
    json_t *down = json_array();
    for (uint32_t s = 0; s < ns; s++) {
        if (broker_pool_shard_up(h->pool, s))
            up++;
        else
            json_array_append_new(down, json_integer(s));
    }
    return reply_json(req, up == ns ? 200 : 503,
                      json_pack("{s:s, s:i, s:i, s:o}", "status",
                                up == ns ? "ready" : "unavailable", "shards", (int)ns, "up",
                                (int)up, "down", down));
}

static int handle_metrics(broker_http_t *h, struct evhttp_request *req)
{
    char *text = broker_metrics_render(h->metrics);
    if (!text) {
        ps_log(PS_LOG_ERROR, "broker", "out_of_memory", "where=metrics");
        abort();
    }
    struct evbuffer *out = evhttp_request_get_output_buffer(req);
    evbuffer_add(out, text, strlen(text));
    free(text);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4");
    evhttp_send_reply(req, 200, "OK", NULL);
    return 200;
}

#define STICKERS_PREFIX "/v1/stickers/"

static void on_request(struct evhttp_request *req, void *arg)
{
    broker_http_t *h = arg;
    double t0 = now_s();
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    const char *query = uri ? evhttp_uri_get_query(uri) : NULL;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    int ep = BROKER_EP_OTHER, status;
    if (!path) path = "";

    if (!strcmp(path, "/v1/search"))
        ep = BROKER_EP_SEARCH;
    else if (!strncmp(path, STICKERS_PREFIX, strlen(STICKERS_PREFIX)))
        ep = BROKER_EP_STICKER;
    else if (!strcmp(path, "/healthz"))
        ep = BROKER_EP_HEALTHZ;
    else if (!strcmp(path, "/readyz"))
        ep = BROKER_EP_READYZ;
    else if (!strcmp(path, "/metrics"))
        ep = BROKER_EP_METRICS;

    if (!uri) {
        status = reply_error(req, 400, "invalid_argument", "the request URI does not parse");
    } else if (ep == BROKER_EP_OTHER) {
        status = reply_error(req, 404, "not_found", "no endpoint at this path");
    } else if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        status = reply_error(req, 405, "method_not_allowed", "this endpoint takes GET or HEAD");
    } else {
        switch (ep) {
        case BROKER_EP_SEARCH:
            status = handle_search(h, req, query, t0);
            break;
        case BROKER_EP_STICKER:
            status = handle_sticker(h, req, path + strlen(STICKERS_PREFIX));
            break;
        case BROKER_EP_HEALTHZ:
            status = reply_json(req, 200, json_pack("{s:s}", "status", "ok"));
            break;
        case BROKER_EP_READYZ:
            status = handle_readyz(h, req);
            break;
        default:
            status = handle_metrics(h, req);
            break;
        }
    }
    double secs = now_s() - t0;
    broker_metrics_http(h->metrics, ep, status, secs);
    ps_log(status >= 500 ? PS_LOG_WARN : PS_LOG_DEBUG, "broker", "request",
           "method=%d path=\"%.64s\" status=%d took_ms=%.3f", (int)cmd, path, status, secs * 1e3);
}

broker_http_t *broker_http_new(struct evhttp *http, broker_pool_t *pool,
                               broker_profcache_t *profiles, broker_metrics_t *metrics,
                               const broker_limits *lim, ps_err *err)
{
    broker_http_t *h = calloc(1, sizeof *h);
    uint32_t ns = broker_pool_nshards(pool);
    uint32_t rmax = lim->R > lim->max_k ? lim->R : lim->max_k;
    if (!h) goto oom;
    ps_tokens_init(&h->tokens);
    h->pool = pool;
    h->profiles = profiles;
    h->metrics = metrics;
    h->lim = *lim;
    h->hits_cap = (size_t)ns * rmax;
    if (!(h->tok = calloc(PS_WIRE_MAX_TOKENS, sizeof *h->tok)) ||
        !(h->hits = malloc(h->hits_cap * sizeof *h->hits)) ||
        !(h->calls = calloc(ns, sizeof *h->calls)))
        goto oom;
    if (!(h->analyzer = ps_analyzer_new(err))) {
        broker_http_free(h);
        return NULL;
    }
    evhttp_set_gencb(http, on_request, h);
    return h;
oom:
    broker_http_free(h);
    ps_err_set(err, PS_ENOMEM, "out of memory for the HTTP handlers");
    return NULL;
}

void broker_http_free(broker_http_t *h)
{
    if (!h) return;
    ps_analyzer_free(h->analyzer);
    ps_tokens_free(&h->tokens);
    free(h->tok);
    free(h->hits);
    free(h->calls);
    free(h);
}
