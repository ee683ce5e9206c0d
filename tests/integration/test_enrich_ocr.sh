#!/usr/bin/env bash
# Issue 10 must-show 1: `builder enrich` OCR only (no model server), end to end.
#   1. 120 sticker-like images (render_stickers: vocabulary phrases in wqy-zenhei on solid,
#      gradient and noisy backgrounds, PNG/JPEG/GIF/WebP) plus a corrupt file, a truncated PNG,
#      a text file named .png and an oversized image: the four bad ones are in errors.jsonl with
#      their stage, the others in corpus.jsonl, exit status 1 and the summary say 4 failed;
#      phrase recovery >= 90% (printed with the character accuracy).
#   2. Resume: a sticker's state line deleted -> the rerun redoes it and the four failures only,
#      and writes the same corpus; SIGINT mid-run -> exit 130, the rerun does only the rest.
#   3. `builder build` accepts the corpus unchanged; a manifest keeps the fields it gives.
#   4. The confidence cut: a noisy image read with --ocr-min-conf 0 gives text, with the
#      default 0.7 none.
# usage: test_enrich_ocr.sh BUILDER RENDER_STICKERS VOCAB FONT
set -euo pipefail
B=$1 R=$2 VOCAB=$3 FONT=$4
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# 1. images and the bad ones
mkdir "$T/img"
"$R" render "$T/img" 120 2 "$VOCAB" "$FONT"
mv "$T/img/truth.tsv" "$T/truth.tsv"
head -c 3000 /dev/urandom > "$T/img/9000000000000000001.png"                # corrupt
good=$(ls "$T/img"/*.png | awk 'NR == 1')
head -c $(( $(stat -c %s "$good") / 2 )) "$good" > "$T/img/9000000000000000002.png"  # truncated
echo "not an image at all" > "$T/img/9000000000000000003.png"               # text named .png
"$R" blank "$T/img/9000000000000000004.png" 2500 2000                        # 5 megapixels

rc=0
"$B" enrich --input "$T/img" --out "$T/out" --ocr-threads 2 --max-pixels 4000000 \
    > "$T/run1.txt" 2> "$T/run1.err" || rc=$?
cat "$T/run1.txt"
[ "$rc" = 1 ] || fail "exit status $rc with 4 bad images (want 1)"
grep -q "120 done, 4 failed" "$T/run1.txt" || fail "summary does not say 4 failed"
[ "$(wc -l < "$T/out/corpus.jsonl")" = 120 ] || fail "corpus.jsonl is not 120 lines"
[ "$(wc -l < "$T/out/errors.jsonl")" = 4 ] || fail "errors.jsonl is not 4 lines"
for id in 9000000000000000001 9000000000000000002 9000000000000000003 9000000000000000004; do
    grep -q "\"id\":$id,.*\"stage\":\"decode\"" "$T/out/errors.jsonl" || fail "$id not in errors.jsonl"
done
grep "9000000000000000004" "$T/out/errors.jsonl" | grep -q "max-pixels" || fail "oversized: no cap named"
[ ! -e "$T/out/embeddings.npy" ] || fail "embeddings.npy without an embedding server"
ls "$T/out" | grep -q tmp && fail "temp files left in the output"

score=$("$R" score "$T/truth.tsv" "$T/out/corpus.jsonl" 2> "$T/misses.txt")
echo "OCR: $score"
sed 's/^/  /' "$T/misses.txt"
rec=$(sed 's/.*recovery=\([0-9.]*\).*/\1/' <<< "$score")
awk -v r="$rec" 'BEGIN { exit !(r >= 0.90) }' || fail "phrase recovery $rec < 0.90"

# 2. resume: drop one sticker's state, rerun: it and the 4 failures are redone, nothing else
cp "$T/out/corpus.jsonl" "$T/corpus1.jsonl"
victim=$(head -1 "$T/out/corpus.jsonl" | sed 's/^{"id":\([0-9]*\),.*/\1/')
grep -v "\"id\":\"$victim\"" "$T/out/state/done.jsonl" > "$T/state.tmp"
mv "$T/state.tmp" "$T/out/state/done.jsonl"
rc=0
"$B" enrich --input "$T/img" --out "$T/out" --ocr-threads 2 --max-pixels 4000000 \
    > "$T/run2.txt" 2> /dev/null || rc=$?
cat "$T/run2.txt"
[ "$rc" = 1 ] || fail "rerun exit status $rc (want 1)"
grep -q "this run: 5 images (119 already done skipped)" "$T/run2.txt" || fail "rerun redid more than the missing"
cmp -s "$T/corpus1.jsonl" "$T/out/corpus.jsonl" || fail "rerun changed corpus.jsonl"

# SIGINT mid-run: the run stops with 130 having recorded what it finished; the rerun does the rest
"$B" enrich --input "$T/img" --out "$T/out2" --ocr-threads 1 --max-pixels 4000000 \
    > "$T/run3.txt" 2> /dev/null &
pid=$!
for _ in $(seq 1 600); do
    [ -f "$T/out2/state/done.jsonl" ] && [ "$(wc -l < "$T/out2/state/done.jsonl")" -ge 10 ] && break
    sleep 0.1
done
kill -INT $pid
rc=0
wait $pid || rc=$?
cat "$T/run3.txt"
[ "$rc" = 130 ] || fail "SIGINT: exit status $rc (want 130)"
done1=$(wc -l < "$T/out2/state/done.jsonl")
[ "$done1" -lt 124 ] || fail "SIGINT came too late to test anything"
okb=$(grep -c '"ok":true' "$T/out2/state/done.jsonl" || true)
rc=0
"$B" enrich --input "$T/img" --out "$T/out2" --ocr-threads 2 --max-pixels 4000000 \
    > "$T/run4.txt" 2> /dev/null || rc=$?
cat "$T/run4.txt"
[ "$rc" = 1 ] || fail "rerun after SIGINT: exit status $rc"
ok1=$(grep -c '"ok":true' "$T/out2/state/done.jsonl" || true)
grep -q "this run: $(( 124 - okb )) images ($okb already done skipped)" "$T/run4.txt" \
    || fail "rerun after SIGINT did not do exactly the $(( 124 - okb )) stickers not done"
cmp -s "$T/corpus1.jsonl" "$T/out2/corpus.jsonl" || fail "interrupted + rerun corpus differs"
[ "$ok1" -ge 120 ] || fail "state has $ok1 done stickers"

# 3. builder build takes the corpus as it is (with a 1-column embedding per sticker)
n=$(wc -l < "$T/out/corpus.jsonl")
{
    hdr="{'descr': '<f4', 'fortran_order': False, 'shape': ($n, 1), }"
    pad=$(( 64 - (10 + ${#hdr} + 1) % 64 ))
    printf '\x93NUMPY\x01\x00'
    printf "\\x$(printf %02x $(( (${#hdr} + pad + 1) % 256 )))\\x$(printf %02x $(( (${#hdr} + pad + 1) / 256 )))"
    printf '%s%*s\n' "$hdr" "$pad" ""
    for _ in $(seq 1 "$n"); do printf '\x00\x00\x80\x3f'; done
} > "$T/emb.npy"
"$B" build --corpus "$T/out/corpus.jsonl" --embeddings "$T/emb.npy" --out "$T/index" > /dev/null \
    || fail "builder build refused the enriched corpus"

# a manifest: given fields are kept as they are, the rest is OCRed
first=$(head -1 "$T/truth.tsv" | cut -f1)
second=$(sed -n 2p "$T/truth.tsv" | cut -f1)
printf '{"id": 11, "path": "img/%s", "ocr": "given text", "queries": "q1"}\n{"id": 12, "path": "img/%s"}\n' \
    "$first" "$second" > "$T/manifest.jsonl"
"$B" enrich --manifest "$T/manifest.jsonl" --out "$T/out3" > /dev/null 2>&1 || fail "manifest run failed"
jq -s -e 'map(select(.id == 11))[0] | .ocr == "given text" and .queries == "q1"' "$T/out3/corpus.jsonl" > /dev/null \
    || fail "manifest fields not kept"
jq -s -e "map(select(.id == 12))[0] | .image == \"img/$second\" and (.ocr | length) > 0" "$T/out3/corpus.jsonl" \
    > /dev/null || fail "manifest sticker not OCRed"

# 4. the confidence cut
mkdir "$T/faint"
"$R" faint "$T/faint/77.png" "$FONT" 80
"$B" enrich --input "$T/faint" --out "$T/f0" --ocr-min-conf 0 > /dev/null 2>&1 || fail "faint run"
"$B" enrich --input "$T/faint" --out "$T/f7" > /dev/null 2>&1 || fail "faint run"
low=$(jq -r .ocr "$T/f0/corpus.jsonl")
cut=$(jq -r .ocr "$T/f7/corpus.jsonl")
echo "faint image: --ocr-min-conf 0 reads $(wc -l <<< "$low") line(s); the default keeps '${cut}'"
[ -n "$low" ] || fail "--ocr-min-conf 0 read no text in the faint image"
[ -z "$cut" ] || fail "the default cut kept low-confidence text: $cut"
echo "PASS"
