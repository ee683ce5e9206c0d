/*
 * snapshot.h — a shard snapshot's manifest: which build, which slice, which files.
 *
 * `builder build --shards N` writes one per shard directory, DIR/shard-NNN/snapshot.json:
 *
 *   {"format": 1, "version": V, "fingerprint": "0123456789abcdef", "shard": i, "shards": N,
 *    "stickers": n, "files": [{"name": "000012.sst", "bytes": 123, "crc32": 305419896}, ...]}
 *
 *   version      the build's 64-bit version (>= 1): the operator's, or the build time
 *   fingerprint  16 lowercase hex digits identifying the build's inputs; every shard of one
 *                build carries the same one
 *   files        every file the shard needs to serve the slice (RocksDB's CURRENT, MANIFEST-*,
 *                OPTIONS-*, *.sst, and embeddings.f32), each with its size and zlib crc32;
 *                not snapshot.json itself, not RocksDB's LOG* and LOCK
 *
 * The shard checks a manifest against its own configuration (shard, shards) at start and when
 * a snapshot is staged, and checks every staged file's size and crc32 before serving it.
 * Caps (a manifest comes from the network): PS_SNAPSHOT_MAX_FILES files, names of at most
 * PS_SNAPSHOT_MAX_NAME bytes of [A-Za-z0-9._-] not starting with '.', a manifest of at most
 * PS_SNAPSHOT_MAX_JSON bytes.
 */
#ifndef PS_SNAPSHOT_H
#define PS_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

#include "ps/err.h"

#define PS_SNAPSHOT_FORMAT    1
#define PS_SNAPSHOT_FILE      "snapshot.json"
#define PS_SNAPSHOT_MAX_FILES 4096
#define PS_SNAPSHOT_MAX_NAME  128
#define PS_SNAPSHOT_MAX_JSON  (1u << 20)

typedef struct ps_snapshot_file {
    char name[PS_SNAPSHOT_MAX_NAME + 1];
    uint64_t bytes;
    uint32_t crc32;
} ps_snapshot_file;

typedef struct ps_snapshot {
    uint64_t version;
    char fingerprint[17];
    uint32_t shard, shards;
    uint64_t stickers;
    size_t nfiles;
    ps_snapshot_file *files; /* owned (ps_snapshot_clear) */
} ps_snapshot;

/* Scan `dir` (an index directory just written), checksum its files and write
 * dir/snapshot.json for s's version, fingerprint, shard, shards and stickers (s->files is
 * filled in; free with ps_snapshot_clear). Errors: PS_EIO, PS_EINVAL (a file name outside the
 * caps), PS_ENOMEM. */
int ps_snapshot_write(const char *dir, ps_snapshot *s, ps_err *err);

/* Parse a manifest (len bytes of JSON). Every field is checked (format, version >= 1,
 * fingerprint of 16 hex digits, shard < shards, names within the caps and distinct).
 * OUT s (free with ps_snapshot_clear). Errors: PS_EPARSE, PS_EINVAL, PS_ETOOBIG, PS_ENOMEM,
 * each naming the field. */
int ps_snapshot_parse(const char *json, size_t len, ps_snapshot *s, ps_err *err);

/* Read dir/snapshot.json. PS_ENOTFOUND when there is none; else as ps_snapshot_parse. */
int ps_snapshot_read(const char *dir, ps_snapshot *s, ps_err *err);

/* The manifest as JSON (malloc'd, caller frees), NULL when out of memory. */
char *ps_snapshot_json(const ps_snapshot *s);

/* Check every file of s in dir: present, of its size, of its crc32. Errors: PS_ECORRUPT
 * naming the first file that is not (missing, short, long, wrong checksum), PS_EIO. */
int ps_snapshot_verify(const char *dir, const ps_snapshot *s, ps_err *err);

/* zlib crc32 and size of a whole file. Errors: PS_EIO. */
int ps_file_crc32(const char *path, uint32_t *crc, uint64_t *bytes, ps_err *err);

void ps_snapshot_clear(ps_snapshot *s);

#endif
