/*
 * zserver.h — the ZeroMQ request server shared by the shard and the broker's front door: a
 * ROUTER front socket for peers, an inproc DEALER back socket that spreads the requests over
 * worker sockets (round robin), and the loop between the two.
 *
 *   peers (DEALER or REQ) ──tcp──▶ ROUTER front ──▶ ps_zserver_run ──inproc──▶ DEALER back
 *                                                                                │
 *                                            workers: DEALERs connected to cfg->backend
 *
 * Messages: a DEALER peer's request arrives on the front as [identity][payload], a REQ peer's
 * as [identity][empty][payload]. Every frame but the last is the route; a worker receives the
 * whole message, answers with the same route frames and its reply in place of the payload
 * (ps_zmsg_recv_multi / ps_zmsg_send_multi), and the ROUTER sends the reply back along the
 * route. The loop counts requests handed to workers and not yet answered ("in flight"): it
 * stops reading the front at max_inflight (the peers' queues fill and TCP pushes back) and,
 * when stopping, waits for that count to reach zero, so no accepted request goes unanswered.
 *
 * The front socket has ZMQ_MAXMSGSIZE (a larger frame makes ZeroMQ drop the connection, the
 * server never sees it), ZMQ_ROUTER_MANDATORY (a reply to a peer that is gone, or whose queue
 * is full, fails visibly instead of vanishing: it is logged and dropped) and ZMQ_LINGER 0,
 * raised to drain_ms only when closing so the last replies get out. A request of more than
 * PS_ZMSG_MAX_PARTS frames is answered with an Error (too_large) and counted, logged at most
 * once a second. libzmq itself buffers a whole multipart message before the server sees it
 * and caps only each frame (ZMQ_MAXMSGSIZE), not their number: only CURVE (cfg.curve, with
 * its allow-list) keeps an unknown peer from making a daemon buffer a message of many
 * max-size frames.
 *
 * Inline answers (cfg.inline_fn): a request the server loop can answer itself, at once and
 * without blocking — a health probe — need not wait for a worker. The loop offers every request
 * it reads from the front to inline_fn before handing it to the workers; a request inline_fn
 * answers goes straight back along its route and never reaches a worker, so it is answered
 * while every worker is busy with slow requests (a busy shard still answers its broker's
 * probes, which would otherwise queue behind searches and make the shard look dead). It is
 * answered only while the loop reads the front: not at max_inflight, not once stopping.
 * inline_fn runs on the loop's thread, beside the workers: whatever state it reads it must
 * read thread-safely (atomics, or a lock that no one holds for long), and it must be cheap —
 * every request waits for it, and the loop answers nothing else while it runs.
 *
 * Serving on the loop (cfg.loop_fn): no workers and no back socket hop. The loop reads every
 * request waiting on the front (inline_fn answering what it can at once), queues the rest in
 * order (at most max_inflight), answers the oldest with loop_fn, and reads the front again before
 * the next: a request costs no hand-over between threads, and a health probe waits at most for
 * the one request being answered, never behind the queue. For a daemon with one thread of work
 * per core or less (e.g. several shards on one host), where the hand-over to a worker and back
 * costs more than the work it lets overlap.
 *
 * Threads: the server's sockets belong to the thread that calls ps_zserver_run; each worker
 * socket to its worker.
 */
#ifndef PS_ZSERVER_H
#define PS_ZSERVER_H

#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#include "ps/err.h"

#define PS_ZMSG_MAX_PARTS 8 /* route frames + payload a request may have */
/* A peer that has not completed its handshake (CURVE or not) this long after connecting is
 * dropped (ZMQ_HANDSHAKE_IVL; libzmq's default is 30 s): idle connections opened to hold a
 * daemon's file descriptors do not hold them long. */
#define PS_ZSERVER_HANDSHAKE_MS 5000

/* Receive one whole multipart message into parts[0..*n). Parts beyond `cap` are received and
 * discarded (*n = cap + 1 tells the caller; parts[0..cap) are then closed already). flags: 0
 * or ZMQ_DONTWAIT (only the first part may then fail with EAGAIN). Returns 0 or -1 with errno
 * (EAGAIN, ETERM, EINTR ...) and nothing held. */
int ps_zmsg_recv_multi(void *sock, zmq_msg_t *parts, int cap, int *n, int flags);

/* Close parts[0..n). */
void ps_zmsg_close(zmq_msg_t *parts, int n);

/* Send parts[0..n) as one message (the messages are consumed either way). flags: ZMQ_DONTWAIT
 * or 0. Returns 0 or -1 with errno; on failure of the first part nothing was sent. */
int ps_zmsg_send_multi(void *sock, zmq_msg_t *parts, int n, int flags);

/* Replace the payload (last part) of parts[0..n) with a copy of the len bytes at buf.
 * Returns 0 or -1 (out of memory; the old payload is closed either way). */
int ps_zmsg_set_payload(zmq_msg_t *parts, int n, const void *buf, size_t len);

/* The server loop's inline answer (see the file comment): called for each request's payload
 * (len bytes at req) on the loop's thread. Returns 1 with *reply (malloc'd, *reply_len bytes;
 * the loop sends it back along the request's route and frees it), or 0 when the request is for
 * a worker (also when an answer could not be built: out of memory; *reply is then ignored). */
typedef int (*ps_zinline_fn)(void *state, const void *req, size_t len, uint8_t **reply,
                             size_t *reply_len);

/* Answer one request frame (len bytes at req) with one reply frame (*reply, malloc'd, the
 * caller frees), using the worker's (or the loop's) own state. Returns 0, or PS_ENOMEM when not
 * even an error reply could be built (the server then aborts the process: it cannot answer). */
typedef int (*ps_zhandler_fn)(void *state, const void *req, size_t len, uint8_t **reply,
                              size_t *reply_len);

typedef struct ps_zserver_cfg {
    const char *component;        /* log component ("shard", "broker") */
    const char *listen;           /* ZeroMQ endpoint of the ROUTER front */
    const char *backend;          /* inproc endpoint the workers connect to */
    size_t max_frame;             /* request frame cap (ZMQ_MAXMSGSIZE of the front) */
    uint32_t max_inflight;        /* requests handed to workers (or queued on the loop) and not
                                     yet answered */
    uint32_t drain_ms;            /* linger for replies still queued when closing */
    uint32_t hwm;                 /* ZMQ_SNDHWM / ZMQ_RCVHWM of the front socket */
    const char *ready_extra;      /* ps_zserve: lines written after the endpoint in the ready file
                                     (e.g. the admin address; NULL: none) */
    const struct ps_curve *curve; /* CURVE on the front (ps/curve.h; a ZAP handler is started in
                                     the context), NULL: plain */
    ps_zinline_fn inline_fn;      /* NULL: every request goes to a worker */
    void *inline_state;           /* inline_fn's state (borrowed; read thread-safely) */
    ps_zhandler_fn loop_fn;       /* the loop answers every request (above); NULL: workers */
    void *loop_state;             /* loop_fn's state (borrowed) */
} ps_zserver_cfg;

typedef struct ps_zserver ps_zserver_t;

/* Create both sockets in zctx and bind them (the back first, so workers may connect as soon as
 * this returns). cfg's strings are copied. Errors: PS_EUNAVAIL when the front cannot bind
 * (address in use, bad endpoint), PS_EINTERNAL, PS_ENOMEM. Caller owns the result. */
ps_zserver_t *ps_zserver_bind(void *zctx, const ps_zserver_cfg *cfg, ps_err *err);

/* The front's bound endpoint ("tcp://127.0.0.1:41234" when the port was '*'). */
const char *ps_zserver_endpoint(const ps_zserver_t *s);

/* Forward requests and replies until a byte arrives on stop_fd (a self-pipe), then stop
 * reading the front and return once nothing is in flight. Returns 0, or PS_EINTERNAL (err set)
 * when the sockets fail. */
int ps_zserver_run(ps_zserver_t *s, int stop_fd, ps_err *err);

/* Close the front (lingering drain_ms for queued replies) and the back. NULL is ignored. */
void ps_zserver_close(ps_zserver_t *s);

/* ---- worker threads ---- */

/* A worker's turn on one received message parts[0..n): a message that is not route frames +
 * payload (n outside 2..PS_ZMSG_MAX_PARTS) is closed and dropped (returns -1); otherwise the
 * payload is replaced by fn's reply, ready to send back along the same route (returns 0). Out of
 * memory aborts the process (logged under `component`): a request would go unanswered. */
int ps_zmsg_answer(zmq_msg_t *parts, int n, ps_zhandler_fn fn, void *state, const char *component);

typedef struct ps_zworkers ps_zworkers_t;

/* Start n threads, each with a DEALER connected to `backend` in zctx, answering every request
 * with fn(states[i], ...) (states may repeat one shared, thread-safe state). The threads block
 * SIGTERM and SIGINT (the server loop's self-pipe takes them). Returns 0, or PS_ENOMEM /
 * PS_EINTERNAL (a thread could not start) with err set. OUT *out: set whenever a thread may
 * have started, also on error: stop them with zmq_ctx_shutdown, then ps_zworkers_join. */
int ps_zworkers_start(void *zctx, const char *backend, uint32_t n, ps_zhandler_fn fn,
                      void *const *states, const char *component, ps_zworkers_t **out, ps_err *err);

/* A whole daemon's serving life: a ZeroMQ context, the server bound per cfg, `workers` threads
 * answering with fn(states[i]) (ps_zworkers_start) — or, with workers 0, the loop answering with
 * fn(states[0]) (cfg.loop_fn, see the file comment) — the ready file (when not NULL) holding the
 * bound endpoint, on_ready(endpoint, arg) (may be NULL) to log it, then ps_zserver_run until a
 * byte on stop_fd and its drain; everything is stopped and freed before it returns. Returns 0
 * on a clean stop, or the error that kept it from starting (err set). */
int ps_zserve(const ps_zserver_cfg *cfg, uint32_t workers, ps_zhandler_fn fn, void *const *states,
              const char *ready_file, int stop_fd,
              void (*on_ready)(const char *endpoint, void *arg), void *arg, ps_err *err);

/* Wait for every worker to leave (after zmq_ctx_shutdown made their receives return ETERM)
 * and free w. NULL is ignored. */
void ps_zworkers_join(ps_zworkers_t *w);

#endif
