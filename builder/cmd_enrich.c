/*
 * cmd_enrich.c — `builder enrich`: a folder of sticker images (or a JSONL manifest) -> the
 * corpus inputs of DESIGN §3 (corpus.jsonl with ocr, keywords, desc, emotion, image; a float32
 * embeddings.npy in corpus order) that `builder build` reads unchanged.
 *
 * Inputs. A directory is walked recursively; files ending in .png .jpg .jpeg .gif .webp (any
 * case) are stickers, in byte order of their relative paths. A sticker's id is its file name
 * without the extension when that is a decimal number (1..2^64-1, no leading zero), else the
 * 63-bit hash of its relative path (builder_enrich_id); its `image` is the relative path. A
 * manifest (--manifest) is JSON Lines: `id`, `path` (relative to the manifest's directory
 * unless absolute) and any fields already known, which are kept as they are (a given `ocr`
 * is not OCRed again, given `keywords`/`desc`/`emotion` are not asked of the VLM); its `image`
 * is its own `image` or else `path`, left out when neither is a valid corpus image (an
 * absolute or ".." path: ps_image_check).
 *
 * Work. --ocr-threads workers each own a Tesseract engine; a worker reads a file (capped by
 * --max-bytes), decodes it (header checked against --max-pixels first) and OCRs it (enrich.c).
 * With a model server configured (--vlm-url, --embed-url: builder/models.h) the main thread then
 * submits the image to the model client and records the sticker when its calls are done (a
 * failed call is the sticker's error, stage "model"). Without one: OCR only, no keywords, desc,
 * emotion, no embeddings.npy. Every finished sticker, done or failed, is appended by the main
 * thread to OUT/state/done.jsonl:
 *   {"id":"<u64>","ok":true,"fields":{<the output fields>},"emb":[floats]?}
 *   {"id":"<u64>","ok":false,"path":"...","stage":"read|decode|ocr|model","message":"..."}
 * and fdatasync'ed at least once a second and before exit. A rerun reads the state (the last
 * line of an id wins; a torn last line from a crash is ignored) and redoes only the stickers
 * not done (never tried, failed, or in flight when the run stopped). SIGINT/SIGTERM stop
 * handing out work, let the workers finish their current image and record it; requests in
 * flight at a model server are abandoned (redone by the rerun).
 *
 * Outputs, rewritten at the end of every run from the state, each atomically (temp file,
 * fsync, rename, fsync of the directory): OUT/corpus.jsonl (the stickers done, input order),
 * OUT/embeddings.npy (when embeddings are configured; rows in corpus order), OUT/errors.jsonl
 * (one {"id","path","stage","message"} per sticker that failed). Exit status: 0 when every
 * sticker is done, 1 when some failed (the summary says how many), 2 usage, 130 interrupted.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <leptonica/allheaders.h>

#include "builder.h"
#include "enrich.h"
#include "models.h"
#include "pipeline.h"
#include "ps/corpus.h"
#include "ps/log.h"
#include "ps/map.h"

#define ENRICH_MAX_BYTES_DEFAULT  (20u << 20) /* 20 MiB */
#define ENRICH_MAX_PIXELS_DEFAULT 40000000ull /* 40 megapixels */
#define ENRICH_MAX_THREADS        64
#define ENRICH_MAX_DEPTH          32          /* directory nesting */
#define ENRICH_STATE_MAX_LINE     (16u << 20) /* a state line (with its embedding) */
#define ENRICH_PROGRESS_TTY_S     0.25
#define ENRICH_PROGRESS_LOG_S     5.0
#define ENRICH_SYNC_S             1.0
#define ENRICH_POLL_MS            20 /* model calls driven between looks at the OCR queue */

/* One sticker of the input. */
typedef struct item {
    uint64_t id;
    char *path;    /* to open */
    char *image;   /* the output's `image` */
    json_t *known; /* manifest: its fields minus id and path (owned), else NULL */
    json_t *state; /* the last state record of this id (owned), NULL: never finished; its
                      "emb" is moved to emb below (as JSON it costs ~25 KB a sticker at d=512) */
    float *emb;    /* the embedding of state, emb_dim floats; NULL: none */
    uint32_t emb_dim;
    char dup[64]; /* non-empty: the id repeats an earlier sticker's (this one is skipped) */
} item;

/* What a worker hands to the main thread. */
typedef struct result {
    size_t item;
    int rc;
    const char *stage;
    char msg[256];
    char *ocr; /* NULL: not OCRed (a given ocr is kept) */
    unsigned char *img;
    size_t img_len;
    const char *mime;
    struct result *next;
    struct result *mprev, *mnext; /* on enrich.at_models while its model calls run */
} result;

typedef struct enrich {
    /* options */
    const char *out, *input, *manifest, *lang;
    double min_conf;
    size_t max_bytes;
    uint64_t max_pixels;
    unsigned threads;
    int want_models; /* a model server is configured: keep the image bytes */
    builder_models_cfg mcfg;
    builder_models_t *models;
    builder_models_stats mstats; /* its totals, kept when it is freed */
    int write_rc;                /* first state write failure seen in a model callback */
    ps_err write_err;
    /* input */
    item *items;
    size_t n;
    size_t *todo, ntodo;
    /* work queue */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t next; /* next todo index to hand out */
    result *head, *tail;
    unsigned running; /* workers still running */
    int fatal;        /* a worker could not start its engine */
    int halt;         /* the main thread failed: workers stop */
    char fatal_msg[256];
    /* Back-pressure: results handed out and not freed yet (queued, or at the model server),
     * at most max_open, so fast OCR cannot pile up image bytes ahead of slow model calls. */
    size_t open, max_open;
    pthread_cond_t room;
    result *at_models; /* submitted to the model client, not reported yet */
    /* state */
    int state_fd;
    double last_sync;
    /* counts of this run */
    size_t done, ok, failed;
    double t0, last_progress;
    int tty, shown;
} enrich;

static volatile sig_atomic_t stop;
static void on_signal(int sig)
{
    stop = sig;
    signal(sig, SIG_DFL); /* a second one ends the process at once */
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        ps_log(PS_LOG_ERROR, "builder", "out_of_memory", "bytes=%zu", n);
        abort();
    }
    return p;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(xmalloc(n), s, n);
}

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: builder enrich (--input DIR | --manifest FILE.jsonl) --out DIR [options]\n\n"
        "OCRs sticker images (Tesseract), asks the model servers if given, and writes the\n"
        "corpus `builder build` reads: DIR/corpus.jsonl (id, ocr, keywords, desc, emotion,\n"
        "image), DIR/embeddings.npy (with an embedding server), DIR/errors.jsonl (one line per\n"
        "sticker that failed) and DIR/state/ (a rerun skips the stickers already done).\n"
        "PNG, JPEG, GIF (first frame), WebP. Ids: a file named <decimal u64>.<ext> has that\n"
        "id, any other the 63-bit hash of its path relative to --input.\n"
        "Exit 0: all done; 1: some failed; 130: interrupted.\n\n"
        "options:\n"
        "  --input DIR         a directory of images (walked recursively)\n"
        "  --manifest FILE     JSON Lines: id, path (relative to the manifest), known fields\n"
        "  --out DIR           output directory (created; an earlier run's state is resumed)\n"
        "  --ocr-lang L        Tesseract languages (default chi_sim+eng)\n"
        "  --ocr-threads N     OCR threads, one Tesseract engine each (default 1)\n"
        "  --ocr-min-conf X    keep OCR lines with confidence >= X, 0..1 (default 0.7)\n"
        "  --max-bytes N       largest image file (default %u)\n"
        "  --max-pixels N      largest image, width x height (default %llu)\n"
        "  --vlm-url URL       OpenAI-compatible VLM server (POST URL/v1/chat/completions):\n"
        "                      keywords, desc, emotion\n"
        "  --vlm-model NAME    the VLM's model name\n"
        "  --prompt-keywords P the VLM instruction for keywords (the paper's first; P is\n"
        "                      the text, or @FILE); it should ask for {\"keywords\": [...]}\n"
        "  --prompt-describe P the instruction for the description and emotions (the\n"
        "                      paper's second; text or @FILE); it should ask for\n"
        "                      {\"description\": \"...\", \"emotions\": [...]} (replies may\n"
        "                      also be fenced JSON or \"Keywords: a, b\" lines)\n"
        "  --embed-url URL     image embedding server (POST URL/v1/embeddings): embeddings.npy\n"
        "  --embed-model NAME  the embedding model's name\n"
        "  --dim N             expected embedding dimension (default: the first reply's)\n"
        "  --inflight N        model requests in flight (default 8)\n"
        "  --timeout-ms N      per model request (default 60000)\n"
        "  --retries N         per model request on 429/5xx/transport errors (default 4)\n"
        "  --max-reply N       largest model reply in bytes (default 1048576)\n"
        "  (the API key, if any, is read from PERSRV_MODEL_API_KEY and never printed)\n"
        "  --help              this text\n",
        ENRICH_MAX_BYTES_DEFAULT, ENRICH_MAX_PIXELS_DEFAULT);
}

/**************************************************************************
 * Input
 */

static int is_image_name(const char *name)
{
    static const char *const ext[] = {".png", ".jpg", ".jpeg", ".gif", ".webp"};
    const char *dot = strrchr(name, '.');
    if (!dot) return 0;
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++)
        if (strcasecmp(dot, ext[i]) == 0) return 1;
    return 0;
}

typedef struct strvec {
    char **v;
    size_t n, cap;
} strvec;

static void sv_push(strvec *s, char *p)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 256;
        char **v = realloc(s->v, s->cap * sizeof *v);
        if (!v) abort();
        s->v = v;
    }
    s->v[s->n++] = p;
}

/* Relative paths of the images under root/rel, recursively. */
static int walk(const char *root, const char *rel, int depth, strvec *out, ps_err *err)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s%s%s", root, *rel ? "/" : "", rel);
    if (depth > ENRICH_MAX_DEPTH)
        return ps_err_set(err, PS_ETOOBIG, "%s: nested more than %d directories deep", dir,
                          ENRICH_MAX_DEPTH);
    DIR *d = opendir(dir);
    if (!d) return ps_err_set(err, PS_EIO, "%s: %s", dir, strerror(errno));
    struct dirent *de;
    int rc = 0;
    while (!rc && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue; /* ., .., hidden files */
        char sub[4096], full[8192];
        int k = snprintf(sub, sizeof sub, "%s%s%s", rel, *rel ? "/" : "", de->d_name);
        if (k < 0 || (size_t)k >= sizeof sub) {
            rc = ps_err_set(err, PS_ETOOBIG, "%s/%s: path too long", dir, de->d_name);
            break;
        }
        snprintf(full, sizeof full, "%s/%s", root, sub);
        struct stat st;
        if (stat(full, &st) != 0) continue; /* a dangling link */
        if (S_ISDIR(st.st_mode))
            rc = walk(root, sub, depth + 1, out, err);
        else if (S_ISREG(st.st_mode) && is_image_name(de->d_name))
            sv_push(out, xstrdup(sub));
    }
    closedir(d);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int load_dir(enrich *e, ps_err *err)
{
    strvec s = {0};
    int rc = walk(e->input, "", 0, &s, err);
    if (!rc) {
        qsort(s.v, s.n, sizeof *s.v, cmp_str);
        e->items = calloc(s.n ? s.n : 1, sizeof *e->items);
        if (!e->items) abort();
        for (size_t i = 0; i < s.n; i++) {
            item *it = &e->items[i];
            it->id = builder_enrich_id(s.v[i]);
            size_t len = strlen(e->input) + strlen(s.v[i]) + 2;
            it->path = xmalloc(len);
            snprintf(it->path, len, "%s/%s", e->input, s.v[i]);
            it->image = s.v[i];
            s.v[i] = NULL;
        }
        e->n = s.n;
    }
    for (size_t i = 0; i < s.n; i++) free(s.v[i]);
    free(s.v);
    return rc;
}

static int load_manifest(enrich *e, ps_err *err)
{
    FILE *f = fopen(e->manifest, "rb");
    if (!f) return ps_err_set(err, PS_EIO, "%s: %s", e->manifest, strerror(errno));
    char *dir = xstrdup(e->manifest), *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        strcpy(dir, ".");
    char *line = NULL;
    size_t cap = 0, lineno = 0, ncap = 0;
    ssize_t len;
    int rc = 0;
    while (!rc && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
        if (len == 0) continue;
        ps_sticker_rec rec;
        ps_err perr = {0};
        json_error_t je;
        if (ps_sticker_parse(line, (size_t)len, &rec, &perr)) {
            rc = ps_err_set(err, perr.code, "%s:%zu: %s", e->manifest, lineno, perr.msg);
            break;
        }
        uint64_t id = rec.id;
        ps_sticker_rec_clear(&rec);
        json_t *o = json_loadb(line, (size_t)len, JSON_DECODE_INT_AS_REAL, &je);
        json_t *p = o ? json_object_get(o, "path") : NULL;
        if (!json_is_string(p) || !json_string_length(p)) {
            json_decref(o);
            rc = ps_err_set(err, PS_EPARSE, "%s:%zu: field path: expected a file name", e->manifest,
                            lineno);
            break;
        }
        if (e->n == ncap) {
            ncap = ncap ? ncap * 2 : 256;
            item *v = realloc(e->items, ncap * sizeof *v);
            if (!v) abort();
            e->items = v;
        }
        item *it = &e->items[e->n++];
        memset(it, 0, sizeof *it);
        it->id = id;
        const char *ps = json_string_value(p);
        size_t plen = strlen(dir) + strlen(ps) + 2;
        it->path = xmalloc(plen);
        if (ps[0] == '/')
            snprintf(it->path, plen, "%s", ps);
        else
            snprintf(it->path, plen, "%s/%s", dir, ps);
        json_t *img = json_object_get(o, "image");
        it->image = xstrdup(json_is_string(img) ? json_string_value(img) : ps);
        json_object_del(o, "id");
        json_object_del(o, "path");
        it->known = o;
    }
    if (!rc && ferror(f)) rc = ps_err_set(err, PS_EIO, "%s: read failed", e->manifest);
    free(line);
    free(dir);
    fclose(f);
    return rc;
}

/* id -> item index; a repeated id is marked on the later item and maps to the first. Out of
 * memory aborts, like the rest of this command's setup. */
static void idmap_build(ps_map *m, item *items, size_t n)
{
    ps_map_init(m, PS_MAP_U64);
    if (ps_map_reserve(m, n)) abort();
    for (size_t i = 0; i < n; i++) {
        uint64_t *v;
        if (ps_map_u64_add(m, items[i].id, &v) == 0) /* reserved: cannot fail */
            snprintf(items[i].dup, sizeof items[i].dup, "id also of %.40s", items[*v].image);
        else
            *v = i;
    }
}

/**************************************************************************
 * State
 */

static int parse_id_str(const char *s, uint64_t *out)
{
    char *end;
    if (!s || *s < '0' || *s > '9') return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno) return -1;
    *out = v;
    return 0;
}

/* Set it->state to rec (owned), moving its "emb" array out of the JSON into it->emb. */
static void item_set_state(item *it, json_t *rec)
{
    json_decref(it->state);
    free(it->emb);
    it->state = rec;
    it->emb = NULL;
    it->emb_dim = 0;
    json_t *a = json_object_get(rec, "emb");
    size_t n = json_array_size(a);
    if (n && n <= UINT32_MAX && (it->emb = malloc(n * sizeof *it->emb)) != NULL) {
        for (size_t k = 0; k < n; k++) it->emb[k] = (float)json_number_value(json_array_get(a, k));
        it->emb_dim = (uint32_t)n;
    }
    json_object_del(rec, "emb");
}

/* Read OUT/state/done.jsonl into items[].state; returns the number of lines taken. */
static size_t state_load(enrich *e, const ps_map *m, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char *line = NULL;
    size_t cap = 0, taken = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) >= 0) {
        if (len < 2 || line[len - 1] != '\n') continue; /* a torn last line */
        json_t *o = json_loadb(line, (size_t)len, 0, NULL);
        uint64_t id;
        if (!o || parse_id_str(json_string_value(json_object_get(o, "id")), &id)) {
            json_decref(o);
            continue;
        }
        const uint64_t *v = ps_map_u64_get(m, id);
        if (!v) {
            json_decref(o); /* a sticker no longer in the input */
            continue;
        }
        item_set_state(&e->items[*v], o);
        taken++;
    }
    free(line);
    fclose(f);
    return taken;
}

static int state_ok(const item *it)
{
    return it->state && json_is_true(json_object_get(it->state, "ok"));
}

/* Done for this run: recorded ok, and with what this run's configuration asks for. A sticker
 * done before --vlm-url was given has no VLM fields, one done before --embed-url (or with
 * another embedding model, or another dimension) no usable embedding: both are redone. */
static int state_done(const enrich *e, const item *it)
{
    if (!state_ok(it)) return 0;
    if (e->mcfg.vlm_url) {
        json_t *f = json_object_get(it->state, "fields");
        static const char *const vlm[] = {"keywords", "desc", "emotion"};
        for (size_t k = 0; k < 3; k++)
            if (!json_object_get(f, vlm[k])) return 0;
    }
    if (e->mcfg.embed_url) {
        const char *model = json_string_value(json_object_get(it->state, "emb_model"));
        if (!it->emb_dim) return 0;
        if (e->mcfg.dim && it->emb_dim != e->mcfg.dim) return 0;
        if (strcmp(model ? model : "", e->mcfg.embed_model ? e->mcfg.embed_model : "") != 0)
            return 0;
    }
    return 1;
}

/* Append one record and sync it at most once per ENRICH_SYNC_S (always when force). */
static int state_append(enrich *e, json_t *rec, ps_err *err)
{
    char *s = json_dumps(rec, JSON_COMPACT);
    if (!s) return ps_err_set(err, PS_ENOMEM, "out of memory writing the state");
    size_t n = strlen(s);
    s[n] = '\n'; /* json_dumps' NUL becomes the newline; length n + 1 */
    const char *p = s;
    size_t left = n + 1;
    while (left) {
        ssize_t w = write(e->state_fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) {
            free(s);
            return ps_err_set(err, PS_EIO, "writing %s/state/done.jsonl: %s", e->out,
                              strerror(errno));
        }
        p += w;
        left -= (size_t)w;
    }
    free(s);
    double now = builder_now();
    if (now - e->last_sync >= ENRICH_SYNC_S) {
        fdatasync(e->state_fd);
        e->last_sync = now;
    }
    return 0;
}

/**************************************************************************
 * Outputs
 */

/* Write the file through a temp file + fsync + rename + fsync of the directory. */
typedef struct atomic_file {
    char path[4096], tmp[4200];
    FILE *f;
} atomic_file;

static int af_open(atomic_file *a, const char *dir, const char *name, ps_err *err)
{
    snprintf(a->path, sizeof a->path, "%s/%s", dir, name);
    snprintf(a->tmp, sizeof a->tmp, "%s.tmp.%ld", a->path, (long)getpid());
    a->f = fopen(a->tmp, "wb");
    if (!a->f) return ps_err_set(err, PS_EIO, "%s: %s", a->tmp, strerror(errno));
    return 0;
}

static int af_commit(atomic_file *a, const char *dir, ps_err *err)
{
    int bad = fflush(a->f) != 0 || fsync(fileno(a->f)) != 0;
    bad |= fclose(a->f) != 0;
    a->f = NULL;
    if (bad || rename(a->tmp, a->path) != 0) {
        int e = errno;
        unlink(a->tmp);
        return ps_err_set(err, PS_EIO, "writing %s: %s", a->path, strerror(e));
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    return 0;
}

static void af_abort(atomic_file *a)
{
    if (a->f) fclose(a->f);
    a->f = NULL;
    unlink(a->tmp);
}

/* "{"id":<digits>," + the fields object's members: ids above 2^63-1 stay exact. */
static int write_line(FILE *f, uint64_t id, const json_t *fields)
{
    char *s = json_dumps(fields, JSON_COMPACT);
    if (!s) return -1;
    int r =
        fprintf(f, "{\"id\":%llu%s%s\n", (unsigned long long)id, strlen(s) > 2 ? "," : "", s + 1);
    free(s);
    return r < 0 ? -1 : 0;
}

static int write_outputs(enrich *e, size_t *nok, size_t *nfail, ps_err *err)
{
    atomic_file cf = {0}, ef = {0}, nf = {0};
    int rc = 0;
    size_t dim = 0, rows = 0;
    *nok = *nfail = 0;
    for (size_t i = 0; i < e->n; i++)
        if (!e->items[i].dup[0] && state_done(e, &e->items[i]) && !dim) dim = e->items[i].emb_dim;
    if ((rc = af_open(&cf, e->out, "corpus.jsonl", err))) return rc;
    if ((rc = af_open(&ef, e->out, "errors.jsonl", err))) goto fail;
    if (dim && (rc = af_open(&nf, e->out, "embeddings.npy", err))) goto fail;
    if (dim) {
        char hdr[PS_NPY_HEADER_MAX];
        size_t hn = ps_npy_header(hdr, 0, dim); /* rewritten with the row count below */
        fwrite(hdr, 1, hn, nf.f);
    }
    for (size_t i = 0; i < e->n && !rc; i++) {
        item *it = &e->items[i];
        if (it->dup[0]) {
            json_t *o = json_pack("{s:s, s:s, s:s}", "path", it->image, "stage", "input", "message",
                                  it->dup);
            if (!o || write_line(ef.f, it->id, o)) rc = ps_err_set(err, PS_EIO, "errors.jsonl");
            json_decref(o);
            (*nfail)++;
            continue;
        }
        if (!it->state) continue;
        if (!state_ok(it)) {
            json_t *o = json_pack("{s:s, s:O?, s:O?}", "path", it->image, "stage",
                                  json_object_get(it->state, "stage"), "message",
                                  json_object_get(it->state, "message"));
            if (!o || write_line(ef.f, it->id, o)) rc = ps_err_set(err, PS_EIO, "errors.jsonl");
            json_decref(o);
            (*nfail)++;
            continue;
        }
        if (!state_done(e, it)) continue; /* done before this configuration; not redone yet */
        if (dim && it->emb_dim != dim) {
            /* an earlier run's server answered another dimension */
            char msg[160];
            snprintf(msg, sizeof msg,
                     "embedding of dimension %zu, the others %zu: rerun with --dim to redo it",
                     (size_t)it->emb_dim, dim);
            json_t *o =
                json_pack("{s:s, s:s, s:s}", "path", it->image, "stage", "model", "message", msg);
            if (!o || write_line(ef.f, it->id, o)) rc = ps_err_set(err, PS_EIO, "errors.jsonl");
            json_decref(o);
            (*nfail)++;
            continue;
        }
        if (write_line(cf.f, it->id, json_object_get(it->state, "fields")))
            rc = ps_err_set(err, PS_EIO, "writing corpus.jsonl");
        if (dim) {
            fwrite(it->emb, sizeof(float), dim, nf.f);
            rows++;
        }
        (*nok)++;
    }
    if (!rc && dim) {
        char hdr[PS_NPY_HEADER_MAX];
        size_t h0 = ps_npy_header(hdr, 0, dim), hn = ps_npy_header(hdr, rows, dim);
        if (hn != h0 || fseek(nf.f, 0, SEEK_SET) != 0 || fwrite(hdr, 1, hn, nf.f) != hn)
            rc = ps_err_set(err, PS_EIO, "writing embeddings.npy header");
    }
    if (!rc) rc = af_commit(&cf, e->out, err);
    if (!rc) rc = af_commit(&ef, e->out, err);
    if (!rc && dim) rc = af_commit(&nf, e->out, err);
    if (!rc) return 0;
fail:
    af_abort(&cf);
    af_abort(&ef);
    af_abort(&nf);
    return rc;
}

/**************************************************************************
 * Workers
 */

typedef struct worker {
    enrich *e;
    pthread_t th;
} worker;

static void push_result(enrich *e, result *r)
{
    pthread_mutex_lock(&e->mu);
    if (e->tail)
        e->tail->next = r;
    else
        e->head = r;
    e->tail = r;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

/* Read, decode and OCR one sticker into r. The worker's engine starts on the first sticker
 * that needs OCR (a manifest may give every `ocr`). Returns -1 when the engine cannot start
 * (e->fatal is set; r is not a result). */
static int process(enrich *e, builder_ocr_t **ocr, size_t idx, result *r)
{
    item *it = &e->items[idx];
    ps_err err = {0};
    unsigned char *data = NULL;
    size_t len = 0;
    PIX *pix = NULL;
    r->item = idx;
    r->stage = "read";
    if ((r->rc = builder_read_file(it->path, e->max_bytes, &data, &len, &err))) goto out;
    r->stage = "decode";
    if (!(pix = builder_image_decode(data, len, e->max_pixels, &r->mime, &err))) {
        r->rc = err.code ? err.code : PS_EPARSE;
        goto out;
    }
    r->stage = "ocr";
    /* redone for the model fields only: its OCR text from the earlier run is kept */
    const char *before =
        state_ok(it)
            ? json_string_value(json_object_get(json_object_get(it->state, "fields"), "ocr"))
            : NULL;
    if (it->known && json_object_get(it->known, "ocr"))
        ; /* given by the manifest */
    else if (before)
        r->ocr = xstrdup(before);
    else if (!*ocr && !(*ocr = builder_ocr_new(e->lang, e->min_conf, &err))) {
        pthread_mutex_lock(&e->mu);
        if (!e->fatal) {
            e->fatal = 1;
            snprintf(e->fatal_msg, sizeof e->fatal_msg, "%s", err.msg);
        }
        pthread_mutex_unlock(&e->mu);
        pixDestroy(&pix);
        free(data);
        return -1;
    } else if ((r->rc = builder_ocr_run(*ocr, pix, &r->ocr, &err)))
        goto out;
    if (e->want_models) {
        r->img = data;
        r->img_len = len;
        data = NULL;
    }
out:
    if (r->rc) snprintf(r->msg, sizeof r->msg, "%s", err.msg);
    pixDestroy(&pix);
    free(data);
    return 0;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    enrich *e = w->e;
    builder_ocr_t *ocr = NULL;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        while (e->max_open && e->open >= e->max_open && !stop && !e->halt) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 250 * 1000000L; /* a signal sets stop without waking us */
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&e->room, &e->mu, &ts);
        }
        size_t k = e->next;
        int go = !stop && !e->fatal && !e->halt && k < e->ntodo;
        if (go) {
            e->next++;
            e->open++;
        }
        pthread_mutex_unlock(&e->mu);
        if (!go) break;
        result *r = calloc(1, sizeof *r);
        if (!r) abort();
        if (process(e, &ocr, e->todo[k], r) == 0) {
            push_result(e, r);
        } else {
            free(r);
            pthread_mutex_lock(&e->mu);
            e->open--;
            pthread_mutex_unlock(&e->mu);
        }
    }
    builder_ocr_free(ocr);
    pthread_mutex_lock(&e->mu);
    e->running--;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

/**************************************************************************
 * Main thread: records results, shows progress
 */

static void progress(enrich *e, int final)
{
    double now = builder_now(), el = now - e->t0;
    if (!final && now - e->last_progress < (e->tty ? ENRICH_PROGRESS_TTY_S : ENRICH_PROGRESS_LOG_S))
        return;
    e->last_progress = now;
    double rate = el > 1e-9 ? e->done / el : 0;
    double eta = rate > 0 && e->done < e->ntodo ? (e->ntodo - e->done) / rate : 0;
    if (e->tty) {
        fprintf(stderr, "\renrich: %zu/%zu images (%.1f/s, ETA %.0fs, %zu failed)\033[K%s", e->done,
                e->ntodo, rate, eta, e->failed, final ? "\n" : "");
        e->shown = !final;
    } else if (!final) {
        ps_log(PS_LOG_INFO, "builder", "enrich_progress",
               "done=%zu total=%zu rate=%.2f eta_s=%.0f failed=%zu", e->done, e->ntodo, rate, eta,
               e->failed);
    }
}

/* Record one finished sticker in the state. ocr: as OCRed (NULL: kept from the manifest). */
static int record(enrich *e, result *r, const char *kw, const char *desc, const char *emo,
                  const float *emb, uint32_t dim, ps_err *err)
{
    item *it = &e->items[r->item];
    char id[24];
    snprintf(id, sizeof id, "%llu", (unsigned long long)it->id);
    json_t *rec;
    if (r->rc) {
        rec = json_pack("{s:s, s:b, s:s, s:s, s:s}", "id", id, "ok", 0, "path", it->image, "stage",
                        r->stage, "message", r->msg);
    } else {
        json_t *f = it->known ? json_deep_copy(it->known) : json_object();
        if (!f) return ps_err_set(err, PS_ENOMEM, "out of memory");
        if (r->ocr) json_object_set_new(f, "ocr", json_string(r->ocr));
        if (kw && !json_object_get(f, "keywords"))
            json_object_set_new(f, "keywords", json_string(kw));
        if (desc && !json_object_get(f, "desc")) json_object_set_new(f, "desc", json_string(desc));
        if (emo && !json_object_get(f, "emotion"))
            json_object_set_new(f, "emotion", json_string(emo));
        /* a corpus image is a URL or a path under the image root (ps_image_check): an absolute
         * or ".." manifest path is not one, and is left out */
        if (ps_image_check(it->image, strlen(it->image), NULL) == 0)
            json_object_set_new(f, "image", json_string(it->image));
        rec = json_pack("{s:s, s:b, s:o}", "id", id, "ok", 1, "fields", f);
        if (rec && emb) {
            json_t *a = json_array();
            for (uint32_t k = 0; a && k < dim; k++) json_array_append_new(a, json_real(emb[k]));
            json_object_set_new(rec, "emb", a);
            json_object_set_new(rec, "emb_model",
                                json_string(e->mcfg.embed_model ? e->mcfg.embed_model : ""));
        }
    }
    if (!rec) return ps_err_set(err, PS_ENOMEM, "out of memory");
    int rc = state_append(e, rec, err);
    item_set_state(it, rec);
    e->done++;
    if (r->rc) {
        e->failed++;
        if (e->tty && e->shown) fputs("\r\033[K", stderr);
        e->shown = 0;
        ps_log(PS_LOG_WARN, "builder", "enrich_failed", "id=%s path=\"%s\" stage=%s msg=\"%s\"", id,
               it->image, r->stage, r->msg);
    } else {
        e->ok++;
    }
    return rc;
}

static void result_free(enrich *e, result *r)
{
    if (!r) return;
    free(r->ocr);
    free(r->img);
    free(r);
    pthread_mutex_lock(&e->mu);
    e->open--;
    pthread_cond_signal(&e->room);
    pthread_mutex_unlock(&e->mu);
}

static void at_models_link(enrich *e, result *r)
{
    r->mprev = NULL;
    r->mnext = e->at_models;
    if (e->at_models) e->at_models->mprev = r;
    e->at_models = r;
}

static void at_models_unlink(enrich *e, result *r)
{
    if (r->mprev)
        r->mprev->mnext = r->mnext;
    else
        e->at_models = r->mnext;
    if (r->mnext) r->mnext->mprev = r->mprev;
}

/* Pop everything the workers finished; wait up to wait_ms when nothing is. */
static result *take_results(enrich *e, int *workers_left, long wait_ms)
{
    pthread_mutex_lock(&e->mu);
    if (!e->head && e->running && wait_ms > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += wait_ms * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&e->cv, &e->mu, &ts);
    }
    result *r = e->head;
    e->head = e->tail = NULL;
    *workers_left = (int)e->running;
    pthread_mutex_unlock(&e->mu);
    return r;
}

/* A sticker's model calls finished: record it with its VLM text and embedding. */
static void model_done(const builder_model_result *m, void *ctx)
{
    enrich *e = ctx;
    result *r = m->arg;
    ps_err werr = {0};
    int wrc;
    at_models_unlink(e, r);
    if (m->rc) {
        r->rc = m->rc;
        r->stage = "model";
        snprintf(r->msg, sizeof r->msg, "%s", m->err);
        wrc = record(e, r, NULL, NULL, NULL, NULL, 0, &werr);
    } else {
        wrc = record(e, r, m->keywords, m->desc, m->emotion, m->embedding, m->dim, &werr);
    }
    if (wrc && !e->write_rc) {
        e->write_rc = wrc;
        e->write_err = werr;
    }
    result_free(e, r);
}

static int run(enrich *e, ps_err *err)
{
    worker w[ENRICH_MAX_THREADS];
    unsigned started = 0;
    int rc = 0;
    e->running = e->threads;
    for (; started < e->threads; started++) {
        w[started].e = e;
        if (pthread_create(&w[started].th, NULL, worker_main, &w[started]) != 0) break;
    }
    if (started < e->threads) {
        pthread_mutex_lock(&e->mu);
        e->running -= e->threads - started;
        e->fatal = 1;
        snprintf(e->fatal_msg, sizeof e->fatal_msg, "cannot start OCR threads");
        pthread_mutex_unlock(&e->mu);
    }
    for (;;) {
        int left;
        /* with model calls running the wait is theirs (below), not the queue's */
        size_t pending = e->models ? builder_models_pending(e->models) : 0;
        result *r = take_results(e, &left, pending ? 0 : 250);
        while (r) {
            result *next = r->next;
            r->next = NULL;
            if (e->models && !r->rc && (stop || rc)) {
                result_free(e, r); /* not asked: not done, a rerun does it */
                r = next;
                continue;
            }
            if (!rc && e->models && !r->rc) {
                ps_err serr = {0};
                if (builder_models_submit(e->models, e->items[r->item].id, r->img, r->img_len,
                                          r->mime, r, &serr) == 0) {
                    free(r->img);
                    r->img = NULL;
                    at_models_link(e, r);
                    r = next;
                    continue;
                }
                r->rc = serr.code ? serr.code : PS_EINTERNAL;
                r->stage = "model";
                snprintf(r->msg, sizeof r->msg, "%s", serr.msg);
            }
            if (!rc) rc = record(e, r, NULL, NULL, NULL, NULL, 0, err);
            result_free(e, r);
            r = next;
        }
        pending = e->models ? builder_models_pending(e->models) : 0;
        if (pending && !stop && !rc) {
            /* while OCR threads still feed stickers in, come back often to submit them */
            int mrc = left ? builder_models_poll(e->models, ENRICH_POLL_MS, model_done, e)
                           : builder_models_run(e->models, 0, model_done, e, &stop);
            if (mrc && !rc)
                rc = ps_err_set(err, mrc, "the model client failed (libcurl's multi interface)");
        }
        if (!rc && e->write_rc) {
            rc = e->write_rc;
            if (err) *err = e->write_err;
        }
        if (rc && !e->halt) {
            pthread_mutex_lock(&e->mu);
            e->halt = 1;
            pthread_cond_broadcast(&e->room);
            pthread_mutex_unlock(&e->mu);
        }
        progress(e, 0);
        if (!left && (!e->models || stop || rc || !builder_models_pending(e->models))) break;
    }
    for (unsigned i = 0; i < started; i++) pthread_join(w[i].th, NULL);
    /* what a stop or a failure left unreported: abandoned (a rerun redoes those stickers) */
    if (e->models) builder_models_get_stats(e->models, &e->mstats);
    builder_models_free(e->models);
    e->models = NULL;
    while (e->at_models) {
        result *r = e->at_models;
        at_models_unlink(e, r);
        result_free(e, r);
    }
    for (result *r = e->head, *next; r; r = next) {
        next = r->next;
        result_free(e, r);
    }
    e->head = e->tail = NULL;
    if (!rc && e->fatal) rc = ps_err_set(err, PS_EINVAL, "%s", e->fatal_msg);
    return rc;
}

/**************************************************************************
 * The command
 */

static int parse_size(const char *s, uint64_t *out)
{
    char *end;
    if (!s || *s < '0' || *s > '9') return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno || v == 0) return -1;
    *out = v;
    return 0;
}

/* The prompt flags' texts (file scope: an early usage error leaves them to the exit). */
static char *prompt_kw, *prompt_desc;

/* A prompt flag: the text itself, or @FILE (UTF-8, at most 64 KiB). */
static int load_prompt(const char *arg, char **out, ps_err *err)
{
    unsigned char *data = NULL;
    size_t len = 0;
    free(*out);
    *out = NULL;
    if (arg[0] != '@') {
        len = strlen(arg);
    } else if (builder_read_file(arg + 1, 64u << 10, &data, &len, err)) {
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        return ps_err_set(err, err->code, "%s: %s", arg + 1, msg);
    }
    const char *text = data ? (const char *)data : arg;
    if (len == 0 || memchr(text, '\0', len))
        return ps_err_set(err, PS_EINVAL, "the prompt is empty or holds a NUL byte");
    *out = xmalloc(len + 1);
    memcpy(*out, text, len);
    (*out)[len] = '\0';
    free(data);
    return 0;
}

int builder_cmd_enrich(int argc, char **argv)
{
    enrich e = {.lang = "chi_sim+eng",
                .mcfg = {.inflight = 8, .timeout_ms = 60000, .retries = 4, .max_reply = 1u << 20},
                .min_conf = 0.7,
                .max_bytes = ENRICH_MAX_BYTES_DEFAULT,
                .max_pixels = ENRICH_MAX_PIXELS_DEFAULT,
                .threads = 1,
                .state_fd = -1};
    static const struct option opts[] = {{"input", required_argument, 0, 'i'},
                                         {"manifest", required_argument, 0, 'm'},
                                         {"out", required_argument, 0, 'o'},
                                         {"ocr-lang", required_argument, 0, 'L'},
                                         {"ocr-threads", required_argument, 0, 'T'},
                                         {"ocr-min-conf", required_argument, 0, 'C'},
                                         {"max-bytes", required_argument, 0, 'B'},
                                         {"max-pixels", required_argument, 0, 'P'},
                                         {"vlm-url", required_argument, 0, 'u'},
                                         {"vlm-model", required_argument, 0, 'M'},
                                         {"embed-url", required_argument, 0, 'U'},
                                         {"embed-model", required_argument, 0, 'E'},
                                         {"dim", required_argument, 0, 'd'},
                                         {"inflight", required_argument, 0, 'I'},
                                         {"timeout-ms", required_argument, 0, 't'},
                                         {"retries", required_argument, 0, 'r'},
                                         {"prompt-keywords", required_argument, 0, 'k'},
                                         {"prompt-describe", required_argument, 0, 'D'},
                                         {"max-reply", required_argument, 0, 'R'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int ch;
    uint64_t v;
    char *end;
    ps_err err = {0};
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'i':
            e.input = optarg;
            break;
        case 'm':
            e.manifest = optarg;
            break;
        case 'o':
            e.out = optarg;
            break;
        case 'L':
            e.lang = optarg;
            break;
        case 'T':
            if (parse_size(optarg, &v) || v > ENRICH_MAX_THREADS) {
                fprintf(stderr, "builder enrich: --ocr-threads must be 1..%d\n",
                        ENRICH_MAX_THREADS);
                return 2;
            }
            e.threads = (unsigned)v;
            break;
        case 'C':
            e.min_conf = strtod(optarg, &end);
            if (*end || !(e.min_conf >= 0 && e.min_conf <= 1)) {
                fprintf(stderr, "builder enrich: --ocr-min-conf must be a number in 0..1\n");
                return 2;
            }
            break;
        case 'B':
            if (parse_size(optarg, &v) || v > SIZE_MAX / 2) {
                fprintf(stderr, "builder enrich: --max-bytes must be a positive integer\n");
                return 2;
            }
            e.max_bytes = (size_t)v;
            break;
        case 'P':
            if (parse_size(optarg, &e.max_pixels)) {
                fprintf(stderr, "builder enrich: --max-pixels must be a positive integer\n");
                return 2;
            }
            break;
        case 'u':
            e.mcfg.vlm_url = optarg;
            break;
        case 'M':
            e.mcfg.vlm_model = optarg;
            break;
        case 'U':
            e.mcfg.embed_url = optarg;
            break;
        case 'E':
            e.mcfg.embed_model = optarg;
            break;
        case 'd':
        case 'I':
        case 't':
        case 'r':
            errno = 0;
            v = strtoull(optarg, &end, 10);
            if (optarg[0] < '0' || optarg[0] > '9' || *end || errno || v > UINT32_MAX ||
                (v == 0 && (ch == 'I' || ch == 't'))) {
                fprintf(stderr, "builder enrich: --%s must be an integer in %s..2^32-1\n",
                        ch == 'd'   ? "dim"
                        : ch == 'I' ? "inflight"
                        : ch == 't' ? "timeout-ms"
                                    : "retries",
                        ch == 'I' || ch == 't' ? "1" : "0");
                return 2;
            }
            *(ch == 'd'   ? &e.mcfg.dim
              : ch == 'I' ? &e.mcfg.inflight
              : ch == 't' ? &e.mcfg.timeout_ms
                          : &e.mcfg.retries) = (uint32_t)v;
            break;
        case 'k':
        case 'D':
            if (load_prompt(optarg, ch == 'k' ? &prompt_kw : &prompt_desc, &err)) {
                fprintf(stderr, "builder enrich: --prompt-%s: %s\n",
                        ch == 'k' ? "keywords" : "describe", err.msg);
                return 2;
            }
            break;
        case 'R':
            if (parse_size(optarg, &v) || v > (1u << 30)) {
                fprintf(stderr, "builder enrich: --max-reply must be 1..%u bytes\n", 1u << 30);
                return 2;
            }
            e.mcfg.max_reply = (size_t)v;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!e.out || !e.input == !e.manifest || optind != argc) {
        fprintf(stderr, "builder enrich: --out and one of --input or --manifest are required\n");
        usage(stderr);
        return 2;
    }
    e.mcfg.prompt_keywords = prompt_kw;
    e.mcfg.prompt_describe = prompt_desc;
    ps_map m = PS_MAP_INIT(PS_MAP_U64);
    int rc = 1;
    char path[4200];
    e.t0 = builder_now();
    pthread_mutex_init(&e.mu, NULL);
    pthread_cond_init(&e.cv, NULL);
    pthread_cond_init(&e.room, NULL);
    if ((e.input ? load_dir(&e, &err) : load_manifest(&e, &err))) goto fail;
    idmap_build(&m, e.items, e.n);
    if (mkdir(e.out, 0755) != 0 && errno != EEXIST) {
        ps_err_set(&err, PS_EIO, "mkdir %s: %s", e.out, strerror(errno));
        goto fail;
    }
    snprintf(path, sizeof path, "%s/state", e.out);
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        ps_err_set(&err, PS_EIO, "mkdir %s: %s", path, strerror(errno));
        goto fail;
    }
    snprintf(path, sizeof path, "%s/state/done.jsonl", e.out);
    size_t resumed = state_load(&e, &m, path);
    e.state_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (e.state_fd < 0) {
        ps_err_set(&err, PS_EIO, "%s: %s", path, strerror(errno));
        goto fail;
    }
    e.todo = xmalloc(e.n * sizeof *e.todo);
    size_t skipped = 0, stale = 0;
    for (size_t i = 0; i < e.n; i++) {
        if (e.items[i].dup[0]) continue;
        if (state_done(&e, &e.items[i])) {
            skipped++;
            continue;
        }
        stale += state_ok(&e.items[i]);
        e.todo[e.ntodo++] = i;
    }
    ps_log(PS_LOG_INFO, "builder", "enrich_start",
           "stickers=%zu todo=%zu done_before=%zu redo=%zu state_lines=%zu threads=%u lang=%s "
           "min_conf=%.2f max_bytes=%zu max_pixels=%llu",
           e.n, e.ntodo, skipped, stale, resumed, e.threads, e.lang, e.min_conf, e.max_bytes,
           (unsigned long long)e.max_pixels);
    e.tty = isatty(STDERR_FILENO);
    if (e.mcfg.vlm_url || e.mcfg.embed_url) {
        e.mcfg.api_key = getenv("PERSRV_MODEL_API_KEY");
        e.want_models = 1;
        /* enough stickers ahead to keep every request slot busy (3 requests a sticker) */
        e.max_open = 2 * (size_t)e.mcfg.inflight + 2 * e.threads + 8;
        if (!(e.models = builder_models_new(&e.mcfg, &err))) goto fail;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int run_rc = run(&e, &err);
    progress(&e, 1);
    fdatasync(e.state_fd);
    if (run_rc) goto fail;
    size_t nok, nfail;
    if (write_outputs(&e, &nok, &nfail, &err)) goto fail;
    double el = builder_now() - e.t0;
    size_t remaining = e.n - nok - nfail;
    printf("enriched %s: %zu stickers, %zu done, %zu failed%s; this run: %zu images "
           "(%zu already done skipped) in %.1f s (%.1f images/s)",
           e.out, e.n, nok, nfail, nfail ? " (see errors.jsonl)" : "", e.done, skipped, el,
           el > 0 ? e.done / el : 0.0);
    if (e.want_models)
        printf("; %llu model requests (%llu retries)", (unsigned long long)e.mstats.requests,
               (unsigned long long)e.mstats.retries);
    if (stop) printf("; interrupted: %zu not done, run again to finish", remaining);
    printf("\n");
    rc = stop ? 130 : nfail ? 1 : 0;
    goto out;
fail:
    fprintf(stderr, "builder enrich: %s\n", err.msg);
out:
    builder_models_free(e.models);
    if (e.state_fd >= 0) close(e.state_fd);
    for (size_t i = 0; i < e.n; i++) {
        free(e.items[i].path);
        free(e.items[i].image);
        json_decref(e.items[i].known);
        json_decref(e.items[i].state);
        free(e.items[i].emb);
    }
    free(e.items);
    free(e.todo);
    ps_map_free(&m);
    free(prompt_kw);
    free(prompt_desc);
    prompt_kw = prompt_desc = NULL;
    pthread_mutex_destroy(&e.mu);
    pthread_cond_destroy(&e.cv);
    pthread_cond_destroy(&e.room);
    return rc;
}
