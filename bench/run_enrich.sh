#!/usr/bin/env bash
# The enrichment benchmark (issue 10): images per second of `builder enrich` on a sample of
# rendered sticker images, in three modes:
#   ocr     OCR alone (Tesseract), --ocr-threads 1 and 2;
#   full    OCR (--ocr-threads 2) + VLM (2 requests a sticker) + embeddings (1 request a
#           sticker) against tests/integration/fake_models, every request answered after a
#           simulated model latency, at --inflight 1, 8 and 32;
#   models  the model client alone: the same with a manifest that gives each sticker's `ocr`
#           (taken from the first OCR run), so no OCR runs (the image is still read and
#           decoded); this isolates the HTTP concurrency. Its ceiling is
#           inflight / (3 requests x latency) images/s.
# OCR costs per image, so a sample gives the rate (a full 543k-image run would take hours).
# Every run writes to a fresh output directory (nothing is resumed) and must exit 0 with one
# corpus.jsonl line per image, an empty errors.jsonl and, with models, keywords on every line,
# embeddings.npy and at least 3 requests a sticker at the server (any more are retries);
# otherwise the benchmark fails. Configurations are run in rounds (every configuration once, RUNS times), so a drift
# of the machine's speed spreads over all of them. images/s = images / wall seconds of the
# whole process (start-up included); requests/s = requests counted in fake_models' --log
# during the run / wall seconds.
#
# usage: bench/run_enrich.sh [--json] [--images N] [--runs N] [--latency-ms N]
#                            [--inflight LIST] [--keep]
# Human-readable lines on stdout by default; with --json one JSON object instead (parameters,
# machine, per configuration its runs and min/median/max). Progress goes to stderr.
# environment: BUILD_DIR (build tree, default build/ of this checkout: builder/builder,
#   tests/render_stickers, tests/fake_models), IMAGES (default 200), RUNS (default 3),
#   LATENCY_MS (default 100), INFLIGHT (default 1,8,32), SEED (render seed, default 1),
#   DIM (embedding dimension, default 512), FONT (default the WenQuanYi Zen Hei .ttc),
#   VOCAB (default builder/vocab.txt), TMPDIR (where the temporary directory goes);
#   the flags beat the environment. The builder inherits the environment: `builder enrich`
#   sets OMP_THREAD_LIMIT=1 (Tesseract's OpenMP threads) unless it is set already; the report
#   says whether it was set here.
set -euo pipefail

usage() { # the header comment
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
JSON=0
KEEP=0
IMAGES=${IMAGES:-200}
RUNS=${RUNS:-3}
LATENCY_MS=${LATENCY_MS:-100}
INFLIGHT=${INFLIGHT:-1,8,32}
SEED=${SEED:-1}
DIM=${DIM:-512}
FONT=${FONT:-/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc}
VOCAB=${VOCAB:-$ROOT/builder/vocab.txt}
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
while [ $# -gt 0 ]; do
  case $1 in
    --json) JSON=1 ;;
    --keep) KEEP=1 ;;
    --images | --runs | --latency-ms | --inflight)
      [ $# -ge 2 ] || { echo "run_enrich: $1 needs a value" >&2; exit 2; }
      case $1 in
        --images) IMAGES=$2 ;;
        --runs) RUNS=$2 ;;
        --latency-ms) LATENCY_MS=$2 ;;
        --inflight) INFLIGHT=$2 ;;
      esac
      shift
      ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run_enrich: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for v in IMAGES RUNS DIM SEED; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "run_enrich: $v must be a positive integer" >&2; exit 2; }
done
[[ $LATENCY_MS =~ ^[0-9]+$ ]] || { echo "run_enrich: latency must be an integer >= 0" >&2; exit 2; }
[[ $INFLIGHT =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] \
  || { echo "run_enrich: --inflight must be a list like 1,8,32" >&2; exit 2; }
IFS=, read -r -a LEVELS <<<"$INFLIGHT"

BUILD_DIR=$(cd "$BUILD_DIR" && pwd)
B=$BUILD_DIR/builder/builder
RS=$BUILD_DIR/tests/render_stickers
FM=$BUILD_DIR/tests/fake_models
for x in "$B" "$RS" "$FM"; do
  [ -x "$x" ] || { echo "run_enrich: $x is not an executable (BUILD_DIR?)" >&2; exit 2; }
done
for f in "$FONT" "$VOCAB"; do
  [ -r "$f" ] || { echo "run_enrich: cannot read $f" >&2; exit 2; }
done
command -v jq >/dev/null || { echo "run_enrich: jq is required" >&2; exit 2; }
# GNU time gives each run's peak RSS; without it the figure is null.
GTIME=""
/usr/bin/time -f %M -o /dev/null true 2>/dev/null && GTIME=/usr/bin/time

# The machine, before anything runs.
NPROC=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc) # nproc obeys both
read -r L1 L5 L15 _ </proc/loadavg
CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
OMP_LIMIT=${OMP_THREAD_LIMIT:-}

FM_PID=""
RUN=$(mktemp -d "${TMPDIR:-/tmp}/run_enrich.XXXXXX")
cleanup() {
  if [ -n "$FM_PID" ]; then
    kill -TERM "$FM_PID" 2>/dev/null || true
    wait "$FM_PID" 2>/dev/null || true
  fi
  if [ "$KEEP" = 1 ]; then echo "run_enrich: kept $RUN" >&2; else rm -rf "$RUN"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() {
  echo "run_enrich: FAIL: $*" >&2
  for f in "$RUN"/*.log; do [ -e "$f" ] && { echo "--- $f"; tail -n 20 "$f"; } >&2; done
  exit 1
}
say() { echo "run_enrich: $*" >&2; }

# ---- the sample ------------------------------------------------------------------------------
mkdir "$RUN/img"
say "rendering $IMAGES images (seed $SEED) into $RUN/img"
"$RS" render "$RUN/img" "$IMAGES" "$SEED" "$VOCAB" "$FONT" >>"$RUN/render.log" 2>&1 \
  || fail "render_stickers"
n=$(find "$RUN/img" -type f \( -name '*.png' -o -name '*.jpg' -o -name '*.gif' -o -name '*.webp' \) | wc -l)
[ "$n" -eq "$IMAGES" ] || fail "render_stickers made $n images, not $IMAGES"
BYTES=$(du -sb "$RUN/img" | cut -f1)

# ---- the model server ------------------------------------------------------------------------
FAULT=()
[ "$LATENCY_MS" -gt 0 ] && FAULT=(--fault "delay=$LATENCY_MS")
"$FM" --ready "$RUN/fm.ready" --port 0 --dim "$DIM" "${FAULT[@]}" --log "$RUN/requests.txt" \
  2>>"$RUN/fake_models.log" &
FM_PID=$!
for _ in $(seq 1 200); do
  [ -s "$RUN/fm.ready" ] && break
  kill -0 "$FM_PID" 2>/dev/null || fail "fake_models exited before it was ready"
  sleep 0.05
done
[ -s "$RUN/fm.ready" ] || fail "fake_models not ready after 10 s"
URL=$(head -n 1 "$RUN/fm.ready")
say "fake_models at $URL, latency $LATENCY_MS ms a request"
MODELS=(--vlm-url "$URL" --vlm-model fake-vlm --embed-url "$URL" --embed-model fake-clip)

# ---- one run ---------------------------------------------------------------------------------
# one_run CONFIG MODE OCR_THREADS INFLIGHT ROUND builder-enrich-args...: runs builder enrich
# into a fresh $RUN/out, checks its output, appends a JSON line to $RUN/runs.jsonl.
one_run() {
  local config=$1 mode=$2 threads=$3 inflight=$4 round=$5
  shift 5
  local out=$RUN/out rc=0 r0 r1 t0 t1
  rm -rf "$out"
  r0=$(wc -l <"$RUN/requests.txt" 2>/dev/null || echo 0)
  local timer=()
  [ -n "$GTIME" ] && timer=("$GTIME" -f %M -o "$RUN/rss.txt")
  t0=$(date +%s.%N)
  "${timer[@]}" "$B" enrich --out "$out" "$@" >"$RUN/stdout.txt" 2>"$RUN/enrich.log" || rc=$?
  t1=$(date +%s.%N)
  r1=$(wc -l <"$RUN/requests.txt" 2>/dev/null || echo 0)
  [ "$rc" -eq 0 ] || fail "$config run $round: builder enrich exited $rc: $(cat "$RUN/stdout.txt")"
  local lines
  lines=$(wc -l <"$out/corpus.jsonl")
  [ "$lines" -eq "$IMAGES" ] || fail "$config run $round: corpus.jsonl has $lines lines, not $IMAGES"
  [ ! -s "$out/errors.jsonl" ] || fail "$config run $round: errors.jsonl is not empty"
  local requests=$((r1 - r0)) retries=0
  if [ "$mode" != ocr ]; then
    [ "$(grep -c '"keywords":' "$out/corpus.jsonl")" -eq "$IMAGES" ] \
      || fail "$config run $round: corpus.jsonl lines without keywords"
    [ -s "$out/embeddings.npy" ] || fail "$config run $round: no embeddings.npy"
    [ "$requests" -ge $((3 * IMAGES)) ] \
      || fail "$config run $round: $requests requests at the server, fewer than 3 x $IMAGES"
    # (fake_models' attempt= counts over its whole life, and every run sends the same images)
    retries=$((requests - 3 * IMAGES))
  fi
  [ "$requests" -eq 0 ] || [ "$mode" != ocr ] || fail "$config run $round: OCR alone sent requests"
  if [ "$config" = ocr_t1 ] && [ ! -e "$RUN/manifest.jsonl" ]; then
    # The manifest of the "models" mode: this run's lines (id, ocr, image) + the image's path.
    [ "$(grep -c '"ocr":' "$out/corpus.jsonl")" -eq "$IMAGES" ] \
      || fail "OCR run: corpus.jsonl lines without ocr (the manifest would not skip OCR)"
    sed 's/"image":"\([^"]*\)"}$/"image":"\1","path":"img\/\1"}/' "$out/corpus.jsonl" \
      >"$RUN/manifest.jsonl"
    [ "$(grep -c '"path":' "$RUN/manifest.jsonl")" -eq "$IMAGES" ] \
      || fail "OCR run: cannot make the manifest from corpus.jsonl"
    cp "$out/corpus.jsonl" "$RUN/ocr_corpus.jsonl"
  fi
  local rss=null
  [ -n "$GTIME" ] && rss=$(tail -n 1 "$RUN/rss.txt")
  jq -cn --arg config "$config" --arg mode "$mode" --argjson threads "$threads" \
    --argjson inflight "$inflight" --argjson round "$round" --argjson images "$IMAGES" \
    --argjson t0 "$t0" --argjson t1 "$t1" --argjson requests "$requests" \
    --argjson retries "$retries" --argjson rss "$rss" \
    '($t1 - $t0) as $wall |
     {config: $config, mode: $mode, ocr_threads: $threads,
      inflight: (if $mode == "ocr" then null else $inflight end), run: $round,
      wall_s: ($wall * 1000 | round / 1000),
      images_per_s: ($images / $wall * 100 | round / 100),
      requests: $requests, retries: $retries,
      requests_per_s: ($requests / $wall * 100 | round / 100),
      peak_rss_mb: (if $rss == null then null else ($rss / 1024 * 10 | round / 10) end)}' \
    >>"$RUN/runs.jsonl"
  say "$(tail -n 1 "$RUN/runs.jsonl")"
  rm -rf "$out"
}

# ---- the configurations, in rounds -----------------------------------------------------------
: >"$RUN/runs.jsonl"
for ((round = 1; round <= RUNS; round++)); do
  say "round $round of $RUNS"
  one_run ocr_t1 ocr 1 0 "$round" --input "$RUN/img" --ocr-threads 1
  one_run ocr_t2 ocr 2 0 "$round" --input "$RUN/img" --ocr-threads 2
  for k in "${LEVELS[@]}"; do
    one_run "full_i$k" full 2 "$k" "$round" --input "$RUN/img" --ocr-threads 2 \
      "${MODELS[@]}" --inflight "$k"
  done
  for k in "${LEVELS[@]}"; do
    one_run "models_i$k" models 1 "$k" "$round" --manifest "$RUN/manifest.jsonl" \
      "${MODELS[@]}" --inflight "$k"
  done
done

# How well the OCR reads the sample (from the first OCR run), for the record.
OCR_SCORE=$("$RS" score "$RUN/img/truth.tsv" "$RUN/ocr_corpus.jsonl" 2>/dev/null | head -n 1 || true)

# ---- the report ------------------------------------------------------------------------------
jq -s --argjson images "$IMAGES" --argjson runs "$RUNS" --argjson latency "$LATENCY_MS" \
  --argjson seed "$SEED" --argjson dim "$DIM" --argjson bytes "$BYTES" \
  --arg inflight "$INFLIGHT" --argjson nproc "$NPROC" --arg cpu "$CPU" \
  --argjson l1 "$L1" --argjson l5 "$L5" --argjson l15 "$L15" --arg commit "$COMMIT" \
  --arg started "$STARTED" --arg ocr_score "$OCR_SCORE" --arg omp "$OMP_LIMIT" '
  def stats: sort as $s | ($s | length) as $n |
    {min: $s[0], median: (if $n % 2 == 1 then $s[($n - 1) / 2]
                          else (($s[$n / 2 - 1] + $s[$n / 2]) / 2 * 100 | round / 100) end),
     max: $s[$n - 1]};
  {bench: "enrich", started: $started, commit: $commit,
   machine: {nproc: $nproc, cpu: $cpu, loadavg_at_start: [$l1, $l5, $l15]},
   params: {images: $images, image_bytes: $bytes, render_seed: $seed, runs: $runs,
            model_latency_ms: $latency, requests_per_image: 3, embedding_dim: $dim,
            inflight: ($inflight | split(",") | map(tonumber)),
            full_ocr_threads: 2, models_ocr_threads: 1,
            env_omp_thread_limit: (if $omp == "" then null else $omp end)},
   ocr_score: $ocr_score,
   configs: (group_by(.config) | map({
     config: .[0].config, mode: .[0].mode, ocr_threads: .[0].ocr_threads,
     inflight: .[0].inflight,
     images_per_s: (map(.images_per_s) | stats),
     requests_per_s: (if .[0].mode == "ocr" then null else (map(.requests_per_s) | stats) end),
     ceiling_images_per_s: (if .[0].mode == "ocr" or $latency == 0 then null
                            else (.[0].inflight * 1000 / (3 * $latency) * 100 | round / 100) end),
     retries: (map(.retries) | add),
     peak_rss_mb_max: (map(.peak_rss_mb) | if any(. == null) then null else max end),
     runs: map(del(.config, .mode, .ocr_threads, .inflight))})
     | sort_by({ocr: 0, full: 1, models: 2}[.mode], .ocr_threads, .inflight))}' \
  "$RUN/runs.jsonl" >"$RUN/report.json" || fail "jq: the report"

if [ "$JSON" = 1 ]; then
  cat "$RUN/report.json"
else
  jq -r '
    def mm: "\(.median) [\(.min)..\(.max)]";
    "enrich bench: \(.params.images) images (\(.params.image_bytes / 1048576 * 10 | round / 10) MiB, seed \(.params.render_seed)), \(.params.runs) runs each (median [min..max]), model latency \(.params.model_latency_ms) ms a request, 3 requests an image, OMP_THREAD_LIMIT \(.params.env_omp_thread_limit // "unset")",
    "machine: nproc \(.machine.nproc), load average at start \(.machine.loadavg_at_start | map(tostring) | join(" ")), \(.machine.cpu), commit \(.commit)",
    "ocr sample: \(.ocr_score)",
    (.configs[] |
      if .mode == "ocr" then
        "ocr     threads=\(.ocr_threads)             images/s \(.images_per_s | mm)  peak RSS \(.peak_rss_mb_max) MB"
      else
        "\(.mode | . + "      " | .[:7]) threads=\(.ocr_threads) inflight=\(.inflight | tostring | . + "  " | .[:2])  images/s \(.images_per_s | mm)  requests/s \(.requests_per_s | mm)  ceiling \(.ceiling_images_per_s) images/s  retries \(.retries)  peak RSS \(.peak_rss_mb_max) MB"
      end)' "$RUN/report.json"
fi
