/*
 * test_search.c — the engine against the reference scorer, and its two evaluation paths
 * against each other, on a generated 20,000-sticker corpus with 300+ queries.
 *
 *  - exactness: engine top 100 == reference top 100 (ids, order, scores to 1e-5 relative),
 *    personalization on and off, and for users without a profile; a position may differ only
 *    where the reference itself has a tie within that tolerance;
 *  - pruned == exhaustive: identical ids, order and bit-identical scores;
 *  - an index written to RocksDB and opened again answers bit-identically.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gen.h"
#include "pipeline.h"
#include "ps/search.h"
#include "ps/store.h"
#include "../ref/reference.h"

#define NSTICKERS 20000
#define NQUERIES  300
#define TOPR      100
#define TOL       1e-5

static struct {
    char dir[64];
    builder_corpus corpus;
    ps_clicklog log;
    builder_built built;
    ref_corpus *ref;
    char **queries;
    size_t nqueries;
    size_t ngen;
} F;

static void rm_rf(const char *path)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", path);
}

static int setup(void **state)
{
    (void)state;
    ps_err err = {0};
    builder_gen_cfg g;
    char p1[128], p2[128], p3[128];
    strcpy(F.dir, "/tmp/ps_test_search_XXXXXX");
    if (!mkdtemp(F.dir)) return -1;
    builder_gen_defaults(&g);
    g.seed = 7;
    g.nstickers = NSTICKERS;
    g.dim = 32;
    g.nusers = 8;
    g.nclicks = 4000;
    g.npairs = 800;
    g.nqueries = 500;
    if (builder_generate(&g, F.dir, &err)) goto fail;
    snprintf(p1, sizeof p1, "%s/corpus.jsonl", F.dir);
    snprintf(p2, sizeof p2, "%s/embeddings.npy", F.dir);
    snprintf(p3, sizeof p3, "%s/clicks.tsv", F.dir);
    if (builder_corpus_load(p1, p2, 0, &F.corpus, &err) || ps_clicklog_read(p3, &F.log, &err))
        goto fail;
    builder_cfg cfg;
    builder_cfg_defaults(&cfg);
    if (builder_build_index(&F.corpus, &F.log, &cfg, 1, &F.built, &err)) goto fail;
    F.ref = ref_new(F.corpus.recs, F.corpus.n, F.corpus.emb.data, F.corpus.emb.cols, &F.log);

    /* Generated queries (1–2 phrases, 80% Chinese) plus every 10th click-log query, so the
     * integrated queries field takes part too. */
    F.ngen = NQUERIES;
    if (builder_gen_queries(11, F.ngen, 0.8, &F.queries, &err)) goto fail;
    size_t extra = F.log.nqueries / 10;
    F.queries = realloc(F.queries, (F.ngen + extra) * sizeof *F.queries);
    for (size_t i = 0; i < extra; i++) F.queries[F.ngen + i] = strdup(F.log.queries[i * 10]);
    F.nqueries = F.ngen + extra;
    return 0;
fail:
    fprintf(stderr, "setup: %s\n", err.msg);
    return -1;
}

static int teardown(void **state)
{
    (void)state;
    for (size_t i = F.ngen; i < F.nqueries; i++) free(F.queries[i]);
    builder_gen_queries_free(F.queries, F.ngen);
    ref_free(F.ref);
    builder_built_free(&F.built);
    builder_corpus_free(&F.corpus);
    ps_clicklog_free(&F.log);
    rm_rf(F.dir);
    return 0;
}

static int close_enough(double a, double b)
{
    return fabs(a - b) <= TOL * fmax(fabs(a), fabs(b));
}

static int cmp_ref_id(const void *a, const void *b)
{
    const ref_hit *x = a, *y = b;
    return (x->id > y->id) - (x->id < y->id);
}

/* Compare the engine's hits with the reference's ranked recall set ref[0..nref). Returns the
 * number of positions whose id differs (each one checked to be a reference near-tie). */
static size_t compare(const char *q, const ps_hit *h, size_t nh, const ref_hit *ref, size_t nref)
{
    size_t moved = 0;
    ref_hit *byid = malloc((nref ? nref : 1) * sizeof *byid);
    memcpy(byid, ref, nref * sizeof *byid);
    qsort(byid, nref, sizeof *byid, cmp_ref_id);
    if (nh != nref) fail_msg("query '%s': engine %zu hits, reference %zu", q, nh, nref);
    for (size_t i = 0; i < nh; i++) {
        if (!close_enough(h[i].score, ref[i].score))
            fail_msg("query '%s' rank %zu: engine score %.9g (id %llu), reference %.9g (id %llu)",
                     q, i + 1, h[i].score, (unsigned long long)h[i].id, ref[i].score,
                     (unsigned long long)ref[i].id);
        ref_hit key = {.id = h[i].id};
        const ref_hit *r = bsearch(&key, byid, nref, sizeof *byid, cmp_ref_id);
        if (h[i].id != ref[i].id) {
            moved++;
            /* Allowed only where the reference has two scores within tolerance. */
            if (!r && !close_enough(h[i].recall, ref[nref - 1].recall))
                fail_msg("query '%s' rank %zu: id %llu is not in the reference top %zu", q, i + 1,
                         (unsigned long long)h[i].id, nref);
        }
        if (r) {
            if (!close_enough(h[i].relevance, r->relevance) ||
                !close_enough(h[i].utility, r->utility) || !close_enough(h[i].recall, r->recall) ||
                !close_enough(h[i].score, r->score))
                fail_msg("query '%s' id %llu: engine rel %.9g util %.9g recall %.9g score %.9g; "
                         "reference %.9g %.9g %.9g %.9g",
                         q, (unsigned long long)h[i].id, h[i].relevance, h[i].utility, h[i].recall,
                         h[i].score, r->relevance, r->utility, r->recall, r->score);
        }
    }
    free(byid);
    return moved;
}

/* Run every query through engine and reference with the given profile chooser. */
static void run_exact(int personalize, int unknown_user)
{
    ps_searcher_t *s = ps_searcher_new(F.built.ix, NULL);
    ps_hit *hits = malloc(TOPR * sizeof *hits);
    size_t answered = 0, moved = 0, personalized_hits = 0, total = 0;
    assert_non_null(s);
    for (size_t qi = 0; qi < F.nqueries; qi++) {
        const char *q = F.queries[qi];
        const ps_profile *prof = NULL;
        if (personalize) prof = &F.built.profiles[qi % F.built.nusers];
        if (unknown_user) prof = NULL; /* a user the profile store does not know */
        ps_search_opts o;
        ps_search_opts_default(&o);
        o.R = TOPR;
        o.k = TOPR;
        o.profile = prof;
        size_t nh = 0, nall = 0;
        ref_hit *all = NULL;
        int rc = ps_search(s, q, strlen(q), &o, hits, &nh, NULL, NULL);
        int rrc = ref_recall(F.ref, q, o.field_w, 1, &all, &nall);
        assert_int_equal(rc == 0, rrc == 0);
        if (rc) continue;
        size_t nref = nall < TOPR ? nall : TOPR;
        ref_prefer(F.ref, all, nref, prof, o.alpha);
        moved += compare(q, hits, nh, all, nref);
        for (size_t i = 0; i < nh; i++) personalized_hits += hits[i].centroid >= 0;
        total += nh;
        answered += nh > 0;
        free(all);
    }
    printf("exact: %zu/%zu queries with hits, %zu hits compared, %zu near-tie swaps, "
           "%zu hits with a preference\n",
           answered, F.nqueries, total, moved, personalized_hits);
    assert_true(answered >= NQUERIES * 9 / 10);
    if (personalize && !unknown_user)
        assert_true(personalized_hits > total / 100);
    else
        assert_int_equal(personalized_hits, 0);
    free(hits);
    ps_searcher_free(s);
}

static void test_exact_unpersonalized(void **state)
{
    (void)state;
    run_exact(0, 0);
}

static void test_exact_personalized(void **state)
{
    (void)state;
    run_exact(1, 0);
}

static void test_exact_unknown_user(void **state)
{
    (void)state;
    run_exact(1, 1);
}

/* The engine must not depend on ranking order of equal-score stickers: check the reference
 * top 100 has the documented tie order (recall desc, id asc) as the engine does. */
static void assert_same_hits(const char *q, const ps_hit *a, size_t na, const ps_hit *b, size_t nb)
{
    if (na != nb) fail_msg("query '%s': pruned %zu hits, exhaustive %zu", q, na, nb);
    for (size_t i = 0; i < na; i++)
        if (a[i].id != b[i].id || a[i].score != b[i].score || a[i].recall != b[i].recall ||
            a[i].relevance != b[i].relevance)
            fail_msg("query '%s' rank %zu: pruned %llu %.17g, exhaustive %llu %.17g", q, i + 1,
                     (unsigned long long)a[i].id, a[i].score, (unsigned long long)b[i].id,
                     b[i].score);
}

static void test_pruned_equals_exhaustive(void **state)
{
    (void)state;
    ps_searcher_t *s = ps_searcher_new(F.built.ix, NULL);
    ps_hit *a = malloc(TOPR * sizeof *a), *b = malloc(TOPR * sizeof *b);
    uint64_t vp = 0, ve = 0, nposting = 0;
    static const uint32_t Rs[] = {1, 10, 100};
    for (size_t qi = 0; qi < F.nqueries; qi++) {
        const char *q = F.queries[qi];
        for (int variant = 0; variant < 4; variant++) {
            ps_search_opts o;
            ps_search_opts_default(&o);
            o.R = Rs[qi % 3];
            o.k = o.R;
            if (variant == 1) o.profile = &F.built.profiles[qi % F.built.nusers];
            if (variant == 2) o.use_utility = 0;
            if (variant == 3) o.field_w[PS_F_OCR] = 0.0f;
            ps_search_stats sp, se;
            size_t na = 0, nb = 0;
            int rc = ps_search(s, q, strlen(q), &o, a, &na, &sp, NULL);
            o.exhaustive = 1;
            int rc2 = ps_search(s, q, strlen(q), &o, b, &nb, &se, NULL);
            assert_int_equal(rc, rc2);
            if (rc) continue;
            assert_same_hits(q, a, na, b, nb);
            /* The work counters add up: every posting scanned is a visited one, a probe finds
             * at most one posting, the exhaustive path has no windows, and each search took
             * some time in recall. */
            assert_true(sp.windows > 0);
            assert_true(sp.scanned <= sp.visited);
            assert_true(sp.probe_hits <= sp.probes);
            assert_true(sp.recall_ns > 0);
            assert_int_equal(se.windows, 0);
            assert_int_equal(se.scanned, 0);
            assert_int_equal(se.probes, 0);
            vp += sp.visited;
            ve += se.visited;
            nposting += sp.npostings;
        }
    }
    printf("postings visited: pruned %llu, exhaustive %llu (%.1f%%) of %llu in the lists\n",
           (unsigned long long)vp, (unsigned long long)ve, 100.0 * (double)vp / (double)ve,
           (unsigned long long)nposting);
    assert_int_equal(ve, nposting);
    assert_true(vp < ve);
    free(a);
    free(b);
    ps_searcher_free(s);
}

/* The builder numbers stickers of equal utility by recursive graph bisection (the default
 * `--reorder`): the same corpus numbered by id gives the same answers, bit for bit. */
static void test_numbering_changes_no_answer(void **state)
{
    (void)state;
    builder_cfg cfg;
    builder_built byid;
    ps_err err = {0};
    builder_cfg_defaults(&cfg);
    assert_true(cfg.reorder_fields != 0);
    cfg.reorder_fields = 0;
    if (builder_build_index(&F.corpus, &F.log, &cfg, 1, &byid, &err)) fail_msg("%s", err.msg);
    const ps_index_t *x = F.built.ix, *y = byid.ix;
    uint32_t n = ps_index_ndocs(x), moved = 0;
    assert_int_equal(ps_index_ndocs(y), n);
    for (uint32_t d = 0; d < n; d++) {
        moved += ps_index_id(x, d) != ps_index_id(y, d);
        assert_true(ps_index_utility(x, d) == ps_index_utility(y, d)); /* same utility order */
        if (d > 0 && ps_index_utility(y, d) == ps_index_utility(y, d - 1))
            assert_true(ps_index_id(y, d) > ps_index_id(y, d - 1)); /* by id: ascending */
    }
    assert_true(moved > n / 2); /* most docs of the one big utility run moved */

    ps_searcher_t *a = ps_searcher_new(x, NULL), *b = ps_searcher_new(y, NULL);
    ps_hit *ha = malloc(TOPR * sizeof *ha), *hb = malloc(TOPR * sizeof *hb);
    for (size_t qi = 0; qi < F.nqueries; qi++) {
        const char *q = F.queries[qi];
        for (int variant = 0; variant < 2; variant++) {
            ps_search_opts o;
            ps_search_opts_default(&o);
            o.k = TOPR;
            if (variant == 1) o.profile = &F.built.profiles[qi % F.built.nusers];
            size_t na = 0, nb = 0;
            int rc = ps_search(a, q, strlen(q), &o, ha, &na, NULL, NULL);
            assert_int_equal(rc, ps_search(b, q, strlen(q), &o, hb, &nb, NULL, NULL));
            if (!rc) assert_same_hits(q, ha, na, hb, nb);
        }
    }
    free(ha);
    free(hb);
    ps_searcher_free(a);
    ps_searcher_free(b);
    builder_built_free(&byid);
}

static const char *stored_text(void *ctx, uint32_t doc, int f, size_t *len)
{
    (void)ctx;
    uint32_t row = F.built.row_of_doc[doc];
    if (f == PS_F_QUERIES) {
        *len = F.built.queries_len[row];
        return F.built.queries[row];
    }
    *len = F.corpus.recs[row].field_len[f];
    return F.corpus.recs[row].field[f];
}

static void test_store_roundtrip(void **state)
{
    (void)state;
    char path[128];
    ps_err err = {0};
    snprintf(path, sizeof path, "%s/index", F.dir);
    ps_store_input in = {.ix = F.built.ix,
                         .emb = F.corpus.emb.data,
                         .emb_row = F.built.row_of_doc,
                         .text = stored_text,
                         .nprofiles = F.built.nusers,
                         .users = (const char *const *)F.built.users,
                         .profiles = F.built.profiles,
                         .info_json = "{\"test\":true}"};
    assert_int_equal(ps_store_write(path, &in, &err), 0);
    /* Writing over an existing index is refused. */
    assert_int_equal(ps_store_write(path, &in, &err), PS_EEXIST);
    ps_store_t *st = ps_store_open(path, &err);
    if (!st) fail_msg("open: %s", err.msg);
    const ps_index_t *ix = ps_store_index(st);
    assert_int_equal(ps_index_ndocs(ix), ps_index_ndocs(F.built.ix));
    assert_int_equal(ps_index_npostings(ix), ps_index_npostings(F.built.ix));

    ps_searcher_t *s1 = ps_searcher_new(F.built.ix, NULL), *s2 = ps_searcher_new(ix, NULL);
    ps_hit *a = malloc(TOPR * sizeof *a), *b = malloc(TOPR * sizeof *b);
    for (size_t qi = 0; qi < F.nqueries; qi += 3) {
        const char *q = F.queries[qi];
        ps_profile p = {0};
        const char *user = F.built.users[qi % F.built.nusers];
        assert_int_equal(ps_store_profile(st, user, &p, &err), 0);
        ps_search_opts o;
        ps_search_opts_default(&o);
        o.k = TOPR;
        o.profile = &F.built.profiles[qi % F.built.nusers];
        size_t na = 0, nb = 0;
        int rc = ps_search(s1, q, strlen(q), &o, a, &na, NULL, NULL);
        o.profile = &p;
        int rc2 = ps_search(s2, q, strlen(q), &o, b, &nb, NULL, NULL);
        assert_int_equal(rc, rc2);
        if (!rc) assert_same_hits(q, a, na, b, nb);
        ps_profile_clear(&p);
    }
    /* Stored fields and unknown lookups. */
    char *fields[PS_NFIELDS];
    assert_int_equal(ps_store_fields(st, 0, fields, &err), 0);
    uint32_t row = F.built.row_of_doc[0];
    assert_string_equal(fields[PS_F_KEYWORDS], F.corpus.recs[row].field[PS_F_KEYWORDS]);
    for (int f = 0; f < PS_NFIELDS; f++) free(fields[f]);
    assert_int_equal(ps_store_fields(st, ps_index_ndocs(ix), fields, &err), PS_ENOTFOUND);
    ps_profile p = {0};
    assert_int_equal(ps_store_profile(st, "no-such-user", &p, &err), PS_ENOTFOUND);
    char *info = ps_store_info(st);
    assert_string_equal(info, "{\"test\":true}");
    free(info);
    free(a);
    free(b);
    ps_searcher_free(s1);
    ps_searcher_free(s2);
    ps_store_close(st);
    assert_null(ps_store_open(F.dir, &err)); /* not an index directory */
}

/* DESIGN invariant 1 at the engine level: N shards (each a ps_index_partition slice answering
 * ps_search_shard) merged by ps_merge_hits == one node, ids, order and bit-identical scores. */
static void test_shards_equal_single_node(void **state)
{
    (void)state;
    static const uint32_t Ns[] = {1, 2, 4, 7};
    ps_analyzer_t *an = ps_analyzer_new(NULL);
    ps_tokens tok;
    ps_tokens_init(&tok);
    ps_searcher_t *single = ps_searcher_new(F.built.ix, NULL);
    ps_hit *want = malloc(TOPR * sizeof *want), *all = malloc(7 * TOPR * sizeof *all);
    for (size_t ni = 0; ni < sizeof Ns / sizeof Ns[0]; ni++) {
        uint32_t N = Ns[ni];
        ps_index_t *shard[7];
        ps_searcher_t *ss[7];
        uint32_t total = 0, smallest = UINT32_MAX;
        for (uint32_t i = 0; i < N; i++) {
            ps_err err = {0};
            shard[i] = ps_index_partition(F.built.ix, N, i, NULL, &err);
            if (!shard[i]) fail_msg("partition %u/%u: %s", i, N, err.msg);
            ss[i] = ps_searcher_new(shard[i], NULL);
            total += ps_index_ndocs(shard[i]);
            if (ps_index_ndocs(shard[i]) < smallest) smallest = ps_index_ndocs(shard[i]);
        }
        assert_int_equal(total, ps_index_ndocs(F.built.ix));
        assert_true(smallest > total / N * 8 / 10); /* jump hash balances */
        size_t compared = 0;
        for (size_t qi = 0; qi < F.nqueries; qi++) {
            const char *q = F.queries[qi];
            ps_search_opts o;
            ps_search_opts_default(&o);
            o.k = qi % 2 ? 10 : TOPR;
            o.profile = qi % 3 ? &F.built.profiles[qi % F.built.nusers] : NULL;
            size_t nw = 0, n = 0;
            int rc = ps_search(single, q, strlen(q), &o, want, &nw, NULL, NULL);
            /* The broker analyzes once and sends distinct tokens. */
            assert_int_equal(ps_analyze(an, q, strlen(q), "query", &tok, NULL), 0);
            ps_tokens_distinct(&tok);
            for (uint32_t i = 0; i < N; i++) {
                size_t nh = 0;
                int src = ps_search_shard(ss[i], &tok, &o, all + n, &nh, NULL, NULL);
                assert_int_equal(src, rc);
                n += nh;
            }
            if (rc) continue;
            size_t got = ps_merge_hits(all, n, o.R, o.k);
            if (got != nw) fail_msg("N=%u query '%s': %zu hits, single node %zu", N, q, got, nw);
            for (size_t i = 0; i < nw; i++)
                if (all[i].id != want[i].id || all[i].score != want[i].score ||
                    all[i].recall != want[i].recall || all[i].centroid != want[i].centroid)
                    fail_msg("N=%u query '%s' rank %zu: cluster %llu %.17g, single %llu %.17g", N,
                             q, i + 1, (unsigned long long)all[i].id, all[i].score,
                             (unsigned long long)want[i].id, want[i].score);
            compared += nw;
        }
        printf("N=%u: %zu hits identical to the single node\n", N, compared);
        assert_true(compared > F.nqueries);
        for (uint32_t i = 0; i < N; i++) {
            ps_searcher_free(ss[i]);
            ps_index_free(shard[i]);
        }
    }
    /* Shard numbers out of range are refused. */
    ps_err err = {0};
    assert_null(ps_index_partition(F.built.ix, 4, 4, NULL, &err));
    assert_int_equal(err.code, PS_EINVAL);
    assert_null(ps_index_partition(F.built.ix, 0, 0, NULL, &err));
    free(want);
    free(all);
    ps_searcher_free(single);
    ps_tokens_free(&tok);
    ps_analyzer_free(an);
}

/* Shards written as index directories and opened again keep the corpus-wide statistics:
 * merged, they still answer exactly as the single node. Profiles go to a profiles directory. */
static void test_shard_stores(void **state)
{
    (void)state;
    enum { N = 3 };
    ps_store_t *st[N];
    ps_searcher_t *ss[N];
    ps_err err = {0};
    char path[160];
    for (uint32_t i = 0; i < N; i++) {
        uint32_t *gdoc = NULL;
        ps_index_t *sub = ps_index_partition(F.built.ix, N, i, &gdoc, &err);
        assert_non_null(sub);
        uint32_t n = ps_index_ndocs(sub);
        uint32_t *rows = malloc(n * sizeof *rows);
        for (uint32_t d = 0; d < n; d++) rows[d] = F.built.row_of_doc[gdoc[d]];
        ps_store_input in = {.ix = sub, .emb = F.corpus.emb.data, .emb_row = rows};
        snprintf(path, sizeof path, "%s/shard-%u", F.dir, i);
        assert_int_equal(ps_store_write(path, &in, &err), 0);
        free(rows);
        free(gdoc);
        ps_index_free(sub);
        if (!(st[i] = ps_store_open(path, &err))) fail_msg("open %s: %s", path, err.msg);
        ss[i] = ps_searcher_new(ps_store_index(st[i]), NULL);
    }
    snprintf(path, sizeof path, "%s/profiles", F.dir);
    ps_store_input pin = {.nprofiles = F.built.nusers,
                          .users = (const char *const *)F.built.users,
                          .profiles = F.built.profiles};
    assert_int_equal(ps_store_write(path, &pin, &err), 0);
    ps_profiles_t *profs = ps_profiles_open(path, &err);
    assert_non_null(profs);

    ps_analyzer_t *an = ps_analyzer_new(NULL);
    ps_tokens tok;
    ps_tokens_init(&tok);
    ps_searcher_t *single = ps_searcher_new(F.built.ix, NULL);
    ps_hit *want = malloc(TOPR * sizeof *want), *all = malloc(N * TOPR * sizeof *all);
    for (size_t qi = 0; qi < F.nqueries; qi += 2) {
        const char *q = F.queries[qi];
        ps_profile p = {0};
        assert_int_equal(ps_profiles_get(profs, F.built.users[qi % F.built.nusers], &p, &err), 0);
        ps_search_opts o;
        ps_search_opts_default(&o);
        o.profile = &p;
        size_t nw = 0, n = 0;
        int rc = ps_search(single, q, strlen(q), &o, want, &nw, NULL, NULL);
        assert_int_equal(ps_analyze(an, q, strlen(q), "query", &tok, NULL), 0);
        ps_tokens_distinct(&tok);
        for (uint32_t i = 0; i < N; i++) {
            size_t nh = 0;
            assert_int_equal(ps_search_shard(ss[i], &tok, &o, all + n, &nh, NULL, NULL), rc);
            n += nh;
        }
        if (!rc) {
            assert_int_equal(ps_merge_hits(all, n, o.R, o.k), nw);
            for (size_t i = 0; i < nw; i++)
                if (all[i].id != want[i].id || all[i].score != want[i].score)
                    fail_msg("query '%s' rank %zu: stored shards %llu, single %llu", q, i + 1,
                             (unsigned long long)all[i].id, (unsigned long long)want[i].id);
        }
        ps_profile_clear(&p);
    }
    ps_profile p = {0};
    assert_int_equal(ps_profiles_get(profs, "nobody", &p, &err), PS_ENOTFOUND);
    ps_profiles_close(profs);
    for (uint32_t i = 0; i < N; i++) {
        ps_searcher_free(ss[i]);
        ps_store_close(st[i]);
    }
    free(want);
    free(all);
    ps_searcher_free(single);
    ps_tokens_free(&tok);
    ps_analyzer_free(an);
}

static void test_bad_queries(void **state)
{
    (void)state;
    ps_searcher_t *s = ps_searcher_new(F.built.ix, NULL);
    ps_hit hits[TOPR];
    size_t nh = 1;
    ps_err err = {0};
    ps_search_opts o;
    ps_search_opts_default(&o);
    assert_int_equal(ps_search(s, "", 0, &o, hits, &nh, NULL, &err), PS_EQUERY);
    assert_int_equal(nh, 0);
    assert_int_equal(ps_search(s, "~!?", 3, &o, hits, &nh, NULL, &err), PS_EQUERY);
    assert_int_equal(ps_search(s, "\xff\xfe", 2, &o, hits, &nh, NULL, &err), PS_EUTF8);
    assert_non_null(strstr(err.msg, "query"));
    /* A query of only unknown words is a success with no hits. */
    assert_int_equal(ps_search(s, "zzqqxxyy", 8, &o, hits, &nh, NULL, &err), 0);
    assert_int_equal(nh, 0);
    o.k = 0;
    assert_int_equal(ps_search(s, "好", strlen("好"), &o, hits, &nh, NULL, &err), PS_EINVAL);
    o.k = 10;
    o.R = 5;
    assert_int_equal(ps_search(s, "好", strlen("好"), &o, hits, &nh, NULL, &err), PS_EINVAL);
    /* Too many distinct tokens. */
    char big[4096];
    size_t n = 0;
    for (int i = 0; i < 400; i++) n += (size_t)snprintf(big + n, sizeof big - n, "w%d ", i);
    ps_search_opts_default(&o);
    assert_int_equal(ps_search(s, big, n, &o, hits, &nh, NULL, &err), PS_ETOOBIG);
    ps_searcher_free(s);
}

/* P(Binomial(R, p) >= d), by the pmf's recurrence from x = 0 (not ps_shard_depth's lgamma). */
static double binomial_tail(uint32_t R, double p, uint32_t d)
{
    double pmf = pow(1.0 - p, R), tail = 0.0;
    for (uint32_t x = 0; x <= R; x++) {
        if (x >= d) tail += pmf;
        pmf *= (double)(R - x) / (double)(x + 1) * p / (1.0 - p);
    }
    return tail;
}

/* The broker's first-round depth: the smallest depth whose chance of a second round (some
 * slice holding that many of the top R) is within PS_SHARD_SECOND_ROUNDS. */
static void test_shard_depth(void **state)
{
    (void)state;
    assert_int_equal(ps_shard_depth(100, 1), 100);
    assert_int_equal(ps_shard_depth(100, 0), 100);
    assert_int_equal(ps_shard_depth(1, 4), 1);
    assert_int_equal(ps_shard_depth(100, 2), 67);
    assert_int_equal(ps_shard_depth(100, 4), 42);
    assert_int_equal(ps_shard_depth(100, 8), 27);
    assert_int_equal(ps_shard_depth(100, 16), 18);
    static const uint32_t Rs[] = {2, 10, 25, 50, 100, 101, 200, 500, 1000};
    for (size_t i = 0; i < sizeof Rs / sizeof Rs[0]; i++) {
        for (uint32_t n = 2; n <= 16; n++) {
            uint32_t R = Rs[i], d = ps_shard_depth(R, n);
            assert_true(d >= (R + n - 1) / n && d <= R);
            double p = 1.0 / n;
            if (d < R) assert_true(n * binomial_tail(R, p, d) <= PS_SHARD_SECOND_ROUNDS * 1.000001);
            if (d > (R + n - 1) / n)
                assert_true(n * binomial_tail(R, p, d - 1) > PS_SHARD_SECOND_ROUNDS * 0.999999);
        }
    }
    assert_true(ps_shard_depth(10000, 2) < 10000); /* no overflow at PS_SEARCH_MAX_R */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shard_depth),
        cmocka_unit_test(test_exact_unpersonalized),
        cmocka_unit_test(test_exact_personalized),
        cmocka_unit_test(test_exact_unknown_user),
        cmocka_unit_test(test_pruned_equals_exhaustive),
        cmocka_unit_test(test_numbering_changes_no_answer),
        cmocka_unit_test(test_store_roundtrip),
        cmocka_unit_test(test_shards_equal_single_node),
        cmocka_unit_test(test_shard_stores),
        cmocka_unit_test(test_bad_queries),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
