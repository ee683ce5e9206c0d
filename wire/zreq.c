/*
 * zreq.c — the ZeroMQ request helper (ps/zreq.h): a DEALER with a monitor per endpoint, request
 * ids stamped onto frames encoded once, replies matched by id, Lazy Pirate reopening and
 * failover over a list of endpoints.
 *
 * Monitor. Each socket gets a monitor on "inproc://ps-zreq-<n>" (n from a process-wide counter,
 * so a name is never reused while libzmq may still be tearing down an old one) read through a
 * PAIR. Its messages are two frames: 6 bytes (u16 event, u32 value, host order) and the
 * endpoint. Only ZMQ_EVENT_CONNECTED and ZMQ_EVENT_CONNECT_RETRIED are asked for: a RETRIED
 * while a request is outstanding means the request is not getting through (refused).
 *
 * Request ids come from a per-requester counter started at a random point (getrandom), never 0,
 * so replies to another requester (or to an earlier socket) cannot match by accident.
 */
#include "ps/zreq.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ps/alloc.h"
#include "ps/rand.h"
#include "ps/wire.h"

struct ps_zreq {
    void *zctx;
    char **ep;
    size_t nep, cur;
    ps_zreq_opts o;
    void *sock, *mon;     /* DEALER and its monitor's PAIR; NULL while closed */
    int pending;          /* the request of ps_zreq_send awaits its reply */
    uint64_t rid;         /* ... under this id */
    uint32_t outstanding; /* requests sent on this socket since it opened (or was refused) */
    uint64_t next_id;
};

static atomic_ullong monitor_seq;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void close_socks(ps_zreq_t *z)
{
    /* Stop the monitor before closing: left to zmq_close, libzmq tears it down late and the
     * next monitor of this context gets no events (every later refusal would be missed). */
    if (z->sock && z->mon) zmq_socket_monitor(z->sock, NULL, 0);
    if (z->sock) zmq_close(z->sock);
    if (z->mon) zmq_close(z->mon);
    z->sock = z->mon = NULL;
    z->pending = 0;
    z->outstanding = 0;
}

/* Open the DEALER and its monitor for endpoint i. */
static int open_socks(ps_zreq_t *z, size_t i, ps_err *err)
{
    const char *ep = z->ep[i];
    int zero = 0, rc;
    int64_t maxmsg = (int64_t)z->o.max_frame;
    char mon[64];
    close_socks(z);
    z->cur = i;
    snprintf(mon, sizeof mon, "inproc://ps-zreq-%llu", (unsigned long long)++monitor_seq);
    if (!(z->sock = zmq_socket(z->zctx, ZMQ_DEALER)) ||
        zmq_setsockopt(z->sock, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_setsockopt(z->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) ||
        (!z->o.no_monitor &&
         (!(z->mon = zmq_socket(z->zctx, ZMQ_PAIR)) ||
          zmq_setsockopt(z->mon, ZMQ_LINGER, &zero, sizeof zero) ||
          zmq_socket_monitor(z->sock, mon, ZMQ_EVENT_CONNECTED | ZMQ_EVENT_CONNECT_RETRIED) ||
          zmq_connect(z->mon, mon)))) {
        rc = ps_err_set(err, PS_EINTERNAL, "%s: socket: %s", ep, zmq_strerror(zmq_errno()));
        goto fail;
    }
    if ((rc = ps_curve_client_socket(z->o.curve, z->sock, ep, err))) goto fail;
    if (z->o.setup && z->o.setup(z->o.setup_arg, z->sock, i, ep)) {
        rc = ps_err_set(err, PS_EINVAL, "%s: socket options: %s", ep, zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (zmq_connect(z->sock, ep)) {
        rc = ps_err_set(err, PS_EINVAL, "connect %s: %s", ep, zmq_strerror(zmq_errno()));
        goto fail;
    }
    return 0;
fail:
    close_socks(z);
    return rc;
}

void ps_zreq_free(ps_zreq_t *z)
{
    if (!z) return;
    close_socks(z);
    for (size_t i = 0; z->ep && i < z->nep; i++) ps_free(z->ep[i]);
    ps_free(z->ep);
    ps_free(z);
}

ps_zreq_t *ps_zreq_new(void *zctx, const char *const *endpoints, size_t n, const ps_zreq_opts *opts,
                       ps_err *err)
{
    if (!zctx || !endpoints || n == 0 || n > PS_ZREQ_MAX_ENDPOINTS) {
        ps_err_set(err, PS_EINVAL, "endpoints: 1..%d needed, got %zu", PS_ZREQ_MAX_ENDPOINTS,
                   endpoints ? n : 0);
        return NULL;
    }
    ps_zreq_t *z = ps_calloc(1, sizeof *z);
    if (!z || !(z->ep = ps_calloc(n, sizeof *z->ep))) {
        ps_free(z);
        ps_err_set(err, PS_ENOMEM, "out of memory for a requester");
        return NULL;
    }
    z->zctx = zctx;
    z->nep = n;
    if (opts) z->o = *opts;
    if (!z->o.timeout_ms) z->o.timeout_ms = PS_ZREQ_DEFAULT_TIMEOUT_MS;
    if (!z->o.max_frame) z->o.max_frame = PS_WIRE_MAX_FRAME;
    uint64_t seed;
    if (ps_random_bytes(&seed, sizeof seed))
        seed = (uint64_t)now_ms() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)z;
    z->next_id = ps_splitmix64(&seed) >> 1; /* room to count up without wrapping to 0 */
    for (size_t i = 0; i < n; i++) {
        size_t len = endpoints[i] ? strlen(endpoints[i]) : 0;
        if (len == 0 || len >= PS_ZREQ_MAX_ENDPOINT) {
            ps_err_set(err, PS_EINVAL, "endpoint %zu: %s", i,
                       len ? "longer than 255 bytes" : "empty");
            goto fail;
        }
        if (ps_curve_check_endpoint(z->o.curve, endpoints[i], err)) goto fail;
        if (!(z->ep[i] = ps_strdup(endpoints[i]))) {
            ps_err_set(err, PS_ENOMEM, "out of memory for a requester");
            goto fail;
        }
    }
    if (open_socks(z, 0, err)) goto fail;
    return z;
fail:
    ps_zreq_free(z);
    return NULL;
}

const char *ps_zreq_endpoint(const ps_zreq_t *z)
{
    return z->ep[z->cur];
}

size_t ps_zreq_index(const ps_zreq_t *z)
{
    return z->cur;
}

size_t ps_zreq_count(const ps_zreq_t *z)
{
    return z->nep;
}

void *ps_zreq_socket(const ps_zreq_t *z)
{
    return z->sock;
}

int ps_zreq_pending(const ps_zreq_t *z)
{
    return z->pending;
}

uint64_t ps_zreq_request_id(const ps_zreq_t *z)
{
    return z->rid;
}

int ps_zreq_pollitems(const ps_zreq_t *z, zmq_pollitem_t *items)
{
    if (!z->sock) return 0;
    items[0] = (zmq_pollitem_t){z->sock, 0, ZMQ_POLLIN, 0};
    if (!z->mon) return 1;
    items[1] = (zmq_pollitem_t){z->mon, 0, ZMQ_POLLIN, 0};
    return 2;
}

int ps_zreq_reopen(ps_zreq_t *z, size_t index, ps_err *err)
{
    if (index >= z->nep) index = 0;
    return open_socks(z, index, err);
}

/* Send frame + stamp as one message. */
static int send_stamped(ps_zreq_t *z, const uint8_t *frame, size_t len, uint32_t deadline_ms,
                        uint64_t *rid, ps_err *err)
{
    uint8_t stamp[PS_WIRE_STAMP_MAX];
    zmq_msg_t m;
    if (!z->sock) return ps_err_set(err, PS_EUNAVAIL, "%s: not connected", z->ep[z->cur]);
    if (++z->next_id == 0) ++z->next_id;
    size_t n = ps_wire_stamp(stamp, z->next_id, deadline_ms);
    if (zmq_msg_init_size(&m, len + n))
        return ps_err_set(err, PS_ENOMEM, "out of memory for a request of %zu bytes", len);
    memcpy(zmq_msg_data(&m), frame, len);
    memcpy((uint8_t *)zmq_msg_data(&m) + len, stamp, n);
    if (zmq_msg_send(&m, z->sock, ZMQ_DONTWAIT) < 0) {
        int e = zmq_errno();
        zmq_msg_close(&m);
        return ps_err_set(err, PS_EUNAVAIL, "send to %s: %s", z->ep[z->cur], zmq_strerror(e));
    }
    z->outstanding++;
    *rid = z->next_id;
    return 0;
}

int ps_zreq_send(ps_zreq_t *z, const uint8_t *frame, size_t len, uint32_t deadline_ms,
                 uint64_t *request_id, ps_err *err)
{
    uint64_t rid;
    z->pending = 0;
    int rc = send_stamped(z, frame, len, deadline_ms, &rid, err);
    if (rc) return rc;
    z->pending = 1;
    z->rid = rid;
    if (request_id) *request_id = rid;
    return 0;
}

int ps_zreq_send_aside(ps_zreq_t *z, const uint8_t *frame, size_t len, uint32_t deadline_ms,
                       uint64_t *request_id, ps_err *err)
{
    uint64_t rid;
    int rc = send_stamped(z, frame, len, deadline_ms, &rid, err);
    if (!rc && request_id) *request_id = rid;
    return rc;
}

/* Read one monitor event. Returns its event number, or 0 when none is waiting. */
static int monitor_event(ps_zreq_t *z)
{
    zmq_msg_t m;
    uint16_t ev = 0;
    zmq_msg_init(&m);
    if (!z->mon || zmq_msg_recv(&m, z->mon, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return 0;
    }
    if (zmq_msg_size(&m) >= sizeof ev) memcpy(&ev, zmq_msg_data(&m), sizeof ev);
    while (zmq_msg_more(&m)) { /* the endpoint frame */
        zmq_msg_close(&m);
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, z->mon, ZMQ_DONTWAIT) < 0) break;
    }
    zmq_msg_close(&m);
    return ev ? ev : -1;
}

/* Drop whatever the monitor holds. 1 when the last connection event was a failed attempt. */
static int monitor_drain(ps_zreq_t *z)
{
    int ev, refusing = 0;
    while ((ev = monitor_event(z)) != 0) {
        if (ev == ZMQ_EVENT_CONNECT_RETRIED) refusing = 1;
        if (ev == ZMQ_EVENT_CONNECTED) refusing = 0;
    }
    return refusing;
}

/* ps_zreq_step. accept_zero: an Error with request_id 0 answers the pending request. OUT *peek:
 * for a frame that does not decode, the request_id found in it (0 if none). */
static int step(ps_zreq_t *z, Persrv__Envelope **env, int accept_zero, uint64_t *peek, ps_err *err)
{
    *env = NULL;
    *peek = 0;
    if (!z->sock) return PS_ZREQ_NONE;
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, z->sock, ZMQ_DONTWAIT) >= 0) {
        int more = zmq_msg_more(&m), rc;
        ps_err de = {0, ""};
        *peek = ps_wire_peek_request_id(zmq_msg_data(&m), zmq_msg_size(&m));
        if (more) {
            rc = ps_err_set(err, PS_EPARSE, "reply from %s: more than one frame", z->ep[z->cur]);
            while (more) { /* peers speak single frames: drain the message, then drop it */
                zmq_msg_close(&m);
                zmq_msg_init(&m);
                more = zmq_msg_recv(&m, z->sock, ZMQ_DONTWAIT) >= 0 && zmq_msg_more(&m);
            }
        } else if ((rc = ps_wire_decode(zmq_msg_data(&m), zmq_msg_size(&m), z->o.max_frame, env,
                                        &de))) {
            rc = ps_err_set(err, rc == PS_ENOMEM ? PS_ENOMEM : PS_EPARSE, "reply from %s: %s",
                            z->ep[z->cur], de.msg);
        }
        zmq_msg_close(&m);
        if (rc) return rc;
        Persrv__Envelope *e = *env;
        if (z->pending &&
            (e->request_id == z->rid ||
             (accept_zero && e->request_id == 0 && e->body_case == PERSRV__ENVELOPE__BODY_ERROR))) {
            z->pending = 0;
            return PS_ZREQ_REPLY;
        }
        return PS_ZREQ_OTHER;
    }
    zmq_msg_close(&m);
    int ev;
    while ((ev = monitor_event(z)) != 0) {
        if (ev == ZMQ_EVENT_CONNECT_RETRIED && z->outstanding) {
            z->pending = 0;
            z->outstanding = 0;
            return PS_ZREQ_REFUSED;
        }
    }
    return PS_ZREQ_NONE;
}

int ps_zreq_step(ps_zreq_t *z, Persrv__Envelope **env, ps_err *err)
{
    uint64_t peek;
    return step(z, env, 0, &peek, err);
}

/* ---- the blocking call ------------------------------------------------------------------- */

enum { GOT_REPLY, GOT_TIMEOUT, GOT_REFUSED, GOT_ERROR };

/* Wait until end (ms, now_ms) for the reply to the pending request. GOT_ERROR: err set. */
static int await(ps_zreq_t *z, double end, Persrv__Envelope **reply, ps_err *err)
{
    for (;;) {
        Persrv__Envelope *env = NULL;
        uint64_t peek = 0;
        ps_err e = {0, ""};
        int rc;
        while ((rc = step(z, &env, 1, &peek, &e)) != PS_ZREQ_NONE) {
            if (rc == PS_ZREQ_REPLY) {
                *reply = env;
                return GOT_REPLY;
            }
            if (rc == PS_ZREQ_REFUSED) return GOT_REFUSED;
            if (rc == PS_ZREQ_OTHER) {
                ps_wire_free(env); /* a late answer to an earlier request */
                continue;
            }
            /* a frame that does not decode: ours (or anonymous) fails the call; another
             * request's is dropped */
            if (rc == PS_ENOMEM || peek == 0 || peek == z->rid) {
                if (err) *err = e;
                return GOT_ERROR;
            }
        }
        if (z->o.stop && atomic_load(z->o.stop)) {
            ps_err_set(err, PS_EUNAVAIL, "stopping");
            return GOT_ERROR;
        }
        double now = now_ms();
        if (now >= end) return GOT_TIMEOUT;
        long wait = (long)(end - now) + 1;
        if (z->o.stop && wait > PS_ZREQ_STOP_POLL_MS) wait = PS_ZREQ_STOP_POLL_MS;
        zmq_pollitem_t items[PS_ZREQ_NPOLL];
        int n = ps_zreq_pollitems(z, items);
        if (zmq_poll(items, n, wait) < 0 && zmq_errno() != EINTR) {
            ps_err_set(err, PS_EINTERNAL, "poll: %s", zmq_strerror(zmq_errno()));
            return GOT_ERROR;
        }
    }
}

int ps_zreq_call(ps_zreq_t *z, const uint8_t *frame, size_t len, uint32_t timeout_ms,
                 uint32_t attempts, Persrv__Envelope **reply, ps_err *err)
{
    uint32_t timeouts = 0;
    size_t failed = 0; /* endpoints in a row that refused or could not be opened */
    int last = 0;      /* the code of the last of those */
    char why[PS_ZREQ_MAX_ENDPOINT + 64] = "";
    *reply = NULL;
    if (!timeout_ms) timeout_ms = z->o.timeout_ms;
    if (!attempts) attempts = z->o.retries < UINT32_MAX ? z->o.retries + 1 : UINT32_MAX;
    for (;;) {
        ps_err e = {0, ""};
        int rc = 0;
        if (z->o.stop && atomic_load(z->o.stop)) return ps_err_set(err, PS_EUNAVAIL, "stopping");
        /* a socket that has been failing to connect while idle gets a fresh try (its verdict
           comes at once) rather than a wait for its next reconnect */
        if (!z->sock || monitor_drain(z)) rc = open_socks(z, z->cur, &e);
        if (!rc) rc = ps_zreq_send(z, frame, len, timeout_ms, NULL, &e);
        int got = GOT_ERROR;
        if (!rc) {
            got = await(z, now_ms() + timeout_ms, reply, &e);
            if (got == GOT_REPLY) return 0;
            rc = e.code;
        } else if (rc == PS_EUNAVAIL) {
            got = GOT_TIMEOUT; /* a full queue: as if the attempt had timed out */
        }
        if (got == GOT_ERROR && rc != PS_EINVAL) {
            close_socks(z); /* whatever it holds is suspect now */
            return ps_err_set(err, rc, "%s", e.msg);
        }
        size_t next = (z->cur + 1) % z->nep;
        if (got == GOT_TIMEOUT) {
            failed = 0;
            if (++timeouts >= attempts) break;
        } else { /* refused, or the endpoint cannot be opened */
            last = got == GOT_REFUSED ? PS_EUNAVAIL : PS_EINVAL;
            if (got == GOT_REFUSED)
                snprintf(why, sizeof why, "%s: connection refused", z->ep[z->cur]);
            else
                snprintf(why, sizeof why, "%.*s", (int)sizeof why - 1, e.msg);
            if (++failed >= z->nep) {
                close_socks(z);
                z->cur = next; /* the next call tries the next one first */
                if (z->nep == 1) return ps_err_set(err, last, "%s", why);
                return ps_err_set(err, last, "all %zu endpoints failed (last: %s)", z->nep, why);
            }
        }
        /* Lazy Pirate: the request, and any late reply to it, go with the old socket */
        close_socks(z);
        z->cur = next;
    }
    size_t last_ep = z->cur;
    close_socks(z);
    z->cur = (last_ep + 1) % z->nep;
    if (z->nep == 1)
        return ps_err_set(err, PS_ETIMEDOUT, "no reply from %s within %u ms (%u attempt%s)",
                          z->ep[last_ep], timeout_ms, timeouts, timeouts == 1 ? "" : "s");
    return ps_err_set(err, PS_ETIMEDOUT,
                      "no reply within %u ms (%u attempt%s over %zu endpoints, last %s)",
                      timeout_ms, timeouts, timeouts == 1 ? "" : "s", z->nep, z->ep[last_ep]);
}
