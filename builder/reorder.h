/*
 * reorder.h — doc numbering by recursive graph bisection: an order of a corpus's stickers that
 * puts stickers sharing terms next to each other, so that the engine's windows of 512 docs
 * hold either many or none of a term's postings and its window bounds prune whole windows.
 */
#ifndef BUILDER_REORDER_H
#define BUILDER_REORDER_H

#include <stddef.h>
#include <stdint.h>

#include "ps/err.h"

/* Partitions of at most this many docs are left in the order they have. */
#define BUILDER_REORDER_LEAF 128

/* Reorder perm[0..n), a list of doc numbers, in place. Doc d's distinct terms are
 * terms[off[d] .. off[d + 1]), each < nterms. Recursive graph bisection (Dhulipala et al.,
 * KDD 2016): the docs are split in two halves, docs are swapped between the halves while a
 * swap lowers the estimated cost of storing the halves' posting gaps (at most `iters` rounds),
 * then each half is split the same way, down to BUILDER_REORDER_LEAF docs. The result depends
 * only on the inputs (ties break by doc number). Errors: PS_ENOMEM (perm unchanged). */
int builder_reorder(uint32_t *perm, size_t n, const uint64_t *off, const uint32_t *terms,
                    uint32_t nterms, int iters, ps_err *err);

/* The cost builder_reorder lowers, for tests and reports: Σ over terms and over the
 * consecutive blocks of `block` docs of perm of d·log2(block / (d + 1)), d the term's docs in
 * the block (about the bits of the gaps between them). Lower is better clustered. */
double builder_reorder_cost(const uint32_t *perm, size_t n, const uint64_t *off,
                            const uint32_t *terms, uint32_t nterms, size_t block);

#endif
