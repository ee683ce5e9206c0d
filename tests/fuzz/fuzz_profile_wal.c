/*
 * fuzz_profile_wal.c — fuzz target for what a profile replica applies from its primary's WAL
 * stream (profsvc_store_apply, profile/store.c): write batches as the wal reply carries them,
 * bytes a replica takes from the network. Then the store's readers run over what they wrote:
 * profiles, click logs, the checksum and the WAL read back (profsvc_store_wal).
 *
 * Input: up to 4 batches, each u16le length | bytes, applied in order at the store's next
 * sequence number. One store (a RocksDB directory under $TMPDIR, removed at exit) serves every
 * run: after each input a batch deleting every key the input's batches wrote is applied, so each
 * run starts from an empty database (only sequence numbers move on).
 *
 * Any input must give 0 or a negative PS_E* code with a message, never a crash or a leak; a
 * batch that applies leaves the store at its sequence number + its count - 1, the readers
 * answer 0 or PS_ECORRUPT / PS_ETOOBIG for the users the batches name, and the store must
 * still apply the clean-up batch: no input may leave it unable to take a valid batch.
 */
#include <rocksdb/c.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "profile.h"
#include "ps/log.h"
#include "ps/wire.h"

#define MAX_BATCHES 4
#define MAX_USERS   4

static profsvc_store_t *st;
static char root[4096];

static void cleanup_at_exit(void)
{
    profsvc_store_close(st);
    profsvc_rmtree(root);
}

static void open_store(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(root, sizeof root, "%s/fuzz_profile_wal.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(root)) abort();
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/db", root);
    profsvc_store_cfg cfg = {.dir = dir,
                             .replica = 1,
                             .sync = 0,
                             .history = 8,
                             .kmax = 2,
                             .wal_ttl_s = 0,
                             .wal_size_mb = 0,
                             .write_buffer_kb = 256};
    ps_err err = {0, ""};
    ps_log_level = PS_LOG_ERROR; /* not a wal_gone line per run */
    if (!(st = profsvc_store_open(&cfg, &err))) {
        fprintf(stderr, "fuzz_profile_wal: %s\n", err.msg);
        abort();
    }
    atexit(cleanup_at_exit);
}

/* The keys the input's batches wrote (to delete afterwards) and the users they name. */
typedef struct seen {
    char **keys;
    size_t *klen, nkeys, cap;
    char users[MAX_USERS][PS_WIRE_MAX_USER + 1];
    size_t nusers;
} seen;

static void note_key(void *arg, const char *k, size_t kl)
{
    seen *s = arg;
    if (s->nkeys == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        if (!(s->keys = realloc(s->keys, s->cap * sizeof *s->keys)) ||
            !(s->klen = realloc(s->klen, s->cap * sizeof *s->klen)))
            abort();
    }
    if (!(s->keys[s->nkeys] = malloc(kl ? kl : 1))) abort();
    memcpy(s->keys[s->nkeys], k, kl);
    s->klen[s->nkeys++] = kl;
    if (kl < 2 || !strchr("PHLN", k[0])) return;
    /* P and N: 'tag' user; H and L: 'tag' user 0x00 seq */
    const char *nul = memchr(k + 1, 0, kl - 1);
    size_t ul = k[0] == 'P' || k[0] == 'N' ? kl - 1 : nul ? (size_t)(nul - k - 1) : 0;
    if (ul == 0 || ul > PS_WIRE_MAX_USER || memchr(k + 1, 0, ul)) return; /* not a user name */
    for (size_t i = 0; i < s->nusers; i++)
        if (strlen(s->users[i]) == ul && !memcmp(s->users[i], k + 1, ul)) return;
    if (s->nusers == MAX_USERS) return;
    memcpy(s->users[s->nusers], k + 1, ul);
    s->users[s->nusers++][ul] = '\0';
}

static void note_put(void *arg, const char *k, size_t kl, const char *v, size_t vl)
{
    (void)v;
    (void)vl;
    note_key(arg, k, kl);
}

static void check_err(int rc, const ps_err *err)
{
    if (rc > 0 || (rc && (err->code != rc || err->msg[0] == '\0'))) abort();
}

static void read_user(const char *user)
{
    ps_err err = {0, ""};
    ps_profile prof;
    int found;
    uint64_t seq, *ids;
    size_t n;
    int rc = profsvc_store_profile(st, user, &found, &prof, &seq, &err);
    check_err(rc, &err);
    if (rc && rc != PS_ECORRUPT) abort();
    if (!rc && found && (prof.k < 1 || prof.k > PS_PROFILE_KMAX)) abort();
    ps_profile_clear(&prof);
    rc = profsvc_store_clicks(st, user, 64, &ids, &n, &err);
    check_err(rc, &err);
    if (rc && rc != PS_ECORRUPT && rc != PS_ETOOBIG) abort();
    if (rc ? ids || n : n > 64) abort();
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!st) open_store();
    seen s = {.keys = NULL, .klen = NULL, .nkeys = 0, .cap = 0, .nusers = 0};
    ps_err err = {0, ""};
    uint64_t first = profsvc_store_seq(st) + 1;
    size_t at = 0, nb = 0, first_len = 0;
    while (nb < MAX_BATCHES && size - at >= 2) {
        size_t len = (size_t)data[at] | (size_t)data[at + 1] << 8;
        at += 2;
        if (len > size - at) len = size - at;
        const uint8_t *b = data + at;
        at += len;
        uint64_t seq = profsvc_store_seq(st) + 1;
        int rc = profsvc_store_apply(st, seq, b, len, &err);
        check_err(rc, &err);
        if (rc && rc != PS_ECORRUPT && rc != PS_ESTORE) abort();
        if (rc) continue;
        if (!nb++) first_len = len;
        rocksdb_writebatch_t *wb = rocksdb_writebatch_create_from((const char *)b, len);
        if (profsvc_store_seq(st) != seq + (uint64_t)rocksdb_writebatch_count(wb) - 1) abort();
        rocksdb_writebatch_iterate(wb, &s, note_put, note_key);
        rocksdb_writebatch_destroy(wb);
    }
    for (size_t i = 0; i < s.nusers; i++) read_user(s.users[i]);
    uint64_t sum, keys, seq;
    if (profsvc_store_checksum(st, &sum, &keys, &seq, &err)) abort();
    if (nb) { /* the first batch applied comes back from the WAL as it went in (or is gone) */
        profsvc_batch *batches;
        size_t n;
        int gone;
        uint64_t latest;
        if (profsvc_store_wal(st, first, 1 << 20, &batches, &n, &gone, &latest, &err)) abort();
        if (!gone && n && (batches[0].seq != first || batches[0].len != first_len)) abort();
        profsvc_batches_free(batches, n);
    }

    /* Clean up: delete what the batches wrote (and a key none wrote, so that there is always
     * something to apply), in one batch that must apply. */
    {
        rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
        rocksdb_writebatch_delete(wb, "~fuzz", 5);
        for (size_t i = 0; i < s.nkeys; i++) {
            rocksdb_writebatch_delete(wb, s.keys[i], s.klen[i]);
            free(s.keys[i]);
        }
        size_t len;
        const char *d = rocksdb_writebatch_data(wb, &len);
        int rc = profsvc_store_apply(st, profsvc_store_seq(st) + 1, d, len, &err);
        if (rc) {
            fprintf(stderr, "fuzz_profile_wal: the clean-up batch failed: %s\n", err.msg);
            abort();
        }
        rocksdb_writebatch_destroy(wb);
    }
    free(s.keys);
    free(s.klen);
    return 0;
}
