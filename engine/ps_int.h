/*
 * ps_int.h — the engine's only internal header: structures shared by index.c (build and
 * in-memory layout), search.c (query evaluation) and store.c (RocksDB persistence).
 * One section per .c file. Nothing here is public API.
 */
#ifndef PS_INT_H
#define PS_INT_H

#include <stdint.h>

#include "ps/hash.h"
#include "ps/index.h"
#include "ps/map.h"

/**************************************************************************
 * index.c
 *
 * In-memory layout. All postings of all lists live in two parallel arrays:
 *   pdocs[i]  uint32  doc number, strictly increasing within a list
 *   ptfn[i]   float   tf·(k1+1) / (tf + k1·(1 − b + b·dl/avgdl_f)), the doc-dependent BM25
 *                     factor; a query multiplies it by w_f·idf_f(t)
 * List L occupies [L.off, L.off + L.n). Lists are cut into blocks of PS_BLOCK postings;
 * blk_last[L.blk + j] is the last doc of block j, so a probe gallops over blocks first.
 *
 * Docs are also cut into aligned windows of PS_WIN docs (doc >> PS_WIN_BITS), the unit of
 * search.c's pruning. A list with at least as many postings as there are windows has a window
 * table: win_q[L.win + w] = ceil(255 · (largest ptfn in window w) / L.max_tfn), 0 when the list
 * has no posting there, so qw · max_tfn · q / 255 bounds the list's contributions in window w
 * (search.c adds a relative slack of 2^-20 for rounding). Shorter lists have L.win = PS_NOLIST:
 * their postings in a window are few, and search.c reads them for an exact bound. The tables
 * take at most one byte per posting.
 *
 * A dense list (at least ndocs / PS_DENSE_DIV postings) also has a bitmap of its docs and the
 * number of its postings before each window: dense number D = L.dense owns
 * dense_bits[D · nwords ..] (bit d set when doc d is in the list; PS_WIN / 64 words per
 * window) and dense_base[D · nwin ..], so a probe finds doc d's posting with a bit test and a
 * popcount instead of a search. The bitmaps take at most half the bytes of the lists' own postings.
 * A dense list whose postings hold at most 256 distinct ptfn values (most do: ptfn depends on
 * tf and the field's length alone) also has a palette, those values in palette[L.pal ..], and
 * the byte pq[L.off + i] naming posting i's value in it: a probe reads that byte, a quarter of
 * the float's memory, so the probed postings of a window span a few cache lines, not a dozen.
 */
#define PS_BLOCK     64
#define PS_NOLIST    UINT32_MAX
#define PS_WIN_BITS  9
#define PS_WIN       (1u << PS_WIN_BITS)
#define PS_DENSE_DIV 32

typedef struct ps__plist {
    uint32_t off;   /* first posting */
    uint32_t n;     /* postings */
    uint32_t df;    /* document frequency for idf: == n on a node holding the whole corpus */
    uint32_t blk;   /* first block */
    uint32_t win;   /* first byte of its window table in win_q, or PS_NOLIST */
    uint32_t dense; /* its dense number, or PS_NOLIST */
    uint32_t pal;   /* dense list: its palette's first value, or PS_NOLIST */
    float max_tfn;  /* largest ptfn of the list */
} ps__plist;

typedef struct ps__term {
    uint32_t str;              /* offset of the NUL-terminated term in dict.map.keys.p */
    uint32_t len;              /* bytes, without the NUL */
    uint32_t list[PS_NFIELDS]; /* list number per field, PS_NOLIST if none */
} ps__term;

/* Term dictionary: term bytes -> term number in a byte-keyed ps_map, which also owns the
 * strings (terms are never removed, so their offsets in the map's keys stay put). */
typedef struct ps__dict {
    ps_map map; /* value: term number */
    ps__term *terms;
    uint32_t nterms, terms_cap;
} ps__dict;

int ps__dict_init(ps__dict *d, uint32_t cap);
void ps__dict_free(ps__dict *d);

/* Term number of the `len` bytes at s, or -1. Inline: the query path looks up every token. */
static inline int64_t ps__dict_find(const ps__dict *d, const char *s, size_t len)
{
    const uint64_t *v = ps_map_bytes_get(&d->map, s, len);
    return v ? (int64_t)*v : -1;
}

/* The NUL-terminated bytes of term t; valid until the next intern. */
static inline const char *ps__dict_str(const ps__dict *d, uint32_t t)
{
    return d->map.keys.p + d->terms[t].str;
}
/* Term number of s, adding it (lists all PS_NOLIST) when new; -1 on out of memory. */
int64_t ps__dict_intern(ps__dict *d, const char *s, size_t len);

struct ps_index {
    uint32_t ndocs, dim;
    uint64_t *ids;  /* ndocs: sticker id of each doc */
    float *utility; /* ndocs: non-increasing */
    uint32_t *dl;   /* ndocs × PS_NFIELDS: tokens per field */
    ps_field_stats fs[PS_NFIELDS];

    ps__dict dict;
    ps__plist *lists;
    uint32_t nlists;
    uint32_t *pdocs;
    float *ptfn;
    uint64_t npostings;
    uint32_t *blk_last;
    uint32_t nblocks;
    uint8_t *win_q; /* window tables of the long lists */
    uint64_t nwin_q;
    uint64_t *dense_bits; /* bitmaps of the dense lists, each window's 8 words one cache line */
    void *dense_bits_mem; /* the allocation dense_bits lies in (aligned up in it) */
    uint32_t *dense_base; /* their postings before each window */
    uint32_t ndense, nwords, nwin;
    uint8_t *pq;    /* npostings: palette index of each posting of a list with a palette */
    float *palette; /* the palettes, 256 values each */
    uint32_t npal;

    uint32_t *idmap; /* open addressing: doc + 1 keyed by hash of ids[doc]; 0 = empty */
    uint32_t idmask;

    float *emb;            /* ndocs × dim, or NULL */
    const float *emb_rows; /* the same rows readable in place but not owned (store.c's
                            * mapping of its embeddings file), or NULL */
    ps_emb_fetch_fn fetch;
    void *fetch_ctx;
};

/* BM25's doc-dependent factor, shared by build and load so both give identical floats. */
float ps__tfn(uint32_t tf, uint32_t dl, double avgdl);

/* Allocate an empty index shell for ndocs docs (store.c fills it). */
ps_index_t *ps__index_alloc(uint32_t ndocs, uint32_t dim);
/* Build idmap from ids; PS_EINVAL on a repeated id. */
int ps__index_build_idmap(ps_index_t *ix, ps_err *err);
/* Lay out the blocks and window tables of every list once pdocs/ptfn are filled (allocates
 * blk_last and win_q). */
int ps__index_build_blocks(ps_index_t *ix, ps_err *err);

/**************************************************************************
 * store.c
 *
 * The decoders of the index records (layout in ps/store.h), apart from RocksDB so that
 * tests/fuzz feeds them directly. ps_store_open runs them in this order: the M value; an index
 * of m.ndocs docs (ps__index_alloc) filled by the D records in key order, which must be docs
 * 0, 1, ... ndocs - 1; ps__store_lists_alloc; the P records in key order; then the blocks and
 * the id map (index.c). Every error is PS_ECORRUPT naming the record, or PS_ENOMEM.
 */
typedef struct ps__store_meta {
    uint32_t ndocs, dim, nlists;
    uint64_t npost;
    ps_field_stats fs[PS_NFIELDS];
} ps__store_meta;

int ps__store_meta_decode(const uint8_t *v, size_t len, ps__store_meta *m, ps_err *err);
/* The D record (key k, value v) that must be doc d of ix, into ix's ids, utility and dl. */
int ps__store_doc_decode(ps_index_t *ix, uint32_t d, const uint8_t *k, size_t kl, const uint8_t *v,
                         size_t vl, ps_err *err);
/* ix's lists, pdocs and ptfn for nlists lists of npost postings in all. */
int ps__store_lists_alloc(ps_index_t *ix, uint32_t nlists, uint64_t npost, ps_err *err);
/* The P record that must be list l of nlists: its term into the dictionary, its postings at
 * *off (advanced past them) of the npost, its tfn from ix's dl and field statistics. */
int ps__store_list_decode(ps_index_t *ix, uint32_t l, uint32_t nlists, uint64_t npost,
                          uint64_t *off, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl,
                          ps_err *err);
/* The T value of doc `doc`. OUT fields[f]: malloc'd NUL-terminated texts (caller frees each;
 * all NULL after an error); OUT *image (when image is not NULL): the image reference, malloc'd,
 * or NULL when the record has none. */
int ps__store_fields_decode(uint32_t doc, const uint8_t *v, size_t len, char *fields[PS_NFIELDS],
                            char **image, ps_err *err);

#endif
