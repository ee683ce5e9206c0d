/*
 * curve.c — CURVE keys, allow-lists, known servers and the ZAP handler (ps/curve.h).
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
#include "ps/log.h"

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define ZAP_DOMAIN   "persrv"
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
    struct stat st;
    if (stat(path, &st) == 0 && (st.st_mode & 077))
        ps_log(PS_LOG_WARN, "curve", "key_file_mode",
               "path=%s mode=%03o msg=\"a secret key should be readable by its owner only\"", path,
               (unsigned)(st.st_mode & 0777));
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
    if (!(e->endpoint = strdup(line))) return ps_err_set(err, PS_ENOMEM, "out of memory");
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
    for (size_t i = 0; i < c->nknown; i++) free(c->known[i].endpoint);
    free(c->known);
    free(c->allow);
    free(c);
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
    ps_curve_t *c = calloc(1, sizeof *c);
    if (!c) {
        ps_err_set(err, PS_ENOMEM, "out of memory");
        return NULL;
    }
    int rc = ps_curve_keypair_load(key_file, &c->kp, err);
    if (!rc && allow_file) {
        c->serves = 1;
        if (!(c->allow = calloc(PS_CURVE_MAX_ALLOW, sizeof *c->allow)))
            rc = ps_err_set(err, PS_ENOMEM, "out of memory");
        else
            rc = each_line(allow_file, allow_line, c, err);
        if (!rc) qsort(c->allow, c->nallow, sizeof *c->allow, cmp_allow);
    }
    if (!rc && servers_file) {
        if (!(c->known = calloc(PS_CURVE_MAX_KNOWN, sizeof *c->known)))
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

ps_curve_t *ps_curve_from_cfg(const ps_cfg_t *cfg, ps_err *err)
{
    return ps_curve_load(ps_cfg_str(cfg, "curve-key"), ps_cfg_str(cfg, "curve-allow"),
                         ps_cfg_str(cfg, "curve-servers"), err);
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
        zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, ZAP_DOMAIN, strlen(ZAP_DOMAIN)))
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

static int is_loopback(const char *listen)
{
    const char *h = strstr(listen, "://");
    h = h ? h + 3 : listen;
    if (strncmp(listen, "ipc://", 6) == 0 || strncmp(listen, "inproc://", 9) == 0) return 1;
    return strncmp(h, "127.", 4) == 0 || strncmp(h, "localhost:", 10) == 0 ||
           strncmp(h, "[::1]:", 6) == 0 || strncmp(h, "lo:", 3) == 0;
}

void ps_curve_log_mode(const ps_curve_t *c, const char *component, const char *listen)
{
    if (c) {
        ps_log(PS_LOG_INFO, component, "curve",
               "public_key=%s allowed_clients=%zu known_servers=%zu", c->kp.pub, c->nallow,
               c->nknown + (c->any[0] ? 1 : 0));
        return;
    }
    ps_log(PS_LOG_WARN, component, "plain_zmq",
           "listen=%s msg=\"CURVE off (no curve-key): internal ZeroMQ traffic is neither "
           "authenticated nor encrypted; plain mode is for 127.0.0.1 development only%s\"",
           listen ? listen : "-",
           listen && !is_loopback(listen) ? ", and this address is not loopback: anyone who "
                                            "reaches it can read and write this daemon's data"
                                          : "");
}

/* ---- the ZAP handler --------------------------------------------------------------------- */

struct ps_curve_zap {
    const ps_curve_t *c;
    void *sock;
    int pipe[2];
    pthread_t tid;
    char comp[32];
    atomic_ullong admitted, refused;
    long long last_log; /* second of the last peer_refused line */
    unsigned long long suppressed;
};

static const allow_entry *allowed(const ps_curve_t *c, const char *z85)
{
    allow_entry probe;
    memcpy(probe.key, z85, PS_CURVE_Z85_LEN + 1);
    return bsearch(&probe, c->allow, c->nallow, sizeof *c->allow, cmp_allow);
}

static void zap_refused(ps_curve_zap_t *z, const char *mech, const char *key, const char *addr)
{
    unsigned long long n = atomic_fetch_add(&z->refused, 1) + 1;
    if (!ps_log_once_per_second(&z->last_log)) {
        z->suppressed++;
        return;
    }
    ps_log(PS_LOG_WARN, z->comp, "peer_refused",
           "mechanism=%s key=%.8s address=%s refused_total=%llu suppressed=%llu", mech, key, addr,
           n, z->suppressed);
    z->suppressed = 0;
}

/* Copy a frame's bytes as a printable, NUL-terminated string. */
static void frame_str(zmq_msg_t *m, char *out, size_t cap)
{
    size_t n = zmq_msg_size(m);
    if (n >= cap) n = cap - 1;
    const unsigned char *p = zmq_msg_data(m);
    for (size_t i = 0; i < n; i++) out[i] = p[i] > ' ' && p[i] < 0x7f ? (char)p[i] : '_';
    out[n] = '\0';
}

static void zap_answer(ps_curve_zap_t *z, zmq_msg_t *req, int nreq)
{
    /* request: version, request id, domain, address, routing id, mechanism, credentials... */
    char version[8] = "", mech[16] = "", addr[64] = "", key[PS_CURVE_Z85_LEN + 1] = "-";
    const allow_entry *who = NULL;
    if (nreq >= 6) {
        frame_str(&req[0], version, sizeof version);
        frame_str(&req[3], addr, sizeof addr);
        frame_str(&req[5], mech, sizeof mech);
    }
    if (nreq >= 7 && strcmp(mech, "CURVE") == 0 && zmq_msg_size(&req[6]) == 32 &&
        zmq_z85_encode(key, zmq_msg_data(&req[6]), 32))
        who = allowed(z->c, key);
    const char *status = who ? "200" : "400";
    const char *text = who ? "OK" : "key not allowed";
    if (who)
        atomic_fetch_add(&z->admitted, 1);
    else
        zap_refused(z, mech[0] ? mech : "-", key, addr[0] ? addr : "-");
    if (nreq < 2) return; /* nothing to answer to */
    const char *frames[6] = {"1.0", NULL, status, text, who ? who->name : "", ""};
    for (int i = 0; i < 6; i++) {
        int more = i < 5 ? ZMQ_SNDMORE : 0;
        if (i == 1)
            zmq_send(z->sock, zmq_msg_data(&req[1]), zmq_msg_size(&req[1]), more);
        else
            zmq_send(z->sock, frames[i], strlen(frames[i]), more);
    }
}

static void *zap_main(void *arg)
{
    ps_curve_zap_t *z = arg;
    enum { MAXF = 10 };
    zmq_msg_t req[MAXF];
    for (;;) {
        zmq_pollitem_t items[2] = {{z->sock, 0, ZMQ_POLLIN, 0}, {NULL, z->pipe[0], ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 2, -1) < 0) {
            if (zmq_errno() == EINTR) continue;
            break;
        }
        if (items[1].revents) break;
        if (!(items[0].revents & ZMQ_POLLIN)) continue;
        int n = 0;
        for (;;) {
            zmq_msg_t tmp, *m = n < MAXF ? &req[n] : &tmp;
            zmq_msg_init(m);
            if (zmq_msg_recv(m, z->sock, 0) < 0) {
                zmq_msg_close(m);
                break;
            }
            int more = zmq_msg_more(m);
            if (m == &tmp)
                zmq_msg_close(m);
            else
                n++;
            if (!more) break;
        }
        zap_answer(z, req, n);
        for (int i = 0; i < n; i++) zmq_msg_close(&req[i]);
    }
    return NULL;
}

ps_curve_zap_t *ps_curve_zap_start(const ps_curve_t *c, void *zctx, const char *component,
                                   ps_err *err)
{
    ps_curve_zap_t *z = calloc(1, sizeof *z);
    if (!z) {
        ps_err_set(err, PS_ENOMEM, "out of memory");
        return NULL;
    }
    z->c = c;
    z->pipe[0] = z->pipe[1] = -1;
    snprintf(z->comp, sizeof z->comp, "%s", component);
    int zero = 0;
    if (pipe2(z->pipe, O_CLOEXEC) || !(z->sock = zmq_socket(zctx, ZMQ_REP)) ||
        zmq_setsockopt(z->sock, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_bind(z->sock, ZAP_ENDPOINT)) {
        ps_err_set(err, PS_EINTERNAL, "ZAP handler: %s",
                   z->pipe[0] < 0 ? strerror(errno) : zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (pthread_create(&z->tid, NULL, zap_main, z)) {
        ps_err_set(err, PS_EINTERNAL, "ZAP handler: cannot start its thread");
        goto fail;
    }
    return z;
fail:
    if (z->sock) zmq_close(z->sock);
    if (z->pipe[0] >= 0) close(z->pipe[0]);
    if (z->pipe[1] >= 0) close(z->pipe[1]);
    free(z);
    return NULL;
}

void ps_curve_zap_stop(ps_curve_zap_t *z)
{
    if (!z) return;
    ssize_t w;
    do w = write(z->pipe[1], "x", 1);
    while (w < 0 && errno == EINTR);
    pthread_join(z->tid, NULL);
    zmq_close(z->sock);
    close(z->pipe[0]);
    close(z->pipe[1]);
    free(z);
}

unsigned long long ps_curve_zap_admitted(const ps_curve_zap_t *z)
{
    return z ? atomic_load(&z->admitted) : 0;
}

unsigned long long ps_curve_zap_refused(const ps_curve_zap_t *z)
{
    return z ? atomic_load(&z->refused) : 0;
}
