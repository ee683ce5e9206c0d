/*
 * corpus.c — the text corpus inputs of DESIGN §3: sticker JSON Lines (parse one line, stream a
 * file, write a line) and the TSV click log (user \t query \t sticker_id).
 *
 * Both file formats go through one buffered line reader that caps line length and, after an
 * over-long line, skips the rest of it so the caller can carry on with the next line. JSON is
 * decoded by jansson. Sticker ids are unsigned 64-bit and real ones can exceed INT64_MAX, which
 * jansson's integers cannot hold: lines are decoded with JSON_DECODE_INT_AS_REAL (so a big
 * number anywhere never fails the decode) and the id's digits are then read exactly from the
 * raw text of the line by a small scanner of the top-level object (json_members). The same
 * scanner names the field that holds invalid UTF-8 when jansson rejects a line for that.
 *
 * npy.c holds the binary embedding matrix format.
 */
#include "ps/corpus.h"
#include "ps/alloc.h"
#include "ps/buf.h"
#include "ps/map.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define OCR_MIN_CONFIDENCE 0.7        /* DESIGN §1: OCR lines below this are noise */
#define CLICKLOG_MAX_LINE  (1u << 16) /* 64 KiB */
#define LINE_MAX_CAP       (1u << 28) /* largest max_line a reader accepts */
#define READ_CHUNK         (1u << 18) /* at least this much is read at a time */

/**************************************************************************
 * Small helpers
 */

/* Offset of the first byte of s[0..n) that is not part of well-formed UTF-8 (shortest form,
 * no surrogates, at most U+10FFFF), or n if all of it is valid. */
static size_t utf8_invalid_at(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF)
            need = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else
            return i;
        if (n - i <= need) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80) return i;
        i += need + 1;
    }
    return n;
}

/* Parse s[0..n) as a plain decimal u64 (digits only, no sign, no spaces).
 * Returns 0, or -1 if it is not digits, -2 if it exceeds 2^64-1. */
static int parse_u64(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    if (n == 0) return -1;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9') return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return -2;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* Replace err's message with "<path>:<line>: <message>" (the full path, unlike ps_err_prefix). */
static void err_at_line(ps_err *err, const char *path, size_t line)
{
    char old[sizeof err->msg];
    if (!err) return;
    memcpy(old, err->msg, sizeof old);
    int k = snprintf(err->msg, sizeof err->msg, "%s:%zu: ", path, line);
    if (k < 0 || (size_t)k >= sizeof err->msg - 1) return; /* the path alone fills it */
    size_t room = sizeof err->msg - 1 - (size_t)k, n = strnlen(old, sizeof old - 1);
    if (n > room) n = room;
    memcpy(err->msg + k, old, n);
    err->msg[k + n] = '\0';
}

/* Append one line of a multi-line field: '\n'-separated, empty lines dropped. */
static void sb_line(ps_buf *b, const char *s, size_t n)
{
    if (n == 0) return;
    if (b->n) ps_buf_byte(b, '\n');
    ps_buf_add(b, s, n);
}

/**************************************************************************
 * Line reader
 *
 * buf[beg, end) holds bytes read but not yet returned. A line is returned in place (it stays
 * valid until the next call), without its '\n' and one trailing '\r'. cap >= max_line + 3, so
 * a line that still has no '\n' after max_line + 2 buffered bytes is certainly too long; it is
 * reported at once and the reader then discards bytes up to the next '\n'.
 */
typedef struct linereader {
    FILE *f;
    char *path;
    char *buf;
    size_t cap, beg, end;
    size_t max_line;
    size_t lineno;
    int eof;
    int discard; /* skipping the tail of an over-long line */
} linereader;

static int lr_open(linereader *lr, const char *path, size_t max_line, ps_err *err)
{
    memset(lr, 0, sizeof *lr);
    if (!path) return ps_err_set(err, PS_EINVAL, "path is NULL");
    if (max_line > LINE_MAX_CAP)
        return ps_err_set(err, PS_EINVAL, "max_line %zu exceeds %u bytes", max_line, LINE_MAX_CAP);
    lr->max_line = max_line;
    lr->cap = max_line + 3 + READ_CHUNK;
    lr->path = ps_strdup(path);
    lr->buf = ps_malloc(lr->cap);
    if (!lr->path || !lr->buf) {
        ps_free(lr->path);
        ps_free(lr->buf);
        return ps_err_set(err, PS_ENOMEM, "%s: out of memory for the read buffer", path);
    }
    lr->f = fopen(path, "rb");
    if (!lr->f) {
        int e = errno;
        ps_free(lr->path);
        ps_free(lr->buf);
        return ps_err_set(err, PS_EIO, "%s: cannot open: %s", path, strerror(e));
    }
    return 0;
}

static void lr_close(linereader *lr)
{
    if (lr->f) fclose(lr->f);
    ps_free(lr->path);
    ps_free(lr->buf);
    memset(lr, 0, sizeof *lr);
}

/* Move the unread bytes to the front and read more. Sets eof at end of file. */
static int lr_fill(linereader *lr, ps_err *err)
{
    size_t avail = lr->end - lr->beg;
    if (lr->beg) memmove(lr->buf, lr->buf + lr->beg, avail);
    lr->beg = 0;
    lr->end = avail;
    size_t got = fread(lr->buf + lr->end, 1, lr->cap - lr->end, lr->f);
    lr->end += got;
    if (got == 0) {
        if (ferror(lr->f))
            return ps_err_set(err, PS_EIO, "%s:%zu: read failed: %s", lr->path, lr->lineno + 1,
                              strerror(errno));
        lr->eof = 1;
    }
    return 0;
}

/* Next line. Returns 1 with OUT *line, *len (mutable, valid until the next call), 0 at end of
 * file, PS_ETOOBIG for an over-long line (the next call continues after it) or PS_EIO. */
static int lr_next(linereader *lr, char **line, size_t *len, ps_err *err)
{
    int rc;
    for (;;) {
        char *p = lr->buf + lr->beg;
        size_t avail = lr->end - lr->beg;
        char *nl = avail ? memchr(p, '\n', avail) : NULL;
        if (lr->discard) {
            if (nl) {
                lr->beg += (size_t)(nl - p) + 1;
                lr->discard = 0;
                continue;
            }
            lr->beg = lr->end = 0;
            if (lr->eof) return 0;
            if ((rc = lr_fill(lr, err))) return rc;
            continue;
        }
        if (nl || (lr->eof && avail)) {
            size_t n = nl ? (size_t)(nl - p) : avail;
            lr->beg += nl ? n + 1 : n;
            lr->lineno++;
            if (n && p[n - 1] == '\r') n--;
            if (n > lr->max_line)
                return ps_err_set(err, PS_ETOOBIG, "%s:%zu: line longer than %zu bytes", lr->path,
                                  lr->lineno, lr->max_line);
            *line = p;
            *len = n;
            return 1;
        }
        if (lr->eof) return 0;
        if (avail > lr->max_line + 1) {
            lr->lineno++;
            lr->discard = 1;
            lr->beg = lr->end = 0;
            return ps_err_set(err, PS_ETOOBIG, "%s:%zu: line longer than %zu bytes", lr->path,
                              lr->lineno, lr->max_line);
        }
        if ((rc = lr_fill(lr, err))) return rc;
    }
}

/**************************************************************************
 * Raw scan of a top-level JSON object
 *
 * Walks "{ key : value , ... }" over the raw bytes without decoding: strings are skipped
 * escape-aware, containers by bracket counting. It is only ever asked about text jansson has
 * already accepted (or rejected for encoding alone), but it checks every bound anyway.
 */

/* A key as written in the line: the bytes between its quotes, escapes not yet decoded. */
typedef struct rawspan {
    const char *p;
    size_t n;
} rawspan;

static size_t js_ws(const char *s, size_t n, size_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    return i;
}

/* s[*i] is '"'; on success *i is just past the closing quote. */
static int js_skip_string(const char *s, size_t n, size_t *i)
{
    size_t k = *i + 1;
    while (k < n) {
        if (s[k] == '\\')
            k += 2;
        else if (s[k] == '"') {
            *i = k + 1;
            return 0;
        } else
            k++;
    }
    return -1;
}

static int js_skip_value(const char *s, size_t n, size_t *i)
{
    size_t k = *i;
    if (k >= n) return -1;
    if (s[k] == '"') return js_skip_string(s, n, i);
    if (s[k] == '{' || s[k] == '[') {
        size_t depth = 0;
        while (k < n) {
            char c = s[k];
            if (c == '"') {
                if (js_skip_string(s, n, &k)) return -1;
                continue;
            }
            if (c == '{' || c == '[')
                depth++;
            else if ((c == '}' || c == ']') && --depth == 0) {
                *i = k + 1;
                return 0;
            }
            k++;
        }
        return -1;
    }
    while (k < n && !strchr(",}] \t\r\n", s[k])) k++;
    if (k == *i) return -1;
    *i = k;
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Does the raw key (escapes undecoded) decode to the ASCII string `want`? */
static int rawkey_is(rawspan k, const char *want)
{
    size_t i = 0, w = 0, wn = strlen(want);
    while (i < k.n) {
        int c = (unsigned char)k.p[i++];
        if (c == '\\') {
            if (i >= k.n) return 0;
            char e = k.p[i++];
            switch (e) {
            case 'b':
                c = '\b';
                break;
            case 'f':
                c = '\f';
                break;
            case 'n':
                c = '\n';
                break;
            case 'r':
                c = '\r';
                break;
            case 't':
                c = '\t';
                break;
            case 'u': {
                int v = 0;
                if (k.n - i < 4) return 0;
                for (int j = 0; j < 4; j++) {
                    int h = hexval(k.p[i + j]);
                    if (h < 0) return 0;
                    v = v * 16 + h;
                }
                i += 4;
                if (v >= 0x80) return 0; /* `want` is ASCII */
                c = v;
                break;
            }
            default:
                c = (unsigned char)e;
                break; /* \" \\ \/ */
            }
        }
        if (w >= wn || c != (unsigned char)want[w++]) return 0;
    }
    return w == wn;
}

typedef int (*member_fn)(void *ctx, rawspan key, rawspan value);

/* Call fn for each member of the top-level object in s[0..n), in order, until it returns
 * non-zero. Returns fn's value, 0 after the last member, -1 if the text is not an object. */
static int json_members(const char *s, size_t n, member_fn fn, void *ctx)
{
    size_t i = js_ws(s, n, 0);
    if (i >= n || s[i] != '{') return -1;
    i = js_ws(s, n, i + 1);
    if (i < n && s[i] == '}') return 0;
    for (;;) {
        if (i >= n || s[i] != '"') return -1;
        size_t ks = i;
        if (js_skip_string(s, n, &i)) return -1;
        rawspan key = {s + ks + 1, i - ks - 2};
        i = js_ws(s, n, i);
        if (i >= n || s[i] != ':') return -1;
        i = js_ws(s, n, i + 1);
        size_t vs = i;
        if (js_skip_value(s, n, &i)) return -1;
        rawspan val = {s + vs, i - vs};
        int r = fn(ctx, key, val);
        if (r) return r;
        i = js_ws(s, n, i);
        if (i < n && s[i] == ',') {
            i = js_ws(s, n, i + 1);
            continue;
        }
        return i < n && s[i] == '}' ? 0 : -1;
    }
}

/* The raw value of the last top-level member named "id" (jansson keeps the last duplicate). */
static int find_id(void *ctx, rawspan key, rawspan value)
{
    if (rawkey_is(key, "id")) *(rawspan *)ctx = value;
    return 0;
}

/* The first member whose key or value holds invalid UTF-8. */
typedef struct badutf8 {
    rawspan key;
    int in_key;
} badutf8;

static int find_bad_utf8(void *ctx, rawspan key, rawspan value)
{
    badutf8 *b = ctx;
    if (utf8_invalid_at(key.p, key.n) < key.n)
        b->in_key = 1;
    else if (utf8_invalid_at(value.p, value.n) >= value.n)
        return 0;
    b->key = key;
    return 1;
}

/**************************************************************************
 * One sticker line
 */

static const char *json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "object";
    case JSON_ARRAY:
        return "array";
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "boolean";
    case JSON_NULL:
        return "null";
    }
    return "value";
}

/* The id: a JSON number whose raw text is a plain non-negative integer, or a string of
 * digits. Everything else is PS_EPARSE naming "id". */
static int parse_id(const char *line, size_t len, json_t *v, uint64_t *out, ps_err *err)
{
    const char *s;
    size_t n;
    rawspan raw = {NULL, 0};
    if (json_is_string(v)) {
        s = json_string_value(v);
        n = json_string_length(v);
    } else if (json_is_number(v)) {
        if (json_members(line, len, find_id, &raw) != 0 || !raw.p)
            return ps_err_set(err, PS_EINTERNAL, "field id: number not found in the line");
        s = raw.p;
        n = raw.n;
    } else
        return ps_err_set(err, PS_EPARSE, "field id: expected an unsigned 64-bit integer, got a %s",
                          json_type_name(v));
    int r = parse_u64(s, n, out);
    if (r == 0) return 0;
    int shown = n > 40 ? 40 : (int)n;
    if (r == -2) return ps_err_set(err, PS_EPARSE, "field id: %.*s exceeds 2^64-1", shown, s);
    if (n && s[0] == '-') return ps_err_set(err, PS_EPARSE, "field id: %.*s is negative", shown, s);
    if (n && json_is_number(v))
        return ps_err_set(err, PS_EPARSE, "field id: %.*s is not an integer", shown, s);
    return ps_err_set(err, PS_EPARSE, "field id: \"%.*s\" is not a string of digits", shown, s);
}

/* One string (of a field or an array element) into b; NUL bytes are rejected. */
static int add_text(ps_buf *b, const json_t *str, const char *key, ps_err *err)
{
    const char *s = json_string_value(str);
    size_t n = json_string_length(str);
    if (memchr(s, '\0', n)) return ps_err_set(err, PS_EPARSE, "field %s: contains a NUL", key);
    sb_line(b, s, n);
    return 0;
}

/* An OCR line given with an optional confidence: kept if the confidence is absent (NULL or
 * JSON null) or >= OCR_MIN_CONFIDENCE. Returns 0, 1 if text or confidence has the wrong type,
 * or a negative code with err set. */
static int ocr_scored(ps_buf *b, const json_t *text, const json_t *conf, const char *key,
                      ps_err *err)
{
    if (!json_is_string(text)) return 1;
    if (conf && !json_is_null(conf)) {
        if (!json_is_number(conf)) return 1;
        if (!(json_number_value(conf) >= OCR_MIN_CONFIDENCE)) return 0;
    }
    return add_text(b, text, key, err);
}

/* Is b a PaddleOCR box: [[x, y], ...] or [x1, y1, ...]? (Not a [text, conf] pair.) */
static int is_box(const json_t *b)
{
    const json_t *p0 = json_array_get(b, 0);
    return json_is_array(b) && (json_is_array(p0) || json_is_number(p0));
}

/* One element of an ocr array: "text", null, [text, conf], {"text", "confidence"|"conf"|
 * "score"}, PaddleOCR's [box, [text, conf]], or (depth 0 only) a page: an array of those,
 * as PaddleOCR returns per image. Returns 0, 1 for a wrong shape, or a negative code. */
static int ocr_line(ps_buf *b, const json_t *e, int depth, const char *key, ps_err *err)
{
    if (json_is_null(e)) return 0;
    if (json_is_string(e)) return add_text(b, e, key, err);
    if (json_is_object(e)) {
        const json_t *conf = json_object_get(e, "confidence");
        if (!conf) conf = json_object_get(e, "conf");
        if (!conf) conf = json_object_get(e, "score");
        return ocr_scored(b, json_object_get(e, "text"), conf, key, err);
    }
    if (!json_is_array(e)) return 1;
    size_t n = json_array_size(e);
    const json_t *a0 = json_array_get(e, 0), *a1 = json_array_get(e, 1);
    if (n == 2 && json_is_string(a0)) return ocr_scored(b, a0, a1, key, err);
    if (n == 2 && is_box(a0) && json_is_array(a1) && json_is_string(json_array_get(a1, 0))) {
        if (json_array_size(a1) != 2) return 1;
        return ocr_scored(b, json_array_get(a1, 0), json_array_get(a1, 1), key, err);
    }
    if (depth > 0) return 1;
    for (size_t i = 0; i < n; i++) {
        int r = ocr_line(b, json_array_get(e, i), depth + 1, key, err);
        if (r) return r;
    }
    return 0;
}

/* Field value → text: a string, an array of strings joined with '\n', or null; ocr also takes
 * the shapes of ocr_line. `key` is the name as written in the line, for messages. */
static int field_text(ps_buf *b, int f, const json_t *v, const char *key, ps_err *err)
{
    if (json_is_null(v)) return 0;
    if (json_is_string(v)) return add_text(b, v, key, err);
    if (!json_is_array(v))
        return ps_err_set(err, PS_EPARSE,
                          "field %s: expected a string, an array of strings or null, got a %s", key,
                          json_type_name(v));
    size_t i;
    const json_t *e;
    json_array_foreach(v, i, e)
    {
        if (f == PS_F_OCR) {
            int r = ocr_line(b, e, 0, key, err);
            if (r < 0) return r;
            if (r)
                return ps_err_set(err, PS_EPARSE,
                                  "field %s: element %zu is not a string, [text, confidence], "
                                  "{\"text\", \"confidence\"} or [box, [text, confidence]]",
                                  key, i);
        } else if (json_is_string(e)) {
            int r = add_text(b, e, key, err);
            if (r) return r;
        } else if (!json_is_null(e))
            return ps_err_set(err, PS_EPARSE, "field %s: element %zu is a %s, expected a string",
                              key, i, json_type_name(e));
    }
    return 0;
}

int ps_image_is_url(const char *s)
{
    return s && (strncmp(s, "http://", 7) == 0 || strncmp(s, "https://", 8) == 0);
}

int ps_image_check(const char *s, size_t n, ps_err *err)
{
    if (!s || n == 0) return ps_err_set(err, PS_EPARSE, "field image: empty");
    if (n > PS_IMAGE_MAX)
        return ps_err_set(err, PS_EPARSE, "field image: %zu bytes, at most %d", n, PS_IMAGE_MAX);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return ps_err_set(err, PS_EPARSE, "field image: control byte 0x%02x at byte %zu", c, i);
    }
    if (utf8_invalid_at(s, n) < n) return ps_err_set(err, PS_EPARSE, "field image: invalid UTF-8");
    if ((n > 7 && strncmp(s, "http://", 7) == 0) || (n > 8 && strncmp(s, "https://", 8) == 0))
        return 0;
    if (s[0] == '/')
        return ps_err_set(err, PS_EPARSE,
                          "field image: an absolute path; give an http(s) URL or a path relative "
                          "to the image root");
    if (memchr(s, '\\', n)) return ps_err_set(err, PS_EPARSE, "field image: contains a backslash");
    for (size_t i = 0; i <= n;) { /* every component between slashes */
        size_t j = i;
        while (j < n && s[j] != '/') j++;
        size_t len = j - i;
        if (len == 0 || (len == 1 && s[i] == '.') || (len == 2 && s[i] == '.' && s[i + 1] == '.'))
            return ps_err_set(err, PS_EPARSE,
                              "field image: the path has an empty, \".\" or \"..\" component");
        i = j + 1;
    }
    return 0;
}

/* The image field: a string passing ps_image_check, or null or "" (no image). */
static int image_field(ps_sticker_rec *out, const json_t *v, ps_err *err)
{
    if (json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0)) return 0;
    if (!json_is_string(v))
        return ps_err_set(err, PS_EPARSE, "field image: expected a string or null, got a %s",
                          json_type_name(v));
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    int rc = ps_image_check(s, n, err);
    if (rc) return rc;
    if (!(out->image = ps_malloc(n + 1)))
        return ps_err_set(err, PS_ENOMEM, "field image: out of memory");
    memcpy(out->image, s, n + 1);
    out->image_len = n;
    return 0;
}

/* Explain a line jansson refused. */
static int decode_error(const char *line, size_t len, const json_error_t *je, ps_err *err)
{
    if (json_error_code(je) == json_error_invalid_utf8) {
        badutf8 b = {{NULL, 0}, 0};
        if (json_members(line, len, find_bad_utf8, &b) == 1) {
            if (b.in_key) return ps_err_set(err, PS_EUTF8, "invalid UTF-8 in a key");
            size_t kn = b.key.n > 64 ? 64 : b.key.n;
            if (utf8_invalid_at(b.key.p, kn) == kn && !memchr(b.key.p, '\\', kn))
                return ps_err_set(err, PS_EUTF8, "field %.*s: invalid UTF-8", (int)kn, b.key.p);
        }
        return ps_err_set(err, PS_EUTF8, "invalid UTF-8 near byte %d", je->position);
    }
    return ps_err_set(err, PS_EPARSE, "not valid JSON: %s (byte %d)", je->text, je->position);
}

int ps_sticker_parse(const char *line, size_t len, ps_sticker_rec *out, ps_err *err)
{
    json_error_t je;
    const json_t *val[PS_NFIELDS] = {NULL};
    const char *key[PS_NFIELDS] = {NULL};
    ps_buf b = PS_BUF_INIT;
    int rc = 0;

    if (!out) return ps_err_set(err, PS_EINVAL, "out is NULL");
    memset(out, 0, sizeof *out);
    if (!line) return ps_err_set(err, PS_EINVAL, "line is NULL");
    json_t *root =
        json_loadb(line, len, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL, &je);
    if (!root) return decode_error(line, len, &je, err);
    if (!json_is_object(root)) {
        rc = ps_err_set(err, PS_EPARSE, "expected a JSON object, got a%s %s",
                        json_is_array(root) || json_is_object(root) ? "n" : "",
                        json_type_name(root));
        goto err;
    }
    json_t *id = json_object_get(root, "id");
    if (!id) {
        rc = ps_err_set(err, PS_EPARSE, "field id: missing");
        goto err;
    }
    if ((rc = parse_id(line, len, id, &out->id, err))) goto err;

    const char *k;
    size_t klen;
    json_t *v;
    json_object_keylen_foreach(root, k, klen, v)
    {
        int f;
        if (strlen(k) != klen || (f = ps_field_lookup(k)) < 0) continue;
        if (val[f]) {
            rc = ps_err_set(err, PS_EPARSE, "field %s: given twice (as %s and %s)",
                            ps_field_names[f], key[f], k);
            goto err;
        }
        val[f] = v;
        key[f] = k;
    }
    for (int f = 0; f < PS_NFIELDS; f++) { /* b is scratch shared by the fields */
        ps_buf_reset(&b);
        if (val[f] && (rc = field_text(&b, f, val[f], key[f], err))) goto err;
        if ((out->field[f] = ps_malloc(b.n + 1))) memcpy(out->field[f], b.n ? b.p : "", b.n + 1);
        out->field_len[f] = b.n;
        if (b.rc || !out->field[f]) {
            rc = ps_err_set(err, PS_ENOMEM, "field %s: out of memory", ps_field_names[f]);
            goto err;
        }
    }
    json_t *image = json_object_get(root, "image");
    if (image && (rc = image_field(out, image, err))) goto err;
    ps_buf_free(&b);
    json_decref(root);
    return 0;
err:
    ps_buf_free(&b);
    json_decref(root);
    ps_sticker_rec_clear(out);
    return rc;
}

void ps_sticker_rec_clear(ps_sticker_rec *r)
{
    if (!r) return;
    for (int f = 0; f < PS_NFIELDS; f++) ps_free(r->field[f]);
    ps_free(r->image);
    memset(r, 0, sizeof *r);
}

/**************************************************************************
 * JSONL reader
 */
struct ps_jsonl {
    linereader lr;
};

ps_jsonl_t *ps_jsonl_open(const char *path, size_t max_line, ps_err *err)
{
    ps_jsonl_t *r = ps_calloc(1, sizeof *r);
    if (!r) {
        ps_err_set(err, PS_ENOMEM, "out of memory opening %s", path ? path : "(null)");
        return NULL;
    }
    if (lr_open(&r->lr, path, max_line ? max_line : PS_JSONL_MAX_LINE_DEFAULT, err)) {
        ps_free(r);
        return NULL;
    }
    return r;
}

void ps_jsonl_close(ps_jsonl_t *r)
{
    if (!r) return;
    lr_close(&r->lr);
    ps_free(r);
}

int ps_jsonl_next(ps_jsonl_t *r, ps_sticker_rec *out, ps_err *err)
{
    char *line;
    size_t len;
    int rc;
    if (!r || !out) return ps_err_set(err, PS_EINVAL, "%s is NULL", r ? "out" : "reader");
    memset(out, 0, sizeof *out);
    while ((rc = lr_next(&r->lr, &line, &len, err)) == 1) {
        size_t i = 0;
        while (i < len && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) i++;
        if (i == len) continue; /* blank */
        if ((rc = ps_sticker_parse(line, len, out, err))) {
            err_at_line(err, r->lr.path, r->lr.lineno);
            return rc;
        }
        return 1;
    }
    return rc;
}

size_t ps_jsonl_lineno(const ps_jsonl_t *r)
{
    return r ? r->lr.lineno : 0;
}

/**************************************************************************
 * JSONL writer
 */

int ps_sticker_write(FILE *f, const ps_sticker_rec *r, ps_err *err)
{
    static const int order[PS_NFIELDS] = {PS_F_OCR, PS_F_KEYWORDS, PS_F_DESC, PS_F_EMOTION,
                                          PS_F_QUERIES};
    if (!f || !r) return ps_err_set(err, PS_EINVAL, "%s is NULL", f ? "record" : "file");
    for (int fi = 0; fi < PS_NFIELDS; fi++) {
        const char *s = r->field[fi];
        size_t n = r->field_len[fi], bad;
        if (!s && n)
            return ps_err_set(err, PS_EINVAL, "sticker %llu: field %s: NULL with length %zu",
                              (unsigned long long)r->id, ps_field_names[fi], n);
        if (!n) continue;
        if ((bad = utf8_invalid_at(s, n)) < n)
            return ps_err_set(err, PS_EUTF8, "sticker %llu: field %s: invalid UTF-8 at byte %zu",
                              (unsigned long long)r->id, ps_field_names[fi], bad);
        if (memchr(s, '\0', n))
            return ps_err_set(err, PS_EINVAL, "sticker %llu: field %s: contains a NUL byte",
                              (unsigned long long)r->id, ps_field_names[fi]);
    }
    int rc;
    if (r->image_len && (rc = ps_image_check(r->image, r->image_len, err))) {
        ps_err_prefix(err, "sticker %llu", (unsigned long long)r->id);
        return rc;
    }

    /* the line in one buffer, one fwrite; strings escaped as jansson writes them */
    ps_buf w = PS_BUF_INIT;
    ps_buf_printf(&w, "{\"id\":%llu", (unsigned long long)r->id);
    for (int i = 0; i < PS_NFIELDS; i++) {
        int fi = order[i];
        if (!r->field_len[fi]) continue;
        ps_buf_add(&w, ",\"", 2);
        ps_buf_str(&w, ps_field_names[fi]);
        ps_buf_add(&w, "\":", 2);
        ps_buf_json_str(&w, r->field[fi], r->field_len[fi]);
    }
    if (r->image_len) {
        ps_buf_add(&w, ",\"image\":", 9);
        ps_buf_json_str(&w, r->image, r->image_len);
    }
    ps_buf_add(&w, "}\n", 2);
    if (w.rc) {
        ps_buf_free(&w);
        return ps_err_set(err, PS_ENOMEM, "sticker %llu: out of memory for its line",
                          (unsigned long long)r->id);
    }
    int failed = fwrite(w.p, 1, w.n, f) != w.n ? errno : 0;
    ps_buf_free(&w);
    if (failed)
        return ps_err_set(err, PS_EIO, "sticker %llu: write failed: %s", (unsigned long long)r->id,
                          strerror(failed));
    return 0;
}

/**************************************************************************
 * Click log
 *
 * Users and queries are interned through byte-keyed ps_maps (string -> index). The maps live
 * in log->tab, built lazily, so a zeroed or hand-filled ps_clicklog works with ps_clicklog_add
 * too.
 */
typedef struct strtab {
    ps_map index; /* string -> its index in the string array */
    size_t cap;   /* capacity of the string array */
} strtab;

struct ps__clicklog_tab {
    strtab users, queries;
    size_t ccap; /* capacity of the click arrays */
};

/* Index the n strings already in strs (a hand-made duplicate keeps its first index). */
static int strtab_fill(strtab *t, char **strs, size_t n)
{
    ps_map_init(&t->index, PS_MAP_BYTES);
    for (size_t j = 0; j < n; j++) {
        uint64_t *v;
        int rc = ps_map_bytes_add(&t->index, strs[j], strlen(strs[j]), &v);
        if (rc < 0) return rc;
        if (rc == 1) *v = j;
    }
    return 0;
}

/* Index of s in (*strs)[0..*n), appending a copy if it is new. */
static int intern(strtab *t, char ***strs, size_t *n, const char *s, const char *what,
                  uint32_t *out, ps_err *err)
{
    size_t len = strlen(s);
    const uint64_t *v = ps_map_bytes_get(&t->index, s, len);
    if (v) {
        *out = (uint32_t)*v;
        return 0;
    }
    if (*n >= UINT32_MAX - 1)
        return ps_err_set(err, PS_ETOOBIG, "more than %u distinct %s", UINT32_MAX - 1, what);
    if (*n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 16;
        char **p = ps_realloc(*strs, cap * sizeof *p);
        if (!p) return ps_err_set(err, PS_ENOMEM, "out of memory interning %s", what);
        *strs = p;
        t->cap = cap;
    }
    char *copy = ps_strdup(s);
    if (!copy) return ps_err_set(err, PS_ENOMEM, "out of memory interning %s", what);
    if (ps_map_bytes_put(&t->index, s, len, *n)) {
        ps_free(copy);
        return ps_err_set(err, PS_ENOMEM, "out of memory interning %s", what);
    }
    (*strs)[*n] = copy;
    *out = (uint32_t)(*n)++;
    return 0;
}

static void clicklog_tab_free(struct ps__clicklog_tab *t)
{
    if (!t) return;
    ps_map_free(&t->users.index);
    ps_map_free(&t->queries.index);
    ps_free(t);
}

static int clicklog_tab(ps_clicklog *log, ps_err *err)
{
    struct ps__clicklog_tab *t = ps_calloc(1, sizeof *t);
    if (!t) return ps_err_set(err, PS_ENOMEM, "out of memory for the click log tables");
    t->ccap = log->n;
    t->users.cap = log->nusers;
    t->queries.cap = log->nqueries;
    if (strtab_fill(&t->users, log->users, log->nusers) ||
        strtab_fill(&t->queries, log->queries, log->nqueries)) {
        clicklog_tab_free(t);
        return ps_err_set(err, PS_ENOMEM, "out of memory for the click log tables");
    }
    log->tab = t;
    return 0;
}

static int check_str(const char *s, const char *what, ps_err *err)
{
    if (!s) return ps_err_set(err, PS_EINVAL, "%s is NULL", what);
    if (!*s) return ps_err_set(err, PS_EINVAL, "%s is empty", what);
    size_t n = strlen(s), bad = utf8_invalid_at(s, n);
    if (bad < n) return ps_err_set(err, PS_EUTF8, "%s: invalid UTF-8 at byte %zu", what, bad);
    return 0;
}

int ps_clicklog_add(ps_clicklog *log, const char *user, const char *query, uint64_t sticker,
                    ps_err *err)
{
    int rc;
    uint32_t u, q;
    if (!log) return ps_err_set(err, PS_EINVAL, "log is NULL");
    if ((rc = check_str(user, "user", err)) || (rc = check_str(query, "query", err))) return rc;
    if (!log->tab && (rc = clicklog_tab(log, err))) return rc;
    struct ps__clicklog_tab *t = log->tab;
    if (log->n == t->ccap) {
        size_t cap = t->ccap ? 2 * t->ccap : 256;
        uint32_t *pu = ps_realloc(log->user, cap * sizeof *pu);
        if (pu) log->user = pu;
        uint32_t *pq = ps_realloc(log->query, cap * sizeof *pq);
        if (pq) log->query = pq;
        uint64_t *ps = ps_realloc(log->sticker, cap * sizeof *ps);
        if (ps) log->sticker = ps;
        if (!pu || !pq || !ps) return ps_err_set(err, PS_ENOMEM, "out of memory adding a click");
        t->ccap = cap;
    }
    if ((rc = intern(&t->users, &log->users, &log->nusers, user, "users", &u, err)) ||
        (rc = intern(&t->queries, &log->queries, &log->nqueries, query, "queries", &q, err)))
        return rc;
    log->user[log->n] = u;
    log->query[log->n] = q;
    log->sticker[log->n] = sticker;
    log->n++;
    return 0;
}

void ps_clicklog_free(ps_clicklog *log)
{
    if (!log) return;
    for (size_t i = 0; i < log->nusers; i++) ps_free(log->users[i]);
    for (size_t i = 0; i < log->nqueries; i++) ps_free(log->queries[i]);
    ps_free(log->users);
    ps_free(log->queries);
    ps_free(log->user);
    ps_free(log->query);
    ps_free(log->sticker);
    clicklog_tab_free(log->tab);
    memset(log, 0, sizeof *log);
}

/* Split one TSV line in place (tabs become NULs) and add it. */
static int clicklog_line(ps_clicklog *log, char *line, size_t len, ps_err *err)
{
    char *col[3];
    size_t ncol = 1, bad;
    col[0] = line;
    for (size_t i = 0; i < len; i++) {
        if (line[i] == '\t') {
            if (ncol < 3) col[ncol] = line + i + 1;
            ncol++;
            line[i] = '\0';
        } else if (line[i] == '\0')
            return ps_err_set(err, PS_EPARSE, "NUL byte at column %zu", ncol);
    }
    if (ncol != 3)
        return ps_err_set(err, PS_EPARSE, "expected 3 tab-separated columns, found %zu", ncol);
    line[len] = '\0'; /* the '\n' or '\r' the reader cut off, or spare buffer room at EOF */
    size_t ulen = strlen(col[0]), qlen = strlen(col[1]), idlen = strlen(col[2]);
    if (!ulen) return ps_err_set(err, PS_EPARSE, "empty user");
    if (!qlen) return ps_err_set(err, PS_EPARSE, "empty query");
    if ((bad = utf8_invalid_at(col[0], ulen)) < ulen)
        return ps_err_set(err, PS_EUTF8, "user: invalid UTF-8 at byte %zu", bad);
    if ((bad = utf8_invalid_at(col[1], qlen)) < qlen)
        return ps_err_set(err, PS_EUTF8, "query: invalid UTF-8 at byte %zu", bad);
    uint64_t id;
    if (parse_u64(col[2], idlen, &id))
        return ps_err_set(err, PS_EPARSE, "sticker_id \"%.40s\" is not an unsigned 64-bit integer",
                          col[2]);
    return ps_clicklog_add(log, col[0], col[1], id, err);
}

int ps_clicklog_read(const char *path, ps_clicklog *out, ps_err *err)
{
    linereader lr;
    char *line;
    size_t len;
    int rc;
    if (!out) return ps_err_set(err, PS_EINVAL, "out is NULL");
    memset(out, 0, sizeof *out);
    if ((rc = lr_open(&lr, path, CLICKLOG_MAX_LINE, err))) return rc;
    while ((rc = lr_next(&lr, &line, &len, err)) == 1) {
        if (len == 0) continue;
        if ((rc = clicklog_line(out, line, len, err))) {
            err_at_line(err, lr.path, lr.lineno);
            break;
        }
    }
    lr_close(&lr);
    if (rc < 0) ps_clicklog_free(out);
    return rc < 0 ? rc : 0;
}
