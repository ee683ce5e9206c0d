/*
 * index.c — building the in-memory inverted index (ps_ixbuild_*) and reading it (ps_index_*).
 *
 * Build: stickers arrive in doc order, utility non-increasing (search.c bounds a window's
 * utility by its first doc's; stickers of equal utility come in any order, and the builder
 * numbers them so that those sharing terms are neighbours). Each field's tokens are mapped
 * to term numbers, sorted, and run-length counted into (doc, tf) appended to the (field, term)
 * list, so every list is born sorted by doc. ps_ixbuild_finish computes the field statistics,
 * then packs all lists into the flat pdocs/ptfn arrays described in ps_int.h.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ps_int.h"
#include "ps/alloc.h"

/**************************************************************************
 * The term dictionary
 */

int ps__dict_init(ps__dict *d, uint32_t cap)
{
    memset(d, 0, sizeof *d);
    ps_map_init(&d->map, PS_MAP_BYTES);
    return ps_map_reserve(&d->map, cap < 512 ? 512 : cap) ? PS_ENOMEM : 0;
}

void ps__dict_free(ps__dict *d)
{
    ps_map_free(&d->map);
    ps_free(d->terms);
    memset(d, 0, sizeof *d);
}

int64_t ps__dict_intern(ps__dict *d, const char *s, size_t len)
{
    uint64_t *v;
    if (d->nterms == d->terms_cap) { /* first, so a failure leaves the map as it was */
        uint32_t cap = d->terms_cap ? d->terms_cap * 2 : 1024;
        ps__term *terms = ps_realloc(d->terms, cap * sizeof *terms);
        if (!terms) return -1;
        d->terms = terms;
        d->terms_cap = cap;
    }
    int rc = ps_map_bytes_add(&d->map, s, len, &v);
    if (rc < 0) return -1;
    if (rc == 0) return (int64_t)*v;
    ps__term *term = &d->terms[d->nterms];
    ps_map_bytes_key(&d->map, v, NULL, &term->str);
    term->len = (uint32_t)len;
    for (int f = 0; f < PS_NFIELDS; f++) term->list[f] = PS_NOLIST;
    *v = d->nterms;
    return d->nterms++;
}

/**************************************************************************
 * Building
 */

/* A list while it grows: (doc, tf) pairs in doc order. */
typedef struct blist {
    uint32_t *docs;
    uint16_t *tf;
    uint32_t n, cap;
} blist;

struct ps_ixbuild {
    ps_index_t *ix; /* ids/utility/dl filled as docs arrive; dict grows */
    size_t cap;     /* most docs accepted */
    blist *bl;      /* one per list number */
    uint32_t nbl, bl_cap;
    uint32_t *tids; /* scratch: term numbers of one field */
    size_t tids_cap;
};

float ps__tfn(uint32_t tf, uint32_t dl, double avgdl)
{
    double norm = PS_BM25_K1 * (1.0 - PS_BM25_B + PS_BM25_B * (double)dl / avgdl);
    return (float)((double)tf * (PS_BM25_K1 + 1.0) / ((double)tf + norm));
}

ps_index_t *ps__index_alloc(uint32_t ndocs, uint32_t dim)
{
    ps_index_t *ix = ps_calloc(1, sizeof *ix);
    if (!ix) return NULL;
    ix->ndocs = ndocs;
    ix->dim = dim;
    ix->ids = ps_malloc((ndocs ? ndocs : 1) * sizeof *ix->ids);
    ix->utility = ps_malloc((ndocs ? ndocs : 1) * sizeof *ix->utility);
    ix->dl = ps_calloc((size_t)(ndocs ? ndocs : 1) * PS_NFIELDS, sizeof *ix->dl);
    if (!ix->ids || !ix->utility || !ix->dl || ps__dict_init(&ix->dict, 4096)) {
        ps_index_free(ix);
        return NULL;
    }
    return ix;
}

ps_ixbuild_t *ps_ixbuild_new(size_t ndocs, uint32_t dim, ps_err *err)
{
    if (ndocs >= UINT32_MAX) {
        ps_err_set(err, PS_EINVAL, "ndocs %zu exceeds the 32-bit doc space", ndocs);
        return NULL;
    }
    ps_ixbuild_t *b = ps_calloc(1, sizeof *b);
    if (!b || !(b->ix = ps__index_alloc((uint32_t)ndocs, dim))) {
        ps_free(b);
        ps_err_set(err, PS_ENOMEM, "out of memory allocating an index of %zu docs", ndocs);
        return NULL;
    }
    b->ix->ndocs = 0; /* counts docs added */
    b->cap = ndocs;
    return b;
}

void ps_ixbuild_free(ps_ixbuild_t *b)
{
    if (!b) return;
    for (uint32_t i = 0; i < b->nbl; i++) {
        ps_free(b->bl[i].docs);
        ps_free(b->bl[i].tf);
    }
    ps_free(b->bl);
    ps_free(b->tids);
    ps_index_free(b->ix);
    ps_free(b);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static int blist_push(blist *l, uint32_t doc, uint32_t tf)
{
    if (l->n == l->cap) {
        uint32_t cap = l->cap ? l->cap * 2 : 4;
        uint32_t *docs = ps_realloc(l->docs, cap * sizeof *docs);
        if (!docs) return PS_ENOMEM;
        l->docs = docs;
        uint16_t *tfs = ps_realloc(l->tf, cap * sizeof *tfs);
        if (!tfs) return PS_ENOMEM;
        l->tf = tfs;
        l->cap = cap;
    }
    l->docs[l->n] = doc;
    l->tf[l->n] = (uint16_t)(tf > UINT16_MAX ? UINT16_MAX : tf);
    l->n++;
    return 0;
}

/* Index one field of doc `doc`. */
static int add_field(ps_ixbuild_t *b, uint32_t doc, int f, const ps_tokens *tk, ps_err *err)
{
    ps_index_t *ix = b->ix;
    if (tk->n > b->tids_cap) {
        size_t cap = tk->n * 2;
        uint32_t *t = ps_realloc(b->tids, cap * sizeof *t);
        if (!t) return ps_err_set(err, PS_ENOMEM, "out of memory indexing doc %u", doc);
        b->tids = t;
        b->tids_cap = cap;
    }
    for (size_t i = 0; i < tk->n; i++) {
        int64_t t = ps__dict_intern(&ix->dict, tk->text + tk->off[i], tk->len[i]);
        if (t < 0) return ps_err_set(err, PS_ENOMEM, "out of memory growing the dictionary");
        b->tids[i] = (uint32_t)t;
    }
    qsort(b->tids, tk->n, sizeof *b->tids, cmp_u32);
    for (size_t i = 0; i < tk->n;) {
        size_t j = i + 1;
        while (j < tk->n && b->tids[j] == b->tids[i]) j++;
        ps__term *term = &ix->dict.terms[b->tids[i]];
        if (term->list[f] == PS_NOLIST) {
            if (b->nbl == b->bl_cap) {
                uint32_t cap = b->bl_cap ? b->bl_cap * 2 : 4096;
                blist *bl = ps_realloc(b->bl, cap * sizeof *bl);
                if (!bl) return ps_err_set(err, PS_ENOMEM, "out of memory adding a list");
                b->bl = bl;
                b->bl_cap = cap;
            }
            memset(&b->bl[b->nbl], 0, sizeof b->bl[b->nbl]);
            term->list[f] = b->nbl++;
        }
        if (blist_push(&b->bl[term->list[f]], doc, (uint32_t)(j - i)))
            return ps_err_set(err, PS_ENOMEM, "out of memory growing a posting list");
        i = j;
    }
    ix->dl[(size_t)doc * PS_NFIELDS + f] = (uint32_t)tk->n;
    return 0;
}

int ps_ixbuild_add(ps_ixbuild_t *b, uint64_t id, float utility,
                   const ps_tokens *const fields[PS_NFIELDS], ps_err *err)
{
    ps_index_t *ix = b->ix;
    uint32_t doc = ix->ndocs;
    if (doc >= b->cap)
        return ps_err_set(err, PS_EINVAL, "more stickers than the %zu announced", b->cap);
    if (!(utility >= 0.0f) || isinf(utility))
        return ps_err_set(err, PS_EINVAL, "sticker %llu: utility %g is not a finite number >= 0",
                          (unsigned long long)id, (double)utility);
    if (doc > 0 && utility > ix->utility[doc - 1])
        return ps_err_set(err, PS_EINVAL, "sticker %llu arrives out of order: utility %g after %g",
                          (unsigned long long)id, (double)utility, (double)ix->utility[doc - 1]);
    for (int f = 0; f < PS_NFIELDS; f++) {
        if (!fields[f] || fields[f]->n == 0) continue;
        int rc = add_field(b, doc, f, fields[f], err);
        if (rc) return rc;
    }
    ix->ids[doc] = id;
    ix->utility[doc] = utility;
    ix->ndocs = doc + 1;
    return 0;
}

/* The palette of a dense list: its distinct ptfn values, at most 256, into pal in the order
 * met, and each posting's index in it into pq; 0 when there are more, or a value that is not
 * a positive number (a damaged index: its postings are then read as they are). One pass, the
 * values found through a small hash table on their bits. */
static int build_palette(const float *tfn, uint32_t n, float *pal, uint8_t *pq)
{
    uint16_t slot[1024] = {0}; /* palette index + 1, 0 = free; at most a quarter full */
    uint32_t np = 0;
    for (uint32_t i = 0; i < n; i++) {
        float v = tfn[i];
        if (!(v > 0.0f)) return 0;
        uint32_t bits;
        memcpy(&bits, &v, sizeof bits);
        uint32_t h = (bits * 0x9E3779B1u) >> 22;
        while (slot[h] && pal[slot[h] - 1] != v) h = (h + 1) & 1023;
        if (!slot[h]) {
            if (np == 256) return 0;
            pal[np++] = v;
            slot[h] = (uint16_t)np;
        }
        pq[i] = (uint8_t)(slot[h] - 1);
    }
    return 1;
}

int ps__index_build_blocks(ps_index_t *ix, ps_err *err)
{
    uint32_t nblocks = 0, nwin = (ix->ndocs + PS_WIN - 1) >> PS_WIN_BITS;
    uint64_t nwin_q = 0;
    uint32_t ndense = 0, nwords = nwin * (PS_WIN / 64);
    for (uint32_t l = 0; l < ix->nlists; l++) {
        ps__plist *pl = &ix->lists[l];
        pl->dense = PS_NOLIST;
        if (nwin > 0 && (uint64_t)pl->n * PS_DENSE_DIV >= ix->ndocs) pl->dense = ndense++;
        pl->blk = nblocks;
        nblocks += (pl->n + PS_BLOCK - 1) / PS_BLOCK;
        pl->win = PS_NOLIST;
        if (nwin > 0 && pl->n >= nwin && nwin_q + nwin < PS_NOLIST) {
            pl->win = (uint32_t)nwin_q;
            nwin_q += nwin;
        }
    }
    ps_free(ix->blk_last);
    ps_free(ix->win_q);
    ps_free(ix->dense_bits_mem);
    ps_free(ix->dense_base);
    ps_free(ix->pq);
    ps_free(ix->palette);
    ix->pq = ps_malloc((ix->npostings ? ix->npostings : 1) * sizeof *ix->pq);
    ix->palette = ps_malloc(((size_t)ndense * 256 + 1) * sizeof *ix->palette);
    ix->npal = 0;
    if (!ix->pq || !ix->palette)
        return ps_err_set(err, PS_ENOMEM, "out of memory allocating the dense lists' palettes");
    ix->blk_last = ps_malloc((nblocks ? nblocks : 1) * sizeof *ix->blk_last);
    ix->win_q = ps_calloc(nwin_q ? nwin_q : 1, 1);
    /* A window's words are one cache line: a probe's bit test and popcount, and the line
     * search.c prefetches for them, never straddle two. */
    ix->dense_bits_mem = ps_calloc((size_t)ndense * nwords + PS_WIN / 64 + 1, sizeof(uint64_t));
    ix->dense_bits = ix->dense_bits_mem
                         ? (uint64_t *)(((uintptr_t)ix->dense_bits_mem + 63) & ~(uintptr_t)63)
                         : NULL;
    ix->dense_base = ps_malloc(((size_t)ndense * nwin + 1) * sizeof *ix->dense_base);
    if (!ix->blk_last || !ix->win_q || !ix->dense_bits || !ix->dense_base)
        return ps_err_set(err, PS_ENOMEM, "out of memory allocating %u blocks", nblocks);
    ix->nblocks = nblocks;
    ix->nwin_q = nwin_q;
    ix->ndense = ndense;
    ix->nwords = nwords;
    ix->nwin = nwin;
    for (uint32_t l = 0; l < ix->nlists; l++) {
        ps__plist *pl = &ix->lists[l];
        const uint32_t *docs = ix->pdocs + pl->off;
        const float *tfn = ix->ptfn + pl->off;
        float lmax = 0.0f;
        for (uint32_t i = 0; i < pl->n; i++)
            if (tfn[i] > lmax) lmax = tfn[i];
        for (uint32_t i = 0; i < pl->n; i += PS_BLOCK) {
            uint32_t end = i + PS_BLOCK < pl->n ? i + PS_BLOCK : pl->n;
            ix->blk_last[pl->blk + i / PS_BLOCK] = docs[end - 1];
        }
        pl->max_tfn = lmax;
        pl->pal = PS_NOLIST;
        if (pl->dense != PS_NOLIST &&
            build_palette(tfn, pl->n, ix->palette + (size_t)ix->npal * 256, ix->pq + pl->off))
            pl->pal = ix->npal++ * 256;
        if (pl->dense != PS_NOLIST) {
            uint64_t *bits = ix->dense_bits + (size_t)pl->dense * nwords;
            uint32_t *base = ix->dense_base + (size_t)pl->dense * nwin, w = 0;
            for (uint32_t i = 0; i < pl->n; i++) {
                uint32_t d = docs[i];
                for (; w <= d >> PS_WIN_BITS; w++) base[w] = i;
                bits[d >> 6] |= 1ull << (d & 63);
            }
            for (; w < nwin; w++) base[w] = pl->n;
        }
        if (pl->win == PS_NOLIST || !(lmax > 0.0f)) continue;
        uint8_t *q = ix->win_q + pl->win;
        for (uint32_t i = 0; i < pl->n; i++) {
            double r = ceil(255.0 * (double)tfn[i] / (double)lmax);
            uint8_t v = r >= 255.0 ? 255 : (uint8_t)r;
            uint32_t w = docs[i] >> PS_WIN_BITS;
            if (v > q[w]) q[w] = v;
        }
    }
    return 0;
}

int ps__index_build_idmap(ps_index_t *ix, ps_err *err)
{
    uint32_t nslots = 16;
    while (nslots < (uint64_t)ix->ndocs * 2) nslots <<= 1;
    ps_free(ix->idmap);
    ix->idmap = ps_calloc(nslots, sizeof *ix->idmap);
    if (!ix->idmap) return ps_err_set(err, PS_ENOMEM, "out of memory building the id map");
    ix->idmask = nslots - 1;
    for (uint32_t d = 0; d < ix->ndocs; d++) {
        uint32_t i = (uint32_t)ps_hash_u64(ix->ids[d]) & ix->idmask;
        for (; ix->idmap[i]; i = (i + 1) & ix->idmask)
            if (ix->ids[ix->idmap[i] - 1] == ix->ids[d])
                return ps_err_set(err, PS_EINVAL, "sticker id %llu appears twice",
                                  (unsigned long long)ix->ids[d]);
        ix->idmap[i] = d + 1;
    }
    return 0;
}

ps_index_t *ps_ixbuild_finish(ps_ixbuild_t **bp, ps_err *err)
{
    ps_ixbuild_t *b = *bp;
    ps_index_t *ix = b->ix;
    *bp = NULL;

    for (int f = 0; f < PS_NFIELDS; f++) {
        ps_field_stats *fs = &ix->fs[f];
        memset(fs, 0, sizeof *fs);
        for (uint32_t d = 0; d < ix->ndocs; d++) {
            uint32_t dl = ix->dl[(size_t)d * PS_NFIELDS + f];
            fs->ndocs += dl > 0;
            fs->ntokens += dl;
        }
        fs->avgdl = fs->ndocs ? (double)fs->ntokens / fs->ndocs : 0.0;
    }

    uint64_t total = 0;
    for (uint32_t l = 0; l < b->nbl; l++) total += b->bl[l].n;
    if (total >= UINT32_MAX) {
        ps_err_set(err, PS_EINVAL, "%llu postings exceed the 32-bit posting space",
                   (unsigned long long)total);
        goto err;
    }
    ix->nlists = b->nbl;
    ix->npostings = total;
    ix->lists = ps_calloc(b->nbl ? b->nbl : 1, sizeof *ix->lists);
    ix->pdocs = ps_malloc((total ? total : 1) * sizeof *ix->pdocs);
    ix->ptfn = ps_malloc((total ? total : 1) * sizeof *ix->ptfn);
    if (!ix->lists || !ix->pdocs || !ix->ptfn) {
        ps_err_set(err, PS_ENOMEM, "out of memory packing %llu postings",
                   (unsigned long long)total);
        goto err;
    }
    /* List numbers are per (term, field); find each list's field to pick its avgdl. */
    uint8_t *lfield = ps_malloc(b->nbl ? b->nbl : 1);
    if (!lfield) {
        ps_err_set(err, PS_ENOMEM, "out of memory packing lists");
        goto err;
    }
    for (uint32_t t = 0; t < ix->dict.nterms; t++)
        for (int f = 0; f < PS_NFIELDS; f++)
            if (ix->dict.terms[t].list[f] != PS_NOLIST)
                lfield[ix->dict.terms[t].list[f]] = (uint8_t)f;
    uint32_t off = 0;
    for (uint32_t l = 0; l < b->nbl; l++) {
        blist *bl = &b->bl[l];
        int f = lfield[l];
        ps__plist *pl = &ix->lists[l];
        pl->off = off;
        pl->n = pl->df = bl->n;
        for (uint32_t i = 0; i < bl->n; i++) {
            uint32_t doc = bl->docs[i];
            ix->pdocs[off + i] = doc;
            ix->ptfn[off + i] =
                ps__tfn(bl->tf[i], ix->dl[(size_t)doc * PS_NFIELDS + f], ix->fs[f].avgdl);
        }
        off += bl->n;
        ps_free(bl->docs);
        ps_free(bl->tf);
        bl->docs = NULL;
        bl->tf = NULL;
    }
    ps_free(lfield);
    if (ps__index_build_blocks(ix, err) || ps__index_build_idmap(ix, err)) goto err;
    b->ix = NULL;
    ps_ixbuild_free(b);
    return ix;
err:
    ps_ixbuild_free(b);
    return NULL;
}

/**************************************************************************
 * Partitioning
 */

uint32_t ps_jump_hash(uint64_t key, uint32_t nbuckets)
{
    int64_t b = -1, j = 0;
    while (j < (int64_t)nbuckets) {
        b = j;
        key = key * 2862933555777941757ULL + 1;
        j = (int64_t)((double)(b + 1) * ((double)(1LL << 31) / (double)((key >> 33) + 1)));
    }
    return (uint32_t)b;
}

ps_index_t *ps_index_partition(const ps_index_t *ix, uint32_t nshards, uint32_t shard,
                               uint32_t **global_doc, ps_err *err)
{
    ps_index_t *sub = NULL;
    uint32_t *gdoc = NULL, *local = NULL, *cnt = NULL, n = 0;
    if (global_doc) *global_doc = NULL;
    if (nshards == 0 || shard >= nshards) {
        ps_err_set(err, PS_EINVAL, "shard %u of %u does not exist", shard, nshards);
        return NULL;
    }
    gdoc = ps_malloc((ix->ndocs ? ix->ndocs : 1) * sizeof *gdoc);
    local = ps_malloc((ix->ndocs ? ix->ndocs : 1) * sizeof *local);
    cnt = ps_calloc(ix->nlists ? ix->nlists : 1, sizeof *cnt);
    if (!gdoc || !local || !cnt) goto oom;
    for (uint32_t d = 0; d < ix->ndocs; d++) {
        local[d] = UINT32_MAX;
        if (ps_jump_hash(ix->ids[d], nshards) == shard) {
            local[d] = n;
            gdoc[n++] = d;
        }
    }
    if (!(sub = ps__index_alloc(n, ix->dim))) goto oom;
    memcpy(sub->fs, ix->fs, sizeof sub->fs);
    for (uint32_t i = 0; i < n; i++) {
        sub->ids[i] = ix->ids[gdoc[i]];
        sub->utility[i] = ix->utility[gdoc[i]];
        memcpy(sub->dl + (size_t)i * PS_NFIELDS, ix->dl + (size_t)gdoc[i] * PS_NFIELDS,
               PS_NFIELDS * sizeof *sub->dl);
    }

    uint64_t total = 0;
    uint32_t nlists = 0;
    for (uint32_t l = 0; l < ix->nlists; l++) {
        const ps__plist *pl = &ix->lists[l];
        for (uint32_t i = 0; i < pl->n; i++) cnt[l] += local[ix->pdocs[pl->off + i]] != UINT32_MAX;
        total += cnt[l];
        nlists += cnt[l] > 0;
    }
    sub->lists = ps_calloc(nlists ? nlists : 1, sizeof *sub->lists);
    sub->pdocs = ps_malloc((total ? total : 1) * sizeof *sub->pdocs);
    sub->ptfn = ps_malloc((total ? total : 1) * sizeof *sub->ptfn);
    if (!sub->lists || !sub->pdocs || !sub->ptfn) goto oom;
    uint32_t off = 0, nl = 0;
    for (uint32_t t = 0; t < ix->dict.nterms; t++) {
        const ps__term *term = &ix->dict.terms[t];
        int64_t st = -1;
        for (int f = 0; f < PS_NFIELDS; f++) {
            uint32_t l = term->list[f];
            if (l == PS_NOLIST || cnt[l] == 0) continue;
            if (st < 0 &&
                (st = ps__dict_intern(&sub->dict, ps__dict_str(&ix->dict, t), term->len)) < 0)
                goto oom;
            const ps__plist *pl = &ix->lists[l];
            ps__plist *sl = &sub->lists[nl];
            sl->off = off;
            sl->n = cnt[l];
            sl->df = pl->df; /* corpus-wide, not the slice's */
            for (uint32_t i = 0; i < pl->n; i++) {
                uint32_t d = local[ix->pdocs[pl->off + i]];
                if (d == UINT32_MAX) continue;
                sub->pdocs[off] = d;
                sub->ptfn[off++] = ix->ptfn[pl->off + i];
            }
            sub->dict.terms[st].list[f] = nl++;
        }
    }
    sub->nlists = nl;
    sub->npostings = total;
    if (ps__index_build_blocks(sub, err) || ps__index_build_idmap(sub, err)) goto fail;
    if (ix->emb) {
        if (!(sub->emb = ps_malloc(((size_t)n ? n : 1) * ix->dim * sizeof *sub->emb))) goto oom;
        for (uint32_t i = 0; i < n; i++)
            memcpy(sub->emb + (size_t)i * ix->dim, ix->emb + (size_t)gdoc[i] * ix->dim,
                   ix->dim * sizeof *sub->emb);
    }
    ps_free(local);
    ps_free(cnt);
    if (global_doc)
        *global_doc = gdoc;
    else
        ps_free(gdoc);
    return sub;
oom:
    ps_err_set(err, PS_ENOMEM, "out of memory partitioning shard %u of %u", shard, nshards);
fail:
    ps_index_free(sub);
    ps_free(gdoc);
    ps_free(local);
    ps_free(cnt);
    return NULL;
}

/**************************************************************************
 * Reading
 */

void ps_index_free(ps_index_t *ix)
{
    if (!ix) return;
    ps_free(ix->ids);
    ps_free(ix->utility);
    ps_free(ix->dl);
    ps__dict_free(&ix->dict);
    ps_free(ix->lists);
    ps_free(ix->pdocs);
    ps_free(ix->ptfn);
    ps_free(ix->blk_last);
    ps_free(ix->win_q);
    ps_free(ix->dense_bits_mem);
    ps_free(ix->dense_base);
    ps_free(ix->pq);
    ps_free(ix->palette);
    ps_free(ix->idmap);
    ps_free(ix->emb);
    ps_free(ix);
}

uint32_t ps_index_ndocs(const ps_index_t *ix)
{
    return ix->ndocs;
}

uint32_t ps_index_dim(const ps_index_t *ix)
{
    return ix->dim;
}

uint64_t ps_index_id(const ps_index_t *ix, uint32_t doc)
{
    return ix->ids[doc];
}

float ps_index_utility(const ps_index_t *ix, uint32_t doc)
{
    return ix->utility[doc];
}

const ps_field_stats *ps_index_field_stats(const ps_index_t *ix, int field)
{
    return &ix->fs[field];
}

int ps_index_doc(const ps_index_t *ix, uint64_t id, uint32_t *doc)
{
    uint32_t i = (uint32_t)ps_hash_u64(id) & ix->idmask;
    for (; ix->idmap[i]; i = (i + 1) & ix->idmask)
        if (ix->ids[ix->idmap[i] - 1] == id) {
            *doc = ix->idmap[i] - 1;
            return 0;
        }
    return PS_ENOTFOUND;
}

uint64_t ps_index_npostings(const ps_index_t *ix)
{
    return ix->npostings;
}

size_t ps_index_memory(const ps_index_t *ix)
{
    size_t n = (size_t)ix->ndocs * (sizeof *ix->ids + sizeof *ix->utility) +
               (size_t)ix->ndocs * PS_NFIELDS * sizeof *ix->dl;
    n += ix->dict.map.keys.cap + (size_t)ix->dict.terms_cap * sizeof(ps__term) +
         (ix->dict.map.slot ? (ix->dict.map.mask + 1) * sizeof(ps_map_slot) : 0);
    n += (size_t)ix->nlists * sizeof(ps__plist);
    n += ix->npostings * (sizeof *ix->pdocs + sizeof *ix->ptfn);
    n += (size_t)ix->nblocks * sizeof *ix->blk_last + ix->nwin_q;
    n += (size_t)ix->ndense *
         (ix->nwords * sizeof *ix->dense_bits + ix->nwin * sizeof *ix->dense_base);
    n += ix->npostings * sizeof *ix->pq + (size_t)ix->ndense * 256 * sizeof *ix->palette;
    n += ((size_t)ix->idmask + 1) * sizeof *ix->idmap;
    if (ix->emb) n += (size_t)ix->ndocs * ix->dim * sizeof *ix->emb;
    return n;
}

void ps_index_set_embeddings(ps_index_t *ix, float **emb)
{
    ps_free(ix->emb);
    ix->emb = *emb;
    *emb = NULL;
}

void ps_index_set_emb_fetch(ps_index_t *ix, ps_emb_fetch_fn fn, void *ctx)
{
    ix->fetch = fn;
    ix->fetch_ctx = ctx;
}

int ps_index_embeddings(const ps_index_t *ix, const uint32_t *docs, size_t n, float *out,
                        ps_err *err)
{
    if (ix->emb) {
        for (size_t i = 0; i < n; i++)
            memcpy(out + i * ix->dim, ix->emb + (size_t)docs[i] * ix->dim, ix->dim * sizeof *out);
        return 0;
    }
    if (ix->fetch) return ix->fetch(ix->fetch_ctx, docs, n, out, err);
    return ps_err_set(err, PS_EUNAVAIL, "the index has no embeddings");
}
