#!/usr/bin/env bash
# run_loaded.sh — the test suite on a loaded machine: runs the whole ctest suite of a build tree
# RUNS times in a row while a CPU hog (one `yes > /dev/null` per core) keeps every core busy,
# and reports, per run, pass or fail and the tests that failed. The tests must not depend on an
# idle machine (issue 13: the suite passes three times in a row beside the hog).
#
# usage: tests/run_loaded.sh BUILD_DIR [RUNS] [-- CTEST_ARGS...]
#   BUILD_DIR   a configured and built tree (cmake --build BUILD_DIR first; do not rebuild it
#               while this runs)
#   RUNS        how many times in a row (default 3)
#   CTEST_ARGS  passed to every ctest run, e.g. `-- -R integration.failover_load` to repeat one
#               test beside the hog (default: the whole suite)
# environment:
#   HOGS        busy processes (default: nproc)
#   JOBS        ctest -j (default 2)
#   OUT         where each run's ctest output goes (default: a new /tmp/ps_loaded_XXXXXX),
#               run-K.log with --output-on-failure
#
# Exit status: 0 when every run passed, 1 when any failed, 2 for bad usage. The hog processes
# are this script's children, stopped by their PIDs on exit (also on ^C or SIGTERM).
set -uo pipefail

usage() {
  sed -n '/^# usage:/,/^# Exit status/p' "$0" | sed 's/^# \{0,1\}//' | sed '$d' >&2
  exit 2
}

[ $# -ge 1 ] || usage
BUILD=$1
shift
RUNS=3
if [ $# -ge 1 ] && [ "$1" != "--" ]; then
  RUNS=$1
  shift
fi
if [ $# -ge 1 ]; then
  [ "$1" = "--" ] || usage
  shift
fi
CTEST_ARGS=("$@")
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || usage
[ -f "$BUILD/CTestTestfile.cmake" ] || {
  echo "run_loaded: $BUILD is not a configured build tree (no CTestTestfile.cmake)" >&2
  exit 2
}
HOGS=${HOGS:-$(nproc)}
JOBS=${JOBS:-2}
OUT=${OUT:-$(mktemp -d /tmp/ps_loaded_XXXXXX)}
mkdir -p "$OUT"

HOG_PIDS=()
CTEST_PID=
stop_all() {
  local p
  [ -z "$CTEST_PID" ] || kill "$CTEST_PID" 2>/dev/null
  for p in "${HOG_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${HOG_PIDS[@]}" $CTEST_PID; do wait "$p" 2>/dev/null; done
  HOG_PIDS=()
  CTEST_PID=
}
trap stop_all EXIT
trap 'echo "run_loaded: interrupted" >&2; exit 130' INT TERM

for _ in $(seq 1 "$HOGS"); do
  yes >/dev/null &
  HOG_PIDS+=($!)
done
echo "run_loaded: $RUNS run(s) of ctest -j$JOBS ${CTEST_ARGS[*]} in $BUILD beside $HOGS busy" \
  "process(es) (pids ${HOG_PIDS[*]}); logs in $OUT"

declare -A FAILS # test name -> runs it failed in
failed_runs=0
summary=()
for k in $(seq 1 "$RUNS"); do
  log="$OUT/run-$k.log"
  start=$(date +%s)
  # in the background, so that a signal reaches the trap at once (it stops ctest too)
  ctest --test-dir "$BUILD" -j"$JOBS" --output-on-failure "${CTEST_ARGS[@]}" >"$log" 2>&1 &
  CTEST_PID=$!
  wait "$CTEST_PID"
  rc=$?
  CTEST_PID=
  secs=$(($(date +%s) - start))
  # ctest lists the failures after "The following tests FAILED:" as "<tab> N - name (Why)"
  mapfile -t failed < <(sed -n '/The following tests FAILED:/,$p' "$log" |
    sed -n 's/^[[:space:]]*[0-9]\{1,\} - \([^ ]*\) (\(.*\))$/\1 (\2)/p')
  total=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\2/p' "$log")
  if [ $rc -eq 0 ]; then
    line="run $k: PASS (${total:-?} tests, ${secs}s)"
  else
    failed_runs=$((failed_runs + 1))
    line="run $k: FAIL (${#failed[@]} of ${total:-?} tests failed, ${secs}s):"
    [ ${#failed[@]} -gt 0 ] || line="$line ctest exited $rc, see $log"
    for f in "${failed[@]}"; do
      line="$line $f"
      name=${f%% *}
      FAILS[$name]="${FAILS[$name]:-}${FAILS[$name]:+,}$k"
    done
  fi
  summary+=("$line")
  echo "run_loaded: $line"
done

echo "run_loaded: summary ($RUNS run(s), $failed_runs failed; logs in $OUT)"
for line in "${summary[@]}"; do echo "  $line"; done
for name in "${!FAILS[@]}"; do echo "  $name failed in run(s) ${FAILS[$name]}"; done
[ $failed_runs -eq 0 ]
