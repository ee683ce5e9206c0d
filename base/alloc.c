/*
 * alloc.c — the allocator table of alloc.h.
 */
#include "ps/alloc.h"

#include <stdlib.h>
#include <string.h>

ps_allocfuncs ps_allocators = {malloc, calloc, realloc, strdup, free};

ps_allocfuncs ps_set_allocators(const ps_allocfuncs *fns)
{
    ps_allocfuncs old = ps_allocators;
    ps_allocators = *fns;
    return old;
}

void ps_reset_allocators(void)
{
    ps_allocators = (ps_allocfuncs){malloc, calloc, realloc, strdup, free};
}
