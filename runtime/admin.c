/*
 * admin.c — the admin HTTP port every daemon runs (interface and security rules in admin.h):
 * one thread with its own libevent loop and evhttp, a route table, bearer-token checks before
 * any admin handler runs, JSON replies, and the small Prometheus helpers the daemons share.
 *
 * Stopping: ps_admin_stop writes to a pipe the loop watches; the loop exits after the handler
 * it is running (if any) has answered, and the thread is joined.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "ps/admin.h"
#include "ps/config.h"
#include "ps/httpguard.h"
#include "ps/log.h"

#define ADMIN_MAX_TOKEN   256
#define ADMIN_MAX_HEADERS 65536 /* request line and headers of one request */

struct ps_admin {
    ps_admin_cfg cfg;
    char *token;
    struct event_base *base;
    struct evhttp *http;
    ps_httpguard_t *guard; /* connection cap, request deadline, accept back-off */
    struct event *stop_ev;
    int stop_pipe[2];
    pthread_t thread;
    int started;
    char address[64];
};

/* ---- replies ------------------------------------------------------------------------------- */

static const char *reason_of(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return status < 500 ? "Client Error" : "Server Error";
    }
}

void ps_admin_reply(struct evhttp_request *req, int status, const char *content_type,
                    const void *body, size_t len)
{
    evbuffer_add(evhttp_request_get_output_buffer(req), body, len);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", content_type);
    evhttp_send_reply(req, status, reason_of(status), NULL);
}

void ps_admin_reply_json(struct evhttp_request *req, int status, json_t *body)
{
    char *s = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!s) {
        static const char oom[] =
            "{\"error\":{\"code\":\"out_of_memory\",\"type\":\"server_error\",\"message\":"
            "\"out of memory\"}}\n";
        ps_admin_reply(req, 503, "application/json", oom, sizeof oom - 1);
        return;
    }
    evbuffer_add(evhttp_request_get_output_buffer(req), s, strlen(s));
    free(s);
    ps_admin_reply(req, status, "application/json", "\n", 1);
}

void ps_admin_reply_error(struct evhttp_request *req, int code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* Messages may quote a peer's input: keep them printable ASCII. */
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f) *p = '?';
    int status = ps_err_http_status(code);
    const char *type = status == 401   ? "unauthorized"
                       : status == 403 ? "forbidden"
                       : status == 404 ? "not_found"
                       : status < 500  ? "invalid_request"
                                       : "server_error";
    ps_admin_reply_json(req, status,
                        json_pack("{s:{s:s, s:s, s:s}}", "error", "code", ps_errname(code), "type",
                                  type, "message", msg));
}

void ps_admin_reply_err(struct evhttp_request *req, const ps_err *err)
{
    ps_admin_reply_error(req, err->code ? err->code : PS_EINTERNAL, "%s", err->msg);
}

/* ---- reading requests ---------------------------------------------------------------------- */

const char *ps_admin_path(struct evhttp_request *req)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *p = uri ? evhttp_uri_get_path(uri) : NULL;
    return p ? p : "";
}

char *ps_admin_param_str(struct evhttp_request *req, const char *name)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *q = uri ? evhttp_uri_get_query(uri) : NULL;
    if (!q) return NULL;
    struct evkeyvalq kv;
    TAILQ_INIT(&kv);
    if (evhttp_parse_query_str(q, &kv) != 0) {
        evhttp_clear_headers(&kv);
        return NULL;
    }
    const char *v = evhttp_find_header(&kv, name);
    char *out = v ? strdup(v) : NULL;
    evhttp_clear_headers(&kv);
    return out;
}

int ps_admin_param_u64(struct evhttp_request *req, const char *name, uint64_t *out, ps_err *err)
{
    char *v = ps_admin_param_str(req, name);
    if (!v) return ps_err_set(err, PS_ENOTFOUND, "%s: required", name);
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    int bad = v[0] < '0' || v[0] > '9' || *end || errno == ERANGE;
    free(v);
    if (bad) return ps_err_set(err, PS_EINVAL, "%s: must be an unsigned 64-bit integer", name);
    *out = x;
    return 0;
}

const void *ps_admin_body(struct evhttp_request *req, size_t *len)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    *len = evbuffer_get_length(in);
    return *len ? (const void *)evbuffer_pullup(in, -1) : (const void *)"";
}

/* ---- the token ----------------------------------------------------------------------------- */

static int token_ok(const char *t, size_t n)
{
    if (n == 0 || n > ADMIN_MAX_TOKEN) return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)t[i] <= 0x20 || (unsigned char)t[i] >= 0x7f) return 0;
    return 1;
}

int ps_admin_token_load(const char *token, const char *token_file, char **out, ps_err *err)
{
    *out = NULL;
    char line[ADMIN_MAX_TOKEN + 2];
    const char *t = token;
    const char *where = "admin-token";
    if (!t && token_file) {
        FILE *f = fopen(token_file, "r");
        if (!f)
            return ps_err_set(err, PS_EIO, "admin-token-file %s: %s", token_file, strerror(errno));
        if (!fgets(line, sizeof line, f)) line[0] = '\0';
        fclose(f);
        line[strcspn(line, "\r\n")] = '\0';
        t = line;
        where = "admin-token-file";
    }
    if (!t) return 0;
    if (!token_ok(t, strlen(t)))
        return ps_err_set(err, PS_EINVAL,
                          "%s: a token is 1..%d printable ASCII characters without spaces", where,
                          ADMIN_MAX_TOKEN);
    if (!(*out = strdup(t))) return ps_err_set(err, PS_ENOMEM, "out of memory for the token");
    return 0;
}

/* Constant-time over the longer length: a wrong token's prefix tells an attacker nothing. */
static int token_equal(const char *want, const char *got, size_t got_len)
{
    size_t want_len = strlen(want);
    size_t n = want_len > got_len ? want_len : got_len;
    unsigned char diff = (unsigned char)(want_len != got_len);
    for (size_t i = 0; i < n; i++) {
        unsigned char a = i < want_len ? (unsigned char)want[i] : 0;
        unsigned char b = i < got_len ? (unsigned char)got[i] : 0;
        diff |= a ^ b;
    }
    return diff == 0;
}

/* 0 when the request carries the daemon's token, else the reply's code (401 or 403). */
static int check_token(const ps_admin_t *a, struct evhttp_request *req, ps_err *err)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return ps_err_set(err, PS_EUNAUTH, "admin operations need 'Authorization: Bearer <token>'");
    const char *got = h + 7;
    while (*got == ' ') got++;
    size_t n = strlen(got);
    while (n && got[n - 1] == ' ') n--;
    if (a->token && token_equal(a->token, got, n)) return 0;
    if (a->cfg.auth) {
        int rc = a->cfg.auth(a->cfg.auth_arg, got, n);
        if (rc == 0) return 0;
        if (rc == PS_EUNAUTH)
            return ps_err_set(err, PS_EUNAUTH, "neither the admin token nor an API key");
        if (rc == PS_ERATE) return ps_err_set(err, PS_ERATE, "this key is over its rate limit");
        return ps_err_set(err, PS_EFORBIDDEN, "this API key lacks the 'admin' scope");
    }
    if (!a->token)
        return ps_err_set(err, PS_EFORBIDDEN,
                          "admin operations are disabled: this daemon has no admin-token");
    return ps_err_set(err, PS_EFORBIDDEN, "the admin token is wrong");
}

/* ---- dispatch ------------------------------------------------------------------------------ */

static int method_bit(enum evhttp_cmd_type c)
{
    switch (c) {
    case EVHTTP_REQ_GET:
    case EVHTTP_REQ_HEAD:
        return PS_ADMIN_GET;
    case EVHTTP_REQ_POST:
        return PS_ADMIN_POST;
    case EVHTTP_REQ_PUT:
        return PS_ADMIN_PUT;
    case EVHTTP_REQ_DELETE:
        return PS_ADMIN_DELETE;
    default:
        return 0;
    }
}

static int route_matches(const ps_admin_route *r, const char *path)
{
    size_t n = strlen(r->path);
    if (n && r->path[n - 1] == '/') return strncmp(path, r->path, n) == 0 && path[n];
    return strcmp(path, r->path) == 0;
}

static void on_request(struct evhttp_request *req, void *arg)
{
    ps_admin_t *a = arg;
    const char *path = ps_admin_path(req);
    const ps_admin_route *r = NULL;
    for (size_t i = 0; i < a->cfg.nroutes && !r; i++)
        if (route_matches(&a->cfg.routes[i], path)) r = &a->cfg.routes[i];
    if (!r) {
        ps_admin_reply_error(req, PS_ENOTFOUND, "no such admin endpoint: %s", path);
        return;
    }
    if (!(method_bit(evhttp_request_get_command(req)) & r->methods)) {
        ps_admin_reply_json(req, 405,
                            json_pack("{s:{s:s, s:s, s:s}}", "error", "code", "method_not_allowed",
                                      "type", "invalid_request", "message",
                                      "method not allowed on this endpoint"));
        return;
    }
    if (r->admin) {
        ps_err err = {0, ""};
        if (check_token(a, req, &err)) {
            ps_log(PS_LOG_WARN, a->cfg.comp, "admin_refused", "path=%s code=%s", path,
                   ps_errname(err.code));
            ps_admin_reply_err(req, &err);
            return;
        }
        /* an audit line per operation; chunk uploads (PUT) only at debug: there are hundreds */
        if (evhttp_request_get_command(req) == EVHTTP_REQ_PUT)
            ps_log(PS_LOG_DEBUG, a->cfg.comp, "admin_call", "path=%s", path);
        else
            ps_log(PS_LOG_INFO, a->cfg.comp, "admin_call", "path=%s", path);
    }
    r->fn(req, r->arg);
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(((ps_admin_t *)arg)->base);
}

static void *admin_main(void *arg)
{
    ps_admin_t *a = arg;
    if (a->cfg.nice > 0) {
        /* Linux: both apply to this thread only. Failing is harmless (logged). */
        pid_t tid = gettid();
        if (setpriority(PRIO_PROCESS, (id_t)tid, a->cfg.nice) != 0 ||
            syscall(SYS_ioprio_set, 1 /* IOPRIO_WHO_PROCESS */, tid,
                    (2 << 13) | 7 /* best effort, lowest */) != 0)
            ps_log(PS_LOG_WARN, a->cfg.comp, "admin_priority", "msg=\"%s\"", strerror(errno));
    }
    event_base_dispatch(a->base);
    return NULL;
}

/* Split "host:port" (host may be [v6]). */
static int parse_listen(const char *s, char *host, size_t hcap, uint16_t *port, ps_err *err)
{
    const char *colon = strrchr(s ? s : "", ':');
    if (!s || !colon || colon == s)
        return ps_err_set(err, PS_EINVAL, "admin: '%s' is not HOST:PORT", s ? s : "");
    size_t hl = (size_t)(colon - s);
    if (s[0] == '[' && hl >= 2 && s[hl - 1] == ']') {
        s++;
        hl -= 2;
    }
    if (hl >= hcap) return ps_err_set(err, PS_EINVAL, "admin: host too long");
    memcpy(host, s, hl);
    host[hl] = '\0';
    char *end;
    unsigned long p = strtoul(colon + 1, &end, 10);
    if (!colon[1] || *end || p > 65535)
        return ps_err_set(err, PS_EINVAL, "admin: bad port in '%s'", s);
    *port = (uint16_t)p;
    return 0;
}

ps_admin_t *ps_admin_start(const ps_admin_cfg *cfg, ps_err *err)
{
    char host[128];
    uint16_t port = 0;
    if (parse_listen(cfg->listen, host, sizeof host, &port, err)) return NULL;
    ps_admin_t *a = calloc(1, sizeof *a);
    if (!a) {
        ps_err_set(err, PS_ENOMEM, "out of memory for the admin port");
        return NULL;
    }
    a->cfg = *cfg;
    if (!a->cfg.comp) a->cfg.comp = "admin";
    a->stop_pipe[0] = a->stop_pipe[1] = -1;
    if (cfg->token && cfg->token[0] && !(a->token = strdup(cfg->token))) goto oom;
    if (pipe2(a->stop_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        ps_err_set(err, PS_EIO, "admin: pipe: %s", strerror(errno));
        goto fail;
    }
    if (!(a->base = event_base_new()) || !(a->http = evhttp_new(a->base))) goto oom;
    if (!(a->stop_ev = event_new(a->base, a->stop_pipe[0], EV_READ, on_stop, a))) goto oom;
    event_add(a->stop_ev, NULL);
    /* every method reaches on_request, so that one a route does not take gets a JSON 405 */
    evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                            EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    if (cfg->max_body) evhttp_set_max_body_size(a->http, (ev_ssize_t)cfg->max_body);
    evhttp_set_max_headers_size(a->http, ADMIN_MAX_HEADERS);
    evhttp_set_timeout(a->http, 120);
    evhttp_set_gencb(a->http, on_request, a);
    ps_httpguard_cfg gc = {.door = "admin",
                           .comp = a->cfg.comp,
                           .max_connections = cfg->limits.max_connections,
                           .request_timeout_ms = cfg->limits.request_timeout_ms,
                           .max_headers = ADMIN_MAX_HEADERS,
                           .max_body = cfg->max_body};
    if (!(a->guard = ps_httpguard_new(a->base, a->http, &gc, err))) goto fail;
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(a->http, host, port);
    if (!bs) {
        ps_err_set(err, PS_EIO, "admin: cannot bind %s: %s", cfg->listen, strerror(errno));
        goto fail;
    }
    if (ps_httpguard_listen(a->guard, bs, err)) goto fail;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    evutil_socket_t fd = evhttp_bound_socket_get_fd(bs);
    char ip[INET6_ADDRSTRLEN] = "?";
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
            snprintf(a->address, sizeof a->address, "[%s]:%u", ip, ntohs(s6->sin6_port));
        } else {
            struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
            snprintf(a->address, sizeof a->address, "%s:%u", ip, ntohs(s4->sin_port));
        }
    }
    if (pthread_create(&a->thread, NULL, admin_main, a) != 0) {
        ps_err_set(err, PS_EINTERNAL, "admin: cannot start its thread");
        goto fail;
    }
    a->started = 1;
    ps_log(PS_LOG_INFO, a->cfg.comp, "admin_listening",
           "address=%s token=%s max_connections=%u request_timeout_ms=%u", a->address,
           a->token ? "set" : "none", cfg->limits.max_connections, cfg->limits.request_timeout_ms);
    return a;
oom:
    ps_err_set(err, PS_ENOMEM, "out of memory for the admin port");
fail:
    ps_admin_stop(a);
    return NULL;
}

const char *ps_admin_address(const ps_admin_t *a)
{
    return a->address;
}

void ps_admin_stop(ps_admin_t *a)
{
    if (!a) return;
    if (a->started) {
        ssize_t w = write(a->stop_pipe[1], "x", 1);
        (void)w;
        pthread_join(a->thread, NULL);
    }
    if (a->stop_ev) event_free(a->stop_ev);
    if (a->http) evhttp_free(a->http); /* closes the connections (the guard forgets them) */
    ps_httpguard_free(a->guard);
    if (a->base) event_base_free(a->base);
    if (a->stop_pipe[0] >= 0) close(a->stop_pipe[0]);
    if (a->stop_pipe[1] >= 0) close(a->stop_pipe[1]);
    if (a->token) {
        memset(a->token, 0, strlen(a->token));
        free(a->token);
    }
    free(a);
}

ps_admin_limits ps_admin_limits_of(const ps_cfg_t *c)
{
    ps_admin_limits l = {(uint32_t)ps_cfg_uint(c, "admin-max-connections"),
                         (uint32_t)ps_cfg_uint(c, "admin-request-timeout-ms")};
    return l;
}

/* ---- metrics ------------------------------------------------------------------------------- */

/* Bucket bounds around the latency targets: 100 µs .. 2.5 s. */
static const double hist_le[PS_HIST_NBUCKETS] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5};

void ps_hist_observe(ps_hist *h, double seconds)
{
    int b = 0;
    while (b < PS_HIST_NBUCKETS && seconds > hist_le[b]) b++;
    atomic_fetch_add_explicit(&h->bucket[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns, (uint64_t)(seconds > 0 ? seconds * 1e9 : 0),
                              memory_order_relaxed);
}

void ps_hist_render(const ps_hist *h, const char *name, const char *help, ps_buf *out)
{
    uint64_t cum = 0;
    ps_buf_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (int b = 0; b <= PS_HIST_NBUCKETS; b++) {
        cum += atomic_load_explicit(&h->bucket[b], memory_order_relaxed);
        if (b < PS_HIST_NBUCKETS)
            ps_buf_printf(out, "%s_bucket{le=\"%g\"} %llu\n", name, hist_le[b],
                          (unsigned long long)cum);
        else
            ps_buf_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    }
    ps_buf_printf(out, "%s_sum %.9f\n%s_count %llu\n", name,
                  atomic_load_explicit(&h->sum_ns, memory_order_relaxed) / 1e9, name,
                  (unsigned long long)atomic_load_explicit(&h->count, memory_order_relaxed));
}
