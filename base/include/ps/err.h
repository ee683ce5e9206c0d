/*
 * err.h — the one error table of the engine.
 *
 * Every fallible function returns 0 or a negative PS_E* code. Details go into a
 * caller-supplied ps_err that names the field or parameter at fault; `err` may be NULL
 * everywhere. PS_ERRNO_MAP is the single source of codes, stable names (used as the
 * "code" of JSON errors), messages and HTTP status.
 */
#ifndef PS_ERR_H
#define PS_ERR_H

#include <stdarg.h>

/*      name        value  stable code          http  message */
#define PS_ERRNO_MAP(X)                                                                            \
    X(EINVAL, -1, "invalid_argument", 400, "invalid argument")                                     \
    X(EUTF8, -2, "invalid_utf8", 400, "invalid UTF-8")                                             \
    X(EQUERY, -3, "invalid_query", 400, "query has no searchable token")                           \
    X(ETOOBIG, -4, "too_large", 413, "input exceeds a size cap")                                   \
    X(EPARSE, -5, "parse_error", 400, "malformed input")                                           \
    X(ENOTFOUND, -6, "not_found", 404, "not found")                                                \
    X(ENOMEM, -7, "out_of_memory", 503, "out of memory")                                           \
    X(EIO, -8, "io_error", 500, "input/output error")                                              \
    X(ECORRUPT, -9, "corrupt", 500, "stored data is corrupt")                                      \
    X(ESTORE, -10, "storage_error", 500, "storage engine error")                                   \
    X(EINTERNAL, -11, "internal", 500, "internal error")                                           \
    X(EEXIST, -12, "already_exists", 409, "already exists")                                        \
    X(EUNAVAIL, -13, "unavailable", 503, "service unavailable")                                    \
    X(ETIMEDOUT, -14, "timed_out", 504, "timed out")                                               \
    X(EUNAUTH, -15, "unauthorized", 401, "authorization required")                                 \
    X(EFORBIDDEN, -16, "forbidden", 403, "forbidden")                                              \
    X(ECONFLICT, -17, "conflict", 409, "conflicts with the current state")                         \
    X(ERATE, -18, "rate_limited", 429, "over the rate limit")                                      \
    X(EINDOUBT, -19, "outcome_unknown", 504, "sent, but whether it was stored is unknown")

enum {
    PS_OK = 0,
#define PS__ERR_ENUM(name, val, code, http, msg) PS_##name = (val),
    PS_ERRNO_MAP(PS__ERR_ENUM)
#undef PS__ERR_ENUM
};

typedef struct ps_err {
    int code;      /* 0 or a PS_E* code */
    char msg[256]; /* what failed and where; "" when code == 0 */
} ps_err;

/* Static message for a code ("unknown error" for codes outside the table). */
const char *ps_strerror(int code);
/* Stable machine-readable name ("invalid_query"), "ok" for 0. */
const char *ps_errname(int code);
/* HTTP status for a code (200 for 0, 500 for unknown codes). */
int ps_err_http_status(int code);

/* Record `code` and a printf-style message in err (if err is not NULL).
 * Returns code, so callers can write `return ps_err_set(err, PS_EINVAL, "...")`. */
int ps_err_set(ps_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Reset err to the "no error" state (NULL is fine). */
void ps_err_clear(ps_err *err);
/* Prefix the message already in err with "prefix: " (used to add context on the way up). */
void ps_err_prefix(ps_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
