/*
 * bench_engine.c — single-node engine benchmark (one thread, warm).
 *
 *   bench_engine --data DIR [--index DIR] [--queries N] [--seed S] [--personalized X]
 *                [--no-exhaustive] [--json]
 *                [--zipf [--zipf-queries N] [--zipf-s S] [--zipf-off N] [--rcache-bytes B]]
 *
 * DIR holds corpus.jsonl, embeddings.npy and clicks.tsv (from `builder generate`). The index
 * is built in a child process (timed: that is the build time; the serving process never sees
 * the build's memory) unless --index names an existing one. The parent opens the index like a
 * serving node, runs N generated queries (1–2 phrases, 80% Chinese) once to warm up, then
 * times each query of a second pass: p50/p90/p99 latency, QPS, postings visited; then the
 * same queries exhaustively, for the pruning ratio, with every answer compared with the timed
 * pass's (exhaustive_mismatches must be 0) (--no-exhaustive: not, the exhaustive figures are
 * then 0; for profiling the pruned path alone). RSS is the serving process's. These
 * headline figures are always without the recall cache. cpu_p50_ms, cpu_p99_ms and cpu_qps
 * time the same pass by the thread's CPU time: on a shared machine they leave out the time
 * the thread waited for a core (cache and memory contention still count).
 *
 * --zipf then runs a stream of --zipf-queries (default 100,000) drawn from the same generated
 * queries, query i with probability ∝ 1/(i+1)^s (--zipf-s, default 1), through a recall cache
 * of --rcache-bytes (default 64 MiB, the shard's default) that starts empty: hit rate, QPS and
 * latency of the stream, each query timed. The first --zipf-off queries of the same stream
 * (default 20,000; 0: none) are then run again without the cache, for its QPS on the same
 * mix, and their answers compared with the cached run's (zipf_mismatches must be 0). Beside
 * each wall-clock QPS, *_cpu_qps divides by the thread's CPU time: queries per second of a
 * core, which a shared machine's wall clock understates.
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_stats.h"
#include "gen.h"
#include "pipeline.h"
#include "ps/rand.h"
#include "ps/rcache.h"
#include "ps/search.h"
#include "ps/store.h"

static long status_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, strlen(key)) == 0) v = strtol(line + strlen(key) + 1, NULL, 10);
    fclose(f);
    return v;
}

static long long du_bytes(const char *dir)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "du -sb '%s' 2>/dev/null", dir);
    FILE *p = popen(cmd, "r");
    long long n = -1;
    if (p) {
        if (fscanf(p, "%lld", &n) != 1) n = -1;
        pclose(p);
    }
    return n;
}

/* Build DIR's corpus into `index` in a child process; returns wall seconds or -1. */
static double build_in_child(const char *data, const char *index)
{
    double t0 = builder_now();
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        char pc[4096], pe[4096], pl[4096];
        ps_err err = {0};
        builder_corpus c;
        builder_built b;
        ps_clicklog log = {0};
        builder_cfg cfg;
        builder_cfg_defaults(&cfg);
        snprintf(pc, sizeof pc, "%s/corpus.jsonl", data);
        snprintf(pe, sizeof pe, "%s/embeddings.npy", data);
        snprintf(pl, sizeof pl, "%s/clicks.tsv", data);
        if (ps_clicklog_read(pl, &log, &err) || builder_corpus_load(pc, pe, 0, &c, &err) ||
            builder_build_index(&c, &log, &cfg, 0, &b, &err)) {
            fprintf(stderr, "bench_engine: build: %s\n", err.msg);
            _exit(1);
        }
        ps_store_input in = {.ix = b.ix,
                             .emb = c.emb.data,
                             .emb_row = b.row_of_doc,
                             .nprofiles = b.nusers,
                             .users = (const char *const *)b.users,
                             .profiles = b.profiles};
        if (ps_store_write(index, &in, &err)) {
            fprintf(stderr, "bench_engine: write: %s\n", err.msg);
            _exit(1);
        }
        _exit(0);
    }
    int status;
    if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return -1;
    return builder_now() - t0;
}

/* The Zipf stream's results (--zipf). */
typedef struct zipf_run {
    size_t n, distinct, off_n, mismatches, errors;
    double s, hit_rate, qps, p50, p99, off_qps, off_p50;
    double cpu_qps, off_cpu_qps; /* queries per second of this thread's CPU time */
    ps_rcache_stats cache;
} zipf_run;

static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Query i of the stream's options: as the headline passes (R 100, k 10, the personalized
 * share with the generated users' profiles). */
static void zipf_opts(size_t i, double personalized, const ps_profile *prof, size_t nprof,
                      ps_search_opts *o)
{
    ps_search_opts_default(o);
    o->R = 100;
    o->k = 10;
    if (nprof && (double)(i % 1000) < personalized * 1000) o->profile = &prof[i % nprof];
}

static int zipf_stream(ps_searcher_t *srch, char **queries, size_t nq, size_t n, double s,
                       size_t off_n, size_t rcache_bytes, uint64_t seed, double personalized,
                       const ps_profile *prof, size_t nprof, zipf_run *out)
{
    ps_err err = {0};
    memset(out, 0, sizeof *out);
    out->n = n;
    out->s = s;
    if (off_n > n) off_n = n;
    out->off_n = off_n;
    ps_rcache_t *cache = ps_rcache_new(rcache_bytes, &err);
    double *cdf = malloc(nq * sizeof *cdf), *lat = malloc((n ? n : 1) * sizeof *lat);
    uint32_t *pick = malloc((n ? n : 1) * sizeof *pick);
    ps_hit *hits = malloc(100 * sizeof *hits),
           *kept = malloc((off_n ? off_n : 1) * 10 * sizeof *kept);
    size_t *nkept = calloc(off_n ? off_n : 1, sizeof *nkept);
    char **drawn = malloc((n ? n : 1) * sizeof *drawn);
    if (!cache || !cdf || !lat || !pick || !hits || !kept || !nkept || !drawn) {
        fprintf(stderr, "bench_engine: zipf: %s\n", cache ? "out of memory" : err.msg);
        return 1;
    }
    double sum = 0;
    for (size_t i = 0; i < nq; i++) cdf[i] = sum += pow((double)(i + 1), -s);
    ps_rng rng;
    ps_rng_seed(&rng, seed, 13);
    for (size_t i = 0; i < n; i++) {
        double u = ps_rng_unif(&rng) * sum;
        size_t lo = 0, hi = nq - 1;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (cdf[mid] <= u)
                lo = mid + 1;
            else
                hi = mid;
        }
        pick[i] = (uint32_t)lo;
        drawn[i] = queries[lo];
    }
    qsort(drawn, n, sizeof *drawn, cmp_str);
    for (size_t i = 0; i < n; i++) out->distinct += i == 0 || strcmp(drawn[i], drawn[i - 1]);

    double total = 0, cpu0 = thread_cpu_s();
    for (size_t i = 0; i < n; i++) {
        ps_search_opts o;
        zipf_opts(i, personalized, prof, nprof, &o);
        o.rcache = cache;
        size_t nh = 0;
        const char *q = queries[pick[i]];
        double q0 = builder_now();
        int rc = ps_search(srch, q, strlen(q), &o, hits, &nh, NULL, NULL);
        double dt = builder_now() - q0;
        lat[i] = dt * 1e3;
        total += dt;
        out->errors += rc != 0;
        if (i < off_n) {
            memcpy(kept + i * 10, hits, nh * sizeof *hits);
            nkept[i] = rc ? SIZE_MAX : nh;
        }
    }
    double cpu = thread_cpu_s() - cpu0;
    out->cpu_qps = cpu > 0 ? (double)n / cpu : 0;
    ps_rcache_stats_get(cache, &out->cache);
    out->hit_rate = n ? (double)out->cache.hits / (double)n : 0;
    out->qps = total > 0 ? (double)n / total : 0;
    qsort(lat, n, sizeof *lat, bench_cmp_double);
    out->p50 = bench_pct(lat, n, 0.5);
    out->p99 = bench_pct(lat, n, 0.99);

    total = 0;
    cpu0 = thread_cpu_s();
    for (size_t i = 0; i < off_n; i++) {
        ps_search_opts o;
        zipf_opts(i, personalized, prof, nprof, &o);
        size_t nh = 0;
        const char *q = queries[pick[i]];
        double q0 = builder_now();
        int rc = ps_search(srch, q, strlen(q), &o, hits, &nh, NULL, NULL);
        double dt = builder_now() - q0;
        lat[i] = dt * 1e3;
        total += dt;
        if ((rc ? SIZE_MAX : nh) != nkept[i] || memcmp(hits, kept + i * 10, nh * sizeof *hits))
            out->mismatches++;
    }
    cpu = thread_cpu_s() - cpu0;
    out->off_cpu_qps = cpu > 0 ? (double)off_n / cpu : 0;
    out->off_qps = total > 0 ? (double)off_n / total : 0;
    qsort(lat, off_n, sizeof *lat, bench_cmp_double);
    out->off_p50 = bench_pct(lat, off_n, 0.5);
    ps_rcache_free(cache);
    free(cdf);
    free(lat);
    free(pick);
    free(hits);
    free(kept);
    free(nkept);
    free(drawn);
    return 0;
}

int main(int argc, char **argv)
{
    const char *data = NULL, *index = NULL;
    size_t nq = 2500;
    uint64_t seed = 1;
    double personalized = 1.0;
    int json = 0, zipf = 0, no_exhaustive = 0;
    size_t zipf_n = 100000, zipf_off = 20000, rcache_bytes = 64u << 20;
    double zipf_s = 1.0;
    static const struct option opts[] = {{"data", required_argument, 0, 'd'},
                                         {"index", required_argument, 0, 'i'},
                                         {"queries", required_argument, 0, 'q'},
                                         {"seed", required_argument, 0, 's'},
                                         {"personalized", required_argument, 0, 'p'},
                                         {"json", no_argument, 0, 'j'},
                                         {"zipf", no_argument, 0, 'z'},
                                         {"zipf-queries", required_argument, 0, 'Z'},
                                         {"zipf-s", required_argument, 0, 'S'},
                                         {"zipf-off", required_argument, 0, 'O'},
                                         {"rcache-bytes", required_argument, 0, 'C'},
                                         {"no-exhaustive", no_argument, 0, 'E'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'd':
            data = optarg;
            break;
        case 'i':
            index = optarg;
            break;
        case 'q':
            nq = strtoul(optarg, NULL, 10);
            break;
        case 's':
            seed = strtoull(optarg, NULL, 10);
            break;
        case 'p':
            personalized = strtod(optarg, NULL);
            break;
        case 'j':
            json = 1;
            break;
        case 'z':
            zipf = 1;
            break;
        case 'Z':
            zipf_n = strtoul(optarg, NULL, 10);
            break;
        case 'S':
            zipf_s = strtod(optarg, NULL);
            break;
        case 'O':
            zipf_off = strtoul(optarg, NULL, 10);
            break;
        case 'C':
            rcache_bytes = strtoul(optarg, NULL, 10);
            break;
        case 'E':
            no_exhaustive = 1;
            break;
        default:
            fprintf(stderr, "usage: bench_engine --data DIR [--index DIR] [--queries N] "
                            "[--seed S] [--personalized SHARE] [--no-exhaustive] [--json]\n"
                            "       [--zipf [--zipf-queries N] [--zipf-s S] [--zipf-off N] "
                            "[--rcache-bytes B]]\n");
            return ch == 'h' ? 0 : 2;
        }
    }
    if (!data && !index) {
        fprintf(stderr, "bench_engine: --data or --index is required\n");
        return 2;
    }
    char idx[4096];
    double build_s = -1;
    struct stat sb;
    if (!index) {
        snprintf(idx, sizeof idx, "%s/index.bench", data);
        if (stat(idx, &sb) == 0) {
            char cmd[4200];
            snprintf(cmd, sizeof cmd, "rm -rf '%s'", idx);
            if (system(cmd) != 0) return 1;
        }
        if ((build_s = build_in_child(data, idx)) < 0) return 1;
        index = idx;
    }

    ps_err err = {0};
    double t0 = builder_now();
    ps_store_t *st = ps_store_open(index, &err);
    if (!st) {
        fprintf(stderr, "bench_engine: %s\n", err.msg);
        return 1;
    }
    double load_s = builder_now() - t0;
    const ps_index_t *ix = ps_store_index(st);
    char **queries = NULL;
    if (builder_gen_queries(seed, nq, 0.8, &queries, &err)) {
        fprintf(stderr, "bench_engine: %s\n", err.msg);
        return 1;
    }
    /* Profiles of the generated users u01..u08 (those that exist). */
    ps_profile prof[64];
    size_t nprof = 0;
    for (int u = 1; u <= 64 && nprof < 64; u++) {
        char name[16];
        snprintf(name, sizeof name, "u%02d", u);
        memset(&prof[nprof], 0, sizeof prof[nprof]);
        if (ps_store_profile(st, name, &prof[nprof], NULL) == 0) nprof++;
    }
    ps_searcher_t *s = ps_searcher_new(ix, &err);
    ps_hit *hits = malloc(100 * sizeof *hits);
    double *lat = malloc(nq * sizeof *lat), *lat_ex = calloc(nq ? nq : 1, sizeof *lat_ex);
    double *clat = malloc(nq * sizeof *clat), ctotal = 0;
    uint64_t visited = 0, visited_ex = 0, npost = 0, scored = 0, cands = 0, bounded = 0;
    /* where the pruned pass's work and time went (ps_search_stats) */
    uint64_t windows = 0, scanned = 0, probes = 0, probe_hits = 0;
    uint64_t analyze_ns = 0, recall_ns = 0, prefer_ns = 0;
    size_t errors = 0, nhits_total = 0, mismatches_ex = 0;
    double total = 0, total_ex = 0;
    /* The timed pass's answers, which the exhaustive pass must repeat bit for bit. */
    ps_hit *kept = calloc(nq ? nq * 10 : 1, sizeof *kept);
    size_t *nkept = calloc(nq ? nq : 1, sizeof *nkept);
    for (int pass = 0; pass < (no_exhaustive ? 2 : 3); pass++) {
        for (size_t i = 0; i < nq; i++) {
            ps_search_opts o;
            ps_search_opts_default(&o);
            o.R = 100;
            o.k = 10;
            if (nprof && (double)(i % 1000) < personalized * 1000) o.profile = &prof[i % nprof];
            o.exhaustive = pass == 2;
            ps_search_stats sst;
            size_t nh = 0;
            double q0 = builder_now(), c0 = thread_cpu_s();
            int rc = ps_search(s, queries[i], strlen(queries[i]), &o, hits, &nh, &sst, NULL);
            double dt = builder_now() - q0, ct = thread_cpu_s() - c0;
            if (pass == 1) {
                lat[i] = dt * 1e3;
                total += dt;
                clat[i] = ct * 1e3;
                ctotal += ct;
                visited += sst.visited;
                npost += sst.npostings;
                scored += sst.scored;
                cands += sst.candidates;
                bounded += sst.bounded;
                windows += sst.windows;
                scanned += sst.scanned;
                probes += sst.probes;
                probe_hits += sst.probe_hits;
                analyze_ns += sst.analyze_ns;
                recall_ns += sst.recall_ns;
                prefer_ns += sst.prefer_ns;
                errors += rc != 0;
                nhits_total += nh;
                nkept[i] = nh;
                memcpy(kept + i * 10, hits, nh * sizeof *hits);
            } else if (pass == 2) {
                mismatches_ex += nh != nkept[i] || memcmp(hits, kept + i * 10, nh * sizeof *hits);
                lat_ex[i] = dt * 1e3;
                total_ex += dt;
                visited_ex += sst.visited;
            }
        }
    }
    zipf_run zr;
    if (zipf && (nq == 0 || zipf_stream(s, queries, nq, zipf_n, zipf_s, zipf_off, rcache_bytes,
                                        seed, personalized, prof, nprof, &zr)))
        return 1;
    qsort(lat, nq, sizeof *lat, bench_cmp_double);
    qsort(clat, nq, sizeof *clat, bench_cmp_double);
    qsort(lat_ex, nq, sizeof *lat_ex, bench_cmp_double);
    long rss = status_kb("VmRSS:"), hwm = status_kb("VmHWM:");
    long long size = du_bytes(index);
    if (json) {
        printf("{\"bench\":\"engine\",\"stickers\":%u,\"dim\":%u,\"postings\":%llu,"
               "\"queries\":%zu,\"personalized_share\":%.2f,\"R\":100,\"k\":10,"
               "\"p50_ms\":%.4f,\"p90_ms\":%.4f,\"p99_ms\":%.4f,\"mean_ms\":%.4f,\"qps\":%.1f,"
               "\"exhaustive_p50_ms\":%.4f,\"exhaustive_p99_ms\":%.4f,\"exhaustive_qps\":%.1f,"
               "\"postings_in_lists_per_query\":%.0f,\"postings_visited_per_query\":%.0f,"
               "\"exhaustive_postings_visited_per_query\":%.0f,\"candidates_per_query\":%.0f,"
               "\"bounded_per_query\":%.0f,\"scored_per_query\":%.0f,"
               "\"errors\":%zu,\"exhaustive_mismatches\":%zu,\"hits_per_query\":%.2f,\"build_s\":%."
               "2f,\"load_s\":%.2f,"
               "\"index_bytes\":%lld,\"rss_bytes\":%ld,\"peak_rss_bytes\":%ld,"
               "\"cpu_p50_ms\":%.4f,\"cpu_p99_ms\":%.4f,\"cpu_qps\":%.1f,"
               "\"windows_per_query\":%.1f,\"scanned_per_query\":%.0f,\"probes_per_query\":%.0f,"
               "\"probe_hits_per_query\":%.0f,\"analyze_us\":%.2f,\"recall_us\":%.2f,"
               "\"prefer_us\":%.2f",
               ps_index_ndocs(ix), ps_index_dim(ix), (unsigned long long)ps_index_npostings(ix), nq,
               personalized, bench_pct(lat, nq, 0.5), bench_pct(lat, nq, 0.9),
               bench_pct(lat, nq, 0.99), total * 1e3 / nq, nq / total, bench_pct(lat_ex, nq, 0.5),
               bench_pct(lat_ex, nq, 0.99), (total_ex > 0 ? nq / total_ex : 0.0),
               (double)npost / nq, (double)visited / nq, (double)visited_ex / nq,
               (double)cands / nq, (double)bounded / nq, (double)scored / nq, errors, mismatches_ex,
               (double)nhits_total / nq, build_s, load_s, size, rss * 1024, hwm * 1024,
               bench_pct(clat, nq, 0.5), bench_pct(clat, nq, 0.99), ctotal > 0 ? nq / ctotal : 0.0,
               (double)windows / nq, (double)scanned / nq, (double)probes / nq,
               (double)probe_hits / nq, analyze_ns / 1e3 / nq, recall_ns / 1e3 / nq,
               prefer_ns / 1e3 / nq);
        if (zipf)
            printf(",\"zipf_queries\":%zu,\"zipf_s\":%.2f,\"zipf_distinct_queries\":%zu,"
                   "\"rcache_bytes\":%zu,\"rcache_hit_rate\":%.4f,\"rcache_qps\":%.1f,"
                   "\"rcache_p50_ms\":%.4f,\"rcache_p99_ms\":%.4f,\"rcache_entries\":%llu,"
                   "\"rcache_bytes_held\":%llu,\"rcache_evictions\":%llu,\"zipf_errors\":%zu,"
                   "\"zipf_off_queries\":%zu,\"zipf_off_qps\":%.1f,\"zipf_off_p50_ms\":%.4f,"
                   "\"zipf_mismatches\":%zu,\"rcache_cpu_qps\":%.1f,\"zipf_off_cpu_qps\":%.1f",
                   zr.n, zr.s, zr.distinct, rcache_bytes, zr.hit_rate, zr.qps, zr.p50, zr.p99,
                   (unsigned long long)zr.cache.entries, (unsigned long long)zr.cache.bytes,
                   (unsigned long long)zr.cache.evictions, zr.errors, zr.off_n, zr.off_qps,
                   zr.off_p50, zr.mismatches, zr.cpu_qps, zr.off_cpu_qps);
        printf("}\n");
    } else {
        printf("%u stickers, %zu queries (%.0f%% personalized), R=100 k=10, one thread\n",
               ps_index_ndocs(ix), nq, personalized * 100);
        printf("pruned:     p50 %.3f ms  p90 %.3f ms  p99 %.3f ms  %.0f QPS  %.0f postings/query\n",
               bench_pct(lat, nq, 0.5), bench_pct(lat, nq, 0.9), bench_pct(lat, nq, 0.99),
               nq / total, (double)visited / nq);
        printf("per query:  %.0f windows, %.0f postings scanned, %.0f probes (%.0f found); "
               "analyze %.1f us, recall %.1f us, preference %.1f us (means)\n",
               (double)windows / nq, (double)scanned / nq, (double)probes / nq,
               (double)probe_hits / nq, analyze_ns / 1e3 / nq, recall_ns / 1e3 / nq,
               prefer_ns / 1e3 / nq);
        printf("exhaustive: p50 %.3f ms  p99 %.3f ms  %.0f QPS  %.0f postings/query\n",
               bench_pct(lat_ex, nq, 0.5), bench_pct(lat_ex, nq, 0.99),
               (total_ex > 0 ? nq / total_ex : 0.0), (double)visited_ex / nq);
        printf("build %.1f s, load %.1f s, index %.1f MB, RSS %.1f MB (peak %.1f MB)\n", build_s,
               load_s, size / 1e6, rss / 1024.0, hwm / 1024.0);
        if (zipf) {
            printf(
                "zipf s=%.2f: %zu queries (%zu distinct), recall cache %zu bytes: hit rate "
                "%.1f%%  %.0f QPS (%.0f per CPU second)  p50 %.3f ms  p99 %.3f ms  (%llu entries, "
                "%llu evictions)\n",
                zr.s, zr.n, zr.distinct, rcache_bytes, zr.hit_rate * 100, zr.qps, zr.cpu_qps,
                zr.p50, zr.p99, (unsigned long long)zr.cache.entries,
                (unsigned long long)zr.cache.evictions);
            printf("  same stream, first %zu without the cache: %.0f QPS (%.0f per CPU second)  "
                   "p50 %.3f ms  (%zu answers differ)\n",
                   zr.off_n, zr.off_qps, zr.off_cpu_qps, zr.off_p50, zr.mismatches);
        }
    }
    for (size_t i = 0; i < nprof; i++) ps_profile_clear(&prof[i]);
    builder_gen_queries_free(queries, nq);
    free(hits);
    free(lat);
    free(clat);
    free(lat_ex);
    free(kept);
    free(nkept);
    ps_searcher_free(s);
    ps_store_close(st);
    return 0;
}
