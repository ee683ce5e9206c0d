/*
 * map.c — the hash map of ps/map.h: growth, adds, backward-shift removal, compaction of the
 * byte keys and iteration. Lookups are inline in the header.
 */
#include "ps/map.h"
#include "ps/alloc.h"
#include "ps/err.h"

#define MIN_SLOTS 16

void ps_map_init(ps_map *m, int kind)
{
    *m = (ps_map)PS_MAP_INIT(kind);
}

void ps_map_free(ps_map *m)
{
    int kind = m->kind;
    ps_free(m->slot);
    ps_buf_free(&m->keys);
    ps_map_init(m, kind);
}

void ps_map_clear(ps_map *m)
{
    if (m->slot) memset(m->slot, 0, (m->mask + 1) * sizeof *m->slot);
    m->n = 0;
    m->has_zero = 0;
    m->zero_val = 0;
    ps_buf_reset(&m->keys);
    m->keys.rc = 0;
    m->dead = 0;
}

/* The home slot of a full slot's key. */
static size_t home(const ps_map *m, uint64_t skey, size_t mask)
{
    if (m->kind == PS_MAP_U64) return (size_t)ps_hash_u64(skey) & mask;
    const char *rec = m->keys.p + (uint32_t)skey;
    uint32_t len;
    memcpy(&len, rec, 4);
    return (size_t)ps_hash_bytes(rec + 4, len) & mask;
}

/* Move every slot into a table of nslots (a power of two). */
static int rehash(ps_map *m, size_t nslots)
{
    ps_map_slot *slot = ps_calloc(nslots, sizeof *slot);
    if (!slot) return PS_ENOMEM;
    for (size_t i = 0; m->slot && i <= m->mask; i++) {
        if (!m->slot[i].key) continue;
        size_t j = home(m, m->slot[i].key, nslots - 1);
        while (slot[j].key) j = (j + 1) & (nslots - 1);
        slot[j] = m->slot[i];
    }
    ps_free(m->slot);
    m->slot = slot;
    m->mask = nslots - 1;
    return 0;
}

int ps_map_reserve(ps_map *m, size_t n)
{
    size_t nslots = MIN_SLOTS;
    while (nslots / 2 < n) {
        if (nslots > SIZE_MAX / 2 / sizeof(ps_map_slot)) return PS_ETOOBIG;
        nslots *= 2;
    }
    if (m->slot && nslots <= m->mask + 1) return 0;
    return rehash(m, nslots);
}

/* Room for one more key in the slots. */
static int room_for_one(ps_map *m)
{
    if (m->slot && (m->n + 1) * 2 <= m->mask + 1) return 0;
    return ps_map_reserve(m, m->n + 1);
}

/* Remove slot i and shift later members of its run back so every key stays reachable from
 * its home slot. */
static void remove_slot(ps_map *m, size_t i)
{
    size_t j = i;
    for (;;) {
        m->slot[i].key = 0;
        for (;;) {
            j = (j + 1) & m->mask;
            if (!m->slot[j].key) return;
            size_t h = home(m, m->slot[j].key, m->mask);
            /* slot[j] may fill the hole at i unless its home lies cyclically in (i, j] */
            if (i <= j ? (i < h && h <= j) : (i < h || h <= j)) continue;
            break;
        }
        m->slot[i] = m->slot[j];
        i = j;
    }
}

/* ---- u64 keys ---- */

int ps_map_u64_add(ps_map *m, uint64_t key, uint64_t **val)
{
    uint64_t *v = ps_map_u64_get(m, key);
    if (v) {
        if (val) *val = v;
        return 0;
    }
    if (key == 0) {
        m->has_zero = 1;
        m->zero_val = 0;
        m->n++;
        if (val) *val = &m->zero_val;
        return 1;
    }
    if (room_for_one(m)) return PS_ENOMEM;
    size_t i = (size_t)ps_hash_u64(key) & m->mask;
    while (m->slot[i].key) i = (i + 1) & m->mask;
    m->slot[i].key = key;
    m->slot[i].val = 0;
    m->n++;
    if (val) *val = &m->slot[i].val;
    return 1;
}

int ps_map_u64_put(ps_map *m, uint64_t key, uint64_t val)
{
    uint64_t *v;
    int rc = ps_map_u64_add(m, key, &v);
    if (rc < 0) return rc;
    *v = val;
    return 0;
}

int ps_map_u64_remove(ps_map *m, uint64_t key)
{
    if (key == 0) {
        if (!m->has_zero) return 0;
        m->has_zero = 0;
        m->n--;
        return 1;
    }
    uint64_t *v = ps_map_u64_get(m, key);
    if (!v) return 0;
    remove_slot(
        m, (size_t)((ps_map_slot *)(void *)((char *)v - offsetof(ps_map_slot, val)) - m->slot));
    m->n--;
    return 1;
}

/* ---- byte-string keys ---- */

#define REC_BYTES(len) (4 + (size_t)(len) + 1)

/* Copy the live key records into a fresh buffer, rewriting the offsets in the slots. */
static int compact(ps_map *m)
{
    ps_buf keys = PS_BUF_INIT;
    if (ps_buf_reserve(&keys, m->keys.n - m->dead)) return keys.rc;
    for (size_t i = 0; i <= m->mask; i++) {
        uint64_t s = m->slot[i].key;
        if (!s) continue;
        const char *rec = m->keys.p + (uint32_t)s;
        uint32_t len;
        memcpy(&len, rec, 4);
        m->slot[i].key = (s & 0xffffffff00000000u) | (uint32_t)keys.n;
        ps_buf_add(&keys, rec, REC_BYTES(len)); /* reserved: cannot fail */
    }
    ps_buf_free(&m->keys);
    m->keys = keys;
    m->dead = 0;
    return 0;
}

int ps_map_bytes_add(ps_map *m, const void *k, size_t n, uint64_t **val)
{
    uint64_t *v = ps_map_bytes_get(m, k, n);
    if (v) {
        if (val) *val = v;
        return 0;
    }
    if (m->dead > 4096 && m->dead > m->keys.n / 2 && compact(m)) return PS_ENOMEM;
    if (n > UINT32_MAX - 5 || (uint64_t)m->keys.n + REC_BYTES(n) > (uint64_t)UINT32_MAX + 1)
        return PS_ETOOBIG;
    if (room_for_one(m)) return PS_ENOMEM;
    m->keys.rc = 0; /* the key buffer's only error is ours to report, below */
    if (ps_buf_reserve(&m->keys, REC_BYTES(n))) {
        m->keys.rc = 0;
        return PS_ENOMEM;
    }
    uint64_t h = ps_hash_bytes(k, n);
    uint32_t len = (uint32_t)n, off = (uint32_t)m->keys.n;
    ps_buf_add(&m->keys, &len, 4);
    ps_buf_add(&m->keys, k, n);
    ps_buf_byte(&m->keys, '\0');
    size_t i = (size_t)h & m->mask;
    while (m->slot[i].key) i = (i + 1) & m->mask;
    m->slot[i].key = (uint64_t)ps__map_tag(h) << 32 | off;
    m->slot[i].val = 0;
    m->n++;
    if (val) *val = &m->slot[i].val;
    return 1;
}

int ps_map_bytes_put(ps_map *m, const void *k, size_t n, uint64_t val)
{
    uint64_t *v;
    int rc = ps_map_bytes_add(m, k, n, &v);
    if (rc < 0) return rc;
    *v = val;
    return 0;
}

int ps_map_bytes_remove(ps_map *m, const void *k, size_t n)
{
    uint64_t *v = ps_map_bytes_get(m, k, n);
    if (!v) return 0;
    size_t i = (size_t)((ps_map_slot *)(void *)((char *)v - offsetof(ps_map_slot, val)) - m->slot);
    m->dead += REC_BYTES(n);
    remove_slot(m, i);
    m->n--;
    if (!m->n) { /* nothing live: start the key records over */
        ps_buf_reset(&m->keys);
        m->dead = 0;
    }
    return 1;
}

const char *ps_map_bytes_key(const ps_map *m, const uint64_t *val, size_t *len, uint32_t *off)
{
    const ps_map_slot *s =
        (const ps_map_slot *)(const void *)((const char *)val - offsetof(ps_map_slot, val));
    uint32_t o = (uint32_t)s->key, l;
    memcpy(&l, m->keys.p + o, 4);
    if (len) *len = l;
    if (off) *off = o + 4;
    return m->keys.p + o + 4;
}

/* ---- iteration ---- */

int ps_map_next(const ps_map *m, size_t *pos, ps_map_entry *e)
{
    if (*pos == 0) {
        *pos = 1;
        if (m->has_zero) {
            *e = (ps_map_entry){0, NULL, 0, (uint64_t *)&m->zero_val};
            return 1;
        }
    }
    for (; m->slot && *pos - 1 <= m->mask; (*pos)++) {
        ps_map_slot *s = &m->slot[*pos - 1];
        if (!s->key) continue;
        (*pos)++;
        if (m->kind == PS_MAP_U64) {
            *e = (ps_map_entry){s->key, NULL, 0, &s->val};
        } else {
            e->key = 0;
            e->val = &s->val;
            e->kptr = ps_map_bytes_key(m, &s->val, &e->klen, NULL);
        }
        return 1;
    }
    return 0;
}
