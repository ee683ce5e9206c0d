/*
 * bench_shard.c — the CPU cost of one shard's search on its slice (one thread, warm).
 *
 *   bench_shard --index SLICE [--profiles DIR] [--queries N] [--seed S] [--repeat R]
 *               [--depth D | --shards N] [--personalized SHARE] [--json]
 *
 * SLICE is one shard directory of `builder build --shards N` (or a single-node index). The
 * work timed is what a shard's worker does for one search request, without the wire:
 * ps_search_shard with R = D (--depth, default 100; --shards N: what the broker asks each
 * of N shards for first, ps_shard_depth(100, N), as bench/run_capacity.sh passes) on the
 * distinct tokens the broker's analyzer sends (the queries are analyzed once up front, as the
 * broker does, and not timed), with the profile of user u01..u64 in rotation (those found in
 * --profiles DIR, default the slice itself; a --personalized share of the queries carries one,
 * default 1), recall cache off. The N
 * generated queries are the ones bench_engine and bench_cluster ask (same seed, same
 * generator). One warm-up pass, then --repeat (default 5) timed passes; each pass's cost is
 * its thread CPU time (CLOCK_THREAD_CPUTIME_ID) over its queries, which a shared, loaded
 * machine does not inflate as it does wall time. Reported: the median over the passes of CPU
 * microseconds per query (and every pass's figure), the wall figure beside it, postings visited
 * and hits per query. The capacity model (bench/capacity_model.py) takes these as a shard's
 * cost against its slice size.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_stats.h"
#include "gen.h"
#include "ps/analyzer.h"
#include "ps/search.h"
#include "ps/store.h"

#define MAX_REPEAT 101
#define MAX_PROF   64

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    const char *index = NULL, *profiles = NULL;
    size_t nq = 1000, repeat = 5;
    uint64_t seed = 1;
    double personalized = 1.0;
    int json = 0;
    uint32_t depth = 100, nshards = 0;
    int shards_given = 0;
    static const struct option opts[] = {{"index", required_argument, 0, 'i'},
                                         {"depth", required_argument, 0, 'd'},
                                         {"shards", required_argument, 0, 'n'},
                                         {"profiles", required_argument, 0, 'P'},
                                         {"queries", required_argument, 0, 'q'},
                                         {"seed", required_argument, 0, 's'},
                                         {"repeat", required_argument, 0, 'r'},
                                         {"personalized", required_argument, 0, 'p'},
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'i':
            index = optarg;
            break;
        case 'P':
            profiles = optarg;
            break;
        case 'q':
            nq = strtoul(optarg, NULL, 10);
            break;
        case 's':
            seed = strtoull(optarg, NULL, 10);
            break;
        case 'r':
            repeat = strtoul(optarg, NULL, 10);
            break;
        case 'p':
            personalized = strtod(optarg, NULL);
            break;
        case 'j':
            json = 1;
            break;
        case 'd':
            depth = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'n':
            nshards = (uint32_t)strtoul(optarg, NULL, 10);
            shards_given = 1;
            break;
        default:
            fprintf(stderr, "usage: bench_shard --index SLICE [--profiles DIR] [--queries N] "
                            "[--seed S] [--repeat R] [--depth D | --shards N] "
                            "[--personalized SHARE] [--json]\n");
            return ch == 'h' ? 0 : 2;
        }
    }
    int shards_ok = !shards_given || (nshards >= 1 && nshards <= 1000);
    if (shards_given && shards_ok) depth = ps_shard_depth(100, nshards);
    if (!index || nq == 0 || repeat == 0 || repeat > MAX_REPEAT || depth < 10 ||
        depth > PS_SEARCH_MAX_R || !shards_ok) {
        fprintf(stderr,
                "bench_shard: --index is required; --queries >= 1; --repeat 1..%d; --depth "
                "10..%d; --shards 1..1000\n",
                MAX_REPEAT, PS_SEARCH_MAX_R);
        return 2;
    }

    ps_err err = {0};
    ps_store_t *st = ps_store_open(index, &err);
    if (!st) {
        fprintf(stderr, "bench_shard: %s: %s\n", index, err.msg);
        return 1;
    }
    const ps_index_t *ix = ps_store_index(st);

    /* The users' profiles, as the broker sends them. */
    ps_profile prof[MAX_PROF];
    size_t nprof = 0;
    ps_profiles_t *pf = NULL;
    if (profiles && !(pf = ps_profiles_open(profiles, &err))) {
        fprintf(stderr, "bench_shard: %s: %s\n", profiles, err.msg);
        return 1;
    }
    for (int u = 1; u <= MAX_PROF; u++) {
        char name[16];
        snprintf(name, sizeof name, "u%02d", u);
        memset(&prof[nprof], 0, sizeof prof[nprof]);
        int rc = pf ? ps_profiles_get(pf, name, &prof[nprof], NULL)
                    : ps_store_profile(st, name, &prof[nprof], NULL);
        if (rc == 0) nprof++;
    }

    /* The broker's analysis, once per query, outside the timing. */
    char **queries = NULL;
    if (builder_gen_queries(seed, nq, 0.8, &queries, &err)) {
        fprintf(stderr, "bench_shard: %s\n", err.msg);
        return 1;
    }
    ps_analyzer_t *an = ps_analyzer_new(&err);
    ps_tokens *tok = calloc(nq, sizeof *tok);
    if (!an || !tok) {
        fprintf(stderr, "bench_shard: %s\n", an ? "out of memory" : err.msg);
        return 1;
    }
    for (size_t i = 0; i < nq; i++) {
        ps_tokens_init(&tok[i]);
        if (ps_analyze(an, queries[i], strlen(queries[i]), "query", &tok[i], &err)) {
            fprintf(stderr, "bench_shard: query %zu: %s\n", i, err.msg);
            return 1;
        }
        ps_tokens_distinct(&tok[i]);
    }

    ps_searcher_t *s = ps_searcher_new(ix, &err);
    ps_hit *hits = malloc(depth * sizeof *hits);
    if (!s || !hits) {
        fprintf(stderr, "bench_shard: %s\n", s ? "out of memory" : err.msg);
        return 1;
    }
    double cpu_us[MAX_REPEAT], wall_us[MAX_REPEAT], runs[MAX_REPEAT];
    uint64_t visited = 0, nhits = 0;
    size_t errors = 0;
    for (size_t pass = 0; pass <= repeat; pass++) {
        double c0 = clock_s(CLOCK_THREAD_CPUTIME_ID), w0 = clock_s(CLOCK_MONOTONIC);
        for (size_t i = 0; i < nq; i++) {
            ps_search_opts o;
            ps_search_opts_default(&o);
            o.R = depth;
            o.k = 10;
            if (nprof && (double)(i % 1000) < personalized * 1000) o.profile = &prof[i % nprof];
            ps_search_stats sst;
            size_t nh = 0;
            int rc = ps_search_shard(s, &tok[i], &o, hits, &nh, &sst, NULL);
            if (pass == 1) {
                errors += rc != 0;
                visited += sst.visited;
                nhits += nh;
            }
        }
        double c = clock_s(CLOCK_THREAD_CPUTIME_ID) - c0, w = clock_s(CLOCK_MONOTONIC) - w0;
        if (pass > 0) {
            cpu_us[pass - 1] = runs[pass - 1] = c * 1e6 / (double)nq;
            wall_us[pass - 1] = w * 1e6 / (double)nq;
        }
    }
    double cpu_med = bench_median(cpu_us, repeat), wall_med = bench_median(wall_us, repeat);
    if (json) {
        printf("{\"bench\":\"shard\",\"slice_stickers\":%u,\"dim\":%u,\"postings\":%llu,"
               "\"queries\":%zu,\"repeat\":%zu,\"personalized_share\":%.2f,\"profiles\":%zu,"
               "\"R\":%u,\"cpu_us_per_query\":%.2f,\"wall_us_per_query\":%.2f,"
               "\"cpu_us_per_query_runs\":[",
               ps_index_ndocs(ix), ps_index_dim(ix), (unsigned long long)ps_index_npostings(ix), nq,
               repeat, personalized, nprof, depth, cpu_med, wall_med);
        for (size_t r = 0; r < repeat; r++) printf("%s%.2f", r ? "," : "", runs[r]);
        printf("],\"postings_visited_per_query\":%.0f,\"hits_per_query\":%.2f,\"errors\":%zu}\n",
               (double)visited / (double)nq, (double)nhits / (double)nq, errors);
    } else {
        printf("%u stickers in the slice, %zu queries x %zu passes, R=100, %zu profiles\n",
               ps_index_ndocs(ix), nq, repeat, nprof);
        printf("CPU %.1f us/query (median of passes), wall %.1f us/query, %.0f postings "
               "visited/query, %.1f hits/query, %zu errors\n",
               cpu_med, wall_med, (double)visited / (double)nq, (double)nhits / (double)nq, errors);
    }
    for (size_t i = 0; i < nq; i++) ps_tokens_free(&tok[i]);
    free(tok);
    for (size_t i = 0; i < nprof; i++) ps_profile_clear(&prof[i]);
    free(hits);
    ps_searcher_free(s);
    ps_analyzer_free(an);
    ps_profiles_close(pf);
    builder_gen_queries_free(queries, nq);
    ps_store_close(st);
    return errors ? 1 : 0;
}
