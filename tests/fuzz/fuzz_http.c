/*
 * fuzz_http.c — fuzz target for what the broker's HTTP door reads from a request line and its
 * headers (broker/parse.c): the request target as libevent parses it (evhttp_uri_parse_with_flags
 * with EVHTTP_URI_NONCONFORMANT, as evhttp does), the endpoint its path names, the /v1/search
 * query string, a /v1/stickers/{id} id, and an Authorization header value.
 *
 * Input: byte 0 is max-k (0: the default 100), the rest is the request target; the same bytes
 * (up to a NUL) are also taken as an Authorization header value.
 *
 * Any input must give 0 or a negative PS_E* code with a message, never a crash or a leak. A
 * query string that parses is rendered again from its decoded values (evhttp_uriencode) and
 * must parse to the same values; a k given is within 1..max-k; an id that parses is the decimal
 * number of its digits; a bearer key lies inside the header value.
 */
#include <event2/http.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"

static void check_err(int rc, const ps_err *err)
{
    if (rc > 0 || (rc && (err->code != rc || err->msg[0] == '\0'))) abort();
}

/* Append "&name=<encoded value>" for every value p holds. */
static char *render(const broker_search_params *p)
{
    const char *const *names = broker_search_param_names;
    size_t cap = 1, n = 0;
    char *enc[BROKER_NPARAMS] = {0};
    for (int i = 0; i < BROKER_NPARAMS; i++)
        if (p->v[i]) {
            if (!(enc[i] = evhttp_uriencode(p->v[i], (ev_ssize_t)p->len[i], 1))) abort();
            cap += strlen(enc[i]) + 16;
        }
    char *s = malloc(cap);
    if (!s) abort();
    s[0] = '\0';
    for (int i = 0; i < BROKER_NPARAMS; i++)
        if (enc[i]) {
            n += (size_t)snprintf(s + n, cap - n, "%s%s=%s", n ? "&" : "", names[i], enc[i]);
            free(enc[i]);
        }
    return s;
}

static void fuzz_query(const char *query, uint32_t max_k)
{
    broker_search_params p, again;
    broker_query q, q2;
    ps_err err = {0, ""};
    int rc = broker_search_parse(query, max_k, &p, &q, &err);
    check_err(rc, &err);
    if (!rc) {
        /* k as given, within 1..max-k; absent, the default (which core.c checks against
         * max-k) */
        if (p.v[BROKER_P_K] ? q.k < 1 || q.k > max_k : q.k != BROKER_DEFAULT_K) abort();
        if (q.explain != 0 && q.explain != 1) abort();
        if ((q.q != p.v[BROKER_P_Q]) || (q.user != p.v[BROKER_P_USER])) abort();
        for (int i = 0; i < BROKER_NPARAMS; i++)
            if (p.v[i] && p.v[i][p.len[i]] != '\0') abort();
        char *s = render(&p);
        if (broker_search_parse(s, max_k, &again, &q2, &err)) abort();
        for (int i = 0; i < BROKER_NPARAMS; i++)
            if (!p.v[i] != !again.v[i] ||
                (p.v[i] && (p.len[i] != again.len[i] || memcmp(p.v[i], again.v[i], p.len[i]))))
                abort();
        if (q2.k != q.k || q2.explain != q.explain) abort();
        broker_search_params_free(&again);
        free(s);
    }
    broker_search_params_free(&p);
}

static void fuzz_sticker_id(const char *idtext)
{
    uint64_t id;
    size_t n = strlen(idtext);
    if (broker_parse_uint(idtext, n, 0, UINT64_MAX, &id)) return;
    uint64_t v = 0; /* the digits' value, computed again the slow way */
    for (size_t i = 0; i < n; i++) {
        if (idtext[i] < '0' || idtext[i] > '9') abort();
        v = v * 10 + (uint64_t)(idtext[i] - '0');
    }
    if (v != id) abort();
}

static void fuzz_bearer(const char *header)
{
    size_t n;
    const char *key = broker_bearer_key(header, &n);
    if (!key) {
        if (n) abort();
        return;
    }
    size_t hl = strlen(header);
    if (key < header + 7 || key + n > header + hl) abort();
    if (n && (key[0] == ' ' || key[n - 1] == ' ' || key[n - 1] == '\t')) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint32_t max_k = data[0] ? data[0] : 100;
    char *target = malloc(size);
    if (!target) abort();
    memcpy(target, data + 1, size - 1);
    target[size - 1] = '\0';

    fuzz_bearer(target);
    struct evhttp_uri *uri = evhttp_uri_parse_with_flags(target, EVHTTP_URI_NONCONFORMANT);
    if (uri) {
        const char *path = evhttp_uri_get_path(uri);
        const char *query = evhttp_uri_get_query(uri);
        if (!path) path = "";
        int ep = broker_http_endpoint(path);
        if (ep < BROKER_EP_SEARCH || ep > BROKER_EP_OTHER) abort();
        if (ep == BROKER_EP_STICKER) fuzz_sticker_id(path + strlen(BROKER_STICKERS_PREFIX));
        fuzz_query(query, max_k); /* whatever the path: the parser must cope */
        evhttp_uri_free(uri);
    }
    fuzz_query(target, max_k); /* the raw bytes as a query string too */
    free(target);
    return 0;
}
