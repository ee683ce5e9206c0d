/*
 * test_buf.c — ps/buf.h: appends of every kind, growth across many doublings, printf past the
 * free room, the encodings, detach, and the sticky error: under an allocator that fails from
 * the Nth call on, every later append is a no-op, the error is the first one and nothing leaks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "failalloc.h"
#include "ps/alloc.h"
#include "ps/buf.h"
#include "ps/err.h"

/* ---- tests ---- */

static void test_appends(void **state)
{
    (void)state;
    ps_buf b = PS_BUF_INIT;
    ps_buf_str(&b, "abc");
    ps_buf_byte(&b, '-');
    ps_buf_add(&b, "xyz", 2);
    ps_buf_add(&b, NULL, 0);
    ps_buf_printf(&b, "%d:%s", 42, "q");
    assert_int_equal(b.rc, 0);
    assert_int_equal(b.n, 10);
    assert_string_equal(b.p, "abc-xy42:q");
    assert_true(b.cap > b.n);
    ps_buf_reset(&b);
    assert_int_equal(b.n, 0);
    assert_string_equal(b.p, "");
    ps_buf_str(&b, "again");
    assert_string_equal(b.p, "again");
    ps_buf_free(&b);
    assert_null(b.p);
    assert_int_equal(b.n + b.cap + (size_t)b.rc, 0);
}

static void test_growth(void **state)
{
    (void)state;
    ps_buf b = PS_BUF_INIT;
    for (int i = 0; i < 100000; i++) ps_buf_byte(&b, 'a' + i % 26);
    assert_int_equal(b.rc, 0);
    assert_int_equal(b.n, 100000);
    for (int i = 0; i < 100000; i++) assert_int_equal(b.p[i], 'a' + i % 26);
    assert_int_equal(b.p[b.n], '\0');
    ps_buf_free(&b);
}

static void test_printf_past_room(void **state)
{
    (void)state;
    ps_buf b = PS_BUF_INIT;
    char big[5000];
    memset(big, 'z', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    ps_buf_str(&b, "head:"); /* a first allocation with little free room */
    ps_buf_printf(&b, "%s|%u", big, 7u);
    assert_int_equal(b.rc, 0);
    assert_int_equal(b.n, 5 + 4999 + 2);
    assert_memory_equal(b.p, "head:zzz", 8);
    assert_string_equal(b.p + 5 + 4999, "|7");
    ps_buf_printf(&b, "%s", ""); /* nothing */
    assert_int_equal(b.n, 5 + 4999 + 2);
    ps_buf_free(&b);

    ps_buf e = PS_BUF_INIT; /* printf as the first append */
    ps_buf_printf(&e, "%05d", 12);
    assert_string_equal(e.p, "00012");
    ps_buf_free(&e);
}

static void test_encodings(void **state)
{
    (void)state;
    ps_buf b = PS_BUF_INIT;
    ps_buf_u32le(&b, 0x04030201u);
    ps_buf_u64le(&b, 0x0c0b0a0908070605ull);
    ps_buf_f32le(&b, 1.0f);
    ps_buf_varint(&b, 0);
    ps_buf_varint(&b, 127);
    ps_buf_varint(&b, 300);
    ps_buf_varint(&b, UINT64_MAX);
    static const uint8_t want[] = {1,    2,    3,    4,    5,    6,    7,    8,    9,    10,
                                   11,   12,   0x00, 0x00, 0x80, 0x3f, 0x00, 0x7f, 0xac, 0x02,
                                   0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    assert_int_equal(b.n, sizeof want);
    assert_memory_equal(b.p, want, sizeof want);
    ps_buf_free(&b);
}

static void test_detach(void **state)
{
    (void)state;
    ps_buf b = PS_BUF_INIT;
    size_t len = 99;
    char *s = ps_buf_detach(&b, &len); /* empty: "" */
    assert_non_null(s);
    assert_string_equal(s, "");
    assert_int_equal(len, 0);
    ps_free(s);

    ps_buf_str(&b, "owned");
    s = ps_buf_detach(&b, &len);
    assert_string_equal(s, "owned");
    assert_int_equal(len, 5);
    assert_null(b.p);
    assert_int_equal(b.n, 0);
    ps_free(s);
}

/* ps_buf_json_real and ps_buf_json_str write what jansson's json_dumps writes for the same
 * value, byte for byte, and the number reads back to the same bits: doubles of random bit
 * patterns (every exponent), integers, tiny and huge ones; strings with every control byte,
 * quotes, backslashes and UTF-8. Not finite is the sticky PS_EINVAL. */
static void test_json(void **state)
{
    (void)state;
    uint64_t x = 0x9e3779b97f4a7c15ull;
    const double fixed[] = {0.0,
                            -0.0,
                            1.0,
                            -3.0,
                            1e21,
                            1e22,
                            123456789012345680.0,
                            0.5,
                            1e-5,
                            1.5e-300,
                            5e-324,
                            1.7976931348623157e308,
                            22.657885046426987,
                            0.1,
                            100.0,
                            1e100,
                            -2.5e-7};
    for (size_t i = 0; i < 200000 + sizeof fixed / sizeof fixed[0]; i++) {
        double v;
        if (i < sizeof fixed / sizeof fixed[0]) {
            v = fixed[i];
        } else {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            uint64_t bits = i % 2 ? x : (x >> 12) | 0x4030000000000000ull; /* or near 16..32 */
            memcpy(&v, &bits, sizeof v);
            if (!isfinite(v)) continue;
        }
        ps_buf b = PS_BUF_INIT;
        ps_buf_json_real(&b, v);
        json_t *j = json_real(v);
        char *want = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT);
        assert_int_equal(b.rc, 0);
        if (strcmp(b.p, want)) fail_msg("%.17g: %s, jansson %s", v, b.p, want);
        double back = strtod(b.p, NULL);
        assert_memory_equal(&back, &v, sizeof v);
        free(want);
        json_decref(j);
        ps_buf_free(&b);
    }

    char s[256];
    for (int c = 1; c < 256; c++) s[c - 1] = (char)c; /* every byte but NUL, as Latin-1 */
    const char *texts[] = {"",
                           "plain",
                           "好累~ So TIRED😭",
                           "\"quoted\" \\back\\slash",
                           "tab\there\nnew\rline\b\f\x01\x1f\x7f",
                           "a/b"};
    for (size_t i = 0; i <= sizeof texts / sizeof texts[0]; i++) {
        /* the last round: bytes 0x01..0x7f (valid UTF-8, the ASCII ones jansson accepts) */
        const char *t = i < sizeof texts / sizeof texts[0] ? texts[i] : s;
        size_t n = i < sizeof texts / sizeof texts[0] ? strlen(t) : 0x7f;
        ps_buf b = PS_BUF_INIT;
        ps_buf_json_str(&b, t, n);
        json_t *j = json_stringn(t, n);
        assert_non_null(j);
        char *want = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT);
        assert_int_equal(b.rc, 0);
        if (strcmp(b.p, want)) fail_msg("string %zu: %s, jansson %s", i, b.p, want);
        free(want);
        json_decref(j);
        ps_buf_free(&b);
    }

    /* ill-formed UTF-8 (jansson refuses it): each bad byte becomes U+FFFD, the rest stays */
    const struct {
        const char *in, *want;
    } bad[] = {{"a\xff"
                "b",
                "\"a\xEF\xBF\xBD"
                "b\""},
               {"\xE5\xBC", "\"\xEF\xBF\xBD\xEF\xBF\xBD\""},   /* 开 cut after 2 bytes */
               {"\xC0\xAF/", "\"\xEF\xBF\xBD\xEF\xBF\xBD/\""}, /* overlong '/' */
               {"\xED\xA0\x80", "\"\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\""}, /* surrogate */
               {"\xE5\xBC\x80\x80\"", "\"\xE5\xBC\x80\xEF\xBF\xBD\\\"\""}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ps_buf t = PS_BUF_INIT;
        ps_buf_json_str(&t, bad[i].in, strlen(bad[i].in));
        if (strcmp(t.p, bad[i].want)) fail_msg("ill-formed %zu: %s", i, t.p);
        json_error_t je;
        json_t *j = json_loads(t.p, JSON_DECODE_ANY, &je);
        if (!j) fail_msg("ill-formed %zu: not JSON: %s", i, je.text);
        json_decref(j);
        ps_buf_free(&t);
    }

    ps_buf b = PS_BUF_INIT;
    ps_buf_str(&b, "[");
    ps_buf_json_real(&b, NAN);
    assert_int_equal(b.rc, PS_EINVAL);
    ps_buf_json_real(&b, 1.0); /* sticky: nothing more is written */
    assert_int_equal(b.n, 1);
    ps_buf_free(&b);
}

/* Fail at every allocation in turn of a sequence of appends: the first failure sticks, later
 * appends change nothing, the bytes before it are intact and free releases everything. */
static void test_sticky_error(void **state)
{
    (void)state;
    int failed = 0;
    for (long at = 0; at < 64; at++) {
        failing_from(at);
        ps_buf b = PS_BUF_INIT;
        size_t n_at_error = 0;
        for (int i = 0; i < 2000; i++) {
            int before = b.rc;
            if (i % 3 == 0)
                ps_buf_printf(&b, "line %d of many\n", i);
            else if (i % 3 == 1)
                ps_buf_str(&b, "a fixed piece of text\n");
            else
                ps_buf_varint(&b, (uint64_t)i * 1000003u);
            if (!before && b.rc) n_at_error = b.n;
            if (before) { /* a no-op once the error is set */
                assert_int_equal(b.rc, PS_ENOMEM);
                assert_int_equal(b.n, n_at_error);
            }
        }
        if (b.rc) {
            failed++;
            assert_int_equal(b.rc, PS_ENOMEM);
            if (b.p) assert_int_equal(b.p[b.n], '\0');
            assert_null(ps_buf_detach(&b, NULL));
            assert_int_equal(b.rc, PS_ENOMEM); /* detach reports, and keeps, the error */
        }
        ps_buf_free(&b);
        assert_int_equal(live, 0);
        ps_reset_allocators();
    }
    assert_true(failed > 5); /* the growth took several allocations, each was made to fail */

    failing_from(0); /* the error survives reset, goes with free */
    ps_buf b = PS_BUF_INIT;
    ps_buf_str(&b, "x");
    assert_int_equal(b.rc, PS_ENOMEM);
    ps_buf_reset(&b);
    ps_buf_str(&b, "y");
    assert_int_equal(b.rc, PS_ENOMEM);
    assert_int_equal(b.n, 0);
    ps_buf_free(&b);
    assert_int_equal(b.rc, 0);
    ps_reset_allocators();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_appends),
        cmocka_unit_test(test_growth),
        cmocka_unit_test(test_printf_past_room),
        cmocka_unit_test(test_encodings),
        cmocka_unit_test(test_detach),
        cmocka_unit_test(test_json),
        cmocka_unit_test_teardown(test_sticky_error, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
