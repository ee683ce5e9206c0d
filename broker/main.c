/*
 * main.c — the `broker` daemon: configuration (one table, ps/config.h), the listening HTTP
 * socket, the ZeroMQ front door (ps/zserver.h, served by this thread), the lanes (lane.c),
 * signals, pid and ready files.
 *
 * Ready file: written (atomically: temp file, fsync, rename) once the HTTP port listens and
 * every shard has answered a health probe. Line 1: the HTTP address
 * ("127.0.0.1:8080", the real port when the configured one is 0); line 2: the front door's
 * ZeroMQ endpoint (the real port when it was '*'), when there is one.
 *
 * Stopping: SIGTERM or SIGINT (a self-pipe) makes the front door stop reading and wait for the
 * requests it handed to lanes; then every lane closes its listener and leaves its loop after
 * drain-ms (replies still being written get out), the lanes are joined and everything freed.
 *
 * Exit status: 0 after a clean stop, 1 when the daemon could not start (profiles unreadable,
 * port in use ...), 2 for a configuration error.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker.h"
#include "ps/config.h"
#include "ps/httpguard.h"
#include "ps/log.h"
#include "ps/wire.h"
#include "ps/zserver.h"

#define BROKER_BACKEND "inproc://broker-lanes"

#define BROKER_MAX_FRAME_DEFAULT "2097152" /* the largest frame wire.h allows is 1.3 MiB */
_Static_assert(PS_WIRE_MAX_FRAME == 4194304, "update BROKER_MAX_FRAME_DEFAULT");

static const ps_cfg_opt broker_opts[] = {
    {"shards", PS_CFG_STRING, NULL,
     "topology: shard endpoints in shard order separated by ',', replicas of one shard by '|' "
     "(tcp://127.0.0.1:5001|tcp://127.0.0.1:5002,tcp://127.0.0.1:5003)",
     PS_CFG_REQUIRED, 0, 0},
    {"profiles", PS_CFG_STRING, NULL,
     "profiles directory (builder build --shards: DIR/profiles), read-only; unset (and no "
     "profile-replicas): every user is unknown",
     0, 0, 0},
    {"profile-replicas", PS_CFG_STRING, NULL,
     "the profile service's nodes profiles are read from, separated by '|' (replicas, and the "
     "primary if it should serve reads too); overrides profiles",
     0, 0, 0},
    {"profile-primary", PS_CFG_STRING, NULL,
     "the profile service's primary: POST /v1/click goes there (unset: clicks get 503)", 0, 0, 0},
    {"profile-staleness-ms", PS_CFG_UINT, "1000",
     "how long a profile read from the service is reused before it is read again", 0, 0, 3600000},
    {"click-deadline-ms", PS_CFG_UINT, "2000",
     "time the primary gets to make a click durable (a synced write); a click sent and not "
     "answered by then gets 504 outcome_unknown (retry it with the same click_id)",
     0, 1, 60000},
    {"max-clicks", PS_CFG_UINT, "256",
     "clicks in flight to the profile primary per lane (more get 503: not sent)", 0, 1, 100000},
    {"http", PS_CFG_STRING, "127.0.0.1:8080", "HTTP listen address host:port (port 0: any)", 0, 0,
     0},
    {"zmq", PS_CFG_STRING, NULL,
     "ZeroMQ front door for libpersrv and the persrv CLI (tcp://127.0.0.1:5600; port '*': any); "
     "unset: HTTP only",
     0, 0, 0},
    {"lanes", PS_CFG_UINT, "4",
     "lanes: threads each with its own event loop, serving many requests at once (HTTP and "
     "ZeroMQ alike)",
     0, 1, BROKER_MAX_LANES},
    {"max-inflight", PS_CFG_UINT, "1024",
     "front-door requests handed to lanes and not yet answered (more wait in ZeroMQ queues)", 0, 1,
     1000000},
    {"hwm", PS_CFG_UINT, "1000", "front-door ZMQ_SNDHWM / ZMQ_RCVHWM per client", 0, 1, 1000000},
    {"deadline-ms", PS_CFG_UINT, "100", "time a shard replica gets per attempt (ms)", 0, 1, 60000},
    {"retries", PS_CFG_UINT, "1", "attempts on other replicas after a shard misses its deadline", 0,
     0, 16},
    {"max-query-bytes", PS_CFG_UINT, "1024", "longest query q in bytes (longer: 413 too_large)", 0,
     1, 65536},
    {"max-k", PS_CFG_UINT, "100", "largest k a search may ask for", 0, 1, PS_SEARCH_MAX_R},
    {"recall-depth", PS_CFG_UINT, "100",
     "R, the recall depth: the top R by recall are ranked by score", 0, 1, PS_SEARCH_MAX_R},
    {"shard-depth", PS_CFG_UINT, "0",
     "hits asked of each shard in a search's first round; a shard that may hold more of the top "
     "R is asked again at R (0: R/N with room for all but ~1 search in 1,000, ps_shard_depth)",
     0, 0, PS_SEARCH_MAX_R},
    {"max-body", PS_CFG_UINT, "65536", "largest HTTP request body in bytes (larger: 413)", 0, 0,
     1u << 30},
    {"max-headers", PS_CFG_UINT, "65536",
     "largest HTTP request line + headers in bytes (a query string counts here)", 0, 1024,
     1u << 24},
    {"max-frame", PS_CFG_UINT, BROKER_MAX_FRAME_DEFAULT,
     "largest frame from a shard or a front-door client in bytes (ZMQ_MAXMSGSIZE)", 0, 64,
     1u << 30},
    {"profile-cache", PS_CFG_UINT, "100000", "users whose profiles are kept in memory", 0, 1,
     100000000},
    {"health-interval-ms", PS_CFG_UINT, "1000", "time between health probes of every replica", 0,
     10, 3600000},
    {"down-after-missed-probes", PS_CFG_UINT, "3",
     "health probes a replica must miss in a row before it is marked down (a busy replica "
     "answers late, a dead one never; a transport error marks it down at once)",
     0, 1, 1000},
    {"slow-start-ms", PS_CFG_UINT, "3000",
     "a replica back from down gets traffic gradually: its weight grows from 1/10 to full "
     "over this time (0: full at once)",
     0, 0, 3600000},
    {"http-timeout-s", PS_CFG_UINT, "30", "idle time after which an HTTP connection is closed", 0,
     1, 3600},
    {"max-connections", PS_CFG_UINT, "1024",
     "HTTP connections held at once, all lanes together; more are answered 503 and closed (0: "
     "no cap, not for production)",
     0, 0, 1000000},
    {"request-timeout-ms", PS_CFG_UINT, "10000",
     "time an HTTP request gets from its first byte to its last, headers and body together; "
     "over it: 408 and the connection closed (0: no limit; http-timeout-s is only an idle "
     "timeout, which a request trickled a byte at a time never hits)",
     0, 0, 3600000},
    {"image-root", PS_CFG_STRING, NULL,
     "directory of the stickers' pictures (a corpus 'image' that is a path is relative to it), "
     "served read-only under /images/ for the search page at /; unset: /images/ is 404",
     0, 0, 0},
    {"max-image-bytes", PS_CFG_UINT, "1048576",
     "largest picture /images/ serves in bytes (larger: 413); a picture goes out with sendfile, "
     "the lane only opens and stats it",
     0, 1, 1u << 30},
    {"drain-ms", PS_CFG_UINT, "200", "on shutdown, time replies still being written get (ms)", 0, 0,
     60000},
    {"api-keys", PS_CFG_STRING, NULL,
     "file of API keys for the HTTP door, one 'NAME SCOPES RATE KEY' a line (scopes search, "
     "click; rate N/s, N/min or -): search, sticker and click requests then need "
     "'Authorization: Bearer KEY' (401/403/429); without it the door is open (development)",
     0, 0, 0},
    PS_ADMIN_CFG_OPTS("/admin/switch"),
    {"snapshot-version", PS_CFG_UINT, "0",
     "snapshot version to serve at start (0: the shards' active version, adopted from the first "
     "answer every shard gives from one version)",
     0, 0, 9223372036854775807.0},
    PS_CURVE_CFG_OPTS,
    PS_LOG_CFG_OPTS,
    {"access-log", PS_CFG_BOOL, "false",
     "log a line per HTTP request at info (method, path, request_id, key, status, took_ms); "
     "otherwise those lines are at debug",
     0, 0, 0},
    {"pid-file", PS_CFG_STRING, NULL, "write the process id here (removed on exit)", 0, 0, 0},
    {"ready-file", PS_CFG_STRING, NULL,
     "write the HTTP address here once listening and every shard answered a health probe "
     "(removed on exit)",
     0, 0, 0},
};

static const char broker_about[] =
    "The front door of a PerSRV cluster: search over the shards (ZeroMQ), with deadlines,\n"
    "replica failover and partial answers. HTTP/JSON: GET /v1/search?q=&user=&k=&explain=,\n"
    "POST /v1/click, GET /v1/stickers/{id}, GET /healthz, GET /readyz, GET /metrics.\n"
    "ZeroMQ (--zmq): the protocol of proto/persrv.proto that libpersrv speaks. Profiles come\n"
    "from a profiles directory or from the profile service (--profile-replicas, clicks to\n"
    "--profile-primary). Stops cleanly on SIGTERM or SIGINT.";

static int lane_pipe[2] = {-1, -1}; /* main thread → lanes: stop */

/* Readiness: the ready file is written once every lane has started and the probing lane (0)
 * has seen every shard up, whichever comes last. */
typedef struct readiness {
    pthread_mutex_t mu;
    int started, ready, written;
    const char *file;
    char text[1200];
} readiness;

static void ready_write_locked(readiness *r)
{
    if (r->written || !r->started || !r->ready) return;
    r->written = 1;
    if (r->file && ps_write_file_atomic(r->file, r->text))
        ps_log(PS_LOG_ERROR, "broker", "ready_file_failed", "path=%s msg=\"%s\"", r->file,
               strerror(errno));
    ps_log(PS_LOG_INFO, "broker", "ready", "every shard answers");
}

static void on_lane_ready(void *arg)
{
    readiness *r = arg;
    pthread_mutex_lock(&r->mu);
    r->ready = 1;
    ready_write_locked(r);
    pthread_mutex_unlock(&r->mu);
}

static int make_pipe(int p[2])
{
    if (pipe(p)) return -1;
    for (int i = 0; i < 2; i++)
        if (fcntl(p[i], F_SETFL, O_NONBLOCK) || fcntl(p[i], F_SETFD, FD_CLOEXEC)) return -1;
    return 0;
}

/* A non-blocking listening TCP socket on host:port; its address into addr. -1 with errno. */
static int listen_tcp(const char *host, uint16_t port, char *addr, size_t cap)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char ps[8];
    snprintf(ps, sizeof ps, "%u", port);
    int gai = getaddrinfo(host, ps, &hints, &ai);
    if (gai) {
        errno = EINVAL;
        return -1;
    }
    int fd = -1, one = 1;
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0 &&
            bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 1024) == 0)
            break;
        int e = errno;
        close(fd);
        errno = e;
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0) return -1;
    struct sockaddr_storage sa;
    socklen_t salen = sizeof sa;
    char ip[INET6_ADDRSTRLEN] = "";
    if (getsockname(fd, (struct sockaddr *)&sa, &salen) == 0 && sa.ss_family == AF_INET6) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&sa;
        inet_ntop(AF_INET6, &a6->sin6_addr, ip, sizeof ip);
        snprintf(addr, cap, "[%s]:%u", ip, ntohs(a6->sin6_port));
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)&sa;
        inet_ntop(AF_INET, &a4->sin_addr, ip, sizeof ip);
        snprintf(addr, cap, "%s:%u", ip, ntohs(a4->sin_port));
    }
    return fd;
}

/* SIGHUP (the reload thread): the new max-k / max-query-bytes, for the next requests. */
static void reload_max_k(void *arg, const ps_cfg_t *cfg)
{
    atomic_store(&((broker_live *)arg)->max_k, (unsigned)ps_cfg_uint(cfg, "max-k"));
}

static void reload_max_query_bytes(void *arg, const ps_cfg_t *cfg)
{
    atomic_store(&((broker_live *)arg)->max_query_bytes,
                 (unsigned long long)ps_cfg_uint(cfg, "max-query-bytes"));
}

int main(int argc, char **argv)
{
    ps_err err = {0, ""};
    int status = 1, pid_written = 0, http_fd = -1;
    broker_metrics_t *metrics = NULL;
    broker_lane_t *lanes[BROKER_MAX_LANES] = {0};
    void *zctx = NULL;
    ps_zserver_t *front = NULL;
    ps_admin_t *admin = NULL;
    char *token = NULL;
    broker_keys_t *keys = NULL;
    ps_curve_t *curve = NULL;
    static broker_version_t version;
    readiness rd = {.mu = PTHREAD_MUTEX_INITIALIZER};
    ps_cfg_t *cfg = ps_cfg_daemon("broker", broker_about, broker_opts,
                                  sizeof broker_opts / sizeof broker_opts[0], argc, argv, &status);
    if (!cfg) return status;
    status = 1;
    /* max-k and max-query-bytes change on SIGHUP: every lane loads them per request */
    static broker_live live;
    atomic_store(&live.max_k, (unsigned)ps_cfg_uint(cfg, "max-k"));
    atomic_store(&live.max_query_bytes, (unsigned long long)ps_cfg_uint(cfg, "max-query-bytes"));
    ps_daemon_reload_live("max-k", reload_max_k, &live);
    ps_daemon_reload_live("max-query-bytes", reload_max_query_bytes, &live);
    char host[128], addr[128];
    uint16_t port = 0;
    if (broker_parse_addr(ps_cfg_str(cfg, "http"), host, sizeof host, &port)) {
        fprintf(stderr, "broker: http: '%s' is not host:port\n", ps_cfg_str(cfg, "http"));
        ps_cfg_free(cfg);
        return 2;
    }
    if (!(curve = ps_curve_from_cfg(cfg, &err)) && err.code) {
        fprintf(stderr, "broker: %s\n", err.msg);
        ps_cfg_free(cfg);
        return 2;
    }
    /* The topology is checked once here, so that a bad one is a configuration error. */
    broker_pool_t *check = broker_pool_new(ps_cfg_str(cfg, "shards"), 1, 0, 64, curve, NULL, &err);
    if (!check) {
        fprintf(stderr, "broker: %s\n", err.msg);
        ps_curve_free(curve);
        ps_cfg_free(cfg);
        return 2;
    }
    uint32_t nshards = broker_pool_nshards(check);
    broker_upmap_t *upmap = broker_upmap_new(check);
    broker_pool_free(check);
    broker_upmap_t *rep_upmap = NULL, *prim_upmap = NULL;
    const char *prof_topo[2] = {ps_cfg_str(cfg, "profile-replicas"),
                                ps_cfg_str(cfg, "profile-primary")};
    broker_upmap_t **prof_map[2] = {&rep_upmap, &prim_upmap};
    for (int i = 0; i < 2 && upmap; i++) {
        if (!prof_topo[i]) continue;
        const char *name = i ? "profile-primary" : "profile-replicas";
        broker_pool_t *pc = broker_pool_new(prof_topo[i], 1, 0, 64, curve, NULL, &err);
        if (!pc || broker_pool_nshards(pc) != 1 || (i == 1 && broker_pool_nreplicas(pc, 0) != 1)) {
            fprintf(stderr, "broker: %s: %s\n", name,
                    pc ? (i ? "one endpoint" : "endpoints separated by '|' (no ',')") : err.msg);
            broker_pool_free(pc);
            broker_upmap_free(upmap);
            broker_upmap_free(rep_upmap);
            ps_curve_free(curve);
            ps_cfg_free(cfg);
            return 2;
        }
        *prof_map[i] = broker_upmap_new(pc);
        broker_pool_free(pc);
        if (!*prof_map[i]) upmap = NULL; /* reported below */
    }
    if (!upmap) {
        fprintf(stderr, "broker: out of memory\n");
        ps_curve_free(curve);
        ps_cfg_free(cfg);
        return 1;
    }

    /* one fd per HTTP connection of either door, and the daemon's own (PS_FD_RESERVE); with a
     * ZeroMQ front door, whose peers libzmq does not cap, the hard limit */
    uint64_t max_conn = ps_cfg_uint(cfg, "max-connections");
    ps_admin_limits admin_limits = ps_admin_limits_of(cfg);
    if (ps_fd_limit_raise(max_conn && admin_limits.max_connections
                              ? max_conn + admin_limits.max_connections + PS_FD_RESERVE
                              : 0,
                          ps_cfg_str(cfg, "zmq") ? PS_FD_TO_HARD : 0, "broker", NULL, &err))
        ps_log(PS_LOG_WARN, "broker", "fd_limit_unknown", "msg=\"%s\"", err.msg);

    const char *pid_file = ps_cfg_str(cfg, "pid-file");
    rd.file = ps_cfg_str(cfg, "ready-file");
    if (rd.file) unlink(rd.file);
    int stop_fd = ps_daemon_stop_fd(); /* SIGTERM, SIGINT */
    if (stop_fd < 0 || make_pipe(lane_pipe)) {
        ps_log(PS_LOG_ERROR, "broker", "start_failed", "msg=\"pipe: %s\"", strerror(errno));
        goto out;
    }

    if (!(metrics = broker_metrics_new(nshards))) {
        ps_log(PS_LOG_ERROR, "broker", "start_failed", "msg=\"out of memory\"");
        goto out;
    }
    if ((http_fd = listen_tcp(host, port, addr, sizeof addr)) < 0) {
        ps_log(PS_LOG_ERROR, "broker", "start_failed", "http=%s msg=\"cannot listen: %s\"",
               ps_cfg_str(cfg, "http"), strerror(errno));
        goto out;
    }
    const char *zmq_listen = ps_cfg_str(cfg, "zmq");
    ps_curve_log_mode(curve, "broker", zmq_listen);
    size_t max_frame = (size_t)ps_cfg_uint(cfg, "max-frame");
    if (zmq_listen) {
        ps_zserver_cfg zc = {.component = "broker",
                             .listen = zmq_listen,
                             .backend = BROKER_BACKEND,
                             .max_frame = max_frame,
                             .max_inflight = (uint32_t)ps_cfg_uint(cfg, "max-inflight"),
                             .drain_ms = (uint32_t)ps_cfg_uint(cfg, "drain-ms"),
                             .hwm = (uint32_t)ps_cfg_uint(cfg, "hwm"),
                             .curve = curve};
        if (!(zctx = zmq_ctx_new()) || !(front = ps_zserver_bind(zctx, &zc, &err))) {
            ps_log(PS_LOG_ERROR, "broker", "start_failed", "zmq=%s code=%s msg=\"%s\"", zmq_listen,
                   ps_errname(zctx ? err.code : PS_ENOMEM), zctx ? err.msg : "zmq_ctx_new");
            goto out;
        }
    }
    broker_version_init(&version, ps_cfg_uint(cfg, "snapshot-version"));
    if (ps_admin_token_load(ps_cfg_str(cfg, "admin-token"), ps_cfg_str(cfg, "admin-token-file"),
                            &token, &err)) {
        ps_log(PS_LOG_ERROR, "broker", "start_failed", "msg=\"%s\"", err.msg);
        goto out;
    }
    const char *image_root = ps_cfg_str(cfg, "image-root");
    struct stat isb;
    if (image_root && stat(image_root, &isb) != 0) {
        ps_log(PS_LOG_ERROR, "broker", "start_failed", "msg=\"image-root %s: %s\"", image_root,
               strerror(errno));
        goto out;
    }
    if (image_root && !S_ISDIR(isb.st_mode)) {
        ps_log(PS_LOG_ERROR, "broker", "start_failed", "msg=\"image-root %s: not a directory\"",
               image_root);
        goto out;
    }
    const char *keys_file = ps_cfg_str(cfg, "api-keys");
    if (keys_file && !(keys = broker_keys_load(keys_file, &err))) {
        ps_log(PS_LOG_ERROR, "broker", "start_failed", "msg=\"%s\"", err.msg);
        goto out;
    }
    if (keys)
        ps_log(PS_LOG_INFO, "broker", "api_keys", "file=%s keys=%zu", keys_file,
               broker_keys_count(keys));
    else
        ps_log(PS_LOG_WARN, "broker", "open_door",
               "msg=\"no --api-keys: anyone who reaches the HTTP port may search and click "
               "(development only)\"");
    broker_admin_cfg ac = {.listen = ps_cfg_str(cfg, "admin"),
                           .token = token,
                           .limits = admin_limits,
                           .topology = ps_cfg_str(cfg, "shards"),
                           .deadline_ms = (uint32_t)ps_cfg_uint(cfg, "deadline-ms") * 10,
                           .max_frame = max_frame,
                           .curve = curve,
                           .keys = keys,
                           .version = &version,
                           .metrics = metrics};
    if (!(admin = broker_admin_start(&ac, &err))) {
        ps_log(PS_LOG_ERROR, "broker", "start_failed", "code=%s msg=\"%s\"", ps_errname(err.code),
               err.msg);
        goto out;
    }
    /* HTTP address, front-door endpoint (empty line without one), admin address */
    snprintf(rd.text, sizeof rd.text, "%s\n%s\n%s", addr, front ? ps_zserver_endpoint(front) : "",
             ps_admin_address(admin));
    uint32_t nlanes = (uint32_t)ps_cfg_uint(cfg, "lanes");
    ps_log(PS_LOG_INFO, "broker", "listening", "http=%s zmq=%s shards=%u lanes=%u", addr,
           front ? ps_zserver_endpoint(front) : "-", nshards, nlanes);

    broker_images images = {.root = image_root,
                            .max_bytes = (size_t)ps_cfg_uint(cfg, "max-image-bytes")};
    broker_lane_cfg lc = {.topology = ps_cfg_str(cfg, "shards"),
                          .deadline_ms = (uint32_t)ps_cfg_uint(cfg, "deadline-ms"),
                          .retries = (uint32_t)ps_cfg_uint(cfg, "retries"),
                          .max_frame = max_frame,
                          .curve = curve,
                          .profiles = ps_cfg_str(cfg, "profiles"),
                          .profile_cache = (size_t)ps_cfg_uint(cfg, "profile-cache"),
                          .lim = {.live = &live,
                                  .R = (uint32_t)ps_cfg_uint(cfg, "recall-depth"),
                                  .shard_depth = (uint32_t)ps_cfg_uint(cfg, "shard-depth"),
                                  .max_k = (uint32_t)ps_cfg_uint(cfg, "max-k"),
                                  .max_query_bytes = (size_t)ps_cfg_uint(cfg, "max-query-bytes"),
                                  .deadline_ms = (uint32_t)ps_cfg_uint(cfg, "deadline-ms")},
                          .health_interval_ms = (uint32_t)ps_cfg_uint(cfg, "health-interval-ms"),
                          .down_after = (uint32_t)ps_cfg_uint(cfg, "down-after-missed-probes"),
                          .slow_start_ms = (uint32_t)ps_cfg_uint(cfg, "slow-start-ms"),
                          .upmap = upmap,
                          .profile_replicas = prof_topo[0],
                          .profile_primary = prof_topo[1],
                          .profile_staleness_ms =
                              (uint32_t)ps_cfg_uint(cfg, "profile-staleness-ms"),
                          .click_deadline_ms = (uint32_t)ps_cfg_uint(cfg, "click-deadline-ms"),
                          .max_clicks = (uint32_t)ps_cfg_uint(cfg, "max-clicks"),
                          .replicas_upmap = rep_upmap,
                          .primary_upmap = prim_upmap,
                          .http_fd = http_fd,
                          .access_log = ps_cfg_bool(cfg, "access-log"),
                          .images = images,
                          .max_body = (size_t)ps_cfg_uint(cfg, "max-body"),
                          .max_headers = (size_t)ps_cfg_uint(cfg, "max-headers"),
                          .http_timeout_s = (int)ps_cfg_uint(cfg, "http-timeout-s"),
                          .max_connections = (uint32_t)max_conn,
                          .request_timeout_ms = (uint32_t)ps_cfg_uint(cfg, "request-timeout-ms"),
                          .zctx = zctx,
                          .backend = BROKER_BACKEND,
                          .stop_fd = lane_pipe[0],
                          .drain_ms = (uint32_t)ps_cfg_uint(cfg, "drain-ms"),
                          .metrics = metrics,
                          .keys = keys,
                          .version = &version,
                          .on_ready = on_lane_ready,
                          .ready_arg = &rd};
    if (pid_file) {
        if (ps_write_pid_file(pid_file)) {
            ps_log(PS_LOG_ERROR, "broker", "start_failed", "msg=\"pid-file %s: %s\"", pid_file,
                   strerror(errno));
            goto out;
        }
        pid_written = 1;
    }

    for (uint32_t i = 0; i < nlanes; i++) {
        lc.id = (int)i;
        lc.probe = i == 0;
        if (!(lanes[i] = broker_lane_start(&lc, &err))) {
            ps_log(PS_LOG_ERROR, "broker", "start_failed", "lane=%u code=%s msg=\"%s\"", i,
                   ps_errname(err.code), err.msg);
            goto stop;
        }
    }
    pthread_mutex_lock(&rd.mu);
    rd.started = 1;
    ready_write_locked(&rd);
    pthread_mutex_unlock(&rd.mu);

    /* Serve the front door (or just wait) until a signal; the front door drains first. */
    if (front) {
        if (ps_zserver_run(front, stop_fd, &err)) {
            ps_log(PS_LOG_ERROR, "broker", "front_failed", "msg=\"%s\"", err.msg);
            goto stop;
        }
    } else {
        struct pollfd pfd = {.fd = stop_fd, .events = POLLIN};
        while (poll(&pfd, 1, -1) < 0 && errno == EINTR) {
        }
        ps_log(PS_LOG_INFO, "broker", "stopping", "lanes=%u", nlanes);
    }
    status = 0;

stop:
    if (lane_pipe[1] >= 0) {
        ssize_t n = write(lane_pipe[1], "x", 1);
        (void)n;
    }
    for (uint32_t i = 0; i < BROKER_MAX_LANES; i++) broker_lane_join(lanes[i]);
out:
    broker_admin_stop(admin);
    free(token);
    broker_keys_free(keys);
    if (rd.file) unlink(rd.file);
    if (pid_written) unlink(pid_file);
    ps_zserver_close(front);
    if (zctx) zmq_ctx_term(zctx);
    if (http_fd >= 0) close(http_fd);
    for (int i = 0; i < 2; i++) {
        if (lane_pipe[i] >= 0) close(lane_pipe[i]);
    }
    broker_metrics_free(metrics);
    broker_upmap_free(upmap);
    broker_upmap_free(rep_upmap);
    broker_upmap_free(prim_upmap);
    ps_curve_free(curve);
    libevent_global_shutdown();
    ps_log(status ? PS_LOG_ERROR : PS_LOG_INFO, "broker", "exit", "status=%d", status);
    ps_cfg_free(cfg);
    return status;
}
