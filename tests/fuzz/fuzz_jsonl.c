/*
 * fuzz_jsonl.c — fuzz target for one sticker JSON line (ps_sticker_parse).
 *
 * Any input must give 0 or a negative PS_E* code with a message, never a crash or a leak. A
 * line that parses is also written back with ps_sticker_write and parsed again: the second
 * parse must succeed and give the same record, so the writer and the reader agree on every
 * id and every byte of text.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps/corpus.h"

static void same_or_die(const ps_sticker_rec *a, const ps_sticker_rec *b)
{
    if (a->id != b->id) abort();
    for (int f = 0; f < PS_NFIELDS; f++) {
        if (!a->field[f] || !b->field[f]) abort();
        if (a->field_len[f] != b->field_len[f]) abort();
        if (memcmp(a->field[f], b->field[f], a->field_len[f] + 1) != 0) abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ps_sticker_rec r, again;
    ps_err err = {0, ""};
    int rc = ps_sticker_parse((const char *)data, size, &r, &err);
    if (rc) {
        if (rc > 0 || err.code != rc || err.msg[0] == '\0') abort();
        for (int f = 0; f < PS_NFIELDS; f++)
            if (r.field[f]) abort();
        return 0;
    }

    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    if (!mem) abort();
    if (ps_sticker_write(mem, &r, &err)) abort();
    if (fclose(mem) || len == 0 || buf[len - 1] != '\n') abort();
    if (ps_sticker_parse(buf, len - 1, &again, &err)) abort();
    same_or_die(&r, &again);
    ps_sticker_rec_clear(&again);
    ps_sticker_rec_clear(&r);
    free(buf);
    return 0;
}
