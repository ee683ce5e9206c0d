/*
 * test_zserver.c — the ZeroMQ server loop and its workers (runtime/zserver.c, ps/zserver.h),
 * through ps_zserve run in a thread on tcp://127.0.0.1:* with a handler of this file's: the
 * endpoint comes from the on_ready callback, the stop is a byte on the stop pipe.
 *
 * Checked: a reply comes back along its route (DEALER and REQ peers, up to 8 frames) from a
 * worker with its own state; many DEALER clients at once each get exactly their replies;
 * more than PS_ZMSG_MAX_PARTS frames is answered too_large (with the request's id) and never
 * reaches a worker; a frame over max_frame drops the peer's connection (a monitor sees it)
 * and reaches no worker; max_inflight 1 keeps a second request from the workers while one is
 * in flight, 2 lets two run at once; a stop drains: a slow request in flight when the stop
 * byte is read is still answered, one sent after is never handled, and ps_zserve returns 0;
 * with every worker held, the loop's inline_fn answers a "ping" (DEALER and REQ) while a
 * request for a worker sent before it stays unhandled and unanswered until the workers are
 * released; with no workers the loop answers on its own thread, a "ping" ahead of the requests
 * queued (at most after the one being answered), and a stop still answers what it had read;
 * the ready file holds the endpoint and ready_extra; start errors; CURVE admits a client
 * on the allow-list and refuses a stranger's handshake (a monitor sees it) before any worker runs.
 *
 * No sleep decides a result. Waits for something that must happen fail after 10 s; the one
 * wait for something that must not happen (a second request while max_inflight is 1) lasts
 * 300 ms and can only make the test pass wrongly on a stalled machine, never fail wrongly.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "ps/curve.h"
#include "ps/log.h"
#include "ps/wire.h"
#include "ps/zserver.h"

#define GUARD_MS    10000 /* a wait for what must happen fails after this */
#define MAX_WORKERS 8

/* ---- the handler ---------------------------------------------------------------------------- */

/* What every worker shares with the test, under mu. */
typedef struct shared {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int calls;                   /* handler calls */
    int inside;                  /* handlers running now */
    int max_inside;              /* most running at once */
    size_t max_len;              /* longest request seen */
    unsigned used;               /* bit i: worker i answered */
    int slow_entered;            /* "slow" requests that reached a worker */
    int gate_open;               /* "slow" requests may finish */
    int pairs;                   /* "pair" requests that reached a worker */
    int pair_timeouts;           /* "pair" requests that never met a second one */
    int held;                    /* "hold" requests that reached the handler */
    int released;                /* the first `released` of them may finish */
    pthread_t thread;            /* the thread of the last handler call */
    _Atomic int inline_offered;  /* requests the server loop offered inline_handler */
    _Atomic int inline_answered; /* of which it answered */
} shared;

typedef struct wstate {
    shared *sh;
    int index;
} wstate;

static void deadline_in(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Reply "w<index>|" + the request. A request starting "slow" waits for the gate; the k-th
 * starting "hold" until k have been released (release()); one starting
 * "pair" waits (10 s at most) for a second "pair" to reach a worker: they meet only when both
 * are in workers at once. */
static int handler(void *state, const void *req, size_t len, uint8_t **reply, size_t *reply_len)
{
    wstate *w = state;
    shared *sh = w->sh;
    pthread_mutex_lock(&sh->mu);
    sh->calls++;
    if (++sh->inside > sh->max_inside) sh->max_inside = sh->inside;
    if (len > sh->max_len) sh->max_len = len;
    sh->used |= 1u << w->index;
    sh->thread = pthread_self();
    pthread_cond_broadcast(&sh->cv);
    if (len >= 4 && !memcmp(req, "hold", 4)) {
        int k = ++sh->held;
        pthread_cond_broadcast(&sh->cv);
        while (sh->released < k) pthread_cond_wait(&sh->cv, &sh->mu);
    } else if (len >= 4 && !memcmp(req, "slow", 4)) {
        sh->slow_entered++;
        pthread_cond_broadcast(&sh->cv);
        while (!sh->gate_open) pthread_cond_wait(&sh->cv, &sh->mu);
    } else if (len >= 4 && !memcmp(req, "pair", 4)) {
        struct timespec ts;
        deadline_in(&ts, GUARD_MS);
        int rc = 0;
        sh->pairs++;
        pthread_cond_broadcast(&sh->cv);
        while (sh->pairs < 2 && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&sh->cv, &sh->mu, &ts);
        if (sh->pairs < 2) sh->pair_timeouts++;
    }
    sh->inside--;
    pthread_cond_broadcast(&sh->cv);
    pthread_mutex_unlock(&sh->mu);

    char head[16];
    int hn = snprintf(head, sizeof head, "w%d|", w->index);
    if (!(*reply = malloc((size_t)hn + len))) return PS_ENOMEM;
    memcpy(*reply, head, (size_t)hn);
    if (len) memcpy(*reply + hn, req, len);
    *reply_len = (size_t)hn + len;
    return 0;
}

/* The server loop's inline answer: "inline|" + a request starting "ping"; the rest go to the
 * workers. It touches only atomics: it runs on the loop's thread while workers hold mu. */
static int inline_handler(void *state, const void *req, size_t len, uint8_t **reply,
                          size_t *reply_len)
{
    shared *sh = state;
    atomic_fetch_add(&sh->inline_offered, 1);
    if (len < 4 || memcmp(req, "ping", 4)) return 0;
    if (!(*reply = malloc(7 + len))) return 0;
    memcpy(*reply, "inline|", 7);
    memcpy(*reply + 7, req, len);
    *reply_len = 7 + len;
    atomic_fetch_add(&sh->inline_answered, 1);
    return 1;
}

/* Wait until *field >= want (10 s at most, or ms if given). 1 when reached. */
static int wait_for(shared *sh, const int *field, int want, int ms)
{
    struct timespec ts;
    deadline_in(&ts, ms);
    pthread_mutex_lock(&sh->mu);
    int rc = 0;
    while (*field < want && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&sh->cv, &sh->mu, &ts);
    int ok = *field >= want;
    pthread_mutex_unlock(&sh->mu);
    return ok;
}

static int get(shared *sh, const int *field)
{
    pthread_mutex_lock(&sh->mu);
    int v = *field;
    pthread_mutex_unlock(&sh->mu);
    return v;
}

static void open_gate(shared *sh)
{
    pthread_mutex_lock(&sh->mu);
    sh->gate_open = 1;
    pthread_cond_broadcast(&sh->cv);
    pthread_mutex_unlock(&sh->mu);
}

static void release(shared *sh, int upto)
{
    pthread_mutex_lock(&sh->mu);
    sh->released = upto;
    pthread_cond_broadcast(&sh->cv);
    pthread_mutex_unlock(&sh->mu);
}

/* ---- a server in a thread ------------------------------------------------------------------- */

typedef struct server {
    ps_zserver_cfg cfg;
    uint32_t workers;
    wstate ws[MAX_WORKERS];
    void *states[MAX_WORKERS];
    shared sh;
    const char *ready_file;
    int stop[2];
    pthread_t tid;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ready, done, rc;
    ps_err err;
    char endpoint[256];
    char ready_text[512]; /* the ready file as on_ready found it */
} server;

static void on_ready(const char *endpoint, void *arg)
{
    server *s = arg;
    pthread_mutex_lock(&s->mu);
    snprintf(s->endpoint, sizeof s->endpoint, "%s", endpoint);
    if (s->ready_file) {
        FILE *fp = fopen(s->ready_file, "r");
        if (fp) {
            size_t n = fread(s->ready_text, 1, sizeof s->ready_text - 1, fp);
            s->ready_text[n] = '\0';
            fclose(fp);
        }
    }
    s->ready = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void *serve_main(void *arg)
{
    server *s = arg;
    int rc = ps_zserve(&s->cfg, s->workers, handler, s->states, s->ready_file, s->stop[0], on_ready,
                       s, &s->err);
    pthread_mutex_lock(&s->mu);
    s->rc = rc;
    s->done = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static void server_init(server *s, uint32_t workers)
{
    memset(s, 0, sizeof *s);
    s->cfg = (ps_zserver_cfg){.component = "test",
                              .listen = "tcp://127.0.0.1:*",
                              .backend = "inproc://test-workers",
                              .max_frame = 1 << 20,
                              .max_inflight = 64,
                              .drain_ms = 1000,
                              .hwm = 1000};
    s->workers = workers;
    pthread_mutex_init(&s->sh.mu, NULL);
    pthread_cond_init(&s->sh.cv, NULL);
    for (uint32_t i = 0; i < (workers ? workers : 1); i++) { /* 0: the loop's state 0 */
        s->ws[i] = (wstate){.sh = &s->sh, .index = (int)i};
        s->states[i] = &s->ws[i];
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
}

/* Start it; returns once it serves (1) or has returned (0: s->rc, s->err say why). */
static int server_start(server *s)
{
    assert_int_equal(pipe(s->stop), 0);
    assert_int_equal(pthread_create(&s->tid, NULL, serve_main, s), 0);
    struct timespec ts;
    deadline_in(&ts, GUARD_MS);
    pthread_mutex_lock(&s->mu);
    int rc = 0;
    while (!s->ready && !s->done && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    int ready = s->ready, done = s->done;
    pthread_mutex_unlock(&s->mu);
    if (!ready && !done) fail_msg("the server neither started nor returned");
    return ready;
}

/* Write the stop byte (without waiting). */
static void server_signal_stop(server *s)
{
    assert_int_equal(write(s->stop[1], "x", 1), 1);
}

/* Wait for ps_zserve to return; its code. */
static int server_join(server *s)
{
    pthread_join(s->tid, NULL);
    close(s->stop[0]);
    close(s->stop[1]);
    pthread_mutex_destroy(&s->sh.mu);
    pthread_cond_destroy(&s->sh.cv);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    return s->rc;
}

static void server_stop(server *s)
{
    server_signal_stop(s);
    assert_int_equal(server_join(s), 0);
}

/* ---- clients -------------------------------------------------------------------------------- */

static void *client(void *zctx, int type, const char *endpoint)
{
    void *sock = zmq_socket(zctx, type);
    assert_non_null(sock);
    int zero = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_connect(sock, endpoint), 0);
    return sock;
}

/* Send frames[0..n) (lens[i] bytes each, or strlen when lens is NULL) as one message. */
static void send_frames(void *sock, const char *const *frames, const size_t *lens, int n)
{
    for (int i = 0; i < n; i++) {
        size_t len = lens ? lens[i] : strlen(frames[i]);
        assert_true(zmq_send(sock, frames[i], len, i + 1 < n ? ZMQ_SNDMORE : 0) == (int)len);
    }
}

static void send_str(void *sock, const char *s)
{
    send_frames(sock, &s, NULL, 1);
}

typedef struct msg {
    int n;
    size_t len[64];
    char *frame[64]; /* NUL-terminated copies */
} msg;

static void msg_free(msg *m)
{
    for (int i = 0; i < m->n && i < 64; i++) free(m->frame[i]);
    m->n = 0;
}

/* Receive one message within ms. 1 when one came. */
static int recv_msg(void *sock, msg *m, int ms)
{
    zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
    m->n = 0;
    if (zmq_poll(&it, 1, ms) <= 0) return 0;
    for (;;) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        assert_true(zmq_msg_recv(&part, sock, 0) >= 0);
        if (m->n < 64) {
            m->len[m->n] = zmq_msg_size(&part);
            m->frame[m->n] = malloc(m->len[m->n] + 1);
            assert_non_null(m->frame[m->n]);
            memcpy(m->frame[m->n], zmq_msg_data(&part), m->len[m->n]);
            m->frame[m->n][m->len[m->n]] = '\0';
        }
        m->n++;
        int more = zmq_msg_more(&part);
        zmq_msg_close(&part);
        if (!more) return 1;
    }
}

/* The reply to a one-frame request: "w<i>|" + want. OUT *worker: i. */
static void expect_reply(void *sock, const char *want, int *worker)
{
    msg m;
    if (!recv_msg(sock, &m, GUARD_MS)) fail_msg("no reply to '%s'", want);
    assert_int_equal(m.n, 1);
    int w = -1, off = 0;
    assert_int_equal(sscanf(m.frame[0], "w%d|%n", &w, &off), 1);
    assert_true(w >= 0 && w < MAX_WORKERS);
    assert_string_equal(m.frame[0] + off, want);
    if (worker) *worker = w;
    msg_free(&m);
}

/* The reply to a one-frame request, exactly `want`, from a REQ or DEALER peer. */
static void expect_exact(void *sock, const char *want)
{
    msg m;
    if (!recv_msg(sock, &m, GUARD_MS)) fail_msg("no reply '%s'", want);
    assert_int_equal(m.n, 1);
    assert_string_equal(m.frame[0], want);
    msg_free(&m);
}

/* Workers connect to the back socket in their own threads, after on_ready may have run; the back
 * socket spreads requests round robin over the workers connected. Send requests one at a time
 * until every worker has answered one: from then on consecutive requests go to different
 * workers. */
static void warm_up(server *s, void *sock)
{
    unsigned all = (1u << s->workers) - 1;
    for (int i = 0; i < 1000; i++) {
        pthread_mutex_lock(&s->sh.mu);
        unsigned used = s->sh.used;
        pthread_mutex_unlock(&s->sh.mu);
        if (used == all) return;
        send_str(sock, "warm");
        expect_reply(sock, "warm", NULL);
    }
    fail_msg("not every worker answered 1000 requests");
}

/* A monitor of sock (before it connects) for `events`. */
static void *monitor(void *zctx, void *sock, const char *name, int events)
{
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://monitor-%s", name);
    assert_int_equal(zmq_socket_monitor(sock, ep, events), 0);
    void *m = zmq_socket(zctx, ZMQ_PAIR);
    assert_non_null(m);
    assert_int_equal(zmq_connect(m, ep), 0);
    return m;
}

/* 1 when the monitor reports `event` within 10 s. */
static int monitor_wait(void *mon, int event)
{
    msg m;
    while (recv_msg(mon, &m, GUARD_MS)) {
        uint16_t ev = 0;
        if (m.n >= 1 && m.len[0] >= 2) memcpy(&ev, m.frame[0], 2);
        msg_free(&m);
        if (ev == event) return 1;
    }
    return 0;
}

static void close_all(void *zctx, void **socks, int n)
{
    for (int i = 0; i < n; i++)
        if (socks[i]) zmq_close(socks[i]);
    zmq_ctx_term(zctx);
}

/* ---- tests ---------------------------------------------------------------------------------- */

static char tmpdir[64];

static int tmp_setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ps_test_zserver_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int tmp_teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Replies along the route: DEALER, REQ, a 7-frame DEALER request; the ready file. */
static void test_roundtrip(void **state)
{
    (void)state;
    server s;
    server_init(&s, 2);
    char ready[128];
    snprintf(ready, sizeof ready, "%s/ready", tmpdir);
    s.ready_file = ready;
    s.cfg.ready_extra = "admin 127.0.0.1:9";
    assert_true(server_start(&s));
    assert_non_null(strstr(s.endpoint, "tcp://127.0.0.1:"));
    assert_true(strcmp(s.endpoint, "tcp://127.0.0.1:*") != 0);
    char want[512];
    snprintf(want, sizeof want, "%s\nadmin 127.0.0.1:9\n", s.endpoint);
    assert_string_equal(s.ready_text, want);

    void *zctx = zmq_ctx_new();
    void *d = client(zctx, ZMQ_DEALER, s.endpoint);
    void *r = client(zctx, ZMQ_REQ, s.endpoint);
    send_str(d, "hello");
    expect_reply(d, "hello", NULL);
    send_str(r, "from req");
    expect_reply(r, "from req", NULL);

    /* pipelined: each answered once, by a worker of the table */
    char buf[32];
    for (int i = 0; i < 10; i++) {
        snprintf(buf, sizeof buf, "p%d", i);
        send_str(d, buf);
    }
    int seen[10] = {0};
    for (int i = 0; i < 10; i++) {
        msg m;
        assert_true(recv_msg(d, &m, GUARD_MS));
        assert_int_equal(m.n, 1);
        int w, k;
        assert_int_equal(sscanf(m.frame[0], "w%d|p%d", &w, &k), 2);
        assert_true(w == 0 || w == 1);
        assert_true(k >= 0 && k < 10);
        seen[k]++;
        msg_free(&m);
    }
    for (int i = 0; i < 10; i++) assert_int_equal(seen[i], 1);

    /* 7 frames from a DEALER: 8 with the identity, the most allowed; the route comes back */
    const char *f7[7] = {"a", "b", "", "c", "d", "e", "payload"};
    send_frames(d, f7, NULL, 7);
    msg m;
    assert_true(recv_msg(d, &m, GUARD_MS));
    assert_int_equal(m.n, 7);
    for (int i = 0; i < 6; i++) assert_string_equal(m.frame[i], f7[i]);
    assert_non_null(strstr(m.frame[6], "|payload"));
    msg_free(&m);
    assert_int_equal(get(&s.sh, &s.sh.calls), 13);

    void *socks[] = {d, r};
    close_all(zctx, socks, 2);
    server_stop(&s);
    assert_int_equal(s.sh.inside, 0);
}

#define NCLIENTS 8
#define NREQS    50

typedef struct cl_arg {
    void *zctx;
    const char *endpoint;
    int id;
    int bad; /* replies that were not this client's, repeated or missing */
} cl_arg;

static void *client_main(void *p)
{
    cl_arg *a = p;
    void *sock = zmq_socket(a->zctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_connect(sock, a->endpoint)) {
        a->bad = NREQS;
        zmq_close(sock);
        return NULL;
    }
    char buf[64];
    for (int i = 0; i < NREQS; i++) {
        int n = snprintf(buf, sizeof buf, "c%d-%d", a->id, i);
        zmq_send(sock, buf, (size_t)n, 0);
    }
    int seen[NREQS] = {0};
    for (int i = 0; i < NREQS; i++) {
        zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, GUARD_MS) <= 0) break;
        int n = zmq_recv(sock, buf, sizeof buf - 1, 0);
        if (n < 0) break;
        buf[n] = '\0';
        int w, c, k;
        if (sscanf(buf, "w%d|c%d-%d", &w, &c, &k) != 3 || c != a->id || k < 0 || k >= NREQS)
            a->bad++;
        else
            seen[k]++;
    }
    for (int i = 0; i < NREQS; i++)
        if (seen[i] != 1) a->bad++;
    zmq_close(sock);
    return NULL;
}

/* Many DEALER clients at once: each gets exactly its own replies, every request once. */
static void test_many_clients(void **state)
{
    (void)state;
    server s;
    server_init(&s, 4);
    assert_true(server_start(&s));
    void *zctx = zmq_ctx_new();
    pthread_t tid[NCLIENTS];
    cl_arg args[NCLIENTS];
    for (int i = 0; i < NCLIENTS; i++) {
        args[i] = (cl_arg){.zctx = zctx, .endpoint = s.endpoint, .id = i};
        assert_int_equal(pthread_create(&tid[i], NULL, client_main, &args[i]), 0);
    }
    for (int i = 0; i < NCLIENTS; i++) {
        pthread_join(tid[i], NULL);
        assert_int_equal(args[i].bad, 0);
    }
    zmq_ctx_term(zctx);
    assert_int_equal(get(&s.sh, &s.sh.calls), NCLIENTS * NREQS);
    server_stop(&s);
    assert_true(s.sh.used != 0 && s.sh.used < (1u << 4));
}

/* More than 8 frames: an Error too_large naming the request, no worker involved. */
static void test_too_many_frames(void **state)
{
    (void)state;
    server s;
    server_init(&s, 2);
    assert_true(server_start(&s));
    void *zctx = zmq_ctx_new();
    void *d = client(zctx, ZMQ_DEALER, s.endpoint);

    uint8_t *req;
    size_t rlen;
    assert_int_equal(ps_wire_encode_health(77, 100, &req, &rlen, NULL), 0);
    for (int nframes = 8; nframes <= 40; nframes += 32) { /* 9 and 41 with the identity */
        const char *frames[40];
        size_t lens[40];
        for (int i = 0; i < nframes - 1; i++) {
            frames[i] = "route";
            lens[i] = 5;
        }
        frames[nframes - 1] = (const char *)req;
        lens[nframes - 1] = rlen;
        send_frames(d, frames, lens, nframes);
        msg m;
        assert_true(recv_msg(d, &m, GUARD_MS));
        assert_int_equal(m.n, 1);
        Persrv__Envelope *e = NULL;
        assert_int_equal(ps_wire_decode(m.frame[0], m.len[0], 0, &e, NULL), 0);
        assert_int_equal(e->body_case, PERSRV__ENVELOPE__BODY_ERROR);
        assert_int_equal(ps_wire_error_code(e->error), PS_ETOOBIG);
        assert_true(e->request_id == 77);
        ps_wire_free(e);
        msg_free(&m);
    }
    free(req);
    assert_int_equal(get(&s.sh, &s.sh.calls), 0);
    /* the connection is still good */
    send_str(d, "after");
    expect_reply(d, "after", NULL);
    assert_int_equal(get(&s.sh, &s.sh.calls), 1);
    void *socks[] = {d};
    close_all(zctx, socks, 1);
    server_stop(&s);
}

/* A frame over max_frame: ZeroMQ drops the peer; no worker sees it; others are served. */
static void test_max_frame(void **state)
{
    (void)state;
    server s;
    server_init(&s, 2);
    s.cfg.max_frame = 1024;
    assert_true(server_start(&s));
    void *zctx = zmq_ctx_new();

    void *big = zmq_socket(zctx, ZMQ_DEALER);
    assert_non_null(big);
    int zero = 0;
    zmq_setsockopt(big, ZMQ_LINGER, &zero, sizeof zero);
    void *mon = monitor(zctx, big, "big", ZMQ_EVENT_DISCONNECTED);
    assert_int_equal(zmq_connect(big, s.endpoint), 0);
    char *frame = malloc(2048);
    assert_non_null(frame);
    memset(frame, 'z', 2048);
    const char *fr[1] = {frame};
    size_t len = 1025;
    send_frames(big, fr, &len, 1);
    assert_true(monitor_wait(mon, ZMQ_EVENT_DISCONNECTED));

    void *ok = client(zctx, ZMQ_DEALER, s.endpoint);
    len = 1024; /* the cap itself is allowed */
    memcpy(frame, "max:", 4);
    frame[1024] = '\0';
    send_frames(ok, fr, &len, 1);
    expect_reply(ok, frame, NULL);
    free(frame);
    assert_int_equal(get(&s.sh, &s.sh.calls), 1);
    pthread_mutex_lock(&s.sh.mu);
    assert_int_equal(s.sh.max_len, 1024);
    pthread_mutex_unlock(&s.sh.mu);

    void *socks[] = {big, mon, ok};
    close_all(zctx, socks, 3);
    server_stop(&s);
}

/* max_inflight 1: while one request is in a worker the next stays out of the workers, whatever
 * the number of idle workers; 2: two run at once. */
static void test_max_inflight(void **state)
{
    (void)state;
    server s;
    server_init(&s, 3);
    s.cfg.max_inflight = 1;
    assert_true(server_start(&s));
    void *zctx = zmq_ctx_new();
    void *a = client(zctx, ZMQ_DEALER, s.endpoint);
    void *b = client(zctx, ZMQ_DEALER, s.endpoint);
    send_str(a, "slow-a");
    assert_true(wait_for(&s.sh, &s.sh.slow_entered, 1, GUARD_MS));
    send_str(b, "quick-b");
    assert_false(wait_for(&s.sh, &s.sh.calls, 2, 300)); /* see the file comment */
    open_gate(&s.sh);
    expect_reply(a, "slow-a", NULL);
    expect_reply(b, "quick-b", NULL);
    assert_int_equal(get(&s.sh, &s.sh.calls), 2);
    assert_int_equal(get(&s.sh, &s.sh.max_inside), 1);
    void *socks[] = {a, b};
    close_all(zctx, socks, 2);
    server_stop(&s);

    /* the control: with 2 in flight both "pair" requests meet in the workers */
    server_init(&s, 3);
    s.cfg.max_inflight = 2;
    assert_true(server_start(&s));
    zctx = zmq_ctx_new();
    a = client(zctx, ZMQ_DEALER, s.endpoint);
    b = client(zctx, ZMQ_DEALER, s.endpoint);
    warm_up(&s, a);
    send_str(a, "pair-a");
    send_str(b, "pair-b");
    int wa, wb;
    expect_reply(a, "pair-a", &wa);
    expect_reply(b, "pair-b", &wb);
    assert_int_not_equal(wa, wb);
    assert_int_equal(get(&s.sh, &s.sh.pair_timeouts), 0);
    assert_int_equal(get(&s.sh, &s.sh.max_inside), 2);
    void *socks2[] = {a, b};
    close_all(zctx, socks2, 2);
    server_stop(&s);
}

/* The stop drains: a slow request in flight when the stop byte is read is answered, one sent
 * after that is never handled, and ps_zserve returns 0. */
static void test_stop_drains(void **state)
{
    (void)state;
    server s;
    server_init(&s, 2);
    assert_true(server_start(&s));
    void *zctx = zmq_ctx_new();
    void *a = client(zctx, ZMQ_DEALER, s.endpoint);
    send_str(a, "slow-drain");
    assert_true(wait_for(&s.sh, &s.sh.slow_entered, 1, GUARD_MS));

    server_signal_stop(&s);
    /* the loop has read the byte (and is stopping) once the pipe is empty again */
    for (int i = 0; i < GUARD_MS; i++) {
        int avail = 1;
        assert_int_equal(ioctl(s.stop[0], FIONREAD, &avail), 0);
        if (avail == 0) break;
        usleep(1000);
    }
    int avail = 1;
    assert_int_equal(ioctl(s.stop[0], FIONREAD, &avail), 0);
    assert_int_equal(avail, 0);
    pthread_mutex_lock(&s.mu);
    assert_false(s.done); /* a request is in flight */
    pthread_mutex_unlock(&s.mu);

    void *late = client(zctx, ZMQ_DEALER, s.endpoint);
    send_str(late, "late");
    open_gate(&s.sh);
    expect_reply(a, "slow-drain", NULL);
    assert_int_equal(server_join(&s), 0);
    assert_int_equal(s.sh.calls, 1); /* "late" never reached a worker */
    assert_int_equal(s.sh.inside, 0);
    void *socks[] = {a, late};
    close_all(zctx, socks, 2);
}

/* Inline answers: with every worker held by a slow request, a "ping" (the health probe's
 * stand-in) from a DEALER and from a REQ peer is answered by the loop itself, along its route,
 * while a request for a worker sent before it is still unanswered (and unhandled: no worker is
 * free); released, the workers answer the rest. Without inline_fn the pings would wait behind
 * the slow requests and this test fails. */
static void test_inline_while_busy(void **state)
{
    (void)state;
    server s;
    server_init(&s, 2);
    s.cfg.inline_fn = inline_handler;
    s.cfg.inline_state = &s.sh;
    assert_true(server_start(&s));
    void *zctx = zmq_ctx_new();
    void *a = client(zctx, ZMQ_DEALER, s.endpoint);
    void *b = client(zctx, ZMQ_DEALER, s.endpoint);
    void *p = client(zctx, ZMQ_DEALER, s.endpoint);
    void *r = client(zctx, ZMQ_REQ, s.endpoint);
    warm_up(&s, a); /* both workers connected: the next two requests go one to each */
    int warm = get(&s.sh, &s.sh.calls);

    send_str(a, "slow-1");
    send_str(a, "slow-2");
    assert_true(wait_for(&s.sh, &s.sh.slow_entered, 2, GUARD_MS)); /* every worker held */
    send_str(b, "search");
    send_str(p, "ping-dealer");
    expect_exact(p, "inline|ping-dealer");
    send_str(r, "ping-req");
    expect_exact(r, "inline|ping-req");
    /* "search", whether the loop has read it yet or not, has no free worker: neither handled
     * nor answered */
    assert_int_equal(get(&s.sh, &s.sh.calls), warm + 2);
    msg m;
    assert_false(recv_msg(b, &m, 0));
    assert_int_equal(atomic_load(&s.sh.inline_answered), 2);

    open_gate(&s.sh);
    int seen1 = 0, seen2 = 0;
    for (int i = 0; i < 2; i++) {
        assert_true(recv_msg(a, &m, GUARD_MS));
        assert_int_equal(m.n, 1);
        if (strstr(m.frame[0], "|slow-1")) seen1++;
        if (strstr(m.frame[0], "|slow-2")) seen2++;
        msg_free(&m);
    }
    assert_int_equal(seen1, 1);
    assert_int_equal(seen2, 1);
    expect_reply(b, "search", NULL);
    /* a ping once the workers are free is still the loop's, never a worker's */
    send_str(p, "ping-idle");
    expect_exact(p, "inline|ping-idle");
    assert_int_equal(get(&s.sh, &s.sh.calls), warm + 3);
    assert_int_equal(atomic_load(&s.sh.inline_answered), 3);
    assert_int_equal(atomic_load(&s.sh.inline_offered), warm + 6);

    void *socks[] = {a, b, p, r};
    close_all(zctx, socks, 4);
    server_stop(&s);
}

/* Serving on the loop (ps_zserve with no workers): DEALER and REQ peers answered along their
 * routes by the handler's state 0, on the thread that runs the server (the one on_ready is
 * called from), and the stop returns 0. */
static void test_loop_roundtrip(void **state)
{
    (void)state;
    server s;
    server_init(&s, 0);
    assert_true(server_start(&s));
    void *zctx = zmq_ctx_new();
    void *d = client(zctx, ZMQ_DEALER, s.endpoint);
    void *r = client(zctx, ZMQ_REQ, s.endpoint);
    const char *frames[] = {"route-1", "route-2", "", "payload"};
    send_frames(d, frames, NULL, 4);
    msg m;
    assert_true(recv_msg(d, &m, GUARD_MS));
    assert_int_equal(m.n, 4);
    assert_string_equal(m.frame[0], "route-1");
    assert_string_equal(m.frame[3], "w0|payload");
    msg_free(&m);
    send_str(r, "via-req");
    expect_exact(r, "w0|via-req");
    pthread_mutex_lock(&s.sh.mu);
    int same = pthread_equal(s.sh.thread, s.tid);
    pthread_mutex_unlock(&s.sh.mu);
    assert_true(same); /* no worker thread: the server's own */
    assert_int_equal(get(&s.sh, &s.sh.calls), 2);
    void *socks[] = {d, r};
    close_all(zctx, socks, 2);
    server_stop(&s);
}

/* A server on the loop in the test's own context, reached over inproc: a message sent on an
 * inproc pipe is in the server's queue when zmq_send returns, so what the loop finds when it
 * next reads is known (over TCP it would depend on the I/O threads). */
typedef struct lserver {
    void *zctx;
    ps_zserver_t *srv;
    server s; /* its handler state, stop pipe and thread */
} lserver;

static void *lserver_main(void *arg)
{
    lserver *l = arg;
    l->s.rc = ps_zserver_run(l->srv, l->s.stop[0], &l->s.err);
    return NULL;
}

static void lserver_start(lserver *l, const char *name)
{
    char back[64];
    server_init(&l->s, 0);
    snprintf(l->s.endpoint, sizeof l->s.endpoint, "inproc://%s-front", name);
    snprintf(back, sizeof back, "inproc://%s-back", name);
    l->s.cfg.listen = l->s.endpoint;
    l->s.cfg.backend = back;
    l->s.cfg.loop_fn = handler;
    l->s.cfg.loop_state = &l->s.ws[0];
    l->s.cfg.inline_fn = inline_handler;
    l->s.cfg.inline_state = &l->s.sh;
    l->zctx = zmq_ctx_new();
    l->srv = ps_zserver_bind(l->zctx, &l->s.cfg, &l->s.err);
    assert_non_null(l->srv);
    assert_int_equal(pipe(l->s.stop), 0);
    assert_int_equal(pthread_create(&l->s.tid, NULL, lserver_main, l), 0);
}

static void lserver_join(lserver *l, void **socks, int n)
{
    assert_int_equal(server_join(&l->s), 0);
    ps_zserver_close(l->srv);
    close_all(l->zctx, socks, n);
}

/* On the loop, a probe waits for the request being answered, never behind the queue: with
 * "hold-1" in the handler, "hold-2" and "hold-3" queued behind it and a "ping" sent after them,
 * the ping is answered once hold-1 ends, while hold-2 is still held and hold-3 not begun (a
 * loop answering in arrival order would answer it after both); then the queue runs in order. */
static void test_loop_probe_ahead_of_queue(void **state)
{
    (void)state;
    lserver l;
    lserver_start(&l, "ahead");
    shared *sh = &l.s.sh;
    void *a = client(l.zctx, ZMQ_DEALER, l.s.endpoint);
    void *b = client(l.zctx, ZMQ_DEALER, l.s.endpoint);
    void *p = client(l.zctx, ZMQ_DEALER, l.s.endpoint);
    send_str(a, "hold-1");
    assert_true(wait_for(sh, &sh->held, 1, GUARD_MS));
    send_str(b, "hold-2");
    send_str(b, "hold-3");
    send_str(p, "ping-queued");
    release(sh, 1);
    expect_reply(a, "hold-1", NULL);
    expect_exact(p, "inline|ping-queued");
    assert_true(wait_for(sh, &sh->held, 2, GUARD_MS));
    assert_int_equal(get(sh, &sh->held), 2); /* hold-3 still waits */
    msg m;
    assert_false(recv_msg(b, &m, 0));
    release(sh, 3);
    expect_reply(b, "hold-2", NULL);
    expect_reply(b, "hold-3", NULL);
    assert_int_equal(atomic_load(&sh->inline_answered), 1);
    assert_int_equal(atomic_load(&sh->inline_offered), 4);
    server_signal_stop(&l.s);
    void *socks[] = {a, b, p};
    lserver_join(&l, socks, 3);
}

/* On the loop, the stop drains what was read: with "hold-1" in the handler and "quick-2" queued,
 * the stop byte is read when hold-1 ends; quick-2 is still answered, "late" (sent before the
 * stop was read but not yet read from the front) is never handled, and the run returns 0. */
static void test_loop_stop_drains(void **state)
{
    (void)state;
    lserver l;
    lserver_start(&l, "drain");
    shared *sh = &l.s.sh;
    void *a = client(l.zctx, ZMQ_DEALER, l.s.endpoint);
    void *b = client(l.zctx, ZMQ_DEALER, l.s.endpoint);
    send_str(a, "hold-1");
    assert_true(wait_for(sh, &sh->held, 1, GUARD_MS));
    send_str(b, "hold-2");
    send_str(b, "quick-3");
    release(sh, 1);
    expect_reply(a, "hold-1", NULL);
    assert_true(wait_for(sh, &sh->held, 2, GUARD_MS)); /* hold-2 in, quick-3 queued */
    send_str(a, "late");
    server_signal_stop(&l.s);
    release(sh, 2);
    expect_reply(b, "hold-2", NULL);
    expect_reply(b, "quick-3", NULL);
    void *socks[] = {a, b};
    lserver_join(&l, socks, 2);
    assert_int_equal(sh->calls, 3); /* "late" never handled */
}

/* Errors that keep it from starting: returned, with err set; no ready file. */
static void test_start_errors(void **state)
{
    (void)state;
    server s;
    server_init(&s, 1);
    s.cfg.listen = "bogus://nowhere";
    char ready[128];
    snprintf(ready, sizeof ready, "%s/ready-bad", tmpdir);
    s.ready_file = ready;
    assert_false(server_start(&s));
    assert_int_equal(server_join(&s), PS_EUNAVAIL);
    assert_int_equal(s.err.code, PS_EUNAVAIL);
    assert_non_null(strstr(s.err.msg, "bogus://nowhere"));
    struct stat sb;
    assert_int_not_equal(stat(ready, &sb), 0);

    /* an address in use */
    server first;
    server_init(&first, 1);
    assert_true(server_start(&first));
    server_init(&s, 1);
    s.cfg.listen = first.endpoint;
    s.cfg.backend = "inproc://test-second";
    assert_false(server_start(&s));
    assert_int_equal(server_join(&s), PS_EUNAVAIL);
    server_stop(&first);

    /* a ready file that cannot be written */
    server_init(&s, 1);
    snprintf(ready, sizeof ready, "%s/no/such/dir/ready", tmpdir);
    s.ready_file = ready;
    assert_false(server_start(&s));
    assert_int_equal(server_join(&s), PS_EIO);
    assert_non_null(strstr(s.err.msg, "ready-file"));
}

/* CURVE: a client on the allow-list is answered; a stranger's handshake is refused (its
 * monitor sees the ZAP refusal) and nothing reaches a worker. */
static void test_curve(void **state)
{
    (void)state;
    ps_curve_keypair srv, cli, stranger;
    ps_err err = {0, ""};
    if (ps_curve_keypair_new(&srv, &err) == PS_EUNAVAIL) skip();
    assert_int_equal(ps_curve_keypair_new(&cli, &err), 0);
    assert_int_equal(ps_curve_keypair_new(&stranger, &err), 0);
    assert_int_equal(ps_curve_keypair_save(&srv, tmpdir, "server", &err), 0);
    assert_int_equal(ps_curve_keypair_save(&cli, tmpdir, "client", &err), 0);
    char key[128], allow[128];
    snprintf(key, sizeof key, "%s/server.key", tmpdir);
    snprintf(allow, sizeof allow, "%s/client.pub", tmpdir);
    ps_curve_t *curve = ps_curve_load(key, allow, NULL, &err);
    if (!curve) fail_msg("curve: %s", err.msg);

    server s;
    server_init(&s, 2);
    s.cfg.curve = curve;
    assert_true(server_start(&s));
    void *zctx = zmq_ctx_new();

    void *ok = zmq_socket(zctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(ok, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_setsockopt(ok, ZMQ_CURVE_SERVERKEY, srv.pub, PS_CURVE_Z85_LEN + 1), 0);
    assert_int_equal(zmq_setsockopt(ok, ZMQ_CURVE_PUBLICKEY, cli.pub, PS_CURVE_Z85_LEN + 1), 0);
    assert_int_equal(zmq_setsockopt(ok, ZMQ_CURVE_SECRETKEY, cli.sec, PS_CURVE_Z85_LEN + 1), 0);
    assert_int_equal(zmq_connect(ok, s.endpoint), 0);
    send_str(ok, "allowed");
    expect_reply(ok, "allowed", NULL);

    void *bad = zmq_socket(zctx, ZMQ_DEALER);
    zmq_setsockopt(bad, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_setsockopt(bad, ZMQ_CURVE_SERVERKEY, srv.pub, PS_CURVE_Z85_LEN + 1), 0);
    assert_int_equal(zmq_setsockopt(bad, ZMQ_CURVE_PUBLICKEY, stranger.pub, PS_CURVE_Z85_LEN + 1),
                     0);
    assert_int_equal(zmq_setsockopt(bad, ZMQ_CURVE_SECRETKEY, stranger.sec, PS_CURVE_Z85_LEN + 1),
                     0);
    void *mon = monitor(zctx, bad, "stranger",
                        ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_SUCCEEDED);
    assert_int_equal(zmq_connect(bad, s.endpoint), 0);
    send_str(bad, "stranger");
    assert_true(monitor_wait(mon, ZMQ_EVENT_HANDSHAKE_FAILED_AUTH));

    /* the allowed client is still served; the stranger's request never reached a worker */
    send_str(ok, "again");
    expect_reply(ok, "again", NULL);
    assert_int_equal(get(&s.sh, &s.sh.calls), 2);
    void *socks[] = {ok, bad, mon};
    close_all(zctx, socks, 3);
    server_stop(&s);
    ps_curve_free(curve);
}

int main(void)
{
    ps_log_level = PS_LOG_OFF;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip, tmp_setup, tmp_teardown),
        cmocka_unit_test(test_many_clients),
        cmocka_unit_test(test_too_many_frames),
        cmocka_unit_test(test_max_frame),
        cmocka_unit_test(test_max_inflight),
        cmocka_unit_test(test_stop_drains),
        cmocka_unit_test(test_inline_while_busy),
        cmocka_unit_test(test_loop_roundtrip),
        cmocka_unit_test(test_loop_probe_ahead_of_queue),
        cmocka_unit_test(test_loop_stop_drains),
        cmocka_unit_test_setup_teardown(test_start_errors, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_curve, tmp_setup, tmp_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
