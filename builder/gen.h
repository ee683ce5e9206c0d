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
    uint64_t seed;    /* default 42 */
    size_t nstickers; /* default 543098 */
    size_t dim;       /* embedding dimension, default 512 */
    size_t nusers;    /* default 8 */
    size_t nclicks;   /* default 12568 */
    size_t npairs;    /* distinct (user, query) pairs, default 2308 */
    size_t nqueries;  /* distinct queries, default 1891 */
    int progress;     /* show items/s and ETA on stderr when it is a terminal (default 1) */
} builder_gen_cfg;

/* Fill cfg with the defaults above. */
void builder_gen_defaults(builder_gen_cfg *cfg);

/* Write <outdir>/corpus.jsonl, <outdir>/embeddings.npy (float32, nstickers × dim, corpus
 * order) and <outdir>/clicks.tsv (user \t query \t sticker_id; users "u01", "u02", …).
 * outdir is created if missing (with parents). Each file is written as "<name>.tmp" and renamed
 * into place only when all three are complete; on failure the .tmp files are removed.
 * Same cfg => byte-identical files; the embedding dimension changes only embeddings.npy.
 * cfg must satisfy: 1 <= users <= pairs, 1 <= queries <= pairs <= users × queries,
 * clicks >= pairs; or clicks = pairs = queries = 0 for an empty click log. Sticker ids are
 * distinct 19-digit integers <= INT64_MAX. Progress goes to stderr only when cfg->progress
 * is set and stderr is a terminal.
 * Errors: PS_EINVAL (bad cfg, message names the parameter; also when the corpus is too small
 * to have `nqueries` distinct phrases that match some sticker), PS_EIO (message names the
 * path), PS_ENOMEM. */
int builder_generate(const builder_gen_cfg *cfg, const char *outdir, ps_err *err);

/* The shipped vocabulary (builder/vocab.txt), parsed once (thread-safe): phrases ranked by
 * frequency, most common first. A phrase is English iff it is pure ASCII (~15% of them).
 * builder_vocab_phrase returns NULL for rank >= builder_vocab_size(). Borrowed pointers,
 * valid for the life of the process. */
size_t builder_vocab_size(void);
const char *builder_vocab_phrase(size_t rank);
int builder_vocab_is_english(size_t rank);

/* n benchmark/test queries of 1–2 vocabulary phrases (Zipf-drawn by rank, joined with a
 * space), exactly round(n × chinese_share) of them Chinese, deterministic from seed.
 * OUT *queries: n malloc'd strings in a malloc'd array (n may be 0); free with
 * builder_gen_queries_free. On error *queries is NULL. Errors: PS_EINVAL (chinese_share
 * outside [0, 1], n too large), PS_ENOMEM. */
int builder_gen_queries(uint64_t seed, size_t n, double chinese_share, char ***queries,
                        ps_err *err);
/* Free what builder_gen_queries returned (NULL is fine). */
void builder_gen_queries_free(char **queries, size_t n);

#endif
