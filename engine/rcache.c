/*
 * rcache.c — the recall cache (ps/rcache.h): segments of a chained hash table, each with its
 * own mutex, LRU list and byte budget.
 *
 * Key record (built per call, on the stack unless a query is unusually long), native order:
 *   u32 R | u32 use_utility (0/1) | u32 × PS_NFIELDS field weight bits | u32 ntokens |
 *   ntokens × (u32 length | the token's bytes)
 * The version is kept beside the record in the entry, and mixed into the hash.
 *
 * Entry: one allocation — the header, nhits cached hits (40 bytes each: id, relevance,
 * utility, recall, doc), then the key record. Its `bytes` (the allocation's size) is what it
 * costs against the segment's budget. A segment's budget is its share of the capacity less its
 * bucket array, fixed at creation (one bucket per 2 KiB of budget: ~0.5 entries per bucket at
 * R = 100, whose entries take ~4.2 KB).
 *
 * Locking: a lookup takes its segment's lock for the hash probe, the copy-out and the move to
 * the LRU head; an insert allocates and fills the entry before locking and frees what it
 * evicted after unlocking. Counters are plain fields under the same lock.
 */
#include <pthread.h>
#include <string.h>

#include "ps/alloc.h"
#include "ps/hash.h"
#include "ps/rcache.h"

#define SEG_MIN_BYTES  (1u << 20) /* a segment is worth its lock above this much capacity */
#define BYTES_PER_SLOT 2048       /* budget per hash bucket */
#define KEY_STACK      1024       /* key records up to this size stay on the stack */
#define MIN_CAPACITY   4096

typedef struct chit {
    uint64_t id;
    double relevance, utility, recall;
    uint32_t doc;
} chit;

typedef struct entry {
    struct entry *chain;       /* next in the bucket */
    struct entry *prev, *next; /* LRU: prev is more recent */
    uint64_t hash, version;
    size_t bytes;
    uint32_t keylen, nhits;
    chit hits[]; /* nhits, then keylen bytes of key record */
} entry;

typedef struct seg {
    pthread_mutex_t lock;
    entry **bucket;
    size_t mask;
    entry *head, *tail; /* most and least recently used */
    size_t bytes;       /* entries held */
    size_t budget;      /* for entries: the segment's share less its buckets */
    size_t bucket_bytes;
    uint64_t n, hits, misses, inserts, evictions, dropped;
    char pad[64]; /* keep two segments' hot fields off one cache line */
} seg;

struct ps_rcache {
    size_t capacity;
    unsigned nseg; /* a power of two */
    seg segs[PS_RCACHE_MAX_SEGMENTS];
};

static inline const uint8_t *entry_key(const entry *e)
{
    return (const uint8_t *)(e->hits + e->nhits);
}

/* ---- keys ------------------------------------------------------------------------------------ */

static size_t key_size(const ps_tokens *tok)
{
    size_t n = (3 + PS_NFIELDS) * sizeof(uint32_t);
    for (size_t i = 0; i < tok->n; i++) n += sizeof(uint32_t) + tok->len[i];
    return n;
}

static inline uint8_t *put_u32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, sizeof v);
    return p + sizeof v;
}

/* The key record of (tok, o) into buf when it fits in cap, else into a ps_malloc'd block.
 * Returns the record (NULL: out of memory, or too long to describe in 32 bits). */
static uint8_t *key_make(const ps_tokens *tok, const ps_search_opts *o, uint8_t *buf, size_t cap,
                         size_t *len)
{
    size_t n = key_size(tok);
    if (n > UINT32_MAX || tok->n > UINT32_MAX) return NULL;
    uint8_t *k = n <= cap ? buf : ps_malloc(n);
    if (!k) return NULL;
    uint8_t *p = put_u32(k, o->R);
    p = put_u32(p, o->use_utility != 0);
    for (int f = 0; f < PS_NFIELDS; f++) {
        uint32_t bits;
        memcpy(&bits, &o->field_w[f], sizeof bits);
        p = put_u32(p, bits);
    }
    p = put_u32(p, (uint32_t)tok->n);
    for (size_t i = 0; i < tok->n; i++) {
        p = put_u32(p, tok->len[i]);
        memcpy(p, tok->text + tok->off[i], tok->len[i]);
        p += tok->len[i];
    }
    *len = n;
    return k;
}

static inline uint64_t key_hash(const uint8_t *k, size_t len, uint64_t version)
{
    return ps_hash_u64(ps_hash_bytes(k, len) ^ ps_hash_u64(version ^ 0x5bd1e9955bd1e995ull));
}

static inline seg *seg_of(ps_rcache_t *c, uint64_t h)
{
    return &c->segs[(h >> 56) & (c->nseg - 1)];
}

/* ---- one segment (its lock held) ------------------------------------------------------------ */

static entry *find(seg *s, uint64_t h, uint64_t version, const uint8_t *k, size_t klen)
{
    for (entry *e = s->bucket[h & s->mask]; e; e = e->chain)
        if (e->hash == h && e->version == version && e->keylen == klen &&
            memcmp(entry_key(e), k, klen) == 0)
            return e;
    return NULL;
}

static void lru_unlink(seg *s, entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        s->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        s->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_head(seg *s, entry *e)
{
    e->prev = NULL;
    e->next = s->head;
    if (s->head)
        s->head->prev = e;
    else
        s->tail = e;
    s->head = e;
}

/* Take e out of the table and the LRU list; the caller frees it. */
static void remove_entry(seg *s, entry *e)
{
    entry **pp = &s->bucket[e->hash & s->mask];
    while (*pp != e) pp = &(*pp)->chain;
    *pp = e->chain;
    lru_unlink(s, e);
    s->bytes -= e->bytes;
    s->n--;
}

static void free_list(entry *e)
{
    while (e) {
        entry *next = e->chain;
        ps_free(e);
        e = next;
    }
}

/* ---- the cache ------------------------------------------------------------------------------ */

ps_rcache_t *ps_rcache_new(size_t capacity, ps_err *err)
{
    if (capacity < MIN_CAPACITY) {
        ps_err_set(err, PS_EINVAL, "recall cache capacity %zu bytes is below the minimum %d",
                   capacity, MIN_CAPACITY);
        return NULL;
    }
    ps_rcache_t *c = ps_calloc(1, sizeof *c);
    if (!c) goto oom;
    c->capacity = capacity;
    c->nseg = 1;
    while (c->nseg < PS_RCACHE_MAX_SEGMENTS && capacity / (c->nseg * 2) >= SEG_MIN_BYTES)
        c->nseg *= 2;
    size_t share = capacity / c->nseg;
    for (unsigned i = 0; i < c->nseg; i++) {
        seg *s = &c->segs[i];
        size_t nb = 16; /* the largest power of two not above share / BYTES_PER_SLOT, >= 16 */
        while (nb * 2 * BYTES_PER_SLOT <= share) nb *= 2;
        pthread_mutex_init(&s->lock, NULL);
        s->mask = nb - 1;
        s->bucket_bytes = nb * sizeof *s->bucket;
        s->budget = share - s->bucket_bytes;
        if (!(s->bucket = ps_calloc(nb, sizeof *s->bucket))) {
            for (unsigned j = i + 1; j < c->nseg; j++) pthread_mutex_init(&c->segs[j].lock, NULL);
            ps_rcache_free(c);
            goto oom;
        }
    }
    return c;
oom:
    ps_err_set(err, PS_ENOMEM, "out of memory allocating a recall cache of %zu bytes", capacity);
    return NULL;
}

void ps_rcache_free(ps_rcache_t *c)
{
    if (!c) return;
    for (unsigned i = 0; i < c->nseg; i++) {
        seg *s = &c->segs[i];
        entry *e = s->head;
        while (e) {
            entry *next = e->next;
            ps_free(e);
            e = next;
        }
        ps_free(s->bucket);
        pthread_mutex_destroy(&s->lock);
    }
    ps_free(c);
}

int ps_rcache_get(ps_rcache_t *c, uint64_t version, const ps_tokens *tok, const ps_search_opts *o,
                  ps_hit *hits, size_t *nhits)
{
    uint8_t buf[KEY_STACK];
    size_t klen = 0;
    uint8_t *k = key_make(tok, o, buf, sizeof buf, &klen);
    uint64_t h = k ? key_hash(k, klen, version) : 0;
    seg *s = seg_of(c, h);
    int found = 0;
    pthread_mutex_lock(&s->lock);
    entry *e = k ? find(s, h, version, k, klen) : NULL;
    if (e) {
        for (uint32_t i = 0; i < e->nhits; i++) {
            const chit *ch = &e->hits[i];
            hits[i] = (ps_hit){.id = ch->id,
                               .doc = ch->doc,
                               .centroid = -1,
                               .relevance = ch->relevance,
                               .utility = ch->utility,
                               .recall = ch->recall,
                               .preference = 1.0,
                               .score = ch->recall};
        }
        *nhits = e->nhits;
        if (s->head != e) {
            lru_unlink(s, e);
            lru_push_head(s, e);
        }
        s->hits++;
        found = 1;
    } else {
        s->misses++;
    }
    pthread_mutex_unlock(&s->lock);
    if (k && k != buf) ps_free(k);
    return found;
}

void ps_rcache_put(ps_rcache_t *c, uint64_t version, const ps_tokens *tok, const ps_search_opts *o,
                   const ps_hit *hits, size_t n)
{
    uint8_t buf[KEY_STACK];
    size_t klen = 0;
    entry *e = NULL, *victims = NULL;
    uint8_t *k = n <= o->R ? key_make(tok, o, buf, sizeof buf, &klen) : NULL;
    if (!k) return;
    uint64_t h = key_hash(k, klen, version);
    seg *s = seg_of(c, h);
    size_t bytes = sizeof *e + n * sizeof(chit) + klen;
    if (bytes > s->budget || !(e = ps_malloc(bytes))) goto out;
    e->chain = e->prev = e->next = NULL;
    e->hash = h;
    e->version = version;
    e->bytes = bytes;
    e->keylen = (uint32_t)klen;
    e->nhits = (uint32_t)n;
    for (size_t i = 0; i < n; i++)
        e->hits[i] = (chit){.id = hits[i].id,
                            .relevance = hits[i].relevance,
                            .utility = hits[i].utility,
                            .recall = hits[i].recall,
                            .doc = hits[i].doc};
    memcpy((uint8_t *)(e->hits + n), k, klen);

    pthread_mutex_lock(&s->lock);
    if (find(s, h, version, k, klen)) {
        /* another thread stored it meanwhile */
        pthread_mutex_unlock(&s->lock);
        ps_free(e);
        goto out;
    }
    while (s->bytes + bytes > s->budget) {
        entry *v = s->tail;
        remove_entry(s, v);
        v->chain = victims;
        victims = v;
        s->evictions++;
    }
    entry **b = &s->bucket[h & s->mask];
    e->chain = *b;
    *b = e;
    lru_push_head(s, e);
    s->bytes += bytes;
    s->n++;
    s->inserts++;
    pthread_mutex_unlock(&s->lock);
    free_list(victims);
out:
    if (k != buf) ps_free(k);
}

enum { DROP_VERSION, DROP_OTHERS, DROP_ALL };

/* Drop the entries of `version`, of the other versions, or all; returns how many. */
static size_t drop_where(ps_rcache_t *c, uint64_t version, int which)
{
    size_t total = 0;
    for (unsigned i = 0; i < c->nseg; i++) {
        seg *s = &c->segs[i];
        entry *victims = NULL;
        pthread_mutex_lock(&s->lock);
        for (entry *e = s->head, *next; e; e = next) {
            next = e->next;
            if (which != DROP_ALL && (e->version == version) != (which == DROP_VERSION)) continue;
            remove_entry(s, e);
            e->chain = victims;
            victims = e;
            s->dropped++;
            total++;
        }
        pthread_mutex_unlock(&s->lock);
        free_list(victims);
    }
    return total;
}

size_t ps_rcache_drop(ps_rcache_t *c, uint64_t version)
{
    return c ? drop_where(c, version, DROP_VERSION) : 0;
}

size_t ps_rcache_drop_others(ps_rcache_t *c, uint64_t keep)
{
    return c ? drop_where(c, keep, DROP_OTHERS) : 0;
}

void ps_rcache_clear(ps_rcache_t *c)
{
    if (c) drop_where(c, 0, DROP_ALL);
}

void ps_rcache_stats_get(ps_rcache_t *c, ps_rcache_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!c) return;
    out->capacity = c->capacity;
    for (unsigned i = 0; i < c->nseg; i++) {
        seg *s = &c->segs[i];
        pthread_mutex_lock(&s->lock);
        out->hits += s->hits;
        out->misses += s->misses;
        out->inserts += s->inserts;
        out->evictions += s->evictions;
        out->dropped += s->dropped;
        out->entries += s->n;
        out->bytes += s->bytes + s->bucket_bytes;
        pthread_mutex_unlock(&s->lock);
    }
}
