/*
 * map.h — the one hash map: keys are u64 or byte strings, values are u64 (a row number, a
 * count, or a pointer through uintptr_t). Open addressing with linear probing over a power of
 * two of 16-byte slots, at most half full, removal by backward shift (no tombstones), so a
 * lookup is one hash and a short scan of adjacent slots.
 *
 * Slot layout, {key, val}:
 *   u64 map    key = the key itself; 0 marks an empty slot, so key 0 is held beside the
 *              slots (has_zero, zero_val).
 *   bytes map  key = tag << 32 | off: tag is the high 32 bits of ps_hash_bytes (0 made 1, so a
 *              full slot is never 0), off the offset in `keys` of the record
 *              [u32 length, native order][the bytes][NUL]. The tag is checked before the bytes
 *              are touched. Keys are copied in; the map owns them.
 *
 * Pointers: a value pointer (uint64_t *) from get or add stays valid until the next add,
 * remove, clear or free of the map; so does a key pointer from ps_map_bytes_key. Without any
 * remove, a key's offset in `keys` never changes (removals are reclaimed by compacting on a
 * later add). Memory comes from ps_calloc/ps_free (ps/alloc.h). Not thread-safe.
 */
#ifndef PS_MAP_H
#define PS_MAP_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ps/buf.h"
#include "ps/hash.h"

enum { PS_MAP_U64 = 0, PS_MAP_BYTES = 1 };

typedef struct ps_map_slot {
    uint64_t key;
    uint64_t val;
} ps_map_slot;

typedef struct ps_map {
    ps_map_slot *slot; /* mask + 1 slots; NULL until the first add */
    size_t mask;
    size_t n;     /* keys held (key 0 included) */
    int kind;     /* PS_MAP_U64 or PS_MAP_BYTES */
    int has_zero; /* u64 map: key 0 is held, its value in zero_val */
    uint64_t zero_val;
    ps_buf keys; /* bytes map: the key records */
    size_t dead; /* bytes map: bytes of removed records in keys */
} ps_map;

#define PS_MAP_INIT(kind)                                                                          \
    {                                                                                              \
        NULL, 0, 0, (kind), 0, 0, PS_BUF_INIT, 0                                                   \
    }

/* An empty map of `kind` (PS_MAP_U64, PS_MAP_BYTES); allocates nothing. */
void ps_map_init(ps_map *m, int kind);
/* Free what the map holds and leave it empty (same kind); m itself is the caller's. */
void ps_map_free(ps_map *m);
/* Forget every key, keep the slot memory. */
void ps_map_clear(ps_map *m);
/* Room for n keys in all without growing. Returns 0, PS_ENOMEM or PS_ETOOBIG. */
int ps_map_reserve(ps_map *m, size_t n);

/* ---- u64 keys ---- */

/* Pointer to key's value, or NULL when key is not held. */
static inline uint64_t *ps_map_u64_get(const ps_map *m, uint64_t key)
{
    if (key == 0) return m->has_zero ? (uint64_t *)&m->zero_val : NULL;
    if (!m->slot) return NULL;
    for (size_t i = (size_t)ps_hash_u64(key) & m->mask;; i = (i + 1) & m->mask) {
        if (m->slot[i].key == key) return &m->slot[i].val;
        if (m->slot[i].key == 0) return NULL;
    }
}

/* Find key, adding it with value 0 when new. OUT: *val (if val) points to its value.
 * Returns 1 when added, 0 when already held, PS_ENOMEM (map unchanged). */
int ps_map_u64_add(ps_map *m, uint64_t key, uint64_t **val);
/* Set key's value, adding the key when new. Returns 0 or PS_ENOMEM (map unchanged). */
int ps_map_u64_put(ps_map *m, uint64_t key, uint64_t val);
/* Returns 1 when key was held and is gone, 0 when it was not held. */
int ps_map_u64_remove(ps_map *m, uint64_t key);

/* ---- byte-string keys ---- */

static inline int ps__map_bytes_eq(const ps_map *m, uint64_t skey, uint32_t tag, const void *k,
                                   size_t n)
{
    if ((uint32_t)(skey >> 32) != tag) return 0;
    const char *rec = m->keys.p + (uint32_t)skey;
    uint32_t len;
    memcpy(&len, rec, 4);
    return len == n && memcmp(rec + 4, k, n) == 0;
}

static inline uint32_t ps__map_tag(uint64_t h)
{
    uint32_t tag = (uint32_t)(h >> 32);
    return tag ? tag : 1;
}

/* Pointer to the value of the n bytes at k, or NULL when not held. */
static inline uint64_t *ps_map_bytes_get(const ps_map *m, const void *k, size_t n)
{
    if (!m->n) return NULL;
    uint64_t h = ps_hash_bytes(k, n);
    uint32_t tag = ps__map_tag(h);
    for (size_t i = (size_t)h & m->mask;; i = (i + 1) & m->mask) {
        uint64_t s = m->slot[i].key;
        if (s == 0) return NULL;
        if (ps__map_bytes_eq(m, s, tag, k, n)) return &m->slot[i].val;
    }
}

/* Find the n bytes at k, adding a copy with value 0 when new. OUT: *val as ps_map_u64_add.
 * Returns 1 when added, 0 when already held, PS_ENOMEM, or PS_ETOOBIG when the keys would pass
 * 4 GiB (map unchanged on error). */
int ps_map_bytes_add(ps_map *m, const void *k, size_t n, uint64_t **val);
int ps_map_bytes_put(ps_map *m, const void *k, size_t n, uint64_t val);
int ps_map_bytes_remove(ps_map *m, const void *k, size_t n);

/* The key of the entry whose value pointer is val (from get, add or ps_map_next): its bytes
 * (NUL-terminated, owned by the map), *len (if len) its length, *off (if off) its offset in
 * m->keys.p. */
const char *ps_map_bytes_key(const ps_map *m, const uint64_t *val, size_t *len, uint32_t *off);

/* ---- iteration ---- */

typedef struct ps_map_entry {
    uint64_t key;     /* u64 map: the key */
    const char *kptr; /* bytes map: the key's bytes (NUL-terminated) */
    size_t klen;      /* bytes map: its length */
    uint64_t *val;
} ps_map_entry;

/* Visit every key once, in slot order (the same for the same operations):
 *     for (size_t pos = 0; ps_map_next(m, &pos, &e);) ...
 * Returns 1 with *e filled, 0 at the end. The map must not change during the walk except
 * through e->val. */
int ps_map_next(const ps_map *m, size_t *pos, ps_map_entry *e);

#endif
