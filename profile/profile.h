/*
 * profile.h — the profile service daemon's internal header, one section per .c file.
 *
 * The profile service (DESIGN §2) keeps user style profiles and the click log in RocksDB. One
 * primary takes writes (clicks from the broker, load_profile from the builder); replicas tail
 * the primary's write-ahead log over ZeroMQ and serve reads.
 *
 *   peers ──tcp──▶ ROUTER front ──▶ main loop ──inproc──▶ worker 0..W-1 (DEALER, profsvc_handle)
 *                                                           │ read lock around every DB access
 *   replica only: tail thread (own DEALER) ──wal / checkpoint──▶ primary   → profsvc_store_apply
 *                                                                          → profsvc_store_swap
 *   operators / builder ──HTTP──▶ admin thread (admin.c, ps/admin.h): health, metrics,
 *                                 load-profiles and checkpoint (bearer token)
 */
#ifndef PROFSVC_H
#define PROFSVC_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "ps/admin.h"
#include "ps/err.h"
#include "ps/profile.h"

/* ---- store.c: RocksDB, profiles, the click log, WAL and checkpoints (no ZeroMQ) ---------- */

typedef struct profsvc_store_cfg {
    const char *dir;          /* RocksDB directory, created if missing */
    int replica;              /* 1: takes only the primary's batches (profsvc_store_apply) */
    int sync;                 /* 1: a write returns once its WAL record is synced */
    uint32_t history;         /* clicks kept per user for recomputing centroids */
    uint32_t kmax;            /* centroids per user, 1..PS_PROFILE_KMAX */
    uint64_t wal_ttl_s;       /* how long obsolete WAL files stay for replicas */
    uint64_t wal_size_mb;     /* ... and up to how much of them */
    uint64_t write_buffer_kb; /* memtable size: a smaller one flushes (and drops WAL) sooner */
    uint32_t click_ids;       /* click ids remembered per user: those of its last click_ids
                                 clicks (>= 1) */
} profsvc_store_cfg;

typedef struct profsvc_store profsvc_store_t;

/* Open (creating) the database at cfg->dir. A primary also removes checkpoint directories
 * left by an earlier run (DIR.checkpoints/); a replica removes a half-done bootstrap
 * (DIR.incoming/) and finishes an interrupted swap. cfg's strings are copied. Errors:
 * PS_ESTORE (RocksDB would not open), PS_EIO, PS_ENOMEM. Caller owns the result. */
profsvc_store_t *profsvc_store_open(const profsvc_store_cfg *cfg, ps_err *err);
void profsvc_store_close(profsvc_store_t *st);

/* The latest sequence number the database holds (0 when empty or closed mid-swap). */
uint64_t profsvc_store_seq(profsvc_store_t *st);

/* What a write returns (click_reply). */
typedef struct profsvc_write_result {
    uint64_t seq;     /* latest sequence number once the write is durable */
    uint32_t history; /* entries in the user's bounded history now */
    uint32_t k;       /* the user's centroids now */
    int merged;       /* load: 1 when the centroids were recomputed over the merged history */
    int duplicate;    /* click: its click id was stored before; nothing was written */
} profsvc_write_result;

/* Record a click of `user` (1..PS_WIRE_MAX_USER bytes, no NUL) on sticker `sticker` for query
 * (qlen bytes), with the sticker's embedding emb[0..dim): appends to the click log and the
 * bounded history, recomputes the user's centroids, all in one (synced, per cfg->sync) write.
 * The first click or load fixes the service's embedding dimension. click_id (NULL or "" =
 * none; else ps_wire_check_click_id) is remembered in the same write; a click whose id is
 * within the user's last cfg->click_ids clicks writes nothing and answers out->duplicate = 1
 * with the user's history and centroids as they are and the latest seq (see "Idempotent
 * clicks" in store.c). Errors: PS_EINVAL (a replica, a dim other than the service's, a bad
 * click id), PS_ECONFLICT (the click id names a click on another sticker), PS_ECORRUPT,
 * PS_ESTORE, PS_EUNAVAIL, PS_ENOMEM. */
int profsvc_store_click(profsvc_store_t *st, const char *user, uint64_t sticker, const char *query,
                        size_t qlen, const float *emb, size_t dim, const char *click_id,
                        profsvc_write_result *out, ps_err *err);

/* Merge a load into the user's profile (never a wipe: see "Loads merge" in store.c). The
 * stored history becomes the union of what is held and ids[0..n) / embs (n × prof->dim,
 * oldest first), deduplicated by sticker id, held entries (online clicks) staying the newest,
 * at most cfg->history; the centroids are prof's exactly as given (k 0..KMAX with their radii)
 * when that union is just the load, else recomputed over it as a click does. The click log is
 * untouched. One synced write; loading the same thing twice stores the same bytes as once.
 * OUT out->merged: 1 when the centroids were recomputed. Errors as profsvc_store_click. */
int profsvc_store_load(profsvc_store_t *st, const char *user, const ps_profile *prof,
                       const uint64_t *ids, const float *embs, size_t n, profsvc_write_result *out,
                       ps_err *err);

/* The service's embedding dimension, 0 until the first click or load fixes it. */
uint32_t profsvc_store_dim(profsvc_store_t *st);

/* Make a checkpoint of the database (RocksDB's, consistent, openable with RocksDB) in `path`,
 * which must not exist yet; its parent must. OUT *seq: the latest sequence number just before
 * it was taken (the checkpoint holds at least this), *files / *bytes: what it holds. Works on
 * a primary and on a replica. Errors: PS_EEXIST (path exists), PS_ESTORE, PS_EIO. */
int profsvc_store_checkpoint(profsvc_store_t *st, const char *path, uint64_t *seq, size_t *files,
                             uint64_t *bytes, ps_err *err);

/* The user's profile. OUT *found (0: no profile, prof->k == 0), prof (free with
 * ps_profile_clear), *seq the latest sequence number. Errors: PS_ECORRUPT, PS_ESTORE,
 * PS_EUNAVAIL, PS_ENOMEM. */
int profsvc_store_profile(profsvc_store_t *st, const char *user, int *found, ps_profile *prof,
                          uint64_t *seq, ps_err *err);

/* The sticker ids of the user's click log, oldest first, at most cap. OUT *ids: malloc'd
 * (caller frees; NULL when *n == 0). Errors: PS_ETOOBIG (more than cap), PS_ECORRUPT,
 * PS_EUNAVAIL, PS_ENOMEM. */
int profsvc_store_clicks(profsvc_store_t *st, const char *user, size_t cap, uint64_t **ids,
                         size_t *n, ps_err *err);

/* A 64-bit hash over every key and value in key order from one snapshot, the number of keys
 * and the sequence number of that snapshot. Errors: PS_ESTORE, PS_EUNAVAIL. */
int profsvc_store_checksum(profsvc_store_t *st, uint64_t *sum, uint64_t *keys, uint64_t *seq,
                           ps_err *err);

/* One write batch of the WAL. */
typedef struct profsvc_batch {
    uint64_t seq; /* sequence number of its first write */
    uint8_t *data;
    size_t len;
} profsvc_batch;

/* Primary: the batches from sequence number `from` on (GetUpdatesSince), consecutive, until
 * their data reaches max_bytes (at least one batch is returned). OUT *batches (free with
 * profsvc_batches_free), *n, *gone (1: `from` is no longer in the WAL; no batches),
 * *latest. from > latest gives no batches. Errors: PS_ESTORE, PS_EUNAVAIL, PS_ENOMEM. */
int profsvc_store_wal(profsvc_store_t *st, uint64_t from, size_t max_bytes, profsvc_batch **batches,
                      size_t *n, int *gone, uint64_t *latest, ps_err *err);
void profsvc_batches_free(profsvc_batch *b, size_t n);

/* Replica: write one of the primary's batches, which must start at latest + 1, and check
 * that the database then holds seq + count − 1 as its latest. Nothing is written unless the
 * batch passes profsvc_batch_check. Errors: PS_EINVAL (out of order: the caller must
 * bootstrap), PS_ECORRUPT (a batch that does not parse or lands on other sequence numbers),
 * PS_ESTORE, PS_EUNAVAIL. */
int profsvc_store_apply(profsvc_store_t *st, uint64_t seq, const void *data, size_t len,
                        ps_err *err);

/* Check the `len` bytes of the batch at `seq` before a replica writes them: a WriteBatch of
 * exactly its count of puts and deletes in the default column family, nothing else and
 * nothing after (layout in store.c). OUT *count: its writes. Errors: PS_ECORRUPT naming the
 * record at fault. */
int profsvc_batch_check(uint64_t seq, const void *data, size_t len, uint32_t *count, ps_err *err);

/* A checkpoint file. */
typedef struct profsvc_file {
    char name[256];
    uint64_t size;
} profsvc_file;

#define PROFSVC_CKPT_IDLE_S 600 /* a session untouched this long is abandoned and removed */

/* Primary: make a checkpoint in DIR.checkpoints/<session>. OUT *session (64 random bits, never
 * 0: only who began a session can read or close it), *seq (the latest sequence number just
 * before it was taken: the checkpoint holds at least this), *files / *nfiles (malloc'd; caller
 * frees). Also removes sessions idle for PROFSVC_CKPT_IDLE_S; with all 16 slots open, the one
 * idle longest makes room once it has been idle 30 s. Errors: PS_EUNAVAIL (16 sessions open
 * and in use), PS_ESTORE, PS_EIO, PS_ENOMEM. */
int profsvc_store_ckpt_begin(profsvc_store_t *st, uint64_t *session, uint64_t *seq,
                             profsvc_file **files, size_t *nfiles, ps_err *err);

/* Read up to max bytes of `file` of the session from offset into buf. OUT *n (0 at the end).
 * Errors: PS_ENOTFOUND (no such session or file), PS_EIO. */
int profsvc_store_ckpt_read(profsvc_store_t *st, uint64_t session, const char *file,
                            uint64_t offset, void *buf, size_t max, size_t *n, ps_err *err);

/* Drop the session and its directory. Errors: PS_ENOTFOUND. */
int profsvc_store_ckpt_done(profsvc_store_t *st, uint64_t session, ps_err *err);

/* Replica: where a bootstrap downloads a checkpoint (DIR.incoming; borrowed, valid until
 * profsvc_store_close). */
const char *profsvc_store_incoming(const profsvc_store_t *st);

/* Replica: replace the database with the checkpoint in DIR.incoming under the write lock
 * (serving threads wait): close, rename DIR → DIR.old and DIR.incoming → DIR, reopen, remove
 * DIR.old. Errors: PS_EIO, PS_ESTORE (the store then answers PS_EUNAVAIL until a later swap
 * succeeds). */
int profsvc_store_swap(profsvc_store_t *st, ps_err *err);

/* Remove a directory tree (no error if it does not exist). Returns 0 or -1 with errno. */
int profsvc_rmtree(const char *path);

/* The values of the store's records (layout in store.c), checked and decoded; the store's
 * readers go through these, and tests/fuzz feeds them directly. Each returns 0, or PS_ECORRUPT
 * naming the user (or the database directory) when the value has the wrong size. */
/* H: `tail` = bytes of the key after 'H' user 0x00 (the u64BE seq: 8); the value u64LE
 * sticker_id | f32LE embedding[dim]. OUT *id, emb[0..dim). */
int profsvc_rec_history(const char *user, size_t tail, const uint8_t *v, size_t vl, size_t dim,
                        uint64_t *id, float *emb, ps_err *err);
/* L: u64LE sticker_id | query bytes. OUT *id; *query (borrowed from v) of *qlen bytes. */
int profsvc_rec_click(const char *user, const uint8_t *v, size_t vl, uint64_t *id,
                      const uint8_t **query, size_t *qlen, ps_err *err);
/* N: u64LE, the user's next seq. */
int profsvc_rec_next(const char *user, const uint8_t *v, size_t vl, uint64_t *next, ps_err *err);
/* Mdim: u32LE, 1..PS_WIRE_MAX_DIM. */
int profsvc_rec_dim(const char *dir, const uint8_t *v, size_t vl, uint32_t *dim, ps_err *err);
/* I (the key of click id `id`): u64LE seq | u64LE sticker_id. OUT *seq, *sticker. */
int profsvc_rec_click_id(const char *user, const char *id, const uint8_t *v, size_t vl,
                         uint64_t *seq, uint64_t *sticker, ps_err *err);
/* J: `tail` (tl bytes) = the key after 'J' user 0x00, the u64BE seq; the value a click id of
 * 1..PS_WIRE_MAX_CLICK_ID bytes (vl; its bytes are not checked: they only name an I key to
 * delete). OUT *seq. */
int profsvc_rec_window(const char *user, const uint8_t *tail, size_t tl, size_t vl, uint64_t *seq,
                       ps_err *err);

/* ---- handler.c: one request frame in, one reply frame out --------------------------------- */

/* What /metrics shows; updated from every thread. */
typedef struct profsvc_stats {
    _Atomic uint64_t clicks;       /* clicks acknowledged */
    _Atomic uint64_t duplicates;   /* clicks answered as duplicates of a stored click id */
    _Atomic uint64_t loads;        /* user loads applied (ZeroMQ load_profile and admin) */
    _Atomic uint64_t checkpoints;  /* checkpoints made (for replicas, /admin/checkpoint); on a
                                      replica also the bootstraps it took */
    _Atomic uint64_t primary_seq;  /* replica: the primary's latest seq in its last wal reply */
    _Atomic uint64_t caught_up_ns; /* replica: CLOCK_MONOTONIC ns when it last held primary_seq
                                      (start time until then) */
    ps_hist click_seconds;         /* a click's store write, synced */
} profsvc_stats;

typedef struct profsvc_ctx {
    profsvc_store_t *store;      /* borrowed */
    int replica;                 /* refuse writes, wal and checkpoint */
    size_t max_frame;            /* request frame cap (bytes) */
    atomic_int ready;            /* primary: 1 once open; replica: once caught up at least once */
    const char *checkpoint_root; /* /admin/checkpoint writes only below it (NULL: refused) */
    profsvc_stats stats;
} profsvc_ctx;

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t profsvc_now_ns(void);

/* Answer the `len` bytes at req. OUT *reply: a malloc'd frame of *reply_len bytes (caller
 * frees): the reply, or an Error envelope for any request that fails (request_id taken with
 * ps_wire_peek_request_id when the frame does not decode). Returns 0, or PS_ENOMEM when not
 * even an Error could be built. Thread-safe. */
int profsvc_handle(profsvc_ctx *ctx, const void *req, size_t len, uint8_t **reply,
                   size_t *reply_len);

/* One user's load, taken out of a LoadProfileRequest (ps_wire_decode checked its caps). */
typedef struct profsvc_load {
    const char *user; /* borrowed from the request: valid while it is */
    ps_profile prof;  /* the centroids as given; dim = the load's embedding dimension */
    uint64_t *ids;    /* n history entries, oldest first */
    float *embs;      /* n × prof.dim */
    size_t n;
} profsvc_load;

struct Persrv__LoadProfileRequest;

/* Check l against ctx (a replica refuses; every embedding of the service's dimension, once
 * fixed) and copy it into *ld (free with profsvc_load_clear; nothing to free on error).
 * Errors: PS_EINVAL naming the field, PS_ENOMEM. */
int profsvc_load_parse(profsvc_ctx *ctx, const struct Persrv__LoadProfileRequest *l,
                       profsvc_load *ld, ps_err *err);
void profsvc_load_clear(profsvc_load *ld);

/* Merge ld into the store (profsvc_store_load), count and log it. */
int profsvc_load_apply(profsvc_ctx *ctx, const profsvc_load *ld, uint64_t request_id,
                       profsvc_write_result *r, ps_err *err);

/* ---- admin.c: the admin HTTP port (ps/admin.h) --------------------------------------------- */

typedef struct profsvc_admin profsvc_admin_t;

/* Serve GET /healthz, GET /metrics, POST /admin/checkpoint?dir= and POST /admin/load-profiles
 * for ctx on `listen` (token NULL: admin routes answer 403; max_body caps a request body; limits:
 * connections and request time). ctx must outlive profsvc_admin_stop. Errors as ps_admin_start.
 * Caller owns the result. */
profsvc_admin_t *profsvc_admin_start(profsvc_ctx *ctx, const char *listen, const char *token,
                                     size_t max_body, ps_admin_limits limits, ps_err *err);
/* The bound "host:port" (borrowed, valid until profsvc_admin_stop). */
const char *profsvc_admin_address(const profsvc_admin_t *a);
void profsvc_admin_stop(profsvc_admin_t *a);

/* ---- server.c: sockets, worker threads, the proxy loop ------------------------------------ */

typedef struct profsvc_server_cfg {
    const char *listen;           /* ZeroMQ endpoint of the ROUTER front */
    uint32_t workers;             /* worker threads */
    uint32_t max_inflight;        /* requests handed to workers and not yet answered */
    uint32_t drain_ms;            /* linger for replies still queued when stopping */
    uint32_t hwm;                 /* ZMQ_SNDHWM / ZMQ_RCVHWM of the front socket */
    const char *ready_file;       /* written once bound: line 1 the endpoint, line 2 the admin
                                     address when there is one (NULL: no file) */
    const char *admin;            /* the admin port's "host:port" (NULL: none) */
    const struct ps_curve *curve; /* CURVE on the port (NULL: plain) */
} profsvc_server_cfg;

/* Bind, start the workers, write the ready file and serve until a byte arrives on stop_fd.
 * Then wait for the in-flight requests, join the workers and close every socket. Returns 0
 * on a clean stop, a PS_E* code (err says why) when the server could not start. */
int profsvc_serve(profsvc_ctx *ctx, const profsvc_server_cfg *cfg, int stop_fd, ps_err *err);

/* ---- replica.c: the tail thread ------------------------------------------------------------ */

typedef struct profsvc_replica_cfg {
    const char *primary;          /* the primary's ZeroMQ endpoint */
    uint32_t poll_ms;             /* pause after a reply without batches */
    size_t max_frame;             /* reply frame cap (ZMQ_MAXMSGSIZE) */
    const struct ps_curve *curve; /* CURVE client of the primary (NULL: plain) */
} profsvc_replica_cfg;

typedef struct profsvc_replica profsvc_replica_t;

/* Start the tail thread: it applies the primary's WAL to ctx->store (bootstrapping from a
 * checkpoint when the WAL it needs is gone) and sets ctx->ready once caught up. ctx and cfg's
 * strings must outlive profsvc_replica_stop. Errors: PS_EINTERNAL, PS_ENOMEM. */
profsvc_replica_t *profsvc_replica_start(profsvc_ctx *ctx, const profsvc_replica_cfg *cfg,
                                         ps_err *err);

/* Stop the thread (within ~100 ms plus a write in progress), close its socket, free r. NULL
 * is ignored. */
void profsvc_replica_stop(profsvc_replica_t *r);

#endif
