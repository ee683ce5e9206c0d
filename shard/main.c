/*
 * main.c — the `shard` daemon: configuration (one table, ps/config.h), the index, signals,
 * pid and ready files; shard_serve does the serving.
 *
 * Exit status: 0 after a clean stop (SIGTERM or SIGINT), 1 when the daemon could not start
 * (bad index, endpoint in use ...), 2 for a configuration error.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ps/config.h"
#include "ps/curve_zap.h"
#include "ps/httpguard.h"
#include "ps/log.h"
#include "ps/wire.h"
#include "shard.h"

/* The default of max-frame, as text for the table. */
#define SHARD_MAX_FRAME_DEFAULT "2097152" /* the largest request wire.h allows is 1.3 MiB */
_Static_assert(PS_WIRE_MAX_FRAME == 4194304, "update SHARD_MAX_FRAME_DEFAULT");

/* The recall cache's default size, 64 MiB: a cached top 100 takes ~4.2 KB, so it holds ~15,000
 * distinct queries — the head of a Zipf-shaped query stream, which is where the hits are — for
 * a few percent of what the index itself takes (a 543k-sticker node holds ~1 GB of embeddings
 * alone). Entries are per version, and a switch empties the previous version's share. */
#define SHARD_RCACHE_DEFAULT "67108864"

static const ps_cfg_opt shard_opts[] = {
    {"index", PS_CFG_STRING, NULL,
     "a build's shard directory (builder build --shards: DIR/shard-NNN): with --data, imported "
     "on the first start; without, served in place (no snapshots can be staged)",
     0, 0, 0},
    {"data", PS_CFG_STRING, NULL,
     "data directory: the snapshot versions held, the ACTIVE pointer, uploads in progress", 0, 0,
     0},
    {"fingerprint", PS_CFG_STRING, NULL,
     "refuse to start on a build other than this one (16 hex digits, from cluster.json)", 0, 0, 0},
    PS_ADMIN_CFG_OPTS("/admin/stage, /admin/prepare, /admin/activate, /admin/retire"),
    {"listen", PS_CFG_STRING, NULL,
     "ZeroMQ endpoint to bind, e.g. tcp://127.0.0.1:7101 (no default: pick the port)",
     PS_CFG_REQUIRED, 0, 0},
    {"shard", PS_CFG_UINT, "0", "this shard's number, echoed in replies", 0, 0, 1023},
    {"shards", PS_CFG_UINT, "1", "shards in the cluster (reported in health replies)", 0, 1, 1024},
    {"workers", PS_CFG_UINT, "2",
     "worker threads, each with its own searcher; 0: the server thread searches itself (no "
     "hand-over per request: for hosts with as many shards as cores or more)",
     0, 0, 256},
    {"max-frame", PS_CFG_UINT, SHARD_MAX_FRAME_DEFAULT,
     "largest request frame in bytes (ZMQ_MAXMSGSIZE; a larger one drops the connection)", 0, 64,
     1u << 30},
    {"max-inflight", PS_CFG_UINT, "256",
     "requests queued to workers (or the server thread) before the shard stops reading the socket",
     0, 1, 100000},
    {"hwm", PS_CFG_UINT, "1000", "ZeroMQ high water mark of the listening socket, messages", 0, 1,
     1000000},
    {"rcache-bytes", PS_CFG_UINT, SHARD_RCACHE_DEFAULT,
     "recall cache: bytes of top-R results kept for repeated queries (LRU, dropped on a version "
     "switch); 0 turns it off, else at least 4096",
     0, 0, (double)(1ull << 40)},
    {"drain-ms", PS_CFG_UINT, "1000",
     "on shutdown, how long replies still queued may take to leave (ms)", 0, 0, 60000},
    PS_CURVE_CFG_OPTS,
    PS_LOG_CFG_OPTS,
    {"pid-file", PS_CFG_STRING, NULL, "write the process id here (removed on exit)", 0, 0, 0},
    {"ready-file", PS_CFG_STRING, NULL,
     "write the bound endpoint here once the index is loaded and the socket bound (removed "
     "on exit)",
     0, 0, 0},
};

static const char shard_about[] =
    "Holds one slice of the stickers (an index directory from `builder build --shards N`) in\n"
    "memory and answers search, get-sticker and health requests over ZeroMQ (persrv.proto).\n"
    "With --data it holds up to two snapshot versions, receives new ones from `builder push`\n"
    "on its admin port and serves the version each request names.\n"
    "Stops cleanly on SIGTERM or SIGINT: in-flight requests finish first.";

int main(int argc, char **argv)
{
    ps_err err = {0, ""};
    shard_versions_t *vs = NULL;
    ps_admin_t *admin = NULL;
    char *token = NULL;
    ps_curve_t *curve = NULL;
    ps_rcache_t *rcache = NULL;
    static shard_metrics metrics;
    int status = 1, pid_written = 0;
    ps_cfg_t *cfg = ps_cfg_daemon("shard", shard_about, shard_opts,
                                  sizeof shard_opts / sizeof shard_opts[0], argc, argv, &status);
    if (!cfg) return status;
    status = 1;

    /* the hard limit: every peer of the ZeroMQ port holds an fd, and libzmq caps neither their
     * number nor (ZMQ_HANDSHAKE_IVL aside) how long one may wait (ps/zserver.h) */
    ps_admin_limits admin_limits = ps_admin_limits_of(cfg);
    ps_err fd_err = {0, ""};
    if (ps_fd_limit_raise(
            admin_limits.max_connections ? admin_limits.max_connections + PS_FD_RESERVE : 0,
            PS_FD_TO_HARD, "shard", NULL, &fd_err))
        ps_log(PS_LOG_WARN, "shard", "fd_limit_unknown", "msg=\"%s\"", fd_err.msg);

    const char *pid_file = ps_cfg_str(cfg, "pid-file");
    const char *ready_file = ps_cfg_str(cfg, "ready-file");
    if (ready_file) unlink(ready_file);

    int stop_fd = ps_daemon_stop_fd();
    if (stop_fd < 0) {
        ps_log(PS_LOG_ERROR, "shard", "start_failed", "msg=\"pipe: %s\"", strerror(errno));
        goto out;
    }
    if (pid_file) {
        if (ps_write_pid_file(pid_file)) {
            ps_log(PS_LOG_ERROR, "shard", "start_failed", "msg=\"pid-file %s: %s\"", pid_file,
                   strerror(errno));
            goto out;
        }
        pid_written = 1;
    }

    shard_versions_cfg vc = {.data_dir = ps_cfg_str(cfg, "data"),
                             .index = ps_cfg_str(cfg, "index"),
                             .shard = (uint32_t)ps_cfg_uint(cfg, "shard"),
                             .nshards = (uint32_t)ps_cfg_uint(cfg, "shards"),
                             .fingerprint = ps_cfg_str(cfg, "fingerprint")};
    if (vc.shard >= vc.nshards) {
        ps_log(PS_LOG_ERROR, "shard", "start_failed", "msg=\"shard %u is not below shards %u\"",
               vc.shard, vc.nshards);
        goto out;
    }
    if (!vc.data_dir && !vc.index) {
        fprintf(stderr, "shard: --index or --data is required\n");
        status = 2;
        goto out;
    }
    if (ps_admin_token_load(ps_cfg_str(cfg, "admin-token"), ps_cfg_str(cfg, "admin-token-file"),
                            &token, &err)) {
        fprintf(stderr, "shard: %s\n", err.msg);
        status = 2;
        goto out;
    }
    if (!(curve = ps_curve_from_cfg(cfg, &err)) && err.code) {
        fprintf(stderr, "shard: %s\n", err.msg);
        status = 2;
        goto out;
    }
    ps_curve_log_mode(curve, "shard", ps_cfg_str(cfg, "listen"));
    if (!(vs = shard_versions_open(&vc, &err))) {
        ps_log(PS_LOG_ERROR, "shard", "start_failed", "data=%s index=%s code=%s msg=\"%s\"",
               vc.data_dir ? vc.data_dir : "-", vc.index ? vc.index : "-", ps_errname(err.code),
               err.msg);
        fprintf(stderr, "shard: %s\n", err.msg);
        goto out;
    }
    uint64_t rcache_bytes = ps_cfg_uint(cfg, "rcache-bytes");
    if (rcache_bytes && !(rcache = ps_rcache_new((size_t)rcache_bytes, &err))) {
        fprintf(stderr, "shard: rcache-bytes: %s\n", err.msg);
        status = err.code == PS_EINVAL ? 2 : 1;
        goto out;
    }
    vs->rcache = rcache;
    shard_ctx ctx = {.versions = vs,
                     .shard = vc.shard,
                     .nshards = vc.nshards,
                     .max_frame = (size_t)ps_cfg_uint(cfg, "max-frame"),
                     .metrics = &metrics,
                     .rcache = rcache};
    if (!(admin = shard_admin_start(&ctx, ps_cfg_str(cfg, "admin"), token, admin_limits, &err))) {
        ps_log(PS_LOG_ERROR, "shard", "start_failed", "code=%s msg=\"%s\"", ps_errname(err.code),
               err.msg);
        goto out;
    }
    shard_server_cfg scfg = {.listen = ps_cfg_str(cfg, "listen"),
                             .workers = (uint32_t)ps_cfg_uint(cfg, "workers"),
                             .max_inflight = (uint32_t)ps_cfg_uint(cfg, "max-inflight"),
                             .drain_ms = (uint32_t)ps_cfg_uint(cfg, "drain-ms"),
                             .hwm = (uint32_t)ps_cfg_uint(cfg, "hwm"),
                             .ready_file = ready_file,
                             .admin = ps_admin_address(admin),
                             .curve = curve};
    if (shard_serve(&ctx, &scfg, stop_fd, &err)) {
        ps_log(PS_LOG_ERROR, "shard", "start_failed", "code=%s msg=\"%s\"", ps_errname(err.code),
               err.msg);
        goto out;
    }
    status = 0;

out:
    if (ready_file) unlink(ready_file);
    if (pid_written) unlink(pid_file);
    ps_admin_stop(admin); /* before the versions: its handlers use them */
    shard_versions_free(vs);
    ps_rcache_free(rcache); /* the workers and the admin port have stopped */
    free(token);
    ps_curve_free(curve);
    ps_log(status ? PS_LOG_ERROR : PS_LOG_INFO, "shard", "exit", "status=%d", status);
    ps_cfg_free(cfg);
    return status;
}
