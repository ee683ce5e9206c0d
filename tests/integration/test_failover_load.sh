#!/usr/bin/env bash
# DESIGN invariant 4 under load: killing one replica of a shard costs no request beyond its
# deadline, and a shard with every replica dead makes answers partial, never errors.
# A small generated corpus in 2 shards; shard 0 has 2 replicas (b, the survivor, searching on
# its server thread: --workers 0), shard 1 one; a broker with
# deadline-ms D and 1 retry. load_client (libpersrv, 4 threads) sends bounded closed-loop load
# through the broker's ZeroMQ front door, and bench_cluster's HTTP load runs beside it:
#   1. 3,000 searches; 0.5 s in, replica a of shard 0 is killed with SIGKILL: every answer must
#      be complete (the other replica takes over), none an error, none slower than the
#      failover budget D × 2 (+ slack for a loaded 2-core machine); the HTTP load sees no
#      non-200 answer and no partial one;
#   2. replica b is killed too: 2,000 more searches are all partial, naming shard 0 only,
#      none an error (no 5xx), none over the budget; HTTP answers are 200 and partial.
# usage: test_failover_load.sh BUILDER SHARD SHARD_CLIENT BROKER LOAD_CLIENT BENCH_CLUSTER
# PS_TEST_DEADLINE_MS (default 200) and PS_TEST_SLACK_MS (default 800) set the budget.
set -euo pipefail
B=$1
S=$2
C=$3
BR=$4
L=$5
HB=$6
D=${PS_TEST_DEADLINE_MS:-200}
SLACK=${PS_TEST_SLACK_MS:-800}
BUDGET=$((D * 2 + SLACK))
. "$(dirname "$0")/lib.sh"
ps_test_init failover_load
START=$SECONDS

$B generate --out "$T/data" --stickers 20000 --dim 32 --users 4 --clicks 3000 --pairs 500 \
  --queries 300 --no-progress
$B build --corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy" \
  --clicks "$T/data/clicks.tsv" --out "$T/cluster" --shards 2 >"$T/build.out" 2>&1 \
  || fail "build: $(cat "$T/build.out")"
cut -f2 "$T/data/clicks.tsv" | sed '/^[[:space:]]*$/d' | sort -u >"$T/queries"
[ "$(wc -l <"$T/queries")" -ge 100 ] || fail "too few queries"

start_shard s0a --workers 1 --index "$T/cluster/shard-000" --shard 0 --shards 2
start_shard s0b --workers 0 --index "$T/cluster/shard-000" --shard 0 --shards 2
start_shard s1 --workers 2 --index "$T/cluster/shard-001" --shard 1 --shards 2
start_broker broker "${EP[s0a]}|${EP[s0b]},${EP[s1]}" --profiles "$T/cluster/profiles" \
  --deadline-ms "$D" --retries 1 --health-interval-ms 200
echo "broker at $URL and $ZEP, deadline $D ms, budget $BUDGET ms"

# http_load N OUT: bench_cluster over HTTP (2 connections), JSON line to OUT.
http_load() {
  "$HB" --url "$URL" --connections 2 --requests "$1" --repeat 1 --warmup 0 --json >"$2" 2>"$2.err"
}

# ---- 1. one replica killed under load -----------------------------------------------------
http_load 1500 "$T/http1.json" &
hpid=$!
"$L" "$ZEP" "$T/queries" 3000 4 u01,u02,u03,u04,- "$BUDGET" complete >"$T/load1.out" 2>&1 &
lpid=$!
sleep 0.5
kill -0 $lpid 2>/dev/null || fail "the load ended before the kill: $(cat "$T/load1.out")"
kill -9 "${PID[s0a]}"
unset "PID[s0a]"
rc=0
wait $lpid || rc=$?
cat "$T/load1.out"
[ $rc -eq 0 ] || fail "one replica killed under load: requests failed, were partial or over budget"
wait $hpid || fail "HTTP load: $(cat "$T/http1.json.err")"
jq -e '.errors == 0 and .partial == 0' "$T/http1.json" >/dev/null \
  || fail "HTTP load with one replica killed: $(cat "$T/http1.json")"
echo "  HTTP beside it: $(jq -c '{requests, errors, partial, p99_ms}' "$T/http1.json")"
grep -q 'event=replica_down shard=0 replica=0' "$T/broker.log" || fail "the broker never saw replica 0 down"

# ---- 2. every replica of shard 0 dead: partial answers, never errors ---------------------------
kill -9 "${PID[s0b]}"
unset "PID[s0b]"
http_load 1000 "$T/http2.json" &
hpid=$!
rc=0
"$L" "$ZEP" "$T/queries" 2000 4 u01,u02,- "$BUDGET" partial:0 >"$T/load2.out" 2>&1 || rc=$?
cat "$T/load2.out"
[ $rc -eq 0 ] || fail "shard 0 dead: answers were not all partial naming shard 0, or failed"
wait $hpid || fail "HTTP load: $(cat "$T/http2.json.err")"
jq -e '.errors == 0 and .partial == .requests' "$T/http2.json" >/dev/null \
  || fail "HTTP load with shard 0 dead: $(cat "$T/http2.json")"
echo "  HTTP beside it: $(jq -c '{requests, errors, partial, p99_ms}' "$T/http2.json")"

stop broker
stop s1
echo "test_failover_load: all checks passed in $((SECONDS - START)) s"
