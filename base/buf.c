/*
 * buf.c — the growable byte buffer of ps/buf.h. Growth doubles from 64 bytes; the first error
 * is kept in the buffer and every append after it returns at once.
 */
#include "ps/buf.h"
#include "ps/alloc.h"
#include "ps/err.h"

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
