/*
 * reorder.c — recursive graph bisection (BP) over a forward index of terms per doc.
 *
 * The engine evaluates a query window by window (512 docs) and skips a window whose clauses'
 * bounds cannot reach the threshold. Numbered at random, a common term has postings in every
 * window and most bounds hold everywhere; numbered so that stickers with the same terms sit
 * together, most windows hold none of a term or many, and the bounds skip them. BP finds such
 * a numbering: it minimizes the log-gap cost Σ_t d_t·log2(n / (d_t + 1)) of every half, then
 * of every quarter, and so on (d_t = docs of term t in the part, n its size), which is lowest
 * when each term's docs crowd into few parts.
 *
 * One level of one part: split it into halves A and B in the current order; compute each
 * term's degree in A and in B; the gain of moving doc v from A to B is the cost saved over
 * v's terms; sort A and B by gain, largest first, and swap the i-th of A with the i-th of B
 * while the two gains sum to more than 0; repeat with the new halves until no swap is made or
 * `iters` rounds have run; then bisect each half. Each round reads the part's postings three
 * times (degrees, gains, clearing the degrees), so a level costs O(postings · iters).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ps/alloc.h"
#include "reorder.h"

typedef struct gdoc {
    double gain;
    uint32_t doc;
} gdoc;

typedef struct bp {
    const uint64_t *off;
    const uint32_t *terms;
    uint32_t *deg[2]; /* per term: its docs in half A, in half B (zero between rounds) */
    double *lg;       /* lg[i] = log2(i), i <= n + 1 */
    gdoc *g;          /* per position of the part being split */
    int iters;
} bp;

static int cmp_gdoc(const void *a, const void *b)
{
    const gdoc *x = a, *y = b;
    if (x->gain != y->gain) return x->gain > y->gain ? -1 : 1;
    return (x->doc > y->doc) - (x->doc < y->doc);
}

/* d·log2(n / (d + 1)): the estimated bits of a term's gaps with d docs among n. */
static inline double gapcost(const double *lg, uint32_t d, size_t n)
{
    return d ? (double)d * (lg[n] - lg[d + 1]) : 0.0;
}

/* Add (add = 1) or clear (add = 0) the degrees of docs[0..n) on side `side`. */
static void degrees(bp *b, const uint32_t *docs, size_t n, int side, int add)
{
    uint32_t *deg = b->deg[side];
    for (size_t i = 0; i < n; i++) {
        const uint32_t *t = b->terms + b->off[docs[i]], *e = b->terms + b->off[docs[i] + 1];
        if (add)
            for (; t < e; t++) deg[*t]++;
        else
            for (; t < e; t++) deg[*t] = 0;
    }
}

/* The gain of moving each of docs[0..n) (on side `side`, of size nside; the other side has
 * nother docs) to the other side, into g[0..n). */
static void gains(bp *b, const uint32_t *docs, size_t n, int side, size_t nside, size_t nother,
                  gdoc *g)
{
    const uint32_t *from = b->deg[side], *to = b->deg[!side];
    const double *lg = b->lg;
    for (size_t i = 0; i < n; i++) {
        const uint32_t *t = b->terms + b->off[docs[i]], *e = b->terms + b->off[docs[i] + 1];
        double gain = 0.0;
        for (; t < e; t++) {
            uint32_t df = from[*t], dt = to[*t];
            gain += gapcost(lg, df, nside) + gapcost(lg, dt, nother) - gapcost(lg, df - 1, nside) -
                    gapcost(lg, dt + 1, nother);
        }
        g[i].gain = gain;
        g[i].doc = docs[i];
    }
}

static void bisect(bp *b, uint32_t *docs, size_t n)
{
    if (n <= BUILDER_REORDER_LEAF) return;
    size_t na = n / 2, nb = n - na;
    uint32_t *A = docs, *B = docs + na;
    gdoc *ga = b->g, *gb = b->g + na;
    for (int it = 0; it < b->iters; it++) {
        degrees(b, A, na, 0, 1);
        degrees(b, B, nb, 1, 1);
        gains(b, A, na, 0, na, nb, ga);
        gains(b, B, nb, 1, nb, na, gb);
        degrees(b, A, na, 0, 0);
        degrees(b, B, nb, 1, 0);
        qsort(ga, na, sizeof *ga, cmp_gdoc);
        qsort(gb, nb, sizeof *gb, cmp_gdoc);
        size_t k = 0;
        while (k < na && k < nb && ga[k].gain + gb[k].gain > 0.0) k++;
        /* Each half in its gain order, the first k of each exchanged. */
        for (size_t i = 0; i < na; i++) A[i] = i < k ? gb[i].doc : ga[i].doc;
        for (size_t i = 0; i < nb; i++) B[i] = i < k ? ga[i].doc : gb[i].doc;
        if (k == 0) break;
    }
    bisect(b, A, na);
    bisect(b, B, nb);
}

int builder_reorder(uint32_t *perm, size_t n, const uint64_t *off, const uint32_t *terms,
                    uint32_t nterms, int iters, ps_err *err)
{
    if (n <= BUILDER_REORDER_LEAF) return 0;
    bp b = {.off = off, .terms = terms, .iters = iters};
    b.deg[0] = ps_calloc(nterms ? nterms : 1, sizeof *b.deg[0]);
    b.deg[1] = ps_calloc(nterms ? nterms : 1, sizeof *b.deg[1]);
    b.lg = ps_malloc((n + 2) * sizeof *b.lg);
    b.g = ps_malloc(n * sizeof *b.g);
    uint32_t *work = ps_malloc(n * sizeof *work);
    int rc = 0;
    if (!b.deg[0] || !b.deg[1] || !b.lg || !b.g || !work) {
        rc = ps_err_set(err, PS_ENOMEM, "out of memory reordering %zu docs", n);
        goto out;
    }
    b.lg[0] = 0.0;
    for (size_t i = 1; i < n + 2; i++) b.lg[i] = log2((double)i);
    memcpy(work, perm, n * sizeof *work);
    bisect(&b, work, n);
    memcpy(perm, work, n * sizeof *perm);
out:
    ps_free(b.deg[0]);
    ps_free(b.deg[1]);
    ps_free(b.lg);
    ps_free(b.g);
    ps_free(work);
    return rc;
}

double builder_reorder_cost(const uint32_t *perm, size_t n, const uint64_t *off,
                            const uint32_t *terms, uint32_t nterms, size_t block)
{
    uint32_t *deg = ps_calloc(nterms ? nterms : 1, sizeof *deg);
    if (!deg || block == 0) {
        ps_free(deg);
        return NAN;
    }
    double cost = 0.0;
    for (size_t lo = 0; lo < n; lo += block) {
        size_t hi = lo + block < n ? lo + block : n, len = hi - lo;
        for (size_t i = lo; i < hi; i++)
            for (uint64_t p = off[perm[i]]; p < off[perm[i] + 1]; p++) deg[terms[p]]++;
        for (size_t i = lo; i < hi; i++)
            for (uint64_t p = off[perm[i]]; p < off[perm[i] + 1]; p++) {
                uint32_t d = deg[terms[p]];
                if (!d) continue;
                cost += (double)d * log2((double)len / (double)(d + 1));
                deg[terms[p]] = 0;
            }
    }
    ps_free(deg);
    return cost;
}
