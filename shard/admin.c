/*
 * admin.c — the shard's admin HTTP port: health and metrics for anyone who can reach it, and
 * behind the bearer token the snapshot operations a push drives (the protocol is in the
 * README, "Pushing a new build"):
 *
 *   POST /admin/stage?version=V          body: the shard directory's snapshot.json
 *   PUT  /admin/stage/V/FILE?offset=O    body: bytes [O, O+len) of FILE
 *   POST /admin/prepare?version=V        verify, install, load next to the active version
 *   POST /admin/abort?version=V          drop an unfinished upload
 *   POST /admin/activate?version=V       write the pointer: V is served by default, and after
 *                                        a restart
 *   POST /admin/retire?version=V         free a version that is not active
 */
#include <inttypes.h>
#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps/httpguard.h"
#include "ps/version.h"
#include "shard.h"

static shard_versions_t *vs_of(void *arg)
{
    return ((const shard_ctx *)arg)->versions;
}

static json_t *versions_json(const shard_ctx *ctx, uint64_t *active)
{
    shard_version_info info[SHARD_MAX_HELD];
    size_t n = shard_versions_list(ctx->versions, info, SHARD_MAX_HELD, active);
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        json_array_append_new(a, json_pack("{s:I, s:s, s:b, s:I}", "version",
                                           (json_int_t)info[i].version, "fingerprint",
                                           info[i].fingerprint, "active", info[i].active,
                                           "stickers", (json_int_t)info[i].stickers));
    return a;
}

static void h_healthz(struct evhttp_request *req, void *arg)
{
    const shard_ctx *ctx = arg;
    uint64_t active = 0;
    json_t *held = versions_json(ctx, &active);
    json_t *staging = json_array();
    /* staging is the admin thread's own state: this handler runs on that thread */
    if (staging && ctx->versions->staging.active)
        json_array_append_new(staging,
                              json_integer((json_int_t)ctx->versions->staging.snap.version));
    ps_admin_reply_json(req, 200,
                        json_pack("{s:s, s:i, s:i, s:I, s:o*, s:o*}", "status", "ok", "shard",
                                  (int)ctx->shard, "shards", (int)ctx->nshards, "active",
                                  (json_int_t)active, "versions", held, "staging", staging));
}

/* The recall cache's counters and gauges (all 0 when it is off: capacity 0 says so). */
static void render_rcache(ps_rcache_t *rc, ps_buf *b)
{
    ps_rcache_stats st;
    ps_rcache_stats_get(rc, &st);
    ps_buf_printf(
        b,
        "# HELP persrv_shard_rcache_hits_total Searches whose top R by recall came from the "
        "recall cache.\n# TYPE persrv_shard_rcache_hits_total counter\n"
        "persrv_shard_rcache_hits_total %" PRIu64 "\n"
        "# HELP persrv_shard_rcache_misses_total Searches that looked in the recall cache and "
        "scored the posting lists.\n# TYPE persrv_shard_rcache_misses_total counter\n"
        "persrv_shard_rcache_misses_total %" PRIu64 "\n"
        "# HELP persrv_shard_rcache_inserts_total Results stored in the recall cache.\n"
        "# TYPE persrv_shard_rcache_inserts_total counter\n"
        "persrv_shard_rcache_inserts_total %" PRIu64 "\n"
        "# HELP persrv_shard_rcache_evictions_total Entries evicted to stay within "
        "rcache-bytes.\n# TYPE persrv_shard_rcache_evictions_total counter\n"
        "persrv_shard_rcache_evictions_total %" PRIu64 "\n"
        "# HELP persrv_shard_rcache_invalidations_total Entries dropped by a version switch or "
        "retirement.\n# TYPE persrv_shard_rcache_invalidations_total counter\n"
        "persrv_shard_rcache_invalidations_total %" PRIu64 "\n"
        "# HELP persrv_shard_rcache_entries Results held in the recall cache.\n"
        "# TYPE persrv_shard_rcache_entries gauge\npersrv_shard_rcache_entries %" PRIu64 "\n"
        "# HELP persrv_shard_rcache_bytes Bytes the recall cache holds (entries and buckets).\n"
        "# TYPE persrv_shard_rcache_bytes gauge\npersrv_shard_rcache_bytes %" PRIu64 "\n"
        "# HELP persrv_shard_rcache_capacity_bytes The recall cache's bound (0: off).\n"
        "# TYPE persrv_shard_rcache_capacity_bytes gauge\n"
        "persrv_shard_rcache_capacity_bytes %" PRIu64 "\n",
        st.hits, st.misses, st.inserts, st.evictions, st.dropped, st.entries, st.bytes,
        st.capacity);
}

static void h_metrics(struct evhttp_request *req, void *arg)
{
    const shard_ctx *ctx = arg;
    shard_metrics *m = ctx->metrics;
    shard_version_info info[SHARD_MAX_HELD];
    uint64_t active = 0;
    size_t n = shard_versions_list(ctx->versions, info, SHARD_MAX_HELD, &active);
    ps_buf b = PS_BUF_INIT;
    ps_buf_printf(
        &b,
        "# HELP persrv_shard_searches_total Search requests answered.\n"
        "# TYPE persrv_shard_searches_total counter\npersrv_shard_searches_total %" PRIu64 "\n"
        "# HELP persrv_shard_search_errors_total Search requests answered with an error.\n"
        "# TYPE persrv_shard_search_errors_total counter\n"
        "persrv_shard_search_errors_total %" PRIu64 "\n"
        "# HELP persrv_shard_version_misses_total Requests naming a version this shard does not "
        "hold.\n# TYPE persrv_shard_version_misses_total counter\n"
        "persrv_shard_version_misses_total %" PRIu64 "\n"
        "# HELP persrv_shard_postings_scored_total Postings the searches read.\n"
        "# TYPE persrv_shard_postings_scored_total counter\n"
        "persrv_shard_postings_scored_total %" PRIu64 "\n"
        "# HELP persrv_shard_sticker_lookups_total Get-sticker requests.\n"
        "# TYPE persrv_shard_sticker_lookups_total counter\n"
        "persrv_shard_sticker_lookups_total %" PRIu64 "\n"
        "# HELP persrv_shard_health_inline_total Health requests the server loop answered itself, "
        "without waiting for a worker.\n"
        "# TYPE persrv_shard_health_inline_total counter\n"
        "persrv_shard_health_inline_total %" PRIu64 "\n"
        "# HELP persrv_shard_versions_held Snapshot versions loaded.\n"
        "# TYPE persrv_shard_versions_held gauge\npersrv_shard_versions_held %zu\n"
        "# HELP persrv_shard_active_version The version the pointer names.\n"
        "# TYPE persrv_shard_active_version gauge\npersrv_shard_active_version %" PRIu64 "\n"
        "# HELP persrv_shard_version_loaded A loaded version (1), active or not.\n"
        "# TYPE persrv_shard_version_loaded gauge\n",
        atomic_load(&m->searches), atomic_load(&m->search_errors), atomic_load(&m->stale_version),
        atomic_load(&m->postings_visited), atomic_load(&m->stickers),
        atomic_load(&m->health_inline), n, active);
    for (size_t i = 0; i < n; i++)
        ps_buf_printf(&b, "persrv_shard_version_loaded{version=\"%" PRIu64 "\",active=\"%d\"} 1\n",
                      info[i].version, info[i].active);
    ps_hist_render(&m->latency, "persrv_shard_search_seconds", "Time to answer a search request.",
                   &b);
    render_rcache(ctx->rcache, &b);
    ps_httpguard_render_metrics(&b); /* the admin port's connections */
    ps_version_render_metrics(&b);   /* persrv_build_info */
    if (b.rc)
        ps_admin_reply_error(req, PS_ENOMEM, "out of memory rendering metrics");
    else
        ps_admin_reply(req, 200, "text/plain; version=0.0.4", b.p, b.n);
    ps_buf_free(&b);
}

/* ?version=V, answered with an error when missing or malformed. */
static int version_param(struct evhttp_request *req, uint64_t *v)
{
    ps_err err = {0, ""};
    int rc = ps_admin_param_u64(req, "version", v, &err);
    if (!rc && *v == 0) rc = ps_err_set(&err, PS_EINVAL, "version: must be at least 1");
    if (rc) {
        if (rc == PS_ENOTFOUND) err.code = PS_EINVAL;
        ps_admin_reply_err(req, &err);
    }
    return rc;
}

static void h_stage(struct evhttp_request *req, void *arg)
{
    uint64_t v;
    ps_err err = {0, ""};
    if (version_param(req, &v)) return;
    size_t len;
    const void *body = ps_admin_body(req, &len);
    if (shard_stage_begin(vs_of(arg), v, body, len, &err)) {
        ps_admin_reply_err(req, &err);
        return;
    }
    ps_admin_reply_json(req, 200,
                        json_pack("{s:I, s:I}", "version", (json_int_t)v, "files",
                                  (json_int_t)vs_of(arg)->staging.snap.nfiles));
}

/* PUT /admin/stage/V/FILE?offset=O */
static void h_stage_file(struct evhttp_request *req, void *arg)
{
    const char *p = ps_admin_path(req) + strlen("/admin/stage/");
    char *end;
    uint64_t v = strtoull(p, &end, 10);
    ps_err err = {0, ""};
    if (end == p || *end != '/' || !end[1]) {
        ps_admin_reply_error(req, PS_EINVAL, "path: /admin/stage/VERSION/FILE expected");
        return;
    }
    const char *name = end + 1;
    uint64_t offset;
    if (ps_admin_param_u64(req, "offset", &offset, &err)) {
        if (err.code == PS_ENOTFOUND) err.code = PS_EINVAL;
        ps_admin_reply_err(req, &err);
        return;
    }
    size_t len;
    const void *body = ps_admin_body(req, &len);
    uint64_t received = 0;
    if (shard_stage_write(vs_of(arg), v, name, offset, body, len, &received, &err)) {
        ps_admin_reply_err(req, &err);
        return;
    }
    ps_admin_reply_json(req, 200, json_pack("{s:I}", "received", (json_int_t)received));
}

static void h_prepare(struct evhttp_request *req, void *arg)
{
    uint64_t v, stickers = 0;
    ps_err err = {0, ""};
    if (version_param(req, &v)) return;
    if (shard_prepare(vs_of(arg), v, &stickers, &err)) {
        ps_admin_reply_err(req, &err);
        return;
    }
    ps_admin_reply_json(req, 200,
                        json_pack("{s:I, s:s, s:I}", "version", (json_int_t)v, "state", "loaded",
                                  "stickers", (json_int_t)stickers));
}

static void h_abort(struct evhttp_request *req, void *arg)
{
    uint64_t v;
    if (version_param(req, &v)) return;
    shard_versions_t *vs = vs_of(arg);
    int had = vs->staging.active && vs->staging.snap.version == v;
    if (had) shard_staging_discard(vs);
    ps_admin_reply_json(req, 200,
                        json_pack("{s:I, s:b}", "version", (json_int_t)v, "discarded", had));
}

static void h_activate(struct evhttp_request *req, void *arg)
{
    uint64_t v, prev = 0;
    ps_err err = {0, ""};
    if (version_param(req, &v)) return;
    if (shard_activate(vs_of(arg), v, &prev, &err)) {
        ps_admin_reply_err(req, &err);
        return;
    }
    ps_admin_reply_json(
        req, 200, json_pack("{s:I, s:I}", "active", (json_int_t)v, "previous", (json_int_t)prev));
}

static void h_retire(struct evhttp_request *req, void *arg)
{
    uint64_t v;
    ps_err err = {0, ""};
    if (version_param(req, &v)) return;
    if (shard_retire(vs_of(arg), v, &err)) {
        ps_admin_reply_err(req, &err);
        return;
    }
    ps_admin_reply_json(req, 200, json_pack("{s:I}", "retired", (json_int_t)v));
}

/* The largest chunk a pusher may send, plus room for the request itself. */
#define SHARD_ADMIN_MAX_BODY ((size_t)(8u << 20) + 65536)

ps_admin_t *shard_admin_start(const shard_ctx *ctx, const char *listen, const char *token,
                              ps_admin_limits limits, ps_err *err)
{
    static ps_admin_route routes[8];
    void *a = (void *)ctx;
    ps_admin_route r[] = {
        {"/healthz", PS_ADMIN_GET, 0, h_healthz, a},
        {"/metrics", PS_ADMIN_GET, 0, h_metrics, a},
        {"/admin/stage", PS_ADMIN_POST, 1, h_stage, a},
        {"/admin/stage/", PS_ADMIN_PUT, 1, h_stage_file, a},
        {"/admin/prepare", PS_ADMIN_POST, 1, h_prepare, a},
        {"/admin/abort", PS_ADMIN_POST, 1, h_abort, a},
        {"/admin/activate", PS_ADMIN_POST, 1, h_activate, a},
        {"/admin/retire", PS_ADMIN_POST, 1, h_retire, a},
    };
    _Static_assert(sizeof r / sizeof r[0] == sizeof routes / sizeof routes[0], "route table");
    memcpy(routes, r, sizeof r);
    ps_admin_cfg cfg = {.listen = listen,
                        .token = token,
                        .max_body = SHARD_ADMIN_MAX_BODY,
                        .limits = limits,
                        .comp = "shard",
                        .routes = routes,
                        .nroutes = sizeof routes / sizeof routes[0],
                        .nice = 10}; /* staging and loading yield to the searches */
    return ps_admin_start(&cfg, err);
}
