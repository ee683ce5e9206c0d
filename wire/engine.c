/*
 * engine.c — wire messages to and from the engine's types (wire_engine.h): the search request
 * the broker sends and the shard answers, the sticker a shard returns. The converters from the
 * wire read envelopes that ps_wire_decode has checked and check nothing again.
 */
#include "ps/wire_engine.h"
#include "ps/alloc.h"

#include <stdlib.h>
#include <string.h>

_Static_assert(PS_WIRE_MAX_TOKENS == PS_SEARCH_MAX_TERMS, "a query's tokens fit a SearchRequest");
_Static_assert(PS_WIRE_MAX_HITS == PS_SEARCH_MAX_R, "a shard's top R fit a SearchReply");
_Static_assert(PS_WIRE_MAX_CENTROIDS == PS_PROFILE_KMAX, "a profile fits a SearchRequest");
_Static_assert(PS_WIRE_NFIELDS == PS_NFIELDS, "the wire carries every field");

int ps_wire_encode_search(uint64_t request_id, uint32_t deadline_ms, const char *const *tokens,
                          size_t ntokens, const ps_search_opts *opts, uint64_t snapshot_version,
                          uint8_t **buf, size_t *len, ps_err *err)
{
    Persrv__Envelope e;
    Persrv__SearchRequest q;
    Persrv__Centroid cs[PS_PROFILE_KMAX], *cp[PS_PROFILE_KMAX];
    const ps_profile *p;

    if (buf) *buf = NULL;
    if (len) *len = 0;
    if (!opts) return ps_err_set(err, PS_EINVAL, "ps_wire_encode_search: opts is NULL");
    if (ntokens && !tokens) return ps_err_set(err, PS_EINVAL, "search.tokens: NULL");
    persrv__search_request__init(&q);
    q.n_tokens = ntokens;
    q.tokens = (char **)tokens;
    q.n_field_weights = PS_NFIELDS;
    q.field_weights = (float *)opts->field_w;
    q.recall_depth = opts->R;
    q.use_utility = opts->use_utility != 0;
    q.alpha = opts->alpha;
    q.snapshot_version = snapshot_version;
    q.columnar_hits = 1;
    p = opts->profile;
    if (p && p->k) {
        if (p->k > PS_PROFILE_KMAX)
            return ps_err_set(err, PS_ETOOBIG, "search.centroids: %u entries, at most %d", p->k,
                              PS_PROFILE_KMAX);
        if (!p->centroids) return ps_err_set(err, PS_EINVAL, "search.centroids: profile has none");
        for (uint32_t c = 0; c < p->k; c++) {
            persrv__centroid__init(&cs[c]);
            cs[c].n_vector = p->dim;
            cs[c].vector = p->centroids + (size_t)c * p->dim;
            cs[c].radius = p->radius[c];
            cp[c] = &cs[c];
        }
        q.n_centroids = p->k;
        q.centroids = cp;
    }
    ps_wire_env_init(&e, request_id, deadline_ms);
    e.body_case = PERSRV__ENVELOPE__BODY_SEARCH;
    e.search = &q;
    return ps_wire_pack(&e, buf, len, err);
}

int ps_wire_encode_search_reply(uint64_t request_id, uint32_t shard, uint64_t snapshot_version,
                                const ps_hit *hits, size_t n, uint64_t postings_visited,
                                int columnar, uint8_t **buf, size_t *len, ps_err *err)
{
    Persrv__Envelope e;
    Persrv__SearchReply r;
    Persrv__HitColumns cols;
    Persrv__Hit *hv = NULL, **hp = NULL;
    void *mem = NULL;
    int rc;

    if (buf) *buf = NULL;
    if (len) *len = 0;
    if (n > PS_WIRE_MAX_HITS)
        return ps_err_set(err, PS_ETOOBIG, "search_reply.hits: %zu entries, at most %d", n,
                          PS_WIRE_MAX_HITS);
    if (n && !hits) return ps_err_set(err, PS_EINVAL, "search_reply.hits: NULL");
    persrv__search_reply__init(&r);
    if (columnar) {
        /* one block: the id column, five double columns, the centroid column */
        mem = n ? ps_malloc(n * (sizeof(uint64_t) + 5 * sizeof(double) + sizeof(int32_t))) : NULL;
        if (n && !mem) return ps_err_set(err, PS_ENOMEM, "search_reply.columns: out of memory");
        persrv__hit_columns__init(&cols);
        cols.n_id = cols.n_relevance = cols.n_utility = cols.n_recall = cols.n_preference =
            cols.n_score = cols.n_centroid = n;
        cols.id = mem;
        cols.relevance = (double *)(cols.id + n);
        cols.utility = cols.relevance + n;
        cols.recall = cols.utility + n;
        cols.preference = cols.recall + n;
        cols.score = cols.preference + n;
        cols.centroid = (int32_t *)(cols.score + n);
        for (size_t i = 0; i < n; i++) {
            cols.id[i] = hits[i].id;
            cols.relevance[i] = hits[i].relevance;
            cols.utility[i] = hits[i].utility;
            cols.recall[i] = hits[i].recall;
            cols.preference[i] = hits[i].preference;
            cols.score[i] = hits[i].score;
            cols.centroid[i] = hits[i].centroid;
        }
        r.columns = &cols;
    } else if (n) {
        /* one block: the messages, then the pointer array protobuf-c wants */
        mem = hv = ps_malloc(n * (sizeof *hv + sizeof *hp));
        if (!hv) return ps_err_set(err, PS_ENOMEM, "search_reply.hits: out of memory");
        hp = (Persrv__Hit **)(hv + n);
        for (size_t i = 0; i < n; i++) {
            persrv__hit__init(&hv[i]);
            hv[i].id = hits[i].id;
            hv[i].relevance = hits[i].relevance;
            hv[i].utility = hits[i].utility;
            hv[i].recall = hits[i].recall;
            hv[i].preference = hits[i].preference;
            hv[i].score = hits[i].score;
            hv[i].centroid = hits[i].centroid;
            hp[i] = &hv[i];
        }
        r.n_hits = n;
        r.hits = hp;
    }
    r.shard = shard;
    r.snapshot_version = snapshot_version;
    r.postings_visited = postings_visited;
    ps_wire_env_init(&e, request_id, 0);
    e.body_case = PERSRV__ENVELOPE__BODY_SEARCH_REPLY;
    e.search_reply = &r;
    rc = ps_wire_pack(&e, buf, len, err);
    ps_free(mem);
    return rc;
}

int ps_wire_encode_sticker_reply(uint64_t request_id, uint32_t shard, uint64_t id,
                                 const ps_sticker_rec *rec, double utility, uint8_t **buf,
                                 size_t *len, ps_err *err)
{
    return ps_wire_encode_sticker_reply_emb(request_id, shard, id, rec, utility, NULL, 0, buf, len,
                                            err);
}

int ps_wire_encode_sticker_reply_emb(uint64_t request_id, uint32_t shard, uint64_t id,
                                     const ps_sticker_rec *rec, double utility, const float *emb,
                                     size_t dim, uint8_t **buf, size_t *len, ps_err *err)
{
    Persrv__Envelope e;
    Persrv__GetStickerReply r;
    char **dst[PS_NFIELDS] = {&r.ocr, &r.queries, &r.keywords, &r.desc, &r.emotion};

    if (buf) *buf = NULL;
    if (len) *len = 0;
    persrv__get_sticker_reply__init(&r);
    r.shard = shard;
    r.id = id;
    r.utility = utility;
    if (rec) {
        if (rec->id != id)
            return ps_err_set(err, PS_EINVAL,
                              "sticker_reply.id: record is sticker %llu, reply for %llu",
                              (unsigned long long)rec->id, (unsigned long long)id);
        r.found = 1;
        for (int f = 0; f < PS_NFIELDS; f++) {
            const char *s = rec->field[f];
            size_t n = rec->field_len[f];
            if (!s && n)
                return ps_err_set(err, PS_EINVAL, "sticker_reply.%s: NULL with length %zu",
                                  ps_field_names[f], n);
            if (s && memchr(s, 0, n))
                return ps_err_set(err, PS_EINVAL, "sticker_reply.%s: contains a NUL byte",
                                  ps_field_names[f]);
            if (s) *dst[f] = (char *)s;
        }
        if (rec->image_len) {
            if (!rec->image || memchr(rec->image, 0, rec->image_len))
                return ps_err_set(err, PS_EINVAL, "sticker_reply.image: NULL or a NUL byte");
            r.image = rec->image;
        }
        r.n_embedding = emb ? dim : 0;
        r.embedding = (float *)emb;
    }
    ps_wire_env_init(&e, request_id, 0);
    e.body_case = PERSRV__ENVELOPE__BODY_STICKER_REPLY;
    e.sticker_reply = &r;
    return ps_wire_pack(&e, buf, len, err);
}

/* ---- to engine types ------------------------------------------------------------------------ */

int ps_wire_to_hits(const Persrv__SearchReply *r, ps_hit *hits, size_t cap, size_t *n, ps_err *err)
{
    if (n) *n = 0;
    if (!r || !n || (cap && !hits))
        return ps_err_set(err, PS_EINVAL, "ps_wire_to_hits: NULL argument");
    const Persrv__HitColumns *c = r->columns;
    size_t m = ps_wire_reply_nhits(r);
    if (m > cap)
        return ps_err_set(err, PS_ETOOBIG, "search_reply.hits: %zu entries, room for %zu", m, cap);
    if (c) { /* ps_wire_decode checked that every column has m entries */
        for (size_t i = 0; i < m; i++)
            hits[i] = (ps_hit){.id = c->id[i],
                               .doc = UINT32_MAX,
                               .centroid = c->centroid[i],
                               .relevance = c->relevance[i],
                               .utility = c->utility[i],
                               .recall = c->recall[i],
                               .preference = c->preference[i],
                               .score = c->score[i]};
    } else {
        for (size_t i = 0; i < m; i++) {
            const Persrv__Hit *h = r->hits[i];
            hits[i] = (ps_hit){.id = h->id,
                               .doc = UINT32_MAX,
                               .centroid = h->centroid,
                               .relevance = h->relevance,
                               .utility = h->utility,
                               .recall = h->recall,
                               .preference = h->preference,
                               .score = h->score};
        }
    }
    *n = m;
    return 0;
}

size_t ps_wire_reply_nhits(const Persrv__SearchReply *r)
{
    return r->columns ? r->columns->n_id : r->n_hits;
}

int ps_wire_to_opts(const Persrv__SearchRequest *q, ps_search_opts *opts, ps_err *err)
{
    if (!q || !opts) return ps_err_set(err, PS_EINVAL, "ps_wire_to_opts: NULL argument");
    ps_search_opts_default(opts);
    if (q->n_field_weights == PS_NFIELDS)
        for (int f = 0; f < PS_NFIELDS; f++) opts->field_w[f] = q->field_weights[f];
    opts->R = q->recall_depth;
    opts->k = q->recall_depth;
    opts->use_utility = q->use_utility != 0;
    opts->alpha = q->alpha;
    opts->profile = NULL;
    return 0;
}

int ps_wire_to_profile(const Persrv__SearchRequest *q, ps_profile *prof, ps_err *err)
{
    if (!prof) return ps_err_set(err, PS_EINVAL, "ps_wire_to_profile: prof is NULL");
    memset(prof, 0, sizeof *prof);
    if (!q) return ps_err_set(err, PS_EINVAL, "ps_wire_to_profile: q is NULL");
    if (q->n_centroids == 0) return 0;
    size_t k = q->n_centroids, dim = q->centroids[0]->n_vector;
    float *c = ps_malloc(k * dim * sizeof *c);
    if (!c) return ps_err_set(err, PS_ENOMEM, "search.centroids: out of memory");
    for (size_t i = 0; i < k; i++) {
        memcpy(c + i * dim, q->centroids[i]->vector, dim * sizeof *c);
        prof->radius[i] = q->centroids[i]->radius;
    }
    prof->k = (uint32_t)k;
    prof->dim = (uint32_t)dim;
    prof->centroids = c;
    return 0;
}
