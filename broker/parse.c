/*
 * parse.c — the broker's parsers of outside input that need no socket and no event loop, so
 * that tests/fuzz can drive them alone: the HTTP door's paths, the /v1/search query string,
 * the POST /v1/click body and the Authorization header (http.c), and the topology and address
 * settings (main.c, pool.c).
 *
 * Each returns 0 or a PS_E* code with a message naming the parameter or setting at fault; http.c
 * turns that into the JSON error shape with ps_err_http_status.
 */
#include <errno.h>
#include <event2/http.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "broker.h"
#include "ps/search.h"
#include "ps/wire.h"

/* ---- numbers and paths ------------------------------------------------------------------- */

int broker_parse_uint(const char *s, size_t len, uint64_t lo, uint64_t hi, uint64_t *out)
{
    if (len == 0 || len > 20) return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    if (v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int broker_http_endpoint(const char *path)
{
    if (!strcmp(path, "/v1/search")) return BROKER_EP_SEARCH;
    if (!strcmp(path, "/v1/msearch")) return BROKER_EP_MSEARCH;
    if (!strcmp(path, "/openapi.json")) return BROKER_EP_OPENAPI;
    if (!strcmp(path, "/v1/click")) return BROKER_EP_CLICK;
    if (!strncmp(path, BROKER_STICKERS_PREFIX, strlen(BROKER_STICKERS_PREFIX)))
        return BROKER_EP_STICKER;
    if (!strcmp(path, "/healthz")) return BROKER_EP_HEALTHZ;
    if (!strcmp(path, "/readyz")) return BROKER_EP_READYZ;
    if (!strcmp(path, "/metrics")) return BROKER_EP_METRICS;
    if (!strcmp(path, "/")) return BROKER_EP_PAGE;
    if (!strncmp(path, BROKER_IMAGES_PREFIX, strlen(BROKER_IMAGES_PREFIX))) return BROKER_EP_IMAGE;
    return BROKER_EP_OTHER;
}

/* ---- the /v1/search parameters ----------------------------------------------------------- */

const char *const broker_search_param_names[BROKER_NPARAMS] = {
    "q", "user", "k", "explain", "exclude", "offset", "timeout", "allow_partial"};

void broker_search_params_free(broker_search_params *p)
{
    for (int i = 0; i < BROKER_NPARAMS; i++) {
        free(p->v[i]);
        p->v[i] = NULL;
    }
}

static int param_of(const char *key, size_t klen)
{
    for (int i = 0; i < BROKER_NPARAMS; i++)
        if (strlen(broker_search_param_names[i]) == klen &&
            !memcmp(key, broker_search_param_names[i], klen))
            return i;
    return -1;
}

/* Name an unknown parameter in an error, ASCII-safe and cut short. */
static int unknown_param(const char *key, size_t klen, ps_err *err)
{
    char name[40];
    size_t n = klen < sizeof name - 1 ? klen : sizeof name - 1;
    for (size_t i = 0; i < n; i++)
        name[i] = (unsigned char)key[i] < 0x20 || (unsigned char)key[i] >= 0x7f ? '?' : key[i];
    name[n] = '\0';
    return ps_err_set(err, PS_EINVAL,
                      "%s%s: not a search parameter (q, user, k, offset, exclude, explain, "
                      "timeout, allow_partial)",
                      name, klen > n ? "..." : "");
}

/* Split the raw query string into p (values decoded, '+' a space). */
static int params_split(const char *query, broker_search_params *p, ps_err *err)
{
    while (*query) {
        size_t n = strcspn(query, "&");
        const char *eq = memchr(query, '=', n);
        size_t klen = eq ? (size_t)(eq - query) : n;
        if (n == 0) { /* "a=1&&b=2": an empty pair is nothing */
            query++;
            continue;
        }
        /* names are compared as sent: no search parameter's name needs encoding */
        int which = param_of(query, klen);
        if (which < 0) return unknown_param(query, klen, err);
        if (p->v[which])
            return ps_err_set(err, PS_EINVAL, "%s: given more than once",
                              broker_search_param_names[which]);
        size_t vlen = eq ? n - klen - 1 : 0;
        char *raw = strndup(eq ? eq + 1 : "", vlen);
        if (!raw) return ps_err_set(err, PS_ENOMEM, "out of memory for parameters");
        p->v[which] = evhttp_uridecode(raw, 1, &p->len[which]);
        free(raw);
        if (!p->v[which]) return ps_err_set(err, PS_ENOMEM, "out of memory for parameters");
        query += n;
        if (*query == '&') query++;
    }
    return 0;
}

/* "1", "true", "0" or "false" (the len bytes at v, NUL-terminated; a NUL inside is none). */
static int parse_bool(const char *v, size_t len, int *out)
{
    if (strlen(v) != len) return -1;
    if (!strcmp(v, "1") || !strcmp(v, "true"))
        *out = 1;
    else if (!strcmp(v, "0") || !strcmp(v, "false"))
        *out = 0;
    else
        return -1;
    return 0;
}

/* "150", "150ms" or "2s" → milliseconds in 1..BROKER_MAX_TIMEOUT. */
static int parse_timeout(const char *v, size_t len, uint32_t *ms)
{
    uint64_t scale = 1, t;
    if (strlen(v) != len) return -1;
    if (len > 2 && !strcmp(v + len - 2, "ms"))
        len -= 2;
    else if (len > 1 && v[len - 1] == 's')
        len -= 1, scale = 1000;
    if (broker_parse_uint(v, len, 1, BROKER_MAX_TIMEOUT, &t) || t * scale > BROKER_MAX_TIMEOUT)
        return -1;
    *ms = (uint32_t)(t * scale);
    return 0;
}

/* "id,id,..." into p->exclude (repeats dropped). */
static int parse_exclude(broker_search_params *p, size_t *n, ps_err *err)
{
    const char *s = p->v[BROKER_P_EXCLUDE], *end = s + p->len[BROKER_P_EXCLUDE];
    *n = 0;
    while (s < end) {
        const char *c = memchr(s, ',', (size_t)(end - s));
        size_t l = c ? (size_t)(c - s) : (size_t)(end - s);
        uint64_t id;
        if (broker_parse_uint(s, l, 0, UINT64_MAX, &id))
            return ps_err_set(err, PS_EINVAL,
                              "exclude: must be sticker ids (decimal) separated by commas");
        size_t i = 0;
        while (i < *n && p->exclude[i] != id) i++;
        if (i == *n) {
            if (*n == BROKER_MAX_EXCLUDE)
                return ps_err_set(err, PS_ETOOBIG, "exclude: more than %d ids", BROKER_MAX_EXCLUDE);
            p->exclude[(*n)++] = id;
        }
        s += l + (c ? 1 : 0);
        if (c && s == end)
            return ps_err_set(err, PS_EINVAL, "exclude: an empty id after the last comma");
    }
    return 0;
}

int broker_search_check(broker_search_params *p, uint32_t max_k, broker_query *q, ps_err *err)
{
    memset(q, 0, sizeof *q);
    uint64_t k = BROKER_DEFAULT_K, offset = 0;
    if (p->v[BROKER_P_K] && broker_parse_uint(p->v[BROKER_P_K], p->len[BROKER_P_K], 1, max_k, &k))
        return ps_err_set(err, PS_EINVAL, "k: must be an integer in 1..%u", max_k);
    if (p->v[BROKER_P_OFFSET] && broker_parse_uint(p->v[BROKER_P_OFFSET], p->len[BROKER_P_OFFSET],
                                                   0, PS_SEARCH_MAX_R, &offset))
        return ps_err_set(err, PS_EINVAL, "offset: must be an integer in 0..%d", PS_SEARCH_MAX_R);
    int explain = 0, partial = 1;
    if (p->v[BROKER_P_EXPLAIN] &&
        parse_bool(p->v[BROKER_P_EXPLAIN], p->len[BROKER_P_EXPLAIN], &explain))
        return ps_err_set(err, PS_EINVAL, "explain: must be 0, 1, true or false");
    if (p->v[BROKER_P_ALLOW_PARTIAL] &&
        parse_bool(p->v[BROKER_P_ALLOW_PARTIAL], p->len[BROKER_P_ALLOW_PARTIAL], &partial))
        return ps_err_set(err, PS_EINVAL, "allow_partial: must be 0, 1, true or false");
    uint32_t timeout = 0;
    if (p->v[BROKER_P_TIMEOUT] &&
        parse_timeout(p->v[BROKER_P_TIMEOUT], p->len[BROKER_P_TIMEOUT], &timeout))
        return ps_err_set(err, PS_EINVAL,
                          "timeout: must be 1..%d ms, as \"150\", \"150ms\" or \"2s\"",
                          BROKER_MAX_TIMEOUT);
    size_t nex = 0;
    int rc;
    if (p->v[BROKER_P_EXCLUDE] && (rc = parse_exclude(p, &nex, err))) return rc;
    q->q = p->v[BROKER_P_Q];
    q->qlen = p->len[BROKER_P_Q];
    q->user = p->v[BROKER_P_USER];
    q->user_len = p->len[BROKER_P_USER];
    q->k = (uint32_t)k;
    q->explain = explain;
    q->exclude = p->exclude;
    q->nexclude = nex;
    q->offset = (uint32_t)offset;
    q->timeout_ms = timeout;
    q->allow_partial = partial;
    return 0;
}

int broker_search_parse(const char *query, uint32_t max_k, broker_search_params *p, broker_query *q,
                        ps_err *err)
{
    memset(p->v, 0, sizeof p->v);
    memset(p->len, 0, sizeof p->len);
    memset(q, 0, sizeof *q);
    int rc = query ? params_split(query, p, err) : 0;
    if (rc) return rc;
    return broker_search_check(p, max_k, q, err);
}

/* p->v[i] = a copy of the n bytes at s. */
static int set_value(broker_search_params *p, int i, const char *s, size_t n, ps_err *err)
{
    if (!(p->v[i] = malloc(n + 1))) return ps_err_set(err, PS_ENOMEM, "out of memory for a body");
    memcpy(p->v[i], s, n);
    p->v[i][n] = '\0';
    p->len[i] = n;
    return 0;
}

int broker_search_parse_json(const json_t *obj, const char *at, uint32_t max_k,
                             broker_search_params *p, broker_query *q, ps_err *err)
{
    memset(p->v, 0, sizeof p->v);
    memset(p->len, 0, sizeof p->len);
    memset(q, 0, sizeof *q);
    if (!json_is_object(obj)) return ps_err_set(err, PS_EINVAL, "%s: must be a JSON object", at);
    const char *key;
    json_t *v;
    int rc;
    json_object_foreach((json_t *)obj, key, v)
    {
        int i = param_of(key, strlen(key));
        const char *name = i >= 0 ? broker_search_param_names[i] : NULL;
        char num[32];
        if (i < 0) {
            ps_err e;
            unknown_param(key, strlen(key), &e);
            return ps_err_set(err, PS_EINVAL, "%s.%s", at, e.msg);
        }
        if (json_is_null(v)) continue; /* null: as if absent */
        switch (i) {
        case BROKER_P_Q:
        case BROKER_P_USER:
            if (!json_is_string(v))
                return ps_err_set(err, PS_EINVAL, "%s.%s: must be a string", at, name);
            rc = set_value(p, i, json_string_value(v), json_string_length(v), err);
            break;
        case BROKER_P_K:
        case BROKER_P_OFFSET:
            if (!json_is_integer(v) || json_integer_value(v) < 0)
                return ps_err_set(err, PS_EINVAL, "%s.%s: must be an integer >= 0", at, name);
            snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v));
            rc = set_value(p, i, num, strlen(num), err);
            break;
        case BROKER_P_EXPLAIN:
        case BROKER_P_ALLOW_PARTIAL:
            if (!json_is_boolean(v))
                return ps_err_set(err, PS_EINVAL, "%s.%s: must be true or false", at, name);
            rc = set_value(p, i, json_is_true(v) ? "1" : "0", 1, err);
            break;
        case BROKER_P_TIMEOUT:
            if (json_is_integer(v) && json_integer_value(v) >= 0) {
                snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v));
                rc = set_value(p, i, num, strlen(num), err);
            } else if (json_is_string(v)) {
                rc = set_value(p, i, json_string_value(v), strlen(json_string_value(v)), err);
            } else {
                return ps_err_set(err, PS_EINVAL,
                                  "%s.timeout: must be an integer (ms) or a string (\"150ms\")",
                                  at);
            }
            break;
        default: { /* exclude: an array of ids, decimal strings or integers */
            if (!json_is_array(v))
                return ps_err_set(err, PS_EINVAL, "%s.exclude: must be an array of sticker ids",
                                  at);
            size_t n = json_array_size(v);
            if (n > BROKER_MAX_EXCLUDE)
                return ps_err_set(err, PS_ETOOBIG, "%s.exclude: more than %d ids", at,
                                  BROKER_MAX_EXCLUDE);
            char *buf = malloc(n * 22 + 1), *w = buf;
            if (!buf) return ps_err_set(err, PS_ENOMEM, "out of memory for a body");
            for (size_t e = 0; e < n; e++) {
                json_t *id = json_array_get(v, e);
                uint64_t x;
                if (json_is_integer(id) && json_integer_value(id) >= 0) {
                    x = (uint64_t)json_integer_value(id);
                } else if (!json_is_string(id) ||
                           broker_parse_uint(json_string_value(id), json_string_length(id), 0,
                                             UINT64_MAX, &x)) {
                    free(buf);
                    return ps_err_set(err, PS_EINVAL,
                                      "%s.exclude[%zu]: must be a sticker id (an integer >= 0 or "
                                      "a decimal string)",
                                      at, e);
                }
                w += sprintf(w, "%s%llu", e ? "," : "", (unsigned long long)x);
            }
            p->v[i] = buf;
            p->len[i] = (size_t)(w - buf);
            rc = 0;
            break;
        }
        }
        if (rc) return rc;
    }
    if ((rc = broker_search_check(p, max_k, q, err))) {
        /* name the object the value came from */
        if (strncmp(err->msg, at, strlen(at)) != 0) {
            ps_err e = *err;
            ps_err_set(err, e.code, "%s.%s", at, e.msg);
        }
        return rc;
    }
    return 0;
}

/* ---- the POST /v1/click body ------------------------------------------------------------- */

void broker_click_body_free(broker_click_body *c)
{
    json_decref(c->doc);
    memset(c, 0, sizeof *c);
}

json_t *broker_json_object(const char *body, size_t n, const char *shape, ps_err *err)
{
    if (!ps_utf8_valid(body, n)) {
        ps_err_set(err, PS_EUTF8, "body: not valid UTF-8 (JSON is UTF-8)");
        return NULL;
    }
    json_error_t jerr;
    json_t *j = json_loadb(body, n, JSON_REJECT_DUPLICATES, &jerr);
    if (!j) {
        ps_err_set(err, PS_EPARSE, "body: %s at byte %d (%s)", jerr.text, jerr.position, shape);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        ps_err_set(err, PS_EINVAL, "body: must be a JSON object");
        return NULL;
    }
    return j;
}

int broker_click_parse(const char *body, size_t n, broker_click_body *c, ps_err *err)
{
    memset(c, 0, sizeof *c);
    ps_err local = {0, ""};
    if (!err) err = &local;
    json_t *j = broker_json_object(body, n, "a JSON object with user, sticker_id, query", err);
    if (!j) return err->code;
    int rc = 0;
    json_t *ju = json_object_get(j, "user"), *js = json_object_get(j, "sticker_id"),
           *jq = json_object_get(j, "query"), *jc = json_object_get(j, "click_id");
    uint64_t id = 0;
    if (!json_is_string(ju)) {
        rc = ps_err_set(err, PS_EINVAL, "user: required, a string");
    } else if (!(json_is_string(js) &&
                 !broker_parse_uint(json_string_value(js), json_string_length(js), 0, UINT64_MAX,
                                    &id)) &&
               !(json_is_integer(js) && json_integer_value(js) >= 0)) {
        rc = ps_err_set(err, PS_EINVAL,
                        "sticker_id: required, an unsigned 64-bit integer (a decimal string for "
                        "ids over 2^63)");
    } else if (jq && !json_is_string(jq)) {
        rc = ps_err_set(err, PS_EINVAL, "query: must be a string");
    } else if (jc && !json_is_null(jc) &&
               !(json_is_string(jc) && strlen(json_string_value(jc)) == json_string_length(jc) &&
                 json_string_length(jc) > 0)) {
        rc = ps_err_set(err, PS_EINVAL,
                        "click_id: must be a non-empty string (1..%d printable ASCII bytes) or "
                        "absent",
                        PS_WIRE_MAX_CLICK_ID);
    } else if (strlen(json_string_value(ju)) != json_string_length(ju)) {
        rc = ps_err_set(err, PS_EINVAL, "user: contains a NUL byte");
    }
    if (rc) {
        json_decref(j);
        return rc;
    }
    if (json_is_integer(js)) id = (uint64_t)json_integer_value(js);
    c->doc = j;
    c->user = json_string_value(ju);
    c->sticker_id = id;
    c->query = jq ? json_string_value(jq) : "";
    c->click_id = json_is_string(jc) ? json_string_value(jc) : NULL;
    return 0;
}

/* ---- the Authorization header ------------------------------------------------------------ */

const char *broker_bearer_key(const char *header, size_t *n)
{
    *n = 0;
    if (!header || strncasecmp(header, "Bearer ", 7) != 0) return NULL;
    const char *key = header + 7;
    while (*key == ' ') key++;
    size_t len = strlen(key);
    while (len && (key[len - 1] == ' ' || key[len - 1] == '\t')) len--;
    *n = len;
    return key;
}

/* ---- settings: the topology, a listen address -------------------------------------------- */

void broker_topology_free(broker_topology *t)
{
    free(t->buf);
    free(t->endpoint);
    free(t->first);
    memset(t, 0, sizeof *t);
}

/* Count the parts of s[0..len) between `sep`s (at least 1). */
static size_t count_parts(const char *s, size_t len, char sep)
{
    size_t n = 1;
    for (size_t i = 0; i < len; i++) n += s[i] == sep;
    return n;
}

int broker_topology_parse(const char *topology, broker_topology *t, ps_err *err)
{
    memset(t, 0, sizeof *t);
    size_t len = strlen(topology);
    size_t nshards = count_parts(topology, len, ',');
    if (nshards > BROKER_MAX_SHARDS)
        return ps_err_set(err, PS_EINVAL, "shards: more than %d shards", BROKER_MAX_SHARDS);
    size_t nep = nshards + count_parts(topology, len, '|') - 1;
    if (!(t->buf = malloc(len + 1)) || !(t->endpoint = calloc(nep, sizeof *t->endpoint)) ||
        !(t->first = calloc(nshards + 1, sizeof *t->first))) {
        broker_topology_free(t);
        return ps_err_set(err, PS_ENOMEM, "out of memory for the shard pool");
    }
    memcpy(t->buf, topology, len + 1);
    char *s = t->buf;
    for (size_t sh = 0; sh < nshards; sh++) {
        char *end = strchr(s, ','), *next = end ? end + 1 : s + strlen(s);
        if (end) *end = '\0';
        size_t nr = count_parts(s, strlen(s), '|');
        if (nr > BROKER_MAX_REPLICAS) {
            broker_topology_free(t);
            return ps_err_set(err, PS_EINVAL, "shards: shard %zu has more than %d replicas", sh,
                              BROKER_MAX_REPLICAS);
        }
        t->first[sh] = (uint32_t)t->nendpoints;
        for (size_t i = 0; i < nr; i++) {
            char *bar = strchr(s, '|');
            if (bar) *bar = '\0';
            size_t elen = strlen(s);
            if (elen == 0 || elen >= BROKER_MAX_ENDPOINT) {
                broker_topology_free(t);
                return ps_err_set(err, PS_EINVAL, "shards: shard %zu replica %zu: %s endpoint", sh,
                                  i, elen ? "too long an" : "empty");
            }
            t->endpoint[t->nendpoints++] = s;
            s = bar ? bar + 1 : s + elen;
        }
        s = next;
    }
    t->nshards = (uint32_t)nshards;
    t->first[nshards] = (uint32_t)t->nendpoints;
    return 0;
}

int broker_parse_addr(const char *s, char *host, size_t cap, uint16_t *port)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s) return -1;
    size_t hl = (size_t)(colon - s);
    const char *h = s;
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') h++, hl -= 2;
    if (hl == 0 || hl >= cap) return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    char *end;
    errno = 0;
    unsigned long p = strtoul(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || p > 65535) return -1;
    *port = (uint16_t)p;
    return 0;
}
