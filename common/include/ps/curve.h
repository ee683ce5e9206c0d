/*
 * curve.h — CURVE authentication and encryption of the internal ZeroMQ traffic (DESIGN §6).
 *
 * Every daemon has a key pair of its own (`builder keys`). A daemon that serves ZeroMQ (shard,
 * profile primary and replicas, the broker's front door) is a CURVE server with its secret key
 * and admits only the clients whose public keys are on its allow-list: a ZAP handler
 * (ZeroMQ RFC 27) in the daemon's context answers every handshake, so a peer without an
 * allowed key never gets a message through, whatever it sends. A daemon that connects (the
 * broker to shards and the profile service, a replica to its primary, the builder, tools) is
 * a CURVE client with its own key pair and must know each server's public key: the
 * known-servers file maps endpoints to keys.
 *
 * Files (all: '#' starts a comment line, unless the line's first word is a key — a Z85 key
 * may start with '#'; blank lines ignored; keys in Z85, 40 characters):
 *   NAME.key       a key pair, mode 0600:   public = <Z85>  /  secret = <Z85>  (two lines)
 *   NAME.pub       its public half, one line "<Z85> NAME": an allow-list line as it is
 *   allow-list     "<Z85> [name]" per line: the client keys a server admits (cat *.pub)
 *   known servers  "<endpoint> <Z85>" per line: the server key a client expects at an
 *                  endpoint, exactly as the endpoint is configured ("tcp://shard0a:7100");
 *                  the endpoint "*" gives the key of every endpoint not listed
 *
 * Plain mode (no key configured) is for 127.0.0.1 development only: daemons log a warning.
 *
 * Threads: a ps_curve_t is read-only once loaded (share it); ps_curve_zap_t owns one thread.
 */
#ifndef PS_CURVE_H
#define PS_CURVE_H

#include <stddef.h>

#include "ps/config.h"
#include "ps/err.h"

#define PS_CURVE_Z85_LEN   40   /* characters of a Z85 key */
#define PS_CURVE_MAX_ALLOW 4096 /* allow-list entries */
#define PS_CURVE_MAX_KNOWN 4096 /* known-servers entries */

typedef struct ps_curve_keypair {
    char pub[PS_CURVE_Z85_LEN + 1]; /* Z85, NUL-terminated */
    char sec[PS_CURVE_Z85_LEN + 1];
} ps_curve_keypair;

/* A new key pair (zmq_curve_keypair). Errors: PS_EUNAVAIL when libzmq lacks CURVE. */
int ps_curve_keypair_new(ps_curve_keypair *kp, ps_err *err);

/* Write dir/NAME.key (mode 0600, created exclusively: an existing key is never overwritten,
 * PS_EEXIST) and dir/NAME.pub. name: letters, digits, '-', '_', '.'; at most 64 bytes. */
int ps_curve_keypair_save(const ps_curve_keypair *kp, const char *dir, const char *name,
                          ps_err *err);

/* Read a NAME.key file. Errors: PS_EIO (unreadable), PS_EPARSE (naming file:line), PS_EINVAL
 * (the secret does not derive the public key). */
int ps_curve_keypair_load(const char *path, ps_curve_keypair *kp, ps_err *err);

/* 1 when s is a well-formed Z85 key of 40 characters. */
int ps_curve_z85_valid(const char *s, size_t n);

typedef struct ps_curve ps_curve_t;

/* A daemon's CURVE settings: key_file (NULL: plain mode — then allow_file and servers_file
 * must be NULL too), allow_file (required for a daemon that serves; NULL: serves nothing over
 * CURVE), servers_file (required for one that connects). Errors: PS_EINVAL (a file given
 * without the key, a bad line naming file:line, too many entries), PS_EIO, PS_ENOMEM.
 * Returns NULL with err->code 0 for plain mode. Caller owns the result (ps_curve_free). */
ps_curve_t *ps_curve_load(const char *key_file, const char *allow_file, const char *servers_file,
                          ps_err *err);

/* Like ps_curve_load, from PERSRV_CURVE_KEY, PERSRV_CURVE_ALLOW and PERSRV_CURVE_SERVERS (the
 * variables a daemon's config reads too): for tools and tests. */
ps_curve_t *ps_curve_from_env(ps_err *err);

void ps_curve_free(ps_curve_t *c);

/* For tools and tests: ps_curve_client_socket with the settings of ps_curve_from_env, loaded
 * once per process (kept until exit). 0 in plain mode (no PERSRV_CURVE_KEY). */
int ps_curve_env_client(void *sock, const char *endpoint, ps_err *err);

/* The settings every daemon's table has (config file, flags, PERSRV_CURVE_* variables). */
/* clang-format off */
#define PS_CURVE_CFG_OPTS                                                                          \
    {"curve-key", PS_CFG_STRING, NULL, "this daemon's CURVE key pair file (builder keys); "       \
     "unset: plain ZeroMQ, for 127.0.0.1 development only", 0, 0, 0},                              \
    {"curve-allow", PS_CFG_STRING, NULL, "allow-list of the client public keys admitted to "      \
     "this daemon's ZeroMQ port ('<Z85> [name]' per line)", 0, 0, 0},                              \
    {"curve-servers", PS_CFG_STRING, NULL, "known servers: '<endpoint> <Z85 server key>' per "    \
     "line ('*' for any endpoint not listed)", 0, 0, 0}
/* clang-format on */

/* ps_curve_load from a daemon's curve-key, curve-allow and curve-servers settings. */
ps_curve_t *ps_curve_from_cfg(const ps_cfg_t *cfg, ps_err *err);

/* This daemon's public and secret key (Z85; "" for c NULL). */
const char *ps_curve_public(const ps_curve_t *c);
const char *ps_curve_secret(const ps_curve_t *c);

/* The server key the known-servers file gives endpoint (Z85), NULL when none (or c NULL). */
const char *ps_curve_server_key(const ps_curve_t *c, const char *endpoint);

/* Make sock a CURVE server (before zmq_bind): ZMQ_CURVE_SERVER, the secret key, ZAP domain
 * "persrv". c NULL (plain mode): nothing. Errors: PS_EINVAL (no allow-list configured),
 * PS_EINTERNAL. */
int ps_curve_server_socket(const ps_curve_t *c, void *sock, ps_err *err);

/* Make sock a CURVE client of the server at endpoint (before zmq_connect): the server's key
 * from the known-servers file, this daemon's key pair. c NULL: nothing. Errors: PS_EINVAL
 * (endpoint not in the known-servers file, and no "*" line), PS_EINTERNAL. */
int ps_curve_client_socket(const ps_curve_t *c, void *sock, const char *endpoint, ps_err *err);

/* 0 when c has a server key for endpoint (or c is NULL), else PS_EINVAL naming it: lets a
 * daemon refuse at start a topology its known-servers file does not cover. */
int ps_curve_check_endpoint(const ps_curve_t *c, const char *endpoint, ps_err *err);

/* The ZAP handler of one ZeroMQ context: a thread answering every CURVE handshake in zctx
 * against c's allow-list (admitted peers get their allow-list name as ZeroMQ user id; others
 * status 400). Refusals are counted and logged at most once a second per daemon (with the
 * number suppressed); keys are logged by their first 8 characters only. Start it before any
 * server socket of zctx binds; stop it before zmq_ctx_term. */
typedef struct ps_curve_zap ps_curve_zap_t;
ps_curve_zap_t *ps_curve_zap_start(const ps_curve_t *c, void *zctx, const char *component,
                                   ps_err *err);
void ps_curve_zap_stop(ps_curve_zap_t *z);
/* Handshakes admitted / refused so far. */
unsigned long long ps_curve_zap_admitted(const ps_curve_zap_t *z);
unsigned long long ps_curve_zap_refused(const ps_curve_zap_t *z);

/* Log, at start, which mode a daemon listening at `listen` runs in: "curve" (info, with its
 * public key and the allow-list size) or plain (a warning: for 127.0.0.1 development only;
 * louder when `listen` is not a loopback address). */
void ps_curve_log_mode(const ps_curve_t *c, const char *component, const char *listen);

#endif
