/*
 * rand.c — normal deviates for ps_rng (rand.h): a 128-layer ziggurat (Marsaglia & Tsang,
 * "The Ziggurat Method for Generating Random Variables", 2000).
 *
 * One 64-bit xoshiro draw gives the layer (low 7 bits) and a signed 32-bit abscissa (high
 * 32 bits), so the two are independent. ~99% of draws return after one compare and one
 * multiply; the rest take the wedge or tail path below. The tables are computed on first use;
 * an acquire load of zig_ready keeps the fast path free of pthread_once calls.
 */
#include "ps/rand.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define ZIG_R 3.442619855899      /* start of the tail */
#define ZIG_V 9.91256303526217e-3 /* area of each layer */

static uint32_t zig_k[128];
static double zig_w[128], zig_f[128];
static pthread_once_t zig_once = PTHREAD_ONCE_INIT;
static atomic_int zig_ready;

static void zig_tables(void)
{
    const double m1 = 2147483648.0;
    double dn = ZIG_R, tn = dn, q = ZIG_V / exp(-0.5 * dn * dn);

    zig_k[0] = (uint32_t)((dn / q) * m1);
    zig_k[1] = 0;
    zig_w[0] = q / m1;
    zig_w[127] = dn / m1;
    zig_f[0] = 1.0;
    zig_f[127] = exp(-0.5 * dn * dn);
    for (int i = 126; i >= 1; i--) {
        dn = sqrt(-2.0 * log(ZIG_V / dn + exp(-0.5 * dn * dn)));
        zig_k[i + 1] = (uint32_t)((dn / tn) * m1);
        tn = dn;
        zig_f[i] = exp(-0.5 * dn * dn);
        zig_w[i] = dn / m1;
    }
    atomic_store_explicit(&zig_ready, 1, memory_order_release);
}

/* The rare path: the wedge of layer iz, or the tail beyond ZIG_R for layer 0. */
static double zig_fix(ps_rng *r, int32_t hz, unsigned iz)
{
    for (;;) {
        double x = hz * zig_w[iz];
        if (iz == 0) {
            double y;
            do {
                x = -log(ps_rng_unif_pos(r)) / ZIG_R;
                y = -log(ps_rng_unif_pos(r));
            } while (y + y < x * x);
            return hz > 0 ? ZIG_R + x : -ZIG_R - x;
        }
        if (zig_f[iz] + ps_rng_unif(r) * (zig_f[iz - 1] - zig_f[iz]) < exp(-0.5 * x * x)) return x;
        uint64_t u = ps_rng_next(r);
        hz = (int32_t)(uint32_t)(u >> 32);
        iz = (unsigned)(u & 127);
        if ((uint32_t)labs((long)hz) < zig_k[iz]) return hz * zig_w[iz];
    }
}

double ps_rng_normal(ps_rng *r)
{
    if (!atomic_load_explicit(&zig_ready, memory_order_acquire))
        pthread_once(&zig_once, zig_tables);

    uint64_t u = ps_rng_next(r);
    int32_t hz = (int32_t)(uint32_t)(u >> 32);
    unsigned iz = (unsigned)(u & 127);

    if ((uint32_t)labs((long)hz) < zig_k[iz]) return hz * zig_w[iz];
    return zig_fix(r, hz, iz);
}

int ps_random_bytes(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

void ps_random_hex_id(char out[33], uint64_t salt)
{
    uint8_t r[16];
    if (getrandom(r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) {
        static _Atomic uint64_t n;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t seed = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^
                        ((uint64_t)getpid() << 32) ^ salt ^
                        atomic_fetch_add(&n, 1) * 0x9e3779b97f4a7c15ull;
        for (int i = 0; i < 16; i += 8) {
            uint64_t v = ps_splitmix64(&seed);
            memcpy(r + i, &v, 8);
        }
    }
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        out[2 * i] = hex[r[i] >> 4];
        out[2 * i + 1] = hex[r[i] & 15];
    }
    out[32] = '\0';
}
