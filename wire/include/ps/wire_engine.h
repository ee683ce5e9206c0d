/*
 * wire_engine.h — the messages that carry the engine's types (DESIGN §2, §3.2): the search
 * request the broker sends every shard and the shard's reply, the sticker a shard returns.
 * Library ps_wire_engine: the wire (wire.h) and the engine (search.h, profile.h, corpus.h)
 * meet here and nowhere else, so libpersrv, which speaks only the front door's messages,
 * links neither the engine nor what it needs.
 *
 * Encoders check what they build by the rules of ps_wire_decode (wire.h). Converters from the
 * wire take envelopes that ps_wire_decode returned: decoding is the one check, and they trust
 * what it passed.
 */
#ifndef PS_WIRE_ENGINE_H
#define PS_WIRE_ENGINE_H

#include "ps/corpus.h"
#include "ps/profile.h"
#include "ps/search.h"
#include "ps/wire.h"

/* A SearchRequest for the ntokens distinct analyzed tokens (NUL-terminated UTF-8 strings;
 * for a ps_tokens list, tokens[i] = t.text + t.off[i]). From opts it takes field_w (always
 * sent), R, use_utility, alpha and profile (NULL or k == 0: no personalization); k and
 * exhaustive stay local (a shard returns its top R by Recall). snapshot_version 0 asks for
 * the shard's active version. The request asks for the hits as columns (columnar_hits);
 * ps_wire_to_hits reads either form, so an older shard that answers with Hit messages is
 * understood. */
int ps_wire_encode_search(uint64_t request_id, uint32_t deadline_ms, const char *const *tokens,
                          size_t ntokens, const ps_search_opts *opts, uint64_t snapshot_version,
                          uint8_t **buf, size_t *len, ps_err *err);

/* A SearchReply with hits[0..n) (recall order; hit.doc is not sent), the snapshot version that
 * answered, and the postings the evaluation visited; the hits as columns when `columnar` (what
 * the request's columnar_hits asked), else as one Hit message each. */
int ps_wire_encode_search_reply(uint64_t request_id, uint32_t shard, uint64_t snapshot_version,
                                const ps_hit *hits, size_t n, uint64_t postings_visited,
                                int columnar, uint8_t **buf, size_t *len, ps_err *err);

/* A GetStickerReply for sticker `id`: rec NULL means not found; otherwise rec->id must equal
 * id, and each rec->field[f] (NULL = empty) must be NUL-terminated at rec->field_len[f] with no
 * NUL before (PS_EINVAL otherwise). */
int ps_wire_encode_sticker_reply(uint64_t request_id, uint32_t shard, uint64_t id,
                                 const ps_sticker_rec *rec, double utility, uint8_t **buf,
                                 size_t *len, ps_err *err);
/* The same with the sticker's embedding (emb[0..dim), finite; NULL = none; ignored when rec is
 * NULL). */
int ps_wire_encode_sticker_reply_emb(uint64_t request_id, uint32_t shard, uint64_t id,
                                     const ps_sticker_rec *rec, double utility, const float *emb,
                                     size_t dim, uint8_t **buf, size_t *len, ps_err *err);

/* ---- from the wire to engine types (on envelopes from ps_wire_decode) --------------------- */

/* Copy r's hits (Hit messages or columns) into hits[0..*n) (cap entries; PS_WIRE_MAX_HITS
 * always suffice). hit.doc is set to UINT32_MAX: doc numbers are local to a shard. Errors:
 * PS_ETOOBIG if cap is less than the reply's hits. */
int ps_wire_to_hits(const Persrv__SearchReply *r, ps_hit *hits, size_t cap, size_t *n, ps_err *err);

/* The number of hits in r, in either form. */
size_t ps_wire_reply_nhits(const Persrv__SearchReply *r);

/* Search options for q: defaults (ps_search_opts_default), then field_w (when q sends
 * weights), R = k = q->recall_depth, use_utility, alpha; opts->profile = NULL (see
 * ps_wire_to_profile). q is from ps_wire_decode: nothing is checked again. Errors: PS_EINVAL
 * for a NULL argument. */
int ps_wire_to_opts(const Persrv__SearchRequest *q, ps_search_opts *opts, ps_err *err);

/* The user's centroids in q as a profile: k = q->n_centroids (0 = no personalization),
 * dim = their length, fresh malloc'd centroids. OUT prof: caller frees with ps_profile_clear
 * (nothing to free on error). q is from ps_wire_decode. Errors: PS_EINVAL (NULL argument),
 * PS_ENOMEM. */
int ps_wire_to_profile(const Persrv__SearchRequest *q, ps_profile *prof, ps_err *err);

#endif
