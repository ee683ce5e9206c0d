/*
 * test_router.h — for unit tests of ZeroMQ clients (test_zreq, test_pool): a ROUTER on
 * tcp://127.0.0.1:* served by a thread of its own. Each request (identity, one frame) is decoded
 * (ps_wire_decode) and handed to the test's function with the router's mutex held; the test
 * takes the mutex to read what its function recorded. test_closed_endpoint gives an endpoint
 * that refuses connections (a bound port that never listens).
 */
#ifndef PS_TEST_ROUTER_H
#define PS_TEST_ROUTER_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <zmq.h>

#include "ps/wire.h"

#define TR_CHECK(c)                                                                                \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "test router: %s failed (line %d)\n", #c, __LINE__);                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

typedef struct test_router test_router;

/* Answer in, which came from the peer whose routing id is id[0..idlen) (mutex held). */
typedef void (*test_router_fn)(test_router *r, const void *id, size_t idlen,
                               const Persrv__Envelope *in);

struct test_router {
    void *zctx, *router;
    char endpoint[64];
    pthread_t th;
    atomic_int stop;
    pthread_mutex_t mu;
    test_router_fn fn;
};

/* Send one frame to the peer with routing id id[0..idlen). */
static inline void test_router_send(test_router *r, const void *id, size_t idlen, const void *buf,
                                    size_t len)
{
    zmq_send(r->router, id, idlen, ZMQ_SNDMORE);
    zmq_send(r->router, buf, len, 0);
}

static inline void test_router_serve_one(test_router *r)
{
    zmq_msg_t id, body;
    zmq_msg_init(&id);
    zmq_msg_init(&body);
    if (zmq_msg_recv(&id, r->router, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&id);
        zmq_msg_close(&body);
        return;
    }
    TR_CHECK(zmq_msg_recv(&body, r->router, 0) >= 0);
    Persrv__Envelope *in = NULL;
    ps_err err;
    TR_CHECK(ps_wire_decode(zmq_msg_data(&body), zmq_msg_size(&body), 0, &in, &err) == 0);
    pthread_mutex_lock(&r->mu);
    r->fn(r, zmq_msg_data(&id), zmq_msg_size(&id), in);
    pthread_mutex_unlock(&r->mu);
    ps_wire_free(in);
    zmq_msg_close(&id);
    zmq_msg_close(&body);
}

static inline void *test_router_main(void *arg)
{
    test_router *r = arg;
    for (;;) {
        zmq_pollitem_t it = {r->router, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 20) > 0) {
            test_router_serve_one(r);
            continue;
        }
        if (atomic_load(&r->stop)) break;
    }
    return NULL;
}

/* Bind r's ROUTER and start its thread (r zeroed by the caller, other fields of the enclosing
 * struct set before: the thread may call fn at once). */
static inline void test_router_start(test_router *r, test_router_fn fn)
{
    int zero = 0;
    size_t n = sizeof r->endpoint;
    r->fn = fn;
    pthread_mutex_init(&r->mu, NULL);
    TR_CHECK((r->zctx = zmq_ctx_new()) != NULL);
    TR_CHECK((r->router = zmq_socket(r->zctx, ZMQ_ROUTER)) != NULL);
    TR_CHECK(zmq_setsockopt(r->router, ZMQ_LINGER, &zero, sizeof zero) == 0);
    TR_CHECK(zmq_bind(r->router, "tcp://127.0.0.1:*") == 0);
    TR_CHECK(zmq_getsockopt(r->router, ZMQ_LAST_ENDPOINT, r->endpoint, &n) == 0);
    TR_CHECK(pthread_create(&r->th, NULL, test_router_main, r) == 0);
}

/* Stop the thread and close the router (r itself is the caller's). */
static inline void test_router_stop(test_router *r)
{
    atomic_store(&r->stop, 1);
    pthread_join(r->th, NULL);
    zmq_close(r->router);
    zmq_ctx_term(r->zctx);
    pthread_mutex_destroy(&r->mu);
}

/* An endpoint that refuses connections: a TCP socket bound to a port of 127.0.0.1 that never
 * listens (a SYN to it is answered with RST). The socket stays open, so no other test of a
 * parallel run can take the port and answer in its place; the process closes it at exit. */
static inline void test_closed_endpoint(char *out, size_t cap)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    TR_CHECK(fd >= 0);
    TR_CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    TR_CHECK(getsockname(fd, (struct sockaddr *)&a, &alen) == 0);
    snprintf(out, cap, "tcp://127.0.0.1:%u", (unsigned)ntohs(a.sin_port));
}

#endif
