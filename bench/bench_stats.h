/*
 * bench_stats.h — the latency statistics every benchmark reports (header-only: benchmarks are
 * single files linked to nothing but the engine).
 */
#ifndef BENCH_STATS_H
#define BENCH_STATS_H

#include <stddef.h>
#include <stdlib.h>

static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The p-quantile (0..1) of n ascending values, nearest rank; 0 when n == 0. */
static inline double bench_pct(const double *sorted, size_t n, double p)
{
    if (n == 0) return 0;
    return sorted[(size_t)(p * (double)(n - 1) + 0.5)];
}

/* Median of v[0..n) (n >= 1); sorts v in place. */
static inline double bench_median(double *v, size_t n)
{
    qsort(v, n, sizeof *v, bench_cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

#endif
