#!/usr/bin/env bash
# Issue 13 must-show 5: deadlines, failover and partial answers across "hosts". Each process
# sits on a loopback address of its own and the broker reaches every shard through a
# fault_proxy (a TCP proxy whose faults a control file switches at run time; this kernel has no
# tc netem):
#
#   shard 0 replica a  127.0.0.2  <- proxy 127.0.0.12 <-+
#   shard 0 replica b  127.0.0.3  <- proxy 127.0.0.13 <-+-- broker 127.0.0.6 (HTTP, ZeroMQ,
#   shard 1 replica a  127.0.0.4  <- proxy 127.0.0.14 <-+   admin; connects from 127.0.0.6)
#   shard 1 replica b  127.0.0.5  <- proxy 127.0.0.15 <-+
#   reference broker   127.0.0.7, straight to the shards
#
# A generated corpus of 3,000 stickers in 2 shards; the broker has deadline-ms D and 1 retry,
# so an answer is due within D x 2; "within the budget" below is D x 2 + SLACK (loose: a loaded
# 2-core machine; the check is that nothing waits forever, not a benchmark). It shows:
#   1. answers through the proxies equal the reference broker's (ids, order, every score),
#      with no fault and with 5 ms +- 2 ms latency on every chunk, each way, of every proxy;
#      every connection a proxy accepted came from the broker's address;
#   2. one replica stalled (it hangs: bytes held, nothing lost): every answer complete, within
#      the budget (the broker fails over to the other replica); it comes back once cleared;
#   3. both replicas of shard 1 stalled, then reset (RST on every connection, new ones too):
#      every answer 200 and partial, naming shard 1, within the budget; complete again once
#      cleared;
#   4. one replica at a time reset, black-holed (drop: bytes vanish, connections stay open),
#      closed (FIN) and down (reset + connects refused): answers complete within the budget;
#      once cleared the replica serves again (its partner stalled, answers are still complete);
#   5. with every fault cleared, answers equal the reference broker's again.
# usage: test_multihost.sh BUILDER SHARD SHARD_CLIENT BROKER FAULT_PROXY
# PS_TEST_DEADLINE_MS (default 1000: a healthy replica on a loaded machine answers within it) and
# PS_TEST_SLACK_MS (default 3000) set the budget.
# PS_TEST_ISSUE13=1 adds what issue 13 asks of the broker and today's broker does not do (so
# ctest leaves it out): a replica whose connections are reset or refused is marked down on the
# transport error, so no search waits out a deadline on it (today the first search after the
# fault waits one deadline, then fails over: broker/pool.c treats a refusal as silence).
set -euo pipefail
B=$1
S=$2
C=$3
BR=$4
FP=$5
D=${PS_TEST_DEADLINE_MS:-1000}
SLACK=${PS_TEST_SLACK_MS:-3000}
BUDGET=$((D * 2 + SLACK))
LAT="latency 5 2"
ISSUE13=${PS_TEST_ISSUE13:-0}
. "$(dirname "$0")/lib.sh"
ps_test_init multihost
START=$SECONDS
command -v curl >/dev/null || fail "curl is required (scripts/deps.sh installs it)"
command -v jq >/dev/null || fail "jq is required (scripts/deps.sh installs it)"

$B generate --out "$T/data" --stickers 3000 --dim 32 --users 4 --clicks 1500 --pairs 300 \
  --queries 200 --no-progress
$B build --corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy" \
  --clicks "$T/data/clicks.tsv" --out "$T/cluster" --shards 2 >"$T/build.out" 2>&1 \
  || fail "build: $(cat "$T/build.out")"
cut -f2 "$T/data/clicks.tsv" | sed '/^[[:space:]]*$/d' | sort -u | head -n 20 >"$T/queries"
[ "$(wc -l <"$T/queries")" -ge 10 ] || fail "too few queries"
mapfile -t QUERIES <"$T/queries"
mapfile -t USERS < <(cut -f1 "$T/data/clicks.tsv" | sort -u)

# ---- the hosts -------------------------------------------------------------------------------
REPLICAS=(s0a s0b s1a s1b)
declare -A HOST=([s0a]=127.0.0.2 [s0b]=127.0.0.3 [s1a]=127.0.0.4 [s1b]=127.0.0.5)
declare -A PHOST=([s0a]=127.0.0.12 [s0b]=127.0.0.13 [s1a]=127.0.0.14 [s1b]=127.0.0.15)
declare -A PEP
BHOST=127.0.0.6
seed=1
for r in "${REPLICAS[@]}"; do
  sh=${r:1:1}
  PS_HOST=${HOST[$r]} start_shard "$r" --workers 1 --index "$T/cluster/shard-00$sh" --shard "$sh" \
    --shards 2 --admin "${HOST[$r]}:0"
  # its proxy, on an address of its own, faults off (an empty control file)
  : >"$T/$r.ctl"
  "$FP" --listen "${PHOST[$r]}:0" --to "${EP[$r]#tcp://}" --ready-file "$T/p$r.ready" \
    --control "$T/$r.ctl" --stats "$T/$r.stats" --seed $seed 2>>"$T/p$r.log" &
  PID["p$r"]=$!
  seed=$((seed + 1))
  for _ in $(seq 1 200); do
    [ -e "$T/p$r.ready" ] && break
    kill -0 "${PID["p$r"]}" 2>/dev/null || fail "proxy of $r exited before it was ready"
    sleep 0.05
  done
  [ -e "$T/p$r.ready" ] || fail "proxy of $r not ready after 10 s"
  PEP[$r]="tcp://$(cat "$T/p$r.ready")"
done
# The broker connects from its own address: ZeroMQ's "tcp://SOURCE:0;HOST:PORT".
via() { echo "tcp://$BHOST:0;${PEP[$1]#tcp://}"; }
TOPO="$(via s0a)|$(via s0b),$(via s1a)|$(via s1b)"
PS_HOST=$BHOST start_broker broker "$TOPO" --profiles "$T/cluster/profiles" --deadline-ms "$D" \
  --retries 1 --health-interval-ms 1000 --admin "$BHOST:0"
PURL=$URL
PS_HOST=127.0.0.7 start_broker direct \
  "${EP[s0a]}|${EP[s0b]},${EP[s1a]}|${EP[s1b]}" --profiles "$T/cluster/profiles" \
  --deadline-ms 5000 --retries 1 --admin 127.0.0.7:0
DURL=$URL
echo "broker at $PURL through the proxies, reference broker at $DURL; budget $BUDGET ms"

# fault R SPEC: the faults SPEC (control file lines) on the proxy of R, in force on return.
fault() {
  printf '%b\n' "$2" >"$T/$1.ctl.tmp"
  mv "$T/$1.ctl.tmp" "$T/$1.ctl"
  for _ in $(seq 1 500); do
    cmp -s "$T/$1.ctl" "$T/$1.ctl.applied" && return 0
    sleep 0.02
  done
  fail "proxy of $1 did not apply '$2': $(cat "$T/$1.ctl.applied" 2>/dev/null)"
}
# stat R NAME: a figure of the proxy of R (its stats file lags by up to 100 ms)
stat() { awk -v k="$2" '$1 == k { print $2 }' "$T/$1.stats"; }

# ask URL I: search number I (query I/2 of the list, no user for even I, a user for odd I);
# the body to $T/body, prints "STATUS SECONDS".
ask() {
  local q=${QUERIES[$(($2 / 2 % ${#QUERIES[@]}))]} u=()
  [ $(($2 % 2)) -eq 1 ] && u=(--data-urlencode "user=${USERS[$(($2 / 2 % ${#USERS[@]}))]}")
  curl -s -m 60 -o "$T/body" -w '%{http_code} %{time_total}\n' -G "$1/v1/search" \
    --data-urlencode "q=$q" --data-urlencode k=10 "${u[@]}" || echo "curl_failed_$? 0"
}
HITS='[.hits[] | [.id, .score, .recall, .relevance, .utility, .preference, .centroid]] | tojson'
N=$((${#QUERIES[@]} * 2))

# ---- 1. answers through the proxies equal the direct ones -------------------------------------
for i in $(seq 0 $((N - 1))); do
  read -r st _ < <(ask "$DURL" "$i")
  [ "$st" = 200 ] && jq -e '.partial == false and (.hits | length) > 0' "$T/body" >/dev/null \
    || fail "reference search $i: status $st $(head -c 300 "$T/body")"
  jq -r "$HITS" "$T/body" >>"$T/want"
done
# compare TAG: every search through the proxies complete and equal to the reference
compare() {
  local i st secs total=0
  : >"$T/got"
  for i in $(seq 0 $((N - 1))); do
    read -r st secs < <(ask "$PURL" "$i")
    [ "$st" = 200 ] && jq -e '.partial == false and .shards.successful == 2' "$T/body" >/dev/null \
      || fail "$1: search $i: status $st $(head -c 300 "$T/body")"
    jq -r "$HITS" "$T/body" >>"$T/got"
    total=$(awk -v a="$total" -v b="$secs" 'BEGIN { print a + b }')
  done
  cmp -s "$T/want" "$T/got" || fail "$1: answers differ from the reference broker's:
$(diff "$T/want" "$T/got" | head -n 6 | cut -c 1-200)"
  echo "  $1: $N searches equal the reference broker's (mean $(awk -v t="$total" -v n="$N" \
    'BEGIN { printf "%.1f", t * 1000 / n }') ms a search)"
}
compare "no fault"
for r in "${REPLICAS[@]}"; do fault "$r" "$LAT"; done
sleep 0.2
declare -A DELAYED
for r in "${REPLICAS[@]}"; do DELAYED[$r]=$(stat "$r" delayed); done
compare "latency 5 +- 2 ms on every proxy"
sleep 0.2
for r in "${REPLICAS[@]}"; do
  [ "$(stat "$r" delayed)" -gt "${DELAYED[$r]}" ] || fail "proxy of $r delayed nothing"
  grep -q 'event=accept' "$T/p$r.log" || fail "proxy of $r accepted no connection"
  ! grep 'event=accept' "$T/p$r.log" | grep -vq "peer=$BHOST:" \
    || fail "proxy of $r accepted a connection from another address than the broker's:
$(grep 'event=accept' "$T/p$r.log" | grep -v "peer=$BHOST:" | head -n 3)"
done
echo "  every proxy delayed chunks; every connection they accepted came from $BHOST"

# ---- helpers for the faults ------------------------------------------------------------------
# expect KIND TAG COUNT [transport]: COUNT searches through the proxies, each 200 within the
# budget and complete (KIND complete) or partial naming shard 1 only (KIND partial1); prints the
# slowest. "transport": the fault is one the broker can see (reset, refused): with
# PS_TEST_ISSUE13=1, no search may wait out a deadline.
expect() {
  local kind=$1 tag=$2 count=$3 i st secs ms max=0
  for i in $(seq 0 $((count - 1))); do
    read -r st secs < <(ask "$PURL" $((i + 7)))
    [ "$st" = 200 ] || fail "$tag: search $i: status $st $(head -c 300 "$T/body")"
    ms=$(awk -v s="$secs" 'BEGIN { printf "%d", s * 1000 }')
    [ "$ms" -le "$BUDGET" ] || fail "$tag: search $i took $ms ms, over the budget of $BUDGET ms"
    [ "$ms" -gt "$max" ] && max=$ms
    if [ "$kind" = complete ]; then
      jq -e '.partial == false and .shards.successful == 2' "$T/body" >/dev/null \
        || fail "$tag: search $i not complete: $(head -c 300 "$T/body")"
    else
      jq -e '.partial == true and .shards.successful == 1 and .shards.failed == 1 and
             .shards.failures[0].shard == 1 and (.hits | length) > 0' "$T/body" >/dev/null \
        || fail "$tag: search $i not partial on shard 1: $(head -c 300 "$T/body")"
    fi
  done
  echo "  $tag: $count searches $kind, slowest $max ms"
  if [ "${4:-}" = transport ] && [ "$ISSUE13" = 1 ]; then
    # ISSUE13 (fails on today's broker): a transport error marks the replica down at once
    [ "$max" -lt "$D" ] || fail "$tag: a search waited $max ms, a whole deadline ($D ms), on a" \
      "replica whose connections are reset or refused (issue 13: down on a transport error)"
  fi
}
# serves R OTHER: once R's fault is cleared, R answers searches again: with OTHER (the other
# replica of its shard) stalled, 5 searches in a row complete, within 60 s; OTHER then
# cleared and, if the broker marked it slow or down meanwhile, back up (the broker logged it
# up again). Replicas are drawn by weight, so on a busy machine the 5 searches and the probes
# may all have gone to R while OTHER stalled: then the broker had nothing to notice and there
# is no "up again" to wait for.
serves() {
  local r=$1 other=$2 ok=0 st t0=$SECONDS
  local ups downs tag
  tag="shard=${other:1:1} replica=$(idx "$other")"
  ups=$(grep -c "event=replica_up $tag" "$T/broker.log" || true)
  downs=$(grep -Ec "event=replica_(slow|down) $tag" "$T/broker.log" || true)
  fault "$other" "$LAT\nstall"
  while [ $ok -lt 5 ]; do
    [ $((SECONDS - t0)) -lt 60 ] || fail "$r does not serve again 60 s after its fault cleared"
    read -r st _ < <(ask "$PURL" $ok)
    if [ "$st" = 200 ] && jq -e '.partial == false' "$T/body" >/dev/null; then
      ok=$((ok + 1))
    else
      ok=0
      sleep 0.2
    fi
  done
  fault "$other" "$LAT"
  if [ "$(grep -Ec "event=replica_(slow|down) $tag" "$T/broker.log" || true)" -gt "$downs" ]; then
    until [ "$(grep -c "event=replica_up $tag" "$T/broker.log" || true)" -gt "$ups" ]; do
      [ $((SECONDS - t0)) -lt 90 ] || fail "$other not back up 30 s after its stall cleared"
      sleep 0.1
    done
  else
    echo "  (no search or probe went to $other while it stalled: nothing to come back from)"
  fi
  echo "  $r serves again $((SECONDS - t0)) s after its fault cleared (5 searches in a row" \
    "complete with $other stalled)"
}
idx() { [ "${1:2:1}" = a ] && echo 0 || echo 1; }

# ---- 2. one replica stalled: failover within the budget ------------------------------------------
fault s0a "$LAT\nstall"
expect complete "s0a stalled" 20
grep -q "shard=0 replica=0" "$T/broker.log" || fail "the broker never marked s0a down or slow"
fault s0a "$LAT"
serves s0a s0b

# ---- 3. both replicas of shard 1 stalled, then reset: partial answers within the budget --------
fault s1a "$LAT\nstall"
fault s1b "$LAT\nstall"
expect partial1 "shard 1 stalled (both replicas)" 10
curl -s -o "$T/body" -w '%{http_code}\n' "$PURL/readyz" | grep -qx 503 \
  || fail "/readyz with shard 1 stalled: $(cat "$T/body")"
fault s1a "$LAT\nreset"
fault s1b "$LAT\nreset"
expect partial1 "shard 1 reset (both replicas)" 10
fault s1a "$LAT"
fault s1b "$LAT"
t0=$SECONDS
ok=0
while [ $ok -lt 5 ]; do
  [ $((SECONDS - t0)) -lt 60 ] || fail "shard 1 does not answer again 60 s after its faults cleared"
  read -r st _ < <(ask "$PURL" $ok)
  if [ "$st" = 200 ] && jq -e '.partial == false' "$T/body" >/dev/null; then
    ok=$((ok + 1))
  else
    ok=0
    sleep 0.2
  fi
done
curl -s -o "$T/body" -w '%{http_code}\n' "$PURL/readyz" | grep -qx 200 \
  || fail "/readyz with shard 1 back: $(cat "$T/body")"
echo "  shard 1 complete again $((SECONDS - t0)) s after its faults cleared; /readyz 503, then 200"

# ---- 4. one replica at a time: reset, black hole, close, down; each recovers -----------------
fault s0b "$LAT\nreset"
expect complete "s0b reset" 10 transport
fault s0b "$LAT"
serves s0b s0a
fault s1a "$LAT\ndrop"
expect complete "s1a black-holed" 10
fault s1a "$LAT"
serves s1a s1b
fault s1b "$LAT\nclose"
expect complete "s1b closed (FIN)" 10
fault s1b "$LAT"
serves s1b s1a
fault s0a "$LAT\nreset\nrefuse"
expect complete "s0a down (reset, connects refused)" 10 transport
fault s0a "$LAT"
serves s0a s0b

# ---- 5. every fault cleared: the answers of step 1 again -------------------------------------
for r in "${REPLICAS[@]}"; do
  [ "$(stat "$r" resets)" -gt 0 ] || fail "proxy of $r never reset a connection"
done
compare "after every fault"
for r in "${REPLICAS[@]}"; do fault "$r" ""; done
compare "no fault, at the end"

stop broker
stop direct
for r in "${REPLICAS[@]}"; do stop "$r"; done
echo "test_multihost: all checks passed in $((SECONDS - START)) s"
