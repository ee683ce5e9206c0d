/*
 * admin.h — every daemon's admin HTTP port (DESIGN §3, §6): a libevent evhttp server on a
 * thread of its own, serving the daemon's routes: `GET /healthz`, `GET /metrics` and its admin
 * operations (shard: stage / prepare / activate / retire a snapshot; broker: switch version;
 * profile service: checkpoint ...).
 *
 * Security: the listener binds 127.0.0.1 unless configured otherwise. A route marked `admin`
 * needs `Authorization: Bearer <token>`: no or a malformed header -> 401, a wrong token -> 403
 * (compared in constant time), and in both cases the handler is not called, so nothing
 * changes. A daemon started without a token refuses every admin route with 403.
 *
 * Handlers run on the admin thread, one at a time, and must answer each request exactly once
 * (ps_admin_reply*). They may block (a snapshot load, a cluster-wide check): the admin port is
 * not on the query path. Errors are the JSON of the broker's API:
 * {"error": {"code": "...", "type": "...", "message": "..."}} with ps_err_http_status.
 */
#ifndef PS_ADMIN_H
#define PS_ADMIN_H

#include <stddef.h>
#include <stdint.h>

#include "ps/buf.h"
#include "ps/err.h"

struct evhttp_request;
struct json_t;

/* One route's handler; `arg` is the route's. */
typedef void (*ps_admin_fn)(struct evhttp_request *req, void *arg);

enum { PS_ADMIN_GET = 1, PS_ADMIN_POST = 2, PS_ADMIN_PUT = 4, PS_ADMIN_DELETE = 8 };

typedef struct ps_admin_route {
    const char *path; /* exact path, or a prefix when it ends in '/' ("/admin/stage/") */
    int methods;      /* PS_ADMIN_GET | ...; another method gets 405 */
    int admin;        /* 1: needs the bearer token */
    ps_admin_fn fn;
    void *arg;
} ps_admin_route;

/* The admin port's connection limits (ps/httpguard.h), from the admin-max-connections and
 * admin-request-timeout-ms settings (ps_admin_limits_of). */
typedef struct ps_admin_limits {
    uint32_t max_connections;    /* open connections; over it: 503 and closed; 0: no cap */
    uint32_t request_timeout_ms; /* a request's first to last byte; over it: 408; 0: none */
} ps_admin_limits;

typedef struct ps_admin_cfg {
    const char *listen;           /* "host:port"; port 0 picks one (ps_admin_address tells) */
    const char *token;            /* the bearer token; NULL or "": admin routes answer 403 */
    size_t max_body;              /* bytes of one request body (larger: 413) */
    ps_admin_limits limits;       /* zero: no cap, no deadline */
    const char *comp;             /* log component ("shard", "broker", "profile") */
    const ps_admin_route *routes; /* borrowed; must outlive the server */
    size_t nroutes;
    /* Another credential an admin route accepts (the broker's API keys with the `admin`
     * scope): called with the bearer value when it is not the token; returns 0 (let in),
     * PS_EUNAUTH (not a credential: 401), PS_EFORBIDDEN (lacks the right: 403) or PS_ERATE
     * (429). NULL: the token alone. Runs on the admin thread. */
    int (*auth)(void *arg, const char *bearer, size_t n);
    void *auth_arg;
    int nice; /* > 0: the admin thread runs at this nice value and the lowest best-effort I/O
                 priority, so heavy admin work (a snapshot upload, its load) yields the CPU
                 and the disk to the threads serving queries */
} ps_admin_cfg;

typedef struct ps_admin ps_admin_t;

/* Bind cfg->listen and start the admin thread. Errors: PS_EINVAL (listen does not parse),
 * PS_EIO (bind failed: address in use ...), PS_ENOMEM. Caller owns the result. */
ps_admin_t *ps_admin_start(const ps_admin_cfg *cfg, ps_err *err);

/* The bound address, "127.0.0.1:7301" (borrowed, valid until ps_admin_stop). */
const char *ps_admin_address(const ps_admin_t *a);

/* Stop the thread (a handler running finishes first) and free everything. NULL is fine. */
void ps_admin_stop(ps_admin_t *a);

/* ---- answering ---------------------------------------------------------------------------- */

/* Send `len` bytes of `body` with `status` and `content_type`. */
void ps_admin_reply(struct evhttp_request *req, int status, const char *content_type,
                    const void *body, size_t len);
/* Send a JSON object (a jansson json_t; the reference is taken: the caller must not decref).
 * NULL (out of memory building it) answers 503. */
void ps_admin_reply_json(struct evhttp_request *req, int status, struct json_t *body);
/* Send the JSON error for `code` (a PS_E* code) with a printf-style message. */
void ps_admin_reply_error(struct evhttp_request *req, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Send err (its code and message). */
void ps_admin_reply_err(struct evhttp_request *req, const ps_err *err);

/* ---- reading requests --------------------------------------------------------------------- */

/* The request's path (borrowed, valid during the handler), never NULL. */
const char *ps_admin_path(struct evhttp_request *req);

/* Query parameter `name` of the request as an unsigned decimal. 0, PS_ENOTFOUND when absent,
 * PS_EINVAL (err names the parameter) when it is not a number in range. */
int ps_admin_param_u64(struct evhttp_request *req, const char *name, uint64_t *out, ps_err *err);
/* Query parameter `name`, decoded (malloc'd, caller frees), or NULL when absent. */
char *ps_admin_param_str(struct evhttp_request *req, const char *name);

/* The request body (borrowed, valid during the handler; not NUL-terminated). */
const void *ps_admin_body(struct evhttp_request *req, size_t *len);

/* ---- configuration ------------------------------------------------------------------------ */

/* The entries every daemon's config table (ps/config.h) has for its admin port: admin
 * (HOST:PORT), admin-token, admin-token-file, admin-max-connections, admin-request-timeout-ms.
 * `ops` names the daemon's admin operations in the help text. */
#define PS_ADMIN_CFG_OPTS(ops)                                                                     \
    {"admin",                                                                                      \
     PS_CFG_STRING,                                                                                \
     "127.0.0.1:0",                                                                                \
     "admin HTTP address HOST:PORT (port 0: a free one, named in the ready file): /healthz, "      \
     "/metrics, and behind the token " ops,                                                        \
     0,                                                                                            \
     0,                                                                                            \
     0},                                                                                           \
        {"admin-token",                                                                            \
         PS_CFG_STRING,                                                                            \
         NULL,                                                                                     \
         "bearer token of the admin operations (none: they answer 403); prefer "                   \
         "admin-token-file or PERSRV_ADMIN_TOKEN to a flag",                                       \
         0,                                                                                        \
         0,                                                                                        \
         0},                                                                                       \
        {"admin-token-file",                                                                       \
         PS_CFG_STRING,                                                                            \
         NULL,                                                                                     \
         "read the admin token from the first line of this file (admin-token wins when both "      \
         "are set)",                                                                               \
         0,                                                                                        \
         0,                                                                                        \
         0},                                                                                       \
        {"admin-max-connections",                                                                  \
         PS_CFG_UINT,                                                                              \
         "64",                                                                                     \
         "connections the admin port holds at once; more are answered 503 and closed (0: no "      \
         "cap)",                                                                                   \
         0,                                                                                        \
         0,                                                                                        \
         1000000},                                                                                 \
    {                                                                                              \
        "admin-request-timeout-ms", PS_CFG_UINT, "60000",                                          \
            "time an admin request gets from its first byte to its last, body included (a "        \
            "snapshot chunk upload); over it: 408 and closed (0: no limit)",                       \
            0, 0, 3600000                                                                          \
    }

/* The admin port's limits from the settings of PS_ADMIN_CFG_OPTS. */
struct ps_cfg;
ps_admin_limits ps_admin_limits_of(const struct ps_cfg *c);

/* ---- the token ---------------------------------------------------------------------------- */

/* The daemon's token from the `admin-token` setting, else the first line of the file named by
 * `admin-token-file` (either may be NULL). OUT *token: malloc'd (caller frees), NULL when
 * neither is set. Errors: PS_EIO (file unreadable), PS_EINVAL (empty token, one with
 * whitespace or control characters, longer than 256 bytes). */
int ps_admin_token_load(const char *token, const char *token_file, char **out, ps_err *err);

/* ---- metrics ------------------------------------------------------------------------------ */

/* A latency histogram for Prometheus: fixed buckets in seconds, counted with atomics from any
 * thread, rendered as `name_bucket{le=...}`, `name_sum`, `name_count`. */
#define PS_HIST_NBUCKETS 14
typedef struct ps_hist {
    _Atomic uint64_t bucket[PS_HIST_NBUCKETS + 1]; /* the last one is +Inf */
    _Atomic uint64_t count;
    _Atomic uint64_t sum_ns;
} ps_hist;

void ps_hist_observe(ps_hist *h, double seconds);
/* Append the exposition of h under `name` (with `help`) to b; out of memory is b's sticky
 * error (ps/buf.h). */
void ps_hist_render(const ps_hist *h, const char *name, const char *help, ps_buf *b);

#endif
