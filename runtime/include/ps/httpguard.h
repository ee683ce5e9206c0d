/*
 * httpguard.h — what stands between a libevent evhttp server and its peers (issue 11): every
 * HTTP door (the broker's public port, every daemon's admin port) runs one guard per event
 * loop, which
 *
 *   - caps the door's connections: over max_connections a new connection is answered 503
 *     (JSON, Retry-After: 1) and closed at once, its request unread;
 *   - limits the total time of a request's line, headers and body (request_timeout_ms, from
 *     the request's first byte), so a request trickled a byte at a time (slowloris) cannot
 *     hold its connection: libevent's own timeout is an idle timeout, reset by every byte.
 *     A request over the limit is answered 408 (JSON) and its connection closed;
 *   - backs off accept() failures (EMFILE, ENFILE, ENOBUFS ...): the listener stops for
 *     PS_HTTPGUARD_BACKOFF_MS instead of spinning on a socket that stays readable, and the
 *     failures are logged at most once per PS_HTTPGUARD_LOG_INTERVAL_S with a count;
 *   - reads request framing strictly: a chunk size that is not 1 to 16 hex digits (a sign, a
 *     0x prefix, an extension, junk) or that overflows 2^63 is answered 400 parse_error and the
 *     connection closed, before libevent sees it (libevent 2.1 would answer 413, or read
 *     "0x10" as 16);
 *   - gives the answers libevent 2.1 sends on its own, before any handler runs (an HTML page
 *     from evhttp_send_error: request line or headers over max-headers, a body over max-body,
 *     a malformed request line, header or Content-Length, an unknown method, an Expect other
 *     than 100-continue), the JSON error shape {"error": {"code", "type", "message"}}.
 *     Their status stays libevent's (400, 413, 417, 501), except where the guard knows better.
 *
 * How, with libevent 2.1's public API only (it has no evhttp_set_newreqcb nor
 * evhttp_set_errorcb): the guard makes each connection's bufferevent (evhttp_set_bevcb),
 * watches its input and output evbuffers (evbuffer_add_cb) and learns of its end from the
 * connection's close callback. A connection is cut with evhttp_connection_free.
 *
 * Counters are per door ("http", "admin"), shared by every guard of the door (the broker's
 * lanes each run one) and process-wide; ps_httpguard_render_metrics writes them all.
 *
 * Threads: a guard belongs to its event loop: call it from the thread running that loop, or
 * while the loop is not running. The door counters are atomics, readable from any thread.
 */
#ifndef PS_HTTPGUARD_H
#define PS_HTTPGUARD_H

#include <stddef.h>
#include <stdint.h>

#include "ps/buf.h"
#include "ps/err.h"

struct event_base;
struct evhttp;
struct evhttp_bound_socket;

#define PS_HTTPGUARD_BACKOFF_MS     100 /* a listener rests this long after accept() failed */
#define PS_HTTPGUARD_LOG_INTERVAL_S 10  /* at most one accept-failure line per door per this */

typedef struct ps_httpguard_cfg {
    const char *door;            /* counters' label: "http", "admin" */
    const char *comp;            /* log component: "broker", "shard", "profile" */
    uint32_t max_connections;    /* open connections of the door, all guards together; 0: any */
    uint32_t request_timeout_ms; /* first byte to last byte of a request; 0: no limit */
    size_t max_headers;          /* the evhttp's caps, named in error messages (0: unknown) */
    size_t max_body;
} ps_httpguard_cfg;

typedef struct ps_httpguard ps_httpguard_t;

/* Guard `http` (running on `base`): installs its bufferevent hook (evhttp_set_bevcb; the
 * caller must not set its own). cfg->door and cfg->comp are borrowed (string literals).
 * Errors: PS_ENOMEM. Caller owns the result; free it with ps_httpguard_free after
 * evhttp_free(http) (which closes the connections the guard still tracks). */
ps_httpguard_t *ps_httpguard_new(struct event_base *base, struct evhttp *http,
                                 const ps_httpguard_cfg *cfg, ps_err *err);

/* Also guard the listener of `bs` (one of http's): its accept() failures are backed off and
 * counted, and it takes one connection per turn of the loop (it pauses after each accept
 * until the loop's next turn, so a burst of connections spreads over the loops sharing a
 * listening socket). Errors: PS_EINVAL (no listener or more than 4). */
int ps_httpguard_listen(ps_httpguard_t *g, struct evhttp_bound_socket *bs, ps_err *err);

/* Forget bs's listener (before evhttp_del_accept_socket removes it). */
void ps_httpguard_unlisten(ps_httpguard_t *g, struct evhttp_bound_socket *bs);

/* Free the guard: its timers, and the connections not yet handed to evhttp. NULL is fine. */
void ps_httpguard_free(ps_httpguard_t *g);

/* Append the counters of every door of this process to b:
 *   persrv_http_connections{door}                  gauge, open now
 *   persrv_http_connections_max{door}              gauge, the cap (0: none)
 *   persrv_http_connections_accepted_total{door}   counter
 *   persrv_http_connections_refused_total{door}    counter, over the cap (503)
 *   persrv_http_request_timeouts_total{door}       counter, cut by request-timeout-ms (408)
 *   persrv_http_protocol_errors_total{door}        counter, malformed or oversized requests
 *                                                  answered before any handler
 *   persrv_http_accept_errors_total{door}          counter, failed accept() calls
 * Out of memory is b's sticky error (ps/buf.h). */
void ps_httpguard_render_metrics(ps_buf *b);

/* ---- the file descriptor limit ---------------------------------------------------------- */

/* File descriptors a daemon keeps for itself beside its HTTP connections: ZeroMQ sockets and
 * their connections, RocksDB files, event loops, pipes, the log. */
#define PS_FD_RESERVE 128

/* Raise this process's RLIMIT_NOFILE soft limit to `need` (at most the hard limit), and log
 * the outcome (event=fd_limit). need 0, or flags PS_FD_TO_HARD (a daemon with a ZeroMQ port,
 * whose peers libzmq does not cap): raise it to the hard limit. When the hard limit is
 * below need the daemon runs anyway and logs event=fd_limit_low (warn) naming both: the
 * connection caps then cannot all be honoured, and accept() failures past the limit are
 * backed off. OUT *soft: the soft limit now (may be NULL). Returns 0, or PS_EIO when
 * getrlimit fails. */
enum { PS_FD_TO_HARD = 1 };
int ps_fd_limit_raise(uint64_t need, int flags, const char *comp, uint64_t *soft, ps_err *err);

#endif
