/*
 * fuzz_search_json.c — fuzz target for a search as a JSON object (broker_search_parse_json,
 * broker/parse.c): the body of POST /v1/search and each element of POST /v1/msearch's
 * "searches", as any HTTP client may send them.
 *
 * Input: byte 0 is max-k (0: the default 100), the rest a JSON document. Any input must give 0
 * or a negative PS_E* code with a message, never a crash or a leak. An object that parses gives
 * k in 1..max-k, explain and allow_partial 0 or 1, a timeout 0 (none) or 1..BROKER_MAX_TIMEOUT
 * ms, at most BROKER_MAX_EXCLUDE distinct excluded ids; rebuilt as a JSON object from those
 * values (jansson), it must parse to the same ones.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"

static void check(const broker_query *q, uint32_t max_k)
{
    if (q->k < 1 || q->k > max_k || (q->explain != 0 && q->explain != 1) ||
        (q->allow_partial != 0 && q->allow_partial != 1) || q->timeout_ms > BROKER_MAX_TIMEOUT ||
        q->nexclude > BROKER_MAX_EXCLUDE || (q->nexclude && !q->exclude))
        abort();
    for (size_t i = 0; i < q->nexclude; i++)
        for (size_t j = i + 1; j < q->nexclude; j++)
            if (q->exclude[i] == q->exclude[j]) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint32_t max_k = data[0] ? data[0] : 100;
    json_t *doc = json_loadb((const char *)data + 1, size - 1, JSON_REJECT_DUPLICATES, NULL);
    if (!doc) return 0;
    broker_search_params p, p2;
    broker_query q, q2;
    ps_err err = {0, ""};
    int rc = broker_search_parse_json(doc, "body", max_k, &p, &q, &err);
    if (rc) {
        if (rc > 0 || err.code != rc || !err.msg[0]) abort();
    } else {
        check(&q, max_k);
        json_t *ex = json_array(), *o = json_object();
        for (size_t i = 0; i < q.nexclude; i++) {
            char id[24];
            snprintf(id, sizeof id, "%llu", (unsigned long long)q.exclude[i]);
            json_array_append_new(ex, json_string(id));
        }
        if (q.q) json_object_set_new(o, "q", json_stringn(q.q, q.qlen));
        if (q.user) json_object_set_new(o, "user", json_stringn(q.user, q.user_len));
        json_object_set_new(o, "k", json_integer(q.k));
        json_object_set_new(o, "offset", json_integer(q.offset));
        json_object_set_new(o, "explain", json_boolean(q.explain));
        json_object_set_new(o, "allow_partial", json_boolean(q.allow_partial));
        if (q.timeout_ms) json_object_set_new(o, "timeout", json_integer(q.timeout_ms));
        json_object_set_new(o, "exclude", ex);
        if (broker_search_parse_json(o, "again", max_k, &p2, &q2, &err)) abort();
        if (q2.k != q.k || q2.offset != q.offset || q2.explain != q.explain ||
            q2.allow_partial != q.allow_partial || q2.timeout_ms != q.timeout_ms ||
            q2.nexclude != q.nexclude || !q2.q != !q.q || q2.qlen != q.qlen ||
            (q.q && memcmp(q.q, q2.q, q.qlen)) || !q2.user != !q.user ||
            (q.user && (q2.user_len != q.user_len || memcmp(q.user, q2.user, q.user_len))) ||
            (q.nexclude && memcmp(q.exclude, q2.exclude, q.nexclude * sizeof *q.exclude)))
            abort();
        broker_search_params_free(&p2);
        json_decref(o);
    }
    broker_search_params_free(&p);
    json_decref(doc);
    return 0;
}
