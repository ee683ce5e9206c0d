/*
 * eval.h — the evaluation metrics of the paper (§4–5, reference metrics.py).
 *
 * Test clicks are grouped by (user, query); a group's ground truth is the set of stickers
 * clicked. Per group: M-MRR@k = sum over ground-truth stickers found in the top k of 1/rank;
 * R@k = found / |truth|. Both are averaged over the user's groups, then over users.
 */
#ifndef PS_EVAL_H
#define PS_EVAL_H

#include <stddef.h>
#include <stdint.h>

#include "ps/err.h"

#define PS_EVAL_MAXK 4 /* cut-offs tracked at once */

/* M-MRR@k and R@k of one ranking against one ground-truth set (ids, duplicates ignored).
 * rank is the 1-based position in `ranked`; only its first k entries count, and a truth id
 * counts once, at its first position. An empty truth scores 0. Both return NaN for a NULL
 * array with a non-zero count, or when out of memory (possible only for ntruth > 128). */
double ps_eval_mmrr(const uint64_t *ranked, size_t nranked, size_t k, const uint64_t *truth,
                    size_t ntruth);
double ps_eval_recall(const uint64_t *ranked, size_t nranked, size_t k, const uint64_t *truth,
                      size_t ntruth);

/* Accumulates per-group metrics at up to PS_EVAL_MAXK cut-offs and averages them per user,
 * then over users. */
typedef struct ps_eval ps_eval_t;
/* ks[nks]: the cut-offs (1 <= nks <= PS_EVAL_MAXK, each k >= 1), copied. Caller owns the
 * result (ps_eval_free accepts NULL). NULL on error: PS_EINVAL, PS_ENOMEM. */
ps_eval_t *ps_eval_new(const size_t *ks, size_t nks, ps_err *err);
void ps_eval_free(ps_eval_t *e);
/* Add one group of user `user` (any 32-bit user number). Errors: PS_EINVAL (empty truth, a
 * NULL array with a non-zero count), PS_ENOMEM; a failed add changes nothing. */
int ps_eval_add(ps_eval_t *e, uint32_t user, const uint64_t *ranked, size_t nranked,
                const uint64_t *truth, size_t ntruth, ps_err *err);
/* OUT mmrr[nks], recall[nks]: macro averages (0 when no group was added). */
void ps_eval_result(const ps_eval_t *e, double *mmrr, double *recall);

#endif
