/*
 * fake_models.c — a deterministic model server for the tests of `builder enrich`: an
 * OpenAI-compatible POST /v1/chat/completions (a VLM) and a CLIP-style POST /v1/embeddings on
 * 127.0.0.1 (libevent), with fault injection.
 *
 *   fake_models --ready FILE [--port 0] [--dim 512] [--map FILE] [--key KEY]
 *               [--embed hash|palette] [--faults FILE] [--fault RULE]... [--log FILE]
 *
 * The port is picked at run time (--port 0); once listening, the base URL
 * ("http://127.0.0.1:PORT\n") is written to the ready file (temp + rename). SIGTERM/SIGINT stop.
 *
 * Answers are a function of the image bytes (the data URL of the request, decoded). The image
 * is named by the crc32 of its bytes, 8 lowercase hex digits (in a shell:
 * `gzip -c F | tail -c8 | od -An -tx4 -N4 | tr -d ' '` on a little-endian machine). --map
 * FILE holds tab-separated lines `crc \t keywords \t description \t emotions [\t v1 v2 ...]`
 * (keywords and emotions comma-separated; the optional vector is that image's embedding,
 * sent as is). An image not in the map gets keywords "sticker, k<crc>", the description "a
 * sticker numbered <crc>", the emotion "e<crc & 0xff>", and a pseudo-random embedding of --dim
 * values seeded by the crc, NOT normalized (values in [-3, 3]). With --embed palette the
 * embedding is instead a function of the pixels, as an image model's is: the image decoded
 * (Leptonica), soft histograms of its R, G and B values (--dim / 3 bins each; --dim a
 * multiple of 3), square-rooted and centred (an image that does not decode gets 400). Images
 * of one palette get near embeddings wherever their text sits, so a user's clicks on one
 * visual style make a style profile. A chat request is a
 * "describe" one when its text mentions "descri" or "emotion", else a "keywords" one; the
 * answer is the JSON the built-in prompts ask for.
 *
 * --key KEY: requests without `Authorization: Bearer KEY` get 401 (the key is never printed).
 *
 * Faults: rules, one per --fault or per line of --faults FILE (re-read whenever the file is
 * replaced or changes; a reload resets the request counter and every rule's and image's
 * counts). A rule is space-separated tokens; the first rule whose conditions all hold applies:
 *   conditions  req=N       the Nth request since start (or reload), 1-based
 *               crc=HEX     the image's crc32;   has=TEXT   the image bytes contain TEXT
 *               kind=K      keywords | describe | chat (both) | embed
 *               tries=N     only the first N requests of the same image and kind
 *               times=N     this rule applies N times at most
 *   actions     delay=MS    answer after MS milliseconds (with any action below, or alone)
 *               status=S    answer HTTP S with an OpenAI-style error body
 *               retry_after=SEC   a Retry-After header (with status=429, say)
 *               malformed   answer 200 with a body that is not JSON
 *               dim=N       an embedding of N values instead of --dim
 *               drop        close the connection without answering
 *               big=BYTES   a valid answer preceded by BYTES spaces, chunked (no length)
 *               fenced | lines | list    the chat answer in a code fence, as "Keywords: a, b"
 *                           lines, or as a plain list
 * Lines starting with '#' are comments. --log FILE gets one line per request:
 *   n=3 kind=embed crc=1a2b3c4d attempt=1 auth=ok action=status=500
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <math.h>
#include <leptonica/allheaders.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

enum { K_KEYWORDS, K_DESCRIBE, K_EMBED, K_CHAT, K_ANY };
static const char *const kind_names[] = {"keywords", "describe", "embed", "chat", "any"};

enum { F_JSON, F_FENCED, F_LINES, F_LIST };

typedef struct rule {
    long req;
    int has_crc;
    uint32_t crc;
    char has[128];
    int kind, tries, times, fired;
    int delay_ms, status, retry_after, malformed, dim, drop, format;
    long big;
} rule;

typedef struct entry { /* one --map line */
    uint32_t crc;
    char *kw, *desc, *emo;
    double *vec;
    int nvec;
} entry;

typedef struct seen { /* attempts per image and kind */
    uint32_t crc;
    int kind, count;
    struct seen *next;
} seen;

#define SEEN_BUCKETS 4096
#define MAX_RULES    256

static struct {
    struct event_base *base;
    int dim, palette; /* --embed palette */
    const char *key, *faults_path, *log_path;
    FILE *log;
    entry *map;
    size_t nmap;
    rule cli[MAX_RULES], file[MAX_RULES];
    int ncli, nfile;
    char *faults_text; /* the --faults file as last read */
    long n;            /* requests since start or reload */
    seen *seen[SEEN_BUCKETS];
} S;

/* ---- setup ------------------------------------------------------------------------------ */

static int parse_rule(const char *line, rule *r)
{
    char buf[1024];
    memset(r, 0, sizeof *r);
    r->kind = K_ANY;
    snprintf(buf, sizeof buf, "%s", line);
    int any = 0;
    for (char *save = NULL, *t = strtok_r(buf, " \t\r\n", &save); t;
         t = strtok_r(NULL, " \t\r\n", &save)) {
        char *v = strchr(t, '=');
        if (v) *v++ = '\0';
        any = 1;
        if (!v && strcmp(t, "*") == 0) continue;
        if (!v && strcmp(t, "malformed") == 0)
            r->malformed = 1;
        else if (!v && strcmp(t, "drop") == 0)
            r->drop = 1;
        else if (!v && strcmp(t, "fenced") == 0)
            r->format = F_FENCED;
        else if (!v && strcmp(t, "lines") == 0)
            r->format = F_LINES;
        else if (!v && strcmp(t, "list") == 0)
            r->format = F_LIST;
        else if (!v)
            return -1;
        else if (strcmp(t, "req") == 0)
            r->req = atol(v);
        else if (strcmp(t, "crc") == 0)
            r->has_crc = 1, r->crc = (uint32_t)strtoul(v, NULL, 16);
        else if (strcmp(t, "has") == 0)
            snprintf(r->has, sizeof r->has, "%s", v);
        else if (strcmp(t, "tries") == 0)
            r->tries = atoi(v);
        else if (strcmp(t, "times") == 0)
            r->times = atoi(v);
        else if (strcmp(t, "delay") == 0)
            r->delay_ms = atoi(v);
        else if (strcmp(t, "status") == 0)
            r->status = atoi(v);
        else if (strcmp(t, "retry_after") == 0)
            r->retry_after = atoi(v);
        else if (strcmp(t, "dim") == 0)
            r->dim = atoi(v);
        else if (strcmp(t, "big") == 0)
            r->big = atol(v);
        else if (strcmp(t, "kind") == 0) {
            r->kind = -1;
            for (int k = 0; k <= K_ANY; k++)
                if (strcmp(v, kind_names[k]) == 0) r->kind = k;
            if (r->kind < 0) return -1;
        } else {
            return -1;
        }
    }
    return any ? 0 : 1; /* 1: empty line */
}

static void reset_counts(void)
{
    for (int i = 0; i < SEEN_BUCKETS; i++)
        while (S.seen[i]) {
            seen *s = S.seen[i];
            S.seen[i] = s->next;
            free(s);
        }
    S.n = 0;
    for (int i = 0; i < S.ncli; i++) S.cli[i].fired = 0;
}

/* Re-read --faults when its bytes changed (a file's timestamps are too coarse to tell). */
static void reload_faults(void)
{
    if (!S.faults_path) return;
    char text[65536];
    size_t n = 0;
    FILE *f = fopen(S.faults_path, "r");
    if (f) {
        n = fread(text, 1, sizeof text - 1, f);
        fclose(f);
    }
    text[n] = '\0';
    if (S.faults_text && strcmp(S.faults_text, text) == 0) return;
    free(S.faults_text);
    S.faults_text = strdup(text);
    S.nfile = 0;
    reset_counts();
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line && S.nfile < MAX_RULES;
         line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#') continue;
        int rc = parse_rule(line, &S.file[S.nfile]);
        if (rc == 0) S.nfile++;
        if (rc < 0) fprintf(stderr, "fake_models: bad rule in %s: %s\n", S.faults_path, line);
    }
}

static int load_map(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        char *cols[5] = {0};
        int nc = 0;
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0] || line[0] == '#') continue;
        for (char *p = line; p && nc < 5; nc++) {
            cols[nc] = p;
            p = strchr(p, '\t');
            if (p) *p++ = '\0';
        }
        if (nc < 4) continue;
        entry *m = realloc(S.map, (S.nmap + 1) * sizeof *S.map);
        if (!m) abort();
        S.map = m;
        entry *e = &S.map[S.nmap++];
        memset(e, 0, sizeof *e);
        e->crc = (uint32_t)strtoul(cols[0], NULL, 16);
        e->kw = strdup(cols[1]);
        e->desc = strdup(cols[2]);
        e->emo = strdup(cols[3]);
        if (cols[4]) {
            char *s = cols[4], *end;
            for (;;) {
                double d = strtod(s, &end);
                if (end == s) break;
                e->vec = realloc(e->vec, (size_t)(e->nvec + 1) * sizeof *e->vec);
                if (!e->vec) abort();
                e->vec[e->nvec++] = d;
                s = end;
            }
        }
    }
    free(line);
    fclose(f);
    return 0;
}

/* ---- one request ------------------------------------------------------------------------ */

static int b64val(int c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Decode the base64 of a data URL; NULL when it is not one. */
static unsigned char *data_url(const char *u, size_t *len)
{
    const char *p = u ? strstr(u, ";base64,") : NULL;
    if (!u || strncmp(u, "data:", 5) != 0 || !p) return NULL;
    p += 8;
    size_t n = strlen(p);
    unsigned char *o = malloc(n / 4 * 3 + 3);
    size_t k = 0;
    uint32_t acc = 0;
    int bits = 0;
    if (!o) return NULL;
    for (size_t i = 0; i < n && p[i] != '='; i++) {
        int v = b64val((unsigned char)p[i]);
        if (v < 0) {
            free(o);
            return NULL;
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[k++] = (unsigned char)(acc >> bits);
        }
    }
    *len = k;
    return o;
}

static int bump_seen(uint32_t crc, int kind)
{
    seen **b = &S.seen[(crc ^ (uint32_t)kind * 2654435761u) % SEEN_BUCKETS];
    for (seen *s = *b; s; s = s->next)
        if (s->crc == crc && s->kind == kind) return ++s->count;
    seen *s = calloc(1, sizeof *s);
    if (!s) abort();
    s->crc = crc;
    s->kind = kind;
    s->count = 1;
    s->next = *b;
    *b = s;
    return 1;
}

static const rule *match(const unsigned char *img, size_t len, uint32_t crc, int kind, int attempt)
{
    rule *sets[2] = {S.cli, S.file};
    int ns[2] = {S.ncli, S.nfile};
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < ns[s]; i++) {
            rule *r = &sets[s][i];
            if (r->req && r->req != S.n) continue;
            if (r->has_crc && r->crc != crc) continue;
            if (r->has[0] && !memmem(img, len, r->has, strlen(r->has))) continue;
            if (r->kind != K_ANY && r->kind != kind &&
                !(r->kind == K_CHAT && (kind == K_KEYWORDS || kind == K_DESCRIBE)))
                continue;
            if (r->tries && attempt > r->tries) continue;
            if (r->times && r->fired >= r->times) continue;
            r->fired++;
            return r;
        }
    return NULL;
}

static const entry *lookup(uint32_t crc)
{
    for (size_t i = 0; i < S.nmap; i++)
        if (S.map[i].crc == crc) return &S.map[i];
    return NULL;
}

static json_t *split_list(const char *s)
{
    json_t *a = json_array();
    char *c = strdup(s), *save = NULL;
    for (char *t = c ? strtok_r(c, ",", &save) : NULL; t; t = strtok_r(NULL, ",", &save)) {
        while (*t == ' ') t++;
        if (*t) json_array_append_new(a, json_string(t));
    }
    free(c);
    return a;
}

/* The model's answer text for a chat request. */
static char *chat_text(int kind, uint32_t crc, int format)
{
    const entry *e = lookup(crc);
    char kw[64], desc[64], emo[16];
    snprintf(kw, sizeof kw, "sticker, k%08x", crc);
    snprintf(desc, sizeof desc, "a sticker numbered %08x", crc);
    snprintf(emo, sizeof emo, "e%02x", crc & 0xff);
    const char *k = e ? e->kw : kw, *d = e ? e->desc : desc, *m = e ? e->emo : emo;
    char *out = NULL;
    if (format == F_LINES || format == F_LIST) {
        size_t n = strlen(k) + strlen(d) + strlen(m) + 64;
        out = malloc(n);
        if (!out) abort();
        if (format == F_LIST)
            snprintf(out, n, "%s", kind == K_KEYWORDS ? k : d);
        else if (kind == K_KEYWORDS)
            snprintf(out, n, "Keywords: %s", k);
        else
            snprintf(out, n, "Description: %s\nEmotions: %s", d, m);
        return out;
    }
    json_t *o = kind == K_KEYWORDS
                    ? json_pack("{s:o}", "keywords", split_list(k))
                    : json_pack("{s:s, s:o}", "description", d, "emotions", split_list(m));
    char *j = json_dumps(o, 0);
    json_decref(o);
    if (format != F_FENCED) return j;
    size_t n = strlen(j) + 32;
    out = malloc(n);
    if (!out) abort();
    snprintf(out, n, "```json\n%s\n```", j);
    free(j);
    return out;
}

/* --embed palette: soft histograms of the R, G and B values (dim / 3 bins each, every pixel
 * shared between its two nearest bin centres), square-rooted, centred; NULL when img does not
 * decode. Position-invariant: it sees an image's colours, not where its text is. */
static json_t *palette(const unsigned char *img, size_t len, int dim)
{
    int bins = dim / 3;
    PIX *raw = pixReadMem(img, len), *pix = raw ? pixConvertTo32(raw) : NULL;
    pixDestroy(&raw);
    if (!pix) return NULL;
    int w = (int)pixGetWidth(pix), h = (int)pixGetHeight(pix);
    double *hist = calloc((size_t)dim, sizeof *hist), mean = 0;
    if (!hist) abort();
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            l_int32 rgb[3];
            pixGetRGBPixel(pix, x, y, &rgb[0], &rgb[1], &rgb[2]);
            for (int k = 0; k < 3; k++) {
                double pos = rgb[k] / 255.0 * (bins - 1);
                int b0 = (int)pos;
                double f = pos - b0;
                hist[k * bins + b0] += 1 - f;
                if (b0 + 1 < bins) hist[k * bins + b0 + 1] += f;
            }
        }
    pixDestroy(&pix);
    for (int i = 0; i < dim; i++) {
        hist[i] = sqrt(hist[i] / ((double)w * h));
        mean += hist[i];
    }
    mean /= dim;
    json_t *a = json_array();
    for (int i = 0; i < dim; i++) json_array_append_new(a, json_real(hist[i] - mean));
    free(hist);
    return a;
}

static json_t *embedding(uint32_t crc, int dim)
{
    const entry *e = lookup(crc);
    json_t *a = json_array();
    if (e && e->nvec && dim == S.dim) {
        for (int i = 0; i < e->nvec; i++) json_array_append_new(a, json_real(e->vec[i]));
        return a;
    }
    uint64_t x = crc * 0x9E3779B97F4A7C15ull + 1;
    for (int i = 0; i < dim; i++) {
        x += 0x9E3779B97F4A7C15ull; /* splitmix64 */
        uint64_t z = x;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        json_array_append_new(a, json_real(((double)(z >> 11) / 9007199254740992.0 * 2 - 1) * 3));
    }
    return a;
}

typedef struct reply {
    struct reply *prev, *next; /* delayed, not sent yet */
    struct event *ev;
    struct evhttp_request *req;
    int status, drop;
    long big;
    char *body;
    char retry_after[16];
} reply;

static reply *delayed; /* freed at exit: their requests go with evhttp_free */

static void free_reply(reply *p)
{
    if (p->ev) {
        event_free(p->ev);
        if (p->prev)
            p->prev->next = p->next;
        else
            delayed = p->next;
        if (p->next) p->next->prev = p->prev;
    }
    free(p->body);
    free(p);
}

static void send_reply(reply *p)
{
    struct evhttp_request *req = p->req;
    if (p->drop) {
        struct evhttp_connection *c = evhttp_request_get_connection(req);
        if (c)
            evhttp_connection_free(c); /* frees req too */
        else
            evhttp_request_free(req); /* the client left already */
    } else {
        struct evkeyvalq *h = evhttp_request_get_output_headers(req);
        evhttp_add_header(h, "Content-Type", "application/json");
        if (p->retry_after[0]) evhttp_add_header(h, "Retry-After", p->retry_after);
        struct evbuffer *b = evbuffer_new();
        if (!b) abort();
        if (p->big > 0) {
            char pad[4096];
            memset(pad, ' ', sizeof pad);
            for (long left = p->big; left > 0; left -= (long)sizeof pad)
                evbuffer_add(b, pad, left < (long)sizeof pad ? (size_t)left : sizeof pad);
            evbuffer_add(b, p->body, strlen(p->body));
            evhttp_send_reply_start(req, p->status, "OK");
            evhttp_send_reply_chunk(req, b);
            evhttp_send_reply_end(req);
        } else {
            evbuffer_add(b, p->body, strlen(p->body));
            evhttp_send_reply(req, p->status, p->status == 200 ? "OK" : "Error", b);
        }
        evbuffer_free(b);
    }
    free_reply(p);
}

static void on_delay(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    send_reply(arg);
}

static char *error_body(const char *msg)
{
    json_t *o = json_pack("{s:{s:s, s:s}}", "error", "message", msg, "type", "fake_models");
    char *s = json_dumps(o, 0);
    json_decref(o);
    return s;
}

static void handle(struct evhttp_request *req, void *arg)
{
    int path_kind = (int)(intptr_t)arg;
    reply *p = calloc(1, sizeof *p);
    if (!p) abort();
    p->req = req;
    p->status = 200;
    reload_faults();
    S.n++;

    const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    const char *auth_s = "none"; /* no header; "ok": the key; "wrong"; "bearer": no --key */
    if (auth && S.key)
        auth_s = strncmp(auth, "Bearer ", 7) == 0 && strcmp(auth + 7, S.key) == 0 ? "ok" : "wrong";
    else if (auth)
        auth_s = strncmp(auth, "Bearer ", 7) == 0 ? "bearer" : "wrong";

    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t blen = evbuffer_get_length(in);
    json_t *root = json_loadb((const char *)evbuffer_pullup(in, -1), blen, 0, NULL);
    const char *url = NULL;
    int kind = path_kind;
    if (path_kind == K_EMBED) {
        json_t *in_v = json_object_get(root, "input");
        url = json_string_value(json_is_array(in_v) ? json_array_get(in_v, 0) : in_v);
    } else {
        kind = K_KEYWORDS;
        size_t i, k;
        json_t *msg, *part;
        json_array_foreach(json_object_get(root, "messages"), i, msg)
        {
            json_t *c = json_object_get(msg, "content");
            if (json_is_string(c) && (strcasestr(json_string_value(c), "descri") ||
                                      strcasestr(json_string_value(c), "emotion")))
                kind = K_DESCRIBE;
            json_array_foreach(c, k, part)
            {
                const char *t = json_string_value(json_object_get(part, "text"));
                if (t && (strcasestr(t, "descri") || strcasestr(t, "emotion"))) kind = K_DESCRIBE;
                json_t *iu = json_object_get(part, "image_url");
                const char *u = json_string_value(json_object_get(iu, "url"));
                if (!u) u = json_string_value(iu);
                if (u) url = u;
            }
        }
    }
    size_t ilen = 0;
    unsigned char *img = data_url(url, &ilen);
    uint32_t crc = img ? (uint32_t)crc32(0L, img, (uInt)ilen) : 0;
    int attempt = img ? bump_seen(crc, kind) : 0;
    const rule *r = NULL;
    char action[64] = "ok";

    if (S.key && strcmp(auth_s, "ok") != 0) {
        p->status = 401;
        p->body = error_body("invalid api key");
        snprintf(action, sizeof action, "unauthorized");
    } else if (!root || !img || !ilen) {
        p->status = 400;
        p->body = error_body(!root ? "the body is not JSON" : "no image data URL in the request");
        snprintf(action, sizeof action, "bad_request");
    } else {
        r = match(img, ilen, crc, kind, attempt);
        int dim = r && r->dim ? r->dim : S.dim;
        if (r && r->drop) {
            p->drop = 1;
            snprintf(action, sizeof action, "drop");
        } else if (r && r->status) {
            p->status = r->status;
            p->body = error_body("injected failure");
            if (r->retry_after)
                snprintf(p->retry_after, sizeof p->retry_after, "%d", r->retry_after);
            snprintf(action, sizeof action, "status=%d", r->status);
        } else if (r && r->malformed) {
            p->body = strdup("{\"choices\": [{\"message\": {\"content\": \"trunc");
            snprintf(action, sizeof action, "malformed");
        } else {
            json_t *o;
            json_t *vec = NULL;
            if (kind == K_EMBED && S.palette && dim == S.dim)
                vec = palette(img, ilen, dim);
            else if (kind == K_EMBED)
                vec = embedding(crc, dim);
            if (kind == K_EMBED && !vec) {
                o = NULL;
                p->status = 400;
                p->body = error_body("the image does not decode");
                snprintf(action, sizeof action, "bad_image");
            } else if (kind == K_EMBED) {
                o = json_pack("{s:s, s:[{s:s, s:i, s:o}], s:s}", "object", "list", "data", "object",
                              "embedding", "index", 0, "embedding", vec, "model", "fake-clip");
            } else {
                char *text = chat_text(kind, crc, r ? r->format : F_JSON);
                o = json_pack("{s:s, s:s, s:s, s:[{s:i, s:{s:s, s:s}, s:s}]}", "id", "fake",
                              "object", "chat.completion", "model", "fake-vlm", "choices", "index",
                              0, "message", "role", "assistant", "content", text, "finish_reason",
                              "stop");
                free(text);
            }
            if (o) p->body = json_dumps(o, 0);
            json_decref(o);
            if (r && r->dim) snprintf(action, sizeof action, "dim=%d", r->dim);
            if (r && r->big) {
                p->big = r->big;
                snprintf(action, sizeof action, "big=%ld", r->big);
            }
        }
        if (r && r->delay_ms) {
            size_t n = strlen(action);
            snprintf(action + n, sizeof action - n, " delay=%d", r->delay_ms);
        }
    }
    if (!p->body && !p->drop) abort();
    if (S.log) {
        fprintf(S.log, "n=%ld kind=%s crc=%08x attempt=%d auth=%s action=%s\n", S.n,
                kind_names[kind], crc, attempt, auth_s, action);
        fflush(S.log);
    }
    free(img);
    json_decref(root);
    if (r && r->delay_ms > 0) {
        struct timeval tv = {r->delay_ms / 1000, (r->delay_ms % 1000) * 1000};
        if (!(p->ev = evtimer_new(S.base, on_delay, p))) abort();
        p->next = delayed;
        if (delayed) delayed->prev = p;
        delayed = p;
        evtimer_add(p->ev, &tv);
    } else {
        send_reply(p);
    }
}

static void on_other(struct evhttp_request *req, void *arg)
{
    (void)arg;
    char *b = error_body("no such endpoint");
    struct evbuffer *buf = evbuffer_new();
    evbuffer_add(buf, b, strlen(b));
    evhttp_send_reply(req, 404, "Not Found", buf);
    evbuffer_free(buf);
    free(b);
}

static void on_signal(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopexit(arg, NULL);
}

static void usage(void)
{
    fprintf(stderr, "usage: fake_models --ready FILE [--port 0] [--dim 512] [--map FILE] "
                    "[--key KEY] [--embed hash|palette] [--faults FILE] [--fault RULE]... "
                    "[--log FILE]\n"
                    "(see the comment at the top of tests/integration/fake_models.c)\n");
}

int main(int argc, char **argv)
{
    const char *ready = NULL;
    int port = 0;
    S.dim = 512;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0) {
            usage();
            return 0;
        }
        if (!v) {
            usage();
            return 2;
        }
        i++;
        if (strcmp(a, "--ready") == 0)
            ready = v;
        else if (strcmp(a, "--port") == 0)
            port = atoi(v);
        else if (strcmp(a, "--dim") == 0)
            S.dim = atoi(v);
        else if (strcmp(a, "--key") == 0)
            S.key = v;
        else if (strcmp(a, "--embed") == 0 && strcmp(v, "hash") == 0)
            S.palette = 0;
        else if (strcmp(a, "--embed") == 0 && strcmp(v, "palette") == 0)
            S.palette = 1;
        else if (strcmp(a, "--faults") == 0)
            S.faults_path = v;
        else if (strcmp(a, "--log") == 0)
            S.log_path = v;
        else if (strcmp(a, "--map") == 0) {
            if (load_map(v)) {
                fprintf(stderr, "fake_models: cannot read %s: %s\n", v, strerror(errno));
                return 1;
            }
        } else if (strcmp(a, "--fault") == 0) {
            if (S.ncli >= MAX_RULES || parse_rule(v, &S.cli[S.ncli]) != 0) {
                fprintf(stderr, "fake_models: bad rule: %s\n", v);
                return 2;
            }
            S.ncli++;
        } else {
            usage();
            return 2;
        }
    }
    if (!ready || S.dim < 1 || S.dim > 65536) {
        usage();
        return 2;
    }
    if (S.palette && (S.dim % 3 || S.dim < 6)) {
        fprintf(stderr, "fake_models: --embed palette wants --dim a multiple of 3, >= 6\n");
        return 2;
    }
    setMsgSeverity(L_SEVERITY_NONE);
    if (S.log_path && !(S.log = fopen(S.log_path, "a"))) {
        fprintf(stderr, "fake_models: cannot open %s: %s\n", S.log_path, strerror(errno));
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    S.base = event_base_new();
    struct evhttp *http = evhttp_new(S.base);
    evhttp_set_max_body_size(http, 64 << 20);
    evhttp_set_allowed_methods(http, EVHTTP_REQ_POST | EVHTTP_REQ_GET);
    evhttp_set_cb(http, "/v1/chat/completions", handle, (void *)(intptr_t)K_CHAT);
    evhttp_set_cb(http, "/v1/embeddings", handle, (void *)(intptr_t)K_EMBED);
    evhttp_set_gencb(http, on_other, NULL);
    struct evhttp_bound_socket *bs =
        evhttp_bind_socket_with_handle(http, "127.0.0.1", (ev_uint16_t)port);
    if (!bs) {
        fprintf(stderr, "fake_models: cannot listen on 127.0.0.1:%d\n", port);
        return 1;
    }
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sa, &sl);
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", ready);
    FILE *f = fopen(tmp, "w");
    if (!f || fprintf(f, "http://127.0.0.1:%d\n", ntohs(sa.sin_port)) < 0 || fclose(f) != 0 ||
        rename(tmp, ready) != 0) {
        fprintf(stderr, "fake_models: cannot write %s\n", ready);
        return 1;
    }
    struct event *st = evsignal_new(S.base, SIGTERM, on_signal, S.base);
    struct event *si = evsignal_new(S.base, SIGINT, on_signal, S.base);
    event_add(st, NULL);
    event_add(si, NULL);
    event_base_dispatch(S.base);
    event_free(st);
    event_free(si);
    while (delayed) free_reply(delayed);
    evhttp_free(http);
    event_base_free(S.base);
    reset_counts();
    for (size_t i = 0; i < S.nmap; i++) {
        free(S.map[i].kw);
        free(S.map[i].desc);
        free(S.map[i].emo);
        free(S.map[i].vec);
    }
    free(S.map);
    free(S.faults_text);
    if (S.log) fclose(S.log);
    return 0;
}
