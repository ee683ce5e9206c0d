/*
 * dispatch.c — the request dispatcher of every ZeroMQ door (dispatch.h).
 */
#include "ps/dispatch.h"

#include <stdio.h>
#include <stdlib.h>

#include "ps/log.h"
#include "ps/wire.h"

const char *ps_body_name(Persrv__Envelope__BodyCase body)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field(&persrv__envelope__descriptor, (unsigned)body);
    return f ? f->name : "unknown";
}

static const ps_route *route_of(const ps_door *door, Persrv__Envelope__BodyCase body)
{
    for (size_t i = 0; i < door->nroutes; i++)
        if (door->routes[i].body == body) return &door->routes[i];
    return NULL;
}

int ps_dispatch(const ps_door *door, void *state, size_t max_frame, const void *req, size_t len,
                uint8_t **reply, size_t *reply_len, ps_dispatch_result *res)
{
    Persrv__Envelope *env = NULL;
    ps_err err = {0, ""};
    ps_dispatch_result r = {.tag = door->other_tag, .code = 0, .request_id = 0};
    char trace[PS_WIRE_MAX_TRACE + 1] = "-";
    int rc;

    *reply = NULL;
    *reply_len = 0;
    if ((rc = ps_wire_decode(req, len, max_frame, &env, &err)) != 0) {
        r.request_id = ps_wire_peek_request_id(req, len);
    } else {
        const ps_route *route = route_of(door, env->body_case);
        r.request_id = env->request_id;
        snprintf(trace, sizeof trace, "%s", PS_WIRE_TRACE(env));
        if (!route)
            rc = ps_err_set(&err, PS_EINVAL, "body: %s does not take %s messages", door->name,
                            ps_body_name(env->body_case));
        else {
            r.tag = route->tag;
            if (!door->admit || !(rc = door->admit(state, env, &err)))
                rc = route->fn(state, env, reply, reply_len, &err);
        }
    }
    ps_wire_free(env);
    if (rc == PS_DISPATCH_LATER) {
        if (res) *res = r;
        return PS_DISPATCH_LATER;
    }
    if (rc == 0) {
        if (res) *res = r;
        return 0;
    }

    free(*reply); /* a handler that failed after building part of its answer */
    *reply = NULL;
    *reply_len = 0;
    r.code = rc;
    int status = ps_err_http_status(rc);
    int level = rc == PS_ENOMEM || status == 500 ? PS_LOG_ERROR
                : status >= 500                  ? PS_LOG_WARN
                                                 : door->client_error_level;
    ps_log(level, door->component, "request_failed",
           "request_id=%llu trace=%s bytes=%zu code=%s msg=\"%.200s\"",
           (unsigned long long)r.request_id, trace, len, ps_errname(rc), err.msg);
    ps_err eerr = {0, ""};
    int erc = ps_wire_encode_error(r.request_id, rc, err.msg, reply, reply_len, &eerr);
    if (res) *res = r;
    if (erc) {
        ps_log(PS_LOG_ERROR, door->component, "reply_failed", "request_id=%llu code=%s msg=\"%s\"",
               (unsigned long long)r.request_id, ps_errname(erc), eerr.msg);
        return PS_ENOMEM;
    }
    return 0;
}
