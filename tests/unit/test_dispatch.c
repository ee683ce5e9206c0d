/*
 * test_dispatch.c — the request dispatcher of every ZeroMQ door (ps/dispatch.h): a frame is
 * routed to the handler of its body; a frame that does not decode, a body the door does not
 * take, a refusal by the door's admit check and a handler's failure are each answered with an
 * Error carrying the right code and the request's id (found in the frame when it does not
 * decode); a handler that answers later gets no reply written for it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "ps/dispatch.h"
#include "ps/log.h"
#include "ps/wire.h"

enum { TAG_HEALTH = 1, TAG_STICKER, TAG_CLICK, TAG_OTHER = 9 };

typedef struct state {
    int calls[4];
    int admit_rc; /* what admit answers */
} state;

static int on_health(void *st, const Persrv__Envelope *env, uint8_t **reply, size_t *reply_len,
                     ps_err *err)
{
    ((state *)st)->calls[0]++;
    ps_wire_health h = {.shard = 3, .nshards = 4, .ready = 1};
    return ps_wire_encode_health_reply(env->request_id, &h, reply, reply_len, err);
}

/* Builds part of an answer, then fails: the dispatcher must drop the part. */
static int on_sticker(void *st, const Persrv__Envelope *env, uint8_t **reply, size_t *reply_len,
                      ps_err *err)
{
    ((state *)st)->calls[1]++;
    *reply = malloc(16);
    *reply_len = 16;
    return ps_err_set(err, PS_ENOTFOUND, "sticker %llu: not here",
                      (unsigned long long)env->get_sticker->id);
}

static int on_click(void *st, const Persrv__Envelope *env, uint8_t **reply, size_t *reply_len,
                    ps_err *err)
{
    (void)env, (void)reply, (void)reply_len, (void)err;
    ((state *)st)->calls[2]++;
    return PS_DISPATCH_LATER;
}

static int admit(void *st, const Persrv__Envelope *env, ps_err *err)
{
    (void)env;
    int rc = ((state *)st)->admit_rc;
    return rc ? ps_err_set(err, rc, "no key") : 0;
}

static const ps_route routes[] = {
    {PERSRV__ENVELOPE__BODY_HEALTH, on_health, TAG_HEALTH},
    {PERSRV__ENVELOPE__BODY_GET_STICKER, on_sticker, TAG_STICKER},
    {PERSRV__ENVELOPE__BODY_CLICK, on_click, TAG_CLICK},
};

static const ps_door door = {.component = "test",
                             .name = "the test door",
                             .routes = routes,
                             .nroutes = 3,
                             .other_tag = TAG_OTHER,
                             .admit = admit,
                             .client_error_level = PS_LOG_DEBUG};

/* Dispatch buf; expect rc 0 and return the decoded reply. */
static Persrv__Envelope *dispatch(state *st, const void *buf, size_t len, ps_dispatch_result *res)
{
    uint8_t *reply = (uint8_t *)1;
    size_t reply_len = 7;
    assert_int_equal(ps_dispatch(&door, st, 0, buf, len, &reply, &reply_len, res), 0);
    assert_non_null(reply);
    Persrv__Envelope *env = NULL;
    ps_err err = {0, ""};
    if (ps_wire_decode(reply, reply_len, 0, &env, &err)) fail_msg("reply: %s", err.msg);
    free(reply);
    return env;
}

static void expect_error(Persrv__Envelope *env, const char *code, const char *needle,
                         uint64_t request_id)
{
    assert_int_equal(env->body_case, PERSRV__ENVELOPE__BODY_ERROR);
    assert_string_equal(env->error->code, code);
    if (!strstr(env->error->message, needle))
        fail_msg("error message \"%s\" lacks \"%s\"", env->error->message, needle);
    assert_int_equal(env->request_id, request_id);
    ps_wire_free(env);
}

static void test_routes_by_body(void **unused)
{
    (void)unused;
    state st = {0};
    uint8_t *buf;
    size_t len;
    ps_err err = {0, ""};
    ps_dispatch_result res;
    assert_int_equal(ps_wire_encode_health(77, 100, &buf, &len, &err), 0);
    Persrv__Envelope *r = dispatch(&st, buf, len, &res);
    free(buf);
    assert_int_equal(r->body_case, PERSRV__ENVELOPE__BODY_HEALTH_REPLY);
    assert_int_equal(r->request_id, 77);
    assert_int_equal(r->health_reply->shard, 3);
    ps_wire_free(r);
    assert_int_equal(st.calls[0], 1);
    assert_int_equal(res.tag, TAG_HEALTH);
    assert_int_equal(res.code, 0);
    assert_int_equal(res.request_id, 77);
}

static void test_handler_error_echoes_id(void **unused)
{
    (void)unused;
    state st = {0};
    uint8_t *buf;
    size_t len;
    ps_err err = {0, ""};
    ps_dispatch_result res;
    assert_int_equal(ps_wire_encode_get_sticker(1234567890123ull, 100, 42, &buf, &len, &err), 0);
    expect_error(dispatch(&st, buf, len, &res), "not_found", "sticker 42: not here",
                 1234567890123ull);
    free(buf);
    assert_int_equal(res.tag, TAG_STICKER);
    assert_int_equal(res.code, PS_ENOTFOUND);
}

static void test_undecodable_frame_peeks_id(void **unused)
{
    (void)unused;
    state st = {0};
    uint8_t *buf;
    size_t len;
    ps_err err = {0, ""};
    ps_dispatch_result res;
    /* a valid health request with its last byte cut: request_id (field 2) still readable */
    assert_int_equal(ps_wire_encode_health(99, 100, &buf, &len, &err), 0);
    Persrv__Envelope *r = dispatch(&st, buf, len - 1, &res);
    assert_int_equal(r->body_case, PERSRV__ENVELOPE__BODY_ERROR);
    assert_int_equal(r->request_id, 99);
    ps_wire_free(r);
    free(buf);
    assert_int_equal(res.tag, TAG_OTHER);
    assert_int_not_equal(res.code, 0);
    /* garbage: no id to find */
    uint8_t junk[16];
    memset(junk, 0xff, sizeof junk);
    expect_error(dispatch(&st, junk, sizeof junk, &res), "parse_error", "frame", 0);
    assert_int_equal(st.calls[0] + st.calls[1] + st.calls[2], 0);
}

static void test_body_not_taken(void **unused)
{
    (void)unused;
    state st = {0};
    uint8_t *buf;
    size_t len;
    ps_err err = {0, ""};
    ps_dispatch_result res;
    assert_int_equal(ps_wire_encode_query(5, 100, "hi", 2, NULL, 10, 0, &buf, &len, &err), 0);
    expect_error(dispatch(&st, buf, len, &res), "invalid_argument",
                 "the test door does not take query messages", 5);
    free(buf);
    assert_int_equal(res.tag, TAG_OTHER);
}

static void test_admit_refuses(void **unused)
{
    (void)unused;
    state st = {.admit_rc = PS_EUNAUTH};
    uint8_t *buf;
    size_t len;
    ps_err err = {0, ""};
    ps_dispatch_result res;
    assert_int_equal(ps_wire_encode_health(8, 100, &buf, &len, &err), 0);
    expect_error(dispatch(&st, buf, len, &res), ps_errname(PS_EUNAUTH), "no key", 8);
    free(buf);
    assert_int_equal(st.calls[0], 0);
    assert_int_equal(res.tag, TAG_HEALTH);
    assert_int_equal(res.code, PS_EUNAUTH);
}

static void test_later_writes_no_reply(void **unused)
{
    (void)unused;
    state st = {0};
    uint8_t *buf, *reply = (uint8_t *)1;
    size_t len, reply_len = 3;
    ps_err err = {0, ""};
    ps_dispatch_result res;
    assert_int_equal(ps_wire_encode_click(6, 100, "u1", 9, "q", "c-1", &buf, &len, &err), 0);
    assert_int_equal(ps_dispatch(&door, &st, 0, buf, len, &reply, &reply_len, &res),
                     PS_DISPATCH_LATER);
    free(buf);
    assert_null(reply);
    assert_int_equal(reply_len, 0);
    assert_int_equal(st.calls[2], 1);
    assert_int_equal(res.tag, TAG_CLICK);
    assert_int_equal(res.request_id, 6);
}

int main(void)
{
    ps_log_level = PS_LOG_OFF;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routes_by_body),
        cmocka_unit_test(test_handler_error_echoes_id),
        cmocka_unit_test(test_undecodable_frame_peeks_id),
        cmocka_unit_test(test_body_not_taken),
        cmocka_unit_test(test_admit_refuses),
        cmocka_unit_test(test_later_writes_no_reply),
    };
    assert_string_equal(ps_body_name(PERSRV__ENVELOPE__BODY_SEARCH), "search");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
