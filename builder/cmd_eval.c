/*
 * cmd_eval.c — `builder eval`: the paper's Table 3 on a seeded 80/20 split of the click log.
 *
 * The index, utility and profiles are built from the training 80% only (query integration
 * included), exactly as `builder build` would; the test 20% is grouped by (user, query) and
 * each baseline's top 20 is scored with M-MRR@k and R@k (eval.h).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "builder.h"
#include "pipeline.h"
#include "ps/eval.h"
#include "ps/rand.h"
#include "ps/search.h"

enum { M_GLOBAL_POP, M_USER_POP, M_BM25, M_BM25_OCR, M_NOPERS, M_PERSRV, NMETHODS };
static const char *const method_names[NMETHODS] = {
    "Global Pop", "User Pop", "BM25", "BM25 (+OCR)", "PerSRV w/o personalization", "PerSRV"};
static const size_t cutoffs[PS_EVAL_MAXK] = {1, 5, 10, 20};
#define TOPK 20

static void usage(FILE *f)
{
    fprintf(f,
            "usage: builder eval --data DIR | --corpus F --embeddings F --clicks F [options]\n\n"
            "Splits the click log 80/20 at random (seeded), builds everything from the 80%%, and\n"
            "prints M-MRR and R at 1/5/10/20 for the paper's baselines on the 20%%.\n\n"
            "options:\n"
            "  --data DIR          DIR/corpus.jsonl, DIR/embeddings.npy, DIR/clicks.tsv\n"
            "  --corpus/--embeddings/--clicks FILE   explicit inputs\n"
            "  --seed N            split seed (default 42)\n"
            "  --test-share X      share of clicks held out, 0 < X < 1 (default 0.2)\n"
            "  --kmax N            style centroids per user (default 5)\n"
            "  --json              print JSON instead of a table\n"
            "  --help              this text\n");
}

typedef struct tclick {
    uint32_t user, query; /* indexes in the full log */
    uint64_t sticker;
} tclick;

static int cmp_tclick(const void *a, const void *b)
{
    const tclick *x = a, *y = b;
    if (x->user != y->user) return x->user < y->user ? -1 : 1;
    if (x->query != y->query) return x->query < y->query ? -1 : 1;
    return (x->sticker > y->sticker) - (x->sticker < y->sticker);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

typedef struct popent {
    uint32_t count, gpop;
    uint64_t id;
} popent;

static int cmp_popent(const void *a, const void *b)
{
    const popent *x = a, *y = b;
    if (x->count != y->count) return x->count > y->count ? -1 : 1;
    if (x->gpop != y->gpop) return x->gpop > y->gpop ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Top TOPK stickers by (count desc, global pop desc, id asc) over ents; OUT ranked. */
static size_t top_pop(popent *ents, size_t n, uint64_t *ranked)
{
    qsort(ents, n, sizeof *ents, cmp_popent);
    size_t k = n < TOPK ? n : TOPK;
    for (size_t i = 0; i < k; i++) ranked[i] = ents[i].id;
    return k;
}

int builder_cmd_eval(int argc, char **argv)
{
    const char *data = NULL, *corpus = NULL, *npy = NULL, *clicks = NULL;
    uint64_t seed = 42;
    double share = 0.2;
    int json = 0;
    builder_cfg cfg;
    builder_cfg_defaults(&cfg);
    cfg.progress = 1;
    static const struct option opts[] = {{"data", required_argument, 0, 'd'},
                                         {"corpus", required_argument, 0, 'c'},
                                         {"embeddings", required_argument, 0, 'e'},
                                         {"clicks", required_argument, 0, 'l'},
                                         {"seed", required_argument, 0, 's'},
                                         {"test-share", required_argument, 0, 't'},
                                         {"kmax", required_argument, 0, 'k'},
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        switch (ch) {
        case 'd':
            data = optarg;
            break;
        case 'c':
            corpus = optarg;
            break;
        case 'e':
            npy = optarg;
            break;
        case 'l':
            clicks = optarg;
            break;
        case 's':
            seed = strtoull(optarg, &end, 10);
            if (*end) goto bad;
            break;
        case 't':
            share = strtod(optarg, &end);
            if (*end || !(share > 0 && share < 1)) goto bad;
            break;
        case 'k':
            cfg.kmax = (uint32_t)strtoul(optarg, &end, 10);
            if (*end || cfg.kmax < 1 || cfg.kmax > PS_PROFILE_KMAX) goto bad;
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
    char pc[4096], pe[4096], pl[4096];
    if (data) {
        snprintf(pc, sizeof pc, "%s/corpus.jsonl", data);
        snprintf(pe, sizeof pe, "%s/embeddings.npy", data);
        snprintf(pl, sizeof pl, "%s/clicks.tsv", data);
        corpus = corpus ? corpus : pc;
        npy = npy ? npy : pe;
        clicks = clicks ? clicks : pl;
    }
    if (!corpus || !npy || !clicks || optind != argc) goto bad;

    ps_err err = {0};
    builder_corpus c = {0};
    builder_built b = {0};
    ps_clicklog log = {0}, train = {0};
    tclick *test = NULL;
    size_t ntest = 0;
    ps_eval_t *ev[NMETHODS] = {0};
    ps_searcher_t *srch = NULL;
    ps_hit *hits = NULL;
    popent *pe_all = NULL, *pe_user = NULL;
    uint64_t *upop = NULL;
    size_t *nupop = NULL;
    uint64_t *truth = NULL, ranked[TOPK], gpop_ranked[TOPK];
    size_t ngpop = 0, failed_queries = 0, ngroups = 0;
    int rc = 1;

    if (ps_clicklog_read(clicks, &log, &err) || builder_corpus_load(corpus, npy, 1, &c, &err))
        goto fail;

    /* Seeded split: a Fisher-Yates shuffle of click positions; the first share are test. */
    uint32_t *perm = malloc((log.n ? log.n : 1) * sizeof *perm);
    uint8_t *is_test = calloc(log.n ? log.n : 1, 1);
    test = malloc((log.n ? log.n : 1) * sizeof *test);
    if (!perm || !is_test || !test) {
        free(perm);
        free(is_test);
        ps_err_set(&err, PS_ENOMEM, "out of memory splitting clicks");
        goto fail;
    }
    uint64_t st = seed;
    for (size_t i = 0; i < log.n; i++) perm[i] = (uint32_t)i;
    for (size_t i = log.n; i > 1; i--) {
        size_t j = ps_splitmix64(&st) % i;
        uint32_t t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
    size_t want = (size_t)(share * (double)log.n + 0.5);
    for (size_t i = 0; i < want; i++) is_test[perm[i]] = 1;
    free(perm);
    int arc = 0;
    for (size_t i = 0; i < log.n && !arc; i++) {
        if (is_test[i])
            test[ntest++] = (tclick){log.user[i], log.query[i], log.sticker[i]};
        else
            arc = ps_clicklog_add(&train, log.users[log.user[i]], log.queries[log.query[i]],
                                  log.sticker[i], &err);
    }
    free(is_test);
    if (arc) goto fail;

    if (builder_build_index(&c, &train, &cfg, 1, &b, &err)) goto fail;
    const ps_index_t *ix = b.ix;
    uint32_t ndocs = ps_index_ndocs(ix);

    for (int m = 0; m < NMETHODS; m++)
        if (!(ev[m] = ps_eval_new(cutoffs, PS_EVAL_MAXK, &err))) goto fail;
    if (!(srch = ps_searcher_new(ix, &err))) goto fail;
    hits = malloc(100 * sizeof *hits);
    pe_all = malloc((ndocs ? ndocs : 1) * sizeof *pe_all);
    pe_user = malloc((train.n ? train.n : 1) * sizeof *pe_user);
    truth = malloc((ntest ? ntest : 1) * sizeof *truth);
    if (!hits || !pe_all || !pe_user || !truth) {
        ps_err_set(&err, PS_ENOMEM, "out of memory evaluating");
        goto fail;
    }

    /* Global Pop: one ranking for everybody. */
    for (uint32_t d = 0; d < ndocs; d++)
        pe_all[d] = (popent){b.pop[d], b.pop[d], ps_index_id(ix, d)};
    ngpop = top_pop(pe_all, ndocs, gpop_ranked);

    /* User Pop: each user's own training clicks, most clicked first. */
    upop = malloc((log.nusers ? log.nusers : 1) * TOPK * sizeof *upop);
    nupop = calloc(log.nusers ? log.nusers : 1, sizeof *nupop);
    uint64_t *ustk = malloc((train.n ? train.n : 1) * sizeof *ustk);
    if (!upop || !nupop || !ustk) {
        free(ustk);
        ps_err_set(&err, PS_ENOMEM, "out of memory evaluating");
        goto fail;
    }
    for (size_t u = 0; u < log.nusers; u++) {
        size_t n = 0, nup = 0;
        for (size_t i = 0; i < train.n; i++)
            if (strcmp(train.users[train.user[i]], log.users[u]) == 0) ustk[n++] = train.sticker[i];
        qsort(ustk, n, sizeof *ustk, cmp_u64);
        for (size_t i = 0; i < n; i++) {
            if (i > 0 && ustk[i] == ustk[i - 1]) {
                pe_user[nup - 1].count++;
                continue;
            }
            uint32_t doc;
            uint32_t gp = ps_index_doc(ix, ustk[i], &doc) == 0 ? b.pop[doc] : 0;
            pe_user[nup++] = (popent){1, gp, ustk[i]};
        }
        nupop[u] = top_pop(pe_user, nup, upop + u * TOPK);
    }
    free(ustk);

    qsort(test, ntest, sizeof *test, cmp_tclick);
    for (size_t g = 0; g < ntest;) {
        size_t e = g, nt = 0;
        while (e < ntest && test[e].user == test[g].user && test[e].query == test[g].query) e++;
        for (size_t i = g; i < e; i++) truth[nt++] = test[i].sticker;
        const char *uname = log.users[test[g].user], *q = log.queries[test[g].query];
        uint32_t uid = test[g].user;
        ngroups++;

        /* The user's training profile and clicks. */
        const ps_profile *prof = NULL;
        for (size_t u = 0; u < b.nusers; u++)
            if (strcmp(b.users[u], uname) == 0) prof = &b.profiles[u];
        ps_eval_add(ev[M_GLOBAL_POP], uid, gpop_ranked, ngpop, truth, nt, NULL);
        ps_eval_add(ev[M_USER_POP], uid, upop + (size_t)uid * TOPK, nupop[uid], truth, nt, NULL);

        for (int m = M_BM25; m <= M_PERSRV; m++) {
            ps_search_opts o;
            size_t nh = 0;
            ps_search_opts_default(&o);
            o.k = TOPK;
            if (m == M_BM25) o.field_w[PS_F_OCR] = 0.0f;
            o.use_utility = m >= M_NOPERS;
            o.profile = m == M_PERSRV ? prof : NULL;
            if (ps_search(srch, q, strlen(q), &o, hits, &nh, NULL, NULL)) {
                nh = 0;
                if (m == M_BM25) failed_queries++;
            }
            for (size_t i = 0; i < nh; i++) ranked[i] = hits[i].id;
            ps_eval_add(ev[m], uid, ranked, nh, truth, nt, NULL);
        }
        g = e;
    }

    double mmrr[NMETHODS][PS_EVAL_MAXK], rec[NMETHODS][PS_EVAL_MAXK];
    for (int m = 0; m < NMETHODS; m++) ps_eval_result(ev[m], mmrr[m], rec[m]);
    if (json) {
        printf("{\"seed\":%llu,\"test_share\":%g,\"train_clicks\":%zu,\"test_clicks\":%zu,"
               "\"groups\":%zu,\"unanswerable_queries\":%zu,\"methods\":[",
               (unsigned long long)seed, share, train.n, ntest, ngroups, failed_queries);
        for (int m = 0; m < NMETHODS; m++) {
            printf("%s{\"method\":\"%s\"", m ? "," : "", method_names[m]);
            for (int k = 0; k < PS_EVAL_MAXK; k++)
                printf(",\"mmrr@%zu\":%.6f,\"r@%zu\":%.6f", cutoffs[k], mmrr[m][k], cutoffs[k],
                       rec[m][k]);
            printf("}");
        }
        printf("]}\n");
    } else {
        printf("Table 3 — seed %llu, %zu training / %zu test clicks, %zu (user, query) groups\n\n",
               (unsigned long long)seed, train.n, ntest, ngroups);
        printf("%-28s %8s %8s %8s %8s  %8s %8s %8s %8s\n", "method", "MMRR@1", "MMRR@5", "MMRR@10",
               "MMRR@20", "R@1", "R@5", "R@10", "R@20");
        for (int m = 0; m < NMETHODS; m++) {
            printf("%-28s", method_names[m]);
            for (int k = 0; k < PS_EVAL_MAXK; k++) printf(" %8.4f", mmrr[m][k]);
            printf(" ");
            for (int k = 0; k < PS_EVAL_MAXK; k++) printf(" %8.4f", rec[m][k]);
            printf("\n");
        }
        if (failed_queries)
            printf("\n%zu test queries had no searchable token (counted as misses)\n",
                   failed_queries);
    }
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "builder eval: %s\n", err.msg);
out:
    for (int m = 0; m < NMETHODS; m++) ps_eval_free(ev[m]);
    ps_searcher_free(srch);
    free(hits);
    free(pe_all);
    free(pe_user);
    free(upop);
    free(nupop);
    free(truth);
    free(test);
    builder_built_free(&b);
    builder_corpus_free(&c);
    ps_clicklog_free(&log);
    ps_clicklog_free(&train);
    return rc;
bad:
    fprintf(stderr, "builder eval: bad or missing arguments\n");
    usage(stderr);
    return 2;
}
