/*
 * clicks.c — a lane's clicks in flight to the profile primary, without blocking the lane.
 *
 * A click waits for a synced write on the primary (click-deadline-ms, 2 s by default), far
 * longer than a search's deadline. If a lane waited for it in zmq_poll as it waits for shards,
 * every request behind it on that lane — searches of other users, on other connections —
 * would wait too, and a frozen primary would stall searches for click-deadline-ms. So a click
 * is sent here and the lane goes back to its loop: the primary's answer comes in on this
 * DEALER's ZMQ_FD (an event of the lane's base) and each click has a timer for its deadline.
 *
 * The three outcomes are kept apart, since they tell a client different things:
 *   answered     the primary's click_reply (stored, or a duplicate of a stored click id) or
 *                its Error (refused: nothing stored);
 *   not sent     PS_EUNAVAIL: no connection to the primary is up (ZMQ_IMMEDIATE: ZeroMQ
 *                queues nothing for a peer it is not connected to), its queue is full, or this
 *                lane has max_pending clicks in flight — nothing can have been stored;
 *   in doubt     PS_EINDOUBT: sent, but no answer before the deadline — the primary may have
 *                stored it (a frozen primary stores it when it resumes). Only a retry with the
 *                same click id is safe, and the primary answers it as a duplicate if it was.
 * The socket is kept after a timeout (no Lazy Pirate reopen): a late answer is dropped by its
 * request_id, and other clicks in flight on it are not cut short.
 *
 * Each pending click owns a timer event; its record is freed after its callback returned.
 * Everything runs on the lane's thread.
 */
#include <errno.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "broker.h"
#include "ps/log.h"
#include "ps/wire.h"

typedef struct pending {
    struct pending *next;
    broker_clicks_t *q;
    uint64_t request_id;
    struct event *timer;
    broker_click_done_fn done;
    void *arg;
    char trace[PS_WIRE_MAX_TRACE + 1]; /* the request's trace id, "" for none */
} pending;

struct broker_clicks {
    struct event_base *base; /* borrowed: the lane's */
    void *zctx, *sock;
    struct event *ev; /* ZMQ_FD readable */
    char endpoint[BROKER_MAX_ENDPOINT];
    uint32_t deadline_ms, max_pending, npending;
    size_t max_frame;
    uint64_t next_id;
    pending *head; /* in flight, newest first */
};

static void on_readable(evutil_socket_t fd, short what, void *arg);

broker_clicks_t *broker_clicks_new(struct event_base *base, const char *primary,
                                   uint32_t deadline_ms, size_t max_frame, uint32_t max_pending,
                                   const ps_curve_t *curve, ps_err *err)
{
    broker_clicks_t *q = calloc(1, sizeof *q);
    if (!q) {
        ps_err_set(err, PS_ENOMEM, "out of memory for the click queue");
        return NULL;
    }
    q->base = base;
    q->deadline_ms = deadline_ms ? deadline_ms : 1;
    q->max_pending = max_pending ? max_pending : 1;
    q->max_frame = max_frame;
    q->next_id = 1;
    if (strlen(primary) >= sizeof q->endpoint) {
        ps_err_set(err, PS_EINVAL, "profile-primary: endpoint longer than %d bytes",
                   BROKER_MAX_ENDPOINT - 1);
        goto fail;
    }
    snprintf(q->endpoint, sizeof q->endpoint, "%s", primary);
    int zero = 0, one = 1, fd;
    size_t fdlen = sizeof fd;
    int64_t maxmsg = (int64_t)max_frame;
    if (!(q->zctx = zmq_ctx_new()) || !(q->sock = zmq_socket(q->zctx, ZMQ_DEALER)) ||
        zmq_setsockopt(q->sock, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_setsockopt(q->sock, ZMQ_IMMEDIATE, &one, sizeof one) ||
        zmq_setsockopt(q->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg)) {
        ps_err_set(err, PS_EINTERNAL, "click socket: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (ps_curve_client_socket(curve, q->sock, q->endpoint, err)) goto fail;
    if (zmq_connect(q->sock, q->endpoint)) {
        ps_err_set(err, PS_EINVAL, "profile-primary '%s': %s", q->endpoint,
                   zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (zmq_getsockopt(q->sock, ZMQ_FD, &fd, &fdlen) ||
        !(q->ev = event_new(base, fd, EV_READ | EV_PERSIST, on_readable, q)) ||
        event_add(q->ev, NULL)) {
        ps_err_set(err, PS_EINTERNAL, "click socket: cannot watch its descriptor");
        goto fail;
    }
    return q;
fail:
    broker_clicks_free(q);
    return NULL;
}

/* Unlink p from q's list (it must be there). */
static void unlink_pending(broker_clicks_t *q, pending *p)
{
    pending **pp = &q->head;
    while (*pp != p) pp = &(*pp)->next;
    *pp = p->next;
    q->npending--;
}

/* End p: unlink it, call its callback, free it. */
static void finish(pending *p, int rc, const ps_err *err, const Persrv__ClickReply *reply)
{
    broker_clicks_t *q = p->q;
    unlink_pending(q, p);
    event_free(p->timer);
    p->done(p->arg, rc, err, reply);
    free(p);
}

void broker_clicks_free(broker_clicks_t *q)
{
    if (!q) return;
    ps_err e = {0, ""};
    ps_err_set(&e, PS_EINDOUBT,
               "the broker stopped before the profile primary answered: the click may have "
               "been stored");
    while (q->head) finish(q->head, PS_EINDOUBT, &e, NULL);
    if (q->ev) event_free(q->ev);
    if (q->sock) zmq_close(q->sock);
    if (q->zctx) zmq_ctx_term(q->zctx);
    free(q);
}

uint32_t broker_clicks_pending(const broker_clicks_t *q)
{
    return q ? q->npending : 0;
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pending *p = arg;
    broker_clicks_t *q = p->q;
    ps_err e = {0, ""};
    ps_err_set(&e, PS_EINDOUBT,
               "profile primary %s: sent, no answer in %u ms: the click may have been stored",
               q->endpoint, q->deadline_ms);
    ps_log(PS_LOG_WARN, "broker", "click_in_doubt",
           "primary=%s request_id=%llu trace=%s deadline_ms=%u", q->endpoint,
           (unsigned long long)p->request_id, p->trace[0] ? p->trace : "-", q->deadline_ms);
    finish(p, PS_EINDOUBT, &e, NULL);
}

/* One frame from the primary: the answer to a pending click, or a stale one (dropped). */
static void take_reply(broker_clicks_t *q, const void *data, size_t len)
{
    Persrv__Envelope *env = NULL;
    ps_err e = {0, ""};
    if (ps_wire_decode(data, len, q->max_frame, &env, &e)) {
        ps_log(PS_LOG_WARN, "broker", "bad_reply", "primary=%s code=%s msg=\"%s\"", q->endpoint,
               ps_errname(e.code), e.msg);
        return;
    }
    pending *p = q->head;
    while (p && p->request_id != env->request_id) p = p->next;
    if (!p) {
        ps_log(PS_LOG_DEBUG, "broker", "stale_reply", "primary=%s request_id=%llu", q->endpoint,
               (unsigned long long)env->request_id);
    } else if (env->body_case == PERSRV__ENVELOPE__BODY_CLICK_REPLY) {
        finish(p, 0, NULL, env->click_reply);
    } else if (env->body_case == PERSRV__ENVELOPE__BODY_ERROR) {
        int rc = ps_wire_error_code(env->error);
        ps_err_set(&e, rc, "profile primary: %s", env->error->message);
        finish(p, rc, &e, NULL);
    } else {
        /* the primary's answer, but not one: nothing says whether it stored the click */
        ps_err_set(&e, PS_EINDOUBT, "profile primary %s: unexpected reply body %d", q->endpoint,
                   (int)env->body_case);
        finish(p, PS_EINDOUBT, &e, NULL);
    }
    ps_wire_free(env);
}

/* ZMQ_FD is edge-triggered: read ZMQ_EVENTS and take every message until none is left. */
static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    broker_clicks_t *q = arg;
    for (;;) {
        int events = 0;
        size_t sz = sizeof events;
        if (zmq_getsockopt(q->sock, ZMQ_EVENTS, &events, &sz) || !(events & ZMQ_POLLIN)) return;
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, q->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return;
        }
        int more = zmq_msg_more(&m);
        if (!more) take_reply(q, zmq_msg_data(&m), zmq_msg_size(&m));
        zmq_msg_close(&m);
        while (more) { /* a multipart message is not the primary's: discard it */
            zmq_msg_init(&m);
            more = zmq_msg_recv(&m, q->sock, ZMQ_DONTWAIT) >= 0 && zmq_msg_more(&m);
            zmq_msg_close(&m);
        }
    }
}

int broker_clicks_send(broker_clicks_t *q, const Persrv__ClickRequest *click, const char *trace,
                       broker_click_done_fn done, void *arg, ps_err *err)
{
    if (q->npending >= q->max_pending)
        return ps_err_set(err, PS_EUNAVAIL,
                          "profile primary: %u clicks in flight on this lane already; retry later",
                          q->npending);
    pending *p = calloc(1, sizeof *p);
    if (!p) return ps_err_set(err, PS_ENOMEM, "out of memory for a click");
    p->q = q;
    p->done = done;
    p->arg = arg;
    p->request_id = q->next_id++;
    snprintf(p->trace, sizeof p->trace, "%s", trace ? trace : "");
    if (!(p->timer = evtimer_new(q->base, on_timeout, p))) {
        free(p);
        return ps_err_set(err, PS_ENOMEM, "out of memory for a click timer");
    }
    Persrv__Envelope e = PERSRV__ENVELOPE__INIT;
    e.version = PS_WIRE_VERSION;
    e.request_id = p->request_id;
    e.deadline_ms = q->deadline_ms;
    e.body_case = PERSRV__ENVELOPE__BODY_CLICK;
    e.click = (Persrv__ClickRequest *)click;
    e.trace_id = trace && trace[0] ? (char *)trace : (char *)"";
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = ps_wire_pack(&e, &buf, &len, err);
    if (rc) {
        event_free(p->timer);
        free(p);
        return rc;
    }
    int sent = zmq_send(q->sock, buf, len, ZMQ_DONTWAIT);
    free(buf);
    if (sent != (int)len) {
        int zerr = zmq_errno();
        event_free(p->timer);
        free(p);
        return ps_err_set(err, PS_EUNAVAIL, "profile primary %s: not sent (%s)", q->endpoint,
                          zerr == EAGAIN ? "no connection up, or its queue is full"
                                         : zmq_strerror(zerr));
    }
    struct timeval tv = {(time_t)(q->deadline_ms / 1000),
                         (suseconds_t)(q->deadline_ms % 1000) * 1000};
    evtimer_add(p->timer, &tv);
    p->next = q->head;
    q->head = p;
    q->npending++;
    /* A send can take the edge ZMQ_FD would have signalled: look at the socket again from the
     * loop (never from here, so done is never called before this returns). */
    event_active(q->ev, EV_READ, 0);
    return 0;
}
