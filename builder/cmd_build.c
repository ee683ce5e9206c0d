/*
 * cmd_build.c — `builder build`: corpus + embeddings + training clicks -> an index directory.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <sys/stat.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "builder.h"
#include "pipeline.h"
#include "ps/hash.h"
#include "ps/log.h"
#include "ps/snapshot.h"
#include "ps/store.h"

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: builder build --corpus FILE.jsonl --embeddings FILE.npy --clicks FILE.tsv\n"
        "                     --out DIR [options]\n\n"
        "Builds an index directory (RocksDB) that `persrv search --index DIR` and the shards\n"
        "open. Clicks are the training click log (user\\tquery\\tsticker_id).\n\n"
        "options:\n" BUILDER_INPUT_USAGE
        "  --out DIR           index directory to create (must not exist or be empty)\n"
        "  --shards N          write N shard directories (DIR/shard-000 ...), a profiles\n"
        "                      directory (DIR/profiles) and DIR/cluster.json instead of one index\n"
        "  --version V         the build's snapshot version, 1..2^63-1 (default: the build\n"
        "                      time in unix seconds); `builder push` ships it to the cluster\n"
        "  --help              this text\n");
}

/* Stored text for the store writer: corpus fields, with the integrated queries. */
typedef struct textctx {
    const builder_corpus *c;
    const builder_built *b;
    const uint32_t *gdoc; /* shard doc -> doc of the whole index (NULL: identity) */
} textctx;

static const char *stored_text(void *ctx, uint32_t doc, int f, size_t *len)
{
    const textctx *t = ctx;
    uint32_t row = t->b->row_of_doc[t->gdoc ? t->gdoc[doc] : doc];
    if (f == PS_F_QUERIES) {
        *len = t->b->queries_len[row];
        return t->b->queries[row];
    }
    *len = t->c->recs[row].field_len[f];
    return t->c->recs[row].field[f];
}

/* The image reference for the store writer (stored, not indexed). */
static const char *stored_image(void *ctx, uint32_t doc, size_t *len)
{
    const textctx *t = ctx;
    uint32_t row = t->b->row_of_doc[t->gdoc ? t->gdoc[doc] : doc];
    *len = t->c->recs[row].image_len;
    return t->c->recs[row].image;
}

/* Create `dir` or accept it if empty. */
static int make_empty_dir(const char *dir, ps_err *err)
{
    if (mkdir(dir, 0755) == 0) return 0;
    if (errno != EEXIST) return ps_err_set(err, PS_EIO, "mkdir %s: %s", dir, strerror(errno));
    DIR *d = opendir(dir);
    if (!d) return ps_err_set(err, PS_EIO, "%s: %s", dir, strerror(errno));
    struct dirent *de;
    int empty = 1;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) empty = 0;
    closedir(d);
    return empty ? 0 : ps_err_set(err, PS_EEXIST, "%s exists and is not empty", dir);
}

/* DIR/shard-000 .. shard-(N-1): one index directory per jump-hash slice, each with the
 * corpus-wide statistics; DIR/profiles: the user profiles; DIR/cluster.json: the layout. */
static int write_sharded(const char *out, uint32_t nshards, const builder_corpus *c,
                         const builder_built *b, const char *info, const ps_snapshot *stamp,
                         ps_err *err)
{
    char path[4096];
    int rc = make_empty_dir(out, err);
    for (uint32_t i = 0; i < nshards && !rc; i++) {
        uint32_t *gdoc = NULL, *rows = NULL;
        ps_index_t *sub = ps_index_partition(b->ix, nshards, i, &gdoc, err);
        if (!sub) return err ? err->code : PS_ENOMEM;
        uint32_t n = ps_index_ndocs(sub);
        if (!(rows = malloc((n ? n : 1) * sizeof *rows))) {
            rc = ps_err_set(err, PS_ENOMEM, "out of memory writing shard %u", i);
        } else {
            for (uint32_t d = 0; d < n; d++) rows[d] = b->row_of_doc[gdoc[d]];
            textctx tc = {c, b, gdoc};
            ps_store_input in = {.ix = sub,
                                 .emb = c->emb.data,
                                 .emb_row = rows,
                                 .text = stored_text,
                                 .text_ctx = &tc,
                                 .image = stored_image,
                                 .info_json = info};
            snprintf(path, sizeof path, "%s/shard-%03u", out, i);
            rc = ps_store_write(path, &in, err);
            ps_snapshot snap = *stamp;
            snap.shard = i;
            snap.shards = nshards;
            snap.stickers = n;
            snap.files = NULL;
            if (!rc) rc = ps_snapshot_write(path, &snap, err);
            ps_snapshot_clear(&snap);
            if (!rc) printf("  %s: %u stickers\n", path, n);
        }
        free(rows);
        free(gdoc);
        ps_index_free(sub);
    }
    if (!rc && b->nusers) {
        ps_store_input in = {.nprofiles = b->nusers,
                             .users = (const char *const *)b->users,
                             .profiles = b->profiles};
        snprintf(path, sizeof path, "%s/profiles", out);
        rc = ps_store_write(path, &in, err);
    }
    if (!rc) {
        json_t *dirs = json_array();
        for (uint32_t i = 0; dirs && i < nshards; i++) {
            snprintf(path, sizeof path, "shard-%03u", i);
            json_array_append_new(dirs, json_string(path));
        }
        json_t *layout = json_pack("{s:i, s:s, s:I, s:s, s:I, s:s, s:o*}", "shards", (int)nshards,
                                   "partition", "jump_consistent_hash(sticker_id)", "stickers",
                                   (json_int_t)ps_index_ndocs(b->ix), "profiles", "profiles",
                                   "version", (json_int_t)stamp->version, "fingerprint",
                                   stamp->fingerprint, "shard_dirs", dirs);
        snprintf(path, sizeof path, "%s/cluster.json", out);
        if (!layout || json_dump_file(layout, path, JSON_INDENT(2)) != 0)
            rc = ps_err_set(err, PS_EIO, "writing %s", path);
        json_decref(layout);
    }
    return rc;
}

/* The build's fingerprint: a hash of what went in (each input file's size and crc32, and the
 * settings that change scores), so every shard of one build carries the same one and a
 * directory of another build is told apart even when the version numbers collide. */
static int fingerprint(const builder_inputs *inp, uint32_t nshards, char out[17], ps_err *err)
{
    char acc[1024];
    size_t n = 0;
    const char *files[3] = {inp->corpus, inp->npy, inp->clicks};
    for (int i = 0; i < 3; i++) {
        uint32_t crc = 0;
        uint64_t bytes = 0;
        if (files[i] && ps_file_crc32(files[i], &crc, &bytes, err)) return err ? err->code : PS_EIO;
        n += (size_t)snprintf(acc + n, sizeof acc - n, "%d:%llu:%u|", i, (unsigned long long)bytes,
                              crc);
    }
    const builder_cfg *c = &inp->cfg;
    snprintf(acc + n, sizeof acc - n, "base=%.17g w=%.17g,%.17g,%.17g kmax=%u seed=%llu shards=%u",
             c->utility.base, c->utility.w[0], c->utility.w[1], c->utility.w[2], (unsigned)c->kmax,
             (unsigned long long)c->seed, nshards);
    snprintf(out, 17, "%016llx", (unsigned long long)ps_hash_bytes(acc, strlen(acc)));
    return 0;
}

int builder_parse_utility_w(const char *s, double w[3])
{
    char *end;
    for (int i = 0; i < 3; i++) {
        w[i] = strtod(s, &end);
        if (end == s || !(w[i] >= 0) || (i < 2 && *end != ',') || (i == 2 && *end)) return -1;
        s = end + 1;
    }
    return 0;
}

int builder_cmd_build(int argc, char **argv)
{
    const char *out = NULL;
    uint32_t nshards = 0;
    uint64_t version = 0;
    builder_inputs inp = {0};
    builder_cfg_defaults(&inp.cfg);
    inp.cfg.progress = 1;
    static const struct option opts[] = {BUILDER_INPUT_OPTIONS,
                                         {"out", required_argument, 0, 'o'},
                                         {"shards", required_argument, 0, 'n'},
                                         {"version", required_argument, 0, 'V'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        int taken = builder_input_opt(ch, optarg, &inp, "build");
        if (taken < 0) return 2;
        if (taken) continue;
        switch (ch) {
        case 'o':
            out = optarg;
            break;
        case 'n':
            nshards = (uint32_t)strtoul(optarg, &end, 10);
            if (*end || nshards < 1 || nshards > 1024) {
                fprintf(stderr, "builder build: --shards must be 1..1024\n");
                return 2;
            }
            break;
        case 'V':
            errno = 0;
            version = strtoull(optarg, &end, 10);
            if (*end || optarg[0] < '1' || optarg[0] > '9' || errno || version > INT64_MAX) {
                fprintf(stderr, "builder build: --version must be an integer in 1..2^63-1\n");
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
    const char *corpus = inp.corpus, *npy = inp.npy, *clicks = inp.clicks;
    builder_cfg cfg = inp.cfg;
    if (!corpus || !npy || !out || optind != argc) {
        fprintf(stderr, "builder build: --corpus, --embeddings and --out are required\n");
        usage(stderr);
        return 2;
    }

    ps_err err = {0};
    builder_corpus c = {0};
    builder_built b = {0};
    ps_clicklog log = {0};
    int rc = 1;
    double t0 = builder_now();
    if (clicks && ps_clicklog_read(clicks, &log, &err)) goto fail;
    if (builder_corpus_load(corpus, npy, 1, &c, &err)) goto fail;
    double t_read = builder_now();
    if (builder_build_index(&c, &log, &cfg, 0, &b, &err)) goto fail;
    double t_index = builder_now();

    json_t *info =
        json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:s, s:s, s:s?, s:f, s:f}", "stickers",
                  (json_int_t)ps_index_ndocs(b.ix), "dim", (json_int_t)ps_index_dim(b.ix),
                  "postings", (json_int_t)ps_index_npostings(b.ix), "users", (json_int_t)b.nusers,
                  "clicks", (json_int_t)log.n, "unknown_clicks", (json_int_t)b.unknown_clicks,
                  "corpus", corpus, "embeddings", npy, "clicks_file", clicks, "utility_base",
                  cfg.utility.base, "read_seconds", t_read - t0);
    char *info_s = info ? json_dumps(info, JSON_COMPACT) : NULL;
    json_decref(info);
    ps_snapshot stamp = {.version = version ? version : (uint64_t)time(NULL)};
    if (fingerprint(&inp, nshards, stamp.fingerprint, &err)) {
        free(info_s);
        goto fail;
    }
    textctx tc = {&c, &b, NULL};
    ps_store_input in = {.ix = b.ix,
                         .emb = c.emb.data,
                         .emb_row = b.row_of_doc,
                         .text = stored_text,
                         .text_ctx = &tc,
                         .image = stored_image,
                         .nprofiles = b.nusers,
                         .users = (const char *const *)b.users,
                         .profiles = b.profiles,
                         .info_json = info_s};
    int wrc;
    if (nshards) {
        wrc = write_sharded(out, nshards, &c, &b, info_s, &stamp, &err);
    } else if (!(wrc = ps_store_write(out, &in, &err))) {
        /* a single-node index is shard 0 of 1: a shard can serve it too */
        stamp.shards = 1;
        stamp.stickers = ps_index_ndocs(b.ix);
        wrc = ps_snapshot_write(out, &stamp, &err);
        ps_snapshot_clear(&stamp);
    }
    free(info_s);
    if (wrc) goto fail;
    double t_end = builder_now();
    ps_log(PS_LOG_INFO, "builder", "build_done",
           "out=%s stickers=%u postings=%llu users=%zu clicks=%zu unknown_clicks=%zu "
           "read_s=%.2f index_s=%.2f write_s=%.2f total_s=%.2f",
           out, ps_index_ndocs(b.ix), (unsigned long long)ps_index_npostings(b.ix), b.nusers, log.n,
           b.unknown_clicks, t_read - t0, t_index - t_read, t_end - t_index, t_end - t0);
    printf("built %s: %u stickers, %llu postings, %zu user profiles in %.1f s (version %llu, "
           "fingerprint %s)\n",
           out, ps_index_ndocs(b.ix), (unsigned long long)ps_index_npostings(b.ix), b.nusers,
           t_end - t0, (unsigned long long)stamp.version, stamp.fingerprint);
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "builder build: %s\n", err.msg);
out:
    builder_built_free(&b);
    builder_corpus_free(&c);
    ps_clicklog_free(&log);
    return rc;
}
