/*
 * server.c — the profile service's ZeroMQ side: the request server and worker threads of
 * ps/zserver.h (ROUTER front, inproc DEALER back, in-flight counting and drain), all workers
 * sharing one profsvc_ctx (the store is thread-safe).
 *
 * Stopping: the signal handler writes a byte to a self-pipe that the server loop watches.
 * Once nothing is in flight, zmq_ctx_shutdown makes every worker's blocking receive return
 * ETERM and they exit.
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
#include "profile.h"

#define PROFSVC_BACKEND "inproc://profile-workers"

static int handle(void *state, const void *req, size_t len, uint8_t **reply, size_t *reply_len)
{
    return profsvc_handle(state, req, len, reply, reply_len);
}

int profsvc_serve(profsvc_ctx *ctx, const profsvc_server_cfg *cfg, int stop_fd, ps_err *err)
{
    int rc = 0;
    void *zctx = zmq_ctx_new();
    ps_zserver_t *srv = NULL;
    ps_zworkers_t *workers = NULL;
    void **states = calloc(cfg->workers, sizeof *states);
    if (!zctx || !states) {
        rc = ps_err_set(err, PS_ENOMEM, "out of memory starting the server");
        goto out;
    }
    ps_zserver_cfg zc = {.component = "profile",
                         .listen = cfg->listen,
                         .backend = PROFSVC_BACKEND,
                         .max_frame = ctx->max_frame,
                         .max_inflight = cfg->max_inflight,
                         .drain_ms = cfg->drain_ms,
                         .hwm = cfg->hwm};
    if (!(srv = ps_zserver_bind(zctx, &zc, err))) {
        rc = err->code;
        goto out;
    }
    const char *endpoint = ps_zserver_endpoint(srv);

    for (uint32_t i = 0; i < cfg->workers; i++) states[i] = ctx; /* thread-safe, shared */
    rc = ps_zworkers_start(zctx, PROFSVC_BACKEND, cfg->workers, handle, states, "profile", &workers,
                           err);
    if (!rc && cfg->ready_file && ps_write_file_atomic(cfg->ready_file, endpoint))
        rc = ps_err_set(err, PS_EIO, "ready-file %s: %s", cfg->ready_file, strerror(errno));
    if (rc) goto out;
    ps_log(PS_LOG_INFO, "profile", "ready", "endpoint=%s role=%s workers=%u seq=%llu", endpoint,
           ctx->replica ? "replica" : "primary", cfg->workers,
           (unsigned long long)profsvc_store_seq(ctx->store));
    rc = ps_zserver_run(srv, stop_fd, err);

out:
    ps_zserver_close(srv);
    if (zctx) zmq_ctx_shutdown(zctx); /* workers' receives return ETERM */
    ps_zworkers_join(workers);
    if (zctx) zmq_ctx_term(zctx);
    free(states);
    return rc;
}
