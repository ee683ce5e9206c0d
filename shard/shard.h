/*
 * shard.h — the shard daemon's internal header, one section per .c file.
 *
 * The shard holds one slice of the stickers (an index directory written by
 * `builder build --shards N`), loaded read-only into memory, and answers SearchRequest,
 * GetStickerRequest and HealthRequest envelopes (proto/persrv.proto) over ZeroMQ.
 *
 *   peers (DEALER or REQ) ──tcp──▶ ROUTER front ──▶ main loop ──inproc──▶ DEALER back
 *                                                                          │ round robin
 *                                                   worker 0..W-1 (DEALER, own ps_searcher)
 */
#ifndef SHARD_H
#define SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "ps/search.h"
#include "ps/store.h"

/* ---- handler.c: one request frame in, one reply frame out (no ZeroMQ here) --------------- */

/* What every worker shares (read-only while serving). */
typedef struct shard_ctx {
    ps_store_t *store;    /* borrowed */
    const ps_index_t *ix; /* ps_store_index(store) */
    uint32_t shard;       /* this shard's number, echoed in replies */
    uint32_t nshards;     /* shards in the cluster (health replies) */
    size_t max_frame;     /* request frame cap (bytes) */
} shard_ctx;

typedef struct shard_handler shard_handler_t;

/* Per-worker state: a searcher and scratch buffers reused across requests. Caller owns the
 * result (shard_handler_free); NULL on failure with err set. */
shard_handler_t *shard_handler_new(const shard_ctx *ctx, ps_err *err);
void shard_handler_free(shard_handler_t *h);

/* Answer the `len` bytes at req. OUT *reply: a malloc'd frame of *reply_len bytes (caller
 * frees): the reply, or an Error envelope for any request that fails (request_id 0 when the
 * frame cannot be decoded). Returns 0, or PS_ENOMEM when not even an Error could be built. */
int shard_handle(shard_handler_t *h, const void *req, size_t len, uint8_t **reply,
                 size_t *reply_len);

/* ---- server.c: sockets, worker threads, the proxy loop ----------------------------------- */

typedef struct shard_server_cfg {
    const char *listen;     /* ZeroMQ endpoint of the ROUTER front */
    uint32_t workers;       /* worker threads */
    uint32_t max_inflight;  /* requests handed to workers and not yet answered */
    uint32_t drain_ms;      /* linger for replies still queued when stopping */
    uint32_t hwm;           /* ZMQ_SNDHWM / ZMQ_RCVHWM of the front socket */
    const char *ready_file; /* written once bound (NULL: none) */
} shard_server_cfg;

/* Bind, start the workers, write the ready file and serve until a byte arrives on stop_fd
 * (the signal handler's self-pipe). Then stop reading requests, wait for the in-flight ones,
 * join the workers and close every socket. Returns 0 on a clean stop, a PS_E* code (err says
 * why) when the server could not start. */
int shard_serve(const shard_ctx *ctx, const shard_server_cfg *cfg, int stop_fd, ps_err *err);

#endif
