/*
 * reference.c — see reference.h. Clarity over speed: linear scans and qsort everywhere.
 */
#include "reference.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ps/analyzer.h"

typedef struct term_tf {
    char *term;
    uint32_t tf;
} term_tf;

typedef struct ref_field {
    term_tf *terms; /* distinct terms, sorted by strcmp */
    size_t nterms;
    uint32_t dl; /* all tokens */
} ref_field;

struct ref_corpus {
    size_t n, dim;
    uint64_t *ids;
    const float *emb;
    ref_field (*fields)[PS_NFIELDS];
    double *utility;
    ps_analyzer_t *an;
};

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_term(const void *a, const void *b)
{
    return strcmp(((const term_tf *)a)->term, ((const term_tf *)b)->term);
}

static void analyze_field(ps_analyzer_t *an, const char *text, size_t len, ref_field *out)
{
    ps_tokens t;
    ps_tokens_init(&t);
    memset(out, 0, sizeof *out);
    if (ps_analyze(an, text ? text : "", text ? len : 0, "ref", &t, NULL) != 0 || t.n == 0) {
        ps_tokens_free(&t);
        return;
    }
    char **toks = malloc(t.n * sizeof *toks);
    for (size_t i = 0; i < t.n; i++) toks[i] = t.text + t.off[i];
    qsort(toks, t.n, sizeof *toks, cmp_str);
    out->terms = malloc(t.n * sizeof *out->terms);
    for (size_t i = 0; i < t.n; i++) {
        if (out->nterms && strcmp(out->terms[out->nterms - 1].term, toks[i]) == 0) {
            out->terms[out->nterms - 1].tf++;
            continue;
        }
        out->terms[out->nterms].term = strdup(toks[i]);
        out->terms[out->nterms].tf = 1;
        out->nterms++;
    }
    out->dl = (uint32_t)t.n;
    free(toks);
    ps_tokens_free(&t);
}

static uint32_t tf_of(const ref_field *f, const char *term)
{
    term_tf key = {(char *)term, 0};
    term_tf *hit = bsearch(&key, f->terms, f->nterms, sizeof *f->terms, cmp_term);
    return hit ? hit->tf : 0;
}

/* Append line to the '\n'-joined text unless present. */
static void add_line(char **text, size_t *len, const char *line, size_t l)
{
    if (l == 0) return;
    size_t i = 0;
    while (i < *len) {
        size_t j = i;
        while (j < *len && (*text)[j] != '\n') j++;
        if (j - i == l && memcmp(*text + i, line, l) == 0) return;
        i = j + 1;
    }
    *text = realloc(*text, *len + l + 2);
    if (*len) (*text)[(*len)++] = '\n';
    memcpy(*text + *len, line, l);
    *len += l;
    (*text)[*len] = '\0';
}

ref_corpus *ref_new(const ps_sticker_rec *recs, size_t n, const float *emb, size_t dim,
                    const ps_clicklog *train)
{
    ref_corpus *r = calloc(1, sizeof *r);
    r->n = n;
    r->dim = dim;
    r->emb = emb;
    r->ids = malloc(n * sizeof *r->ids);
    r->fields = calloc(n, sizeof *r->fields);
    r->utility = malloc(n * sizeof *r->utility);
    r->an = ps_analyzer_new(NULL);
    double *pop = calloc(n, sizeof *pop), *cross = calloc(n, sizeof *cross),
           *qa = calloc(n, sizeof *qa);
    for (size_t s = 0; s < n; s++) {
        r->ids[s] = recs[s].id;
        /* Query integration: the corpus's queries, then the training queries, distinct. */
        char *queries = NULL;
        size_t qlen = 0;
        const char *own = recs[s].field[PS_F_QUERIES];
        size_t ownlen = recs[s].field_len[PS_F_QUERIES];
        for (size_t i = 0; i < ownlen;) {
            size_t j = i;
            while (j < ownlen && own[j] != '\n') j++;
            add_line(&queries, &qlen, own + i, j - i);
            i = j + 1;
        }
        /* Usage counts: clicks, distinct users, distinct queries (by scanning the log). */
        uint8_t *user_seen = calloc(train->nusers + 1, 1);
        uint8_t *query_seen = calloc(train->nqueries + 1, 1);
        for (size_t c = 0; c < train->n; c++) {
            if (train->sticker[c] != recs[s].id) continue;
            pop[s] += 1;
            if (!user_seen[train->user[c]]) {
                user_seen[train->user[c]] = 1;
                cross[s] += 1;
            }
            if (!query_seen[train->query[c]]) {
                query_seen[train->query[c]] = 1;
                qa[s] += 1;
            }
            const char *q = train->queries[train->query[c]];
            add_line(&queries, &qlen, q, strlen(q));
        }
        free(user_seen);
        free(query_seen);
        for (int f = 0; f < PS_NFIELDS; f++) {
            if (f == PS_F_QUERIES)
                analyze_field(r->an, queries, qlen, &r->fields[s][f]);
            else
                analyze_field(r->an, recs[s].field[f], recs[s].field_len[f], &r->fields[s][f]);
        }
        free(queries);
    }
    /* Utility (paper eq. 1–5) with base = 1 and w = (1, 1, 1). */
    double *comp[3] = {pop, cross, qa};
    double mx[3] = {0, 0, 0};
    for (int k = 0; k < 3; k++)
        for (size_t s = 0; s < n; s++) {
            if (comp[k][s] == 0) comp[k][s] = 1;
            if (comp[k][s] > mx[k]) mx[k] = comp[k][s];
        }
    for (size_t s = 0; s < n; s++) {
        r->utility[s] = 0;
        for (int k = 0; k < 3; k++) r->utility[s] += sqrt(comp[k][s] / mx[k]);
    }
    free(pop);
    free(cross);
    free(qa);
    return r;
}

void ref_free(ref_corpus *r)
{
    if (!r) return;
    for (size_t s = 0; s < r->n; s++)
        for (int f = 0; f < PS_NFIELDS; f++) {
            for (size_t i = 0; i < r->fields[s][f].nterms; i++) free(r->fields[s][f].terms[i].term);
            free(r->fields[s][f].terms);
        }
    free(r->fields);
    free(r->ids);
    free(r->utility);
    ps_analyzer_free(r->an);
    free(r);
}

static int cmp_recall(const void *a, const void *b)
{
    const ref_hit *x = a, *y = b;
    if (x->recall != y->recall) return x->recall > y->recall ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

static int cmp_score(const void *a, const void *b)
{
    const ref_hit *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

int ref_recall(ref_corpus *r, const char *q, const float w[PS_NFIELDS], int use_utility,
               ref_hit **all, size_t *nall)
{
    ps_tokens t;
    ps_tokens_init(&t);
    if (ps_analyze(r->an, q, strlen(q), "query", &t, NULL) != 0) {
        ps_tokens_free(&t);
        return -1;
    }
    /* Distinct query tokens. */
    char **terms = malloc((t.n ? t.n : 1) * sizeof *terms);
    size_t nt = 0;
    for (size_t i = 0; i < t.n; i++) {
        const char *tok = t.text + t.off[i];
        size_t j = 0;
        while (j < nt && strcmp(terms[j], tok) != 0) j++;
        if (j == nt) terms[nt++] = (char *)tok;
    }
    if (nt == 0) {
        free(terms);
        ps_tokens_free(&t);
        return -1;
    }
    /* Per-field statistics by scanning every sticker. */
    double nf[PS_NFIELDS] = {0}, avgdl[PS_NFIELDS] = {0};
    for (int f = 0; f < PS_NFIELDS; f++) {
        double tokens = 0;
        for (size_t s = 0; s < r->n; s++) {
            nf[f] += r->fields[s][f].dl > 0;
            tokens += r->fields[s][f].dl;
        }
        avgdl[f] = nf[f] > 0 ? tokens / nf[f] : 0;
    }
    /* tf of every (sticker, field, term), then df by counting. */
    uint32_t *tf = calloc(r->n * PS_NFIELDS * nt, sizeof *tf);
    double *df = calloc(nt * PS_NFIELDS, sizeof *df);
    for (size_t s = 0; s < r->n; s++)
        for (int f = 0; f < PS_NFIELDS; f++) {
            if (r->fields[s][f].nterms == 0) continue;
            for (size_t i = 0; i < nt; i++) {
                uint32_t x = tf_of(&r->fields[s][f], terms[i]);
                tf[(s * PS_NFIELDS + f) * nt + i] = x;
                df[i * PS_NFIELDS + f] += x > 0;
            }
        }
    const double k1 = 1.2, b = 0.75;
    ref_hit *hits = malloc((r->n ? r->n : 1) * sizeof *hits);
    size_t nh = 0;
    for (size_t s = 0; s < r->n; s++) {
        double rel = 0;
        for (int f = 0; f < PS_NFIELDS; f++) {
            const ref_field *fd = &r->fields[s][f];
            for (size_t i = 0; i < nt; i++) {
                double x = tf[(s * PS_NFIELDS + f) * nt + i];
                if (x == 0) continue;
                double d = df[i * PS_NFIELDS + f];
                double idf = log(1.0 + (nf[f] - d + 0.5) / (d + 0.5));
                rel += w[f] * idf * x * (k1 + 1) / (x + k1 * (1 - b + b * fd->dl / avgdl[f]));
            }
        }
        if (!(rel > 0)) continue;
        double u = use_utility ? r->utility[s] : 0;
        hits[nh++] = (ref_hit){r->ids[s], s, rel, u, rel + u, rel + u};
    }
    qsort(hits, nh, sizeof *hits, cmp_recall);
    free(tf);
    free(df);
    free(terms);
    ps_tokens_free(&t);
    *all = hits;
    *nall = nh;
    return 0;
}

void ref_prefer(ref_corpus *r, ref_hit *hits, size_t n, const ps_profile *prof, double alpha)
{
    if (!prof || prof->k == 0) return;
    for (size_t i = 0; i < n; i++) {
        const float *e = r->emb + hits[i].row * r->dim;
        int found = 0;
        double best = 0;
        hits[i].score = hits[i].recall;
        for (uint32_t c = 0; c < prof->k; c++) {
            const float *cv = prof->centroids + (size_t)c * r->dim;
            double d2 = 0, dot = 0, cn = 0, en = 0;
            for (size_t j = 0; j < r->dim; j++) {
                double diff = (double)cv[j] - (double)e[j];
                d2 += diff * diff;
                dot += (double)cv[j] * e[j];
                cn += (double)cv[j] * cv[j];
                en += (double)e[j] * e[j];
            }
            if (sqrt(d2) > prof->radius[c]) continue;
            double cosv = cn > 0 && en > 0 ? dot / (sqrt(cn) * sqrt(en)) : 0;
            double sc = hits[i].recall * (1 + alpha * cosv);
            if (!found || sc > best) best = sc;
            found = 1;
        }
        if (found) hits[i].score = best;
    }
    qsort(hits, n, sizeof *hits, cmp_score);
}
