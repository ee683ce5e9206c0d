/*
 * test_pool.c — the broker's shard pool (broker/pool.c) against fake shard replicas: ROUTER
 * sockets on tcp://127.0.0.1:<any port>, each served from a thread and scripted per test (they
 * answer HealthRequests as shard s of n, and GetStickerRequests with the sticker asked for).
 * Covered: health probes marking replicas up; a fan-out to every shard with one frame encoded
 * once and a fresh request id per shard; failover to the next replica after a timeout (the
 * request encoded once per call, not per attempt); a stale reply dropped; a replica nobody
 * listens at treated as one that does not answer (marked down by the probes, a pinned call
 * timed out); every replica down failing at once; an encoder error sending nothing.
 * No timing is asserted.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "broker.h"
#include "ps/wire_engine.h"
#include "test_router.h"

#define DEADLINE_MS 300
#define MAX_SEEN    32

enum mode {
    M_OK,          /* answer everything */
    M_PROBES_ONLY, /* answer health probes, never a sticker request */
    M_STALE        /* a sticker reply under another request id (sticker id + 1000) first */
};

typedef struct shard {
    test_router rt; /* first: the router's function gets &rt */
    enum mode mode;
    uint32_t shard, nshards;
    int nsticker; /* sticker requests seen */
    uint64_t ids[MAX_SEEN];
    uint32_t deadlines[MAX_SEEN];
} shard;

static void sticker_reply(shard *s, const void *id, size_t idlen, uint64_t rid, uint64_t sticker)
{
    uint8_t *buf;
    size_t len;
    ps_err err;
    TR_CHECK(ps_wire_encode_sticker_reply(rid, s->shard, sticker, NULL, 0, &buf, &len, &err) == 0);
    test_router_send(&s->rt, id, idlen, buf, len);
    free(buf);
}

/* The test router's function: answer health probes, record and answer sticker requests as
 * s->mode says. */
static void serve(test_router *rt, const void *id, size_t idlen, const Persrv__Envelope *in)
{
    shard *s = (shard *)rt;
    ps_err err;
    if (in->body_case == PERSRV__ENVELOPE__BODY_HEALTH) {
        uint8_t *buf;
        size_t len;
        ps_wire_health h = {.shard = s->shard, .nshards = s->nshards, .ready = 1};
        TR_CHECK(ps_wire_encode_health_reply(in->request_id, &h, &buf, &len, &err) == 0);
        test_router_send(&s->rt, id, idlen, buf, len);
        free(buf);
    } else {
        TR_CHECK(in->body_case == PERSRV__ENVELOPE__BODY_GET_STICKER);
        int n = s->nsticker++;
        if (n < MAX_SEEN) {
            s->ids[n] = in->request_id;
            s->deadlines[n] = in->deadline_ms;
        }
        uint64_t sticker = in->get_sticker->id;
        if (s->mode == M_STALE) sticker_reply(s, id, idlen, in->request_id + 1, sticker + 1000);
        if (s->mode != M_PROBES_ONLY) sticker_reply(s, id, idlen, in->request_id, sticker);
    }
}

static shard *shard_start(uint32_t sh, uint32_t nshards, enum mode mode)
{
    shard *s = calloc(1, sizeof *s);
    assert_non_null(s);
    s->mode = mode;
    s->shard = sh;
    s->nshards = nshards;
    test_router_start(&s->rt, serve);
    return s;
}

static int nsticker(shard *s)
{
    pthread_mutex_lock(&s->rt.mu);
    int n = s->nsticker;
    pthread_mutex_unlock(&s->rt.mu);
    return n;
}

static void shard_stop(shard *s)
{
    test_router_stop(&s->rt);
    free(s);
}

static broker_pool_t *pool_new(const char *topology, uint32_t deadline_ms)
{
    ps_err err = {0, ""};
    broker_pool_t *p = broker_pool_new(topology, deadline_ms, 1, 0, NULL, NULL, &err);
    if (!p) fprintf(stderr, "broker_pool_new: %s\n", err.msg);
    assert_non_null(p);
    return p;
}

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

/* ---- tests -------------------------------------------------------------------------------- */

/* Two shards, each answering: probes mark both up; one frame, encoded once, serves both calls,
 * each sent under its own request id with the deadline stamped. */
static void test_fan_out(void **state)
{
    (void)state;
    shard *s0 = shard_start(0, 2, M_OK), *s1 = shard_start(1, 2, M_OK);
    char topo[160];
    snprintf(topo, sizeof topo, "%s,%s", s0->rt.endpoint, s1->rt.endpoint);
    broker_pool_t *p = pool_new(topo, DEADLINE_MS);
    assert_int_equal(broker_pool_nshards(p), 2);
    assert_int_equal(broker_pool_probe(p), 0); /* no shard down */
    assert_true(broker_pool_shard_up(p, 0) && broker_pool_shard_up(p, 1));

    uint8_t *frame;
    size_t len;
    ps_err err = {0, ""};
    assert_int_equal(ps_wire_encode_get_sticker(0, 0, 77, &frame, &len, &err), 0);
    broker_call calls[2];
    for (uint32_t s = 0; s < 2; s++)
        calls[s] = (broker_call){.shard = s,
                                 .replica = -1,
                                 .expect = PERSRV__ENVELOPE__BODY_STICKER_REPLY,
                                 .frame = frame,
                                 .len = len};
    assert_int_equal(broker_pool_run(p, calls, 2, &err), 0);
    for (uint32_t s = 0; s < 2; s++) {
        assert_non_null(calls[s].reply);
        assert_int_equal(calls[s].reply->sticker_reply->shard, s);
        assert_true(calls[s].reply->sticker_reply->id == 77);
        assert_int_equal(calls[s].failovers, 0);
        assert_string_equal(calls[s].reason, "");
        ps_wire_free(calls[s].reply);
    }
    pthread_mutex_lock(&s0->rt.mu);
    pthread_mutex_lock(&s1->rt.mu);
    assert_int_equal(s0->nsticker, 1);
    assert_int_equal(s1->nsticker, 1);
    assert_true(s0->ids[0] != 0 && s1->ids[0] != 0);
    assert_true(s0->deadlines[0] >= 1 && s0->deadlines[0] <= DEADLINE_MS);
    assert_true(s1->deadlines[0] >= 1 && s1->deadlines[0] <= DEADLINE_MS);
    pthread_mutex_unlock(&s1->rt.mu);
    pthread_mutex_unlock(&s0->rt.mu);
    free(frame);
    broker_pool_free(p);
    shard_stop(s0);
    shard_stop(s1);
}

/* Replica a answers probes but never a request: the call times out on it and fails over to b,
 * which answers; the encoder ran once for the two attempts. */
static void test_failover(void **state)
{
    (void)state;
    shard *a = shard_start(0, 1, M_PROBES_ONLY), *b = shard_start(0, 1, M_OK);
    char topo[160];
    snprintf(topo, sizeof topo, "%s|%s", a->rt.endpoint, b->rt.endpoint);
    broker_pool_t *p = pool_new(topo, DEADLINE_MS);
    assert_int_equal(broker_pool_nreplicas(p, 0), 2);
    assert_int_equal(broker_pool_probe(p), 0);
    enc_arg arg = {.id = 5};
    broker_call c = {.shard = 0,
                     .replica = -1,
                     .expect = PERSRV__ENVELOPE__BODY_STICKER_REPLY,
                     .encode = encode_sticker,
                     .arg = &arg};
    ps_err err = {0, ""};
    assert_int_equal(broker_pool_run(p, &c, 1, &err), 0); /* round robin starts at a */
    assert_non_null(c.reply);
    assert_true(c.reply->sticker_reply->id == 5);
    assert_int_equal(c.failovers, 1);
    assert_int_equal(arg.calls, 1); /* encoded once, stamped twice */
    assert_int_equal(nsticker(a), 1);
    assert_int_equal(nsticker(b), 1);
    pthread_mutex_lock(&a->rt.mu);
    pthread_mutex_lock(&b->rt.mu);
    assert_true(a->ids[0] != b->ids[0]); /* each attempt its own id */
    pthread_mutex_unlock(&b->rt.mu);
    pthread_mutex_unlock(&a->rt.mu);
    ps_wire_free(c.reply);

    /* a fixed replica that does not answer: one attempt, timed out */
    c = (broker_call){.shard = 0,
                      .replica = 0,
                      .expect = PERSRV__ENVELOPE__BODY_STICKER_REPLY,
                      .encode = encode_sticker,
                      .arg = &arg};
    assert_int_equal(broker_pool_run(p, &c, 1, &err), 0);
    assert_null(c.reply);
    assert_true(c.timed_out);
    assert_non_null(strstr(c.reason, "no reply in"));
    broker_pool_free(p);
    shard_stop(a);
    shard_stop(b);
}

static void test_stale_dropped(void **state)
{
    (void)state;
    shard *s = shard_start(0, 1, M_STALE);
    broker_pool_t *p = pool_new(s->rt.endpoint, DEADLINE_MS);
    assert_int_equal(broker_pool_probe(p), 0);
    enc_arg arg = {.id = 9};
    broker_call c = {.shard = 0,
                     .replica = -1,
                     .expect = PERSRV__ENVELOPE__BODY_STICKER_REPLY,
                     .encode = encode_sticker,
                     .arg = &arg};
    ps_err err = {0, ""};
    assert_int_equal(broker_pool_run(p, &c, 1, &err), 0);
    assert_non_null(c.reply);
    assert_true(c.reply->sticker_reply->id == 9); /* not the stale 1009 */
    assert_int_equal(c.failovers, 0);
    ps_wire_free(c.reply);
    broker_pool_free(p);
    shard_stop(s);
}

/* A replica nobody listens at is a replica that does not answer: the probes mark it down, a
 * call pinned to it times out at its deadline (timed_out, "no reply"), and round robin never
 * lands on it. (ps_zreq sees the refusal at once; the pool keeps the failover it had.) */
static void test_refused(void **state)
{
    (void)state;
    char closed[64], topo[160];
    test_closed_endpoint(closed, sizeof closed);
    shard *b = shard_start(0, 1, M_OK);
    snprintf(topo, sizeof topo, "%s|%s", closed, b->rt.endpoint);
    broker_pool_t *p = pool_new(topo, DEADLINE_MS);
    assert_int_equal(broker_pool_probe(p), 0); /* b is up; the closed one is not */

    enc_arg arg = {.id = 3};
    ps_err err = {0, ""};
    broker_call c = {.shard = 0,
                     .replica = 0,
                     .expect = PERSRV__ENVELOPE__BODY_STICKER_REPLY,
                     .encode = encode_sticker,
                     .arg = &arg};
    assert_int_equal(broker_pool_run(p, &c, 1, &err), 0);
    assert_null(c.reply);
    assert_true(c.timed_out);
    assert_non_null(strstr(c.reason, "no reply in"));

    for (int i = 0; i < 3; i++) { /* round robin never lands on the closed replica */
        c = (broker_call){.shard = 0,
                          .replica = -1,
                          .expect = PERSRV__ENVELOPE__BODY_STICKER_REPLY,
                          .encode = encode_sticker,
                          .arg = &arg};
        assert_int_equal(broker_pool_run(p, &c, 1, &err), 0);
        assert_non_null(c.reply);
        assert_int_equal(c.failovers, 0);
        ps_wire_free(c.reply);
    }
    assert_int_equal(nsticker(b), 3);
    broker_pool_free(p);
    shard_stop(b);
}

/* Every replica of the shard down: the call fails at once without sending; an encoder error
 * is the run's error and nothing is sent. */
static void test_down_and_encoder_error(void **state)
{
    (void)state;
    char closed[64];
    test_closed_endpoint(closed, sizeof closed);
    broker_pool_t *p = pool_new(closed, DEADLINE_MS);
    assert_int_equal(broker_pool_probe(p), 1); /* one shard down */
    assert_false(broker_pool_shard_up(p, 0));
    enc_arg arg = {.id = 1};
    ps_err err = {0, ""};
    broker_call c = {.shard = 0,
                     .replica = -1,
                     .expect = PERSRV__ENVELOPE__BODY_STICKER_REPLY,
                     .encode = encode_sticker,
                     .arg = &arg};
    assert_int_equal(broker_pool_run(p, &c, 1, &err), 0);
    assert_null(c.reply);
    assert_non_null(strstr(c.reason, "no replica up"));
    broker_pool_free(p);

    shard *s = shard_start(0, 1, M_OK);
    p = pool_new(s->rt.endpoint, DEADLINE_MS);
    assert_int_equal(broker_pool_probe(p), 0);
    arg.fail = 1;
    assert_int_equal(broker_pool_run(p, &c, 1, &err), PS_EINVAL);
    assert_non_null(strstr(err.msg, "scripted encoder failure"));
    assert_int_equal(nsticker(s), 0);
    broker_pool_free(p);
    shard_stop(s);
}

static void test_bad_topology(void **state)
{
    (void)state;
    ps_err err = {0, ""};
    assert_null(
        broker_pool_new("tcp://127.0.0.1:1,,tcp://127.0.0.1:2", 100, 1, 0, NULL, NULL, &err));
    assert_int_equal(err.code, PS_EINVAL);
    assert_null(broker_pool_new("not an endpoint", 100, 1, 0, NULL, NULL, &err));
    assert_int_equal(err.code, PS_EINVAL);
    assert_non_null(strstr(err.msg, "not an endpoint"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fan_out),
        cmocka_unit_test(test_failover),
        cmocka_unit_test(test_stale_dropped),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_down_and_encoder_error),
        cmocka_unit_test(test_bad_topology),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
