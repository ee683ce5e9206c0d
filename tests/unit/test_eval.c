/*
 * test_eval.c — M-MRR@k and R@k of one ranking (hand-computed values, duplicates, cut-offs,
 * large truth sets) and the per-user macro average of ps_eval_t, including an example where
 * averaging per group and per user disagree.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ps/eval.h"

#define EPS 1e-12

static void assert_near(double got, double want)
{
    if (!(fabs(got - want) <= EPS)) fail_msg("got %.15f, want %.15f", got, want);
}

enum { A = 101, B = 202, C = 303, D = 404 };

static void test_single_ranking(void **state)
{
    (void)state;
    const uint64_t ranked[3] = {A, B, C}, truth[2] = {B, C};
    assert_near(ps_eval_mmrr(ranked, 3, 3, truth, 2), 1.0 / 2 + 1.0 / 3);
    assert_near(ps_eval_mmrr(ranked, 3, 2, truth, 2), 1.0 / 2);
    assert_near(ps_eval_mmrr(ranked, 3, 1, truth, 2), 0.0);
    assert_near(ps_eval_recall(ranked, 3, 1, truth, 2), 0.0);
    assert_near(ps_eval_recall(ranked, 3, 2, truth, 2), 0.5);
    assert_near(ps_eval_recall(ranked, 3, 3, truth, 2), 1.0);
    /* k beyond the list: only what is there counts. */
    assert_near(ps_eval_mmrr(ranked, 3, 100, truth, 2), 1.0 / 2 + 1.0 / 3);
    assert_near(ps_eval_recall(ranked, 3, 100, truth, 2), 1.0);
    /* k == 0 and an empty ranking find nothing. */
    assert_near(ps_eval_mmrr(ranked, 3, 0, truth, 2), 0.0);
    assert_near(ps_eval_recall(NULL, 0, 5, truth, 2), 0.0);
}

static void test_duplicates(void **state)
{
    (void)state;
    const uint64_t ranked[4] = {A, B, C, D};
    /* Duplicates in the truth are one id: |truth| = 2. */
    const uint64_t truth[5] = {C, B, C, B, C};
    assert_near(ps_eval_recall(ranked, 4, 2, truth, 5), 0.5);
    assert_near(ps_eval_mmrr(ranked, 4, 4, truth, 5), 1.0 / 2 + 1.0 / 3);
    /* An id repeated in the ranking counts once, at its first position. */
    const uint64_t rep[3] = {B, B, C}, t2[2] = {B, C};
    assert_near(ps_eval_mmrr(rep, 3, 3, t2, 2), 1.0 + 1.0 / 3);
    assert_near(ps_eval_recall(rep, 3, 3, t2, 2), 1.0);
    assert_near(ps_eval_recall(rep, 3, 2, t2, 2), 0.5);
    /* Empty truth scores 0; NULL with a count is NaN. */
    assert_near(ps_eval_recall(ranked, 4, 4, NULL, 0), 0.0);
    assert_near(ps_eval_mmrr(ranked, 4, 4, NULL, 0), 0.0);
    assert_true(isnan(ps_eval_mmrr(ranked, 4, 4, NULL, 3)));
    assert_true(isnan(ps_eval_recall(NULL, 4, 4, truth, 2)));
}

/* More truth ids than the stack buffer holds (heap path), in descending order. */
static void test_large_truth(void **state)
{
    (void)state;
    enum { T = 1000 };
    uint64_t *truth = malloc(2 * T * sizeof *truth), ranked[10];
    assert_non_null(truth);
    for (size_t i = 0; i < T; i++) truth[i] = truth[T + i] = 5000 - i;    /* 4001..5000 twice */
    for (size_t i = 0; i < 10; i++) ranked[i] = i % 2 ? 4001 + i : 1 + i; /* odd ranks hit */
    double want = 0.0;
    for (size_t i = 1; i < 10; i += 2) want += 1.0 / (double)(i + 1);
    assert_near(ps_eval_mmrr(ranked, 10, 10, truth, 2 * T), want);
    assert_near(ps_eval_recall(ranked, 10, 10, truth, 2 * T), 5.0 / T);
    free(truth);
}

/* User 1 has two groups (R@1 = 1 and 0), user 2 one group (R@1 = 1). Per user: (0.5 + 1)/2 =
 * 0.75; a plain average over the three groups would be 2/3. */
static void test_macro_average(void **state)
{
    (void)state;
    const size_t ks[2] = {1, 3};
    ps_err err = {0};
    ps_eval_t *e = ps_eval_new(ks, 2, &err);
    assert_non_null(e);
    const uint64_t r1[3] = {A, B, C}, t1[1] = {A};
    const uint64_t r2[3] = {D, C, B}, t2[2] = {B, A};
    const uint64_t r3[2] = {C, D}, t3[1] = {C};
    assert_int_equal(ps_eval_add(e, 1, r1, 3, t1, 1, &err), 0);
    assert_int_equal(ps_eval_add(e, 2, r3, 2, t3, 1, &err), 0);
    assert_int_equal(ps_eval_add(e, 1, r2, 3, t2, 2, &err), 0);

    double mmrr[2], recall[2];
    ps_eval_result(e, mmrr, recall);
    /* @1: user 1 groups (1, 0) → 0.5; user 2 → 1. */
    assert_near(recall[0], 0.75);
    assert_near(mmrr[0], 0.75);
    /* @3: user 1 groups: g1 mmrr 1, R 1; g2 mmrr 1/3, R 1/2 → mmrr 2/3, R 3/4; user 2: 1, 1. */
    assert_near(mmrr[1], (2.0 / 3 + 1.0) / 2);
    assert_near(recall[1], (0.75 + 1.0) / 2);
    ps_eval_free(e);
}

static void test_no_groups_and_errors(void **state)
{
    (void)state;
    const size_t ks[4] = {1, 5, 10, 20}, zero[2] = {5, 0};
    ps_err err = {0};
    double m[4] = {9, 9, 9, 9}, r[4] = {9, 9, 9, 9};

    ps_eval_t *e = ps_eval_new(ks, 4, &err);
    assert_non_null(e);
    ps_eval_result(e, m, r);
    for (int i = 0; i < 4; i++) assert_true(m[i] == 0.0 && r[i] == 0.0);

    const uint64_t ranked[1] = {A};
    assert_int_equal(ps_eval_add(e, 1, ranked, 1, NULL, 0, &err), PS_EINVAL);
    assert_non_null(strstr(err.msg, "ground truth"));
    assert_int_equal(ps_eval_add(e, 1, NULL, 1, ranked, 1, &err), PS_EINVAL);
    assert_non_null(strstr(err.msg, "ranked"));
    assert_int_equal(ps_eval_add(e, 1, ranked, 1, NULL, 1, &err), PS_EINVAL);
    assert_int_equal(ps_eval_add(NULL, 1, ranked, 1, ranked, 1, &err), PS_EINVAL);
    ps_eval_result(e, m, r); /* failed adds changed nothing */
    for (int i = 0; i < 4; i++) assert_true(m[i] == 0.0 && r[i] == 0.0);
    ps_eval_free(e);
    ps_eval_free(NULL);

    assert_null(ps_eval_new(ks, 0, &err));
    assert_int_equal(err.code, PS_EINVAL);
    assert_null(ps_eval_new(ks, 5, &err));
    assert_null(ps_eval_new(NULL, 1, &err));
    assert_null(ps_eval_new(zero, 2, &err));
    assert_non_null(strstr(err.msg, "ks[1]"));
}

/* Many users, added interleaved, so the user table grows several times. User u gets u % 4 + 1
 * groups; group g of user u hits iff g == 0, so user u's R@1 = 1 / (u % 4 + 1). */
static void test_many_users(void **state)
{
    (void)state;
    enum { U = 5000 };
    const size_t ks[1] = {1};
    ps_eval_t *e = ps_eval_new(ks, 1, NULL);
    assert_non_null(e);
    const uint64_t ranked[1] = {A}, hit[1] = {A}, miss[1] = {B};
    for (uint32_t g = 0; g < 4; g++)
        for (uint32_t u = 0; u < U; u++)
            if (g <= u % 4)
                assert_int_equal(
                    ps_eval_add(e, u * 2654435761u, ranked, 1, g ? miss : hit, 1, NULL), 0);
    double want = 0.0, m, r;
    for (uint32_t u = 0; u < U; u++) want += 1.0 / (u % 4 + 1);
    want /= U;
    ps_eval_result(e, &m, &r);
    if (fabs(r - want) > 1e-9) fail_msg("recall %.12f, want %.12f", r, want);
    if (fabs(m - want) > 1e-9) fail_msg("mmrr %.12f, want %.12f", m, want);
    ps_eval_free(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single_ranking),       cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_large_truth),          cmocka_unit_test(test_macro_average),
        cmocka_unit_test(test_no_groups_and_errors), cmocka_unit_test(test_many_users),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
