# enrich_lib.sh — helpers of the `builder enrich` tests (test_enrich_models.sh,
# test_enrich_faults.sh, test_enrich_e2e.sh); sourced, not run. The caller defines T (its temp
# dir) and fail.
#
#   render_images R N SEED VOCAB FONT [STYLES]   N images (render_stickers R: `render`, or
#                        `styled` in STYLES styles) into $T/img; truth.tsv (and styles.tsv)
#                        into $T
#   image_crc FILE       the crc32 of FILE, 8 hex digits: fake_models' name of an image
#   start_fake_models FM ARGS...   fake_models on 127.0.0.1, port picked at run time, with
#                        ARGS; sets FM_PID and MURL (its base URL)

render_images() {
  local r=$1 n=$2 seed=$3 vocab=$4 font=$5 styles=${6:-}
  mkdir -p "$T/img"
  if [ -n "$styles" ]; then
    "$r" styled "$T/img" "$n" "$seed" "$vocab" "$font" "$styles" >/dev/null || fail "render_stickers styled"
    mv "$T/img/styles.tsv" "$T/"
  else
    "$r" render "$T/img" "$n" "$seed" "$vocab" "$font" >/dev/null || fail "render_stickers"
  fi
  mv "$T/img/truth.tsv" "$T/"
  [ "$(find "$T/img" -type f | wc -l)" -eq "$n" ] || fail "rendered $(find "$T/img" -type f | wc -l) images, not $n"
}

image_crc() { gzip -c "$1" | tail -c8 | od -An -tx4 -N4 | tr -d ' \n'; }

start_fake_models() {
  local fm=$1
  shift
  rm -f "$T/fm.ready"
  "$fm" --ready "$T/fm.ready" --port 0 "$@" 2>>"$T/fm.log.err" &
  FM_PID=$!
  for _ in $(seq 1 600); do [ -s "$T/fm.ready" ] && break; sleep 0.05; done
  [ -s "$T/fm.ready" ] || fail "fake_models did not start: $(cat "$T/fm.log.err")"
  MURL=$(head -n 1 "$T/fm.ready")
}
