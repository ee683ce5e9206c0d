/*
 * fuzz_tables.c — fuzz target for the builder's file inputs that a user hands over: the
 * embeddings .npy (ps_npy_read) and the click log TSV (ps_clicklog_read). The first input byte
 * picks the reader, the rest is the file (written to an anonymous memory file, read through
 * /proc/self/fd).
 *
 * Any input must give 0 or a negative PS_E* code with a message, never a crash or a leak. A
 * matrix that reads has rows x cols floats; a click log that reads has every index inside its
 * tables and every user and query non-empty.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create */
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ps/corpus.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int fd = memfd_create("fuzz_tables", MFD_CLOEXEC);
    if (fd < 0) abort();
    size_t left = size - 1;
    for (const uint8_t *p = data + 1; left;) {
        ssize_t w = write(fd, p, left);
        if (w <= 0) abort();
        p += w;
        left -= (size_t)w;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ps_err err = {0, ""};
    int rc;
    if (data[0] & 1) {
        ps_matrix m = {0};
        rc = ps_npy_read(path, &m, &err);
        if (!rc && ((m.rows && m.cols && !m.data) || m.rows * m.cols * sizeof(float) > size))
            abort();
        if (!rc && m.rows && m.cols) { /* every value readable */
            volatile float sink = 0;
            for (size_t i = 0; i < m.rows * m.cols; i++) sink += m.data[i];
            (void)sink;
        }
        ps_matrix_free(&m);
    } else {
        ps_clicklog log = {0};
        rc = ps_clicklog_read(path, &log, &err);
        for (size_t i = 0; !rc && i < log.n; i++)
            if (log.user[i] >= log.nusers || log.query[i] >= log.nqueries ||
                !log.users[log.user[i]][0] || !log.queries[log.query[i]][0])
                abort();
        ps_clicklog_free(&log);
    }
    if (rc && (rc > 0 || err.code != rc || err.msg[0] == '\0')) abort();
    close(fd);
    return 0;
}
