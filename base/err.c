/*
 * err.c — the lookups behind PS_ERRNO_MAP and the ps_err helpers.
 */
#include "ps/err.h"

#include <stdio.h>
#include <string.h>

const char *ps_strerror(int code)
{
    switch (code) {
    case 0:
        return "ok";
#define PS__ERR_MSG(name, val, c, http, msg)                                                       \
    case val:                                                                                      \
        return msg;
        PS_ERRNO_MAP(PS__ERR_MSG)
#undef PS__ERR_MSG
    }
    return "unknown error";
}

const char *ps_errname(int code)
{
    switch (code) {
    case 0:
        return "ok";
#define PS__ERR_NAME(name, val, c, http, msg)                                                      \
    case val:                                                                                      \
        return c;
        PS_ERRNO_MAP(PS__ERR_NAME)
#undef PS__ERR_NAME
    }
    return "internal";
}

int ps_err_http_status(int code)
{
    switch (code) {
    case 0:
        return 200;
#define PS__ERR_HTTP(name, val, c, http, msg)                                                      \
    case val:                                                                                      \
        return http;
        PS_ERRNO_MAP(PS__ERR_HTTP)
#undef PS__ERR_HTTP
    }
    return 500;
}

int ps_err_set(ps_err *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

void ps_err_clear(ps_err *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}

void ps_err_prefix(ps_err *err, const char *fmt, ...)
{
    char head[128];
    va_list ap;
    if (!err) return;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    size_t hl = strlen(head), ml = strlen(err->msg), cap = sizeof err->msg;
    if (hl + 2 + ml >= cap) ml = cap - 1 - hl - 2; /* hl < 128, so this stays positive */
    memmove(err->msg + hl + 2, err->msg, ml);
    memcpy(err->msg, head, hl);
    err->msg[hl] = ':';
    err->msg[hl + 1] = ' ';
    err->msg[hl + 2 + ml] = '\0';
}
