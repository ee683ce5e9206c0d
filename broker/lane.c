/*
 * lane.c — one lane of the broker: a thread with its own libevent loop, shard fan-out, profile
 * cache and search state, serving
 *   - HTTP connections it accepts from the shared listening socket (every lane listens on a
 *     dup of the same socket; whichever lane is idle accepts the next connection, and the
 *     connection stays with that lane). A lane takes one connection per turn of its loop (its
 *     listener pauses after each accept), so a burst of connections spreads over the idle
 *     lanes instead of landing on the first to wake. The lane's HTTP guard (ps/httpguard.h)
 *     does that pausing, holds the door's max-connections (one count for all lanes), cuts
 *     requests slower than request-timeout-ms and backs off failed accept() calls,
 *   - front-door requests on a DEALER connected to the ZeroMQ server's inproc back socket
 *     (the server spreads them round robin), read through ZMQ_FD,
 *   - replies from the shard replicas (fan.c: the lane's DEALERs, one per replica, their
 *     ZMQ_FD in this loop; many requests in flight at once, each with its own timers),
 *   - on one lane (cfg->probe), the health probes of every replica on a timer: which replicas
 *     are up is one map shared by all lanes.
 * Nothing is shared between lanes but the metrics (locked), the replicas' health (atomics) and
 * the read-only configuration. A lane never waits for a shard, so "whichever lane is idle"
 * means whichever loop turns first; a lane's searches wait only where the profile cache reads
 * the profile service on a miss (pool.c, blocking).
 *
 * ZMQ_FD is edge-triggered: it signals that the socket's state may have changed, and stays
 * quiet until ZMQ_EVENTS is read again. So the callback reads ZMQ_EVENTS and takes messages
 * until none is left, and the health timer does the same as a safety net.
 *
 * Stopping: when stop_fd becomes readable (main writes it once the front door has drained)
 * the lane closes its listener, stops probing and reading the front door, and leaves its loop
 * after drain-ms, so replies still being written get out.
 */
#include <errno.h>
#include <event2/event.h>
#include <event2/http.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker.h"
#include "ps/httpguard.h"
#include "ps/log.h"
#include "ps/zserver.h"

struct broker_lane {
    broker_lane_cfg cfg;
    pthread_t tid;
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *listener;
    ps_httpguard_t *guard;
    broker_fan_t *fan;                           /* the shards */
    broker_pool_t *prof_replicas, *prof_primary; /* the profile service, or NULL */
    broker_clicks_t *clicks;                     /* clicks to the primary, or NULL */
    broker_profcache_t *profiles;
    broker_core_t *core;
    broker_http_t *handlers;
    void *zsock;
    struct event *zev, *health_ev, *stop_ev;
    int ready;
};

/* A front-door request on its way back: its route frames and payload, kept while a click waits
 * for the profile primary (the zserver counts it in flight until the answer goes out). */
typedef struct front_ticket {
    broker_lane_t *lane;
    int n;
    zmq_msg_t parts[PS_ZMSG_MAX_PARTS];
} front_ticket;

/* Send the answer along the ticket's route; takes reply and t. */
static void front_answer(void *ticket, uint8_t *reply, size_t reply_len)
{
    front_ticket *t = ticket;
    broker_lane_t *l = t->lane;
    if (ps_zmsg_set_payload(t->parts, t->n, reply, reply_len)) {
        ps_log(PS_LOG_ERROR, "broker", "out_of_memory", "where=reply");
        abort();
    }
    free(reply);
    if (ps_zmsg_send_multi(l->zsock, t->parts, t->n, ZMQ_DONTWAIT) < 0)
        ps_log(PS_LOG_WARN, "broker", "reply_dropped", "lane=%d reason=\"%s\"", l->cfg.id,
               zmq_strerror(errno));
    free(t);
    /* a send outside serve_front's loop can take the edge ZMQ_FD would have signalled for the
     * next request: look again from the loop */
    if (l->zev) event_active(l->zev, EV_READ, 0);
}

static void serve_front(broker_lane_t *l)
{
    for (;;) {
        int events = 0;
        size_t sz = sizeof events;
        if (zmq_getsockopt(l->zsock, ZMQ_EVENTS, &events, &sz) || !(events & ZMQ_POLLIN)) return;
        front_ticket *t = malloc(sizeof *t);
        if (!t) {
            ps_log(PS_LOG_ERROR, "broker", "out_of_memory", "where=request");
            abort();
        }
        t->lane = l;
        if (ps_zmsg_recv_multi(l->zsock, t->parts, PS_ZMSG_MAX_PARTS, &t->n, ZMQ_DONTWAIT) < 0) {
            free(t);
            return;
        }
        if (t->n < 2 || t->n > PS_ZMSG_MAX_PARTS) { /* the server forwards 2..MAX parts only */
            if (t->n <= PS_ZMSG_MAX_PARTS) ps_zmsg_close(t->parts, t->n);
            free(t);
            continue;
        }
        zmq_msg_t *payload = &t->parts[t->n - 1];
        uint8_t *reply = NULL;
        size_t reply_len = 0;
        if (broker_front_handle(l->core, l->cfg.metrics, l->cfg.keys, l->cfg.max_frame,
                                zmq_msg_data(payload), zmq_msg_size(payload), &reply, &reply_len,
                                front_answer, t)) {
            ps_log(PS_LOG_ERROR, "broker", "out_of_memory", "where=reply");
            abort();
        }
        if (reply) front_answer(t, reply, reply_len); /* else a click: answered later */
    }
}

static void on_front(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    serve_front(arg);
}

static void on_health(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    broker_lane_t *l = arg;
    uint32_t down = l->cfg.probe ? broker_fan_probe(l->fan) : 0;
    if (l->cfg.probe && l->prof_replicas) broker_pool_probe(l->prof_replicas);
    if (l->cfg.probe && l->prof_primary) broker_pool_probe(l->prof_primary);
    if (l->cfg.probe && down == 0 && !l->ready) {
        l->ready = 1;
        if (l->cfg.on_ready) l->cfg.on_ready(l->cfg.ready_arg);
    }
    if (l->zsock) serve_front(l);
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    broker_lane_t *l = arg;
    if (l->listener) {
        ps_httpguard_unlisten(l->guard, l->listener);
        evhttp_del_accept_socket(l->http, l->listener);
    }
    l->listener = NULL;
    event_del(l->stop_ev);
    event_del(l->health_ev);
    if (l->zev) event_del(l->zev);
    struct timeval drain = {(time_t)(l->cfg.drain_ms / 1000),
                            (suseconds_t)(l->cfg.drain_ms % 1000) * 1000};
    event_base_loopexit(l->base, &drain);
}

static void *lane_main(void *arg)
{
    broker_lane_t *l = arg;
    if (event_base_dispatch(l->base) < 0)
        ps_log(PS_LOG_ERROR, "broker", "loop_failed", "lane=%d", l->cfg.id);
    return NULL;
}

static void lane_free(broker_lane_t *l)
{
    /* first: a click, search or lookup still in flight is answered (outcome unknown, shards
     * failed) while its HTTP request and the front door's socket still exist */
    broker_fan_free(l->fan);
    broker_clicks_free(l->clicks);
    if (l->zev) event_free(l->zev);
    if (l->health_ev) event_free(l->health_ev);
    if (l->stop_ev) event_free(l->stop_ev);
    if (l->http) evhttp_free(l->http); /* closes the listener's dup and the connections */
    ps_httpguard_free(l->guard);
    broker_http_free(l->handlers);
    if (l->base) event_base_free(l->base);
    if (l->zsock) zmq_close(l->zsock);
    broker_core_free(l->core);
    broker_profcache_free(l->profiles);
    broker_pool_free(l->prof_replicas);
    broker_pool_free(l->prof_primary);
    free(l);
}

broker_lane_t *broker_lane_start(const broker_lane_cfg *cfg, ps_err *err)
{
    broker_lane_t *l = calloc(1, sizeof *l);
    if (!l) {
        ps_err_set(err, PS_ENOMEM, "out of memory for a lane");
        return NULL;
    }
    l->cfg = *cfg;
    if (!(l->base = event_base_new()) || !(l->http = evhttp_new(l->base))) {
        ps_err_set(err, PS_EINTERNAL, "libevent setup failed");
        goto fail;
    }
    broker_fan_cfg fc = {.topology = cfg->topology,
                         .deadline_ms = cfg->deadline_ms,
                         .retries = cfg->retries,
                         .max_frame = cfg->max_frame,
                         .curve = cfg->curve,
                         .upmap = cfg->upmap,
                         .down_after = cfg->down_after,
                         .slow_start_ms = cfg->slow_start_ms};
    if (!(l->fan = broker_fan_new(l->base, &fc, err)) ||
        !(l->profiles = broker_profcache_new(cfg->profiles, cfg->profile_cache, err)) ||
        !(l->core = broker_core_new(l->fan, l->profiles, cfg->metrics, &cfg->lim, err)))
        goto fail;
    if (cfg->profile_replicas &&
        !(l->prof_replicas = broker_pool_new(cfg->profile_replicas, cfg->deadline_ms, cfg->retries,
                                             cfg->max_frame, cfg->curve, cfg->replicas_upmap, err)))
        goto fail;
    /* The primary pool serves reads a replica has not caught up with (a search's profile):
     * the search deadline bounds them, not the click deadline. */
    if (cfg->profile_primary &&
        !(l->prof_primary = broker_pool_new(cfg->profile_primary, cfg->deadline_ms, 0,
                                            cfg->max_frame, cfg->curve, cfg->primary_upmap, err)))
        goto fail;
    if (l->prof_replicas)
        broker_profcache_use_service(l->profiles, l->prof_replicas, l->prof_primary,
                                     cfg->profile_staleness_ms);
    broker_core_set_version(l->core, cfg->version);
    if (cfg->profile_primary &&
        !(l->clicks = broker_clicks_new(l->base, cfg->profile_primary, cfg->click_deadline_ms,
                                        cfg->max_frame, cfg->max_clicks, cfg->curve, err)))
        goto fail;
    broker_core_set_clicks(l->core, l->clicks);
    evhttp_set_max_body_size(l->http, (ev_ssize_t)cfg->max_body);
    evhttp_set_max_headers_size(l->http, (ev_ssize_t)cfg->max_headers);
    evhttp_set_timeout(l->http, cfg->http_timeout_s);
    /* Every method reaches the handler, so a wrong one gets a JSON 405; a body over max-body
     * is read and dropped (lingering close) so the client sees the 413. */
    evhttp_set_allowed_methods(l->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                            EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    evhttp_set_flags(l->http, EVHTTP_SERVER_LINGERING_CLOSE);
    if (!(l->handlers =
              broker_http_new(l->http, l->core, cfg->metrics, cfg->keys, cfg->access_log, err)))
        goto fail;
    broker_http_set_images(l->handlers, &cfg->images);
    ps_httpguard_cfg gc = {.door = "http",
                           .comp = "broker",
                           .max_connections = cfg->max_connections,
                           .request_timeout_ms = cfg->request_timeout_ms,
                           .max_headers = cfg->max_headers,
                           .max_body = cfg->max_body};
    if (!(l->guard = ps_httpguard_new(l->base, l->http, &gc, err))) goto fail;
    if (cfg->http_fd >= 0) {
        int fd = dup(cfg->http_fd);
        if (fd < 0 || !(l->listener = evhttp_accept_socket_with_handle(l->http, fd))) {
            if (fd >= 0) close(fd);
            ps_err_set(err, PS_EINTERNAL, "lane %d: cannot accept HTTP: %s", cfg->id,
                       strerror(errno));
            goto fail;
        }
        if (ps_httpguard_listen(l->guard, l->listener, err)) goto fail;
    }
    if (cfg->zctx) {
        int zero = 0, zfd;
        size_t sz = sizeof zfd;
        int64_t maxmsg = (int64_t)cfg->max_frame;
        if (!(l->zsock = zmq_socket(cfg->zctx, ZMQ_DEALER)) ||
            zmq_setsockopt(l->zsock, ZMQ_LINGER, &zero, sizeof zero) ||
            zmq_setsockopt(l->zsock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) ||
            zmq_connect(l->zsock, cfg->backend) || zmq_getsockopt(l->zsock, ZMQ_FD, &zfd, &sz) ||
            !(l->zev = event_new(l->base, zfd, EV_READ | EV_PERSIST, on_front, l)) ||
            event_add(l->zev, NULL)) {
            ps_err_set(err, PS_EINTERNAL, "lane %d: front door socket: %s", cfg->id,
                       zmq_strerror(zmq_errno()));
            goto fail;
        }
    }
    struct timeval every = {(time_t)(cfg->health_interval_ms / 1000),
                            (suseconds_t)(cfg->health_interval_ms % 1000) * 1000};
    if (!(l->health_ev = event_new(l->base, -1, EV_PERSIST, on_health, l)) ||
        !(l->stop_ev = event_new(l->base, cfg->stop_fd, EV_READ | EV_PERSIST, on_stop, l)) ||
        event_add(l->health_ev, &every) || event_add(l->stop_ev, NULL)) {
        ps_err_set(err, PS_EINTERNAL, "lane %d: libevent events failed", cfg->id);
        goto fail;
    }
    on_health(-1, 0, l); /* the first probe now: ready as soon as every shard answers */

    /* Lanes must not take the signals: the main thread's self-pipe does. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int rc = pthread_create(&l->tid, NULL, lane_main, l);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        ps_err_set(err, PS_EINTERNAL, "lane %d: cannot start its thread", cfg->id);
        goto fail;
    }
    return l;
fail:
    lane_free(l);
    return NULL;
}

void broker_lane_join(broker_lane_t *l)
{
    if (!l) return;
    pthread_join(l->tid, NULL);
    lane_free(l);
}
