/*
 * profile_client.c — the test client of tests/integration/test_profile_repl.sh (and
 * test_click.sh): talks to running `profile` daemons over ZeroMQ (DEALER, 30 s timeouts).
 * Exit status: 0 on success, 1 on a failed check or no answer (die), 3 when a request was
 * answered with an Error (printed as "error CODE: MESSAGE").
 *
 *   profile_client freeport
 *       print a TCP port on 127.0.0.1 that was free a moment ago
 *   profile_client click EP USER STICKER DIM [QUERY [CLICK_ID]]
 *       one click, packed without ps_wire's checks (an empty USER reaches the daemon); the
 *       embedding (DIM floats) is derived from the sticker id; prints
 *       "seq=S history=H centroids=K" and, for a click id the daemon had stored, " duplicate"
 *   profile_client clicks EP USER        the user's click log, one sticker id a line, oldest first
 *   profile_client profile EP USER       "k=K seq=S" (k=0: no profile)
 *   profile_client checksum EP           "CHECKSUM KEYS SEQ"
 *   profile_client health EP             "ready=R seq=S"
 *   profile_client flood EP NUSERS NCLICKS DIM [PREFIX]
 *       NCLICKS clicks, click i by user PREFIX<i % NUSERS> (PREFIX default "u") on sticker
 *       1 + (i * 7919) % 1000 (so users click some stickers again), up to WINDOW in flight;
 *       every one must be acknowledged; prints "acked=N"
 *   profile_client raw EP HEX            send the bytes HEX as one frame, print the reply like
 *                                        an Error above (exit 3) or "ok BODY"
 *   profile_client centroids EP USER     "k=K hash=H": H hashes every radius and centroid value
 *                                        bit for bit (k=0 hash of nothing: no profile)
 *   profile_client offline DIR USER      the same line for USER of a builder profiles directory
 *                                        (DIR/profiles of `builder build --shards`)
 *   profile_client loadframe USER DIM N FIRST
 *       write to stdout one frame of POST /admin/load-profiles: u32LE length + an Envelope
 *       holding a LoadProfileRequest for USER with N history stickers FIRST..FIRST+N-1
 *       (embeddings as for click) and one centroid (sticker FIRST's embedding, radius 1)
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

#include "ps/curve.h"
#include "ps/rand.h"
#include "ps/store.h"
#include "ps/wire.h"

#define TIMEOUT_MS 30000 /* a reply later than this is a failure, not a measurement */
#define WINDOW     16    /* flood: clicks in flight */
#define MAX_DIM    4096

static void *zctx;
static uint64_t next_id = 1;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("profile_client: FAIL: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void *connect_to(const char *ep)
{
    void *s = zmq_socket(zctx, ZMQ_DEALER);
    int t = TIMEOUT_MS, zero = 0;
    int64_t maxmsg = 64 << 20;
    if (!s || zmq_setsockopt(s, ZMQ_RCVTIMEO, &t, sizeof t) ||
        zmq_setsockopt(s, ZMQ_SNDTIMEO, &t, sizeof t) ||
        zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) ||
        ps_curve_env_client(s, ep, NULL) || zmq_connect(s, ep))
        die("connect %s: %s", ep, zmq_strerror(zmq_errno()));
    return s;
}

static void send_frame(void *s, const void *buf, size_t len)
{
    if (zmq_send(s, buf, len, 0) != (int)len) die("send: %s", zmq_strerror(zmq_errno()));
}

/* Receive one reply frame and decode it (the daemon's replies must always decode). */
static Persrv__Envelope *recv_env(void *s)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, s, 0) < 0) die("no reply: %s", zmq_strerror(zmq_errno()));
    if (zmq_msg_more(&m)) die("reply has more than one frame");
    Persrv__Envelope *env = NULL;
    ps_err err = {0, ""};
    if (ps_wire_decode(zmq_msg_data(&m), zmq_msg_size(&m), 64 << 20, &env, &err))
        die("reply does not decode: %s", err.msg);
    zmq_msg_close(&m);
    return env;
}

/* Pack e (request_id set here) and send it; returns the request_id. */
static uint64_t send_env(void *s, Persrv__Envelope *e)
{
    uint8_t *buf;
    size_t len;
    ps_err err = {0, ""};
    e->version = PS_WIRE_VERSION;
    e->request_id = next_id++;
    if (ps_wire_pack(e, &buf, &len, &err)) die("encode: %s", err.msg);
    send_frame(s, buf, len);
    free(buf);
    return e->request_id;
}

/* Pack e with protobuf-c directly, bypassing ps_wire's checks (the daemon must make them):
 * a click with an empty user still reaches it. Returns the request_id. */
static uint64_t send_raw(void *s, Persrv__Envelope *e)
{
    e->version = PS_WIRE_VERSION;
    e->request_id = next_id++;
    size_t len = protobuf_c_message_get_packed_size(&e->base);
    uint8_t *b = malloc(len ? len : 1);
    if (!b) die("out of memory");
    protobuf_c_message_pack(&e->base, b);
    send_frame(s, b, len);
    free(b);
    return e->request_id;
}

/* One request (raw: unchecked): the reply must echo the request_id; an Error is printed and
 * exits 3. */
static Persrv__Envelope *rpc_how(void *s, Persrv__Envelope *e, Persrv__Envelope__BodyCase want,
                                 int raw)
{
    uint64_t id = raw ? send_raw(s, e) : send_env(s, e);
    Persrv__Envelope *r = recv_env(s);
    if (r->request_id != id)
        die("request_id %llu, expected %llu", (unsigned long long)r->request_id,
            (unsigned long long)id);
    if (r->body_case == PERSRV__ENVELOPE__BODY_ERROR) {
        printf("error %s: %s\n", r->error->code, r->error->message);
        ps_wire_free(r);
        zmq_close(s);
        zmq_ctx_term(zctx);
        exit(3);
    }
    if (r->body_case != want) die("reply body %d, expected %d", r->body_case, want);
    return r;
}

static Persrv__Envelope *rpc(void *s, Persrv__Envelope *e, Persrv__Envelope__BodyCase want)
{
    return rpc_how(s, e, want, 0);
}

/* The embedding of a sticker: 8 "series" directions plus noise, derived from the id. */
static void embedding(uint64_t sticker, size_t dim, float *v)
{
    uint64_t series = sticker % 8, x = sticker * 0x9E3779B97F4A7C15ull + 1;
    for (size_t j = 0; j < dim; j++) {
        double noise = (double)(ps_splitmix64(&x) >> 11) / 9007199254740992.0 - 0.5;
        v[j] = (float)((j % 8 == series ? 1.0 : 0.0) + 0.2 * noise);
    }
}

static size_t parse_dim(const char *s)
{
    long d = atol(s);
    if (d < 1 || d > MAX_DIM) die("DIM %s: want 1..%d", s, MAX_DIM);
    return (size_t)d;
}

static void click_env(Persrv__Envelope *e, Persrv__ClickRequest *c, const char *user,
                      uint64_t sticker, const char *query, float *emb, size_t dim)
{
    persrv__envelope__init(e);
    persrv__click_request__init(c);
    c->user = (char *)user;
    c->sticker_id = sticker;
    c->query = (char *)query;
    c->n_embedding = dim;
    c->embedding = emb;
    embedding(sticker, dim, emb);
    e->body_case = PERSRV__ENVELOPE__BODY_CLICK;
    e->click = c;
}

static int cmd_click(int argc, char **argv)
{
    if (argc < 4 || argc > 6) die("usage: click EP USER STICKER DIM [QUERY [CLICK_ID]]");
    static float emb[MAX_DIM];
    size_t dim = parse_dim(argv[3]);
    Persrv__Envelope e;
    Persrv__ClickRequest c;
    click_env(&e, &c, argv[1], strtoull(argv[2], NULL, 10), argc >= 5 ? argv[4] : "", emb, dim);
    if (argc == 6) c.click_id = argv[5];
    void *s = connect_to(argv[0]);
    Persrv__Envelope *r = rpc_how(s, &e, PERSRV__ENVELOPE__BODY_CLICK_REPLY, 1);
    printf("seq=%llu history=%u centroids=%u%s\n", (unsigned long long)r->click_reply->seq,
           r->click_reply->history, r->click_reply->centroids,
           r->click_reply->duplicate ? " duplicate" : "");
    ps_wire_free(r);
    zmq_close(s);
    return 0;
}

static int cmd_clicks(int argc, char **argv)
{
    if (argc != 2) die("usage: clicks EP USER");
    Persrv__Envelope e = PERSRV__ENVELOPE__INIT;
    Persrv__ClicksRequest c = PERSRV__CLICKS_REQUEST__INIT;
    c.user = argv[1];
    e.body_case = PERSRV__ENVELOPE__BODY_GET_CLICKS;
    e.get_clicks = &c;
    void *s = connect_to(argv[0]);
    Persrv__Envelope *r = rpc(s, &e, PERSRV__ENVELOPE__BODY_CLICKS_REPLY);
    for (size_t i = 0; i < r->clicks_reply->n_sticker_ids; i++)
        printf("%llu\n", (unsigned long long)r->clicks_reply->sticker_ids[i]);
    ps_wire_free(r);
    zmq_close(s);
    return 0;
}

static int cmd_profile(int argc, char **argv)
{
    if (argc != 2) die("usage: profile EP USER");
    Persrv__Envelope e = PERSRV__ENVELOPE__INIT;
    Persrv__ProfileRequest p = PERSRV__PROFILE_REQUEST__INIT;
    p.user = argv[1];
    e.body_case = PERSRV__ENVELOPE__BODY_GET_PROFILE;
    e.get_profile = &p;
    void *s = connect_to(argv[0]);
    Persrv__Envelope *r = rpc(s, &e, PERSRV__ENVELOPE__BODY_PROFILE_REPLY);
    Persrv__ProfileReply *pr = r->profile_reply;
    if (pr->found != (pr->n_centroids > 0))
        die("profile of %s: found=%d with %zu centroids", argv[1], pr->found, pr->n_centroids);
    printf("k=%zu seq=%llu\n", pr->n_centroids, (unsigned long long)pr->seq);
    ps_wire_free(r);
    zmq_close(s);
    return 0;
}

static int cmd_checksum(int argc, char **argv)
{
    if (argc != 1) die("usage: checksum EP");
    Persrv__Envelope e = PERSRV__ENVELOPE__INIT;
    Persrv__ChecksumRequest c = PERSRV__CHECKSUM_REQUEST__INIT;
    e.body_case = PERSRV__ENVELOPE__BODY_CHECKSUM;
    e.checksum = &c;
    void *s = connect_to(argv[0]);
    Persrv__Envelope *r = rpc(s, &e, PERSRV__ENVELOPE__BODY_CHECKSUM_REPLY);
    printf("%016llx %llu %llu\n", (unsigned long long)r->checksum_reply->checksum,
           (unsigned long long)r->checksum_reply->keys, (unsigned long long)r->checksum_reply->seq);
    ps_wire_free(r);
    zmq_close(s);
    return 0;
}

static int cmd_health(int argc, char **argv)
{
    if (argc != 1) die("usage: health EP");
    void *s = connect_to(argv[0]);
    uint8_t *buf;
    size_t len;
    uint64_t id = next_id++;
    if (ps_wire_encode_health(id, 0, &buf, &len, NULL)) die("encode health");
    send_frame(s, buf, len);
    free(buf);
    Persrv__Envelope *r = recv_env(s);
    if (r->body_case != PERSRV__ENVELOPE__BODY_HEALTH_REPLY || r->request_id != id)
        die("health: reply body %d", r->body_case);
    printf("ready=%d seq=%llu\n", r->health_reply->ready,
           (unsigned long long)r->health_reply->snapshot_version);
    ps_wire_free(r);
    zmq_close(s);
    return 0;
}

static int cmd_flood(int argc, char **argv)
{
    if (argc < 4 || argc > 5) die("usage: flood EP NUSERS NCLICKS DIM [PREFIX]");
    long nusers = atol(argv[1]), n = atol(argv[2]), sent = 0, acked = 0;
    size_t dim = parse_dim(argv[3]);
    const char *prefix = argc == 5 ? argv[4] : "u";
    if (nusers < 1 || n < 0) die("flood: NUSERS >= 1, NCLICKS >= 0");
    static float emb[MAX_DIM];
    void *s = connect_to(argv[0]);
    while (acked < n) {
        while (sent < n && sent - acked < WINDOW) {
            char user[128], query[32];
            Persrv__Envelope e;
            Persrv__ClickRequest c;
            snprintf(user, sizeof user, "%s%ld", prefix, sent % nusers);
            snprintf(query, sizeof query, "q%ld", sent % 13);
            click_env(&e, &c, user, 1 + ((uint64_t)sent * 7919) % 1000, query, emb, dim);
            send_env(s, &e);
            sent++;
        }
        Persrv__Envelope *r = recv_env(s);
        if (r->body_case != PERSRV__ENVELOPE__BODY_CLICK_REPLY)
            die("flood: click %ld answered with body %d%s%s", acked, r->body_case,
                r->body_case == PERSRV__ENVELOPE__BODY_ERROR ? ": " : "",
                r->body_case == PERSRV__ENVELOPE__BODY_ERROR ? r->error->message : "");
        if (r->click_reply->seq == 0 || r->click_reply->centroids == 0)
            die("flood: click acknowledged with seq %llu, %u centroids",
                (unsigned long long)r->click_reply->seq, r->click_reply->centroids);
        ps_wire_free(r);
        acked++;
    }
    printf("acked=%ld\n", acked);
    zmq_close(s);
    return 0;
}

static int cmd_raw(int argc, char **argv)
{
    if (argc != 2) die("usage: raw EP HEX");
    size_t hl = strlen(argv[1]), len = hl / 2;
    uint8_t *buf = malloc(len + 1);
    if (!buf || hl % 2) die("raw: HEX of an even length");
    for (size_t i = 0; i < len; i++) {
        unsigned v;
        if (sscanf(argv[1] + 2 * i, "%2x", &v) != 1) die("raw: bad HEX");
        buf[i] = (uint8_t)v;
    }
    void *s = connect_to(argv[0]);
    send_frame(s, buf, len);
    free(buf);
    Persrv__Envelope *r = recv_env(s);
    int rc = 0;
    if (r->body_case == PERSRV__ENVELOPE__BODY_ERROR) {
        printf("error %s: %s\n", r->error->code, r->error->message);
        rc = 3;
    } else {
        printf("ok %d\n", r->body_case);
    }
    ps_wire_free(r);
    zmq_close(s);
    return rc;
}

/* FNV-1a 64 over bytes. */
static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    for (size_t i = 0; i < n; i++) h = (h ^ ((const uint8_t *)p)[i]) * 0x100000001b3ull;
    return h;
}

static void print_centroids(size_t k, const double *radius, const float *const *vec, size_t dim)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t c = 0; c < k; c++) {
        h = fnv(h, &radius[c], sizeof radius[c]);
        h = fnv(h, vec[c], dim * sizeof(float));
    }
    printf("k=%zu hash=%016llx\n", k, (unsigned long long)h);
}

static int cmd_centroids(int argc, char **argv)
{
    if (argc != 2) die("usage: centroids EP USER");
    Persrv__Envelope e = PERSRV__ENVELOPE__INIT;
    Persrv__ProfileRequest p = PERSRV__PROFILE_REQUEST__INIT;
    p.user = argv[1];
    e.body_case = PERSRV__ENVELOPE__BODY_GET_PROFILE;
    e.get_profile = &p;
    void *s = connect_to(argv[0]);
    Persrv__Envelope *r = rpc(s, &e, PERSRV__ENVELOPE__BODY_PROFILE_REPLY);
    Persrv__ProfileReply *pr = r->profile_reply;
    double radius[PS_WIRE_MAX_CENTROIDS];
    const float *vec[PS_WIRE_MAX_CENTROIDS];
    for (size_t c = 0; c < pr->n_centroids; c++) {
        radius[c] = pr->centroids[c]->radius;
        vec[c] = pr->centroids[c]->vector;
    }
    print_centroids(pr->n_centroids, radius, vec, pr->n_centroids ? pr->centroids[0]->n_vector : 0);
    ps_wire_free(r);
    zmq_close(s);
    return 0;
}

static int cmd_offline(int argc, char **argv)
{
    if (argc != 2) die("usage: offline DIR USER");
    ps_err err = {0, ""};
    ps_profile prof = {0};
    ps_profiles_t *p = ps_profiles_open(argv[0], &err);
    if (!p) die("%s: %s", argv[0], err.msg);
    int rc = ps_profiles_get(p, argv[1], &prof, &err);
    if (rc && rc != PS_ENOTFOUND) die("%s: user %s: %s", argv[0], argv[1], err.msg);
    double radius[PS_PROFILE_KMAX];
    const float *vec[PS_PROFILE_KMAX];
    for (uint32_t c = 0; !rc && c < prof.k; c++) {
        radius[c] = prof.radius[c];
        vec[c] = prof.centroids + (size_t)c * prof.dim;
    }
    print_centroids(rc ? 0 : prof.k, radius, vec, prof.dim);
    ps_profile_clear(&prof);
    ps_profiles_close(p);
    return 0;
}

static int cmd_loadframe(int argc, char **argv)
{
    if (argc != 4) die("usage: loadframe USER DIM N FIRST");
    size_t dim = parse_dim(argv[1]);
    long n = atol(argv[2]);
    uint64_t first = strtoull(argv[3], NULL, 10);
    if (n < 0 || n > PS_WIRE_MAX_HISTORY) die("loadframe: N 0..%d", PS_WIRE_MAX_HISTORY);
    float *embs = calloc((size_t)(n + 1) * dim, sizeof *embs);
    Persrv__HistoryItem *items = calloc((size_t)n + 1, sizeof *items);
    Persrv__HistoryItem **itemp = calloc((size_t)n + 1, sizeof *itemp);
    if (!embs || !items || !itemp) die("out of memory");
    for (long i = 0; i < n; i++) {
        persrv__history_item__init(&items[i]);
        items[i].sticker_id = first + (uint64_t)i;
        items[i].n_embedding = dim;
        items[i].embedding = embs + (size_t)i * dim;
        embedding(first + (uint64_t)i, dim, items[i].embedding);
        itemp[i] = &items[i];
    }
    Persrv__Centroid c = PERSRV__CENTROID__INIT, *cp = &c;
    float *cv = embs + (size_t)n * dim;
    embedding(first, dim, cv);
    c.n_vector = dim;
    c.vector = cv;
    c.radius = 1.0;
    Persrv__LoadProfileRequest l = PERSRV__LOAD_PROFILE_REQUEST__INIT;
    l.user = argv[0];
    l.n_centroids = 1;
    l.centroids = &cp;
    l.n_history = (size_t)n;
    l.history = itemp;
    Persrv__Envelope e = PERSRV__ENVELOPE__INIT;
    e.version = PS_WIRE_VERSION;
    e.request_id = next_id++;
    e.body_case = PERSRV__ENVELOPE__BODY_LOAD_PROFILE;
    e.load_profile = &l;
    uint8_t *buf, lenb[4];
    size_t len;
    ps_err err = {0, ""};
    if (ps_wire_pack(&e, &buf, &len, &err)) die("encode: %s", err.msg);
    for (int i = 0; i < 4; i++) lenb[i] = (uint8_t)(len >> (8 * i));
    if (fwrite(lenb, 1, 4, stdout) != 4 || fwrite(buf, 1, len, stdout) != len) die("write");
    free(buf);
    free(embs);
    free(items);
    free(itemp);
    return 0;
}

static int cmd_freeport(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) ||
        getsockname(fd, (struct sockaddr *)&a, &al))
        die("freeport: cannot bind");
    printf("%u\n", ntohs(a.sin_port));
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        die("usage: profile_client freeport|click|clicks|profile|checksum|health|flood|raw|"
            "centroids|offline|loadframe ...");
    const char *cmd = argv[1];
    if (!strcmp(cmd, "freeport")) return cmd_freeport();
    if (!strcmp(cmd, "offline")) return cmd_offline(argc - 2, argv + 2);
    if (!strcmp(cmd, "loadframe")) return cmd_loadframe(argc - 2, argv + 2);
    zctx = zmq_ctx_new();
    int rc;
    if (!strcmp(cmd, "click"))
        rc = cmd_click(argc - 2, argv + 2);
    else if (!strcmp(cmd, "clicks"))
        rc = cmd_clicks(argc - 2, argv + 2);
    else if (!strcmp(cmd, "profile"))
        rc = cmd_profile(argc - 2, argv + 2);
    else if (!strcmp(cmd, "checksum"))
        rc = cmd_checksum(argc - 2, argv + 2);
    else if (!strcmp(cmd, "health"))
        rc = cmd_health(argc - 2, argv + 2);
    else if (!strcmp(cmd, "flood"))
        rc = cmd_flood(argc - 2, argv + 2);
    else if (!strcmp(cmd, "raw"))
        rc = cmd_raw(argc - 2, argv + 2);
    else if (!strcmp(cmd, "centroids"))
        rc = cmd_centroids(argc - 2, argv + 2);
    else
        die("unknown command %s", cmd);
    zmq_ctx_term(zctx);
    return rc;
}
