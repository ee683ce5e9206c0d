/*
 * replica.c — a replica's tail thread: it pulls the primary's write-ahead log over its own
 * ZeroMQ DEALER and applies it batch by batch, and bootstraps from a checkpoint when the WAL
 * it needs is gone (DESIGN §2, §3.2).
 *
 * Sequence numbers: the replica applies exactly the primary's batches, one rocksdb_write each,
 * and writes nothing else, so its database's latest sequence number is the primary's sequence
 * number of the last batch applied ("applied"). Each round asks for wal{from = applied + 1}.
 * GetUpdatesSince silently skips to the next batch it has when the one asked for is gone, so
 * every batch must start at applied + 1 and leave the database at seq + count − 1; anything
 * else (a gap, gone, a primary behind the replica) means the replica cannot continue from its
 * own data and takes a checkpoint:
 *
 *   checkpoint{session 0} → files ─▶ checkpoint{session, file, offset} per chunk into
 *   DIR.incoming (each file fsync'd) ─▶ checkpoint{done} ─▶ profsvc_store_swap
 *
 * Requests go through the wire's request helper (ps/zreq.h, Lazy Pirate): a request without an
 * answer within its timeout closes and reopens the socket (whatever the old one still queues
 * is dropped) and is retried, and a primary nobody listens at fails a request at once
 * (refused) rather than after its timeout; the primary may be down for a while, so the thread
 * keeps trying, warning at most once per WARN_EVERY_S.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "ps/curve.h"
#include "ps/log.h"
#include "ps/wire.h"
#include "ps/zreq.h"
#include "profile.h"

#define WAL_TIMEOUT_MS     3000  /* a wal request */
#define CKPT_TIMEOUT_MS    60000 /* making a checkpoint flushes the primary's memtable */
#define CHUNK_TIMEOUT_MS   10000 /* one checkpoint chunk */
#define CHUNK_TRIES        3     /* a chunk is asked for again this often before giving up */
#define RETRY_MS           200   /* pause after a failed request */
#define BOOTSTRAP_RETRY_MS 1000
#define WARN_EVERY_S       5.0

struct profsvc_replica {
    profsvc_ctx *ctx;
    profsvc_replica_cfg cfg;
    pthread_t tid;
    atomic_int stop;
    void *zctx;
    ps_zreq_t *zr; /* to the primary; made on first use */
    double last_warn;
};

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Sleep ms, waking early when asked to stop. */
static void pause_ms(profsvc_replica_t *r, uint32_t ms)
{
    while (ms && !atomic_load(&r->stop)) {
        uint32_t step = ms < 50 ? ms : 50;
        struct timespec ts = {0, (long)step * 1000000L};
        nanosleep(&ts, NULL);
        ms -= step;
    }
}

/* Rate-limited: 1 when a warning may be logged now. */
static int may_warn(profsvc_replica_t *r)
{
    double now = mono_s();
    if (now - r->last_warn < WARN_EVERY_S) return 0;
    r->last_warn = now;
    return 1;
}

/* Send env (packed here with request_id 0: ps_zreq_call stamps each attempt's) and wait for
 * its reply, up to `attempts` attempts of timeout_ms while they time out. OUT *reply
 * (ps_wire_free) whose body is `want`. Errors: PS_ETIMEDOUT, PS_EUNAVAIL (stopping, or the
 * primary refused the connection), the code of an Error reply, PS_EPARSE for a reply that does
 * not decode or has another body, and ps_zreq_new's. */
static int rpc(profsvc_replica_t *r, Persrv__Envelope *env, Persrv__Envelope__BodyCase want,
               uint32_t timeout_ms, uint32_t attempts, Persrv__Envelope **reply, ps_err *err)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    Persrv__Envelope *e = NULL;
    int rc;
    *reply = NULL;
    if (!r->zr) {
        ps_zreq_opts o = {.max_frame = r->cfg.max_frame, .curve = r->cfg.curve, .stop = &r->stop};
        if (!(r->zr = ps_zreq_new(r->zctx, &r->cfg.primary, 1, &o, err))) return err->code;
    }
    env->version = PS_WIRE_VERSION;
    env->request_id = 0;
    if ((rc = ps_wire_pack(env, &buf, &len, err))) return rc;
    rc = ps_zreq_call(r->zr, buf, len, timeout_ms, attempts, &e, err);
    free(buf);
    if (rc) return rc;
    if (e->body_case == PERSRV__ENVELOPE__BODY_ERROR)
        rc = ps_err_set(err, ps_wire_error_code(e->error), "primary: %s: %s", e->error->code,
                        e->error->message);
    else if (e->body_case != want)
        rc = ps_err_set(err, PS_EPARSE, "primary: reply body %d, expected %d", (int)e->body_case,
                        (int)want);
    if (rc)
        ps_wire_free(e);
    else
        *reply = e;
    return rc;
}

static int checkpoint_rpc(profsvc_replica_t *r, Persrv__CheckpointRequest *c, uint32_t timeout_ms,
                          uint32_t tries, Persrv__Envelope **reply, ps_err *err)
{
    Persrv__Envelope e = PERSRV__ENVELOPE__INIT;
    e.body_case = PERSRV__ENVELOPE__BODY_CHECKPOINT;
    e.checkpoint = c;
    return rpc(r, &e, PERSRV__ENVELOPE__BODY_CHECKPOINT_REPLY, timeout_ms, tries, reply, err);
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Download one file of the session into dir. OUT *bytes added. */
static int fetch_file(profsvc_replica_t *r, uint64_t session, const Persrv__CheckpointFile *f,
                      const char *dir, uint64_t *bytes, ps_err *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, f->name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644), rc = 0;
    if (fd < 0) return ps_err_set(err, PS_EIO, "%s: %s", path, strerror(errno));
    for (uint64_t off = 0; off < f->size && !rc;) {
        Persrv__CheckpointRequest c = PERSRV__CHECKPOINT_REQUEST__INIT;
        Persrv__Envelope *e = NULL;
        c.session = session;
        c.file = f->name;
        c.offset = off;
        if ((rc = checkpoint_rpc(r, &c, CHUNK_TIMEOUT_MS, CHUNK_TRIES, &e, err))) break;
        const ProtobufCBinaryData *d = &e->checkpoint_reply->data;
        if (d->len == 0)
            rc = ps_err_set(err, PS_EIO, "%s: the primary sent %llu of %llu bytes", f->name,
                            (unsigned long long)off, (unsigned long long)f->size);
        else if (d->len > f->size - off)
            rc = ps_err_set(err, PS_EIO, "%s: the primary sent more than its %llu bytes", f->name,
                            (unsigned long long)f->size);
        else if (write_all(fd, d->data, d->len))
            rc = ps_err_set(err, PS_EIO, "%s: %s", path, strerror(errno));
        off += d->len;
        *bytes += d->len;
        ps_wire_free(e);
    }
    if (!rc && fsync(fd)) rc = ps_err_set(err, PS_EIO, "fsync %s: %s", path, strerror(errno));
    close(fd);
    return rc;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* Replace the replica's database with a fresh checkpoint of the primary's. */
static int bootstrap(profsvc_replica_t *r, const char *reason, ps_err *err)
{
    profsvc_store_t *st = r->ctx->store;
    const char *dir = profsvc_store_incoming(st);
    uint64_t before = profsvc_store_seq(st), bytes = 0;
    ps_log(PS_LOG_INFO, "profile", "bootstrap_start", "reason=%s seq=%llu primary=%s", reason,
           (unsigned long long)before, r->cfg.primary);

    Persrv__CheckpointRequest c = PERSRV__CHECKPOINT_REQUEST__INIT;
    Persrv__Envelope *list = NULL, *e = NULL;
    int rc = checkpoint_rpc(r, &c, CKPT_TIMEOUT_MS, 1, &list, err);
    if (rc) return rc;
    const Persrv__CheckpointReply *cr = list->checkpoint_reply;
    if (profsvc_rmtree(dir) || mkdir(dir, 0755))
        rc = ps_err_set(err, PS_EIO, "%s: %s", dir, strerror(errno));
    for (size_t i = 0; i < cr->n_files && !rc; i++)
        rc = fetch_file(r, cr->session, cr->files[i], dir, &bytes, err);
    if (!rc && fsync_dir(dir)) rc = ps_err_set(err, PS_EIO, "fsync %s: %s", dir, strerror(errno));

    /* Tell the primary to drop the session either way (it also expires on its own). */
    ps_err derr = {0, ""};
    c.session = cr->session;
    c.done = 1;
    if (!atomic_load(&r->stop) && checkpoint_rpc(r, &c, CHUNK_TIMEOUT_MS, 1, &e, &derr))
        ps_log(PS_LOG_WARN, "profile", "checkpoint_done_failed", "session=%llu msg=\"%s\"",
               (unsigned long long)cr->session, derr.msg);
    ps_wire_free(e);
    if (!rc) rc = profsvc_store_swap(st, err);
    if (!rc) atomic_fetch_add(&r->ctx->stats.checkpoints, 1);
    if (!rc)
        ps_log(PS_LOG_INFO, "profile", "bootstrap_done",
               "reason=%s seq_before=%llu seq_after=%llu checkpoint_seq=%llu files=%zu bytes=%llu",
               reason, (unsigned long long)before, (unsigned long long)profsvc_store_seq(st),
               (unsigned long long)cr->seq, cr->n_files, (unsigned long long)bytes);
    else
        profsvc_rmtree(dir);
    ps_wire_free(list);
    return rc;
}

/* Apply the batches of one wal reply. Returns 0, 1 when the replica must bootstrap (reason
 * set), or a PS_E* code for a failure worth retrying. */
static int apply_reply(profsvc_replica_t *r, const Persrv__WalReply *w, const char **reason,
                       ps_err *err)
{
    profsvc_store_t *st = r->ctx->store;
    uint64_t applied = profsvc_store_seq(st);
    if (w->gone) {
        *reason = "wal_gone";
        return 1;
    }
    if (w->primary_seq < applied) {
        ps_log(PS_LOG_WARN, "profile", "replica_ahead", "seq=%llu primary_seq=%llu",
               (unsigned long long)applied, (unsigned long long)w->primary_seq);
        *reason = "primary_behind";
        return 1;
    }
    for (size_t i = 0; i < w->n_batches; i++) {
        const Persrv__WalBatch *b = w->batches[i];
        if (b->seq != applied + 1) {
            ps_log(PS_LOG_WARN, "profile", "wal_gap", "seq=%llu batch_seq=%llu",
                   (unsigned long long)applied, (unsigned long long)b->seq);
            *reason = "wal_gap";
            return 1;
        }
        int rc = profsvc_store_apply(st, b->seq, b->data.data, b->data.len, err);
        if (rc == PS_EINVAL || rc == PS_ECORRUPT) {
            ps_log(PS_LOG_WARN, "profile", "apply_failed", "seq=%llu msg=\"%s\"",
                   (unsigned long long)b->seq, err->msg);
            *reason = "apply_failed";
            return 1;
        }
        if (rc) return rc;
        applied = profsvc_store_seq(st);
    }
    return 0;
}

static void *tail_main(void *arg)
{
    profsvc_replica_t *r = arg;
    profsvc_ctx *ctx = r->ctx;
    while (!atomic_load(&r->stop)) {
        ps_err err = {0, ""};
        const char *reason = NULL;
        Persrv__WalRequest wr = PERSRV__WAL_REQUEST__INIT;
        Persrv__Envelope e = PERSRV__ENVELOPE__INIT, *reply = NULL;
        wr.from_seq = profsvc_store_seq(ctx->store) + 1;
        e.body_case = PERSRV__ENVELOPE__BODY_WAL;
        e.wal = &wr;
        int rc = rpc(r, &e, PERSRV__ENVELOPE__BODY_WAL_REPLY, WAL_TIMEOUT_MS, 1, &reply, &err);
        if (rc) {
            if (!atomic_load(&r->stop) && may_warn(r))
                ps_log(PS_LOG_WARN, "profile", "wal_failed", "primary=%s code=%s msg=\"%s\"",
                       r->cfg.primary, ps_errname(rc), err.msg);
            pause_ms(r, RETRY_MS);
            continue;
        }
        size_t nb = reply->wal_reply->n_batches;
        uint64_t primary_seq = reply->wal_reply->primary_seq;
        rc = apply_reply(r, reply->wal_reply, &reason, &err);
        ps_wire_free(reply);
        if (rc == 1) {
            ps_err berr = {0, ""};
            int brc = bootstrap(r, reason, &berr);
            if (brc && !atomic_load(&r->stop)) {
                ps_log(PS_LOG_WARN, "profile", "bootstrap_failed", "code=%s msg=\"%s\"",
                       ps_errname(brc), berr.msg);
                pause_ms(r, BOOTSTRAP_RETRY_MS);
            }
            continue;
        }
        if (rc) {
            if (may_warn(r))
                ps_log(PS_LOG_ERROR, "profile", "apply_failed", "code=%s msg=\"%s\"",
                       ps_errname(rc), err.msg);
            pause_ms(r, RETRY_MS);
            continue;
        }
        uint64_t applied = profsvc_store_seq(ctx->store);
        atomic_store(&ctx->stats.primary_seq, primary_seq);
        if (applied >= primary_seq) atomic_store(&ctx->stats.caught_up_ns, profsvc_now_ns());
        if (applied >= primary_seq && !atomic_load(&ctx->ready)) {
            atomic_store(&ctx->ready, 1);
            ps_log(PS_LOG_INFO, "profile", "caught_up", "seq=%llu primary_seq=%llu",
                   (unsigned long long)applied, (unsigned long long)primary_seq);
        }
        if (nb == 0) pause_ms(r, r->cfg.poll_ms);
    }
    ps_zreq_free(r->zr);
    r->zr = NULL;
    return NULL;
}

profsvc_replica_t *profsvc_replica_start(profsvc_ctx *ctx, const profsvc_replica_cfg *cfg,
                                         ps_err *err)
{
    profsvc_replica_t *r = calloc(1, sizeof *r);
    if (!r || !(r->zctx = zmq_ctx_new())) {
        ps_err_set(err, PS_ENOMEM, "out of memory starting the tail thread");
        free(r);
        return NULL;
    }
    r->ctx = ctx;
    r->cfg = *cfg;
    atomic_store(&ctx->stats.caught_up_ns, profsvc_now_ns()); /* lag counts from the start */
    r->last_warn = -WARN_EVERY_S;
    /* The tail thread must not take the signals: the server loop's poll does. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int prc = pthread_create(&r->tid, NULL, tail_main, r);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (prc) {
        ps_err_set(err, PS_EINTERNAL, "starting the tail thread: %s", strerror(prc));
        zmq_ctx_term(r->zctx);
        free(r);
        return NULL;
    }
    ps_log(PS_LOG_INFO, "profile", "tail_started", "primary=%s seq=%llu", cfg->primary,
           (unsigned long long)profsvc_store_seq(ctx->store));
    return r;
}

void profsvc_replica_stop(profsvc_replica_t *r)
{
    if (!r) return;
    atomic_store(&r->stop, 1);
    pthread_join(r->tid, NULL);
    zmq_ctx_term(r->zctx);
    free(r);
}
