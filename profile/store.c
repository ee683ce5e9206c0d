/*
 * store.c — the profile service's RocksDB database: clicks in, profiles out, and the WAL and
 * checkpoints replicas are fed from. No ZeroMQ here.
 *
 * Records (default column family; integers fixed-width, user = 1..256 bytes without NUL):
 *
 *   'P' user                      → a ps_profile_encode value (ps/profile.h)
 *   'H' user 0x00 u64BE(seq)      → u64LE sticker_id | f32LE embedding[dim]
 *                                   the bounded history: the newest --history clicks
 *   'L' user 0x00 u64BE(seq)      → u64LE sticker_id | query bytes
 *                                   the click log, never deleted
 *   'N' user                      → u64LE the user's next seq (L and H keys count from 0)
 *   'I' user 0x00 click_id        → u64LE seq | u64LE sticker_id
 *                                   a click id seen: the seq of its click (L, H) and sticker
 *   'J' user 0x00 u64BE(seq)      → click_id bytes
 *                                   the same ids by seq, oldest first: the window's order
 *   "Mdim"                        → u32LE the embedding dimension, fixed by the first write
 *
 * The 0x00 after the user ends the name (names hold no NUL), so one user's H, L and J keys form
 * a contiguous range ordered by seq, oldest first, and I keys one ordered by click id.
 *
 * Idempotent clicks: a click with a click id (1..PS_WIRE_MAX_CLICK_ID bytes of 0x21..0x7e)
 * writes I and J in the same batch as its L and H, so the id is replicated, survives a restart
 * and a failover exactly when the click does. A click whose id the user's I holds stores
 * nothing and answers duplicate (the same id for another sticker is PS_ECONFLICT: a client
 * bug, never a retry). The window is the user's last cfg->click_ids clicks: a click at seq n
 * deletes the J keys at seqs <= n − click_ids and their I keys, so a user holds at most
 * click_ids of each, and no clock is involved (a replica and a restarted primary agree).
 *
 * Every write of one user happens in one WriteBatch under that user's stripe of USER_LOCKS
 * mutexes (a click: read N, write L, H and N + 1, recompute P; a load: read N and H, merge,
 * see "Loads merge" below), so writes of one user never interleave and a replica applying the
 * same batches holds the same bytes.
 *
 * Locking: the read side of `lock` is held around every use of `db`; only a replica's
 * bootstrap (profsvc_store_swap) takes the write side to replace the database. Lock order:
 * lock → user stripe → dim_mu; ck_mu is taken alone or after lock; wal_mu after lock.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <rocksdb/c.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ps/hash.h"
#include "ps/log.h"
#include "ps/rand.h"
#include "ps/wire.h"
#include "profile.h"

#define USER_LOCKS      64   /* stripes of per-user write locks */
#define MAX_SESSIONS    16   /* checkpoint sessions open at once */
#define CKPT_EVICT_S    30   /* when all are open, one idle this long makes room for a new one */
#define WAL_ITERS       4    /* WAL iterators kept between wal requests */
#define WAL_ITER_IDLE_S 10.0 /* ... each dropped after this long unused */
#define KEY_MAX         (1 + PS_WIRE_MAX_USER + 1 + PS_WIRE_MAX_CLICK_ID) /* >= 8 for a seq */
_Static_assert(PS_WIRE_MAX_CLICK_ID >= 8, "KEY_MAX holds a u64BE seq");
#define DIM_KEY       "Mdim"
#define REPLICA_WRITE "this node is a replica; send writes to the primary"

typedef struct ckpt_session {
    uint64_t id;      /* 0: free slot */
    double last_used; /* monotonic seconds */
} ckpt_session;

/* A WAL iterator a wal request left open for the next one (see profsvc_store_wal). */
typedef struct wal_iter {
    rocksdb_wal_iterator_t *it; /* NULL: free slot */
    uint64_t next;              /* seq of the batch after the last one it returned */
    double last_used;           /* monotonic seconds */
} wal_iter;

struct profsvc_store {
    profsvc_store_cfg cfg;
    char *dir, *ckdir, *incoming, *old;
    pthread_rwlock_t lock; /* read: any use of db; write: swap */
    rocksdb_t *db;         /* NULL only after a failed swap */
    rocksdb_options_t *opts;
    rocksdb_writeoptions_t *wopts;
    rocksdb_readoptions_t *ropts;
    pthread_mutex_t users[USER_LOCKS];
    pthread_mutex_t dim_mu; /* held while a write may fix the dimension */
    atomic_uint dim;        /* 0 until the first write */
    pthread_mutex_t ck_mu;  /* sessions */
    ckpt_session sessions[MAX_SESSIONS];
    pthread_mutex_t wal_mu; /* wal_iters; each iterator is used outside it, by one request */
    wal_iter wal_iters[WAL_ITERS];
};

/**************************************************************************
 * Bytes and keys
 */

static void put_u32le(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64le(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64le(const uint8_t *p)
{
    return (uint64_t)get_u32le(p) | (uint64_t)get_u32le(p + 4) << 32;
}

static void put_f32le(uint8_t *p, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    put_u32le(p, u);
}

static float get_f32le(const uint8_t *p)
{
    uint32_t u = get_u32le(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* 'tag' user: the P and N keys. Returns the key length. */
static size_t user_key(uint8_t *k, char tag, const char *user, size_t ulen)
{
    k[0] = (uint8_t)tag;
    memcpy(k + 1, user, ulen);
    return 1 + ulen;
}

/* 'tag' user 0x00 [u64BE seq]: the H and L prefix (with_seq 0) or key. */
static size_t seq_key(uint8_t *k, char tag, const char *user, size_t ulen, int with_seq,
                      uint64_t seq)
{
    size_t n = user_key(k, tag, user, ulen);
    k[n++] = 0;
    if (with_seq)
        for (int i = 7; i >= 0; i--) k[n++] = (uint8_t)(seq >> (8 * i));
    return n;
}

static int has_prefix(const char *k, size_t kl, const uint8_t *pre, size_t pl)
{
    return kl >= pl && memcmp(k, pre, pl) == 0;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int rocks_fail(ps_err *err, char **rerr, const char *what)
{
    int rc = ps_err_set(err, PS_ESTORE, "%s: %s", what, *rerr ? *rerr : "failed");
    rocksdb_free(*rerr);
    *rerr = NULL;
    return rc;
}

static int rmtree_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    return (flag == FTW_DP ? rmdir(p) : unlink(p)) && errno != ENOENT ? -1 : 0;
}

int profsvc_rmtree(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb)) return errno == ENOENT ? 0 : -1;
    return nftw(path, rmtree_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/**************************************************************************
 * Record values (layout above)
 */

int profsvc_rec_history(const char *user, size_t tail, const uint8_t *v, size_t vl, size_t dim,
                        uint64_t *id, float *emb, ps_err *err)
{
    if (tail != 8 || vl != 8 + 4 * dim)
        return ps_err_set(err, PS_ECORRUPT, "user '%s': history entry of %zu bytes, want %zu", user,
                          vl, 8 + 4 * dim);
    *id = get_u64le(v);
    for (size_t j = 0; j < dim; j++) emb[j] = get_f32le(v + 8 + 4 * j);
    return 0;
}

int profsvc_rec_click(const char *user, const uint8_t *v, size_t vl, uint64_t *id,
                      const uint8_t **query, size_t *qlen, ps_err *err)
{
    if (vl < 8) return ps_err_set(err, PS_ECORRUPT, "user '%s': click of %zu bytes", user, vl);
    *id = get_u64le(v);
    *query = v + 8;
    *qlen = vl - 8;
    return 0;
}

int profsvc_rec_next(const char *user, const uint8_t *v, size_t vl, uint64_t *next, ps_err *err)
{
    if (vl != 8) return ps_err_set(err, PS_ECORRUPT, "user '%s': N value of %zu bytes", user, vl);
    *next = get_u64le(v);
    return 0;
}

int profsvc_rec_dim(const char *dir, const uint8_t *v, size_t vl, uint32_t *dim, ps_err *err)
{
    *dim = vl == 4 ? get_u32le(v) : 0;
    if (*dim == 0 || *dim > PS_WIRE_MAX_DIM)
        return ps_err_set(err, PS_ECORRUPT, "%s: key " DIM_KEY " is malformed", dir);
    return 0;
}

int profsvc_rec_click_id(const char *user, const char *id, const uint8_t *v, size_t vl,
                         uint64_t *seq, uint64_t *sticker, ps_err *err)
{
    if (vl != 16)
        return ps_err_set(err, PS_ECORRUPT, "user '%s': click id '%s' value of %zu bytes", user, id,
                          vl);
    *seq = get_u64le(v);
    *sticker = get_u64le(v + 8);
    return 0;
}

int profsvc_rec_window(const char *user, const uint8_t *tail, size_t tl, size_t vl, uint64_t *seq,
                       ps_err *err)
{
    if (tl != 8 || vl == 0 || vl > PS_WIRE_MAX_CLICK_ID)
        return ps_err_set(err, PS_ECORRUPT, "user '%s': click id window entry of %zu bytes", user,
                          vl);
    *seq = 0;
    for (int i = 0; i < 8; i++) *seq = *seq << 8 | tail[i];
    return 0;
}

/**************************************************************************
 * Open, close, swap
 */

static char *path_with(const char *dir, const char *suffix)
{
    size_t n = strlen(dir) + strlen(suffix) + 1;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s%s", dir, suffix);
    return p;
}

/* Open st->dir into st->db and read the dimension. Caller holds the write lock (or is
 * alone). */
static int open_db(profsvc_store_t *st, ps_err *err)
{
    char *rerr = NULL;
    st->db = rocksdb_open(st->opts, st->dir, &rerr);
    if (!st->db) return rocks_fail(err, &rerr, st->dir);
    size_t len = 0;
    char *v = rocksdb_get(st->db, st->ropts, DIM_KEY, strlen(DIM_KEY), &len, &rerr);
    if (rerr) return rocks_fail(err, &rerr, "reading " DIM_KEY);
    uint32_t dim = 0;
    int rc = v ? profsvc_rec_dim(st->dir, (const uint8_t *)v, len, &dim, err) : 0;
    rocksdb_free(v);
    if (rc) return rc;
    atomic_store(&st->dim, dim);
    return 0;
}

profsvc_store_t *profsvc_store_open(const profsvc_store_cfg *cfg, ps_err *err)
{
    profsvc_store_t *st = calloc(1, sizeof *st);
    if (!st) {
        ps_err_set(err, PS_ENOMEM, "out of memory opening the store");
        return NULL;
    }
    st->cfg = *cfg;
    if (st->cfg.click_ids == 0) st->cfg.click_ids = 1;
    pthread_rwlock_init(&st->lock, NULL);
    for (int i = 0; i < USER_LOCKS; i++) pthread_mutex_init(&st->users[i], NULL);
    pthread_mutex_init(&st->dim_mu, NULL);
    pthread_mutex_init(&st->ck_mu, NULL);
    pthread_mutex_init(&st->wal_mu, NULL);
    st->dir = strdup(cfg->dir);
    st->ckdir = path_with(cfg->dir, ".checkpoints");
    st->incoming = path_with(cfg->dir, ".incoming");
    st->old = path_with(cfg->dir, ".old");
    st->opts = rocksdb_options_create();
    st->wopts = rocksdb_writeoptions_create();
    st->ropts = rocksdb_readoptions_create();
    st->cfg.dir = st->dir;
    if (!st->dir || !st->ckdir || !st->incoming || !st->old || !st->opts || !st->wopts ||
        !st->ropts) {
        ps_err_set(err, PS_ENOMEM, "out of memory opening the store");
        goto fail;
    }
    rocksdb_options_set_create_if_missing(st->opts, 1);
    rocksdb_options_set_info_log_level(st->opts, 4); /* FATAL only: logs belong to us */
    rocksdb_options_set_write_buffer_size(st->opts, (size_t)cfg->write_buffer_kb << 10);
    /* Only a primary serves its WAL; a replica keeps none beyond what recovery needs. */
    rocksdb_options_set_WAL_ttl_seconds(st->opts, cfg->replica ? 0 : cfg->wal_ttl_s);
    rocksdb_options_set_WAL_size_limit_MB(st->opts, cfg->replica ? 0 : cfg->wal_size_mb);
    /* A replica can fetch again whatever a crash loses; the primary acknowledges only synced
     * writes (DESIGN §3.2) unless --sync 0. */
    rocksdb_writeoptions_set_sync(st->wopts, cfg->replica ? 0 : (unsigned char)(cfg->sync != 0));

    if (cfg->replica) {
        /* A bootstrap that died: the download is incomplete, or the swap was cut short. */
        struct stat sb;
        if (profsvc_rmtree(st->incoming)) {
            ps_err_set(err, PS_EIO, "removing %s: %s", st->incoming, strerror(errno));
            goto fail;
        }
        if (stat(st->dir, &sb) && errno == ENOENT && !stat(st->old, &sb)) {
            if (rename(st->old, st->dir)) {
                ps_err_set(err, PS_EIO, "restoring %s: %s", st->old, strerror(errno));
                goto fail;
            }
            ps_log(PS_LOG_WARN, "profile", "swap_recovered", "db=%s from=%s", st->dir, st->old);
        } else if (profsvc_rmtree(st->old)) {
            ps_err_set(err, PS_EIO, "removing %s: %s", st->old, strerror(errno));
            goto fail;
        }
    } else if (profsvc_rmtree(st->ckdir)) {
        ps_err_set(err, PS_EIO, "removing %s: %s", st->ckdir, strerror(errno));
        goto fail;
    }
    if (open_db(st, err)) goto fail;
    return st;

fail:
    profsvc_store_close(st);
    return NULL;
}

static void wal_iters_clear(profsvc_store_t *st);

void profsvc_store_close(profsvc_store_t *st)
{
    if (!st) return;
    wal_iters_clear(st); /* before the database they read goes */
    if (st->db) rocksdb_close(st->db);
    if (st->opts) rocksdb_options_destroy(st->opts);
    if (st->wopts) rocksdb_writeoptions_destroy(st->wopts);
    if (st->ropts) rocksdb_readoptions_destroy(st->ropts);
    if (!st->cfg.replica && st->ckdir) profsvc_rmtree(st->ckdir);
    pthread_rwlock_destroy(&st->lock);
    for (int i = 0; i < USER_LOCKS; i++) pthread_mutex_destroy(&st->users[i]);
    pthread_mutex_destroy(&st->dim_mu);
    pthread_mutex_destroy(&st->ck_mu);
    pthread_mutex_destroy(&st->wal_mu);
    free(st->dir);
    free(st->ckdir);
    free(st->incoming);
    free(st->old);
    free(st);
}

/* Take the read lock; PS_EUNAVAIL (lock released) while there is no database. */
static int db_enter(profsvc_store_t *st, ps_err *err)
{
    pthread_rwlock_rdlock(&st->lock);
    if (st->db) return 0;
    pthread_rwlock_unlock(&st->lock);
    return ps_err_set(err, PS_EUNAVAIL, "the database is being replaced; retry");
}

static void db_leave(profsvc_store_t *st)
{
    pthread_rwlock_unlock(&st->lock);
}

uint64_t profsvc_store_seq(profsvc_store_t *st)
{
    if (db_enter(st, NULL)) return 0;
    uint64_t s = rocksdb_get_latest_sequence_number(st->db);
    db_leave(st);
    return s;
}

uint32_t profsvc_store_dim(profsvc_store_t *st)
{
    return atomic_load(&st->dim);
}

const char *profsvc_store_incoming(const profsvc_store_t *st)
{
    return st->incoming;
}

int profsvc_store_swap(profsvc_store_t *st, ps_err *err)
{
    int rc = 0;
    pthread_rwlock_wrlock(&st->lock);
    wal_iters_clear(st);
    if (st->db) {
        rocksdb_close(st->db);
        st->db = NULL;
    }
    if (profsvc_rmtree(st->old) || rename(st->dir, st->old)) {
        rc = ps_err_set(err, PS_EIO, "moving %s aside: %s", st->dir, strerror(errno));
    } else if (rename(st->incoming, st->dir)) {
        rc = ps_err_set(err, PS_EIO, "moving %s into place: %s", st->incoming, strerror(errno));
        if (rename(st->old, st->dir))
            ps_log(PS_LOG_ERROR, "profile", "swap_undo_failed", "db=%s msg=\"%s\"", st->dir,
                   strerror(errno));
    }
    ps_err oerr = {0, ""};
    if (open_db(st, &oerr)) {
        if (st->db) rocksdb_close(st->db);
        st->db = NULL;
        if (!rc) rc = ps_err_set(err, oerr.code, "%s", oerr.msg);
    }
    if (!rc && profsvc_rmtree(st->old))
        ps_log(PS_LOG_WARN, "profile", "remove_failed", "dir=%s msg=\"%s\"", st->old,
               strerror(errno));
    pthread_rwlock_unlock(&st->lock);
    return rc;
}

/**************************************************************************
 * Writes (primary)
 */

static pthread_mutex_t *user_lock(profsvc_store_t *st, const char *user, size_t ulen)
{
    return &st->users[ps_hash_bytes(user, ulen) % USER_LOCKS];
}

/* The user's next seq (N), 0 for a new user. */
static int read_next(profsvc_store_t *st, const char *user, size_t ulen, uint64_t *next,
                     ps_err *err)
{
    uint8_t k[KEY_MAX];
    size_t kl = user_key(k, 'N', user, ulen), len = 0;
    char *rerr = NULL;
    char *v = rocksdb_get(st->db, st->ropts, (const char *)k, kl, &len, &rerr);
    if (rerr) return rocks_fail(err, &rerr, "reading the user's next seq");
    *next = 0;
    int rc = v ? profsvc_rec_next(user, (const uint8_t *)v, len, next, err) : 0;
    rocksdb_free(v);
    return rc;
}

/* Check dim against the service's, taking dim_mu when it is not fixed yet. OUT *fixing: 1 when
 * this write fixes it (dim_mu held; the caller stores DIM_KEY and calls dim_release). */
static int dim_check(profsvc_store_t *st, size_t dim, const char *at, int *fixing, ps_err *err)
{
    unsigned d = atomic_load(&st->dim);
    *fixing = 0;
    if (d == 0) {
        pthread_mutex_lock(&st->dim_mu);
        if ((d = atomic_load(&st->dim)) == 0) {
            *fixing = 1;
            return 0;
        }
        pthread_mutex_unlock(&st->dim_mu);
    }
    if (dim != d)
        return ps_err_set(err, PS_EINVAL, "%s: %zu floats, this service holds %u", at, dim, d);
    return 0;
}

static void dim_release(profsvc_store_t *st, int fixing, int written, size_t dim)
{
    if (!fixing) return;
    if (written) atomic_store(&st->dim, (unsigned)dim);
    pthread_mutex_unlock(&st->dim_mu);
}

static void put_dim(rocksdb_writebatch_t *b, size_t dim)
{
    uint8_t v[4];
    put_u32le(v, (uint32_t)dim);
    rocksdb_writebatch_put(b, DIM_KEY, strlen(DIM_KEY), (const char *)v, 4);
}

static void put_history(rocksdb_writebatch_t *b, const char *user, size_t ulen, uint64_t seq,
                        uint64_t id, const float *emb, size_t dim, uint8_t *val)
{
    uint8_t k[KEY_MAX];
    size_t kl = seq_key(k, 'H', user, ulen, 1, seq);
    put_u64le(val, id);
    for (size_t j = 0; j < dim; j++) put_f32le(val + 8 + 4 * j, emb[j]);
    rocksdb_writebatch_put(b, (const char *)k, kl, (const char *)val, 8 + 4 * dim);
}

/* Put P (k > 0) or delete it. */
static int put_profile(rocksdb_writebatch_t *b, const char *user, size_t ulen, const ps_profile *p,
                       ps_err *err)
{
    uint8_t k[KEY_MAX], *v = NULL;
    size_t kl = user_key(k, 'P', user, ulen), vl = 0;
    if (p->k == 0) {
        rocksdb_writebatch_delete(b, (const char *)k, kl);
        return 0;
    }
    int rc = ps_profile_encode(p, &v, &vl, err);
    if (!rc) rocksdb_writebatch_put(b, (const char *)k, kl, (const char *)v, vl);
    free(v);
    return rc;
}

static int write_batch(profsvc_store_t *st, rocksdb_writebatch_t *b, ps_err *err)
{
    char *rerr = NULL;
    rocksdb_write(st->db, st->wopts, b, &rerr);
    return rerr ? rocks_fail(err, &rerr, "write") : 0;
}

/* The click's history: the new entry, then up to history − 1 stored ones, newest first;
 * older stored ones are deleted in b. ids / embs get the distinct stickers (newest first)
 * for k-means. */
typedef struct hist {
    uint64_t *ids;
    float *embs;
    size_t n;    /* distinct stickers in ids / embs */
    size_t kept; /* entries kept, the new one included */
} hist;

static int collect_history(profsvc_store_t *st, rocksdb_writebatch_t *b, const char *user,
                           size_t ulen, uint64_t new_id, const float *new_emb, size_t dim, hist *h,
                           ps_err *err)
{
    size_t cap = st->cfg.history;
    uint8_t pre[KEY_MAX], last[KEY_MAX];
    size_t pl = seq_key(pre, 'H', user, ulen, 0, 0);
    size_t ll = seq_key(last, 'H', user, ulen, 1, UINT64_MAX);
    int rc = 0;
    if (!(h->ids = malloc(cap * sizeof *h->ids)) || !(h->embs = malloc(cap * dim * sizeof(float))))
        return ps_err_set(err, PS_ENOMEM, "out of memory for a history of %zu", cap);
    h->ids[0] = new_id;
    memcpy(h->embs, new_emb, dim * sizeof(float));
    h->n = h->kept = 1;
    rocksdb_iterator_t *it = rocksdb_create_iterator(st->db, st->ropts);
    for (rocksdb_iter_seek_for_prev(it, (const char *)last, ll); rocksdb_iter_valid(it) && !rc;
         rocksdb_iter_prev(it)) {
        size_t kl, vl;
        const char *k = rocksdb_iter_key(it, &kl);
        if (!has_prefix(k, kl, pre, pl)) break;
        if (h->kept >= cap) { /* beyond the bound: drop it */
            rocksdb_writebatch_delete(b, k, kl);
            continue;
        }
        const uint8_t *v = (const uint8_t *)rocksdb_iter_value(it, &vl);
        uint64_t id = 0;
        /* decoded into the next free slot, kept only when its sticker is new */
        if ((rc = profsvc_rec_history(user, kl - pl, v, vl, dim, &id, h->embs + h->n * dim, err)))
            break;
        h->kept++;
        size_t i = 0;
        while (i < h->n && h->ids[i] != id) i++;
        if (i < h->n) continue; /* an older click of a sticker already in */
        h->ids[h->n++] = id;
    }
    if (!rc) {
        char *rerr = NULL;
        rocksdb_iter_get_error(it, &rerr);
        if (rerr) rc = rocks_fail(err, &rerr, "reading the history");
    }
    rocksdb_iter_destroy(it);
    return rc;
}

/* 'I' user 0x00 click_id. Returns the key length. */
static size_t id_key(uint8_t *k, const char *user, size_t ulen, const char *id, size_t idlen)
{
    size_t n = user_key(k, 'I', user, ulen);
    k[n++] = 0;
    memcpy(k + n, id, idlen);
    return n + idlen;
}

/* Whether the user's window holds click id `id`. OUT *seen, and when seen *sticker (the click's
 * sticker). */
static int read_click_id(profsvc_store_t *st, const char *user, size_t ulen, const char *id,
                         int *seen, uint64_t *sticker, ps_err *err)
{
    uint8_t k[KEY_MAX];
    size_t kl = id_key(k, user, ulen, id, strlen(id)), len = 0;
    char *rerr = NULL;
    char *v = rocksdb_get(st->db, st->ropts, (const char *)k, kl, &len, &rerr);
    if (rerr) return rocks_fail(err, &rerr, "reading a click id");
    uint64_t seq;
    *seen = v != NULL;
    int rc = v ? profsvc_rec_click_id(user, id, (const uint8_t *)v, len, &seq, sticker, err) : 0;
    rocksdb_free(v);
    return rc;
}

/* Remember click id `id` for the click at seq n (I and J in b) and forget, in b, the ids of
 * clicks at seqs <= n − cfg->click_ids (see "Idempotent clicks" above). */
static int put_click_id(profsvc_store_t *st, rocksdb_writebatch_t *b, const char *user, size_t ulen,
                        const char *id, uint64_t n, uint64_t sticker, ps_err *err)
{
    uint8_t k[KEY_MAX], v[16], pre[KEY_MAX];
    size_t idlen = strlen(id), kl = id_key(k, user, ulen, id, idlen);
    put_u64le(v, n);
    put_u64le(v + 8, sticker);
    rocksdb_writebatch_put(b, (const char *)k, kl, (const char *)v, 16);
    kl = seq_key(k, 'J', user, ulen, 1, n);
    rocksdb_writebatch_put(b, (const char *)k, kl, id, idlen);
    if (n < st->cfg.click_ids) return 0;
    uint64_t last = n - st->cfg.click_ids; /* the newest seq that falls out */
    size_t pl = seq_key(pre, 'J', user, ulen, 0, 0);
    int rc = 0;
    rocksdb_iterator_t *it = rocksdb_create_iterator(st->db, st->ropts);
    for (rocksdb_iter_seek(it, (const char *)pre, pl); rocksdb_iter_valid(it) && !rc;
         rocksdb_iter_next(it)) {
        size_t jl, vl;
        const char *j = rocksdb_iter_key(it, &jl);
        if (!has_prefix(j, jl, pre, pl)) break;
        const char *old = rocksdb_iter_value(it, &vl);
        uint64_t seq = 0;
        if ((rc = profsvc_rec_window(user, (const uint8_t *)j + pl, jl - pl, vl, &seq, err)) ||
            seq > last)
            break;
        rocksdb_writebatch_delete(b, j, jl);
        size_t ol = id_key(k, user, ulen, old, vl);
        rocksdb_writebatch_delete(b, (const char *)k, ol);
    }
    if (!rc) {
        char *rerr = NULL;
        rocksdb_iter_get_error(it, &rerr);
        if (rerr) rc = rocks_fail(err, &rerr, "reading the click id window");
    }
    rocksdb_iter_destroy(it);
    return rc;
}

/* What a click of the user would answer without writing: entries in H, centroids in P. */
static int user_counts(profsvc_store_t *st, const char *user, size_t ulen, uint32_t *history,
                       uint32_t *k, ps_err *err)
{
    uint8_t pre[KEY_MAX];
    size_t pl = seq_key(pre, 'H', user, ulen, 0, 0), len = 0;
    *history = 0;
    *k = 0;
    rocksdb_iterator_t *it = rocksdb_create_iterator(st->db, st->ropts);
    for (rocksdb_iter_seek(it, (const char *)pre, pl); rocksdb_iter_valid(it);
         rocksdb_iter_next(it)) {
        size_t kl;
        const char *key = rocksdb_iter_key(it, &kl);
        if (!has_prefix(key, kl, pre, pl)) break;
        (*history)++;
    }
    char *rerr = NULL;
    rocksdb_iter_get_error(it, &rerr);
    rocksdb_iter_destroy(it);
    if (rerr) return rocks_fail(err, &rerr, "reading the history");
    pl = user_key(pre, 'P', user, ulen);
    char *v = rocksdb_get(st->db, st->ropts, (const char *)pre, pl, &len, &rerr);
    if (rerr) return rocks_fail(err, &rerr, "reading the profile");
    int rc = 0;
    if (v) {
        ps_profile prof;
        if ((rc = ps_profile_decode((const uint8_t *)v, len, &prof, err)))
            ps_err_prefix(err, "user '%s'", user);
        else
            *k = prof.k;
        ps_profile_clear(&prof);
    }
    rocksdb_free(v);
    return rc;
}

int profsvc_store_click(profsvc_store_t *st, const char *user, uint64_t sticker, const char *query,
                        size_t qlen, const float *emb, size_t dim, const char *click_id,
                        profsvc_write_result *out, ps_err *err)
{
    if (st->cfg.replica) return ps_err_set(err, PS_EINVAL, REPLICA_WRITE);
    size_t ulen = strlen(user);
    int rc, fixing = 0, written = 0, seen = 0;
    if (click_id && !click_id[0]) click_id = NULL;
    if (click_id && (rc = ps_wire_check_click_id(click_id, "click.click_id", err))) return rc;
    if ((rc = db_enter(st, err))) return rc;
    pthread_mutex_t *ul = user_lock(st, user, ulen);
    pthread_mutex_lock(ul);
    rocksdb_writebatch_t *b = rocksdb_writebatch_create();
    hist h = {0};
    ps_profile prof = {0};
    uint8_t *val = malloc(8 + (qlen > 4 * dim ? qlen : 4 * dim));
    uint64_t next = 0, seen_sticker = 0;
    out->duplicate = 0;
    if (!val) {
        rc = ps_err_set(err, PS_ENOMEM, "out of memory for a click");
        goto out;
    }
    /* A retry of a click stored before: its outcome, nothing written (under the user's lock,
     * so a retry racing the first attempt waits for it and then finds its id). */
    if (click_id && (rc = read_click_id(st, user, ulen, click_id, &seen, &seen_sticker, err)))
        goto out;
    if (seen && seen_sticker != sticker) {
        rc = ps_err_set(err, PS_ECONFLICT,
                        "click.click_id: '%s' of user '%s' is a click on sticker %llu, not %llu",
                        click_id, user, (unsigned long long)seen_sticker,
                        (unsigned long long)sticker);
        goto out;
    }
    if (seen) {
        if ((rc = user_counts(st, user, ulen, &out->history, &out->k, err))) goto out;
        out->seq = rocksdb_get_latest_sequence_number(st->db);
        out->duplicate = 1;
        goto out;
    }
    if ((rc = dim_check(st, dim, "click.embedding", &fixing, err)) ||
        (rc = read_next(st, user, ulen, &next, err)))
        goto out;
    if (fixing) put_dim(b, dim);
    if (click_id && (rc = put_click_id(st, b, user, ulen, click_id, next, sticker, err))) goto out;

    uint8_t k[KEY_MAX];
    size_t kl = seq_key(k, 'L', user, ulen, 1, next);
    put_u64le(val, sticker);
    if (qlen) memcpy(val + 8, query, qlen);
    rocksdb_writebatch_put(b, (const char *)k, kl, (const char *)val, 8 + qlen);
    put_history(b, user, ulen, next, sticker, emb, dim, val);
    kl = user_key(k, 'N', user, ulen);
    put_u64le(val, next + 1);
    rocksdb_writebatch_put(b, (const char *)k, kl, (const char *)val, 8);

    if ((rc = collect_history(st, b, user, ulen, sticker, emb, dim, &h, err)) ||
        (rc = ps_profile_build(h.embs, h.n, dim, st->cfg.kmax, ps_hash_bytes(user, ulen), &prof,
                               err)) ||
        (rc = put_profile(b, user, ulen, &prof, err)) || (rc = write_batch(st, b, err)))
        goto out;
    written = 1;
    out->seq = rocksdb_get_latest_sequence_number(st->db);
    out->history = (uint32_t)h.kept;
    out->k = prof.k;

out:
    dim_release(st, fixing, written, dim);
    pthread_mutex_unlock(ul);
    db_leave(st);
    rocksdb_writebatch_destroy(b);
    ps_profile_clear(&prof);
    free(h.ids);
    free(h.embs);
    free(val);
    return rc;
}

/*
 * Loads merge (issue 9): the loader may run again at any time (the docker-compose loader runs
 * on every `up`) and must never wipe what users clicked since.
 *
 *   held    the user's stored history (H), oldest first, as it is: a sticker clicked twice
 *           online is there twice
 *   loaded  the load's entries deduplicated by sticker id (each sticker at its newest
 *           position), the newest cfg->history of them
 *   fresh   the loaded entries whose sticker is not held
 *   merged  fresh ++ held, the newest cfg->history of them: held entries (online clicks among
 *           them) stay the newest, and a sticker already held keeps its held embedding
 *
 * When no fresh entry survives the bound, H is left exactly as it is, keys and values;
 * otherwise H is rewritten as merged at seqs 0..m−1 and N raised to at least m, so later
 * clicks still land after it (L, the click log, keeps its own seqs and is never touched).
 * Centroids: when merged equals loaded entry for entry (sticker id and embedding bytes) the
 * user has nothing beyond the load, and the load's centroids are stored as given (a freshly
 * loaded user is personalized bit-identically to the builder's offline profile); otherwise
 * they are recomputed over merged exactly as a click recomputes them (its distinct stickers,
 * newest first, ps_profile_build seeded by the user).
 *
 * Hence loading the same thing again rewrites the same P and nothing else (the checksum does
 * not move), and a load after clicks whose stickers are all held changes nothing: the last
 * click computed its centroids over the same history. One synced write batch per load, like a
 * click, so replicas apply the same bytes.
 */

/* An entry list: sticker ids and their embeddings, oldest first. */
typedef struct entries {
    uint64_t *ids;
    float *embs; /* n × dim */
    size_t n, cap;
} entries;

static void entries_free(entries *e)
{
    free(e->ids);
    free(e->embs);
    memset(e, 0, sizeof *e);
}

static int entries_push(entries *e, uint64_t id, const float *emb, size_t dim, ps_err *err)
{
    if (e->n == e->cap) {
        size_t cap = e->cap ? 2 * e->cap : 64;
        uint64_t *ids = realloc(e->ids, cap * sizeof *ids);
        if (ids) e->ids = ids;
        float *embs = ids ? realloc(e->embs, cap * dim * sizeof *embs) : NULL;
        if (!ids || !embs) return ps_err_set(err, PS_ENOMEM, "out of memory for a history");
        e->embs = embs;
        e->cap = cap;
    }
    e->ids[e->n] = id;
    memcpy(e->embs + e->n * dim, emb, dim * sizeof(float));
    e->n++;
    return 0;
}

typedef struct id_pos {
    uint64_t id;
    size_t pos;
} id_pos;

static int cmp_id_pos(const void *a, const void *b)
{
    const id_pos *x = a, *y = b;
    if (x->id != y->id) return x->id < y->id ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* OUT newest[i] = 1 when i is the newest (last) occurrence of ids[i] in ids[0..n). */
static int mark_newest(const uint64_t *ids, size_t n, uint8_t *newest, ps_err *err)
{
    id_pos *s = malloc((n ? n : 1) * sizeof *s);
    if (!s) return ps_err_set(err, PS_ENOMEM, "out of memory deduplicating %zu stickers", n);
    for (size_t i = 0; i < n; i++) s[i] = (id_pos){ids[i], i};
    qsort(s, n, sizeof *s, cmp_id_pos);
    for (size_t i = 0; i < n; i++) newest[s[i].pos] = i + 1 == n || s[i + 1].id != s[i].id;
    free(s);
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The user's H entries, oldest first, into *held. */
static int read_held(profsvc_store_t *st, const char *user, size_t ulen, size_t dim, entries *held,
                     ps_err *err)
{
    uint8_t pre[KEY_MAX];
    size_t pl = seq_key(pre, 'H', user, ulen, 0, 0);
    float *emb = malloc((dim ? dim : 1) * sizeof *emb);
    int rc = emb ? 0 : ps_err_set(err, PS_ENOMEM, "out of memory for a history");
    rocksdb_iterator_t *it = rocksdb_create_iterator(st->db, st->ropts);
    for (rocksdb_iter_seek(it, (const char *)pre, pl); !rc && rocksdb_iter_valid(it);
         rocksdb_iter_next(it)) {
        size_t kl, vl;
        const char *k = rocksdb_iter_key(it, &kl);
        if (!has_prefix(k, kl, pre, pl)) break;
        const uint8_t *v = (const uint8_t *)rocksdb_iter_value(it, &vl);
        uint64_t id = 0;
        if (!(rc = profsvc_rec_history(user, kl - pl, v, vl, dim, &id, emb, err)))
            rc = entries_push(held, id, emb, dim, err);
    }
    if (!rc) {
        char *rerr = NULL;
        rocksdb_iter_get_error(it, &rerr);
        if (rerr) rc = rocks_fail(err, &rerr, "reading the history");
    }
    rocksdb_iter_destroy(it);
    free(emb);
    return rc;
}

/* Delete every key of the range prefix pre[0..pl) in b. */
static int delete_range(profsvc_store_t *st, rocksdb_writebatch_t *b, const uint8_t *pre, size_t pl,
                        ps_err *err)
{
    rocksdb_iterator_t *it = rocksdb_create_iterator(st->db, st->ropts);
    for (rocksdb_iter_seek(it, (const char *)pre, pl); rocksdb_iter_valid(it);
         rocksdb_iter_next(it)) {
        size_t kl;
        const char *k = rocksdb_iter_key(it, &kl);
        if (!has_prefix(k, kl, pre, pl)) break;
        rocksdb_writebatch_delete(b, k, kl);
    }
    char *rerr = NULL;
    rocksdb_iter_get_error(it, &rerr);
    rocksdb_iter_destroy(it);
    return rerr ? rocks_fail(err, &rerr, "reading the history") : 0;
}

/* Merge the load ids/embs[0..n) with held into *merged (the newest cap entries) and *loaded
 * (the deduplicated load, newest cap). OUT *fresh_kept: fresh entries in *merged. */
static int merge_history(const entries *held, const uint64_t *ids, const float *embs, size_t n,
                         size_t dim, size_t cap, entries *loaded, entries *merged,
                         size_t *fresh_kept, ps_err *err)
{
    uint8_t *newest = malloc(n ? n : 1);
    uint64_t *sorted = malloc((held->n ? held->n : 1) * sizeof *sorted);
    entries fresh = {0};
    int rc = 0;
    *fresh_kept = 0;
    if (!newest || !sorted) {
        rc = ps_err_set(err, PS_ENOMEM, "out of memory merging a history");
        goto out;
    }
    if ((rc = mark_newest(ids, n, newest, err))) goto out;
    if (held->n) memcpy(sorted, held->ids, held->n * sizeof *sorted);
    qsort(sorted, held->n, sizeof *sorted, cmp_u64);
    size_t distinct = 0;
    for (size_t i = 0; i < n; i++) distinct += newest[i];
    size_t skip = distinct > cap ? distinct - cap : 0; /* the oldest beyond the bound */
    for (size_t i = 0; i < n && !rc; i++) {
        if (!newest[i] || (skip && skip--)) continue;
        if (!(rc = entries_push(loaded, ids[i], embs + i * dim, dim, err)) &&
            !bsearch(&ids[i], sorted, held->n, sizeof *sorted, cmp_u64))
            rc = entries_push(&fresh, ids[i], embs + i * dim, dim, err);
    }
    size_t total = fresh.n + held->n, drop = total > cap ? total - cap : 0;
    for (size_t i = drop; i < total && !rc; i++) {
        const entries *src = i < fresh.n ? &fresh : held;
        size_t j = i < fresh.n ? i : i - fresh.n;
        rc = entries_push(merged, src->ids[j], src->embs + j * dim, dim, err);
    }
    if (!rc) *fresh_kept = fresh.n > drop ? fresh.n - drop : 0;
out:
    entries_free(&fresh);
    free(newest);
    free(sorted);
    return rc;
}

/* The profile a click would compute over h: its distinct stickers, newest first. */
static int recompute(profsvc_store_t *st, const char *user, size_t ulen, const entries *h,
                     size_t dim, ps_profile *prof, ps_err *err)
{
    uint8_t *newest = malloc(h->n ? h->n : 1);
    float *pts = malloc((h->n ? h->n : 1) * dim * sizeof *pts);
    int rc = newest && pts ? mark_newest(h->ids, h->n, newest, err)
                           : ps_err_set(err, PS_ENOMEM, "out of memory recomputing a profile");
    size_t np = 0;
    for (size_t i = h->n; i-- > 0 && !rc;)
        if (newest[i]) memcpy(pts + np++ * dim, h->embs + i * dim, dim * sizeof *pts);
    if (!rc)
        rc = ps_profile_build(pts, np, dim, st->cfg.kmax, ps_hash_bytes(user, ulen), prof, err);
    free(newest);
    free(pts);
    return rc;
}

static int entries_equal(const entries *a, const entries *b, size_t dim)
{
    return a->n == b->n && (a->n == 0 || (!memcmp(a->ids, b->ids, a->n * sizeof *a->ids) &&
                                          !memcmp(a->embs, b->embs, a->n * dim * sizeof(float))));
}

int profsvc_store_load(profsvc_store_t *st, const char *user, const ps_profile *prof,
                       const uint64_t *ids, const float *embs, size_t n, profsvc_write_result *out,
                       ps_err *err)
{
    if (st->cfg.replica) return ps_err_set(err, PS_EINVAL, REPLICA_WRITE);
    size_t ulen = strlen(user), dim = prof->dim;
    int rc, fixing = 0, written = 0;
    if (dim == 0 && (n || prof->k))
        return ps_err_set(err, PS_EINVAL, "load_profile: no embedding dimension");
    if ((rc = db_enter(st, err))) return rc;
    pthread_mutex_t *ul = user_lock(st, user, ulen);
    pthread_mutex_lock(ul);
    rocksdb_writebatch_t *b = rocksdb_writebatch_create();
    entries held = {0}, loaded = {0}, merged = {0};
    ps_profile built = {0};
    const ps_profile *store_prof = prof;
    uint8_t *val = NULL;
    uint64_t next = 0;
    size_t fresh = 0;
    if (dim && (rc = dim_check(st, dim, "load_profile.centroids", &fixing, err))) goto out;
    if (!dim) dim = atomic_load(&st->dim); /* an empty load: held entries have the service's */
    if (!(val = malloc(8 + 4 * (dim ? dim : 1)))) {
        rc = ps_err_set(err, PS_ENOMEM, "out of memory for a profile load");
        goto out;
    }
    if ((rc = read_next(st, user, ulen, &next, err)) ||
        (rc = read_held(st, user, ulen, dim, &held, err)) ||
        (rc = merge_history(&held, ids, embs, n, dim, st->cfg.history, &loaded, &merged, &fresh,
                            err)))
        goto out;
    if (fixing) put_dim(b, dim);
    uint8_t k[KEY_MAX];
    if (fresh) { /* rewrite H as merged; clicks continue after it */
        size_t pl = seq_key(k, 'H', user, ulen, 0, 0);
        if ((rc = delete_range(st, b, k, pl, err))) goto out;
        for (size_t i = 0; i < merged.n; i++)
            put_history(b, user, ulen, i, merged.ids[i], merged.embs + i * dim, dim, val);
        if (next < merged.n) {
            size_t kl = user_key(k, 'N', user, ulen);
            put_u64le(val, merged.n);
            rocksdb_writebatch_put(b, (const char *)k, kl, (const char *)val, 8);
        }
    }
    if (!entries_equal(&merged, &loaded, dim)) {
        if ((rc = recompute(st, user, ulen, &merged, dim, &built, err))) goto out;
        store_prof = &built;
    }
    if ((rc = put_profile(b, user, ulen, store_prof, err)) || (rc = write_batch(st, b, err)))
        goto out;
    written = 1;
    out->seq = rocksdb_get_latest_sequence_number(st->db);
    out->history = (uint32_t)merged.n;
    out->k = store_prof->k;
    out->merged = store_prof == &built;
    out->duplicate = 0;

out:
    dim_release(st, fixing, written, dim);
    pthread_mutex_unlock(ul);
    db_leave(st);
    rocksdb_writebatch_destroy(b);
    ps_profile_clear(&built);
    entries_free(&held);
    entries_free(&loaded);
    entries_free(&merged);
    free(val);
    return rc;
}

/**************************************************************************
 * Reads
 */

int profsvc_store_profile(profsvc_store_t *st, const char *user, int *found, ps_profile *prof,
                          uint64_t *seq, ps_err *err)
{
    uint8_t k[KEY_MAX];
    size_t ulen = strlen(user), kl = user_key(k, 'P', user, ulen), len = 0;
    char *rerr = NULL;
    int rc;
    memset(prof, 0, sizeof *prof);
    *found = 0;
    if ((rc = db_enter(st, err))) return rc;
    *seq = rocksdb_get_latest_sequence_number(st->db);
    char *v = rocksdb_get(st->db, st->ropts, (const char *)k, kl, &len, &rerr);
    db_leave(st);
    if (rerr) return rocks_fail(err, &rerr, "reading the profile");
    if (v) {
        if ((rc = ps_profile_decode((const uint8_t *)v, len, prof, err)))
            ps_err_prefix(err, "user '%s'", user);
        else
            *found = 1;
    }
    rocksdb_free(v);
    return rc;
}

int profsvc_store_clicks(profsvc_store_t *st, const char *user, size_t cap, uint64_t **ids,
                         size_t *n, ps_err *err)
{
    uint8_t pre[KEY_MAX];
    size_t pl = seq_key(pre, 'L', user, strlen(user), 0, 0), ncap = 0;
    int rc;
    *ids = NULL;
    *n = 0;
    if ((rc = db_enter(st, err))) return rc;
    rocksdb_iterator_t *it = rocksdb_create_iterator(st->db, st->ropts);
    for (rocksdb_iter_seek(it, (const char *)pre, pl); rocksdb_iter_valid(it) && !rc;
         rocksdb_iter_next(it)) {
        size_t kl, vl;
        const char *k = rocksdb_iter_key(it, &kl);
        if (!has_prefix(k, kl, pre, pl)) break;
        const uint8_t *v = (const uint8_t *)rocksdb_iter_value(it, &vl), *query;
        uint64_t id = 0;
        size_t qlen;
        if ((rc = profsvc_rec_click(user, v, vl, &id, &query, &qlen, err))) break;
        if (*n == cap) {
            rc = ps_err_set(err, PS_ETOOBIG, "user '%s': more than %zu clicks", user, cap);
        } else {
            if (*n == ncap) {
                ncap = ncap ? 2 * ncap : 64;
                uint64_t *p = realloc(*ids, ncap * sizeof *p);
                if (!p) {
                    rc = ps_err_set(err, PS_ENOMEM, "out of memory for clicks");
                    break;
                }
                *ids = p;
            }
            (*ids)[(*n)++] = id;
        }
    }
    char *rerr = NULL;
    rocksdb_iter_get_error(it, &rerr);
    rocksdb_iter_destroy(it);
    db_leave(st);
    if (rerr && !rc) rc = rocks_fail(err, &rerr, "reading the click log");
    rocksdb_free(rerr);
    if (rc) {
        free(*ids);
        *ids = NULL;
        *n = 0;
    }
    return rc;
}

/* FNV-1a 64 over len as u64LE then the bytes. */
static uint64_t fnv_field(uint64_t h, const void *p, size_t len)
{
    uint8_t lb[8];
    put_u64le(lb, len);
    for (int i = 0; i < 8; i++) h = (h ^ lb[i]) * 0x100000001b3ull;
    const uint8_t *b = p;
    for (size_t i = 0; i < len; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

int profsvc_store_checksum(profsvc_store_t *st, uint64_t *sum, uint64_t *keys, uint64_t *seq,
                           ps_err *err)
{
    int rc;
    if ((rc = db_enter(st, err))) return rc;
    /* The C API does not tell a snapshot's sequence number: take one between two equal
     * readings of the latest (writes are rare where a checksum is asked for). */
    const rocksdb_snapshot_t *snap = NULL;
    for (int i = 0; i < 100; i++) {
        uint64_t before = rocksdb_get_latest_sequence_number(st->db);
        snap = rocksdb_create_snapshot(st->db);
        *seq = rocksdb_get_latest_sequence_number(st->db);
        if (*seq == before) break;
        rocksdb_release_snapshot(st->db, snap);
        snap = NULL;
    }
    if (!snap) snap = rocksdb_create_snapshot(st->db);
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_snapshot(ro, snap);
    rocksdb_iterator_t *it = rocksdb_create_iterator(st->db, ro);
    uint64_t h = 0xcbf29ce484222325ull, nk = 0;
    for (rocksdb_iter_seek_to_first(it); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t kl, vl;
        const char *k = rocksdb_iter_key(it, &kl), *v = rocksdb_iter_value(it, &vl);
        h = fnv_field(fnv_field(h, k, kl), v, vl);
        nk++;
    }
    char *rerr = NULL;
    rocksdb_iter_get_error(it, &rerr);
    rocksdb_iter_destroy(it);
    rocksdb_readoptions_destroy(ro);
    rocksdb_release_snapshot(st->db, snap);
    db_leave(st);
    if (rerr) return rocks_fail(err, &rerr, "checksum scan");
    *sum = h;
    *keys = nk;
    return 0;
}

static void ckpt_gc(profsvc_store_t *st);

/**************************************************************************
 * Replication: WAL out (primary), batches in (replica)
 */

void profsvc_batches_free(profsvc_batch *b, size_t n)
{
    for (size_t i = 0; b && i < n; i++) free(b[i].data);
    free(b);
}

/*
 * WAL iterators kept between wal requests. GetUpdatesSince reads the WAL file holding `from`
 * from its beginning, so a fresh iterator per replica poll (every few ms) costs O(WAL size)
 * of a request worker. A request that ends cleanly leaves its iterator here, keyed by the
 * sequence number of the batch after the last one it returned; the request that asks for
 * exactly that number continues it with one Next().
 *
 * That relies on RocksDB's TransactionLogIterator tailing (checked on 7.8): Next() on an
 * exhausted iterator reads the batches appended since to the same WAL file, never past the
 * published latest sequence number (so never a half-written batch); at the end of a file
 * that is no longer the newest (a flush switched WALs) it stays invalid with status TryAgain.
 * A continued iterator that yields nothing, or a gap, is therefore dropped and the request
 * made again on a fresh GetUpdatesSince, which alone decides "gone": a cached iterator never
 * changes what a request returns, only what it costs.
 *
 * Each slot's iterator is owned by wal_mu while it sits here and by one request (outside
 * wal_mu) once taken. Iterators are destroyed only with the database open: under its read
 * lock, or by wal_iters_clear under the write lock / at close.
 */

/* Destroy the iterators unused for WAL_ITER_IDLE_S. Caller holds wal_mu and the read lock. */
static void wal_iters_gc(profsvc_store_t *st, double now)
{
    for (int i = 0; i < WAL_ITERS; i++) {
        wal_iter *w = &st->wal_iters[i];
        if (w->it && now - w->last_used >= WAL_ITER_IDLE_S) {
            rocksdb_wal_iter_destroy(w->it);
            w->it = NULL;
        }
    }
}

/* Take out the iterator whose next batch is `from`, or NULL. Caller holds the read lock. */
static rocksdb_wal_iterator_t *wal_iter_take(profsvc_store_t *st, uint64_t from)
{
    rocksdb_wal_iterator_t *it = NULL;
    pthread_mutex_lock(&st->wal_mu);
    wal_iters_gc(st, mono_s());
    for (int i = 0; !it && i < WAL_ITERS; i++) {
        wal_iter *w = &st->wal_iters[i];
        if (w->it && w->next == from) {
            it = w->it;
            w->it = NULL;
        }
    }
    pthread_mutex_unlock(&st->wal_mu);
    return it;
}

/* Keep `it` (positioned on the batch before `next`) for the request asking for `next`,
 * in a free slot or in place of the least recently used. Caller holds the read lock. */
static void wal_iter_put(profsvc_store_t *st, rocksdb_wal_iterator_t *it, uint64_t next)
{
    double now = mono_s();
    pthread_mutex_lock(&st->wal_mu);
    wal_iters_gc(st, now);
    wal_iter *slot = &st->wal_iters[0];
    for (int i = 0; i < WAL_ITERS && slot->it; i++) {
        wal_iter *w = &st->wal_iters[i];
        if (!w->it || w->last_used < slot->last_used) slot = w;
    }
    if (slot->it) rocksdb_wal_iter_destroy(slot->it);
    slot->it = it;
    slot->next = next;
    slot->last_used = now;
    pthread_mutex_unlock(&st->wal_mu);
}

/* Destroy every kept iterator. Caller holds the write lock, or is alone (close). */
static void wal_iters_clear(profsvc_store_t *st)
{
    pthread_mutex_lock(&st->wal_mu);
    for (int i = 0; i < WAL_ITERS; i++) {
        if (st->wal_iters[i].it) rocksdb_wal_iter_destroy(st->wal_iters[i].it);
        st->wal_iters[i].it = NULL;
    }
    pthread_mutex_unlock(&st->wal_mu);
}

/* Append to *batches / *n the batches of `it` from its current one on, the first of which
 * must be `from`, each the one after the last, until max_bytes or PS_WIRE_MAX_BATCHES. OUT
 * *next: the sequence number after the last batch appended; *gap: 1 if the iterator stopped
 * on a batch that is not the expected one (it then sits on that batch, not on the last one
 * appended). Errors: PS_ENOMEM (the caller frees what was appended). */
static int wal_read(rocksdb_wal_iterator_t *it, uint64_t from, size_t max_bytes,
                    profsvc_batch **batches, size_t *n, uint64_t *next, int *gap, ps_err *err)
{
    int rc = 0;
    size_t cap = 0, total = 0;
    uint64_t expect = from;
    *gap = 0;
    for (; rocksdb_wal_iter_valid(it) && !rc; rocksdb_wal_iter_next(it)) {
        uint64_t bseq = 0;
        size_t len = 0;
        rocksdb_writebatch_t *wb = rocksdb_wal_iter_get_batch(it, &bseq);
        /* GetUpdatesSince skips silently to the next batch it has (DESIGN §3.2). */
        if (bseq != expect) {
            rocksdb_writebatch_destroy(wb);
            *gap = 1;
            break;
        }
        const char *data = rocksdb_writebatch_data(wb, &len);
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            profsvc_batch *p = realloc(*batches, cap * sizeof *p);
            if (!p) {
                rocksdb_writebatch_destroy(wb);
                rc = ps_err_set(err, PS_ENOMEM, "out of memory for WAL batches");
                break;
            }
            *batches = p;
        }
        profsvc_batch *b = &(*batches)[*n];
        if (!(b->data = malloc(len ? len : 1))) {
            rocksdb_writebatch_destroy(wb);
            rc = ps_err_set(err, PS_ENOMEM, "out of memory for a WAL batch");
            break;
        }
        memcpy(b->data, data, len);
        b->seq = bseq;
        b->len = len;
        (*n)++;
        expect = bseq + (uint64_t)rocksdb_writebatch_count(wb);
        rocksdb_writebatch_destroy(wb);
        total += len;
        if (total >= max_bytes || *n >= PS_WIRE_MAX_BATCHES) break;
    }
    *next = expect;
    return rc;
}

int profsvc_store_wal(profsvc_store_t *st, uint64_t from, size_t max_bytes, profsvc_batch **batches,
                      size_t *n, int *gone, uint64_t *latest, ps_err *err)
{
    int rc, gap = 0;
    uint64_t next = from;
    *batches = NULL;
    *n = 0;
    *gone = 0;
    if (!st->cfg.replica) { /* replicas poll here: the place to notice abandoned sessions */
        pthread_mutex_lock(&st->ck_mu);
        ckpt_gc(st);
        pthread_mutex_unlock(&st->ck_mu);
    }
    if ((rc = db_enter(st, err))) return rc;
    *latest = rocksdb_get_latest_sequence_number(st->db);
    if (from == 0 || from > *latest) {
        db_leave(st);
        return 0;
    }
    char *rerr = NULL;
    rocksdb_wal_iterator_t *it = wal_iter_take(st, from);
    if (it) {
        rocksdb_wal_iter_next(it); /* off the last batch it returned, or on past its end */
        rc = wal_read(it, from, max_bytes, batches, n, &next, &gap, err);
        if (!rc && *n == 0) { /* a new WAL file or a gap: leave the verdict to a fresh one */
            rocksdb_wal_iter_destroy(it);
            it = NULL;
        }
    }
    if (!it) {
        it = rocksdb_get_updates_since(st->db, from, NULL, &rerr);
        if (rerr || !it) {
            ps_log(PS_LOG_INFO, "profile", "wal_gone", "from=%llu msg=\"%s\"",
                   (unsigned long long)from, rerr ? rerr : "no iterator");
            rocksdb_free(rerr);
            if (it) rocksdb_wal_iter_destroy(it);
            db_leave(st);
            *gone = 1;
            return 0;
        }
        rc = wal_read(it, from, max_bytes, batches, n, &next, &gap, err);
        if (!rc && *n == 0) {
            /* from <= latest, yet nothing to read, or not from itself: the WAL no longer has
             * it. */
            if (!gap) {
                rocksdb_wal_iter_status(it, &rerr);
                ps_log(PS_LOG_INFO, "profile", "wal_gone", "from=%llu msg=\"%s\"",
                       (unsigned long long)from, rerr ? rerr : "not in the WAL");
                rocksdb_free(rerr);
                rerr = NULL;
            }
            *gone = 1;
        }
    }
    /* Keep the iterator for the next request only where one Next() leads on from it: it sits
     * on the last batch returned or past the end of a WAL that may still grow. */
    int keep = !rc && *n > 0 && !gap;
    if (keep) {
        rocksdb_wal_iter_status(it, &rerr);
        if (rerr) keep = 0; /* TryAgain: the WAL moved on to a new file */
        rocksdb_free(rerr);
    }
    if (keep)
        wal_iter_put(st, it, next);
    else
        rocksdb_wal_iter_destroy(it);
    db_leave(st);
    if (rc) {
        profsvc_batches_free(*batches, *n);
        *batches = NULL;
        *n = 0;
    }
    return rc;
}

/*
 * A batch from the primary is what one of its writes put in a rocksdb WriteBatch (layout in
 * rocksdb's db/write_batch.cc), and the primary only puts and deletes in the default column
 * family:
 *
 *   fixed64 sequence | fixed32 count | count records, each one of
 *     0x01 (put)     varint32 klen | key | varint32 vlen | value
 *     0x00 (delete)  varint32 klen | key
 *
 * A replica applies nothing else. RocksDB appends a batch to its WAL before it parses the
 * records into the memtable, so a malformed batch (an unknown record type, a wrong count, a
 * truncated record, an operation this database has no setup for) would fail only then, and
 * stop the database for good: every later write fails, and reopening it replays the batch from
 * the WAL and fails again.
 */

/* A varint32 as rocksdb writes it: at most 5 bytes, the last holding the top 4 bits. */
static int get_varint32(const uint8_t **p, const uint8_t *end, uint32_t *v)
{
    uint32_t x = 0;
    for (int i = 0; i < 5 && *p < end; i++) {
        uint8_t c = *(*p)++;
        if (i == 4 && c > 0x0f) return -1;
        x |= (uint32_t)(c & 0x7f) << (7 * i);
        if (!(c & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

static int skip_varstring(const uint8_t **p, const uint8_t *end)
{
    uint32_t n;
    if (get_varint32(p, end, &n) || n > (size_t)(end - *p)) return -1;
    *p += n;
    return 0;
}

int profsvc_batch_check(uint64_t seq, const void *data, size_t len, uint32_t *count, ps_err *err)
{
    const uint8_t *p = data, *end = p + len;
    if (len < 12)
        return ps_err_set(err, PS_ECORRUPT, "batch at %llu: %zu bytes", (unsigned long long)seq,
                          len);
    *count = get_u32le(p + 8);
    if (*count == 0 || *count > INT32_MAX)
        return ps_err_set(err, PS_ECORRUPT, "batch at %llu holds %d writes",
                          (unsigned long long)seq, (int)*count);
    p += 12;
    for (uint32_t i = 0; i < *count; i++) {
        if (p == end)
            return ps_err_set(err, PS_ECORRUPT, "batch at %llu: %u records of the %u it counts",
                              (unsigned long long)seq, i, *count);
        uint8_t type = *p++;
        if (type != 0x00 && type != 0x01)
            return ps_err_set(err, PS_ECORRUPT,
                              "batch at %llu: record %u is of type 0x%02x, not a put or a delete",
                              (unsigned long long)seq, i, type);
        if (skip_varstring(&p, end) || (type == 0x01 && skip_varstring(&p, end)))
            return ps_err_set(err, PS_ECORRUPT, "batch at %llu: record %u is truncated",
                              (unsigned long long)seq, i);
    }
    if (p != end)
        return ps_err_set(err, PS_ECORRUPT, "batch at %llu: %zu bytes after its %u records",
                          (unsigned long long)seq, (size_t)(end - p), *count);
    return 0;
}

int profsvc_store_apply(profsvc_store_t *st, uint64_t seq, const void *data, size_t len,
                        ps_err *err)
{
    int rc;
    uint32_t count = 0;
    if (len < 12)
        return ps_err_set(err, PS_ECORRUPT, "batch at %llu: %zu bytes", (unsigned long long)seq,
                          len);
    if ((rc = db_enter(st, err))) return rc;
    uint64_t latest = rocksdb_get_latest_sequence_number(st->db);
    if (seq != latest + 1) {
        db_leave(st);
        return ps_err_set(err, PS_EINVAL, "batch at %llu, this replica holds %llu",
                          (unsigned long long)seq, (unsigned long long)latest);
    }
    if ((rc = profsvc_batch_check(seq, data, len, &count, err))) {
        db_leave(st);
        return rc;
    }
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create_from(data, len);
    char *rerr = NULL;
    rocksdb_write(st->db, st->wopts, wb, &rerr);
    if (rerr) rc = rocks_fail(err, &rerr, "applying a batch");
    uint64_t now = rocksdb_get_latest_sequence_number(st->db);
    if (!rc && now != seq + (uint64_t)count - 1)
        rc = ps_err_set(err, PS_ECORRUPT, "batch at %llu of %u writes left the replica at %llu",
                        (unsigned long long)seq, count, (unsigned long long)now);
    rocksdb_writebatch_destroy(wb);
    db_leave(st);
    return rc;
}

/**************************************************************************
 * Checkpoints (primary)
 */

/* Remove sessions idle for PROFSVC_CKPT_IDLE_S. Caller holds ck_mu. */
static void ckpt_gc(profsvc_store_t *st)
{
    double now = mono_s();
    for (int i = 0; i < MAX_SESSIONS; i++) {
        ckpt_session *s = &st->sessions[i];
        if (!s->id || now - s->last_used < PROFSVC_CKPT_IDLE_S) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%llu", st->ckdir, (unsigned long long)s->id);
        ps_log(PS_LOG_WARN, "profile", "checkpoint_abandoned", "session=%llu idle_s=%.0f",
               (unsigned long long)s->id, now - s->last_used);
        profsvc_rmtree(path);
        s->id = 0;
    }
}

static ckpt_session *ckpt_find(profsvc_store_t *st, uint64_t id)
{
    for (int i = 0; id && i < MAX_SESSIONS; i++)
        if (st->sessions[i].id == id) return &st->sessions[i];
    return NULL;
}

/* The regular files of dir with their sizes. */
static int list_files(const char *dir, profsvc_file **files, size_t *n, ps_err *err)
{
    DIR *d = opendir(dir);
    size_t cap = 0;
    int rc = 0;
    *files = NULL;
    *n = 0;
    if (!d) return ps_err_set(err, PS_EIO, "%s: %s", dir, strerror(errno));
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        struct stat sb;
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (fstatat(dirfd(d), e->d_name, &sb, 0)) {
            rc = ps_err_set(err, PS_EIO, "%s/%s: %s", dir, e->d_name, strerror(errno));
        } else if (!S_ISREG(sb.st_mode) || strlen(e->d_name) >= sizeof((*files)->name)) {
            ps_log(PS_LOG_WARN, "profile", "checkpoint_skip", "dir=%s name=%s", dir, e->d_name);
        } else if (*n >= PS_WIRE_MAX_BATCHES) {
            rc = ps_err_set(err, PS_ETOOBIG, "%s: more than %d files", dir, PS_WIRE_MAX_BATCHES);
        } else {
            if (*n == cap) {
                cap = cap ? 2 * cap : 32;
                profsvc_file *p = realloc(*files, cap * sizeof *p);
                if (!p) {
                    rc = ps_err_set(err, PS_ENOMEM, "out of memory listing %s", dir);
                    break;
                }
                *files = p;
            }
            snprintf((*files)[*n].name, sizeof((*files)[*n].name), "%s", e->d_name);
            (*files)[(*n)++].size = (uint64_t)sb.st_size;
        }
    }
    closedir(d);
    if (rc) {
        free(*files);
        *files = NULL;
        *n = 0;
    }
    return rc;
}

int profsvc_store_ckpt_begin(profsvc_store_t *st, uint64_t *session, uint64_t *seq,
                             profsvc_file **files, size_t *nfiles, ps_err *err)
{
    int rc;
    char path[4096];
    *files = NULL;
    *nfiles = 0;
    if (st->cfg.replica) return ps_err_set(err, PS_EINVAL, "checkpoint: this node is a replica");
    pthread_mutex_lock(&st->ck_mu);
    ckpt_gc(st);
    ckpt_session *s = NULL, *lru = NULL;
    for (int i = 0; !s && i < MAX_SESSIONS; i++) {
        ckpt_session *c = &st->sessions[i];
        if (!c->id)
            s = c;
        else if (!lru || c->last_used < lru->last_used)
            lru = c;
    }
    if (!s && lru && mono_s() - lru->last_used >= CKPT_EVICT_S) {
        /* every slot taken (by replicas that died, or a peer opening sessions it never
         * reads): the longest idle one, quiet for CKPT_EVICT_S, makes room */
        snprintf(path, sizeof path, "%s/%llu", st->ckdir, (unsigned long long)lru->id);
        ps_log(PS_LOG_WARN, "profile", "checkpoint_evicted", "session=%llu idle_s=%.0f",
               (unsigned long long)lru->id, mono_s() - lru->last_used);
        profsvc_rmtree(path);
        lru->id = 0;
        s = lru;
    }
    if (!s) {
        pthread_mutex_unlock(&st->ck_mu);
        return ps_err_set(err, PS_EUNAVAIL,
                          "checkpoint: %d sessions open already, all in use in the last %d s",
                          MAX_SESSIONS, CKPT_EVICT_S);
    }
    /* An unguessable id (64 random bits): only the replica that began the session can read or
     * close it; and unlike any earlier run's, so a replica still downloading from a primary that
     * restarted gets not_found, never another checkpoint's files under the same id. */
    uint64_t id = 0;
    while (!id || ckpt_find(st, id)) {
        if (ps_random_bytes(&id, sizeof id)) {
            pthread_mutex_unlock(&st->ck_mu);
            return ps_err_set(err, PS_EINTERNAL, "checkpoint: no random bytes: %s",
                              strerror(errno));
        }
    }
    snprintf(path, sizeof path, "%s/%llu", st->ckdir, (unsigned long long)id);
    if (mkdir(st->ckdir, 0755) && errno != EEXIST) {
        rc = ps_err_set(err, PS_EIO, "%s: %s", st->ckdir, strerror(errno));
    } else if (!(rc = db_enter(st, err))) {
        char *rerr = NULL;
        *seq = rocksdb_get_latest_sequence_number(st->db);
        rocksdb_checkpoint_t *cp = rocksdb_checkpoint_object_create(st->db, &rerr);
        if (cp) rocksdb_checkpoint_create(cp, path, 0, &rerr);
        if (rerr) rc = rocks_fail(err, &rerr, "checkpoint");
        if (cp) rocksdb_checkpoint_object_destroy(cp);
        db_leave(st);
    }
    if (!rc) rc = list_files(path, files, nfiles, err);
    if (!rc) {
        s->id = id;
        s->last_used = mono_s();
        *session = id;
    } else {
        profsvc_rmtree(path);
    }
    pthread_mutex_unlock(&st->ck_mu);
    return rc;
}

int profsvc_store_ckpt_read(profsvc_store_t *st, uint64_t session, const char *file,
                            uint64_t offset, void *buf, size_t max, size_t *n, ps_err *err)
{
    char path[4096];
    *n = 0;
    pthread_mutex_lock(&st->ck_mu);
    ckpt_session *s = ckpt_find(st, session);
    if (s) s->last_used = mono_s();
    pthread_mutex_unlock(&st->ck_mu);
    if (!s)
        return ps_err_set(err, PS_ENOTFOUND, "checkpoint.session: %llu is not open",
                          (unsigned long long)session);
    snprintf(path, sizeof path, "%s/%llu/%s", st->ckdir, (unsigned long long)session, file);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ps_err_set(err, errno == ENOENT ? PS_ENOTFOUND : PS_EIO, "checkpoint.file %s: %s",
                          file, strerror(errno));
    ssize_t r;
    do r = pread(fd, buf, max, (off_t)offset);
    while (r < 0 && errno == EINTR);
    int e = errno;
    close(fd);
    if (r < 0) return ps_err_set(err, PS_EIO, "checkpoint.file %s: %s", file, strerror(e));
    *n = (size_t)r;
    return 0;
}

int profsvc_store_ckpt_done(profsvc_store_t *st, uint64_t session, ps_err *err)
{
    char path[4096];
    pthread_mutex_lock(&st->ck_mu);
    ckpt_session *s = ckpt_find(st, session);
    if (s) s->id = 0;
    pthread_mutex_unlock(&st->ck_mu);
    if (!s)
        return ps_err_set(err, PS_ENOTFOUND, "checkpoint.session: %llu is not open",
                          (unsigned long long)session);
    snprintf(path, sizeof path, "%s/%llu", st->ckdir, (unsigned long long)session);
    if (profsvc_rmtree(path))
        ps_log(PS_LOG_WARN, "profile", "remove_failed", "dir=%s msg=\"%s\"", path, strerror(errno));
    return 0;
}

int profsvc_store_checkpoint(profsvc_store_t *st, const char *path, uint64_t *seq, size_t *files,
                             uint64_t *bytes, ps_err *err)
{
    struct stat sb;
    int rc;
    *files = 0;
    *bytes = 0;
    if (!lstat(path, &sb)) return ps_err_set(err, PS_EEXIST, "%s exists already", path);
    if ((rc = db_enter(st, err))) return rc;
    char *rerr = NULL;
    *seq = rocksdb_get_latest_sequence_number(st->db);
    rocksdb_checkpoint_t *cp = rocksdb_checkpoint_object_create(st->db, &rerr);
    if (cp) rocksdb_checkpoint_create(cp, path, 0, &rerr);
    if (rerr) rc = rocks_fail(err, &rerr, "checkpoint");
    if (cp) rocksdb_checkpoint_object_destroy(cp);
    db_leave(st);
    profsvc_file *list = NULL;
    if (!rc && !(rc = list_files(path, &list, files, err)))
        for (size_t i = 0; i < *files; i++) *bytes += list[i].size;
    free(list);
    return rc;
}
