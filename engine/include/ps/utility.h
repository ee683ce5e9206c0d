/*
 * utility.h — crowd-sourced sticker utility (paper eq. 1–5, DESIGN §1).
 *
 * From the training click log: Pop = clicks on s, Cross = distinct users who clicked s,
 * QA = distinct queries that clicked s. Each component x becomes x + base·[x == 0], is divided
 * by its maximum over the corpus, square-rooted; Utility = w·sqrt(Norm(U)).
 */
#ifndef PS_UTILITY_H
#define PS_UTILITY_H

#include <stddef.h>
#include <stdint.h>

#include "ps/corpus.h"
#include "ps/err.h"

typedef struct ps_utility_cfg {
    double base; /* default 1 */
    double w[3]; /* (Pop, Cross, QA), default (1, 1, 1) */
} ps_utility_cfg;

extern const ps_utility_cfg ps_utility_default;

/* Per-sticker counts in corpus row order. */
typedef struct ps_usage {
    uint32_t *pop, *cross, *qa; /* n each, owned */
    size_t n;
} ps_usage;

/* Count Pop/Cross/QA for each of the n corpus stickers (ids[row]) from `log`.
 * Clicks on ids not in the corpus are counted in *unknown (may be NULL) and otherwise ignored.
 * An id repeated in `ids` gets its clicks on its first row only. Time and memory are linear in
 * clicks and stickers. OUT: usage (free with ps_usage_free; holds nothing to free on error).
 * Errors: PS_EINVAL (NULL argument, n >= UINT32_MAX), PS_ENOMEM. */
int ps_usage_count(const ps_clicklog *log, const uint64_t *ids, size_t n, ps_usage *usage,
                   size_t *unknown, ps_err *err);
void ps_usage_free(ps_usage *u);

/* OUT util[usage->n]: utility of each sticker (computed in double, stored as float).
 * cfg NULL means ps_utility_default; a negative base is treated as 0. A component whose
 * adjusted maximum over the corpus is 0 (all counts 0 and base == 0, or no stickers)
 * contributes 0 to every sticker rather than 0/0. */
void ps_utility_compute(const ps_utility_cfg *cfg, const ps_usage *usage, float *util);

#endif
