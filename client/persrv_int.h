/*
 * persrv_int.h — libpersrv's only internal header: what the blocking client (libpersrv.c) and
 * the libevent adapter (persrv_event.c) share, so both read, check and convert the broker's
 * replies with the same code. Nothing here is public API; every symbol is persrv__x.
 */
#ifndef PERSRV_INT_H
#define PERSRV_INT_H

#include <stdint.h>

#include "persrv.h"
#include "ps/err.h"
#include "ps/wire.h"

/**************************************************************************
 * libpersrv.c
 */

/* The client's code for a ps_* code (from the local encoder or decoder, or named by the
 * broker's Error). */
int persrv__from_ps(int ps);

/* *o = the defaults, overridden by opt's non-zero fields (opt NULL = defaults only; retries is
 * taken as it is). */
void persrv__options_fill(persrv_options *o, const persrv_options *opt);

/* A context's CURVE client keys (Z85, NUL-terminated); on = 0: plain. */
typedef struct persrv__curve {
    int on;
    char server[41], pub[41], sec[41];
} persrv__curve;

/* *k from o's curve_* fields. PERSRV_OK, or PERSRV_EINVAL with e->msg naming the field
 * (set without the others, or not a 40-character Z85 key). */
int persrv__curve_from(const persrv_options *o, persrv__curve *k, ps_err *e);

/* Make sock a CURVE client with k (before zmq_connect; nothing when !k->on). 0 or -1 (zmq
 * errno). */
int persrv__curve_apply(const persrv__curve *k, void *sock);

/* Zero the string s (an API key) and free it; NULL is fine. */
void persrv__wipe_free(char *s);

/* A random first request_id for a new context (salt: the context's address), with room to
 * count up without wrapping to 0. */
uint64_t persrv__id_seed(const void *salt);

/* persrv__recv's answer when no message is waiting. */
#define PERSRV__AGAIN 1

/* Receive one message from sock without blocking and decode it (ps_wire_decode, max_frame).
 * The front door speaks single frames: a message of several frames is drained and rejected.
 * Returns PERSRV_OK with OUT *out (the envelope, owned by the caller: ps_wire_free);
 * PERSRV__AGAIN when nothing is waiting (or the call was interrupted); PERSRV_ECONNECT when
 * the socket failed; PERSRV_EPROTO (or PERSRV_ENOMEM) for a message that does not decode, with
 * OUT *peek = the request_id found in it by ps_wire_peek_request_id (0 if none), so the caller
 * can tell whether the bad frame was meant for it. e->msg says what failed. */
int persrv__recv(void *sock, size_t max_frame, Persrv__Envelope **out, uint64_t *peek, ps_err *e);

/* Free an envelope from persrv__recv (NULL is fine). */
void persrv__env_free(Persrv__Envelope *env);

/* A QueryRequest frame for q (qlen bytes of q->text) under request id rid with deadline_ms,
 * carrying api_key (NULL or "": none). OUT *buf (malloc'd, *len bytes). A ps_* code on error,
 * e->msg says why. */
int persrv__encode_query(uint64_t rid, uint32_t deadline_ms, const persrv_query *q, size_t qlen,
                         const char *api_key, uint8_t **buf, size_t *len, ps_err *e);

/* Check that env, a decoded reply, answers with body `want`. Returns PERSRV_OK, or: for an
 * Error body, the PERSRV_E* code it names and e->msg = "broker: <message>"; for another body,
 * PERSRV_EPROTO ("reply: health_reply where query_reply belongs"). env stays the caller's. */
int persrv__reply_check(const Persrv__Envelope *env, int want, ps_err *e);

/* Turn a checked query_reply envelope into the public result. Takes *env in every case and
 * sets it to NULL: the result keeps it (its strings point into it); on failure it is freed.
 * OUT *out: owned by the caller (persrv_result_free), NULL on error. Errors: PERSRV_ENOMEM. */
int persrv__result_from(Persrv__Envelope **env, persrv_result **out);

#endif
