/*
 * persrv_event.c — the libevent adapter of libpersrv (include/persrv_event.h): searches from a
 * libevent loop, many in flight on one DEALER socket, each with its own timer, matched to their
 * replies by request_id.
 *
 * ZeroMQ exposes a socket to a poller through ZMQ_FD, which is edge-triggered: it becomes
 * readable when the socket's state changed, not while a message is waiting, and reading
 * ZMQ_EVENTS (which zmq_send does internally too) consumes the signal. So the FD is watched
 * with one EV_READ|EV_PERSIST event; on every wakeup ZMQ_EVENTS is read and messages are
 * received with ZMQ_DONTWAIT until no POLLIN is left; and after every zmq_send ZMQ_EVENTS is
 * read again — if a message is waiting then, the read event is activated by hand so the loop
 * drains it on its next turn (never from inside persrv_search_async). A wakeup drains at most
 * DRAIN_BATCH messages and then reschedules itself, so a flood of replies cannot starve the
 * loop's other events.
 *
 * Replies are received, decoded, checked and converted by the same code as the blocking client
 * (persrv_int.h: persrv__recv, persrv__reply_check, persrv__result_from).
 *
 * Requests in flight live in a doubly linked list, oldest first; a reply is looked up from the
 * head, where the answers to a steady stream of requests are found. A request is unlinked and
 * freed before its callback runs, so a callback may start new searches or free the context.
 * A context freed from its own callback while draining is only marked (zombie) and torn down
 * when the drain returns to it.
 */
#include "persrv_event.h"

#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <zmq.h>

#include "persrv_int.h"
#include "ps/err.h"
#include "ps/wire.h"

#define DRAIN_BATCH 64 /* messages received per wakeup before yielding to the loop */

typedef struct areq {
    struct areq *prev, *next; /* the context's list of requests in flight */
    persrv_async_t *a;
    uint64_t rid;
    struct event *timer; /* fires after timeout_ms */
    persrv_search_cb cb;
    void *arg;
} areq;

struct persrv_async {
    int err;          /* PERSRV_OK or the last call's PERSRV_E* code */
    char errstr[256]; /* what failed, "" after success */
    struct event_base *base;
    char *endpoint;         /* owned copy */
    void *zctx;             /* this context's own ZeroMQ context */
    void *sock;             /* DEALER; NULL until connected */
    struct event *readable; /* the socket's ZMQ_FD, EV_READ|EV_PERSIST */
    uint32_t timeout_ms;
    size_t max_frame;
    char *api_key; /* owned copy, NULL: none */
    persrv__curve curve;
    uint64_t next_id;  /* request ids: a per-context random start, never 0 */
    areq *head, *tail; /* requests in flight, oldest first */
    size_t npending;
    int draining; /* inside drain(): freeing must wait for it */
    int closing;  /* persrv_async_free has begun */
};

static int set_err(persrv_async_t *a, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int set_err(persrv_async_t *a, int code, const char *fmt, ...)
{
    va_list ap;
    a->err = code;
    va_start(ap, fmt);
    vsnprintf(a->errstr, sizeof a->errstr, fmt, ap);
    va_end(ap);
    return code;
}

int persrv_async_errcode(const persrv_async_t *a)
{
    return a ? a->err : PERSRV_EINVAL;
}

const char *persrv_async_errstr(const persrv_async_t *a)
{
    return a ? a->errstr : "persrv_async_errstr: a is NULL";
}

/* ---- requests ------------------------------------------------------------------------------- */

static void unlink_req(persrv_async_t *a, areq *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        a->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        a->tail = r->prev;
    a->npending--;
}

/* The request a reply with request_id rid answers, NULL if none is in flight. rid 0 (an Error
 * about a frame the broker could not read) can only be attributed when one request is. */
static areq *find_req(persrv_async_t *a, uint64_t rid)
{
    if (rid == 0) return a->npending == 1 ? a->head : NULL;
    for (areq *r = a->head; r; r = r->next)
        if (r->rid == rid) return r;
    return NULL;
}

/* Unlink and free r, then hand (code, res, msg) to its callback. After this r is gone, and so
 * may be a (the callback may free it). */
static void complete(persrv_async_t *a, areq *r, int code, persrv_result *res, const char *msg)
{
    persrv_search_cb cb = r->cb;
    void *arg = r->arg;
    unlink_req(a, r);
    event_free(r->timer);
    free(r);
    cb(code, res, code == PERSRV_OK ? "" : msg, arg);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    areq *r = arg;
    persrv_async_t *a = r->a;
    char msg[320];
    (void)fd;
    (void)what;
    snprintf(msg, sizeof msg, "no reply from %.200s within %u ms", a->endpoint, a->timeout_ms);
    complete(a, r, PERSRV_ETIMEDOUT, NULL, msg);
}

/* ---- the socket ----------------------------------------------------------------------------- */

/* 1 when a message is waiting on the socket. Reading ZMQ_EVENTS re-arms ZMQ_FD's edge. */
static int readable_now(persrv_async_t *a)
{
    int ev = 0;
    size_t sz = sizeof ev;
    if (zmq_getsockopt(a->sock, ZMQ_EVENTS, &ev, &sz)) return 0;
    return (ev & ZMQ_POLLIN) != 0;
}

static void destroy(persrv_async_t *a);

/* Hand one received message to its request. Returns 0, or -1 when the socket failed (the
 * requests in flight then time out). */
static int dispatch(persrv_async_t *a)
{
    Persrv__Envelope *env = NULL;
    persrv_result *res = NULL;
    uint64_t peek = 0;
    ps_err e = {0, ""};
    areq *r;
    int rc = persrv__recv(a->sock, a->max_frame, &env, &peek, &e);
    if (rc == PERSRV__AGAIN) return 0;
    if (rc == PERSRV_ECONNECT) return -1;
    if (rc) {
        if ((r = find_req(a, peek))) complete(a, r, rc, NULL, e.msg);
        return 0; /* else someone else's broken frame */
    }
    if (env->request_id == 0 && env->body_case != PERSRV__ENVELOPE__BODY_ERROR)
        r = NULL;
    else
        r = find_req(a, env->request_id);
    if (!r) {
        persrv__env_free(env); /* a late answer to a request that timed out */
        return 0;
    }
    if ((rc = persrv__reply_check(env, PERSRV__ENVELOPE__BODY_QUERY_REPLY, &e))) {
        persrv__env_free(env);
        complete(a, r, rc, NULL, e.msg);
    } else if ((rc = persrv__result_from(&env, &res))) {
        complete(a, r, rc, NULL, "persrv_search_async: out of memory for the result");
    } else {
        complete(a, r, PERSRV_OK, res, "");
    }
    return 0;
}

/* Receive until no message is left (or DRAIN_BATCH were handled: then come back on the loop's
 * next turn). */
static void drain(persrv_async_t *a)
{
    int n = 0;
    a->draining = 1;
    while (!a->closing && a->sock && readable_now(a)) {
        if (n++ == DRAIN_BATCH) {
            event_active(a->readable, EV_READ, 0);
            break;
        }
        if (dispatch(a)) break;
    }
    a->draining = 0;
    if (a->closing) destroy(a); /* freed from a callback */
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    drain(arg);
}

static void close_sock(persrv_async_t *a)
{
    if (a->readable) event_free(a->readable);
    a->readable = NULL;
    if (a->sock) zmq_close(a->sock);
    a->sock = NULL;
}

/* A DEALER connected to the endpoint in a->sock, its ZMQ_FD watched by a->readable. */
static int open_sock(persrv_async_t *a)
{
    int zero = 0, fd = -1;
    int64_t maxmsg = (int64_t)a->max_frame;
    size_t fdsz = sizeof fd;
    if (a->sock) return PERSRV_OK;
    if (!a->zctx && !(a->zctx = zmq_ctx_new()))
        return set_err(a, PERSRV_ECONNECT, "zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
    if (!(a->sock = zmq_socket(a->zctx, ZMQ_DEALER)))
        return set_err(a, PERSRV_ECONNECT, "zmq_socket: %s", zmq_strerror(zmq_errno()));
    if (zmq_setsockopt(a->sock, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_setsockopt(a->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) ||
        persrv__curve_apply(&a->curve, a->sock) || zmq_getsockopt(a->sock, ZMQ_FD, &fd, &fdsz)) {
        int e = zmq_errno();
        close_sock(a);
        return set_err(a, PERSRV_ECONNECT, "zmq socket options: %s", zmq_strerror(e));
    }
    if (zmq_connect(a->sock, a->endpoint)) {
        int e = zmq_errno();
        close_sock(a);
        return set_err(a, PERSRV_ECONNECT, "connect %.200s: %s", a->endpoint, zmq_strerror(e));
    }
    if (!(a->readable = event_new(a->base, fd, EV_READ | EV_PERSIST, on_readable, a)) ||
        event_add(a->readable, NULL)) {
        close_sock(a);
        return set_err(a, PERSRV_ECONNECT, "connect %.200s: cannot watch the socket's fd %d",
                       a->endpoint, fd);
    }
    return PERSRV_OK;
}

/* ---- context -------------------------------------------------------------------------------- */

persrv_async_t *persrv_async_new(struct event_base *base, const char *endpoint,
                                 const persrv_options *opt)
{
    persrv_options o;
    persrv_async_t *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    persrv__options_fill(&o, opt);
    a->base = base;
    a->timeout_ms = o.timeout_ms;
    a->max_frame = o.max_frame;
    a->next_id = persrv__id_seed(a);
    if (!base || !endpoint) {
        set_err(a, PERSRV_EINVAL, "persrv_async_new: %s is NULL", base ? "endpoint" : "base");
        return a;
    }
    ps_err e = {0, ""};
    if (persrv__curve_from(&o, &a->curve, &e)) {
        set_err(a, PERSRV_EINVAL, "persrv_async_new: %s", e.msg);
        return a;
    }
    if (!(a->endpoint = strdup(endpoint)) || (o.api_key && !(a->api_key = strdup(o.api_key)))) {
        free(a->endpoint);
        free(a);
        return NULL;
    }
    open_sock(a);
    return a;
}

int persrv_search_async(persrv_async_t *a, const persrv_query *q, persrv_search_cb cb, void *arg)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    ps_err e = {0, ""};
    int rc;
    if (!a) return PERSRV_EINVAL;
    a->err = PERSRV_OK;
    a->errstr[0] = '\0';
    if (a->closing)
        return set_err(a, PERSRV_ECANCELED, "persrv_search_async: the context is being freed");
    if (!q || !cb) return set_err(a, PERSRV_EINVAL, "persrv_search_async: q or cb is NULL");
    if (!q->text) return set_err(a, PERSRV_EINVAL, "persrv_search_async: q->text is NULL");
    if (!a->base || !a->endpoint)
        return set_err(a, PERSRV_EINVAL, "persrv_search_async: the context has no %s",
                       a->base ? "endpoint" : "event base");
    if ((rc = open_sock(a))) return rc;

    areq *r = calloc(1, sizeof *r);
    if (!r || !(r->timer = evtimer_new(a->base, on_timeout, r))) {
        free(r);
        return set_err(a, PERSRV_ENOMEM, "persrv_search_async: out of memory");
    }
    r->a = a;
    r->cb = cb;
    r->arg = arg;
    r->rid = ++a->next_id ? a->next_id : ++a->next_id;
    if ((rc = persrv__encode_query(r->rid, a->timeout_ms, q, q->len ? q->len : strlen(q->text),
                                   a->api_key, &buf, &len, &e))) {
        free(buf);
        event_free(r->timer);
        free(r);
        return set_err(a, rc == PS_ENOMEM ? PERSRV_ENOMEM : persrv__from_ps(rc), "%s", e.msg);
    }
    if (zmq_send(a->sock, buf, len, ZMQ_DONTWAIT) < 0) {
        int err = zmq_errno();
        free(buf);
        event_free(r->timer);
        free(r);
        if (err == EAGAIN)
            return set_err(a, PERSRV_EUNAVAIL, "send to %.200s: queue full (%zu in flight)",
                           a->endpoint, a->npending);
        return set_err(a, PERSRV_ECONNECT, "send to %.200s: %s", a->endpoint, zmq_strerror(err));
    }
    free(buf);
    struct timeval tv = {(time_t)(a->timeout_ms / 1000),
                         (suseconds_t)(a->timeout_ms % 1000) * 1000};
    evtimer_add(r->timer, &tv);
    r->prev = a->tail;
    if (a->tail)
        a->tail->next = r;
    else
        a->head = r;
    a->tail = r;
    a->npending++;
    /* zmq_send may have consumed ZMQ_FD's edge for a reply that is waiting: drain it soon */
    if (readable_now(a)) event_active(a->readable, EV_READ, 0);
    return PERSRV_OK;
}

static void destroy(persrv_async_t *a)
{
    close_sock(a);
    if (a->zctx) zmq_ctx_term(a->zctx);
    free(a->endpoint);
    persrv__wipe_free(a->api_key);
    for (volatile char *p = a->curve.sec; p < a->curve.sec + sizeof a->curve.sec; p++) *p = 0;
    free(a);
}

void persrv_async_free(persrv_async_t *a)
{
    if (!a || a->closing) return;
    a->closing = 1;
    while (a->head) complete(a, a->head, PERSRV_ECANCELED, NULL, "persrv_async_free: canceled");
    if (!a->draining) destroy(a); /* else drain() does it when the callback returns */
}
