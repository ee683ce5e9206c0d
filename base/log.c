/*
 * log.c — logfmt lines on stderr, written with one fputs so concurrent lines do not
 * interleave; stderr moved to a log file and back (ps_log_reopen).
 */
#include "ps/log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

_Atomic int ps_log_level = PS_LOG_INFO;

static pthread_mutex_t reopen_mu = PTHREAD_MUTEX_INITIALIZER;
static int orig_stderr = -1; /* a copy of the stderr the process started with, once moved */

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

int ps_log_parse_level(const char *s)
{
    for (int i = 0; i <= PS_LOG_OFF; i++)
        if (strcmp(s, level_names[i]) == 0) return i;
    return -1;
}

void ps__log(int level, const char *comp, const char *event, const char *fmt, ...)
{
    char line[1024];
    struct timespec ts;
    struct tm tm;
    size_t n;
    va_list ap;

    if (level < 0 || level > PS_LOG_ERROR) level = PS_LOG_ERROR;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = strftime(line, sizeof line, "ts=%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(line + n, sizeof line - n, ".%03ldZ level=%s comp=%s event=%s ",
                          ts.tv_nsec / 1000000L, level_names[level], comp, event);
    if (n < sizeof line) {
        va_start(ap, fmt);
        vsnprintf(line + n, sizeof line - n, fmt, ap);
        va_end(ap);
    }
    n = strlen(line);
    if (n + 1 >= sizeof line) n = sizeof line - 2;
    line[n] = '\n';
    line[n + 1] = '\0';
    fputs(line, stderr);
}

int ps_log_once_per_second(long long *last)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts); /* the clock of ts= above, not time()'s coarse one */
    if ((long long)ts.tv_sec == *last) return 0;
    *last = (long long)ts.tv_sec;
    return 1;
}

int ps_log_reopen(const char *path)
{
    int rc = 0, fd;
    pthread_mutex_lock(&reopen_mu);
    if (path) {
        /* keep the first stderr, so that an unset log-file can go back to it */
        if (orig_stderr < 0) orig_stderr = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    } else {
        fd = orig_stderr; /* -1: never moved, nothing to do */
    }
    if (fd >= 0) {
        fflush(stderr);
        rc = dup2(fd, STDERR_FILENO) < 0 ? -1 : 0;
        if (path) {
            int e = errno;
            close(fd);
            errno = e;
        }
    } else if (path) {
        rc = -1;
    }
    pthread_mutex_unlock(&reopen_mu);
    return rc;
}
