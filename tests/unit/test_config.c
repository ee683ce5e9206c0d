/*
 * test_config.c — ps/config.h: defaults; precedence flag > environment > file > default;
 * flag forms (--name value, --name=value, bare and --no- bools); the config file (comments,
 * quotes, '_' for '-', CRLF); every error names its flag, variable or file:line (unknown flag
 * and key, repeated key, malformed and out-of-range values, missing value, required setting,
 * stray argument, over-long line, unreadable file); --help generated from the table; --version
 * and its line (ps/version.h); bad tables rejected (reserved names too). Nothing leaks (ASan/LSan).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ps/config.h"
#include "ps/version.h"

static const ps_cfg_opt opts[] = {
    {"listen", PS_CFG_STRING, NULL, "endpoint to bind", PS_CFG_REQUIRED, 0, 0},
    {"workers", PS_CFG_UINT, "2", "worker threads", 0, 1, 64},
    {"max-frame", PS_CFG_UINT, "4194304", "largest frame, bytes", 0, 0, 0},
    {"offset", PS_CFG_INT, "-5", "a signed number", 0, 0, 0},
    {"alpha", PS_CFG_DOUBLE, "0.3", "preference strength", 0, 0, 10},
    {"verbose", PS_CFG_BOOL, "false", "say more", 0, 0, 0},
    {"name", PS_CFG_STRING, "shard", "a name", 0, 0, 0},
};
#define NOPTS (sizeof opts / sizeof opts[0])

static char *noenv[] = {NULL};

/* A temp file holding `text`; the path is written into path (caller unlinks). */
static void write_file(char *path, const char *text)
{
    strcpy(path, "/tmp/ps_test_config_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* Parse argv (NULL-terminated, argv[0] included) with env; return the rc and keep the cfg. */
static int parse(ps_cfg_t **c, char **argv, char **env, ps_err *err)
{
    ps_err_clear(err);
    *c = ps_cfg_new("testd", "A test daemon.", opts, NOPTS, err);
    assert_non_null(*c);
    int argc = 0;
    while (argv[argc]) argc++;
    return ps_cfg_parse(*c, argc, argv, env, err);
}

/* Expect parsing to fail with `code` and a message containing needle. */
static void expect_fail(char **argv, char **env, int code, const char *needle)
{
    ps_cfg_t *c;
    ps_err err;
    int rc = parse(&c, argv, env, &err);
    if (rc != code || !strstr(err.msg, needle))
        fail_msg("got %d \"%s\", want %d naming \"%s\"", rc, err.msg, code, needle);
    ps_cfg_free(c);
}

static void test_defaults(void **state)
{
    (void)state;
    ps_cfg_t *c;
    ps_err err;
    char *argv[] = {"testd", "--listen", "tcp://127.0.0.1:9", NULL};
    assert_int_equal(parse(&c, argv, noenv, &err), 0);
    assert_string_equal(ps_cfg_str(c, "listen"), "tcp://127.0.0.1:9");
    assert_string_equal(ps_cfg_source(c, "listen"), "flag");
    assert_int_equal(ps_cfg_uint(c, "workers"), 2);
    assert_string_equal(ps_cfg_source(c, "workers"), "default");
    assert_int_equal(ps_cfg_uint(c, "max-frame"), 4194304);
    assert_int_equal(ps_cfg_int(c, "offset"), -5);
    assert_true(ps_cfg_double(c, "alpha") == 0.3);
    assert_int_equal(ps_cfg_bool(c, "verbose"), 0);
    assert_string_equal(ps_cfg_str(c, "name"), "shard");
    /* wrong type or unknown name: a programming error, answered with 0 / NULL */
    assert_null(ps_cfg_str(c, "workers"));
    assert_int_equal(ps_cfg_uint(c, "nope"), 0);
    assert_string_equal(ps_cfg_source(c, "nope"), "unset");
    ps_cfg_free(c);
}

static void test_precedence(void **state)
{
    (void)state;
    char path[64];
    write_file(path, "# settings\n"
                     "listen = tcp://file:1\n"
                     "workers = 3\n"
                     "max_frame = 1000   # underscores name the same key\n"
                     "offset = 7\n"
                     "alpha=\"0.5\"\r\n"
                     "\n"
                     "   name = a#b  \n");
    char conf[128];
    snprintf(conf, sizeof conf, "--config=%s", path);
    char *env[] = {"PERSRV_WORKERS=4", "PERSRV_OFFSET=8", "PERSRV_UNRELATED=x",
                   "PERSRV_LISTEN=tcp://env:1", NULL};
    char *argv[] = {"testd", conf, "--workers", "5", "--verbose", NULL};
    ps_cfg_t *c;
    ps_err err;
    assert_int_equal(parse(&c, argv, env, &err), 0);
    assert_int_equal(ps_cfg_uint(c, "workers"), 5); /* flag > env > file */
    assert_string_equal(ps_cfg_source(c, "workers"), "flag");
    assert_int_equal(ps_cfg_int(c, "offset"), 8); /* env > file */
    assert_string_equal(ps_cfg_source(c, "offset"), "env");
    assert_string_equal(ps_cfg_str(c, "listen"), "tcp://env:1");
    assert_int_equal(ps_cfg_uint(c, "max-frame"), 1000); /* file > default */
    assert_string_equal(ps_cfg_source(c, "max-frame"), "file");
    assert_true(ps_cfg_double(c, "alpha") == 0.5);     /* quotes and CRLF stripped */
    assert_string_equal(ps_cfg_str(c, "name"), "a#b"); /* '#' inside a word is no comment */
    assert_int_equal(ps_cfg_bool(c, "verbose"), 1);
    ps_cfg_free(c);

    /* The file named by PERSRV_CONFIG; --name=value; --no-NAME; a bool flag with =. */
    char envconf[128];
    snprintf(envconf, sizeof envconf, "PERSRV_CONFIG=%s", path);
    char *env2[] = {envconf, NULL};
    char *argv2[] = {"testd", "--offset=-9", "--no-verbose", "--alpha=1e-1", NULL};
    assert_int_equal(parse(&c, argv2, env2, &err), 0);
    assert_int_equal(ps_cfg_uint(c, "workers"), 3);
    assert_int_equal(ps_cfg_int(c, "offset"), -9);
    assert_int_equal(ps_cfg_bool(c, "verbose"), 0);
    assert_true(ps_cfg_double(c, "alpha") == 0.1);
    ps_cfg_free(c);
    char *argv3[] = {"testd", "--listen", "x", "--verbose=yes", NULL};
    assert_int_equal(parse(&c, argv3, noenv, &err), 0);
    assert_int_equal(ps_cfg_bool(c, "verbose"), 1);
    ps_cfg_free(c);
    unlink(path);
}

static void test_bad_flags_and_env(void **state)
{
    (void)state;
    char *a1[] = {"testd", "--listen", "x", "--wrokers", "3", NULL};
    expect_fail(a1, noenv, PS_EINVAL, "unknown flag --wrokers");
    char *a2[] = {"testd", "--listen", "x", "--workers", "three", NULL};
    expect_fail(a2, noenv, PS_EINVAL, "--workers: 'three' is not an unsigned integer");
    char *a3[] = {"testd", "--listen", "x", "--workers", "-1", NULL};
    expect_fail(a3, noenv, PS_EINVAL, "--workers: '-1' is not an unsigned integer");
    char *a4[] = {"testd", "--listen", "x", "--workers", "65", NULL};
    expect_fail(a4, noenv, PS_EINVAL, "--workers: 65 is out of range 1..64");
    char *a5[] = {"testd", "--listen", "x", "--workers", NULL};
    expect_fail(a5, noenv, PS_EINVAL, "--workers needs a value");
    char *a6[] = {"testd", "--listen", "x", "--alpha", "nan", NULL};
    expect_fail(a6, noenv, PS_EINVAL, "--alpha: 'nan' is not a finite number");
    char *a7[] = {"testd", "--listen", "x", "--offset", "99999999999999999999", NULL};
    expect_fail(a7, noenv, PS_EINVAL, "--offset: '99999999999999999999' is not an integer");
    char *a8[] = {"testd", "--listen", "x", "--verbose=maybe", NULL};
    expect_fail(a8, noenv, PS_EINVAL, "--verbose: 'maybe' is not a bool");
    char *a9[] = {"testd", "--listen", "x", "stray", NULL};
    expect_fail(a9, noenv, PS_EINVAL, "unexpected argument 'stray'");
    char *a10[] = {"testd", "--workers", "3", NULL};
    expect_fail(a10, noenv, PS_EINVAL, "listen is required");
    char *a11[] = {"testd", "--listen", "x", "--max_frame", "3", NULL};
    expect_fail(a11, noenv, PS_EINVAL, "unknown flag --max_frame");
    char *a12[] = {"testd", "--listen", "x", "--no-workers", NULL};
    expect_fail(a12, noenv, PS_EINVAL, "unknown flag --no-workers");
    char *a13[] = {"testd", "--listen", "x", "--max-frame", " 5", NULL};
    expect_fail(a13, noenv, PS_EINVAL, "--max-frame: ' 5' is not an unsigned integer");
    char *a14[] = {"testd", "--config", "/nonexistent/ps.conf", NULL};
    expect_fail(a14, noenv, PS_EIO, "/nonexistent/ps.conf");
    char *a15[] = {"testd", "--listen", "x", NULL};
    char *env[] = {"PERSRV_WORKERS=0", NULL};
    expect_fail(a15, env, PS_EINVAL, "PERSRV_WORKERS: 0 is out of range");
    char *env2[] = {"PERSRV_MAX_FRAME=4M", NULL};
    expect_fail(a15, env2, PS_EINVAL, "PERSRV_MAX_FRAME: '4M' is not an unsigned integer");
}

static void test_bad_file(void **state)
{
    (void)state;
    static const struct {
        const char *text, *needle;
        int code;
    } cases[] = {
        {"listen = x\n# ok\n\nworkrs = 2\n", ":4: unknown key 'workrs'", PS_EINVAL},
        {"listen = x\nworkers 2\n", ":2: expected 'key = value', got 'workers 2'", PS_EINVAL},
        {"workers = 2\nlisten = x\nworkers = 3\n",
         ":3: key 'workers' repeated (first set on line 1)", PS_EINVAL},
        {"listen = x\n\n\nalpha = 11\n", ":4: alpha: 11 is out of range 0..10", PS_EINVAL},
        {"listen = x\nverbose = sure\n", ":2: verbose: 'sure' is not a bool", PS_EINVAL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[64], flag[128];
        write_file(path, cases[i].text);
        snprintf(flag, sizeof flag, "--config=%s", path);
        char *argv[] = {"testd", flag, NULL};
        ps_cfg_t *c;
        ps_err err;
        int rc = parse(&c, argv, noenv, &err);
        if (rc != cases[i].code || !strstr(err.msg, cases[i].needle) || !strstr(err.msg, path))
            fail_msg("case %zu: got %d \"%s\", want %d naming \"%s\"", i, rc, err.msg,
                     cases[i].code, cases[i].needle);
        ps_cfg_free(c);
        unlink(path);
    }

    /* A line over the cap is an error, not a silent split. */
    size_t n = PS_CFG_MAX_LINE + 100;
    char *big = malloc(n + 32);
    assert_non_null(big);
    strcpy(big, "listen = x\nname = ");
    size_t off = strlen(big);
    memset(big + off, 'a', n);
    strcpy(big + off + n, "\n");
    char path[64], flag[128];
    write_file(path, big);
    free(big);
    snprintf(flag, sizeof flag, "--config=%s", path);
    char *argv[] = {"testd", flag, NULL};
    expect_fail(argv, noenv, PS_ETOOBIG, ":2: line longer than");
    unlink(path);
}

static void test_help(void **state)
{
    (void)state;
    ps_cfg_t *c;
    ps_err err;
    /* --help wins even over errors elsewhere on the line, and skips required checks. */
    char *argv[] = {"testd", "--bogus", "--help", NULL};
    assert_int_equal(parse(&c, argv, noenv, &err), 1);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    ps_cfg_help(c, f);
    fclose(f);
    assert_non_null(strstr(text, "usage: testd"));
    assert_non_null(strstr(text, "A test daemon."));
    for (size_t i = 0; i < NOPTS; i++) {
        char flag[64];
        snprintf(flag, sizeof flag, "--%s ", opts[i].name);
        if (!strstr(text, flag)) fail_msg("--help lacks %s", flag);
        if (!strstr(text, opts[i].help)) fail_msg("--help lacks help of %s", opts[i].name);
    }
    assert_non_null(strstr(text, "default 4194304"));
    assert_non_null(strstr(text, "env PERSRV_MAX_FRAME"));
    assert_non_null(strstr(text, "required"));
    assert_non_null(strstr(text, "1..64"));
    assert_non_null(strstr(text, "--config FILE"));
    free(text);
    ps_cfg_free(c);
}

static void test_version(void **state)
{
    (void)state;
    ps_cfg_t *c;
    ps_err err;
    /* --version, like --help, skips every other check (a required setting is missing here)... */
    char *argv[] = {"testd", "--bogus", "--version", NULL};
    assert_int_equal(parse(&c, argv, noenv, &err), PS_CFG_VERSION);
    ps_cfg_free(c);
    /* ... and --help wins over it. */
    char *both[] = {"testd", "--version", "--help", NULL};
    assert_int_equal(parse(&c, both, noenv, &err), PS_CFG_HELP);
    ps_cfg_free(c);
    /* --version=x is not --version: an unknown flag. */
    char *eq[] = {"testd", "--listen", "x", "--version=3", NULL};
    expect_fail(eq, noenv, PS_EINVAL, "unknown flag --version");

    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    ps_version_print("persrv-testd", f);
    fclose(f);
    char want[256];
    snprintf(want, sizeof want, "persrv-testd %s (commit %s, %s)\n", ps_version(),
             ps_version_commit(), ps_version_build_type());
    assert_string_equal(text, want);
    free(text);
    /* a version x.y.z, and a commit that is hex or "unknown" */
    unsigned x, y, z;
    assert_int_equal(sscanf(ps_version(), "%u.%u.%u", &x, &y, &z), 3);
    const char *commit = ps_version_commit();
    assert_true(strcmp(commit, "unknown") == 0 ||
                (strlen(commit) >= 7 && strspn(commit, "0123456789abcdef") == strlen(commit)));
    assert_true(ps_version_build_type()[0] != '\0');

    ps_buf b = PS_BUF_INIT;
    ps_version_render_metrics(&b);
    assert_int_equal(b.rc, 0);
    snprintf(want, sizeof want,
             "\npersrv_build_info{version=\"%s\",commit=\"%s\",build_type=\"%s\"} 1\n",
             ps_version(), ps_version_commit(), ps_version_build_type());
    assert_non_null(strstr(b.p, want));
    assert_non_null(strstr(b.p, "# TYPE persrv_build_info gauge\n"));
    ps_buf_free(&b);
}

static void test_bad_table(void **state)
{
    (void)state;
    ps_err err;
    static const ps_cfg_opt dup[] = {{"a", PS_CFG_INT, "1", "", 0, 0, 0},
                                     {"a", PS_CFG_INT, "1", "", 0, 0, 0}};
    assert_null(ps_cfg_new("t", NULL, dup, 2, &err));
    assert_int_equal(err.code, PS_EINVAL);
    assert_non_null(strstr(err.msg, "'a' is repeated"));
    static const ps_cfg_opt badname[] = {{"Max_Frame", PS_CFG_INT, "1", "", 0, 0, 0}};
    assert_null(ps_cfg_new("t", NULL, badname, 1, &err));
    assert_non_null(strstr(err.msg, "Max_Frame"));
    static const ps_cfg_opt reserved[] = {{"config", PS_CFG_STRING, NULL, "", 0, 0, 0}};
    assert_null(ps_cfg_new("t", NULL, reserved, 1, &err));
    static const ps_cfg_opt reserved2[] = {{"version", PS_CFG_UINT, "0", "", 0, 0, 0}};
    assert_null(ps_cfg_new("t", NULL, reserved2, 1, &err));
    static const ps_cfg_opt baddef[] = {{"n", PS_CFG_UINT, "-3", "", 0, 0, 0}};
    assert_null(ps_cfg_new("t", NULL, baddef, 1, &err));
    assert_non_null(strstr(err.msg, "default of n"));
    assert_null(ps_cfg_new("t", NULL, opts, 0, &err));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_bad_flags_and_env),
        cmocka_unit_test(test_bad_file),
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_bad_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
