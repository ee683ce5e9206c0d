#!/bin/sh
# The docker-compose `secrets-init` service (one shot, as root, before every daemon): makes the
# cluster's admin bearer token and its CURVE keys at the first start, so no secret is ever
# committed. The token is
# 32 random bytes as 64 hex digits in DIR/admin-token (DIR: the named volume `persrv-secrets`,
# mounted read-only into every daemon, which reads it with `admin-token-file`). An existing
# token is kept: restarts and `docker-compose up` again do not change it; `docker-compose down
# -v` drops it with the volume, and the next start makes a new one.
# CURVE (DESIGN §6, ps/curve.h): `builder keys` makes a key pair per daemon and one for the
# clients of the front door (client.key) in DIR/curve, with the allow-list of each daemon
# (who may connect to it) and the known-servers file (the key each endpoint must prove):
#   shards.allow    the broker                      profile0.allow  broker, profile1 (replica)
#   profile1.allow  the broker                      broker.allow    client (the front door)
# Made once, like the token; `down -v` drops them.
#   usage: persrv-secrets-init [DIR]   (default /run/secrets/persrv)
#   Read it on the host: docker-compose exec profile0 cat /run/secrets/persrv/admin-token
set -eu
DIR=${1:-/run/secrets/persrv}
F=$DIR/admin-token
umask 077
mkdir -p "$DIR"
if [ ! -s "$F" ]; then
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$F.tmp"
  echo >>"$F.tmp"
  [ "$(wc -c <"$F.tmp")" -eq 65 ] || { echo "persrv-secrets-init: token generation failed" >&2; exit 1; }
  mv "$F.tmp" "$F"
  echo "persrv-secrets-init: generated a new admin token in $F"
else
  echo "persrv-secrets-init: keeping the admin token in $F"
fi
K=$DIR/curve
DAEMONS="shard0a shard0b shard1a shard1b profile0 profile1 broker"
if [ ! -s "$K/client.key" ]; then
  rm -rf "$K.tmp"
  builder keys --out "$K.tmp" $DAEMONS client >/dev/null
  pub() { cut -d' ' -f1 "$K.tmp/$1.pub"; }
  cat "$K.tmp/broker.pub" >"$K.tmp/shards.allow"
  cat "$K.tmp/broker.pub" "$K.tmp/profile1.pub" >"$K.tmp/profile0.allow"
  cat "$K.tmp/broker.pub" >"$K.tmp/profile1.allow"
  cat "$K.tmp/client.pub" >"$K.tmp/broker.allow"
  {
    for s in shard0a shard0b shard1a shard1b; do echo "tcp://$s:7100 $(pub "$s")"; done
    echo "tcp://profile0:7200 $(pub profile0)"
    echo "tcp://profile1:7200 $(pub profile1)"
    echo "tcp://broker:7000 $(pub broker)"
    echo "tcp://127.0.0.1:7000 $(pub broker)"
  } >"$K.tmp/servers"
  mv "$K.tmp" "$K"
  echo "persrv-secrets-init: generated CURVE keys in $K"
else
  echo "persrv-secrets-init: keeping the CURVE keys in $K"
fi
# Readable by the daemons' user only.
if id persrv >/dev/null 2>&1; then chown -R persrv:persrv "$F" "$K"; fi
chmod 0400 "$F" "$K"/*.key
chmod 0755 "$K"
chmod 0755 "$DIR"
