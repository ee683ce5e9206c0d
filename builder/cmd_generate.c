/*
 * cmd_generate.c — `builder generate`: parse the flags into a builder_gen_cfg and run the
 * generator (gen.c). Exit status 0 on success, 1 when generation fails, 2 on a usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "builder.h"
#include "gen.h"
#include "pipeline.h"
#include "ps/log.h"

static void usage(FILE *f)
{
    builder_gen_cfg d;
    builder_gen_defaults(&d);
    fprintf(
        f,
        "usage: builder generate --out DIR [options]\n"
        "\n"
        "Write a synthetic corpus that behaves like the paper's WeChat data, deterministically\n"
        "from a seed: DIR/corpus.jsonl, DIR/embeddings.npy (float32, stickers x dim) and\n"
        "DIR/clicks.tsv (user \\t query \\t sticker_id). DIR is created if missing.\n"
        "\n"
        "options:\n"
        "  --out DIR       output directory (required)\n"
        "  --seed S        PRNG seed, any unsigned 64-bit integer (default %llu)\n"
        "  --stickers N    stickers in the corpus (default %zu)\n"
        "  --dim D         embedding dimension (default %zu)\n"
        "  --users U       users in the click log (default %zu)\n"
        "  --clicks C      clicks in the log (default %zu)\n"
        "  --pairs P       distinct (user, query) pairs (default %zu)\n"
        "  --queries Q     distinct queries (default %zu)\n"
        "  --images N|P%%|all\n"
        "                  draw a %dx%d PNG for the first N stickers in corpus order, or for\n"
        "                  about P%% of them, those of highest latent quality (the ones clicks\n"
        "                  favour: at 25%%, half the clicked stickers), or all (default 0):\n"
        "                  DIR/images/<hex2>/<id>.png, named in the corpus's \"image\" relative\n"
        "                  to DIR/images (the broker's --image-root). ~0.4 ms and 4 KB of disk\n"
        "                  (one block) a picture: all 543,098 take ~4 min and 2.2 GB\n"
        "  --image-font F  font for the pictures' text (default %s)\n"
        "  --no-progress   no progress line, even on a terminal\n"
        "  -h, --help      show this help\n"
        "\n"
        "Constraints: users <= pairs, queries <= pairs <= users x queries, clicks >= pairs.\n"
        "--clicks 0 --pairs 0 --queries 0 writes an empty click log.\n",
        (unsigned long long)d.seed, d.nstickers, d.dim, d.nusers, d.nclicks, d.npairs, d.nqueries,
        BUILDER_IMAGE_SIDE, BUILDER_IMAGE_SIDE, BUILDER_IMAGE_FONT);
}

/* Strict unsigned parse: digits only, no sign, no overflow. */
static int parse_u64(const char *flag, const char *s, uint64_t *out)
{
    char *end;
    if (!s || !*s || *s < '0' || *s > '9') goto bad;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) goto bad;
    *out = (uint64_t)v;
    return 0;
bad:
    fprintf(stderr, "builder generate: %s expects an unsigned integer, got '%s'\n", flag,
            s ? s : "");
    return -1;
}

static int parse_size(const char *flag, const char *s, size_t *out)
{
    uint64_t v;
    if (parse_u64(flag, s, &v)) return -1;
    if (v > SIZE_MAX) {
        fprintf(stderr, "builder generate: %s value %s is too large\n", flag, s);
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

int builder_cmd_generate(int argc, char **argv)
{
    enum {
        O_SEED = 256,
        O_STICKERS,
        O_DIM,
        O_USERS,
        O_CLICKS,
        O_PAIRS,
        O_QUERIES,
        O_NOPROG,
        O_IMAGES,
        O_FONT
    };
    static const struct option opts[] = {
        {"out", required_argument, NULL, 'o'},
        {"seed", required_argument, NULL, O_SEED},
        {"stickers", required_argument, NULL, O_STICKERS},
        {"dim", required_argument, NULL, O_DIM},
        {"users", required_argument, NULL, O_USERS},
        {"clicks", required_argument, NULL, O_CLICKS},
        {"pairs", required_argument, NULL, O_PAIRS},
        {"queries", required_argument, NULL, O_QUERIES},
        {"no-progress", no_argument, NULL, O_NOPROG},
        {"images", required_argument, NULL, O_IMAGES},
        {"image-font", required_argument, NULL, O_FONT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    builder_gen_cfg cfg;
    const char *out = NULL;
    ps_err err;
    int c, bad = 0;

    builder_gen_defaults(&cfg);
    opterr = 0;
    optind = 0; /* full reset: the command may run more than once per process (tests) */
    while ((c = getopt_long(argc, argv, ":ho:", opts, NULL)) != -1) {
        const char *flag = optind > 0 && optind <= argc ? argv[optind - 1] : "option";
        switch (c) {
        case 'h':
            usage(stdout);
            return 0;
        case 'o':
            out = optarg;
            break;
        case O_SEED:
            bad |= parse_u64("--seed", optarg, &cfg.seed);
            break;
        case O_STICKERS:
            bad |= parse_size("--stickers", optarg, &cfg.nstickers);
            break;
        case O_DIM:
            bad |= parse_size("--dim", optarg, &cfg.dim);
            break;
        case O_USERS:
            bad |= parse_size("--users", optarg, &cfg.nusers);
            break;
        case O_CLICKS:
            bad |= parse_size("--clicks", optarg, &cfg.nclicks);
            break;
        case O_PAIRS:
            bad |= parse_size("--pairs", optarg, &cfg.npairs);
            break;
        case O_QUERIES:
            bad |= parse_size("--queries", optarg, &cfg.nqueries);
            break;
        case O_NOPROG:
            cfg.progress = 0;
            break;
        case O_IMAGES:
            if (optarg && strcmp(optarg, "all") == 0) {
                cfg.nimages = BUILDER_IMAGES_ALL;
            } else if (optarg && *optarg && optarg[strlen(optarg) - 1] == '%') {
                char *end;
                errno = 0;
                double p = strtod(optarg, &end);
                if (errno || end != optarg + strlen(optarg) - 1 || end == optarg || !(p >= 0) ||
                    p > 100) {
                    fprintf(stderr,
                            "builder generate: --images expects N, P%% (0..100) or all, "
                            "got '%s'\n",
                            optarg);
                    bad = 1;
                }
                cfg.image_share = p / 100;
            } else {
                bad |= parse_size("--images", optarg, &cfg.nimages);
            }
            break;
        case O_FONT:
            cfg.image_font = optarg;
            break;
        case ':':
            fprintf(stderr, "builder generate: %s needs a value\n", flag);
            bad = 1;
            break;
        default:
            fprintf(stderr, "builder generate: unknown option '%s'\n", flag);
            bad = 1;
            break;
        }
        if (bad) break;
    }
    if (!bad && optind < argc) {
        fprintf(stderr, "builder generate: unexpected argument '%s'\n", argv[optind]);
        bad = 1;
    }
    if (!bad && !out) {
        fprintf(stderr, "builder generate: --out DIR is required\n");
        bad = 1;
    }
    if (bad) {
        fprintf(stderr, "(builder generate --help shows the options)\n");
        return 2;
    }

    double t0 = builder_now();
    int rc = builder_generate(&cfg, out, &err);
    if (rc == PS_EINVAL) {
        /* A configuration the generator cannot satisfy is a usage error. */
        fprintf(stderr, "builder %s\n", err.msg); /* err.msg starts with "generate: " */
        return 2;
    }
    if (rc) {
        ps_log(PS_LOG_ERROR, "builder", "generate_failed", "code=%s msg=\"%s\"", ps_errname(rc),
               err.msg);
        return 1;
    }
    ps_log(PS_LOG_INFO, "builder", "generated",
           "out=%s seed=%llu stickers=%zu dim=%zu users=%zu clicks=%zu pairs=%zu queries=%zu "
           "first_images=%zu image_share=%g seconds=%.2f",
           out, (unsigned long long)cfg.seed, cfg.nstickers, cfg.dim, cfg.nusers, cfg.nclicks,
           cfg.npairs, cfg.nqueries, cfg.nimages < cfg.nstickers ? cfg.nimages : cfg.nstickers,
           cfg.image_share, builder_now() - t0);
    return 0;
}
