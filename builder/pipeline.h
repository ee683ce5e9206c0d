/*
 * pipeline.h — the offline steps shared by `builder build`, `builder eval`, the tests and the
 * benchmarks: load a corpus, integrate training queries, compute utility, number stickers,
 * analyze and index them, and build user profiles.
 */
#ifndef BUILDER_PIPELINE_H
#define BUILDER_PIPELINE_H

#include <stddef.h>
#include <stdint.h>

#include "ps/corpus.h"
#include "ps/err.h"
#include "ps/index.h"
#include "ps/profile.h"
#include "ps/utility.h"

/* A corpus in memory, in file order ("rows"). */
typedef struct builder_corpus {
    size_t n;
    ps_sticker_rec *recs;
    ps_matrix emb; /* n × dim */
} builder_corpus;

/* Read the JSONL corpus and the .npy embeddings (rows must match). A bad line fails the load
 * with "<path>:<line>: ..."; a repeated id names both lines. progress: show items/s on a tty.
 * OUT c (free with builder_corpus_free). */
int builder_corpus_load(const char *jsonl, const char *npy, int progress, builder_corpus *c,
                        ps_err *err);
void builder_corpus_free(builder_corpus *c);

typedef struct builder_cfg {
    ps_utility_cfg utility;
    uint32_t kmax; /* centroids per user, default 5 */
    uint64_t seed; /* k-means seed, default 42 */
    /* Stickers of equal utility are numbered by recursive graph bisection (reorder.h) over
     * the terms of these fields (bit f for field f; 0: by id), at most reorder_iters rounds a
     * level. Numbering changes no answer, only how fast they come. Default: the fields whose
     * reference weight is at least half the largest (ocr, queries), 8 rounds. */
    uint32_t reorder_fields;
    int reorder_iters;
    int progress;
} builder_cfg;

void builder_cfg_defaults(builder_cfg *cfg);

/* Everything built from a corpus and its training clicks. */
typedef struct builder_built {
    ps_index_t *ix;
    uint32_t *row_of_doc; /* ndocs: corpus row of each doc */
    size_t nrows;
    char **queries; /* per row: integrated queries field ('\n'-joined; owned) */
    size_t *queries_len;
    size_t nusers;
    char **users;          /* user names (owned), in click-log order */
    ps_profile *profiles;  /* nusers */
    uint32_t **user_rows;  /* nusers: the distinct corpus rows each user clicked (ascending) */
    uint32_t *user_nrows;  /* nusers */
    uint32_t *pop;         /* per doc: training clicks (for popularity baselines) */
    size_t unknown_clicks; /* clicks on ids absent from the corpus */
} builder_built;

/* Build the index and profiles. The index gets in-memory embeddings when with_embeddings
 * (the eval path); `builder build` writes them to the store instead. OUT out (free with
 * builder_built_free). */
int builder_build_index(const builder_corpus *c, const ps_clicklog *train, const builder_cfg *cfg,
                        int with_embeddings, builder_built *out, ps_err *err);
void builder_built_free(builder_built *b);

/* Progress line on stderr when enabled and stderr is a terminal: "what: done/total (rate/s,
 * ETA)", rewritten in place at most every 0.25 s (total 0: "what: done (rate/s)"); _end
 * prints the final count and a newline. what is borrowed until _end. */
typedef struct builder_progress {
    const char *what;
    size_t total;
    double t0, last;
    int on;
} builder_progress;
void builder_progress_start(builder_progress *p, const char *what, size_t total, int enabled);
void builder_progress_tick(builder_progress *p, size_t done);
void builder_progress_end(builder_progress *p, size_t done);

double builder_now(void); /* monotonic seconds */

#endif
