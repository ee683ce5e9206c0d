#!/usr/bin/env bash
# DESIGN invariant 3 and §3.2: an acknowledged click survives kill -9 of the profile primary,
# also when the file system drops every write that was not synced (a power cut). The primary
# runs under dropsync (LD_PRELOAD: its WAL writes stay in memory until fsync/fdatasync), with
# --sync 1 and 4 workers; one replica tails it.
#   1. ROUNDS rounds: 4 click_writers (each its own users and sticker ids, COUNT clicks) load
#      the primary; after a random 0.2–1.0 s it is killed with SIGKILL and restarted on the
#      same endpoint; the writers resend the click in flight (Lazy Pirate) and finish; then
#      every click acknowledged so far, in this round and all before it, must be in the
#      primary's get_clicks answers.
#   2. The replica reaches the primary's sequence number, holds every acknowledged click, and
#      its checksum (every key and value) equals the primary's.
#   3. Negative control, so the harness can be seen to fail: a primary with --sync 0 under
#      dropsync, killed right after some acks, must have lost acknowledged clicks (up to 3
#      tries).
# usage: test_profile_durability.sh PROFILE CLICK_WRITER LIBDROPSYNC
# environment: PS_DUR_ROUNDS (default 20), PS_DUR_COUNT (the least clicks per writer and
#   round, default 200; raised so that a writer runs ~1.5 s), PS_DUR_SEED (for the kill
#   delays, default the PID).
# An ASan build of PROFILE is detected (ldd) and gets libasan ahead of dropsync in LD_PRELOAD.
set -euo pipefail
PD=$1
CW=$2
DS=$3
ROUNDS=${PS_DUR_ROUNDS:-20}
COUNT=${PS_DUR_COUNT:-200}
WRITERS=4
DIM=16
. "$(dirname "$0")/lib.sh"
ps_test_init profile_durability
START=$SECONDS
RANDOM=${PS_DUR_SEED:-$$}

[ -r "$DS" ] || fail "no dropsync library at $DS"
PRELOAD=$DS
ASAN=$(ldd "$PD" | awk '/libasan/ {print $3; exit}')
if [ -n "$ASAN" ]; then
  PRELOAD="$ASAN:$DS"
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
fi

ms_now() { date +%s%3N; }

# start_daemon NAME WAIT_S CMD...: start CMD (which must take --ready-file $T/NAME.ready and
# --pid-file $T/NAME.pid) and wait until it is ready; retried while its port is still held.
# Sets PID[NAME].
start_daemon() {
  local name=$1 wait_s=$2 try
  shift 2
  for try in 1 2 3 4 5 6 7 8 9 10; do
    rm -f "$T/$name.ready" "$T/$name.pid"
    "$@" --ready-file "$T/$name.ready" --pid-file "$T/$name.pid" 2>>"$T/$name.log" &
    PID[$name]=$!
    for _ in $(seq 1 $((wait_s * 20))); do
      [ -e "$T/$name.ready" ] && return 0
      kill -0 "${PID[$name]}" 2>/dev/null || break
      sleep 0.05
    done
    [ -e "$T/$name.ready" ] && return 0
    kill -0 "${PID[$name]}" 2>/dev/null && fail "$name not ready after $wait_s s"
    wait "${PID[$name]}" || true
    unset "PID[$name]"
    tail -n 5 "$T/$name.log" | grep -qi "address already in use" || fail "$name did not start"
    sleep 0.2
  done
  fail "$name: endpoint still in use after 10 attempts"
}

# start_primary DB SYNC: the primary under dropsync on $PEP.
start_primary() {
  mkdir -p "$1"
  start_daemon pp 60 env DROPSYNC_DIR="$1" LD_PRELOAD="$PRELOAD" \
    "$PD" --db "$1" --listen "$PEP" --role primary --sync "$2" --workers 4 --log-level info
  grep -qx "$PEP" "$T/pp.ready" || fail "primary: ready file does not name $PEP"
}

kill9_primary() {
  kill -9 "${PID[pp]}"
  wait "${PID[pp]}" 2>/dev/null || true
  unset "PID[pp]"
}

acked_lines() { cat "$@" 2>/dev/null | grep -c . || true; }

PORT=$($CW freeport)
PEP="tcp://127.0.0.1:$PORT"
start_primary "$T/pp" 1
grep -q "dropsync: buffering unsynced writes under $T/pp" "$T/pp.log" \
  || grep -q "dropsync: buffering unsynced writes under $(cd "$T/pp" && pwd -P)" "$T/pp.log" \
  || fail "the primary does not run under dropsync"
start_daemon r1 60 "$PD" --db "$T/r1" --listen 'tcp://127.0.0.1:*' --role replica \
  --primary "$PEP" --log-level info
REP=$(sed -n 1p "$T/r1.ready")
echo "primary $PEP (dropsync, --sync 1, 4 workers), replica $REP; $ROUNDS rounds of" \
  "$WRITERS writers"

# ---- 1. kill -9 under load, ROUNDS times ----------------------------------------------------
# Calibration (round 0, no kill): 4 writers x 200 clicks. A writer's COUNT is then sized to
# keep it busy for ~1.5 s, so kills 0.2–1.0 s in land mid-load on fast and slow (ASan) builds.
t0=$(ms_now)
for w in $(seq 0 $((WRITERS - 1))); do
  "$CW" "$PEP" "r0w${w}u" $(((w + 1) * 1000 + 1)) 200 "$DIM" "$T/acked.r0.w$w" \
    2>>"$T/writers.log" &
  PID[w$w]=$!
done
for w in $(seq 0 $((WRITERS - 1))); do
  wait "${PID[w$w]}" || fail "calibration: writer $w failed (see writers.log)"
  unset "PID[w$w]"
done
cal_ms=$(($(ms_now) - t0 + 1))
want=$((200 * 1500 / cal_ms))
[ "$want" -gt "$COUNT" ] && COUNT=$want
[ "$COUNT" -gt 5000 ] && COUNT=5000
echo "  calibration: $WRITERS x 200 clicks in $cal_ms ms; $COUNT clicks per writer and round"

mid_load=0
for r in $(seq 1 "$ROUNDS"); do
  for w in $(seq 0 $((WRITERS - 1))); do
    "$CW" "$PEP" "r${r}w${w}u" $(((r * WRITERS + w) * 1000000 + 1)) "$COUNT" "$DIM" \
      "$T/acked.r$r.w$w" 2>>"$T/writers.log" &
    PID[w$w]=$!
  done
  delay=$((200 + RANDOM % 801))
  sleep "$((delay / 1000)).$(printf '%03d' $((delay % 1000)))"
  running=0
  for w in $(seq 0 $((WRITERS - 1))); do
    kill -0 "${PID[w$w]}" 2>/dev/null && running=$((running + 1))
  done
  at_kill=$(acked_lines "$T"/acked.r"$r".w*)
  kill9_primary
  [ "$running" -gt 0 ] && mid_load=$((mid_load + 1))
  t0=$(ms_now)
  start_primary "$T/pp" 1
  restart_ms=$(($(ms_now) - t0))
  for w in $(seq 0 $((WRITERS - 1))); do
    wait "${PID[w$w]}" || fail "round $r: writer $w failed (see writers.log)"
    unset "PID[w$w]"
  done
  round_acked=$(acked_lines "$T"/acked.r"$r".w*)
  [ "$round_acked" -eq $((WRITERS * COUNT)) ] || fail "round $r: $round_acked clicks acked"
  "$CW" check "$PEP" "$T"/acked.r*.w* >"$T/check.out" 2>&1 \
    || fail "round $r: acknowledged clicks lost after kill -9: $(cat "$T/check.out")"
  printf '  round %2d: kill -9 after %4d ms (%3d acks in, %d writers running), restart %4d ms; %s\n' \
    "$r" "$delay" "$at_kill" "$running" "$restart_ms" "$(tail -n 1 "$T/check.out")"
done
TOTAL=$(acked_lines "$T"/acked.r*.w*)
[ "$mid_load" -ge $((ROUNDS / 2)) ] \
  || fail "only $mid_load of $ROUNDS kills hit running writers: raise PS_DUR_COUNT"

# ---- 2. the replica converges ----------------------------------------------------------------
seq_of() { "$CW" health "$1" | sed -n 's/.*seq=\([0-9]*\).*/\1/p'; }
want=$(seq_of "$PEP")
for _ in $(seq 1 1200); do
  [ "$(seq_of "$REP")" = "$want" ] && break
  sleep 0.05
done
got=$(seq_of "$REP")
[ "$got" = "$want" ] || fail "replica at seq $got, primary at $want after 60 s"
"$CW" check "$REP" "$T"/acked.r*.w* >"$T/check.out" 2>&1 \
  || fail "the replica lacks acknowledged clicks: $(cat "$T/check.out")"
CP=$("$CW" checksum "$PEP")
CR=$("$CW" checksum "$REP")
[ "$CP" = "$CR" ] || fail "checksums differ: primary $CP, replica $CR"
echo "  replica at seq $got: $CR (== primary), holds every acked click"

kill -TERM "${PID[r1]}"
rc=0
wait "${PID[r1]}" || rc=$?
unset "PID[r1]"
[ $rc -eq 0 ] || fail "replica exited with status $rc after SIGTERM"
kill -TERM "${PID[pp]}"
rc=0
wait "${PID[pp]}" || rc=$?
unset "PID[pp]"
[ $rc -eq 0 ] || fail "primary exited with status $rc after SIGTERM"

# ---- 3. negative control: --sync 0 must lose acknowledged clicks ------------------------------
lost=0
for try in 1 2 3; do
  db="$T/neg$try"
  rm -f "$T"/neg.acked.*
  start_primary "$db" 0
  for w in $(seq 0 $((WRITERS - 1))); do
    "$CW" "$PEP" "neg${try}w${w}u" $(((w + 1) * 1000000 + 1)) 100000 "$DIM" \
      "$T/neg.acked.$w" 2>>"$T/writers.log" &
    PID[w$w]=$!
  done
  for _ in $(seq 1 600); do
    [ "$(acked_lines "$T"/neg.acked.*)" -ge 50 ] && break
    sleep 0.01
  done
  kill9_primary
  for w in $(seq 0 $((WRITERS - 1))); do
    kill -9 "${PID[w$w]}" 2>/dev/null || true
    wait "${PID[w$w]}" 2>/dev/null || true
    unset "PID[w$w]"
  done
  start_primary "$db" 0
  rc=0
  "$CW" check "$PEP" "$T"/neg.acked.* >"$T/check.out" 2>&1 || rc=$?
  kill9_primary
  line=$(grep '^check:' "$T/check.out" || true)
  { [ $rc -le 1 ] && [ -n "$line" ]; } || fail "negative control: check failed: $(cat "$T/check.out")"
  echo "  negative control try $try (--sync 0): $line"
  lost=$(echo "$line" | sed -n 's/.*missing=\([0-9]*\).*/\1/p')
  if [ $rc -eq 1 ] && [ "${lost:-0}" -gt 0 ]; then
    neg_acked=$(echo "$line" | sed -n 's/.*acked=\([0-9]*\).*/\1/p')
    break
  fi
  lost=0
done
[ "$lost" -gt 0 ] || fail "negative control: --sync 0 under dropsync lost no acknowledged click" \
  "in 3 tries: the harness cannot detect a missing sync"

echo "profile durability: rounds=$ROUNDS kills_mid_load=$mid_load acked=$TOTAL lost=0;" \
  "replica seq=$got checksum equal; negative control (--sync 0) lost $lost of $neg_acked acked;" \
  "$((SECONDS - START)) s"
