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

typedef struct ready_arg {
    profsvc_ctx *ctx;
    const profsvc_server_cfg *cfg;
} ready_arg;

static void on_ready(const char *endpoint, void *arg)
{
    const ready_arg *ra = arg;
    ps_log(PS_LOG_INFO, "profile", "ready", "endpoint=%s admin=%s role=%s seq=%llu", endpoint,
           ra->cfg->admin ? ra->cfg->admin : "none", ra->ctx->replica ? "replica" : "primary",
           (unsigned long long)profsvc_store_seq(ra->ctx->store));
}

int profsvc_serve(profsvc_ctx *ctx, const profsvc_server_cfg *cfg, int stop_fd, ps_err *err)
{
    void **states = calloc(cfg->workers, sizeof *states);
    if (!states) return ps_err_set(err, PS_ENOMEM, "out of memory starting the server");
    for (uint32_t i = 0; i < cfg->workers; i++) states[i] = ctx; /* thread-safe, shared */
    ps_zserver_cfg zc = {.component = "profile",
                         .listen = cfg->listen,
                         .backend = PROFSVC_BACKEND,
                         .max_frame = ctx->max_frame,
                         .max_inflight = cfg->max_inflight,
                         .drain_ms = cfg->drain_ms,
                         .hwm = cfg->hwm,
                         .ready_extra = cfg->admin, /* the ready file's line 2 */
                         .curve = cfg->curve};
    ready_arg ra = {ctx, cfg};
    int rc =
        ps_zserve(&zc, cfg->workers, handle, states, cfg->ready_file, stop_fd, on_ready, &ra, err);
    free(states);
    return rc;
}
