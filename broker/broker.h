/*
 * broker.h — the broker daemon's internal header, one section per .c file.
 *
 * The broker is the cluster's front door (DESIGN §2): HTTP/JSON on a libevent evhttp loop,
 * ZeroMQ DEALER sockets to every replica of every shard.
 *
 *   client ──HTTP──▶ evhttp (one thread) ──▶ http.c: parse, analyze once, profile (cached)
 *                                              │ one SearchRequest per shard
 *                                              ▼
 *                                 pool.c: DEALER per replica, deadline, failover
 *                                 (Lazy Pirate: a timed-out socket is closed and reopened)
 *
 * This first version is single-threaded: a request handler sends to every shard, then
 * blocks in zmq_poll until all have answered or given up, so one HTTP request may hold the
 * event loop for at most deadline-ms × (retries + 1), and never waits on a replica known to be
 * down. Health probes run on a timer in the same loop without blocking it (but the first).
 */
#ifndef BROKER_H
#define BROKER_H

#include <stddef.h>
#include <stdint.h>

#include "persrv.pb-c.h"
#include "ps/analyzer.h"
#include "ps/err.h"
#include "ps/profile.h"
#include "ps/search.h"
#include "ps/store.h"

#define BROKER_MAX_SHARDS   1024
#define BROKER_MAX_REPLICAS 16
#define BROKER_MAX_ENDPOINT 256 /* bytes of one ZeroMQ endpoint */

/* ---- pool.c: topology, sockets, calls with deadline and failover ------------------------ */

typedef struct broker_pool broker_pool_t;

/* Parse a topology "ep0a|ep0b,ep1,ep2" (',' between shards in shard order, '|' between the
 * replicas of one shard) and connect a DEALER to every replica (ZMQ_LINGER 0,
 * ZMQ_MAXMSGSIZE max_frame). Errors: PS_EINVAL naming the shard/replica at fault (empty
 * element, endpoint too long, too many shards or replicas, zmq_connect refusing it),
 * PS_ENOMEM. Caller owns the result (broker_pool_free). */
broker_pool_t *broker_pool_new(const char *topology, uint32_t deadline_ms, uint32_t retries,
                               size_t max_frame, ps_err *err);
void broker_pool_free(broker_pool_t *p);

uint32_t broker_pool_nshards(const broker_pool_t *p);
uint32_t broker_pool_nreplicas(const broker_pool_t *p, uint32_t shard);
/* 1 when at least one replica of `shard` answered its last probe or call. */
int broker_pool_shard_up(const broker_pool_t *p, uint32_t shard);

/* Build the request frame for one attempt (a fresh request_id per attempt). OUT *buf: malloc'd
 * frame (caller frees). Returns 0 or a PS_E* code with err set. */
typedef int (*broker_encode_fn)(void *arg, uint64_t request_id, uint32_t deadline_ms, uint8_t **buf,
                                size_t *len, ps_err *err);

typedef struct broker_call {
    /* in */
    uint32_t shard;
    int replica; /* -1: pick a replica and fail over on timeout; >= 0: that one, one attempt */
    Persrv__Envelope__BodyCase expect; /* the reply body that counts as an answer */
    broker_encode_fn encode;
    void *arg;
    /* out */
    Persrv__Envelope *reply; /* the answer (caller frees with ps_wire_free); NULL on failure */
    uint32_t failovers;      /* attempts moved to another (or the reopened) replica */
    double seconds;          /* first send to answer or to giving up */
    int timed_out;           /* failed, and its last attempt missed the deadline */
    char reason[384];        /* why the call failed ("" on success) */
    /* private to pool.c */
    int pending;
    int cur;
    uint32_t attempt;
    uint64_t request_id;
    double t0, deadline, budget_end;
} broker_call;

/* Run calls[0..n) concurrently: send every request, then poll until each has an answer or has
 * used up its attempts (retries + 1 for replica == -1), each attempt getting deadline-ms and the
 * whole call at most deadline-ms × attempts. A call with replica == -1 only goes to replicas
 * that are up (answered their last call or probe): when none of its shard is, it fails at once
 * ("no replica up") without sending, and a failover with no other replica up gives up.
 * A replica that misses its deadline has its socket closed and reopened, so a late reply can
 * never be taken for a later request; replies are also matched by request_id. An Error reply
 * counts as a failed attempt. No two calls of one run may use the same replica at once: give
 * each shard at most one failover call, or only fixed replicas, distinct.
 * Returns 0 (each call's reply or reason tells how it went), or the encoder's error when a
 * first request cannot be built (then nothing was sent and no call holds a reply). */
int broker_pool_run(broker_pool_t *p, broker_call *calls, size_t n, ps_err *err);

/* Health probes, one round per call (on a timer): take the previous round's answers without
 * blocking (a replica that answered as shard `s` of nshards and ready is up; one that did not
 * answer is down and its socket reopened), then send every replica a HealthRequest. Only the
 * first round waits for the answers, at most deadline-ms in all (one zmq_poll over every
 * socket), so that readiness is known at start. Returns the number of shards with no replica
 * up. */
uint32_t broker_pool_probe(broker_pool_t *p);

/* ---- profcache.c: read-only user profiles, cached in memory ----------------------------- */

typedef struct broker_profcache broker_profcache_t;

/* A cache over the profiles directory `dir` (NULL: no profiles, every user is unknown) holding
 * at most max_entries users (known or unknown; when full it is emptied). Errors: those of
 * ps_profiles_open, PS_ENOMEM. Caller owns the result. */
broker_profcache_t *broker_profcache_new(const char *dir, size_t max_entries, ps_err *err);
void broker_profcache_free(broker_profcache_t *c);

/* The profile of `user` (borrowed, valid until the next broker_profcache_get), or NULL for an
 * unknown user or one without centroids. A storage error is logged and treated as unknown. */
const ps_profile *broker_profcache_get(broker_profcache_t *c, const char *user);

/* ---- metrics.c: Prometheus counters and histograms -------------------------------------- */

enum {
    BROKER_EP_SEARCH = 0,
    BROKER_EP_STICKER,
    BROKER_EP_HEALTHZ,
    BROKER_EP_READYZ,
    BROKER_EP_METRICS,
    BROKER_EP_OTHER,
    BROKER_NEP
};

typedef struct broker_metrics broker_metrics_t;

broker_metrics_t *broker_metrics_new(uint32_t nshards);
void broker_metrics_free(broker_metrics_t *m);
void broker_metrics_http(broker_metrics_t *m, int endpoint, int status, double seconds);
/* One shard call: its duration when answered (ok = 1), its failovers, and a failure. */
void broker_metrics_shard(broker_metrics_t *m, uint32_t shard, int ok, double seconds,
                          uint32_t failovers);
/* The exposition text (malloc'd, caller frees), NULL when out of memory. */
char *broker_metrics_render(const broker_metrics_t *m);

/* ---- http.c: the HTTP/JSON endpoints ---------------------------------------------------- */

typedef struct broker_limits {
    uint32_t R;
    uint32_t max_k;
    size_t max_query_bytes;
    uint32_t deadline_ms;
} broker_limits;

typedef struct broker_http broker_http_t;
struct evhttp;

/* Attach the endpoints to `http` (all borrowed; they must outlive the result).
 * Caller owns the result. NULL when out of memory or the analyzer fails (err says why). */
broker_http_t *broker_http_new(struct evhttp *http, broker_pool_t *pool,
                               broker_profcache_t *profiles, broker_metrics_t *metrics,
                               const broker_limits *lim, ps_err *err);
void broker_http_free(broker_http_t *h);

#endif
