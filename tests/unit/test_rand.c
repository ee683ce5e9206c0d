/*
 * test_rand.c — ps/rand.h: known answers (generated data and k-means picks depend on every
 * bit), determinism, independent streams, ps_rng_below bounds, uniform ranges and the
 * ziggurat's mean and variance.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>

#include "ps/rand.h"

static void test_known_answers(void **state)
{
    (void)state;
    uint64_t x = 0;
    assert_true(ps_splitmix64(&x) == 0xe220a8397b1dcdafull);
    assert_true(ps_splitmix64(&x) == 0x6e789e6aa1b965f4ull);

    ps_rng r;
    ps_rng_seed(&r, 42, 1);
    assert_true(ps_rng_next(&r) == 0x0ede10bd185e0938ull);
    assert_true(ps_rng_next(&r) == 0xd956f6b8750ccaa8ull);
    assert_true(ps_rng_next(&r) == 0xec1174591e2d4211ull);
    assert_true(ps_rng_below(&r, 1000) == 638);

    static const double normals[] = {0x1.2bb0cf1e0ba48p-1, 0x1.1f2c2775d602bp-1,
                                     0x1.a874d9365294ap-4, 0x1.51447369dd5eap-2,
                                     -0x1.c96328bb6ddd9p-2};
    ps_rng_seed(&r, 7, 3);
    for (size_t i = 0; i < sizeof normals / sizeof *normals; i++)
        assert_true(ps_rng_normal(&r) == normals[i]);
}

static void test_deterministic_and_streams(void **state)
{
    (void)state;
    ps_rng a, b, c, d;
    ps_rng_seed(&a, 123, 5);
    ps_rng_seed(&b, 123, 5);
    ps_rng_seed(&c, 123, 6);
    ps_rng_seed(&d, 124, 5);
    int same_c = 0, same_d = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t va = ps_rng_next(&a);
        assert_true(va == ps_rng_next(&b));
        same_c += va == ps_rng_next(&c);
        same_d += va == ps_rng_next(&d);
    }
    assert_int_equal(same_c, 0);
    assert_int_equal(same_d, 0);
}

static void test_below(void **state)
{
    (void)state;
    ps_rng r;
    ps_rng_seed(&r, 1, 1);
    int seen[7] = {0};
    for (int i = 0; i < 7000; i++) {
        assert_true(ps_rng_below(&r, 1) == 0);
        uint64_t v = ps_rng_below(&r, 7);
        assert_true(v < 7);
        seen[v]++;
    }
    for (int v = 0; v < 7; v++) assert_true(seen[v] > 800 && seen[v] < 1200);
    /* Large n: about half of all draws fall in the rejected zone. */
    const uint64_t big = (1ull << 63) + 1;
    for (int i = 0; i < 1000; i++) {
        assert_true(ps_rng_below(&r, big) < big);
        assert_true(ps_rng_below(&r, UINT64_MAX) < UINT64_MAX);
    }
}

static void test_unif(void **state)
{
    (void)state;
    assert_true(ps_rand_unit(0) == 0.0);
    assert_true(ps_rand_unit(UINT64_MAX) < 1.0);

    ps_rng r;
    ps_rng_seed(&r, 9, 2);
    double sum = 0;
    enum { N = 100000 };
    for (int i = 0; i < N; i++) {
        double u = ps_rng_unif(&r), p = ps_rng_unif_pos(&r);
        assert_true(u >= 0.0 && u < 1.0);
        assert_true(p > 0.0 && p <= 1.0);
        sum += u;
    }
    assert_true(fabs(sum / N - 0.5) < 0.01);
}

static void test_normal_moments(void **state)
{
    (void)state;
    ps_rng r;
    ps_rng_seed(&r, 2026, 4);
    double s = 0, s2 = 0;
    int tail = 0;
    enum { N = 200000 };
    for (int i = 0; i < N; i++) {
        double x = ps_rng_normal(&r);
        assert_true(isfinite(x));
        s += x;
        s2 += x * x;
        tail += fabs(x) > 3.442619855899; /* beyond the ziggurat's base layer */
    }
    double mean = s / N, var = s2 / N - mean * mean;
    assert_true(fabs(mean) < 0.02);
    assert_true(fabs(var - 1.0) < 0.03);
    assert_true(tail > 50 && tail < 200); /* expected ~115 */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_answers),  cmocka_unit_test(test_deterministic_and_streams),
        cmocka_unit_test(test_below),          cmocka_unit_test(test_unif),
        cmocka_unit_test(test_normal_moments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
