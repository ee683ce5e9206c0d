/*
 * push.h — the HTTP engine of `builder push` and `builder activate`: many admin requests to
 * many daemons at once over one libcurl multi handle, at most `parallel` of them in flight.
 *
 * A request is a builder_xfer the caller owns: it fills the request fields, hands it to
 * builder_http_add and gets it back, once, in its `done` callback with the result fields set
 * (from inside builder_http_run). The callback may add the same xfer again (the next chunk of
 * a file, a retry after a backoff) or others. A body is either borrowed memory or a range of
 * an open file, read with pread as libcurl sends it (nothing is loaded whole).
 *
 * The admin token goes into an `Authorization: Bearer` header of admin requests only; it is
 * never logged, and the header copies are wiped when a request ends.
 */
#ifndef BUILDER_PUSH_H
#define BUILDER_PUSH_H

#include <stddef.h>
#include <stdint.h>

#include "curlm.h"
#include "ps/err.h"

typedef struct builder_http builder_http_t;
typedef struct builder_xfer builder_xfer;

struct builder_xfer {
    /* ---- request: set by the caller before builder_http_add ---- */
    const char *method;            /* "GET", "POST" or "PUT" */
    char url[1280];                /* the whole URL */
    int admin;                     /* 1: send the bearer token */
    const char *body;              /* borrowed memory body (NULL: none, or the file range below) */
    size_t body_len;               /* its bytes */
    int fd;                        /* >= 0: the body is bytes [off, off+len) of this file */
    uint64_t off, len;             /* that range */
    const char *ctype;             /* Content-Type of a body (NULL: none) */
    long timeout_ms;               /* the whole request, connect included */
    double not_before;             /* builder_now() before which it is not started (0: at once) */
    void (*done)(builder_xfer *x); /* called once the request ended; may re-add x */
    void *arg;                     /* the caller's */

    /* ---- result: set before `done` is called ---- */
    int cc;          /* 0, or the CURLcode of a transport failure (no HTTP answer) */
    char cerr[256];  /* libcurl's message for cc */
    long status;     /* HTTP status (0 when cc != 0) */
    char *resp;      /* the response body, NUL-terminated (owned; kept until re-add) */
    size_t resp_len; /* its bytes (at most 1 MiB are kept) */
    uint64_t sent;   /* body bytes handed to libcurl so far (progress) */
    int read_errno;  /* pread failed (cc is then CURLE_ABORTED_BY_CALLBACK) */

    /* ---- private to push.c ---- */
    builder_curlm_xfer t; /* its transfer through the shared libcurl driver */
    builder_http_t *h;
    int active; /* in flight (the push's progress line reads it) */
};

/* Prepare x as a fresh request (zeroes it; fd = -1). Frees a previous response. */
void builder_xfer_init(builder_xfer *x);
/* Free x's response (x itself is the caller's). */
void builder_xfer_clear(builder_xfer *x);

/* The engine: token may be NULL (admin requests then go without one); it is copied. parallel:
 * requests in flight at most (>= 1). Errors: PS_ENOMEM, PS_EINTERNAL (libcurl init). */
builder_http_t *builder_http_new(const char *token, int parallel, ps_err *err);
/* Cancel what is left (no callbacks) and free everything; wipes the token. NULL is fine. */
void builder_http_free(builder_http_t *h);

/* Queue x (x must stay valid until its `done`). The result fields are reset. */
void builder_http_add(builder_http_t *h, builder_xfer *x);

/* Run until every queued request has ended (and whatever their callbacks added). tick(arg),
 * when not NULL, is called at least every 100 ms. Returns 0, or PS_EINTERNAL (libcurl failed:
 * err says how; what was in flight is dropped). */
int builder_http_run(builder_http_t *h, void (*tick)(void *arg), void *arg, ps_err *err);

/* From a callback or tick: wind the run down. Queued requests that were never sent are
 * forgotten and builder_http_add is ignored until the run returns; requests in flight finish
 * (their `done` runs), since a daemon may be executing them: whatever the caller does next
 * (undo) is not overtaken by them. */
void builder_http_cancel(builder_http_t *h);

/* "Couldn't connect to server: ..." or "HTTP 403 forbidden: <the daemon's message>": what a
 * finished request came to, for error messages, in buf (always NUL-terminated). */
const char *builder_xfer_reason(const builder_xfer *x, char *buf, size_t size);

/* The PS_E* code that fits a finished request that failed (PS_EUNAVAIL for no answer,
 * PS_ETIMEDOUT, the daemon's code by its status ...). */
int builder_xfer_code(const builder_xfer *x);

/* 1 when x came to nothing on the wire or to a 502/503/504: worth another try. */
int builder_xfer_transient(const builder_xfer *x);

#endif
