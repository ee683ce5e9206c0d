/*
 * test_utility.c — Pop/Cross/QA counting and the utility formula (paper eq. 1–5) against
 * hand-computed values, the base and all-zero edges, and a brute-force count on a larger
 * random log. Click logs are built by hand (struct fields filled directly).
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
#include "ps/utility.h"

#define EPS 1e-6

/* A log of n clicks with the given columns (users/queries tables left empty: counting only
 * uses the interned numbers). */
static ps_clicklog make_log(size_t n, const uint32_t *user, const uint32_t *query,
                            const uint64_t *sticker)
{
    ps_clicklog log = {0};
    log.n = n;
    log.user = malloc((n ? n : 1) * sizeof *log.user);
    log.query = malloc((n ? n : 1) * sizeof *log.query);
    log.sticker = malloc((n ? n : 1) * sizeof *log.sticker);
    assert_non_null(log.user);
    assert_non_null(log.query);
    assert_non_null(log.sticker);
    if (n) {
        memcpy(log.user, user, n * sizeof *user);
        memcpy(log.query, query, n * sizeof *query);
        memcpy(log.sticker, sticker, n * sizeof *sticker);
    }
    return log;
}

static void free_log(ps_clicklog *log)
{
    free(log->user);
    free(log->query);
    free(log->sticker);
    memset(log, 0, sizeof *log);
}

static void assert_near(double got, double want)
{
    if (fabs(got - want) > EPS) fail_msg("got %.9f, want %.9f", got, want);
}

/* Corpus ids 10, 20, 30, 40. Clicks (user, query, sticker):
 *   (0,0,10) (0,0,10) (1,1,10) (0,1,20) (0,2,20) (1,0,99: not in the corpus)
 * Pop = [3,2,0,0], Cross = [2,1,0,0], QA = [2,2,0,0], unknown = 1. */
static const uint64_t ids4[4] = {10, 20, 30, 40};
static const uint32_t ex_user[6] = {0, 0, 1, 0, 0, 1};
static const uint32_t ex_query[6] = {0, 0, 1, 1, 2, 0};
static const uint64_t ex_sticker[6] = {10, 10, 10, 20, 20, 99};

static void count_example(ps_usage *u)
{
    ps_clicklog log = make_log(6, ex_user, ex_query, ex_sticker);
    size_t unknown = 77;
    ps_err err = {0};
    assert_int_equal(ps_usage_count(&log, ids4, 4, u, &unknown, &err), 0);
    assert_int_equal(unknown, 1);
    free_log(&log);
}

static void test_counts(void **state)
{
    (void)state;
    ps_usage u;
    count_example(&u);
    assert_int_equal(u.n, 4);
    uint32_t pop[4] = {3, 2, 0, 0}, cross[4] = {2, 1, 0, 0}, qa[4] = {2, 2, 0, 0};
    assert_memory_equal(u.pop, pop, sizeof pop);
    assert_memory_equal(u.cross, cross, sizeof cross);
    assert_memory_equal(u.qa, qa, sizeof qa);
    ps_usage_free(&u);
    assert_null(u.pop);
    ps_usage_free(&u); /* twice is harmless */
    ps_usage_free(NULL);
}

static void test_utility_default(void **state)
{
    (void)state;
    ps_usage u;
    float util[4];
    count_example(&u);
    /* Adjusted: Pop [3,2,1,1] / 3, Cross [2,1,1,1] / 2, QA [2,2,1,1] / 2. */
    ps_utility_compute(&ps_utility_default, &u, util);
    assert_near(util[0], 3.0);
    assert_near(util[1], sqrt(2.0 / 3) + sqrt(0.5) + 1.0);
    assert_near(util[2], sqrt(1.0 / 3) + sqrt(0.5) + sqrt(0.5));
    assert_near(util[3], util[2]);
    /* NULL cfg is the default. */
    float again[4];
    ps_utility_compute(NULL, &u, again);
    assert_memory_equal(util, again, sizeof util);
    /* Stored as the float of the double result. */
    assert_true(util[1] == (float)(sqrt(2.0 / 3) + sqrt(0.5) + 1.0));
    ps_usage_free(&u);
}

static void test_utility_weights_and_base(void **state)
{
    (void)state;
    ps_usage u;
    float util[4];
    count_example(&u);

    ps_utility_cfg cfg = {.base = 2.0, .w = {2.0, 0.0, 0.5}};
    /* Pop adjusted [3,2,2,2] / 3; QA [2,2,2,2] / 2. */
    ps_utility_compute(&cfg, &u, util);
    assert_near(util[0], 2.0 + 0.5);
    assert_near(util[1], 2.0 * sqrt(2.0 / 3) + 0.5);
    assert_near(util[2], 2.0 * sqrt(2.0 / 3) + 0.5);

    /* base = 0: unclicked stickers get nothing from any component. */
    cfg = (ps_utility_cfg){.base = 0.0, .w = {1, 1, 1}};
    ps_utility_compute(&cfg, &u, util);
    assert_near(util[0], 3.0);
    assert_near(util[1], sqrt(2.0 / 3) + sqrt(0.5) + 1.0);
    assert_true(util[2] == 0.0f);
    assert_true(util[3] == 0.0f);

    /* A negative base acts as 0. */
    cfg.base = -5.0;
    float neg[4];
    ps_utility_compute(&cfg, &u, neg);
    assert_memory_equal(util, neg, sizeof util);
    ps_usage_free(&u);
}

/* No click lands in the corpus: every column is all zero. */
static void test_all_zero_columns(void **state)
{
    (void)state;
    const uint32_t user[2] = {0, 1}, query[2] = {0, 0};
    const uint64_t sticker[2] = {5, 6};
    ps_clicklog log = make_log(2, user, query, sticker);
    ps_usage u;
    size_t unknown;
    float util[4];

    assert_int_equal(ps_usage_count(&log, ids4, 4, &u, &unknown, NULL), 0);
    assert_int_equal(unknown, 2);
    for (int s = 0; s < 4; s++) assert_true(!u.pop[s] && !u.cross[s] && !u.qa[s]);

    /* base 1: every component is 1/1 → utility = Σw. */
    ps_utility_compute(&ps_utility_default, &u, util);
    for (int s = 0; s < 4; s++) assert_true(util[s] == 3.0f);

    /* base 0: max is 0 → each component contributes 0 (not NaN). */
    ps_utility_cfg cfg = {.base = 0.0, .w = {1, 1, 1}};
    ps_utility_compute(&cfg, &u, util);
    for (int s = 0; s < 4; s++) assert_true(util[s] == 0.0f);
    ps_usage_free(&u);
    free_log(&log);
}

/* One all-zero column next to non-zero ones, base 0: only that column drops out. */
static void test_one_zero_column_base0(void **state)
{
    (void)state;
    uint32_t pop[2] = {4, 1}, cross[2] = {0, 0}, qa[2] = {1, 1};
    ps_usage u = {.pop = pop, .cross = cross, .qa = qa, .n = 2};
    ps_utility_cfg cfg = {.base = 0.0, .w = {1, 10, 1}};
    float util[2];
    ps_utility_compute(&cfg, &u, util);
    assert_near(util[0], 1.0 + 1.0);
    assert_near(util[1], 0.5 + 1.0);
}

static void test_empty_inputs(void **state)
{
    (void)state;
    ps_clicklog empty = {0};
    ps_usage u;
    size_t unknown = 9;
    ps_err err = {0};

    /* No clicks. */
    assert_int_equal(ps_usage_count(&empty, ids4, 4, &u, &unknown, &err), 0);
    assert_int_equal(unknown, 0);
    assert_int_equal(u.n, 4);
    for (int s = 0; s < 4; s++) assert_int_equal(u.pop[s], 0);
    ps_usage_free(&u);

    /* No stickers: all clicks unknown. */
    ps_clicklog log = make_log(6, ex_user, ex_query, ex_sticker);
    assert_int_equal(ps_usage_count(&log, NULL, 0, &u, &unknown, &err), 0);
    assert_int_equal(unknown, 6);
    assert_int_equal(u.n, 0);
    ps_utility_compute(NULL, &u, NULL); /* n == 0: nothing to write */
    ps_usage_free(&u);

    /* Bad arguments name what is wrong. */
    assert_int_equal(ps_usage_count(NULL, ids4, 4, &u, NULL, &err), PS_EINVAL);
    assert_non_null(strstr(err.msg, "log"));
    assert_null(u.pop);
    assert_int_equal(ps_usage_count(&log, NULL, 4, &u, NULL, &err), PS_EINVAL);
    assert_non_null(strstr(err.msg, "ids"));
    assert_int_equal(ps_usage_count(&log, ids4, 4, NULL, NULL, &err), PS_EINVAL);
    free_log(&log);
}

/* An id listed twice gets its clicks on the first row only. */
static void test_repeated_id(void **state)
{
    (void)state;
    const uint64_t ids[3] = {7, 8, 7};
    const uint32_t user[3] = {0, 1, 2}, query[3] = {0, 0, 0};
    const uint64_t sticker[3] = {7, 7, 8};
    ps_clicklog log = make_log(3, user, query, sticker);
    ps_usage u;
    assert_int_equal(ps_usage_count(&log, ids, 3, &u, NULL, NULL), 0);
    assert_int_equal(u.pop[0], 2);
    assert_int_equal(u.cross[0], 2);
    assert_int_equal(u.qa[0], 1);
    assert_int_equal(u.pop[1], 1);
    assert_int_equal(u.pop[2], 0);
    ps_usage_free(&u);
    free_log(&log);
}

/* Random log over 19-digit-like ids, checked against a quadratic count. */
static void test_random_vs_bruteforce(void **state)
{
    (void)state;
    enum { N = 300, M = 4000 };
    uint64_t *ids = malloc(N * sizeof *ids), *sticker = malloc(M * sizeof *sticker);
    uint32_t *user = malloc(M * sizeof *user), *query = malloc(M * sizeof *query);
    uint64_t s = 42;
    size_t want_unknown = 0;
    assert_true(ids && sticker && user && query);
    for (size_t r = 0; r < N; r++) ids[r] = 1000000000000000000ULL + ps_splitmix64(&s) % 1000000007;
    for (size_t i = 0; i < M; i++) {
        uint64_t x = ps_splitmix64(&s);
        user[i] = (uint32_t)(x % 9);
        query[i] = (uint32_t)((x >> 8) % 40);
        sticker[i] = (x >> 20) % 20 == 0 ? 3 : ids[(x >> 32) % (N / 3)]; /* skewed */
        want_unknown += sticker[i] == 3;
    }
    ps_clicklog log = make_log(M, user, query, sticker);
    ps_usage u;
    size_t unknown;
    assert_int_equal(ps_usage_count(&log, ids, N, &u, &unknown, NULL), 0);
    assert_int_equal(unknown, want_unknown);
    for (size_t r = 0; r < N; r++) {
        uint32_t pop = 0, cross = 0, qa = 0;
        for (size_t i = 0; i < M; i++) {
            int new_user = 1, new_query = 1;
            if (sticker[i] != ids[r]) continue;
            for (size_t j = 0; j < i; j++) {
                if (sticker[j] != ids[r]) continue;
                if (user[j] == user[i]) new_user = 0;
                if (query[j] == query[i]) new_query = 0;
            }
            pop++;
            cross += new_user;
            qa += new_query;
        }
        /* rows past the first occurrence of a repeated id get nothing */
        for (size_t q = 0; q < r; q++)
            if (ids[q] == ids[r]) pop = cross = qa = 0;
        assert_int_equal(u.pop[r], pop);
        assert_int_equal(u.cross[r], cross);
        assert_int_equal(u.qa[r], qa);
    }
    ps_usage_free(&u);
    free_log(&log);
    free(ids);
    free(sticker);
    free(user);
    free(query);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts),
        cmocka_unit_test(test_utility_default),
        cmocka_unit_test(test_utility_weights_and_base),
        cmocka_unit_test(test_all_zero_columns),
        cmocka_unit_test(test_one_zero_column_base0),
        cmocka_unit_test(test_empty_inputs),
        cmocka_unit_test(test_repeated_id),
        cmocka_unit_test(test_random_vs_bruteforce),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
