/*
 * test_analyzer.c — the text analyzer of DESIGN §1.1: UTF-8 checking, NFKC, lowercase, the
 * CJK / emoji / word token rules, ps_tokens_distinct and buffer reuse. Each test pins one
 * behaviour with an exact token list, so a change to any rule fails a named test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>
#include <unicode/utf16.h>

#include "ps/analyzer.h"

typedef struct fixture {
    ps_analyzer_t *a;
    ps_tokens t;
    ps_err err;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f) return -1;
    f->a = ps_analyzer_new(&f->err);
    if (!f->a) {
        free(f);
        return -1;
    }
    ps_tokens_init(&f->t);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    ps_tokens_free(&f->t);
    ps_analyzer_free(f->a);
    free(f);
    return 0;
}

/* The tokens joined by single spaces (tokens never contain a space), in a static buffer. */
static const char *joined(const ps_tokens *t)
{
    static char buf[4096];
    size_t n = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < t->n; i++) {
        const char *tok = t->text + t->off[i];
        assert_int_equal(strlen(tok), t->len[i]); /* NUL-terminated at len */
        assert_true(n + t->len[i] + 2 < sizeof buf);
        if (i) buf[n++] = ' ';
        memcpy(buf + n, tok, t->len[i]);
        n += t->len[i];
        buf[n] = '\0';
    }
    return buf;
}

/* Analyze `in` and require exactly the space-separated token list `want`. */
static void check(fixture *f, const char *in, const char *want)
{
    int rc = ps_analyze(f->a, in, strlen(in), "test", &f->t, &f->err);
    assert_int_equal(rc, 0);
    assert_string_equal(joined(&f->t), want);
}

static void test_design_example(void **state)
{
    fixture *f = *state;
    check(f, "好累~ So TIRED😭", "好 好累 累 so tired 😭");
    assert_int_equal(f->t.n, 6);
}

static void test_ascii_lowercase_and_split(void **state)
{
    check(*state, "Thumbs-UP, good_night!! x2", "thumbs up good night x2");
}

static void test_nfkc_fullwidth(void **state)
{
    check(*state, "ＡＢＣ１２３", "abc123");
    check(*state, "ｈｅｌｌｏ！ＷＯＲＬＤ", "hello world");
}

static void test_nfkc_compat_forms(void **state)
{
    /* ligature, superscript, circled digit, Roman numeral: all compatibility forms */
    check(*state, "ﬁne x² ① Ⅻ", "fine x2 1 xii");
}

static void test_kana_bigrams(void **state)
{
    check(*state, "ありがとう", "あ あり り りが が がと と とう う");
}

static void test_han_kana_one_run(void **state)
{
    /* Han and kana form a single run, so the pair across the script change is a bigram */
    check(*state, "食べる", "食 食べ べ べる る");
}

static void test_halfwidth_katakana(void **state)
{
    /* NFKC widens half-width katakana and composes ｶﾞ into ガ */
    check(*state, "ｱﾘｶﾞﾄｳ", "ア アリ リ リガ ガ ガト ト トウ ウ");
}

static void test_single_han(void **state)
{
    check(*state, "好", "好");
}

static void test_emoji_skin_tone(void **state)
{
    check(*state, "👍🏽", "👍");
    check(*state, "👍🏽👍", "👍 👍");
}

static void test_emoji_zwj_sequence(void **state)
{
    check(*state, "👨‍👩‍👧", "👨 👩 👧");
}

static void test_emoji_variation_selector(void **state)
{
    check(*state, "❤️", "❤");
    check(*state, "❤️love", "❤ love");
}

static void test_emoji_breaks_words_and_runs(void **state)
{
    check(*state, "abc😭def", "abc 😭 def");
    check(*state, "好😭累", "好 😭 累");
    check(*state, "😭😭", "😭 😭");
}

static void test_mixed_scripts(void **state)
{
    check(*state, "ok好的123abc", "ok 好 好的 的 123abc");
    check(*state, "2024年加油!Go", "2024 年 年加 加 加油 油 go");
}

static void test_cjk_compatibility_ideograph(void **state)
{
    /* U+F900 normalizes to U+8C48; U+FA0E has no decomposition and stays, still Han */
    check(*state, "\xEF\xA4\x80", "\xE8\xB1\x88");
    check(*state, "\xEF\xA8\x8E\xEF\xA8\x8E", "\xEF\xA8\x8E \xEF\xA8\x8E\xEF\xA8\x8E \xEF\xA8\x8E");
}

static void test_cjk_extension_b(void **state)
{
    /* U+20000 U+20001: supplementary-plane Han, surrogate pairs inside */
    check(*state, "𠀀𠀁", "𠀀 𠀀𠀁 𠀁");
    check(*state, "a𠀀b", "a 𠀀 b");
}

static void test_latin_accents(void **state)
{
    check(*state, "Café", "café");
    check(*state, "Cafe\xCC\x81", "café"); /* decomposed é is composed by NFKC */
    check(*state, "ÉCOLE Ærø", "école ærø");
}

static void test_full_case_mapping(void **state)
{
    /* root-locale full lowercase: a word-final capital sigma becomes final sigma */
    check(*state, "ΟΔΟΣ", "οδος");
}

static void test_other_letters_are_words(void **state)
{
    check(*state, "안녕하세요 Привет", "안녕하세요 привет");
}

static void test_digits(void **state)
{
    check(*state, "123 4.56 ٣٤", "123 4 56 ٣٤");
    check(*state, "１２", "12");
}

/* ---- reference analyzer: ICU with no shortcuts, DESIGN §1.1 spelled out --------------- */

static int ref_class(UChar32 c) /* 0 separator, 1 word, 2 CJK, 3 emoji */
{
    if ((c >= 0x3400 && c <= 0x4DBF) || (c >= 0x4E00 && c <= 0x9FFF) ||
        (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x20000 && c <= 0x2FFFF) ||
        (c >= 0x3040 && c <= 0x30FF))
        return 2;
    if ((c >= 0x2600 && c <= 0x27BF) || (c >= 0x2B00 && c <= 0x2BFF) ||
        (c >= 0x1F000 && c <= 0x1F3FA) || (c >= 0x1F400 && c <= 0x1FAFF))
        return 3;
    int gc = u_charType(c);
    return (gc == U_UPPERCASE_LETTER || gc == U_LOWERCASE_LETTER || gc == U_TITLECASE_LETTER ||
            gc == U_MODIFIER_LETTER || gc == U_OTHER_LETTER || gc == U_DECIMAL_DIGIT_NUMBER ||
            gc == U_LETTER_NUMBER || gc == U_OTHER_NUMBER);
}

/* Append code point c to buf as UTF-8 (via ICU's converter, independent of the analyzer). */
static void ref_put(char *buf, size_t cap, UChar32 c)
{
    UChar u[2];
    int32_t k = 0, m = 0;
    UErrorCode st = U_ZERO_ERROR;
    size_t n = strlen(buf);
    U16_APPEND_UNSAFE(u, k, c);
    u_strToUTF8(buf + n, (int32_t)(cap - n), &m, u, k, &st);
    assert_true(U_SUCCESS(st) && n + (size_t)m < cap);
}

static void ref_sep(char *buf, size_t cap)
{
    size_t n = strlen(buf);
    assert_true(n + 1 < cap);
    if (n) strcpy(buf + n, " ");
}

/* Tokens of the UTF-16 text `in`, joined by spaces, into buf. */
static void ref_analyze(const UChar *in, int32_t n, char *buf, size_t cap)
{
    UChar nf[256], low[256];
    UErrorCode st = U_ZERO_ERROR;
    const UNormalizer2 *nfkc = unorm2_getNFKCInstance(&st);
    int32_t nn = unorm2_normalize(nfkc, in, n, nf, 256, &st);
    int32_t ln = u_strToLower(low, 256, nf, nn, "", &st);
    int32_t i = 0;
    UChar32 prev = -1;
    int in_word = 0;
    assert_true(U_SUCCESS(st));
    buf[0] = '\0';
    while (i < ln) {
        UChar32 c;
        U16_NEXT(low, i, ln, c);
        int cls = ref_class(c);
        if (cls == 1) {
            if (!in_word) ref_sep(buf, cap);
            ref_put(buf, cap, c);
            in_word = 1;
            prev = -1;
            continue;
        }
        in_word = 0;
        if (cls == 2) {
            if (prev >= 0) {
                ref_sep(buf, cap);
                ref_put(buf, cap, prev);
                ref_put(buf, cap, c);
            }
            ref_sep(buf, cap);
            ref_put(buf, cap, c);
            prev = c;
            continue;
        }
        prev = -1;
        if (cls == 3) {
            ref_sep(buf, cap);
            ref_put(buf, cap, c);
        }
    }
}

/* Every code point alone, and framed by letters that case-map ("Σ" before, "A" after), gives
 * what the no-shortcut reference gives: this covers the ASCII path, the NFKC quick check, the
 * lowercase-is-identity scan and the class ranges for all of Unicode. */
static void test_every_code_point_matches_reference(void **state)
{
    fixture *f = *state;
    char want[1024];
    long mismatches = 0;
    for (UChar32 c = 0; c <= 0x10FFFF; c++) {
        if (U_IS_SURROGATE(c)) continue;
        for (int framed = 0; framed < 2; framed++) {
            UChar u[4];
            char in[16];
            int32_t k = 0, m = 0;
            UErrorCode st = U_ZERO_ERROR;
            if (framed) u[k++] = 0x03A3;
            U16_APPEND_UNSAFE(u, k, c);
            if (framed) u[k++] = 'A';
            u_strToUTF8(in, sizeof in, &m, u, k, &st);
            assert_true(U_SUCCESS(st));
            ref_analyze(u, k, want, sizeof want);
            assert_int_equal(ps_analyze(f->a, in, (size_t)m, "test", &f->t, &f->err), 0);
            if (strcmp(joined(&f->t), want) != 0 && mismatches++ < 10)
                print_error("U+%04X framed=%d: got \"%s\" want \"%s\"\n", (unsigned)c, framed,
                            joined(&f->t), want);
        }
    }
    assert_int_equal(mismatches, 0);
}

static void test_empty_input(void **state)
{
    fixture *f = *state;
    assert_int_equal(ps_analyze(f->a, "", 0, "test", &f->t, &f->err), 0);
    assert_int_equal(f->t.n, 0);
    assert_int_equal(ps_analyze(f->a, NULL, 0, "test", &f->t, &f->err), 0);
    assert_int_equal(f->t.n, 0);
}

static void test_punctuation_only(void **state)
{
    fixture *f = *state;
    const char *in = "!!! ,.~ — 。、… \t\n →【】";
    assert_int_equal(ps_analyze(f->a, in, strlen(in), "test", &f->t, &f->err), 0);
    assert_int_equal(f->t.n, 0);
}

/* The emoji ranges are code-point ranges: symbols inside them (★ U+2605) are emoji tokens. */
static void test_symbol_in_emoji_range(void **state)
{
    check(*state, "★好★", "★ 好 ★");
}

static void test_embedded_nul_separates(void **state)
{
    fixture *f = *state;
    assert_int_equal(ps_analyze(f->a, "ab\0cd", 5, "test", &f->t, &f->err), 0);
    assert_string_equal(joined(&f->t), "ab cd");
}

/* Invalid input: PS_EUTF8, the message names `what` and the offset, no tokens left over. */
static void check_bad(fixture *f, const char *in, size_t len, size_t off)
{
    char want[64];
    check(f, "warm up", "warm up"); /* so a leftover token list would show */
    ps_err_clear(&f->err);
    assert_int_equal(ps_analyze(f->a, in, len, "field desc", &f->t, &f->err), PS_EUTF8);
    assert_int_equal(f->err.code, PS_EUTF8);
    assert_non_null(strstr(f->err.msg, "field desc"));
    snprintf(want, sizeof want, "offset %zu", off);
    assert_non_null(strstr(f->err.msg, want));
    assert_int_equal(f->t.n, 0);
    assert_false(ps_utf8_valid(in, len));
}

static void test_invalid_lone_continuation(void **state)
{
    check_bad(*state, "abc\x80", 4, 3);
}

static void test_invalid_overlong(void **state)
{
    check_bad(*state, "\xC0\xAF", 2, 0);
    check_bad(*state, "x\xE0\x80\xAF", 4, 1);
    check_bad(*state, "\xF0\x80\x80\xAF", 4, 0);
}

static void test_invalid_surrogate(void **state)
{
    check_bad(*state, "好\xED\xA0\x80", 6, 3);
}

static void test_invalid_truncated(void **state)
{
    check_bad(*state, "\xE5\xA5", 2, 0);
    check_bad(*state, "ok \xF0\x9F\x98", 6, 3);
}

static void test_invalid_above_max(void **state)
{
    check_bad(*state, "\xF4\x90\x80\x80", 4, 0); /* U+110000 */
    check_bad(*state, "\xF5\x80\x80\x80", 4, 0);
    check_bad(*state, "\xFF", 1, 0);
}

static void test_invalid_names_default_what(void **state)
{
    fixture *f = *state;
    assert_int_equal(ps_analyze(f->a, "\xFF", 1, NULL, &f->t, &f->err), PS_EUTF8);
    assert_non_null(strstr(f->err.msg, "text"));
    /* err may be NULL */
    assert_int_equal(ps_analyze(f->a, "\xFF", 1, "q", &f->t, NULL), PS_EUTF8);
}

static void test_utf8_valid_boundaries(void **state)
{
    (void)state;
    assert_true(ps_utf8_valid("", 0));
    assert_true(ps_utf8_valid("plain ascii text, long enough for words", 39));
    assert_true(ps_utf8_valid("\x7F", 1));
    assert_true(ps_utf8_valid("\xC2\x80", 2));          /* U+0080 */
    assert_true(ps_utf8_valid("\xDF\xBF", 2));          /* U+07FF */
    assert_true(ps_utf8_valid("\xE0\xA0\x80", 3));      /* U+0800 */
    assert_true(ps_utf8_valid("\xED\x9F\xBF", 3));      /* U+D7FF */
    assert_true(ps_utf8_valid("\xEE\x80\x80", 3));      /* U+E000 */
    assert_true(ps_utf8_valid("\xEF\xBF\xBF", 3));      /* U+FFFF */
    assert_true(ps_utf8_valid("\xF0\x90\x80\x80", 4));  /* U+10000 */
    assert_true(ps_utf8_valid("\xF4\x8F\xBF\xBF", 4));  /* U+10FFFF */
    assert_false(ps_utf8_valid("\xC1\xBF", 2));         /* overlong U+007F */
    assert_false(ps_utf8_valid("\xE0\x9F\xBF", 3));     /* overlong U+07FF */
    assert_false(ps_utf8_valid("\xF0\x8F\xBF\xBF", 4)); /* overlong U+FFFF */
    assert_false(ps_utf8_valid("\xED\xBF\xBF", 3));     /* surrogate U+DFFF */
    assert_false(ps_utf8_valid("\xC2", 1));
    assert_false(ps_utf8_valid("\xC2\x41", 2));
    assert_false(ps_utf8_valid("\xE5\xA5\x41", 3));
    assert_false(ps_utf8_valid("12345678\x80", 9)); /* after a word-at-a-time ASCII block */
}

static void test_invalid_arguments(void **state)
{
    fixture *f = *state;
    assert_int_equal(ps_analyze(NULL, "a", 1, "q", &f->t, &f->err), PS_EINVAL);
    assert_non_null(strstr(f->err.msg, "q"));
    assert_int_equal(ps_analyze(f->a, NULL, 3, "q", &f->t, &f->err), PS_EINVAL);
    assert_int_equal(ps_analyze(f->a, "a", 1, "q", NULL, &f->err), PS_EINVAL);
}

static void test_distinct(void **state)
{
    fixture *f = *state;
    check(f, "哈哈哈", "哈 哈哈 哈 哈哈 哈");
    ps_tokens_distinct(&f->t);
    assert_string_equal(joined(&f->t), "哈 哈哈");
    check(f, "b a B c a A d", "b a b c a a d");
    ps_tokens_distinct(&f->t);
    assert_string_equal(joined(&f->t), "b a c d");
}

static void test_distinct_empty_and_single(void **state)
{
    fixture *f = *state;
    ps_tokens_distinct(&f->t); /* never filled */
    assert_int_equal(f->t.n, 0);
    check(f, "one", "one");
    ps_tokens_distinct(&f->t);
    assert_string_equal(joined(&f->t), "one");
}

/* Enough tokens that the hash set leaves its stack array; checks order and completeness. */
static void test_distinct_long(void **state)
{
    fixture *f = *state;
    enum { NW = 3000, NDISTINCT = 700 };
    char *in = malloc((size_t)NW * 8);
    size_t n = 0;
    assert_non_null(in);
    for (int i = 0; i < NW; i++) n += (size_t)sprintf(in + n, "w%d ", (i * 7919) % NDISTINCT);
    assert_int_equal(ps_analyze(f->a, in, n, "test", &f->t, &f->err), 0);
    assert_int_equal(f->t.n, NW);
    ps_tokens_distinct(&f->t);
    assert_int_equal(f->t.n, NDISTINCT);
    for (int i = 0; i < NDISTINCT; i++) { /* first occurrences, in input order */
        char want[16];
        snprintf(want, sizeof want, "w%d", (i * 7919) % NDISTINCT);
        assert_string_equal(f->t.text + f->t.off[i], want);
    }
    free(in);
}

static void test_reuse_across_calls(void **state)
{
    fixture *f = *state;
    check(f, "好累~ So TIRED😭 and a much longer tail of words here",
          "好 好累 累 so tired 😭 and a much longer tail of words here");
    char *text = f->t.text;
    uint32_t *off = f->t.off;
    size_t text_cap = f->t.text_cap, cap = f->t.cap;
    check(f, "晚安", "晚 晚安 安");
    assert_int_equal(f->t.n, 3);
    check(f, "Good Night", "good night");
    assert_int_equal(f->t.text_len, strlen("good") + strlen("night") + 2);
    /* smaller inputs reuse the buffers instead of reallocating them */
    assert_ptr_equal(f->t.text, text);
    assert_ptr_equal(f->t.off, off);
    assert_int_equal(f->t.text_cap, text_cap);
    assert_int_equal(f->t.cap, cap);
}

/* Two analyzers and two token lists do not share state. */
static void test_independent_lists(void **state)
{
    fixture *f = *state;
    ps_tokens u;
    ps_tokens_init(&u);
    check(f, "好累", "好 好累 累");
    assert_int_equal(ps_analyze(f->a, "ok", 2, "test", &u, &f->err), 0);
    assert_string_equal(joined(&f->t), "好 好累 累");
    assert_string_equal(joined(&u), "ok");
    ps_tokens_free(&u);
    ps_tokens_free(&u); /* freeing twice is harmless: the list is reset */
}

static void test_one_megabyte_mixed(void **state)
{
    fixture *f = *state;
    const char *unit = "好累~ So TIRED😭 ";
    size_t ul = strlen(unit), reps = (1u << 20) / ul, n = 0;
    char *in = malloc(reps * ul);
    assert_non_null(in);
    for (size_t i = 0; i < reps; i++, n += ul) memcpy(in + n, unit, ul);
    assert_int_equal(ps_analyze(f->a, in, n, "test", &f->t, &f->err), 0);
    assert_int_equal(f->t.n, reps * 6);
    assert_string_equal(f->t.text + f->t.off[f->t.n - 1], "😭");
    assert_string_equal(f->t.text + f->t.off[f->t.n - 5], "好累");
    ps_tokens_distinct(&f->t);
    assert_string_equal(joined(&f->t), "好 好累 累 so tired 😭");
    free(in);
}

/* One CJK run a megabyte long: 2n-1 tokens, no recursion or stack buffer to overflow. */
static void test_one_megabyte_single_run(void **state)
{
    fixture *f = *state;
    size_t chars = (1u << 20) / 3;
    char *in = malloc(chars * 3);
    assert_non_null(in);
    for (size_t i = 0; i < chars; i++) memcpy(in + i * 3, (i & 1) ? "累" : "好", 3);
    assert_int_equal(ps_analyze(f->a, in, chars * 3, "test", &f->t, &f->err), 0);
    assert_int_equal(f->t.n, 2 * chars - 1);
    assert_string_equal(f->t.text + f->t.off[2 * chars - 3], "累好");
    free(in);
}

static void test_one_megabyte_ascii_word(void **state)
{
    fixture *f = *state;
    size_t n = 1u << 20;
    char *in = malloc(n);
    assert_non_null(in);
    memset(in, 'Q', n);
    assert_int_equal(ps_analyze(f->a, in, n, "test", &f->t, &f->err), 0);
    assert_int_equal(f->t.n, 1);
    assert_int_equal(f->t.len[0], n);
    assert_int_equal(f->t.text[0], 'q');
    assert_int_equal(f->t.text[n - 1], 'q');
    free(in);
}

/* Every test starts from a fresh analyzer and token list. */
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_design_example),
        T(test_ascii_lowercase_and_split),
        T(test_nfkc_fullwidth),
        T(test_nfkc_compat_forms),
        T(test_kana_bigrams),
        T(test_han_kana_one_run),
        T(test_halfwidth_katakana),
        T(test_single_han),
        T(test_emoji_skin_tone),
        T(test_emoji_zwj_sequence),
        T(test_emoji_variation_selector),
        T(test_emoji_breaks_words_and_runs),
        T(test_mixed_scripts),
        T(test_cjk_compatibility_ideograph),
        T(test_cjk_extension_b),
        T(test_latin_accents),
        T(test_full_case_mapping),
        T(test_other_letters_are_words),
        T(test_digits),
        T(test_every_code_point_matches_reference),
        T(test_empty_input),
        T(test_punctuation_only),
        T(test_symbol_in_emoji_range),
        T(test_embedded_nul_separates),
        T(test_invalid_lone_continuation),
        T(test_invalid_overlong),
        T(test_invalid_surrogate),
        T(test_invalid_truncated),
        T(test_invalid_above_max),
        T(test_invalid_names_default_what),
        T(test_utf8_valid_boundaries),
        T(test_invalid_arguments),
        T(test_distinct),
        T(test_distinct_empty_and_single),
        T(test_distinct_long),
        T(test_reuse_across_calls),
        T(test_independent_lists),
        T(test_one_megabyte_mixed),
        T(test_one_megabyte_single_run),
        T(test_one_megabyte_ascii_word),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
