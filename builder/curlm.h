/*
 * curlm.h — the libcurl multi driver that the model client (models.c) and the push engine
 * (push.c) share: one CURLM handle whose connection cache keeps keep-alive connections, a FIFO
 * of transfers that start when one of `parallel` slots is free and their not_before has passed,
 * a fresh easy handle per attempt, a timeout and a response size cap per transfer, and a
 * callback per transfer when it ends. Its callers own the policy: what a request looks like,
 * when to retry, when to stop driving.
 *
 * One thread: add, step and every callback happen in the caller's thread, callbacks inside
 * builder_curlm_step. The header knows no libcurl type: `easy` is a CURL *, `hdrs` a
 * struct curl_slist *.
 */
#ifndef BUILDER_CURLM_H
#define BUILDER_CURLM_H

#include <stddef.h>

#include "ps/buf.h"
#include "ps/err.h"

typedef struct builder_curlm builder_curlm_t;
typedef struct builder_curlm_xfer builder_curlm_xfer;

struct builder_curlm_xfer {
    /* ---- request: set by the owner before builder_curlm_add ---- */
    long timeout_ms;   /* the whole transfer, connect included (connect: at most 10 s) */
    size_t cap;        /* response bytes kept at most */
    int cap_fails;     /* 1: a longer response aborts the transfer (too_big); 0: the rest is
                          read and dropped */
    double not_before; /* builder_now() before which it is not started (0: at once) */
    /* As it starts: set the request's own options on `easy` (URL, method, body; headers, which
     * may go into hdrs). 0, or -1: not started, done() follows with cc CURLE_OUT_OF_MEMORY and
     * cerr as setup left it (a default when empty). */
    int (*setup)(builder_curlm_xfer *t, void *easy);
    /* The transfer ended: the result fields are set and its easy handle is gone. It may add t
     * again (a retry) or others. */
    void (*done)(builder_curlm_xfer *t);
    void *hdrs; /* a curl_slist setup may hand over: wiped (it may hold a secret) and freed
                   when the transfer ends */

    /* ---- result: set before done() ---- */
    int cc;           /* 0, or the CURLcode of a transport failure (no whole HTTP answer) */
    char cerr[256];   /* libcurl's message for cc ("" when cc == 0) */
    long status;      /* HTTP status (0 when cc != 0) */
    long retry_after; /* the Retry-After header in seconds, -1 when none */
    int too_big;      /* cap_fails and the response was longer than cap */
    ps_buf resp;      /* the response body (resp.p NUL-terminated, NULL when empty; resp.n
                         bytes): the owner's until builder_curlm_add or
                         builder_curlm_xfer_clear frees it */

    /* ---- private to curlm.c ---- */
    void *easy;
    builder_curlm_xfer *prev, *next; /* the queue, or the in-flight list */
    int state;
};

/* A driver for at most `parallel` transfers in flight (< 1 means 1). Errors (NULL returned):
 * PS_ENOMEM, PS_EINTERNAL (libcurl init). Caller owns the result: builder_curlm_free. */
builder_curlm_t *builder_curlm_new(int parallel, ps_err *err);
/* Drop every transfer (no callbacks) and free. NULL is fine. */
void builder_curlm_free(builder_curlm_t *d);

/* Queue t (at the head of the FIFO when at_head: a retry need not wait behind everything queued
 * after it). t must stay valid until its done() or a drop; its result fields are reset and a
 * previous response freed. */
void builder_curlm_add(builder_curlm_t *d, builder_curlm_xfer *t, int at_head);

/* One turn: start the due transfers while slots are free, let libcurl work, call done() for
 * each transfer that ended (also one that could not start) and start what those queued. When
 * none ended, wait up to max_ms for a socket, libcurl's timer or the next queued transfer's
 * not_before (0: no wait). OUT *ended: done() calls made. Returns 0, or PS_EINTERNAL when
 * libcurl's multi interface failed (err says how; every transfer is then dropped, no
 * callbacks). */
int builder_curlm_step(builder_curlm_t *d, int max_ms, int *ended, ps_err *err);

/* Transfers queued or in flight. */
size_t builder_curlm_busy(const builder_curlm_t *d);
/* Forget the queued transfers that never started (no callbacks); those in flight go on. */
void builder_curlm_forget_queued(builder_curlm_t *d);
/* Forget every transfer, in flight too (no callbacks; partial responses freed). */
void builder_curlm_drop(builder_curlm_t *d);

/* Free t's response. */
void builder_curlm_xfer_clear(builder_curlm_xfer *t);

#endif
