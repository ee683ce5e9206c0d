/*
 * log.h — structured logging: one logfmt line per call on stderr,
 *   ts=2026-11-24T12:00:00.123Z level=info comp=builder event=built docs=543098
 * The level is checked before anything is formatted; never log in a hot loop.
 * A daemon may send stderr to a file (ps_log_reopen) and change the level while it runs (a
 * SIGHUP, ps/config.h): both are safe while other threads log.
 */
#ifndef PS_LOG_H
#define PS_LOG_H

#include <stdatomic.h>

enum { PS_LOG_DEBUG = 0, PS_LOG_INFO = 1, PS_LOG_WARN = 2, PS_LOG_ERROR = 3, PS_LOG_OFF = 4 };

/* Messages below this level are dropped; default PS_LOG_INFO. Atomic: a reload may set it
 * while other threads log (a plain `ps_log_level = PS_LOG_WARN;` is fine). */
extern _Atomic int ps_log_level;

/* Parse "debug|info|warn|error|off"; returns -1 when unknown. */
int ps_log_parse_level(const char *s);

/* comp: component ("builder"), event: what happened ("build_done"), fmt: "k=v k=v". */
#define ps_log(level, comp, event, ...)                                                            \
    do {                                                                                           \
        if ((level) >= atomic_load_explicit(&ps_log_level, memory_order_relaxed))                  \
            ps__log((level), (comp), (event), __VA_ARGS__);                                        \
    } while (0)

/* For a line a peer can cause at will (a refused handshake, an oversized request): 1 when it
 * may be written now — the first in this second of the log's own clock (its ts=), *last the
 * second of the previous one — else 0. Not thread safe: one *last per thread. */
int ps_log_once_per_second(long long *last);

/* Send stderr — the log, and anything else the process writes there — to `path`, opened for
 * appending (created 0644 when missing), or back to the process's original stderr when path is
 * NULL. Opening the same path again after the file was renamed starts a new file: log rotation
 * (mv the file away, then SIGHUP the daemon). The switch is one dup2 onto fd 2, so a line
 * another thread is writing lands whole in the old file or in the new one. Returns 0, or -1
 * with errno (stderr is left where it was). */
int ps_log_reopen(const char *path);

void ps__log(int level, const char *comp, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
