/*
 * npy.c — sticker embeddings as a float32 matrix in NumPy's .npy format (DESIGN §3), one row
 * per sticker in corpus order.
 *
 * File layout (numpy.lib.format, versions 1.0, 2.0 and 3.0 are read; 1.0 is written):
 *   bytes 0..5    magic "\x93NUMPY"
 *   byte  6       major version: 1, 2 or 3
 *   byte  7       minor version: 0
 *   bytes 8..9    HLEN, little-endian uint16            (version 1)
 *   bytes 8..11   HLEN, little-endian uint32            (versions 2 and 3)
 *   HLEN bytes    a Python dict literal, ASCII (UTF-8 in version 3), padded with spaces and
 *                 ending in '\n'; we require exactly these three keys, in any order:
 *                   {'descr': '<f4', 'fortran_order': False, 'shape': (ROWS, COLS), }
 *   then          ROWS * COLS little-endian IEEE float32, row-major; nothing after them.
 * The writer pads the header so the data starts at a multiple of 64 bytes, as NumPy does.
 * A big matrix (543,098 × 512 floats = 1.1 GB) is read with one fread and written with one
 * fwrite on little-endian hosts.
 */
#include "ps/corpus.h"
#include "ps/alloc.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NPY_MAGIC           "\x93NUMPY"
#define NPY_MAGIC_LEN       6
#define NPY_MAX_HEADER      (1u << 16) /* a float32 2-D header is ~70 bytes; refuse huge ones */
#define NPY_HOST_BIG_ENDIAN (__BYTE_ORDER__ == __ORDER_BIG_ENDIAN__)

/**************************************************************************
 * Header dict parser: a tiny subset of Python literals (quoted strings without escapes,
 * True/False, tuples of non-negative integers).
 */
typedef struct hcur {
    const char *s;
    size_t n, i;
} hcur;

static void h_ws(hcur *c)
{
    while (c->i < c->n && (c->s[c->i] == ' ' || c->s[c->i] == '\t' || c->s[c->i] == '\n')) c->i++;
}

static int h_char(hcur *c, char ch)
{
    h_ws(c);
    if (c->i < c->n && c->s[c->i] == ch) {
        c->i++;
        return 1;
    }
    return 0;
}

/* A '...' or "..." literal; OUT *p, *len point into the header. */
static int h_str(hcur *c, const char **p, size_t *len)
{
    h_ws(c);
    if (c->i >= c->n || (c->s[c->i] != '\'' && c->s[c->i] != '"')) return -1;
    char q = c->s[c->i++];
    size_t st = c->i;
    while (c->i < c->n && c->s[c->i] != q) {
        if (c->s[c->i] == '\\') return -1;
        c->i++;
    }
    if (c->i >= c->n) return -1;
    *p = c->s + st;
    *len = c->i - st;
    c->i++;
    return 0;
}

static int h_word(hcur *c, const char *w)
{
    size_t n = strlen(w);
    h_ws(c);
    if (c->n - c->i < n || memcmp(c->s + c->i, w, n) != 0) return 0;
    c->i += n;
    return 1;
}

/* "(d0, d1, ...)" with an optional trailing comma and Python 2 'L' suffixes. Returns the
 * number of dimensions (dims beyond 3 are counted but not stored), or -1. */
static int h_shape(hcur *c, size_t dim[3], int *overflow)
{
    int nd = 0;
    if (!h_char(c, '(')) return -1;
    for (;;) {
        if (h_char(c, ')')) return nd;
        h_ws(c);
        if (c->i >= c->n || c->s[c->i] < '0' || c->s[c->i] > '9') return -1;
        size_t v = 0;
        while (c->i < c->n && c->s[c->i] >= '0' && c->s[c->i] <= '9') {
            size_t d = (size_t)(c->s[c->i++] - '0');
            if (v > (SIZE_MAX - d) / 10)
                *overflow = 1;
            else
                v = v * 10 + d;
        }
        if (c->i < c->n && c->s[c->i] == 'L') c->i++;
        if (nd < 3) dim[nd] = v;
        nd++;
        if (!h_char(c, ',')) return h_char(c, ')') ? nd : -1;
    }
}

static int parse_header(const char *path, const char *h, size_t n, size_t *rows, size_t *cols,
                        ps_err *err)
{
    hcur c = {h, n, 0};
    int have_descr = 0, have_fortran = 0, have_shape = 0;
    if (!h_char(&c, '{'))
        return ps_err_set(err, PS_EPARSE, "%s: header is not a Python dict", path);
    while (!h_char(&c, '}')) {
        const char *k, *v;
        size_t kn, vn;
        if (h_str(&c, &k, &kn) || !h_char(&c, ':'))
            return ps_err_set(err, PS_EPARSE, "%s: malformed header at byte %zu", path, c.i);
        if (kn == 5 && memcmp(k, "descr", 5) == 0 && !have_descr) {
            if (h_str(&c, &v, &vn))
                return ps_err_set(err, PS_EPARSE, "%s: header 'descr' is not a string", path);
            if (vn != 3 || memcmp(v, "<f4", 3) != 0)
                return ps_err_set(err, PS_EPARSE,
                                  "%s: dtype '%.*s' is not supported (need '<f4', little-endian "
                                  "float32)",
                                  path, (int)(vn > 32 ? 32 : vn), v);
            have_descr = 1;
        } else if (kn == 13 && memcmp(k, "fortran_order", 13) == 0 && !have_fortran) {
            if (h_word(&c, "True"))
                return ps_err_set(err, PS_EPARSE,
                                  "%s: fortran_order is True (need a C-order array)", path);
            if (!h_word(&c, "False"))
                return ps_err_set(err, PS_EPARSE, "%s: header 'fortran_order' is not a bool", path);
            have_fortran = 1;
        } else if (kn == 5 && memcmp(k, "shape", 5) == 0 && !have_shape) {
            size_t dim[3] = {0, 0, 0};
            int overflow = 0, nd = h_shape(&c, dim, &overflow);
            if (nd < 0)
                return ps_err_set(err, PS_EPARSE, "%s: header 'shape' is not a tuple of integers",
                                  path);
            if (nd != 2)
                return ps_err_set(err, PS_EPARSE, "%s: array is %d-D (need a 2-D matrix)", path,
                                  nd);
            if (overflow) return ps_err_set(err, PS_EPARSE, "%s: shape overflows", path);
            *rows = dim[0];
            *cols = dim[1];
            have_shape = 1;
        } else
            return ps_err_set(err, PS_EPARSE, "%s: unexpected or repeated header key '%.*s'", path,
                              (int)(kn > 32 ? 32 : kn), k);
        if (!h_char(&c, ',') && !h_char(&c, '}'))
            return ps_err_set(err, PS_EPARSE, "%s: malformed header at byte %zu", path, c.i);
        if (c.s[c.i - 1] == '}') break;
    }
    h_ws(&c);
    if (c.i != n)
        return ps_err_set(err, PS_EPARSE, "%s: junk after the header dict at byte %zu", path, c.i);
    if (!have_descr || !have_fortran || !have_shape)
        return ps_err_set(err, PS_EPARSE, "%s: header lacks '%s'", path,
                          !have_descr     ? "descr"
                          : !have_fortran ? "fortran_order"
                                          : "shape");
    return 0;
}

#if NPY_HOST_BIG_ENDIAN
static void swap32(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t v;
        memcpy(&v, &x[i], 4);
        v = __builtin_bswap32(v);
        memcpy(&x[i], &v, 4);
    }
}
#endif

/**************************************************************************
 * Read
 */
int ps_npy_read(const char *path, ps_matrix *out, ps_err *err)
{
    unsigned char pre[12];
    char *hdr = NULL;
    float *data = NULL;
    struct stat st;
    int rc = 0;

    if (!out) return ps_err_set(err, PS_EINVAL, "out is NULL");
    memset(out, 0, sizeof *out);
    if (!path) return ps_err_set(err, PS_EINVAL, "path is NULL");
    FILE *f = fopen(path, "rb");
    if (!f) return ps_err_set(err, PS_EIO, "%s: cannot open: %s", path, strerror(errno));
    if (fstat(fileno(f), &st) || !S_ISREG(st.st_mode)) {
        rc = ps_err_set(err, PS_EIO, "%s: not a regular file", path);
        goto err;
    }
    size_t fsize = (size_t)st.st_size, got = fread(pre, 1, 10, f);
    if (got < 10 || memcmp(pre, NPY_MAGIC, NPY_MAGIC_LEN) != 0) {
        rc = ps_err_set(err, PS_EPARSE, "%s: not a .npy file (bad magic)", path);
        goto err;
    }
    unsigned major = pre[6], minor = pre[7];
    size_t off, hlen;
    if (major == 1 && minor == 0) {
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8;
        off = 10;
    } else if ((major == 2 || major == 3) && minor == 0) {
        if (fread(pre + 10, 1, 2, f) != 2) {
            rc = ps_err_set(err, PS_EPARSE, "%s: truncated header", path);
            goto err;
        }
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
        off = 12;
    } else {
        rc = ps_err_set(err, PS_EPARSE, "%s: unsupported .npy version %u.%u", path, major, minor);
        goto err;
    }
    if (hlen > NPY_MAX_HEADER) {
        rc = ps_err_set(err, PS_EPARSE, "%s: header of %zu bytes is too long", path, hlen);
        goto err;
    }
    if (!(hdr = ps_malloc(hlen + 1))) {
        rc = ps_err_set(err, PS_ENOMEM, "%s: out of memory for the header", path);
        goto err;
    }
    if (fread(hdr, 1, hlen, f) != hlen) {
        rc = ps_err_set(err, PS_EPARSE, "%s: truncated header", path);
        goto err;
    }
    size_t rows = 0, cols = 0;
    if ((rc = parse_header(path, hdr, hlen, &rows, &cols, err))) goto err;
    off += hlen;

    if (cols && rows > SIZE_MAX / sizeof(float) / cols) {
        rc = ps_err_set(err, PS_EPARSE, "%s: shape (%zu, %zu) overflows", path, rows, cols);
        goto err;
    }
    size_t nbytes = rows * cols * sizeof(float), have = fsize > off ? fsize - off : 0;
    if (have != nbytes) {
        rc = ps_err_set(err, PS_EPARSE,
                        "%s: %s: shape (%zu, %zu) needs %zu bytes of data, the file has %zu", path,
                        have < nbytes ? "truncated" : "trailing bytes", rows, cols, nbytes, have);
        goto err;
    }
    if (!(data = ps_malloc(nbytes ? nbytes : 1))) {
        rc = ps_err_set(err, PS_ENOMEM, "%s: out of memory for %zu bytes of data", path, nbytes);
        goto err;
    }
    if (fread(data, 1, nbytes, f) != nbytes) {
        rc = ferror(f) ? ps_err_set(err, PS_EIO, "%s: read failed: %s", path, strerror(errno))
                       : ps_err_set(err, PS_EPARSE, "%s: truncated data", path);
        goto err;
    }
#if NPY_HOST_BIG_ENDIAN
    swap32(data, rows * cols);
#endif
    fclose(f);
    ps_free(hdr);
    out->data = data;
    out->rows = rows;
    out->cols = cols;
    return 0;
err:
    fclose(f);
    ps_free(hdr);
    ps_free(data);
    return rc;
}

void ps_matrix_free(ps_matrix *m)
{
    if (!m) return;
    ps_free(m->data);
    memset(m, 0, sizeof *m);
}

/**************************************************************************
 * Write: to "<path>.tmp.<pid>", then rename, so a reader never sees half a matrix.
 */

size_t ps_npy_header(char hdr[PS_NPY_HEADER_MAX], size_t rows, size_t cols)
{
    /* Preamble (10 bytes) + dict + spaces + '\n', a multiple of 64 bytes in all. */
    memcpy(hdr, NPY_MAGIC "\x01\x00", 8);
    int dn =
        snprintf(hdr + 10, PS_NPY_HEADER_MAX - 10,
                 "{'descr': '<f4', 'fortran_order': False, 'shape': (%zu, %zu), }", rows, cols);
    size_t total = (10 + (size_t)dn + 1 + 63) / 64 * 64;
    memset(hdr + 10 + dn, ' ', total - 10 - (size_t)dn - 1);
    hdr[total - 1] = '\n';
    hdr[8] = (char)((total - 10) & 0xff);
    hdr[9] = (char)((total - 10) >> 8);
    return total;
}

int ps_npy_write(const char *path, const float *data, size_t rows, size_t cols, ps_err *err)
{
    char hdr[PS_NPY_HEADER_MAX], *tmp = NULL;
    int rc = 0;
    FILE *f = NULL;

    if (!path) return ps_err_set(err, PS_EINVAL, "path is NULL");
    if (cols && rows > SIZE_MAX / sizeof(float) / cols)
        return ps_err_set(err, PS_EINVAL, "%s: shape (%zu, %zu) overflows", path, rows, cols);
    size_t nfloat = rows * cols;
    if (!data && nfloat) return ps_err_set(err, PS_EINVAL, "%s: data is NULL", path);

    size_t total = ps_npy_header(hdr, rows, cols);

    size_t tn = strlen(path) + 32;
    if (!(tmp = ps_malloc(tn))) return ps_err_set(err, PS_ENOMEM, "%s: out of memory", path);
    snprintf(tmp, tn, "%s.tmp.%ld", path, (long)getpid());
    if (!(f = fopen(tmp, "wb"))) {
        rc = ps_err_set(err, PS_EIO, "%s: cannot create: %s", tmp, strerror(errno));
        goto err;
    }
    if (fwrite(hdr, 1, total, f) != total) goto ioerr;
#if NPY_HOST_BIG_ENDIAN
    for (size_t i = 0; i < nfloat; i++) {
        uint32_t v;
        memcpy(&v, &data[i], 4);
        v = __builtin_bswap32(v);
        if (fwrite(&v, 4, 1, f) != 1) goto ioerr;
    }
#else
    if (nfloat && fwrite(data, sizeof(float), nfloat, f) != nfloat) goto ioerr;
#endif
    FILE *done = f;
    f = NULL;
    if (fclose(done)) goto ioerr;
    if (rename(tmp, path)) {
        rc = ps_err_set(err, PS_EIO, "%s: cannot rename %s into place: %s", path, tmp,
                        strerror(errno));
        goto err;
    }
    ps_free(tmp);
    return 0;
ioerr:
    rc = ps_err_set(err, PS_EIO, "%s: write failed: %s", tmp, strerror(errno));
err:
    if (f) fclose(f);
    if (tmp) unlink(tmp);
    ps_free(tmp);
    return rc;
}
