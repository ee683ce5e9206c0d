#!/usr/bin/env bash
# The push benchmark (issue 9): a full-scale build pushed into a running cluster of 4 shards x 2
# replicas and a broker on this machine, with search load before and during the push.
# Prints JSON lines only on stdout: the search load before the push, during it, the push
# itself (wall time, bytes moved, bytes/s, from `builder push --json`), the shards' memory
# (peak RSS of a replica holding two versions), and a summary with the p99 ratio.
#
# usage: run_push.sh DATA BIN [WORK]
#   DATA  directory from `builder generate` (corpus.jsonl, embeddings.npy, clicks.tsv)
#   BIN   build tree (builder, shard, broker, bench_cluster)
#   WORK  where the two builds (WORK/push-v1, WORK/push-v2) and the shards' data go
#         (default DATA)
# environment: CONNECTIONS (search load during the push, default 4), QUERIES (default 1000),
#   REQUESTS (per run of the "before" load, default 2000), REPEAT (default 3), SEED (default 1),
#   PARALLEL (builder push --parallel, default 4), BROKER_FLAGS (extra broker flags, e.g.
#   "--deadline-ms 1000"), KEEP=1 (keep WORK/run_push.* with the daemons' logs)
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: run_push.sh DATA BIN [WORK]" >&2; exit 2; }
DATA=$(cd "$1" && pwd)
BIN=$(cd "$2" && pwd)
WORK=${3:-$DATA}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
CONNECTIONS=${CONNECTIONS:-4}
QUERIES=${QUERIES:-1000}
REQUESTS=${REQUESTS:-2000}
REPEAT=${REPEAT:-3}
SEED=${SEED:-1}
PARALLEL=${PARALLEL:-4}
NSHARDS=4
B=$BIN/builder/builder
S=$BIN/shard/shard
BR=$BIN/broker/broker
BC=$BIN/bench/bench_cluster
for x in "$B" "$S" "$BR" "$BC"; do
  [ -x "$x" ] || { echo "run_push: $x is not an executable" >&2; exit 2; }
done
command -v jq >/dev/null || { echo "run_push: jq is required" >&2; exit 2; }

declare -A PID
RUN=$(mktemp -d "$WORK/run_push.XXXXXX")
cleanup() {
  for n in "${!PID[@]}"; do kill -TERM "${PID[$n]}" 2>/dev/null || true; done
  for n in "${!PID[@]}"; do wait "${PID[$n]}" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "run_push: kept $RUN" >&2; else rm -rf "$RUN"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() {
  echo "run_push: FAIL: $*" >&2
  for f in "$RUN"/*.log; do [ -e "$f" ] && { echo "--- $f"; tail -n 20 "$f"; } >&2; done
  exit 1
}
build() { # build OUT VERSION [builder build flags...]
  local out=$1 v=$2
  shift 2
  [ -e "$out/cluster.json" ] && [ "$(jq .version "$out/cluster.json")" = "$v" ] && return 0
  rm -rf "$out"
  echo "run_push: building $out (version $v)" >&2
  "$B" build --corpus "$DATA/corpus.jsonl" --embeddings "$DATA/embeddings.npy" \
    --clicks "$DATA/clicks.tsv" --out "$out" --shards $NSHARDS --version "$v" "$@" >&2 \
    || fail "builder build --out $out"
}
# Version 2 weighs the utility components differently: its answers differ.
build "$WORK/push-v1" 1
build "$WORK/push-v2" 2 --utility-w 1,0.5,2
V1=$WORK/push-v1
V2=$WORK/push-v2
USERS=$(cut -f1 "$DATA/clicks.tsv" | sort -u | head -n 64 | paste -sd, -)
od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$RUN/token"

wait_ready() { # NAME FILE
  for _ in $(seq 1 6000); do
    [ -e "$2" ] && return 0
    kill -0 "${PID[$1]}" 2>/dev/null || fail "$1 exited before it was ready"
    sleep 0.05
  done
  fail "$1 not ready after 300 s"
}
TOPO=""
ADMINS=""
for ((i = 0; i < NSHARDS; i++)); do
  for r in a b; do
    n=s$i$r
    "$S" --data "$RUN/$n" --index "$V1/$(printf 'shard-%03d' $i)" --shard $i --shards $NSHARDS \
      --listen 'tcp://127.0.0.1:*' --workers 1 --admin 127.0.0.1:0 --admin-token-file "$RUN/token" \
      --ready-file "$RUN/$n.ready" 2>>"$RUN/$n.log" &
    PID[$n]=$!
  done
done
shards_json="["
for ((i = 0; i < NSHARDS; i++)); do
  wait_ready "s${i}a" "$RUN/s${i}a.ready"
  wait_ready "s${i}b" "$RUN/s${i}b.ready"
  TOPO+="${TOPO:+,}$(sed -n 1p "$RUN/s${i}a.ready")|$(sed -n 1p "$RUN/s${i}b.ready")"
  shards_json+="$([ $i -gt 0 ] && echo ,)[\"http://$(sed -n 2p "$RUN/s${i}a.ready")\", \"http://$(sed -n 2p "$RUN/s${i}b.ready")\"]"
done
shards_json+="]"
# shellcheck disable=SC2086 # BROKER_FLAGS is a list of flags
"$BR" --shards "$TOPO" --profiles "$V1/profiles" --http 127.0.0.1:0 --admin 127.0.0.1:0 \
  --admin-token-file "$RUN/token" --ready-file "$RUN/broker.ready" ${BROKER_FLAGS:-} \
  2>>"$RUN/broker.log" &
PID[broker]=$!
wait_ready broker "$RUN/broker.ready"
URL="http://$(sed -n 1p "$RUN/broker.ready")"
echo "{\"shards\": $shards_json, \"brokers\": [\"http://$(sed -n 3p "$RUN/broker.ready")\"]}" \
  >"$RUN/topology.json"
echo "run_push: broker at $URL, 4 shards x 2 replicas" >&2

rss_kb() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
load() { # OUTFILE REQUESTS REPEAT
  "$BC" --url "$URL" --connections "$CONNECTIONS" --requests "$2" --queries "$QUERIES" \
    --seed "$SEED" --repeat "$3" --users "$USERS" --json >"$1" 2>>"$RUN/bench.log"
}

# ---- before: the same load with nothing else going on ---------------------------------------
load "$RUN/before.json" "$REQUESTS" "$REPEAT" || fail "bench_cluster (before)"
jq -c '{bench: "push_search_before"} + .' "$RUN/before.json"
rss_before=$(rss_kb "${PID[s0a]}" VmRSS)

# ---- during: load runs back to back until the push is over ----------------------------------
# The pusher runs at nice 10, as it would beside a serving cluster (in production it runs on
# another machine; here it shares the two cores with the shards).
: >"$RUN/during.jsonl"
(
  while [ ! -e "$RUN/push.done" ]; do
    load "$RUN/one.json" 500 1 || exit 1
    cat "$RUN/one.json" >>"$RUN/during.jsonl"
  done
) &
loader=$!
t0=$(date +%s.%N)
PERSRV_ADMIN_TOKEN=$(cat "$RUN/token") nice -n 10 "$B" push --build "$V2" --topology "$RUN/topology.json" \
  --parallel "$PARALLEL" --json >"$RUN/push.json" 2>>"$RUN/push.log" || {
  touch "$RUN/push.done"
  fail "builder push"
}
touch "$RUN/push.done"
t1=$(date +%s.%N)
wait $loader || fail "bench_cluster during the push"
jq -c --argjson wall "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')" '{bench: "push", wall_s: $wall} + .' \
  "$RUN/push.json"

# Memory: every replica now holds both versions (the old one stays for a rollback).
peak=0
for n in "${!PID[@]}"; do
  [ "$n" = broker ] && continue
  hwm=$(rss_kb "${PID[$n]}" VmHWM)
  [ "$hwm" -gt "$peak" ] && peak=$hwm
done
rss_after=$(rss_kb "${PID[s0a]}" VmRSS)
held=$(curl -s "http://$(sed -n 2p "$RUN/s0a.ready")/healthz" | jq '.versions | length')
jq -cn --argjson before "$rss_before" --argjson after "$rss_after" --argjson peak "$peak" \
  --argjson held "$held" \
  '{bench: "push_shard_memory", versions_held: $held, rss_one_version_mb: ($before / 1024),
    rss_two_versions_mb: ($after / 1024), peak_rss_mb: ($peak / 1024)}'

# ---- the search load during the push, and the ratio -----------------------------------------
jq -cs '{bench: "push_search_during", runs: length, requests: (map(.requests // 0) | add),
         errors: (map(.errors) | add), partial: (map(.partial) | add),
         p50_ms: (map(.p50_ms) | sort | .[length / 2 | floor]),
         p99_ms: (map(.p99_ms) | sort | .[length / 2 | floor]),
         p99_max_ms: (map(.p99_ms) | max), qps: (map(.qps) | sort | .[length / 2 | floor])}' \
  "$RUN/during.jsonl" | tee "$RUN/during.json"
jq -cn --slurpfile b "$RUN/before.json" --slurpfile d "$RUN/during.json" \
  '{bench: "push_summary", p99_before_ms: $b[0].p99_ms, p99_during_ms: $d[0].p99_ms,
    p99_ratio: ($d[0].p99_ms / $b[0].p99_ms), errors_during: $d[0].errors,
    partial_during: $d[0].partial}'
