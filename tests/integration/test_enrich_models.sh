#!/usr/bin/env bash
# Issue 10, part of must-show 2: `builder enrich` with model servers, end to end through the
# test model server (fake_models: a VLM and an embedding server on 127.0.0.1, port picked at
# run time, deterministic, with injected faults):
#   - every image's first chat request answered 500 and every first embedding request 429 with
#     Retry-After: all retried, every sticker gets keywords, desc, emotion and an embedding;
#   - one image's embedding request answered with malformed JSON every time: that sticker alone
#     is in errors.jsonl (stage model), the exit status is 1, the others are in corpus.jsonl and
#     embeddings.npy (one row each, in corpus order);
#   - with the fault gone a rerun completes only that sticker (its requests alone reach the
#     server) and exits 0;
#   - stickers enriched by an OCR-only run first are redone for their model fields by the run
#     with model servers, their OCR text kept (not OCRed again);
#   - `builder build` accepts the output.
# usage: test_enrich_models.sh BUILDER RENDER_STICKERS FAKE_MODELS VOCAB FONT
set -euo pipefail
B=$1
R=$2
FM=$3
VOCAB=$4
FONT=$5
N=8
DIM=16
. "$(dirname "$0")/lib.sh"
ps_test_init enrich_models
command -v jq >/dev/null || fail "jq is required (scripts/deps.sh installs it)"

. "$(dirname "$0")/enrich_lib.sh"
render_images "$R" $N 11 "$VOCAB" "$FONT"
victim=$(ls "$T/img" | sort | awk 'NR == 1')
vcrc=$(image_crc "$T/img/$victim")

cat >"$T/faults" <<EOF
crc=$vcrc kind=embed malformed
kind=chat tries=1 status=500
kind=embed tries=1 status=429 retry_after=1
EOF
start_fake_models "$FM" --dim $DIM --faults "$T/faults" --log "$T/fm.log"
PID[fm]=$FM_PID
URL=$MURL

enrich() {
  "$B" enrich --input "$T/img" --out "$T/out" --vlm-url "$URL" --embed-url "$URL" --dim $DIM \
    --inflight 4 --timeout-ms 30000 --retries 3 >"$T/enrich.out" 2>"$T/enrich.err"
}
# OCR only first: the model run below must redo every sticker for its model fields (done
# before --vlm-url/--embed-url were given), keeping the OCR text it has.
"$B" enrich --input "$T/img" --out "$T/out" >"$T/ocr.out" 2>"$T/ocr.err" \
  || fail "OCR-only run: $(tail -n 5 "$T/ocr.err")"
[ ! -e "$T/out/embeddings.npy" ] || fail "embeddings.npy without an embedding server"
# a changed OCR text in the state shows whether the model run OCRs again or keeps it
sed -i 's/"ocr":"/"ocr":"kept /' "$T/out/state/done.jsonl"

rc=0
enrich || rc=$?
[ $rc -eq 1 ] || fail "first run: exit status $rc, not 1: $(tail -n 5 "$T/enrich.err")"
grep -q "redo=$N " "$T/enrich.err" || fail "the model run did not redo the $N OCR-only stickers: $(grep enrich_start "$T/enrich.err")"
jq -e 'select(.ocr | startswith("kept ") | not)' "$T/out/corpus.jsonl" | grep -q . \
  && fail "a redone sticker was OCRed again instead of keeping its OCR text"
[ "$(wc -l <"$T/out/errors.jsonl")" -eq 1 ] || fail "errors.jsonl: $(cat "$T/out/errors.jsonl")"
jq -e '.stage == "model"' "$T/out/errors.jsonl" >/dev/null || fail "error stage: $(cat "$T/out/errors.jsonl")"
grep -qF "$victim" "$T/out/errors.jsonl" || fail "the failed sticker is not $victim"
[ "$(wc -l <"$T/out/corpus.jsonl")" -eq $((N - 1)) ] || fail "corpus: $(wc -l <"$T/out/corpus.jsonl") lines"
jq -e 'select((.keywords | length) == 0 or (.desc | length) == 0 or (.emotion | length) == 0)' \
  "$T/out/corpus.jsonl" | grep -q . && fail "a sticker without VLM fields: $(head -c 300 "$T/out/corpus.jsonl")"
# .npy: a header, then one row of DIM float32 per corpus line
bytes=$(stat -c %s "$T/out/embeddings.npy")
[ $((bytes % 16)) -eq 0 ] && [ "$bytes" -gt $(((N - 1) * DIM * 4)) ] \
  || fail "embeddings.npy is $bytes bytes for $((N - 1)) rows of $DIM"
hdr=$((bytes - (N - 1) * DIM * 4))
head -c "$hdr" "$T/out/embeddings.npy" | grep -aq "'shape': ($((N - 1)), $DIM)" \
  || fail "embeddings.npy header: $(head -c "$hdr" "$T/out/embeddings.npy" | tr -d '\0')"
n500=$(grep -c 'action=status=500' "$T/fm.log" || true)
n429=$(grep -c 'kind=embed .*action=status=429' "$T/fm.log" || true)
nok=$(grep -c 'kind=embed .*action=ok' "$T/fm.log" || true)
[ "$n500" -ge $((N - 1)) ] || fail "only $n500 chat requests got the injected 500"
[ "$n429" -eq $((N - 1)) ] && [ "$nok" -eq $((N - 1)) ] \
  || fail "embeddings: $n429 answered 429 and $nok ok, not $((N - 1)) each (one retry per sticker)"
echo "  first run: $((N - 1)) stickers enriched through 500s and 429s, $victim failed (malformed embedding reply)"

# The fault gone, a rerun does only the failed sticker.
: >"$T/faults.new"
mv "$T/faults.new" "$T/faults"
sleep 1.1 # the server re-reads a changed fault file on its next request (mtime granularity)
before=$(wc -l <"$T/fm.log")
enrich || fail "rerun: exit status $?: $(tail -n 5 "$T/enrich.err")"
after=$(wc -l <"$T/fm.log")
new=$((after - before))
[ "$new" -ge 3 ] && [ "$new" -le 6 ] \
  || fail "the rerun made $new model requests, not those of one sticker (3, plus retries)"
[ "$(wc -l <"$T/out/corpus.jsonl")" -eq $N ] || fail "rerun: corpus has $(wc -l <"$T/out/corpus.jsonl") lines"
[ ! -s "$T/out/errors.jsonl" ] || fail "rerun: errors left: $(cat "$T/out/errors.jsonl")"
head -c 200 "$T/out/embeddings.npy" | grep -aq "'shape': ($N, $DIM)" || fail "rerun: embeddings.npy shape"
echo "  rerun: only $victim redone ($new requests), $N stickers, no errors"

"$B" build --corpus "$T/out/corpus.jsonl" --embeddings "$T/out/embeddings.npy" --out "$T/index" \
  >"$T/build.out" 2>&1 || fail "builder build on the output: $(tail -n 5 "$T/build.out")"
kill -TERM "${PID[fm]}"
wait "${PID[fm]}" 2>/dev/null || true
unset "PID[fm]"
echo "test_enrich_models: all checks passed"
