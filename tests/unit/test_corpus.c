/*
 * test_corpus.c — the corpus input formats (ps/corpus.h): sticker JSON lines (both field-name
 * families, arrays, OCR confidence shapes, 64-bit ids, every kind of bad line), the streaming
 * JSONL reader (errors carry "<path>:<line>:", reading goes on after a bad or over-long line),
 * the writer (round trip), .npy matrices (round trip, each corrupt header), and the TSV click
 * log (interning, column/id/UTF-8 errors with line numbers). Files live in a mkdtemp directory
 * removed at the end.
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "ps/corpus.h"

static char g_dir[64];

static int group_setup(void **state)
{
    (void)state;
    strcpy(g_dir, "/tmp/test_corpus.XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    DIR *d = opendir(g_dir);
    struct dirent *de;
    char p[512];
    if (!d) return -1;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", g_dir, de->d_name);
        unlink(p);
    }
    closedir(d);
    return rmdir(g_dir);
}

/* Path of `name` in the temp dir (static buffer, one at a time per slot). */
static const char *tpath(const char *name)
{
    static char buf[4][512];
    static int k;
    char *p = buf[k++ & 3];
    snprintf(p, 512, "%s/%s", g_dir, name);
    return p;
}

static const char *write_file(const char *name, const void *data, size_t n)
{
    const char *p = tpath(name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
    return p;
}

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)sz + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)sz, f), (size_t)sz);
    b[sz] = '\0';
    fclose(f);
    *n = (size_t)sz;
    return b;
}

static void parse_ok(const char *json, ps_sticker_rec *r)
{
    ps_err e = {0, ""};
    int rc = ps_sticker_parse(json, strlen(json), r, &e);
    if (rc) fail_msg("parse of %s failed: %s", json, e.msg);
}

static void assert_field(const ps_sticker_rec *r, int f, const char *want)
{
    assert_non_null(r->field[f]);
    assert_string_equal(r->field[f], want);
    assert_int_equal(r->field_len[f], strlen(want));
}

/* Parse must fail with `code` and a message containing `needle`; out must hold nothing. */
static void parse_fails_n(const char *json, size_t len, int code, const char *needle)
{
    ps_sticker_rec r;
    ps_err e = {0, ""};
    memset(&r, 0x5a, sizeof r);
    int rc = ps_sticker_parse(json, len, &r, &e);
    if (rc != code) fail_msg("%s: got %d (%s), want %d", json, rc, e.msg, code);
    assert_int_equal(e.code, code);
    if (!strstr(e.msg, needle)) fail_msg("%s: message \"%s\" lacks \"%s\"", json, e.msg, needle);
    for (int f = 0; f < PS_NFIELDS; f++) assert_null(r.field[f]);
    assert_null(r.image);
}

static void parse_fails(const char *json, int code, const char *needle)
{
    parse_fails_n(json, strlen(json), code, needle);
}

/**************************************************************************
 * ps_sticker_parse
 */
static void test_parse_canonical_names(void **state)
{
    (void)state;
    ps_sticker_rec r;
    parse_ok("{\"id\":42,\"ocr\":\"好累\",\"keywords\":\"累 tired\",\"desc\":\"a cat\","
             "\"emotion\":\"sad\",\"queries\":\"so tired\"}",
             &r);
    assert_true(r.id == 42);
    assert_field(&r, PS_F_OCR, "好累");
    assert_field(&r, PS_F_KEYWORDS, "累 tired");
    assert_field(&r, PS_F_DESC, "a cat");
    assert_field(&r, PS_F_EMOTION, "sad");
    assert_field(&r, PS_F_QUERIES, "so tired");
    ps_sticker_rec_clear(&r);
    for (int f = 0; f < PS_NFIELDS; f++) assert_null(r.field[f]);
}

static void test_parse_reference_names(void **state)
{
    (void)state;
    ps_sticker_rec r;
    parse_ok("{\"paddleocr\":\"加油\",\"llava_keywords\":\"k\",\"llava34b_image_desc\":\"d\","
             "\"llava34b_image_emotions\":\"e\",\"raw_queries\":\"q\",\"id\":\"7\","
             "\"ignored\":[1,{\"a\":null}],\"huge\":123456789012345678901234567890}",
             &r);
    assert_true(r.id == 7);
    assert_field(&r, PS_F_OCR, "加油");
    assert_field(&r, PS_F_KEYWORDS, "k");
    assert_field(&r, PS_F_DESC, "d");
    assert_field(&r, PS_F_EMOTION, "e");
    assert_field(&r, PS_F_QUERIES, "q");
    ps_sticker_rec_clear(&r);

    /* Absent fields are "" and never NULL. */
    parse_ok("{\"id\":1}", &r);
    for (int f = 0; f < PS_NFIELDS; f++) assert_field(&r, f, "");
    ps_sticker_rec_clear(&r);
}

static void test_parse_arrays_joined(void **state)
{
    (void)state;
    ps_sticker_rec r;
    parse_ok("{\"id\":1,\"keywords\":[\"a\",\"b\",\"\",\"c d\"],\"queries\":[\"q1\",null,\"q2\"],"
             "\"desc\":null,\"emotion\":[],\"ocr\":[\"x\",\"y\"]}",
             &r);
    assert_field(&r, PS_F_KEYWORDS, "a\nb\nc d");
    assert_field(&r, PS_F_QUERIES, "q1\nq2");
    assert_field(&r, PS_F_DESC, "");
    assert_field(&r, PS_F_EMOTION, "");
    assert_field(&r, PS_F_OCR, "x\ny");
    ps_sticker_rec_clear(&r);
}

static void test_parse_ocr_confidence(void **state)
{
    (void)state;
    static const struct {
        const char *json, *want;
    } cases[] = {
        /* [text, confidence] pairs; 0.7 itself is kept, null confidence is kept */
        {"{\"id\":1,\"ocr\":[[\"keep\",0.9],[\"drop\",0.5],[\"edge\",0.7],[\"nocf\",null],"
         "[\"low\",0.6999]]}",
         "keep\nedge\nnocf"},
        /* objects with each confidence spelling, and one without */
        {"{\"id\":1,\"paddleocr\":[{\"text\":\"a\",\"confidence\":0.95},{\"text\":\"b\","
         "\"conf\":0.1},{\"text\":\"c\",\"score\":0.8},{\"text\":\"d\"},{\"text\":\"e\","
         "\"score\":0}]}",
         "a\nc\nd"},
        /* PaddleOCR raw lines [[box], [text, conf]] */
        {"{\"id\":1,\"ocr\":[[[[0,0],[9,0],[9,9],[0,9]],[\"hi\",0.99]],"
         "[[[0,0],[9,0],[9,9],[0,9]],[\"lo\",0.3]]]}",
         "hi"},
        /* ... with a flat box, and as one page per image (PaddleOCR's return value) */
        {"{\"id\":1,\"ocr\":[[[[[0,0],[1,1]],[\"p1\",0.9]],[[0,0,1,1],[\"p2\",0.2]],"
         "[[0,0,1,1],[\"p3\",0.75]]]]}",
         "p1\np3"},
        /* a page of exactly two pairs is not mistaken for [box, [text, conf]] */
        {"{\"id\":1,\"ocr\":[[[\"a\",0.9],[\"b\",0.8]]]}", "a\nb"},
        /* mixed plain lines and scored lines; all dropped gives "" */
        {"{\"id\":1,\"ocr\":[\"x\",[\"y\",0.95],null]}", "x\ny"},
        {"{\"id\":1,\"ocr\":[[\"y\",0.1]]}", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ps_sticker_rec r;
        parse_ok(cases[i].json, &r);
        assert_field(&r, PS_F_OCR, cases[i].want);
        ps_sticker_rec_clear(&r);
    }
    parse_fails("{\"id\":1,\"ocr\":[[\"t\",\"0.9\"]]}", PS_EPARSE, "ocr");
    parse_fails("{\"id\":1,\"ocr\":[{\"conf\":0.9}]}", PS_EPARSE, "ocr");
    parse_fails("{\"id\":1,\"ocr\":[{\"text\":1,\"conf\":0.9}]}", PS_EPARSE, "ocr");
    parse_fails("{\"id\":1,\"ocr\":[[1,2,3]]}", PS_EPARSE, "ocr");
    parse_fails("{\"id\":1,\"ocr\":[[[[0,0]],[\"t\",0.9,1]]]}", PS_EPARSE, "ocr");
    parse_fails("{\"id\":1,\"paddleocr\":[[[\"a\",0.9]],[[[\"deep\",0.9]]]]}", PS_EPARSE,
                "paddleocr");
    parse_fails("{\"id\":1,\"paddleocr\":[true]}", PS_EPARSE, "paddleocr");
}

static void test_parse_big_ids(void **state)
{
    (void)state;
    static const struct {
        const char *digits;
        uint64_t want;
    } cases[] = {
        {"18446744073709551615", UINT64_MAX},
        {"9223372036854775808", 9223372036854775808ull},
        {"9223372036854775807", 9223372036854775807ull},
        {"18446744073709551614", 18446744073709551614ull},
        {"1234567890123456789", 1234567890123456789ull},
        {"9007199254740993", 9007199254740993ull}, /* 2^53 + 1: no double holds it */
        {"0", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char line[128];
        ps_sticker_rec r;
        snprintf(line, sizeof line, "{\"id\":%s,\"ocr\":\"x\"}", cases[i].digits);
        parse_ok(line, &r);
        assert_true(r.id == cases[i].want);
        ps_sticker_rec_clear(&r);
        snprintf(line, sizeof line, "{\"ocr\":\"x\",\"id\":\"%s\"}", cases[i].digits);
        parse_ok(line, &r);
        assert_true(r.id == cases[i].want);
        ps_sticker_rec_clear(&r);
    }
    ps_sticker_rec r;
    /* The raw scan finds the top-level id: not a nested one, not one inside a string, an
     * escaped key, and the last of duplicates as jansson does. */
    parse_ok("{\"x\":{\"id\":6},\"s\":\"\\\"id\\\":9\",\"id\":18446744073709551615}", &r);
    assert_true(r.id == UINT64_MAX);
    ps_sticker_rec_clear(&r);
    parse_ok("{\"\\u0069d\" : 9223372036854775809 }", &r);
    assert_true(r.id == 9223372036854775809ull);
    ps_sticker_rec_clear(&r);
    parse_ok("{\"id\":1,\"id\":12345678901234567890}", &r);
    assert_true(r.id == 12345678901234567890ull);
    ps_sticker_rec_clear(&r);
    parse_ok("{\"id\":\"007\"}", &r);
    assert_true(r.id == 7);
    ps_sticker_rec_clear(&r);
}

static void test_parse_bad_ids(void **state)
{
    (void)state;
    static const char *bad[] = {
        "{\"id\":-1}",
        "{\"id\":-0}",
        "{\"id\":1.5}",
        "{\"id\":1.0}",
        "{\"id\":1e3}",
        "{\"id\":18446744073709551616}",
        "{\"id\":99999999999999999999999}",
        "{\"id\":-18446744073709551615}",
        "{\"id\":\"-1\"}",
        "{\"id\":\"\"}",
        "{\"id\":\"12a\"}",
        "{\"id\":\" 12\"}",
        "{\"id\":\"1.5\"}",
        "{\"id\":\"18446744073709551616\"}",
        "{\"id\":\"1\\u00002\"}",
        "{\"id\":true}",
        "{\"id\":null}",
        "{\"id\":[1]}",
        "{\"id\":{}}",
        "{\"ocr\":\"x\"}",
        "{}",
        "{\"x\":{\"id\":1}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) parse_fails(bad[i], PS_EPARSE, "id");
    parse_fails("{\"id\":-1}", PS_EPARSE, "negative");
    parse_fails("{\"id\":1.5}", PS_EPARSE, "not an integer");
    parse_fails("{\"id\":18446744073709551616}", PS_EPARSE, "2^64-1");
    parse_fails("{\"ocr\":\"x\"}", PS_EPARSE, "missing");
}

static void test_parse_bad_lines(void **state)
{
    (void)state;
    parse_fails("not json", PS_EPARSE, "JSON");
    parse_fails("", PS_EPARSE, "JSON");
    parse_fails("{\"id\":1", PS_EPARSE, "JSON");
    parse_fails("{\"id\":1} x", PS_EPARSE, "JSON");
    parse_fails_n("{\"id\":1}\0", 9, PS_EPARSE, "JSON");
    parse_fails("[1,2]", PS_EPARSE, "object");
    parse_fails("\"str\"", PS_EPARSE, "object");
    parse_fails("{\"id\":1,\"desc\":5}", PS_EPARSE, "desc");
    parse_fails("{\"id\":1,\"keywords\":[\"a\",3]}", PS_EPARSE, "keywords");
    parse_fails("{\"id\":1,\"keywords\":[[\"a\",0.9]]}", PS_EPARSE, "keywords");
    parse_fails("{\"id\":1,\"emotion\":{\"a\":1}}", PS_EPARSE, "emotion");
    parse_fails("{\"id\":1,\"raw_queries\":true}", PS_EPARSE, "raw_queries");
    parse_fails("{\"id\":1,\"llava34b_image_desc\":1.5}", PS_EPARSE, "llava34b_image_desc");
    /* The same field under both of its names. */
    parse_fails("{\"id\":1,\"ocr\":\"a\",\"paddleocr\":\"b\"}", PS_EPARSE, "ocr");
    /* Invalid UTF-8: stray byte, bad continuation, overlong, surrogate, in a key. */
    parse_fails("{\"id\":1,\"desc\":\"ab\xff\"}", PS_EUTF8, "desc");
    parse_fails("{\"id\":1,\"keywords\":[\"ok\",\"\xc3\x28\"]}", PS_EUTF8, "keywords");
    parse_fails("{\"id\":1,\"emotion\":\"\xc0\xaf\"}", PS_EUTF8, "emotion");
    parse_fails("{\"id\":1,\"ocr\":\"\xed\xa0\x80\"}", PS_EUTF8, "ocr");
    parse_fails("{\"id\":1,\"k\xff\":\"x\"}", PS_EUTF8, "key");
    /* Embedded NUL (\u0000), named by field, in a string, an array, an OCR pair. */
    parse_fails("{\"id\":1,\"keywords\":\"a\\u0000b\"}", PS_EPARSE, "keywords");
    parse_fails("{\"id\":1,\"raw_queries\":[\"a\\u0000\"]}", PS_EPARSE, "raw_queries");
    parse_fails("{\"id\":1,\"ocr\":[[\"\\u0000\",0.9]]}", PS_EPARSE, "ocr");
    /* NUL in an ignored key's value is fine. */
    ps_sticker_rec r;
    parse_ok("{\"id\":1,\"other\":\"a\\u0000b\"}", &r);
    ps_sticker_rec_clear(&r);
    /* NULL arguments. */
    ps_err e;
    assert_int_equal(ps_sticker_parse(NULL, 0, &r, &e), PS_EINVAL);
    assert_int_equal(ps_sticker_parse("{}", 2, NULL, NULL), PS_EINVAL);
    ps_sticker_rec_clear(NULL);
}

/**************************************************************************
 * JSONL reader and writer
 */
static void expect_next(ps_jsonl_t *j, uint64_t id, size_t lineno)
{
    ps_sticker_rec r;
    ps_err e = {0, ""};
    int rc = ps_jsonl_next(j, &r, &e);
    if (rc != 1) fail_msg("want id %llu, got %d: %s", (unsigned long long)id, rc, e.msg);
    assert_true(r.id == id);
    assert_int_equal(ps_jsonl_lineno(j), lineno);
    ps_sticker_rec_clear(&r);
}

static void expect_next_err(ps_jsonl_t *j, const char *path, int code, const char *at,
                            const char *needle)
{
    ps_sticker_rec r;
    ps_err e = {0, ""};
    char head[600];
    int rc = ps_jsonl_next(j, &r, &e);
    if (rc != code) fail_msg("want code %d, got %d: %s", code, rc, e.msg);
    snprintf(head, sizeof head, "%s:%s: ", path, at);
    if (strncmp(e.msg, head, strlen(head)) != 0) fail_msg("\"%s\" lacks \"%s\"", e.msg, head);
    if (!strstr(e.msg, needle)) fail_msg("\"%s\" lacks \"%s\"", e.msg, needle);
    for (int f = 0; f < PS_NFIELDS; f++) assert_null(r.field[f]);
}

static void expect_eof(ps_jsonl_t *j)
{
    ps_sticker_rec r;
    assert_int_equal(ps_jsonl_next(j, &r, NULL), 0);
    assert_int_equal(ps_jsonl_next(j, &r, NULL), 0);
}

/* image: a URL or a relative path, stored as given; null or "" is none; anything else fails
 * naming the field, and in a file the line. */
static void test_parse_image(void **state)
{
    (void)state;
    ps_sticker_rec r;
    parse_ok("{\"id\":1,\"image\":\"https://example.com/s/1.png\"}", &r);
    assert_string_equal(r.image, "https://example.com/s/1.png");
    assert_int_equal(r.image_len, strlen(r.image));
    assert_true(ps_image_is_url(r.image));
    ps_sticker_rec_clear(&r);
    assert_null(r.image);
    parse_ok("{\"id\":2,\"image\":\"ab/2 x.webp\",\"ocr\":\"hi\"}", &r);
    assert_string_equal(r.image, "ab/2 x.webp");
    assert_false(ps_image_is_url(r.image));
    ps_sticker_rec_clear(&r);
    parse_ok("{\"id\":3,\"image\":null}", &r);
    assert_null(r.image);
    assert_int_equal(r.image_len, 0);
    ps_sticker_rec_clear(&r);
    parse_ok("{\"id\":3,\"image\":\"\"}", &r);
    assert_null(r.image);
    ps_sticker_rec_clear(&r);

    static const char *const bad[][2] = {
        {"{\"id\":4,\"image\":5}", "expected a string"},
        {"{\"id\":4,\"image\":[\"a.png\"]}", "expected a string"},
        {"{\"id\":4,\"image\":\"../x.png\"}", "\"..\""},
        {"{\"id\":4,\"image\":\"a/../../x.png\"}", "\"..\""},
        {"{\"id\":4,\"image\":\"a/./x.png\"}", "component"},
        {"{\"id\":4,\"image\":\"a//x.png\"}", "component"},
        {"{\"id\":4,\"image\":\"a/\"}", "component"},
        {"{\"id\":4,\"image\":\"/etc/passwd\"}", "absolute"},
        {"{\"id\":4,\"image\":\"a\\\\b.png\"}", "backslash"},
        {"{\"id\":4,\"image\":\"a\\nb.png\"}", "control byte 0x0a"},
        {"{\"id\":4,\"image\":\"a\\u0000b.png\"}", "control byte 0x00"},
        {"{\"id\":4,\"image\":\"a\\u007fb.png\"}", "control byte 0x7f"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        parse_fails(bad[i][0], PS_EPARSE, bad[i][1]);
        parse_fails(bad[i][0], PS_EPARSE, "field image");
    }
    char line[PS_IMAGE_MAX + 64];
    int n = snprintf(line, sizeof line, "{\"id\":5,\"image\":\"");
    memset(line + n, 'a', PS_IMAGE_MAX + 1);
    strcpy(line + n + PS_IMAGE_MAX + 1, "\"}");
    parse_fails(line, PS_EPARSE, "at most 1024");
    line[n + PS_IMAGE_MAX] = '"'; /* exactly the cap is fine */
    line[n + PS_IMAGE_MAX + 1] = '}';
    line[n + PS_IMAGE_MAX + 2] = '\0';
    parse_ok(line, &r);
    assert_int_equal(r.image_len, PS_IMAGE_MAX);
    ps_sticker_rec_clear(&r);

    static const char text[] = "{\"id\":1,\"image\":\"a/1.png\"}\n"
                               "{\"id\":2,\"image\":\"../../etc/passwd\"}\n";
    const char *p = write_file("images.jsonl", text, sizeof text - 1);
    ps_err e;
    ps_jsonl_t *j = ps_jsonl_open(p, 0, &e);
    assert_non_null(j);
    assert_int_equal(ps_jsonl_next(j, &r, &e), 1);
    assert_string_equal(r.image, "a/1.png");
    ps_sticker_rec_clear(&r);
    assert_int_equal(ps_jsonl_next(j, &r, &e), PS_EPARSE);
    char want[300];
    snprintf(want, sizeof want, "%s:2: field image", p);
    if (!strstr(e.msg, want)) fail_msg("message \"%s\" lacks \"%s\"", e.msg, want);
    ps_jsonl_close(j);

    /* written back as it was read; a bad one is refused */
    ps_sticker_rec w = {.id = 9, .image = "ab/9.png", .image_len = 8};
    char *buf = NULL;
    size_t blen = 0;
    FILE *f = open_memstream(&buf, &blen);
    assert_int_equal(ps_sticker_write(f, &w, &e), 0);
    fclose(f);
    assert_string_equal(buf, "{\"id\":9,\"image\":\"ab/9.png\"}\n");
    free(buf);
    w.image = "../9.png";
    w.image_len = 8;
    f = open_memstream(&buf, &blen);
    assert_int_equal(ps_sticker_write(f, &w, &e), PS_EPARSE);
    fclose(f);
    free(buf);
    assert_non_null(strstr(e.msg, "sticker 9: field image"));
}

static void test_jsonl_bad_line_continues(void **state)
{
    (void)state;
    static const char text[] = "{\"id\":1,\"ocr\":\"a\"}\n"
                               "   \n"
                               "{\"id\":-3}\n"
                               "{\"id\":4,\"desc\":\"d\"}\r\n"
                               "\n"
                               "[\"not an object\"]\n"
                               "{\"id\":7}";
    const char *p = write_file("mid.jsonl", text, sizeof text - 1);
    ps_err e;
    ps_jsonl_t *j = ps_jsonl_open(p, 0, &e);
    assert_non_null(j);
    expect_next(j, 1, 1);
    expect_next_err(j, p, PS_EPARSE, "3", "id");
    expect_next(j, 4, 4);
    expect_next_err(j, p, PS_EPARSE, "6", "object");
    expect_next(j, 7, 7);
    expect_eof(j);
    ps_jsonl_close(j);
    ps_jsonl_close(NULL);

    /* Open errors name the path; absurd caps are refused. */
    const char *missing = tpath("no-such.jsonl");
    assert_null(ps_jsonl_open(missing, 0, &e));
    assert_int_equal(e.code, PS_EIO);
    assert_non_null(strstr(e.msg, missing));
    assert_null(ps_jsonl_open(p, SIZE_MAX, &e));
    assert_int_equal(e.code, PS_EINVAL);
    assert_null(ps_jsonl_open(NULL, 0, NULL));
}

static void test_jsonl_long_lines(void **state)
{
    (void)state;
    enum { CAP = 64 };
    size_t huge = 600000; /* longer than the reader's whole buffer */
    char *text = malloc(huge + 4096), *t = text;
    assert_non_null(text);
    t += sprintf(t, "{\"id\":1}\n");
    t += sprintf(t, "{\"id\":2,\"desc\":\"");
    memset(t, 'x', 200), t += 200;
    t += sprintf(t, "\"}\n{\"id\":3}\n{\"id\":4,\"desc\":\"");
    memset(t, 'y', huge), t += huge;
    t += sprintf(t, "\"}\n{\"id\":5}\n");
    /* exactly CAP bytes, then CAP bytes + '\r': both accepted */
    char exact[CAP + 1];
    int head = snprintf(exact, sizeof exact, "{\"id\":6,\"desc\":\"");
    memset(exact + head, 'z', CAP - head - 2);
    memcpy(exact + CAP - 2, "\"}", 2);
    memcpy(t, exact, CAP), t += CAP, *t++ = '\n';
    memcpy(t, exact, CAP), t += CAP, *t++ = '\r', *t++ = '\n';
    exact[6] = '8';
    memcpy(t, exact, CAP), t += CAP, *t++ = 'w', *t++ = '\n'; /* CAP + 1 */
    t += sprintf(t, "{\"id\":9}\n{\"id\":10,\"desc\":\"");
    memset(t, 'v', 100), t += 100;
    t += sprintf(t, "\"}"); /* over-long last line without a newline */
    const char *p = write_file("long.jsonl", text, (size_t)(t - text));
    free(text);

    ps_err e;
    ps_jsonl_t *j = ps_jsonl_open(p, CAP, &e);
    assert_non_null(j);
    expect_next(j, 1, 1);
    expect_next_err(j, p, PS_ETOOBIG, "2", "line longer than 64 bytes");
    expect_next(j, 3, 3);
    expect_next_err(j, p, PS_ETOOBIG, "4", "line longer than 64 bytes");
    expect_next(j, 5, 5);
    expect_next(j, 6, 6);
    expect_next(j, 6, 7);
    expect_next_err(j, p, PS_ETOOBIG, "8", "longer");
    expect_next(j, 9, 9);
    expect_next_err(j, p, PS_ETOOBIG, "10", "longer");
    expect_eof(j);
    ps_jsonl_close(j);

    /* An over-long line right at the end, without a newline, after a buffer refill. */
    size_t n = 300000;
    char *tail = malloc(n);
    assert_non_null(tail);
    memcpy(tail, "{\"id\":1}\n", 9);
    memset(tail + 9, 'q', n - 9);
    p = write_file("tail.jsonl", tail, n);
    free(tail);
    j = ps_jsonl_open(p, CAP, &e);
    assert_non_null(j);
    expect_next(j, 1, 1);
    expect_next_err(j, p, PS_ETOOBIG, "2", "longer");
    expect_eof(j);
    ps_jsonl_close(j);
}

static void set_field(ps_sticker_rec *r, int f, const char *s)
{
    r->field[f] = (char *)s;
    r->field_len[f] = s ? strlen(s) : 0;
}

static void test_write_read_roundtrip(void **state)
{
    (void)state;
    ps_sticker_rec in[3];
    memset(in, 0, sizeof in);
    in[0].id = UINT64_MAX;
    set_field(&in[0], PS_F_OCR, "quote \" backslash \\ slash / 好累");
    set_field(&in[0], PS_F_KEYWORDS, "a\nb");
    set_field(&in[0], PS_F_DESC, "tab\there \x01 ctrl \x1f\x7f \r\b\f");
    set_field(&in[0], PS_F_EMOTION, "😭 é");
    set_field(&in[0], PS_F_QUERIES, "好累\nso tired");
    in[1].id = 0;
    set_field(&in[1], PS_F_DESC, "x");
    set_field(&in[1], PS_F_OCR, ""); /* empty: left out */
    in[2].id = 9223372036854775808ull;

    const char *p = tpath("rt.jsonl");
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    for (int i = 0; i < 3; i++) assert_int_equal(ps_sticker_write(f, &in[i], NULL), 0);
    assert_int_equal(fclose(f), 0);

    size_t n;
    char *text = slurp(p, &n);
    char *l2 = strchr(text, '\n') + 1;
    assert_string_equal(l2, "{\"id\":0,\"desc\":\"x\"}\n{\"id\":9223372036854775808}\n");
    static const char head[] = "{\"id\":18446744073709551615,\"ocr\":\"quote \\\" backslash";
    assert_memory_equal(text, head, sizeof head - 1);
    free(text);

    ps_err e;
    ps_jsonl_t *j = ps_jsonl_open(p, 0, &e);
    assert_non_null(j);
    for (int i = 0; i < 3; i++) {
        ps_sticker_rec r;
        assert_int_equal(ps_jsonl_next(j, &r, &e), 1);
        assert_true(r.id == in[i].id);
        for (int fi = 0; fi < PS_NFIELDS; fi++) {
            assert_int_equal(r.field_len[fi], in[i].field_len[fi]);
            assert_memory_equal(r.field[fi], in[i].field[fi] ? in[i].field[fi] : "",
                                r.field_len[fi] + (in[i].field[fi] ? 1 : 0));
        }
        ps_sticker_rec_clear(&r);
    }
    expect_eof(j);
    ps_jsonl_close(j);

    /* What cannot be written is refused, naming the field. */
    FILE *null = fopen("/dev/null", "wb");
    assert_non_null(null);
    ps_sticker_rec bad;
    memset(&bad, 0, sizeof bad);
    set_field(&bad, PS_F_DESC, "ab\xff");
    assert_int_equal(ps_sticker_write(null, &bad, &e), PS_EUTF8);
    assert_non_null(strstr(e.msg, "desc"));
    memset(&bad, 0, sizeof bad);
    bad.field[PS_F_KEYWORDS] = "a\0b";
    bad.field_len[PS_F_KEYWORDS] = 3;
    assert_int_equal(ps_sticker_write(null, &bad, &e), PS_EINVAL);
    assert_non_null(strstr(e.msg, "keywords"));
    memset(&bad, 0, sizeof bad);
    bad.field_len[PS_F_QUERIES] = 2;
    assert_int_equal(ps_sticker_write(null, &bad, &e), PS_EINVAL);
    assert_non_null(strstr(e.msg, "queries"));
    assert_int_equal(ps_sticker_write(NULL, &bad, NULL), PS_EINVAL);
    fclose(null);

    /* A write error is PS_EIO. */
    FILE *full = fopen("/dev/full", "wb");
    if (full) {
        setvbuf(full, NULL, _IONBF, 0);
        assert_int_equal(ps_sticker_write(full, &in[0], &e), PS_EIO);
        fclose(full);
    }
}

/**************************************************************************
 * .npy
 */

/* A .npy file with the given version and dict, padded to 64, and `nbytes` of data. */
static const char *make_npy(const char *name, int major, const char *dict, size_t nbytes)
{
    char buf[1024];
    size_t pre = major == 1 ? 10 : 12, dn = strlen(dict);
    size_t total = (pre + dn + 1 + 63) / 64 * 64, hlen = total - pre;
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (char)major;
    buf[7] = 0;
    buf[8] = (char)(hlen & 0xff);
    buf[9] = (char)(hlen >> 8);
    if (major != 1) buf[10] = buf[11] = 0;
    memcpy(buf + pre, dict, dn);
    memset(buf + pre + dn, ' ', total - pre - dn - 1);
    buf[total - 1] = '\n';
    for (size_t i = 0; i < nbytes; i++) buf[total + i] = (char)i;
    return write_file(name, buf, total + nbytes);
}

static void npy_fails(const char *path, int code, const char *needle)
{
    ps_matrix m;
    ps_err e = {0, ""};
    memset(&m, 0x5a, sizeof m);
    int rc = ps_npy_read(path, &m, &e);
    if (rc != code) fail_msg("%s: got %d (%s), want %d", path, rc, e.msg, code);
    if (!strstr(e.msg, needle)) fail_msg("\"%s\" lacks \"%s\"", e.msg, needle);
    assert_null(m.data);
    assert_int_equal(m.rows, 0);
}

static void test_npy_roundtrip(void **state)
{
    (void)state;
    float data[15];
    for (int i = 0; i < 15; i++) data[i] = (float)i * 0.25f - 1.0f;
    data[3] = -0.0f;
    data[7] = 3.4028235e38f;
    const char *p = tpath("m.npy");
    ps_err e;
    assert_int_equal(ps_npy_write(p, data, 3, 5, &e), 0);

    size_t n;
    char *raw = slurp(p, &n);
    assert_memory_equal(raw, "\x93NUMPY\x01\x00", 8);
    size_t hlen = (size_t)(unsigned char)raw[8] | (size_t)(unsigned char)raw[9] << 8;
    assert_int_equal((10 + hlen) % 64, 0);
    assert_int_equal(raw[10 + hlen - 1], '\n');
    assert_int_equal(n, 10 + hlen + sizeof data);
    assert_non_null(strstr(raw + 10, "'shape': (3, 5)"));
    free(raw);

    ps_matrix m;
    assert_int_equal(ps_npy_read(p, &m, &e), 0);
    assert_int_equal(m.rows, 3);
    assert_int_equal(m.cols, 5);
    assert_memory_equal(m.data, data, sizeof data);
    ps_matrix_free(&m);
    assert_null(m.data);
    ps_matrix_free(NULL);

    /* An empty matrix round-trips too; no temp file is left behind. */
    assert_int_equal(ps_npy_write(tpath("empty.npy"), NULL, 0, 512, &e), 0);
    assert_int_equal(ps_npy_read(tpath("empty.npy"), &m, &e), 0);
    assert_int_equal(m.rows, 0);
    assert_int_equal(m.cols, 512);
    ps_matrix_free(&m);
    DIR *d = opendir(g_dir);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) assert_null(strstr(de->d_name, ".tmp."));
    closedir(d);

    /* Versions 2.0 and 3.0, keys in another order, double quotes, Python 2 longs. */
    p = make_npy("v2.npy", 2, "{'shape': (2, 3), 'fortran_order': False, 'descr': '<f4'}", 24);
    assert_int_equal(ps_npy_read(p, &m, &e), 0);
    assert_int_equal(m.rows, 2);
    assert_int_equal(m.cols, 3);
    unsigned char want[4] = {4, 5, 6, 7};
    assert_memory_equal(&m.data[1], want, 4);
    ps_matrix_free(&m);
    p = make_npy("v3.npy", 3,
                 "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (1L, 2L,)}", 8);
    assert_int_equal(ps_npy_read(p, &m, &e), 0);
    assert_int_equal(m.rows, 1);
    assert_int_equal(m.cols, 2);
    ps_matrix_free(&m);

    /* Write errors. */
    assert_int_equal(ps_npy_write(tpath("nodir/x.npy"), data, 3, 5, &e), PS_EIO);
    assert_int_equal(ps_npy_write(p, NULL, 3, 5, &e), PS_EINVAL);
    assert_int_equal(ps_npy_write(p, data, SIZE_MAX / 2, 4, &e), PS_EINVAL);
}

static void test_npy_corrupt(void **state)
{
    (void)state;
    static const char good[] = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
    ps_matrix m;
    assert_int_equal(ps_npy_read(make_npy("good.npy", 1, good, 24), &m, NULL), 0);
    ps_matrix_free(&m);

    char buf[128];
    memcpy(buf, "\x93NUMPZ\x01\x00\x10\x00", 10);
    memset(buf + 10, ' ', 16);
    npy_fails(write_file("magic.npy", buf, 26), PS_EPARSE, "magic");
    npy_fails(write_file("zero.npy", "", 0), PS_EPARSE, "magic");
    npy_fails(
        make_npy("f8.npy", 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", 48),
        PS_EPARSE, "'<f8'");
    npy_fails(
        make_npy("be.npy", 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", 24),
        PS_EPARSE, "'>f4'");
    npy_fails(
        make_npy("fo.npy", 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24),
        PS_EPARSE, "fortran_order");
    npy_fails(
        make_npy("3d.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), }", 96),
        PS_EPARSE, "3-D");
    npy_fails(
        make_npy("1d.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }", 24),
        PS_EPARSE, "1-D");
    npy_fails(make_npy("trunc.npy", 1, good, 20), PS_EPARSE, "truncated");
    npy_fails(make_npy("trail.npy", 1, good, 28), PS_EPARSE, "trailing");
    npy_fails(make_npy("noshape.npy", 1, "{'descr': '<f4', 'fortran_order': False}", 24), PS_EPARSE,
              "shape");
    npy_fails(make_npy("extra.npy", 1,
                       "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}", 24),
              PS_EPARSE, "'x'");
    npy_fails(make_npy("dup.npy", 1,
                       "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}",
                       24),
              PS_EPARSE, "descr");
    npy_fails(
        make_npy("junk.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)} x", 24),
        PS_EPARSE, "junk");
    npy_fails(make_npy("notdict.npy", 1, "[1, 2]", 0), PS_EPARSE, "dict");
    npy_fails(make_npy("badshape.npy", 1,
                       "{'descr': '<f4', 'fortran_order': False, 'shape': (2, x)}", 24),
              PS_EPARSE, "shape");
    npy_fails(make_npy("ovf.npy", 1,
                       "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, "
                       "4611686018427387904)}",
                       0),
              PS_EPARSE, "overflows");
    npy_fails(make_npy("ovf2.npy", 1,
                       "{'descr': '<f4', 'fortran_order': False, 'shape': "
                       "(99999999999999999999999, 1)}",
                       0),
              PS_EPARSE, "overflows");
    /* header length pointing past the end of the file; unknown version */
    memcpy(buf, "\x93NUMPY\x01\x00\xff\x00{'descr'", 18);
    npy_fails(write_file("hdrtrunc.npy", buf, 18), PS_EPARSE, "truncated header");
    memcpy(buf, "\x93NUMPY\x04\x00\x10\x00", 10);
    npy_fails(write_file("v4.npy", buf, 26), PS_EPARSE, "version 4.0");
    memcpy(buf, "\x93NUMPY\x02\x00\x00\x00\x00\x01", 12);
    npy_fails(write_file("hdrhuge.npy", buf, 12), PS_EPARSE, "too long");
    npy_fails(tpath("missing.npy"), PS_EIO, "missing.npy");
    npy_fails(g_dir, PS_EIO, "regular");
}

/**************************************************************************
 * Click log
 */
static void test_clicklog_parse(void **state)
{
    (void)state;
    static const char text[] = "alice\t好累\t18446744073709551615\n"
                               "bob\tthumbs up\t1\r\n"
                               "\n"
                               "alice\tthumbs up\t2\n"
                               "alice\t好累\t3";
    ps_clicklog log;
    ps_err e;
    int rc = ps_clicklog_read(write_file("c.tsv", text, sizeof text - 1), &log, &e);
    if (rc) fail_msg("%s", e.msg);
    assert_int_equal(log.n, 4);
    assert_int_equal(log.nusers, 2);
    assert_string_equal(log.users[0], "alice");
    assert_string_equal(log.users[1], "bob");
    assert_int_equal(log.nqueries, 2);
    assert_string_equal(log.queries[0], "好累");
    assert_string_equal(log.queries[1], "thumbs up");
    static const uint32_t wu[] = {0, 1, 0, 0}, wq[] = {0, 1, 1, 0};
    static const uint64_t ws[] = {UINT64_MAX, 1, 2, 3};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(log.user[i], wu[i]);
        assert_int_equal(log.query[i], wq[i]);
        assert_true(log.sticker[i] == ws[i]);
    }
    /* Adding to a log that was read keeps interning against it. */
    assert_int_equal(ps_clicklog_add(&log, "bob", "好累", 9, &e), 0);
    assert_int_equal(log.n, 5);
    assert_int_equal(log.nusers, 2);
    assert_int_equal(log.user[4], 1);
    assert_int_equal(log.query[4], 0);
    ps_clicklog_free(&log);
    assert_int_equal(log.n, 0);
    assert_null(log.users);
    ps_clicklog_free(&log); /* zeroed: fine */
    ps_clicklog_free(NULL);

    /* Empty file: an empty log. */
    assert_int_equal(ps_clicklog_read(write_file("empty.tsv", "", 0), &log, &e), 0);
    assert_int_equal(log.n, 0);
    ps_clicklog_free(&log);
}

static void clicklog_fails(const char *name, const char *text, size_t n, int code, const char *line,
                           const char *needle)
{
    ps_clicklog log;
    ps_err e = {0, ""};
    char head[600];
    const char *p = write_file(name, text, n);
    memset(&log, 0x5a, sizeof log);
    int rc = ps_clicklog_read(p, &log, &e);
    if (rc != code) fail_msg("%s: got %d (%s), want %d", name, rc, e.msg, code);
    snprintf(head, sizeof head, "%s:%s: ", p, line);
    if (strncmp(e.msg, head, strlen(head)) != 0) fail_msg("\"%s\" lacks \"%s\"", e.msg, head);
    if (!strstr(e.msg, needle)) fail_msg("\"%s\" lacks \"%s\"", e.msg, needle);
    assert_int_equal(log.n, 0);
    assert_null(log.users);
    assert_null(log.user);
    assert_null(log.tab);
}

#define CLICKLOG_FAILS(name, lit, code, line, needle)                                              \
    clicklog_fails(name, lit, sizeof(lit) - 1, code, line, needle)

static void test_clicklog_errors(void **state)
{
    (void)state;
    CLICKLOG_FAILS("c2.tsv", "a\tb\t1\nc\td\n", PS_EPARSE, "2", "expected 3 tab-separated columns");
    CLICKLOG_FAILS("c4.tsv", "a\tb\t1\t2\n", PS_EPARSE, "1", "expected 3 tab-separated columns");
    CLICKLOG_FAILS("c1.tsv", "a\tb\t1\n\nabc\n", PS_EPARSE, "3", "expected 3");
    CLICKLOG_FAILS("id1.tsv", "a\tb\t12x\n", PS_EPARSE, "1", "sticker_id");
    CLICKLOG_FAILS("id2.tsv", "a\tb\t1\na\tb\t-1\n", PS_EPARSE, "2", "sticker_id");
    CLICKLOG_FAILS("id3.tsv", "a\tb\t18446744073709551616\n", PS_EPARSE, "1", "sticker_id");
    CLICKLOG_FAILS("id4.tsv", "a\tb\t\n", PS_EPARSE, "1", "sticker_id");
    CLICKLOG_FAILS("id5.tsv", "a\tb\t 1\n", PS_EPARSE, "1", "sticker_id");
    CLICKLOG_FAILS("eu.tsv", "\tb\t1\n", PS_EPARSE, "1", "empty user");
    CLICKLOG_FAILS("eq.tsv", "a\tb\t1\na\t\t1\n", PS_EPARSE, "2", "empty query");
    CLICKLOG_FAILS("u8u.tsv", "a\xff\tb\t1\n", PS_EUTF8, "1", "user");
    CLICKLOG_FAILS("u8q.tsv", "a\tb\t1\na\tb\xc0\xaf\t1\n", PS_EUTF8, "2", "query");
    CLICKLOG_FAILS("nul.tsv", "a\0b\tq\t1\n", PS_EPARSE, "1", "NUL");

    size_t n = 70000;
    char *big = malloc(n + 64);
    assert_non_null(big);
    memcpy(big, "ok\tq\t1\n", 7);
    memset(big + 7, 'x', n);
    memcpy(big + 7 + n, "\tq\t1\n", 5);
    clicklog_fails("long.tsv", big, n + 12, PS_ETOOBIG, "2", "line longer than 65536 bytes");
    free(big);

    ps_clicklog log;
    ps_err e;
    assert_int_equal(ps_clicklog_read(tpath("missing.tsv"), &log, &e), PS_EIO);
    assert_non_null(strstr(e.msg, "missing.tsv"));
    assert_int_equal(ps_clicklog_read(NULL, &log, &e), PS_EINVAL);
}

static void test_clicklog_add_interning(void **state)
{
    (void)state;
    ps_clicklog log = {0};
    ps_err e;
    char u[32], q[32];
    for (int i = 0; i < 20000; i++) {
        snprintf(u, sizeof u, "u%d", i % 37);
        snprintf(q, sizeof q, "查询%d", (i * 7) % 1000);
        assert_int_equal(ps_clicklog_add(&log, u, q, (uint64_t)i, &e), 0);
    }
    assert_int_equal(log.n, 20000);
    assert_int_equal(log.nusers, 37);
    assert_int_equal(log.nqueries, 1000);
    for (int i = 0; i < 20000; i++) {
        snprintf(u, sizeof u, "u%d", i % 37);
        snprintf(q, sizeof q, "查询%d", (i * 7) % 1000);
        assert_string_equal(log.users[log.user[i]], u);
        assert_string_equal(log.queries[log.query[i]], q);
        assert_true(log.sticker[i] == (uint64_t)i);
    }
    assert_string_equal(log.users[5], "u5"); /* first-appearance order */

    /* Bad arguments change nothing. */
    assert_int_equal(ps_clicklog_add(&log, NULL, "q", 1, &e), PS_EINVAL);
    assert_non_null(strstr(e.msg, "user"));
    assert_int_equal(ps_clicklog_add(&log, "u", "", 1, &e), PS_EINVAL);
    assert_non_null(strstr(e.msg, "query"));
    assert_int_equal(ps_clicklog_add(&log, "u\xff", "q", 1, &e), PS_EUTF8);
    assert_int_equal(ps_clicklog_add(NULL, "u", "q", 1, NULL), PS_EINVAL);
    assert_int_equal(log.n, 20000);
    assert_int_equal(log.nusers, 37);
    ps_clicklog_free(&log);

    /* A log filled by hand (no tables yet) interns against its own strings. */
    memset(&log, 0, sizeof log);
    log.n = 1;
    log.user = malloc(sizeof *log.user);
    log.query = malloc(sizeof *log.query);
    log.sticker = malloc(sizeof *log.sticker);
    log.users = malloc(sizeof *log.users);
    log.queries = malloc(sizeof *log.queries);
    assert_true(log.user && log.query && log.sticker && log.users && log.queries);
    log.users[0] = strdup("me");
    log.queries[0] = strdup("hi");
    log.nusers = log.nqueries = 1;
    log.user[0] = log.query[0] = 0;
    log.sticker[0] = 5;
    assert_int_equal(ps_clicklog_add(&log, "you", "hi", 6, &e), 0);
    assert_int_equal(ps_clicklog_add(&log, "me", "yo", 7, &e), 0);
    assert_int_equal(log.n, 3);
    assert_int_equal(log.nusers, 2);
    assert_int_equal(log.nqueries, 2);
    assert_int_equal(log.user[2], 0);
    assert_int_equal(log.query[1], 0);
    ps_clicklog_free(&log);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_canonical_names),
        cmocka_unit_test(test_parse_reference_names),
        cmocka_unit_test(test_parse_arrays_joined),
        cmocka_unit_test(test_parse_ocr_confidence),
        cmocka_unit_test(test_parse_big_ids),
        cmocka_unit_test(test_parse_bad_ids),
        cmocka_unit_test(test_parse_bad_lines),
        cmocka_unit_test(test_parse_image),
        cmocka_unit_test(test_jsonl_bad_line_continues),
        cmocka_unit_test(test_jsonl_long_lines),
        cmocka_unit_test(test_write_read_roundtrip),
        cmocka_unit_test(test_npy_roundtrip),
        cmocka_unit_test(test_npy_corrupt),
        cmocka_unit_test(test_clicklog_parse),
        cmocka_unit_test(test_clicklog_errors),
        cmocka_unit_test(test_clicklog_add_interning),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
