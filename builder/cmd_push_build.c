/*
 * cmd_push_build.c — `builder push` (a new build into a running cluster) and `builder
 * activate` (roll back or forward to a version every replica still holds), over the daemons'
 * admin HTTP ports (/work/push-spec.md; the HTTP engine is push.c).
 *
 * push, in order; nothing changes until every check of step 1 passed:
 *   1. read DIR/cluster.json and every shard's snapshot.json (each listed file must be on disk
 *      with its manifest size); GET /healthz of every broker and replica: the brokers agree on
 *      the version C they serve, every replica serves the shard the topology says and serves
 *      C, and none holds V with another fingerprint (one version number is one build);
 *   2. on every replica, abort V (a leftover of an interrupted push; also the first admin
 *      request, so a refused token shows before anything is retired) and other unfinished
 *      stagings; on every replica that does not hold V yet, retire every held version that
 *      is neither C nor V;
 *   3. stage V on every replica that does not hold it loaded yet: POST the manifest, PUT each
 *      file in chunks read with pread as they are sent, then (phase 1) prepare that replica.
 *      A replica has one request in flight at a time, the push --parallel in all. A failed
 *      chunk is retried with backoff; a 409 resumes from the offset the shard expects (or,
 *      when it does not say, restarts that replica's staging);
 *   4. if anything failed (or on SIGINT/SIGTERM): abort V, and retire it where prepared, on
 *      every replica this push staged; switch nothing; exit 1;
 *   5. phase 2: activate V on every replica, then switch every broker. If one fails: switch
 *      back the brokers that moved, activate C again on the replicas that did, exit 1. V stays
 *      loaded, so `builder activate --version V` can retry the switch.
 * C stays loaded on every replica after a push: it is what `builder activate` rolls back to.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "builder.h"
#include "pipeline.h"
#include "push.h"
#include "ps/admin.h"
#include "ps/log.h"
#include "ps/snapshot.h"

#define PUSH_MAX_CHUNK (8u << 20) /* the shard's cap on one PUT */
#define MAX_URL        900

/* One shard directory of the build. */
typedef struct pshard {
    char dir[4096];
    char *manifest; /* snapshot.json as read (the stage request's body) */
    size_t manifest_len;
    ps_snapshot snap;
    uint64_t bytes; /* sum of its files */
} pshard;

enum { ST_IDLE, ST_STAGE, ST_CHUNK, ST_PREPARE, ST_DONE };

typedef struct pctx pctx;

/* A daemon of the topology: a replica (shard >= 0) or a broker (shard < 0). */
typedef struct pnode {
    pctx *p;
    char url[MAX_URL + 1]; /* admin base URL, no trailing '/' */
    int shard, idx;        /* shard number (-1 broker) and replica (or broker) index */
    builder_xfer x;
    char path[256]; /* the current round's request path */
    int tries;
    /* /healthz */
    uint64_t active;    /* replica: active version; broker: served version (0: none) */
    char fp[17];        /* broker: the fingerprint it serves */
    int holds_v;        /* replica: V loaded with the build's fingerprint */
    char v_fp[17];      /* replica: the fingerprint of V it holds ("" when not held) */
    uint64_t retire[8]; /* versions to retire */
    uint64_t abort_[8]; /* unfinished stagings to abort */
    size_t nretire, nabort;
    /* staging */
    int step, restarts, stage_sent, prepare_sent, prepared;
    size_t file;
    uint64_t off, base; /* offset in the current file; bytes of the files before it */
    int fd;
    /* phase 2 */
    int act_moved, act_ok, sw_moved, sw_ok; /* moved: took effect, or may have */
    uint64_t previous;
} pnode;

struct pctx {
    const char *cmd; /* "push" or "activate" */
    builder_http_t *h;
    pnode *nodes;
    size_t nnodes, nrep; /* nodes[0, nrep): replicas in shard order; then the brokers */
    uint32_t nshards;
    pshard *shards; /* push only */
    uint64_t version, current;
    char fp[17];
    int has_current;
    long timeout_ms, prepare_ms;
    int retries, json;
    int round_retries; /* of the round running */
    uint64_t chunk;
    /* the first failure, named */
    int failed;
    char err[1536];
    /* progress of the staging */
    uint64_t total;
    double t0, last;
    int tty, shown;
};

static volatile sig_atomic_t interrupted;
static void on_signal(int sig)
{
    interrupted = sig;
    signal(sig, SIG_DFL); /* a second one ends the process at once */
}

/* ---- small helpers ---------------------------------------------------------------------- */

/* A log line while the staging progress is on a terminal: clear the progress line first (the
 * next tick draws it again below). */
static void clear_progress(pctx *p)
{
    if (p->tty && p->shown == 1) {
        fputs("\r\033[K", stderr);
        p->shown = 0;
        p->last = 0;
    }
}
#define plog(p, level, ...)                                                                        \
    do {                                                                                           \
        if ((level) >= ps_log_level) clear_progress(p);                                            \
        ps_log((level), __VA_ARGS__);                                                              \
    } while (0)

static const char *node_name(const pnode *n, char *buf, size_t size)
{
    if (n->shard >= 0)
        snprintf(buf, size, "shard %d replica %d (%s)", n->shard, n->idx, n->url);
    else
        snprintf(buf, size, "broker %d (%s)", n->idx, n->url);
    return buf;
}

static void set_errorv(pctx *p, const char *fmt, va_list ap)
{
    if (p->failed) return;
    p->failed = 1;
    vsnprintf(p->err, sizeof p->err, fmt, ap);
}

static void set_error(pctx *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(pctx *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_errorv(p, fmt, ap);
    va_end(ap);
}

/* "shard 1 replica 0 (URL): POST /admin/prepare?version=7: HTTP 500 corrupt: ..." */
static void xfer_error(pctx *p, const pnode *n, const char *what)
{
    char name[1100], reason[900];
    node_name(n, name, sizeof name);
    builder_xfer_reason(&n->x, reason, sizeof reason);
    plog(p, PS_LOG_ERROR, "builder", "request_failed", "node=\"%s\" request=\"%s %s\" code=%s",
         name, n->x.method, what, ps_errname(builder_xfer_code(&n->x)));
    set_error(p, "%s: %s %s: %s", name, n->x.method, what, reason);
}

static double backoff(int tries)
{
    double d = 0.25;
    for (int i = 1; i < tries && d < 8; i++) d *= 2;
    return d < 8 ? d : 8;
}

static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!s || !*s || *s == '-') return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < min || v > max) return -1;
    *out = v;
    return 0;
}

/* A JSON integer >= 0 (versions stay below 2^63: jansson holds int64). */
static uint64_t json_u64(json_t *v)
{
    json_int_t i = json_is_integer(v) ? json_integer_value(v) : 0;
    return i > 0 ? (uint64_t)i : 0;
}

/* ---- reading the build ------------------------------------------------------------------ */

static char *read_small_file(const char *path, size_t cap, size_t *len, pctx *p)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        set_error(p, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(cap + 1);
    size_t n = buf ? fread(buf, 1, cap + 1, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (!buf)
        set_error(p, "out of memory reading %s", path);
    else if (bad)
        set_error(p, "%s: read error", path);
    else if (n > cap)
        set_error(p, "%s: larger than %zu bytes", path, cap);
    if (!buf || bad || n > cap) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* DIR/cluster.json and every shard's manifest; each listed file must exist with its size. */
static int load_build(pctx *p, const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/cluster.json", dir);
    json_error_t je;
    json_t *c = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!c) {
        set_error(p, "%s: %s", path, je.text);
        return -1;
    }
    json_int_t shards = json_integer_value(json_object_get(c, "shards"));
    json_int_t version = json_integer_value(json_object_get(c, "version"));
    const char *fp = json_string_value(json_object_get(c, "fingerprint"));
    json_t *dirs = json_object_get(c, "shard_dirs");
    if (shards < 1 || shards > 1024 || version < 1 || !fp || strlen(fp) != 16) {
        set_error(p,
                  "%s: shards (1..1024), version (>= 1) and fingerprint (16 hex digits) are "
                  "required: was it written by `builder build --shards N`?",
                  path);
        json_decref(c);
        return -1;
    }
    if (dirs && (!json_is_array(dirs) || json_array_size(dirs) != (size_t)shards)) {
        set_error(p, "%s: shard_dirs must list %lld directories", path, (long long)shards);
        json_decref(c);
        return -1;
    }
    p->nshards = (uint32_t)shards;
    p->version = (uint64_t)version;
    memcpy(p->fp, fp, 17);
    if (!(p->shards = calloc(p->nshards, sizeof *p->shards))) {
        set_error(p, "out of memory");
        json_decref(c);
        return -1;
    }
    int rc = 0;
    for (uint32_t i = 0; i < p->nshards && !rc; i++) {
        pshard *s = &p->shards[i];
        const char *sd = dirs ? json_string_value(json_array_get(dirs, i)) : NULL;
        if (dirs && (!sd || !*sd || strchr(sd, '/'))) {
            set_error(p, "%s: shard_dirs[%u] is not a directory name", path, i);
            rc = -1;
            break;
        }
        if (sd)
            snprintf(s->dir, sizeof s->dir, "%s/%s", dir, sd);
        else
            snprintf(s->dir, sizeof s->dir, "%s/shard-%03u", dir, i);
        char mpath[4200];
        snprintf(mpath, sizeof mpath, "%s/%s", s->dir, PS_SNAPSHOT_FILE);
        if (!(s->manifest = read_small_file(mpath, PS_SNAPSHOT_MAX_JSON, &s->manifest_len, p))) {
            rc = -1;
            break;
        }
        ps_err e = {0};
        if (ps_snapshot_parse(s->manifest, s->manifest_len, &s->snap, &e)) {
            set_error(p, "%s: %s", mpath, e.msg);
            rc = -1;
            break;
        }
        if (s->snap.version != p->version || strcmp(s->snap.fingerprint, p->fp) != 0 ||
            s->snap.shard != i || s->snap.shards != p->nshards) {
            set_error(p,
                      "%s: version %llu, fingerprint %s, shard %u of %u; cluster.json says "
                      "version %llu, fingerprint %s, shard %u of %u",
                      mpath, (unsigned long long)s->snap.version, s->snap.fingerprint,
                      s->snap.shard, s->snap.shards, (unsigned long long)p->version, p->fp, i,
                      p->nshards);
            rc = -1;
            break;
        }
        for (size_t f = 0; f < s->snap.nfiles; f++) {
            char fpath[4400];
            struct stat st;
            snprintf(fpath, sizeof fpath, "%s/%s", s->dir, s->snap.files[f].name);
            if (stat(fpath, &st) != 0) {
                set_error(p, "%s: %s", fpath, strerror(errno));
                rc = -1;
                break;
            }
            if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != s->snap.files[f].bytes) {
                set_error(p, "%s: %lld bytes on disk, its manifest says %llu", fpath,
                          (long long)st.st_size, (unsigned long long)s->snap.files[f].bytes);
                rc = -1;
                break;
            }
            s->bytes += s->snap.files[f].bytes;
        }
    }
    json_decref(c);
    return rc;
}

/* ---- topology ----------------------------------------------------------------------------- */

static int add_node(pctx *p, json_t *u, int shard, int idx, const char *where, const char *file)
{
    const char *s = json_string_value(u);
    size_t len = s ? strlen(s) : 0;
    while (len && s[len - 1] == '/') len--;
    if (!len || len > MAX_URL) {
        set_error(p, "%s: %s must be an admin base URL (http://host:port)", file, where);
        return -1;
    }
    pnode *n = &p->nodes[p->nnodes];
    memset(n, 0, sizeof *n);
    memcpy(n->url, s, len);
    n->url[len] = '\0';
    for (size_t i = 0; i < p->nnodes; i++)
        if (strcmp(p->nodes[i].url, n->url) == 0) {
            set_error(p, "%s: %s is listed twice", file, n->url);
            return -1;
        }
    n->p = p;
    n->shard = shard;
    n->idx = idx;
    n->fd = -1;
    builder_xfer_init(&n->x);
    n->x.arg = n;
    p->nnodes++;
    return 0;
}

/* {"shards": [[url, ...], ...], "brokers": [url, ...]}; nshards: the build's (0: any). */
static int load_topology(pctx *p, const char *file, uint32_t nshards)
{
    json_error_t je;
    json_t *t = json_load_file(file, JSON_REJECT_DUPLICATES, &je);
    if (!t) {
        set_error(p, "%s: %s", file, je.text);
        return -1;
    }
    json_t *shards = json_object_get(t, "shards"), *brokers = json_object_get(t, "brokers");
    int rc = -1;
    char where[64];
    if (!json_is_array(shards) || json_array_size(shards) == 0 ||
        (brokers && !json_is_array(brokers))) {
        set_error(p,
                  "%s: \"shards\" (an array of arrays of URLs) and \"brokers\" (an array of "
                  "URLs) are required",
                  file);
        goto out;
    }
    if (nshards && json_array_size(shards) != nshards) {
        set_error(p, "%s lists %zu shards, the build has %u", file, json_array_size(shards),
                  nshards);
        goto out;
    }
    size_t total = json_array_size(brokers);
    for (size_t i = 0; i < json_array_size(shards); i++) {
        json_t *r = json_array_get(shards, i);
        if (!json_is_array(r) || json_array_size(r) == 0) {
            set_error(p, "%s: shards[%zu] must be a non-empty array of URLs", file, i);
            goto out;
        }
        total += json_array_size(r);
    }
    if (!(p->nodes = calloc(total, sizeof *p->nodes))) {
        set_error(p, "out of memory");
        goto out;
    }
    p->nshards = (uint32_t)json_array_size(shards);
    for (size_t i = 0; i < json_array_size(shards); i++) {
        json_t *r = json_array_get(shards, i);
        for (size_t j = 0; j < json_array_size(r); j++) {
            snprintf(where, sizeof where, "shards[%zu][%zu]", i, j);
            if (add_node(p, json_array_get(r, j), (int)i, (int)j, where, file)) goto out;
        }
    }
    p->nrep = p->nnodes;
    for (size_t j = 0; j < json_array_size(brokers); j++) {
        snprintf(where, sizeof where, "brokers[%zu]", j);
        if (add_node(p, json_array_get(brokers, j), -1, (int)j, where, file)) goto out;
    }
    rc = 0;
out:
    json_decref(t);
    return rc;
}

/* ---- rounds: one request to each of a set of nodes, in parallel ------------------------- */

static void round_done(builder_xfer *x)
{
    pnode *n = x->arg;
    if (x->cc == 0 && x->status == 200) return;
    if (builder_xfer_transient(x) && n->tries < n->p->round_retries) {
        char name[1100], reason[900];
        n->tries++;
        plog(n->p, PS_LOG_WARN, "builder", "retry",
             "node=\"%s\" request=\"%s %s\" try=%d reason=\"%s\"", node_name(n, name, sizeof name),
             x->method, n->path, n->tries + 1, builder_xfer_reason(x, reason, sizeof reason));
        x->not_before = builder_now() + backoff(n->tries);
        builder_http_add(n->p->h, x);
    }
}

/* Send `method` n->path to every node of sel[0, nsel). Afterwards each node's x holds its
 * result. Returns -1 only when the engine itself failed (p->err set). */
static int run_round(pctx *p, pnode **sel, size_t nsel, const char *method, long timeout_ms,
                     int admin, int retries)
{
    p->round_retries = retries;
    for (size_t i = 0; i < nsel; i++) {
        pnode *n = sel[i];
        builder_xfer_init(&n->x);
        n->x.arg = n;
        n->x.method = method;
        n->x.admin = admin;
        n->x.timeout_ms = timeout_ms;
        n->x.done = round_done;
        n->tries = 0;
        snprintf(n->x.url, sizeof n->x.url, "%s%s", n->url, n->path);
        builder_http_add(p->h, &n->x);
    }
    ps_err e = {0};
    if (builder_http_run(p->h, NULL, NULL, &e)) {
        set_error(p, "%s", e.msg);
        return -1;
    }
    return 0;
}

static int ok200(const pnode *n)
{
    return n->x.cc == 0 && n->x.status == 200;
}

static json_t *resp_json(const pnode *n)
{
    return n->x.resp ? json_loadb(n->x.resp, n->x.resp_len, 0, NULL) : NULL;
}

/* ---- step 1: health --------------------------------------------------------------------- */

/* GET /healthz everywhere; fills active/fp/holds_v and the retire/abort plan (push: plan 1).
 * Sets C (p->current). 0, or -1 with p->err naming the first daemon at fault. */
static int check_health(pctx *p, int plan)
{
    pnode **sel = malloc(p->nnodes * sizeof *sel);
    char name[1100];
    int rc = -1;
    if (!sel) {
        set_error(p, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < p->nnodes; i++) {
        sel[i] = &p->nodes[i];
        snprintf(sel[i]->path, sizeof sel[i]->path, "/healthz");
    }
    long t = p->timeout_ms < 10000 ? p->timeout_ms : 10000;
    if (run_round(p, sel, p->nnodes, "GET", t, 0, 1)) goto out;
    for (size_t i = 0; i < p->nnodes; i++) {
        pnode *n = &p->nodes[i];
        if (!ok200(n)) {
            xfer_error(p, n, n->path);
            goto out;
        }
        json_t *o = resp_json(n);
        if (!json_is_object(o)) {
            json_decref(o);
            set_error(p, "%s: GET /healthz: the answer is not a JSON object",
                      node_name(n, name, sizeof name));
            goto out;
        }
        n->active = json_u64(json_object_get(o, n->shard >= 0 ? "active" : "version"));
        const char *fp = json_string_value(json_object_get(o, "fingerprint"));
        snprintf(n->fp, sizeof n->fp, "%s", fp ? fp : "");
        if (n->shard >= 0) {
            json_t *jshard = json_object_get(o, "shard"), *jshards = json_object_get(o, "shards");
            json_t *versions = json_object_get(o, "versions");
            if (!json_is_integer(jshard) || !json_is_integer(jshards) || !json_is_array(versions)) {
                json_decref(o);
                set_error(p,
                          "%s: GET /healthz: no shard, shards or versions: is it a shard's "
                          "admin port?",
                          node_name(n, name, sizeof name));
                goto out;
            }
            if (json_integer_value(jshard) != n->shard ||
                json_integer_value(jshards) != (json_int_t)p->nshards) {
                set_error(p,
                          "%s: the topology lists it as shard %d of %u, it serves shard %lld "
                          "of %lld",
                          node_name(n, name, sizeof name), n->shard, p->nshards,
                          (long long)json_integer_value(jshard),
                          (long long)json_integer_value(jshards));
                json_decref(o);
                goto out;
            }
            n->v_fp[0] = '\0';
            n->nretire = n->nabort = 0;
            size_t k;
            json_t *v;
            json_array_foreach(versions, k, v)
            {
                uint64_t ver = json_u64(json_object_get(v, "version"));
                const char *vfp = json_string_value(json_object_get(v, "fingerprint"));
                if (json_is_true(json_object_get(v, "active")) && !n->active) n->active = ver;
                if (ver == p->version) {
                    snprintf(n->v_fp, sizeof n->v_fp, "%s", vfp ? vfp : "?");
                    n->holds_v = vfp && strcmp(vfp, p->fp) == 0;
                } else if (n->nretire < 8) {
                    n->retire[n->nretire++] = ver; /* narrowed to the stale ones below */
                }
            }
            /* Abort V first everywhere: it discards what an earlier, interrupted push of V
             * left, and being the first admin request, it shows a refused token before any
             * version is retired. */
            n->abort_[0] = p->version;
            n->nabort = 1;
            json_t *staging = json_object_get(o, "staging");
            json_array_foreach(staging, k, v)
            {
                uint64_t s = json_u64(v);
                if (s && s != p->version && n->nabort < 8) n->abort_[n->nabort++] = s;
            }
        }
        json_decref(o);
    }

    /* C: what the brokers serve (they must agree); without brokers, what the replicas do.
     * `activate` is how a split cluster is brought back to one version: there a split only
     * means that a failed switch is undone with what each daemon said it had before. */
    size_t from = p->nrep < p->nnodes ? p->nrep : 0, to = p->nrep < p->nnodes ? p->nnodes : p->nrep;
    pnode *n0 = &p->nodes[from];
    p->current = n0->active;
    for (size_t i = from + 1; i < to; i++) {
        pnode *n = &p->nodes[i];
        if (n->active == n0->active && (from == 0 || strcmp(n->fp, n0->fp) == 0)) continue;
        char name0[1100];
        node_name(n0, name0, sizeof name0);
        node_name(n, name, sizeof name);
        if (!plan) {
            ps_log(PS_LOG_WARN, "builder", "split_versions",
                   "node=\"%s\" version=%llu other=\"%s\" other_version=%llu", name0,
                   (unsigned long long)n0->active, name, (unsigned long long)n->active);
            p->current = 0;
            break;
        }
        set_error(p,
                  "%s serves version %llu but %s serves %llu: bring them to one version first "
                  "(`builder activate --version V`)",
                  name0, (unsigned long long)n0->active, name, (unsigned long long)n->active);
        goto out;
    }
    p->has_current = p->current != 0;
    if (!plan) {
        rc = 0;
        goto out;
    }
    if (p->has_current && p->current == p->version && p->nrep < p->nnodes &&
        strcmp(p->nodes[p->nrep].fp, p->fp) != 0) {
        set_error(p,
                  "the brokers already serve version %llu with fingerprint %s; this build is "
                  "fingerprint %s: build it with another --version",
                  (unsigned long long)p->version, p->nodes[p->nrep].fp, p->fp);
        goto out;
    }
    /* The plan per replica: keep C (and the active version when C is unknown), keep V when it
     * is the build's; retire the rest. */
    for (size_t i = 0; i < p->nrep; i++) {
        pnode *n = &p->nodes[i];
        node_name(n, name, sizeof name);
        /* One version number, one build: a broker caches answers by version, and rollback
         * (`builder activate`) names versions, so V is never replaced under the same number. */
        if (n->v_fp[0] && !n->holds_v) {
            set_error(p,
                      "%s already holds version %llu with fingerprint %s; this build is "
                      "fingerprint %s: build it with another --version",
                      name, (unsigned long long)p->version, n->v_fp, p->fp);
            goto out;
        }
        if (p->has_current && n->active && n->active != p->current && n->active != p->version) {
            set_error(p,
                      "%s serves version %llu but the brokers serve %llu: run `builder activate "
                      "--version %llu` first",
                      name, (unsigned long long)n->active, (unsigned long long)p->current,
                      (unsigned long long)p->current);
            goto out;
        }
        /* Retiring makes room for V (a shard holds two versions): a replica that holds V
         * already keeps what it has, e.g. the rollback version when the push repeats C. */
        size_t k = 0;
        for (size_t j = 0; j < n->nretire && !n->holds_v; j++) {
            uint64_t v = n->retire[j];
            if (!(p->has_current && v == p->current) && v != n->active) n->retire[k++] = v;
        }
        n->nretire = k;
    }
    rc = 0;
out:
    free(sel);
    return rc;
}

/* ---- step 2: retire stale versions ------------------------------------------------------ */

static int clean_replicas(pctx *p)
{
    pnode **sel = malloc((p->nrep ? p->nrep : 1) * sizeof *sel);
    char name[1100];
    if (!sel) {
        set_error(p, "out of memory");
        return -1;
    }
    for (int pass = 0; pass < 2; pass++) { /* 0: abort stagings, 1: retire versions */
        for (size_t k = 0; k < 8; k++) {
            size_t nsel = 0;
            for (size_t i = 0; i < p->nrep; i++) {
                pnode *n = &p->nodes[i];
                if (k >= (pass ? n->nretire : n->nabort)) continue;
                uint64_t v = pass ? n->retire[k] : n->abort_[k];
                snprintf(n->path, sizeof n->path, "/admin/%s?version=%llu",
                         pass ? "retire" : "abort", (unsigned long long)v);
                ps_log(!pass && v == p->version ? PS_LOG_DEBUG : PS_LOG_INFO, "builder",
                       pass ? "retire" : "abort_staging", "node=\"%s\" version=%llu",
                       node_name(n, name, sizeof name), (unsigned long long)v);
                sel[nsel++] = n;
            }
            if (!nsel) break;
            if (run_round(p, sel, nsel, "POST", p->timeout_ms, 1, p->retries)) break;
            for (size_t i = 0; i < nsel; i++)
                if (!ok200(sel[i]) && !(pass && sel[i]->x.status == 404)) {
                    xfer_error(p, sel[i], sel[i]->path);
                    break;
                }
            if (p->failed) break;
        }
        if (p->failed) break;
    }
    free(sel);
    return p->failed ? -1 : 0;
}

/* ---- step 3: staging, one state machine per replica ------------------------------------- */

static void stage_done(builder_xfer *x);

static void close_file(pnode *n)
{
    if (n->fd >= 0) close(n->fd);
    n->fd = -1;
}

static void fail_node(pnode *n, const char *what)
{
    xfer_error(n->p, n, what);
    builder_http_cancel(n->p->h);
}

/* (Re)send x as it stands after `delay` seconds. */
static void resend(pnode *n, double delay)
{
    n->x.not_before = delay > 0 ? builder_now() + delay : 0;
    builder_http_add(n->p->h, &n->x);
}

static void new_request(pnode *n, const char *method, long timeout_ms)
{
    builder_xfer_init(&n->x);
    n->x.arg = n;
    n->x.method = method;
    n->x.admin = 1;
    n->x.timeout_ms = timeout_ms;
    n->x.done = stage_done;
    snprintf(n->x.url, sizeof n->x.url, "%s%s", n->url, n->path);
}

static void send_stage(pnode *n)
{
    pctx *p = n->p;
    pshard *s = &p->shards[n->shard];
    close_file(n);
    n->step = ST_STAGE;
    n->stage_sent = 1;
    n->file = 0;
    n->off = n->base = 0;
    n->tries = 0;
    snprintf(n->path, sizeof n->path, "/admin/stage?version=%llu", (unsigned long long)p->version);
    new_request(n, "POST", p->timeout_ms);
    n->x.body = s->manifest;
    n->x.body_len = s->manifest_len;
    n->x.ctype = "application/json";
    builder_http_add(p->h, &n->x);
}

static void send_prepare(pnode *n)
{
    pctx *p = n->p;
    close_file(n);
    n->step = ST_PREPARE;
    n->prepare_sent = 1;
    n->tries = 0;
    snprintf(n->path, sizeof n->path, "/admin/prepare?version=%llu",
             (unsigned long long)p->version);
    new_request(n, "POST", p->prepare_ms);
    builder_http_add(p->h, &n->x);
}

/* The next chunk of the current file (the first one is sent even when the file is empty). */
static void send_chunk(pnode *n)
{
    pctx *p = n->p;
    pshard *s = &p->shards[n->shard];
    const ps_snapshot_file *f = &s->snap.files[n->file];
    if (n->fd < 0) {
        char path[4400], name[1100];
        snprintf(path, sizeof path, "%s/%s", s->dir, f->name);
        if ((n->fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
            set_error(p, "%s: staging %s: %s", node_name(n, name, sizeof name), path,
                      strerror(errno));
            builder_http_cancel(p->h);
            return;
        }
    }
    uint64_t len = f->bytes - n->off;
    if (len > p->chunk) len = p->chunk;
    n->step = ST_CHUNK;
    snprintf(n->path, sizeof n->path, "/admin/stage/%llu/%s?offset=%llu",
             (unsigned long long)p->version, f->name, (unsigned long long)n->off);
    new_request(n, "PUT", p->timeout_ms);
    n->x.fd = n->fd;
    n->x.off = n->off;
    n->x.len = len;
    n->x.ctype = "application/octet-stream";
    builder_http_add(p->h, &n->x);
}

/* The current file is complete on the replica: on to the next, or to prepare. */
static void next_file(pnode *n)
{
    pshard *s = &n->p->shards[n->shard];
    close_file(n);
    n->base += s->snap.files[n->file].bytes;
    n->file++;
    n->off = 0;
    if (n->file < s->snap.nfiles)
        send_chunk(n);
    else
        send_prepare(n);
}

/* Start the replica's staging over (a fresh staging area): the shard lost it or we lost
 * track of an offset. */
static void restart(pnode *n, const char *why)
{
    char name[1100];
    if (n->restarts++ >= n->p->retries) {
        fail_node(n, n->path);
        return;
    }
    plog(n->p, PS_LOG_WARN, "builder", "restage", "node=\"%s\" reason=\"%s\" restart=%d",
         node_name(n, name, sizeof name), why, n->restarts);
    send_stage(n);
}

/* The offset a 409 says the shard expects: {"error": {"expected": N}} or the first number
 * after "expect" in its message. -1 when it does not say. */
static int64_t expected_offset(const builder_xfer *x)
{
    json_t *o = x->resp ? json_loadb(x->resp, x->resp_len, 0, NULL) : NULL;
    json_t *e = json_object_get(o, "error");
    int64_t r = -1;
    const char *keys[] = {"expected", "expected_offset", "received"};
    for (size_t i = 0; i < 3 && r < 0; i++) {
        json_t *v = json_object_get(e, keys[i]);
        if (!v) v = json_object_get(o, keys[i]);
        if (json_is_integer(v) && json_integer_value(v) >= 0) r = json_integer_value(v);
    }
    const char *m = json_string_value(json_object_get(e, "message"));
    const char *at = m ? strstr(m, "expect") : NULL;
    if (r < 0 && at) {
        at += strcspn(at, "0123456789");
        if (*at) {
            char *end;
            unsigned long long v = strtoull(at, &end, 10);
            if (v <= INT64_MAX) r = (int64_t)v;
        }
    }
    json_decref(o);
    return r;
}

static void stage_done(builder_xfer *x)
{
    pnode *n = x->arg;
    pctx *p = n->p;
    char name[1100], reason[900];
    int ok = x->cc == 0 && x->status == 200;
    if (p->failed) return;
    if (n->step == ST_STAGE || n->step == ST_PREPARE) {
        if (ok && n->step == ST_STAGE) {
            n->tries = 0;
            send_chunk(n);
        } else if (ok) {
            n->prepared = 1;
            n->step = ST_DONE;
            plog(p, PS_LOG_INFO, "builder", "prepared", "node=\"%s\" version=%llu",
                 node_name(n, name, sizeof name), (unsigned long long)p->version);
        } else if (builder_xfer_transient(x) && n->tries < p->retries) {
            n->tries++;
            plog(n->p, PS_LOG_WARN, "builder", "retry",
                 "node=\"%s\" request=\"POST %s\" try=%d "
                 "reason=\"%s\"",
                 node_name(n, name, sizeof name), n->path, n->tries + 1,
                 builder_xfer_reason(x, reason, sizeof reason));
            resend(n, backoff(n->tries));
        } else {
            fail_node(n, n->path);
        }
        return;
    }
    /* a chunk */
    const ps_snapshot_file *f = &p->shards[n->shard].snap.files[n->file];
    if (ok) {
        json_t *o = x->resp ? json_loadb(x->resp, x->resp_len, 0, NULL) : NULL;
        json_t *rv = json_object_get(o, "received");
        uint64_t end = n->off + x->len;
        if (json_is_integer(rv) && (uint64_t)json_integer_value(rv) != end)
            plog(p, PS_LOG_WARN, "builder", "chunk_received",
                 "node=\"%s\" file=%s sent_to=%llu received=%lld", node_name(n, name, sizeof name),
                 f->name, (unsigned long long)end, (long long)json_integer_value(rv));
        if (json_is_integer(rv) && json_integer_value(rv) >= 0 &&
            (uint64_t)json_integer_value(rv) <= f->bytes)
            end = (uint64_t)json_integer_value(rv); /* the shard's count is the truth */
        json_decref(o);
        n->off = end;
        n->tries = 0;
        if (n->off >= f->bytes)
            next_file(n);
        else
            send_chunk(n);
        return;
    }
    if (x->status == 409) {
        int64_t e = expected_offset(x);
        builder_xfer_reason(x, reason, sizeof reason);
        if (e < 0 || (uint64_t)e > f->bytes) {
            restart(n, reason);
            return;
        }
        if (n->tries++ >= p->retries) {
            fail_node(n, n->path);
            return;
        }
        plog(p, PS_LOG_WARN, "builder", "chunk_resume",
             "node=\"%s\" file=%s offset=%llu expected=%lld", node_name(n, name, sizeof name),
             f->name, (unsigned long long)n->off, (long long)e);
        n->off = (uint64_t)e;
        if (n->off >= f->bytes && f->bytes > 0)
            next_file(n);
        else
            send_chunk(n);
        return;
    }
    if (x->status == 404) { /* the staging area is gone (the shard restarted?) */
        restart(n, builder_xfer_reason(x, reason, sizeof reason));
        return;
    }
    if ((builder_xfer_transient(x) || x->status >= 500) && n->tries < p->retries) {
        n->tries++;
        plog(p, PS_LOG_WARN, "builder", "chunk_retry",
             "node=\"%s\" file=%s offset=%llu try=%d reason=\"%s\"",
             node_name(n, name, sizeof name), f->name, (unsigned long long)n->off, n->tries + 1,
             builder_xfer_reason(x, reason, sizeof reason));
        resend(n, backoff(n->tries));
        return;
    }
    fail_node(n, n->path);
}

/* Bytes the replicas hold of what this push sends, in-flight chunks included. */
static uint64_t staged_bytes(const pctx *p)
{
    uint64_t b = 0;
    for (size_t i = 0; i < p->nrep; i++) {
        const pnode *n = &p->nodes[i];
        if (n->holds_v) continue;
        if (n->step == ST_PREPARE || n->step == ST_DONE) {
            b += p->shards[n->shard].bytes;
        } else {
            b += n->base + n->off;
            if (n->step == ST_CHUNK && n->x.active) b += n->x.sent;
        }
    }
    return b;
}

static void draw_progress(pctx *p, double now, const char *end)
{
    uint64_t done = staged_bytes(p);
    double el = now - p->t0 > 1e-6 ? now - p->t0 : 1e-6, rate = done / el;
    double eta = rate > 0 && done < p->total ? (p->total - done) / rate : 0;
    size_t prepared = 0;
    for (size_t i = 0; i < p->nrep; i++) prepared += p->nodes[i].prepared;
    if (p->tty) {
        fprintf(stderr,
                "\rstaging: %.1f/%.1f MB (%.0f%%), %.1f MB/s, ETA %.0fs, %zu/%zu prepared"
                "\033[K%s",
                done / 1e6, p->total / 1e6, 100.0 * done / p->total, rate / 1e6, eta, prepared,
                p->nrep, end);
        p->shown = 1;
    } else {
        ps_log(PS_LOG_INFO, "builder", "push_progress",
               "bytes=%llu total=%llu mb_per_s=%.1f eta_s=%.0f prepared=%zu replicas=%zu",
               (unsigned long long)done, (unsigned long long)p->total, rate / 1e6, eta, prepared,
               p->nrep);
        if (done >= p->total) p->shown = 2; /* the line saying it is all sent: once */
    }
}

/* The engine's tick: a line in place every 0.25 s on a terminal, else a log line every 2 s
 * (and one when every byte is sent). */
static void progress(void *arg)
{
    pctx *p = arg;
    if (interrupted && !p->failed) {
        set_error(p, "interrupted by signal %d", (int)interrupted);
        builder_http_cancel(p->h);
        plog(p, PS_LOG_WARN, "builder", "interrupted",
             "msg=\"waiting for the requests in flight, then undoing the staging (again to quit "
             "at once)\"");
        return;
    }
    if (!p->total) return; /* nothing to send: every replica already holds V */
    double now = builder_now();
    if (p->tty ? now - p->last >= 0.25
               : p->shown != 2 && (now - p->last >= 2.0 || staged_bytes(p) >= p->total)) {
        p->last = now;
        draw_progress(p, now, "");
    }
}

/* Steps 3 and 4: stage and prepare every replica that does not hold V yet (prepare alone where
 * it does: idempotent, it checks V is loaded). 0, or -1 with p->err set. */
static int stage_all(pctx *p)
{
    for (size_t i = 0; i < p->nrep; i++) {
        pnode *n = &p->nodes[i];
        if (n->holds_v) {
            char name[1100];
            ps_log(PS_LOG_INFO, "builder", "already_loaded", "node=\"%s\" version=%llu",
                   node_name(n, name, sizeof name), (unsigned long long)p->version);
            send_prepare(n);
        } else {
            p->total += p->shards[n->shard].bytes;
            send_stage(n);
        }
    }
    p->t0 = p->last = builder_now();
    p->tty = isatty(STDERR_FILENO);
    ps_err e = {0};
    int rc = builder_http_run(p->h, progress, p, &e);
    if (p->tty && p->total && !p->failed)
        draw_progress(p, builder_now(), "\n");
    else if (p->tty && p->shown)
        fputs("\n", stderr);
    for (size_t i = 0; i < p->nrep; i++) close_file(&p->nodes[i]);
    if (rc) set_error(p, "%s", e.msg);
    for (size_t i = 0; !p->failed && i < p->nrep; i++)
        if (!p->nodes[i].prepared) set_error(p, "internal: a replica was left unprepared");
    return p->failed ? -1 : 0;
}

/* Step 4's compensation: abort V where this push staged it, retire it where it got loaded.
 * Returns the number of requests that failed (each logged). */
static size_t undo_staging(pctx *p)
{
    pnode **sel = malloc((p->nrep ? p->nrep : 1) * sizeof *sel);
    char name[1100], reason[900];
    size_t nfail = 0;
    if (!sel) return 1;
    for (int pass = 0; pass < 2; pass++) {
        size_t nsel = 0;
        for (size_t i = 0; i < p->nrep; i++) {
            pnode *n = &p->nodes[i];
            if (!n->stage_sent || (pass && !n->prepare_sent)) continue;
            snprintf(n->path, sizeof n->path, "/admin/%s?version=%llu", pass ? "retire" : "abort",
                     (unsigned long long)p->version);
            sel[nsel++] = n;
        }
        if (!nsel) continue;
        if (run_round(p, sel, nsel, "POST", p->prepare_ms, 1, p->retries)) {
            nfail++;
            continue;
        }
        for (size_t i = 0; i < nsel; i++) {
            pnode *n = sel[i];
            node_name(n, name, sizeof name);
            if (ok200(n) || (pass && n->x.status == 404))
                ps_log(PS_LOG_INFO, "builder", pass ? "undo_retire" : "undo_abort",
                       "node=\"%s\" version=%llu", name, (unsigned long long)p->version);
            else {
                nfail++;
                ps_log(PS_LOG_ERROR, "builder", "undo_failed",
                       "node=\"%s\" request=\"POST %s\" reason=\"%s\"", name, n->path,
                       builder_xfer_reason(&n->x, reason, sizeof reason));
            }
        }
    }
    free(sel);
    return nfail;
}

/* ---- step 5: activate and switch -------------------------------------------------------- */

/* Activate (replicas) or switch (brokers) every node of [from, to) to `version`; where
 * `back` is set, only the nodes the forward request may have moved (it succeeded, or got no
 * answer or a 5xx: a 4xx changed nothing), each to its way back.
 * Returns the number that failed (each logged; the first named in p->err when !back). */
static size_t move_nodes(pctx *p, size_t from, size_t to, uint64_t version, int back)
{
    size_t nsel = 0, nfail = 0;
    pnode **sel = malloc((to > from ? to - from : 1) * sizeof *sel);
    char name[1100], reason[900];
    const char *op = from < p->nrep ? "activate" : "switch";
    if (!sel) {
        set_error(p, "out of memory");
        return 1;
    }
    for (size_t i = from; i < to; i++) {
        pnode *n = &p->nodes[i];
        uint64_t v = version;
        if (back) {
            int moved = from < p->nrep ? n->act_moved : n->sw_moved;
            int ok = from < p->nrep ? n->act_ok : n->sw_ok;
            /* back to C; with no C known, to what the node itself said it had before */
            v = p->has_current ? p->current : (ok ? n->previous : 0);
            if (!moved || !v || v == p->version) continue;
        }
        snprintf(n->path, sizeof n->path, "/admin/%s?version=%llu", op, (unsigned long long)v);
        sel[nsel++] = n;
    }
    if (!nsel || run_round(p, sel, nsel, "POST", p->timeout_ms, 1, p->retries)) {
        free(sel);
        return nsel ? 1 : 0;
    }
    for (size_t i = 0; i < nsel; i++) {
        pnode *n = sel[i];
        node_name(n, name, sizeof name);
        if (!back) {
            int moved = ok200(n) || n->x.cc || n->x.status >= 500;
            if (from < p->nrep)
                n->act_moved = moved;
            else
                n->sw_moved = moved;
        }
        if (ok200(n)) {
            json_t *o = resp_json(n);
            if (!back) {
                n->previous = json_u64(json_object_get(o, "previous"));
                if (from < p->nrep)
                    n->act_ok = 1;
                else
                    n->sw_ok = 1;
            }
            json_decref(o);
            ps_log(PS_LOG_INFO, "builder",
                   back ? (from < p->nrep ? "reactivated" : "switched_back")
                        : (from < p->nrep ? "activated" : "switched"),
                   "node=\"%s\" version=%s", name, strchr(n->path, '=') + 1);
            continue;
        }
        nfail++;
        if (back)
            ps_log(PS_LOG_ERROR, "builder", "rollback_failed",
                   "node=\"%s\" request=\"POST %s\" reason=\"%s\"", name, n->path,
                   builder_xfer_reason(&n->x, reason, sizeof reason));
        else
            xfer_error(p, n, n->path);
    }
    free(sel);
    return nfail;
}

/* Step 5 (and all of `activate`): activate V on every replica, then switch every broker;
 * undo what moved if anything fails. 0, or -1 with p->err set. */
static int commit_version(pctx *p)
{
    /* ^C now would leave the cluster half moved: finish this step first. */
    interrupted = 0;
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    size_t bad = move_nodes(p, 0, p->nrep, p->version, 0);
    if (!bad && !p->failed) bad = move_nodes(p, p->nrep, p->nnodes, p->version, 0);
    if (bad || p->failed) {
        size_t lost = move_nodes(p, p->nrep, p->nnodes, 0, 1) + move_nodes(p, 0, p->nrep, 0, 1);
        size_t n = strlen(p->err);
        if (lost)
            snprintf(p->err + n, sizeof p->err - n,
                     "; rolling back failed on %zu daemon(s) (see the log): the cluster may "
                     "be split between versions",
                     lost);
        else if (p->has_current && p->current != p->version)
            snprintf(p->err + n, sizeof p->err - n,
                     "; every replica and broker is back on version %llu, version %llu stays "
                     "loaded (`builder activate --version %llu` retries)",
                     (unsigned long long)p->current, (unsigned long long)p->version,
                     (unsigned long long)p->version);
    }
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    return p->failed ? -1 : 0;
}

/* ---- the commands ------------------------------------------------------------------------- */

static void free_ctx(pctx *p)
{
    for (size_t i = 0; i < p->nnodes; i++) {
        close_file(&p->nodes[i]);
        builder_xfer_clear(&p->nodes[i].x);
    }
    free(p->nodes);
    for (uint32_t i = 0; p->shards && i < p->nshards; i++) {
        free(p->shards[i].manifest);
        ps_snapshot_clear(&p->shards[i].snap);
    }
    free(p->shards);
    builder_http_free(p->h);
}

/* The token: --token-file, else PERSRV_ADMIN_TOKEN. */
static int load_token(const char *cmd, const char *file, char **tok)
{
    ps_err e = {0};
    const char *env = getenv("PERSRV_ADMIN_TOKEN");
    if (ps_admin_token_load(file ? NULL : (env && *env ? env : NULL), file, tok, &e)) {
        fprintf(stderr, "builder %s: %s\n", cmd, e.msg);
        return e.code == PS_EIO ? 1 : 2;
    }
    if (!*tok) {
        fprintf(stderr, "builder %s: no admin token: --token-file FILE or PERSRV_ADMIN_TOKEN\n",
                cmd);
        return 2;
    }
    return 0;
}

enum {
    O_BUILD = 1000,
    O_TOPO,
    O_TOKEN,
    O_PAR,
    O_TIMEOUT,
    O_PTIMEOUT,
    O_RETRIES,
    O_CHUNK,
    O_JSON,
    O_VERSION,
    O_HELP
};

/* Options both commands take. 1 taken, 0 not one of them, -1 a bad value (reported). */
static int common_opt(pctx *p, int ch, const char **topo, const char **token_file)
{
    uint64_t v;
    switch (ch) {
    case O_TOPO:
        *topo = optarg;
        return 1;
    case O_TOKEN:
        *token_file = optarg;
        return 1;
    case O_JSON:
        p->json = 1;
        return 1;
    case O_TIMEOUT:
    case O_PTIMEOUT:
        if (parse_u64(optarg, 1, 24 * 3600 * 1000, &v)) {
            fprintf(stderr, "builder %s: --%s must be 1..86400000\n", p->cmd,
                    ch == O_TIMEOUT ? "timeout-ms" : "prepare-timeout-ms");
            return -1;
        }
        if (ch == O_TIMEOUT)
            p->timeout_ms = (long)v;
        else
            p->prepare_ms = (long)v;
        return 1;
    case O_RETRIES:
        if (parse_u64(optarg, 0, 100, &v)) {
            fprintf(stderr, "builder %s: --retries must be 0..100\n", p->cmd);
            return -1;
        }
        p->retries = (int)v;
        return 1;
    }
    return 0;
}

#define COMMON_OPTIONS                                                                             \
    {"topology", required_argument, 0, O_TOPO}, {"token-file", required_argument, 0, O_TOKEN},     \
        {"timeout-ms", required_argument, 0, O_TIMEOUT},                                           \
        {"retries", required_argument, 0, O_RETRIES}, {"json", no_argument, 0, O_JSON},            \
    {                                                                                              \
        "help", no_argument, 0, O_HELP                                                             \
    }

#define TOPOLOGY_USAGE                                                                             \
    "  --topology FILE     {\"shards\": [[URL, ...], ...], \"brokers\": [URL, ...]}: the admin\n"  \
    "                      base URLs of every replica of every shard (in shard order) and of\n"    \
    "                      every broker\n"                                                         \
    "  --token-file FILE   the admin token (its first line); default: $PERSRV_ADMIN_TOKEN\n"

#define COMMON_USAGE                                                                               \
    "  --retries N         tries after the first of a failed request (default 3)\n"                \
    "  --json              print the summary as JSON on stdout\n"                                  \
    "  --help              this text\n"

static void usage_push(FILE *f)
{
    fprintf(
        f,
        "usage: builder push --build DIR --topology FILE [options]\n\n"
        "Pushes the build in DIR (`builder build --shards N --out DIR`) into a running\n"
        "cluster over the daemons' admin ports: checks every daemon's health, retires the\n"
        "versions a replica holds besides the served one, stages the build on every\n"
        "replica in parallel, prepares (loads) it everywhere, then activates it on every\n"
        "replica and switches every broker to it. A failure before the switch leaves the\n"
        "cluster as it was; a failure during it moves every daemon back to the previous\n"
        "version.\n\n"
        "options:\n"
        "  --build DIR         the build (cluster.json, shard-NNN/snapshot.json)\n" TOPOLOGY_USAGE
        "  --parallel N        requests in flight at once (default 4)\n"
        "  --chunk-bytes N     bytes of a file per upload request, 1..8388608\n"
        "                      (default 8388608)\n"
        "  --timeout-ms MS     time one request may take (default 30000)\n"
        "  --prepare-timeout-ms MS\n"
        "                      time a replica may take to load the build (default "
        "60000)\n" COMMON_USAGE "\n"
        "Exit status: 0 pushed and switched, 1 failed (the error names the daemon),\n"
        "2 usage.\n");
}

static void usage_activate(FILE *f)
{
    fprintf(f, "usage: builder activate --version V --topology FILE [options]\n\n"
               "Rolls the cluster back (or forward) to version V, which every replica must still\n"
               "hold loaded: activates V on every replica, then switches every broker to it. If\n"
               "a replica lacks V nothing changes; if a step fails the daemons that moved are\n"
               "moved back.\n\n"
               "options:\n"
               "  --version V         the version to serve\n" TOPOLOGY_USAGE
               "  --timeout-ms MS     time one request may take (default 30000)\n" COMMON_USAGE "\n"
               "Exit status: 0 switched, 1 failed (the error names the daemon), 2 usage.\n");
}

static void print_summary(pctx *p, double seconds, uint64_t bytes, size_t staged)
{
    size_t nb = p->nnodes - p->nrep;
    int push = strcmp(p->cmd, "push") == 0;
    if (p->json) {
        json_t *o = json_pack("{s:I, s:s, s:I, s:I, s:I, s:f}", "version", (json_int_t)p->version,
                              "fingerprint", p->fp, "shards", (json_int_t)p->nshards, "replicas",
                              (json_int_t)p->nrep, "brokers", (json_int_t)nb, "seconds", seconds);
        if (o && push) {
            json_object_set_new(o, "staged_replicas", json_integer((json_int_t)staged));
            json_object_set_new(o, "bytes", json_integer((json_int_t)bytes));
            json_object_set_new(o, "bytes_per_s", json_real(seconds > 0 ? bytes / seconds : 0));
        }
        if (o)
            json_object_set_new(
                o, "previous", p->has_current ? json_integer((json_int_t)p->current) : json_null());
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (s) printf("%s\n", s);
        free(s);
        json_decref(o);
        return;
    }
    char prev[64] = "none";
    if (p->has_current) snprintf(prev, sizeof prev, "%llu", (unsigned long long)p->current);
    if (push)
        printf("pushed version %llu (fingerprint %s) to %u shard(s) (%zu replicas, %zu staged) "
               "and %zu broker(s): %.1f MB in %.1f s (%.1f MB/s); previous version %s\n",
               (unsigned long long)p->version, p->fp, p->nshards, p->nrep, staged, nb, bytes / 1e6,
               seconds, seconds > 0 ? bytes / 1e6 / seconds : 0.0, prev);
    else
        printf("activated version %llu (fingerprint %s) on %zu replicas and %zu broker(s) in "
               "%.1f s; previous version %s\n",
               (unsigned long long)p->version, p->fp, p->nrep, nb, seconds, prev);
}

int builder_cmd_push(int argc, char **argv)
{
    static const struct option opts[] = {{"build", required_argument, 0, O_BUILD},
                                         {"parallel", required_argument, 0, O_PAR},
                                         {"prepare-timeout-ms", required_argument, 0, O_PTIMEOUT},
                                         {"chunk-bytes", required_argument, 0, O_CHUNK},
                                         COMMON_OPTIONS,
                                         {0, 0, 0, 0}};
    pctx p = {.cmd = "push",
              .timeout_ms = 30000,
              .prepare_ms = 60000,
              .retries = 3,
              .chunk = PUSH_MAX_CHUNK};
    const char *build = NULL, *topo = NULL, *token_file = NULL;
    uint64_t parallel = 4, v;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int taken = common_opt(&p, ch, &topo, &token_file);
        if (taken < 0) return 2;
        if (taken) continue;
        switch (ch) {
        case O_BUILD:
            build = optarg;
            break;
        case O_PAR:
            if (parse_u64(optarg, 1, 256, &parallel)) {
                fprintf(stderr, "builder push: --parallel must be 1..256\n");
                return 2;
            }
            break;
        case O_CHUNK:
            if (parse_u64(optarg, 1, PUSH_MAX_CHUNK, &v)) {
                fprintf(stderr, "builder push: --chunk-bytes must be 1..%u\n", PUSH_MAX_CHUNK);
                return 2;
            }
            p.chunk = v;
            break;
        case O_HELP:
            usage_push(stdout);
            return 0;
        default:
            usage_push(stderr);
            return 2;
        }
    }
    if (!build || !topo || optind != argc) {
        fprintf(stderr, "builder push: --build and --topology are required\n");
        usage_push(stderr);
        return 2;
    }
    char *token = NULL;
    int rc = load_token("push", token_file, &token);
    if (rc) return rc;

    double t0 = builder_now();
    ps_err e = {0};
    rc = 1;
    const char *stage = "nothing was changed";
    if (load_build(&p, build) || load_topology(&p, topo, p.nshards)) goto out;
    if (!(p.h = builder_http_new(token, (int)parallel, &e))) {
        set_error(&p, "%s", e.msg);
        goto out;
    }
    if (check_health(&p, 1)) goto out;
    ps_log(PS_LOG_INFO, "builder", "push_start",
           "version=%llu fingerprint=%s shards=%u replicas=%zu brokers=%zu previous=%llu "
           "parallel=%llu",
           (unsigned long long)p.version, p.fp, p.nshards, p.nrep, p.nnodes - p.nrep,
           (unsigned long long)p.current, (unsigned long long)parallel);
    stage = "nothing was staged or switched";
    if (clean_replicas(&p)) goto out;

    interrupted = 0;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    if (stage_all(&p)) {
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        stage = undo_staging(&p) ? "nothing was switched; undoing the staging failed on some "
                                   "replicas (see the log)"
                                 : "nothing was switched; the version was aborted or retired "
                                   "wherever this push staged it";
        goto out;
    }
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    double stage_s = builder_now() - t0;
    ps_log(PS_LOG_INFO, "builder", "prepared_all", "version=%llu bytes=%llu seconds=%.2f",
           (unsigned long long)p.version, (unsigned long long)p.total, stage_s);
    stage = NULL;
    if (commit_version(&p)) goto out;
    size_t staged = 0;
    for (size_t i = 0; i < p.nrep; i++) staged += !p.nodes[i].holds_v;
    double secs = builder_now() - t0;
    ps_log(PS_LOG_INFO, "builder", "push_done",
           "version=%llu fingerprint=%s replicas=%zu staged=%zu bytes=%llu seconds=%.2f "
           "previous=%llu",
           (unsigned long long)p.version, p.fp, p.nrep, staged, (unsigned long long)p.total, secs,
           (unsigned long long)p.current);
    print_summary(&p, secs, p.total, staged);
    rc = 0;
out:
    if (rc && stage)
        fprintf(stderr, "builder push: %s (%s)\n", p.err, stage);
    else if (rc)
        fprintf(stderr, "builder push: %s\n", p.err);
    explicit_bzero(token, strlen(token));
    free(token);
    free_ctx(&p);
    return rc;
}

int builder_cmd_activate(int argc, char **argv)
{
    static const struct option opts[] = {
        {"version", required_argument, 0, O_VERSION}, COMMON_OPTIONS, {0, 0, 0, 0}};
    pctx p = {.cmd = "activate", .timeout_ms = 30000, .prepare_ms = 60000, .retries = 3};
    const char *topo = NULL, *token_file = NULL;
    int ch, have_version = 0;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int taken = common_opt(&p, ch, &topo, &token_file);
        if (taken < 0) return 2;
        if (taken) continue;
        switch (ch) {
        case O_VERSION:
            if (parse_u64(optarg, 1, INT64_MAX, &p.version)) {
                fprintf(stderr, "builder activate: --version must be 1..2^63-1\n");
                return 2;
            }
            have_version = 1;
            break;
        case O_HELP:
            usage_activate(stdout);
            return 0;
        default:
            usage_activate(stderr);
            return 2;
        }
    }
    if (!have_version || !topo || optind != argc) {
        fprintf(stderr, "builder activate: --version and --topology are required\n");
        usage_activate(stderr);
        return 2;
    }
    char *token = NULL;
    int rc = load_token("activate", token_file, &token);
    if (rc) return rc;
    double t0 = builder_now();
    ps_err e = {0};
    rc = 1;
    int changed = 0;
    if (load_topology(&p, topo, 0)) goto out;
    if (!(p.h = builder_http_new(token, 8, &e))) {
        set_error(&p, "%s", e.msg);
        goto out;
    }
    if (check_health(&p, 0)) goto out;
    /* every replica must hold V loaded, all with one fingerprint */
    for (size_t i = 0; i < p.nrep; i++) {
        pnode *n = &p.nodes[i];
        char name[1100];
        if (!n->v_fp[0]) {
            set_error(&p, "%s does not hold version %llu loaded", node_name(n, name, sizeof name),
                      (unsigned long long)p.version);
            goto out;
        }
        if (i == 0)
            memcpy(p.fp, n->v_fp, sizeof p.fp);
        else if (strcmp(n->v_fp, p.fp) != 0) {
            set_error(&p, "%s holds version %llu with fingerprint %s, %s with %s",
                      node_name(n, name, sizeof name), (unsigned long long)p.version, n->v_fp,
                      p.nodes[0].url, p.fp);
            goto out;
        }
    }
    ps_log(PS_LOG_INFO, "builder", "activate_start",
           "version=%llu fingerprint=%s replicas=%zu brokers=%zu previous=%llu",
           (unsigned long long)p.version, p.fp, p.nrep, p.nnodes - p.nrep,
           (unsigned long long)p.current);
    changed = 1;
    if (commit_version(&p)) goto out;
    double secs = builder_now() - t0;
    ps_log(PS_LOG_INFO, "builder", "activate_done", "version=%llu previous=%llu seconds=%.2f",
           (unsigned long long)p.version, (unsigned long long)p.current, secs);
    print_summary(&p, secs, 0, 0);
    rc = 0;
out:
    if (rc)
        fprintf(stderr, "builder activate: %s%s\n", p.err,
                changed ? "" : " (nothing was switched)");
    explicit_bzero(token, strlen(token));
    free(token);
    free_ctx(&p);
    return rc;
}
