/*
 * config.h — the configuration of a daemon (DESIGN §3.1, STYLE 8): one table of
 * {name, type, default, help} drives everything a user can set:
 *
 *   --help                    text generated from the table (ps_cfg_help)
 *   --version                 one line: "persrv-<prog> 0.1.0 (commit 9b0e0ed, RelWithDebInfo)"
 *   --config FILE             a `key = value` file, one setting per line; '#' starts a comment
 *                             (at the start of a line or after whitespace); blank lines ignored;
 *                             a value may be wrapped in double quotes; PERSRV_CONFIG also names it
 *   --name value, --name=value  flags; a bool flag alone (--name) means true, --no-name false
 *   PERSRV_<NAME>             environment variables: the name upper-cased, '-' as '_'
 *
 * Precedence: flag > environment > file > default. In a file, `max-frame` and `max_frame` name
 * the same key. Unknown flags, unknown file keys, repeated file keys, malformed or out-of-range
 * values and missing required settings are errors that name the flag, variable or file:line at
 * fault. Unknown PERSRV_* variables are ignored: one environment serves every daemon.
 *
 * Caps: a config file line is at most PS_CFG_MAX_LINE bytes, a value at most PS_CFG_MAX_VALUE.
 */
#ifndef PS_CONFIG_H
#define PS_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ps/err.h"
#include "ps/file.h"

#define PS_CFG_MAX_LINE  4096 /* bytes of one config file line */
#define PS_CFG_MAX_VALUE 4096 /* bytes of one value */
#define PS_CFG_MAX_OPTS  128  /* entries of one table */

typedef enum ps_cfg_type {
    PS_CFG_STRING = 0,
    PS_CFG_INT,    /* int64_t, decimal */
    PS_CFG_UINT,   /* uint64_t, decimal, no sign */
    PS_CFG_DOUBLE, /* finite */
    PS_CFG_BOOL    /* true|false|yes|no|on|off|1|0 */
} ps_cfg_type;

enum {
    PS_CFG_REQUIRED = 1 << 0, /* must be set by a flag, the environment or the file */
};

/* One setting. Numbers are checked against [min, max] unless min == max == 0. */
typedef struct ps_cfg_opt {
    const char *name; /* lowercase, digits and '-': "max-frame" */
    ps_cfg_type type;
    const char *def;  /* default, written as in a config file; NULL = unset */
    const char *help; /* one line for --help */
    int flags;        /* PS_CFG_REQUIRED */
    double min, max;  /* range of a number */
} ps_cfg_opt;

typedef struct ps_cfg ps_cfg_t;

/* A configuration for `prog` (used in --help and messages) over the n entries of `table`
 * (borrowed; must outlive the result). `about` is a paragraph for --help (may be NULL).
 * Defaults are applied here. Errors: PS_EINVAL for a bad table (bad name, repeated name, a
 * name the parser keeps for itself: help, config, version;
 * default that does not parse, n > PS_CFG_MAX_OPTS), PS_ENOMEM. Caller owns the result
 * (ps_cfg_free). */
ps_cfg_t *ps_cfg_new(const char *prog, const char *about, const ps_cfg_opt *table, size_t n,
                     ps_err *err);
void ps_cfg_free(ps_cfg_t *c);

/* What ps_cfg_parse returns, besides 0 and errors, for the flags that only print. */
enum { PS_CFG_HELP = 1, PS_CFG_VERSION = 2 };

/* Apply the config file, environment and flags (argv[1..argc), argv[0] is skipped), in
 * precedence order. env: a NULL-terminated "NAME=value" array (NULL = the process
 * environment). Returns 0, PS_CFG_HELP (1) when --help was given or PS_CFG_VERSION (2) when
 * --version was (nothing else is checked; print ps_cfg_help or ps_version_print and exit 0;
 * --help wins when both are given), or a negative PS_E* code: PS_EINVAL (unknown flag or key, bad
 * value, missing required setting, stray argument), PS_EIO (config file unreadable),
 * PS_ETOOBIG (line or value over its cap), PS_ENOMEM. Call once per ps_cfg_t. */
int ps_cfg_parse(ps_cfg_t *c, int argc, char **argv, char **env, ps_err *err);

/* Write the --help text: usage, the about paragraph, then each option with its type,
 * default, environment variable and help. */
void ps_cfg_help(const ps_cfg_t *c, FILE *f);

/* Log the effective configuration as one logfmt line (event=config), every setting with its
 * value, plus config_file when one was read. A setting whose name ends in "token" is a secret:
 * it is logged as "<set>". */
void ps_cfg_log(const ps_cfg_t *c, const char *comp);

/* Values by name. The name must be in the table with that type (a programming error
 * otherwise: NULL / 0 is returned). Strings are borrowed, valid until ps_cfg_free; NULL when
 * unset. */
const char *ps_cfg_str(const ps_cfg_t *c, const char *name);
int64_t ps_cfg_int(const ps_cfg_t *c, const char *name);
uint64_t ps_cfg_uint(const ps_cfg_t *c, const char *name);
double ps_cfg_double(const ps_cfg_t *c, const char *name);
int ps_cfg_bool(const ps_cfg_t *c, const char *name);
/* The value of `name` as given (in the file, the variable or the flag; the default's text),
 * whatever its type; NULL when unset or not in the table. Borrowed, valid until ps_cfg_free. */
const char *ps_cfg_text(const ps_cfg_t *c, const char *name);
/* Where the value of `name` came from: "default", "file", "env", "flag", or "unset". */
const char *ps_cfg_source(const ps_cfg_t *c, const char *name);

/* The settings every daemon has for its log, in its table (ps_cfg_daemon reads them):
 *   log-level  debug, info, warn, error or off
 *   log-file   append the log (all of stderr) to this file instead; unset: stderr
 * Both can change without a restart: SIGHUP re-reads them (ps_cfg_daemon). */
/* clang-format off */
#define PS_LOG_CFG_OPTS                                                                            \
    {"log-level", PS_CFG_STRING, "info", "debug, info, warn, error or off (SIGHUP re-reads it "   \
     "from the config file)", 0, 0, 0},                                                            \
    {"log-file", PS_CFG_STRING, NULL, "append log lines (all of stderr) to this file instead of " \
     "stderr; SIGHUP reopens it, so a rotated (renamed) file is followed by a new one", 0, 0, 0}
/* clang-format on */

/* The start of every daemon's main: build the table, parse flags / environment / file, print
 * --help or --version (as "persrv-<prog>"), set ps_log_level from the "log-level" setting
 * (which the table must have), send the log to "log-file" when the table has it and it is set,
 * log the effective configuration, and start the reload thread (ps_daemon_reload_start).
 * Returns the config (caller frees with ps_cfg_free), or NULL with *exit_code set: 0 after
 * --help or --version, 2 after a configuration error (an unwritable log file too) printed on
 * stderr as "<prog>: <message>", 1 when the reload thread cannot start. */
ps_cfg_t *ps_cfg_daemon(const char *prog, const char *about, const ps_cfg_opt *table, size_t n,
                        int argc, char **argv, int *exit_code);

/* SIGHUP: reopen the log file and re-read the configuration (reload.c). The signal handler
 * only writes a byte to a self-pipe (non-blocking, close-on-exec); a thread of the runtime's
 * own reads it. SIGHUP is blocked in the calling thread and so in every thread started after
 * it: call this before the daemon starts any (ps_cfg_daemon does), and only the reload thread
 * ever takes the signal. Per signal, the thread:
 *   1. parses the same table again from the same flags, environment and config file (the
 *      file is read anew: precedence is unchanged, so a flag still beats the file);
 *   2. reopens "log-file" (the new value when it changed; unset again: back to stderr), so a
 *      log moved away by logrotate is followed by a new file;
 *   3. applies "log-level";
 *   4. logs one line, event=reload (at any log level but off): changed= the settings
 *      applied now (log-level, log-file, those registered with ps_daemon_reload_live),
 *      restart_needed= every other setting whose value
 *      differs from the one the daemon started with (it takes effect at the next start only),
 *      and the log level and file.
 * A configuration that no longer parses changes nothing (the log file is still reopened):
 * event=reload_failed names what is wrong. Called once, by ps_cfg_daemon, with the table and
 * arguments it was given (borrowed: they must live until exit, as main's argv and a static
 * table do); the thread runs until the process exits. 0, or a negative PS_E* code (err set). */
int ps_daemon_reload_start(const char *prog, const ps_cfg_opt *table, size_t n, int argc,
                           char **argv, ps_err *err);

/* A setting of the daemon's own that takes effect without a restart: on a reload where `name`
 * (a setting of the table) differs from the value in effect, the reload thread calls
 * apply(arg, cfg) with the new configuration — from that thread, so apply stores into what the
 * readers load per request (atomics) — and the reload line lists it as changed. Register before
 * the first SIGHUP can arrive (right after ps_cfg_daemon). 0, or PS_ETOOBIG past 16. */
typedef void (*ps_reload_apply_fn)(void *arg, const ps_cfg_t *cfg);
int ps_daemon_reload_live(const char *name, ps_reload_apply_fn apply, void *arg);

/* The daemons' stop signal: SIGTERM and SIGINT write a byte to a self-pipe whose read end this
 * returns (non-blocking, close-on-exec; it lives until exit, and later calls return the same
 * fd); SIGPIPE is ignored. -1 with errno when the pipe cannot be made. */
int ps_daemon_stop_fd(void);

/* Write this process's id to path (ps_write_file_atomic). 0, or -1 with errno. */
int ps_write_pid_file(const char *path);

#endif
