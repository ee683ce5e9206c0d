/*
 * test_replica_apply.c — what a profile replica does with what its primary sends, without
 * sockets. replica.c's tail thread (apply_reply, bootstrap) is static and talks ZeroMQ; all it
 * does to the database goes through the store (profile/store.c, profsvc_store): batches through
 * profsvc_store_apply (checked by profsvc_batch_check), a checkpoint through the session calls
 * and profsvc_store_swap. Those are tested here, fed from a real primary store.
 *
 * Checked: every batch of the primary's WAL, applied in order, gives the primary's checksum and
 * sequence number, in whatever chunks the WAL is read; a batch after a gap, a batch applied
 * already and corrupt batches are refused and change nothing, and the replica goes on applying
 * the right batch afterwards; profsvc_batch_check on hand-made batches; a checkpoint installed
 * replaces whatever the replica held, and the replica tails the WAL on from it; session rules;
 * a swap without a checkpoint changes nothing, one over a broken checkpoint leaves the store
 * unavailable until a good one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
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
    profsvc_store_t *pri, *rep;
} fixture;

static profsvc_store_t *open_at(const char *dir, int replica)
{
    profsvc_store_cfg cfg = {.dir = dir,
                             .replica = replica,
                             .sync = 0,
                             .history = 4,
                             .kmax = 3,
                             .wal_ttl_s = 3600,
                             .wal_size_mb = 64,
                             .write_buffer_kb = 4096,
                             .click_ids = 2};
    ps_err err = {0, ""};
    profsvc_store_t *st = profsvc_store_open(&cfg, &err);
    if (!st) fail_msg("open %s: %s", dir, err.msg);
    return st;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->root, sizeof f->root, "/tmp/ps_test_replica_apply_XXXXXX");
    assert_non_null(mkdtemp(f->root));
    snprintf(f->primary, sizeof f->primary, "%s/primary", f->root);
    snprintf(f->replica, sizeof f->replica, "%s/replica", f->root);
    f->pri = open_at(f->primary, 0);
    f->rep = open_at(f->replica, 1);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    profsvc_store_close(f->pri);
    profsvc_store_close(f->rep);
    profsvc_rmtree(f->root);
    free(f);
    return 0;
}

static void click(profsvc_store_t *st, const char *user, uint64_t sticker, const char *id)
{
    float emb[DIM];
    for (int i = 0; i < DIM; i++) emb[i] = (float)((sticker * 7 + (uint64_t)i) % 5) + 0.5f;
    profsvc_write_result r;
    ps_err err = {0, ""};
    if (profsvc_store_click(st, user, sticker, "q", 1, emb, DIM, id, &r, &err))
        fail_msg("click %s %llu: %s", user, (unsigned long long)sticker, err.msg);
}

/* A mix of writes: clicks with and without ids (the window deletes I and J keys), a history
 * over its bound (H deletes), a load merged into clicks (H rewritten). */
static void workload(profsvc_store_t *st, const char *prefix, int n)
{
    char user[32], id[32];
    for (int i = 0; i < n; i++) {
        snprintf(user, sizeof user, "%s%d", prefix, i % 3);
        snprintf(id, sizeof id, "c%d", i);
        click(st, user, 100 + (uint64_t)(i % 7), i % 2 ? id : NULL);
    }
    float c[DIM] = {1, 2, 3, 4}, embs[2 * DIM] = {1, 1, 1, 1, 2, 2, 2, 2};
    uint64_t ids[2] = {900, 901};
    ps_profile prof = {.k = 1, .dim = DIM, .centroids = c, .radius = {0.5}};
    profsvc_write_result r;
    ps_err err = {0, ""};
    snprintf(user, sizeof user, "%s0", prefix);
    if (profsvc_store_load(st, user, &prof, ids, embs, 2, &r, &err)) fail_msg("load: %s", err.msg);
    snprintf(user, sizeof user, "%sL", prefix);
    if (profsvc_store_load(st, user, &prof, ids, embs, 2, &r, &err)) fail_msg("load: %s", err.msg);
}

typedef struct dbstate {
    uint64_t sum, keys, seq;
} dbstate;

static dbstate state_of(profsvc_store_t *st)
{
    dbstate s;
    ps_err err = {0, ""};
    if (profsvc_store_checksum(st, &s.sum, &s.keys, &s.seq, &err))
        fail_msg("checksum: %s", err.msg);
    assert_true(s.seq == profsvc_store_seq(st));
    return s;
}

static void assert_same(dbstate a, dbstate b)
{
    assert_true(a.sum == b.sum);
    assert_true(a.keys == b.keys);
    assert_true(a.seq == b.seq);
}

/* Every batch of the primary's WAL from `from` on, max_bytes a read. OUT *n. */
static profsvc_batch *wal_from(profsvc_store_t *pri, uint64_t from, size_t max_bytes, size_t *n)
{
    profsvc_batch *all = NULL;
    *n = 0;
    for (;;) {
        profsvc_batch *b;
        size_t got;
        int gone;
        uint64_t latest;
        ps_err err = {0, ""};
        assert_int_equal(profsvc_store_wal(pri, from, max_bytes, &b, &got, &gone, &latest, &err),
                         0);
        assert_false(gone);
        if (got == 0) {
            assert_true(from > latest);
            break;
        }
        assert_true(b[0].seq == from);
        all = realloc(all, (*n + got) * sizeof *all);
        assert_non_null(all);
        memcpy(all + *n, b, got * sizeof *b);
        *n += got;
        free(b); /* the data moved to all */
        uint32_t count;
        assert_int_equal(
            profsvc_batch_check(all[*n - 1].seq, all[*n - 1].data, all[*n - 1].len, &count, NULL),
            0);
        from = all[*n - 1].seq + count;
    }
    return all;
}

static int apply(profsvc_store_t *rep, const profsvc_batch *b, ps_err *err)
{
    return profsvc_store_apply(rep, b->seq, b->data, b->len, err);
}

/* ---- batches -------------------------------------------------------------------------------- */

/* In order, in any chunking, the replica ends where the primary is. */
static void test_apply_sequence(void **state)
{
    fixture *f = *state;
    workload(f->pri, "u", 40);
    dbstate want = state_of(f->pri);
    size_t n1, n2;
    profsvc_batch *one = wal_from(f->pri, 1, 1, &n1);       /* a batch per read */
    profsvc_batch *big = wal_from(f->pri, 1, 1 << 20, &n2); /* as many as fit */
    assert_int_equal(n1, n2);
    assert_int_equal(n1, 42); /* a write is a batch */
    for (size_t i = 0; i < n1; i++) {
        assert_true(one[i].seq == big[i].seq);
        assert_int_equal(one[i].len, big[i].len);
        assert_memory_equal(one[i].data, big[i].data, one[i].len);
    }
    dbstate empty = state_of(f->rep);
    assert_true(empty.keys == 0 && empty.seq == 0);
    for (size_t i = 0; i < n1; i++) {
        ps_err err = {0, ""};
        if (apply(f->rep, &one[i], &err)) fail_msg("apply %zu: %s", i, err.msg);
        if (i + 1 < n1) assert_true(profsvc_store_seq(f->rep) == one[i + 1].seq - 1);
    }
    assert_same(state_of(f->rep), want);

    /* what a reader sees on the replica is the primary's */
    for (int u = 0; u < 3; u++) {
        char user[8];
        snprintf(user, sizeof user, "u%d", u);
        ps_profile a, b;
        int fa, fb;
        uint64_t sa, sb;
        assert_int_equal(profsvc_store_profile(f->pri, user, &fa, &a, &sa, NULL), 0);
        assert_int_equal(profsvc_store_profile(f->rep, user, &fb, &b, &sb, NULL), 0);
        assert_true(fa && fb);
        assert_int_equal(a.k, b.k);
        assert_memory_equal(a.centroids, b.centroids, a.k * DIM * sizeof(float));
        ps_profile_clear(&a);
        ps_profile_clear(&b);
    }
    profsvc_batches_free(one, n1);
    profsvc_batches_free(big, n2);

    /* the replica keeps up as the primary moves on */
    workload(f->pri, "v", 5);
    one = wal_from(f->pri, want.seq + 1, 1 << 20, &n1);
    assert_int_equal(n1, 7);
    for (size_t i = 0; i < n1; i++) assert_int_equal(apply(f->rep, &one[i], NULL), 0);
    assert_same(state_of(f->rep), state_of(f->pri));
    profsvc_batches_free(one, n1);
}

/* Out of order: a gap, a batch applied already, one from the future. Refused, nothing changes,
 * and the right batch still applies. */
static void test_apply_out_of_order(void **state)
{
    fixture *f = *state;
    workload(f->pri, "u", 10);
    size_t n;
    profsvc_batch *b = wal_from(f->pri, 1, 1 << 20, &n);
    assert_true(n >= 6);
    ps_err err = {0, ""};
    assert_int_equal(apply(f->rep, &b[1], &err), PS_EINVAL); /* a gap at the start */
    assert_non_null(strstr(err.msg, "holds 0"));
    assert_int_equal(profsvc_store_seq(f->rep), 0);
    for (size_t i = 0; i < 3; i++) assert_int_equal(apply(f->rep, &b[i], NULL), 0);
    dbstate at3 = state_of(f->rep);

    for (size_t i = 0; i < 3; i++) { /* repeats: none applies again */
        err = (ps_err){0, ""};
        assert_int_equal(apply(f->rep, &b[i], &err), PS_EINVAL);
        assert_same(state_of(f->rep), at3);
    }
    err = (ps_err){0, ""};
    assert_int_equal(apply(f->rep, &b[4], &err), PS_EINVAL); /* b[3] skipped */
    assert_same(state_of(f->rep), at3);
    /* the right batch under a wrong seq: refused by its seq */
    assert_int_equal(profsvc_store_apply(f->rep, b[3].seq + 1, b[3].data, b[3].len, NULL),
                     PS_EINVAL);
    assert_same(state_of(f->rep), at3);

    for (size_t i = 3; i < n; i++) assert_int_equal(apply(f->rep, &b[i], NULL), 0);
    assert_same(state_of(f->rep), state_of(f->pri));
    profsvc_batches_free(b, n);
}

/* Corrupt copies of a real batch: refused by profsvc_batch_check before anything is written
 * (the database would otherwise stop for good), and the intact batch applies afterwards. */
static void test_apply_corrupt(void **state)
{
    fixture *f = *state;
    workload(f->pri, "u", 3);
    size_t n;
    profsvc_batch *b = wal_from(f->pri, 1, 1 << 20, &n);
    assert_int_equal(apply(f->rep, &b[0], NULL), 0);
    const profsvc_batch *g = &b[1]; /* a click: several puts */
    uint32_t count = 0;
    assert_int_equal(profsvc_batch_check(g->seq, g->data, g->len, &count, NULL), 0);
    assert_true(count >= 3);
    assert_int_equal(g->data[12], 0x01); /* its first record is a put */
    dbstate before = state_of(f->rep);

    uint8_t *m = malloc(g->len + 1);
    assert_non_null(m);
    struct {
        const char *what;
        size_t len;
        size_t at; /* byte to change (SIZE_MAX: none) */
        uint8_t to;
    } cases[] = {
        {"truncated by one byte", g->len - 1, SIZE_MAX, 0},
        {"header only", 12, SIZE_MAX, 0},
        {"shorter than a header", 11, SIZE_MAX, 0},
        {"empty", 0, SIZE_MAX, 0},
        {"a byte after its records", g->len + 1, g->len, 0x00},
        {"count one more", g->len, 8, (uint8_t)(count + 1)},
        {"count one less", g->len, 8, (uint8_t)(count - 1)},
        {"count zero", g->len, 8, 0},
        {"record of type 0x02", g->len, 12, 0x02},
        {"record of a column family (0x05)", g->len, 12, 0x05},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        memcpy(m, g->data, g->len);
        if (cases[i].len > g->len) m[g->len] = 0;
        if (cases[i].at != SIZE_MAX) m[cases[i].at] = cases[i].to;
        ps_err err = {0, ""};
        uint32_t c2;
        int rc = profsvc_batch_check(g->seq, m, cases[i].len, &c2, &err);
        if (rc != PS_ECORRUPT) fail_msg("%s: check gave %d", cases[i].what, rc);
        assert_non_null(strstr(err.msg, "batch at"));
        err = (ps_err){0, ""};
        rc = profsvc_store_apply(f->rep, g->seq, m, cases[i].len, &err);
        if (rc != PS_ECORRUPT) fail_msg("%s: apply gave %d (%s)", cases[i].what, rc, err.msg);
        assert_same(state_of(f->rep), before);
    }
    free(m);
    for (size_t i = 1; i < n; i++) assert_int_equal(apply(f->rep, &b[i], NULL), 0);
    assert_same(state_of(f->rep), state_of(f->pri));
    profsvc_batches_free(b, n);

    /* the replica reopens: nothing bad reached its WAL */
    dbstate s = state_of(f->rep);
    profsvc_store_close(f->rep);
    f->rep = open_at(f->replica, 1);
    assert_same(state_of(f->rep), s);
}

/* Hand-made batches: fixed64 seq | fixed32 count | records (layout in store.c). */
static void test_batch_check(void **state)
{
    (void)state;
    uint8_t b[64];
    uint32_t count = 99;
    size_t n;
    memset(b, 0, 12);
    b[8] = 2;
    n = 12;
    b[n++] = 0x01; /* put "k" = "vv" */
    b[n++] = 1;
    b[n++] = 'k';
    b[n++] = 2;
    b[n++] = 'v';
    b[n++] = 'v';
    b[n++] = 0x00; /* delete "" */
    b[n++] = 0;
    assert_int_equal(profsvc_batch_check(7, b, n, &count, NULL), 0);
    assert_int_equal(count, 2);

    ps_err err = {0, ""};
    /* a put without its value; a key longer than what is left */
    assert_int_equal(profsvc_batch_check(7, b, 15, &count, &err), PS_ECORRUPT);
    b[13] = 100;
    assert_int_equal(profsvc_batch_check(7, b, n, &count, &err), PS_ECORRUPT);
    b[13] = 1;
    assert_int_equal(profsvc_batch_check(7, b, n, &count, NULL), 0);
    /* a varint32 of five bytes whose last holds more than 4 bits */
    uint8_t v[32] = {0};
    v[8] = 1;
    n = 12;
    v[n++] = 0x00;
    v[n++] = 0x80;
    v[n++] = 0x80;
    v[n++] = 0x80;
    v[n++] = 0x80;
    v[n++] = 0x10;
    assert_int_equal(profsvc_batch_check(7, v, n, &count, &err), PS_ECORRUPT);
    v[n - 1] = 0x00; /* five bytes, value 0: a delete of "" */
    assert_int_equal(profsvc_batch_check(7, v, n, &count, NULL), 0);
    /* a varint that never ends */
    v[n - 1] = 0x80;
    assert_int_equal(profsvc_batch_check(7, v, n, &count, &err), PS_ECORRUPT);
    /* a count over INT32_MAX */
    memset(v, 0, 12);
    v[11] = 0x80;
    v[12] = 0x00;
    v[13] = 0;
    assert_int_equal(profsvc_batch_check(7, v, 14, &count, &err), PS_ECORRUPT);
    /* any other record type, even one shaped like a delete of "" (type, klen 0): a merge
     * (0x02), a column family's put (0x05), a single delete (0x07), a log data (0x03) */
    static const uint8_t types[] = {0x02, 0x03, 0x05, 0x07, 0x80, 0xff};
    for (size_t i = 0; i < sizeof types; i++) {
        memset(v, 0, 12);
        v[8] = 1;
        v[12] = types[i];
        v[13] = 0;
        err = (ps_err){0, ""};
        assert_int_equal(profsvc_batch_check(7, v, 14, &count, &err), PS_ECORRUPT);
        char hex[8];
        snprintf(hex, sizeof hex, "0x%02x", types[i]);
        assert_non_null(strstr(err.msg, hex));
    }
    v[12] = 0x00; /* the same as a delete passes */
    assert_int_equal(profsvc_batch_check(7, v, 14, &count, NULL), 0);
}

/* ---- checkpoints ---------------------------------------------------------------------------- */

/* Download the primary's checkpoint into the replica's incoming directory as replica.c does (in
 * chunks of `chunk` bytes), close the session, swap. Returns the checkpoint's seq. */
static uint64_t install_checkpoint(fixture *f, size_t chunk)
{
    uint64_t session = 0, seq = 0;
    profsvc_file *files = NULL;
    size_t nfiles = 0;
    ps_err err = {0, ""};
    if (profsvc_store_ckpt_begin(f->pri, &session, &seq, &files, &nfiles, &err))
        fail_msg("ckpt_begin: %s", err.msg);
    assert_true(session != 0);
    assert_true(nfiles > 0);
    const char *in = profsvc_store_incoming(f->rep);
    assert_int_equal(profsvc_rmtree(in), 0);
    assert_int_equal(mkdir(in, 0755), 0);
    uint8_t *buf = malloc(chunk);
    assert_non_null(buf);
    for (size_t i = 0; i < nfiles; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", in, files[i].name);
        FILE *out = fopen(path, "wb");
        assert_non_null(out);
        uint64_t off = 0;
        for (;;) {
            size_t got;
            assert_int_equal(profsvc_store_ckpt_read(f->pri, session, files[i].name, off, buf,
                                                     chunk, &got, &err),
                             0);
            if (got == 0) break;
            assert_int_equal(fwrite(buf, 1, got, out), got);
            off += got;
        }
        assert_int_equal(fclose(out), 0);
        assert_true(off == files[i].size);
    }
    free(buf);
    free(files);
    assert_int_equal(profsvc_store_ckpt_done(f->pri, session, NULL), 0);
    if (profsvc_store_swap(f->rep, &err)) fail_msg("swap: %s", err.msg);
    return seq;
}

/* A checkpoint replaces whatever the replica held; the replica tails on from it. */
static void test_checkpoint_install(void **state)
{
    fixture *f = *state;
    /* the replica holds a history of its own (written as a primary, then reopened) */
    profsvc_store_close(f->rep);
    f->rep = open_at(f->replica, 0);
    workload(f->rep, "stranger", 9);
    profsvc_store_close(f->rep);
    f->rep = open_at(f->replica, 1);
    uint64_t *ids;
    size_t n;
    assert_int_equal(profsvc_store_clicks(f->rep, "stranger0", 100, &ids, &n, NULL), 0);
    assert_true(n > 0);
    free(ids);

    workload(f->pri, "u", 20);
    dbstate want = state_of(f->pri);
    assert_true(state_of(f->rep).sum != want.sum);
    uint64_t seq = install_checkpoint(f, 1000);
    assert_true(seq == want.seq);
    assert_same(state_of(f->rep), want);
    assert_int_equal(profsvc_store_clicks(f->rep, "stranger0", 100, &ids, &n, NULL), 0);
    assert_int_equal(n, 0);
    assert_int_equal(profsvc_store_dim(f->rep), DIM); /* read from the new database */
    struct stat sb;
    assert_int_not_equal(stat(profsvc_store_incoming(f->rep), &sb), 0); /* moved into place */

    /* from the checkpoint's seq on, the WAL */
    workload(f->pri, "w", 6);
    profsvc_batch *b = wal_from(f->pri, seq + 1, 1 << 20, &n);
    for (size_t i = 0; i < n; i++) assert_int_equal(apply(f->rep, &b[i], NULL), 0);
    profsvc_batches_free(b, n);
    assert_same(state_of(f->rep), state_of(f->pri));

    /* a second bootstrap over a replica already there: the same again */
    workload(f->pri, "x", 4);
    install_checkpoint(f, 1 << 16);
    assert_same(state_of(f->rep), state_of(f->pri));
    /* and it survives a restart */
    dbstate s = state_of(f->rep);
    profsvc_store_close(f->rep);
    f->rep = open_at(f->replica, 1);
    assert_same(state_of(f->rep), s);
}

/* Sessions: only an open session's files are read; done closes it; replicas make none. */
static void test_checkpoint_sessions(void **state)
{
    fixture *f = *state;
    workload(f->pri, "u", 3);
    uint64_t s1, s2, seq;
    profsvc_file *files;
    size_t nfiles, got;
    ps_err err = {0, ""};
    assert_int_equal(profsvc_store_ckpt_begin(f->pri, &s1, &seq, &files, &nfiles, &err), 0);
    char name[256];
    snprintf(name, sizeof name, "%s", files[0].name);
    free(files);
    assert_int_equal(profsvc_store_ckpt_begin(f->pri, &s2, &seq, &files, &nfiles, &err), 0);
    free(files);
    assert_true(s1 != s2);
    uint8_t buf[64];
    assert_int_equal(profsvc_store_ckpt_read(f->pri, s1, name, 0, buf, sizeof buf, &got, &err), 0);
    assert_true(got > 0);
    assert_int_equal(
        profsvc_store_ckpt_read(f->pri, s1, "no-such-file", 0, buf, sizeof buf, &got, &err),
        PS_ENOTFOUND);
    assert_int_equal(profsvc_store_ckpt_read(f->pri, 0, name, 0, buf, sizeof buf, &got, &err),
                     PS_ENOTFOUND);
    assert_int_equal(
        profsvc_store_ckpt_read(f->pri, s1 ^ s2 ^ 1, name, 0, buf, sizeof buf, &got, &err),
        PS_ENOTFOUND);
    /* past the end: nothing */
    assert_int_equal(
        profsvc_store_ckpt_read(f->pri, s1, name, 1u << 30, buf, sizeof buf, &got, &err), 0);
    assert_int_equal(got, 0);

    assert_int_equal(profsvc_store_ckpt_done(f->pri, s1, &err), 0);
    assert_int_equal(profsvc_store_ckpt_read(f->pri, s1, name, 0, buf, sizeof buf, &got, &err),
                     PS_ENOTFOUND);
    assert_int_equal(profsvc_store_ckpt_done(f->pri, s1, &err), PS_ENOTFOUND);
    assert_int_equal(profsvc_store_ckpt_read(f->pri, s2, name, 0, buf, sizeof buf, &got, &err), 0);
    assert_int_equal(profsvc_store_ckpt_done(f->pri, s2, &err), 0);

    err = (ps_err){0, ""};
    assert_int_equal(profsvc_store_ckpt_begin(f->rep, &s1, &seq, &files, &nfiles, &err), PS_EINVAL);
    assert_null(files);
}

/* A swap with nothing downloaded changes nothing; one over a broken checkpoint leaves the store
 * unavailable (not half-open) until a good checkpoint is swapped in. */
static void test_swap_failures(void **state)
{
    fixture *f = *state;
    workload(f->pri, "u", 5);
    size_t n;
    profsvc_batch *b = wal_from(f->pri, 1, 1 << 20, &n);
    for (size_t i = 0; i < n; i++) assert_int_equal(apply(f->rep, &b[i], NULL), 0);
    dbstate held = state_of(f->rep);

    ps_err err = {0, ""};
    assert_int_equal(profsvc_store_swap(f->rep, &err), PS_EIO); /* no DIR.incoming */
    assert_same(state_of(f->rep), held);

    /* a checkpoint whose CURRENT names a manifest that is not there */
    const char *in = profsvc_store_incoming(f->rep);
    assert_int_equal(mkdir(in, 0755), 0);
    char path[512];
    snprintf(path, sizeof path, "%s/CURRENT", in);
    FILE *cur = fopen(path, "w");
    assert_non_null(cur);
    fputs("MANIFEST-000099\n", cur);
    assert_int_equal(fclose(cur), 0);
    err = (ps_err){0, ""};
    assert_int_equal(profsvc_store_swap(f->rep, &err), PS_ESTORE);
    assert_int_equal(profsvc_store_seq(f->rep), 0);
    uint64_t sum, keys, seq;
    assert_int_equal(profsvc_store_checksum(f->rep, &sum, &keys, &seq, &err), PS_EUNAVAIL);
    int found;
    ps_profile p;
    assert_int_equal(profsvc_store_profile(f->rep, "u0", &found, &p, &seq, &err), PS_EUNAVAIL);
    assert_int_equal(apply(f->rep, &b[0], &err), PS_EUNAVAIL);
    profsvc_batches_free(b, n);

    install_checkpoint(f, 4096);
    assert_same(state_of(f->rep), state_of(f->pri));
}

int main(void)
{
    ps_log_level = PS_LOG_OFF;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_apply_sequence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_apply_out_of_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_apply_corrupt, setup, teardown),
        cmocka_unit_test(test_batch_check),
        cmocka_unit_test_setup_teardown(test_checkpoint_install, setup, teardown),
        cmocka_unit_test_setup_teardown(test_checkpoint_sessions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_swap_failures, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
