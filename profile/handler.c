/*
 * handler.c — the profile service's request logic: its door (ps/dispatch.h: decode one frame,
 * route it by body, answer every failure as an Error envelope with the stable code and a
 * message naming what was wrong, so a peer's bad input never takes the daemon down or stores
 * anything) and the handlers that run a request against the store.
 *
 * Who may ask what (proto/persrv.proto): click and load_profile only the primary takes; wal
 * and checkpoint (a replica's requests) only the primary answers; get_profile, get_clicks,
 * checksum and health every node answers.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ps/dispatch.h"
#include "ps/log.h"
#include "ps/wire.h"
#include "profile.h"

#define CHUNK_DEFAULT (1u << 20) /* wal / checkpoint max_bytes when the request says 0 */
#define CHUNK_MAX     (3u << 20) /* ... and at most: a reply stays under PS_WIRE_MAX_FRAME */

static uint32_t chunk_size(uint32_t asked)
{
    return asked == 0 ? CHUNK_DEFAULT : asked > CHUNK_MAX ? CHUNK_MAX : asked;
}

/* An envelope answering request_id, body to be set by the caller. */
static Persrv__Envelope reply_env(uint64_t request_id, Persrv__Envelope__BodyCase body)
{
    Persrv__Envelope e = PERSRV__ENVELOPE__INIT;
    e.version = PS_WIRE_VERSION;
    e.request_id = request_id;
    e.body_case = body;
    return e;
}

static int refuse_on_replica(const profsvc_ctx *ctx, const char *what, ps_err *err)
{
    if (!ctx->replica) return 0;
    return ps_err_set(err, PS_EINVAL, "%s: this node is a replica; send writes to the primary",
                      what);
}

/* A click_reply for r; click_id: the click's (NULL for a load). */
static int write_reply(uint64_t request_id, const profsvc_write_result *r, const char *click_id,
                       uint8_t **out, size_t *out_len, ps_err *err)
{
    Persrv__ClickReply cr = PERSRV__CLICK_REPLY__INIT;
    cr.seq = r->seq;
    cr.history = r->history;
    cr.centroids = r->k;
    cr.duplicate = r->duplicate != 0;
    cr.click_id = (char *)(click_id ? click_id : "");
    Persrv__Envelope e = reply_env(request_id, PERSRV__ENVELOPE__BODY_CLICK_REPLY);
    e.click_reply = &cr;
    return ps_wire_pack(&e, out, out_len, err);
}

static int do_click(void *state, const Persrv__Envelope *env, uint8_t **out, size_t *out_len,
                    ps_err *err)
{
    profsvc_ctx *ctx = state;
    const Persrv__ClickRequest *c = env->click;
    profsvc_write_result r;
    int rc;
    if ((rc = refuse_on_replica(ctx, "click", err))) return rc;
    if (c->n_embedding == 0) /* the wire lets a client's click go without: the broker adds it */
        return ps_err_set(err, PS_EINVAL, "click.embedding: required (the sticker's embedding)");
    uint64_t t0 = profsvc_now_ns();
    if ((rc = profsvc_store_click(ctx->store, c->user, c->sticker_id, c->query, strlen(c->query),
                                  c->embedding, c->n_embedding, c->click_id, &r, err)))
        return rc;
    if (r.duplicate) {
        atomic_fetch_add(&ctx->stats.duplicates, 1);
    } else {
        ps_hist_observe(&ctx->stats.click_seconds, (double)(profsvc_now_ns() - t0) / 1e9);
        atomic_fetch_add(&ctx->stats.clicks, 1);
    }
    ps_log(r.duplicate ? PS_LOG_INFO : PS_LOG_DEBUG, "profile",
           r.duplicate ? "click_duplicate" : "click",
           "request_id=%llu trace=%s sticker=%llu click_id=%s seq=%llu history=%u k=%u",
           (unsigned long long)env->request_id, PS_WIRE_TRACE(env),
           (unsigned long long)c->sticker_id, c->click_id[0] ? c->click_id : "-",
           (unsigned long long)r.seq, r.history, r.k);
    return write_reply(env->request_id, &r, c->click_id, out, out_len, err);
}

uint64_t profsvc_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void profsvc_load_clear(profsvc_load *ld)
{
    ps_profile_clear(&ld->prof);
    free(ld->ids);
    free(ld->embs);
    memset(ld, 0, sizeof *ld);
}

int profsvc_load_parse(profsvc_ctx *ctx, const Persrv__LoadProfileRequest *l, profsvc_load *ld,
                       ps_err *err)
{
    int rc;
    memset(ld, 0, sizeof *ld);
    if ((rc = refuse_on_replica(ctx, "load_profile", err))) return rc;
    /* ps_wire_decode checked that the centroids share one length and every float is finite. */
    ps_profile *prof = &ld->prof;
    prof->k = (uint32_t)l->n_centroids;
    prof->dim = prof->k        ? (uint32_t)l->centroids[0]->n_vector
                : l->n_history ? (uint32_t)l->history[0]->n_embedding
                               : 0;
    for (size_t i = 0; i < l->n_history; i++)
        if (l->history[i]->n_embedding != prof->dim)
            return ps_err_set(err, PS_EINVAL,
                              "load_profile.history[%zu].embedding: %zu floats, "
                              "the profile has %u",
                              i, l->history[i]->n_embedding, prof->dim);
    uint32_t sdim = profsvc_store_dim(ctx->store);
    if (prof->dim && sdim && prof->dim != sdim)
        return ps_err_set(err, PS_EINVAL,
                          "load_profile.centroids: %u floats, this service holds %u", prof->dim,
                          sdim);
    size_t dim = prof->dim;
    if ((prof->k && !(prof->centroids = malloc(prof->k * dim * sizeof(float)))) ||
        (l->n_history && (!(ld->ids = malloc(l->n_history * sizeof *ld->ids)) ||
                          !(ld->embs = malloc(l->n_history * dim * sizeof *ld->embs))))) {
        profsvc_load_clear(ld);
        return ps_err_set(err, PS_ENOMEM, "out of memory for a profile load");
    }
    for (uint32_t c = 0; c < prof->k; c++) {
        memcpy(prof->centroids + c * dim, l->centroids[c]->vector, dim * sizeof(float));
        prof->radius[c] = l->centroids[c]->radius;
    }
    for (size_t i = 0; i < l->n_history; i++) {
        ld->ids[i] = l->history[i]->sticker_id;
        memcpy(ld->embs + i * dim, l->history[i]->embedding, dim * sizeof(float));
    }
    ld->user = l->user;
    ld->n = l->n_history;
    return 0;
}

int profsvc_load_apply(profsvc_ctx *ctx, const profsvc_load *ld, uint64_t request_id,
                       profsvc_write_result *r, ps_err *err)
{
    int rc = profsvc_store_load(ctx->store, ld->user, &ld->prof, ld->ids, ld->embs, ld->n, r, err);
    if (rc) return rc;
    atomic_fetch_add(&ctx->stats.loads, 1);
    ps_log(PS_LOG_INFO, "profile", "profile_loaded",
           "request_id=%llu centroids=%u history=%u recomputed=%d seq=%llu",
           (unsigned long long)request_id, r->k, r->history, r->merged, (unsigned long long)r->seq);
    return 0;
}

static int do_load(void *state, const Persrv__Envelope *env, uint8_t **out, size_t *out_len,
                   ps_err *err)
{
    profsvc_ctx *ctx = state;
    profsvc_load ld;
    profsvc_write_result r;
    int rc = profsvc_load_parse(ctx, env->load_profile, &ld, err);
    if (rc) return rc;
    if (!(rc = profsvc_load_apply(ctx, &ld, env->request_id, &r, err)))
        rc = write_reply(env->request_id, &r, NULL, out, out_len, err);
    profsvc_load_clear(&ld);
    return rc;
}

static int do_get_profile(void *state, const Persrv__Envelope *env, uint8_t **out, size_t *out_len,
                          ps_err *err)
{
    profsvc_ctx *ctx = state;
    ps_profile prof;
    int found;
    uint64_t seq;
    int rc = profsvc_store_profile(ctx->store, env->get_profile->user, &found, &prof, &seq, err);
    if (rc) return rc;
    Persrv__Centroid cs[PS_PROFILE_KMAX], *cp[PS_PROFILE_KMAX];
    for (uint32_t c = 0; c < prof.k; c++) {
        persrv__centroid__init(&cs[c]);
        cs[c].n_vector = prof.dim;
        cs[c].vector = prof.centroids + (size_t)c * prof.dim;
        cs[c].radius = prof.radius[c];
        cp[c] = &cs[c];
    }
    Persrv__ProfileReply pr = PERSRV__PROFILE_REPLY__INIT;
    pr.found = found;
    pr.n_centroids = prof.k;
    pr.centroids = cp;
    pr.seq = seq;
    Persrv__Envelope e = reply_env(env->request_id, PERSRV__ENVELOPE__BODY_PROFILE_REPLY);
    e.profile_reply = &pr;
    rc = ps_wire_pack(&e, out, out_len, err);
    ps_log(PS_LOG_DEBUG, "profile", "get_profile", "request_id=%llu trace=%s found=%d k=%u",
           (unsigned long long)env->request_id, PS_WIRE_TRACE(env), found, prof.k);
    ps_profile_clear(&prof);
    return rc;
}

static int do_get_clicks(void *state, const Persrv__Envelope *env, uint8_t **out, size_t *out_len,
                         ps_err *err)
{
    profsvc_ctx *ctx = state;
    uint64_t *ids;
    size_t n;
    int rc =
        profsvc_store_clicks(ctx->store, env->get_clicks->user, PS_WIRE_MAX_CLICKS, &ids, &n, err);
    if (rc) return rc;
    Persrv__ClicksReply cr = PERSRV__CLICKS_REPLY__INIT;
    cr.n_sticker_ids = n;
    cr.sticker_ids = ids;
    Persrv__Envelope e = reply_env(env->request_id, PERSRV__ENVELOPE__BODY_CLICKS_REPLY);
    e.clicks_reply = &cr;
    rc = ps_wire_pack(&e, out, out_len, err);
    free(ids);
    return rc;
}

static int do_checksum(void *state, const Persrv__Envelope *env, uint8_t **out, size_t *out_len,
                       ps_err *err)
{
    profsvc_ctx *ctx = state;
    Persrv__ChecksumReply cr = PERSRV__CHECKSUM_REPLY__INIT;
    int rc = profsvc_store_checksum(ctx->store, &cr.checksum, &cr.keys, &cr.seq, err);
    if (rc) return rc;
    Persrv__Envelope e = reply_env(env->request_id, PERSRV__ENVELOPE__BODY_CHECKSUM_REPLY);
    e.checksum_reply = &cr;
    return ps_wire_pack(&e, out, out_len, err);
}

static int do_health(void *state, const Persrv__Envelope *env, uint8_t **out, size_t *out_len,
                     ps_err *err)
{
    profsvc_ctx *ctx = state;
    ps_wire_health h = {.shard = 0,
                        .nshards = 1,
                        .snapshot_version = profsvc_store_seq(ctx->store),
                        .stickers = 0,
                        .ready = atomic_load(&ctx->ready)};
    return ps_wire_encode_health_reply(env->request_id, &h, out, out_len, err);
}

static int do_wal(void *state, const Persrv__Envelope *env, uint8_t **out, size_t *out_len,
                  ps_err *err)
{
    profsvc_ctx *ctx = state;
    const Persrv__WalRequest *w = env->wal;
    profsvc_batch *b = NULL;
    size_t n = 0;
    int gone = 0, rc;
    Persrv__WalReply wr = PERSRV__WAL_REPLY__INIT;
    if (ctx->replica) return ps_err_set(err, PS_EINVAL, "wal: this node is a replica");
    if ((rc = profsvc_store_wal(ctx->store, w->from_seq, chunk_size(w->max_bytes), &b, &n, &gone,
                                &wr.primary_seq, err)))
        return rc;
    Persrv__WalBatch *wb = n ? calloc(n, sizeof *wb) : NULL;
    Persrv__WalBatch **wp = n ? calloc(n, sizeof *wp) : NULL;
    if (n && (!wb || !wp)) {
        rc = ps_err_set(err, PS_ENOMEM, "out of memory for a wal reply");
    } else {
        for (size_t i = 0; i < n; i++) {
            persrv__wal_batch__init(&wb[i]);
            wb[i].seq = b[i].seq;
            wb[i].data.data = b[i].data;
            wb[i].data.len = b[i].len;
            wp[i] = &wb[i];
        }
        wr.n_batches = n;
        wr.batches = wp;
        wr.gone = gone;
        Persrv__Envelope e = reply_env(env->request_id, PERSRV__ENVELOPE__BODY_WAL_REPLY);
        e.wal_reply = &wr;
        rc = ps_wire_pack(&e, out, out_len, err);
    }
    if (gone)
        ps_log(PS_LOG_INFO, "profile", "wal_reply_gone", "request_id=%llu from=%llu latest=%llu",
               (unsigned long long)env->request_id, (unsigned long long)w->from_seq,
               (unsigned long long)wr.primary_seq);
    free(wb);
    free(wp);
    profsvc_batches_free(b, n);
    return rc;
}

static int do_checkpoint(void *state, const Persrv__Envelope *env, uint8_t **out, size_t *out_len,
                         ps_err *err)
{
    profsvc_ctx *ctx = state;
    const Persrv__CheckpointRequest *c = env->checkpoint;
    Persrv__CheckpointReply cr = PERSRV__CHECKPOINT_REPLY__INIT;
    Persrv__CheckpointFile *cf = NULL, **cfp = NULL;
    profsvc_file *files = NULL;
    size_t nfiles = 0;
    uint8_t *chunk = NULL;
    int rc = 0;
    if (ctx->replica) return ps_err_set(err, PS_EINVAL, "checkpoint: this node is a replica");
    cr.session = c->session;
    if (c->session == 0) {
        if ((rc = profsvc_store_ckpt_begin(ctx->store, &cr.session, &cr.seq, &files, &nfiles, err)))
            return rc;
        if (nfiles &&
            (!(cf = calloc(nfiles, sizeof *cf)) || !(cfp = calloc(nfiles, sizeof *cfp)))) {
            rc = ps_err_set(err, PS_ENOMEM, "out of memory for a checkpoint listing");
            profsvc_store_ckpt_done(ctx->store, cr.session, NULL);
            goto out;
        }
        uint64_t bytes = 0;
        for (size_t i = 0; i < nfiles; i++) {
            persrv__checkpoint_file__init(&cf[i]);
            cf[i].name = files[i].name;
            cf[i].size = files[i].size;
            cfp[i] = &cf[i];
            bytes += files[i].size;
        }
        cr.n_files = nfiles;
        cr.files = cfp;
        atomic_fetch_add(&ctx->stats.checkpoints, 1);
        ps_log(PS_LOG_INFO, "profile", "checkpoint_created",
               "session=%llu seq=%llu files=%zu bytes=%llu", (unsigned long long)cr.session,
               (unsigned long long)cr.seq, nfiles, (unsigned long long)bytes);
    } else if (c->done) {
        if ((rc = profsvc_store_ckpt_done(ctx->store, c->session, err))) return rc;
        ps_log(PS_LOG_INFO, "profile", "checkpoint_done", "session=%llu",
               (unsigned long long)c->session);
    } else {
        if (!c->file[0])
            return ps_err_set(err, PS_EINVAL,
                              "checkpoint.file: empty (a session's chunk "
                              "request names a file)");
        size_t max = chunk_size(c->max_bytes), n = 0;
        if (!(chunk = malloc(max))) return ps_err_set(err, PS_ENOMEM, "out of memory for a chunk");
        if ((rc = profsvc_store_ckpt_read(ctx->store, c->session, c->file, c->offset, chunk, max,
                                          &n, err)))
            goto out;
        cr.data.data = chunk;
        cr.data.len = n;
    }
    Persrv__Envelope e = reply_env(env->request_id, PERSRV__ENVELOPE__BODY_CHECKPOINT_REPLY);
    e.checkpoint_reply = &cr;
    rc = ps_wire_pack(&e, out, out_len, err);
out:
    free(cf);
    free(cfp);
    free(files);
    free(chunk);
    return rc;
}

static const ps_route routes[] = {
    {PERSRV__ENVELOPE__BODY_CLICK, do_click, 0},
    {PERSRV__ENVELOPE__BODY_LOAD_PROFILE, do_load, 0},
    {PERSRV__ENVELOPE__BODY_GET_PROFILE, do_get_profile, 0},
    {PERSRV__ENVELOPE__BODY_GET_CLICKS, do_get_clicks, 0},
    {PERSRV__ENVELOPE__BODY_CHECKSUM, do_checksum, 0},
    {PERSRV__ENVELOPE__BODY_HEALTH, do_health, 0},
    {PERSRV__ENVELOPE__BODY_WAL, do_wal, 0},
    {PERSRV__ENVELOPE__BODY_CHECKPOINT, do_checkpoint, 0},
};

static const ps_door door = {.component = "profile",
                             .name = "the profile service",
                             .routes = routes,
                             .nroutes = sizeof routes / sizeof routes[0],
                             .client_error_level = PS_LOG_WARN};

int profsvc_handle(profsvc_ctx *ctx, const void *req, size_t len, uint8_t **reply,
                   size_t *reply_len)
{
    int rc = ps_dispatch(&door, ctx, ctx->max_frame, req, len, reply, reply_len, NULL);
    return rc == PS_DISPATCH_LATER ? PS_EINTERNAL : rc;
}
