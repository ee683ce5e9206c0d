/*
 * main.c — the `profile` daemon: configuration (one table, ps/config.h), the store, signals,
 * pid and ready files, the admin port (admin.c), and for a replica the tail thread;
 * profsvc_serve does the serving.
 *
 * Exit status: 0 after a clean stop (SIGTERM or SIGINT), 1 when the daemon could not start
 * (database will not open, endpoint in use ...), 2 for a configuration error.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ps/admin.h"
#include "ps/config.h"
#include "ps/curve_zap.h"
#include "ps/httpguard.h"
#include "ps/log.h"
#include "ps/wire.h"
#include "profile.h"

/* The default of max-frame, as text for the table. */
#define PROFSVC_MAX_FRAME_DEFAULT                                                                  \
    "4194304" /* a load_profile of 1024 clicks at d = 512 is 2 MiB                                 \
               */
_Static_assert(PS_WIRE_MAX_FRAME == 4194304, "update PROFSVC_MAX_FRAME_DEFAULT");

static const ps_cfg_opt profsvc_opts[] = {
    {"db", PS_CFG_STRING, NULL, "RocksDB directory of this node (created if missing)",
     PS_CFG_REQUIRED, 0, 0},
    {"listen", PS_CFG_STRING, NULL,
     "ZeroMQ endpoint to bind, e.g. tcp://127.0.0.1:7301 (port '*': any free port; the ready "
     "file names it)",
     PS_CFG_REQUIRED, 0, 0},
    {"role", PS_CFG_STRING, "primary",
     "primary (takes clicks and profile loads) or replica (tails --primary, serves reads)", 0, 0,
     0},
    {"primary", PS_CFG_STRING, NULL, "replica: the primary's ZeroMQ endpoint (required)", 0, 0, 0},
    {"workers", PS_CFG_UINT, "4", "worker threads answering requests", 0, 1, 256},
    {"sync", PS_CFG_UINT, "1",
     "1: acknowledge a click only once its WAL record is synced; 0 is UNSAFE (an acknowledged "
     "click can be lost in a crash), for tests and benchmarks only",
     0, 0, 1},
    {"history", PS_CFG_UINT, "200", "clicks kept per user for recomputing centroids", 0, 1, 100000},
    {"kmax", PS_CFG_UINT, "5", "most centroids per user (k-means k)", 0, 1, PS_PROFILE_KMAX},
    {"click-ids", PS_CFG_UINT, "1000",
     "click ids remembered per user, for idempotent clicks: a retry of one of the user's last N "
     "clicks is answered as a duplicate and stores nothing",
     0, 1, 1000000},
    {"wal-ttl-s", PS_CFG_UINT, "3600",
     "primary: seconds obsolete WAL files stay for replicas to catch up (0 with wal-size-mb 0: "
     "deleted at once)",
     0, 0, 1e9},
    {"wal-size-mb", PS_CFG_UINT, "1024", "primary: at most this much obsolete WAL is kept (MB)", 0,
     0, 1e9},
    {"write-buffer-kb", PS_CFG_UINT, "65536",
     "RocksDB memtable size (KB); a memtable flush makes its WAL obsolete", 0, 64, 16777216},
    {"poll-ms", PS_CFG_UINT, "5", "replica: pause after a WAL reply with nothing new (ms)", 0, 0,
     60000},
    {"max-frame", PS_CFG_UINT, PROFSVC_MAX_FRAME_DEFAULT,
     "largest request frame in bytes (ZMQ_MAXMSGSIZE; a larger one drops the connection)", 0, 4096,
     1u << 30},
    {"max-inflight", PS_CFG_UINT, "256",
     "requests queued to workers before the daemon stops reading the socket", 0, 1, 100000},
    {"hwm", PS_CFG_UINT, "1000", "ZeroMQ high water mark of the listening socket, messages", 0, 1,
     1000000},
    {"drain-ms", PS_CFG_UINT, "1000",
     "on shutdown, how long replies still queued may take to leave (ms)", 0, 0, 60000},
    PS_ADMIN_CFG_OPTS("/admin/checkpoint, /admin/load-profiles"),
    {"admin-max-body", PS_CFG_UINT, "134217728",
     "largest admin request body in bytes (a profile load of many users)", 0, 4096, 1u << 31},
    {"checkpoint-root", PS_CFG_STRING, NULL,
     "POST /admin/checkpoint?dir=D writes a checkpoint to the new directory D below this one, "
     "created at start if missing (unset: admin checkpoints are refused)",
     0, 0, 0},
    PS_CURVE_CFG_OPTS,
    PS_LOG_CFG_OPTS,
    {"pid-file", PS_CFG_STRING, NULL, "write the process id here (removed on exit)", 0, 0, 0},
    {"ready-file", PS_CFG_STRING, NULL,
     "once the database is open and both ports bound, write the ZeroMQ endpoint (line 1) and "
     "the admin address (line 2) here (removed on exit)",
     0, 0, 0},
};

static const char profsvc_about[] =
    "The profile service: user style profiles and the click log in RocksDB. The primary takes\n"
    "clicks (each recomputes the user's centroids) and profile loads from the builder (over\n"
    "ZeroMQ or the admin port; a load merges with what users clicked since, never wipes it);\n"
    "replicas tail the primary's write-ahead log, bootstrap from a checkpoint when it is gone,\n"
    "and serve profiles. Stops cleanly on SIGTERM or SIGINT: in-flight requests finish first.";

int main(int argc, char **argv)
{
    ps_err err = {0, ""};
    profsvc_store_t *st = NULL;
    profsvc_replica_t *tail = NULL;
    profsvc_admin_t *admin = NULL;
    char *token = NULL;
    ps_curve_t *curve = NULL;
    int status = 1, pid_written = 0;
    ps_cfg_t *cfg =
        ps_cfg_daemon("profile", profsvc_about, profsvc_opts,
                      sizeof profsvc_opts / sizeof profsvc_opts[0], argc, argv, &status);
    if (!cfg) return status;

    const char *role = ps_cfg_str(cfg, "role"), *primary = ps_cfg_str(cfg, "primary");
    int replica = !strcmp(role, "replica");
    if (!replica && strcmp(role, "primary")) {
        fprintf(stderr, "profile: --role: '%s', want primary or replica\n", role);
        ps_cfg_free(cfg);
        return 2;
    }
    if (replica && !primary) {
        fprintf(stderr, "profile: --primary: required for a replica\n");
        ps_cfg_free(cfg);
        return 2;
    }
    if (!(curve = ps_curve_from_cfg(cfg, &err)) && err.code) {
        fprintf(stderr, "profile: %s\n", err.msg);
        ps_cfg_free(cfg);
        return 2;
    }
    if (replica && ps_curve_check_endpoint(curve, primary, &err)) {
        fprintf(stderr, "profile: --primary %s\n", err.msg);
        ps_curve_free(curve);
        ps_cfg_free(cfg);
        return 2;
    }
    ps_curve_log_mode(curve, "profile", ps_cfg_str(cfg, "listen"));
    status = 1;
    /* the hard limit: every peer of the ZeroMQ port holds an fd, and libzmq caps neither their
     * number nor (ZMQ_HANDSHAKE_IVL aside) how long one may wait (ps/zserver.h) */
    ps_admin_limits admin_limits = ps_admin_limits_of(cfg);
    ps_err fd_err = {0, ""};
    if (ps_fd_limit_raise(
            admin_limits.max_connections ? admin_limits.max_connections + PS_FD_RESERVE : 0,
            PS_FD_TO_HARD, "profile", NULL, &fd_err))
        ps_log(PS_LOG_WARN, "profile", "fd_limit_unknown", "msg=\"%s\"", fd_err.msg);

    const char *pid_file = ps_cfg_str(cfg, "pid-file");
    const char *ready_file = ps_cfg_str(cfg, "ready-file");
    if (ready_file) unlink(ready_file);

    int stop_fd = ps_daemon_stop_fd();
    if (stop_fd < 0) {
        ps_log(PS_LOG_ERROR, "profile", "start_failed", "msg=\"pipe: %s\"", strerror(errno));
        goto out;
    }
    if (pid_file) {
        if (ps_write_pid_file(pid_file)) {
            ps_log(PS_LOG_ERROR, "profile", "start_failed", "msg=\"pid-file %s: %s\"", pid_file,
                   strerror(errno));
            goto out;
        }
        pid_written = 1;
    }

    profsvc_store_cfg scfg = {.dir = ps_cfg_str(cfg, "db"),
                              .replica = replica,
                              .sync = (int)ps_cfg_uint(cfg, "sync"),
                              .history = (uint32_t)ps_cfg_uint(cfg, "history"),
                              .kmax = (uint32_t)ps_cfg_uint(cfg, "kmax"),
                              .click_ids = (uint32_t)ps_cfg_uint(cfg, "click-ids"),
                              .wal_ttl_s = ps_cfg_uint(cfg, "wal-ttl-s"),
                              .wal_size_mb = ps_cfg_uint(cfg, "wal-size-mb"),
                              .write_buffer_kb = ps_cfg_uint(cfg, "write-buffer-kb")};
    if (!(st = profsvc_store_open(&scfg, &err))) {
        ps_log(PS_LOG_ERROR, "profile", "start_failed", "db=%s code=%s msg=\"%s\"", scfg.dir,
               ps_errname(err.code), err.msg);
        goto out;
    }
    ps_log(PS_LOG_INFO, "profile", "db_opened", "db=%s role=%s seq=%llu", scfg.dir, role,
           (unsigned long long)profsvc_store_seq(st));
    profsvc_ctx ctx = {.store = st,
                       .replica = replica,
                       .max_frame = (size_t)ps_cfg_uint(cfg, "max-frame"),
                       .ready = !replica,
                       .checkpoint_root = ps_cfg_str(cfg, "checkpoint-root")};
    if (ctx.checkpoint_root && mkdir(ctx.checkpoint_root, 0755) && errno != EEXIST) {
        ps_log(PS_LOG_ERROR, "profile", "start_failed", "msg=\"checkpoint-root %s: %s\"",
               ctx.checkpoint_root, strerror(errno));
        goto out;
    }
    if (ps_admin_token_load(ps_cfg_str(cfg, "admin-token"), ps_cfg_str(cfg, "admin-token-file"),
                            &token, &err) ||
        !(admin = profsvc_admin_start(&ctx, ps_cfg_str(cfg, "admin"), token,
                                      (size_t)ps_cfg_uint(cfg, "admin-max-body"), admin_limits,
                                      &err))) {
        ps_log(PS_LOG_ERROR, "profile", "start_failed", "code=%s msg=\"%s\"", ps_errname(err.code),
               err.msg);
        goto out;
    }
    if (replica) {
        profsvc_replica_cfg rcfg = {.primary = primary,
                                    .poll_ms = (uint32_t)ps_cfg_uint(cfg, "poll-ms"),
                                    /* replies: WAL and checkpoint chunks (up to 3 MiB) */
                                    .max_frame = 2 * ctx.max_frame > PS_WIRE_MAX_FRAME
                                                     ? 2 * ctx.max_frame
                                                     : PS_WIRE_MAX_FRAME,
                                    .curve = curve};
        if (!(tail = profsvc_replica_start(&ctx, &rcfg, &err))) {
            ps_log(PS_LOG_ERROR, "profile", "start_failed", "code=%s msg=\"%s\"",
                   ps_errname(err.code), err.msg);
            goto out;
        }
    }
    profsvc_server_cfg vcfg = {.listen = ps_cfg_str(cfg, "listen"),
                               .workers = (uint32_t)ps_cfg_uint(cfg, "workers"),
                               .max_inflight = (uint32_t)ps_cfg_uint(cfg, "max-inflight"),
                               .drain_ms = (uint32_t)ps_cfg_uint(cfg, "drain-ms"),
                               .hwm = (uint32_t)ps_cfg_uint(cfg, "hwm"),
                               .ready_file = ready_file,
                               .admin = profsvc_admin_address(admin),
                               .curve = curve};
    int rc = profsvc_serve(&ctx, &vcfg, stop_fd, &err);
    profsvc_replica_stop(tail); /* before the store closes under it */
    tail = NULL;
    if (rc) {
        ps_log(PS_LOG_ERROR, "profile", "start_failed", "code=%s msg=\"%s\"", ps_errname(err.code),
               err.msg);
        goto out;
    }
    status = 0;

out:
    profsvc_replica_stop(tail);
    profsvc_admin_stop(admin); /* before the store its handlers use */
    free(token);
    if (ready_file) unlink(ready_file);
    if (pid_written) unlink(pid_file);
    profsvc_store_close(st);
    ps_curve_free(curve);
    ps_log(status ? PS_LOG_ERROR : PS_LOG_INFO, "profile", "exit", "status=%d", status);
    ps_cfg_free(cfg);
    return status;
}
