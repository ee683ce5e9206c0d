/*
 * admin.c — the profile service's admin HTTP port (ps/admin.h, DESIGN §3 and §6): health and
 * metrics for anyone who can reach it, and two operations behind the bearer token.
 *
 *   GET  /healthz                 {"status": "ok", "role", "ready", "seq"} and, on a replica,
 *                                 "primary_seq", "lag_seq", "lag_seconds"
 *   GET  /metrics                 Prometheus text (persrv_profile_*)
 *   POST /admin/checkpoint?dir=D  a RocksDB checkpoint of this node's database into D, a new
 *                                 directory below --checkpoint-root (never outside it)
 *   POST /admin/load-profiles     body: frames, each u32LE length + one Envelope holding a
 *                                 LoadProfileRequest; each merged like a ZeroMQ load_profile
 *                                 -> {"users": n, "seq": S} once every load is durable
 *
 * load-profiles is all-or-nothing for input errors: every frame is decoded and checked (caps,
 * body, user, dimensions) before the first is applied, so a bad frame gets 400 naming its index
 * and nothing of the request is stored. A storage failure while applying (rare: disk full, the
 * database being replaced) stops at that frame: the frames before it stay applied (each user's
 * load is one synced write), none after it is, and the error says so. Re-sending the whole
 * request is always safe: loads merge, and a repeated load changes nothing.
 *
 * Replication lag on a replica: lag_seq is the primary's latest sequence number in the last WAL
 * reply minus the one this replica applied (RocksDB sequence numbers: one per key a batch
 * writes, a click writes about four), lag_seconds the time since it last held the primary's
 * latest (0 while caught up). Both are 0 on the primary.
 */
#include <errno.h>
#include <event2/http.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps/admin.h"
#include "ps/httpguard.h"
#include "ps/log.h"
#include "ps/wire.h"
#include "ps/version.h"
#include "profile.h"

#define MAX_DIR_PARAM 1024 /* bytes of ?dir= */

struct profsvc_admin {
    ps_admin_t *a;
    ps_admin_route routes[4];
};

/**************************************************************************
 * Health and metrics
 */

typedef struct lag_view {
    uint64_t seq, primary_seq, lag_seq;
    double lag_s;
} lag_view;

static lag_view lag_of(profsvc_ctx *ctx)
{
    lag_view v = {.seq = profsvc_store_seq(ctx->store)};
    v.primary_seq = ctx->replica ? atomic_load(&ctx->stats.primary_seq) : v.seq;
    v.lag_seq = v.primary_seq > v.seq ? v.primary_seq - v.seq : 0;
    if (ctx->replica && (v.lag_seq || !atomic_load(&ctx->ready))) {
        uint64_t now = profsvc_now_ns(), since = atomic_load(&ctx->stats.caught_up_ns);
        v.lag_s = now > since ? (double)(now - since) / 1e9 : 0;
    }
    return v;
}

static void on_healthz(struct evhttp_request *req, void *arg)
{
    profsvc_ctx *ctx = arg;
    lag_view v = lag_of(ctx);
    json_t *j = json_pack("{s:s, s:s, s:b, s:I}", "status", "ok", "role",
                          ctx->replica ? "replica" : "primary", "ready",
                          atomic_load(&ctx->ready) != 0, "seq", (json_int_t)v.seq);
    if (j && ctx->replica) {
        json_object_set_new(j, "primary_seq", json_integer((json_int_t)v.primary_seq));
        json_object_set_new(j, "lag_seq", json_integer((json_int_t)v.lag_seq));
        json_object_set_new(j, "lag_seconds", json_real(v.lag_s));
    }
    ps_admin_reply_json(req, 200, j);
}

/* One counter or gauge with its HELP and TYPE lines. */
static void metric(ps_buf *b, const char *name, const char *type, const char *help, double value)
{
    ps_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, value);
}

static void on_metrics(struct evhttp_request *req, void *arg)
{
    profsvc_ctx *ctx = arg;
    const profsvc_stats *s = &ctx->stats;
    lag_view v = lag_of(ctx);
    ps_buf b = PS_BUF_INIT;
    ps_buf_printf(&b,
                  "# HELP persrv_profile_info This node's role.\n"
                  "# TYPE persrv_profile_info gauge\n"
                  "persrv_profile_info{role=\"%s\"} 1\n",
                  ctx->replica ? "replica" : "primary");
    metric(&b, "persrv_profile_ready", "gauge",
           "1 once serving (a replica: once caught up with the primary).",
           atomic_load(&ctx->ready) != 0);
    metric(&b, "persrv_profile_seq", "gauge", "The latest RocksDB sequence number this node holds.",
           (double)v.seq);
    metric(&b, "persrv_profile_clicks_total", "counter",
           "Clicks recorded and acknowledged (durable).", (double)atomic_load(&s->clicks));
    metric(&b, "persrv_profile_click_duplicates_total", "counter",
           "Clicks whose click id was stored before: answered, nothing stored.",
           (double)atomic_load(&s->duplicates));
    metric(&b, "persrv_profile_loads_total", "counter",
           "User profile loads merged (ZeroMQ load_profile and /admin/load-profiles).",
           (double)atomic_load(&s->loads));
    metric(&b, "persrv_profile_checkpoints_total", "counter",
           "Checkpoints made (for replicas and /admin/checkpoint); on a replica also "
           "the bootstraps from a checkpoint it took.",
           (double)atomic_load(&s->checkpoints));
    metric(&b, "persrv_profile_replication_lag_seq", "gauge",
           "Replica: the primary's latest sequence number last seen minus the one "
           "applied (0 on the primary).",
           (double)v.lag_seq);
    metric(&b, "persrv_profile_replication_lag_seconds", "gauge",
           "Replica: seconds since it last held the primary's latest sequence number "
           "(0 while caught up, and on the primary).",
           v.lag_s);
    ps_hist_render(&s->click_seconds, "persrv_profile_click_duration_seconds",
                   "Time to record a click, its synced write included.", &b);
    ps_httpguard_render_metrics(&b); /* the admin port's connections */
    ps_version_render_metrics(&b);   /* persrv_build_info */
    if (b.rc)
        ps_admin_reply_error(req, PS_ENOMEM, "out of memory rendering the metrics");
    else
        ps_admin_reply(req, 200, "text/plain; version=0.0.4", b.p, b.n);
    ps_buf_free(&b);
}

/**************************************************************************
 * POST /admin/checkpoint?dir=D
 */

/* Resolve dir (relative to root, or absolute) into out: a path whose parent exists and lies
 * at or below root once symbolic links are resolved, and whose last component is a plain
 * name. Errors: PS_EINVAL naming what is wrong, PS_EIO (root unusable). */
static int checkpoint_path(const char *root, const char *dir, char *out, size_t cap, ps_err *err)
{
    char root_real[PATH_MAX], joined[PATH_MAX], parent_real[PATH_MAX];
    size_t dl = strlen(dir);
    if (dl == 0 || dl > MAX_DIR_PARAM)
        return ps_err_set(err, PS_EINVAL, "dir: 1..%d bytes, got %zu", MAX_DIR_PARAM, dl);
    for (size_t i = 0; i < dl; i++)
        if ((unsigned char)dir[i] < 0x20)
            return ps_err_set(err, PS_EINVAL, "dir: a control character at byte %zu", i);
    for (const char *c = dir; *c;) { /* no ".." component anywhere, even one that stays in */
        size_t n = strcspn(c, "/");
        if (n == 2 && c[0] == '.' && c[1] == '.')
            return ps_err_set(err, PS_EINVAL, "dir: '..' is not allowed");
        c += n + (c[n] == '/');
    }
    if (!realpath(root, root_real))
        return ps_err_set(err, PS_EIO, "checkpoint-root %s: %s", root, strerror(errno));
    int n = dir[0] == '/' ? snprintf(joined, sizeof joined, "%s", dir)
                          : snprintf(joined, sizeof joined, "%s/%s", root_real, dir);
    if (n < 0 || (size_t)n >= sizeof joined)
        return ps_err_set(err, PS_EINVAL, "dir: the path is too long");
    while (n > 1 && joined[n - 1] == '/') joined[--n] = '\0';
    char *slash = strrchr(joined, '/');
    const char *base = slash + 1;
    if (!*base || !strcmp(base, "."))
        return ps_err_set(err, PS_EINVAL, "dir: '%s' does not name a new directory", dir);
    *slash = '\0';
    if (!realpath(slash == joined ? "/" : joined, parent_real))
        return ps_err_set(err, PS_EINVAL, "dir: its parent %s: %s", joined, strerror(errno));
    size_t rl = strlen(root_real);
    int inside = !strcmp(root_real, "/") || (!strncmp(parent_real, root_real, rl) &&
                                             (parent_real[rl] == '\0' || parent_real[rl] == '/'));
    if (!inside)
        return ps_err_set(err, PS_EINVAL, "dir: '%s' is outside checkpoint-root %s", dir,
                          root_real);
    n = snprintf(out, cap, "%s/%s", strcmp(parent_real, "/") ? parent_real : "", base);
    if (n < 0 || (size_t)n >= cap) return ps_err_set(err, PS_EINVAL, "dir: the path is too long");
    return 0;
}

static void on_checkpoint(struct evhttp_request *req, void *arg)
{
    profsvc_ctx *ctx = arg;
    ps_err err = {0, ""};
    char path[PATH_MAX];
    char *dir = ps_admin_param_str(req, "dir");
    uint64_t seq = 0, bytes = 0;
    size_t files = 0;
    int rc;
    if (!ctx->checkpoint_root)
        rc = ps_err_set(&err, PS_EINVAL,
                        "checkpoints: this node has no checkpoint-root (set one to enable them)");
    else if (!dir)
        rc = ps_err_set(&err, PS_EINVAL, "dir: required (a new directory below %s)",
                        ctx->checkpoint_root);
    else if (!(rc = checkpoint_path(ctx->checkpoint_root, dir, path, sizeof path, &err)))
        rc = profsvc_store_checkpoint(ctx->store, path, &seq, &files, &bytes, &err);
    free(dir);
    if (rc) {
        ps_log(PS_LOG_WARN, "profile", "admin_checkpoint_failed", "code=%s msg=\"%s\"",
               ps_errname(rc), err.msg);
        ps_admin_reply_err(req, &err);
        return;
    }
    atomic_fetch_add(&ctx->stats.checkpoints, 1);
    ps_log(PS_LOG_INFO, "profile", "admin_checkpoint", "dir=%s seq=%llu files=%zu bytes=%llu", path,
           (unsigned long long)seq, files, (unsigned long long)bytes);
    ps_admin_reply_json(req, 200,
                        json_pack("{s:s, s:I, s:I, s:I}", "dir", path, "seq", (json_int_t)seq,
                                  "files", (json_int_t)files, "bytes", (json_int_t)bytes));
}

/**************************************************************************
 * POST /admin/load-profiles
 */

typedef struct frame {
    Persrv__Envelope *env;
    profsvc_load ld;
} frame;

static void frames_free(frame *f, size_t n)
{
    for (size_t i = 0; f && i < n; i++) {
        profsvc_load_clear(&f[i].ld);
        ps_wire_free(f[i].env);
    }
    free(f);
}

/* Decode and check every frame of body[0..len) into *frames / *n. Errors name the frame. */
static int parse_frames(profsvc_ctx *ctx, const uint8_t *body, size_t len, frame **frames,
                        size_t *n, ps_err *err)
{
    size_t cap = 0, off = 0;
    uint32_t dim = profsvc_store_dim(ctx->store);
    int rc = 0;
    *frames = NULL;
    *n = 0;
    while (off < len && !rc) {
        size_t i = *n;
        if (len - off < 4) {
            rc = ps_err_set(err, PS_EPARSE,
                            "frame %zu: %zu bytes left, a frame starts with a "
                            "4-byte length",
                            i, len - off);
            break;
        }
        size_t flen = (size_t)body[off] | (size_t)body[off + 1] << 8 | (size_t)body[off + 2] << 16 |
                      (size_t)body[off + 3] << 24;
        off += 4;
        if (flen == 0 || flen > ctx->max_frame) {
            rc = ps_err_set(err, flen ? PS_ETOOBIG : PS_EPARSE,
                            "frame %zu: length %zu, want 1..%zu", i, flen, ctx->max_frame);
            break;
        }
        if (flen > len - off) {
            rc = ps_err_set(err, PS_EPARSE, "frame %zu: length %zu, the body has %zu bytes left", i,
                            flen, len - off);
            break;
        }
        if (*n == cap) {
            cap = cap ? 2 * cap : 64;
            frame *p = realloc(*frames, cap * sizeof *p);
            if (!p) {
                rc = ps_err_set(err, PS_ENOMEM, "out of memory for %zu frames", cap);
                break;
            }
            *frames = p;
        }
        frame *f = &(*frames)[(*n)++];
        memset(f, 0, sizeof *f);
        if ((rc = ps_wire_decode(body + off, flen, ctx->max_frame, &f->env, err))) {
            ps_err_prefix(err, "frame %zu", i);
        } else if (f->env->body_case != PERSRV__ENVELOPE__BODY_LOAD_PROFILE) {
            rc = ps_err_set(err, PS_EINVAL, "frame %zu: body %d, want load_profile", i,
                            (int)f->env->body_case);
        } else if ((rc = profsvc_load_parse(ctx, f->env->load_profile, &f->ld, err))) {
            ps_err_prefix(err, "frame %zu", i);
        } else if (f->ld.prof.dim && dim && f->ld.prof.dim != dim) {
            rc = ps_err_set(err, PS_EINVAL,
                            "frame %zu: %u floats per embedding, frames before "
                            "it have %u",
                            i, f->ld.prof.dim, dim);
        } else if (f->ld.prof.dim) {
            dim = f->ld.prof.dim;
        }
        off += flen;
    }
    if (!rc && *n == 0) rc = ps_err_set(err, PS_EINVAL, "body: no frames");
    if (rc) {
        frames_free(*frames, *n);
        *frames = NULL;
        *n = 0;
    }
    return rc;
}

static void on_load_profiles(struct evhttp_request *req, void *arg)
{
    profsvc_ctx *ctx = arg;
    ps_err err = {0, ""};
    frame *frames = NULL;
    size_t len = 0, n = 0, i = 0;
    profsvc_write_result r = {0};
    const uint8_t *body = ps_admin_body(req, &len);
    int rc;
    if (ctx->replica)
        rc = ps_err_set(&err, PS_EINVAL,
                        "load-profiles: this node is a replica; send loads to "
                        "the primary");
    else
        rc = parse_frames(ctx, body, len, &frames, &n, &err);
    for (; !rc && i < n; i++)
        if ((rc = profsvc_load_apply(ctx, &frames[i].ld, frames[i].env->request_id, &r, &err))) {
            char applied[64] = "no frame was applied";
            if (i) snprintf(applied, sizeof applied, "frames 0..%zu were applied", i - 1);
            ps_err_prefix(&err, "frame %zu (user '%s'): not loaded; %s, none after it", i,
                          frames[i].ld.user, applied);
        }
    frames_free(frames, n);
    if (rc) {
        ps_log(PS_LOG_WARN, "profile", "admin_load_failed", "bytes=%zu code=%s msg=\"%s\"", len,
               ps_errname(rc), err.msg);
        ps_admin_reply_err(req, &err);
        return;
    }
    ps_log(PS_LOG_INFO, "profile", "admin_load", "users=%zu bytes=%zu seq=%llu", n, len,
           (unsigned long long)r.seq);
    ps_admin_reply_json(req, 200,
                        json_pack("{s:I, s:I}", "users", (json_int_t)n, "seq", (json_int_t)r.seq));
}

/**************************************************************************
 * Start, stop
 */

profsvc_admin_t *profsvc_admin_start(profsvc_ctx *ctx, const char *listen, const char *token,
                                     size_t max_body, ps_admin_limits limits, ps_err *err)
{
    profsvc_admin_t *a = calloc(1, sizeof *a);
    if (!a) {
        ps_err_set(err, PS_ENOMEM, "out of memory starting the admin port");
        return NULL;
    }
    a->routes[0] = (ps_admin_route){"/healthz", PS_ADMIN_GET, 0, on_healthz, ctx};
    a->routes[1] = (ps_admin_route){"/metrics", PS_ADMIN_GET, 0, on_metrics, ctx};
    a->routes[2] = (ps_admin_route){"/admin/checkpoint", PS_ADMIN_POST, 1, on_checkpoint, ctx};
    a->routes[3] =
        (ps_admin_route){"/admin/load-profiles", PS_ADMIN_POST, 1, on_load_profiles, ctx};
    ps_admin_cfg cfg = {.listen = listen,
                        .token = token,
                        .max_body = max_body,
                        .limits = limits,
                        .comp = "profile",
                        .routes = a->routes,
                        .nroutes = sizeof a->routes / sizeof a->routes[0]};
    if (!(a->a = ps_admin_start(&cfg, err))) {
        free(a);
        return NULL;
    }
    return a;
}

const char *profsvc_admin_address(const profsvc_admin_t *a)
{
    return ps_admin_address(a->a);
}

void profsvc_admin_stop(profsvc_admin_t *a)
{
    if (!a) return;
    ps_admin_stop(a->a);
    free(a);
}
