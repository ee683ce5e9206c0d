/*
 * enrich.h — the per-image steps of `builder enrich` (cmd_enrich.c): read a file under a size
 * cap, check its header and decode it with Leptonica under a pixel cap, OCR it with Tesseract,
 * and derive a sticker id from a file name.
 */
#ifndef BUILDER_ENRICH_H
#define BUILDER_ENRICH_H

#include <stddef.h>
#include <stdint.h>

#include "ps/err.h"

struct Pix; /* Leptonica's PIX */

/* Read the whole of `path` if it holds at most max_bytes. OUT *data (caller frees), *len.
 * Errors: PS_EIO (cannot open or read), PS_ETOOBIG (larger than max_bytes). */
int builder_read_file(const char *path, size_t max_bytes, unsigned char **data, size_t *len,
                      ps_err *err);

/* Decode PNG, JPEG, GIF (the first frame) or WebP from memory. The header is read first and
 * an image of more than max_pixels pixels is refused before it is decoded. OUT *mime
 * ("image/png" ..., static). Returns the image (free with pixDestroy) or NULL with err:
 * PS_EPARSE (not an image, an unsupported format, corrupt or truncated), PS_ETOOBIG. */
struct Pix *builder_image_decode(const unsigned char *data, size_t len, uint64_t max_pixels,
                                 const char **mime, ps_err *err);

/* One Tesseract engine; one per thread (an engine is not shared between threads). */
typedef struct builder_ocr builder_ocr_t;

/* lang: Tesseract's language list ("chi_sim+eng"); min_conf: keep text lines whose
 * confidence (0..1, Tesseract's 0..100 divided by 100) is at least this. Returns NULL on
 * failure with err (PS_EINVAL: the languages' traineddata is not installed). */
builder_ocr_t *builder_ocr_new(const char *lang, double min_conf, ps_err *err);
void builder_ocr_free(builder_ocr_t *o);

/* OCR a decoded image: grayscale (transparency over white), small images upscaled. OUT *text:
 * the kept lines, trimmed, spaces between CJK characters removed, '\n'-joined ("" when none;
 * caller frees). Errors: PS_EINTERNAL (Tesseract failed), PS_ENOMEM. */
int builder_ocr_run(builder_ocr_t *o, struct Pix *pix, char **text, ps_err *err);

/* Remove, in place, every run of spaces between two CJK characters (Han, kana, CJK and
 * full-width punctuation): Tesseract separates Chinese characters by spaces. */
void builder_cjk_despace(char *s);

/* The id of an image found in a directory: its file name without the extension when that is
 * a decimal number in 1..2^64-1 (no sign, no leading zero); otherwise the 63-bit hash
 * ps_hash_bytes(relpath) & (2^63-1) of its path relative to the directory (0 mapped to 1). */
uint64_t builder_enrich_id(const char *relpath);

#endif
