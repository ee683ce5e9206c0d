/*
 * buf.c — the growable byte buffer of ps/buf.h. Growth doubles from 64 bytes; the first error
 * is kept in the buffer and every append after it returns at once.
 */
#include "ps/buf.h"
#include "ps/alloc.h"
#include "ps/err.h"
#include "ps/utf8.h"

#include <math.h>
#include <stdio.h>

int ps__buf_grow(ps_buf *b, size_t more)
{
    if (b->rc) return b->rc;
    if (more > SIZE_MAX - 1 - b->n) return b->rc = PS_ETOOBIG;
    size_t need = b->n + more + 1, cap = b->cap ? b->cap : 64;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = ps_realloc(b->p, cap);
    if (!p) return b->rc = PS_ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

void ps_buf_vprintf(ps_buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    if (b->rc) return;
    va_copy(ap2, ap);
    size_t room = b->cap - b->n; /* 0 before the first allocation */
    int k = vsnprintf(room ? b->p + b->n : NULL, room, fmt, ap);
    if (k < 0) {
        b->rc = PS_EINVAL;
    } else if ((size_t)k < room) {
        b->n += (size_t)k;
    } else if (!ps_buf_reserve(b, (size_t)k)) {
        vsnprintf(b->p + b->n, (size_t)k + 1, fmt, ap2);
        b->n += (size_t)k;
    }
    if (b->rc && b->p) b->p[b->n] = '\0'; /* undo a truncated write past n */
    va_end(ap2);
}

void ps_buf_printf(ps_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ps_buf_vprintf(b, fmt, ap);
    va_end(ap);
}

void ps_buf_u32le(ps_buf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    ps_buf_add(b, x, 4);
}

void ps_buf_u64le(ps_buf *b, uint64_t v)
{
    ps_buf_u32le(b, (uint32_t)v);
    ps_buf_u32le(b, (uint32_t)(v >> 32));
}

void ps_buf_f32le(ps_buf *b, float f)
{
    uint32_t v;
    memcpy(&v, &f, 4);
    ps_buf_u32le(b, v);
}

void ps_buf_varint(ps_buf *b, uint64_t v)
{
    uint8_t x[10];
    size_t n = 0;
    do {
        x[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    ps_buf_add(b, x, n);
}

void ps_buf_json_str(ps_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    ps_buf_byte(b, '"');
    size_t run = 0; /* s[run..i) needs no escape */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80) { /* a well-formed sequence goes through, an ill-formed byte is U+FFFD */
            int32_t cp;
            size_t k = ps_utf8_multi((const uint8_t *)s + i, n - i, &cp);
            if (k) {
                i += k - 1;
                continue;
            }
            ps_buf_add(b, s + run, i - run);
            run = i + 1;
            ps_buf_add(b, "\xEF\xBF\xBD", 3);
            continue;
        }
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        ps_buf_add(b, s + run, i - run);
        run = i + 1;
        char esc[6] = {'\\', 0, '0', '0', 0, 0};
        size_t len = 2;
        switch (c) {
        case '"':
        case '\\':
            esc[1] = (char)c;
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        default:
            esc[1] = 'u';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            len = 6;
        }
        ps_buf_add(b, esc, len);
    }
    ps_buf_add(b, s + run, n - run);
    ps_buf_byte(b, '"');
}

void ps_buf_json_real(ps_buf *b, double v)
{
    char t[40];
    if (b->rc) return;
    if (!isfinite(v)) {
        b->rc = PS_EINVAL;
        return;
    }
    int n = snprintf(t, sizeof t, "%.17g", v);
    if (n <= 0 || (size_t)n >= sizeof t - 2) { /* cannot happen for a finite double */
        b->rc = PS_EINVAL;
        return;
    }
    char *e = strchr(t, 'e');
    if (!e && !strchr(t, '.')) {
        memcpy(t + n, ".0", 3);
        n += 2;
    } else if (e) { /* "e+05" -> "e5", "e-05" -> "e-5" */
        char *from = e + 1, *to = e + 1;
        if (*from == '-')
            from++, to++;
        else if (*from == '+')
            from++;
        while (*from == '0' && from[1]) from++;
        memmove(to, from, strlen(from) + 1);
        n = (int)strlen(t);
    }
    ps_buf_add(b, t, (size_t)n);
}

void ps_buf_free(ps_buf *b)
{
    ps_free(b->p);
    *b = (ps_buf)PS_BUF_INIT;
}

char *ps_buf_detach(ps_buf *b, size_t *len)
{
    if (!b->rc && !b->p) ps_buf_add(b, "", 0); /* "" rather than NULL for an empty buffer */
    if (b->rc) {
        int rc = b->rc;
        ps_buf_free(b);
        b->rc = rc;
        if (len) *len = 0;
        return NULL;
    }
    char *p = b->p;
    if (len) *len = b->n;
    *b = (ps_buf)PS_BUF_INIT;
    return p;
}
