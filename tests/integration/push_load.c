/*
 * push_load.c — load through both front doors of a broker that records every answer, for the
 * push tests (tests/integration/test_push.sh, test_push_faults.sh; issue 9). Judging the
 * answers is verify_answers' job: this program only sends and writes down.
 *
 *   push_load --requests FILE --http HOST:PORT --zmq EP --out ANSWERS.jsonl
 *             [--http-conns C] [--zmq-threads T] [--count N] [--http-count N] [--zmq-count N]
 *             [--stop-file F] [--k K] [--timeout-ms MS] [--pause-ms MS]
 *
 * FILE holds one request a line, "query\tuser" (the user may be empty or absent). The HTTP
 * door is C keep-alive connections (libevent evhttp client, one event loop thread, one request
 * in flight per connection, closed loop); the ZeroMQ door is T threads with a persrv_t each
 * (libpersrv's thread rule), retries 0, so a lost answer shows as an error instead of being
 * retried away. After a failed request a connection or thread pauses 100 ms. Each door cycles
 * through the requests from the first, until it has N answers
 * (--count, default 1000; --http-count / --zmq-count set one door's) or the stop file exists;
 * then requests in flight finish and no new ones start. A door with 0 connections / threads is
 * off. --pause-ms makes each connection and thread wait that long after every answer (a light
 * background load).
 *
 * Every answer (an error included) becomes one JSON line of ANSWERS:
 *   {"door": "http"|"zmq", "seq": n (per door), "t_ms": send time since start, "lat_ms",
 *    "query", "user" ("" for none), "status": HTTP status (0: no response) or libpersrv's
 *    code name ("ok", "timed_out", ...), "error": message (failures only), "version",
 *    "partial", "personalized", "hits": [["id", score], ...]}
 * Ids are decimal strings (19-digit ids exceed what a JSON number carries exactly); scores are
 * jansson reals ("%.17g"), which read back bit for bit. version, partial, personalized and
 * hits are absent when there was no answer.
 *
 * stdout, at the end, one JSON line: per door answers, ok, errors, partial, and answers per
 * version ({"http": {"answers", "ok", "errors", "partial", "versions": {"1": n, ...}}, "zmq":
 * {...}, "seconds"}). Exit status 2 on a usage error (or when ANSWERS cannot be written), else 0.
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <getopt.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "persrv.h"

#define MAX_VERSIONS 16
#define MAX_CONNS    256
#define MAX_THREADS  256
#define BACKOFF_MS   100 /* pause of a connection or thread after a failed request */

typedef struct request {
    char *query, *user; /* user "" = none */
    char *path;         /* "/v1/search?q=..&k=..[&user=..]" */
} request;

/* Counters of one door. */
typedef struct door {
    const char *name;
    long want;        /* answers to collect */
    atomic_long next; /* requests started */
    atomic_long ok, errors, partial;
    pthread_mutex_t mu; /* guards versions */
    uint64_t version[MAX_VERSIONS];
    long nversion[MAX_VERSIONS];
    size_t nversions;
    long other_versions; /* answers of versions beyond MAX_VERSIONS */
} door;

static request *reqs;
static size_t nreqs;
static uint32_t k = 10;
static uint32_t timeout_ms = 10000;
static long pause_ms; /* between one answer and the next request of a connection or thread */
static const char *zmq_ep;
static char http_host[256];
static int http_port;
static atomic_int stopping;
static double t_start;
static FILE *out;
static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;
static door http_door = {.name = "http", .mu = PTHREAD_MUTEX_INITIALIZER};
static door zmq_door = {.name = "zmq", .mu = PTHREAD_MUTEX_INITIALIZER};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "push_load: out of memory\n");
        abort();
    }
    return p;
}

/* ---- recording ----------------------------------------------------------------------------- */

static void count_version(door *d, uint64_t v)
{
    pthread_mutex_lock(&d->mu);
    size_t i = 0;
    while (i < d->nversions && d->version[i] != v) i++;
    if (i == d->nversions) {
        if (d->nversions == MAX_VERSIONS) {
            d->other_versions++;
            pthread_mutex_unlock(&d->mu);
            return;
        }
        d->version[d->nversions++] = v;
    }
    d->nversion[i]++;
    pthread_mutex_unlock(&d->mu);
}

/* A record with the fields every answer has; the caller adds the outcome. */
static json_t *record_new(const door *d, long seq, const request *r, double t0)
{
    double t1 = now_ms();
    return json_pack("{s:s, s:I, s:f, s:f, s:s, s:s}", "door", d->name, "seq", (json_int_t)seq,
                     "t_ms", t0 - t_start, "lat_ms", t1 - t0, "query", r->query, "user", r->user);
}

/* Add version, partial, personalized and hits (taken: a JSON array of [id, score]) to rec,
 * count the answer in d and write rec (consumed) as one line. */
static void record_answer(door *d, json_t *rec, uint64_t version, int partial, int personalized,
                          json_t *hits)
{
    char v[24];
    snprintf(v, sizeof v, "%llu", (unsigned long long)version);
    /* A version is a u64: written as a JSON integer when it fits one, else as a string. */
    json_object_set_new(rec, "version",
                        version <= (uint64_t)INT64_MAX ? json_integer((json_int_t)version)
                                                       : json_string(v));
    json_object_set_new(rec, "partial", json_boolean(partial));
    json_object_set_new(rec, "personalized", json_boolean(personalized));
    json_object_set_new(rec, "hits", hits);
    atomic_fetch_add(&d->ok, 1);
    if (partial) atomic_fetch_add(&d->partial, 1);
    count_version(d, version);
    char *line = json_dumps(rec, JSON_COMPACT);
    json_decref(rec);
    if (!line) {
        fprintf(stderr, "push_load: out of memory\n");
        abort();
    }
    pthread_mutex_lock(&out_mu);
    fputs(line, out);
    fputc('\n', out);
    fflush(out); /* the test script watches the file grow */
    pthread_mutex_unlock(&out_mu);
    free(line);
}

/* msg as a JSON string; bytes of invalid UTF-8 (a body cut mid-character) become '?'. */
static json_t *text_json(const char *msg)
{
    json_t *j = json_string(msg);
    if (j) return j;
    char *c = strdup(msg);
    if (!c) abort();
    for (char *p = c; *p; p++)
        if ((unsigned char)*p >= 0x80) *p = '?';
    j = json_string(c);
    free(c);
    return j;
}

static void record_error(door *d, json_t *rec, json_t *status, const char *msg)
{
    json_object_set_new(rec, "status", status);
    json_object_set_new(rec, "error", text_json(msg));
    atomic_fetch_add(&d->errors, 1);
    char *line = json_dumps(rec, JSON_COMPACT);
    json_decref(rec);
    if (!line) abort();
    pthread_mutex_lock(&out_mu);
    fputs(line, out);
    fputc('\n', out);
    fflush(out);
    pthread_mutex_unlock(&out_mu);
    free(line);
}

static json_t *hit_pair(uint64_t id, double score)
{
    char s[24];
    snprintf(s, sizeof s, "%llu", (unsigned long long)id);
    return json_pack("[s, f]", s, score);
}

/* ---- the ZeroMQ door (libpersrv) ------------------------------------------------------------ */

static void *zmq_worker(void *arg)
{
    (void)arg;
    persrv_options opt;
    persrv_options_init(&opt);
    opt.timeout_ms = timeout_ms;
    opt.retries = 0;
    persrv_t *c = persrv_connect_env(zmq_ep, &opt);
    if (!c) abort();
    for (;;) {
        if (atomic_load(&stopping)) break;
        long i = atomic_fetch_add(&zmq_door.next, 1);
        if (i >= zmq_door.want) break;
        const request *r = &reqs[(size_t)i % nreqs];
        persrv_query q = {.text = r->query, .user = r->user[0] ? r->user : NULL, .k = k};
        persrv_result *res = NULL;
        double t0 = now_ms();
        int rc = persrv_search(c, &q, &res);
        json_t *rec = record_new(&zmq_door, i, r, t0);
        if (rc != PERSRV_OK) {
            record_error(&zmq_door, rec, json_string(persrv_errname_last(c)), persrv_errstr(c));
            usleep(BACKOFF_MS * 1000); /* a dead end is not hammered */
            continue;
        }
        json_object_set_new(rec, "status", json_string("ok"));
        json_t *hits = json_array();
        for (size_t h = 0; h < res->nhits; h++)
            json_array_append_new(hits, hit_pair(res->hits[h].id, res->hits[h].score));
        record_answer(&zmq_door, rec, res->version, res->partial, res->personalized, hits);
        persrv_result_free(res);
        if (pause_ms) usleep((useconds_t)pause_ms * 1000);
    }
    persrv_close(c);
    return NULL;
}

/* ---- the HTTP door (evhttp client) ---------------------------------------------------------- */

typedef struct conn {
    struct evhttp_connection *evcon;
    long seq; /* the request in flight */
    double t0;
} conn;

static struct event_base *base;
static conn *conns;
static size_t nconns, active_conns;

static void http_send_next(conn *c);

static void http_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_send_next(arg);
}

/* Read a 200 answer's JSON into rec. Returns 0, or -1 with *why set. */
static int http_parse(const char *body, size_t n, json_t *rec, const char **why)
{
    json_error_t jerr;
    json_t *j = json_loadb(body, n, 0, &jerr);
    if (!j) {
        *why = "the body is not JSON";
        return -1;
    }
    json_t *jv = json_object_get(j, "version"), *jp = json_object_get(j, "partial"),
           *jz = json_object_get(j, "personalized"), *jh = json_object_get(j, "hits");
    uint64_t version = 0;
    if (json_is_integer(jv) && json_integer_value(jv) >= 0) {
        version = (uint64_t)json_integer_value(jv);
    } else if (json_is_string(jv)) {
        version = strtoull(json_string_value(jv), NULL, 10);
    } else {
        *why = "no version in the answer";
        json_decref(j);
        return -1;
    }
    if (!json_is_boolean(jp) || !json_is_boolean(jz) || !json_is_array(jh)) {
        *why = "partial, personalized or hits missing";
        json_decref(j);
        return -1;
    }
    json_t *hits = json_array();
    size_t i;
    json_t *h;
    json_array_foreach(jh, i, h)
    {
        json_t *id = json_object_get(h, "id"), *sc = json_object_get(h, "score");
        if (!json_is_string(id) || !json_is_number(sc)) {
            *why = "a hit without a string id or a numeric score";
            json_decref(hits);
            json_decref(j);
            return -1;
        }
        json_array_append_new(hits,
                              json_pack("[s, f]", json_string_value(id), json_number_value(sc)));
    }
    record_answer(&http_door, rec, version, json_is_true(jp), json_is_true(jz), hits);
    json_decref(j);
    return 0;
}

static void http_on_response(struct evhttp_request *req, void *arg)
{
    conn *c = arg;
    const request *r = &reqs[(size_t)c->seq % nreqs];
    json_t *rec = record_new(&http_door, c->seq, r, c->t0);
    int code = req ? evhttp_request_get_response_code(req) : 0;
    if (code == 0) {
        record_error(&http_door, rec, json_integer(0), "no response (connection failed)");
        /* A dead end is not hammered: the connection sends again after a pause. */
        struct timeval tv = {0, BACKOFF_MS * 1000};
        event_base_once(base, -1, EV_TIMEOUT, http_retry, c, &tv);
        return;
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    const char *body = n ? (const char *)evbuffer_pullup(in, -1) : "";
    json_object_set_new(rec, "status", json_integer(code));
    const char *why = NULL;
    char msg[512];
    if (code != 200) {
        snprintf(msg, sizeof msg, "HTTP %d: %.*s", code, (int)(n > 400 ? 400 : n), body);
        record_error(&http_door, rec, json_integer(code), msg);
    } else if (http_parse(body, n, rec, &why) != 0) {
        snprintf(msg, sizeof msg, "%s: %.*s", why, (int)(n > 400 ? 400 : n), body);
        record_error(&http_door, rec, json_integer(code), msg);
    }
    if (pause_ms) {
        struct timeval tv = {pause_ms / 1000, (pause_ms % 1000) * 1000};
        event_base_once(base, -1, EV_TIMEOUT, http_retry, c, &tv);
        return;
    }
    http_send_next(c);
}

/* Start c's next request, or retire c when the door is done or stopping. */
static void http_send_next(conn *c)
{
    for (;;) {
        long i;
        if (atomic_load(&stopping) ||
            (i = atomic_fetch_add(&http_door.next, 1)) >= http_door.want) {
            if (--active_conns == 0) event_base_loopexit(base, NULL);
            return;
        }
        struct evhttp_request *req = evhttp_request_new(http_on_response, c);
        if (!req) abort();
        struct evkeyvalq *h = evhttp_request_get_output_headers(req);
        evhttp_add_header(h, "Host", http_host);
        evhttp_add_header(h, "Connection", "keep-alive");
        c->seq = i;
        c->t0 = now_ms();
        if (evhttp_make_request(c->evcon, req, EVHTTP_REQ_GET, reqs[(size_t)i % nreqs].path) == 0)
            return;
        /* libevent freed req; record the failure and try the next request. */
        record_error(&http_door, record_new(&http_door, i, &reqs[(size_t)i % nreqs], c->t0),
                     json_integer(0), "evhttp_make_request failed");
    }
}

static void *http_loop(void *arg)
{
    (void)arg;
    active_conns = nconns;
    for (size_t i = 0; i < nconns; i++) http_send_next(&conns[i]);
    if (active_conns) event_base_dispatch(base);
    return NULL;
}

/* ---- setup ---------------------------------------------------------------------------------- */

/* Append the RFC 3986 percent-encoding of s to the buffer b. */
static void url_encode(struct evbuffer *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_' || *p == '.' || *p == '~')
            evbuffer_add(b, p, 1);
        else
            evbuffer_add_printf(b, "%%%c%c", hex[*p >> 4], hex[*p & 15]);
    }
}

static int load_requests(const char *file)
{
    FILE *f = fopen(file, "r");
    if (!f) {
        perror(file);
        return -1;
    }
    size_t cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    while ((len = getline(&line, &lcap, f)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
        if (len == 0) continue;
        char *tab = strchr(line, '\t');
        const char *user = "";
        if (tab) {
            *tab = '\0';
            user = tab + 1;
        }
        if (!line[0]) continue; /* no query */
        json_t *probe = json_pack("[s, s]", line, user);
        if (!probe) {
            fprintf(stderr, "push_load: %s: a request that is not UTF-8: %s\n", file, line);
            free(line);
            fclose(f);
            return -1;
        }
        json_decref(probe);
        if (nreqs == cap) {
            cap = cap ? cap * 2 : 256;
            request *n = realloc(reqs, cap * sizeof *reqs);
            if (!n) abort();
            reqs = n;
        }
        request *r = &reqs[nreqs++];
        r->query = strdup(line);
        r->user = strdup(user);
        struct evbuffer *b = evbuffer_new();
        evbuffer_add_printf(b, "/v1/search?k=%u&q=", k);
        url_encode(b, r->query);
        if (r->user[0]) {
            evbuffer_add_printf(b, "&user=");
            url_encode(b, r->user);
        }
        size_t n = evbuffer_get_length(b);
        r->path = xmalloc(n + 1);
        evbuffer_remove(b, r->path, n);
        r->path[n] = '\0';
        evbuffer_free(b);
        if (!r->query || !r->user) abort();
    }
    free(line);
    fclose(f);
    if (nreqs == 0) {
        fprintf(stderr, "push_load: %s holds no request\n", file);
        return -1;
    }
    return 0;
}

static json_t *door_summary(door *d)
{
    json_t *v = json_object();
    for (size_t i = 0; i < d->nversions; i++) {
        char key[24];
        snprintf(key, sizeof key, "%llu", (unsigned long long)d->version[i]);
        json_object_set_new(v, key, json_integer(d->nversion[i]));
    }
    if (d->other_versions) json_object_set_new(v, "other", json_integer(d->other_versions));
    long ok = atomic_load(&d->ok), errors = atomic_load(&d->errors);
    return json_pack("{s:I, s:I, s:I, s:I, s:o}", "answers", (json_int_t)(ok + errors), "ok",
                     (json_int_t)ok, "errors", (json_int_t)errors, "partial",
                     (json_int_t)atomic_load(&d->partial), "versions", v);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: push_load --requests FILE --http HOST:PORT --zmq EP --out ANSWERS.jsonl\n"
               "                 [--http-conns C (2)] [--zmq-threads T (2)] [--count N (1000)]\n"
               "                 [--http-count N] [--zmq-count N] [--stop-file F] [--k K (10)]\n"
               "                 [--timeout-ms MS (10000)] [--pause-ms MS (0)]\n"
               "FILE: one request a line, \"query<TAB>user\" (user optional). Every answer is\n"
               "written to ANSWERS as a JSON line; a summary goes to stdout.\n");
}

static int parse_long(const char *name, const char *s, long lo, long hi, long *v)
{
    char *end;
    long x = strtol(s, &end, 10);
    if (!*s || *end || x < lo || x > hi) {
        fprintf(stderr, "push_load: --%s must be an integer in %ld..%ld\n", name, lo, hi);
        return -1;
    }
    *v = x;
    return 0;
}

int main(int argc, char **argv)
{
    const char *req_file = NULL, *http = NULL, *out_file = NULL, *stop_file = NULL;
    long conns_n = 2, threads_n = 2, count = 1000, http_count = -1, zmq_count = -1, v;
    static const struct option opts[] = {{"requests", required_argument, 0, 'r'},
                                         {"http", required_argument, 0, 'H'},
                                         {"zmq", required_argument, 0, 'z'},
                                         {"out", required_argument, 0, 'o'},
                                         {"http-conns", required_argument, 0, 'c'},
                                         {"zmq-threads", required_argument, 0, 't'},
                                         {"count", required_argument, 0, 'n'},
                                         {"http-count", required_argument, 0, 'N'},
                                         {"zmq-count", required_argument, 0, 'Z'},
                                         {"stop-file", required_argument, 0, 's'},
                                         {"k", required_argument, 0, 'k'},
                                         {"timeout-ms", required_argument, 0, 'T'},
                                         {"pause-ms", required_argument, 0, 'p'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'r':
            req_file = optarg;
            break;
        case 'H':
            http = optarg;
            break;
        case 'z':
            zmq_ep = optarg;
            break;
        case 'o':
            out_file = optarg;
            break;
        case 's':
            stop_file = optarg;
            break;
        case 'c':
            if (parse_long("http-conns", optarg, 0, MAX_CONNS, &conns_n)) return 2;
            break;
        case 't':
            if (parse_long("zmq-threads", optarg, 0, MAX_THREADS, &threads_n)) return 2;
            break;
        case 'n':
            if (parse_long("count", optarg, 0, 1L << 40, &count)) return 2;
            break;
        case 'N':
            if (parse_long("http-count", optarg, 0, 1L << 40, &http_count)) return 2;
            break;
        case 'Z':
            if (parse_long("zmq-count", optarg, 0, 1L << 40, &zmq_count)) return 2;
            break;
        case 'k':
            if (parse_long("k", optarg, 1, 10000, &v)) return 2;
            k = (uint32_t)v;
            break;
        case 'T':
            if (parse_long("timeout-ms", optarg, 1, 3600000, &v)) return 2;
            timeout_ms = (uint32_t)v;
            break;
        case 'p':
            if (parse_long("pause-ms", optarg, 0, 60000, &pause_ms)) return 2;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || !req_file || !out_file || (conns_n > 0 && !http) ||
        (threads_n > 0 && !zmq_ep)) {
        fprintf(stderr, "push_load: --requests, --out, and --http / --zmq for the doors in use "
                        "are required\n");
        usage(stderr);
        return 2;
    }
    http_door.want = http_count >= 0 ? http_count : count;
    zmq_door.want = zmq_count >= 0 ? zmq_count : count;
    if (conns_n == 0) http_door.want = 0;
    if (threads_n == 0) zmq_door.want = 0;
    if (load_requests(req_file)) return 2;

    if (conns_n > 0) {
        const char *hp = http;
        if (!strncmp(hp, "http://", 7)) hp += 7;
        const char *colon = strrchr(hp, ':');
        size_t hl = colon ? (size_t)(colon - hp) : 0;
        http_port = colon ? atoi(colon + 1) : 0;
        if (!colon || hl == 0 || hl >= sizeof http_host || http_port <= 0 || http_port > 65535) {
            fprintf(stderr, "push_load: --http: '%s' is not HOST:PORT\n", http);
            return 2;
        }
        memcpy(http_host, hp, hl);
        http_host[hl] = '\0';
        while (http_host[0] && http_host[strlen(http_host) - 1] == '/')
            http_host[strlen(http_host) - 1] = '\0';
        if (!(base = event_base_new())) abort();
        nconns = (size_t)conns_n;
        conns = calloc(nconns, sizeof *conns);
        if (!conns) abort();
        for (size_t i = 0; i < nconns; i++) {
            conns[i].evcon =
                evhttp_connection_base_new(base, NULL, http_host, (unsigned short)http_port);
            if (!conns[i].evcon) abort();
            evhttp_connection_set_retries(conns[i].evcon, 0);
            evhttp_connection_set_timeout(conns[i].evcon, (int)((timeout_ms + 999) / 1000));
        }
    }
    if (threads_n > 0) {
        persrv_t *probe = persrv_connect_env(zmq_ep, NULL);
        if (!probe) abort();
        if (persrv_errcode(probe)) {
            fprintf(stderr, "push_load: --zmq %s: %s\n", zmq_ep, persrv_errstr(probe));
            persrv_close(probe);
            return 2;
        }
        persrv_close(probe);
    }
    if (!(out = fopen(out_file, "w"))) {
        perror(out_file);
        return 2;
    }

    t_start = now_ms();
    pthread_t zt[MAX_THREADS], ht;
    for (long i = 0; i < threads_n; i++)
        if (pthread_create(&zt[i], NULL, zmq_worker, NULL)) abort();
    if (conns_n > 0 && pthread_create(&ht, NULL, http_loop, NULL)) abort();

    /* Watch for the stop file while the doors work; they stop by themselves at their counts. */
    while (atomic_load(&zmq_door.next) < zmq_door.want ||
           atomic_load(&http_door.next) < http_door.want) {
        struct stat sb;
        if (stop_file && stat(stop_file, &sb) == 0) {
            atomic_store(&stopping, 1);
            break;
        }
        usleep(20000);
    }
    for (long i = 0; i < threads_n; i++) pthread_join(zt[i], NULL);
    if (conns_n > 0) pthread_join(ht, NULL);
    double secs = (now_ms() - t_start) / 1e3;
    if (fclose(out) != 0) {
        perror(out_file);
        return 2;
    }

    json_t *sum =
        json_pack("{s:o, s:o, s:f, s:b}", "http", door_summary(&http_door), "zmq",
                  door_summary(&zmq_door), "seconds", secs, "stopped", atomic_load(&stopping));
    char *s = json_dumps(sum, JSON_COMPACT);
    if (s) puts(s);
    free(s);
    json_decref(sum);

    for (size_t i = 0; i < nconns; i++) evhttp_connection_free(conns[i].evcon);
    free(conns);
    if (base) event_base_free(base);
    for (size_t i = 0; i < nreqs; i++) {
        free(reqs[i].query);
        free(reqs[i].user);
        free(reqs[i].path);
    }
    free(reqs);
    return 0;
}
