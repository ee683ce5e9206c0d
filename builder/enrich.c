/*
 * enrich.c — image decoding (Leptonica) and OCR (Tesseract's C API) for `builder enrich`.
 *
 * Decoding checks the header (format, width × height) before it decodes, so a huge image is
 * refused without allocating its pixels. Leptonica's own messages are silenced: a bad image is
 * the sticker's error, reported once by the caller.
 *
 * OCR keeps whole text lines (RIL_TEXTLINE) whose confidence reaches the cut, like the paper
 * (PaddleOCR lines with confidence >= 0.7). Images are OCRed in grayscale with transparency
 * composited over white, and images whose smaller side is under OCR_MIN_SIDE pixels are
 * upscaled (Tesseract reads glyphs about 20-40 px high best).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <leptonica/allheaders.h>
#include <tesseract/capi.h>

#include "enrich.h"
#include "ps/hash.h"

#define OCR_GLYPH_PX  20, 28, 40, 14, 56 /* the glyph height Tesseract reads best here */
#define OCR_MIN_GLYPH 6                  /* ink components lower than this are specks */
#define OCR_MAX_SCALE 4.0f
#define OCR_MAX_LINES 64 /* lines kept of one image */

int builder_read_file(const char *path, size_t max_bytes, unsigned char **data, size_t *len,
                      ps_err *err)
{
    *data = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return ps_err_set(err, PS_EIO, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return ps_err_set(err, PS_EIO, "not a regular file");
    }
    if ((uint64_t)st.st_size > max_bytes) {
        fclose(f);
        return ps_err_set(err, PS_ETOOBIG, "file of %lld bytes exceeds --max-bytes %zu",
                          (long long)st.st_size, max_bytes);
    }
    size_t n = (size_t)st.st_size;
    unsigned char *p = malloc(n ? n : 1);
    if (!p) {
        fclose(f);
        return ps_err_set(err, PS_ENOMEM, "out of memory reading %zu bytes", n);
    }
    size_t got = fread(p, 1, n, f);
    int bad = ferror(f) || got != n;
    fclose(f);
    if (bad) {
        free(p);
        return ps_err_set(err, PS_EIO, "read failed");
    }
    *data = p;
    *len = n;
    return 0;
}

static const char *format_mime(l_int32 fmt)
{
    switch (fmt) {
    case IFF_PNG:
        return "image/png";
    case IFF_JFIF_JPEG:
        return "image/jpeg";
    case IFF_GIF:
        return "image/gif";
    case IFF_WEBP:
        return "image/webp";
    default:
        return NULL;
    }
}

struct Pix *builder_image_decode(const unsigned char *data, size_t len, uint64_t max_pixels,
                                 const char **mime, ps_err *err)
{
    setMsgSeverity(L_SEVERITY_NONE);
    *mime = NULL;
    l_int32 fmt = IFF_UNKNOWN;
    if (len < 12 || findFileFormatBuffer(data, &fmt) != 0 || !format_mime(fmt)) {
        ps_err_set(err, PS_EPARSE, "not a PNG, JPEG, GIF or WebP image");
        return NULL;
    }
    l_int32 w = 0, h = 0, bps = 0, spp = 0, cmap = 0;
    if (pixReadHeaderMem(data, len, &fmt, &w, &h, &bps, &spp, &cmap) != 0 || w <= 0 || h <= 0) {
        ps_err_set(err, PS_EPARSE, "%s header is corrupt or truncated", format_mime(fmt));
        return NULL;
    }
    if ((uint64_t)w * (uint64_t)h > max_pixels) {
        ps_err_set(err, PS_ETOOBIG, "%dx%d image exceeds --max-pixels %llu", w, h,
                   (unsigned long long)max_pixels);
        return NULL;
    }
    PIX *pix = pixReadMem(data, len);
    if (!pix) {
        ps_err_set(err, PS_EPARSE, "%s data is corrupt or truncated", format_mime(fmt));
        return NULL;
    }
    if ((uint64_t)pixGetWidth(pix) * (uint64_t)pixGetHeight(pix) > max_pixels) {
        ps_err_set(err, PS_ETOOBIG, "%dx%d image exceeds --max-pixels %llu", pixGetWidth(pix),
                   pixGetHeight(pix), (unsigned long long)max_pixels);
        pixDestroy(&pix);
        return NULL;
    }
    *mime = format_mime(fmt);
    return pix;
}

/**************************************************************************
 * OCR
 */

#define OCR_MAX_ENGINES 8 /* the language list and each of its languages alone */

struct builder_ocr {
    TessBaseAPI *api[OCR_MAX_ENGINES]; /* each language alone, then the whole list */
    int n;
    double min_conf;
};

static TessBaseAPI *engine_new(const char *lang)
{
    TessBaseAPI *api = TessBaseAPICreate();
    if (!api) return NULL;
    /* Tesseract prints notes ("Estimating resolution ...") through tprintf: into debug_file */
    TessBaseAPISetVariable(api, "debug_file", "/dev/null");
    if (TessBaseAPIInit3(api, NULL, lang) != 0) {
        TessBaseAPIDelete(api);
        return NULL;
    }
    TessBaseAPISetVariable(api, "debug_file", "/dev/null");
    /* a sticker's text is a block or two of short lines: one block reads them best */
    TessBaseAPISetPageSegMode(api, PSM_SINGLE_BLOCK);
    return api;
}

builder_ocr_t *builder_ocr_new(const char *lang, double min_conf, ps_err *err)
{
    builder_ocr_t *o = calloc(1, sizeof *o);
    if (!o) {
        ps_err_set(err, PS_ENOMEM, "out of memory for an OCR engine");
        return NULL;
    }
    o->min_conf = min_conf;
    if (strchr(lang, '+')) {
        char one[64];
        for (const char *p = lang; *p && o->n < OCR_MAX_ENGINES;) {
            size_t k = strcspn(p, "+");
            if (k == 0 || k >= sizeof one) goto fail;
            memcpy(one, p, k);
            one[k] = '\0';
            if (!(o->api[o->n++] = engine_new(one))) goto fail;
            p += k + (p[k] == '+');
        }
    }
    if (o->n >= OCR_MAX_ENGINES || !(o->api[o->n++] = engine_new(lang))) goto fail;
    return o;
fail:
    ps_err_set(err, PS_EINVAL,
               "--ocr-lang %s: Tesseract cannot load it (is tesseract-ocr-<lang> installed?)",
               lang);
    builder_ocr_free(o);
    return NULL;
}

void builder_ocr_free(builder_ocr_t *o)
{
    if (!o) return;
    for (int i = 0; i < o->n; i++)
        if (o->api[i]) {
            TessBaseAPIEnd(o->api[i]);
            TessBaseAPIDelete(o->api[i]);
        }
    free(o);
}

/* The typical glyph height of the dark-on-light 8-bit image g: the 90th percentile of the
 * heights of its ink components (Otsu over the whole image), ignoring specks and components
 * about as high as the image; 0 when there is no ink. OUT ink: the bounding box of those
 * components (x0, y0, x1, y1). */
static int glyph_height(PIX *g, int ink[4])
{
    PIX *th = NULL, *bin = NULL;
    int h = 0;
    l_int32 W = pixGetWidth(g), H = pixGetHeight(g);
    ink[0] = W, ink[1] = H, ink[2] = ink[3] = 0;
    if (pixOtsuAdaptiveThreshold(g, W, H, 0, 0, 0.1f, &th, &bin) || !bin) goto out;
    BOXA *boxes = pixConnCompBB(bin, 8);
    l_int32 n = boxes ? boxaGetCount(boxes) : 0, k = 0;
    int *hs = malloc(((size_t)n + 1) * sizeof *hs);
    for (l_int32 i = 0; hs && i < n; i++) {
        l_int32 bx, by, bw, bh;
        boxaGetBoxGeometry(boxes, i, &bx, &by, &bw, &bh);
        if (bh < OCR_MIN_GLYPH || bh >= H * 9 / 10 || bw >= W * 9 / 10) continue;
        hs[k++] = bh;
        if (bx < ink[0]) ink[0] = bx;
        if (by < ink[1]) ink[1] = by;
        if (bx + bw > ink[2]) ink[2] = bx + bw;
        if (by + bh > ink[3]) ink[3] = by + bh;
    }
    if (hs && k) {
        /* 90th percentile by partial selection sort: k is small for a sticker */
        int want = k - 1 - k / 10;
        for (int i = 0; i <= want; i++)
            for (int j = i + 1; j < k; j++)
                if (hs[j] < hs[i]) {
                    int t = hs[i];
                    hs[i] = hs[j];
                    hs[j] = t;
                }
        h = hs[want];
    }
    free(hs);
    boxaDestroy(&boxes);
out:
    pixDestroy(&th);
    pixDestroy(&bin);
    return h;
}

/* The image Tesseract is given, before scaling: 8-bit gray, transparency composited over
 * white, light text on a dark background inverted, the background flattened (gradients,
 * uneven light) and cropped to the ink with a margin of a glyph. OUT *gh: the glyph height
 * (0: no ink found; the image is then returned uncropped). */
static PIX *ocr_base(PIX *pix, int *gh)
{
    PIX *a = NULL, *g, *nrm, *c;
    int ink[4];
    *gh = 0;
    if (pixGetDepth(pix) == 32 && pixGetSpp(pix) == 4) a = pixAlphaBlendUniform(pix, 0xffffff00);
    g = pixConvertTo8(a ? a : pix, 0);
    pixDestroy(&a);
    if (!g) return NULL;
    l_float32 avg = 255;
    pixAverageInRect(g, NULL, NULL, 0, 255, 2, &avg);
    if (avg < 128) pixInvert(g, g);
    if ((nrm = pixBackgroundNormSimple(g, NULL, NULL)) != NULL) {
        pixDestroy(&g);
        g = nrm;
    }
    if ((*gh = glyph_height(g, ink)) <= 0) return g;
    int m = *gh, W = pixGetWidth(g), H = pixGetHeight(g);
    int x0 = ink[0] - m > 0 ? ink[0] - m : 0, y0 = ink[1] - m > 0 ? ink[1] - m : 0;
    int x1 = ink[2] + m < W ? ink[2] + m : W, y1 = ink[3] + m < H ? ink[3] + m : H;
    BOX *box = boxCreate(x0, y0, x1 - x0, y1 - y0);
    c = box ? pixClipRectangle(g, box, NULL) : NULL;
    boxDestroy(&box);
    if (!c) return g;
    pixDestroy(&g);
    return c;
}

/* base scaled so glyphs are about glyph_px high (Tesseract's line recognizer misreads, or its
 * layout analysis drops, text much larger or smaller than it was trained on). */
static PIX *ocr_scaled(PIX *base, int gh, int glyph_px)
{
    if (gh <= 0) return pixClone(base);
    float f = (float)glyph_px / (float)gh;
    if (f > OCR_MAX_SCALE) f = OCR_MAX_SCALE;
    if (f < 1.0f / OCR_MAX_SCALE) f = 1.0f / OCR_MAX_SCALE;
    if (f > 0.95f && f < 1.05f) return pixClone(base);
    return f < 1 ? pixScaleAreaMap(base, f, f) : pixScaleGrayLI(base, f, f);
}

/* A code point of a script written without spaces (Han, kana, CJK punctuation, full-width
 * forms, Hangul syllables excluded: Korean is written with spaces). */
static int is_cjk(uint32_t c)
{
    return (c >= 0x3000 && c <= 0x30FF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0xF900 && c <= 0xFAFF) ||
           (c >= 0xFF00 && c <= 0xFFEF) || (c >= 0x20000 && c <= 0x2FFFF);
}

/* Decode the UTF-8 sequence at s (valid, as Tesseract writes); OUT *len its bytes. */
static uint32_t utf8_at(const unsigned char *s, size_t *len)
{
    if (s[0] < 0x80) return *len = 1, s[0];
    if ((s[0] & 0xE0) == 0xC0 && s[1]) return *len = 2, ((s[0] & 0x1Fu) << 6) | (s[1] & 0x3Fu);
    if ((s[0] & 0xF0) == 0xE0 && s[1] && s[2])
        return *len = 3, ((s[0] & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
    if ((s[0] & 0xF8) == 0xF0 && s[1] && s[2] && s[3])
        return *len = 4, ((s[0] & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) |
                             (s[3] & 0x3Fu);
    return *len = 1, 0xFFFD;
}

void builder_cjk_despace(char *str)
{
    unsigned char *s = (unsigned char *)str, *out = s;
    int prev_cjk = 0;
    size_t i = 0;
    while (s[i]) {
        if (s[i] == ' ' && prev_cjk) {
            size_t j = i;
            while (s[j] == ' ') j++;
            size_t n;
            if (s[j] && is_cjk(utf8_at(s + j, &n))) {
                i = j; /* drop the run */
                continue;
            }
        }
        size_t n;
        uint32_t c = utf8_at(s + i, &n);
        prev_cjk = is_cjk(c);
        memmove(out, s + i, n);
        out += n;
        i += n;
    }
    *out = '\0';
}

/* Trim spaces and control characters at both ends of s (in place); returns its length. */
static size_t trim(char *s)
{
    size_t b = 0, n = strlen(s);
    while (n > 0 && (unsigned char)s[n - 1] <= ' ') n--;
    while (b < n && (unsigned char)s[b] <= ' ') b++;
    memmove(s, s + b, n - b);
    s[n - b] = '\0';
    return n - b;
}

/* The text lines of one reading: text and confidence (0..100), '\n'-free, trimmed. */
typedef struct reading {
    char *text[OCR_MAX_LINES];
    float conf[OCR_MAX_LINES];
    int n;
    double mean; /* mean confidence, -1 without lines */
    int cjk;     /* more than half of its characters are CJK */
} reading;

static void reading_clear(reading *r)
{
    for (int i = 0; i < r->n; i++) free(r->text[i]);
    r->n = 0;
    r->mean = -1;
}

static int read_with(TessBaseAPI *api, PIX *g, reading *r, ps_err *err)
{
    int rc = 0;
    double sum = 0;
    r->n = 0;
    r->mean = -1;
    TessBaseAPISetImage2(api, g);
    TessBaseAPISetSourceResolution(api, 300);
    if (TessBaseAPIRecognize(api, NULL) != 0) {
        TessBaseAPIClear(api);
        return ps_err_set(err, PS_EINTERNAL, "Tesseract could not recognize the image");
    }
    TessResultIterator *it = TessBaseAPIGetIterator(api);
    if (it) {
        do {
            char *line = TessResultIteratorGetUTF8Text(it, RIL_TEXTLINE);
            if (!line) continue;
            float conf = TessResultIteratorConfidence(it, RIL_TEXTLINE);
            builder_cjk_despace(line);
            size_t k = trim(line);
            for (size_t i = 0; i < k; i++)
                if (line[i] == '\n' || line[i] == '\r') line[i] = ' ';
            if (k && r->n < OCR_MAX_LINES) {
                if (!(r->text[r->n] = strdup(line))) {
                    rc = ps_err_set(err, PS_ENOMEM, "out of memory for OCR text");
                    TessDeleteText(line);
                    break;
                }
                r->conf[r->n++] = conf;
                sum += conf;
            }
            TessDeleteText(line);
        } while (TessResultIteratorNext(it, RIL_TEXTLINE));
        TessResultIteratorDelete(it);
    }
    TessBaseAPIClear(api);
    if (r->n) r->mean = sum / r->n;
    size_t all = 0, cjk = 0;
    for (int i = 0; i < r->n; i++)
        for (const unsigned char *p = (const unsigned char *)r->text[i]; *p;) {
            size_t k;
            uint32_t c = utf8_at(p, &k);
            p += k;
            all += c != ' ';
            cjk += is_cjk(c);
        }
    r->cjk = 2 * cjk > all;
    return rc;
}

/* Tesseract's multi-language mode lets one language's model claim lines of another (short
 * Chinese lines come out of chi_sim+eng as confident-looking Latin letters), and text much
 * larger or smaller than Tesseract was trained on is misread or dropped. So an image is read
 * with each language alone and then with the whole list, at several glyph heights in turn,
 * until a reading has every line above the cut; the reading with the highest mean line
 * confidence is kept. Script vote: when the first language alone reads mostly CJK
 * characters, readings without them (another model's guesses) are not taken. */
int builder_ocr_run(builder_ocr_t *o, struct Pix *pix, char **text, ps_err *err)
{
    static const int glyph_px[] = {OCR_GLYPH_PX};
    *text = NULL;
    reading best = {.n = 0, .mean = -1}, cur = {.n = 0, .mean = -1};
    int rc = 0, weak = 1, gh, vote = -1;
    PIX *base = ocr_base(pix, &gh);
    if (!base) return ps_err_set(err, PS_ENOMEM, "preparing the image for OCR failed");
    for (size_t s = 0; !rc && weak && s < sizeof glyph_px / sizeof glyph_px[0]; s++) {
        PIX *g = ocr_scaled(base, gh, glyph_px[s]);
        if (!g) {
            rc = ps_err_set(err, PS_ENOMEM, "preparing the image for OCR failed");
            break;
        }
        for (int e = 0; !rc && weak && e < o->n; e++) {
            rc = read_with(o->api[e], g, &cur, err);
            if (vote < 0) vote = o->n > 1 && cur.cjk;
            if (!rc && (!vote || cur.cjk) && cur.mean > best.mean) {
                reading t = best;
                best = cur;
                cur = t;
                weak = best.n == 0;
                for (int i = 0; i < best.n; i++)
                    if (best.conf[i] < o->min_conf * 100.0) weak = 1;
            }
            reading_clear(&cur);
        }
        pixDestroy(&g);
    }
    pixDestroy(&base);
    size_t n = 0;
    for (int i = 0; i < best.n; i++) n += strlen(best.text[i]) + 1;
    char *buf = rc ? NULL : malloc(n + 1);
    if (!rc && !buf) rc = ps_err_set(err, PS_ENOMEM, "out of memory for OCR text");
    if (!rc) {
        n = 0;
        for (int i = 0; i < best.n; i++) {
            if (best.conf[i] < o->min_conf * 100.0) continue;
            size_t k = strlen(best.text[i]);
            if (n) buf[n++] = '\n';
            memcpy(buf + n, best.text[i], k);
            n += k;
        }
        buf[n] = '\0';
        *text = buf;
    }
    reading_clear(&best);
    reading_clear(&cur);
    return rc;
}
/**************************************************************************
 * Ids
 */

uint64_t builder_enrich_id(const char *relpath)
{
    const char *base = strrchr(relpath, '/');
    base = base ? base + 1 : relpath;
    const char *dot = strrchr(base, '.');
    size_t n = dot ? (size_t)(dot - base) : strlen(base);
    uint64_t v = 0;
    int ok = n > 0 && n <= 20 && base[0] != '0';
    for (size_t i = 0; ok && i < n; i++) {
        unsigned d = (unsigned)(base[i] - '0');
        if (d > 9 || v > (UINT64_MAX - d) / 10)
            ok = 0;
        else
            v = v * 10 + d;
    }
    if (ok) return v;
    uint64_t h = ps_hash_bytes(relpath, strlen(relpath)) & INT64_MAX;
    return h ? h : 1;
}
