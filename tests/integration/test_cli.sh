#!/usr/bin/env bash
# The offline pipeline end to end through its command-line tools, on a small generated corpus:
# generate -> build -> persrv search (plain, personalized, --json, bad input) -> eval (twice,
# identical output) -> a corpus with a bad line (reported with its line number).
# usage: test_cli.sh BUILDER PERSRV
set -euo pipefail
B=$1
P=$2
T=$(mktemp -d /tmp/ps_test_cli_XXXXXX)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

$B generate --out "$T/data" --stickers 20000 --dim 32 --users 4 --clicks 3000 --pairs 500 \
   --queries 300 --no-progress
$B build --corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy" \
   --clicks "$T/data/clicks.tsv" --out "$T/index" 2>/dev/null | grep -q "20000 stickers" \
   || fail "build did not report 20000 stickers"

# Building over an existing index is refused and leaves it intact.
if $B build --corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy" \
   --out "$T/index" 2>"$T/err"; then fail "build over an existing index succeeded"; fi
grep -q "not empty" "$T/err" || fail "no clear error for an existing index: $(cat "$T/err")"

q=$(awk -F'\t' 'NR == 1 { print $2; exit }' "$T/data/clicks.tsv")
out=$($P search --index "$T/index" --k 5 "$q")
echo "$out" | grep -q "^5 hits" || fail "search for '$q' did not return 5 hits: $out"
out=$($P search --index "$T/index" --user u01 --k 5 --explain "$q")
echo "$out" | grep -q "relevance" || fail "--explain shows no breakdown"
out=$($P search --index "$T/index" --user nobody --k 3 "$q")
echo "$out" | grep -q "no profile" || fail "unknown user not reported as unpersonalized"
$P search --index "$T/index" --json "$q" | grep -q '"hits":\[{"id":"' || fail "--json output"

# Bad input: a clear error and exit status 1, never a crash.
set +e
$P search --index "$T/index" "~~~" 2>"$T/err"; rc=$?
[ $rc -eq 1 ] && grep -q "invalid_query" "$T/err" || fail "empty query: rc=$rc $(cat "$T/err")"
$P search --index "$T/index" $'\xff\xfe' 2>"$T/err"; rc=$?
[ $rc -eq 1 ] && grep -q "invalid_utf8" "$T/err" || fail "invalid UTF-8: rc=$rc $(cat "$T/err")"
$P search --index "$T/nowhere" "hi" 2>"$T/err"; rc=$?
[ $rc -eq 1 ] || fail "missing index: rc=$rc"
$P search --index "$T/index" --k 0 "hi" 2>/dev/null; rc=$?
[ $rc -eq 2 ] || fail "--k 0 accepted: rc=$rc"
set -e

# eval: same seed, same table.
$B eval --data "$T/data" >"$T/eval1" 2>/dev/null
$B eval --data "$T/data" >"$T/eval2" 2>/dev/null
cmp -s "$T/eval1" "$T/eval2" || fail "eval is not deterministic"
for m in "Global Pop" "User Pop" "BM25 " "BM25 (+OCR)" "PerSRV w/o personalization" "PerSRV "; do
  grep -q "^$m" "$T/eval1" || fail "eval table lacks row '$m'"
done
$B eval --data "$T/data" --seed 7 >"$T/eval3" 2>/dev/null
cmp -s "$T/eval1" "$T/eval3" && fail "a different split seed printed the same table"

# A bad line is reported with its line number, and nothing is built.
head -2 "$T/data/corpus.jsonl" >"$T/bad.jsonl"
echo '{"id": "not a number", "ocr": "x"}' >>"$T/bad.jsonl"
sed -n 4,5p "$T/data/corpus.jsonl" >>"$T/bad.jsonl"
if $B build --corpus "$T/bad.jsonl" --embeddings "$T/data/embeddings.npy" --out "$T/bad" \
   2>"$T/err"; then fail "a corpus with a bad line was built"; fi
grep -q "bad.jsonl:3:" "$T/err" || fail "bad line not reported with its number: $(cat "$T/err")"
[ ! -e "$T/bad/CURRENT" ] || fail "an index was written for a bad corpus"
echo "test_cli: all checks passed"
