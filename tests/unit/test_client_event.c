/*
 * test_client_event.c — libpersrv's libevent adapter (client/include/persrv_event.h) against a
 * fake front door: a ROUTER socket on tcp://127.0.0.1:<any port>, served from a thread, as in
 * test_client.c. The fake answers by the query text, so one server serves every scenario:
 *
 *   "silent"        never answered (held: "late" answers it later)
 *   "late"          first the held "silent" request gets an answer (hit 999), then this one
 *   "rev"           held until three have come, then answered last first
 *   "error:<code>"  an Error with that code
 *   anything else   answered at once
 *
 * A normal answer's first hit is 100 × k of the query, its second hit 42, so a test can tell
 * which answer went to which request. Covered: three searches in flight answered in reverse
 * order, a timeout beside a search that succeeds, a late answer dropped, Error replies mapped,
 * persrv_async_free with requests pending (from outside and from a callback), invalid
 * arguments. The loop runs until the expected number of callbacks came; a guard timer only
 * keeps a broken build from hanging (it fails the test). No timing is asserted.
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
#include <zmq.h>

#include "persrv.h"
#include "persrv_event.h"
#include "ps/wire.h"

#define LONG_MS  3000 /* a timeout no loopback answer misses */
#define SHORT_MS 1000 /* for the request that is meant to time out */
#define GUARD_S  20   /* the loop gives up (and the test fails) after this */

/* ---- the fake front door ---------------------------------------------------------------- */

/* cmocka's asserts must not fire on the server thread (they longjmp into the test's stack) */
#define SRV_CHECK(c)                                                                               \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fake front door: %s failed (line %d)\n", #c, __LINE__);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

typedef struct peer {
    uint8_t ident[256];
    size_t ident_len;
    uint64_t rid;
    uint32_t k;
} peer;

typedef struct fake {
    void *zctx, *router;
    char endpoint[64];
    pthread_t th;
    atomic_int stop;
    pthread_mutex_t mu; /* guards everything below */
    int nreq;           /* requests received */
    peer held;          /* the last "silent" request */
    int have_held;
    peer rev[3]; /* "rev" requests waiting */
    int nrev;
} fake;

static void send_env(fake *f, const peer *p, Persrv__Envelope *e)
{
    uint8_t *buf;
    size_t len;
    ps_err err;
    SRV_CHECK(ps_wire_pack(e, &buf, &len, &err) == 0);
    zmq_send(f->router, p->ident, p->ident_len, ZMQ_SNDMORE);
    zmq_send(f->router, buf, len, 0);
    free(buf);
}

static void send_error(fake *f, const peer *p, const char *code)
{
    Persrv__Error er = PERSRV__ERROR__INIT;
    Persrv__Envelope e = PERSRV__ENVELOPE__INIT;
    er.code = (char *)code;
    er.message = "scripted failure";
    e.version = PS_WIRE_VERSION;
    e.request_id = p->rid;
    e.body_case = PERSRV__ENVELOPE__BODY_ERROR;
    e.error = &er;
    send_env(f, p, &e);
}

/* A query_reply with hits {first_id, 42}, snapshot version 77, 2 shards. */
static void send_reply(fake *f, const peer *p, uint64_t first_id)
{
    Persrv__Hit h[2] = {PERSRV__HIT__INIT, PERSRV__HIT__INIT}, *hp[2] = {&h[0], &h[1]};
    Persrv__QueryReply r = PERSRV__QUERY_REPLY__INIT;
    Persrv__Envelope e = PERSRV__ENVELOPE__INIT;
    h[0].id = first_id;
    h[0].score = h[0].recall = h[0].relevance = 2.5;
    h[0].centroid = -1;
    h[1].id = 42;
    h[1].score = h[1].recall = h[1].relevance = 1.0;
    h[1].centroid = -1;
    r.n_hits = 2;
    r.hits = hp;
    r.snapshot_version = 77;
    r.shards_total = 2;
    e.version = PS_WIRE_VERSION;
    e.request_id = p->rid;
    e.body_case = PERSRV__ENVELOPE__BODY_QUERY_REPLY;
    e.query_reply = &r;
    send_env(f, p, &e);
}

/* One request: [identity][payload]. */
static void serve_one(fake *f)
{
    zmq_msg_t id, body;
    zmq_msg_init(&id);
    zmq_msg_init(&body);
    if (zmq_msg_recv(&id, f->router, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&id);
        zmq_msg_close(&body);
        return;
    }
    SRV_CHECK(zmq_msg_more(&id));
    SRV_CHECK(zmq_msg_recv(&body, f->router, 0) >= 0);
    SRV_CHECK(!zmq_msg_more(&body)); /* one frame, no empty delimiter */
    Persrv__Envelope *in = NULL;
    ps_err err;
    SRV_CHECK(ps_wire_decode(zmq_msg_data(&body), zmq_msg_size(&body), 0, &in, &err) == 0);
    SRV_CHECK(in->body_case == PERSRV__ENVELOPE__BODY_QUERY);
    SRV_CHECK(in->request_id != 0);

    peer p = {.rid = in->request_id, .k = in->query->k};
    p.ident_len = zmq_msg_size(&id) < sizeof p.ident ? zmq_msg_size(&id) : sizeof p.ident;
    memcpy(p.ident, zmq_msg_data(&id), p.ident_len);
    const char *q = in->query->q;

    pthread_mutex_lock(&f->mu);
    f->nreq++;
    if (strcmp(q, "silent") == 0) {
        f->held = p;
        f->have_held = 1;
    } else if (strcmp(q, "late") == 0) {
        SRV_CHECK(f->have_held);
        send_reply(f, &f->held, 999); /* ahead of this answer, on the same connection */
        f->have_held = 0;
        send_reply(f, &p, 100u * p.k);
    } else if (strcmp(q, "rev") == 0) {
        f->rev[f->nrev++] = p;
        if (f->nrev == 3) {
            for (int i = 2; i >= 0; i--) send_reply(f, &f->rev[i], 100u * f->rev[i].k);
            f->nrev = 0;
        }
    } else if (strncmp(q, "error:", 6) == 0) {
        send_error(f, &p, q + 6);
    } else {
        send_reply(f, &p, 100u * p.k);
    }
    pthread_mutex_unlock(&f->mu);
    ps_wire_free(in);
    zmq_msg_close(&id);
    zmq_msg_close(&body);
}

static void *serve(void *arg)
{
    fake *f = arg;
    for (;;) {
        zmq_pollitem_t it = {f->router, 0, ZMQ_POLLIN, 0};
        int n = zmq_poll(&it, 1, 20);
        if (n > 0) {
            serve_one(f);
            continue; /* drain before looking at stop */
        }
        if (atomic_load(&f->stop)) break;
    }
    return NULL;
}

static fake *fake_start(void)
{
    fake *f = calloc(1, sizeof *f);
    int zero = 0;
    size_t n;
    assert_non_null(f);
    pthread_mutex_init(&f->mu, NULL);
    assert_non_null(f->zctx = zmq_ctx_new());
    assert_non_null(f->router = zmq_socket(f->zctx, ZMQ_ROUTER));
    assert_int_equal(zmq_setsockopt(f->router, ZMQ_LINGER, &zero, sizeof zero), 0);
    assert_int_equal(zmq_bind(f->router, "tcp://127.0.0.1:*"), 0);
    n = sizeof f->endpoint;
    assert_int_equal(zmq_getsockopt(f->router, ZMQ_LAST_ENDPOINT, f->endpoint, &n), 0);
    assert_int_equal(pthread_create(&f->th, NULL, serve, f), 0);
    return f;
}

static int fake_nreq(fake *f)
{
    pthread_mutex_lock(&f->mu);
    int n = f->nreq;
    pthread_mutex_unlock(&f->mu);
    return n;
}

static void fake_stop(fake *f)
{
    atomic_store(&f->stop, 1);
    pthread_join(f->th, NULL);
    zmq_close(f->router);
    zmq_ctx_term(f->zctx);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

/* ---- the client side: a loop, callbacks that record what they got ------------------------ */

typedef struct loop {
    struct event_base *base;
    int ncalls;                 /* callbacks so far, all slots */
    int want;                   /* break the loop when ncalls reaches it */
    int guard_hit;              /* the guard timer fired */
    persrv_async_t *free_in_cb; /* a callback frees this context (then clears it) */
} loop;

typedef struct slot {
    loop *l;
    int calls;
    int order; /* ncalls when this one was called (1 = first) */
    int code;
    uint64_t first_id;
    size_t nhits;
    uint64_t version;
    char errstr[256];
} slot;

static void on_result(int code, persrv_result *r, const char *errstr, void *arg)
{
    slot *s = arg;
    loop *l = s->l;
    s->calls++;
    s->order = ++l->ncalls;
    s->code = code;
    snprintf(s->errstr, sizeof s->errstr, "%s", errstr ? errstr : "(null)");
    if (r) {
        s->nhits = r->nhits;
        s->first_id = r->nhits ? r->hits[0].id : 0;
        s->version = r->version;
        persrv_result_free(r);
    }
    if (l->free_in_cb) {
        persrv_async_t *a = l->free_in_cb;
        l->free_in_cb = NULL;
        persrv_async_free(a); /* the other requests are canceled from inside this callback */
    }
    if (l->ncalls >= l->want) event_base_loopbreak(l->base);
}

static void on_guard(evutil_socket_t fd, short what, void *arg)
{
    loop *l = arg;
    (void)fd;
    (void)what;
    l->guard_hit = 1;
    event_base_loopbreak(l->base);
}

/* Run the loop until `want` callbacks (in all) have come. */
static void run_until(loop *l, int want)
{
    struct timeval tv = {GUARD_S, 0};
    struct event *guard = evtimer_new(l->base, on_guard, l);
    assert_non_null(guard);
    evtimer_add(guard, &tv);
    l->want = want;
    if (l->ncalls < want) assert_int_equal(event_base_dispatch(l->base), 0);
    event_free(guard);
    assert_false(l->guard_hit);
    assert_int_equal(l->ncalls, want);
}

static persrv_async_t *async_fake(loop *l, const fake *f, uint32_t timeout_ms)
{
    persrv_options o;
    persrv_options_init(&o);
    o.timeout_ms = timeout_ms;
    persrv_async_t *a = persrv_async_new(l->base, f->endpoint, &o);
    assert_non_null(a);
    assert_int_equal(persrv_async_errcode(a), PERSRV_OK);
    assert_string_equal(persrv_async_errstr(a), "");
    return a;
}

static void loop_init(loop *l)
{
    memset(l, 0, sizeof *l);
    l->base = event_base_new();
    assert_non_null(l->base);
}

static persrv_query query(const char *text, uint32_t k)
{
    return (persrv_query){.text = text, .k = k};
}

/* ---- tests -------------------------------------------------------------------------------- */

/* Three searches in flight at once; the fake answers the third first. */
static void test_three_in_flight(void **state)
{
    (void)state;
    fake *f = fake_start();
    loop l;
    loop_init(&l);
    persrv_async_t *a = async_fake(&l, f, LONG_MS);
    slot s[3];
    memset(s, 0, sizeof s);
    for (int i = 0; i < 3; i++) {
        s[i].l = &l;
        persrv_query q = query("rev", (uint32_t)i + 1);
        assert_int_equal(persrv_search_async(a, &q, on_result, &s[i]), PERSRV_OK);
        assert_int_equal(s[i].calls, 0); /* never from inside persrv_search_async */
    }
    run_until(&l, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(s[i].calls, 1);
        assert_int_equal(s[i].code, PERSRV_OK);
        assert_string_equal(s[i].errstr, "");
        assert_int_equal(s[i].nhits, 2);
        assert_int_equal(s[i].first_id, 100 * (i + 1)); /* its own answer */
        assert_int_equal(s[i].version, 77);
        assert_int_equal(s[i].order, 3 - i); /* in the order the fake answered */
    }
    assert_int_equal(fake_nreq(f), 3);

    /* and the context goes on: one more round of three */
    memset(s, 0, sizeof s);
    for (int i = 0; i < 3; i++) {
        s[i].l = &l;
        persrv_query q = query("rev", (uint32_t)i + 4);
        assert_int_equal(persrv_search_async(a, &q, on_result, &s[i]), PERSRV_OK);
    }
    run_until(&l, 6);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(s[i].code, PERSRV_OK);
        assert_int_equal(s[i].first_id, 100 * (i + 4));
    }
    persrv_async_free(a);
    event_base_free(l.base);
    fake_stop(f);
}

/* A request the fake never answers times out while another one in flight succeeds; its late
 * answer, arriving later, is dropped. */
static void test_timeout_and_late_answer(void **state)
{
    (void)state;
    fake *f = fake_start();
    loop l;
    loop_init(&l);
    persrv_async_t *slow = async_fake(&l, f, SHORT_MS);
    slot s_silent = {.l = &l}, s_ok = {.l = &l}, s_late = {.l = &l};

    persrv_query q = query("silent", 1);
    assert_int_equal(persrv_search_async(slow, &q, on_result, &s_silent), PERSRV_OK);
    q = query("answered", 2);
    assert_int_equal(persrv_search_async(slow, &q, on_result, &s_ok), PERSRV_OK);
    run_until(&l, 2);
    assert_int_equal(s_ok.calls, 1);
    assert_int_equal(s_ok.code, PERSRV_OK);
    assert_int_equal(s_ok.first_id, 200);
    assert_int_equal(s_ok.order, 1); /* the answer came before the other's timeout */
    assert_int_equal(s_silent.calls, 1);
    assert_int_equal(s_silent.code, PERSRV_ETIMEDOUT);
    assert_int_equal(s_silent.order, 2);
    assert_true(persrv_retriable(s_silent.code));
    char want[64];
    snprintf(want, sizeof want, "within %d ms", SHORT_MS);
    assert_non_null(strstr(s_silent.errstr, want));
    assert_non_null(strstr(s_silent.errstr, f->endpoint));

    /* "late": the fake first answers the timed-out request (hit 999), then this one, on the
     * same connection, so the late answer is read first */
    q = query("late", 3);
    assert_int_equal(persrv_search_async(slow, &q, on_result, &s_late), PERSRV_OK);
    run_until(&l, 3);
    assert_int_equal(s_late.code, PERSRV_OK);
    assert_int_equal(s_late.first_id, 300); /* not the late answer's 999 */
    assert_int_equal(s_silent.calls, 1);    /* no second callback */
    assert_int_equal(s_ok.calls, 1);
    assert_int_equal(fake_nreq(f), 3);
    persrv_async_free(slow);
    assert_int_equal(s_silent.calls + s_ok.calls + s_late.calls, 3); /* nothing was pending */
    event_base_free(l.base);
    fake_stop(f);
}

/* Error replies map to their codes, each to its own request. */
static void test_error_reply(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int want;
    } cases[] = {
        {"error:unavailable", PERSRV_EUNAVAIL}, {"error:invalid_query", PERSRV_EINVAL},
        {"error:too_large", PERSRV_ETOOBIG},    {"error:internal", PERSRV_ESERVER},
        {"error:timed_out", PERSRV_ETIMEDOUT},  {"fine", PERSRV_OK},
    };
    enum { N = sizeof cases / sizeof cases[0] };
    fake *f = fake_start();
    loop l;
    loop_init(&l);
    persrv_async_t *a = async_fake(&l, f, LONG_MS);
    slot s[N];
    memset(s, 0, sizeof s);
    for (int i = 0; i < N; i++) {
        s[i].l = &l;
        persrv_query q = query(cases[i].text, 5);
        assert_int_equal(persrv_search_async(a, &q, on_result, &s[i]), PERSRV_OK);
    }
    run_until(&l, N);
    for (int i = 0; i < N; i++) {
        print_message("%s\n", cases[i].text);
        assert_int_equal(s[i].calls, 1);
        assert_int_equal(s[i].code, cases[i].want);
        if (cases[i].want == PERSRV_OK) {
            assert_int_equal(s[i].first_id, 500);
        } else {
            assert_int_equal(s[i].nhits, 0); /* no result with an error */
            assert_non_null(strstr(s[i].errstr, "broker: scripted failure"));
        }
    }
    persrv_async_free(a);
    event_base_free(l.base);
    fake_stop(f);
}

/* persrv_async_free cancels what is pending, before it returns; also from a callback. */
static void test_free_cancels(void **state)
{
    (void)state;
    fake *f = fake_start();
    loop l;
    loop_init(&l);
    persrv_async_t *a = async_fake(&l, f, LONG_MS);
    slot s1 = {.l = &l}, s2 = {.l = &l};

    persrv_query q = query("silent", 1);
    assert_int_equal(persrv_search_async(a, &q, on_result, &s1), PERSRV_OK);
    assert_int_equal(persrv_search_async(a, &q, on_result, &s2), PERSRV_OK);
    assert_int_equal(s1.calls + s2.calls, 0);
    persrv_async_free(a);
    assert_int_equal(s1.calls, 1);
    assert_int_equal(s1.code, PERSRV_ECANCELED);
    assert_int_equal(s2.calls, 1);
    assert_int_equal(s2.code, PERSRV_ECANCELED);
    assert_false(persrv_retriable(PERSRV_ECANCELED));
    assert_string_equal(persrv_errname(PERSRV_ECANCELED), "canceled");
    assert_string_equal(persrv_strerror(PERSRV_ECANCELED), "request canceled");
    assert_non_null(strstr(s1.errstr, "persrv_async_free"));

    /* from a callback: the first answer frees the context; the silent one is canceled */
    a = async_fake(&l, f, LONG_MS);
    slot s3 = {.l = &l}, s4 = {.l = &l};
    q = query("silent", 1);
    assert_int_equal(persrv_search_async(a, &q, on_result, &s3), PERSRV_OK);
    q = query("answered", 4);
    assert_int_equal(persrv_search_async(a, &q, on_result, &s4), PERSRV_OK);
    l.free_in_cb = a;
    run_until(&l, 4);
    assert_null(l.free_in_cb);
    assert_int_equal(s4.code, PERSRV_OK);
    assert_int_equal(s4.first_id, 400);
    assert_int_equal(s3.calls, 1);
    assert_int_equal(s3.code, PERSRV_ECANCELED);
    assert_true(s4.order < s3.order); /* canceled from inside s4's callback */
    persrv_async_free(NULL);
    event_base_free(l.base);
    fake_stop(f);
}

/* Invalid arguments are returned at once, and no callback ever comes for them. */
static void test_bad_arguments(void **state)
{
    (void)state;
    fake *f = fake_start();
    loop l;
    loop_init(&l);
    persrv_async_t *a = async_fake(&l, f, LONG_MS);
    slot bad = {.l = &l}, good = {.l = &l};
    persrv_query q = query("fine", 1);

    assert_int_equal(persrv_search_async(NULL, &q, on_result, &bad), PERSRV_EINVAL);
    assert_int_equal(persrv_search_async(a, NULL, on_result, &bad), PERSRV_EINVAL);
    assert_int_equal(persrv_async_errcode(a), PERSRV_EINVAL);
    assert_non_null(strstr(persrv_async_errstr(a), "q or cb"));
    assert_int_equal(persrv_search_async(a, &q, NULL, &bad), PERSRV_EINVAL);
    persrv_query nul = {.text = NULL};
    assert_int_equal(persrv_search_async(a, &nul, on_result, &bad), PERSRV_EINVAL);
    assert_non_null(strstr(persrv_async_errstr(a), "q->text"));
    nul.text = "a\0b";
    nul.len = 3; /* a NUL byte cannot be sent */
    assert_int_equal(persrv_search_async(a, &nul, on_result, &bad), PERSRV_EINVAL);
    assert_non_null(strstr(persrv_async_errstr(a), "query.q"));
    char *big = malloc(PS_WIRE_MAX_STRING + 2);
    assert_non_null(big);
    memset(big, 'x', PS_WIRE_MAX_STRING + 1);
    big[PS_WIRE_MAX_STRING + 1] = '\0';
    persrv_query huge = {.text = big};
    assert_int_equal(persrv_search_async(a, &huge, on_result, &bad), PERSRV_ETOOBIG);
    free(big);

    /* a valid one afterwards: it alone is answered, the others were never sent */
    assert_int_equal(persrv_search_async(a, &q, on_result, &good), PERSRV_OK);
    assert_int_equal(persrv_async_errcode(a), PERSRV_OK);
    assert_string_equal(persrv_async_errstr(a), "");
    run_until(&l, 1);
    assert_int_equal(good.code, PERSRV_OK);
    assert_int_equal(good.first_id, 100);
    assert_int_equal(bad.calls, 0);
    assert_int_equal(fake_nreq(f), 1);
    persrv_async_free(a);
    assert_int_equal(bad.calls, 0);

    /* contexts that carry a failed connect */
    a = persrv_async_new(NULL, f->endpoint, NULL);
    assert_non_null(a);
    assert_int_equal(persrv_async_errcode(a), PERSRV_EINVAL);
    assert_non_null(strstr(persrv_async_errstr(a), "base"));
    assert_int_equal(persrv_search_async(a, &q, on_result, &bad), PERSRV_EINVAL);
    persrv_async_free(a);
    a = persrv_async_new(l.base, NULL, NULL);
    assert_non_null(a);
    assert_int_equal(persrv_async_errcode(a), PERSRV_EINVAL);
    persrv_async_free(a);
    a = persrv_async_new(l.base, "not an endpoint", NULL);
    assert_non_null(a);
    assert_int_equal(persrv_async_errcode(a), PERSRV_ECONNECT);
    assert_non_null(strstr(persrv_async_errstr(a), "not an endpoint"));
    assert_int_equal(persrv_search_async(a, &q, on_result, &bad), PERSRV_ECONNECT);
    persrv_async_free(a);
    assert_int_equal(bad.calls, 0);
    assert_int_equal(persrv_async_errcode(NULL), PERSRV_EINVAL);
    assert_non_null(persrv_async_errstr(NULL));
    assert_int_equal(fake_nreq(f), 1);
    event_base_free(l.base);
    fake_stop(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_three_in_flight), cmocka_unit_test(test_timeout_and_late_answer),
        cmocka_unit_test(test_error_reply),     cmocka_unit_test(test_free_cancels),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
