/*
 * server.c — the shard's ZeroMQ side: the request server and worker threads of ps/zserver.h
 * (ROUTER front, inproc DEALER back, in-flight counting and drain), each worker with its own
 * shard handler; HealthRequests are answered by the server loop itself with a handler of its
 * own (shard_handle_inline), so they do not wait behind searches. With workers 0 the loop
 * searches too, with that same handler (no hand-over to a worker thread and back; a probe then
 * waits at most for the search in progress).
 *
 * Stopping: the signal handler writes a byte to a self-pipe that the server loop watches.
 * Once nothing is in flight, zmq_ctx_shutdown makes every worker's blocking receive return
 * ETERM; workers free their state and exit.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "ps/config.h"
#include "ps/log.h"
#include "ps/zserver.h"
#include "shard.h"

#define SHARD_BACKEND "inproc://shard-workers"

static int handle(void *state, const void *req, size_t len, uint8_t **reply, size_t *reply_len)
{
    return shard_handle(state, req, len, reply, reply_len);
}

static int handle_inline(void *state, const void *req, size_t len, uint8_t **reply,
                         size_t *reply_len)
{
    return shard_handle_inline(state, req, len, reply, reply_len);
}

static void on_ready(const char *endpoint, void *arg)
{
    const shard_ctx *ctx = arg;
    uint64_t active = 0;
    shard_version_info info[SHARD_MAX_HELD];
    size_t n = shard_versions_list(ctx->versions, info, SHARD_MAX_HELD, &active);
    ps_log(PS_LOG_INFO, "shard", "ready", "endpoint=%s shard=%u active=%llu versions=%zu", endpoint,
           ctx->shard, (unsigned long long)active, n);
}

int shard_serve(const shard_ctx *ctx, const shard_server_cfg *cfg, int stop_fd, ps_err *err)
{
    int rc = 0;
    void **handlers = calloc(cfg->workers ? cfg->workers : 1, sizeof *handlers);
    if (!handlers) return ps_err_set(err, PS_ENOMEM, "out of memory starting the server");
    for (uint32_t i = 0; i < cfg->workers && !rc; i++)
        if (!(handlers[i] = shard_handler_new(ctx, err))) rc = err->code;
    shard_handler_t *loop_handler = rc ? NULL : shard_handler_new(ctx, err); /* inline health */
    if (!rc && !loop_handler) rc = err->code;
    ps_zserver_cfg zc = {.component = "shard",
                         .listen = cfg->listen,
                         .backend = SHARD_BACKEND,
                         .max_frame = ctx->max_frame,
                         .max_inflight = cfg->max_inflight,
                         .drain_ms = cfg->drain_ms,
                         .hwm = cfg->hwm,
                         .ready_extra = cfg->admin,
                         .curve = cfg->curve,
                         .inline_fn = handle_inline,
                         .inline_state = loop_handler};
    if (!rc) /* workers 0: the loop searches with its own handler */
        rc = ps_zserve(&zc, cfg->workers, handle, cfg->workers ? handlers : (void **)&loop_handler,
                       cfg->ready_file, stop_fd, on_ready, (void *)ctx, err);
    for (uint32_t i = 0; i < cfg->workers; i++) shard_handler_free(handlers[i]);
    shard_handler_free(loop_handler);
    free(handlers);
    return rc;
}
