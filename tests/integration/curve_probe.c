/*
 * curve_probe.c — the outsider of tests/integration/test_curve.sh: sends every message the
 * wire knows (each Envelope body, requests and replies alike, with default contents) to a
 * ZeroMQ endpoint and counts the answers.
 *
 *   curve_probe EP plain            no CURVE at all
 *   curve_probe EP stranger         CURVE with a fresh key pair no allow-list holds, the
 *                                   server's true key (from PERSRV_CURVE_SERVERS)
 *   curve_probe EP impostor         the allowed key pair (PERSRV_CURVE_KEY) but a wrong
 *                                   server key: a client must not talk to a server it cannot
 *                                   verify
 *   curve_probe EP allowed          the allowed key pair and the true server key (control:
 *                                   the same messages do get answers)
 *
 * Sends all, then prints "sent=N answered=A" once every message is answered or WAIT_MS have
 * passed (WAIT_ALLOWED_MS for an allowed client; an outsider always waits WAIT_MS); exits 0, or 1
 * when the probe itself fails.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "persrv.pb-c.h"
#include "ps/curve.h"

/* time for all the answers: an allowed client gets them in milliseconds on a quiet machine */
#define WAIT_MS         2000
#define WAIT_ALLOWED_MS 20000

static void die(const char *what)
{
    fprintf(stderr, "curve_probe: %s\n", what);
    exit(1);
}

int main(int argc, char **argv)
{
    if (argc != 3) die("usage: curve_probe EP plain|stranger|impostor|allowed");
    const char *ep = argv[1], *mode = argv[2];
    ps_err err = {0, ""};
    ps_curve_t *curve = ps_curve_from_env(&err);
    if (err.code) die(err.msg);
    void *zctx = zmq_ctx_new(), *s = zmq_socket(zctx, ZMQ_DEALER);
    int zero = 0;
    if (!s || zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero)) die("socket");
    int allowed = strcmp(mode, "allowed") == 0;
    if (strcmp(mode, "plain") != 0) {
        if (!curve) die("PERSRV_CURVE_KEY / PERSRV_CURVE_SERVERS are not set");
        const char *server = ps_curve_server_key(curve, ep);
        if (!server) die("no server key for the endpoint");
        char pub[41], sec[41], other[41], othersec[41];
        snprintf(pub, sizeof pub, "%s", ps_curve_public(curve));
        snprintf(sec, sizeof sec, "%s", ps_curve_secret(curve));
        if (zmq_curve_keypair(other, othersec)) die("zmq_curve_keypair");
        if (strcmp(mode, "stranger") == 0) {
            if (zmq_curve_keypair(pub, sec)) die("zmq_curve_keypair");
        } else if (strcmp(mode, "impostor") == 0) {
            server = other;
        } else if (strcmp(mode, "allowed") != 0) {
            die("mode: plain, stranger, impostor or allowed");
        }
        if (zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, server, 41) ||
            zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, pub, 41) ||
            zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, sec, 41))
            die("CURVE options");
    }
    if (zmq_connect(s, ep)) die("connect");

    const ProtobufCMessageDescriptor *d = &persrv__envelope__descriptor;
    int sent = 0, answered = 0;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (!(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) || f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        const ProtobufCMessageDescriptor *bd = f->descriptor;
        ProtobufCMessage *body = calloc(1, bd->sizeof_message);
        if (!body) die("out of memory");
        bd->message_init(body);
        Persrv__Envelope env = PERSRV__ENVELOPE__INIT;
        env.version = 1;
        env.request_id = 1000 + i;
        env.deadline_ms = 1000;
        env.body_case = (Persrv__Envelope__BodyCase)f->id;
        *(ProtobufCMessage **)((char *)&env + f->offset) = body;
        size_t len = persrv__envelope__get_packed_size(&env);
        uint8_t *buf = malloc(len ? len : 1);
        if (!buf) die("out of memory");
        persrv__envelope__pack(&env, buf);
        /* not blocking: with no peer admitted the message waits in the pipe (or is refused
         * here): either way it is one more try that must go unanswered */
        zmq_send(s, buf, len, ZMQ_DONTWAIT);
        sent++;
        free(buf);
        free(body);
    }
    /* then collect answers: until every message has one, or WAIT_MS (outsiders: all of it) */
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        long left = (allowed ? WAIT_ALLOWED_MS : WAIT_MS) -
                    ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000);
        if (answered >= sent || left <= 0) break;
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, left) > 0 && (it.revents & ZMQ_POLLIN)) {
            char junk[1 << 16];
            while (zmq_recv(s, junk, sizeof junk, ZMQ_DONTWAIT) >= 0) answered++;
        }
    }
    printf("sent=%d answered=%d\n", sent, answered);
    zmq_close(s);
    zmq_ctx_term(zctx);
    ps_curve_free(curve);
    return 0;
}
