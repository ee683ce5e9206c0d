/*
 * test_gen.c — the demo data generator (builder/gen.c, DESIGN §5): the shipped vocabulary,
 * determinism, the exact shape of the click log, the JSONL/.npy/TSV formats, the series
 * structure of the embeddings, benchmark queries and the `builder generate` flags.
 *
 * One small corpus is generated per test run (group setup) into a mkdtemp directory and
 * shared by the read-only tests; tests that write more use their own directories. Everything
 * is removed in the group teardown.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "builder.h"
#include "gen.h"

#define T_STICKERS 5000
#define T_DIM      64
#define T_USERS    4
#define T_CLICKS   600
#define T_PAIRS    150
#define T_QUERIES  100
#define T_SEED     7

static char tmpdir[64]; /* mkdtemp root; every test directory lives below it */

/* ------------------------------------------------------------------------------------------
 * Helpers.
 */
static void small_cfg(builder_gen_cfg *c, uint64_t seed)
{
    builder_gen_defaults(c);
    c->seed = seed;
    c->nstickers = T_STICKERS;
    c->dim = T_DIM;
    c->nusers = T_USERS;
    c->nclicks = T_CLICKS;
    c->npairs = T_PAIRS;
    c->nqueries = T_QUERIES;
    c->progress = 0;
}

static char *path_in(const char *dir, const char *name)
{
    static char p[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s/%s", tmpdir, dir, name);
    return p[k];
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static int files_equal(const char *a, const char *b)
{
    size_t la, lb;
    char *x = slurp(a, &la), *y = slurp(b, &lb);
    int eq = la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return eq;
}

static void rm_tree(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[1024];
    if (!d) return;
    while ((e = readdir(d))) {
        struct stat st;
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
            rm_tree(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static void generate_into(const char *sub, const builder_gen_cfg *cfg)
{
    char dir[512];
    ps_err err;
    snprintf(dir, sizeof dir, "%s/%s", tmpdir, sub);
    int rc = builder_generate(cfg, dir, &err);
    if (rc) fail_msg("builder_generate(%s): %s", sub, err.msg);
}

/* Split a buffer into lines in place (no trailing empty line). Caller frees the array. */
static char **split_lines(char *buf, size_t len, size_t *n)
{
    size_t cap = 1;
    for (size_t i = 0; i < len; i++) cap += buf[i] == '\n';
    char **lines = malloc(cap * sizeof *lines);
    assert_non_null(lines);
    *n = 0;
    for (char *p = buf; p < buf + len;) {
        char *nl = memchr(p, '\n', (size_t)(buf + len - p));
        assert_non_null(nl); /* every line ends with '\n' */
        *nl = '\0';
        lines[(*n)++] = p;
        p = nl + 1;
    }
    return lines;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static size_t count_distinct_strings(char **v, size_t n)
{
    size_t d = 0;
    qsort(v, n, sizeof *v, cmp_str);
    for (size_t i = 0; i < n; i++) d += i == 0 || strcmp(v[i], v[i - 1]) != 0;
    return d;
}

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++) n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

static int is_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80) return 0;
    return 1;
}

/* Does the '\n'-joined field contain `phrase` as one of its lines? */
static int field_has_line(const char *field, const char *phrase)
{
    size_t n = strlen(phrase);
    for (const char *p = field; p && *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        if (len == n && memcmp(p, phrase, n) == 0) return 1;
        p = nl ? nl + 1 : NULL;
    }
    return 0;
}

static size_t field_lines(const char *field)
{
    if (!*field) return 0;
    size_t n = 1;
    for (; *field; field++) n += *field == '\n';
    return n;
}

/* The shared corpus, parsed. */
static struct {
    size_t n;
    uint64_t *ids;    /* corpus order */
    json_t **rows;    /* corpus order */
    uint64_t *sorted; /* ids, ascending */
} corpus;

static json_t *row_of(uint64_t id)
{
    uint64_t *hit = bsearch(&id, corpus.sorted, corpus.n, sizeof id, cmp_u64);
    if (!hit) return NULL;
    for (size_t i = 0; i < corpus.n; i++)
        if (corpus.ids[i] == id) return corpus.rows[i];
    return NULL;
}

static const char *str_field(json_t *row, const char *key)
{
    json_t *v = json_object_get(row, key);
    assert_non_null(v);
    assert_true(json_is_string(v));
    return json_string_value(v);
}

/* ------------------------------------------------------------------------------------------
 * Group setup: one corpus for the read-only tests.
 */
static int group_setup(void **state)
{
    (void)state;
    builder_gen_cfg cfg;
    size_t len, n;
    char *buf, **lines;

    strcpy(tmpdir, "/tmp/test_gen.XXXXXX");
    if (!mkdtemp(tmpdir)) return -1;
    small_cfg(&cfg, T_SEED);
    ps_err err;
    if (builder_generate(&cfg, path_in("a", ""), &err)) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return -1;
    }
    buf = slurp(path_in("a", "corpus.jsonl"), &len);
    lines = split_lines(buf, len, &n);
    corpus.n = n;
    corpus.ids = calloc(n, sizeof *corpus.ids);
    corpus.sorted = calloc(n, sizeof *corpus.sorted);
    corpus.rows = calloc(n, sizeof *corpus.rows);
    for (size_t i = 0; i < n; i++) {
        json_error_t je;
        corpus.rows[i] = json_loads(lines[i], JSON_REJECT_DUPLICATES, &je);
        if (!corpus.rows[i]) {
            fprintf(stderr, "setup: line %zu is not JSON: %s\n", i + 1, je.text);
            return -1;
        }
        json_t *id = json_object_get(corpus.rows[i], "id");
        if (!json_is_integer(id)) {
            fprintf(stderr, "setup: line %zu: id is not an integer\n", i + 1);
            return -1;
        }
        corpus.ids[i] = corpus.sorted[i] = (uint64_t)json_integer_value(id);
    }
    qsort(corpus.sorted, n, sizeof *corpus.sorted, cmp_u64);
    free(lines);
    free(buf);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    for (size_t i = 0; i < corpus.n; i++) json_decref(corpus.rows[i]);
    free(corpus.rows);
    free(corpus.ids);
    free(corpus.sorted);
    rm_tree(tmpdir);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Vocabulary.
 */
static void test_vocab(void **state)
{
    (void)state;
    size_t n = builder_vocab_size(), english = 0;
    char **v;

    assert_true(n >= 3000);
    assert_null(builder_vocab_phrase(n));
    assert_int_equal(builder_vocab_is_english(n), 0);
    v = malloc(n * sizeof *v);
    assert_non_null(v);
    for (size_t r = 0; r < n; r++) {
        const char *p = builder_vocab_phrase(r);
        assert_non_null(p);
        assert_true(*p != '\0');
        assert_null(strpbrk(p, "\t\n\r\""));
        assert_true(p[0] != '#' && p[0] != ' ' && p[strlen(p) - 1] != ' ');
        assert_int_equal(builder_vocab_is_english(r), is_ascii(p));
        english += builder_vocab_is_english(r) != 0;
        v[r] = (char *)p;
    }
    assert_int_equal(count_distinct_strings(v, n), n);
    free(v);
    /* ~15% English; the commonest phrases are short and Chinese. */
    assert_true(english >= n * 12 / 100 && english <= n * 18 / 100);
    assert_string_equal(builder_vocab_phrase(0), "哈哈哈");
    size_t top = 0, tail = 0;
    for (size_t r = 0; r < 100; r++) top += utf8_chars(builder_vocab_phrase(r));
    for (size_t r = n - 100; r < n; r++) tail += utf8_chars(builder_vocab_phrase(r));
    assert_true(top < tail);
}

/* ------------------------------------------------------------------------------------------
 * Determinism.
 */
static void test_deterministic(void **state)
{
    (void)state;
    builder_gen_cfg cfg;
    static const char *const names[] = {"corpus.jsonl", "embeddings.npy", "clicks.tsv"};

    small_cfg(&cfg, T_SEED);
    generate_into("b", &cfg);
    small_cfg(&cfg, T_SEED + 1);
    generate_into("c", &cfg);
    for (int k = 0; k < 3; k++) {
        assert_true(files_equal(path_in("a", names[k]), path_in("b", names[k])));
        assert_false(files_equal(path_in("a", names[k]), path_in("c", names[k])));
    }
    /* No temporary files are left behind. */
    struct stat st;
    assert_int_not_equal(stat(path_in("a", "corpus.jsonl.tmp"), &st), 0);

    /* The embedding dimension changes the embeddings and nothing else. */
    small_cfg(&cfg, T_SEED);
    cfg.dim = 8;
    generate_into("d", &cfg);
    assert_true(files_equal(path_in("a", "corpus.jsonl"), path_in("d", "corpus.jsonl")));
    assert_true(files_equal(path_in("a", "clicks.tsv"), path_in("d", "clicks.tsv")));
    assert_false(files_equal(path_in("a", "embeddings.npy"), path_in("d", "embeddings.npy")));
}

/* ------------------------------------------------------------------------------------------
 * corpus.jsonl
 */
static void test_corpus_lines(void **state)
{
    (void)state;
    size_t len, nocr = 0, desc_total = 0;
    char *raw = slurp(path_in("a", "corpus.jsonl"), &len);

    assert_int_equal(corpus.n, T_STICKERS);
    /* ids: distinct, written as bare 19-digit integers */
    for (size_t i = 1; i < corpus.n; i++) assert_true(corpus.sorted[i] > corpus.sorted[i - 1]);
    for (size_t i = 0; i < corpus.n; i++) {
        char want[40];
        assert_true(corpus.ids[i] >= 1000000000000000000ull);
        snprintf(want, sizeof want, "{\"id\":%llu,", (unsigned long long)corpus.ids[i]);
        assert_int_equal(strlen(want), strlen("{\"id\":,") + 19);
    }
    assert_int_equal(memcmp(raw, "{\"id\":", 6), 0);
    assert_true(raw[6] >= '1' && raw[6] <= '9' && raw[6 + 19] == ',');
    free(raw);
    /* not sorted: a random-looking corpus order */
    size_t ascending = 0;
    for (size_t i = 1; i < corpus.n; i++) ascending += corpus.ids[i] > corpus.ids[i - 1];
    assert_true(ascending > corpus.n * 4 / 10 && ascending < corpus.n * 6 / 10);

    for (size_t i = 0; i < corpus.n; i++) {
        json_t *row = corpus.rows[i];
        const char *ocr = str_field(row, "ocr"), *kw = str_field(row, "keywords");
        const char *desc = str_field(row, "desc"), *emo = str_field(row, "emotion");
        size_t nd = utf8_chars(desc);
        assert_int_equal(json_object_size(row), 5);
        assert_null(json_object_get(row, "queries"));
        assert_true(field_lines(ocr) <= 2);
        nocr += *ocr != '\0';
        assert_in_range(field_lines(kw), 2, 4);
        assert_in_range(field_lines(emo), 1, 2);
        assert_in_range(nd, 15, 40);
        desc_total += nd;
    }
    /* ocr on 73% of stickers: binomial sd at n = 5000 is 0.6 points */
    assert_in_range(nocr, corpus.n * 70 / 100, corpus.n * 76 / 100);
    assert_true(desc_total / corpus.n >= 20 && desc_total / corpus.n <= 35);
}

/* Fields are drawn Zipf-like from the vocabulary: the commonest phrases dominate. */
static void test_corpus_zipf(void **state)
{
    (void)state;
    size_t n = builder_vocab_size(), top = 0, emo_outside = 0;
    size_t *count = calloc(n, sizeof *count);
    assert_non_null(count);
    for (size_t i = 0; i < corpus.n; i++) {
        const char *kw = str_field(corpus.rows[i], "keywords");
        const char *emo = str_field(corpus.rows[i], "emotion");
        for (size_t r = 0; r < 10; r++) count[r] += field_has_line(kw, builder_vocab_phrase(r));
        int hit = 0;
        for (size_t r = 0; r < 120; r++) hit |= field_has_line(emo, builder_vocab_phrase(r));
        emo_outside += !hit;
    }
    assert_int_equal(emo_outside, 0);
    for (size_t r = 0; r < 10; r++) top += count[r];
    /* rank 1 alone is ~11% of draws; ranks 1-10 about a third of ~3 keywords a sticker */
    assert_true(count[0] > corpus.n / 10);
    assert_true(count[0] > count[9]);
    assert_true(top > corpus.n / 2);
    free(count);
}

/* ------------------------------------------------------------------------------------------
 * clicks.tsv
 */
static void test_clicks(void **state)
{
    (void)state;
    size_t len, n, users_seen = 0;
    char *buf = slurp(path_in("a", "clicks.tsv"), &len);
    char **lines = split_lines(buf, len, &n);
    char **pairs = malloc(n * sizeof *pairs), **queries = malloc(n * sizeof *queries);
    int user_used[T_USERS] = {0};
    size_t in_ocr = 0;

    assert_non_null(pairs);
    assert_non_null(queries);
    assert_int_equal(n, T_CLICKS);
    for (size_t i = 0; i < n; i++) {
        char *t1 = strchr(lines[i], '\t'), *t2 = t1 ? strchr(t1 + 1, '\t') : NULL, *end;
        assert_non_null(t1);
        assert_non_null(t2);
        assert_null(strchr(t2 + 1, '\t'));
        /* user "u01".."u04" */
        unsigned u;
        assert_int_equal(sscanf(lines[i], "u%2u", &u), 1);
        assert_int_equal(t1 - lines[i], 3);
        assert_in_range(u, 1, T_USERS);
        user_used[u - 1] = 1;
        /* sticker exists and its ocr or keywords contain the query */
        uint64_t id = strtoull(t2 + 1, &end, 10);
        assert_true(*end == '\0' && end - (t2 + 1) == 19);
        json_t *row = row_of(id);
        assert_non_null(row);
        *t2 = '\0';
        const char *q = t1 + 1;
        int o = field_has_line(str_field(row, "ocr"), q);
        assert_true(o || field_has_line(str_field(row, "keywords"), q));
        in_ocr += o;
        pairs[i] = lines[i]; /* "user\tquery" */
        queries[i] = t1 + 1;
    }
    for (int u = 0; u < T_USERS; u++) users_seen += user_used[u];
    assert_int_equal(users_seen, T_USERS);
    assert_int_equal(count_distinct_strings(pairs, n), T_PAIRS);
    assert_int_equal(count_distinct_strings(queries, n), T_QUERIES);
    /* users mostly pick a sticker that shows the query (GEN_CLICK_OCR_SHARE = 0.9), although
     * ocr holds only about a quarter of the phrase slots */
    assert_true(in_ocr > n * 3 / 4);
    free(pairs);
    free(queries);
    free(lines);
    free(buf);
}

/* ------------------------------------------------------------------------------------------
 * embeddings.npy
 */
static float *read_npy(const char *path, size_t *rows, size_t *cols)
{
    size_t len;
    char *buf = slurp(path, &len), want[128];
    assert_true(len > 10);
    assert_int_equal(memcmp(buf, "\x93NUMPY\x01\x00", 8), 0);
    size_t hlen = (unsigned char)buf[8] | (size_t)(unsigned char)buf[9] << 8;
    assert_int_equal((10 + hlen) % 64, 0);
    assert_int_equal(buf[10 + hlen - 1], '\n');
    snprintf(want, sizeof want, "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }",
             T_STICKERS, T_DIM);
    assert_int_equal(memcmp(buf + 10, want, strlen(want)), 0);
    for (size_t i = 10 + strlen(want); i < 10 + hlen - 1; i++) assert_int_equal(buf[i], ' ');
    assert_int_equal(len, 10 + hlen + (size_t)T_STICKERS * T_DIM * 4);
    float *m = malloc((size_t)T_STICKERS * T_DIM * sizeof *m);
    assert_non_null(m);
    memcpy(m, buf + 10 + hlen, (size_t)T_STICKERS * T_DIM * sizeof *m);
    free(buf);
    *rows = T_STICKERS;
    *cols = T_DIM;
    return m;
}

static double dot(const float *a, const float *b, size_t d)
{
    double s = 0;
    for (size_t k = 0; k < d; k++) s += (double)a[k] * b[k];
    return s;
}

static void test_embeddings(void **state)
{
    (void)state;
    size_t rows, d;
    float *m = read_npy(path_in("a", "embeddings.npy"), &rows, &d);

    for (size_t i = 0; i < rows; i++) assert_true(fabs(dot(m + i * d, m + i * d, d) - 1.0) < 1e-4);

    /* Series structure, seen through nearest neighbours: at d = 64 two stickers of different
     * series have cosine ~ N(0, 1/8), so cos > 0.5 (4 sd) means "same series". Those
     * neighbourhoods should have the designed within-series cosine (0.70–0.85 on average),
     * be sized like series (mean ~150, heavy-tailed), and everything else should be ~0. */
    double in_sum = 0, out_sum = 0;
    size_t in_n = 0, out_n = 0, sizes[200], maxsz = 0, with_nb = 0;
    for (size_t s = 0; s < 200; s++) {
        size_t i = s * (rows / 200), sz = 1;
        for (size_t j = 0; j < rows; j++) {
            if (j == i) continue;
            double c = dot(m + i * d, m + j * d, d);
            if (c > 0.5) {
                in_sum += c;
                in_n++;
                sz++;
            } else {
                out_sum += c;
                out_n++;
            }
        }
        sizes[s] = sz;
        if (sz > maxsz) maxsz = sz;
        with_nb += sz > 1;
    }
    assert_true(with_nb >= 195);
    assert_true(in_sum / in_n > 0.68 && in_sum / in_n < 0.87);
    assert_true(fabs(out_sum / out_n) < 0.06);
    size_t total = 0;
    for (size_t s = 0; s < 200; s++) total += sizes[s];
    /* a sticker sees its series size; sampled by sticker, big series dominate, but the
     * smallest series are far below the largest */
    size_t minsz = SIZE_MAX;
    for (size_t s = 0; s < 200; s++)
        if (sizes[s] < minsz) minsz = sizes[s];
    assert_true(maxsz > 3 * minsz);
    assert_true(total / 200 > 60);
    free(m);
}

/* ------------------------------------------------------------------------------------------
 * Benchmark queries.
 */
static void test_gen_queries(void **state)
{
    (void)state;
    char **a = NULL, **b = NULL, **c = NULL;
    ps_err err;
    const size_t n = 1000;
    size_t chinese = 0, two = 0, differ = 0;

    assert_int_equal(builder_gen_queries(11, n, 0.85, &a, &err), 0);
    assert_int_equal(builder_gen_queries(11, n, 0.85, &b, &err), 0);
    assert_int_equal(builder_gen_queries(12, n, 0.85, &c, &err), 0);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(a[i], b[i]);
        differ += strcmp(a[i], c[i]) != 0;
        chinese += !is_ascii(a[i]);
        if (!is_ascii(a[i])) {
            /* Chinese phrases have no spaces: 1 or 2 vocabulary phrases */
            char tmp[512], *sp;
            snprintf(tmp, sizeof tmp, "%s", a[i]);
            sp = strchr(tmp, ' ');
            if (sp) {
                *sp = '\0';
                two++;
                assert_null(strchr(sp + 1, ' '));
            }
        }
    }
    assert_int_equal(chinese, 850);
    assert_true(two > chinese / 10 && two < chinese / 2);
    assert_true(differ > n / 2);
    builder_gen_queries_free(a, n);
    builder_gen_queries_free(b, n);
    builder_gen_queries_free(c, n);

    assert_int_equal(builder_gen_queries(1, 10, 0.0, &a, &err), 0);
    for (size_t i = 0; i < 10; i++) assert_true(is_ascii(a[i]));
    builder_gen_queries_free(a, 10);
    assert_int_equal(builder_gen_queries(1, 10, 1.5, &a, &err), PS_EINVAL);
    assert_null(a);
    assert_int_equal(builder_gen_queries(1, 10, NAN, &a, &err), PS_EINVAL);
    assert_int_equal(builder_gen_queries(1, 0, 0.5, &a, &err), 0);
    builder_gen_queries_free(a, 0);
}

/* ------------------------------------------------------------------------------------------
 * Configuration errors and the CLI.
 */
static void test_bad_config(void **state)
{
    (void)state;
    builder_gen_cfg cfg;
    ps_err err;
    struct stat st;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/bad", tmpdir);

#define EXPECT_EINVAL(field, value, needle)                                                        \
    do {                                                                                           \
        small_cfg(&cfg, 1);                                                                        \
        cfg.field = (value);                                                                       \
        assert_int_equal(builder_generate(&cfg, dir, &err), PS_EINVAL);                            \
        assert_int_equal(err.code, PS_EINVAL);                                                     \
        assert_non_null(strstr(err.msg, needle));                                                  \
    } while (0)
    EXPECT_EINVAL(nstickers, 0, "stickers");
    EXPECT_EINVAL(dim, 0, "dim");
    EXPECT_EINVAL(nusers, 0, "users");
    EXPECT_EINVAL(npairs, T_QUERIES - 1, "pairs");
    EXPECT_EINVAL(nclicks, T_PAIRS - 1, "clicks");
    EXPECT_EINVAL(npairs, T_USERS * T_QUERIES + 1, "users × queries");
    EXPECT_EINVAL(nqueries, 0, "queries");
#undef EXPECT_EINVAL
    /* nothing was created for a rejected config */
    assert_int_not_equal(stat(dir, &st), 0);

    /* more distinct queries than phrases that match a sticker in a tiny corpus */
    small_cfg(&cfg, 1);
    cfg.nstickers = 50;
    cfg.nqueries = 3000;
    cfg.npairs = 3000;
    cfg.nclicks = 3000;
    assert_int_equal(builder_generate(&cfg, dir, &err), PS_EINVAL);
    assert_non_null(strstr(err.msg, "--queries"));
    assert_int_not_equal(stat(path_in("bad", "clicks.tsv"), &st), 0);
    assert_int_not_equal(stat(path_in("bad", "corpus.jsonl.tmp"), &st), 0);

    /* an output path that is a file */
    small_cfg(&cfg, 1);
    FILE *f = fopen(path_in("", "plainfile"), "w");
    assert_non_null(f);
    fclose(f);
    snprintf(dir, sizeof dir, "%s/plainfile", tmpdir);
    assert_int_equal(builder_generate(&cfg, dir, &err), PS_EIO);
    assert_non_null(strstr(err.msg, "plainfile"));
}

/* Saturated pairs (every user asks every query), a user-heavy log, and no log at all. */
static void test_edge_shapes(void **state)
{
    (void)state;
    builder_gen_cfg cfg;
    size_t len;
    char *buf;

    small_cfg(&cfg, 3);
    cfg.nstickers = 2000;
    cfg.nusers = 3;
    cfg.nqueries = 20;
    cfg.npairs = 60;
    cfg.nclicks = 60;
    generate_into("sat", &cfg);
    buf = slurp(path_in("sat", "clicks.tsv"), &len);
    size_t n;
    char **lines = split_lines(buf, len, &n);
    assert_int_equal(n, 60);
    for (size_t i = 0; i < n; i++) *strrchr(lines[i], '\t') = '\0';
    assert_int_equal(count_distinct_strings(lines, n), 60);
    free(lines);
    free(buf);

    /* as many users as pairs: every user gets exactly one, even though the first draw gives
     * some users two queries and others none */
    small_cfg(&cfg, 4);
    cfg.nstickers = 2000;
    cfg.nusers = 12;
    cfg.nqueries = 12;
    cfg.npairs = 12;
    cfg.nclicks = 30;
    generate_into("users", &cfg);
    buf = slurp(path_in("users", "clicks.tsv"), &len);
    lines = split_lines(buf, len, &n);
    assert_int_equal(n, 30);
    for (size_t i = 0; i < n; i++) *strchr(lines[i], '\t') = '\0';
    assert_int_equal(count_distinct_strings(lines, n), 12);
    free(lines);
    free(buf);

    small_cfg(&cfg, 5);
    cfg.nstickers = 10;
    cfg.dim = 3;
    cfg.nclicks = cfg.npairs = cfg.nqueries = 0;
    generate_into("empty", &cfg);
    buf = slurp(path_in("empty", "clicks.tsv"), &len);
    assert_int_equal(len, 0);
    free(buf);
    buf = slurp(path_in("empty", "corpus.jsonl"), &len);
    size_t nl = 0;
    for (size_t i = 0; i < len; i++) nl += buf[i] == '\n';
    assert_int_equal(nl, 10);
    free(buf);
}

/* ------------------------------------------------------------------------------------------
 * Pictures (--images): the same files every run, a valid PNG per sticker chosen, named by the
 * corpus line, and nothing else changed.
 */
static void test_images(void **state)
{
    (void)state;
    builder_gen_cfg cfg;
    small_cfg(&cfg, T_SEED);
    cfg.nimages = 40;
    generate_into("img1", &cfg);
    generate_into("img2", &cfg);
    assert_true(files_equal(path_in("img1", "clicks.tsv"), path_in("a", "clicks.tsv")));
    assert_true(files_equal(path_in("img1", "embeddings.npy"), path_in("a", "embeddings.npy")));
    assert_true(files_equal(path_in("img1", "corpus.jsonl"), path_in("img2", "corpus.jsonl")));

    size_t la, lb, na, nb;
    char *a = slurp(path_in("a", "corpus.jsonl"), &la);
    char *b = slurp(path_in("img1", "corpus.jsonl"), &lb);
    char **al = split_lines(a, la, &na), **bl = split_lines(b, lb, &nb);
    assert_int_equal(na, nb);
    size_t with = 0;
    for (size_t i = 0; i < na; i++) {
        json_error_t je;
        json_t *row = json_loads(bl[i], 0, &je);
        assert_non_null(row);
        json_t *img = json_object_get(row, "image");
        if (i >= 40) {
            assert_null(img);
            assert_string_equal(al[i], bl[i]);
            json_decref(row);
            continue;
        }
        with++;
        /* the line is the one without a picture plus ,"image":"<hex2>/<id>.png" */
        char want[64]; /* the id from the text: 19 digits exceed a double */
        const char *idp = strstr(bl[i], "\"id\":") + 5;
        unsigned long long idv = strtoull(idp, NULL, 10);
        snprintf(want, sizeof want, "%02x/%llu.png", (unsigned)(idv & 0xff), idv);
        assert_string_equal(json_string_value(img), want);
        size_t al_n = strlen(al[i]);
        assert_memory_equal(al[i], bl[i], al_n - 1); /* all but the closing brace */
        char rel[128];
        snprintf(rel, sizeof rel, "images/%s", want);
        size_t pn, pn2;
        char *png = slurp(path_in("img1", rel), &pn), *png2 = slurp(path_in("img2", rel), &pn2);
        assert_true(pn > 100 && pn < 8192);
        assert_memory_equal(png, "\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x60\0\0\0\x60", 24);
        assert_int_equal(pn, pn2);
        assert_memory_equal(png, png2, pn);
        free(png);
        free(png2);
        json_decref(row);
    }
    assert_int_equal(with, 40);
    free(al);
    free(bl);
    free(a);
    free(b);

    /* a share: about that many, and a font that is not there is an error naming it */
    small_cfg(&cfg, T_SEED);
    cfg.image_share = 0.25;
    generate_into("img3", &cfg);
    size_t l3, n3, with3 = 0;
    char *c = slurp(path_in("img3", "corpus.jsonl"), &l3);
    char **cl = split_lines(c, l3, &n3);
    for (size_t i = 0; i < n3; i++) with3 += strstr(cl[i], "\"image\":") != NULL;
    assert_true(with3 > n3 / 5 && with3 < n3 * 3 / 10);
    free(cl);
    free(c);
    cfg.image_font = "/nonexistent/font.ttc";
    ps_err err;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/img4", tmpdir);
    assert_int_equal(builder_generate(&cfg, dir, &err), PS_EIO);
    assert_non_null(strstr(err.msg, "/nonexistent/font.ttc"));
}

static int run_cli(const char *first, ...)
{
    char *argv[32];
    int argc = 0;
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && argc < 31; a = va_arg(ap, const char *))
        argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    return builder_cmd_generate(argc, argv);
}

static void test_cli(void **state)
{
    (void)state;
    char out[512];
    struct stat st;
    snprintf(out, sizeof out, "%s/cli", tmpdir);

    assert_int_equal(run_cli("generate", "--help", NULL), 0);
    assert_int_equal(run_cli("generate", NULL), 2);                          /* no --out */
    assert_int_equal(run_cli("generate", "--out", out, "--bogus", NULL), 2); /* unknown */
    assert_int_equal(run_cli("generate", "--out", out, "--dim", "abc", NULL), 2);
    assert_int_equal(run_cli("generate", "--out", out, "--dim", "-3", NULL), 2);
    assert_int_equal(run_cli("generate", "--out", out, "--seed", "99999999999999999999", NULL), 2);
    assert_int_equal(run_cli("generate", "--out", out, "stray", NULL), 2);
    assert_int_equal(run_cli("generate", "--out", out, "--images", "x", NULL), 2);
    assert_int_equal(run_cli("generate", "--out", out, "--images", "101%", NULL), 2);
    assert_int_equal(run_cli("generate", "--out", out, "--images", "%", NULL), 2);
    assert_int_equal(run_cli("generate", "--out", NULL), 2); /* missing value */
    assert_int_equal(run_cli("generate", "--out", out, "--pairs", "5", "--queries", "10", NULL),
                     2); /* infeasible */
    assert_int_not_equal(stat(out, &st), 0);

    assert_int_equal(run_cli("generate", "--out", out, "--seed", "7", "--stickers", "5000", "--dim",
                             "64", "--users", "4", "--clicks", "600", "--pairs", "150", "--queries",
                             "100", "--no-progress", NULL),
                     0);
    assert_true(files_equal(path_in("a", "corpus.jsonl"), path_in("cli", "corpus.jsonl")));
    assert_true(files_equal(path_in("a", "embeddings.npy"), path_in("cli", "embeddings.npy")));
    assert_true(files_equal(path_in("a", "clicks.tsv"), path_in("cli", "clicks.tsv")));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vocab),        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_corpus_lines), cmocka_unit_test(test_corpus_zipf),
        cmocka_unit_test(test_clicks),       cmocka_unit_test(test_embeddings),
        cmocka_unit_test(test_gen_queries),  cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_edge_shapes),  cmocka_unit_test(test_cli),
        cmocka_unit_test(test_images),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
