/*
 * config.c — daemon configuration from one table (ps/config.h): defaults, a `key = value`
 * file, PERSRV_* environment variables and flags, applied in that order so the later source
 * wins; --help and the startup log line are generated from the same table.
 */
#include <unistd.h>
#include "ps/config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ps/file.h"
#include "ps/log.h"
#include "ps/version.h"

extern char **environ;

enum { SRC_UNSET = 0, SRC_DEFAULT, SRC_FILE, SRC_ENV, SRC_FLAG };
static const char *const src_names[] = {"unset", "default", "file", "env", "flag"};

typedef struct cfg_val {
    int src;
    char *text; /* the value as given (malloc'd), NULL when unset */
    union {
        int64_t i;
        uint64_t u;
        double d;
        int b;
    } v;
    size_t file_line; /* line that set it in the file, 0 if none */
} cfg_val;

struct ps_cfg {
    const char *prog, *about;
    const ps_cfg_opt *opt;
    size_t n;
    cfg_val *val;
    char *config_file; /* path read, or NULL */
};

static const char *const type_names[] = {"string", "int", "uint", "double", "bool"};

/* ---- names ------------------------------------------------------------------------------ */

/* Index of the option whose name equals s[0..len), '_' matching '-'; -1 if none. */
static int find_opt(const ps_cfg_t *c, const char *s, size_t len)
{
    for (size_t i = 0; i < c->n; i++) {
        const char *nm = c->opt[i].name;
        if (strlen(nm) != len) continue;
        size_t j = 0;
        while (j < len && (s[j] == nm[j] || (s[j] == '_' && nm[j] == '-'))) j++;
        if (j == len) return (int)i;
    }
    return -1;
}

/* "max-frame" -> "PERSRV_MAX_FRAME" into buf. */
static void env_name(const char *name, char *buf, size_t cap)
{
    size_t n = (size_t)snprintf(buf, cap, "PERSRV_");
    for (; *name && n + 1 < cap; name++)
        buf[n++] = *name == '-' ? '_' : (char)toupper((unsigned char)*name);
    buf[n] = '\0';
}

static int valid_name(const char *s)
{
    if (!s || !islower((unsigned char)*s)) return 0;
    for (; *s; s++)
        if (!islower((unsigned char)*s) && !isdigit((unsigned char)*s) && *s != '-') return 0;
    return 1;
}

/* ---- values ----------------------------------------------------------------------------- */

/* Parse `text` for option o into *out. `where` names the source ("--workers",
 * "PERSRV_WORKERS", "shard.conf:3: workers") for the message. */
static int parse_value(const ps_cfg_opt *o, const char *text, cfg_val *out, const char *where,
                       ps_err *err)
{
    char *end = NULL;
    size_t len = strlen(text);
    if (len > PS_CFG_MAX_VALUE)
        return ps_err_set(err, PS_ETOOBIG, "%s: value is %zu bytes, more than the %d allowed",
                          where, len, PS_CFG_MAX_VALUE);
    double num = 0;
    switch (o->type) {
    case PS_CFG_STRING:
        return 0;
    case PS_CFG_INT:
        errno = 0;
        out->v.i = strtoll(text, &end, 10);
        if (!len || isspace((unsigned char)text[0]) || *end || errno)
            return ps_err_set(err, PS_EINVAL, "%s: '%s' is not an integer", where, text);
        num = (double)out->v.i;
        break;
    case PS_CFG_UINT:
        errno = 0;
        out->v.u = strtoull(text, &end, 10);
        if (!len || !isdigit((unsigned char)text[0]) || *end || errno)
            return ps_err_set(err, PS_EINVAL, "%s: '%s' is not an unsigned integer", where, text);
        num = (double)out->v.u;
        break;
    case PS_CFG_DOUBLE:
        errno = 0;
        out->v.d = strtod(text, &end);
        if (!len || isspace((unsigned char)text[0]) || *end || errno || !isfinite(out->v.d))
            return ps_err_set(err, PS_EINVAL, "%s: '%s' is not a finite number", where, text);
        num = out->v.d;
        break;
    case PS_CFG_BOOL:
        if (!strcmp(text, "true") || !strcmp(text, "yes") || !strcmp(text, "on") ||
            !strcmp(text, "1"))
            out->v.b = 1;
        else if (!strcmp(text, "false") || !strcmp(text, "no") || !strcmp(text, "off") ||
                 !strcmp(text, "0"))
            out->v.b = 0;
        else
            return ps_err_set(err, PS_EINVAL, "%s: '%s' is not a bool (true or false)", where,
                              text);
        return 0;
    }
    if ((o->min != 0 || o->max != 0) && (num < o->min || num > o->max))
        return ps_err_set(err, PS_EINVAL, "%s: %s is out of range %.17g..%.17g", where, text,
                          o->min, o->max);
    return 0;
}

/* Set option i from `text` (source src); the previous value is replaced. */
static int set_value(ps_cfg_t *c, size_t i, const char *text, int src, const char *where,
                     ps_err *err)
{
    cfg_val nv = {0};
    int rc = parse_value(&c->opt[i], text, &nv, where, err);
    if (rc) return rc;
    if (!(nv.text = strdup(text))) return ps_err_set(err, PS_ENOMEM, "out of memory");
    nv.src = src;
    free(c->val[i].text);
    c->val[i] = nv;
    return 0;
}

/* ---- object ----------------------------------------------------------------------------- */

ps_cfg_t *ps_cfg_new(const char *prog, const char *about, const ps_cfg_opt *table, size_t n,
                     ps_err *err)
{
    if (!prog || !table || n == 0 || n > PS_CFG_MAX_OPTS) {
        ps_err_set(err, PS_EINVAL, "ps_cfg_new: need a program name and 1..%d options",
                   PS_CFG_MAX_OPTS);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        if (!valid_name(table[i].name) || !strcmp(table[i].name, "help") ||
            !strcmp(table[i].name, "config") || !strcmp(table[i].name, "version") ||
            (unsigned)table[i].type > PS_CFG_BOOL) {
            ps_err_set(err, PS_EINVAL, "ps_cfg_new: option %zu: bad name '%s' or type", i,
                       table[i].name ? table[i].name : "(null)");
            return NULL;
        }
        for (size_t j = 0; j < i; j++)
            if (!strcmp(table[i].name, table[j].name)) {
                ps_err_set(err, PS_EINVAL, "ps_cfg_new: option '%s' is repeated", table[i].name);
                return NULL;
            }
    }
    ps_cfg_t *c = calloc(1, sizeof *c);
    if (!c || !(c->val = calloc(n, sizeof *c->val))) {
        free(c);
        ps_err_set(err, PS_ENOMEM, "out of memory");
        return NULL;
    }
    c->prog = prog;
    c->about = about;
    c->opt = table;
    c->n = n;
    for (size_t i = 0; i < n; i++) {
        if (!table[i].def) continue;
        char where[128];
        snprintf(where, sizeof where, "default of %s", table[i].name);
        if (set_value(c, i, table[i].def, SRC_DEFAULT, where, err)) {
            ps_cfg_free(c);
            return NULL;
        }
    }
    return c;
}

void ps_cfg_free(ps_cfg_t *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->n; i++) free(c->val[i].text);
    free(c->val);
    free(c->config_file);
    free(c);
}

/* ---- sources ---------------------------------------------------------------------------- */

static char *trim(char *s)
{
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
    return s;
}

static int read_file(ps_cfg_t *c, const char *path, ps_err *err)
{
    FILE *f = fopen(path, "r");
    if (!f) return ps_err_set(err, PS_EIO, "config file %s: %s", path, strerror(errno));
    char line[PS_CFG_MAX_LINE + 2];
    size_t lineno = 0;
    int rc = 0;
    while (!rc && fgets(line, sizeof line, f)) {
        lineno++;
        size_t len = strlen(line);
        if (len && line[len - 1] == '\n')
            line[--len] = '\0';
        else if (!feof(f)) {
            rc = ps_err_set(err, PS_ETOOBIG, "%s:%zu: line longer than %d bytes", path, lineno,
                            PS_CFG_MAX_LINE);
            break;
        }
        if (len && line[len - 1] == '\r') line[--len] = '\0';
        /* A comment starts with '#' at the start of the line or after whitespace. */
        for (size_t i = 0; i < len; i++)
            if (line[i] == '#' && (i == 0 || isspace((unsigned char)line[i - 1]))) {
                line[i] = '\0';
                break;
            }
        char *s = trim(line);
        if (!*s) continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            rc = ps_err_set(err, PS_EINVAL, "%s:%zu: expected 'key = value', got '%s'", path,
                            lineno, s);
            break;
        }
        *eq = '\0';
        char *key = trim(s), *val = trim(eq + 1);
        size_t vlen = strlen(val);
        if (vlen >= 2 && val[0] == '"' && val[vlen - 1] == '"') {
            val[vlen - 1] = '\0';
            val++;
        }
        int i = find_opt(c, key, strlen(key));
        if (i < 0) {
            rc = ps_err_set(err, PS_EINVAL, "%s:%zu: unknown key '%s'", path, lineno, key);
            break;
        }
        if (c->val[i].src == SRC_FILE) {
            rc = ps_err_set(err, PS_EINVAL, "%s:%zu: key '%s' repeated (first set on line %zu)",
                            path, lineno, c->opt[i].name, c->val[i].file_line);
            break;
        }
        char where[PS_CFG_MAX_LINE + 64];
        snprintf(where, sizeof where, "%s:%zu: %s", path, lineno, c->opt[i].name);
        rc = set_value(c, (size_t)i, val, SRC_FILE, where, err);
        c->val[i].file_line = lineno;
    }
    if (!rc && ferror(f)) rc = ps_err_set(err, PS_EIO, "config file %s: read error", path);
    fclose(f);
    return rc;
}

static const char *env_get(char **env, const char *name)
{
    size_t n = strlen(name);
    for (; env && *env; env++)
        if (!strncmp(*env, name, n) && (*env)[n] == '=') return *env + n + 1;
    return NULL;
}

int ps_cfg_parse(ps_cfg_t *c, int argc, char **argv, char **env, ps_err *err)
{
    if (!c || argc < 0 || (argc > 0 && !argv))
        return ps_err_set(err, PS_EINVAL, "ps_cfg_parse: bad arguments");
    if (!env) env = environ;
    const char *file = env_get(env, "PERSRV_CONFIG");
    int rc;

    int version = 0;
    for (int a = 1; a < argc; a++) {
        if (!strcmp(argv[a], "--help") || !strcmp(argv[a], "-h")) return PS_CFG_HELP;
        if (!strcmp(argv[a], "--version")) version = 1;
    }
    if (version) return PS_CFG_VERSION;

    /* Pass 1: --config, and the shape of every flag. */
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (strncmp(arg, "--", 2) != 0 || !arg[2])
            return ps_err_set(err, PS_EINVAL, "unexpected argument '%s' (see --help)", arg);
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        if (nlen == 6 && !strncmp(name, "config", 6)) {
            if (eq)
                file = eq + 1;
            else if (a + 1 < argc)
                file = argv[++a];
            else
                return ps_err_set(err, PS_EINVAL, "--config needs a value");
            continue;
        }
        int i = find_opt(c, name, nlen);
        if (i < 0 && nlen > 3 && !strncmp(name, "no-", 3) && !eq) {
            i = find_opt(c, name + 3, nlen - 3);
            if (i >= 0 && c->opt[i].type == PS_CFG_BOOL) continue;
            i = -1;
        }
        if (i < 0 || memchr(name, '_', nlen))
            return ps_err_set(err, PS_EINVAL, "unknown flag --%.*s (see --help)", (int)nlen, name);
        if (c->opt[i].type != PS_CFG_BOOL && !eq) {
            if (a + 1 >= argc)
                return ps_err_set(err, PS_EINVAL, "--%s needs a value", c->opt[i].name);
            a++;
        }
    }

    if (file) {
        if (!(c->config_file = strdup(file))) return ps_err_set(err, PS_ENOMEM, "out of memory");
        if ((rc = read_file(c, file, err))) return rc;
    }

    for (size_t i = 0; i < c->n; i++) {
        char name[160];
        env_name(c->opt[i].name, name, sizeof name);
        const char *v = env_get(env, name);
        if (v && (rc = set_value(c, i, v, SRC_ENV, name, err))) return rc;
    }

    /* Pass 2: apply the flags (their shape was checked above). */
    for (int a = 1; a < argc; a++) {
        const char *name = argv[a] + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        if (nlen == 6 && !strncmp(name, "config", 6)) {
            if (!eq) a++;
            continue;
        }
        int i = find_opt(c, name, nlen);
        const char *val;
        if (i < 0) { /* --no-NAME of a bool */
            i = find_opt(c, name + 3, nlen - 3);
            val = "false";
        } else if (eq) {
            val = eq + 1;
        } else if (c->opt[i].type == PS_CFG_BOOL) {
            val = "true";
        } else {
            val = argv[++a];
        }
        char where[160];
        snprintf(where, sizeof where, "--%s", c->opt[i].name);
        if ((rc = set_value(c, (size_t)i, val, SRC_FLAG, where, err))) return rc;
    }

    for (size_t i = 0; i < c->n; i++)
        if ((c->opt[i].flags & PS_CFG_REQUIRED) && c->val[i].src == SRC_UNSET) {
            char name[160];
            env_name(c->opt[i].name, name, sizeof name);
            return ps_err_set(err, PS_EINVAL,
                              "%s is required (--%s, %s or '%s = ...' in the config file)",
                              c->opt[i].name, c->opt[i].name, name, c->opt[i].name);
        }
    return 0;
}

/* ---- output ----------------------------------------------------------------------------- */

void ps_cfg_help(const ps_cfg_t *c, FILE *f)
{
    fprintf(f, "usage: %s [--config FILE] [--NAME VALUE]...\n\n", c->prog);
    if (c->about) fprintf(f, "%s\n\n", c->about);
    fprintf(f, "Settings come from flags, PERSRV_<NAME> environment variables and a config file\n"
               "of 'name = value' lines ('#' comments), in that order of precedence.\n\n"
               "options:\n"
               "  --config FILE  read settings from FILE (env PERSRV_CONFIG)\n"
               "  --help         this text\n"
               "  --version      print the version, commit and build type, and exit\n");
    for (size_t i = 0; i < c->n; i++) {
        const ps_cfg_opt *o = &c->opt[i];
        char env[160];
        env_name(o->name, env, sizeof env);
        fprintf(f, "  --%s %s\n      %s\n      (%s", o->name,
                o->type == PS_CFG_BOOL ? "[true|false]" : "VALUE", o->help ? o->help : "",
                type_names[o->type]);
        if (o->flags & PS_CFG_REQUIRED)
            fprintf(f, ", required");
        else if (o->def)
            fprintf(f, ", default %s", *o->def ? o->def : "\"\"");
        if (o->min != 0 || o->max != 0) fprintf(f, ", %.17g..%.17g", o->min, o->max);
        fprintf(f, "; env %s)\n", env);
    }
}

/* Append ` key=value` to buf (logfmt: quoted when the value has spaces, quotes or '='). */
static size_t put_kv(char *buf, size_t n, size_t cap, const char *k, const char *v)
{
    if (n >= cap) return n;
    int quote = !*v || strpbrk(v, " \t\"=\\") != NULL;
    n += (size_t)snprintf(buf + n, cap - n, " %s=%s", k, quote ? "\"" : "");
    for (; *v && n + 2 < cap; v++) {
        if (*v == '"' || *v == '\\') buf[n++] = '\\';
        buf[n++] = (*v == '\n' || *v == '\t') ? ' ' : *v;
    }
    if (quote && n + 1 < cap) buf[n++] = '"';
    if (n < cap) buf[n] = '\0';
    return n;
}

void ps_cfg_log(const ps_cfg_t *c, const char *comp)
{
    if (PS_LOG_INFO < ps_log_level) return;
    char line[900];
    size_t n = 0;
    line[0] = '\0';
    if (c->config_file) n = put_kv(line, n, sizeof line, "config_file", c->config_file);
    for (size_t i = 0; i < c->n; i++) {
        char key[80];
        snprintf(key, sizeof key, "%s", c->opt[i].name);
        for (char *p = key; *p; p++)
            if (*p == '-') *p = '_';
        /* secrets are never logged: a set token shows as "<set>" */
        const char *v = c->val[i].text ? c->val[i].text : "";
        size_t nl = strlen(c->opt[i].name);
        if (*v && nl >= 5 && strcmp(c->opt[i].name + nl - 5, "token") == 0) v = "<set>";
        n = put_kv(line, n, sizeof line, key, v);
    }
    ps_log(PS_LOG_INFO, comp, "config", "%s", n ? line + 1 : "");
}

/* ---- getters ---------------------------------------------------------------------------- */

static const cfg_val *get(const ps_cfg_t *c, const char *name, ps_cfg_type type)
{
    if (!c || !name) return NULL;
    int i = find_opt(c, name, strlen(name));
    if (i < 0 || c->opt[i].type != type) return NULL;
    return &c->val[i];
}

const char *ps_cfg_str(const ps_cfg_t *c, const char *name)
{
    const cfg_val *v = get(c, name, PS_CFG_STRING);
    return v ? v->text : NULL;
}

int64_t ps_cfg_int(const ps_cfg_t *c, const char *name)
{
    const cfg_val *v = get(c, name, PS_CFG_INT);
    return v && v->text ? v->v.i : 0;
}

uint64_t ps_cfg_uint(const ps_cfg_t *c, const char *name)
{
    const cfg_val *v = get(c, name, PS_CFG_UINT);
    return v && v->text ? v->v.u : 0;
}

double ps_cfg_double(const ps_cfg_t *c, const char *name)
{
    const cfg_val *v = get(c, name, PS_CFG_DOUBLE);
    return v && v->text ? v->v.d : 0;
}

int ps_cfg_bool(const ps_cfg_t *c, const char *name)
{
    const cfg_val *v = get(c, name, PS_CFG_BOOL);
    return v && v->text ? v->v.b : 0;
}

const char *ps_cfg_text(const ps_cfg_t *c, const char *name)
{
    if (!c || !name) return NULL;
    int i = find_opt(c, name, strlen(name));
    return i < 0 ? NULL : c->val[i].text;
}

const char *ps_cfg_source(const ps_cfg_t *c, const char *name)
{
    if (!c || !name) return src_names[SRC_UNSET];
    int i = find_opt(c, name, strlen(name));
    return i < 0 ? src_names[SRC_UNSET] : src_names[c->val[i].src];
}

ps_cfg_t *ps_cfg_daemon(const char *prog, const char *about, const ps_cfg_opt *table, size_t n,
                        int argc, char **argv, int *exit_code)
{
    ps_err err = {0, ""};
    ps_cfg_t *c = ps_cfg_new(prog, about, table, n, &err);
    int rc = c ? ps_cfg_parse(c, argc, argv, NULL, &err) : err.code;
    if (c && (rc == PS_CFG_HELP || rc == PS_CFG_VERSION)) {
        if (rc == PS_CFG_HELP) {
            ps_cfg_help(c, stdout);
        } else {
            char name[128];
            snprintf(name, sizeof name, "persrv-%s", prog);
            ps_version_print(name, stdout);
        }
        ps_cfg_free(c);
        *exit_code = 0;
        return NULL;
    }
    int level = rc ? 0 : ps_log_parse_level(ps_cfg_str(c, "log-level"));
    if (!rc && level < 0)
        rc = ps_err_set(&err, PS_EINVAL, "log-level: '%s' is not debug, info, warn, error or off",
                        ps_cfg_str(c, "log-level"));
    const char *log_file = rc ? NULL : ps_cfg_str(c, "log-file");
    if (log_file && ps_log_reopen(log_file))
        rc = ps_err_set(&err, PS_EINVAL, "log-file %s: %s", log_file, strerror(errno));
    if (rc) {
        fprintf(stderr, "%s: %s\n", prog, err.msg);
        ps_cfg_free(c);
        *exit_code = 2;
        return NULL;
    }
    ps_log_level = level;
    ps_cfg_log(c, prog);
    if (ps_daemon_reload_start(prog, table, n, argc, argv, &err)) {
        ps_log(PS_LOG_ERROR, prog, "start_failed", "msg=\"%s\"", err.msg);
        ps_cfg_free(c);
        *exit_code = 1;
        return NULL;
    }
    return c;
}

static int stop_pipe[2] = {-1, -1};

static void on_stop_signal(int sig)
{
    (void)sig;
    int e = errno;
    ssize_t n = write(stop_pipe[1], "x", 1);
    (void)n;
    errno = e;
}

int ps_daemon_stop_fd(void)
{
    if (stop_pipe[0] >= 0) return stop_pipe[0];
    if (pipe(stop_pipe)) return -1;
    for (int i = 0; i < 2; i++)
        if (fcntl(stop_pipe[i], F_SETFL, O_NONBLOCK) || fcntl(stop_pipe[i], F_SETFD, FD_CLOEXEC))
            return -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return stop_pipe[0];
}

int ps_write_pid_file(const char *path)
{
    char pid[32];
    snprintf(pid, sizeof pid, "%ld", (long)getpid());
    return ps_write_file_atomic(path, pid);
}
