#!/usr/bin/env bash
# The click-intake benchmark end to end: a profile primary (--sync 1, a fresh RocksDB in a
# temporary directory under DATA) and one replica tailing its WAL, loaded by bench_clicks at
# 1, 8 and 32 closed-loop clients, with the replica's replication lag. Twice: the primary with
# --workers 1 (one click at a time, every click its own synced WAL write) and with --workers 8
# (concurrent synced writes, which RocksDB's group commit folds into shared fsyncs).
# Prints JSON lines only on stdout (bench_clicks's, with "primary_workers" added); progress
# and daemon logs go to stderr / the run directory.
#
# usage: run_clicks.sh DATA BIN
#   DATA  a directory on the disk to measure (the databases live in DATA/run_clicks.XXXXXX,
#         removed at exit)
#   BIN   build tree (BIN/profile/profile, BIN/bench/bench_clicks)
# environment: CLICKS (per level and run, default 2000), CLIENTS (default 1,8,32), DIM
#   (default 64), REPEAT (default 3), WORKERS (default "1 8"), REPLICA (1: with the replica,
#   0: the primary alone, "0 1": both, each line then says "replica": true/false; default 1)
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: run_clicks.sh DATA BIN" >&2; exit 2; }
mkdir -p "$1"
DATA=$(cd "$1" && pwd)
BIN=$(cd "$2" && pwd)
CLICKS=${CLICKS:-2000}
CLIENTS=${CLIENTS:-1,8,32}
DIM=${DIM:-64}
REPEAT=${REPEAT:-3}
WORKERS=${WORKERS:-1 8}
REPLICA=${REPLICA:-1}
PD=$BIN/profile/profile
BC=$BIN/bench/bench_clicks
for x in "$PD" "$BC"; do
  [ -x "$x" ] || { echo "run_clicks: $x is not an executable" >&2; exit 2; }
done
command -v jq >/dev/null || { echo "run_clicks: jq is required" >&2; exit 2; }

declare -A PID
RUN=$(mktemp -d "$DATA/run_clicks.XXXXXX")
cleanup() {
  for n in "${!PID[@]}"; do kill -TERM "${PID[$n]}" 2>/dev/null || true; done
  for n in "${!PID[@]}"; do wait "${PID[$n]}" 2>/dev/null || true; done
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() {
  echo "run_clicks: FAIL: $*" >&2
  for f in "$RUN"/*.log; do [ -e "$f" ] && { echo "--- $f"; tail -n 20 "$f"; } >&2; done
  exit 1
}

# start NAME FLAGS...: a profile daemon on a port ZeroMQ picks; sets PID[NAME], EP_OUT.
start() {
  local name=$1
  shift
  rm -f "$RUN/$name.ready"
  "$PD" --listen 'tcp://127.0.0.1:*' --ready-file "$RUN/$name.ready" "$@" \
    2>>"$RUN/$name.log" &
  PID[$name]=$!
  for _ in $(seq 1 600); do
    [ -e "$RUN/$name.ready" ] && break
    kill -0 "${PID[$name]}" 2>/dev/null || fail "$name exited before it was ready"
    sleep 0.05
  done
  [ -e "$RUN/$name.ready" ] || fail "$name not ready after 30 s"
  EP_OUT=$(sed -n 1p "$RUN/$name.ready")
}

stop() {
  kill -TERM "${PID[$1]}"
  wait "${PID[$1]}" || fail "$1 did not exit cleanly"
  unset "PID[$1]"
}

for w in $WORKERS; do
  for rep in $REPLICA; do
    rm -rf "$RUN/primary" "$RUN/replica"
    start primary --db "$RUN/primary" --role primary --sync 1 --workers "$w" --log-level warn
    PEP=$EP_OUT
    RARGS=()
    has=false
    if [ "$rep" = 1 ]; then
      has=true
      start replica --db "$RUN/replica" --role replica --primary "$PEP" --log-level warn
      RARGS=(--replica "$EP_OUT")
    fi
    echo "run_clicks: primary --workers $w at $PEP, replica: ${RARGS[1]:-none}" >&2
    "$BC" --primary "$PEP" "${RARGS[@]}" --clients "$CLIENTS" --clicks "$CLICKS" --dim "$DIM" \
      --repeat "$REPEAT" --json | jq -c ". + {primary_workers: $w, replica: $has}"
    [ "$rep" = 1 ] && stop replica
    stop primary
  done
done
