/*
 * http.c — the broker's HTTP/JSON endpoints on libevent evhttp (DESIGN §3, §3.1):
 *
 *   GET /v1/search?q=&user=&k=&explain=   search the cluster (k 1..max-k, default 10; every
 *                                         hit carries its score breakdown, so explain (0|1)
 *                                         is accepted and checked but changes nothing yet)
 *   POST /v1/click                        {"user", "sticker_id", "query", "click_id"}: to the
 *                                         profile primary (answered from the lane's loop once
 *                                         the primary answers: the lane does not wait)
 *   GET /v1/stickers/{id}                 a sticker's stored fields, from the shard holding it
 *   GET /healthz                          the process is alive
 *   GET /readyz                           every shard has a replica answering (else 503)
 *   GET /metrics                          Prometheus text (metrics.c)
 *   GET /, GET /images/<path>             the search page and the stickers' pictures (page.c)
 *
 * With --api-keys (keys.c), search, sticker and click requests need `Authorization: Bearer KEY`
 * of a key with the scope (search; click): 401 without a valid key, 403 without the scope, 429
 * with Retry-After over the key's rate; a refused request reaches no shard and stores nothing.
 * /healthz, /readyz and /metrics stay open.
 *
 * Every error is {"error": {"code", "type", "message"}} with the status of ps_err_http_status
 * (404 for an unknown path, 405 for a method other than GET or HEAD): malformed input is a
 * 4xx, never a 5xx. Sticker ids are JSON strings, since 19-digit ids exceed the integers a
 * JSON number carries exactly; scores are doubles printed by jansson ("%.17g"), so they
 * round-trip bit for bit.
 *
 * The work behind /v1/search and /v1/stickers is core.c's (shared with the ZeroMQ front door),
 * and is answered from the lane's loop once the shards have answered (the lane serves other
 * requests meanwhile); parse.c parses the path, the query string and the click body; this file
 * renders JSON. /metrics adds the replicas' health (fan.c) to metrics.c's.
 * explain=1 adds every hit's stored fields (ocr, queries, keywords, desc, emotion), fetched
 * from the shards holding them, and for a sticker with a picture its reference (image) and where
 * a page loads it (image_url: a URL as it is, a path under the image root as /images/<path>);
 * GET /v1/stickers/{id} adds the same two.
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
#include <strings.h>
#include <time.h>

#include "broker.h"
#include "ps/fields.h"
#include "ps/log.h"
#include "ps/wire.h"

struct broker_http {
    broker_core_t *core;
    broker_metrics_t *metrics;
    uint32_t max_k;
    broker_keys_t *keys;    /* NULL: open */
    const char *image_root; /* NULL: /images/ is 404 */
};

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
                         : status == 401 ? "Unauthorized"
                         : status == 403 ? "Forbidden"
                         : status == 404 ? "Not Found"
                         : status == 405 ? "Method Not Allowed"
                         : status == 413 ? "Payload Too Large"
                         : status == 409 ? "Conflict"
                         : status == 429 ? "Too Many Requests"
                         : status == 503 ? "Service Unavailable"
                         : status == 504 ? "Gateway Timeout"
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
    const char *type = status == 404                    ? "not_found"
                       : status == 401 || status == 403 ? "authentication_error"
                       : status == 429                  ? "rate_limit_error"
                       : status < 500                   ? "invalid_request"
                                                        : "server_error";
    json_t *e =
        json_pack("{s:{s:s, s:s, s:s}}", "error", "code", code, "type", type, "message", msg);
    return reply_json(req, status, e);
}

static int reply_err(struct evhttp_request *req, const ps_err *err)
{
    return reply_error(req, ps_err_http_status(err->code), ps_errname(err->code), "%s", err->msg);
}

/* One request's log line and metrics, once it is answered. */
static void request_done(broker_http_t *h, int ep, int cmd, const char *path, const char *who,
                         int status, double t0)
{
    double secs = broker_now() - t0;
    broker_metrics_http(h->metrics, ep, status, secs);
    ps_log(status >= 500 ? PS_LOG_WARN : PS_LOG_DEBUG, "broker", "request",
           "method=%d path=\"%.64s\" key=%s status=%d took_ms=%.3f", cmd, path, who ? who : "-",
           status, secs * 1e3);
}

/* ---- search ------------------------------------------------------------------------------ */

static json_t *hit_json(const ps_hit *h, const Persrv__GetStickerReply *f)
{
    char id[24];
    snprintf(id, sizeof id, "%llu", (unsigned long long)h->id);
    json_t *o = json_pack("{s:s, s:f, s:f, s:f, s:f, s:f, s:i}", "id", id, "score", h->score,
                          "recall", h->recall, "relevance", h->relevance, "utility", h->utility,
                          "preference", h->preference, "centroid", (int)h->centroid);
    if (o && f) {
        const char *text[PS_NFIELDS] = {f->ocr, f->queries, f->keywords, f->desc, f->emotion};
        for (int i = 0; i < PS_NFIELDS; i++)
            json_object_set_new(o, ps_field_names[i], json_string(text[i]));
        if (f->image && f->image[0]) {
            json_object_set_new(o, "image", json_string(f->image));
            json_object_set_new(o, "image_url", broker_page_image_url(f->image));
        }
    }
    return o;
}

static json_t *failures_json(const broker_result *r)
{
    json_t *a = json_array();
    for (size_t i = 0; i < r->nfailures; i++)
        json_array_append_new(a, json_pack("{s:i, s:s}", "shard", (int)r->failures[i].shard,
                                           "reason", r->failures[i].reason));
    return a;
}

/* A search or sticker lookup waiting for its shards. */
typedef struct http_pending {
    broker_http_t *h;
    struct evhttp_request *req; /* libevent keeps it until we reply, even if the client left */
    const char *who;            /* the key's name (borrowed from the key set), NULL: open */
    int cmd;
    double t0;
    uint64_t id;   /* the sticker asked for */
    char path[72]; /* for the log line */
} http_pending;

static http_pending *pending_new(broker_http_t *h, struct evhttp_request *req, const char *who,
                                 double t0, const char *path)
{
    http_pending *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    *p = (http_pending){
        .h = h, .req = req, .who = who, .cmd = (int)evhttp_request_get_command(req), .t0 = t0};
    snprintf(p->path, sizeof p->path, "%s", path);
    return p;
}

static void search_answered(void *arg, int rc, const ps_err *err, const broker_result *r)
{
    http_pending *p = arg;
    int status;
    if (rc) {
        status = reply_err(p->req, err);
    } else {
        json_t *hits = json_array();
        for (size_t i = 0; i < r->nhits; i++)
            json_array_append_new(hits, hit_json(&r->hits[i], r->fields ? r->fields[i] : NULL));
        json_t *body = json_pack(
            "{s:I, s:b, s:b, s:I, s:b, s:{s:i, s:i, s:i, s:o}, s:o}", "took",
            (json_int_t)((broker_now() - p->t0) * 1e3), "timed_out", r->timed_out, "partial",
            r->ok < r->nshards, "version", (json_int_t)r->version, "personalized", r->personalized,
            "shards", "total", (int)r->nshards, "successful", (int)r->ok, "failed",
            (int)(r->nshards - r->ok), "failures", failures_json(r), "hits", hits);
        status = reply_json(p->req, 200, body);
    }
    request_done(p->h, BROKER_EP_SEARCH, p->cmd, p->path, p->who, status, p->t0);
    free(p);
}

/* GET /v1/search. Returns the status of an answer sent now, or 0 when search_answered will
 * answer once the shards have. */
static int handle_search(broker_http_t *h, struct evhttp_request *req, const char *query,
                         const char *who, double t0)
{
    broker_search_params sp;
    broker_query q;
    ps_err err = {0, ""};
    http_pending *p = NULL;
    int status;
    if (broker_search_parse(query, h->max_k, &sp, &q, &err)) {
        status = reply_err(req, &err);
    } else if (!(p = pending_new(h, req, who, t0, "/v1/search"))) {
        status = reply_error(req, 503, "out_of_memory", "out of memory for a search");
    } else if (broker_core_search(h->core, &q, search_answered, p, &err)) {
        free(p);
        status = reply_err(req, &err);
    } else {
        status = 0;
    }
    broker_search_params_free(&sp);
    return status;
}

/* ---- clicks ------------------------------------------------------------------------------ */

/* A click waiting for the profile primary's answer. */
typedef struct http_click {
    broker_http_t *h;
    struct evhttp_request *req; /* libevent keeps it until we reply, even if the client left */
    const char *who;            /* the key's name (borrowed from the key set), NULL: open */
    double t0;
    uint64_t sticker_id;
    char user[]; /* NUL-terminated */
} http_click;

/* The primary's outcome: 200 {"acknowledged": true, ...}, 504 outcome_unknown naming the click
 * id to retry with, or the error. */
static void click_answered(void *arg, int rc, const ps_err *err, const Persrv__ClickReply *r,
                           const char *click_id)
{
    http_click *hc = arg;
    struct evhttp_request *req = hc->req;
    int status;
    if (rc == 0) {
        char idbuf[24];
        snprintf(idbuf, sizeof idbuf, "%llu", (unsigned long long)hc->sticker_id);
        status = reply_json(req, 200,
                            json_pack("{s:b, s:s, s:s, s:s, s:b, s:I, s:i, s:i}", "acknowledged", 1,
                                      "user", hc->user, "sticker_id", idbuf, "click_id", click_id,
                                      "duplicate", r->duplicate, "seq", (json_int_t)r->seq,
                                      "history", (int)r->history, "centroids", (int)r->centroids));
    } else if (rc == PS_EINDOUBT) {
        /* the one answer a client must act on: retry with this click id, never without it */
        json_t *e = json_pack("{s:{s:s, s:s, s:s, s:s}}", "error", "code", ps_errname(rc), "type",
                              "server_error", "message", err->msg, "click_id", click_id);
        status = reply_json(req, ps_err_http_status(rc), e);
    } else {
        status = reply_err(req, err);
    }
    request_done(hc->h, BROKER_EP_CLICK, EVHTTP_REQ_POST, "/v1/click", hc->who, status, hc->t0);
    free(hc);
}

/* POST /v1/click {"user": "...", "sticker_id": "<decimal>" or a JSON integer, "query": "...",
 * "click_id": "..."} (query and click_id optional): acknowledged (200) once the profile
 * primary has made it durable. Returns the status of an answer sent now, or 0 when the click
 * went to the primary and click_answered answers it. */
static int handle_click(broker_http_t *h, struct evhttp_request *req, const char *who, double t0)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    const char *body = n ? (const char *)evbuffer_pullup(in, -1) : "";
    broker_click_body c;
    ps_err err = {0, ""};
    http_click *hc = NULL;
    size_t ulen = 0;
    int status;
    if (broker_click_parse(body, n, &c, &err)) {
        status = reply_err(req, &err);
    } else if (!(hc = malloc(sizeof *hc + (ulen = strlen(c.user)) + 1))) {
        status = reply_error(req, 503, "out_of_memory", "out of memory for a click");
    } else {
        *hc = (http_click){.h = h, .req = req, .who = who, .t0 = t0, .sticker_id = c.sticker_id};
        memcpy(hc->user, c.user, ulen + 1);
        broker_click k = {
            .user = c.user, .sticker_id = c.sticker_id, .query = c.query, .click_id = c.click_id};
        if (broker_core_click(h->core, &k, click_answered, hc, &err)) {
            free(hc);
            status = reply_err(req, &err);
        } else {
            status = 0; /* click_answered replies */
        }
    }
    broker_click_body_free(&c);
    return status;
}

/* ---- stickers ---------------------------------------------------------------------------- */

static void sticker_answered(void *arg, int rc, const ps_err *err, Persrv__Envelope *env)
{
    http_pending *p = arg;
    int status;
    if (rc) {
        status = reply_err(p->req, err);
    } else {
        const Persrv__GetStickerReply *r = env->sticker_reply;
        char idbuf[24];
        snprintf(idbuf, sizeof idbuf, "%llu", (unsigned long long)p->id);
        json_t *o =
            json_pack("{s:s, s:i, s:f, s:s, s:s, s:s, s:s, s:s}", "id", idbuf, "shard",
                      (int)r->shard, "utility", r->utility, "ocr", r->ocr, "queries", r->queries,
                      "keywords", r->keywords, "desc", r->desc, "emotion", r->emotion);
        if (o && r->image && r->image[0]) {
            json_object_set_new(o, "image", json_string(r->image));
            json_object_set_new(o, "image_url", broker_page_image_url(r->image));
        }
        status = reply_json(p->req, 200, o);
        ps_wire_free(env);
    }
    request_done(p->h, BROKER_EP_STICKER, p->cmd, p->path, p->who, status, p->t0);
    free(p);
}

/* GET /v1/stickers/{id}: the status of an answer sent now, or 0 (sticker_answered answers). */
static int handle_sticker(broker_http_t *h, struct evhttp_request *req, const char *path,
                          const char *who, double t0)
{
    const char *idtext = path + strlen(BROKER_STICKERS_PREFIX);
    uint64_t id;
    if (broker_parse_uint(idtext, strlen(idtext), 0, UINT64_MAX, &id))
        return reply_error(req, 400, "invalid_argument",
                           "id: must be an unsigned 64-bit decimal integer");
    ps_err err = {0, ""};
    http_pending *p = pending_new(h, req, who, t0, path);
    if (!p) return reply_error(req, 503, "out_of_memory", "out of memory for a sticker lookup");
    p->id = id;
    if (broker_core_sticker(h->core, id, sticker_answered, p, &err)) {
        free(p);
        return reply_err(req, &err);
    }
    return 0;
}

/* ---- the rest ---------------------------------------------------------------------------- */

static int handle_readyz(broker_http_t *h, struct evhttp_request *req)
{
    uint32_t ns = broker_core_nshards(h->core), ndown;
    uint32_t downs[BROKER_MAX_SHARDS];
    uint32_t up = broker_core_shards_up(h->core, downs, BROKER_MAX_SHARDS, &ndown);
    json_t *down = json_array();
    for (uint32_t i = 0; i < ndown; i++) json_array_append_new(down, json_integer(downs[i]));
    return reply_json(req, up == ns ? 200 : 503,
                      json_pack("{s:s, s:i, s:i, s:o}", "status",
                                up == ns ? "ready" : "unavailable", "shards", (int)ns, "up",
                                (int)up, "down", down));
}

static int handle_metrics(broker_http_t *h, struct evhttp_request *req)
{
    ps_buf b = PS_BUF_INIT;
    broker_metrics_render(h->metrics, &b);
    broker_upmap_render(broker_fan_upmap(broker_core_fan(h->core)), &b);
    if (b.rc) {
        ps_log(PS_LOG_ERROR, "broker", "out_of_memory", "where=metrics");
        abort();
    }
    struct evbuffer *out = evhttp_request_get_output_buffer(req);
    evbuffer_add(out, b.p, b.n);
    ps_buf_free(&b);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4");
    evhttp_send_reply(req, 200, "OK", NULL);
    return 200;
}

/* The request's body framing is unambiguous: no two different Content-Length values, and not
 * Content-Length with Transfer-Encoding (RFC 9112 §6.3: a proxy in front could read another
 * body than ours, request smuggling). Returns NULL, or what is wrong. */
static const char *framing_error(struct evhttp_request *req)
{
    const char *cl = NULL;
    int te = 0;
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    for (struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next) {
        if (strcasecmp(kv->key, "Content-Length") == 0) {
            if (cl && strcmp(cl, kv->value) != 0) return "two different Content-Length headers";
            cl = kv->value;
        } else if (strcasecmp(kv->key, "Transfer-Encoding") == 0) {
            te = 1;
        }
    }
    return cl && te ? "both Content-Length and Transfer-Encoding" : NULL;
}

/* With API keys: the request's key must have the endpoint's scope and be within its rate.
 * Returns 0 to go on, else the status of the error reply sent. OUT *who: the key's name. */
static int authorize(broker_http_t *h, struct evhttp_request *req, int ep, const char **who)
{
    *who = NULL;
    if (!h->keys || (ep != BROKER_EP_SEARCH && ep != BROKER_EP_STICKER && ep != BROKER_EP_CLICK))
        return 0;
    unsigned scope = ep == BROKER_EP_CLICK ? BROKER_SCOPE_CLICK : BROKER_SCOPE_SEARCH;
    const char *scope_name = ep == BROKER_EP_CLICK ? "click" : "search";
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    int retry = 0;
    /* Authorization: Bearer KEY (scheme case-insensitive, spaces around the key ignored) */
    const char *a = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    size_t n;
    const char *key = broker_bearer_key(a, &n);
    switch (broker_keys_check(h->keys, key, n, scope, broker_now(), who, &retry)) {
    case BROKER_AUTH_OK:
        return 0;
    case BROKER_AUTH_MISSING:
        evhttp_add_header(out, "WWW-Authenticate", "Bearer");
        return reply_error(req, 401, "unauthorized",
                           "this endpoint needs an API key: 'Authorization: Bearer <key>'");
    case BROKER_AUTH_UNKNOWN:
        evhttp_add_header(out, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
        return reply_error(req, 401, "unauthorized", "the API key is not valid");
    case BROKER_AUTH_SCOPE:
        return reply_error(req, 403, "forbidden", "the API key '%s' lacks the scope '%s'", *who,
                           scope_name);
    default: {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", retry);
        evhttp_add_header(out, "Retry-After", ra);
        return reply_error(req, 429, "rate_limited",
                           "the API key '%s' is over its rate; retry after %d s", *who, retry);
    }
    }
}

static void on_request(struct evhttp_request *req, void *arg)
{
    broker_http_t *h = arg;
    double t0 = broker_now();
    const char *who = NULL;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    const char *query = uri ? evhttp_uri_get_query(uri) : NULL;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    int status;
    if (!path) path = "";
    int ep = broker_http_endpoint(path);

    const char *bad_framing = framing_error(req);
    if (!uri) {
        status = reply_error(req, 400, "invalid_argument", "the request URI does not parse");
    } else if (bad_framing) {
        /* the connection's next bytes cannot be trusted to start a request: close it */
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
        status = reply_error(req, 400, "invalid_argument", "the request has %s", bad_framing);
    } else if (ep == BROKER_EP_OTHER) {
        status = reply_error(req, 404, "not_found", "no endpoint at this path");
    } else if (ep == BROKER_EP_CLICK && cmd != EVHTTP_REQ_POST) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
        status = reply_error(req, 405, "method_not_allowed", "this endpoint takes POST");
    } else if (ep != BROKER_EP_CLICK && cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        status = reply_error(req, 405, "method_not_allowed", "this endpoint takes GET or HEAD");
    } else if ((status = authorize(h, req, ep, &who)) != 0) {
        /* refused: nothing done */
    } else {
        switch (ep) {
        case BROKER_EP_CLICK:
            if ((status = handle_click(h, req, who, t0)) == 0) return; /* answered later */
            break;
        case BROKER_EP_SEARCH:
            if ((status = handle_search(h, req, query, who, t0)) == 0) return; /* later */
            break;
        case BROKER_EP_STICKER:
            if ((status = handle_sticker(h, req, path, who, t0)) == 0) return; /* later */
            break;
        case BROKER_EP_HEALTHZ:
            status = reply_json(req, 200, json_pack("{s:s}", "status", "ok"));
            break;
        case BROKER_EP_READYZ:
            status = handle_readyz(h, req);
            break;
        case BROKER_EP_PAGE:
        case BROKER_EP_IMAGE: {
            ps_err err = {0, ""};
            status =
                broker_page_serve(req, ep, path, h->image_root, &err) ? reply_err(req, &err) : 200;
            break;
        }
        default:
            status = handle_metrics(h, req);
            break;
        }
    }
    request_done(h, ep, (int)cmd, path, who, status, t0);
}

broker_http_t *broker_http_new(struct evhttp *http, broker_core_t *core, broker_metrics_t *metrics,
                               uint32_t max_k, broker_keys_t *keys, ps_err *err)
{
    broker_http_t *h = calloc(1, sizeof *h);
    if (!h) {
        ps_err_set(err, PS_ENOMEM, "out of memory for the HTTP handlers");
        return NULL;
    }
    h->core = core;
    h->metrics = metrics;
    h->max_k = max_k;
    h->keys = keys;
    evhttp_set_gencb(http, on_request, h);
    return h;
}

void broker_http_set_image_root(broker_http_t *h, const char *root)
{
    h->image_root = root;
}

void broker_http_free(broker_http_t *h)
{
    free(h);
}
