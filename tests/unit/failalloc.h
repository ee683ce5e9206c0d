/*
 * failalloc.h — for unit tests of base/ (test_buf, test_map): an allocator (ps/alloc.h) that
 * fails from call number `fail_at` on and counts the blocks it handed out and got back.
 * failing_from(n) installs it; teardown() puts libc's back. test_alloc_fail.c has the full
 * one (every call site, leaks by site).
 */
#ifndef PS_TEST_FAILALLOC_H
#define PS_TEST_FAILALLOC_H

#include <stdlib.h>
#include <string.h>

#include "ps/alloc.h"

static long calls, fail_at = -1, live;

static int fails(void)
{
    return fail_at >= 0 && calls++ >= fail_at;
}

static void *t_malloc(size_t n)
{
    if (fails()) return NULL;
    void *p = malloc(n);
    if (p) live++;
    return p;
}

static void *t_calloc(size_t n, size_t s)
{
    if (fails()) return NULL;
    void *p = calloc(n, s);
    if (p) live++;
    return p;
}

static void *t_realloc(void *p, size_t n)
{
    if (fails()) return NULL;
    void *q = realloc(p, n);
    if (q && !p) live++;
    return q;
}

static char *t_strdup(const char *s)
{
    if (fails()) return NULL;
    char *p = strdup(s);
    if (p) live++;
    return p;
}

static void t_free(void *p)
{
    if (p) live--;
    free(p);
}

static void failing_from(long n)
{
    static const ps_allocfuncs f = {t_malloc, t_calloc, t_realloc, t_strdup, t_free};
    calls = 0;
    fail_at = n;
    live = 0;
    ps_set_allocators(&f);
}

static int teardown(void **state)
{
    (void)state;
    ps_reset_allocators();
    fail_at = -1;
    return 0;
}

#endif
