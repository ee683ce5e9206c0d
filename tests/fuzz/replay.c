/*
 * replay.c — runs a fuzz target over every file of a seed-corpus directory, so ctest
 * exercises each parser with the seeds (and any crash reproducer saved there).
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv)
{
    size_t nrun = 0;
    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 2;
    }
    DIR *d = opendir(argv[1]);
    if (!d) {
        perror(argv[1]);
        return 1;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        char path[4096];
        if (de->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", argv[1], de->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        fseek(f, 0, SEEK_END);
        long sz = ftell(f);
        fseek(f, 0, SEEK_SET);
        uint8_t *buf = malloc(sz > 0 ? (size_t)sz : 1);
        if (!buf || fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
            fprintf(stderr, "%s: read failed\n", path);
            fclose(f);
            free(buf);
            closedir(d);
            return 1;
        }
        fclose(f);
        LLVMFuzzerTestOneInput(buf, (size_t)sz);
        free(buf);
        nrun++;
    }
    closedir(d);
    printf("replayed %zu inputs from %s\n", nrun, argv[1]);
    return nrun > 0 ? 0 : 1;
}
