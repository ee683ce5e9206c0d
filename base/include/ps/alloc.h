/*
 * alloc.h — the allocator of the engine and the wire (hiredis alloc.h shape). Every allocation
 * in base/, engine/ and wire/ goes through ps_malloc, ps_calloc, ps_realloc, ps_strdup and
 * ps_free, so a test can swap in an allocator that fails on the Nth call and check that every
 * PS_ENOMEM path returns cleanly with nothing leaked (tests/unit/test_alloc_fail.c).
 *
 * The functions a caller installs must hand out libc heap memory (wrap malloc, fail, count):
 * ps_free also frees what libraries return (jansson, RocksDB, ICU), and callers free with
 * free() what the engine hands them. Install before any other thread uses the engine; the
 * table is read without locking.
 */
#ifndef PS_ALLOC_H
#define PS_ALLOC_H

#include <stddef.h>

typedef struct ps_allocfuncs {
    void *(*malloc_fn)(size_t);
    void *(*calloc_fn)(size_t, size_t);
    void *(*realloc_fn)(void *, size_t);
    char *(*strdup_fn)(const char *);
    void (*free_fn)(void *);
} ps_allocfuncs;

/* Install fns (every member set); returns the table it replaces. */
ps_allocfuncs ps_set_allocators(const ps_allocfuncs *fns);
/* Back to libc's malloc, calloc, realloc, strdup and free. */
void ps_reset_allocators(void);

extern ps_allocfuncs ps_allocators;

static inline void *ps_malloc(size_t n)
{
    return ps_allocators.malloc_fn(n);
}

static inline void *ps_calloc(size_t n, size_t size)
{
    return ps_allocators.calloc_fn(n, size);
}

static inline void *ps_realloc(void *p, size_t n)
{
    return ps_allocators.realloc_fn(p, n);
}

static inline char *ps_strdup(const char *s)
{
    return ps_allocators.strdup_fn(s);
}

static inline void ps_free(void *p)
{
    ps_allocators.free_fn(p);
}

#endif
