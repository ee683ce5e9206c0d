/*
 * fuzz_model_reply.c — fuzz target for the model client's reply parsers (builder/models.h):
 * the VLM keywords and description parsers over a chat completion, and the embedding parser.
 *
 * Any input must give 0 or a negative PS_E* code with a message, never a crash or a leak. On
 * success the outputs must hold: keywords and a description non-empty, NUL-terminated and
 * valid UTF-8 without control bytes; an embedding of 1..cap finite values with norm 1.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "models.h"

/* Valid UTF-8 with no byte below 0x20 (the parsers turn control bytes into spaces). */
static void check_text(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    if (!s) abort();
    while (*p) {
        int n = *p < 0x80             ? 0
                : (*p & 0xE0) == 0xC0 ? 1
                : (*p & 0xF0) == 0xE0 ? 2
                : (*p & 0xF8) == 0xF0 ? 3
                                      : -1;
        if (n < 0 || *p < 0x20) abort();
        p++;
        for (int i = 0; i < n; i++, p++)
            if ((*p & 0xC0) != 0x80) abort();
    }
}

static void check_rc(int rc, const ps_err *err)
{
    if (rc > 0 || (rc && (err->code != rc || err->msg[0] == '\0'))) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body = (const char *)data;
    ps_err err = {0, ""};
    char *kw = NULL, *desc = NULL, *emo = NULL;

    int rc = builder_parse_vlm_keywords(body, size, &kw, &err);
    check_rc(rc, &err);
    if (rc == 0) {
        check_text(kw);
        if (!kw[0]) abort();
    } else if (kw) {
        abort();
    }
    free(kw);

    ps_err_clear(&err);
    rc = builder_parse_vlm_describe(body, size, &desc, &emo, &err);
    check_rc(rc, &err);
    if (rc == 0) {
        check_text(desc);
        check_text(emo);
        if (!desc[0]) abort();
    } else if (desc || emo) {
        abort();
    }
    free(desc);
    free(emo);

    float v[64];
    uint32_t got = 99;
    ps_err_clear(&err);
    rc = builder_parse_embedding(body, size, v, 64, &got, &err);
    check_rc(rc, &err);
    if (rc == 0) {
        double ss = 0;
        if (got == 0 || got > 64) abort();
        for (uint32_t i = 0; i < got; i++) {
            if (!isfinite(v[i])) abort();
            ss += (double)v[i] * v[i];
        }
        if (fabs(ss - 1.0) > 1e-3) abort();
    } else if (got != 0) {
        abort();
    }
    return 0;
}
