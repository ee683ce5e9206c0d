/*
 * admin.c — the snapshot version the broker serves, and its admin port.
 *
 * A push stages and loads a new version on every replica of every shard; the broker's switch
 * is its commit point: `POST /admin/switch?version=V` asks every replica (its own ZeroMQ health
 * request, one fixed-replica call each) and moves only when each holds V loaded, all from one
 * build (one fingerprint). Searches read the version once when they start, so those already
 * running finish on the old version, which the shards keep until told to retire it: a
 * rollback is one more switch.
 */
#include <inttypes.h>
#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "ps/log.h"
#include "ps/wire.h"

void broker_version_init(broker_version_t *v, uint64_t initial)
{
    atomic_init(&v->current, initial);
    atomic_init(&v->switches, 0);
    pthread_mutex_init(&v->lock, NULL);
    v->fingerprint[0] = '\0';
}

void broker_version_adopt(broker_version_t *v, uint64_t version)
{
    uint64_t zero = 0;
    if (version && atomic_compare_exchange_strong(&v->current, &zero, version))
        ps_log(PS_LOG_INFO, "broker", "version_adopted", "version=%" PRIu64, version);
}

typedef struct broker_admin {
    broker_admin_cfg cfg;
    broker_pool_t *pool; /* the admin thread's own sockets to every replica (made on first use) */
} broker_admin;

static int encode_health(void *arg, uint64_t request_id, uint32_t deadline_ms, uint8_t **buf,
                         size_t *len, ps_err *err)
{
    (void)arg;
    return ps_wire_encode_health(request_id, deadline_ms, buf, len, err);
}

/* Ask every replica whether it holds `version` loaded. 0 and *fp set to the build's
 * fingerprint when all do; else the error names the first replica that does not. */
static int check_cluster(broker_admin *a, uint64_t version, char fp[17], ps_err *err)
{
    if (!a->pool && !(a->pool = broker_pool_new(a->cfg.topology, a->cfg.deadline_ms, 0,
                                                a->cfg.max_frame, a->cfg.curve, NULL, err)))
        return err->code;
    uint32_t ns = broker_pool_nshards(a->pool), n = 0;
    broker_call *calls = calloc((size_t)ns * BROKER_MAX_REPLICAS, sizeof *calls);
    if (!calls) return ps_err_set(err, PS_ENOMEM, "out of memory checking the cluster");
    for (uint32_t s = 0; s < ns; s++)
        for (uint32_t r = 0; r < broker_pool_nreplicas(a->pool, s); r++)
            calls[n++] = (broker_call){.shard = s,
                                       .replica = (int)r,
                                       .expect = PERSRV__ENVELOPE__BODY_HEALTH_REPLY,
                                       .encode = encode_health};
    int rc = broker_pool_run(a->pool, calls, n, err);
    fp[0] = '\0';
    for (uint32_t i = 0; i < n; i++) {
        broker_call *c = &calls[i];
        const Persrv__HealthReply *h = c->reply ? c->reply->health_reply : NULL;
        const Persrv__SnapshotHeld *held = NULL;
        for (size_t j = 0; h && j < h->n_held; j++)
            if (h->held[j]->version == version) held = h->held[j];
        if (rc) {
            /* an earlier failure wins; only free the replies */
        } else if (!h) {
            rc = ps_err_set(err, PS_EUNAVAIL, "shard %u replica %d did not answer: %s", c->shard,
                            c->replica, c->reason);
        } else if (h->shard != c->shard) {
            rc = ps_err_set(err, PS_ECONFLICT, "shard %u replica %d answers as shard %u", c->shard,
                            c->replica, h->shard);
        } else if (!held) {
            rc = ps_err_set(err, PS_ECONFLICT,
                            "shard %u replica %d does not hold version %" PRIu64 " loaded",
                            c->shard, c->replica, version);
        } else if (fp[0] && strcmp(fp, held->fingerprint) != 0) {
            rc = ps_err_set(err, PS_ECONFLICT,
                            "shard %u replica %d holds version %" PRIu64
                            " of build %s, others of build %s",
                            c->shard, c->replica, version, held->fingerprint, fp);
        } else {
            snprintf(fp, 17, "%s", held->fingerprint);
        }
        ps_wire_free(c->reply);
    }
    free(calls);
    return rc;
}

static void h_switch(struct evhttp_request *req, void *arg)
{
    broker_admin *a = arg;
    uint64_t version;
    char fp[17];
    ps_err err = {0, ""};
    if (ps_admin_param_u64(req, "version", &version, &err) || version == 0) {
        ps_admin_reply_error(req, PS_EINVAL, "version: an integer >= 1 is required");
        return;
    }
    broker_version_t *v = a->cfg.version;
    if (atomic_load(&v->current) == version) { /* nothing to switch: say so, change nothing */
        pthread_mutex_lock(&v->lock);
        memcpy(fp, v->fingerprint, sizeof fp);
        pthread_mutex_unlock(&v->lock);
        ps_admin_reply_json(req, 200,
                            json_pack("{s:I, s:I, s:s, s:b}", "version", (json_int_t)version,
                                      "previous", (json_int_t)version, "fingerprint", fp,
                                      "unchanged", 1));
        return;
    }
    if (check_cluster(a, version, fp, &err)) {
        ps_log(PS_LOG_WARN, "broker", "switch_refused", "version=%" PRIu64 " code=%s msg=\"%s\"",
               version, ps_errname(err.code), err.msg);
        ps_admin_reply_err(req, &err);
        return;
    }
    pthread_mutex_lock(&v->lock);
    uint64_t prev = atomic_exchange(&v->current, version);
    memcpy(v->fingerprint, fp, sizeof v->fingerprint);
    pthread_mutex_unlock(&v->lock);
    atomic_fetch_add(&v->switches, 1);
    ps_log(PS_LOG_INFO, "broker", "version_switched",
           "version=%" PRIu64 " previous=%" PRIu64 " fingerprint=%s", version, prev, fp);
    ps_admin_reply_json(req, 200,
                        json_pack("{s:I, s:I, s:s}", "version", (json_int_t)version, "previous",
                                  (json_int_t)prev, "fingerprint", fp));
}

static void h_healthz(struct evhttp_request *req, void *arg)
{
    broker_version_t *v = ((broker_admin *)arg)->cfg.version;
    char fp[17];
    pthread_mutex_lock(&v->lock);
    memcpy(fp, v->fingerprint, sizeof fp);
    pthread_mutex_unlock(&v->lock);
    ps_admin_reply_json(req, 200,
                        json_pack("{s:s, s:I, s:s}", "status", "ok", "version",
                                  (json_int_t)atomic_load(&v->current), "fingerprint", fp));
}

static void h_metrics(struct evhttp_request *req, void *arg)
{
    broker_admin *a = arg;
    ps_buf b = PS_BUF_INIT;
    broker_metrics_render(a->cfg.metrics, &b);
    ps_buf_printf(&b,
                  "# HELP persrv_broker_snapshot_version The snapshot version searches ask "
                  "for.\n# TYPE persrv_broker_snapshot_version gauge\n"
                  "persrv_broker_snapshot_version %" PRIu64 "\n"
                  "# HELP persrv_broker_version_switches_total Version switches.\n"
                  "# TYPE persrv_broker_version_switches_total counter\n"
                  "persrv_broker_version_switches_total %" PRIu64 "\n",
                  atomic_load(&a->cfg.version->current), atomic_load(&a->cfg.version->switches));
    if (b.rc)
        ps_admin_reply_error(req, PS_ENOMEM, "out of memory rendering metrics");
    else
        ps_admin_reply(req, 200, "text/plain; version=0.0.4", b.p, b.n);
    ps_buf_free(&b);
}

/* One admin port per process. */
static broker_admin state;

void broker_admin_stop(ps_admin_t *a)
{
    ps_admin_stop(a); /* its thread is gone: the pool is ours again */
    broker_pool_free(state.pool);
    state.pool = NULL;
}

/* An API key with the `admin` scope opens the admin routes as the token does. */
static int admin_key(void *arg, const char *bearer, size_t n)
{
    const char *name = NULL;
    int retry = 0;
    switch (broker_keys_check(arg, bearer, n, BROKER_SCOPE_ADMIN, broker_now(), &name, &retry)) {
    case BROKER_AUTH_OK:
        ps_log(PS_LOG_INFO, "broker", "admin_key", "key=%s", name);
        return 0;
    case BROKER_AUTH_SCOPE:
        return PS_EFORBIDDEN;
    case BROKER_AUTH_RATE:
        return PS_ERATE;
    default:
        return PS_EUNAUTH;
    }
}

ps_admin_t *broker_admin_start(const broker_admin_cfg *cfg, ps_err *err)
{
    static ps_admin_route routes[3];
    state.cfg = *cfg;
    ps_admin_route r[] = {
        {"/healthz", PS_ADMIN_GET, 0, h_healthz, &state},
        {"/metrics", PS_ADMIN_GET, 0, h_metrics, &state},
        {"/admin/switch", PS_ADMIN_POST, 1, h_switch, &state},
    };
    memcpy(routes, r, sizeof r);
    ps_admin_cfg ac = {.listen = cfg->listen,
                       .token = cfg->token,
                       .auth = cfg->keys ? admin_key : NULL,
                       .auth_arg = cfg->keys,
                       .max_body = 65536,
                       .limits = cfg->limits,
                       .comp = "broker",
                       .routes = routes,
                       .nroutes = sizeof routes / sizeof routes[0]};
    return ps_admin_start(&ac, err);
}
