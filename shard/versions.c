/*
 * versions.c — the snapshot versions a shard holds (at most SHARD_MAX_HELD), its data
 * directory, and staging a new snapshot next to the one it serves.
 *
 * Data directory (--data DIR):
 *
 *   DIR/ACTIVE         the pointer: the active version in decimal and a newline, replaced by
 *                      writing ACTIVE.tmp, fsync, rename, fsync of DIR — a crash leaves the
 *                      old pointer or the new one, never half of one
 *   DIR/v-<V>/         an installed snapshot: an index directory plus its snapshot.json
 *   DIR/staging-<V>/   an upload in progress; discarded at start and whenever it fails
 *
 * A restarted shard loads every installed version (so a version the broker still asks for
 * stays servable) and makes the one ACTIVE names active. Without --data the shard serves its
 * --index directory in place and cannot stage.
 *
 * Lifetime of a version: the table holds one reference; every request holds one while it
 * runs (shard_versions_acquire .. _release). Retiring takes the version out of the table —
 * no new request can find it — then waits until the requests still using it have finished
 * before it closes the store and deletes the files. Searchers (per-thread scratch over one
 * index) belong to their version: a request borrows one from the version's free list.
 *
 * The recall cache (vs->rcache) keys results by version number: activating a version drops
 * the previous one's entries, and retiring drops the retired version's entries once no request
 * uses it any more, so a number installed again later never meets results of its old data.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ps/config.h"
#include "ps/log.h"
#include "shard.h"

struct shard_version {
    uint64_t version;
    char fingerprint[17];
    uint64_t stickers;
    ps_store_t *store;
    const ps_index_t *ix;
    char *dir; /* its directory under --data (NULL: served in place from --index) */
    _Atomic int refs;
    pthread_mutex_t lock; /* the searcher free list */
    ps_searcher_t **free;
    size_t nfree, cap;
};

/* ---- files ----------------------------------------------------------------------------------- */

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    return (flag == FTW_DP ? rmdir(p) : unlink(p)) && errno != ENOENT ? -1 : 0;
}

static void rm_tree(const char *dir)
{
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static int fsync_path(const char *path, int dir)
{
    int fd = open(path, (dir ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* ---- one version ----------------------------------------------------------------------------- */

static void version_free(shard_version *v)
{
    if (!v) return;
    for (size_t i = 0; i < v->nfree; i++) ps_searcher_free(v->free[i]);
    free(v->free);
    ps_store_close(v->store);
    pthread_mutex_destroy(&v->lock);
    free(v->dir);
    free(v);
}

/* Open the index at `dir` as version snap->version (snap NULL: an index without a manifest,
 * version 0). */
static shard_version *version_open(const char *dir, const ps_snapshot *snap, int owned, ps_err *err)
{
    shard_version *v = calloc(1, sizeof *v);
    if (!v) {
        ps_err_set(err, PS_ENOMEM, "out of memory for a version");
        return NULL;
    }
    pthread_mutex_init(&v->lock, NULL);
    atomic_init(&v->refs, 1);
    if (snap) {
        v->version = snap->version;
        memcpy(v->fingerprint, snap->fingerprint, sizeof v->fingerprint);
    }
    if (owned && !(v->dir = strdup(dir))) {
        ps_err_set(err, PS_ENOMEM, "out of memory for a version");
        version_free(v);
        return NULL;
    }
    if (!(v->store = ps_store_open(dir, err))) {
        version_free(v);
        return NULL;
    }
    v->ix = ps_store_index(v->store);
    v->stickers = ps_index_ndocs(v->ix);
    if (snap && snap->stickers != v->stickers) {
        ps_err_set(err, PS_ECORRUPT, "%s: %llu stickers, its manifest says %llu", dir,
                   (unsigned long long)v->stickers, (unsigned long long)snap->stickers);
        version_free(v);
        return NULL;
    }
    return v;
}

ps_searcher_t *shard_version_searcher(shard_version *v, ps_err *err)
{
    ps_searcher_t *s = NULL;
    pthread_mutex_lock(&v->lock);
    if (v->nfree) s = v->free[--v->nfree];
    pthread_mutex_unlock(&v->lock);
    return s ? s : ps_searcher_new(v->ix, err);
}

void shard_version_return(shard_version *v, ps_searcher_t *s)
{
    if (!s) return;
    pthread_mutex_lock(&v->lock);
    if (v->nfree == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 4;
        ps_searcher_t **f = realloc(v->free, cap * sizeof *f);
        if (!f) {
            pthread_mutex_unlock(&v->lock);
            ps_searcher_free(s); /* out of memory: simply do not keep it */
            return;
        }
        v->free = f;
        v->cap = cap;
    }
    v->free[v->nfree++] = s;
    pthread_mutex_unlock(&v->lock);
}

uint64_t shard_version_number(const shard_version *v)
{
    return v->version;
}

const ps_index_t *shard_version_index(const shard_version *v)
{
    return v->ix;
}

ps_store_t *shard_version_store(const shard_version *v)
{
    return v->store;
}

/* ---- the table ------------------------------------------------------------------------------- */

int shard_check_manifest(const ps_snapshot *s, uint32_t shard, uint32_t nshards,
                         const char *want_fp, const char *what, ps_err *err)
{
    if (s->shards != nshards)
        return ps_err_set(err, PS_EINVAL,
                          "%s is a slice of a %u-shard build, this shard is configured for "
                          "shards = %u",
                          what, s->shards, nshards);
    if (s->shard != shard)
        return ps_err_set(err, PS_EINVAL,
                          "%s holds shard %u, this shard is configured as shard %u (wrong slice)",
                          what, s->shard, shard);
    if (want_fp && want_fp[0] && strcmp(want_fp, s->fingerprint) != 0)
        return ps_err_set(err, PS_EINVAL,
                          "%s is from build %s, this shard is configured for build %s (a foreign "
                          "build)",
                          what, s->fingerprint, want_fp);
    return 0;
}

static int add_held(shard_versions_t *vs, shard_version *v, ps_err *err)
{
    pthread_mutex_lock(&vs->lock);
    int rc = 0;
    if (vs->nheld == SHARD_MAX_HELD)
        rc = ps_err_set(err, PS_ECONFLICT, "this shard already holds %d versions: retire one first",
                        SHARD_MAX_HELD);
    else
        vs->held[vs->nheld++] = v;
    pthread_mutex_unlock(&vs->lock);
    return rc;
}

static shard_version *find_locked(shard_versions_t *vs, uint64_t version)
{
    for (size_t i = 0; i < vs->nheld; i++)
        if (vs->held[i]->version == version) return vs->held[i];
    return NULL;
}

shard_version *shard_versions_acquire(shard_versions_t *vs, uint64_t version)
{
    pthread_mutex_lock(&vs->lock);
    shard_version *v = find_locked(vs, version ? version : vs->active);
    if (v) atomic_fetch_add(&v->refs, 1);
    pthread_mutex_unlock(&vs->lock);
    return v;
}

void shard_versions_release(shard_versions_t *vs, shard_version *v)
{
    (void)vs;
    if (v) atomic_fetch_sub(&v->refs, 1); /* the table's reference keeps it; retire frees */
}

size_t shard_versions_list(shard_versions_t *vs, shard_version_info *out, size_t cap,
                           uint64_t *active)
{
    pthread_mutex_lock(&vs->lock);
    size_t n = 0;
    for (size_t i = 0; i < vs->nheld && n < cap; i++, n++) {
        out[n].version = vs->held[i]->version;
        memcpy(out[n].fingerprint, vs->held[i]->fingerprint, sizeof out[n].fingerprint);
        out[n].stickers = vs->held[i]->stickers;
        out[n].active = vs->held[i]->version == vs->active;
    }
    if (active) *active = vs->active;
    pthread_mutex_unlock(&vs->lock);
    return n;
}

static void version_dir(const shard_versions_t *vs, uint64_t version, const char *kind, char *out,
                        size_t cap)
{
    snprintf(out, cap, "%s/%s-%llu", vs->data_dir, kind, (unsigned long long)version);
}

/* Write DIR/ACTIVE through a synced temporary file and fsync DIR. */
static int write_pointer(const shard_versions_t *vs, uint64_t version, ps_err *err)
{
    char path[4096], tmp[4096], text[32];
    snprintf(path, sizeof path, "%s/ACTIVE", vs->data_dir);
    snprintf(tmp, sizeof tmp, "%s/ACTIVE.tmp", vs->data_dir);
    int n = snprintf(text, sizeof text, "%llu\n", (unsigned long long)version);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return ps_err_set(err, PS_EIO, "%s: %s", tmp, strerror(errno));
    int ok = write(fd, text, (size_t)n) == n && fsync(fd) == 0;
    int e = errno;
    close(fd);
    if (!ok || rename(tmp, path) != 0 || fsync_path(vs->data_dir, 1) != 0) {
        if (ok) e = errno;
        unlink(tmp);
        return ps_err_set(err, PS_EIO, "writing the pointer %s: %s", path, strerror(e));
    }
    return 0;
}

static int read_pointer(const shard_versions_t *vs, uint64_t *version, ps_err *err)
{
    char path[4096], text[32] = "";
    snprintf(path, sizeof path, "%s/ACTIVE", vs->data_dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT) return PS_ENOTFOUND;
        return ps_err_set(err, PS_EIO, "%s: %s", path, strerror(errno));
    }
    char *got = fgets(text, sizeof text, f);
    fclose(f);
    char *end;
    errno = 0;
    unsigned long long v = got ? strtoull(text, &end, 10) : 0;
    if (!got || errno || (*end != '\n' && *end) || v == 0)
        return ps_err_set(err, PS_ECORRUPT, "%s: not a version number", path);
    *version = v;
    return 0;
}

/* Copy (or hard-link) every file of manifest s from src into dst. */
static int import_files(const char *src, const char *dst, const ps_snapshot *s, ps_err *err)
{
    char a[4096], b[4096];
    static const char manifest[] = PS_SNAPSHOT_FILE;
    for (size_t i = 0; i <= s->nfiles; i++) {
        const char *name = i < s->nfiles ? s->files[i].name : manifest;
        snprintf(a, sizeof a, "%s/%s", src, name);
        snprintf(b, sizeof b, "%s/%s", dst, name);
        if (link(a, b) == 0) continue;
        int in = open(a, O_RDONLY | O_CLOEXEC);
        int out = in < 0 ? -1 : open(b, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        int ok = in >= 0 && out >= 0;
        char buf[1 << 16];
        ssize_t r = 0;
        while (ok && (r = read(in, buf, sizeof buf)) > 0)
            if (write(out, buf, (size_t)r) != r) ok = 0;
        if (r < 0) ok = 0;
        if (ok && fsync(out) != 0) ok = 0;
        int e = errno;
        if (in >= 0) close(in);
        if (out >= 0) close(out);
        if (!ok) return ps_err_set(err, PS_EIO, "copying %s to %s: %s", a, b, strerror(e));
    }
    return 0;
}

/* Install a verified directory `from` as DATA/v-<V> (rename + fsync of DATA) and load it. */
static int install(shard_versions_t *vs, const char *from, const ps_snapshot *s, ps_err *err)
{
    char dir[4096];
    version_dir(vs, s->version, "v", dir, sizeof dir);
    rm_tree(dir); /* a leftover of a version retired by a crash */
    if (rename(from, dir) != 0 || fsync_path(vs->data_dir, 1) != 0)
        return ps_err_set(err, PS_EIO, "installing %s: %s", dir, strerror(errno));
    shard_version *v = version_open(dir, s, 1, err);
    if (!v) {
        rm_tree(dir);
        return err ? err->code : PS_ESTORE;
    }
    int rc = add_held(vs, v, err);
    if (rc) {
        version_free(v);
        rm_tree(dir);
    }
    return rc;
}

static int load_installed(shard_versions_t *vs, uint64_t version, ps_err *err)
{
    char dir[4096];
    ps_snapshot s;
    version_dir(vs, version, "v", dir, sizeof dir);
    int rc = ps_snapshot_read(dir, &s, err);
    if (!rc && s.version != version)
        rc = ps_err_set(err, PS_ECORRUPT, "%s: its manifest names version %llu", dir,
                        (unsigned long long)s.version);
    if (!rc) rc = shard_check_manifest(&s, vs->shard, vs->nshards, vs->fingerprint, dir, err);
    shard_version *v = rc ? NULL : version_open(dir, &s, 1, err);
    if (!rc && !v) rc = err ? err->code : PS_ESTORE;
    if (!rc && (rc = add_held(vs, v, err))) version_free(v);
    ps_snapshot_clear(&s);
    return rc;
}

shard_versions_t *shard_versions_open(const shard_versions_cfg *cfg, ps_err *err)
{
    shard_versions_t *vs = calloc(1, sizeof *vs);
    if (!vs) {
        ps_err_set(err, PS_ENOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&vs->lock, NULL);
    vs->shard = cfg->shard;
    vs->nshards = cfg->nshards;
    if (cfg->fingerprint) snprintf(vs->fingerprint, sizeof vs->fingerprint, "%s", cfg->fingerprint);
    int rc = 0;
    ps_snapshot s = {0};

    if (!cfg->data_dir) {
        /* In place: the --index directory, read-only, the only version. */
        const char *index = cfg->index;
        int mrc = ps_snapshot_read(index, &s, err);
        if (mrc == PS_ENOTFOUND) {
            ps_log(PS_LOG_WARN, "shard", "no_manifest",
                   "index=%s msg=\"no snapshot.json: serving it as version 0, unchecked\"", index);
            ps_err_clear(err);
        } else if (mrc) {
            rc = mrc;
        } else {
            rc = shard_check_manifest(&s, vs->shard, vs->nshards, vs->fingerprint, index, err);
        }
        shard_version *v = rc ? NULL : version_open(index, mrc ? NULL : &s, 0, err);
        if (!rc && !v) rc = err ? err->code : PS_ESTORE;
        if (!rc) {
            vs->held[vs->nheld++] = v;
            vs->active = v->version;
        }
        goto done;
    }

    if (!(vs->data_dir = strdup(cfg->data_dir))) {
        rc = ps_err_set(err, PS_ENOMEM, "out of memory");
        goto done;
    }
    if (mkdir(vs->data_dir, 0755) != 0 && errno != EEXIST) {
        rc = ps_err_set(err, PS_EIO, "data directory %s: %s", vs->data_dir, strerror(errno));
        goto done;
    }
    /* Leftovers of an interrupted upload are never served. */
    DIR *d = opendir(vs->data_dir);
    if (!d) {
        rc = ps_err_set(err, PS_EIO, "data directory %s: %s", vs->data_dir, strerror(errno));
        goto done;
    }
    uint64_t found[64];
    size_t nfound = 0;
    struct dirent *de;
    char path[4096];
    while ((de = readdir(d)) != NULL) {
        unsigned long long v;
        char tail;
        if (strncmp(de->d_name, "staging-", 8) == 0) {
            snprintf(path, sizeof path, "%s/%s", vs->data_dir, de->d_name);
            ps_log(PS_LOG_INFO, "shard", "staging_discarded", "dir=%s", path);
            rm_tree(path);
        } else if (sscanf(de->d_name, "v-%llu%c", &v, &tail) == 1 && v > 0 && nfound < 64) {
            found[nfound++] = v;
        }
    }
    closedir(d);
    unlink(strcat(strcpy(path, vs->data_dir), "/ACTIVE.tmp"));

    uint64_t active = 0;
    int prc = read_pointer(vs, &active, err);
    if (prc && prc != PS_ENOTFOUND) {
        rc = prc;
        goto done;
    }
    if (prc == PS_ENOTFOUND) {
        ps_err_clear(err);
        if (!cfg->index) {
            rc = ps_err_set(err, PS_ENOTFOUND,
                            "data directory %s holds no active version and no --index was given "
                            "to start from",
                            vs->data_dir);
            goto done;
        }
        /* First start: import the --index build (checked, verified) as the first version. */
        if ((rc = ps_snapshot_read(cfg->index, &s, err))) {
            if (rc == PS_ENOTFOUND)
                ps_err_set(err, PS_EINVAL,
                           "%s has no snapshot.json: rebuild it with `builder build --shards N`",
                           cfg->index);
            goto done;
        }
        if ((rc = shard_check_manifest(&s, vs->shard, vs->nshards, vs->fingerprint, cfg->index,
                                       err)) ||
            (rc = ps_snapshot_verify(cfg->index, &s, err)))
            goto done;
        version_dir(vs, s.version, "staging", path, sizeof path);
        rm_tree(path);
        if (mkdir(path, 0755) != 0) {
            rc = ps_err_set(err, PS_EIO, "%s: %s", path, strerror(errno));
            goto done;
        }
        if ((rc = import_files(cfg->index, path, &s, err)) || (rc = install(vs, path, &s, err)) ||
            (rc = write_pointer(vs, s.version, err))) {
            rm_tree(path);
            goto done;
        }
        vs->active = s.version;
        ps_log(PS_LOG_INFO, "shard", "imported", "index=%s version=%llu fingerprint=%s", cfg->index,
               (unsigned long long)s.version, s.fingerprint);
        /* Other installed versions (none on a first start) are loaded below. */
        for (size_t i = 0; i < nfound; i++)
            if (found[i] == s.version) found[i] = 0;
    } else {
        vs->active = active;
        if (cfg->index)
            ps_log(PS_LOG_INFO, "shard", "index_ignored",
                   "index=%s active=%llu msg=\"the data directory's pointer names the version\"",
                   cfg->index, (unsigned long long)active);
    }
    /* The active version first, then any other installed one (at most SHARD_MAX_HELD). */
    int have_active = find_locked(vs, vs->active) != NULL;
    if (!have_active) {
        if ((rc = load_installed(vs, vs->active, err))) {
            ps_err_prefix(err, "the active version %llu", (unsigned long long)vs->active);
            goto done;
        }
    }
    for (size_t i = 0; i < nfound; i++) {
        if (!found[i] || found[i] == vs->active) continue;
        if (vs->nheld == SHARD_MAX_HELD) {
            ps_log(PS_LOG_WARN, "shard", "version_skipped",
                   "version=%llu msg=\"already holding %d\"", (unsigned long long)found[i],
                   SHARD_MAX_HELD);
            continue;
        }
        ps_err e2 = {0, ""};
        if (load_installed(vs, found[i], &e2))
            ps_log(PS_LOG_WARN, "shard", "version_unloadable", "version=%llu code=%s msg=\"%s\"",
                   (unsigned long long)found[i], ps_errname(e2.code), e2.msg);
    }
done:
    ps_snapshot_clear(&s);
    if (rc) {
        shard_versions_free(vs);
        return NULL;
    }
    for (size_t i = 0; i < vs->nheld; i++)
        ps_log(PS_LOG_INFO, "shard", "version_loaded",
               "version=%llu fingerprint=%s stickers=%llu active=%d",
               (unsigned long long)vs->held[i]->version, vs->held[i]->fingerprint,
               (unsigned long long)vs->held[i]->stickers, vs->held[i]->version == vs->active);
    return vs;
}

void shard_versions_free(shard_versions_t *vs)
{
    if (!vs) return;
    shard_staging_discard(vs);
    for (size_t i = 0; i < vs->nheld; i++) version_free(vs->held[i]);
    pthread_mutex_destroy(&vs->lock);
    free(vs->data_dir);
    free(vs);
}

/* ---- admin operations (the admin thread only) ------------------------------------------------ */

void shard_staging_discard(shard_versions_t *vs)
{
    if (!vs->staging.active) return;
    char dir[4096];
    version_dir(vs, vs->staging.snap.version, "staging", dir, sizeof dir);
    rm_tree(dir);
    ps_log(PS_LOG_INFO, "shard", "staging_discarded", "version=%llu",
           (unsigned long long)vs->staging.snap.version);
    ps_snapshot_clear(&vs->staging.snap);
    free(vs->staging.received);
    memset(&vs->staging, 0, sizeof vs->staging);
}

int shard_stage_begin(shard_versions_t *vs, uint64_t version, const char *manifest, size_t len,
                      ps_err *err)
{
    ps_snapshot s;
    char dir[4096], path[4096 + PS_SNAPSHOT_MAX_NAME + 16];
    if (!vs->data_dir)
        return ps_err_set(err, PS_ECONFLICT,
                          "this shard serves its --index in place: start it with --data DIR to "
                          "stage snapshots");
    int rc = ps_snapshot_parse(manifest, len, &s, err);
    if (rc) return rc;
    if (s.version != version)
        rc = ps_err_set(err, PS_EINVAL, "version: %llu, the manifest says %llu",
                        (unsigned long long)version, (unsigned long long)s.version);
    if (!rc) rc = shard_check_manifest(&s, vs->shard, vs->nshards, NULL, "the snapshot", err);
    pthread_mutex_lock(&vs->lock);
    size_t nheld = vs->nheld;
    int held = find_locked(vs, version) != NULL;
    pthread_mutex_unlock(&vs->lock);
    if (!rc && held)
        rc =
            ps_err_set(err, PS_EEXIST, "version %llu is already held", (unsigned long long)version);
    if (!rc && nheld >= SHARD_MAX_HELD)
        rc =
            ps_err_set(err, PS_ECONFLICT, "this shard holds %zu versions: retire one first", nheld);
    if (rc) {
        ps_snapshot_clear(&s);
        return rc;
    }
    shard_staging_discard(vs); /* one upload at a time: a new one replaces an unfinished one */
    version_dir(vs, version, "staging", dir, sizeof dir);
    rm_tree(dir);
    if (mkdir(dir, 0755) != 0) {
        ps_snapshot_clear(&s);
        return ps_err_set(err, PS_EIO, "%s: %s", dir, strerror(errno));
    }
    if (!(vs->staging.received = calloc(s.nfiles, sizeof *vs->staging.received))) {
        ps_snapshot_clear(&s);
        rm_tree(dir);
        return ps_err_set(err, PS_ENOMEM, "out of memory staging");
    }
    vs->staging.snap = s;
    vs->staging.active = 1;
    vs->staging.started = time(NULL);
    for (size_t i = 0; i < s.nfiles && !rc; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, s.files[i].name);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
            rc = ps_err_set(err, PS_EIO, "%s: %s", path, strerror(errno));
        else
            close(fd);
    }
    if (rc)
        shard_staging_discard(vs);
    else
        ps_log(PS_LOG_INFO, "shard", "staging", "version=%llu fingerprint=%s files=%zu",
               (unsigned long long)version, s.fingerprint, s.nfiles);
    return rc;
}

int shard_stage_write(shard_versions_t *vs, uint64_t version, const char *name, uint64_t offset,
                      const void *data, size_t len, uint64_t *received, ps_err *err)
{
    if (!vs->staging.active || vs->staging.snap.version != version)
        return ps_err_set(err, PS_ENOTFOUND, "version %llu is not being staged here",
                          (unsigned long long)version);
    const ps_snapshot *s = &vs->staging.snap;
    size_t i = 0;
    while (i < s->nfiles && strcmp(s->files[i].name, name) != 0) i++;
    if (i == s->nfiles)
        return ps_err_set(err, PS_ENOTFOUND, "%s is not a file of snapshot %llu", name,
                          (unsigned long long)version);
    if (offset != vs->staging.received[i])
        return ps_err_set(err, PS_ECONFLICT, "%s: offset %llu, expected %llu", name,
                          (unsigned long long)offset, (unsigned long long)vs->staging.received[i]);
    if (len > s->files[i].bytes - offset)
        return ps_err_set(err, PS_EINVAL, "%s: %llu bytes at offset %llu go past its %llu bytes",
                          name, (unsigned long long)len, (unsigned long long)offset,
                          (unsigned long long)s->files[i].bytes);
    char path[4096];
    version_dir(vs, version, "staging", path, sizeof path);
    size_t dl = strlen(path);
    snprintf(path + dl, sizeof path - dl, "/%s", name);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return ps_err_set(err, PS_EIO, "%s: %s", path, strerror(errno));
    const char *p = data;
    size_t done = 0;
    while (done < len) {
        ssize_t w = pwrite(fd, p + done, len - done, (off_t)(offset + done));
        if (w < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            close(fd);
            return ps_err_set(err, PS_EIO, "writing %s: %s", path, strerror(e));
        }
        done += (size_t)w;
    }
    close(fd);
    vs->staging.received[i] += len;
    vs->staging.bytes += len;
    *received = vs->staging.received[i];
    return 0;
}

int shard_prepare(shard_versions_t *vs, uint64_t version, uint64_t *stickers, ps_err *err)
{
    pthread_mutex_lock(&vs->lock);
    shard_version *held = find_locked(vs, version);
    if (held) *stickers = held->stickers;
    pthread_mutex_unlock(&vs->lock);
    if (held) return 0; /* prepared already */
    if (!vs->staging.active || vs->staging.snap.version != version)
        return ps_err_set(err, PS_ENOTFOUND, "version %llu is not staged here",
                          (unsigned long long)version);
    char dir[4096], path[4096 + PS_SNAPSHOT_MAX_NAME + 16];
    const ps_snapshot *s = &vs->staging.snap;
    version_dir(vs, version, "staging", dir, sizeof dir);
    int rc = 0;
    for (size_t i = 0; i < s->nfiles && !rc; i++)
        if (vs->staging.received[i] != s->files[i].bytes)
            rc = ps_err_set(err, PS_ECORRUPT, "snapshot file %s: %llu of %llu bytes received",
                            s->files[i].name, (unsigned long long)vs->staging.received[i],
                            (unsigned long long)s->files[i].bytes);
    for (size_t i = 0; i < s->nfiles && !rc; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, s->files[i].name);
        if (fsync_path(path, 0) != 0)
            rc = ps_err_set(err, PS_EIO, "fsync %s: %s", path, strerror(errno));
    }
    /* Read every byte back: what is served is what the builder wrote, or nothing. */
    if (!rc) rc = ps_snapshot_verify(dir, s, err);
    if (!rc) {
        char *json = ps_snapshot_json(s);
        snprintf(path, sizeof path, "%s/%s", dir, PS_SNAPSHOT_FILE);
        if (!json)
            rc = ps_err_set(err, PS_ENOMEM, "out of memory for the manifest");
        else if (ps_write_file_atomic(path, json) != 0 || fsync_path(dir, 1) != 0)
            rc = ps_err_set(err, PS_EIO, "writing %s: %s", path, strerror(errno));
        free(json);
    }
    if (!rc) rc = install(vs, dir, s, err);
    if (rc) {
        ps_log(PS_LOG_WARN, "shard", "prepare_failed", "version=%llu code=%s msg=\"%s\"",
               (unsigned long long)version, ps_errname(rc), err ? err->msg : "");
        shard_staging_discard(vs);
        return rc;
    }
    *stickers = s->stickers;
    ps_log(PS_LOG_INFO, "shard", "prepared", "version=%llu fingerprint=%s stickers=%llu bytes=%llu",
           (unsigned long long)version, s->fingerprint, (unsigned long long)s->stickers,
           (unsigned long long)vs->staging.bytes);
    ps_snapshot_clear(&vs->staging.snap);
    free(vs->staging.received);
    memset(&vs->staging, 0, sizeof vs->staging);
    return 0;
}

int shard_activate(shard_versions_t *vs, uint64_t version, uint64_t *previous, ps_err *err)
{
    pthread_mutex_lock(&vs->lock);
    int held = find_locked(vs, version) != NULL;
    *previous = vs->active;
    pthread_mutex_unlock(&vs->lock);
    if (!held)
        return ps_err_set(err, PS_ENOTFOUND, "version %llu is not loaded here",
                          (unsigned long long)version);
    if (vs->data_dir) {
        int rc = write_pointer(vs, version, err);
        if (rc) return rc;
    } else if (*previous != version) {
        return ps_err_set(err, PS_ECONFLICT, "this shard serves its --index in place");
    }
    pthread_mutex_lock(&vs->lock);
    vs->active = version;
    pthread_mutex_unlock(&vs->lock);
    /* The switch: the previous version's cached results go (a request still naming it finds
     * them again, computed afresh, until it is retired). */
    if (*previous != version) ps_rcache_drop(vs->rcache, *previous);
    ps_log(PS_LOG_INFO, "shard", "activated", "version=%llu previous=%llu",
           (unsigned long long)version, (unsigned long long)*previous);
    return 0;
}

int shard_retire(shard_versions_t *vs, uint64_t version, ps_err *err)
{
    pthread_mutex_lock(&vs->lock);
    shard_version *v = find_locked(vs, version);
    int rc = 0;
    if (!v)
        rc = ps_err_set(err, PS_ENOTFOUND, "version %llu is not held here",
                        (unsigned long long)version);
    else if (version == vs->active)
        rc = ps_err_set(err, PS_ECONFLICT, "version %llu is active: activate another one first",
                        (unsigned long long)version);
    else {
        size_t i = 0;
        while (vs->held[i] != v) i++;
        vs->held[i] = vs->held[--vs->nheld];
    }
    pthread_mutex_unlock(&vs->lock);
    if (rc) return rc;
    /* No new request can find it now; wait for those still using it. */
    struct timespec ms = {0, 1000000};
    while (atomic_load(&v->refs) > 1) nanosleep(&ms, NULL);
    /* Only now: a request that was still running may have cached a result of it. */
    ps_rcache_drop(vs->rcache, version);
    char *dir = v->dir;
    v->dir = NULL;
    version_free(v);
    if (dir) {
        rm_tree(dir);
        fsync_path(vs->data_dir, 1);
        free(dir);
    }
    ps_log(PS_LOG_INFO, "shard", "retired", "version=%llu", (unsigned long long)version);
    return 0;
}
