/*
 * persrv.c — the `persrv` command-line tool.
 *
 *   persrv search --index DIR [--user U] [--k N] [--R N] [--explain] [--json] QUERY
 *
 * searches an index directory in-process (a single node) and prints the ranked stickers,
 * with the score breakdown (relevance, utility, recall, preference) under --explain.
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ps/log.h"
#include "ps/search.h"
#include "ps/store.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: persrv search --index DIR [options] QUERY\n\n"
               "Searches an index directory built by `builder build`.\n\n"
               "options:\n"
               "  --index DIR   index directory\n"
               "  --user U      personalize for user U (unknown users get unpersonalized results)\n"
               "  --k N         results to print (default 10)\n"
               "  --R N         recall depth (default 100)\n"
               "  --explain     print the score breakdown and stored fields\n"
               "  --json        print one JSON object\n"
               "  --help        this text\n");
}

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

static int cmd_search(int argc, char **argv)
{
    const char *index = NULL, *user = NULL;
    int explain = 0, json = 0;
    ps_search_opts o;
    ps_search_opts_default(&o);
    static const struct option opts[] = {
        {"index", required_argument, 0, 'i'}, {"user", required_argument, 0, 'u'},
        {"k", required_argument, 0, 'k'},     {"R", required_argument, 0, 'R'},
        {"explain", no_argument, 0, 'x'},     {"json", no_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        unsigned long v;
        switch (ch) {
        case 'i':
            index = optarg;
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
            if (ch == 'k')
                o.k = (uint32_t)v;
            else
                o.R = (uint32_t)v;
            break;
        case 'x':
            explain = 1;
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
    if (!index || optind != argc - 1) {
        fprintf(stderr, "persrv search: --index and exactly one QUERY are required\n");
        usage(stderr);
        return 2;
    }
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
        if (json) {
            /* Ids are strings: 19-digit ids exceed what JSON numbers carry exactly. */
            char idbuf[24];
            snprintf(idbuf, sizeof idbuf, "%llu", (unsigned long long)h->id);
            json_t *hit =
                json_pack("{s:s, s:f, s:f, s:f, s:f, s:f, s:i}", "id", idbuf, "score", h->score,
                          "recall", h->recall, "relevance", h->relevance, "utility", h->utility,
                          "preference", h->preference, "centroid", (int)h->centroid);
            for (int f = 0; f < PS_NFIELDS; f++)
                json_object_set_new(hit, ps_field_names[f],
                                    json_string(fields[f] ? fields[f] : ""));
            json_array_append_new(arr, hit);
        } else {
            printf("%3zu. %llu  score %.4f", i + 1, (unsigned long long)h->id, h->score);
            if (explain) {
                char line[160];
                printf("  = recall %.4f (relevance %.4f + utility %.4f) × preference %.4f",
                       h->recall, h->relevance, h->utility, h->preference);
                if (h->centroid >= 0) printf(" (centroid %d)", h->centroid);
                printf("\n");
                for (int f = 0; f < PS_NFIELDS; f++) {
                    if (!fields[f] || !fields[f][0]) continue;
                    first_line(fields[f], line, 120);
                    printf("       %-8s %s%s\n", ps_field_names[f], line,
                           strlen(line) < strlen(fields[f]) ? " …" : "");
                }
            } else {
                printf("\n");
            }
        }
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

int main(int argc, char **argv)
{
    ps_log_level = PS_LOG_WARN;
    if (argc >= 2 && strcmp(argv[1], "search") == 0) return cmd_search(argc - 1, argv + 1);
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    usage(stderr);
    return 2;
}
