#!/usr/bin/env bash
# The capacity model's measurements: what one query costs in CPU time, part by part, so that
# bench/capacity_model.py can predict a cluster's QPS from them. Prints JSON lines only on
# stdout (feed them to capacity_model.py --measured); progress goes to stderr.
#
#  1. A shard's cost against its slice size: for N in SHARDS (default 1,2,4,8,16) the full
#     corpus DATA is built into N slices (WORK/cluster-N) and bench_shard times ps_search_shard
#     (at the depth the broker asks of N shards first, ps_shard_depth(100, N): 100 for N = 1;
#     the broker's analyzed tokens, personalized, recall cache off) on slice 0, in
#     thread CPU time: {"bench":"shard","shards":N,"slice_stickers":...,"cpu_us_per_query":...}.
#     Each build is deleted after its measurement except WORK/cluster-4, the build
#     run_cluster.sh then reuses (KEEP=1 keeps them all; a full build needs ~1.2 GB of disk).
#  2. The broker's cost against fan-out width: for N in SHARDS, a small corpus (SMALL, default
#     WORK/small: `builder generate --stickers 50000`, generated if missing) is built into N
#     slices and served by N shards (SHARD_WORKERS each, default 0 as in run_cluster.sh: the
#     server thread searches; recall cache off) and a broker; a warm-up
#     run, then RUNS (default 5) runs of bench_cluster at CONNECTIONS (default 8) connections
#     and REQUESTS (default 4000) requests, personalized as run_cluster.sh. Each process's CPU
#     time is summed over its threads from /proc/PID/task/*/schedstat (nanoseconds) before and
#     after each run; the load generator's from bash's `time`. Per query, medians over runs:
#     {"bench":"fanout","shards":N,"broker_cpu_us_per_query":...,"shards_cpu_us_per_query":...,
#      "client_cpu_us_per_query":...,"shard_search_cpu_us_per_query":...} where the last is
#     bench_shard on slice 0 of the same small build: what the shards spent beyond it is the
#     per-request cost of the wire (ZeroMQ, protobuf) at the shard.
#
# usage: run_capacity.sh DATA BIN [WORK] > measured.jsonl
#   DATA  the full-scale corpus (corpus.jsonl, embeddings.npy, clicks.tsv); only read
#   BIN   build tree (builder, shard, broker, bench_shard, bench_cluster)
#   WORK  where builds go (default /tmp/capacity)
# environment: SHARDS (1,2,4,8,16), QUERIES (1000), REPEAT (bench_shard passes, 5), RUNS (5),
#   REQUESTS (4000), CONNECTIONS (8), SEED (1), KEEP (0), SKIP_SLICES / SKIP_FANOUT (0: run
#   both parts), SMALL (WORK/small), SHARD_WORKERS (0)
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: run_capacity.sh DATA BIN [WORK]" >&2; exit 2; }
DATA=$(cd "$1" && pwd)
BIN=$(cd "$2" && pwd)
WORK=${3:-/tmp/capacity}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
SHARDS=${SHARDS:-1,2,4,8,16}
QUERIES=${QUERIES:-1000}
REPEAT=${REPEAT:-5}
RUNS=${RUNS:-5}
REQUESTS=${REQUESTS:-4000}
CONNECTIONS=${CONNECTIONS:-8}
SEED=${SEED:-1}
KEEP=${KEEP:-0}
SMALL=${SMALL:-$WORK/small}
B=$BIN/builder/builder
S=$BIN/shard/shard
BR=$BIN/broker/broker
BS=$BIN/bench/bench_shard
BC=$BIN/bench/bench_cluster
for x in "$B" "$S" "$BR" "$BS" "$BC"; do
  [ -x "$x" ] || { echo "run_capacity: $x is not an executable" >&2; exit 2; }
done
command -v jq >/dev/null || { echo "run_capacity: jq is required" >&2; exit 2; }
IFS=, read -r -a NS <<<"$SHARDS"

declare -A PID
RUN=$(mktemp -d "$WORK/run_capacity.XXXXXX")
stop_all() {
  local p
  for p in "${!PID[@]}"; do kill -TERM "${PID[$p]}" 2>/dev/null || true; done
  for p in "${!PID[@]}"; do wait "${PID[$p]}" 2>/dev/null || true; done
  PID=()
}
cleanup() {
  stop_all
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() {
  echo "run_capacity: FAIL: $*" >&2
  for f in "$RUN"/*.log; do [ -e "$f" ] && { echo "--- $f"; tail -n 20 "$f"; } >&2; done
  exit 1
}
build() { # build SRC OUT N
  local src=$1 out=$2 n=$3
  [ -e "$out/cluster.json" ] && return 0
  rm -rf "$out"
  echo "run_capacity: building $out ($n shards)" >&2
  "$B" build --corpus "$src/corpus.jsonl" --embeddings "$src/embeddings.npy" \
    --clicks "$src/clicks.tsv" --out "$out" --shards "$n" >&2 || fail "builder build --out $out"
}
# cpu_ns PID: CPU time of every thread of PID so far, in nanoseconds.
cpu_ns() {
  cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'
}

# ---- 1. a shard's cost against its slice size ---------------------------------------------
if [ "${SKIP_SLICES:-0}" = 0 ]; then
  for n in "${NS[@]}"; do
    CL=$WORK/cluster-$n
    build "$DATA" "$CL" "$n"
    "$BS" --index "$CL/shard-000" --profiles "$CL/profiles" --queries "$QUERIES" --seed "$SEED" \
      --repeat "$REPEAT" --shards "$n" --json >"$RUN/shard.json" \
      || fail "bench_shard on $CL/shard-000"
    jq -c --argjson n "$n" --argjson c "$(jq .stickers "$CL/cluster.json")" \
      '{bench, shards: $n, corpus_stickers: $c} + .' "$RUN/shard.json"
    [ "$KEEP" = 1 ] || [ "$n" = 4 ] || rm -rf "$CL"
  done
fi

# ---- 2. the broker's cost against fan-out width -------------------------------------------
[ "${SKIP_FANOUT:-0}" = 0 ] || exit 0
if [ ! -e "$SMALL/corpus.jsonl" ]; then
  echo "run_capacity: generating $SMALL" >&2
  "$B" generate --out "$SMALL" --stickers 50000 --seed "$SEED" >&2 || fail "builder generate"
fi
USERS=$(cut -f1 "$SMALL/clicks.tsv" | sort -u | head -n 64 | paste -sd, -)
wait_ready() { # NAME FILE
  local name=$1 file=$2
  for _ in $(seq 1 6000); do
    [ -e "$file" ] && return 0
    kill -0 "${PID[$name]}" 2>/dev/null || fail "$name exited before it was ready"
    sleep 0.05
  done
  fail "$name not ready after 300 s"
}
for n in "${NS[@]}"; do
  CL=$WORK/small-$n
  build "$SMALL" "$CL" "$n"
  "$BS" --index "$CL/shard-000" --profiles "$CL/profiles" --queries "$QUERIES" --seed "$SEED" \
    --repeat "$REPEAT" --shards "$n" --json >"$RUN/small-shard.json" \
    || fail "bench_shard on $CL/shard-000"
  rm -f "$RUN"/*.ready
  TOPO=""
  for ((i = 0; i < n; i++)); do
    "$S" --index "$CL/$(printf 'shard-%03d' $i)" --shard $i --shards "$n" \
      --listen 'tcp://127.0.0.1:*' --workers "${SHARD_WORKERS:-0}" --rcache-bytes 0 \
      --ready-file "$RUN/s$i.ready" \
      2>>"$RUN/s$i.log" &
    PID[s$i]=$!
  done
  for ((i = 0; i < n; i++)); do
    wait_ready "s$i" "$RUN/s$i.ready"
    TOPO+="${TOPO:+,}$(sed -n 1p "$RUN/s$i.ready")"
  done
  "$BR" --shards "$TOPO" --profiles "$CL/profiles" --http 127.0.0.1:0 \
    --ready-file "$RUN/broker.ready" 2>>"$RUN/broker.log" &
  PID[broker]=$!
  wait_ready broker "$RUN/broker.ready"
  URL="http://$(sed -n 1p "$RUN/broker.ready")"
  bc_run() { # bench_cluster for REQUESTS requests at CONNECTIONS, no warm-up of its own
    "$BC" --url "$URL" --connections "$CONNECTIONS" --requests "$REQUESTS" --queries "$QUERIES" \
      --seed "$SEED" --repeat 1 --warmup 0 --users "$USERS" --json >"$RUN/bc.json" \
      2>>"$RUN/bench_cluster.log" || fail "bench_cluster against $n shards"
  }
  bc_run # warm-up
  : >"$RUN/runs.jsonl"
  for ((r = 0; r < RUNS; r++)); do
    b0=$(cpu_ns "${PID[broker]}")
    s0=0
    for ((i = 0; i < n; i++)); do s0=$((s0 + $(cpu_ns "${PID[s$i]}"))); done
    TIMEFORMAT='%U %S'
    { time bc_run; } 2>"$RUN/time"
    b1=$(cpu_ns "${PID[broker]}")
    s1=0
    for ((i = 0; i < n; i++)); do s1=$((s1 + $(cpu_ns "${PID[s$i]}"))); done
    read -r cu cs < <(tail -n 1 "$RUN/time")
    jq -c --argjson b "$((b1 - b0))" --argjson s "$((s1 - s0))" --argjson cu "$cu" \
      --argjson cs "$cs" '{qps, errors, requests,
        broker: ($b / 1e3 / .requests), shards: ($s / 1e3 / .requests),
        client: (($cu + $cs) * 1e6 / .requests)}' "$RUN/bc.json" >>"$RUN/runs.jsonl"
  done
  stop_all
  jq -cs --argjson n "$n" --slurpfile sh "$RUN/small-shard.json" '
    def med: sort | if length % 2 == 1 then .[length / 2 | floor]
                    else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    {bench: "fanout", shards: $n, slice_stickers: $sh[0].slice_stickers,
     connections: (.[0].connections // null), runs: length,
     requests_per_run: .[0].requests, errors: (map(.errors) | add),
     qps: (map(.qps) | med),
     broker_cpu_us_per_query: (map(.broker) | med),
     shards_cpu_us_per_query: (map(.shards) | med),
     client_cpu_us_per_query: (map(.client) | med),
     shard_search_cpu_us_per_query: $sh[0].cpu_us_per_query,
     shard_hits_per_query: $sh[0].hits_per_query,
     broker_cpu_us_runs: map(.broker)}' "$RUN/runs.jsonl" \
    | jq -c --argjson c "$CONNECTIONS" '.connections = $c'
  [ "$KEEP" = 1 ] || rm -rf "$CL"
done
