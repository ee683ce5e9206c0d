/*
 * click_writer.c — the load and the checker of tests/integration/test_profile_durability.sh
 * (DESIGN §3.2, invariant 3: an acknowledged click survives kill -9 of the profile primary).
 *
 *   click_writer EP USER_PREFIX START COUNT DIM OUT_FILE
 *       Send COUNT clicks to the primary at EP, one at a time: click i goes to user
 *       USER_PREFIX<i % 8> for sticker START + i with an embedding of DIM floats derived from
 *       the sticker id. Every acknowledged click is appended to OUT_FILE as
 *       "user \t sticker_id \t seq \n", flushed and fsync'd before the next click is sent, so
 *       the file lists every ack even if this process is killed. A click that gets no answer
 *       within TRY_MS (the primary was killed) is sent again, the same click, on a fresh socket
 *       (Lazy Pirate), until it is acknowledged; an Error reply is retried the same way. Exit 0
 *       once COUNT clicks are acknowledged, 1 after GIVEUP_MS without any acknowledgement.
 *   click_writer check EP ACKED_FILE...
 *       Read every "user \t sticker_id \t seq" line of the files, ask EP get_clicks for each
 *       user, and report the acknowledged clicks missing from the answers:
 *       "check: users=U acked=A missing=M". Exit 0 if M = 0, 1 if not, 2 if EP could not be
 *       asked. A partial last line (a writer killed mid-write) is ignored: it was never acked.
 *   click_writer health EP        print "ready=R seq=S" (health_reply.snapshot_version)
 *   click_writer checksum EP      print "checksum=C keys=K seq=S"
 *   click_writer freeport         print a TCP port on 127.0.0.1 that was free a moment ago
 *
 * health, checksum and check retry like the writer, for at most GIVEUP_MS.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "ps/curve.h"
#include "ps/wire.h"

#define NUSERS    8     /* users per writer, round robin */
#define TRY_MS    1500  /* one attempt: the reply must come within this */
#define GIVEUP_MS 60000 /* no acknowledgement for this long: give up */
#define MAX_DIM   4096
#define MAX_FRAME (64u << 20)

static void *zctx;
static uint64_t next_rid;

static void die(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void die(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("click_writer: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(status);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void *open_dealer(const char *ep)
{
    void *s = zmq_socket(zctx, ZMQ_DEALER);
    int zero = 0;
    int64_t maxmsg = MAX_FRAME;
    if (!s || zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) ||
        ps_curve_env_client(s, ep, NULL) || zmq_connect(s, ep))
        die(2, "connect %s: %s", ep, zmq_strerror(zmq_errno()));
    return s;
}

/* One request/reply exchange, Lazy Pirate style: send env on *s, wait up to TRY_MS for the
 * reply that echoes its request_id (stale replies of earlier attempts are skipped); on a
 * timeout close *s, open a fresh socket and send again, until GIVEUP_MS have passed since
 * `since` (updated by the caller on every success). Returns the decoded reply (caller frees
 * with ps_wire_free), or NULL after GIVEUP_MS. `want` is the expected body; an Error reply is
 * logged (once per distinct message) and retried after a short pause. */
static Persrv__Envelope *pirate(void **s, const char *ep, Persrv__Envelope *env,
                                Persrv__Envelope__BodyCase want, double since)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    char lasterr[256] = "";
    for (;;) {
        env->request_id = ++next_rid;
        ps_err err = {0, ""};
        if (ps_wire_pack(env, &buf, &len, &err)) die(2, "encode: %s", err.msg);
        if (zmq_send(*s, buf, len, ZMQ_DONTWAIT) != (int)len && zmq_errno() != EAGAIN)
            die(2, "send: %s", zmq_strerror(zmq_errno()));
        free(buf);
        double t0 = now_ms();
        for (;;) {
            double left = TRY_MS - (now_ms() - t0);
            if (left <= 0) break;
            zmq_pollitem_t it = {*s, 0, ZMQ_POLLIN, 0};
            int rc = zmq_poll(&it, 1, (long)left + 1);
            if (rc < 0 && zmq_errno() == EINTR) continue;
            if (rc < 0) die(2, "poll: %s", zmq_strerror(zmq_errno()));
            if (rc == 0) continue;
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, *s, 0) < 0) {
                zmq_msg_close(&m);
                continue;
            }
            Persrv__Envelope *r = NULL;
            int drc = ps_wire_decode(zmq_msg_data(&m), zmq_msg_size(&m), MAX_FRAME, &r, &err);
            zmq_msg_close(&m);
            if (drc) die(2, "reply does not decode: %s", err.msg);
            if (r->request_id != env->request_id) { /* an earlier attempt's answer */
                ps_wire_free(r);
                continue;
            }
            if (r->body_case == want) return r;
            if (r->body_case == PERSRV__ENVELOPE__BODY_ERROR) {
                if (strcmp(lasterr, r->error->message)) {
                    fprintf(stderr, "click_writer: %s: error %s: %s (retrying)\n", ep,
                            r->error->code, r->error->message);
                    snprintf(lasterr, sizeof lasterr, "%s", r->error->message);
                }
                ps_wire_free(r);
                usleep(100000);
                break;
            }
            die(2, "%s: unexpected reply body %d", ep, r->body_case);
        }
        if (now_ms() - since > GIVEUP_MS) return NULL;
        zmq_close(*s); /* the old socket may hold the lost request: drop it */
        *s = open_dealer(ep);
    }
}

/* ---- writer -------------------------------------------------------------------------------- */

/* splitmix64: the embedding of a sticker is a pure function of its id. */
static uint64_t mix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void embedding(uint64_t id, float *v, size_t dim)
{
    uint64_t st = id;
    double norm = 0;
    for (size_t i = 0; i < dim; i++) {
        v[i] = (float)((double)(mix(&st) >> 11) / 9007199254740992.0 * 2 - 1);
        norm += (double)v[i] * v[i];
    }
    norm = sqrt(norm);
    for (size_t i = 0; i < dim && norm > 0; i++) v[i] = (float)(v[i] / norm);
}

static unsigned long long parse_u64(const char *s, const char *what)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-') die(2, "%s: not a number: %s", what, s);
    return v;
}

static int cmd_write(int argc, char **argv)
{
    if (argc != 6) die(2, "usage: click_writer EP USER_PREFIX START COUNT DIM OUT_FILE");
    const char *ep = argv[0], *prefix = argv[1];
    uint64_t start = parse_u64(argv[2], "START"), count = parse_u64(argv[3], "COUNT");
    size_t dim = parse_u64(argv[4], "DIM");
    if (dim < 1 || dim > MAX_DIM) die(2, "DIM must be 1..%d", MAX_DIM);
    if (strlen(prefix) > 200) die(2, "USER_PREFIX is too long");
    FILE *out = fopen(argv[5], "a");
    if (!out) die(2, "%s: %s", argv[5], strerror(errno));

    float *emb = malloc(dim * sizeof *emb);
    if (!emb) die(2, "out of memory");
    void *s = open_dealer(ep);
    double since = now_ms();
    uint64_t acked = 0, retried = 0;
    for (uint64_t i = 0; i < count; i++) {
        char user[256];
        snprintf(user, sizeof user, "%s%u", prefix, (unsigned)(i % NUSERS));
        uint64_t id = start + i;
        embedding(id, emb, dim);
        Persrv__ClickRequest c = PERSRV__CLICK_REQUEST__INIT;
        c.user = user;
        c.sticker_id = id;
        c.query = "durability";
        c.n_embedding = dim;
        c.embedding = emb;
        Persrv__Envelope env = PERSRV__ENVELOPE__INIT;
        env.version = PS_WIRE_VERSION;
        env.deadline_ms = TRY_MS;
        env.body_case = PERSRV__ENVELOPE__BODY_CLICK;
        env.click = &c;
        uint64_t rid0 = next_rid;
        Persrv__Envelope *r = pirate(&s, ep, &env, PERSRV__ENVELOPE__BODY_CLICK_REPLY, since);
        if (!r)
            die(1, "%s: no acknowledgement for %d s (%llu of %llu acked)", ep, GIVEUP_MS / 1000,
                (unsigned long long)acked, (unsigned long long)count);
        retried += next_rid - rid0 - 1;
        if (fprintf(out, "%s\t%llu\t%llu\n", user, (unsigned long long)id,
                    (unsigned long long)r->click_reply->seq) < 0 ||
            fflush(out) || fsync(fileno(out)))
            die(2, "%s: %s", argv[5], strerror(errno));
        ps_wire_free(r);
        acked++;
        since = now_ms();
    }
    fprintf(stderr, "click_writer: %s: %llu clicks acked, %llu resends\n", prefix,
            (unsigned long long)acked, (unsigned long long)retried);
    if (fclose(out)) die(2, "%s: %s", argv[5], strerror(errno));
    zmq_close(s);
    free(emb);
    return 0;
}

/* ---- check --------------------------------------------------------------------------------- */

typedef struct acked {
    char *user;
    uint64_t id;
} acked;

static int acked_cmp(const void *a, const void *b)
{
    const acked *x = a, *y = b;
    int c = strcmp(x->user, y->user);
    return c ? c : (x->id > y->id) - (x->id < y->id);
}

static int u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static void read_acked(const char *path, acked **v, size_t *n, size_t *cap)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT) return; /* a writer killed before its first ack */
        die(2, "%s: %s", path, strerror(errno));
    }
    char line[512];
    while (fgets(line, sizeof line, f)) {
        size_t len = strlen(line);
        if (!len || line[len - 1] != '\n') break; /* a partial last line: never acked */
        char *tab1 = strchr(line, '\t'), *tab2 = tab1 ? strchr(tab1 + 1, '\t') : NULL;
        if (!tab2) die(2, "%s: malformed line: %s", path, line);
        *tab1 = '\0';
        if (*n == *cap) {
            *cap = *cap ? 2 * *cap : 1024;
            if (!(*v = realloc(*v, *cap * sizeof **v))) die(2, "out of memory");
        }
        (*v)[*n].user = strdup(line);
        if (!(*v)[*n].user) die(2, "out of memory");
        (*v)[(*n)++].id = strtoull(tab1 + 1, NULL, 10);
    }
    fclose(f);
}

static int cmd_check(int argc, char **argv)
{
    if (argc < 2) die(2, "usage: click_writer check EP ACKED_FILE...");
    const char *ep = argv[0];
    acked *v = NULL;
    size_t n = 0, cap = 0, users = 0, missing = 0;
    for (int i = 1; i < argc; i++) read_acked(argv[i], &v, &n, &cap);
    if (n) qsort(v, n, sizeof *v, acked_cmp);
    void *s = open_dealer(ep);
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && !strcmp(v[j].user, v[i].user)) j++;
        Persrv__ClicksRequest q = PERSRV__CLICKS_REQUEST__INIT;
        q.user = v[i].user;
        Persrv__Envelope env = PERSRV__ENVELOPE__INIT;
        env.version = PS_WIRE_VERSION;
        env.body_case = PERSRV__ENVELOPE__BODY_GET_CLICKS;
        env.get_clicks = &q;
        Persrv__Envelope *r = pirate(&s, ep, &env, PERSRV__ENVELOPE__BODY_CLICKS_REPLY, now_ms());
        if (!r) die(2, "%s: get_clicks %s: no answer", ep, v[i].user);
        Persrv__ClicksReply *cr = r->clicks_reply;
        size_t nids = cr->n_sticker_ids; /* 0: an unknown user (sticker_ids is NULL) */
        if (nids) qsort(cr->sticker_ids, nids, sizeof *cr->sticker_ids, u64_cmp);
        for (size_t k = i; k < j; k++) {
            if (!nids || !bsearch(&v[k].id, cr->sticker_ids, nids, sizeof(uint64_t), u64_cmp)) {
                if (missing < 10)
                    fprintf(stderr, "click_writer: check: %s sticker %llu was acked but is lost\n",
                            v[k].user, (unsigned long long)v[k].id);
                missing++;
            }
        }
        ps_wire_free(r);
        users++;
        i = j;
    }
    printf("check: users=%zu acked=%zu missing=%zu\n", users, n, missing);
    for (size_t i = 0; i < n; i++) free(v[i].user);
    free(v);
    zmq_close(s);
    return missing ? 1 : 0;
}

/* ---- health, checksum, freeport ------------------------------------------------------------ */

static int cmd_health(int argc, char **argv)
{
    if (argc != 1) die(2, "usage: click_writer health EP");
    void *s = open_dealer(argv[0]);
    Persrv__HealthRequest h = PERSRV__HEALTH_REQUEST__INIT;
    Persrv__Envelope env = PERSRV__ENVELOPE__INIT;
    env.version = PS_WIRE_VERSION;
    env.body_case = PERSRV__ENVELOPE__BODY_HEALTH;
    env.health = &h;
    Persrv__Envelope *r = pirate(&s, argv[0], &env, PERSRV__ENVELOPE__BODY_HEALTH_REPLY, now_ms());
    if (!r) die(2, "%s: health: no answer", argv[0]);
    printf("ready=%d seq=%llu\n", r->health_reply->ready,
           (unsigned long long)r->health_reply->snapshot_version);
    ps_wire_free(r);
    zmq_close(s);
    return 0;
}

static int cmd_checksum(int argc, char **argv)
{
    if (argc != 1) die(2, "usage: click_writer checksum EP");
    void *s = open_dealer(argv[0]);
    Persrv__ChecksumRequest c = PERSRV__CHECKSUM_REQUEST__INIT;
    Persrv__Envelope env = PERSRV__ENVELOPE__INIT;
    env.version = PS_WIRE_VERSION;
    env.body_case = PERSRV__ENVELOPE__BODY_CHECKSUM;
    env.checksum = &c;
    Persrv__Envelope *r =
        pirate(&s, argv[0], &env, PERSRV__ENVELOPE__BODY_CHECKSUM_REPLY, now_ms());
    if (!r) die(2, "%s: checksum: no answer", argv[0]);
    printf("checksum=%016llx keys=%llu seq=%llu\n", (unsigned long long)r->checksum_reply->checksum,
           (unsigned long long)r->checksum_reply->keys, (unsigned long long)r->checksum_reply->seq);
    ps_wire_free(r);
    zmq_close(s);
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
        die(2, "freeport: cannot bind: %s", strerror(errno));
    printf("%u\n", ntohs(a.sin_port));
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        die(2, "usage: click_writer EP USER_PREFIX START COUNT DIM OUT_FILE | check EP FILE... | "
               "health EP | checksum EP | freeport");
    if (!strcmp(argv[1], "freeport")) return cmd_freeport();
    if (!(zctx = zmq_ctx_new())) die(2, "zmq_ctx_new failed");
    next_rid = (uint64_t)getpid() << 32; /* distinct ids per process, for the server's logs */
    int rc;
    if (!strcmp(argv[1], "check"))
        rc = cmd_check(argc - 2, argv + 2);
    else if (!strcmp(argv[1], "health"))
        rc = cmd_health(argc - 2, argv + 2);
    else if (!strcmp(argv[1], "checksum"))
        rc = cmd_checksum(argc - 2, argv + 2);
    else
        rc = cmd_write(argc - 1, argv + 1);
    zmq_ctx_term(zctx);
    return rc;
}
