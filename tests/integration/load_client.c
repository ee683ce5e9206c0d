/*
 * load_client.c — bounded closed-loop load through libpersrv for the failover test
 * (tests/integration/test_failover_load.sh): THREADS threads, each with its own persrv_t (the
 * library's thread rule), send REQUESTS searches in all, cycling through the queries of a file
 * (one per line) and the given users, and classify every answer.
 *
 *   load_client EP QUERIES_FILE REQUESTS THREADS USERS BUDGET_MS EXPECT
 *     USERS      comma-separated user names ("-" for none)
 *     BUDGET_MS  the longest a search may take: the broker's deadline-ms × (retries + 1), plus
 *                whatever slack the caller grants for a loaded machine
 *     EXPECT     "complete": every answer complete (not partial); "partial:S": every answer
 *                partial with shard S named among the failures and no other shard missing;
 *                "personalized": complete, and every search with a user personalized (the
 *                users must have profiles)
 *
 * Prints one line "requests=… complete=… partial=… errors=… over_budget=… max_ms=… p50_ms=…"
 * and exits 1 when any request failed (an error from the library: a 5xx / unavailable /
 * timeout), took longer than BUDGET_MS, or did not match EXPECT; the first few offenders are
 * printed. Each call gets a library timeout of 4 × BUDGET_MS and no retry, so a lost answer
 * shows as an error instead of being retried away.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "persrv.h"

#define MAX_QUERIES 100000
#define MAX_USERS   64
#define MAX_REPORTS 5
#define MAX_ERRORS  20 /* after this many failed requests the run stops (and fails) */

static char *queries[MAX_QUERIES];
static size_t nqueries;
static char *users[MAX_USERS];
static size_t nusers;
static const char *endpoint;
static long requests, budget_ms;
static int want_partial = -1; /* -1: complete; else the shard that must be missing */
static int want_personalized; /* every search with a user must come back personalized */
static atomic_long next_req, complete, partial, errors, over_budget, mismatched, reports;
static double *latency_ms; /* per request */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void report(const char *fmt, const char *a, const char *b, double ms)
{
    if (atomic_fetch_add(&reports, 1) < MAX_REPORTS) {
        fprintf(stderr, fmt, a, b, ms);
        fputc('\n', stderr);
    }
}

static void *worker(void *arg)
{
    (void)arg;
    persrv_options opt;
    persrv_options_init(&opt);
    opt.timeout_ms = (uint32_t)(4 * budget_ms);
    opt.retries = 0;
    persrv_t *c = persrv_connect_env(endpoint, &opt);
    if (!c || persrv_errcode(c)) {
        fprintf(stderr, "connect %s: %s\n", endpoint, c ? persrv_errstr(c) : "out of memory");
        exit(1);
    }
    for (;;) {
        long i = atomic_fetch_add(&next_req, 1);
        if (i >= requests) break;
        persrv_query q = {.text = queries[(size_t)i % nqueries],
                          .user = nusers ? users[(size_t)i % nusers] : NULL,
                          .k = 10};
        persrv_result *r = NULL;
        double t0 = now_ms();
        int rc = persrv_search(c, &q, &r);
        double ms = now_ms() - t0;
        latency_ms[i] = ms;
        if (ms > (double)budget_ms) {
            atomic_fetch_add(&over_budget, 1);
            report("over budget: '%s' (%s) took %.1f ms", q.text, rc ? "error" : "answered", ms);
        }
        if (rc) {
            if (atomic_fetch_add(&errors, 1) >= MAX_ERRORS) { /* a dead end: stop early */
                atomic_store(&next_req, requests);
                break;
            }
            report("error: '%s': %s (%.1f ms)", q.text, persrv_errstr(c), ms);
            continue;
        }
        if (r->partial) {
            atomic_fetch_add(&partial, 1);
            int named = 0, others = 0;
            for (size_t f = 0; f < r->nfailures; f++) {
                if ((int)r->failures[f].shard == want_partial)
                    named = 1;
                else
                    others = 1;
            }
            if (want_partial < 0 || !named || others) {
                atomic_fetch_add(&mismatched, 1);
                report("unexpected partial answer: '%s': %s (%.1f ms)", q.text,
                       r->nfailures ? r->failures[0].reason : "no failure named", ms);
            }
        } else {
            atomic_fetch_add(&complete, 1);
            if (want_personalized && q.user && !r->personalized) {
                atomic_fetch_add(&mismatched, 1);
                report("not personalized for user %s: '%s' (%.1f ms)", q.user, q.text, ms);
            }
            if (want_partial >= 0) {
                atomic_fetch_add(&mismatched, 1);
                report("complete answer, expected a partial one: '%s'%s (%.1f ms)", q.text, "", ms);
            }
        }
        persrv_result_free(r);
    }
    persrv_close(c);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc != 8) {
        fprintf(stderr, "usage: load_client EP QUERIES_FILE REQUESTS THREADS USERS BUDGET_MS "
                        "complete|personalized|partial:S\n");
        return 2;
    }
    endpoint = argv[1];
    requests = atol(argv[3]);
    long threads = atol(argv[4]);
    budget_ms = atol(argv[6]);
    if (requests < 1 || threads < 1 || threads > 256 || budget_ms < 1) {
        fprintf(stderr, "load_client: REQUESTS, THREADS (1..256) and BUDGET_MS must be positive\n");
        return 2;
    }
    if (!strncmp(argv[7], "partial:", 8))
        want_partial = atoi(argv[7] + 8);
    else if (!strcmp(argv[7], "personalized"))
        want_personalized = 1;
    else if (strcmp(argv[7], "complete")) {
        fprintf(stderr, "load_client: EXPECT is complete, personalized or partial:S\n");
        return 2;
    }
    FILE *f = fopen(argv[2], "r");
    if (!f) {
        perror(argv[2]);
        return 2;
    }
    char line[4096];
    while (nqueries < MAX_QUERIES && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        if (line[0] && !(queries[nqueries++] = strdup(line))) return 2;
    }
    fclose(f);
    if (!nqueries) {
        fprintf(stderr, "load_client: no queries in %s\n", argv[2]);
        return 2;
    }
    if (strcmp(argv[5], "-")) {
        char *save = NULL;
        for (char *u = strtok_r(argv[5], ",", &save); u && nusers < MAX_USERS;
             u = strtok_r(NULL, ",", &save))
            users[nusers++] = u;
    }
    if (!(latency_ms = calloc((size_t)requests, sizeof *latency_ms))) return 2;
    pthread_t tid[256];
    for (long t = 0; t < threads; t++) pthread_create(&tid[t], NULL, worker, NULL);
    for (long t = 0; t < threads; t++) pthread_join(tid[t], NULL);
    qsort(latency_ms, (size_t)requests, sizeof *latency_ms, cmp_double);
    printf("requests=%ld complete=%ld partial=%ld errors=%ld over_budget=%ld mismatched=%ld "
           "max_ms=%.1f p50_ms=%.2f p99_ms=%.2f budget_ms=%ld\n",
           requests, (long)complete, (long)partial, (long)errors, (long)over_budget,
           (long)mismatched, latency_ms[requests - 1], latency_ms[requests / 2],
           latency_ms[(size_t)((double)requests * 0.99)], budget_ms);
    for (size_t i = 0; i < nqueries; i++) free(queries[i]);
    free(latency_ms);
    return errors || over_budget || mismatched ? 1 : 0;
}
