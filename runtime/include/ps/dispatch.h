/*
 * dispatch.h — the one request dispatcher of every ZeroMQ door: the shard, the profile service
 * and the broker's front door. A door is a table: which message bodies it takes and the
 * handler of each. ps_dispatch decodes the frame (ps_wire_decode: the one check, handlers trust
 * the envelope they get), admits it (API keys), calls the handler of its body, and answers an
 * Error when anything fails, logging the failure.
 *
 * Request ids, one rule for every door: each reply — an answer or an Error — carries the
 * request's request_id; for a frame that does not decode, the id ps_wire_peek_request_id finds
 * in it (0 when none), so a client can still match the Error to its request.
 */
#ifndef PS_DISPATCH_H
#define PS_DISPATCH_H

#include <stddef.h>
#include <stdint.h>

#include "persrv.pb-c.h"
#include "ps/err.h"

/* A handler's answer when it will reply later itself (the broker's clicks): ps_dispatch sets
 * no reply and returns PS_DISPATCH_LATER. */
#define PS_DISPATCH_LATER 1

/* Answer env (decoded and checked) from state: OUT *reply (malloc'd frame of *reply_len
 * bytes, echoing env->request_id), or a PS_E* code with err set (ps_dispatch answers the
 * Error), or PS_DISPATCH_LATER. */
typedef int (*ps_route_fn)(void *state, const Persrv__Envelope *env, uint8_t **reply,
                           size_t *reply_len, ps_err *err);

typedef struct ps_route {
    Persrv__Envelope__BodyCase body;
    ps_route_fn fn;
    int tag; /* the caller's (a metrics endpoint); ps_dispatch_result.tag */
} ps_route;

typedef struct ps_door {
    const char *component; /* log component ("shard") */
    const char *name;      /* in the Error for a body it does not take ("a shard") */
    const ps_route *routes;
    size_t nroutes;
    int other_tag; /* the tag of a request no route takes (or that does not decode) */
    /* NULL, or a check before the handler (API keys): 0, or a PS_E* code with err set. */
    int (*admit)(void *state, const Persrv__Envelope *env, ps_err *err);
    /* How loud a client's error (an HTTP 4xx status) is logged: PS_LOG_WARN for internal
     * doors (a peer of ours sent it: worth a look), PS_LOG_DEBUG for a public one. Internal
     * errors (500, out of memory) are logged at PS_LOG_ERROR, unavailable / timed out (503,
     * 504) at PS_LOG_WARN. */
    int client_error_level;
} ps_door;

typedef struct ps_dispatch_result {
    int tag;             /* the route taken, or door->other_tag */
    int code;            /* 0, or the PS_E* code answered as an Error */
    uint64_t request_id; /* the id the reply echoes */
} ps_dispatch_result;

/* Answer the len bytes at req (max_frame: the door's frame cap, 0 = PS_WIRE_MAX_FRAME).
 * Returns 0 with OUT *reply / *reply_len (an answer or an Error), PS_DISPATCH_LATER (no reply:
 * the handler answers later), or PS_ENOMEM when not even the Error could be encoded. OUT *res
 * (may be NULL) says what happened. */
int ps_dispatch(const ps_door *door, void *state, size_t max_frame, const void *req, size_t len,
                uint8_t **reply, size_t *reply_len, ps_dispatch_result *res);

/* The name of a body in persrv.proto ("search", "click"; "unknown" for none). */
const char *ps_body_name(Persrv__Envelope__BodyCase body);

#endif
