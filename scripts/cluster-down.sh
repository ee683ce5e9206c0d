#!/usr/bin/env bash
# Stops the local PerSRV cluster that scripts/cluster-up.sh started: SIGTERM to the broker,
# then to the 4 shards (each drains its in-flight work and exits), waits for every process to
# exit, sends SIGKILL to one still running after the timeout (and says so), removes the pid
# and ready files.
#
#   PERSRV_DEMO_DIR       the cluster's directory (default ./demo in the source tree); its
#                         run/ holds the pid files
#   PERSRV_STOP_TIMEOUT   seconds a process gets to exit after SIGTERM (default 20)
# Exit status: 0 when nothing of the cluster runs any more (also when nothing ran); 1 when a
# process survived even SIGKILL.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
DIR=$(abspath "${PERSRV_DEMO_DIR:-$ROOT/demo}")
RUN=$DIR/run
TIMEOUT=${PERSRV_STOP_TIMEOUT:-20}
[[ $TIMEOUT =~ ^[0-9]+$ ]] || { echo "cluster-down: PERSRV_STOP_TIMEOUT='$TIMEOUT' is not a number of seconds" >&2; exit 1; }

# alive PID: true if PID is a running (not zombie) shard or broker process, so a pid file
# left behind never makes us signal an unrelated process that reused the number.
alive() {
  local pid=$1 stat comm
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  [ -r "/proc/$pid/stat" ] || return 0
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [ "$comm" = shard ] || [ "$comm" = broker ] || [ "$comm" = profile ]
}

# stop NAME...: SIGTERM every NAME that runs, wait, SIGKILL the ones left.
status=0
stopped=()
stop() {
  local n pid
  local -A pids=()
  for n in "$@"; do
    pid=$(cat "$RUN/$n.pid" 2>/dev/null) || continue
    if alive "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids[$n]=$pid
    fi
  done
  local deadline=$((SECONDS + TIMEOUT)) left
  while :; do
    left=0
    for n in "${!pids[@]}"; do alive "${pids[$n]}" && left=1; done
    [ $left = 0 ] || [ $SECONDS -ge $deadline ] && break
    sleep 0.1
  done
  for n in "$@"; do
    [ -n "${pids[$n]:-}" ] || continue
    pid=${pids[$n]}
    if alive "$pid"; then
      echo "cluster-down: $n (pid $pid) did not exit within $TIMEOUT s of SIGTERM: sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
      if alive "$pid"; then
        echo "cluster-down: $n (pid $pid) survived SIGKILL" >&2
        status=1
        continue
      fi
    fi
    stopped+=("$n")
  done
  for n in "$@"; do
    if [ -z "${pids[$n]:-}" ] || ! alive "${pids[$n]}"; then rm -f "$RUN/$n.pid" "$RUN/$n.ready"; fi
  done
}

if [ ! -d "$RUN" ]; then
  echo "cluster-down: no cluster in $DIR (no $RUN)"
  exit 0
fi
stop broker # first: it stops sending work to the shards
stop shard0a shard0b shard1a shard1b profile1 profile0
if [ ${#stopped[@]} -eq 0 ]; then
  echo "cluster-down: nothing was running from $DIR"
else
  echo "cluster-down: stopped ${stopped[*]} (logs in $RUN)"
fi
exit $status
