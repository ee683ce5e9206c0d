/*
 * test_index.c — the index, search and store on hand-built corpora: BM25F and recall values
 * computed by hand, tie order, build-order checks, corrupt index directories, and the dense
 * lists' palettes (ps_int.h) with and without them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <rocksdb/c.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ps/search.h"
#include "ps/store.h"
#include "ps_int.h"

#define DIM 4

typedef struct doc {
    uint64_t id;
    float utility;
    const char *field[PS_NFIELDS]; /* ocr, queries, keywords, desc, emotion */
} doc;

/* A: ocr 好累; B: ocr 好的; C and D: keywords 累 (identical, tie on everything but id). */
static const doc DOCS[] = {
    {10, 2.0f, {"好累", NULL, NULL, NULL, NULL}},
    {20, 1.0f, {"好的", NULL, NULL, NULL, NULL}},
    {30, 1.0f, {NULL, NULL, "累", NULL, NULL}},
    {40, 1.0f, {NULL, NULL, "累", NULL, NULL}},
};
#define NDOCS (sizeof DOCS / sizeof DOCS[0])

static ps_index_t *build(const doc *docs, size_t n)
{
    ps_analyzer_t *an = ps_analyzer_new(NULL);
    ps_tokens tok[PS_NFIELDS];
    ps_ixbuild_t *b = ps_ixbuild_new(n, DIM, NULL);
    assert_non_null(an);
    assert_non_null(b);
    for (int f = 0; f < PS_NFIELDS; f++) ps_tokens_init(&tok[f]);
    for (size_t i = 0; i < n; i++) {
        const ps_tokens *fields[PS_NFIELDS];
        for (int f = 0; f < PS_NFIELDS; f++) {
            const char *t = docs[i].field[f] ? docs[i].field[f] : "";
            assert_int_equal(ps_analyze(an, t, strlen(t), "test", &tok[f], NULL), 0);
            fields[f] = &tok[f];
        }
        assert_int_equal(ps_ixbuild_add(b, docs[i].id, docs[i].utility, fields, NULL), 0);
    }
    ps_index_t *ix = ps_ixbuild_finish(&b, NULL);
    assert_null(b);
    assert_non_null(ix);
    float *emb = calloc(n * DIM, sizeof *emb);
    for (size_t i = 0; i < n; i++) emb[i * DIM + i % DIM] = 1.0f; /* unit vectors */
    ps_index_set_embeddings(ix, &emb);
    assert_null(emb);
    for (int f = 0; f < PS_NFIELDS; f++) ps_tokens_free(&tok[f]);
    ps_analyzer_free(an);
    return ix;
}

static void test_hand_computed_scores(void **state)
{
    (void)state;
    ps_index_t *ix = build(DOCS, NDOCS);
    ps_searcher_t *s = ps_searcher_new(ix, NULL);
    ps_hit hits[10];
    size_t nh = 0;
    ps_search_opts o;
    ps_search_opts_default(&o);
    assert_int_equal(ps_index_field_stats(ix, PS_F_OCR)->ndocs, 2);
    assert_true(ps_index_field_stats(ix, PS_F_OCR)->avgdl == 3.0);

    for (int exhaustive = 0; exhaustive <= 1; exhaustive++) {
        o.exhaustive = exhaustive;
        assert_int_equal(ps_search(s, "累", strlen("累"), &o, hits, &nh, NULL, NULL), 0);
        /* ocr: N=2, df=1, idf = ln 2; A has tf 1, dl 3 = avgdl, so tfn = 1 and rel = ln 2.
         * keywords: N=2, df=2, idf = ln(1 + 0.5/2.5); tfn = 1; weight 0.1. */
        double rel_a = log(2.0), rel_c = 0.1 * log(1.0 + 0.5 / 2.5);
        assert_int_equal(nh, 3);
        assert_int_equal(hits[0].id, 10);
        assert_true(fabs(hits[0].relevance - rel_a) < 1e-6);
        assert_true(fabs(hits[0].recall - (rel_a + 2.0)) < 1e-6);
        /* C and D tie on every score: the smaller id first. */
        assert_int_equal(hits[1].id, 30);
        assert_int_equal(hits[2].id, 40);
        assert_true(fabs(hits[1].relevance - rel_c) < 1e-6);
        assert_true(hits[1].score == hits[2].score);
    }
    /* Without utility, the order is by relevance alone. */
    o.use_utility = 0;
    assert_int_equal(ps_search(s, "累 的", strlen("累 的"), &o, hits, &nh, NULL, NULL), 0);
    assert_int_equal(nh, 4);
    assert_int_equal(hits[0].id, 10);
    assert_int_equal(hits[1].id, 20); /* 的 in ocr beats 累 in keywords (weight 0.1) */
    assert_true(hits[0].utility == 0.0);
    /* k cuts the list, R bounds the recall set. */
    o.k = 1;
    o.R = 2;
    assert_int_equal(ps_search(s, "累 的", strlen("累 的"), &o, hits, &nh, NULL, NULL), 0);
    assert_int_equal(nh, 1);
    /* A weight of 0 switches a field off. */
    ps_search_opts_default(&o);
    o.field_w[PS_F_KEYWORDS] = 0.0f;
    assert_int_equal(ps_search(s, "累", strlen("累"), &o, hits, &nh, NULL, NULL), 0);
    assert_int_equal(nh, 1);
    ps_searcher_free(s);
    ps_index_free(ix);
}

static void test_preference(void **state)
{
    (void)state;
    ps_index_t *ix = build(DOCS, NDOCS);
    ps_searcher_t *s = ps_searcher_new(ix, NULL);
    /* One centroid on D's embedding (axis 3) with radius 0: only D is near; cos = 1. */
    float centroid[DIM] = {0, 0, 0, 1};
    ps_profile p = {.k = 1, .dim = DIM, .centroids = centroid, .radius = {0.0}};
    ps_hit hits[10];
    size_t nh = 0;
    ps_search_opts o;
    ps_search_opts_default(&o);
    o.profile = &p;
    assert_int_equal(ps_search(s, "累", strlen("累"), &o, hits, &nh, NULL, NULL), 0);
    assert_int_equal(nh, 3);
    assert_int_equal(hits[0].id, 10);
    assert_int_equal(hits[1].id, 40); /* lifted by 1 + α above its twin C */
    assert_int_equal(hits[1].centroid, 0);
    assert_true(fabs(hits[1].preference - 1.3) < 1e-6);
    assert_true(fabs(hits[1].score - hits[1].recall * 1.3) < 1e-6);
    assert_int_equal(hits[2].id, 30);
    assert_int_equal(hits[2].centroid, -1);
    assert_true(hits[2].score == hits[2].recall);
    /* A profile of another dimension is refused. */
    p.dim = DIM + 1;
    assert_int_equal(ps_search(s, "累", strlen("累"), &o, hits, &nh, NULL, NULL), PS_EINVAL);
    ps_searcher_free(s);
    ps_index_free(ix);
}

static void test_build_order_checked(void **state)
{
    (void)state;
    ps_ixbuild_t *b = ps_ixbuild_new(3, DIM, NULL);
    const ps_tokens *none[PS_NFIELDS] = {0};
    ps_err err = {0};
    assert_int_equal(ps_ixbuild_add(b, 5, 1.0f, none, &err), 0);
    assert_int_equal(ps_ixbuild_add(b, 6, 2.0f, none, &err), PS_EINVAL); /* utility rises */
    assert_non_null(strstr(err.msg, "out of order"));
    assert_int_equal(ps_ixbuild_add(b, 7, -1.0f, none, &err), PS_EINVAL);
    assert_int_equal(ps_ixbuild_add(b, 7, NAN, none, &err), PS_EINVAL);
    assert_int_equal(ps_ixbuild_add(b, 4, 1.0f, none, &err), 0); /* a tie in any id order */
    assert_int_equal(ps_ixbuild_add(b, 8, 0.5f, none, &err), 0);
    assert_int_equal(ps_ixbuild_add(b, 9, 0.5f, none, &err), PS_EINVAL); /* over capacity */
    assert_non_null(strstr(err.msg, "more stickers"));
    ps_index_t *ix = ps_ixbuild_finish(&b, &err);
    assert_non_null(ix);
    uint32_t doc;
    assert_int_equal(ps_index_doc(ix, 4, &doc), 0);
    assert_int_equal(doc, 1);
    assert_int_equal(ps_index_doc(ix, 99, &doc), PS_ENOTFOUND);
    ps_index_free(ix);
    /* A repeated id is found when the build finishes. */
    b = ps_ixbuild_new(2, DIM, NULL);
    assert_int_equal(ps_ixbuild_add(b, 5, 1.0f, none, &err), 0);
    assert_int_equal(ps_ixbuild_add(b, 5, 1.0f, none, &err), 0);
    assert_null(ps_ixbuild_finish(&b, &err));
    assert_int_equal(err.code, PS_EINVAL);
    assert_non_null(strstr(err.msg, "twice"));
    ps_ixbuild_free(NULL);
    ps_index_free(NULL);
}

/* ------------------------------------------------------------------------------------------
 * Store: round trip and corrupt directories.
 */

static char tmpdir[64];

static const char *doc_text(void *ctx, uint32_t d, int f, size_t *len)
{
    (void)ctx;
    const char *t = DOCS[d].field[f];
    *len = t ? strlen(t) : 0;
    return t;
}

static void write_store(const char *path, const ps_index_t *ix, const float *emb)
{
    float c[DIM] = {1, 0, 0, 0};
    ps_profile p = {.k = 1, .dim = DIM, .centroids = c, .radius = {0.5}};
    const char *users[1] = {"alice"};
    ps_store_input in = {
        .ix = ix, .emb = emb, .text = doc_text, .nprofiles = 1, .users = users, .profiles = &p};
    ps_err err = {0};
    if (ps_store_write(path, &in, &err)) fail_msg("write %s: %s", path, err.msg);
}

static int store_setup(void **state)
{
    (void)state;
    strcpy(tmpdir, "/tmp/ps_test_index_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int store_teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void rocks_put(const char *path, const char *k, size_t kl, const char *v, size_t vl)
{
    char *e = NULL;
    rocksdb_options_t *o = rocksdb_options_create();
    rocksdb_t *db = rocksdb_open(o, path, &e);
    assert_null(e);
    rocksdb_writeoptions_t *wo = rocksdb_writeoptions_create();
    if (v)
        rocksdb_put(db, wo, k, kl, v, vl, &e);
    else
        rocksdb_delete(db, wo, k, kl, &e);
    assert_null(e);
    rocksdb_writeoptions_destroy(wo);
    rocksdb_close(db);
    rocksdb_options_destroy(o);
}

static void test_store_roundtrip_and_corruption(void **state)
{
    (void)state;
    ps_index_t *ix = build(DOCS, NDOCS);
    float emb[NDOCS * DIM] = {0};
    for (size_t i = 0; i < NDOCS; i++) emb[i * DIM + i % DIM] = 1.0f;
    char path[128];
    ps_err err = {0};

    snprintf(path, sizeof path, "%s/good", tmpdir);
    write_store(path, ix, emb);
    ps_store_t *st = ps_store_open(path, &err);
    if (!st) fail_msg("open: %s", err.msg);
    ps_searcher_t *s = ps_searcher_new(ps_store_index(st), NULL);
    ps_profile p = {0};
    assert_int_equal(ps_store_profile(st, "alice", &p, &err), 0);
    assert_int_equal(p.k, 1);
    assert_true(p.radius[0] == 0.5);
    ps_hit hits[10];
    size_t nh = 0;
    ps_search_opts o;
    ps_search_opts_default(&o);
    o.profile = &p;
    assert_int_equal(ps_search(s, "好", strlen("好"), &o, hits, &nh, NULL, &err), 0);
    assert_int_equal(nh, 2);
    assert_int_equal(hits[0].id, 10); /* its embedding is the centroid: preference 1.3 */
    assert_true(fabs(hits[0].preference - 1.3) < 1e-6);
    char *fields[PS_NFIELDS];
    assert_int_equal(ps_store_fields(st, 0, fields, &err), 0);
    assert_string_equal(fields[PS_F_OCR], "好累");
    assert_string_equal(fields[PS_F_DESC], "");
    for (int f = 0; f < PS_NFIELDS; f++) free(fields[f]);
    ps_profile_clear(&p);
    ps_searcher_free(s);
    ps_store_close(st);

    /* Truncated embeddings file. */
    snprintf(path, sizeof path, "%s/trunc", tmpdir);
    write_store(path, ix, emb);
    char f[160];
    snprintf(f, sizeof f, "%s/%s", path, PS_STORE_EMB_FILE);
    assert_int_equal(truncate(f, 10), 0);
    assert_null(ps_store_open(path, &err));
    assert_int_equal(err.code, PS_ECORRUPT);
    assert_non_null(strstr(err.msg, PS_STORE_EMB_FILE));

    /* Missing metadata. */
    snprintf(path, sizeof path, "%s/nometa", tmpdir);
    write_store(path, ix, emb);
    rocks_put(path, "M", 1, NULL, 0);
    assert_null(ps_store_open(path, &err));
    assert_int_equal(err.code, PS_ENOTFOUND);

    /* A garbled posting list and a garbled doc record. */
    snprintf(path, sizeof path, "%s/badlist", tmpdir);
    write_store(path, ix, emb);
    rocks_put(path, "P\0\xe7\xb4\xaf", 5, "\xff\xff\xff", 3);
    assert_null(ps_store_open(path, &err));
    assert_int_equal(err.code, PS_ECORRUPT);
    snprintf(path, sizeof path, "%s/baddoc", tmpdir);
    write_store(path, ix, emb);
    rocks_put(path, "D\0\0\0\1", 5, "short", 5);
    assert_null(ps_store_open(path, &err));
    assert_int_equal(err.code, PS_ECORRUPT);
    /* A doc whose utility rises above the doc before it: the window bounds would be wrong. */
    snprintf(path, sizeof path, "%s/risingutil", tmpdir);
    write_store(path, ix, emb);
    {
        char v[12 + 4 * PS_NFIELDS] = {0};
        float big = 1e6f;
        v[0] = 77; /* id 77 */
        memcpy(v + 8, &big, 4);
        rocks_put(path, "D\0\0\0\1", 5, v, sizeof v);
    }
    assert_null(ps_store_open(path, &err));
    assert_int_equal(err.code, PS_ECORRUPT);
    assert_non_null(strstr(err.msg, "utility"));

    /* A future format version is refused, not misread. */
    snprintf(path, sizeof path, "%s/future", tmpdir);
    write_store(path, ix, emb);
    {
        char *e = NULL;
        size_t len = 0;
        rocksdb_options_t *o2 = rocksdb_options_create();
        rocksdb_t *db = rocksdb_open(o2, path, &e);
        rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
        char *v = rocksdb_get(db, ro, "M", 1, &len, &e);
        assert_non_null(v);
        v[4] = 99;
        rocksdb_writeoptions_t *wo = rocksdb_writeoptions_create();
        rocksdb_put(db, wo, "M", 1, v, len, &e);
        rocksdb_free(v);
        rocksdb_writeoptions_destroy(wo);
        rocksdb_readoptions_destroy(ro);
        rocksdb_close(db);
        rocksdb_options_destroy(o2);
    }
    assert_null(ps_store_open(path, &err));
    assert_int_equal(err.code, PS_ECORRUPT);
    assert_non_null(strstr(err.msg, "format"));

    /* Not a directory at all. */
    snprintf(path, sizeof path, "%s/none", tmpdir);
    assert_null(ps_store_open(path, &err));
    assert_int_equal(err.code, PS_ENOTFOUND);
    ps_index_free(ix);
}

/* Images: stored after the fields for docs that have one, read back with the fields; a T
 * record without one (as every index before images) reads as none; a malformed tail is
 * corrupt. */
static const char *doc_image(void *ctx, uint32_t d, size_t *len)
{
    (void)ctx;
    static char buf[32];
    if (d % 2) {
        *len = 0;
        return NULL;
    }
    *len = (size_t)snprintf(buf, sizeof buf, "i%u/%u.png", d, d);
    return buf;
}

static void test_store_images(void **state)
{
    (void)state;
    ps_index_t *ix = build(DOCS, NDOCS);
    float emb[NDOCS * DIM] = {0};
    char path[128];
    ps_err err = {0};
    snprintf(path, sizeof path, "%s/images", tmpdir);
    ps_store_input in = {.ix = ix, .emb = emb, .text = doc_text, .image = doc_image};
    if (ps_store_write(path, &in, &err)) fail_msg("write %s: %s", path, err.msg);
    ps_store_t *st = ps_store_open(path, &err);
    if (!st) fail_msg("open: %s", err.msg);
    for (uint32_t d = 0; d < ps_index_ndocs(ps_store_index(st)); d++) {
        char *fields[PS_NFIELDS], *image = (char *)"x", want[32];
        assert_int_equal(ps_store_fields_image(st, d, fields, &image, &err), 0);
        assert_string_equal(fields[PS_F_OCR],
                            DOCS[d].field[PS_F_OCR] ? DOCS[d].field[PS_F_OCR] : "");
        if (d % 2) {
            assert_null(image);
        } else {
            snprintf(want, sizeof want, "i%u/%u.png", d, d);
            assert_string_equal(image, want);
        }
        for (int f = 0; f < PS_NFIELDS; f++) free(fields[f]);
        free(image);
        assert_int_equal(ps_store_fields(st, d, fields, &err), 0); /* without the image */
        for (int f = 0; f < PS_NFIELDS; f++) free(fields[f]);
    }
    ps_store_close(st);

    /* doc 0's record: 5 empty fields and then a tail that is not one image reference */
    static const struct {
        const char *v;
        size_t n;
        const char *image; /* NULL: corrupt */
    } recs[] = {{"\0\0\0\0\0", 5, ""},        {"\0\0\0\0\0\3a.b", 9, "a.b"},
                {"\0\0\0\0\0\4a.b", 9, NULL}, {"\0\0\0\0\0\2a.b", 9, NULL},
                {"\0\0\0\0\0\0", 6, NULL},    {"\0\0\0\0\0\3a\0b", 9, NULL}};
    for (size_t i = 0; i < sizeof recs / sizeof recs[0]; i++) {
        rocks_put(path, "T\0\0\0\0", 5, recs[i].v, recs[i].n);
        if (!(st = ps_store_open(path, &err))) fail_msg("open: %s", err.msg);
        char *fields[PS_NFIELDS], *image = NULL;
        int rc = ps_store_fields_image(st, 0, fields, &image, &err);
        if (!recs[i].image) {
            assert_int_equal(rc, PS_ECORRUPT);
            assert_non_null(strstr(err.msg, "image of doc 0"));
            assert_null(image);
            for (int f = 0; f < PS_NFIELDS; f++) assert_null(fields[f]);
        } else {
            assert_int_equal(rc, 0);
            if (recs[i].image[0])
                assert_string_equal(image, recs[i].image);
            else
                assert_null(image);
            for (int f = 0; f < PS_NFIELDS; f++) free(fields[f]);
            free(image);
        }
        ps_store_close(st);
    }
    ps_index_free(ix);
}

/* Dense lists are probed through a palette of their ptfn values when they have at most 256
 * of them, else read as they are: a corpus with one of each, where the pruned search must
 * still equal the exhaustive one bit for bit. "x" is in every desc with tf 1..4 and desc
 * lengths 4..100 (388 (tf, dl) pairs: no palette); "y" in every ocr with 5 lengths (a
 * palette); "z" in one keywords field in 37, the rare clause that makes the others
 * non-essential. */
static void test_dense_palettes(void **state)
{
    (void)state;
    enum { N = 4000 };
    static char text[N][3][512];
    doc *docs = calloc(N, sizeof *docs);
    assert_non_null(docs);
    for (size_t i = 0; i < N; i++) {
        char *desc = text[i][0], *ocr = text[i][1], *kw = text[i][2];
        size_t tf = 1 + i % 4, filler = i % 97, o = 0;
        for (size_t t = 0; t < tf; t++) o += (size_t)snprintf(desc + o, 512 - o, "x ");
        for (size_t t = 0; t < filler; t++) o += (size_t)snprintf(desc + o, 512 - o, "w ");
        o = (size_t)snprintf(ocr, 512, "y");
        for (size_t t = 0; t < i % 5; t++) o += (size_t)snprintf(ocr + o, 512 - o, " v%zu", t);
        snprintf(kw, 512, "%s", i % 37 == 0 ? "z k" : "k");
        docs[i].id = 1000 + i;
        docs[i].utility = (float)(N - i) / N;
        docs[i].field[PS_F_DESC] = desc;
        docs[i].field[PS_F_OCR] = ocr;
        docs[i].field[PS_F_KEYWORDS] = kw;
    }
    ps_index_t *ix = build(docs, N);
    int64_t x = ps__dict_find(&ix->dict, "x", 1), y = ps__dict_find(&ix->dict, "y", 1);
    assert_true(x >= 0 && y >= 0);
    const ps__plist *lx = &ix->lists[ix->dict.terms[x].list[PS_F_DESC]];
    const ps__plist *ly = &ix->lists[ix->dict.terms[y].list[PS_F_OCR]];
    assert_int_not_equal(lx->dense, PS_NOLIST);
    assert_int_not_equal(ly->dense, PS_NOLIST);
    assert_int_equal(lx->pal, PS_NOLIST);     /* 388 values */
    assert_int_not_equal(ly->pal, PS_NOLIST); /* 5 values */
    for (uint32_t i = 0; i < ly->n; i++)
        assert_true(ix->palette[ly->pal + ix->pq[ly->off + i]] == ix->ptfn[ly->off + i]);

    static const char *queries[] = {"z x y", "x y z", "z x", "z y", "x y", "z"};
    static const uint32_t Rs[] = {1, 5, 20, 100};
    ps_searcher_t *s = ps_searcher_new(ix, NULL);
    ps_hit a[100], b[100];
    uint64_t probes = 0;
    for (size_t q = 0; q < sizeof queries / sizeof *queries; q++)
        for (size_t r = 0; r < sizeof Rs / sizeof *Rs; r++) {
            ps_search_opts o;
            ps_search_opts_default(&o);
            o.R = Rs[r];
            o.k = Rs[r];
            ps_search_stats st;
            size_t na = 0, nb = 0;
            assert_int_equal(ps_search(s, queries[q], strlen(queries[q]), &o, a, &na, &st, NULL),
                             0);
            probes += st.probes;
            o.exhaustive = 1;
            assert_int_equal(ps_search(s, queries[q], strlen(queries[q]), &o, b, &nb, NULL, NULL),
                             0);
            assert_int_equal(na, nb);
            for (size_t i = 0; i < na; i++) {
                assert_int_equal(a[i].id, b[i].id);
                assert_memory_equal(&a[i].recall, &b[i].recall, sizeof a[i].recall);
                assert_memory_equal(&a[i].relevance, &b[i].relevance, sizeof a[i].relevance);
            }
        }
    assert_true(probes > 0); /* the dense lists were probed, not only scanned */
    ps_searcher_free(s);
    ps_index_free(ix);
    free(docs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hand_computed_scores),
        cmocka_unit_test(test_preference),
        cmocka_unit_test(test_build_order_checked),
        cmocka_unit_test(test_dense_palettes),
        cmocka_unit_test_setup_teardown(test_store_images, store_setup, store_teardown),
        cmocka_unit_test_setup_teardown(test_store_roundtrip_and_corruption, store_setup,
                                        store_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
