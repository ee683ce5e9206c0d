/*
 * main.c — the `broker` daemon: configuration (one table, ps/config.h), the shard pool, the
 * profile cache, the libevent loop with its HTTP listener, health probes on a timer, signals,
 * pid and ready files.
 *
 * Ready file: written (atomically: temp file, fsync, rename) once the HTTP port listens and
 * every shard has a replica that answered a health probe; it holds the HTTP address
 * ("127.0.0.1:8080", the real port when the configured one is 0).
 *
 * Stopping: SIGTERM or SIGINT closes the listening socket and stops the probes; since requests
 * are answered inside their callback, nothing is in flight then but replies still being
 * written, which get drain-ms to leave before the loop ends and everything is freed.
 *
 * Exit status: 0 after a clean stop, 1 when the daemon could not start (profiles unreadable,
 * port in use ...), 2 for a configuration error.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/http.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "broker.h"
#include "ps/config.h"
#include "ps/log.h"
#include "ps/wire.h"

#define BROKER_MAX_FRAME_DEFAULT "4194304"
_Static_assert(PS_WIRE_MAX_FRAME == 4194304, "update BROKER_MAX_FRAME_DEFAULT");

static const ps_cfg_opt broker_opts[] = {
    {"shards", PS_CFG_STRING, NULL,
     "topology: shard endpoints in shard order separated by ',', replicas of one shard by '|' "
     "(tcp://127.0.0.1:5001|tcp://127.0.0.1:5002,tcp://127.0.0.1:5003)",
     PS_CFG_REQUIRED, 0, 0},
    {"profiles", PS_CFG_STRING, NULL,
     "profiles directory (builder build --shards: DIR/profiles); unset: every user is unknown", 0,
     0, 0},
    {"http", PS_CFG_STRING, "127.0.0.1:8080", "HTTP listen address host:port (port 0: any)", 0, 0,
     0},
    {"deadline-ms", PS_CFG_UINT, "100", "time a shard replica gets per attempt (ms)", 0, 1, 60000},
    {"retries", PS_CFG_UINT, "1", "attempts on other replicas after a shard misses its deadline", 0,
     0, 16},
    {"max-query-bytes", PS_CFG_UINT, "1024", "longest query q in bytes (longer: 413 too_large)", 0,
     1, 65536},
    {"max-k", PS_CFG_UINT, "100", "largest k a search may ask for", 0, 1, PS_SEARCH_MAX_R},
    {"recall-depth", PS_CFG_UINT, "100", "R, the recall depth: candidates each shard returns", 0, 1,
     PS_SEARCH_MAX_R},
    {"max-body", PS_CFG_UINT, "65536", "largest HTTP request body in bytes (larger: 413)", 0, 0,
     1u << 30},
    {"max-headers", PS_CFG_UINT, "65536",
     "largest HTTP request line + headers in bytes (a query string counts here)", 0, 1024,
     1u << 24},
    {"max-frame", PS_CFG_UINT, BROKER_MAX_FRAME_DEFAULT,
     "largest reply frame from a shard in bytes (ZMQ_MAXMSGSIZE)", 0, 64, 1u << 30},
    {"profile-cache", PS_CFG_UINT, "100000", "users whose profiles are kept in memory", 0, 1,
     100000000},
    {"health-interval-ms", PS_CFG_UINT, "1000", "time between health probes of every replica", 0,
     10, 3600000},
    {"http-timeout-s", PS_CFG_UINT, "30", "idle time after which an HTTP connection is closed", 0,
     1, 3600},
    {"drain-ms", PS_CFG_UINT, "200", "on shutdown, time replies still being written get (ms)", 0, 0,
     60000},
    {"log-level", PS_CFG_STRING, "info", "debug, info, warn, error or off", 0, 0, 0},
    {"pid-file", PS_CFG_STRING, NULL, "write the process id here (removed on exit)", 0, 0, 0},
    {"ready-file", PS_CFG_STRING, NULL,
     "write the HTTP address here once listening and every shard answered a health probe "
     "(removed on exit)",
     0, 0, 0},
};

static const char broker_about[] =
    "The front door of a PerSRV cluster: HTTP/JSON search over the shards (ZeroMQ), with\n"
    "deadlines, replica failover and partial answers. Endpoints: GET /v1/search?q=&user=&k=,\n"
    "GET /v1/stickers/{id}, GET /healthz, GET /readyz, GET /metrics.\n"
    "Stops cleanly on SIGTERM or SIGINT.";

typedef struct broker_main {
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *listener;
    struct event *health_ev, *sig_term, *sig_int;
    broker_pool_t *pool;
    const char *ready_file;
    char addr[128];
    int ready_written, stopping;
    struct timeval drain;
} broker_main;

static void on_health(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    broker_main *m = arg;
    uint32_t down = broker_pool_probe(m->pool);
    if (down == 0 && !m->ready_written && !m->stopping) {
        m->ready_written = 1;
        if (m->ready_file && ps_write_file_atomic(m->ready_file, m->addr))
            ps_log(PS_LOG_ERROR, "broker", "ready_file_failed", "path=%s msg=\"%s\"", m->ready_file,
                   strerror(errno));
        ps_log(PS_LOG_INFO, "broker", "ready", "http=%s shards=%u", m->addr,
               broker_pool_nshards(m->pool));
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    broker_main *m = arg;
    if (m->stopping) return;
    m->stopping = 1;
    ps_log(PS_LOG_INFO, "broker", "stopping", "signal=%d", (int)sig);
    if (m->listener) evhttp_del_accept_socket(m->http, m->listener);
    m->listener = NULL;
    event_del(m->health_ev);
    event_base_loopexit(m->base, &m->drain);
}

/* Split "host:port" ("[v6]:port" too). Returns 0 or -1. */
static int split_addr(const char *s, char *host, size_t cap, uint16_t *port)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s) return -1;
    size_t hl = (size_t)(colon - s);
    const char *h = s;
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') h++, hl -= 2;
    if (hl == 0 || hl >= cap) return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    char *end;
    errno = 0;
    unsigned long p = strtoul(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || p > 65535) return -1;
    *port = (uint16_t)p;
    return 0;
}

int main(int argc, char **argv)
{
    ps_err err = {0, ""};
    int status = 1, pid_written = 0;
    broker_main m = {0};
    broker_profcache_t *profiles = NULL;
    broker_metrics_t *metrics = NULL;
    broker_http_t *handlers = NULL;
    ps_cfg_t *cfg = ps_cfg_daemon("broker", broker_about, broker_opts,
                                  sizeof broker_opts / sizeof broker_opts[0], argc, argv, &status);
    if (!cfg) return status;
    status = 1;
    int prc = 0;
    char host[128];
    uint16_t port = 0;
    if (!prc && split_addr(ps_cfg_str(cfg, "http"), host, sizeof host, &port))
        prc = ps_err_set(&err, PS_EINVAL, "http: '%s' is not host:port", ps_cfg_str(cfg, "http"));
    if (!prc && !(m.pool = broker_pool_new(ps_cfg_str(cfg, "shards"),
                                           (uint32_t)ps_cfg_uint(cfg, "deadline-ms"),
                                           (uint32_t)ps_cfg_uint(cfg, "retries"),
                                           (size_t)ps_cfg_uint(cfg, "max-frame"), &err)))
        prc = err.code;
    if (prc) {
        fprintf(stderr, "broker: %s\n", err.msg);
        ps_cfg_free(cfg);
        return 2;
    }

    const char *pid_file = ps_cfg_str(cfg, "pid-file");
    m.ready_file = ps_cfg_str(cfg, "ready-file");
    uint64_t drain = ps_cfg_uint(cfg, "drain-ms");
    m.drain = (struct timeval){(time_t)(drain / 1000), (suseconds_t)(drain % 1000) * 1000};
    if (m.ready_file) unlink(m.ready_file);
    signal(SIGPIPE, SIG_IGN);

    const char *pdir = ps_cfg_str(cfg, "profiles");
    if (!(profiles = broker_profcache_new(pdir, (size_t)ps_cfg_uint(cfg, "profile-cache"), &err))) {
        ps_log(PS_LOG_ERROR, "broker", "start_failed", "profiles=%s code=%s msg=\"%s\"",
               pdir ? pdir : "", ps_errname(err.code), err.msg);
        goto out;
    }
    if (!(metrics = broker_metrics_new(broker_pool_nshards(m.pool)))) {
        ps_log(PS_LOG_ERROR, "broker", "start_failed", "msg=\"out of memory\"");
        goto out;
    }
    if (!(m.base = event_base_new()) || !(m.http = evhttp_new(m.base))) {
        ps_log(PS_LOG_ERROR, "broker", "start_failed", "msg=\"libevent setup failed\"");
        goto out;
    }
    evhttp_set_max_body_size(m.http, (ev_ssize_t)ps_cfg_uint(cfg, "max-body"));
    evhttp_set_max_headers_size(m.http, (ev_ssize_t)ps_cfg_uint(cfg, "max-headers"));
    evhttp_set_timeout(m.http, (int)ps_cfg_uint(cfg, "http-timeout-s"));
    /* Every method reaches the handler, so a wrong one gets a JSON 405; a body over max-body
     * is read and dropped (lingering close) so the client sees the 413. */
    evhttp_set_allowed_methods(m.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                           EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                           EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT |
                                           EVHTTP_REQ_PATCH);
    evhttp_set_flags(m.http, EVHTTP_SERVER_LINGERING_CLOSE);
    broker_limits lim = {.R = (uint32_t)ps_cfg_uint(cfg, "recall-depth"),
                         .max_k = (uint32_t)ps_cfg_uint(cfg, "max-k"),
                         .max_query_bytes = (size_t)ps_cfg_uint(cfg, "max-query-bytes"),
                         .deadline_ms = (uint32_t)ps_cfg_uint(cfg, "deadline-ms")};
    if (!(handlers = broker_http_new(m.http, m.pool, profiles, metrics, &lim, &err))) {
        ps_log(PS_LOG_ERROR, "broker", "start_failed", "code=%s msg=\"%s\"", ps_errname(err.code),
               err.msg);
        goto out;
    }
    if (!(m.listener = evhttp_bind_socket_with_handle(m.http, host, port))) {
        ps_log(PS_LOG_ERROR, "broker", "start_failed", "http=%s msg=\"cannot listen: %s\"",
               ps_cfg_str(cfg, "http"), strerror(errno));
        goto out;
    }
    struct sockaddr_storage sa;
    socklen_t salen = sizeof sa;
    char ip[INET6_ADDRSTRLEN] = "";
    if (getsockname(evhttp_bound_socket_get_fd(m.listener), (struct sockaddr *)&sa, &salen) == 0) {
        if (sa.ss_family == AF_INET6) {
            struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&sa;
            inet_ntop(AF_INET6, &a6->sin6_addr, ip, sizeof ip);
            snprintf(m.addr, sizeof m.addr, "[%s]:%u", ip, ntohs(a6->sin6_port));
        } else {
            struct sockaddr_in *a4 = (struct sockaddr_in *)&sa;
            inet_ntop(AF_INET, &a4->sin_addr, ip, sizeof ip);
            snprintf(m.addr, sizeof m.addr, "%s:%u", ip, ntohs(a4->sin_port));
        }
    } else {
        snprintf(m.addr, sizeof m.addr, "%s", ps_cfg_str(cfg, "http"));
    }
    ps_log(PS_LOG_INFO, "broker", "listening", "http=%s shards=%u", m.addr,
           broker_pool_nshards(m.pool));

    if (pid_file) {
        char pid[32];
        snprintf(pid, sizeof pid, "%ld", (long)getpid());
        if (ps_write_file_atomic(pid_file, pid)) {
            ps_log(PS_LOG_ERROR, "broker", "start_failed", "msg=\"pid-file %s: %s\"", pid_file,
                   strerror(errno));
            goto out;
        }
        pid_written = 1;
    }

    uint64_t hi = ps_cfg_uint(cfg, "health-interval-ms");
    struct timeval every = {(time_t)(hi / 1000), (suseconds_t)(hi % 1000) * 1000};
    if (!(m.health_ev = event_new(m.base, -1, EV_PERSIST, on_health, &m)) ||
        !(m.sig_term = evsignal_new(m.base, SIGTERM, on_signal, &m)) ||
        !(m.sig_int = evsignal_new(m.base, SIGINT, on_signal, &m)) ||
        event_add(m.health_ev, &every) || event_add(m.sig_term, NULL) ||
        event_add(m.sig_int, NULL)) {
        ps_log(PS_LOG_ERROR, "broker", "start_failed", "msg=\"libevent events failed\"");
        goto out;
    }
    on_health(-1, 0, &m); /* the first probe now: ready as soon as every shard answers */
    if (event_base_dispatch(m.base) < 0) {
        ps_log(PS_LOG_ERROR, "broker", "loop_failed", "msg=\"event_base_dispatch\"");
        goto out;
    }
    status = 0;

out:
    if (m.ready_file) unlink(m.ready_file);
    if (pid_written) unlink(pid_file);
    if (m.health_ev) event_free(m.health_ev);
    if (m.sig_term) event_free(m.sig_term);
    if (m.sig_int) event_free(m.sig_int);
    if (m.http) evhttp_free(m.http);
    broker_http_free(handlers);
    if (m.base) event_base_free(m.base);
    broker_metrics_free(metrics);
    broker_profcache_free(profiles);
    broker_pool_free(m.pool);
    libevent_global_shutdown();
    ps_log(status ? PS_LOG_ERROR : PS_LOG_INFO, "broker", "exit", "status=%d", status);
    ps_cfg_free(cfg);
    return status;
}
