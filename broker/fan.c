/*
 * fan.c — a lane's calls to the shard replicas without blocking: one DEALER per replica, its
 * ZMQ_FD watched by the lane's libevent loop, and one state machine per call (broker_call):
 *
 *   start ──▶ pick a replica ──▶ send (request_id, deadline stamped) ──▶ pending on that replica
 *      pending ── reply with its request_id ──▶ answered (or, an Error: next attempt)
 *      pending ── its timer (deadline-ms, cut to the call's budget) ──▶ next attempt (with
 *                 no other replica to go to: the same request waited for one deadline more)
 *      send fails (the replica is not connected: ZMQ_IMMEDIATE) ──▶ next attempt at once
 *      next attempt: the next replica in order while attempts and budget remain, else failed
 *
 * A run is the calls one request started together (a search's one per shard, explain's one per
 * hit); its done callback runs once every call has ended, always from the loop. Many runs are
 * in flight at once on the same sockets: a reply is matched by request_id against the calls
 * pending on the socket it came in on, and one that matches nothing (an attempt that timed
 * out, a probe too old) is dropped and counted. A socket is never closed for a late reply
 * (Lazy Pirate closes and reopens one, which would cost every other request in flight on it):
 * ZeroMQ reconnects by itself, and request ids, drawn from a per-lane counter started at a
 * random point, never repeat, so an old reply cannot be taken for a new request.
 *
 * The sockets have no high-water mark (what is queued is bounded by the requests in flight),
 * so a send fails only when the replica has no connection, never because it is busy.
 *
 * Health (shared by every lane through the upmap, see broker.h): a transport error (a send
 * that fails because the replica has no connection; ZMQ_IMMEDIATE makes that immediate) marks
 * a replica DOWN at once; health probes (the probing lane, broker_fan_probe) mark it DOWN only
 * after down-after-missed-probes rounds in a row without an answer, since a busy replica
 * answers late rather than never; a missed call deadline makes it SLOW (it is skipped while
 * others are UP). Any answer makes it UP. A replica back from DOWN gets traffic gradually
 * (slow start: its weight grows from 1/10 to 1 over slow-start-ms). When every replica of a
 * shard is DOWN the call is sent anyway (panic, as in Envoy): a loaded machine can make every
 * replica miss its probes while all still answer searches; a replica that is really gone
 * fails its send at once, so panic costs a dead shard no deadline.
 *
 * ZMQ_FD is edge-triggered (see client/persrv_event.c): on every wakeup ZMQ_EVENTS is read and
 * messages taken until none is left (at most DRAIN_BATCH, then the event is activated again),
 * and after every send ZMQ_EVENTS is read again, activating the event by hand when a message
 * is already waiting.
 */
#include <errno.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "broker.h"
#include "ps/log.h"
#include "ps/rand.h"
#include "ps/wire.h"

#define DRAIN_BATCH      64 /* messages taken per wakeup before yielding to the loop */
#define PROBE_IDS        4  /* probes of a replica whose (late) answers still count */
#define DEFAULT_DOWN     3  /* down-after-missed-probes when 0 is given */
#define SLOW_START_FLOOR 0.1

typedef struct frep {
    broker_fan_t *f;
    uint32_t shard;
    int idx; /* in its shard */
    char endpoint[BROKER_MAX_ENDPOINT];
    void *sock;
    struct event *ev;  /* the socket's ZMQ_FD */
    broker_health *h;  /* shared */
    broker_call *head; /* calls pending here, oldest first */
    broker_call *tail;
    uint64_t probe_id[PROBE_IDS]; /* the last probes sent (0: none) */
    int probe_pending;            /* the last probe has not been answered */
    char last_err[160];
} frep;

typedef struct fshard {
    frep *rep;
    uint32_t nrep;
    uint32_t rr; /* round-robin position (SLOW and panic choices) */
} fshard;

typedef struct fan_run {
    broker_fan_t *f;
    broker_call *calls;
    size_t n, left;
    broker_fan_done_fn done;
    void *arg;
    struct event *fire; /* calls done before the loop turned: done from here */
    struct fan_run *prev, *next;
} fan_run;

struct broker_fan {
    struct event_base *base;
    void *zctx;
    broker_upmap_t *own, *u;
    fshard *shards;
    uint32_t nshards;
    uint32_t deadline_ms, retries, down_after, slow_start_ms;
    size_t max_frame;
    uint64_t next_id;
    ps_rng rng;
    fan_run *runs; /* in flight */
    size_t npending;
    uint8_t *probe; /* a HealthRequest, encoded once */
    size_t probe_len;
    int probed; /* a probe round ran */
    int closing;
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void oom(const char *where)
{
    ps_log(PS_LOG_ERROR, "broker", "out_of_memory", "where=%s", where);
    abort();
}

static int state(const frep *r)
{
    return atomic_load_explicit(&r->h->state, memory_order_relaxed);
}

static void count(broker_fan_t *f, int which)
{
    atomic_fetch_add_explicit(&f->u->count[which], 1, memory_order_relaxed);
}

/* ---- health ------------------------------------------------------------------------------- */

static void log_change(const frep *r, int was, int now)
{
    static const char *const event[] = {"replica_down", "replica_up", "replica_slow"};
    if (was == now) return;
    if (now == BROKER_REP_UP)
        ps_log(PS_LOG_INFO, "broker", event[now], "shard=%u replica=%d endpoint=%s", r->shard,
               r->idx, r->endpoint);
    else
        ps_log(PS_LOG_WARN, "broker", event[now], "shard=%u replica=%d endpoint=%s reason=\"%s\"",
               r->shard, r->idx, r->endpoint, r->last_err[0] ? r->last_err : "unknown");
}

/* r answered something: UP (from DOWN: slow start when it had been UP before). */
static void mark_up(broker_fan_t *f, frep *r)
{
    /* read first: every answer lands here, and the map is shared by the lanes */
    if (atomic_load_explicit(&r->h->missed, memory_order_relaxed))
        atomic_store_explicit(&r->h->missed, 0, memory_order_relaxed);
    if (state(r) == BROKER_REP_UP) return;
    int was = atomic_exchange_explicit(&r->h->state, BROKER_REP_UP, memory_order_relaxed);
    if (was == BROKER_REP_UP) return;
    if (was == BROKER_REP_DOWN) {
        if (atomic_exchange_explicit(&r->h->ever_up, 1, memory_order_relaxed)) {
            long long t = (long long)now_ms();
            atomic_store_explicit(&r->h->up_since, t ? t : 1, memory_order_relaxed);
            count(f, BROKER_HC_UP_AGAIN);
        }
    }
    r->last_err[0] = '\0';
    log_change(r, was, BROKER_REP_UP);
}

/* r is DOWN for `why` (a BROKER_HC_DOWN_* counter); reason in r->last_err. */
static void mark_down(broker_fan_t *f, frep *r, int why)
{
    int was = atomic_exchange_explicit(&r->h->state, BROKER_REP_DOWN, memory_order_relaxed);
    if (was == BROKER_REP_DOWN) return;
    atomic_store_explicit(&r->h->up_since, 0, memory_order_relaxed);
    count(f, why);
    log_change(r, was, BROKER_REP_DOWN);
}

/* r missed a call's deadline: an UP replica becomes SLOW. */
static void mark_slow(broker_fan_t *f, frep *r, double now)
{
    int up = BROKER_REP_UP;
    atomic_store_explicit(&r->h->slow_since, (long long)now, memory_order_relaxed);
    if (atomic_compare_exchange_strong(&r->h->state, &up, BROKER_REP_SLOW)) {
        count(f, BROKER_HC_SLOW);
        log_change(r, BROKER_REP_UP, BROKER_REP_SLOW);
    }
}

/* A SLOW replica still worth a call: it became slow less than BROKER_SLOW_MS ago. */
static int slow_usable(const frep *r, double now)
{
    return state(r) == BROKER_REP_SLOW &&
           now - (double)atomic_load_explicit(&r->h->slow_since, memory_order_relaxed) <
               BROKER_SLOW_MS;
}

/* The weight of an UP replica: 1, or during its slow start 1/10 growing to 1. */
static double weight(const broker_fan_t *f, const frep *r, double now)
{
    long long since = atomic_load_explicit(&r->h->up_since, memory_order_relaxed);
    if (!since || f->slow_start_ms == 0) return 1.0;
    double w = (now - (double)since) / f->slow_start_ms;
    if (w >= 1.0) {
        atomic_store_explicit(&r->h->up_since, 0, memory_order_relaxed);
        return 1.0;
    }
    return w < SLOW_START_FLOOR ? SLOW_START_FLOOR : w;
}

/* The replica a call of shard s starts on: an UP one drawn by weight, else a SLOW one (round
 * robin), else any (panic: *panic set). -1 only for a shard without replicas. */
static int pick(broker_fan_t *f, uint32_t s, double now, int *panic)
{
    fshard *sl = &f->shards[s];
    double w[BROKER_MAX_REPLICAS], sum = 0;
    *panic = 0;
    for (uint32_t i = 0; i < sl->nrep; i++) {
        w[i] = state(&sl->rep[i]) == BROKER_REP_UP ? weight(f, &sl->rep[i], now) : 0;
        sum += w[i];
    }
    if (sum > 0) {
        double x = ps_rng_unif(&f->rng) * sum;
        for (uint32_t i = 0; i < sl->nrep; i++) {
            if (w[i] <= 0) continue;
            if (x < w[i]) return (int)i;
            x -= w[i];
        }
        for (uint32_t i = sl->nrep; i-- > 0;)
            if (w[i] > 0) return (int)i; /* rounding */
    }
    uint32_t start = sl->rr++;
    for (uint32_t k = 0; k < sl->nrep; k++)
        if (slow_usable(&sl->rep[(start + k) % sl->nrep], now))
            return (int)((start + k) % sl->nrep);
    if (!sl->nrep) return -1;
    *panic = 1;
    return (int)(start % sl->nrep);
}

/* The replica a failed attempt on `cur` moves to: another one, UP first, then a usable SLOW
 * one, then (panic) any other whatever its state; cur itself only when it is UP, or the
 * shard's only replica (a failover goes elsewhere whenever it can). */
static int next_replica(broker_fan_t *f, uint32_t s, int cur, double now, int *panic)
{
    fshard *sl = &f->shards[s];
    *panic = 0;
    for (uint32_t k = 1; k < sl->nrep; k++) {
        int i = (int)((cur + k) % sl->nrep);
        if (state(&sl->rep[i]) == BROKER_REP_UP) return i;
    }
    for (uint32_t k = 1; k < sl->nrep; k++) {
        int i = (int)((cur + k) % sl->nrep);
        if (slow_usable(&sl->rep[i], now)) return i;
    }
    if (state(&sl->rep[cur]) == BROKER_REP_UP) return cur;
    *panic = 1;
    return (int)((cur + 1) % sl->nrep);
}

/* ---- calls -------------------------------------------------------------------------------- */

static void link_call(frep *r, broker_call *c)
{
    c->prev = r->tail;
    c->next = NULL;
    if (r->tail)
        r->tail->next = c;
    else
        r->head = c;
    r->tail = c;
}

static void unlink_call(frep *r, broker_call *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        r->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        r->tail = c->prev;
    c->prev = c->next = NULL;
}

static uint64_t new_id(broker_fan_t *f)
{
    if (++f->next_id == 0) ++f->next_id;
    return f->next_id;
}

/* 1 when a message is waiting on r's socket (reading ZMQ_EVENTS re-arms ZMQ_FD's edge). */
static int readable_now(frep *r)
{
    int ev = 0;
    size_t sz = sizeof ev;
    if (zmq_getsockopt(r->sock, ZMQ_EVENTS, &ev, &sz)) return 0;
    return (ev & ZMQ_POLLIN) != 0;
}

/* Send frame + a stamp of (rid, deadline) on r. Returns 0, or the errno of the failure. */
static int send_stamped(frep *r, const uint8_t *frame, size_t len, uint64_t rid, uint32_t ms)
{
    uint8_t stamp[PS_WIRE_STAMP_MAX];
    size_t sl = ps_wire_stamp(stamp, rid, ms);
    zmq_msg_t m;
    if (zmq_msg_init_size(&m, len + sl)) oom("request");
    memcpy(zmq_msg_data(&m), frame, len);
    memcpy((uint8_t *)zmq_msg_data(&m) + len, stamp, sl);
    if (zmq_msg_send(&m, r->sock, ZMQ_DONTWAIT) < 0) {
        int e = zmq_errno();
        zmq_msg_close(&m);
        return e ? e : EIO;
    }
    /* zmq_send may have taken ZMQ_FD's edge for a reply already waiting */
    if (readable_now(r)) event_active(r->ev, EV_READ, 0);
    return 0;
}

static void run_end(fan_run *run);

/* c has ended (reply or reason set): count it off its run. */
static void call_end(broker_fan_t *f, broker_call *c, double now)
{
    (void)f;
    c->pending = 0;
    c->seconds = (now - c->t0) / 1e3;
    fan_run *run = c->run;
    if (--run->left == 0 && !event_pending(run->fire, EV_TIMEOUT, NULL)) run_end(run);
}

/* Move c to its next attempt. Returns 1 with c->cur set, or 0 when none is left. */
static int advance(broker_fan_t *f, broker_call *c, double now)
{
    uint32_t max_attempts = c->replica >= 0 ? 1 : f->retries + 1;
    int panic;
    if (c->attempt + 1 >= max_attempts || now >= c->budget_end) return 0;
    int nxt = next_replica(f, c->shard, c->cur, now, &panic);
    if (nxt < 0) return 0;
    if (panic) count(f, BROKER_HC_PANIC);
    c->attempt++;
    c->failovers++;
    c->cur = nxt;
    return 1;
}

/* Send c's current attempt; a send that fails moves on at once. Ends c when no attempt is
 * left. */
static void try_send(broker_fan_t *f, broker_call *c, double now)
{
    for (;;) {
        frep *r = &f->shards[c->shard].rep[c->cur];
        c->deadline = now + f->deadline_ms;
        if (c->deadline > c->budget_end) c->deadline = c->budget_end;
        uint32_t ms = c->deadline > now ? (uint32_t)(c->deadline - now + 0.5) : 1;
        if (ms == 0) ms = 1;
        c->request_id = new_id(f);
        int e = send_stamped(r, c->req, c->req_len, c->request_id, ms);
        if (e == 0) {
            struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
            link_call(r, c);
            c->pending = 1;
            f->npending++;
            atomic_fetch_add_explicit(&f->u->inflight, 1, memory_order_relaxed);
            evtimer_add(c->timer, &tv);
            return;
        }
        count(f, BROKER_HC_SEND_FAILED);
        snprintf(c->reason, sizeof c->reason, "replica %d (%.200s): %s", c->cur, r->endpoint,
                 e == EAGAIN ? "not connected" : zmq_strerror(e));
        snprintf(r->last_err, sizeof r->last_err, "send: %s",
                 e == EAGAIN ? "not connected" : zmq_strerror(e));
        /* A transport error marks the replica DOWN for every lane — unless it is in its slow
         * start: it has just answered a probe, and this lane's socket may not have
         * reconnected yet (the probing lane's own send failing marks it). */
        if (!atomic_load_explicit(&r->h->up_since, memory_order_relaxed))
            mark_down(f, r, BROKER_HC_DOWN_TRANSPORT);
        if (!advance(f, c, now)) {
            call_end(f, c, now);
            return;
        }
    }
}

/* c (pending on r) is settled one way or another: off r's list, timer stopped. */
static void unpend(broker_fan_t *f, frep *r, broker_call *c)
{
    unlink_call(r, c);
    evtimer_del(c->timer);
    c->pending = 0;
    f->npending--;
    atomic_fetch_sub_explicit(&f->u->inflight, 1, memory_order_relaxed);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    broker_call *c = arg;
    broker_fan_t *f = c->run->f;
    frep *r = &f->shards[c->shard].rep[c->cur];
    double now = now_ms();
    (void)fd;
    (void)what;
    count(f, BROKER_HC_TIMEOUTS);
    snprintf(r->last_err, sizeof r->last_err, "no reply in %u ms", f->deadline_ms);
    mark_slow(f, r, now);
    uint32_t max_attempts = c->replica >= 0 ? 1 : f->retries + 1;
    int panic;
    if (c->attempt + 1 < max_attempts && now < c->budget_end &&
        next_replica(f, c->shard, c->cur, now, &panic) == c->cur) {
        /* Nowhere else to go (the shard's only replica, or every other one down): keep
         * waiting for this attempt's answer until the next attempt's deadline rather than send
         * the request again — a shard computes every request it took, so a second copy would
         * only double the work of a replica that is late because it is busy. */
        c->attempt++;
        c->deadline = now + f->deadline_ms;
        if (c->deadline > c->budget_end) c->deadline = c->budget_end;
        uint32_t ms = (uint32_t)(c->deadline - now + 0.5);
        struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
        evtimer_add(c->timer, &tv);
        return;
    }
    unpend(f, r, c);
    c->timed_out = 1; /* until an answer comes: failed, and an attempt missed its deadline */
    snprintf(c->reason, sizeof c->reason, "replica %d (%.200s): no reply in %u ms", c->cur,
             r->endpoint, f->deadline_ms);
    ps_log(PS_LOG_WARN, "broker", "shard_timeout", "shard=%u replica=%d endpoint=%s", c->shard,
           c->cur, r->endpoint);
    /* c may be gone once it ended (its run's done frees the calls) */
    if (advance(f, c, now))
        try_send(f, c, now);
    else
        call_end(f, c, now);
}

/* env (taken) answers c, pending on r. */
static void answered(broker_fan_t *f, frep *r, broker_call *c, Persrv__Envelope *env, double now)
{
    unpend(f, r, c);
    mark_up(f, r);
    if (env->body_case == c->expect ||
        (c->error_is_answer && env->body_case == PERSRV__ENVELOPE__BODY_ERROR)) {
        c->reply = env;
        c->reason[0] = '\0';
        c->timed_out = 0;
        call_end(f, c, now);
        return;
    }
    if (env->body_case == PERSRV__ENVELOPE__BODY_ERROR)
        snprintf(c->reason, sizeof c->reason, "replica %d: %s: %s", c->cur, env->error->code,
                 env->error->message);
    else
        snprintf(c->reason, sizeof c->reason, "replica %d: unexpected reply body %d", c->cur,
                 (int)env->body_case);
    ps_wire_free(env);
    if (advance(f, c, now))
        try_send(f, c, now);
    else
        call_end(f, c, now);
}

/* ---- runs --------------------------------------------------------------------------------- */

static void run_end(fan_run *run)
{
    broker_fan_t *f = run->f;
    if (run->prev)
        run->prev->next = run->next;
    else
        f->runs = run->next;
    if (run->next) run->next->prev = run->prev;
    for (size_t i = 0; i < run->n; i++) {
        broker_call *c = &run->calls[i];
        if (c->timer) event_free(c->timer);
        c->timer = NULL;
        c->run = NULL;
        free(c->own);
        c->own = NULL;
    }
    event_free(run->fire);
    broker_fan_done_fn done = run->done;
    void *arg = run->arg;
    broker_call *calls = run->calls;
    size_t n = run->n;
    free(run);
    done(arg, calls, n);
}

static void on_fire(evutil_socket_t fd, short what, void *arg)
{
    fan_run *run = arg;
    (void)fd;
    (void)what;
    if (run->left == 0) run_end(run);
}

int broker_fan_start(broker_fan_t *f, broker_call *calls, size_t n, broker_fan_done_fn done,
                     void *arg, ps_err *err)
{
    if (f->closing) return ps_err_set(err, PS_EUNAVAIL, "the broker is stopping");
    /* every request encoded before anything is sent: an encoding failure sends nothing */
    for (size_t i = 0; i < n; i++) {
        broker_call *c = &calls[i];
        c->own = NULL;
        c->req = c->frame;
        c->req_len = c->len;
        if (c->frame) continue;
        int rc = c->encode(c->arg, 0, 0, &c->own, &c->req_len, err);
        if (rc) {
            for (size_t j = 0; j <= i; j++) {
                free(calls[j].own);
                calls[j].own = NULL;
            }
            return rc;
        }
        c->req = c->own;
    }
    fan_run *run = calloc(1, sizeof *run);
    if (!run || !(run->fire = evtimer_new(f->base, on_fire, run))) oom("fan-out");
    run->f = f;
    run->calls = calls;
    run->n = run->left = n;
    run->done = done;
    run->arg = arg;
    run->next = f->runs;
    if (f->runs) f->runs->prev = run;
    f->runs = run;
    /* held until the loop's next turn: done never runs from inside this call */
    struct timeval zero = {0, 0};
    evtimer_add(run->fire, &zero);
    double now = now_ms();
    for (size_t i = 0; i < n; i++) {
        broker_call *c = &calls[i];
        c->reply = NULL;
        c->failovers = 0;
        c->seconds = 0;
        c->timed_out = 0;
        c->reason[0] = '\0';
        c->pending = 0;
        c->attempt = 0;
        c->t0 = now;
        c->prev = c->next = NULL;
        c->run = run;
        c->budget_end = now + (double)f->deadline_ms * (c->replica >= 0 ? 1 : f->retries + 1);
        if (c->budget_ms && now + c->budget_ms < c->budget_end) c->budget_end = now + c->budget_ms;
        if (!(c->timer = evtimer_new(f->base, on_timeout, c))) oom("fan-out");
    }
    for (size_t i = 0; i < n; i++) {
        broker_call *c = &calls[i];
        int panic = 0;
        if (c->shard >= f->nshards ||
            (c->replica >= 0 && (uint32_t)c->replica >= f->shards[c->shard].nrep)) {
            snprintf(c->reason, sizeof c->reason, "no such shard or replica");
            call_end(f, c, now);
            continue;
        }
        c->cur = c->replica >= 0 ? c->replica : pick(f, c->shard, now, &panic);
        if (panic) count(f, BROKER_HC_PANIC);
        try_send(f, c, now);
    }
    return 0;
}

/* ---- the sockets -------------------------------------------------------------------------- */

/* Take env (an answer on r that no call claimed): a probe's, or late. */
static void unclaimed(broker_fan_t *f, frep *r, Persrv__Envelope *env)
{
    int probe = 0;
    for (int k = 0; k < PROBE_IDS && env->request_id; k++)
        if (r->probe_id[k] == env->request_id) probe = 1;
    if (!probe) {
        count(f, BROKER_HC_LATE);
        ps_log(PS_LOG_DEBUG, "broker", "late_reply", "shard=%u replica=%d request_id=%llu",
               r->shard, r->idx, (unsigned long long)env->request_id);
        ps_wire_free(env);
        return;
    }
    r->probe_pending = 0;
    memset(r->probe_id, 0, sizeof r->probe_id); /* one answer settles them all */
    if (env->body_case != PERSRV__ENVELOPE__BODY_HEALTH_REPLY) {
        snprintf(r->last_err, sizeof r->last_err, "health probe: unexpected reply body %d",
                 (int)env->body_case);
        mark_down(f, r, BROKER_HC_DOWN_REFUSED);
    } else {
        const Persrv__HealthReply *h = env->health_reply;
        if (h->shard != r->shard || h->nshards != f->nshards) {
            snprintf(r->last_err, sizeof r->last_err, "reports shard %u/%u", h->shard, h->nshards);
            mark_down(f, r, BROKER_HC_DOWN_REFUSED);
        } else if (!h->ready) {
            snprintf(r->last_err, sizeof r->last_err, "not ready");
            mark_down(f, r, BROKER_HC_DOWN_REFUSED);
        } else {
            mark_up(f, r);
        }
    }
    ps_wire_free(env);
}

/* Take one message from r (if any). Returns 0 when none was waiting. */
static int take_one(broker_fan_t *f, frep *r)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, r->sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return 0;
    }
    int more = zmq_msg_more(&m);
    Persrv__Envelope *env = NULL;
    ps_err e = {0, ""};
    int rc = more ? PS_EPARSE
                  : ps_wire_decode(zmq_msg_data(&m), zmq_msg_size(&m), f->max_frame, &env, &e);
    zmq_msg_close(&m);
    while (more) { /* a shard sends one frame; drop the rest of anything else */
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, r->sock, ZMQ_DONTWAIT) < 0)
            more = 0;
        else
            more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
    if (rc) {
        if (rc == PS_ENOMEM) oom("reply");
        ps_log(PS_LOG_WARN, "broker", "bad_reply", "shard=%u endpoint=%s code=%s msg=\"%s\"",
               r->shard, r->endpoint, ps_errname(rc), e.msg);
        return 1;
    }
    for (broker_call *c = r->head; c; c = c->next)
        if (c->request_id == env->request_id) {
            answered(f, r, c, env, now_ms());
            return 1;
        }
    unclaimed(f, r, env);
    return 1;
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    frep *r = arg;
    (void)fd;
    (void)what;
    for (int n = 0; readable_now(r); n++) {
        if (n == DRAIN_BATCH) {
            event_active(r->ev, EV_READ, 0);
            return;
        }
        if (!take_one(r->f, r)) return;
    }
}

/* ---- probes ------------------------------------------------------------------------------- */

static void probe_send(broker_fan_t *f, frep *r)
{
    uint64_t id = new_id(f);
    int e = send_stamped(r, f->probe, f->probe_len, id, f->deadline_ms);
    if (e) {
        snprintf(r->last_err, sizeof r->last_err, "health probe: %s",
                 e == EAGAIN ? "not connected" : zmq_strerror(e));
        mark_down(f, r, BROKER_HC_DOWN_TRANSPORT);
        return;
    }
    memmove(r->probe_id + 1, r->probe_id, (PROBE_IDS - 1) * sizeof r->probe_id[0]);
    r->probe_id[0] = id;
    r->probe_pending = 1;
}

/* Wait until every socket can send (connected), at most until `end` (ms). */
static void wait_connected(broker_fan_t *f, double end)
{
    size_t n = 0;
    for (uint32_t s = 0; s < f->nshards; s++) n += f->shards[s].nrep;
    zmq_pollitem_t *items = calloc(n ? n : 1, sizeof *items);
    if (!items) oom("connect");
    for (;;) {
        size_t np = 0;
        for (uint32_t s = 0; s < f->nshards; s++)
            for (uint32_t i = 0; i < f->shards[s].nrep; i++) {
                int ev = 0;
                size_t sz = sizeof ev;
                void *sock = f->shards[s].rep[i].sock;
                if (zmq_getsockopt(sock, ZMQ_EVENTS, &ev, &sz) == 0 && (ev & ZMQ_POLLOUT)) continue;
                items[np++] = (zmq_pollitem_t){sock, 0, ZMQ_POLLOUT, 0};
            }
        double now = now_ms();
        if (np == 0 || now >= end) break;
        if (zmq_poll(items, (int)np, (long)(end - now) + 1) < 0 && errno != EINTR) break;
    }
    free(items);
    /* the sockets' edges may be gone: look at each from the loop */
    for (uint32_t s = 0; s < f->nshards; s++)
        for (uint32_t i = 0; i < f->shards[s].nrep; i++)
            event_active(f->shards[s].rep[i].ev, EV_READ, 0);
}

uint32_t broker_fan_probe(broker_fan_t *f)
{
    uint32_t down_after = f->down_after;
    for (uint32_t s = 0; s < f->nshards; s++)
        for (uint32_t i = 0; i < f->shards[s].nrep; i++) {
            frep *r = &f->shards[s].rep[i];
            on_readable(-1, 0, r); /* answers waiting, in case an edge was missed */
            if (r->probe_pending) {
                int missed = atomic_fetch_add_explicit(&r->h->missed, 1, memory_order_relaxed);
                if (missed + 1 >= (int)down_after && state(r) != BROKER_REP_DOWN) {
                    snprintf(r->last_err, sizeof r->last_err,
                             "%d health probes in a row unanswered", missed + 1);
                    mark_down(f, r, BROKER_HC_DOWN_PROBES);
                }
            }
            probe_send(f, r);
        }
    if (!f->probed) {
        /* The first round waits for its answers (one zmq_poll over every socket), so that
         * the broker knows which replicas are up before it serves. */
        f->probed = 1;
        size_t n = 0;
        for (uint32_t s = 0; s < f->nshards; s++) n += f->shards[s].nrep;
        zmq_pollitem_t *items = calloc(n ? n : 1, sizeof *items);
        frep **who = calloc(n ? n : 1, sizeof *who);
        if (!items || !who) oom("probe");
        double end = now_ms() + f->deadline_ms;
        for (;;) {
            size_t np = 0;
            for (uint32_t s = 0; s < f->nshards; s++)
                for (uint32_t i = 0; i < f->shards[s].nrep; i++) {
                    frep *r = &f->shards[s].rep[i];
                    if (!r->probe_pending) continue;
                    items[np] = (zmq_pollitem_t){r->sock, 0, ZMQ_POLLIN, 0};
                    who[np++] = r;
                }
            double now = now_ms();
            if (np == 0 || now >= end) break;
            if (zmq_poll(items, (int)np, (long)(end - now) + 1) < 0 && errno != EINTR) break;
            for (size_t k = 0; k < np; k++)
                if (items[k].revents & ZMQ_POLLIN) on_readable(-1, 0, who[k]);
        }
        free(items);
        free(who);
        for (uint32_t s = 0; s < f->nshards; s++)
            for (uint32_t i = 0; i < f->shards[s].nrep; i++)
                event_active(f->shards[s].rep[i].ev, EV_READ, 0);
    }
    uint32_t down = 0;
    for (uint32_t s = 0; s < f->nshards; s++) down += !broker_fan_shard_up(f, s);
    return down;
}

/* ---- the fan ------------------------------------------------------------------------------ */

static int open_rep(broker_fan_t *f, frep *r, const ps_curve_t *curve, ps_err *err)
{
    int zero = 0, one = 1, fd = -1;
    int64_t maxmsg = (int64_t)f->max_frame;
    size_t fdsz = sizeof fd;
    if (!(r->sock = zmq_socket(f->zctx, ZMQ_DEALER)) ||
        zmq_setsockopt(r->sock, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_setsockopt(r->sock, ZMQ_IMMEDIATE, &one, sizeof one) ||
        zmq_setsockopt(r->sock, ZMQ_SNDHWM, &zero, sizeof zero) ||
        zmq_setsockopt(r->sock, ZMQ_RCVHWM, &zero, sizeof zero) ||
        zmq_setsockopt(r->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg))
        return ps_err_set(err, PS_EINTERNAL, "shard %u replica %d: socket: %s", r->shard, r->idx,
                          zmq_strerror(zmq_errno()));
    int rc = ps_curve_client_socket(curve, r->sock, r->endpoint, err);
    if (rc) {
        ps_err_prefix(err, "shard %u replica %d", r->shard, r->idx);
        return rc;
    }
    if (zmq_connect(r->sock, r->endpoint))
        return ps_err_set(err, PS_EINVAL, "shards: shard %u replica %d: cannot connect to '%s': %s",
                          r->shard, r->idx, r->endpoint, zmq_strerror(zmq_errno()));
    if (zmq_getsockopt(r->sock, ZMQ_FD, &fd, &fdsz) ||
        !(r->ev = event_new(f->base, fd, EV_READ | EV_PERSIST, on_readable, r)) ||
        event_add(r->ev, NULL))
        return ps_err_set(err, PS_EINTERNAL, "shard %u replica %d: cannot watch its socket",
                          r->shard, r->idx);
    return 0;
}

broker_fan_t *broker_fan_new(struct event_base *base, const broker_fan_cfg *cfg, ps_err *err)
{
    broker_topology t;
    broker_fan_t *f = calloc(1, sizeof *f);
    if (!f) {
        ps_err_set(err, PS_ENOMEM, "out of memory for the fan-out");
        return NULL;
    }
    f->base = base;
    f->deadline_ms = cfg->deadline_ms ? cfg->deadline_ms : 1;
    f->retries = cfg->retries;
    f->max_frame = cfg->max_frame;
    f->down_after = cfg->down_after ? cfg->down_after : DEFAULT_DOWN;
    f->slow_start_ms = cfg->slow_start_ms;
    uint64_t seed = cfg->seed;
    if (ps_random_bytes(&f->next_id, sizeof f->next_id)) f->next_id = (uint64_t)(uintptr_t)f;
    if (!seed) seed = f->next_id;
    ps_rng_seed(&f->rng, seed, (uint64_t)(uintptr_t)f);
    if (broker_topology_parse(cfg->topology, &t, err)) {
        free(f);
        return NULL;
    }
    if (ps_wire_encode_health(0, 0, &f->probe, &f->probe_len, err) || !(f->zctx = zmq_ctx_new()) ||
        !(f->shards = calloc(t.nshards, sizeof *f->shards))) {
        ps_err_set(err, PS_ENOMEM, "out of memory for the fan-out");
        goto fail;
    }
    int maxsock = (int)(t.nendpoints + 64);
    if (maxsock > zmq_ctx_get(f->zctx, ZMQ_MAX_SOCKETS))
        zmq_ctx_set(f->zctx, ZMQ_MAX_SOCKETS, maxsock);
    f->nshards = t.nshards;
    broker_upmap_t *u = cfg->upmap;
    if (u && (u->nshards != t.nshards || u->n != t.nendpoints)) {
        ps_err_set(err, PS_EINVAL, "shards: the shared replica map is of another topology");
        goto fail;
    }
    if (!u) {
        /* a map of its own, shaped like the topology */
        if (!(u = f->own = calloc(1, sizeof *u)) ||
            !(u->r = calloc(t.nendpoints ? t.nendpoints : 1, sizeof *u->r)) ||
            !(u->first = calloc(t.nshards + 1, sizeof *u->first))) {
            ps_err_set(err, PS_ENOMEM, "out of memory for the fan-out");
            goto fail;
        }
        u->n = t.nendpoints;
        u->nshards = t.nshards;
        memcpy(u->first, t.first, (t.nshards + 1) * sizeof *u->first);
    }
    f->u = u;
    for (uint32_t s = 0; s < t.nshards; s++) {
        uint32_t nr = t.first[s + 1] - t.first[s];
        if (!(f->shards[s].rep = calloc(nr, sizeof(frep)))) {
            ps_err_set(err, PS_ENOMEM, "out of memory for the fan-out");
            goto fail;
        }
        f->shards[s].nrep = nr;
        for (uint32_t i = 0; i < nr; i++) {
            frep *r = &f->shards[s].rep[i];
            r->f = f;
            r->shard = s;
            r->idx = (int)i;
            r->h = &u->r[t.first[s] + i];
            strcpy(r->endpoint, t.endpoint[t.first[s] + i]); /* < BROKER_MAX_ENDPOINT: parsed */
            if (ps_curve_check_endpoint(cfg->curve, r->endpoint, err)) {
                ps_err_prefix(err, "shard %u replica %u", s, i);
                goto fail;
            }
            if (open_rep(f, r, cfg->curve, err)) goto fail;
        }
    }
    broker_topology_free(&t);
    wait_connected(f, now_ms() + f->deadline_ms);
    return f;
fail:
    broker_topology_free(&t);
    broker_fan_free(f);
    return NULL;
}

void broker_fan_free(broker_fan_t *f)
{
    if (!f) return;
    f->closing = 1;
    double now = now_ms();
    /* end every call in flight; their runs' done runs from here */
    while (f->runs) {
        fan_run *run = f->runs;
        for (size_t i = 0; i < run->n; i++) {
            broker_call *c = &run->calls[i];
            if (!c->pending) continue;
            unpend(f, &f->shards[c->shard].rep[c->cur], c);
            snprintf(c->reason, sizeof c->reason, "the broker is stopping");
            c->seconds = (now - c->t0) / 1e3;
            run->left--;
        }
        run->left = 0;
        run_end(run);
    }
    for (uint32_t s = 0; f->shards && s < f->nshards; s++) {
        for (uint32_t i = 0; i < f->shards[s].nrep; i++) {
            frep *r = &f->shards[s].rep[i];
            if (r->ev) event_free(r->ev);
            if (r->sock) zmq_close(r->sock);
        }
        free(f->shards[s].rep);
    }
    free(f->shards);
    free(f->probe);
    if (f->zctx) zmq_ctx_term(f->zctx);
    if (f->own) {
        free(f->own->r);
        free(f->own->first);
        free(f->own);
    }
    free(f);
}

uint32_t broker_fan_nshards(const broker_fan_t *f)
{
    return f->nshards;
}

int broker_fan_shard_up(const broker_fan_t *f, uint32_t shard)
{
    if (shard >= f->nshards) return 0;
    for (uint32_t i = 0; i < f->shards[shard].nrep; i++)
        if (state(&f->shards[shard].rep[i]) == BROKER_REP_UP) return 1;
    return 0;
}

broker_upmap_t *broker_fan_upmap(broker_fan_t *f)
{
    return f->u;
}

size_t broker_fan_pending(const broker_fan_t *f)
{
    return f->npending;
}

void broker_upmap_render(const broker_upmap_t *u, ps_buf *b)
{
    static const char *const name[BROKER_NHC][2] = {
        {"persrv_broker_replica_down_total{reason=\"transport\"}", NULL},
        {"persrv_broker_replica_down_total{reason=\"missed_probes\"}", NULL},
        {"persrv_broker_replica_down_total{reason=\"refused\"}", NULL},
        {"persrv_broker_replica_up_again_total", "Replicas back from down (slow start begins)."},
        {"persrv_broker_replica_slow_total", "Up replicas that missed a call's deadline."},
        {"persrv_broker_panic_calls_total",
         "Shard calls sent while every replica of the shard looked down."},
        {"persrv_broker_late_replies_total",
         "Shard replies dropped because their request was no longer pending."},
        {"persrv_broker_attempt_timeouts_total", "Shard call attempts that missed their deadline."},
        {"persrv_broker_send_failures_total",
         "Shard call attempts that could not be sent (replica not connected)."},
    };
    ps_buf_printf(b, "# HELP persrv_broker_replica_down_total Replicas marked down, by cause.\n"
                     "# TYPE persrv_broker_replica_down_total counter\n");
    for (int i = 0; i < BROKER_NHC; i++) {
        if (name[i][1]) {
            char metric[64];
            snprintf(metric, sizeof metric, "%s", name[i][0]);
            ps_buf_printf(b, "# HELP %s %s\n# TYPE %s counter\n", metric, name[i][1], metric);
        }
        ps_buf_printf(b, "%s %llu\n", name[i][0],
                      (unsigned long long)atomic_load_explicit(&u->count[i], memory_order_relaxed));
    }
    size_t st[3] = {0, 0, 0}, starting = 0;
    for (size_t i = 0; i < u->n; i++) {
        int s = atomic_load_explicit(&u->r[i].state, memory_order_relaxed);
        if (s >= 0 && s < 3) st[s]++;
        if (s == BROKER_REP_UP && atomic_load_explicit(&u->r[i].up_since, memory_order_relaxed))
            starting++;
    }
    ps_buf_printf(b,
                  "# HELP persrv_broker_replicas Shard replicas by health state.\n"
                  "# TYPE persrv_broker_replicas gauge\n"
                  "persrv_broker_replicas{state=\"up\"} %zu\n"
                  "persrv_broker_replicas{state=\"slow\"} %zu\n"
                  "persrv_broker_replicas{state=\"down\"} %zu\n"
                  "# HELP persrv_broker_replicas_slow_start Up replicas still ramping up.\n"
                  "# TYPE persrv_broker_replicas_slow_start gauge\n"
                  "persrv_broker_replicas_slow_start %zu\n"
                  "# HELP persrv_broker_shard_calls_in_flight Shard calls pending, all lanes.\n"
                  "# TYPE persrv_broker_shard_calls_in_flight gauge\n"
                  "persrv_broker_shard_calls_in_flight %lld\n",
                  st[BROKER_REP_UP], st[BROKER_REP_SLOW], st[BROKER_REP_DOWN], starting,
                  (long long)atomic_load_explicit(&u->inflight, memory_order_relaxed));
}
