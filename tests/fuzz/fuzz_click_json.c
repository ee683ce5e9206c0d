/*
 * fuzz_click_json.c — fuzz target for the body of the broker's POST /v1/click
 * (broker_click_parse, broker/parse.c): {"user", "sticker_id", "query", "click_id"} as any HTTP
 * client may send it, then the check broker_core_click runs on a click id
 * (ps_wire_check_click_id).
 *
 * Any input must give 0 or a negative PS_E* code with a message, never a crash or a leak. A body
 * that parses gives a user that is valid UTF-8 without a NUL, a query string, the sticker id the
 * JSON holds, and a click id that is NULL (absent or null) or non-empty without a NUL; a click id
 * the wire check accepts is 1..PS_WIRE_MAX_CLICK_ID bytes of 0x21..0x7e. A body rebuilt from
 * those values (jansson) must parse to the same ones.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "ps/wire.h"

static void check_click_id(const char *id)
{
    ps_err err = {0, ""};
    if (!id) return;
    size_t n = strlen(id);
    if (n == 0 || !ps_utf8_valid(id, n)) abort();
    int rc = ps_wire_check_click_id(id, "click_id", &err);
    if (rc) {
        if ((rc != PS_EINVAL && rc != PS_ETOOBIG) || err.code != rc || !err.msg[0]) abort();
        return;
    }
    if (n > PS_WIRE_MAX_CLICK_ID) abort();
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)id[i] < 0x21 || (unsigned char)id[i] > 0x7e) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    broker_click_body c, again;
    ps_err err = {0, ""};
    int rc = broker_click_parse((const char *)data, size, &c, &err);
    if (rc) {
        if (rc > 0 || err.code != rc || err.msg[0] == '\0' || c.doc || c.user || c.click_id)
            abort();
        broker_click_body_free(&c);
        return 0;
    }
    if (!c.user || !c.query || !c.doc || !ps_utf8_valid(c.user, strlen(c.user))) abort();
    check_click_id(c.click_id);
    char id[24];
    snprintf(id, sizeof id, "%llu", (unsigned long long)c.sticker_id);
    json_t *j = json_pack("{s:s, s:s, s:s}", "user", c.user, "sticker_id", id, "query", c.query);
    if (!j || (c.click_id && json_object_set_new(j, "click_id", json_string(c.click_id)))) abort();
    char *body = json_dumps(j, JSON_COMPACT);
    if (!body) abort();
    if (broker_click_parse(body, strlen(body), &again, &err)) abort();
    if (strcmp(again.user, c.user) || strcmp(again.query, c.query) ||
        again.sticker_id != c.sticker_id || !again.click_id != !c.click_id ||
        (c.click_id && strcmp(again.click_id, c.click_id)))
        abort();
    broker_click_body_free(&again);
    free(body);
    json_decref(j);
    broker_click_body_free(&c);
    return 0;
}
