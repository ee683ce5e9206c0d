#!/usr/bin/env bash
# The cluster benchmark end to end: 4 shards (1 replica each) and a broker on loopback, loaded
# by bench_cluster at 1, 4 and 16 connections, and bench_engine on the single-node index of the
# same data, for the broker's cost over the engine (cluster p50 at 1 connection / engine p50).
# Prints JSON lines only (bench_engine, bench_cluster per level, then the ratio) on stdout;
# progress and daemon logs go to stderr / WORK/*.log.
#
# usage: run_cluster.sh DATA BIN [WORK]
#   DATA  directory from `builder generate` (corpus.jsonl, embeddings.npy, clicks.tsv)
#   BIN   build tree (BIN/builder/builder, BIN/shard/shard, BIN/broker/broker,
#         BIN/bench/bench_engine, BIN/bench/bench_cluster)
#   WORK  where the 4-shard build (WORK/cluster-4) and daemon logs go (default DATA); the
#         single-node index is DATA/index.bench if it exists, else WORK/single (built if
#         missing)
# environment: REQUESTS (per level and run, default 1000), QUERIES (default 1000), REPEAT
#   (default 3), CONNECTIONS (default 1,4,16), SEED (default 1), SHARD_WORKERS (default 1),
#   BROKER_FLAGS (extra broker flags, e.g. "--deadline-ms 1000")
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: run_cluster.sh DATA BIN [WORK]" >&2; exit 2; }
DATA=$(cd "$1" && pwd)
BIN=$(cd "$2" && pwd)
WORK=${3:-$DATA}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
REQUESTS=${REQUESTS:-1000}
QUERIES=${QUERIES:-1000}
REPEAT=${REPEAT:-3}
CONNECTIONS=${CONNECTIONS:-1,4,16}
SEED=${SEED:-1}
SHARD_WORKERS=${SHARD_WORKERS:-1}
NSHARDS=4
B=$BIN/builder/builder
S=$BIN/shard/shard
BR=$BIN/broker/broker
BE=$BIN/bench/bench_engine
BC=$BIN/bench/bench_cluster
for x in "$B" "$S" "$BR" "$BE" "$BC"; do
  [ -x "$x" ] || { echo "run_cluster: $x is not an executable" >&2; exit 2; }
done
for f in corpus.jsonl embeddings.npy clicks.tsv; do
  [ -e "$DATA/$f" ] || { echo "run_cluster: $DATA/$f is missing" >&2; exit 2; }
done
command -v jq >/dev/null || { echo "run_cluster: jq is required" >&2; exit 2; }

declare -A PID
RUN=$(mktemp -d "$WORK/run_cluster.XXXXXX")
cleanup() {
  for n in "${!PID[@]}"; do kill -TERM "${PID[$n]}" 2>/dev/null || true; done
  for n in "${!PID[@]}"; do wait "${PID[$n]}" 2>/dev/null || true; done
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() {
  echo "run_cluster: FAIL: $*" >&2
  for f in "$RUN"/*.log; do [ -e "$f" ] && { echo "--- $f"; tail -n 20 "$f"; } >&2; done
  exit 1
}
build() { # build OUT [builder build flags...]
  local out=$1
  shift
  echo "run_cluster: building $out" >&2
  "$B" build --corpus "$DATA/corpus.jsonl" --embeddings "$DATA/embeddings.npy" \
    --clicks "$DATA/clicks.tsv" --out "$out" "$@" >&2 || fail "builder build --out $out"
}

# ---- indexes ------------------------------------------------------------------------------
CL=$WORK/cluster-$NSHARDS
[ -e "$CL/cluster.json" ] || { rm -rf "$CL"; build "$CL" --shards $NSHARDS; }
SINGLE=$DATA/index.bench
[ -e "$SINGLE/CURRENT" ] || SINGLE=$WORK/single
[ -e "$SINGLE/CURRENT" ] || { rm -rf "$SINGLE"; build "$SINGLE"; }
USERS=$(cut -f1 "$DATA/clicks.tsv" | sort -u | head -n 64 | paste -sd, -)

# ---- the single-node engine (alone on the machine) ------------------------------------------
"$BE" --index "$SINGLE" --queries "$QUERIES" --seed "$SEED" --json >"$RUN/engine.json" \
  || fail "bench_engine"
cat "$RUN/engine.json"

# ---- the cluster ----------------------------------------------------------------------------
# wait_ready NAME FILE: until FILE exists, or fail when NAME's process has exited.
wait_ready() {
  local name=$1 file=$2
  for _ in $(seq 1 6000); do
    [ -e "$file" ] && return 0
    kill -0 "${PID[$name]}" 2>/dev/null || fail "$name exited before it was ready"
    sleep 0.05
  done
  fail "$name not ready after 300 s"
}
TOPO=""
for ((i = 0; i < NSHARDS; i++)); do
  n=$(printf 's%d' $i)
  # Port * lets ZeroMQ pick a free port; the ready file holds the bound endpoint.
  "$S" --index "$CL/$(printf 'shard-%03d' $i)" --shard $i --shards $NSHARDS \
    --listen 'tcp://127.0.0.1:*' --workers "$SHARD_WORKERS" --ready-file "$RUN/$n.ready" \
    2>>"$RUN/$n.log" &
  PID[$n]=$!
done
for ((i = 0; i < NSHARDS; i++)); do
  wait_ready "s$i" "$RUN/s$i.ready"
  TOPO+="${TOPO:+,}$(sed -n 1p "$RUN/s$i.ready")"
done
# shellcheck disable=SC2086 # BROKER_FLAGS is a list of flags
"$BR" --shards "$TOPO" --profiles "$CL/profiles" --http 127.0.0.1:0 \
  --ready-file "$RUN/broker.ready" ${BROKER_FLAGS:-} 2>>"$RUN/broker.log" &
PID[broker]=$!
wait_ready broker "$RUN/broker.ready"
URL="http://$(sed -n 1p "$RUN/broker.ready")"
echo "run_cluster: broker at $URL, shards $TOPO" >&2

"$BC" --url "$URL" --connections "$CONNECTIONS" --requests "$REQUESTS" --queries "$QUERIES" \
  --seed "$SEED" --repeat "$REPEAT" --users "$USERS" --json >"$RUN/cluster.json" \
  || fail "bench_cluster"
cat "$RUN/cluster.json"

# ---- the broker's cost over the engine ------------------------------------------------------
jq -cn --slurpfile e "$RUN/engine.json" --slurpfile c "$RUN/cluster.json" '
  ($c | map(select(.connections == 1)) | first) as $c1 |
  if $c1 == null then {bench: "cluster_vs_engine", error: "no 1-connection level"} else
  {bench: "cluster_vs_engine", shards: 4, cluster_p50_ms: $c1.p50_ms,
   engine_p50_ms: $e[0].p50_ms, p50_ratio: ($c1.p50_ms / $e[0].p50_ms),
   cluster_qps_1conn: $c1.qps, engine_qps: $e[0].qps} end'
