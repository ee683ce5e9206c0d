/*
 * persrv.h — libpersrv, the C client of a PerSRV cluster (DESIGN §3.1): search, fetch a sticker,
 * record a click and check health through the broker's ZeroMQ front door.
 *
 *     persrv_t *c = persrv_connect("tcp://broker:7001", NULL);
 *     if (!c) out of memory;
 *     if (persrv_errcode(c)) { fprintf(stderr, "%s\n", persrv_errstr(c)); persrv_close(c); }
 *     persrv_query q = {.text = "so tired", .user = "u42", .k = 10};
 *     persrv_result *r;
 *     if (persrv_search(c, &q, &r) == PERSRV_OK) {
 *         for (size_t i = 0; i < r->nhits; i++) use(r->hits[i].id, r->hits[i].score);
 *         persrv_result_free(r);
 *     } else if (persrv_retriable(persrv_errcode(c))) { try again later }
 *     persrv_close(c);
 *
 * Calls. Every call returns PERSRV_OK (0) or a negative PERSRV_E* code, and records the code
 * and a message naming what failed in the context (persrv_errcode, persrv_errstr; cleared by
 * the next call). A call waits at most timeout_ms for each attempt and makes 1 + retries
 * attempts, so it returns within timeout_ms × (retries + 1) (plus the time to encode and
 * decode). It retries only when an attempt timed out; an answer of the broker — an error
 * included — is final, except that persrv_click also retries PERSRV_EINDOUBT (see there).
 *
 * Wire (Lazy Pirate): one DEALER socket per context, ZMQ_LINGER 0, ZMQ_MAXMSGSIZE max_frame.
 * Each attempt sends one frame (a persrv.Envelope, proto/persrv.proto) with a fresh request_id
 * and deadline_ms = the attempt's timeout; a reply with another request_id is dropped. When an
 * attempt times out, the socket is closed (its queued request and any late reply die with it)
 * and a new one connects before the next attempt, so a late reply is never taken for the
 * answer to a later request. A reply larger than max_frame makes ZeroMQ drop the connection:
 * the call then times out.
 *
 * Several brokers: persrv_connect takes a comma-separated list, "tcp://a:7001,tcp://b:7001".
 * A context talks to one broker at a time, starting with the first. An attempt that times out
 * moves to the next broker of the list (round robin) for the next attempt, and a broker that
 * refuses the connection is left at once for the next one without using up an attempt; later
 * calls start on the broker that answered last. So with N brokers, retries >= N - 1 lets a
 * call try every one of them that does not refuse.
 *
 * Refused connections: when nobody listens at a broker's address (the TCP connection is
 * refused or the host is unreachable), the call does not wait for its timeout: ZeroMQ reports
 * the failed connection attempt, and the call fails at once with PERSRV_EREFUSED ("tcp://...:
 * connection refused") when every broker of the list refused. A broker that accepts the
 * connection but does not answer still costs the timeout (PERSRV_ETIMEDOUT).
 *
 * Threads: a persrv_t belongs to one thread at a time — use one context per thread (or hand a
 * context between threads with your own locking). Each context owns its own ZeroMQ context
 * (one I/O thread); contexts share nothing, so different threads may use different contexts
 * freely. Results and stickers are plain memory, usable from any thread.
 *
 * Connecting is asynchronous (ZeroMQ): persrv_connect fails only for an endpoint ZeroMQ cannot
 * parse or a transport it does not support (for the first of a list; a later one that does not
 * parse is skipped when a failover reaches it); a broker nobody listens at shows up as
 * PERSRV_EREFUSED from the call, one that does not answer as PERSRV_ETIMEDOUT.
 *
 * This header uses only <stddef.h> and <stdint.h> types and compiles as C and C++.
 */
#ifndef PERSRV_H
#define PERSRV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*      name        value  stable name          retriable  message */
#define PERSRV_ERRNO_MAP(X)                                                                        \
    X(EINVAL, -1, "invalid_argument", 0, "invalid argument")                                       \
    X(ENOTFOUND, -2, "not_found", 0, "not found")                                                  \
    X(ETOOBIG, -3, "too_large", 0, "request exceeds a size cap")                                   \
    X(ETIMEDOUT, -4, "timed_out", 1, "timed out")                                                  \
    X(EUNAVAIL, -5, "unavailable", 1, "service unavailable")                                       \
    X(EPROTO, -6, "protocol_error", 0, "malformed or unexpected reply")                            \
    X(ENOMEM, -7, "out_of_memory", 0, "out of memory")                                             \
    X(ECONNECT, -8, "connect_error", 0, "cannot connect")                                          \
    X(ESERVER, -9, "server_error", 0, "the broker failed")                                         \
    X(ECANCELED, -10, "canceled", 0, "request canceled")                                           \
    X(EUNAUTH, -11, "unauthorized", 0, "the broker wants a valid API key")                         \
    X(EFORBIDDEN, -12, "forbidden", 0, "the API key lacks the scope")                              \
    X(ERATE, -13, "rate_limited", 1, "the API key is over its rate")                               \
    X(EINDOUBT, -14, "outcome_unknown", 1, "sent, but whether it was stored is unknown")           \
    X(EREFUSED, -15, "connection_refused", 1, "connection refused: no broker listening")

enum {
    PERSRV_OK = 0,
#define PERSRV__ERR_ENUM(name, val, str, retry, msg) PERSRV_##name = (val),
    PERSRV_ERRNO_MAP(PERSRV__ERR_ENUM)
#undef PERSRV__ERR_ENUM
};

/* Static message for a code ("unknown error" outside the table). */
const char *persrv_strerror(int code);
/* Stable name of a code ("timed_out"; "ok" for 0, "unknown" outside the table). */
const char *persrv_errname(int code);
/* 1 if the same call may succeed when repeated later (PERSRV_ETIMEDOUT, PERSRV_EUNAVAIL,
 * PERSRV_ERATE, PERSRV_EREFUSED, PERSRV_EINDOUBT: a click only with the same click id), 0
 * otherwise (bad input, not found, too big, protocol and server errors, canceled). */
int persrv_retriable(int code);

/* ---- context ------------------------------------------------------------------------------ */

typedef struct persrv persrv_t;

typedef struct persrv_options {
    uint32_t timeout_ms; /* per attempt; 0 = PERSRV_DEFAULT_TIMEOUT_MS */
    uint32_t retries;    /* attempts after the first one that timed out (default 1) */
    size_t max_frame;    /* largest reply frame accepted, bytes; 0 = PERSRV_DEFAULT_MAX_FRAME */
    const char *api_key; /* sent with every request when the broker runs with --api-keys
                            (copied; NULL = none; at most 256 printable bytes) */
    /* CURVE, when the broker's front door runs it (curve-key): the broker's public key and
     * this client's key pair (`builder keys`; its public key on the broker's curve-allow
     * list), each 40 Z85 characters, copied. All NULL = plain; one without the others, or a
     * malformed key, makes persrv_connect fail with PERSRV_EINVAL. */
    const char *curve_server_key;
    const char *curve_public_key;
    const char *curve_secret_key;
} persrv_options;

#define PERSRV_DEFAULT_TIMEOUT_MS 1000
#define PERSRV_DEFAULT_RETRIES    1
#define PERSRV_DEFAULT_MAX_FRAME  (4u << 20)

/* Fill *opt with the defaults (timeout 1000 ms, 1 retry, 4 MiB frames, no API key). */
void persrv_options_init(persrv_options *opt);

/* Connect to the broker's front door at endpoint ("tcp://host:port"; any ZeroMQ endpoint), or
 * to the first of a comma-separated list of brokers with failover to the others
 * ("tcp://a:7001,tcp://b:7001"; at most 64; see "Several brokers" above). opt NULL = defaults
 * (a curve_server_key is then every broker's key). Returns NULL only when out of memory;
 * otherwise a context the caller owns (persrv_close) that carries the outcome: persrv_errcode
 * is PERSRV_EINVAL (NULL endpoint, an empty element in the list) or PERSRV_ECONNECT (an
 * endpoint ZeroMQ rejects) when connecting failed. Calls on a context whose connect failed try
 * to connect again and fail the same way. */
persrv_t *persrv_connect(const char *endpoint, const persrv_options *opt);

/* persrv_connect with opt (NULL = defaults) completed from the environment, for tools and
 * services configured the way the daemons are: PERSRV_API_KEY (when opt has no api_key),
 * PERSRV_CURVE_KEY (this client's key pair file, `builder keys`) and PERSRV_CURVE_SERVERS
 * (a known-servers file, "<endpoint> <Z85>" per line, looked up for every endpoint of the
 * list). A file that does not read, or an endpoint it has no key for, is PERSRV_EINVAL on the
 * context. */
persrv_t *persrv_connect_env(const char *endpoint, const persrv_options *opt);

/* Close the socket and free ctx (NULL is fine). Results and stickers stay valid. */
void persrv_close(persrv_t *ctx);

/* The outcome of the last call on ctx (or of persrv_connect): PERSRV_OK or a PERSRV_E* code. */
int persrv_errcode(const persrv_t *ctx);
/* A message naming what failed ("" after success). Valid until the next call on ctx. */
const char *persrv_errstr(const persrv_t *ctx);
/* The stable name of the last error: the broker's own code when the broker answered with an
 * error ("invalid_query", "invalid_utf8" ...), else persrv_errname(persrv_errcode(ctx)). */
const char *persrv_errname_last(const persrv_t *ctx);

/* Set the per-attempt timeout of later calls (0 = default). PERSRV_EINVAL for a NULL ctx. */
int persrv_set_timeout(persrv_t *ctx, uint32_t timeout_ms);

/* ---- search ------------------------------------------------------------------------------- */

typedef struct persrv_query {
    const char *text; /* the message text, UTF-8 (the broker rejects anything else) */
    size_t len;       /* bytes of text; 0 = strlen(text). A NUL byte cannot be sent */
    const char *user; /* NULL or "" = no personalization */
    uint32_t k;       /* results wanted; 0 = the broker's default (10) */
    int explain;      /* 1: also fetch the stored fields of every hit */
    /* Added in 0.2 (zero = the old behaviour; the struct may grow again before 1.0, so
     * initialize it with designated initializers or memset and rebuild against the header): */
    const uint64_t *exclude; /* ids never returned (chat: the stickers already sent), at most
                                100; the broker asks the shards for that many more */
    size_t nexclude;
    uint32_t offset;        /* ranks skipped: offset + k must stay within the recall depth (100) */
    uint32_t timeout_ms;    /* the broker's whole time for this search, 1..60000; 0 = its
                               deadline and retries */
    int no_partial;         /* 1: a shard without an answer fails the search (PERSRV_EUNAVAIL or
                               PERSRV_ETIMEDOUT) instead of a partial result */
    const char *request_id; /* NULL or 1..128 printable ASCII bytes: the broker and the shards
                               name it in their log lines about this search */
} persrv_query;

/* A sticker's stored fields. Strings are never NULL ("" when empty). */
typedef struct persrv_sticker {
    uint64_t id;
    const char *ocr, *queries, *keywords, *desc, *emotion;
    double utility;    /* the sticker's stored utility */
    const char *image; /* its picture (0.2): a URL, or a path under the broker's image root
                          (served at /images/<path>); "" when it has none */
} persrv_sticker;

typedef struct persrv_hit {
    uint64_t id;
    double score, recall, relevance, utility, preference;
    int centroid; /* the user centroid that gave the preference, -1 if none */
    /* explain: the stored fields; NULL without explain, or when the broker could not fetch
     * them for this hit */
    const persrv_sticker *fields;
} persrv_hit;

typedef struct persrv_shard_failure {
    uint32_t shard;
    const char *reason;
} persrv_shard_failure;

typedef struct persrv_result {
    const persrv_hit *hits; /* best first */
    size_t nhits;
    int partial;      /* some shard did not answer (see failures): hits may miss stickers */
    int timed_out;    /* a failed shard missed its deadline */
    int personalized; /* the user's style profile was used */
    uint64_t version; /* the snapshot version that answered */
    uint32_t shards_total;
    const persrv_shard_failure *failures;
    size_t nfailures;
    uint32_t took_us; /* time spent in the broker */
} persrv_result;

/* Search. OUT *out: the result, owned by the caller (persrv_result_free); every pointer in it
 * stays valid until then. NULL on error. A partial answer is PERSRV_OK with partial = 1.
 * Errors: PERSRV_EINVAL (NULL argument, a NUL byte in text, or the broker found the query
 * invalid: empty, no searchable token, not UTF-8, k out of range), PERSRV_ETOOBIG,
 * PERSRV_ETIMEDOUT, PERSRV_EUNAVAIL (all shards down), PERSRV_EREFUSED (no broker listening),
 * PERSRV_EPROTO, PERSRV_ESERVER, PERSRV_ENOMEM, PERSRV_ECONNECT. */
int persrv_search(persrv_t *ctx, const persrv_query *q, persrv_result **out);

/* Free a result (NULL is fine). */
void persrv_result_free(persrv_result *r);

/* ---- stickers and health ------------------------------------------------------------------ */

/* Fetch sticker id's stored fields. OUT *out: owned by the caller (persrv_sticker_free), NULL
 * on error. Errors: PERSRV_ENOTFOUND for an id the cluster does not hold, and those of
 * persrv_search. */
int persrv_get_sticker(persrv_t *ctx, uint64_t id, persrv_sticker **out);

/* Free a sticker from persrv_get_sticker (NULL is fine). */
void persrv_sticker_free(persrv_sticker *s);

typedef struct persrv_health_info {
    uint32_t nshards;   /* shards in the broker's topology */
    uint32_t shards_up; /* shards with a replica answering */
    int ready;          /* 1 when every shard is up */
} persrv_health_info;

/* The broker's health. OUT *out: filled on success. Errors: those of persrv_search. */
int persrv_health(persrv_t *ctx, persrv_health_info *out);

/* ---- clicks -------------------------------------------------------------------------------- */

#define PERSRV_MAX_CLICK_ID 64 /* bytes of a click id */

typedef struct persrv_click_info {
    char click_id[PERSRV_MAX_CLICK_ID + 1]; /* the id the click went under */
    uint64_t seq;       /* the profile primary's sequence number once the click was durable */
    uint32_t history;   /* clicks in the user's bounded history now */
    uint32_t centroids; /* the user's style centroids now */
    int duplicate;      /* 1: the click id had been stored (by an earlier attempt or call): this
                           call stored nothing */
    uint32_t attempts;  /* requests sent (1 + the retries this call made) */
} persrv_click_info;

/* Record that `user` (1..256 bytes of UTF-8) picked sticker_id for `query` (the message it
 * answered; NULL = ""): the write path of a chat service. The broker fetches the sticker's
 * embedding, the profile primary appends the click and updates the user's style profile, and
 * the call returns once that is durable.
 *
 * Idempotent: every click goes under a click id — click_id (1..PERSRV_MAX_CLICK_ID printable
 * ASCII bytes without spaces, e.g. the chat message's id), or when NULL a random one (128 bits,
 * 32 hex digits) made here. The profile service stores an id once per user (within the user's
 * last --click-ids clicks, 1000 by default): a click sent again under the same id is answered
 * out->duplicate = 1 and stores nothing. So this call retries with the same id, up to 1 +
 * retries requests in all, whenever the outcome is unknown: an attempt timed out, or the broker
 * answered outcome_unknown (it sent the click to the primary and got no answer within its
 * click-deadline-ms). Give clicks a timeout above the broker's click-deadline-ms (2000 ms by
 * default; persrv_set_timeout) so its answer, not the timeout, ends an attempt.
 *
 * OUT *out: out->click_id is set as soon as the arguments check out, whatever the outcome;
 * the rest on success. Errors: PERSRV_EINDOUBT (no attempt got a definite answer: the click
 * may or may not be stored — call persrv_click again later with out->click_id, never without
 * it), PERSRV_EINVAL (NULL ctx/user/out, a bad click id, or the broker found the click
 * invalid: empty user, not UTF-8, control characters; or the click id names a click on
 * another sticker: persrv_errname_last "conflict"), PERSRV_ENOTFOUND (no such sticker),
 * PERSRV_ETOOBIG, PERSRV_EUNAVAIL (not sent to the primary: not stored; retriable),
 * PERSRV_EREFUSED (no broker listening: not sent, not stored; retriable),
 * PERSRV_EUNAUTH, PERSRV_EFORBIDDEN (the key lacks the scope click), PERSRV_ERATE,
 * PERSRV_EPROTO, PERSRV_ESERVER, PERSRV_ENOMEM, PERSRV_ECONNECT. */
int persrv_click(persrv_t *ctx, const char *user, uint64_t sticker_id, const char *query,
                 const char *click_id, persrv_click_info *out);

#ifdef __cplusplus
}
#endif

#endif
