/*
 * shard.h — the shard daemon's internal header, one section per .c file.
 *
 * The shard holds one slice of the stickers (an index directory written by
 * `builder build --shards N`), loaded read-only into memory, and answers SearchRequest,
 * GetStickerRequest and HealthRequest envelopes (proto/persrv.proto) over ZeroMQ.
 *
 *   peers (DEALER or REQ) ──tcp──▶ ROUTER front ──▶ main loop ──inproc──▶ DEALER back
 *                                                      │                   │ round robin
 *                                  HealthRequest answered here   worker 0..W-1 (DEALER, own
 *                                  (shard_handle_inline)                         ps_searcher)
 */
#ifndef SHARD_H
#define SHARD_H

#include <stddef.h>
#include <stdint.h>

#include <pthread.h>
#include <time.h>

#include "ps/admin.h"
#include "ps/rcache.h"
#include "ps/search.h"
#include "ps/snapshot.h"
#include "ps/store.h"

/* ---- versions.c: the snapshot versions held, the data directory, staging ------------------- */

#define SHARD_MAX_HELD 2 /* versions loaded at once: the active one and one more */

typedef struct shard_version shard_version;

typedef struct shard_versions_cfg {
    const char *data_dir;    /* --data: where snapshots are staged and installed (NULL: serve
                                --index in place, no staging) */
    const char *index;       /* --index: the build directory to start from (NULL: data only) */
    uint32_t shard, nshards; /* this shard's configuration, checked against every manifest */
    const char *fingerprint; /* --fingerprint: the build expected at start (NULL: any) */
} shard_versions_cfg;

/* An upload in progress (touched by the admin thread only). */
typedef struct shard_staging {
    int active;
    ps_snapshot snap;
    uint64_t *received; /* bytes received per file of snap */
    uint64_t bytes;     /* in all */
    time_t started;
} shard_staging;

typedef struct shard_versions {
    pthread_mutex_t lock; /* held[], nheld, active */
    shard_version *held[SHARD_MAX_HELD];
    size_t nheld;
    uint64_t active;
    char *data_dir;
    uint32_t shard, nshards;
    char fingerprint[17];
    shard_staging staging;
    ps_rcache_t *rcache; /* borrowed, NULL: none; a version's entries are dropped when it stops
                            being active and when it is retired */
} shard_versions_t;

typedef struct shard_version_info {
    uint64_t version;
    char fingerprint[17];
    uint64_t stickers;
    int active;
} shard_version_info;

/* Open the data directory (discarding unfinished uploads, loading every installed version,
 * the pointer's active) or, on a first start, import --index into it; without a data
 * directory serve --index in place. Every manifest is checked against shard, shards and the
 * expected fingerprint. Errors name the directory and the mismatch: PS_EINVAL (wrong slice,
 * shard count or build), PS_ENOTFOUND, PS_ECORRUPT, PS_EIO, PS_ESTORE, PS_ENOMEM.
 * Caller owns the result (shard_versions_free). */
shard_versions_t *shard_versions_open(const shard_versions_cfg *cfg, ps_err *err);
void shard_versions_free(shard_versions_t *vs);

/* `s` against this shard's configuration; `what` names it in the error (PS_EINVAL). */
int shard_check_manifest(const ps_snapshot *s, uint32_t shard, uint32_t nshards,
                         const char *want_fp, const char *what, ps_err *err);

/* The version `version` (0: the active one) with a reference the caller gives back with
 * shard_versions_release; NULL when it is not held. Any thread. */
shard_version *shard_versions_acquire(shard_versions_t *vs, uint64_t version);
void shard_versions_release(shard_versions_t *vs, shard_version *v);
/* Versions held into out[0..cap) (returns how many) and the active one. Any thread. */
size_t shard_versions_list(shard_versions_t *vs, shard_version_info *out, size_t cap,
                           uint64_t *active);

/* A searcher over v's index, borrowed until shard_version_return (v must be acquired). */
ps_searcher_t *shard_version_searcher(shard_version *v, ps_err *err);
void shard_version_return(shard_version *v, ps_searcher_t *s);
uint64_t shard_version_number(const shard_version *v);
const ps_index_t *shard_version_index(const shard_version *v);
ps_store_t *shard_version_store(const shard_version *v);

/* Admin operations, from the admin thread only (see the README's push section). stage_begin
 * starts an upload of `version` described by the manifest JSON (replacing an unfinished one);
 * stage_write appends a chunk at `offset` (which must equal the bytes received so far);
 * prepare checks sizes and crc32s, fsyncs, installs and loads (idempotent once loaded; on
 * failure the upload is discarded); activate writes the pointer; retire frees a version no
 * longer active once no request uses it. */
int shard_stage_begin(shard_versions_t *vs, uint64_t version, const char *manifest, size_t len,
                      ps_err *err);
int shard_stage_write(shard_versions_t *vs, uint64_t version, const char *name, uint64_t offset,
                      const void *data, size_t len, uint64_t *received, ps_err *err);
void shard_staging_discard(shard_versions_t *vs);
int shard_prepare(shard_versions_t *vs, uint64_t version, uint64_t *stickers, ps_err *err);
int shard_activate(shard_versions_t *vs, uint64_t version, uint64_t *previous, ps_err *err);
int shard_retire(shard_versions_t *vs, uint64_t version, ps_err *err);

/* ---- handler.c: one request frame in, one reply frame out (no ZeroMQ here) --------------- */

/* Counters for /metrics, updated with atomics by every worker. */
typedef struct shard_metrics {
    _Atomic uint64_t searches, search_errors, stale_version, postings_visited, stickers;
    _Atomic uint64_t health_inline; /* HealthRequests answered by the server loop itself */
    ps_hist latency;                /* search handling, seconds */
} shard_metrics;

/* What every worker shares. */
typedef struct shard_ctx {
    shard_versions_t *versions; /* borrowed */
    uint32_t shard;             /* this shard's number, echoed in replies */
    uint32_t nshards;           /* shards in the cluster (health replies) */
    size_t max_frame;           /* request frame cap (bytes) */
    shard_metrics *metrics;     /* borrowed */
    ps_rcache_t *rcache;        /* the recall cache shared by the workers (borrowed), NULL: off */
} shard_ctx;

typedef struct shard_handler shard_handler_t;

/* Per-worker state: scratch buffers reused across requests (searchers come from the version).
 * Caller owns the result (shard_handler_free); NULL on failure with err set. */
shard_handler_t *shard_handler_new(const shard_ctx *ctx, ps_err *err);
void shard_handler_free(shard_handler_t *h);

/* Answer the `len` bytes at req. OUT *reply: a malloc'd frame of *reply_len bytes (caller
 * frees): the reply, or an Error envelope for any request that fails (request_id 0 when the
 * frame cannot be decoded). Returns 0, or PS_ENOMEM when not even an Error could be built. */
int shard_handle(shard_handler_t *h, const void *req, size_t len, uint8_t **reply,
                 size_t *reply_len);

/* Frames longer than this are never HealthRequests (an envelope with an empty body, its ids,
 * a stamp and at most an API key of PS_WIRE_MAX_API_KEY bytes): shard_handle_inline leaves
 * them to the workers without decoding them. */
#define SHARD_INLINE_MAX 512

/* The server loop's inline answer (ps_zinline_fn of ps/zserver.h): a HealthRequest is answered
 * at once on the loop's thread (1, *reply as for shard_handle), so the broker's probes of a
 * shard whose workers are all busy searching are not queued behind the searches; anything
 * else, or a frame that does not decode, is left to the workers (0). h is the loop's own
 * handler; the health answer reads only the versions' table (under its lock, held briefly by
 * any thread) and ctx's constants. */
int shard_handle_inline(shard_handler_t *h, const void *req, size_t len, uint8_t **reply,
                        size_t *reply_len);

/* ---- server.c: sockets, worker threads, the proxy loop ----------------------------------- */

typedef struct shard_server_cfg {
    const char *listen;           /* ZeroMQ endpoint of the ROUTER front */
    uint32_t workers;             /* worker threads; 0: the server loop searches */
    uint32_t max_inflight;        /* requests handed to workers (or queued on the loop) */
    uint32_t drain_ms;            /* linger for replies still queued when stopping */
    uint32_t hwm;                 /* ZMQ_SNDHWM / ZMQ_RCVHWM of the front socket */
    const char *ready_file;       /* written once bound (NULL: none) */
    const char *admin;            /* the admin port's address: the ready file's second line */
    const struct ps_curve *curve; /* CURVE on the port (NULL: plain) */
} shard_server_cfg;

/* Bind, start the workers, write the ready file and serve until a byte arrives on stop_fd
 * (the signal handler's self-pipe). Then stop reading requests, wait for the in-flight ones,
 * join the workers and close every socket. Returns 0 on a clean stop, a PS_E* code (err says
 * why) when the server could not start. */
int shard_serve(const shard_ctx *ctx, const shard_server_cfg *cfg, int stop_fd, ps_err *err);

/* ---- admin.c: the shard's admin HTTP port ------------------------------------------------- */

/* Start the admin port (ps/admin.h) with the shard's routes: /healthz, /metrics (with the
 * recall cache's hits, misses, evictions and bytes), and
 * /admin/stage, /admin/stage/V/FILE, /admin/prepare, /admin/abort, /admin/activate,
 * /admin/retire, with the admin-max-connections and admin-request-timeout-ms limits. ctx must
 * outlive it. */
ps_admin_t *shard_admin_start(const shard_ctx *ctx, const char *listen, const char *token,
                              ps_admin_limits limits, ps_err *err);

#endif
