/*
 * eval.c — the evaluation metrics of the paper (§4–5, reference metrics.py).
 *
 * A group's ground truth is turned into a sorted, duplicate-free set once (on the stack for
 * small sets, which is every realistic group), and each cut-off then walks the top k of the
 * ranking with a binary search per item. A truth id counts once, at its first position in
 * the ranking. ps_eval_t keeps one row of sums per user, found through a ps_map keyed by
 * user number, and macro-averages at the end: first over a user's groups, then
 * over users in the order they were first seen.
 */
#include "ps/eval.h"
#include "ps/alloc.h"
#include "ps/map.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TRUTH_STACK 128

/* The distinct ids of one ground truth, sorted, with a "seen" flag per id. */
typedef struct truthset {
    uint64_t *id;
    uint8_t *seen;
    size_t n;
    void *heap;
    uint64_t stack_id[TRUTH_STACK];
    uint8_t stack_seen[TRUTH_STACK];
} truthset;

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Returns 0 or PS_ENOMEM (only for more than TRUTH_STACK ids). */
static int truth_init(truthset *t, const uint64_t *truth, size_t ntruth)
{
    size_t out = 0;
    t->heap = NULL;
    t->id = t->stack_id;
    t->seen = t->stack_seen;
    if (ntruth > TRUTH_STACK) {
        if (ntruth > SIZE_MAX / (sizeof *t->id + 1)) return PS_ENOMEM;
        if (!(t->heap = ps_malloc(ntruth * (sizeof *t->id + 1)))) return PS_ENOMEM;
        t->id = t->heap;
        t->seen = (uint8_t *)(t->id + ntruth);
    }
    if (ntruth) memcpy(t->id, truth, ntruth * sizeof *t->id);
    qsort(t->id, ntruth, sizeof *t->id, cmp_u64);
    for (size_t i = 0; i < ntruth; i++)
        if (!out || t->id[out - 1] != t->id[i]) t->id[out++] = t->id[i];
    t->n = out;
    return 0;
}

static void truth_release(truthset *t)
{
    ps_free(t->heap);
    t->heap = NULL;
}

static size_t truth_find(const truthset *t, uint64_t id)
{
    size_t lo = 0, hi = t->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->id[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < t->n && t->id[lo] == id ? lo : SIZE_MAX;
}

/* M-MRR@k and R@k of `ranked` against t. An empty truth scores 0 on both. */
static void truth_score(truthset *t, const uint64_t *ranked, size_t nranked, size_t k, double *mmrr,
                        double *recall)
{
    size_t top = nranked < k ? nranked : k, found = 0;
    double rr = 0.0;
    if (t->n) memset(t->seen, 0, t->n);
    for (size_t i = 0; i < top; i++) {
        size_t j = truth_find(t, ranked[i]);
        if (j == SIZE_MAX || t->seen[j]) continue;
        t->seen[j] = 1;
        found++;
        rr += 1.0 / (double)(i + 1);
    }
    *mmrr = rr;
    *recall = t->n ? (double)found / (double)t->n : 0.0;
}

static int score_one(const uint64_t *ranked, size_t nranked, size_t k, const uint64_t *truth,
                     size_t ntruth, double *mmrr, double *recall)
{
    truthset t;
    if ((!ranked && nranked) || (!truth && ntruth) || truth_init(&t, truth, ntruth) < 0) {
        *mmrr = *recall = NAN;
        return -1;
    }
    truth_score(&t, ranked, nranked, k, mmrr, recall);
    truth_release(&t);
    return 0;
}

double ps_eval_mmrr(const uint64_t *ranked, size_t nranked, size_t k, const uint64_t *truth,
                    size_t ntruth)
{
    double mmrr, recall;
    score_one(ranked, nranked, k, truth, ntruth, &mmrr, &recall);
    return mmrr;
}

double ps_eval_recall(const uint64_t *ranked, size_t nranked, size_t k, const uint64_t *truth,
                      size_t ntruth)
{
    double mmrr, recall;
    score_one(ranked, nranked, k, truth, ntruth, &mmrr, &recall);
    return recall;
}

/* --- per-user accumulation ----------------------------------------------------------- */

typedef struct user_sums {
    uint32_t user;
    uint32_t groups;
    double mmrr[PS_EVAL_MAXK];
    double recall[PS_EVAL_MAXK];
} user_sums;

struct ps_eval {
    size_t ks[PS_EVAL_MAXK];
    size_t nks;
    user_sums *row; /* users in first-seen order */
    size_t nrows, caprows;
    ps_map rows; /* user -> row index */
};

ps_eval_t *ps_eval_new(const size_t *ks, size_t nks, ps_err *err)
{
    ps_eval_t *e;
    if (!ks || nks < 1 || nks > PS_EVAL_MAXK) {
        if (!ks)
            ps_err_set(err, PS_EINVAL, "ps_eval_new: ks is NULL");
        else
            ps_err_set(err, PS_EINVAL, "ps_eval_new: nks = %zu, want 1..%d", nks, PS_EVAL_MAXK);
        return NULL;
    }
    for (size_t i = 0; i < nks; i++)
        if (ks[i] < 1) {
            ps_err_set(err, PS_EINVAL, "ps_eval_new: ks[%zu] = 0, want >= 1", i);
            return NULL;
        }
    if (!(e = ps_calloc(1, sizeof *e))) goto err;
    memcpy(e->ks, ks, nks * sizeof *ks);
    e->nks = nks;
    ps_map_init(&e->rows, PS_MAP_U64);
    return e;

err:
    ps_err_set(err, PS_ENOMEM, "ps_eval_new: out of memory");
    ps_eval_free(e);
    return NULL;
}

void ps_eval_free(ps_eval_t *e)
{
    if (!e) return;
    ps_free(e->row);
    ps_map_free(&e->rows);
    ps_free(e);
}

/* The row of `user`, created on first sight; NULL when out of memory. */
static user_sums *user_row(ps_eval_t *e, uint32_t user)
{
    uint64_t *r = ps_map_u64_get(&e->rows, user);
    if (r) return &e->row[*r];
    if (e->nrows >= UINT32_MAX - 1) return NULL;
    if (e->nrows == e->caprows) {
        size_t cap = e->caprows ? e->caprows * 2 : 8;
        user_sums *row = ps_realloc(e->row, cap * sizeof *row);
        if (!row) return NULL;
        e->row = row;
        e->caprows = cap;
    }
    if (ps_map_u64_put(&e->rows, user, e->nrows)) return NULL;
    memset(&e->row[e->nrows], 0, sizeof *e->row);
    e->row[e->nrows].user = user;
    return &e->row[e->nrows++];
}

int ps_eval_add(ps_eval_t *e, uint32_t user, const uint64_t *ranked, size_t nranked,
                const uint64_t *truth, size_t ntruth, ps_err *err)
{
    truthset t;
    user_sums *u;
    int rc = 0;

    if (!e) return ps_err_set(err, PS_EINVAL, "ps_eval_add: evaluator is NULL");
    if (!ranked && nranked) return ps_err_set(err, PS_EINVAL, "ps_eval_add: ranked is NULL");
    if (!truth && ntruth) return ps_err_set(err, PS_EINVAL, "ps_eval_add: truth is NULL");
    if (!ntruth)
        return ps_err_set(err, PS_EINVAL, "ps_eval_add: group of user %u has no ground truth",
                          user);
    if (truth_init(&t, truth, ntruth) < 0)
        return ps_err_set(err, PS_ENOMEM, "ps_eval_add: out of memory for %zu truth ids", ntruth);
    if (!(u = user_row(e, user))) {
        rc = ps_err_set(err, PS_ENOMEM, "ps_eval_add: out of memory adding user %u", user);
        goto err;
    }
    for (size_t i = 0; i < e->nks; i++) {
        double mmrr, recall;
        truth_score(&t, ranked, nranked, e->ks[i], &mmrr, &recall);
        u->mmrr[i] += mmrr;
        u->recall[i] += recall;
    }
    u->groups++;

err:
    truth_release(&t);
    return rc;
}

void ps_eval_result(const ps_eval_t *e, double *mmrr, double *recall)
{
    if (!e) return;
    for (size_t i = 0; i < e->nks; i++) {
        double m = 0.0, r = 0.0;
        for (size_t j = 0; j < e->nrows; j++) {
            m += e->row[j].mmrr[i] / e->row[j].groups;
            r += e->row[j].recall[i] / e->row[j].groups;
        }
        if (mmrr) mmrr[i] = e->nrows ? m / (double)e->nrows : 0.0;
        if (recall) recall[i] = e->nrows ? r / (double)e->nrows : 0.0;
    }
}
