/*
 * fuzz_store.c — fuzz target for the records of an index directory as ps_store_open and
 * ps_store_fields read them back (engine/store.c, layout in ps/store.h): the M metadata, D
 * doc records, P posting lists, T stored fields, and U user profiles (ps_profile_decode). A
 * snapshot is pushed to a shard over the network, so these bytes are outside input too.
 *
 * Input: records, each u8 key length | key | u16le value length | value, until the bytes run
 * out. They are sorted by key (bytewise, as RocksDB orders them), a repeated key keeping its
 * last value, and read as ps_store_open reads the database: the M value, the D range in order,
 * the P range in order, then the blocks and id map of the index; every T and U value is decoded
 * as well. To keep each run small the metadata may ask for at most 4096 docs, 4096 lists and
 * 65536 postings (ps_store_open allocates what it asks for, then finds the records missing).
 *
 * Any input must give 0 or a negative PS_E* code with a message, never a crash or a leak. An
 * index that loads is searched (one query of up to three of its terms, MaxScore and exhaustive,
 * every field on): both give the same hits when its utilities are finite, >= 0 and non-increasing
 * and every tfn is finite, as in an index the builder wrote; a profile that decodes encodes to the
 * same bytes; stored fields that decode fit in their value.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ps/search.h"
#include "ps/store.h"
#include "ps_int.h"

#define MAX_DOCS  4096
#define MAX_LISTS 4096
#define MAX_POST  65536
#define MAX_RECS  4096

typedef struct rec {
    const uint8_t *k, *v;
    size_t kl, vl, order;
} rec;

static int cmp_key(const uint8_t *a, size_t al, const uint8_t *b, size_t bl)
{
    int c = memcmp(a, b, al < bl ? al : bl);
    return c ? c : (al > bl) - (al < bl);
}

static int cmp_rec(const void *x, const void *y)
{
    const rec *a = x, *b = y;
    int c = cmp_key(a->k, a->kl, b->k, b->kl);
    return c ? c : (a->order > b->order) - (a->order < b->order);
}

static void check_err(int rc, const ps_err *err)
{
    if (rc > 0 || (rc && (err->code != rc || err->msg[0] == '\0'))) abort();
}

/* The first record whose key is >= key[0..kl). */
static size_t seek(const rec *r, size_t n, const char *key, size_t kl)
{
    size_t i = 0;
    while (i < n && cmp_key(r[i].k, r[i].kl, (const uint8_t *)key, kl) < 0) i++;
    return i;
}

/* ps_store_open's loading, minus RocksDB and the embeddings file. */
static int load(const rec *r, size_t n, ps_index_t **out, ps_err *err)
{
    ps__store_meta m;
    size_t i = seek(r, n, "M", 1);
    *out = NULL;
    if (i == n || r[i].kl != 1)
        return ps_err_set(err, PS_ENOTFOUND, "no index metadata (not an index directory)");
    int rc = ps__store_meta_decode(r[i].v, r[i].vl, &m, err);
    if (rc) return rc;
    if (m.ndocs > MAX_DOCS || m.nlists > MAX_LISTS || m.npost > MAX_POST)
        return ps_err_set(err, PS_ETOOBIG, "fuzz: metadata over the target's caps");
    ps_index_t *ix = ps__index_alloc(m.ndocs, m.dim);
    if (!ix) abort();
    memcpy(ix->fs, m.fs, sizeof m.fs);
    uint32_t d = 0;
    for (i = seek(r, n, "D", 1); !rc && i < n && r[i].kl >= 1 && r[i].k[0] == 'D'; i++)
        if (!(rc = ps__store_doc_decode(ix, d, r[i].k, r[i].kl, r[i].v, r[i].vl, err))) d++;
    if (!rc && d != ix->ndocs)
        rc = ps_err_set(err, PS_ECORRUPT, "index has %u doc records, metadata says %u", d,
                        ix->ndocs);
    if (!rc) rc = ps__store_lists_alloc(ix, m.nlists, m.npost, err);
    uint64_t off = 0;
    uint32_t l = 0;
    for (i = seek(r, n, "P", 1); !rc && i < n && r[i].kl >= 1 && r[i].k[0] == 'P'; i++)
        if (!(rc = ps__store_list_decode(ix, l, m.nlists, m.npost, &off, r[i].k, r[i].kl, r[i].v,
                                         r[i].vl, err)))
            l++;
    if (!rc && (l != m.nlists || off != m.npost))
        rc = ps_err_set(err, PS_ECORRUPT, "index has %u lists, metadata says %u", l, m.nlists);
    ix->nlists = l;
    ix->npostings = off;
    if (!rc) rc = ps__index_build_blocks(ix, err);
    if (!rc) rc = ps__index_build_idmap(ix, err);
    if (rc) {
        ps_index_free(ix);
        return rc;
    }
    *out = ix;
    return 0;
}

/* One query of up to three of the index's terms, both evaluation paths. */
static void search(const ps_index_t *ix)
{
    static ps_hit hits[2][PS_SEARCH_MAX_R];
    ps_err err = {0, ""};
    ps_searcher_t *s = ps_searcher_new(ix, &err);
    if (!s) abort();
    ps_tokens tok;
    ps_tokens_init(&tok);
    uint32_t nt = ix->dict.nterms;
    uint32_t pick[3] = {0, nt / 2, nt ? nt - 1 : 0};
    for (int i = 0; i < 3 && nt; i++) {
        const ps__term *t = &ix->dict.terms[pick[i]];
        if (ps_tokens_push(&tok, ps__dict_str(&ix->dict, pick[i]), t->len)) abort();
    }
    ps_tokens_distinct(&tok);
    ps_search_opts o;
    ps_search_opts_default(&o);
    o.R = 50;
    o.k = 10;
    size_t n[2];
    for (int e = 0; e < 2; e++) {
        o.exhaustive = e;
        int rc = ps_search_shard(s, &tok, &o, hits[e], &n[e], NULL, &err);
        check_err(rc, &err);
        if (rc && rc != PS_EQUERY) abort();
        for (size_t i = 0; !rc && i < n[e]; i++)
            if (hits[e][i].doc >= ix->ndocs || hits[e][i].id != ix->ids[hits[e][i].doc]) abort();
    }
    /* search.h: both paths give the same hits, on an index like the builder's (utilities finite
     * and non-increasing, every tfn finite); a corrupt one need only not crash */
    int sane = 1;
    for (uint32_t d = 0; sane && d < ix->ndocs; d++)
        sane = isfinite(ix->utility[d]) && ix->utility[d] >= 0 &&
               (d == 0 || ix->utility[d] <= ix->utility[d - 1]);
    for (uint64_t i = 0; sane && i < ix->npostings; i++) sane = isfinite(ix->ptfn[i]);
    if (sane && n[0] != n[1]) abort();
    for (size_t i = 0; sane && i < n[0]; i++)
        if (hits[0][i].id != hits[1][i].id || hits[0][i].score != hits[1][i].score) abort();
    ps_tokens_free(&tok);
    ps_searcher_free(s);
}

static void fields(const rec *r)
{
    char *f[PS_NFIELDS], *image;
    ps_err err = {0, ""};
    int rc = ps__store_fields_decode(0, r->v, r->vl, f, &image, &err);
    check_err(rc, &err);
    size_t total = image ? strlen(image) : 0;
    if (rc && image) abort();
    free(image);
    for (int i = 0; i < PS_NFIELDS; i++) {
        if (rc ? f[i] != NULL : f[i] == NULL) abort();
        if (f[i]) total += strlen(f[i]);
        free(f[i]);
    }
    if (total > r->vl) abort();
}

static void profile(const rec *r)
{
    ps_profile p;
    ps_err err = {0, ""};
    int rc = ps_profile_decode(r->v, r->vl, &p, &err);
    check_err(rc, &err);
    if (rc) {
        if (p.centroids || p.k) abort();
        return;
    }
    uint8_t *buf;
    size_t len;
    if (ps_profile_encode(&p, &buf, &len, &err)) abort();
    if (len != r->vl || memcmp(buf, r->v, len)) abort();
    free(buf);
    ps_profile_clear(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static rec recs[MAX_RECS];
    size_t n = 0, at = 0;
    while (n < MAX_RECS && at < size) {
        rec *r = &recs[n];
        r->kl = data[at++];
        if (size - at < r->kl + 2) break;
        r->k = data + at;
        at += r->kl;
        r->vl = (size_t)data[at] | (size_t)data[at + 1] << 8;
        at += 2;
        if (size - at < r->vl) break;
        r->v = data + at;
        at += r->vl;
        r->order = n++;
    }
    qsort(recs, n, sizeof *recs, cmp_rec);
    size_t u = 0; /* a repeated key keeps its last value */
    for (size_t i = 0; i < n; i++) {
        if (u && !cmp_key(recs[u - 1].k, recs[u - 1].kl, recs[i].k, recs[i].kl)) u--;
        recs[u++] = recs[i];
    }
    n = u;

    ps_index_t *ix;
    ps_err err = {0, ""};
    int rc = load(recs, n, &ix, &err);
    check_err(rc, &err);
    if (!rc) {
        search(ix);
        ps_index_free(ix);
    }
    for (size_t i = 0; i < n; i++) {
        if (recs[i].kl == 5 && recs[i].k[0] == 'T') fields(&recs[i]);
        if (recs[i].kl >= 1 && recs[i].k[0] == 'U') profile(&recs[i]);
    }
    return 0;
}
