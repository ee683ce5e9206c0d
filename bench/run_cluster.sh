#!/usr/bin/env bash
# The cluster benchmark end to end: 4 shards (1 replica each) and a broker on loopback, loaded
# by bench_cluster at 1, 4 and 16 connections, and bench_engine on the single-node index of the
# same data, for the broker's cost over the engine (cluster p50 at 1 connection / engine p50).
# Prints JSON lines only (bench_engine, bench_cluster per level, then the ratio) on stdout;
# the ratio's line also holds floor_p50_ms: the cluster's p50 at one connection for a query
# that matches nothing (FLOOR_QUERY), what HTTP, the broker and the fan-out cost by themselves;
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
#   (default 3), CONNECTIONS (default 1,4,16), SEED (default 1), SHARD_WORKERS (default 0:
#   each shard searches on its server thread, no hand-over to a worker; four shards share two
#   cores),
#   BROKER_FLAGS (extra broker flags, e.g. "--deadline-ms 1000"), SHARD_FLAGS (extra shard
#   flags; default "--rcache-bytes 0": headline figures are without the recall cache, and a
#   1,000-query set repeated would be mostly cache hits; SHARD_FLAGS="" runs with it),
#   SKIP_ENGINE=1 (no bench_engine run and no cluster_vs_engine line: for alternating runs of
#   two builds, e.g. CONNECTIONS=16 REPEAT=1 REQUESTS=5000 SKIP_ENGINE=1, comparing their
#   cluster_cpu lines)
#   FLOOR_QUERY (default qzxjkvw7391: a text no sticker holds; see cluster_vs_engine below)
# After the cluster's levels, one more line, {"bench":"cluster_cpu",...}: the CPU time the
# broker, the shards and bench_cluster spent over the whole bench_cluster run (warm-up and every
# level; threads' schedstat, bash's `time`), per search the broker answered (its /metrics), and
# the cores the run got (CPU / wall): what bench/capacity_model.py --check compares with.
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
SHARD_WORKERS=${SHARD_WORKERS:-0}
FLOOR_QUERY=${FLOOR_QUERY:-qzxjkvw7391}
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
if [ "${SKIP_ENGINE:-0}" != 1 ]; then
  "$BE" --index "$SINGLE" --queries "$QUERIES" --seed "$SEED" --json >"$RUN/engine.json" \
    || fail "bench_engine"
  cat "$RUN/engine.json"
fi

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
  # shellcheck disable=SC2086 # SHARD_FLAGS is a list of flags
  "$S" --index "$CL/$(printf 'shard-%03d' $i)" --shard $i --shards $NSHARDS \
    --listen 'tcp://127.0.0.1:*' --workers "$SHARD_WORKERS" --ready-file "$RUN/$n.ready" \
    ${SHARD_FLAGS---rcache-bytes 0} 2>>"$RUN/$n.log" &
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

# cpu_ns PID: CPU time of every thread of PID so far, in nanoseconds.
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'; }
daemons_ns() { # broker and shards: "BROKER SHARDS"
  local s=0
  for ((i = 0; i < NSHARDS; i++)); do s=$((s + $(cpu_ns "${PID[s$i]}"))); done
  echo "$(cpu_ns "${PID[broker]}") $s"
}
searches() { # searches the broker answered so far (every status code), or -1 without curl
  command -v curl >/dev/null || { echo -1; return; }
  curl -fsS "$URL/metrics" | awk '/^persrv_requests_total\{door="[a-z]*",endpoint="search"/ {s += $2}
    END {printf "%.0f\n", s}'
}
read -r b0 s0 < <(daemons_ns)
q0=$(searches)
w0=$(date +%s.%N)
TIMEFORMAT='%U %S'
{ time "$BC" --url "$URL" --connections "$CONNECTIONS" --requests "$REQUESTS" \
  --queries "$QUERIES" --seed "$SEED" --repeat "$REPEAT" --users "$USERS" --json \
  >"$RUN/cluster.json" 2>>"$RUN/bench_cluster.log"; } 2>"$RUN/bc.time" || fail "bench_cluster"
w1=$(date +%s.%N)
read -r b1 s1 < <(daemons_ns)
q1=$(searches)
read -r cu cs < <(tail -n 1 "$RUN/bc.time")
cat "$RUN/cluster.json"
jq -cn --argjson b "$((b1 - b0))" --argjson s "$((s1 - s0))" --argjson cu "$cu" --argjson cs "$cs" \
  --argjson q "$((q1 - q0))" --argjson w0 "$w0" --argjson w1 "$w1" \
  --arg cpus "$(taskset -pc $$ 2>/dev/null | sed 's/.*: //')" '
  ($w1 - $w0) as $w |
  {bench: "cluster_cpu", shards: 4, searches: $q, wall_s: $w, cpus_allowed: $cpus,
   broker_cpu_s: ($b / 1e9), shards_cpu_s: ($s / 1e9), client_cpu_s: ($cu + $cs),
   cores_used: (($b / 1e9 + $s / 1e9 + $cu + $cs) / $w)} +
  if $q > 0 then {broker_cpu_us_per_query: ($b / 1e3 / $q), shards_cpu_us_per_query:
    ($s / 1e3 / $q), client_cpu_us_per_query: (($cu + $cs) * 1e6 / $q)} else {} end'

# ---- the broker's cost over the engine ------------------------------------------------------
[ "${SKIP_ENGINE:-0}" = 1 ] && exit 0
# The floor: the same requests at one connection asking a text that matches nothing, so every
# shard answers at once: what HTTP, the broker and the four round trips cost with no search.
"$BC" --url "$URL" --connections 1 --requests "$REQUESTS" --seed "$SEED" --repeat "$REPEAT" \
  --users "$USERS" --query "$FLOOR_QUERY" --json >"$RUN/floor.json" 2>>"$RUN/bench_cluster.log" \
  || fail "bench_cluster --query"
jq -cn --slurpfile e "$RUN/engine.json" --slurpfile c "$RUN/cluster.json" \
  --slurpfile f "$RUN/floor.json" '
  ($c | map(select(.connections == 1)) | first) as $c1 |
  if $c1 == null then {bench: "cluster_vs_engine", error: "no 1-connection level"} else
  {bench: "cluster_vs_engine", shards: 4, cluster_p50_ms: $c1.p50_ms,
   engine_p50_ms: $e[0].p50_ms, p50_ratio: ($c1.p50_ms / $e[0].p50_ms),
   p50_over_engine_ms: ($c1.p50_ms - $e[0].p50_ms), floor_p50_ms: $f[0].p50_ms,
   cluster_qps_1conn: $c1.qps, engine_qps: $e[0].qps} end'
