/*
 * push.c — the libcurl multi engine behind `builder push` and `builder activate` (push.h).
 *
 * The transfers go through the libcurl multi driver the model client uses too (curlm.h): one
 * CURLM handle whose connection cache keeps one keep-alive connection per daemon, a FIFO in
 * which queued requests wait until a slot is free (at most `parallel` in flight) and their
 * not_before has passed, which is how callers sleep between retries without blocking the other
 * transfers. This file adds the admin requests: headers (the token), methods, and a chunk body
 * read from its file with pread in libcurl's upload-buffer pieces, so no chunk is ever held
 * whole. A response is kept up to RESP_MAX bytes and the rest dropped: a daemon's error is
 * short, and a long body is not worth failing the request for.
 */
#include <errno.h>
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <curl/curl.h>

#include "pipeline.h"
#include "push.h"

#define RESP_MAX (1u << 20)

struct builder_http {
    builder_curlm_t *drv;
    char *token;
    int cancel; /* winding down: builder_http_add is ignored */
};

void builder_xfer_clear(builder_xfer *x)
{
    free(x->resp);
    x->resp = NULL;
    x->resp_len = 0;
}

void builder_xfer_init(builder_xfer *x)
{
    builder_xfer_clear(x);
    memset(x, 0, sizeof *x);
    x->fd = -1;
}

builder_http_t *builder_http_new(const char *token, int parallel, ps_err *err)
{
    builder_http_t *h = calloc(1, sizeof *h);
    if (!h || (token && !(h->token = strdup(token)))) {
        builder_http_free(h);
        ps_err_set(err, PS_ENOMEM, "out of memory for the HTTP engine");
        return NULL;
    }
    if (!(h->drv = builder_curlm_new(parallel, err))) {
        builder_http_free(h);
        return NULL;
    }
    return h;
}

/* Requests already sent may be executing on their daemon: dropping them would let them take
 * effect after whatever the caller does next (an abort overtaken by a late stage), so they
 * finish; only what was never sent is forgotten. */
void builder_http_cancel(builder_http_t *h)
{
    h->cancel = 1;
    builder_curlm_forget_queued(h->drv);
}

void builder_http_free(builder_http_t *h)
{
    if (!h) return;
    builder_curlm_free(h->drv);
    if (h->token) {
        explicit_bzero(h->token, strlen(h->token));
        free(h->token);
    }
    free(h);
}

static size_t on_read(char *buf, size_t size, size_t nitems, void *ud)
{
    builder_xfer *x = ud;
    uint64_t total = x->fd >= 0 ? x->len : x->body_len;
    size_t n = size * nitems;
    if (x->sent >= total) return 0;
    if (n > total - x->sent) n = (size_t)(total - x->sent);
    if (x->fd < 0) {
        memcpy(buf, x->body + x->sent, n);
    } else {
        ssize_t r;
        do r = pread(x->fd, buf, n, (off_t)(x->off + x->sent));
        while (r < 0 && errno == EINTR);
        if (r <= 0) { /* an error, or the file shrank under us */
            x->read_errno = r < 0 ? errno : EIO;
            return CURL_READFUNC_ABORT;
        }
        n = (size_t)r;
    }
    x->sent += n;
    return n;
}

/* libcurl rewinds a body it has to send again (a reused connection that was closed). */
static int on_seek(void *ud, curl_off_t offset, int origin)
{
    builder_xfer *x = ud;
    uint64_t total = x->fd >= 0 ? x->len : x->body_len;
    if (origin != SEEK_SET || offset < 0 || (uint64_t)offset > total) return CURL_SEEKFUNC_FAIL;
    x->sent = (uint64_t)offset;
    return CURL_SEEKFUNC_OK;
}

static builder_xfer *xfer_of(builder_curlm_xfer *t)
{
    return (builder_xfer *)(void *)((char *)t - offsetof(builder_xfer, t));
}

/* The driver starts x: its headers (the token's copy is wiped by the driver), method and body.
 * 0, or -1 (out of memory). */
static int xfer_setup(builder_curlm_xfer *t, void *e)
{
    builder_xfer *x = xfer_of(t);
    struct curl_slist *hd = NULL, *n;
    char line[600];
#define ADD_HDR(s)                                                                                 \
    do {                                                                                           \
        if (!(n = curl_slist_append(hd, (s)))) goto oom;                                           \
        t->hdrs = hd = n;                                                                          \
    } while (0)
    ADD_HDR("Expect:"); /* no 100-continue round trip before each chunk */
    if (x->admin && x->h->token) {
        snprintf(line, sizeof line, "Authorization: Bearer %s", x->h->token);
        ADD_HDR(line);
        explicit_bzero(line, sizeof line);
    }
    if (x->ctype) {
        snprintf(line, sizeof line, "Content-Type: %s", x->ctype);
        ADD_HDR(line);
    }
#undef ADD_HDR
    uint64_t blen = x->fd >= 0 ? x->len : x->body_len;
    curl_easy_setopt(e, CURLOPT_URL, x->url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hd);
    if (strcmp(x->method, "GET") != 0) {
        curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(e, CURLOPT_READDATA, x);
        curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, on_seek);
        curl_easy_setopt(e, CURLOPT_SEEKDATA, x);
        curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, 512L * 1024);
        if (strcmp(x->method, "PUT") == 0) {
            curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
            curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)blen);
        } else {
            curl_easy_setopt(e, CURLOPT_POST, 1L);
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
        }
    }
    x->active = 1;
    return 0;
oom:
    explicit_bzero(line, sizeof line);
    return -1;
}

/* x's transfer ended (or did not start): hand its result over, call its callback. */
static void xfer_done(builder_curlm_xfer *t)
{
    builder_xfer *x = xfer_of(t);
    x->active = 0;
    x->cc = t->cc;
    x->status = t->status;
    snprintf(x->cerr, sizeof x->cerr, "%s", t->cerr);
    if (x->read_errno)
        snprintf(x->cerr, sizeof x->cerr, "reading the file: %s", strerror(x->read_errno));
    x->resp = t->resp.p; /* NULL when empty, as before */
    x->resp_len = t->resp.n;
    t->resp = (ps_buf)PS_BUF_INIT;
    if (x->done) x->done(x);
}

void builder_http_add(builder_http_t *h, builder_xfer *x)
{
    if (h->cancel) return; /* draining: nothing new */
    builder_xfer_clear(x);
    x->cc = 0;
    x->cerr[0] = '\0';
    x->status = 0;
    x->sent = 0;
    x->read_errno = 0;
    x->h = h;
    x->t.timeout_ms = x->timeout_ms;
    x->t.cap = RESP_MAX;
    x->t.cap_fails = 0;
    x->t.not_before = x->not_before;
    x->t.setup = xfer_setup;
    x->t.done = xfer_done;
    builder_curlm_add(h->drv, &x->t, 0);
}

int builder_http_run(builder_http_t *h, void (*tick)(void *arg), void *arg, ps_err *err)
{
    double last_tick = 0;
    int rc = 0;
    while (builder_curlm_busy(h->drv)) {
        if ((rc = builder_curlm_step(h->drv, 100, NULL, err))) break;
        double now = builder_now();
        if (tick && now - last_tick >= 0.1) {
            last_tick = now;
            tick(arg);
        }
    }
    h->cancel = 0;
    if (!rc && tick) tick(arg);
    return rc;
}

/* The daemon's {"error": {"code", "message"}}, when the body is one. */
static int daemon_error(const builder_xfer *x, char *code, size_t csize, char *msg, size_t msize)
{
    if (!x->resp || !x->resp_len) return 0;
    json_t *o = json_loadb(x->resp, x->resp_len, 0, NULL);
    json_t *e = json_object_get(o, "error");
    const char *c = json_string_value(json_object_get(e, "code"));
    const char *m = json_string_value(json_object_get(e, "message"));
    int ok = c || m;
    snprintf(code, csize, "%s", c ? c : "");
    snprintf(msg, msize, "%s", m ? m : "");
    json_decref(o);
    return ok;
}

const char *builder_xfer_reason(const builder_xfer *x, char *buf, size_t size)
{
    char code[64], msg[512];
    if (x->cc) {
        snprintf(buf, size, "%s", x->cerr[0] ? x->cerr : curl_easy_strerror((CURLcode)x->cc));
    } else if (daemon_error(x, code, sizeof code, msg, sizeof msg)) {
        snprintf(buf, size, "HTTP %ld %s: %s", x->status, code, msg);
    } else if (x->resp_len) {
        /* not our JSON (a proxy, libevent's own HTML): its first printable bytes */
        char body[160];
        size_t n = 0;
        for (size_t i = 0; i < x->resp_len && n + 1 < sizeof body; i++) {
            unsigned char c = (unsigned char)x->resp[i];
            body[n++] = c >= 0x20 && c < 0x7f ? (char)c : ' ';
        }
        body[n] = '\0';
        snprintf(buf, size, "HTTP %ld: %s", x->status, body);
    } else {
        snprintf(buf, size, "HTTP %ld with an empty body", x->status);
    }
    if (x->status == 401) {
        size_t n = strlen(buf);
        snprintf(buf + n, size - n, " (no token reached it: --token-file or PERSRV_ADMIN_TOKEN)");
    } else if (x->status == 403) {
        size_t n = strlen(buf);
        snprintf(buf + n, size - n, " (the daemon refused the admin token)");
    }
    return buf;
}

int builder_xfer_code(const builder_xfer *x)
{
    char code[64], msg[8];
    if (x->cc) return x->cc == CURLE_OPERATION_TIMEDOUT ? PS_ETIMEDOUT : PS_EUNAVAIL;
    if (daemon_error(x, code, sizeof code, msg, sizeof msg)) /* the daemon's own, if ours */
        for (int c = -1; c >= -64; c--) /* the table's codes (beyond: "internal") */
            if (strcmp(code, ps_errname(c)) == 0) return c;
    switch (x->status) {
    case 400:
        return PS_EINVAL;
    case 401:
        return PS_EUNAUTH;
    case 403:
        return PS_EFORBIDDEN;
    case 404:
        return PS_ENOTFOUND;
    case 409:
        return PS_ECONFLICT;
    case 413:
        return PS_ETOOBIG;
    case 503:
        return PS_EUNAVAIL;
    case 504:
        return PS_ETIMEDOUT;
    default:
        return x->status >= 500 ? PS_EIO : PS_EINTERNAL;
    }
}

int builder_xfer_transient(const builder_xfer *x)
{
    if (x->cc) return !x->read_errno && x->cc != CURLE_OUT_OF_MEMORY;
    return x->status == 502 || x->status == 503 || x->status == 504;
}
