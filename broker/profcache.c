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
 * Entries are found through a byte-keyed ps_map: user name -> entry pointer.
 */
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "ps/log.h"
#include "ps/map.h"
#include "ps/wire.h"

typedef struct entry {
    ps_profile prof;  /* k == 0: unknown user */
    double fetched;   /* broker_now() when read from the service */
    uint64_t min_seq; /* a read must have applied at least this sequence (after a click) */
} entry;

struct broker_profcache {
    ps_profiles_t *db;       /* a profiles directory, or NULL */
    broker_pool_t *replicas; /* the profile service's readers (borrowed), or NULL */
    broker_pool_t *primary;  /* its primary, for reads a replica has not caught up with */
    double staleness;        /* seconds an entry from the service is used */
    ps_map users;            /* user name -> entry * (owned) */
    size_t max;
};

broker_profcache_t *broker_profcache_new(const char *dir, size_t max_entries, ps_err *err)
{
    broker_profcache_t *c = calloc(1, sizeof *c);
    if (!c) goto oom;
    c->max = max_entries ? max_entries : 1;
    ps_map_init(&c->users, PS_MAP_BYTES);
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
    ps_map_entry me;
    for (size_t pos = 0; ps_map_next(&c->users, &pos, &me);) {
        entry *e = (entry *)(uintptr_t)*me.val;
        ps_profile_clear(&e->prof);
        free(e);
    }
    ps_map_clear(&c->users);
}

void broker_profcache_free(broker_profcache_t *c)
{
    if (!c) return;
    clear(c);
    ps_map_free(&c->users);
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

static entry *lookup(broker_profcache_t *c, const char *user, size_t len)
{
    const uint64_t *v = ps_map_bytes_get(&c->users, user, len);
    return v ? (entry *)(uintptr_t)*v : NULL;
}

/* A new, zeroed entry for user (not cached yet); the cache is emptied first when full. */
static entry *insert(broker_profcache_t *c, const char *user, size_t len)
{
    if (c->users.n >= c->max) clear(c);
    entry *e = calloc(1, sizeof *e);
    if (!e || ps_map_bytes_put(&c->users, user, len, (uintptr_t)e)) {
        ps_log(PS_LOG_ERROR, "broker", "out_of_memory", "where=profile_cache");
        abort();
    }
    return e;
}

/* A profile read: whose, and for which request. */
typedef struct profile_args {
    char *user;
    const char *trace; /* NULL: none */
} profile_args;

static int encode_get_profile(void *arg, uint64_t request_id, uint32_t deadline_ms, uint8_t **buf,
                              size_t *len, ps_err *err)
{
    const profile_args *a = arg;
    Persrv__ProfileRequest q = PERSRV__PROFILE_REQUEST__INIT;
    q.user = a->user;
    Persrv__Envelope e = PERSRV__ENVELOPE__INIT;
    if (a->trace && a->trace[0]) e.trace_id = (char *)a->trace;
    e.version = PS_WIRE_VERSION;
    e.request_id = request_id;
    e.deadline_ms = deadline_ms;
    e.body_case = PERSRV__ENVELOPE__BODY_GET_PROFILE;
    e.get_profile = &q;
    return ps_wire_pack(&e, buf, len, err);
}

/* get_profile from `pool` (one shard of replicas). 1 with *prof filled (k = 0 for a user without
 * a profile) and *seq the answering node's applied sequence, 0 when no node answered. */
static int fetch(broker_pool_t *pool, char *user, const char *trace, ps_profile *prof,
                 uint64_t *seq)
{
    profile_args a = {user, trace};
    broker_call call = {.shard = 0,
                        .replica = -1,
                        .expect = PERSRV__ENVELOPE__BODY_PROFILE_REPLY,
                        .encode = encode_get_profile,
                        .arg = &a};
    ps_err err = {0, ""};
    memset(prof, 0, sizeof *prof);
    if (broker_pool_run(pool, &call, 1, &err) || !call.reply) {
        ps_log(PS_LOG_WARN, "broker", "profile_unavailable", "trace=%s reason=\"%.200s\"",
               trace && trace[0] ? trace : "-", call.reason[0] ? call.reason : err.msg);
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
    entry *e = lookup(c, user, len);
    if (e) {
        e->fetched = -1e300; /* stale: read again */
        if (seq > e->min_seq) e->min_seq = seq;
    } else if (c->replicas) {
        /* Remember the floor even without an entry yet. */
        e = insert(c, user, len);
        e->fetched = -1e300;
        e->min_seq = seq;
    }
}

/* The service path: the cached entry while fresh, else a read (from a replica that has
 * applied min_seq, else the primary); a failed read keeps the stale entry. */
static const ps_profile *get_remote(broker_profcache_t *c, const char *user, size_t len,
                                    const char *trace)
{
    entry *e = lookup(c, user, len);
    double now = broker_now();
    if (e && now - e->fetched <= c->staleness) return e->prof.k ? &e->prof : NULL;
    ps_profile prof;
    uint64_t seq = 0, min_seq = e ? e->min_seq : 0;
    int got = fetch(c->replicas, (char *)user, trace, &prof, &seq);
    if (got && seq < min_seq) { /* this replica has not applied the user's last click */
        ps_profile_clear(&prof);
        got = c->primary ? fetch(c->primary, (char *)user, trace, &prof, &seq) : 0;
        if (got && seq < min_seq) {
            ps_profile_clear(&prof);
            got = 0;
        }
    }
    if (!got) return e && e->prof.k ? &e->prof : NULL; /* stale, or none */
    if (!e) e = insert(c, user, len);
    ps_profile_clear(&e->prof);
    e->prof = prof;
    e->fetched = now;
    return e->prof.k ? &e->prof : NULL;
}

const ps_profile *broker_profcache_get(broker_profcache_t *c, const char *user)
{
    return broker_profcache_get_traced(c, user, NULL);
}

const ps_profile *broker_profcache_get_traced(broker_profcache_t *c, const char *user,
                                              const char *trace)
{
    size_t len = strlen(user);
    if (c->replicas) return get_remote(c, user, len, trace);
    const entry *hit = lookup(c, user, len);
    if (hit) return hit->prof.k ? &hit->prof : NULL;

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
    entry *e = insert(c, user, len);
    e->prof = prof;
    return e->prof.k ? &e->prof : NULL;
}
