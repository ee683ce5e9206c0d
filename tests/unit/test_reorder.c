/*
 * test_reorder.c — doc numbering by recursive graph bisection (builder/reorder.c) and the
 * --reorder field list: the result is a permutation, deterministic, and groups docs that
 * share terms; the answers of an index numbered so are checked in test_search.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "builder.h"
#include "ps/rand.h"
#include "reorder.h"

#define N_DOCS   4096
#define N_TOPICS 16
#define TOPIC_T  8 /* terms of each topic */
#define COMMON_T 4 /* terms every topic uses */

/* A forward index of N_DOCS docs, each of a random topic: three distinct terms of its topic
 * and one of the common terms. OUT topic[d]. */
typedef struct fwd {
    uint64_t off[N_DOCS + 1];
    uint32_t terms[N_DOCS * 4];
    int topic[N_DOCS];
    uint32_t nterms;
} fwd;

static void make_fwd(fwd *F, uint64_t seed)
{
    ps_rng r;
    ps_rng_seed(&r, seed, 1);
    size_t n = 0;
    F->off[0] = 0;
    for (uint32_t d = 0; d < N_DOCS; d++) {
        int t = (int)ps_rng_below(&r, N_TOPICS);
        F->topic[d] = t;
        uint32_t first = (uint32_t)ps_rng_below(&r, TOPIC_T);
        for (uint32_t k = 0; k < 3; k++)
            F->terms[n++] = COMMON_T + (uint32_t)t * TOPIC_T + (first + k) % TOPIC_T;
        F->terms[n++] = (uint32_t)ps_rng_below(&r, COMMON_T);
        F->off[d + 1] = n;
    }
    F->nterms = COMMON_T + N_TOPICS * TOPIC_T;
}

/* Share of neighbouring positions holding docs of the same topic. */
static double purity(const fwd *F, const uint32_t *perm)
{
    size_t same = 0;
    for (size_t i = 1; i < N_DOCS; i++) same += F->topic[perm[i]] == F->topic[perm[i - 1]];
    return (double)same / (N_DOCS - 1);
}

static void test_groups_docs_sharing_terms(void **state)
{
    (void)state;
    static fwd F;
    static uint32_t perm[N_DOCS];
    make_fwd(&F, 3);
    for (uint32_t i = 0; i < N_DOCS; i++) perm[i] = i;
    double before = builder_reorder_cost(perm, N_DOCS, F.off, F.terms, F.nterms, 128);
    double pure_before = purity(&F, perm);
    ps_err err = {0};
    assert_int_equal(builder_reorder(perm, N_DOCS, F.off, F.terms, F.nterms, 8, &err), 0);

    /* A permutation of 0..N_DOCS-1. */
    static uint8_t seen[N_DOCS];
    memset(seen, 0, sizeof seen);
    for (uint32_t i = 0; i < N_DOCS; i++) {
        assert_true(perm[i] < N_DOCS);
        assert_int_equal(seen[perm[i]], 0);
        seen[perm[i]] = 1;
    }
    /* Numbered at random, 1 neighbour in 16 shares the topic; bisected, nearly all do, and the
     * gap cost of 128-doc blocks falls by a third or more. */
    double after = builder_reorder_cost(perm, N_DOCS, F.off, F.terms, F.nterms, 128);
    assert_true(pure_before < 0.15);
    assert_true(purity(&F, perm) > 0.9);
    assert_true(after < before * 0.67);
}

static void test_deterministic(void **state)
{
    (void)state;
    static fwd F;
    static uint32_t a[N_DOCS], b[N_DOCS];
    make_fwd(&F, 11);
    for (uint32_t i = 0; i < N_DOCS; i++) a[i] = b[i] = N_DOCS - 1 - i;
    assert_int_equal(builder_reorder(a, N_DOCS, F.off, F.terms, F.nterms, 8, NULL), 0);
    assert_int_equal(builder_reorder(b, N_DOCS, F.off, F.terms, F.nterms, 8, NULL), 0);
    assert_memory_equal(a, b, sizeof a);
}

static void test_small_and_empty(void **state)
{
    (void)state;
    /* At most a leaf: left as it is. */
    uint32_t perm[BUILDER_REORDER_LEAF];
    static uint64_t off[N_DOCS + 1]; /* every doc without terms */
    for (uint32_t i = 0; i < BUILDER_REORDER_LEAF; i++) perm[i] = BUILDER_REORDER_LEAF - 1 - i;
    assert_int_equal(builder_reorder(perm, BUILDER_REORDER_LEAF, off, NULL, 0, 8, NULL), 0);
    for (uint32_t i = 0; i < BUILDER_REORDER_LEAF; i++)
        assert_int_equal(perm[i], BUILDER_REORDER_LEAF - 1 - i);
    /* Docs without terms: nothing to gain, so nothing moves. */
    static uint32_t big[N_DOCS];
    for (uint32_t i = 0; i < N_DOCS; i++) big[i] = i;
    assert_int_equal(builder_reorder(big, N_DOCS, off, NULL, 0, 8, NULL), 0);
    for (uint32_t i = 0; i < N_DOCS; i++) assert_int_equal(big[i], i);
}

static void test_parse_fields(void **state)
{
    (void)state;
    uint32_t m = 99;
    assert_int_equal(builder_parse_fields("ocr,queries", &m), 0);
    assert_int_equal(m, (1u << PS_F_OCR) | (1u << PS_F_QUERIES));
    assert_int_equal(builder_parse_fields("desc", &m), 0);
    assert_int_equal(m, 1u << PS_F_DESC);
    assert_int_equal(builder_parse_fields("paddleocr,emotion", &m), 0); /* the authors' names */
    assert_int_equal(m, (1u << PS_F_OCR) | (1u << PS_F_EMOTION));
    assert_int_equal(builder_parse_fields("none", &m), 0);
    assert_int_equal(m, 0);
    m = 7;
    assert_int_equal(builder_parse_fields("", &m), -1);
    assert_int_equal(builder_parse_fields("ocr,", &m), -1);
    assert_int_equal(builder_parse_fields(",ocr", &m), -1);
    assert_int_equal(builder_parse_fields("ocr,bogus", &m), -1);
    assert_int_equal(builder_parse_fields("ocrqueriesdescemotionkeywordsxx", &m), -1);
    assert_int_equal(m, 7); /* untouched on error */

    /* The default: the fields weighing at least half the heaviest. */
    builder_cfg cfg;
    builder_cfg_defaults(&cfg);
    assert_int_equal(cfg.reorder_fields, (1u << PS_F_OCR) | (1u << PS_F_QUERIES));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_groups_docs_sharing_terms),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_small_and_empty),
        cmocka_unit_test(test_parse_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
