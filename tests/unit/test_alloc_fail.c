/*
 * test_alloc_fail.c — every PS_ENOMEM path of the engine and the wire (ps/alloc.h).
 *
 * An allocator that counts its calls fails the Nth one (and, in the sticky mode, every later
 * one too) and keeps a table of the blocks it handed out. Each public call of the engine and
 * the wire runs with N = 1, 2, 3, ... until it gets through without a failure injected; every
 * failing run must return PS_ENOMEM (with err set to it) or succeed with the right result (a
 * call with a slower fallback), and after the call's own cleanup no block it allocated may be
 * live. A run that leaks names the call and N, and lists each leaked block with the offset of
 * its allocating call in the executable (`addr2line -i -e tests/test_alloc_fail OFFSET`).
 * Objects that live across calls (analyzer, token lists, searcher, click log, eval) must still
 * work after a failed call: it is made again without failures and the end result checked.
 * PS_ALLOC_SITES=1 in the environment prints every call site that got a failure, the same way.
 *
 * Only ps_* allocations are counted: ICU, RocksDB, jansson and OpenBLAS allocate on their own.
 * ps_free also frees what those libraries return, so a pointer the table does not know is
 * foreign and goes to free() as it is.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ps/alloc.h"
#include "ps/corpus.h"
#include "ps/curve.h"
#include "ps/eval.h"
#include "ps/profile.h"
#include "ps/search.h"
#include "ps/snapshot.h"
#include "ps/store.h"
#include "ps/utility.h"
#include "ps/wire_engine.h"

/* ---- the failing allocator ------------------------------------------------------------- */

#define TOMB ((void *)1)

typedef struct slot {
    void *p;
    size_t n;
    unsigned long serial; /* allocation number: a leak report lists the blocks of one run */
    void *site;           /* return address of the allocating call */
} slot;

static struct {
    pthread_mutex_t mu;
    slot *tab; /* open addressing; NULL empty, TOMB deleted */
    size_t cap, used, live, bytes;
    unsigned long calls, fail_at, injected, foreign, serial;
    int sticky;
} A = {.mu = PTHREAD_MUTEX_INITIALIZER};

static size_t slot_of(const void *p, size_t cap)
{
    return (size_t)(((uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ull) & (cap - 1);
}

static void tab_put(slot *tab, size_t cap, slot e)
{
    size_t h = slot_of(e.p, cap);
    while (tab[h].p && tab[h].p != TOMB) h = (h + 1) & (cap - 1);
    tab[h] = e;
}

static void track(slot e) /* A.mu held */
{
    if ((A.used + 1) * 2 > A.cap) {
        size_t cap = A.cap ? A.cap : 1024;
        while ((A.live + 1) * 4 > cap) cap *= 2;
        slot *t = calloc(cap, sizeof *t);
        if (!t) abort();
        for (size_t i = 0; i < A.cap; i++)
            if (A.tab[i].p && A.tab[i].p != TOMB) tab_put(t, cap, A.tab[i]);
        free(A.tab);
        A.tab = t;
        A.cap = cap;
        A.used = A.live;
    }
    tab_put(A.tab, A.cap, e);
    A.used++;
    A.live++;
    A.bytes += e.n;
}

static void track_new(void *p, size_t n, void *site)
{
    track((slot){p, n, ++A.serial, site});
}

static int untrack(void *p, slot *out) /* A.mu held; 0 when p is not ours */
{
    if (!A.cap) return 0;
    size_t h = slot_of(p, A.cap);
    while (A.tab[h].p) {
        if (A.tab[h].p == p) {
            if (out) *out = A.tab[h];
            A.tab[h].p = TOMB;
            A.live--;
            A.bytes -= A.tab[h].n;
            return 1;
        }
        h = (h + 1) & (A.cap - 1);
    }
    return 0;
}

/* Where an address is, as an offset into its object file (for addr2line -i). */
static void print_site(const char *what, void *ra)
{
    Dl_info di;
    if (dladdr(ra, &di))
        fprintf(stderr, "%s %s 0x%zx\n", what, di.dli_fname,
                (size_t)((char *)ra - (char *)di.dli_fbase) - 1);
}

/* Blocks allocated after allocation number `serial` and still live. */
static void print_leaks(unsigned long serial)
{
    for (size_t i = 0; i < A.cap; i++)
        if (A.tab[i].p && A.tab[i].p != TOMB && A.tab[i].serial > serial) {
            fprintf(stderr, "leaked %zu bytes from", A.tab[i].n);
            print_site("", A.tab[i].site);
        }
}

/* With PS_ALLOC_SITES set, the call sites that got a failure are printed at the end (as
 * offsets into the executable, for addr2line -i): which allocations the test reaches. */
static void *sites[1024];
static size_t nsites;

static void note_site(void *ra)
{
    for (size_t i = 0; i < nsites; i++)
        if (sites[i] == ra) return;
    if (nsites < 1024) sites[nsites++] = ra;
}

static int should_fail(void *ra) /* A.mu held */
{
    A.calls++;
    if (A.fail_at && (A.calls == A.fail_at || (A.sticky && A.calls > A.fail_at))) {
        A.injected++;
        note_site(ra);
        return 1;
    }
    return 0;
}

#define RA __builtin_return_address(0)

static void *t_malloc(size_t n)
{
    pthread_mutex_lock(&A.mu);
    void *p = should_fail(RA) ? NULL : malloc(n ? n : 1);
    if (p) track_new(p, n, RA);
    pthread_mutex_unlock(&A.mu);
    return p;
}

static void *t_calloc(size_t n, size_t size)
{
    pthread_mutex_lock(&A.mu);
    void *p = should_fail(RA) ? NULL : calloc(n ? n : 1, size ? size : 1);
    if (p) track_new(p, n * size, RA);
    pthread_mutex_unlock(&A.mu);
    return p;
}

static void *t_realloc(void *old, size_t n)
{
    pthread_mutex_lock(&A.mu);
    if (should_fail(RA)) {
        pthread_mutex_unlock(&A.mu);
        return NULL;
    }
    slot e = {0};
    int ours = old && untrack(old, &e); /* a foreign block becomes ours */
    void *p = realloc(old, n ? n : 1);
    if (p)
        track_new(p, n, RA);
    else if (ours)
        track(e);
    pthread_mutex_unlock(&A.mu);
    return p;
}

static char *t_strdup(const char *s)
{
    pthread_mutex_lock(&A.mu);
    char *p = should_fail(RA) ? NULL : strdup(s);
    if (p) track_new(p, strlen(s) + 1, RA);
    pthread_mutex_unlock(&A.mu);
    return p;
}

static void t_free(void *p)
{
    if (!p) return;
    pthread_mutex_lock(&A.mu);
    if (!untrack(p, NULL)) A.foreign++;
    pthread_mutex_unlock(&A.mu);
    free(p);
}

static const ps_allocfuncs T_ALLOC = {t_malloc, t_calloc, t_realloc, t_strdup, t_free};

/* ---- the driver -------------------------------------------------------------------------- */

/* An operation: runs public calls, checks their results, frees all it got. Returns 0, the
 * negative code of the first call that failed, or OP_WRONG for a wrong result. */
typedef int (*op_fn)(void *ctx);
#define OP_WRONG 1000

static unsigned long total_points, total_ops;

static int want(int cond)
{
    return cond ? 0 : OP_WRONG;
}

/* rc from a call that reported through err: the codes must agree, and err says what failed. */
static int chk(int rc, const ps_err *err)
{
    if (rc && (err->code != rc || !err->msg[0])) {
        print_error("returned %d but err says %d (\"%s\")\n", rc, err->code, err->msg);
        return OP_WRONG;
    }
    return rc;
}

/* After a failure injected into a call on a long-lived object (an analyzer and its token
 * lists, a searcher, a click log, an eval), the object must still work: the call is made again
 * with no more failures (`do rc = ...; while (again(rc));`), and the op checks that the end
 * result is the one a clean run gets. */
static int again(int rc)
{
    if (rc != PS_ENOMEM || !A.fail_at) return 0;
    A.fail_at = 0;
    return 1;
}

static void run_oom(const char *name, op_fn fn, void *ctx)
{
    size_t live0 = A.live;
    unsigned long serial0;
    A.calls = A.fail_at = A.injected = 0;
    int rc = fn(ctx);
    if (rc) fail_msg("%s: %d without a failure injected", name, rc);
    if (A.live != live0) fail_msg("%s: %zu blocks live after a clean run", name, A.live - live0);
    unsigned long clean = A.calls, points = 0;
    for (int sticky = 0; sticky <= 1; sticky++) {
        for (unsigned long n = 1;; n++) {
            A.calls = A.injected = 0;
            serial0 = A.serial;
            A.fail_at = n;
            A.sticky = sticky;
            rc = fn(ctx);
            A.fail_at = 0;
            if (A.live != live0) {
                print_leaks(serial0);
                fail_msg("%s: failing allocation %lu%s: %zu blocks leaked", name, n,
                         sticky ? " and later" : "", A.live - live0);
            }
            if (!A.injected) {
                if (rc) fail_msg("%s: %d with no failure injected (run %lu)", name, rc, n);
                break;
            }
            if (rc != PS_ENOMEM && rc != 0)
                fail_msg("%s: failing allocation %lu%s: returned %d, want PS_ENOMEM (%d)", name, n,
                         sticky ? " and later" : "", rc, PS_ENOMEM);
            points++;
        }
    }
    print_message("%-28s %5lu allocations, %5lu failing runs\n", name, clean, points);
    total_points += points;
    total_ops++;
}

/* ---- a small generated corpus ------------------------------------------------------------ */

#define NDOCS 40
#define DIM   8

static const char *const VOCAB[] = {
    "好累", "开心", "哈哈", "晚安", "加油",     "谢谢",   "生气", "sleepy", "Happy",      "OK",
    "cat",  "dog",  "😭",    "🎉",    "ｆｕｌｌ", "ＡＢＣ", "ΣΑΣ",  "ﬁne",    "さようなら", "ok"};
#define NVOCAB (sizeof VOCAB / sizeof VOCAB[0])

static struct {
    char dir[64];
    char *text[NDOCS][PS_NFIELDS];
    uint64_t id[NDOCS];
    float util[NDOCS];
    float emb[NDOCS * DIM];
    ps_index_t *ix; /* built with the allocator installed and not failing */
    ps_profile prof;
    char store_dir[128], snap_dir[128], jsonl[128], clicks[128], npy[128], npy_out[128];
    char key[128], allow[128], known[128];
    ps_curve_keypair kp;
    uint8_t *frames[64];
    size_t frame_len[64];
    size_t nframes;
    unsigned long seq; /* fresh directory names */
} F;

static uint64_t rng_state = 12345;
static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

static char *gen_text(int words)
{
    char buf[512];
    size_t n = 0;
    buf[0] = '\0';
    for (int w = 0; w < words; w++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%s", w ? " " : "", VOCAB[rnd() % NVOCAB]);
    return strdup(buf);
}

static const char *doc_text(void *ctx, uint32_t doc, int f, size_t *len)
{
    (void)ctx;
    *len = strlen(F.text[doc][f]);
    return F.text[doc][f];
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void rm_rf(const char *path)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", path);
}

static ps_index_t *build_index(ps_err *err, int *rc);

static void add_frame(const Persrv__Envelope *e)
{
    size_t len = protobuf_c_message_get_packed_size(&e->base);
    uint8_t *b = malloc(len);
    assert_non_null(b);
    assert_int_equal(protobuf_c_message_pack(&e->base, b), len);
    assert_true(F.nframes < 64);
    F.frames[F.nframes] = b;
    F.frame_len[F.nframes++] = len;
}

/* One frame of every message kind, packed by protobuf-c (with a few unknown fields too). */
static void make_frames(void)
{
    Persrv__Envelope e;
    float vec[DIM] = {1, 2, 3, 4, 5, 6, 7, 8};
    float w[PS_NFIELDS] = {1, 0.5f, 0.1f, 0.1f, 0.1f};
    char *toks[] = {"好", "好累", "cat"};
    Persrv__Centroid c1 = PERSRV__CENTROID__INIT, c2 = PERSRV__CENTROID__INIT;
    Persrv__Centroid *cs[2] = {&c1, &c2};
    c1.n_vector = c2.n_vector = DIM;
    c1.vector = c2.vector = vec;
    c1.radius = 0.5;
    c2.radius = 2;
    Persrv__Hit h1 = PERSRV__HIT__INIT, h2 = PERSRV__HIT__INIT;
    Persrv__Hit *hs[2] = {&h1, &h2};
    h1.id = 5;
    h1.recall = h1.score = h1.relevance = 2;
    h1.preference = 1;
    h1.centroid = -1;
    h2.id = 7;
    h2.recall = h2.score = h2.relevance = 1;
    h2.preference = 1;
    h2.centroid = 1;
    Persrv__GetStickerReply sr = PERSRV__GET_STICKER_REPLY__INIT;
    sr.found = 1;
    sr.id = 5;
    sr.ocr = "好累";
    sr.keywords = "cat\ndog";
    sr.n_embedding = DIM;
    sr.embedding = vec;
    Persrv__GetStickerReply sr2 = sr;
    sr2.id = 7;
    sr2.n_embedding = 0;
    Persrv__GetStickerReply *srs[2] = {&sr, &sr2};

    ps_wire_env_init(&e, 1, 100);
    Persrv__SearchRequest q = PERSRV__SEARCH_REQUEST__INIT;
    q.n_tokens = 3;
    q.tokens = toks;
    q.n_field_weights = PS_NFIELDS;
    q.field_weights = w;
    q.recall_depth = 50;
    q.use_utility = 1;
    q.alpha = 0.3f;
    q.n_centroids = 2;
    q.centroids = cs;
    e.body_case = PERSRV__ENVELOPE__BODY_SEARCH;
    e.search = &q;
    add_frame(&e);

    ps_wire_env_init(&e, 2, 0);
    Persrv__SearchReply r = PERSRV__SEARCH_REPLY__INIT;
    r.n_hits = 2;
    r.hits = hs;
    e.body_case = PERSRV__ENVELOPE__BODY_SEARCH_REPLY;
    e.search_reply = &r;
    add_frame(&e);

    ps_wire_env_init(&e, 3, 0);
    Persrv__GetStickerRequest g = PERSRV__GET_STICKER_REQUEST__INIT;
    g.id = 5;
    g.with_embedding = 1;
    e.body_case = PERSRV__ENVELOPE__BODY_GET_STICKER;
    e.get_sticker = &g;
    add_frame(&e);

    ps_wire_env_init(&e, 4, 0);
    e.body_case = PERSRV__ENVELOPE__BODY_STICKER_REPLY;
    e.sticker_reply = &sr;
    add_frame(&e);

    ps_wire_env_init(&e, 5, 0);
    Persrv__HealthRequest hq = PERSRV__HEALTH_REQUEST__INIT;
    e.body_case = PERSRV__ENVELOPE__BODY_HEALTH;
    e.health = &hq;
    add_frame(&e);

    ps_wire_env_init(&e, 6, 0);
    Persrv__SnapshotHeld held = PERSRV__SNAPSHOT_HELD__INIT, *helds[1] = {&held};
    held.version = 3;
    held.fingerprint = "0123456789abcdef";
    held.active = 1;
    Persrv__HealthReply hr = PERSRV__HEALTH_REPLY__INIT;
    hr.nshards = 2;
    hr.ready = 1;
    hr.n_held = 1;
    hr.held = helds;
    e.body_case = PERSRV__ENVELOPE__BODY_HEALTH_REPLY;
    e.health_reply = &hr;
    add_frame(&e);

    ps_wire_env_init(&e, 7, 0);
    Persrv__Error er = PERSRV__ERROR__INIT;
    er.code = "invalid_query";
    er.message = "query: no token";
    e.body_case = PERSRV__ENVELOPE__BODY_ERROR;
    e.error = &er;
    add_frame(&e);

    ps_wire_env_init(&e, 8, 0);
    Persrv__QueryRequest qr = PERSRV__QUERY_REQUEST__INIT;
    qr.q = "好累 cat";
    qr.user = "alice";
    qr.k = 5;
    e.body_case = PERSRV__ENVELOPE__BODY_QUERY;
    e.query = &qr;
    e.api_key = "secret-key";
    add_frame(&e);
    e.api_key = (char *)protobuf_c_empty_string;

    ps_wire_env_init(&e, 9, 0);
    Persrv__ShardFailure sf = PERSRV__SHARD_FAILURE__INIT, *sfs[1] = {&sf};
    sf.shard = 1;
    sf.reason = "timed out";
    Persrv__QueryReply qy = PERSRV__QUERY_REPLY__INIT;
    qy.n_hits = 2;
    qy.hits = hs;
    qy.n_fields = 2;
    qy.fields = srs;
    qy.partial = 1;
    qy.n_failures = 1;
    qy.failures = sfs;
    e.body_case = PERSRV__ENVELOPE__BODY_QUERY_REPLY;
    e.query_reply = &qy;
    add_frame(&e);

    ps_wire_env_init(&e, 10, 0);
    Persrv__ClickRequest ck = PERSRV__CLICK_REQUEST__INIT;
    ck.user = "alice";
    ck.sticker_id = 5;
    ck.query = "好累";
    ck.n_embedding = DIM;
    ck.embedding = vec;
    ck.click_id = "abc-123";
    e.body_case = PERSRV__ENVELOPE__BODY_CLICK;
    e.click = &ck;
    add_frame(&e);

    ps_wire_env_init(&e, 11, 0);
    Persrv__ClickReply cr = PERSRV__CLICK_REPLY__INIT;
    cr.seq = 9;
    cr.click_id = "abc-123";
    e.body_case = PERSRV__ENVELOPE__BODY_CLICK_REPLY;
    e.click_reply = &cr;
    add_frame(&e);

    ps_wire_env_init(&e, 12, 0);
    Persrv__ProfileRequest pq = PERSRV__PROFILE_REQUEST__INIT;
    pq.user = "alice";
    e.body_case = PERSRV__ENVELOPE__BODY_GET_PROFILE;
    e.get_profile = &pq;
    add_frame(&e);

    ps_wire_env_init(&e, 13, 0);
    Persrv__ProfileReply pr = PERSRV__PROFILE_REPLY__INIT;
    pr.found = 1;
    pr.n_centroids = 2;
    pr.centroids = cs;
    e.body_case = PERSRV__ENVELOPE__BODY_PROFILE_REPLY;
    e.profile_reply = &pr;
    add_frame(&e);

    ps_wire_env_init(&e, 14, 0);
    Persrv__HistoryItem hi = PERSRV__HISTORY_ITEM__INIT, *his[2] = {&hi, &hi};
    hi.sticker_id = 5;
    hi.n_embedding = DIM;
    hi.embedding = vec;
    Persrv__LoadProfileRequest lp = PERSRV__LOAD_PROFILE_REQUEST__INIT;
    lp.user = "bob";
    lp.n_centroids = 2;
    lp.centroids = cs;
    lp.n_history = 2;
    lp.history = his;
    e.body_case = PERSRV__ENVELOPE__BODY_LOAD_PROFILE;
    e.load_profile = &lp;
    add_frame(&e);

    ps_wire_env_init(&e, 15, 0);
    Persrv__ClicksRequest cq = PERSRV__CLICKS_REQUEST__INIT;
    cq.user = "bob";
    e.body_case = PERSRV__ENVELOPE__BODY_GET_CLICKS;
    e.get_clicks = &cq;
    add_frame(&e);

    ps_wire_env_init(&e, 16, 0);
    uint64_t ids[3] = {1, 2, 3};
    Persrv__ClicksReply cy = PERSRV__CLICKS_REPLY__INIT;
    cy.n_sticker_ids = 3;
    cy.sticker_ids = ids;
    e.body_case = PERSRV__ENVELOPE__BODY_CLICKS_REPLY;
    e.clicks_reply = &cy;
    add_frame(&e);

    ps_wire_env_init(&e, 17, 0);
    Persrv__ChecksumRequest sq = PERSRV__CHECKSUM_REQUEST__INIT;
    e.body_case = PERSRV__ENVELOPE__BODY_CHECKSUM;
    e.checksum = &sq;
    add_frame(&e);

    ps_wire_env_init(&e, 18, 0);
    Persrv__ChecksumReply sy = PERSRV__CHECKSUM_REPLY__INIT;
    sy.checksum = 77;
    sy.keys = 3;
    e.body_case = PERSRV__ENVELOPE__BODY_CHECKSUM_REPLY;
    e.checksum_reply = &sy;
    add_frame(&e);

    ps_wire_env_init(&e, 19, 0);
    Persrv__WalRequest wq = PERSRV__WAL_REQUEST__INIT;
    wq.from_seq = 4;
    wq.max_bytes = 1000;
    e.body_case = PERSRV__ENVELOPE__BODY_WAL;
    e.wal = &wq;
    add_frame(&e);

    ps_wire_env_init(&e, 20, 0);
    uint8_t blob[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    Persrv__WalBatch wb = PERSRV__WAL_BATCH__INIT, *wbs[2] = {&wb, &wb};
    wb.seq = 4;
    wb.data.len = sizeof blob;
    wb.data.data = blob;
    Persrv__WalReply wy = PERSRV__WAL_REPLY__INIT;
    wy.n_batches = 2;
    wy.batches = wbs;
    wy.primary_seq = 5;
    e.body_case = PERSRV__ENVELOPE__BODY_WAL_REPLY;
    e.wal_reply = &wy;
    add_frame(&e);

    ps_wire_env_init(&e, 21, 0);
    Persrv__CheckpointRequest kq = PERSRV__CHECKPOINT_REQUEST__INIT;
    kq.session = 3;
    kq.file = "000012.sst";
    kq.max_bytes = 100;
    e.body_case = PERSRV__ENVELOPE__BODY_CHECKPOINT;
    e.checkpoint = &kq;
    add_frame(&e);

    ps_wire_env_init(&e, 22, 0);
    Persrv__CheckpointFile kf1 = PERSRV__CHECKPOINT_FILE__INIT, kf2 = PERSRV__CHECKPOINT_FILE__INIT;
    Persrv__CheckpointFile *kfs[2] = {&kf1, &kf2};
    kf1.name = "CURRENT";
    kf1.size = 16;
    kf2.name = "000012.sst";
    kf2.size = 100;
    Persrv__CheckpointReply ky = PERSRV__CHECKPOINT_REPLY__INIT;
    ky.session = 3;
    ky.n_files = 2;
    ky.files = kfs;
    ky.data.len = sizeof blob;
    ky.data.data = blob;
    e.body_case = PERSRV__ENVELOPE__BODY_CHECKPOINT_REPLY;
    e.checkpoint_reply = &ky;
    add_frame(&e);

    /* Every frame must decode as it is. */
    for (size_t i = 0; i < F.nframes; i++) {
        Persrv__Envelope *env = NULL;
        ps_err err = {0};
        if (ps_wire_decode(F.frames[i], F.frame_len[i], 0, &env, &err))
            fail_msg("frame %zu: %s", i, err.msg);
        ps_wire_free(env);
    }
}

static int setup(void **state)
{
    (void)state;
    ps_err err = {0};
    char path[160];
    int rc = 0;
    strcpy(F.dir, "/tmp/ps_test_alloc_XXXXXX");
    if (!mkdtemp(F.dir)) return -1;
    ps_set_allocators(&T_ALLOC);

    /* Utility descending, ties by ascending id. */
    for (int d = 0; d < NDOCS; d++) {
        F.id[d] = 1000 + (uint64_t)d * 7;
        F.util[d] = 2.0f - (float)(d / 3) * 0.1f;
        for (int f = 0; f < PS_NFIELDS; f++) F.text[d][f] = gen_text(f == 0 ? 4 : 1 + d % 3);
        for (int i = 0; i < DIM; i++) F.emb[d * DIM + i] = (float)((rnd() % 1000) / 500.0 - 1.0);
    }
    if (!(F.ix = build_index(&err, &rc))) {
        fprintf(stderr, "index: %s\n", err.msg);
        return -1;
    }
    float *emb = malloc(sizeof F.emb);
    memcpy(emb, F.emb, sizeof F.emb);
    ps_index_set_embeddings(F.ix, &emb);
    if (ps_profile_build(F.emb, 12, DIM, 3, 1, &F.prof, &err)) return -1;

    const char *users[1] = {"alice"};
    snprintf(F.store_dir, sizeof F.store_dir, "%s/store", F.dir);
    ps_store_input in = {.ix = F.ix,
                         .emb = F.emb,
                         .text = doc_text,
                         .nprofiles = 1,
                         .users = users,
                         .profiles = &F.prof,
                         .info_json = "{\"build\":1}"};
    if (ps_store_write(F.store_dir, &in, &err)) {
        fprintf(stderr, "store: %s\n", err.msg);
        return -1;
    }
    snprintf(F.snap_dir, sizeof F.snap_dir, "%s/snap", F.dir);
    mkdir(F.snap_dir, 0755);
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%06d.sst", F.snap_dir, i);
        write_file(path, F.emb, sizeof F.emb / (size_t)(i + 1));
    }

    snprintf(F.jsonl, sizeof F.jsonl, "%s/corpus.jsonl", F.dir);
    const char *jl = "{\"id\": 1, \"ocr\": \"好累\", \"keywords\": [\"cat\", \"dog\"]}\n"
                     "\n"
                     "{\"id\": \"2\", \"paddleocr\": [{\"text\": \"哈哈\", \"confidence\": 0.9},"
                     " {\"text\": \"x\", \"confidence\": 0.1}], \"desc\": \"a happy cat\","
                     " \"emotion\": \"happy\", \"raw_queries\": [\"开心\", \"哈哈\"]}\n"
                     "{\"id\": 3, \"llava34b_image_desc\": \"晚安 sleepy\"}\n";
    write_file(F.jsonl, jl, strlen(jl));
    snprintf(F.clicks, sizeof F.clicks, "%s/clicks.tsv", F.dir);
    const char *cl = "alice\t好累\t1000\nbob\t开心\t1007\nalice\t开心\t1000\n\ncarol\tcat\t99\n"
                     "bob\t好累\t1014\n";
    write_file(F.clicks, cl, strlen(cl));
    snprintf(F.npy, sizeof F.npy, "%s/emb.npy", F.dir);
    snprintf(F.npy_out, sizeof F.npy_out, "%s/out.npy", F.dir);
    if (ps_npy_write(F.npy, F.emb, NDOCS, DIM, &err)) return -1;

    if (ps_curve_keypair_new(&F.kp, &err) || ps_curve_keypair_save(&F.kp, F.dir, "node", &err)) {
        fprintf(stderr, "curve: %s\n", err.msg);
        return -1;
    }
    snprintf(F.key, sizeof F.key, "%s/node.key", F.dir);
    snprintf(F.allow, sizeof F.allow, "%s/node.pub", F.dir);
    snprintf(F.known, sizeof F.known, "%s/known", F.dir);
    char kn[512];
    int kl = snprintf(kn, sizeof kn, "# servers\ntcp://a:1 %s\ntcp://b:2 %s\n* %s\n", F.kp.pub,
                      F.kp.pub, F.kp.pub);
    write_file(F.known, kn, (size_t)kl);
    make_frames();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ps_index_free(F.ix);
    ps_profile_clear(&F.prof);
    for (int d = 0; d < NDOCS; d++)
        for (int f = 0; f < PS_NFIELDS; f++) free(F.text[d][f]);
    for (size_t i = 0; i < F.nframes; i++) free(F.frames[i]);
    rm_rf(F.dir);
    print_message("%lu calls, %lu failing runs in all; %lu foreign frees\n", total_ops,
                  total_points, A.foreign);
    if (getenv("PS_ALLOC_SITES"))
        for (size_t i = 0; i < nsites; i++) print_site("site", sites[i]);
    size_t live = A.live;
    ps_reset_allocators();
    return live == 0 ? 0 : -1;
}

/* ---- analyzer ---------------------------------------------------------------------------- */

static char *tokens_join(const ps_tokens *t)
{
    size_t n = 0;
    for (size_t i = 0; i < t->n; i++) n += t->len[i] + 1;
    char *s = malloc(n + 1), *p = s;
    for (size_t i = 0; i < t->n; i++) {
        memcpy(p, t->text + t->off[i], t->len[i]);
        p += t->len[i];
        *p++ = '|';
    }
    *p = '\0';
    return s;
}

static char *expect_analyzer; /* from the clean run */

static int op_analyzer(void *ctx)
{
    (void)ctx;
    ps_err err = {0};
    ps_tokens t, all;
    int rc = 0;
    char *got = NULL;
    ps_tokens_init(&t);
    ps_tokens_init(&all);
    ps_analyzer_t *a = ps_analyzer_new(&err);
    if (!a) return chk(err.code, &err) ? chk(err.code, &err) : OP_WRONG;
    static const char *const texts[] = {
        "So TIRED ok OK", "好累~ So TIRED😭 ＡＢＣ ﬁne ΣΑΣ ﷺ さようなら",
        "Ａ long ｆｕｌｌｗｉｄｔｈ text 那就这样吧 晚安 good night 🎉🎉 Straße İstanbul"};
    for (size_t i = 0; i < 3 && !rc; i++) {
        do {
            rc = chk(ps_analyze(a, texts[i], strlen(texts[i]), "text", &t, &err), &err);
            if (rc && t.n != 0) rc = OP_WRONG;
        } while (again(rc));
        for (size_t j = 0; j < t.n && !rc; j++) do
                rc = ps_tokens_push(&all, t.text + t.off[j], t.len[j]);
            while (again(rc));
    }
    /* A list long enough for the heap table of ps_tokens_distinct. */
    for (int rep = 0; rep < 12 && !rc; rep++)
        for (size_t j = 0; j < t.n && !rc; j++) {
            char w[64];
            int n = snprintf(w, sizeof w, "%.*s%d", (int)t.len[j], t.text + t.off[j], rep % 7);
            do rc = ps_tokens_push(&all, w, (size_t)n);
            while (again(rc));
        }
    if (!rc) {
        ps_tokens_distinct(&all);
        got = tokens_join(&all);
        if (!expect_analyzer)
            expect_analyzer = strdup(got);
        else if (strcmp(got, expect_analyzer) != 0)
            rc = OP_WRONG;
        free(got);
    }
    ps_tokens_free(&t);
    ps_tokens_free(&all);
    ps_analyzer_free(a);
    return rc;
}

static void test_analyzer(void **state)
{
    (void)state;
    run_oom("analyzer", op_analyzer, NULL);
    free(expect_analyzer);
    expect_analyzer = NULL;
}

/* ---- index ------------------------------------------------------------------------------- */

static ps_index_t *build_index(ps_err *err, int *rc)
{
    ps_tokens tok[PS_NFIELDS];
    ps_ixbuild_t *b = NULL;
    ps_index_t *ix = NULL;
    *rc = 0;
    for (int f = 0; f < PS_NFIELDS; f++) ps_tokens_init(&tok[f]);
    ps_analyzer_t *an = ps_analyzer_new(err);
    if (!an) {
        *rc = err->code;
        goto out;
    }
    if (!(b = ps_ixbuild_new(NDOCS, DIM, err))) {
        *rc = err->code;
        goto out;
    }
    for (int d = 0; d < NDOCS && !*rc; d++) {
        const ps_tokens *fields[PS_NFIELDS];
        for (int f = 0; f < PS_NFIELDS && !*rc; f++) {
            *rc = ps_analyze(an, F.text[d][f], strlen(F.text[d][f]), "field", &tok[f], err);
            fields[f] = &tok[f];
        }
        if (!*rc) *rc = ps_ixbuild_add(b, F.id[d], F.util[d], fields, err);
    }
    if (!*rc) {
        ix = ps_ixbuild_finish(&b, err);
        if (!ix) *rc = err->code ? err->code : OP_WRONG;
        if (b) *rc = OP_WRONG;
    }
out:
    ps_ixbuild_free(b);
    for (int f = 0; f < PS_NFIELDS; f++) ps_tokens_free(&tok[f]);
    ps_analyzer_free(an);
    return ix;
}

static int op_ixbuild(void *ctx)
{
    (void)ctx;
    ps_err err = {0};
    int rc;
    ps_index_t *ix = build_index(&err, &rc);
    if (!ix) return rc == OP_WRONG ? rc : chk(rc, &err);
    rc = want(ps_index_ndocs(ix) == NDOCS && ps_index_npostings(ix) == ps_index_npostings(F.ix));
    for (uint32_t d = 0; d < NDOCS && !rc; d++) {
        uint32_t doc;
        rc = want(ps_index_doc(ix, F.id[d], &doc) == 0 && doc == d);
    }
    ps_index_free(ix);
    return rc;
}

static int op_partition(void *ctx)
{
    (void)ctx;
    ps_err err = {0};
    uint64_t total = 0;
    uint32_t ndocs = 0;
    for (uint32_t sh = 0; sh < 3; sh++) {
        uint32_t *gd = NULL;
        ps_index_t *p = ps_index_partition(F.ix, 3, sh, &gd, &err);
        if (!p) return chk(err.code ? err.code : OP_WRONG, &err);
        int rc = want(gd != NULL);
        for (uint32_t d = 0; d < ps_index_ndocs(p) && !rc; d++)
            rc = want(ps_index_id(p, d) == ps_index_id(F.ix, gd[d]));
        total += ps_index_npostings(p);
        ndocs += ps_index_ndocs(p);
        ps_free(gd);
        ps_index_free(p);
        if (rc) return rc;
    }
    return want(total == ps_index_npostings(F.ix) && ndocs == NDOCS);
}

/* One sticker with more distinct terms than a dictionary's first hash table holds (4096),
 * built with no failure injected. */
static ps_index_t *build_big(void)
{
    ps_tokens tok[PS_NFIELDS];
    const ps_tokens *fields[PS_NFIELDS];
    char w[16];
    for (int f = 0; f < PS_NFIELDS; f++) {
        ps_tokens_init(&tok[f]);
        fields[f] = &tok[f];
    }
    for (int i = 0; i < 4200; i++)
        assert_int_equal(
            ps_tokens_push(&tok[i % PS_NFIELDS], w, (size_t)snprintf(w, sizeof w, "w%d", i)), 0);
    ps_ixbuild_t *b = ps_ixbuild_new(1, DIM, NULL);
    assert_non_null(b);
    assert_int_equal(ps_ixbuild_add(b, 1, 1.0f, fields, NULL), 0);
    ps_index_t *ix = ps_ixbuild_finish(&b, NULL);
    assert_non_null(ix);
    for (int f = 0; f < PS_NFIELDS; f++) ps_tokens_free(&tok[f]);
    return ix;
}

static int op_partition_big(void *ctx)
{
    const ps_index_t *big = ctx;
    ps_err err = {0};
    ps_index_t *p = ps_index_partition(big, 1, 0, NULL, &err);
    if (!p) return chk(err.code ? err.code : OP_WRONG, &err);
    int rc = want(ps_index_npostings(p) == 4200);
    ps_index_free(p);
    return rc;
}

static void test_index(void **state)
{
    (void)state;
    run_oom("ps_ixbuild_*", op_ixbuild, NULL);
    run_oom("ps_index_partition", op_partition, NULL);
    ps_index_t *big = build_big();
    run_oom("ps_index_partition (4200 terms)", op_partition_big, big);
    ps_index_free(big);
}

/* ---- search ------------------------------------------------------------------------------ */

#define SR 30
static ps_hit expect_hits[16][SR];
static size_t expect_n[16];
static int have_expect;

static int same_hits(int q, const ps_hit *h, size_t n)
{
    if (!have_expect) {
        memcpy(expect_hits[q], h, n * sizeof *h);
        expect_n[q] = n;
        return 0;
    }
    if (n != expect_n[q]) return OP_WRONG;
    for (size_t i = 0; i < n; i++)
        if (h[i].id != expect_hits[q][i].id || h[i].score != expect_hits[q][i].score)
            return OP_WRONG;
    return 0;
}

static int op_search(void *ctx)
{
    const ps_index_t *ix = ctx;
    ps_err err = {0};
    ps_hit hits[SR], all[2 * SR];
    size_t n = 0, nall = 0;
    ps_search_opts o;
    ps_tokens tok;
    int rc = 0, q = 0;
    ps_searcher_t *s = ps_searcher_new(ix, &err);
    if (!s) return chk(err.code ? err.code : OP_WRONG, &err);
    ps_tokens_init(&tok);
    ps_search_opts_default(&o);
    o.R = SR;
    o.k = 10;
    static const char *const queries[] = {"好累 cat", "开心 哈哈 sleepy OK 🎉", "ﬁne ｆｕｌｌ"};
    for (int prof = 0; prof <= 1 && !rc; prof++) {
        o.profile = prof ? &F.prof : NULL;
        for (int ex = 0; ex <= 1 && !rc; ex++) {
            o.exhaustive = ex;
            for (size_t i = 0; i < 3 && !rc; i++) {
                const char *t = queries[i];
                do rc = chk(ps_search(s, t, strlen(t), &o, hits, &n, NULL, &err), &err);
                while (again(rc));
                if (!rc) rc = same_hits(q++, hits, n);
            }
        }
        if (!rc) do
                rc = chk(ps_search_recall(s, "晚安 dog", 10, &o, hits, &n, NULL, &err), &err);
            while (again(rc));
        if (!rc) rc = same_hits(q++, hits, n);
    }
    /* The shard side and the merge. */
    for (int i = 0; i < 3 && !rc; i++) rc = ps_tokens_push(&tok, VOCAB[i], strlen(VOCAB[i]));
    if (!rc) rc = ps_tokens_push(&tok, "cat", 3);
    o.profile = &F.prof;
    o.exhaustive = 0;
    for (int rep = 0; rep < 2 && !rc; rep++) {
        do rc = chk(ps_search_shard(s, &tok, &o, all + nall, &n, NULL, &err), &err);
        while (again(rc));
        nall += n;
    }
    if (!rc) rc = same_hits(15, all, ps_merge_hits(all, nall, SR, 10));
    ps_tokens_free(&tok);
    ps_searcher_free(s);
    return rc;
}

static void test_search(void **state)
{
    (void)state;
    have_expect = 0;
    assert_int_equal(op_search(F.ix), 0);
    have_expect = 1;
    run_oom("ps_search* / ps_merge_hits", op_search, F.ix);
}

/* ---- utility, profiles, eval ------------------------------------------------------------- */

static int op_utility(void *ctx)
{
    (void)ctx;
    ps_err err = {0};
    ps_clicklog log = {0};
    ps_usage u = {0};
    size_t unknown = 0;
    float util[NDOCS];
    char user[16], query[16];
    int rc = 0;
    for (int i = 0; i < 60 && !rc; i++) {
        snprintf(user, sizeof user, "u%d", i % 9);
        snprintf(query, sizeof query, "q%d", i % 13);
        do
            rc =
                chk(ps_clicklog_add(&log, user, query, F.id[(i * 7) % NDOCS] + (i % 11 == 0), &err),
                    &err);
        while (again(rc));
    }
    if (!rc) rc = chk(ps_usage_count(&log, F.id, NDOCS, &u, &unknown, &err), &err);
    if (!rc) {
        ps_utility_compute(NULL, &u, util);
        rc = want(u.n == NDOCS && unknown > 0 && log.nusers == 9 && log.nqueries == 13);
        for (int d = 0; d < NDOCS && !rc; d++) rc = want(util[d] > 0 && isfinite(util[d]));
    }
    ps_usage_free(&u);
    ps_clicklog_free(&log);
    return rc;
}

static int op_profile(void *ctx)
{
    (void)ctx;
    ps_err err = {0};
    ps_profile p = {0}, q = {0};
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = chk(ps_profile_build(F.emb, 20, DIM, 4, 7, &p, &err), &err);
    if (!rc) rc = chk(ps_profile_encode(&p, &buf, &len, &err), &err);
    if (!rc) rc = chk(ps_profile_decode(buf, len, &q, &err), &err);
    if (!rc)
        rc = want(p.k == 4 && q.k == p.k && q.dim == DIM &&
                  memcmp(q.centroids, p.centroids, p.k * DIM * sizeof(float)) == 0);
    ps_free(buf);
    ps_profile_clear(&p);
    ps_profile_clear(&q);
    return rc;
}

static int op_eval(void *ctx)
{
    (void)ctx;
    ps_err err = {0};
    size_t ks[3] = {1, 5, 10};
    uint64_t ranked[20], truth[200];
    double mmrr[3], rec[3];
    for (int i = 0; i < 20; i++) ranked[i] = (uint64_t)i * 3;
    for (int i = 0; i < 200; i++) truth[i] = (uint64_t)i * 2;
    ps_eval_t *e = ps_eval_new(ks, 3, &err);
    if (!e) return chk(err.code ? err.code : OP_WRONG, &err);
    int rc = 0;
    for (uint32_t g = 0; g < 300 && !rc; g++) do
            rc = chk(ps_eval_add(e, g % 37, ranked, 20, truth + g % 5, 3 + g % 7, &err), &err);
        while (again(rc));
    if (!rc) {
        ps_eval_result(e, mmrr, rec);
        rc = want(mmrr[2] > 0 && rec[2] > 0);
    }
    ps_eval_free(e);
    if (rc) return rc;
    /* Over 128 truth ids these allocate; out of memory they say NaN. */
    double m = ps_eval_mmrr(ranked, 20, 10, truth, 200);
    double r = ps_eval_recall(ranked, 20, 10, truth, 200);
    if (isnan(m) || isnan(r)) return A.injected ? PS_ENOMEM : OP_WRONG;
    return want(m > 0 && r > 0);
}

static void test_utility_profile_eval(void **state)
{
    (void)state;
    run_oom("ps_clicklog_add/usage", op_utility, NULL);
    run_oom("ps_profile_*", op_profile, NULL);
    run_oom("ps_eval_*", op_eval, NULL);
}

/* ---- store ------------------------------------------------------------------------------- */

static int op_store_write(void *ctx)
{
    (void)ctx;
    ps_err err = {0};
    char dir[160];
    const char *users[2] = {"alice", "bob"};
    ps_profile profs[2] = {F.prof, F.prof};
    snprintf(dir, sizeof dir, "%s/w%lu", F.dir, F.seq++);
    ps_store_input in = {.ix = F.ix,
                         .emb = F.emb,
                         .text = doc_text,
                         .nprofiles = 2,
                         .users = users,
                         .profiles = profs,
                         .info_json = "{}"};
    int rc = chk(ps_store_write(dir, &in, &err), &err);
    rm_rf(dir);
    if (rc) return rc;
    /* Profiles only. */
    in.ix = NULL;
    rc = chk(ps_store_write(dir, &in, &err), &err);
    rm_rf(dir);
    return rc;
}

static int op_store_open(void *ctx)
{
    (void)ctx;
    ps_err err = {0};
    ps_profile p = {0};
    char *fields[PS_NFIELDS];
    ps_store_t *st = ps_store_open(F.store_dir, &err);
    if (!st) return chk(err.code ? err.code : OP_WRONG, &err);
    const ps_index_t *ix = ps_store_index(st);
    int rc =
        want(ps_index_ndocs(ix) == NDOCS && ps_index_npostings(ix) == ps_index_npostings(F.ix));
    for (uint32_t d = 0; d < NDOCS && !rc; d += 7) {
        rc = chk(ps_store_fields(st, d, fields, &err), &err);
        if (rc) break;
        for (int f = 0; f < PS_NFIELDS; f++) {
            if (!rc) rc = want(strcmp(fields[f], F.text[d][f]) == 0);
            ps_free(fields[f]);
        }
    }
    if (!rc) rc = chk(ps_store_profile(st, "alice", &p, &err), &err);
    if (!rc) rc = want(p.k == F.prof.k);
    ps_profile_clear(&p);
    if (!rc) {
        char *info = ps_store_info(st);
        rc = info ? want(strcmp(info, "{\"build\":1}") == 0) : A.injected ? PS_ENOMEM : OP_WRONG;
        ps_free(info);
    }
    if (!rc) rc = op_search((void *)ix); /* embeddings fetched from the store */
    ps_store_close(st);
    if (rc) return rc;

    ps_profiles_t *pr = ps_profiles_open(F.store_dir, &err);
    if (!pr) return chk(err.code ? err.code : OP_WRONG, &err);
    rc = chk(ps_profiles_get(pr, "alice", &p, &err), &err);
    if (!rc) rc = want(p.k == F.prof.k);
    ps_profile_clear(&p);
    ps_profiles_close(pr);
    return rc;
}

static void test_store(void **state)
{
    (void)state;
    run_oom("ps_store_write", op_store_write, NULL);
    run_oom("ps_store_open/fields/...", op_store_open, NULL);
}

/* ---- corpus readers, snapshot manifests -------------------------------------------------- */

static int op_jsonl(void *ctx)
{
    (void)ctx;
    ps_err err = {0};
    ps_sticker_rec rec;
    int rc, n = 0;
    ps_jsonl_t *r = ps_jsonl_open(F.jsonl, 0, &err);
    if (!r) return chk(err.code ? err.code : OP_WRONG, &err);
    while ((rc = ps_jsonl_next(r, &rec, &err)) == 1) {
        n++;
        ps_sticker_rec_clear(&rec);
    }
    ps_jsonl_close(r);
    if (rc) return chk(rc, &err);
    if (n != 3) return OP_WRONG;
    const char *line = "{\"id\": 9, \"queries\": [\"a\", \"b\", \"c\"], \"ocr\": [{\"text\": "
                       "\"好\", \"confidence\": 0.8}], \"emotion\": \"😭\"}";
    rc = chk(ps_sticker_parse(line, strlen(line), &rec, &err), &err);
    if (rc) return rc;
    char *out = NULL;
    size_t outlen = 0;
    FILE *f = open_memstream(&out, &outlen);
    rc = chk(ps_sticker_write(f, &rec, &err), &err);
    fclose(f);
    if (!rc) rc = want(strstr(out, "a\\nb\\nc") != NULL && rec.id == 9);
    free(out);
    ps_sticker_rec_clear(&rec);
    return rc;
}

static int op_clicks_npy(void *ctx)
{
    (void)ctx;
    ps_err err = {0};
    ps_clicklog log = {0};
    ps_matrix m = {0};
    int rc = chk(ps_clicklog_read(F.clicks, &log, &err), &err);
    if (!rc) rc = want(log.n == 5 && log.nusers == 3 && log.nqueries == 3);
    ps_clicklog_free(&log);
    if (rc) return rc;
    rc = chk(ps_npy_read(F.npy, &m, &err), &err);
    if (!rc)
        rc = want(m.rows == NDOCS && m.cols == DIM && memcmp(m.data, F.emb, sizeof F.emb) == 0);
    ps_matrix_free(&m);
    if (!rc) rc = chk(ps_npy_write(F.npy_out, F.emb, NDOCS, DIM, &err), &err);
    return rc;
}

static int op_snapshot(void *ctx)
{
    (void)ctx;
    ps_err err = {0};
    ps_snapshot s = {
        .version = 5, .fingerprint = "0123456789abcdef", .shard = 1, .shards = 2, .stickers = 40};
    ps_snapshot t = {0}, u = {0};
    int rc = chk(ps_snapshot_write(F.snap_dir, &s, &err), &err);
    if (!rc) rc = want(s.nfiles == 4);
    if (!rc) rc = chk(ps_snapshot_verify(F.snap_dir, &s, &err), &err);
    char *json = rc ? NULL : ps_snapshot_json(&s);
    if (!rc && !json) rc = A.injected ? PS_ENOMEM : OP_WRONG;
    if (!rc) rc = chk(ps_snapshot_parse(json, strlen(json), &t, &err), &err);
    if (!rc)
        rc = want(t.nfiles == 4 && t.version == 5 && strcmp(t.files[3].name, "000003.sst") == 0);
    if (!rc) rc = chk(ps_snapshot_read(F.snap_dir, &u, &err), &err);
    if (!rc) rc = want(u.nfiles == 4 && u.files[2].crc32 == s.files[2].crc32);
    free(json); /* jansson's, as the header says */
    ps_snapshot_clear(&s);
    ps_snapshot_clear(&t);
    ps_snapshot_clear(&u);
    return rc;
}

static void test_corpus_snapshot(void **state)
{
    (void)state;
    run_oom("ps_jsonl_* / sticker", op_jsonl, NULL);
    run_oom("ps_clicklog_read/npy", op_clicks_npy, NULL);
    run_oom("ps_snapshot_*", op_snapshot, NULL);
}

/* ---- wire -------------------------------------------------------------------------------- */

static int op_decode(void *ctx)
{
    size_t i = *(const size_t *)ctx;
    ps_err err = {0};
    Persrv__Envelope *env = NULL;
    int rc = chk(ps_wire_decode(F.frames[i], F.frame_len[i], 0, &env, &err), &err);
    if (rc) return env ? OP_WRONG : rc;
    rc = want(env->request_id == i + 1);
    if (!rc && env->body_case == PERSRV__ENVELOPE__BODY_SEARCH) {
        ps_search_opts o;
        ps_profile p = {0};
        rc = chk(ps_wire_to_opts(env->search, &o, &err), &err);
        if (!rc) rc = chk(ps_wire_to_profile(env->search, &p, &err), &err);
        if (!rc) rc = want(p.k == 2 && p.dim == DIM && o.R == 50);
        ps_profile_clear(&p);
    }
    if (!rc && env->body_case == PERSRV__ENVELOPE__BODY_SEARCH_REPLY) {
        ps_hit h[4];
        size_t n = 0;
        rc = chk(ps_wire_to_hits(env->search_reply, h, 4, &n, &err), &err);
        if (!rc) rc = want(n == 2 && h[1].id == 7);
    }
    if (!rc) {
        /* Packed again, the frame is what protobuf-c packed. */
        uint8_t *b = NULL;
        size_t len = 0;
        rc = chk(ps_wire_pack(env, &b, &len, &err), &err);
        if (!rc) rc = want(len == F.frame_len[i] && memcmp(b, F.frames[i], len) == 0);
        ps_free(b);
    }
    ps_wire_free(env);
    return rc;
}

static int check_frame(uint8_t *b, size_t len)
{
    Persrv__Envelope *env = NULL;
    ps_err err = {0};
    int rc = chk(ps_wire_decode(b, len, 0, &env, &err), &err);
    ps_wire_free(env);
    ps_free(b);
    return rc;
}

static int op_encode(void *ctx)
{
    (void)ctx;
    ps_err err = {0};
    uint8_t *b = NULL;
    size_t len = 0;
    int rc;
    const char *toks[3] = {"好", "好累", "cat"};
    ps_search_opts o;
    ps_search_opts_default(&o);
    o.profile = &F.prof;
    ps_hit hits[3] = {
        {.id = 1, .recall = 3, .score = 3, .relevance = 3, .preference = 1, .centroid = -1},
        {.id = 2,
         .recall = 2,
         .score = 2.5,
         .relevance = 1,
         .utility = 1,
         .preference = 1.25,
         .centroid = 0},
        {.id = 3, .recall = 1, .score = 1, .relevance = 1, .preference = 1, .centroid = -1}};
    ps_sticker_rec rec = {.id = 4};
    for (int f = 0; f < PS_NFIELDS; f++) {
        rec.field[f] = F.text[0][f];
        rec.field_len[f] = strlen(F.text[0][f]);
    }
    ps_wire_snap held[2] = {{1, "0123456789abcdef", 0, 40}, {2, "fedcba9876543210", 1, 41}};
    ps_wire_health h = {.held = held, .nheld = 2, .shard = 1, .nshards = 2, .ready = 1};

#define ENC(call)                                                                                  \
    do {                                                                                           \
        b = NULL;                                                                                  \
        rc = chk(call, &err);                                                                      \
        if (rc) return b ? OP_WRONG : rc;                                                          \
        if ((rc = check_frame(b, len))) return rc;                                                 \
    } while (0)

    ENC(ps_wire_encode_search(1, 10, toks, 3, &o, 0, &b, &len, &err));
    ENC(ps_wire_encode_search_reply(1, 0, 3, hits, 3, 99, 0, &b, &len, &err));
    ENC(ps_wire_encode_search_reply(1, 0, 3, hits, 3, 99, 1, &b, &len, &err));
    ENC(ps_wire_encode_sticker_reply(1, 0, 4, &rec, 1.5, &b, &len, &err));
    ENC(ps_wire_encode_sticker_reply_emb(1, 0, 4, &rec, 1.5, F.emb, DIM, &b, &len, &err));
    ENC(ps_wire_encode_sticker_reply(1, 0, 4, NULL, 0, &b, &len, &err));
    ENC(ps_wire_encode_get_sticker(1, 10, 4, &b, &len, &err));
    ENC(ps_wire_encode_get_sticker_emb(1, 10, 4, 1, 3, &b, &len, &err));
    ENC(ps_wire_encode_health(1, 10, &b, &len, &err));
    ENC(ps_wire_encode_health_reply(1, &h, &b, &len, &err));
    ENC(ps_wire_encode_error(1, PS_EQUERY, "query: no token \xff\xfe", &b, &len, &err));
    ENC(ps_wire_encode_query(1, 10, "好累 cat", strlen("好累 cat"), "alice", 5, 1, &b, &len, &err));
    ENC(ps_wire_encode_click(1, 10, "alice", 4, "好累", "id-1", &b, &len, &err));

    /* An API key appended to a request. */
    b = NULL;
    rc = chk(ps_wire_encode_query(1, 10, "cat", 3, NULL, 0, 0, &b, &len, &err), &err);
    if (rc) return b ? OP_WRONG : rc;
    rc = chk(ps_wire_append_api_key(&b, &len, "key-0123456789", &err), &err);
    if (rc) {
        ps_free(b); /* the frame stays the caller's */
        return rc;
    }
    return check_frame(b, len);
#undef ENC
}

static void test_wire(void **state)
{
    (void)state;
    char name[64];
    for (size_t i = 0; i < F.nframes; i++) {
        Persrv__Envelope *env = NULL;
        assert_int_equal(ps_wire_decode(F.frames[i], F.frame_len[i], 0, &env, NULL), 0);
        snprintf(
            name, sizeof name, "ps_wire_decode %s",
            protobuf_c_message_descriptor_get_field(&persrv__envelope__descriptor, env->body_case)
                ->name);
        ps_wire_free(env);
        run_oom(name, op_decode, &i);
    }
    run_oom("ps_wire_encode_*", op_encode, NULL);
}

/* ---- curve ------------------------------------------------------------------------------- */

static int op_curve(void *ctx)
{
    (void)ctx;
    ps_err err = {0};
    ps_curve_keypair kp;
    int rc = chk(ps_curve_keypair_load(F.key, &kp, &err), &err);
    if (!rc) rc = want(strcmp(kp.pub, F.kp.pub) == 0);
    if (rc) return rc;
    ps_curve_t *c = ps_curve_load(F.key, F.allow, F.known, &err);
    if (!c) return chk(err.code ? err.code : OP_WRONG, &err);
    rc = want(ps_curve_nallow(c) == 1 && ps_curve_nknown(c) == 3 &&
              ps_curve_allowed(c, F.kp.pub) != NULL &&
              strcmp(ps_curve_server_key(c, "tcp://b:2"), F.kp.pub) == 0);
    ps_curve_free(c);
    return rc;
}

static void test_curve(void **state)
{
    (void)state;
    run_oom("ps_curve_load/keypair_load", op_curve, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_analyzer), cmocka_unit_test(test_index),
        cmocka_unit_test(test_search),   cmocka_unit_test(test_utility_profile_eval),
        cmocka_unit_test(test_store),    cmocka_unit_test(test_corpus_snapshot),
        cmocka_unit_test(test_wire),     cmocka_unit_test(test_curve),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
