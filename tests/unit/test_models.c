/*
 * test_models.c — the model client of `builder enrich` (builder/models.c): its reply parsers,
 * and the client against fake_models (tests/integration/fake_models.c, started as a child on a
 * port it picks) with injected faults: 429 with Retry-After, 500 then success, malformed JSON,
 * a wrong dimension, a dropped connection, a slow reply past the timeout, the reply cap, the
 * API key, a stop, and many jobs at 1, 8 and 32 requests in flight.
 *
 * Timing is only ever checked as a lower bound (a retry may not come before Retry-After).
 */
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <zlib.h>

#include "models.h"
#include "pipeline.h"

#ifndef FAKE_MODELS
#error "FAKE_MODELS (the path of the fake_models binary) must be defined"
#endif

#define KEY "sk-test-5ecret-key-do-not-print"
#define DIM 8

/* ---- the server ------------------------------------------------------------------------- */

static struct {
    pid_t pid;
    char dir[256], url[128], faults[300], log[300];
    int gen;
} srv;

static void set_faults(const char *rules)
{
    char tmp[320];
    snprintf(tmp, sizeof tmp, "%s.tmp", srv.faults);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fprintf(f, "# generation %d\n%s\n", ++srv.gen, rules);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(rename(tmp, srv.faults), 0);
    f = fopen(srv.log, "w"); /* a fresh request log for each test */
    if (f) fclose(f);
}

/* Start fake_models with argv (argv[0] and the --ready argument are filled in here) and wait
 * for its ready file. Returns its pid with its base URL in url, or -1. */
static pid_t spawn(const char **argv, const char *ready, char *url, size_t size)
{
    argv[0] = FAKE_MODELS;
    argv[2] = ready;
    pid_t pid = fork();
    if (pid == 0) {
        execv(FAKE_MODELS, (char *const *)argv);
        _exit(127);
    }
    if (pid < 0) return -1;
    for (int i = 0; i < 3000; i++) { /* up to 30 s on a loaded machine */
        FILE *f = fopen(ready, "r");
        if (f) {
            int ok = fgets(url, (int)size, f) != NULL;
            fclose(f);
            if (ok) {
                url[strcspn(url, "\n")] = '\0';
                return pid;
            }
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) return -1;
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static int start_server(void **state)
{
    (void)state;
    char ready[300], dim[16];
    snprintf(srv.dir, sizeof srv.dir, "/tmp/test_models.XXXXXX");
    if (!mkdtemp(srv.dir)) return -1;
    snprintf(ready, sizeof ready, "%s/ready", srv.dir);
    snprintf(srv.faults, sizeof srv.faults, "%s/faults", srv.dir);
    snprintf(srv.log, sizeof srv.log, "%s/log", srv.dir);
    snprintf(dim, sizeof dim, "%d", DIM);
    FILE *f = fopen(srv.faults, "w");
    if (!f) return -1;
    fclose(f);
    const char *argv[] = {NULL,    "--ready", NULL,       "--port",   "0",     "--dim", dim,
                          "--key", KEY,       "--faults", srv.faults, "--log", srv.log, NULL};
    srv.pid = spawn(argv, ready, srv.url, sizeof srv.url);
    return srv.pid > 0 ? 0 : -1;
}

static int stop_server(void **state)
{
    (void)state;
    int st = 0;
    if (srv.pid > 0) {
        kill(srv.pid, SIGTERM);
        waitpid(srv.pid, &st, 0);
    }
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", srv.dir);
    if (system(cmd) != 0) return -1;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

/* Lines of the request log that contain every one of the NULL-terminated strings. */
static int log_count(const char *a, ...)
{
    FILE *f = fopen(srv.log, "r");
    char line[512];
    int n = 0;
    assert_non_null(f);
    while (fgets(line, sizeof line, f)) {
        va_list ap;
        va_start(ap, a);
        int all = 1;
        for (const char *s = a; s; s = va_arg(ap, const char *))
            if (!strstr(line, s)) all = 0;
        va_end(ap);
        n += all;
    }
    fclose(f);
    return n;
}

/* ---- running jobs ----------------------------------------------------------------------- */

typedef struct got {
    int seen, rc;
    char err[256];
    char *kw, *desc, *emo;
    float emb[64];
    uint32_t dim;
    int has_emb;
    double t; /* builder_now() when reported */
} got;

typedef struct run {
    got *g;
    size_t n;
    int stop_after; /* set *stop once this many jobs were reported (0: never) */
    volatile sig_atomic_t stop;
    size_t reported;
} run;

static void on_done(const builder_model_result *r, void *ctx)
{
    run *x = ctx;
    assert_true(r->id < x->n);
    got *g = &x->g[r->id];
    assert_ptr_equal(r->arg, g);
    g->seen++;
    g->rc = r->rc;
    g->t = builder_now();
    snprintf(g->err, sizeof g->err, "%s", r->err);
    if (r->rc == 0)
        assert_string_equal(r->err, "");
    else
        assert_true(r->err[0] != '\0');
    g->kw = r->keywords ? strdup(r->keywords) : NULL;
    g->desc = r->desc ? strdup(r->desc) : NULL;
    g->emo = r->emotion ? strdup(r->emotion) : NULL;
    g->has_emb = r->embedding != NULL;
    g->dim = r->dim;
    if (r->embedding) {
        assert_true(r->dim <= 64);
        memcpy(g->emb, r->embedding, r->dim * sizeof(float));
    }
    if (++x->reported == (size_t)x->stop_after) x->stop = 1;
}

static void free_got(got *g, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(g[i].kw);
        free(g[i].desc);
        free(g[i].emo);
    }
    free(g);
}

static void cfg_for(builder_models_cfg *c, int vlm, int embed)
{
    builder_models_cfg_defaults(c);
    c->vlm_url = vlm ? srv.url : NULL;
    c->vlm_model = "fake-vlm";
    c->embed_url = embed ? srv.url : NULL;
    c->embed_model = "fake-clip";
    c->dim = DIM;
    c->api_key = KEY;
    c->timeout_ms = 20000;
    c->retries = 3;
}

static void image(char *buf, size_t size, size_t i, const char *tag)
{
    snprintf(buf, size, "\x89PNG-fake-image-%zu-%s", i, tag);
}

/* Submit n images (image i tagged tags[i] or "plain") and run them all. Returns the results
 * (free_got); *elapsed gets the run's seconds. */
static got *run_jobs(const builder_models_cfg *c, size_t n, const char *const *tags,
                     double *elapsed, builder_models_stats *stats)
{
    ps_err err = {0, ""};
    builder_models_t *m = builder_models_new(c, &err);
    assert_non_null(m);
    run x = {.g = calloc(n, sizeof(got)), .n = n};
    assert_non_null(x.g);
    double t0 = builder_now();
    for (size_t i = 0; i < n; i++) {
        char img[128];
        image(img, sizeof img, i, tags && tags[i] ? tags[i] : "plain");
        assert_int_equal(builder_models_submit(m, i, img, strlen(img), "image/png", &x.g[i], &err),
                         0);
    }
    assert_int_equal(builder_models_pending(m), n);
    assert_int_equal(builder_models_run(m, 0, on_done, &x, NULL), 0);
    if (elapsed) *elapsed = builder_now() - t0;
    assert_int_equal(builder_models_pending(m), 0);
    for (size_t i = 0; i < n; i++) assert_int_equal(x.g[i].seen, 1);
    if (stats) builder_models_get_stats(m, stats);
    builder_models_free(m);
    return x.g;
}

static uint32_t crc_of(size_t i, const char *tag)
{
    char img[128];
    image(img, sizeof img, i, tag);
    return (uint32_t)crc32(0L, (const unsigned char *)img, (uInt)strlen(img));
}

static void assert_unit(const got *g)
{
    double ss = 0;
    assert_true(g->has_emb);
    assert_int_equal(g->dim, DIM);
    for (uint32_t i = 0; i < g->dim; i++) ss += (double)g->emb[i] * g->emb[i];
    assert_true(fabs(ss - 1) < 1e-5);
}

/* ---- the parsers ------------------------------------------------------------------------ */

static char *chat(const char *content_json)
{
    static char buf[4096];
    snprintf(buf, sizeof buf,
             "{\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
             "\"content\":%s},\"finish_reason\":\"stop\"}]}",
             content_json);
    return buf;
}

static void kw_is(const char *content_json, int want_rc, const char *want)
{
    char *kw = (char *)1;
    ps_err err = {0, ""};
    const char *b = chat(content_json);
    int rc = builder_parse_vlm_keywords(b, strlen(b), &kw, &err);
    if (rc != want_rc) fail_msg("%s: rc %d (%s), want %d", content_json, rc, err.msg, want_rc);
    if (want_rc) {
        assert_null(kw);
        assert_int_equal(err.code, rc);
        return;
    }
    if (strcmp(kw, want) != 0) fail_msg("%s: got \"%s\", want \"%s\"", content_json, kw, want);
    free(kw);
}

static void desc_is(const char *content_json, int want_rc, const char *want_d, const char *want_e)
{
    char *d = NULL, *e = NULL;
    ps_err err = {0, ""};
    const char *b = chat(content_json);
    int rc = builder_parse_vlm_describe(b, strlen(b), &d, &e, &err);
    if (rc != want_rc) fail_msg("%s: rc %d (%s), want %d", content_json, rc, err.msg, want_rc);
    if (want_rc) {
        assert_null(d);
        assert_null(e);
        return;
    }
    assert_string_equal(d, want_d);
    assert_string_equal(e, want_e);
    free(d);
    free(e);
}

static void test_parse_keywords(void **state)
{
    (void)state;
    kw_is("\"{\\\"keywords\\\": [\\\"cat\\\", \\\"好累\\\", \\\"thumbs up\\\"]}\"", 0,
          "cat, 好累, thumbs up");
    kw_is("\"```json\\n{\\\"keywords\\\": [\\\"dog\\\", \\\"dog\\\", \\\" 加油 \\\"]}\\n```\"", 0,
          "dog, 加油");
    kw_is("\"Sure! Here you go:\\nKeywords: cat, 晚安，good night、sleep.\"", 0,
          "cat, 晚安, good night, sleep");
    kw_is("\"**Keywords:**\\n- happy\\n- 2. smile\\n\\nThat is all.\"", 0, "happy, smile");
    kw_is("\"tired, 好累\"", 0, "tired, 好累");
    kw_is("[{\"type\":\"text\",\"text\":\"{\\\"keywords\\\":\\\"a, b\\\"}\"}]", 0, "a, b");
    kw_is("\"{\\\"keywords\\\": [\\\"cat\\\", \"", PS_EPARSE, NULL); /* truncated JSON */
    kw_is("\"{\\\"tags_none\\\": 1}\"", PS_EPARSE, NULL);
    kw_is("null", PS_EPARSE, NULL);
    kw_is("\"  \\n \"", PS_EPARSE, NULL);

    char *kw = NULL;
    ps_err err = {0, ""};
    const char *bad[] = {"",
                         "{",
                         "not json",
                         "[]",
                         "{\"choices\": []}",
                         "{\"error\": {\"message\": \"overloaded\"}}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(builder_parse_vlm_keywords(bad[i], strlen(bad[i]), &kw, &err), PS_EPARSE);
        assert_null(kw);
        assert_true(err.msg[0] != '\0');
    }
    assert_int_equal(builder_parse_vlm_keywords(NULL, 0, &kw, &err), PS_EPARSE);
}

static void test_parse_describe(void **state)
{
    (void)state;
    desc_is(
        "\"{\\\"description\\\": \\\"A cat\\\\nlies down.\\\", \\\"emotions\\\": [\\\"tired\\\", "
        "\\\"无奈\\\"]}\"",
        0, "A cat lies down.", "tired, 无奈");
    desc_is("\"```\\n{\\\"description\\\": \\\"x\\\", \\\"emotion\\\": \\\"calm\\\"}\\n```\"", 0,
            "x", "calm");
    desc_is("\"Description: a dog cheers\\nEmotions: happy; excited\"", 0, "a dog cheers",
            "happy, excited");
    desc_is("\"A dog waves goodbye.\\nEmotion: sad\"", 0, "A dog waves goodbye.", "sad");
    desc_is("\"Just a bunny.\"", 0, "Just a bunny.", "");
    desc_is("\"{\\\"description\\\": 7}\"", PS_EPARSE, NULL, NULL);
    desc_is("\"{\\\"description\\\": \\\"cut\"", PS_EPARSE, NULL, NULL);
    desc_is("\"\"", PS_EPARSE, NULL, NULL);
}

static void test_parse_embedding(void **state)
{
    (void)state;
    float v[8];
    uint32_t got = 0;
    ps_err err = {0, ""};
    const char *ok = "{\"data\":[{\"embedding\":[3, 4, 0]}]}";
    assert_int_equal(builder_parse_embedding(ok, strlen(ok), v, 8, &got, &err), 0);
    assert_int_equal(got, 3);
    assert_true(fabsf(v[0] - 0.6f) < 1e-6f && fabsf(v[1] - 0.8f) < 1e-6f && v[2] == 0.0f);
    const char *huge = "{\"embedding\":[1e308, -1e308]}"; /* no overflow in the norm */
    assert_int_equal(builder_parse_embedding(huge, strlen(huge), v, 8, &got, &err), 0);
    assert_true(fabsf(v[0] - 0.70710678f) < 1e-6f);
    struct {
        const char *body;
        int rc;
    } bad[] = {
        {"{\"data\":[{\"embedding\":[0, 0, 0]}]}", PS_EINVAL},
        {"{\"data\":[{\"embedding\":[1, \"x\"]}]}", PS_EINVAL},
        {"{\"data\":[{\"embedding\":[1, 1e999]}]}", PS_EPARSE},
        {"{\"data\":[{\"embedding\":[1,2,3,4,5,6,7,8,9]}]}", PS_ETOOBIG},
        {"{\"data\":[{\"embedding\":[]}]}", PS_EPARSE},
        {"{\"data\":[]}", PS_EPARSE},
        {"{\"data\":[{\"embedding\":\"AAAA\"}]}", PS_EPARSE},
        {"{\"error\":{\"message\":\"x\"}}", PS_EPARSE},
        {"{\"data\":[{\"embedding\":[1,", PS_EPARSE},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        got = 77;
        int rc = builder_parse_embedding(bad[i].body, strlen(bad[i].body), v, 8, &got, &err);
        if (rc != bad[i].rc) fail_msg("%s: rc %d (%s)", bad[i].body, rc, err.msg);
        assert_int_equal(got, 0);
    }
}

static void test_new_errors(void **state)
{
    (void)state;
    builder_models_cfg c;
    ps_err err = {0, ""};
    builder_models_cfg_defaults(&c);
    assert_null(builder_models_new(&c, &err));
    assert_int_equal(err.code, PS_EINVAL);
    c.vlm_url = "ftp://x";
    assert_null(builder_models_new(&c, &err));
    assert_int_equal(err.code, PS_EINVAL);
    c.vlm_url = "http://127.0.0.1:1";
    c.api_key = "a\r\nX-Evil: 1";
    assert_null(builder_models_new(&c, &err));
    assert_int_equal(err.code, PS_EINVAL);
    c.api_key = NULL;
    builder_models_t *m = builder_models_new(&c, &err);
    assert_non_null(m);
    assert_int_equal(builder_models_submit(m, 1, "x", 0, NULL, NULL, &err), PS_EINVAL);
    assert_int_equal(builder_models_submit(m, 1, "x", 1, "image/png\"", NULL, &err), PS_EINVAL);
    assert_int_equal(builder_models_pending(m), 0);
    builder_models_free(m);
    builder_models_free(NULL);
}

/* ---- the client against fake_models ----------------------------------------------------- */

static void test_basic(void **state)
{
    (void)state;
    builder_models_cfg c;
    cfg_for(&c, 1, 1);
    c.inflight = 1;
    set_faults("");
    got *g = run_jobs(&c, 3, NULL, NULL, NULL);
    for (size_t i = 0; i < 3; i++) {
        char want[64];
        uint32_t crc = crc_of(i, "plain");
        assert_int_equal(g[i].rc, 0);
        snprintf(want, sizeof want, "sticker, k%08x", crc);
        assert_string_equal(g[i].kw, want);
        snprintf(want, sizeof want, "a sticker numbered %08x", crc);
        assert_string_equal(g[i].desc, want);
        snprintf(want, sizeof want, "e%02x", crc & 0xff);
        assert_string_equal(g[i].emo, want);
        assert_unit(&g[i]);
    }
    /* each request once, with the key as a Bearer token */
    assert_int_equal(log_count("kind=keywords", "auth=ok", NULL), 3);
    assert_int_equal(log_count("kind=describe", "auth=ok", NULL), 3);
    assert_int_equal(log_count("kind=embed", "auth=ok", NULL), 3);
    assert_int_equal(log_count("auth=", NULL), 9);
    free_got(g, 3);

    /* a base URL ending in /v1; VLM only; embeddings only, dimension from the first reply */
    char v1[160];
    snprintf(v1, sizeof v1, "%s/v1/", srv.url);
    cfg_for(&c, 1, 0);
    c.vlm_url = v1;
    g = run_jobs(&c, 2, NULL, NULL, NULL);
    assert_int_equal(g[0].rc, 0);
    assert_non_null(g[0].kw);
    assert_false(g[0].has_emb);
    free_got(g, 2);
    cfg_for(&c, 0, 1);
    c.dim = 0;
    g = run_jobs(&c, 2, NULL, NULL, NULL);
    assert_int_equal(g[1].rc, 0);
    assert_null(g[1].kw);
    assert_null(g[1].desc);
    assert_unit(&g[1]);
    free_got(g, 2);
}

static void test_reply_formats(void **state)
{
    (void)state;
    builder_models_cfg c;
    cfg_for(&c, 1, 0);
    set_faults("kind=keywords has=-fenced fenced\nkind=describe has=-fenced lines\n"
               "kind=keywords has=-list list\nkind=describe has=-list list");
    const char *tags[] = {"fenced", "list"};
    got *g = run_jobs(&c, 2, tags, NULL, NULL);
    for (size_t i = 0; i < 2; i++) {
        char want[64];
        uint32_t crc = crc_of(i, tags[i]);
        assert_int_equal(g[i].rc, 0);
        snprintf(want, sizeof want, "sticker, k%08x", crc);
        assert_string_equal(g[i].kw, want);
        snprintf(want, sizeof want, "a sticker numbered %08x", crc);
        assert_string_equal(g[i].desc, want);
    }
    assert_string_equal(g[1].emo, "");
    free_got(g, 2);
}

static void test_retry_after(void **state)
{
    (void)state;
    builder_models_cfg c;
    cfg_for(&c, 1, 1);
    set_faults("has=-ra kind=embed status=429 retry_after=2 tries=1");
    const char *tags[] = {"ra", "plain"};
    double t0 = builder_now();
    got *g = run_jobs(&c, 2, tags, NULL, NULL);
    assert_int_equal(g[0].rc, 0);
    assert_unit(&g[0]);
    assert_int_equal(g[1].rc, 0);
    /* the retry waited for Retry-After (2 s; the backoff alone is 0.5-0.6 s) */
    if (g[0].t - t0 < 2.0) fail_msg("the 429 was retried after %.3f s", g[0].t - t0);
    assert_int_equal(log_count("kind=embed", "action=status=429", NULL), 1);
    assert_int_equal(log_count("kind=embed", "attempt=2", "action=ok", NULL), 1);
    free_got(g, 2);

    /* 429 for good: the job fails as unavailable, after 1 + retries tries */
    cfg_for(&c, 0, 1);
    c.retries = 1;
    set_faults("has=-ra status=429 retry_after=1");
    g = run_jobs(&c, 1, tags, NULL, NULL);
    assert_int_equal(g[0].rc, PS_EUNAVAIL);
    assert_non_null(strstr(g[0].err, "HTTP 429"));
    assert_int_equal(log_count("action=status=429", NULL), 2);
    free_got(g, 1);
}

static void test_500_then_ok(void **state)
{
    (void)state;
    builder_models_cfg c;
    cfg_for(&c, 1, 1);
    set_faults("* status=500 tries=1"); /* every request fails once */
    builder_models_stats st;
    got *g = run_jobs(&c, 4, NULL, NULL, &st);
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(g[i].rc, 0);
        assert_non_null(g[i].kw);
        assert_unit(&g[i]);
    }
    assert_int_equal(st.retries, 12);
    assert_int_equal(st.requests, 24);
    assert_int_equal(st.jobs, 4);
    assert_int_equal(st.failed, 0);
    assert_int_equal(log_count("action=status=500", NULL), 12);
    free_got(g, 4);

    /* 500 always: an error after retries + 1 tries, naming the server's message */
    cfg_for(&c, 0, 1);
    c.retries = 2;
    set_faults("* status=500");
    g = run_jobs(&c, 1, NULL, NULL, &st);
    assert_int_equal(g[0].rc, PS_EIO);
    assert_non_null(strstr(g[0].err, "embedding: HTTP 500: injected failure (3 tries)"));
    assert_int_equal(st.failed, 1);
    free_got(g, 1);
}

static void test_malformed_and_dim(void **state)
{
    (void)state;
    builder_models_cfg c;
    cfg_for(&c, 1, 1);
    set_faults("has=-bad kind=keywords malformed\nhas=-dim kind=embed dim=5\n"
               "has=-zero kind=embed dim=0");
    const char *tags[] = {"plain", "bad", "dim", "plain"};
    got *g = run_jobs(&c, 4, tags, NULL, NULL);
    assert_int_equal(g[0].rc, 0);
    assert_int_equal(g[3].rc, 0);
    assert_int_equal(g[1].rc, PS_EPARSE);
    assert_non_null(strstr(g[1].err, "keywords: the reply is not JSON"));
    assert_null(g[1].kw); /* a failed job reports no fields */
    assert_false(g[1].has_emb);
    assert_int_equal(g[2].rc, PS_EINVAL);
    assert_non_null(strstr(g[2].err, "5 dimensions, expected 8"));
    /* a parse error is not retried */
    assert_int_equal(log_count("kind=keywords", "action=malformed", NULL), 1);
    free_got(g, 4);

    /* dim 0: the first reply fixes it, a later other one fails */
    cfg_for(&c, 0, 1);
    c.dim = 0;
    c.inflight = 1;
    const char *tags2[] = {"plain", "dim"};
    g = run_jobs(&c, 2, tags2, NULL, NULL);
    assert_int_equal(g[0].rc, 0);
    assert_int_equal(g[0].dim, DIM);
    assert_int_equal(g[1].rc, PS_EINVAL);
    free_got(g, 2);
}

static void test_drop(void **state)
{
    (void)state;
    builder_models_cfg c;
    cfg_for(&c, 1, 1);
    set_faults("has=-drop1 drop tries=1\nhas=-dropall kind=embed drop");
    const char *tags[] = {"drop1", "dropall", "plain"};
    got *g = run_jobs(&c, 3, tags, NULL, NULL);
    assert_int_equal(g[0].rc, 0); /* retried after the dropped connection */
    assert_unit(&g[0]);
    assert_int_equal(g[2].rc, 0);
    assert_int_equal(g[1].rc, PS_EUNAVAIL);
    assert_non_null(strstr(g[1].err, "embedding: "));
    /* libcurl itself resends once a request whose reused connection died, so the server may
     * see more sends than the client's tries: drop1 is dropped once per kind, dropall's
     * embedding at least 1 + retries times */
    char crc[32];
    snprintf(crc, sizeof crc, "crc=%08x", crc_of(0, "drop1"));
    assert_int_equal(log_count(crc, "action=drop", NULL), 3);
    snprintf(crc, sizeof crc, "crc=%08x", crc_of(1, "dropall"));
    assert_true(log_count(crc, "action=drop", NULL) >= 4);
    free_got(g, 3);
}

static void test_timeout(void **state)
{
    (void)state;
    builder_models_cfg c;
    cfg_for(&c, 0, 1);
    c.timeout_ms = 1500; /* generous: "plain" must answer within it on a loaded machine */
    c.retries = 1;
    set_faults("has=-slowall delay=8000\nhas=-lag1 delay=6000 tries=1");
    const char *tags[] = {"slowall", "plain", "lag1"};
    got *g = run_jobs(&c, 3, tags, NULL, NULL);
    assert_int_equal(g[0].rc, PS_ETIMEDOUT);
    assert_non_null(strstr(g[0].err, "(2 tries)"));
    assert_int_equal(g[1].rc, 0);
    assert_int_equal(g[2].rc, 0); /* slow once, then on time */
    assert_int_equal(log_count("delay=8000", NULL), 2);
    free_got(g, 3);
}

static void test_max_reply(void **state)
{
    (void)state;
    builder_models_cfg c;
    cfg_for(&c, 0, 1);
    set_faults("has=-big big=8000000"); /* chunked: no Content-Length to refuse early */
    const char *tags[] = {"big", "plain"};
    builder_models_stats st;
    got *g = run_jobs(&c, 2, tags, NULL, &st);
    assert_int_equal(g[0].rc, PS_ETOOBIG);
    assert_non_null(strstr(g[0].err, "max_reply"));
    assert_int_equal(g[1].rc, 0);
    assert_int_equal(st.retries, 0);
    free_got(g, 2);

    /* a Content-Length over the cap */
    cfg_for(&c, 1, 0);
    c.max_reply = 100;
    set_faults("");
    g = run_jobs(&c, 1, NULL, NULL, NULL);
    assert_int_equal(g[0].rc, PS_ETOOBIG);
    free_got(g, 1);
}

static void test_api_key(void **state)
{
    (void)state;
    builder_models_cfg c;
    set_faults("");
    /* stderr to a file while the client works and fails: the key must not show */
    char errpath[320];
    snprintf(errpath, sizeof errpath, "%s/stderr", srv.dir);
    fflush(stderr);
    int saved = dup(2), fd = open(errpath, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    assert_true(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    close(fd);

    cfg_for(&c, 1, 1);
    c.api_key = "sk-wrong-" KEY;
    got *g = run_jobs(&c, 1, NULL, NULL, NULL);
    cfg_for(&c, 1, 1);
    c.api_key = NULL;
    got *g2 = run_jobs(&c, 1, NULL, NULL, NULL);

    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    assert_int_equal(g[0].rc, PS_EUNAUTH);
    assert_null(strstr(g[0].err, KEY));
    assert_non_null(strstr(g[0].err, "HTTP 401"));
    assert_int_equal(g2[0].rc, PS_EUNAUTH);
    assert_int_equal(log_count("auth=wrong", NULL), 3);
    assert_int_equal(log_count("auth=none", NULL), 3);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "grep -q -- '%s' '%s'", KEY, errpath);
    assert_int_not_equal(system(cmd), 0);
    free_got(g, 1);
    free_got(g2, 1);
}

static void test_stop_and_until(void **state)
{
    (void)state;
    builder_models_cfg c;
    ps_err err = {0, ""};
    cfg_for(&c, 0, 1);
    set_faults("has=-fast\n* delay=30000");
    builder_models_t *m = builder_models_new(&c, &err);
    assert_non_null(m);
    run x = {.g = calloc(6, sizeof(got)), .n = 6, .stop_after = 1};
    for (size_t i = 0; i < 6; i++) {
        char img[128];
        image(img, sizeof img, i, i == 3 ? "fast" : "slow");
        assert_int_equal(builder_models_submit(m, i, img, strlen(img), NULL, &x.g[i], &err), 0);
    }
    assert_int_equal(builder_models_run(m, 0, on_done, &x, &x.stop), 0);
    assert_int_equal(x.reported, 1);
    assert_int_equal(x.g[3].seen, 1);
    assert_int_equal(builder_models_pending(m), 0); /* the others are abandoned */
    builder_models_free(m);
    free_got(x.g, 6);

    /* until_pending: return part way, then finish */
    set_faults("");
    m = builder_models_new(&c, &err);
    assert_non_null(m);
    run y = {.g = calloc(10, sizeof(got)), .n = 10};
    for (size_t i = 0; i < 10; i++) {
        char img[128];
        image(img, sizeof img, i, "plain");
        assert_int_equal(builder_models_submit(m, i, img, strlen(img), NULL, &y.g[i], &err), 0);
    }
    assert_int_equal(builder_models_run(m, 5, on_done, &y, NULL), 0);
    assert_true(builder_models_pending(m) <= 5);
    assert_true(y.reported >= 5);
    assert_int_equal(builder_models_run(m, 0, on_done, &y, NULL), 0);
    assert_int_equal(y.reported, 10);
    builder_models_free(m);
    free_got(y.g, 10);
}

/* fake_models --map: the answers and the vector of a mapped image as given (the client
 * normalizes the vector), an unmapped one by default; a second server, stopped by its pid. */
static void test_map(void **state)
{
    (void)state;
    char map[320], ready[320], url[128], line[512];
    snprintf(map, sizeof map, "%s/map", srv.dir);
    snprintf(ready, sizeof ready, "%s/ready-map", srv.dir);
    FILE *f = fopen(map, "w");
    assert_non_null(f);
    snprintf(line, sizeof line, "%08x\t好累, tired\ta tired cat\tsleepy, 无奈\t0 3 0 4\n",
             crc_of(0, "mapped"));
    fputs("# crc keywords desc emotions vector\n", f);
    fputs(line, f);
    assert_int_equal(fclose(f), 0);
    const char *argv[] = {NULL, "--ready", NULL, "--dim", "4", "--map", map, NULL};
    pid_t pid = spawn(argv, ready, url, sizeof url);
    assert_true(pid > 0);

    builder_models_cfg c;
    cfg_for(&c, 1, 1);
    c.vlm_url = c.embed_url = url;
    c.api_key = NULL;
    c.dim = 4;
    const char *tags[] = {"mapped", "other"};
    got *g = run_jobs(&c, 2, tags, NULL, NULL);
    int st = 0;
    kill(pid, SIGTERM);
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_int_equal(g[0].rc, 0);
    assert_string_equal(g[0].kw, "好累, tired");
    assert_string_equal(g[0].desc, "a tired cat");
    assert_string_equal(g[0].emo, "sleepy, 无奈");
    assert_int_equal(g[0].dim, 4);
    assert_true(g[0].emb[0] == 0.0f && fabsf(g[0].emb[1] - 0.6f) < 1e-6f &&
                fabsf(g[0].emb[3] - 0.8f) < 1e-6f);
    assert_int_equal(g[1].rc, 0);
    snprintf(line, sizeof line, "sticker, k%08x", crc_of(1, "other"));
    assert_string_equal(g[1].kw, line);
    assert_int_equal(g[1].dim, 4);
    free_got(g, 2);
}

static void test_many(void **state)
{
    (void)state;
    const uint32_t inflight[] = {1, 8, 32};
    for (size_t k = 0; k < 3; k++) {
        builder_models_cfg c;
        cfg_for(&c, 1, 1);
        c.inflight = inflight[k];
        set_faults("* status=503 times=20\n* delay=20 times=40");
        size_t n = 150;
        builder_models_stats st;
        got *g = run_jobs(&c, n, NULL, NULL, &st);
        for (size_t i = 0; i < n; i++) {
            char want[64];
            if (g[i].rc) fail_msg("inflight %u: job %zu: %s", inflight[k], i, g[i].err);
            snprintf(want, sizeof want, "sticker, k%08x", crc_of(i, "plain"));
            assert_string_equal(g[i].kw, want);
            assert_unit(&g[i]);
        }
        assert_int_equal(st.retries, 20);
        assert_int_equal(st.requests, 3 * n + 20);
        free_got(g, n);
    }
}

int main(void)
{
    const struct CMUnitTest parsers[] = {
        cmocka_unit_test(test_parse_keywords),
        cmocka_unit_test(test_parse_describe),
        cmocka_unit_test(test_parse_embedding),
        cmocka_unit_test(test_new_errors),
    };
    const struct CMUnitTest client[] = {
        cmocka_unit_test(test_basic),
        cmocka_unit_test(test_reply_formats),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_500_then_ok),
        cmocka_unit_test(test_malformed_and_dim),
        cmocka_unit_test(test_drop),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_max_reply),
        cmocka_unit_test(test_api_key),
        cmocka_unit_test(test_stop_and_until),
        cmocka_unit_test(test_map),
        cmocka_unit_test(test_many),
    };
    int fails = cmocka_run_group_tests_name("models_parsers", parsers, NULL, NULL);
    return fails + cmocka_run_group_tests_name("models_client", client, start_server, stop_server);
}
