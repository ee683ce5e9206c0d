/*
 * fuzz_curve.c — fuzz target for the CURVE files a daemon reads at start (ps_curve_load,
 * wire/curve.c): its key pair file (`public = KEY` / `secret = KEY`), the allow-list
 * ("<Z85> [name]" per line) and the known-servers file ("<endpoint> <Z85>" per line, "*" for
 * any other endpoint). They come from secrets-init, cluster-up or an operator's hand, and a
 * daemon parses them before anything else.
 *
 * Input: three parts separated by 0xFF bytes (which UTF-8 text never holds): the key file, the
 * allow-list, the known-servers file. An empty or missing allow-list or known-servers part is a
 * file not configured (an empty file loads as one of comments only); an empty key part stands
 * for a valid key pair (KEYS below), so that mutations of the other two files get past the key
 * file. Each file is an anonymous memory file, mode 0600.
 *
 * Any input must give a ps_curve_t or NULL with a negative PS_E* code whose message names the
 * file at fault first (all but out of memory), never a crash or a leak. A configuration that
 * loads has a public key the secret derives; every endpoint of the known-servers file has the
 * key of its first line; an endpoint no line can name has the "*" line's key (the last one) or
 * none, and ps_curve_check_endpoint agrees with ps_curve_server_key.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create */
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "ps/curve.h"
#include "ps/log.h"

/* A key pair made for this target alone (zmq_curve_keypair); it guards nothing. */
#define KEYS                                                                                       \
    "# fuzz_curve's own key pair\n"                                                                \
    "public = QY5yuGgIv#ylz=O[d6u.I@z6vMAD$v&uu*U<9i4i\n"                                          \
    "secret = VgLD{Jpr?T{lL$+B3F>p]F[9w8MW0TJzq#MOiSLA\n"

#define NFILES  3
#define UNNAMED "no endpoint has a space" /* no line of the file can name it */

static int fds[NFILES] = {-1, -1, -1};
static char paths[NFILES][64];

/* Make file i hold the n bytes at p. */
static void fill(int i, const void *p, size_t n)
{
    if (fds[i] < 0) {
        if ((fds[i] = memfd_create("fuzz_curve", MFD_CLOEXEC)) < 0 || fchmod(fds[i], 0600)) abort();
        snprintf(paths[i], sizeof paths[i], "/proc/self/fd/%d", fds[i]);
    }
    if (ftruncate(fds[i], 0) || (n && pwrite(fds[i], p, n, 0) != (ssize_t)n)) abort();
}

static int is_space(char c)
{
    return c == ' ' || c == '\t';
}

/* Check every line of the known-servers text (n bytes at s) against c, reading lines as
 * curve.c does: cut at a NUL, trimmed, '#' a comment unless the first word is a key. */
static void check_known(const ps_curve_t *c, const char *s, size_t n)
{
    char any[PS_CURVE_Z85_LEN + 1] = "";
    if (n >= 4095) return; /* a line may not fit curve.c's line buffer: not modelled here */
    char *buf = malloc(n + 1), *end = buf + n;
    const char **seen = malloc((n / 2 + 1) * sizeof *seen); /* endpoints so far, in buf */
    size_t nseen = 0;
    if (!buf || !seen) abort();
    memcpy(buf, s, n);
    *end = '\0';
    for (char *line = buf, *next; line < end; line = next) {
        char *nl = memchr(line, '\n', (size_t)(end - line));
        next = nl ? nl + 1 : end;
        if (nl) *nl = '\0';
        size_t ll = strlen(line);
        while (ll && (line[ll - 1] == '\r' || is_space(line[ll - 1]))) line[--ll] = '\0';
        char *p = line;
        while (is_space(*p)) p++;
        size_t el = strcspn(p, " \t");
        if (!*p || (*p == '#' && !ps_curve_z85_valid(p, el))) continue;
        char *key = p + el;
        while (is_space(*key)) key++;
        if (el == 0 || !ps_curve_z85_valid(key, strlen(key))) abort(); /* loaded: a good line */
        p[el] = '\0';
        if (!strcmp(p, "*")) {
            memcpy(any, key, sizeof any);
            continue;
        }
        size_t i = 0;
        while (i < nseen && strcmp(seen[i], p)) i++;
        if (i < nseen) continue; /* the first line of an endpoint gives its key */
        seen[nseen++] = p;
        const char *got = ps_curve_server_key(c, p);
        if (!got || strcmp(got, key) || ps_curve_check_endpoint(c, p, NULL)) abort();
    }
    free(seen);
    free(buf);
    const char *got = ps_curve_server_key(c, UNNAMED);
    ps_err err = {0, ""};
    int rc = ps_curve_check_endpoint(c, UNNAMED, &err);
    if (any[0] ? !got || strcmp(got, any) || rc
               : got || rc != PS_EINVAL || !strstr(err.msg, UNNAMED))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *part[NFILES] = {data, NULL, NULL}, *end = data + size;
    size_t len[NFILES] = {0, 0, 0};
    ps_log_level = PS_LOG_OFF;
    for (int i = 0; i < NFILES; i++) {
        if (!part[i]) break;
        const uint8_t *ff = i + 1 < NFILES ? memchr(part[i], 0xFF, (size_t)(end - part[i])) : NULL;
        len[i] = (size_t)((ff ? ff : end) - part[i]);
        if (ff) part[i + 1] = ff + 1;
    }
    if (len[0])
        fill(0, part[0], len[0]);
    else
        fill(0, KEYS, strlen(KEYS));
    for (int i = 1; i < NFILES; i++)
        if (len[i]) fill(i, part[i], len[i]);

    ps_err err = {0, ""};
    ps_curve_t *c =
        ps_curve_load(paths[0], len[1] ? paths[1] : NULL, len[2] ? paths[2] : NULL, &err);
    if (!c) {
        if (err.code >= 0 || !err.msg[0]) abort();
        if (err.code != PS_ENOMEM && strncmp(err.msg, "/proc/self/fd/", 14)) abort();
        return 0;
    }
    if (err.code) abort();
    const char *pub = ps_curve_public(c), *sec = ps_curve_secret(c);
    char derived[PS_CURVE_Z85_LEN + 1];
    if (!ps_curve_z85_valid(pub, strlen(pub)) || !ps_curve_z85_valid(sec, strlen(sec)) ||
        zmq_curve_public(derived, sec) || strcmp(derived, pub))
        abort();
    if (len[2]) {
        check_known(c, (const char *)part[2], len[2]);
    } else if (ps_curve_server_key(c, UNNAMED) || !ps_curve_check_endpoint(c, UNNAMED, NULL)) {
        abort();
    }
    ps_curve_free(c);
    return 0;
}
