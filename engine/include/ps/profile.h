/*
 * profile.h — user style profiles (DESIGN §1): k-means (k <= 5, k-means++ init, OpenBLAS)
 * over the embeddings of the stickers a user clicked; each centroid keeps a radius = the
 * largest distance of a member to it.
 *
 * Distances are always ps_l2dist (double, sequential), so a radius and the test "distance <=
 * radius" at query time agree bit for bit on the member that defined the radius.
 */
#ifndef PS_PROFILE_H
#define PS_PROFILE_H

#include <stddef.h>
#include <stdint.h>

#include "ps/err.h"

#define PS_PROFILE_KMAX 5

typedef struct ps_profile {
    uint32_t k;       /* number of centroids, 0..PS_PROFILE_KMAX (0 = no profile) */
    uint32_t dim;     /* embedding dimension */
    float *centroids; /* k * dim, owned */
    double radius[PS_PROFILE_KMAX];
} ps_profile;

/* Euclidean distance, accumulated in double in index order: sqrt(sum((double)a_i - b_i)^2). */
double ps_l2dist(const float *a, const float *b, size_t dim);

/* Dot product a·b with products and sums in double over 8 interleaved lanes, combined in a
 * fixed order: the result depends only on the values, never on batch size, alignment or BLAS
 * kernel, so every node that scores a sticker for a centroid gets the same bits. */
double ps_dot(const float *a, const float *b, size_t dim);

/* ps_dot(e, e) into *ee and ps_dot(e, centroid c) into out[c] for the k <= PS_PROFILE_KMAX
 * centroids given widened to double (cd: k × dim), with exactly ps_dot's bits, in one pass. */
void ps_dot_many(const float *e, const double *cd, uint32_t k, size_t dim, double *ee, double *out);

/* Build a profile from the n embeddings at emb (row-major n × dim; the caller passes the
 * user's distinct clicked stickers). k = min(kmax, n distinct points); k-means++ seeded by
 * `seed`, Lloyd iterations until assignments are stable or 100 rounds; deterministic for the
 * same input. An empty cluster is re-seeded with the point farthest from its centroid.
 * Centroids are member means (not normalized); radius[c] = max ps_l2dist(member, centroid).
 * (Only if the round cap stops a run right after a re-seed can an empty cluster remain; it is
 * dropped, so k is smaller.) n == 0 gives k == 0 and dim == dim.
 * OUT: prof (free with ps_profile_clear; holds nothing to free on error).
 * Errors: PS_EINVAL (kmax not 1..PS_PROFILE_KMAX, dim not 1..65536, n too large, a NULL
 * pointer, a non-finite embedding value), PS_ENOMEM. */
int ps_profile_build(const float *emb, size_t n, size_t dim, uint32_t kmax, uint64_t seed,
                     ps_profile *prof, ps_err *err);
void ps_profile_clear(ps_profile *p);

/* Serialized form (little-endian, no padding), the value stored per user:
 *   bytes 'P' 'S' 'P' 'F' | u32 k | u32 dim | f64 radius[k] | f32 centroids[k*dim]
 * so len = 12 + 8k + 4k·dim. ps_profile_encode returns a malloc'd buffer in *buf (caller
 * frees) of *len bytes; errors PS_EINVAL (bad profile), PS_ENOMEM.
 * ps_profile_decode fills p (free with ps_profile_clear; nothing to free on error) and
 * rejects with PS_ECORRUPT a bad magic, k > KMAX, dim > 65536, dim == 0 with k > 0, a length
 * other than the one k and dim imply, a negative or non-finite radius, a non-finite centroid
 * value; PS_ENOMEM. */
int ps_profile_encode(const ps_profile *p, uint8_t **buf, size_t *len, ps_err *err);
int ps_profile_decode(const uint8_t *buf, size_t len, ps_profile *p, ps_err *err);

#endif
