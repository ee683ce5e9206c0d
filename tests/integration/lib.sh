# lib.sh — helpers the integration tests share (sourced, not run). The caller sets S (the
# shard binary), C (shard_client, for free ports) and BR (the broker binary) as it needs them.
#
#   ps_test_init NAME        temp dir $T, process maps PID/EP, kill-and-remove on exit; CURVE on
#                            (ps_test_curve) unless PERSRV_TEST_PLAIN=1
#   ps_test_curve            one key pair for every daemon and tool the test starts, through
#                            the PERSRV_CURVE_KEY / _ALLOW / _SERVERS variables every daemon's
#                            config and every tool reads (the suite runs with CURVE on; the
#                            per-daemon keys of a real cluster: test_curve.sh)
#   fail MESSAGE             print MESSAGE and the tail of every log in $T, exit 1
#   start_shard NAME FLAGS…  a shard on a free port (retried), pid/ready files in $T; sets
#                            PID[NAME] and EP[NAME]
#   start_profile NAME FLAGS…  a profile daemon ($PD) on a port ZeroMQ picks, pid/ready files in
#                            $T; sets PID[NAME] and EP[NAME]
#   start_broker NAME TOPOLOGY FLAGS…  a broker on a free HTTP port with its ZeroMQ front door
#                            on a free port; sets PID[NAME], URL (HTTP), ZEP (ZeroMQ endpoint)
#   stop NAME                SIGTERM; exit status 0, pid/ready files gone, clean exit logged
#
# start_shard and start_broker listen on 127.0.0.1, or on the loopback address PS_HOST names
# (PS_HOST=127.0.0.2 start_shard …: a "host" of its own, test_multihost.sh).

ps_test_init() {
  T=$(mktemp -d "/tmp/ps_test_$1_XXXXXX")
  declare -gA PID EP
  trap ps_test_cleanup EXIT
  ps_test_curve
}

ps_test_curve() {
  [ "${PERSRV_TEST_PLAIN:-0}" = 1 ] && return 0
  [ -n "${PERSRV_TEST_BUILDER:-}" ] || fail "PERSRV_TEST_BUILDER (the builder binary, set by ctest) is needed for CURVE keys; PERSRV_TEST_PLAIN=1 runs plain"
  "$PERSRV_TEST_BUILDER" keys --out "$T/curve" cluster >/dev/null || fail "builder keys failed"
  cp "$T/curve/cluster.pub" "$T/curve/allow"
  echo "* $(cut -d' ' -f1 "$T/curve/cluster.pub")" >"$T/curve/servers"
  export PERSRV_CURVE_KEY=$T/curve/cluster.key PERSRV_CURVE_ALLOW=$T/curve/allow \
    PERSRV_CURVE_SERVERS=$T/curve/servers
}

ps_test_cleanup() {
  for n in "${!PID[@]}"; do kill -9 "${PID[$n]}" 2>/dev/null || true; done
  rm -rf "$T"
}

fail() {
  echo "FAIL: $*" >&2
  for f in "$T"/*.log; do [ -e "$f" ] && { echo "--- $f"; tail -n 20 "$f"; } >&2; done
  exit 1
}

start_shard() {
  local name=$1 port pid
  shift
  for _ in 1 2 3 4 5; do
    port=$($C freeport)
    rm -f "$T/$name.ready"
    "$S" --listen "tcp://${PS_HOST:-127.0.0.1}:$port" --ready-file "$T/$name.ready" \
      --pid-file "$T/$name.pid" "$@" 2>>"$T/$name.log" &
    pid=$!
    while [ ! -e "$T/$name.ready" ] && kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    if [ -e "$T/$name.ready" ]; then
      PID[$name]=$pid
      EP[$name]="tcp://${PS_HOST:-127.0.0.1}:$port"
      grep -qx "${EP[$name]}" "$T/$name.ready" || fail "$name: ready file does not name its endpoint"
      [ "$(cat "$T/$name.pid")" = "$pid" ] || fail "$name: pid file does not hold $pid"
      return 0
    fi
    wait "$pid" || true
    grep -q "Address already in use" "$T/$name.log" || fail "$name did not start"
  done
  fail "$name: no free port in 5 attempts"
}

start_profile() {
  local name=$1
  shift
  rm -f "$T/$name.ready"
  "$PD" --listen 'tcp://127.0.0.1:*' --ready-file "$T/$name.ready" --pid-file "$T/$name.pid" \
    "$@" 2>>"$T/$name.log" &
  PID[$name]=$!
  for _ in $(seq 1 600); do
    [ -e "$T/$name.ready" ] && break
    kill -0 "${PID[$name]}" 2>/dev/null || fail "$name exited before it was ready"
    sleep 0.05
  done
  [ -e "$T/$name.ready" ] || fail "$name not ready after 30 s"
  [ "$(cat "$T/$name.pid")" = "${PID[$name]}" ] || fail "$name: pid file does not hold ${PID[$name]}"
  EP[$name]=$(sed -n 1p "$T/$name.ready")
}

start_broker() {
  local name=$1 topo=$2
  shift 2
  rm -f "$T/$name.ready"
  "$BR" --shards "$topo" --http "${PS_HOST:-127.0.0.1}:0" --zmq "tcp://${PS_HOST:-127.0.0.1}:*" \
    --ready-file "$T/$name.ready" --pid-file "$T/$name.pid" "$@" 2>>"$T/$name.log" &
  PID[$name]=$!
  for _ in $(seq 1 600); do
    [ -e "$T/$name.ready" ] && break
    kill -0 "${PID[$name]}" 2>/dev/null || fail "$name exited before it was ready"
    sleep 0.05
  done
  [ -e "$T/$name.ready" ] || fail "$name not ready after 30 s"
  [ "$(cat "$T/$name.pid")" = "${PID[$name]}" ] || fail "$name: pid file does not hold ${PID[$name]}"
  URL="http://$(sed -n 1p "$T/$name.ready")"
  ZEP=$(sed -n 2p "$T/$name.ready")
  [ -n "$ZEP" ] || fail "$name: ready file does not name its ZeroMQ endpoint"
}

stop() {
  local name=$1 rc=0
  kill -TERM "${PID[$name]}"
  wait "${PID[$name]}" || rc=$?
  unset "PID[$name]"
  [ $rc -eq 0 ] || fail "$name exited with status $rc after SIGTERM"
  [ ! -e "$T/$name.pid" ] && [ ! -e "$T/$name.ready" ] || fail "$name left its pid/ready file"
  grep -q "event=exit status=0" "$T/$name.log" || fail "$name did not log a clean exit"
}
