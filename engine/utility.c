/*
 * utility.c — crowd-sourced sticker utility (paper eq. 1–5, DESIGN §1).
 *
 * ps_usage_count turns the training click log into three counts per corpus row: Pop (clicks),
 * Cross (distinct users) and QA (distinct queries). Sticker ids are mapped to rows through an
 * open-addressing table, and distinct (row, user) and (row, query) pairs are found with one
 * open-addressing set of 64-bit keys reused for both passes, so the cost is linear in the
 * number of clicks (millions) and rows (~600k). ps_utility_compute then applies the
 * smoothing, max-normalization, square root and weighting of the paper in double precision.
 *
 * Table layouts (both sized to a power of two at most half full, linear probing):
 *   id map:   key[slot] = sticker id, row[slot] = corpus row, or UINT32_MAX when empty.
 *   pair set: key[slot] = row << 32 | user-or-query, or UINT64_MAX when empty; a row is
 *             < UINT32_MAX, so a real key never equals the empty marker.
 */
#include "ps/utility.h"
#include "ps/hash.h"
#include "ps/alloc.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const ps_utility_cfg ps_utility_default = {.base = 1.0, .w = {1.0, 1.0, 1.0}};

#define EMPTY_ROW UINT32_MAX
#define EMPTY_KEY UINT64_MAX

/* Smallest power of two >= 2 * n (at least 16), or 0 if that would overflow. */
static size_t table_size(size_t n)
{
    size_t cap = 16;
    while (cap < n * 2) {
        if (cap > SIZE_MAX / 4) return 0;
        cap <<= 1;
    }
    return cap;
}

typedef struct idmap {
    uint64_t *key;
    uint32_t *row;
    size_t mask;
} idmap;

static int idmap_init(idmap *m, const uint64_t *ids, size_t n)
{
    size_t cap = table_size(n);
    memset(m, 0, sizeof *m);
    if (!cap) return PS_ENOMEM;
    m->key = ps_malloc(cap * sizeof *m->key);
    m->row = ps_malloc(cap * sizeof *m->row);
    if (!m->key || !m->row) return PS_ENOMEM;
    memset(m->row, 0xff, cap * sizeof *m->row);
    m->mask = cap - 1;
    for (size_t r = 0; r < n; r++) {
        size_t s = ps_hash_u64(ids[r]) & m->mask;
        while (m->row[s] != EMPTY_ROW && m->key[s] != ids[r]) s = (s + 1) & m->mask;
        if (m->row[s] == EMPTY_ROW) { /* a repeated id keeps its first row */
            m->key[s] = ids[r];
            m->row[s] = (uint32_t)r;
        }
    }
    return 0;
}

static uint32_t idmap_get(const idmap *m, uint64_t id)
{
    size_t s = ps_hash_u64(id) & m->mask;
    while (m->row[s] != EMPTY_ROW) {
        if (m->key[s] == id) return m->row[s];
        s = (s + 1) & m->mask;
    }
    return EMPTY_ROW;
}

static void idmap_free(idmap *m)
{
    ps_free(m->key);
    ps_free(m->row);
}

/* Insert key; returns 1 if it was new, 0 if already present. */
static int pairset_add(uint64_t *key, size_t mask, uint64_t k)
{
    size_t s = ps_hash_u64(k) & mask;
    while (key[s] != EMPTY_KEY) {
        if (key[s] == k) return 0;
        s = (s + 1) & mask;
    }
    key[s] = k;
    return 1;
}

/* For each known click i (row[i] != EMPTY_ROW), count distinct (row, other[i]) pairs into
 * out[row]. The set must be empty on entry. */
static void count_distinct(const uint32_t *row, const uint32_t *other, size_t nclicks,
                           uint64_t *set, size_t mask, uint32_t *out)
{
    for (size_t i = 0; i < nclicks; i++) {
        if (row[i] == EMPTY_ROW) continue;
        if (pairset_add(set, mask, (uint64_t)row[i] << 32 | other[i])) out[row[i]]++;
    }
}

int ps_usage_count(const ps_clicklog *log, const uint64_t *ids, size_t n, ps_usage *usage,
                   size_t *unknown, ps_err *err)
{
    idmap map = {0};
    uint32_t *row = NULL; /* per click: its corpus row, or EMPTY_ROW */
    uint64_t *set = NULL; /* pair set, reused for users then queries */
    size_t known = 0, cap = 0, nunknown = 0;
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
    idmap_free(&map);
    memset(&map, 0, sizeof map);

    if (known) {
        cap = table_size(known);
        if (!cap || !(set = ps_malloc(cap * sizeof *set))) goto err;
        memset(set, 0xff, cap * sizeof *set);
        count_distinct(row, log->user, log->n, set, cap - 1, usage->cross);
        memset(set, 0xff, cap * sizeof *set);
        count_distinct(row, log->query, log->n, set, cap - 1, usage->qa);
    }
    if (unknown) *unknown = nunknown;
    ps_free(set);
    ps_free(row);
    return 0;

err:
    rc = ps_err_set(err, PS_ENOMEM, "ps_usage_count: out of memory for %zu clicks, %zu stickers",
                    log->n, n);
    idmap_free(&map);
    ps_free(set);
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
