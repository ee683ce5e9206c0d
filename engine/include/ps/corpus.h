/*
 * corpus.h — the corpus input formats of DESIGN §3: sticker JSON Lines, float32 .npy
 * embeddings, and the TSV click log (user \t query \t sticker_id).
 */
#ifndef PS_CORPUS_H
#define PS_CORPUS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ps/err.h"
#include "ps/fields.h"

#define PS_JSONL_MAX_LINE_DEFAULT (1u << 20) /* 1 MiB */
#define PS_IMAGE_MAX              1024       /* bytes of a sticker's image reference */

/* One sticker as read from a JSONL line. Each field is UTF-8 text; a field given as an array
 * (keywords, queries, ocr lines) is joined with '\n'. ocr lines given with a confidence keep
 * only those with confidence >= 0.7. Absent fields are "" (never NULL after a parse). */
typedef struct ps_sticker_rec {
    uint64_t id;
    char *field[PS_NFIELDS];
    size_t field_len[PS_NFIELDS];
    char *image;      /* the picture (stored, not indexed): NULL = none, else a reference that */
    size_t image_len; /* passes ps_image_check, NUL-terminated at image_len */
} ps_sticker_rec;

/* Parse one JSON object (a line without its newline). On success the record owns fresh
 * strings (free with ps_sticker_rec_clear). Accepted keys: id (unsigned 64-bit integer, or a
 * string of digits), ocr|paddleocr, keywords|llava_keywords, desc|llava34b_image_desc,
 * emotion|llava34b_image_emotions, queries|raw_queries, image (a string or null: see
 * ps_image_check); other keys are ignored.
 * Errors (message names the field): PS_EPARSE (not JSON, not an object, missing/invalid id,
 * wrong field type, a bad image reference), PS_EUTF8, PS_ENOMEM. On error `out` holds nothing
 * to free. */
int ps_sticker_parse(const char *line, size_t len, ps_sticker_rec *out, ps_err *err);
void ps_sticker_rec_clear(ps_sticker_rec *r);

/* Check a sticker's image reference s[0..n): either an http:// or https:// URL, or a relative
 * path under an image root: not empty, not absolute ('/'), no empty, "." or ".." component, no
 * backslash. Either way 1..PS_IMAGE_MAX bytes of valid UTF-8 without control bytes (< 0x20,
 * 0x7f). Returns 0, or PS_EPARSE with a message starting "field image: ". */
int ps_image_check(const char *s, size_t n, ps_err *err);
/* 1 when s (NUL-terminated) starts with http:// or https://, else 0. */
int ps_image_is_url(const char *s);

/* Streaming JSONL reader. Blank lines are skipped. */
typedef struct ps_jsonl ps_jsonl_t;
/* max_line: longest accepted line in bytes (0 = PS_JSONL_MAX_LINE_DEFAULT). */
ps_jsonl_t *ps_jsonl_open(const char *path, size_t max_line, ps_err *err);
void ps_jsonl_close(ps_jsonl_t *r);
/* Read the next sticker. Returns 1 with *out filled, 0 at end of file, or a negative code
 * whose message starts with "<path>:<line>: " (PS_ETOOBIG for an over-long line). After an
 * error the reader can continue with the next line. */
int ps_jsonl_next(ps_jsonl_t *r, ps_sticker_rec *out, ps_err *err);
/* Line number of the line last returned (1-based). */
size_t ps_jsonl_lineno(const ps_jsonl_t *r);

/* Write one sticker as a JSON line to f: {"id":<integer>,"ocr":"…","keywords":"…","desc":"…",
 * "emotion":"…","queries":"…","image":"…"}, leaving out empty fields. field_len[f] is
 * authoritative (a NULL field[f] with length 0 is empty); image_len 0 = no image. Errors:
 * PS_EUTF8 / PS_EINVAL (invalid UTF-8 or a NUL byte in a field, named in the message),
 * PS_EPARSE (an image failing ps_image_check), PS_EIO. */
int ps_sticker_write(FILE *f, const ps_sticker_rec *r, ps_err *err);

/* A float32 matrix, row-major. */
typedef struct ps_matrix {
    float *data; /* rows * cols floats, owned */
    size_t rows, cols;
} ps_matrix;

/* Read a little-endian float32 C-order 2-D .npy file (versions 1.0–3.0). Errors: PS_EIO,
 * PS_EPARSE (bad magic/header, wrong dtype, fortran order, not 2-D, truncated data). */
int ps_npy_read(const char *path, ps_matrix *out, ps_err *err);
/* Write a float32 2-D .npy (version 1.0). */
int ps_npy_write(const char *path, const float *data, size_t rows, size_t cols, ps_err *err);
void ps_matrix_free(ps_matrix *m);

#define PS_NPY_HEADER_MAX 128
/* The NumPy v1.0 header of a float32 C-order rows × cols matrix, for writers that stream the
 * rows themselves. Returns its length (a multiple of 64, at most PS_NPY_HEADER_MAX). */
size_t ps_npy_header(char hdr[PS_NPY_HEADER_MAX], size_t rows, size_t cols);

/* The click log, with users and queries interned (string tables, first-appearance order).
 * A zeroed struct is an empty log. The struct owns its arrays and strings: do not copy it by
 * value and keep using both copies. */
typedef struct ps_clicklog {
    size_t n;          /* clicks */
    uint32_t *user;    /* n: index into users */
    uint32_t *query;   /* n: index into queries */
    uint64_t *sticker; /* n: sticker ids */
    char **users;
    size_t nusers;
    char **queries;
    size_t nqueries;
    struct ps__clicklog_tab *tab; /* private: interning tables and capacities (NULL when zeroed) */
} ps_clicklog;

/* Read a TSV click log: user \t query \t sticker_id per line; blank lines skipped. Errors name
 * "<path>:<line>": PS_EPARSE (wrong column count, bad id, empty user or query), PS_EUTF8,
 * PS_ETOOBIG (line over 64 KiB), PS_EIO. */
int ps_clicklog_read(const char *path, ps_clicklog *out, ps_err *err);
/* Append one click (strings are copied and interned). */
int ps_clicklog_add(ps_clicklog *log, const char *user, const char *query, uint64_t sticker,
                    ps_err *err);
void ps_clicklog_free(ps_clicklog *log);

#endif
