/*
 * fuzz_profile_store.c — fuzz target for the profile service's record decoders (profile/store.c,
 * layout there): the values a node reads back from its database, which on a replica are
 * whatever the WAL stream wrote (P profiles, H history entries, L click-log entries, N next
 * sequence numbers, the Mdim dimension, I click ids and J the click id window), and the check a
 * replica runs on each WAL batch before it writes it (profsvc_batch_check). fuzz_profile_wal
 * drives the same through a live store.
 *
 * Input: byte 0 picks the decoder (mod 8: P, H, L, N, Mdim, batch, I, J); for H, byte 1 is the
 * embedding dimension (0..255) and byte 2 the key's length after the user's 0x00; for J, byte 1
 * is the length of the key's tail (the seq), which comes first; the rest is the value.
 *
 * Any input must give 0 or PS_ECORRUPT with a message, never a crash or a leak. What decodes is
 * what the bytes hold: a profile encodes to the same bytes, an H entry's id and floats and an L
 * entry's id and query are the value's bytes, N, Mdim and I their integers, a J entry's seq its
 * key's 8 bytes big-endian, with a click id that fits in an I key; a batch the check accepts
 * parses in RocksDB (rocksdb_writebatch_iterate) as exactly its count of puts and deletes.
 */
#include <rocksdb/c.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "profile.h"
#include "ps/wire.h"

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static void check_err(int rc, const ps_err *err)
{
    if (rc && (rc != PS_ECORRUPT || err->code != rc || err->msg[0] == '\0')) abort();
}

static void count_put(void *arg, const char *k, size_t kl, const char *v, size_t vl)
{
    (void)k, (void)kl, (void)v, (void)vl;
    ++*(uint32_t *)arg;
}

static void count_delete(void *arg, const char *k, size_t kl)
{
    (void)k, (void)kl;
    ++*(uint32_t *)arg;
}

static void fuzz_batch(const uint8_t *v, size_t vl)
{
    ps_err err = {0, ""};
    uint32_t count = 0, seen = 0;
    int rc = profsvc_batch_check(1, v, vl, &count, &err);
    check_err(rc, &err);
    if (rc) return;
    if (count == 0) abort();
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create_from((const char *)v, vl);
    if ((uint32_t)rocksdb_writebatch_count(wb) != count) abort();
    rocksdb_writebatch_iterate(wb, &seen, count_put, count_delete);
    if (seen != count) abort();
    rocksdb_writebatch_destroy(wb);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static float emb[256];
    if (size < 1) return 0;
    ps_err err = {0, ""};
    const uint8_t *v = data + 1;
    size_t vl = size - 1;
    int rc;
    switch (data[0] % 8) {
    case 0: {
        ps_profile p;
        rc = ps_profile_decode(v, vl, &p, &err);
        check_err(rc, &err);
        if (!rc) {
            uint8_t *buf;
            size_t len;
            if (ps_profile_encode(&p, &buf, &len, &err) || len != vl || memcmp(buf, v, len))
                abort();
            free(buf);
        }
        ps_profile_clear(&p);
        break;
    }
    case 1: {
        if (vl < 2) return 0;
        size_t dim = v[0], tail = v[1];
        uint64_t id;
        v += 2, vl -= 2;
        rc = profsvc_rec_history("u", tail, v, vl, dim, &id, emb, &err);
        check_err(rc, &err);
        if (!rc && (tail != 8 || vl != 8 + 4 * dim || id != le64(v) || memcmp(emb, v + 8, 4 * dim)))
            abort();
        break;
    }
    case 2: {
        uint64_t id;
        const uint8_t *q;
        size_t qlen;
        rc = profsvc_rec_click("u", v, vl, &id, &q, &qlen, &err);
        check_err(rc, &err);
        if (!rc && (vl < 8 || id != le64(v) || q != v + 8 || qlen != vl - 8)) abort();
        break;
    }
    case 3: {
        uint64_t next;
        rc = profsvc_rec_next("u", v, vl, &next, &err);
        check_err(rc, &err);
        if (!rc && (vl != 8 || next != le64(v))) abort();
        break;
    }
    case 4: {
        uint32_t dim;
        rc = profsvc_rec_dim("db", v, vl, &dim, &err);
        check_err(rc, &err);
        if (!rc && (vl != 4 || dim == 0 || dim > PS_WIRE_MAX_DIM ||
                    dim != ((uint32_t)v[0] | (uint32_t)v[1] << 8 | (uint32_t)v[2] << 16 |
                            (uint32_t)v[3] << 24)))
            abort();
        break;
    }
    case 5:
        fuzz_batch(v, vl);
        break;
    case 6: {
        uint64_t seq, sticker;
        rc = profsvc_rec_click_id("u", "c", v, vl, &seq, &sticker, &err);
        check_err(rc, &err);
        if (!rc && (vl != 16 || seq != le64(v) || sticker != le64(v + 8))) abort();
        break;
    }
    default: {
        if (vl < 1 || v[0] > vl - 1) return 0;
        size_t tl = v[0];
        const uint8_t *tail = v + 1;
        uint64_t seq, be = 0;
        v += 1 + tl, vl -= 1 + tl;
        rc = profsvc_rec_window("u", tail, tl, vl, &seq, &err);
        check_err(rc, &err);
        if (rc) break;
        for (size_t i = 0; i < tl; i++) be = be << 8 | tail[i];
        if (tl != 8 || vl == 0 || vl > PS_WIRE_MAX_CLICK_ID || seq != be) abort();
        break;
    }
    }
    return 0;
}
