/*
 * gen.h — the synthetic demo data of DESIGN §5: a corpus that behaves like the real WeChat
 * one, deterministic from a seed, at any scale.
 */
#ifndef BUILDER_GEN_H
#define BUILDER_GEN_H

#include <stddef.h>
#include <stdint.h>

#include "ps/buf.h"
#include "ps/err.h"

#define BUILDER_IMAGE_SIDE 96 /* pixels, square */
#define BUILDER_IMAGE_FONT "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"
#define BUILDER_IMAGES_DIR "images" /* under the output directory: the broker's image-root */
#define BUILDER_IMAGES_ALL SIZE_MAX

typedef struct builder_gen_cfg {
    uint64_t seed;          /* default 42 */
    size_t nstickers;       /* default 543098 */
    size_t dim;             /* embedding dimension, default 512 */
    size_t nusers;          /* default 8 */
    size_t nclicks;         /* default 12568 */
    size_t npairs;          /* distinct (user, query) pairs, default 2308 */
    size_t nqueries;        /* distinct queries, default 1891 */
    int progress;           /* show items/s and ETA on stderr when it is a terminal (default 1) */
    size_t nimages;         /* stickers with a picture: the first nimages in corpus order (default
                             * 0; BUILDER_IMAGES_ALL: every one) */
    double image_share;     /* and those among the top image_share (0..1) by latent quality, the
                             * stickers clicks favour (a threshold: about that share; default 0) */
    const char *image_font; /* default BUILDER_IMAGE_FONT */
} builder_gen_cfg;

/* Fill cfg with the defaults above. */
void builder_gen_defaults(builder_gen_cfg *cfg);

/* Write <outdir>/corpus.jsonl, <outdir>/embeddings.npy (float32, nstickers × dim, corpus
 * order) and <outdir>/clicks.tsv (user \t query \t sticker_id; users "u01", "u02", …).
 * With cfg->nimages or image_share, the stickers chosen (see the cfg) also get a picture
 * (gen_image.c):
 * <outdir>/images/<2 hex digits: id mod 256>/<id>.png, and the corpus line its path relative to
 * <outdir>/images in "image". Pictures are written in place (they are referenced only once the
 * corpus is renamed into place); the text, embeddings and clicks do not depend on them.
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

/* The placeholder picture renderer (gen_image.c): one per thread. */
typedef struct builder_imgr builder_imgr;
/* Load the font (a path; a CJK font such as wqy-zenhei). Errors: PS_EIO naming the font,
 * PS_ENOMEM, PS_EINTERNAL. Caller owns the result (builder_imgr_free). */
builder_imgr *builder_imgr_new(const char *font, ps_err *err);
void builder_imgr_free(builder_imgr *r);
/* Render a BUILDER_IMAGE_SIDE² PNG into png (reset first): series' colour, a round character and
 * up to two lines of text[0..len) ('\n'-separated, UTF-8). Same inputs => same bytes.
 * Errors: PS_ENOMEM, PS_EINTERNAL. */
int builder_imgr_render(builder_imgr *r, uint32_t series, const char *text, size_t len, ps_buf *png,
                        ps_err *err);

#endif
