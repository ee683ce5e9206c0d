/*
 * pipeline.c — corpus loading, query integration, utility, doc numbering, indexing and
 * profile building (see pipeline.h). Used by `builder build` and `builder eval` alike, so the
 * evaluated engine is exactly the served one.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pipeline.h"
#include "ps/analyzer.h"
#include "ps/log.h"
#include "ps/buf.h"
#include "ps/hash.h"
#include "ps/map.h"
#include "reorder.h"

double builder_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

void builder_progress_start(builder_progress *p, const char *what, size_t total, int enabled)
{
    p->what = what;
    p->total = total;
    p->t0 = p->last = builder_now();
    p->on = enabled && isatty(STDERR_FILENO);
}

/* Throttled by time alone (one clock read per call), so a small total still shows progress;
 * callers with very cheap items tick every few thousand items. "\033[K" clears what a longer
 * previous line left to the right. */
void builder_progress_tick(builder_progress *p, size_t done)
{
    if (!p->on) return;
    double now = builder_now();
    if (now - p->last < 0.25) return;
    p->last = now;
    double rate = done / (now - p->t0 > 1e-9 ? now - p->t0 : 1e-9);
    if (p->total)
        fprintf(stderr, "\r%s: %zu/%zu (%.0f/s, ETA %.0fs)\033[K", p->what, done, p->total, rate,
                rate > 0 && done < p->total ? (p->total - done) / rate : 0.0);
    else
        fprintf(stderr, "\r%s: %zu (%.0f/s)\033[K", p->what, done, rate);
}

void builder_progress_end(builder_progress *p, size_t done)
{
    if (!p->on) return;
    double el = builder_now() - p->t0;
    fprintf(stderr, "\r%s: %zu in %.1fs (%.0f/s)\033[K\n", p->what, done, el,
            el > 0 ? done / el : 0.0);
}

/**************************************************************************
 * Corpus
 */

void builder_corpus_free(builder_corpus *c)
{
    for (size_t i = 0; i < c->n; i++) ps_sticker_rec_clear(&c->recs[i]);
    free(c->recs);
    ps_matrix_free(&c->emb);
    memset(c, 0, sizeof *c);
}

int builder_corpus_load(const char *jsonl, const char *npy, int progress, builder_corpus *c,
                        ps_err *err)
{
    size_t cap = 0;
    int rc;
    builder_progress pg;
    memset(c, 0, sizeof *c);
    ps_jsonl_t *r = ps_jsonl_open(jsonl, 0, err);
    if (!r) return err ? err->code : PS_EIO;
    builder_progress_start(&pg, "reading corpus", 0, progress);
    for (;;) {
        if (c->n == cap) {
            cap = cap ? cap * 2 : 4096;
            ps_sticker_rec *recs = realloc(c->recs, cap * sizeof *recs);
            if (!recs) {
                rc = ps_err_set(err, PS_ENOMEM, "out of memory reading %s", jsonl);
                goto err;
            }
            c->recs = recs;
        }
        rc = ps_jsonl_next(r, &c->recs[c->n], err);
        if (rc == 0) break;
        if (rc < 0) goto err;
        c->n++;
        builder_progress_tick(&pg, c->n);
    }
    builder_progress_end(&pg, c->n);
    ps_jsonl_close(r);
    r = NULL;
    if ((rc = ps_npy_read(npy, &c->emb, err))) goto err;
    if (c->emb.rows != c->n) {
        rc = ps_err_set(err, PS_EINVAL, "%s has %zu rows but %s has %zu stickers", npy, c->emb.rows,
                        jsonl, c->n);
        goto err;
    }
    if (c->emb.cols == 0 || c->emb.cols > 65536) {
        rc = ps_err_set(err, PS_EINVAL, "%s: embedding dimension %zu is outside 1..65536", npy,
                        c->emb.cols);
        goto err;
    }
    return 0;
err:
    ps_jsonl_close(r);
    builder_corpus_free(c);
    return rc;
}

/**************************************************************************
 * Building
 */

void builder_cfg_defaults(builder_cfg *cfg)
{
    cfg->utility = ps_utility_default;
    cfg->kmax = PS_PROFILE_KMAX;
    cfg->seed = 42;
    /* The fields weighing at least half the heaviest: they decide which windows can win.
     * Clustering by the light fields too mixes them back (measured: 2,235 QPS by ocr alone,
     * 1,423 by all five; README). */
    float wmax = 0.0f;
    for (int f = 0; f < PS_NFIELDS; f++)
        if (ps_field_default_weights[f] > wmax) wmax = ps_field_default_weights[f];
    cfg->reorder_fields = 0;
    for (int f = 0; f < PS_NFIELDS; f++)
        if (ps_field_default_weights[f] >= 0.5f * wmax) cfg->reorder_fields |= 1u << f;
    cfg->reorder_iters = 8;
    cfg->progress = 0;
}

void builder_built_free(builder_built *b)
{
    ps_index_free(b->ix);
    free(b->row_of_doc);
    if (b->queries)
        for (size_t i = 0; i < b->nrows; i++) free(b->queries[i]);
    free(b->queries);
    free(b->queries_len);
    for (size_t u = 0; u < b->nusers; u++) {
        free(b->users[u]);
        ps_profile_clear(&b->profiles[u]);
        if (b->user_rows) free(b->user_rows[u]);
    }
    free(b->users);
    free(b->profiles);
    free(b->user_rows);
    free(b->user_nrows);
    free(b->pop);
    memset(b, 0, sizeof *b);
}

/* Row of each sticker id. */
static int idmap_build(ps_map *m, const builder_corpus *c, ps_err *err)
{
    ps_map_init(m, PS_MAP_U64);
    if (ps_map_reserve(m, c->n)) return ps_err_set(err, PS_ENOMEM, "out of memory mapping ids");
    for (size_t r = 0; r < c->n; r++) {
        uint64_t *v;
        if (ps_map_u64_add(m, c->recs[r].id, &v) == 0) /* reserved: cannot fail */
            return ps_err_set(err, PS_EINVAL, "sticker id %llu appears on corpus rows %llu and %zu",
                              (unsigned long long)c->recs[r].id, (unsigned long long)*v + 1, r + 1);
        *v = r;
    }
    return 0;
}

static int64_t idmap_row(const ps_map *m, uint64_t id)
{
    const uint64_t *v = ps_map_u64_get(m, id);
    return v ? (int64_t)*v : -1;
}

typedef struct rowclick {
    uint32_t row;
    uint32_t click; /* position in the log */
} rowclick;

static int cmp_rowclick(const void *a, const void *b)
{
    const rowclick *x = a, *y = b;
    if (x->row != y->row) return x->row < y->row ? -1 : 1;
    return (x->click > y->click) - (x->click < y->click);
}

/* Append the line s[0..len) to the '\n'-joined list in out unless `seen` holds it. */
static void add_distinct_line(ps_buf *out, ps_map *seen, const char *s, size_t len)
{
    if (len == 0 || out->rc) return;
    int added = ps_map_bytes_add(seen, s, len, NULL);
    if (added < 0) out->rc = added;
    if (added != 1) return;
    if (out->n) ps_buf_byte(out, '\n');
    ps_buf_add(out, s, len);
}

/* The queries field of every row: the corpus's own lines, then training queries, distinct. */
static int integrate_queries(const builder_corpus *c, const ps_clicklog *train, const ps_map *m,
                             builder_built *b, ps_err *err)
{
    rowclick *rc_ = malloc((train->n ? train->n : 1) * sizeof *rc_);
    size_t nrc = 0;
    int rc = 0;
    ps_buf lines = PS_BUF_INIT; /* one row's */
    ps_map seen = PS_MAP_INIT(PS_MAP_BYTES);
    if (!rc_) return ps_err_set(err, PS_ENOMEM, "out of memory integrating queries");
    for (size_t i = 0; i < train->n; i++) {
        int64_t row = idmap_row(m, train->sticker[i]);
        if (row >= 0) rc_[nrc++] = (rowclick){(uint32_t)row, (uint32_t)i};
    }
    qsort(rc_, nrc, sizeof *rc_, cmp_rowclick);
    size_t j = 0;
    for (size_t r = 0; r < c->n && !rc; r++) {
        const char *own = c->recs[r].field[PS_F_QUERIES];
        size_t ownlen = c->recs[r].field_len[PS_F_QUERIES];
        for (size_t s = 0; s < ownlen && !rc;) {
            const char *nl = memchr(own + s, '\n', ownlen - s);
            size_t l = nl ? (size_t)(nl - own - s) : ownlen - s;
            add_distinct_line(&lines, &seen, own + s, l);
            s += l + 1;
        }
        for (; j < nrc && rc_[j].row == r; j++) {
            const char *q = train->queries[train->query[rc_[j].click]];
            add_distinct_line(&lines, &seen, q, strlen(q));
        }
        if ((rc = lines.rc)) break;
        if (lines.n) /* a row without queries keeps NULL */
            b->queries[r] = ps_buf_detach(&lines, &b->queries_len[r]);
        ps_buf_reset(&lines);
        if (seen.mask >
            63) /* a row with many lines: clearing its table for every later row costs more */
            ps_map_free(&seen);
        else
            ps_map_clear(&seen);
    }
    ps_buf_free(&lines);
    ps_map_free(&seen);
    free(rc_);
    return rc ? ps_err_set(err, PS_ENOMEM, "out of memory integrating queries") : 0;
}

typedef struct docorder {
    float util;
    uint64_t id;
    uint32_t row;
} docorder;

static int cmp_docorder(const void *a, const void *b)
{
    const docorder *x = a, *y = b;
    if (x->util != y->util) return x->util > y->util ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Number the docs order[0..n) of one utility by recursive graph bisection over the terms of
 * cfg->reorder_fields (each term named by its field's byte and its bytes). */
static int reorder_run(const builder_corpus *c, const builder_built *b, docorder *order, size_t n,
                       const builder_cfg *cfg, ps_analyzer_t *an, ps_err *err)
{
    ps_map terms;
    ps_tokens tok;
    ps_buf key = PS_BUF_INIT, fwd = PS_BUF_INIT; /* fwd: each doc's term numbers, uint32 */
    uint64_t *off = malloc((n + 1) * sizeof *off);
    uint32_t *perm = malloc(n * sizeof *perm), nterms = 0;
    docorder *tmp = malloc(n * sizeof *tmp);
    int rc = 0;
    ps_map_init(&terms, PS_MAP_BYTES);
    ps_tokens_init(&tok);
    if (!off || !perm || !tmp) goto oom;
    off[0] = 0;
    for (size_t i = 0; i < n; i++) {
        const ps_sticker_rec *rec = &c->recs[order[i].row];
        for (int f = 0; f < PS_NFIELDS; f++) {
            if (!(cfg->reorder_fields >> f & 1)) continue;
            const char *text = f == PS_F_QUERIES ? b->queries[order[i].row] : rec->field[f];
            size_t len = f == PS_F_QUERIES ? b->queries_len[order[i].row] : rec->field_len[f];
            if (!text || !len) continue;
            if ((rc = ps_analyze(an, text, len, ps_field_names[f], &tok, err))) {
                ps_err_prefix(err, "sticker %llu", (unsigned long long)rec->id);
                goto out;
            }
            ps_tokens_distinct(&tok);
            for (size_t t = 0; t < tok.n; t++) {
                uint64_t *v;
                key.n = 0;
                ps_buf_byte(&key, f);
                ps_buf_add(&key, tok.text + tok.off[t], tok.len[t]);
                if (key.rc) goto oom;
                int added = ps_map_bytes_add(&terms, key.p, key.n, &v);
                if (added < 0) goto oom;
                if (added) *v = nterms++;
                uint32_t term = (uint32_t)*v;
                ps_buf_add(&fwd, &term, sizeof term);
            }
        }
        if (fwd.rc) goto oom;
        off[i + 1] = fwd.n / sizeof(uint32_t);
        perm[i] = (uint32_t)i;
    }
    if ((rc = builder_reorder(perm, n, off, (const uint32_t *)fwd.p, nterms, cfg->reorder_iters,
                              err)))
        goto out;
    for (size_t i = 0; i < n; i++) tmp[i] = order[perm[i]];
    memcpy(order, tmp, n * sizeof *order);
    goto out;
oom:
    rc = ps_err_set(err, PS_ENOMEM, "out of memory numbering %zu stickers", n);
out:
    ps_map_free(&terms);
    ps_tokens_free(&tok);
    ps_buf_free(&key);
    ps_buf_free(&fwd);
    free(off);
    free(perm);
    free(tmp);
    return rc;
}

typedef struct userrow {
    uint32_t user, row;
} userrow;

static int cmp_userrow(const void *a, const void *b)
{
    const userrow *x = a, *y = b;
    if (x->user != y->user) return x->user < y->user ? -1 : 1;
    return (x->row > y->row) - (x->row < y->row);
}

/* One profile per training user over the distinct stickers they clicked. */
static int build_profiles(const builder_corpus *c, const ps_clicklog *train, const ps_map *m,
                          const builder_cfg *cfg, builder_built *b, ps_err *err)
{
    size_t dim = c->emb.cols, n = 0;
    int rc = 0;
    b->users = calloc(train->nusers ? train->nusers : 1, sizeof *b->users);
    b->profiles = calloc(train->nusers ? train->nusers : 1, sizeof *b->profiles);
    b->user_rows = calloc(train->nusers ? train->nusers : 1, sizeof *b->user_rows);
    b->user_nrows = calloc(train->nusers ? train->nusers : 1, sizeof *b->user_nrows);
    userrow *ur = malloc((train->n ? train->n : 1) * sizeof *ur);
    float *pts = NULL;
    if (!b->users || !b->profiles || !b->user_rows || !b->user_nrows || !ur) {
        rc = ps_err_set(err, PS_ENOMEM, "out of memory building profiles");
        goto out;
    }
    b->nusers = train->nusers;
    for (size_t i = 0; i < train->n; i++) {
        int64_t row = idmap_row(m, train->sticker[i]);
        if (row >= 0) ur[n++] = (userrow){train->user[i], (uint32_t)row};
    }
    qsort(ur, n, sizeof *ur, cmp_userrow);
    size_t most = 0;
    for (size_t i = 0, run = 0; i < n; i++) {
        run = (i > 0 && ur[i].user == ur[i - 1].user) ? run + 1 : 1;
        if (run > most) most = run;
    }
    if (!(pts = malloc((most ? most : 1) * dim * sizeof *pts))) {
        rc = ps_err_set(err, PS_ENOMEM, "out of memory building profiles");
        goto out;
    }
    size_t i = 0;
    for (uint32_t u = 0; u < train->nusers && !rc; u++) {
        size_t k = 0, first = i;
        while (i < n && ur[i].user == u) i++;
        if (!(b->user_rows[u] = malloc((i - first ? i - first : 1) * sizeof **b->user_rows))) {
            rc = ps_err_set(err, PS_ENOMEM, "out of memory building profiles");
            break;
        }
        for (size_t j = first; j < i; j++) {
            if (k > 0 && ur[j].row == ur[j - 1].row) continue;
            memcpy(pts + k * dim, c->emb.data + (size_t)ur[j].row * dim, dim * sizeof *pts);
            b->user_rows[u][k++] = ur[j].row;
        }
        b->user_nrows[u] = (uint32_t)k;
        if (!(b->users[u] = strdup(train->users[u]))) {
            rc = ps_err_set(err, PS_ENOMEM, "out of memory building profiles");
            break;
        }
        uint64_t seed = cfg->seed ^ ps_hash_bytes(train->users[u], strlen(train->users[u]));
        rc = ps_profile_build(pts, k, dim, cfg->kmax, seed, &b->profiles[u], err);
        if (rc) ps_err_prefix(err, "profile of user '%s'", train->users[u]);
    }
out:
    free(ur);
    free(pts);
    return rc;
}

int builder_build_index(const builder_corpus *c, const ps_clicklog *train, const builder_cfg *cfg,
                        int with_embeddings, builder_built *b, ps_err *err)
{
    ps_map m = PS_MAP_INIT(PS_MAP_U64);
    ps_usage usage = {0};
    float *util = NULL;
    docorder *order = NULL;
    ps_analyzer_t *an = NULL;
    ps_ixbuild_t *ib = NULL;
    ps_tokens tok[PS_NFIELDS];
    builder_progress pg;
    int rc;

    memset(b, 0, sizeof *b);
    for (int f = 0; f < PS_NFIELDS; f++) ps_tokens_init(&tok[f]);
    b->nrows = c->n;
    b->queries = calloc(c->n ? c->n : 1, sizeof *b->queries);
    b->queries_len = calloc(c->n ? c->n : 1, sizeof *b->queries_len);
    b->row_of_doc = malloc((c->n ? c->n : 1) * sizeof *b->row_of_doc);
    b->pop = malloc((c->n ? c->n : 1) * sizeof *b->pop);
    util = malloc((c->n ? c->n : 1) * sizeof *util);
    order = malloc((c->n ? c->n : 1) * sizeof *order);
    if (!b->queries || !b->queries_len || !b->row_of_doc || !b->pop || !util || !order) {
        rc = ps_err_set(err, PS_ENOMEM, "out of memory building an index of %zu stickers", c->n);
        goto err;
    }
    if ((rc = idmap_build(&m, c, err))) goto err;

    /* Utility from the training clicks, then doc numbers by (utility desc, id asc). */
    uint64_t *ids = malloc((c->n ? c->n : 1) * sizeof *ids);
    if (!ids) {
        rc = ps_err_set(err, PS_ENOMEM, "out of memory");
        goto err;
    }
    for (size_t r = 0; r < c->n; r++) ids[r] = c->recs[r].id;
    rc = ps_usage_count(train, ids, c->n, &usage, &b->unknown_clicks, err);
    free(ids);
    if (rc) goto err;
    ps_utility_compute(&cfg->utility, &usage, util);
    for (size_t r = 0; r < c->n; r++) order[r] = (docorder){util[r], c->recs[r].id, (uint32_t)r};
    qsort(order, c->n, sizeof *order, cmp_docorder);

    if ((rc = integrate_queries(c, train, &m, b, err))) goto err;
    if (!(an = ps_analyzer_new(err))) {
        rc = err ? err->code : PS_ENOMEM;
        goto err;
    }
    /* The engine bounds a window's utility by its first doc's, so docs of equal utility may
     * be numbered in any order: put those that share terms together. */
    for (size_t lo = 0, hi; cfg->reorder_fields && lo < c->n; lo = hi) {
        hi = lo + 1;
        while (hi < c->n && order[hi].util == order[lo].util) hi++;
        if (hi - lo > BUILDER_REORDER_LEAF &&
            (rc = reorder_run(c, b, order + lo, hi - lo, cfg, an, err)))
            goto err;
    }
    for (size_t d = 0; d < c->n; d++) {
        b->row_of_doc[d] = order[d].row;
        b->pop[d] = usage.pop[order[d].row];
    }

    /* Analyze and index in doc order. */
    if (!(ib = ps_ixbuild_new(c->n, (uint32_t)c->emb.cols, err))) {
        rc = err ? err->code : PS_ENOMEM;
        goto err;
    }
    builder_progress_start(&pg, "indexing", c->n, cfg->progress);
    for (size_t d = 0; d < c->n; d++) {
        const ps_sticker_rec *rec = &c->recs[order[d].row];
        const ps_tokens *fields[PS_NFIELDS];
        for (int f = 0; f < PS_NFIELDS; f++) {
            const char *text = f == PS_F_QUERIES ? b->queries[order[d].row] : rec->field[f];
            size_t len = f == PS_F_QUERIES ? b->queries_len[order[d].row] : rec->field_len[f];
            rc = ps_analyze(an, text ? text : "", text ? len : 0, ps_field_names[f], &tok[f], err);
            if (rc) {
                ps_err_prefix(err, "sticker %llu", (unsigned long long)rec->id);
                goto err;
            }
            fields[f] = &tok[f];
        }
        if ((rc = ps_ixbuild_add(ib, rec->id, order[d].util, fields, err))) goto err;
        builder_progress_tick(&pg, d + 1);
    }
    builder_progress_end(&pg, c->n);
    if (!(b->ix = ps_ixbuild_finish(&ib, err))) {
        rc = err ? err->code : PS_ENOMEM;
        goto err;
    }

    if ((rc = build_profiles(c, train, &m, cfg, b, err))) goto err;

    if (with_embeddings) {
        size_t dim = c->emb.cols;
        float *emb = malloc((c->n ? c->n : 1) * dim * sizeof *emb);
        if (!emb) {
            rc = ps_err_set(err, PS_ENOMEM, "out of memory copying embeddings");
            goto err;
        }
        for (size_t d = 0; d < c->n; d++)
            memcpy(emb + d * dim, c->emb.data + (size_t)b->row_of_doc[d] * dim, dim * sizeof *emb);
        ps_index_set_embeddings(b->ix, &emb);
    }
    rc = 0;
    goto out;
err:
    builder_built_free(b);
out:
    ps_ixbuild_free(ib);
    ps_analyzer_free(an);
    for (int f = 0; f < PS_NFIELDS; f++) ps_tokens_free(&tok[f]);
    ps_usage_free(&usage);
    ps_map_free(&m);
    free(util);
    free(order);
    return rc;
}
