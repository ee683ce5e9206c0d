/*
 * test_profile_store.c — idempotent clicks in the profile service's store (profile/store.c,
 * the library profsvc_store): a click id is stored once per user, a repeat answers duplicate with
 * the user's state and writes nothing (the checksum over every key does not move), the same id for
 * another sticker is a conflict, ids are per user, the window forgets the ids of clicks older than
 * the user's last click_ids, and an id survives a reopen and reaches a replica through the WAL (a
 * replica's directory opened as the primary still knows it: failover). Also: what clicks build
 * (profiles, the bounded history, the click log and its cap), the dimension fixed by the first
 * write, loads merged (a repeat stores the same bytes, clicks survive, a fresh user keeps the
 * load's centroids bit for bit), a replica refusing writes, a checkpoint to a path, the WAL's
 * edges, and threads clicking at once (every click stored once, a replica fed the WAL equal).
 * Batches and checkpoints in a replica: test_replica_apply.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "profile.h"
#include "ps/log.h"

#define DIM 4

typedef struct fixture {
    char root[64];
    char primary[96], replica[96];
    profsvc_store_t *st;
} fixture;

static uint32_t history_cap = 200; /* cfg.history of the next open_at */

static profsvc_store_t *open_at(const char *dir, int replica, uint32_t click_ids)
{
    profsvc_store_cfg cfg = {.dir = dir,
                             .replica = replica,
                             .sync = 0,
                             .history = history_cap,
                             .kmax = 5,
                             .wal_ttl_s = 3600,
                             .wal_size_mb = 64,
                             .write_buffer_kb = 4096,
                             .click_ids = click_ids};
    ps_err err = {0, ""};
    profsvc_store_t *st = profsvc_store_open(&cfg, &err);
    if (!st) fail_msg("open %s: %s", dir, err.msg);
    return st;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->root, sizeof f->root, "/tmp/ps_test_profile_store_XXXXXX");
    assert_non_null(mkdtemp(f->root));
    snprintf(f->primary, sizeof f->primary, "%s/primary", f->root);
    snprintf(f->replica, sizeof f->replica, "%s/replica", f->root);
    f->st = open_at(f->primary, 0, 3);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    history_cap = 200;
    profsvc_store_close(f->st);
    profsvc_rmtree(f->root);
    free(f);
    return 0;
}

/* A click of user on sticker with click id id (NULL: none). Returns the store's code. */
static int click(profsvc_store_t *st, const char *user, uint64_t sticker, const char *id,
                 profsvc_write_result *r)
{
    float emb[DIM];
    for (int i = 0; i < DIM; i++) emb[i] = (float)((sticker * 7 + (uint64_t)i) % 5) + 0.5f;
    ps_err err = {0, ""};
    memset(r, 0, sizeof *r);
    return profsvc_store_click(st, user, sticker, "q", 1, emb, DIM, id, r, &err);
}

static size_t nclicks(profsvc_store_t *st, const char *user)
{
    uint64_t *ids;
    size_t n;
    ps_err err;
    assert_int_equal(profsvc_store_clicks(st, user, 1000, &ids, &n, &err), 0);
    free(ids);
    return n;
}

static uint64_t checksum(profsvc_store_t *st)
{
    uint64_t sum, keys, seq;
    ps_err err;
    assert_int_equal(profsvc_store_checksum(st, &sum, &keys, &seq, &err), 0);
    return sum;
}

static void test_duplicate_stores_nothing(void **state)
{
    fixture *f = *state;
    profsvc_write_result r1, r2, r;
    assert_int_equal(click(f->st, "u1", 10, "c-1", &r1), 0);
    assert_false(r1.duplicate);
    assert_int_equal(r1.history, 1);
    assert_int_equal(click(f->st, "u1", 11, "c-2", &r), 0);
    uint64_t sum = checksum(f->st);

    /* the retry: the user's state as it is, the latest seq (>= the first answer's) */
    assert_int_equal(click(f->st, "u1", 10, "c-1", &r2), 0);
    assert_true(r2.duplicate);
    assert_int_equal(r2.history, 2);
    assert_int_equal(r2.k, r.k);
    assert_true(r2.seq >= r1.seq && r2.seq == r.seq);
    assert_true(checksum(f->st) == sum);
    assert_int_equal(nclicks(f->st, "u1"), 2);

    /* the same id for another sticker: a client bug, refused, nothing stored */
    assert_int_equal(click(f->st, "u1", 12, "c-1", &r), PS_ECONFLICT);
    assert_true(checksum(f->st) == sum);

    /* ids are per user; clicks without an id are never deduplicated */
    assert_int_equal(click(f->st, "u2", 10, "c-1", &r), 0);
    assert_false(r.duplicate);
    assert_int_equal(click(f->st, "u2", 10, NULL, &r), 0);
    assert_int_equal(click(f->st, "u2", 10, "", &r), 0);
    assert_false(r.duplicate);
    assert_int_equal(nclicks(f->st, "u2"), 3);

    /* a malformed id never reaches the database */
    sum = checksum(f->st);
    assert_int_equal(click(f->st, "u1", 10, "has space", &r), PS_EINVAL);
    assert_true(checksum(f->st) == sum);
}

/* click_ids = 3: after clicks c0..c4 the window holds c2, c3, c4; c0 and c1 are stored again. */
static void test_window(void **state)
{
    fixture *f = *state;
    profsvc_write_result r;
    char id[8];
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof id, "c%d", i);
        assert_int_equal(click(f->st, "w", 100 + (uint64_t)i, id, &r), 0);
        assert_false(r.duplicate);
    }
    uint64_t keys0, sum, seq;
    ps_err err;
    assert_int_equal(profsvc_store_checksum(f->st, &sum, &keys0, &seq, &err), 0);
    for (int i = 4; i >= 2; i--) {
        snprintf(id, sizeof id, "c%d", i);
        assert_int_equal(click(f->st, "w", 100 + (uint64_t)i, id, &r), 0);
        assert_true(r.duplicate);
    }
    assert_int_equal(nclicks(f->st, "w"), 5);
    assert_int_equal(click(f->st, "w", 101, "c1", &r), 0); /* forgotten: stored again */
    assert_false(r.duplicate);
    assert_int_equal(nclicks(f->st, "w"), 6);
    /* the window moved on by one: it holds c3, c4 and c1 (seq 5), c2 (seq 2) fell out; L and H
     * grew by one key each, I and J stayed at 3 each */
    uint64_t keys1;
    assert_int_equal(profsvc_store_checksum(f->st, &sum, &keys1, &seq, &err), 0);
    assert_true(keys1 == keys0 + 2);
    assert_int_equal(click(f->st, "w", 102, "c2", &r), 0); /* fell out: stored again */
    assert_false(r.duplicate);
    assert_int_equal(click(f->st, "w", 101, "c1", &r), 0);
    assert_true(r.duplicate);
}

/* The id is in the database: a reopened primary knows it, a replica applying the WAL holds the
 * same bytes, and the replica's directory opened as a primary (a failover) knows it too. */
static void test_reopen_and_replica(void **state)
{
    fixture *f = *state;
    profsvc_write_result r;
    assert_int_equal(click(f->st, "u1", 10, "c-1", &r), 0);
    assert_int_equal(click(f->st, "u1", 11, NULL, &r), 0);
    profsvc_store_close(f->st);
    f->st = open_at(f->primary, 0, 3);
    assert_int_equal(click(f->st, "u1", 10, "c-1", &r), 0);
    assert_true(r.duplicate);

    profsvc_store_t *rep = open_at(f->replica, 1, 3);
    uint64_t from = 1, latest = 0;
    for (;;) {
        profsvc_batch *b;
        size_t n;
        int gone;
        ps_err err = {0, ""};
        assert_int_equal(profsvc_store_wal(f->st, from, 1 << 20, &b, &n, &gone, &latest, &err), 0);
        assert_false(gone);
        for (size_t i = 0; i < n; i++) {
            if (profsvc_store_apply(rep, b[i].seq, b[i].data, b[i].len, &err))
                fail_msg("apply at %llu: %s", (unsigned long long)b[i].seq, err.msg);
            from = profsvc_store_seq(rep) + 1;
        }
        profsvc_batches_free(b, n);
        if (n == 0 || from > latest) break;
    }
    assert_true(profsvc_store_seq(rep) == latest);
    assert_true(checksum(rep) == checksum(f->st));
    /* a replica takes no clicks */
    assert_int_equal(click(rep, "u1", 10, "c-1", &r), PS_EINVAL);
    profsvc_store_close(rep);

    rep = open_at(f->replica, 0, 3); /* promoted */
    uint64_t sum = checksum(rep);
    assert_int_equal(click(rep, "u1", 10, "c-1", &r), 0);
    assert_true(r.duplicate);
    assert_int_equal(r.history, 2);
    assert_true(checksum(rep) == sum);
    profsvc_store_close(rep);
}

static void emb_of(uint64_t sticker, float *emb)
{
    for (int i = 0; i < DIM; i++) emb[i] = (float)((sticker * 7 + (uint64_t)i) % 5) + 0.5f;
}

/* What clicks build: the profile, the history, the click log; the dimension. */
static void test_clicks_build(void **state)
{
    fixture *f = *state;
    profsvc_write_result r;
    ps_profile p;
    int found = 1;
    uint64_t seq = 99;
    ps_err err = {0, ""};
    assert_int_equal(profsvc_store_dim(f->st), 0);
    assert_int_equal(profsvc_store_profile(f->st, "nobody", &found, &p, &seq, &err), 0);
    assert_false(found);
    assert_int_equal(p.k, 0);
    assert_true(seq == 0);

    assert_int_equal(click(f->st, "u1", 10, NULL, &r), 0);
    assert_int_equal(r.history, 1);
    assert_int_equal(r.k, 1);
    assert_int_equal(profsvc_store_dim(f->st), DIM);
    assert_int_equal(profsvc_store_profile(f->st, "u1", &found, &p, &seq, &err), 0);
    assert_true(found);
    assert_true(seq == r.seq && seq == profsvc_store_seq(f->st));
    assert_int_equal(p.k, 1);
    assert_int_equal(p.dim, DIM);
    float e[DIM];
    emb_of(10, e);
    assert_memory_equal(p.centroids, e, sizeof e); /* one point: its own centroid */
    ps_profile_clear(&p);

    /* five distinct points, a repeat: k = kmax = 5, every click in the history and the log */
    for (uint64_t s = 11; s <= 14; s++) assert_int_equal(click(f->st, "u1", s, NULL, &r), 0);
    assert_int_equal(click(f->st, "u1", 10, NULL, &r), 0);
    assert_int_equal(r.history, 6);
    assert_int_equal(r.k, 5);
    uint64_t *ids;
    size_t n;
    assert_int_equal(profsvc_store_clicks(f->st, "u1", 100, &ids, &n, &err), 0);
    assert_int_equal(n, 6);
    const uint64_t want[] = {10, 11, 12, 13, 14, 10};
    assert_memory_equal(ids, want, sizeof want);
    free(ids);
    assert_int_equal(profsvc_store_clicks(f->st, "u1", 5, &ids, &n, &err), PS_ETOOBIG);
    assert_null(ids);
    assert_int_equal(n, 0);
    assert_int_equal(profsvc_store_clicks(f->st, "u", 100, &ids, &n, &err), 0); /* a prefix */
    assert_int_equal(n, 0);

    /* another dimension: refused, nothing written */
    uint64_t sum = checksum(f->st);
    float e3[3] = {1, 2, 3};
    err = (ps_err){0, ""};
    assert_int_equal(profsvc_store_click(f->st, "u2", 10, "q", 1, e3, 3, NULL, &r, &err),
                     PS_EINVAL);
    assert_non_null(strstr(err.msg, "click.embedding"));
    ps_profile p3 = {.k = 1, .dim = 3, .centroids = e3, .radius = {1}};
    assert_int_equal(profsvc_store_load(f->st, "u2", &p3, NULL, NULL, 0, &r, &err), PS_EINVAL);
    assert_true(checksum(f->st) == sum);

    /* the dimension and the data survive a reopen */
    profsvc_store_close(f->st);
    history_cap = 3;
    f->st = open_at(f->primary, 0, 3);
    assert_int_equal(profsvc_store_dim(f->st), DIM);
    assert_true(checksum(f->st) == sum);

    /* the bounded history: the newest 3; the log keeps all */
    for (uint64_t s = 10; s <= 14; s++) assert_int_equal(click(f->st, "h", s, NULL, &r), 0);
    assert_int_equal(r.history, 3);
    assert_int_equal(r.k, 3);
    assert_int_equal(nclicks(f->st, "h"), 5);

    /* a replica takes no writes */
    profsvc_store_t *rep = open_at(f->replica, 1, 3);
    ps_profile p1 = {.k = 1, .dim = DIM, .centroids = e, .radius = {1}};
    assert_int_equal(profsvc_store_load(rep, "u1", &p1, NULL, NULL, 0, &r, &err), PS_EINVAL);
    assert_int_equal(profsvc_store_seq(rep), 0);
    profsvc_store_close(rep);
}

/* Loads merge: a fresh user keeps the load's centroids bit for bit; a repeat stores the same
 * bytes; clicks since survive a load, and a load whose stickers are all held changes nothing. */
static void test_load_merge(void **state)
{
    fixture *f = *state;
    float c[2 * DIM] = {0.125f, 1, 2, 3, 4, 5, 6, 7.75f};
    float embs[3 * DIM] = {1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3};
    uint64_t ids[3] = {1, 2, 3};
    ps_profile prof = {.k = 2, .dim = DIM, .centroids = c, .radius = {0.25, 1.5}};
    profsvc_write_result r;
    ps_err err = {0, ""};
    assert_int_equal(profsvc_store_load(f->st, "L", &prof, ids, embs, 3, &r, &err), 0);
    assert_false(r.merged);
    assert_int_equal(r.history, 3);
    assert_int_equal(r.k, 2);
    ps_profile got;
    int found;
    uint64_t seq;
    assert_int_equal(profsvc_store_profile(f->st, "L", &found, &got, &seq, &err), 0);
    assert_true(found);
    assert_int_equal(got.k, 2);
    assert_memory_equal(got.centroids, c, sizeof c);
    assert_true(got.radius[0] == 0.25 && got.radius[1] == 1.5);
    ps_profile_clear(&got);
    assert_int_equal(nclicks(f->st, "L"), 0); /* the click log is not a load's */

    uint64_t sum = checksum(f->st);
    assert_int_equal(profsvc_store_load(f->st, "L", &prof, ids, embs, 3, &r, &err), 0);
    assert_true(checksum(f->st) == sum);

    /* a click since: kept, the newest; the same load again is then a recompute over the same
     * history the click computed over: nothing changes */
    assert_int_equal(click(f->st, "L", 50, NULL, &r), 0);
    assert_int_equal(r.history, 4);
    sum = checksum(f->st);
    assert_int_equal(profsvc_store_load(f->st, "L", &prof, ids, embs, 3, &r, &err), 0);
    assert_true(r.merged);
    assert_int_equal(r.history, 4);
    assert_true(checksum(f->st) == sum);
    assert_int_equal(nclicks(f->st, "L"), 1);

    /* a load with a new sticker: merged in, older than the held ones */
    uint64_t ids2[1] = {4};
    float emb2[DIM] = {4, 4, 4, 4};
    assert_int_equal(profsvc_store_load(f->st, "L", &prof, ids2, emb2, 1, &r, &err), 0);
    assert_true(r.merged);
    assert_int_equal(r.history, 5);
    assert_true(checksum(f->st) != sum);

    /* no dimension for entries: refused */
    ps_profile nodim = {.k = 0, .dim = 0};
    err = (ps_err){0, ""};
    assert_int_equal(profsvc_store_load(f->st, "M", &nodim, ids, embs, 3, &r, &err), PS_EINVAL);
    assert_non_null(strstr(err.msg, "dimension"));
}

/* profsvc_store_checkpoint: an openable copy; an existing path is refused. */
static void test_checkpoint_path(void **state)
{
    fixture *f = *state;
    profsvc_write_result r;
    for (uint64_t s = 0; s < 5; s++) assert_int_equal(click(f->st, "u", s, NULL, &r), 0);
    char path[128];
    snprintf(path, sizeof path, "%s/ck", f->root);
    uint64_t seq, bytes;
    size_t files;
    ps_err err = {0, ""};
    assert_int_equal(profsvc_store_checkpoint(f->st, path, &seq, &files, &bytes, &err), 0);
    assert_true(seq == profsvc_store_seq(f->st));
    assert_true(files > 0 && bytes > 0);
    err = (ps_err){0, ""};
    assert_int_equal(profsvc_store_checkpoint(f->st, path, &seq, &files, &bytes, &err), PS_EEXIST);
    assert_int_equal(files, 0);
    profsvc_store_t *copy = open_at(path, 1, 3);
    assert_true(checksum(copy) == checksum(f->st));
    assert_true(profsvc_store_seq(copy) == seq);
    profsvc_store_close(copy);
}

/* The WAL's edges: nothing past latest, nothing from 0, from any batch start on. */
static void test_wal_edges(void **state)
{
    fixture *f = *state;
    profsvc_batch *b;
    size_t n;
    int gone;
    uint64_t latest = 99;
    ps_err err = {0, ""};
    assert_int_equal(profsvc_store_wal(f->st, 1, 1 << 20, &b, &n, &gone, &latest, &err), 0);
    assert_int_equal(n, 0);
    assert_false(gone);
    assert_true(latest == 0);
    profsvc_write_result r;
    uint64_t starts[3];
    for (int i = 0; i < 3; i++) {
        assert_int_equal(click(f->st, "u", (uint64_t)i, NULL, &r), 0);
        starts[i] = i ? starts[i - 1] : 1;
        if (i) {
            /* the previous write's last seq + 1 */
            profsvc_batch *pb;
            size_t pn;
            assert_int_equal(
                profsvc_store_wal(f->st, starts[i - 1], 1, &pb, &pn, &gone, &latest, &err), 0);
            uint32_t count;
            assert_int_equal(profsvc_batch_check(pb[0].seq, pb[0].data, pb[0].len, &count, NULL),
                             0);
            starts[i] = pb[0].seq + count;
            profsvc_batches_free(pb, pn);
        }
    }
    uint64_t top = profsvc_store_seq(f->st);
    assert_int_equal(profsvc_store_wal(f->st, top + 1, 1 << 20, &b, &n, &gone, &latest, &err), 0);
    assert_int_equal(n, 0);
    assert_false(gone);
    assert_true(latest == top);
    assert_int_equal(profsvc_store_wal(f->st, 0, 1 << 20, &b, &n, &gone, &latest, &err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(profsvc_store_wal(f->st, starts[1], 1 << 20, &b, &n, &gone, &latest, &err), 0);
    assert_int_equal(n, 2);
    assert_true(b[0].seq == starts[1] && b[1].seq == starts[2]);
    profsvc_batches_free(b, n);
    /* the same request again (a cached iterator must not change the answer) */
    assert_int_equal(profsvc_store_wal(f->st, starts[1], 1 << 20, &b, &n, &gone, &latest, &err), 0);
    assert_int_equal(n, 2);
    assert_true(b[0].seq == starts[1] && b[1].seq == starts[2]);
    profsvc_batches_free(b, n);
}

/* Threads clicking at once: users shared between threads, and two threads sending the same
 * click ids (a retry racing its first attempt). */
#define CT_THREADS 4
#define CT_CLICKS  40
#define CT_SHARED  10

typedef struct ct_arg {
    profsvc_store_t *st;
    int t;
    int fresh_shared; /* shared ids this thread stored (not duplicate) */
    int failed;
} ct_arg;

static void *ct_main(void *p)
{
    ct_arg *a = p;
    char user[16], id[32];
    for (int i = 0; i < CT_CLICKS; i++) {
        profsvc_write_result r;
        snprintf(user, sizeof user, "c%d", i % 5);
        snprintf(id, sizeof id, "t%d-%d", a->t, i);
        if (click(a->st, user, 10 + (uint64_t)(i % 5), id, &r) || r.duplicate) a->failed++;
        if (click(a->st, user, 10 + (uint64_t)(i % 5), id, &r) || !r.duplicate) a->failed++;
        if (i < CT_SHARED) {
            snprintf(id, sizeof id, "shared-%d", i);
            if (click(a->st, "s", 7, id, &r))
                a->failed++;
            else if (!r.duplicate)
                a->fresh_shared++;
        }
    }
    return NULL;
}

static void test_concurrent_clicks(void **state)
{
    fixture *f = *state;
    profsvc_store_close(f->st);
    f->st = open_at(f->primary, 0, 1000);
    pthread_t tid[CT_THREADS];
    ct_arg args[CT_THREADS];
    for (int t = 0; t < CT_THREADS; t++) {
        args[t] = (ct_arg){.st = f->st, .t = t};
        assert_int_equal(pthread_create(&tid[t], NULL, ct_main, &args[t]), 0);
    }
    int fresh = 0;
    for (int t = 0; t < CT_THREADS; t++) {
        pthread_join(tid[t], NULL);
        assert_int_equal(args[t].failed, 0);
        fresh += args[t].fresh_shared;
    }
    assert_int_equal(fresh, CT_SHARED); /* each shared id stored by exactly one thread */
    assert_int_equal(nclicks(f->st, "s"), CT_SHARED);
    for (int u = 0; u < 5; u++) {
        char user[16];
        snprintf(user, sizeof user, "c%d", u);
        assert_int_equal(nclicks(f->st, user), CT_THREADS * CT_CLICKS / 5);
        ps_profile p;
        int found;
        uint64_t seq;
        assert_int_equal(profsvc_store_profile(f->st, user, &found, &p, &seq, NULL), 0);
        assert_true(found);
        assert_int_equal(p.k, 1); /* one sticker per user */
        ps_profile_clear(&p);
    }

    /* a replica fed the WAL holds the same bytes: the interleaving is in the batches */
    profsvc_store_t *rep = open_at(f->replica, 1, 1000);
    uint64_t from = 1, latest = 0;
    for (;;) {
        profsvc_batch *b;
        size_t n;
        int gone;
        ps_err err = {0, ""};
        assert_int_equal(profsvc_store_wal(f->st, from, 1 << 20, &b, &n, &gone, &latest, &err), 0);
        for (size_t i = 0; i < n; i++) {
            if (profsvc_store_apply(rep, b[i].seq, b[i].data, b[i].len, &err))
                fail_msg("apply at %llu: %s", (unsigned long long)b[i].seq, err.msg);
        }
        from = profsvc_store_seq(rep) + 1;
        profsvc_batches_free(b, n);
        if (n == 0 || from > latest) break;
    }
    assert_true(checksum(rep) == checksum(f->st));
    profsvc_store_close(rep);
}

int main(void)
{
    ps_log_level = PS_LOG_ERROR;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_duplicate_stores_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_window, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_and_replica, setup, teardown),
        cmocka_unit_test_setup_teardown(test_clicks_build, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_merge, setup, teardown),
        cmocka_unit_test_setup_teardown(test_checkpoint_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wal_edges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_clicks, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
