/*
 * test_map.c — ps/map.h: u64 and byte-string keys, key 0 and empty keys, growth, collision runs
 * that wrap the end of the table under removal, iteration, compaction of removed byte keys, a
 * comparison with a plain array over random operations, and allocation failure (the map is
 * unchanged, nothing leaks).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "failalloc.h"
#include "ps/alloc.h"
#include "ps/err.h"
#include "ps/hash.h"
#include "ps/map.h"
#include "ps/rand.h"

/* ---- u64 keys ---- */

static void test_u64_basic(void **state)
{
    (void)state;
    ps_map m = PS_MAP_INIT(PS_MAP_U64);
    uint64_t *v;
    assert_null(ps_map_u64_get(&m, 5));
    assert_null(ps_map_u64_get(&m, 0));
    assert_int_equal(ps_map_u64_add(&m, 5, &v), 1);
    assert_int_equal(*v, 0);
    *v = 50;
    assert_int_equal(ps_map_u64_add(&m, 5, &v), 0);
    assert_int_equal(*v, 50);
    assert_int_equal(ps_map_u64_put(&m, 0, 7), 0); /* key 0 lives beside the slots */
    assert_int_equal(ps_map_u64_put(&m, UINT64_MAX, 9), 0);
    assert_int_equal(m.n, 3);
    assert_int_equal(*ps_map_u64_get(&m, 0), 7);
    assert_int_equal(*ps_map_u64_get(&m, UINT64_MAX), 9);
    assert_int_equal(*ps_map_u64_get(&m, 5), 50);

    size_t pos = 0, seen = 0;
    uint64_t sum = 0;
    ps_map_entry e;
    while (ps_map_next(&m, &pos, &e)) {
        seen++;
        sum += *e.val;
        *e.val += 1; /* values may change during the walk */
    }
    assert_int_equal(seen, 3);
    assert_int_equal(sum, 66);
    assert_int_equal(*ps_map_u64_get(&m, 0), 8);

    assert_int_equal(ps_map_u64_remove(&m, 0), 1);
    assert_int_equal(ps_map_u64_remove(&m, 0), 0);
    assert_int_equal(ps_map_u64_remove(&m, 5), 1);
    assert_int_equal(ps_map_u64_remove(&m, 6), 0);
    assert_int_equal(m.n, 1);
    assert_null(ps_map_u64_get(&m, 5));
    ps_map_clear(&m);
    assert_int_equal(m.n, 0);
    assert_null(ps_map_u64_get(&m, UINT64_MAX));
    pos = 0;
    assert_int_equal(ps_map_next(&m, &pos, &e), 0);
    ps_map_free(&m);
    assert_null(m.slot);
    assert_int_equal(m.kind, PS_MAP_U64);
}

static void test_u64_growth(void **state)
{
    (void)state;
    ps_map m = PS_MAP_INIT(PS_MAP_U64);
    const uint64_t N = 200000;
    for (uint64_t k = 1; k <= N; k++) assert_int_equal(ps_map_u64_put(&m, k * 0x9E37u, k), 0);
    assert_int_equal(m.n, N);
    assert_true(m.mask + 1 >= 2 * N); /* at most half full */
    for (uint64_t k = 1; k <= N; k++) {
        uint64_t *v = ps_map_u64_get(&m, k * 0x9E37u);
        assert_non_null(v);
        assert_int_equal(*v, k);
    }
    assert_null(ps_map_u64_get(&m, (N + 1) * 0x9E37u));
    ps_map_free(&m);
}

/* n keys whose home in a 16-slot table is `home`. */
static void same_home(uint64_t *keys, int n, size_t home)
{
    for (uint64_t k = 1; n; k++)
        if ((ps_hash_u64(k) & 15) == home) {
            *keys++ = k;
            n--;
        }
}

/* A run of keys with one home that wraps past the last slot, removed from the middle in
 * every order: every key left stays reachable. */
static void test_u64_collisions(void **state)
{
    (void)state;
    uint64_t k[6], other[2];
    same_home(k, 6, 14);
    same_home(other, 2, 1); /* homes inside the wrapped run */
    for (int first = 0; first < 6; first++) {
        ps_map m = PS_MAP_INIT(PS_MAP_U64);
        assert_int_equal(ps_map_reserve(&m, 8), 0);
        assert_int_equal(m.mask, 15);
        for (int i = 0; i < 6; i++) assert_int_equal(ps_map_u64_put(&m, k[i], (uint64_t)i), 0);
        for (int i = 0; i < 2; i++) assert_int_equal(ps_map_u64_put(&m, other[i], 100u + i), 0);
        assert_int_equal(m.mask, 15); /* 8 keys in 16 slots: no growth yet */
        for (int r = 0; r < 6; r++) {
            int gone = (first + r) % 6;
            assert_int_equal(ps_map_u64_remove(&m, k[gone]), 1);
            for (int i = 0; i < 6; i++) {
                int removed = 0;
                for (int q = 0; q <= r; q++) removed |= (first + q) % 6 == i;
                uint64_t *v = ps_map_u64_get(&m, k[i]);
                if (removed)
                    assert_null(v);
                else
                    assert_true(v && *v == (uint64_t)i);
            }
            for (int i = 0; i < 2; i++) assert_int_equal(*ps_map_u64_get(&m, other[i]), 100u + i);
        }
        assert_int_equal(m.n, 2);
        ps_map_free(&m);
    }
}

/* ---- byte-string keys ---- */

static void test_bytes_basic(void **state)
{
    (void)state;
    ps_map m = PS_MAP_INIT(PS_MAP_BYTES);
    uint64_t *v;
    assert_null(ps_map_bytes_get(&m, "a", 1));
    assert_int_equal(ps_map_bytes_put(&m, "apple", 5, 1), 0);
    assert_int_equal(ps_map_bytes_put(&m, "", 0, 2), 0); /* the empty key */
    assert_int_equal(ps_map_bytes_put(&m, "a\0b", 3, 3), 0);
    assert_int_equal(ps_map_bytes_put(&m, "a\0c", 3, 4), 0);
    assert_int_equal(ps_map_bytes_add(&m, "apple", 5, &v), 0);
    assert_int_equal(*v, 1);
    assert_int_equal(m.n, 4);
    assert_int_equal(*ps_map_bytes_get(&m, "", 0), 2);
    assert_int_equal(*ps_map_bytes_get(&m, "a\0b", 3), 3);
    assert_int_equal(*ps_map_bytes_get(&m, "a\0c", 3), 4);
    assert_null(ps_map_bytes_get(&m, "a", 1));
    assert_null(ps_map_bytes_get(&m, "appl", 4));

    size_t len;
    uint32_t off;
    const char *key = ps_map_bytes_key(&m, ps_map_bytes_get(&m, "apple", 5), &len, &off);
    assert_int_equal(len, 5);
    assert_string_equal(key, "apple");
    assert_ptr_equal(m.keys.p + off, key);

    size_t pos = 0, seen = 0;
    ps_map_entry e;
    while (ps_map_next(&m, &pos, &e)) {
        seen++;
        assert_int_equal(*ps_map_bytes_get(&m, e.kptr, e.klen), *e.val);
    }
    assert_int_equal(seen, 4);

    assert_int_equal(ps_map_bytes_remove(&m, "a\0b", 3), 1);
    assert_int_equal(ps_map_bytes_remove(&m, "a\0b", 3), 0);
    assert_null(ps_map_bytes_get(&m, "a\0b", 3));
    assert_int_equal(*ps_map_bytes_get(&m, "a\0c", 3), 4);
    ps_map_free(&m);
    assert_int_equal(m.kind, PS_MAP_BYTES);
}

/* Keys added and removed for ever keep the key records bounded (compaction). */
static void test_bytes_churn_compacts(void **state)
{
    (void)state;
    ps_map m = PS_MAP_INIT(PS_MAP_BYTES);
    char k[32];
    for (int i = 0; i < 100; i++) {
        int n = snprintf(k, sizeof k, "resident-%d", i);
        assert_int_equal(ps_map_bytes_put(&m, k, (size_t)n, (uint64_t)i), 0);
    }
    for (int i = 0; i < 200000; i++) {
        int n = snprintf(k, sizeof k, "passing-%d", i);
        assert_int_equal(ps_map_bytes_put(&m, k, (size_t)n, 1), 0);
        assert_int_equal(ps_map_bytes_remove(&m, k, (size_t)n), 1);
    }
    assert_true(m.keys.n < 64 * 1024);
    for (int i = 0; i < 100; i++) {
        int n = snprintf(k, sizeof k, "resident-%d", i);
        uint64_t *v = ps_map_bytes_get(&m, k, (size_t)n);
        assert_true(v && *v == (uint64_t)i);
    }
    ps_map_free(&m);
}

/* ---- random operations against a plain array ---- */

typedef struct ref {
    uint64_t key[4096];
    uint64_t val[4096];
    int n;
} ref;

static int ref_find(const ref *r, uint64_t k)
{
    for (int i = 0; i < r->n; i++)
        if (r->key[i] == k) return i;
    return -1;
}

/* The map's contents equal the array's, by lookup and by iteration. */
static void same(const ps_map *m, const ref *r, int bytes)
{
    char s[32];
    assert_int_equal(m->n, (size_t)r->n);
    for (int i = 0; i < r->n; i++) {
        uint64_t *v;
        if (bytes) {
            int n = snprintf(s, sizeof s, "k%llu", (unsigned long long)r->key[i]);
            v = ps_map_bytes_get(m, s, (size_t)n);
        } else {
            v = ps_map_u64_get(m, r->key[i]);
        }
        assert_true(v && *v == r->val[i]);
    }
    size_t pos = 0, seen = 0;
    ps_map_entry e;
    while (ps_map_next(m, &pos, &e)) {
        uint64_t k = bytes ? strtoull(e.kptr + 1, NULL, 10) : e.key;
        int i = ref_find(r, k);
        assert_true(i >= 0 && r->val[i] == *e.val);
        seen++;
    }
    assert_int_equal(seen, (size_t)r->n);
}

static void random_ops(int bytes)
{
    static ref r;
    ps_rng g;
    char s[32];
    ps_rng_seed(&g, 12345, (uint64_t)bytes);
    ps_map m = PS_MAP_INIT(bytes ? PS_MAP_BYTES : PS_MAP_U64);
    r.n = 0;
    for (int op = 0; op < 60000; op++) {
        /* keys from a small universe (0 included) so that adds repeat and removes hit */
        uint64_t k = ps_rng_below(&g, 3000), v = ps_rng_next(&g);
        int n = snprintf(s, sizeof s, "k%llu", (unsigned long long)k);
        int i = ref_find(&r, k);
        switch (ps_rng_below(&g, 8)) {
        case 0:
        case 1:
        case 2:
        case 3: /* put */
            assert_int_equal(
                bytes ? ps_map_bytes_put(&m, s, (size_t)n, v) : ps_map_u64_put(&m, k, v), 0);
            if (i < 0) {
                i = r.n++;
                r.key[i] = k;
            }
            r.val[i] = v;
            break;
        case 4:
        case 5: /* remove */
            assert_int_equal(
                bytes ? ps_map_bytes_remove(&m, s, (size_t)n) : ps_map_u64_remove(&m, k), i >= 0);
            if (i >= 0) {
                r.n--;
                r.key[i] = r.key[r.n];
                r.val[i] = r.val[r.n];
            }
            break;
        case 6: { /* get */
            uint64_t *got = bytes ? ps_map_bytes_get(&m, s, (size_t)n) : ps_map_u64_get(&m, k);
            if (i < 0)
                assert_null(got);
            else
                assert_true(got && *got == r.val[i]);
            break;
        }
        default:
            if (ps_rng_below(&g, 500) == 0) { /* now and then: clear */
                ps_map_clear(&m);
                r.n = 0;
            }
        }
        if (op % 1000 == 999) same(&m, &r, bytes);
    }
    same(&m, &r, bytes);
    ps_map_free(&m);
}

static void test_random_u64(void **state)
{
    (void)state;
    random_ops(0);
}

static void test_random_bytes(void **state)
{
    (void)state;
    random_ops(1);
}

/* ---- allocation failure ---- */

/* Fail each allocation in turn while filling a map: a failed add returns PS_ENOMEM and leaves
 * the map as it was (every key before it still there, the failed one absent); free releases
 * everything. */
static void fill_failing(int bytes)
{
    int failures = 0;
    for (long at = 0; at < 40; at++) {
        failing_from(at);
        ps_map m = PS_MAP_INIT(bytes ? PS_MAP_BYTES : PS_MAP_U64);
        uint64_t added = 0;
        char s[32];
        for (uint64_t k = 1; k <= 3000; k++) {
            int n = snprintf(s, sizeof s, "key %llu", (unsigned long long)k);
            int rc = bytes ? ps_map_bytes_put(&m, s, (size_t)n, k) : ps_map_u64_put(&m, k, k);
            if (rc) {
                assert_int_equal(rc, PS_ENOMEM);
                failures++;
                assert_int_equal(m.n, added);
                assert_null(bytes ? ps_map_bytes_get(&m, s, (size_t)n) : ps_map_u64_get(&m, k));
                break;
            }
            added++;
        }
        for (uint64_t k = 1; k <= added; k++) {
            int n = snprintf(s, sizeof s, "key %llu", (unsigned long long)k);
            uint64_t *v = bytes ? ps_map_bytes_get(&m, s, (size_t)n) : ps_map_u64_get(&m, k);
            assert_true(v && *v == k);
        }
        ps_map_free(&m);
        assert_int_equal(live, 0);
        ps_reset_allocators();
    }
    assert_true(failures > 8);
}

static void test_alloc_failure_u64(void **state)
{
    (void)state;
    fill_failing(0);
}

static void test_alloc_failure_bytes(void **state)
{
    (void)state;
    fill_failing(1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_u64_basic),
        cmocka_unit_test(test_u64_growth),
        cmocka_unit_test(test_u64_collisions),
        cmocka_unit_test(test_bytes_basic),
        cmocka_unit_test(test_bytes_churn_compacts),
        cmocka_unit_test(test_random_u64),
        cmocka_unit_test(test_random_bytes),
        cmocka_unit_test_teardown(test_alloc_failure_u64, teardown),
        cmocka_unit_test_teardown(test_alloc_failure_bytes, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
