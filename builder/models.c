/*
 * models.c — the model client of `builder enrich` (models.h): VLM keywords, description and
 * emotions over /v1/chat/completions and image embeddings over /v1/embeddings, many requests
 * in flight on one libcurl multi handle.
 *
 * The transfers go through the libcurl multi driver that push.c uses too (curlm.h: one CURLM
 * handle keeping keep-alive connections, a FIFO of requests that start when a slot is free and
 * their not_before has passed, a fresh easy handle per attempt); this file adds the policy:
 * which requests a sticker needs, retries with backoff and Retry-After, a reply cap that aborts
 * the transfer, and a run that returns part way (until_pending, stop).
 *
 * A job (one sticker) owns up to three requests: keywords, describe, embedding. The job ends
 * when all of them ended; its first request that fails for good fails it, and its requests
 * not started yet are then skipped. A retry goes to the head of the FIFO (it waits for its
 * not_before there), so a failing sticker does not wait behind every sticker queued after it.
 *
 * The reply parsers are plain functions over bytes (jansson for the JSON; the model's text
 * inside it is parsed by hand, tolerant of code fences, "Keywords: a, b" lines and plain
 * lists), so the fuzz target and the tests call them directly.
 */
#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <curl/curl.h>

#include "curlm.h"
#include "models.h"
#include "ps/log.h"
#include "pipeline.h"

#define MODELS_MAX_DIM  65536 /* embedding values accepted when cfg.dim is 0 */
#define RETRY_AFTER_MAX 60.0  /* seconds */
#define BACKOFF_MAX     30.0  /* seconds */
#define ITEMS_MAX       32    /* keywords or emotions kept */
#define ITEM_MAX        200   /* bytes of one keyword or emotion */
#define FIELD_MAX       4096  /* bytes of one output field */

const char builder_prompt_keywords[] =
    "You are given a sticker (a small image used in chat). List 3 to 8 short keywords that a "
    "user might type to find this sticker: what it shows and any text written on it, in the "
    "language of that text. Answer with JSON only, exactly in this form: "
    "{\"keywords\": [\"keyword 1\", \"keyword 2\"]}";

const char builder_prompt_describe[] =
    "You are given a sticker (a small image used in chat). Describe the sticker in one or two "
    "sentences, and name the emotions it expresses (1 to 3 words). Answer with JSON only, "
    "exactly in this form: {\"description\": \"...\", \"emotions\": [\"emotion 1\"]}";

enum { K_KEYWORDS, K_DESCRIBE, K_EMBED, K_N };
static const char *const kind_name[K_N] = {"keywords", "describe", "embedding"};

typedef struct mjob mjob;

typedef struct mreq {
    builder_curlm_xfer t; /* first: a transfer's callbacks get the request back by a cast */
    mjob *job;
    int kind, used; /* used: this job sends this kind */
    uint32_t tries; /* attempts started */
    char *body;     /* while a transfer is in flight */
    size_t body_len;
} mreq;

struct mjob {
    builder_models_t *m;
    uint64_t id;
    void *arg;
    char *data_url;
    size_t data_url_len;
    mreq req[K_N];
    int nleft; /* requests not ended */
    int rc;
    char err[256];
    char *keywords, *desc, *emotion;
    float *emb;
    uint32_t dim;
    mjob *prev, *next; /* every live job */
    mjob *done_next;   /* ended, not reported */
};

struct builder_models {
    builder_curlm_t *drv;
    struct curl_slist *hdrs; /* holds the Authorization header: wiped on free */
    char *chat_url, *embed_url, *vlm_model, *embed_model, *prompt[2], *key;
    uint32_t dim, inflight, timeout_ms, retries;
    size_t max_reply;
    float *scratch; /* embedding parse buffer */
    uint32_t scratch_cap;
    mjob *jobs;                  /* every live job */
    mjob *done_head, *done_tail; /* ended jobs to report */
    size_t pending;
    uint64_t rng; /* backoff jitter */
    builder_models_stats stats;
};

void builder_models_cfg_defaults(builder_models_cfg *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->inflight = 8;
    cfg->timeout_ms = 60000;
    cfg->retries = 4;
    cfg->max_reply = 1u << 20;
}

/* ---- small helpers --------------------------------------------------------------------- */

static void wipe_free(char *s)
{
    if (!s) return;
    explicit_bzero(s, strlen(s));
    free(s);
}

/* Replace every copy of the API key in s by "***" (a server may echo what it was sent). */
static void redact(const builder_models_t *m, char *s)
{
    size_t klen = m->key ? strlen(m->key) : 0;
    char *p;
    if (!klen) return;
    while ((p = strstr(s, m->key)) != NULL) {
        size_t rest = strlen(p + klen);
        if (klen >= 3) {
            memcpy(p, "***", 3);
            memmove(p + 3, p + klen, rest + 1);
        } else {
            memset(p, '*', klen);
        }
    }
}

/* "{base}/v1/{path}", taking a base that already ends in "/v1" or in the whole path. */
static char *endpoint(const char *base, const char *path)
{
    size_t n = strlen(base);
    while (n && base[n - 1] == '/') n--;
    size_t plen = strlen(path);
    char *u = malloc(n + plen + 8);
    if (!u) return NULL;
    if (n >= plen + 4 && memcmp(base + n - plen, path, plen) == 0 &&
        memcmp(base + n - plen - 4, "/v1/", 4) == 0)
        snprintf(u, n + plen + 8, "%.*s", (int)n, base);
    else if (n >= 3 && memcmp(base + n - 3, "/v1", 3) == 0)
        snprintf(u, n + plen + 8, "%.*s/%s", (int)n, base, path);
    else
        snprintf(u, n + plen + 8, "%.*s/v1/%s", (int)n, base, path);
    return u;
}

static int http_url(const char *u)
{
    return strncmp(u, "http://", 7) == 0 || strncmp(u, "https://", 8) == 0;
}

static const char b64tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Standard base64 (RFC 4648, padded) of src into dst (4 * ceil(len / 3) bytes + NUL). */
static size_t base64(const unsigned char *src, size_t len, char *dst)
{
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)src[i] << 16 | (uint32_t)src[i + 1] << 8 | src[i + 2];
        dst[o++] = b64tab[v >> 18];
        dst[o++] = b64tab[(v >> 12) & 63];
        dst[o++] = b64tab[(v >> 6) & 63];
        dst[o++] = b64tab[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)src[i] << 16 | (i + 1 < len ? (uint32_t)src[i + 1] << 8 : 0);
        dst[o++] = b64tab[v >> 18];
        dst[o++] = b64tab[(v >> 12) & 63];
        dst[o++] = i + 1 < len ? b64tab[(v >> 6) & 63] : '=';
        dst[o++] = '=';
    }
    dst[o] = '\0';
    return o;
}

static int mime_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64 || !strchr(s, '/')) return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("/.+-_", s[i])) return 0;
    return 1;
}

/* A JSON string literal of s (malloc'd), or NULL when out of memory. */
static char *json_lit(const char *s)
{
    json_t *j = json_string(s);
    char *r = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    json_decref(j);
    return r;
}

/* ---- the client ------------------------------------------------------------------------ */

builder_models_t *builder_models_new(const builder_models_cfg *cfg, ps_err *err)
{
    if (!cfg || (!cfg->vlm_url && !cfg->embed_url)) {
        ps_err_set(err, PS_EINVAL, "models: neither a VLM nor an embedding URL");
        return NULL;
    }
    if ((cfg->vlm_url && !http_url(cfg->vlm_url)) ||
        (cfg->embed_url && !http_url(cfg->embed_url))) {
        ps_err_set(err, PS_EINVAL, "models: %s URL must start with http:// or https://",
                   cfg->vlm_url && !http_url(cfg->vlm_url) ? "the VLM" : "the embedding");
        return NULL;
    }
    if (cfg->dim > MODELS_MAX_DIM) {
        ps_err_set(err, PS_EINVAL, "models: dim %u is over %u", cfg->dim, MODELS_MAX_DIM);
        return NULL;
    }
    builder_models_t *m = calloc(1, sizeof *m);
    if (!m) goto oom;
    m->dim = cfg->dim;
    m->inflight = cfg->inflight ? cfg->inflight : 8;
    m->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : 60000;
    m->retries = cfg->retries;
    m->max_reply = cfg->max_reply ? cfg->max_reply : (size_t)1 << 20;
    if (cfg->vlm_url) {
        const char *pk = cfg->prompt_keywords ? cfg->prompt_keywords : builder_prompt_keywords;
        const char *pd = cfg->prompt_describe ? cfg->prompt_describe : builder_prompt_describe;
        if (!(m->chat_url = endpoint(cfg->vlm_url, "chat/completions")) ||
            (cfg->vlm_model && !(m->vlm_model = json_lit(cfg->vlm_model))) ||
            !(m->prompt[0] = json_lit(pk)) || !(m->prompt[1] = json_lit(pd)))
            goto oom;
    }
    if (cfg->embed_url) {
        if (!(m->embed_url = endpoint(cfg->embed_url, "embeddings")) ||
            (cfg->embed_model && !(m->embed_model = json_lit(cfg->embed_model))))
            goto oom;
        m->scratch_cap = m->dim ? m->dim : MODELS_MAX_DIM;
        if (!(m->scratch = malloc(m->scratch_cap * sizeof *m->scratch))) goto oom;
    }
    if (cfg->api_key && cfg->api_key[0] && !(m->key = strdup(cfg->api_key))) goto oom;
    const char *fixed[] = {"Content-Type: application/json", "Accept: application/json", "Expect:"};
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++) {
        struct curl_slist *t = curl_slist_append(m->hdrs, fixed[i]);
        if (!t) goto oom;
        m->hdrs = t;
    }
    if (m->key) {
        if (strpbrk(m->key, "\r\n")) {
            builder_models_free(m);
            ps_err_set(err, PS_EINVAL, "models: the API key holds a line break");
            return NULL;
        }
        size_t n = strlen(m->key) + 32;
        char *line = malloc(n);
        if (!line) goto oom;
        snprintf(line, n, "Authorization: Bearer %s", m->key);
        struct curl_slist *t = curl_slist_append(m->hdrs, line);
        wipe_free(line);
        if (!t) goto oom;
        m->hdrs = t;
    }
    int parallel = m->inflight < INT32_MAX ? (int)m->inflight : INT32_MAX;
    if (!(m->drv = builder_curlm_new(parallel, err))) {
        builder_models_free(m);
        return NULL;
    }
    return m;
oom:
    builder_models_free(m);
    ps_err_set(err, PS_ENOMEM, "out of memory for the model client");
    return NULL;
}

/* Free what r's last attempt held (its transfer has ended or was dropped). */
static void req_release(mreq *r)
{
    free(r->body);
    r->body = NULL;
    builder_curlm_xfer_clear(&r->t);
}

static void job_free(builder_models_t *m, mjob *j)
{
    for (int k = 0; k < K_N; k++) req_release(&j->req[k]);
    if (j->prev)
        j->prev->next = j->next;
    else
        m->jobs = j->next;
    if (j->next) j->next->prev = j->prev;
    free(j->data_url);
    free(j->keywords);
    free(j->desc);
    free(j->emotion);
    free(j->emb);
    free(j);
}

/* Forget every unreported job (no callbacks). */
static void discard_all(builder_models_t *m)
{
    builder_curlm_drop(m->drv);
    while (m->jobs) job_free(m, m->jobs);
    m->done_head = m->done_tail = NULL;
    m->pending = 0;
}

void builder_models_free(builder_models_t *m)
{
    if (!m) return;
    if (m->drv) discard_all(m);
    builder_curlm_free(m->drv);
    for (struct curl_slist *s = m->hdrs; s; s = s->next) explicit_bzero(s->data, strlen(s->data));
    curl_slist_free_all(m->hdrs);
    wipe_free(m->key);
    free(m->chat_url);
    free(m->embed_url);
    free(m->vlm_model);
    free(m->embed_model);
    free(m->prompt[0]);
    free(m->prompt[1]);
    free(m->scratch);
    free(m);
}

size_t builder_models_pending(const builder_models_t *m)
{
    return m ? m->pending : 0;
}

void builder_models_get_stats(const builder_models_t *m, builder_models_stats *out)
{
    *out = m->stats;
}

static int req_setup(builder_curlm_xfer *t, void *easy);
static void req_finish(builder_curlm_xfer *t);

/* Queue an attempt of r (a retry at the head: see the top of the file). */
static void enqueue(builder_models_t *m, mreq *r, int at_head)
{
    r->t.timeout_ms = (long)m->timeout_ms;
    r->t.cap = m->max_reply;
    r->t.cap_fails = 1;
    r->t.setup = req_setup;
    r->t.done = req_finish;
    builder_curlm_add(m->drv, &r->t, at_head);
}

int builder_models_submit(builder_models_t *m, uint64_t id, const void *img, size_t len,
                          const char *mime, void *arg, ps_err *err)
{
    if (!img || len == 0)
        return ps_err_set(err, PS_EINVAL, "models: sticker %llu: empty image",
                          (unsigned long long)id);
    if (!mime) mime = "image/png";
    if (!mime_ok(mime))
        return ps_err_set(err, PS_EINVAL, "models: sticker %llu: bad MIME type",
                          (unsigned long long)id);
    if (len > ((size_t)1 << 40))
        return ps_err_set(err, PS_ETOOBIG, "models: sticker %llu: image too large",
                          (unsigned long long)id);
    mjob *j = calloc(1, sizeof *j);
    size_t plen = strlen(mime) + 13, blen = (len + 2) / 3 * 4;
    if (!j || !(j->data_url = malloc(plen + blen + 1))) {
        free(j);
        return ps_err_set(err, PS_ENOMEM, "models: out of memory for sticker %llu",
                          (unsigned long long)id);
    }
    j->m = m;
    j->id = id;
    j->arg = arg;
    int n = snprintf(j->data_url, plen + 1, "data:%s;base64,", mime);
    j->data_url_len = (size_t)n + base64(img, len, j->data_url + n);
    j->next = m->jobs;
    if (m->jobs) m->jobs->prev = j;
    m->jobs = j;
    for (int k = 0; k < K_N; k++) {
        mreq *r = &j->req[k];
        r->job = j;
        r->kind = k;
        r->used = k == K_EMBED ? m->embed_url != NULL : m->chat_url != NULL;
        if (r->used) {
            j->nleft++;
            enqueue(m, r, 0);
        }
    }
    m->pending++;
    return 0;
}

/* ---- one request ------------------------------------------------------------------------ */

/* The request body: the JSON of a chat completion or an embedding, around the data URL
 * (already JSON-safe: base64 and a checked MIME type). */
static int build_body(builder_models_t *m, mreq *r)
{
    const mjob *j = r->job;
    const char *model = r->kind == K_EMBED ? m->embed_model : m->vlm_model;
    size_t n = j->data_url_len + 256 + (model ? strlen(model) : 0) +
               (r->kind == K_EMBED ? 0 : strlen(m->prompt[r->kind]));
    char *b = malloc(n);
    if (!b) return -1;
    int w;
    if (r->kind == K_EMBED)
        w = snprintf(b, n, "{%s%s%s\"input\":\"%s\"}", model ? "\"model\":" : "",
                     model ? model : "", model ? "," : "", j->data_url);
    else
        w = snprintf(b, n,
                     "{%s%s%s\"temperature\":0,\"max_tokens\":512,\"messages\":[{\"role\":\"user\","
                     "\"content\":[{\"type\":\"text\",\"text\":%s},{\"type\":\"image_url\","
                     "\"image_url\":{\"url\":\"%s\"}}]}]}",
                     model ? "\"model\":" : "", model ? model : "", model ? "," : "",
                     m->prompt[r->kind], j->data_url);
    if (w < 0 || (size_t)w >= n) {
        free(b);
        return -1;
    }
    r->body = b;
    r->body_len = (size_t)w;
    return 0;
}

/* The driver starts an attempt of r: its body and the request's options. 0, or -1: not started
 * (its job failed already, or out of memory); req_finish sorts out which. */
static int req_setup(builder_curlm_xfer *t, void *easy)
{
    mreq *r = (mreq *)t;
    builder_models_t *m = r->job->m;
    if (r->job->rc) return -1; /* its job failed already: skip it */
    if (build_body(m, r)) return -1;
    curl_easy_setopt(easy, CURLOPT_URL, r->kind == K_EMBED ? m->embed_url : m->chat_url);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, m->hdrs);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, r->body);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
    r->tries++;
    m->stats.requests++;
    return 0;
}

/* r ended for good: record a failure on its job, and end the job when it was the last. */
static void req_done(builder_models_t *m, mreq *r, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void req_done(builder_models_t *m, mreq *r, int rc, const char *fmt, ...)
{
    mjob *j = r->job;
    req_release(r);
    if (rc && !j->rc) {
        va_list ap;
        int n = snprintf(j->err, sizeof j->err, "%s: ", kind_name[r->kind]);
        va_start(ap, fmt);
        vsnprintf(j->err + n, sizeof j->err - (size_t)n, fmt, ap);
        va_end(ap);
        redact(m, j->err);
        j->rc = rc;
    }
    if (--j->nleft == 0) {
        j->done_next = NULL;
        if (m->done_tail)
            m->done_tail->done_next = j;
        else
            m->done_head = j;
        m->done_tail = j;
    }
}

/* The server's own words for a failed request: {"error": {"message"}}, {"error": "..."},
 * {"detail": "..."}, or the body's first printable bytes. */
static void server_words(const builder_curlm_xfer *r, char *buf, size_t size)
{
    buf[0] = '\0';
    if (!r->resp.n) {
        snprintf(buf, size, "(empty body)");
        return;
    }
    json_t *o = json_loadb(r->resp.p, r->resp.n, 0, NULL);
    json_t *e = json_object_get(o, "error");
    const char *s = json_string_value(json_object_get(e, "message"));
    if (!s) s = json_string_value(e);
    if (!s) s = json_string_value(json_object_get(o, "detail"));
    size_t n = 0;
    const char *src = s ? s : r->resp.p;
    size_t slen = s ? strlen(s) : r->resp.n;
    for (size_t i = 0; i < slen && n + 1 < size && n < 160; i++) {
        unsigned char c = (unsigned char)src[i];
        buf[n++] = c >= 0x20 && c != 0x7f ? (char)c : ' ';
    }
    buf[n] = '\0';
    json_decref(o);
}

static int http_code(long status)
{
    switch (status) {
    case 400:
    case 422:
        return PS_EINVAL;
    case 401:
        return PS_EUNAUTH;
    case 403:
        return PS_EFORBIDDEN;
    case 404:
        return PS_ENOTFOUND;
    case 413:
        return PS_ETOOBIG;
    case 429:
    case 502:
    case 503:
        return PS_EUNAVAIL;
    case 504:
        return PS_ETIMEDOUT;
    default:
        return status >= 500 ? PS_EIO : PS_EINVAL;
    }
}

static int transport_retriable(CURLcode cc)
{
    switch (cc) {
    case CURLE_OUT_OF_MEMORY:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_FILESIZE_EXCEEDED:
    case CURLE_WRITE_ERROR:
        return 0;
    default:
        return 1;
    }
}

/* Parse a 2xx reply of r into its job. 0, or the parse error (err set). */
static int take_reply(builder_models_t *m, mreq *r, ps_err *err)
{
    mjob *j = r->job;
    const builder_curlm_xfer *t = &r->t;
    if (r->kind == K_KEYWORDS)
        return builder_parse_vlm_keywords(t->resp.p, t->resp.n, &j->keywords, err);
    if (r->kind == K_DESCRIBE)
        return builder_parse_vlm_describe(t->resp.p, t->resp.n, &j->desc, &j->emotion, err);
    uint32_t got = 0;
    int rc = builder_parse_embedding(t->resp.p, t->resp.n, m->scratch, m->scratch_cap, &got, err);
    if (rc) return rc;
    if (m->dim && got != m->dim)
        return ps_err_set(err, PS_EINVAL, "the embedding has %u dimensions, expected %u", got,
                          m->dim);
    if (!(j->emb = malloc(got * sizeof *j->emb)))
        return ps_err_set(err, PS_ENOMEM, "out of memory for an embedding");
    memcpy(j->emb, m->scratch, got * sizeof *j->emb);
    j->dim = got;
    if (!m->dim) m->dim = got; /* the first reply fixes it */
    return 0;
}

/* An attempt of r ended (or did not start): retry, fail or take the reply. */
static void req_finish(builder_curlm_xfer *t)
{
    mreq *r = (mreq *)t;
    builder_models_t *m = r->job->m;
    CURLcode cc = (CURLcode)t->cc;
    char words[200];
    free(r->body);
    r->body = NULL;
    if (r->job->rc) { /* its job failed already: skipped, or its reply is of no use */
        req_done(m, r, 0, "%s", "");
        return;
    }
    if (t->too_big || cc == CURLE_FILESIZE_EXCEEDED) {
        req_done(m, r, PS_ETOOBIG, "the reply is over %zu bytes (max_reply)", m->max_reply);
        return;
    }
    if (cc == CURLE_OUT_OF_MEMORY) {
        req_done(m, r, PS_ENOMEM, "%s", t->cerr);
        return;
    }
    int retriable = cc == CURLE_OK ? t->status == 429 || t->status >= 500 : transport_retriable(cc);
    if (retriable && r->tries <= m->retries) {
        double d = 0.5;
        for (uint32_t i = 1; i < r->tries && d < BACKOFF_MAX; i++) d *= 2;
        if (d > BACKOFF_MAX) d = BACKOFF_MAX;
        m->rng = m->rng * 6364136223846793005ull + 1442695040888963407ull;
        d += d * 0.2 * (double)(m->rng >> 11) / 9007199254740992.0; /* spread the herd */
        if (t->retry_after > 0) {
            double rs = (double)t->retry_after;
            if (rs > RETRY_AFTER_MAX) rs = RETRY_AFTER_MAX;
            if (rs > d) d = rs;
        }
        r->t.not_before = builder_now() + d;
        m->stats.retries++;
        enqueue(m, r, 1);
        return;
    }
    if (cc != CURLE_OK) {
        req_done(m, r, cc == CURLE_OPERATION_TIMEDOUT ? PS_ETIMEDOUT : PS_EUNAVAIL, "%s (%u %s)",
                 t->cerr, r->tries, r->tries == 1 ? "try" : "tries");
        return;
    }
    if (t->status < 200 || t->status > 299) {
        server_words(t, words, sizeof words);
        req_done(m, r, http_code(t->status), "HTTP %ld: %s (%u %s)", t->status, words, r->tries,
                 r->tries == 1 ? "try" : "tries");
        return;
    }
    ps_err e = {0, ""};
    int rc = take_reply(m, r, &e);
    if (rc)
        req_done(m, r, rc, "%s", e.msg);
    else
        req_done(m, r, 0, "%s", "");
}

/* Report the ended jobs. */
static void report(builder_models_t *m, builder_model_done done, void *ctx)
{
    mjob *j;
    while ((j = m->done_head) != NULL) {
        m->done_head = j->done_next;
        if (!m->done_head) m->done_tail = NULL;
        builder_model_result res = {.id = j->id, .arg = j->arg, .rc = j->rc};
        if (j->rc) {
            snprintf(res.err, sizeof res.err, "%s", j->err);
            m->stats.failed++;
        } else {
            res.keywords = j->keywords;
            res.desc = j->desc;
            res.emotion = j->emotion;
            res.embedding = j->emb;
            res.dim = j->emb ? j->dim : 0;
        }
        m->stats.jobs++;
        m->pending--;
        if (done) done(&res, ctx);
        job_free(m, j);
    }
}

/* libcurl's multi interface failed: say how (the caller only gets the code). */
static int multi_failed(const ps_err *e)
{
    ps_log(PS_LOG_ERROR, "builder", "model_client_failed", "msg=\"%s\"", e->msg);
    return PS_EINTERNAL;
}

int builder_models_poll(builder_models_t *m, int max_ms, builder_model_done done, void *ctx)
{
    ps_err e = {0, ""};
    int ended = 0;
    if (builder_curlm_step(m->drv, 0, &ended, &e) == 0 && !ended && max_ms > 0)
        builder_curlm_step(m->drv, max_ms, NULL, &e);
    if (e.code) {
        discard_all(m);
        return multi_failed(&e);
    }
    report(m, done, ctx);
    return 0;
}

int builder_models_run(builder_models_t *m, size_t until_pending, builder_model_done done,
                       void *ctx, volatile sig_atomic_t *stop)
{
    for (int wait_ms = 0;; wait_ms = 100) { /* the first turn does not wait */
        ps_err e = {0, ""};
        if (builder_curlm_step(m->drv, wait_ms, NULL, &e)) {
            discard_all(m);
            return multi_failed(&e);
        }
        report(m, done, ctx);
        if (stop && *stop) {
            discard_all(m);
            return 0;
        }
        if (m->pending <= until_pending) return 0;
    }
}

/* ---- the reply parsers ----------------------------------------------------------------- */

/* choices[0].message.content of a chat completion (string, or an array of {"text"} parts;
 * choices[0].text too), malloc'd, NULs turned to spaces. */
static int chat_content(const char *body, size_t len, char **out, size_t *olen, ps_err *err)
{
    json_error_t je;
    *out = NULL;
    json_t *root = json_loadb(body ? body : "", body ? len : 0, 0, &je);
    if (!root)
        return ps_err_set(err, PS_EPARSE, "the reply is not JSON (line %d column %d: %s)", je.line,
                          je.column, je.text);
    int rc = 0;
    json_t *e = json_object_get(root, "error");
    json_t *c0 = json_array_get(json_object_get(root, "choices"), 0);
    json_t *content = json_object_get(json_object_get(c0, "message"), "content");
    if (!content) content = json_object_get(c0, "text");
    size_t n = 0;
    char *s = NULL;
    if (json_is_string(content)) {
        n = json_string_length(content);
        if ((s = malloc(n + 1))) memcpy(s, json_string_value(content), n);
    } else if (json_is_array(content)) {
        size_t i, cap = 0;
        json_t *part;
        json_array_foreach(content, i, part)
        {
            json_t *t = json_object_get(part, "text");
            if (json_is_string(t)) cap += json_string_length(t) + 1;
        }
        s = malloc(cap + 1);
        json_array_foreach(content, i, part)
        {
            json_t *t = json_object_get(part, "text");
            if (!s || !json_is_string(t)) continue;
            memcpy(s + n, json_string_value(t), json_string_length(t));
            n += json_string_length(t);
            s[n++] = '\n';
        }
    } else {
        rc = e ? ps_err_set(err, PS_EPARSE, "the reply is an error, not a completion")
               : ps_err_set(err, PS_EPARSE, "the reply has no choices[0].message.content");
        json_decref(root);
        return rc;
    }
    json_decref(root);
    if (!s) return ps_err_set(err, PS_ENOMEM, "out of memory for a reply");
    s[n] = '\0';
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\0') s[i] = ' ';
    *out = s;
    *olen = n;
    return 0;
}

/* The text inside the first ``` fence, in place (the whole text when there is none). */
static char *unfence(char *s)
{
    char *a = strstr(s, "```");
    if (!a) return s;
    char *body = strchr(a + 3, '\n');
    if (!body) return s;
    body++;
    char *b = strstr(body, "```");
    if (b) *b = '\0';
    return body;
}

/* A growing ", "-joined list of cleaned items, at most ITEMS_MAX of them, FIELD_MAX bytes. */
typedef struct strlist {
    char buf[FIELD_MAX + 1];
    size_t len;
    int n;
    size_t off[ITEMS_MAX], ilen[ITEMS_MAX];
} strlist;

/* Length of a UTF-8 prefix of s[0..n) that ends on a character boundary and is <= max. */
static size_t utf8_cut(const char *s, size_t n, size_t max)
{
    if (n <= max) return n;
    while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80) max--;
    return max;
}

static int is_sep_at(const char *s, size_t i, size_t n, size_t *w)
{
    unsigned char c = (unsigned char)s[i];
    if (c == ',' || c == '\n' || c == ';' || c == '\r') {
        *w = 1;
        return 1;
    }
    /* ， (EF BC 8C), ； (EF BC 9B), 、 (E3 80 81) */
    if (i + 2 < n &&
        ((c == 0xEF && (unsigned char)s[i + 1] == 0xBC &&
          ((unsigned char)s[i + 2] == 0x8C || (unsigned char)s[i + 2] == 0x9B)) ||
         (c == 0xE3 && (unsigned char)s[i + 1] == 0x80 && (unsigned char)s[i + 2] == 0x81))) {
        *w = 3;
        return 1;
    }
    return 0;
}

/* Add s[0..n): trimmed of spaces, quotes, bullets and a final period; control bytes become
 * spaces. An empty item or a repeated one is skipped. */
static void list_add(strlist *l, const char *s, size_t n)
{
    static const char *const trim[] = {"\"",
                                       "'",
                                       "\xe2\x80\x9c",
                                       "\xe2\x80\x9d",
                                       "\xe2\x80\x98",
                                       "\xe2\x80\x99",
                                       "`",
                                       "*",
                                       "[",
                                       "]",
                                       ".",
                                       "\xe3\x80\x82",
                                       "#",
                                       NULL};
    for (int again = 1; again;) {
        again = 0;
        while (n && isspace((unsigned char)*s)) s++, n--;
        while (n && isspace((unsigned char)s[n - 1])) n--;
        if (n >= 2 && (*s == '-' || *s == '+') && s[1] == ' ') s += 2, n -= 2, again = 1;
        if (n >= 3 && s[0] == '\xe2' && s[1] == '\x80' && s[2] == '\xa2') s += 3, n -= 3, again = 1;
        size_t d = 0;
        while (d < n && d < 3 && isdigit((unsigned char)s[d])) d++;
        if (d && d + 1 < n && (s[d] == '.' || s[d] == ')') && s[d + 1] == ' ')
            s += d + 2, n -= d + 2, again = 1;
        for (int t = 0; trim[t]; t++) {
            size_t tl = strlen(trim[t]);
            if (n >= tl && memcmp(s, trim[t], tl) == 0) s += tl, n -= tl, again = 1;
            if (n >= tl && memcmp(s + n - tl, trim[t], tl) == 0) n -= tl, again = 1;
        }
    }
    if (!n || l->n >= ITEMS_MAX) return;
    n = utf8_cut(s, n, ITEM_MAX);
    char item[ITEM_MAX + 1];
    memcpy(item, s, n);
    item[n] = '\0';
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)item[i] < 0x20 || item[i] == 0x7f) item[i] = ' ';
    for (int i = 0; i < l->n; i++) /* skip a repeat */
        if (l->ilen[i] == n && memcmp(l->buf + l->off[i], item, n) == 0) return;
    size_t need = (l->len ? 2 : 0) + n;
    if (l->len + need > FIELD_MAX) return;
    if (l->len) {
        memcpy(l->buf + l->len, ", ", 2);
        l->len += 2;
    }
    memcpy(l->buf + l->len, item, n);
    l->off[l->n] = l->len;
    l->ilen[l->n] = n;
    l->len += n;
    l->buf[l->len] = '\0';
    l->n++;
}

static void list_split(strlist *l, const char *s, size_t n)
{
    size_t start = 0, w;
    for (size_t i = 0; i < n;) {
        if (is_sep_at(s, i, n, &w)) {
            list_add(l, s + start, i - start);
            i += w;
            start = i;
        } else {
            i++;
        }
    }
    list_add(l, s + start, n - start);
}

/* A JSON value (array of strings, or a string) into l. */
static void list_json(strlist *l, json_t *v)
{
    size_t i;
    json_t *x;
    if (json_is_string(v)) {
        list_split(l, json_string_value(v), json_string_length(v));
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, x)
        {
            if (json_is_string(x)) list_add(l, json_string_value(x), json_string_length(x));
        }
    }
}

static char *list_take(const strlist *l)
{
    return strdup(l->buf);
}

/* The first object of any of `keys` in the JSON object that the text holds between its first
 * '{' and last '}'. 1: found (*v borrowed from *root, which the caller frees), 0: the text holds
 * no JSON object, -1: it looks like JSON but does not parse. */
static int json_in_text(const char *s, json_t **root)
{
    const char *a = strchr(s, '{'), *b = strrchr(s, '}');
    const char *t = s;
    while (*t && isspace((unsigned char)*t)) t++;
    *root = NULL;
    if (!a || !b || b < a) return *t == '{' || *t == '[' ? -1 : 0;
    json_t *o = json_loadb(a, (size_t)(b - a + 1), 0, NULL);
    if (!json_is_object(o)) {
        json_decref(o);
        return *t == '{' || *t == '[' ? -1 : 0;
    }
    *root = o;
    return 1;
}

static json_t *get_any(json_t *o, const char *const *keys)
{
    for (int i = 0; keys[i]; i++) {
        json_t *v = json_object_get(o, keys[i]);
        if (v) return v;
    }
    /* case-insensitive */
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
        for (int i = 0; keys[i]; i++)
            if (strcasecmp(k, keys[i]) == 0) return v;
    }
    return NULL;
}

/* A "Label: value" line: when line starts (after bullets, '*' and '#') with one of labels and
 * a ':' (or '：'), returns the value's start. */
static const char *label_value(const char *line, const char *const *labels)
{
    while (*line == ' ' || *line == '\t' || *line == '*' || *line == '#' || *line == '-') line++;
    for (int i = 0; labels[i]; i++) {
        size_t n = strlen(labels[i]);
        if (strncasecmp(line, labels[i], n) != 0) continue;
        const char *p = line + n;
        while (*p == ' ' || *p == '*') p++;
        if (*p == ':') return p + 1;
        if (strncmp(p, "\xef\xbc\x9a", 3) == 0) return p + 3;
    }
    return NULL;
}

static const char *const kw_keys[] = {"keywords", "keyword", "tags", NULL};
static const char *const kw_labels[] = {"keywords", "keyword",
                                        "\xe5\x85\xb3\xe9\x94\xae\xe8\xaf\x8d", NULL};
static const char *const desc_keys[] = {"description", "desc", "caption", NULL};
static const char *const desc_labels[] = {"description", "\xe6\x8f\x8f\xe8\xbf\xb0", NULL};
static const char *const emo_keys[] = {"emotions", "emotion", NULL};
static const char *const emo_labels[] = {"emotions", "emotion", "\xe6\x83\x85\xe6\x84\x9f",
                                         "\xe6\x83\x85\xe7\xbb\xaa", NULL};

/* The value of a labelled line (and, when it is empty, the bullet lines below it) into l.
 * Returns 1 when the label was found. */
static int labelled_list(const char *text, const char *const *labels, strlist *l)
{
    for (const char *line = text; line && *line;) {
        const char *eol = strchr(line, '\n');
        size_t n = eol ? (size_t)(eol - line) : strlen(line);
        char tmp[FIELD_MAX + 1];
        size_t k = n < FIELD_MAX ? n : FIELD_MAX;
        memcpy(tmp, line, k);
        tmp[k] = '\0';
        const char *v = label_value(tmp, labels);
        if (v) {
            list_split(l, v, strlen(v));
            if (l->n == 0) /* "Keywords:" then a list below */
                for (const char *q = eol ? eol + 1 : NULL; q && *q;) {
                    const char *e2 = strchr(q, '\n');
                    size_t m2 = e2 ? (size_t)(e2 - q) : strlen(q);
                    while (m2 && isspace((unsigned char)q[m2 - 1])) m2--;
                    if (!m2) break;
                    list_add(l, q, m2);
                    q = e2 ? e2 + 1 : NULL;
                }
            return 1;
        }
        line = eol ? eol + 1 : NULL;
    }
    return 0;
}

/* What both chat parsers start from. */
typedef struct answer {
    char *content; /* the completion's text (owned) */
    char *text;    /* inside content: what the first code fence holds, or all of it */
    strlist *l;    /* an empty list (owned) */
    json_t *root;  /* the JSON object the text holds (owned; NULL unless json > 0) */
    int json;      /* 1: root is set, 0: the text holds no JSON object, -1: malformed JSON */
} answer;

/* Open a chat completion body into *a. 0 (close it with answer_close), or chat_content's error
 * or PS_ENOMEM (nothing to close). */
static int answer_open(answer *a, const char *body, size_t len, ps_err *err)
{
    size_t clen;
    memset(a, 0, sizeof *a);
    int rc = chat_content(body, len, &a->content, &clen, err);
    if (rc) return rc;
    a->text = unfence(a->content);
    if (!(a->l = calloc(1, sizeof *a->l))) {
        free(a->content);
        return ps_err_set(err, PS_ENOMEM, "out of memory parsing a reply");
    }
    a->json = json_in_text(a->text, &a->root);
    return 0;
}

static void answer_close(answer *a)
{
    json_decref(a->root);
    free(a->l);
    free(a->content);
}

int builder_parse_vlm_keywords(const char *body, size_t len, char **keywords, ps_err *err)
{
    answer a;
    *keywords = NULL;
    int rc = answer_open(&a, body, len, err);
    if (rc) return rc;
    if (a.json < 0) {
        rc = ps_err_set(err, PS_EPARSE, "the keywords answer is malformed JSON");
    } else if (a.json > 0) {
        list_json(a.l, get_any(a.root, kw_keys));
        if (!a.l->n) rc = ps_err_set(err, PS_EPARSE, "the keywords answer has no \"keywords\"");
    } else if (!labelled_list(a.text, kw_labels, a.l)) {
        list_split(a.l, a.text, strlen(a.text)); /* a plain list */
    }
    if (!rc && !a.l->n) rc = ps_err_set(err, PS_EPARSE, "the keywords answer is empty");
    if (!rc && !(*keywords = list_take(a.l))) rc = ps_err_set(err, PS_ENOMEM, "out of memory");
    answer_close(&a);
    return rc;
}

/* Collapse whitespace runs to one space, trim, cap at FIELD_MAX (UTF-8 boundary). */
static char *clean_text(const char *s, size_t n)
{
    char *o = malloc(n + 1);
    size_t k = 0;
    if (!o) return NULL;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f || c == ' ') {
            if (k && o[k - 1] != ' ') o[k++] = ' ';
        } else {
            o[k++] = (char)c;
        }
    }
    while (k && o[k - 1] == ' ') k--;
    k = utf8_cut(o, k, FIELD_MAX);
    o[k] = '\0';
    return o;
}

int builder_parse_vlm_describe(const char *body, size_t len, char **desc, char **emotion,
                               ps_err *err)
{
    answer a;
    *desc = *emotion = NULL;
    int rc = answer_open(&a, body, len, err);
    if (rc) return rc;
    char *d = NULL;
    if (a.json < 0) {
        rc = ps_err_set(err, PS_EPARSE, "the description answer is malformed JSON");
    } else if (a.json > 0) {
        json_t *dv = get_any(a.root, desc_keys);
        if (json_is_string(dv)) d = clean_text(json_string_value(dv), json_string_length(dv));
        list_json(a.l, get_any(a.root, emo_keys));
        if (!json_is_string(dv))
            rc = ps_err_set(err, PS_EPARSE, "the description answer has no \"description\"");
    } else {
        int found = 0;
        for (const char *line = a.text; line && *line && !found;) {
            const char *eol = strchr(line, '\n');
            size_t n = eol ? (size_t)(eol - line) : strlen(line);
            char *tmp = strndup(line, n);
            const char *v = tmp ? label_value(tmp, desc_labels) : NULL;
            if (v) {
                d = clean_text(v, strlen(v));
                found = 1;
            }
            free(tmp);
            line = eol ? eol + 1 : NULL;
        }
        if (!labelled_list(a.text, emo_labels, a.l) && !found)
            d = clean_text(a.text, strlen(a.text)); /* plain prose: all of it describes */
        else if (!found) { /* only an Emotions line: the text before it describes */
            const char *cut = a.text;
            for (const char *line = a.text; line && *line;) {
                if (label_value(line, emo_labels)) {
                    cut = line;
                    break;
                }
                const char *eol = strchr(line, '\n');
                line = eol ? eol + 1 : NULL;
            }
            d = clean_text(a.text, (size_t)(cut - a.text));
        }
    }
    if (!rc && (!d || !d[0]))
        rc = d ? ps_err_set(err, PS_EPARSE, "the description answer is empty")
               : ps_err_set(err, PS_ENOMEM, "out of memory");
    if (!rc && !(*emotion = list_take(a.l))) rc = ps_err_set(err, PS_ENOMEM, "out of memory");
    if (!rc)
        *desc = d;
    else
        free(d);
    answer_close(&a);
    return rc;
}

int builder_parse_embedding(const char *body, size_t len, float *out, uint32_t cap, uint32_t *got,
                            ps_err *err)
{
    json_error_t je;
    *got = 0;
    json_t *root = json_loadb(body ? body : "", body ? len : 0, 0, &je);
    if (!root)
        return ps_err_set(err, PS_EPARSE, "the reply is not JSON (line %d column %d: %s)", je.line,
                          je.column, je.text);
    json_t *v = json_object_get(json_array_get(json_object_get(root, "data"), 0), "embedding");
    if (!v) v = json_object_get(root, "embedding");
    if (!v) v = json_array_get(json_object_get(root, "embeddings"), 0);
    int rc = 0;
    size_t n = json_array_size(v);
    if (!json_is_array(v)) {
        rc =
            ps_err_set(err, PS_EPARSE,
                       json_object_get(root, "error") ? "the reply is an error, not an embedding"
                                                      : "the reply has no data[0].embedding array");
    } else if (n == 0) {
        rc = ps_err_set(err, PS_EPARSE, "the embedding is empty");
    } else if (n > cap) {
        rc = ps_err_set(err, PS_ETOOBIG, "the embedding has %zu dimensions, at most %u expected", n,
                        cap);
    } else {
        double mx = 0;
        for (size_t i = 0; i < n && !rc; i++) {
            json_t *x = json_array_get(v, i);
            double d = json_number_value(x);
            if (!json_is_number(x))
                rc = ps_err_set(err, PS_EINVAL, "embedding value %zu is not a number", i);
            else if (!isfinite(d))
                rc = ps_err_set(err, PS_EINVAL, "embedding value %zu is not finite", i);
            else if (fabs(d) > mx)
                mx = fabs(d);
        }
        if (!rc && !(mx > 0)) rc = ps_err_set(err, PS_EINVAL, "the embedding is a zero vector");
        if (!rc) {
            double ss = 0; /* scaled by the largest value first: no overflow */
            for (size_t i = 0; i < n; i++) {
                double d = json_number_value(json_array_get(v, i)) / mx;
                ss += d * d;
            }
            double norm = sqrt(ss);
            for (size_t i = 0; i < n; i++)
                out[i] = (float)(json_number_value(json_array_get(v, i)) / mx / norm);
            *got = (uint32_t)n;
        }
    }
    json_decref(root);
    return rc;
}
