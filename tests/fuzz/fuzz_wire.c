/*
 * fuzz_wire.c — fuzz target for the wire decoder (ps_wire_decode, DESIGN §3.2).
 *
 * Any frame must give 0 or a negative PS_E* code with a message, never a crash, a leak or an
 * envelope on error. A frame that decodes is packed again with protobuf-c and must decode
 * again; that second packing is canonical, so packing the second envelope gives the same
 * bytes. The validating packer (ps_wire_pack) must accept what the decoder accepted, and the
 * conversions to engine types must succeed on it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ps/wire_engine.h"

static uint8_t *pack_or_die(const Persrv__Envelope *env, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(&env->base);
    uint8_t *b = malloc(*len ? *len : 1);
    if (!b || protobuf_c_message_pack(&env->base, b) != *len) abort();
    return b;
}

static void convert_or_die(const Persrv__Envelope *env)
{
    static ps_hit hits[PS_WIRE_MAX_HITS];
    ps_search_opts opts;
    ps_profile prof;
    size_t n;
    if (env->body_case == PERSRV__ENVELOPE__BODY_SEARCH) {
        if (ps_wire_to_opts(env->search, &opts, NULL)) abort();
        if (ps_wire_to_profile(env->search, &prof, NULL)) abort();
        if (prof.k != env->search->n_centroids) abort();
        ps_profile_clear(&prof);
    } else if (env->body_case == PERSRV__ENVELOPE__BODY_SEARCH_REPLY) {
        if (ps_wire_to_hits(env->search_reply, hits, PS_WIRE_MAX_HITS, &n, NULL)) abort();
        if (n != ps_wire_reply_nhits(env->search_reply)) abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Persrv__Envelope *env = (Persrv__Envelope *)1, *again = NULL, *third = NULL;
    ps_err err = {0, ""};
    int rc = ps_wire_decode(data, size, 0, &env, &err);
    if (rc) {
        if (rc > 0 || env || err.code != rc || err.msg[0] == '\0') abort();
        return 0;
    }
    if (!env || err.code != 0) abort();

    size_t len1, len2, len3;
    uint8_t *b1 = pack_or_die(env, &len1);
    if (ps_wire_decode(b1, len1, len1, &again, &err)) abort();
    uint8_t *b2 = pack_or_die(again, &len2);
    if (ps_wire_decode(b2, len2, len2, &third, &err)) abort();
    uint8_t *b3 = pack_or_die(third, &len3);
    if (len2 != len3 || memcmp(b2, b3, len2) != 0) abort();

    uint8_t *b4;
    size_t len4;
    if (ps_wire_pack(env, &b4, &len4, &err)) abort();
    if (len4 != len1 || memcmp(b1, b4, len1) != 0) abort();
    convert_or_die(env);

    free(b1);
    free(b2);
    free(b3);
    free(b4);
    ps_wire_free(env);
    ps_wire_free(again);
    ps_wire_free(third);
    return 0;
}
