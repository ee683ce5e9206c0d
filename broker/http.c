/*
 * http.c — the broker's HTTP/JSON endpoints on libevent evhttp (DESIGN §3, §3.1):
 *
 *   GET /v1/search?q=&user=&k=&offset=&exclude=&explain=&timeout=&allow_partial=
 *                                         search the cluster (k 1..max-k, default 10; offset +
 *                                         k within the recall depth R: paging stops at R;
 *                                         exclude: up to 100 comma-separated ids never
 *                                         returned; timeout: the search's whole time, "150",
 *                                         "150ms", "2s"; allow_partial=false: 503/504 instead of
 *                                         a partial answer); any other parameter is a 400
 *   POST /v1/search                       the same parameters as a JSON object
 *   POST /v1/msearch                      {"searches": [...]}: up to 32 searches in one
 *                                         request per shard, answered together
 *                                         ({"responses": [...]}, each an answer or its own
 *                                         {"status", "error"})
 *   POST /v1/click                        {"user", "sticker_id", "query", "click_id"}: to the
 *                                         profile primary (answered from the lane's loop once
 *                                         the primary answers: the lane does not wait)
 *   GET /v1/stickers/{id}                 a sticker's stored fields, from the shard holding it
 *   GET /openapi.json                     the OpenAPI 3 description of this API
 *                                         (broker/www/openapi.json, embedded)
 *   GET /healthz                          the process is alive
 *   GET /readyz                           every shard has a replica answering (else 503)
 *   GET /metrics                          Prometheus text (metrics.c)
 *   GET /, GET /images/<path>             the search page and the stickers' pictures (page.c)
 *
 * With --api-keys (keys.c), search, sticker and click requests need `Authorization: Bearer KEY`
 * of a key with the scope (search; click): 401 without a valid key, 403 without the scope, 429
 * with Retry-After over the key's rate; a refused request reaches no shard and stores nothing.
 * /healthz, /readyz, /metrics, /openapi.json, the page (/) and /images/ stay open.
 *
 * Request ids: X-Request-Id (1..128 printable ASCII bytes; else a 400), or a W3C traceparent's
 * trace id, or a new random one, is the request's id (a bad X-Request-Id: 400, or 413 over 128
 * bytes): sent back in X-Request-Id (and the
 * traceparent as it came), in a search answer's "request_id", in the broker's log lines about
 * the request, and to the shards in the envelope's trace_id (their log lines name it).
 * With access-log, a line per request at info.
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
#include "ps/rand.h"
#include "ps/wire.h"

struct broker_http {
    broker_core_t *core;
    broker_metrics_t *metrics;
    broker_keys_t *keys;  /* NULL: open */
    int access_log;       /* a log line per request at info (else at debug) */
    uint64_t rid_state;   /* splitmix64 state of the request ids this lane makes */
    broker_images images; /* root NULL: /images/ is 404 */
};

static const char *method_name(int cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    default:
        return "OTHER";
    }
}

/* ---- replies ----------------------------------------------------------------------------- */

/* Send the JSON text body[0..len) and a newline with `status`. Returns status. */
static int reply_text(struct evhttp_request *req, int status, const char *body, size_t len)
{
    struct evbuffer *out = evhttp_request_get_output_buffer(req);
    evbuffer_add(out, body, len);
    evbuffer_add(out, "\n", 1);
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

static void out_of_memory(void)
{
    ps_log(PS_LOG_ERROR, "broker", "out_of_memory", "where=reply");
    abort();
}

/* Send `body` (consumed) with `status`. Returns status. */
static int reply_json(struct evhttp_request *req, int status, json_t *body)
{
    char *s = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!s) out_of_memory();
    reply_text(req, status, s, strlen(s));
    free(s);
    return status;
}

/* Send the JSON text in b (freed) with `status`. Returns status. */
static int reply_buf(struct evhttp_request *req, int status, ps_buf *b)
{
    if (b->rc) out_of_memory(); /* the writers below append finite numbers only */
    reply_text(req, status, b->p, b->n);
    ps_buf_free(b);
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
                         int status, double t0, const char *rid)
{
    double secs = broker_now() - t0;
    broker_metrics_http(h->metrics, ep, status, secs);
    ps_log(status >= 500   ? PS_LOG_WARN
           : h->access_log ? PS_LOG_INFO
                           : PS_LOG_DEBUG,
           "broker", "request",
           "method=%s path=\"%.64s\" request_id=%s key=%s status=%d took_ms=%.3f", method_name(cmd),
           path, rid && rid[0] ? rid : "-", who ? who : "-", status, secs * 1e3);
}

/* ---- request ids ------------------------------------------------------------------------- */

/* A W3C traceparent "00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>" (version 00, ids
 * not all zeros): 1 and its trace id into out[33], or 0. */
static int traceparent_id(const char *tp, char out[33])
{
    static const char hex[] = "0123456789abcdef";
    if (!tp || strlen(tp) != 55 || strncmp(tp, "00-", 3) || tp[35] != '-' || tp[52] != '-')
        return 0;
    int nz_trace = 0, nz_parent = 0;
    for (int i = 3; i < 55; i++) {
        if (i == 35 || i == 52) continue;
        if (!memchr(hex, tp[i], 16)) return 0;
        if (tp[i] != '0') {
            if (i < 35)
                nz_trace = 1;
            else if (i < 52)
                nz_parent = 1;
        }
    }
    if (!nz_trace || !nz_parent) return 0;
    memcpy(out, tp + 3, 32);
    out[32] = '\0';
    return 1;
}

/* The request's id into rid: X-Request-Id as sent (checked: 1..128 printable ASCII bytes), else
 * a valid traceparent's trace id, else a new random one; X-Request-Id (and a valid traceparent,
 * as it came) go back in the answer's headers. Returns 0, or the status of the 400 (413 when
 * too long) sent for a bad X-Request-Id, whose answer carries a new id. A new id is the next
 * of the lane's splitmix64 sequence from a random seed: distinct within the lane (splitmix64 is
 * a bijection of its counter), no system call per request. */
static int request_id(broker_http_t *h, struct evhttp_request *req, char rid[PS_WIRE_MAX_TRACE + 1])
{
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    const char *x = evhttp_find_header(in, "X-Request-Id");
    const char *tp = evhttp_find_header(in, "traceparent");
    char tid[33];
    int have_tp = traceparent_id(tp, tid);
    ps_err e = {0, ""};
    if (!x && have_tp) {
        memcpy(rid, tid, 33);
    } else if (!x || ps_wire_check_trace(x, &e)) {
        snprintf(rid, PS_WIRE_MAX_TRACE + 1, "%016llx",
                 (unsigned long long)ps_splitmix64(&h->rid_state));
    } else {
        snprintf(rid, PS_WIRE_MAX_TRACE + 1, "%s", x);
    }
    evhttp_add_header(out, "X-Request-Id", rid);
    if (have_tp) evhttp_add_header(out, "traceparent", tp);
    if (e.code) /* the answer names the id the broker logged it under */
        return reply_error(req, ps_err_http_status(e.code), ps_errname(e.code),
                           "X-Request-Id: 1..%d bytes of printable ASCII without spaces",
                           PS_WIRE_MAX_TRACE);
    return 0;
}

/* ---- search ------------------------------------------------------------------------------ */

/* The answer's JSON is written straight into a buffer, not built as a json_t tree: for a
 * search it is most of the broker's work after the merge. ps_buf_json_* write what json_dumps
 * would, so the answer's bytes are the same. */

/* "k": — or ,"name": for k = ",name" (a member after the first). */
static void key(ps_buf *b, const char *k)
{
    if (*k == ',') ps_buf_byte(b, *k++);
    ps_buf_byte(b, '"');
    ps_buf_str(b, k);
    ps_buf_add(b, "\":", 2);
}

static void key_str(ps_buf *b, const char *k, const char *v)
{
    key(b, k);
    ps_buf_json_str(b, v, strlen(v));
}

static void key_real(ps_buf *b, const char *k, double v)
{
    key(b, k);
    ps_buf_json_real(b, v);
}

static void key_int(ps_buf *b, const char *k, long long v)
{
    char t[24];
    key(b, k);
    ps_buf_add(b, t, (size_t)snprintf(t, sizeof t, "%lld", v));
}

static void key_bool(ps_buf *b, const char *k, int v)
{
    key(b, k);
    ps_buf_str(b, v ? "true" : "false");
}

/* One hit: id, the scores, the centroid, and with f (explain) the stored fields and image. */
static void hit_text(ps_buf *b, const ps_hit *h, const Persrv__GetStickerReply *f)
{
    char id[24];
    snprintf(id, sizeof id, "%llu", (unsigned long long)h->id);
    ps_buf_byte(b, '{');
    key_str(b, "id", id);
    key_real(b, ",score", h->score);
    key_real(b, ",recall", h->recall);
    key_real(b, ",relevance", h->relevance);
    key_real(b, ",utility", h->utility);
    key_real(b, ",preference", h->preference);
    key_int(b, ",centroid", h->centroid);
    if (f) {
        const char *text[PS_NFIELDS] = {f->ocr, f->queries, f->keywords, f->desc, f->emotion};
        for (int i = 0; i < PS_NFIELDS; i++) {
            ps_buf_byte(b, ',');
            key_str(b, ps_field_names[i], text[i] ? text[i] : "");
        }
        if (f->image && f->image[0]) {
            key_str(b, ",image", f->image);
            ps_buf url = PS_BUF_INIT;
            broker_page_image_url(&url, f->image);
            key(b, ",image_url");
            ps_buf_json_str(b, url.p, url.n);
            if (url.rc) b->rc = url.rc;
            ps_buf_free(&url);
        }
    }
    ps_buf_byte(b, '}');
}

/* took (integer ms, as Elasticsearch) and took_us since t0, as the object's last members. */
static void took_text(ps_buf *b, double t0)
{
    double secs = broker_now() - t0;
    key_int(b, ",took", (long long)(secs * 1e3));
    key_int(b, ",took_us", (long long)(secs * 1e6));
}

/* A search's answer object. */
static void search_text(ps_buf *b, const broker_result *r, double t0, const char *rid)
{
    ps_buf_byte(b, '{');
    key_str(b, "request_id", rid);
    key_bool(b, ",timed_out", r->timed_out);
    key_bool(b, ",partial", r->ok < r->nshards);
    key_int(b, ",version", (long long)r->version);
    key_bool(b, ",personalized", r->personalized);
    ps_buf_str(b, ",\"shards\":{");
    key_int(b, "total", (int)r->nshards);
    key_int(b, ",successful", (int)r->ok);
    key_int(b, ",failed", (int)(r->nshards - r->ok));
    ps_buf_str(b, ",\"failures\":[");
    for (size_t i = 0; i < r->nfailures; i++) {
        ps_buf_str(b, i ? ",{" : "{");
        key_int(b, "shard", (int)r->failures[i].shard);
        key_str(b, ",reason", r->failures[i].reason);
        ps_buf_byte(b, '}');
    }
    ps_buf_str(b, "]},\"hits\":[");
    for (size_t i = 0; i < r->nhits; i++) {
        if (i) ps_buf_byte(b, ',');
        hit_text(b, &r->hits[i], r->fields ? r->fields[i] : NULL);
    }
    ps_buf_byte(b, ']');
    took_text(b, t0);
    ps_buf_byte(b, '}');
}

/* A POST /v1/msearch waiting for its searches. */
typedef struct http_batch {
    broker_http_t *h;
    struct evhttp_request *req;
    const char *who;
    double t0;
    size_t n, left;
    ps_buf *resp; /* n: each search's answer or error (JSON text), as it comes */
    char rid[PS_WIRE_MAX_TRACE + 1];
} http_batch;

/* A search or sticker lookup waiting for its shards. */
typedef struct http_pending {
    broker_http_t *h;
    struct evhttp_request *req; /* libevent keeps it until we reply, even if the client left */
    const char *who;            /* the key's name (borrowed from the key set), NULL: open */
    int cmd;
    double t0;
    uint64_t id;       /* the sticker asked for */
    http_batch *batch; /* a search of a batch, or NULL */
    size_t slot;       /* its place in the batch */
    char path[72];     /* for the log line */
    char rid[PS_WIRE_MAX_TRACE + 1];
} http_pending;

static http_pending *pending_new(broker_http_t *h, struct evhttp_request *req, const char *who,
                                 double t0, const char *path, const char *rid)
{
    http_pending *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    *p = (http_pending){
        .h = h, .req = req, .who = who, .cmd = (int)evhttp_request_get_command(req), .t0 = t0};
    snprintf(p->path, sizeof p->path, "%s", path);
    snprintf(p->rid, sizeof p->rid, "%s", rid ? rid : "");
    return p;
}

/* The error shape of one search of a batch: {"status", "error": {code, type, message}}. */
static void error_text(ps_buf *b, int status, const char *code, const char *msg)
{
    char m[512];
    snprintf(m, sizeof m, "%s", msg);
    for (char *c = m; *c; c++)
        if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f) *c = '?';
    const char *type = status == 404  ? "not_found"
                       : status < 500 ? "invalid_request"
                                      : "server_error";
    ps_buf_byte(b, '{');
    key_int(b, "status", status);
    ps_buf_str(b, ",\"error\":{");
    key_str(b, "code", code);
    key_str(b, ",type", type);
    key_str(b, ",message", m);
    ps_buf_str(b, "}}");
}

/* Every search of b has its answer: send them. */
static void batch_answer(http_batch *b)
{
    ps_buf out = PS_BUF_INIT;
    ps_buf_byte(&out, '{');
    key_str(&out, "request_id", b->rid);
    ps_buf_str(&out, ",\"responses\":[");
    for (size_t i = 0; i < b->n; i++) {
        if (i) ps_buf_byte(&out, ',');
        ps_buf_add(&out, b->resp[i].p, b->resp[i].n);
        if (b->resp[i].rc) out.rc = b->resp[i].rc;
        ps_buf_free(&b->resp[i]);
    }
    ps_buf_byte(&out, ']');
    took_text(&out, b->t0);
    ps_buf_byte(&out, '}');
    int status = reply_buf(b->req, 200, &out);
    request_done(b->h, BROKER_EP_MSEARCH, EVHTTP_REQ_POST, "/v1/msearch", b->who, status, b->t0,
                 b->rid);
    free(b->resp);
    free(b);
}

/* One search of a batch has its answer (its text, taken): the batch answers once all have. */
static void batch_put(http_batch *b, size_t slot, ps_buf *answer)
{
    b->resp[slot] = *answer;
    *answer = (ps_buf)PS_BUF_INIT;
    if (--b->left == 0) batch_answer(b);
}

/* One search of a batch failed with code (a ps_err code) and msg: its answer is the error. */
static void batch_fail(http_batch *b, size_t slot, int code, const char *msg)
{
    ps_buf t = PS_BUF_INIT;
    error_text(&t, ps_err_http_status(code), ps_errname(code), msg);
    batch_put(b, slot, &t);
}

static void search_answered(void *arg, int rc, const ps_err *err, const broker_result *r)
{
    http_pending *p = arg;
    ps_buf out = PS_BUF_INIT;
    if (rc == 0) broker_metrics_search_answered(p->h->metrics, BROKER_EP_SEARCH, r);
    if (p->batch) {
        if (rc) {
            batch_fail(p->batch, p->slot, err->code, err->msg);
        } else {
            search_text(&out, r, p->t0, p->rid);
            batch_put(p->batch, p->slot, &out);
        }
        free(p);
        return;
    }
    int status;
    if (rc) {
        status = reply_err(p->req, err);
    } else {
        search_text(&out, r, p->t0, p->rid);
        status = reply_buf(p->req, 200, &out);
    }
    request_done(p->h, BROKER_EP_SEARCH, p->cmd, p->path, p->who, status, p->t0, p->rid);
    free(p);
}

/* The request's body as JSON (a JSON object is required). Returns NULL with err set. */
/* The request's body as a JSON object, or NULL with err (broker_json_object). */
static json_t *body_json(struct evhttp_request *req, ps_err *err)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    const char *body = n ? (const char *)evbuffer_pullup(in, -1) : "";
    return broker_json_object(body, n, "a JSON object", err);
}

/* GET /v1/search (query string) or POST /v1/search (JSON body). Returns the status of an answer
 * sent now, or 0 when search_answered will answer once the shards have. */
static int handle_search(broker_http_t *h, struct evhttp_request *req, const char *query,
                         const char *who, double t0, const char *rid)
{
    broker_search_params sp;
    broker_query q;
    ps_err err = {0, ""};
    http_pending *p = NULL;
    json_t *doc = NULL;
    int status, rc;
    if (evhttp_request_get_command(req) == EVHTTP_REQ_POST) {
        memset(sp.v, 0, sizeof sp.v);
        if (query && *query)
            rc = ps_err_set(&err, PS_EINVAL,
                            "a POST search takes its parameters in the JSON body, not the URL");
        else if (!(doc = body_json(req, &err)))
            rc = err.code;
        else
            rc = broker_search_parse_json(doc, "body", broker_core_max_k(h->core), &sp, &q, &err);
    } else {
        rc = broker_search_parse(query, broker_core_max_k(h->core), &sp, &q, &err);
    }
    if (rc) {
        status = reply_err(req, &err);
    } else if (!(p = pending_new(h, req, who, t0, "/v1/search", rid))) {
        status = reply_error(req, 503, "out_of_memory", "out of memory for a search");
    } else {
        q.trace = rid;
        if (broker_core_search(h->core, &q, search_answered, p, &err)) {
            free(p);
            status = reply_err(req, &err);
        } else {
            status = 0;
        }
    }
    broker_search_params_free(&sp);
    json_decref(doc);
    return status;
}

/* POST /v1/msearch {"searches": [{search}, ...]}: every search started at once, answered
 * together as {"responses": [...]} in the same order, each a search's answer or its own error
 * ({"status", "error"}). A body that is not such an object, or of more than BROKER_MAX_BATCH
 * searches, is an error for the whole request. */
static int handle_msearch(broker_http_t *h, struct evhttp_request *req, const char *query,
                          const char *who, double t0, const char *rid)
{
    ps_err err = {0, ""};
    json_t *doc = NULL, *list = NULL;
    if (query && *query)
        return reply_error(req, 400, "invalid_argument",
                           "msearch takes its searches in the JSON body, not the URL");
    if (!(doc = body_json(req, &err))) return reply_err(req, &err);
    const char *key;
    json_t *v;
    json_object_foreach(doc, key, v)
    {
        if (strcmp(key, "searches")) { /* key lives in doc: answer before freeing it */
            int st = reply_error(req, 400, "invalid_argument",
                                 "body.%.40s: not a member of an msearch body (searches)", key);
            json_decref(doc);
            return st;
        }
    }
    list = json_object_get(doc, "searches");
    size_t n = json_array_size(list);
    int status;
    if (!json_is_array(list) || n == 0) {
        status =
            reply_error(req, 400, "invalid_argument",
                        "body.searches: required, an array of 1..%d searches", BROKER_MAX_BATCH);
    } else if (n > BROKER_MAX_BATCH) {
        status = reply_error(req, 413, "too_large",
                             "body.searches: %zu searches, more than %d in one msearch", n,
                             BROKER_MAX_BATCH);
    } else {
        http_batch *b = calloc(1, sizeof *b);
        if (!b || !(b->resp = calloc(n, sizeof *b->resp))) {
            free(b);
            json_decref(doc);
            return reply_error(req, 503, "out_of_memory", "out of memory for a batch");
        }
        *b = (http_batch){
            .h = h, .req = req, .who = who, .t0 = t0, .n = n, .left = n, .resp = b->resp};
        snprintf(b->rid, sizeof b->rid, "%s", rid);
        /* Parse every search, then start those that parse in one batch (one request per
         * shard); those that fail at once have their answers in place at once. b->left counts
         * the searches not answered yet, plus one held until the batch is started, so it cannot
         * answer early. */
        b->left++;
        broker_search_params sp[BROKER_MAX_BATCH];
        broker_query qs[BROKER_MAX_BATCH];
        http_pending *ps[BROKER_MAX_BATCH];
        int rcs[BROKER_MAX_BATCH];
        ps_err errs[BROKER_MAX_BATCH];
        size_t slot[BROKER_MAX_BATCH], m = 0, started = 0;
        for (size_t i = 0; i < n; i++) {
            char at[32];
            snprintf(at, sizeof at, "searches[%zu]", i);
            ps_err e = {0, ""};
            http_pending *p = NULL;
            int rc = broker_search_parse_json(json_array_get(list, i), at,
                                              broker_core_max_k(h->core), &sp[m], &qs[m], &e);
            if (!rc && !(p = pending_new(h, req, who, t0, "/v1/msearch", rid)))
                rc = ps_err_set(&e, PS_ENOMEM, "out of memory for a search");
            if (rc) {
                broker_search_params_free(&sp[m]);
                batch_fail(b, i, rc, e.msg);
                continue;
            }
            /* each search's trace id: the request's, and its place in the batch */
            snprintf(p->rid, sizeof p->rid, "%.*s.%zu", PS_WIRE_MAX_TRACE - 4, rid, i);
            p->batch = b;
            p->slot = i;
            qs[m].trace = p->rid;
            ps[m] = p;
            slot[m++] = i;
        }
        int brc = m ? broker_core_msearch(h->core, qs, m, search_answered, (void *const *)ps, rcs,
                                          errs, rid, &started, &err)
                    : 0;
        for (size_t i = 0; i < m; i++) {
            if (brc || rcs[i]) {
                const ps_err *e = brc ? &err : &errs[i];
                int rc = brc ? brc : rcs[i];
                free(ps[i]);
                batch_fail(b, slot[i], rc, e->msg);
            }
            broker_search_params_free(&sp[i]);
        }
        json_decref(doc);
        if (--b->left == 0) batch_answer(b); /* every search failed at once */
        return 0;
    }
    json_decref(doc);
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
    char rid[PS_WIRE_MAX_TRACE + 1];
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
    request_done(hc->h, BROKER_EP_CLICK, EVHTTP_REQ_POST, "/v1/click", hc->who, status, hc->t0,
                 hc->rid);
    free(hc);
}

/* POST /v1/click {"user": "...", "sticker_id": "<decimal>" or a JSON integer, "query": "...",
 * "click_id": "..."} (query and click_id optional): acknowledged (200) once the profile
 * primary has made it durable. Returns the status of an answer sent now, or 0 when the click
 * went to the primary and click_answered answers it. */
static int handle_click(broker_http_t *h, struct evhttp_request *req, const char *who, double t0,
                        const char *rid)
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
        snprintf(hc->rid, sizeof hc->rid, "%s", rid);
        memcpy(hc->user, c.user, ulen + 1);
        broker_click k = {.user = c.user,
                          .sticker_id = c.sticker_id,
                          .query = c.query,
                          .click_id = c.click_id,
                          .trace = rid};
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
            ps_buf url = PS_BUF_INIT;
            broker_page_image_url(&url, r->image);
            if (url.rc) out_of_memory();
            json_object_set_new(o, "image", json_string(r->image));
            json_object_set_new(o, "image_url", json_stringn(url.p, url.n));
            ps_buf_free(&url);
        }
        status = reply_json(p->req, 200, o);
        ps_wire_free(env);
    }
    request_done(p->h, BROKER_EP_STICKER, p->cmd, p->path, p->who, status, p->t0, p->rid);
    free(p);
}

/* GET /v1/stickers/{id}: the status of an answer sent now, or 0 (sticker_answered answers). */
static int handle_sticker(broker_http_t *h, struct evhttp_request *req, const char *path,
                          const char *rid, const char *who, double t0)
{
    const char *idtext = path + strlen(BROKER_STICKERS_PREFIX);
    uint64_t id;
    if (broker_parse_uint(idtext, strlen(idtext), 0, UINT64_MAX, &id))
        return reply_error(req, 400, "invalid_argument",
                           "id: must be an unsigned 64-bit decimal integer");
    ps_err err = {0, ""};
    http_pending *p = pending_new(h, req, who, t0, path, rid);
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
    char rid[PS_WIRE_MAX_TRACE + 1];
    if (!path) path = "";
    int ep = broker_http_endpoint(path);

    const char *bad_framing = framing_error(req);
    if ((status = request_id(h, req, rid)) != 0) {
        /* a bad X-Request-Id: answered */
    } else if (!uri) {
        status = reply_error(req, 400, "invalid_argument", "the request URI does not parse");
    } else if (bad_framing) {
        /* the connection's next bytes cannot be trusted to start a request: close it */
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
        status = reply_error(req, 400, "invalid_argument", "the request has %s", bad_framing);
    } else if (ep == BROKER_EP_OTHER) {
        status = reply_error(req, 404, "not_found", "no endpoint at this path");
    } else if ((ep == BROKER_EP_CLICK || ep == BROKER_EP_MSEARCH) && cmd != EVHTTP_REQ_POST) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
        status = reply_error(req, 405, "method_not_allowed", "this endpoint takes POST");
    } else if (ep == BROKER_EP_SEARCH && cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD &&
               cmd != EVHTTP_REQ_POST) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD, POST");
        status = reply_error(req, 405, "method_not_allowed", "this endpoint takes GET or POST");
    } else if (ep != BROKER_EP_CLICK && ep != BROKER_EP_MSEARCH && ep != BROKER_EP_SEARCH &&
               cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        status = reply_error(req, 405, "method_not_allowed", "this endpoint takes GET or HEAD");
    } else if ((status = authorize(h, req, ep, &who)) != 0) {
        /* refused: nothing done */
    } else {
        switch (ep) {
        case BROKER_EP_CLICK:
            if ((status = handle_click(h, req, who, t0, rid)) == 0) return; /* answered later */
            break;
        case BROKER_EP_SEARCH:
            if ((status = handle_search(h, req, query, who, t0, rid)) == 0) return; /* later */
            break;
        case BROKER_EP_MSEARCH:
            if ((status = handle_msearch(h, req, query, who, t0, rid)) == 0) return; /* later */
            break;
        case BROKER_EP_STICKER:
            if ((status = handle_sticker(h, req, path, rid, who, t0)) == 0) return; /* later */
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
                broker_page_serve(req, ep, path, &h->images, &err) ? reply_err(req, &err) : 200;
            break;
        }
        case BROKER_EP_OPENAPI: {
            struct evbuffer *out = evhttp_request_get_output_buffer(req);
            evbuffer_add_reference(out, broker_openapi_json, broker_openapi_json_len, NULL, NULL);
            evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                              "application/json");
            evhttp_send_reply(req, 200, "OK", NULL);
            status = 200;
            break;
        }
        default:
            status = handle_metrics(h, req);
            break;
        }
    }
    request_done(h, ep, (int)cmd, path, who, status, t0, rid);
}

broker_http_t *broker_http_new(struct evhttp *http, broker_core_t *core, broker_metrics_t *metrics,
                               broker_keys_t *keys, int access_log, ps_err *err)
{
    broker_http_t *h = calloc(1, sizeof *h);
    if (!h) {
        ps_err_set(err, PS_ENOMEM, "out of memory for the HTTP handlers");
        return NULL;
    }
    h->core = core;
    h->metrics = metrics;
    h->keys = keys;
    h->access_log = access_log;
    if (ps_random_bytes(&h->rid_state, sizeof h->rid_state))
        h->rid_state = (uint64_t)(uintptr_t)h ^ (uint64_t)time(NULL) << 20;
    evhttp_set_gencb(http, on_request, h);
    return h;
}

void broker_http_set_images(broker_http_t *h, const broker_images *img)
{
    h->images = *img;
}

void broker_http_free(broker_http_t *h)
{
    free(h);
}
