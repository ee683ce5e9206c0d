/*
 * fuzz_analyzer.c — fuzz target for the text analyzer (DESIGN §1.1).
 *
 * Feeds arbitrary bytes to ps_analyze and checks what every caller relies on: valid UTF-8
 * is accepted and invalid UTF-8 rejected with PS_EUTF8 (ICU's own strict decoder is the
 * oracle), and every token is non-empty, NUL-terminated at its length, valid UTF-8, and made
 * of one token class only: one or two CJK code points, one emoji, or letters and digits.
 * The token list must equal that of a slow reference (ICU's full NFKC and lowercase, no
 * shortcuts, then the §1.1 rules written out plainly), and ps_tokens_distinct must keep
 * exactly the first occurrence of each token.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>
#include <unicode/utf8.h>

#include "ps/analyzer.h"

/* One analyzer and token list for the process, as a real caller would keep them; freed at
 * exit so LeakSanitizer has nothing to report. */
static ps_analyzer_t *analyzer;
static ps_tokens toks;

static void release(void)
{
    ps_analyzer_free(analyzer);
    ps_tokens_free(&toks);
}

static int is_cjk(UChar32 c)
{
    return (c >= 0x3040 && c <= 0x30FF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0xF900 && c <= 0xFAFF) ||
           (c >= 0x20000 && c <= 0x2FFFF);
}

static int is_emoji(UChar32 c)
{
    return (c >= 0x2600 && c <= 0x27BF) || (c >= 0x2B00 && c <= 0x2BFF) ||
           (c >= 0x1F000 && c <= 0x1F3FA) || (c >= 0x1F400 && c <= 0x1FAFF);
}

static int is_word(UChar32 c)
{
    return !is_cjk(c) && !is_emoji(c) && (U_GET_GC_MASK(c) & (U_GC_L_MASK | U_GC_N_MASK));
}

/* ICU's strict decode as an independent opinion on validity. */
static int icu_valid(const uint8_t *s, size_t len)
{
    UErrorCode st = U_ZERO_ERROR;
    int32_t need = 0;
    if (len > INT32_MAX) return 1;
    u_strFromUTF8(NULL, 0, &need, (const char *)s, (int32_t)len, &st);
    return st != U_INVALID_CHAR_FOUND && st != U_ILLEGAL_CHAR_FOUND;
}

static void check_token(const char *tok, size_t len)
{
    const uint8_t *s = (const uint8_t *)tok;
    int32_t i = 0, n = (int32_t)len, ncp = 0, ncjk = 0, nemoji = 0, nword = 0;
    if (len == 0 || tok[len] != '\0' || strlen(tok) != len) abort();
    if (!ps_utf8_valid(tok, len)) abort();
    while (i < n) {
        UChar32 c;
        U8_NEXT(s, i, n, c);
        if (c < 0) abort();
        ncp++;
        ncjk += is_cjk(c);
        nemoji += is_emoji(c);
        nword += is_word(c);
    }
    if (ncjk) {
        if (ncjk != ncp || ncp > 2) abort();
    } else if (nemoji) {
        if (ncp != 1) abort();
    } else if (nword != ncp) {
        abort(); /* a separator inside a word token */
    }
}

static int tok_eq(const ps_tokens *t, size_t i, size_t j)
{
    return t->len[i] == t->len[j] &&
           memcmp(t->text + t->off[i], t->text + t->off[j], t->len[i]) == 0;
}

/* Growable byte string for the reference token list. */
typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        if (!b->p) abort();
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_cp(sbuf *b, UChar32 c)
{
    char u[4];
    int32_t k = 0;
    U8_APPEND_UNSAFE(u, k, c);
    sb_put(b, u, (size_t)k);
}

/* Reference tokens of valid UTF-8 input, each followed by '\n' (never inside a token). */
static void reference(const uint8_t *data, size_t size, sbuf *out)
{
    UErrorCode st = U_ZERO_ERROR;
    const UNormalizer2 *nfkc = unorm2_getNFKCInstance(&st);
    int32_t n16 = 0, nn, ln, i = 0;
    UChar *src, *nf, *low;
    UChar32 prev = -1;
    int in_word = 0;
    u_strFromUTF8(NULL, 0, &n16, (const char *)data, (int32_t)size, &st);
    st = U_ZERO_ERROR;
    src = malloc(((size_t)n16 + 1) * sizeof *src);
    if (!src) abort();
    u_strFromUTF8(src, n16 + 1, NULL, (const char *)data, (int32_t)size, &st);
    nn = unorm2_normalize(nfkc, src, n16, NULL, 0, &st);
    st = U_ZERO_ERROR;
    nf = malloc(((size_t)nn + 1) * sizeof *nf);
    if (!nf) abort();
    unorm2_normalize(nfkc, src, n16, nf, nn + 1, &st);
    ln = u_strToLower(NULL, 0, nf, nn, "", &st);
    st = U_ZERO_ERROR;
    low = malloc(((size_t)ln + 1) * sizeof *low);
    if (!low) abort();
    u_strToLower(low, ln + 1, nf, nn, "", &st);
    if (U_FAILURE(st)) abort();
    out->n = 0;
    sb_put(out, "", 0);
    while (i < ln) {
        UChar32 c;
        U16_NEXT(low, i, ln, c);
        if (is_word(c)) {
            sb_cp(out, c);
            in_word = 1;
            prev = -1;
            continue;
        }
        if (in_word) sb_put(out, "\n", 1);
        in_word = 0;
        if (is_cjk(c)) {
            if (prev >= 0) {
                sb_cp(out, prev);
                sb_cp(out, c);
                sb_put(out, "\n", 1);
            }
            sb_cp(out, c);
            sb_put(out, "\n", 1);
            prev = c;
            continue;
        }
        prev = -1;
        if (is_emoji(c)) {
            sb_cp(out, c);
            sb_put(out, "\n", 1);
        }
    }
    if (in_word) sb_put(out, "\n", 1);
    free(src);
    free(nf);
    free(low);
}

static void check_reference(const uint8_t *data, size_t size, const ps_tokens *t)
{
    sbuf want = {0}, got = {0};
    reference(data, size, &want);
    sb_put(&got, "", 0);
    for (size_t i = 0; i < t->n; i++) {
        sb_put(&got, t->text + t->off[i], t->len[i]);
        sb_put(&got, "\n", 1);
    }
    if (strcmp(want.p, got.p) != 0) abort();
    free(want.p);
    free(got.p);
}

/* distinct keeps the first occurrence of each token, in order: a quadratic reference check,
 * only run on lists small enough for it. */
static void check_distinct(ps_tokens *t)
{
    size_t n = t->n;
    uint32_t *off = malloc((n + 1) * sizeof *off), *len = malloc((n + 1) * sizeof *len);
    size_t want = 0;
    if (!off || !len) abort();
    for (size_t i = 0; i < n; i++) {
        size_t j = 0;
        while (j < want &&
               !(len[j] == t->len[i] && memcmp(t->text + off[j], t->text + t->off[i], len[j]) == 0))
            j++;
        if (j == want) {
            off[want] = t->off[i];
            len[want] = t->len[i];
            want++;
        }
    }
    ps_tokens_distinct(t);
    if (t->n != want) abort();
    for (size_t i = 0; i < want; i++)
        if (t->off[i] != off[i] || t->len[i] != len[i]) abort();
    for (size_t i = 0; i < t->n; i++)
        for (size_t j = i + 1; j < t->n; j++)
            if (tok_eq(t, i, j)) abort();
    free(off);
    free(len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ps_err err;
    if (!analyzer) {
        analyzer = ps_analyzer_new(&err);
        if (!analyzer) abort();
        ps_tokens_init(&toks);
        atexit(release);
    }
    int valid = ps_utf8_valid((const char *)data, size);
    if (valid != icu_valid(data, size)) abort();
    int rc = ps_analyze(analyzer, (const char *)data, size, "fuzz", &toks, &err);
    if (!valid) {
        if (rc != PS_EUTF8 || toks.n != 0 || !strstr(err.msg, "fuzz")) abort();
        return 0;
    }
    if (rc != 0) abort();
    if (toks.text_len > toks.text_cap || toks.n > toks.cap) abort();
    for (size_t i = 0; i < toks.n; i++) {
        if ((size_t)toks.off[i] + toks.len[i] >= toks.text_len) abort();
        check_token(toks.text + toks.off[i], toks.len[i]);
    }
    if (size <= (1u << 20)) check_reference(data, size, &toks);
    if (toks.n <= 4096) check_distinct(&toks);
    return 0;
}
