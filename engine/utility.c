/*
 * utility.c — crowd-sourced sticker utility (paper eq. 1–5, DESIGN §1).
 *
 * ps_usage_count turns the training click log into three counts per corpus row: Pop (clicks),
 * Cross (distinct users) and QA (distinct queries). Sticker ids are mapped to rows through a
 * ps_map, and distinct (row, user) and (row, query) pairs are found with one ps_map of 64-bit
 * keys (row << 32 | user-or-query) reused for both passes, so the cost is linear in the
 * number of clicks (millions) and rows (~600k). ps_utility_compute then applies the
 * smoothing, max-normalization, square root and weighting of the paper in double precision.
 */
#include "ps/utility.h"
#include "ps/alloc.h"
#include "ps/map.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const ps_utility_cfg ps_utility_default = {.base = 1.0, .w = {1.0, 1.0, 1.0}};

#define EMPTY_ROW UINT32_MAX

/* Map each id to its first row. */
static int idmap_init(ps_map *m, const uint64_t *ids, size_t n)
{
    ps_map_init(m, PS_MAP_U64);
    if (ps_map_reserve(m, n)) return PS_ENOMEM;
    for (size_t r = 0; r < n; r++) {
        uint64_t *v;
        int added = ps_map_u64_add(m, ids[r], &v);
        if (added < 0) return added;
        if (added) *v = r; /* a repeated id keeps its first row */
    }
    return 0;
}

static uint32_t idmap_get(const ps_map *m, uint64_t id)
{
    const uint64_t *v = ps_map_u64_get(m, id);
    return v ? (uint32_t)*v : EMPTY_ROW;
}

/* For each known click i (row[i] != EMPTY_ROW), count distinct (row, other[i]) pairs into
 * out[row]. The set is empty on entry and has room for every known click. */
static void count_distinct(const uint32_t *row, const uint32_t *other, size_t nclicks, ps_map *set,
                           uint32_t *out)
{
    for (size_t i = 0; i < nclicks; i++) {
        if (row[i] == EMPTY_ROW) continue;
        if (ps_map_u64_add(set, (uint64_t)row[i] << 32 | other[i], NULL) == 1) out[row[i]]++;
    }
}

int ps_usage_count(const ps_clicklog *log, const uint64_t *ids, size_t n, ps_usage *usage,
                   size_t *unknown, ps_err *err)
{
    ps_map map = PS_MAP_INIT(PS_MAP_U64);
    ps_map set = PS_MAP_INIT(PS_MAP_U64); /* pairs, reused for users then queries */
    uint32_t *row = NULL;                 /* per click: its corpus row, or EMPTY_ROW */
    size_t known = 0, nunknown = 0;
    int rc;

    if (unknown) *unknown = 0;
    if (!usage) return ps_err_set(err, PS_EINVAL, "ps_usage_count: usage is NULL");
    memset(usage, 0, sizeof *usage);
    if (!log || (n && !ids))
        return ps_err_set(err, PS_EINVAL, "ps_usage_count: %s is NULL", log ? "ids" : "log");
    if (n >= UINT32_MAX)
        return ps_err_set(err, PS_EINVAL, "ps_usage_count: %zu stickers exceed the row limit", n);
    if (log->n && (!log->user || !log->query || !log->sticker))
        return ps_err_set(err, PS_EINVAL, "ps_usage_count: log has %zu clicks but NULL columns",
                          log->n);

    usage->n = n;
    usage->pop = ps_calloc(n ? n : 1, sizeof *usage->pop);
    usage->cross = ps_calloc(n ? n : 1, sizeof *usage->cross);
    usage->qa = ps_calloc(n ? n : 1, sizeof *usage->qa);
    row = ps_malloc((log->n ? log->n : 1) * sizeof *row);
    if (!usage->pop || !usage->cross || !usage->qa || !row) goto err;
    if ((rc = idmap_init(&map, ids, n)) < 0) goto err;

    for (size_t i = 0; i < log->n; i++) {
        row[i] = idmap_get(&map, log->sticker[i]);
        if (row[i] == EMPTY_ROW) {
            nunknown++;
        } else {
            usage->pop[row[i]]++;
            known++;
        }
    }
    ps_map_free(&map);

    if (known) { /* reserved for every known click: the adds below cannot fail */
        if (ps_map_reserve(&set, known)) goto err;
        count_distinct(row, log->user, log->n, &set, usage->cross);
        ps_map_clear(&set);
        count_distinct(row, log->query, log->n, &set, usage->qa);
    }
    if (unknown) *unknown = nunknown;
    ps_map_free(&set);
    ps_free(row);
    return 0;

err:
    rc = ps_err_set(err, PS_ENOMEM, "ps_usage_count: out of memory for %zu clicks, %zu stickers",
                    log->n, n);
    ps_map_free(&map);
    ps_map_free(&set);
    ps_free(row);
    ps_usage_free(usage);
    return rc;
}

void ps_usage_free(ps_usage *u)
{
    if (!u) return;
    ps_free(u->pop);
    ps_free(u->cross);
    ps_free(u->qa);
    memset(u, 0, sizeof *u);
}

/* x + base·[x == 0]: a sticker nobody clicked still gets a floor of `base`. */
static double smooth(uint32_t x, double base)
{
    return x ? (double)x : base;
}

void ps_utility_compute(const ps_utility_cfg *cfg, const ps_usage *usage, float *util)
{
    const uint32_t *col[3];
    double base, mx[3] = {0, 0, 0};

    if (!usage || !util || !usage->n) return;
    if (!cfg) cfg = &ps_utility_default;
    base = cfg->base > 0 ? cfg->base : 0.0;
    col[0] = usage->pop;
    col[1] = usage->cross;
    col[2] = usage->qa;

    for (int j = 0; j < 3; j++)
        for (size_t s = 0; s < usage->n; s++) {
            double x = smooth(col[j][s], base);
            if (x > mx[j]) mx[j] = x;
        }

    for (size_t s = 0; s < usage->n; s++) {
        double u = 0.0;
        for (int j = 0; j < 3; j++)
            if (mx[j] > 0) u += cfg->w[j] * sqrt(smooth(col[j][s], base) / mx[j]);
        util[s] = (float)u;
    }
}
