/*
 * fuzz_click_json.c — fuzz target for the body of the broker's POST /v1/click
 * (broker_click_parse, broker/parse.c): {"user", "sticker_id", "query"} as any HTTP client may
 * send it.
 *
 * Any input must give 0 or a negative PS_E* code with a message, never a crash or a leak. A body
 * that parses gives a user that is valid UTF-8 without a NUL, a query string, and the sticker id
 * the JSON holds: a body rebuilt from those values (jansson) must parse to the same ones.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    broker_click_body c, again;
    ps_err err = {0, ""};
    int rc = broker_click_parse((const char *)data, size, &c, &err);
    if (rc) {
        if (rc > 0 || err.code != rc || err.msg[0] == '\0' || c.doc || c.user) abort();
        broker_click_body_free(&c);
        return 0;
    }
    if (!c.user || !c.query || !c.doc || !ps_utf8_valid(c.user, strlen(c.user))) abort();
    char id[24];
    snprintf(id, sizeof id, "%llu", (unsigned long long)c.sticker_id);
    json_t *j = json_pack("{s:s, s:s, s:s}", "user", c.user, "sticker_id", id, "query", c.query);
    char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (!body) abort();
    if (broker_click_parse(body, strlen(body), &again, &err)) abort();
    if (strcmp(again.user, c.user) || strcmp(again.query, c.query) ||
        again.sticker_id != c.sticker_id)
        abort();
    broker_click_body_free(&again);
    free(body);
    json_decref(j);
    broker_click_body_free(&c);
    return 0;
}
