/*
 * front.c — the broker's ZeroMQ front door, one frame in and one frame out (the sockets are
 * lane.c's and ps/zserver.h's): what libpersrv and the `persrv` CLI speak.
 *
 *   query        → query_reply  (the search of GET /v1/search: same checks, same answer;
 *                  answered from the lane's loop once the shards answered)
 *   get_sticker  → sticker_reply (found = true), or Error not_found (answered later too)
 *   health       → health_reply (nshards, shards_up, ready = every shard has a replica up)
 *   click        → click_reply once the profile primary answered (POST /v1/click's checks;
 *                  answered from the lane's loop later, so the lane serves other requests
 *                  meanwhile), or Error: outcome_unknown when the click was sent and the
 *                  primary did not answer in click-deadline-ms (retry with the same click_id)
 *   anything else, or a frame that does not decode → Error (code from ps_errname)
 *
 * The door is a ps_dispatch table (ps/dispatch.h): the reply echoes the request's request_id,
 * also when the frame does not decode (as far as ps_wire_peek_request_id can read it; else 0),
 * so a client can match its Error. The request's
 * deadline_ms is not used to cut the fan-out short: the broker's own deadline (deadline-ms ×
 * attempts) bounds every search.
 */
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "ps/dispatch.h"
#include "ps/log.h"
#include "ps/wire.h"

static int error_reply(uint64_t request_id, const ps_err *e, uint8_t **reply, size_t *reply_len)
{
    ps_err err2 = {0, ""};
    return ps_wire_encode_error(request_id, e->code, e->msg, reply, reply_len, &err2) ? PS_ENOMEM
                                                                                      : 0;
}

static int pack(Persrv__Envelope *env, uint8_t **reply, size_t *reply_len, ps_err *err)
{
    return ps_wire_pack(env, reply, reply_len, err);
}

/* A request answered from the lane's loop once its shards have answered. */
typedef struct front_later {
    broker_metrics_t *metrics;
    broker_front_later_fn later;
    void *ticket;
    uint64_t request_id;
    int endpoint; /* BROKER_EP_ZMQ_* */
    double t0;
} front_later;

static front_later *later_new(broker_metrics_t *metrics, const Persrv__Envelope *in, int endpoint,
                              broker_front_later_fn later, void *ticket)
{
    front_later *fl = malloc(sizeof *fl);
    if (fl)
        *fl = (front_later){.metrics = metrics,
                            .later = later,
                            .ticket = ticket,
                            .request_id = in->request_id,
                            .endpoint = endpoint,
                            .t0 = broker_now()};
    return fl;
}

/* Send reply (rc 0: packed by the caller) or the Error of (rc, err), count it and free fl. */
static void later_answer(front_later *fl, int rc, const ps_err *err, uint8_t *reply,
                         size_t reply_len)
{
    if (rc) {
        if (ps_err_http_status(rc) >= 500)
            ps_log(PS_LOG_WARN, "broker", "zmq_request_failed", "code=%s msg=\"%.200s\"",
                   ps_errname(rc), err->msg);
        if (error_reply(fl->request_id, err, &reply, &reply_len)) {
            ps_log(PS_LOG_ERROR, "broker", "out_of_memory", "where=reply");
            abort();
        }
    }
    broker_metrics_http(fl->metrics, fl->endpoint, rc ? ps_err_http_status(rc) : 200,
                        broker_now() - fl->t0);
    fl->later(fl->ticket, reply, reply_len);
    free(fl);
}

static int pack_query_reply(const broker_result *r, uint64_t request_id, double t0, uint8_t **reply,
                            size_t *reply_len, ps_err *err)
{
    int rc;
    Persrv__Hit *hits = calloc(r->nhits ? r->nhits : 1, sizeof *hits);
    Persrv__Hit **hitp = calloc(r->nhits ? r->nhits : 1, sizeof *hitp);
    Persrv__GetStickerReply *empty = calloc(r->nhits ? r->nhits : 1, sizeof *empty);
    Persrv__GetStickerReply **fieldp = calloc(r->nhits ? r->nhits : 1, sizeof *fieldp);
    Persrv__ShardFailure *fail = calloc(r->nfailures ? r->nfailures : 1, sizeof *fail);
    Persrv__ShardFailure **failp = calloc(r->nfailures ? r->nfailures : 1, sizeof *failp);
    if (!hits || !hitp || !empty || !fieldp || !fail || !failp) {
        rc = ps_err_set(err, PS_ENOMEM, "out of memory for the reply");
        goto out;
    }
    for (size_t i = 0; i < r->nhits; i++) {
        const ps_hit *h = &r->hits[i];
        persrv__hit__init(&hits[i]);
        hits[i].id = h->id;
        hits[i].relevance = h->relevance;
        hits[i].utility = h->utility;
        hits[i].recall = h->recall;
        hits[i].preference = h->preference;
        hits[i].score = h->score;
        hits[i].centroid = h->centroid;
        hitp[i] = &hits[i];
        if (r->fields) {
            /* A hit whose fields could not be fetched gets an empty, not-found entry, so
             * fields[i] stays hits[i]'s. */
            persrv__get_sticker_reply__init(&empty[i]);
            empty[i].id = h->id;
            fieldp[i] = r->fields[i] ? r->fields[i] : &empty[i];
        }
    }
    for (size_t i = 0; i < r->nfailures; i++) {
        persrv__shard_failure__init(&fail[i]);
        fail[i].shard = r->failures[i].shard;
        fail[i].reason = (char *)r->failures[i].reason;
        failp[i] = &fail[i];
    }
    Persrv__QueryReply qrep = PERSRV__QUERY_REPLY__INIT;
    qrep.n_hits = r->nhits;
    qrep.hits = hitp;
    qrep.n_fields = r->fields ? r->nhits : 0;
    qrep.fields = fieldp;
    qrep.partial = r->ok < r->nshards;
    qrep.timed_out = r->timed_out;
    qrep.personalized = r->personalized;
    qrep.snapshot_version = r->version;
    qrep.shards_total = r->nshards;
    qrep.n_failures = r->nfailures;
    qrep.failures = failp;
    double took = (broker_now() - t0) * 1e6;
    qrep.took_us = took > 4e9 ? 4000000000u : (uint32_t)took;
    Persrv__Envelope env = PERSRV__ENVELOPE__INIT;
    env.version = PS_WIRE_VERSION;
    env.request_id = request_id;
    env.body_case = PERSRV__ENVELOPE__BODY_QUERY_REPLY;
    env.query_reply = &qrep;
    rc = pack(&env, reply, reply_len, err);
out:
    free(hits);
    free(hitp);
    free(empty);
    free(fieldp);
    free(fail);
    free(failp);
    return rc;
}

static void query_answered(void *arg, int rc, const ps_err *err, const broker_result *r)
{
    front_later *fl = arg;
    uint8_t *reply = NULL;
    size_t reply_len = 0;
    ps_err perr = {0, ""};
    if (rc == 0 && (rc = pack_query_reply(r, fl->request_id, fl->t0, &reply, &reply_len, &perr)))
        err = &perr;
    if (rc == 0) broker_metrics_search_answered(fl->metrics, fl->endpoint, r);
    later_answer(fl, rc, err, reply, reply_len);
}

static int do_query(broker_core_t *core, broker_metrics_t *metrics, const Persrv__Envelope *in,
                    broker_front_later_fn later, void *ticket, ps_err *err)
{
    const Persrv__QueryRequest *qr = in->query;
    if (!later)
        return ps_err_set(err, PS_EINVAL, "query: not taken on this path (no deferred answers)");
    broker_query q = {.q = qr->q,
                      .qlen = strlen(qr->q),
                      .user = qr->user,
                      .user_len = strlen(qr->user),
                      .k = qr->k,
                      .explain = qr->explain,
                      .exclude = qr->exclude,
                      .nexclude = qr->n_exclude,
                      .offset = qr->offset,
                      .timeout_ms = qr->timeout_ms,
                      .allow_partial = !qr->no_partial,
                      .trace = in->trace_id && in->trace_id[0] ? in->trace_id : NULL};
    front_later *fl = later_new(metrics, in, BROKER_EP_ZMQ_SEARCH, later, ticket);
    if (!fl) return ps_err_set(err, PS_ENOMEM, "out of memory for a search");
    int rc = broker_core_search(core, &q, query_answered, fl, err);
    if (rc) free(fl);
    return rc;
}

static void sticker_answered(void *arg, int rc, const ps_err *err, Persrv__Envelope *got)
{
    front_later *fl = arg;
    uint8_t *reply = NULL;
    size_t reply_len = 0;
    ps_err perr = {0, ""};
    if (rc == 0) {
        got->request_id = fl->request_id;
        got->deadline_ms = 0;
        if ((rc = pack(got, &reply, &reply_len, &perr))) err = &perr;
        ps_wire_free(got);
    }
    later_answer(fl, rc, err, reply, reply_len);
}

static int do_sticker(broker_core_t *core, broker_metrics_t *metrics, const Persrv__Envelope *in,
                      broker_front_later_fn later, void *ticket, ps_err *err)
{
    if (!later)
        return ps_err_set(err, PS_EINVAL,
                          "get_sticker: not taken on this path (no deferred answers)");
    front_later *fl = later_new(metrics, in, BROKER_EP_ZMQ_STICKER, later, ticket);
    if (!fl) return ps_err_set(err, PS_ENOMEM, "out of memory for a sticker lookup");
    int rc = broker_core_sticker(core, in->get_sticker->id, sticker_answered, fl, err);
    if (rc) free(fl);
    return rc;
}

static int do_health(broker_core_t *core, const Persrv__Envelope *in, uint8_t **reply,
                     size_t *reply_len, ps_err *err)
{
    uint32_t ndown, down[1];
    Persrv__HealthReply h = PERSRV__HEALTH_REPLY__INIT;
    h.nshards = broker_core_nshards(core);
    h.shards_up = broker_core_shards_up(core, down, 0, &ndown);
    h.ready = h.shards_up == h.nshards;
    Persrv__Envelope env = PERSRV__ENVELOPE__INIT;
    env.version = PS_WIRE_VERSION;
    env.request_id = in->request_id;
    env.body_case = PERSRV__ENVELOPE__BODY_HEALTH_REPLY;
    env.health_reply = &h;
    return pack(&env, reply, reply_len, err);
}

/* A click waiting for the profile primary. */
typedef struct front_click {
    broker_metrics_t *metrics;
    broker_front_later_fn later;
    void *ticket;
    uint64_t request_id;
    double t0;
} front_click;

static void click_answered(void *arg, int rc, const ps_err *err, const Persrv__ClickReply *r,
                           const char *click_id)
{
    front_click *fc = arg;
    uint8_t *reply = NULL;
    size_t reply_len = 0;
    ps_err perr = {0, ""};
    int prc = rc;
    if (rc == 0) {
        Persrv__ClickReply cr = *r;
        cr.click_id = (char *)click_id;
        Persrv__Envelope env = PERSRV__ENVELOPE__INIT;
        env.version = PS_WIRE_VERSION;
        env.request_id = fc->request_id;
        env.body_case = PERSRV__ENVELOPE__BODY_CLICK_REPLY;
        env.click_reply = &cr;
        prc = pack(&env, &reply, &reply_len, &perr);
        err = &perr;
    } else {
        ps_log(rc == PS_EINDOUBT || ps_err_http_status(rc) >= 500 ? PS_LOG_WARN : PS_LOG_DEBUG,
               "broker", "zmq_request_failed", "code=%s click_id=%s msg=\"%.200s\"", ps_errname(rc),
               click_id, err->msg);
    }
    if (prc) {
        ps_err e = *err;
        if (rc == PS_EINDOUBT) /* the client retries with the id it sent, or the one we name */
            ps_err_set(&e, rc, "%.150s; retry with click_id %s", err->msg, click_id);
        if (error_reply(fc->request_id, &e, &reply, &reply_len)) {
            ps_log(PS_LOG_ERROR, "broker", "out_of_memory", "where=click_reply");
            abort();
        }
    }
    broker_metrics_http(fc->metrics, BROKER_EP_ZMQ_CLICK, prc ? ps_err_http_status(prc) : 200,
                        broker_now() - fc->t0);
    fc->later(fc->ticket, reply, reply_len);
    free(fc);
}

/* Start a click. Returns 0 with *deferred = 1 when click_answered will answer it. */
static int do_click(broker_core_t *core, broker_metrics_t *metrics, const Persrv__Envelope *in,
                    broker_front_later_fn later, void *ticket, int *deferred, ps_err *err)
{
    const Persrv__ClickRequest *c = in->click;
    *deferred = 0;
    if (c->n_embedding)
        return ps_err_set(err, PS_EINVAL,
                          "click.embedding: the broker takes it from the shard; send none");
    if (!later)
        return ps_err_set(err, PS_EINVAL, "click: not taken on this path (no deferred answers)");
    front_click *fc = malloc(sizeof *fc);
    if (!fc) return ps_err_set(err, PS_ENOMEM, "out of memory for a click");
    *fc = (front_click){.metrics = metrics,
                        .later = later,
                        .ticket = ticket,
                        .request_id = in->request_id,
                        .t0 = broker_now()};
    broker_click k = {
        .user = c->user, .sticker_id = c->sticker_id, .query = c->query, .click_id = c->click_id};
    int rc = broker_core_click(core, &k, click_answered, fc, err);
    if (rc)
        free(fc);
    else
        *deferred = 1;
    return rc;
}

/* With API keys: query and get_sticker need a key (Envelope.api_key) with the scope search,
 * click the scope click. Returns 0, or the PS_E* code of the refusal (err set; the key's name
 * in it, never the key). */
static int authorize(broker_keys_t *keys, const Persrv__Envelope *in, ps_err *err)
{
    if (!keys || in->body_case == PERSRV__ENVELOPE__BODY_HEALTH) return 0;
    const char *name;
    int retry;
    const char *key = in->api_key ? in->api_key : "";
    int click = in->body_case == PERSRV__ENVELOPE__BODY_CLICK;
    broker_auth a =
        broker_keys_check(keys, key, strlen(key), click ? BROKER_SCOPE_CLICK : BROKER_SCOPE_SEARCH,
                          broker_now(), &name, &retry);
    switch (a) {
    case BROKER_AUTH_OK:
        return 0;
    case BROKER_AUTH_MISSING:
        return ps_err_set(err, PS_EUNAUTH, "this broker needs an API key (persrv_options.api_key)");
    case BROKER_AUTH_UNKNOWN:
        return ps_err_set(err, PS_EUNAUTH, "the API key is not valid");
    case BROKER_AUTH_SCOPE:
        return ps_err_set(err, PS_EFORBIDDEN, "the API key '%s' lacks the scope '%s'", name,
                          click ? "click" : "search");
    default:
        return ps_err_set(err, PS_ERATE, "the API key '%s' is over its rate; retry after %d s",
                          name, retry);
    }
}

/* What a front-door request's handlers need. */
typedef struct front_state {
    broker_core_t *core;
    broker_metrics_t *metrics;
    broker_keys_t *keys;
    broker_front_later_fn later;
    void *ticket;
} front_state;

static int admit(void *state, const Persrv__Envelope *in, ps_err *err)
{
    return authorize(((front_state *)state)->keys, in, err);
}

static int route_query(void *state, const Persrv__Envelope *in, uint8_t **reply, size_t *reply_len,
                       ps_err *err)
{
    front_state *f = state;
    (void)reply;
    (void)reply_len;
    int rc = do_query(f->core, f->metrics, in, f->later, f->ticket, err);
    return rc ? rc : PS_DISPATCH_LATER;
}

static int route_sticker(void *state, const Persrv__Envelope *in, uint8_t **reply,
                         size_t *reply_len, ps_err *err)
{
    front_state *f = state;
    (void)reply;
    (void)reply_len;
    int rc = do_sticker(f->core, f->metrics, in, f->later, f->ticket, err);
    return rc ? rc : PS_DISPATCH_LATER;
}

static int route_health(void *state, const Persrv__Envelope *in, uint8_t **reply, size_t *reply_len,
                        ps_err *err)
{
    return do_health(((front_state *)state)->core, in, reply, reply_len, err);
}

static int route_click(void *state, const Persrv__Envelope *in, uint8_t **reply, size_t *reply_len,
                       ps_err *err)
{
    front_state *f = state;
    int deferred = 0;
    (void)reply;
    (void)reply_len;
    int rc = do_click(f->core, f->metrics, in, f->later, f->ticket, &deferred, err);
    return rc ? rc : deferred ? PS_DISPATCH_LATER : 0;
}

static const ps_route routes[] = {
    {PERSRV__ENVELOPE__BODY_QUERY, route_query, BROKER_EP_ZMQ_SEARCH},
    {PERSRV__ENVELOPE__BODY_GET_STICKER, route_sticker, BROKER_EP_ZMQ_STICKER},
    {PERSRV__ENVELOPE__BODY_HEALTH, route_health, BROKER_EP_ZMQ_HEALTH},
    {PERSRV__ENVELOPE__BODY_CLICK, route_click, BROKER_EP_ZMQ_CLICK},
};

/* The front door is public: a client's bad request is its business (debug), the broker's own
 * trouble is not. */
static const ps_door door = {.component = "broker",
                             .name = "the broker",
                             .routes = routes,
                             .nroutes = sizeof routes / sizeof routes[0],
                             .other_tag = BROKER_EP_ZMQ_OTHER,
                             .admit = admit,
                             .client_error_level = PS_LOG_DEBUG};

int broker_front_handle(broker_core_t *core, broker_metrics_t *metrics, broker_keys_t *keys,
                        size_t max_frame, const void *req, size_t len, uint8_t **reply,
                        size_t *reply_len, broker_front_later_fn later, void *ticket)
{
    double t0 = broker_now();
    front_state f = {core, metrics, keys, later, ticket};
    ps_dispatch_result res;
    int rc = ps_dispatch(&door, &f, max_frame, req, len, reply, reply_len, &res);
    if (rc == PS_DISPATCH_LATER) return 0; /* click_answered answers and counts it */
    if (rc) return rc;
    broker_metrics_http(metrics, res.tag, res.code ? ps_err_http_status(res.code) : 200,
                        broker_now() - t0);
    return 0;
}
