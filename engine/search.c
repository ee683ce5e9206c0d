/*
 * search.c — query evaluation: analysis, clause setup, windowed block-max MaxScore, the
 * exhaustive reference path, and the preference step.
 *
 * A clause is one (field, term) posting list with its query weight qw = w_f·idf_f(t) (float).
 * A posting contributes qw·ptfn (a float product); a doc's Relevance is the double sum of its
 * contributions taken in descending clause order (clauses sorted by upper bound ascending, so
 * the sum starts from the strongest clause). Both paths add in exactly this order, so they
 * produce bit-identical scores.
 *
 * Windowed MaxScore (after Lucene's MaxScoreBulkScorer): docs are taken in aligned windows of
 * WIN docs. In each window a clause's bound is the largest contribution of the blocks that
 * overlap the window (blk_max), and utility's bound is the utility of the window's first doc
 * (docs are numbered by descending utility). Clauses [0, ne) are "non-essential" in the
 * window: all of them together plus that utility cannot beat the current R-th recall (theta),
 * so a doc that appears only in them cannot enter the top R. The essential clauses [ne, m)
 * are scored term-at-a-time into the window's accumulator, strongest first; each doc they
 * touched is then completed by probing the non-essential clauses, strongest first, while the
 * bound still allows a win. A window without essential clauses is skipped. Otherwise the
 * non-essential prefix is cut back to its last dense clause: the sparser clauses above it are
 * scored with the essential ones (a few postings in order cost less than a search per
 * candidate, and fewer docs then pass as candidates). ne is a prefix of the global order in
 * every window, so every doc's sum still runs in descending clause order. A clause with no
 * posting in the window is not probed at all. A probe into a dense list is a bit test and a
 * popcount, and the posting's ptfn read from the list's palette by a byte (ps_int.h); a short
 * list's postings in the window, which its exact bound has just read, are merged with the
 * candidates; any other list is galloped.
 *
 * theta does not start at -infinity: before the windows, the docs of the query's short lists
 * (its rarest terms) are ranked by what those lists give them, the best 2R are scored exactly,
 * and the R-th best of those recalls is where theta starts (theta_floor). Docs are numbered by
 * utility, not relevance, so the heap alone fills with weak docs first and theta would climb
 * for hundreds of windows; from the floor most windows prune from the start (a quarter fewer
 * postings and probes on the benchmark's queries).
 *
 * The preference step reads each candidate's embedding row where it lies (resident or mapped),
 * prefetching the next row, and takes e·e and e·c for every centroid in one pass
 * (ps_dot_many, ps_dot's bits).
 *
 * Where the time goes (543k stickers, unpersonalized top 100; ps_search_stats counts it): the
 * non-essential probes, most of it waiting for the probed posting's cache line; then the
 * term-at-a-time scoring of the essential clauses and the per-window partition; the floor's
 * own exact scoring (2R docs on every clause) takes back about half of what it saves.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ps/search.h"
#include "ps_int.h"
#include "ps/alloc.h"
#include "ps/rcache.h"

#define END_DOC UINT32_MAX
#define WIN     PS_WIN

typedef struct clause {
    const uint32_t *docs; /* list postings */
    const float *tfn;
    const uint32_t *blast; /* block last docs */
    const uint8_t *wq;     /* window table (ps_int.h), NULL for a short list */
    const uint64_t *bits;  /* dense list: its bitmap (ps_int.h), else NULL */
    const uint32_t *wbase; /* dense list: its postings before each window */
    const uint8_t *pq;     /* dense list with a palette: each posting's index in it */
    const float *pal;      /* its palette (ps_int.h), else NULL */
    double wscale;         /* bound of a window = wscale · wq[window] */
    uint32_t n, pos;
    uint32_t cur;    /* docs[pos], or END_DOC once the list is exhausted */
    uint32_t nblk;   /* blocks */
    uint32_t wpos;   /* short list: first posting not before the last window bounded */
    uint32_t wfirst; /* short list: its first posting in that window (wpos if none) */
    float qw;        /* w_f · idf_f(t) */
    float ub;        /* qw · max ptfn */
    uint32_t order;  /* tie-break for sorting: creation order */
} clause;

typedef struct heapent {
    double recall, relevance;
    uint64_t id;
    uint32_t doc;
} heapent;

struct ps_searcher {
    const ps_index_t *ix;
    ps_analyzer_t *an;
    ps_tokens tok;
    clause *cl;
    size_t cl_cap;
    double *prefix; /* prefix[i] = Σ bound of clauses [0, i) (in the current window) */
    size_t prefix_cap;
    double *wall; /* per window: Σ bound of every clause, with a slack (window_totals) */
    size_t wall_cap;
    double wacc[WIN]; /* window accumulator: zero between windows */
    struct wcand {
        uint32_t doc;
        double rel;
    } wcand[WIN];             /* the window's candidates */
    uint64_t wbits[WIN / 64]; /* docs of the window the essential clauses touched */
    heapent *heap;
    size_t heap_cap;
    uint32_t *fl_key; /* theta_floor: a hash of docs (doc + 1, 0 = free) to partial sums */
    double *fl_sum;
    size_t fl_key_cap, fl_sum_cap;
    struct flcand {
        uint32_t doc;
        double v; /* partial sum + utility, then the exact recall */
    } * fl;
    size_t fl_cap;
    double *acc;   /* exhaustive path: per-doc sums, all zero between queries */
    uint8_t *seen; /* exhaustive path: doc touched in this query */
    uint32_t *touched;
    size_t ntouched_cap;
    float *emb; /* preference: R × dim */
    uint32_t *docs;
    size_t emb_cap, docs_cap;
};

void ps_search_opts_default(ps_search_opts *o)
{
    memcpy(o->field_w, ps_field_default_weights, sizeof o->field_w);
    o->R = 100;
    o->k = 10;
    o->alpha = 0.3f;
    o->use_utility = 1;
    o->exhaustive = 0;
    o->profile = NULL;
    o->rcache = NULL;
    o->rcache_version = 0;
}

ps_searcher_t *ps_searcher_new(const ps_index_t *ix, ps_err *err)
{
    ps_searcher_t *s = ps_calloc(1, sizeof *s);
    if (!s) {
        ps_err_set(err, PS_ENOMEM, "out of memory allocating a searcher");
        return NULL;
    }
    s->ix = ix;
    ps_tokens_init(&s->tok);
    if (!(s->an = ps_analyzer_new(err))) {
        ps_free(s);
        return NULL;
    }
    return s;
}

void ps_searcher_free(ps_searcher_t *s)
{
    if (!s) return;
    ps_analyzer_free(s->an);
    ps_tokens_free(&s->tok);
    ps_free(s->cl);
    ps_free(s->prefix);
    ps_free(s->wall);
    ps_free(s->heap);
    ps_free(s->fl_key);
    ps_free(s->fl_sum);
    ps_free(s->fl);
    ps_free(s->acc);
    ps_free(s->seen);
    ps_free(s->touched);
    ps_free(s->emb);
    ps_free(s->docs);
    ps_free(s);
}

/**************************************************************************
 * The top-R heap: a min-heap whose root is the worst kept hit (lowest recall, then largest id).
 */

static inline int worse(const heapent *a, const heapent *b)
{
    return a->recall < b->recall || (a->recall == b->recall && a->id > b->id);
}

static void heap_push(heapent *h, size_t *n, size_t cap, const heapent *e)
{
    size_t i;
    if (*n < cap) {
        i = (*n)++;
        while (i > 0) {
            size_t p = (i - 1) / 2;
            if (!worse(e, &h[p])) break;
            h[i] = h[p];
            i = p;
        }
        h[i] = *e;
        return;
    }
    if (!worse(&h[0], e)) return;
    i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && worse(&h[c + 1], &h[c])) c++;
        if (!worse(&h[c], e)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = *e;
}

static int cmp_clause(const void *a, const void *b)
{
    const clause *x = a, *y = b;
    if (x->ub != y->ub) return x->ub < y->ub ? -1 : 1;
    return (x->order > y->order) - (x->order < y->order);
}

int ps_hit_cmp_recall(const void *a, const void *b)
{
    const ps_hit *x = a, *y = b;
    if (x->recall != y->recall) return x->recall > y->recall ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

static int cmp_hit_score(const void *a, const void *b)
{
    const ps_hit *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/**************************************************************************
 * Setup: analyze, look up lists, compute query weights and bounds.
 */

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *q = ps_realloc(*p, c * elem);
    if (!q) return PS_ENOMEM;
    *p = q;
    *cap = c;
    return 0;
}

static int check_opts(const ps_search_opts *o, ps_err *err)
{
    if (o->R < 1 || o->R > PS_SEARCH_MAX_R)
        return ps_err_set(err, PS_EINVAL, "R = %u is outside 1..%d", o->R, PS_SEARCH_MAX_R);
    if (o->k < 1 || o->k > o->R)
        return ps_err_set(err, PS_EINVAL, "k = %u is outside 1..R (R = %u)", o->k, o->R);
    for (int f = 0; f < PS_NFIELDS; f++)
        if (!(o->field_w[f] >= 0.0f) || isinf(o->field_w[f]))
            return ps_err_set(err, PS_EINVAL, "weight of field %s is not a finite number >= 0",
                              ps_field_names[f]);
    if (!(o->alpha >= 0.0f) || isinf(o->alpha))
        return ps_err_set(err, PS_EINVAL, "alpha is not a finite number >= 0");
    return 0;
}

/* Analyze q and fill s->cl with its clauses sorted by upper bound; *m = number of clauses. */
/* s->tok holds distinct tokens: check there are some, and not too many. */
static int check_tokens(const ps_tokens *tok, ps_err *err)
{
    if (tok->n == 0) return ps_err_set(err, PS_EQUERY, "query has no searchable token");
    if (tok->n > PS_SEARCH_MAX_TERMS)
        return ps_err_set(err, PS_ETOOBIG, "query has %zu distinct tokens; at most %d", tok->n,
                          PS_SEARCH_MAX_TERMS);
    return 0;
}

/* Fill s->cl with the clauses of the tokens in s->tok, sorted by upper bound; *m = count. */
static int setup(ps_searcher_t *s, const ps_search_opts *o, size_t *m, ps_search_stats *st,
                 ps_err *err)
{
    const ps_index_t *ix = s->ix;
    if (grow((void **)&s->cl, &s->cl_cap, s->tok.n * PS_NFIELDS, sizeof *s->cl))
        return ps_err_set(err, PS_ENOMEM, "out of memory preparing a query");

    size_t n = 0;
    st->nterms = (uint32_t)s->tok.n;
    for (size_t t = 0; t < s->tok.n; t++) {
        int64_t term = ps__dict_find(&ix->dict, s->tok.text + s->tok.off[t], s->tok.len[t]);
        if (term < 0) continue;
        for (int f = 0; f < PS_NFIELDS; f++) {
            uint32_t l = ix->dict.terms[term].list[f];
            if (l == PS_NOLIST || o->field_w[f] == 0.0f) continue;
            const ps__plist *pl = &ix->lists[l];
            double nf = ix->fs[f].ndocs, df = pl->df;
            double idf = log(1.0 + (nf - df + 0.5) / (df + 0.5));
            clause *c = &s->cl[n];
            c->docs = ix->pdocs + pl->off;
            c->tfn = ix->ptfn + pl->off;
            c->blast = ix->blk_last + pl->blk;
            c->n = pl->n;
            c->pos = 0;
            c->wpos = 0;
            c->nblk = (pl->n + PS_BLOCK - 1) / PS_BLOCK;
            c->qw = (float)((double)o->field_w[f] * idf);
            c->ub = c->qw * pl->max_tfn;
            c->wq = pl->win != PS_NOLIST ? ix->win_q + pl->win : NULL;
            c->bits =
                pl->dense != PS_NOLIST ? ix->dense_bits + (size_t)pl->dense * ix->nwords : NULL;
            c->wbase =
                pl->dense != PS_NOLIST ? ix->dense_base + (size_t)pl->dense * ix->nwin : NULL;
            c->pal = pl->pal != PS_NOLIST ? ix->palette + pl->pal : NULL;
            c->pq = ix->pq + pl->off;
            c->wscale = (double)c->qw * (double)pl->max_tfn / 255.0 * (1.0 + 0x1p-20);
            c->order = (uint32_t)n;
            if (!(c->qw > 0.0f) || pl->n == 0) continue;
            st->npostings += pl->n;
            n++;
        }
    }
    qsort(s->cl, n, sizeof *s->cl, cmp_clause);
    st->nlists = (uint32_t)n;
    *m = n;
    if (grow((void **)&s->heap, &s->heap_cap, o->R, sizeof *s->heap))
        return ps_err_set(err, PS_ENOMEM, "out of memory preparing a query");
    if (grow((void **)&s->prefix, &s->prefix_cap, n + 1, sizeof *s->prefix) ||
        grow((void **)&s->wall, &s->wall_cap, ix->nwin + 1, sizeof *s->wall))
        return ps_err_set(err, PS_ENOMEM, "out of memory preparing a query");
    return 0;
}

/**************************************************************************
 * Cursor moves
 */

/* First index i in [lo, n) with a[i] >= target (n if none): galloping then binary search. */
static inline uint32_t gallop(const uint32_t *a, uint32_t lo, uint32_t n, uint32_t target)
{
    uint32_t step = 1, hi = lo;
    while (hi < n && a[hi] < target) {
        lo = hi + 1;
        hi += step;
        step *= 2;
    }
    if (hi > n) hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (a[mid] < target)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* First posting of c at or after pos whose doc is >= d (c->n if none), c's cursor untouched:
 * galloping over the block ends, then within the one block. */
static inline uint32_t find_from(const clause *c, uint32_t pos, uint32_t d)
{
    uint32_t b = gallop(c->blast, pos / PS_BLOCK, c->nblk, d);
    if (b == c->nblk) return c->n;
    uint32_t lo = b * PS_BLOCK > pos ? b * PS_BLOCK : pos;
    uint32_t hi = b * PS_BLOCK + PS_BLOCK < c->n ? b * PS_BLOCK + PS_BLOCK : c->n;
    return gallop(c->docs, lo, hi, d);
}

/* Move c to its first posting >= d, skipping whole blocks by their last doc. */
static inline void seek(clause *c, uint32_t d, uint64_t *visited)
{
    if (c->cur >= d) return;
    c->pos = find_from(c, c->pos, d);
    if (c->pos == c->n) {
        c->cur = END_DOC;
        return;
    }
    c->cur = c->docs[c->pos];
    (*visited)++;
}

/**************************************************************************
 * Windowed MaxScore
 */

/* Largest contribution of c to a doc in [w0, w1): from its window table, or exactly from the
 * postings of a short list (each read once per query: windows only move forward). */
static inline double window_bound(clause *c, uint32_t w0, uint32_t w1)
{
    if (c->wq) return c->wscale * c->wq[w0 >> PS_WIN_BITS];
    uint32_t p = c->wpos;
    while (p < c->n && c->docs[p] < w0) p++;
    c->wfirst = p;
    float mx = 0.0f;
    for (; p < c->n && c->docs[p] < w1; p++)
        if (c->tfn[p] > mx) mx = c->tfn[p];
    c->wpos = p;
    return (double)(c->qw * mx);
}

/* Dense list c: is doc in it, and at which posting (*p)? */
static inline int dense_find(const clause *c, uint32_t doc, uint32_t *p)
{
    uint32_t wi = doc >> 6;
    uint64_t word = c->bits[wi];
    if (!(word >> (doc & 63) & 1)) return 0;
    uint32_t first = (doc >> PS_WIN_BITS) * (PS_WIN / 64);
    uint32_t r = c->wbase[doc >> PS_WIN_BITS];
    for (uint32_t i = first; i < wi; i++) r += (uint32_t)__builtin_popcountll(c->bits[i]);
    *p = r + (uint32_t)__builtin_popcountll(word & ((1ull << (doc & 63)) - 1));
    return 1;
}

/* Score the essential clause c's postings in [w0, w1) into the window accumulator. */
static inline void taat(ps_searcher_t *s, clause *c, uint32_t w0, uint32_t w1, uint64_t *visited)
{
    double *acc = s->wacc;
    uint64_t *bits = s->wbits;
    if (c->wbase && c->cur < w0) {
        c->pos = c->wbase[w0 >> PS_WIN_BITS];
        c->cur = c->pos < c->n ? c->docs[c->pos] : END_DOC;
    } else {
        seek(c, w0, visited);
    }
    uint32_t p = c->pos, n = c->n;
    const uint32_t *docs = c->docs;
    const float *tfn = c->tfn;
    const float qw = c->qw;
    for (; p < n && docs[p] < w1; p++) {
        uint32_t j = docs[p] - w0;
        acc[j] += (double)(qw * tfn[p]);
        bits[j >> 6] |= 1ull << (j & 63);
    }
    *visited += p - c->pos;
    c->pos = p;
    c->cur = p < n ? docs[p] : END_DOC;
}

/* wall[w] = Σ over the clauses of their bound in window w, times 1 + 2^-30: far above the
 * rounding of any order of summing them, so a window whose wall[w] + utility bound is below
 * theta holds no doc that can win, whatever its partition would say. One pass over the window
 * tables (and the short lists' postings) per query, then one compare per window. */
static void window_totals(ps_searcher_t *s, size_t m)
{
    uint32_t nwin = s->ix->nwin;
    double *wall = s->wall;
    memset(wall, 0, nwin * sizeof *wall);
    for (size_t i = 0; i < m; i++) {
        const clause *c = &s->cl[i];
        if (c->wq) {
            for (uint32_t w = 0; w < nwin; w++) wall[w] += c->wscale * c->wq[w];
            continue;
        }
        for (uint32_t p = 0; p < c->n;) {
            uint32_t w = c->docs[p] >> PS_WIN_BITS;
            float mx = 0.0f;
            for (; p < c->n && c->docs[p] >> PS_WIN_BITS == w; p++)
                if (c->tfn[p] > mx) mx = c->tfn[p];
            wall[w] += (double)(c->qw * mx);
        }
    }
    for (uint32_t w = 0; w < nwin; w++) wall[w] *= 1.0 + 0x1p-30;
}

/* Most postings a query's threshold floor reads from its short lists (theta_floor). */
#define FLOOR_POSTINGS 16384

/* Reorder a[0..n) so that a[0..k) hold k largest values (1 <= k <= n): a selection with
 * three-way partitions, so runs of equal values end it early. */
static void select_top(struct flcand *a, size_t n, size_t k)
{
    size_t lo = 0, hi = n; /* a[0..lo) >= a[lo..hi) >= a[hi..n) */
    while (hi - lo > 1) {
        double p = a[lo + (hi - lo) / 2].v;
        size_t lt = lo, i = lo, gt = hi; /* [lo, lt) > p, [lt, i) == p, [gt, hi) < p */
        while (i < gt) {
            struct flcand t = a[i];
            if (t.v > p) {
                a[i++] = a[lt];
                a[lt++] = t;
            } else if (t.v < p) {
                a[i] = a[--gt];
                a[gt] = t;
            } else {
                i++;
            }
        }
        if (k <= lt)
            hi = lt;
        else if (k <= gt)
            return;
        else
            lo = gt;
    }
}

/* Sort a[0..n) by doc: an insertion sort for the few, a radix sort by 11-bit digits beyond. */
static void sort_by_doc(struct flcand *a, struct flcand *tmp, size_t n)
{
    if (n <= 32) {
        for (size_t i = 1; i < n; i++) {
            struct flcand v = a[i];
            size_t j = i;
            for (; j > 0 && a[j - 1].doc > v.doc; j--) a[j] = a[j - 1];
            a[j] = v;
        }
        return;
    }
    for (int shift = 0; shift < 33; shift += 11) {
        size_t cnt[2048] = {0};
        for (size_t i = 0; i < n; i++) cnt[(a[i].doc >> shift) & 2047]++;
        for (size_t i = 0, sum = 0; i < 2048; i++) {
            size_t c = cnt[i];
            cnt[i] = sum;
            sum += c;
        }
        for (size_t i = 0; i < n; i++) tmp[cnt[(a[i].doc >> shift) & 2047]++] = a[i];
        memcpy(a, tmp, n * sizeof *a);
    }
}

/* A threshold to start from: a recall that at least R docs are known to reach, so no doc
 * below it can be in the top R. The docs of the short lists (the query's rarest terms, read
 * whole) are ranked by their contributions there plus their utility; the best 2R of them are
 * scored on every clause, in the canonical order (descending clauses, then utility), and the
 * R-th best of those exact recalls is the floor (lowered by 2^-30 relative, which costs
 * nothing). Docs are numbered by utility, so without a floor the threshold climbs only as the
 * windows fill the heap, and the first windows are evaluated with almost no pruning; with it
 * most queries prune from the first window near where they end. -INFINITY when the short
 * lists hold fewer than R docs, or more than FLOOR_POSTINGS postings would be read. Cloned
 * for x86-64-v2 as run_maxscore is: its dense probes count bits too. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("arch=x86-64-v2", "default")))
#endif
static double
theta_floor(ps_searcher_t *s, size_t m, const ps_search_opts *o)
{
    const ps_index_t *ix = s->ix;
    const clause *cl = s->cl;
    size_t R = o->R, K = 2 * R, total = 0;
    for (size_t i = 0; i < m; i++)
        if (!cl[i].wq) total += cl[i].n;
    if (total < R || total > FLOOR_POSTINGS) return -INFINITY;
    size_t cap = 64;
    while (cap < 2 * total) cap *= 2;
    if (grow((void **)&s->fl_key, &s->fl_key_cap, cap, sizeof *s->fl_key) ||
        grow((void **)&s->fl_sum, &s->fl_sum_cap, cap, sizeof *s->fl_sum) ||
        grow((void **)&s->fl, &s->fl_cap, total + K, sizeof *s->fl))
        return -INFINITY; /* out of memory: the search only starts lower */
    uint32_t *key = s->fl_key, mask = (uint32_t)cap - 1;
    double *sum = s->fl_sum;
    struct flcand *fl = s->fl;
    size_t n = 0;
    memset(key, 0, cap * sizeof *key);
    for (size_t i = 0; i < m; i++) {
        const clause *c = &cl[i];
        if (c->wq) continue;
        for (uint32_t p = 0; p < c->n; p++) {
            uint32_t d = c->docs[p], h = (d * 0x9E3779B1u) & mask;
            while (key[h] && key[h] != d + 1) h = (h + 1) & mask;
            if (!key[h]) {
                key[h] = d + 1;
                sum[h] = 0.0;
                fl[n++].doc = h; /* its slot, for now */
            }
            sum[h] += (double)(c->qw * c->tfn[p]);
        }
    }
    for (size_t k = 0; k < n; k++) {
        uint32_t h = fl[k].doc;
        fl[k].doc = key[h] - 1;
        fl[k].v = sum[h] + (o->use_utility ? (double)ix->utility[key[h] - 1] : 0.0);
    }
    if (n < R) return -INFINITY;
    if (n > K) {
        select_top(fl, n, K);
        n = K;
    }
    /* Their exact recalls, a clause at a time over the docs in doc order. */
    sort_by_doc(fl, fl + n, n);
    for (size_t k = 0; k < n; k++) fl[k].v = 0.0;
    for (size_t i = m; i-- > 0;) {
        const clause *c = &cl[i];
        uint32_t p = 0;
        for (size_t k = 0; k < n; k++) {
            uint32_t d = fl[k].doc, q;
            float t = 0.0f;
            if (c->bits) {
                if (dense_find(c, d, &q)) t = c->pal ? c->pal[c->pq[q]] : c->tfn[q];
            } else {
                p = find_from(c, p, d);
                if (p == c->n) break;
                if (c->docs[p] == d) t = c->tfn[p];
            }
            if (t != 0.0f) fl[k].v += (double)(c->qw * t);
        }
    }
    for (size_t k = 0; k < n; k++) fl[k].v += o->use_utility ? (double)ix->utility[fl[k].doc] : 0.0;
    select_top(fl, n, R);
    double v = fl[0].v;
    for (size_t k = 1; k < R; k++)
        if (fl[k].v < v) v = fl[k].v;
    return v > 0.0 ? v - v * 0x1p-30 : -INFINITY;
}

/* Compiled for x86-64-v2 (hardware popcount for the dense probes) beside the baseline, the
 * better chosen at load time; the arithmetic is the same either way. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("arch=x86-64-v2", "default")))
#endif
static size_t
run_maxscore(ps_searcher_t *s, size_t m, const ps_search_opts *o, ps_search_stats *st)
{
    const ps_index_t *ix = s->ix;
    clause *cl = s->cl;
    double *bound = s->prefix, *acc = s->wacc;
    uint64_t *bits = s->wbits;
    struct wcand *cand = s->wcand;
    heapent *heap = s->heap;
    size_t nheap = 0, R = o->R;
    double theta = theta_floor(s, m, o);
    uint64_t visited = 0, scored = 0, candidates = 0, bounded = 0;
    uint64_t scanned = 0, probes = 0, probe_hits = 0;
    uint32_t windows = 0;

    window_totals(s, m);
    uint32_t first = END_DOC;
    for (size_t i = 0; i < m; i++) {
        clause *c = &cl[i];
        c->cur = c->docs[0];
        if (c->cur < first) first = c->cur;
    }
    for (uint32_t w0 = first & ~(WIN - 1); w0 < ix->ndocs; w0 += WIN) {
        uint32_t w1 = w0 + WIN;
        double u = o->use_utility ? (double)ix->utility[w0] : 0.0;
        if (s->wall[w0 >> PS_WIN_BITS] + u < theta) continue;

        /* The non-essential prefix for this window. */
        size_t ne = 0;
        bound[0] = 0.0;
        if (theta > -INFINITY) {
            while (ne < m) {
                double wb = window_bound(&cl[ne], w0, w1), b = bound[ne] + wb;
                if (!(b + u < theta)) break;
                /* A dense clause will be probed here: ask for its window's bitmap line and
                 * posting base now, so they arrive while the essential clauses are scored. */
                if (cl[ne].bits && wb > 0.0) {
                    __builtin_prefetch(cl[ne].bits + (w0 >> 6));
                    __builtin_prefetch(cl[ne].wbase + (w0 >> PS_WIN_BITS));
                }
                bound[++ne] = b;
            }
            if (ne == m) continue;
            /* Probe only the dense clauses: a sparser clause has a few postings in the window,
             * cheaper to add in order than to search for each candidate, and a clause moved to
             * the essential side also raises the bar for the candidates. */
            while (ne > 0 && !cl[ne - 1].bits) ne--;
        }

        /* Essential clauses, strongest first, into the accumulator. */
        int live = 0;
        uint64_t before = visited;
        windows++;
        for (size_t i = m; i-- > ne;) {
            if (cl[i].cur == END_DOC) continue;
            taat(s, &cl[i], w0, w1, &visited);
            live |= cl[i].cur != END_DOC;
        }
        scanned += visited - before;

        /* The touched docs that may still win, in doc order. The bounds are sums of floats (or
         * carry a slack far above rounding), so comparing rel with theta − u − bound decides
         * exactly as rel + bound + u < theta would. */
        uint32_t nc = 0;
        double need = theta - u - bound[ne];
        for (uint32_t wi = 0; wi < WIN / 64; wi++) {
            uint64_t word = bits[wi];
            bits[wi] = 0;
            while (word) {
                uint32_t j = wi * 64 + (uint32_t)__builtin_ctzll(word);
                word &= word - 1;
                double rel = acc[j];
                acc[j] = 0.0;
                if (rel < need) continue;
                cand[nc].doc = w0 + j;
                cand[nc].rel = rel;
                nc++;
            }
        }
        candidates += nc;
        if (ne > 0) bounded += nc;
        /* Complete them on the non-essential clauses, strongest first, a clause at a time (each
         * doc still adds its clauses in descending order), dropping those that cannot win. */
        for (size_t i = ne; i-- > 0 && nc > 0;) {
            clause *c = &cl[i];
            /* A clause with no posting in the window adds nothing: its bound is 0, so the
             * next clause's threshold is the same and dropping can wait for it. */
            if (bound[i + 1] == bound[i]) continue;
            double rest = theta - u - bound[i + 1];
            uint32_t kept = 0, hits = 0;
            if (c->bits) {
                for (uint32_t k = 0; k < nc; k++) {
                    double rel = cand[k].rel;
                    if (rel < rest) continue;
                    uint32_t doc = cand[k].doc;
                    uint32_t p;
                    if (dense_find(c, doc, &p)) {
                        rel += (double)(c->qw * (c->pal ? c->pal[c->pq[p]] : c->tfn[p]));
                        hits++;
                    }
                    visited++;
                    cand[kept].doc = doc;
                    cand[kept].rel = rel;
                    kept++;
                }
            } else if (!c->wq) {
                /* A short list: merge the candidates with its postings in the window, which
                 * window_bound just read (both in doc order). */
                uint32_t p = c->wfirst, end = c->wpos;
                for (uint32_t k = 0; k < nc; k++) {
                    double rel = cand[k].rel;
                    if (rel < rest) continue;
                    uint32_t doc = cand[k].doc;
                    while (p < end && c->docs[p] < doc) p++;
                    if (p < end && c->docs[p] == doc) {
                        rel += (double)(c->qw * c->tfn[p]);
                        hits++;
                    }
                    cand[kept].doc = doc;
                    cand[kept].rel = rel;
                    kept++;
                }
                visited += p - c->wfirst;
            } else {
                for (uint32_t k = 0; k < nc; k++) {
                    double rel = cand[k].rel;
                    if (rel < rest) continue;
                    uint32_t doc = cand[k].doc;
                    seek(c, doc, &visited);
                    if (c->cur == doc) {
                        rel += (double)(c->qw * c->tfn[c->pos]);
                        hits++;
                    }
                    cand[kept].doc = doc;
                    cand[kept].rel = rel;
                    kept++;
                }
            }
            probes += kept;
            probe_hits += hits;
            nc = kept;
        }
        for (uint32_t k = 0; k < nc; k++) {
            uint32_t doc = cand[k].doc;
            double rel = cand[k].rel;
            /* The doc's utility is at most u: most candidates fail without reading it. */
            if (!(rel > 0.0) || rel + u < theta) continue;
            double ud = o->use_utility ? (double)ix->utility[doc] : 0.0;
            if (rel + ud < theta) continue;
            scored++;
            heapent e = {rel + ud, rel, ix->ids[doc], doc};
            heap_push(heap, &nheap, R, &e);
            if (nheap == R && heap[0].recall > theta) theta = heap[0].recall;
        }
        /* Every essential clause is exhausted: later docs can only come from clauses that are
         * non-essential here, and they only become more so (theta rises, utility falls) —
         * unless a window bound rises again, so go on while any clause has postings left. */
        if (!live) {
            uint32_t next = END_DOC;
            for (size_t i = 0; i < m; i++) {
                clause *c = &cl[i];
                if (c->cur < w1) seek(c, w1, &visited);
                if (c->cur < next) next = c->cur;
            }
            if (next == END_DOC) break;
            w0 = (next & ~(WIN - 1)) - WIN;
        }
    }
    st->visited += visited;
    st->scored += scored;
    st->candidates += candidates;
    st->bounded += bounded;
    st->windows += windows;
    st->scanned += scanned;
    st->probes += probes;
    st->probe_hits += probe_hits;
    return nheap;
}

/**************************************************************************
 * Exhaustive term-at-a-time scoring (verification path)
 */

static int run_exhaustive(ps_searcher_t *s, size_t m, const ps_search_opts *o, ps_search_stats *st,
                          size_t *nout, ps_err *err)
{
    const ps_index_t *ix = s->ix;
    size_t nheap = 0, ntouched = 0;
    /* Each on its own: after a failed query one of them may exist already. */
    if (!s->acc) s->acc = ps_calloc(ix->ndocs ? ix->ndocs : 1, sizeof *s->acc);
    if (!s->seen) s->seen = ps_calloc(ix->ndocs ? ix->ndocs : 1, 1);
    if (!s->acc || !s->seen) return ps_err_set(err, PS_ENOMEM, "out of memory (exhaustive)");
    uint64_t total = 0;
    for (size_t i = 0; i < m; i++) total += s->cl[i].n;
    if (grow((void **)&s->touched, &s->ntouched_cap, total ? total : 1, sizeof *s->touched))
        return ps_err_set(err, PS_ENOMEM, "out of memory (exhaustive)");
    for (size_t i = m; i-- > 0;) {
        const clause *c = &s->cl[i];
        for (uint32_t p = 0; p < c->n; p++) {
            uint32_t d = c->docs[p];
            if (!s->seen[d]) {
                s->seen[d] = 1;
                s->touched[ntouched++] = d;
            }
            s->acc[d] += (double)(c->qw * c->tfn[p]);
        }
    }
    for (size_t t = 0; t < ntouched; t++) {
        uint32_t d = s->touched[t];
        double rel = s->acc[d];
        double u = o->use_utility ? (double)ix->utility[d] : 0.0;
        s->acc[d] = 0.0;
        s->seen[d] = 0;
        if (!(rel > 0.0)) continue;
        heapent e = {rel + u, rel, ix->ids[d], d};
        heap_push(s->heap, &nheap, o->R, &e);
    }
    st->visited += total;
    st->scored += ntouched;
    *nout = nheap;
    return 0;
}

/**************************************************************************
 * Entry points
 */

/* Step 2 on the tokens in s->tok: the top R by recall into hits, recall order. */
static int recall(ps_searcher_t *s, const ps_search_opts *o, ps_hit *hits, size_t *nhits,
                  ps_search_stats *st, ps_err *err)
{
    size_t m = 0, n = 0;
    int rc, cache = o->rcache && !o->exhaustive;
    if (cache && ps_rcache_get(o->rcache, o->rcache_version, &s->tok, o, hits, nhits)) {
        st->nterms = (uint32_t)s->tok.n;
        return 0;
    }
    if ((rc = setup(s, o, &m, st, err))) return rc;
    if (o->exhaustive) {
        if ((rc = run_exhaustive(s, m, o, st, &n, err))) return rc;
    } else {
        n = run_maxscore(s, m, o, st);
    }
    for (size_t i = 0; i < n; i++) {
        const heapent *e = &s->heap[i];
        ps_hit *h = &hits[i];
        h->id = e->id;
        h->doc = e->doc;
        h->centroid = -1;
        h->relevance = e->relevance;
        h->recall = e->recall;
        h->utility = o->use_utility ? (double)s->ix->utility[e->doc] : 0.0;
        h->preference = 1.0;
        h->score = e->recall;
    }
    qsort(hits, n, sizeof *hits, ps_hit_cmp_recall);
    *nhits = n;
    if (cache) ps_rcache_put(o->rcache, o->rcache_version, &s->tok, o, hits, n);
    return 0;
}

/* Analyze q into s->tok (distinct tokens). */
static int analyze(ps_searcher_t *s, const char *q, size_t qlen, ps_err *err)
{
    int rc = ps_analyze(s->an, q, qlen, "query", &s->tok, err);
    if (rc) return rc;
    ps_tokens_distinct(&s->tok);
    return check_tokens(&s->tok, err);
}

/* Copy tokens into s->tok, dropping repeats. */
static int take_tokens(ps_searcher_t *s, const ps_tokens *tok, ps_err *err)
{
    ps_tokens_reset(&s->tok);
    for (size_t i = 0; i < tok->n; i++)
        if (ps_tokens_push(&s->tok, tok->text + tok->off[i], tok->len[i]))
            return ps_err_set(err, PS_ENOMEM, "out of memory copying query tokens");
    ps_tokens_distinct(&s->tok);
    return check_tokens(&s->tok, err);
}

static void clear_stats(ps_search_stats *st)
{
    memset(st, 0, sizeof *st);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int ps_search_recall(ps_searcher_t *s, const char *q, size_t qlen, const ps_search_opts *o,
                     ps_hit *hits, size_t *nhits, ps_search_stats *stats, ps_err *err)
{
    ps_search_stats local;
    ps_search_stats *st = stats ? stats : &local;
    int rc;
    clear_stats(st);
    *nhits = 0;
    uint64_t t0 = now_ns();
    if ((rc = check_opts(o, err)) || (rc = analyze(s, q, qlen, err))) return rc;
    uint64_t t1 = now_ns();
    rc = recall(s, o, hits, nhits, st, err);
    st->analyze_ns = t1 - t0;
    st->recall_ns = now_ns() - t1;
    return rc;
}

static void prefer_rows(ps_hit *hits, size_t n, const float *emb, const uint32_t *rows,
                        uint32_t dim, const ps_profile *p, float alpha);

/* Set preference and score of hits[0..n) for o->profile, fetching their embeddings. */
static int prefer(ps_searcher_t *s, const ps_search_opts *o, ps_hit *hits, size_t n, ps_err *err)
{
    const ps_index_t *ix = s->ix;
    const ps_profile *p = o->profile;
    int rc;
    if (!p || p->k == 0 || n == 0) return 0;
    if (p->dim != ix->dim)
        return ps_err_set(err, PS_EINVAL, "profile dimension %u differs from the index's %u",
                          p->dim, ix->dim);
    if (grow((void **)&s->docs, &s->docs_cap, n, sizeof *s->docs))
        return ps_err_set(err, PS_ENOMEM, "out of memory fetching embeddings");
    for (size_t i = 0; i < n; i++) s->docs[i] = hits[i].doc;
    const float *rows = ix->emb ? ix->emb : ix->emb_rows;
    if (rows) { /* resident or mapped: read the rows where they are */
        prefer_rows(hits, n, rows, s->docs, ix->dim, p, o->alpha);
        return 0;
    }
    if (grow((void **)&s->emb, &s->emb_cap, n * ix->dim, sizeof *s->emb))
        return ps_err_set(err, PS_ENOMEM, "out of memory fetching embeddings");
    if ((rc = ps_index_embeddings(ix, s->docs, n, s->emb, err))) return rc;
    prefer_rows(hits, n, s->emb, NULL, ix->dim, p, o->alpha);
    return 0;
}

int ps_search_shard(ps_searcher_t *s, const ps_tokens *tok, const ps_search_opts *o, ps_hit *hits,
                    size_t *nhits, ps_search_stats *stats, ps_err *err)
{
    ps_search_stats local;
    ps_search_stats *st = stats ? stats : &local;
    int rc;
    clear_stats(st);
    *nhits = 0;
    uint64_t t0 = now_ns(), t1, t2;
    if ((rc = check_opts(o, err)) || (rc = take_tokens(s, tok, err))) return rc;
    t1 = now_ns();
    if ((rc = recall(s, o, hits, nhits, st, err))) return rc;
    t2 = now_ns();
    rc = prefer(s, o, hits, *nhits, err);
    st->analyze_ns = t1 - t0;
    st->recall_ns = t2 - t1;
    st->prefer_ns = now_ns() - t2;
    return rc;
}

uint32_t ps_shard_depth(uint32_t R, uint32_t nshards)
{
    if (nshards <= 1 || R <= 1) return R;
    /* P(X >= d) summed from d = R down until it passes the budget: then d + 1 is the depth.
     * The pmf in logs (no underflow at any R), each term from the one above it:
     * pmf(d) = pmf(d + 1) · (d + 1) / (R − d) · (1 − p) / p. (Not lgamma: it writes the
     * global signgam, and every broker lane calls this.) */
    double p = 1.0 / nshards, budget = PS_SHARD_SECOND_ROUNDS / nshards, tail = 0.0;
    double lratio = log1p(-p) - log(p), lpmf = (double)R * log(p); /* log pmf(R) */
    for (uint32_t d = R; d >= 1; d--) {
        if (d < R) lpmf += log((double)(d + 1) / (double)(R - d)) + lratio;
        tail += exp(lpmf);
        if (tail > budget) return d < R ? d + 1 : R;
    }
    return R;
}

size_t ps_merge_hits(ps_hit *hits, size_t n, uint32_t R, uint32_t k)
{
    return ps_rank_hits(hits, n, R, NULL, 0, 0, k);
}

size_t ps_rank_hits(ps_hit *hits, size_t n, uint32_t R, const uint64_t *exclude, size_t nexclude,
                    uint32_t offset, uint32_t k)
{
    if (nexclude) { /* at most a hundred ids: a scan per hit costs less than a set */
        size_t m = 0;
        for (size_t i = 0; i < n; i++) {
            size_t e = 0;
            while (e < nexclude && exclude[e] != hits[i].id) e++;
            if (e == nexclude) hits[m++] = hits[i];
        }
        n = m;
    }
    qsort(hits, n, sizeof *hits, ps_hit_cmp_recall);
    if (n > R) n = R;
    qsort(hits, n, sizeof *hits, cmp_hit_score);
    if (offset >= n) return 0;
    n -= offset;
    if (offset) memmove(hits, hits + offset, n * sizeof *hits);
    return n < k ? n : k;
}

/* Step 3 on hits[0..n) whose embedding i is row rows[i] of emb (row i when rows is NULL). */
static void prefer_rows(ps_hit *hits, size_t n, const float *emb, const uint32_t *rows,
                        uint32_t dim, const ps_profile *p, float alpha)
{
    /* Dot products come from ps_dot (or ps_dot_many, the same bits), not BLAS: a BLAS
     * kernel's summation order depends on the batch and on alignment, and a shard scoring 25
     * candidates must get the same bits as a single node scoring 100. */
    if (!p || p->k == 0 || p->dim != dim) return;
    double cn2[PS_PROFILE_KMAX];
    for (uint32_t c = 0; c < p->k; c++)
        cn2[c] = ps_dot(p->centroids + (size_t)c * dim, p->centroids + (size_t)c * dim, dim);
    /* The centroids widened once for all the rows; without the memory, one ps_dot a pair. */
    double *cd = ps_malloc((size_t)p->k * dim * sizeof *cd);
    if (cd)
        for (size_t i = 0; i < (size_t)p->k * dim; i++) cd[i] = (double)p->centroids[i];
    for (size_t i = 0; i < n; i++) {
        const float *e = emb + (size_t)(rows ? rows[i] : i) * dim;
        /* The rows are scattered over the whole matrix: ask for the next one while this one
         * is scored, so its cache misses overlap the arithmetic. */
        if (i + 1 < n) {
            const char *next = (const char *)(emb + (size_t)(rows ? rows[i + 1] : i + 1) * dim);
            for (size_t b = 0; b < dim * sizeof *emb; b += 64) __builtin_prefetch(next + b);
        }
        double en2, dots[PS_PROFILE_KMAX];
        if (cd) {
            ps_dot_many(e, cd, p->k, dim, &en2, dots);
        } else {
            en2 = ps_dot(e, e, dim);
            for (uint32_t c = 0; c < p->k; c++)
                dots[c] = ps_dot(p->centroids + (size_t)c * dim, e, dim);
        }
        ps_hit *h = &hits[i];
        for (uint32_t c = 0; c < p->k; c++) {
            const float *cv = p->centroids + (size_t)c * dim;
            /* ‖c − e‖² from the dot product decides all but borderline pairs; those are
             * settled with ps_l2dist, the function that defined the radius. */
            double dot = dots[c];
            double r = p->radius[c], d2 = en2 + cn2[c] - 2.0 * dot;
            double slack = 1e-9 * (en2 + cn2[c] + 1.0);
            int near;
            if (d2 + slack < r * r)
                near = 1;
            else if (d2 - slack > r * r)
                near = 0;
            else
                near = ps_l2dist(cv, e, dim) <= r;
            if (!near) continue;
            double cosv = en2 > 0 && cn2[c] > 0 ? dot / sqrt(en2 * cn2[c]) : 0.0;
            double pref = 1.0 + (double)alpha * cosv;
            double score = h->recall * pref;
            if (h->centroid < 0 || score > h->score) {
                h->score = score;
                h->preference = pref;
                h->centroid = (int32_t)c;
            }
        }
    }
    ps_free(cd);
}

void ps_prefer(ps_hit *hits, size_t n, const float *emb, uint32_t dim, const ps_profile *p,
               float alpha)
{
    prefer_rows(hits, n, emb, NULL, dim, p, alpha);
}

int ps_search(ps_searcher_t *s, const char *q, size_t qlen, const ps_search_opts *o, ps_hit *hits,
              size_t *nhits, ps_search_stats *stats, ps_err *err)
{
    ps_search_stats local;
    ps_search_stats *st = stats ? stats : &local;
    int rc;
    clear_stats(st);
    *nhits = 0;
    uint64_t t0 = now_ns(), t1, t2;
    if ((rc = check_opts(o, err)) || (rc = analyze(s, q, qlen, err))) return rc;
    t1 = now_ns();
    if ((rc = recall(s, o, hits, nhits, st, err))) return rc;
    t2 = now_ns();
    if ((rc = prefer(s, o, hits, *nhits, err))) return rc;
    *nhits = ps_merge_hits(hits, *nhits, o->R, o->k);
    st->analyze_ns = t1 - t0;
    st->recall_ns = t2 - t1;
    st->prefer_ns = now_ns() - t2;
    return 0;
}
