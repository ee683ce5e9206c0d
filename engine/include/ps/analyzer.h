/*
 * analyzer.h — the one text analyzer (DESIGN §1.1), used for corpus fields and queries.
 *
 * UTF-8 in; NFKC + lowercase (ICU); then tokens:
 *  - Han (U+3400–4DBF, U+4E00–9FFF, U+F900–FAFF, U+20000–2FFFF) and kana (U+3040–30FF):
 *    every maximal run of these gives each character and each adjacent pair, in the order
 *    c1, c1c2, c2, c2c3, c3 ...
 *  - emoji (U+2600–27BF, U+2B00–2BFF, U+1F000–1F3FA, U+1F400–1FAFF): one token per code point;
 *    skin tones (U+1F3FB–1F3FF), ZWJ (U+200D) and variation selectors separate like punctuation;
 *  - any other maximal run of letters and digits (Unicode L*, N*): one word token;
 *  - everything else separates.
 * Example: "好累~ So TIRED😭" -> 好 好累 累 so tired 😭
 */
#ifndef PS_ANALYZER_H
#define PS_ANALYZER_H

#include <stddef.h>
#include <stdint.h>

#include "ps/err.h"
#include "ps/utf8.h" /* ps_utf8_valid: analyzer users check text too */

/* A token list. Token i is the NUL-terminated UTF-8 string text + off[i], len[i] bytes long.
 * Buffers are reused across calls (reset, not freed); pointers into them stay valid until the
 * next call that fills the same list. */
typedef struct ps_tokens {
    char *text;
    uint32_t *off;
    uint32_t *len;
    size_t n;        /* number of tokens */
    size_t text_len; /* bytes used in text (including the NULs) */
    size_t text_cap;
    size_t cap; /* capacity of off/len */
} ps_tokens;

void ps_tokens_init(ps_tokens *t);
/* Release the buffers; the list can be initialized again afterwards. */
void ps_tokens_free(ps_tokens *t);
/* Empty the list, keeping its buffers. */
void ps_tokens_reset(ps_tokens *t);
/* Append the `len` bytes at s as one more token (no analysis). PS_ENOMEM on failure. */
int ps_tokens_push(ps_tokens *t, const char *s, size_t len);
/* Remove repeated tokens, keeping the first occurrence of each, in order. */
void ps_tokens_distinct(ps_tokens *t);

typedef struct ps_analyzer ps_analyzer_t;

/* One analyzer per thread (it owns ICU scratch buffers). NULL on failure (err says why). */
ps_analyzer_t *ps_analyzer_new(ps_err *err);
void ps_analyzer_free(ps_analyzer_t *a);

/* Analyze `len` bytes of `text` into `out` (reset first; repeated tokens kept, text order).
 * `what` names the field or parameter for error messages ("query", "field desc").
 * Errors: PS_EUTF8 when text is not valid UTF-8 (message names `what` and the byte offset),
 * PS_ENOMEM, PS_ETOOBIG when the tokens would pass the 4 GiB that 32-bit offsets address (or
 * the UTF-16 text ICU's int32_t lengths allow), PS_EINVAL for a NULL analyzer, list, or text
 * with len > 0. On error out->n == 0. An input with no token is not an error here:
 * out->n == 0. */
int ps_analyze(ps_analyzer_t *a, const char *text, size_t len, const char *what, ps_tokens *out,
               ps_err *err);

#endif
