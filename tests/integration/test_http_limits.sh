#!/usr/bin/env bash
# Issue 11 must-show 3, the HTTP half: a broker (one shard behind it) under connection floods
# from conn_flood, on its public HTTP door and its admin port (runtime/admin.c):
#   (a) slowloris: 500 connections to each door, each trickling a header byte a second: every
#       one is answered 408 and closed by request-timeout-ms (never before it), while a normal
#       client's searches and /healthz keep being answered (each within a generous 10 s);
#   (b1) under `ulimit -n 256` with the default caps (the broker warns that the hard limit is
#       below what they need): 400 idle connections exhaust its descriptors; accept() fails and
#       is backed off: CPU stays far below a busy loop, the log grows < 1 MB; once the idle
#       connections drop, a normal search is answered;
#   (b2) under `ulimit -n 256` with --max-connections 100: the 200 connections over the cap are
#       answered 503 and closed, accept() never fails, the admin port stays reachable, a normal
#       client is refused 503 while the door is full and served once it is not;
#   (c) RSS: the broker's resident memory grows by less than 16 KiB per flooding connection
#       (README: ~4 KiB each, plus what a connection has sent of its request).
# Figures (connections, RSS, CPU seconds, log bytes) are printed for the issue note.
# usage: test_http_limits.sh BUILDER SHARD SHARD_CLIENT BROKER CONN_FLOOD
set -euo pipefail
B=$1
S=$2
C=$3
BR=$4
F=$5
. "$(dirname "$0")/lib.sh"
ps_test_init http_limits
command -v curl >/dev/null || fail "curl is required (scripts/deps.sh installs it)"
BROKER_BIN=$BR
TCK=$(getconf CLK_TCK)

$B generate --out "$T/data" --stickers 3000 --dim 16 --users 4 --clicks 500 --pairs 100 \
  --queries 50 --no-progress >/dev/null 2>&1 || fail "generate"
$B build --corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy" \
  --clicks "$T/data/clicks.tsv" --out "$T/cluster" --shards 1 >"$T/build.out" 2>&1 \
  || fail "build: $(cat "$T/build.out")"
Q=$(head -n 1 "$T/data/clicks.tsv" | cut -f 2)
start_shard s0 --workers 1 --index "$T/cluster/shard-000" --shard 0 --shards 1

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# search [MAX_TIME]: the status of one search on the HTTP door (body in $T/body)
search() {
  curl -s -o "$T/body" -w '%{http_code}' --max-time "${1:-10}" -G "$URL/v1/search" \
    --data-urlencode "q=$Q" --data-urlencode k=3 || true
}
# metric NAME DOOR [BASE_URL]: a counter of the doors (ps/httpguard.h) from /metrics
metric() {
  curl -s --max-time 10 "${3:-$ADMIN}/metrics" | awk -v n="$1{door=\"$2\"}" '$1 == n {print $2}'
}
# field NAME FILE: NAME=value from conn_flood's figures line
field() { tr ' ' '\n' <"$2" | sed -n "s/^$1=//p"; }
log_bytes() { stat -c %s "$T/$1.log"; }

# ---- (a) slowloris on both doors ------------------------------------------------------------
start_broker ba "${EP[s0]}" --request-timeout-ms 2000 --admin-request-timeout-ms 2000 \
  --admin-max-connections 600
ADMIN="http://$(sed -n 3p "$T/ba.ready")"
P=${PID[ba]}
[ "$(search)" = 200 ] || fail "(a) the broker does not answer a search before the flood"
rss0=$(rss_kb "$P")
log0=$(log_bytes ba)
N=500
"$F" slowloris "${URL#http://}" $N 30 1000 >"$T/slow_http.out" 2>&1 &
f1=$!
"$F" slowloris "${ADMIN#http://}" $N 30 1000 >"$T/slow_admin.out" 2>&1 &
f2=$!
rss_peak=$rss0 open_peak=0 served=0 worst=0
t0=$(date +%s.%N)
while kill -0 $f1 2>/dev/null || kill -0 $f2 2>/dev/null; do
  s0=$(date +%s.%N)
  st=$(search)
  [ "$st" = 200 ] || fail "(a) a search during the slowloris flood: status $st"
  worst=$(echo "$worst $s0 $(date +%s.%N)" | awk '{d = $3 - $2; print (d > $1 ? d : $1)}')
  st=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$ADMIN/healthz" || true)
  [ "$st" = 200 ] || fail "(a) admin /healthz during the slowloris flood: status $st"
  served=$((served + 1))
  o=$(metric persrv_http_connections http "$URL")
  [ "${o:-0}" -gt "$open_peak" ] && open_peak=$o
  r=$(rss_kb "$P")
  [ "$r" -gt "$rss_peak" ] && rss_peak=$r
  [ "$(echo "$(date +%s.%N) $t0" | awk '{print ($1 - $2 > 60)}')" = 0 ] \
    || fail "(a) the floods still run after 60 s"
  sleep 0.3
done
wait $f1 || fail "(a) conn_flood (HTTP door): $(cat "$T/slow_http.out")"
wait $f2 || fail "(a) conn_flood (admin port): $(cat "$T/slow_admin.out")"
for door in http admin; do
  out="$T/slow_$door.out"
  echo "  (a) $door door: $(cat "$out")"
  [ "$(field opened "$out")" = $N ] || fail "(a) $door: not all $N connections opened"
  [ "$(field closed "$out")" = $N ] || fail "(a) $door: the server did not close every trickled request"
  [ "$(field status_408 "$out")" -ge $((N * 9 / 10)) ] || fail "(a) $door: 408 answers missing"
  awk -v t="$(field first_close_s "$out")" 'BEGIN {exit !(t >= 1.9)}' \
    || fail "(a) $door: a trickled request was cut before request-timeout-ms (2 s)"
  [ "$(metric persrv_http_request_timeouts_total $door)" -ge $N ] \
    || fail "(a) $door: persrv_http_request_timeouts_total below $N"
done
[ "$open_peak" -ge $((N / 2)) ] || fail "(a) the broker never held the slowloris connections ($open_peak)"
rss1=$(rss_kb "$P")
logd=$(($(log_bytes ba) - log0))
echo "  (a) normal client: $served searches + admin /healthz during the flood, all 200, slowest" \
  "search $(printf '%.3f' "$worst") s; HTTP connections held at once: up to $open_peak"
echo "  (a) RSS: before ${rss0} KiB, peak ${rss_peak} KiB, after ${rss1} KiB;" \
  "log +$logd bytes"
# (c) the documented bound: < 16 KiB per connection of the flood (2 x $N) on top of the start
[ $((rss_peak - rss0)) -lt $((2 * N * 16)) ] \
  || fail "(c) RSS grew by $((rss_peak - rss0)) KiB for $((2 * N)) connections (bound 16 KiB each)"
[ "$logd" -lt 1048576 ] || fail "(a) the log grew by $logd bytes"
[ "$(search)" = 200 ] || fail "(a) no search answered after the flood"
stop ba

# ---- (b1) descriptors exhausted: accept() backed off --------------------------------------
printf '#!/bin/sh\nulimit -n 256 || exit 111\nexec "%s" "$@"\n' "$BROKER_BIN" >"$T/broker_256"
chmod +x "$T/broker_256"
BR="$T/broker_256"
start_broker bb "${EP[s0]}"
ADMIN="http://$(sed -n 3p "$T/bb.ready")"
P=${PID[bb]}
BR=$BROKER_BIN
grep -q "event=fd_limit_low need=1216 soft=256 hard=256" "$T/bb.log" \
  || fail "(b1) no fd_limit_low warning naming what the caps need and the limit"
fds=$(ls "/proc/$P/fd" | wc -l)
log0=$(log_bytes bb)
rss0=$(rss_kb "$P")
"$F" idle "${URL#http://}" 400 8 >"$T/idle1.out" 2>&1 &
f1=$!
for _ in $(seq 1 200); do
  grep -q "event=accept_failed" "$T/bb.log" && break
  sleep 0.05
done
grep -q "event=accept_failed door=http errno=24" "$T/bb.log" \
  || fail "(b1) accept() never failed with EMFILE under ulimit -n 256"
c0=$(cpu_ticks "$P")
sleep 3
c1=$(cpu_ticks "$P")
held=$(ls "/proc/$P/fd" | wc -l)
cpu=$(awk -v t=$((c1 - c0)) -v k="$TCK" 'BEGIN {printf "%.2f", t / k}')
st=$(search 1)
wait $f1 || fail "(b1) conn_flood: $(cat "$T/idle1.out")"
echo "  (b1) $(cat "$T/idle1.out")"
st2=000
for _ in $(seq 1 50); do
  st2=$(search)
  [ "$st2" = 200 ] && break
  sleep 0.2
done
[ "$st2" = 200 ] || fail "(b1) no search answered once the idle connections dropped: $st2"
logd=$(($(log_bytes bb) - log0))
errs=$(metric persrv_http_accept_errors_total http)
echo "  (b1) ulimit -n 256: $fds fds at start, $held open under the flood; CPU $cpu s over 3 s;" \
  "$errs accept() failures, backed off; log +$logd bytes; a search during: $st, after: $st2;" \
  "RSS ${rss0} -> $(rss_kb "$P") KiB"
awk -v c="$cpu" 'BEGIN {exit !(c < 0.9)}' || fail "(b1) the broker spins: $cpu CPU s in 3 s"
[ "$logd" -lt 1048576 ] || fail "(b1) the log grew by $logd bytes"
[ "$errs" -ge 1 ] || fail "(b1) persrv_http_accept_errors_total is $errs"
[ "$(grep -c "event=accept_failed" "$T/bb.log")" -le 3 ] \
  || fail "(b1) accept failures logged more than once per 10 s"
stop bb

# ---- (b2) the same limit, max-connections below it: over-cap connections refused ----------
BR="$T/broker_256"
start_broker bc "${EP[s0]}" --max-connections 100 --admin-max-connections 16
ADMIN="http://$(sed -n 3p "$T/bc.ready")"
P=${PID[bc]}
BR=$BROKER_BIN
! grep -q "event=fd_limit_low" "$T/bc.log" || fail "(b2) fd_limit_low although 100 + 16 + 128 <= 256"
log0=$(log_bytes bc)
"$F" idle "${URL#http://}" 300 6 >"$T/idle2.out" 2>&1 &
f1=$!
for _ in $(seq 1 200); do
  [ "$(metric persrv_http_connections_refused_total http)" -ge 200 ] && break
  sleep 0.05
done
[ "$(metric persrv_http_connections http)" = 100 ] || fail "(b2) the door does not hold 100 connections"
c0=$(cpu_ticks "$P")
sleep 2
c1=$(cpu_ticks "$P")
cpu=$(awk -v t=$((c1 - c0)) -v k="$TCK" 'BEGIN {printf "%.2f", t / k}')
st=$(search)
[ "$st" = 503 ] && grep -q '"code":"unavailable"' "$T/body" \
  || fail "(b2) a client of the full door: $st $(cat "$T/body")"
wait $f1 || fail "(b2) conn_flood: $(cat "$T/idle2.out")"
echo "  (b2) $(cat "$T/idle2.out")"
[ "$(field status_503 "$T/idle2.out")" -ge 150 ] || fail "(b2) too few 503 answers"
st2=000
for _ in $(seq 1 50); do
  st2=$(search)
  [ "$st2" = 200 ] && break
  sleep 0.2
done
[ "$st2" = 200 ] || fail "(b2) no search answered once the door had room: $st2"
logd=$(($(log_bytes bc) - log0))
errs=$(metric persrv_http_accept_errors_total http)
ref=$(metric persrv_http_connections_refused_total http)
echo "  (b2) ulimit -n 256, max-connections 100: $ref refused (503), $errs accept() failures;" \
  "CPU $cpu s over 2 s; log +$logd bytes; a search while full: $st, after: $st2"
[ "$errs" = 0 ] || fail "(b2) accept() failed $errs times below the cap"
awk -v c="$cpu" 'BEGIN {exit !(c < 0.6)}' || fail "(b2) the broker spins: $cpu CPU s in 2 s"
[ "$logd" -lt 1048576 ] || fail "(b2) the log grew by $logd bytes"
stop bc
stop s0
echo "PASS test_http_limits"
