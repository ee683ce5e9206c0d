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

#include "ps/err.h"

#define PS_CURVE_Z85_LEN    40       /* characters of a Z85 key */
#define PS_CURVE_ZAP_DOMAIN "persrv" /* the ZAP domain of every CURVE server socket */
#define PS_CURVE_MAX_ALLOW  4096     /* allow-list entries */
#define PS_CURVE_MAX_KNOWN  4096     /* known-servers entries */

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

/* The allow-list name of client key z85 (Z85, 40 characters), NULL when it is not on c's
 * allow-list (or c is NULL). */
const char *ps_curve_allowed(const ps_curve_t *c, const char *z85);
/* The permission bits of the key pair file c was loaded from (a daemon warns when others may
 * read it: ps_curve_log_mode). */
unsigned ps_curve_key_mode(const ps_curve_t *c);
/* Entries of the allow-list; of the known-servers file (a "*" line counts one). */
size_t ps_curve_nallow(const ps_curve_t *c);
size_t ps_curve_nknown(const ps_curve_t *c);

#endif
