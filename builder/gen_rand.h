/*
 * gen_rand.h — the one PRNG family of the demo data generator (internal to builder/gen*.c).
 *
 * xoshiro256** seeded through splitmix64. Every part of the generator draws from its own
 * stream, gen__rng_seed(seed, stream), so that e.g. the embedding dimension changes the
 * embeddings and nothing else. Normal deviates come from a 128-layer ziggurat (Marsaglia &
 * Tsang 2000) that takes the layer and the value from separate bits of one 64-bit draw.
 * Everything here is deterministic on a given platform: the same seed gives the same numbers.
 */
#ifndef BUILDER_GEN_RAND_H
#define BUILDER_GEN_RAND_H

#include <stddef.h>
#include <stdint.h>

typedef struct gen__rng {
    uint64_t s[4];
} gen__rng;

/* Streams: one per independent part of the output. */
enum {
    GEN__STREAM_IDS = 1,
    GEN__STREAM_SERIES,
    GEN__STREAM_CENTRES,
    GEN__STREAM_TEXT,
    GEN__STREAM_EMBED,
    GEN__STREAM_USERS,
    GEN__STREAM_CLICKS,
    GEN__STREAM_QUERIES,
};

static inline uint64_t gen__splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline void gen__rng_seed(gen__rng *r, uint64_t seed, uint64_t stream)
{
    uint64_t x = seed ^ gen__splitmix64(&(uint64_t){stream * 0xD1B54A32D192ED03ull});
    for (int i = 0; i < 4; i++) r->s[i] = gen__splitmix64(&x);
}

static inline uint64_t gen__rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static inline uint64_t gen__next(gen__rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = gen__rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = gen__rotl(s[3], 45);
    return out;
}

/* Uniform in [0, 1). */
static inline double gen__unif(gen__rng *r)
{
    return (double)(gen__next(r) >> 11) * 0x1.0p-53;
}

/* Uniform in (0, 1], safe for log(). */
static inline double gen__unif_pos(gen__rng *r)
{
    return (double)((gen__next(r) >> 11) + 1) * 0x1.0p-53;
}

/* Uniform integer in [0, n), n >= 1, without modulo bias (Lemire). */
static inline uint64_t gen__below(gen__rng *r, uint64_t n)
{
    unsigned __int128 m = (unsigned __int128)gen__next(r) * n;
    uint64_t lo = (uint64_t)m;
    if (lo < n) {
        uint64_t t = (0 - n) % n;
        while (lo < t) {
            m = (unsigned __int128)gen__next(r) * n;
            lo = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

/* Standard normal deviate (ziggurat; gen_rand.c). Call gen__normal_init() once first (it is
 * idempotent and thread-safe). */
void gen__normal_init(void);
double gen__normal(gen__rng *r);

#endif
