/*
 * rcache.h — the recall cache: step 2 of a search (the top R by Recall, DESIGN §1) does not
 * depend on the user, so its result is kept per key and a repeated query skips the posting
 * lists; the preference step still runs per request on the R cached candidates.
 *
 * Key: the index version the caller names, R, use_utility, the five field weights (their bits)
 * and the query's distinct tokens in the order the searcher holds them (the order decides the
 * summation order of a doc's contributions, so two orders are two keys). Value: the hits of
 * step 2 in recall order — id, doc, relevance, utility, recall — exactly as computed, so a hit
 * returns what a miss returns, bit for bit.
 *
 * Bounded in bytes: every entry (its header, key and hits) and the hash buckets count against
 * the capacity; the least recently used entries are evicted first. The cache is split into up
 * to 16 segments (by key hash), each with its own lock, byte budget and LRU list, so worker
 * threads seldom wait on one another; every function here is thread-safe.
 *
 * Versions: entries of a version live until evicted or dropped. A process serving several
 * versions drops a version's entries when it stops serving it (ps_rcache_drop); a version
 * number must not be reused for other data while entries of it remain.
 *
 * Memory comes from ps_malloc/ps_free (ps/alloc.h). An allocation failure while storing only
 * means the result is not kept: a search never fails because of the cache.
 */
#ifndef PS_RCACHE_H
#define PS_RCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "ps/analyzer.h"
#include "ps/err.h"
#include "ps/search.h"

typedef struct ps_rcache ps_rcache_t;

#define PS_RCACHE_MAX_SEGMENTS 16

typedef struct ps_rcache_stats {
    uint64_t hits, misses; /* lookups */
    uint64_t inserts;      /* results stored */
    uint64_t evictions;    /* entries evicted to stay within the capacity */
    uint64_t dropped;      /* entries dropped by ps_rcache_drop / ps_rcache_clear */
    uint64_t entries;      /* held now */
    uint64_t bytes;        /* held now: entries and hash buckets, <= capacity */
    uint64_t capacity;     /* the bound, bytes */
} ps_rcache_stats;

/* A cache of at most `capacity` bytes (at least 4096). Caller owns the result (ps_rcache_free).
 * Errors: PS_EINVAL (capacity too small), PS_ENOMEM. */
ps_rcache_t *ps_rcache_new(size_t capacity, ps_err *err);
void ps_rcache_free(ps_rcache_t *c);

/* Look up the top R of tokens tok[0..n) (distinct) under o's weights, R and use_utility, for
 * index version `version`. On a hit copies the cached hits into hits[0..*nhits) (recall order;
 * centroid -1, preference 1, score = recall) and returns 1; on a miss returns 0 and leaves
 * hits and *nhits alone. hits must hold o->R entries. */
int ps_rcache_get(ps_rcache_t *c, uint64_t version, const ps_tokens *tok, const ps_search_opts *o,
                  ps_hit *hits, size_t *nhits);

/* Store hits[0..n) (step 2's result, recall order, n <= o->R) under the same key. Nothing is
 * stored when the key is held already, when the entry would not fit in its segment's budget,
 * or when memory runs out. */
void ps_rcache_put(ps_rcache_t *c, uint64_t version, const ps_tokens *tok, const ps_search_opts *o,
                   const ps_hit *hits, size_t n);

/* Drop every entry of `version`; returns how many. */
size_t ps_rcache_drop(ps_rcache_t *c, uint64_t version);
/* Drop every entry of every version other than `keep`; returns how many. */
size_t ps_rcache_drop_others(ps_rcache_t *c, uint64_t keep);
/* Drop everything. */
void ps_rcache_clear(ps_rcache_t *c);

/* Counters and gauges, summed over the segments (each read under its lock). */
void ps_rcache_stats_get(ps_rcache_t *c, ps_rcache_stats *out);

#endif
