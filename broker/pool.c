/*
 * pool.c — the broker's ZeroMQ side: one requester (ps/zreq.h, a DEALER) per shard replica,
 * and calls that fan out to several shards at once with a deadline per attempt and failover to
 * the next replica (ZeroMQ guide, "Lazy Pirate": on a timeout the socket is closed and
 * reopened, so whatever the slow replica sends later is dropped with the old socket). The
 * requesters of every pending call are polled together in one zmq_poll; ps_zreq does the
 * sending, the matching and the reopening.
 *
 * A DEALER talking to the shard's ROUTER sends and receives single frames: [envelope]. Each
 * call's request is encoded once (a search once for all shards: the caller passes one frame)
 * and every attempt sends it with a fresh request_id and its deadline stamped on
 * (ps_wire_stamp); a reply is taken only if it echoes the current id. Sockets have
 * ZMQ_MAXMSGSIZE (a larger reply drops the connection; the attempt then times out) and
 * ZMQ_LINGER 0 (closing never waits for unsent requests). A replica that refuses the
 * connection is treated as one that does not answer (recv_env).
 *
 * Replica choice: round robin over the replicas that are up (answered their last probe or
 * call); a failover goes to the next replica in order that is up. A replica that is down (it
 * missed its last deadline or probe) is never waited on by a call: when no replica of a shard
 * is up the call fails at once, and the health probes bring the replica back.
 *
 * Every call keeps within deadline-ms × (retries + 1) from its first send, whatever happens.
 *
 * Health probes are asynchronous (after the first round, which waits so that the broker can
 * report readiness at start): each round collects the answers to the previous round's
 * HealthRequests without blocking, marks a replica that did not answer within one health
 * interval down (its socket reopened, Lazy Pirate), and sends the next round. A probe answer
 * that a search finds on the socket it is reading is taken as the probe's answer.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "broker.h"
#include "ps/log.h"
#include "ps/wire.h"
#include "ps/zreq.h"

typedef struct replica {
    char endpoint[BROKER_MAX_ENDPOINT];
    ps_zreq_t *zr;            /* its requester; its socket is NULL when it could not be
                                 (re)opened: every attempt on it fails */
    atomic_int *up;           /* REP_UP, REP_SLOW or REP_DOWN (in the map shared by the lanes) */
    atomic_llong *slow_since; /* ms (now_ms) it became SLOW (shared like up) */
    int probe_pending;        /* a HealthRequest with probe_id awaits its answer */
    double probe_sent;        /* ms (now_ms) the pending probe was sent */
    uint64_t probe_id;
    char last_err[160]; /* why it went down ("" when unknown) */
} replica;

typedef struct shard_slot {
    replica *rep;
    uint32_t nrep;
    uint32_t rr; /* round-robin position */
} shard_slot;

struct broker_pool {
    void *zctx;
    broker_upmap_t *own; /* the map when none was shared */
    shard_slot *shards;
    uint32_t nshards;
    uint32_t deadline_ms, retries;
    size_t max_frame;
    const ps_curve_t *curve; /* CURVE client settings (NULL: plain) */
    uint8_t *probe;          /* a HealthRequest, encoded once */
    size_t probe_len;
    int probed; /* a probe round ran: later rounds do not wait */
};

/* A replica's state (broker.h: BROKER_REP_*). The profile service's pools and the admin port's
 * keep the rules they had: DOWN when the last health probe went unanswered, or a send failed;
 * SLOW after a missed deadline, usable for BROKER_SLOW_MS when no replica is UP. */
#define REP_DOWN    BROKER_REP_DOWN
#define REP_UP      BROKER_REP_UP
#define REP_SLOW    BROKER_REP_SLOW
#define REP_SLOW_MS BROKER_SLOW_MS
#define STATE(r)    atomic_load_explicit((r)->up, memory_order_relaxed)
#define UP(r)       (STATE(r) == REP_UP)

broker_upmap_t *broker_upmap_new(const broker_pool_t *p)
{
    broker_upmap_t *u = calloc(1, sizeof *u);
    if (!u) return NULL;
    for (uint32_t s = 0; s < p->nshards; s++) u->n += p->shards[s].nrep;
    u->nshards = p->nshards;
    if (!(u->r = calloc(u->n ? u->n : 1, sizeof *u->r)) ||
        !(u->first = calloc(p->nshards + 1, sizeof *u->first))) {
        broker_upmap_free(u);
        return NULL;
    }
    for (uint32_t s = 0; s < p->nshards; s++) u->first[s + 1] = u->first[s] + p->shards[s].nrep;
    for (size_t i = 0; i < u->n; i++) {
        atomic_init(&u->r[i].state, REP_DOWN);
        atomic_init(&u->r[i].slow_since, 0);
        atomic_init(&u->r[i].up_since, 0);
        atomic_init(&u->r[i].missed, 0);
        atomic_init(&u->r[i].ever_up, 0);
    }
    atomic_init(&u->inflight, 0);
    for (int i = 0; i < BROKER_NHC; i++) atomic_init(&u->count[i], 0);
    return u;
}

void broker_upmap_free(broker_upmap_t *u)
{
    if (!u) return;
    free(u->r);
    free(u->first);
    free(u);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* A health probe unanswered for this long marks its replica DOWN. */
#define PROBE_LOST_MS 2000
static double probe_lost_ms(const broker_pool_t *p)
{
    return p->deadline_ms > PROBE_LOST_MS ? p->deadline_ms : PROBE_LOST_MS;
}

/* A SLOW replica still worth a call: it became slow less than REP_SLOW_MS ago. */
static int slow_usable(const replica *r)
{
    return STATE(r) == REP_SLOW &&
           now_ms() - (double)atomic_load_explicit(r->slow_since, memory_order_relaxed) <
               REP_SLOW_MS;
}

/* r's socket, NULL when it has none. */
static void *rsock(const replica *r)
{
    return r->zr ? ps_zreq_socket(r->zr) : NULL;
}

/* (Re)open the requester of r (Lazy Pirate: what the old socket held is gone). Returns 0, or
 * -1 (logged) with no socket. */
static int replica_open(broker_pool_t *p, replica *r)
{
    ps_err e = {0, ""};
    r->probe_pending = 0; /* its answer, if any, dies with the old socket */
    if (r->zr) {
        if (ps_zreq_reopen(r->zr, 0, &e) == 0) return 0;
    } else {
        const char *ep = r->endpoint;
        /* no monitor: the pool does not act on refusals (recv_env), so it need not watch for
         * them — one socket and one poll item per replica */
        ps_zreq_opts o = {.max_frame = p->max_frame, .curve = p->curve, .no_monitor = 1};
        if ((r->zr = ps_zreq_new(p->zctx, &ep, 1, &o, &e))) return 0;
    }
    ps_log(PS_LOG_ERROR, "broker", "socket_failed", "endpoint=%s msg=\"%s\"", r->endpoint, e.msg);
    return -1;
}

void broker_pool_free(broker_pool_t *p)
{
    if (!p) return;
    for (uint32_t s = 0; p->shards && s < p->nshards; s++) {
        for (uint32_t i = 0; i < p->shards[s].nrep; i++) ps_zreq_free(p->shards[s].rep[i].zr);
        free(p->shards[s].rep);
    }
    free(p->shards);
    free(p->probe);
    if (p->zctx) zmq_ctx_term(p->zctx);
    broker_upmap_free(p->own);
    free(p);
}

broker_pool_t *broker_pool_new(const char *topology, uint32_t deadline_ms, uint32_t retries,
                               size_t max_frame, const ps_curve_t *curve, broker_upmap_t *shared,
                               ps_err *err)
{
    broker_topology t;
    broker_pool_t *p = calloc(1, sizeof *p);
    if (!p) {
        ps_err_set(err, PS_ENOMEM, "out of memory for the shard pool");
        return NULL;
    }
    p->deadline_ms = deadline_ms;
    p->retries = retries;
    p->max_frame = max_frame;
    p->curve = curve;
    if (broker_topology_parse(topology, &t, err)) goto fail;
    if (ps_wire_encode_health(0, 0, &p->probe, &p->probe_len, err) || !(p->zctx = zmq_ctx_new()) ||
        !(p->shards = calloc(t.nshards, sizeof *p->shards))) {
        ps_err_set(err, PS_ENOMEM, "out of memory for the shard pool");
        goto fail;
    }
    /* one socket per replica (its DEALER: no monitor), and room for the rest */
    int maxsock = (int)(t.nendpoints + 64);
    if (maxsock > zmq_ctx_get(p->zctx, ZMQ_MAX_SOCKETS))
        zmq_ctx_set(p->zctx, ZMQ_MAX_SOCKETS, maxsock);
    p->nshards = t.nshards;
    for (uint32_t s = 0; s < t.nshards; s++) {
        uint32_t nr = t.first[s + 1] - t.first[s];
        if (!(p->shards[s].rep = calloc(nr, sizeof(replica)))) {
            ps_err_set(err, PS_ENOMEM, "out of memory for the shard pool");
            goto fail;
        }
        p->shards[s].nrep = nr;
        for (uint32_t i = 0; i < nr; i++) {
            replica *r = &p->shards[s].rep[i];
            strcpy(r->endpoint, t.endpoint[t.first[s] + i]); /* < BROKER_MAX_ENDPOINT: parsed so */
            if (ps_curve_check_endpoint(curve, r->endpoint, err)) {
                ps_err_prefix(err, "shard %u replica %u", s, i);
                goto fail;
            }
        }
    }
    broker_upmap_t *u = shared;
    if (!u && !(u = p->own = broker_upmap_new(p))) {
        ps_err_set(err, PS_ENOMEM, "out of memory for the shard pool");
        goto fail;
    }
    size_t at = 0;
    for (uint32_t s = 0; s < p->nshards; s++)
        for (uint32_t i = 0; i < p->shards[s].nrep; i++) {
            if (at == u->n) {
                ps_err_set(err, PS_EINVAL, "shards: the shared replica map is too small");
                goto fail;
            }
            p->shards[s].rep[i].slow_since = &u->r[at].slow_since;
            p->shards[s].rep[i].up = &u->r[at++].state;
        }
    for (uint32_t s = 0; s < p->nshards; s++) {
        for (uint32_t i = 0; i < p->shards[s].nrep; i++) {
            replica *r = &p->shards[s].rep[i];
            if (replica_open(p, r)) {
                ps_err_set(err, PS_EINVAL, "shards: shard %u replica %u: cannot connect to '%s'", s,
                           i, r->endpoint);
                goto fail;
            }
        }
    }
    broker_topology_free(&t);
    return p;
fail:
    broker_topology_free(&t);
    broker_pool_free(p);
    return NULL;
}

uint32_t broker_pool_nshards(const broker_pool_t *p)
{
    return p->nshards;
}

uint32_t broker_pool_nreplicas(const broker_pool_t *p, uint32_t shard)
{
    return shard < p->nshards ? p->shards[shard].nrep : 0;
}

int broker_pool_shard_up(const broker_pool_t *p, uint32_t shard)
{
    if (shard >= p->nshards) return 0;
    for (uint32_t i = 0; i < p->shards[shard].nrep; i++)
        if (UP(&p->shards[shard].rep[i])) return 1; /* slow ones do not count as ready */
    return 0;
}

/* The replica a failover call starts on: the next one that is up in round-robin order, else
 * the next slow one, or -1 when every replica is down. */
static int pick_replica(shard_slot *sl)
{
    uint32_t start = sl->rr++ % sl->nrep;
    for (uint32_t i = 0; i < sl->nrep; i++) {
        const replica *r = &sl->rep[(start + i) % sl->nrep];
        if (UP(r) && rsock(r)) return (int)((start + i) % sl->nrep);
    }
    for (uint32_t i = 0; i < sl->nrep; i++) {
        const replica *r = &sl->rep[(start + i) % sl->nrep];
        if (slow_usable(r) && rsock(r)) return (int)((start + i) % sl->nrep);
    }
    return -1;
}

/* The replica after `cur` that is up (cur itself last), else another slow one, or -1. */
static int next_up(const shard_slot *sl, int cur)
{
    for (uint32_t k = 1; k <= sl->nrep; k++) {
        int i = (int)((cur + k) % sl->nrep);
        if (UP(&sl->rep[i]) && rsock(&sl->rep[i])) return i;
    }
    for (uint32_t k = 1; k < sl->nrep; k++) {
        int i = (int)((cur + k) % sl->nrep);
        if (slow_usable(&sl->rep[i]) && rsock(&sl->rep[i])) return i;
    }
    return -1;
}

/* The reason a call finds no replica of its shard up. */
static void no_replica_reason(const shard_slot *sl, broker_call *c)
{
    const replica *r = &sl->rep[0];
    snprintf(c->reason, sizeof c->reason, "no replica up (replica 0 (%.200s): %.120s)", r->endpoint,
             r->last_err[0] ? r->last_err : "down");
}

/* Send the current attempt of c (its request stamped with a fresh request_id and the
 * attempt's deadline). Returns 0, or -1 when the send failed (the attempt has failed: reason
 * set). Out of memory aborts. */
static int send_attempt(broker_pool_t *p, broker_call *c, double now)
{
    replica *r = &p->shards[c->shard].rep[c->cur];
    c->deadline = now + p->deadline_ms;
    if (c->deadline > c->budget_end) c->deadline = c->budget_end;
    uint32_t ms = c->deadline > now ? (uint32_t)(c->deadline - now + 0.5) : 1;
    if (!rsock(r)) {
        snprintf(c->reason, sizeof c->reason, "replica %d (%s): no socket", c->cur, r->endpoint);
        atomic_store_explicit(r->up, 0, memory_order_relaxed);
        return -1;
    }
    ps_err e = {0, ""};
    if (ps_zreq_send(r->zr, c->req, c->req_len, ms ? ms : 1, &c->request_id, &e)) {
        if (e.code == PS_ENOMEM) {
            ps_log(PS_LOG_ERROR, "broker", "out_of_memory", "where=request msg=\"%s\"", e.msg);
            abort();
        }
        snprintf(c->reason, sizeof c->reason, "replica %d: %s", c->cur, e.msg);
        snprintf(r->last_err, sizeof r->last_err, "%.150s", e.msg);
        atomic_store_explicit(r->up, 0, memory_order_relaxed);
        return -1;
    }
    c->pending = 1;
    return 0;
}

/* The current attempt of c failed (c->reason says why): move to the next replica that is up
 * while attempts and budget remain, else give up. */
static void next_attempt(broker_pool_t *p, broker_call *c, double now)
{
    c->pending = 0;
    c->timed_out = 0;
    for (;;) {
        uint32_t max_attempts = c->replica >= 0 ? 1 : p->retries + 1;
        int nxt = c->replica >= 0 ? -1 : next_up(&p->shards[c->shard], c->cur);
        if (c->attempt + 1 >= max_attempts || nxt < 0 || now >= c->budget_end) {
            c->seconds = (now - c->t0) / 1e3;
            return; /* failed: reason set by the last attempt */
        }
        c->attempt++;
        c->failovers++;
        c->cur = nxt;
        if (send_attempt(p, c, now) == 0) return;
    }
}

/* Log a change of r's state (was -> now). */
static void log_change(uint32_t s, int i, const replica *r, int was)
{
    int now = STATE(r), up = now == REP_UP;
    static const char *const event[] = {"replica_down", "replica_up", "replica_slow"};
    if (was != now)
        ps_log(up ? PS_LOG_INFO : PS_LOG_WARN, "broker", event[now],
               "shard=%u replica=%d endpoint=%s%s%s%s", s, i, r->endpoint,
               !up && r->last_err[0] ? " reason=\"" : "", up ? "" : r->last_err,
               !up && r->last_err[0] ? "\"" : "");
}

/* Take env (freed here) as the answer to the pending probe of replica i of shard s. */
static void probe_answer(broker_pool_t *p, uint32_t s, int i, Persrv__Envelope *env)
{
    replica *r = &p->shards[s].rep[i];
    int was = STATE(r);
    r->probe_pending = 0;
    atomic_store_explicit(r->up, 0, memory_order_relaxed);
    if (env->body_case != PERSRV__ENVELOPE__BODY_HEALTH_REPLY) {
        snprintf(r->last_err, sizeof r->last_err, "health probe: unexpected reply body %d",
                 (int)env->body_case);
    } else {
        const Persrv__HealthReply *h = env->health_reply;
        if (h->shard != s || h->nshards != p->nshards) {
            ps_log(PS_LOG_WARN, "broker", "shard_mismatch",
                   "endpoint=%s expected=%u/%u reported=%u/%u", r->endpoint, s, p->nshards,
                   h->shard, h->nshards);
            snprintf(r->last_err, sizeof r->last_err, "reports shard %u/%u", h->shard, h->nshards);
        } else if (!h->ready) {
            snprintf(r->last_err, sizeof r->last_err, "not ready");
        } else {
            atomic_store_explicit(r->up, 1, memory_order_relaxed);
            r->last_err[0] = '\0';
        }
    }
    ps_wire_free(env);
    log_change(s, i, r, was);
}

/* What recv_env found. */
enum { GOT_NOTHING = 0, GOT_ENV = 1 };

/* Receive the next well-formed envelope waiting on replica i of shard s (frames that do not
 * decode are logged and dropped); a probe answer is settled on the way. A refused connection
 * (ps_zreq reports it at once) changes nothing here: the attempt runs to its deadline and the
 * health probes mark the replica down, as for any replica that does not answer, so failover
 * and `timed_out` mean what they meant before the pool used ps_zreq. (Failing over at once on
 * a refusal would spare up to one deadline per search until the next probe: a change of
 * behaviour for its own issue.) Returns GOT_ENV with *env set, or GOT_NOTHING when nothing more
 * is waiting. */
static int recv_env(broker_pool_t *p, uint32_t s, int i, Persrv__Envelope **out)
{
    replica *r = &p->shards[s].rep[i];
    for (;;) {
        Persrv__Envelope *env = NULL;
        ps_err e = {0, ""};
        int rc = r->zr ? ps_zreq_step(r->zr, &env, &e) : PS_ZREQ_NONE;
        if (rc == PS_ZREQ_NONE) return GOT_NOTHING;
        if (rc == PS_ZREQ_REFUSED) continue; /* see above */
        if (rc < 0) {
            if (rc == PS_ENOMEM) {
                ps_log(PS_LOG_ERROR, "broker", "out_of_memory", "where=reply msg=\"%s\"", e.msg);
                abort();
            }
            ps_log(PS_LOG_WARN, "broker", "bad_reply", "shard=%u endpoint=%s code=%s msg=\"%s\"", s,
                   r->endpoint, ps_errname(rc), e.msg);
            continue;
        }
        if (r->probe_pending && env->request_id == r->probe_id) {
            probe_answer(p, s, i, env);
            continue;
        }
        *out = env;
        return GOT_ENV;
    }
}

/* Read every frame waiting on the socket of c; settle c if one answers it. */
static void drain(broker_pool_t *p, broker_call *c, double now)
{
    replica *r = &p->shards[c->shard].rep[c->cur];
    while (c->pending) {
        Persrv__Envelope *env = NULL;
        int got = recv_env(p, c->shard, c->cur, &env);
        if (got == GOT_NOTHING) return;
        if (env->request_id != c->request_id) { /* stale: an earlier request's answer */
            ps_log(PS_LOG_DEBUG, "broker", "stale_reply", "shard=%u request_id=%llu", c->shard,
                   (unsigned long long)env->request_id);
            ps_wire_free(env);
            continue;
        }
        atomic_store_explicit(r->up, 1, memory_order_relaxed);
        r->last_err[0] = '\0';
        if (env->body_case == c->expect ||
            (c->error_is_answer && env->body_case == PERSRV__ENVELOPE__BODY_ERROR)) {
            c->pending = 0;
            c->reply = env;
            c->reason[0] = '\0';
            c->seconds = (now - c->t0) / 1e3;
            return;
        }
        if (env->body_case == PERSRV__ENVELOPE__BODY_ERROR)
            snprintf(c->reason, sizeof c->reason, "replica %d: %s: %s", c->cur, env->error->code,
                     env->error->message);
        else
            snprintf(c->reason, sizeof c->reason, "replica %d: unexpected reply body %d", c->cur,
                     (int)env->body_case);
        ps_wire_free(env);
        next_attempt(p, c, now);
        return; /* the next attempt (if any) uses another socket: poll again */
    }
}

/* Free the frames the run encoded. */
static void free_own(broker_call *calls, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(calls[i].own);
        calls[i].own = NULL;
    }
}

int broker_pool_run(broker_pool_t *p, broker_call *calls, size_t n, ps_err *err)
{
    /* every request encoded before anything is sent: an encoding failure sends nothing */
    for (size_t i = 0; i < n; i++) {
        broker_call *c = &calls[i];
        c->own = NULL;
        c->req = c->frame;
        c->req_len = c->len;
        if (c->frame) continue;
        int rc = c->encode(c->arg, 0, 0, &c->own, &c->req_len, err);
        if (rc) {
            free_own(calls, i);
            return rc;
        }
        c->req = c->own;
    }
    double now = now_ms();
    for (size_t i = 0; i < n; i++) {
        broker_call *c = &calls[i];
        shard_slot *sl = &p->shards[c->shard];
        c->reply = NULL;
        c->failovers = 0;
        c->seconds = 0;
        c->timed_out = 0;
        c->reason[0] = '\0';
        c->pending = 0;
        c->attempt = 0;
        c->t0 = now;
        c->budget_end = now + (double)p->deadline_ms * (c->replica >= 0 ? 1 : p->retries + 1);
        c->cur = c->replica >= 0 ? c->replica : pick_replica(sl);
    }
    for (size_t i = 0; i < n; i++) {
        if (calls[i].cur < 0) { /* no replica up: fail now, the probes will bring one back */
            no_replica_reason(&p->shards[calls[i].shard], &calls[i]);
            continue;
        }
        if (send_attempt(p, &calls[i], now)) next_attempt(p, &calls[i], now);
    }
    size_t cap = (n ? n : 1) * PS_ZREQ_NPOLL;
    zmq_pollitem_t *items = malloc(cap * sizeof *items);
    size_t *which = malloc(cap * sizeof *which);
    if (!items || !which) {
        ps_log(PS_LOG_ERROR, "broker", "out_of_memory", "where=poll");
        abort();
    }
    for (;;) {
        size_t np = 0, npending = 0;
        double first = 0;
        for (size_t i = 0; i < n; i++) {
            if (!calls[i].pending) continue;
            const replica *r = &p->shards[calls[i].shard].rep[calls[i].cur];
            int k = ps_zreq_pollitems(r->zr, items + np);
            for (int j = 0; j < k; j++) which[np++] = i;
            if (npending++ == 0 || calls[i].deadline < first) first = calls[i].deadline;
        }
        if (npending == 0) break;
        now = now_ms();
        long wait = first > now ? (long)(first - now) + 1 : 0;
        if (zmq_poll(items, (int)np, wait) < 0 && errno != EINTR) {
            ps_log(PS_LOG_ERROR, "broker", "poll_failed", "msg=\"%s\"", zmq_strerror(errno));
            abort();
        }
        now = now_ms();
        for (size_t k = 0; k < np; k++)
            if (items[k].revents & ZMQ_POLLIN) drain(p, &calls[which[k]], now);
        for (size_t i = 0; i < n; i++) {
            broker_call *c = &calls[i];
            if (!c->pending || c->deadline > now) continue;
            replica *r = &p->shards[c->shard].rep[c->cur];
            int was = STATE(r);
            /* slow, not dead: the probes tell dead (DOWN) from late (SLOW) */
            if (was == REP_UP) {
                atomic_store_explicit(r->slow_since, (long long)now, memory_order_relaxed);
                atomic_store_explicit(r->up, REP_SLOW, memory_order_relaxed);
            }
            replica_open(p, r); /* Lazy Pirate: a late reply dies with the old socket */
            snprintf(c->reason, sizeof c->reason, "replica %d (%s): no reply in %u ms", c->cur,
                     r->endpoint, p->deadline_ms);
            snprintf(r->last_err, sizeof r->last_err, "no reply in %u ms", p->deadline_ms);
            log_change(c->shard, c->cur, r, was);
            ps_log(PS_LOG_WARN, "broker", "shard_timeout", "shard=%u replica=%d endpoint=%s",
                   c->shard, c->cur, r->endpoint);
            next_attempt(p, c, now);
            if (!c->pending && !c->reply) c->timed_out = 1;
        }
    }
    free(items);
    free(which);
    free_own(calls, n);
    return 0;
}

/* Send a HealthRequest to replica i of shard s. */
static void probe_send(broker_pool_t *p, uint32_t s, int i)
{
    replica *r = &p->shards[s].rep[i];
    ps_err e = {0, ""};
    if (!rsock(r) && replica_open(p, r)) return;
    if (ps_zreq_send_aside(r->zr, p->probe, p->probe_len, p->deadline_ms, &r->probe_id, &e) == 0) {
        r->probe_pending = 1;
        r->probe_sent = now_ms();
    } else if (e.code == PS_ENOMEM) {
        ps_log(PS_LOG_ERROR, "broker", "out_of_memory", "where=probe msg=\"%s\"", e.msg);
        abort();
    }
}

/* Read what waits on replica i of shard s: probe answers are taken, anything else is stale. */
static void probe_collect(broker_pool_t *p, uint32_t s, int i)
{
    Persrv__Envelope *env = NULL;
    int got;
    while ((got = recv_env(p, s, i, &env)) != GOT_NOTHING) {
        ps_log(PS_LOG_DEBUG, "broker", "stale_reply", "shard=%u request_id=%llu", s,
               (unsigned long long)env->request_id);
        ps_wire_free(env);
    }
}

uint32_t broker_pool_probe(broker_pool_t *p)
{
    /* The previous round's answers, taken without waiting; silence for a whole health
     * interval marks a replica down (Lazy Pirate: its socket is reopened). */
    for (uint32_t s = 0; s < p->nshards; s++)
        for (uint32_t i = 0; i < p->shards[s].nrep; i++) {
            replica *r = &p->shards[s].rep[i];
            probe_collect(p, s, (int)i);
            /* a probe gets PROBE_LOST_MS (or a deadline) to be answered, however soon this round
               runs after the last: a replica that is merely slow (a loaded machine, a lane
               running its timer late) is not taken for dead; calls that miss their deadline
               already stop going to it after REP_SLOW_MS */
            if (!r->probe_pending || now_ms() - r->probe_sent < probe_lost_ms(p)) continue;
            int was = STATE(r);
            atomic_store_explicit(r->up, 0, memory_order_relaxed);
            snprintf(r->last_err, sizeof r->last_err, "no answer to the last health probe");
            replica_open(p, r);
            log_change(s, (int)i, r, was);
        }
    for (uint32_t s = 0; s < p->nshards; s++)
        for (uint32_t i = 0; i < p->shards[s].nrep; i++) {
            const replica *r = &p->shards[s].rep[i];
            if (r->probe_pending && now_ms() - r->probe_sent < probe_lost_ms(p)) continue;
            probe_send(p, s, (int)i);
        }
    if (!p->probed) {
        /* The first round waits (one zmq_poll over every socket) so that the broker knows
         * which replicas are up before it serves; later rounds never block the loop. */
        p->probed = 1;
        size_t n = 0;
        for (uint32_t s = 0; s < p->nshards; s++) n += p->shards[s].nrep;
        size_t cap = (n ? n : 1) * PS_ZREQ_NPOLL;
        zmq_pollitem_t *items = malloc(cap * sizeof *items);
        uint32_t *ws = malloc(cap * sizeof *ws);
        int *wi = malloc(cap * sizeof *wi);
        if (!items || !ws || !wi) {
            ps_log(PS_LOG_ERROR, "broker", "out_of_memory", "where=probe");
            abort();
        }
        double end = now_ms() + p->deadline_ms;
        for (;;) {
            size_t np = 0;
            for (uint32_t s = 0; s < p->nshards; s++)
                for (uint32_t i = 0; i < p->shards[s].nrep; i++) {
                    const replica *r = &p->shards[s].rep[i];
                    if (!r->probe_pending) continue;
                    int k = ps_zreq_pollitems(r->zr, items + np);
                    for (int j = 0; j < k; j++, np++) {
                        ws[np] = s;
                        wi[np] = (int)i;
                    }
                }
            double now = now_ms();
            if (np == 0 || now >= end) break;
            if (zmq_poll(items, (int)np, (long)(end - now) + 1) < 0 && errno != EINTR) {
                ps_log(PS_LOG_ERROR, "broker", "poll_failed", "msg=\"%s\"", zmq_strerror(errno));
                abort();
            }
            for (size_t k = 0; k < np; k++)
                if (items[k].revents & ZMQ_POLLIN) probe_collect(p, ws[k], wi[k]);
        }
        free(items);
        free(ws);
        free(wi);
    }
    uint32_t down = 0;
    for (uint32_t s = 0; s < p->nshards; s++) down += !broker_pool_shard_up(p, s);
    return down;
}
