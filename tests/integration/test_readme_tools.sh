#!/usr/bin/env bash
# The README's tool commands that are not a daemon's, run as the README shows them on a small
# generated corpus: `bench_engine --data DATA --json` (it builds DATA/index.bench, prints one
# JSON line whose exhaustive pass agrees with the pruned one on every query) and
# `tests/run_loaded.sh BUILD RUNS` (here 1 run of a ctest tree of three quick unit tests beside
# its CPU hog: it must report the run passed and leave no hog behind).
# usage: test_readme_tools.sh BUILD_DIR
set -euo pipefail
BUILD=$(cd "$1" && pwd)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
T=$(mktemp -d /tmp/ps_test_readme_tools_XXXXXX)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
command -v jq >/dev/null || fail "jq is required (scripts/deps.sh installs it)"

"$BUILD/builder/builder" generate --out "$T/data" --stickers 3000 --dim 16 --users 4 --clicks 1000 \
  --pairs 200 --queries 100 --no-progress
"$BUILD/bench/bench_engine" --data "$T/data" --json --queries 200 >"$T/bench.json" 2>"$T/bench.err" \
  || fail "bench_engine: $(tail -5 "$T/bench.err")"
[ -d "$T/data/index.bench" ] || fail "bench_engine did not build data/index.bench"
jq -e 'select(.bench == "engine") | .stickers == 3000 and .queries == 200 and .qps > 0
    and .exhaustive_mismatches == 0 and .errors == 0' "$T/bench.json" >/dev/null \
  || fail "bench_engine's JSON: $(cat "$T/bench.json")"
echo "  bench_engine --data --json: $(jq -c '{qps, p50_ms, exhaustive_mismatches}' "$T/bench.json")"

# a ctest tree of its own (three quick unit tests of this build), so the suite's own ctest files
# are left alone
mkdir -p "$T/tree"
for t in map buf rand; do
  echo "add_test(unit.test_$t \"$BUILD/tests/test_$t\")"
done >"$T/tree/CTestTestfile.cmake"
OUT=$T/loaded "$ROOT/tests/run_loaded.sh" "$T/tree" 1 \
  >"$T/loaded.out" 2>&1 || fail "run_loaded.sh: $(tail -20 "$T/loaded.out")"
grep -q "run_loaded: run 1: PASS (3 tests" "$T/loaded.out" \
  || fail "run_loaded.sh did not report a passing run of 3 tests: $(cat "$T/loaded.out")"
grep -q "100% tests passed" "$T/loaded/run-1.log" || fail "run-1.log: $(tail -5 "$T/loaded/run-1.log")"
hogs=$(sed -n 's/.*(pids \([0-9 ]*\)).*/\1/p' "$T/loaded.out")
[ -n "$hogs" ] || fail "run_loaded.sh named no hog pids: $(cat "$T/loaded.out")"
for p in $hogs; do
  ! kill -0 "$p" 2>/dev/null || [ "$(ps -o comm= -p "$p")" != yes ] || fail "hog $p outlived run_loaded.sh"
done
echo "PASS: README tools (bench_engine, run_loaded.sh)"
