/*
 * fuzz_snapshot.c — fuzz target for a snapshot manifest (ps_snapshot_parse): the
 * snapshot.json that `builder push` sends to a shard's admin port, so outside input.
 *
 * Any input must give 0 or a negative PS_E* code with a message, never a crash or a leak. A
 * manifest that parses is rendered again (ps_snapshot_json) and parsed again: the second parse
 * must succeed and give the same version, fingerprint, shard, counts and files.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ps/snapshot.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ps_snapshot s, again;
    ps_err err = {0, ""};
    memset(&s, 0, sizeof s);
    memset(&again, 0, sizeof again);
    int rc = ps_snapshot_parse((const char *)data, size, &s, &err);
    if (rc) {
        if (rc > 0 || err.code != rc || err.msg[0] == '\0') abort();
        ps_snapshot_clear(&s);
        return 0;
    }
    char *json = ps_snapshot_json(&s);
    if (!json) abort();
    if (ps_snapshot_parse(json, strlen(json), &again, &err)) abort();
    if (again.version != s.version || strcmp(again.fingerprint, s.fingerprint) != 0 ||
        again.shard != s.shard || again.shards != s.shards || again.stickers != s.stickers ||
        again.nfiles != s.nfiles)
        abort();
    for (size_t i = 0; i < s.nfiles; i++)
        if (strcmp(again.files[i].name, s.files[i].name) != 0 ||
            again.files[i].bytes != s.files[i].bytes || again.files[i].crc32 != s.files[i].crc32)
            abort();
    free(json);
    ps_snapshot_clear(&again);
    ps_snapshot_clear(&s);
    return 0;
}
