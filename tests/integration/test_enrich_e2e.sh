#!/usr/bin/env bash
# Issue 10 must-show 3, end to end: sticker images -> `builder enrich` (Tesseract OCR, VLM text
# and image embeddings from the test model server) -> the README's local cluster on that corpus
# (scripts/cluster-up.sh with PERSRV_CORPUS: `builder build --shards 2`, 2 shards x 2 replicas,
# the profile service, the broker), then:
#   - a search for the phrase drawn on a sticker has it in the top 3 for at least 90% of them
#     (the rest: Tesseract misread the phrase or kept no line above the confidence cut), and
#     every sticker with OCR text is in the top 3 for that text;
#   - every sticker is found by its VLM keywords: the first hit of a search for them;
#   - a user who clicks stickers of one visual style (live clicks through the broker; the
#     profile service builds the style profile from the embeddings the shards serve) gets that
#     style ranked higher than another user and an anonymous one do: every sticker clicked and
#     some of that style never clicked are boosted by the profile, none of another style.
# The images come in 3 styles (render_stickers styled: palette, border band, text size); the
# test model server's embeddings are computed from the pixels (fake_models --embed palette),
# so a style is only visible to the ranking through the served embeddings.
# usage: test_enrich_e2e.sh BUILD_DIR RENDER_STICKERS FAKE_MODELS VOCAB FONT
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(cd "$1" && pwd)
R=$2 FM=$3 VOCAB=$4 FONT=$5
N=45 STYLES=3 DIM=24 CLICKED=9
B=$BIN/builder/builder
T=$(mktemp -d /tmp/ps_test_enrich_e2e_XXXXXX)
export PERSRV_DEMO_DIR=$T/demo PERSRV_SKIP_BUILD=1 PERSRV_BIN_DIR=$BIN PERSRV_CORPUS=$T/stickers
export PERSRV_READY_TIMEOUT=120 PERSRV_STOP_TIMEOUT=20
RUN=$T/demo/run
FMPID=
cleanup() {
  "$ROOT/scripts/cluster-down.sh" >/dev/null 2>&1 || true
  local f
  for f in "$RUN"/*.pid; do [ -e "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
  [ -n "$FMPID" ] && kill -9 "$FMPID" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  for f in "$T"/*.out "$T"/*.err "$RUN"/*.log; do
    [ -e "$f" ] && { echo "--- $f"; tail -n 20 "$f"; } >&2
  done
  exit 1
}
command -v curl >/dev/null || fail "curl is required (scripts/deps.sh installs it)"
command -v jq >/dev/null || fail "jq is required (scripts/deps.sh installs it)"
. "$(dirname "$0")/demo_lib.sh"

# ---- images and the model server -------------------------------------------------------------
. "$(dirname "$0")/enrich_lib.sh"
render_images "$R" $N 5 "$VOCAB" "$FONT" $STYLES
start_fake_models "$FM" --dim $DIM --embed palette --log "$T/fm.log"
FMPID=$FM_PID

# ---- enrich --------------------------------------------------------------------------------
"$B" enrich --input "$T/img" --out "$T/stickers" --vlm-url "$MURL" --vlm-model fake \
  --embed-url "$MURL" --embed-model fake \
  --dim $DIM --ocr-threads 2 --inflight 8 >"$T/enrich.out" 2>"$T/enrich.err" \
  || fail "builder enrich: exit status $?"
cat "$T/enrich.out"
[ "$(grep -c . "$T/stickers/corpus.jsonl")" = $N ] || fail "corpus.jsonl is not $N lines"
score=$("$R" score "$T/truth.tsv" "$T/stickers/corpus.jsonl" 2>"$T/misses.err")
echo "  OCR: $score"
# file -> id, keywords, style (ids as text: jq 1.6 would round 19-digit numbers)
sed -E 's/^\{"id":([0-9]+),.*"keywords":"([^"]*)".*"image":"([^"]*)".*/\3\t\1\t\2/' \
  "$T/stickers/corpus.jsonl" | sort >"$T/ids.tsv"
[ "$(cut -f2 "$T/ids.tsv" | grep -cE '^[0-9]+$')" = $N ] || fail "ids: $(head -n 3 "$T/ids.tsv")"
sort "$T/truth.tsv" | join -t $'\t' "$T/ids.tsv" - >"$T/j1"
sort "$T/styles.tsv" | join -t $'\t' "$T/j1" - >"$T/stickers.tsv" # file id keywords phrase style
[ "$(grep -c . "$T/stickers.tsv")" = $N ] || fail "joined $(grep -c . "$T/stickers.tsv") of $N stickers"

# ---- the local cluster on the enriched corpus ---------------------------------------------------
cluster_up_free_ports
URL="http://127.0.0.1:$HTTP"
echo "  cluster-up.sh with PERSRV_CORPUS: broker at $URL"
jq -e '.shards == 2' "$T/demo/cluster/cluster.json" >/dev/null || fail "the build is not 2 shards"
# the corpus served is the enriched one (cluster-up may have built it in an earlier attempt
# that lost a port race, so its output is not where to look)
served=$(cat "$T/demo/cluster"/shard-*/snapshot.json | jq -s 'map(.stickers) | add')
[ "$served" = $N ] || fail "the cluster serves $served stickers, not the $N enriched"
grep -q '^corpus ' "$T/demo/cluster/.stickers" || fail "cluster-up did not build PERSRV_CORPUS"

# search Q USER K: the hit ids, one per line, in order (every answer complete)
search() {
  local body
  body=$(curl -sS -G --data-urlencode "q=$1" --data-urlencode "user=$2" --data-urlencode "k=$3" \
    "$URL/v1/search") || fail "search '$1' failed"
  jq -e '.partial == false and .shards.successful == 2' <<<"$body" >/dev/null \
    || fail "search '$1': not a complete answer: $(head -c 300 <<<"$body")"
  sed -E 's/"id":([0-9]+)/"id":"\1"/g' <<<"$body" >"$T/last.json"
  jq -r '.hits[].id' "$T/last.json"
}

# ---- found by the OCR phrase and by the VLM keywords ------------------------------------------
# The phrase drawn on a sticker finds it (top 3) when the OCR read it well enough: at least 90%
# must (the others are listed). The OCR text itself, what the index holds when Tesseract kept a
# line, must always find its sticker (top 3), and the VLM keywords must (the first hit).
by_phrase=0 by_ocr=0 by_kw=0 no_ocr=0 missed=
while IFS=$'\t' read -r file id kw phrase style; do
  ocr=$(grep -F "\"image\":\"$file\"" "$T/stickers/corpus.jsonl" | jq -r .ocr)
  if search "$phrase" "" 3 | grep -qx "$id"; then
    by_phrase=$((by_phrase + 1))
  else
    missed+=" '$phrase' (OCR: '${ocr//$'\n'/ }');"
  fi
  if [ -n "$ocr" ]; then
    search "$ocr" "" 3 | grep -qx "$id" || fail "$file ($id): not in the top 3 for its OCR text '$ocr'"
    by_ocr=$((by_ocr + 1))
  else
    no_ocr=$((no_ocr + 1))
  fi
  [ "$(search "$kw" "" 1)" = "$id" ] || fail "$file ($id): not the first hit for its keywords '$kw'"
  by_kw=$((by_kw + 1))
done <"$T/stickers.tsv"
echo "  found by the phrase drawn on them (top 3): $by_phrase of $N; not:${missed:- none}"
echo "  found by their OCR text (top 3): $by_ocr of $by_ocr ($no_ocr have no OCR line above the cut)"
echo "  found by their VLM keywords (first hit): $by_kw of $N"
[ $((by_phrase * 10)) -ge $((N * 9)) ] || fail "only $by_phrase of $N found by their phrase"

# ---- a user's clicks on one style rank that style higher ---------------------------------------
# ua clicks the first CLICKED stickers of style 0, ub those of style 1, through the broker.
click() {
  local st
  st=$(curl -s -o "$T/click.json" -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    --data "{\"user\": \"$1\", \"sticker_id\": \"$2\", \"query\": \"sticker\"}" "$URL/v1/click")
  [ "$st" = 200 ] || fail "click $1 $2: status $st: $(cat "$T/click.json")"
}
: >"$T/clicked"
for u in ua:0 ub:1; do
  awk -F'\t' -v s="${u#*:}" '$5 == s { print $2 }' "$T/stickers.tsv" | head -n $CLICKED \
    | while read -r id; do
      click "${u%:*}" "$id"
      echo "$id" >>"$T/clicked"
    done
done
# The broker reads profiles from the replica: wait until both users' searches are personalized.
for u in ua ub; do
  for i in $(seq 1 300); do
    search sticker "$u" 1 >/dev/null
    jq -e '.personalized == true' "$T/last.json" >/dev/null && break
    [ "$i" = 300 ] && fail "$u's searches are not personalized 60 s after the clicks"
    sleep 0.2
  done
done
# Every sticker's keywords and description hold "sticker", so a search for it returns all N
# with one relevance and one utility: without a profile the order is by id, and all that moves
# a sticker for a user is that user's style profile (preference > 1: the sticker's served
# embedding is within a centroid's radius, DESIGN §1 step 3).
# answer USER: "id \t preference" in rank order into $T/rank.USER (anon: no user)
answer() {
  search sticker "${1#anon}" $N >/dev/null
  jq -r '.hits[] | "\(.id)\t\(.preference)"' "$T/last.json" >"$T/rank.$1"
  [ "$(grep -c . "$T/rank.$1")" = $N ] || fail "the answer for $1 does not hold all $N stickers"
}
for u in anon ua ub; do answer $u; done
# mean_rank USER STYLE [unclicked]: the mean rank (1-based) of the style's stickers
mean_rank() {
  awk -F'\t' -v s="$2" -v only="${3:-}" 'FILENAME == ARGV[1] { clicked[$1] = 1; next }
    FILENAME == ARGV[2] { rank[$1] = FNR; next }
    $5 == s && !(only && ($2 in clicked)) { sum += rank[$2]; n++ }
    END { printf "%.2f\n", sum / n }' "$T/clicked" "$T/rank.$1" "$T/stickers.tsv"
}
# boosted USER: "style clicked|unclicked" of each sticker with preference > 1
boosted() {
  awk -F'\t' 'FILENAME == ARGV[1] { clicked[$1] = 1; next }
    FILENAME == ARGV[2] { style[$2] = $5; next }
    $2 > 1 { print style[$1], ($1 in clicked) ? "clicked" : "unclicked" }' \
    "$T/clicked" "$T/stickers.tsv" "$T/rank.$1"
}
lower() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }
for s in 0 1 2; do
  echo "  style $s: mean rank $(mean_rank anon $s) anonymous, $(mean_rank ua $s) for ua" \
    "(clicked style 0), $(mean_rank ub $s) for ub (clicked style 1); of its stickers nobody" \
    "clicked: $(mean_rank anon $s 1), $(mean_rank ua $s 1), $(mean_rank ub $s 1)"
done
check_user() { # USER STYLE OTHER
  local u=$1 s=$2 o=$3
  boosted "$u" | sort | uniq -c | sed "s/^ */  $u: boosted /"
  boosted "$u" | grep -v "^$s " | grep -q . && fail "$u: stickers of another style than $s boosted"
  [ "$(boosted "$u" | grep -c "^$s clicked")" = $CLICKED ] \
    || fail "$u: not all $CLICKED clicked stickers of style $s boosted"
  boosted "$u" | grep -q "^$s unclicked" \
    || fail "$u: no sticker of style $s that $u did not click is boosted: the profile does not generalize"
  lower "$(mean_rank "$u" "$s")" "$(mean_rank anon "$s")" \
    && lower "$(mean_rank "$u" "$s")" "$(mean_rank "$o" "$s")" \
    || fail "$u clicked style $s, but style $s does not rank higher for $u"
}
check_user ua 0 ub
check_user ub 1 ua
top=$((N / STYLES))
own=$(head -n $top "$T/rank.ua" | cut -f1 | while read -r id; do
  awk -F'\t' -v i="$id" '$2 == i { print $5 }' "$T/stickers.tsv"
done | grep -cx 0 || true)
echo "  ua's top $top: $own of style 0 (anonymous: $(head -n $top "$T/rank.anon" | cut -f1 \
  | while read -r id; do awk -F'\t' -v i="$id" '$2 == i { print $5 }' "$T/stickers.tsv"; done \
  | grep -cx 0 || true))"

"$ROOT/scripts/cluster-down.sh" >"$T/down.out" 2>&1 || fail "cluster-down.sh: $(cat "$T/down.out")"
echo "test_enrich_e2e: all checks passed"
