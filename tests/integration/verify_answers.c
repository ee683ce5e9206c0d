/*
 * verify_answers.c — judges every answer push_load recorded (issue 9, must-show 1): each must
 * be a success, complete, name exactly one of the given snapshot versions, and carry exactly
 * the hits the single node of that version answers — ids, order and scores bit for bit.
 *
 *   verify_answers --index V=DIR [--index V=DIR ...] [--k K] [--R R] [--profiles DIR]
 *                  [--show N] [--json] ANSWERS.jsonl
 *
 * DIR is a single-node index directory (`builder build` without --shards) of version V. The
 * expected answer of (V, query, user) is computed in-process exactly as `persrv search --index
 * DIR --json --user U --k K` computes it (ps_store_open, the user's profile from the same
 * store, ps_search with the default options, R = 100 unless --R), once per distinct
 * (V, query, user). Every line of ANSWERS is checked, none sampled:
 *   - status 200 (HTTP) or "ok" (libpersrv), no "error";
 *   - "partial" false;
 *   - "version" one of the given V;
 *   - "personalized" equal to the single node's (the user has a profile there);
 *   - "hits" ([[id, score], ...]) equal to the single node's: count, ids, order, and every
 *     score's 64 bits (the recorded scores are "%.17g" reals, which read back exactly).
 * --profiles DIR (the profiles directory the broker serves) also checks that every user of the
 * answers has the same profile, byte for byte, there and in every version's index: answers of
 * different versions are then comparable with profiles held fixed.
 *
 * Output: the first --show (default 5) failures in detail on stderr; on stdout a table of
 * answers per version and door (or with --json one line: {"answers", "ok", "failed",
 * "expected_computed", "versions": {"V": {"http": n, "zmq": n}}, "failures": {reason: n}}).
 * Exit status 0 when every answer passed (and there was at least one), 1 when any failed,
 * 2 on a usage error or an index that cannot be opened.
 */
#include <getopt.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps/err.h"
#include "ps/profile.h"
#include "ps/search.h"
#include "ps/store.h"

#define MAX_VERSIONS 16
#define NBUCKETS     (1u << 14)

/* One version's single node. */
typedef struct version {
    uint64_t v;
    const char *dir;
    ps_store_t *st;
    ps_searcher_t *s;
    long ok_http, ok_zmq;
} version;

/* A cached expected answer for (version, query, user). */
typedef struct expected {
    struct expected *next;
    size_t vi;
    char *query, *user;
    int rc; /* ps_search's outcome */
    char msg[256];
    int personalized;
    size_t nhits;
    ps_hit *hits;
} expected;

/* A cached profile for (version, user); vi == MAX_VERSIONS is the --profiles directory. */
typedef struct profent {
    struct profent *next;
    size_t vi;
    char *user;
    int found;
    uint8_t *enc; /* ps_profile_encode of it */
    size_t enclen;
    ps_profile prof;
} profent;

static version versions[MAX_VERSIONS];
static size_t nversions;
static ps_profiles_t *profiles_db;
static ps_search_opts base_opts;
static expected *table[NBUCKETS];
static profent *ptable[NBUCKETS];
static size_t nexpected;

/* Failure reasons, counted. */
enum {
    F_PARSE,
    F_ERROR,
    F_PARTIAL,
    F_VERSION,
    F_EXPECTED_ERROR,
    F_PERSONALIZED,
    F_HITS,
    F_PROFILE,
    F_NREASONS
};
static const char *reason_names[F_NREASONS] = {
    "not_an_answer",     "failed_request", "partial",     "unknown_version",
    "single_node_error", "personalized",   "hits_differ", "profile_differs"};
static long reasons[F_NREASONS];
static long shown, show_max = 5;

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n, sz);
    if (!p) {
        fprintf(stderr, "verify_answers: out of memory\n");
        exit(2);
    }
    return p;
}

static char *xstrdup(const char *s)
{
    char *p = strdup(s);
    if (!p) {
        fprintf(stderr, "verify_answers: out of memory\n");
        exit(2);
    }
    return p;
}

static uint32_t hash3(size_t vi, const char *a, const char *b)
{
    uint32_t h = 2166136261u ^ (uint32_t)vi;
    for (const unsigned char *p = (const unsigned char *)a; *p; p++) h = (h ^ *p) * 16777619u;
    h = (h ^ 0xff) * 16777619u;
    for (const unsigned char *p = (const unsigned char *)b; *p; p++) h = (h ^ *p) * 16777619u;
    return h & (NBUCKETS - 1);
}

static void open_version(version *v)
{
    ps_err err = {0, ""};
    if (v->st) return;
    if (!(v->st = ps_store_open(v->dir, &err)) ||
        !(v->s = ps_searcher_new(ps_store_index(v->st), &err))) {
        fprintf(stderr, "verify_answers: version %llu: %s: %s (%s)\n", (unsigned long long)v->v,
                v->dir, err.msg, ps_errname(err.code));
        exit(2);
    }
}

/* The profile of user in version vi (or in --profiles when vi == MAX_VERSIONS). */
static profent *profile_of(size_t vi, const char *user)
{
    uint32_t h = hash3(vi, "", user);
    for (profent *p = ptable[h]; p; p = p->next)
        if (p->vi == vi && !strcmp(p->user, user)) return p;
    profent *p = xcalloc(1, sizeof *p);
    p->vi = vi;
    p->user = xstrdup(user);
    ps_err err = {0, ""};
    int rc;
    if (vi == MAX_VERSIONS) {
        rc = ps_profiles_get(profiles_db, user, &p->prof, &err);
    } else {
        open_version(&versions[vi]);
        rc = ps_store_profile(versions[vi].st, user, &p->prof, &err);
    }
    if (rc == 0) {
        p->found = 1;
        if (ps_profile_encode(&p->prof, &p->enc, &p->enclen, &err)) {
            fprintf(stderr, "verify_answers: profile of %s: %s\n", user, err.msg);
            exit(2);
        }
    } else if (rc != PS_ENOTFOUND) {
        fprintf(stderr, "verify_answers: profile of %s: %s (%s)\n", user, err.msg,
                ps_errname(err.code));
        exit(2);
    }
    p->next = ptable[h];
    ptable[h] = p;
    return p;
}

/* What the single node of version vi answers for (query, user). */
static expected *expected_of(size_t vi, const char *query, const char *user)
{
    uint32_t h = hash3(vi, query, user);
    for (expected *e = table[h]; e; e = e->next)
        if (e->vi == vi && !strcmp(e->query, query) && !strcmp(e->user, user)) return e;
    expected *e = xcalloc(1, sizeof *e);
    e->vi = vi;
    e->query = xstrdup(query);
    e->user = xstrdup(user);
    version *v = &versions[vi];
    open_version(v);
    ps_search_opts o = base_opts;
    if (user[0]) {
        profent *p = profile_of(vi, user);
        if (p->found) {
            o.profile = &p->prof;
            e->personalized = p->prof.k > 0;
        }
    }
    e->hits = xcalloc(o.R, sizeof *e->hits);
    ps_err err = {0, ""};
    e->rc = ps_search(v->s, query, strlen(query), &o, e->hits, &e->nhits, NULL, &err);
    if (e->rc) snprintf(e->msg, sizeof e->msg, "%.200s (%s)", err.msg, ps_errname(err.code));
    e->next = table[h];
    table[h] = e;
    nexpected++;
    return e;
}

static void print_hits_got(FILE *f, json_t *hits)
{
    size_t i;
    json_t *h;
    json_array_foreach(hits, i, h)
    {
        json_t *id = json_array_get(h, 0), *sc = json_array_get(h, 1);
        fprintf(f, "%s[%s, %.17g]", i ? ", " : "", json_is_string(id) ? json_string_value(id) : "?",
                json_is_number(sc) ? json_number_value(sc) : -1.0);
    }
}

static void print_hits_want(FILE *f, const expected *e)
{
    for (size_t i = 0; i < e->nhits; i++)
        fprintf(f, "%s[%llu, %.17g]", i ? ", " : "", (unsigned long long)e->hits[i].id,
                e->hits[i].score);
}

/* Count a failure of the answer on line `lineno`; the first few in detail. */
static void failure(int reason, long lineno, const char *line, const char *detail, json_t *got_hits,
                    const expected *e)
{
    reasons[reason]++;
    if (shown++ >= show_max) return;
    fprintf(stderr, "FAILED line %ld (%s): %s\n  answer: %.600s\n", lineno, reason_names[reason],
            detail, line);
    if (got_hits && e) {
        fprintf(stderr, "  got:    ");
        print_hits_got(stderr, got_hits);
        fprintf(stderr, "\n  single: ");
        print_hits_want(stderr, e);
        fputc('\n', stderr);
    }
}

static int parse_u64(const char *s, uint64_t *v)
{
    char *end;
    if (!*s || *s == '-') return -1;
    unsigned long long x = strtoull(s, &end, 10);
    if (*end) return -1;
    *v = x;
    return 0;
}

/* Check one answer line. Returns 0 when it passed. */
static int check(long lineno, const char *line)
{
    json_error_t jerr;
    json_t *j = json_loads(line, 0, &jerr);
    char detail[512];
    int rc = -1;
    if (!j || !json_is_object(j)) {
        snprintf(detail, sizeof detail, "not a JSON object: %s", j ? "" : jerr.text);
        failure(F_PARSE, lineno, line, detail, NULL, NULL);
        goto out;
    }
    const char *door = json_string_value(json_object_get(j, "door"));
    const char *query = json_string_value(json_object_get(j, "query"));
    const char *user = json_string_value(json_object_get(j, "user"));
    json_t *status = json_object_get(j, "status"), *jv = json_object_get(j, "version");
    json_t *hits = json_object_get(j, "hits");
    if (!door || (strcmp(door, "http") && strcmp(door, "zmq")) || !query || !user) {
        failure(F_PARSE, lineno, line, "door, query or user missing", NULL, NULL);
        goto out;
    }
    int success = (json_is_integer(status) && json_integer_value(status) == 200) ||
                  (json_is_string(status) && !strcmp(json_string_value(status), "ok"));
    if (!success || json_object_get(j, "error")) {
        const char *msg = json_string_value(json_object_get(j, "error"));
        snprintf(detail, sizeof detail, "the request failed: %s", msg ? msg : "(no message)");
        failure(F_ERROR, lineno, line, detail, NULL, NULL);
        goto out;
    }
    if (!json_is_false(json_object_get(j, "partial"))) {
        failure(F_PARTIAL, lineno, line, "a partial answer (or partial missing)", NULL, NULL);
        goto out;
    }
    uint64_t v;
    if (json_is_integer(jv) && json_integer_value(jv) >= 0) {
        v = (uint64_t)json_integer_value(jv);
    } else if (!json_is_string(jv) || parse_u64(json_string_value(jv), &v)) {
        failure(F_VERSION, lineno, line, "no version named", NULL, NULL);
        goto out;
    }
    size_t vi = 0;
    while (vi < nversions && versions[vi].v != v) vi++;
    if (vi == nversions) {
        snprintf(detail, sizeof detail, "names version %llu, which is none of the given ones",
                 (unsigned long long)v);
        failure(F_VERSION, lineno, line, detail, NULL, NULL);
        goto out;
    }
    if (profiles_db && user[0]) {
        profent *b = profile_of(MAX_VERSIONS, user);
        for (size_t i = 0; i < nversions; i++) {
            profent *p = profile_of(i, user);
            if (p->found != b->found ||
                (p->found && (p->enclen != b->enclen || memcmp(p->enc, b->enc, p->enclen)))) {
                snprintf(detail, sizeof detail,
                         "user %s: the profile of version %llu's index differs from --profiles",
                         user, (unsigned long long)versions[i].v);
                failure(F_PROFILE, lineno, line, detail, NULL, NULL);
                goto out;
            }
        }
    }
    const expected *e = expected_of(vi, query, user);
    if (e->rc) {
        snprintf(detail, sizeof detail, "the single node of version %llu failed: %s",
                 (unsigned long long)v, e->msg);
        failure(F_EXPECTED_ERROR, lineno, line, detail, NULL, NULL);
        goto out;
    }
    if (!json_is_boolean(json_object_get(j, "personalized")) ||
        json_is_true(json_object_get(j, "personalized")) != e->personalized) {
        snprintf(detail, sizeof detail, "personalized should be %s (version %llu)",
                 e->personalized ? "true" : "false", (unsigned long long)v);
        failure(F_PERSONALIZED, lineno, line, detail, NULL, NULL);
        goto out;
    }
    if (!json_is_array(hits) || json_array_size(hits) != e->nhits) {
        snprintf(detail, sizeof detail, "%zu hits, the single node of version %llu has %zu",
                 json_is_array(hits) ? json_array_size(hits) : 0, (unsigned long long)v, e->nhits);
        failure(F_HITS, lineno, line, detail, hits, e);
        goto out;
    }
    for (size_t i = 0; i < e->nhits; i++) {
        json_t *h = json_array_get(hits, i);
        json_t *jid = json_array_get(h, 0), *jsc = json_array_get(h, 1);
        uint64_t id;
        if (!json_is_string(jid) || parse_u64(json_string_value(jid), &id) ||
            !json_is_number(jsc)) {
            snprintf(detail, sizeof detail, "hit %zu is not [\"id\", score]", i);
            failure(F_HITS, lineno, line, detail, hits, e);
            goto out;
        }
        double got = json_number_value(jsc), want = e->hits[i].score;
        if (id != e->hits[i].id || memcmp(&got, &want, sizeof got) != 0) {
            snprintf(detail, sizeof detail,
                     "hit %zu is [%llu, %.17g], the single node of version %llu has "
                     "[%llu, %.17g]",
                     i, (unsigned long long)id, got, (unsigned long long)v,
                     (unsigned long long)e->hits[i].id, want);
            failure(F_HITS, lineno, line, detail, hits, e);
            goto out;
        }
    }
    if (!strcmp(door, "http"))
        versions[vi].ok_http++;
    else
        versions[vi].ok_zmq++;
    rc = 0;
out:
    json_decref(j);
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: verify_answers --index V=DIR [--index V=DIR ...] [--k K (10)] [--R R "
               "(100)]\n"
               "                      [--profiles DIR] [--show N (5)] [--json] ANSWERS.jsonl\n"
               "Checks every answer push_load recorded against the single-node index of the\n"
               "version it names; exit 1 when any fails.\n");
}

int main(int argc, char **argv)
{
    const char *profiles_dir = NULL;
    int json = 0;
    ps_search_opts_default(&base_opts);
    static const struct option opts[] = {
        {"index", required_argument, 0, 'i'}, {"k", required_argument, 0, 'k'},
        {"R", required_argument, 0, 'R'},     {"profiles", required_argument, 0, 'p'},
        {"show", required_argument, 0, 's'},  {"json", no_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        unsigned long x;
        switch (ch) {
        case 'i': {
            const char *eq = strchr(optarg, '=');
            char num[32];
            uint64_t v;
            if (!eq || eq == optarg || (size_t)(eq - optarg) >= sizeof num || !eq[1]) {
                fprintf(stderr, "verify_answers: --index: '%s' is not V=DIR\n", optarg);
                return 2;
            }
            memcpy(num, optarg, (size_t)(eq - optarg));
            num[eq - optarg] = '\0';
            if (parse_u64(num, &v)) {
                fprintf(stderr, "verify_answers: --index: '%s' is not a version number\n", num);
                return 2;
            }
            for (size_t i = 0; i < nversions; i++)
                if (versions[i].v == v) {
                    fprintf(stderr, "verify_answers: --index: version %s given twice\n", num);
                    return 2;
                }
            if (nversions == MAX_VERSIONS) {
                fprintf(stderr, "verify_answers: at most %d versions\n", MAX_VERSIONS);
                return 2;
            }
            versions[nversions++] = (version){.v = v, .dir = eq + 1};
            break;
        }
        case 'k':
        case 'R':
            x = strtoul(optarg, &end, 10);
            if (!*optarg || *end || x < 1 || x > PS_SEARCH_MAX_R) {
                fprintf(stderr, "verify_answers: --%s must be 1..%d\n", ch == 'k' ? "k" : "R",
                        PS_SEARCH_MAX_R);
                return 2;
            }
            if (ch == 'k')
                base_opts.k = (uint32_t)x;
            else
                base_opts.R = (uint32_t)x;
            break;
        case 'p':
            profiles_dir = optarg;
            break;
        case 's':
            show_max = strtol(optarg, NULL, 10);
            break;
        case 'j':
            json = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (nversions == 0 || optind != argc - 1) {
        fprintf(stderr, "verify_answers: at least one --index V=DIR and one ANSWERS file\n");
        usage(stderr);
        return 2;
    }
    if (base_opts.k > base_opts.R) base_opts.R = base_opts.k; /* as persrv search does */
    if (profiles_dir) {
        ps_err err = {0, ""};
        if (!(profiles_db = ps_profiles_open(profiles_dir, &err))) {
            fprintf(stderr, "verify_answers: --profiles %s: %s\n", profiles_dir, err.msg);
            return 2;
        }
    }
    FILE *f = fopen(argv[optind], "r");
    if (!f) {
        perror(argv[optind]);
        return 2;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0, answers = 0, ok = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
        if (len == 0) continue;
        answers++;
        if (check(lineno, line) == 0) ok++;
    }
    free(line);
    fclose(f);

    long failed = answers - ok;
    if (json) {
        json_t *vs = json_object(), *fs = json_object();
        for (size_t i = 0; i < nversions; i++) {
            char key[24];
            snprintf(key, sizeof key, "%llu", (unsigned long long)versions[i].v);
            json_object_set_new(vs, key,
                                json_pack("{s:I, s:I}", "http", (json_int_t)versions[i].ok_http,
                                          "zmq", (json_int_t)versions[i].ok_zmq));
        }
        for (int r = 0; r < F_NREASONS; r++)
            if (reasons[r]) json_object_set_new(fs, reason_names[r], json_integer(reasons[r]));
        json_t *sum =
            json_pack("{s:I, s:I, s:I, s:I, s:o, s:o}", "answers", (json_int_t)answers, "ok",
                      (json_int_t)ok, "failed", (json_int_t)failed, "expected_computed",
                      (json_int_t)nexpected, "versions", vs, "failures", fs);
        char *s = json_dumps(sum, JSON_COMPACT);
        if (s) puts(s);
        free(s);
        json_decref(sum);
    } else {
        printf("%ld answers: %ld equal the single node of the version they name, %ld failed "
               "(%zu single-node answers computed)\n",
               answers, ok, failed, nexpected);
        for (size_t i = 0; i < nversions; i++)
            printf("  version %llu: http %ld, zmq %ld\n", (unsigned long long)versions[i].v,
                   versions[i].ok_http, versions[i].ok_zmq);
        for (int r = 0; r < F_NREASONS; r++)
            if (reasons[r]) printf("  failed (%s): %ld\n", reason_names[r], reasons[r]);
    }

    for (size_t b = 0; b < NBUCKETS; b++) {
        for (expected *e = table[b], *n; e; e = n) {
            n = e->next;
            free(e->query);
            free(e->user);
            free(e->hits);
            free(e);
        }
        for (profent *p = ptable[b], *n; p; p = n) {
            n = p->next;
            free(p->user);
            free(p->enc);
            ps_profile_clear(&p->prof);
            free(p);
        }
    }
    for (size_t i = 0; i < nversions; i++) {
        ps_searcher_free(versions[i].s);
        ps_store_close(versions[i].st);
    }
    ps_profiles_close(profiles_db);
    return failed || answers == 0 ? 1 : 0;
}
