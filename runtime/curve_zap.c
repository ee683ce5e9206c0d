/*
 * curve.c — the daemons' side of CURVE (curve_zap.h): the ZAP handler that answers every
 * handshake against the allow-list, settings from a daemon's config, the start-up log line.
 * Key files, allow-lists and socket options are the wire library's (curve.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "ps/curve_zap.h"
#include "ps/log.h"

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"

ps_curve_t *ps_curve_from_cfg(const ps_cfg_t *cfg, ps_err *err)
{
    return ps_curve_load(ps_cfg_str(cfg, "curve-key"), ps_cfg_str(cfg, "curve-allow"),
                         ps_cfg_str(cfg, "curve-servers"), err);
}

static int is_loopback(const char *listen)
{
    const char *h = strstr(listen, "://");
    h = h ? h + 3 : listen;
    if (strncmp(listen, "ipc://", 6) == 0 || strncmp(listen, "inproc://", 9) == 0) return 1;
    return strncmp(h, "127.", 4) == 0 || strncmp(h, "localhost:", 10) == 0 ||
           strncmp(h, "[::1]:", 6) == 0 || strncmp(h, "lo:", 3) == 0;
}

void ps_curve_log_mode(const ps_curve_t *c, const char *component, const char *listen)
{
    if (c) {
        ps_log(PS_LOG_INFO, component, "curve",
               "public_key=%s allowed_clients=%zu known_servers=%zu", ps_curve_public(c),
               ps_curve_nallow(c), ps_curve_nknown(c));
        if (ps_curve_key_mode(c) & 077)
            ps_log(PS_LOG_WARN, component, "key_file_mode",
                   "mode=%03o msg=\"a secret key should be readable by its owner only\"",
                   ps_curve_key_mode(c));
        return;
    }
    ps_log(PS_LOG_WARN, component, "plain_zmq",
           "listen=%s msg=\"CURVE off (no curve-key): internal ZeroMQ traffic is neither "
           "authenticated nor encrypted; plain mode is for 127.0.0.1 development only%s\"",
           listen ? listen : "-",
           listen && !is_loopback(listen) ? ", and this address is not loopback: anyone who "
                                            "reaches it can read and write this daemon's data"
                                          : "");
}

/* ---- the ZAP handler --------------------------------------------------------------------- */

struct ps_curve_zap {
    const ps_curve_t *c;
    void *sock;
    int pipe[2];
    pthread_t tid;
    char comp[32];
    atomic_ullong admitted, refused;
    long long last_log; /* second of the last peer_refused line */
    unsigned long long suppressed;
};

static void zap_refused(ps_curve_zap_t *z, const char *mech, const char *key, const char *addr)
{
    unsigned long long n = atomic_fetch_add(&z->refused, 1) + 1;
    if (!ps_log_once_per_second(&z->last_log)) {
        z->suppressed++;
        return;
    }
    ps_log(PS_LOG_WARN, z->comp, "peer_refused",
           "mechanism=%s key=%.8s address=%s refused_total=%llu suppressed=%llu", mech, key, addr,
           n, z->suppressed);
    z->suppressed = 0;
}

/* Copy a frame's bytes as a printable, NUL-terminated string. */
static void frame_str(zmq_msg_t *m, char *out, size_t cap)
{
    size_t n = zmq_msg_size(m);
    if (n >= cap) n = cap - 1;
    const unsigned char *p = zmq_msg_data(m);
    for (size_t i = 0; i < n; i++) out[i] = p[i] > ' ' && p[i] < 0x7f ? (char)p[i] : '_';
    out[n] = '\0';
}

static void zap_answer(ps_curve_zap_t *z, zmq_msg_t *req, int nreq)
{
    /* request: version, request id, domain, address, routing id, mechanism, credentials... */
    char version[8] = "", mech[16] = "", addr[64] = "", key[PS_CURVE_Z85_LEN + 1] = "-";
    const char *who = NULL;
    if (nreq >= 6) {
        frame_str(&req[0], version, sizeof version);
        frame_str(&req[3], addr, sizeof addr);
        frame_str(&req[5], mech, sizeof mech);
    }
    if (nreq >= 7 && strcmp(mech, "CURVE") == 0 && zmq_msg_size(&req[6]) == 32 &&
        zmq_z85_encode(key, zmq_msg_data(&req[6]), 32))
        who = ps_curve_allowed(z->c, key);
    const char *status = who ? "200" : "400";
    const char *text = who ? "OK" : "key not allowed";
    if (who)
        atomic_fetch_add(&z->admitted, 1);
    else
        zap_refused(z, mech[0] ? mech : "-", key, addr[0] ? addr : "-");
    if (nreq < 2) return; /* nothing to answer to */
    const char *frames[6] = {"1.0", NULL, status, text, who ? who : "", ""};
    for (int i = 0; i < 6; i++) {
        int more = i < 5 ? ZMQ_SNDMORE : 0;
        if (i == 1)
            zmq_send(z->sock, zmq_msg_data(&req[1]), zmq_msg_size(&req[1]), more);
        else
            zmq_send(z->sock, frames[i], strlen(frames[i]), more);
    }
}

static void *zap_main(void *arg)
{
    ps_curve_zap_t *z = arg;
    enum { MAXF = 10 };
    zmq_msg_t req[MAXF];
    for (;;) {
        zmq_pollitem_t items[2] = {{z->sock, 0, ZMQ_POLLIN, 0}, {NULL, z->pipe[0], ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 2, -1) < 0) {
            if (zmq_errno() == EINTR) continue;
            break;
        }
        if (items[1].revents) break;
        if (!(items[0].revents & ZMQ_POLLIN)) continue;
        int n = 0;
        for (;;) {
            zmq_msg_t tmp, *m = n < MAXF ? &req[n] : &tmp;
            zmq_msg_init(m);
            if (zmq_msg_recv(m, z->sock, 0) < 0) {
                zmq_msg_close(m);
                break;
            }
            int more = zmq_msg_more(m);
            if (m == &tmp)
                zmq_msg_close(m);
            else
                n++;
            if (!more) break;
        }
        zap_answer(z, req, n);
        for (int i = 0; i < n; i++) zmq_msg_close(&req[i]);
    }
    return NULL;
}

ps_curve_zap_t *ps_curve_zap_start(const ps_curve_t *c, void *zctx, const char *component,
                                   ps_err *err)
{
    ps_curve_zap_t *z = calloc(1, sizeof *z);
    if (!z) {
        ps_err_set(err, PS_ENOMEM, "out of memory");
        return NULL;
    }
    z->c = c;
    z->pipe[0] = z->pipe[1] = -1;
    snprintf(z->comp, sizeof z->comp, "%s", component);
    int zero = 0;
    if (pipe2(z->pipe, O_CLOEXEC) || !(z->sock = zmq_socket(zctx, ZMQ_REP)) ||
        zmq_setsockopt(z->sock, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_bind(z->sock, ZAP_ENDPOINT)) {
        ps_err_set(err, PS_EINTERNAL, "ZAP handler: %s",
                   z->pipe[0] < 0 ? strerror(errno) : zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (pthread_create(&z->tid, NULL, zap_main, z)) {
        ps_err_set(err, PS_EINTERNAL, "ZAP handler: cannot start its thread");
        goto fail;
    }
    return z;
fail:
    if (z->sock) zmq_close(z->sock);
    if (z->pipe[0] >= 0) close(z->pipe[0]);
    if (z->pipe[1] >= 0) close(z->pipe[1]);
    free(z);
    return NULL;
}

void ps_curve_zap_stop(ps_curve_zap_t *z)
{
    if (!z) return;
    ssize_t w;
    do w = write(z->pipe[1], "x", 1);
    while (w < 0 && errno == EINTR);
    pthread_join(z->tid, NULL);
    zmq_close(z->sock);
    close(z->pipe[0]);
    close(z->pipe[1]);
    free(z);
}

unsigned long long ps_curve_zap_admitted(const ps_curve_zap_t *z)
{
    return z ? atomic_load(&z->admitted) : 0;
}

unsigned long long ps_curve_zap_refused(const ps_curve_zap_t *z)
{
    return z ? atomic_load(&z->refused) : 0;
}
