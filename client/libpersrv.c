/*
 * libpersrv.c — the client library (include/persrv.h): requests to the broker's front door
 * through the wire's request helper (ps/zreq.h: one DEALER, Lazy Pirate timeouts and retries,
 * failover over the endpoints of a comma-separated list, refused connections reported at
 * once), and the conversion of decoded replies into the plain public structs.
 *
 * A call is one exchange: encode the request once (ps_wire_encode_*, request_id 0, with the API
 * key appended), let ps_zreq_call stamp a fresh request_id on every attempt and wait for the
 * reply that echoes it (ps_wire_decode: every cap and value checked before we look at it),
 * then either map an Error to a PERSRV_E* code or copy the reply's numbers into the result. A
 * result keeps the decoded envelope and points its strings into it, so nothing is copied twice:
 * one allocation holds the public struct, its arrays and the envelope pointer.
 *
 * Replies with another request_id are dropped, with one exception: the broker answers a frame
 * it could not decode with an Error of request_id 0 (it could not read the id). Since a socket
 * carries one request at a time (it is replaced after every timeout), such an Error can only
 * be about the request in flight, and is taken as its answer (ps_zreq_call does so).
 *
 * Receiving and decoding a reply (persrv__recv), judging it (persrv__reply_check) and turning a
 * query_reply into a persrv_result (persrv__result_from) are shared with the libevent adapter
 * (persrv_event.c) through persrv_int.h.
 */
#include "persrv.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "persrv_int.h"
#include "ps/curve.h"
#include "ps/err.h"
#include "ps/rand.h"
#include "ps/wire.h"
#include "ps/zreq.h"

struct persrv {
    int err;          /* PERSRV_OK or the last call's PERSRV_E* code */
    char errstr[256]; /* what failed, "" after success */
    char errname[32]; /* the broker's Error.code, "" unless the broker sent an error */
    char *endpoint;   /* owned copy of the list as given */
    char **eps;       /* its endpoints (pointing into eplist) */
    size_t neps;
    char *eplist;  /* owned: the list with its commas made NULs */
    void *zctx;    /* this context's own ZeroMQ context */
    ps_zreq_t *zr; /* the requester; NULL when it could not be made (then made again per call) */
    uint32_t timeout_ms, retries;
    size_t max_frame;
    uint64_t next_id; /* seeds click ids: a per-context random start */
    char *api_key;    /* owned copy, NULL: none */
    persrv__curve curve;
    char (*server_keys)[41]; /* per endpoint (persrv_connect_env), NULL: curve.server for all */
};

/* ---- errors --------------------------------------------------------------------------------- */

const char *persrv_strerror(int code)
{
    if (code == PERSRV_OK) return "success";
#define PERSRV__ERR_MSG(name, val, str, retry, msg)                                                \
    if (code == (val)) return msg;
    PERSRV_ERRNO_MAP(PERSRV__ERR_MSG)
#undef PERSRV__ERR_MSG
    return "unknown error";
}

const char *persrv_errname(int code)
{
    if (code == PERSRV_OK) return "ok";
#define PERSRV__ERR_NAME(name, val, str, retry, msg)                                               \
    if (code == (val)) return str;
    PERSRV_ERRNO_MAP(PERSRV__ERR_NAME)
#undef PERSRV__ERR_NAME
    return "unknown";
}

int persrv_retriable(int code)
{
#define PERSRV__ERR_RETRY(name, val, str, retry, msg)                                              \
    if (code == (val)) return retry;
    PERSRV_ERRNO_MAP(PERSRV__ERR_RETRY)
#undef PERSRV__ERR_RETRY
    return 0;
}

static int set_err(persrv_t *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int set_err(persrv_t *c, int code, const char *fmt, ...)
{
    va_list ap;
    c->err = code;
    va_start(ap, fmt);
    vsnprintf(c->errstr, sizeof c->errstr, fmt, ap);
    va_end(ap);
    return code;
}

static void clear_err(persrv_t *c)
{
    c->err = PERSRV_OK;
    c->errstr[0] = '\0';
    c->errname[0] = '\0';
}

int persrv__from_ps(int ps)
{
    switch (ps) {
    case PS_EINVAL:
    case PS_EUTF8:
    case PS_EQUERY:
        return PERSRV_EINVAL;
    case PS_ETOOBIG:
        return PERSRV_ETOOBIG;
    case PS_ENOTFOUND:
        return PERSRV_ENOTFOUND;
    case PS_ENOMEM: /* the broker out of memory is a passing condition, like overload */
    case PS_EUNAVAIL:
        return PERSRV_EUNAVAIL;
    case PS_ETIMEDOUT:
        return PERSRV_ETIMEDOUT;
    case PS_EPARSE:
        return PERSRV_EPROTO;
    case PS_EUNAUTH:
        return PERSRV_EUNAUTH;
    case PS_EFORBIDDEN:
        return PERSRV_EFORBIDDEN;
    case PS_ERATE:
        return PERSRV_ERATE;
    case PS_EINDOUBT:
        return PERSRV_EINDOUBT;
    case PS_ECONFLICT: /* a click id reused for another sticker: the caller's input */
        return PERSRV_EINVAL;
    default:
        return PERSRV_ESERVER;
    }
}

int persrv_errcode(const persrv_t *ctx)
{
    return ctx ? ctx->err : PERSRV_EINVAL;
}

const char *persrv_errstr(const persrv_t *ctx)
{
    return ctx ? ctx->errstr : "persrv_errstr: ctx is NULL";
}

const char *persrv_errname_last(const persrv_t *ctx)
{
    if (!ctx) return persrv_errname(PERSRV_EINVAL);
    return ctx->errname[0] ? ctx->errname : persrv_errname(ctx->err);
}

/* ---- context -------------------------------------------------------------------------------- */

void persrv_options_init(persrv_options *opt)
{
    if (!opt) return;
    opt->timeout_ms = PERSRV_DEFAULT_TIMEOUT_MS;
    opt->retries = PERSRV_DEFAULT_RETRIES;
    opt->max_frame = PERSRV_DEFAULT_MAX_FRAME;
    opt->api_key = NULL;
    opt->curve_server_key = opt->curve_public_key = opt->curve_secret_key = NULL;
}

void persrv__env_free(Persrv__Envelope *env)
{
    ps_wire_free(env);
}

/* q's QueryRequest with its options and request id (no API key). */
static int persrv__encode_query_body(uint64_t rid, uint32_t deadline_ms, const persrv_query *q,
                                     size_t qlen, uint8_t **buf, size_t *len, ps_err *e)
{
    ps_wire_query_opts o = {.exclude = q->exclude,
                            .nexclude = q->nexclude,
                            .offset = q->offset,
                            .timeout_ms = q->timeout_ms,
                            .no_partial = q->no_partial};
    int rc = ps_wire_encode_query_ex(rid, deadline_ms, q->text, qlen, q->user, q->k, q->explain, &o,
                                     buf, len, e);
    if (!rc && q->request_id && q->request_id[0])
        rc = ps_wire_append_trace(buf, len, q->request_id, e);
    if (rc) {
        free(*buf);
        *buf = NULL;
        *len = 0;
    }
    return rc;
}

int persrv__encode_query(uint64_t rid, uint32_t deadline_ms, const persrv_query *q, size_t qlen,
                         const char *api_key, uint8_t **buf, size_t *len, ps_err *e)
{
    int rc = persrv__encode_query_body(rid, deadline_ms, q, qlen, buf, len, e);
    if (!rc) rc = ps_wire_append_api_key(buf, len, api_key, e);
    if (rc) {
        free(*buf);
        *buf = NULL;
        *len = 0;
    }
    return rc;
}

void persrv__wipe_free(char *s)
{
    if (!s) return;
    for (volatile char *p = s; *p; p++) *p = 0;
    free(s);
}

void persrv__options_fill(persrv_options *o, const persrv_options *opt)
{
    persrv_options_init(o);
    if (!opt) return;
    if (opt->timeout_ms) o->timeout_ms = opt->timeout_ms;
    o->retries = opt->retries;
    if (opt->max_frame) o->max_frame = opt->max_frame;
    o->api_key = opt->api_key;
    o->curve_server_key = opt->curve_server_key;
    o->curve_public_key = opt->curve_public_key;
    o->curve_secret_key = opt->curve_secret_key;
}

int persrv__curve_from(const persrv_options *o, persrv__curve *k, ps_err *e)
{
    const char *in[3] = {o->curve_server_key, o->curve_public_key, o->curve_secret_key};
    static const char *const names[3] = {"curve_server_key", "curve_public_key",
                                         "curve_secret_key"};
    char *out[3] = {k->server, k->pub, k->sec};
    memset(k, 0, sizeof *k);
    int set = !!in[0] + !!in[1] + !!in[2];
    if (set == 0) return PERSRV_OK;
    for (int i = 0; i < 3; i++) {
        if (!in[i]) {
            ps_err_set(e, PS_EINVAL, "options: %s is needed with the other CURVE keys", names[i]);
            return PERSRV_EINVAL;
        }
        if (!ps_curve_z85_valid(in[i], strlen(in[i]))) {
            ps_err_set(e, PS_EINVAL, "options: %s is not a 40-character Z85 key", names[i]);
            return PERSRV_EINVAL;
        }
        memcpy(out[i], in[i], 41);
    }
    k->on = 1;
    return PERSRV_OK;
}

int persrv__curve_apply(const persrv__curve *k, void *sock)
{
    if (!k->on) return 0;
    return zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, k->server, 41) ||
                   zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, k->pub, 41) ||
                   zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, k->sec, 41)
               ? -1
               : 0;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t persrv__id_seed(const void *salt)
{
    uint64_t seed = now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)salt;
    return ps_splitmix64(&seed) >> 1; /* room to count up without wrapping to 0 */
}

/* The client's own CURVE keys on a new socket (ps_zreq_opts.setup). */
static int setup_sock(void *arg, void *sock, size_t index, const char *endpoint)
{
    const persrv_t *c = arg;
    (void)endpoint;
    if (!c->curve.on) return 0;
    persrv__curve k = c->curve;
    if (c->server_keys) memcpy(k.server, c->server_keys[index], sizeof k.server);
    return persrv__curve_apply(&k, sock);
}

/* Make c->zr (the requester over c's endpoints) unless it is there. */
static int open_zreq(persrv_t *c)
{
    if (c->zr) return 0;
    if (!c->zctx && !(c->zctx = zmq_ctx_new()))
        return set_err(c, PERSRV_ECONNECT, "zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
    ps_zreq_opts o = {.timeout_ms = c->timeout_ms,
                      .retries = c->retries,
                      .max_frame = c->max_frame,
                      .setup = setup_sock,
                      .setup_arg = c};
    ps_err e = {0, ""};
    if (!(c->zr = ps_zreq_new(c->zctx, (const char *const *)c->eps, c->neps, &o, &e)))
        return set_err(c, e.code == PS_ENOMEM ? PERSRV_ENOMEM : PERSRV_ECONNECT, "%s", e.msg);
    return 0;
}

/* Split c->endpoint at its commas into c->eps. PERSRV_EINVAL for an empty element or too
 * many. */
static int split_endpoints(persrv_t *c)
{
    size_t n = 1;
    for (const char *p = c->endpoint; *p; p++) n += *p == ',';
    if (n > PS_ZREQ_MAX_ENDPOINTS)
        return set_err(c, PERSRV_EINVAL, "persrv_connect: more than %d endpoints",
                       PS_ZREQ_MAX_ENDPOINTS);
    if (!(c->eplist = strdup(c->endpoint)) || !(c->eps = calloc(n, sizeof *c->eps)))
        return PERSRV_ENOMEM;
    c->neps = 0;
    for (char *p = c->eplist, *save = NULL;; p = NULL) {
        char *t = strtok_r(p, ",", &save);
        if (!t) break;
        c->eps[c->neps++] = t;
    }
    if (c->neps != n)
        return set_err(c, PERSRV_EINVAL, "persrv_connect: an empty endpoint in '%.200s'",
                       c->endpoint);
    return 0;
}

static persrv_t *connect_keys(const char *endpoint, const persrv_options *opt,
                              char (*server_keys)[41])
{
    persrv_options o;
    persrv_t *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    persrv__options_fill(&o, opt);
    c->timeout_ms = o.timeout_ms;
    c->retries = o.retries;
    c->max_frame = o.max_frame;
    c->next_id = persrv__id_seed(c);
    c->server_keys = server_keys;
    if (!endpoint) {
        set_err(c, PERSRV_EINVAL, "persrv_connect: endpoint is NULL");
        return c;
    }
    ps_err e = {0, ""};
    if (persrv__curve_from(&o, &c->curve, &e)) {
        set_err(c, PERSRV_EINVAL, "persrv_connect: %s", e.msg);
        return c;
    }
    int rc = 0;
    if (!(c->endpoint = strdup(endpoint)) || (o.api_key && !(c->api_key = strdup(o.api_key))) ||
        (rc = split_endpoints(c)) == PERSRV_ENOMEM) {
        c->server_keys = NULL; /* still the caller's */
        persrv_close(c);
        return NULL;
    }
    if (rc) return c;
    if (!(c->zctx = zmq_ctx_new())) {
        if (errno == ENOMEM) {
            c->server_keys = NULL;
            persrv_close(c);
            return NULL;
        }
        set_err(c, PERSRV_ECONNECT, "zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
        return c;
    }
    if (open_zreq(c) == PERSRV_ENOMEM) {
        c->server_keys = NULL;
        persrv_close(c);
        return NULL;
    }
    return c;
}

persrv_t *persrv_connect(const char *endpoint, const persrv_options *opt)
{
    return connect_keys(endpoint, opt, NULL);
}

persrv_t *persrv_connect_env(const char *endpoint, const persrv_options *opt)
{
    persrv_options o;
    persrv__options_fill(&o, opt);
    if (!o.api_key) o.api_key = getenv("PERSRV_API_KEY");
    ps_err e = {0, ""};
    ps_curve_t *curve = ps_curve_from_env(&e);
    char(*keys)[41] = NULL;
    if (curve && endpoint) {
        /* each endpoint of the list its own server key, from the known-servers file */
        size_t n = 1;
        for (const char *p = endpoint; *p; p++) n += *p == ',';
        char *list = strdup(endpoint);
        if (!list || !(keys = calloc(n, sizeof *keys))) {
            free(list);
            ps_curve_free(curve);
            return NULL;
        }
        size_t i = 0;
        for (char *p = list, *save = NULL, *t; !e.code && (t = strtok_r(p, ",", &save)); p = NULL) {
            const char *k = ps_curve_server_key(curve, t);
            if (!k)
                ps_curve_check_endpoint(curve, t, &e); /* says why */
            else if (i < n)
                memcpy(keys[i++], k, 41);
        }
        free(list);
        o.curve_server_key = keys[0];
        o.curve_public_key = ps_curve_public(curve);
        o.curve_secret_key = ps_curve_secret(curve);
    }
    persrv_t *c = e.code ? connect_keys(NULL, &o, NULL) : connect_keys(endpoint, &o, keys);
    if (c && e.code) set_err(c, PERSRV_EINVAL, "PERSRV_CURVE_*: %s", e.msg);
    if (!c || e.code) free(keys); /* else the context owns them */
    ps_curve_free(curve);         /* persrv_connect copied the keys */
    return c;
}

void persrv_close(persrv_t *ctx)
{
    if (!ctx) return;
    ps_zreq_free(ctx->zr);
    if (ctx->zctx) zmq_ctx_term(ctx->zctx);
    free(ctx->endpoint);
    free(ctx->eps);
    free(ctx->eplist);
    free(ctx->server_keys);
    persrv__wipe_free(ctx->api_key);
    for (volatile char *p = ctx->curve.sec; p < ctx->curve.sec + sizeof ctx->curve.sec; p++) *p = 0;
    free(ctx);
}

int persrv_set_timeout(persrv_t *ctx, uint32_t timeout_ms)
{
    if (!ctx) return PERSRV_EINVAL;
    ctx->timeout_ms = timeout_ms ? timeout_ms : PERSRV_DEFAULT_TIMEOUT_MS;
    return PERSRV_OK;
}

/* ---- one exchange --------------------------------------------------------------------------- */

typedef struct request {
    int body; /* PERSRV__ENVELOPE__BODY_QUERY, _GET_STICKER, _HEALTH or _CLICK */
    const persrv_query *q;
    size_t qlen;
    uint64_t id;                        /* get_sticker, click */
    const char *user, *text, *click_id; /* click */
} request;

static int encode(const request *r, uint64_t rid, uint32_t deadline, uint8_t **buf, size_t *len,
                  ps_err *e)
{
    switch (r->body) {
    case PERSRV__ENVELOPE__BODY_QUERY:
        return persrv__encode_query_body(rid, deadline, r->q, r->qlen, buf, len, e);
    case PERSRV__ENVELOPE__BODY_GET_STICKER:
        return ps_wire_encode_get_sticker(rid, deadline, r->id, buf, len, e);
    case PERSRV__ENVELOPE__BODY_CLICK:
        return ps_wire_encode_click(rid, deadline, r->user, r->id, r->text, r->click_id, buf, len,
                                    e);
    default:
        return ps_wire_encode_health(rid, deadline, buf, len, e);
    }
}

static const char *body_name(int body)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field(&persrv__envelope__descriptor, (unsigned)body);
    return f ? f->name : "no body";
}

int persrv__recv(void *sock, size_t max_frame, Persrv__Envelope **out, uint64_t *peek, ps_err *e)
{
    zmq_msg_t m;
    *out = NULL;
    *peek = 0;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, sock, ZMQ_DONTWAIT) < 0) {
        int err = zmq_errno();
        zmq_msg_close(&m);
        if (err == EAGAIN || err == EINTR) return PERSRV__AGAIN;
        return ps_err_set(e, PERSRV_ECONNECT, "receive: %s", zmq_strerror(err));
    }
    int more = zmq_msg_more(&m);
    const void *data = zmq_msg_data(&m);
    size_t size = zmq_msg_size(&m);
    *peek = ps_wire_peek_request_id(data, size);
    if (more) {
        /* the front door speaks single frames: drain the message, then reject it */
        while (more) {
            zmq_msg_t rest;
            zmq_msg_init(&rest);
            if (zmq_msg_recv(&rest, sock, 0) < 0)
                more = 0;
            else
                more = zmq_msg_more(&rest);
            zmq_msg_close(&rest);
        }
        zmq_msg_close(&m);
        return ps_err_set(e, PERSRV_EPROTO, "reply: more than one frame");
    }
    ps_err de = {0, ""};
    int rc = ps_wire_decode(data, size, max_frame, out, &de);
    zmq_msg_close(&m);
    if (rc)
        return ps_err_set(e, rc == PS_ENOMEM ? PERSRV_ENOMEM : PERSRV_EPROTO, "reply: %s", de.msg);
    return PERSRV_OK;
}

int persrv__reply_check(const Persrv__Envelope *env, int want, ps_err *e)
{
    if (env->body_case == PERSRV__ENVELOPE__BODY_ERROR) {
        const Persrv__Error *er = env->error;
        int code = persrv__from_ps(ps_wire_error_code(er));
        if (!er->message[0]) return ps_err_set(e, code, "broker: %s", er->code);
        return ps_err_set(e, code, "broker: %.200s", er->message);
    }
    if ((int)env->body_case != want)
        return ps_err_set(e, PERSRV_EPROTO, "reply: %s where %s belongs",
                          body_name((int)env->body_case), body_name(want));
    return PERSRV_OK;
}

/* The client's code for an error of ps_zreq_call. */
static int from_zreq(int rc)
{
    switch (rc) {
    case PS_ETIMEDOUT:
        return PERSRV_ETIMEDOUT;
    case PS_EUNAVAIL: /* every endpoint refused the connection */
        return PERSRV_EREFUSED;
    case PS_EPARSE:
        return PERSRV_EPROTO;
    case PS_ENOMEM:
        return PERSRV_ENOMEM;
    default: /* an endpoint ZeroMQ rejects, a ZeroMQ call that failed */
        return PERSRV_ECONNECT;
    }
}

/* Send r and wait for its answer, up to `attempts` times while attempts time out (Lazy
 * Pirate, failing over along the endpoint list; ps_zreq_call). OUT *out: the decoded reply,
 * whose body is `want` (the caller frees it with ps_wire_free). An Error reply becomes the
 * matching PERSRV_E* code. */
static int call_n(persrv_t *c, const request *r, int want, uint32_t attempts,
                  Persrv__Envelope **out)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    ps_err e = {0, ""};
    Persrv__Envelope *env = NULL;
    int rc;
    *out = NULL;
    /* encoded once: ps_zreq_call stamps each attempt's request_id and deadline on it */
    if ((rc = encode(r, 0, 0, &buf, &len, &e)) ||
        (rc = ps_wire_append_api_key(&buf, &len, c->api_key, &e))) {
        free(buf);
        return set_err(c, rc == PS_ENOMEM ? PERSRV_ENOMEM : persrv__from_ps(rc), "%s", e.msg);
    }
    if ((rc = open_zreq(c))) {
        free(buf);
        return rc;
    }
    rc = ps_zreq_call(c->zr, buf, len, c->timeout_ms, attempts, &env, &e);
    free(buf);
    if (rc) return set_err(c, from_zreq(rc), "%s", e.msg);
    if ((rc = persrv__reply_check(env, want, &e))) {
        if (env->body_case == PERSRV__ENVELOPE__BODY_ERROR)
            snprintf(c->errname, sizeof c->errname, "%s", env->error->code);
        else /* a confused peer: start afresh */
            ps_zreq_reopen(c->zr, ps_zreq_index(c->zr), NULL);
        ps_wire_free(env);
        return set_err(c, rc, "%s", e.msg);
    }
    *out = env;
    return PERSRV_OK;
}

/* call_n with 1 + the context's retries. */
static int call(persrv_t *c, const request *r, int want, Persrv__Envelope **out)
{
    return call_n(c, r, want, c->retries < UINT32_MAX ? c->retries + 1 : UINT32_MAX, out);
}

/* ---- results -------------------------------------------------------------------------------- */

/* Results and stickers: the public struct first, so the pointer the caller frees is the block. */
typedef struct result_block {
    persrv_result pub;
    Persrv__Envelope *env; /* the strings' owner */
} result_block;

typedef struct sticker_block {
    persrv_sticker pub;
    Persrv__Envelope *env;
} sticker_block;

#define ALIGN_UP(n) (((n) + sizeof(max_align_t) - 1) & ~(sizeof(max_align_t) - 1))

static void sticker_from(persrv_sticker *s, const Persrv__GetStickerReply *r)
{
    s->id = r->id;
    s->ocr = r->ocr;
    s->queries = r->queries;
    s->keywords = r->keywords;
    s->desc = r->desc;
    s->emotion = r->emotion;
    s->utility = r->utility;
    s->image = r->image ? r->image : "";
}

int persrv__result_from(Persrv__Envelope **penv, persrv_result **out)
{
    Persrv__Envelope *env = *penv;
    const Persrv__QueryReply *qr = env->query_reply;
    size_t off_hits = ALIGN_UP(sizeof(result_block));
    size_t off_st = off_hits + ALIGN_UP(qr->n_hits * sizeof(persrv_hit));
    size_t off_fail = off_st + ALIGN_UP(qr->n_fields * sizeof(persrv_sticker));
    size_t total = off_fail + qr->n_failures * sizeof(persrv_shard_failure);
    char *mem;
    *penv = NULL;
    *out = NULL;
    if (!(mem = calloc(1, total))) {
        ps_wire_free(env);
        return PERSRV_ENOMEM;
    }
    result_block *b = (result_block *)mem;
    persrv_hit *hits = (persrv_hit *)(mem + off_hits);
    persrv_sticker *st = (persrv_sticker *)(mem + off_st);
    persrv_shard_failure *fail = (persrv_shard_failure *)(mem + off_fail);
    for (size_t i = 0; i < qr->n_hits; i++) {
        const Persrv__Hit *h = qr->hits[i];
        hits[i] = (persrv_hit){.id = h->id,
                               .score = h->score,
                               .recall = h->recall,
                               .relevance = h->relevance,
                               .utility = h->utility,
                               .preference = h->preference,
                               .centroid = h->centroid,
                               .fields = NULL};
        /* ps_wire_decode checked: n_fields is 0 or n_hits, fields[i] is hits[i]'s */
        if (qr->n_fields && qr->fields[i]->found) {
            sticker_from(&st[i], qr->fields[i]);
            hits[i].fields = &st[i];
        }
    }
    for (size_t i = 0; i < qr->n_failures; i++)
        fail[i] = (persrv_shard_failure){qr->failures[i]->shard, qr->failures[i]->reason};
    b->env = env;
    b->pub = (persrv_result){.hits = hits,
                             .nhits = qr->n_hits,
                             .partial = qr->partial,
                             .timed_out = qr->timed_out,
                             .personalized = qr->personalized,
                             .version = qr->snapshot_version,
                             .shards_total = qr->shards_total,
                             .failures = fail,
                             .nfailures = qr->n_failures,
                             .took_us = qr->took_us};
    *out = &b->pub;
    return PERSRV_OK;
}

int persrv_search(persrv_t *ctx, const persrv_query *q, persrv_result **out)
{
    Persrv__Envelope *env;
    int rc;
    if (out) *out = NULL;
    if (!ctx) return PERSRV_EINVAL;
    clear_err(ctx);
    if (!q || !out) return set_err(ctx, PERSRV_EINVAL, "persrv_search: q or out is NULL");
    if (!q->text) return set_err(ctx, PERSRV_EINVAL, "persrv_search: q->text is NULL");
    request r = {
        .body = PERSRV__ENVELOPE__BODY_QUERY, .q = q, .qlen = q->len ? q->len : strlen(q->text)};
    if ((rc = call(ctx, &r, PERSRV__ENVELOPE__BODY_QUERY_REPLY, &env))) return rc;
    if ((rc = persrv__result_from(&env, out)))
        return set_err(ctx, rc, "persrv_search: out of memory for the result");
    return PERSRV_OK;
}

void persrv_result_free(persrv_result *r)
{
    if (!r) return;
    result_block *b = (result_block *)r;
    ps_wire_free(b->env);
    free(b);
}

int persrv_get_sticker(persrv_t *ctx, uint64_t id, persrv_sticker **out)
{
    Persrv__Envelope *env;
    int rc;
    if (out) *out = NULL;
    if (!ctx) return PERSRV_EINVAL;
    clear_err(ctx);
    if (!out) return set_err(ctx, PERSRV_EINVAL, "persrv_get_sticker: out is NULL");
    request r = {.body = PERSRV__ENVELOPE__BODY_GET_STICKER, .id = id};
    if ((rc = call(ctx, &r, PERSRV__ENVELOPE__BODY_STICKER_REPLY, &env))) return rc;
    const Persrv__GetStickerReply *s = env->sticker_reply;
    if (!s->found) {
        ps_wire_free(env);
        return set_err(ctx, PERSRV_ENOTFOUND, "sticker %llu: not found", (unsigned long long)id);
    }
    if (s->id != id) {
        unsigned long long got = s->id;
        ps_wire_free(env);
        return set_err(ctx, PERSRV_EPROTO, "sticker_reply.id: %llu, asked for %llu", got,
                       (unsigned long long)id);
    }
    sticker_block *b = malloc(sizeof *b);
    if (!b) {
        ps_wire_free(env);
        return set_err(ctx, PERSRV_ENOMEM, "persrv_get_sticker: out of memory");
    }
    sticker_from(&b->pub, s);
    b->env = env;
    *out = &b->pub;
    return PERSRV_OK;
}

void persrv_sticker_free(persrv_sticker *s)
{
    if (!s) return;
    sticker_block *b = (sticker_block *)s;
    ps_wire_free(b->env);
    free(b);
}

int persrv_health(persrv_t *ctx, persrv_health_info *out)
{
    Persrv__Envelope *env;
    int rc;
    if (!ctx) return PERSRV_EINVAL;
    clear_err(ctx);
    if (!out) return set_err(ctx, PERSRV_EINVAL, "persrv_health: out is NULL");
    memset(out, 0, sizeof *out);
    request r = {.body = PERSRV__ENVELOPE__BODY_HEALTH};
    if ((rc = call(ctx, &r, PERSRV__ENVELOPE__BODY_HEALTH_REPLY, &env))) return rc;
    out->nshards = env->health_reply->nshards;
    out->shards_up = env->health_reply->shards_up;
    out->ready = env->health_reply->ready;
    ps_wire_free(env);
    return PERSRV_OK;
}

/* ---- clicks --------------------------------------------------------------------------------- */

/* A fresh click id: 128 random bits as 32 hex digits (ps_random_hex_id). */
static void new_click_id(persrv_t *c, char out[PERSRV_MAX_CLICK_ID + 1])
{
    ps_random_hex_id(out, c->next_id ^ (uint64_t)(uintptr_t)c);
}

int persrv_click(persrv_t *ctx, const char *user, uint64_t sticker_id, const char *query,
                 const char *click_id, persrv_click_info *out)
{
    Persrv__Envelope *env = NULL;
    ps_err e = {0, ""};
    int rc = PERSRV_OK;
    if (out) memset(out, 0, sizeof *out);
    if (!ctx) return PERSRV_EINVAL;
    clear_err(ctx);
    if (!user || !out) return set_err(ctx, PERSRV_EINVAL, "persrv_click: user or out is NULL");
    if (click_id && ps_wire_check_click_id(click_id, "click_id", &e))
        return set_err(ctx, persrv__from_ps(e.code), "persrv_click: %s", e.msg);
    if (click_id)
        snprintf(out->click_id, sizeof out->click_id, "%s", click_id);
    else
        new_click_id(ctx, out->click_id);
    request r = {.body = PERSRV__ENVELOPE__BODY_CLICK,
                 .id = sticker_id,
                 .user = user,
                 .text = query ? query : "",
                 .click_id = out->click_id};
    /* Each attempt is one request under the same click id: one that times out, or that the
     * broker answers outcome_unknown, is retried; the primary answers a click it stored as a
     * duplicate, so the click is stored once however many attempts reach it. */
    uint32_t attempts = ctx->retries < UINT32_MAX ? ctx->retries + 1 : UINT32_MAX;
    for (out->attempts = 0; out->attempts < attempts;) {
        out->attempts++;
        ctx->errname[0] = '\0'; /* the last attempt's broker code, not an earlier one's */
        rc = call_n(ctx, &r, PERSRV__ENVELOPE__BODY_CLICK_REPLY, 1, &env);
        if (rc != PERSRV_ETIMEDOUT && rc != PERSRV_EINDOUBT) break;
    }
    if (rc == PERSRV_ETIMEDOUT || rc == PERSRV_EINDOUBT) {
        char last[128];
        snprintf(last, sizeof last, "%.120s", ctx->errstr);
        return set_err(ctx, PERSRV_EINDOUBT,
                       "click %s: no definite answer in %u attempt%s (last: %s): it may have "
                       "been stored; call persrv_click again with this click_id",
                       out->click_id, out->attempts, out->attempts == 1 ? "" : "s", last);
    }
    if (rc) return rc;
    const Persrv__ClickReply *cr = env->click_reply;
    if (cr->click_id[0] && strcmp(cr->click_id, out->click_id)) {
        set_err(ctx, PERSRV_EPROTO, "click_reply.click_id: '%.64s', sent '%s'", cr->click_id,
                out->click_id);
        ps_wire_free(env);
        return ctx->err;
    }
    out->seq = cr->seq;
    out->history = cr->history;
    out->centroids = cr->centroids;
    out->duplicate = cr->duplicate;
    ps_wire_free(env);
    clear_err(ctx); /* an earlier attempt's outcome_unknown is answered now */
    return PERSRV_OK;
}
