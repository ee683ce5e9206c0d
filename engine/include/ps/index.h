/*
 * index.h — the in-memory inverted index: one posting list per (field, term), the per-doc
 * arrays scoring needs (sticker id, utility, field lengths) and the corpus-wide statistics
 * BM25F uses (N_f, df_f(t), avgdl_f).
 *
 * Internal doc numbers ("docs") are assigned in the order stickers are added, which must be
 * descending utility, ties by ascending sticker id: the best-utility stickers come first, so
 * a document-at-a-time scan raises its pruning threshold early, and the utility of any doc
 * after d is at most utility[d].
 *
 * An index is immutable once built and may be shared by any number of searcher threads.
 */
#ifndef PS_INDEX_H
#define PS_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "ps/analyzer.h"
#include "ps/err.h"
#include "ps/fields.h"

#define PS_BM25_K1 1.2
#define PS_BM25_B  0.75

typedef struct ps_index ps_index_t;
typedef struct ps_ixbuild ps_ixbuild_t;

/* Corpus-wide statistics of one field. */
typedef struct ps_field_stats {
    uint32_t ndocs;   /* N_f: stickers whose field is non-empty */
    uint64_t ntokens; /* tokens in the field over all stickers */
    double avgdl;     /* ntokens / ndocs (0 when ndocs == 0) */
} ps_field_stats;

/* Embedding source: fills out[n*dim] with the embeddings of docs[0..n). Called once per
 * personalized query with the recall candidates, never per posting. */
typedef int (*ps_emb_fetch_fn)(void *ctx, const uint32_t *docs, size_t n, float *out, ps_err *err);

/* Start an index of up to `ndocs` stickers with `dim`-dimensional embeddings.
 * Caller owns the result (ps_ixbuild_free, or hand it to ps_ixbuild_finish). */
ps_ixbuild_t *ps_ixbuild_new(size_t ndocs, uint32_t dim, ps_err *err);
void ps_ixbuild_free(ps_ixbuild_t *b);

/* Add the next sticker (it gets doc number = number of stickers added before it).
 * fields[f] are the analyzed tokens of field f (repeats kept; NULL = empty field).
 * Stickers come in non-increasing utility; those of equal utility in any order.
 * Errors: PS_EINVAL when utility rises, or more than `ndocs` are added (a repeated id fails
 * ps_ixbuild_finish); PS_ENOMEM. */
int ps_ixbuild_add(ps_ixbuild_t *b, uint64_t id, float utility,
                   const ps_tokens *const fields[PS_NFIELDS], ps_err *err);

/* Finish: computes statistics and normalized term frequencies. Takes ownership of *b (set to
 * NULL, freed even on failure). Caller owns the returned index (ps_index_free). */
ps_index_t *ps_ixbuild_finish(ps_ixbuild_t **b, ps_err *err);

void ps_index_free(ps_index_t *ix);

uint32_t ps_index_ndocs(const ps_index_t *ix);
uint32_t ps_index_dim(const ps_index_t *ix);
uint64_t ps_index_id(const ps_index_t *ix, uint32_t doc);
float ps_index_utility(const ps_index_t *ix, uint32_t doc);
const ps_field_stats *ps_index_field_stats(const ps_index_t *ix, int field);
/* Doc number of a sticker id; PS_ENOTFOUND if absent. */
int ps_index_doc(const ps_index_t *ix, uint64_t id, uint32_t *doc);
/* Number of postings over all lists (for reports). */
uint64_t ps_index_npostings(const ps_index_t *ix);
/* Bytes of memory held by the index structures (postings, dictionary, per-doc arrays). */
size_t ps_index_memory(const ps_index_t *ix);

/* Jump consistent hash (Lamping & Veach 2014): the bucket of key among nbuckets (>= 1).
 * Growing nbuckets by one moves only 1/nbuckets of the keys. */
uint32_t ps_jump_hash(uint64_t key, uint32_t nbuckets);

/* The slice of ix that shard `shard` of `nshards` holds: the stickers whose
 * ps_jump_hash(id, nshards) == shard, in the same relative doc order, with ix's corpus-wide
 * statistics (N_f, tokens_f and every df_f(t)) kept, so each of them scores exactly as in ix.
 * In-memory embeddings are copied. OUT global_doc (may be NULL): a malloc'd array giving, for
 * each doc of the slice, its doc in ix (caller frees). Caller owns the result.
 * Errors: PS_EINVAL (nshards 0, shard out of range), PS_ENOMEM. */
ps_index_t *ps_index_partition(const ps_index_t *ix, uint32_t nshards, uint32_t shard,
                               uint32_t **global_doc, ps_err *err);

/* Give the index its embeddings. In-memory: `emb` is ndocs × dim floats in doc order; the
 * index takes ownership (*emb set to NULL). */
void ps_index_set_embeddings(ps_index_t *ix, float **emb);
/* Or a fetch callback (e.g. RocksDB point reads); ctx is borrowed and must outlive ix. */
void ps_index_set_emb_fetch(ps_index_t *ix, ps_emb_fetch_fn fn, void *ctx);
/* Fetch embeddings of docs[0..n) into out (n × dim). PS_EUNAVAIL if the index has none. */
int ps_index_embeddings(const ps_index_t *ix, const uint32_t *docs, size_t n, float *out,
                        ps_err *err);

#endif
