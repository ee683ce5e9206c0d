/*
 * push.c — the libcurl multi engine behind `builder push` and `builder activate` (push.h).
 *
 * One CURLM handle; its connection cache keeps one keep-alive connection per daemon across
 * requests. Queued requests wait in a FIFO until a slot is free (at most `parallel` in flight)
 * and their not_before has passed, which is how callers sleep between retries without
 * blocking the other transfers. Each request gets a fresh easy handle; a chunk body is read
 * from its file with pread in libcurl's upload-buffer pieces, so no chunk is ever held whole.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <curl/curl.h>

#include "pipeline.h"
#include "push.h"

#define RESP_MAX (1u << 20)

struct builder_http {
    CURLM *multi;
    char *token;
    int parallel, nactive, cancel;
    builder_xfer *head, *tail; /* queued, not started */
    builder_xfer **active;     /* parallel slots */
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
    static int global;
    if (!global) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            ps_err_set(err, PS_EINTERNAL, "libcurl: global init failed");
            return NULL;
        }
        global = 1;
    }
    builder_http_t *h = calloc(1, sizeof *h);
    if (!h || !(h->active = calloc((size_t)(parallel > 0 ? parallel : 1), sizeof *h->active)) ||
        (token && !(h->token = strdup(token)))) {
        builder_http_free(h);
        ps_err_set(err, PS_ENOMEM, "out of memory for the HTTP engine");
        return NULL;
    }
    h->parallel = parallel > 0 ? parallel : 1;
    if (!(h->multi = curl_multi_init())) {
        builder_http_free(h);
        ps_err_set(err, PS_EINTERNAL, "libcurl: curl_multi_init failed");
        return NULL;
    }
    return h;
}

/* Free an easy handle and its header list; the list holds a copy of the token: wipe it. */
static void end_easy(builder_http_t *h, builder_xfer *x)
{
    if (x->easy) {
        curl_multi_remove_handle(h->multi, x->easy);
        curl_easy_cleanup(x->easy);
        x->easy = NULL;
    }
    for (struct curl_slist *s = x->hdrs; s; s = s->next) explicit_bzero(s->data, strlen(s->data));
    curl_slist_free_all(x->hdrs);
    x->hdrs = NULL;
    x->active = 0;
}

/* Requests already sent may be executing on their daemon: dropping them would let them take
 * effect after whatever the caller does next (an abort overtaken by a late stage), so they
 * finish; only what was never sent is forgotten. */
void builder_http_cancel(builder_http_t *h)
{
    h->cancel = 1;
    h->head = h->tail = NULL;
}

/* Drop everything in flight and queued (no callbacks). */
static void drop_all(builder_http_t *h)
{
    for (int i = 0; i < h->parallel; i++)
        if (h->active[i]) {
            end_easy(h, h->active[i]);
            h->active[i] = NULL;
        }
    h->nactive = 0;
    h->head = h->tail = NULL;
    h->cancel = 0;
}

void builder_http_free(builder_http_t *h)
{
    if (!h) return;
    if (h->active) drop_all(h);
    if (h->multi) curl_multi_cleanup(h->multi);
    if (h->token) {
        explicit_bzero(h->token, strlen(h->token));
        free(h->token);
    }
    free(h->active);
    free(h);
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
    x->next = NULL;
    if (h->tail)
        h->tail->next = x;
    else
        h->head = x;
    h->tail = x;
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *ud)
{
    builder_xfer *x = ud;
    size_t n = size * nmemb, keep = n;
    if (x->resp_len + keep > RESP_MAX) keep = RESP_MAX - x->resp_len; /* the rest is dropped */
    if (keep) {
        char *r = realloc(x->resp, x->resp_len + keep + 1);
        if (!r) return 0; /* libcurl fails the transfer with CURLE_WRITE_ERROR */
        memcpy(r + x->resp_len, data, keep);
        x->resp = r;
        x->resp_len += keep;
        r[x->resp_len] = '\0';
    }
    return n;
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

/* Start x: build its easy handle and hand it to the multi handle. 0, or -1 (x has failed:
 * cc and cerr say why). */
static int start(builder_http_t *h, builder_xfer *x)
{
    CURL *e = curl_easy_init();
    struct curl_slist *hd = NULL, *t;
    char line[600];
    if (!e) goto oom;
    x->easy = e;
#define ADD_HDR(s)                                                                                 \
    do {                                                                                           \
        if (!(t = curl_slist_append(hd, (s)))) goto oom;                                           \
        hd = t;                                                                                    \
    } while (0)
    ADD_HDR("Expect:"); /* no 100-continue round trip before each chunk */
    if (x->admin && h->token) {
        snprintf(line, sizeof line, "Authorization: Bearer %s", h->token);
        ADD_HDR(line);
        explicit_bzero(line, sizeof line);
    }
    if (x->ctype) {
        snprintf(line, sizeof line, "Content-Type: %s", x->ctype);
        ADD_HDR(line);
    }
#undef ADD_HDR
    x->hdrs = hd;
    uint64_t blen = x->fd >= 0 ? x->len : x->body_len;
    long connect_ms = x->timeout_ms < 10000 ? x->timeout_ms : 10000;
    curl_easy_setopt(e, CURLOPT_URL, x->url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, x->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->cerr);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "persrv-builder");
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
    if (curl_multi_add_handle(h->multi, e) != CURLM_OK) goto oom;
    x->active = 1;
    return 0;
oom:
    curl_slist_free_all(hd);
    x->hdrs = NULL;
    if (e) curl_easy_cleanup(e);
    x->easy = NULL;
    x->cc = CURLE_OUT_OF_MEMORY;
    snprintf(x->cerr, sizeof x->cerr, "out of memory starting the request");
    return -1;
}

/* Finish x (its easy handle is done) and call its callback. */
static void finish(builder_http_t *h, builder_xfer *x, CURLcode cc)
{
    x->cc = (int)cc;
    x->status = 0;
    if (cc == CURLE_OK)
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->status);
    else if (!x->cerr[0])
        snprintf(x->cerr, sizeof x->cerr, "%s", curl_easy_strerror(cc));
    if (x->read_errno)
        snprintf(x->cerr, sizeof x->cerr, "reading the file: %s", strerror(x->read_errno));
    end_easy(h, x);
    for (int i = 0; i < h->parallel; i++)
        if (h->active[i] == x) {
            h->active[i] = NULL;
            h->nactive--;
        }
    if (x->done) x->done(x);
}

/* Start queued requests that are due while slots are free. Returns the seconds until the next
 * not-yet-due queued request (-1: none waits). */
static double start_due(builder_http_t *h)
{
    double now = builder_now(), wait = -1;
    builder_xfer *prev = NULL, *x = h->head;
    while (x && h->nactive < h->parallel && !h->cancel) {
        builder_xfer *next = x->next;
        if (x->not_before > now) {
            if (wait < 0 || x->not_before - now < wait) wait = x->not_before - now;
            prev = x;
            x = next;
            continue;
        }
        if (prev)
            prev->next = next;
        else
            h->head = next;
        if (h->tail == x) h->tail = prev;
        x->next = NULL;
        if (start(h, x) == 0) {
            for (int i = 0; i < h->parallel; i++)
                if (!h->active[i]) {
                    h->active[i] = x;
                    break;
                }
            h->nactive++;
        } else if (x->done) {
            x->done(x); /* may queue more: rescan from the head */
            prev = NULL;
            x = h->head;
            continue;
        }
        x = next;
    }
    return wait;
}

int builder_http_run(builder_http_t *h, void (*tick)(void *arg), void *arg, ps_err *err)
{
    double last_tick = 0;
    double wait = start_due(h);
    while (h->head || h->nactive) {
        int running = 0;
        CURLMcode mc = curl_multi_perform(h->multi, &running);
        CURLMsg *m;
        int left;
        while (mc == CURLM_OK && (m = curl_multi_info_read(h->multi, &left)) != NULL) {
            if (m->msg != CURLMSG_DONE) continue;
            builder_xfer *x = NULL;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
            if (x) finish(h, x, m->data.result);
        }
        double now = builder_now();
        if (mc == CURLM_OK && tick && now - last_tick >= 0.1) {
            last_tick = now;
            tick(arg);
        }
        wait = start_due(h); /* what the callbacks queued starts now */
        if (!h->head && !h->nactive) break;
        /* Sleep until a socket is ready, libcurl's own timer, the next delayed request or
         * 100 ms (the tick); libcurl shortens the wait itself for handles just added. */
        int ms = 100;
        if (wait >= 0 && wait * 1000 < ms) ms = (int)(wait * 1000) + 1;
        if (mc == CURLM_OK) mc = curl_multi_poll(h->multi, NULL, 0, ms, NULL);
        if (mc != CURLM_OK) {
            drop_all(h);
            return ps_err_set(err, PS_EINTERNAL, "libcurl: %s", curl_multi_strerror(mc));
        }
    }
    h->cancel = 0;
    if (tick) tick(arg);
    return 0;
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
