/*
 * test_fan.c — the broker's non-blocking fan-out (broker/fan.c) against fake shard replicas:
 * in-process ROUTERs (test_router.h) scripted per test, and a libevent loop in the test's
 * thread standing for the lane's. Covered: many requests in flight on one socket, answered out
 * of order; a late reply (its attempt timed out) dropped and counted while the socket keeps
 * serving; a deadline per request (one silent request does not hold back the others on its
 * socket); failover to the other replica on a timeout; health marking (down only after
 * down-after-missed-probes rounds in a row, at once on a transport error); panic (every
 * replica down: a call is still sent, and answered; a replica that is gone fails at once, not
 * at its deadline); slow start (a replica back from down gets a small share of calls); calls
 * in flight when the fan is freed; an encoder error. No timing is asserted: the loop runs
 * until a condition holds, with a generous guard against hanging.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <event2/event.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "broker.h"
#include "ps/buf.h"
#include "ps/wire_engine.h"
#include "test_router.h"

#define DEADLINE_MS 2000 /* room for a loaded machine where a timeout is not the point */
#define GUARD_S     60   /* a condition not reached by then fails the test (a hang, not timing) */
#define MAX_HELD    64

enum mode {
    M_OK,          /* answer everything */
    M_PROBES_ONLY, /* answer probes, never a sticker request */
    M_NO_PROBES,   /* answer sticker requests, never a probe */
    M_HOLD,        /* hold sticker requests until `hold` of them are in, answer them in reverse */
    M_SILENT_ONE,  /* never answer the request for sticker 1 (answer the rest, probes too) */
    M_LATE,        /* hold a sticker request until the next one comes, then answer both */
    M_TILL_PROBE   /* hold sticker requests until a health probe comes, then answer them */
};

typedef struct held {
    uint8_t id[256];
    size_t idlen;
    uint64_t rid, sticker;
} held;

typedef struct replica {
    test_router rt; /* first: the router's function gets &rt */
    enum mode mode;
    uint32_t shard, nshards;
    int not_ready; /* answer probes with ready = 0 */
    int hold;      /* M_HOLD: how many to gather */
    int nsticker;  /* sticker requests seen */
    int nprobe;    /* probes seen */
    held held[MAX_HELD];
    int nheld;
} replica;

static void sticker_reply(replica *s, const void *id, size_t idlen, uint64_t rid, uint64_t sticker)
{
    uint8_t *buf;
    size_t len;
    ps_err err;
    TR_CHECK(ps_wire_encode_sticker_reply(rid, s->shard, sticker, NULL, 0, &buf, &len, &err) == 0);
    test_router_send(&s->rt, id, idlen, buf, len);
    free(buf);
}

static void hold(replica *s, const void *id, size_t idlen, uint64_t rid, uint64_t sticker)
{
    TR_CHECK(s->nheld < MAX_HELD && idlen <= sizeof s->held[0].id);
    held *h = &s->held[s->nheld++];
    memcpy(h->id, id, idlen);
    h->idlen = idlen;
    h->rid = rid;
    h->sticker = sticker;
}

/* Answer every held request, last first. */
static void release(replica *s)
{
    while (s->nheld > 0) {
        held *h = &s->held[--s->nheld];
        sticker_reply(s, h->id, h->idlen, h->rid, h->sticker);
    }
}

static void serve(test_router *rt, const void *id, size_t idlen, const Persrv__Envelope *in)
{
    replica *s = (replica *)rt;
    ps_err err;
    if (in->body_case == PERSRV__ENVELOPE__BODY_HEALTH) {
        s->nprobe++;
        if (s->mode == M_TILL_PROBE) release(s);
        if (s->mode == M_NO_PROBES) return;
        uint8_t *buf;
        size_t len;
        ps_wire_health h = {.shard = s->shard, .nshards = s->nshards, .ready = !s->not_ready};
        TR_CHECK(ps_wire_encode_health_reply(in->request_id, &h, &buf, &len, &err) == 0);
        test_router_send(&s->rt, id, idlen, buf, len);
        free(buf);
        return;
    }
    TR_CHECK(in->body_case == PERSRV__ENVELOPE__BODY_GET_STICKER);
    s->nsticker++;
    uint64_t sticker = in->get_sticker->id;
    switch (s->mode) {
    case M_PROBES_ONLY:
        break;
    case M_HOLD:
        hold(s, id, idlen, in->request_id, sticker);
        if (s->nheld >= s->hold) release(s);
        break;
    case M_SILENT_ONE:
        if (sticker != 1) sticker_reply(s, id, idlen, in->request_id, sticker);
        break;
    case M_LATE:
        hold(s, id, idlen, in->request_id, sticker);
        if (s->nheld >= 2) release(s);
        break;
    case M_TILL_PROBE:
        hold(s, id, idlen, in->request_id, sticker);
        break;
    default:
        sticker_reply(s, id, idlen, in->request_id, sticker);
    }
}

static replica *replica_start(uint32_t sh, uint32_t nshards, enum mode mode)
{
    replica *s = calloc(1, sizeof *s);
    assert_non_null(s);
    s->mode = mode;
    s->shard = sh;
    s->nshards = nshards;
    test_router_start(&s->rt, serve);
    return s;
}

static void replica_set(replica *s, enum mode mode, int not_ready)
{
    pthread_mutex_lock(&s->rt.mu);
    s->mode = mode;
    s->not_ready = not_ready;
    pthread_mutex_unlock(&s->rt.mu);
}

static int nsticker(replica *s)
{
    pthread_mutex_lock(&s->rt.mu);
    int n = s->nsticker;
    pthread_mutex_unlock(&s->rt.mu);
    return n;
}

static void replica_stop(replica *s)
{
    test_router_stop(&s->rt);
    free(s);
}

/* ---- the loop ----------------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

/* Run the loop until cond(arg) holds; fail the test if it has not after GUARD_S. */
static void spin_until(struct event_base *base, int (*cond)(void *), void *arg)
{
    struct event *tick = event_new(base, -1, EV_PERSIST, on_tick, NULL);
    struct timeval tv = {0, 20000};
    assert_non_null(tick);
    event_add(tick, &tv);
    double end = now_s() + GUARD_S;
    while (!cond(arg)) {
        assert_true(now_s() < end);
        event_base_loop(base, EVLOOP_ONCE);
    }
    event_free(tick);
}

/* Run the loop for about ms milliseconds. */
static void spin_for(struct event_base *base, int ms)
{
    struct event *tick = event_new(base, -1, EV_PERSIST, on_tick, NULL);
    struct timeval tv = {0, 20000};
    event_add(tick, &tv);
    double end = now_s() + ms / 1e3;
    while (now_s() < end) event_base_loop(base, EVLOOP_ONCE);
    event_free(tick);
}

/* ---- runs --------------------------------------------------------------------------------- */

typedef struct enc_arg {
    uint64_t id;
    int calls; /* times the encoder ran */
    int fail;
} enc_arg;

static int encode_sticker(void *arg, uint64_t request_id, uint32_t deadline_ms, uint8_t **buf,
                          size_t *len, ps_err *err)
{
    enc_arg *a = arg;
    a->calls++;
    if (a->fail) return ps_err_set(err, PS_EINVAL, "scripted encoder failure");
    return ps_wire_encode_get_sticker(request_id, deadline_ms, a->id, buf, len, err);
}

/* One request: a run of one call, with its outcome. */
typedef struct req {
    broker_call call;
    enc_arg enc;
    int done; /* times done ran */
} req;

static void req_done(void *arg, broker_call *calls, size_t n)
{
    req *r = arg;
    assert_ptr_equal(calls, &r->call);
    assert_int_equal(n, 1);
    r->done++;
}

static void req_start(broker_fan_t *f, req *r, uint32_t shard, int replica, uint64_t sticker)
{
    memset(r, 0, sizeof *r);
    r->enc.id = sticker;
    r->call = (broker_call){.shard = shard,
                            .replica = replica,
                            .expect = PERSRV__ENVELOPE__BODY_STICKER_REPLY,
                            .encode = encode_sticker,
                            .arg = &r->enc};
    ps_err err = {0, ""};
    assert_int_equal(broker_fan_start(f, &r->call, 1, req_done, r, &err), 0);
    assert_int_equal(r->done, 0); /* never from inside start */
}

static int req_ended(void *arg)
{
    return ((req *)arg)->done > 0;
}

typedef struct reqs {
    req *r;
    int n;
} reqs;

static int all_ended(void *arg)
{
    reqs *rs = arg;
    for (int i = 0; i < rs->n; i++)
        if (!rs->r[i].done) return 0;
    return 1;
}

/* The answer of r is sticker `sticker`; frees it. */
static void expect_answer(req *r, uint64_t sticker)
{
    assert_int_equal(r->done, 1);
    if (!r->call.reply) fprintf(stderr, "call failed: %s\n", r->call.reason);
    assert_non_null(r->call.reply);
    assert_true(r->call.reply->sticker_reply->id == sticker);
    assert_string_equal(r->call.reason, "");
    assert_false(r->call.timed_out);
    ps_wire_free(r->call.reply);
    r->call.reply = NULL;
}

typedef struct fixture {
    struct event_base *base;
    broker_fan_t *f;
} fixture;

static void fan_open_d(fixture *fx, const char *topology, uint32_t deadline_ms, uint32_t retries,
                       uint32_t down_after, uint32_t slow_start_ms)
{
    ps_err err = {0, ""};
    fx->base = event_base_new();
    assert_non_null(fx->base);
    broker_fan_cfg cfg = {.topology = topology,
                          .deadline_ms = deadline_ms,
                          .retries = retries,
                          .max_frame = 1 << 20,
                          .down_after = down_after,
                          .slow_start_ms = slow_start_ms,
                          .seed = 7};
    fx->f = broker_fan_new(fx->base, &cfg, &err);
    if (!fx->f) fprintf(stderr, "broker_fan_new: %s\n", err.msg);
    assert_non_null(fx->f);
}

static void fan_open(fixture *fx, const char *topology, uint32_t retries, uint32_t down_after,
                     uint32_t slow_start_ms)
{
    fan_open_d(fx, topology, DEADLINE_MS, retries, down_after, slow_start_ms);
}

static void fan_close(fixture *fx)
{
    broker_fan_free(fx->f);
    event_base_free(fx->base);
}

static unsigned long long counter(fixture *fx, int which)
{
    return atomic_load(&broker_fan_upmap(fx->f)->count[which]);
}

static int rep_state(fixture *fx, size_t i)
{
    return atomic_load(&broker_fan_upmap(fx->f)->r[i].state);
}

typedef struct counter_at {
    fixture *fx;
    int which;
    unsigned long long n;
} counter_at;

static int counter_reached(void *arg)
{
    counter_at *c = arg;
    return counter(c->fx, c->which) >= c->n;
}

/* Probe rounds until every shard has a replica up (the first round waits a deadline for the
 * answers; on a loaded machine a later one may be needed). */
static void probe_until_up(fixture *fx)
{
    double end = now_s() + GUARD_S;
    while (broker_fan_probe(fx->f) != 0) {
        assert_true(now_s() < end);
        spin_for(fx->base, 50);
    }
    spin_for(fx->base, 50); /* answers to the last round still on their way */
}

/* ---- tests -------------------------------------------------------------------------------- */

/* 16 requests in flight at once on one replica's socket: the replica answers only once all 16
 * are in, last first; each gets its own answer. */
static void test_many_in_flight(void **state)
{
    (void)state;
    enum { N = 16 };
    replica *a = replica_start(0, 1, M_HOLD);
    a->hold = N;
    fixture fx;
    fan_open(&fx, a->rt.endpoint, 1, 3, 0);
    probe_until_up(&fx);
    req r[N];
    for (int i = 0; i < N; i++) req_start(fx.f, &r[i], 0, 0, 100 + (uint64_t)i);
    assert_int_equal(broker_fan_pending(fx.f), N);
    reqs rs = {r, N};
    spin_until(fx.base, all_ended, &rs);
    for (int i = 0; i < N; i++) {
        assert_int_equal(r[i].call.failovers, 0);
        expect_answer(&r[i], 100 + (uint64_t)i);
    }
    assert_int_equal(broker_fan_pending(fx.f), 0);
    assert_int_equal(nsticker(a), N);
    fan_close(&fx);
    replica_stop(a);
}

/* A replica that answers a request only when the next one arrives: the first request times out
 * (one attempt: pinned), its answer comes late with the second's and is dropped (counted), the
 * second gets its own answer on the same socket, and the socket keeps serving. */
static void test_late_reply_dropped(void **state)
{
    (void)state;
    replica *a = replica_start(0, 1, M_LATE);
    fixture fx;
    fan_open(&fx, a->rt.endpoint, 1, 3, 0);
    probe_until_up(&fx);
    req r1, r2, r3;
    req_start(fx.f, &r1, 0, 0, 1);
    spin_until(fx.base, req_ended, &r1);
    assert_null(r1.call.reply);
    assert_true(r1.call.timed_out);
    assert_non_null(strstr(r1.call.reason, "no reply in"));
    assert_int_equal(counter(&fx, BROKER_HC_LATE), 0);

    req_start(fx.f, &r2, 0, 0, 2); /* brings the late answer to r1 with r2's */
    spin_until(fx.base, req_ended, &r2);
    expect_answer(&r2, 2);
    counter_at late = {&fx, BROKER_HC_LATE, 1}; /* r1's answer comes after r2's */
    spin_until(fx.base, counter_reached, &late);
    assert_int_equal(counter(&fx, BROKER_HC_LATE), 1);

    replica_set(a, M_OK, 0);
    req_start(fx.f, &r3, 0, 0, 3);
    spin_until(fx.base, req_ended, &r3);
    expect_answer(&r3, 3);
    fan_close(&fx);
    replica_stop(a);
}

/* Each request has its own deadline: a request the replica never answers times out while the
 * ones sent after it on the same socket are answered. */
static void test_deadline_per_request(void **state)
{
    (void)state;
    replica *a = replica_start(0, 1, M_SILENT_ONE);
    fixture fx;
    fan_open(&fx, a->rt.endpoint, 1, 3, 0);
    probe_until_up(&fx);
    req r[4];
    req_start(fx.f, &r[0], 0, 0, 1); /* never answered */
    for (int i = 1; i < 4; i++) req_start(fx.f, &r[i], 0, 0, 10 + (uint64_t)i);
    reqs rs = {r + 1, 3};
    spin_until(fx.base, all_ended, &rs);
    for (int i = 1; i < 4; i++) expect_answer(&r[i], 10 + (uint64_t)i);
    spin_until(fx.base, req_ended, &r[0]);
    assert_null(r[0].call.reply);
    assert_true(r[0].call.timed_out);
    assert_int_equal(counter(&fx, BROKER_HC_TIMEOUTS), 1);
    fan_close(&fx);
    replica_stop(a);
}

/* The shard's only replica misses the first deadline: with nowhere else to go, the request is
 * not sent again (a busy replica would compute it twice) but waited for one deadline more, and
 * its answer, late for the first attempt, is taken. */
static void test_single_replica_waits(void **state)
{
    (void)state;
    replica *a = replica_start(0, 1, M_TILL_PROBE);
    fixture fx;
    fan_open(&fx, a->rt.endpoint, 1, 3, 0);
    probe_until_up(&fx);
    req r;
    req_start(fx.f, &r, 0, -1, 31);
    counter_at one = {&fx, BROKER_HC_TIMEOUTS, 1};
    spin_until(fx.base, counter_reached, &one);
    assert_int_equal(r.done, 0); /* still waiting */
    broker_fan_probe(fx.f);      /* the replica answers what it held */
    spin_until(fx.base, req_ended, &r);
    expect_answer(&r, 31);
    assert_int_equal(r.call.failovers, 0);
    assert_int_equal(nsticker(a), 1); /* sent once */
    assert_int_equal(counter(&fx, BROKER_HC_LATE), 0);
    fan_close(&fx);
    replica_stop(a);
}

/* Replica a answers probes but no request: a call that lands on it times out and fails over to
 * b (encoded once, sent twice under two ids); a is then SLOW and calls go to b. */
static void test_failover(void **state)
{
    (void)state;
    replica *a = replica_start(0, 1, M_PROBES_ONLY), *b = replica_start(0, 1, M_OK);
    char topo[160];
    snprintf(topo, sizeof topo, "%s|%s", a->rt.endpoint, b->rt.endpoint);
    fixture fx;
    fan_open(&fx, topo, 1, 3, 0);
    probe_until_up(&fx);
    assert_int_equal(rep_state(&fx, 0), BROKER_REP_UP);
    assert_int_equal(rep_state(&fx, 1), BROKER_REP_UP);
    int failed_over = 0;
    for (int i = 0; i < 40 && !failed_over; i++) {
        req r;
        req_start(fx.f, &r, 0, -1, 500 + (uint64_t)i);
        spin_until(fx.base, req_ended, &r);
        failed_over = r.call.failovers == 1;
        assert_int_equal(r.enc.calls, 1); /* encoded once, whatever the attempts */
        expect_answer(&r, 500 + (uint64_t)i);
    }
    assert_true(failed_over);
    assert_int_equal(nsticker(a), 1);
    assert_int_equal(rep_state(&fx, 0), BROKER_REP_SLOW);
    for (int i = 0; i < 5; i++) { /* a is slow: b takes the calls */
        req r;
        req_start(fx.f, &r, 0, -1, 900 + (uint64_t)i);
        spin_until(fx.base, req_ended, &r);
        assert_int_equal(r.call.failovers, 0);
        expect_answer(&r, 900 + (uint64_t)i);
    }
    assert_int_equal(nsticker(a), 1);
    fan_close(&fx);
    replica_stop(a);
    replica_stop(b);
}

/* Probes missed: a replica is marked down only after down-after-missed-probes rounds in a row
 * (2 here), not after one. Then, every replica of the shard down, a call is still sent (panic)
 * and answered — which makes its replica up again. */
static void test_missed_probes_and_panic(void **state)
{
    (void)state;
    replica *a = replica_start(0, 1, M_OK), *b = replica_start(0, 1, M_OK);
    char topo[160];
    snprintf(topo, sizeof topo, "%s|%s", a->rt.endpoint, b->rt.endpoint);
    fixture fx;
    fan_open(&fx, topo, 1, 2, 0);
    probe_until_up(&fx);
    replica_set(a, M_NO_PROBES, 0);
    replica_set(b, M_NO_PROBES, 0);
    spin_for(fx.base, 200);
    broker_fan_probe(fx.f); /* the last round's probes were answered; new ones go out */
    spin_for(fx.base, 100);
    broker_fan_probe(fx.f); /* one missed each */
    assert_int_equal(rep_state(&fx, 0), BROKER_REP_UP);
    assert_int_equal(rep_state(&fx, 1), BROKER_REP_UP);
    assert_true(broker_fan_shard_up(fx.f, 0));
    spin_for(fx.base, 100);
    assert_int_equal(broker_fan_probe(fx.f), 1); /* two in a row: down */
    assert_int_equal(rep_state(&fx, 0), BROKER_REP_DOWN);
    assert_int_equal(rep_state(&fx, 1), BROKER_REP_DOWN);
    assert_int_equal(counter(&fx, BROKER_HC_DOWN_PROBES), 2);

    req r;
    req_start(fx.f, &r, 0, -1, 42);
    spin_until(fx.base, req_ended, &r);
    expect_answer(&r, 42);
    assert_int_equal(r.call.failovers, 0);
    assert_int_equal(counter(&fx, BROKER_HC_PANIC), 1);
    assert_true(broker_fan_shard_up(fx.f, 0)); /* the answer brought its replica back */
    fan_close(&fx);
    replica_stop(a);
    replica_stop(b);
}

/* A replica that is gone (nobody listens): its send fails at once (not connected), so a call
 * fails over without waiting a deadline, and with no other replica it fails — not timed out —
 * in panic; the probe's failed send marks it down as a transport error. */
static void test_transport_error(void **state)
{
    (void)state;
    char closed[64], topo[160];
    test_closed_endpoint(closed, sizeof closed);
    replica *b = replica_start(0, 1, M_OK);
    snprintf(topo, sizeof topo, "%s|%s", closed, b->rt.endpoint);
    fixture fx;
    fan_open(&fx, topo, 1, 3, 0);
    probe_until_up(&fx);
    assert_int_equal(rep_state(&fx, 0), BROKER_REP_DOWN);
    assert_int_equal(rep_state(&fx, 1), BROKER_REP_UP);
    req r;
    req_start(fx.f, &r, 0, 0, 8); /* pinned to the gone one: fails at once */
    spin_until(fx.base, req_ended, &r);
    assert_null(r.call.reply);
    assert_false(r.call.timed_out);
    assert_non_null(strstr(r.call.reason, "not connected"));
    fan_close(&fx);

    /* only the gone replica: panic tries it, and the call fails without a timeout */
    fan_open(&fx, closed, 1, 3, 0);
    assert_int_equal(broker_fan_probe(fx.f), 1);
    req_start(fx.f, &r, 0, -1, 9);
    spin_until(fx.base, req_ended, &r);
    assert_null(r.call.reply);
    assert_false(r.call.timed_out);
    assert_non_null(strstr(r.call.reason, "not connected"));
    assert_true(counter(&fx, BROKER_HC_PANIC) >= 1);
    fan_close(&fx);

    /* a replica that goes away: once its connection is gone a send (a call's or a probe's)
     * fails and it is marked down (transport; missed probes cannot: 1000 needed); the calls
     * go to the other */
    replica *a = replica_start(0, 1, M_OK);
    snprintf(topo, sizeof topo, "%s|%s", a->rt.endpoint, b->rt.endpoint);
    fan_open(&fx, topo, 1, 1000, 0);
    probe_until_up(&fx);
    replica_stop(a);
    for (int i = 0; i < 200 && counter(&fx, BROKER_HC_DOWN_TRANSPORT) == 0; i++) {
        broker_fan_probe(fx.f);
        req_start(fx.f, &r, 0, -1, 70 + (uint64_t)i);
        spin_until(fx.base, req_ended, &r);
        expect_answer(&r, 70 + (uint64_t)i); /* b answers, at once or after a failover */
        spin_for(fx.base, 20);
    }
    assert_int_equal(counter(&fx, BROKER_HC_DOWN_TRANSPORT), 1);
    assert_int_equal(rep_state(&fx, 0), BROKER_REP_DOWN);
    fan_close(&fx);
    replica_stop(b);
}

static int b_down(void *arg)
{
    return rep_state(arg, 1) == BROKER_REP_DOWN;
}

static int b_up(void *arg)
{
    return rep_state(arg, 1) == BROKER_REP_UP;
}

/* Slow start: b goes down (answers not ready) and comes back; with a long slow-start it gets
 * about a tenth of the calls a replica at full weight would, not half. */
static void test_slow_start(void **state)
{
    (void)state;
    enum { N = 200 };
    replica *a = replica_start(0, 1, M_OK), *b = replica_start(0, 1, M_OK);
    char topo[160];
    snprintf(topo, sizeof topo, "%s|%s", a->rt.endpoint, b->rt.endpoint);
    fixture fx;
    fan_open(&fx, topo, 1, 3, 600000);
    probe_until_up(&fx);
    replica_set(b, M_OK, 1);
    spin_for(fx.base, 50);
    broker_fan_probe(fx.f);
    spin_until(fx.base, b_down, &fx);
    assert_int_equal(counter(&fx, BROKER_HC_DOWN_REFUSED), 1);
    replica_set(b, M_OK, 0);
    broker_fan_probe(fx.f);
    spin_until(fx.base, b_up, &fx);
    assert_int_equal(counter(&fx, BROKER_HC_UP_AGAIN), 1);

    req *r = calloc(N, sizeof *r);
    assert_non_null(r);
    int b0 = nsticker(b);
    for (int i = 0; i < N; i++) req_start(fx.f, &r[i], 0, -1, 1000 + (uint64_t)i);
    reqs rs = {r, N};
    spin_until(fx.base, all_ended, &rs);
    for (int i = 0; i < N; i++) expect_answer(&r[i], 1000 + (uint64_t)i);
    int nb = nsticker(b) - b0;
    fprintf(stderr, "slow start: %d of %d calls to the returning replica\n", nb, N);
    assert_true(nb > 0);     /* it does get traffic */
    assert_true(nb < N / 4); /* ~N/10 expected; N/2 at full weight */
    ps_buf buf = PS_BUF_INIT;
    broker_upmap_render(broker_fan_upmap(fx.f), &buf);
    assert_int_equal(buf.rc, 0);
    assert_non_null(strstr(buf.p, "persrv_broker_replicas_slow_start 1\n"));
    assert_non_null(strstr(buf.p, "persrv_broker_replica_up_again_total 1\n"));
    ps_buf_free(&buf);
    free(r);
    fan_close(&fx);
    replica_stop(a);
    replica_stop(b);
}

/* Freed with calls in flight: each run's done is called once, its calls failed; an encoder
 * error sends nothing and never calls done. */
static void test_free_in_flight_and_encoder_error(void **state)
{
    (void)state;
    replica *a = replica_start(0, 1, M_PROBES_ONLY);
    fixture fx;
    fan_open(&fx, a->rt.endpoint, 1, 3, 0);
    probe_until_up(&fx);
    req r[3];
    for (int i = 0; i < 3; i++) req_start(fx.f, &r[i], 0, -1, 1);
    broker_fan_free(fx.f);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].done, 1);
        assert_null(r[i].call.reply);
        assert_non_null(strstr(r[i].call.reason, "stopping"));
    }
    event_base_free(fx.base);

    fan_open(&fx, a->rt.endpoint, 1, 3, 0);
    probe_until_up(&fx);
    int before = nsticker(a);
    req e = {.enc = {.id = 1, .fail = 1}};
    e.call = (broker_call){.shard = 0,
                           .replica = -1,
                           .expect = PERSRV__ENVELOPE__BODY_STICKER_REPLY,
                           .encode = encode_sticker,
                           .arg = &e.enc};
    ps_err err = {0, ""};
    assert_int_equal(broker_fan_start(fx.f, &e.call, 1, req_done, &e, &err), PS_EINVAL);
    assert_non_null(strstr(err.msg, "scripted encoder failure"));
    spin_for(fx.base, 50);
    assert_int_equal(e.done, 0);
    assert_int_equal(nsticker(a), before);
    fan_close(&fx);
    replica_stop(a);
}

static void test_bad_topology(void **state)
{
    (void)state;
    ps_err err = {0, ""};
    struct event_base *base = event_base_new();
    broker_fan_cfg cfg = {.topology = "tcp://127.0.0.1:1,,tcp://127.0.0.1:2", .deadline_ms = 10};
    assert_null(broker_fan_new(base, &cfg, &err));
    assert_int_equal(err.code, PS_EINVAL);
    cfg.topology = "not an endpoint";
    assert_null(broker_fan_new(base, &cfg, &err));
    assert_int_equal(err.code, PS_EINVAL);
    assert_non_null(strstr(err.msg, "not an endpoint"));
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_many_in_flight),
        cmocka_unit_test(test_late_reply_dropped),
        cmocka_unit_test(test_deadline_per_request),
        cmocka_unit_test(test_failover),
        cmocka_unit_test(test_single_replica_waits),
        cmocka_unit_test(test_missed_probes_and_panic),
        cmocka_unit_test(test_transport_error),
        cmocka_unit_test(test_slow_start),
        cmocka_unit_test(test_free_in_flight_and_encoder_error),
        cmocka_unit_test(test_bad_topology),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
