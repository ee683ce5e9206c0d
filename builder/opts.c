/*
 * opts.c — the options every pipeline subcommand reads its input with (builder.h):
 * --corpus, --embeddings, --clicks, --kmax, --seed, --utility-base, --utility-w, --reorder.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "builder.h"
#include "ps/fields.h"

int builder_input_opt(int ch, const char *arg, builder_inputs *in, const char *cmd)
{
    char *end = NULL;
    switch (ch) {
    case 'c':
        in->corpus = arg;
        return 1;
    case 'e':
        in->npy = arg;
        return 1;
    case 'l':
        in->clicks = arg;
        return 1;
    case 'k':
        in->cfg.kmax = (uint32_t)strtoul(arg, &end, 10);
        if (*end || in->cfg.kmax < 1 || in->cfg.kmax > PS_PROFILE_KMAX) {
            fprintf(stderr, "builder %s: --kmax must be 1..%d\n", cmd, PS_PROFILE_KMAX);
            return -1;
        }
        return 1;
    case 's':
        in->cfg.seed = strtoull(arg, &end, 10);
        if (*end) {
            fprintf(stderr, "builder %s: --seed must be an unsigned integer\n", cmd);
            return -1;
        }
        return 1;
    case 'b':
        in->cfg.utility.base = strtod(arg, &end);
        if (*end || !(in->cfg.utility.base >= 0)) {
            fprintf(stderr, "builder %s: --utility-base must be a number >= 0\n", cmd);
            return -1;
        }
        return 1;
    case 'w':
        if (builder_parse_utility_w(arg, in->cfg.utility.w)) {
            fprintf(stderr, "builder %s: --utility-w must be three numbers >= 0: A,B,C\n", cmd);
            return -1;
        }
        return 1;
    case 'r':
        if (builder_parse_fields(arg, &in->cfg.reorder_fields)) {
            fprintf(stderr,
                    "builder %s: --reorder must be field names (ocr, queries, keywords, "
                    "desc, emotion) separated by commas, or none\n",
                    cmd);
            return -1;
        }
        return 1;
    default:
        return 0;
    }
}

int builder_parse_fields(const char *s, uint32_t *mask)
{
    uint32_t m = 0;
    if (strcmp(s, "none") == 0) {
        *mask = 0;
        return 0;
    }
    for (;;) {
        const char *comma = strchr(s, ',');
        size_t len = comma ? (size_t)(comma - s) : strlen(s);
        char name[32];
        if (len == 0 || len >= sizeof name) return -1;
        memcpy(name, s, len);
        name[len] = '\0';
        int f = ps_field_lookup(name);
        if (f < 0) return -1;
        m |= 1u << f;
        if (!comma) break;
        s = comma + 1;
    }
    *mask = m;
    return 0;
}
