/*
 * bench_cluster.c — closed-loop HTTP load generator against a running broker.
 *
 *   bench_cluster --url http://127.0.0.1:PORT [--connections 1,4,16] [--requests N]
 *                 [--queries N] [--seed S] [--users u01,u02,...] [--k K] [--repeat R]
 *                 [--warmup N] [--query TEXT] [--json]
 *
 * Queries come from builder_gen_queries (1–2 phrases, 80% Chinese, deterministic from the
 * seed), URL-encoded once up front; request i asks queries[i % N] for users[i % nusers] (no
 * user when --users is absent), like bench_engine's profile rotation. --query TEXT asks TEXT in
 * every request instead: with a text that matches nothing ("zzqqxx") the figures are the
 * cluster's cost per request apart from the search itself (HTTP, fan-out, merge, answer). Each
 * connection is a libevent evhttp client connection (HTTP/1.1 keep-alive) with exactly one request
 * in flight: a connection sends its next request from the callback of the previous one (closed
 * loop), so C connections are C concurrent users. A warm-up pass over all connections runs first.
 * Then, for each connection level, --repeat runs of --requests requests each: per run QPS (requests
 * / wall time) and p50/p90/p99 of per-request latency (send to full response); the reported
 * figure for each is the median over the runs. "errors" counts transport failures and non-200
 * answers, "partial" counts 200 answers with "partial":true, both summed over the runs.
 * Output: one JSON line per level (--json) or a table.
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_stats.h"
#include "pipeline.h"
#include "gen.h"

#define MAX_LEVELS 16
#define MAX_USERS  64

typedef struct bench bench;

/* One client connection with at most one request in flight. */
typedef struct conn {
    bench *b;
    struct evhttp_connection *evcon;
    double t0; /* send time of the request in flight */
} conn;

struct bench {
    struct event_base *base;
    char host[256];
    int port;
    char **paths; /* "/v1/search?q=...&k=..[&user=..]", one per query */
    size_t npaths;
    conn *conns;
    size_t nconns; /* connections opened (the largest level) */
    /* The run in progress. */
    size_t next;     /* requests sent in this run */
    size_t want;     /* requests this run makes */
    size_t done;     /* requests answered (or failed) */
    size_t active;   /* connections still looping */
    size_t path_off; /* query rotation continues across runs */
    double *lat;     /* ms, one per request of the run */
    size_t errors, partial;
};

/* Append the RFC 3986 percent-encoding of s to out (size cap); returns 0 or -1 if too long. */
static int url_encode(const char *s, char *out, size_t cap, size_t *len)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*len + 4 > cap) return -1;
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_' || *p == '.' || *p == '~') {
            out[(*len)++] = (char)*p;
        } else {
            out[(*len)++] = '%';
            out[(*len)++] = hex[*p >> 4];
            out[(*len)++] = hex[*p & 15];
        }
    }
    out[*len] = '\0';
    return 0;
}

static void send_next(conn *c);

static void on_response(struct evhttp_request *req, void *arg)
{
    conn *c = arg;
    bench *b = c->b;
    double dt = (builder_now() - c->t0) * 1e3;
    int code = req ? evhttp_request_get_response_code(req) : 0;
    if (code != 200) {
        b->errors++;
    } else {
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t n = evbuffer_get_length(in);
        const char *body = (const char *)evbuffer_pullup(in, -1);
        static const char tag[] = "\"partial\":true";
        if (body && n >= sizeof tag - 1) {
            for (size_t i = 0; i + sizeof tag - 1 <= n; i++)
                if (body[i] == '"' && memcmp(body + i, tag, sizeof tag - 1) == 0) {
                    b->partial++;
                    break;
                }
        }
    }
    b->lat[b->done++] = dt;
    send_next(c);
}

/* Send the run's next request on c, or retire c when the run has made all its requests. */
static void send_next(conn *c)
{
    bench *b = c->b;
    if (b->next >= b->want) {
        if (--b->active == 0) event_base_loopexit(b->base, NULL);
        return;
    }
    const char *path = b->paths[(b->path_off + b->next++) % b->npaths];
    struct evhttp_request *req = evhttp_request_new(on_response, c);
    if (!req) {
        fprintf(stderr, "bench_cluster: evhttp_request_new: out of memory\n");
        exit(1);
    }
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", b->host);
    evhttp_add_header(h, "Connection", "keep-alive");
    c->t0 = builder_now();
    if (evhttp_make_request(c->evcon, req, EVHTTP_REQ_GET, path) != 0) {
        /* libevent frees req on failure; count it and move on without recursion. */
        b->errors++;
        b->lat[b->done++] = 0;
        if (--b->active == 0) event_base_loopexit(b->base, NULL);
    }
}

/* One closed-loop run of `requests` requests over the first `nconn` connections.
 * OUT *qps, lat sorted ascending (b->lat). Returns the wall time in seconds. */
static double run(bench *b, size_t nconn, size_t requests)
{
    b->next = b->done = 0;
    b->want = requests;
    b->active = nconn;
    double t0 = builder_now();
    for (size_t i = 0; i < nconn; i++) send_next(&b->conns[i]);
    if (b->active) event_base_dispatch(b->base);
    double wall = builder_now() - t0;
    b->path_off = (b->path_off + requests) % b->npaths;
    qsort(b->lat, b->done, sizeof *b->lat, bench_cmp_double);
    return wall;
}

/* Parse "1,4,16" into v (cap entries); returns the count or -1. */
static int parse_list(const char *s, size_t *v, int cap)
{
    int n = 0;
    while (*s) {
        char *end;
        unsigned long x = strtoul(s, &end, 10);
        if (end == s || x == 0 || x > 4096 || n == cap) return -1;
        v[n++] = x;
        s = end;
        if (*s == ',')
            s++;
        else if (*s)
            return -1;
    }
    return n;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: bench_cluster --url http://HOST:PORT [--connections 1,4,16] "
               "[--requests N] [--queries N] [--seed S] [--users u01,u02,...] [--k K] "
               "[--repeat R] [--warmup N] [--query TEXT] [--json]\n");
}

int main(int argc, char **argv)
{
    const char *url = NULL, *fixed_query = NULL;
    char users_arg[1024] = "";
    size_t levels[MAX_LEVELS] = {1, 4, 16};
    int nlevels = 3;
    size_t requests = 1000, nq = 1000, k = 10, repeat = 3, warmup = 0;
    uint64_t seed = 1;
    int json = 0, warmup_set = 0;
    static const struct option opts[] = {{"url", required_argument, 0, 'u'},
                                         {"connections", required_argument, 0, 'c'},
                                         {"requests", required_argument, 0, 'n'},
                                         {"queries", required_argument, 0, 'q'},
                                         {"seed", required_argument, 0, 's'},
                                         {"users", required_argument, 0, 'U'},
                                         {"k", required_argument, 0, 'k'},
                                         {"repeat", required_argument, 0, 'r'},
                                         {"warmup", required_argument, 0, 'w'},
                                         {"json", no_argument, 0, 'j'},
                                         {"query", required_argument, 0, 'Q'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'u':
            url = optarg;
            break;
        case 'c':
            if ((nlevels = parse_list(optarg, levels, MAX_LEVELS)) <= 0) {
                fprintf(stderr, "bench_cluster: --connections: '%s' is not a list of 1..4096\n",
                        optarg);
                return 2;
            }
            break;
        case 'n':
            requests = strtoul(optarg, NULL, 10);
            break;
        case 'q':
            nq = strtoul(optarg, NULL, 10);
            break;
        case 's':
            seed = strtoull(optarg, NULL, 10);
            break;
        case 'U':
            snprintf(users_arg, sizeof users_arg, "%s", optarg);
            break;
        case 'k':
            k = strtoul(optarg, NULL, 10);
            break;
        case 'r':
            repeat = strtoul(optarg, NULL, 10);
            break;
        case 'w':
            warmup = strtoul(optarg, NULL, 10);
            warmup_set = 1;
            break;
        case 'j':
            json = 1;
            break;
        case 'Q':
            if (!*optarg) {
                fprintf(stderr, "bench_cluster: --query: empty text\n");
                return 2;
            }
            fixed_query = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!url) {
        fprintf(stderr, "bench_cluster: --url is required\n");
        usage(stderr);
        return 2;
    }
    if (requests == 0 || nq == 0 || k == 0 || repeat == 0 || repeat > 99) {
        fprintf(stderr, "bench_cluster: --requests, --queries, --k must be > 0 and "
                        "--repeat in 1..99\n");
        return 2;
    }
    if (!warmup_set) warmup = nq < 500 ? nq : 500;

    bench b = {0};
    struct evhttp_uri *uri = evhttp_uri_parse(url);
    const char *host = uri ? evhttp_uri_get_host(uri) : NULL;
    if (!host || !evhttp_uri_get_scheme(uri) || strcmp(evhttp_uri_get_scheme(uri), "http") != 0) {
        fprintf(stderr, "bench_cluster: --url: '%s' is not http://HOST[:PORT]\n", url);
        return 2;
    }
    b.port = evhttp_uri_get_port(uri) > 0 ? evhttp_uri_get_port(uri) : 80;
    snprintf(b.host, sizeof b.host, "%s", host);
    evhttp_uri_free(uri);

    char *users[MAX_USERS];
    size_t nusers = 0;
    for (char *save = NULL, *u = strtok_r(users_arg, ",", &save); u && nusers < MAX_USERS;
         u = strtok_r(NULL, ",", &save))
        users[nusers++] = u;

    ps_err err = {0};
    char **queries = NULL;
    if (builder_gen_queries(seed, nq, 0.8, &queries, &err)) {
        fprintf(stderr, "bench_cluster: queries: %s\n", err.msg);
        return 1;
    }
    b.npaths = nq;
    b.paths = calloc(nq, sizeof *b.paths);
    if (!b.paths) return 1;
    for (size_t i = 0; i < nq; i++) {
        char path[4096];
        size_t len = (size_t)snprintf(path, sizeof path, "/v1/search?q=");
        int rc = url_encode(fixed_query ? fixed_query : queries[i], path, sizeof path, &len);
        len += (size_t)snprintf(path + len, sizeof path - len, "&k=%zu", k);
        if (rc == 0 && nusers) {
            len += (size_t)snprintf(path + len, sizeof path - len, "&user=");
            rc = url_encode(users[i % nusers], path, sizeof path, &len);
        }
        if (rc != 0 || len >= sizeof path || !(b.paths[i] = strdup(path))) {
            fprintf(stderr, "bench_cluster: query %zu: URL too long\n", i);
            return 1;
        }
    }
    builder_gen_queries_free(queries, nq);

    size_t maxc = 0;
    for (int l = 0; l < nlevels; l++)
        if (levels[l] > maxc) maxc = levels[l];
    size_t maxreq = requests > warmup ? requests : warmup;
    b.base = event_base_new();
    b.conns = calloc(maxc, sizeof *b.conns);
    b.lat = malloc((maxreq + maxc) * sizeof *b.lat);
    if (!b.base || !b.conns || !b.lat) {
        fprintf(stderr, "bench_cluster: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < maxc; i++) {
        b.conns[i].b = &b;
        b.conns[i].evcon = evhttp_connection_base_new(b.base, NULL, b.host, (unsigned short)b.port);
        if (!b.conns[i].evcon) {
            fprintf(stderr, "bench_cluster: connection %zu to %s:%d failed\n", i, b.host, b.port);
            return 1;
        }
        evhttp_connection_set_timeout(b.conns[i].evcon, 30);
        b.nconns++;
    }

    /* Warm-up on every connection: opens them and warms the broker and shard caches. */
    if (warmup) {
        run(&b, maxc < warmup ? maxc : warmup, warmup);
        if (b.errors == warmup) {
            fprintf(stderr, "bench_cluster: every warm-up request to %s failed\n", url);
            return 1;
        }
        b.errors = b.partial = 0;
    }
    if (!json)
        printf("%-6s %9s %9s %9s %9s %7s %8s   (%zu requests x %zu runs, medians)\n", "conns",
               "qps", "p50_ms", "p90_ms", "p99_ms", "errors", "partial", requests, repeat);
    for (int l = 0; l < nlevels; l++) {
        double qps[99], p50[99], p90[99], p99[99];
        b.errors = b.partial = 0;
        for (size_t r = 0; r < repeat; r++) {
            double wall = run(&b, levels[l], requests);
            qps[r] = wall > 0 ? (double)b.done / wall : 0;
            p50[r] = bench_pct(b.lat, b.done, 0.5);
            p90[r] = bench_pct(b.lat, b.done, 0.9);
            p99[r] = bench_pct(b.lat, b.done, 0.99);
        }
        double mq = bench_median(qps, repeat), m50 = bench_median(p50, repeat),
               m90 = bench_median(p90, repeat), m99 = bench_median(p99, repeat);
        if (json)
            printf("{\"bench\":\"cluster\",\"url\":\"%s\",\"connections\":%zu,\"requests\":%zu,"
                   "\"repeat\":%zu,\"queries\":%zu,\"users\":%zu,\"k\":%zu,\"qps\":%.1f,"
                   "\"p50_ms\":%.4f,\"p90_ms\":%.4f,\"p99_ms\":%.4f,\"errors\":%zu,"
                   "\"partial\":%zu,\"fixed_query\":%s}\n",
                   url, levels[l], requests, repeat, nq, nusers, k, mq, m50, m90, m99, b.errors,
                   b.partial, fixed_query ? "true" : "false");
        else
            printf("%-6zu %9.1f %9.3f %9.3f %9.3f %7zu %8zu\n", levels[l], mq, m50, m90, m99,
                   b.errors, b.partial);
        fflush(stdout);
    }

    for (size_t i = 0; i < b.nconns; i++) evhttp_connection_free(b.conns[i].evcon);
    for (size_t i = 0; i < nq; i++) free(b.paths[i]);
    free(b.paths);
    free(b.conns);
    free(b.lat);
    event_base_free(b.base);
    return 0;
}
