/*
 * zserver.c — the ZeroMQ request server loop (ps/zserver.h): ROUTER front, inproc DEALER back,
 * and the requests the loop answers itself (cfg.inline_fn).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ps/config.h"
#include "ps/curve_zap.h"
#include "ps/log.h"
#include "ps/wire.h"
#include "ps/zserver.h"

struct ps_zserver {
    void *front, *back;
    ps_curve_zap_t *zap; /* CURVE on: the context's ZAP handler */
    ps_zserver_cfg cfg;
    char *component, *listen, *backend;
    char endpoint[1024];
    uint64_t oversized;         /* requests refused for their number of frames */
    uint64_t served, inlined;   /* requests answered by a worker or loop_fn, by inline_fn */
    uint64_t dropped;           /* replies the front could not send (peer gone, queue full) */
    long long oversized_logged; /* second of the last such log line */
};

int ps_zmsg_recv_multi(void *sock, zmq_msg_t *parts, int cap, int *n, int flags)
{
    *n = 0;
    for (;;) {
        zmq_msg_t tmp, *m = *n < cap ? &parts[*n] : &tmp;
        zmq_msg_init(m);
        /* Only the first part may be missing: the others arrive with it. */
        if (zmq_msg_recv(m, sock, *n == 0 ? flags : 0) < 0) {
            int e = errno;
            zmq_msg_close(m);
            ps_zmsg_close(parts, *n < cap ? *n : cap);
            *n = 0;
            errno = e;
            return -1;
        }
        int more = zmq_msg_more(m);
        if (m == &tmp) zmq_msg_close(&tmp);
        if (*n <= cap) (*n)++;
        if (!more) {
            if (*n > cap) ps_zmsg_close(parts, cap);
            return 0;
        }
    }
}

void ps_zmsg_close(zmq_msg_t *parts, int n)
{
    for (int i = 0; i < n; i++) zmq_msg_close(&parts[i]);
}

int ps_zmsg_send_multi(void *sock, zmq_msg_t *parts, int n, int flags)
{
    for (int i = 0; i < n; i++) {
        if (zmq_msg_send(&parts[i], sock, flags | (i + 1 < n ? ZMQ_SNDMORE : 0)) < 0) {
            int e = errno;
            ps_zmsg_close(parts + i, n - i);
            errno = e;
            return -1;
        }
    }
    return 0;
}

int ps_zmsg_set_payload(zmq_msg_t *parts, int n, const void *buf, size_t len)
{
    zmq_msg_t *payload = &parts[n - 1];
    zmq_msg_close(payload);
    if (zmq_msg_init_size(payload, len)) {
        zmq_msg_init(payload);
        return -1;
    }
    if (len) memcpy(zmq_msg_data(payload), buf, len);
    return 0;
}

static int set_int(void *sock, int opt, int v)
{
    return zmq_setsockopt(sock, opt, &v, sizeof v);
}

void ps_zserver_close(ps_zserver_t *s)
{
    if (!s) return;
    if (s->front) {
        set_int(s->front, ZMQ_LINGER, (int)s->cfg.drain_ms);
        zmq_close(s->front);
    }
    if (s->back) zmq_close(s->back);
    ps_curve_zap_stop(s->zap);
    free(s->component);
    free(s->listen);
    free(s->backend);
    free(s);
}

ps_zserver_t *ps_zserver_bind(void *zctx, const ps_zserver_cfg *cfg, ps_err *err)
{
    ps_zserver_t *s = calloc(1, sizeof *s);
    if (!s || !(s->component = strdup(cfg->component)) || !(s->listen = strdup(cfg->listen)) ||
        !(s->backend = strdup(cfg->backend))) {
        ps_zserver_close(s);
        ps_err_set(err, PS_ENOMEM, "out of memory starting the server");
        return NULL;
    }
    s->cfg = *cfg;
    s->cfg.component = s->component;
    s->cfg.listen = s->listen;
    s->cfg.backend = s->backend;
    s->front = zmq_socket(zctx, ZMQ_ROUTER);
    s->back = zmq_socket(zctx, ZMQ_DEALER);
    int64_t maxmsg = (int64_t)cfg->max_frame;
    if (!s->front || !s->back || zmq_setsockopt(s->front, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) ||
        set_int(s->front, ZMQ_ROUTER_MANDATORY, 1) || set_int(s->front, ZMQ_LINGER, 0) ||
        set_int(s->front, ZMQ_HANDSHAKE_IVL, PS_ZSERVER_HANDSHAKE_MS) ||
        set_int(s->front, ZMQ_SNDHWM, (int)cfg->hwm) ||
        set_int(s->front, ZMQ_RCVHWM, (int)cfg->hwm) || set_int(s->back, ZMQ_LINGER, 0) ||
        set_int(s->back, ZMQ_SNDHWM, 0) || set_int(s->back, ZMQ_RCVHWM, 0) ||
        zmq_bind(s->back, cfg->backend)) {
        ps_err_set(err, PS_EINTERNAL, "creating sockets: %s", zmq_strerror(zmq_errno()));
        ps_zserver_close(s);
        return NULL;
    }
    if (cfg->curve && (ps_curve_server_socket(cfg->curve, s->front, err) ||
                       !(s->zap = ps_curve_zap_start(cfg->curve, zctx, cfg->component, err)))) {
        ps_zserver_close(s);
        return NULL;
    }
    if (zmq_bind(s->front, cfg->listen)) {
        ps_err_set(err, PS_EUNAVAIL, "listen %s: %s", cfg->listen, zmq_strerror(zmq_errno()));
        ps_zserver_close(s);
        return NULL;
    }
    size_t elen = sizeof s->endpoint;
    if (zmq_getsockopt(s->front, ZMQ_LAST_ENDPOINT, s->endpoint, &elen))
        snprintf(s->endpoint, sizeof s->endpoint, "%s", cfg->listen);
    return s;
}

const char *ps_zserver_endpoint(const ps_zserver_t *s)
{
    return s->endpoint;
}

/* Receive one request from the front. A request of more than PS_ZMSG_MAX_PARTS frames is
 * received whole (libzmq has already buffered it: its frames are each under ZMQ_MAXMSGSIZE,
 * their number is not capped by libzmq) keeping only the identity and the last frame, which
 * land in parts[0] and parts[1], and *n = PS_ZMSG_MAX_PARTS + 1 says so. */
static int recv_request(ps_zserver_t *s, zmq_msg_t *parts, int *n)
{
    *n = 0;
    for (;;) {
        int k = *n < PS_ZMSG_MAX_PARTS ? *n : 1;
        if (*n == PS_ZMSG_MAX_PARTS) { /* too many: keep parts[0], reuse parts[1] */
            ps_zmsg_close(parts + 1, PS_ZMSG_MAX_PARTS - 1);
        } else if (*n > PS_ZMSG_MAX_PARTS) {
            zmq_msg_close(&parts[1]);
        }
        zmq_msg_init(&parts[k]);
        if (zmq_msg_recv(&parts[k], s->front, *n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            zmq_msg_close(&parts[k]);
            ps_zmsg_close(parts, *n < PS_ZMSG_MAX_PARTS ? *n : 1);
            *n = 0;
            return -1;
        }
        if (*n <= PS_ZMSG_MAX_PARTS) (*n)++;
        if (!zmq_msg_more(&parts[k])) return 0;
    }
}

/* Answer a request of too many frames with an Error (too_large) on [identity][error], the
 * shape a DEALER peer reads, so its sender is not left waiting for a timeout; counted, and
 * logged at most once a second. Consumes parts[0..2). */
static void refuse_oversized(ps_zserver_t *s, zmq_msg_t *parts)
{
    s->oversized++;
    if (ps_log_once_per_second(&s->oversized_logged))
        ps_log(PS_LOG_WARN, s->cfg.component, "request_refused",
               "reason=\"more than %d frames\" refused_total=%llu", PS_ZMSG_MAX_PARTS,
               (unsigned long long)s->oversized);
    uint8_t *buf = NULL;
    size_t len = 0;
    uint64_t rid = ps_wire_peek_request_id(zmq_msg_data(&parts[1]), zmq_msg_size(&parts[1]));
    if (ps_wire_encode_error(rid, PS_ETOOBIG, "a request has at most 8 frames", &buf, &len, NULL) ==
            0 &&
        ps_zmsg_set_payload(parts, 2, buf, len) == 0)
        ps_zmsg_send_multi(s->front, parts, 2, ZMQ_DONTWAIT); /* consumes them either way */
    else
        ps_zmsg_close(parts, 2);
    free(buf);
}

/* Send a reply parts[0..n) back along its route (consumed either way); a reply the front
 * cannot send (the peer is gone or its queue full) is counted and logged. */
static void send_back(ps_zserver_t *s, zmq_msg_t *parts, int n, int inl)
{
    if (ps_zmsg_send_multi(s->front, parts, n, ZMQ_DONTWAIT) == 0) return;
    s->dropped++;
    ps_log(PS_LOG_WARN, s->cfg.component, "reply_dropped", "reason=\"%s\"%s",
           errno == EHOSTUNREACH ? "peer gone" : zmq_strerror(errno), inl ? " inline=1" : "");
}

/* Offer a request parts[0..n) (n in 2..PS_ZMSG_MAX_PARTS) to cfg.inline_fn. 1: it answered and
 * the answer went back along the route (send_back), parts consumed; 0: for a worker, parts
 * untouched. */
static int answer_inline(ps_zserver_t *s, zmq_msg_t *parts, int n)
{
    zmq_msg_t *payload = &parts[n - 1], answer;
    uint8_t *reply = NULL;
    size_t reply_len = 0;
    if (s->cfg.inline_fn(s->cfg.inline_state, zmq_msg_data(payload), zmq_msg_size(payload), &reply,
                         &reply_len) != 1)
        return 0;
    if (zmq_msg_init_size(&answer, reply_len)) { /* out of memory: a worker answers */
        free(reply);
        return 0;
    }
    if (reply_len) memcpy(zmq_msg_data(&answer), reply, reply_len);
    free(reply);
    zmq_msg_move(payload, &answer); /* releases the request's payload */
    zmq_msg_close(&answer);
    s->inlined++;
    send_back(s, parts, n, 1);
    return 1;
}

/* The stop byte arrived on stop_fd: read it and, the first time, start stopping. */
static void take_stop(ps_zserver_t *s, int stop_fd, int *stopping, uint64_t inflight)
{
    char b;
    ssize_t got = read(stop_fd, &b, 1);
    (void)got;
    if (*stopping) return;
    *stopping = 1;
    ps_log(PS_LOG_INFO, s->cfg.component, "stopping", "inflight=%llu",
           (unsigned long long)inflight);
}

static void log_drained(const ps_zserver_t *s)
{
    ps_log(PS_LOG_INFO, s->cfg.component, "drained",
           "served=%llu served_inline=%llu replies_dropped=%llu", (unsigned long long)s->served,
           (unsigned long long)s->inlined, (unsigned long long)s->dropped);
}

/* Serving on the loop (cfg.loop_fn; ps/zserver.h): the requests read and not yet answered, in
 * a ring that grows up to max_inflight. */
typedef struct zqueued {
    zmq_msg_t parts[PS_ZMSG_MAX_PARTS];
    int n;
} zqueued;

typedef struct zqueue {
    zqueued *q;
    size_t cap, head, len;
} zqueue;

/* Move parts src[0..n) into dst[0..n) (zmq_msg_move: src is left empty). */
static void zmsg_move(zmq_msg_t *dst, zmq_msg_t *src, int n)
{
    for (int i = 0; i < n; i++) {
        zmq_msg_init(&dst[i]);
        zmq_msg_move(&dst[i], &src[i]);
        zmq_msg_close(&src[i]);
    }
}

static zqueued *zqueue_push(zqueue *z)
{
    if (z->len == z->cap) {
        size_t cap = z->cap ? z->cap * 2 : 16;
        zqueued *q = malloc(cap * sizeof *q);
        if (!q) return NULL;
        for (size_t i = 0; i < z->len; i++)
            zmsg_move(q[i].parts, z->q[(z->head + i) % z->cap].parts,
                      q[i].n = z->q[(z->head + i) % z->cap].n);
        free(z->q);
        z->q = q;
        z->cap = cap;
        z->head = 0;
    }
    return &z->q[(z->head + z->len++) % z->cap];
}

static zqueued *zqueue_pop(zqueue *z)
{
    zqueued *e = &z->q[z->head];
    z->head = (z->head + 1) % z->cap;
    z->len--;
    return e;
}

/* Read what waits on the front without blocking, until it is empty or the queue holds
 * max_inflight: oversized requests refused, inline ones answered, the rest queued. */
static void read_front(ps_zserver_t *s, zqueue *z)
{
    zmq_msg_t parts[PS_ZMSG_MAX_PARTS];
    while (z->len < s->cfg.max_inflight) {
        int n;
        if (recv_request(s, parts, &n) < 0) return; /* EAGAIN: nothing more */
        if (n < 2) {                                /* a ROUTER always prepends the identity */
            ps_zmsg_close(parts, n);
        } else if (n > PS_ZMSG_MAX_PARTS) {
            refuse_oversized(s, parts);
        } else if (!s->cfg.inline_fn || !answer_inline(s, parts, n)) {
            zqueued *e = zqueue_push(z);
            if (!e) {
                ps_log(PS_LOG_ERROR, s->cfg.component, "out_of_memory", "where=queue");
                abort(); /* as ps_zmsg_answer: a request would go unanswered */
            }
            zmsg_move(e->parts, parts, e->n = n);
        }
    }
}

static int run_on_loop(ps_zserver_t *s, int stop_fd, ps_err *err)
{
    const char *who = s->cfg.component;
    zqueue z = {0};
    int stopping = 0, rc = 0;
    while (!stopping || z.len > 0) {
        zmq_pollitem_t items[2] = {{NULL, stop_fd, ZMQ_POLLIN, 0}, {s->front, 0, ZMQ_POLLIN, 0}};
        int nitems = (!stopping && z.len < s->cfg.max_inflight) ? 2 : 1;
        if (zmq_poll(items, nitems, z.len ? 0 : -1) < 0) {
            if (errno == EINTR) continue;
            rc = ps_err_set(err, PS_EINTERNAL, "zmq_poll: %s", zmq_strerror(errno));
            break;
        }
        if (items[0].revents & ZMQ_POLLIN) take_stop(s, stop_fd, &stopping, z.len);
        if (!stopping && nitems == 2 && (items[1].revents & ZMQ_POLLIN)) read_front(s, &z);
        if (!z.len) continue;
        zqueued *e = zqueue_pop(&z);
        if (ps_zmsg_answer(e->parts, e->n, s->cfg.loop_fn, s->cfg.loop_state, who)) continue;
        s->served++;
        send_back(s, e->parts, e->n, 0);
    }
    while (z.len) { /* left by an error */
        zqueued *e = zqueue_pop(&z);
        ps_zmsg_close(e->parts, e->n);
    }
    free(z.q);
    log_drained(s);
    return rc;
}

int ps_zserver_run(ps_zserver_t *s, int stop_fd, ps_err *err)
{
    if (s->cfg.loop_fn) return run_on_loop(s, stop_fd, err);
    zmq_msg_t parts[PS_ZMSG_MAX_PARTS];
    uint64_t inflight = 0;
    int stopping = 0, rc = 0;
    while (!stopping || inflight > 0) {
        zmq_pollitem_t items[3] = {{s->back, 0, ZMQ_POLLIN, 0},
                                   {NULL, stop_fd, ZMQ_POLLIN, 0},
                                   {s->front, 0, ZMQ_POLLIN, 0}};
        int nitems = (!stopping && inflight < s->cfg.max_inflight) ? 3 : 2;
        if (zmq_poll(items, nitems, -1) < 0) {
            if (errno == EINTR) continue;
            rc = ps_err_set(err, PS_EINTERNAL, "zmq_poll: %s", zmq_strerror(errno));
            break;
        }
        if (items[1].revents & ZMQ_POLLIN) take_stop(s, stop_fd, &stopping, inflight);
        if (items[0].revents & ZMQ_POLLIN) { /* a worker's reply */
            int n;
            if (ps_zmsg_recv_multi(s->back, parts, PS_ZMSG_MAX_PARTS, &n, 0) < 0) continue;
            if (inflight) inflight--;
            s->served++;
            if (n > PS_ZMSG_MAX_PARTS) continue; /* cannot happen: workers echo the route */
            send_back(s, parts, n, 0);
        }
        if (nitems == 3 && (items[2].revents & ZMQ_POLLIN)) { /* a peer's request */
            int n;
            if (recv_request(s, parts, &n) < 0) continue;
            if (n < 2) { /* a ROUTER always prepends the identity: cannot happen */
                ps_zmsg_close(parts, n);
                continue;
            }
            if (n > PS_ZMSG_MAX_PARTS) { /* parts[0] identity, parts[1] the last frame */
                refuse_oversized(s, parts);
                continue;
            }
            if (s->cfg.inline_fn && answer_inline(s, parts, n)) continue;
            if (ps_zmsg_send_multi(s->back, parts, n, 0) < 0) {
                rc = ps_err_set(err, PS_EINTERNAL, "to workers: %s", zmq_strerror(errno));
                break;
            }
            inflight++;
        }
    }
    log_drained(s);
    return rc;
}

/* ---- worker threads ---------------------------------------------------------------------- */

int ps_zmsg_answer(zmq_msg_t *parts, int n, ps_zhandler_fn fn, void *state, const char *component)
{
    if (n < 2 || n > PS_ZMSG_MAX_PARTS) { /* the server forwards 2..MAX parts only */
        if (n <= PS_ZMSG_MAX_PARTS) ps_zmsg_close(parts, n);
        return -1;
    }
    zmq_msg_t *payload = &parts[n - 1];
    uint8_t *reply = NULL;
    size_t reply_len = 0;
    if (fn(state, zmq_msg_data(payload), zmq_msg_size(payload), &reply, &reply_len) ||
        ps_zmsg_set_payload(parts, n, reply, reply_len)) {
        ps_log(PS_LOG_ERROR, component, "out_of_memory", "where=reply");
        abort();
    }
    free(reply);
    return 0;
}

typedef struct zworker {
    pthread_t tid;
    int started;
    void *zctx;
    const char *backend, *component;
    ps_zhandler_fn fn;
    void *state;
} zworker;

struct ps_zworkers {
    zworker *w;
    uint32_t n;
};

static void *zworker_main(void *arg)
{
    zworker *w = arg;
    void *sock = zmq_socket(w->zctx, ZMQ_DEALER);
    int zero = 0;
    if (!sock || zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_connect(sock, w->backend)) {
        ps_log(PS_LOG_ERROR, w->component, "worker_failed", "msg=\"%s\"",
               zmq_strerror(zmq_errno()));
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
        if (ps_zmsg_answer(parts, n, w->fn, w->state, w->component)) continue;
        if (ps_zmsg_send_multi(sock, parts, n, 0) < 0) {
            if (errno == EINTR) continue;
            break;
        }
    }
    zmq_close(sock);
    return NULL;
}

int ps_zworkers_start(void *zctx, const char *backend, uint32_t n, ps_zhandler_fn fn,
                      void *const *states, const char *component, ps_zworkers_t **out, ps_err *err)
{
    ps_zworkers_t *ws = calloc(1, sizeof *ws);
    *out = NULL;
    if (!ws || !(ws->w = calloc(n ? n : 1, sizeof *ws->w))) {
        free(ws);
        return ps_err_set(err, PS_ENOMEM, "out of memory starting workers");
    }
    ws->n = n;
    *out = ws;
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int rc = 0;
    for (uint32_t i = 0; i < n && !rc; i++) {
        ws->w[i] = (zworker){
            .zctx = zctx, .backend = backend, .component = component, .fn = fn, .state = states[i]};
        if (pthread_create(&ws->w[i].tid, NULL, zworker_main, &ws->w[i]))
            rc = ps_err_set(err, PS_EINTERNAL, "starting worker %u failed", i);
        else
            ws->w[i].started = 1;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

void ps_zworkers_join(ps_zworkers_t *ws)
{
    if (!ws) return;
    for (uint32_t i = 0; i < ws->n; i++)
        if (ws->w[i].started) pthread_join(ws->w[i].tid, NULL);
    free(ws->w);
    free(ws);
}

int ps_zserve(const ps_zserver_cfg *cfg, uint32_t workers, ps_zhandler_fn fn, void *const *states,
              const char *ready_file, int stop_fd,
              void (*on_ready)(const char *endpoint, void *arg), void *arg, ps_err *err)
{
    int rc = 0;
    ps_err local = {0, ""};
    if (!err) err = &local; /* the code is still returned */
    void *zctx = zmq_ctx_new();
    ps_zserver_t *srv = NULL;
    ps_zworkers_t *ws = NULL;
    if (!zctx) return ps_err_set(err, PS_ENOMEM, "out of memory starting the server");
    if (!(srv = ps_zserver_bind(zctx, cfg, err))) {
        rc = err->code;
        goto out;
    }
    const char *endpoint = ps_zserver_endpoint(srv);
    if (workers == 0) { /* the loop answers: see the file comment of ps/zserver.h */
        srv->cfg.loop_fn = fn;
        srv->cfg.loop_state = states[0];
    } else {
        rc = ps_zworkers_start(zctx, cfg->backend, workers, fn, states, cfg->component, &ws, err);
    }
    if (!rc && ready_file) {
        char text[2048];
        int tn = snprintf(text, sizeof text, "%s%s%s", endpoint, cfg->ready_extra ? "\n" : "",
                          cfg->ready_extra ? cfg->ready_extra : "");
        if (tn < 0 || (size_t)tn >= sizeof text || ps_write_file_atomic(ready_file, text))
            rc = ps_err_set(err, PS_EIO, "ready-file %s: %s", ready_file, strerror(errno));
    }
    if (rc) goto out;
    if (on_ready) on_ready(endpoint, arg);
    rc = ps_zserver_run(srv, stop_fd, err);
out:
    ps_zserver_close(srv);
    zmq_ctx_shutdown(zctx); /* workers' receives return ETERM */
    ps_zworkers_join(ws);
    zmq_ctx_term(zctx);
    return rc;
}
