/*
 * log.h — structured logging: one logfmt line per call on stderr,
 *   ts=2026-11-24T12:00:00.123Z level=info comp=builder event=built docs=543098
 * The level is checked before anything is formatted; never log in a hot loop.
 */
#ifndef PS_LOG_H
#define PS_LOG_H

enum { PS_LOG_DEBUG = 0, PS_LOG_INFO = 1, PS_LOG_WARN = 2, PS_LOG_ERROR = 3, PS_LOG_OFF = 4 };

extern int ps_log_level; /* messages below this level are dropped; default PS_LOG_INFO */

/* Parse "debug|info|warn|error|off"; returns -1 when unknown. */
int ps_log_parse_level(const char *s);

/* comp: component ("builder"), event: what happened ("build_done"), fmt: "k=v k=v". */
#define ps_log(level, comp, event, ...)                                                            \
    do {                                                                                           \
        if ((level) >= ps_log_level) ps__log((level), (comp), (event), __VA_ARGS__);               \
    } while (0)

/* For a line a peer can cause at will (a refused handshake, an oversized request): 1 when it
 * may be written now — the first in this second of the log's own clock (its ts=), *last the
 * second of the previous one — else 0. Not thread safe: one *last per thread. */
int ps_log_once_per_second(long long *last);

void ps__log(int level, const char *comp, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
