/*
 * profcache.c — user style profiles for the broker, cached in memory, from one of two sources:
 *   - a profiles directory (`builder build --shards N` writes DIR/profiles), read-only while
 *     the broker runs, so an entry never goes stale;
 *   - the replicated profile service (`profile` daemons): get_profile from a replica (pool.c:
 *     deadline, failover between replicas). An entry older than the staleness bound is fetched
 *     again; when no replica answers, the stale entry is used (logged) rather than none. After
 *     a click this lane forwarded, the user's entry is dropped and the next read must come from
 *     a node that has applied the click (profile_reply.seq >= the click's seq): a replica that
 *     lags is skipped for the primary, so the next search from this lane reflects the click.
 * Unknown users are cached too (as "no profile"), so a flood of made-up names costs one lookup
 * each until the cache is full, and then the cache is emptied: memory stays bounded by
 * max_entries.
 *
 * A chained hash table keyed by ps_hash_bytes of the user name.
 */
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "ps/hash.h"
#include "ps/log.h"
#include "ps/wire.h"

typedef struct entry {
    struct entry *next;
    uint64_t hash;
    ps_profile prof;  /* k == 0: unknown user */
    double fetched;   /* broker_now() when read from the service */
    uint64_t min_seq; /* a read must have applied at least this sequence (after a click) */
    char user[];
} entry;

struct broker_profcache {
    ps_profiles_t *db;       /* a profiles directory, or NULL */
    broker_pool_t *replicas; /* the profile service's readers (borrowed), or NULL */
    broker_pool_t *primary;  /* its primary, for reads a replica has not caught up with */
    double staleness;        /* seconds an entry from the service is used */
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

void broker_profcache_use_service(broker_profcache_t *c, broker_pool_t *replicas,
                                  broker_pool_t *primary, uint32_t staleness_ms)
{
    c->replicas = replicas;
    c->primary = primary;
    c->staleness = staleness_ms / 1e3;
}

static entry *lookup(broker_profcache_t *c, const char *user, uint64_t h, entry ***link)
{
    entry **pp = &c->buckets[h & (c->nbuckets - 1)];
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->hash == h && !strcmp((*pp)->user, user)) break;
    if (link) *link = pp;
    return *pp;
}

static int encode_get_profile(void *arg, uint64_t request_id, uint32_t deadline_ms, uint8_t **buf,
                              size_t *len, ps_err *err)
{
    Persrv__ProfileRequest q = PERSRV__PROFILE_REQUEST__INIT;
    q.user = (char *)arg;
    Persrv__Envelope e = PERSRV__ENVELOPE__INIT;
    e.version = PS_WIRE_VERSION;
    e.request_id = request_id;
    e.deadline_ms = deadline_ms;
    e.body_case = PERSRV__ENVELOPE__BODY_GET_PROFILE;
    e.get_profile = &q;
    return ps_wire_pack(&e, buf, len, err);
}

/* get_profile from `pool` (one shard of replicas). 1 with *prof filled (k = 0 for a user without
 * a profile) and *seq the answering node's applied sequence, 0 when no node answered. */
static int fetch(broker_pool_t *pool, char *user, ps_profile *prof, uint64_t *seq)
{
    broker_call call = {.shard = 0,
                        .replica = -1,
                        .expect = PERSRV__ENVELOPE__BODY_PROFILE_REPLY,
                        .encode = encode_get_profile,
                        .arg = user};
    ps_err err = {0, ""};
    memset(prof, 0, sizeof *prof);
    if (broker_pool_run(pool, &call, 1, &err) || !call.reply) {
        ps_log(PS_LOG_WARN, "broker", "profile_unavailable", "reason=\"%.200s\"",
               call.reason[0] ? call.reason : err.msg);
        return 0;
    }
    const Persrv__ProfileReply *r = call.reply->profile_reply;
    *seq = r->seq;
    int ok = 1;
    if (r->found && r->n_centroids) {
        size_t dim = r->centroids[0]->n_vector;
        if (!(prof->centroids = malloc(r->n_centroids * dim * sizeof(float)))) {
            ps_log(PS_LOG_ERROR, "broker", "out_of_memory", "where=profile");
            abort();
        }
        prof->k = (uint32_t)r->n_centroids;
        prof->dim = (uint32_t)dim;
        for (size_t i = 0; i < r->n_centroids; i++) {
            memcpy(prof->centroids + i * dim, r->centroids[i]->vector, dim * sizeof(float));
            prof->radius[i] = r->centroids[i]->radius;
        }
    }
    ps_wire_free(call.reply);
    return ok;
}

void broker_profcache_clicked(broker_profcache_t *c, const char *user, uint64_t seq)
{
    size_t len = strlen(user);
    uint64_t h = ps_hash_bytes(user, len);
    entry *e = lookup(c, user, h, NULL);
    if (e) {
        e->fetched = -1e300; /* stale: read again */
        if (seq > e->min_seq) e->min_seq = seq;
    } else if (c->replicas) {
        /* Remember the floor even without an entry yet. */
        if (c->n >= c->max) clear(c);
        if (!(e = calloc(1, sizeof *e + len + 1))) {
            ps_log(PS_LOG_ERROR, "broker", "out_of_memory", "where=profile_cache");
            abort();
        }
        e->hash = h;
        e->fetched = -1e300;
        e->min_seq = seq;
        memcpy(e->user, user, len + 1);
        entry **head = &c->buckets[h & (c->nbuckets - 1)];
        e->next = *head;
        *head = e;
        c->n++;
    }
}

/* The service path: the cached entry while fresh, else a read (from a replica that has
 * applied min_seq, else the primary); a failed read keeps the stale entry. */
static const ps_profile *get_remote(broker_profcache_t *c, const char *user, size_t len, uint64_t h)
{
    entry **link;
    entry *e = lookup(c, user, h, &link);
    double now = broker_now();
    if (e && now - e->fetched <= c->staleness) return e->prof.k ? &e->prof : NULL;
    ps_profile prof;
    uint64_t seq = 0, min_seq = e ? e->min_seq : 0;
    int got = fetch(c->replicas, (char *)user, &prof, &seq);
    if (got && seq < min_seq) { /* this replica has not applied the user's last click */
        ps_profile_clear(&prof);
        got = c->primary ? fetch(c->primary, (char *)user, &prof, &seq) : 0;
        if (got && seq < min_seq) {
            ps_profile_clear(&prof);
            got = 0;
        }
    }
    if (!got) return e && e->prof.k ? &e->prof : NULL; /* stale, or none */
    if (!e) {
        if (c->n >= c->max) clear(c);
        if (!(e = calloc(1, sizeof *e + len + 1))) {
            ps_log(PS_LOG_ERROR, "broker", "out_of_memory", "where=profile_cache");
            abort();
        }
        e->hash = h;
        memcpy(e->user, user, len + 1);
        entry **head = &c->buckets[h & (c->nbuckets - 1)];
        e->next = *head;
        *head = e;
        c->n++;
    }
    ps_profile_clear(&e->prof);
    e->prof = prof;
    e->fetched = now;
    (void)link;
    return e->prof.k ? &e->prof : NULL;
}

const ps_profile *broker_profcache_get(broker_profcache_t *c, const char *user)
{
    size_t len = strlen(user);
    uint64_t h = ps_hash_bytes(user, len);
    if (c->replicas) return get_remote(c, user, len, h);
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
    entry *e = calloc(1, sizeof *e + len + 1);
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
