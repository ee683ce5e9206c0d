/*
 * handler.c — the shard's request logic: the shard's door (ps/dispatch.h: decode one frame,
 * route it by body, answer failures as Error envelopes with the stable code and a message
 * naming what was wrong) and the handlers that run a request against the shard's index; and
 * the server loop's inline answer to a HealthRequest (shard_handle_inline).
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ps/dispatch.h"
#include "ps/log.h"
#include "ps/wire_engine.h"
#include "shard.h"

struct shard_handler {
    const shard_ctx *ctx;
    ps_tokens tokens;
    ps_hit *hits; /* PS_SEARCH_MAX_R entries */
};

shard_handler_t *shard_handler_new(const shard_ctx *ctx, ps_err *err)
{
    shard_handler_t *h = calloc(1, sizeof *h);
    if (!h) {
        ps_err_set(err, PS_ENOMEM, "out of memory for a worker");
        return NULL;
    }
    h->ctx = ctx;
    ps_tokens_init(&h->tokens);
    if (!(h->hits = malloc(PS_SEARCH_MAX_R * sizeof *h->hits))) {
        ps_err_set(err, PS_ENOMEM, "out of memory for a worker");
        shard_handler_free(h);
        return NULL;
    }
    return h;
}

void shard_handler_free(shard_handler_t *h)
{
    if (!h) return;
    ps_tokens_free(&h->tokens);
    free(h->hits);
    free(h);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The version a request names (0: the active one), acquired; NULL with err set when this shard
 * does not hold it: the broker then fails over rather than merge two versions. */
static shard_version *acquire(shard_handler_t *h, uint64_t version, ps_err *err)
{
    shard_version *v = shard_versions_acquire(h->ctx->versions, version);
    if (!v) {
        atomic_fetch_add(&h->ctx->metrics->stale_version, 1);
        ps_err_set(err, PS_ENOTFOUND, "snapshot_version: %llu is not held by shard %u",
                   (unsigned long long)version, h->ctx->shard);
    }
    return v;
}

static int do_search(void *state, const Persrv__Envelope *env, uint8_t **out, size_t *out_len,
                     ps_err *err)
{
    shard_handler_t *h = state;
    const Persrv__SearchRequest *q = env->search;
    ps_search_opts opts;
    ps_profile prof = {0};
    ps_search_stats st;
    size_t n = 0;
    int rc;
    double t0 = now_s();
    shard_metrics *m = h->ctx->metrics;
    shard_version *v = acquire(h, q->snapshot_version, err);
    if (!v) return err->code;
    ps_searcher_t *searcher = NULL;
    if ((rc = ps_wire_to_opts(q, &opts, err)) || (rc = ps_wire_to_profile(q, &prof, err))) {
        shard_versions_release(h->ctx->versions, v);
        return rc;
    }
    opts.profile = prof.k ? &prof : NULL;
    opts.rcache = h->ctx->rcache;
    opts.rcache_version = shard_version_number(v);
    ps_tokens_reset(&h->tokens);
    for (size_t i = 0; i < q->n_tokens && !rc; i++)
        rc = ps_tokens_push(&h->tokens, q->tokens[i], strlen(q->tokens[i]));
    if (rc)
        ps_err_set(err, rc, "out of memory for query tokens");
    else if (!(searcher = shard_version_searcher(v, err)))
        rc = err->code;
    else
        rc = ps_search_shard(searcher, &h->tokens, &opts, h->hits, &n, &st, err);
    shard_version_return(v, searcher);
    if (!rc)
        rc = ps_wire_encode_search_reply(env->request_id, h->ctx->shard, shard_version_number(v),
                                         h->hits, n, st.visited, q->columnar_hits, out, out_len,
                                         err);
    shard_versions_release(h->ctx->versions, v);
    if (!rc) {
        atomic_fetch_add(&m->searches, 1);
        atomic_fetch_add(&m->postings_visited, st.visited);
        ps_hist_observe(&m->latency, now_s() - t0);
        ps_log(PS_LOG_DEBUG, "shard", "search",
               "request_id=%llu trace=%s tokens=%zu hits=%zu visited=%llu",
               (unsigned long long)env->request_id, PS_WIRE_TRACE(env), q->n_tokens, n,
               (unsigned long long)st.visited);
    } else {
        atomic_fetch_add(&m->search_errors, 1);
    }
    ps_profile_clear(&prof);
    return rc;
}

static int do_get_sticker(void *state, const Persrv__Envelope *env, uint8_t **out, size_t *out_len,
                          ps_err *err)
{
    shard_handler_t *h = state;
    uint64_t id = env->get_sticker->id;
    uint32_t doc;
    shard_version *v = acquire(h, env->get_sticker->snapshot_version, err);
    if (!v) return err->code;
    const ps_index_t *ix = shard_version_index(v);
    atomic_fetch_add(&h->ctx->metrics->stickers, 1);
    if (ps_index_doc(ix, id, &doc) != 0) {
        shard_versions_release(h->ctx->versions, v);
        ps_log(PS_LOG_DEBUG, "shard", "get_sticker", "request_id=%llu trace=%s id=%llu found=0",
               (unsigned long long)env->request_id, PS_WIRE_TRACE(env), (unsigned long long)id);
        return ps_wire_encode_sticker_reply(env->request_id, h->ctx->shard, id, NULL, 0, out,
                                            out_len, err);
    }
    ps_sticker_rec rec = {.id = id};
    float *emb = NULL;
    uint32_t dim = ps_index_dim(ix);
    int rc = ps_store_fields_image(shard_version_store(v), doc, rec.field, &rec.image, err);
    if (!rc && env->get_sticker->with_embedding) {
        if (!(emb = malloc((size_t)dim * sizeof *emb)))
            rc = ps_err_set(err, PS_ENOMEM, "out of memory for an embedding");
        else
            rc = ps_index_embeddings(ix, &doc, 1, emb, err);
    }
    if (!rc) {
        for (int f = 0; f < PS_NFIELDS; f++) rec.field_len[f] = strlen(rec.field[f]);
        rec.image_len = rec.image ? strlen(rec.image) : 0;
        rc = ps_wire_encode_sticker_reply_emb(env->request_id, h->ctx->shard, id, &rec,
                                              ps_index_utility(ix, doc), emb, dim, out, out_len,
                                              err);
    }
    shard_versions_release(h->ctx->versions, v);
    free(emb);
    for (int f = 0; f < PS_NFIELDS; f++) free(rec.field[f]);
    free(rec.image);
    if (!rc)
        ps_log(PS_LOG_DEBUG, "shard", "get_sticker", "request_id=%llu trace=%s id=%llu found=1",
               (unsigned long long)env->request_id, PS_WIRE_TRACE(env), (unsigned long long)id);
    return rc;
}

static int do_health(void *state, const Persrv__Envelope *env, uint8_t **out, size_t *out_len,
                     ps_err *err)
{
    shard_handler_t *h = state;
    shard_version_info info[SHARD_MAX_HELD];
    ps_wire_snap held[SHARD_MAX_HELD];
    uint64_t active = 0, stickers = 0;
    size_t n = shard_versions_list(h->ctx->versions, info, SHARD_MAX_HELD, &active);
    for (size_t i = 0; i < n; i++) {
        held[i] = (ps_wire_snap){.version = info[i].version,
                                 .fingerprint = info[i].fingerprint,
                                 .active = info[i].active,
                                 .stickers = info[i].stickers};
        if (info[i].active) stickers = info[i].stickers;
    }
    ps_wire_health hr = {.held = held,
                         .nheld = n,
                         .shard = h->ctx->shard,
                         .nshards = h->ctx->nshards,
                         .snapshot_version = active,
                         .stickers = stickers,
                         .ready = 1};
    ps_log(PS_LOG_DEBUG, "shard", "health", "request_id=%llu", (unsigned long long)env->request_id);
    return ps_wire_encode_health_reply(env->request_id, &hr, out, out_len, err);
}

/* A batch of searches (the broker's msearch): each element decoded and searched as a request
 * of its own, its reply (or its own Error) in its place. */
static int do_batch(void *state, const Persrv__Envelope *env, uint8_t **out, size_t *out_len,
                    ps_err *err)
{
    shard_handler_t *h = state;
    const Persrv__BatchRequest *b = env->batch;
    uint8_t *frames[PS_WIRE_MAX_BATCH] = {0};
    size_t lens[PS_WIRE_MAX_BATCH] = {0};
    int rc = 0;
    if (b->n_requests > PS_WIRE_MAX_BATCH) /* ps_wire_decode caps it: cannot happen */
        return ps_err_set(err, PS_ETOOBIG, "batch: more than %d requests", PS_WIRE_MAX_BATCH);
    for (size_t i = 0; i < b->n_requests && !rc; i++) {
        const ProtobufCBinaryData *r = &b->requests[i];
        Persrv__Envelope *sub = NULL;
        ps_err e = {0, ""};
        int src = ps_wire_decode(r->data, r->len, h->ctx->max_frame, &sub, &e);
        if (!src && sub->body_case != PERSRV__ENVELOPE__BODY_SEARCH)
            src = ps_err_set(&e, PS_EINVAL, "batch.requests[%zu]: a batch holds searches only", i);
        if (!src) src = do_search(h, sub, &frames[i], &lens[i], &e);
        if (src) {
            free(frames[i]);
            frames[i] = NULL;
            uint64_t rid = sub ? sub->request_id : ps_wire_peek_request_id(r->data, r->len);
            rc = ps_wire_encode_error(rid, src, e.msg, &frames[i], &lens[i], err);
        }
        ps_wire_free(sub);
    }
    if (!rc)
        rc = ps_wire_encode_batch(env->request_id, 0, 1, (const uint8_t *const *)frames, lens,
                                  b->n_requests, out, out_len, err);
    for (size_t i = 0; i < b->n_requests; i++) free(frames[i]);
    if (!rc)
        ps_log(PS_LOG_DEBUG, "shard", "batch", "request_id=%llu trace=%s searches=%zu",
               (unsigned long long)env->request_id, PS_WIRE_TRACE(env), b->n_requests);
    return rc;
}

static const ps_route routes[] = {
    {PERSRV__ENVELOPE__BODY_SEARCH, do_search, 0},
    {PERSRV__ENVELOPE__BODY_BATCH, do_batch, 0},
    {PERSRV__ENVELOPE__BODY_GET_STICKER, do_get_sticker, 0},
    {PERSRV__ENVELOPE__BODY_HEALTH, do_health, 0},
};

static const ps_door door = {.component = "shard",
                             .name = "a shard",
                             .routes = routes,
                             .nroutes = sizeof routes / sizeof routes[0],
                             .client_error_level = PS_LOG_WARN};

int shard_handle_inline(shard_handler_t *h, const void *req, size_t len, uint8_t **reply,
                        size_t *reply_len)
{
    if (len > SHARD_INLINE_MAX) return 0; /* not a HealthRequest: no decoding it twice */
    Persrv__Envelope *env = NULL;
    if (ps_wire_decode(req, len, h->ctx->max_frame, &env, NULL)) return 0; /* a worker's Error */
    int rc = 0;
    if (env->body_case == PERSRV__ENVELOPE__BODY_HEALTH) {
        atomic_fetch_add(&h->ctx->metrics->health_inline, 1);
        rc = do_health(h, env, reply, reply_len, NULL) == 0;
    }
    ps_wire_free(env);
    return rc;
}

int shard_handle(shard_handler_t *h, const void *req, size_t len, uint8_t **reply,
                 size_t *reply_len)
{
    int rc = ps_dispatch(&door, h, h->ctx->max_frame, req, len, reply, reply_len, NULL);
    return rc == PS_DISPATCH_LATER ? PS_EINTERNAL : rc;
}
