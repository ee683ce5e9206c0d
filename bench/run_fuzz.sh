#!/usr/bin/env bash
# Runs every libFuzzer target of tests/fuzz (or those named) one after the other, each for a
# set time and/or number of executions, niced, from a copy of its seed corpus (the checkout's
# corpora are never written). Builds the fuzz binaries first: a build tree configured with
# CC=clang -DPERSRV_FUZZ=ON (created when missing), see tests/fuzz/README.md.
#
# Per target it reports executions, seconds, executions per second, crashes (crash-, leak-,
# timeout- and oom- files libFuzzer wrote: it stops at the first), peak RSS and the corpus
# size it ended with. Exits 1 when any target crashed (the reproducers are kept and named),
# 2 on a usage or build error.
#
# usage: bench/run_fuzz.sh [--seconds N] [--runs N] [--targets LIST] [--json] [--keep]
#                          [--no-build]
#   --seconds N   stop each target after N seconds (default 60 when --runs is not given)
#   --runs N      stop each target after N executions; with --seconds too, whichever comes
#                 first (the issue's bar: --runs 10000000 --seconds 1800)
#   --targets L   comma-separated target names without fuzz_ (default: every fuzz_*.c)
#   --json        one JSON object on stdout instead of the lines
#   --keep        keep the run directory (corpora, logs) and print its path
#   --no-build    use the binaries as they are
# environment: BUILD_DIR (default build-fuzz/ of this checkout), NICE (default 19),
#   FUZZ_ARGS (more libFuzzer flags, e.g. "-max_len=8192"), TMPDIR (where the run directory
#   goes; targets that need a scratch directory, like profile_wal, make theirs below it);
#   the flags beat the environment.
set -euo pipefail

usage() { # the header comment
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
JSON=0
KEEP=0
BUILD=1
SECONDS_EACH=""
RUNS=""
TARGETS=""
NICE=${NICE:-19}
BUILD_DIR=${BUILD_DIR:-$ROOT/build-fuzz}
while [ $# -gt 0 ]; do
  case $1 in
    --json) JSON=1 ;;
    --keep) KEEP=1 ;;
    --no-build) BUILD=0 ;;
    --seconds | --runs | --targets)
      [ $# -ge 2 ] || { echo "run_fuzz: $1 needs a value" >&2; exit 2; }
      case $1 in
        --seconds) SECONDS_EACH=$2 ;;
        --runs) RUNS=$2 ;;
        --targets) TARGETS=$2 ;;
      esac
      shift
      ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run_fuzz: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$SECONDS_EACH$RUNS" ] || SECONDS_EACH=60
for v in SECONDS_EACH RUNS; do
  [ -z "${!v}" ] || [[ ${!v} =~ ^[1-9][0-9]*$ ]] \
    || { echo "run_fuzz: ${v,,} must be a positive integer" >&2; exit 2; }
done
[[ $NICE =~ ^-?[0-9]+$ ]] || { echo "run_fuzz: NICE must be an integer" >&2; exit 2; }
command -v jq >/dev/null || { echo "run_fuzz: jq is required" >&2; exit 2; }

ALL=()
for f in "$ROOT"/tests/fuzz/fuzz_*.c; do
  n=$(basename "$f" .c)
  ALL+=("${n#fuzz_}")
done
if [ -n "$TARGETS" ]; then
  IFS=, read -r -a LIST <<<"$TARGETS"
  for t in "${LIST[@]}"; do
    [ -f "$ROOT/tests/fuzz/fuzz_$t.c" ] \
      || { echo "run_fuzz: no target $t (have: ${ALL[*]})" >&2; exit 2; }
  done
else
  LIST=("${ALL[@]}")
fi
say() { echo "run_fuzz: $*" >&2; }

# ---- the fuzz build ----------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
  if ! grep -qs '^PERSRV_FUZZ:BOOL=ON' "$BUILD_DIR/CMakeCache.txt"; then
    command -v clang >/dev/null || { echo "run_fuzz: clang is required" >&2; exit 2; }
    say "configuring $BUILD_DIR (clang, -DPERSRV_FUZZ=ON)"
    CC=clang cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DPERSRV_FUZZ=ON >&2 || { echo "run_fuzz: cmake failed" >&2; exit 2; }
  fi
  say "building ${LIST[*]/#/fuzz_}"
  nice -n "$NICE" cmake --build "$BUILD_DIR" -j "$(nproc)" --target "${LIST[@]/#/fuzz_}" >&2 \
    || { echo "run_fuzz: build failed" >&2; exit 2; }
fi
for t in "${LIST[@]}"; do
  [ -x "$BUILD_DIR/tests/fuzz_$t" ] \
    || { echo "run_fuzz: $BUILD_DIR/tests/fuzz_$t missing (build with -DPERSRV_FUZZ=ON)" >&2; exit 2; }
done

NPROC=$(nproc)
read -r L1 L5 L15 _ </proc/loadavg
CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
RUN=$(mktemp -d "${TMPDIR:-/tmp}/run_fuzz.XXXXXX")
CRASHED=0
cleanup() {
  if [ "$KEEP" = 1 ] || [ "$CRASHED" = 1 ]; then say "kept $RUN"; else rm -rf "$RUN"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- one target at a time ----------------------------------------------------------------------
: >"$RUN/results.jsonl"
for t in "${LIST[@]}"; do
  dir=$RUN/$t
  mkdir -p "$dir/corpus" "$dir/artifacts" "$dir/tmp"
  cp "$ROOT/tests/fuzz/corpus/$t"/* "$dir/corpus/" 2>/dev/null || true
  seeds=$(find "$dir/corpus" -type f | wc -l)
  args=(-print_final_stats=1 "-artifact_prefix=$dir/artifacts/")
  [ -n "$SECONDS_EACH" ] && args+=("-max_total_time=$SECONDS_EACH")
  [ -n "$RUNS" ] && args+=("-runs=$RUNS")
  # shellcheck disable=SC2206 # FUZZ_ARGS is a list of flags
  [ -n "${FUZZ_ARGS:-}" ] && args+=(${FUZZ_ARGS})
  say "fuzz_$t: $seeds seeds, ${SECONDS_EACH:-no} time limit, ${RUNS:-no} run limit"
  rc=0
  t0=$(date +%s.%N)
  TMPDIR=$dir/tmp nice -n "$NICE" "$BUILD_DIR/tests/fuzz_$t" "${args[@]}" "$dir/corpus" \
    >"$dir/log" 2>&1 || rc=$?
  t1=$(date +%s.%N)
  stat() { sed -n "s/^stat::$1:[[:space:]]*//p" "$dir/log" | tail -n 1; }
  execs=$(stat number_of_executed_units)
  rss=$(stat peak_rss_mb)
  if [ -z "$execs" ]; then # no final stats: the last "#N" status line
    execs=$(sed -n 's/^#\([0-9]*\).*/\1/p' "$dir/log" | tail -n 1)
  fi
  artifacts=$(find "$dir/artifacts" -type f | sort)
  ncrash=$(printf '%s' "$artifacts" | grep -c . || true)
  if [ "$rc" -ne 0 ] && [ "$ncrash" -eq 0 ]; then ncrash=1; fi # died without a reproducer
  [ "$ncrash" -eq 0 ] || CRASHED=1
  units=$(find "$dir/corpus" -type f | wc -l)
  jq -cn --arg target "fuzz_$t" --argjson execs "${execs:-0}" --argjson t0 "$t0" \
    --argjson t1 "$t1" --argjson crashes "$ncrash" --argjson exit "$rc" \
    --argjson rss "${rss:-null}" --argjson seeds "$seeds" --argjson units "$units" \
    --arg artifacts "$artifacts" --arg log "$dir/log" \
    '($t1 - $t0) as $s |
     {target: $target, execs: $execs, seconds: ($s * 10 | round / 10),
      exec_per_s: (if $s > 0 then ($execs / $s | round) else null end), crashes: $crashes,
      exit_code: $exit, peak_rss_mb: $rss, seeds: $seeds, corpus_units: $units,
      artifacts: ($artifacts | split("\n") | map(select(. != ""))),
      log: (if $crashes > 0 then $log else null end)}' >>"$RUN/results.jsonl"
  say "$(tail -n 1 "$RUN/results.jsonl")"
done

# ---- the report --------------------------------------------------------------------------------
jq -s --arg started "$STARTED" --arg commit "$COMMIT" --argjson nproc "$NPROC" --arg cpu "$CPU" \
  --argjson l1 "$L1" --argjson l5 "$L5" --argjson l15 "$L15" \
  --argjson seconds "${SECONDS_EACH:-null}" --argjson runs "${RUNS:-null}" \
  --argjson nice "$NICE" --arg extra "${FUZZ_ARGS:-}" --arg build "$BUILD_DIR" '
  {bench: "fuzz", started: $started, commit: $commit,
   machine: {nproc: $nproc, cpu: $cpu, loadavg_at_start: [$l1, $l5, $l15]},
   params: {seconds_each: $seconds, runs_each: $runs, nice: $nice,
            fuzz_args: (if $extra == "" then null else $extra end), build_dir: $build},
   targets: ., total_execs: (map(.execs) | add), crashes: (map(.crashes) | add)}' \
  "$RUN/results.jsonl" >"$RUN/report.json"

if [ "$JSON" = 1 ]; then
  cat "$RUN/report.json"
else
  jq -r '
    "fuzz: \(.targets | length) targets, each for \([(.params.seconds_each | select(.) | "\(.) s"), (.params.runs_each | select(.) | "\(.) runs")] | join(" or "))\(if .params.seconds_each and .params.runs_each then " (whichever first)" else "" end), nice \(.params.nice), commit \(.commit)",
    "machine: nproc \(.machine.nproc), load average at start \(.machine.loadavg_at_start | map(tostring) | join(" ")), \(.machine.cpu)",
    (.targets[] | "\(.target | . + "                    " | .[:20]) execs \(.execs | tostring | . + "            " | .[:11]) seconds \(.seconds | tostring | . + "        " | .[:8]) exec/s \(.exec_per_s | tostring | . + "        " | .[:8]) crashes \(.crashes)\(if .crashes > 0 then "  " + (.artifacts | join(" ")) + " (log " + .log + ")" else "" end)"),
    "total: \(.total_execs) executions, \(.crashes) crashes"' "$RUN/report.json"
fi
[ "$CRASHED" = 0 ] || exit 1
