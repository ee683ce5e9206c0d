/*
 * metrics.c — the broker's Prometheus metrics (text exposition format 0.0.4):
 *   persrv_requests_total{door,endpoint,code}          counter: requests of both front doors
 *   persrv_request_duration_seconds{door,endpoint}     histogram
 *   persrv_broker_partial_answers_total{door}          counter: searches answered while some
 *                                                      shard did not answer (partial: true)
 *   persrv_shard_request_duration_seconds{shard}       histogram (answered calls)
 *   persrv_shard_failovers_total{shard}                counter
 *   persrv_shard_failures_total{shard}                 counter (calls no replica answered)
 *   persrv_broker_second_rounds_total                  counter: searches that asked some
 *                                                      shards again at depth R
 *   persrv_broker_second_round_shards_total            counter: the shard calls they made
 *   persrv_broker_clicks_in_flight                     gauge (sent to the profile primary,
 *                                                      not answered yet)
 *   persrv_broker_clicks_total{outcome}                counter: stored, duplicate, in_doubt
 *                                                      (no answer in click-deadline-ms),
 *                                                      refused (the primary's Error)
 *   persrv_http_connections*{door}, ...               the HTTP doors' connections (httpguard.h)
 *   persrv_build_info{version,commit,build_type}       gauge, 1 (ps/version.h)
 * Buckets span 0.5 ms .. 1 s around the latency targets (DESIGN §7). No per-user labels.
 * door is "http" (the HTTP/JSON door) or "zmq" (the ZeroMQ front door); endpoint is search,
 * msearch, click, sticker, healthz, readyz, metrics, openapi, page (the search page, /), image
 * (/images/) or other over HTTP, and search, click, sticker, health or other over ZeroMQ, so one
 * endpoint sums over both doors (each search of an msearch counts as a partial answer on its
 * own, the msearch once as a request). code is the HTTP status (on the ZeroMQ door: the status
 * the same outcome would have over HTTP; a click whose outcome is unknown counts as 504).
 *
 * Every lane thread records into one broker_metrics_t: a mutex guards it (a few counter
 * increments per request; rendering holds it while it formats).
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "ps/httpguard.h"
#include "ps/version.h"

#define NBUCKETS 12
static const double bucket_le[NBUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                           0.05,   0.1,   0.25,   0.5,   1.0,  2.5};
#define MAX_CODES 16 /* distinct HTTP status codes counted per endpoint */

typedef struct histo {
    uint64_t bucket[NBUCKETS]; /* per bucket, not cumulative */
    uint64_t count;
    double sum;
} histo;

typedef struct endpoint_stats {
    int code[MAX_CODES];
    uint64_t count[MAX_CODES];
    int ncodes;
    histo latency;
} endpoint_stats;

typedef struct shard_stats {
    histo latency;
    uint64_t failovers, failures;
} shard_stats;

enum { CLICK_STORED, CLICK_DUPLICATE, CLICK_IN_DOUBT, CLICK_REFUSED, NCLICK_OUTCOMES };
static const char *const click_outcomes[NCLICK_OUTCOMES] = {"stored", "duplicate", "in_doubt",
                                                            "refused"};

enum { DOOR_HTTP, DOOR_ZMQ, NDOORS };
static const char *const door_names[NDOORS] = {"http", "zmq"};

struct broker_metrics {
    pthread_mutex_t mu;
    endpoint_stats ep[BROKER_NEP];
    shard_stats *shard;
    uint32_t nshards;
    uint64_t clicks_in_flight;
    uint64_t second_rounds, second_round_shards;
    uint64_t clicks[NCLICK_OUTCOMES];
    uint64_t partial[NDOORS];
};

/* The door and endpoint labels of each BROKER_EP_*. */
static const struct {
    int door; /* DOOR_* */
    const char *endpoint;
} ep_labels[BROKER_NEP] = {
    [BROKER_EP_SEARCH] = {DOOR_HTTP, "search"},      [BROKER_EP_CLICK] = {DOOR_HTTP, "click"},
    [BROKER_EP_STICKER] = {DOOR_HTTP, "sticker"},    [BROKER_EP_HEALTHZ] = {DOOR_HTTP, "healthz"},
    [BROKER_EP_READYZ] = {DOOR_HTTP, "readyz"},      [BROKER_EP_METRICS] = {DOOR_HTTP, "metrics"},
    [BROKER_EP_OTHER] = {DOOR_HTTP, "other"},        [BROKER_EP_ZMQ_SEARCH] = {DOOR_ZMQ, "search"},
    [BROKER_EP_ZMQ_STICKER] = {DOOR_ZMQ, "sticker"}, [BROKER_EP_ZMQ_HEALTH] = {DOOR_ZMQ, "health"},
    [BROKER_EP_ZMQ_OTHER] = {DOOR_ZMQ, "other"},     [BROKER_EP_ZMQ_CLICK] = {DOOR_ZMQ, "click"},
    [BROKER_EP_MSEARCH] = {DOOR_HTTP, "msearch"},    [BROKER_EP_OPENAPI] = {DOOR_HTTP, "openapi"},
    [BROKER_EP_PAGE] = {DOOR_HTTP, "page"},          [BROKER_EP_IMAGE] = {DOOR_HTTP, "image"},
};

broker_metrics_t *broker_metrics_new(uint32_t nshards)
{
    broker_metrics_t *m = calloc(1, sizeof *m);
    if (!m || !(m->shard = calloc(nshards ? nshards : 1, sizeof *m->shard))) {
        free(m);
        return NULL;
    }
    m->nshards = nshards;
    pthread_mutex_init(&m->mu, NULL);
    return m;
}

void broker_metrics_free(broker_metrics_t *m)
{
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m->shard);
    free(m);
}

static void observe(histo *h, double v)
{
    int b = 0;
    while (b < NBUCKETS && v > bucket_le[b]) b++;
    if (b < NBUCKETS) h->bucket[b]++;
    h->count++;
    h->sum += v;
}

void broker_metrics_http(broker_metrics_t *m, int endpoint, int status, double seconds)
{
    endpoint_stats *e = &m->ep[endpoint];
    pthread_mutex_lock(&m->mu);
    int i = 0;
    while (i < e->ncodes && e->code[i] != status) i++;
    if (i == e->ncodes && e->ncodes < MAX_CODES) e->code[e->ncodes++] = status;
    if (i < e->ncodes) e->count[i]++;
    observe(&e->latency, seconds);
    pthread_mutex_unlock(&m->mu);
}

void broker_metrics_search_answered(broker_metrics_t *m, int endpoint,
                                    const struct broker_result *r)
{
    if (r->ok >= r->nshards) return;
    pthread_mutex_lock(&m->mu);
    m->partial[ep_labels[endpoint].door]++;
    pthread_mutex_unlock(&m->mu);
}

void broker_metrics_shard(broker_metrics_t *m, uint32_t shard, int ok, double seconds,
                          uint32_t failovers)
{
    if (shard >= m->nshards) return;
    shard_stats *s = &m->shard[shard];
    pthread_mutex_lock(&m->mu);
    s->failovers += failovers;
    if (ok)
        observe(&s->latency, seconds);
    else
        s->failures++;
    pthread_mutex_unlock(&m->mu);
}

void broker_metrics_second_round(broker_metrics_t *m, uint32_t n)
{
    pthread_mutex_lock(&m->mu);
    m->second_rounds++;
    m->second_round_shards += n;
    pthread_mutex_unlock(&m->mu);
}

void broker_metrics_click_sent(broker_metrics_t *m)
{
    pthread_mutex_lock(&m->mu);
    m->clicks_in_flight++;
    pthread_mutex_unlock(&m->mu);
}

void broker_metrics_click_done(broker_metrics_t *m, int rc, int duplicate)
{
    int o = rc == 0             ? (duplicate ? CLICK_DUPLICATE : CLICK_STORED)
            : rc == PS_EINDOUBT ? CLICK_IN_DOUBT
                                : CLICK_REFUSED;
    pthread_mutex_lock(&m->mu);
    if (m->clicks_in_flight) m->clicks_in_flight--;
    m->clicks[o]++;
    pthread_mutex_unlock(&m->mu);
}

static void put_histo(ps_buf *b, const char *name, const char *label, const histo *h)
{
    uint64_t cum = 0;
    for (int i = 0; i < NBUCKETS; i++) {
        cum += h->bucket[i];
        ps_buf_printf(b, "%s_bucket{%s,le=\"%g\"} %llu\n", name, label, bucket_le[i],
                      (unsigned long long)cum);
    }
    ps_buf_printf(b, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, label, (unsigned long long)h->count);
    ps_buf_printf(b, "%s_sum{%s} %.9g\n", name, label, h->sum);
    ps_buf_printf(b, "%s_count{%s} %llu\n", name, label, (unsigned long long)h->count);
}

void broker_metrics_render(broker_metrics_t *m, ps_buf *b)
{
    pthread_mutex_lock(&m->mu);
    char label[64];
    ps_buf_printf(b, "# HELP persrv_requests_total Requests by front door (http, zmq), endpoint "
                     "and status code.\n"
                     "# TYPE persrv_requests_total counter\n");
    for (int e = 0; e < BROKER_NEP; e++)
        for (int i = 0; i < m->ep[e].ncodes; i++)
            ps_buf_printf(b,
                          "persrv_requests_total{door=\"%s\",endpoint=\"%s\",code=\"%d\"} "
                          "%llu\n",
                          door_names[ep_labels[e].door], ep_labels[e].endpoint, m->ep[e].code[i],
                          (unsigned long long)m->ep[e].count[i]);
    ps_buf_printf(b, "# HELP persrv_request_duration_seconds Request latency by front door and "
                     "endpoint.\n"
                     "# TYPE persrv_request_duration_seconds histogram\n");
    for (int e = 0; e < BROKER_NEP; e++) {
        if (!m->ep[e].latency.count) continue;
        snprintf(label, sizeof label, "door=\"%s\",endpoint=\"%s\"", door_names[ep_labels[e].door],
                 ep_labels[e].endpoint);
        put_histo(b, "persrv_request_duration_seconds", label, &m->ep[e].latency);
    }
    ps_buf_printf(b, "# HELP persrv_broker_partial_answers_total Searches answered while some "
                     "shard did not answer (partial: true), by front door.\n"
                     "# TYPE persrv_broker_partial_answers_total counter\n");
    for (int d = 0; d < NDOORS; d++)
        ps_buf_printf(b, "persrv_broker_partial_answers_total{door=\"%s\"} %llu\n", door_names[d],
                      (unsigned long long)m->partial[d]);
    ps_buf_printf(b,
                  "# HELP persrv_shard_request_duration_seconds Latency of answered shard calls.\n"
                  "# TYPE persrv_shard_request_duration_seconds histogram\n");
    for (uint32_t s = 0; s < m->nshards; s++) {
        snprintf(label, sizeof label, "shard=\"%u\"", s);
        put_histo(b, "persrv_shard_request_duration_seconds", label, &m->shard[s].latency);
    }
    ps_buf_printf(b, "# HELP persrv_shard_failovers_total Attempts moved to another replica.\n"
                     "# TYPE persrv_shard_failovers_total counter\n");
    for (uint32_t s = 0; s < m->nshards; s++)
        ps_buf_printf(b, "persrv_shard_failovers_total{shard=\"%u\"} %llu\n", s,
                      (unsigned long long)m->shard[s].failovers);
    ps_buf_printf(b, "# HELP persrv_shard_failures_total Shard calls that no replica answered.\n"
                     "# TYPE persrv_shard_failures_total counter\n");
    for (uint32_t s = 0; s < m->nshards; s++)
        ps_buf_printf(b, "persrv_shard_failures_total{shard=\"%u\"} %llu\n", s,
                      (unsigned long long)m->shard[s].failures);
    ps_buf_printf(b,
                  "# HELP persrv_broker_second_rounds_total Searches that asked some shards "
                  "again at depth R (their first-round depth was not enough).\n"
                  "# TYPE persrv_broker_second_rounds_total counter\n"
                  "persrv_broker_second_rounds_total %llu\n"
                  "# HELP persrv_broker_second_round_shards_total Shard calls of second rounds.\n"
                  "# TYPE persrv_broker_second_round_shards_total counter\n"
                  "persrv_broker_second_round_shards_total %llu\n",
                  (unsigned long long)m->second_rounds, (unsigned long long)m->second_round_shards);
    ps_buf_printf(
        b,
        "# HELP persrv_broker_clicks_in_flight Clicks sent to the profile primary and not "
        "answered yet.\n"
        "# TYPE persrv_broker_clicks_in_flight gauge\n"
        "persrv_broker_clicks_in_flight %llu\n",
        (unsigned long long)m->clicks_in_flight);
    ps_buf_printf(
        b, "# HELP persrv_broker_clicks_total Clicks sent to the profile primary, by outcome "
           "(in_doubt: no answer in click-deadline-ms; the click may be stored).\n"
           "# TYPE persrv_broker_clicks_total counter\n");
    for (int o = 0; o < NCLICK_OUTCOMES; o++)
        ps_buf_printf(b, "persrv_broker_clicks_total{outcome=\"%s\"} %llu\n", click_outcomes[o],
                      (unsigned long long)m->clicks[o]);
    pthread_mutex_unlock(&m->mu);
    ps_httpguard_render_metrics(b); /* the HTTP doors' connection counters (ps/httpguard.h) */
    ps_version_render_metrics(b);   /* persrv_build_info */
}
