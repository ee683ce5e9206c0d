/*
 * render_stickers.c — sticker-like test images for `builder enrich` (issue 10, must-show 1),
 * and the score of its OCR against them.
 *
 *   render_stickers render OUTDIR N SEED VOCAB FONT
 *       N images of phrases drawn from the generator's vocabulary (builder/vocab.txt, the
 *       first 800 ranks: the phrases stickers carry most, about a third English), rendered with
 * FreeType in FONT (a CJK font: wqy-zenhei) at 28-72 px on solid, gradient or lightly noisy
 * backgrounds of 200-600 px, dark text on light or light on dark, written as PNG, JPEG, GIF and
 * WebP in turn (Leptonica). Two thirds are named <decimal id>.<ext>, a third sticker-NNN.<ext>
 *       (hashed ids). OUTDIR/truth.tsv: file \t phrase.
 *   render_stickers styled OUTDIR N SEED VOCAB FONT NSTYLES
 *       as render, in NSTYLES visual styles (sticker i has style i % NSTYLES, at most 6): a
 *       style is a palette (a light background colour, jittered by a few levels, with a
 *       border band and dark text of its own hue) and a size class; every sticker carries a
 *       different phrase, at 40-72 px on a plain background so OCR reads it cleanly.
 *       OUTDIR/truth.tsv as for render, and OUTDIR/styles.tsv: file \t style.
 *   render_stickers faint OUTFILE FONT NOISE
 *       one 240x100 PNG: a grey phrase on grey under uniform noise of +-NOISE: Tesseract
 *       reads lines in it (with --ocr-min-conf 0) but none with confidence >= 0.7.
 *   render_stickers blank OUT.png W H
 *       a plain W x H PNG (the oversized-image case).
 *   render_stickers score TRUTH.tsv CORPUS.jsonl
 *       matches corpus lines to truth by their `image`; a phrase is recovered when it occurs
 *       in the OCR text once both are normalized (whitespace and punctuation removed, ASCII
 *       lowercased); character accuracy = 1 - edit distance / phrase length (code points,
 *       normalized, floored at 0) against the OCR line closest to the phrase. Prints
 *       "n=… recovered=… recovery=… char_accuracy=…" and lists the misses on stderr.
 */
#include <ft2build.h>
#include FT_FREETYPE_H
#include <jansson.h>
#include <leptonica/allheaders.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PHRASES 800
#define MAX_CP      256

static uint64_t rng_state;
static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}
static int rnd_in(int lo, int hi) /* inclusive */
{
    return lo + (int)(rnd() % (uint32_t)(hi - lo + 1));
}

/* UTF-8 -> code points; returns the count (invalid bytes become U+FFFD). */
static size_t decode(const char *s, uint32_t *out, size_t cap)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = 0;
    while (*p && n < cap) {
        uint32_t c;
        if (p[0] < 0x80)
            c = *p++;
        else if ((p[0] & 0xE0) == 0xC0 && p[1]) {
            c = ((p[0] & 0x1Fu) << 6) | (p[1] & 0x3Fu);
            p += 2;
        } else if ((p[0] & 0xF0) == 0xE0 && p[1] && p[2]) {
            c = ((p[0] & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
            p += 3;
        } else if ((p[0] & 0xF8) == 0xF0 && p[1] && p[2] && p[3]) {
            c = ((p[0] & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) |
                (p[3] & 0x3Fu);
            p += 4;
        } else {
            c = 0xFFFD;
            p++;
        }
        out[n++] = c;
    }
    return n;
}

/**************************************************************************
 * Rendering
 */

typedef struct canvas {
    PIX *pix;
    int w, h;
} canvas;

static void put(canvas *c, int x, int y, int r, int g, int b)
{
    if (x < 0 || y < 0 || x >= c->w || y >= c->h) return;
    pixSetRGBPixel(c->pix, x, y,
                   r < 0     ? 0
                   : r > 255 ? 255
                             : r,
                   g < 0     ? 0
                   : g > 255 ? 255
                             : g,
                   b < 0     ? 0
                   : b > 255 ? 255
                             : b);
}

/* Background: 0 solid, 1 gradient, 2 solid with light noise. dark: a dark background. */
static void background(canvas *c, int kind, int dark)
{
    int base[3], end[3];
    for (int k = 0; k < 3; k++) {
        base[k] = dark ? rnd_in(0, 70) : rnd_in(185, 255);
        end[k] = dark ? rnd_in(0, 70) : rnd_in(185, 255);
    }
    int vertical = rnd() & 1;
    for (int y = 0; y < c->h; y++)
        for (int x = 0; x < c->w; x++) {
            int v[3];
            for (int k = 0; k < 3; k++) {
                v[k] = base[k];
                if (kind == 1) {
                    double t = vertical ? (double)y / c->h : (double)x / c->w;
                    v[k] = (int)(base[k] + t * (end[k] - base[k]));
                } else if (kind == 2) {
                    v[k] += rnd_in(-18, 18);
                }
            }
            put(c, x, y, v[0], v[1], v[2]);
        }
}

/* Width in pixels of cps at the face's current size. */
static int text_width(FT_Face face, const uint32_t *cps, size_t n)
{
    int w = 0;
    for (size_t i = 0; i < n; i++)
        if (FT_Load_Char(face, cps[i], FT_LOAD_DEFAULT) == 0)
            w += (int)(face->glyph->advance.x >> 6);
    return w;
}

/* Draw cps with the baseline at (x, y), colour rgb, coverage-blended over the canvas. */
static void draw(canvas *c, FT_Face face, const uint32_t *cps, size_t n, int x, int y,
                 const int rgb[3])
{
    for (size_t i = 0; i < n; i++) {
        if (FT_Load_Char(face, cps[i], FT_LOAD_RENDER)) continue;
        FT_GlyphSlot g = face->glyph;
        for (unsigned r = 0; r < g->bitmap.rows; r++)
            for (unsigned q = 0; q < g->bitmap.width; q++) {
                int a = g->bitmap.buffer[r * (unsigned)g->bitmap.pitch + q];
                if (!a) continue;
                int px = x + g->bitmap_left + (int)q, py = y - g->bitmap_top + (int)r;
                if (px < 0 || py < 0 || px >= c->w || py >= c->h) continue;
                l_int32 br, bg, bb;
                pixGetRGBPixel(c->pix, px, py, &br, &bg, &bb);
                put(c, px, py, (rgb[0] * a + br * (255 - a)) / 255,
                    (rgb[1] * a + bg * (255 - a)) / 255, (rgb[2] * a + bb * (255 - a)) / 255);
            }
        x += (int)(g->advance.x >> 6);
    }
}

static int load_vocab(const char *path, char **out, int cap)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        exit(1);
    }
    char line[512];
    int n = 0;
    while (n < cap && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0] || line[0] == '#') continue;
        out[n++] = strdup(line);
    }
    fclose(f);
    return n;
}

static int is_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80) return 0;
    return 1;
}

static FT_Face open_font(const char *font)
{
    static FT_Library lib;
    FT_Face face;
    if (FT_Init_FreeType(&lib) || FT_New_Face(lib, font, 0, &face)) {
        fprintf(stderr, "render_stickers: cannot load font %s\n", font);
        exit(1);
    }
    return face;
}

/* The styles of `styled`: background, border and text colours. */
static const int style_rgb[6][3][3] = {
    {{252, 212, 222}, {236, 120, 150}, {90, 20, 40}},  /* pink */
    {{200, 222, 252}, {90, 140, 220}, {20, 40, 100}},  /* blue */
    {{210, 244, 200}, {100, 180, 90}, {20, 70, 20}},   /* green */
    {{255, 242, 180}, {230, 180, 40}, {90, 60, 0}},    /* yellow */
    {{230, 214, 252}, {150, 110, 220}, {60, 30, 110}}, /* lavender */
    {{225, 225, 225}, {120, 120, 120}, {20, 20, 20}},  /* grey */
};

static void styled_background(canvas *c, int style)
{
    int bg[3], band = c->h / 8;
    for (int k = 0; k < 3; k++) bg[k] = style_rgb[style][0][k] + rnd_in(-4, 4);
    for (int y = 0; y < c->h; y++)
        for (int x = 0; x < c->w; x++) {
            const int *v = y < band || y >= c->h - band ? style_rgb[style][1] : bg;
            put(c, x, y, v[0], v[1], v[2]);
        }
}

/* nstyles 0: the mixed set of `render`; else the styled set. */
static int cmd_render(const char *outdir, int n, uint64_t seed, const char *vocab, const char *font,
                      int nstyles)
{
    static const struct {
        const char *ext;
        int fmt;
    } fmts[] = {{"png", IFF_PNG}, {"jpg", IFF_JFIF_JPEG}, {"gif", IFF_GIF}, {"webp", IFF_WEBP}};
    char *phr[MAX_PHRASES];
    int np = load_vocab(vocab, phr, MAX_PHRASES);
    FT_Face face = open_font(font);
    rng_state = seed * 2862933555777941757ull + 3037000493ull;
    char path[4096];
    snprintf(path, sizeof path, "%s/truth.tsv", outdir);
    FILE *truth = fopen(path, "w"), *styles = NULL;
    if (nstyles) {
        snprintf(path, sizeof path, "%s/styles.tsv", outdir);
        styles = fopen(path, "w");
    }
    if (!truth || (nstyles && !styles) || np < 10 || (nstyles && n > np / 2)) {
        fprintf(stderr, "render_stickers: cannot write %s, or too small a vocabulary\n", path);
        return 1;
    }
    char used[MAX_PHRASES] = {0};
    for (int i = 0; i < n; i++) {
        /* a third English: pick among the ASCII or the other phrases (styled: each once) */
        int want_en = i % 3 == 1, k;
        do k = (int)(rnd() % (uint32_t)np);
        while (is_ascii(phr[k]) != want_en || (nstyles && used[k]));
        used[k] = 1;
        int style = nstyles ? i % nstyles : 0;
        uint32_t cps[MAX_CP];
        size_t ncp = decode(phr[k], cps, MAX_CP);
        canvas c = {NULL, rnd_in(200, 600), rnd_in(200, 500)};
        int px = nstyles ? 40 + 8 * (style % 3) + rnd_in(0, 8) : rnd_in(28, 72), tw;
        for (;;) {
            FT_Set_Pixel_Sizes(face, 0, (FT_UInt)px);
            tw = text_width(face, cps, ncp);
            if (tw <= c.w - 24 || px <= 16) break;
            px -= 2;
        }
        if (tw > c.w - 24) c.w = tw + 24;
        if (c.h < px * 2) c.h = px * 2;
        if (nstyles && c.h < px * 2 + c.h / 4 + 16) c.h = px * 2 + c.h / 4 + 16;
        c.pix = pixCreate(c.w, c.h, 32);
        int dark = !nstyles && i % 7 == 3;
        int rgb[3];
        if (nstyles) {
            styled_background(&c, style);
            memcpy(rgb, style_rgb[style][2], sizeof rgb);
        } else {
            background(&c, i % 3, dark);
            for (int q = 0; q < 3; q++) rgb[q] = dark ? rnd_in(215, 255) : rnd_in(0, 90);
        }
        int x = rnd_in(12, c.w - tw - 12 > 12 ? c.w - tw - 12 : 12);
        int y = rnd_in(px + 8, c.h - px / 3 - 8 > px + 8 ? c.h - px / 3 - 8 : px + 8);
        if (nstyles) { /* between the border bands */
            int lo = c.h / 8 + px + 4, hi = c.h - c.h / 8 - px / 3 - 4;
            y = rnd_in(lo, hi > lo ? hi : lo);
        }
        draw(&c, face, cps, ncp, x, y, rgb);
        char name[64];
        if (i % 3 == 2)
            snprintf(name, sizeof name, "sticker-%03d.%s", i, fmts[i % 4].ext);
        else
            snprintf(name, sizeof name, "%llu.%s", 4000000000000000000ull + (uint64_t)i * 7919,
                     fmts[i % 4].ext);
        snprintf(path, sizeof path, "%s/%s", outdir, name);
        int wrc = fmts[i % 4].fmt == IFF_JFIF_JPEG ? pixWriteJpeg(path, c.pix, 90, 0)
                                                   : pixWrite(path, c.pix, fmts[i % 4].fmt);
        if (wrc) {
            fprintf(stderr, "render_stickers: cannot write %s\n", path);
            return 1;
        }
        fprintf(truth, "%s\t%s\n", name, phr[k]);
        if (styles) fprintf(styles, "%s\t%d\n", name, style);
        pixDestroy(&c.pix);
    }
    fclose(truth);
    if (styles) fclose(styles);
    for (int i = 0; i < np; i++) free(phr[i]);
    return 0;
}

static int cmd_faint(const char *out, const char *font, int noise)
{
    FT_Face face = open_font(font);
    rng_state = 7;
    canvas c = {pixCreate(240, 100, 32), 240, 100};
    for (int y = 0; y < c.h; y++)
        for (int x = 0; x < c.w; x++) put(&c, x, y, 200, 200, 200);
    uint32_t cps[MAX_CP];
    int grey[3] = {150, 150, 150};
    size_t n = decode("晚安好梦", cps, MAX_CP);
    FT_Set_Pixel_Sizes(face, 0, 40);
    draw(&c, face, cps, n, 40, 65, grey);
    /* heavy noise over everything: Tesseract still sees a line, but cannot be sure of it */
    for (int y = 0; y < c.h; y++)
        for (int x = 0; x < c.w; x++) {
            l_int32 r, g, b;
            pixGetRGBPixel(c.pix, x, y, &r, &g, &b);
            int d = rnd_in(-noise, noise);
            put(&c, x, y, r + d, g + d, b + d);
        }
    int rc = pixWrite(out, c.pix, IFF_PNG);
    pixDestroy(&c.pix);
    return rc ? 1 : 0;
}

/* A solid w x h PNG (the oversized-image case). */
static int cmd_blank(const char *out, int w, int h)
{
    PIX *p = pixCreate(w, h, 8);
    if (!p) return 1;
    pixSetAllArbitrary(p, 200);
    int rc = pixWrite(out, p, IFF_PNG);
    pixDestroy(&p);
    return rc ? 1 : 0;
}

/**************************************************************************
 * Scoring
 */

static int is_punct(uint32_t c)
{
    if (c < 0x80)
        return !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'));
    return (c >= 0x2000 && c <= 0x206F) || (c >= 0x3000 && c <= 0x303F) ||
           (c >= 0xFF00 && c <= 0xFF0F) || (c >= 0xFF1A && c <= 0xFF20) ||
           (c >= 0xFF3B && c <= 0xFF40) || (c >= 0xFF5B && c <= 0xFF65) || c == 0xFFFD;
}

static size_t normalize(const char *s, uint32_t *out, size_t cap)
{
    uint32_t tmp[4096];
    size_t n = decode(s, tmp, cap < 4096 ? cap : 4096), k = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = tmp[i];
        if (is_punct(c)) continue;
        if (c >= 'A' && c <= 'Z') c += 32;
        out[k++] = c;
    }
    return k;
}

static size_t edit_distance(const uint32_t *a, size_t na, const uint32_t *b, size_t nb)
{
    size_t *row = malloc((nb + 1) * sizeof *row);
    for (size_t j = 0; j <= nb; j++) row[j] = j;
    for (size_t i = 1; i <= na; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= nb; j++) {
            size_t up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            diag = up;
            row[j] = best;
        }
    }
    size_t d = row[nb];
    free(row);
    return d;
}

static int contains(const uint32_t *h, size_t nh, const uint32_t *nd, size_t nn)
{
    for (size_t i = 0; nn && i + nn <= nh; i++)
        if (memcmp(h + i, nd, nn * sizeof *nd) == 0) return 1;
    return 0;
}

static int cmd_score(const char *truth_path, const char *corpus_path)
{
    json_t *by_image = json_object();
    FILE *f = fopen(corpus_path, "r");
    if (!f) {
        perror(corpus_path);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        json_t *o = json_loads(line, JSON_DECODE_INT_AS_REAL, NULL);
        const char *img = json_string_value(json_object_get(o, "image"));
        const char *ocr = json_string_value(json_object_get(o, "ocr"));
        if (img) json_object_set_new(by_image, img, json_string(ocr ? ocr : ""));
        json_decref(o);
    }
    fclose(f);
    f = fopen(truth_path, "r");
    if (!f) {
        perror(truth_path);
        return 1;
    }
    size_t n = 0, rec = 0;
    double acc = 0;
    while (getline(&line, &cap, f) > 0) {
        line[strcspn(line, "\r\n")] = '\0';
        char *tab = strchr(line, '\t');
        if (!tab) continue;
        *tab = '\0';
        const char *phrase = tab + 1;
        const char *ocr = json_string_value(json_object_get(by_image, line));
        uint32_t p[MAX_CP], o[4096];
        size_t np = normalize(phrase, p, MAX_CP);
        if (!np) continue;
        n++;
        size_t no = ocr ? normalize(ocr, o, 4096) : 0;
        int found = contains(o, no, p, np);
        rec += (size_t)found;
        /* the closest OCR line */
        size_t best = np;
        if (ocr) {
            char *copy = strdup(ocr), *save = NULL;
            for (char *l = strtok_r(copy, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
                uint32_t lc[4096];
                size_t nl = normalize(l, lc, 4096), d = edit_distance(p, np, lc, nl);
                if (d < best) best = d;
            }
            free(copy);
        }
        acc += 1.0 - (double)best / (double)np;
        if (!found)
            fprintf(stderr, "miss: %s: \"%s\" read as \"%s\"\n", line, phrase,
                    ocr ? ocr : "(no corpus line)");
    }
    fclose(f);
    free(line);
    json_decref(by_image);
    if (!n) return 1;
    printf("n=%zu recovered=%zu recovery=%.4f char_accuracy=%.4f\n", n, rec, (double)rec / n,
           acc / n);
    return 0;
}

int main(int argc, char **argv)
{
    setMsgSeverity(L_SEVERITY_ERROR);
    if (argc == 7 && strcmp(argv[1], "render") == 0)
        return cmd_render(argv[2], atoi(argv[3]), strtoull(argv[4], NULL, 10), argv[5], argv[6], 0);
    if (argc == 8 && strcmp(argv[1], "styled") == 0) {
        int ns = atoi(argv[7]);
        if (ns < 1 || ns > 6) return 2;
        return cmd_render(argv[2], atoi(argv[3]), strtoull(argv[4], NULL, 10), argv[5], argv[6],
                          ns);
    }
    if (argc == 5 && strcmp(argv[1], "faint") == 0)
        return cmd_faint(argv[2], argv[3], atoi(argv[4]));
    if (argc == 5 && strcmp(argv[1], "blank") == 0)
        return cmd_blank(argv[2], atoi(argv[3]), atoi(argv[4]));
    if (argc == 4 && strcmp(argv[1], "score") == 0) return cmd_score(argv[2], argv[3]);
    fprintf(stderr, "usage: render_stickers render OUTDIR N SEED VOCAB FONT\n"
                    "       render_stickers styled OUTDIR N SEED VOCAB FONT NSTYLES\n"
                    "       render_stickers faint OUTFILE FONT NOISE\n"
                    "       render_stickers blank OUT.png W H\n"
                    "       render_stickers score TRUTH.tsv CORPUS.jsonl\n");
    return 2;
}
