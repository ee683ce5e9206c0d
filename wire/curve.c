/*
 * curve.c — CURVE keys, allow-lists, known servers and socket options (ps/curve.h); the
 * daemons' ZAP handler is runtime/curve_zap.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "ps/curve.h"
#include "ps/alloc.h"

#define NAME_MAX_LEN 64

typedef struct allow_entry {
    char key[PS_CURVE_Z85_LEN + 1];
    char name[NAME_MAX_LEN + 1];
} allow_entry;

typedef struct known_entry {
    char *endpoint;
    char key[PS_CURVE_Z85_LEN + 1];
} known_entry;

struct ps_curve {
    ps_curve_keypair kp;
    int serves;         /* an allow-list was given */
    allow_entry *allow; /* sorted by key */
    size_t nallow;
    known_entry *known;
    size_t nknown;
    char any[PS_CURVE_Z85_LEN + 1]; /* the "*" line's key, "" when none */
    unsigned key_mode;              /* the key file's permission bits */
};

static const char z85_chars[] =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

int ps_curve_z85_valid(const char *s, size_t n)
{
    if (n != PS_CURVE_Z85_LEN) return 0;
    for (size_t i = 0; i < n; i++)
        if (!s[i] || !strchr(z85_chars, s[i])) return 0;
    uint8_t bin[32];
    char tmp[PS_CURVE_Z85_LEN + 1];
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    return zmq_z85_decode(bin, tmp) != NULL; /* also rejects a value over 2^32 per group */
}

int ps_curve_keypair_new(ps_curve_keypair *kp, ps_err *err)
{
    if (!zmq_has("curve") || zmq_curve_keypair(kp->pub, kp->sec))
        return ps_err_set(err, PS_EUNAVAIL, "this libzmq has no CURVE support");
    return 0;
}

static int valid_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > NAME_MAX_LEN || name[0] == '.') return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return 0;
    }
    return 1;
}

/* Write text to path, created exclusively with mode `mode`, synced. */
static int write_new(const char *path, const char *text, mode_t mode, ps_err *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        return ps_err_set(err, errno == EEXIST ? PS_EEXIST : PS_EIO, "%s: %s", path,
                          errno == EEXIST ? "exists (a key is never overwritten)"
                                          : strerror(errno));
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += (size_t)w;
    }
    int bad = off < len || fsync(fd) != 0;
    int e = errno;
    if (close(fd)) bad = 1;
    if (bad) {
        unlink(path);
        return ps_err_set(err, PS_EIO, "%s: %s", path, strerror(e));
    }
    return 0;
}

int ps_curve_keypair_save(const ps_curve_keypair *kp, const char *dir, const char *name,
                          ps_err *err)
{
    if (!valid_name(name))
        return ps_err_set(err, PS_EINVAL,
                          "key name '%s': 1..%d letters, digits, '-', '_' or '.' (not first)", name,
                          NAME_MAX_LEN);
    char path[4096], text[512];
    int n = snprintf(path, sizeof path, "%s/%s.key", dir, name);
    if (n < 0 || (size_t)n >= sizeof path)
        return ps_err_set(err, PS_EINVAL, "key directory path too long");
    snprintf(text, sizeof text,
             "# PerSRV CURVE key pair '%s' (builder keys). Secret: keep it on the daemon that\n"
             "# uses it, mode 0600; never commit it. Its public half is %s.pub.\n"
             "public = %s\nsecret = %s\n",
             name, name, kp->pub, kp->sec);
    int rc = write_new(path, text, 0600, err);
    if (rc) return rc;
    snprintf(path, sizeof path, "%s/%s.pub", dir, name);
    snprintf(text, sizeof text, "%s %s\n", kp->pub, name);
    return write_new(path, text, 0644, err);
}

/* Lines of a small text file: calls fn(line, lineno, arg) for each line that is not blank
 * and not a comment, with surrounding whitespace trimmed. */
typedef int (*line_fn)(char *line, int lineno, void *arg, ps_err *err);

static int each_line(const char *path, line_fn fn, void *arg, ps_err *err)
{
    FILE *f = fopen(path, "re");
    if (!f) return ps_err_set(err, PS_EIO, "%s: %s", path, strerror(errno));
    char buf[4096];
    int lineno = 0, rc = 0;
    while (!rc && fgets(buf, sizeof buf, f)) {
        lineno++;
        size_t n = strlen(buf);
        if (n == sizeof buf - 1 && buf[n - 1] != '\n') {
            rc = ps_err_set(err, PS_EPARSE, "%s:%d: line too long", path, lineno);
            break;
        }
        while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' ||
                     buf[n - 1] == '\t'))
            buf[--n] = '\0';
        char *s = buf;
        while (*s == ' ' || *s == '\t') s++;
        /* '#' starts a comment, but also 1 Z85 key in 85: a line whose first word is a key
         * is not a comment */
        if (!*s || (*s == '#' && !ps_curve_z85_valid(s, strcspn(s, " \t")))) continue;
        rc = fn(s, lineno, arg, err);
        if (rc) ps_err_prefix(err, "%s:%d", path, lineno);
    }
    if (!rc && ferror(f)) rc = ps_err_set(err, PS_EIO, "%s: read error", path);
    fclose(f);
    return rc;
}

/* "word = <Z85>": copies the key into out when line starts with word. 1 matched, 0 not,
 * negative on a malformed value. */
static int keyval(const char *line, const char *word, char *out, ps_err *err)
{
    size_t wl = strlen(word);
    if (strncmp(line, word, wl) != 0) return 0;
    const char *s = line + wl;
    while (*s == ' ' || *s == '\t') s++;
    if (*s != '=') return 0;
    s++;
    while (*s == ' ' || *s == '\t') s++;
    if (!ps_curve_z85_valid(s, strlen(s)))
        return ps_err_set(err, PS_EPARSE, "%s: not a 40-character Z85 key", word);
    memcpy(out, s, PS_CURVE_Z85_LEN + 1);
    return 1;
}

static int key_line(char *line, int lineno, void *arg, ps_err *err)
{
    (void)lineno;
    ps_curve_keypair *kp = arg;
    int r = keyval(line, "public", kp->pub, err);
    if (r == 0) r = keyval(line, "secret", kp->sec, err);
    if (r == 0) return ps_err_set(err, PS_EPARSE, "expected 'public = KEY' or 'secret = KEY'");
    return r < 0 ? r : 0;
}

int ps_curve_keypair_load(const char *path, ps_curve_keypair *kp, ps_err *err)
{
    memset(kp, 0, sizeof *kp);
    int rc = each_line(path, key_line, kp, err);
    if (rc) return rc;
    if (!kp->pub[0] || !kp->sec[0])
        return ps_err_set(err, PS_EPARSE, "%s: needs both 'public = KEY' and 'secret = KEY'", path);
    char derived[PS_CURVE_Z85_LEN + 1];
    if (zmq_curve_public(derived, kp->sec) || strcmp(derived, kp->pub) != 0)
        return ps_err_set(err, PS_EINVAL, "%s: the secret key does not match the public key", path);
    return 0;
}

static int allow_line(char *line, int lineno, void *arg, ps_err *err)
{
    (void)lineno;
    ps_curve_t *c = arg;
    size_t kl = strcspn(line, " \t");
    if (!ps_curve_z85_valid(line, kl))
        return ps_err_set(err, PS_EPARSE, "expected '<40-character Z85 public key> [name]'");
    if (c->nallow >= PS_CURVE_MAX_ALLOW)
        return ps_err_set(err, PS_EINVAL, "more than %d keys", PS_CURVE_MAX_ALLOW);
    allow_entry *e = &c->allow[c->nallow++];
    memcpy(e->key, line, kl);
    e->key[kl] = '\0';
    const char *name = line + kl;
    while (*name == ' ' || *name == '\t') name++;
    snprintf(e->name, sizeof e->name, "%s", *name ? name : "-");
    for (char *p = e->name; *p; p++) /* logged: keep it one printable word */
        if (*p <= ' ' || *p == '"' || *p == '\\' || *p == 0x7f) *p = '_';
    return 0;
}

static int known_line(char *line, int lineno, void *arg, ps_err *err)
{
    (void)lineno;
    ps_curve_t *c = arg;
    size_t el = strcspn(line, " \t");
    const char *key = line + el;
    while (*key == ' ' || *key == '\t') key++;
    if (el == 0 || !ps_curve_z85_valid(key, strlen(key)))
        return ps_err_set(err, PS_EPARSE, "expected '<endpoint> <40-character Z85 public key>'");
    line[el] = '\0';
    if (strcmp(line, "*") == 0) {
        memcpy(c->any, key, PS_CURVE_Z85_LEN + 1);
        return 0;
    }
    if (c->nknown >= PS_CURVE_MAX_KNOWN)
        return ps_err_set(err, PS_EINVAL, "more than %d servers", PS_CURVE_MAX_KNOWN);
    known_entry *e = &c->known[c->nknown];
    if (!(e->endpoint = ps_strdup(line))) return ps_err_set(err, PS_ENOMEM, "out of memory");
    memcpy(e->key, key, PS_CURVE_Z85_LEN + 1);
    c->nknown++;
    return 0;
}

static int cmp_allow(const void *a, const void *b)
{
    return strcmp(((const allow_entry *)a)->key, ((const allow_entry *)b)->key);
}

void ps_curve_free(ps_curve_t *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->nknown; i++) ps_free(c->known[i].endpoint);
    ps_free(c->known);
    ps_free(c->allow);
    ps_free(c);
}

ps_curve_t *ps_curve_load(const char *key_file, const char *allow_file, const char *servers_file,
                          ps_err *err)
{
    ps_err_clear(err);
    if (!key_file) {
        if (allow_file || servers_file)
            ps_err_set(err, PS_EINVAL, "curve-%s is set but curve-key is not (no key pair)",
                       allow_file ? "allow" : "servers");
        return NULL;
    }
    ps_curve_t *c = ps_calloc(1, sizeof *c);
    if (!c) {
        ps_err_set(err, PS_ENOMEM, "out of memory");
        return NULL;
    }
    int rc = ps_curve_keypair_load(key_file, &c->kp, err);
    struct stat st;
    if (!rc && stat(key_file, &st) == 0) c->key_mode = (unsigned)(st.st_mode & 0777);
    if (!rc && allow_file) {
        c->serves = 1;
        if (!(c->allow = ps_calloc(PS_CURVE_MAX_ALLOW, sizeof *c->allow)))
            rc = ps_err_set(err, PS_ENOMEM, "out of memory");
        else
            rc = each_line(allow_file, allow_line, c, err);
        if (!rc) qsort(c->allow, c->nallow, sizeof *c->allow, cmp_allow);
    }
    if (!rc && servers_file) {
        if (!(c->known = ps_calloc(PS_CURVE_MAX_KNOWN, sizeof *c->known)))
            rc = ps_err_set(err, PS_ENOMEM, "out of memory");
        else
            rc = each_line(servers_file, known_line, c, err);
    }
    if (rc) {
        ps_curve_free(c);
        return NULL;
    }
    return c;
}

ps_curve_t *ps_curve_from_env(ps_err *err)
{
    const char *k = getenv("PERSRV_CURVE_KEY"), *a = getenv("PERSRV_CURVE_ALLOW"),
               *s = getenv("PERSRV_CURVE_SERVERS");
    return ps_curve_load(k && *k ? k : NULL, a && *a ? a : NULL, s && *s ? s : NULL, err);
}

static pthread_once_t env_once = PTHREAD_ONCE_INIT;
static ps_curve_t *env_curve;
static ps_err env_err;

static void env_load(void)
{
    env_curve = ps_curve_from_env(&env_err);
}

int ps_curve_env_client(void *sock, const char *endpoint, ps_err *err)
{
    pthread_once(&env_once, env_load);
    if (env_err.code) return ps_err_set(err, env_err.code, "%s", env_err.msg);
    return ps_curve_client_socket(env_curve, sock, endpoint, err);
}

const char *ps_curve_public(const ps_curve_t *c)
{
    return c ? c->kp.pub : "";
}

const char *ps_curve_secret(const ps_curve_t *c)
{
    return c ? c->kp.sec : "";
}

int ps_curve_server_socket(const ps_curve_t *c, void *sock, ps_err *err)
{
    if (!c) return 0;
    if (!c->serves)
        return ps_err_set(err, PS_EINVAL, "CURVE on but no curve-allow list: nobody could connect");
    int one = 1;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, c->kp.sec, PS_CURVE_Z85_LEN + 1) ||
        zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, PS_CURVE_ZAP_DOMAIN, strlen(PS_CURVE_ZAP_DOMAIN)))
        return ps_err_set(err, PS_EINTERNAL, "CURVE server options: %s", zmq_strerror(zmq_errno()));
    return 0;
}

const char *ps_curve_server_key(const ps_curve_t *c, const char *endpoint)
{
    if (!c) return NULL;
    for (size_t i = 0; i < c->nknown; i++)
        if (strcmp(c->known[i].endpoint, endpoint) == 0) return c->known[i].key;
    return c->any[0] ? c->any : NULL;
}

int ps_curve_check_endpoint(const ps_curve_t *c, const char *endpoint, ps_err *err)
{
    if (!c || ps_curve_server_key(c, endpoint)) return 0;
    return ps_err_set(err, PS_EINVAL,
                      "%s: no server key for it in the known-servers file (curve-servers)",
                      endpoint);
}

int ps_curve_client_socket(const ps_curve_t *c, void *sock, const char *endpoint, ps_err *err)
{
    if (!c) return 0;
    const char *key = ps_curve_server_key(c, endpoint);
    if (!key) return ps_curve_check_endpoint(c, endpoint, err);
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, key, PS_CURVE_Z85_LEN + 1) ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, c->kp.pub, PS_CURVE_Z85_LEN + 1) ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, c->kp.sec, PS_CURVE_Z85_LEN + 1))
        return ps_err_set(err, PS_EINTERNAL, "CURVE client options: %s", zmq_strerror(zmq_errno()));
    return 0;
}

const char *ps_curve_allowed(const ps_curve_t *c, const char *z85)
{
    if (!c || !z85 || strlen(z85) != PS_CURVE_Z85_LEN) return NULL;
    allow_entry probe;
    memcpy(probe.key, z85, PS_CURVE_Z85_LEN + 1);
    const allow_entry *a = bsearch(&probe, c->allow, c->nallow, sizeof *c->allow, cmp_allow);
    return a ? a->name : NULL;
}

unsigned ps_curve_key_mode(const ps_curve_t *c)
{
    return c ? c->key_mode : 0;
}

size_t ps_curve_nallow(const ps_curve_t *c)
{
    return c ? c->nallow : 0;
}

size_t ps_curve_nknown(const ps_curve_t *c)
{
    return c ? c->nknown + (c->any[0] ? 1 : 0) : 0;
}
