/*
 * store.c — writing and loading index directories (format in store.h).
 *
 * Embeddings live beside the database in a flat file mapped read-only (shared): a personalized
 * query needs ~100 random 2 KB rows, which the mapping serves from the page cache without a
 * system call each (pread cost ~1 µs a row), and the 1.1 GB at full scale are the page cache's,
 * shared by every process on the host that opens the same directory, not this process's heap.
 * If the file cannot be mapped, rows are read with pread.
 *
 * Writing goes through one rocksdb SstFileWriter, keys emitted in ascending order by
 * construction (the key prefixes D < E < I < M < P < T < U < X, and sorted within each), then
 * the file is ingested into a fresh database. Loading scans the D and P ranges once and
 * rebuilds the in-memory index with the same ps__tfn as the build, so a loaded index scores
 * bit-identically to the one that was written.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <rocksdb/c.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include "ps/store.h"
#include "ps_int.h"
#include "ps/alloc.h"
#include "ps/buf.h"
#include "ps/corpus.h"

struct ps_store {
    rocksdb_t *db;
    rocksdb_options_t *opts;
    rocksdb_readoptions_t *ropts;
    rocksdb_block_based_table_options_t *topts;
    rocksdb_cache_t *cache;
    ps_index_t *ix;
    int emb_fd;       /* embeddings.f32 */
    const float *emb; /* its mapping (MAP_FAILED: read rows with pread) */
    size_t emb_bytes;
};

/**************************************************************************
 * Byte readers (the writer is ps_buf, ps/buf.h)
 */

static uint32_t rd_u32le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd_u64le(const uint8_t *p)
{
    return rd_u32le(p) | (uint64_t)rd_u32le(p + 4) << 32;
}

static float rd_f32le(const uint8_t *p)
{
    uint32_t v = rd_u32le(p);
    float f;
    memcpy(&f, &v, 4);
    return f;
}

/* Decode a varint at *p (< end). Returns 0, or -1 when truncated or over 64 bits. */
static int rd_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t x = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*p >= end) return -1;
        uint8_t c = *(*p)++;
        x |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

static void key_doc(uint8_t k[5], char prefix, uint32_t doc)
{
    k[0] = (uint8_t)prefix;
    k[1] = (uint8_t)(doc >> 24);
    k[2] = (uint8_t)(doc >> 16);
    k[3] = (uint8_t)(doc >> 8);
    k[4] = (uint8_t)doc;
}

/**************************************************************************
 * Writing
 */

typedef struct wctx {
    rocksdb_sstfilewriter_t *w;
    char *rerr;
    ps_buf key, val; /* the record being written */
} wctx;

static int put(wctx *c, ps_err *err)
{
    if (c->key.rc || c->val.rc) return ps_err_set(err, PS_ENOMEM, "out of memory writing index");
    rocksdb_sstfilewriter_put(c->w, (const char *)c->key.p, c->key.n, (const char *)c->val.p,
                              c->val.n, &c->rerr);
    if (c->rerr) return ps_err_set(err, PS_ESTORE, "writing SST: %s", c->rerr);
    ps_buf_reset(&c->key);
    ps_buf_reset(&c->val);
    return 0;
}

typedef struct lref {
    const ps_index_t *ix;
    uint32_t term;
    uint8_t field;
} lref;

static int cmp_lref(const void *a, const void *b)
{
    const lref *x = a, *y = b;
    if (x->field != y->field) return x->field < y->field ? -1 : 1;
    const ps__term *tx = &x->ix->dict.terms[x->term], *ty = &y->ix->dict.terms[y->term];
    size_t n = tx->len < ty->len ? tx->len : ty->len;
    int c = memcmp(ps__dict_str(&x->ix->dict, x->term), ps__dict_str(&y->ix->dict, y->term), n);
    if (c) return c;
    return (tx->len > ty->len) - (tx->len < ty->len);
}

typedef struct uref {
    const char *user;
    size_t i;
} uref;

static int cmp_uref(const void *a, const void *b)
{
    return strcmp(((const uref *)a)->user, ((const uref *)b)->user);
}

typedef struct idref {
    uint64_t id;
    uint32_t doc;
} idref;

static int cmp_idref(const void *a, const void *b)
{
    const idref *x = a, *y = b;
    return (x->id > y->id) - (x->id < y->id);
}

static int dir_usable(const char *dir, ps_err *err)
{
    DIR *d = opendir(dir);
    if (!d) {
        if (errno != ENOENT) return ps_err_set(err, PS_EIO, "%s: %s", dir, strerror(errno));
        if (mkdir(dir, 0755) != 0)
            return ps_err_set(err, PS_EIO, "mkdir %s: %s", dir, strerror(errno));
        return 0;
    }
    struct dirent *de;
    int empty = 1;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) empty = 0;
    closedir(d);
    return empty ? 0 : ps_err_set(err, PS_EEXIST, "%s exists and is not empty", dir);
}

/* D, I, M, P and T: everything about the stickers of the index. */
static int write_index(wctx *c, const ps_store_input *in, ps_err *err)
{
    const ps_index_t *ix = in->ix;
    uint8_t k[9];
    int rc;

    for (uint32_t d = 0; d < ix->ndocs; d++) { /* D */
        key_doc(k, 'D', d);
        ps_buf_add(&c->key, k, 5);
        ps_buf_u64le(&c->val, ix->ids[d]);
        ps_buf_f32le(&c->val, ix->utility[d]);
        for (int f = 0; f < PS_NFIELDS; f++)
            ps_buf_u32le(&c->val, ix->dl[(size_t)d * PS_NFIELDS + f]);
        if ((rc = put(c, err))) return rc;
    }
    if (in->info_json) { /* I */
        ps_buf_add(&c->key, "I", 1);
        ps_buf_add(&c->val, in->info_json, strlen(in->info_json));
        if ((rc = put(c, err))) return rc;
    }
    /* M */
    ps_buf_add(&c->key, "M", 1);
    ps_buf_add(&c->val, "PSIX", 4);
    ps_buf_u32le(&c->val, PS_STORE_FORMAT);
    ps_buf_u32le(&c->val, ix->ndocs);
    ps_buf_u32le(&c->val, ix->dim);
    ps_buf_u32le(&c->val, ix->nlists);
    ps_buf_u64le(&c->val, ix->npostings);
    for (int f = 0; f < PS_NFIELDS; f++) {
        ps_buf_u32le(&c->val, ix->fs[f].ndocs);
        ps_buf_u64le(&c->val, ix->fs[f].ntokens);
    }
    if ((rc = put(c, err))) return rc;

    /* P, in (field, term bytes) order */
    lref *refs = ps_malloc((ix->nlists ? ix->nlists : 1) * sizeof *refs);
    if (!refs) return ps_err_set(err, PS_ENOMEM, "out of memory sorting lists");
    size_t nref = 0;
    for (uint32_t t = 0; t < ix->dict.nterms; t++)
        for (int f = 0; f < PS_NFIELDS; f++)
            if (ix->dict.terms[t].list[f] != PS_NOLIST) refs[nref++] = (lref){ix, t, (uint8_t)f};
    qsort(refs, nref, sizeof *refs, cmp_lref);
    for (size_t r = 0; r < nref; r++) {
        const ps__term *term = &ix->dict.terms[refs[r].term];
        const ps__plist *pl = &ix->lists[term->list[refs[r].field]];
        uint8_t f = refs[r].field;
        ps_buf_add(&c->key, "P", 1);
        ps_buf_add(&c->key, &f, 1);
        ps_buf_add(&c->key, ps__dict_str(&ix->dict, refs[r].term), term->len);
        ps_buf_varint(&c->val, pl->n);
        ps_buf_varint(&c->val, pl->df);
        uint32_t prev = 0;
        for (uint32_t i = 0; i < pl->n; i++) {
            ps_buf_varint(&c->val, ix->pdocs[pl->off + i] - prev);
            prev = ix->pdocs[pl->off + i];
        }
        /* tf is not kept in memory: recover it from ptfn, which is monotone in tf. */
        for (uint32_t i = 0; i < pl->n; i++) {
            uint32_t doc = ix->pdocs[pl->off + i];
            uint32_t dl = ix->dl[(size_t)doc * PS_NFIELDS + f];
            float want = ix->ptfn[pl->off + i];
            uint32_t tf = 1;
            while (tf < dl && ps__tfn(tf, dl, ix->fs[f].avgdl) < want) tf++;
            ps_buf_varint(&c->val, tf);
        }
        if ((rc = put(c, err))) {
            ps_free(refs);
            return rc;
        }
    }
    ps_free(refs);

    for (uint32_t d = 0; d < ix->ndocs; d++) { /* T */
        key_doc(k, 'T', d);
        ps_buf_add(&c->key, k, 5);
        for (int f = 0; f < PS_NFIELDS; f++) {
            size_t len = 0;
            const char *t = in->text ? in->text(in->text_ctx, d, f, &len) : NULL;
            if (!t) len = 0;
            ps_buf_varint(&c->val, len);
            ps_buf_add(&c->val, t, len);
        }
        size_t ilen = 0;
        const char *img = in->image ? in->image(in->text_ctx, d, &ilen) : NULL;
        if (img && ilen) { /* absent when none: the record is as before images */
            ps_buf_varint(&c->val, ilen);
            ps_buf_add(&c->val, img, ilen);
        }
        if ((rc = put(c, err))) return rc;
    }
    return 0;
}

/* U: one record per user, in name order. */
static int write_profiles(wctx *c, const ps_store_input *in, ps_err *err)
{
    int rc = 0;
    if (in->nprofiles) { /* U */
        uref *u = ps_malloc(in->nprofiles * sizeof *u);
        if (!u) return ps_err_set(err, PS_ENOMEM, "out of memory sorting profiles");
        for (size_t i = 0; i < in->nprofiles; i++) u[i] = (uref){in->users[i], i};
        qsort(u, in->nprofiles, sizeof *u, cmp_uref);
        for (size_t i = 0; i < in->nprofiles && !rc; i++) {
            uint8_t *pb = NULL;
            size_t plen = 0;
            if (i > 0 && strcmp(u[i].user, u[i - 1].user) == 0) {
                rc = ps_err_set(err, PS_EINVAL, "user '%s' has two profiles", u[i].user);
                break;
            }
            if ((rc = ps_profile_encode(&in->profiles[u[i].i], &pb, &plen, err))) break;
            ps_buf_add(&c->key, "U", 1);
            ps_buf_add(&c->key, u[i].user, strlen(u[i].user));
            ps_buf_add(&c->val, pb, plen);
            ps_free(pb);
            rc = put(c, err);
        }
        ps_free(u);
    }
    return rc;
}

/* X: sticker id -> doc, in id order. */
static int write_ids(wctx *c, const ps_store_input *in, ps_err *err)
{
    const ps_index_t *ix = in->ix;
    int rc = 0;
    idref *ids = ps_malloc((ix->ndocs ? ix->ndocs : 1) * sizeof *ids); /* X */
    if (!ids) return ps_err_set(err, PS_ENOMEM, "out of memory sorting ids");
    for (uint32_t d = 0; d < ix->ndocs; d++) ids[d] = (idref){ix->ids[d], d};
    qsort(ids, ix->ndocs, sizeof *ids, cmp_idref);
    for (uint32_t i = 0; i < ix->ndocs && !rc; i++) {
        uint8_t xk[9] = {'X'};
        for (int j = 0; j < 8; j++) xk[1 + j] = (uint8_t)(ids[i].id >> (56 - 8 * j));
        ps_buf_add(&c->key, xk, 9);
        ps_buf_u32le(&c->val, ids[i].doc);
        rc = put(c, err);
    }
    ps_free(ids);
    return rc;
}

static int write_entries(wctx *c, const ps_store_input *in, ps_err *err)
{
    int rc = 0;
    if (in->ix && (rc = write_index(c, in, err))) return rc;
    if ((rc = write_profiles(c, in, err))) return rc;
    return in->ix ? write_ids(c, in, err) : 0;
}

/* dir/embeddings.f32: ndocs rows of dim little-endian float32, in doc order, synced. */
static int write_embeddings(const char *dir, const ps_store_input *in, ps_err *err)
{
    const ps_index_t *ix = in->ix;
    char path[4096];
    snprintf(path, sizeof path, "%s/" PS_STORE_EMB_FILE, dir);
    FILE *f = fopen(path, "wb");
    if (!f) return ps_err_set(err, PS_EIO, "creating %s: %s", path, strerror(errno));
    int ok = 1;
    for (uint32_t d = 0; d < ix->ndocs && ok && in->emb; d++) {
        const float *e = in->emb + (size_t)(in->emb_row ? in->emb_row[d] : d) * ix->dim;
        ok = fwrite(e, sizeof *e, ix->dim, f) == ix->dim;
    }
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    if (fclose(f) != 0) ok = 0;
    return ok ? 0 : ps_err_set(err, PS_EIO, "writing %s: %s", path, strerror(errno));
}

int ps_store_write(const char *dir, const ps_store_input *in, ps_err *err)
{
    char sst[4096], *rerr = NULL;
    int rc;
    if ((rc = dir_usable(dir, err))) return rc;
    if (in->ix && in->emb && (rc = write_embeddings(dir, in, err))) return rc;
    snprintf(sst, sizeof sst, "%s/.build.sst", dir);

    wctx c = {0};
    rocksdb_envoptions_t *eo = rocksdb_envoptions_create();
    rocksdb_options_t *o = rocksdb_options_create();
    rocksdb_options_set_compression(o, rocksdb_lz4_compression);
    c.w = rocksdb_sstfilewriter_create(eo, o);
    rocksdb_sstfilewriter_open(c.w, sst, &c.rerr);
    if (c.rerr) {
        rc = ps_err_set(err, PS_ESTORE, "creating %s: %s", sst, c.rerr);
        goto out;
    }
    if ((rc = write_entries(&c, in, err))) goto out;
    rocksdb_sstfilewriter_finish(c.w, &c.rerr);
    if (c.rerr) {
        rc = ps_err_set(err, PS_ESTORE, "finishing %s: %s", sst, c.rerr);
        goto out;
    }

    rocksdb_options_set_create_if_missing(o, 1);
    rocksdb_options_set_error_if_exists(o, 1);
    rocksdb_t *db = rocksdb_open(o, dir, &rerr);
    if (!db) {
        rc = ps_err_set(err, PS_ESTORE, "creating database %s: %s", dir, rerr);
        goto out;
    }
    rocksdb_ingestexternalfileoptions_t *io = rocksdb_ingestexternalfileoptions_create();
    rocksdb_ingestexternalfileoptions_set_move_files(io, 1);
    const char *files[1] = {sst};
    rocksdb_ingest_external_file(db, files, 1, io, &rerr);
    rocksdb_ingestexternalfileoptions_destroy(io);
    if (rerr) rc = ps_err_set(err, PS_ESTORE, "ingesting %s: %s", sst, rerr);
    rocksdb_close(db);
out:
    if (rc) remove(sst);
    ps_free(rerr);
    ps_free(c.rerr);
    ps_buf_free(&c.key);
    ps_buf_free(&c.val);
    rocksdb_sstfilewriter_destroy(c.w);
    rocksdb_options_destroy(o);
    rocksdb_envoptions_destroy(eo);
    return rc;
}

/**************************************************************************
 * Loading
 */

int ps__store_meta_decode(const uint8_t *p, size_t len, ps__store_meta *m, ps_err *err)
{
    if (len != 4 + 4 * 4 + 8 + PS_NFIELDS * 12 || memcmp(p, "PSIX", 4) != 0)
        return ps_err_set(err, PS_ECORRUPT, "index metadata has a bad size or magic");
    if (rd_u32le(p + 4) != PS_STORE_FORMAT)
        return ps_err_set(err, PS_ECORRUPT, "index format %u; this build reads format %d",
                          rd_u32le(p + 4), PS_STORE_FORMAT);
    m->ndocs = rd_u32le(p + 8);
    m->dim = rd_u32le(p + 12);
    m->nlists = rd_u32le(p + 16);
    m->npost = rd_u64le(p + 20);
    for (int f = 0; f < PS_NFIELDS; f++) {
        m->fs[f].ndocs = rd_u32le(p + 28 + 12 * f);
        m->fs[f].ntokens = rd_u64le(p + 32 + 12 * f);
        m->fs[f].avgdl = m->fs[f].ndocs ? (double)m->fs[f].ntokens / m->fs[f].ndocs : 0.0;
    }
    if (m->npost >= UINT32_MAX || m->dim > 65536)
        return ps_err_set(err, PS_ECORRUPT, "index metadata out of range");
    return 0;
}

static int load_meta(ps_store_t *st, ps__store_meta *m, ps_err *err)
{
    char *rerr = NULL;
    size_t len = 0;
    char *v = rocksdb_get(st->db, st->ropts, "M", 1, &len, &rerr);
    if (rerr) {
        int rc = ps_err_set(err, PS_ESTORE, "reading meta: %s", rerr);
        ps_free(rerr);
        return rc;
    }
    if (!v) return ps_err_set(err, PS_ENOTFOUND, "no index metadata (not an index directory)");
    int rc = ps__store_meta_decode((const uint8_t *)v, len, m, err);
    rocksdb_free(v);
    return rc;
}

int ps__store_doc_decode(ps_index_t *ix, uint32_t d, const uint8_t *k, size_t kl, const uint8_t *v,
                         size_t vl, ps_err *err)
{
    uint32_t doc = kl == 5 ? (uint32_t)k[1] << 24 | k[2] << 16 | k[3] << 8 | k[4] : UINT32_MAX;
    if (doc != d || d >= ix->ndocs || vl != 12 + 4 * PS_NFIELDS)
        return ps_err_set(err, PS_ECORRUPT, "doc record %u is out of sequence or malformed", d);
    ix->ids[d] = rd_u64le(v);
    ix->utility[d] = rd_f32le(v + 8);
    /* search.c bounds a window's utility by its first doc's */
    if (!(ix->utility[d] >= 0.0f) || isinf(ix->utility[d]) ||
        (d > 0 && ix->utility[d] > ix->utility[d - 1]))
        return ps_err_set(
            err, PS_ECORRUPT,
            "doc record %u: utility %g is negative, not finite or above the previous doc's", d,
            (double)ix->utility[d]);
    for (int f = 0; f < PS_NFIELDS; f++)
        ix->dl[(size_t)d * PS_NFIELDS + f] = rd_u32le(v + 12 + 4 * f);
    return 0;
}

static int load_docs(ps_store_t *st, ps_err *err)
{
    ps_index_t *ix = st->ix;
    rocksdb_iterator_t *it = rocksdb_create_iterator(st->db, st->ropts);
    uint32_t d = 0;
    int rc = 0;
    for (rocksdb_iter_seek(it, "D", 1); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t kl, vl;
        const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &kl);
        const uint8_t *v = (const uint8_t *)rocksdb_iter_value(it, &vl);
        if (kl < 1 || k[0] != 'D') break;
        if ((rc = ps__store_doc_decode(ix, d, k, kl, v, vl, err))) break;
        d++;
    }
    if (!rc && d != ix->ndocs)
        rc = ps_err_set(err, PS_ECORRUPT, "index has %u doc records, metadata says %u", d,
                        ix->ndocs);
    rocksdb_iter_destroy(it);
    return rc;
}

int ps__store_lists_alloc(ps_index_t *ix, uint32_t nlists, uint64_t npost, ps_err *err)
{
    ix->lists = ps_calloc(nlists ? nlists : 1, sizeof *ix->lists);
    ix->pdocs = ps_malloc((npost ? npost : 1) * sizeof *ix->pdocs);
    ix->ptfn = ps_malloc((npost ? npost : 1) * sizeof *ix->ptfn);
    if (!ix->lists || !ix->pdocs || !ix->ptfn)
        return ps_err_set(err, PS_ENOMEM, "out of memory loading %llu postings",
                          (unsigned long long)npost);
    return 0;
}

int ps__store_list_decode(ps_index_t *ix, uint32_t l, uint32_t nlists, uint64_t npost,
                          uint64_t *off, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl,
                          ps_err *err)
{
    const uint8_t *end = v + vl;
    uint64_t n, df, x;
    if (kl < 3 || k[1] >= PS_NFIELDS || l >= nlists || rd_varint(&v, end, &n) ||
        rd_varint(&v, end, &df) || n == 0 || n > npost - *off || df < n)
        return ps_err_set(err, PS_ECORRUPT, "posting list %u has a malformed header", l);
    int f = k[1];
    int64_t t = ps__dict_intern(&ix->dict, (const char *)k + 2, kl - 2);
    if (t < 0) return ps_err_set(err, PS_ENOMEM, "out of memory loading the dictionary");
    ix->dict.terms[t].list[f] = l;
    ps__plist *pl = &ix->lists[l];
    pl->off = (uint32_t)*off;
    pl->n = (uint32_t)n;
    pl->df = (uint32_t)df;
    uint64_t doc = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (rd_varint(&v, end, &x) || (i > 0 && x == 0) || (doc += x) >= ix->ndocs)
            return ps_err_set(err, PS_ECORRUPT, "posting list %u has a bad doc number", l);
        ix->pdocs[*off + i] = (uint32_t)doc;
    }
    for (uint64_t i = 0; i < n; i++) {
        if (rd_varint(&v, end, &x) || x == 0 || x > UINT16_MAX)
            return ps_err_set(err, PS_ECORRUPT, "posting list %u has a bad tf", l);
        uint32_t d = ix->pdocs[*off + i];
        ix->ptfn[*off + i] =
            ps__tfn((uint32_t)x, ix->dl[(size_t)d * PS_NFIELDS + f], ix->fs[f].avgdl);
    }
    *off += n;
    return 0;
}

static int load_lists(ps_store_t *st, uint32_t nlists, uint64_t npost, ps_err *err)
{
    ps_index_t *ix = st->ix;
    int rc = ps__store_lists_alloc(ix, nlists, npost, err);
    if (rc) return rc;
    rocksdb_iterator_t *it = rocksdb_create_iterator(st->db, st->ropts);
    uint64_t off = 0;
    uint32_t l = 0;
    for (rocksdb_iter_seek(it, "P", 1); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t kl, vl;
        const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &kl);
        const uint8_t *v = (const uint8_t *)rocksdb_iter_value(it, &vl);
        if (kl < 1 || k[0] != 'P') break;
        if ((rc = ps__store_list_decode(ix, l, nlists, npost, &off, k, kl, v, vl, err))) break;
        l++;
    }
    rocksdb_iter_destroy(it);
    if (!rc && (l != nlists || off != npost))
        rc = ps_err_set(err, PS_ECORRUPT,
                        "index has %u lists / %llu postings, metadata says "
                        "%u / %llu",
                        l, (unsigned long long)off, nlists, (unsigned long long)npost);
    ix->nlists = l;
    ix->npostings = off;
    return rc;
}

static int fetch_embeddings(void *ctx, const uint32_t *docs, size_t n, float *out, ps_err *err)
{
    ps_store_t *st = ctx;
    size_t dim = st->ix->dim, row = dim * sizeof *out;
    for (size_t i = 0; i < n; i++) {
        if (docs[i] >= st->ix->ndocs)
            return ps_err_set(err, PS_EINVAL, "no doc %u for an embedding", docs[i]);
        if (st->emb != MAP_FAILED) {
            memcpy(out + i * dim, st->emb + (size_t)docs[i] * dim, row);
            continue;
        }
        ssize_t got = pread(st->emb_fd, out + i * dim, row, (off_t)docs[i] * (off_t)row);
        if (got != (ssize_t)row)
            return ps_err_set(err, PS_EIO, "reading the embedding of doc %u: %s", docs[i],
                              got < 0 ? strerror(errno) : "short read");
    }
    return 0;
}

/* Open dir/embeddings.f32 and check its size against the index. */
static int open_embeddings(ps_store_t *st, const char *dir, ps_err *err)
{
    char path[4096];
    struct stat sb;
    snprintf(path, sizeof path, "%s/" PS_STORE_EMB_FILE, dir);
    st->emb_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (st->emb_fd < 0) return ps_err_set(err, PS_ECORRUPT, "%s: %s", path, strerror(errno));
    uint64_t want = (uint64_t)st->ix->ndocs * st->ix->dim * sizeof(float);
    if (fstat(st->emb_fd, &sb) != 0 || (uint64_t)sb.st_size != want)
        return ps_err_set(err, PS_ECORRUPT, "%s has %lld bytes; the index needs %llu", path,
                          (long long)sb.st_size, (unsigned long long)want);
    if (want > 0 && want <= SIZE_MAX) {
        void *p = mmap(NULL, (size_t)want, PROT_READ, MAP_SHARED, st->emb_fd, 0);
        if (p != MAP_FAILED) {
            /* Rows are read at random: no read-ahead around each. */
            (void)madvise(p, (size_t)want, MADV_RANDOM);
            st->emb = p;
            st->emb_bytes = (size_t)want;
        }
    }
    return 0;
}

ps_store_t *ps_store_open(const char *dir, ps_err *err)
{
    char *rerr = NULL;
    ps__store_meta m;
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        ps_err_set(err, PS_ENOTFOUND, "index directory %s: %s", dir, strerror(errno));
        return NULL;
    }
    ps_store_t *st = ps_calloc(1, sizeof *st);
    if (!st) {
        ps_err_set(err, PS_ENOMEM, "out of memory opening %s", dir);
        return NULL;
    }
    st->emb_fd = -1;
    st->emb = MAP_FAILED;
    st->opts = rocksdb_options_create();
    st->topts = rocksdb_block_based_options_create();
    st->cache = rocksdb_cache_create_lru(32u << 20);
    rocksdb_block_based_options_set_block_cache(st->topts, st->cache);
    rocksdb_options_set_block_based_table_factory(st->opts, st->topts);
    rocksdb_options_set_info_log_level(st->opts, 4); /* FATAL only: logs belong to us */
    st->ropts = rocksdb_readoptions_create();
    st->db = rocksdb_open_for_read_only(st->opts, dir, 0, &rerr);
    if (!st->db) {
        ps_err_set(err, PS_ENOTFOUND, "%s is not an index directory: %s", dir, rerr);
        ps_free(rerr);
        goto err;
    }
    if (load_meta(st, &m, err)) goto err;
    if (!(st->ix = ps__index_alloc(m.ndocs, m.dim))) {
        ps_err_set(err, PS_ENOMEM, "out of memory loading %u docs", m.ndocs);
        goto err;
    }
    memcpy(st->ix->fs, m.fs, sizeof m.fs);
    if (load_docs(st, err) || load_lists(st, m.nlists, m.npost, err) ||
        ps__index_build_blocks(st->ix, err) || ps__index_build_idmap(st->ix, err))
        goto err;
    if (open_embeddings(st, dir, err)) goto err;
    ps_index_set_emb_fetch(st->ix, fetch_embeddings, st);
    if (st->emb != MAP_FAILED) st->ix->emb_rows = st->emb;
    return st;
err:
    ps_err_prefix(err, "%s", dir);
    ps_store_close(st);
    return NULL;
}

void ps_store_close(ps_store_t *st)
{
    if (!st) return;
    ps_index_free(st->ix);
    if (st->emb != MAP_FAILED) munmap((void *)st->emb, st->emb_bytes);
    if (st->emb_fd >= 0) close(st->emb_fd);
    if (st->db) rocksdb_close(st->db);
    if (st->ropts) rocksdb_readoptions_destroy(st->ropts);
    if (st->opts) rocksdb_options_destroy(st->opts);
    if (st->topts) rocksdb_block_based_options_destroy(st->topts);
    if (st->cache) rocksdb_cache_destroy(st->cache);
    ps_free(st);
}

const ps_index_t *ps_store_index(const ps_store_t *st)
{
    return st->ix;
}

/* Read and decode the profile of `user` from db. */
static int get_profile(rocksdb_t *db, const rocksdb_readoptions_t *ro, const char *user,
                       ps_profile *prof, ps_err *err)
{
    char *rerr = NULL;
    size_t len = 0, ul = strlen(user);
    char *key = ps_malloc(ul + 1);
    if (!key) return ps_err_set(err, PS_ENOMEM, "out of memory reading a profile");
    key[0] = 'U';
    memcpy(key + 1, user, ul);
    char *v = rocksdb_get(db, ro, key, ul + 1, &len, &rerr);
    ps_free(key);
    if (rerr) {
        int rc = ps_err_set(err, PS_ESTORE, "reading profile of '%s': %s", user, rerr);
        ps_free(rerr);
        return rc;
    }
    if (!v) return ps_err_set(err, PS_ENOTFOUND, "no profile for user '%s'", user);
    int rc = ps_profile_decode((const uint8_t *)v, len, prof, err);
    rocksdb_free(v);
    return rc;
}

int ps_store_profile(ps_store_t *st, const char *user, ps_profile *prof, ps_err *err)
{
    return get_profile(st->db, st->ropts, user, prof, err);
}

struct ps_profiles {
    rocksdb_t *db;
    rocksdb_options_t *opts;
    rocksdb_readoptions_t *ropts;
};

ps_profiles_t *ps_profiles_open(const char *dir, ps_err *err)
{
    char *rerr = NULL;
    ps_profiles_t *p = ps_calloc(1, sizeof *p);
    if (!p) {
        ps_err_set(err, PS_ENOMEM, "out of memory opening %s", dir);
        return NULL;
    }
    p->opts = rocksdb_options_create();
    rocksdb_options_set_info_log_level(p->opts, 4);
    p->ropts = rocksdb_readoptions_create();
    p->db = rocksdb_open_for_read_only(p->opts, dir, 0, &rerr);
    if (!p->db) {
        ps_err_set(err, PS_ENOTFOUND, "%s is not a profiles directory: %s", dir, rerr);
        ps_free(rerr);
        ps_profiles_close(p);
        return NULL;
    }
    return p;
}

int ps_profiles_get(ps_profiles_t *p, const char *user, ps_profile *prof, ps_err *err)
{
    return get_profile(p->db, p->ropts, user, prof, err);
}

void ps_profiles_close(ps_profiles_t *p)
{
    if (!p) return;
    if (p->db) rocksdb_close(p->db);
    rocksdb_readoptions_destroy(p->ropts);
    rocksdb_options_destroy(p->opts);
    ps_free(p);
}

/* n bytes at p as a malloc'd NUL-terminated string, or NULL. */
static char *dup_bytes(const uint8_t *p, uint64_t n)
{
    char *s = ps_malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

int ps__store_fields_decode(uint32_t doc, const uint8_t *p, size_t len, char *fields[PS_NFIELDS],
                            char **image, ps_err *err)
{
    const uint8_t *end = p + len;
    int rc = 0;
    uint64_t n;
    for (int f = 0; f < PS_NFIELDS; f++) fields[f] = NULL;
    if (image) *image = NULL;
    for (int f = 0; f < PS_NFIELDS && !rc; f++) {
        if (rd_varint(&p, end, &n) || n > (uint64_t)(end - p)) {
            rc = ps_err_set(err, PS_ECORRUPT, "stored fields of doc %u are malformed", doc);
            break;
        }
        if (!(fields[f] = dup_bytes(p, n))) {
            rc = ps_err_set(err, PS_ENOMEM, "out of memory reading fields");
            break;
        }
        p += n;
    }
    if (!rc && p < end) { /* the image reference, exactly to the end of the record */
        if (rd_varint(&p, end, &n) || n == 0 || n != (uint64_t)(end - p) || n > PS_IMAGE_MAX ||
            memchr(p, 0, n))
            rc = ps_err_set(err, PS_ECORRUPT, "stored image of doc %u is malformed", doc);
        else if (image && !(*image = dup_bytes(p, n)))
            rc = ps_err_set(err, PS_ENOMEM, "out of memory reading fields");
    }
    if (rc) {
        for (int f = 0; f < PS_NFIELDS; f++) {
            ps_free(fields[f]);
            fields[f] = NULL;
        }
        if (image) {
            ps_free(*image);
            *image = NULL;
        }
    }
    return rc;
}

int ps_store_fields(ps_store_t *st, uint32_t doc, char *fields[PS_NFIELDS], ps_err *err)
{
    return ps_store_fields_image(st, doc, fields, NULL, err);
}

int ps_store_fields_image(ps_store_t *st, uint32_t doc, char *fields[PS_NFIELDS], char **image,
                          ps_err *err)
{
    uint8_t k[5];
    char *rerr = NULL;
    size_t len = 0;
    int rc = 0;
    for (int f = 0; f < PS_NFIELDS; f++) fields[f] = NULL;
    if (image) *image = NULL;
    if (doc >= st->ix->ndocs) return ps_err_set(err, PS_ENOTFOUND, "no doc %u", doc);
    key_doc(k, 'T', doc);
    char *v = rocksdb_get(st->db, st->ropts, (const char *)k, 5, &len, &rerr);
    if (rerr) {
        rc = ps_err_set(err, PS_ESTORE, "reading fields of doc %u: %s", doc, rerr);
        ps_free(rerr);
        return rc;
    }
    if (!v) return ps_err_set(err, PS_ECORRUPT, "doc %u has no stored fields", doc);
    rc = ps__store_fields_decode(doc, (const uint8_t *)v, len, fields, image, err);
    rocksdb_free(v);
    return rc;
}

char *ps_store_info(ps_store_t *st)
{
    char *rerr = NULL;
    size_t len = 0;
    char *v = rocksdb_get(st->db, st->ropts, "I", 1, &len, &rerr);
    ps_free(rerr);
    if (!v) return NULL;
    char *s = ps_malloc(len + 1);
    if (s) {
        memcpy(s, v, len);
        s[len] = '\0';
    }
    rocksdb_free(v);
    return s;
}
