/*
 * server.c — the profile service's ZeroMQ side: the request server of ps/zserver.h (ROUTER
 * front, inproc DEALER back, in-flight counting and drain) and the worker threads behind it,
 * all sharing one profsvc_ctx (the store is thread-safe).
 *
 * Stopping: the signal handler writes a byte to a self-pipe that the server loop watches.
 * Once nothing is in flight, zmq_ctx_shutdown makes every worker's blocking receive return
 * ETERM and they exit.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
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

typedef struct worker {
    pthread_t tid;
    int started;
    void *zctx;
    profsvc_ctx *ctx;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    void *sock = zmq_socket(w->zctx, ZMQ_DEALER);
    int zero = 0;
    if (!sock || zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_connect(sock, PROFSVC_BACKEND)) {
        ps_log(PS_LOG_ERROR, "profile", "worker_failed", "msg=\"%s\"", zmq_strerror(zmq_errno()));
        if (sock) zmq_close(sock);
        return NULL;
    }
    zmq_msg_t parts[PS_ZMSG_MAX_PARTS];
    for (;;) {
        int n;
        if (ps_zmsg_recv_multi(sock, parts, PS_ZMSG_MAX_PARTS, &n, 0) < 0) {
            if (errno == EINTR) continue;
            break; /* ETERM: the server is stopping */
        }
        /* The server only forwards messages of 2..PS_ZMSG_MAX_PARTS parts. */
        zmq_msg_t *payload = &parts[n - 1];
        uint8_t *reply = NULL;
        size_t reply_len = 0;
        if (profsvc_handle(w->ctx, zmq_msg_data(payload), zmq_msg_size(payload), &reply, &reply_len) ||
            ps_zmsg_set_payload(parts, n, reply, reply_len)) {
            ps_log(PS_LOG_ERROR, "profile", "out_of_memory", "where=reply");
            abort();
        }
        free(reply);
        if (ps_zmsg_send_multi(sock, parts, n, 0) < 0) {
            if (errno == EINTR) continue;
            break;
        }
    }
    zmq_close(sock);
    return NULL;
}

int profsvc_serve(profsvc_ctx *ctx, const profsvc_server_cfg *cfg, int stop_fd, ps_err *err)
{
    int rc = 0;
    void *zctx = zmq_ctx_new();
    ps_zserver_t *srv = NULL;
    worker *ws = calloc(cfg->workers, sizeof *ws);
    if (!zctx || !ws) {
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

    /* Workers must not take the signals: the server loop's poll does. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    for (uint32_t i = 0; i < cfg->workers && !rc; i++) {
        ws[i].zctx = zctx;
        ws[i].ctx = ctx;
        if (pthread_create(&ws[i].tid, NULL, worker_main, &ws[i]))
            rc = ps_err_set(err, PS_EINTERNAL, "starting worker %u failed", i);
        else
            ws[i].started = 1;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
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
    for (uint32_t i = 0; ws && i < cfg->workers; i++)
        if (ws[i].started) pthread_join(ws[i].tid, NULL);
    if (zctx) zmq_ctx_term(zctx);
    free(ws);
    return rc;
}
