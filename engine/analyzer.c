/*
 * analyzer.c — the one text analyzer (DESIGN §1.1): UTF-8 check, NFKC, lowercase, tokens.
 *
 * Corpus building runs this on millions of short field strings and every query runs it
 * once, so the common cases are kept cheap:
 *  - pure-ASCII input never touches ICU (NFKC of ASCII is the identity and the root-locale
 *    lowercase of ASCII is A-Z -> a-z), and is tokenized straight from the input bytes;
 *  - other input is checked and decoded to UTF-16 in one pass, NFKC-normalized only from the
 *    first code point that is not quick-check "yes" (Han and kana text usually is), then
 *    lowercased with u_strToLower (root locale, full case mapping) unless a scan shows no
 *    character could change, and tokenized;
 *  - all scratch buffers (the analyzer's UTF-16 buffers, the token list's arrays) grow
 *    geometrically and are reused, so a warm analyzer allocates nothing per call, and no
 *    buffer lives on the stack, so inputs of any length are fine.
 *
 * Tokens are written into ps_tokens as NUL-terminated UTF-8; each CJK (Han or kana) code
 * point yields itself and, with its left neighbour in the same run, a bigram, which gives
 * the order c1, c1c2, c2, c2c3, c3 without buffering the run.
 */
#include "ps/analyzer.h"
#include "ps/utf8.h"
#include "ps/hash.h"
#include "ps/alloc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>
#include <unicode/utf16.h>

struct ps_analyzer {
    const UNormalizer2 *nfkc; /* owned by ICU, lives as long as the process */
    UChar *src;               /* the input decoded to UTF-16 */
    int32_t src_cap;
    UChar *norm; /* NFKC of src, when src is not already NFKC */
    int32_t norm_cap;
    UChar *low; /* lowercase of the NFKC text, when lowercasing changes it */
    int32_t low_cap;
};

/* ---- token list ---------------------------------------------------------------------- */

/* The most one code point can add to a token list: a supplementary CJK character gives a
 * bigram (8 bytes + NUL) and itself (4 bytes + NUL). Reserving this much before each code
 * point keeps the emit code free of checks. */
enum { CP_MAX_TEXT = 14, CP_MAX_TOKENS = 2 };

void ps_tokens_init(ps_tokens *t)
{
    memset(t, 0, sizeof *t);
}

void ps_tokens_free(ps_tokens *t)
{
    if (!t) return;
    ps_free(t->text);
    ps_free(t->off);
    ps_free(t->len);
    memset(t, 0, sizeof *t);
}

/* Make room for `text_more` more bytes and `tok_more` more tokens. Offsets are 32-bit, so a
 * token list cannot address more than 4 GiB of text. */
static int tokens_grow(ps_tokens *t, size_t text_more, size_t tok_more)
{
    if (t->text_cap - t->text_len < text_more) {
        size_t need = t->text_len + text_more;
        size_t cap = t->text_cap ? t->text_cap * 2 : 256;
        if (need > (size_t)UINT32_MAX) return PS_ETOOBIG;
        if (cap < need) cap = need;
        if (cap > (size_t)UINT32_MAX) cap = UINT32_MAX;
        char *p = ps_realloc(t->text, cap);
        if (!p) return PS_ENOMEM;
        t->text = p;
        t->text_cap = cap;
    }
    if (t->cap - t->n < tok_more) {
        size_t need = t->n + tok_more;
        size_t cap = t->cap ? t->cap * 2 : 32;
        if (cap < need) cap = need;
        if (cap > SIZE_MAX / sizeof(uint32_t)) return PS_ENOMEM;
        uint32_t *o = ps_realloc(t->off, cap * sizeof *o);
        if (!o) return PS_ENOMEM;
        t->off = o;
        uint32_t *l = ps_realloc(t->len, cap * sizeof *l);
        if (!l) return PS_ENOMEM;
        t->len = l;
        t->cap = cap;
    }
    return 0;
}

static inline int tokens_reserve(ps_tokens *t, size_t text_more, size_t tok_more)
{
    if (t->text_cap - t->text_len >= text_more && t->cap - t->n >= tok_more) return 0;
    return tokens_grow(t, text_more, tok_more);
}

/* Close the token whose bytes start at text offset `start` (room already reserved). */
static inline void tokens_push(ps_tokens *t, size_t start)
{
    t->off[t->n] = (uint32_t)start;
    t->len[t->n] = (uint32_t)(t->text_len - start);
    t->text[t->text_len++] = '\0';
    t->n++;
}

void ps_tokens_reset(ps_tokens *t)
{
    t->n = 0;
    t->text_len = 0;
}

int ps_tokens_push(ps_tokens *t, const char *s, size_t len)
{
    int rc = tokens_reserve(t, len + 1, 1);
    if (rc) return rc;
    size_t start = t->text_len;
    memcpy(t->text + start, s, len);
    t->text_len += len;
    tokens_push(t, start);
    return 0;
}

static int token_eq(const ps_tokens *t, size_t i, size_t j)
{
    return t->len[i] == t->len[j] &&
           memcmp(t->text + t->off[i], t->text + t->off[j], t->len[i]) == 0;
}

/* Queries are short, so the hash set usually fits this stack array; long lists (a whole
 * field, a megabyte of input) get a heap table for the duration of the call. */
enum { DISTINCT_STACK_SLOTS = 256 };

void ps_tokens_distinct(ps_tokens *t)
{
    uint32_t stack_slots[DISTINCT_STACK_SLOTS];
    uint32_t *slots = stack_slots;
    size_t nslots = 16, kept = 0;

    if (!t || t->n < 2) return;
    while (nslots < t->n * 2) nslots *= 2;
    if (nslots > DISTINCT_STACK_SLOTS) {
        slots = nslots <= SIZE_MAX / sizeof *slots ? ps_malloc(nslots * sizeof *slots) : NULL;
        if (!slots) {
            /* Out of memory: a quadratic scan is slow but still right, and this function
             * has no way to report failure. */
            for (size_t i = 0; i < t->n; i++) {
                size_t j = 0;
                while (j < kept && !token_eq(t, i, j)) j++;
                if (j < kept) continue;
                t->off[kept] = t->off[i];
                t->len[kept] = t->len[i];
                kept++;
            }
            t->n = kept;
            return;
        }
    }
    memset(slots, 0, nslots * sizeof *slots); /* slot value = kept index + 1; 0 is empty */
    for (size_t i = 0; i < t->n; i++) {
        size_t h = (size_t)ps_hash_bytes(t->text + t->off[i], t->len[i]) & (nslots - 1);
        int dup = 0;
        /* Kept tokens are compacted towards the front, so slots refer to kept positions. */
        while (slots[h]) {
            size_t j = slots[h] - 1;
            if (token_eq(t, j, i)) {
                dup = 1;
                break;
            }
            h = (h + 1) & (nslots - 1);
        }
        if (dup) continue;
        t->off[kept] = t->off[i];
        t->len[kept] = t->len[i];
        slots[h] = (uint32_t)(kept + 1);
        kept++;
    }
    t->n = kept;
    if (slots != stack_slots) ps_free(slots);
}

/* ---- UTF-8 -------------------------------------------------------------------------- */

/* Check s[0..len) and decode it into dst (room for len units: UTF-16 never needs more
 * units than UTF-8 has bytes). Returns the number of units, or -1 with *bad set to the
 * byte offset of the first ill-formed sequence. */
static int32_t utf8_to_utf16(const uint8_t *s, size_t len, UChar *dst, size_t *bad)
{
    size_t i = 0;
    int32_t n = 0;
    while (i < len) {
        UChar32 c = s[i];
        if (c < 0x80) {
            dst[n++] = (UChar)c;
            i++;
            continue;
        }
        size_t k = ps_utf8_multi(s + i, len - i, &c);
        if (!k) {
            *bad = i;
            return -1;
        }
        i += k;
        if (c < 0x10000) {
            dst[n++] = (UChar)c;
        } else {
            dst[n++] = U16_LEAD(c);
            dst[n++] = U16_TRAIL(c);
        }
    }
    return n;
}

/* ---- tokenizer ---------------------------------------------------------------------- */

enum { C_SEP = 0, C_WORD, C_CJK, C_EMOJI };

/* ASCII letters and digits are words; everything else in ASCII separates. */
static const uint8_t ascii_word[128] = {
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1,
    ['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1,
    ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1,
    ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1,
    ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1,
    ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1,
    ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

/* The ranges are DESIGN §1.1's. Skin tones (U+1F3FB-1F3FF) fall between the two emoji
 * ranges, and ZWJ and variation selectors are neither L* nor N*, so all of them separate. */
static inline int classify(UChar32 c)
{
    if (c < 0x80) return ascii_word[c] ? C_WORD : C_SEP;
    if (c >= 0x4E00 && c <= 0x9FFF) return C_CJK; /* the common case first */
    if ((c >= 0x3040 && c <= 0x30FF) || (c >= 0x3400 && c <= 0x4DBF) ||
        (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x20000 && c <= 0x2FFFF))
        return C_CJK;
    if ((c >= 0x2600 && c <= 0x27BF) || (c >= 0x2B00 && c <= 0x2BFF) ||
        (c >= 0x1F000 && c <= 0x1F3FA) || (c >= 0x1F400 && c <= 0x1FAFF))
        return C_EMOJI;
    return (U_GET_GC_MASK(c) & (U_GC_L_MASK | U_GC_N_MASK)) ? C_WORD : C_SEP;
}

/* Write c as UTF-8 at p; returns the number of bytes. */
static inline size_t put_utf8(char *p, UChar32 c)
{
    uint8_t *u = (uint8_t *)p;
    if (c < 0x80) {
        u[0] = (uint8_t)c;
        return 1;
    }
    if (c < 0x800) {
        u[0] = (uint8_t)(0xC0 | (c >> 6));
        u[1] = (uint8_t)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        u[0] = (uint8_t)(0xE0 | (c >> 12));
        u[1] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
        u[2] = (uint8_t)(0x80 | (c & 0x3F));
        return 3;
    }
    u[0] = (uint8_t)(0xF0 | (c >> 18));
    u[1] = (uint8_t)(0x80 | ((c >> 12) & 0x3F));
    u[2] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
    u[3] = (uint8_t)(0x80 | (c & 0x3F));
    return 4;
}

/* A token list's buffers and fill levels held in locals while tokenizing: stores of text
 * bytes through a char pointer may alias anything in memory, so fill levels kept in the
 * ps_tokens struct would be reloaded after every byte. Synced back around each growth. */
typedef struct tok_writer {
    char *text;
    uint32_t *off, *len;
    size_t tl, n, text_cap, cap;
} tok_writer;

static inline void writer_load(tok_writer *w, const ps_tokens *t)
{
    w->text = t->text;
    w->off = t->off;
    w->len = t->len;
    w->tl = t->text_len;
    w->n = t->n;
    w->text_cap = t->text_cap;
    w->cap = t->cap;
}

static inline void writer_store(const tok_writer *w, ps_tokens *t)
{
    t->text_len = w->tl;
    t->n = w->n;
}

static inline void writer_push(tok_writer *w, size_t start)
{
    w->off[w->n] = (uint32_t)start;
    w->len[w->n] = (uint32_t)(w->tl - start);
    w->text[w->tl++] = '\0';
    w->n++;
}

/* Tokenize NFKC-normalized, lowercased UTF-16 text into out (already reset). */
static int tokenize16(const UChar *s, int32_t n, ps_tokens *out)
{
    tok_writer w;
    size_t word = SIZE_MAX; /* text offset where the open word token starts */
    UChar32 prev = -1;      /* previous code point when it was CJK: left half of a bigram */
    int32_t i = 0;
    writer_load(&w, out);
    while (i < n) {
        UChar32 c;
        U16_NEXT(s, i, n, c);
        int cls = classify(c);
        /* one extra byte and token for closing a word at the end */
        if (w.text_cap - w.tl < CP_MAX_TEXT + 1 || w.cap - w.n < CP_MAX_TOKENS + 1) {
            writer_store(&w, out);
            int rc = tokens_grow(out, CP_MAX_TEXT + 1, CP_MAX_TOKENS + 1);
            if (rc) return rc;
            writer_load(&w, out);
        }
        if (cls == C_WORD) {
            if (word == SIZE_MAX) word = w.tl;
            w.tl += put_utf8(w.text + w.tl, c);
            prev = -1;
            continue;
        }
        if (word != SIZE_MAX) {
            writer_push(&w, word);
            word = SIZE_MAX;
        }
        if (cls == C_CJK) {
            size_t start;
            if (prev >= 0) {
                start = w.tl;
                w.tl += put_utf8(w.text + w.tl, prev);
                w.tl += put_utf8(w.text + w.tl, c);
                writer_push(&w, start);
            }
            start = w.tl;
            w.tl += put_utf8(w.text + w.tl, c);
            writer_push(&w, start);
            prev = c;
        } else {
            if (cls == C_EMOJI) {
                size_t start = w.tl;
                w.tl += put_utf8(w.text + w.tl, c);
                writer_push(&w, start);
            }
            prev = -1;
        }
    }
    if (word != SIZE_MAX) writer_push(&w, word); /* room reserved in the loop */
    writer_store(&w, out);
    return 0;
}

/* Pure ASCII: words are runs of [A-Za-z0-9], lowercased on the way into the token list.
 * One reservation covers the worst case (every other byte a one-letter token). */
static int tokenize_ascii(const uint8_t *s, size_t len, ps_tokens *out)
{
    size_t i = 0;
    int rc = tokens_reserve(out, len + len / 2 + 1, len / 2 + 1);
    if (rc) return rc;
    while (i < len) {
        while (i < len && !ascii_word[s[i]]) i++;
        if (i == len) break;
        size_t start = out->text_len;
        char *p = out->text + start;
        size_t k = 0;
        for (; i < len && ascii_word[s[i]]; i++, k++) {
            uint8_t b = s[i];
            p[k] = (char)(b >= 'A' && b <= 'Z' ? b | 0x20 : b);
        }
        out->text_len += k;
        tokens_push(out, start);
    }
    return 0;
}

/* ---- analyzer ------------------------------------------------------------------------ */

ps_analyzer_t *ps_analyzer_new(ps_err *err)
{
    UErrorCode st = U_ZERO_ERROR;
    const UNormalizer2 *nfkc = unorm2_getNFKCInstance(&st);
    if (U_FAILURE(st)) {
        ps_err_set(err, PS_EINTERNAL, "analyzer: ICU NFKC data unavailable: %s", u_errorName(st));
        return NULL;
    }
    ps_analyzer_t *a = ps_calloc(1, sizeof *a);
    if (!a) {
        ps_err_set(err, PS_ENOMEM, "analyzer: out of memory");
        return NULL;
    }
    a->nfkc = nfkc;
    return a;
}

void ps_analyzer_free(ps_analyzer_t *a)
{
    if (!a) return;
    ps_free(a->src);
    ps_free(a->norm);
    ps_free(a->low);
    ps_free(a);
}

/* Make *buf hold at least `need` units; ICU lengths are int32_t, hence the cap. */
static int u16_reserve(UChar **buf, int32_t *cap, size_t need)
{
    if (need <= (size_t)*cap) return 0;
    if (need > INT32_MAX) return PS_ETOOBIG;
    size_t c = *cap ? (size_t)*cap * 2 : 256;
    if (c < need) c = need;
    if (c > INT32_MAX) c = INT32_MAX;
    UChar *p = ps_realloc(*buf, c * sizeof *p);
    if (!p) return PS_ENOMEM;
    *buf = p;
    *cap = (int32_t)c;
    return 0;
}

/* Map an ICU failure on a buffer we could not grow further. */
static int icu_fail(UErrorCode st)
{
    return st == U_MEMORY_ALLOCATION_ERROR                                      ? PS_ENOMEM
           : (st == U_BUFFER_OVERFLOW_ERROR || st == U_INDEX_OUTOFBOUNDS_ERROR) ? PS_ETOOBIG
                                                                                : PS_EINTERNAL;
}

/* NFKC of src[0..n): returns the text to lowercase in *res (src itself when it is already
 * normalized, which a quick check proves for most Han and kana text). */
static int nfkc16(ps_analyzer_t *a, int32_t n, const UChar **res, int32_t *res_n)
{
    UErrorCode st = U_ZERO_ERROR;
    int32_t span = unorm2_spanQuickCheckYes(a->nfkc, a->src, n, &st);
    if (U_FAILURE(st)) return icu_fail(st);
    if (span == n) {
        *res = a->src;
        *res_n = n;
        return 0;
    }
    /* NFKC can lengthen text (U+FDFA is 18 characters), so allow for some growth and retry
     * with the size ICU asks for. */
    size_t want = (size_t)n + n / 4 + 16;
    for (;;) {
        int rc = u16_reserve(&a->norm, &a->norm_cap, want);
        if (rc) return rc;
        memcpy(a->norm, a->src, (size_t)span * sizeof(UChar));
        st = U_ZERO_ERROR;
        int32_t m = unorm2_normalizeSecondAndAppend(a->nfkc, a->norm, span, a->norm_cap,
                                                    a->src + span, n - span, &st);
        if (U_SUCCESS(st)) { /* "not terminated" is fine: we pass lengths, not NULs */
            *res = a->norm;
            *res_n = m;
            return 0;
        }
        if (st != U_BUFFER_OVERFLOW_ERROR || a->norm_cap == INT32_MAX) return icu_fail(st);
        want = (size_t)a->norm_cap * 2;
        if ((size_t)m + 1 > want) want = (size_t)m + 1;
    }
}

/* 1 if no code unit of s[0..n) can change under root-locale lowercasing: ASCII other than
 * A-Z, Latin-1 punctuation, general punctuation, arrows, symbols, dingbats, CJK symbols,
 * kana, Han, Hangul syllables, variation selectors and every code point from U+1F000 (emoji,
 * Han extensions). Root-locale lowercasing is context-free except for capital sigma, which is
 * not in the set. Typical Chinese fields pass, which saves u_strToLower's per-character work;
 * test_analyzer checks every code point of the set against ICU. */
static int lower_is_identity(const UChar *s, int32_t n)
{
    for (int32_t i = 0; i < n; i++) {
        UChar u = s[i];
        if (u < 0xC0) {
            if (u >= 'A' && u <= 'Z') return 0;
        } else if (!((u >= 0x3000 && u <= 0x9FFF) || (u >= 0xD83C && u <= 0xDFFF) ||
                     (u >= 0x2000 && u <= 0x20FF) || (u >= 0x2190 && u <= 0x23FF) ||
                     (u >= 0x2500 && u <= 0x2BFF) || (u >= 0xAC00 && u <= 0xD7A3) ||
                     (u >= 0xFE00 && u <= 0xFE6F))) {
            return 0;
        }
    }
    return 1;
}

/* Root-locale full lowercase of s[0..n): *res is s itself when nothing would change, else
 * a->low. */
static int lower16(ps_analyzer_t *a, const UChar *s, int32_t n, const UChar **res, int32_t *res_n)
{
    size_t want = (size_t)n + 16;
    if (lower_is_identity(s, n)) {
        *res = s;
        *res_n = n;
        return 0;
    }
    for (;;) {
        int rc = u16_reserve(&a->low, &a->low_cap, want);
        if (rc) return rc;
        UErrorCode st = U_ZERO_ERROR;
        int32_t m = u_strToLower(a->low, a->low_cap, s, n, "", &st);
        if (U_SUCCESS(st)) {
            *res = a->low;
            *res_n = m;
            return 0;
        }
        if (st != U_BUFFER_OVERFLOW_ERROR || a->low_cap == INT32_MAX) return icu_fail(st);
        want = (size_t)a->low_cap * 2;
        if ((size_t)m + 1 > want) want = (size_t)m + 1;
    }
}

static int analyze_unicode(ps_analyzer_t *a, const uint8_t *s, size_t len, const char *what,
                           ps_tokens *out, ps_err *err)
{
    size_t bad = 0;
    const UChar *nf, *low;
    int32_t n, nf_n, low_n;
    int rc = u16_reserve(&a->src, &a->src_cap, len);
    if (rc) goto fail;
    n = utf8_to_utf16(s, len, a->src, &bad);
    if (n < 0) return ps_err_set(err, PS_EUTF8, "%s: invalid UTF-8 at byte offset %zu", what, bad);
    if ((rc = nfkc16(a, n, &nf, &nf_n)) != 0) goto fail;
    if ((rc = lower16(a, nf, nf_n, &low, &low_n)) != 0) goto fail;
    if ((rc = tokenize16(low, low_n, out)) != 0) goto fail;
    return 0;
fail:
    return ps_err_set(err, rc, "%s: %s while analyzing %zu bytes", what, ps_strerror(rc), len);
}

int ps_analyze(ps_analyzer_t *a, const char *text, size_t len, const char *what, ps_tokens *out,
               ps_err *err)
{
    const uint8_t *s = (const uint8_t *)text;
    int rc;
    if (!what) what = "text";
    if (!out) return ps_err_set(err, PS_EINVAL, "%s: no token list", what);
    out->n = 0;
    out->text_len = 0;
    if (!a) return ps_err_set(err, PS_EINVAL, "%s: no analyzer", what);
    if (!s && len) return ps_err_set(err, PS_EINVAL, "%s: NULL text of length %zu", what, len);
    if (len == 0) return 0;

    if (ps_utf8_ascii_prefix(s, len) == len) {
        rc = tokenize_ascii(s, len, out);
        if (rc)
            rc =
                ps_err_set(err, rc, "%s: %s while analyzing %zu bytes", what, ps_strerror(rc), len);
    } else {
        rc = analyze_unicode(a, s, len, what, out, err);
    }
    if (rc) { /* never hand back half a token list */
        out->n = 0;
        out->text_len = 0;
    }
    return rc;
}
