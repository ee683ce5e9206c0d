/*
 * main.c — `builder`, the offline pipeline as one CLI: dispatches to a subcommand.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "builder.h"
#include "ps/version.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} commands[] = {
    {"generate", builder_cmd_generate, "generate a synthetic corpus, embeddings and click log"},
    {"enrich", builder_cmd_enrich, "sticker images -> corpus (OCR, VLM text, embeddings)"},
    {"build", builder_cmd_build, "build an index directory (RocksDB) from corpus + clicks"},
    {"eval", builder_cmd_eval, "evaluate the paper's baselines on a seeded 80/20 split"},
    {"push-profiles", builder_cmd_push_profiles,
     "load the offline profiles and click histories into the profile service's primary"},
    {"push", builder_cmd_push, "push a build into the running cluster and switch to it"},
    {"activate", builder_cmd_activate, "switch the cluster to a version every replica holds"},
    {"keys", builder_cmd_keys, "make CURVE key pairs for the cluster's ZeroMQ traffic"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: builder COMMAND [options]   (builder COMMAND --help for its options)\n"
               "       builder --version           version, commit and build type\n\n"
               "commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-14s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(stdout);
        return 0;
    }
    /* only before a command: `builder build --version V` names a snapshot version */
    if (strcmp(argv[1], "--version") == 0) {
        ps_version_print("persrv-builder", stdout);
        return 0;
    }
    /* `enrich` runs its own OCR threads, and Tesseract's LSTM its own OpenMP loops with a
     * thread count of their own: together they fight for the cores (on 2 cores OCR took 5x
     * the wall time). Only OMP_THREAD_LIMIT caps those loops, and libgomp reads it once, as
     * it is loaded, before main: so it is set and the process started again. A limit the
     * caller set is kept. */
    if (strcmp(argv[1], "enrich") == 0 && !getenv("OMP_THREAD_LIMIT")) {
        setenv("OMP_THREAD_LIMIT", "1", 1);
        execv("/proc/self/exe", argv);
        /* no /proc: run on with OpenMP's own threads (slower, not wrong) */
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "builder: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
