#!/usr/bin/env bash
# What one ZeroMQ peer can make a daemon hold (issue 11). Against a shard, the profile primary,
# a profile replica and the broker's front door, all with CURVE on (lib.sh):
#   (a) an outsider without the keys sends one message of 100 frames of 4,000,000 bytes: its
#       handshake is refused before a byte of the message is read;
#   (b) an allowed peer sends 100 frames of 5,000,000 bytes: the first is over every daemon's
#       max-frame (2 MiB shard and broker, 4 MiB profile service), the connection is dropped;
#   (c) an allowed peer sends requests of 100 and of 9 small frames: answered too_large, not
#       left to time out.
# After each, the daemon still answers a normal client's health request; its peak RSS
# (VmHWM) grows by less than BOUND_MB and its log by less than 1 MB. The one case no setting
# bounds — an allowed peer's frames each under max-frame: libzmq buffers a whole multipart
# message and caps only each frame (README, "CURVE on the ZeroMQ sockets") — is measured on
# the profile primary and printed, not asserted.
# usage: test_zmq_limits.sh BUILDER SHARD SHARD_CLIENT BROKER PROFILE ZMQ_FLOOD CONN_FLOOD
set -euo pipefail
B=$1
S=$2
C=$3
BR=$4
PD=$5
FL=$6
CF=$7
. "$(dirname "$0")/lib.sh"
ps_test_init zmq_limits
[ -n "${PERSRV_CURVE_KEY:-}" ] || fail "this test needs CURVE on (not PERSRV_TEST_PLAIN=1)"
BOUND_MB=64

$B generate --out "$T/data" --stickers 2000 --dim 16 --users 2 --clicks 200 --pairs 50 \
  --queries 30 --no-progress
$B build --corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy" \
  --clicks "$T/data/clicks.tsv" --out "$T/cluster" --shards 1 >"$T/build.out" 2>&1 \
  || fail "build: $(cat "$T/build.out")"

start_profile pp --db "$T/pp" --role primary
start_profile r1 --db "$T/r1" --role replica --primary "${EP[pp]}"
start_shard s0 --workers 1 --index "$T/cluster/shard-000" --shard 0 --shards 1
start_broker broker "${EP[s0]}" --deadline-ms 2000
PID[front]=${PID[broker]}
EP[front]=$ZEP
# the broker's log is broker.log; the others' NAME.log
logf() { if [ "$1" = front ]; then echo "$T/broker.log"; else echo "$T/$1.log"; fi; }
hwm_mb() { awk '/^VmHWM/ {print int($2 / 1024)}' "/proc/$1/status"; }

for d in s0 pp r1 front; do
  pid=${PID[$d]} ep=${EP[$d]} log=$(logf $d)
  "$FL" health "$ep" >/dev/null || fail "$d: no health answer before the test"
  hwm0=$(hwm_mb "$pid")
  log0=$(stat -c %s "$log")
  # (a) an outsider: no CURVE
  out=$(PERSRV_FLOOD_PLAIN=1 "$FL" multipart "$ep" 100 4000000)
  [ "$out" = "no answer" ] || fail "$d: an outsider's multipart got '$out'"
  "$FL" health "$ep" >/dev/null || fail "$d: no health answer after an outsider's 100 x 4 MB"
  hwm1=$(hwm_mb "$pid")
  # (b) an allowed peer, frames over the daemon's max-frame (5 MB for every daemon)
  out=$("$FL" multipart "$ep" 100 5000000)
  [ "$out" = "no answer" ] || fail "$d: 100 frames over max-frame got '$out'"
  "$FL" health "$ep" >/dev/null || fail "$d: no health answer after 100 x 5 MB"
  hwm2=$(hwm_mb "$pid")
  # (c) an allowed peer, 100 small frames: answered too_large, not dropped in silence
  out=$("$FL" multipart "$ep" 100 100)
  [ "$out" = "answer too_large" ] || fail "$d: 100 small frames got '$out', want too_large"
  out=$("$FL" multipart "$ep" 9 1)
  [ "$out" = "answer too_large" ] || fail "$d: 9 frames got '$out', want too_large"
  "$FL" health "$ep" >/dev/null || fail "$d: no health answer after the multipart requests"
  grow=$((hwm2 - hwm0))
  [ "$grow" -lt "$BOUND_MB" ] || fail "$d: peak RSS grew ${grow} MB (${hwm0} -> ${hwm2})"
  logd=$(($(stat -c %s "$log") - log0))
  [ "$logd" -lt 1000000 ] || fail "$d: the log grew $logd bytes"
  echo "  $d: outsider 100 x 4 MB and allowed 100 x 5 MB: no answer, health still answered;" \
    "peak RSS ${hwm0} -> ${hwm1} -> ${hwm2} MB; 100 and 9 small frames: too_large; log +${logd} B"
done

# The one case no setting bounds: an allowed peer's frames each under max-frame. Measured on
# the profile primary (the largest cap), printed for the record.
hwm0=$(hwm_mb "${PID[pp]}")
out=$("$FL" multipart "${EP[pp]}" 25 4000000)
"$FL" health "${EP[pp]}" >/dev/null || fail "pp: no health answer after 25 x 4 MB"
echo "  pp: an allowed peer's 25 x 4 MB (each under max-frame): '$out', peak RSS ${hwm0} -> $(hwm_mb "${PID[pp]}") MB (libzmq buffers the message whole)"

# Descriptors exhausted: a shard whose hard fd limit is 200, 300 idle TCP connections to its
# ZeroMQ port (no handshake ever sent). libzmq accepts what it can and drops a connection that
# has not finished its handshake in 5 s (PS_ZSERVER_HANDSHAKE_MS): a normal client is served
# again once they are dropped, whatever the flood holds; the log does not grow by 1 MB. The CPU
# time is printed: libzmq retries a failing accept() at once (it has no back-off of its own).
printf '#!/bin/sh\nulimit -n 200\nexec "%s" "$@"\n' "$S" >"$T/lowfd.sh"
chmod +x "$T/lowfd.sh"
S0=$S
S=$T/lowfd.sh
start_shard lowfd --workers 1 --index "$T/cluster/shard-000" --shard 0 --shards 1
S=$S0
pid=$(cat "$T/lowfd.pid")
log0=$(stat -c %s "$T/lowfd.log")
cpu0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
port=${EP[lowfd]##*:}
"$CF" idle "127.0.0.1:$port" 300 15 >"$T/flood.out" &
FPID=$!
sleep 2
fds=$(ls "/proc/$pid/fd" | wc -l)
t0=$SECONDS
ok=0
for _ in 1 2 3 4; do
  if "$FL" health "${EP[lowfd]}" >/dev/null; then
    ok=1
    break
  fi
done
[ $ok = 1 ] || fail "a shard with its descriptors exhausted never answered health (40 s)"
waited=$((SECONDS - t0))
wait "$FPID" || true
cpu=$(($(awk '{print $14 + $15}' "/proc/$pid/stat") - cpu0))
logd=$(($(stat -c %s "$T/lowfd.log") - log0))
[ "$logd" -lt 1000000 ] || fail "lowfd: the log grew $logd bytes"
echo "  ulimit -n 200, 300 idle connections to a shard's ZeroMQ port: $fds fds open, health" \
  "answered after ${waited} s; CPU $((cpu / 100)).$((cpu % 100)) s over the flood; log +${logd} B;" \
  "$(cut -d' ' -f1-4 "$T/flood.out")"
stop lowfd

stop broker
stop s0
for d in r1 pp; do
  kill -TERM "${PID[$d]}"
  wait "${PID[$d]}" || fail "profile $d exited non-zero"
  unset "PID[$d]"
done
echo "PASS"
