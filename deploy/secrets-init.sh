#!/bin/sh
# The docker-compose `secrets-init` service (one shot, as root, before every daemon): makes the
# cluster's admin bearer token at the first start, so no token is ever committed. The token is
# 32 random bytes as 64 hex digits in DIR/admin-token (DIR: the named volume `persrv-secrets`,
# mounted read-only into every daemon, which reads it with `admin-token-file`). An existing
# token is kept: restarts and `docker-compose up` again do not change it; `docker-compose down
# -v` drops it with the volume, and the next start makes a new one.
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
# Readable by the daemons' user only.
if id persrv >/dev/null 2>&1; then chown persrv:persrv "$F"; fi
chmod 0400 "$F"
chmod 0755 "$DIR"
