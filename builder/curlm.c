/*
 * curlm.c — the libcurl multi driver (curlm.h) under the model client and the push engine.
 *
 * Transfers wait in a doubly linked FIFO; a started one moves to the in-flight list, which is
 * how a drop finds the easy handles to end. Each attempt gets a fresh easy handle (cheap next to
 * the request, and no option leaks from one attempt into the next); the connections it used stay
 * in the multi handle's cache. A transfer's header list may hold a secret (a bearer token), so it
 * is wiped before it is freed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <curl/curl.h>

#include "curlm.h"
#include "pipeline.h"

#define CONNECT_MAX_MS 10000L

enum { ST_IDLE, ST_QUEUED, ST_ACTIVE };

_Static_assert(sizeof(((builder_curlm_xfer *)0)->cerr) >= CURL_ERROR_SIZE,
               "cerr is libcurl's error buffer");

typedef struct xlist {
    builder_curlm_xfer *head, *tail;
    size_t n;
} xlist;

struct builder_curlm {
    CURLM *multi;
    int parallel;
    xlist queue, active;
};

static void list_push(xlist *l, builder_curlm_xfer *t, int at_head)
{
    t->prev = t->next = NULL;
    if (!l->head) {
        l->head = l->tail = t;
    } else if (at_head) {
        t->next = l->head;
        l->head->prev = t;
        l->head = t;
    } else {
        t->prev = l->tail;
        l->tail->next = t;
        l->tail = t;
    }
    l->n++;
}

static void list_unlink(xlist *l, builder_curlm_xfer *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        l->head = t->next;
    if (t->next)
        t->next->prev = t->prev;
    else
        l->tail = t->prev;
    t->prev = t->next = NULL;
    l->n--;
}

builder_curlm_t *builder_curlm_new(int parallel, ps_err *err)
{
    static int global;
    if (!global) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            ps_err_set(err, PS_EINTERNAL, "libcurl: global init failed");
            return NULL;
        }
        global = 1;
    }
    builder_curlm_t *d = calloc(1, sizeof *d);
    if (!d) {
        ps_err_set(err, PS_ENOMEM, "out of memory for the HTTP driver");
        return NULL;
    }
    d->parallel = parallel > 0 ? parallel : 1;
    if (!(d->multi = curl_multi_init())) {
        free(d);
        ps_err_set(err, PS_EINTERNAL, "libcurl: curl_multi_init failed");
        return NULL;
    }
    return d;
}

void builder_curlm_xfer_clear(builder_curlm_xfer *t)
{
    ps_buf_free(&t->resp);
}

/* End t's easy handle and header list (wiped: it may hold a token). */
static void end_easy(builder_curlm_t *d, builder_curlm_xfer *t)
{
    if (t->easy) {
        curl_multi_remove_handle(d->multi, t->easy);
        curl_easy_cleanup(t->easy);
        t->easy = NULL;
    }
    for (struct curl_slist *s = t->hdrs; s; s = s->next) explicit_bzero(s->data, strlen(s->data));
    curl_slist_free_all(t->hdrs);
    t->hdrs = NULL;
}

void builder_curlm_forget_queued(builder_curlm_t *d)
{
    while (d->queue.head) {
        builder_curlm_xfer *t = d->queue.head;
        list_unlink(&d->queue, t);
        t->state = ST_IDLE;
    }
}

void builder_curlm_drop(builder_curlm_t *d)
{
    builder_curlm_forget_queued(d);
    while (d->active.head) {
        builder_curlm_xfer *t = d->active.head;
        list_unlink(&d->active, t);
        end_easy(d, t);
        builder_curlm_xfer_clear(t);
        t->state = ST_IDLE;
    }
}

void builder_curlm_free(builder_curlm_t *d)
{
    if (!d) return;
    builder_curlm_drop(d);
    curl_multi_cleanup(d->multi);
    free(d);
}

size_t builder_curlm_busy(const builder_curlm_t *d)
{
    return d->queue.n + d->active.n;
}

void builder_curlm_add(builder_curlm_t *d, builder_curlm_xfer *t, int at_head)
{
    builder_curlm_xfer_clear(t);
    t->cc = 0;
    t->cerr[0] = '\0';
    t->status = 0;
    t->retry_after = -1;
    t->too_big = 0;
    t->state = ST_QUEUED;
    list_push(&d->queue, t, at_head);
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *ud)
{
    builder_curlm_xfer *t = ud;
    size_t n = size * nmemb, keep = n;
    if (n > t->cap - t->resp.n) {
        if (t->cap_fails) {
            t->too_big = 1;
            return 0; /* libcurl aborts the transfer with CURLE_WRITE_ERROR */
        }
        keep = t->cap - t->resp.n;
    }
    if (keep) ps_buf_add(&t->resp, data, keep);
    return t->resp.rc ? 0 : n; /* out of memory: libcurl fails the transfer */
}

/* Start t. 0, or -1 (not started: cc and cerr say why). */
static int start(builder_curlm_t *d, builder_curlm_xfer *t)
{
    CURL *e = curl_easy_init();
    if (!e) goto fail;
    t->easy = e;
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, t->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     t->timeout_ms < CONNECT_MAX_MS ? t->timeout_ms : CONNECT_MAX_MS);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->cerr);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(e, CURLOPT_PRIVATE, t);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "persrv-builder");
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    if (t->cap_fails) curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)t->cap);
    if (t->setup && t->setup(t, e)) goto fail;
    if (curl_multi_add_handle(d->multi, e) != CURLM_OK) goto fail;
    t->state = ST_ACTIVE;
    list_push(&d->active, t, 0);
    return 0;
fail:
    end_easy(d, t);
    t->cc = CURLE_OUT_OF_MEMORY;
    if (!t->cerr[0]) snprintf(t->cerr, sizeof t->cerr, "out of memory starting the request");
    t->state = ST_IDLE;
    return -1;
}

/* t's transfer ended with cc: set its result, end its handle, call its done(). */
static void finish(builder_curlm_t *d, builder_curlm_xfer *t, CURLcode cc)
{
    t->cc = (int)cc;
    t->status = 0;
    if (cc == CURLE_OK) {
        curl_off_t ra = -1;
        t->cerr[0] = '\0';
        curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->status);
        if (curl_easy_getinfo(t->easy, CURLINFO_RETRY_AFTER, &ra) == CURLE_OK && ra >= 0)
            t->retry_after = ra > 86400 ? 86400 : (long)ra;
    } else if (!t->cerr[0]) {
        snprintf(t->cerr, sizeof t->cerr, "%s", curl_easy_strerror(cc));
    }
    list_unlink(&d->active, t);
    end_easy(d, t);
    t->state = ST_IDLE;
    if (t->done) t->done(t);
}

/* Start due transfers while slots are free. Returns the seconds until the next queued one that
 * is not due yet (-1: none waits); counts the done() calls of those that could not start. */
static double start_due(builder_curlm_t *d, int *ended)
{
    double now = builder_now(), wait = -1;
    builder_curlm_xfer *t = d->queue.head;
    while (t && d->active.n < (size_t)d->parallel) {
        builder_curlm_xfer *next = t->next;
        if (t->not_before > now) {
            if (wait < 0 || t->not_before - now < wait) wait = t->not_before - now;
            t = next;
            continue;
        }
        list_unlink(&d->queue, t);
        if (start(d, t) == 0) {
            t = next;
            continue;
        }
        (*ended)++;
        if (t->done) t->done(t);
        t = d->queue.head; /* done() may have queued more: rescan */
    }
    return wait;
}

int builder_curlm_step(builder_curlm_t *d, int max_ms, int *ended, ps_err *err)
{
    int running = 0, n = 0;
    double wait = start_due(d, &n);
    CURLMcode mc = curl_multi_perform(d->multi, &running);
    CURLMsg *msg;
    int left;
    while (mc == CURLM_OK && (msg = curl_multi_info_read(d->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE) continue;
        builder_curlm_xfer *t = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t);
        if (t) {
            finish(d, t, msg->data.result);
            n++;
        }
    }
    if (n) wait = start_due(d, &n); /* what the callbacks queued starts now */
    if (ended) *ended = n;
    if (mc == CURLM_OK && !n && max_ms > 0) {
        /* Sleep until a socket is ready, libcurl's own timer (it shortens the wait for handles
         * just added), the next delayed transfer or max_ms. */
        int ms = max_ms;
        if (wait >= 0 && wait * 1000 < ms) ms = (int)(wait * 1000) + 1;
        mc = curl_multi_poll(d->multi, NULL, 0, ms, NULL);
    }
    if (mc != CURLM_OK) {
        builder_curlm_drop(d);
        return ps_err_set(err, PS_EINTERNAL, "libcurl: %s", curl_multi_strerror(mc));
    }
    return 0;
}
