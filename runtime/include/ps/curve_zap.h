/*
 * curve_zap.h — CURVE in a daemon (DESIGN §6): the settings of its config table, the ZAP
 * handler of its server context, the start-up log line. Keys, allow-lists, known-servers files
 * and socket options: curve.h (the wire library, shared with libpersrv).
 */
#ifndef PS_CURVE_ZAP_H
#define PS_CURVE_ZAP_H

#include "ps/config.h"
#include "ps/curve.h"

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
 * louder when `listen` is not a loopback address); a warning too when the key pair file is
 * readable by others. */
void ps_curve_log_mode(const ps_curve_t *c, const char *component, const char *listen);

#endif
