#!/bin/sh
# The Secrets of deploy/k8s (never committed): the admin bearer token, the API keys of the
# broker's HTTP door, and a CURVE key pair per daemon with the allow-lists and known-servers
# files (DESIGN §6), as docker-compose's secrets-init makes them, for the pod names of the
# StatefulSets (shard0-0 ...) and the broker Deployment (one key pair for all its pods).
#
#   deploy/k8s/secrets.sh DIR                   make the files: DIR/SECRET/KEY, one directory
#                                                per Secret (needs `builder`; PERSRV_BUILDER
#                                                names another one)
#   deploy/k8s/secrets.sh --apply DIR [NS]      create each as a Secret in namespace NS
#                                                (default persrv) with kubectl
# Or without a local build, from the image: make DIR (mode 0700) and
#   docker run --rm -u "$(id -u)" -v "$PWD/DIR:/out" persrv:local persrv-k8s-secrets /out/s
#
# Secrets made (keys in brackets), each mounted by the pods of deploy/k8s that need it:
#   persrv-admin-token     [admin-token]                     every daemon, the Jobs
#   persrv-api-keys        [api-keys]  'chat search,click - KEY' (broker --api-keys)
#   persrv-curve-shardN    [shardN-0.key shardN-1.key shards.allow]
#   persrv-curve-profile0  [profile0-0.key profile0.allow]   (the broker and the replica)
#   persrv-curve-profile1  [profile1-0.key profile1.allow servers]
#   persrv-curve-broker    [broker.key broker.allow servers] (its front door admits client)
#   persrv-curve-client    [client.key servers]              for libpersrv / the persrv CLI
# DIR holds secret keys: keep it private, delete it once applied. An existing DIR is never
# overwritten (keys are made once, as a Secret that exists is never replaced: delete it first).
set -eu
me=persrv-k8s-secrets
SHARDS=${PERSRV_K8S_SHARDS:-2}
REPLICAS=${PERSRV_K8S_REPLICAS:-2}

if [ "${1:-}" = "--apply" ]; then
  DIR=${2:?usage: secrets.sh --apply DIR [NAMESPACE]}
  NS=${3:-persrv}
  for d in "$DIR"/persrv-*; do
    [ -d "$d" ] || { echo "$me: no persrv-* directory in $DIR" >&2; exit 1; }
    kubectl -n "$NS" create secret generic "$(basename "$d")" --from-file="$d"
  done
  exit 0
fi

DIR=${1:?usage: secrets.sh DIR | secrets.sh --apply DIR [NAMESPACE]}
BUILDER=${PERSRV_BUILDER:-builder}
[ ! -e "$DIR" ] || { echo "$me: $DIR exists; not overwriting keys" >&2; exit 1; }
umask 077
mkdir -p "$DIR"
K=$DIR/.keys

shards="" s=0
while [ "$s" -lt "$SHARDS" ]; do
  r=0
  while [ "$r" -lt "$REPLICAS" ]; do shards="$shards shard$s-$r"; r=$((r + 1)); done
  s=$((s + 1))
done
$BUILDER keys --out "$K" $shards profile0-0 profile1-0 broker client >/dev/null
pub() { cut -d' ' -f1 "$K/$1.pub"; }
put() { mkdir -p "$DIR/$1" && cp "$K/$2" "$DIR/$1/${3:-$2}"; }

mkdir -p "$DIR/persrv-admin-token" "$DIR/persrv-api-keys"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/persrv-admin-token/admin-token"
echo >>"$DIR/persrv-admin-token/admin-token"
printf 'chat search,click - %s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
  >"$DIR/persrv-api-keys/api-keys"

# The known-servers file: the endpoint strings of conf/broker.conf and conf/profile1.conf.
for s in $shards; do echo "tcp://$s.${s%-*}:7100 $(pub "$s")"; done >"$K/servers"
for p in profile0-0 profile1-0; do echo "tcp://$p.profile:7200 $(pub "$p")"; done >>"$K/servers"
cat "$K/broker.pub" >"$K/shards.allow"
cat "$K/broker.pub" "$K/profile1-0.pub" >"$K/profile0.allow"
cat "$K/broker.pub" >"$K/profile1.allow"
cat "$K/client.pub" >"$K/broker.allow"
echo "* $(pub broker)" >"$K/client-servers"

s=0
while [ "$s" -lt "$SHARDS" ]; do
  r=0
  while [ "$r" -lt "$REPLICAS" ]; do put "persrv-curve-shard$s" "shard$s-$r.key"; r=$((r + 1)); done
  put "persrv-curve-shard$s" shards.allow
  s=$((s + 1))
done
put persrv-curve-profile0 profile0-0.key
put persrv-curve-profile0 profile0.allow
put persrv-curve-profile1 profile1-0.key
put persrv-curve-profile1 profile1.allow
put persrv-curve-profile1 servers
put persrv-curve-broker broker.key
put persrv-curve-broker broker.allow
put persrv-curve-broker servers
put persrv-curve-client client.key
put persrv-curve-client client-servers servers
rm -rf "$K"
echo "$me: made the Secrets' files in $DIR:" && ls "$DIR"
