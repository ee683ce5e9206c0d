/*
 * snapshot.c — shard snapshot manifests (format in snapshot.h): written by the builder beside
 * each shard's index, parsed and checked by the shard when a snapshot is staged or served.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "ps/file.h"
#include "ps/snapshot.h"
#include "ps/alloc.h"

void ps_snapshot_clear(ps_snapshot *s)
{
    if (!s) return;
    ps_free(s->files);
    memset(s, 0, sizeof *s);
}

static int name_ok(const char *n)
{
    size_t len = strlen(n);
    if (len == 0 || len > PS_SNAPSHOT_MAX_NAME || n[0] == '.') return 0;
    for (size_t i = 0; i < len; i++) {
        char c = n[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* Files of an index directory that belong in a snapshot. */
static int wanted(const char *n)
{
    return name_ok(n) && strcmp(n, PS_SNAPSHOT_FILE) != 0 && strncmp(n, "LOG", 3) != 0 &&
           strcmp(n, "LOCK") != 0;
}

int ps_file_crc32(const char *path, uint32_t *crc, uint64_t *bytes, ps_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ps_err_set(err, PS_EIO, "%s: %s", path, strerror(errno));
    enum { CHUNK = 1 << 20 };
    unsigned char *buf = ps_malloc(CHUNK);
    if (!buf) {
        close(fd);
        return ps_err_set(err, PS_ENOMEM, "out of memory checksumming %s", path);
    }
    uLong c = crc32(0L, Z_NULL, 0);
    uint64_t n = 0;
    ssize_t r;
    while ((r = read(fd, buf, CHUNK)) > 0) {
        c = crc32(c, buf, (uInt)r);
        n += (uint64_t)r;
    }
    int e = errno;
    ps_free(buf);
    close(fd);
    if (r < 0) return ps_err_set(err, PS_EIO, "reading %s: %s", path, strerror(e));
    *crc = (uint32_t)c;
    *bytes = n;
    return 0;
}

static int cmp_file(const void *a, const void *b)
{
    return strcmp(((const ps_snapshot_file *)a)->name, ((const ps_snapshot_file *)b)->name);
}

char *ps_snapshot_json(const ps_snapshot *s)
{
    json_t *files = json_array();
    for (size_t i = 0; files && i < s->nfiles; i++)
        if (json_array_append_new(files, json_pack("{s:s, s:I, s:I}", "name", s->files[i].name,
                                                   "bytes", (json_int_t)s->files[i].bytes, "crc32",
                                                   (json_int_t)s->files[i].crc32))) {
            json_decref(files);
            return NULL;
        }
    if (!files) return NULL;
    json_t *o = json_pack("{s:i, s:I, s:s, s:I, s:I, s:I, s:o}", "format", PS_SNAPSHOT_FORMAT,
                          "version", (json_int_t)s->version, "fingerprint", s->fingerprint, "shard",
                          (json_int_t)s->shard, "shards", (json_int_t)s->shards, "stickers",
                          (json_int_t)s->stickers, "files", files);
    /* version is a u64: jansson holds json_int_t (int64); versions stay below 2^63. */
    char *out = o ? json_dumps(o, JSON_INDENT(1)) : NULL;
    json_decref(o);
    return out;
}

int ps_snapshot_write(const char *dir, ps_snapshot *s, ps_err *err)
{
    char path[4096];
    DIR *d = opendir(dir);
    if (!d) return ps_err_set(err, PS_EIO, "%s: %s", dir, strerror(errno));
    size_t cap = 0;
    int rc = 0;
    struct dirent *de;
    ps_free(s->files);
    s->files = NULL;
    s->nfiles = 0;
    while (!rc && (de = readdir(d)) != NULL) {
        if (!wanted(de->d_name)) continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (s->nfiles == PS_SNAPSHOT_MAX_FILES) {
            rc = ps_err_set(err, PS_ETOOBIG, "%s: more than %d files", dir, PS_SNAPSHOT_MAX_FILES);
            break;
        }
        if (s->nfiles == cap) {
            cap = cap ? cap * 2 : 16;
            ps_snapshot_file *f = ps_realloc(s->files, cap * sizeof *f);
            if (!f) {
                rc = ps_err_set(err, PS_ENOMEM, "out of memory listing %s", dir);
                break;
            }
            s->files = f;
        }
        ps_snapshot_file *f = &s->files[s->nfiles];
        memcpy(f->name, de->d_name, strlen(de->d_name) + 1); /* wanted(): <= MAX_NAME bytes */
        if (!(rc = ps_file_crc32(path, &f->crc32, &f->bytes, err))) s->nfiles++;
    }
    closedir(d);
    if (rc) return rc;
    if (s->nfiles) qsort(s->files, s->nfiles, sizeof *s->files, cmp_file);
    char *json = ps_snapshot_json(s);
    if (!json) return ps_err_set(err, PS_ENOMEM, "out of memory writing the manifest");
    snprintf(path, sizeof path, "%s/%s", dir, PS_SNAPSHOT_FILE);
    if (ps_write_file_atomic(path, json) != 0)
        rc = ps_err_set(err, PS_EIO, "writing %s: %s", path, strerror(errno));
    ps_free(json);
    return rc;
}

/* A JSON integer field in [min, max]. */
static int get_uint(json_t *o, const char *key, uint64_t min, uint64_t max, uint64_t *out,
                    ps_err *err)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        return ps_err_set(err, PS_EINVAL, "snapshot %s: an integer is required", key);
    json_int_t x = json_integer_value(v);
    if (x < 0 || (uint64_t)x < min || (uint64_t)x > max)
        return ps_err_set(err, PS_EINVAL, "snapshot %s: %lld is out of range", key, (long long)x);
    *out = (uint64_t)x;
    return 0;
}

int ps_snapshot_parse(const char *json, size_t len, ps_snapshot *s, ps_err *err)
{
    memset(s, 0, sizeof *s);
    if (len > PS_SNAPSHOT_MAX_JSON)
        return ps_err_set(err, PS_ETOOBIG, "snapshot: manifest of %zu bytes, more than %u", len,
                          PS_SNAPSHOT_MAX_JSON);
    json_error_t je;
    json_t *o = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!o || !json_is_object(o)) {
        json_decref(o);
        return ps_err_set(err, PS_EPARSE, "snapshot: not a JSON object (%s)",
                          o ? "another JSON value" : je.text);
    }
    uint64_t format = 0, shard = 0, shards = 0;
    int rc = get_uint(o, "format", 0, UINT32_MAX, &format, err);
    if (!rc && format != PS_SNAPSHOT_FORMAT)
        rc = ps_err_set(err, PS_EINVAL, "snapshot format: %llu, this build reads format %d",
                        (unsigned long long)format, PS_SNAPSHOT_FORMAT);
    if (!rc) rc = get_uint(o, "version", 1, INT64_MAX, &s->version, err);
    if (!rc) rc = get_uint(o, "shards", 1, 1024, &shards, err);
    if (!rc) rc = get_uint(o, "shard", 0, shards ? shards - 1 : 0, &shard, err);
    if (!rc) rc = get_uint(o, "stickers", 0, UINT32_MAX, &s->stickers, err);
    const char *fp = json_string_value(json_object_get(o, "fingerprint"));
    if (!rc) {
        size_t n = fp ? strlen(fp) : 0;
        int hex = n == 16;
        for (size_t i = 0; hex && i < n; i++)
            hex = (fp[i] >= '0' && fp[i] <= '9') || (fp[i] >= 'a' && fp[i] <= 'f');
        if (!hex)
            rc = ps_err_set(err, PS_EINVAL, "snapshot fingerprint: 16 hex digits required");
        else
            memcpy(s->fingerprint, fp, 17);
    }
    json_t *files = json_object_get(o, "files");
    if (!rc && (!json_is_array(files) || json_array_size(files) == 0))
        rc = ps_err_set(err, PS_EINVAL, "snapshot files: a non-empty array is required");
    if (!rc && json_array_size(files) > PS_SNAPSHOT_MAX_FILES)
        rc = ps_err_set(err, PS_ETOOBIG, "snapshot files: more than %d", PS_SNAPSHOT_MAX_FILES);
    if (!rc && !(s->files = ps_calloc(json_array_size(files), sizeof *s->files)))
        rc = ps_err_set(err, PS_ENOMEM, "out of memory for the manifest");
    for (size_t i = 0; !rc && i < json_array_size(files); i++) {
        json_t *f = json_array_get(files, i);
        const char *name = json_string_value(json_object_get(f, "name"));
        uint64_t bytes = 0, crc = 0;
        if (!json_is_object(f) || !name || !name_ok(name) || !wanted(name)) {
            rc = ps_err_set(err, PS_EINVAL,
                            "snapshot files[%zu].name: missing or not a plain file name", i);
            break;
        }
        if ((rc = get_uint(f, "bytes", 0, INT64_MAX, &bytes, err)) ||
            (rc = get_uint(f, "crc32", 0, UINT32_MAX, &crc, err))) {
            ps_err_prefix(err, "files[%zu]", i);
            break;
        }
        for (size_t j = 0; j < s->nfiles; j++)
            if (strcmp(s->files[j].name, name) == 0)
                rc = ps_err_set(err, PS_EINVAL, "snapshot files: %s listed twice", name);
        if (rc) break;
        ps_snapshot_file *sf = &s->files[s->nfiles++];
        snprintf(sf->name, sizeof sf->name, "%s", name);
        sf->bytes = bytes;
        sf->crc32 = (uint32_t)crc;
    }
    json_decref(o);
    if (rc) {
        ps_snapshot_clear(s);
        return rc;
    }
    s->shard = (uint32_t)shard;
    s->shards = (uint32_t)shards;
    return 0;
}

int ps_snapshot_read(const char *dir, ps_snapshot *s, ps_err *err)
{
    char path[4096];
    memset(s, 0, sizeof *s);
    snprintf(path, sizeof path, "%s/%s", dir, PS_SNAPSHOT_FILE);
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT) return ps_err_set(err, PS_ENOTFOUND, "%s: no snapshot manifest", dir);
        return ps_err_set(err, PS_EIO, "%s: %s", path, strerror(errno));
    }
    char *buf = ps_malloc(PS_SNAPSHOT_MAX_JSON + 1);
    size_t n = buf ? fread(buf, 1, PS_SNAPSHOT_MAX_JSON + 1, f) : 0;
    fclose(f);
    if (!buf) return ps_err_set(err, PS_ENOMEM, "out of memory reading %s", path);
    int rc = ps_snapshot_parse(buf, n, s, err);
    ps_free(buf);
    if (rc) ps_err_prefix(err, "%s", path);
    return rc;
}

int ps_snapshot_verify(const char *dir, const ps_snapshot *s, ps_err *err)
{
    char path[4096];
    for (size_t i = 0; i < s->nfiles; i++) {
        const ps_snapshot_file *f = &s->files[i];
        uint32_t crc;
        uint64_t bytes;
        snprintf(path, sizeof path, "%s/%s", dir, f->name);
        int rc = ps_file_crc32(path, &crc, &bytes, err);
        if (rc == PS_ENOMEM) return rc; /* not the file's fault */
        if (rc)
            return ps_err_set(err, PS_ECORRUPT, "snapshot file %s: missing or unreadable", f->name);
        if (bytes != f->bytes)
            return ps_err_set(err, PS_ECORRUPT,
                              "snapshot file %s: %llu bytes, the manifest says %llu", f->name,
                              (unsigned long long)bytes, (unsigned long long)f->bytes);
        if (crc != f->crc32)
            return ps_err_set(err, PS_ECORRUPT,
                              "snapshot file %s: crc32 %u, the manifest says %u (corrupt upload)",
                              f->name, crc, f->crc32);
    }
    return 0;
}
