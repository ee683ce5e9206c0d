/*
 * wire.c — frames between broker and shards, and between clients and the broker's front door:
 * encode helpers, and a decoder that trusts nothing a peer sends (DESIGN §3.2, §6).
 *
 * Frame format. One ZeroMQ frame is one persrv.Envelope in protobuf wire format: a sequence
 * of fields, each a key varint (field number << 3 | wire type) followed by
 *   wire type 0  a varint: 1–10 bytes, 7 bits each, least significant group first, the high
 *                bit set on every byte but the last
 *   wire type 1  8 bytes, little-endian (double, fixed64)
 *   wire type 2  a length varint, then that many bytes: a string (UTF-8, no NUL here), a
 *                nested message, or a packed run of repeated scalars (floats: 4 bytes each)
 *   wire type 5  4 bytes, little-endian (float, fixed32)
 * Groups (wire types 3, 4) and types 6, 7 are rejected. A frame that protobuf-c packs:
 *   08 01                 version = 1
 *   10 2a                 request_id = 42
 *   18 e8 07              deadline_ms = 1000
 *   72 00                 field 14 (health), length 0: an empty HealthRequest
 *
 * Decoding happens in three steps so that nothing a peer controls can make us allocate or
 * loop more than the frame size allows:
 *   1. the frame length against the cap (nothing read yet);
 *   2. scan(): one pass over the raw bytes, driven by the generated descriptors, checks the
 *      wire structure and counts every repeated field, string length and unknown field
 *      against its cap; nothing is allocated;
 *   3. protobuf-c unpacks, and check_env() checks the values (version, body, ranges, UTF-8,
 *      finite floats) — the same function the encoders run before they pack.
 */
#include "ps/wire.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps/fields.h"
#include "ps/utf8.h"
#include "ps/alloc.h"

enum { WIRE_VARINT = 0, WIRE_I64 = 1, WIRE_LEN = 2, WIRE_I32 = 5 };

#define WIRE_MAX_FIELDS 32 /* most fields of one message in persrv.proto (Envelope) */
#define WIRE_MAX_DEPTH  8  /* the schema nests 3 deep and has no cycles */

/* ---- caps of repeated fields and strings --------------------------------------------------- */

/* Every repeated field of the schema needs a row here (a repeated field without one is an
 * internal error at decode time, so no count goes uncapped). Strings without a row get
 * PS_WIRE_MAX_STRING. */
typedef struct field_cap {
    const ProtobufCMessageDescriptor *msg;
    const char *field;
    uint32_t count; /* most entries of a repeated field */
    uint32_t bytes; /* longest string, 0 = PS_WIRE_MAX_STRING */
} field_cap;

static const field_cap caps[] = {
    {&persrv__search_request__descriptor, "tokens", PS_WIRE_MAX_TOKENS, PS_WIRE_MAX_TOKEN_LEN},
    {&persrv__search_request__descriptor, "field_weights", PS_NFIELDS, 0},
    {&persrv__search_request__descriptor, "centroids", PS_WIRE_MAX_CENTROIDS, 0},
    {&persrv__centroid__descriptor, "vector", PS_WIRE_MAX_DIM, 0},
    {&persrv__search_reply__descriptor, "hits", PS_WIRE_MAX_HITS, 0},
    {&persrv__hit_columns__descriptor, "id", PS_WIRE_MAX_HITS, 0},
    {&persrv__hit_columns__descriptor, "relevance", PS_WIRE_MAX_HITS, 0},
    {&persrv__hit_columns__descriptor, "utility", PS_WIRE_MAX_HITS, 0},
    {&persrv__hit_columns__descriptor, "recall", PS_WIRE_MAX_HITS, 0},
    {&persrv__hit_columns__descriptor, "preference", PS_WIRE_MAX_HITS, 0},
    {&persrv__hit_columns__descriptor, "score", PS_WIRE_MAX_HITS, 0},
    {&persrv__hit_columns__descriptor, "centroid", PS_WIRE_MAX_HITS, 0},
    {&persrv__query_request__descriptor, "user", 0, PS_WIRE_MAX_USER},
    {&persrv__envelope__descriptor, "api_key", 0, PS_WIRE_MAX_API_KEY},
    {&persrv__envelope__descriptor, "trace_id", 0, PS_WIRE_MAX_TRACE},
    {&persrv__query_request__descriptor, "exclude", PS_WIRE_MAX_EXCLUDE, 0},
    {&persrv__batch_request__descriptor, "requests", PS_WIRE_MAX_BATCH, PS_WIRE_MAX_FRAME},
    {&persrv__batch_reply__descriptor, "replies", PS_WIRE_MAX_BATCH, PS_WIRE_MAX_FRAME},
    {&persrv__health_reply__descriptor, "held", PS_WIRE_MAX_HELD, 0},
    {&persrv__snapshot_held__descriptor, "fingerprint", 0, 16},
    {&persrv__query_reply__descriptor, "hits", PS_WIRE_MAX_HITS, 0},
    {&persrv__query_reply__descriptor, "fields", PS_WIRE_MAX_HITS, 0},
    {&persrv__query_reply__descriptor, "failures", PS_WIRE_MAX_SHARDS, 0},
    {&persrv__get_sticker_reply__descriptor, "embedding", PS_WIRE_MAX_DIM, 0},
    {&persrv__click_request__descriptor, "user", 0, PS_WIRE_MAX_USER},
    {&persrv__click_request__descriptor, "embedding", PS_WIRE_MAX_DIM, 0},
    {&persrv__click_request__descriptor, "click_id", 0, PS_WIRE_MAX_CLICK_ID},
    {&persrv__click_reply__descriptor, "click_id", 0, PS_WIRE_MAX_CLICK_ID},
    {&persrv__profile_request__descriptor, "user", 0, PS_WIRE_MAX_USER},
    {&persrv__profile_reply__descriptor, "centroids", PS_WIRE_MAX_CENTROIDS, 0},
    {&persrv__load_profile_request__descriptor, "user", 0, PS_WIRE_MAX_USER},
    {&persrv__load_profile_request__descriptor, "centroids", PS_WIRE_MAX_CENTROIDS, 0},
    {&persrv__load_profile_request__descriptor, "history", PS_WIRE_MAX_HISTORY, 0},
    {&persrv__history_item__descriptor, "embedding", PS_WIRE_MAX_DIM, 0},
    {&persrv__clicks_request__descriptor, "user", 0, PS_WIRE_MAX_USER},
    {&persrv__clicks_reply__descriptor, "sticker_ids", PS_WIRE_MAX_CLICKS, 0},
    {&persrv__wal_reply__descriptor, "batches", PS_WIRE_MAX_BATCHES, 0},
    {&persrv__wal_batch__descriptor, "data", 0, PS_WIRE_MAX_FRAME},
    {&persrv__checkpoint_request__descriptor, "file", 0, 255},
    {&persrv__checkpoint_reply__descriptor, "files", PS_WIRE_MAX_BATCHES, 0},
    {&persrv__checkpoint_file__descriptor, "name", 0, 255},
    {&persrv__checkpoint_reply__descriptor, "data", 0, PS_WIRE_MAX_FRAME},
};

static const field_cap *cap_of(const ProtobufCMessageDescriptor *d, const char *field)
{
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++)
        if (caps[i].msg == d && strcmp(caps[i].field, field) == 0) return &caps[i];
    return NULL;
}

/* ---- error paths ---------------------------------------------------------------------------- */

/* Where the scanner is, as a chain from the envelope down ("search.centroids[2].vector"),
 * formatted only when an error is reported. */
typedef struct wpath {
    const struct wpath *up;
    const char *name;
    size_t idx;
    int indexed;
} wpath;

static void path_fmt(const wpath *p, char *out, size_t cap)
{
    const wpath *chain[WIRE_MAX_DEPTH + 2];
    int n = 0;
    size_t off = 0;
    for (; p && n < WIRE_MAX_DEPTH + 2; p = p->up) chain[n++] = p;
    snprintf(out, cap, "%s", n ? "" : "frame");
    for (int i = n - 1; i >= 0 && off < cap; i--) {
        int w = chain[i]->indexed
                    ? snprintf(out + off, cap - off, "%s%s[%zu]", off ? "." : "", chain[i]->name,
                               chain[i]->idx)
                    : snprintf(out + off, cap - off, "%s%s", off ? "." : "", chain[i]->name);
        if (w < 0) return;
        off += (size_t)w;
    }
}

static int fail_at(ps_err *err, int code, const wpath *at, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail_at(ps_err *err, int code, const wpath *at, const char *fmt, ...)
{
    char where[96], what[144];
    va_list ap;
    if (!err) return code;
    path_fmt(at, where, sizeof where);
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return ps_err_set(err, code, "%s: %s", where, what);
}

/* ---- step 2: the raw scan ------------------------------------------------------------------- */

typedef struct wfield {
    uint32_t num;       /* field number */
    unsigned wt;        /* wire type */
    const uint8_t *val; /* the value (for wire type 0, its varint) */
    size_t vlen;        /* bytes of the value for wire types 1, 2, 5; 0 for type 0 */
} wfield;

/* A varint of at most 10 bytes whose value fits 64 bits. 0, or -1 if malformed. */
static int get_varint(const uint8_t **pp, const uint8_t *end, uint64_t *v)
{
    const uint8_t *p = *pp;
    uint64_t x = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (p == end) return -1;
        uint8_t b = *p++;
        if (shift == 63 && b > 1) return -1;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *pp = p;
            *v = x;
            return 0;
        }
    }
    return -1;
}

/* Read the field at *pp (advancing past it) into f. 0, or -1 if malformed. */
static int next_field(const uint8_t **pp, const uint8_t *end, wfield *f)
{
    uint64_t key, v;
    const uint8_t *p = *pp;
    if (get_varint(&p, end, &key) || key > UINT32_MAX || (key >> 3) == 0) return -1;
    f->num = (uint32_t)(key >> 3);
    f->wt = (unsigned)(key & 7);
    f->val = p;
    switch (f->wt) {
    case WIRE_VARINT:
        if (get_varint(&p, end, &v)) return -1;
        f->vlen = 0;
        break;
    case WIRE_I64:
    case WIRE_I32:
        f->vlen = f->wt == WIRE_I64 ? 8 : 4;
        if ((size_t)(end - p) < f->vlen) return -1;
        p += f->vlen;
        break;
    case WIRE_LEN:
        if (get_varint(&p, end, &v) || v > (uint64_t)(end - p)) return -1;
        f->val = p;
        f->vlen = (size_t)v;
        p += v;
        break;
    default:
        return -1; /* groups and the undefined types 6, 7 */
    }
    *pp = p;
    return 0;
}

static unsigned wire_type_of(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_FLOAT:
        return WIRE_I32;
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return WIRE_I64;
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_BYTES:
    case PROTOBUF_C_TYPE_MESSAGE:
        return WIRE_LEN;
    default:
        return WIRE_VARINT; /* integers, bool, enum */
    }
}

typedef struct scanner {
    const uint8_t *base; /* the frame, for byte offsets in messages */
    size_t unknown;      /* unknown fields so far */
    ps_err *err;
} scanner;

static int scan_msg(scanner *sc, const ProtobufCMessageDescriptor *d, const uint8_t *p,
                    const uint8_t *end, int depth, const wpath *at);

/* Number of elements one occurrence of field f carries: 1, or the length of a packed run. */
static int field_elems(scanner *sc, const ProtobufCFieldDescriptor *f, const wfield *w,
                       const wpath *at, size_t *n)
{
    unsigned want = wire_type_of(f->type);
    if (w->wt == want) {
        *n = 1;
        return 0;
    }
    if (w->wt != WIRE_LEN || want == WIRE_LEN || f->label != PROTOBUF_C_LABEL_REPEATED)
        return fail_at(sc->err, PS_EPARSE, at, "wire type %u where %u belongs (byte %zu)", w->wt,
                       want, (size_t)(w->val - sc->base));
    if (want == WIRE_VARINT) {
        size_t k = 0;
        for (size_t i = 0; i < w->vlen; i++) k += !(w->val[i] & 0x80);
        if (w->vlen && (w->val[w->vlen - 1] & 0x80))
            return fail_at(sc->err, PS_EPARSE, at, "packed varints cut short (byte %zu)",
                           (size_t)(w->val - sc->base));
        *n = k;
        return 0;
    }
    size_t size = want == WIRE_I64 ? 8 : 4;
    if (w->vlen % size)
        return fail_at(sc->err, PS_EPARSE, at, "packed run of %zu bytes is not a multiple of %zu",
                       w->vlen, size);
    *n = w->vlen / size;
    return 0;
}

static int scan_msg(scanner *sc, const ProtobufCMessageDescriptor *d, const uint8_t *p,
                    const uint8_t *end, int depth, const wpath *at)
{
    size_t count[WIRE_MAX_FIELDS] = {0};
    uint32_t maxn[WIRE_MAX_FIELDS] = {0}, maxb[WIRE_MAX_FIELDS] = {0};
    int rc;

    if (d->n_fields > WIRE_MAX_FIELDS)
        return fail_at(sc->err, PS_EINTERNAL, at, "message %s has more than %d fields",
                       d->short_name, WIRE_MAX_FIELDS);
    if (depth > WIRE_MAX_DEPTH)
        return fail_at(sc->err, PS_EPARSE, at, "nested more than %d deep", WIRE_MAX_DEPTH);
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const field_cap *c;
        if (f->label != PROTOBUF_C_LABEL_REPEATED && f->type != PROTOBUF_C_TYPE_STRING &&
            f->type != PROTOBUF_C_TYPE_BYTES)
            continue;
        c = cap_of(d, f->name);
        if (f->label == PROTOBUF_C_LABEL_REPEATED && !c)
            return ps_err_set(sc->err, PS_EINTERNAL, "wire.c: %s.%s has no cap", d->short_name,
                              f->name);
        maxn[i] = c ? c->count : 0;
        maxb[i] = c && c->bytes ? c->bytes : PS_WIRE_MAX_STRING;
    }

    while (p < end) {
        wfield w;
        size_t off = (size_t)(p - sc->base), n = 0;
        if (next_field(&p, end, &w))
            return fail_at(sc->err, PS_EPARSE, at, "malformed or truncated field at byte %zu", off);
        const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(d, w.num);
        if (!f) {
            if (++sc->unknown > PS_WIRE_MAX_UNKNOWN)
                return fail_at(sc->err, PS_ETOOBIG, NULL, "more than %d unknown fields",
                               PS_WIRE_MAX_UNKNOWN);
            continue;
        }
        size_t i = (size_t)(f - d->fields);
        int rep = f->label == PROTOBUF_C_LABEL_REPEATED;
        wpath field = {at, f->name, 0, 0}, elem = {at, f->name, count[i], rep};
        if ((rc = field_elems(sc, f, &w, &field, &n))) return rc;
        if (rep && count[i] + n > maxn[i])
            return fail_at(sc->err, PS_ETOOBIG, &field, "more than %u entries", maxn[i]);
        if (!rep && f->type == PROTOBUF_C_TYPE_MESSAGE && count[i])
            return fail_at(sc->err, PS_EPARSE, &field, "set twice (byte %zu)", off);
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            /* members of one oneof share the quantifier (the case enum) */
            for (unsigned j = 0; j < d->n_fields; j++)
                if (j != i && count[j] && (d->fields[j].flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
                    d->fields[j].quantifier_offset == f->quantifier_offset)
                    return fail_at(sc->err, PS_EPARSE, &field, "set together with %s",
                                   d->fields[j].name);
        }
        count[i] += n;
        switch (f->type) {
        case PROTOBUF_C_TYPE_STRING:
            if (w.vlen > maxb[i])
                return fail_at(sc->err, PS_ETOOBIG, &elem, "%zu bytes, at most %u", w.vlen,
                               maxb[i]);
            if (memchr(w.val, 0, w.vlen))
                return fail_at(sc->err, PS_EINVAL, &elem, "contains a NUL byte");
            break;
        case PROTOBUF_C_TYPE_BYTES:
            if (w.vlen > maxb[i])
                return fail_at(sc->err, PS_ETOOBIG, &elem, "%zu bytes, at most %u", w.vlen,
                               maxb[i]);
            break;
        case PROTOBUF_C_TYPE_MESSAGE:
            rc = scan_msg(sc, f->descriptor, w.val, w.val + w.vlen, depth + 1, &elem);
            if (rc) return rc;
            break;
        default:
            break;
        }
    }
    return 0;
}

/* The envelope's version if the top level is well-formed enough to find it (else 0), so a
 * peer of another major version hears about the version rather than about some cap. */
static uint32_t peek_version(const uint8_t *p, const uint8_t *end)
{
    uint32_t version = 0;
    while (p < end) {
        wfield w;
        uint64_t v;
        if (next_field(&p, end, &w)) return 0;
        if (w.num == 1 && w.wt == WIRE_VARINT && get_varint(&w.val, end, &v) == 0)
            version = (uint32_t)v; /* the last one counts, as in protobuf-c */
    }
    return version;
}

/* ---- step 3: values ------------------------------------------------------------------------- */

/* 0, or the code for a string that is NULL, longer than max bytes or not valid UTF-8.
 * OUT *len: its length when not NULL. */
static int text_status(const char *s, size_t max, size_t *len)
{
    if (!s) return PS_EINVAL;
    *len = strnlen(s, max + 1);
    if (*len > max) return PS_ETOOBIG;
    if (!ps_utf8_valid(s, *len)) return PS_EUTF8;
    return 0;
}

static int text_fail(ps_err *err, int code, const char *path, size_t max)
{
    if (code == PS_ETOOBIG) return ps_err_set(err, code, "%s: longer than %zu bytes", path, max);
    if (code == PS_EUTF8) return ps_err_set(err, code, "%s: not valid UTF-8", path);
    return ps_err_set(err, code, "%s: NULL string", path);
}

static int check_text(const char *s, size_t max, const char *path, ps_err *err)
{
    size_t n;
    int rc = text_status(s, max, &n);
    return rc ? text_fail(err, rc, path, max) : 0;
}

typedef struct tok_ref {
    const char *s;
    uint32_t i;
} tok_ref;

static int tok_cmp(const void *a, const void *b)
{
    const tok_ref *x = a, *y = b;
    int c = strcmp(x->s, y->s);
    return c ? c : (x->i > y->i) - (x->i < y->i);
}

/* centroids[0..n) under the wire path `at`: at most PS_WIRE_MAX_CENTROIDS, every vector the
 * same length 1..PS_WIRE_MAX_DIM, finite, radius finite >= 0. */
static int check_centroids(Persrv__Centroid *const *cs, size_t n, const char *at, ps_err *err)
{
    size_t dim = 0;
    if (n > PS_WIRE_MAX_CENTROIDS)
        return ps_err_set(err, PS_ETOOBIG, "%s: %zu entries, at most %d", at, n,
                          PS_WIRE_MAX_CENTROIDS);
    if (n && !cs) return ps_err_set(err, PS_EINVAL, "%s: NULL", at);
    for (size_t c = 0; c < n; c++) {
        const Persrv__Centroid *ct = cs[c];
        if (!ct) return ps_err_set(err, PS_EINVAL, "%s[%zu]: NULL", at, c);
        if (ct->n_vector > PS_WIRE_MAX_DIM)
            return ps_err_set(err, PS_ETOOBIG, "%s[%zu].vector: %zu floats, at most %d", at, c,
                              ct->n_vector, PS_WIRE_MAX_DIM);
        if (ct->n_vector == 0 || !ct->vector)
            return ps_err_set(err, PS_EINVAL, "%s[%zu].vector: empty", at, c);
        if (c == 0) dim = ct->n_vector;
        if (ct->n_vector != dim)
            return ps_err_set(err, PS_EINVAL, "%s[%zu].vector: %zu floats, %s[0] has %zu", at, c,
                              ct->n_vector, at, dim);
        for (size_t j = 0; j < dim; j++)
            if (!isfinite(ct->vector[j]))
                return ps_err_set(err, PS_EINVAL, "%s[%zu].vector[%zu]: not finite", at, c, j);
        if (!isfinite(ct->radius) || ct->radius < 0)
            return ps_err_set(err, PS_EINVAL, "%s[%zu].radius: %g, need finite >= 0", at, c,
                              ct->radius);
    }
    return 0;
}

/* An embedding of n floats under `at`: 0 (none) or 1..PS_WIRE_MAX_DIM finite values; with
 * required, at least one. */
static int check_embedding(const float *v, size_t n, int required, const char *at, ps_err *err)
{
    if (n > PS_WIRE_MAX_DIM)
        return ps_err_set(err, PS_ETOOBIG, "%s: %zu floats, at most %d", at, n, PS_WIRE_MAX_DIM);
    if (required && n == 0) return ps_err_set(err, PS_EINVAL, "%s: empty", at);
    if (n && !v) return ps_err_set(err, PS_EINVAL, "%s: NULL", at);
    for (size_t j = 0; j < n; j++)
        if (!isfinite(v[j])) return ps_err_set(err, PS_EINVAL, "%s[%zu]: not finite", at, j);
    return 0;
}

static int check_search(const Persrv__SearchRequest *q, ps_err *err)
{
    tok_ref ref[PS_WIRE_MAX_TOKENS];
    char path[64];
    int rc;

    if (q->n_tokens == 0)
        return ps_err_set(err, PS_EQUERY, "search.tokens: empty (a query needs a token)");
    if (q->n_tokens > PS_WIRE_MAX_TOKENS)
        return ps_err_set(err, PS_ETOOBIG, "search.tokens: %zu entries, at most %d", q->n_tokens,
                          PS_WIRE_MAX_TOKENS);
    if (!q->tokens) return ps_err_set(err, PS_EINVAL, "search.tokens: NULL");
    for (size_t i = 0; i < q->n_tokens; i++) {
        size_t n = 0;
        snprintf(path, sizeof path, "search.tokens[%zu]", i);
        if ((rc = text_status(q->tokens[i], PS_WIRE_MAX_TOKEN_LEN, &n)))
            return text_fail(err, rc, path, PS_WIRE_MAX_TOKEN_LEN);
        if (n == 0) return ps_err_set(err, PS_EINVAL, "%s: empty", path);
        ref[i] = (tok_ref){q->tokens[i], (uint32_t)i};
    }
    /* the shard sums over the tokens it is sent: a repeat would count a term twice */
    qsort(ref, q->n_tokens, sizeof ref[0], tok_cmp);
    for (size_t i = 1; i < q->n_tokens; i++)
        if (strcmp(ref[i - 1].s, ref[i].s) == 0)
            return ps_err_set(err, PS_EINVAL, "search.tokens[%u]: repeats tokens[%u]", ref[i].i,
                              ref[i - 1].i);

    if (q->n_field_weights > PS_NFIELDS)
        return ps_err_set(err, PS_ETOOBIG, "search.field_weights: %zu entries, at most %d",
                          q->n_field_weights, PS_NFIELDS);
    if (q->n_field_weights != 0 && q->n_field_weights != PS_NFIELDS)
        return ps_err_set(err, PS_EINVAL, "search.field_weights: %zu entries, need 0 or %d",
                          q->n_field_weights, PS_NFIELDS);
    if (q->n_field_weights && !q->field_weights)
        return ps_err_set(err, PS_EINVAL, "search.field_weights: NULL");
    for (size_t f = 0; f < q->n_field_weights; f++)
        if (!isfinite(q->field_weights[f]) || q->field_weights[f] < 0)
            return ps_err_set(err, PS_EINVAL, "search.field_weights[%zu] (%s): %g, need >= 0", f,
                              ps_field_names[f], (double)q->field_weights[f]);
    if (q->recall_depth < 1 || q->recall_depth > PS_WIRE_MAX_HITS)
        return ps_err_set(err, PS_EINVAL, "search.recall_depth: %u, need 1..%d", q->recall_depth,
                          PS_WIRE_MAX_HITS);
    if (!isfinite(q->alpha) || q->alpha < 0)
        return ps_err_set(err, PS_EINVAL, "search.alpha: %g, need finite >= 0", (double)q->alpha);

    return check_centroids(q->centroids, q->n_centroids, "search.centroids", err);
}

/* Hit i under the wire path `at` ("search_reply.hits"): finite scores, centroid in range. */
static int check_hit(const char *at, size_t i, double relevance, double utility, double recall,
                     double preference, double score, int32_t centroid, ps_err *err)
{
    const struct {
        const char *name;
        double v;
    } val[] = {{"relevance", relevance},
               {"utility", utility},
               {"recall", recall},
               {"preference", preference},
               {"score", score}};
    for (size_t j = 0; j < sizeof val / sizeof val[0]; j++)
        if (!isfinite(val[j].v))
            return ps_err_set(err, PS_EINVAL, "%s[%zu].%s: not finite", at, i, val[j].name);
    if (centroid < -1 || centroid >= PS_WIRE_MAX_CENTROIDS)
        return ps_err_set(err, PS_EINVAL, "%s[%zu].centroid: %d, need -1..%d", at, i, (int)centroid,
                          PS_WIRE_MAX_CENTROIDS - 1);
    return 0;
}

/* hits[0..n) under the wire path `at`. Shared by the shard's SearchReply and the broker's
 * QueryReply. */
static int check_hits(Persrv__Hit *const *hits, size_t n, const char *at, ps_err *err)
{
    int rc;
    if (n > PS_WIRE_MAX_HITS)
        return ps_err_set(err, PS_ETOOBIG, "%s: %zu entries, at most %d", at, n, PS_WIRE_MAX_HITS);
    if (n && !hits) return ps_err_set(err, PS_EINVAL, "%s: NULL", at);
    for (size_t i = 0; i < n; i++) {
        const Persrv__Hit *h = hits[i];
        if (!h) return ps_err_set(err, PS_EINVAL, "%s[%zu]: NULL", at, i);
        if ((rc = check_hit(at, i, h->relevance, h->utility, h->recall, h->preference, h->score,
                            h->centroid, err)))
            return rc;
    }
    return 0;
}

/* The columns of a SearchReply: every column as long as id, each hit as check_hit. */
static int check_hit_columns(const Persrv__HitColumns *c, ps_err *err)
{
    const struct {
        const char *name;
        size_t n;
    } len[] = {{"relevance", c->n_relevance}, {"utility", c->n_utility},
               {"recall", c->n_recall},       {"preference", c->n_preference},
               {"score", c->n_score},         {"centroid", c->n_centroid}};
    size_t n = c->n_id;
    int rc;
    if (n > PS_WIRE_MAX_HITS)
        return ps_err_set(err, PS_ETOOBIG, "search_reply.columns.id: %zu entries, at most %d", n,
                          PS_WIRE_MAX_HITS);
    for (size_t j = 0; j < sizeof len / sizeof len[0]; j++)
        if (len[j].n != n)
            return ps_err_set(err, PS_EINVAL, "search_reply.columns.%s: %zu entries, id has %zu",
                              len[j].name, len[j].n, n);
    for (size_t i = 0; i < n; i++)
        if ((rc = check_hit("search_reply.columns", i, c->relevance[i], c->utility[i], c->recall[i],
                            c->preference[i], c->score[i], c->centroid[i], err)))
            return rc;
    return 0;
}

static int check_search_reply(const Persrv__SearchReply *r, ps_err *err)
{
    if (r->columns) {
        if (r->n_hits) return ps_err_set(err, PS_EINVAL, "search_reply: both hits and columns");
        return check_hit_columns(r->columns, err);
    }
    return check_hits(r->hits, r->n_hits, "search_reply.hits", err);
}

/* A GetStickerReply under the wire path `at` ("sticker_reply", "query_reply.fields[3]"). */
static int check_sticker_at(const Persrv__GetStickerReply *r, const char *at, ps_err *err)
{
    const char *text[PS_NFIELDS] = {r->ocr, r->queries, r->keywords, r->desc, r->emotion};
    char path[96];
    int rc;
    for (int f = 0; f < PS_NFIELDS; f++) {
        snprintf(path, sizeof path, "%s.%s", at, ps_field_names[f]);
        if ((rc = check_text(text[f], PS_WIRE_MAX_STRING, path, err))) return rc;
    }
    snprintf(path, sizeof path, "%s.image", at);
    if ((rc = check_text(r->image, PS_WIRE_MAX_STRING, path, err))) return rc;
    if (!isfinite(r->utility)) return ps_err_set(err, PS_EINVAL, "%s.utility: not finite", at);
    snprintf(path, sizeof path, "%s.embedding", at);
    return check_embedding(r->embedding, r->n_embedding, 0, path, err);
}

static int check_sticker_reply(const Persrv__GetStickerReply *r, ps_err *err)
{
    return check_sticker_at(r, "sticker_reply", err);
}

/* Only sizes and text: an empty q, or k out of the broker's range, is the broker's to reject
 * (with its own configured caps), as GET /v1/search does. */
static int check_query(const Persrv__QueryRequest *q, ps_err *err)
{
    int rc;
    if ((rc = check_text(q->q, PS_WIRE_MAX_STRING, "query.q", err))) return rc;
    return check_text(q->user, PS_WIRE_MAX_USER, "query.user", err);
}

static int check_query_reply(const Persrv__QueryReply *r, ps_err *err)
{
    char path[64];
    int rc;
    if ((rc = check_hits(r->hits, r->n_hits, "query_reply.hits", err))) return rc;
    if (r->n_fields > PS_WIRE_MAX_HITS)
        return ps_err_set(err, PS_ETOOBIG, "query_reply.fields: %zu entries, at most %d",
                          r->n_fields, PS_WIRE_MAX_HITS);
    if (r->n_fields != 0 && r->n_fields != r->n_hits)
        return ps_err_set(err, PS_EINVAL, "query_reply.fields: %zu entries, need 0 or %zu (hits)",
                          r->n_fields, r->n_hits);
    if (r->n_fields && !r->fields) return ps_err_set(err, PS_EINVAL, "query_reply.fields: NULL");
    for (size_t i = 0; i < r->n_fields; i++) {
        const Persrv__GetStickerReply *s = r->fields[i];
        snprintf(path, sizeof path, "query_reply.fields[%zu]", i);
        if (!s) return ps_err_set(err, PS_EINVAL, "%s: NULL", path);
        if ((rc = check_sticker_at(s, path, err))) return rc;
        if (s->id != r->hits[i]->id)
            return ps_err_set(err, PS_EINVAL, "%s.id: %llu, hits[%zu] is %llu", path,
                              (unsigned long long)s->id, i, (unsigned long long)r->hits[i]->id);
    }
    if (r->n_failures > PS_WIRE_MAX_SHARDS)
        return ps_err_set(err, PS_ETOOBIG, "query_reply.failures: %zu entries, at most %d",
                          r->n_failures, PS_WIRE_MAX_SHARDS);
    if (r->n_failures && !r->failures)
        return ps_err_set(err, PS_EINVAL, "query_reply.failures: NULL");
    for (size_t i = 0; i < r->n_failures; i++) {
        if (!r->failures[i])
            return ps_err_set(err, PS_EINVAL, "query_reply.failures[%zu]: NULL", i);
        snprintf(path, sizeof path, "query_reply.failures[%zu].reason", i);
        if ((rc = check_text(r->failures[i]->reason, PS_WIRE_MAX_STRING, path, err))) return rc;
    }
    return 0;
}

static int check_error(const Persrv__Error *e, ps_err *err)
{
    int rc;
    if ((rc = check_text(e->code, PS_WIRE_MAX_STRING, "error.code", err))) return rc;
    if (!e->code[0]) return ps_err_set(err, PS_EINVAL, "error.code: empty");
    return check_text(e->message, PS_WIRE_MAX_STRING, "error.message", err);
}

/* A checkpoint file name: 1..255 bytes, no '/', not "." or "..": a peer cannot make a replica
 * write outside its checkpoint directory. */
static int check_file_name(const char *name, const char *at, ps_err *err)
{
    int rc;
    if ((rc = check_text(name, 255, at, err))) return rc;
    if (!name[0] || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, ".."))
        return ps_err_set(err, PS_EINVAL, "%s: '%s' is not a plain file name", at, name);
    return 0;
}

/* ---- the profile service ---- */

/* A user name: 1..PS_WIRE_MAX_USER bytes of UTF-8 without NUL. */
static int check_user(const char *user, const char *at, ps_err *err)
{
    int rc;
    if ((rc = check_text(user, PS_WIRE_MAX_USER, at, err))) return rc;
    return user[0] ? 0 : ps_err_set(err, PS_EINVAL, "%s: empty", at);
}

int ps_wire_check_click_id(const char *id, const char *at, ps_err *err)
{
    size_t n = id ? strnlen(id, PS_WIRE_MAX_CLICK_ID + 1) : 0;
    if (n == 0) return ps_err_set(err, PS_EINVAL, "%s: empty", at);
    if (n > PS_WIRE_MAX_CLICK_ID)
        return ps_err_set(err, PS_ETOOBIG, "%s: longer than %d bytes", at, PS_WIRE_MAX_CLICK_ID);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)id[i] < 0x21 || (unsigned char)id[i] > 0x7e)
            return ps_err_set(err, PS_EINVAL,
                              "%s: byte %zu is 0x%02x; a click id is printable ASCII without "
                              "spaces (0x21..0x7e)",
                              at, i, (unsigned char)id[i]);
    return 0;
}

/* The embedding may be empty here: a client sends none (the broker fetches it), and the profile
 * service refuses a click without one itself. */
static int check_click(const Persrv__ClickRequest *c, ps_err *err)
{
    int rc;
    if ((rc = check_user(c->user, "click.user", err)) ||
        (rc = check_text(c->query, PS_WIRE_MAX_STRING, "click.query", err)) ||
        (rc = check_embedding(c->embedding, c->n_embedding, 0, "click.embedding", err)))
        return rc;
    return c->click_id && c->click_id[0]
               ? ps_wire_check_click_id(c->click_id, "click.click_id", err)
               : 0;
}

static int check_click_reply(const Persrv__ClickReply *r, ps_err *err)
{
    return r->click_id && r->click_id[0]
               ? ps_wire_check_click_id(r->click_id, "click_reply.click_id", err)
               : 0;
}

static int check_load_profile(const Persrv__LoadProfileRequest *l, ps_err *err)
{
    int rc;
    char path[64];
    if ((rc = check_user(l->user, "load_profile.user", err)) ||
        (rc = check_centroids(l->centroids, l->n_centroids, "load_profile.centroids", err)))
        return rc;
    if (l->n_history > PS_WIRE_MAX_HISTORY)
        return ps_err_set(err, PS_ETOOBIG, "load_profile.history: %zu entries, at most %d",
                          l->n_history, PS_WIRE_MAX_HISTORY);
    if (l->n_history && !l->history)
        return ps_err_set(err, PS_EINVAL, "load_profile.history: NULL");
    for (size_t i = 0; i < l->n_history; i++) {
        if (!l->history[i]) return ps_err_set(err, PS_EINVAL, "load_profile.history[%zu]: NULL", i);
        snprintf(path, sizeof path, "load_profile.history[%zu].embedding", i);
        if ((rc = check_embedding(l->history[i]->embedding, l->history[i]->n_embedding, 1, path,
                                  err)))
            return rc;
    }
    return 0;
}

static int check_profile_reply(const Persrv__ProfileReply *r, ps_err *err)
{
    return check_centroids(r->centroids, r->n_centroids, "profile_reply.centroids", err);
}

static int check_wal_reply(const Persrv__WalReply *r, ps_err *err)
{
    if (r->n_batches > PS_WIRE_MAX_BATCHES)
        return ps_err_set(err, PS_ETOOBIG, "wal_reply.batches: %zu entries, at most %d",
                          r->n_batches, PS_WIRE_MAX_BATCHES);
    for (size_t i = 0; i < r->n_batches; i++)
        if (!r->batches || !r->batches[i] || r->batches[i]->seq == 0)
            return ps_err_set(err, PS_EINVAL, "wal_reply.batches[%zu]: missing or seq 0", i);
    return 0;
}

static int check_checkpoint_reply(const Persrv__CheckpointReply *r, ps_err *err)
{
    int rc;
    char path[64];
    if (r->n_files > PS_WIRE_MAX_BATCHES)
        return ps_err_set(err, PS_ETOOBIG, "checkpoint_reply.files: %zu entries, at most %d",
                          r->n_files, PS_WIRE_MAX_BATCHES);
    for (size_t i = 0; i < r->n_files; i++) {
        if (!r->files || !r->files[i])
            return ps_err_set(err, PS_EINVAL, "checkpoint_reply.files[%zu]: NULL", i);
        snprintf(path, sizeof path, "checkpoint_reply.files[%zu].name", i);
        if ((rc = check_file_name(r->files[i]->name, path, err))) return rc;
    }
    return 0;
}

static int check_health_reply(const Persrv__HealthReply *r, ps_err *err)
{
    int rc;
    if (r->n_held > PS_WIRE_MAX_HELD)
        return ps_err_set(err, PS_ETOOBIG, "health_reply.held: %zu entries, at most %d", r->n_held,
                          PS_WIRE_MAX_HELD);
    for (size_t i = 0; i < r->n_held; i++) {
        if (!r->held || !r->held[i])
            return ps_err_set(err, PS_EINVAL, "health_reply.held[%zu]: NULL", i);
        if ((rc = check_text(r->held[i]->fingerprint, 16, "health_reply.held.fingerprint", err)))
            return rc;
    }
    return 0;
}

static int check_env(const Persrv__Envelope *e, ps_err *err)
{
    if (e->version == 0) return ps_err_set(err, PS_EINVAL, "version: missing");
    if (e->version != PS_WIRE_VERSION)
        return ps_err_set(err, PS_EINVAL, "version: %u not supported (this peer speaks %d)",
                          e->version, PS_WIRE_VERSION);
    int trc;
    if (e->trace_id && e->trace_id[0] && (trc = ps_wire_check_trace(e->trace_id, err))) return trc;
    switch (e->body_case) {
    case PERSRV__ENVELOPE__BODY_SEARCH:
        return e->search ? check_search(e->search, err)
                         : ps_err_set(err, PS_EINVAL, "search: NULL");
    case PERSRV__ENVELOPE__BODY_SEARCH_REPLY:
        return e->search_reply ? check_search_reply(e->search_reply, err)
                               : ps_err_set(err, PS_EINVAL, "search_reply: NULL");
    case PERSRV__ENVELOPE__BODY_GET_STICKER:
        return e->get_sticker ? 0 : ps_err_set(err, PS_EINVAL, "get_sticker: NULL");
    case PERSRV__ENVELOPE__BODY_STICKER_REPLY:
        return e->sticker_reply ? check_sticker_reply(e->sticker_reply, err)
                                : ps_err_set(err, PS_EINVAL, "sticker_reply: NULL");
    case PERSRV__ENVELOPE__BODY_HEALTH:
        return e->health ? 0 : ps_err_set(err, PS_EINVAL, "health: NULL");
    case PERSRV__ENVELOPE__BODY_HEALTH_REPLY:
        return e->health_reply ? check_health_reply(e->health_reply, err)
                               : ps_err_set(err, PS_EINVAL, "health_reply: NULL");
    case PERSRV__ENVELOPE__BODY_ERROR:
        return e->error ? check_error(e->error, err) : ps_err_set(err, PS_EINVAL, "error: NULL");
    case PERSRV__ENVELOPE__BODY_QUERY:
        return e->query ? check_query(e->query, err) : ps_err_set(err, PS_EINVAL, "query: NULL");
    case PERSRV__ENVELOPE__BODY_QUERY_REPLY:
        return e->query_reply ? check_query_reply(e->query_reply, err)
                              : ps_err_set(err, PS_EINVAL, "query_reply: NULL");
    case PERSRV__ENVELOPE__BODY_CLICK:
        return e->click ? check_click(e->click, err) : ps_err_set(err, PS_EINVAL, "click: NULL");
    case PERSRV__ENVELOPE__BODY_CLICK_REPLY:
        return e->click_reply ? check_click_reply(e->click_reply, err)
                              : ps_err_set(err, PS_EINVAL, "click_reply: NULL");
    case PERSRV__ENVELOPE__BODY_GET_PROFILE:
        return e->get_profile ? check_user(e->get_profile->user, "get_profile.user", err)
                              : ps_err_set(err, PS_EINVAL, "get_profile: NULL");
    case PERSRV__ENVELOPE__BODY_PROFILE_REPLY:
        return e->profile_reply ? check_profile_reply(e->profile_reply, err)
                                : ps_err_set(err, PS_EINVAL, "profile_reply: NULL");
    case PERSRV__ENVELOPE__BODY_LOAD_PROFILE:
        return e->load_profile ? check_load_profile(e->load_profile, err)
                               : ps_err_set(err, PS_EINVAL, "load_profile: NULL");
    case PERSRV__ENVELOPE__BODY_GET_CLICKS:
        return e->get_clicks ? check_user(e->get_clicks->user, "get_clicks.user", err)
                             : ps_err_set(err, PS_EINVAL, "get_clicks: NULL");
    case PERSRV__ENVELOPE__BODY_CLICKS_REPLY:
        return e->clicks_reply ? 0 : ps_err_set(err, PS_EINVAL, "clicks_reply: NULL");
    case PERSRV__ENVELOPE__BODY_CHECKSUM:
        return e->checksum ? 0 : ps_err_set(err, PS_EINVAL, "checksum: NULL");
    case PERSRV__ENVELOPE__BODY_CHECKSUM_REPLY:
        return e->checksum_reply ? 0 : ps_err_set(err, PS_EINVAL, "checksum_reply: NULL");
    case PERSRV__ENVELOPE__BODY_WAL:
        return e->wal ? 0 : ps_err_set(err, PS_EINVAL, "wal: NULL");
    case PERSRV__ENVELOPE__BODY_WAL_REPLY:
        return e->wal_reply ? check_wal_reply(e->wal_reply, err)
                            : ps_err_set(err, PS_EINVAL, "wal_reply: NULL");
    case PERSRV__ENVELOPE__BODY_CHECKPOINT:
        if (!e->checkpoint) return ps_err_set(err, PS_EINVAL, "checkpoint: NULL");
        return e->checkpoint->file[0] ? check_file_name(e->checkpoint->file, "checkpoint.file", err)
                                      : 0;
    case PERSRV__ENVELOPE__BODY_CHECKPOINT_REPLY:
        return e->checkpoint_reply ? check_checkpoint_reply(e->checkpoint_reply, err)
                                   : ps_err_set(err, PS_EINVAL, "checkpoint_reply: NULL");
    case PERSRV__ENVELOPE__BODY_BATCH: /* the elements are checked as their reader decodes them */
        return e->batch ? 0 : ps_err_set(err, PS_EINVAL, "batch: NULL");
    case PERSRV__ENVELOPE__BODY_BATCH_REPLY:
        return e->batch_reply ? 0 : ps_err_set(err, PS_EINVAL, "batch_reply: NULL");
    default:
        return ps_err_set(err, PS_EINVAL, "body: no message set");
    }
}

/* ---- decode --------------------------------------------------------------------------------- */

/* malloc for protobuf-c that remembers a failure, so out of memory is told apart from bad
 * input (unpack returns NULL for both). Frees go through ps_free(). */
static void *wire_alloc(void *data, size_t size)
{
    void *p = ps_malloc(size);
    if (!p && size) *(int *)data = 1;
    return p;
}

static void wire_dealloc(void *data, void *p)
{
    (void)data;
    ps_free(p);
}

int ps_wire_decode(const void *buf, size_t len, size_t max_frame, Persrv__Envelope **out,
                   ps_err *err)
{
    const uint8_t *b = buf;
    int oom = 0, rc;
    ProtobufCAllocator alloc = {wire_alloc, wire_dealloc, &oom};

    ps_err_clear(err);
    if (!out) return ps_err_set(err, PS_EINVAL, "ps_wire_decode: out is NULL");
    *out = NULL;
    if (!max_frame) max_frame = PS_WIRE_MAX_FRAME;
    if (len > max_frame)
        return ps_err_set(err, PS_ETOOBIG, "frame: %zu bytes, at most %zu", len, max_frame);
    if (len == 0) return ps_err_set(err, PS_EPARSE, "frame: empty");
    if (!buf) return ps_err_set(err, PS_EINVAL, "ps_wire_decode: buf is NULL");

    uint32_t version = peek_version(b, b + len);
    if (version && version != PS_WIRE_VERSION)
        return ps_err_set(err, PS_EINVAL, "version: %u not supported (this peer speaks %d)",
                          version, PS_WIRE_VERSION);
    scanner sc = {b, 0, err};
    if ((rc = scan_msg(&sc, &persrv__envelope__descriptor, b, b + len, 0, NULL))) return rc;

    Persrv__Envelope *env = persrv__envelope__unpack(&alloc, len, b);
    if (!env) {
        if (oom) return ps_err_set(err, PS_ENOMEM, "frame: out of memory unpacking %zu bytes", len);
        return ps_err_set(err, PS_EPARSE, "frame: protobuf-c cannot unpack it");
    }
    if ((rc = check_env(env, err))) {
        ps_wire_free(env);
        return rc;
    }
    *out = env;
    return 0;
}

void ps_wire_free(Persrv__Envelope *env)
{
    /* Through ps_free, as ps_wire_decode allocated it through ps_malloc. */
    ProtobufCAllocator alloc = {wire_alloc, wire_dealloc, NULL};
    if (env) protobuf_c_message_free_unpacked(&env->base, &alloc);
}

/* ---- encode --------------------------------------------------------------------------------- */

static int pack_checked(const Persrv__Envelope *env, uint8_t **buf, size_t *len, ps_err *err);

int ps_wire_pack(const Persrv__Envelope *env, uint8_t **buf, size_t *len, ps_err *err)
{
    int rc;
    ps_err_clear(err);
    if (!buf || !len) return ps_err_set(err, PS_EINVAL, "ps_wire_pack: buf or len is NULL");
    *buf = NULL;
    *len = 0;
    if (!env || env->base.descriptor != &persrv__envelope__descriptor)
        return ps_err_set(err, PS_EINVAL, "ps_wire_pack: not an Envelope");
    if ((rc = check_env(env, err))) return rc;
    return pack_checked(env, buf, len, err);
}

/* Pack an envelope whose values were checked (buf, len set to NULL, 0 by the caller). */
static int pack_checked(const Persrv__Envelope *env, uint8_t **buf, size_t *len, ps_err *err)
{
    size_t n = protobuf_c_message_get_packed_size(&env->base);
    if (n > PS_WIRE_MAX_FRAME)
        return ps_err_set(err, PS_ETOOBIG, "frame: %zu bytes, at most %u", n, PS_WIRE_MAX_FRAME);
    uint8_t *b = ps_malloc(n ? n : 1);
    if (!b) return ps_err_set(err, PS_ENOMEM, "frame: out of memory packing %zu bytes", n);
    if (protobuf_c_message_pack(&env->base, b) != n) {
        ps_free(b);
        return ps_err_set(err, PS_EINTERNAL, "frame: packed size changed while packing");
    }
    *buf = b;
    *len = n;
    return 0;
}

void ps_wire_env_init(Persrv__Envelope *e, uint64_t request_id, uint32_t deadline_ms)
{
    persrv__envelope__init(e);
    e->version = PS_WIRE_VERSION;
    e->request_id = request_id;
    e->deadline_ms = deadline_ms;
}

int ps_wire_encode_get_sticker(uint64_t request_id, uint32_t deadline_ms, uint64_t id,
                               uint8_t **buf, size_t *len, ps_err *err)
{
    return ps_wire_encode_get_sticker_emb(request_id, deadline_ms, id, 0, 0, buf, len, err);
}

int ps_wire_encode_get_sticker_emb(uint64_t request_id, uint32_t deadline_ms, uint64_t id,
                                   int with_embedding, uint64_t version, uint8_t **buf, size_t *len,
                                   ps_err *err)
{
    Persrv__Envelope e;
    Persrv__GetStickerRequest q;
    persrv__get_sticker_request__init(&q);
    q.id = id;
    q.with_embedding = with_embedding != 0;
    q.snapshot_version = version;
    ps_wire_env_init(&e, request_id, deadline_ms);
    e.body_case = PERSRV__ENVELOPE__BODY_GET_STICKER;
    e.get_sticker = &q;
    return ps_wire_pack(&e, buf, len, err);
}

int ps_wire_encode_health(uint64_t request_id, uint32_t deadline_ms, uint8_t **buf, size_t *len,
                          ps_err *err)
{
    Persrv__Envelope e;
    Persrv__HealthRequest q;
    persrv__health_request__init(&q);
    ps_wire_env_init(&e, request_id, deadline_ms);
    e.body_case = PERSRV__ENVELOPE__BODY_HEALTH;
    e.health = &q;
    return ps_wire_pack(&e, buf, len, err);
}

int ps_wire_encode_health_reply(uint64_t request_id, const ps_wire_health *h, uint8_t **buf,
                                size_t *len, ps_err *err)
{
    Persrv__Envelope e;
    Persrv__HealthReply r;
    if (buf) *buf = NULL;
    if (len) *len = 0;
    if (!h) return ps_err_set(err, PS_EINVAL, "ps_wire_encode_health_reply: h is NULL");
    persrv__health_reply__init(&r);
    r.shard = h->shard;
    r.nshards = h->nshards;
    r.snapshot_version = h->snapshot_version;
    r.stickers = h->stickers;
    r.ready = h->ready != 0;
    r.shards_up = h->shards_up;
    Persrv__SnapshotHeld held[PS_WIRE_MAX_HELD], *heldp[PS_WIRE_MAX_HELD];
    if (h->nheld > PS_WIRE_MAX_HELD)
        return ps_err_set(err, PS_ETOOBIG, "health_reply.held: %zu entries, at most %d", h->nheld,
                          PS_WIRE_MAX_HELD);
    for (size_t i = 0; i < h->nheld; i++) {
        persrv__snapshot_held__init(&held[i]);
        held[i].version = h->held[i].version;
        held[i].fingerprint = (char *)(h->held[i].fingerprint ? h->held[i].fingerprint : "");
        held[i].active = h->held[i].active != 0;
        held[i].stickers = h->held[i].stickers;
        heldp[i] = &held[i];
    }
    r.n_held = h->nheld;
    r.held = h->nheld ? heldp : NULL;
    ps_wire_env_init(&e, request_id, 0);
    e.body_case = PERSRV__ENVELOPE__BODY_HEALTH_REPLY;
    e.health_reply = &r;
    return ps_wire_pack(&e, buf, len, err);
}

int ps_wire_encode_error(uint64_t request_id, int code, const char *message, uint8_t **buf,
                         size_t *len, ps_err *err)
{
    Persrv__Envelope e;
    Persrv__Error r;
    char *copy = NULL;
    size_t n;
    int rc;

    if (buf) *buf = NULL;
    if (len) *len = 0;
    if (code >= 0)
        return ps_err_set(err, PS_EINVAL, "error.code: %d is not a PS_E* error code", code);
    if (!message) message = "";
    n = strnlen(message, PS_WIRE_MAX_STRING + 1);
    if (n > PS_WIRE_MAX_STRING) {
        n = PS_WIRE_MAX_STRING; /* message[n] is the first byte left out: cut before its char */
        while (n > 0 && ((unsigned char)message[n] & 0xC0) == 0x80) n--;
    }
    if (message[n] != '\0' || !ps_utf8_valid(message, n)) {
        copy = ps_malloc(n + 1);
        if (!copy) return ps_err_set(err, PS_ENOMEM, "error.message: out of memory");
        memcpy(copy, message, n);
        copy[n] = '\0';
        if (!ps_utf8_valid(copy, n))
            for (size_t i = 0; i < n; i++)
                if ((unsigned char)copy[i] >= 0x80) copy[i] = '?';
        message = copy;
    }
    persrv__error__init(&r);
    r.code = (char *)ps_errname(code);
    r.message = (char *)message;
    ps_wire_env_init(&e, request_id, 0);
    e.body_case = PERSRV__ENVELOPE__BODY_ERROR;
    e.error = &r;
    rc = ps_wire_pack(&e, buf, len, err);
    ps_free(copy);
    return rc;
}

/* The encoder checks sizes and NUL bytes but not UTF-8: the broker is the one to reject a
 * query that is not text (invalid_utf8), so a client hears its answer rather than a local one. */
int ps_wire_encode_query(uint64_t request_id, uint32_t deadline_ms, const char *q, size_t qlen,
                         const char *user, uint32_t k, int explain, uint8_t **buf, size_t *len,
                         ps_err *err)
{
    return ps_wire_encode_query_ex(request_id, deadline_ms, q, qlen, user, k, explain, NULL, buf,
                                   len, err);
}

int ps_wire_encode_query_ex(uint64_t request_id, uint32_t deadline_ms, const char *q, size_t qlen,
                            const char *user, uint32_t k, int explain, const ps_wire_query_opts *o,
                            uint8_t **buf, size_t *len, ps_err *err)
{
    Persrv__Envelope e;
    Persrv__QueryRequest r;
    char *copy = NULL;
    size_t ulen;
    int rc;

    ps_err_clear(err);
    if (!buf || !len) return ps_err_set(err, PS_EINVAL, "ps_wire_encode_query: buf or len is NULL");
    *buf = NULL;
    *len = 0;
    if (!q && qlen) return ps_err_set(err, PS_EINVAL, "query.q: NULL with length %zu", qlen);
    if (qlen > PS_WIRE_MAX_STRING)
        return ps_err_set(err, PS_ETOOBIG, "query.q: %zu bytes, at most %d", qlen,
                          PS_WIRE_MAX_STRING);
    if (qlen && memchr(q, 0, qlen))
        return ps_err_set(err, PS_EINVAL, "query.q: contains a NUL byte");
    if (!user) user = "";
    ulen = strnlen(user, PS_WIRE_MAX_USER + 1);
    if (ulen > PS_WIRE_MAX_USER)
        return ps_err_set(err, PS_ETOOBIG, "query.user: longer than %d bytes", PS_WIRE_MAX_USER);
    /* protobuf-c packs a string up to its NUL: q needs one at qlen */
    if (!(copy = ps_malloc(qlen + 1))) return ps_err_set(err, PS_ENOMEM, "query.q: out of memory");
    if (qlen) memcpy(copy, q, qlen);
    copy[qlen] = '\0';
    persrv__query_request__init(&r);
    r.q = copy;
    r.user = (char *)user;
    r.k = k;
    r.explain = explain != 0;
    if (o) {
        if (o->nexclude > PS_WIRE_MAX_EXCLUDE) {
            ps_free(copy);
            return ps_err_set(err, PS_ETOOBIG, "query.exclude: %zu ids, at most %d", o->nexclude,
                              PS_WIRE_MAX_EXCLUDE);
        }
        r.exclude = (uint64_t *)o->exclude;
        r.n_exclude = o->nexclude;
        r.offset = o->offset;
        r.timeout_ms = o->timeout_ms;
        r.no_partial = o->no_partial != 0;
    }
    ps_wire_env_init(&e, request_id, deadline_ms);
    e.body_case = PERSRV__ENVELOPE__BODY_QUERY;
    e.query = &r;
    rc = pack_checked(&e, buf, len, err);
    ps_free(copy);
    return rc;
}

int ps_wire_encode_batch(uint64_t request_id, uint32_t deadline_ms, int reply,
                         const uint8_t *const *frames, const size_t *lens, size_t n, uint8_t **buf,
                         size_t *len, ps_err *err)
{
    Persrv__Envelope e;
    Persrv__BatchRequest q;
    Persrv__BatchReply r;
    ProtobufCBinaryData items[PS_WIRE_MAX_BATCH];

    ps_err_clear(err);
    if (!buf || !len) return ps_err_set(err, PS_EINVAL, "ps_wire_encode_batch: buf or len is NULL");
    *buf = NULL;
    *len = 0;
    if (n > PS_WIRE_MAX_BATCH)
        return ps_err_set(err, PS_ETOOBIG, "batch: %zu elements, at most %d", n, PS_WIRE_MAX_BATCH);
    for (size_t i = 0; i < n; i++) items[i] = (ProtobufCBinaryData){lens[i], (uint8_t *)frames[i]};
    ps_wire_env_init(&e, request_id, deadline_ms);
    if (reply) {
        persrv__batch_reply__init(&r);
        r.n_replies = n;
        r.replies = items;
        e.body_case = PERSRV__ENVELOPE__BODY_BATCH_REPLY;
        e.batch_reply = &r;
    } else {
        persrv__batch_request__init(&q);
        q.n_requests = n;
        q.requests = items;
        e.body_case = PERSRV__ENVELOPE__BODY_BATCH;
        e.batch = &q;
    }
    return pack_checked(&e, buf, len, err);
}

int ps_wire_encode_click(uint64_t request_id, uint32_t deadline_ms, const char *user,
                         uint64_t sticker_id, const char *query, const char *click_id,
                         uint8_t **buf, size_t *len, ps_err *err)
{
    Persrv__Envelope e;
    Persrv__ClickRequest c;
    int rc;

    ps_err_clear(err);
    if (!buf || !len) return ps_err_set(err, PS_EINVAL, "ps_wire_encode_click: buf or len is NULL");
    *buf = NULL;
    *len = 0;
    if (!user || !user[0]) return ps_err_set(err, PS_EINVAL, "click.user: empty");
    if (strnlen(user, PS_WIRE_MAX_USER + 1) > PS_WIRE_MAX_USER)
        return ps_err_set(err, PS_ETOOBIG, "click.user: longer than %d bytes", PS_WIRE_MAX_USER);
    if (!query) query = "";
    if (strnlen(query, PS_WIRE_MAX_STRING + 1) > PS_WIRE_MAX_STRING)
        return ps_err_set(err, PS_ETOOBIG, "click.query: longer than %d bytes", PS_WIRE_MAX_STRING);
    if (!click_id) click_id = "";
    if (click_id[0] && (rc = ps_wire_check_click_id(click_id, "click.click_id", err))) return rc;
    persrv__click_request__init(&c);
    c.user = (char *)user;
    c.sticker_id = sticker_id;
    c.query = (char *)query;
    c.click_id = (char *)click_id;
    ps_wire_env_init(&e, request_id, deadline_ms);
    e.body_case = PERSRV__ENVELOPE__BODY_CLICK;
    e.click = &c;
    /* UTF-8 of user and query is the broker's to judge (invalid_utf8), as for a query */
    return pack_checked(&e, buf, len, err);
}

uint64_t ps_wire_peek_request_id(const void *buf, size_t len)
{
    const uint8_t *p = buf, *end = p + len;
    uint64_t id = 0;
    if (!buf) return 0;
    while (p < end) {
        wfield w;
        uint64_t v;
        if (next_field(&p, end, &w)) break; /* keep what was read before the bad field */
        if (w.num == 2 && w.wt == WIRE_VARINT && get_varint(&w.val, end, &v) == 0)
            id = v; /* the last one counts, as in protobuf-c */
    }
    return id;
}

/* v as a protobuf varint at out. Returns its length (1..10). */
static size_t put_varint(uint8_t *out, uint64_t v)
{
    size_t n = 0;
    while (v > 0x7f) {
        out[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

size_t ps_wire_stamp(uint8_t out[PS_WIRE_STAMP_MAX], uint64_t request_id, uint32_t deadline_ms)
{
    size_t n = 0;
    out[n++] = 2 << 3; /* request_id: field 2, wire type 0 (varint) */
    n += put_varint(out + n, request_id);
    out[n++] = 3 << 3; /* deadline_ms: field 3, varint */
    n += put_varint(out + n, deadline_ms);
    return n;
}

int ps_wire_error_code(const Persrv__Error *e)
{
    if (!e || !e->code) return PS_EINTERNAL;
#define PS__WIRE_ERR_LOOKUP(name, val, c, http, msg)                                               \
    if (strcmp(e->code, c) == 0) return val;
    PS_ERRNO_MAP(PS__WIRE_ERR_LOOKUP)
#undef PS__WIRE_ERR_LOOKUP
    return PS_EINTERNAL;
}

int ps_wire_check_trace(const char *id, ps_err *err)
{
    size_t n = id ? strnlen(id, PS_WIRE_MAX_TRACE + 1) : 0;
    if (n == 0) return ps_err_set(err, PS_EINVAL, "trace_id: empty");
    if (n > PS_WIRE_MAX_TRACE)
        return ps_err_set(err, PS_ETOOBIG, "trace_id: longer than %d bytes", PS_WIRE_MAX_TRACE);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)id[i] < 0x21 || (unsigned char)id[i] > 0x7e)
            return ps_err_set(err, PS_EINVAL, "trace_id: a byte outside 0x21..0x7e");
    return 0;
}

/* Append the string field `tag` (n bytes at s, n <= 16383) to an encoded envelope. */
static int append_string(uint8_t **buf, size_t *len, unsigned tag, const char *s, size_t n,
                         const char *name, ps_err *err)
{
    /* the tag, wire type 2 (length-delimited), the length as a varint (1 or 2 bytes) */
    uint8_t hdr[3] = {(uint8_t)((tag << 3) | 2)};
    size_t h = 1;
    for (size_t v = n; h < sizeof hdr; v >>= 7) {
        hdr[h++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        if (v <= 0x7f) break;
    }
    uint8_t *b = ps_realloc(*buf, *len + h + n);
    if (!b) return ps_err_set(err, PS_ENOMEM, "%s: out of memory", name);
    memcpy(b + *len, hdr, h);
    memcpy(b + *len + h, s, n);
    *buf = b;
    *len += h + n;
    return 0;
}

int ps_wire_append_trace(uint8_t **buf, size_t *len, const char *id, ps_err *err)
{
    int rc;
    if (!id || !*id) return 0;
    if ((rc = ps_wire_check_trace(id, err))) return rc;
    return append_string(buf, len, 5, id, strlen(id), "trace_id", err);
}

int ps_wire_append_api_key(uint8_t **buf, size_t *len, const char *key, ps_err *err)
{
    size_t n = key ? strnlen(key, PS_WIRE_MAX_API_KEY + 1) : 0;
    if (n == 0) return 0;
    if (n > PS_WIRE_MAX_API_KEY)
        return ps_err_set(err, PS_ETOOBIG, "api_key: longer than %d bytes", PS_WIRE_MAX_API_KEY);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)key[i] < 0x20 || key[i] == 0x7f)
            return ps_err_set(err, PS_EINVAL, "api_key: contains a control byte");
    return append_string(buf, len, 4, key, n, "api_key", err);
}
