/*
 * reload.c — SIGHUP in a daemon (ps/config.h, ps_daemon_reload_start): the handler writes a
 * byte to a self-pipe; this file's thread reads it, re-reads the configuration, reopens the
 * log file, applies what can change while the daemon runs and logs one line saying what
 * changed and what waits for a restart.
 *
 * What changes live is the log — its level (ps_log_level is atomic) and its file (one dup2,
 * ps_log_reopen) — and the settings a daemon registers with ps_daemon_reload_live (the broker's
 * max-k and max-query-bytes: its lanes load them per request). Every other setting was copied
 * into the daemon's own structures at start — caps into the ZeroMQ server and the admin port —
 * so a new value there is reported as restart_needed.
 *
 * SIGHUP is blocked in every other thread of the daemon (ps_daemon_reload_start runs before
 * the daemon starts any), so the handler runs on this thread and no other thread's system call
 * sees EINTR because of it. The thread owns copies of what it compares: `running`, the
 * configuration parsed as the daemon started (what it runs with), and the log settings applied
 * last. It never touches the daemon's own ps_cfg_t, which main frees on its way out while this
 * thread may still be waiting for a signal.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ps/config.h"
#include "ps/log.h"

/* The settings this file puts into effect without a restart. */
static const char *const live_opts[] = {"log-level", "log-file"};
#define NLIVE (sizeof live_opts / sizeof live_opts[0])

typedef struct reload_state {
    const char *prog;
    const ps_cfg_opt *table;
    size_t n;
    int argc;
    char **argv;
    ps_cfg_t *running; /* as parsed at start */
    char *log_file;    /* applied now: malloc'd path, NULL = stderr */
    char *log_level;   /* applied now: malloc'd name */
} reload_state;

static int hup_pipe[2] = {-1, -1};

/* The daemon's own live settings (ps_daemon_reload_live), registered before the first SIGHUP. */
#define MAX_LIVE 16
static struct live_reg {
    const char *name;
    ps_reload_apply_fn apply;
    void *arg;
    char *applied; /* the value in effect (malloc'd text), NULL until the first reload */
    int have;      /* applied holds it */
} live_regs[MAX_LIVE];
static size_t nlive_regs;
static pthread_mutex_t live_mu = PTHREAD_MUTEX_INITIALIZER; /* registering vs a reload */

int ps_daemon_reload_live(const char *name, ps_reload_apply_fn apply, void *arg)
{
    pthread_mutex_lock(&live_mu);
    int rc = nlive_regs == MAX_LIVE ? PS_ETOOBIG : 0;
    if (!rc) live_regs[nlive_regs++] = (struct live_reg){.name = name, .apply = apply, .arg = arg};
    pthread_mutex_unlock(&live_mu);
    return rc;
}

static struct live_reg *live_reg_of(const char *name)
{
    for (size_t i = 0; i < nlive_regs; i++)
        if (!strcmp(live_regs[i].name, name)) return &live_regs[i];
    return NULL;
}

static void on_hup(int sig)
{
    (void)sig;
    int e = errno;
    ssize_t w = write(hup_pipe[1], "h", 1); /* full pipe: a reload is pending anyway */
    (void)w;
    errno = e;
}

static int same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

static int is_live(const char *name)
{
    for (size_t i = 0; i < NLIVE; i++)
        if (!strcmp(live_opts[i], name)) return 1;
    return 0;
}

/* Append `name` to the comma-separated list in buf (cap bytes). */
static void list_add(char *buf, size_t cap, const char *name)
{
    size_t len = strlen(buf);
    snprintf(buf + len, cap - len, "%s%s", len ? "," : "", name);
}

/* Replace *slot with a copy of v (NULL stays NULL). 0, or -1 when out of memory. */
static int set_copy(char **slot, const char *v)
{
    char *d = NULL;
    if (v && !(d = strdup(v))) return -1;
    free(*slot);
    *slot = d;
    return 0;
}

static ps_cfg_t *parse_again(const reload_state *r, ps_err *err)
{
    ps_cfg_t *c = ps_cfg_new(r->prog, NULL, r->table, r->n, err);
    if (!c) return NULL;
    int rc = ps_cfg_parse(c, r->argc, r->argv, NULL, err);
    if (rc) {
        if (rc > 0) ps_err_set(err, PS_EINVAL, "--help or --version on the command line");
        ps_cfg_free(c);
        return NULL;
    }
    return c;
}

static void reload_locked(reload_state *r);

static void reload(reload_state *r)
{
    pthread_mutex_lock(&live_mu);
    reload_locked(r);
    pthread_mutex_unlock(&live_mu);
}

static void reload_locked(reload_state *r)
{
    ps_err err = {0, ""};
    ps_cfg_t *next = parse_again(r, &err);
    int level = -1;
    if (next && (level = ps_log_parse_level(ps_cfg_str(next, "log-level"))) < 0) {
        ps_err_set(&err, PS_EINVAL, "log-level: '%s' is not debug, info, warn, error or off",
                   ps_cfg_str(next, "log-level"));
        ps_cfg_free(next);
        next = NULL;
    }

    /* The log file first, so that this reload's line lands in the new file. */
    const char *want_file = next ? ps_cfg_str(next, "log-file") : r->log_file;
    char file_err[512] = "";
    if ((want_file || r->log_file) && ps_log_reopen(want_file))
        snprintf(file_err, sizeof file_err, "log-file %s: %s", want_file ? want_file : "(stderr)",
                 strerror(errno));
    if (!next) {
        ps_log(PS_LOG_ERROR, r->prog, "reload_failed", "msg=\"%s\" log_level=%s log_file=%s%s%s%s",
               err.msg, r->log_level, r->log_file ? r->log_file : "-",
               file_err[0] ? " log_file_error=\"" : "", file_err, file_err[0] ? "\"" : "");
        return;
    }

    char changed[512] = "", restart[1024] = "";
    if (!same(r->log_level, ps_cfg_str(next, "log-level")))
        list_add(changed, sizeof changed, "log-level");
    if (!file_err[0] && !same(r->log_file, want_file))
        list_add(changed, sizeof changed, "log-file");
    for (size_t i = 0; i < r->n; i++) {
        const char *name = r->table[i].name;
        struct live_reg *lr = live_reg_of(name);
        if (lr) { /* the daemon's own: applied when it differs from the value in effect */
            const char *now = lr->have ? lr->applied : ps_cfg_text(r->running, name);
            if (!same(now, ps_cfg_text(next, name))) {
                lr->apply(lr->arg, next);
                if (set_copy(&lr->applied, ps_cfg_text(next, name)) == 0) lr->have = 1;
                list_add(changed, sizeof changed, name);
            }
        } else if (!is_live(name) &&
                   !same(ps_cfg_text(r->running, name), ps_cfg_text(next, name))) {
            list_add(restart, sizeof restart, name);
        }
    }
    atomic_store(&ps_log_level, level);
    if (set_copy(&r->log_level, ps_cfg_str(next, "log-level")) ||
        (!file_err[0] && set_copy(&r->log_file, want_file))) {
        ps_log(PS_LOG_ERROR, r->prog, "reload_failed", "msg=\"out of memory\"");
        ps_cfg_free(next);
        return;
    }
    /* the operator asked for this line: written at any level but off */
    if (level < PS_LOG_OFF)
        ps__log(file_err[0] ? PS_LOG_ERROR : PS_LOG_INFO, r->prog, "reload",
                "changed=%s restart_needed=%s log_level=%s log_file=%s%s%s%s",
                changed[0] ? changed : "-", restart[0] ? restart : "-", r->log_level,
                r->log_file ? r->log_file : "-", file_err[0] ? " log_file_error=\"" : "", file_err,
                file_err[0] ? "\"" : "");
    ps_cfg_free(next);
}

static void *reload_main(void *arg)
{
    reload_state *r = arg;
    sigset_t hup;
    sigemptyset(&hup);
    sigaddset(&hup, SIGHUP);
    pthread_sigmask(SIG_UNBLOCK, &hup, NULL); /* the one thread that takes SIGHUP */
    for (;;) {
        struct pollfd pfd = {.fd = hup_pipe[0], .events = POLLIN};
        if (poll(&pfd, 1, -1) < 0) {
            if (errno == EINTR) continue;
            ps_log(PS_LOG_ERROR, r->prog, "reload_stopped", "msg=\"poll: %s\"", strerror(errno));
            return NULL;
        }
        char buf[64];
        while (read(hup_pipe[0], buf, sizeof buf) > 0) {
        } /* signals that came together make one reload */
        reload(r);
    }
    return NULL;
}

int ps_daemon_reload_start(const char *prog, const ps_cfg_opt *table, size_t n, int argc,
                           char **argv, ps_err *err)
{
    static reload_state st; /* lives until exit, with the thread */
    if (hup_pipe[0] >= 0) return ps_err_set(err, PS_EINVAL, "ps_daemon_reload_start: twice");
    st = (reload_state){.prog = prog, .table = table, .n = n, .argc = argc, .argv = argv};
    if (!(st.running = parse_again(&st, err))) return err ? err->code : PS_EINVAL;
    if (set_copy(&st.log_level, ps_cfg_str(st.running, "log-level")) ||
        set_copy(&st.log_file, ps_cfg_str(st.running, "log-file")))
        return ps_err_set(err, PS_ENOMEM, "out of memory");
    if (pipe(hup_pipe)) return ps_err_set(err, PS_EIO, "reload pipe: %s", strerror(errno));
    for (int i = 0; i < 2; i++)
        if (fcntl(hup_pipe[i], F_SETFL, O_NONBLOCK) || fcntl(hup_pipe[i], F_SETFD, FD_CLOEXEC))
            return ps_err_set(err, PS_EIO, "reload pipe: %s", strerror(errno));
    /* SIGHUP is blocked in the calling thread, and so in every thread the daemon starts
     * after it (they inherit the mask), and taken by this file's thread alone: no other
     * thread's system call is ever interrupted by it (EINTR). The handler first, so that a
     * SIGHUP waiting while the mask is set up is caught, not fatal. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_hup;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGHUP, &sa, NULL);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old); /* the thread starts with every signal blocked */
    pthread_t t;
    int rc = pthread_create(&t, NULL, reload_main, &st);
    sigaddset(&old, SIGHUP);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) return ps_err_set(err, PS_EIO, "reload thread: %s", strerror(rc));
    pthread_detach(t);
    return 0;
}
