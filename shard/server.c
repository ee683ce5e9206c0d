/*
 * server.c — the shard's ZeroMQ side: a ROUTER front socket for peers, an inproc DEALER back
 * socket that spreads requests over the worker threads, and the loop between them.
 *
 * Messages: a DEALER peer's request arrives on the front as [identity][payload], a REQ peer's
 * as [identity][empty][payload]. Every frame but the last is the route; the worker answers
 * with the same route frames and its reply in place of the payload, and the ROUTER sends the
 * reply back along the route. The loop counts requests handed to workers and not yet answered
 * ("in flight"): it stops reading the front at max_inflight (the peers' queues fill and TCP
 * pushes back) and, when stopping, waits for that count to reach zero before it closes.
 *
 * The front socket has ZMQ_MAXMSGSIZE (a larger frame makes ZeroMQ drop the connection, the
 * daemon never sees it), ZMQ_ROUTER_MANDATORY (a reply to a peer that is gone, or whose queue
 * is full, fails visibly instead of vanishing: it is logged and dropped) and ZMQ_LINGER 0,
 * raised to drain_ms only at shutdown so the last replies get out.
 *
 * Stopping: the signal handler writes a byte to a self-pipe that zmq_poll watches (an EINTR
 * from zmq_poll just loops back to the poll). Once nothing is in flight, zmq_ctx_shutdown makes
 * every worker's blocking receive return ETERM; workers free their state and exit.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "ps/log.h"
#include "ps/config.h"
#include "shard.h"

#define SHARD_BACKEND   "inproc://shard-workers"
#define SHARD_MAX_PARTS 8 /* route frames + payload a request may have */

typedef struct worker {
    pthread_t tid;
    int started;
    void *zctx;
    const shard_ctx *ctx;
    shard_handler_t *h; /* created by the server before the thread starts */
} worker;

/* Receive one whole multipart message into parts[0..*n). Parts beyond `cap` are received and
 * discarded (*n = cap + 1 tells the caller). Returns 0 or -1 with errno (ETERM, EINTR ...). */
static int recv_multi(void *sock, zmq_msg_t *parts, int cap, int *n)
{
    *n = 0;
    for (;;) {
        zmq_msg_t tmp, *m = *n < cap ? &parts[*n] : &tmp;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, sock, 0) < 0) {
            int e = errno;
            zmq_msg_close(m);
            for (int i = 0; i < *n && i < cap; i++) zmq_msg_close(&parts[i]);
            *n = 0;
            errno = e;
            return -1;
        }
        int more = zmq_msg_more(m);
        if (m == &tmp) zmq_msg_close(&tmp);
        if (*n <= cap) (*n)++;
        if (!more) return 0;
    }
}

static void close_parts(zmq_msg_t *parts, int n)
{
    for (int i = 0; i < n; i++) zmq_msg_close(&parts[i]);
}

/* Send parts[0..n) as one message (the messages are consumed either way). flags: ZMQ_DONTWAIT
 * or 0. Returns 0 or -1 with errno; on failure of the first part nothing was sent. */
static int send_multi(void *sock, zmq_msg_t *parts, int n, int flags)
{
    for (int i = 0; i < n; i++) {
        if (zmq_msg_send(&parts[i], sock, flags | (i + 1 < n ? ZMQ_SNDMORE : 0)) < 0) {
            int e = errno;
            close_parts(parts + i, n - i);
            errno = e;
            return -1;
        }
    }
    return 0;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    void *sock = zmq_socket(w->zctx, ZMQ_DEALER);
    int zero = 0;
    if (!sock || zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_connect(sock, SHARD_BACKEND)) {
        ps_log(PS_LOG_ERROR, "shard", "worker_failed", "msg=\"%s\"", zmq_strerror(zmq_errno()));
        if (sock) zmq_close(sock);
        return NULL;
    }
    zmq_msg_t parts[SHARD_MAX_PARTS];
    for (;;) {
        int n;
        if (recv_multi(sock, parts, SHARD_MAX_PARTS, &n) < 0) {
            if (errno == EINTR) continue;
            break; /* ETERM: the server is stopping */
        }
        /* The loop only forwards messages of 2..SHARD_MAX_PARTS parts. */
        zmq_msg_t *payload = &parts[n - 1];
        uint8_t *reply = NULL;
        size_t reply_len = 0;
        if (shard_handle(w->h, zmq_msg_data(payload), zmq_msg_size(payload), &reply, &reply_len)) {
            ps_log(PS_LOG_ERROR, "shard", "out_of_memory", "where=reply");
            abort();
        }
        zmq_msg_close(payload);
        if (zmq_msg_init_size(payload, reply_len)) abort();
        memcpy(zmq_msg_data(payload), reply, reply_len);
        free(reply);
        if (send_multi(sock, parts, n, 0) < 0) {
            if (errno == EINTR) continue;
            break;
        }
    }
    zmq_close(sock);
    return NULL;
}

static int set_int(void *sock, int opt, int v)
{
    return zmq_setsockopt(sock, opt, &v, sizeof v);
}

int shard_serve(const shard_ctx *ctx, const shard_server_cfg *cfg, int stop_fd, ps_err *err)
{
    int rc = 0;
    void *zctx = zmq_ctx_new();
    void *front = NULL, *back = NULL;
    worker *ws = calloc(cfg->workers, sizeof *ws);
    if (!zctx || !ws) {
        rc = ps_err_set(err, PS_ENOMEM, "out of memory starting the server");
        goto out;
    }
    front = zmq_socket(zctx, ZMQ_ROUTER);
    back = zmq_socket(zctx, ZMQ_DEALER);
    int64_t maxmsg = (int64_t)ctx->max_frame;
    if (!front || !back || zmq_setsockopt(front, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) ||
        set_int(front, ZMQ_ROUTER_MANDATORY, 1) || set_int(front, ZMQ_LINGER, 0) ||
        set_int(front, ZMQ_SNDHWM, (int)cfg->hwm) || set_int(front, ZMQ_RCVHWM, (int)cfg->hwm) ||
        set_int(back, ZMQ_LINGER, 0) || set_int(back, ZMQ_SNDHWM, 0) ||
        set_int(back, ZMQ_RCVHWM, 0) || zmq_bind(back, SHARD_BACKEND)) {
        rc = ps_err_set(err, PS_EINTERNAL, "creating sockets: %s", zmq_strerror(zmq_errno()));
        goto out;
    }
    if (zmq_bind(front, cfg->listen)) {
        rc = ps_err_set(err, PS_EUNAVAIL, "listen %s: %s", cfg->listen, zmq_strerror(zmq_errno()));
        goto out;
    }
    char endpoint[1024] = "";
    size_t elen = sizeof endpoint;
    zmq_getsockopt(front, ZMQ_LAST_ENDPOINT, endpoint, &elen);

    /* Workers must not take the signals: the main thread's poll does. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    for (uint32_t i = 0; i < cfg->workers && !rc; i++) {
        ws[i].zctx = zctx;
        ws[i].ctx = ctx;
        if (!(ws[i].h = shard_handler_new(ctx, err)))
            rc = err ? err->code : PS_ENOMEM;
        else if (pthread_create(&ws[i].tid, NULL, worker_main, &ws[i]))
            rc = ps_err_set(err, PS_EINTERNAL, "starting worker %u failed", i);
        else
            ws[i].started = 1;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!rc && cfg->ready_file && ps_write_file_atomic(cfg->ready_file, endpoint))
        rc = ps_err_set(err, PS_EIO, "ready-file %s: %s", cfg->ready_file, strerror(errno));
    if (rc) goto out;
    ps_log(PS_LOG_INFO, "shard", "ready", "endpoint=%s shard=%u stickers=%u workers=%u", endpoint,
           ctx->shard, ps_index_ndocs(ctx->ix), cfg->workers);

    zmq_msg_t parts[SHARD_MAX_PARTS];
    uint64_t inflight = 0, served = 0, dropped = 0;
    int stopping = 0;
    while (!stopping || inflight > 0) {
        zmq_pollitem_t items[3] = {
            {back, 0, ZMQ_POLLIN, 0}, {NULL, stop_fd, ZMQ_POLLIN, 0}, {front, 0, ZMQ_POLLIN, 0}};
        int nitems = (!stopping && inflight < cfg->max_inflight) ? 3 : 2;
        if (zmq_poll(items, nitems, -1) < 0) {
            if (errno == EINTR) continue;
            rc = ps_err_set(err, PS_EINTERNAL, "zmq_poll: %s", zmq_strerror(errno));
            break;
        }
        if (items[1].revents & ZMQ_POLLIN) {
            char b;
            ssize_t got = read(stop_fd, &b, 1);
            (void)got;
            if (!stopping) {
                stopping = 1;
                ps_log(PS_LOG_INFO, "shard", "stopping", "inflight=%llu",
                       (unsigned long long)inflight);
            }
        }
        if (items[0].revents & ZMQ_POLLIN) { /* a worker's reply */
            int n;
            if (recv_multi(back, parts, SHARD_MAX_PARTS, &n) < 0) continue;
            inflight--;
            served++;
            if (send_multi(front, parts, n, ZMQ_DONTWAIT) < 0) {
                dropped++;
                ps_log(PS_LOG_WARN, "shard", "reply_dropped", "reason=\"%s\"",
                       errno == EHOSTUNREACH ? "peer gone" : zmq_strerror(errno));
            }
        }
        if (nitems == 3 && (items[2].revents & ZMQ_POLLIN)) { /* a peer's request */
            int n;
            if (recv_multi(front, parts, SHARD_MAX_PARTS, &n) < 0) continue;
            if (n < 2 || n > SHARD_MAX_PARTS) {
                /* A ROUTER always prepends the identity, so n < 2 cannot happen; too many
                 * parts is a peer we do not understand: drop it. */
                close_parts(parts, n < SHARD_MAX_PARTS ? n : SHARD_MAX_PARTS);
                ps_log(PS_LOG_WARN, "shard", "request_dropped", "reason=\"%d frames\"", n);
                continue;
            }
            if (send_multi(back, parts, n, 0) < 0) {
                rc = ps_err_set(err, PS_EINTERNAL, "to workers: %s", zmq_strerror(errno));
                break;
            }
            inflight++;
        }
    }
    ps_log(PS_LOG_INFO, "shard", "drained", "served=%llu replies_dropped=%llu",
           (unsigned long long)served, (unsigned long long)dropped);

out:
    if (front) {
        set_int(front, ZMQ_LINGER, (int)cfg->drain_ms);
        zmq_close(front);
    }
    if (zctx) zmq_ctx_shutdown(zctx); /* workers' receives return ETERM */
    for (uint32_t i = 0; ws && i < cfg->workers; i++) {
        if (ws[i].started) pthread_join(ws[i].tid, NULL);
        shard_handler_free(ws[i].h);
    }
    if (back) zmq_close(back);
    if (zctx) zmq_ctx_term(zctx);
    free(ws);
    return rc;
}
