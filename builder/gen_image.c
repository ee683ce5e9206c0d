/*
 * gen_image.c — the demo's placeholder sticker pictures (`builder generate --images`): a small
 * square PNG per sticker, filled with its series' colour, a round character of a darker shade of
 * it, and the sticker's OCR phrases drawn under it with FreeType in a CJK font (wqy-zenhei).
 *
 * Everything is a pure function of the inputs: the colour comes from the series number, the text
 * from the corpus, and Leptonica (libpng) encodes the PNG (8-bit RGB), so the bytes are the
 * same on every run with the same libraries. Glyph bitmaps are cached per (code point, pixel
 * size): the corpus says the same few thousand characters over and over.
 */
#include <ft2build.h>
#include FT_FREETYPE_H
#include <stdlib.h>
#include <string.h>
#include <leptonica/allheaders.h>

#include "gen.h"
#include "ps/map.h"

#define IMG_SIDE     BUILDER_IMAGE_SIDE
#define IMG_MARGIN   5
#define IMG_MAXLINES 2

static const int text_px[] = {22, 18, 15, 12, 10}; /* sizes tried, largest that fits first */
#define NSIZES ((int)(sizeof text_px / sizeof text_px[0]))

typedef struct glyph {
    int left, top, w, h, pitch, adv;
    uint8_t *bm; /* h × pitch coverage bytes */
} glyph;

struct builder_imgr {
    FT_Library lib;
    FT_Face face;
    ps_map cache; /* (size index + 1 << 32 | code point) -> index into glyphs, UINT64_MAX: none */
    glyph *glyphs;
    size_t nglyphs, cap;
    uint8_t rgb[IMG_SIDE * IMG_SIDE * 3];
};

builder_imgr *builder_imgr_new(const char *font, ps_err *err)
{
    builder_imgr *r = calloc(1, sizeof *r);
    if (!r) {
        ps_err_set(err, PS_ENOMEM, "out of memory for the image renderer");
        return NULL;
    }
    ps_map_init(&r->cache, PS_MAP_U64);
    if (FT_Init_FreeType(&r->lib)) {
        ps_err_set(err, PS_EINTERNAL, "FreeType does not initialize");
        free(r);
        return NULL;
    }
    if (FT_New_Face(r->lib, font, 0, &r->face)) {
        ps_err_set(err, PS_EIO, "cannot load the font %s (fonts-wqy-zenhei; --image-font)", font);
        builder_imgr_free(r);
        return NULL;
    }
    return r;
}

void builder_imgr_free(builder_imgr *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->nglyphs; i++) free(r->glyphs[i].bm);
    free(r->glyphs);
    ps_map_free(&r->cache);
    if (r->face) FT_Done_Face(r->face);
    FT_Done_FreeType(r->lib);
    free(r);
}

/* The glyph of cp at text_px[size] (rendered once), or NULL when the font has none. */
static const glyph *get_glyph(builder_imgr *r, uint32_t cp, int size)
{
    uint64_t key = (uint64_t)(size + 1) << 32 | cp, *v = ps_map_u64_get(&r->cache, key);
    if (v) return *v == UINT64_MAX ? NULL : &r->glyphs[*v];
    if (ps_map_u64_add(&r->cache, key, &v) < 0) return NULL;
    *v = UINT64_MAX;
    if (FT_Set_Pixel_Sizes(r->face, 0, (FT_UInt)text_px[size]) ||
        FT_Load_Char(r->face, cp, FT_LOAD_RENDER))
        return NULL;
    FT_GlyphSlot g = r->face->glyph;
    if (r->nglyphs == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 256;
        glyph *ng = realloc(r->glyphs, cap * sizeof *ng);
        if (!ng) return NULL;
        r->glyphs = ng;
        r->cap = cap;
    }
    glyph *gl = &r->glyphs[r->nglyphs];
    *gl = (glyph){.left = g->bitmap_left,
                  .top = g->bitmap_top,
                  .w = (int)g->bitmap.width,
                  .h = (int)g->bitmap.rows,
                  .pitch = (int)g->bitmap.width,
                  .adv = (int)(g->advance.x >> 6)};
    size_t bytes = (size_t)gl->w * (size_t)gl->h;
    if (!(gl->bm = malloc(bytes ? bytes : 1))) return NULL;
    for (int y = 0; y < gl->h; y++)
        memcpy(gl->bm + (size_t)y * gl->w, g->bitmap.buffer + (size_t)y * g->bitmap.pitch,
               (size_t)gl->w);
    *v = r->nglyphs++;
    return gl;
}

/* Next code point of the UTF-8 text (valid: it comes from the corpus) at *p. */
static uint32_t next_cp(const unsigned char **p)
{
    const unsigned char *s = *p;
    uint32_t c;
    int n;
    if (s[0] < 0x80)
        c = s[0], n = 1;
    else if ((s[0] & 0xE0) == 0xC0)
        c = s[0] & 0x1Fu, n = 2;
    else if ((s[0] & 0xF0) == 0xE0)
        c = s[0] & 0x0Fu, n = 3;
    else
        c = s[0] & 0x07u, n = 4;
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *p = s + i;
            return 0xFFFD;
        }
        c = c << 6 | (s[i] & 0x3Fu);
    }
    *p = s + n;
    return c;
}

static int line_width(builder_imgr *r, const char *s, size_t n, int size)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    int w = 0;
    while (p < end) {
        const glyph *g = get_glyph(r, next_cp(&p), size);
        if (g) w += g->adv;
    }
    return w;
}

static void draw_line(builder_imgr *r, const char *s, size_t n, int size, int x, int base,
                      const uint8_t ink[3])
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        const glyph *g = get_glyph(r, next_cp(&p), size);
        if (!g) continue;
        for (int y = 0; y < g->h; y++)
            for (int q = 0; q < g->w; q++) {
                int a = g->bm[(size_t)y * g->w + q], px = x + g->left + q, py = base - g->top + y;
                if (!a || px < 0 || py < 0 || px >= IMG_SIDE || py >= IMG_SIDE) continue;
                uint8_t *d = r->rgb + ((size_t)py * IMG_SIDE + px) * 3;
                for (int k = 0; k < 3; k++) d[k] = (uint8_t)((ink[k] * a + d[k] * (255 - a)) / 255);
            }
        x += g->adv;
    }
}

/* A pastel colour for the series and a dark and a mid shade of the same hue. */
static void series_colours(uint32_t series, uint8_t bg[3], uint8_t mid[3], uint8_t dark[3])
{
    uint64_t h = (uint64_t)series * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
    double hue = (double)(h % 3600) / 600.0; /* 0..6 */
    int sector = (int)hue;
    double f = hue - sector, c[3];
    double q = 1 - f, t = f;
    switch (sector) {
    case 0:
        c[0] = 1, c[1] = t, c[2] = 0;
        break;
    case 1:
        c[0] = q, c[1] = 1, c[2] = 0;
        break;
    case 2:
        c[0] = 0, c[1] = 1, c[2] = t;
        break;
    case 3:
        c[0] = 0, c[1] = q, c[2] = 1;
        break;
    case 4:
        c[0] = t, c[1] = 0, c[2] = 1;
        break;
    default:
        c[0] = 1, c[1] = 0, c[2] = q;
        break;
    }
    for (int k = 0; k < 3; k++) {
        bg[k] = (uint8_t)(255 - 70 * (1 - c[k])); /* light */
        mid[k] = (uint8_t)(90 + 140 * c[k]);      /* the character */
        dark[k] = (uint8_t)(20 + 60 * c[k]);      /* ink */
    }
}

static void disc(builder_imgr *r, int cx, int cy, int rad, const uint8_t col[3])
{
    for (int y = cy - rad; y <= cy + rad; y++)
        for (int x = cx - rad; x <= cx + rad; x++) {
            if (x < 0 || y < 0 || x >= IMG_SIDE || y >= IMG_SIDE) continue;
            if ((x - cx) * (x - cx) + (y - cy) * (y - cy) > rad * rad) continue;
            memcpy(r->rgb + ((size_t)y * IMG_SIDE + x) * 3, col, 3);
        }
}

int builder_imgr_render(builder_imgr *r, uint32_t series, const char *text, size_t len, ps_buf *png,
                        ps_err *err)
{
    uint8_t bg[3], mid[3], dark[3], white[3] = {255, 255, 255};
    series_colours(series, bg, mid, dark);
    for (size_t i = 0; i < (size_t)IMG_SIDE * IMG_SIDE; i++) memcpy(r->rgb + 3 * i, bg, 3);

    /* up to IMG_MAXLINES lines of text ('\n' separates the OCR phrases) */
    const char *line[IMG_MAXLINES];
    size_t ll[IMG_MAXLINES];
    int nl = 0;
    for (size_t i = 0; i < len && nl < IMG_MAXLINES;) {
        size_t j = i;
        while (j < len && text[j] != '\n') j++;
        if (j > i) line[nl] = text + i, ll[nl++] = j - i;
        i = j + 1;
    }
    int size = NSIZES - 1;
    for (int s = 0; s < NSIZES; s++) {
        int fits = nl * (text_px[s] + 3) <= IMG_SIDE / 2;
        for (int k = 0; k < nl && fits; k++)
            fits = line_width(r, line[k], ll[k], s) <= IMG_SIDE - 2 * IMG_MARGIN;
        if (fits) {
            size = s;
            break;
        }
    }
    int px = text_px[size], text_h = nl * (px + 3);

    /* the character: a round face above the text */
    int face_r = (IMG_SIDE - text_h - 2 * IMG_MARGIN) / 2 - 2;
    if (face_r > IMG_SIDE / 3) face_r = IMG_SIDE / 3;
    int cx = IMG_SIDE / 2, cy = IMG_MARGIN + 2 + face_r;
    disc(r, cx, cy, face_r, mid);
    disc(r, cx - face_r / 3, cy - face_r / 5, face_r / 6 + 1, white);
    disc(r, cx + face_r / 3, cy - face_r / 5, face_r / 6 + 1, white);
    disc(r, cx - face_r / 3, cy - face_r / 5, face_r / 12 + 1, dark);
    disc(r, cx + face_r / 3, cy - face_r / 5, face_r / 12 + 1, dark);

    int base = IMG_SIDE - IMG_MARGIN - text_h + px;
    for (int k = 0; k < nl; k++, base += px + 3) {
        int w = line_width(r, line[k], ll[k], size);
        int x = (IMG_SIDE - w) / 2;
        draw_line(r, line[k], ll[k], size, x < IMG_MARGIN ? IMG_MARGIN : x, base, dark);
    }

    /* encode: Leptonica's PNG writer (libpng) */
    PIX *pix = pixCreate(IMG_SIDE, IMG_SIDE, 32);
    if (!pix) return ps_err_set(err, PS_ENOMEM, "out of memory encoding an image");
    l_uint32 *data = pixGetData(pix);
    int wpl = pixGetWpl(pix);
    for (int y = 0; y < IMG_SIDE; y++)
        for (int x = 0; x < IMG_SIDE; x++) {
            const uint8_t *c = r->rgb + ((size_t)y * IMG_SIDE + x) * 3;
            composeRGBPixel(c[0], c[1], c[2], &data[(size_t)y * wpl + x]);
        }
    l_uint8 *out = NULL;
    size_t n = 0;
    int bad = pixWriteMem(&out, &n, pix, IFF_PNG);
    pixDestroy(&pix);
    if (bad || !out) return ps_err_set(err, PS_EINTERNAL, "cannot encode an image as PNG");
    ps_buf_reset(png);
    ps_buf_add(png, out, n);
    lept_free(out);
    return png->rc ? ps_err_set(err, PS_ENOMEM, "out of memory encoding an image") : 0;
}
