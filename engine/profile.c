/*
 * profile.c — user style profiles (DESIGN §1): k-means over the embeddings of the stickers a
 * user clicked, and the byte format a profile is stored in.
 *
 * The build is deterministic for equal input: the only randomness is a ps_splitmix64 stream
 * (ps/rand.h) seeded by the caller (k-means++ picks), every tie goes to the lower index, and the
 * assignment step's dot products come from one cblas_sgemm call (n × dim by dim × k), whose
 * kernels reduce each dot product in a fixed order. Everything that defines the result's
 * geometry beyond assignment — k-means++ weights, empty-cluster reseeding, radii — uses
 * ps_l2dist, so a stored radius equals ps_l2dist(member, centroid) bit for bit and the query-time
 * test "distance <= radius" holds for the member that defined it.
 *
 * Stored format (little-endian, no padding), len = 12 + 8k + 4k·dim bytes:
 *   offset 0          4 bytes  magic: the bytes 'P' 'S' 'P' 'F'
 *   offset 4          u32      k, 0..PS_PROFILE_KMAX
 *   offset 8          u32      dim, 1..65536 when k > 0 (any value <= 65536 when k == 0)
 *   offset 12         f64      radius[k], finite, >= 0
 *   offset 12 + 8k    f32      centroids[k][dim], row-major, finite
 */
#include "ps/profile.h"
#include "ps/rand.h"
#include "ps/alloc.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ROUNDS 100
#define MAX_DIM    65536u
#define HEADER_LEN 12

static const uint8_t magic[4] = {'P', 'S', 'P', 'F'};

/* Compiled twice, for AVX2 and for any x86-64, the better chosen at load time: the same
 * additions in the same order either way (AVX2 without FMA), so the same bits. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("avx2", "default")))
#endif
double
ps_dot(const float *a, const float *b, size_t dim)
{
    /* Eight named lanes (not an array) so they live in registers; products of floats are
     * exact in double, so only the lane sums round, always in this order. */
    double l0 = 0, l1 = 0, l2 = 0, l3 = 0, l4 = 0, l5 = 0, l6 = 0, l7 = 0;
    size_t i = 0;
    for (; i + 8 <= dim; i += 8) {
        l0 += (double)a[i] * (double)b[i];
        l1 += (double)a[i + 1] * (double)b[i + 1];
        l2 += (double)a[i + 2] * (double)b[i + 2];
        l3 += (double)a[i + 3] * (double)b[i + 3];
        l4 += (double)a[i + 4] * (double)b[i + 4];
        l5 += (double)a[i + 5] * (double)b[i + 5];
        l6 += (double)a[i + 6] * (double)b[i + 6];
        l7 += (double)a[i + 7] * (double)b[i + 7];
    }
    double tail = 0;
    for (; i < dim; i++) tail += (double)a[i] * (double)b[i];
    return (((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7))) + tail;
}

/* ps_dot of e with itself and with k centroids at once, the centroids already in double (cd:
 * k × dim): e is read and widened once, and the 8·(k + 1) lanes are independent chains. Each
 * lane adds the same products in the same order as ps_dot, and a float widened to double is
 * the same double whoever widens it, so every result has ps_dot's bits. K is a constant in
 * each call below, so the lanes stay in registers. */
static inline __attribute__((always_inline)) void
dots_k(const float *e, const double *cd, uint32_t K, size_t dim, double *ee, double *out)
{
    double le[8] = {0}, lc[PS_PROFILE_KMAX][8] = {{0}};
    size_t i = 0;
    for (; i + 8 <= dim; i += 8) {
        double x[8];
        for (int j = 0; j < 8; j++) x[j] = (double)e[i + j];
        for (int j = 0; j < 8; j++) le[j] += x[j] * x[j];
        for (uint32_t c = 0; c < K; c++)
            for (int j = 0; j < 8; j++) lc[c][j] += x[j] * cd[c * dim + i + j];
    }
    double te = 0, tc[PS_PROFILE_KMAX] = {0};
    for (size_t t = i; t < dim; t++) {
        double x = (double)e[t];
        te += x * x;
        for (uint32_t c = 0; c < K; c++) tc[c] += x * cd[c * dim + t];
    }
#define LANES(l, t)                                                                                \
    ((((l)[0] + (l)[4]) + ((l)[1] + (l)[5])) + (((l)[2] + (l)[6]) + ((l)[3] + (l)[7]))) + (t)
    *ee = LANES(le, te);
    for (uint32_t c = 0; c < K; c++) out[c] = LANES(lc[c], tc[c]);
#undef LANES
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("avx2", "default")))
#endif
void
ps_dot_many(const float *e, const double *cd, uint32_t k, size_t dim, double *ee, double *out)
{
    switch (k) {
    case 0:
        dots_k(e, cd, 0, dim, ee, out);
        break;
    case 1:
        dots_k(e, cd, 1, dim, ee, out);
        break;
    case 2:
        dots_k(e, cd, 2, dim, ee, out);
        break;
    case 3:
        dots_k(e, cd, 3, dim, ee, out);
        break;
    case 4:
        dots_k(e, cd, 4, dim, ee, out);
        break;
    default:
        dots_k(e, cd, PS_PROFILE_KMAX, dim, ee, out);
        break;
    }
}

double ps_l2dist(const float *a, const float *b, size_t dim)
{
    /* Keep this a plain loop: other components re-implement it and compare bit for bit. */
    double s = 0.0;
    for (size_t i = 0; i < dim; i++) {
        double d = (double)a[i] - (double)b[i];
        s += d * d;
    }
    return sqrt(s);
}

/* --- k-means ------------------------------------------------------------------------- */

typedef struct kmeans {
    const float *x; /* n × dim points (borrowed) */
    size_t n, dim;
    uint32_t k;
    float *c;         /* k × dim centroids */
    double *xnorm;    /* n: ‖x_i‖² */
    double *cnorm;    /* k: ‖c_j‖² */
    float *dot;       /* n × k: x_i · c_j */
    uint32_t *assign; /* n: cluster of each point */
    double *dist;     /* n: scratch distances */
    double *sum;      /* k × dim: scratch for means */
    uint32_t *count;  /* k: cluster sizes */
} kmeans;

static int same_point(const float *a, const float *b, size_t dim)
{
    for (size_t i = 0; i < dim; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

/* min(kmax, number of distinct points). Points compare as floats (0.0 == -0.0). */
static uint32_t distinct_capped(const float *x, size_t n, size_t dim, uint32_t kmax)
{
    size_t rep[PS_PROFILE_KMAX];
    uint32_t nrep = 0;
    for (size_t i = 0; i < n && nrep < kmax; i++) {
        uint32_t r = 0;
        while (r < nrep && !same_point(x + i * dim, x + rep[r] * dim, dim)) r++;
        if (r == nrep) rep[nrep++] = i;
    }
    return nrep;
}

static double sq_norm(const float *v, size_t dim)
{
    double s = 0.0;
    for (size_t i = 0; i < dim; i++) s += (double)v[i] * (double)v[i];
    return s;
}

/* k-means++: the first centroid is a uniformly drawn point, each next one a point drawn with
 * probability proportional to its squared distance to the nearest centroid so far. Because
 * k <= distinct points, some point always has a positive weight. */
static void init_plusplus(kmeans *km, uint64_t seed)
{
    uint64_t rng = seed;
    double *d2 = km->dist;
    size_t pick = (size_t)(ps_rand_unit(ps_splitmix64(&rng)) * (double)km->n);
    if (pick >= km->n) pick = km->n - 1;
    memcpy(km->c, km->x + pick * km->dim, km->dim * sizeof *km->c);

    for (size_t i = 0; i < km->n; i++) d2[i] = INFINITY;
    for (uint32_t j = 1; j < km->k; j++) {
        const float *prev = km->c + (size_t)(j - 1) * km->dim;
        double total = 0.0, r, cum = 0.0;
        size_t last = SIZE_MAX;
        for (size_t i = 0; i < km->n; i++) {
            double d = ps_l2dist(km->x + i * km->dim, prev, km->dim);
            if (d * d < d2[i]) d2[i] = d * d;
            total += d2[i];
        }
        r = ps_rand_unit(ps_splitmix64(&rng)) * total;
        pick = SIZE_MAX;
        for (size_t i = 0; i < km->n; i++) {
            if (d2[i] <= 0) continue;
            cum += d2[i];
            last = i;
            if (cum > r) {
                pick = i;
                break;
            }
        }
        if (pick == SIZE_MAX) pick = last; /* rounding left r at or past the final sum */
        memcpy(km->c + (size_t)j * km->dim, km->x + pick * km->dim, km->dim * sizeof *km->c);
    }
}

/* Assign each point to its nearest centroid (‖x‖² + ‖c‖² − 2x·c; ties to the lower index).
 * Returns the number of points whose cluster changed. */
static size_t assign_points(kmeans *km)
{
    size_t changed = 0;
    for (uint32_t j = 0; j < km->k; j++) km->cnorm[j] = sq_norm(km->c + j * km->dim, km->dim);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)km->n, (int)km->k, (int)km->dim, 1.0f,
                km->x, (int)km->dim, km->c, (int)km->dim, 0.0f, km->dot, (int)km->k);
    for (size_t i = 0; i < km->n; i++) {
        const float *g = km->dot + i * km->k;
        uint32_t best = 0;
        double bestd = km->xnorm[i] + km->cnorm[0] - 2.0 * (double)g[0];
        for (uint32_t j = 1; j < km->k; j++) {
            double d = km->xnorm[i] + km->cnorm[j] - 2.0 * (double)g[j];
            if (d < bestd) {
                bestd = d;
                best = j;
            }
        }
        if (km->assign[i] != best) changed++;
        km->assign[i] = best;
    }
    return changed;
}

/* Centroids become the means of their members (summed in double, in point order). Returns the
 * number of empty clusters, whose centroids are left untouched. */
static uint32_t update_means(kmeans *km)
{
    uint32_t empty = 0;
    memset(km->count, 0, km->k * sizeof *km->count);
    memset(km->sum, 0, (size_t)km->k * km->dim * sizeof *km->sum);
    for (size_t i = 0; i < km->n; i++) {
        const float *x = km->x + i * km->dim;
        double *sum = km->sum + (size_t)km->assign[i] * km->dim;
        for (size_t t = 0; t < km->dim; t++) sum[t] += x[t];
        km->count[km->assign[i]]++;
    }
    for (uint32_t j = 0; j < km->k; j++) {
        float *c = km->c + (size_t)j * km->dim;
        const double *sum = km->sum + (size_t)j * km->dim;
        if (!km->count[j]) {
            empty++;
            continue;
        }
        for (size_t t = 0; t < km->dim; t++) c[t] = (float)(sum[t] / km->count[j]);
    }
    return empty;
}

/* Give each empty cluster, lowest index first, the point farthest from its nearest centroid
 * (its own centroid, or a centroid reseeded earlier in this pass); ties to the lower point. */
static void reseed_empty(kmeans *km)
{
    for (size_t i = 0; i < km->n; i++)
        km->dist[i] = ps_l2dist(km->x + i * km->dim, km->c + km->assign[i] * km->dim, km->dim);
    for (uint32_t j = 0; j < km->k; j++) {
        size_t far = 0;
        float *c = km->c + (size_t)j * km->dim;
        if (km->count[j]) continue;
        for (size_t i = 1; i < km->n; i++)
            if (km->dist[i] > km->dist[far]) far = i;
        memcpy(c, km->x + far * km->dim, km->dim * sizeof *c);
        for (size_t i = 0; i < km->n; i++) {
            double d = ps_l2dist(km->x + i * km->dim, c, km->dim);
            if (d < km->dist[i]) km->dist[i] = d;
        }
    }
}

/* Drop empty clusters (possible only when the round cap stops a run mid-reseed). */
static void drop_empty(kmeans *km)
{
    uint32_t to = 0, remap[PS_PROFILE_KMAX];
    for (uint32_t j = 0; j < km->k; j++) {
        remap[j] = to;
        if (!km->count[j]) continue;
        if (to != j)
            memmove(km->c + (size_t)to * km->dim, km->c + (size_t)j * km->dim,
                    km->dim * sizeof *km->c);
        km->count[to++] = km->count[j];
    }
    for (size_t i = 0; i < km->n; i++) km->assign[i] = remap[km->assign[i]];
    km->k = to;
}

static void run_lloyd(kmeans *km)
{
    int reseeded = 0;
    for (size_t i = 0; i < km->n; i++) km->assign[i] = UINT32_MAX;
    for (int round = 1;; round++) {
        size_t changed = assign_points(km);
        if (!changed && !reseeded) break; /* centroids are already the means of `assign` */
        uint32_t empty = update_means(km);
        if (round == MAX_ROUNDS) {
            if (empty) drop_empty(km);
            break;
        }
        reseeded = empty > 0;
        if (reseeded) reseed_empty(km);
    }
}

static void kmeans_free(kmeans *km)
{
    ps_free(km->xnorm);
    ps_free(km->cnorm);
    ps_free(km->dot);
    ps_free(km->assign);
    ps_free(km->dist);
    ps_free(km->sum);
    ps_free(km->count);
}

int ps_profile_build(const float *emb, size_t n, size_t dim, uint32_t kmax, uint64_t seed,
                     ps_profile *prof, ps_err *err)
{
    kmeans km = {0};
    int rc = 0;

    if (!prof) return ps_err_set(err, PS_EINVAL, "ps_profile_build: prof is NULL");
    memset(prof, 0, sizeof *prof);
    if (kmax < 1 || kmax > PS_PROFILE_KMAX)
        return ps_err_set(err, PS_EINVAL, "ps_profile_build: kmax = %u, want 1..%d", kmax,
                          PS_PROFILE_KMAX);
    if (dim < 1 || dim > MAX_DIM)
        return ps_err_set(err, PS_EINVAL, "ps_profile_build: dim = %zu, want 1..%u", dim, MAX_DIM);
    if (n > INT_MAX / PS_PROFILE_KMAX || n > SIZE_MAX / sizeof(float) / dim)
        return ps_err_set(err, PS_EINVAL, "ps_profile_build: %zu points are too many", n);
    if (n && !emb) return ps_err_set(err, PS_EINVAL, "ps_profile_build: emb is NULL");
    for (size_t i = 0; i < n * dim; i++)
        if (!isfinite(emb[i]))
            return ps_err_set(err, PS_EINVAL,
                              "ps_profile_build: emb[%zu][%zu] is not a finite number", i / dim,
                              i % dim);

    prof->dim = (uint32_t)dim;
    if (!n) return 0;

    km.x = emb;
    km.n = n;
    km.dim = dim;
    km.k = distinct_capped(emb, n, dim, kmax);
    km.c = ps_malloc((size_t)km.k * dim * sizeof *km.c);
    km.xnorm = ps_malloc(n * sizeof *km.xnorm);
    km.cnorm = ps_malloc(km.k * sizeof *km.cnorm);
    km.dot = ps_malloc(n * km.k * sizeof *km.dot);
    km.assign = ps_malloc(n * sizeof *km.assign);
    km.dist = ps_malloc(n * sizeof *km.dist);
    km.sum = ps_malloc((size_t)km.k * dim * sizeof *km.sum);
    km.count = ps_malloc(km.k * sizeof *km.count);
    if (!km.c || !km.xnorm || !km.cnorm || !km.dot || !km.assign || !km.dist || !km.sum ||
        !km.count) {
        rc = ps_err_set(err, PS_ENOMEM, "ps_profile_build: out of memory for %zu points × %zu", n,
                        dim);
        goto err;
    }
    for (size_t i = 0; i < n; i++) km.xnorm[i] = sq_norm(emb + i * dim, dim);

    init_plusplus(&km, seed);
    run_lloyd(&km);

    for (size_t i = 0; i < n; i++) {
        uint32_t j = km.assign[i];
        double d = ps_l2dist(emb + i * dim, km.c + (size_t)j * dim, dim);
        if (d > prof->radius[j]) prof->radius[j] = d;
    }
    prof->k = km.k;
    prof->centroids = km.c;
    km.c = NULL;

err:
    ps_free(km.c);
    kmeans_free(&km);
    return rc;
}

void ps_profile_clear(ps_profile *p)
{
    if (!p) return;
    ps_free(p->centroids);
    memset(p, 0, sizeof *p);
}

/* --- stored format ------------------------------------------------------------------- */

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

int ps_profile_encode(const ps_profile *p, uint8_t **buf, size_t *len, ps_err *err)
{
    size_t cells, need;
    uint8_t *out, *q;

    if (!buf || !len)
        return ps_err_set(err, PS_EINVAL, "ps_profile_encode: %s is NULL", buf ? "len" : "buf");
    *buf = NULL;
    *len = 0;
    if (!p) return ps_err_set(err, PS_EINVAL, "ps_profile_encode: profile is NULL");
    if (p->k > PS_PROFILE_KMAX || p->dim > MAX_DIM || (p->k && (!p->dim || !p->centroids)))
        return ps_err_set(err, PS_EINVAL, "ps_profile_encode: invalid profile (k = %u, dim = %u)",
                          p->k, p->dim);
    cells = (size_t)p->k * p->dim;
    need = HEADER_LEN + 8 * (size_t)p->k + 4 * cells;
    if (!(out = ps_malloc(need)))
        return ps_err_set(err, PS_ENOMEM, "ps_profile_encode: out of memory for %zu bytes", need);

    memcpy(out, magic, 4);
    put_u32(out + 4, p->k);
    put_u32(out + 8, p->dim);
    q = out + HEADER_LEN;
    for (uint32_t j = 0; j < p->k; j++, q += 8) {
        uint64_t bits;
        memcpy(&bits, &p->radius[j], 8);
        put_u64(q, bits);
    }
    for (size_t i = 0; i < cells; i++, q += 4) {
        uint32_t bits;
        memcpy(&bits, &p->centroids[i], 4);
        put_u32(q, bits);
    }
    *buf = out;
    *len = need;
    return 0;
}

int ps_profile_decode(const uint8_t *buf, size_t len, ps_profile *p, ps_err *err)
{
    uint32_t k, dim;
    size_t cells, need;
    const uint8_t *q;

    if (!p) return ps_err_set(err, PS_EINVAL, "ps_profile_decode: profile is NULL");
    memset(p, 0, sizeof *p);
    if (!buf && len) return ps_err_set(err, PS_EINVAL, "ps_profile_decode: buf is NULL");
    if (len < HEADER_LEN)
        return ps_err_set(err, PS_ECORRUPT, "profile: %zu bytes, shorter than the %d-byte header",
                          len, HEADER_LEN);
    if (memcmp(buf, magic, 4) != 0)
        return ps_err_set(err, PS_ECORRUPT, "profile: bad magic (want \"PSPF\")");
    k = get_u32(buf + 4);
    dim = get_u32(buf + 8);
    if (k > PS_PROFILE_KMAX)
        return ps_err_set(err, PS_ECORRUPT, "profile: k = %u exceeds %d", k, PS_PROFILE_KMAX);
    if (dim > MAX_DIM || (k && !dim))
        return ps_err_set(err, PS_ECORRUPT, "profile: dim = %u out of range (k = %u)", dim, k);
    cells = (size_t)k * dim;
    need = HEADER_LEN + 8 * (size_t)k + 4 * cells;
    if (len != need)
        return ps_err_set(err, PS_ECORRUPT, "profile: %zu bytes, want %zu for k = %u, dim = %u",
                          len, need, k, dim);

    q = buf + HEADER_LEN;
    for (uint32_t j = 0; j < k; j++, q += 8) {
        uint64_t bits = get_u64(q);
        memcpy(&p->radius[j], &bits, 8);
        if (!isfinite(p->radius[j]) || p->radius[j] < 0) {
            memset(p, 0, sizeof *p);
            return ps_err_set(err, PS_ECORRUPT, "profile: radius[%u] is not a finite number >= 0",
                              j);
        }
    }
    if (cells && !(p->centroids = ps_malloc(cells * sizeof *p->centroids))) {
        memset(p, 0, sizeof *p);
        return ps_err_set(err, PS_ENOMEM, "profile: out of memory for %zu centroid values", cells);
    }
    for (size_t i = 0; i < cells; i++, q += 4) {
        uint32_t bits = get_u32(q);
        memcpy(&p->centroids[i], &bits, 4);
        if (!isfinite(p->centroids[i])) {
            ps_profile_clear(p);
            return ps_err_set(err, PS_ECORRUPT, "profile: centroid[%zu][%zu] is not finite",
                              i / dim, i % dim);
        }
    }
    p->k = k;
    p->dim = dim;
    return 0;
}
