/*
 * fuzz_config.c — fuzz target for a daemon's configuration (runtime/config.c: the `key = value`
 * file, PERSRV_* environment variables and flags) and the settings the broker parses further
 * (broker/parse.c: the topologies of --shards, --profile-replicas and --profile-primary, the
 * --http address).
 *
 * Input: three parts separated by 0xFF bytes (which UTF-8 text never holds): the config file,
 * the environment ("NAME=value" entries separated by NUL) and the arguments (separated by NUL;
 * argv[0] is added). The file is an anonymous memory file; every path the input names for it
 * (--config X, --config=X, PERSRV_CONFIG=X) is replaced by that file's, so no other file is
 * read, and PERSRV_CONFIG names it when the file part is not empty and nothing else does.
 *
 * Any input must give 0, 1 (--help), 2 (--version) or a negative PS_E* code with a message, never a
 * crash or a leak. A configuration that parses has every required setting, every number within its
 * range, and renders --help and its log line. A topology that parses, joined again with ',' and
 * '|', gives the string it came from; an address that splits gives a host that fits.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create */
#endif
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "broker.h"
#include "ps/config.h"
#include "ps/log.h"

#define MAX_STRINGS 64

/* The kinds of setting every daemon has: a broker-like table. */
static const ps_cfg_opt opts[] = {
    {"shards", PS_CFG_STRING, NULL, "topology", PS_CFG_REQUIRED, 0, 0},
    {"profile-replicas", PS_CFG_STRING, NULL, "profile replicas", 0, 0, 0},
    {"profile-primary", PS_CFG_STRING, NULL, "profile primary", 0, 0, 0},
    {"http", PS_CFG_STRING, "127.0.0.1:8080", "listen address", 0, 0, 0},
    {"lanes", PS_CFG_UINT, "4", "lanes", 0, 1, 64},
    {"max-frame", PS_CFG_UINT, "4194304", "frame cap", 0, 64, 1u << 30},
    {"snapshot-version", PS_CFG_UINT, "0", "version", 0, 0, 9223372036854775807.0},
    {"offset", PS_CFG_INT, "-3", "a signed number", 0, -1000000, 1000000},
    {"alpha", PS_CFG_DOUBLE, "0.3", "a real number", 0, 0, 10},
    {"ratio", PS_CFG_DOUBLE, NULL, "an unbounded real", 0, 0, 0},
    {"sync", PS_CFG_BOOL, "true", "a switch", 0, 0, 0},
    {"admin-token", PS_CFG_STRING, NULL, "a secret", 0, 0, 0},
    {"log-level", PS_CFG_STRING, "info", "log level", 0, 0, 0},
};
#define NOPTS (sizeof opts / sizeof opts[0])

static FILE *sink; /* /dev/null: --help and the log line go there */

/* Split data[0..n) at byte `sep` into at most cap NUL-terminated copies. */
static size_t split(const uint8_t *data, size_t n, uint8_t sep, char **out, size_t cap)
{
    size_t k = 0, i = 0;
    while (i <= n && k < cap) {
        size_t j = i;
        while (j < n && data[j] != sep) j++;
        if (!(out[k] = strndup((const char *)data + i, j - i))) abort();
        k++;
        i = j + 1;
    }
    return k;
}

static char *concat(const char *a, const char *b)
{
    char *s = malloc(strlen(a) + strlen(b) + 1);
    if (!s) abort();
    strcpy(s, a);
    strcat(s, b);
    return s;
}

/* Parse a topology and check it joins back into the same string. */
static void fuzz_topology(const char *s)
{
    broker_topology t;
    ps_err err = {0, ""};
    int rc = broker_topology_parse(s, &t, &err);
    if (rc) {
        if (rc > 0 || err.code != rc || !err.msg[0] || t.buf || t.endpoint) abort();
        return;
    }
    size_t n = strlen(s), at = 0;
    if (t.nshards < 1 || t.nshards > BROKER_MAX_SHARDS || t.first[0] != 0 ||
        t.first[t.nshards] != t.nendpoints)
        abort();
    for (uint32_t sh = 0; sh < t.nshards; sh++) {
        uint32_t nr = t.first[sh + 1] - t.first[sh];
        if (nr < 1 || nr > BROKER_MAX_REPLICAS) abort();
        if (sh && s[at++] != ',') abort();
        for (uint32_t i = 0; i < nr; i++) {
            const char *ep = t.endpoint[t.first[sh] + i];
            size_t el = strlen(ep);
            if (el < 1 || el >= BROKER_MAX_ENDPOINT || strpbrk(ep, ",|")) abort();
            if (i && s[at++] != '|') abort();
            if (at + el > n || memcmp(s + at, ep, el)) abort();
            at += el;
        }
    }
    if (at != n) abort();
    broker_topology_free(&t);
}

static void fuzz_addr(const char *s)
{
    char host[128];
    uint16_t port;
    if (broker_parse_addr(s, host, sizeof host, &port)) return;
    size_t hl = strnlen(host, sizeof host);
    if (hl == 0 || hl >= sizeof host || !strstr(s, host)) abort();
}

static void check_config(const ps_cfg_t *c)
{
    for (size_t i = 0; i < NOPTS; i++) {
        const ps_cfg_opt *o = &opts[i];
        const char *src = ps_cfg_source(c, o->name);
        int set = strcmp(src, "unset") != 0;
        if ((o->flags & PS_CFG_REQUIRED) && !set) abort();
        double v = 0;
        switch (o->type) {
        case PS_CFG_STRING:
            if (set != (ps_cfg_str(c, o->name) != NULL)) abort();
            continue;
        case PS_CFG_INT:
            v = (double)ps_cfg_int(c, o->name);
            break;
        case PS_CFG_UINT:
            v = (double)ps_cfg_uint(c, o->name);
            break;
        case PS_CFG_DOUBLE:
            v = ps_cfg_double(c, o->name);
            if (!isfinite(v)) abort();
            break;
        case PS_CFG_BOOL:
            v = ps_cfg_bool(c, o->name);
            if (v != 0 && v != 1) abort();
            continue;
        }
        if (set && (o->min != 0 || o->max != 0) && (v < o->min || v > o->max)) abort();
    }
    ps_cfg_help(c, sink);
    FILE *err = stderr; /* the log line to the sink; sanitizer reports do not use stdio */
    stderr = sink;
    ps_cfg_log(c, "fuzz");
    stderr = err;
    const char *topo[] = {"shards", "profile-replicas", "profile-primary"};
    for (size_t i = 0; i < 3; i++)
        if (ps_cfg_str(c, topo[i])) fuzz_topology(ps_cfg_str(c, topo[i]));
    fuzz_addr(ps_cfg_str(c, "http"));
    ps_log_parse_level(ps_cfg_str(c, "log-level"));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!sink && !(sink = fopen("/dev/null", "w"))) abort();
    const uint8_t *end = data + size, *ff1 = memchr(data, 0xFF, size);
    const uint8_t *envp = ff1 ? ff1 + 1 : end;
    const uint8_t *ff2 = ff1 ? memchr(envp, 0xFF, (size_t)(end - envp)) : NULL;
    const uint8_t *argp = ff2 ? ff2 + 1 : end;
    size_t flen = (size_t)((ff1 ? ff1 : end) - data), elen = (size_t)((ff2 ? ff2 : end) - envp),
           alen = (size_t)(end - argp);

    int fd = memfd_create("fuzz_config", MFD_CLOEXEC);
    if (fd < 0 || (flen && write(fd, data, flen) != (ssize_t)flen)) abort();
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);

    char *env[MAX_STRINGS + 2], *argv[MAX_STRINGS + 2];
    size_t nenv = elen ? split(envp, elen, 0, env, MAX_STRINGS) : 0, argc = 1;
    int named = 0;
    for (size_t i = 0; i < nenv; i++)
        if (!strncmp(env[i], "PERSRV_CONFIG=", 14)) {
            free(env[i]);
            env[i] = concat("PERSRV_CONFIG=", path);
            named = 1;
        }
    if (!(argv[0] = strdup("fuzz"))) abort();
    if (alen) argc += split(argp, alen, 0, argv + 1, MAX_STRINGS);
    for (size_t a = 1; a < argc; a++) {
        if (!strncmp(argv[a], "--config=", 9)) {
            free(argv[a]);
            argv[a] = concat("--config=", path);
            named = 1;
        } else if (!strcmp(argv[a], "--config") && a + 1 < argc) {
            free(argv[++a]);
            if (!(argv[a] = strdup(path))) abort();
            named = 1;
        }
    }
    if (flen && !named) env[nenv++] = concat("PERSRV_CONFIG=", path);
    env[nenv] = NULL;
    argv[argc] = NULL;

    ps_err err = {0, ""};
    ps_cfg_t *c = ps_cfg_new("fuzz", "a table like the broker's", opts, NOPTS, &err);
    if (!c) abort();
    int rc = ps_cfg_parse(c, (int)argc, argv, env, &err);
    if (rc > PS_CFG_VERSION || (rc < 0 && (err.code != rc || !err.msg[0]))) abort();
    if (rc == 0) check_config(c);
    ps_cfg_free(c);

    for (size_t i = 0; i < nenv; i++) free(env[i]);
    for (size_t i = 0; i < argc; i++) free(argv[i]);
    close(fd);
    return 0;
}
