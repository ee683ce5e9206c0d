/*
 * rand.h — the engine's one seeded PRNG family: splitmix64 and xoshiro256** (Blackman &
 * Vigna), plus standard normal deviates from a 128-layer ziggurat (rand.c).
 *
 * Not cryptographic. Everything here is deterministic on a given platform: the same seed and
 * stream give the same numbers, so generated data, k-means++ picks and evaluation splits are
 * reproducible. Do not change a formula here without expecting every seeded output of the
 * builder and the profile k-means to change with it.
 *
 * ps_rng is a plain value (32 bytes, no allocation): copy it, keep it on the stack, and give
 * each thread its own. The one-word functions (next, unif, below) are inline because the data
 * generator calls them hundreds of millions of times.
 */
#ifndef PS_RAND_H
#define PS_RAND_H

#include <stddef.h>
#include <stdint.h>

/* n bytes from the kernel's cryptographic generator (getrandom): the one source of secrets and
 * unguessable ids (checkpoint sessions, click ids) — never the seeded PRNGs below. 0, or -1
 * with errno. */
int ps_random_bytes(void *buf, size_t n);

/* A fresh id of 128 random bits as 32 lowercase hex digits and a NUL (click ids): the
 * kernel's bits, or — when it has none yet (early boot) — a splitmix64 stream seeded from the
 * clock, the pid, a process-wide counter and salt, so two calls never repeat. Never fails. */
void ps_random_hex_id(char out[33], uint64_t salt);

/* splitmix64: advances *x by the golden-ratio increment and returns the mixed value. Used on
 * its own as a small one-word stream, and to expand seeds for ps_rng_seed. */
static inline uint64_t ps_splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The top 53 bits of a 64-bit draw as a double in [0, 1). */
static inline double ps_rand_unit(uint64_t bits)
{
    return (double)(bits >> 11) * 0x1.0p-53;
}

/* xoshiro256** state. Set it with ps_rng_seed (an all-zero state would stay zero). */
typedef struct ps_rng {
    uint64_t s[4];
} ps_rng;

/* Seed *r from (seed, stream). Different streams of one seed are independent sequences, so
 * each part of a computation can draw from its own stream without disturbing the others. */
static inline void ps_rng_seed(ps_rng *r, uint64_t seed, uint64_t stream)
{
    uint64_t x = seed ^ ps_splitmix64(&(uint64_t){stream * 0xD1B54A32D192ED03ull});
    for (int i = 0; i < 4; i++) r->s[i] = ps_splitmix64(&x);
}

static inline uint64_t ps__rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* The next 64 uniformly distributed bits. */
static inline uint64_t ps_rng_next(ps_rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = ps__rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = ps__rotl(s[3], 45);
    return out;
}

/* Uniform in [0, 1). */
static inline double ps_rng_unif(ps_rng *r)
{
    return ps_rand_unit(ps_rng_next(r));
}

/* Uniform in (0, 1], safe for log(). */
static inline double ps_rng_unif_pos(ps_rng *r)
{
    return (double)((ps_rng_next(r) >> 11) + 1) * 0x1.0p-53;
}

/* Uniform integer in [0, n), n >= 1, without modulo bias (Lemire 2019). */
static inline uint64_t ps_rng_below(ps_rng *r, uint64_t n)
{
    unsigned __int128 m = (unsigned __int128)ps_rng_next(r) * n;
    uint64_t lo = (uint64_t)m;
    if (lo < n) {
        uint64_t t = (0 - n) % n;
        while (lo < t) {
            m = (unsigned __int128)ps_rng_next(r) * n;
            lo = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

/* A standard normal deviate (mean 0, variance 1). Usually one draw of r, more in ~1% of
 * calls. Thread-safe: the ziggurat tables are built on first use, once per process. */
double ps_rng_normal(ps_rng *r);

#endif
