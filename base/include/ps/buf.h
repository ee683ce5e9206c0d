/*
 * buf.h — the one growable byte buffer (the shape of SQLite FTS5's Fts5Buffer). The buffer
 * keeps the first error it met: once an allocation fails every later append is a no-op, so a
 * build sequence (a record, a metrics page, a JSON line) appends without per-call checks and
 * looks at `rc` once at the end.
 *
 *     ps_buf b = PS_BUF_INIT;
 *     ps_buf_printf(&b, "%s_count %llu\n", name, n);
 *     ps_buf_add(&b, key, klen);
 *     if (b.rc) { ps_buf_free(&b); return b.rc; }   // PS_ENOMEM or PS_ETOOBIG, said once
 *
 * The bytes are p[0..n), always followed by a NUL once anything was appended, so a text
 * buffer is a C string. p moves when the buffer grows: a pointer into it stays valid until the
 * next append or reserve. Memory comes from ps_malloc/ps_realloc (ps/alloc.h), so a failing
 * allocator reaches every user.
 */
#ifndef PS_BUF_H
#define PS_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct ps_buf {
    char *p;    /* p[0..n) the bytes, p[n] == '\0'; NULL until the first append */
    size_t n;   /* bytes held */
    size_t cap; /* bytes allocated at p (room for n and the NUL) */
    int rc;     /* 0, or the first error (PS_ENOMEM, PS_ETOOBIG): appends do nothing */
} ps_buf;

#define PS_BUF_INIT                                                                                \
    {                                                                                              \
        NULL, 0, 0, 0                                                                              \
    }

/* Make room for `more` bytes past n (and the NUL) without changing n. Returns 0, or the
 * sticky error (set now: PS_ENOMEM, or PS_ETOOBIG when n + more overflows). */
int ps__buf_grow(ps_buf *b, size_t more);

static inline int ps_buf_reserve(ps_buf *b, size_t more)
{
    if (b->rc) return b->rc;
    if (b->cap - b->n > more) return 0; /* cap > n always once allocated; 0 - 0 > more fails */
    return ps__buf_grow(b, more);
}

/* Append the n bytes at src (src may be NULL when n == 0). */
static inline void ps_buf_add(ps_buf *b, const void *src, size_t n)
{
    if (ps_buf_reserve(b, n)) return;
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static inline void ps_buf_str(ps_buf *b, const char *s)
{
    ps_buf_add(b, s, strlen(s));
}

static inline void ps_buf_byte(ps_buf *b, int c)
{
    if (ps_buf_reserve(b, 1)) return;
    b->p[b->n++] = (char)c;
    b->p[b->n] = '\0';
}

/* printf-style append. An encoding error of vsnprintf becomes the sticky PS_EINVAL. */
void ps_buf_printf(ps_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ps_buf_vprintf(ps_buf *b, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

/* Little-endian fixed-width integers and floats, and LEB128 varints (7 bits a byte, low
 * first, high bit = more follows; at most 10 bytes for a u64). */
void ps_buf_u32le(ps_buf *b, uint32_t v);
void ps_buf_u64le(ps_buf *b, uint64_t v);
void ps_buf_f32le(ps_buf *b, float f);
void ps_buf_varint(ps_buf *b, uint64_t v);

/* JSON text, in the form jansson's json_dumps writes it, so an answer written straight into a
 * buffer reads the same as one built as a json_t tree:
 *   ps_buf_json_str  a quoted string: '"' and '\\' escaped, control characters (< 0x20) as
 *                    \b \f \n \r \t or \u00XX (upper-case hex), UTF-8 as it is; a byte
 *                    that is not part of well-formed UTF-8 (where jansson refuses the string)
 *                    is written as U+FFFD, so the text is always valid JSON;
 *   ps_buf_json_real a double as "%.17g" (it reads back to the same bits), with ".0" added
 *                    when that looks like an integer and the exponent without '+' or leading
 *                    zeros ("1e-05" -> "1e-5"); not finite is the sticky PS_EINVAL (JSON has
 *                    no NaN). */
void ps_buf_json_str(ps_buf *b, const char *s, size_t n);
void ps_buf_json_real(ps_buf *b, double v);

/* Forget the bytes, keep the memory and the sticky error. */
static inline void ps_buf_reset(ps_buf *b)
{
    b->n = 0;
    if (b->p) b->p[0] = '\0';
}

/* Free the memory and zero the buffer (error included); b itself is the caller's. */
void ps_buf_free(ps_buf *b);

/* Hand the bytes to the caller and empty the buffer. Returns p (NUL-terminated, "" when
 * nothing was appended; caller frees with ps_free) and *len (if len) = n. On a sticky error
 * the bytes are freed, NULL comes back and b->rc keeps the error. */
char *ps_buf_detach(ps_buf *b, size_t *len);

#endif
