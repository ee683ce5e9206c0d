/*
 * wire.h — the cluster's wire layer (DESIGN §2, §3.2, §6): broker ↔ shards and client ↔ the
 * broker's front door (libpersrv). One ZeroMQ frame holds one
 * protobuf-encoded persrv.Envelope (proto/persrv.proto, protobuf-c code generated into the
 * build tree). Peers build frames with the ps_wire_encode_* helpers and read them with
 * ps_wire_decode, which checks everything a peer could send wrong before the caller sees it.
 *
 * Caps (a frame is a peer's input: every size in it is bounded):
 *   frame                          <= max_frame (PS_WIRE_MAX_FRAME unless configured)
 *   search.tokens                  1..PS_WIRE_MAX_TOKENS, each 1..PS_WIRE_MAX_TOKEN_LEN bytes,
 *                                  valid UTF-8, no NUL, distinct
 *   search.field_weights           exactly 0 (shard defaults) or PS_NFIELDS, finite, >= 0
 *   search.recall_depth            1..PS_SEARCH_MAX_R
 *   search.alpha                   finite, >= 0
 *   search.centroids               <= PS_WIRE_MAX_CENTROIDS; every vector the same length,
 *                                  1..PS_WIRE_MAX_DIM, finite; radius finite, >= 0
 *   search_reply.hits              <= PS_WIRE_MAX_HITS; scores finite; centroid -1..KMAX-1
 *   search_reply.columns           not with hits; every column as long as id (<=
 *                                  PS_WIRE_MAX_HITS); each hit as in hits
 *   query.q                        <= PS_WIRE_MAX_STRING bytes, valid UTF-8, no NUL (empty is
 *                                  the broker's to reject, as are k and its own size caps)
 *   query.user                     <= PS_WIRE_MAX_USER bytes, valid UTF-8, no NUL
 *   query.exclude                  <= PS_WIRE_MAX_EXCLUDE ids
 *   trace_id                       <= PS_WIRE_MAX_TRACE bytes, 0x21..0x7e (ps_wire_check_trace)
 *   batch.requests, batch_reply.replies
 *                                  <= PS_WIRE_MAX_BATCH elements, each an encoded envelope that
 *                                  its reader decodes (and checks) with ps_wire_decode
 *   query_reply.hits               as search_reply.hits
 *   query_reply.fields             exactly 0 or n_hits; fields[i].id == hits[i].id; each as
 *                                  a sticker_reply
 *   query_reply.failures           <= PS_WIRE_MAX_SHARDS; reason as any other string
 *   click.user                     1..PS_WIRE_MAX_USER bytes, valid UTF-8, no NUL
 *   click.embedding                <= PS_WIRE_MAX_DIM floats, finite (empty from a client;
 *                                  the profile service wants one)
 *   click.click_id, click_reply.click_id
 *                                  "" or 1..PS_WIRE_MAX_CLICK_ID bytes of 0x21..0x7e
 *   every other string             <= PS_WIRE_MAX_STRING bytes, valid UTF-8, no NUL
 *   unknown fields                 <= PS_WIRE_MAX_UNKNOWN per frame (newer peers' additions)
 *   version                        == PS_WIRE_VERSION; exactly one body set
 * Every message within these caps packs into less than PS_WIRE_MAX_FRAME bytes (the largest,
 * a request with 5 centroids of 65536 floats, is about 1.3 MiB).
 *
 * Errors name the field at fault by its path in the envelope ("search.centroids[2].vector"):
 * PS_ETOOBIG for a frame, count or length over its cap, PS_EPARSE for bytes that are not a
 * well-formed envelope, PS_EUTF8 for a string that is not valid UTF-8, PS_EINVAL for any other
 * value out of range (version, no body, R, non-finite floats, ...), PS_ENOMEM.
 *
 * All functions are reentrant; nothing here keeps state between calls. The messages that carry
 * the engine's types (search request and reply, sticker reply) are in wire_engine.h.
 */
#ifndef PS_WIRE_H
#define PS_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "persrv.pb-c.h"
#include "ps/err.h"
#include "ps/fields.h"

#define PS_WIRE_VERSION       1          /* major version this peer speaks */
#define PS_WIRE_MAX_FRAME     (4u << 20) /* default frame cap, bytes */
#define PS_WIRE_MAX_TOKENS    256        /* search.tokens entries */
#define PS_WIRE_MAX_TOKEN_LEN 256        /* bytes per token */
#define PS_WIRE_MAX_CENTROIDS 5          /* search.centroids entries */
#define PS_WIRE_MAX_DIM       65536      /* floats per centroid vector */
#define PS_WIRE_MAX_HITS      10000      /* search_reply.hits entries */
#define PS_WIRE_MAX_SHARDS    1024       /* query_reply.failures entries */
#define PS_WIRE_MAX_USER      256        /* bytes of any user name */
#define PS_WIRE_MAX_API_KEY   256        /* bytes of Envelope.api_key */
#define PS_WIRE_MAX_TRACE     128        /* bytes of Envelope.trace_id */
#define PS_WIRE_MAX_EXCLUDE   100        /* query.exclude entries */
#define PS_WIRE_MAX_BATCH     32         /* batch.requests, batch_reply.replies entries */
#define PS_WIRE_MAX_CLICK_ID  64         /* bytes of click.click_id (0x21..0x7e) */
#define PS_WIRE_MAX_HISTORY   1024       /* load_profile.history entries */
#define PS_WIRE_MAX_CLICKS    (1 << 19)  /* clicks_reply.sticker_ids entries */
#define PS_WIRE_MAX_BATCHES   4096       /* wal_reply.batches, checkpoint_reply.files */
#define PS_WIRE_MAX_STRING    65536      /* bytes of any other string */
#define PS_WIRE_MAX_UNKNOWN   16384      /* unknown fields per frame */
#define PS_WIRE_NFIELDS       PS_NFIELDS /* text fields of a sticker_reply */

/* ---- decode ------------------------------------------------------------------------------ */

/* Decode and check the `len` bytes at buf as one envelope. Order: len is compared with
 * max_frame first (0 = PS_WIRE_MAX_FRAME), before a byte is read (PS_ETOOBIG); an empty frame
 * is PS_EPARSE. Then one pass over the raw bytes checks the wire structure and enforces every
 * count and length cap above, still before anything is allocated; only then does protobuf-c
 * unpack, and the values are checked (version, body, ranges, UTF-8, finiteness).
 *
 * Memory: protobuf-c allocates in proportion to its input. With the counts capped first,
 * one decode allocates at most about len bytes (copied strings, floats and unknown fields)
 * plus PS_WIRE_MAX_HITS structures (~90 bytes each) plus ~56 bytes per unknown field: about
 * len + 2 MiB in the worst case. The frame cap is what bounds it.
 *
 * OUT *out: the envelope, owned by the caller (free with ps_wire_free); it borrows nothing
 * from buf. NULL on error. Errors: see the top of this file; PS_EINVAL also for a NULL out
 * or a NULL buf with len > 0. */
int ps_wire_decode(const void *buf, size_t len, size_t max_frame, Persrv__Envelope **out,
                   ps_err *err);

/* Free an envelope from ps_wire_decode (NULL is fine). Pointers into it die with it. */
void ps_wire_free(Persrv__Envelope *env);

/* ---- encode ------------------------------------------------------------------------------ */

/* Every encoder builds one envelope (version = PS_WIRE_VERSION), checks it with the same
 * rules as ps_wire_decode, so a peer never sends what the other side rejects, and packs it.
 * OUT *buf: a malloc'd frame of *len bytes, owned by the caller (free()); NULL on error.
 * Errors name the offending parameter by its wire path; PS_ENOMEM. Replies carry
 * deadline_ms = 0 and must echo the request's request_id. */

/* Initialize e as an envelope of this peer's version with request_id and deadline_ms; the
 * caller sets one body. */
void ps_wire_env_init(Persrv__Envelope *e, uint64_t request_id, uint32_t deadline_ms);

/* Check and pack an envelope the caller built (for a message no helper below covers). */
int ps_wire_pack(const Persrv__Envelope *env, uint8_t **buf, size_t *len, ps_err *err);

int ps_wire_encode_get_sticker(uint64_t request_id, uint32_t deadline_ms, uint64_t id,
                               uint8_t **buf, size_t *len, ps_err *err);
/* The same, asking (with_embedding) for the sticker's embedding too (the broker, for a click),
 * from snapshot `version` (0: the shard's active one). */
int ps_wire_encode_get_sticker_emb(uint64_t request_id, uint32_t deadline_ms, uint64_t id,
                                   int with_embedding, uint64_t version, uint8_t **buf, size_t *len,
                                   ps_err *err);

int ps_wire_encode_health(uint64_t request_id, uint32_t deadline_ms, uint8_t **buf, size_t *len,
                          ps_err *err);

/* A snapshot version a shard holds loaded. */
typedef struct ps_wire_snap {
    uint64_t version;
    const char *fingerprint; /* 16 hex digits ("" for an index without a manifest) */
    int active;
    uint64_t stickers;
} ps_wire_snap;

#define PS_WIRE_MAX_HELD 8 /* versions a HealthReply may list */

typedef struct ps_wire_health {
    const ps_wire_snap *held; /* shard: the versions it holds loaded */
    size_t nheld;
    uint32_t shard, nshards;
    uint64_t snapshot_version; /* active version, 0 if none */
    uint64_t stickers;         /* stickers in the active version */
    int ready;                 /* 1 when the shard answers searches */
    uint32_t shards_up;        /* broker only: shards with a replica answering */
} ps_wire_health;

int ps_wire_encode_health_reply(uint64_t request_id, const ps_wire_health *h, uint8_t **buf,
                                size_t *len, ps_err *err);

/* An Error carrying ps_errname(code) (code must be a negative PS_E* code) and message (NULL =
 * ""). The message never makes the encoding fail: it is cut to PS_WIRE_MAX_STRING bytes at a
 * character boundary, and if it is not valid UTF-8 its non-ASCII bytes become '?'. */
int ps_wire_encode_error(uint64_t request_id, int code, const char *message, uint8_t **buf,
                         size_t *len, ps_err *err);

/* A QueryRequest (client → broker front door) for the qlen bytes at q, sent as they are: the
 * encoder does not check UTF-8 (of q or user), so a client sends what it was given and the
 * broker answers invalid_utf8 — a decoder rejects it. q is a proto `string`, which protobuf-c
 * packs up to a NUL: a q with a NUL byte cannot be sent (PS_EINVAL, "query.q"). q need not be
 * NUL-terminated. user NULL = "" (no personalization). k 0 lets the broker pick (10); explain
 * asks for the stored fields of every hit. Errors: PS_ETOOBIG for q over PS_WIRE_MAX_STRING or
 * user over PS_WIRE_MAX_USER bytes, PS_EINVAL, PS_ENOMEM. */
int ps_wire_encode_query(uint64_t request_id, uint32_t deadline_ms, const char *q, size_t qlen,
                         const char *user, uint32_t k, int explain, uint8_t **buf, size_t *len,
                         ps_err *err);

/* A QueryRequest's search options beyond q, user, k and explain (QueryRequest in
 * proto/persrv.proto): exclude[0..nexclude) (at most PS_WIRE_MAX_EXCLUDE), offset, timeout_ms (0:
 * the broker's) and no_partial. The broker checks their values. */
typedef struct ps_wire_query_opts {
    const uint64_t *exclude;
    size_t nexclude;
    uint32_t offset, timeout_ms;
    int no_partial;
} ps_wire_query_opts;

/* ps_wire_encode_query with o's options (NULL: none). Errors as ps_wire_encode_query, and
 * PS_ETOOBIG for too many excluded ids. */
int ps_wire_encode_query_ex(uint64_t request_id, uint32_t deadline_ms, const char *q, size_t qlen,
                            const char *user, uint32_t k, int explain, const ps_wire_query_opts *o,
                            uint8_t **buf, size_t *len, ps_err *err);

/* A BatchRequest of the n encoded request envelopes frames[i] (lens[i] bytes each; n <=
 * PS_WIRE_MAX_BATCH), or a BatchReply of n encoded reply envelopes (reply != 0). Errors:
 * PS_ETOOBIG (n), PS_ENOMEM. */
int ps_wire_encode_batch(uint64_t request_id, uint32_t deadline_ms, int reply,
                         const uint8_t *const *frames, const size_t *lens, size_t n, uint8_t **buf,
                         size_t *len, ps_err *err);

/* A ClickRequest (client → broker front door): a click of `user` (1..PS_WIRE_MAX_USER bytes)
 * on sticker_id for query (NULL = ""), under click_id (NULL or "" = the broker derives one;
 * else checked by ps_wire_check_click_id). No embedding: the broker fetches it. UTF-8 is the
 * broker's to check, as for ps_wire_encode_query. Errors: PS_ETOOBIG (user, query), PS_EINVAL
 * (empty user, click_id), PS_ENOMEM. */
int ps_wire_encode_click(uint64_t request_id, uint32_t deadline_ms, const char *user,
                         uint64_t sticker_id, const char *query, const char *click_id,
                         uint8_t **buf, size_t *len, ps_err *err);

/* Check a click id: 1..PS_WIRE_MAX_CLICK_ID bytes, each printable ASCII other than a space
 * (0x21..0x7e), so it can be logged, quoted in JSON and used in a key as it is. `at` names the
 * field in the error. Errors: PS_EINVAL (empty, a byte outside the range), PS_ETOOBIG. */
int ps_wire_check_click_id(const char *id, const char *at, ps_err *err);

/* The request_id of a frame that may not decode (the last well-formed field 2 at the top
 * level), 0 if none can be found: lets a server echo the id in the Error it answers an
 * undecodable request with. Reads no more than len bytes; checks nothing else. */
uint64_t ps_wire_peek_request_id(const void *buf, size_t len);

/* Append Envelope.api_key = key to an encoded envelope (*buf, *len; realloc'd): a protobuf
 * field appended to a message is read as part of it, so every ps_wire_encode_* request gets a
 * key this way. key NULL or "": nothing appended. Errors: PS_ETOOBIG (over
 * PS_WIRE_MAX_API_KEY bytes), PS_EINVAL (a NUL or control byte), PS_ENOMEM. */
int ps_wire_append_api_key(uint8_t **buf, size_t *len, const char *key, ps_err *err);

/* Check a trace id (Envelope.trace_id: a client's request id, X-Request-Id or a W3C
 * traceparent): 1..PS_WIRE_MAX_TRACE bytes of 0x21..0x7e, so it can be logged and echoed as it
 * is. Errors: PS_EINVAL, PS_ETOOBIG. */
int ps_wire_check_trace(const char *id, ps_err *err);

/* Append Envelope.trace_id = id to an encoded envelope, as ps_wire_append_api_key does (id NULL
 * or "": nothing appended; else checked by ps_wire_check_trace). */
int ps_wire_append_trace(uint8_t **buf, size_t *len, const char *id, ps_err *err);

/* An envelope's trace id for a log line: "-" when it has none (a decoded one is checked). */
#define PS_WIRE_TRACE(env) ((env)->trace_id && (env)->trace_id[0] ? (env)->trace_id : "-")

/* Bytes ps_wire_stamp writes at most: request_id (tag + 10-byte varint) and deadline_ms (tag +
 * 5-byte varint). */
#define PS_WIRE_STAMP_MAX 17

/* Write Envelope.request_id = request_id and Envelope.deadline_ms = deadline_ms into out, to be
 * appended to an encoded envelope: a scalar field that appears again is read with its last
 * value (protobuf-c and ps_wire_peek_request_id alike), so a request encoded once with
 * request_id 0 and deadline_ms 0 (proto3 writes neither) is stamped per attempt and per peer
 * without packing or checking it again. Both fields are always written, zeros included, so a
 * stamp also overrides ids already in the frame. Returns the bytes written (at most
 * PS_WIRE_STAMP_MAX); never fails. */
size_t ps_wire_stamp(uint8_t out[PS_WIRE_STAMP_MAX], uint64_t request_id, uint32_t deadline_ms);

/* The PS_E* code named by an Error's code string; PS_EINTERNAL for a name this peer does not
 * know (a newer peer's code). */
int ps_wire_error_code(const Persrv__Error *e);

#endif
