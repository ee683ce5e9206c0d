/*
 * test_rcache.c — the recall cache (ps/rcache.h) alone and inside ps_search, on a generated
 * 8,000-sticker corpus with 400 queries (many repeated, as generated queries are Zipf-drawn):
 *
 *  - cache on == cache off, bit for bit (every field of every hit, personalized or not),
 *    through ps_search, ps_search_recall and ps_search_shard, on the miss that fills an entry
 *    and on the hits after it; the exhaustive path never touches the cache;
 *  - the key: a different weight, R, use_utility, version or token order misses; k and the
 *    profile do not take part (personalization runs on the cached candidates);
 *  - the byte bound: bytes <= capacity after every insert into a small cache, with evictions,
 *    least recently used first; drop (a version), drop_others, clear;
 *  - threads: 4 searchers sharing one small cache (evicting all the time) and a thread dropping
 *    versions, every answer equal to the cache-off one;
 *  - out of memory (failalloc.h): creating and filling a cache with the Nth allocation failing,
 *    for every N: no crash, nothing leaked, and a search with a failing cache still answers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "failalloc.h"
#include "gen.h"
#include "pipeline.h"
#include "ps/rcache.h"
#include "ps/search.h"

#define NSTICKERS 8000
#define NQUERIES  400
#define TOPR      100

static struct {
    char dir[64];
    builder_corpus corpus;
    ps_clicklog log;
    builder_built built;
    char **queries;
    ps_hit *want;   /* NQUERIES × TOPR: cache-off answers of ps_search, personalized by qi */
    size_t *nwant;  /* NQUERIES */
    ps_hit *wantr;  /* NQUERIES × TOPR: cache-off ps_search_recall */
    size_t *nwantr; /* NQUERIES */
} F;

static void rm_rf(const char *path)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", path);
}

/* Query qi's options: personalized for two queries in three, k 10 or R. */
static void opts_of(size_t qi, ps_search_opts *o)
{
    ps_search_opts_default(o);
    o->R = TOPR;
    o->k = qi % 2 ? 10 : TOPR;
    o->profile = qi % 3 ? &F.built.profiles[qi % F.built.nusers] : NULL;
}

static int group_setup(void **state)
{
    (void)state;
    ps_err err = {0};
    builder_gen_cfg g;
    char p1[128], p2[128], p3[128];
    strcpy(F.dir, "/tmp/ps_test_rcache_XXXXXX");
    if (!mkdtemp(F.dir)) return -1;
    builder_gen_defaults(&g);
    g.seed = 13;
    g.nstickers = NSTICKERS;
    g.dim = 16;
    g.nusers = 6;
    g.nclicks = 2000;
    g.npairs = 400;
    g.nqueries = 300;
    if (builder_generate(&g, F.dir, &err)) goto fail;
    snprintf(p1, sizeof p1, "%s/corpus.jsonl", F.dir);
    snprintf(p2, sizeof p2, "%s/embeddings.npy", F.dir);
    snprintf(p3, sizeof p3, "%s/clicks.tsv", F.dir);
    builder_cfg cfg;
    builder_cfg_defaults(&cfg);
    if (builder_corpus_load(p1, p2, 0, &F.corpus, &err) || ps_clicklog_read(p3, &F.log, &err) ||
        builder_build_index(&F.corpus, &F.log, &cfg, 1, &F.built, &err) ||
        builder_gen_queries(5, NQUERIES, 0.8, &F.queries, &err))
        goto fail;
    if (F.built.nusers == 0) {
        fprintf(stderr, "setup: no profiles\n");
        return -1;
    }
    F.want = malloc((size_t)NQUERIES * TOPR * sizeof *F.want);
    F.wantr = malloc((size_t)NQUERIES * TOPR * sizeof *F.wantr);
    F.nwant = calloc(NQUERIES, sizeof *F.nwant);
    F.nwantr = calloc(NQUERIES, sizeof *F.nwantr);
    ps_searcher_t *s = ps_searcher_new(F.built.ix, &err);
    if (!s || !F.want || !F.wantr || !F.nwant || !F.nwantr) goto fail;
    for (size_t qi = 0; qi < NQUERIES; qi++) {
        ps_search_opts o;
        opts_of(qi, &o);
        const char *q = F.queries[qi];
        if (ps_search(s, q, strlen(q), &o, F.want + qi * TOPR, &F.nwant[qi], NULL, &err) ||
            ps_search_recall(s, q, strlen(q), &o, F.wantr + qi * TOPR, &F.nwantr[qi], NULL, &err))
            goto fail;
    }
    ps_searcher_free(s);
    return 0;
fail:
    fprintf(stderr, "setup: %s\n", err.msg);
    return -1;
}

static int group_teardown(void **state)
{
    (void)state;
    builder_gen_queries_free(F.queries, NQUERIES);
    builder_built_free(&F.built);
    builder_corpus_free(&F.corpus);
    ps_clicklog_free(&F.log);
    free(F.want);
    free(F.wantr);
    free(F.nwant);
    free(F.nwantr);
    rm_rf(F.dir);
    return 0;
}

/* ps_hit has no padding (8 + 4 + 4 + 5 × 8 bytes), so equal bytes are equal hits, bit for bit. */
_Static_assert(sizeof(ps_hit) == 56, "ps_hit gained padding: compare field by field");

static int same_hits(const ps_hit *a, size_t na, const ps_hit *b, size_t nb)
{
    return na == nb && memcmp(a, b, na * sizeof *a) == 0;
}

/* ---- inside the search ---------------------------------------------------------------------- */

static void test_search_identical(void **state)
{
    (void)state;
    ps_err err = {0};
    ps_rcache_t *c = ps_rcache_new(64u << 20, &err);
    ps_searcher_t *s = ps_searcher_new(F.built.ix, &err);
    assert_non_null(c);
    assert_non_null(s);
    ps_hit got[TOPR];
    size_t misses_seen = 0;
    /* three rounds: the first fills the cache (hits only on repeated queries), then all hit */
    for (int round = 0; round < 3; round++) {
        for (size_t qi = 0; qi < NQUERIES; qi++) {
            ps_search_opts o;
            opts_of(qi, &o);
            o.rcache = c;
            o.rcache_version = 7;
            const char *q = F.queries[qi];
            size_t n = 0;
            ps_rcache_stats before, after;
            ps_rcache_stats_get(c, &before);
            ps_search_stats st;
            assert_int_equal(ps_search(s, q, strlen(q), &o, got, &n, &st, &err), 0);
            ps_rcache_stats_get(c, &after);
            if (!same_hits(got, n, F.want + qi * TOPR, F.nwant[qi]))
                fail_msg("round %d query %zu '%s': cached answer differs", round, qi, q);
            assert_int_equal(after.hits + after.misses, before.hits + before.misses + 1);
            if (after.misses > before.misses) {
                misses_seen++;
                assert_true(round == 0);
            } else {
                assert_int_equal(st.visited, 0); /* a hit reads no posting */
            }
            n = 0;
            assert_int_equal(ps_search_recall(s, q, strlen(q), &o, got, &n, NULL, &err), 0);
            if (!same_hits(got, n, F.wantr + qi * TOPR, F.nwantr[qi]))
                fail_msg("round %d query %zu '%s': cached recall differs", round, qi, q);
        }
    }
    ps_rcache_stats st;
    ps_rcache_stats_get(c, &st);
    assert_true(misses_seen > 0 && misses_seen < NQUERIES); /* generated queries repeat */
    assert_int_equal(st.misses, misses_seen);
    assert_int_equal(st.entries, misses_seen);
    assert_int_equal(st.evictions, 0);
    assert_true(st.hits >= 5 * NQUERIES);

    /* the exhaustive path neither reads nor fills the cache */
    ps_search_opts o;
    opts_of(1, &o);
    o.rcache = c;
    o.rcache_version = 7;
    o.exhaustive = 1;
    size_t n = 0;
    assert_int_equal(ps_search(s, F.queries[1], strlen(F.queries[1]), &o, got, &n, NULL, &err), 0);
    assert_true(same_hits(got, n, F.want + TOPR, F.nwant[1]));
    ps_rcache_stats st2;
    ps_rcache_stats_get(c, &st2);
    assert_int_equal(st2.hits, st.hits);
    assert_int_equal(st2.misses, st.misses);

    /* another version of the index misses, then hits */
    o.exhaustive = 0;
    o.rcache_version = 8;
    assert_int_equal(ps_search(s, F.queries[1], strlen(F.queries[1]), &o, got, &n, NULL, &err), 0);
    ps_rcache_stats_get(c, &st2);
    assert_int_equal(st2.misses, st.misses + 1);
    assert_int_equal(ps_rcache_drop(c, 8), 1);
    ps_searcher_free(s);
    ps_rcache_free(c);
}

/* ps_search_shard (the shard's path) on analyzed tokens: cached == uncached, with a profile. */
static void test_shard_path_identical(void **state)
{
    (void)state;
    ps_err err = {0};
    ps_rcache_t *c = ps_rcache_new(1u << 20, &err);
    ps_searcher_t *s = ps_searcher_new(F.built.ix, &err);
    ps_analyzer_t *an = ps_analyzer_new(&err);
    assert_non_null(c);
    assert_non_null(s);
    assert_non_null(an);
    ps_tokens tok;
    ps_tokens_init(&tok);
    ps_hit want[TOPR], got[TOPR];
    for (size_t qi = 0; qi < 120; qi++) {
        const char *q = F.queries[qi];
        assert_int_equal(ps_analyze(an, q, strlen(q), "query", &tok, &err), 0);
        ps_search_opts o;
        opts_of(qi, &o);
        o.k = TOPR;
        size_t nw = 0, ng = 0;
        assert_int_equal(ps_search_shard(s, &tok, &o, want, &nw, NULL, &err), 0);
        o.rcache = c;
        for (int round = 0; round < 2; round++) {
            assert_int_equal(ps_search_shard(s, &tok, &o, got, &ng, NULL, &err), 0);
            if (!same_hits(got, ng, want, nw)) fail_msg("query %zu round %d differs", qi, round);
        }
    }
    ps_tokens_free(&tok);
    ps_analyzer_free(an);
    ps_searcher_free(s);
    ps_rcache_free(c);
}

/* ---- the key -------------------------------------------------------------------------------- */

static void tokens_of(ps_tokens *t, const char *const *words, size_t n)
{
    ps_tokens_reset(t);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(ps_tokens_push(t, words[i], strlen(words[i])), 0);
}

/* n synthetic hits whose fields derive from `seed`. */
static void fake_hits(ps_hit *h, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++)
        h[i] = (ps_hit){.id = seed * 1000 + i,
                        .doc = (uint32_t)(seed + i),
                        .centroid = -1,
                        .relevance = 1.0 / (double)(i + seed + 1),
                        .utility = 0.25,
                        .recall = 0.25 + 1.0 / (double)(i + seed + 1),
                        .preference = 1.0,
                        .score = 0.25 + 1.0 / (double)(i + seed + 1)};
}

static void test_key(void **state)
{
    (void)state;
    ps_err err = {0};
    ps_rcache_t *c = ps_rcache_new(1u << 20, &err);
    assert_non_null(c);
    ps_tokens t;
    ps_tokens_init(&t);
    static const char *const ab[] = {"好", "好累", "累"}, *const ba[] = {"累", "好", "好累"};
    ps_search_opts o, p;
    ps_search_opts_default(&o);
    ps_hit in[TOPR], out[TOPR];
    size_t n = 0;
    fake_hits(in, 37, 3);
    tokens_of(&t, ab, 3);
    assert_int_equal(ps_rcache_get(c, 1, &t, &o, out, &n), 0);
    ps_rcache_put(c, 1, &t, &o, in, 37);
    assert_int_equal(ps_rcache_get(c, 1, &t, &o, out, &n), 1);
    assert_true(same_hits(out, n, in, 37));

    /* k, alpha, profile and exhaustive are not part of the key */
    p = o;
    p.k = 3;
    p.alpha = 0.9f;
    assert_int_equal(ps_rcache_get(c, 1, &t, &p, out, &n), 1);

    /* each of these is a different key */
    assert_int_equal(ps_rcache_get(c, 2, &t, &o, out, &n), 0); /* version */
    p = o;
    p.R = 99;
    assert_int_equal(ps_rcache_get(c, 1, &t, &p, out, &n), 0);
    p = o;
    p.use_utility = 0;
    assert_int_equal(ps_rcache_get(c, 1, &t, &p, out, &n), 0);
    for (int f = 0; f < PS_NFIELDS; f++) {
        p = o;
        p.field_w[f] = nextafterf(p.field_w[f], 2.0f); /* one ulp */
        assert_int_equal(ps_rcache_get(c, 1, &t, &p, out, &n), 0);
    }
    p = o;
    p.field_w[PS_F_OCR] = -0.0f; /* the bits, not the value: 0 and -0 are two keys */
    o.field_w[PS_F_OCR] = 0.0f;
    ps_rcache_put(c, 1, &t, &o, in, 5);
    assert_int_equal(ps_rcache_get(c, 1, &t, &p, out, &n), 0);
    ps_search_opts_default(&o);
    tokens_of(&t, ba, 3); /* same tokens, another order */
    assert_int_equal(ps_rcache_get(c, 1, &t, &o, out, &n), 0);
    tokens_of(&t, ab, 2); /* a prefix */
    assert_int_equal(ps_rcache_get(c, 1, &t, &o, out, &n), 0);
    static const char *const glued[] = {"好好累", "累"}; /* same bytes, other boundaries */
    tokens_of(&t, glued, 2);
    assert_int_equal(ps_rcache_get(c, 1, &t, &o, out, &n), 0);

    /* an empty result is an answer too */
    static const char *const none[] = {"zzzz"};
    tokens_of(&t, none, 1);
    ps_rcache_put(c, 1, &t, &o, in, 0);
    n = 99;
    assert_int_equal(ps_rcache_get(c, 1, &t, &o, out, &n), 1);
    assert_int_equal(n, 0);

    /* storing a key twice keeps one entry */
    ps_rcache_stats st;
    ps_rcache_stats_get(c, &st);
    tokens_of(&t, none, 1);
    ps_rcache_put(c, 1, &t, &o, in, 4);
    ps_rcache_stats st2;
    ps_rcache_stats_get(c, &st2);
    assert_int_equal(st2.entries, st.entries);
    assert_int_equal(ps_rcache_get(c, 1, &t, &o, out, &n), 1);
    assert_int_equal(n, 0);

    /* more hits than R are refused */
    p = o;
    p.R = 10;
    ps_rcache_put(c, 1, &t, &p, in, 11);
    assert_int_equal(ps_rcache_get(c, 1, &t, &p, out, &n), 0);
    ps_tokens_free(&t);
    ps_rcache_free(c);

    assert_null(ps_rcache_new(100, &err));
    assert_int_equal(err.code, PS_EINVAL);
}

/* ---- the byte bound and invalidation ------------------------------------------------------- */

static void test_bound(void **state)
{
    (void)state;
    ps_err err = {0};
    const size_t cap = 48 * 1024; /* one segment: exact LRU order */
    ps_rcache_t *c = ps_rcache_new(cap, &err);
    assert_non_null(c);
    ps_tokens t;
    ps_tokens_init(&t);
    ps_search_opts o;
    ps_search_opts_default(&o);
    ps_hit in[TOPR], out[TOPR];
    size_t n;
    char word[32];
    const char *w[1] = {word};
    /* key 0 is touched after every insert, so LRU keeps it */
    snprintf(word, sizeof word, "w%d", 0);
    tokens_of(&t, w, 1);
    fake_hits(in, 50, 0);
    ps_rcache_put(c, 1, &t, &o, in, 50);
    for (int i = 1; i < 400; i++) {
        snprintf(word, sizeof word, "w%d", i);
        tokens_of(&t, w, 1);
        size_t nh = (size_t)(i * 37 % TOPR) + 1;
        fake_hits(in, nh, (uint64_t)i);
        ps_rcache_put(c, 1 + (uint64_t)(i % 3), &t, &o, in, nh);
        ps_rcache_stats st;
        ps_rcache_stats_get(c, &st);
        assert_true(st.bytes <= cap);
        assert_int_equal(st.capacity, cap);
        /* the newest is held */
        assert_int_equal(ps_rcache_get(c, 1 + (uint64_t)(i % 3), &t, &o, out, &n), 1);
        assert_true(same_hits(out, n, in, nh));
        snprintf(word, sizeof word, "w%d", 0);
        tokens_of(&t, w, 1);
        assert_int_equal(ps_rcache_get(c, 1, &t, &o, out, &n), 1);
    }
    ps_rcache_stats st;
    ps_rcache_stats_get(c, &st);
    assert_true(st.evictions > 300);
    assert_true(st.entries >= 8);
    assert_int_equal(st.inserts, 400);
    assert_int_equal(st.inserts - st.evictions, st.entries);
    /* an old one is gone */
    snprintf(word, sizeof word, "w%d", 1);
    tokens_of(&t, w, 1);
    assert_int_equal(ps_rcache_get(c, 2, &t, &o, out, &n), 0);

    /* an entry larger than the whole cache is not stored (and evicts nothing) */
    char big[PS_SEARCH_MAX_R][8];
    const char *many[PS_SEARCH_MAX_R];
    for (int i = 0; i < PS_SEARCH_MAX_R; i++) {
        snprintf(big[i], sizeof big[i], "b%d", i);
        many[i] = big[i];
    }
    tokens_of(&t, many, PS_SEARCH_MAX_R); /* a ~90 KB key */
    ps_rcache_put(c, 1, &t, &o, in, 1);
    assert_int_equal(ps_rcache_get(c, 1, &t, &o, out, &n), 0);
    ps_rcache_stats st2;
    ps_rcache_stats_get(c, &st2);
    assert_int_equal(st2.entries, st.entries);

    /* versions */
    size_t v1 = 0;
    for (int i = 0; i < 400; i++) {
        snprintf(word, sizeof word, "w%d", i);
        tokens_of(&t, w, 1);
        v1 += ps_rcache_get(c, 1, &t, &o, out, &n);
    }
    assert_true(v1 > 0);
    assert_int_equal(ps_rcache_drop(c, 1), v1);
    ps_rcache_stats_get(c, &st2);
    assert_int_equal(st2.entries, st.entries - v1);
    assert_int_equal(st2.dropped, v1);
    assert_int_equal(ps_rcache_drop(c, 1), 0);
    size_t others = ps_rcache_drop_others(c, 2);
    ps_rcache_stats_get(c, &st2);
    assert_int_equal(st2.entries, st.entries - v1 - others);
    ps_rcache_clear(c);
    ps_rcache_stats_get(c, &st2);
    assert_int_equal(st2.entries, 0);
    ps_rcache_stats empty;
    ps_rcache_t *c2 = ps_rcache_new(cap, &err);
    ps_rcache_stats_get(c2, &empty);
    assert_int_equal(st2.bytes, empty.bytes); /* the buckets alone */
    ps_rcache_free(c2);
    ps_tokens_free(&t);
    ps_rcache_free(c);
}

/* ---- threads -------------------------------------------------------------------------------- */

typedef struct worker {
    ps_rcache_t *c;
    int id, failures;
    size_t hits;
} worker;

static void *run_worker(void *arg)
{
    worker *w = arg;
    ps_searcher_t *s = ps_searcher_new(F.built.ix, NULL);
    ps_hit got[TOPR];
    if (!s) {
        w->failures++;
        return NULL;
    }
    for (size_t i = 0; i < 3 * NQUERIES; i++) {
        size_t qi = (i * (size_t)(7 + 2 * w->id) + (size_t)w->id * 31) % NQUERIES;
        ps_search_opts o;
        opts_of(qi, &o);
        o.rcache = w->c;
        o.rcache_version = i % 2; /* two versions in play */
        size_t n = 0;
        const char *q = F.queries[qi];
        if (ps_search(s, q, strlen(q), &o, got, &n, NULL, NULL) ||
            !same_hits(got, n, F.want + qi * TOPR, F.nwant[qi]))
            w->failures++;
    }
    ps_searcher_free(s);
    return NULL;
}

static void *run_dropper(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < 200; i++) {
        ps_rcache_drop(w->c, (uint64_t)(i % 2));
        ps_rcache_stats st;
        ps_rcache_stats_get(w->c, &st);
        if (st.bytes > st.capacity) w->failures++;
        usleep(500);
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    ps_err err = {0};
    /* 3 MiB: 2 segments, room for about all 2 × ~250 distinct keys */
    ps_rcache_t *c = ps_rcache_new(3u << 20, &err);
    assert_non_null(c);
    worker w[5];
    pthread_t th[5];
    for (int i = 0; i < 5; i++) {
        w[i] = (worker){.c = c, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, i < 4 ? run_worker : run_dropper, &w[i]), 0);
    }
    for (int i = 0; i < 5; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].failures, 0);
    }
    ps_rcache_stats st;
    ps_rcache_stats_get(c, &st);
    assert_true(st.hits > 0);
    assert_true(st.bytes <= st.capacity);
    assert_int_equal(st.hits + st.misses, 4 * 3 * NQUERIES);
    ps_rcache_free(c);

    /* with a tiny cache every thread evicts on every insert */
    c = ps_rcache_new(16 * 1024, &err);
    assert_non_null(c);
    for (int i = 0; i < 4; i++) {
        w[i] = (worker){.c = c, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, run_worker, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].failures, 0);
    }
    ps_rcache_stats_get(c, &st);
    assert_true(st.evictions > 0);
    assert_true(st.bytes <= st.capacity);
    ps_rcache_free(c);
}

/* ---- out of memory -------------------------------------------------------------------------- */

static void test_oom(void **state)
{
    (void)state;
    static const char *const words[] = {"好", "好累", "累", "so", "tired"};
    ps_hit in[TOPR], out[TOPR];
    fake_hits(in, 60, 1);
    int completed = 0;
    for (long at = 0; at < 200 && !completed; at++) {
        ps_tokens t;
        ps_tokens_init(&t);
        ps_search_opts o;
        ps_search_opts_default(&o);
        tokens_of(&t, words, 5);
        failing_from(at);
        ps_err err = {0};
        size_t n;
        ps_rcache_t *c = ps_rcache_new(8u << 20, &err); /* 8 segments */
        if (!c) {
            assert_int_equal(err.code, PS_ENOMEM);
        } else {
            int stored = 0;
            for (int i = 0; i < 20; i++) {
                o.R = 100 + (uint32_t)i;
                ps_rcache_put(c, 1, &t, &o, in, 60);
                int hit = ps_rcache_get(c, 1, &t, &o, out, &n);
                if (hit) assert_true(same_hits(out, n, in, 60));
                stored += hit;
            }
            ps_rcache_drop(c, 1);
            ps_rcache_free(c);
            completed = stored == 20;
        }
        teardown(NULL);
        ps_tokens_free(&t);
        assert_int_equal(live, 0);
    }
    assert_true(completed);

    /* a long key (on the heap) whose allocation fails: a miss and no entry, never an error */
    char big[300][8];
    const char *many[300];
    for (int i = 0; i < 300; i++) {
        snprintf(big[i], sizeof big[i], "k%d", i);
        many[i] = big[i];
    }
    ps_tokens t;
    ps_tokens_init(&t);
    tokens_of(&t, many, 300);
    ps_search_opts o;
    ps_search_opts_default(&o);
    ps_rcache_t *c = ps_rcache_new(1u << 20, NULL);
    assert_non_null(c);
    size_t n;
    failing_from(0);
    ps_rcache_put(c, 1, &t, &o, in, 10);
    assert_int_equal(ps_rcache_get(c, 1, &t, &o, out, &n), 0);
    teardown(NULL);
    ps_rcache_put(c, 1, &t, &o, in, 10);
    assert_int_equal(ps_rcache_get(c, 1, &t, &o, out, &n), 1);
    ps_rcache_free(c);
    ps_tokens_free(&t);

    /* a search whose cache cannot store still answers exactly */
    ps_searcher_t *s = ps_searcher_new(F.built.ix, NULL);
    c = ps_rcache_new(1u << 20, NULL);
    assert_non_null(s);
    assert_non_null(c);
    for (size_t qi = 0; qi < 20; qi++) { /* warm the searcher's scratch first */
        opts_of(qi, &o);
        assert_int_equal(
            ps_search(s, F.queries[qi], strlen(F.queries[qi]), &o, out, &n, NULL, NULL), 0);
    }
    int answered = 0;
    for (size_t qi = 0; qi < 20; qi++) {
        opts_of(qi, &o);
        o.rcache = c;
        ps_err err = {0};
        failing_from(0);
        int rc = ps_search(s, F.queries[qi], strlen(F.queries[qi]), &o, out, &n, NULL, &err);
        teardown(NULL);
        if (rc == 0) {
            assert_true(same_hits(out, n, F.want + qi * TOPR, F.nwant[qi]));
            answered++;
        } else {
            assert_int_equal(rc, PS_ENOMEM); /* the searcher's own scratch had to grow */
        }
    }
    assert_true(answered > 0);
    ps_rcache_stats st;
    ps_rcache_stats_get(c, &st);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.hits, 0);
    ps_rcache_free(c);
    ps_searcher_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_search_identical),
        cmocka_unit_test(test_shard_path_identical),
        cmocka_unit_test(test_key),
        cmocka_unit_test(test_bound),
        cmocka_unit_test(test_threads),
        cmocka_unit_test_teardown(test_oom, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
