/*
 * builder.h — the subcommands of the offline `builder` CLI. Each takes the arguments after
 * its name (argv[0] is the subcommand) and returns a process exit status:
 * 0 success, 1 failure (reported on stderr), 2 usage error.
 */
#ifndef BUILDER_H
#define BUILDER_H

#include "pipeline.h"

int builder_cmd_generate(int argc, char **argv);
int builder_cmd_build(int argc, char **argv);
int builder_cmd_enrich(int argc, char **argv); /* cmd_enrich.c */
int builder_cmd_eval(int argc, char **argv);
int builder_cmd_push_profiles(int argc, char **argv);
int builder_cmd_push(int argc, char **argv);     /* cmd_push_build.c */
int builder_cmd_activate(int argc, char **argv); /* cmd_push_build.c */
int builder_cmd_keys(int argc, char **argv);     /* cmd_keys.c */

/* ---- opts.c: the input options shared by build and push-profiles ---------------------------- */

typedef struct builder_inputs {
    const char *corpus, *npy, *clicks;
    builder_cfg cfg;
} builder_inputs;

/* getopt_long entries of the input options (their short codes are c e l k s b w r). */
#define BUILDER_INPUT_OPTIONS                                                                      \
    {"corpus", required_argument, 0, 'c'}, {"embeddings", required_argument, 0, 'e'},              \
        {"clicks", required_argument, 0, 'l'}, {"kmax", required_argument, 0, 'k'},                \
        {"seed", required_argument, 0, 's'}, {"utility-base", required_argument, 0, 'b'},          \
        {"utility-w", required_argument, 0, 'w'},                                                  \
    {                                                                                              \
        "reorder", required_argument, 0, 'r'                                                       \
    }

#define BUILDER_INPUT_USAGE                                                                        \
    "  --corpus FILE       stickers, JSON Lines (id, ocr, keywords, desc, emotion, queries)\n"     \
    "  --embeddings FILE   float32 .npy matrix, one row per corpus line\n"                         \
    "  --clicks FILE       training click log (TSV); omit for no clicks\n"                         \
    "  --kmax N            style centroids per user, 1..5 (default 5)\n"                           \
    "  --seed N            k-means seed (default 42)\n"                                            \
    "  --utility-base X    base added to zero utility components (default 1)\n"                    \
    "  --utility-w A,B,C   weights of (Pop, Cross, QA) (default 1,1,1)\n"                          \
    "  --reorder FIELDS    put stickers of equal utility that share terms of these fields\n"       \
    "                      side by side (faster search, same answers): field names\n"              \
    "                      separated by commas, or none (default ocr,queries)\n"

/* Take option ch (getopt's return) with argument arg if it is an input option: 1 taken, 0 not
 * an input option, -1 a bad value (reported on stderr as "builder CMD: ..."). */
int builder_input_opt(int ch, const char *arg, builder_inputs *in, const char *cmd);

/* Parse "A,B,C" (three numbers >= 0) into w; -1 if malformed. */
int builder_parse_utility_w(const char *s, double w[3]);

/* Parse a comma-separated list of field names (ps_field_lookup), or "none", into a mask of
 * bit f per field f; -1 if a name is unknown or the list is empty. */
int builder_parse_fields(const char *s, uint32_t *mask);

#endif
