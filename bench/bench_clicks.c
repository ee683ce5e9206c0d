/*
 * bench_clicks.c — closed-loop click load against a running profile primary, with the
 * replication lag of a replica.
 *
 *   bench_clicks --primary EP [--replica EP] [--clients 1,8,32] [--clicks N] [--dim D]
 *                [--repeat R] [--warmup N] [--json]
 *
 * Each client is a thread with its own DEALER socket and exactly one click in flight: it sends
 * the next click when the previous one is acknowledged (click_reply, which the primary sends
 * only once the click's WAL record is synced), so C clients are C concurrent writers. Client c
 * clicks for its own users ("bench-r<run>-c<c>-u<0..3>", round robin), each click a fresh
 * sticker id with an embedding derived from the id. Per run (--clicks clicks in all, split
 * evenly over the clients): acked clicks/s (acks / wall time) and p50/p99 of the ack latency
 * (send to click_reply); "errors" counts Error replies and clicks unanswered after 10 s.
 *
 * With --replica, a poller thread asks the replica for health every ~1 ms and records
 * (receive time, snapshot_version = the replica's applied sequence number). The replication
 * lag of a click is the receive time of the first sample whose applied sequence number is at
 * least the click's seq, minus the click's ack time (0 if the replica had it before the ack
 * arrived): an upper bound, resolution ~1 ms plus one health round trip. After the clients
 * finish, the poller waits (up to 10 s) for the replica to reach the run's last seq; clicks it
 * never saw are counted in "lag_unseen".
 *
 * Every figure is the median over --repeat runs. Output: one JSON line per client level
 * (--json) or a table. A warm-up of --warmup clicks (1 client) runs first.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "bench_stats.h"
#include "ps/curve.h"
#include "ps/wire.h"

#define MAX_LEVELS       16
#define MAX_CLIENTS      1024
#define REPLY_MS         10000 /* a click unanswered this long is an error */
#define CATCHUP_MS       10000 /* the replica must reach the run's last seq within this */
#define MAX_FRAME        (64u << 20)
#define USERS_PER_CLIENT 4

typedef struct click_rec {
    double t_ack; /* ms since the run started */
    double lat;   /* ms, send to ack */
    uint64_t seq; /* 0: not acked */
} click_rec;

typedef struct sample {
    double t;     /* ms since the run started (receive time) */
    uint64_t seq; /* the replica's applied sequence number */
} sample;

typedef struct run_ctx {
    void *zctx;
    const char *primary, *replica;
    size_t dim;
    unsigned run; /* run number, for user names and sticker ids */
    size_t nclients, per_client;
    click_rec *recs; /* nclients * per_client */
    double t0;       /* run start, CLOCK_MONOTONIC ms */
    pthread_barrier_t start;
    atomic_size_t errors;
    /* The replica poller. */
    atomic_int clients_done;
    atomic_uint_fast64_t max_seq; /* the largest acked seq of the run */
    sample *samples;
    size_t nsamples, capsamples;
    int poll_failed;
} run_ctx;

typedef struct client_arg {
    run_ctx *rc;
    size_t c;
} client_arg;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void *open_dealer(void *zctx, const char *ep)
{
    void *s = zmq_socket(zctx, ZMQ_DEALER);
    int zero = 0;
    int64_t maxmsg = MAX_FRAME;
    if (!s) return NULL;
    if (zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) ||
        ps_curve_env_client(s, ep, NULL) || zmq_connect(s, ep)) {
        zmq_close(s);
        return NULL;
    }
    return s;
}

/* Send frame and wait up to ms for the reply echoing request_id; NULL on timeout or an
 * undecodable reply. Caller frees the reply with ps_wire_free. */
static Persrv__Envelope *exchange(void *s, const uint8_t *buf, size_t len, uint64_t request_id,
                                  int ms)
{
    if (zmq_send(s, buf, len, 0) != (int)len) return NULL;
    double until = now_ms() + ms;
    for (;;) {
        double left = until - now_ms();
        if (left <= 0) return NULL;
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        int n = zmq_poll(&it, 1, (long)left + 1);
        if (n < 0 && zmq_errno() == EINTR) continue;
        if (n <= 0) return NULL;
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s, 0) < 0) {
            zmq_msg_close(&m);
            continue;
        }
        Persrv__Envelope *r = NULL;
        int rc = ps_wire_decode(zmq_msg_data(&m), zmq_msg_size(&m), MAX_FRAME, &r, NULL);
        zmq_msg_close(&m);
        if (rc) return NULL;
        if (r->request_id == request_id) return r;
        ps_wire_free(r); /* a reply to an earlier request that timed out */
    }
}

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

/* ---- the clients --------------------------------------------------------------------------- */

static void *client_main(void *p)
{
    client_arg *a = p;
    run_ctx *rc = a->rc;
    void *s = open_dealer(rc->zctx, rc->primary);
    float *emb = malloc(rc->dim * sizeof *emb);
    uint8_t *buf = NULL;
    size_t len;
    click_rec *recs = rc->recs + a->c * rc->per_client;
    if (!s || !emb) {
        fprintf(stderr, "bench_clicks: client %zu: cannot connect to %s\n", a->c, rc->primary);
        atomic_fetch_add(&rc->errors, rc->per_client);
        pthread_barrier_wait(&rc->start);
        goto out;
    }
    pthread_barrier_wait(&rc->start);
    for (size_t i = 0; i < rc->per_client; i++) {
        char user[64];
        snprintf(user, sizeof user, "bench-r%u-c%zu-u%zu", rc->run, a->c, i % USERS_PER_CLIENT);
        /* Sticker ids: unique per (run, client, click). */
        uint64_t id = ((uint64_t)rc->run << 40) | ((uint64_t)a->c << 24) | i;
        embedding(id, emb, rc->dim);
        Persrv__ClickRequest c = PERSRV__CLICK_REQUEST__INIT;
        c.user = user;
        c.sticker_id = id;
        c.query = "bench";
        c.n_embedding = rc->dim;
        c.embedding = emb;
        Persrv__Envelope env = PERSRV__ENVELOPE__INIT;
        env.version = PS_WIRE_VERSION;
        env.request_id = ((uint64_t)a->c << 32) | i;
        env.deadline_ms = REPLY_MS;
        env.body_case = PERSRV__ENVELOPE__BODY_CLICK;
        env.click = &c;
        if (ps_wire_pack(&env, &buf, &len, NULL)) {
            fprintf(stderr, "bench_clicks: cannot encode a click\n");
            exit(1);
        }
        double t = now_ms();
        Persrv__Envelope *r = exchange(s, buf, len, env.request_id, REPLY_MS);
        double t1 = now_ms();
        free(buf);
        buf = NULL;
        if (!r || r->body_case != PERSRV__ENVELOPE__BODY_CLICK_REPLY) {
            if (r && r->body_case == PERSRV__ENVELOPE__BODY_ERROR && i == 0)
                fprintf(stderr, "bench_clicks: click: %s: %s\n", r->error->code, r->error->message);
            atomic_fetch_add(&rc->errors, 1);
            ps_wire_free(r);
            if (!r) { /* Lazy Pirate: the socket may hold the lost request */
                zmq_close(s);
                if (!(s = open_dealer(rc->zctx, rc->primary))) break;
            }
            continue;
        }
        recs[i].t_ack = t1 - rc->t0;
        recs[i].lat = t1 - t;
        recs[i].seq = r->click_reply->seq;
        uint64_t m = atomic_load(&rc->max_seq);
        while (recs[i].seq > m && !atomic_compare_exchange_weak(&rc->max_seq, &m, recs[i].seq)) {
        }
        ps_wire_free(r);
    }
out:
    if (s) zmq_close(s);
    free(emb);
    atomic_fetch_add(&rc->clients_done, 1);
    return NULL;
}

/* ---- the replica poller -------------------------------------------------------------------- */

static void *poller_main(void *p)
{
    run_ctx *rc = p;
    void *s = open_dealer(rc->zctx, rc->replica);
    uint64_t rid = 1;
    double caught_deadline = 0;
    pthread_barrier_wait(&rc->start);
    if (!s) {
        rc->poll_failed = 1;
        return NULL;
    }
    for (;;) {
        uint8_t *buf;
        size_t len;
        if (ps_wire_encode_health(++rid, 0, &buf, &len, NULL)) break;
        Persrv__Envelope *r = exchange(s, buf, len, rid, 1000);
        free(buf);
        double t = now_ms() - rc->t0;
        if (r && r->body_case == PERSRV__ENVELOPE__BODY_HEALTH_REPLY) {
            if (rc->nsamples == rc->capsamples) {
                rc->capsamples = rc->capsamples ? 2 * rc->capsamples : 4096;
                sample *ns = realloc(rc->samples, rc->capsamples * sizeof *ns);
                if (!ns) {
                    fprintf(stderr, "bench_clicks: out of memory\n");
                    exit(1);
                }
                rc->samples = ns;
            }
            rc->samples[rc->nsamples].t = t;
            rc->samples[rc->nsamples++].seq = r->health_reply->snapshot_version;
        } else if (!r) {
            zmq_close(s);
            if (!(s = open_dealer(rc->zctx, rc->replica))) {
                rc->poll_failed = 1;
                break;
            }
        }
        uint64_t applied = rc->nsamples ? rc->samples[rc->nsamples - 1].seq : 0;
        ps_wire_free(r);
        if ((size_t)atomic_load(&rc->clients_done) == rc->nclients) {
            if (!caught_deadline) caught_deadline = now_ms() + CATCHUP_MS;
            if (applied >= atomic_load(&rc->max_seq) || now_ms() > caught_deadline) break;
        }
        usleep(1000);
    }
    if (s) zmq_close(s);
    return NULL;
}

/* ---- one run ------------------------------------------------------------------------------- */

typedef struct run_result {
    double cps, p50, p99, lag50, lag99;
    size_t acked, errors, lag_unseen, nsamples;
} run_result;

static int run(void *zctx, const char *primary, const char *replica, size_t dim, unsigned runno,
               size_t nclients, size_t clicks, run_result *out)
{
    run_ctx rc;
    memset(&rc, 0, sizeof rc);
    rc.zctx = zctx;
    rc.primary = primary;
    rc.replica = replica;
    rc.dim = dim;
    rc.run = runno;
    rc.nclients = nclients;
    rc.per_client = (clicks + nclients - 1) / nclients;
    size_t total = nclients * rc.per_client;
    rc.recs = calloc(total, sizeof *rc.recs);
    pthread_t *th = calloc(nclients, sizeof *th);
    client_arg *args = calloc(nclients, sizeof *args);
    if (!rc.recs || !th || !args) return -1;
    pthread_barrier_init(&rc.start, NULL, (unsigned)(nclients + 1 + (replica ? 1 : 0)));
    pthread_t poller;
    if (replica && pthread_create(&poller, NULL, poller_main, &rc)) return -1;
    for (size_t c = 0; c < nclients; c++) {
        args[c].rc = &rc;
        args[c].c = c;
        if (pthread_create(&th[c], NULL, client_main, &args[c])) return -1;
    }
    rc.t0 = now_ms();
    pthread_barrier_wait(&rc.start);
    for (size_t c = 0; c < nclients; c++) pthread_join(th[c], NULL);
    double wall = now_ms() - rc.t0;
    if (replica) pthread_join(poller, NULL);
    pthread_barrier_destroy(&rc.start);

    double *lat = malloc((total + 1) * sizeof *lat), *lag = malloc((total + 1) * sizeof *lag);
    if (!lat || !lag) return -1;
    size_t n = 0, nlag = 0, unseen = 0;
    for (size_t i = 0; i < total; i++) {
        if (!rc.recs[i].seq) continue;
        lat[n++] = rc.recs[i].lat;
        if (!replica) continue;
        /* First sample with applied >= seq: samples are in time order, applied never drops. */
        size_t lo = 0, hi = rc.nsamples;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (rc.samples[mid].seq >= rc.recs[i].seq)
                hi = mid;
            else
                lo = mid + 1;
        }
        if (lo == rc.nsamples) {
            unseen++;
            continue;
        }
        double l = rc.samples[lo].t - rc.recs[i].t_ack;
        lag[nlag++] = l > 0 ? l : 0;
    }
    qsort(lat, n, sizeof *lat, bench_cmp_double);
    qsort(lag, nlag, sizeof *lag, bench_cmp_double);
    out->acked = n;
    out->errors = atomic_load(&rc.errors);
    out->cps = wall > 0 ? (double)n / (wall / 1e3) : 0;
    out->p50 = bench_pct(lat, n, 0.50);
    out->p99 = bench_pct(lat, n, 0.99);
    out->lag50 = bench_pct(lag, nlag, 0.50);
    out->lag99 = bench_pct(lag, nlag, 0.99);
    out->lag_unseen = unseen;
    out->nsamples = rc.nsamples;
    if (replica && rc.poll_failed)
        fprintf(stderr, "bench_clicks: replica %s: poller failed\n", replica);
    free(lat);
    free(lag);
    free(rc.samples);
    free(rc.recs);
    free(th);
    free(args);
    return 0;
}

/* ---- main ---------------------------------------------------------------------------------- */

static int parse_list(char *s, size_t *out, int cap)
{
    int n = 0;
    for (char *save = NULL, *t = strtok_r(s, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *end;
        unsigned long v = strtoul(t, &end, 10);
        if (*end || v < 1 || v > MAX_CLIENTS || n == cap) return -1;
        out[n++] = v;
    }
    return n;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: bench_clicks --primary EP [--replica EP] [--clients 1,8,32] [--clicks N] "
               "[--dim D] [--repeat R] [--warmup N] [--json]\n");
}

int main(int argc, char **argv)
{
    const char *primary = NULL, *replica = NULL;
    size_t levels[MAX_LEVELS] = {1, 8, 32};
    int nlevels = 3, json = 0;
    size_t clicks = 2000, dim = 64, repeat = 3, warmup = 100;
    static const struct option opts[] = {
        {"primary", required_argument, 0, 'p'}, {"replica", required_argument, 0, 'r'},
        {"clients", required_argument, 0, 'c'}, {"clicks", required_argument, 0, 'n'},
        {"dim", required_argument, 0, 'd'},     {"repeat", required_argument, 0, 'R'},
        {"warmup", required_argument, 0, 'w'},  {"json", no_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'p':
            primary = optarg;
            break;
        case 'r':
            replica = optarg;
            break;
        case 'c':
            if ((nlevels = parse_list(optarg, levels, MAX_LEVELS)) <= 0) {
                fprintf(stderr, "bench_clicks: --clients: '%s' is not a list of 1..%d\n", optarg,
                        MAX_CLIENTS);
                return 2;
            }
            break;
        case 'n':
            clicks = strtoul(optarg, NULL, 10);
            break;
        case 'd':
            dim = strtoul(optarg, NULL, 10);
            break;
        case 'R':
            repeat = strtoul(optarg, NULL, 10);
            break;
        case 'w':
            warmup = strtoul(optarg, NULL, 10);
            break;
        case 'j':
            json = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!primary) {
        fprintf(stderr, "bench_clicks: --primary is required\n");
        usage(stderr);
        return 2;
    }
    if (clicks == 0 || dim == 0 || dim > PS_WIRE_MAX_DIM || repeat == 0 || repeat > 99) {
        fprintf(stderr, "bench_clicks: --clicks must be > 0, --dim in 1..%d, --repeat in 1..99\n",
                PS_WIRE_MAX_DIM);
        return 2;
    }
    void *zctx = zmq_ctx_new();
    if (!zctx) return 1;
    /* Run numbers make user names and sticker ids distinct across runs and invocations. */
    unsigned runno = (unsigned)(time(NULL) & 0xffff) << 8;
    run_result r;
    if (warmup) {
        if (run(zctx, primary, NULL, dim, runno++, 1, warmup, &r)) return 1;
        if (r.acked == 0) {
            fprintf(stderr, "bench_clicks: no warm-up click to %s was acknowledged\n", primary);
            return 1;
        }
    }
    if (!json)
        printf("%-7s %9s %9s %9s %7s %10s %10s %7s   (%zu clicks x %zu runs, medians)\n", "clients",
               "clicks/s", "p50_ms", "p99_ms", "errors", "lag_p50_ms", "lag_p99_ms", "unseen",
               clicks, repeat);
    for (int l = 0; l < nlevels; l++) {
        double cps[99], p50[99], p99[99], lag50[99], lag99[99];
        size_t errors = 0, unseen = 0, samples = 0;
        for (size_t k = 0; k < repeat; k++) {
            if (run(zctx, primary, replica, dim, runno++, levels[l], clicks, &r)) {
                fprintf(stderr, "bench_clicks: out of memory or threads\n");
                return 1;
            }
            cps[k] = r.cps;
            p50[k] = r.p50;
            p99[k] = r.p99;
            lag50[k] = r.lag50;
            lag99[k] = r.lag99;
            errors += r.errors;
            unseen += r.lag_unseen;
            samples += r.nsamples;
        }
        double mcps = bench_median(cps, repeat), m50 = bench_median(p50, repeat),
               m99 = bench_median(p99, repeat);
        if (json) {
            printf("{\"bench\":\"clicks\",\"clients\":%zu,\"clicks\":%zu,\"dim\":%zu,\"runs\":%zu,"
                   "\"clicks_per_s\":%.1f,\"ack_p50_ms\":%.3f,\"ack_p99_ms\":%.3f,\"errors\":%zu",
                   levels[l], clicks, dim, repeat, mcps, m50, m99, errors);
            if (replica)
                printf(",\"lag_p50_ms\":%.3f,\"lag_p99_ms\":%.3f,\"lag_unseen\":%zu,"
                       "\"lag_samples\":%zu",
                       bench_median(lag50, repeat), bench_median(lag99, repeat), unseen, samples);
            printf("}\n");
        } else if (replica) {
            printf("%-7zu %9.1f %9.3f %9.3f %7zu %10.3f %10.3f %7zu\n", levels[l], mcps, m50, m99,
                   errors, bench_median(lag50, repeat), bench_median(lag99, repeat), unseen);
        } else {
            printf("%-7zu %9.1f %9.3f %9.3f %7zu %10s %10s %7s\n", levels[l], mcps, m50, m99,
                   errors, "-", "-", "-");
        }
        fflush(stdout);
    }
    zmq_ctx_term(zctx);
    return 0;
}
