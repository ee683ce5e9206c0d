/*
 * zreq.h — the one ZeroMQ request helper of the cluster: a client side of request/reply over a
 * DEALER socket in the "Lazy Pirate" shape (ZeroMQ guide, ch. 4), used by libpersrv (to the
 * broker), the broker's shard pool (many at once in one zmq_poll), the profile replica (to its
 * primary) and `builder push-profiles`. Its counterpart on the serving side is ps_zserve.
 *
 * A ps_zreq_t owns one DEALER (ZMQ_LINGER 0, ZMQ_MAXMSGSIZE max_frame, CURVE from the options)
 * connected to one endpoint of its list at a time. A request is a frame encoded once with
 * request_id 0 and deadline_ms 0 (any ps_wire_encode_* or ps_wire_pack); every attempt sends a
 * copy with a fresh request_id and its deadline stamped on (ps_wire_stamp), and takes only the
 * reply that echoes that id: anything else on the socket is stale and dropped. When an attempt
 * times out the socket is closed and a new one opened (to the next endpoint of the list, if
 * any), so the old request and any late reply to it die with the old socket.
 *
 * Refused connections. ZeroMQ connects in the background and keeps retrying, so an endpoint
 * nobody listens on looks like a slow peer. Each socket therefore has a monitor (an inproc
 * PAIR, zmq_socket_monitor) for ZMQ_EVENT_CONNECT_RETRIED, which libzmq 4.3 emits each time a
 * connection attempt fails (TCP: connection refused, host or network unreachable; IPC: no such
 * socket). Such an event while a request is outstanding ends the attempt at once as refused,
 * instead of after the timeout. (libzmq 4.3's event carries no errno, and its draft
 * ZMQ_RECONNECT_STOP is not built into Debian 12's libzmq5.) A peer that drops packets, or an
 * inproc endpoint nobody bound, still costs the timeout.
 *
 * Memory: ps_malloc & co (ps/alloc.h). A ps_zreq_t is used by one thread at a time.
 */
#ifndef PS_ZREQ_H
#define PS_ZREQ_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#include "persrv.pb-c.h"
#include "ps/curve.h"
#include "ps/err.h"

#define PS_ZREQ_DEFAULT_TIMEOUT_MS 1000
#define PS_ZREQ_MAX_ENDPOINTS      64  /* endpoints of one list */
#define PS_ZREQ_MAX_ENDPOINT       256 /* bytes of one endpoint */
#define PS_ZREQ_STOP_POLL_MS       100 /* a call looks at opts.stop this often */
#define PS_ZREQ_NPOLL              2   /* poll items of one ps_zreq_t (ps_zreq_pollitems) */

typedef struct ps_zreq ps_zreq_t;

/* Called for every new socket after the CURVE options of opts.curve and before zmq_connect,
 * with the endpoint it is for (its index in the list): more socket options, e.g. a client's
 * CURVE keys of its own. Returns 0, or -1 with the zmq errno set (the open fails). */
typedef int (*ps_zreq_setup_fn)(void *arg, void *sock, size_t index, const char *endpoint);

typedef struct ps_zreq_opts {
    uint32_t timeout_ms; /* one attempt of ps_zreq_call; 0 = PS_ZREQ_DEFAULT_TIMEOUT_MS */
    uint32_t retries;    /* ps_zreq_call: attempts after a first one that timed out */
    size_t max_frame;    /* largest reply (ZMQ_MAXMSGSIZE, decoder cap); 0 = PS_WIRE_MAX_FRAME */
    const ps_curve_t *curve; /* CURVE client settings (NULL: plain); borrowed */
    ps_zreq_setup_fn setup;  /* NULL: none */
    void *setup_arg;
    const atomic_int *stop; /* ps_zreq_call gives up (PS_EUNAVAIL, "stopping") within
                               PS_ZREQ_STOP_POLL_MS once *stop is non-zero; NULL: never */
    int no_monitor;         /* 1: no socket monitor — refusals go unseen (an attempt runs to
                               its timeout), one socket per requester, one poll item */
} ps_zreq_opts;

/* A requester over endpoints[0..n) (1..PS_ZREQ_MAX_ENDPOINTS, each copied) in zctx (borrowed; it
 * must outlive the result), opts NULL = defaults. The socket to endpoints[0] is opened here, so
 * an endpoint ZeroMQ rejects there is reported now; the others are opened when a failover
 * reaches them. Errors (NULL returned): PS_EINVAL (n out of range, an endpoint empty or too
 * long, no CURVE server key for one, zmq_connect refusing endpoints[0]: err names it),
 * PS_EINTERNAL (a socket could not be made), PS_ENOMEM. Caller owns the result
 * (ps_zreq_free). */
ps_zreq_t *ps_zreq_new(void *zctx, const char *const *endpoints, size_t n, const ps_zreq_opts *opts,
                       ps_err *err);

/* Close the sockets and free z (NULL is fine). */
void ps_zreq_free(ps_zreq_t *z);

/* ---- one blocking request ---------------------------------------------------------------- */

/* Send the len bytes of frame (an envelope encoded with request_id 0) and wait for its reply:
 * up to `attempts` attempts (0: 1 + opts.retries) of timeout_ms each (0: opts.timeout_ms),
 * each stamped with a fresh request_id and deadline_ms = timeout_ms. The reply taken is the
 * envelope that echoes the attempt's request_id, or an Error with request_id 0 (a server that
 * could not read the id: with one request in flight on the socket it can only be about it).
 *
 * Failover: the call starts on the endpoint the last call ended on. An attempt that times out
 * reopens the socket on the next endpoint (the same one when there is only one) and counts
 * against `attempts`; an endpoint that refuses the connection is left at once for the next one
 * without counting. The call thus takes at most about attempts × timeout_ms.
 *
 * OUT *reply: the decoded envelope (caller frees: ps_wire_free), whatever its body: judging an
 * Error or an unexpected body is the caller's. NULL on error. Errors (err says which endpoint):
 * PS_ETIMEDOUT (no attempt answered), PS_EUNAVAIL (every endpoint refused the connection, one
 * after the other, or opts.stop was set), PS_EPARSE (the reply meant for this request did not
 * decode or had several frames: err has the decoder's message), PS_EINVAL (an endpoint ZeroMQ
 * rejects, when every endpoint failed so), PS_EINTERNAL (a ZeroMQ call failed), PS_ENOMEM. */
int ps_zreq_call(ps_zreq_t *z, const uint8_t *frame, size_t len, uint32_t timeout_ms,
                 uint32_t attempts, Persrv__Envelope **reply, ps_err *err);

/* ---- the pieces, for a caller that polls many requesters at once (the broker's pool) ----- */

/* The endpoint the socket is (or was last) connected to; borrowed, valid until ps_zreq_free. */
const char *ps_zreq_endpoint(const ps_zreq_t *z);
/* Its index in the list. */
size_t ps_zreq_index(const ps_zreq_t *z);

/* The DEALER (NULL while closed: after a failed reopen). Borrowed; closed by ps_zreq_reopen
 * and ps_zreq_free. For the caller's own socket options; send and receive through here. */
void *ps_zreq_socket(const ps_zreq_t *z);

/* Fill items[0..PS_ZREQ_NPOLL) for zmq_poll: the DEALER and its monitor (none with no_monitor),
 * ZMQ_POLLIN. Returns how many were filled (0 while closed). When one is readable, call
 * ps_zreq_step. */
int ps_zreq_pollitems(const ps_zreq_t *z, zmq_pollitem_t *items);

/* Close the socket and open a new one to endpoint `index` (ps_zreq_index(z) to stay, or
 * (ps_zreq_index(z) + 1) % n to fail over): Lazy Pirate, whatever the old socket held is gone,
 * and nothing is pending. Errors: PS_EINVAL (ZeroMQ rejects the endpoint, no CURVE key),
 * PS_EINTERNAL; the requester is then closed (ps_zreq_socket NULL) until a reopen succeeds. */
int ps_zreq_reopen(ps_zreq_t *z, size_t index, ps_err *err);

/* Number of endpoints. */
size_t ps_zreq_count(const ps_zreq_t *z);

/* Send frame stamped with a fresh request_id and deadline_ms, without waiting (ZMQ_DONTWAIT),
 * as the request ps_zreq_step matches: it is "pending" until its reply comes, a refusal, or a
 * reopen. OUT *request_id (may be NULL): the id it went under. Errors: PS_EUNAVAIL (closed, or
 * zmq_send failed: err says why; nothing is pending), PS_ENOMEM. */
int ps_zreq_send(ps_zreq_t *z, const uint8_t *frame, size_t len, uint32_t deadline_ms,
                 uint64_t *request_id, ps_err *err);

/* The same for a request on the side (a health probe beside a search): not pending, its reply
 * comes back from ps_zreq_step as PS_ZREQ_OTHER for the caller to match with *request_id. */
int ps_zreq_send_aside(ps_zreq_t *z, const uint8_t *frame, size_t len, uint32_t deadline_ms,
                       uint64_t *request_id, ps_err *err);

/* 1 while the request of ps_zreq_send awaits its reply; its id. */
int ps_zreq_pending(const ps_zreq_t *z);
uint64_t ps_zreq_request_id(const ps_zreq_t *z);

/* What ps_zreq_step found. */
enum {
    PS_ZREQ_NONE = 0,   /* nothing (more) waiting */
    PS_ZREQ_REPLY = 1,  /* *env answers the pending request (no longer pending) */
    PS_ZREQ_OTHER = 2,  /* *env carries another request_id: a stale reply, or an aside's */
    PS_ZREQ_REFUSED = 3 /* a connection attempt failed while requests were outstanding: they
                           are lost (nothing pending); reopen before sending again */
};

/* Take one thing waiting on z without blocking: a reply frame first, else a monitor event.
 * Call it until PS_ZREQ_NONE. OUT *env (caller frees: ps_wire_free) with PS_ZREQ_REPLY and
 * PS_ZREQ_OTHER, else NULL. Errors (the frame is dropped; keep stepping): PS_EPARSE for a frame
 * that does not decode or has several (err has the decoder's message), PS_ENOMEM. */
int ps_zreq_step(ps_zreq_t *z, Persrv__Envelope **env, ps_err *err);

#endif
