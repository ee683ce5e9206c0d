#!/usr/bin/env bash
# Starts a local PerSRV cluster on 127.0.0.1 and answers one query through it: builds the tree
# if needed, generates the demo corpus (or reuses one of the same size), builds it into 2
# shards (`builder build --shards 2`), starts 2 shards x 2 replicas (4 `shard` processes) and
# the profile service (a primary and a replica, loaded with `builder push-profiles`) and the
# `broker` (HTTP/JSON and the ZeroMQ front door), waits until every one is ready, runs a sample
# search with curl and with the `persrv` CLI (libpersrv), records a sample click, and prints
# how to query and how to stop the cluster (scripts/cluster-down.sh).
#
#   PERSRV_DEMO_STICKERS  corpus size (default 543098, the paper's)
#   PERSRV_DEMO_IMAGES    which generated stickers get a placeholder picture (`builder generate
#                         --images`): N (the first N), P% (the P% of highest quality, the ones
#                         clicks favour) or all; default 25% (~135,000 pictures at the default
#                         size, ~1 min and ~550 MB; all: ~4 min and 2.2 GB). The broker serves
#                         them (--image-root DIR/data/images) to the search page at its URL /
#   PERSRV_IMAGE_ROOT     the directory the corpus's image paths are relative to (default
#                         DATA/images when it exists: the generated pictures; for a corpus of
#                         `builder enrich --input DIR`, that DIR)
#   PERSRV_CORPUS         serve this corpus instead of generating one: a directory holding
#                         corpus.jsonl and embeddings.npy (what `builder enrich` writes) and,
#                         optionally, clicks.tsv (user \t query \t sticker_id); rebuilt
#                         whenever those files change
#   PERSRV_DEMO_DIR       data, index and run directory (default ./demo in the source tree)
#   PERSRV_BASE_PORT      shard replicas listen on BASE+1 .. BASE+4, the profile primary
#                         on BASE+5 and its replica on BASE+6, the broker's ZeroMQ front
#                         door on BASE (default 7100)
#   PERSRV_HTTP_PORT      broker HTTP port (default 8080; 0 picks a free one)
#   PERSRV_SKIP_BUILD=1   do not run deps.sh / cmake: use the binaries already built
#   PERSRV_BIN_DIR        build tree holding shard/shard, broker/broker, builder/builder,
#                         client/persrv (default ./build in the source tree)
#   PERSRV_READY_TIMEOUT  seconds each daemon may take to become ready (default 600)
#   PERSRV_DEMO_QUERY     the sample query (default 好累)
#
# Layout of PERSRV_DEMO_DIR:
#   data/           corpus.jsonl, embeddings.npy, clicks.tsv, images/ (builder generate)
#   cluster/        shard-000, shard-001, profiles, cluster.json (builder build --shards 2)
#   run/            NAME.log (NAME.log.prev: the run before), NAME.pid, NAME.ready for
#                   shard0a shard0b shard1a shard1b profile0 profile1 broker
#   profiles/       the profile service's RocksDB databases (primary, replica): clicks
#                   recorded in a run are kept for the next
#   shards/NAME/    each shard replica's data directory: the snapshot versions it holds and
#                   its ACTIVE pointer (seeded from cluster/ on the first start; a version
#                   pushed later survives a restart)
#   admin.token     the admin token of every daemon (made on the first start, mode 0600)
#   keys/           CURVE key pairs of every daemon and of local clients (client.key: the
#                   persrv CLI's), allow-lists and the known-servers file (builder keys)
#   topology.json   the admin addresses of every replica and the broker, for `builder push`
#                   (rewritten on every start: admin ports are picked at run time)
#   .stickers       the corpus size and pictures data/ was generated with (with PERSRV_CORPUS:
#                   a checksum of its files; data/ is then not used)
# Exit status: 0 when the cluster is up and answered; 1 on any failure (the processes this
# run started are stopped again); 3 when a port is already in use or a cluster already runs.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
N=${PERSRV_DEMO_STICKERS:-543098}
IMAGES=${PERSRV_DEMO_IMAGES:-25%}
DIR=$(abspath "${PERSRV_DEMO_DIR:-$ROOT/demo}")
BIN=$(abspath "${PERSRV_BIN_DIR:-$ROOT/build}")
BASE_PORT=${PERSRV_BASE_PORT:-7100}
HTTP_PORT=${PERSRV_HTTP_PORT:-8080}
READY_TIMEOUT=${PERSRV_READY_TIMEOUT:-600}
QUERY=${PERSRV_DEMO_QUERY:-好累}
RUN=$DIR/run
NAMES=(shard0a shard0b shard1a shard1b profile0 profile1 broker)

die() {
  echo "cluster-up: $*" >&2
  exit 1
}
isnum() { [[ $1 =~ ^[0-9]+$ ]]; }
if ! isnum "$N" || [ "$N" -lt 1 ]; then
  die "PERSRV_DEMO_STICKERS='$N' is not a positive integer"
fi
[[ $IMAGES =~ ^([0-9]+|[0-9]+(\.[0-9]+)?%|all)$ ]] \
  || die "PERSRV_DEMO_IMAGES='$IMAGES' is not N, P% or all"
CORPUS=${PERSRV_CORPUS:+$(abspath "$PERSRV_CORPUS")}
if [ -n "$CORPUS" ]; then
  for f in corpus.jsonl embeddings.npy; do
    [ -s "$CORPUS/$f" ] || die "PERSRV_CORPUS=$CORPUS has no $f (builder enrich writes both)"
  done
fi
if ! isnum "$BASE_PORT" || [ "$BASE_PORT" -lt 1 ] || [ "$BASE_PORT" -gt 65529 ]; then
  die "PERSRV_BASE_PORT='$BASE_PORT' must be 1..65529 (the cluster uses BASE .. BASE+6)"
fi
if ! isnum "$HTTP_PORT" || [ "$HTTP_PORT" -gt 65535 ]; then
  die "PERSRV_HTTP_PORT='$HTTP_PORT' must be 0..65535"
fi
isnum "$READY_TIMEOUT" || die "PERSRV_READY_TIMEOUT='$READY_TIMEOUT' is not a number of seconds"
ZMQ_PORT=$BASE_PORT
[ "$ZMQ_PORT" -ne "$HTTP_PORT" ] || die "PERSRV_HTTP_PORT=$HTTP_PORT collides with the front door port (BASE)"
declare -A PORT=([shard0a]=$((BASE_PORT + 1)) [shard0b]=$((BASE_PORT + 2))
                 [shard1a]=$((BASE_PORT + 3)) [shard1b]=$((BASE_PORT + 4))
                 [profile0]=$((BASE_PORT + 5)) [profile1]=$((BASE_PORT + 6)))
declare -A INDEX=([shard0a]=shard-000 [shard0b]=shard-000 [shard1a]=shard-001 [shard1b]=shard-001)
declare -A SHARDNO=([shard0a]=0 [shard0b]=0 [shard1a]=1 [shard1b]=1)
for p in "${PORT[@]}"; do
  [ "$p" -ne "$HTTP_PORT" ] || die "PERSRV_HTTP_PORT=$HTTP_PORT collides with a cluster port (BASE .. BASE+6)"
done

# alive PID: true if PID is a running (not zombie) shard or broker process.
alive() {
  local pid=$1 stat comm
  isnum "$pid" || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  [ -r "/proc/$pid/stat" ] || return 0
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [ "$comm" = shard ] || [ "$comm" = broker ] || [ "$comm" = profile ]
}

# ---- refuse a second cluster in the same directory; ports must be free --------------------
running=()
for n in "${NAMES[@]}"; do
  f=$RUN/$n.pid
  [ -e "$f" ] || continue
  if alive "$(cat "$f" 2>/dev/null)"; then
    running+=("$n (pid $(cat "$f"))")
  else
    rm -f "$f" "$RUN/$n.ready" # left behind by a process that was killed
  fi
done
if [ ${#running[@]} -gt 0 ]; then
  echo "cluster-up: a cluster is already running from $DIR: ${running[*]}" >&2
  echo "cluster-up: stop it first: PERSRV_DEMO_DIR=$DIR $ROOT/scripts/cluster-down.sh" >&2
  exit 3
fi

# port_in_use PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() { (: <>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
check_ports() {
  local n p
  for n in shard0a shard0b shard1a shard1b profile0 profile1; do
    p=${PORT[$n]}
    if port_in_use "$p"; then
      echo "cluster-up: port $p ($n) on 127.0.0.1 is already in use; free it or set PERSRV_BASE_PORT (the cluster uses BASE .. BASE+6, now $BASE_PORT)" >&2
      exit 3
    fi
  done
  if port_in_use "$ZMQ_PORT"; then
    echo "cluster-up: port $ZMQ_PORT (broker ZeroMQ front door) on 127.0.0.1 is already in use; free it or set PERSRV_BASE_PORT (the front door uses BASE, now $BASE_PORT)" >&2
    exit 3
  fi
  if [ "$HTTP_PORT" -ne 0 ] && port_in_use "$HTTP_PORT"; then
    echo "cluster-up: port $HTTP_PORT (broker HTTP) on 127.0.0.1 is already in use; free it or set PERSRV_HTTP_PORT" >&2
    exit 3
  fi
}
check_ports

# ---- binaries ------------------------------------------------------------------------------
if [ "${PERSRV_SKIP_BUILD:-0}" != 1 ]; then
  "$ROOT/scripts/deps.sh"
  cmake -S "$ROOT" -B "$BIN" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$BIN" -j"$(nproc)" --target builder shard broker persrv profile
fi
B=$BIN/builder/builder
S=$BIN/shard/shard
BR=$BIN/broker/broker
PD=$BIN/profile/profile
for x in "$B" "$S" "$BR" "$PD"; do
  [ -x "$x" ] || die "$x is missing: build the tree (unset PERSRV_SKIP_BUILD) or point PERSRV_BIN_DIR at a build directory"
done
command -v curl >/dev/null || die "curl is required (scripts/deps.sh installs it)"

# ---- data: corpus (reused when its size matches) and the 2-shard cluster -------------------
# KEY names the corpus served: its size (the generated demo corpus) or a checksum of the
# PERSRV_CORPUS files; the build and the offline profiles are redone when it changes.
mkdir -p "$DIR"
if [ -n "$CORPUS" ]; then
  DATA=$CORPUS
  files=("$CORPUS/corpus.jsonl" "$CORPUS/embeddings.npy")
  [ -e "$CORPUS/clicks.tsv" ] && files+=("$CORPUS/clicks.tsv")
  KEY="corpus $(cat "${files[@]}" | cksum | tr ' ' -)"
  N=$(grep -c . "$CORPUS/corpus.jsonl")
else
  DATA=$DIR/data
  KEY="$N images=$IMAGES"
  if [ "$(cat "$DIR/.stickers" 2>/dev/null)" != "$KEY" ] || [ ! -s "$DIR/data/clicks.tsv" ]; then
    rm -rf "$DIR/data" "$DIR/index" "$DIR/cluster" "$DIR/cluster.tmp" "$DIR/.stickers"
    echo "cluster-up: generating a $N-sticker corpus into $DIR/data (pictures: $IMAGES)"
    "$B" generate --out "$DIR/data" --stickers "$N" --images "$IMAGES"
    echo "$KEY" >"$DIR/.stickers"
  fi
fi
# The pictures the corpus names by path, served at /images/ for the search page at /.
IMAGE_ROOT=()
if [ -n "${PERSRV_IMAGE_ROOT:-}" ]; then
  [ -d "$PERSRV_IMAGE_ROOT" ] || die "PERSRV_IMAGE_ROOT=$PERSRV_IMAGE_ROOT is not a directory"
  IMAGE_ROOT=(--image-root "$(abspath "$PERSRV_IMAGE_ROOT")")
elif [ -d "$DATA/images" ]; then
  IMAGE_ROOT=(--image-root "$DATA/images")
fi
CLICKS=()
[ -s "$DATA/clicks.tsv" ] && CLICKS=(--clicks "$DATA/clicks.tsv")
if [ "$(cat "$DIR/cluster/.stickers" 2>/dev/null)" != "$KEY" ] || [ ! -e "$DIR/cluster/cluster.json" ]; then
  rm -rf "$DIR/cluster" "$DIR/cluster.tmp" "$DIR/shards"
  echo "cluster-up: building 2 shards of $N stickers ($DATA) into $DIR/cluster"
  "$B" build --corpus "$DATA/corpus.jsonl" --embeddings "$DATA/embeddings.npy" "${CLICKS[@]}" \
    --out "$DIR/cluster.tmp" --shards 2
  echo "$KEY" >"$DIR/cluster.tmp/.stickers"
  mv "$DIR/cluster.tmp" "$DIR/cluster" # only a complete build is ever reused
fi

# ---- start the daemons -----------------------------------------------------------------------
check_ports # again: building can take minutes
mkdir -p "$RUN"
declare -A PID=()
up=0
# On any failure, stop what this run started (the pid files go with the processes).
on_exit() {
  [ $up = 1 ] && return
  local n
  for n in "${!PID[@]}"; do kill -TERM "${PID[$n]}" 2>/dev/null || true; done
  sleep 1
  for n in "${!PID[@]}"; do
    if kill -0 "${PID[$n]}" 2>/dev/null; then kill -KILL "${PID[$n]}" 2>/dev/null || true; fi
    rm -f "$RUN/$n.pid" "$RUN/$n.ready"
  done
}
trap on_exit EXIT

# Detach the daemons from this terminal's session: they outlive the script (and its Ctrl-C).
SETSID=()
command -v setsid >/dev/null && SETSID=(setsid)

# launch NAME PROGRAM ARGS...: start one daemon with its pid/ready files and its log.
launch() {
  local n=$1
  shift
  rm -f "$RUN/$n.ready" "$RUN/$n.pid"
  [ ! -e "$RUN/$n.log" ] || mv -f "$RUN/$n.log" "$RUN/$n.log.prev" # the previous run's
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) cluster-up: $*" >"$RUN/$n.log"
  "${SETSID[@]}" "$@" --pid-file "$RUN/$n.pid" --ready-file "$RUN/$n.ready" \
    </dev/null >>"$RUN/$n.log" 2>&1 &
  PID[$n]=$!
}

# wait_ready NAME...: wait until every NAME wrote its ready file, or fail pointing at its log.
wait_ready() {
  local n deadline=$((SECONDS + READY_TIMEOUT)) pending
  while :; do
    pending=0
    for n in "$@"; do
      [ -e "$RUN/$n.ready" ] && continue
      pending=1
      if ! kill -0 "${PID[$n]}" 2>/dev/null; then
        echo "cluster-up: $n exited before it was ready; the end of $RUN/$n.log:" >&2
        tail -n 15 "$RUN/$n.log" >&2
        exit 1
      fi
    done
    [ $pending = 0 ] && return 0
    if [ $SECONDS -ge $deadline ]; then
      for n in "$@"; do
        [ -e "$RUN/$n.ready" ] && continue
        echo "cluster-up: $n not ready after ${READY_TIMEOUT} s (PERSRV_READY_TIMEOUT); the end of $RUN/$n.log:" >&2
        tail -n 15 "$RUN/$n.log" >&2
      done
      exit 1
    fi
    sleep 0.1
  done
}

# One admin token for every daemon, made once and never printed.
if [ ! -s "$DIR/admin.token" ]; then
  (umask 077 && od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$DIR/admin.token.tmp" \
    && mv "$DIR/admin.token.tmp" "$DIR/admin.token")
fi
ADMIN=(--admin 127.0.0.1:0 --admin-token-file "$DIR/admin.token")

# CURVE on every ZeroMQ connection (README, "CURVE on the ZeroMQ sockets"): a key pair per
# daemon and one for local clients (the persrv CLI, builder push-profiles), made once in
# $DIR/keys; each daemon admits only the keys that need it; keys/servers (rewritten on every
# start: ports may move) names the key each endpoint must prove.
K=$DIR/keys
if [ ! -s "$K/client.key" ]; then
  rm -rf "$K.tmp"
  "$B" keys --out "$K.tmp" "${NAMES[@]}" client >/dev/null || die "builder keys failed"
  mv "$K.tmp" "$K"
fi
pubs() { for k in "$@"; do cat "$K/$k.pub"; done; }
pubs broker >"$K/shards.allow"
pubs broker profile1 client >"$K/profile0.allow"
pubs broker client >"$K/profile1.allow"
pubs client >"$K/broker.allow"
{
  for n in "${NAMES[@]}"; do
    case $n in
      broker) port=$ZMQ_PORT ;;
      *) port=${PORT[$n]} ;;
    esac
    echo "tcp://127.0.0.1:$port $(cut -d' ' -f1 "$K/$n.pub")"
  done
} >"$K/servers"
export PERSRV_CURVE_KEY=$K/client.key PERSRV_CURVE_SERVERS=$K/servers # this script's clients

TOPO=""
mkdir -p "$DIR/shards"
for n in shard0a shard0b shard1a shard1b; do
  launch "$n" "$S" --data "$DIR/shards/$n" --index "$DIR/cluster/${INDEX[$n]}" \
    --listen "tcp://127.0.0.1:${PORT[$n]}" --shard "${SHARDNO[$n]}" --shards 2 "${ADMIN[@]}" \
    --curve-key "$K/$n.key" --curve-allow "$K/shards.allow"
done
TOPO="tcp://127.0.0.1:${PORT[shard0a]}|tcp://127.0.0.1:${PORT[shard0b]}"
TOPO+=",tcp://127.0.0.1:${PORT[shard1a]}|tcp://127.0.0.1:${PORT[shard1b]}"
echo "cluster-up: starting 4 shards (ports ${PORT[shard0a]}..${PORT[shard1b]}), logs in $RUN"
# The profile service: a primary and a replica; the offline profiles go in once per corpus.
PEP="tcp://127.0.0.1:${PORT[profile0]}"
REP="tcp://127.0.0.1:${PORT[profile1]}"
mkdir -p "$DIR/profiles"
if [ "$(cat "$DIR/profiles/.stickers" 2>/dev/null)" != "$KEY" ]; then
  rm -rf "$DIR/profiles/primary" "$DIR/profiles/replica" "$DIR/profiles/.stickers"
fi
launch profile0 "$PD" --db "$DIR/profiles/primary" --listen "$PEP" "${ADMIN[@]}" \
  --curve-key "$K/profile0.key" --curve-allow "$K/profile0.allow"
launch profile1 "$PD" --db "$DIR/profiles/replica" --listen "$REP" --role replica --primary "$PEP" \
  "${ADMIN[@]}" --curve-key "$K/profile1.key" --curve-allow "$K/profile1.allow" \
  --curve-servers "$K/servers"
echo "cluster-up: starting the profile service (primary $PEP, replica $REP)"
wait_ready profile0 profile1
if [ "$(cat "$DIR/profiles/.stickers" 2>/dev/null)" != "$KEY" ]; then
  if [ ${#CLICKS[@]} -gt 0 ]; then
    echo "cluster-up: loading the offline profiles into the profile service"
    "$B" push-profiles --corpus "$DATA/corpus.jsonl" --embeddings "$DATA/embeddings.npy" \
      "${CLICKS[@]}" --primary "$PEP" || die "push-profiles failed"
  fi
  echo "$KEY" >"$DIR/profiles/.stickers"
fi
wait_ready shard0a shard0b shard1a shard1b
ZEP="tcp://127.0.0.1:$ZMQ_PORT"
launch broker "$BR" --shards "$TOPO" --profile-replicas "$REP|$PEP" --profile-primary "$PEP" \
  --http "127.0.0.1:$HTTP_PORT" --zmq "$ZEP" "${ADMIN[@]}" --curve-key "$K/broker.key" \
  --curve-allow "$K/broker.allow" --curve-servers "$K/servers" "${IMAGE_ROOT[@]}"
wait_ready broker
URL="http://$(sed -n 1p "$RUN/broker.ready")"
# The admin addresses, for `builder push` and `builder activate`.
adm() { printf '"http://%s"' "$(sed -n "$2p" "$RUN/$1.ready")"; }
cat >"$DIR/topology.json.tmp" <<TOPOLOGY
{"shards": [[$(adm shard0a 2), $(adm shard0b 2)], [$(adm shard1a 2), $(adm shard1b 2)]],
 "brokers": [$(adm broker 3)],
 "profile_primary": $(adm profile0 2)}
TOPOLOGY
mv "$DIR/topology.json.tmp" "$DIR/topology.json"
up=1
echo "cluster-up: broker ready at $URL and $ZEP (shards $TOPO)"

# ---- one sample query --------------------------------------------------------------------------
echo
echo "\$ curl '$URL/v1/search?q=$QUERY&user=u01&k=5'"
body=$(curl -sS -G --data-urlencode "q=$QUERY" --data-urlencode user=u01 --data-urlencode k=5 \
  "$URL/v1/search") || die "the sample query failed (is the broker up? see $RUN/broker.log)"
if command -v jq >/dev/null; then
  # Ids are strings in the reply; should one be a number, jq 1.6 (doubles) would round it.
  sed -E 's/"id":([0-9]+)/"id":"\1"/g' <<<"$body" | jq .
else
  echo "$body"
fi
ids=$(grep -oE '"id":"?[0-9]+' <<<"$body" | tr -dc '0-9\n') || true
nhits=$(grep -c . <<<"$ids") || true
echo "cluster-up: the sample query returned $nhits hits"
id=${ids%%$'\n'*}
# no hit: the corpus's first sticker (ids are text here: jq would round them)
[ -n "$id" ] || id=$(head -n 1 "$DATA/corpus.jsonl" | grep -oE '"id": *"?[0-9]+' | tr -dc '0-9')

# ---- the same through libpersrv: the persrv CLI over the ZeroMQ front door ------------------
echo
echo "\$ persrv search --broker $ZEP --user u01 --k 5 --explain '$QUERY'"
"$BIN/client/persrv" search --broker "$ZEP" --user u01 --k 5 --explain -- "$QUERY" \
  || die "the sample query through the persrv CLI failed (see $RUN/broker.log)"

# ---- one sample click: the profile primary records it, the replica follows --------------------
echo
echo "\$ curl -X POST $URL/v1/click -d '{\"user\": \"u01\", \"sticker_id\": \"$id\", \"query\": \"$QUERY\"}'"
curl -sS -X POST -H 'Content-Type: application/json' \
  --data "{\"user\": \"u01\", \"sticker_id\": \"$id\", \"query\": \"$QUERY\"}" "$URL/v1/click" \
  || die "the sample click failed (see $RUN/broker.log and $RUN/profile0.log)"
echo

stop="$ROOT/scripts/cluster-down.sh"
[ "$DIR" = "$ROOT/demo" ] || stop="PERSRV_DEMO_DIR=$DIR $stop"
cat <<MSG

The PerSRV cluster is up: 2 shards x 2 replicas, the profile service (primary $PEP,
replica $REP) and a broker at $URL (HTTP) and $ZEP (ZeroMQ, libpersrv); logs, pid and
ready files in $RUN. Open the search page in a browser: $URL/
Try:
  curl '$URL/v1/search?q=$QUERY&user=u01&k=5'
  curl '$URL/v1/search?q=thumbs%20up&user=u03&k=10&explain=1'
  curl '$URL/v1/stickers/$id'
  curl '$URL/metrics'          # also /healthz and /readyz
  curl $(sed -n 3p "$RUN/broker.ready")/healthz    # the broker's admin port: the version served
  curl -X POST $URL/v1/click -d '{"user": "u01", "sticker_id": "$id", "query": "$QUERY"}'
  export PERSRV_CURVE_KEY=$K/client.key PERSRV_CURVE_SERVERS=$K/servers   # the front door's CURVE keys
  $BIN/client/persrv search --broker $ZEP --user u01 '$QUERY'
  $BIN/client/persrv sticker --broker $ZEP $id
  $BIN/client/persrv health --broker $ZEP
Push a new build into it (README, "Versions: pushing a new build, rolling back"): admin addresses are in
$DIR/topology.json, the token in $DIR/admin.token.
Stop it with:
  $stop
MSG
