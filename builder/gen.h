/*
 * gen.h — the synthetic demo data of DESIGN §5: a corpus that behaves like the real WeChat
 * one, deterministic from a seed, at any scale.
 */
#ifndef BUILDER_GEN_H
#define BUILDER_GEN_H

#include <stddef.h>
#include <stdint.h>

#include "ps/err.h"

typedef struct builder_gen_cfg {
    uint64_t seed;      /* default 42 */
    size_t nstickers;   /* default 543098 */
    size_t dim;         /* embedding dimension, default 512 */
    size_t nusers;      /* default 8 */
    size_t nclicks;     /* default 12568 */
    size_t npairs;      /* distinct (user, query) pairs, default 2308 */
    size_t nqueries;    /* distinct queries, default 1891 */
    int progress;       /* show items/s and ETA on stderr when it is a terminal */
} builder_gen_cfg;

/* Fill cfg with the defaults above. */
void builder_gen_defaults(builder_gen_cfg *cfg);

/* Write <outdir>/corpus.jsonl, <outdir>/embeddings.npy (float32, nstickers × dim, corpus
 * order) and <outdir>/clicks.tsv (user \t query \t sticker_id). outdir is created if missing.
 * Same cfg => byte-identical files. Errors: PS_EINVAL (bad cfg), PS_EIO, PS_ENOMEM. */
int builder_generate(const builder_gen_cfg *cfg, const char *outdir, ps_err *err);

/* The shipped vocabulary (builder/vocab.txt), parsed once: phrases ranked by frequency,
 * most common first. Borrowed pointers, valid for the life of the process. */
size_t builder_vocab_size(void);
const char *builder_vocab_phrase(size_t rank);
int builder_vocab_is_english(size_t rank);

/* n benchmark/test queries of 1–2 vocabulary phrases (Zipf-drawn), `chinese_share` of them
 * Chinese, deterministic from seed. OUT *queries: n malloc'd strings in a malloc'd array;
 * free with builder_gen_queries_free. */
int builder_gen_queries(uint64_t seed, size_t n, double chinese_share, char ***queries,
                        ps_err *err);
void builder_gen_queries_free(char **queries, size_t n);

#endif
