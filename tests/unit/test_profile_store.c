/*
 * test_profile_store.c — idempotent clicks in the profile service's store (profile/store.c,
 * the library profsvc_store): a click id is stored once per user, a repeat answers duplicate with
 * the user's state and writes nothing (the checksum over every key does not move), the same id for
 * another sticker is a conflict, ids are per user, the window forgets the ids of clicks older than
 * the user's last click_ids, and an id survives a reopen and reaches a replica through the WAL (a
 * replica's directory opened as the primary still knows it: failover).
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

#include "profile.h"
#include "ps/log.h"

#define DIM 4

typedef struct fixture {
    char root[64];
    char primary[96], replica[96];
    profsvc_store_t *st;
} fixture;

static profsvc_store_t *open_at(const char *dir, int replica, uint32_t click_ids)
{
    profsvc_store_cfg cfg = {.dir = dir,
                             .replica = replica,
                             .sync = 0,
                             .history = 200,
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

int main(void)
{
    ps_log_level = PS_LOG_ERROR;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_duplicate_stores_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_window, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_and_replica, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
