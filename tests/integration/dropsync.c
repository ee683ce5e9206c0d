/*
 * dropsync.c — an LD_PRELOAD library that makes the file system drop unsynced writes when the
 * process dies, like a power cut (DESIGN §3.2: "a kill -9 test alone cannot prove this: also
 * test under a file system ... that drops unsynced writes"). A plain kill -9 keeps everything
 * already write()n in the page cache, so a daemon that acknowledges before it syncs still
 * passes it; under dropsync the same daemon loses the acknowledged writes.
 *
 * Scope: descriptors opened for writing on files whose absolute path lies under $DROPSYNC_DIR
 * and ends in ".log" (RocksDB WAL files, "000012.log"; RocksDB's info log is "LOG" and is left
 * alone). For such a descriptor:
 *
 *   write, pwrite, pwrite64, writev   go to an in-memory list of extents (offset, bytes) kept
 *                                     per descriptor; the real file is not touched
 *   fsync, fdatasync                  write the extents to the real file (pwrite at their
 *                                     offsets), then fsync / fdatasync it for real
 *   close                             writes the extents out (no sync): a file a process closed
 *                                     stays in the page cache of a real OS, and so survives a
 *                                     later kill -9
 *   sync_file_range                   nothing: it only starts write-back (no durability)
 *   ftruncate                         logical: extents past the length are dropped; applied to
 *                                     the real file at the next fsync / close
 *   lseek                             on the logical file position and size
 *   sync, syncfs, exit                write out and sync every tracked descriptor
 *
 * O_APPEND is emulated (Linux pwrite on an O_APPEND descriptor ignores its offset), so the
 * flag is removed from the real open. fallocate passes through (preallocation with
 * FALLOC_FL_KEEP_SIZE, which RocksDB uses, changes no content). Reads of a tracked file see
 * only what was written out: RocksDB's WAL writer never reads, and a reader on another
 * descriptor (GetUpdatesSince) sees what has been synced, as after a crash.
 *
 * Not emulated: losing a file's creation or rename when its directory was not synced, and
 * unsynced writes of files that are not ".log" (MANIFEST, SST). The test targets the WAL.
 *
 * Threads: one mutex guards the descriptor table. Descriptors at or above DS_MAXFD are never
 * tracked (a warning is printed once). An untracked descriptor costs one relaxed atomic load
 * per call and nothing else, so write() from a signal handler (a self-pipe) stays
 * async-signal-safe; only tracked files allocate, and signal handlers never write to them.
 *
 * Environment: DROPSYNC_DIR (required; without it every call passes through),
 * DROPSYNC_VERBOSE=1 logs every tracked open / sync / close to stderr.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define DS_MAXFD 65536 /* descriptors tracked by a flat table; above this, pass through */

/* One run of buffered bytes at a file offset. Extents of a descriptor are kept in write order;
 * a later extent may overlap an earlier one and wins, as it is written out later. */
typedef struct ds_extent {
    off_t off;
    size_t len, cap;
    char *data;
    struct ds_extent *next;
} ds_extent;

typedef struct ds_file {
    off_t pos;       /* logical file position (write, lseek) */
    off_t size;      /* logical file size */
    int append;      /* opened O_APPEND: every write() goes to size */
    off_t trunc_min; /* smallest ftruncate length since the last write-out, -1 = none */
    ds_extent *head, *tail;
    size_t pending; /* bytes buffered */
    char path[256]; /* for DROPSYNC_VERBOSE */
} ds_file;

static _Atomic unsigned char ds_tracked[DS_MAXFD];
static ds_file *ds_files[DS_MAXFD];
static pthread_mutex_t ds_mu = PTHREAD_MUTEX_INITIALIZER;
static char ds_dir[PATH_MAX];
static size_t ds_dirlen; /* 0: DROPSYNC_DIR unset, nothing is tracked */
static int ds_verbose;
static atomic_int ds_warned_bigfd;

/* The real functions, resolved once with dlsym(RTLD_NEXT). */
static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real_creat)(const char *, mode_t);
static int (*real_creat64)(const char *, mode_t);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_sync_file_range)(int, off_t, off_t, unsigned int);
static int (*real_close)(int);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off_t);
static off_t (*real_lseek)(int, off_t, int);
static off_t (*real_lseek64)(int, off_t, int);
static void (*real_sync)(void);
static int (*real_syncfs)(int);

static pthread_once_t ds_once = PTHREAD_ONCE_INIT;

static void *ds_sym(const char *name)
{
    void *p = dlsym(RTLD_NEXT, name);
    if (!p) {
        fprintf(stderr, "dropsync: libc has no %s\n", name);
        abort();
    }
    return p;
}

static void ds_resolve(void)
{
    real_open = ds_sym("open");
    real_open64 = ds_sym("open64");
    real_openat = ds_sym("openat");
    real_openat64 = ds_sym("openat64");
    real_creat = ds_sym("creat");
    real_creat64 = ds_sym("creat64");
    real_write = ds_sym("write");
    real_pwrite = ds_sym("pwrite");
    real_pwrite64 = ds_sym("pwrite64");
    real_writev = ds_sym("writev");
    real_fsync = ds_sym("fsync");
    real_fdatasync = ds_sym("fdatasync");
    real_sync_file_range = ds_sym("sync_file_range");
    real_close = ds_sym("close");
    real_ftruncate = ds_sym("ftruncate");
    real_ftruncate64 = ds_sym("ftruncate64");
    real_lseek = ds_sym("lseek");
    real_lseek64 = ds_sym("lseek64");
    real_sync = ds_sym("sync");
    real_syncfs = ds_sym("syncfs");
}

static void ds_init(void)
{
    pthread_once(&ds_once, ds_resolve);
}

static int ds_is_tracked(int fd)
{
    return fd >= 0 && fd < DS_MAXFD && atomic_load_explicit(&ds_tracked[fd], memory_order_acquire);
}

static void ds_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void ds_log(const char *fmt, ...)
{
    if (!ds_verbose) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("dropsync: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- which files --------------------------------------------------------------------------- */

/* Whether the file opened as (dirfd, path) is under ds_dir and ends in ".log". Relative paths
 * are resolved against the working directory or dirfd; "..", "." and symbolic links inside the
 * path are not resolved (RocksDB names its files DIR/NNNNNN.log). */
static int ds_wants(int dirfd, const char *path, char *abs, size_t cap)
{
    if (!ds_dirlen || !path) return 0;
    size_t n = strlen(path);
    if (n < 4 || strcmp(path + n - 4, ".log")) return 0;
    if (path[0] == '/') {
        if (n >= cap) return 0;
        memcpy(abs, path, n + 1);
    } else {
        char base[PATH_MAX];
        if (dirfd == AT_FDCWD) {
            if (!getcwd(base, sizeof base)) return 0;
        } else {
            char link[64];
            snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
            ssize_t k = readlink(link, base, sizeof base - 1);
            if (k <= 0) return 0;
            base[k] = '\0';
        }
        if ((size_t)snprintf(abs, cap, "%s/%s", base, path) >= cap) return 0;
    }
    return !strncmp(abs, ds_dir, ds_dirlen) && abs[ds_dirlen] == '/';
}

static void ds_drop_extents(ds_file *f);

/* Start tracking fd, just opened on abs with the caller's flags. */
static void ds_track(int fd, int flags, const char *abs)
{
    if (fd < 0) return;
    if (fd >= DS_MAXFD) {
        if (!atomic_exchange(&ds_warned_bigfd, 1))
            fprintf(stderr, "dropsync: descriptor %d >= %d is not tracked (writes are kept)\n", fd,
                    DS_MAXFD);
        return;
    }
    ds_file *f = calloc(1, sizeof *f);
    if (!f) {
        fputs("dropsync: out of memory\n", stderr);
        abort();
    }
    off_t end = real_lseek(fd, 0, SEEK_END);
    f->size = end < 0 ? 0 : end;
    f->pos = (flags & O_APPEND) ? f->size : 0;
    real_lseek(fd, 0, SEEK_SET);
    f->append = !!(flags & O_APPEND);
    f->trunc_min = -1;
    snprintf(f->path, sizeof f->path, "%s", abs);
    pthread_mutex_lock(&ds_mu);
    ds_file *stale = ds_files[fd]; /* closed behind our back (e.g. dup2 onto it): forget it */
    if (stale) {
        ds_drop_extents(stale);
        free(stale);
    }
    ds_files[fd] = f;
    atomic_store_explicit(&ds_tracked[fd], 1, memory_order_release);
    pthread_mutex_unlock(&ds_mu);
    ds_log("track fd=%d %s size=%lld", fd, abs, (long long)f->size);
}

/* ---- buffering ----------------------------------------------------------------------------- */

/* Buffer n bytes at off (ds_mu held). Returns 0, or -1 with errno = ENOMEM. */
static int ds_add(ds_file *f, off_t off, const void *buf, size_t n)
{
    ds_extent *t = f->tail;
    if (t && t->off + (off_t)t->len == off) { /* the common case: appending */
        if (t->len + n > t->cap) {
            size_t cap = t->cap * 2 > t->len + n ? t->cap * 2 : t->len + n;
            char *d = realloc(t->data, cap);
            if (!d) return errno = ENOMEM, -1;
            t->data = d;
            t->cap = cap;
        }
        memcpy(t->data + t->len, buf, n);
        t->len += n;
    } else {
        ds_extent *e = calloc(1, sizeof *e);
        size_t cap = n < 65536 ? 65536 : n;
        if (!e || !(e->data = malloc(cap))) return free(e), errno = ENOMEM, -1;
        memcpy(e->data, buf, n);
        e->off = off;
        e->len = n;
        e->cap = cap;
        if (t)
            t->next = e;
        else
            f->head = e;
        f->tail = e;
    }
    f->pending += n;
    if (off + (off_t)n > f->size) f->size = off + (off_t)n;
    return 0;
}

static void ds_drop_extents(ds_file *f)
{
    for (ds_extent *e = f->head, *nx; e; e = nx) {
        nx = e->next;
        free(e->data);
        free(e);
    }
    f->head = f->tail = NULL;
    f->pending = 0;
}

/* Write every buffered extent of fd to the real file, with the truncations in between
 * (ds_mu held). Returns 0, or -1 with errno from the failing call. */
static int ds_writeout(int fd, ds_file *f)
{
    if (f->trunc_min >= 0 && real_ftruncate(fd, f->trunc_min)) return -1;
    for (ds_extent *e = f->head; e; e = e->next) {
        size_t done = 0;
        while (done < e->len) {
            ssize_t k = real_pwrite(fd, e->data + done, e->len - done, e->off + (off_t)done);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) return -1;
            done += (size_t)k;
        }
    }
    if (f->trunc_min >= 0 && real_ftruncate(fd, f->size)) return -1;
    ds_log("write-out fd=%d %s bytes=%zu", fd, f->path, f->pending);
    f->trunc_min = -1;
    ds_drop_extents(f);
    return 0;
}

/* The write paths: buffer n bytes at off, or at the logical position (off < 0). */
static ssize_t ds_write_at(int fd, const void *buf, size_t n, off_t off)
{
    pthread_mutex_lock(&ds_mu);
    ds_file *f = ds_files[fd];
    ssize_t rc = (ssize_t)n;
    if (!f) {
        rc = -1;
        errno = EBADF;
    } else {
        off_t at = off >= 0 ? off : (f->append ? f->size : f->pos);
        if (n && ds_add(f, at, buf, n))
            rc = -1;
        else if (off < 0)
            f->pos = at + (off_t)n;
    }
    pthread_mutex_unlock(&ds_mu);
    return rc;
}

static int ds_sync(int fd, int data_only)
{
    pthread_mutex_lock(&ds_mu);
    ds_file *f = ds_files[fd];
    int rc = f ? ds_writeout(fd, f) : 0;
    pthread_mutex_unlock(&ds_mu);
    if (rc) return rc;
    if (ds_verbose) ds_log("sync fd=%d", fd);
    return data_only ? real_fdatasync(fd) : real_fsync(fd);
}

/* Write out and forget fd (before the real close). */
static int ds_untrack(int fd)
{
    pthread_mutex_lock(&ds_mu);
    ds_file *f = ds_files[fd];
    int rc = 0;
    if (f) {
        rc = ds_writeout(fd, f);
        int e = errno;
        ds_drop_extents(f);
        ds_files[fd] = NULL;
        atomic_store_explicit(&ds_tracked[fd], 0, memory_order_release);
        ds_log("close fd=%d %s", fd, f->path);
        free(f);
        errno = e;
    }
    pthread_mutex_unlock(&ds_mu);
    return rc;
}

/* Write out and sync every tracked descriptor (sync(), syncfs(), exit). */
static void ds_sync_all(void)
{
    for (int fd = 0; fd < DS_MAXFD; fd++)
        if (ds_is_tracked(fd)) (void)ds_sync(fd, 0);
}

/* ---- load and exit ------------------------------------------------------------------------- */

__attribute__((constructor)) static void ds_load(void)
{
    ds_init();
    const char *d = getenv("DROPSYNC_DIR");
    const char *v = getenv("DROPSYNC_VERBOSE");
    ds_verbose = v && *v && strcmp(v, "0");
    if (!d || !*d) {
        fputs("dropsync: DROPSYNC_DIR is not set: passing every write through\n", stderr);
        return;
    }
    if (!realpath(d, ds_dir)) {
        fprintf(stderr, "dropsync: DROPSYNC_DIR %s: %s\n", d, strerror(errno));
        abort();
    }
    ds_dirlen = strlen(ds_dir);
    while (ds_dirlen > 1 && ds_dir[ds_dirlen - 1] == '/') ds_dir[--ds_dirlen] = '\0';
    fprintf(stderr, "dropsync: buffering unsynced writes under %s\n", ds_dir);
}

/* A process that exits normally leaves its writes in the page cache: keep them. */
__attribute__((destructor)) static void ds_unload(void)
{
    for (int fd = 0; fd < DS_MAXFD; fd++)
        if (ds_is_tracked(fd)) (void)ds_untrack(fd);
}

/* ---- the interposed calls ------------------------------------------------------------------ */

static mode_t ds_mode(int flags, va_list ap)
{
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

/* Open through fn_at(dirfd, ...) or, when it is NULL, fn(path, ...); track the result if
 * the file is one of ours. */
static int ds_open_common(int (*fn_at)(int, const char *, int, ...),
                          int (*fn)(const char *, int, ...), int dirfd, const char *path, int flags,
                          mode_t mode)
{
    char abs[PATH_MAX];
    /* Only descriptors open for writing: readers (GetUpdatesSince) may close theirs through
     * fclose, which bypasses close() here and would leave a stale entry for a reused number. */
    int want = (flags & O_ACCMODE) != O_RDONLY && ds_wants(dirfd, path, abs, sizeof abs);
    int rflags = want ? (flags & ~O_APPEND) : flags;
    int fd = fn_at ? fn_at(dirfd, path, rflags, mode) : fn(path, rflags, mode);
    if (want && fd >= 0) {
        int e = errno;
        ds_track(fd, flags, abs);
        errno = e;
    }
    return fd;
}

int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = ds_mode(flags, ap);
    va_end(ap);
    ds_init();
    return ds_open_common(NULL, real_open, AT_FDCWD, path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = ds_mode(flags, ap);
    va_end(ap);
    ds_init();
    return ds_open_common(NULL, real_open64, AT_FDCWD, path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = ds_mode(flags, ap);
    va_end(ap);
    ds_init();
    return ds_open_common(real_openat, NULL, dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = ds_mode(flags, ap);
    va_end(ap);
    ds_init();
    return ds_open_common(real_openat64, NULL, dirfd, path, flags, mode);
}

/* _FORTIFY_SOURCE builds call these for open without a mode. */
int __open_2(const char *path, int flags)
{
    return open(path, flags);
}
int __open64_2(const char *path, int flags)
{
    return open64(path, flags);
}
int __openat_2(int dirfd, const char *path, int flags)
{
    return openat(dirfd, path, flags);
}
int __openat64_2(int dirfd, const char *path, int flags)
{
    return openat64(dirfd, path, flags);
}

int creat(const char *path, mode_t mode)
{
    return open(path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}
int creat64(const char *path, mode_t mode)
{
    return open64(path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}

ssize_t write(int fd, const void *buf, size_t n)
{
    if (!ds_is_tracked(fd)) {
        if (!real_write) ds_init();
        return real_write(fd, buf, n);
    }
    return ds_write_at(fd, buf, n, -1);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    ds_init();
    if (!ds_is_tracked(fd)) return real_pwrite(fd, buf, n, off);
    if (off < 0) return errno = EINVAL, -1;
    return ds_write_at(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
    ds_init();
    if (!ds_is_tracked(fd)) return real_pwrite64(fd, buf, n, off);
    if (off < 0) return errno = EINVAL, -1;
    return ds_write_at(fd, buf, n, off);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt)
{
    ds_init();
    if (!ds_is_tracked(fd)) return real_writev(fd, iov, iovcnt);
    if (iovcnt < 0) return errno = EINVAL, -1;
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++) total += iov[i].iov_len;
    char *flat = malloc(total ? total : 1);
    if (!flat) return errno = ENOMEM, -1;
    size_t at = 0;
    for (int i = 0; i < iovcnt; i++) {
        memcpy(flat + at, iov[i].iov_base, iov[i].iov_len);
        at += iov[i].iov_len;
    }
    ssize_t rc = ds_write_at(fd, flat, total, -1);
    free(flat);
    return rc;
}

int fsync(int fd)
{
    ds_init();
    return ds_is_tracked(fd) ? ds_sync(fd, 0) : real_fsync(fd);
}

int fdatasync(int fd)
{
    ds_init();
    return ds_is_tracked(fd) ? ds_sync(fd, 1) : real_fdatasync(fd);
}

int sync_file_range(int fd, off_t off, off_t n, unsigned int flags)
{
    ds_init();
    if (ds_is_tracked(fd)) return 0; /* starts write-back only: promises nothing */
    return real_sync_file_range(fd, off, n, flags);
}

int close(int fd)
{
    if (!ds_is_tracked(fd)) {
        if (!real_close) ds_init();
        return real_close(fd);
    }
    int rc = ds_untrack(fd);
    int e = errno;
    int rc2 = real_close(fd);
    if (rc) errno = e;
    return rc ? rc : rc2;
}

static int ds_ftruncate(int fd, off_t len, int (*real)(int, off_t))
{
    if (!ds_is_tracked(fd)) return real(fd, len);
    if (len < 0) return errno = EINVAL, -1;
    pthread_mutex_lock(&ds_mu);
    ds_file *f = ds_files[fd];
    if (f) {
        for (ds_extent *e = f->head; e; e = e->next) {
            if (e->off >= len) {
                f->pending -= e->len;
                e->len = 0;
            } else if (e->off + (off_t)e->len > len) {
                f->pending -= e->len - (size_t)(len - e->off);
                e->len = (size_t)(len - e->off);
            }
        }
        f->size = len;
        if (f->trunc_min < 0 || len < f->trunc_min) f->trunc_min = len;
    }
    pthread_mutex_unlock(&ds_mu);
    return 0;
}

int ftruncate(int fd, off_t len)
{
    ds_init();
    return ds_ftruncate(fd, len, real_ftruncate);
}

int ftruncate64(int fd, off_t len)
{
    ds_init();
    return ds_ftruncate(fd, len, real_ftruncate64);
}

static off_t ds_lseek(int fd, off_t off, int whence, off_t (*real)(int, off_t, int))
{
    if (!ds_is_tracked(fd)) return real(fd, off, whence);
    pthread_mutex_lock(&ds_mu);
    ds_file *f = ds_files[fd];
    off_t at = -1;
    if (f) {
        off_t base = whence == SEEK_SET   ? 0
                     : whence == SEEK_CUR ? f->pos
                     : whence == SEEK_END ? f->size
                                          : -1;
        if (base >= 0 && base + off >= 0) at = f->pos = base + off;
    }
    pthread_mutex_unlock(&ds_mu);
    if (at < 0) errno = EINVAL;
    return at;
}

off_t lseek(int fd, off_t off, int whence)
{
    ds_init();
    return ds_lseek(fd, off, whence, real_lseek);
}

off_t lseek64(int fd, off_t off, int whence)
{
    ds_init();
    return ds_lseek(fd, off, whence, real_lseek64);
}

void sync(void)
{
    ds_init();
    ds_sync_all();
    real_sync();
}

int syncfs(int fd)
{
    ds_init();
    ds_sync_all();
    return real_syncfs(fd);
}
