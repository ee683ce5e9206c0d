/*
 * models.h — the model client of `builder enrich`: VLM text (keywords; a description and the
 * emotions it expresses) from an OpenAI-compatible `POST /v1/chat/completions` server, and an
 * image embedding from a CLIP-style `POST /v1/embeddings` server, many requests in flight over
 * one libcurl multi handle (models.c).
 *
 * A job is one sticker: its image is sent as a base64 data URL, once per instruction to the
 * VLM (two requests) and once to the embedding server. Each request has its own timeout and is
 * retried on 429, 5xx and transport errors with a backoff doubling from 500 ms (Retry-After
 * honoured, capped at 60 s). A reply over max_reply bytes is aborted; a reply that does not
 * parse, a wrong embedding dimension, a zero or non-finite vector and a 4xx are the job's
 * error (rc, err), not retried. The API key goes into `Authorization: Bearer` only: it is
 * never logged, printed or copied into an error message.
 *
 * One thread: submit, run and the done() callbacks all happen in the caller's thread. done()
 * may submit more jobs; it must not call builder_models_run, _poll or builder_models_free. A job
 * that failed (rc != 0) reports no fields (keywords, desc, emotion and embedding are NULL).
 */
#ifndef BUILDER_MODELS_H
#define BUILDER_MODELS_H
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include "ps/err.h"

typedef struct builder_models_cfg {
    const char *vlm_url;   /* base URL (POST {vlm_url}/v1/chat/completions); NULL: no VLM text */
    const char *vlm_model; /* "model" of the request */
    const char *prompt_keywords; /* the paper's instruction 1 (NULL: the built-in default) */
    const char
        *prompt_describe;  /* the paper's instruction 2: description + emotions (NULL: default) */
    const char *embed_url; /* base URL (POST {embed_url}/v1/embeddings); NULL: no embeddings */
    const char *embed_model;
    uint32_t dim;        /* expected embedding dimension; 0: the first reply fixes it */
    const char *api_key; /* Bearer key (the CLI reads it from the environment); never logged */
    uint32_t inflight;   /* HTTP requests in flight (default 8) */
    uint32_t timeout_ms; /* per request (default 60000) */
    uint32_t retries;    /* per request on 429, 5xx and transport errors (default 4), backoff
                            doubling from 500 ms, Retry-After honoured (capped at 60 s) */
    size_t max_reply;    /* response size cap in bytes (default 1 MiB) */
} builder_models_cfg;

/* Fill *cfg with the defaults (inflight 8, timeout 60 s, retries 4, max_reply 1 MiB; URLs,
 * models, prompts and key NULL). builder_models_new also reads a zero inflight, timeout_ms or
 * max_reply as its default, but takes retries as given (0: no retry). */
void builder_models_cfg_defaults(builder_models_cfg *cfg);

/* The built-in instructions (ask for a strict JSON answer; the parsers also take code fences
 * and "Keywords: a, b" / "Description: ..." / "Emotions: ..." lines). */
extern const char builder_prompt_keywords[];
extern const char builder_prompt_describe[];

typedef struct builder_model_result {
    uint64_t id;                     /* the job's sticker id */
    void *arg;                       /* the job's arg */
    int rc;                          /* 0, or the PS_E* code of this sticker's failure */
    char err[256];                   /* what failed ("" when rc == 0) */
    char *keywords, *desc, *emotion; /* UTF-8, borrowed until done() returns; NULL without VLM */
    const float *embedding;          /* dim floats, L2-normalized; NULL without embeddings */
    uint32_t dim;
} builder_model_result;

typedef void (*builder_model_done)(const builder_model_result *r, void *ctx);
typedef struct builder_models builder_models_t;

/* New client: the cfg strings are copied. Errors (NULL returned, err set): PS_EINVAL (neither
 * URL, a URL that is not http(s)://, a missing model name), PS_ENOMEM, PS_EINTERNAL (libcurl).
 * Caller owns the result: builder_models_free. */
builder_models_t *builder_models_new(const builder_models_cfg *cfg, ps_err *err);
/* Abandon what is left (no callbacks), wipe the key, free. NULL is fine. */
void builder_models_free(builder_models_t *m);
/* Queue one sticker: image bytes (copied, as a data URL) and MIME type ("image/png" ...;
 * NULL: image/png). Errors: PS_EINVAL (empty image, bad MIME), PS_ENOMEM. */
int builder_models_submit(builder_models_t *m, uint64_t id, const void *img, size_t len,
                          const char *mime, void *arg, ps_err *err);
/* Drive transfers; call done() (in this thread) for each finished job; return once at most
 * `until_pending` jobs remain (0: all done) or *stop became nonzero (then requests in flight
 * are abandoned and their jobs are NOT reported: a rerun redoes them). stop may be NULL.
 * After a stop every unreported job is discarded (builder_models_pending() == 0).
 * Returns 0 (also on a stop), or PS_EINTERNAL when libcurl's multi interface failed (logged
 * with libcurl's message; the unreported jobs are then discarded too). A job's own failure is
 * its rc, never the return value. */
int builder_models_run(builder_models_t *m, size_t until_pending, builder_model_done done,
                       void *ctx, volatile sig_atomic_t *stop);
/* One turn of builder_models_run that returns after at most about max_ms: drive transfers,
 * call done() for each job that finished, wait up to max_ms when none did. For a caller that
 * has other work to feed in meanwhile (builder enrich's OCR threads). Returns as
 * builder_models_run does. */
int builder_models_poll(builder_models_t *m, int max_ms, builder_model_done done, void *ctx);
/* Jobs submitted and not reported yet. */
size_t builder_models_pending(const builder_models_t *m);

/* Totals since new (for the summary line): HTTP requests sent (retries included), retries,
 * jobs reported, of them failed. */
typedef struct builder_models_stats {
    uint64_t requests, retries, jobs, failed;
} builder_models_stats;
void builder_models_get_stats(const builder_models_t *m, builder_models_stats *out);

/* The reply parsers (for tests and the fuzz target): never crash on any input. body is a whole
 * HTTP response body (not NUL-terminated). OUT strings are malloc'd UTF-8, owned by the caller
 * (NULL on error). Errors: PS_EPARSE (names what is missing or malformed), PS_ENOMEM. */
/* Chat completion -> "a, b, c" (the keywords, joined by ", "). */
int builder_parse_vlm_keywords(const char *body, size_t len, char **keywords, ps_err *err);
/* Chat completion -> the description, and the emotions joined by ", " ("" when the reply has
 * a description but names no emotion). */
int builder_parse_vlm_describe(const char *body, size_t len, char **desc, char **emotion,
                               ps_err *err);
/* OUT out[0..*got): the embedding (caller's buffer of cap floats), L2-normalized.
 * Errors: PS_EPARSE, PS_ETOOBIG (more than cap values), PS_EINVAL (a zero, non-finite or
 * non-numeric vector). */
int builder_parse_embedding(const char *body, size_t len, float *out, uint32_t cap, uint32_t *got,
                            ps_err *err);
#endif
