/*
 * gen.c — `builder generate`: the synthetic demo data of DESIGN §5, deterministic from a seed.
 *
 * The model, in the order it is drawn:
 *   1. Series (characters / sticker styles): ≈ nstickers/150 of them, sizes Pareto-tailed.
 *      Each has a unit centre vector, a noise level, a theme of 1–3 phrases its stickers
 *      keep saying, and a drawn subject ("一只胖乎乎的柴犬") its descriptions mention.
 *   2. Stickers, in a random-looking corpus order: a distinct 19-digit id, a series, a latent
 *      quality (lognormal) and the text fields (ocr on 73%, keywords, desc, emotion), phrases
 *      drawn from the ranked vocabulary Zipf-like (s = 1) or from the series theme.
 *   3. Embeddings: series centre + Gaussian noise, L2-normalized, streamed to the .npy.
 *   4. The click log: a set of distinct queries (vocabulary phrases that match some sticker,
 *      drawn Zipf-like without replacement), users with 2–4 favourite series, distinct
 *      (user, query) pairs with heavy-tailed click counts, and per click a sticker whose ocr
 *      (mostly) or keywords contain the query, chosen ∝ quality × a boost for the user's
 *      favourite series (see the click-model constants below).
 * Each part draws from its own PRNG stream (ps/rand.h, the STREAM_* below), so the text does
 * not depend on the embedding dimension. Outputs are written to "<name>.tmp" and renamed when
 * complete.
 *
 * Output formats (DESIGN §3):
 *   corpus.jsonl    {"id":<19 digits>,"ocr":"…","keywords":"…","desc":"…","emotion":"…"}\n
 *                   multi-phrase fields joined with '\n' (JSON-escaped); ocr "" when absent;
 *                   ,"image":"<hex2>/<id>.png" last for the stickers with a picture
 *                   (--images: the first N in corpus order, or the top P% by quality, which
 *                   clicks favour; drawn by gen_image.c into
 *                   images/<hex2>/<id>.png, hex2 = id mod 256 in two hex digits).
 *   embeddings.npy  NumPy format 1.0: "\x93NUMPY" 0x01 0x00, uint16 LE header length, the
 *                   header dict "{'descr': '<f4', 'fortran_order': False, 'shape': (N, D), }"
 *                   padded with spaces and a final '\n' so data starts at a multiple of 64,
 *                   then N·D float32 little-endian, row-major, rows in corpus order.
 *   clicks.tsv      user \t query \t sticker_id\n, users "u01", "u02", …, lines shuffled.
 *   series.tsv      sticker_id \t series\n in corpus order: the ground truth of the style each
 *                   sticker was drawn from (for tests and analysis; the pipeline never reads it).
 */
#include "gen.h"
#include "ps/corpus.h"
#include "pipeline.h"
#include "ps/buf.h"
#include "ps/map.h"
#include "ps/rand.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------------
 * The knobs. The click-model constants decide how much each ranking signal of `builder eval`
 * can gain: tune them with the evaluator, not by intuition.
 */

/* Corpus shape (DESIGN §5). */
#define GEN_SERIES_MEAN     150  /* stickers per series on average */
#define GEN_SERIES_ALPHA    1.6  /* Pareto tail of series sizes */
#define GEN_SERIES_MAXRATIO 40.0 /* cap on a series weight, in multiples of the smallest */
#define GEN_ZIPF_S          1.0  /* field phrases: P(rank r) ∝ 1/r^s */
#define GEN_THEME_ZIPF_S    0.8  /* series theme phrases: flatter, so many phrases are themes */
#define GEN_OCR_SHARE       0.73 /* stickers with OCR text */
#define GEN_OCR_TWO         0.30 /* of those, share with two OCR phrases */
#define GEN_OCR_THEME       0.60 /* P(an OCR phrase comes from the series theme) */
#define GEN_KW_THEME        0.35 /* P(a keyword comes from the series theme) */
#define GEN_EMOTION_TOP     120  /* emotions come from this many commonest phrases */
#define GEN_DESC_MIN        15   /* desc length in characters (code points) */
#define GEN_DESC_MAX        40
/* Within-series cosine is ≈ 1/(1 + tau), tau = expected ‖noise‖² (centre is unit):
 * tau ∈ [0.18, 0.43] gives cosines of 0.70–0.85; across series ≈ 0 ± 1/√d. */
#define GEN_TAU_MIN 0.18
#define GEN_TAU_MAX 0.43

/* Click model. Each of these can be overridden at compile time (-DGEN_CLICK_FAV_SHARE=0.6)
 * to tune it against `builder eval`. With the defaults, at the default scale, eval ranks
 * Global Pop < User Pop < BM25 < BM25 (+OCR) < PerSRV w/o personalization < PerSRV. */

/* Lognormal sigma of the latent sticker quality: how much popular stickers get clicked again
 * (the utility signal). */
#ifndef GEN_QUALITY_SIGMA
#define GEN_QUALITY_SIGMA 2.0
#endif
/* Share of clicks that go to a sticker showing the query in its ocr, when one does; the rest
 * may also go to stickers that only have it among their keywords (the relevance of ocr). */
#ifndef GEN_CLICK_OCR_SHARE
#define GEN_CLICK_OCR_SHARE 0.9
#endif
/* Weight multiplier for a sticker of one of the user's favourite series: at least
 * GEN_CLICK_FAV_BOOST, raised per pair so the favourites take GEN_CLICK_FAV_SHARE of the
 * pair's clicks whenever they answer the query. A fixed boost alone would be diluted by
 * candidate pools of 1 to 100k stickers (the personalization signal). */
#ifndef GEN_CLICK_FAV_BOOST
#define GEN_CLICK_FAV_BOOST 20.0
#endif
#ifndef GEN_CLICK_FAV_SHARE
#define GEN_CLICK_FAV_SHARE 0.5
#endif
/* × on the chance that a user asks a query one of their favourite series answers. */
#ifndef GEN_PAIR_FAV_AFFINITY
#define GEN_PAIR_FAV_AFFINITY 4.0
#endif
/* × on the chance that a phrase some user's favourite series answers becomes a query. */
#ifndef GEN_QUERY_FAV_BIAS
#define GEN_QUERY_FAV_BIAS 2.0
#endif
#define GEN_USER_SIGMA 0.5 /* lognormal spread of user activity */
#define GEN_PAIR_ALPHA 1.3 /* Pareto tail of clicks per (user, query) pair */
#define GEN_PAIR_POP   0.5 /* clicks per pair also ∝ rank^-this: common queries get more */
#define GEN_FAV_MIN    2   /* favourite series per user */
#define GEN_FAV_MAX    4

/* Caps that keep the config sane (and the internal uint32 indexes valid). */
#define GEN_MAX_STICKERS 500000000u /* <= 6 phrase slots each must fit the uint32 index */
#define GEN_MAX_DIM      65536u
#define GEN_MAX_USERS    10000u
#define GEN_MAX_CLICKS   100000000u

#define GEN_NONE     UINT32_MAX
#define GEN_OCR_FLAG 0x80000000u /* in a candidate entry: the query is in the sticker's ocr */

/* ------------------------------------------------------------------------------------------
 * Words the descriptions are made of (a VLM describing a sticker).
 */
static const struct {
    const char *measure, *noun;
} desc_subjects[] = {
    {"一只", "小猫"},     {"一只", "橘猫"},   {"一只", "小狗"},   {"一只", "柴犬"},
    {"一只", "熊猫"},     {"一只", "兔子"},   {"一只", "小熊"},   {"一只", "企鹅"},
    {"一只", "鸭子"},     {"一只", "小鸡"},   {"一只", "仓鼠"},   {"一只", "狐狸"},
    {"一只", "小猪"},     {"一只", "青蛙"},   {"一只", "考拉"},   {"一只", "海豹"},
    {"一只", "水豚"},     {"一只", "小恐龙"}, {"一只", "小羊"},   {"一个", "小女孩"},
    {"一个", "男孩"},     {"一个", "小人"},   {"一个", "打工人"}, {"一个", "宝宝"},
    {"一个", "卡通人物"}, {"一个", "猫猫头"}, {"一个", "狗头"},   {"一个", "馒头"},
    {"一个", "土豆"},     {"一个", "团子"},
};
static const char *const desc_looks[] = {
    "可爱的",   "胖乎乎的", "圆滚滚的", "卡通",     "白色的", "粉色的", "黄色的",     "呆萌的",
    "毛茸茸的", "Q版",      "手绘",     "像素风的", "小小的", "软萌的", "表情夸张的",
};
/* How a description quotes the text on the sticker. */
static const char *const desc_says[] = {"写着", "配文", "旁边写着", "头上写着", "文字是"};
/* How it names the mood: before and after a phrase. */
static const struct {
    const char *pre, *post;
} desc_moods[] = {
    {"表示", ""}, {"想说", ""}, {"一副", "的样子"}, {"好像在说", ""}, {"表达", "的心情"},
};
static const char *const desc_actions[] = {
    "在笑",   "举着手",   "眨着眼睛", "比心",     "捂着脸",   "躺在地上", "流着眼泪",
    "叉着腰", "挥手",     "跳起来",   "抱着枕头", "瞪着眼",   "鼓着脸",   "竖大拇指",
    "转圈圈", "趴在桌上", "探出头",   "摊手",     "捂嘴偷笑", "瑟瑟发抖",
};
static const char *const desc_fill[] = {"表情夸张", "画面可爱", "背景是白色", "动作很萌",
                                        "卡通风格", "小表情",   "的表情包",   "很可爱"};
static const char *const desc_end[] = {"！", "~", "哦", "呀", "啦"};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* ------------------------------------------------------------------------------------------
 * Small containers.
 */

static void *xmalloc(size_t n, ps_err *err, const char *what)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        ps_err_set(err, PS_ENOMEM, "generate: out of memory allocating %s (%zu bytes)", what, n);
    return p;
}

static void *xcalloc(size_t n, size_t size, ps_err *err, const char *what)
{
    void *p = calloc(n ? n : 1, size);
    if (!p) ps_err_set(err, PS_ENOMEM, "generate: out of memory allocating %s", what);
    return p;
}

/* A set of u64 keys: a ps_map with the values unused, sized up front for every key so that
 * adds after the init cannot fail. */
static int u64set_init(ps_map *s, size_t n, ps_err *err)
{
    ps_map_init(s, PS_MAP_U64);
    if (ps_map_reserve(s, n))
        return ps_err_set(err, PS_ENOMEM, "generate: out of memory allocating a hash set");
    return 0;
}

/* Cumulative weights; draw returns the first index whose cumulative weight exceeds u·total. */
static size_t cdf_draw(const double *cdf, size_t n, ps_rng *r)
{
    double u = ps_rng_unif(r) * cdf[n - 1];
    size_t lo = 0, hi = n - 1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cdf[mid] > u)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* Append s to b as the inside of a JSON string. */
static void buf_json(ps_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (ps_buf_reserve(b, 6 * n)) return;
    char *o = b->p + b->n;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c == '\n') {
            *o++ = '\\';
            *o++ = 'n';
        } else if (c < 0x20) {
            memcpy(o, "\\u00", 4);
            o += 4;
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        } else {
            *o++ = (char)c;
        }
    }
    b->n = (size_t)(o - b->p);
    b->p[b->n] = '\0';
}

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++) n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* PRNG streams, ps_rng_seed(r, seed, STREAM_x): one per independent part of the output, so
 * that e.g. the embedding dimension changes the embeddings and nothing else. The numbers are
 * part of the output: renumbering one changes every file generated from a given seed. */
enum {
    STREAM_IDS = 1,
    STREAM_SERIES,
    STREAM_CENTRES,
    STREAM_TEXT,
    STREAM_EMBED,
    STREAM_USERS,
    STREAM_CLICKS,
    STREAM_QUERIES,
};

/* ------------------------------------------------------------------------------------------
 * The generator's state.
 */
typedef struct series {
    uint32_t theme[3];
    uint8_t ntheme;
    uint8_t subject, look;
    float tau; /* expected squared norm of the noise */
} series;

typedef struct gen {
    const builder_gen_cfg *cfg;
    ps_err *err;
    const char *outdir;

    /* vocabulary */
    size_t nvocab;
    const char **phrase;
    uint32_t *plen;    /* bytes */
    double *zipf_cdf;  /* over all ranks, s = GEN_ZIPF_S */
    double *theme_cdf; /* over all ranks, s = GEN_THEME_ZIPF_S */
    double *emo_cdf;   /* over the GEN_EMOTION_TOP first ranks */
    size_t nemo;

    /* series */
    size_t nseries;
    series *ser;
    float *centre; /* nseries × dim */

    /* stickers */
    size_t n;
    uint64_t *id;
    uint32_t *sser; /* series of each sticker */
    float *quality;
    uint32_t *ocr; /* n × 2, GEN_NONE padded */
    uint32_t *kw;  /* n × 4, GEN_NONE padded */

    /* phrase -> candidate stickers (index | GEN_OCR_FLAG), CSR */
    uint32_t *cand_off; /* nvocab + 1 */
    uint32_t *cand;

    /* users: favourite series, and for each series the users who love it (CSR) */
    uint32_t *fav;      /* nusers × GEN_FAV_MAX, GEN_NONE padded */
    uint32_t *sfan_off; /* nseries + 1 */
    uint32_t *sfan;
    double *activity;
} gen;

static void gen_free(gen *g)
{
    free(g->phrase);
    free(g->plen);
    free(g->zipf_cdf);
    free(g->theme_cdf);
    free(g->emo_cdf);
    free(g->ser);
    free(g->centre);
    free(g->id);
    free(g->sser);
    free(g->quality);
    free(g->ocr);
    free(g->kw);
    free(g->cand_off);
    free(g->cand);
    free(g->fav);
    free(g->sfan_off);
    free(g->sfan);
    free(g->activity);
}

static double *zipf_cdf(size_t n, double s, ps_err *err)
{
    double *cdf = xmalloc(n * sizeof *cdf, err, "a Zipf table");
    double acc = 0;
    if (!cdf) return NULL;
    for (size_t r = 0; r < n; r++) cdf[r] = acc += pow((double)(r + 1), -s);
    return cdf;
}

static int gen_vocab(gen *g)
{
    g->nvocab = builder_vocab_size();
    if (g->nvocab < 8)
        return ps_err_set(g->err, PS_EINTERNAL, "generate: the vocabulary has only %zu phrases",
                          g->nvocab);
    g->phrase = xmalloc(g->nvocab * sizeof *g->phrase, g->err, "the vocabulary");
    g->plen = xmalloc(g->nvocab * sizeof *g->plen, g->err, "the vocabulary");
    if (!g->phrase || !g->plen) return PS_ENOMEM;
    for (size_t r = 0; r < g->nvocab; r++) {
        g->phrase[r] = builder_vocab_phrase(r);
        g->plen[r] = (uint32_t)strlen(g->phrase[r]);
    }
    g->nemo = g->nvocab < GEN_EMOTION_TOP ? g->nvocab : GEN_EMOTION_TOP;
    g->zipf_cdf = zipf_cdf(g->nvocab, GEN_ZIPF_S, g->err);
    g->theme_cdf = zipf_cdf(g->nvocab, GEN_THEME_ZIPF_S, g->err);
    g->emo_cdf = zipf_cdf(g->nemo, GEN_ZIPF_S, g->err);
    return g->zipf_cdf && g->theme_cdf && g->emo_cdf ? 0 : PS_ENOMEM;
}

/* ------------------------------------------------------------------------------------------
 * 1. Series and sticker ids.
 */
static int gen_series(gen *g)
{
    const builder_gen_cfg *cfg = g->cfg;
    ps_rng r, rcen;
    double *cdf = NULL;
    int rc = 0;

    g->nseries = (g->n + GEN_SERIES_MEAN / 2) / GEN_SERIES_MEAN;
    if (g->nseries < 1) g->nseries = 1;
    g->ser = xcalloc(g->nseries, sizeof *g->ser, g->err, "the series");
    g->centre = xmalloc(g->nseries * cfg->dim * sizeof *g->centre, g->err, "the series centres");
    g->sser = xmalloc(g->n * sizeof *g->sser, g->err, "the sticker series");
    cdf = xmalloc(g->nseries * sizeof *cdf, g->err, "the series weights");
    if (!g->ser || !g->centre || !g->sser || !cdf) {
        rc = PS_ENOMEM;
        goto out;
    }

    ps_rng_seed(&r, cfg->seed, STREAM_SERIES);
    double acc = 0;
    for (size_t s = 0; s < g->nseries; s++) {
        series *se = &g->ser[s];
        double w = pow(ps_rng_unif_pos(&r), -1.0 / GEN_SERIES_ALPHA);
        cdf[s] = acc += w < GEN_SERIES_MAXRATIO ? w : GEN_SERIES_MAXRATIO;
        se->tau = (float)(GEN_TAU_MIN + (GEN_TAU_MAX - GEN_TAU_MIN) * ps_rng_unif(&r));
        se->subject = (uint8_t)ps_rng_below(&r, NELEM(desc_subjects));
        se->look = (uint8_t)ps_rng_below(&r, NELEM(desc_looks));
        se->ntheme = (uint8_t)(1 + ps_rng_below(&r, 3));
        for (int t = 0; t < se->ntheme; t++) {
            uint32_t p;
            int dup;
            do {
                p = (uint32_t)cdf_draw(g->theme_cdf, g->nvocab, &r);
                dup = 0;
                for (int k = 0; k < t; k++) dup |= se->theme[k] == p;
            } while (dup);
            se->theme[t] = p;
        }
    }
    /* Every series gets one sticker, the rest go by weight; then shuffle the corpus order. */
    for (size_t i = 0; i < g->n; i++)
        g->sser[i] = (uint32_t)(i < g->nseries ? i : cdf_draw(cdf, g->nseries, &r));
    for (size_t i = g->n; i > 1; i--) {
        size_t j = (size_t)ps_rng_below(&r, i);
        uint32_t t = g->sser[i - 1];
        g->sser[i - 1] = g->sser[j];
        g->sser[j] = t;
    }

    /* Centres: isotropic Gaussian directions, from their own stream (they depend on dim). */
    ps_rng_seed(&rcen, cfg->seed, STREAM_CENTRES);
    for (size_t s = 0; s < g->nseries; s++) {
        float *c = g->centre + s * cfg->dim;
        double nn = 0;
        for (size_t d = 0; d < cfg->dim; d++) {
            double x = ps_rng_normal(&rcen);
            c[d] = (float)x;
            nn += x * x;
        }
        double inv = nn > 0 ? 1.0 / sqrt(nn) : 0.0;
        for (size_t d = 0; d < cfg->dim; d++) c[d] = (float)(c[d] * inv);
    }
out:
    free(cdf);
    return rc;
}

static int gen_ids(gen *g)
{
    ps_map seen = PS_MAP_INIT(PS_MAP_U64);
    ps_rng r;
    /* 19 digits and <= INT64_MAX, so JSON libraries with signed 64-bit integers read them. */
    const uint64_t base = 1000000000000000000ull, span = (uint64_t)INT64_MAX - base + 1;

    g->id = xmalloc(g->n * sizeof *g->id, g->err, "the sticker ids");
    if (!g->id || u64set_init(&seen, g->n, g->err)) {
        ps_map_free(&seen);
        return PS_ENOMEM;
    }
    ps_rng_seed(&r, g->cfg->seed, STREAM_IDS);
    for (size_t i = 0; i < g->n; i++) {
        do g->id[i] = base + ps_rng_below(&r, span);
        while (ps_map_u64_add(&seen, g->id[i], NULL) != 1);
    }
    ps_map_free(&seen);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * 2. Sticker text, streamed to corpus.jsonl.
 */

/* A phrase from the series theme with probability p_theme, else Zipf from the vocabulary,
 * distinct from the n phrases already in `have`. */
static uint32_t draw_phrase(gen *g, ps_rng *r, const series *se, double p_theme,
                            const uint32_t *have, int n)
{
    for (int attempt = 0;; attempt++) {
        uint32_t p;
        if (attempt < 4 && ps_rng_unif(r) < p_theme)
            p = se->theme[ps_rng_below(r, se->ntheme)];
        else
            p = (uint32_t)cdf_draw(g->zipf_cdf, g->nvocab, r);
        int dup = 0;
        for (int k = 0; k < n; k++) dup |= have[k] == p;
        if (!dup) return p;
    }
}

static void put_phrases(ps_buf *b, gen *g, const uint32_t *ph, int n)
{
    for (int k = 0; k < n; k++) {
        if (k) buf_json(b, "\n", 1);
        buf_json(b, g->phrase[ph[k]], g->plen[ph[k]]);
    }
}

/* Append a piece to the description if it fits in GEN_DESC_MAX characters. */
static int desc_try(ps_buf *d, size_t *chars, const char *s)
{
    size_t c = utf8_chars(s), n = strlen(s);
    if (*chars + c > GEN_DESC_MAX) return 0;
    ps_buf_add(d, s, n);
    if (d->rc) return -1;
    *chars += c;
    return 1;
}

/* A VLM-style description: a subject from the series, then actions, quoted phrases and
 * filler until a drawn length of 15–40 characters is reached. */
static int make_desc(gen *g, ps_rng *r, const series *se, const uint32_t *ocr, int nocr, ps_buf *d)
{
    size_t chars = 0,
           target = GEN_DESC_MIN + (size_t)ps_rng_below(r, GEN_DESC_MAX - GEN_DESC_MIN + 1);
    int quoted = 0, misses = 0, rc;

    ps_buf_reset(d);
    if (desc_try(d, &chars, desc_subjects[se->subject].measure) < 0 ||
        desc_try(d, &chars, desc_looks[se->look]) < 0 ||
        desc_try(d, &chars, desc_subjects[se->subject].noun) < 0)
        return PS_ENOMEM;
    while (chars < target) {
        double k = ps_rng_unif(r);
        char piece[256];
        if (k < 0.35 && quoted < nocr) {
            /* The text on the sticker, as a VLM would quote it. */
            snprintf(piece, sizeof piece, "，%s“%s”", desc_says[ps_rng_below(r, NELEM(desc_says))],
                     g->phrase[ocr[quoted++]]);
        } else if (k < 0.60) {
            snprintf(piece, sizeof piece, "，%s",
                     desc_actions[ps_rng_below(r, NELEM(desc_actions))]);
        } else if (k < 0.85) {
            uint32_t p = (uint32_t)cdf_draw(g->zipf_cdf, g->nvocab, r);
            size_t m = (size_t)ps_rng_below(r, NELEM(desc_moods));
            snprintf(piece, sizeof piece, "，%s%s%s", desc_moods[m].pre, g->phrase[p],
                     desc_moods[m].post);
        } else {
            snprintf(piece, sizeof piece, "，%s", desc_fill[ps_rng_below(r, NELEM(desc_fill))]);
        }
        /* No piece twice ("，在笑，在笑"): a repeat counts as a miss. */
        rc = strstr(d->p ? d->p : "", piece) ? 0 : desc_try(d, &chars, piece);
        if (rc < 0) return PS_ENOMEM;
        /* Nothing more fits: end with one character (the target is <= GEN_DESC_MAX). */
        if (rc == 0 && ++misses >= 4) {
            if (desc_try(d, &chars, desc_end[ps_rng_below(r, NELEM(desc_end))]) < 0)
                return PS_ENOMEM;
            if (chars >= GEN_DESC_MIN) break;
        }
    }
    return 0;
}

/* outdir/images and its 256 fan-out directories. */
static int image_dirs(gen *g)
{
    char path[4096];
    for (int k = -1; k < 256; k++) {
        int n = k < 0 ? snprintf(path, sizeof path, "%s/" BUILDER_IMAGES_DIR, g->outdir)
                      : snprintf(path, sizeof path, "%s/" BUILDER_IMAGES_DIR "/%02x", g->outdir, k);
        if (n >= (int)sizeof path)
            return ps_err_set(g->err, PS_EINVAL, "generate: output directory name too long");
        if (mkdir(path, 0777) != 0 && errno != EEXIST)
            return ps_err_set(g->err, PS_EIO, "generate: creating directory %s: %s", path,
                              strerror(errno));
    }
    return 0;
}

/* Sticker i's picture: draw its OCR phrases, write the PNG, add "image" to its line. */
static int gen_image(gen *g, builder_imgr *im, size_t i, const uint32_t *ocr, int nocr,
                     ps_buf *text, ps_buf *png, ps_buf *line)
{
    char rel[64], path[4200];
    ps_buf_reset(text);
    for (int k = 0; k < nocr; k++) {
        if (k) ps_buf_byte(text, '\n');
        ps_buf_add(text, g->phrase[ocr[k]], g->plen[ocr[k]]);
    }
    if (text->rc) return ps_err_set(g->err, PS_ENOMEM, "generate: out of memory for a picture");
    int rc = builder_imgr_render(im, g->sser[i], text->p, text->n, png, g->err);
    if (rc) return rc;
    snprintf(rel, sizeof rel, "%02x/%llu.png", (unsigned)(g->id[i] & 0xff),
             (unsigned long long)g->id[i]);
    snprintf(path, sizeof path, "%s/" BUILDER_IMAGES_DIR "/%s", g->outdir, rel);
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(png->p, 1, png->n, f) == png->n;
    if (f && fclose(f) != 0) ok = 0;
    if (!ok) return ps_err_set(g->err, PS_EIO, "generate: writing %s: %s", path, strerror(errno));
    ps_buf_str(line, ",\"image\":\"");
    ps_buf_str(line, rel);
    ps_buf_str(line, "\"");
    return 0;
}

static int gen_corpus(gen *g, FILE *f, const char *path)
{
    ps_rng r;
    ps_buf line = PS_BUF_INIT, desc = PS_BUF_INIT, text = PS_BUF_INIT, png = PS_BUF_INIT;
    builder_progress pr;
    builder_imgr *im = NULL;
    int rc = 0;
    size_t nimages = g->cfg->nimages < g->n ? g->cfg->nimages : g->n;
    /* quality = exp(sigma z), z standard normal: the top share s is z >= z0, P(Z >= z0) = s */
    double share = g->cfg->image_share, qmin = INFINITY;
    if (share >= 1)
        qmin = 0;
    else if (share > 0) {
        double lo = -10, hi = 10;
        for (int k = 0; k < 100; k++) {
            double mid = (lo + hi) / 2;
            if (0.5 * erfc(mid / sqrt(2.0)) > share)
                lo = mid;
            else
                hi = mid;
        }
        qmin = exp(GEN_QUALITY_SIGMA * hi);
    }

    g->quality = xmalloc(g->n * sizeof *g->quality, g->err, "the sticker qualities");
    g->ocr = xmalloc(g->n * 2 * sizeof *g->ocr, g->err, "the OCR phrases");
    g->kw = xmalloc(g->n * 4 * sizeof *g->kw, g->err, "the keywords");
    if (!g->quality || !g->ocr || !g->kw) return PS_ENOMEM;
    if (nimages || share > 0) {
        if ((rc = image_dirs(g))) return rc;
        im = builder_imgr_new(g->cfg->image_font ? g->cfg->image_font : BUILDER_IMAGE_FONT, g->err);
        if (!im) return g->err ? g->err->code : PS_EIO;
    }

    ps_rng_seed(&r, g->cfg->seed, STREAM_TEXT);
    builder_progress_start(&pr, "generating stickers", g->n, g->cfg->progress);
    for (size_t i = 0; i < g->n; i++) {
        const series *se = &g->ser[g->sser[i]];
        uint32_t *ocr = g->ocr + 2 * i, *kw = g->kw + 4 * i, emo[2];
        int nocr = 0, nkw, nemo;

        g->quality[i] = (float)exp(GEN_QUALITY_SIGMA * ps_rng_normal(&r));
        if (ps_rng_unif(&r) < GEN_OCR_SHARE) nocr = ps_rng_unif(&r) < GEN_OCR_TWO ? 2 : 1;
        for (int k = 0; k < nocr; k++) ocr[k] = draw_phrase(g, &r, se, GEN_OCR_THEME, ocr, k);
        for (int k = nocr; k < 2; k++) ocr[k] = GEN_NONE;
        nkw = 2 + (int)ps_rng_below(&r, 3);
        for (int k = 0; k < nkw; k++) kw[k] = draw_phrase(g, &r, se, GEN_KW_THEME, kw, k);
        for (int k = nkw; k < 4; k++) kw[k] = GEN_NONE;
        nemo = 1 + (int)ps_rng_below(&r, 2);
        for (int k = 0; k < nemo; k++) {
            int dup;
            do {
                emo[k] = (uint32_t)cdf_draw(g->emo_cdf, g->nemo, &r);
                dup = k && emo[0] == emo[k];
            } while (dup);
        }
        if (make_desc(g, &r, se, ocr, nocr, &desc)) goto oom;

        ps_buf_reset(&line);
        ps_buf_printf(&line, "{\"id\":%llu,\"ocr\":\"", (unsigned long long)g->id[i]);
        put_phrases(&line, g, ocr, nocr);
        ps_buf_str(&line, "\",\"keywords\":\"");
        put_phrases(&line, g, kw, nkw);
        ps_buf_str(&line, "\",\"desc\":\"");
        buf_json(&line, desc.p, desc.n);
        ps_buf_str(&line, "\",\"emotion\":\"");
        put_phrases(&line, g, emo, nemo);
        ps_buf_str(&line, "\"");
        if ((i < nimages || g->quality[i] >= qmin) &&
            (rc = gen_image(g, im, i, ocr, nocr, &text, &png, &line)))
            goto out;
        ps_buf_str(&line, "}\n");
        if (line.rc) goto oom;
        if (fwrite(line.p, 1, line.n, f) != line.n) {
            rc = ps_err_set(g->err, PS_EIO, "generate: writing %s: %s", path, strerror(errno));
            goto out;
        }
        if ((i & 4095) == 0) builder_progress_tick(&pr, i);
    }
    builder_progress_end(&pr, g->n);
    goto out;
oom:
    rc = ps_err_set(g->err, PS_ENOMEM, "generate: out of memory formatting sticker lines");
out:
    ps_buf_free(&line);
    ps_buf_free(&desc);
    ps_buf_free(&text);
    ps_buf_free(&png);
    builder_imgr_free(im);
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * 3. Embeddings, streamed to embeddings.npy.
 */
static int write_npy_header(FILE *f, size_t rows, size_t cols)
{
    char hdr[PS_NPY_HEADER_MAX];
    size_t n = ps_npy_header(hdr, rows, cols);
    return fwrite(hdr, 1, n, f) == n ? 0 : -1;
}

static int gen_embeddings(gen *g, FILE *f, const char *path)
{
    const size_t dim = g->cfg->dim;
    float *row = xmalloc(dim * sizeof *row, g->err, "an embedding row");
    double *v = xmalloc(dim * sizeof *v, g->err, "an embedding row");
    ps_rng r;
    builder_progress pr;
    int rc = 0;

    if (!row || !v) {
        rc = PS_ENOMEM;
        goto out;
    }
    if (write_npy_header(f, g->n, dim)) goto io;
    ps_rng_seed(&r, g->cfg->seed, STREAM_EMBED);
    builder_progress_start(&pr, "generating embeddings", g->n, g->cfg->progress);
    for (size_t i = 0; i < g->n; i++) {
        const float *c = g->centre + (size_t)g->sser[i] * dim;
        double sigma = sqrt(g->ser[g->sser[i]].tau / (double)dim), nn = 0;
        for (size_t d = 0; d < dim; d++) {
            v[d] = c[d] + sigma * ps_rng_normal(&r);
            nn += v[d] * v[d];
        }
        double inv = 1.0 / sqrt(nn);
        for (size_t d = 0; d < dim; d++) row[d] = (float)(v[d] * inv);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        for (size_t d = 0; d < dim; d++) {
            uint32_t u;
            memcpy(&u, &row[d], 4);
            u = __builtin_bswap32(u);
            memcpy(&row[d], &u, 4);
        }
#endif
        if (fwrite(row, sizeof *row, dim, f) != dim) goto io;
        if ((i & 1023) == 0) builder_progress_tick(&pr, i);
    }
    builder_progress_end(&pr, g->n);
    goto out;
io:
    rc = ps_err_set(g->err, PS_EIO, "generate: writing %s: %s", path, strerror(errno));
out:
    free(row);
    free(v);
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * 4. The click log.
 */

/* phrase -> stickers whose ocr or keywords contain it; the ocr flag wins when both do. */
static int gen_candidates(gen *g)
{
    size_t V = g->nvocab, total = 0;
    uint32_t *fill = NULL;

    g->cand_off = xcalloc(V + 1, sizeof *g->cand_off, g->err, "the phrase index");
    if (!g->cand_off) return PS_ENOMEM;
    for (size_t i = 0; i < g->n; i++) {
        const uint32_t *ocr = g->ocr + 2 * i, *kw = g->kw + 4 * i;
        for (int k = 0; k < 2 && ocr[k] != GEN_NONE; k++) g->cand_off[ocr[k] + 1]++;
        for (int k = 0; k < 4 && kw[k] != GEN_NONE; k++)
            if (kw[k] != ocr[0] && kw[k] != ocr[1]) g->cand_off[kw[k] + 1]++;
    }
    for (size_t p = 0; p < V; p++) g->cand_off[p + 1] += g->cand_off[p];
    total = g->cand_off[V];
    g->cand = xmalloc(total * sizeof *g->cand, g->err, "the phrase index");
    fill = xmalloc(V * sizeof *fill, g->err, "the phrase index");
    if (!g->cand || !fill) {
        free(fill);
        return PS_ENOMEM;
    }
    memcpy(fill, g->cand_off, V * sizeof *fill);
    for (size_t i = 0; i < g->n; i++) {
        const uint32_t *ocr = g->ocr + 2 * i, *kw = g->kw + 4 * i;
        for (int k = 0; k < 2 && ocr[k] != GEN_NONE; k++)
            g->cand[fill[ocr[k]]++] = (uint32_t)i | GEN_OCR_FLAG;
        for (int k = 0; k < 4 && kw[k] != GEN_NONE; k++)
            if (kw[k] != ocr[0] && kw[k] != ocr[1]) g->cand[fill[kw[k]]++] = (uint32_t)i;
    }
    free(fill);
    return 0;
}

/* Users: activity, and 2–4 distinct favourite series drawn by series size. */
static int gen_users(gen *g)
{
    size_t U = g->cfg->nusers, S = g->nseries;
    double *cdf = xmalloc(S * sizeof *cdf, g->err, "the series sizes");
    uint32_t *size = xcalloc(S, sizeof *size, g->err, "the series sizes");
    ps_rng r;
    int rc = 0;

    g->fav = xmalloc(U * GEN_FAV_MAX * sizeof *g->fav, g->err, "the favourite series");
    g->activity = xmalloc(U * sizeof *g->activity, g->err, "the user activity");
    g->sfan_off = xcalloc(S + 1, sizeof *g->sfan_off, g->err, "the series fans");
    if (!cdf || !size || !g->fav || !g->activity || !g->sfan_off) {
        rc = PS_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < g->n; i++) size[g->sser[i]]++;
    double acc = 0;
    for (size_t s = 0; s < S; s++) cdf[s] = acc += size[s];

    ps_rng_seed(&r, g->cfg->seed, STREAM_USERS);
    for (size_t u = 0; u < U; u++) {
        uint32_t *fav = g->fav + u * GEN_FAV_MAX;
        size_t nfav = GEN_FAV_MIN + (size_t)ps_rng_below(&r, GEN_FAV_MAX - GEN_FAV_MIN + 1);
        if (nfav > S) nfav = S;
        g->activity[u] = exp(GEN_USER_SIGMA * ps_rng_normal(&r));
        for (size_t k = 0; k < GEN_FAV_MAX; k++) fav[k] = GEN_NONE;
        for (size_t k = 0; k < nfav; k++) {
            uint32_t s;
            int dup;
            do {
                s = (uint32_t)cdf_draw(cdf, S, &r);
                dup = 0;
                for (size_t j = 0; j < k; j++) dup |= fav[j] == s;
            } while (dup);
            fav[k] = s;
            g->sfan_off[s + 1]++;
        }
    }
    for (size_t s = 0; s < S; s++) g->sfan_off[s + 1] += g->sfan_off[s];
    g->sfan = xmalloc(g->sfan_off[S] * sizeof *g->sfan, g->err, "the series fans");
    if (!g->sfan) {
        rc = PS_ENOMEM;
        goto out;
    }
    memcpy(size, g->sfan_off, S * sizeof *size); /* reuse as fill pointers */
    for (size_t u = 0; u < U; u++)
        for (size_t k = 0; k < GEN_FAV_MAX && g->fav[u * GEN_FAV_MAX + k] != GEN_NONE; k++) {
            uint32_t s = g->fav[u * GEN_FAV_MAX + k];
            g->sfan[size[s]++] = (uint32_t)u;
        }
out:
    free(cdf);
    free(size);
    return rc;
}

static int is_fan(const gen *g, uint32_t series_, uint32_t user)
{
    for (uint32_t k = g->sfan_off[series_]; k < g->sfan_off[series_ + 1]; k++)
        if (g->sfan[k] == user) return 1;
    return 0;
}

typedef struct pairv {
    uint32_t q, u;
} pairv;

typedef struct clickv {
    uint32_t pair, sticker;
} clickv;

/* The click log while it is drawn. Queries are numbered 0..Q-1 in draw order. */
typedef struct clicklog {
    size_t U, Q, P, C;
    uint32_t *query; /* Q: phrase rank of each query */
    double *qcdf;    /* Q: cumulative Zipf weight, for drawing a query of a new pair */
    uint8_t *favq;   /* Q × U: a favourite series of user u has a sticker answering query j */
    pairv *pairs;    /* P */
    size_t np;
    ps_map pset;       /* keys j·U + u + 1 of the pairs so far */
    uint32_t *ucount;  /* U: pairs per user */
    double *w;         /* U: scratch weights */
    uint32_t *pclicks; /* P: clicks per pair */
    clickv *clicks;    /* C */
    size_t nc;
} clicklog;

static void clicklog_free(clicklog *L)
{
    free(L->query);
    free(L->qcdf);
    free(L->favq);
    free(L->pairs);
    ps_map_free(&L->pset);
    free(L->ucount);
    free(L->w);
    free(L->pclicks);
    free(L->clicks);
}

typedef struct keyed {
    double key;
    uint32_t idx;
} keyed;

static int keyed_desc(const void *a, const void *b)
{
    const keyed *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? 1 : -1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* The distinct queries: weighted sampling without replacement (Efraimidis–Spirakis keys
 * log(u)/w) over the phrases some sticker answers; w = Zipf weight of the rank, × the bias
 * when a user's favourite series answers the phrase (people ask for what their favourite
 * characters say). Then favq. */
static int pick_queries(gen *g, clicklog *L, ps_rng *r)
{
    size_t V = g->nvocab, navail = 0, U = L->U;
    keyed *order = xmalloc(V * sizeof *order, g->err, "the query draw");
    uint8_t *fanned = xcalloc(V, 1, g->err, "the query draw");
    int rc = 0;

    L->query = xmalloc(L->Q * sizeof *L->query, g->err, "the queries");
    L->qcdf = xmalloc(L->Q * sizeof *L->qcdf, g->err, "the queries");
    L->favq = xcalloc(L->Q * U, 1, g->err, "the user-query affinities");
    if (!order || !fanned || !L->query || !L->qcdf || !L->favq) {
        rc = PS_ENOMEM;
        goto out;
    }
    for (size_t p = 0; p < V; p++)
        for (uint32_t k = g->cand_off[p]; k < g->cand_off[p + 1] && !fanned[p]; k++) {
            uint32_t s = g->sser[g->cand[k] & ~GEN_OCR_FLAG];
            fanned[p] = g->sfan_off[s + 1] > g->sfan_off[s];
        }
    for (size_t p = 0; p < V; p++) {
        double u = ps_rng_unif_pos(r);
        if (g->cand_off[p + 1] == g->cand_off[p]) continue;
        double w = pow((double)(p + 1), -GEN_ZIPF_S) * (fanned[p] ? 1.0 + GEN_QUERY_FAV_BIAS : 1.0);
        order[navail].key = log(u) / w;
        order[navail].idx = (uint32_t)p;
        navail++;
    }
    if (navail < L->Q) {
        rc = ps_err_set(g->err, PS_EINVAL,
                        "generate: --queries %zu exceeds the %zu vocabulary phrases that match "
                        "some sticker (use more --stickers or fewer --queries)",
                        L->Q, navail);
        goto out;
    }
    qsort(order, navail, sizeof *order, keyed_desc);
    double acc = 0;
    for (size_t j = 0; j < L->Q; j++) {
        L->query[j] = order[j].idx;
        L->qcdf[j] = acc += pow((double)(L->query[j] + 1), -GEN_ZIPF_S);
        for (uint32_t k = g->cand_off[L->query[j]]; k < g->cand_off[L->query[j] + 1]; k++) {
            uint32_t s = g->sser[g->cand[k] & ~GEN_OCR_FLAG];
            for (uint32_t m = g->sfan_off[s]; m < g->sfan_off[s + 1]; m++)
                L->favq[j * U + g->sfan[m]] = 1;
        }
    }
out:
    free(order);
    free(fanned);
    return rc;
}

static double user_weight(const gen *g, const clicklog *L, size_t j, size_t u)
{
    return g->activity[u] * (L->favq[j * L->U + u] ? 1.0 + GEN_PAIR_FAV_AFFINITY : 1.0);
}

static void add_pair(clicklog *L, uint32_t j, uint32_t u)
{
    L->pairs[L->np++] = (pairv){j, u};
    ps_map_u64_add(&L->pset, (uint64_t)j * L->U + u + 1, NULL); /* reserved: cannot fail */
    L->ucount[u]++;
}

/* The user for a new pair on query j, ∝ user_weight among users not yet paired with j;
 * GEN_NONE when every user already is. */
static uint32_t draw_user(const gen *g, clicklog *L, ps_rng *r, uint32_t j)
{
    double acc = 0;
    for (size_t u = 0; u < L->U; u++) {
        int taken = !!ps_map_u64_get(&L->pset, (uint64_t)j * L->U + u + 1);
        L->w[u] = acc += taken ? 0.0 : user_weight(g, L, j, u);
    }
    return acc > 0 ? (uint32_t)cdf_draw(L->w, L->U, r) : GEN_NONE;
}

/* Exactly P distinct pairs: each query gets a user, users still without a pair get one,
 * then pairs are added on Zipf-drawn queries. */
static int pick_pairs(gen *g, clicklog *L, ps_rng *r)
{
    size_t U = L->U, Q = L->Q, P = L->P, nzero = 0;
    uint32_t *zero = xmalloc(U * sizeof *zero, g->err, "the pairs");
    int rc = 0;

    L->pairs = xmalloc(P * sizeof *L->pairs, g->err, "the pairs");
    L->ucount = xcalloc(U, sizeof *L->ucount, g->err, "the pairs");
    L->w = xmalloc(U * sizeof *L->w, g->err, "the pairs");
    if (!zero || !L->pairs || !L->ucount || !L->w || u64set_init(&L->pset, P, g->err)) {
        rc = PS_ENOMEM;
        goto out;
    }
    for (size_t j = 0; j < Q; j++) add_pair(L, (uint32_t)j, draw_user(g, L, r, (uint32_t)j));
    for (size_t u = 0; u < U; u++)
        if (!L->ucount[u]) zero[nzero++] = (uint32_t)u;
    /* Fewer spare pairs than idle users (P >= U was checked): move pairs over from users
     * who have several. */
    for (size_t scan = (size_t)ps_rng_below(r, L->np); nzero > P - L->np; scan++) {
        pairv *pv = &L->pairs[scan % L->np];
        if (L->ucount[pv->u] < 2) continue;
        uint32_t u = zero[--nzero];
        ps_map_u64_remove(&L->pset, (uint64_t)pv->q * U + pv->u + 1);
        L->ucount[pv->u]--;
        pv->u = u;
        ps_map_u64_add(&L->pset, (uint64_t)pv->q * U + u + 1, NULL);
        L->ucount[u]++;
    }
    for (size_t z = 0; z < nzero; z++) {
        uint32_t u = zero[z], j; /* no pair yet, so any query is new for u */
        do j = (uint32_t)cdf_draw(L->qcdf, Q, r);
        while (ps_rng_unif(r) * (1.0 + GEN_PAIR_FAV_AFFINITY) * g->activity[u] >
               user_weight(g, L, j, u));
        add_pair(L, j, u);
    }
    for (size_t fails = 0; L->np < P;) {
        uint32_t j = (uint32_t)cdf_draw(L->qcdf, Q, r), u = GEN_NONE;
        if (fails < 1000) {
            if ((u = draw_user(g, L, r, j)) == GEN_NONE) {
                fails++;
                continue;
            }
        } else {
            /* Nearly saturated: take the next free (query, user) slot. */
            for (size_t k = 0; u == GEN_NONE; k++) {
                size_t slot = ((size_t)j * U + k) % (Q * U);
                if (!ps_map_u64_get(&L->pset, slot + 1)) {
                    j = (uint32_t)(slot / U);
                    u = (uint32_t)(slot % U);
                }
            }
        }
        add_pair(L, j, u);
    }
out:
    free(zero);
    return rc;
}

/* The sticker-choice table of one pair over one pool of candidates (all of them, or only
 * those showing the query in their ocr): cumulative quality, × the favourite boost for the
 * user's favourite series. The boost is at least GEN_CLICK_FAV_BOOST, and enough that the
 * favourites take GEN_CLICK_FAV_SHARE of the pool's weight whenever they are in it. Returns
 * the number of entries (0 if the pool is empty); OUT pick[k] = candidate index of entry k. */
static uint32_t choice_table(const gen *g, uint32_t user, uint32_t off, uint32_t len, int ocr_only,
                             double *cdf, uint32_t *pick)
{
    double fav = 0, other = 0, boost = GEN_CLICK_FAV_BOOST, acc = 0;
    const double odds = GEN_CLICK_FAV_SHARE / (1.0 - GEN_CLICK_FAV_SHARE);
    uint32_t n = 0;

    for (uint32_t k = 0; k < len; k++) {
        uint32_t e = g->cand[off + k], i = e & ~GEN_OCR_FLAG;
        if (ocr_only && !(e & GEN_OCR_FLAG)) continue;
        if (is_fan(g, g->sser[i], user))
            fav += g->quality[i];
        else
            other += g->quality[i];
    }
    if (fav > 0 && odds * other / fav > boost) boost = odds * other / fav;
    for (uint32_t k = 0; k < len; k++) {
        uint32_t e = g->cand[off + k], i = e & ~GEN_OCR_FLAG;
        if (ocr_only && !(e & GEN_OCR_FLAG)) continue;
        cdf[n] = acc += is_fan(g, g->sser[i], user) ? g->quality[i] * boost : g->quality[i];
        pick[n++] = i;
    }
    return n;
}

/* Clicks per pair: one each, the rest heavy-tailed (Pareto) and leaning to common queries.
 * Each click: with probability GEN_CLICK_OCR_SHARE a sticker that shows the query (if any
 * does), else any sticker whose ocr or keywords contain it; within that pool ∝ quality ×
 * favourite boost (choice_table). */
static int pick_clicks(gen *g, clicklog *L, ps_rng *r)
{
    size_t maxcand = 1;
    double *pcdf = xmalloc(L->P * sizeof *pcdf, g->err, "the clicks"), acc = 0;
    double *cdf[2] = {NULL, NULL};
    uint32_t *pick[2] = {NULL, NULL};
    int rc = 0;

    L->pclicks = xmalloc(L->P * sizeof *L->pclicks, g->err, "the clicks");
    L->clicks = xmalloc(L->C * sizeof *L->clicks, g->err, "the clicks");
    for (size_t j = 0; j < L->Q; j++) {
        size_t len = g->cand_off[L->query[j] + 1] - g->cand_off[L->query[j]];
        if (len > maxcand) maxcand = len;
    }
    for (int t = 0; t < 2; t++) {
        cdf[t] = xmalloc(maxcand * sizeof *cdf[t], g->err, "the clicks");
        pick[t] = xmalloc(maxcand * sizeof *pick[t], g->err, "the clicks");
        if (!cdf[t] || !pick[t]) rc = PS_ENOMEM;
    }
    if (rc || !pcdf || !L->pclicks || !L->clicks) {
        rc = PS_ENOMEM;
        goto out;
    }
    for (size_t p = 0; p < L->P; p++) {
        double rank = (double)L->query[L->pairs[p].q] + 1;
        L->pclicks[p] = 1;
        pcdf[p] = acc += pow(ps_rng_unif_pos(r), -1.0 / GEN_PAIR_ALPHA) * pow(rank, -GEN_PAIR_POP);
    }
    for (size_t c = L->P; c < L->C; c++) L->pclicks[cdf_draw(pcdf, L->P, r)]++;

    for (size_t p = 0; p < L->P; p++) {
        uint32_t u = L->pairs[p].u, ph = L->query[L->pairs[p].q];
        uint32_t off = g->cand_off[ph], len = g->cand_off[ph + 1] - off, n[2];
        n[0] = choice_table(g, u, off, len, 0, cdf[0], pick[0]);
        n[1] = choice_table(g, u, off, len, 1, cdf[1], pick[1]);
        for (uint32_t c = 0; c < L->pclicks[p]; c++) {
            int t = n[1] > 0 && ps_rng_unif(r) < GEN_CLICK_OCR_SHARE;
            uint32_t k = (uint32_t)cdf_draw(cdf[t], n[t], r);
            L->clicks[L->nc++] = (clickv){(uint32_t)p, pick[t][k]};
        }
    }
    /* A log is in time order, not grouped by pair. */
    for (size_t i = L->nc; i > 1; i--) {
        size_t j = (size_t)ps_rng_below(r, i);
        clickv t = L->clicks[i - 1];
        L->clicks[i - 1] = L->clicks[j];
        L->clicks[j] = t;
    }
out:
    free(pcdf);
    for (int t = 0; t < 2; t++) {
        free(cdf[t]);
        free(pick[t]);
    }
    return rc;
}

static int gen_clicks(gen *g, FILE *f, const char *path)
{
    const builder_gen_cfg *cfg = g->cfg;
    clicklog L = {.U = cfg->nusers, .Q = cfg->nqueries, .P = cfg->npairs, .C = cfg->nclicks};
    ps_rng r;
    int rc;

    if (L.C == 0) return 0;
    ps_rng_seed(&r, cfg->seed, STREAM_CLICKS);
    if ((rc = pick_queries(g, &L, &r)) || (rc = pick_pairs(g, &L, &r)) ||
        (rc = pick_clicks(g, &L, &r)))
        goto out;
    for (size_t i = 0; i < L.nc; i++) {
        const pairv *pv = &L.pairs[L.clicks[i].pair];
        if (fprintf(f, "u%02u\t%s\t%llu\n", pv->u + 1, g->phrase[L.query[pv->q]],
                    (unsigned long long)g->id[L.clicks[i].sticker]) < 0) {
            rc = ps_err_set(g->err, PS_EIO, "generate: writing %s: %s", path, strerror(errno));
            goto out;
        }
    }
#ifdef GEN_DEBUG_STATS
    {
        size_t pf = 0, cf = 0;
        for (size_t p = 0; p < L.P; p++) pf += L.favq[L.pairs[p].q * L.U + L.pairs[p].u];
        for (size_t i = 0; i < L.nc; i++)
            cf += is_fan(g, g->sser[L.clicks[i].sticker], L.pairs[L.clicks[i].pair].u);
        fprintf(stderr, "debug: pairs with favourite answers %.3f, clicks on favourites %.3f\n",
                (double)pf / L.P, (double)cf / L.nc);
    }
#endif
out:
    clicklog_free(&L);
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * Configuration and files.
 */
void builder_gen_defaults(builder_gen_cfg *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->seed = 42;
    cfg->nstickers = 543098;
    cfg->dim = 512;
    cfg->nusers = 8;
    cfg->nclicks = 12568;
    cfg->npairs = 2308;
    cfg->nqueries = 1891;
    cfg->progress = 1;
}

static int check_cfg(const builder_gen_cfg *c, ps_err *err)
{
    if (c->nstickers < 1 || c->nstickers > GEN_MAX_STICKERS)
        return ps_err_set(err, PS_EINVAL, "generate: stickers must be in 1..%u (got %zu)",
                          GEN_MAX_STICKERS, c->nstickers);
    if (c->dim < 1 || c->dim > GEN_MAX_DIM)
        return ps_err_set(err, PS_EINVAL, "generate: dim must be in 1..%u (got %zu)", GEN_MAX_DIM,
                          c->dim);
    if (c->nusers < 1 || c->nusers > GEN_MAX_USERS)
        return ps_err_set(err, PS_EINVAL, "generate: users must be in 1..%u (got %zu)",
                          GEN_MAX_USERS, c->nusers);
    if (c->nclicks > GEN_MAX_CLICKS)
        return ps_err_set(err, PS_EINVAL, "generate: clicks must be at most %u (got %zu)",
                          GEN_MAX_CLICKS, c->nclicks);
    if (c->nclicks == 0 && c->npairs == 0 && c->nqueries == 0) return 0; /* no click log */
    if (c->nqueries < 1)
        return ps_err_set(err, PS_EINVAL, "generate: queries must be >= 1 when there are clicks");
    if (c->npairs < c->nqueries)
        return ps_err_set(err, PS_EINVAL,
                          "generate: pairs (%zu) must be >= queries (%zu): every query is asked "
                          "by some user",
                          c->npairs, c->nqueries);
    if (c->npairs < c->nusers)
        return ps_err_set(err, PS_EINVAL,
                          "generate: pairs (%zu) must be >= users (%zu): every user clicks",
                          c->npairs, c->nusers);
    if (c->npairs / c->nusers > c->nqueries ||
        (c->npairs / c->nusers == c->nqueries && c->npairs % c->nusers))
        return ps_err_set(err, PS_EINVAL,
                          "generate: pairs (%zu) must be <= users × queries (%zu × %zu)", c->npairs,
                          c->nusers, c->nqueries);
    if (c->nclicks < c->npairs)
        return ps_err_set(err, PS_EINVAL,
                          "generate: clicks (%zu) must be >= pairs (%zu): every pair clicks once",
                          c->nclicks, c->npairs);
    if (c->nqueries > builder_vocab_size())
        return ps_err_set(err, PS_EINVAL,
                          "generate: queries (%zu) exceeds the vocabulary (%zu phrases)",
                          c->nqueries, builder_vocab_size());
    return 0;
}

/* mkdir -p */
static int make_dirs(const char *dir, ps_err *err)
{
    char path[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof path)
        return ps_err_set(err, PS_EINVAL, "generate: bad output directory '%s'", dir);
    memcpy(path, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (path[i] != '/' && path[i] != '\0') continue;
        char c = path[i];
        path[i] = '\0';
        if (mkdir(path, 0777) != 0 && errno != EEXIST)
            return ps_err_set(err, PS_EIO, "generate: creating directory %s: %s", path,
                              strerror(errno));
        path[i] = c;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return ps_err_set(err, PS_EIO, "generate: %s is not a directory", dir);
    return 0;
}

enum { OUT_CORPUS, OUT_EMBED, OUT_CLICKS, OUT_SERIES, NOUT };
static const char *const out_names[NOUT] = {"corpus.jsonl", "embeddings.npy", "clicks.tsv",
                                            "series.tsv"};

/* series.tsv: sticker id and series, one line per sticker in corpus order. */
static int gen_series_file(const gen *g, FILE *f, const char *path)
{
    for (size_t i = 0; i < g->n; i++)
        if (fprintf(f, "%llu\t%u\n", (unsigned long long)g->id[i], g->sser[i]) < 0)
            return ps_err_set(g->err, PS_EIO, "generate: writing %s: %s", path, strerror(errno));
    return 0;
}

int builder_generate(const builder_gen_cfg *cfg, const char *outdir, ps_err *err)
{
    gen g = {0};
    FILE *f[NOUT] = {0};
    char final_[NOUT][4096], tmp[NOUT][4096];
    int rc;

    ps_err_clear(err);
    if (!cfg || !outdir) return ps_err_set(err, PS_EINVAL, "generate: no config or directory");
    if ((rc = check_cfg(cfg, err))) return rc;
    if ((rc = make_dirs(outdir, err))) return rc;
    for (int k = 0; k < NOUT; k++) {
        if (snprintf(final_[k], sizeof final_[k], "%s/%s", outdir, out_names[k]) >=
                (int)sizeof final_[k] ||
            snprintf(tmp[k], sizeof tmp[k], "%s/%s.tmp", outdir, out_names[k]) >=
                (int)sizeof tmp[k])
            return ps_err_set(err, PS_EINVAL, "generate: output directory name too long");
    }
    for (int k = 0; k < NOUT; k++) {
        f[k] = fopen(tmp[k], "wb");
        if (!f[k]) {
            rc = ps_err_set(err, PS_EIO, "generate: creating %s: %s", tmp[k], strerror(errno));
            goto err;
        }
        setvbuf(f[k], NULL, _IOFBF, 1 << 20);
    }

    g.cfg = cfg;
    g.err = err;
    g.outdir = outdir;
    g.n = cfg->nstickers;
    if ((rc = gen_vocab(&g)) || (rc = gen_series(&g)) || (rc = gen_ids(&g)) ||
        (rc = gen_corpus(&g, f[OUT_CORPUS], tmp[OUT_CORPUS])) ||
        (rc = gen_embeddings(&g, f[OUT_EMBED], tmp[OUT_EMBED])) || (rc = gen_candidates(&g)) ||
        (rc = gen_users(&g)) || (rc = gen_clicks(&g, f[OUT_CLICKS], tmp[OUT_CLICKS])) ||
        (rc = gen_series_file(&g, f[OUT_SERIES], tmp[OUT_SERIES])))
        goto err;

    for (int k = 0; k < NOUT; k++) {
        int bad = fflush(f[k]) != 0 || ferror(f[k]);
        bad |= fclose(f[k]) != 0;
        f[k] = NULL;
        if (bad) {
            rc = ps_err_set(err, PS_EIO, "generate: writing %s: %s", tmp[k], strerror(errno));
            goto err;
        }
    }
    for (int k = 0; k < NOUT; k++)
        if (rename(tmp[k], final_[k]) != 0) {
            rc = ps_err_set(err, PS_EIO, "generate: renaming %s to %s: %s", tmp[k], final_[k],
                            strerror(errno));
            goto err;
        }
    gen_free(&g);
    return 0;
err:
    if (err && !err->code) ps_err_set(err, rc ? rc : PS_EINTERNAL, "generate: failed");
    for (int k = 0; k < NOUT; k++) {
        if (f[k]) fclose(f[k]);
        unlink(tmp[k]);
    }
    gen_free(&g);
    return rc ? rc : PS_EINTERNAL;
}

/* ------------------------------------------------------------------------------------------
 * Benchmark and test queries.
 */
int builder_gen_queries(uint64_t seed, size_t n, double chinese_share, char ***queries, ps_err *err)
{
    size_t V = builder_vocab_size(), nlang[2] = {0, 0}, ncn;
    uint32_t *rank[2] = {NULL, NULL};
    double *cdf[2] = {NULL, NULL};
    uint8_t *is_cn = NULL;
    char **out = NULL;
    ps_rng r;
    int rc = 0;

    ps_err_clear(err);
    if (!queries) return ps_err_set(err, PS_EINVAL, "gen_queries: queries is NULL");
    *queries = NULL;
    if (!(chinese_share >= 0.0 && chinese_share <= 1.0))
        return ps_err_set(err, PS_EINVAL, "gen_queries: chinese_share must be in [0, 1] (got %g)",
                          chinese_share);
    if (n > GEN_MAX_CLICKS)
        return ps_err_set(err, PS_EINVAL, "gen_queries: n must be at most %u (got %zu)",
                          GEN_MAX_CLICKS, n);

    /* Per language (0 English, 1 Chinese): its ranks and a Zipf table over global rank. */
    for (int l = 0; l < 2; l++) {
        rank[l] = xmalloc(V * sizeof *rank[l], err, "the query vocabulary");
        cdf[l] = xmalloc(V * sizeof *cdf[l], err, "the query vocabulary");
        if (!rank[l] || !cdf[l]) goto oom;
    }
    for (size_t p = 0; p < V; p++) {
        int l = !builder_vocab_is_english(p);
        double prev = nlang[l] ? cdf[l][nlang[l] - 1] : 0.0;
        rank[l][nlang[l]] = (uint32_t)p;
        cdf[l][nlang[l]++] = prev + pow((double)(p + 1), -GEN_ZIPF_S);
    }
    ncn = (size_t)llround(chinese_share * (double)n);
    if ((ncn > 0 && nlang[1] < 2) || (ncn < n && nlang[0] < 2)) {
        rc = ps_err_set(err, PS_EINTERNAL, "gen_queries: the vocabulary lacks a language");
        goto done;
    }

    /* Exactly ncn Chinese queries, at shuffled positions. */
    is_cn = xcalloc(n, 1, err, "the queries");
    out = xcalloc(n, sizeof *out, err, "the queries");
    if (!is_cn || !out) goto oom;
    ps_rng_seed(&r, seed, STREAM_QUERIES);
    for (size_t i = 0; i < ncn; i++) is_cn[i] = 1;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)ps_rng_below(&r, i);
        uint8_t t = is_cn[i - 1];
        is_cn[i - 1] = is_cn[j];
        is_cn[j] = t;
    }
    for (size_t i = 0; i < n; i++) {
        int l = is_cn[i], k = ps_rng_unif(&r) < 0.3 ? 2 : 1;
        uint32_t p[2];
        p[0] = rank[l][cdf_draw(cdf[l], nlang[l], &r)];
        if (k == 2) do
                p[1] = rank[l][cdf_draw(cdf[l], nlang[l], &r)];
            while (p[1] == p[0]);
        const char *a = builder_vocab_phrase(p[0]), *b = k == 2 ? builder_vocab_phrase(p[1]) : NULL;
        size_t la = strlen(a), lb = b ? strlen(b) : 0;
        out[i] = xmalloc(la + (b ? 1 + lb : 0) + 1, err, "a query");
        if (!out[i]) goto oom;
        memcpy(out[i], a, la);
        if (b) {
            out[i][la] = ' ';
            memcpy(out[i] + la + 1, b, lb);
        }
        out[i][la + (b ? 1 + lb : 0)] = '\0';
    }
    *queries = out;
    out = NULL;
    goto done;
oom:
    rc = PS_ENOMEM;
    if (!err || !err->code) rc = ps_err_set(err, PS_ENOMEM, "gen_queries: out of memory");
    builder_gen_queries_free(out, n);
done:
    for (int l = 0; l < 2; l++) {
        free(rank[l]);
        free(cdf[l]);
    }
    free(is_cn);
    return rc;
}

void builder_gen_queries_free(char **queries, size_t n)
{
    if (!queries) return;
    for (size_t i = 0; i < n; i++) free(queries[i]);
    free(queries);
}
