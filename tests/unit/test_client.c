/*
 * test_client.c — libpersrv (client/include/persrv.h) against a fake front door: a ROUTER
 * socket on tcp://127.0.0.1:<any port>, served from a thread and scripted per test. Covered:
 * a search round trip (every number, the explain fields and the shard failures), each broker
 * Error mapped to its code and retriable flag (an Error with request_id 0 too), a broker that
 * never answers (PERSRV_ETIMEDOUT after 1 + retries attempts, each with a fresh request_id),
 * a late reply to a timed-out attempt and a reply with a wrong request_id both ignored,
 * malformed and unexpected replies (PERSRV_EPROTO), get_sticker found / not found, health, a
 * malformed endpoint (a context that carries the error) and NULL or invalid arguments.
 * Several brokers in one endpoint list: failover to the next after a timeout, staying there;
 * a refused connection (PERSRV_EREFUSED at once, also skipping to the next broker).
 * persrv_click: its reply, a generated click id, a caller's id, retries under the same click id
 * after outcome_unknown and after timeouts (PERSRV_EINDOUBT when none lands), definite
 * answers not retried, bad arguments never sent.
 * No timing is asserted: only which answer a call returns.
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

#include "persrv.h"
#include "ps/wire_engine.h"
#include "test_router.h"

#define TIMEOUT_MS 300 /* per attempt: long enough for loopback, short enough for the suite */

/* ---- the fake front door ---------------------------------------------------------------- */

enum mode {
    M_OK,         /* answer like a broker: query_reply, sticker_reply, health_reply */
    M_ERROR,      /* answer every request with Error err_code */
    M_ERROR_ID0,  /* Error err_code with request_id 0 (the broker could not read the id) */
    M_SILENT,     /* never answer */
    M_LATE,       /* leave the first request unanswered; answer it late, then the retry */
    M_WRONG_ID,   /* a reply with another request_id first, then the right one */
    M_MALFORMED,  /* bytes that are not an envelope */
    M_WRONG_BODY, /* a health_reply to anything */
    M_DOUBT_ONCE  /* Error outcome_unknown to the first request, then as M_OK */
};

#define MAX_SEEN 8

/* cmocka's asserts must not fire on the server thread (they longjmp into the test's stack) */
#define SRV_CHECK(c)                                                                               \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fake front door: %s failed (line %d)\n", #c, __LINE__);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)
#define SRV_EQ(a, b) SRV_CHECK((a) == (b))
#define SRV_FALSE(c) SRV_CHECK(!(c))

typedef struct fake {
    void *zctx, *router;
    char endpoint[64];
    pthread_t th;
    atomic_int stop;
    pthread_mutex_t mu; /* guards everything below */
    enum mode mode;
    const char *err_code;
    int nreq;
    uint64_t ids[MAX_SEEN];
    uint32_t deadlines[MAX_SEEN];
    uint8_t ident[MAX_SEEN][256];
    size_t ident_len[MAX_SEEN];
    char q[64], user[64];
    uint32_t k;
    int explain;
    char click_ids[MAX_SEEN][72]; /* the click id of each request ("" for other bodies) */
    char stored[72];              /* the click id the fake "stored" last (M_OK) */
    uint64_t sticker;
} fake;

static void send_to(fake *f, int who, const uint8_t *buf, size_t len)
{
    zmq_send(f->router, f->ident[who], f->ident_len[who], ZMQ_SNDMORE);
    zmq_send(f->router, buf, len, 0);
}

static void send_env(fake *f, int who, Persrv__Envelope *e)
{
    uint8_t *buf;
    size_t len;
    ps_err err;
    SRV_EQ(ps_wire_pack(e, &buf, &len, &err), 0);
    send_to(f, who, buf, len);
    free(buf);
}

static void send_error(fake *f, int who, uint64_t id, const char *code)
{
    Persrv__Error er = PERSRV__ERROR__INIT;
    Persrv__Envelope e = PERSRV__ENVELOPE__INIT;
    er.code = (char *)code;
    er.message = "scripted failure";
    e.version = PS_WIRE_VERSION;
    e.request_id = id;
    e.body_case = PERSRV__ENVELOPE__BODY_ERROR;
    e.error = &er;
    send_env(f, who, &e);
}

/* The scripted query_reply: hits[0].id = first_id, hits[1].id = 42; fields of hit 0 only
 * (hit 1's could not be fetched); shard 3 failed. */
static void send_query_reply(fake *f, int who, uint64_t id, uint64_t first_id, int explain)
{
    Persrv__Hit h[2] = {PERSRV__HIT__INIT, PERSRV__HIT__INIT}, *hp[2] = {&h[0], &h[1]};
    Persrv__GetStickerReply st[2] = {PERSRV__GET_STICKER_REPLY__INIT,
                                     PERSRV__GET_STICKER_REPLY__INIT},
                            *sp[2] = {&st[0], &st[1]};
    Persrv__ShardFailure fl = PERSRV__SHARD_FAILURE__INIT, *flp[1] = {&fl};
    Persrv__QueryReply r = PERSRV__QUERY_REPLY__INIT;
    Persrv__Envelope e = PERSRV__ENVELOPE__INIT;

    h[0].id = first_id;
    h[0].relevance = 2.5;
    h[0].utility = 0.75;
    h[0].recall = 3.25;
    h[0].preference = 1.5;
    h[0].score = 4.875;
    h[0].centroid = 2;
    h[1].id = 42;
    h[1].relevance = h[1].recall = h[1].score = 1.0;
    h[1].preference = 1.0;
    h[1].centroid = -1;
    st[0].found = 1;
    st[0].id = first_id;
    st[0].ocr = "好累";
    st[0].queries = "so tired";
    st[0].keywords = "cat";
    st[0].desc = "a cat lying flat 😭";
    st[0].emotion = "exhausted";
    st[0].utility = 0.75;
    st[1].id = 42;
    fl.shard = 3;
    fl.reason = "timed_out";
    r.n_hits = 2;
    r.hits = hp;
    r.n_fields = explain ? 2 : 0;
    r.fields = sp;
    r.partial = 1;
    r.timed_out = 1;
    r.personalized = 1;
    r.snapshot_version = 9000000000ull;
    r.shards_total = 4;
    r.n_failures = 1;
    r.failures = flp;
    r.took_us = 1234;
    e.version = PS_WIRE_VERSION;
    e.request_id = id;
    e.body_case = PERSRV__ENVELOPE__BODY_QUERY_REPLY;
    e.query_reply = &r;
    send_env(f, who, &e);
}

static void answer_ok(fake *f, int who, const Persrv__Envelope *in)
{
    uint8_t *buf;
    size_t len;
    ps_err err;
    if (in->body_case == PERSRV__ENVELOPE__BODY_QUERY) {
        send_query_reply(f, who, in->request_id, 7, in->query->explain);
    } else if (in->body_case == PERSRV__ENVELOPE__BODY_CLICK) {
        /* a primary's way: a click id stored before is a duplicate */
        Persrv__ClickReply r = PERSRV__CLICK_REPLY__INIT;
        Persrv__Envelope e = PERSRV__ENVELOPE__INIT;
        r.seq = 77;
        r.history = 3;
        r.centroids = 2;
        r.duplicate = !strcmp(f->stored, in->click->click_id);
        r.click_id = in->click->click_id;
        snprintf(f->stored, sizeof f->stored, "%s", in->click->click_id);
        e.version = PS_WIRE_VERSION;
        e.request_id = in->request_id;
        e.body_case = PERSRV__ENVELOPE__BODY_CLICK_REPLY;
        e.click_reply = &r;
        send_env(f, who, &e);
    } else if (in->body_case == PERSRV__ENVELOPE__BODY_GET_STICKER) {
        uint64_t id = in->get_sticker->id;
        if (id == 7) { /* the broker's way: Error not_found */
            send_error(f, who, in->request_id, "not_found");
            return;
        }
        char ocr[] = "好累";
        ps_sticker_rec rec = {.id = id, .field = {ocr}, .field_len = {strlen(ocr)}};
        SRV_EQ(ps_wire_encode_sticker_reply(in->request_id, 0, id, id == 5 ? &rec : NULL, 0.5, &buf,
                                            &len, &err),
               0);
        send_to(f, who, buf, len);
        free(buf);
    } else {
        ps_wire_health h = {.nshards = 4, .shards_up = 3, .ready = 0};
        SRV_EQ(ps_wire_encode_health_reply(in->request_id, &h, &buf, &len, &err), 0);
        send_to(f, who, buf, len);
        free(buf);
    }
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
    SRV_FALSE(zmq_msg_more(&body)); /* one frame, no empty delimiter */
    Persrv__Envelope *in = NULL;
    ps_err err;
    int rc = ps_wire_decode(zmq_msg_data(&body), zmq_msg_size(&body), 0, &in, &err);

    pthread_mutex_lock(&f->mu);
    int n = f->nreq++;
    int who = n < MAX_SEEN ? n : MAX_SEEN - 1;
    f->ident_len[who] = zmq_msg_size(&id) < 256 ? zmq_msg_size(&id) : 256;
    memcpy(f->ident[who], zmq_msg_data(&id), f->ident_len[who]);
    if (rc == 0) {
        f->ids[who] = in->request_id;
        f->deadlines[who] = in->deadline_ms;
        f->click_ids[who][0] = '\0';
        if (in->body_case == PERSRV__ENVELOPE__BODY_CLICK) {
            snprintf(f->click_ids[who], sizeof f->click_ids[who], "%s", in->click->click_id);
            snprintf(f->user, sizeof f->user, "%s", in->click->user);
            snprintf(f->q, sizeof f->q, "%s", in->click->query);
            f->sticker = in->click->sticker_id;
        }
        if (in->body_case == PERSRV__ENVELOPE__BODY_QUERY) {
            snprintf(f->q, sizeof f->q, "%s", in->query->q);
            snprintf(f->user, sizeof f->user, "%s", in->query->user);
            f->k = in->query->k;
            f->explain = in->query->explain;
        }
    }
    uint64_t rid = rc == 0 ? in->request_id : 0;
    switch (rc ? M_ERROR_ID0 : f->mode) {
    case M_OK:
        answer_ok(f, who, in);
        break;
    case M_DOUBT_ONCE:
        if (n == 0) {
            /* the broker's in-doubt answer, but the click did reach the primary */
            snprintf(f->stored, sizeof f->stored, "%s", f->click_ids[who]);
            send_error(f, who, rid, "outcome_unknown");
        } else {
            answer_ok(f, who, in);
        }
        break;
    case M_ERROR:
        send_error(f, who, rid, f->err_code);
        break;
    case M_ERROR_ID0:
        send_error(f, who, 0, rc ? ps_errname(rc) : f->err_code);
        break;
    case M_SILENT:
        break;
    case M_LATE:
        if (n == 0) break; /* the client gives up on this one */
        /* the late answer to attempt 1, to the closed socket and to the new one */
        send_query_reply(f, 0, f->ids[0], 111, 0);
        send_query_reply(f, who, f->ids[0], 111, 0);
        send_query_reply(f, who, rid, 222, 0);
        break;
    case M_WRONG_ID:
        send_query_reply(f, who, rid + 1, 111, 0);
        send_query_reply(f, who, rid, 222, 0);
        break;
    case M_MALFORMED: {
        static const uint8_t junk[] = {0xff, 0xff, 0xff, 0x01};
        send_to(f, who, junk, sizeof junk);
        break;
    }
    case M_WRONG_BODY: {
        uint8_t *buf;
        size_t len;
        ps_wire_health h = {.nshards = 1};
        SRV_EQ(ps_wire_encode_health_reply(rid, &h, &buf, &len, &err), 0);
        send_to(f, who, buf, len);
        free(buf);
        break;
    }
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

static fake *fake_start(enum mode mode)
{
    fake *f = calloc(1, sizeof *f);
    int zero = 0;
    size_t n;
    assert_non_null(f);
    pthread_mutex_init(&f->mu, NULL);
    f->mode = mode;
    f->err_code = "internal";
    assert_non_null(f->zctx = zmq_ctx_new());
    assert_non_null(f->router = zmq_socket(f->zctx, ZMQ_ROUTER));
    assert_int_equal(zmq_setsockopt(f->router, ZMQ_LINGER, &zero, sizeof zero), 0);
    assert_int_equal(zmq_bind(f->router, "tcp://127.0.0.1:*"), 0);
    n = sizeof f->endpoint;
    assert_int_equal(zmq_getsockopt(f->router, ZMQ_LAST_ENDPOINT, f->endpoint, &n), 0);
    assert_int_equal(pthread_create(&f->th, NULL, serve, f), 0);
    return f;
}

static void fake_set(fake *f, enum mode mode, const char *err_code)
{
    pthread_mutex_lock(&f->mu);
    f->mode = mode;
    if (err_code) f->err_code = err_code;
    pthread_mutex_unlock(&f->mu);
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

static persrv_t *connect_fake(const fake *f)
{
    persrv_options o;
    persrv_options_init(&o);
    o.timeout_ms = TIMEOUT_MS;
    o.retries = 1;
    persrv_t *c = persrv_connect(f->endpoint, &o);
    assert_non_null(c);
    assert_int_equal(persrv_errcode(c), PERSRV_OK);
    assert_string_equal(persrv_errstr(c), "");
    return c;
}

static const persrv_query tired = {.text = "so tired", .user = "u01", .k = 2, .explain = 1};

/* ---- tests -------------------------------------------------------------------------------- */

static void test_search_round_trip(void **state)
{
    (void)state;
    fake *f = fake_start(M_OK);
    persrv_t *c = connect_fake(f);
    persrv_result *r = NULL;

    assert_int_equal(persrv_search(c, &tired, &r), PERSRV_OK);
    assert_non_null(r);
    assert_int_equal(r->nhits, 2);
    const persrv_hit *h = &r->hits[0];
    assert_true(h->id == 7);
    assert_true(h->relevance == 2.5 && h->utility == 0.75 && h->recall == 3.25);
    assert_true(h->preference == 1.5 && h->score == 4.875);
    assert_int_equal(h->centroid, 2);
    assert_non_null(h->fields);
    assert_true(h->fields->id == 7);
    assert_string_equal(h->fields->ocr, "好累");
    assert_string_equal(h->fields->queries, "so tired");
    assert_string_equal(h->fields->keywords, "cat");
    assert_string_equal(h->fields->desc, "a cat lying flat 😭");
    assert_string_equal(h->fields->emotion, "exhausted");
    assert_true(h->fields->utility == 0.75);
    assert_true(r->hits[1].id == 42);
    assert_int_equal(r->hits[1].centroid, -1);
    assert_null(r->hits[1].fields); /* the broker could not fetch them */
    assert_true(r->partial && r->timed_out && r->personalized);
    assert_true(r->version == 9000000000ull);
    assert_int_equal(r->shards_total, 4);
    assert_int_equal(r->nfailures, 1);
    assert_int_equal(r->failures[0].shard, 3);
    assert_string_equal(r->failures[0].reason, "timed_out");
    assert_int_equal(r->took_us, 1234);
    persrv_result_free(r);

    /* what the broker saw */
    pthread_mutex_lock(&f->mu);
    assert_string_equal(f->q, "so tired");
    assert_string_equal(f->user, "u01");
    assert_int_equal(f->k, 2);
    assert_true(f->explain);
    assert_int_equal(f->deadlines[0], TIMEOUT_MS);
    pthread_mutex_unlock(&f->mu);

    /* without explain there are no fields; len cuts the text */
    persrv_query q = {.text = "hello world", .len = 5};
    assert_int_equal(persrv_search(c, &q, &r), PERSRV_OK);
    assert_null(r->hits[0].fields);
    persrv_result_free(r);
    pthread_mutex_lock(&f->mu);
    assert_string_equal(f->q, "hello");
    assert_string_equal(f->user, "");
    assert_false(f->explain);
    assert_true(f->ids[0] != f->ids[1]);
    pthread_mutex_unlock(&f->mu);

    persrv_close(c);
    fake_stop(f);
}

static void test_errors_mapped(void **state)
{
    (void)state;
    static const struct {
        const char *code;
        int want, retriable;
    } cases[] = {
        {"invalid_query", PERSRV_EINVAL, 0},    {"invalid_utf8", PERSRV_EINVAL, 0},
        {"invalid_argument", PERSRV_EINVAL, 0}, {"too_large", PERSRV_ETOOBIG, 0},
        {"not_found", PERSRV_ENOTFOUND, 0},     {"unavailable", PERSRV_EUNAVAIL, 1},
        {"timed_out", PERSRV_ETIMEDOUT, 1},     {"parse_error", PERSRV_EPROTO, 0},
        {"internal", PERSRV_ESERVER, 0},        {"from_the_future", PERSRV_ESERVER, 0},
    };
    fake *f = fake_start(M_ERROR);
    persrv_t *c = connect_fake(f);
    persrv_result *r = (persrv_result *)1;

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        print_message("broker error %s\n", cases[i].code);
        fake_set(f, i % 2 ? M_ERROR_ID0 : M_ERROR, cases[i].code);
        int rc = persrv_search(c, &tired, &r);
        assert_int_equal(rc, cases[i].want);
        assert_int_equal(persrv_errcode(c), cases[i].want);
        assert_int_equal(persrv_retriable(rc), cases[i].retriable);
        assert_null(r);
        assert_string_equal(persrv_errname_last(c), cases[i].code);
        assert_non_null(strstr(persrv_errstr(c), "scripted failure"));
    }
    /* an answer is final: no retry after an Error */
    assert_int_equal(fake_nreq(f), (int)(sizeof cases / sizeof cases[0]));

    /* the next success clears the error */
    fake_set(f, M_OK, NULL);
    assert_int_equal(persrv_search(c, &tired, &r), PERSRV_OK);
    assert_int_equal(persrv_errcode(c), PERSRV_OK);
    assert_string_equal(persrv_errstr(c), "");
    assert_string_equal(persrv_errname_last(c), "ok");
    persrv_result_free(r);
    persrv_close(c);
    fake_stop(f);
}

static void test_timeout(void **state)
{
    (void)state;
    fake *f = fake_start(M_SILENT);
    persrv_t *c = connect_fake(f);
    persrv_result *r = (persrv_result *)1;

    assert_int_equal(persrv_search(c, &tired, &r), PERSRV_ETIMEDOUT);
    assert_null(r);
    assert_true(persrv_retriable(persrv_errcode(c)));
    assert_non_null(strstr(persrv_errstr(c), "2 attempts"));
    assert_int_equal(fake_nreq(f), 2); /* 1 + retries */
    pthread_mutex_lock(&f->mu);
    assert_true(f->ids[0] != f->ids[1]); /* each attempt its own request_id */
    pthread_mutex_unlock(&f->mu);

    /* the context is still good once the broker answers */
    fake_set(f, M_OK, NULL);
    assert_int_equal(persrv_search(c, &tired, &r), PERSRV_OK);
    persrv_result_free(r);

    /* no retries: one attempt */
    fake_set(f, M_SILENT, NULL);
    persrv_options o = {.timeout_ms = TIMEOUT_MS, .retries = 0};
    persrv_t *c1 = persrv_connect(f->endpoint, &o);
    assert_non_null(c1);
    int before = fake_nreq(f);
    assert_int_equal(persrv_health(c1, &(persrv_health_info){0}), PERSRV_ETIMEDOUT);
    assert_int_equal(fake_nreq(f), before + 1);
    persrv_close(c1);
    persrv_close(c);
    fake_stop(f);
}

/* The first attempt times out; its answer arrives after the retry was sent. The call must
 * return the retry's answer (hit 222), never the late one (hit 111). */
static void test_late_reply_not_taken(void **state)
{
    (void)state;
    fake *f = fake_start(M_LATE);
    persrv_t *c = connect_fake(f);
    persrv_result *r = NULL;
    assert_int_equal(persrv_search(c, &tired, &r), PERSRV_OK);
    assert_int_equal(r->nhits, 2);
    assert_true(r->hits[0].id == 222);
    assert_int_equal(fake_nreq(f), 2);
    persrv_result_free(r);
    persrv_close(c);
    fake_stop(f);
}

static void test_wrong_id_ignored(void **state)
{
    (void)state;
    fake *f = fake_start(M_WRONG_ID);
    persrv_t *c = connect_fake(f);
    persrv_result *r = NULL;
    assert_int_equal(persrv_search(c, &tired, &r), PERSRV_OK);
    assert_true(r->hits[0].id == 222);
    assert_int_equal(fake_nreq(f), 1); /* taken in the first attempt */
    persrv_result_free(r);
    persrv_close(c);
    fake_stop(f);
}

static void test_malformed_reply(void **state)
{
    (void)state;
    fake *f = fake_start(M_MALFORMED);
    persrv_t *c = connect_fake(f);
    persrv_result *r = (persrv_result *)1;
    persrv_health_info h;

    assert_int_equal(persrv_search(c, &tired, &r), PERSRV_EPROTO);
    assert_null(r);
    assert_false(persrv_retriable(PERSRV_EPROTO));
    assert_non_null(strstr(persrv_errstr(c), "reply"));

    fake_set(f, M_WRONG_BODY, NULL);
    assert_int_equal(persrv_search(c, &tired, &r), PERSRV_EPROTO);
    assert_non_null(strstr(persrv_errstr(c), "health_reply where query_reply belongs"));
    assert_int_equal(persrv_health(c, &h), PERSRV_OK); /* the right body for health */
    assert_int_equal(h.nshards, 1);

    /* and the context recovers */
    fake_set(f, M_OK, NULL);
    assert_int_equal(persrv_search(c, &tired, &r), PERSRV_OK);
    persrv_result_free(r);
    persrv_close(c);
    fake_stop(f);
}

static void test_sticker_and_health(void **state)
{
    (void)state;
    fake *f = fake_start(M_OK);
    persrv_t *c = connect_fake(f);
    persrv_sticker *s = (persrv_sticker *)1;
    persrv_health_info h;

    assert_int_equal(persrv_get_sticker(c, 5, &s), PERSRV_OK);
    assert_true(s->id == 5);
    assert_string_equal(s->ocr, "好累");
    assert_string_equal(s->queries, "");
    assert_string_equal(s->emotion, "");
    assert_true(s->utility == 0.5);
    persrv_sticker_free(s);

    s = (persrv_sticker *)1;
    assert_int_equal(persrv_get_sticker(c, 6, &s), PERSRV_ENOTFOUND); /* found = false */
    assert_null(s);
    assert_non_null(strstr(persrv_errstr(c), "sticker 6"));
    assert_false(persrv_retriable(PERSRV_ENOTFOUND));
    assert_int_equal(persrv_get_sticker(c, 7, &s), PERSRV_ENOTFOUND); /* Error not_found */
    assert_string_equal(persrv_errname_last(c), "not_found");

    assert_int_equal(persrv_health(c, &h), PERSRV_OK);
    assert_int_equal(h.nshards, 4);
    assert_int_equal(h.shards_up, 3);
    assert_false(h.ready);
    persrv_close(c);
    fake_stop(f);
}

static void test_bad_endpoint(void **state)
{
    (void)state;
    persrv_result *r = (persrv_result *)1;
    persrv_t *c = persrv_connect("not an endpoint", NULL);
    assert_non_null(c);
    assert_int_equal(persrv_errcode(c), PERSRV_ECONNECT);
    assert_non_null(strstr(persrv_errstr(c), "not an endpoint"));
    /* calls fail the same way, without waiting */
    assert_int_equal(persrv_search(c, &tired, &r), PERSRV_ECONNECT);
    assert_null(r);
    persrv_close(c);

    c = persrv_connect("nosuchtransport://x", NULL);
    assert_non_null(c);
    assert_int_equal(persrv_errcode(c), PERSRV_ECONNECT);
    persrv_close(c);

    c = persrv_connect(NULL, NULL);
    assert_non_null(c);
    assert_int_equal(persrv_errcode(c), PERSRV_EINVAL);
    persrv_close(c);
}

/* Several brokers: the first never answers, so the retry goes to the second, and the next
 * call starts there; an empty element in the list is refused. */
static void test_failover_endpoints(void **state)
{
    (void)state;
    fake *a = fake_start(M_SILENT), *b = fake_start(M_OK);
    char list[160];
    snprintf(list, sizeof list, "%s,%s", a->endpoint, b->endpoint);
    persrv_options o = {.timeout_ms = TIMEOUT_MS, .retries = 1};
    persrv_t *c = persrv_connect(list, &o);
    persrv_result *r = NULL;
    assert_non_null(c);
    assert_int_equal(persrv_errcode(c), PERSRV_OK);
    assert_int_equal(persrv_search(c, &tired, &r), PERSRV_OK);
    assert_true(r->hits[0].id == 7);
    persrv_result_free(r);
    assert_int_equal(fake_nreq(a), 1);
    assert_int_equal(fake_nreq(b), 1);
    assert_int_equal(persrv_health(c, &(persrv_health_info){0}), PERSRV_OK);
    assert_int_equal(fake_nreq(a), 1); /* stayed on the broker that answered */
    assert_int_equal(fake_nreq(b), 2);

    /* both silent: the call times out having asked each once */
    fake_set(b, M_SILENT, NULL);
    assert_int_equal(persrv_search(c, &tired, &r), PERSRV_ETIMEDOUT);
    assert_int_equal(fake_nreq(a), 2);
    assert_int_equal(fake_nreq(b), 3);
    persrv_close(c);

    snprintf(list, sizeof list, "%s,,%s", a->endpoint, b->endpoint);
    c = persrv_connect(list, &o);
    assert_non_null(c);
    assert_int_equal(persrv_errcode(c), PERSRV_EINVAL);
    assert_non_null(strstr(persrv_errstr(c), "empty endpoint"));
    persrv_close(c);
    fake_stop(a);
    fake_stop(b);
}

/* Nobody listens: PERSRV_EREFUSED at once (well before the 10 s timeout), retriable; a refused
 * broker of a list is skipped for the next without using up an attempt. */
static void test_refused(void **state)
{
    (void)state;
    fake *f = fake_start(M_OK);
    char closed[64], list[160];
    test_closed_endpoint(closed, sizeof closed);
    persrv_options o = {.timeout_ms = 10000, .retries = 2};
    persrv_t *c = persrv_connect(closed, &o);
    persrv_result *r = (persrv_result *)1;
    assert_non_null(c);
    assert_int_equal(persrv_errcode(c), PERSRV_OK); /* connecting is asynchronous */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(persrv_search(c, &tired, &r), PERSRV_EREFUSED);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_true(t1.tv_sec - t0.tv_sec < 10); /* sanity only: not the timeout */
    assert_null(r);
    assert_non_null(strstr(persrv_errstr(c), "connection refused"));
    assert_string_equal(persrv_errname_last(c), "connection_refused");
    assert_true(persrv_retriable(PERSRV_EREFUSED));
    persrv_click_info ci;
    assert_int_equal(persrv_click(c, "u01", 5, "q", NULL, &ci), PERSRV_EREFUSED);
    assert_int_equal(ci.attempts, 1); /* not sent: nothing in doubt */
    persrv_close(c);

    snprintf(list, sizeof list, "%s,%s", closed, f->endpoint);
    o.retries = 0;
    c = persrv_connect(list, &o);
    assert_non_null(c);
    assert_int_equal(persrv_search(c, &tired, &r), PERSRV_OK);
    assert_true(r->hits[0].id == 7);
    persrv_result_free(r);
    assert_int_equal(fake_nreq(f), 1);
    persrv_close(c);
    fake_stop(f);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    fake *f = fake_start(M_OK);
    persrv_t *c = connect_fake(f);
    persrv_result *r = (persrv_result *)1;
    persrv_sticker *s = (persrv_sticker *)1;

    assert_int_equal(persrv_search(NULL, &tired, &r), PERSRV_EINVAL);
    assert_null(r);
    assert_int_equal(persrv_search(c, NULL, &r), PERSRV_EINVAL);
    assert_int_equal(persrv_errcode(c), PERSRV_EINVAL);
    assert_int_equal(persrv_search(c, &tired, NULL), PERSRV_EINVAL);
    persrv_query q = {.k = 1};
    assert_int_equal(persrv_search(c, &q, &r), PERSRV_EINVAL);
    q.text = "a\0b";
    q.len = 3; /* a NUL byte cannot be sent */
    assert_int_equal(persrv_search(c, &q, &r), PERSRV_EINVAL);
    assert_non_null(strstr(persrv_errstr(c), "query.q"));
    assert_null(r);
    assert_int_equal(persrv_get_sticker(NULL, 1, &s), PERSRV_EINVAL);
    assert_null(s);
    assert_int_equal(persrv_get_sticker(c, 1, NULL), PERSRV_EINVAL);
    assert_int_equal(persrv_health(c, NULL), PERSRV_EINVAL);
    assert_int_equal(persrv_health(NULL, NULL), PERSRV_EINVAL);
    assert_int_equal(persrv_set_timeout(NULL, 5), PERSRV_EINVAL);
    assert_int_equal(fake_nreq(f), 0); /* nothing was sent */

    assert_int_equal(persrv_errcode(NULL), PERSRV_EINVAL);
    assert_string_equal(persrv_errname(PERSRV_ETIMEDOUT), "timed_out");
    assert_string_equal(persrv_errname(PERSRV_OK), "ok");
    assert_string_equal(persrv_errname(12345), "unknown");
    assert_string_equal(persrv_strerror(PERSRV_ENOTFOUND), "not found");
    assert_string_equal(persrv_strerror(-999), "unknown error");
    assert_true(persrv_retriable(PERSRV_EUNAVAIL));
    assert_false(persrv_retriable(PERSRV_EINVAL));
    assert_false(persrv_retriable(PERSRV_ETOOBIG));
    assert_false(persrv_retriable(PERSRV_OK));
    persrv_result_free(NULL);
    persrv_sticker_free(NULL);
    persrv_close(NULL);
    persrv_close(c);
    fake_stop(f);
}

/* persrv_click: the reply's numbers; a generated click id (32 hex digits, new per call) that
 * the broker sees; the caller's id sent as it is and a repeat answered duplicate. */
static void test_click_round_trip(void **state)
{
    (void)state;
    fake *f = fake_start(M_OK);
    persrv_t *c = connect_fake(f);
    persrv_click_info a, b;

    assert_int_equal(persrv_click(c, "u01", 4397462724807453333ull, "好累", NULL, &a), PERSRV_OK);
    assert_int_equal(strlen(a.click_id), 32);
    assert_int_equal(strspn(a.click_id, "0123456789abcdef"), 32);
    assert_true(a.seq == 77 && a.history == 3 && a.centroids == 2);
    assert_false(a.duplicate);
    assert_int_equal(a.attempts, 1);
    pthread_mutex_lock(&f->mu);
    assert_string_equal(f->click_ids[0], a.click_id);
    assert_string_equal(f->user, "u01");
    assert_string_equal(f->q, "好累");
    assert_true(f->sticker == 4397462724807453333ull);
    pthread_mutex_unlock(&f->mu);

    assert_int_equal(persrv_click(c, "u01", 1, NULL, NULL, &b), PERSRV_OK);
    assert_string_not_equal(a.click_id, b.click_id);
    assert_false(b.duplicate);

    /* the caller's id; the same call again is a duplicate (stored once) */
    assert_int_equal(persrv_click(c, "u01", 1, "", "msg-42", &a), PERSRV_OK);
    assert_string_equal(a.click_id, "msg-42");
    assert_false(a.duplicate);
    assert_int_equal(persrv_click(c, "u01", 1, "", "msg-42", &a), PERSRV_OK);
    assert_true(a.duplicate);
    assert_int_equal(persrv_errcode(c), PERSRV_OK);
    persrv_close(c);
    fake_stop(f);
}

/* The outcome unknown: the broker's outcome_unknown and a timeout are both retried with the
 * same click id (a fresh request_id each); the retry that lands is a duplicate. When every
 * attempt ends that way the call returns PERSRV_EINDOUBT with the id to retry with later. */
static void test_click_retried_in_doubt(void **state)
{
    (void)state;
    persrv_click_info a;
    fake *f = fake_start(M_DOUBT_ONCE);
    persrv_t *c = connect_fake(f);
    assert_int_equal(persrv_click(c, "u01", 9, "q", "msg-7", &a), PERSRV_OK);
    assert_int_equal(a.attempts, 2);
    assert_true(a.duplicate); /* the first attempt stored it: the retry stored nothing */
    assert_int_equal(persrv_errcode(c), PERSRV_OK);
    assert_string_equal(persrv_errname_last(c), "ok");
    assert_int_equal(fake_nreq(f), 2);
    pthread_mutex_lock(&f->mu);
    assert_string_equal(f->click_ids[0], "msg-7");
    assert_string_equal(f->click_ids[1], "msg-7");
    assert_true(f->ids[0] != f->ids[1]);
    pthread_mutex_unlock(&f->mu);

    /* every answer outcome_unknown: 1 + retries requests, PERSRV_EINDOUBT, the id kept */
    fake_set(f, M_ERROR, "outcome_unknown");
    int before = fake_nreq(f);
    assert_int_equal(persrv_click(c, "u01", 9, "q", NULL, &a), PERSRV_EINDOUBT);
    assert_int_equal(fake_nreq(f), before + 2);
    assert_int_equal(a.attempts, 2);
    assert_int_equal(strlen(a.click_id), 32);
    assert_true(persrv_retriable(persrv_errcode(c)));
    assert_string_equal(persrv_errname_last(c), "outcome_unknown");
    assert_non_null(strstr(persrv_errstr(c), a.click_id));
    pthread_mutex_lock(&f->mu);
    assert_string_equal(f->click_ids[before], a.click_id);
    assert_string_equal(f->click_ids[before + 1], a.click_id);
    pthread_mutex_unlock(&f->mu);

    /* no answer at all: the same */
    fake_set(f, M_SILENT, NULL);
    before = fake_nreq(f);
    assert_int_equal(persrv_click(c, "u01", 9, "q", "msg-8", &a), PERSRV_EINDOUBT);
    assert_int_equal(fake_nreq(f), before + 2);
    assert_string_equal(a.click_id, "msg-8");
    assert_string_equal(persrv_errname_last(c), "outcome_unknown");
    pthread_mutex_lock(&f->mu);
    assert_string_equal(f->click_ids[before + 1], "msg-8");
    pthread_mutex_unlock(&f->mu);

    /* a definite answer is final: not retried */
    static const struct {
        const char *code;
        int want;
    } final[] = {{"not_found", PERSRV_ENOTFOUND},
                 {"unavailable", PERSRV_EUNAVAIL},
                 {"conflict", PERSRV_EINVAL},
                 {"forbidden", PERSRV_EFORBIDDEN}};
    for (size_t i = 0; i < sizeof final / sizeof final[0]; i++) {
        fake_set(f, M_ERROR, final[i].code);
        before = fake_nreq(f);
        assert_int_equal(persrv_click(c, "u01", 9, "q", "msg-9", &a), final[i].want);
        assert_int_equal(fake_nreq(f), before + 1);
        assert_int_equal(a.attempts, 1);
        assert_string_equal(persrv_errname_last(c), final[i].code);
        assert_string_equal(a.click_id, "msg-9");
    }
    persrv_close(c);
    fake_stop(f);
}

static void test_click_bad_arguments(void **state)
{
    (void)state;
    fake *f = fake_start(M_OK);
    persrv_t *c = connect_fake(f);
    persrv_click_info a;
    assert_int_equal(persrv_click(NULL, "u", 1, NULL, NULL, &a), PERSRV_EINVAL);
    assert_int_equal(persrv_click(c, NULL, 1, NULL, NULL, &a), PERSRV_EINVAL);
    assert_int_equal(persrv_click(c, "u", 1, NULL, NULL, NULL), PERSRV_EINVAL);
    assert_int_equal(persrv_click(c, "u", 1, NULL, "has space", &a), PERSRV_EINVAL);
    assert_non_null(strstr(persrv_errstr(c), "click_id"));
    assert_int_equal(persrv_click(c, "u", 1, NULL, "", &a), PERSRV_EINVAL);
    char big[PERSRV_MAX_CLICK_ID + 2];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(persrv_click(c, "u", 1, NULL, big, &a), PERSRV_ETOOBIG);
    assert_int_equal(persrv_click(c, "", 1, NULL, "ok", &a), PERSRV_EINVAL); /* encoder */
    assert_int_equal(fake_nreq(f), 0); /* none of these was sent */
    persrv_close(c);
    fake_stop(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_search_round_trip),
        cmocka_unit_test(test_errors_mapped),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_late_reply_not_taken),
        cmocka_unit_test(test_wrong_id_ignored),
        cmocka_unit_test(test_malformed_reply),
        cmocka_unit_test(test_sticker_and_health),
        cmocka_unit_test(test_bad_endpoint),
        cmocka_unit_test(test_failover_endpoints),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_click_round_trip),
        cmocka_unit_test(test_click_retried_in_doubt),
        cmocka_unit_test(test_click_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
