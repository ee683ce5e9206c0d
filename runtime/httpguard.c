/*
 * httpguard.c — connection caps, request deadlines, accept() back-off and strict framing for
 * libevent evhttp servers (interface and rules in ps/httpguard.h).
 *
 * A connection's life, as the guard sees it:
 *
 *   accept   evhttp calls on_bev for a bufferevent: the guard makes it, takes a reference, and
 *            watches both its evbuffers. The evhttp_connection does not exist yet.
 *   adopt    in the same loop turn (work_ev, made active by on_bev) the guard finds the
 *            connection through the bufferevent's callback argument and sets its close
 *            callback, then drops its reference. Had evhttp already given the connection up,
 *            the bufferevent's callbacks are NULL: the guard's reference was the last.
 *            A connection over the door's cap is answered 503 here and freed.
 *   read     on_input scans every byte evhttp is about to parse (before it does), following
 *            libevent 2.1's own framing rules: request line, headers (Content-Length,
 *            Transfer-Encoding), a body of Content-Length bytes or chunks, trailer. A request's
 *            first byte starts its clock and its last byte stops it; a bad chunk size drains
 *            the input (evhttp never sees it) and marks the connection for work_ev, which
 *            answers 400 and frees it.
 *   write    on_output sees each response start. libevent's own error page
 *            (evhttp_send_error: "<HTML><HEAD>\n<TITLE>..." after the headers) is replaced,
 *            once complete in the buffer and before a byte of it is written, by the JSON
 *            error shape with the same status (and a message the scanner's state explains).
 *   sweep    a timer cuts every request older than request_timeout_ms: 408, freed.
 *   close    evhttp_connection_free calls on_close: the guard forgets the connection.
 *
 * The guard's direct answers (503, 408, 400) go straight to the socket: the connection is
 * reading a request then, so its output buffer is empty (otherwise the guard only closes).
 * Unread input is discarded first, so that close() sends a FIN, not a reset that would lose
 * the answer.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#include "ps/admin.h"
#include "ps/httpguard.h"
#include "ps/log.h"

#define MAX_DOORS     4
#define MAX_LISTENERS 4
#define LINE_PREFIX   48 /* bytes of a request, header or chunk-size line the scanner keeps */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- rate-limited log lines ------------------------------------------------------------- */

/* At most one line per interval; the events in between are counted into the next line. */
typedef struct ratelog {
    pthread_mutex_t mu;
    double next;
    uint64_t pending;
} ratelog;

/* Count n events at `now`. Returns the number to report when a line may be written now (all
 * the events since the last line), else 0. */
static uint64_t ratelog_take(ratelog *r, double now, uint64_t n, double interval)
{
    uint64_t out = 0;
    pthread_mutex_lock(&r->mu);
    r->pending += n;
    if (r->pending && now >= r->next) {
        out = r->pending;
        r->pending = 0;
        r->next = now + interval;
    }
    pthread_mutex_unlock(&r->mu);
    return out;
}

/* ---- doors: process-wide counters ------------------------------------------------------- */

typedef struct door {
    const char *name;
    _Atomic uint64_t open, max, accepted, refused, timeouts, protocol, accept_errors;
    ratelog accept_log, refused_log, timeout_log;
} door;

static door doors[MAX_DOORS];
static _Atomic int ndoors;
static pthread_mutex_t doors_mu = PTHREAD_MUTEX_INITIALIZER;

static door *door_get(const char *name)
{
    door *d = NULL;
    pthread_mutex_lock(&doors_mu);
    int n = atomic_load(&ndoors);
    for (int i = 0; i < n && !d; i++)
        if (!strcmp(doors[i].name, name)) d = &doors[i];
    if (!d && n < MAX_DOORS) {
        d = &doors[n];
        d->name = name;
        pthread_mutex_init(&d->accept_log.mu, NULL);
        pthread_mutex_init(&d->refused_log.mu, NULL);
        pthread_mutex_init(&d->timeout_log.mu, NULL);
        atomic_store(&ndoors, n + 1);
    }
    pthread_mutex_unlock(&doors_mu);
    return d;
}

void ps_httpguard_render_metrics(ps_buf *b)
{
    static const struct {
        const char *name, *type, *help;
        size_t off;
    } m[] = {
        {"persrv_http_connections", "gauge", "Connections open on an HTTP door.",
         offsetof(door, open)},
        {"persrv_http_connections_max", "gauge", "The door's max-connections (0: no cap).",
         offsetof(door, max)},
        {"persrv_http_connections_accepted_total", "counter", "Connections accepted.",
         offsetof(door, accepted)},
        {"persrv_http_connections_refused_total", "counter",
         "Connections over max-connections, answered 503 and closed.", offsetof(door, refused)},
        {"persrv_http_request_timeouts_total", "counter",
         "Requests not received within the request timeout, answered 408 and closed.",
         offsetof(door, timeouts)},
        {"persrv_http_protocol_errors_total", "counter",
         "Malformed or oversized requests answered before any handler.", offsetof(door, protocol)},
        {"persrv_http_accept_errors_total", "counter",
         "Failed accept() calls (each followed by a back-off).", offsetof(door, accept_errors)},
    };
    int n = atomic_load(&ndoors);
    for (size_t i = 0; n && i < sizeof m / sizeof m[0]; i++) {
        ps_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", m[i].name, m[i].help, m[i].name,
                      m[i].type);
        for (int k = 0; k < n; k++) {
            const _Atomic uint64_t *v =
                (const _Atomic uint64_t *)((const char *)&doors[k] + m[i].off);
            ps_buf_printf(b, "%s{door=\"%s\"} %llu\n", m[i].name, doors[k].name,
                          (unsigned long long)atomic_load(v));
        }
    }
}

/* ---- libevent's own log lines ----------------------------------------------------------- */

/* libevent writes its warnings to stderr unless told otherwise ("[warn] Error from accept()
 * call: Too many open files", once per failed accept). Route them through ps_log, at most
 * LIBEVENT_LOG_BURST lines per PS_HTTPGUARD_LOG_INTERVAL_S, the rest counted. */
#define LIBEVENT_LOG_BURST 20
static pthread_mutex_t libevent_log_mu = PTHREAD_MUTEX_INITIALIZER;
static double libevent_window_end;
static uint64_t libevent_lines, libevent_dropped;
static pthread_once_t libevent_log_once = PTHREAD_ONCE_INIT;

static void on_libevent_log(int severity, const char *msg)
{
    double now = now_s();
    uint64_t dropped = 0;
    pthread_mutex_lock(&libevent_log_mu);
    if (now >= libevent_window_end) { /* a new window: its first line reports the drops */
        libevent_window_end = now + PS_HTTPGUARD_LOG_INTERVAL_S;
        dropped = libevent_dropped;
        libevent_dropped = libevent_lines = 0;
    }
    int drop = libevent_lines >= LIBEVENT_LOG_BURST;
    if (drop)
        libevent_dropped++;
    else
        libevent_lines++;
    pthread_mutex_unlock(&libevent_log_mu);
    if (drop) return;
    char clean[256];
    size_t i = 0;
    for (; msg && msg[i] && i < sizeof clean - 1; i++)
        clean[i] = msg[i] == '"' || (unsigned char)msg[i] < 0x20 ? '\'' : msg[i];
    clean[i] = '\0';
    int level = severity >= EVENT_LOG_ERR    ? PS_LOG_ERROR
                : severity >= EVENT_LOG_WARN ? PS_LOG_WARN
                : severity >= EVENT_LOG_MSG  ? PS_LOG_INFO
                                             : PS_LOG_DEBUG;
    ps_log(level, "libevent", "libevent_log", "msg=\"%s\" dropped_before=%llu", clean,
           (unsigned long long)dropped);
}

static void libevent_log_install(void)
{
    event_set_log_callback(on_libevent_log);
}

/* ---- the request scanner ---------------------------------------------------------------- */

enum { S_LINE, S_HEAD, S_BODY, S_CHUNK_SIZE, S_CHUNK_DATA, S_TRAILER, S_DEAD };
enum { OVER_NONE, OVER_HEAD, OVER_BODY, OVER_CHUNKED }; /* which cap libevent is about to hit */

typedef struct scanner {
    uint8_t state;
    uint8_t nobody;  /* HEAD, TRACE or an unknown method: libevent reads no body */
    uint8_t chunked; /* the first Transfer-Encoding is "chunked" */
    uint8_t te_seen, cl_seen, cl_bad;
    uint8_t over;  /* OVER_* */
    char last;     /* the line's last byte so far ('\r' before '\n' is not part of it) */
    uint64_t cl;   /* the first Content-Length */
    uint64_t left; /* body or chunk bytes still to come */
    uint64_t body; /* chunked: the sizes so far */
    uint64_t head; /* request line and header bytes (libevent's count for max-headers) */
    size_t llen;   /* bytes of the current line */
    char line[LINE_PREFIX];
} scanner;

/* ---- connections ------------------------------------------------------------------------ */

typedef struct conn conn;
struct conn {
    ps_httpguard_t *g;
    conn *prev, *next;
    struct bufferevent *bev;
    struct evhttp_connection *evcon; /* NULL until adopted */
    struct evbuffer_cb_entry *in_cb, *out_cb;
    double started; /* monotonic time of the request's first byte; 0: between requests */
    int adopted, refused, rewriting;
    int out_status;  /* status of the response being written when >= 400, else 0 */
    const char *bad; /* a framing error the scanner found: answered 400 by work_ev */
    char bad_detail[LINE_PREFIX + 1];
    scanner sc;
};

struct ps_httpguard {
    ps_httpguard_cfg cfg;
    door *d;
    struct event_base *base;
    struct evhttp *http;
    conn *conns; /* newest first; the ones not adopted yet are a prefix */
    size_t nconns;
    size_t nbad;             /* connections with bad set, not answered yet */
    struct event *work_ev;   /* made active: adopt new connections, answer bad ones */
    struct event *sweep_ev;  /* periodic: request deadlines */
    struct event *resume_ev; /* listeners back on */
    struct evconnlistener *lev[MAX_LISTENERS];
    size_t nlev;
    double resume_at;      /* listeners are off until then (0: on) */
    int last_accept_errno; /* for the accept-failure line a sweep still owes */
    ps_httpguard_t *next_guard;
};

/* Guards by evhttp, for the listener error callback (its argument is the evhttp). */
static ps_httpguard_t *guards;
static pthread_mutex_t guards_mu = PTHREAD_MUTEX_INITIALIZER;

static void conn_forget(conn *c)
{
    ps_httpguard_t *g = c->g;
    evbuffer_remove_cb_entry(bufferevent_get_input(c->bev), c->in_cb);
    evbuffer_remove_cb_entry(bufferevent_get_output(c->bev), c->out_cb);
    if (c->prev)
        c->prev->next = c->next;
    else
        g->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    g->nconns--;
    if (c->bad) g->nbad--;
    atomic_fetch_sub(&g->d->open, 1);
    free(c);
}

static void on_close(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    conn_forget(arg);
}

static const char *reason_of(int status)
{
    switch (status) {
    case 400:
        return "Bad Request";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Payload Too Large";
    case 417:
        return "Expectation Failed";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    default:
        return status < 500 ? "Client Error" : "Server Error";
    }
}

/* A complete HTTP/1.1 response carrying the JSON error shape, into buf. The message must be
 * printable ASCII without '"' or '\\' (the guard's own sentences). Returns its length. */
static size_t error_response(char *buf, size_t cap, int status, const char *code,
                             const char *extra_headers, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static size_t error_response(char *buf, size_t cap, int status, const char *code,
                             const char *extra_headers, const char *fmt, ...)
{
    char msg[384], body[640];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f || *p == '"' || *p == '\\')
            *p = '?';
    int bl = snprintf(body, sizeof body,
                      "{\"error\":{\"code\":\"%s\",\"type\":\"%s\",\"message\":\"%s\"}}\n", code,
                      status < 500 ? "invalid_request" : "server_error", msg);
    if (bl < 0 || (size_t)bl >= sizeof body) bl = (int)strlen(body);
    int n = snprintf(buf, cap,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: "
                     "%d\r\nConnection: close\r\n%s\r\n%s",
                     status, reason_of(status), bl, extra_headers ? extra_headers : "", body);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

/* Answer the connection (when nothing else is being written on it) and free it. */
static void conn_answer_close(conn *c, const char *resp, size_t len)
{
    int fd = bufferevent_getfd(c->bev);
    if (fd >= 0 && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
        char sink[4096];
        for (int i = 0; i < 16 && recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0; i++) {
        }
        ssize_t w = send(fd, resp, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        (void)w; /* best effort: the peer may be gone */
    }
    evhttp_connection_free(c->evcon); /* calls on_close: c is freed */
}

/* ---- scanning requests ------------------------------------------------------------------ */

static int is_method(const char *line, size_t n, const char *m)
{
    size_t k = strlen(m);
    return n > k && !memcmp(line, m, k) && line[k] == ' ';
}

/* The value of header line `line` (n bytes, all kept) when its name is `name`, else NULL.
 * libevent: the name is everything before ':'; leading spaces of the value are skipped. */
static const char *header_value(const char *line, size_t n, const char *name, size_t *vlen)
{
    size_t k = strlen(name);
    if (n <= k || line[k] != ':' || strncasecmp(line, name, k)) return NULL;
    const char *v = line + k + 1, *end = line + n;
    while (v < end && *v == ' ') v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t')) end--;
    *vlen = (size_t)(end - v);
    return v;
}

static void request_done(conn *c)
{
    c->sc.state = S_LINE;
    c->started = 0;
}

/* One complete line (the '\n' and a '\r' before it excluded) of `len` bytes, the first
 * min(len, LINE_PREFIX) of which are in c->sc.line. Returns 0, or -1 for a framing error
 * (c->bad set). */
static int scan_line(conn *c, size_t len)
{
    scanner *s = &c->sc;
    const ps_httpguard_cfg *cfg = &c->g->cfg;
    int whole = len <= LINE_PREFIX;
    const char *l = s->line;
    switch (s->state) {
    case S_LINE:
        if (len == 0) {
            s->state = S_DEAD; /* libevent answers 400 */
            return 0;
        }
        s->state = S_HEAD;
        s->head = len;
        s->nobody =
            !(is_method(l, len, "GET") || is_method(l, len, "POST") || is_method(l, len, "PUT") ||
              is_method(l, len, "PATCH") || is_method(l, len, "DELETE") ||
              is_method(l, len, "OPTIONS") || is_method(l, len, "CONNECT"));
        s->chunked = s->te_seen = s->cl_seen = s->cl_bad = 0;
        s->cl = 0;
        s->over = OVER_NONE;
        if (cfg->max_headers && s->head > cfg->max_headers) {
            s->over = OVER_HEAD;
            s->state = S_DEAD;
        }
        return 0;
    case S_HEAD: {
        if (len == 0) {
            if (s->nobody) {
                request_done(c);
            } else if (s->chunked) {
                s->state = S_CHUNK_SIZE;
                s->body = 0;
            } else if (s->cl_bad) {
                s->state = S_DEAD; /* libevent answers 400 */
            } else if (s->cl_seen && s->cl > 0) {
                if (cfg->max_body && s->cl > cfg->max_body) s->over = OVER_BODY;
                s->state = S_BODY;
                s->left = s->cl;
            } else {
                request_done(c);
            }
            return 0;
        }
        s->head += len;
        if (cfg->max_headers && s->head > cfg->max_headers) {
            s->over = OVER_HEAD;
            s->state = S_DEAD; /* libevent answers 413 */
            return 0;
        }
        size_t vl = 0;
        const char *v;
        if (!s->cl_seen &&
            (v = header_value(l, whole ? len : LINE_PREFIX, "Content-Length", &vl)) != NULL) {
            s->cl_seen = 1;
            char num[LINE_PREFIX + 1];
            memcpy(num, v, vl);
            num[vl] = '\0';
            char *end;
            errno = 0;
            long long x = strtoll(num, &end, 10); /* as libevent reads it */
            if (!whole)
                s->cl = UINT64_MAX; /* a longer number: libevent's strtoll saturates */
            else if (!num[0] || *end || x < 0)
                s->cl_bad = 1;
            else
                s->cl = (uint64_t)x;
        } else if (!s->te_seen &&
                   (v = header_value(l, whole ? len : LINE_PREFIX, "Transfer-Encoding", &vl))) {
            s->te_seen = 1;
            s->chunked = whole && vl == 7 && !strncasecmp(v, "chunked", 7);
        }
        return 0;
    }
    case S_CHUNK_SIZE: {
        if (len == 0) return 0; /* libevent skips the CRLF after a chunk's data as a line */
        size_t nd = 0;
        uint64_t v = 0;
        while (nd < len && nd < LINE_PREFIX && strchr("0123456789abcdefABCDEF", l[nd]) && l[nd]) {
            unsigned d =
                l[nd] <= '9' ? (unsigned)(l[nd] - '0') : (unsigned)((l[nd] | 0x20) - 'a' + 10);
            if (nd < 16) v = v << 4 | d;
            nd++;
        }
        size_t rest = nd;
        while (rest < len && rest < LINE_PREFIX && (l[rest] == ' ' || l[rest] == '\t')) rest++;
        size_t shown = len < LINE_PREFIX ? len : LINE_PREFIX;
        if (nd == 0 || rest != len) {
            c->bad = "a malformed chunk size (1 to 16 hex digits; no sign, prefix or extension)";
        } else if (nd > 16 || v > (uint64_t)INT64_MAX) {
            c->bad = "a chunk size that overflows 2^63";
        } else {
            if (v == 0) {
                s->state = S_TRAILER;
                return 0;
            }
            s->body = s->body + v < s->body ? UINT64_MAX : s->body + v;
            if (cfg->max_body && s->body > cfg->max_body) {
                s->over = OVER_CHUNKED;
                s->state = S_DEAD; /* libevent answers 413 */
                return 0;
            }
            s->state = S_CHUNK_DATA;
            s->left = v;
            return 0;
        }
        memcpy(c->bad_detail, l, shown);
        c->bad_detail[shown] = '\0';
        s->state = S_DEAD;
        return -1;
    }
    case S_TRAILER:
        if (len == 0) request_done(c);
        return 0;
    default:
        return 0;
    }
}

/* Scan n bytes of input. Returns 0, or -1 for a framing error (c->bad set). */
static int scan(conn *c, const char *p, size_t n)
{
    scanner *s = &c->sc;
    while (n > 0 && s->state != S_DEAD) {
        if (s->state == S_BODY || s->state == S_CHUNK_DATA) {
            size_t k = s->left < n ? (size_t)s->left : n;
            s->left -= k;
            p += k;
            n -= k;
            if (s->left == 0) {
                if (s->state == S_BODY)
                    request_done(c);
                else
                    s->state = S_CHUNK_SIZE;
            }
            continue;
        }
        if (s->state == S_LINE && c->started == 0) c->started = now_s();
        const char *nl = memchr(p, '\n', n);
        size_t k = nl ? (size_t)(nl - p) : n;
        if (s->llen < LINE_PREFIX) {
            size_t room = LINE_PREFIX - s->llen;
            memcpy(s->line + s->llen, p, k < room ? k : room);
        }
        if (k) s->last = p[k - 1];
        s->llen += k;
        p += k;
        n -= k;
        if (!nl) {
            /* libevent gives up on an unfinished line once the headers would be too long */
            uint64_t head = (s->state == S_HEAD ? s->head : 0) + s->llen;
            const ps_httpguard_cfg *cfg = &c->g->cfg;
            if ((s->state == S_LINE || s->state == S_HEAD) && cfg->max_headers &&
                head > cfg->max_headers) {
                s->over = OVER_HEAD;
                s->state = S_DEAD;
            }
            break;
        }
        p++;
        n--;
        size_t len = s->llen - (s->llen && s->last == '\r');
        s->llen = 0;
        s->last = 0;
        if (scan_line(c, len)) return -1;
    }
    return 0;
}

static void on_input(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    conn *c = arg;
    if (!info->n_added || c->bad || c->sc.state == S_DEAD) return;
    size_t len = evbuffer_get_length(buf);
    size_t n = info->n_added < len ? info->n_added : len;
    struct evbuffer_ptr pos;
    if (evbuffer_ptr_set(buf, &pos, len - n, EVBUFFER_PTR_SET)) return;
    while (n > 0) {
        struct evbuffer_iovec v[8];
        int k = evbuffer_peek(buf, (ev_ssize_t)n, &pos, v, 8);
        if (k <= 0) return;
        for (int i = 0; i < k && i < 8 && n > 0; i++) {
            size_t take = v[i].iov_len < n ? v[i].iov_len : n;
            if (scan(c, v[i].iov_base, take)) {
                /* evhttp must not read on: drop what it has not parsed, answer in work_ev */
                evbuffer_drain(buf, evbuffer_get_length(buf));
                c->g->nbad++;
                event_active(c->g->work_ev, EV_TIMEOUT, 0);
                return;
            }
            n -= take;
            evbuffer_ptr_set(buf, &pos, take, EVBUFFER_PTR_ADD);
        }
    }
}

/* ---- rewriting libevent's error pages --------------------------------------------------- */

static void rewrite_page(conn *c, struct evbuffer *buf, int status)
{
    const ps_httpguard_cfg *cfg = &c->g->cfg;
    char resp[1024];
    size_t n;
    if (c->sc.over == OVER_HEAD) status = 413; /* libevent says 400 for headers too long */
    switch (status) {
    case 400:
        n = error_response(resp, sizeof resp, 400, "parse_error", NULL,
                           "the request is malformed: its request line, a header or its "
                           "Content-Length does not parse as HTTP/1.1");
        break;
    case 413:
        if (c->sc.over == OVER_HEAD)
            n = error_response(resp, sizeof resp, 413, "too_large", NULL,
                               "the request line and headers exceed %zu bytes", cfg->max_headers);
        else if (c->sc.over == OVER_BODY)
            n = error_response(resp, sizeof resp, 413, "too_large", NULL,
                               "the body (Content-Length %llu) exceeds %zu bytes",
                               (unsigned long long)c->sc.cl, cfg->max_body);
        else if (c->sc.over == OVER_CHUNKED)
            n = error_response(resp, sizeof resp, 413, "too_large", NULL,
                               "the chunked body exceeds %zu bytes", cfg->max_body);
        else
            n = error_response(resp, sizeof resp, 413, "too_large", NULL,
                               "the request exceeds a size cap (headers %zu, body %zu bytes)",
                               cfg->max_headers, cfg->max_body);
        break;
    case 417:
        n = error_response(resp, sizeof resp, 417, "expectation_failed", NULL,
                           "only 'Expect: 100-continue' is supported");
        break;
    case 501:
        n = error_response(resp, sizeof resp, 501, "not_implemented", NULL, "unknown method");
        break;
    default:
        n = error_response(resp, sizeof resp, status, "http_error", NULL,
                           "the request was refused before reaching an endpoint");
        break;
    }
    c->rewriting = 1;
    evbuffer_drain(buf, evbuffer_get_length(buf));
    evbuffer_add(buf, resp, n);
    c->rewriting = 0;
    atomic_fetch_add(&c->g->d->protocol, 1);
    ps_log(PS_LOG_DEBUG, cfg->comp, "http_refused", "door=%s status=%d", cfg->door, status);
}

static void on_output(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    static const char page_head[] = "\r\n\r\n<HTML><HEAD>\n<TITLE>";
    static const char page_tail[] = "</BODY></HTML>\n";
    conn *c = arg;
    if (c->rewriting) return;
    size_t len = evbuffer_get_length(buf);
    if (info->n_added == 0) {
        if (len == 0) c->out_status = 0;
        return;
    }
    if (info->orig_size == 0) { /* a response starts: its status line comes in one piece */
        char st[16] = "";
        evbuffer_copyout(buf, st, sizeof st - 1);
        int code = 0;
        if (!strncmp(st, "HTTP/1.", 7) && st[8] == ' ')
            code = (st[9] - '0') * 100 + (st[10] - '0') * 10 + (st[11] - '0');
        c->out_status = code >= 400 && code <= 599 ? code : 0;
    }
    if (!c->out_status || len < sizeof page_tail - 1) return;
    char tail[sizeof page_tail];
    struct evbuffer_ptr p;
    if (evbuffer_ptr_set(buf, &p, len - (sizeof page_tail - 1), EVBUFFER_PTR_SET) ||
        evbuffer_copyout_from(buf, &p, tail, sizeof page_tail - 1) != sizeof page_tail - 1 ||
        memcmp(tail, page_tail, sizeof page_tail - 1) ||
        evbuffer_search(buf, page_head, sizeof page_head - 1, NULL).pos < 0)
        return;
    int status = c->out_status;
    c->out_status = 0;
    rewrite_page(c, buf, status);
}

/* ---- accept, adopt, sweep ----------------------------------------------------------------- */

static void listeners_set(ps_httpguard_t *g, int on)
{
    for (size_t i = 0; i < g->nlev; i++)
        if (on)
            evconnlistener_enable(g->lev[i]);
        else
            evconnlistener_disable(g->lev[i]);
}

/* Listeners off for ms (0: until the loop's next turn); a longer pause already set stays. */
static void listeners_pause(ps_httpguard_t *g, uint32_t ms)
{
    double until = now_s() + ms / 1e3;
    if (g->resume_at > until) return;
    g->resume_at = until;
    listeners_set(g, 0);
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    event_add(g->resume_ev, &tv);
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ps_httpguard_t *g = arg;
    g->resume_at = 0;
    listeners_set(g, 1);
}

static struct bufferevent *on_bev(struct event_base *base, void *arg)
{
    ps_httpguard_t *g = arg;
    struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    conn *c = bev ? calloc(1, sizeof *c) : NULL;
    if (!c) {
        ps_log(PS_LOG_ERROR, g->cfg.comp, "out_of_memory", "where=http_connection");
        abort();
    }
    bufferevent_incref(bev); /* until adopted: evhttp may free it before that */
    c->g = g;
    c->bev = bev;
    c->in_cb = evbuffer_add_cb(bufferevent_get_input(bev), on_input, c);
    c->out_cb = evbuffer_add_cb(bufferevent_get_output(bev), on_output, c);
    if (!c->in_cb || !c->out_cb) {
        ps_log(PS_LOG_ERROR, g->cfg.comp, "out_of_memory", "where=http_connection");
        abort();
    }
    c->next = g->conns;
    if (g->conns) g->conns->prev = c;
    g->conns = c;
    g->nconns++;
    uint64_t open = atomic_fetch_add(&g->d->open, 1);
    atomic_fetch_add(&g->d->accepted, 1);
    if (g->cfg.max_connections && open >= g->cfg.max_connections) c->refused = 1;
    event_active(g->work_ev, EV_TIMEOUT, 0);
    /* One connection per turn of the loop: a burst spreads over the loops sharing a listening
     * socket (the broker's lanes), and no descriptor is opened between an accept and work_ev,
     * so when evhttp gives a connection up at once (it closes the descriptor itself on some of
     * those paths) the close of ours at adoption can only meet a descriptor number nobody
     * reused. */
    listeners_pause(g, 0);
    return bev;
}

/* Count n connections cut for `reason` (refused or timed out); one line per interval at most,
 * counting all since the last. n 0: only write the line a past interval still owes. */
static void log_cut(ps_httpguard_t *g, int timeout, uint64_t n)
{
    ratelog *r = timeout ? &g->d->timeout_log : &g->d->refused_log;
    uint64_t k = ratelog_take(r, now_s(), n, PS_HTTPGUARD_LOG_INTERVAL_S);
    if (k)
        ps_log(PS_LOG_WARN, g->cfg.comp, "http_connections_cut",
               "door=%s reason=%s count=%llu open=%llu interval_s=%d", g->cfg.door,
               timeout ? "request_timeout" : "max_connections", (unsigned long long)k,
               (unsigned long long)atomic_load(&g->d->open), PS_HTTPGUARD_LOG_INTERVAL_S);
}

/* The accept failures since the last line (n of them now); as log_cut. */
static void log_accept_failures(ps_httpguard_t *g, uint64_t n, int e)
{
    uint64_t k = ratelog_take(&g->d->accept_log, now_s(), n, PS_HTTPGUARD_LOG_INTERVAL_S);
    if (k)
        ps_log(PS_LOG_WARN, g->cfg.comp, "accept_failed",
               "door=%s errno=%d msg=\"%s\" count=%llu open=%llu backoff_ms=%d interval_s=%d",
               g->cfg.door, e, e ? strerror(e) : "-", (unsigned long long)k,
               (unsigned long long)atomic_load(&g->d->open), PS_HTTPGUARD_BACKOFF_MS,
               PS_HTTPGUARD_LOG_INTERVAL_S);
}

/* Adopt the connections accepted since the last turn (a prefix of the list), answer over-cap
 * ones 503; answer the ones the scanner found bad 400. */
static void on_work(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ps_httpguard_t *g = arg;
    uint64_t refused = 0;
    for (conn *c = g->conns, *next; c && !c->adopted; c = next) {
        next = c->next;
        struct bufferevent *bev = c->bev;
        bufferevent_data_cb rcb = NULL;
        void *cbarg = NULL;
        bufferevent_getcb(bev, &rcb, NULL, NULL, &cbarg);
        if (!rcb || !cbarg) { /* evhttp gave it up already: ours is the last reference */
            conn_forget(c);
            bufferevent_decref(bev);
            continue;
        }
        c->adopted = 1;
        c->evcon = cbarg; /* evhttp's callback argument is the connection */
        evhttp_connection_set_closecb(c->evcon, on_close, c);
        bufferevent_decref(bev);
        if (c->refused) {
            char resp[512];
            size_t n = error_response(resp, sizeof resp, 503, "unavailable", "Retry-After: 1\r\n",
                                      "the server holds its %u connections (max-connections); "
                                      "retry later",
                                      g->cfg.max_connections);
            refused++;
            atomic_fetch_add(&g->d->refused, 1);
            conn_answer_close(c, resp, n);
        }
    }
    for (conn *c = g->conns, *next; c && g->nbad; c = next) {
        next = c->next;
        if (!c->bad) continue;
        char resp[640];
        size_t n = error_response(resp, sizeof resp, 400, "parse_error", NULL,
                                  "the request has %s: '%s'", c->bad, c->bad_detail);
        atomic_fetch_add(&g->d->protocol, 1);
        ps_log(PS_LOG_DEBUG, g->cfg.comp, "http_refused", "door=%s status=400 why=\"%s\"",
               g->cfg.door, c->bad);
        conn_answer_close(c, resp, n);
    }
    if (refused) log_cut(g, 0, refused);
}

static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ps_httpguard_t *g = arg;
    double now = now_s(), limit = g->cfg.request_timeout_ms / 1e3;
    uint64_t cut = 0;
    for (conn *c = g->conns, *next; c && g->cfg.request_timeout_ms; c = next) {
        next = c->next;
        if (!c->adopted || c->started == 0 || now - c->started < limit) continue;
        char resp[512];
        size_t n = error_response(resp, sizeof resp, 408, "request_timeout", NULL,
                                  "the request was not complete within %u ms "
                                  "(request-timeout-ms)",
                                  g->cfg.request_timeout_ms);
        cut++;
        atomic_fetch_add(&g->d->timeouts, 1); /* counted before the peer can see the 408 */
        conn_answer_close(c, resp, n);
    }
    log_cut(g, 1, cut);
    log_cut(g, 0, 0);
    log_accept_failures(g, 0, g->last_accept_errno);
}

static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    int e = EVUTIL_SOCKET_ERROR();
    (void)lev;
    ps_httpguard_t *g;
    pthread_mutex_lock(&guards_mu);
    for (g = guards; g && g->http != arg; g = g->next_guard) {
    }
    pthread_mutex_unlock(&guards_mu);
    if (!g) return;
    atomic_fetch_add(&g->d->accept_errors, 1);
    g->last_accept_errno = e;
    listeners_pause(g, PS_HTTPGUARD_BACKOFF_MS);
    log_accept_failures(g, 1, e);
}

/* ---- the guard -------------------------------------------------------------------------- */

ps_httpguard_t *ps_httpguard_new(struct event_base *base, struct evhttp *http,
                                 const ps_httpguard_cfg *cfg, ps_err *err)
{
    pthread_once(&libevent_log_once, libevent_log_install);
    ps_httpguard_t *g = calloc(1, sizeof *g);
    if (!g) {
        ps_err_set(err, PS_ENOMEM, "out of memory for an HTTP guard");
        return NULL;
    }
    g->cfg = *cfg;
    g->base = base;
    g->http = http;
    if (!(g->d = door_get(cfg->door))) {
        ps_err_set(err, PS_EINVAL, "http guard: more than %d doors", MAX_DOORS);
        free(g);
        return NULL;
    }
    atomic_store(&g->d->max, cfg->max_connections);
    if (!(g->work_ev = event_new(base, -1, 0, on_work, g)) ||
        !(g->resume_ev = event_new(base, -1, 0, on_resume, g)) ||
        !(g->sweep_ev = event_new(base, -1, EV_PERSIST, on_sweep, g))) {
        ps_httpguard_free(g);
        ps_err_set(err, PS_ENOMEM, "out of memory for an HTTP guard");
        return NULL;
    }
    /* a request is cut between 1 and 1.25 timeouts after its first byte; the sweep also
     * writes the log lines an interval still owes */
    uint32_t every = cfg->request_timeout_ms ? cfg->request_timeout_ms / 4 : 1000;
    every = every < 50 ? 50 : every > 1000 ? 1000 : every;
    struct timeval tv = {(time_t)(every / 1000), (suseconds_t)(every % 1000) * 1000};
    event_add(g->sweep_ev, &tv);
    pthread_mutex_lock(&guards_mu);
    g->next_guard = guards;
    guards = g;
    pthread_mutex_unlock(&guards_mu);
    evhttp_set_bevcb(http, on_bev, g);
    return g;
}

int ps_httpguard_listen(ps_httpguard_t *g, struct evhttp_bound_socket *bs, ps_err *err)
{
    struct evconnlistener *lev = bs ? evhttp_bound_socket_get_listener(bs) : NULL;
    if (!lev) return ps_err_set(err, PS_EINVAL, "http guard: no listener");
    if (g->nlev == MAX_LISTENERS)
        return ps_err_set(err, PS_EINVAL, "http guard: more than %d listeners", MAX_LISTENERS);
    g->lev[g->nlev++] = lev;
    evconnlistener_set_error_cb(lev, on_accept_error);
    return 0;
}

void ps_httpguard_unlisten(ps_httpguard_t *g, struct evhttp_bound_socket *bs)
{
    struct evconnlistener *lev = bs ? evhttp_bound_socket_get_listener(bs) : NULL;
    for (size_t i = 0; i < g->nlev; i++)
        if (g->lev[i] == lev) {
            g->lev[i] = g->lev[--g->nlev];
            break;
        }
}

void ps_httpguard_free(ps_httpguard_t *g)
{
    if (!g) return;
    pthread_mutex_lock(&guards_mu);
    for (ps_httpguard_t **p = &guards; *p; p = &(*p)->next_guard)
        if (*p == g) {
            *p = g->next_guard;
            break;
        }
    pthread_mutex_unlock(&guards_mu);
    /* evhttp_free has closed every adopted connection (on_close); the rest hold our reference */
    while (g->conns) {
        conn *c = g->conns;
        struct bufferevent *bev = c->bev;
        int adopted = c->adopted;
        if (adopted) evhttp_connection_set_closecb(c->evcon, NULL, NULL);
        conn_forget(c);
        if (!adopted) bufferevent_decref(bev);
    }
    if (g->work_ev) event_free(g->work_ev);
    if (g->resume_ev) event_free(g->resume_ev);
    if (g->sweep_ev) event_free(g->sweep_ev);
    free(g);
}

/* ---- the file descriptor limit ---------------------------------------------------------- */

int ps_fd_limit_raise(uint64_t need, int flags, const char *comp, uint64_t *soft, ps_err *err)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return ps_err_set(err, PS_EIO, "getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
    /* an infinite hard limit is not a soft limit Linux takes (fs.nr_open caps it) */
    rlim_t hard = rl.rlim_max == RLIM_INFINITY ? (rlim_t)1 << 20 : rl.rlim_max;
    rlim_t want = need && !(flags & PS_FD_TO_HARD) ? (rlim_t)need : hard;
    if (want > hard) want = hard;
    uint64_t before = (uint64_t)rl.rlim_cur;
    if (rl.rlim_cur < want) {
        struct rlimit n = {want, rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &n) == 0)
            rl.rlim_cur = want;
        else
            ps_log(PS_LOG_WARN, comp, "fd_limit_raise_failed", "want=%llu msg=\"%s\"",
                   (unsigned long long)want, strerror(errno));
    }
    ps_log(PS_LOG_INFO, comp, "fd_limit", "soft=%llu was=%llu hard=%llu need=%llu",
           (unsigned long long)rl.rlim_cur, (unsigned long long)before,
           (unsigned long long)rl.rlim_max, (unsigned long long)need);
    if (need && (uint64_t)rl.rlim_cur < need)
        ps_log(PS_LOG_WARN, comp, "fd_limit_low",
               "need=%llu soft=%llu hard=%llu msg=\"the hard RLIMIT_NOFILE (ulimit -Hn) is below "
               "what the connection caps need (max-connections + admin-max-connections + %d "
               "reserved): connections past the limit fail accept() (backed off); raise the "
               "limit or lower the caps\"",
               (unsigned long long)need, (unsigned long long)rl.rlim_cur,
               (unsigned long long)rl.rlim_max, PS_FD_RESERVE);
    if (soft) *soft = (uint64_t)rl.rlim_cur;
    return 0;
}
