/*
 * persrv.c — the `persrv` command-line tool.
 *
 *   persrv search --index DIR [--user U] [--k N] [--R N] [--explain] [--json] QUERY
 *   persrv search --index DIR [--user U] [--k N] [--R N] --queries FILE|-
 *   persrv search --broker EP [--user U] [--k N] [--timeout MS] [--explain] [--json] QUERY
 *   persrv sticker --broker EP [--timeout MS] [--json] ID
 *   persrv health --broker EP [--timeout MS] [--json]
 *   persrv click --broker EP [--timeout MS] [--json] [--query Q] [--click-id ID] USER STICKER
 *
 * `search --index` searches an index directory in-process (a single node); `--broker` asks a
 * cluster through the broker's ZeroMQ front door with libpersrv (client/include/persrv.h) and
 * prints the same thing: --json gives the same object either way (the broker's adds "partial",
 * "timed_out", "version" and "shards"), so the two can be compared byte for byte on "hits".
 * PERSRV_BROKER is the default endpoint when neither --index nor --broker is given.
 * `took` is integer milliseconds (truncated, as Elasticsearch and the broker's HTTP door give
 * it) and `took_us` the same time in integer microseconds.
 *
 * `search --index --queries FILE` (FILE "-": stdin) is the batch mode: the index is opened once
 * and one searcher answers every line of FILE in order, one JSON line each on stdout (flushed),
 * byte for byte what `search --index --json` prints for that query alone. A line is a query,
 * or, when its first byte is '{', a JSON object {"q": "...", "user": "..." or null, "k": N,
 * "R": N} (only "q" required) whose fields override the command line's --user, --k and --R for
 * that line. A line that fails gets {"error": {...}, "line": N} (the error object --json
 * prints for a failed search, and the 1-based line number), its message on stderr, and the
 * batch goes on; the exit status is then 1.
 *
 * `click` records a click with persrv_click (idempotent: under --click-id, or an id it makes
 * and prints, retried with the same id while the outcome is unknown).
 *
 * Errors go to stderr as `persrv <cmd>: <message> (<code>)`, code being the stable name
 * (the broker's own, e.g. invalid_query, when the broker refused); under --json, stdout gets
 * the same as one JSON line, {"error": {"code", "type", "message"}}, the broker HTTP door's
 * error shape (outcome_unknown adds "click_id"). Usage errors are text only. Exit status: 0 success
 * (a partial answer too, with a warning on stderr), 1 failure, 2 usage, 3 a click whose
 * outcome is unknown (outcome_unknown: run it again with the --click-id the message names).
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "persrv.h"
#include "ps/fields.h"
#include "ps/log.h"
#include "ps/search.h"
#include "ps/store.h"
#include "ps/version.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: persrv search (--index DIR | --broker EP) [options] QUERY\n"
               "       persrv search --index DIR [--user U] [--k N] [--R N] --queries FILE\n"
               "       persrv sticker --broker EP [--timeout MS] [--json] ID\n"
               "       persrv health --broker EP [--timeout MS] [--json]\n"
               "       persrv click --broker EP [--timeout MS] [--json] [--query Q]\n"
               "                    [--click-id ID] USER STICKER_ID\n\n"
               "search: searches an index directory built by `builder build` in-process, or a\n"
               "cluster through its broker (ZeroMQ front door). With --queries, every line of\n"
               "FILE (- = stdin) in one process: a query, or a JSON object {\"q\": ..., \"user\":\n"
               "..., \"k\": N, \"R\": N} (only q required) overriding the flags for that line;\n"
               "one JSON line per line on stdout, as --json prints it; a bad line gets\n"
               "{\"error\": ..., \"line\": N} and the batch goes on (exit 1 at the end).\n"
               "sticker: the stored fields of one sticker. health: the broker's shards up and\n"
               "ready (exit 1 when not ready).\n"
               "click: USER picked STICKER_ID (for the message --query); stored once under its\n"
               "click id (--click-id, else a random one, printed), retried while the outcome is\n"
               "unknown (exit 3 when it stays unknown: run again with the same --click-id).\n\n"
               "options:\n"
               "  --index DIR     index directory (single node)\n"
               "  --broker EP     broker front door, e.g. tcp://127.0.0.1:7001\n"
               "                  (default: $PERSRV_BROKER when --index is not given)\n"
               "  --queries FILE  search: one query per line (--index only; implies --json)\n"
               "  --user U        personalize for user U (unknown users get unpersonalized "
               "results)\n"
               "  --k N           results to print (default 10)\n"
               "  --R N           recall depth (default 100; --index only)\n"
               "  --timeout MS    --broker: wait at most MS ms per attempt, 2 attempts "
               "(default 1000;\n"
               "                  click: 5000, above the broker's click-deadline-ms)\n"
               "  --offset N      --broker: skip the first N results (offset + k <= 100)\n"
               "  --exclude IDS   --broker: never return these sticker ids (comma-separated, "
               "<= 100)\n"
               "  --timeout-ms MS --broker: the broker's whole time for the search (1..60000)\n"
               "  --no-partial    --broker: fail rather than answer without a shard\n"
               "  --request-id ID --broker: the id the broker and shards log this search under\n"
               "  --explain       print the score breakdown and stored fields\n"
               "  --json          print one JSON object (took: ms, took_us: microseconds;\n"
               "                  a failure: {\"error\": {\"code\", \"type\", \"message\"}})\n"
               "  --help          this text\n"
               "  --version       print the version, commit and build type (persrv --version)\n"
               "Exit status: 0 success, 1 failure (a batch: any line failed), 2 usage, 3 click\n"
               "outcome unknown. With --broker, the broker's API key (if it runs with\n"
               "--api-keys) is read from $PERSRV_API_KEY.\n");
}

/* What a hit prints, from the engine (ps_hit) or from libpersrv (persrv_hit). */
typedef struct hit_view {
    uint64_t id;
    double score, recall, relevance, utility, preference;
    int centroid;
} hit_view;

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* --json: a failure is also printed as one JSON line on stdout (set by each command). */
static int json_errors;

/* Print o as one compact JSON line on stdout, flushed (a batch's reader may be waiting for
 * it), and drop the reference. */
static void put_json(json_t *o)
{
    char *sout = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (sout) puts(sout);
    fflush(stdout);
    free(sout);
    json_decref(o);
}

/* {"error": {"code", "type", "message"}}: the broker HTTP door's error object (broker/http.c),
 * its type from the HTTP status of the code (server_error for codes only libpersrv has). A
 * message that is not UTF-8 (it may quote the input) has its bytes >= 0x80 shown as '?'.
 * Caller owns the result. */
static json_t *error_json(const char *code, const char *msg)
{
    int status = 500;
#define PS__ERR_STATUS(name, val, str, http, m)                                                    \
    if (strcmp(code, str) == 0) status = http;
    PS_ERRNO_MAP(PS__ERR_STATUS)
#undef PS__ERR_STATUS
    const char *type = status == 404                    ? "not_found"
                       : status == 401 || status == 403 ? "authentication_error"
                       : status == 429                  ? "rate_limit_error"
                       : status < 500                   ? "invalid_request"
                                                        : "server_error";
    json_t *m = json_string(msg);
    if (!m) {
        char clean[512];
        snprintf(clean, sizeof clean, "%s", msg);
        for (char *c = clean; *c; c++)
            if ((unsigned char)*c >= 0x80) *c = '?';
        m = json_string(clean);
    }
    return json_pack("{s:{s:s, s:s, s:o}}", "error", "code", code, "type", type, "message", m);
}

/* A failed command: `persrv <cmd>: <msg> (<code>)` on stderr, and under --json the error
 * object on stdout too. Returns 1 (the exit status of a failure). */
static int report(const char *cmd, const char *code, const char *msg)
{
    fprintf(stderr, "persrv %s: %s (%s)\n", cmd, msg, code);
    if (json_errors) put_json(error_json(code, msg));
    return 1;
}

/* First line of s, at most max bytes, cut on a UTF-8 boundary, into out. */
static void first_line(const char *s, char *out, size_t max)
{
    size_t n = 0;
    while (s[n] && s[n] != '\n' && n < max) n++;
    while (n > 0 && n < strlen(s) && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
    memcpy(out, s, n);
    out[n] = '\0';
}

/* Print hit i (1-based rank i + 1) as a text line (fields shown under explain), or append
 * it to arr for --json (arr not NULL): id as a string, the scores, the 5 stored fields
 * (fields[f] NULL = "") and the picture when the sticker has one (image NULL or "": none). */
static void emit_hit(const hit_view *h, const char *const *fields, const char *image, size_t i,
                     int explain, json_t *arr)
{
    if (arr) {
        /* Ids are strings: 19-digit ids exceed what JSON numbers carry exactly. */
        char idbuf[24];
        snprintf(idbuf, sizeof idbuf, "%llu", (unsigned long long)h->id);
        json_t *hit = json_pack("{s:s, s:f, s:f, s:f, s:f, s:f, s:i}", "id", idbuf, "score",
                                h->score, "recall", h->recall, "relevance", h->relevance, "utility",
                                h->utility, "preference", h->preference, "centroid", h->centroid);
        for (int f = 0; f < PS_NFIELDS; f++)
            json_object_set_new(hit, ps_field_names[f], json_string(fields[f] ? fields[f] : ""));
        if (image && image[0]) json_object_set_new(hit, "image", json_string(image));
        json_array_append_new(arr, hit);
        return;
    }
    printf("%3zu. %llu  score %.4f", i + 1, (unsigned long long)h->id, h->score);
    if (!explain) {
        printf("\n");
        return;
    }
    char line[160];
    printf("  = recall %.4f (relevance %.4f + utility %.4f) × preference %.4f", h->recall,
           h->relevance, h->utility, h->preference);
    if (h->centroid >= 0) printf(" (centroid %d)", h->centroid);
    printf("\n");
    for (int f = 0; f < PS_NFIELDS; f++) {
        if (!fields[f] || !fields[f][0]) continue;
        first_line(fields[f], line, 120);
        printf("       %-8s %s%s\n", ps_field_names[f], line,
               strlen(line) < strlen(fields[f]) ? " …" : "");
    }
    if (image && image[0]) printf("       %-8s %s\n", "image", image);
}

/* --timeout MS: 1..3600000. 0, or -1 after printing why (usage error). */
static int parse_timeout(const char *cmd, const char *arg, uint32_t *ms)
{
    char *end = NULL;
    unsigned long v = strtoul(arg, &end, 10);
    if (!*arg || *end || v < 1 || v > 3600000) {
        fprintf(stderr, "persrv %s: --timeout must be 1..3600000 (ms)\n", cmd);
        return -1;
    }
    *ms = (uint32_t)v;
    return 0;
}

/* Connect to the broker at ep (timeout_ms 0 = libpersrv's default). NULL after printing why. */
static persrv_t *broker_connect(const char *cmd, const char *ep, uint32_t timeout_ms)
{
    persrv_options po;
    persrv_options_init(&po);
    if (timeout_ms) po.timeout_ms = timeout_ms;
    /* PERSRV_API_KEY, PERSRV_CURVE_KEY, PERSRV_CURVE_SERVERS: not flags, flags show in ps */
    persrv_t *c = persrv_connect_env(ep, &po);
    if (!c) {
        report(cmd, persrv_errname(PERSRV_ENOMEM), "out of memory");
        return NULL;
    }
    if (persrv_errcode(c)) {
        report(cmd, persrv_errname_last(c), persrv_errstr(c));
        persrv_close(c);
        return NULL;
    }
    return c;
}

static int broker_fail(const char *cmd, persrv_t *c)
{
    report(cmd, persrv_errname_last(c), persrv_errstr(c));
    persrv_close(c);
    return 1;
}

/* search --broker: the same output as the single node, from the cluster. --json always asks
 * for the stored fields (explain), since the single node's --json prints them. */
static int search_broker(const char *ep, const char *q, const char *user, uint32_t k,
                         uint32_t timeout_ms, int explain, int json, const persrv_query *extra)
{
    persrv_t *c = broker_connect("search", ep, timeout_ms);
    persrv_result *r = NULL;
    if (!c) return 1;
    persrv_query pq = *extra;
    pq.text = q;
    pq.len = strlen(q);
    pq.user = user;
    pq.k = k;
    pq.explain = explain || json;
    if (persrv_search(c, &pq, &r)) return broker_fail("search", c);

    if (r->partial) {
        fprintf(stderr, "persrv search: warning: partial answer, %zu of %u shards failed",
                r->nfailures, r->shards_total);
        for (size_t i = 0; i < r->nfailures; i++)
            fprintf(stderr, "%s shard %u: %s", i ? ";" : ":", r->failures[i].shard,
                    r->failures[i].reason);
        fprintf(stderr, "\n");
    }
    json_t *out = json_object(), *arr = json ? json_array() : NULL;
    if (!json)
        printf("%zu hits for \"%s\"%s%s%s in %.2f ms\n", r->nhits, q, user ? " for user " : "",
               user ? user : "", user && !r->personalized ? " (no profile: unpersonalized)" : "",
               r->took_us / 1e3);
    for (size_t i = 0; i < r->nhits; i++) {
        const persrv_hit *h = &r->hits[i];
        const persrv_sticker *st = h->fields;
        const char *fields[PS_NFIELDS] = {NULL};
        if (st) {
            fields[PS_F_OCR] = st->ocr;
            fields[PS_F_QUERIES] = st->queries;
            fields[PS_F_KEYWORDS] = st->keywords;
            fields[PS_F_DESC] = st->desc;
            fields[PS_F_EMOTION] = st->emotion;
        }
        hit_view v = {h->id,      h->score,      h->recall,  h->relevance,
                      h->utility, h->preference, h->centroid};
        emit_hit(&v, fields, st ? st->image : NULL, i, explain, arr);
    }
    if (json) {
        json_t *fails = json_array();
        for (size_t i = 0; i < r->nfailures; i++)
            json_array_append_new(fails,
                                  json_pack("{s:i, s:s}", "shard", (json_int_t)r->failures[i].shard,
                                            "reason", r->failures[i].reason));
        uint32_t failed = r->nfailures > r->shards_total ? r->shards_total : (uint32_t)r->nfailures;
        json_object_set_new(out, "took", json_integer((json_int_t)(r->took_us / 1000)));
        json_object_set_new(out, "took_us", json_integer((json_int_t)r->took_us));
        json_object_set_new(out, "timed_out", json_boolean(r->timed_out));
        json_object_set_new(out, "partial", json_boolean(r->partial));
        json_object_set_new(out, "version", json_integer((json_int_t)r->version));
        json_object_set_new(out, "shards",
                            json_pack("{s:i, s:i, s:i, s:o}", "total", (json_int_t)r->shards_total,
                                      "successful", (json_int_t)(r->shards_total - failed),
                                      "failed", (json_int_t)failed, "failures", fails));
        json_object_set_new(out, "personalized", json_boolean(r->personalized));
        json_object_set_new(out, "hits", arr);
        put_json(out);
    } else {
        json_decref(out);
    }
    persrv_result_free(r);
    persrv_close(c);
    return 0;
}

/* A single node: an index directory open, one searcher, and room for the hits of the largest R.
 * One per process: a batch answers every line with it. */
typedef struct local_node {
    ps_store_t *st;
    ps_searcher_t *s;
    ps_hit *hits; /* PS_SEARCH_MAX_R */
} local_node;

static void local_close(local_node *n)
{
    free(n->hits);
    ps_searcher_free(n->s);
    ps_store_close(n->st);
    memset(n, 0, sizeof *n);
}

/* Open the index at dir. 0, or an error in err with nothing left open. */
static int local_open(local_node *n, const char *dir, ps_err *err)
{
    memset(n, 0, sizeof *n);
    if (!(n->st = ps_store_open(dir, err))) return err->code;
    if (!(n->s = ps_searcher_new(ps_store_index(n->st), err))) goto fail;
    if (!(n->hits = malloc(PS_SEARCH_MAX_R * sizeof *n->hits))) {
        ps_err_set(err, PS_ENOMEM, "out of memory");
        goto fail;
    }
    return 0;
fail:
    local_close(n);
    return err->code;
}

/* Search the qlen bytes of q for user (NULL: nobody) with opts o (R raised to k, as the
 * command line does). OUT n->hits[0..*nh), *personalized (the user has a profile), *took_us
 * (the search alone, profile lookup excluded). 0 or an error in err. */
static int local_search(local_node *n, const char *q, size_t qlen, const char *user,
                        ps_search_opts o, size_t *nh, int *personalized, uint64_t *took_us,
                        ps_err *err)
{
    ps_profile prof = {0};
    *nh = 0;
    *personalized = 0;
    if (o.k > o.R) o.R = o.k;
    if (user) {
        int prc = ps_store_profile(n->st, user, &prof, err);
        if (prc == 0) {
            o.profile = &prof;
            *personalized = prof.k > 0;
        } else if (prc != PS_ENOTFOUND) {
            return prc;
        }
        ps_err_clear(err);
    }
    uint64_t t0 = now_us();
    int rc = ps_search(n->s, q, qlen, &o, n->hits, nh, NULL, err);
    *took_us = now_us() - t0;
    ps_profile_clear(&prof);
    return rc;
}

/* The --json answer of a local search: {"took", "took_us", "personalized", "hits"}, each hit
 * with its stored fields. OUT *out (caller owns it), NULL on error (in err). */
static int local_json(local_node *n, size_t nh, int personalized, uint64_t took_us, json_t **out,
                      ps_err *err)
{
    json_t *arr = json_array();
    *out = NULL;
    for (size_t i = 0; i < nh; i++) {
        const ps_hit *h = &n->hits[i];
        char *fields[PS_NFIELDS] = {0}, *image = NULL;
        if (ps_store_fields_image(n->st, h->doc, fields, &image, err) != 0) {
            json_decref(arr);
            return err->code;
        }
        hit_view v = {h->id,      h->score,      h->recall,  h->relevance,
                      h->utility, h->preference, h->centroid};
        emit_hit(&v, (const char *const *)fields, image, i, 0, arr);
        for (int f = 0; f < PS_NFIELDS; f++) free(fields[f]);
        free(image);
    }
    *out = json_pack("{s:I, s:I, s:b, s:o}", "took", (json_int_t)(took_us / 1000), "took_us",
                     (json_int_t)took_us, "personalized", personalized, "hits", arr);
    if (!*out) return ps_err_set(err, PS_ENOMEM, "out of memory");
    return 0;
}

/* search --index, one QUERY. */
static int search_local(const char *index, const char *q, const char *user, ps_search_opts o,
                        int explain, int json)
{
    ps_err err = {0};
    local_node n;
    size_t nh = 0;
    int personalized = 0;
    uint64_t took_us = 0;
    json_t *out = NULL;

    if (local_open(&n, index, &err)) goto fail;
    if (local_search(&n, q, strlen(q), user, o, &nh, &personalized, &took_us, &err)) goto fail;
    if (json) {
        if (local_json(&n, nh, personalized, took_us, &out, &err)) goto fail;
        put_json(out);
        local_close(&n);
        return 0;
    }
    printf("%zu hits for \"%s\"%s%s%s in %.2f ms\n", nh, q, user ? " for user " : "",
           user ? user : "", user && !personalized ? " (no profile: unpersonalized)" : "",
           took_us / 1e3);
    for (size_t i = 0; i < nh; i++) {
        const ps_hit *h = &n.hits[i];
        char *fields[PS_NFIELDS] = {0}, *image = NULL;
        if (explain && ps_store_fields_image(n.st, h->doc, fields, &image, &err) != 0) goto fail;
        hit_view v = {h->id,      h->score,      h->recall,  h->relevance,
                      h->utility, h->preference, h->centroid};
        emit_hit(&v, (const char *const *)fields, image, i, explain, NULL);
        for (int f = 0; f < PS_NFIELDS; f++) free(fields[f]);
        free(image);
    }
    local_close(&n);
    return 0;
fail:
    local_close(&n);
    return report("search", ps_errname(err.code), err.msg);
}

/* ---- batch: search --index --queries FILE ---------------------------------------------------- */

#define BATCH_MAX_LINE (1u << 20) /* bytes of one line (a query, or its JSON object) */

/* Read the next line of f into *buf (grown as needed, NUL-terminated) without its "\n" and a
 * "\r" before it. OUT *len (bytes kept, at most BATCH_MAX_LINE), *cut (1: the line was longer,
 * the rest was read and dropped). Returns 1 for a line, 0 at the end, -1 on a read error. */
static int read_line(FILE *f, char **buf, size_t *cap, size_t *len, int *cut)
{
    int c;
    size_t n = 0;
    *cut = 0;
    while ((c = getc_unlocked(f)) != EOF && c != '\n') {
        if (n == BATCH_MAX_LINE) {
            *cut = 1;
            continue;
        }
        if (n + 2 > *cap) {
            size_t ncap = *cap ? *cap * 2 : 4096;
            char *nb = realloc(*buf, ncap);
            if (!nb) return -1;
            *buf = nb;
            *cap = ncap;
        }
        (*buf)[n++] = (char)c;
    }
    if (ferror(f)) return -1;
    if (c == EOF && n == 0 && !*cut) return 0;
    if (!*buf && !(*buf = malloc(*cap = 16))) return -1;
    if (n > 0 && (*buf)[n - 1] == '\r' && !*cut) n--;
    (*buf)[n] = '\0';
    *len = n;
    return 1;
}

/* A JSON line {"q": "...", "user": "..." | null, "k": N, "R": N}: its query and the overrides
 * of the command line's user and opts. *q and *user borrow from *req (caller frees it). */
static int parse_json_line(const char *line, size_t len, json_t **req, const char **q, size_t *qlen,
                           const char **user, ps_search_opts *o, ps_err *err)
{
    json_error_t jerr;
    const char *key;
    json_t *v;
    *req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!*req) return ps_err_set(err, PS_EPARSE, "JSON: %s (column %d)", jerr.text, jerr.column);
    if (!json_is_object(*req)) return ps_err_set(err, PS_EPARSE, "JSON: not an object");
    *q = NULL;
    json_object_foreach(*req, key, v)
    {
        if (strcmp(key, "q") == 0 || strcmp(key, "user") == 0) {
            int is_q = key[0] == 'q';
            if (!is_q && json_is_null(v)) {
                *user = NULL;
                continue;
            }
            if (!json_is_string(v))
                return ps_err_set(err, PS_EINVAL, "\"%s\" must be a string%s", key,
                                  is_q ? "" : " or null");
            if (strlen(json_string_value(v)) != json_string_length(v))
                return ps_err_set(err, PS_EINVAL, "\"%s\" holds a NUL character", key);
            if (is_q) {
                *q = json_string_value(v);
                *qlen = json_string_length(v);
            } else {
                *user = json_string_value(v);
            }
        } else if (strcmp(key, "k") == 0 || strcmp(key, "R") == 0) {
            json_int_t n = json_is_integer(v) ? json_integer_value(v) : 0;
            if (n < 1 || n > PS_SEARCH_MAX_R)
                return ps_err_set(err, PS_EINVAL, "\"%s\" must be an integer 1..%d", key,
                                  PS_SEARCH_MAX_R);
            if (key[0] == 'k')
                o->k = (uint32_t)n;
            else
                o->R = (uint32_t)n;
        } else {
            return ps_err_set(err, PS_EINVAL, "unknown field \"%.64s\" (q, user, k, R)", key);
        }
    }
    if (!*q) return ps_err_set(err, PS_EINVAL, "\"q\" is required");
    return 0;
}

/* Answer line `lineno` (len bytes, *cut: longer than kept) with the flags' user and opts as
 * defaults: prints its answer or its error line. 0, or the line's error code. */
static int batch_line(local_node *n, size_t lineno, const char *line, size_t len, int cut,
                      const char *user, ps_search_opts o)
{
    ps_err err = {0};
    json_t *req = NULL, *out = NULL;
    const char *q = line;
    size_t qlen = len, nh = 0;
    int personalized = 0;
    uint64_t took_us = 0;

    if (cut)
        ps_err_set(&err, PS_ETOOBIG, "line longer than %u bytes", BATCH_MAX_LINE);
    else if (memchr(line, '\0', len))
        ps_err_set(&err, PS_EINVAL, "line holds a NUL byte");
    else if (len > 0 && line[0] == '{')
        parse_json_line(line, len, &req, &q, &qlen, &user, &o, &err);
    if (!err.code && !local_search(n, q, qlen, user, o, &nh, &personalized, &took_us, &err) &&
        !local_json(n, nh, personalized, took_us, &out, &err)) {
        put_json(out);
        json_decref(req);
        return 0;
    }
    json_decref(req);
    fprintf(stderr, "persrv search: line %zu: %s (%s)\n", lineno, err.msg, ps_errname(err.code));
    out = error_json(ps_errname(err.code), err.msg);
    json_object_set_new(out, "line", json_integer((json_int_t)lineno));
    put_json(out);
    return err.code;
}

/* search --index DIR --queries PATH: every line of PATH ("-": stdin) in order. Exit status: 0
 * every line answered, 1 some line failed (each has its error line) or the batch stopped (the
 * index does not open, PATH does not read, stdout fails: stderr alone says which, stdout holds
 * only the lines answered). */
static int search_batch(const char *index, const char *path, const char *user, ps_search_opts o)
{
    ps_err err = {0};
    local_node n;
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        ps_err_set(&err, PS_EIO, "%s: %s", path, strerror(errno));
        return report("search", ps_errname(err.code), err.msg);
    }
    if (local_open(&n, index, &err)) {
        if (f != stdin) fclose(f);
        return report("search", ps_errname(err.code), err.msg);
    }
    char *line = NULL;
    size_t cap = 0, len = 0, lineno = 0, failed = 0, first_failed = 0;
    int cut = 0, rc;
    while ((rc = read_line(f, &line, &cap, &len, &cut)) == 1) {
        lineno++;
        if (batch_line(&n, lineno, line, len, cut, user, o) && !failed++) first_failed = lineno;
        if (ferror(stdout)) break;
    }
    int status = 0;
    if (rc < 0) {
        ps_err_set(&err, PS_EIO, "%s: line %zu: %s", strcmp(path, "-") ? path : "stdin", lineno + 1,
                   errno ? strerror(errno) : "read error");
        status = report("search", ps_errname(err.code), err.msg);
    } else if (ferror(stdout) || fflush(stdout)) {
        fprintf(stderr, "persrv search: writing stdout: %s (io_error)\n", strerror(errno));
        status = 1;
    } else if (failed) {
        fprintf(stderr, "persrv search: %zu of %zu queries failed (the first: line %zu)\n", failed,
                lineno, first_failed);
        status = 1;
    }
    free(line);
    local_close(&n);
    if (f != stdin) fclose(f);
    return status;
}

static int cmd_search(int argc, char **argv)
{
    const char *index = NULL, *user = NULL, *broker = NULL, *queries = NULL;
    int explain = 0, json = 0, r_given = 0, api_given = 0;
    uint32_t timeout_ms = 0;
    ps_search_opts o;
    ps_search_opts_default(&o);
    persrv_query extra = {0}; /* --broker: the search API's options */
    uint64_t exclude[100];
    static const struct option opts[] = {
        {"index", required_argument, 0, 'i'},   {"broker", required_argument, 0, 'b'},
        {"user", required_argument, 0, 'u'},    {"k", required_argument, 0, 'k'},
        {"R", required_argument, 0, 'R'},       {"timeout", required_argument, 0, 't'},
        {"queries", required_argument, 0, 'Q'}, {"explain", no_argument, 0, 'x'},
        {"json", no_argument, 0, 'j'},          {"offset", required_argument, 0, 'o'},
        {"exclude", required_argument, 0, 'e'}, {"timeout-ms", required_argument, 0, 'T'},
        {"no-partial", no_argument, 0, 'P'},    {"request-id", required_argument, 0, 'I'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        unsigned long v;
        switch (ch) {
        case 'i':
            index = optarg;
            break;
        case 'b':
            broker = optarg;
            break;
        case 'Q':
            queries = optarg;
            break;
        case 't':
            if (parse_timeout("search", optarg, &timeout_ms)) return 2;
            break;
        case 'u':
            user = optarg;
            break;
        case 'k':
        case 'R':
            v = strtoul(optarg, &end, 10);
            if (*end || v < 1 || v > PS_SEARCH_MAX_R) {
                fprintf(stderr, "persrv search: --%s must be 1..%d\n", ch == 'k' ? "k" : "R",
                        PS_SEARCH_MAX_R);
                return 2;
            }
            if (ch == 'k') {
                o.k = (uint32_t)v;
            } else {
                o.R = (uint32_t)v;
                r_given = 1;
            }
            break;
        case 'x':
            explain = 1;
            break;
        case 'j':
            json = 1;
            break;
        case 'o':
        case 'T':
            v = strtoul(optarg, &end, 10);
            if (*end || !*optarg || v > (ch == 'o' ? PS_SEARCH_MAX_R : 60000) ||
                (ch == 'T' && !v)) {
                fprintf(stderr, "persrv search: --%s must be %s\n",
                        ch == 'o' ? "offset" : "timeout-ms",
                        ch == 'o' ? "0..10000" : "1..60000 (ms)");
                return 2;
            }
            if (ch == 'o')
                extra.offset = (uint32_t)v;
            else
                extra.timeout_ms = (uint32_t)v;
            api_given = 1;
            break;
        case 'e':
            for (const char *p = optarg; *p;) {
                unsigned long long id = strtoull(p, &end, 10);
                if (end == p || (*end && *end != ',') || extra.nexclude == 100 || *p == '-') {
                    fprintf(stderr, "persrv search: --exclude takes up to 100 sticker ids "
                                    "separated by commas\n");
                    return 2;
                }
                exclude[extra.nexclude++] = id;
                p = *end ? end + 1 : end;
            }
            extra.exclude = exclude;
            api_given = 1;
            break;
        case 'P':
            extra.no_partial = 1;
            api_given = 1;
            break;
        case 'I':
            extra.request_id = optarg;
            api_given = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (index && broker) {
        fprintf(stderr, "persrv search: --index and --broker exclude each other\n");
        return 2;
    }
    if (index && timeout_ms) {
        fprintf(stderr, "persrv search: --timeout is for --broker\n");
        return 2;
    }
    if (index && api_given) {
        fprintf(stderr, "persrv search: --offset, --exclude, --timeout-ms, --no-partial and "
                        "--request-id are for --broker\n");
        return 2;
    }
    if (queries) {
        if (!index || optind != argc) {
            fprintf(stderr, "persrv search: --queries needs --index (a local index) and no "
                            "QUERY argument\n");
            return 2;
        }
        /* stdout holds one line per line of input; a batch that stops says why on stderr */
        return search_batch(index, queries, user, o);
    }
    if (!index && !broker) broker = getenv("PERSRV_BROKER");
    if (broker && !broker[0]) broker = NULL;
    if ((!index && !broker) || optind != argc - 1) {
        fprintf(stderr, "persrv search: --index or --broker (or PERSRV_BROKER), and exactly one "
                        "QUERY are required\n");
        usage(stderr);
        return 2;
    }
    if (broker && r_given) {
        fprintf(stderr, "persrv search: --R is for a single node (--index); the broker sets R\n");
        return 2;
    }
    json_errors = json;
    if (broker)
        return search_broker(broker, argv[optind], user, o.k, timeout_ms, explain, json, &extra);
    return search_local(index, argv[optind], user, o, explain, json);
}

/* The options of sticker and health: --broker, --timeout, --json. 0, or the exit status of a
 * usage error (or of --help: -1 = printed, exit 0). */
static int parse_broker_opts(const char *cmd, int argc, char **argv, const char **broker,
                             uint32_t *timeout_ms, int *json)
{
    static const struct option opts[] = {{"broker", required_argument, 0, 'b'},
                                         {"timeout", required_argument, 0, 't'},
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int ch;
    optind = 1;
    *broker = NULL;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'b':
            *broker = optarg;
            break;
        case 't':
            if (parse_timeout(cmd, optarg, timeout_ms)) return 2;
            break;
        case 'j':
            *json = 1;
            break;
        case 'h':
            usage(stdout);
            return -1;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!*broker) *broker = getenv("PERSRV_BROKER");
    if (!*broker || !**broker) {
        fprintf(stderr, "persrv %s: --broker (or PERSRV_BROKER) is required\n", cmd);
        usage(stderr);
        return 2;
    }
    return 0;
}

static int cmd_sticker(int argc, char **argv)
{
    const char *broker;
    uint32_t timeout_ms = 0;
    int json = 0, rc = parse_broker_opts("sticker", argc, argv, &broker, &timeout_ms, &json);
    if (rc) return rc < 0 ? 0 : rc;
    json_errors = json;
    char *end = NULL;
    const char *arg = optind == argc - 1 ? argv[optind] : "";
    errno = 0;
    unsigned long long id = strtoull(arg, &end, 10);
    if (!*arg || *end || errno || arg[0] == '-') {
        fprintf(stderr, "persrv sticker: exactly one sticker ID (an unsigned 64-bit integer) is "
                        "required\n");
        return 2;
    }
    persrv_t *c = broker_connect("sticker", broker, timeout_ms);
    persrv_sticker *st = NULL;
    if (!c) return 1;
    if (persrv_get_sticker(c, (uint64_t)id, &st)) return broker_fail("sticker", c);
    const char *fields[PS_NFIELDS] = {st->ocr, st->queries, st->keywords, st->desc, st->emotion};
    if (json) {
        char idbuf[24];
        snprintf(idbuf, sizeof idbuf, "%llu", (unsigned long long)st->id);
        json_t *o = json_pack("{s:s, s:f}", "id", idbuf, "utility", st->utility);
        for (int f = 0; f < PS_NFIELDS; f++)
            json_object_set_new(o, ps_field_names[f], json_string(fields[f]));
        if (st->image[0]) json_object_set_new(o, "image", json_string(st->image));
        put_json(o);
    } else {
        printf("sticker %llu  utility %.4f\n", (unsigned long long)st->id, st->utility);
        for (int f = 0; f < PS_NFIELDS; f++) printf("  %-8s %s\n", ps_field_names[f], fields[f]);
        if (st->image[0]) printf("  %-8s %s\n", "image", st->image);
    }
    persrv_sticker_free(st);
    persrv_close(c);
    return 0;
}

static int cmd_health(int argc, char **argv)
{
    const char *broker;
    uint32_t timeout_ms = 0;
    int json = 0, rc = parse_broker_opts("health", argc, argv, &broker, &timeout_ms, &json);
    if (rc) return rc < 0 ? 0 : rc;
    json_errors = json;
    if (optind != argc) {
        fprintf(stderr, "persrv health: takes no arguments\n");
        return 2;
    }
    persrv_t *c = broker_connect("health", broker, timeout_ms);
    persrv_health_info h;
    if (!c) return 1;
    if (persrv_health(c, &h)) return broker_fail("health", c);
    if (json) {
        json_t *o = json_pack("{s:b, s:i, s:i}", "ready", h.ready, "nshards", (json_int_t)h.nshards,
                              "shards_up", (json_int_t)h.shards_up);
        put_json(o);
    } else {
        printf("%s: %u of %u shards up\n", h.ready ? "ready" : "not ready", h.shards_up, h.nshards);
    }
    if (!h.ready)
        fprintf(stderr, "persrv health: not ready: %u of %u shards up (%s)\n", h.shards_up,
                h.nshards, persrv_errname(PERSRV_EUNAVAIL));
    persrv_close(c);
    return h.ready ? 0 : 1;
}

static int cmd_click(int argc, char **argv)
{
    static const struct option opts[] = {{"broker", required_argument, 0, 'b'},
                                         {"timeout", required_argument, 0, 't'},
                                         {"json", no_argument, 0, 'j'},
                                         {"query", required_argument, 0, 'q'},
                                         {"click-id", required_argument, 0, 'c'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *broker = NULL, *query = "", *click_id = NULL;
    uint32_t timeout_ms = 0;
    int json = 0, ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'b':
            broker = optarg;
            break;
        case 't':
            if (parse_timeout("click", optarg, &timeout_ms)) return 2;
            break;
        case 'j':
            json = 1;
            break;
        case 'q':
            query = optarg;
            break;
        case 'c':
            click_id = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!broker) broker = getenv("PERSRV_BROKER");
    if (!broker || !*broker) {
        fprintf(stderr, "persrv click: --broker (or PERSRV_BROKER) is required\n");
        return 2;
    }
    char *end = NULL;
    const char *arg = optind == argc - 2 ? argv[optind + 1] : "";
    errno = 0;
    unsigned long long id = strtoull(arg, &end, 10);
    if (!*arg || *end || errno || arg[0] == '-') {
        fprintf(stderr, "persrv click: a USER and a STICKER_ID (an unsigned 64-bit integer) are "
                        "required\n");
        return 2;
    }
    const char *user = argv[optind];
    json_errors = json;
    /* an attempt should end with the broker's answer (outcome_unknown after its
     * click-deadline-ms, 2 s by default), not with our timeout */
    persrv_t *c = broker_connect("click", broker, timeout_ms ? timeout_ms : 5000);
    if (!c) return 1;
    persrv_click_info k;
    int rc = persrv_click(c, user, (uint64_t)id, query, click_id, &k);
    if (rc) {
        const char *code = persrv_errname_last(c), *msg = persrv_errstr(c);
        fprintf(stderr, "persrv click: %s (%s)\n", msg, code);
        if (json) {
            /* as the HTTP door's 504: the click id to retry with, when there is one */
            json_t *e = error_json(code, msg);
            if (k.click_id[0])
                json_object_set_new(json_object_get(e, "error"), "click_id",
                                    json_string(k.click_id));
            put_json(e);
        }
        persrv_close(c);
        return rc == PERSRV_EINDOUBT ? 3 : 1;
    }
    if (json) {
        /* the HTTP door's reply to POST /v1/click, and the attempts it took */
        char idbuf[24];
        snprintf(idbuf, sizeof idbuf, "%llu", id);
        put_json(json_pack("{s:b, s:s, s:s, s:s, s:b, s:I, s:i, s:i, s:i}", "acknowledged", 1,
                           "user", user, "sticker_id", idbuf, "click_id", k.click_id, "duplicate",
                           k.duplicate, "seq", (json_int_t)k.seq, "history", (int)k.history,
                           "centroids", (int)k.centroids, "attempts", (int)k.attempts));
    } else {
        printf("%s click %s: seq %llu, history %u, %u centroids (%u attempt%s)\n",
               k.duplicate ? "duplicate" : "stored", k.click_id, (unsigned long long)k.seq,
               k.history, k.centroids, k.attempts, k.attempts == 1 ? "" : "s");
    }
    persrv_close(c);
    return 0;
}

int main(int argc, char **argv)
{
    ps_log_level = PS_LOG_WARN;
    if (argc >= 2 && strcmp(argv[1], "search") == 0) return cmd_search(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "sticker") == 0) return cmd_sticker(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "health") == 0) return cmd_health(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "click") == 0) return cmd_click(argc - 1, argv + 1);
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "--version") == 0) {
        ps_version_print("persrv", stdout);
        return 0;
    }
    usage(stderr);
    return 2;
}
