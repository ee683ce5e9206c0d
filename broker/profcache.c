/*
 * profcache.c — user style profiles for the broker, read from a profiles directory
 * (`builder build --shards N` writes DIR/profiles) and cached in memory. Profiles are
 * read-only while the broker runs, so an entry never goes stale; unknown users are cached too
 * (as "no profile"), so a flood of made-up names costs one lookup each until the cache is full,
 * and then the cache is emptied: memory stays bounded by max_entries.
 *
 * A chained hash table keyed by ps_hash_bytes of the user name.
 */
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "ps/hash.h"
#include "ps/log.h"

typedef struct entry {
    struct entry *next;
    uint64_t hash;
    ps_profile prof; /* k == 0: unknown user */
    char user[];
} entry;

struct broker_profcache {
    ps_profiles_t *db; /* NULL: no profiles */
    entry **buckets;
    size_t nbuckets, n, max;
};

broker_profcache_t *broker_profcache_new(const char *dir, size_t max_entries, ps_err *err)
{
    broker_profcache_t *c = calloc(1, sizeof *c);
    if (!c) goto oom;
    c->max = max_entries ? max_entries : 1;
    c->nbuckets = 1024;
    while (c->nbuckets < c->max && c->nbuckets < (1u << 20)) c->nbuckets <<= 1;
    if (!(c->buckets = calloc(c->nbuckets, sizeof *c->buckets))) goto oom;
    if (dir && !(c->db = ps_profiles_open(dir, err))) {
        broker_profcache_free(c);
        return NULL;
    }
    return c;
oom:
    broker_profcache_free(c);
    ps_err_set(err, PS_ENOMEM, "out of memory for the profile cache");
    return NULL;
}

static void clear(broker_profcache_t *c)
{
    for (size_t b = 0; b < c->nbuckets; b++) {
        for (entry *e = c->buckets[b], *next; e; e = next) {
            next = e->next;
            ps_profile_clear(&e->prof);
            free(e);
        }
        c->buckets[b] = NULL;
    }
    c->n = 0;
}

void broker_profcache_free(broker_profcache_t *c)
{
    if (!c) return;
    if (c->buckets) clear(c);
    free(c->buckets);
    ps_profiles_close(c->db);
    free(c);
}

const ps_profile *broker_profcache_get(broker_profcache_t *c, const char *user)
{
    size_t len = strlen(user);
    uint64_t h = ps_hash_bytes(user, len);
    entry **head = &c->buckets[h & (c->nbuckets - 1)];
    for (entry *e = *head; e; e = e->next)
        if (e->hash == h && !strcmp(e->user, user)) return e->prof.k ? &e->prof : NULL;

    ps_profile prof = {0};
    if (c->db) {
        ps_err err = {0, ""};
        int rc = ps_profiles_get(c->db, user, &prof, &err);
        if (rc && rc != PS_ENOTFOUND) {
            ps_log(PS_LOG_ERROR, "broker", "profile_failed", "code=%s msg=\"%s\"", ps_errname(rc),
                   err.msg);
            return NULL; /* not cached: the next request tries again */
        }
    }
    if (c->n >= c->max) clear(c);
    entry *e = malloc(sizeof *e + len + 1);
    if (!e) {
        ps_log(PS_LOG_ERROR, "broker", "out_of_memory", "where=profile_cache");
        abort();
    }
    e->hash = h;
    e->prof = prof;
    memcpy(e->user, user, len + 1);
    head = &c->buckets[h & (c->nbuckets - 1)];
    e->next = *head;
    *head = e;
    c->n++;
    return e->prof.k ? &e->prof : NULL;
}
