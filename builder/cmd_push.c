/*
 * cmd_push.c — `builder push-profiles`: build the offline profiles exactly as `builder build`
 * does (same corpus, clicks, kmax, seed) and load them into the profile service's primary over
 * ZeroMQ, one load_profile per user: the centroids and the user's click history (the distinct
 * stickers clicked, with their embeddings; at most --history of them), which the primary then
 * updates online as clicks arrive. Loading a user replaces what the primary held for them, so
 * a push can be repeated.
 *
 * One request in flight at a time; each must be acknowledged (the primary answers once the
 * write is durable) within --timeout-ms, else the push stops with an error naming the user.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "builder.h"
#include "pipeline.h"
#include "ps/log.h"
#include "ps/wire.h"

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: builder push-profiles --corpus FILE.jsonl --embeddings FILE.npy\n"
        "                             --clicks FILE.tsv --primary ENDPOINT [options]\n\n"
        "Builds the user style profiles as `builder build` does and loads them, with each\n"
        "user's click history, into the profile service's primary (`profile --role primary`).\n\n"
        "options:\n" BUILDER_INPUT_USAGE
        "  --primary EP        the primary's ZeroMQ endpoint (tcp://host:port)\n"
        "  --history N         clicked stickers sent per user, newest kept (default 200, at\n"
        "                      most %d)\n"
        "  --timeout-ms MS     time each user's load may take (default 30000)\n"
        "  --help              this text\n",
        PS_WIRE_MAX_HISTORY);
}

/* Send one frame and wait for the answer to request_id. Returns the reply envelope (caller
 * frees) or NULL with err set. */
static Persrv__Envelope *rpc(void *sock, const uint8_t *buf, size_t len, uint64_t request_id,
                             long timeout_ms, ps_err *err)
{
    if (zmq_send(sock, buf, len, 0) != (int)len) {
        ps_err_set(err, PS_EUNAVAIL, "send: %s", zmq_strerror(zmq_errno()));
        return NULL;
    }
    for (;;) {
        zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
        int n = zmq_poll(&it, 1, timeout_ms);
        if (n == 0) {
            ps_err_set(err, PS_ETIMEDOUT, "no answer in %ld ms", timeout_ms);
            return NULL;
        }
        if (n < 0) {
            ps_err_set(err, PS_EINTERNAL, "poll: %s", zmq_strerror(zmq_errno()));
            return NULL;
        }
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, 0) < 0) {
            zmq_msg_close(&m);
            ps_err_set(err, PS_EUNAVAIL, "receive: %s", zmq_strerror(zmq_errno()));
            return NULL;
        }
        Persrv__Envelope *env = NULL;
        int rc = ps_wire_decode(zmq_msg_data(&m), zmq_msg_size(&m), 0, &env, err);
        zmq_msg_close(&m);
        if (rc) return NULL;
        if (env->request_id == request_id) return env;
        ps_wire_free(env); /* an answer to something else: keep waiting */
    }
}

/* Load user u of b into the primary. */
static int push_user(void *sock, const builder_corpus *c, const builder_built *b, size_t u,
                     uint32_t history, long timeout_ms, uint64_t request_id, size_t *nitems,
                     ps_err *err)
{
    const ps_profile *p = &b->profiles[u];
    size_t dim = c->emb.cols;
    uint32_t nrows = b->user_nrows[u];
    uint32_t first = nrows > history ? nrows - history : 0;
    size_t nh = nrows - first;
    Persrv__Centroid cs[PS_PROFILE_KMAX], *csp[PS_PROFILE_KMAX];
    Persrv__HistoryItem *items = calloc(nh ? nh : 1, sizeof *items);
    Persrv__HistoryItem **itemp = calloc(nh ? nh : 1, sizeof *itemp);
    int rc = 0;
    if (!items || !itemp) {
        rc = ps_err_set(err, PS_ENOMEM, "out of memory for user %s", b->users[u]);
        goto out;
    }
    for (uint32_t i = 0; i < p->k; i++) {
        persrv__centroid__init(&cs[i]);
        cs[i].n_vector = p->dim;
        cs[i].vector = p->centroids + (size_t)i * p->dim;
        cs[i].radius = p->radius[i];
        csp[i] = &cs[i];
    }
    for (size_t i = 0; i < nh; i++) {
        uint32_t row = b->user_rows[u][first + i];
        persrv__history_item__init(&items[i]);
        items[i].sticker_id = c->recs[row].id;
        items[i].n_embedding = dim;
        items[i].embedding = c->emb.data + (size_t)row * dim;
        itemp[i] = &items[i];
    }
    Persrv__LoadProfileRequest l = PERSRV__LOAD_PROFILE_REQUEST__INIT;
    l.user = b->users[u];
    l.n_centroids = p->k;
    l.centroids = csp;
    l.n_history = nh;
    l.history = itemp;
    Persrv__Envelope e = PERSRV__ENVELOPE__INIT;
    e.version = PS_WIRE_VERSION;
    e.request_id = request_id;
    e.deadline_ms = (uint32_t)timeout_ms;
    e.body_case = PERSRV__ENVELOPE__BODY_LOAD_PROFILE;
    e.load_profile = &l;
    uint8_t *buf = NULL;
    size_t len = 0;
    if ((rc = ps_wire_pack(&e, &buf, &len, err))) goto out;
    Persrv__Envelope *r = rpc(sock, buf, len, request_id, timeout_ms, err);
    free(buf);
    if (!r) {
        rc = err->code;
    } else if (r->body_case == PERSRV__ENVELOPE__BODY_ERROR) {
        rc = ps_err_set(err, ps_wire_error_code(r->error), "%s: %s", r->error->code,
                        r->error->message);
    } else if (r->body_case != PERSRV__ENVELOPE__BODY_CLICK_REPLY) {
        rc = ps_err_set(err, PS_EPARSE, "unexpected reply body %d", (int)r->body_case);
    }
    ps_wire_free(r);
    if (rc) ps_err_prefix(err, "user '%s'", b->users[u]);
    *nitems += nh;
out:
    free(items);
    free(itemp);
    return rc;
}

int builder_cmd_push_profiles(int argc, char **argv)
{
    const char *primary = NULL;
    uint32_t history = 200;
    long timeout_ms = 30000;
    builder_inputs inp = {0};
    builder_cfg_defaults(&inp.cfg);
    inp.cfg.progress = 1;
    static const struct option opts[] = {BUILDER_INPUT_OPTIONS,
                                         {"primary", required_argument, 0, 'p'},
                                         {"history", required_argument, 0, 'H'},
                                         {"timeout-ms", required_argument, 0, 't'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        int taken = builder_input_opt(ch, optarg, &inp, "push-profiles");
        if (taken < 0) return 2;
        if (taken) continue;
        switch (ch) {
        case 'p':
            primary = optarg;
            break;
        case 'H':
            history = (uint32_t)strtoul(optarg, &end, 10);
            if (*end || history < 1 || history > PS_WIRE_MAX_HISTORY) {
                fprintf(stderr, "builder push-profiles: --history must be 1..%d\n",
                        PS_WIRE_MAX_HISTORY);
                return 2;
            }
            break;
        case 't':
            timeout_ms = strtol(optarg, &end, 10);
            if (*end || timeout_ms < 1) {
                fprintf(stderr, "builder push-profiles: --timeout-ms must be a positive number\n");
                return 2;
            }
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!inp.corpus || !inp.npy || !inp.clicks || !primary || optind != argc) {
        fprintf(stderr, "builder push-profiles: --corpus, --embeddings, --clicks and --primary are "
                        "required\n");
        usage(stderr);
        return 2;
    }

    ps_err err = {0};
    builder_corpus c = {0};
    builder_built b = {0};
    ps_clicklog log = {0};
    void *zctx = NULL, *sock = NULL;
    size_t nitems = 0;
    int rc = 1, zero = 0;
    double t0 = builder_now();
    if (ps_clicklog_read(inp.clicks, &log, &err) ||
        builder_corpus_load(inp.corpus, inp.npy, 1, &c, &err) ||
        builder_build_index(&c, &log, &inp.cfg, 0, &b, &err))
        goto fail;
    if (!(zctx = zmq_ctx_new()) || !(sock = zmq_socket(zctx, ZMQ_DEALER)) ||
        zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero) || zmq_connect(sock, primary)) {
        ps_err_set(&err, PS_EINVAL, "--primary %s: %s", primary, zmq_strerror(zmq_errno()));
        goto fail;
    }
    builder_progress pr;
    builder_progress_start(&pr, "push profiles", b.nusers, 1);
    uint64_t id = (uint64_t)(t0 * 1e6);
    for (size_t u = 0; u < b.nusers; u++) {
        if (push_user(sock, &c, &b, u, history, timeout_ms, ++id, &nitems, &err)) goto fail;
        builder_progress_tick(&pr, u + 1);
    }
    builder_progress_end(&pr, b.nusers);
    ps_log(PS_LOG_INFO, "builder", "push_done",
           "primary=%s users=%zu history_items=%zu seconds=%.2f", primary, b.nusers, nitems,
           builder_now() - t0);
    printf("pushed %zu user profiles (%zu history items) to %s in %.1f s\n", b.nusers, nitems,
           primary, builder_now() - t0);
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "builder push-profiles: %s\n", err.msg);
out:
    if (sock) zmq_close(sock);
    if (zctx) zmq_ctx_term(zctx);
    builder_built_free(&b);
    builder_corpus_free(&c);
    ps_clicklog_free(&log);
    return rc;
}
