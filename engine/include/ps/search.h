/*
 * search.h — online retrieval (DESIGN §1 steps 1–4) over a ps_index_t.
 *
 *   Relevance(q, s) = Σ_f w_f · Σ_t idf_f(t) · tfn_f(t, s)        (distinct query tokens t)
 *   Recall          = Relevance + Utility, over stickers with Relevance > 0; keep the top R
 *   Score           = max over centroids c with ‖c − e_s‖ ≤ radius_c of Recall·(1 + α·cos(c, e_s)),
 *                     or Recall when no centroid is near (or the user has no profile)
 *   result          = the top k of the R by Score
 * Every ordering breaks ties by ascending sticker id.
 *
 * A single node runs ps_search; a cluster runs ps_search_shard on every shard (each holding a
 * slice with the corpus-wide statistics, see ps_index_partition) and ps_merge_hits on the
 * union, which returns exactly what ps_search returns over the whole corpus: a shard's top R
 * contains every one of its stickers that is in the global top R, and each sticker's scores
 * are computed by the same code from the same statistics.
 *
 * Two evaluation paths return identical hits (ids, order and bit-identical scores):
 * the default document-at-a-time MaxScore with block-max bounds and the utility as an extra
 * clause, and an exhaustive term-at-a-time scorer (opts.exhaustive) kept for verification.
 * Both add a doc's (field, term) contributions in the same order, so their sums agree.
 */
#ifndef PS_SEARCH_H
#define PS_SEARCH_H

#include <stddef.h>
#include <stdint.h>

#include "ps/err.h"
#include "ps/fields.h"
#include "ps/index.h"
#include "ps/profile.h"

#define PS_SEARCH_MAX_TERMS 256   /* distinct tokens a query may have */
#define PS_SEARCH_MAX_R     10000 /* largest recall depth */

typedef struct ps_search_opts {
    float field_w[PS_NFIELDS]; /* default ps_field_default_weights; 0 switches a field off */
    uint32_t R;                /* recall depth, default 100, 1..PS_SEARCH_MAX_R */
    uint32_t k;                /* results, default 10, 1..R */
    float alpha;               /* preference strength, default 0.3 */
    int use_utility;           /* default 1; 0 ranks by Relevance alone (baselines) */
    int exhaustive;            /* default 0; 1 scores every matching sticker */
    const ps_profile *profile; /* the user's style profile (borrowed), NULL if none */
    struct ps_rcache *rcache;  /* recall cache for step 2 (ps/rcache.h, borrowed), NULL: none;
                                  not used when exhaustive */
    uint64_t rcache_version;   /* the index's version in the cache key, default 0 */
} ps_search_opts;

void ps_search_opts_default(ps_search_opts *o);

typedef struct ps_hit {
    uint64_t id;
    uint32_t doc;
    int32_t centroid; /* centroid that gave the preference, -1 if none */
    double relevance;
    double utility;    /* 0 when use_utility == 0 */
    double recall;     /* relevance + utility */
    double preference; /* factor applied to recall: 1 + α·cos, or 1 */
    double score;      /* recall · preference */
} ps_hit;

typedef struct ps_search_stats {
    uint32_t nterms;     /* distinct query tokens */
    uint32_t nlists;     /* (field, term) posting lists the query touches */
    uint64_t npostings;  /* postings in those lists */
    uint64_t visited;    /* postings the evaluation actually read */
    uint64_t candidates; /* stickers whose essential clauses were scored */
    uint64_t bounded;    /* candidates completed on non-essential clauses */
    uint64_t scored;     /* stickers fully scored */
    /* Where the pruned evaluation's work went (0 on the exhaustive path and on cache hits): */
    uint32_t windows;    /* doc windows evaluated (of ndocs / 512) */
    uint64_t scanned;    /* postings of essential clauses added term-at-a-time */
    uint64_t probes;     /* candidates looked up in non-essential clauses */
    uint64_t probe_hits; /* those found there */
    /* and its time per phase, monotonic clock: analyzing the query (or taking the shard's
     * tokens), recall (clause setup, pruning, the top R), preference and the final ranking */
    uint64_t analyze_ns, recall_ns, prefer_ns;
} ps_search_stats;

typedef struct ps_searcher ps_searcher_t;

/* Per-thread query state (analyzer, scratch arrays reused across queries) over a borrowed
 * index, which must outlive it. Caller owns the result. */
ps_searcher_t *ps_searcher_new(const ps_index_t *ix, ps_err *err);
void ps_searcher_free(ps_searcher_t *s);

/* Search for the `qlen` bytes of query text q. OUT hits[0..*nhits): best first; `hits` must
 * hold opts->R entries (the top k are returned, k <= R). stats may be NULL.
 * Errors: PS_EINVAL (bad R/k/weights), PS_EUTF8, PS_EQUERY (no token), PS_ETOOBIG (too many
 * distinct tokens), PS_ENOMEM, and embedding fetch errors when a profile is given.
 * A query whose tokens are all unknown is a success with *nhits == 0. */
int ps_search(ps_searcher_t *s, const char *q, size_t qlen, const ps_search_opts *opts,
              ps_hit *hits, size_t *nhits, ps_search_stats *stats, ps_err *err);

/* Step 2 alone: the top R by Recall (recall order; preference = 1, score = recall). */
int ps_search_recall(ps_searcher_t *s, const char *q, size_t qlen, const ps_search_opts *opts,
                     ps_hit *hits, size_t *nhits, ps_search_stats *stats, ps_err *err);

/* A partitioned search over one slice of the corpus (an index from ps_index_partition):
 * steps 1–3 for tokens the caller analyzed once for every slice (repeats are dropped here).
 * OUT hits: the slice's top R by Recall, in recall order, each with its preference and score
 * for opts->profile. Errors as ps_search. */
int ps_search_shard(ps_searcher_t *s, const ps_tokens *tokens, const ps_search_opts *opts,
                    ps_hit *hits, size_t *nhits, ps_search_stats *stats, ps_err *err);

/* Merging a partitioned search: hits[0..n) gathered from any number of slices (each a top R by
 * recall with scores set, from ps_search_shard) become the answer over the whole corpus: the
 * top R by recall, ranked by score, cut to k. Reorders hits in place; returns the number of
 * results (<= k). Ties break by id. */
size_t ps_merge_hits(ps_hit *hits, size_t n, uint32_t R, uint32_t k);

/* How many hits to ask of each of nshards slices first, for the top R of their merge: the
 * smallest depth d such that, with the stickers spread over the slices at random (a hash of
 * their ids, as ps_index_partition's jump hash does), the chance that any slice holds d or more
 * of the top R — and so must be asked again, at R — is at most PS_SHARD_SECOND_ROUNDS:
 * nshards · P(Binomial(R, 1/nshards) >= d) <= PS_SHARD_SECOND_ROUNDS. R when nshards <= 1.
 * About R/N + 3.3 standard deviations (R = 100: 67 of 2, 42 of 4, 27 of 8, 18 of 16). */
#define PS_SHARD_SECOND_ROUNDS 1e-3
uint32_t ps_shard_depth(uint32_t R, uint32_t nshards);

/* ps_merge_hits with what a search API adds: the stickers whose ids are in exclude[0..nexclude)
 * are dropped before the top R by recall is taken (so the slices must have returned their top
 * R + nexclude), and the answer is ranks offset .. offset + k - 1 by score, moved to hits[0..).
 * Returns their number (0 when offset is past the end). */
size_t ps_rank_hits(ps_hit *hits, size_t n, uint32_t R, const uint64_t *exclude, size_t nexclude,
                    uint32_t offset, uint32_t k);

/* The recall order every top R uses, as a qsort comparator: higher recall first, ties by lower
 * id. */
int ps_hit_cmp_recall(const void *a, const void *b);

/* Step 3 on hits[0..n) whose embeddings are emb (n × dim): set preference, score and
 * centroid (order unchanged). profile NULL or k == 0 leaves score = recall. */
void ps_prefer(ps_hit *hits, size_t n, const float *emb, uint32_t dim, const ps_profile *profile,
               float alpha);

#endif
