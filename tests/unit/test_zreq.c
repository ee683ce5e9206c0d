/*
 * test_zreq.c — the ZeroMQ request helper (wire/include/ps/zreq.h) against small in-process
 * ROUTER servers on tcp://127.0.0.1:<any port>, each served from a thread and scripted per
 * test. Covered: a round trip with the request id and deadline stamped on a frame encoded once,
 * a stale reply dropped, a silent attempt followed by a reopened socket and a retry (the late
 * reply to the first attempt not taken), timeouts over every attempt, failover to a second
 * endpoint (and staying there), a refused endpoint (PS_EUNAVAIL, which does not use up an
 * attempt), every endpoint refused, an undecodable reply, the stop flag, bad endpoints, and the
 * non-blocking pieces the broker's pool uses (send, step, aside requests, reopen, refused).
 * No timing is asserted beyond one sanity bound: refused calls must end well before their 10 s
 * timeout; the code they return is what is checked.
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

#include "ps/wire.h"
#include "ps/zreq.h"
#include "test_router.h"

#define TIMEOUT_MS 300 /* per attempt: long enough for loopback, short enough for the suite */
#define MAX_SEEN   16

enum mode {
    M_ECHO,        /* a health_reply (nshards 2) echoing the request id */
    M_STALE_FIRST, /* a reply with another id (nshards 1), then the right one */
    M_LATE,        /* leave the first request unanswered; answer it late with the second */
    M_SILENT,      /* never answer */
    M_JUNK         /* bytes that are not an envelope */
};

typedef struct server {
    test_router rt; /* first: the router's function gets &rt */
    enum mode mode;
    int nreq;
    uint64_t ids[MAX_SEEN];
    uint32_t deadlines[MAX_SEEN];
    uint8_t ident[MAX_SEEN][64];
    size_t ident_len[MAX_SEEN];
} server;

static void reply(server *s, int who, uint64_t id, uint32_t nshards)
{
    uint8_t *buf;
    size_t len;
    ps_err err;
    ps_wire_health h = {.nshards = nshards, .shard = 0, .ready = 1};
    TR_CHECK(ps_wire_encode_health_reply(id, &h, &buf, &len, &err) == 0);
    test_router_send(&s->rt, s->ident[who], s->ident_len[who], buf, len);
    free(buf);
}

/* The test router's function: record the request, answer as s->mode says. */
static void serve(test_router *rt, const void *id, size_t idlen, const Persrv__Envelope *in)
{
    server *s = (server *)rt;
    int n = s->nreq++;
    int who = n < MAX_SEEN ? n : MAX_SEEN - 1;
    s->ids[who] = in->request_id;
    s->deadlines[who] = in->deadline_ms;
    s->ident_len[who] = idlen < 64 ? idlen : 64;
    memcpy(s->ident[who], id, s->ident_len[who]);
    switch (s->mode) {
    case M_ECHO:
        reply(s, who, in->request_id, 2);
        break;
    case M_STALE_FIRST:
        reply(s, who, in->request_id + 1, 1);
        reply(s, who, in->request_id, 2);
        break;
    case M_LATE:
        if (n == 0) break;
        reply(s, 0, s->ids[0], 1);   /* to the closed socket */
        reply(s, who, s->ids[0], 1); /* to the new one: stale there */
        reply(s, who, in->request_id, 2);
        break;
    case M_SILENT:
        break;
    case M_JUNK: {
        static const uint8_t junk[] = {0xff, 0xff, 0xff, 0x01};
        test_router_send(&s->rt, s->ident[who], s->ident_len[who], junk, sizeof junk);
        break;
    }
    }
}

static server *server_start(enum mode mode)
{
    server *s = calloc(1, sizeof *s);
    assert_non_null(s);
    s->mode = mode;
    test_router_start(&s->rt, serve);
    return s;
}

static int server_nreq(server *s)
{
    pthread_mutex_lock(&s->rt.mu);
    int n = s->nreq;
    pthread_mutex_unlock(&s->rt.mu);
    return n;
}

static void server_stop(server *s)
{
    test_router_stop(&s->rt);
    free(s);
}

/* A health request encoded once, with request_id 0 and no deadline. */
typedef struct frame {
    uint8_t *b;
    size_t n;
} frame;

static frame health_frame(void)
{
    frame f;
    ps_err err;
    assert_int_equal(ps_wire_encode_health(0, 0, &f.b, &f.n, &err), 0);
    return f;
}

static ps_zreq_t *requester(void *zctx, const char *const *eps, size_t n, uint32_t retries)
{
    ps_zreq_opts o = {.timeout_ms = TIMEOUT_MS, .retries = retries};
    ps_err err = {0, ""};
    ps_zreq_t *z = ps_zreq_new(zctx, eps, n, &o, &err);
    if (!z) fprintf(stderr, "ps_zreq_new: %s\n", err.msg);
    assert_non_null(z);
    return z;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- tests -------------------------------------------------------------------------------- */

static void test_round_trip(void **state)
{
    (void)state;
    server *s = server_start(M_ECHO);
    void *zctx = zmq_ctx_new();
    const char *eps[] = {s->rt.endpoint};
    ps_zreq_t *z = requester(zctx, eps, 1, 0);
    frame f = health_frame();
    Persrv__Envelope *r = NULL;
    ps_err err = {0, ""};

    for (int i = 0; i < 3; i++) {
        assert_int_equal(ps_zreq_call(z, f.b, f.n, 0, 0, &r, &err), 0);
        assert_int_equal(r->body_case, PERSRV__ENVELOPE__BODY_HEALTH_REPLY);
        assert_int_equal(r->health_reply->nshards, 2);
        pthread_mutex_lock(&s->rt.mu);
        assert_true(s->ids[i] != 0);
        assert_true(r->request_id == s->ids[i]); /* the stamped id, echoed */
        assert_int_equal(s->deadlines[i], TIMEOUT_MS);
        if (i) assert_true(s->ids[i] != s->ids[i - 1]);
        pthread_mutex_unlock(&s->rt.mu);
        ps_wire_free(r);
    }
    /* another timeout per call: stamped as the deadline */
    assert_int_equal(ps_zreq_call(z, f.b, f.n, 1234, 1, &r, &err), 0);
    ps_wire_free(r);
    pthread_mutex_lock(&s->rt.mu);
    assert_int_equal(s->deadlines[3], 1234);
    pthread_mutex_unlock(&s->rt.mu);
    assert_int_equal(server_nreq(s), 4);
    free(f.b);
    ps_zreq_free(z);
    zmq_ctx_term(zctx);
    server_stop(s);
}

static void test_stale_dropped(void **state)
{
    (void)state;
    server *s = server_start(M_STALE_FIRST);
    void *zctx = zmq_ctx_new();
    const char *eps[] = {s->rt.endpoint};
    ps_zreq_t *z = requester(zctx, eps, 1, 0);
    frame f = health_frame();
    Persrv__Envelope *r = NULL;
    ps_err err = {0, ""};
    assert_int_equal(ps_zreq_call(z, f.b, f.n, 0, 0, &r, &err), 0);
    assert_int_equal(r->health_reply->nshards, 2); /* not the stale reply's 1 */
    assert_int_equal(server_nreq(s), 1);
    ps_wire_free(r);
    free(f.b);
    ps_zreq_free(z);
    zmq_ctx_term(zctx);
    server_stop(s);
}

/* The first attempt goes unanswered; the retry goes out on a new socket (a new routing id at
 * the server) under a new request id, and its answer is taken, not the late one. */
static void test_timeout_reopen_retry(void **state)
{
    (void)state;
    server *s = server_start(M_LATE);
    void *zctx = zmq_ctx_new();
    const char *eps[] = {s->rt.endpoint};
    ps_zreq_t *z = requester(zctx, eps, 1, 1);
    frame f = health_frame();
    Persrv__Envelope *r = NULL;
    ps_err err = {0, ""};
    assert_int_equal(ps_zreq_call(z, f.b, f.n, 0, 0, &r, &err), 0);
    assert_int_equal(r->health_reply->nshards, 2);
    assert_int_equal(server_nreq(s), 2);
    pthread_mutex_lock(&s->rt.mu);
    assert_true(s->ids[0] != s->ids[1]);
    assert_true(r->request_id == s->ids[1]);
    assert_false(s->ident_len[0] == s->ident_len[1] &&
                 !memcmp(s->ident[0], s->ident[1], s->ident_len[0])); /* a new socket */
    pthread_mutex_unlock(&s->rt.mu);
    ps_wire_free(r);
    free(f.b);
    ps_zreq_free(z);
    zmq_ctx_term(zctx);
    server_stop(s);
}

static void test_timeout_every_attempt(void **state)
{
    (void)state;
    server *s = server_start(M_SILENT);
    void *zctx = zmq_ctx_new();
    const char *eps[] = {s->rt.endpoint};
    ps_zreq_t *z = requester(zctx, eps, 1, 2);
    frame f = health_frame();
    Persrv__Envelope *r = (Persrv__Envelope *)1;
    ps_err err = {0, ""};
    assert_int_equal(ps_zreq_call(z, f.b, f.n, 0, 0, &r, &err), PS_ETIMEDOUT);
    assert_null(r);
    assert_non_null(strstr(err.msg, "3 attempts"));
    assert_int_equal(server_nreq(s), 3);
    assert_int_equal(ps_zreq_call(z, f.b, f.n, 0, 1, &r, &err), PS_ETIMEDOUT);
    assert_int_equal(server_nreq(s), 4);
    free(f.b);
    ps_zreq_free(z);
    zmq_ctx_term(zctx);
    server_stop(s);
}

/* A silent first endpoint: the retry goes to the second, which answers; the next call starts
 * there. */
static void test_failover(void **state)
{
    (void)state;
    server *a = server_start(M_SILENT), *b = server_start(M_ECHO);
    void *zctx = zmq_ctx_new();
    const char *eps[] = {a->rt.endpoint, b->rt.endpoint};
    ps_zreq_t *z = requester(zctx, eps, 2, 1);
    frame f = health_frame();
    Persrv__Envelope *r = NULL;
    ps_err err = {0, ""};
    assert_int_equal(ps_zreq_call(z, f.b, f.n, 0, 0, &r, &err), 0);
    assert_int_equal(r->health_reply->nshards, 2);
    ps_wire_free(r);
    assert_int_equal(server_nreq(a), 1);
    assert_int_equal(server_nreq(b), 1);
    assert_int_equal(ps_zreq_index(z), 1);
    assert_string_equal(ps_zreq_endpoint(z), b->rt.endpoint);
    assert_int_equal(ps_zreq_call(z, f.b, f.n, 0, 0, &r, &err), 0);
    ps_wire_free(r);
    assert_int_equal(server_nreq(a), 1); /* stayed on b */
    assert_int_equal(server_nreq(b), 2);

    /* both silent: every attempt times out, alternating */
    pthread_mutex_lock(&b->rt.mu);
    b->mode = M_SILENT;
    pthread_mutex_unlock(&b->rt.mu);
    assert_int_equal(ps_zreq_call(z, f.b, f.n, 0, 3, &r, &err), PS_ETIMEDOUT);
    assert_non_null(strstr(err.msg, "over 2 endpoints"));
    assert_int_equal(server_nreq(a), 2);
    assert_int_equal(server_nreq(b), 4);
    free(f.b);
    ps_zreq_free(z);
    zmq_ctx_term(zctx);
    server_stop(a);
    server_stop(b);
}

/* Nobody listens: the call fails as refused, long before its 10 s timeout. */
static void test_refused(void **state)
{
    (void)state;
    char closed[64];
    test_closed_endpoint(closed, sizeof closed);
    void *zctx = zmq_ctx_new();
    const char *eps[] = {closed};
    ps_zreq_opts o = {.timeout_ms = 10000, .retries = 3};
    ps_err err = {0, ""};
    ps_zreq_t *z = ps_zreq_new(zctx, eps, 1, &o, &err);
    assert_non_null(z);
    frame f = health_frame();
    Persrv__Envelope *r = (Persrv__Envelope *)1;
    for (int i = 0; i < 2; i++) { /* a fresh socket, then one that has been retrying */
        double t0 = mono_s();
        assert_int_equal(ps_zreq_call(z, f.b, f.n, 0, 0, &r, &err), PS_EUNAVAIL);
        assert_true(mono_s() - t0 < 10.0); /* sanity only: not the timeout */
        assert_null(r);
        assert_non_null(strstr(err.msg, "connection refused"));
        assert_non_null(strstr(err.msg, closed));
    }
    ps_zreq_free(z);

    /* refused, then a live endpoint: no attempt is used up by the refusal (retries 0) */
    server *b = server_start(M_ECHO);
    const char *two[] = {closed, b->rt.endpoint};
    o.retries = 0;
    assert_non_null(z = ps_zreq_new(zctx, two, 2, &o, &err));
    assert_int_equal(ps_zreq_call(z, f.b, f.n, 0, 0, &r, &err), 0);
    assert_int_equal(r->health_reply->nshards, 2);
    ps_wire_free(r);
    assert_int_equal(server_nreq(b), 1);
    ps_zreq_free(z);
    server_stop(b);

    /* every endpoint refuses */
    char closed2[64];
    test_closed_endpoint(closed2, sizeof closed2);
    const char *none[] = {closed, closed2};
    assert_non_null(z = ps_zreq_new(zctx, none, 2, &o, &err));
    double t0 = mono_s();
    assert_int_equal(ps_zreq_call(z, f.b, f.n, 0, 0, &r, &err), PS_EUNAVAIL);
    assert_true(mono_s() - t0 < 10.0);
    assert_non_null(strstr(err.msg, "all 2 endpoints failed"));
    assert_non_null(strstr(err.msg, "connection refused"));
    ps_zreq_free(z);
    free(f.b);
    zmq_ctx_term(zctx);
}

/* A reply that does not decode, meant for the call (no id in it): PS_EPARSE. */
static void test_junk_reply(void **state)
{
    (void)state;
    server *s = server_start(M_JUNK);
    void *zctx = zmq_ctx_new();
    const char *eps[] = {s->rt.endpoint};
    ps_zreq_t *z = requester(zctx, eps, 1, 0);
    frame f = health_frame();
    Persrv__Envelope *r = (Persrv__Envelope *)1;
    ps_err err = {0, ""};
    assert_int_equal(ps_zreq_call(z, f.b, f.n, 0, 0, &r, &err), PS_EPARSE);
    assert_null(r);
    assert_non_null(strstr(err.msg, "reply from"));
    pthread_mutex_lock(&s->rt.mu);
    s->mode = M_ECHO;
    pthread_mutex_unlock(&s->rt.mu);
    assert_int_equal(ps_zreq_call(z, f.b, f.n, 0, 0, &r, &err), 0); /* and it recovers */
    ps_wire_free(r);
    free(f.b);
    ps_zreq_free(z);
    zmq_ctx_term(zctx);
    server_stop(s);
}

static void test_stop_flag(void **state)
{
    (void)state;
    server *s = server_start(M_SILENT);
    void *zctx = zmq_ctx_new();
    const char *eps[] = {s->rt.endpoint};
    atomic_int stop;
    atomic_init(&stop, 1);
    ps_zreq_opts o = {.timeout_ms = 10000, .stop = &stop};
    ps_err err = {0, ""};
    ps_zreq_t *z = ps_zreq_new(zctx, eps, 1, &o, &err);
    assert_non_null(z);
    frame f = health_frame();
    Persrv__Envelope *r = NULL;
    assert_int_equal(ps_zreq_call(z, f.b, f.n, 0, 0, &r, &err), PS_EUNAVAIL);
    assert_string_equal(err.msg, "stopping");
    free(f.b);
    ps_zreq_free(z);
    zmq_ctx_term(zctx);
    server_stop(s);
}

static void test_bad_endpoints(void **state)
{
    (void)state;
    void *zctx = zmq_ctx_new();
    ps_err err = {0, ""};
    const char *bad[] = {"not an endpoint"};
    assert_null(ps_zreq_new(zctx, bad, 1, NULL, &err));
    assert_int_equal(err.code, PS_EINVAL);
    assert_non_null(strstr(err.msg, "not an endpoint"));
    const char *empty[] = {""};
    assert_null(ps_zreq_new(zctx, empty, 1, NULL, &err));
    assert_int_equal(err.code, PS_EINVAL);
    assert_null(ps_zreq_new(zctx, bad, 0, NULL, &err));
    assert_int_equal(err.code, PS_EINVAL);

    /* a later endpoint ZeroMQ rejects is skipped when a failover reaches it */
    server *s = server_start(M_SILENT);
    const char *two[] = {s->rt.endpoint, "nosuchtransport://x"};
    ps_zreq_t *z = requester(zctx, two, 2, 0);
    frame f = health_frame();
    Persrv__Envelope *r = NULL;
    assert_int_equal(ps_zreq_call(z, f.b, f.n, 0, 2, &r, &err), PS_ETIMEDOUT);
    assert_int_equal(server_nreq(s), 2);
    free(f.b);
    ps_zreq_free(z);
    server_stop(s);
    zmq_ctx_term(zctx);
}

/* Poll until z has something; then step once. */
static int poll_step(ps_zreq_t *z, Persrv__Envelope **env, ps_err *err)
{
    for (int i = 0; i < 100; i++) {
        int rc = ps_zreq_step(z, env, err);
        if (rc != PS_ZREQ_NONE) return rc;
        zmq_pollitem_t items[PS_ZREQ_NPOLL];
        int n = ps_zreq_pollitems(z, items);
        assert_int_equal(n, 2);
        zmq_poll(items, n, 100);
    }
    return PS_ZREQ_NONE;
}

/* The non-blocking pieces: a tracked request and an aside on one socket, each reply told
 * apart; a reopen forgets what was pending; a refused endpoint reported by step. */
static void test_pieces(void **state)
{
    (void)state;
    server *s = server_start(M_ECHO);
    void *zctx = zmq_ctx_new();
    const char *eps[] = {s->rt.endpoint};
    ps_zreq_t *z = requester(zctx, eps, 1, 0);
    frame f = health_frame();
    Persrv__Envelope *env = NULL;
    ps_err err = {0, ""};
    uint64_t rid = 0, aside = 0;

    assert_non_null(ps_zreq_socket(z));
    assert_int_equal(ps_zreq_count(z), 1);
    assert_int_equal(ps_zreq_send_aside(z, f.b, f.n, 50, &aside, &err), 0);
    assert_int_equal(ps_zreq_send(z, f.b, f.n, 50, &rid, &err), 0);
    assert_true(rid != aside);
    assert_true(ps_zreq_pending(z));
    assert_true(ps_zreq_request_id(z) == rid);
    /* the aside's reply comes first (sent first), then the request's */
    assert_int_equal(poll_step(z, &env, &err), PS_ZREQ_OTHER);
    assert_true(env->request_id == aside);
    ps_wire_free(env);
    assert_int_equal(poll_step(z, &env, &err), PS_ZREQ_REPLY);
    assert_true(env->request_id == rid);
    ps_wire_free(env);
    assert_false(ps_zreq_pending(z));

    /* a reopen drops the pending request */
    pthread_mutex_lock(&s->rt.mu);
    s->mode = M_SILENT;
    pthread_mutex_unlock(&s->rt.mu);
    assert_int_equal(ps_zreq_send(z, f.b, f.n, 50, &rid, &err), 0);
    assert_int_equal(ps_zreq_reopen(z, ps_zreq_index(z), &err), 0);
    assert_false(ps_zreq_pending(z));
    ps_zreq_free(z);
    server_stop(s);

    /* refused while a request is outstanding */
    char closed[64];
    test_closed_endpoint(closed, sizeof closed);
    const char *c[] = {closed};
    z = requester(zctx, c, 1, 0);
    assert_int_equal(ps_zreq_send(z, f.b, f.n, 50, &rid, &err), 0);
    assert_int_equal(poll_step(z, &env, &err), PS_ZREQ_REFUSED);
    assert_null(env);
    assert_false(ps_zreq_pending(z));
    ps_zreq_free(z);
    free(f.b);
    zmq_ctx_term(zctx);
}

/* Requesters come and go on one context (the pool reopens one after every timeout): a refusal
 * is still reported to each new one. (Left to zmq_close, a socket's monitor was torn down so
 * late that the next monitor of the context got no events at all.) */
static void test_refused_after_close(void **state)
{
    (void)state;
    void *zctx = zmq_ctx_new();
    char closed[64];
    test_closed_endpoint(closed, sizeof closed);
    const char *c[] = {closed};
    frame f = health_frame();
    for (int k = 0; k < 5; k++) {
        ps_zreq_free(requester(zctx, c, 1, 0)); /* one closed before it was ever used */
        ps_zreq_t *z = requester(zctx, c, 1, 0);
        Persrv__Envelope *env = NULL;
        ps_err err = {0, ""};
        uint64_t rid = 0;
        assert_int_equal(ps_zreq_send(z, f.b, f.n, 50, &rid, &err), 0);
        assert_int_equal(poll_step(z, &env, &err), PS_ZREQ_REFUSED);
        assert_null(env);
        assert_int_equal(ps_zreq_reopen(z, 0, &err), 0); /* a reopen, then the same again */
        assert_int_equal(ps_zreq_send(z, f.b, f.n, 50, &rid, &err), 0);
        assert_int_equal(poll_step(z, &env, &err), PS_ZREQ_REFUSED);
        ps_zreq_free(z);
    }
    free(f.b);
    zmq_ctx_term(zctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_stale_dropped),
        cmocka_unit_test(test_timeout_reopen_retry),
        cmocka_unit_test(test_timeout_every_attempt),
        cmocka_unit_test(test_failover),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_junk_reply),
        cmocka_unit_test(test_stop_flag),
        cmocka_unit_test(test_bad_endpoints),
        cmocka_unit_test(test_pieces),
        cmocka_unit_test(test_refused_after_close),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
