/*
 * broker.h — the broker daemon's internal header, one section per .c file.
 *
 * The broker is the cluster's front door (DESIGN §2): HTTP/JSON and ZeroMQ for clients,
 * ZeroMQ DEALER sockets to every replica of every shard.
 *
 *   HTTP clients ──▶ one listening socket, accepted by every lane
 *   libpersrv ──▶ ROUTER front (main thread, ps/zserver.h) ──inproc──▶ a lane's DEALER
 *
 *   lane 0..L-1 (lane.c; a thread, its own libevent loop, shares nothing but the metrics and
 *   the replicas' health):
 *     http.c / front.c: parse ──▶ core.c: check, analyze once, profile (cached)
 *                                   │ one SearchRequest per shard
 *                                   ▼
 *                   fan.c: a DEALER per replica watched by the lane's loop, one state machine
 *                   per call (its own timer, failover, replies matched by request_id), health
 *                   probes, replica choice (slow start, panic)
 *
 * A lane never blocks on the shards: it sends a request's calls and goes back to its loop,
 * and the request is answered from the loop once every call has an answer or has given up
 * (at most deadline-ms × (retries + 1)). Many requests are in flight on a lane at once, on the
 * same sockets. HTTP connections are spread over the lanes by whichever accepts them first,
 * ZeroMQ requests round robin. pool.c keeps the blocking calls of the admin port and the
 * profile service's readers (Lazy Pirate over ps/zreq.h).
 */
#ifndef BROKER_H
#define BROKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "persrv.pb-c.h"
#include "ps/admin.h"
#include "ps/analyzer.h"
#include "ps/buf.h"
#include "ps/curve_zap.h"
#include "ps/err.h"
#include "ps/profile.h"
#include "ps/search.h"
#include "ps/store.h"

#define BROKER_MAX_SHARDS     1024
#define BROKER_MAX_REPLICAS   16
#define BROKER_MAX_ENDPOINT   256 /* bytes of one ZeroMQ endpoint */
#define BROKER_MAX_USER_BYTES 256 /* a user name longer than this is an error */
#define BROKER_DEFAULT_K      10
#define BROKER_MAX_LANES      64

struct event_base;
struct event;
struct fan_run;

/* ---- pool.c: topology, sockets, calls with deadline and failover ------------------------ */

typedef struct broker_pool broker_pool_t;

/* Which replicas are up, shared by the pools of every lane (atomics), so that a replica one
 * lane finds down is skipped by all, and one lane's probes serve all. */
typedef struct broker_upmap broker_upmap_t;

/* A replica's state. DOWN: a transport error (its connection is gone), down-after-missed-probes
 * health probes in a row unanswered, or it answered a probe as not ready or as another shard.
 * UP: it answered. SLOW: it missed a call's deadline and has not answered since (busy, not
 * dead): calls prefer UP replicas, and take a SLOW one only when none is UP, for at most
 * BROKER_SLOW_MS. */
enum { BROKER_REP_DOWN = 0, BROKER_REP_UP = 1, BROKER_REP_SLOW = 2 };
#define BROKER_SLOW_MS 1000

/* One replica's health. */
typedef struct broker_health {
    atomic_int state;        /* BROKER_REP_* */
    atomic_llong slow_since; /* ms (monotonic) it became SLOW */
    atomic_llong up_since;   /* ms it came back from DOWN (slow start; 0: full weight) */
    atomic_int missed;       /* health probes unanswered in a row */
    atomic_int ever_up;      /* it was UP once (coming back then means slow start) */
} broker_health;

/* The counters of the fan-out and of health marking, for /metrics. */
enum {
    BROKER_HC_DOWN_TRANSPORT, /* replicas marked DOWN on a transport error */
    BROKER_HC_DOWN_PROBES,    /* ... after missed probes in a row */
    BROKER_HC_DOWN_REFUSED,   /* ... answering not ready, or as another shard */
    BROKER_HC_UP_AGAIN,       /* replicas back from DOWN (slow start begins) */
    BROKER_HC_SLOW,           /* UP replicas that missed a call's deadline */
    BROKER_HC_PANIC,          /* calls sent with every replica of their shard down */
    BROKER_HC_LATE,           /* replies dropped: their request was no longer pending */
    BROKER_HC_TIMEOUTS,       /* attempts that missed their deadline */
    BROKER_HC_SEND_FAILED,    /* attempts that could not be sent (not connected) */
    BROKER_NHC
};

struct broker_upmap {
    size_t n;
    broker_health *r; /* n, in topology order (shard by shard, replicas in order) */
    uint32_t nshards;
    uint32_t *first;       /* nshards + 1: shard s's replicas are r[first[s] .. first[s+1]) */
    atomic_llong inflight; /* calls pending on every lane */
    atomic_ullong count[BROKER_NHC];
};

/* A map for p's topology, every replica down. NULL when out of memory. */
broker_upmap_t *broker_upmap_new(const broker_pool_t *p);
void broker_upmap_free(broker_upmap_t *u);

/* Parse a topology "ep0a|ep0b,ep1,ep2" (',' between shards in shard order, '|' between the
 * replicas of one shard) and connect a requester (ps/zreq.h: a DEALER, ZMQ_LINGER 0,
 * ZMQ_MAXMSGSIZE max_frame) to every replica. Errors: PS_EINVAL naming the shard/replica at fault
 * (empty element, endpoint too long, too many shards or replicas, zmq_connect refusing it),
 * PS_ENOMEM. curve: CURVE client settings (NULL: plain; an endpoint without a known server key
 * is PS_EINVAL), borrowed, must outlive the pool. shared: the up/down map of the same topology to
 * use (it must outlive the pool), NULL for one of its own. Caller owns the result
 * (broker_pool_free). */
broker_pool_t *broker_pool_new(const char *topology, uint32_t deadline_ms, uint32_t retries,
                               size_t max_frame, const ps_curve_t *curve, broker_upmap_t *shared,
                               ps_err *err);
void broker_pool_free(broker_pool_t *p);

uint32_t broker_pool_nshards(const broker_pool_t *p);
uint32_t broker_pool_nreplicas(const broker_pool_t *p, uint32_t shard);
/* 1 when at least one replica of `shard` answered its last probe or call. */
int broker_pool_shard_up(const broker_pool_t *p, uint32_t shard);

/* Build a call's request frame. The pool calls it once per call, with request_id 0 and
 * deadline_ms 0, and stamps each attempt's own on the frame (ps_wire_stamp). OUT *buf: malloc'd
 * frame (caller frees). Returns 0 or a PS_E* code with err set. */
typedef int (*broker_encode_fn)(void *arg, uint64_t request_id, uint32_t deadline_ms, uint8_t **buf,
                                size_t *len, ps_err *err);

typedef struct broker_call {
    /* in */
    uint32_t shard;
    int replica; /* -1: pick a replica and fail over on timeout; >= 0: that one, one attempt */
    Persrv__Envelope__BodyCase expect; /* the reply body that counts as an answer */
    int error_is_answer; /* an Error reply is the answer too (no failover): the peer judged the
                            request itself, e.g. a click the primary refuses */
    /* the request: frame (len bytes, encoded with request_id 0 and deadline_ms 0; borrowed for
       the run, and may be shared by every call of it: a search is encoded once for all shards),
       or when frame is NULL, encode(arg, 0, 0, ...) called once per call */
    const uint8_t *frame;
    size_t len;
    broker_encode_fn encode;
    void *arg;
    uint32_t budget_ms; /* the call's whole time, when shorter than deadline-ms × attempts (0:
                           that) */
    /* out */
    Persrv__Envelope *reply; /* the answer (caller frees with ps_wire_free); NULL on failure */
    uint32_t failovers;      /* attempts moved to another (or the reopened) replica */
    double seconds;          /* first send to answer or to giving up */
    int timed_out;           /* failed, and its last attempt missed the deadline */
    char reason[384];        /* why the call failed ("" on success) */
    /* private to pool.c and fan.c */
    int pending;
    int cur;
    uint32_t attempt;
    uint64_t request_id;
    double t0, deadline, budget_end;
    const uint8_t *req; /* frame, or own */
    size_t req_len;
    uint8_t *own;                    /* what encode built */
    struct broker_call *prev, *next; /* fan.c: the calls pending on replica cur */
    struct event *timer;             /* fan.c: the attempt's deadline */
    struct fan_run *run;             /* fan.c: the run the call belongs to */
} broker_call;

/* Run calls[0..n) concurrently: send every request, then poll until each has an answer or has
 * used up its attempts (retries + 1 for replica == -1), each attempt getting deadline-ms and the
 * whole call at most deadline-ms × attempts. A call with replica == -1 only goes to replicas
 * that are up (answered their last call or probe): when none of its shard is, it fails at once
 * ("no replica up") without sending, and a failover with no other replica up gives up.
 * A replica that misses its deadline has its socket closed and reopened, so a late reply can
 * never be taken for a later request; replies are also matched by request_id. A replica that
 * refuses the connection (nobody listens: ps_zreq's monitor) fails its attempt at once and is
 * marked down. An Error reply counts as a failed attempt. No two calls of one run may use the same
 * replica at once: give each shard at most one failover call, or only fixed replicas, distinct.
 * Returns 0 (each call's reply or reason tells how it went), or the encoder's error when a
 * first request cannot be built (then nothing was sent and no call holds a reply). */
int broker_pool_run(broker_pool_t *p, broker_call *calls, size_t n, ps_err *err);

/* Health probes, one round per call (on a timer): take the previous round's answers without
 * blocking (a replica that answered as shard `s` of nshards and ready is up; one whose probe
 * has gone unanswered for 2 s (or a deadline, if longer) is down and its socket reopened), then
 * send every replica a HealthRequest. Only the first round waits for the answers, at most
 * deadline-ms in all (one zmq_poll over every socket), so that readiness is known at start. Returns
 * the number of shards with no replica up. */
uint32_t broker_pool_probe(broker_pool_t *p);

/* ---- fan.c: a lane's shard calls without blocking ---------------------------------------- */

/* The fan-out of one lane: a DEALER per replica (ZMQ_IMMEDIATE, ZMQ_LINGER 0, ZMQ_MAXMSGSIZE,
 * no high-water mark) whose ZMQ_FD the lane's loop watches; calls (broker_call, as for
 * broker_pool_run) run as state machines, many at once on the same sockets. */
typedef struct broker_fan broker_fan_t;

typedef struct broker_fan_cfg {
    const char *topology; /* "ep0a|ep0b,ep1,..." (broker_topology_parse) */
    uint32_t deadline_ms; /* per attempt */
    uint32_t retries;     /* attempts on other replicas after the first */
    size_t max_frame;
    const ps_curve_t *curve; /* CURVE client settings (NULL: plain), borrowed */
    broker_upmap_t *upmap;   /* the health shared by every lane (NULL: one of its own) */
    uint32_t down_after;     /* probes unanswered in a row that mark a replica DOWN (0: 3) */
    uint32_t slow_start_ms;  /* a replica back from DOWN reaches full weight after this */
    uint64_t seed;           /* for the weighted choice of a replica */
} broker_fan_cfg;

/* The fan-out of a lane whose loop is base (borrowed; free the fan before it). Waits at most
 * deadline-ms for its sockets to connect (so that a lane does not start by failing sends).
 * Errors: PS_EINVAL naming the shard/replica at fault (topology, CURVE key), PS_EINTERNAL
 * (libevent, a socket), PS_ENOMEM. Caller owns the result. */
broker_fan_t *broker_fan_new(struct event_base *base, const broker_fan_cfg *cfg, ps_err *err);
/* End every call still in flight (failed: "the broker is stopping"; their runs' done is called
 * from here), then close the sockets. NULL is fine. */
void broker_fan_free(broker_fan_t *f);

uint32_t broker_fan_nshards(const broker_fan_t *f);
/* 1 when at least one replica of `shard` is UP (SLOW ones do not count). */
int broker_fan_shard_up(const broker_fan_t *f, uint32_t shard);
/* The shared health map (borrowed). */
broker_upmap_t *broker_fan_upmap(broker_fan_t *f);
/* Calls pending on this lane. */
size_t broker_fan_pending(const broker_fan_t *f);

/* A run's end: every call of calls[0..n) has its reply or its reason (as after
 * broker_pool_run); the callee takes the replies. */
typedef void (*broker_fan_done_fn)(void *arg, broker_call *calls, size_t n);

/* Start calls[0..n) (their `in` fields set as for broker_pool_run; the array must live until
 * done) and return without waiting. Each call picks a replica: an UP one, by weight (a replica
 * back from DOWN ramps from 1/10 to full weight over slow-start-ms); else a SLOW one; else
 * (panic, as Envoy's: every replica looks down, which a loaded machine can fake) any replica,
 * so the call is still tried within its deadline. A failed attempt (no reply in deadline-ms,
 * an Error reply, a send that fails because the replica is not connected) moves to the next
 * replica in order (UP first, then SLOW, then any) while attempts (retries + 1) and the budget
 * (deadline-ms × attempts from the first send) remain; when a timed-out attempt has no other
 * replica to go to, its request is given the next attempt's deadline instead of being sent
 * again (a shard computes every request it took: a copy would double a busy replica's work). A
 * reply whose request is no longer pending (its attempt timed out, or it is not ours) is dropped;
 * sockets stay open: one late replica must not cost the other requests in flight on its socket.
 * Returns 0: done(arg, calls, n) is called exactly once, later, from the loop (never from inside
 * this call). Else (done never called, nothing sent): the encoder's error, PS_EUNAVAIL (the fan is
 * stopping), PS_ENOMEM. */
int broker_fan_start(broker_fan_t *f, broker_call *calls, size_t n, broker_fan_done_fn done,
                     void *arg, ps_err *err);

/* A health probe round (the lane that probes calls it every health-interval-ms): a replica
 * whose previous probe is still unanswered has missed one; down-after-missed-probes misses in a
 * row mark it DOWN. Every replica then gets a HealthRequest; a send that fails (not connected)
 * marks it DOWN at once. Answers arrive through the loop: ready and the right shard make it
 * UP (slow start if it was DOWN), not ready or another shard DOWN. The first round waits for
 * the answers, at most deadline-ms, so that readiness is known at start. Returns the number of
 * shards with no replica UP. */
uint32_t broker_fan_probe(broker_fan_t *f);

/* Append the health counters and gauges of u to b (Prometheus text). */
void broker_upmap_render(const broker_upmap_t *u, ps_buf *b);

/* ---- admin.c: the snapshot version served, the admin port ------------------------------- */

/* The cluster's snapshot version, shared by every lane: each search reads it once when it
 * starts and names it in every shard request, so no answer merges two versions. 0 means not
 * known yet: requests ask for the shards' active version and the broker adopts the version of
 * the first answer every shard gave from the same one. */
typedef struct broker_version {
    _Atomic uint64_t current;
    _Atomic uint64_t switches;
    pthread_mutex_t lock; /* fingerprint */
    char fingerprint[17];
} broker_version_t;

void broker_version_init(broker_version_t *v, uint64_t initial);
/* current: 0 -> version (no effect once a version is set). */
void broker_version_adopt(broker_version_t *v, uint64_t version);

typedef struct broker_metrics broker_metrics_t;

typedef struct broker_admin_cfg {
    const char *listen, *token;
    ps_admin_limits limits;
    const char *topology; /* the shards, to check a switch against */
    uint32_t deadline_ms;
    size_t max_frame;
    const ps_curve_t *curve;  /* CURVE client settings for the shards (NULL: plain) */
    struct broker_keys *keys; /* API keys: one with the `admin` scope may switch too (NULL:
                                 the token only) */
    broker_version_t *version;
    broker_metrics_t *metrics;
} broker_admin_cfg;

/* Start the broker's admin port: GET /healthz, GET /metrics, POST /admin/switch?version=V
 * (every replica of every shard must hold V loaded, all with one fingerprint: the switch is
 * the commit point of a push). cfg's pointers must outlive it. */
ps_admin_t *broker_admin_start(const broker_admin_cfg *cfg, ps_err *err);
/* Stop it and free its sockets. NULL is fine. */
void broker_admin_stop(ps_admin_t *a);

/* ---- profcache.c: read-only user profiles, cached in memory ----------------------------- */

typedef struct broker_profcache broker_profcache_t;

/* A cache over the profiles directory `dir` (NULL: no profiles, every user is unknown) holding
 * at most max_entries users (known or unknown; when full it is emptied). Errors: those of
 * ps_profiles_open, PS_ENOMEM. Caller owns the result. */
broker_profcache_t *broker_profcache_new(const char *dir, size_t max_entries, ps_err *err);
void broker_profcache_free(broker_profcache_t *c);

/* Read profiles from the replicated profile service instead: get_profile over `replicas` (one
 * shard of replicas, failover), entries reused for staleness_ms; `primary` (may be NULL)
 * answers reads a replica has not caught up with (see broker_profcache_clicked). Pools are
 * borrowed. */
void broker_profcache_use_service(broker_profcache_t *c, broker_pool_t *replicas,
                                  broker_pool_t *primary, uint32_t staleness_ms);

/* The profile of `user` (borrowed, valid until the next broker_profcache_get), or NULL for an
 * unknown user or one without centroids. A storage error is logged and treated as unknown. */
const ps_profile *broker_profcache_get(broker_profcache_t *c, const char *user);
/* The same, naming the request's trace id (NULL: none) to the profile service it may read. */
const ps_profile *broker_profcache_get_traced(broker_profcache_t *c, const char *user,
                                              const char *trace);

/* A click of `user` was acknowledged at sequence `seq`: the next read of the user must come
 * from a node that has applied it. */
void broker_profcache_clicked(broker_profcache_t *c, const char *user, uint64_t seq);

/* ---- metrics.c: Prometheus counters and histograms -------------------------------------- */

enum {
    BROKER_EP_SEARCH = 0,
    BROKER_EP_CLICK,
    BROKER_EP_STICKER,
    BROKER_EP_HEALTHZ,
    BROKER_EP_READYZ,
    BROKER_EP_METRICS,
    BROKER_EP_OTHER,
    BROKER_EP_ZMQ_SEARCH,
    BROKER_EP_ZMQ_STICKER,
    BROKER_EP_ZMQ_HEALTH,
    BROKER_EP_ZMQ_OTHER,
    BROKER_EP_ZMQ_CLICK,
    BROKER_EP_MSEARCH,
    BROKER_EP_OPENAPI,
    BROKER_EP_PAGE,  /* GET / (page.c) */
    BROKER_EP_IMAGE, /* GET /images/... (page.c) */
    BROKER_NEP
};

broker_metrics_t *broker_metrics_new(uint32_t nshards);
void broker_metrics_free(broker_metrics_t *m);
void broker_metrics_http(broker_metrics_t *m, int endpoint, int status, double seconds);
/* One shard call: its duration when answered (ok = 1), its failovers, and a failure. */
void broker_metrics_shard(broker_metrics_t *m, uint32_t shard, int ok, double seconds,
                          uint32_t failovers);
/* A click was sent to the profile primary; ... and how it ended (rc 0 or a PS_E* code). */
/* A search was answered (r: the result the door sends) on the door of `endpoint`
 * (BROKER_EP_SEARCH or BROKER_EP_ZMQ_SEARCH): counts it when it is partial (r->ok <
 * r->nshards). Every door calls it once per search it answers with a result. */
struct broker_result; /* core.c's, below */
void broker_metrics_search_answered(broker_metrics_t *m, int endpoint,
                                    const struct broker_result *r);
/* A search needed a second round for n shards (its first-round depth was not enough). */
void broker_metrics_second_round(broker_metrics_t *m, uint32_t n);
void broker_metrics_click_sent(broker_metrics_t *m);
void broker_metrics_click_done(broker_metrics_t *m, int rc, int duplicate);
/* Append the exposition text to b; out of memory is b's sticky error (ps/buf.h). */
void broker_metrics_render(broker_metrics_t *m, ps_buf *b);

/* ---- clicks.c: clicks in flight to the profile primary, off the lane's critical path ----- */

typedef struct broker_clicks broker_clicks_t;

/* How one click ended: rc 0 with reply (the primary's click_reply), or a PS_E* code with err:
 * PS_EINDOUBT (sent, no answer within the deadline), PS_EUNAVAIL, or the code of the primary's
 * Error. Borrowed for the call. */
typedef void (*broker_click_done_fn)(void *arg, int rc, const ps_err *err,
                                     const Persrv__ClickReply *reply);

/* A DEALER to the profile primary (ZMQ_IMMEDIATE, ZMQ_LINGER 0, ZMQ_MAXMSGSIZE max_frame,
 * CURVE with curve unless NULL) watched by the lane's event base `base`; each click gets
 * deadline_ms; at most max_pending in flight. Errors: PS_EINVAL (endpoint, or no server key for
 * it), PS_EINTERNAL, PS_ENOMEM. Caller owns the result. */
broker_clicks_t *broker_clicks_new(struct event_base *base, const char *primary,
                                   uint32_t deadline_ms, size_t max_frame, uint32_t max_pending,
                                   const ps_curve_t *curve, ps_err *err);
/* Close the socket and free q; a click still in flight ends with PS_EINDOUBT first. Call it
 * before the base is freed. NULL is fine. */
void broker_clicks_free(broker_clicks_t *q);
/* Clicks in flight. */
uint32_t broker_clicks_pending(const broker_clicks_t *q);

/* Send click (its envelope is built here; a fresh request_id) without waiting. Returns 0:
 * done(arg, ...) runs exactly once, later, from the base's loop. Else (done never called, and
 * nothing can have been stored): PS_EUNAVAIL (no connection up, its queue full, max_pending in
 * flight), PS_EINVAL and friends (a click ps_wire_pack refuses), PS_ENOMEM. */
int broker_clicks_send(broker_clicks_t *q, const Persrv__ClickRequest *click, const char *trace,
                       broker_click_done_fn done, void *arg, ps_err *err);

/* ---- core.c: search and sticker lookup, whichever door they came in by --------------- */

/* The broker's limits that SIGHUP changes (main.c registers them with ps_daemon_reload_live):
 * shared by every lane, loaded per request. */
typedef struct broker_live {
    atomic_uint max_k;
    atomic_ullong max_query_bytes;
} broker_live;

typedef struct broker_limits {
    broker_live *live; /* max-k and max-query-bytes as they are now (NULL: the two below) */
    uint32_t R;
    uint32_t shard_depth; /* hits asked of each shard in a first round (0: ps_shard_depth) */
    uint32_t max_k;
    size_t max_query_bytes;
    uint32_t deadline_ms;
} broker_limits;

typedef struct broker_query {
    const char *q; /* not NUL-terminated necessarily: qlen bytes */
    size_t qlen;
    const char *user; /* NUL-terminated, user_len bytes; NULL or "" = none */
    size_t user_len;
    uint32_t k;              /* 0 = BROKER_DEFAULT_K */
    int explain;             /* also fetch every hit's stored fields */
    const uint64_t *exclude; /* ids never returned (distinct), nexclude <= BROKER_MAX_EXCLUDE */
    size_t nexclude;
    uint32_t offset;     /* hits skipped: the answer is ranks offset .. offset + k - 1 */
    uint32_t timeout_ms; /* the whole search's time (0: the broker's deadline and retries) */
    int allow_partial;   /* 0: a shard without an answer fails the search (503, or 504 when
                          * one timed out) instead of a partial answer */
    const char *trace;   /* the request's id for logs and the shards (NULL: none) */
} broker_query;

typedef struct broker_failure {
    uint32_t shard;
    char reason[384];
} broker_failure;

/* A search's answer; everything borrowed for the call of the callback it is handed to. */
typedef struct broker_result {
    const ps_hit *hits; /* ranked by score */
    size_t nhits;
    Persrv__GetStickerReply *const *fields; /* explain: fields[i] of hits[i] (NULL: not fetched) */
    uint32_t nshards, ok;                   /* shards asked, shards that answered */
    int timed_out, personalized;
    uint64_t version;
    const broker_failure *failures; /* the shards that did not answer */
    size_t nfailures;
} broker_result;

typedef struct broker_core broker_core_t;

double broker_now(void); /* monotonic seconds */

/* One lane's search state over its fan-out and profile cache (borrowed, like metrics).
 * Caller owns the result; NULL with err set (out of memory, analyzer). */
broker_core_t *broker_core_new(broker_fan_t *fan, broker_profcache_t *profiles,
                               broker_metrics_t *metrics, const broker_limits *lim, ps_err *err);
/* Where clicks go: the lane's click queue to the profile primary (borrowed). NULL: clicks are
 * refused (PS_EUNAVAIL). */
void broker_core_set_clicks(broker_core_t *c, broker_clicks_t *clicks);
/* The shared version state (borrowed; NULL: ask the shards for their active version). */
void broker_core_set_version(broker_core_t *c, broker_version_t *v);
/* Free c. Its searches still in flight must have ended (free the fan first). NULL is fine. */
void broker_core_free(broker_core_t *c);
broker_fan_t *broker_core_fan(broker_core_t *c);
uint32_t broker_core_nshards(const broker_core_t *c);

/* How a search ended: rc 0 with res, or a PS_E* code with err (res then holds the failures
 * when rc is PS_EUNAVAIL, else NULL). Everything passed is borrowed for the call. */
typedef void (*broker_search_fn)(void *arg, int rc, const ps_err *err, const broker_result *res);

/* Search the cluster without waiting: check q, analyze it, send one SearchRequest to every
 * shard and return; done(arg, ...) is called exactly once, later, from the lane's loop (never
 * from inside this call), when every shard has answered or given up (and, with explain, the
 * hits' stored fields have been fetched: one round, every hit's GetSticker at once). q's
 * strings are borrowed for this call only. Errors returned here (done never called): PS_EINVAL
 * (k over max-k, a bad user name), PS_EQUERY (empty query, no searchable token), PS_ETOOBIG
 * (q over max-query-bytes, too many tokens), PS_EUTF8, PS_EUNAVAIL (the lane is stopping),
 * PS_ENOMEM. Errors given to done: PS_EUNAVAIL (no shard answered), PS_ENOMEM. A shard that
 * does not answer makes the result partial (res->ok < res->nshards). */
int broker_core_search(broker_core_t *c, const broker_query *q, broker_search_fn done, void *arg,
                       ps_err *err);

/* Many searches (POST /v1/msearch) in one round: every shard gets one request holding all of
 * them (each at depth R: no second round) and answers each in its place. qs[0..n) (n <=
 * BROKER_MAX_BATCH) are checked as broker_core_search checks one: rcs[i] and errs[i] are search
 * i's error at once (done is never called for it), else 0 and done(args[i], ...) is called for
 * it exactly once, later, from the lane's loop, as for broker_core_search. trace: the batch's
 * id for the shards' logs (each search carries its own qs[i].trace). Returns 0 with *started
 * the number of searches started, or a PS_E* code for the whole batch (none started: PS_ENOMEM,
 * PS_EUNAVAIL when stopping). */
int broker_core_msearch(broker_core_t *c, const broker_query *qs, size_t n, broker_search_fn done,
                        void *const *args, int *rcs, ps_err *errs, const char *trace,
                        size_t *started, ps_err *err);

/* How a sticker lookup ended: rc 0 with reply (an envelope whose sticker_reply is the answer;
 * the callee takes it: ps_wire_free), or PS_ENOTFOUND / PS_EUNAVAIL (no replica of its shard
 * answered) / PS_ENOMEM with err. */
typedef void (*broker_sticker_fn)(void *arg, int rc, const ps_err *err, Persrv__Envelope *reply);

/* The stored fields of sticker `id` from the shard holding it, without waiting: returns 0 and
 * done is called once, later, from the loop; or a PS_E* code (PS_EUNAVAIL: stopping,
 * PS_ENOMEM) and done is never called. */
int broker_core_sticker(broker_core_t *c, uint64_t id, broker_sticker_fn done, void *arg,
                        ps_err *err);

/* A click as a door received it; strings borrowed for the call. */
typedef struct broker_click {
    const char *user; /* 1..BROKER_MAX_USER_BYTES of UTF-8, no control characters */
    uint64_t sticker_id;
    const char *query;    /* NULL = "" */
    const char *click_id; /* NULL or "": the broker derives one (ps_wire_check_click_id else) */
    const char *trace;    /* the request's trace id (NULL: none) */
} broker_click;

/* How a click ended (called once, from the lane's loop): rc 0 with the primary's reply (stored,
 * or reply->duplicate), or a PS_E* code with err: PS_EINDOUBT (sent, no answer in
 * click-deadline-ms: it may have been stored), PS_ENOTFOUND (no such sticker: not sent),
 * PS_EUNAVAIL (not sent), the code of the primary's Error. click_id: the id the click went
 * under (the client's or the derived one). Everything passed is borrowed for the call. */
typedef void (*broker_click_fn)(void *arg, int rc, const ps_err *err,
                                const Persrv__ClickReply *reply, const char *click_id);

/* Start a click: check it, fetch the sticker's embedding from the shard holding it (which
 * proves it exists; within the search deadline, without blocking the lane), then send it to
 * the profile primary with its click id. Returns 0: done(arg, ...) will be called exactly
 * once, later, from the lane's loop (never from inside this call); the sticker not found or
 * its shard not answering come that way too (PS_ENOTFOUND, PS_EUNAVAIL: nothing sent). Else a
 * PS_E* code (err set), nothing was sent and done is never called: PS_EINVAL (user, query,
 * click_id), PS_ETOOBIG (user over the cap, query over max-query-bytes), PS_EUTF8, PS_EUNAVAIL
 * (no profile service configured, stopping), PS_ENOMEM. */
int broker_core_click(broker_core_t *c, const broker_click *k, broker_click_fn done, void *arg,
                      ps_err *err);

/* max-k as it is now (the live value after a SIGHUP). */
uint32_t broker_core_max_k(const broker_core_t *c);

/* Shards with a replica up; the first `cap` of the others into down[0..*ndown). */
uint32_t broker_core_shards_up(broker_core_t *c, uint32_t *down, uint32_t cap, uint32_t *ndown);

/* ---- parse.c: outside input parsed without a socket (HTTP requests, settings) ----------- */

#define BROKER_STICKERS_PREFIX "/v1/stickers/"
#define BROKER_IMAGES_PREFIX   "/images/"

/* A decimal integer in [lo, hi] from the len bytes at s: digits only (no sign, no space), at
 * most 20. Returns 0 with *out set, or -1. */
int broker_parse_uint(const char *s, size_t len, uint64_t lo, uint64_t hi, uint64_t *out);

/* The endpoint of an HTTP request path (BROKER_EP_SEARCH ... BROKER_EP_METRICS, BROKER_EP_PAGE
 * for "/", or BROKER_EP_OTHER); any path under BROKER_STICKERS_PREFIX is BROKER_EP_STICKER, any
 * under BROKER_IMAGES_PREFIX BROKER_EP_IMAGE. */
int broker_http_endpoint(const char *path);

enum {
    BROKER_P_Q,
    BROKER_P_USER,
    BROKER_P_K,
    BROKER_P_EXPLAIN,
    BROKER_P_EXCLUDE,
    BROKER_P_OFFSET,
    BROKER_P_TIMEOUT,
    BROKER_P_ALLOW_PARTIAL,
    BROKER_NPARAMS
};
/* Their names, in BROKER_P_* order: the same in a query string and in a JSON body. */
extern const char *const broker_search_param_names[BROKER_NPARAMS];

#define BROKER_MAX_EXCLUDE 100   /* ids a search may exclude */
#define BROKER_MAX_TIMEOUT 60000 /* ms: the largest per-request timeout */
#define BROKER_MAX_BATCH   32    /* searches in one POST /v1/msearch */

/* A search's parameters as text: the decoded values (malloc'd, NUL-terminated, len bytes; NULL
 * when absent), and the excluded ids once parsed. */
typedef struct broker_search_params {
    char *v[BROKER_NPARAMS];
    size_t len[BROKER_NPARAMS];
    uint64_t exclude[BROKER_MAX_EXCLUDE];
} broker_search_params;

/* Parse the raw query string of GET /v1/search (still percent-encoded, '+' a space; NULL: none)
 * into q (broker_search_check). Values may hold any bytes, NUL included; a parameter given
 * twice or one that is not a search parameter is an error naming it. OUT p: the decoded
 * values, which q's strings point into (free with broker_search_params_free, also after an
 * error). Errors: PS_EINVAL naming the parameter, PS_ENOMEM. */
int broker_search_parse(const char *query, uint32_t max_k, broker_search_params *p, broker_query *q,
                        ps_err *err);

/* The same from a JSON object (POST /v1/search, an element of /v1/msearch's "searches"): "q"
 * and "user" strings, "k" and "offset" integers, "explain" and "allow_partial" booleans,
 * "exclude" an array of ids (decimal strings or integers), "timeout" an integer (ms) or a
 * string as in a query string ("150ms", "2s"). `at` names the object in errors ("body",
 * "searches[3]"). Errors: PS_EINVAL naming the member (unknown member, wrong type, bad value),
 * PS_ETOOBIG (exclude over BROKER_MAX_EXCLUDE), PS_ENOMEM. */
int broker_search_parse_json(const struct json_t *obj, const char *at, uint32_t max_k,
                             broker_search_params *p, broker_query *q, ps_err *err);

/* Check p's values into q: k 1..max_k (default BROKER_DEFAULT_K); explain and allow_partial
 * 0, 1, true or false (allow_partial default true); exclude comma-separated decimal ids, at
 * most BROKER_MAX_EXCLUDE, repeats dropped; offset >= 0 (core.c checks offset + k against the
 * recall depth); timeout 1..BROKER_MAX_TIMEOUT ms, written as milliseconds with an optional
 * "ms" or as seconds with "s". */
int broker_search_check(broker_search_params *p, uint32_t max_k, broker_query *q, ps_err *err);
void broker_search_params_free(broker_search_params *p);

/* The body of POST /v1/click: {"user": "...", "sticker_id": "<decimal>" or a JSON integer >= 0,
 * "query": "...", "click_id": "..."} (query and click_id optional; click_id may be null). */
typedef struct broker_click_body {
    const char *user; /* NUL-terminated, no NUL inside */
    uint64_t sticker_id;
    const char *query;    /* NUL-terminated; "" when absent */
    const char *click_id; /* non-empty, no NUL inside; NULL when absent or null (the broker
                             derives one). Its bytes are checked by broker_core_click
                             (ps_wire_check_click_id), not here */
    struct json_t *doc;   /* owns user, query and click_id */
} broker_click_body;

/* The n bytes of a request body as a JSON object (the caller owns it), or NULL with err:
 * PS_EUTF8 (not UTF-8), PS_EPARSE (not JSON, a repeated key; the message ends with `shape`,
 * what the body should be), PS_EINVAL (JSON but not an object). */
struct json_t *broker_json_object(const char *body, size_t n, const char *shape, ps_err *err);

/* Parse the n bytes of a click body into c (free with broker_click_body_free, also after an
 * error). Errors: PS_EUTF8 (not UTF-8), PS_EPARSE (not JSON, or a repeated key), PS_EINVAL
 * naming the field, PS_ENOMEM. */
int broker_click_parse(const char *body, size_t n, broker_click_body *c, ps_err *err);
void broker_click_body_free(broker_click_body *c);

/* The key of an Authorization header value "Bearer KEY" (scheme case-insensitive, spaces
 * before the key and spaces or tabs after it dropped), borrowed from header. OUT *n: its
 * length. NULL with *n 0 when header is NULL or of another scheme. */
const char *broker_bearer_key(const char *header, size_t *n);

/* A topology "ep0a|ep0b,ep1,ep2": ',' between shards in shard order, '|' between the replicas
 * of one shard. */
typedef struct broker_topology {
    uint32_t nshards;
    uint32_t *first; /* nshards + 1: shard s's replicas are endpoint[first[s] .. first[s+1]) */
    char **endpoint; /* NUL-terminated, 1..BROKER_MAX_ENDPOINT - 1 bytes, pointing into buf */
    size_t nendpoints;
    char *buf;
} broker_topology;

/* Parse a topology into t (free with broker_topology_free; nothing to free after an error).
 * Errors: PS_EINVAL naming the shard / replica at fault (more than BROKER_MAX_SHARDS shards or
 * BROKER_MAX_REPLICAS replicas of a shard, an empty endpoint, one too long), PS_ENOMEM. */
int broker_topology_parse(const char *topology, broker_topology *t, ps_err *err);
void broker_topology_free(broker_topology *t);

/* Split a listen address "host:port" ("[v6]:port" too) into host (cap bytes) and the port.
 * Returns 0, or -1 when it is not one. */
int broker_parse_addr(const char *s, char *host, size_t cap, uint16_t *port);

/* ---- http.c: the HTTP/JSON endpoints ---------------------------------------------------- */

typedef struct broker_http broker_http_t;
struct evhttp;
struct evhttp_request;

/* ---- keys.c: API keys of the public HTTP door ------------------------------------------- */

typedef struct broker_keys broker_keys_t;
enum { BROKER_SCOPE_SEARCH = 1, BROKER_SCOPE_CLICK = 2, BROKER_SCOPE_ADMIN = 4 };
typedef enum {
    BROKER_AUTH_OK,
    BROKER_AUTH_MISSING, /* no key (401) */
    BROKER_AUTH_UNKNOWN, /* not a key of the file (401) */
    BROKER_AUTH_SCOPE,   /* the key lacks the scope (403) */
    BROKER_AUTH_RATE     /* over the key's rate (429, Retry-After) */
} broker_auth;

/* Load the key file (format in keys.c). Errors (NULL returned): PS_EINVAL naming the file and
 * line (bad field, repeated name or key, no key), PS_ENOMEM. The secrets are never logged. */
broker_keys_t *broker_keys_load(const char *path, ps_err *err);
void broker_keys_free(broker_keys_t *ks); /* wipes the secrets; NULL is fine */
size_t broker_keys_count(const broker_keys_t *ks);
/* Check the key (n bytes at key; NULL or n 0: none) for scope at time now (seconds), taking
 * one request from the key's bucket. OUT *name: the key's name (for logs; NULL when no key
 * matched), *retry_after_s: with BROKER_AUTH_RATE, when a request will be let through. Thread
 * safe. */
broker_auth broker_keys_check(broker_keys_t *ks, const char *key, size_t n, unsigned scope,
                              double now, const char **name, int *retry_after_s);

/* Attach the endpoints to `http` (core, metrics and keys borrowed; they must outlive the
 * result; keys NULL: open, no key asked). Caller owns the result. NULL when out of memory. */
broker_http_t *broker_http_new(struct evhttp *http, broker_core_t *core, broker_metrics_t *metrics,
                               broker_keys_t *keys, int access_log, ps_err *err);
void broker_http_free(broker_http_t *h);
/* What /images/ serves: the files under root (NULL: nothing, 404) of at most max_bytes. */
typedef struct broker_images {
    const char *root;
    size_t max_bytes;
} broker_images;

/* Serve /images/ as img says (copied; img->root borrowed, must outlive h). */
void broker_http_set_images(broker_http_t *h, const broker_images *img);

/* ---- page.c: the search page and the sticker pictures ----------------------------------- */

/* Answer GET/HEAD of ep BROKER_EP_PAGE (the page) or BROKER_EP_IMAGE (`path` as img says).
 * Returns 0 once answered, or a PS_E* code with err set and nothing sent (PS_ENOTFOUND,
 * PS_EFORBIDDEN for a symbolic link, PS_ETOOBIG over img->max_bytes, PS_ENOMEM). */
int broker_page_serve(struct evhttp_request *req, int ep, const char *path,
                      const broker_images *img, ps_err *err);
/* The URL a page loads a sticker's picture from, appended to b: an http(s) image reference as
 * it is, a path as "/images/<path>" (percent-encoded); nothing for no image. */
void broker_page_image_url(ps_buf *b, const char *image);

/* broker/www/openapi.json, embedded at build time (CMakeLists.txt): NUL-terminated. */
extern const char broker_openapi_json[];
extern const size_t broker_openapi_json_len;

/* ---- front.c: the ZeroMQ front door's requests ------------------------------------------ */

/* A deferred front-door answer: reply (malloc'd, *reply_len bytes) to the request `ticket`
 * stands for; the callee takes reply and ticket. */
typedef void (*broker_front_later_fn)(void *ticket, uint8_t *reply, size_t reply_len);

/* Answer one client frame (an Envelope with query, get_sticker, health or click) with one
 * reply frame: query_reply, sticker_reply, health_reply, click_reply, or an Error envelope for
 * anything that fails (request_id 0 when the frame cannot be decoded). OUT *reply: malloc'd
 * (caller frees). A search, a sticker lookup and a click sent on (to the shards, the profile
 * primary) are answered later: *reply is then NULL and later(ticket, ...) is called once from
 * the lane's loop with the answer (never from inside this call); a health request and anything
 * refused before it was sent are answered at once and `later` is not called (later NULL:
 * searches, lookups and clicks are refused).
 * Returns 0, or PS_ENOMEM when not even an Error could be built. */
int broker_front_handle(broker_core_t *core, broker_metrics_t *metrics, broker_keys_t *keys,
                        size_t max_frame, const void *req, size_t len, uint8_t **reply,
                        size_t *reply_len, broker_front_later_fn later, void *ticket);

/* ---- lane.c: one thread serving HTTP connections and front-door requests ---------------- */

typedef struct broker_lane_cfg {
    int id;
    const char *topology;
    uint32_t deadline_ms, retries;
    size_t max_frame;        /* shard reply frames and front-door request frames */
    const ps_curve_t *curve; /* CURVE client settings (NULL: plain) */
    const char *profiles;    /* NULL: none */
    size_t profile_cache;
    broker_limits lim;
    uint32_t health_interval_ms;
    uint32_t down_after;    /* probes missed in a row that mark a replica down */
    uint32_t slow_start_ms; /* a replica back from down ramps to full weight over this */
    int probe;              /* this lane runs the health probes (and reports readiness) */
    broker_upmap_t *upmap;  /* shared by every lane */
    /* the profile service (NULL topologies: profiles come from `profiles`, no clicks) */
    const char *profile_replicas; /* "ep|ep|...": the nodes profiles are read from */
    const char *profile_primary;  /* where clicks go */
    uint32_t profile_staleness_ms, click_deadline_ms;
    uint32_t max_clicks; /* clicks in flight to the primary per lane */
    broker_upmap_t *replicas_upmap, *primary_upmap;
    int http_fd;          /* listening socket to accept on (the lane dups it), -1: none */
    broker_images images; /* what /images/ serves (root NULL: nothing) */
    size_t max_body, max_headers;
    int http_timeout_s;
    uint32_t max_connections;    /* the HTTP door's, all lanes together (0: no cap) */
    uint32_t request_timeout_ms; /* an HTTP request's first to last byte (0: no limit) */
    void *zctx;                  /* for the front door's inproc socket (NULL: no front door) */
    const char *backend;         /* inproc endpoint of the front door */
    int stop_fd;                 /* readable: stop (main writes it once the front door drained) */
    uint32_t drain_ms;
    broker_metrics_t *metrics;
    broker_keys_t *keys;         /* API keys of the HTTP door, shared; NULL: open */
    int access_log;              /* a log line per HTTP request at info (else at debug) */
    broker_version_t *version;   /* shared by every lane */
    void (*on_ready)(void *arg); /* called (from the lane) the first time every shard is up */
    void *ready_arg;
} broker_lane_cfg;

typedef struct broker_lane broker_lane_t;

/* Build the lane's state (fan-out, profile cache, core, HTTP handlers; the first health probe
 * round, waiting at most deadline-ms) in the calling thread, then start its thread. cfg's
 * strings and the fds must outlive the lane. NULL with err set when it cannot start. */
broker_lane_t *broker_lane_start(const broker_lane_cfg *cfg, ps_err *err);
/* Wait for the lane's thread to leave (after stop_fd became readable) and free it. */
void broker_lane_join(broker_lane_t *l);

#endif
