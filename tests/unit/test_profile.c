/*
 * test_profile.c — ps_l2dist, ps_dot and ps_dot_many (the same bits), k-means profiles (blobs, k
 * capped by distinct points, n == 0, determinism, radius exactness) and the stored format (round
 * trip, every truncation and garbled header rejected, argument checks).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ps/profile.h"
#include "ps/rand.h"

/* Uniform in [-1, 1). */
static float rng_sym(uint64_t *s)
{
    return (float)(2.0 * ps_rand_unit(ps_splitmix64(s)) - 1.0);
}

static float *random_points(size_t n, size_t dim, uint64_t seed)
{
    float *x = malloc(n * dim * sizeof *x);
    assert_non_null(x);
    for (size_t i = 0; i < n * dim; i++) x[i] = rng_sym(&seed);
    return x;
}

/* Nearest centroid by ps_l2dist, ties to the lower index. */
static uint32_t nearest(const ps_profile *p, const float *x)
{
    uint32_t best = 0;
    for (uint32_t c = 1; c < p->k; c++)
        if (ps_l2dist(x, p->centroids + (size_t)c * p->dim, p->dim) <
            ps_l2dist(x, p->centroids + (size_t)best * p->dim, p->dim))
            best = c;
    return best;
}

static void test_l2dist(void **state)
{
    (void)state;
    const float a[2] = {0, 0}, b[2] = {3, 4};
    assert_true(ps_l2dist(a, b, 2) == 5.0);
    assert_true(ps_l2dist(b, b, 2) == 0.0);
    assert_true(ps_l2dist(a, b, 0) == 0.0);

    /* Independent implementation of the documented formula: bit-exact agreement. */
    float *x = random_points(2, 512, 1);
    double s = 0.0;
    for (size_t i = 0; i < 512; i++) s += ((double)x[i] - x[512 + i]) * ((double)x[i] - x[512 + i]);
    assert_true(ps_l2dist(x, x + 512, 512) == sqrt(s));
    free(x);
}

/* ps_dot_many gives ps_dot's bits for every k and for dims with and without a tail of lanes,
 * with the vectors at odd offsets; and ps_dot itself is the documented lane order. */
static void test_dot_many(void **state)
{
    (void)state;
    static const size_t dims[] = {1, 3, 7, 8, 9, 15, 16, 17, 64, 511, 512, 515};
    float *x = random_points(PS_PROFILE_KMAX + 2, 600, 7);
    for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
        size_t dim = dims[di];
        const float *e = x + 1; /* not 32-byte aligned */
        const float *cv = x + 600 + 3;
        double *cd = malloc(PS_PROFILE_KMAX * dim * sizeof *cd);
        assert_non_null(cd);
        for (uint32_t c = 0; c < PS_PROFILE_KMAX; c++)
            for (size_t i = 0; i < dim; i++) cd[c * dim + i] = (double)cv[c * 600 + i];
        for (uint32_t k = 0; k <= PS_PROFILE_KMAX; k++) {
            double ee = -1, out[PS_PROFILE_KMAX];
            for (uint32_t c = 0; c < PS_PROFILE_KMAX; c++) out[c] = -1;
            ps_dot_many(e, cd, k, dim, &ee, out);
            assert_true(ee == ps_dot(e, e, dim));
            for (uint32_t c = 0; c < k; c++) assert_true(out[c] == ps_dot(cv + c * 600, e, dim));
            for (uint32_t c = k; c < PS_PROFILE_KMAX; c++) assert_true(out[c] == -1);
        }
        /* The reference: eight lanes over full groups of 8, a sequential tail, fixed combine. */
        double l[8] = {0}, tail = 0;
        size_t i = 0;
        for (; i + 8 <= dim; i += 8)
            for (int j = 0; j < 8; j++) l[j] += (double)e[i + j] * (double)cv[i + j];
        for (; i < dim; i++) tail += (double)e[i] * (double)cv[i];
        double want = (((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))) + tail;
        assert_true(ps_dot(e, cv, dim) == want);
        free(cd);
    }
    free(x);
}

/* Two blobs around ±5·e0 in 8 dimensions, members alternating. */
static void test_two_blobs(void **state)
{
    (void)state;
    enum { N = 40, D = 8 };
    float x[N * D];
    uint64_t seed = 3;
    ps_profile p;
    ps_err err = {0};
    for (size_t i = 0; i < N; i++)
        for (size_t t = 0; t < D; t++)
            x[i * D + t] = 0.2f * rng_sym(&seed) + (t == 0 ? (i % 2 ? -5.0f : 5.0f) : 0.0f);

    assert_int_equal(ps_profile_build(x, N, D, 2, 99, &p, &err), 0);
    assert_int_equal(p.k, 2);
    assert_int_equal(p.dim, D);

    uint32_t even = nearest(&p, x), odd = nearest(&p, x + D);
    assert_int_not_equal(even, odd);
    double radius[2] = {0, 0}, mean[2][D];
    memset(mean, 0, sizeof mean);
    for (size_t i = 0; i < N; i++) {
        uint32_t c = nearest(&p, x + i * D);
        assert_int_equal(c, i % 2 ? odd : even); /* each blob is one cluster */
        double d = ps_l2dist(x + i * D, p.centroids + c * D, D);
        if (d > radius[c]) radius[c] = d;
        for (size_t t = 0; t < D; t++) mean[c][t] += x[i * D + t] / (N / 2.0);
    }
    for (uint32_t c = 0; c < 2; c++) {
        assert_true(p.radius[c] == radius[c]); /* exactly the farthest member */
        assert_true(radius[c] > 0 && radius[c] < 1.0);
        for (size_t t = 0; t < D; t++)
            assert_true(fabs(p.centroids[c * D + t] - mean[c][t]) < 1e-5); /* means */
    }
    assert_true(fabs(fabs(p.centroids[0]) - 5.0) < 0.2); /* not normalized */
    ps_profile_clear(&p);
    assert_null(p.centroids);
    assert_int_equal(p.k, 0);
    ps_profile_clear(&p);
    ps_profile_clear(NULL);
}

static void test_k_capped_by_distinct(void **state)
{
    (void)state;
    const float same[3 * 4] = {0.5f, -1, 2, 0, 0.5f, -1, 2, 0, 0.5f, -1, 2, 0};
    ps_profile p;
    assert_int_equal(ps_profile_build(same, 3, 4, 5, 1, &p, NULL), 0);
    assert_int_equal(p.k, 1);
    assert_true(p.radius[0] == 0.0);
    assert_memory_equal(p.centroids, same, 4 * sizeof(float));
    ps_profile_clear(&p);

    /* Two distinct values among five points: k == 2, both radii 0. */
    const float two[5 * 2] = {1, 1, 2, 2, 1, 1, 2, 2, 2, 2};
    assert_int_equal(ps_profile_build(two, 5, 2, 5, 1, &p, NULL), 0);
    assert_int_equal(p.k, 2);
    assert_true(p.radius[0] == 0.0 && p.radius[1] == 0.0);
    ps_profile_clear(&p);

    /* 0.0 and -0.0 are the same point. */
    const float zeros[2] = {0.0f, -0.0f};
    assert_int_equal(ps_profile_build(zeros, 2, 1, 3, 1, &p, NULL), 0);
    assert_int_equal(p.k, 1);
    ps_profile_clear(&p);

    /* kmax below the distinct count caps k. */
    float *x = random_points(10, 3, 5);
    assert_int_equal(ps_profile_build(x, 10, 3, 3, 1, &p, NULL), 0);
    assert_int_equal(p.k, 3);
    ps_profile_clear(&p);
    free(x);
}

static void test_empty(void **state)
{
    (void)state;
    ps_profile p;
    assert_int_equal(ps_profile_build(NULL, 0, 512, 5, 1, &p, NULL), 0);
    assert_int_equal(p.k, 0);
    assert_int_equal(p.dim, 512);
    assert_null(p.centroids);

    uint8_t *buf;
    size_t len;
    assert_int_equal(ps_profile_encode(&p, &buf, &len, NULL), 0);
    assert_int_equal(len, 12);
    ps_profile q;
    assert_int_equal(ps_profile_decode(buf, len, &q, NULL), 0);
    assert_int_equal(q.k, 0);
    assert_int_equal(q.dim, 512);
    assert_null(q.centroids);
    free(buf);
    ps_profile_clear(&p);
}

/* On random data: k == 5, every radius is the exact distance of some point to its centroid,
 * and every point lies within the radius of some centroid. */
static void test_radius_property(void **state)
{
    (void)state;
    enum { N = 300, D = 16 };
    float *x = random_points(N, D, 11);
    ps_profile p;
    assert_int_equal(ps_profile_build(x, N, D, 5, 1234, &p, NULL), 0);
    assert_int_equal(p.k, 5);
    for (uint32_t c = 0; c < p.k; c++) {
        int hit = 0;
        for (size_t i = 0; i < N && !hit; i++)
            hit = ps_l2dist(x + i * D, p.centroids + c * D, D) == p.radius[c];
        assert_true(hit);
    }
    for (size_t i = 0; i < N; i++) {
        int inside = 0;
        for (uint32_t c = 0; c < p.k; c++)
            inside |= ps_l2dist(x + i * D, p.centroids + c * D, D) <= p.radius[c];
        assert_true(inside);
    }
    ps_profile_clear(&p);
    free(x);
}

static void test_deterministic(void **state)
{
    (void)state;
    enum { N = 500, D = 64 };
    float *x = random_points(N, D, 21);
    ps_profile a, b;
    uint8_t *ba, *bb;
    size_t la, lb;
    assert_int_equal(ps_profile_build(x, N, D, 5, 77, &a, NULL), 0);
    assert_int_equal(ps_profile_build(x, N, D, 5, 77, &b, NULL), 0);
    assert_int_equal(ps_profile_encode(&a, &ba, &la, NULL), 0);
    assert_int_equal(ps_profile_encode(&b, &bb, &lb, NULL), 0);
    assert_int_equal(la, lb);
    assert_int_equal(la, 12 + 8 * 5 + 4 * 5 * D);
    assert_memory_equal(ba, bb, la);
    free(ba);
    free(bb);
    ps_profile_clear(&a);
    ps_profile_clear(&b);
    free(x);
}

static void test_round_trip(void **state)
{
    (void)state;
    enum { N = 60, D = 7 };
    float *x = random_points(N, D, 31);
    ps_profile p, q;
    uint8_t *buf;
    size_t len;
    assert_int_equal(ps_profile_build(x, N, D, 4, 5, &p, NULL), 0);
    assert_int_equal(ps_profile_encode(&p, &buf, &len, NULL), 0);
    assert_int_equal(len, 12 + 8 * 4 + 4 * 4 * D);
    assert_memory_equal(buf, "PSPF", 4);
    assert_int_equal(buf[4], 4); /* k, little-endian */
    assert_int_equal(buf[8], D);
    assert_int_equal(ps_profile_decode(buf, len, &q, NULL), 0);
    assert_int_equal(q.k, p.k);
    assert_int_equal(q.dim, p.dim);
    assert_memory_equal(q.radius, p.radius, p.k * sizeof(double));
    assert_memory_equal(q.centroids, p.centroids, (size_t)p.k * D * sizeof(float));
    ps_profile_clear(&q);
    free(buf);
    ps_profile_clear(&p);
    free(x);
}

static void expect_corrupt(const uint8_t *buf, size_t len)
{
    ps_profile q;
    ps_err err = {0};
    q.centroids = (float *)&q; /* garbage the decoder must overwrite */
    assert_int_equal(ps_profile_decode(buf, len, &q, &err), PS_ECORRUPT);
    assert_int_equal(err.code, PS_ECORRUPT);
    assert_true(err.msg[0] != '\0');
    assert_null(q.centroids);
    assert_int_equal(q.k, 0);
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void test_decode_rejects(void **state)
{
    (void)state;
    enum { N = 20, D = 3 };
    float *x = random_points(N, D, 41);
    ps_profile p;
    uint8_t *buf, *bad;
    size_t len;
    assert_int_equal(ps_profile_build(x, N, D, 2, 5, &p, NULL), 0);
    assert_int_equal(ps_profile_encode(&p, &buf, &len, NULL), 0);
    bad = malloc(len + 1);
    assert_non_null(bad);

    /* Every truncation, and one byte too many. */
    for (size_t l = 0; l < len; l++) expect_corrupt(buf, l);
    memcpy(bad, buf, len);
    bad[len] = 0;
    expect_corrupt(bad, len + 1);

    /* Every bit of the 12-byte header flipped. */
    for (size_t b = 0; b < 12 * 8; b++) {
        memcpy(bad, buf, len);
        bad[b / 8] ^= (uint8_t)(1u << (b % 8));
        expect_corrupt(bad, len);
    }

    /* k > KMAX with a length that would match it. */
    {
        size_t l6 = 12 + 8 * 6 + 4 * 6 * D;
        uint8_t *big = calloc(1, l6);
        assert_non_null(big);
        memcpy(big, buf, 12);
        put32(big + 4, 6);
        expect_corrupt(big, l6);
        free(big);
    }
    /* dim > 65536 with k == 0 (length 12 matches). */
    memcpy(bad, buf, 12);
    put32(bad + 4, 0);
    put32(bad + 8, 65537);
    expect_corrupt(bad, 12);
    /* dim == 0 with k > 0. */
    memcpy(bad, buf, 12);
    put32(bad + 8, 0);
    expect_corrupt(bad, 12 + 8 * 2);

    /* Negative, NaN, infinite radius. */
    const double badr[3] = {-1.0, NAN, INFINITY};
    for (int i = 0; i < 3; i++) {
        memcpy(bad, buf, len);
        memcpy(bad + 12 + 8, &badr[i], 8); /* radius[1], host order = little-endian here */
        expect_corrupt(bad, len);
    }
    /* Non-finite centroid value (the last one). */
    const float badc[2] = {NAN, -INFINITY};
    for (int i = 0; i < 2; i++) {
        memcpy(bad, buf, len);
        memcpy(bad + len - 4, &badc[i], 4);
        expect_corrupt(bad, len);
    }

    /* The untouched buffer still decodes. */
    ps_profile q;
    assert_int_equal(ps_profile_decode(buf, len, &q, NULL), 0);
    ps_profile_clear(&q);
    free(bad);
    free(buf);
    ps_profile_clear(&p);
    free(x);
}

static void test_build_rejects(void **state)
{
    (void)state;
    float x[4] = {1, 2, 3, 4};
    ps_profile p;
    ps_err err = {0};
    assert_int_equal(ps_profile_build(x, 2, 2, 6, 1, &p, &err), PS_EINVAL);
    assert_non_null(strstr(err.msg, "kmax"));
    assert_null(p.centroids);
    assert_int_equal(ps_profile_build(x, 2, 2, 0, 1, &p, &err), PS_EINVAL);
    assert_int_equal(ps_profile_build(x, 2, 0, 2, 1, &p, &err), PS_EINVAL);
    assert_non_null(strstr(err.msg, "dim"));
    assert_int_equal(ps_profile_build(x, 1, 65537, 2, 1, &p, &err), PS_EINVAL);
    assert_int_equal(ps_profile_build(NULL, 2, 2, 2, 1, &p, &err), PS_EINVAL);
    assert_int_equal(ps_profile_build(x, 2, 2, 2, 1, NULL, &err), PS_EINVAL);
    x[3] = NAN;
    assert_int_equal(ps_profile_build(x, 2, 2, 2, 1, &p, &err), PS_EINVAL);
    assert_non_null(strstr(err.msg, "emb[1][1]"));
    x[3] = INFINITY;
    assert_int_equal(ps_profile_build(x, 2, 2, 2, 1, &p, &err), PS_EINVAL);

    /* Encoding an impossible profile. */
    uint8_t *buf = (uint8_t *)x;
    size_t len = 5;
    ps_profile bad = {.k = 6, .dim = 2, .centroids = x};
    assert_int_equal(ps_profile_encode(&bad, &buf, &len, &err), PS_EINVAL);
    assert_null(buf);
    assert_int_equal(len, 0);
    bad = (ps_profile){.k = 1, .dim = 2, .centroids = NULL};
    assert_int_equal(ps_profile_encode(&bad, &buf, &len, &err), PS_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_l2dist),         cmocka_unit_test(test_dot_many),
        cmocka_unit_test(test_two_blobs),      cmocka_unit_test(test_k_capped_by_distinct),
        cmocka_unit_test(test_empty),          cmocka_unit_test(test_radius_property),
        cmocka_unit_test(test_deterministic),  cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_decode_rejects), cmocka_unit_test(test_build_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
