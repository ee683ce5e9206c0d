/*
 * persrv_event.h — libpersrv's libevent adapter (DESIGN §3.1): search from a service that runs
 * a libevent loop, without blocking it. Answers come back as callbacks from the loop.
 *
 *     static void on_result(int code, persrv_result *r, const char *errstr, void *arg)
 *     {
 *         if (code == PERSRV_OK) { reply_with(arg, r); persrv_result_free(r); }
 *         else if (persrv_retriable(code)) { schedule a retry of arg's search }
 *         else log_failure(arg, errstr);
 *     }
 *
 *     persrv_async_t *a = persrv_async_new(base, "tcp://broker:7001", NULL);
 *     if (!a) out of memory;
 *     if (persrv_async_errcode(a)) { fprintf(stderr, "%s\n", persrv_async_errstr(a)); ... }
 *     persrv_query q = {.text = "so tired", .user = "u42", .k = 10};
 *     if (persrv_search_async(a, &q, on_result, chat) != PERSRV_OK) handle it now;
 *     event_base_dispatch(base);
 *     persrv_async_free(a);
 *
 * Requests. Many requests may be in flight at once on one context; each carries its own
 * request_id and a reply is matched to its request by it, so the broker may answer in any
 * order. Each request has one attempt and a timer of timeout_ms (persrv_options; retries is
 * ignored): the async API never retries. When the timer fires the callback gets
 * PERSRV_ETIMEDOUT; a reply arriving after that is dropped. Callers retry themselves, when
 * persrv_retriable(code) says the same search may succeed later.
 *
 * Wire: as persrv.h, one DEALER socket per context (ZMQ_LINGER 0, ZMQ_MAXMSGSIZE max_frame),
 * its own ZeroMQ context, one frame per request. A reply larger than max_frame makes ZeroMQ
 * drop the connection: the requests in flight then time out. An Error the broker sends with
 * request_id 0 (a frame it could not read) is taken as the answer only when exactly one
 * request is in flight; otherwise it is dropped and its request times out.
 *
 * Threads: a context belongs to the thread that runs its event base. Use one context per event
 * base; contexts share nothing. Results are plain memory, usable from any thread.
 *
 * This header uses only persrv.h and a forward declaration of libevent's struct event_base,
 * and compiles as C and C++. Link with libpersrv and libevent.
 */
#ifndef PERSRV_EVENT_H
#define PERSRV_EVENT_H

#include "persrv.h"

#ifdef __cplusplus
extern "C" {
#endif

struct event_base;

typedef struct persrv_async persrv_async_t;

/* The answer to one persrv_search_async, called exactly once per request that was queued,
 * from the event loop (or from persrv_async_free). code PERSRV_OK: result is the caller's
 * (persrv_result_free) and errstr is "". Otherwise code is a PERSRV_E* code (those of
 * persrv_search, PERSRV_ECANCELED), result is NULL, and errstr names what failed; errstr is
 * valid only during the call. arg is the one given to persrv_search_async. The callback may
 * start new searches and may free the context (persrv_async_free). */
typedef void (*persrv_search_cb)(int code, persrv_result *result, const char *errstr, void *arg);

/* A context that searches the broker at endpoint ("tcp://host:port"; any ZeroMQ endpoint)
 * from base's loop. opt NULL = defaults; opt->retries is ignored. Returns NULL only when out
 * of memory; otherwise a context the caller owns (persrv_async_free) that carries the outcome:
 * persrv_async_errcode is PERSRV_EINVAL (NULL base or endpoint) or PERSRV_ECONNECT (an
 * endpoint ZeroMQ rejects, or the socket could not be watched by libevent). Searches on a
 * context whose connect failed try to connect again and fail the same way. base must outlive
 * the context. */
persrv_async_t *persrv_async_new(struct event_base *base, const char *endpoint,
                                 const persrv_options *opt);

/* Send q and return at once. PERSRV_OK: the request is queued and cb(…, arg) will be called
 * exactly once, later from the loop (never from inside this function). q, its strings and
 * user are copied into the request frame: they need not outlive the call. Otherwise cb is
 * never called and the code is returned (and recorded in the context): PERSRV_EINVAL (NULL a,
 * q, q->text or cb; a NUL byte in the text), PERSRV_ETOOBIG (text or user over the wire caps),
 * PERSRV_ENOMEM, PERSRV_ECONNECT (the socket failed), PERSRV_EUNAVAIL (ZeroMQ's send queue is
 * full: too many requests waiting for a broker that does not take them; retriable),
 * PERSRV_ECANCELED (called while the context is being freed). */
int persrv_search_async(persrv_async_t *a, const persrv_query *q, persrv_search_cb cb, void *arg);

/* Cancel every request in flight — each callback is called with PERSRV_ECANCELED before this
 * returns — then close the socket and free a (NULL is fine). Results already handed out stay
 * valid. May be called from a callback of a itself. */
void persrv_async_free(persrv_async_t *a);

/* The outcome of the last persrv_search_async on a (or of persrv_async_new): PERSRV_OK or a
 * PERSRV_E* code; PERSRV_EINVAL for a NULL a. Answers delivered to callbacks do not change it. */
int persrv_async_errcode(const persrv_async_t *a);
/* A message naming what failed ("" after success). Valid until the next call on a. */
const char *persrv_async_errstr(const persrv_async_t *a);

#ifdef __cplusplus
}
#endif

#endif
