/*
 * server.c — the shard's ZeroMQ side: the request server and worker threads of ps/zserver.h
 * (ROUTER front, inproc DEALER back, in-flight counting and drain), each worker with its own
 * shard handler.
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

int shard_serve(const shard_ctx *ctx, const shard_server_cfg *cfg, int stop_fd, ps_err *err)
{
    int rc = 0;
    void *zctx = zmq_ctx_new();
    ps_zserver_t *srv = NULL;
    ps_zworkers_t *workers = NULL;
    void **handlers = calloc(cfg->workers, sizeof *handlers);
    if (!zctx || !handlers) {
        rc = ps_err_set(err, PS_ENOMEM, "out of memory starting the server");
        goto out;
    }
    ps_zserver_cfg zc = {.component = "shard",
                         .listen = cfg->listen,
                         .backend = SHARD_BACKEND,
                         .max_frame = ctx->max_frame,
                         .max_inflight = cfg->max_inflight,
                         .drain_ms = cfg->drain_ms,
                         .hwm = cfg->hwm};
    if (!(srv = ps_zserver_bind(zctx, &zc, err))) {
        rc = err->code;
        goto out;
    }
    const char *endpoint = ps_zserver_endpoint(srv);
    for (uint32_t i = 0; i < cfg->workers && !rc; i++)
        if (!(handlers[i] = shard_handler_new(ctx, err))) rc = err->code;
    if (!rc)
        rc = ps_zworkers_start(zctx, SHARD_BACKEND, cfg->workers, handle, handlers, "shard",
                               &workers, err);
    if (!rc && cfg->ready_file && ps_write_file_atomic(cfg->ready_file, endpoint))
        rc = ps_err_set(err, PS_EIO, "ready-file %s: %s", cfg->ready_file, strerror(errno));
    if (rc) goto out;
    ps_log(PS_LOG_INFO, "shard", "ready", "endpoint=%s shard=%u stickers=%u workers=%u", endpoint,
           ctx->shard, ps_index_ndocs(ctx->ix), cfg->workers);
    rc = ps_zserver_run(srv, stop_fd, err);

out:
    ps_zserver_close(srv);
    if (zctx) zmq_ctx_shutdown(zctx); /* workers' receives return ETERM */
    ps_zworkers_join(workers);
    for (uint32_t i = 0; handlers && i < cfg->workers; i++) shard_handler_free(handlers[i]);
    if (zctx) zmq_ctx_term(zctx);
    free(handlers);
    return rc;
}
