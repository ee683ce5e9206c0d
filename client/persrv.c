/*
 * persrv.c — the `persrv` command-line tool.
 *
 *   persrv search --index DIR [--user U] [--k N] [--R N] [--explain] [--json] QUERY
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
 *
 * `click` records a click with persrv_click (idempotent: under --click-id, or an id it makes
 * and prints, retried with the same id while the outcome is unknown).
 *
 * Errors go to stderr as `persrv <cmd>: <message> (<code>)`, code being the stable name
 * (the broker's own, e.g. invalid_query, when the broker refused). Exit status: 0 success
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

static void usage(FILE *f)
{
    fprintf(f, "usage: persrv search (--index DIR | --broker EP) [options] QUERY\n"
               "       persrv sticker --broker EP [--timeout MS] [--json] ID\n"
               "       persrv health --broker EP [--timeout MS] [--json]\n"
               "       persrv click --broker EP [--timeout MS] [--json] [--query Q]\n"
               "                    [--click-id ID] USER STICKER_ID\n\n"
               "search: searches an index directory built by `builder build` in-process, or a\n"
               "cluster through its broker (ZeroMQ front door). sticker: the stored fields of one\n"
               "sticker. health: the broker's shards up and ready (exit 1 when not ready).\n"
               "click: USER picked STICKER_ID (for the message --query); stored once under its\n"
               "click id (--click-id, else a random one, printed), retried while the outcome is\n"
               "unknown (exit 3 when it stays unknown: run again with the same --click-id).\n\n"
               "options:\n"
               "  --index DIR     index directory (single node)\n"
               "  --broker EP     broker front door, e.g. tcp://127.0.0.1:7001\n"
               "                  (default: $PERSRV_BROKER when --index is not given)\n"
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
               "  --json          print one JSON object\n"
               "  --help          this text\n"
               "With --broker, the broker's API key (if it runs with --api-keys) is read from\n"
               "$PERSRV_API_KEY.\n");
}

/* What a hit prints, from the engine (ps_hit) or from libpersrv (persrv_hit). */
typedef struct hit_view {
    uint64_t id;
    double score, recall, relevance, utility, preference;
    int centroid;
} hit_view;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
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
 * it to arr for --json (arr not NULL): id as a string, the scores, and the 5 stored fields
 * (fields[f] NULL = ""). */
static void emit_hit(const hit_view *h, const char *const *fields, size_t i, int explain,
                     json_t *arr)
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
        fprintf(stderr, "persrv %s: out of memory (%s)\n", cmd, persrv_errname(PERSRV_ENOMEM));
        return NULL;
    }
    if (persrv_errcode(c)) {
        fprintf(stderr, "persrv %s: %s (%s)\n", cmd, persrv_errstr(c), persrv_errname_last(c));
        persrv_close(c);
        return NULL;
    }
    return c;
}

static int broker_fail(const char *cmd, persrv_t *c)
{
    fprintf(stderr, "persrv %s: %s (%s)\n", cmd, persrv_errstr(c), persrv_errname_last(c));
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
    double took = r->took_us / 1e3;
    json_t *out = json_object(), *arr = json ? json_array() : NULL;
    if (!json)
        printf("%zu hits for \"%s\"%s%s%s in %.2f ms\n", r->nhits, q, user ? " for user " : "",
               user ? user : "", user && !r->personalized ? " (no profile: unpersonalized)" : "",
               took);
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
        emit_hit(&v, fields, i, explain, arr);
    }
    if (json) {
        json_t *fails = json_array();
        for (size_t i = 0; i < r->nfailures; i++)
            json_array_append_new(fails,
                                  json_pack("{s:i, s:s}", "shard", (json_int_t)r->failures[i].shard,
                                            "reason", r->failures[i].reason));
        uint32_t failed = r->nfailures > r->shards_total ? r->shards_total : (uint32_t)r->nfailures;
        json_object_set_new(out, "took", json_real(took));
        json_object_set_new(out, "timed_out", json_boolean(r->timed_out));
        json_object_set_new(out, "partial", json_boolean(r->partial));
        json_object_set_new(out, "version", json_integer((json_int_t)r->version));
        json_object_set_new(out, "shards",
                            json_pack("{s:i, s:i, s:i, s:o}", "total", (json_int_t)r->shards_total,
                                      "successful", (json_int_t)(r->shards_total - failed),
                                      "failed", (json_int_t)failed, "failures", fails));
        json_object_set_new(out, "personalized", json_boolean(r->personalized));
        json_object_set_new(out, "hits", arr);
        char *sout = json_dumps(out, JSON_COMPACT);
        if (sout) puts(sout);
        free(sout);
    }
    json_decref(out);
    persrv_result_free(r);
    persrv_close(c);
    return 0;
}

static int cmd_search(int argc, char **argv)
{
    const char *index = NULL, *user = NULL, *broker = NULL;
    int explain = 0, json = 0, r_given = 0, api_given = 0;
    uint32_t timeout_ms = 0;
    ps_search_opts o;
    ps_search_opts_default(&o);
    persrv_query extra = {0}; /* --broker: the search API's options */
    uint64_t exclude[100];
    static const struct option opts[] = {{"index", required_argument, 0, 'i'},
                                         {"broker", required_argument, 0, 'b'},
                                         {"user", required_argument, 0, 'u'},
                                         {"k", required_argument, 0, 'k'},
                                         {"R", required_argument, 0, 'R'},
                                         {"timeout", required_argument, 0, 't'},
                                         {"explain", no_argument, 0, 'x'},
                                         {"json", no_argument, 0, 'j'},
                                         {"offset", required_argument, 0, 'o'},
                                         {"exclude", required_argument, 0, 'e'},
                                         {"timeout-ms", required_argument, 0, 'T'},
                                         {"no-partial", no_argument, 0, 'P'},
                                         {"request-id", required_argument, 0, 'I'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
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
    if (index && timeout_ms) {
        fprintf(stderr, "persrv search: --timeout is for --broker\n");
        return 2;
    }
    if (index && api_given) {
        fprintf(stderr, "persrv search: --offset, --exclude, --timeout-ms, --no-partial and "
                        "--request-id are for --broker\n");
        return 2;
    }
    if (broker)
        return search_broker(broker, argv[optind], user, o.k, timeout_ms, explain, json, &extra);
    if (o.k > o.R) o.R = o.k;
    const char *q = argv[optind];

    ps_err err = {0};
    ps_store_t *st = NULL;
    ps_searcher_t *s = NULL;
    ps_profile prof = {0};
    ps_hit *hits = NULL;
    size_t nh = 0;
    int rc = 1, personalized = 0;

    if (!(st = ps_store_open(index, &err))) goto fail;
    if (user) {
        int prc = ps_store_profile(st, user, &prof, &err);
        if (prc == 0) {
            o.profile = &prof;
            personalized = prof.k > 0;
        } else if (prc != PS_ENOTFOUND) {
            goto fail;
        }
        ps_err_clear(&err);
    }
    if (!(s = ps_searcher_new(ps_store_index(st), &err))) goto fail;
    if (!(hits = malloc(o.R * sizeof *hits))) {
        ps_err_set(&err, PS_ENOMEM, "out of memory");
        goto fail;
    }
    double t0 = now();
    if (ps_search(s, q, strlen(q), &o, hits, &nh, NULL, &err)) goto fail;
    double took = (now() - t0) * 1e3;

    json_t *out = json_object(), *arr = json_array();
    if (!json) {
        printf("%zu hits for \"%s\"%s%s%s in %.2f ms\n", nh, q, user ? " for user " : "",
               user ? user : "", user && !personalized ? " (no profile: unpersonalized)" : "",
               took);
    }
    for (size_t i = 0; i < nh; i++) {
        const ps_hit *h = &hits[i];
        char *fields[PS_NFIELDS] = {0};
        if ((explain || json) && ps_store_fields(st, h->doc, fields, &err) != 0) {
            json_decref(out);
            json_decref(arr);
            goto fail;
        }
        hit_view v = {h->id,      h->score,      h->recall,  h->relevance,
                      h->utility, h->preference, h->centroid};
        emit_hit(&v, (const char *const *)fields, i, explain, json ? arr : NULL);
        for (int f = 0; f < PS_NFIELDS; f++) free(fields[f]);
    }
    if (json) {
        json_object_set_new(out, "took", json_real(took));
        json_object_set_new(out, "personalized", json_boolean(personalized));
        json_object_set_new(out, "hits", arr);
        char *sout = json_dumps(out, JSON_COMPACT);
        if (sout) puts(sout);
        free(sout);
        json_decref(out);
    } else {
        json_decref(arr);
        json_decref(out);
    }
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "persrv search: %s (%s)\n", err.msg, ps_errname(err.code));
done:
    free(hits);
    ps_profile_clear(&prof);
    ps_searcher_free(s);
    ps_store_close(st);
    return rc;
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
        char *sout = json_dumps(o, JSON_COMPACT);
        if (sout) puts(sout);
        free(sout);
        json_decref(o);
    } else {
        printf("sticker %llu  utility %.4f\n", (unsigned long long)st->id, st->utility);
        for (int f = 0; f < PS_NFIELDS; f++) printf("  %-8s %s\n", ps_field_names[f], fields[f]);
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
        char *sout = json_dumps(o, JSON_COMPACT);
        if (sout) puts(sout);
        free(sout);
        json_decref(o);
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
    /* an attempt should end with the broker's answer (outcome_unknown after its
     * click-deadline-ms, 2 s by default), not with our timeout */
    persrv_t *c = broker_connect("click", broker, timeout_ms ? timeout_ms : 5000);
    if (!c) return 1;
    persrv_click_info k;
    int rc = persrv_click(c, user, (uint64_t)id, query, click_id, &k);
    if (rc) {
        fprintf(stderr, "persrv click: %s (%s)\n", persrv_errstr(c), persrv_errname_last(c));
        persrv_close(c);
        return rc == PERSRV_EINDOUBT ? 3 : 1;
    }
    if (json) {
        json_t *o = json_pack("{s:s, s:b, s:I, s:i, s:i, s:i}", "click_id", k.click_id, "duplicate",
                              k.duplicate, "seq", (json_int_t)k.seq, "history", (int)k.history,
                              "centroids", (int)k.centroids, "attempts", (int)k.attempts);
        char *sout = json_dumps(o, JSON_COMPACT);
        if (sout) puts(sout);
        free(sout);
        json_decref(o);
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
    usage(stderr);
    return 2;
}
