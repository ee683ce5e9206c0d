/*
 * keys.c — API keys of the broker's public HTTP door (broker.h, "keys.c"): a key file of
 * named keys with scopes and rate limits, checked on every search, sticker and click request.
 *
 * The file, one key a line (blank lines and lines starting with '#' ignored):
 *
 *     NAME  SCOPES  RATE  KEY
 *     chat-svc   search,click  200/s   3b0c…(the secret, 16..256 printable bytes, no spaces)
 *     batch-job  search        600/min 9f1e…
 *
 * NAME [A-Za-z0-9._-]{1,64} is what logs and metrics show (never the key); SCOPES a comma list
 * of search (GET /v1/search, /v1/stickers/{id}) and click (POST /v1/click); RATE N/s or N/min
 * (a bucket of N requests refilled at N per second or minute) or "-" (no limit). A key (from
 * the HTTP door's `Authorization: Bearer` or the front door's Envelope.api_key) is compared in
 * constant time against every key of the file. The buckets are shared by every
 * lane (one mutex: a check is a few arithmetic operations).
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "broker.h"
#include "ps/log.h"

#define KEY_MIN      16
#define KEY_MAX      256
#define NAME_MAX_LEN 64
#define KEYS_MAX     4096

typedef struct key {
    char name[NAME_MAX_LEN + 1];
    char secret[KEY_MAX + 1];
    size_t len;
    unsigned scopes;
    double rate, burst, tokens, last; /* rate 0: unlimited */
} key;

struct broker_keys {
    key *k;
    size_t n;
    pthread_mutex_t mu;
};

static int parse_scopes(char *s, unsigned *out)
{
    *out = 0;
    for (char *save = NULL, *t = strtok_r(s, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (strcmp(t, "search") == 0)
            *out |= BROKER_SCOPE_SEARCH;
        else if (strcmp(t, "click") == 0)
            *out |= BROKER_SCOPE_CLICK;
        else if (strcmp(t, "admin") == 0)
            *out |= BROKER_SCOPE_ADMIN;
        else
            return -1;
    }
    return *out ? 0 : -1;
}

static int parse_rate(const char *s, double *rate, double *burst)
{
    if (strcmp(s, "-") == 0) return *rate = *burst = 0, 0;
    char *end;
    errno = 0;
    unsigned long long n = strtoull(s, &end, 10);
    if (s[0] < '0' || s[0] > '9' || errno || n == 0 || n > 1000000000ull) return -1;
    double per;
    if (strcmp(end, "/s") == 0)
        per = 1;
    else if (strcmp(end, "/min") == 0)
        per = 60;
    else
        return -1;
    *burst = (double)n;
    *rate = (double)n / per;
    return 0;
}

static int name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > NAME_MAX_LEN) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '.' || *s == '_' || *s == '-'))
            return 0;
    return 1;
}

static int secret_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < KEY_MIN || n > KEY_MAX) return 0;
    for (; *s; s++)
        if ((unsigned char)*s <= ' ' || (unsigned char)*s >= 0x7f) return 0;
    return 1;
}

broker_keys_t *broker_keys_load(const char *path, ps_err *err)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        ps_err_set(err, PS_EINVAL, "api-keys %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077))
        ps_log(PS_LOG_WARN, "broker", "api_keys_readable",
               "file=%s mode=%03o msg=\"other users can read the API keys: chmod 600\"", path,
               (unsigned)(st.st_mode & 0777));
    broker_keys_t *ks = calloc(1, sizeof *ks);
    char line[1024];
    int lineno = 0, bad = 0;
    if (!ks) {
        fclose(f);
        ps_err_set(err, PS_ENOMEM, "out of memory for the API keys");
        return NULL;
    }
    pthread_mutex_init(&ks->mu, NULL);
    while (!bad && fgets(line, sizeof line, f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            bad = ps_err_set(err, PS_EINVAL, "api-keys %s:%d: line too long", path, lineno);
            break;
        }
        char *save = NULL, *tok[5];
        int nt = 0;
        for (char *t = strtok_r(line, " \t\r\n", &save); t && nt < 5;
             t = strtok_r(NULL, " \t\r\n", &save))
            tok[nt++] = t;
        if (nt == 0 || tok[0][0] == '#') continue;
        key k = {0};
        if (nt != 4) {
            bad = ps_err_set(err, PS_EINVAL,
                             "api-keys %s:%d: want NAME SCOPES RATE KEY (4 fields), got %d", path,
                             lineno, nt);
        } else if (!name_ok(tok[0])) {
            bad = ps_err_set(err, PS_EINVAL, "api-keys %s:%d: NAME must be 1..%d of [A-Za-z0-9._-]",
                             path, lineno, NAME_MAX_LEN);
        } else if (parse_scopes(tok[1], &k.scopes)) {
            bad = ps_err_set(err, PS_EINVAL,
                             "api-keys %s:%d: SCOPES must be a comma list of search, click, admin",
                             path, lineno);
        } else if (parse_rate(tok[2], &k.rate, &k.burst)) {
            bad = ps_err_set(err, PS_EINVAL, "api-keys %s:%d: RATE must be N/s, N/min or -", path,
                             lineno);
        } else if (!secret_ok(tok[3])) {
            bad = ps_err_set(err, PS_EINVAL,
                             "api-keys %s:%d: KEY must be %d..%d printable bytes without spaces",
                             path, lineno, KEY_MIN, KEY_MAX);
        } else if (ks->n >= KEYS_MAX) {
            bad = ps_err_set(err, PS_EINVAL, "api-keys %s: more than %d keys", path, KEYS_MAX);
        } else {
            for (size_t i = 0; i < ks->n && !bad; i++)
                if (strcmp(ks->k[i].name, tok[0]) == 0 || strcmp(ks->k[i].secret, tok[3]) == 0)
                    bad = ps_err_set(err, PS_EINVAL,
                                     "api-keys %s:%d: a NAME or KEY repeats line "
                                     "of %s",
                                     path, lineno, ks->k[i].name);
            if (bad) break;
            snprintf(k.name, sizeof k.name, "%s", tok[0]);
            snprintf(k.secret, sizeof k.secret, "%s", tok[3]);
            k.len = strlen(k.secret);
            k.tokens = k.burst;
            key *nk = realloc(ks->k, (ks->n + 1) * sizeof *nk);
            if (!nk) {
                bad = ps_err_set(err, PS_ENOMEM, "out of memory for the API keys");
                break;
            }
            ks->k = nk;
            ks->k[ks->n++] = k;
        }
        memset(line, 0, sizeof line); /* the secret */
    }
    memset(line, 0, sizeof line);
    fclose(f);
    if (!bad && ks->n == 0) bad = ps_err_set(err, PS_EINVAL, "api-keys %s: no key in it", path);
    if (bad) {
        broker_keys_free(ks);
        return NULL;
    }
    return ks;
}

void broker_keys_free(broker_keys_t *ks)
{
    if (!ks) return;
    if (ks->k) {
        volatile unsigned char *p = (volatile unsigned char *)ks->k;
        for (size_t i = 0; i < ks->n * sizeof *ks->k; i++) p[i] = 0;
    }
    free(ks->k);
    pthread_mutex_destroy(&ks->mu);
    free(ks);
}

size_t broker_keys_count(const broker_keys_t *ks)
{
    return ks ? ks->n : 0;
}

/* Equal in time that depends on the lengths only. */
static int same(const char *a, size_t na, const char *b, size_t nb)
{
    unsigned char d = (unsigned char)(na != nb);
    for (size_t i = 0; i < na; i++) d |= (unsigned char)(a[i] ^ b[i < nb ? i : 0]);
    return d == 0;
}

broker_auth broker_keys_check(broker_keys_t *ks, const char *t, size_t n, unsigned scope,
                              double now, const char **name, int *retry_after_s)
{
    *name = NULL;
    *retry_after_s = 0;
    if (!t || n == 0) return BROKER_AUTH_MISSING;
    key *hit = NULL;
    for (size_t i = 0; i < ks->n; i++) /* every key, so the time says nothing of which */
        if (same(t, n, ks->k[i].secret, ks->k[i].len)) hit = &ks->k[i];
    if (!hit) return BROKER_AUTH_UNKNOWN;
    *name = hit->name;
    if (!(hit->scopes & scope)) return BROKER_AUTH_SCOPE;
    if (hit->rate <= 0) return BROKER_AUTH_OK;
    pthread_mutex_lock(&ks->mu);
    if (hit->last > 0 && now > hit->last) {
        hit->tokens += (now - hit->last) * hit->rate;
        if (hit->tokens > hit->burst) hit->tokens = hit->burst;
    }
    hit->last = now;
    broker_auth a = BROKER_AUTH_OK;
    if (hit->tokens >= 1) {
        hit->tokens -= 1;
    } else {
        a = BROKER_AUTH_RATE;
        *retry_after_s = (int)ceil((1 - hit->tokens) / hit->rate);
        if (*retry_after_s < 1) *retry_after_s = 1;
    }
    pthread_mutex_unlock(&ks->mu);
    return a;
}
