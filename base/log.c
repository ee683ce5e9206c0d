/*
 * log.c — logfmt lines on stderr, written with one fputs so concurrent lines do not
 * interleave.
 */
#include "ps/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

int ps_log_level = PS_LOG_INFO;

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
