/*
 * reference.h — a deliberately simple exhaustive PerSRV scorer for tests.
 *
 * Written straight from DESIGN §1 and independent of the engine's index, utility, search and
 * store code: it keeps every sticker's analyzed fields as plain sorted term arrays, counts
 * statistics by scanning, computes utility from the click log itself, and scores every
 * sticker for every query in double precision. Only the analyzer (tested on its own) and the
 * profiles under test are shared with the engine.
 */
#ifndef PS_TEST_REFERENCE_H
#define PS_TEST_REFERENCE_H

#include <stddef.h>
#include <stdint.h>

#include "ps/corpus.h"
#include "ps/fields.h"
#include "ps/profile.h"

typedef struct ref_corpus ref_corpus;

typedef struct ref_hit {
    uint64_t id;
    size_t row;
    double relevance, utility, recall, score;
} ref_hit;

/* Index recs[0..n) (corpus rows) with their embeddings (n × dim) and the training clicks. */
ref_corpus *ref_new(const ps_sticker_rec *recs, size_t n, const float *emb, size_t dim,
                    const ps_clicklog *train);
void ref_free(ref_corpus *r);

/* Score every sticker for query q. OUT *all[0..*nall): every sticker with relevance > 0,
 * sorted by recall then id (*all is malloc'd; caller frees). Returns 0, or -1 when q has no
 * token. */
int ref_recall(ref_corpus *r, const char *q, const float w[PS_NFIELDS], int use_utility,
               ref_hit **all, size_t *nall);

/* Steps 3–4 on the first n hits (the recall set): score with the profile and sort by score
 * then id. A NULL or empty profile leaves score = recall and the order unchanged. */
void ref_prefer(ref_corpus *r, ref_hit *hits, size_t n, const ps_profile *prof, double alpha);

#endif
