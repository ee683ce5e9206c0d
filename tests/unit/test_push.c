/*
 * test_push.c — `builder push` and `builder activate` (builder/cmd_push_build.c, push.c)
 * against fake shards and a fake broker: real admin ports (ps/admin.h) on loopback whose
 * handlers keep the contract of /work/push-spec.md in memory (stage, chunked PUT with offsets,
 * prepare with crc32, abort, activate, retire, switch) and can be told to fail. Checks what
 * the daemons end up holding: the bytes staged, which version is active, what was rolled back.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
#include <jansson.h>
#include <pthread.h>
#include <zlib.h>

#include "builder.h"
#include "ps/admin.h"
#include "ps/log.h"
#include "ps/snapshot.h"

#define TOKEN    "t0ken-for-tests"
#define NREP     2
#define MAXFILES 8

/* ---- a fake shard replica -------------------------------------------------------------- */

typedef struct fake_shard {
    ps_admin_t *admin;
    pthread_mutex_t mu;
    uint32_t shard, shards;
    uint64_t held[2];
    char held_fp[2][17];
    size_t nheld;
    uint64_t active;
    /* one staging area */
    uint64_t staging;
    ps_snapshot man;
    unsigned char *buf[MAXFILES];
    uint64_t got[MAXFILES];
    /* faults: the Nth PUT (1-based) fails with 500 / is acknowledged but lost */
    int puts, fail_put, lose_put, corrupt, fail_activate;
    int stages, aborts;
} fake_shard;

typedef struct fake_broker {
    ps_admin_t *admin;
    fake_shard *replicas;
    size_t nreplicas;
    uint64_t version;
    char fp[17];
    int fail_switch;
} fake_broker;

static int find_held(const fake_shard *f, uint64_t v)
{
    for (size_t i = 0; i < f->nheld; i++)
        if (f->held[i] == v) return (int)i;
    return -1;
}

static void drop_staging(fake_shard *f)
{
    for (size_t i = 0; i < MAXFILES; i++) {
        free(f->buf[i]);
        f->buf[i] = NULL;
        f->got[i] = 0;
    }
    ps_snapshot_clear(&f->man);
    f->staging = 0;
}

static uint64_t version_param(struct evhttp_request *req)
{
    uint64_t v = 0;
    ps_admin_param_u64(req, "version", &v, NULL);
    return v;
}

static void s_health(struct evhttp_request *req, void *arg)
{
    fake_shard *f = arg;
    pthread_mutex_lock(&f->mu);
    json_t *vs = json_array(), *st = json_array();
    for (size_t i = 0; i < f->nheld; i++)
        json_array_append_new(vs, json_pack("{s:I, s:s, s:b, s:i}", "version",
                                            (json_int_t)f->held[i], "fingerprint", f->held_fp[i],
                                            "active", f->held[i] == f->active, "stickers", 10));
    if (f->staging) json_array_append_new(st, json_integer((json_int_t)f->staging));
    json_t *o = json_pack("{s:s, s:i, s:i, s:I, s:o, s:o}", "status", "ok", "shard", (int)f->shard,
                          "shards", (int)f->shards, "active", (json_int_t)f->active, "versions", vs,
                          "staging", st);
    pthread_mutex_unlock(&f->mu);
    ps_admin_reply_json(req, 200, o);
}

static void s_stage(struct evhttp_request *req, void *arg)
{
    fake_shard *f = arg;
    uint64_t v = version_param(req);
    size_t len;
    const void *body = ps_admin_body(req, &len);
    ps_snapshot m;
    ps_err err = {0, ""};
    if (ps_snapshot_parse(body, len, &m, &err)) {
        ps_admin_reply_err(req, &err);
        return;
    }
    pthread_mutex_lock(&f->mu);
    f->stages++;
    if (m.shard != f->shard || m.shards != f->shards || m.version != v || m.nfiles > MAXFILES)
        ps_admin_reply_error(req, PS_EINVAL, "manifest of shard %u of %u", m.shard, m.shards);
    else if (find_held(f, v) >= 0)
        ps_admin_reply_error(req, PS_EEXIST, "version %llu is held", (unsigned long long)v);
    else if (f->nheld >= 2)
        ps_admin_reply_error(req, PS_ECONFLICT, "retire a version first");
    else {
        drop_staging(f);
        f->man = m;
        memset(&m, 0, sizeof m);
        f->staging = v;
        for (size_t i = 0; i < f->man.nfiles; i++)
            f->buf[i] = malloc(f->man.files[i].bytes ? f->man.files[i].bytes : 1);
        ps_admin_reply_json(
            req, 200,
            json_pack("{s:I, s:i}", "version", (json_int_t)v, "files", (int)f->man.nfiles));
    }
    pthread_mutex_unlock(&f->mu);
    ps_snapshot_clear(&m);
}

/* PUT /admin/stage/V/NAME?offset=O */
static void s_put(struct evhttp_request *req, void *arg)
{
    fake_shard *f = arg;
    unsigned long long v = 0;
    char name[200] = "";
    uint64_t off = 0;
    size_t len;
    const unsigned char *body = ps_admin_body(req, &len);
    sscanf(ps_admin_path(req), "/admin/stage/%llu/%199s", &v, name);
    ps_admin_param_u64(req, "offset", &off, NULL);
    pthread_mutex_lock(&f->mu);
    int n = ++f->puts;
    size_t i = 0;
    while (i < f->man.nfiles && strcmp(f->man.files[i].name, name) != 0) i++;
    if (!f->staging || f->staging != v)
        ps_admin_reply_error(req, PS_ENOTFOUND, "no staging of version %llu", v);
    else if (i == f->man.nfiles)
        ps_admin_reply_error(req, PS_EINVAL, "%s is not in the manifest", name);
    else if (n == f->fail_put)
        ps_admin_reply_error(req, PS_EIO, "writing %s: injected", name);
    else if (off != f->got[i])
        ps_admin_reply_error(req, PS_ECONFLICT, "%s: offset %llu, expected offset %llu", name,
                             (unsigned long long)off, (unsigned long long)f->got[i]);
    else if (off + len > f->man.files[i].bytes)
        ps_admin_reply_error(req, PS_EINVAL, "%s: beyond its size", name);
    else {
        if (n != f->lose_put) {
            memcpy(f->buf[i] + off, body, len);
            f->got[i] += len;
        }
        ps_admin_reply_json(req, 200, json_pack("{s:I}", "received", (json_int_t)(off + len)));
    }
    pthread_mutex_unlock(&f->mu);
}

static void s_prepare(struct evhttp_request *req, void *arg)
{
    fake_shard *f = arg;
    uint64_t v = version_param(req);
    pthread_mutex_lock(&f->mu);
    if (find_held(f, v) >= 0) {
        ps_admin_reply_json(req, 200, json_pack("{s:I}", "version", (json_int_t)v));
    } else if (f->staging != v) {
        ps_admin_reply_error(req, PS_ENOTFOUND, "no staging of version %llu",
                             (unsigned long long)v);
    } else {
        const char *bad = f->corrupt ? f->man.files[0].name : NULL;
        for (size_t i = 0; !bad && i < f->man.nfiles; i++) {
            uint32_t crc = (uint32_t)crc32(0L, f->buf[i], (uInt)f->got[i]);
            if (f->got[i] != f->man.files[i].bytes || crc != f->man.files[i].crc32)
                bad = f->man.files[i].name;
        }
        if (bad) {
            ps_admin_reply_error(req, PS_ECORRUPT, "snapshot file %s: crc32 mismatch", bad);
            drop_staging(f);
        } else {
            f->held[f->nheld] = v;
            memcpy(f->held_fp[f->nheld++], f->man.fingerprint, 17);
            ps_admin_reply_json(
                req, 200, json_pack("{s:I, s:s}", "version", (json_int_t)v, "state", "loaded"));
            f->staging = 0; /* installed; the bytes stay for the test to compare */
        }
    }
    pthread_mutex_unlock(&f->mu);
}

static void s_abort(struct evhttp_request *req, void *arg)
{
    fake_shard *f = arg;
    uint64_t v = version_param(req);
    pthread_mutex_lock(&f->mu);
    f->aborts++;
    if (f->staging == v && find_held(f, v) < 0) drop_staging(f);
    pthread_mutex_unlock(&f->mu);
    ps_admin_reply_json(req, 200, json_pack("{s:I}", "aborted", (json_int_t)v));
}

static void s_activate(struct evhttp_request *req, void *arg)
{
    fake_shard *f = arg;
    uint64_t v = version_param(req);
    pthread_mutex_lock(&f->mu);
    if (find_held(f, v) < 0) {
        ps_admin_reply_error(req, PS_ENOTFOUND, "version %llu is not loaded",
                             (unsigned long long)v);
    } else if (f->fail_activate && (uint64_t)f->fail_activate == v) {
        ps_admin_reply_error(req, PS_EIO, "pointer file: injected");
    } else {
        uint64_t prev = f->active;
        f->active = v;
        ps_admin_reply_json(
            req, 200,
            json_pack("{s:I, s:I}", "active", (json_int_t)v, "previous", (json_int_t)prev));
    }
    pthread_mutex_unlock(&f->mu);
}

static void s_retire(struct evhttp_request *req, void *arg)
{
    fake_shard *f = arg;
    uint64_t v = version_param(req);
    pthread_mutex_lock(&f->mu);
    int i = find_held(f, v);
    if (i < 0) {
        ps_admin_reply_error(req, PS_ENOTFOUND, "version %llu is not held", (unsigned long long)v);
    } else if (v == f->active) {
        ps_admin_reply_error(req, PS_ECONFLICT, "version %llu is active", (unsigned long long)v);
    } else {
        f->held[i] = f->held[f->nheld - 1];
        memcpy(f->held_fp[i], f->held_fp[f->nheld - 1], 17);
        f->nheld--;
        ps_admin_reply_json(req, 200, json_pack("{s:I}", "retired", (json_int_t)v));
    }
    pthread_mutex_unlock(&f->mu);
}

static void b_health(struct evhttp_request *req, void *arg)
{
    fake_broker *b = arg;
    ps_admin_reply_json(req, 200,
                        json_pack("{s:s, s:I, s:s}", "status", "ok", "version",
                                  (json_int_t)b->version, "fingerprint", b->fp));
}

static void b_switch(struct evhttp_request *req, void *arg)
{
    fake_broker *b = arg;
    uint64_t v = version_param(req);
    if (b->fail_switch) {
        ps_admin_reply_error(req, PS_ECONFLICT, "injected: a replica does not hold it");
        return;
    }
    const char *fp = NULL;
    for (size_t i = 0; i < b->nreplicas; i++) {
        fake_shard *f = &b->replicas[i];
        pthread_mutex_lock(&f->mu);
        int h = find_held(f, v);
        if (h >= 0 && !fp) fp = f->held_fp[h];
        pthread_mutex_unlock(&f->mu);
        if (h < 0) {
            ps_admin_reply_error(req, PS_ECONFLICT, "replica %zu does not hold version %llu", i,
                                 (unsigned long long)v);
            return;
        }
    }
    uint64_t prev = b->version;
    b->version = v;
    snprintf(b->fp, sizeof b->fp, "%s", fp);
    ps_admin_reply_json(req, 200,
                        json_pack("{s:I, s:I, s:s}", "version", (json_int_t)v, "previous",
                                  (json_int_t)prev, "fingerprint", b->fp));
}

/* ---- the cluster and the build ----------------------------------------------------------- */

typedef struct world {
    char dir[256], build[300], topo[300], token[300];
    fake_shard rep[NREP]; /* one shard, NREP replicas */
    fake_broker broker;
    ps_admin_route sroutes[NREP][7], broutes[2];
    unsigned char *file0; /* 000001.sst's bytes */
    size_t file0_len;
    char fp_old[17], fp_new[17];
} world;

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

/* A build of one shard, version 7: 000001.sst (50,003 bytes), CURRENT, an empty 000002.log. */
static void make_build(world *w)
{
    char path[400];
    snprintf(w->build, sizeof w->build, "%s/build", w->dir);
    mkdir(w->build, 0755);
    snprintf(path, sizeof path, "%s/shard-000", w->build);
    mkdir(path, 0755);
    w->file0_len = 50003;
    w->file0 = malloc(w->file0_len);
    for (size_t i = 0; i < w->file0_len; i++) w->file0[i] = (unsigned char)(i * 131 + (i >> 7));
    snprintf(path, sizeof path, "%s/shard-000/000001.sst", w->build);
    write_file(path, w->file0, w->file0_len);
    snprintf(path, sizeof path, "%s/shard-000/CURRENT", w->build);
    write_file(path, "MANIFEST-000005\n", 16);
    snprintf(path, sizeof path, "%s/shard-000/000002.log", w->build);
    write_file(path, "", 0);
    ps_snapshot s = {.version = 7, .shard = 0, .shards = 1, .stickers = 3};
    memcpy(s.fingerprint, w->fp_new, 17);
    snprintf(path, sizeof path, "%s/shard-000", w->build);
    ps_err err = {0, ""};
    assert_int_equal(ps_snapshot_write(path, &s, &err), 0);
    assert_int_equal(s.nfiles, 3);
    ps_snapshot_clear(&s);
    json_t *c = json_pack("{s:i, s:I, s:s, s:[s]}", "shards", 1, "version", (json_int_t)7,
                          "fingerprint", w->fp_new, "shard_dirs", "shard-000");
    snprintf(path, sizeof path, "%s/cluster.json", w->build);
    assert_int_equal(json_dump_file(c, path, 0), 0);
    json_decref(c);
}

static ps_admin_t *start_admin(const ps_admin_route *routes, size_t n)
{
    ps_admin_cfg cfg = {.listen = "127.0.0.1:0",
                        .token = TOKEN,
                        .max_body = 1 << 20,
                        .comp = "test",
                        .routes = routes,
                        .nroutes = n};
    ps_err err = {0, ""};
    ps_admin_t *a = ps_admin_start(&cfg, &err);
    assert_non_null(a);
    return a;
}

/* Replicas hold version 5 (active), the broker serves 5. */
static int setup(void **state)
{
    world *w = calloc(1, sizeof *w);
    snprintf(w->dir, sizeof w->dir, "/tmp/test_push.XXXXXX");
    assert_non_null(mkdtemp(w->dir));
    memcpy(w->fp_old, "00000000000000aa", 17);
    memcpy(w->fp_new, "0123456789abcdef", 17);
    make_build(w);
    for (int r = 0; r < NREP; r++) {
        fake_shard *f = &w->rep[r];
        pthread_mutex_init(&f->mu, NULL);
        f->shards = 1;
        f->held[0] = 5;
        memcpy(f->held_fp[0], w->fp_old, 17);
        f->nheld = 1;
        f->active = 5;
        ps_admin_route rt[7] = {{"/healthz", PS_ADMIN_GET, 0, s_health, f},
                                {"/admin/stage", PS_ADMIN_POST, 1, s_stage, f},
                                {"/admin/stage/", PS_ADMIN_PUT, 1, s_put, f},
                                {"/admin/prepare", PS_ADMIN_POST, 1, s_prepare, f},
                                {"/admin/abort", PS_ADMIN_POST, 1, s_abort, f},
                                {"/admin/activate", PS_ADMIN_POST, 1, s_activate, f},
                                {"/admin/retire", PS_ADMIN_POST, 1, s_retire, f}};
        memcpy(w->sroutes[r], rt, sizeof rt);
        f->admin = start_admin(w->sroutes[r], 7);
    }
    w->broker.replicas = w->rep;
    w->broker.nreplicas = NREP;
    w->broker.version = 5;
    memcpy(w->broker.fp, w->fp_old, 17);
    ps_admin_route br[2] = {{"/healthz", PS_ADMIN_GET, 0, b_health, &w->broker},
                            {"/admin/switch", PS_ADMIN_POST, 1, b_switch, &w->broker}};
    memcpy(w->broutes, br, sizeof br);
    w->broker.admin = start_admin(w->broutes, 2);

    json_t *t = json_pack(
        "{s:[[s+, s+]], s:[s+]}", "shards", "http://", ps_admin_address(w->rep[0].admin), "http://",
        ps_admin_address(w->rep[1].admin), "brokers", "http://", ps_admin_address(w->broker.admin));
    assert_non_null(t);
    snprintf(w->topo, sizeof w->topo, "%s/topology.json", w->dir);
    assert_int_equal(json_dump_file(t, w->topo, 0), 0);
    json_decref(t);
    snprintf(w->token, sizeof w->token, "%s/token", w->dir);
    write_file(w->token, TOKEN "\n", strlen(TOKEN) + 1);
    ps_log_level = getenv("TEST_PUSH_LOG") ? PS_LOG_INFO : PS_LOG_OFF;
    *state = w;
    return 0;
}

static int teardown(void **state)
{
    world *w = *state;
    char cmd[400];
    for (int r = 0; r < NREP; r++) {
        ps_admin_stop(w->rep[r].admin);
        drop_staging(&w->rep[r]);
        pthread_mutex_destroy(&w->rep[r].mu);
    }
    ps_admin_stop(w->broker.admin);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", w->dir);
    assert_int_equal(system(cmd), 0);
    free(w->file0);
    free(w);
    return 0;
}

static int push(world *w, const char *token_file, const char *extra)
{
    char *argv[16] = {"push",  "--build",      w->build,          "--topology",
                      w->topo, "--token-file", (char *)token_file};
    int argc = 7;
    char extra_buf[200] = "";
    if (extra) {
        snprintf(extra_buf, sizeof extra_buf, "%s", extra);
        for (char *tok = strtok(extra_buf, " "); tok && argc < 15; tok = strtok(NULL, " "))
            argv[argc++] = tok;
    }
    return builder_cmd_push(argc, argv);
}

static void assert_staged(const world *w, const fake_shard *f)
{
    assert_int_equal(f->got[0], w->file0_len); /* 000001.sst sorts first */
    assert_memory_equal(f->buf[0], w->file0, w->file0_len);
}

/* ---- the tests ----------------------------------------------------------------------------- */

static void test_push_ok(void **state)
{
    world *w = *state;
    /* 4,096-byte chunks: 13 PUTs for the first file; a 500 and a lost chunk on replica 0 */
    w->rep[0].fail_put = 3;
    w->rep[0].lose_put = 6;
    assert_int_equal(push(w, w->token, "--chunk-bytes 4096 --parallel 3"), 0);
    for (int r = 0; r < NREP; r++) {
        assert_int_equal(w->rep[r].active, 7);
        assert_int_equal(w->rep[r].nheld, 2); /* 5 stays for a rollback */
        assert_staged(w, &w->rep[r]);
    }
    assert_true(w->rep[0].puts > w->rep[1].puts); /* the retry and the resend */
    assert_int_equal(w->broker.version, 7);
    assert_string_equal(w->broker.fp, w->fp_new);

    /* again: every replica holds 7 loaded, nothing is staged */
    int stages = w->rep[0].stages;
    assert_int_equal(push(w, w->token, NULL), 0);
    assert_int_equal(w->rep[0].stages, stages);

    /* rollback and forward */
    char *a1[] = {"activate", "--version", "5", "--topology", w->topo, "--token-file", w->token};
    assert_int_equal(builder_cmd_activate(7, a1), 0);
    assert_int_equal(w->rep[0].active, 5);
    assert_int_equal(w->rep[1].active, 5);
    assert_int_equal(w->broker.version, 5);
    char *a2[] = {"activate", "--version", "6", "--topology", w->topo, "--token-file", w->token};
    assert_int_equal(builder_cmd_activate(7, a2), 1); /* nobody holds 6: nothing moves */
    assert_int_equal(w->rep[0].active, 5);
    assert_int_equal(w->broker.version, 5);
}

static void test_wrong_token(void **state)
{
    world *w = *state;
    char path[400];
    snprintf(path, sizeof path, "%s/wrong", w->dir);
    write_file(path, "not-the-token\n", 14);
    assert_int_equal(push(w, path, NULL), 1);
    for (int r = 0; r < NREP; r++) {
        assert_int_equal(w->rep[r].stages, 0);
        assert_int_equal(w->rep[r].nheld, 1);
        assert_int_equal(w->rep[r].active, 5);
    }
    assert_int_equal(w->broker.version, 5);
}

static void test_corrupt_prepare(void **state)
{
    world *w = *state;
    w->rep[1].corrupt = 1;
    assert_int_equal(push(w, w->token, "--retries 0"), 1);
    for (int r = 0; r < NREP; r++) {
        assert_int_equal(w->rep[r].nheld, 1); /* 7 retired where it got loaded */
        assert_int_equal(w->rep[r].held[0], 5);
        assert_int_equal(w->rep[r].staging, 0);
        assert_int_equal(w->rep[r].active, 5);
    }
    assert_int_equal(w->broker.version, 5);
}

static void test_activate_fails(void **state)
{
    world *w = *state;
    w->rep[1].fail_activate = 7;
    assert_int_equal(push(w, w->token, NULL), 1);
    for (int r = 0; r < NREP; r++) {
        assert_int_equal(w->rep[r].active, 5); /* replica 0 moved back */
        assert_int_equal(w->rep[r].nheld, 2);  /* 7 stays loaded for another try */
    }
    assert_int_equal(w->broker.version, 5);
}

static void test_switch_fails(void **state)
{
    world *w = *state;
    w->broker.fail_switch = 1;
    assert_int_equal(push(w, w->token, NULL), 1);
    for (int r = 0; r < NREP; r++) assert_int_equal(w->rep[r].active, 5);
    assert_int_equal(w->broker.version, 5);
    w->broker.fail_switch = 0;
    char *a[] = {"activate", "--version", "7", "--topology", w->topo, "--token-file", w->token};
    assert_int_equal(builder_cmd_activate(7, a), 0);
    assert_int_equal(w->broker.version, 7);
}

static void test_usage(void **state)
{
    world *w = *state;
    char *a1[] = {"push", "--build", w->build};
    assert_int_equal(builder_cmd_push(3, a1), 2);
    char *a2[] = {"push", "--build", w->build, "--topology", w->topo, "--chunk-bytes", "9000000"};
    assert_int_equal(builder_cmd_push(7, a2), 2);
    char *a3[] = {"activate", "--topology", w->topo};
    assert_int_equal(builder_cmd_activate(3, a3), 2);
    unsetenv("PERSRV_ADMIN_TOKEN");
    char *a4[] = {"push", "--build", w->build, "--topology", w->topo};
    assert_int_equal(builder_cmd_push(5, a4), 2); /* no token */
    /* a topology with another shard count: an error before anything is asked */
    char path[400];
    snprintf(path, sizeof path, "%s/two.json", w->dir);
    const char *two = "{\"shards\": [[\"http://127.0.0.1:1\"], [\"http://127.0.0.1:2\"]]}";
    write_file(path, two, strlen(two));
    char *a5[] = {"push", "--build", w->build, "--topology", path, "--token-file", w->token};
    assert_int_equal(builder_cmd_push(7, a5), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_push_ok, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_token, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_prepare, setup, teardown),
        cmocka_unit_test_setup_teardown(test_activate_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_switch_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_usage, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
