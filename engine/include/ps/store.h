/*
 * store.h — an index directory: one RocksDB database holding everything a node serves
 * (postings, per-sticker data, stored fields, user profiles, and embeddings beside it), written in
 * one sorted pass as an SST file and ingested, opened read-only and loaded into memory for scoring.
 * Embeddings and stored fields stay on disk and are read per query for the few stickers that need
 * them.
 *
 * Files: the RocksDB database, and embeddings.f32 = ndocs rows of dim little-endian float32 in
 * doc order (mapped read-only; a personalized query copies the ~R rows it needs).
 *
 * Key layout (numbers big-endian in keys, little-endian in values; varint = LEB128):
 *   'D' u32 doc      -> u64 sticker id | f32 utility | u32 dl[5]                 (32 bytes)
 *   'I'              -> build information, a JSON object (for people and tools)
 *   'M'              -> "PSIX" | u32 format (1) | u32 ndocs | u32 dim | u32 nlists |
 *                       u64 npostings | per field: u32 N_f, u64 tokens_f
 *   'P' u8 field term-> varint n | varint df | n × varint doc delta (first from 0) |
 *                       n × varint tf
 *   'T' u32 doc      -> per field: varint len | len bytes of UTF-8 text, then, only for a
 *                       sticker with a picture: varint len | len bytes of its image reference
 *                       (a URL or a path under the image root, ps_image_check); indexes
 *                       written before images have none, which reads as "no image"
 *   'U' user         -> ps_profile encoding (profile.h)
 *   'X' u64 id       -> u32 doc
 */
#ifndef PS_STORE_H
#define PS_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "ps/err.h"
#include "ps/fields.h"
#include "ps/index.h"
#include "ps/profile.h"

#define PS_STORE_FORMAT   1
#define PS_STORE_EMB_FILE "embeddings.f32"

typedef struct ps_store_input {
    const ps_index_t *ix;
    const float *emb;        /* embeddings, one row of dim floats per sticker */
    const uint32_t *emb_row; /* row of emb for each doc (NULL: row = doc) */
    /* Stored text of field f of doc d (borrowed; NULL or len 0 = empty). */
    const char *(*text)(void *ctx, uint32_t doc, int field, size_t *len);
    void *text_ctx;
    /* The image reference of doc d (borrowed; NULL or len 0 = none), or NULL: no images. Called
     * with text_ctx. */
    const char *(*image)(void *ctx, uint32_t doc, size_t *len);
    size_t nprofiles;
    const char *const *users;   /* nprofiles user names */
    const ps_profile *profiles; /* nprofiles profiles */
    const char *info_json;      /* build information (may be NULL) */
} ps_store_input;

/* Write a new index directory at `dir` (created; must not exist or be empty). With
 * in->ix == NULL only the profiles are written: a profiles directory (ps_profiles_open).
 * Errors: PS_EEXIST, PS_EIO, PS_ESTORE, PS_ENOMEM, PS_EINVAL (e.g. a repeated user). */
int ps_store_write(const char *dir, const ps_store_input *in, ps_err *err);

/* Threads: once opened, a store may be read from any number of threads at once
 * (ps_store_index, ps_store_profile, ps_store_fields and the index's embedding fetch are
 * RocksDB reads and reads of a read-only mapping); opening and closing belong to one owner. */
typedef struct ps_store ps_store_t;

/* Open an index directory read-only and load its index into memory.
 * Errors: PS_ENOTFOUND (no index there), PS_ECORRUPT, PS_ESTORE, PS_ENOMEM.
 * Caller owns the result (ps_store_close). */
ps_store_t *ps_store_open(const char *dir, ps_err *err);
void ps_store_close(ps_store_t *st);

/* The loaded index (borrowed; valid until ps_store_close). Its embeddings are read from the
 * store on demand. */
const ps_index_t *ps_store_index(const ps_store_t *st);

/* Profile of `user`. OUT prof (free with ps_profile_clear). PS_ENOTFOUND if none. */
int ps_store_profile(ps_store_t *st, const char *user, ps_profile *prof, ps_err *err);

/* Stored text of every field of doc `doc`. OUT fields[f]: malloc'd NUL-terminated strings
 * (caller frees each). PS_ENOTFOUND for a doc out of range. */
int ps_store_fields(ps_store_t *st, uint32_t doc, char *fields[PS_NFIELDS], ps_err *err);
/* The same, and OUT *image: the doc's image reference, malloc'd (caller frees), or NULL when it
 * has none (image may be NULL: not wanted). One read for both. */
int ps_store_fields_image(ps_store_t *st, uint32_t doc, char *fields[PS_NFIELDS], char **image,
                          ps_err *err);

/* The build information JSON (malloc'd, caller frees), or NULL. */
char *ps_store_info(ps_store_t *st);

/* A profiles directory (profiles only, read-only), e.g. the one `builder build --shards`
 * writes for the broker. Caller owns the result (ps_profiles_close). PS_ENOTFOUND if dir
 * holds no database. */
typedef struct ps_profiles ps_profiles_t;
ps_profiles_t *ps_profiles_open(const char *dir, ps_err *err);
/* Profile of `user`; OUT prof (free with ps_profile_clear). PS_ENOTFOUND if none. */
int ps_profiles_get(ps_profiles_t *p, const char *user, ps_profile *prof, ps_err *err);
void ps_profiles_close(ps_profiles_t *p);

#endif
