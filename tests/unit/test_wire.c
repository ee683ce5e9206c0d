/*
 * test_wire.c — the wire layer (ps/wire.h): every message kind (broker ↔ shard and client ↔
 * front door) round-trips with its values intact (ids up to 2^64-1, a 5 × 512 profile bit for
 * bit, a query that is not UTF-8 sent as it is); every cap and value check fails
 * with the right code and a message naming the field, on decode and on encode alike; and
 * malformed frames — truncated, random, empty, over the frame cap, wrong version, no body,
 * two bodies, wrong wire types, NUL bytes in strings, too many unknown fields — are rejected
 * without a crash or a leak.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ps/rand.h"
#include "ps/wire_engine.h"

/* ---- helpers ---------------------------------------------------------------------------- */

/* Pack with protobuf-c directly, bypassing ps_wire's checks: how a broken peer would. */
static uint8_t *raw_pack(const Persrv__Envelope *e, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(&e->base);
    uint8_t *b = malloc(*len ? *len : 1);
    assert_non_null(b);
    assert_int_equal(protobuf_c_message_pack(&e->base, b), *len);
    return b;
}

/* Decode buf and expect failure `code` with a message containing `needle`. */
static void expect_decode_fail(const uint8_t *buf, size_t len, int code, const char *needle)
{
    Persrv__Envelope *env = (Persrv__Envelope *)1;
    ps_err err = {0, ""};
    int rc = ps_wire_decode(buf, len, 0, &env, &err);
    if (rc != code || !strstr(err.msg, needle))
        fail_msg("decode: got %d \"%s\", want %d naming \"%s\"", rc, err.msg, code, needle);
    assert_int_equal(err.code, code);
    assert_null(env);
}

static Persrv__Envelope *decode_ok(const uint8_t *buf, size_t len)
{
    Persrv__Envelope *env = NULL;
    ps_err err = {0, ""};
    int rc = ps_wire_decode(buf, len, 0, &env, &err);
    if (rc) fail_msg("decode: %d %s", rc, err.msg);
    assert_non_null(env);
    assert_int_equal(env->version, PS_WIRE_VERSION);
    return env;
}

/* A hand-made frame, for what protobuf-c would never pack. */
typedef struct wbuf {
    uint8_t b[512];
    size_t n;
} wbuf;

static void put_varint(wbuf *w, uint64_t v)
{
    do {
        assert_true(w->n < sizeof w->b);
        w->b[w->n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
}

static void put_key(wbuf *w, uint32_t num, unsigned wt)
{
    put_varint(w, (uint64_t)num << 3 | wt);
}

static void put_bytes(wbuf *w, uint32_t num, const void *p, size_t n)
{
    put_key(w, num, 2);
    put_varint(w, n);
    assert_true(w->n + n <= sizeof w->b);
    memcpy(w->b + w->n, p, n);
    w->n += n;
}

static void put_u(wbuf *w, uint32_t num, uint64_t v)
{
    put_key(w, num, 0);
    put_varint(w, v);
}

/* A valid SearchRequest body: tokens "a", "b", R 10. */
static void put_search_body(wbuf *w)
{
    put_bytes(w, 1, "a", 1);
    put_bytes(w, 1, "b", 1);
    put_u(w, 3, 10);
}

static void put_envelope(wbuf *w, const wbuf *search)
{
    put_u(w, 1, PS_WIRE_VERSION);
    put_u(w, 2, 7);
    put_bytes(w, 10, search->b, search->n);
}

/* ---- round trips ------------------------------------------------------------------------ */

static void test_search_round_trip(void **state)
{
    (void)state;
    const char *tokens[] = {"好", "好累", "累", "so", "tired", "😭"};
    float cent[2 * 4] = {0.5f, -0.25f, 1e-30f, -0.0f, 3.0f, 2.5f, -1.0f, 0.125f};
    ps_profile prof = {.k = 2, .dim = 4, .centroids = cent, .radius = {0.75, 1.0 / 3.0}};
    ps_search_opts opts, back;
    ps_profile got;
    uint8_t *buf;
    size_t len;
    ps_err err;

    ps_search_opts_default(&opts);
    float w[PS_NFIELDS] = {1.0f, 0.5f, 0.25f, 0.125f, 0.0f};
    memcpy(opts.field_w, w, sizeof w);
    opts.R = 250;
    opts.alpha = 0.3f;
    opts.use_utility = 0;
    opts.profile = &prof;
    assert_int_equal(
        ps_wire_encode_search(UINT64_MAX, 250, tokens, 6, &opts, UINT64_MAX, &buf, &len, &err), 0);
    Persrv__Envelope *env = decode_ok(buf, len);
    assert_true(env->request_id == UINT64_MAX);
    assert_int_equal(env->deadline_ms, 250);
    assert_int_equal(env->body_case, PERSRV__ENVELOPE__BODY_SEARCH);
    const Persrv__SearchRequest *q = env->search;
    assert_int_equal(q->n_tokens, 6);
    for (size_t i = 0; i < 6; i++) assert_string_equal(q->tokens[i], tokens[i]);
    assert_int_equal(q->n_field_weights, PS_NFIELDS);
    assert_memory_equal(q->field_weights, w, sizeof w);
    assert_int_equal(q->recall_depth, 250);
    assert_false(q->use_utility);
    assert_true(q->columnar_hits); /* the reply comes back as columns */
    assert_true(q->alpha == 0.3f);
    assert_true(q->snapshot_version == UINT64_MAX);

    assert_int_equal(ps_wire_to_opts(q, &back, &err), 0);
    assert_memory_equal(back.field_w, w, sizeof w);
    assert_int_equal(back.R, 250);
    assert_int_equal(back.k, 250);
    assert_int_equal(back.use_utility, 0);
    assert_true(back.alpha == 0.3f);
    assert_null(back.profile);

    assert_int_equal(ps_wire_to_profile(q, &got, &err), 0);
    assert_int_equal(got.k, 2);
    assert_int_equal(got.dim, 4);
    assert_memory_equal(got.centroids, cent, sizeof cent);
    assert_memory_equal(got.radius, prof.radius, 2 * sizeof(double));
    ps_profile_clear(&got);
    ps_wire_free(env);
    free(buf);

    /* no profile, no personalization: no centroids, a profile with k == 0 */
    opts.profile = NULL;
    assert_int_equal(ps_wire_encode_search(0, 0, tokens, 1, &opts, 0, &buf, &len, &err), 0);
    env = decode_ok(buf, len);
    assert_int_equal(env->search->n_centroids, 0);
    assert_int_equal(ps_wire_to_profile(env->search, &got, &err), 0);
    assert_int_equal(got.k, 0);
    assert_null(got.centroids);
    ps_wire_free(env);
    free(buf);
}

static void test_profile_5x512_bit_exact(void **state)
{
    (void)state;
    enum { K = 5, DIM = 512 };
    float *cent = malloc(K * DIM * sizeof *cent);
    uint64_t seed = 42;
    ps_profile prof = {.k = K, .dim = DIM, .centroids = cent};
    ps_search_opts opts;
    const char *tok = "hi";
    uint8_t *buf;
    size_t len;
    ps_profile got;
    ps_err err;

    assert_non_null(cent);
    for (size_t i = 0; i < K * DIM; i++) {
        uint32_t bits = (uint32_t)ps_splitmix64(&seed);
        float f;
        memcpy(&f, &bits, sizeof f);
        cent[i] = isfinite(f) ? f : (float)i; /* every finite bit pattern, subnormals too */
    }
    for (int c = 0; c < K; c++) prof.radius[c] = ps_rand_unit(ps_splitmix64(&seed)) * (c + 1);
    ps_search_opts_default(&opts);
    opts.profile = &prof;
    assert_int_equal(ps_wire_encode_search(1, 0, &tok, 1, &opts, 3, &buf, &len, &err), 0);
    Persrv__Envelope *env = decode_ok(buf, len);
    assert_int_equal(ps_wire_to_profile(env->search, &got, &err), 0);
    assert_int_equal(got.k, K);
    assert_int_equal(got.dim, DIM);
    assert_memory_equal(got.centroids, cent, K * DIM * sizeof *cent);
    assert_memory_equal(got.radius, prof.radius, K * sizeof(double));
    ps_profile_clear(&got);
    ps_wire_free(env);
    free(buf);
    free(cent);
}

static void test_search_reply_round_trip(void **state)
{
    (void)state;
    ps_hit hits[3] = {
        {.id = UINT64_MAX,
         .doc = 9,
         .centroid = -1,
         .relevance = 14.25,
         .utility = 1.5,
         .recall = 15.75,
         .preference = 1.0,
         .score = 15.75},
        {.id = 0,
         .doc = 1,
         .centroid = 4,
         .relevance = 1e-300,
         .utility = 0.0,
         .recall = 1e-300,
         .preference = 1.3,
         .score = 1.3e-300},
        {.id = 1234567890123456789ull,
         .doc = 2,
         .centroid = 0,
         .relevance = 3.0,
         .utility = 2.0,
         .recall = 5.0,
         .preference = 0.7,
         .score = 3.5},
    };
    ps_hit back[PS_WIRE_MAX_HITS];
    size_t n;
    uint8_t *buf;
    size_t len;
    ps_err err;

    /* both forms: one Hit message per hit, and columns */
    for (int columnar = 0; columnar <= 1; columnar++) {
        assert_int_equal(ps_wire_encode_search_reply(UINT64_MAX, 6, UINT64_MAX, hits, 3, UINT64_MAX,
                                                     columnar, &buf, &len, &err),
                         0);
        Persrv__Envelope *env = decode_ok(buf, len);
        assert_true(env->request_id == UINT64_MAX);
        assert_int_equal(env->deadline_ms, 0);
        assert_int_equal(env->body_case, PERSRV__ENVELOPE__BODY_SEARCH_REPLY);
        const Persrv__SearchReply *r = env->search_reply;
        assert_int_equal(r->shard, 6);
        assert_true(r->snapshot_version == UINT64_MAX);
        assert_true(r->postings_visited == UINT64_MAX);
        assert_int_equal(r->columns != NULL, columnar);
        assert_int_equal(r->n_hits, columnar ? 0 : 3);
        assert_int_equal(ps_wire_reply_nhits(r), 3);
        assert_int_equal(ps_wire_to_hits(r, back, PS_WIRE_MAX_HITS, &n, &err), 0);
        assert_int_equal(n, 3);
        for (size_t i = 0; i < 3; i++) {
            assert_true(back[i].id == hits[i].id);
            assert_int_equal(back[i].doc, UINT32_MAX);
            assert_int_equal(back[i].centroid, hits[i].centroid);
            assert_memory_equal(&back[i].relevance, &hits[i].relevance, 5 * sizeof(double));
        }
        /* a caller array too small is an error, not an overflow */
        assert_int_equal(ps_wire_to_hits(r, back, 2, &n, &err), PS_ETOOBIG);
        assert_non_null(strstr(err.msg, "search_reply.hits"));
        assert_int_equal(n, 0);
        ps_wire_free(env);
        free(buf);

        /* a shard with no candidate */
        assert_int_equal(
            ps_wire_encode_search_reply(5, 0, 1, NULL, 0, 0, columnar, &buf, &len, &err), 0);
        env = decode_ok(buf, len);
        assert_int_equal(ps_wire_reply_nhits(env->search_reply), 0);
        assert_int_equal(ps_wire_to_hits(env->search_reply, back, 0, &n, &err), 0);
        assert_int_equal(n, 0);
        ps_wire_free(env);
        free(buf);
    }
}

/* The columns a peer could send wrong: columns of different lengths, hits and columns together,
 * a non-finite score or a centroid out of range in one column, more entries than the cap. */
static void test_search_reply_columns_bad(void **state)
{
    (void)state;
    uint64_t id[2] = {1, 2};
    double d[2] = {1.0, 2.0}, bad[2] = {1.0, NAN};
    int32_t centroid[2] = {0, -1}, far[2] = {0, PS_WIRE_MAX_CENTROIDS};
    Persrv__HitColumns c = PERSRV__HIT_COLUMNS__INIT;
    c.n_id = c.n_relevance = c.n_utility = c.n_recall = c.n_preference = c.n_score = c.n_centroid =
        2;
    c.id = id;
    c.relevance = c.utility = c.recall = c.preference = c.score = d;
    c.centroid = centroid;
    Persrv__Hit h = PERSRV__HIT__INIT, *hp = &h;
    Persrv__SearchReply r = PERSRV__SEARCH_REPLY__INIT;
    r.columns = &c;
    Persrv__Envelope e;
    ps_wire_env_init(&e, 9, 0);
    e.body_case = PERSRV__ENVELOPE__BODY_SEARCH_REPLY;
    e.search_reply = &r;
    uint8_t buf[4096];
    size_t len = persrv__envelope__pack(&e, buf);
    Persrv__Envelope *env = decode_ok(buf, len);
    ps_hit back[2];
    size_t n;
    ps_err err;
    assert_int_equal(ps_wire_to_hits(env->search_reply, back, 2, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(back[1].centroid, -1);
    assert_true(back[1].id == 2 && back[1].score == 2.0);
    ps_wire_free(env);

    const struct {
        const char *what, *msg;
    } cases[] = {{"short", "search_reply.columns.score: 1 entries, id has 2"},
                 {"both", "search_reply: both hits and columns"},
                 {"nan", "search_reply.columns[1].recall: not finite"},
                 {"centroid", "search_reply.columns[1].centroid"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Persrv__HitColumns cc = c;
        Persrv__SearchReply rr = r;
        rr.columns = &cc;
        e.search_reply = &rr;
        if (i == 0) cc.n_score = 1;
        if (i == 1) rr.n_hits = 1, rr.hits = &hp;
        if (i == 2) cc.recall = bad;
        if (i == 3) cc.centroid = far;
        len = persrv__envelope__pack(&e, buf);
        env = (Persrv__Envelope *)1;
        assert_int_equal(ps_wire_decode(buf, len, 0, &env, &err), PS_EINVAL);
        assert_null(env);
        if (!strstr(err.msg, cases[i].msg)) fail_msg("%s: %s", cases[i].what, err.msg);
    }

    /* more ids than the cap, before anything is unpacked */
    size_t big = PS_WIRE_MAX_HITS + 1;
    uint64_t *many = calloc(big, sizeof *many);
    uint8_t *bigbuf = malloc(big * 8 + 64);
    assert_non_null(many);
    assert_non_null(bigbuf);
    Persrv__HitColumns cc = PERSRV__HIT_COLUMNS__INIT;
    cc.n_id = big;
    cc.id = many;
    r.columns = &cc;
    e.search_reply = &r;
    len = persrv__envelope__pack(&e, bigbuf);
    assert_int_equal(ps_wire_decode(bigbuf, len, 0, &env, &err), PS_ETOOBIG);
    assert_non_null(strstr(err.msg, "id"));
    free(many);
    free(bigbuf);
}

static void test_sticker_round_trip(void **state)
{
    (void)state;
    char ocr[] = "好累", queries[] = "好累 tired", desc[] = "a cat lying flat 😭";
    ps_sticker_rec rec = {.id = UINT64_MAX,
                          .field = {ocr, queries, NULL, desc, NULL},
                          .field_len = {strlen(ocr), strlen(queries), 0, strlen(desc), 0}};
    uint8_t *buf;
    size_t len;
    ps_err err;

    assert_int_equal(ps_wire_encode_get_sticker(UINT64_MAX, 50, UINT64_MAX, &buf, &len, &err), 0);
    Persrv__Envelope *env = decode_ok(buf, len);
    assert_int_equal(env->body_case, PERSRV__ENVELOPE__BODY_GET_STICKER);
    assert_true(env->get_sticker->id == UINT64_MAX);
    assert_int_equal(env->deadline_ms, 50);
    ps_wire_free(env);
    free(buf);

    assert_int_equal(ps_wire_encode_sticker_reply(3, 2, UINT64_MAX, &rec, 1.25, &buf, &len, &err),
                     0);
    env = decode_ok(buf, len);
    assert_int_equal(env->body_case, PERSRV__ENVELOPE__BODY_STICKER_REPLY);
    const Persrv__GetStickerReply *s = env->sticker_reply;
    assert_true(s->found);
    assert_true(s->id == UINT64_MAX);
    assert_int_equal(s->shard, 2);
    assert_string_equal(s->ocr, ocr);
    assert_string_equal(s->queries, queries);
    assert_string_equal(s->keywords, "");
    assert_string_equal(s->desc, desc);
    assert_string_equal(s->emotion, "");
    assert_true(s->utility == 1.25);
    ps_wire_free(env);
    free(buf);

    assert_int_equal(ps_wire_encode_sticker_reply(4, 1, 77, NULL, 0, &buf, &len, &err), 0);
    env = decode_ok(buf, len);
    assert_false(env->sticker_reply->found);
    assert_true(env->sticker_reply->id == 77);
    ps_wire_free(env);
    free(buf);
}

static void test_health_round_trip(void **state)
{
    (void)state;
    ps_wire_health h = {
        .shard = 3, .nshards = 7, .snapshot_version = UINT64_MAX, .stickers = 543098, .ready = 1};
    uint8_t *buf;
    size_t len;
    ps_err err;

    assert_int_equal(ps_wire_encode_health(9, 100, &buf, &len, &err), 0);
    Persrv__Envelope *env = decode_ok(buf, len);
    assert_int_equal(env->body_case, PERSRV__ENVELOPE__BODY_HEALTH);
    assert_true(env->request_id == 9);
    ps_wire_free(env);
    free(buf);

    assert_int_equal(ps_wire_encode_health_reply(UINT64_MAX, &h, &buf, &len, &err), 0);
    env = decode_ok(buf, len);
    assert_int_equal(env->body_case, PERSRV__ENVELOPE__BODY_HEALTH_REPLY);
    const Persrv__HealthReply *r = env->health_reply;
    assert_int_equal(r->shard, 3);
    assert_int_equal(r->nshards, 7);
    assert_true(r->snapshot_version == UINT64_MAX);
    assert_true(r->stickers == 543098);
    assert_true(r->ready);
    ps_wire_free(env);
    free(buf);
}

static void test_error_round_trip(void **state)
{
    (void)state;
    static const int codes[] = {
#define CODE(name, val, c, http, msg) val,
        PS_ERRNO_MAP(CODE)
#undef CODE
    };
    uint8_t *buf;
    size_t len;
    ps_err err;

    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        assert_int_equal(ps_wire_encode_error(UINT64_MAX - i, codes[i], "search.tokens: empty",
                                              &buf, &len, &err),
                         0);
        Persrv__Envelope *env = decode_ok(buf, len);
        assert_int_equal(env->body_case, PERSRV__ENVELOPE__BODY_ERROR);
        assert_true(env->request_id == UINT64_MAX - i);
        assert_string_equal(env->error->code, ps_errname(codes[i]));
        assert_string_equal(env->error->message, "search.tokens: empty");
        assert_int_equal(ps_wire_error_code(env->error), codes[i]);
        ps_wire_free(env);
        free(buf);
    }
    Persrv__Error unknown = PERSRV__ERROR__INIT;
    unknown.code = "from_the_future";
    assert_int_equal(ps_wire_error_code(&unknown), PS_EINTERNAL);
}

/* An error message never stops an error from being sent: bad UTF-8 is masked, a long one cut
 * at a character boundary. */
static void test_error_message_sanitized(void **state)
{
    (void)state;
    size_t big = PS_WIRE_MAX_STRING + 10;
    char *msg = malloc(big + 1);
    uint8_t *buf;
    size_t len;
    ps_err err;

    assert_int_equal(ps_wire_encode_error(1, PS_EUTF8, "bad \xff\xfe byte", &buf, &len, &err), 0);
    Persrv__Envelope *env = decode_ok(buf, len);
    assert_string_equal(env->error->message, "bad ?? byte");
    ps_wire_free(env);
    free(buf);

    assert_non_null(msg);
    msg[0] = 'x';
    for (size_t i = 1; i + 3 <= big; i += 3) memcpy(msg + i, "好", 3); /* 3-byte characters */
    msg[big] = '\0';
    assert_int_equal(ps_wire_encode_error(1, PS_EINVAL, msg, &buf, &len, &err), 0);
    env = decode_ok(buf, len);
    size_t n = strlen(env->error->message);
    assert_true(n <= PS_WIRE_MAX_STRING && n > PS_WIRE_MAX_STRING - 3);
    assert_memory_equal(env->error->message, msg, n);
    ps_wire_free(env);
    free(buf);
    free(msg);

    assert_int_equal(ps_wire_encode_error(1, 0, "x", &buf, &len, &err), PS_EINVAL);
    assert_null(buf);
    assert_int_equal(ps_wire_encode_error(1, PS_ENOTFOUND, NULL, &buf, &len, &err), 0);
    env = decode_ok(buf, len);
    assert_string_equal(env->error->message, "");
    ps_wire_free(env);
    free(buf);
}

/* A query goes out as given: any bytes but NUL, not NUL-terminated, UTF-8 or not — the
 * broker is the one to say invalid_utf8. */
static void test_query_round_trip(void **state)
{
    (void)state;
    const char text[] = "好累 so tired!!"; /* sent without its last 2 bytes */
    uint8_t *buf;
    size_t len;
    ps_err err;

    assert_int_equal(ps_wire_encode_query(UINT64_MAX, 750, text, sizeof text - 3, "u01", 25, 1,
                                          &buf, &len, &err),
                     0);
    Persrv__Envelope *env = decode_ok(buf, len);
    assert_int_equal(env->body_case, PERSRV__ENVELOPE__BODY_QUERY);
    assert_true(env->request_id == UINT64_MAX);
    assert_int_equal(env->deadline_ms, 750);
    assert_string_equal(env->query->q, "好累 so tired");
    assert_string_equal(env->query->user, "u01");
    assert_int_equal(env->query->k, 25);
    assert_true(env->query->explain);
    ps_wire_free(env);
    free(buf);

    /* empty query, no user, k 0: the wire carries it, the broker judges it */
    assert_int_equal(ps_wire_encode_query(1, 0, NULL, 0, NULL, 0, 0, &buf, &len, &err), 0);
    env = decode_ok(buf, len);
    assert_string_equal(env->query->q, "");
    assert_string_equal(env->query->user, "");
    assert_int_equal(env->query->k, 0);
    assert_false(env->query->explain);
    ps_wire_free(env);
    free(buf);

    /* invalid UTF-8 is sent, and the decoder names it */
    assert_int_equal(ps_wire_encode_query(2, 0, "\xff\xfe", 2, "u\xc3", 1, 0, &buf, &len, &err), 0);
    expect_decode_fail(buf, len, PS_EUTF8, "query.q: not valid UTF-8");
    assert_int_equal(ps_wire_peek_request_id(buf, len), 2); /* for the Error the broker sends */
    free(buf);

    /* what cannot be sent */
    buf = (uint8_t *)1;
    assert_int_equal(ps_wire_encode_query(3, 0, "a\0b", 3, NULL, 1, 0, &buf, &len, &err),
                     PS_EINVAL);
    assert_non_null(strstr(err.msg, "query.q: contains a NUL"));
    assert_null(buf);
    assert_int_equal(ps_wire_encode_query(3, 0, NULL, 4, NULL, 1, 0, &buf, &len, &err), PS_EINVAL);
    char *big = malloc(PS_WIRE_MAX_STRING + 1);
    assert_non_null(big);
    memset(big, 'a', PS_WIRE_MAX_STRING + 1);
    assert_int_equal(
        ps_wire_encode_query(3, 0, big, PS_WIRE_MAX_STRING + 1, NULL, 1, 0, &buf, &len, &err),
        PS_ETOOBIG);
    assert_non_null(strstr(err.msg, "query.q"));
    big[PS_WIRE_MAX_USER + 1] = '\0';
    assert_int_equal(ps_wire_encode_query(3, 0, "hi", 2, big, 1, 0, &buf, &len, &err), PS_ETOOBIG);
    assert_non_null(strstr(err.msg, "query.user"));
    big[PS_WIRE_MAX_USER] = '\0'; /* at the cap is fine */
    assert_int_equal(ps_wire_encode_query(3, 0, "hi", 2, big, 1, 0, &buf, &len, &err), 0);
    ps_wire_free(decode_ok(buf, len));
    free(buf);
    free(big);
    assert_int_equal(ps_wire_encode_query(3, 0, "hi", 2, NULL, 1, 0, NULL, &len, &err), PS_EINVAL);
}

static void test_query_reply_round_trip(void **state)
{
    (void)state;
    Persrv__Hit h[2] = {PERSRV__HIT__INIT, PERSRV__HIT__INIT}, *hp[2] = {&h[0], &h[1]};
    Persrv__GetStickerReply st[2] = {PERSRV__GET_STICKER_REPLY__INIT,
                                     PERSRV__GET_STICKER_REPLY__INIT},
                            *sp[2] = {&st[0], &st[1]};
    Persrv__ShardFailure fl = PERSRV__SHARD_FAILURE__INIT, *flp[1] = {&fl};
    Persrv__QueryReply r = PERSRV__QUERY_REPLY__INIT;
    Persrv__Envelope e = PERSRV__ENVELOPE__INIT;
    uint8_t *buf;
    size_t len;
    ps_err err;

    h[0].id = UINT64_MAX;
    h[0].score = h[0].recall = 15.75;
    h[0].relevance = 14.25;
    h[0].utility = 1.5;
    h[0].preference = 1.0;
    h[0].centroid = -1;
    h[1].id = 1234567890123456789ull;
    h[1].score = 1e-300;
    h[1].centroid = 4;
    st[0].found = 1;
    st[0].id = UINT64_MAX;
    st[0].ocr = "好累";
    st[0].utility = 0.25;
    st[1].id = h[1].id; /* fields the broker could not fetch: an empty, not-found entry */
    fl.shard = 3;
    fl.reason = "timed_out: no replica answered within 200 ms";
    r.n_hits = 2;
    r.hits = hp;
    r.n_fields = 2;
    r.fields = sp;
    r.partial = r.timed_out = r.personalized = 1;
    r.snapshot_version = UINT64_MAX;
    r.shards_total = 4;
    r.n_failures = 1;
    r.failures = flp;
    r.took_us = UINT32_MAX;
    e.version = PS_WIRE_VERSION;
    e.request_id = 77;
    e.body_case = PERSRV__ENVELOPE__BODY_QUERY_REPLY;
    e.query_reply = &r;

    assert_int_equal(ps_wire_pack(&e, &buf, &len, &err), 0);
    Persrv__Envelope *env = decode_ok(buf, len);
    const Persrv__QueryReply *q = env->query_reply;
    assert_int_equal(q->n_hits, 2);
    assert_true(q->hits[0]->id == UINT64_MAX);
    assert_memory_equal(&q->hits[0]->relevance, &h[0].relevance, 5 * sizeof(double));
    assert_int_equal(q->hits[1]->centroid, 4);
    assert_true(q->hits[1]->score == 1e-300);
    assert_int_equal(q->n_fields, 2);
    assert_true(q->fields[0]->found);
    assert_string_equal(q->fields[0]->ocr, "好累");
    assert_true(q->fields[0]->utility == 0.25);
    assert_false(q->fields[1]->found);
    assert_int_equal(q->n_failures, 1);
    assert_int_equal(q->failures[0]->shard, 3);
    assert_string_equal(q->failures[0]->reason, fl.reason);
    assert_true(q->partial && q->timed_out && q->personalized);
    assert_true(q->snapshot_version == UINT64_MAX);
    assert_int_equal(q->shards_total, 4);
    assert_int_equal(q->took_us, UINT32_MAX);
    ps_wire_free(env);
    free(buf);

    /* without explain: no fields at all */
    r.n_fields = 0;
    r.n_failures = 0;
    assert_int_equal(ps_wire_pack(&e, &buf, &len, &err), 0);
    env = decode_ok(buf, len);
    assert_int_equal(env->query_reply->n_fields, 0);
    assert_int_equal(env->query_reply->n_hits, 2);
    ps_wire_free(env);
    free(buf);

    /* the broker's health: shards_up */
    ps_wire_health hh = {.nshards = 4, .shards_up = 3};
    assert_int_equal(ps_wire_encode_health_reply(5, &hh, &buf, &len, &err), 0);
    env = decode_ok(buf, len);
    assert_int_equal(env->health_reply->shards_up, 3);
    assert_int_equal(env->health_reply->nshards, 4);
    assert_false(env->health_reply->ready);
    ps_wire_free(env);
    free(buf);
}

/* The request id of a frame that does not decode, for the Error that answers it. */
static void test_peek_request_id(void **state)
{
    (void)state;
    wbuf w = {.n = 0};
    put_u(&w, 1, PS_WIRE_VERSION);
    put_u(&w, 2, 123456789);
    put_bytes(&w, 17, "\x0a\x01\xff", 3); /* a query whose q is not UTF-8 */
    expect_decode_fail(w.b, w.n, PS_EUTF8, "query.q");
    assert_int_equal(ps_wire_peek_request_id(w.b, w.n), 123456789);
    assert_int_equal(ps_wire_peek_request_id(w.b, 3), 0); /* cut inside the id */
    assert_int_equal(ps_wire_peek_request_id(NULL, 5), 0);
    const uint8_t junk[] = {0xff, 0xff, 0xff};
    assert_int_equal(ps_wire_peek_request_id(junk, sizeof junk), 0);
}

/* ---- caps and value checks: one case per rule ------------------------------------------- */

#define NTOK_BIG 300
#define NHIT_BIG (PS_WIRE_MAX_HITS + 1)
#define BIGDIM   (PS_WIRE_MAX_DIM + 1)

/* Storage for a valid message of each kind, which a case then breaks in one place. */
typedef struct fx {
    Persrv__Envelope env;
    Persrv__SearchRequest q;
    Persrv__SearchReply r;
    Persrv__GetStickerReply s;
    Persrv__Error e;
    char *tok[NTOK_BIG];
    char tokbuf[NTOK_BIG][8];
    char longtok[PS_WIRE_MAX_TOKEN_LEN + 2];
    float w[PS_NFIELDS + 1];
    Persrv__Centroid c[PS_WIRE_MAX_CENTROIDS + 1];
    Persrv__Centroid *cp[PS_WIRE_MAX_CENTROIDS + 1];
    float vec[PS_WIRE_MAX_CENTROIDS + 1][4];
    float *bigvec;
    Persrv__Hit h[NHIT_BIG];
    Persrv__Hit *hp[NHIT_BIG];
    char *bigstr;
    Persrv__QueryRequest qq;
    char longuser[PS_WIRE_MAX_USER + 2];
    Persrv__QueryReply qr;
    Persrv__GetStickerReply fs[NHIT_BIG];
    Persrv__GetStickerReply *fsp[NHIT_BIG];
    Persrv__ShardFailure fl[PS_WIRE_MAX_SHARDS + 1];
    Persrv__ShardFailure *flp[PS_WIRE_MAX_SHARDS + 1];
} fx;

static void fx_env(fx *f, int body)
{
    persrv__envelope__init(&f->env);
    f->env.version = PS_WIRE_VERSION;
    f->env.request_id = 1;
    f->env.body_case = body;
}

static void fx_search(fx *f)
{
    persrv__search_request__init(&f->q);
    for (int i = 0; i < NTOK_BIG; i++) {
        snprintf(f->tokbuf[i], sizeof f->tokbuf[i], "t%d", i);
        f->tok[i] = f->tokbuf[i];
    }
    f->q.n_tokens = 3;
    f->q.tokens = f->tok;
    for (int i = 0; i <= PS_NFIELDS; i++) f->w[i] = 1.0f;
    f->q.n_field_weights = PS_NFIELDS;
    f->q.field_weights = f->w;
    f->q.recall_depth = 100;
    f->q.alpha = 0.3f;
    for (int c = 0; c <= PS_WIRE_MAX_CENTROIDS; c++) {
        persrv__centroid__init(&f->c[c]);
        for (int j = 0; j < 4; j++) f->vec[c][j] = (float)(c + j);
        f->c[c].n_vector = 4;
        f->c[c].vector = f->vec[c];
        f->c[c].radius = 1.0;
        f->cp[c] = &f->c[c];
    }
    f->q.n_centroids = 2;
    f->q.centroids = f->cp;
    fx_env(f, PERSRV__ENVELOPE__BODY_SEARCH);
    f->env.search = &f->q;
}

static void fx_reply(fx *f)
{
    persrv__search_reply__init(&f->r);
    for (int i = 0; i < NHIT_BIG; i++) {
        persrv__hit__init(&f->h[i]);
        f->h[i].id = (uint64_t)i;
        f->h[i].recall = f->h[i].score = 10.0 - i * 1e-4;
        f->h[i].preference = 1.0;
        f->h[i].centroid = -1;
        f->hp[i] = &f->h[i];
    }
    f->r.n_hits = 3;
    f->r.hits = f->hp;
    fx_env(f, PERSRV__ENVELOPE__BODY_SEARCH_REPLY);
    f->env.search_reply = &f->r;
}

static void fx_sticker(fx *f)
{
    persrv__get_sticker_reply__init(&f->s);
    f->s.found = 1;
    f->s.id = 5;
    f->s.ocr = "好累";
    fx_env(f, PERSRV__ENVELOPE__BODY_STICKER_REPLY);
    f->env.sticker_reply = &f->s;
}

static void fx_error(fx *f)
{
    persrv__error__init(&f->e);
    f->e.code = "invalid_query";
    f->e.message = "no token";
    fx_env(f, PERSRV__ENVELOPE__BODY_ERROR);
    f->env.error = &f->e;
}

static void fx_query(fx *f)
{
    persrv__query_request__init(&f->qq);
    f->qq.q = "好累 so tired";
    f->qq.user = "u01";
    f->qq.k = 10;
    f->qq.explain = 1;
    fx_env(f, PERSRV__ENVELOPE__BODY_QUERY);
    f->env.query = &f->qq;
}

/* A QueryReply of 3 hits with their fields and 2 shard failures. */
static void fx_query_reply(fx *f)
{
    fx_reply(f);
    persrv__query_reply__init(&f->qr);
    for (int i = 0; i < NHIT_BIG; i++) {
        persrv__get_sticker_reply__init(&f->fs[i]);
        f->fs[i].found = 1;
        f->fs[i].id = (uint64_t)i;
        f->fs[i].desc = "a cat";
        f->fsp[i] = &f->fs[i];
    }
    for (int i = 0; i <= PS_WIRE_MAX_SHARDS; i++) {
        persrv__shard_failure__init(&f->fl[i]);
        f->fl[i].shard = (uint32_t)i;
        f->fl[i].reason = "deadline";
        f->flp[i] = &f->fl[i];
    }
    f->qr.n_hits = 3;
    f->qr.hits = f->hp;
    f->qr.n_fields = 3;
    f->qr.fields = f->fsp;
    f->qr.n_failures = 2;
    f->qr.failures = f->flp;
    f->qr.partial = 1;
    fx_env(f, PERSRV__ENVELOPE__BODY_QUERY_REPLY);
    f->env.query_reply = &f->qr;
}

static void m_query_utf8(fx *f)
{
    f->qq.q = "tired \xff";
}
static void m_query_long(fx *f)
{
    f->qq.q = f->bigstr;
}
static void m_user_long(fx *f)
{
    memset(f->longuser, 'u', PS_WIRE_MAX_USER + 1);
    f->longuser[PS_WIRE_MAX_USER + 1] = '\0';
    f->qq.user = f->longuser;
}
static void m_user_utf8(fx *f)
{
    f->qq.user = "\xc0\xaf"; /* overlong '/' */
}
static void m_qr_hits_many(fx *f)
{
    f->qr.n_hits = NHIT_BIG;
    f->qr.n_fields = 0;
}
static void m_qr_hit_nan(fx *f)
{
    f->h[1].relevance = NAN;
}
static void m_qr_fields_many(fx *f)
{
    f->qr.n_fields = NHIT_BIG;
}
static void m_qr_fields_two(fx *f)
{
    f->qr.n_fields = 2;
}
static void m_qr_field_utf8(fx *f)
{
    f->fs[1].emotion = "sad \xe5\xa5"; /* cut inside a character */
}
static void m_qr_field_utility(fx *f)
{
    f->fs[2].utility = NAN;
}
static void m_qr_field_id(fx *f)
{
    f->fs[0].id = 99;
}
static void m_qr_failures_many(fx *f)
{
    f->qr.n_failures = PS_WIRE_MAX_SHARDS + 1;
}
static void m_qr_failure_utf8(fx *f)
{
    f->fl[1].reason = "\x80";
}

static void m_tokens_many(fx *f)
{
    f->q.n_tokens = PS_WIRE_MAX_TOKENS + 1;
}
static void m_tokens_none(fx *f)
{
    f->q.n_tokens = 0;
}
static void m_token_long(fx *f)
{
    memset(f->longtok, 'x', PS_WIRE_MAX_TOKEN_LEN + 1);
    f->longtok[PS_WIRE_MAX_TOKEN_LEN + 1] = '\0';
    f->tok[1] = f->longtok;
}
static void m_token_empty(fx *f)
{
    f->tok[0] = "";
}
static void m_token_utf8(fx *f)
{
    f->tok[0] = "ok\xc3";
}
static void m_token_repeat(fx *f)
{
    f->tok[2] = "t0";
}
static void m_weights_three(fx *f)
{
    f->q.n_field_weights = 3;
}
static void m_weights_six(fx *f)
{
    f->q.n_field_weights = PS_NFIELDS + 1;
}
static void m_weight_negative(fx *f)
{
    f->w[1] = -0.5f;
}
static void m_weight_inf(fx *f)
{
    f->w[4] = INFINITY;
}
static void m_r_zero(fx *f)
{
    f->q.recall_depth = 0;
}
static void m_r_big(fx *f)
{
    f->q.recall_depth = PS_SEARCH_MAX_R + 1;
}
static void m_alpha_nan(fx *f)
{
    f->q.alpha = NAN;
}
static void m_alpha_negative(fx *f)
{
    f->q.alpha = -0.1f;
}
static void m_centroids_many(fx *f)
{
    f->q.n_centroids = PS_WIRE_MAX_CENTROIDS + 1;
}
static void m_vector_long(fx *f)
{
    f->c[0].n_vector = BIGDIM;
    f->c[0].vector = f->bigvec;
}
static void m_vector_empty(fx *f)
{
    f->c[1].n_vector = 0;
}
static void m_vector_mismatch(fx *f)
{
    f->c[1].n_vector = 3;
}
static void m_vector_nan(fx *f)
{
    f->vec[0][2] = NAN;
}
static void m_radius_negative(fx *f)
{
    f->c[1].radius = -1.0;
}
static void m_radius_nan(fx *f)
{
    f->c[0].radius = NAN;
}
static void m_hits_many(fx *f)
{
    f->r.n_hits = NHIT_BIG;
}
static void m_hit_nan(fx *f)
{
    f->h[1].score = NAN;
}
static void m_hit_centroid(fx *f)
{
    f->h[2].centroid = PS_PROFILE_KMAX;
}
static void m_hit_centroid_low(fx *f)
{
    f->h[0].centroid = -2;
}
static void m_sticker_long(fx *f)
{
    f->s.desc = f->bigstr;
}
static void m_sticker_utf8(fx *f)
{
    f->s.ocr = "\xed\xa0\x80"; /* a UTF-16 surrogate */
}
static void m_sticker_utility(fx *f)
{
    f->s.utility = INFINITY;
}
static void m_error_code_empty(fx *f)
{
    f->e.code = "";
}
static void m_error_long(fx *f)
{
    f->e.message = f->bigstr;
}
static void m_version_two(fx *f)
{
    f->env.version = 2;
}
static void m_version_zero(fx *f)
{
    f->env.version = 0;
}
static void m_version_two_and_caps(fx *f)
{
    f->env.version = 2;
    f->q.n_tokens = PS_WIRE_MAX_TOKENS + 1;
}
static void m_no_body(fx *f)
{
    f->env.body_case = PERSRV__ENVELOPE__BODY__NOT_SET;
}

typedef struct cap_case {
    const char *name;
    void (*base)(fx *);
    void (*mutate)(fx *);
    int code;
    const char *needle;
} cap_case;

static const cap_case cases[] = {
    {"too many tokens", fx_search, m_tokens_many, PS_ETOOBIG, "search.tokens"},
    {"no token", fx_search, m_tokens_none, PS_EQUERY, "search.tokens"},
    {"long token", fx_search, m_token_long, PS_ETOOBIG, "search.tokens[1]"},
    {"empty token", fx_search, m_token_empty, PS_EINVAL, "search.tokens[0]"},
    {"bad UTF-8 token", fx_search, m_token_utf8, PS_EUTF8, "search.tokens[0]"},
    {"repeated token", fx_search, m_token_repeat, PS_EINVAL, "search.tokens[2]: repeats"},
    {"3 weights", fx_search, m_weights_three, PS_EINVAL, "search.field_weights"},
    {"6 weights", fx_search, m_weights_six, PS_ETOOBIG, "search.field_weights"},
    {"negative weight", fx_search, m_weight_negative, PS_EINVAL, "search.field_weights[1]"},
    {"infinite weight", fx_search, m_weight_inf, PS_EINVAL, "search.field_weights[4]"},
    {"R 0", fx_search, m_r_zero, PS_EINVAL, "search.recall_depth"},
    {"R too big", fx_search, m_r_big, PS_EINVAL, "search.recall_depth"},
    {"alpha NaN", fx_search, m_alpha_nan, PS_EINVAL, "search.alpha"},
    {"alpha negative", fx_search, m_alpha_negative, PS_EINVAL, "search.alpha"},
    {"too many centroids", fx_search, m_centroids_many, PS_ETOOBIG, "search.centroids"},
    {"long vector", fx_search, m_vector_long, PS_ETOOBIG, "search.centroids[0].vector"},
    {"empty vector", fx_search, m_vector_empty, PS_EINVAL, "search.centroids[1].vector"},
    {"dims differ", fx_search, m_vector_mismatch, PS_EINVAL, "search.centroids[1].vector"},
    {"NaN in vector", fx_search, m_vector_nan, PS_EINVAL, "search.centroids[0].vector[2]"},
    {"negative radius", fx_search, m_radius_negative, PS_EINVAL, "search.centroids[1].radius"},
    {"NaN radius", fx_search, m_radius_nan, PS_EINVAL, "search.centroids[0].radius"},
    {"too many hits", fx_reply, m_hits_many, PS_ETOOBIG, "search_reply.hits"},
    {"NaN score", fx_reply, m_hit_nan, PS_EINVAL, "search_reply.hits[1].score"},
    {"centroid too big", fx_reply, m_hit_centroid, PS_EINVAL, "search_reply.hits[2].centroid"},
    {"centroid too low", fx_reply, m_hit_centroid_low, PS_EINVAL, "search_reply.hits[0].centroid"},
    {"long sticker text", fx_sticker, m_sticker_long, PS_ETOOBIG, "sticker_reply.desc"},
    {"bad UTF-8 sticker text", fx_sticker, m_sticker_utf8, PS_EUTF8, "sticker_reply.ocr"},
    {"infinite utility", fx_sticker, m_sticker_utility, PS_EINVAL, "sticker_reply.utility"},
    {"empty error code", fx_error, m_error_code_empty, PS_EINVAL, "error.code"},
    {"long error message", fx_error, m_error_long, PS_ETOOBIG, "error.message"},
    {"query not UTF-8", fx_query, m_query_utf8, PS_EUTF8, "query.q"},
    {"long query", fx_query, m_query_long, PS_ETOOBIG, "query.q"},
    {"long user", fx_query, m_user_long, PS_ETOOBIG, "query.user"},
    {"user not UTF-8", fx_query, m_user_utf8, PS_EUTF8, "query.user"},
    {"query reply: too many hits", fx_query_reply, m_qr_hits_many, PS_ETOOBIG, "query_reply.hits"},
    {"query reply: NaN", fx_query_reply, m_qr_hit_nan, PS_EINVAL, "query_reply.hits[1].relevance"},
    {"query reply: too many fields", fx_query_reply, m_qr_fields_many, PS_ETOOBIG,
     "query_reply.fields"},
    {"query reply: fields != hits", fx_query_reply, m_qr_fields_two, PS_EINVAL,
     "query_reply.fields: 2 entries"},
    {"query reply: field not UTF-8", fx_query_reply, m_qr_field_utf8, PS_EUTF8,
     "query_reply.fields[1].emotion"},
    {"query reply: field utility", fx_query_reply, m_qr_field_utility, PS_EINVAL,
     "query_reply.fields[2].utility"},
    {"query reply: field of another hit", fx_query_reply, m_qr_field_id, PS_EINVAL,
     "query_reply.fields[0].id"},
    {"query reply: too many failures", fx_query_reply, m_qr_failures_many, PS_ETOOBIG,
     "query_reply.failures"},
    {"query reply: reason not UTF-8", fx_query_reply, m_qr_failure_utf8, PS_EUTF8,
     "query_reply.failures[1].reason"},
    {"version 2", fx_search, m_version_two, PS_EINVAL, "version"},
    {"version missing", fx_search, m_version_zero, PS_EINVAL, "version"},
    {"version before caps", fx_search, m_version_two_and_caps, PS_EINVAL, "version"},
    {"no body", fx_search, m_no_body, PS_EINVAL, "body"},
};

static void test_caps_and_values(void **state)
{
    (void)state;
    fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->bigvec = calloc(BIGDIM, sizeof *f->bigvec);
    f->bigstr = malloc(PS_WIRE_MAX_STRING + 2);
    assert_non_null(f->bigvec);
    assert_non_null(f->bigstr);
    memset(f->bigstr, 'a', PS_WIRE_MAX_STRING + 1);
    f->bigstr[PS_WIRE_MAX_STRING + 1] = '\0';

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const cap_case *c = &cases[i];
        uint8_t *buf, *out = (uint8_t *)1;
        size_t len, outlen = 1;
        ps_err err = {0, ""};
        print_message("case: %s\n", c->name);

        c->base(f); /* the unbroken message passes both ways */
        buf = raw_pack(&f->env, &len);
        ps_wire_free(decode_ok(buf, len));
        free(buf);
        assert_int_equal(ps_wire_pack(&f->env, &out, &outlen, &err), 0);
        free(out);

        c->mutate(f);
        buf = raw_pack(&f->env, &len);
        expect_decode_fail(buf, len, c->code, c->needle);
        free(buf);
        /* and the encoder refuses to send it */
        int rc = ps_wire_pack(&f->env, &out, &outlen, &err);
        if (rc != c->code || !strstr(err.msg, c->needle))
            fail_msg("pack: got %d \"%s\", want %d naming \"%s\"", rc, err.msg, c->code, c->needle);
        assert_null(out);
        assert_int_equal(outlen, 0);
    }
    free(f->bigvec);
    free(f->bigstr);
    free(f);
}

/* The count caps hold before protobuf-c allocates anything: the raw scan reports them ("more
 * than N entries"); the value checks after unpacking word theirs differently. */
static void test_counts_capped_before_unpack(void **state)
{
    (void)state;
    static void (*const over[])(fx *) = {m_tokens_many,    m_weights_six,     m_centroids_many,
                                         m_vector_long,    m_hits_many,       m_qr_hits_many,
                                         m_qr_fields_many, m_qr_failures_many};
    static void (*const base[])(fx *) = {fx_search, fx_search,      fx_search,      fx_search,
                                         fx_reply,  fx_query_reply, fx_query_reply, fx_query_reply};
    fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->bigvec = calloc(BIGDIM, sizeof *f->bigvec);
    assert_non_null(f->bigvec);
    for (size_t i = 0; i < sizeof over / sizeof over[0]; i++) {
        size_t len;
        base[i](f);
        over[i](f);
        uint8_t *buf = raw_pack(&f->env, &len);
        expect_decode_fail(buf, len, PS_ETOOBIG, "entries");
        expect_decode_fail(buf, len, PS_ETOOBIG, ": more than ");
        free(buf);
    }
    free(f->bigvec);
    free(f);
}

/* ---- malformed frames ------------------------------------------------------------------- */

static void test_nul_in_string(void **state)
{
    (void)state;
    wbuf body = {.n = 0}, env = {.n = 0};
    put_bytes(&body, 1, "a\0b", 3);
    put_u(&body, 3, 10);
    put_envelope(&env, &body);
    expect_decode_fail(env.b, env.n, PS_EINVAL, "search.tokens[0]: contains a NUL byte");

    /* control: the same frame with "ab" decodes */
    body.n = env.n = 0;
    put_bytes(&body, 1, "ab", 2);
    put_u(&body, 3, 10);
    put_envelope(&env, &body);
    Persrv__Envelope *e = decode_ok(env.b, env.n);
    assert_string_equal(e->search->tokens[0], "ab");
    ps_wire_free(e);
}

static void test_unknown_fields(void **state)
{
    (void)state;
    wbuf body = {.n = 0}, env = {.n = 0};
    put_search_body(&body);
    put_u(&body, 99, 12345);            /* a newer peer's field, in the body */
    put_bytes(&body, 100, "future", 6); /* and a length-delimited one */
    put_envelope(&env, &body);
    put_u(&env, 1000, 1); /* and one in the envelope */
    Persrv__Envelope *e = decode_ok(env.b, env.n);
    assert_int_equal(e->search->base.n_unknown_fields, 2);
    assert_int_equal(e->base.n_unknown_fields, 1);
    ps_wire_free(e);

    /* PS_WIRE_MAX_UNKNOWN is the limit per frame */
    size_t cap = env.n + 3 * (PS_WIRE_MAX_UNKNOWN + 1);
    uint8_t *big = malloc(cap);
    size_t n = 0;
    assert_non_null(big);
    memcpy(big, env.b, env.n - 3); /* the frame without its last unknown field */
    n = env.n - 3;
    for (int i = 0; i < PS_WIRE_MAX_UNKNOWN - 2; i++) { /* 2 in the body: exactly at the cap */
        big[n++] = 0xc0;                                /* field 1000, varint: c0 3e */
        big[n++] = 0x3e;
        big[n++] = 0x01;
    }
    e = decode_ok(big, n);
    assert_int_equal(e->base.n_unknown_fields, PS_WIRE_MAX_UNKNOWN - 2);
    ps_wire_free(e);
    big[n++] = 0xc0;
    big[n++] = 0x3e;
    big[n++] = 0x01;
    expect_decode_fail(big, n, PS_ETOOBIG, "unknown fields");
    free(big);
}

static void test_truncated(void **state)
{
    (void)state;
    const char *tokens[] = {"好累", "tired"};
    float cent[3 * 8];
    ps_profile prof = {.k = 3, .dim = 8, .centroids = cent, .radius = {1, 2, 3}};
    ps_search_opts opts;
    uint8_t *buf;
    size_t len;
    ps_err err;

    for (size_t i = 0; i < 24; i++) cent[i] = (float)i / 7;
    ps_search_opts_default(&opts);
    opts.profile = &prof;
    assert_int_equal(ps_wire_encode_search(1, 100, tokens, 2, &opts, 4, &buf, &len, &err), 0);
    size_t body_at = 0;
    while (buf[body_at] != 0x52) body_at++; /* key of field 10 (search), wire type 2 */
    for (size_t cut = 0; cut < len; cut++) {
        Persrv__Envelope *env = (Persrv__Envelope *)1;
        uint8_t *copy = malloc(cut ? cut : 1); /* exactly cut bytes: ASan sees any overread */
        assert_non_null(copy);
        memcpy(copy, buf, cut);
        int rc = ps_wire_decode(copy, cut, 0, &env, &err);
        assert_null(env);
        if (cut == 0)
            assert_int_equal(rc, PS_EPARSE);
        else if (cut <= body_at)
            assert_true(rc == PS_EPARSE || (rc == PS_EINVAL && strstr(err.msg, "body")));
        else
            assert_int_equal(rc, PS_EPARSE); /* cut inside the body */
        free(copy);
    }
    free(buf);
}

static void test_garbage(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        uint8_t b[16];
        size_t n;
        const char *needle;
    } bad[] = {
        {"all ones", {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 8, "frame: malformed"},
        {"group start", {0x08, 0x01, 0x0b}, 3, "frame: malformed or truncated field at byte 2"},
        {"wire type 7", {0x08, 0x01, 0x0f, 0x00}, 4, "at byte 2"},
        {"field 0", {0x00, 0x01}, 2, "at byte 0"},
        {"11-byte varint",
         {0x10, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01},
         12,
         "at byte 0"},
        {"length past end", {0x08, 0x01, 0x52, 0x7f, 0x0a}, 5, "at byte 2"},
        {"version as string", {0x0a, 0x01, 0x31}, 3, "version: wire type 2 where 0 belongs"},
        {"packed floats cut",
         {0x08, 0x01, 0x52, 0x04, 0x12, 0x02, 0x00, 0x00},
         8,
         "search.field_weights: packed run of 2 bytes is not a multiple of 4"},
        {"token as varint", {0x08, 0x01, 0x52, 0x02, 0x08, 0x01}, 6, "search.tokens: wire type 0"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        print_message("garbage: %s\n", bad[i].name);
        expect_decode_fail(bad[i].b, bad[i].n, PS_EPARSE, bad[i].needle);
    }

    /* random bytes, random lengths: an error with a message, or (rarely) a valid envelope */
    uint64_t seed = 7;
    uint8_t buf[256];
    for (int round = 0; round < 20000; round++) {
        size_t n = 1 + (size_t)(ps_splitmix64(&seed) % sizeof buf);
        for (size_t i = 0; i < n; i++) buf[i] = (uint8_t)ps_splitmix64(&seed);
        if (round & 1) buf[0] = 0x08, buf[1] = 0x01; /* version 1 first: get further in */
        Persrv__Envelope *env = NULL;
        ps_err err = {0, ""};
        int rc = ps_wire_decode(buf, n, 0, &env, &err);
        if (rc == 0) {
            assert_non_null(env);
            ps_wire_free(env);
            continue;
        }
        assert_true(rc < 0);
        assert_int_equal(err.code, rc);
        assert_true(err.msg[0] != '\0');
        assert_null(env);
    }
}

static void test_empty_and_over_cap(void **state)
{
    (void)state;
    uint8_t small[8] = {0x08, 0x01, 0x72, 0x00};
    Persrv__Envelope *env = (Persrv__Envelope *)1;
    ps_err err;

    expect_decode_fail(small, 0, PS_EPARSE, "empty");
    assert_int_equal(ps_wire_decode(NULL, 0, 0, &env, &err), PS_EPARSE);

    /* the length is checked before a byte is read: `small` has 8 bytes, ASan would see more */
    env = (Persrv__Envelope *)1;
    assert_int_equal(ps_wire_decode(small, (size_t)PS_WIRE_MAX_FRAME + 1, 0, &env, &err),
                     PS_ETOOBIG);
    assert_null(env);
    assert_non_null(strstr(err.msg, "frame"));
    assert_int_equal(ps_wire_decode(small, SIZE_MAX, 0, &env, &err), PS_ETOOBIG);
    assert_int_equal(ps_wire_decode(small, 5, 4, &env, &err), PS_ETOOBIG);
    /* at the cap is fine: the 4 bytes are a valid health request */
    assert_int_equal(ps_wire_decode(small, 4, 4, &env, &err), 0);
    assert_int_equal(env->body_case, PERSRV__ENVELOPE__BODY_HEALTH);
    ps_wire_free(env);
    ps_wire_free(NULL);
}

static void test_two_bodies(void **state)
{
    (void)state;
    wbuf body = {.n = 0}, env = {.n = 0};
    put_search_body(&body);
    put_envelope(&env, &body);
    put_bytes(&env, 14, "", 0); /* health as well */
    expect_decode_fail(env.b, env.n, PS_EPARSE, "health: set together with search");

    env.n = 0;
    put_envelope(&env, &body);
    put_bytes(&env, 10, body.b, body.n); /* search twice: protobuf would merge them */
    expect_decode_fail(env.b, env.n, PS_EPARSE, "search: set twice");
}

/* Repeated floats may come packed or one per field; both decode the same. */
static void test_unpacked_floats(void **state)
{
    (void)state;
    wbuf body = {.n = 0}, env = {.n = 0};
    const float w[PS_NFIELDS] = {1.0f, 0.5f, 0.1f, 0.1f, 0.1f};
    put_search_body(&body);
    for (int f = 0; f < PS_NFIELDS; f++) {
        put_key(&body, 2, 5);
        memcpy(body.b + body.n, &w[f], 4); /* little-endian host, as the wire */
        body.n += 4;
    }
    put_envelope(&env, &body);
    Persrv__Envelope *e = decode_ok(env.b, env.n);
    assert_int_equal(e->search->n_field_weights, PS_NFIELDS);
    assert_memory_equal(e->search->field_weights, w, sizeof w);
    ps_wire_free(e);

    /* six of them: over the cap before unpacking */
    put_key(&body, 2, 5);
    memcpy(body.b + body.n, &w[0], 4);
    body.n += 4;
    env.n = 0;
    put_envelope(&env, &body);
    expect_decode_fail(env.b, env.n, PS_ETOOBIG, "search.field_weights");
}

/* ---- encoder arguments ------------------------------------------------------------------ */

static void test_encode_rejects(void **state)
{
    (void)state;
    const char *tokens[] = {"a", "b"};
    ps_search_opts opts;
    uint8_t *buf = (uint8_t *)1;
    size_t len = 1;
    ps_err err;
    char nul_field[] = "a\0b";
    ps_sticker_rec rec = {.id = 5, .field = {nul_field}, .field_len = {3}};
    ps_hit hit = {.id = 1, .recall = NAN, .score = 1, .preference = 1, .centroid = -1};

    ps_search_opts_default(&opts);
    assert_int_equal(ps_wire_encode_search(1, 0, tokens, 2, NULL, 0, &buf, &len, &err), PS_EINVAL);
    assert_null(buf);
    assert_int_equal(ps_wire_encode_search(1, 0, NULL, 2, &opts, 0, &buf, &len, &err), PS_EINVAL);
    assert_int_equal(ps_wire_encode_search(1, 0, tokens, 0, &opts, 0, &buf, &len, &err), PS_EQUERY);
    opts.R = 0;
    assert_int_equal(ps_wire_encode_search(1, 0, tokens, 2, &opts, 0, &buf, &len, &err), PS_EINVAL);
    assert_non_null(strstr(err.msg, "recall_depth"));
    ps_search_opts_default(&opts);
    ps_profile bad = {.k = PS_PROFILE_KMAX + 1, .dim = 2};
    opts.profile = &bad;
    assert_int_equal(ps_wire_encode_search(1, 0, tokens, 2, &opts, 0, &buf, &len, &err),
                     PS_ETOOBIG);

    for (int columnar = 0; columnar <= 1; columnar++) {
        assert_int_equal(
            ps_wire_encode_search_reply(1, 0, 0, &hit, 1, 0, columnar, &buf, &len, &err),
            PS_EINVAL);
        assert_non_null(strstr(err.msg, columnar ? "columns[0].recall" : "hits[0].recall"));
        assert_int_equal(
            ps_wire_encode_search_reply(1, 0, 0, NULL, 1, 0, columnar, &buf, &len, &err),
            PS_EINVAL);
        assert_int_equal(ps_wire_encode_search_reply(1, 0, 0, &hit, PS_WIRE_MAX_HITS + 1, 0,
                                                     columnar, &buf, &len, &err),
                         PS_ETOOBIG);
    }

    assert_int_equal(ps_wire_encode_sticker_reply(1, 0, 6, &rec, 0, &buf, &len, &err), PS_EINVAL);
    assert_non_null(strstr(err.msg, "sticker_reply.id"));
    assert_int_equal(ps_wire_encode_sticker_reply(1, 0, 5, &rec, 0, &buf, &len, &err), PS_EINVAL);
    assert_non_null(strstr(err.msg, "sticker_reply.ocr: contains a NUL"));
    rec.field[0] = NULL;
    assert_int_equal(ps_wire_encode_sticker_reply(1, 0, 5, &rec, 0, &buf, &len, &err), PS_EINVAL);
    assert_int_equal(ps_wire_encode_health_reply(1, NULL, &buf, &len, &err), PS_EINVAL);
    assert_null(buf);
    assert_int_equal(len, 0);
    assert_int_equal(ps_wire_pack(NULL, &buf, &len, &err), PS_EINVAL);
    Persrv__Envelope *out;
    assert_int_equal(ps_wire_decode("x", 1, 0, NULL, &err), PS_EINVAL);
    assert_int_equal(ps_wire_decode(NULL, 4, 0, &out, &err), PS_EINVAL);
    assert_null(out);
}

static void test_to_opts_defaults(void **state)
{
    (void)state;
    wbuf body = {.n = 0}, env = {.n = 0};
    ps_search_opts opts, def;
    ps_err err;
    put_search_body(&body); /* no weights: the shard's defaults */
    put_envelope(&env, &body);
    Persrv__Envelope *e = decode_ok(env.b, env.n);
    ps_search_opts_default(&def);
    assert_int_equal(ps_wire_to_opts(e->search, &opts, &err), 0);
    assert_memory_equal(opts.field_w, def.field_w, sizeof def.field_w);
    assert_int_equal(opts.R, 10);
    assert_int_equal(opts.k, 10);
    assert_int_equal(opts.use_utility, 0);
    ps_wire_free(e);
}

/* An API key appended to an encoded request is read as Envelope.api_key (1- and 2-byte length
 * varints); none appended for NULL or ""; over the cap or with a control byte refused. */
static void test_append_api_key(void **state)
{
    (void)state;
    ps_err err;
    for (size_t n = 1; n <= PS_WIRE_MAX_API_KEY; n += n < 120 ? 63 : 7) {
        char key[PS_WIRE_MAX_API_KEY + 1];
        for (size_t i = 0; i < n; i++) key[i] = (char)('a' + i % 26);
        key[n] = '\0';
        uint8_t *buf;
        size_t len;
        assert_int_equal(ps_wire_encode_health(7, 100, &buf, &len, &err), 0);
        assert_int_equal(ps_wire_append_api_key(&buf, &len, key, &err), 0);
        Persrv__Envelope *env = decode_ok(buf, len);
        assert_int_equal(env->body_case, PERSRV__ENVELOPE__BODY_HEALTH);
        assert_true(env->request_id == 7);
        assert_string_equal(env->api_key, key);
        ps_wire_free(env);
        free(buf);
    }
    uint8_t *buf;
    size_t len, before;
    assert_int_equal(ps_wire_encode_health(7, 100, &buf, &len, &err), 0);
    before = len;
    assert_int_equal(ps_wire_append_api_key(&buf, &len, NULL, &err), 0);
    assert_int_equal(ps_wire_append_api_key(&buf, &len, "", &err), 0);
    assert_int_equal(len, before);
    char big[PS_WIRE_MAX_API_KEY + 2];
    memset(big, 'k', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(ps_wire_append_api_key(&buf, &len, big, &err), PS_ETOOBIG);
    assert_int_equal(ps_wire_append_api_key(&buf, &len, "key\nwith a newline", &err), PS_EINVAL);
    assert_int_equal(len, before);
    free(buf);
}

/* Trace ids: appended like a key, checked on both sides (printable ASCII without spaces, at
 * most PS_WIRE_MAX_TRACE bytes); a frame carrying a bad one does not decode. */
static void test_trace(void **state)
{
    (void)state;
    ps_err err;
    uint8_t *buf;
    size_t len, before;
    assert_int_equal(ps_wire_encode_health(9, 0, &buf, &len, &err), 0);
    before = len;
    assert_int_equal(ps_wire_append_trace(&buf, &len, NULL, &err), 0);
    assert_int_equal(len, before);
    assert_int_equal(ps_wire_append_trace(&buf, &len, "chat-42.3", &err), 0);
    Persrv__Envelope *env = decode_ok(buf, len);
    assert_string_equal(env->trace_id, "chat-42.3");
    assert_string_equal(PS_WIRE_TRACE(env), "chat-42.3");
    ps_wire_free(env);
    char big[PS_WIRE_MAX_TRACE + 2];
    memset(big, 't', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(ps_wire_append_trace(&buf, &len, big, &err), PS_ETOOBIG);
    assert_int_equal(ps_wire_append_trace(&buf, &len, "a b", &err), PS_EINVAL);
    big[PS_WIRE_MAX_TRACE] = '\0';
    assert_int_equal(ps_wire_check_trace(big, &err), 0);
    free(buf);
    /* a space smuggled in by a peer that does not check: refused by the decoder */
    assert_int_equal(ps_wire_encode_health(9, 0, &buf, &len, &err), 0);
    assert_int_equal(ps_wire_append_api_key(&buf, &len, "x", &err), 0);
    /* the key went in as tag, length 1, 'x': re-tag it as trace_id (5) of length 2, "x " */
    uint8_t *b2 = realloc(buf, len + 1);
    assert_non_null(b2);
    buf = b2;
    buf[len - 3] = (5 << 3) | 2;
    buf[len - 2] = 2;
    buf[len++] = ' ';
    env = NULL;
    assert_int_equal(ps_wire_decode(buf, len, PS_WIRE_MAX_FRAME, &env, &err), PS_EINVAL);
    assert_null(env);
    free(buf);
}

/* A batch of search frames: encoded, decoded, each element decodes to its search; a batch
 * reply likewise; more than PS_WIRE_MAX_BATCH elements is refused on both sides. */
static void test_batch(void **state)
{
    (void)state;
    ps_err err;
    const char *toks[] = {"好", "累"};
    ps_search_opts o;
    ps_search_opts_default(&o);
    uint8_t *f[PS_WIRE_MAX_BATCH + 1];
    size_t fl[PS_WIRE_MAX_BATCH + 1];
    for (int i = 0; i <= PS_WIRE_MAX_BATCH; i++) {
        o.R = (uint32_t)(10 + i);
        assert_int_equal(ps_wire_encode_search(0, 0, toks, 2, &o, 0, &f[i], &fl[i], &err), 0);
    }
    uint8_t *buf;
    size_t len;
    assert_int_equal(
        ps_wire_encode_batch(3, 50, 0, (const uint8_t *const *)f, fl, 5, &buf, &len, &err), 0);
    Persrv__Envelope *env = decode_ok(buf, len);
    assert_int_equal(env->body_case, PERSRV__ENVELOPE__BODY_BATCH);
    assert_int_equal(env->batch->n_requests, 5);
    for (int i = 0; i < 5; i++) {
        Persrv__Envelope *sub =
            decode_ok(env->batch->requests[i].data, env->batch->requests[i].len);
        assert_int_equal(sub->body_case, PERSRV__ENVELOPE__BODY_SEARCH);
        assert_int_equal(sub->search->recall_depth, 10 + i);
        ps_wire_free(sub);
    }
    ps_wire_free(env);
    free(buf);
    assert_int_equal(
        ps_wire_encode_batch(3, 0, 1, (const uint8_t *const *)f, fl, 2, &buf, &len, &err), 0);
    env = decode_ok(buf, len);
    assert_int_equal(env->body_case, PERSRV__ENVELOPE__BODY_BATCH_REPLY);
    assert_int_equal(env->batch_reply->n_replies, 2);
    ps_wire_free(env);
    free(buf);
    assert_int_equal(ps_wire_encode_batch(3, 0, 0, (const uint8_t *const *)f, fl,
                                          PS_WIRE_MAX_BATCH + 1, &buf, &len, &err),
                     PS_ETOOBIG);
    /* 33 elements packed by hand (protobuf-c does not check counts): the decoder refuses them */
    Persrv__Envelope e = PERSRV__ENVELOPE__INIT;
    Persrv__BatchRequest q = PERSRV__BATCH_REQUEST__INIT;
    ProtobufCBinaryData items[PS_WIRE_MAX_BATCH + 1];
    for (int i = 0; i <= PS_WIRE_MAX_BATCH; i++) items[i] = (ProtobufCBinaryData){fl[i], f[i]};
    q.n_requests = PS_WIRE_MAX_BATCH + 1;
    q.requests = items;
    e.version = PS_WIRE_VERSION;
    e.body_case = PERSRV__ENVELOPE__BODY_BATCH;
    e.batch = &q;
    len = persrv__envelope__get_packed_size(&e);
    buf = malloc(len);
    assert_non_null(buf);
    persrv__envelope__pack(&e, buf);
    env = NULL;
    assert_int_equal(ps_wire_decode(buf, len, PS_WIRE_MAX_FRAME, &env, &err), PS_ETOOBIG);
    free(buf);
    for (int i = 0; i <= PS_WIRE_MAX_BATCH; i++) free(f[i]);
}

/* A search encoded once with request_id 0 and deadline 0, then stamped: the decoder reads the
 * stamped ids (small and largest values), the body is untouched, a second stamp overrides the
 * first (zeros too), ps_wire_peek_request_id agrees, and an API key appended after still
 * counts. */
static void test_stamp(void **state)
{
    (void)state;
    ps_err err;
    ps_search_opts opts;
    ps_search_opts_default(&opts);
    const char *tokens[2] = {"so", "tired"};
    uint8_t *buf;
    size_t len;
    assert_int_equal(ps_wire_encode_search(0, 0, tokens, 2, &opts, 5, &buf, &len, &err), 0);
    const uint64_t ids[] = {1, 127, 128, 300, 1ull << 40, UINT64_MAX};
    const uint32_t deadlines[] = {1, 250, 0, 16384, 60000, UINT32_MAX};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        uint8_t frame[1024];
        assert_true(len + 2 * PS_WIRE_STAMP_MAX <= sizeof frame);
        memcpy(frame, buf, len);
        size_t n = len + ps_wire_stamp(frame + len, ids[i], deadlines[i]);
        assert_true(n - len <= PS_WIRE_STAMP_MAX);
        Persrv__Envelope *e = decode_ok(frame, n);
        assert_true(e->request_id == ids[i]);
        assert_true(e->deadline_ms == deadlines[i]);
        assert_int_equal(e->body_case, PERSRV__ENVELOPE__BODY_SEARCH);
        assert_int_equal(e->search->n_tokens, 2);
        assert_string_equal(e->search->tokens[1], "tired");
        assert_true(e->search->snapshot_version == 5);
        ps_wire_free(e);
        assert_true(ps_wire_peek_request_id(frame, n) == ids[i]);

        /* stamped again: the last stamp wins, zeros included */
        size_t m = n + ps_wire_stamp(frame + n, 0, 0);
        e = decode_ok(frame, m);
        assert_true(e->request_id == 0);
        assert_true(e->deadline_ms == 0);
        ps_wire_free(e);
    }
    uint8_t *k = malloc(len + PS_WIRE_STAMP_MAX);
    assert_non_null(k);
    memcpy(k, buf, len);
    size_t kl = len + ps_wire_stamp(k + len, 42, 9);
    assert_int_equal(ps_wire_append_api_key(&k, &kl, "key-1", &err), 0);
    Persrv__Envelope *e = decode_ok(k, kl);
    assert_true(e->request_id == 42 && e->deadline_ms == 9);
    assert_string_equal(e->api_key, "key-1");
    ps_wire_free(e);
    free(k);
    free(buf);
}

/* A client's click (no embedding) round-trips with its click id; click ids outside
 * 1..PS_WIRE_MAX_CLICK_ID bytes of 0x21..0x7e are refused on encode and on decode, in a click
 * and in a click_reply; "" means none. */
static void test_click_id(void **state)
{
    (void)state;
    ps_err err;
    uint8_t *buf;
    size_t len;
    char longest[PS_WIRE_MAX_CLICK_ID + 1];
    memset(longest, '~', PS_WIRE_MAX_CLICK_ID);
    longest[PS_WIRE_MAX_CLICK_ID] = '\0';
    const char *good[] = {"c-1", "!", longest, "AbZ09_-.:/+=@"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        assert_int_equal(ps_wire_check_click_id(good[i], "id", &err), 0);
        assert_int_equal(
            ps_wire_encode_click(9, 500, "u01", UINT64_MAX, "好累", good[i], &buf, &len, &err), 0);
        Persrv__Envelope *env = decode_ok(buf, len);
        assert_int_equal(env->body_case, PERSRV__ENVELOPE__BODY_CLICK);
        assert_string_equal(env->click->user, "u01");
        assert_true(env->click->sticker_id == UINT64_MAX);
        assert_string_equal(env->click->query, "好累");
        assert_string_equal(env->click->click_id, good[i]);
        assert_int_equal(env->click->n_embedding, 0);
        ps_wire_free(env);
        free(buf);
    }
    /* none: NULL or "" */
    assert_int_equal(ps_wire_encode_click(9, 0, "u01", 1, NULL, NULL, &buf, &len, &err), 0);
    Persrv__Envelope *env = decode_ok(buf, len);
    assert_string_equal(env->click->click_id, "");
    assert_string_equal(env->click->query, "");
    ps_wire_free(env);
    free(buf);

    char over[PS_WIRE_MAX_CLICK_ID + 2];
    memset(over, 'x', sizeof over - 1);
    over[sizeof over - 1] = '\0';
    static const struct {
        const char *id;
        int code;
    } bad[] = {{"has space", PS_EINVAL},
               {"tab\there", PS_EINVAL},
               {"caf\xc3\xa9", PS_EINVAL},
               {"del\x7f", PS_EINVAL},
               {NULL, PS_ETOOBIG}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *id = bad[i].id ? bad[i].id : over;
        assert_int_equal(ps_wire_check_click_id(id, "id", &err), bad[i].code);
        assert_int_equal(ps_wire_encode_click(9, 0, "u01", 1, "", id, &buf, &len, &err),
                         bad[i].code);
        assert_null(buf);
        assert_non_null(strstr(err.msg, "click.click_id"));
        /* a broken peer's frame: refused on decode, naming the field */
        Persrv__ClickRequest c = PERSRV__CLICK_REQUEST__INIT;
        Persrv__Envelope e = PERSRV__ENVELOPE__INIT;
        c.user = "u01";
        c.click_id = (char *)id;
        e.version = PS_WIRE_VERSION;
        e.body_case = PERSRV__ENVELOPE__BODY_CLICK;
        e.click = &c;
        uint8_t *raw = raw_pack(&e, &len);
        expect_decode_fail(raw, len, bad[i].code, "click.click_id");
        free(raw);
        Persrv__ClickReply r = PERSRV__CLICK_REPLY__INIT;
        r.click_id = (char *)id;
        e.body_case = PERSRV__ENVELOPE__BODY_CLICK_REPLY;
        e.click_reply = &r;
        raw = raw_pack(&e, &len);
        expect_decode_fail(raw, len, bad[i].code, "click_reply.click_id");
        free(raw);
    }
    assert_int_equal(ps_wire_check_click_id("", "id", &err), PS_EINVAL);
    assert_int_equal(ps_wire_check_click_id(NULL, "id", &err), PS_EINVAL);
    assert_int_equal(ps_wire_encode_click(9, 0, "", 1, "", "c", &buf, &len, &err), PS_EINVAL);
    assert_int_equal(ps_wire_encode_click(9, 0, NULL, 1, "", "c", &buf, &len, &err), PS_EINVAL);

    /* a click_reply names the id and whether it was a duplicate */
    Persrv__ClickReply r = PERSRV__CLICK_REPLY__INIT;
    Persrv__Envelope e = PERSRV__ENVELOPE__INIT;
    r.seq = 77;
    r.duplicate = 1;
    r.click_id = "c-1";
    e.version = PS_WIRE_VERSION;
    e.body_case = PERSRV__ENVELOPE__BODY_CLICK_REPLY;
    e.click_reply = &r;
    assert_int_equal(ps_wire_pack(&e, &buf, &len, &err), 0);
    env = decode_ok(buf, len);
    assert_true(env->click_reply->seq == 77 && env->click_reply->duplicate);
    assert_string_equal(env->click_reply->click_id, "c-1");
    ps_wire_free(env);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_search_round_trip),
        cmocka_unit_test(test_profile_5x512_bit_exact),
        cmocka_unit_test(test_search_reply_round_trip),
        cmocka_unit_test(test_search_reply_columns_bad),
        cmocka_unit_test(test_sticker_round_trip),
        cmocka_unit_test(test_health_round_trip),
        cmocka_unit_test(test_error_round_trip),
        cmocka_unit_test(test_error_message_sanitized),
        cmocka_unit_test(test_query_round_trip),
        cmocka_unit_test(test_query_reply_round_trip),
        cmocka_unit_test(test_peek_request_id),
        cmocka_unit_test(test_caps_and_values),
        cmocka_unit_test(test_counts_capped_before_unpack),
        cmocka_unit_test(test_nul_in_string),
        cmocka_unit_test(test_unknown_fields),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_empty_and_over_cap),
        cmocka_unit_test(test_two_bodies),
        cmocka_unit_test(test_unpacked_floats),
        cmocka_unit_test(test_encode_rejects),
        cmocka_unit_test(test_to_opts_defaults),
        cmocka_unit_test(test_append_api_key),
        cmocka_unit_test(test_trace),
        cmocka_unit_test(test_batch),
        cmocka_unit_test(test_stamp),
        cmocka_unit_test(test_click_id),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
