/*
 * zmq_flood.c — the hostile peer of tests/integration/test_zmq_limits.sh.
 *
 *   zmq_flood multipart EP NFRAMES BYTES   one message of NFRAMES frames of BYTES bytes each
 *                                          (the last one a health request, so a server that
 *                                          reads it answers), as a DEALER; prints what came
 *                                          back within 5 s: "answer CODE" (an Error's code),
 *                                          "answer ok" or "no answer"
 *   zmq_flood health EP                    one health request on a fresh socket: exit 0 when
 *                                          answered within 10 s
 *
 * CURVE from PERSRV_CURVE_KEY / PERSRV_CURVE_SERVERS when set (ps_curve_env_client);
 * PERSRV_FLOOD_PLAIN=1 connects without it, as an outsider would.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "ps/curve.h"
#include "ps/wire.h"

static _Noreturn void die(const char *what)
{
    fprintf(stderr, "zmq_flood: %s\n", what);
    exit(1);
}

static void *dealer(void *zctx, const char *ep)
{
    void *s = zmq_socket(zctx, ZMQ_DEALER);
    int zero = 0, sndtimeo = 10000;
    int64_t maxmsg = 64 << 20;
    ps_err err = {0, ""};
    const char *plain = getenv("PERSRV_FLOOD_PLAIN");
    /* a send waits while no connection is up (an outsider's is refused, then retried): at
     * most SNDTIMEO, then the rest of the message is not sent */
    if (!s || zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_setsockopt(s, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo) ||
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg))
        die("socket");
    if (!(plain && !strcmp(plain, "1")) && ps_curve_env_client(s, ep, &err)) die(err.msg);
    if (zmq_connect(s, ep)) die("connect");
    return s;
}

/* Wait up to ms for a reply; print and return 0 when one came. */
static int await_reply(void *s, int ms)
{
    zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, ms) <= 0) {
        printf("no answer\n");
        return 1;
    }
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, s, 0) < 0) die("recv");
    Persrv__Envelope *env = NULL;
    ps_err err = {0, ""};
    if (ps_wire_decode(zmq_msg_data(&m), zmq_msg_size(&m), 1 << 26, &env, &err))
        printf("answer undecodable\n");
    else if (env->body_case == PERSRV__ENVELOPE__BODY_ERROR)
        printf("answer %s\n", env->error->code);
    else
        printf("answer ok\n");
    ps_wire_free(env);
    zmq_msg_close(&m);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) die("usage: zmq_flood multipart EP NFRAMES BYTES | health EP");
    void *zctx = zmq_ctx_new();
    void *s = dealer(zctx, argv[2]);
    uint8_t *req = NULL;
    size_t len = 0;
    if (ps_wire_encode_health(7, 1000, &req, &len, NULL)) die("encode");
    int rc;
    if (!strcmp(argv[1], "multipart") && argc == 5) {
        long n = atol(argv[3]);
        size_t bytes = (size_t)atol(argv[4]);
        char *frame = calloc(1, bytes ? bytes : 1);
        if (!frame || n < 1) die("bad arguments");
        int sent = 1;
        for (long i = 0; sent && i + 1 < n; i++) sent = zmq_send(s, frame, bytes, ZMQ_SNDMORE) >= 0;
        if (sent) sent = zmq_send(s, req, len, 0) >= 0;
        free(frame);
        if (sent)
            await_reply(s, 5000);
        else
            printf("no answer\n"); /* no connection took it in SNDTIMEO */
        rc = 0;                    /* no answer is an outcome, not a failure of the tool */
    } else if (!strcmp(argv[1], "health")) {
        if (zmq_send(s, req, len, 0) < 0) die("send");
        rc = await_reply(s, 10000);
    } else {
        die("usage: zmq_flood multipart EP NFRAMES BYTES | health EP");
    }
    free(req);
    zmq_close(s);
    zmq_ctx_term(zctx);
    return rc;
}
