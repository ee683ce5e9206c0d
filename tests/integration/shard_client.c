/*
 * shard_client.c — the test client of tests/integration/test_shard.sh: talks to running
 * `shard` daemons over ZeroMQ (DEALER, or REQ for `health --req`) and checks their answers.
 * Every check prints what it saw and exits 1 on the first mismatch.
 *
 *   shard_client freeport
 *       print a TCP port on 127.0.0.1 that was free a moment ago
 *   shard_client health EP [--req] [--expect-shard N --expect-stickers M]
 *   shard_client compare SINGLE_DIR PROFILES_DIR CLICKS_TSV NQUERIES EP0 EP1 ...
 *       NQUERIES distinct queries of the click log, each without a profile and with the
 *       profile of one of the log's users (from PROFILES_DIR, sent as centroids): the shards'
 *       replies merged with ps_merge_hits must equal ps_search on the single-node index
 *       SINGLE_DIR (ids, order, every score bit for bit)
 *   shard_client stickers SINGLE_DIR EP0 EP1 ...
 *       GetSticker of known ids (fields and utility as stored in SINGLE_DIR) on the shard that
 *       holds them (jump hash) and found=false on the others
 *   shard_client health-busy EP N
 *       N pipelined searches then a HealthRequest on one connection: health must be answered
 *       before the last search (the server loop answers it, not the worker behind them)
 *   shard_client flood EP N
 *       N pipelined searches, then count the replies (manual drain checks)
 *   shard_client bad EP MAX_FRAME
 *       malformed and hostile requests each get an Error (or a defined fallback), an
 *       oversized frame is dropped, and the shard still answers afterwards
 *   shard_client front-bad EP MAX_FRAME QUERY
 *       the same for the broker's ZeroMQ front door (EP): garbage, empty and oversized
 *       frames, a wrong version, empty / token-less / invalid UTF-8 / 10 KB queries, k =
 *       100000, a bad user name, a shard's request, an unknown sticker; an unknown user gets
 *       the unpersonalized answer; QUERY (which has hits) is answered before and after
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "ps/curve.h"
#include "ps/analyzer.h"
#include "ps/index.h"
#include "ps/store.h"
#include "ps/wire_engine.h"

#define TIMEOUT_MS 30000 /* a reply later than this is a failure, not a measurement */
#define MAX_SHARDS 16

static void *zctx;
static uint64_t next_id = 1000;
static int conn_hwm = -1; /* >= 0: ZMQ_SNDHWM / ZMQ_RCVHWM of the next sockets (0: no limit) */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("shard_client: FAIL: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void *connect_to(const char *ep, int type)
{
    void *s = zmq_socket(zctx, type);
    int t = TIMEOUT_MS, zero = 0;
    int64_t maxmsg = 64 << 20;
    if (!s || zmq_setsockopt(s, ZMQ_RCVTIMEO, &t, sizeof t) ||
        zmq_setsockopt(s, ZMQ_SNDTIMEO, &t, sizeof t) ||
        zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) ||
        (conn_hwm >= 0 && (zmq_setsockopt(s, ZMQ_SNDHWM, &conn_hwm, sizeof conn_hwm) ||
                           zmq_setsockopt(s, ZMQ_RCVHWM, &conn_hwm, sizeof conn_hwm))) ||
        ps_curve_env_client(s, ep, NULL) || zmq_connect(s, ep))
        die("connect %s: %s", ep, zmq_strerror(zmq_errno()));
    return s;
}

static void send_frame(void *s, const void *buf, size_t len)
{
    if (zmq_send(s, buf, len, 0) != (int)len) die("send: %s", zmq_strerror(zmq_errno()));
}

/* Receive one reply frame and decode it (the shard's replies must always decode). */
static Persrv__Envelope *recv_env(void *s)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, s, 0) < 0) die("no reply: %s", zmq_strerror(zmq_errno()));
    if (zmq_msg_more(&m)) die("reply has more than one frame");
    Persrv__Envelope *env = NULL;
    ps_err err = {0, ""};
    if (ps_wire_decode(zmq_msg_data(&m), zmq_msg_size(&m), 64 << 20, &env, &err))
        die("reply does not decode: %s", err.msg);
    zmq_msg_close(&m);
    return env;
}

static Persrv__Envelope *rpc(void *s, const void *buf, size_t len)
{
    send_frame(s, buf, len);
    return recv_env(s);
}

/* Pack e with protobuf-c directly, bypassing ps_wire's checks: a broken peer. */
static uint8_t *raw_pack(const Persrv__Envelope *e, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(&e->base);
    uint8_t *b = malloc(*len ? *len : 1);
    if (!b) die("out of memory");
    protobuf_c_message_pack(&e->base, b);
    return b;
}

static void expect_error(Persrv__Envelope *env, const char *what, const char *code1,
                         const char *code2, uint64_t request_id)
{
    if (env->body_case != PERSRV__ENVELOPE__BODY_ERROR)
        die("%s: expected an Error reply, got body %d", what, env->body_case);
    const char *code = env->error->code;
    if (strcmp(code, code1) && (!code2 || strcmp(code, code2)))
        die("%s: error code %s (%s), expected %s", what, code, env->error->message, code1);
    if (env->request_id != request_id)
        die("%s: request_id %llu, expected %llu", what, (unsigned long long)env->request_id,
            (unsigned long long)request_id);
    printf("  %-28s -> %s: %s\n", what, code, env->error->message);
    ps_wire_free(env);
}

/* ---- health ----------------------------------------------------------------------------- */

static Persrv__HealthReply *health(void *s, Persrv__Envelope **env)
{
    uint8_t *buf;
    size_t len;
    uint64_t id = next_id++;
    if (ps_wire_encode_health(id, 0, &buf, &len, NULL)) die("encode health");
    *env = rpc(s, buf, len);
    free(buf);
    if ((*env)->body_case != PERSRV__ENVELOPE__BODY_HEALTH_REPLY)
        die("health: reply body %d%s%s", (*env)->body_case,
            (*env)->body_case == PERSRV__ENVELOPE__BODY_ERROR ? " " : "",
            (*env)->body_case == PERSRV__ENVELOPE__BODY_ERROR ? (*env)->error->message : "");
    if ((*env)->request_id != id) die("health: request_id not echoed");
    return (*env)->health_reply;
}

static int cmd_health(int argc, char **argv)
{
    if (argc < 1) die("usage: health EP [--req] [--expect-shard N --expect-stickers M]");
    int req = 0;
    long want_shard = -1, want_stickers = -1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--req"))
            req = 1;
        else if (!strcmp(argv[i], "--expect-shard") && i + 1 < argc)
            want_shard = atol(argv[++i]);
        else if (!strcmp(argv[i], "--expect-stickers") && i + 1 < argc)
            want_stickers = atol(argv[++i]);
        else
            die("health: unknown argument %s", argv[i]);
    }
    void *s = connect_to(argv[0], req ? ZMQ_REQ : ZMQ_DEALER);
    Persrv__Envelope *env;
    Persrv__HealthReply *h = health(s, &env);
    printf("shard=%u nshards=%u stickers=%llu ready=%d\n", h->shard, h->nshards,
           (unsigned long long)h->stickers, h->ready);
    if (!h->ready) die("health: not ready");
    if (want_shard >= 0 && h->shard != (uint32_t)want_shard)
        die("health: shard %u, expected %ld", h->shard, want_shard);
    if (want_stickers >= 0 && h->stickers != (uint64_t)want_stickers)
        die("health: %llu stickers, expected %ld", (unsigned long long)h->stickers, want_stickers);
    ps_wire_free(env);
    zmq_close(s);
    return 0;
}

/* ---- compare ---------------------------------------------------------------------------- */

typedef struct strs {
    char **v;
    size_t n, cap;
} strs;

static int strs_has(const strs *s, const char *x)
{
    for (size_t i = 0; i < s->n; i++)
        if (!strcmp(s->v[i], x)) return 1;
    return 0;
}

static void strs_add(strs *s, const char *x)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        if (!(s->v = realloc(s->v, s->cap * sizeof *s->v))) die("out of memory");
    }
    if (!(s->v[s->n++] = strdup(x))) die("out of memory");
}

static void strs_free(strs *s)
{
    for (size_t i = 0; i < s->n; i++) free(s->v[i]);
    free(s->v);
}

/* Distinct users and queries of a click log (user \t query \t sticker_id). */
static void read_clicks(const char *path, size_t nq, strs *users, strs *queries)
{
    FILE *f = fopen(path, "r");
    if (!f) die("%s: cannot open", path);
    char line[8192];
    while (fgets(line, sizeof line, f)) {
        char *t1 = strchr(line, '\t'), *t2 = t1 ? strchr(t1 + 1, '\t') : NULL;
        if (!t2) continue;
        *t1 = *t2 = '\0';
        if (!strs_has(users, line)) strs_add(users, line);
        if (queries->n < nq && !strs_has(queries, t1 + 1)) strs_add(queries, t1 + 1);
    }
    fclose(f);
}

static void compare_hits(const char *what, const ps_hit *a, size_t na, const ps_hit *b, size_t nb)
{
    if (na != nb) die("%s: %zu hits from the shards, %zu from the single node", what, na, nb);
    for (size_t i = 0; i < na; i++) {
        const ps_hit *x = &a[i], *y = &b[i];
        if (x->id != y->id || x->centroid != y->centroid ||
            memcmp(&x->relevance, &y->relevance, sizeof(double)) ||
            memcmp(&x->utility, &y->utility, sizeof(double)) ||
            memcmp(&x->recall, &y->recall, sizeof(double)) ||
            memcmp(&x->preference, &y->preference, sizeof(double)) ||
            memcmp(&x->score, &y->score, sizeof(double)))
            die("%s: hit %zu differs: shards id=%llu score=%.17g recall=%.17g pref=%.17g c=%d, "
                "single id=%llu score=%.17g recall=%.17g pref=%.17g c=%d",
                what, i, (unsigned long long)x->id, x->score, x->recall, x->preference, x->centroid,
                (unsigned long long)y->id, y->score, y->recall, y->preference, y->centroid);
    }
}

static int cmd_compare(int argc, char **argv)
{
    if (argc < 5) die("usage: compare SINGLE_DIR PROFILES_DIR CLICKS_TSV NQUERIES EP...");
    size_t nq = (size_t)atol(argv[3]);
    int nshards = argc - 4;
    if (nshards > MAX_SHARDS) die("too many shards");
    ps_err err = {0, ""};
    ps_store_t *single = ps_store_open(argv[0], &err);
    if (!single) die("open %s: %s", argv[0], err.msg);
    ps_profiles_t *profs = ps_profiles_open(argv[1], &err);
    if (!profs) die("open %s: %s", argv[1], err.msg);
    strs users = {0}, queries = {0};
    read_clicks(argv[2], nq, &users, &queries);
    if (queries.n < nq || users.n == 0)
        die("%s: only %zu distinct queries, %zu users", argv[2], queries.n, users.n);

    ps_searcher_t *se = ps_searcher_new(ps_store_index(single), &err);
    ps_analyzer_t *an = ps_analyzer_new(&err);
    if (!se || !an) die("searcher: %s", err.msg);
    void *socks[MAX_SHARDS];
    for (int i = 0; i < nshards; i++) socks[i] = connect_to(argv[4 + i], ZMQ_DEALER);
    ps_hit *merged = malloc((size_t)nshards * PS_WIRE_MAX_HITS * sizeof *merged);
    ps_hit *want = malloc(PS_SEARCH_MAX_R * sizeof *want);
    const char **tokp = malloc(PS_SEARCH_MAX_TERMS * sizeof *tokp);
    if (!merged || !want || !tokp) die("out of memory");
    ps_tokens toks;
    ps_tokens_init(&toks);
    size_t compared = 0, personalized = 0, nonempty = 0, preferred = 0, skipped = 0;

    for (size_t qi = 0; qi < queries.n; qi++) {
        const char *q = queries.v[qi];
        if (ps_analyze(an, q, strlen(q), "query", &toks, &err)) die("analyze %s: %s", q, err.msg);
        ps_tokens_distinct(&toks);
        if (toks.n == 0 || toks.n > PS_SEARCH_MAX_TERMS) {
            skipped++;
            continue;
        }
        for (size_t t = 0; t < toks.n; t++) tokp[t] = toks.text + toks.off[t];
        for (int personal = 0; personal < 2; personal++) {
            ps_profile prof = {0};
            const char *user = users.v[qi % users.n];
            ps_search_opts opts;
            ps_search_opts_default(&opts);
            opts.R = 100;
            opts.k = (qi % 3 == 0) ? opts.R : 10;
            if (personal) {
                int rc = ps_profiles_get(profs, user, &prof, &err);
                if (rc) die("profile of %s: %s", user, err.msg);
                opts.profile = &prof;
                personalized++;
            }
            uint8_t *buf;
            size_t len, n = 0;
            uint64_t id = next_id++;
            if (ps_wire_encode_search(id, 0, tokp, toks.n, &opts, 0, &buf, &len, &err))
                die("encode search: %s", err.msg);
            for (int s = 0; s < nshards; s++) send_frame(socks[s], buf, len);
            free(buf);
            for (int s = 0; s < nshards; s++) {
                Persrv__Envelope *env = recv_env(socks[s]);
                if (env->body_case != PERSRV__ENVELOPE__BODY_SEARCH_REPLY)
                    die("query '%s' shard %d: body %d (%s)", q, s, env->body_case,
                        env->body_case == PERSRV__ENVELOPE__BODY_ERROR ? env->error->message : "");
                if (env->request_id != id || env->search_reply->shard != (uint32_t)s)
                    die("query '%s' shard %d: request_id %llu shard %u", q, s,
                        (unsigned long long)env->request_id, env->search_reply->shard);
                size_t got;
                if (ps_wire_to_hits(env->search_reply, merged + n, PS_WIRE_MAX_HITS, &got, &err))
                    die("to_hits: %s", err.msg);
                /* each shard answers in recall order */
                for (size_t h = n + 1; h < n + got; h++)
                    if (merged[h].recall > merged[h - 1].recall)
                        die("query '%s' shard %d: hits not in recall order", q, s);
                n += got;
                ps_wire_free(env);
            }
            size_t m = ps_merge_hits(merged, n, opts.R, opts.k), nw = 0;
            if (ps_search(se, q, strlen(q), &opts, want, &nw, NULL, &err))
                die("ps_search '%s': %s", q, err.msg);
            char what[512];
            snprintf(what, sizeof what, "query '%s'%s%s k=%u", q, personal ? " user " : "",
                     personal ? user : "", opts.k);
            compare_hits(what, merged, m, want, nw);
            compared++;
            if (m) nonempty++;
            for (size_t h = 0; h < m; h++)
                if (merged[h].preference != 1.0) {
                    preferred++;
                    break;
                }
            ps_profile_clear(&prof);
        }
    }
    printf("compare: %zu searches (%zu personalized, %zu with hits, %zu where a preference "
           "applied), %zu queries skipped (no token)\n",
           compared, personalized, nonempty, preferred, skipped);
    if (compared < 50) die("only %zu searches compared", compared);
    if (nonempty < compared / 2) die("most searches returned nothing: the test proves little");
    if (preferred == 0) die("no personalized search changed a score: profiles were not applied");

    ps_tokens_free(&toks);
    free(tokp);
    free(want);
    free(merged);
    for (int i = 0; i < nshards; i++) zmq_close(socks[i]);
    ps_analyzer_free(an);
    ps_searcher_free(se);
    strs_free(&users);
    strs_free(&queries);
    ps_profiles_close(profs);
    ps_store_close(single);
    return 0;
}

/* ---- stickers --------------------------------------------------------------------------- */

static Persrv__Envelope *get_sticker(void *s, uint64_t sid, uint64_t *req_id)
{
    uint8_t *buf;
    size_t len;
    *req_id = next_id++;
    if (ps_wire_encode_get_sticker(*req_id, 0, sid, &buf, &len, NULL)) die("encode get_sticker");
    Persrv__Envelope *env = rpc(s, buf, len);
    free(buf);
    if (env->body_case != PERSRV__ENVELOPE__BODY_STICKER_REPLY)
        die("get_sticker %llu: body %d", (unsigned long long)sid, env->body_case);
    if (env->request_id != *req_id) die("get_sticker: request_id not echoed");
    return env;
}

static int cmd_stickers(int argc, char **argv)
{
    if (argc < 2) die("usage: stickers SINGLE_DIR EP...");
    int nshards = argc - 1;
    if (nshards > MAX_SHARDS) die("too many shards");
    ps_err err = {0, ""};
    ps_store_t *single = ps_store_open(argv[0], &err);
    if (!single) die("open %s: %s", argv[0], err.msg);
    const ps_index_t *ix = ps_store_index(single);
    void *socks[MAX_SHARDS];
    for (int i = 0; i < nshards; i++) socks[i] = connect_to(argv[1 + i], ZMQ_DEALER);
    uint32_t ndocs = ps_index_ndocs(ix), checked = 0, nonempty = 0;
    for (uint32_t doc = 0; doc < ndocs; doc += ndocs / 40 + 1) {
        uint64_t sid = ps_index_id(ix, doc), rid;
        char *fields[PS_NFIELDS];
        if (ps_store_fields(single, doc, fields, &err)) die("fields of %u: %s", doc, err.msg);
        uint32_t owner = ps_jump_hash(sid, (uint32_t)nshards);
        for (int s = 0; s < nshards; s++) {
            Persrv__Envelope *env = get_sticker(socks[s], sid, &rid);
            Persrv__GetStickerReply *r = env->sticker_reply;
            if (r->shard != (uint32_t)s || r->id != sid)
                die("sticker %llu: reply names shard %u id %llu", (unsigned long long)sid, r->shard,
                    (unsigned long long)r->id);
            if ((uint32_t)s != owner) {
                if (r->found)
                    die("sticker %llu found on shard %d, not its owner", (unsigned long long)sid,
                        s);
            } else {
                const char *got[PS_NFIELDS] = {r->ocr, r->queries, r->keywords, r->desc,
                                               r->emotion};
                if (!r->found)
                    die("sticker %llu not found on its shard %d", (unsigned long long)sid, s);
                for (int f = 0; f < PS_NFIELDS; f++) {
                    if (strcmp(got[f], fields[f]))
                        die("sticker %llu field %s: '%s', stored '%s'", (unsigned long long)sid,
                            ps_field_names[f], got[f], fields[f]);
                    if (*fields[f]) nonempty++;
                }
                float u = ps_index_utility(ix, doc);
                if (r->utility != (double)u)
                    die("sticker %llu utility %.17g, stored %.17g", (unsigned long long)sid,
                        r->utility, (double)u);
                checked++;
            }
            ps_wire_free(env);
        }
        for (int f = 0; f < PS_NFIELDS; f++) free(fields[f]);
    }
    if (checked < 20 || nonempty < checked) die("only %u stickers checked", checked);
    printf("stickers: %u stickers match their stored fields on their shard and are absent "
           "elsewhere\n",
           checked);
    for (int i = 0; i < nshards; i++) zmq_close(socks[i]);
    ps_store_close(single);
    return 0;
}

/* ---- bad input -------------------------------------------------------------------------- */

static Persrv__Envelope *search_env(Persrv__SearchRequest *q, uint64_t id)
{
    static Persrv__Envelope e;
    persrv__envelope__init(&e);
    e.version = PS_WIRE_VERSION;
    e.request_id = id;
    e.body_case = PERSRV__ENVELOPE__BODY_SEARCH;
    e.search = q;
    return &e;
}

static Persrv__Envelope *send_raw(void *s, const Persrv__Envelope *e)
{
    size_t len;
    uint8_t *b = raw_pack(e, &len);
    Persrv__Envelope *r = rpc(s, b, len);
    free(b);
    return r;
}

/* An oversized frame: ZeroMQ drops the peer's connection; the daemon must not care. Its own
 * context, terminated with a linger, makes sure the frame left before the caller goes on. */
static void send_oversized(const char *ep, size_t max_frame)
{
    void *zc2 = zmq_ctx_new();
    void *big = zmq_socket(zc2, ZMQ_DEALER);
    int linger = TIMEOUT_MS;
    zmq_setsockopt(big, ZMQ_LINGER, &linger, sizeof linger);
    if (ps_curve_env_client(big, ep, NULL) || zmq_connect(big, ep))
        die("connect: %s", zmq_strerror(zmq_errno()));
    size_t biglen = max_frame + 4096;
    uint8_t *bigbuf = calloc(1, biglen);
    if (!bigbuf) die("out of memory");
    send_frame(big, bigbuf, biglen);
    free(bigbuf);
    zmq_close(big);
    zmq_ctx_term(zc2);
    printf("  %-28s -> sent %zu bytes (cap %zu)\n", "oversized frame", biglen, max_frame);
}

static int cmd_bad(int argc, char **argv)
{
    if (argc != 2) die("usage: bad EP MAX_FRAME");
    size_t max_frame = (size_t)atol(argv[1]);
    void *s = connect_to(argv[0], ZMQ_DEALER);
    Persrv__Envelope *henv;
    health(s, &henv);
    ps_wire_free(henv);

    uint8_t garbage[64];
    for (size_t i = 0; i < sizeof garbage; i++) garbage[i] = (uint8_t)(0xff - 7 * i);
    expect_error(rpc(s, garbage, sizeof garbage), "garbage frame", "parse_error", NULL, 0);
    expect_error(rpc(s, "", 0), "empty frame", "parse_error", NULL, 0);

    Persrv__Envelope e = PERSRV__ENVELOPE__INIT;
    Persrv__HealthRequest hr = PERSRV__HEALTH_REQUEST__INIT;
    e.version = 99;
    e.request_id = 5;
    e.body_case = PERSRV__ENVELOPE__BODY_HEALTH;
    e.health = &hr;
    expect_error(send_raw(s, &e), "version 99", "invalid_argument", NULL, 5);

    e.version = PS_WIRE_VERSION;
    e.body_case = PERSRV__ENVELOPE__BODY__NOT_SET;
    expect_error(send_raw(s, &e), "no body", "invalid_argument", NULL, 5);

    Persrv__SearchRequest q = PERSRV__SEARCH_REQUEST__INIT;
    q.recall_depth = 100;
    q.use_utility = 1;
    expect_error(send_raw(s, search_env(&q, 11)), "search without tokens", "invalid_argument",
                 "invalid_query", 11);

    static char tokbuf[300][8];
    char *many[300];
    for (int i = 0; i < 300; i++) {
        snprintf(tokbuf[i], sizeof tokbuf[i], "t%d", i);
        many[i] = tokbuf[i];
    }
    q.n_tokens = 300;
    q.tokens = many;
    expect_error(send_raw(s, search_env(&q, 12)), "search with 300 tokens", "too_large", NULL, 12);

    char bad_utf8[] = "\xff\xfe", ok_tok[] = "好";
    char *bad_toks[] = {ok_tok, bad_utf8};
    q.n_tokens = 2;
    q.tokens = bad_toks;
    expect_error(send_raw(s, search_env(&q, 13)), "search with invalid UTF-8", "invalid_utf8", NULL,
                 13);

    /* Every Error echoes the request's id, found in the frame when it does not decode
     * (ps_dispatch's one rule); decodable but wrong for this shard: the same. */
    char *good_toks[] = {ok_tok};
    q.n_tokens = 1;
    q.tokens = good_toks;
    q.snapshot_version = 5;
    expect_error(send_raw(s, search_env(&q, 14)), "unknown snapshot version", "not_found", NULL,
                 14);
    q.snapshot_version = 0;

    float vec[3] = {1, 0, 0};
    Persrv__Centroid c = PERSRV__CENTROID__INIT, *cs[] = {&c};
    c.n_vector = 3;
    c.vector = vec;
    c.radius = 10;
    q.n_centroids = 1;
    q.centroids = cs;
    q.alpha = 0.3f;
    expect_error(send_raw(s, search_env(&q, 15)), "centroid of the wrong dim", "invalid_argument",
                 NULL, 15);
    q.n_centroids = 0;

    Persrv__HealthReply hrep = PERSRV__HEALTH_REPLY__INIT;
    e.body_case = PERSRV__ENVELOPE__BODY_HEALTH_REPLY;
    e.health_reply = &hrep;
    e.request_id = 16;
    expect_error(send_raw(s, &e), "a reply sent as a request", "invalid_argument", NULL, 16);

    /* Defined fallbacks: unknown tokens find nothing; an unknown sticker is not found. */
    char unknown_tok[] = "zzzqqqxxyy";
    char *unk[] = {unknown_tok};
    q.tokens = unk;
    Persrv__Envelope *r = send_raw(s, search_env(&q, 17));
    if (r->body_case != PERSRV__ENVELOPE__BODY_SEARCH_REPLY || r->search_reply->n_hits != 0)
        die("unknown token: expected an empty search reply, got body %d", r->body_case);
    printf("  %-28s -> 0 hits\n", "unknown token");
    ps_wire_free(r);
    uint64_t rid;
    r = get_sticker(s, UINT64_MAX - 12345, &rid);
    if (r->sticker_reply->found) die("unknown sticker found");
    printf("  %-28s -> found=false\n", "unknown sticker id");
    ps_wire_free(r);

    send_oversized(argv[0], max_frame);

    /* Still serving: health, and a real search with hits. */
    health(s, &henv);
    ps_wire_free(henv);
    char tok2[] = "好";
    char *t2[] = {tok2};
    q.tokens = t2;
    r = send_raw(s, search_env(&q, 18));
    if (r->body_case != PERSRV__ENVELOPE__BODY_SEARCH_REPLY || r->request_id != 18)
        die("valid search after bad input: body %d", r->body_case);
    printf("  %-28s -> %zu hits\n", "valid search afterwards", r->search_reply->n_hits);
    ps_wire_free(r);
    zmq_close(s);
    printf("bad: all bad requests answered, shard still serving\n");
    return 0;
}

/* ---- flood ------------------------------------------------------------------------------ */

/* Send n searches without waiting, then count the replies until n arrive or the timeout hits
 * (for manual drain checks: SIGTERM the shard meanwhile; every request it took is answered). */
/* health-busy EP N: N pipelined searches, then a HealthRequest, on one connection (a shard with
 * one worker). The replies come back in the order the shard sends them: the health reply must
 * come before the last search's (fewer than N search replies before it) — the server loop
 * answers health itself (ps/zserver.h, inline answers); queued at the worker, it would come
 * after all N. Then every search must still be answered. No clock decides the result; the
 * wait for health is printed. The replies pile up while the N requests go out, so this socket
 * has no high-water mark, and the shard must be started with one of at least N (--hwm): a
 * shard drops a reply its client's full pipe cannot take, which a descheduled client on a busy
 * machine would otherwise see as a lost reply. The client reads nothing for a second after
 * sending, so that the pile-up happens on any machine. */
static int cmd_health_busy(int argc, char **argv)
{
    if (argc != 2) die("usage: health-busy EP N");
    long n = atol(argv[1]), before = -1, got = 0;
    if (n < 2) die("health-busy: N must be at least 2");
    conn_hwm = 0;
    void *s = connect_to(argv[0], ZMQ_DEALER);
    conn_hwm = -1;
    const char *toks[] = {"好", "累", "好累"};
    ps_search_opts opts;
    ps_search_opts_default(&opts);
    opts.R = 1000;
    opts.k = 10;
    for (long i = 0; i < n; i++) {
        uint8_t *buf;
        size_t len;
        if (ps_wire_encode_search(next_id++, 0, toks, 3, &opts, 0, &buf, &len, NULL)) die("encode");
        send_frame(s, buf, len);
        free(buf);
    }
    uint8_t *buf;
    size_t len;
    uint64_t hid = next_id++;
    if (ps_wire_encode_health(hid, 0, &buf, &len, NULL)) die("encode health");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    send_frame(s, buf, len);
    free(buf);
    /* Read nothing for a second, as a client descheduled on a busy machine would: the replies
     * pile up (all of them, on an idle machine), and none may be lost. */
    struct timespec pause = {1, 0};
    nanosleep(&pause, NULL);
    while (before < 0 || got < n) {
        Persrv__Envelope *env = recv_env(s);
        if (env->body_case == PERSRV__ENVELOPE__BODY_HEALTH_REPLY && env->request_id == hid) {
            clock_gettime(CLOCK_MONOTONIC, &t1);
            before = got;
        } else if (env->body_case == PERSRV__ENVELOPE__BODY_SEARCH_REPLY) {
            got++;
        } else {
            die("health-busy: unexpected reply body %d", env->body_case);
        }
        ps_wire_free(env);
    }
    double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
    printf("health-busy: health answered in %.2f ms, after %ld of %ld searches\n", ms, before, n);
    if (before >= n) die("health-busy: health waited for all %ld searches", n);
    zmq_close(s);
    return 0;
}

static int cmd_flood(int argc, char **argv)
{
    if (argc != 2) die("usage: flood EP N");
    void *s = connect_to(argv[0], ZMQ_DEALER);
    long n = atol(argv[1]), got = 0;
    const char *toks[] = {"好", "累", "好累"};
    ps_search_opts opts;
    ps_search_opts_default(&opts);
    opts.R = 1000;
    opts.k = 10;
    for (long i = 0; i < n; i++) {
        uint8_t *buf;
        size_t len;
        if (ps_wire_encode_search(next_id++, 0, toks, 3, &opts, 0, &buf, &len, NULL)) die("encode");
        send_frame(s, buf, len);
        free(buf);
    }
    zmq_msg_t m;
    zmq_msg_init(&m);
    while (got < n && zmq_msg_recv(&m, s, 0) >= 0) got++;
    zmq_msg_close(&m);
    printf("flood: %ld sent, %ld answered\n", n, got);
    zmq_close(s);
    return 0;
}

/* ---- freeport --------------------------------------------------------------------------- */

static int cmd_freeport(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) ||
        getsockname(fd, (struct sockaddr *)&a, &al))
        die("freeport: cannot bind");
    printf("%u\n", ntohs(a.sin_port));
    close(fd);
    return 0;
}

/* ---- the broker's front door ---------------------------------------------------------- */

static Persrv__Envelope *query_env(const char *q, const char *user, uint32_t k, uint64_t id)
{
    static Persrv__Envelope e;
    static Persrv__QueryRequest qr;
    persrv__envelope__init(&e);
    persrv__query_request__init(&qr);
    qr.q = (char *)q;
    qr.user = (char *)user;
    qr.k = k;
    e.version = PS_WIRE_VERSION;
    e.request_id = id;
    e.body_case = PERSRV__ENVELOPE__BODY_QUERY;
    e.query = &qr;
    return &e;
}

/* A valid query must get a query_reply with hits. */
static void expect_hits(void *s, const char *q, const char *user, const char *what)
{
    Persrv__Envelope *r = send_raw(s, query_env(q, user, 5, 77));
    if (r->body_case != PERSRV__ENVELOPE__BODY_QUERY_REPLY || r->request_id != 77)
        die("%s: body %d%s%s", what, r->body_case,
            r->body_case == PERSRV__ENVELOPE__BODY_ERROR ? " " : "",
            r->body_case == PERSRV__ENVELOPE__BODY_ERROR ? r->error->message : "");
    if (r->query_reply->n_hits == 0 || r->query_reply->partial)
        die("%s: %zu hits, partial %d", what, r->query_reply->n_hits, r->query_reply->partial);
    printf("  %-28s -> %zu hits, personalized %d\n", what, r->query_reply->n_hits,
           r->query_reply->personalized);
    ps_wire_free(r);
}

static int cmd_front_bad(int argc, char **argv)
{
    if (argc != 3) die("usage: front-bad EP MAX_FRAME QUERY");
    size_t max_frame = (size_t)atol(argv[1]);
    const char *good = argv[2];
    void *s = connect_to(argv[0], ZMQ_DEALER);
    Persrv__Envelope *henv;
    Persrv__HealthReply *h = health(s, &henv);
    if (!h->ready || h->shards_up != h->nshards || h->nshards == 0)
        die("front door health: ready %d, %u of %u shards up", h->ready, h->shards_up, h->nshards);
    ps_wire_free(henv);
    expect_hits(s, good, "", "valid query");

    uint8_t garbage[64];
    for (size_t i = 0; i < sizeof garbage; i++) garbage[i] = (uint8_t)(0xff - 7 * i);
    expect_error(rpc(s, garbage, sizeof garbage), "garbage frame", "parse_error", NULL,
                 ps_wire_peek_request_id(garbage, sizeof garbage));
    expect_error(rpc(s, "", 0), "empty frame", "parse_error", NULL, 0);
    Persrv__Envelope *e = query_env(good, "", 5, 21);
    e->version = 99;
    expect_error(send_raw(s, e), "version 99", "invalid_argument", NULL, 21);
    expect_error(send_raw(s, query_env("", "", 5, 22)), "empty query", "invalid_query", NULL, 22);
    expect_error(send_raw(s, query_env("!!! ... ???", "", 5, 23)), "query without tokens",
                 "invalid_query", NULL, 23);
    expect_error(send_raw(s, query_env("\xff\xfe\xfd", "", 5, 24)), "invalid UTF-8 query",
                 "invalid_utf8", NULL, 24);
    static char big[10 * 1024 + 1];
    memset(big, 'a', sizeof big - 1);
    for (size_t i = 0; i + 1 < sizeof big; i += 2) big[i] = ' ';
    expect_error(send_raw(s, query_env(big, "", 5, 25)), "10 KB query", "too_large", NULL, 25);
    expect_error(send_raw(s, query_env(good, "", 100000, 26)), "k = 100000", "invalid_argument",
                 NULL, 26);
    expect_error(send_raw(s, query_env(good, "\xc0\xaf", 5, 27)), "invalid UTF-8 user",
                 "invalid_utf8", "invalid_argument", 27);
    Persrv__SearchRequest q = PERSRV__SEARCH_REQUEST__INIT;
    char tok[] = "好", *toks[] = {tok};
    q.n_tokens = 1;
    q.tokens = toks;
    q.recall_depth = 10;
    expect_error(send_raw(s, search_env(&q, 28)), "a shard's request", "invalid_argument", NULL,
                 28);
    uint64_t rid;
    Persrv__Envelope *r = NULL;
    {
        uint8_t *buf;
        size_t len;
        rid = next_id++;
        if (ps_wire_encode_get_sticker(rid, 0, UINT64_MAX - 12345, &buf, &len, NULL))
            die("encode get_sticker");
        r = rpc(s, buf, len);
        free(buf);
    }
    expect_error(r, "unknown sticker id", "not_found", NULL, rid);
    send_oversized(argv[0], max_frame);

    /* Defined fallback: an unknown user gets the unpersonalized answer. */
    expect_hits(s, good, "no-such-user-42", "unknown user");
    expect_hits(s, good, "", "valid query afterwards");
    zmq_close(s);
    printf("front-bad: all bad requests answered, broker still serving\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        die("usage: shard_client freeport|health|health-busy|compare|stickers|flood|bad|front-bad "
            "...");
    const char *cmd = argv[1];
    if (!strcmp(cmd, "freeport")) return cmd_freeport();
    zctx = zmq_ctx_new();
    int rc;
    if (!strcmp(cmd, "health"))
        rc = cmd_health(argc - 2, argv + 2);
    else if (!strcmp(cmd, "compare"))
        rc = cmd_compare(argc - 2, argv + 2);
    else if (!strcmp(cmd, "stickers"))
        rc = cmd_stickers(argc - 2, argv + 2);
    else if (!strcmp(cmd, "health-busy"))
        rc = cmd_health_busy(argc - 2, argv + 2);
    else if (!strcmp(cmd, "flood"))
        rc = cmd_flood(argc - 2, argv + 2);
    else if (!strcmp(cmd, "bad"))
        rc = cmd_bad(argc - 2, argv + 2);
    else if (!strcmp(cmd, "front-bad"))
        rc = cmd_front_bad(argc - 2, argv + 2);
    else
        die("unknown command %s", cmd);
    zmq_ctx_term(zctx);
    return rc;
}
