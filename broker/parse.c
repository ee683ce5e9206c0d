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

/* ---- the /v1/search query string --------------------------------------------------------- */

static const char *const param_names[BROKER_NPARAMS] = {"q", "user", "k", "explain"};

void broker_search_params_free(broker_search_params *p)
{
    for (int i = 0; i < BROKER_NPARAMS; i++) {
        free(p->v[i]);
        p->v[i] = NULL;
    }
}

/* Split the raw query string into p (values decoded, '+' a space). */
static int params_split(const char *query, broker_search_params *p, ps_err *err)
{
    while (*query) {
        size_t n = strcspn(query, "&");
        const char *eq = memchr(query, '=', n);
        size_t klen = eq ? (size_t)(eq - query) : n;
        char key[16];
        int which = -1;
        if (klen < sizeof key) {
            memcpy(key, query, klen);
            key[klen] = '\0';
            for (int i = 0; i < BROKER_NPARAMS; i++)
                if (!strcmp(key, param_names[i])) which = i;
        }
        if (which >= 0) {
            if (p->v[which])
                return ps_err_set(err, PS_EINVAL, "%s: given more than once", param_names[which]);
            size_t vlen = eq ? n - klen - 1 : 0;
            char *raw = strndup(eq ? eq + 1 : "", vlen);
            if (!raw) return ps_err_set(err, PS_ENOMEM, "out of memory for parameters");
            p->v[which] = evhttp_uridecode(raw, 1, &p->len[which]);
            free(raw);
            if (!p->v[which]) return ps_err_set(err, PS_ENOMEM, "out of memory for parameters");
        }
        query += n;
        if (*query == '&') query++;
    }
    return 0;
}

int broker_search_parse(const char *query, uint32_t max_k, broker_search_params *p, broker_query *q,
                        ps_err *err)
{
    memset(p, 0, sizeof *p);
    memset(q, 0, sizeof *q);
    int rc = query ? params_split(query, p, err) : 0;
    if (rc) return rc;
    uint64_t k = BROKER_DEFAULT_K;
    if (p->v[BROKER_P_K] && broker_parse_uint(p->v[BROKER_P_K], p->len[BROKER_P_K], 1, max_k, &k))
        return ps_err_set(err, PS_EINVAL, "k: must be an integer in 1..%u", max_k);
    int explain = 0;
    const char *e = p->v[BROKER_P_EXPLAIN];
    if (e) {
        if (!strcmp(e, "1") || !strcmp(e, "true"))
            explain = 1;
        else if (strcmp(e, "0") && strcmp(e, "false"))
            return ps_err_set(err, PS_EINVAL, "explain: must be 0, 1, true or false");
    }
    q->q = p->v[BROKER_P_Q];
    q->qlen = p->len[BROKER_P_Q];
    q->user = p->v[BROKER_P_USER];
    q->user_len = p->len[BROKER_P_USER];
    q->k = (uint32_t)k;
    q->explain = explain;
    return 0;
}

/* ---- the POST /v1/click body ------------------------------------------------------------- */

void broker_click_body_free(broker_click_body *c)
{
    json_decref(c->doc);
    memset(c, 0, sizeof *c);
}

int broker_click_parse(const char *body, size_t n, broker_click_body *c, ps_err *err)
{
    memset(c, 0, sizeof *c);
    if (!ps_utf8_valid(body, n))
        return ps_err_set(err, PS_EUTF8, "body: not valid UTF-8 (JSON is UTF-8)");
    json_error_t jerr;
    json_t *j = json_loadb(body, n, JSON_REJECT_DUPLICATES, &jerr);
    if (!j)
        return ps_err_set(err, PS_EPARSE,
                          "body: %s at byte %d (a JSON object with user, sticker_id, query)",
                          jerr.text, jerr.position);
    int rc = 0;
    json_t *ju = json_object_get(j, "user"), *js = json_object_get(j, "sticker_id"),
           *jq = json_object_get(j, "query"), *jc = json_object_get(j, "click_id");
    uint64_t id = 0;
    if (!json_is_object(j)) {
        rc = ps_err_set(err, PS_EINVAL, "body: must be a JSON object");
    } else if (!json_is_string(ju)) {
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
