#!/usr/bin/env bash
# `persrv search --index DIR --queries FILE`, the batch mode, against one process per query on a
# small generated corpus (20,000 stickers, 8 users):
#   1. 2,500 queries of the click log in one batch — plain lines, and every third line a JSON
#      object with a user (every fifth of those with "k": 3, every seventh with "R": 5 and "k":
#      7) — print, line by line, byte for byte what 2,500 separate `persrv search --index --json`
#      calls print once `took` and `took_us` are removed (both integers, took = ⌊took_us/1000⌋);
#      the same batch from stdin (--queries -) prints the same.
#   2. The command line's --user, --k, --R are every line's defaults, a JSON line's "user" (or
#      null: nobody), "k", "R" override them: 200 lines == 200 single calls with those flags.
#   3. Bad lines (no token, empty, invalid UTF-8, NUL byte, over 1 MiB, bad JSON, wrong or
#      missing fields) each get {"error": ..., "line": N} — for a query the single mode can take,
#      its --json error object plus the line number — their message on stderr, and the batch goes
#      on: the good lines around them are answered as single calls answer them; exit status 1.
#   4. A queries file or index that does not open: exit 1 and a message; --queries with --broker
#      or a QUERY argument: exit 2.
# Prints the wall time of the batch and of the single calls (not checked).
# usage: test_cli_batch.sh BUILDER PERSRV
set -euo pipefail
B=$1
P=$2
T=$(mktemp -d /tmp/ps_test_cli_batch_XXXXXX)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
command -v jq >/dev/null || fail "jq is required (scripts/deps.sh installs it)"
N=2500

$B generate --out "$T/data" --stickers 20000 --dim 32 --users 8 --clicks 3000 --pairs 2500 \
  --queries 2000 --no-progress 2>/dev/null
$B build --corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy" \
  --clicks "$T/data/clicks.tsv" --out "$T/index" >/dev/null 2>&1 || fail "build failed"
I=$T/index

# strip_took FILE: the answers without their "took" and "took_us" (the only fields that differ
# between two runs), byte for byte otherwise; an error line passes unchanged.
strip_took() { sed -E 's/^\{"took":[0-9]+,"took_us":[0-9]+,/{/' "$1"; }

# run_singles SPEC OUT [FLAGS…]: one `persrv search --index --json` process per line of SPEC
# (fields user, k, R, query separated by \x1f; an empty field: no such flag; user "-": the FLAGS'
# user is dropped), two at a time; OUT gets their stdout in SPEC's order.
run_singles() {
  local spec=$1 out=$2 w
  shift 2
  for w in 0 1; do
    (
      n=0
      while IFS=$'\x1f' read -r u k r q; do
        n=$((n + 1))
        [ $((n % 2)) -eq $w ] || continue
        args=("$@")
        if [ "$u" = "-" ]; then
          args=()
          prev=
          for a in "$@"; do
            [ "$prev" = --user ] || [ "$a" = --user ] || args+=("$a")
            prev=$a
          done
        elif [ -n "$u" ]; then
          args+=(--user "$u")
        fi
        [ -n "$k" ] && args+=(--k "$k")
        [ -n "$r" ] && args+=(--R "$r")
        printf '%d\t' $n
        "$P" search --index "$I" --json "${args[@]}" -- "$q" 2>/dev/null || true
      done <"$spec" >"$out.$w"
    ) &
  done
  wait
  sort -s -t $'\t' -k1,1n "$out.0" "$out.1" | cut -f2- >"$out"
}

# ---- 1. 2,500 queries: one batch == 2,500 processes ---------------------------------------------
# SPEC line: user, k, R, query; the batch line: the query, or its JSON object.
head -n $N "$T/data/clicks.tsv" | jq -rR '
  split("\t") as [$u, $q] | input_line_number as $n
  | if $n % 3 == 0 then
      {q: $q, user: $u} + (if $n % 5 == 0 then {k: 3} else {} end)
        + (if $n % 7 == 0 then {R: 5, k: 7} else {} end)
    else $q end
  | if type == "string" then [., "", "", "", $q]
    else [tojson, .user, (.k // "" | tostring), (.R // "" | tostring), $q] end
  | join("\u001f")' >"$T/both"
cut -d $'\x1f' -f1 "$T/both" >"$T/batch.in"
cut -d $'\x1f' -f2- "$T/both" >"$T/spec"
[ "$(wc -l <"$T/batch.in")" -eq $N ] || fail "the generated batch has $(wc -l <"$T/batch.in") lines"
[ "$(grep -c '^{' "$T/batch.in")" -gt 800 ] || fail "the batch has too few JSON lines"

t0=$(date +%s.%N)
"$P" search --index "$I" --queries "$T/batch.in" >"$T/batch.out" 2>"$T/batch.err" \
  || fail "the batch failed: $(head -c 400 "$T/batch.err")"
t1=$(date +%s.%N)
[ "$(wc -l <"$T/batch.out")" -eq $N ] || fail "the batch printed $(wc -l <"$T/batch.out") lines"
[ ! -s "$T/batch.err" ] || fail "the batch wrote to stderr: $(head -c 400 "$T/batch.err")"
jq -e -s 'all(.[]; (.took | type) == "number" and .took == (.took | floor)
            and (.took_us | type) == "number" and .took_us == (.took_us | floor)
            and .took == (.took_us / 1000 | floor))' "$T/batch.out" >/dev/null \
  || fail "took/took_us are not integers with took = floor(took_us / 1000)"
np=$(jq -s 'map(select(.personalized)) | length' "$T/batch.out")
[ "$np" -gt 500 ] || fail "only $np answers personalized: the JSON lines' users were not used"
n3=$(jq -s 'map(select(.hits | length == 3)) | length' "$T/batch.out")
[ "$n3" -gt 50 ] || fail "only $n3 answers with 3 hits: the JSON lines' k was not used"

run_singles "$T/spec" "$T/single.out"
t2=$(date +%s.%N)
[ "$(wc -l <"$T/single.out")" -eq $N ] || fail "the single calls printed $(wc -l <"$T/single.out") lines"
strip_took "$T/batch.out" >"$T/batch.cmp"
strip_took "$T/single.out" >"$T/single.cmp"
if ! cmp -s "$T/batch.cmp" "$T/single.cmp"; then
  l=$(cmp "$T/batch.cmp" "$T/single.cmp" | sed -E 's/.*line ([0-9]+).*/\1/')
  fail "line $l: the batch printed $(sed -n "${l}p" "$T/batch.cmp" | head -c 300)
    a single call printed $(sed -n "${l}p" "$T/single.cmp" | head -c 300) (query: $(sed -n "${l}p" "$T/batch.in"))"
fi
"$P" search --index "$I" --queries - <"$T/batch.in" >"$T/stdin.out" || fail "the batch from stdin failed"
strip_took "$T/stdin.out" | cmp -s - "$T/batch.cmp" || fail "the batch from stdin differs from the file's"
awk -v a="$t0" -v b="$t1" -v c="$t2" -v n=$N 'BEGIN {
  printf "  %d queries: one batch %.2f s; %d single calls %.1f s (2 at a time): equal, byte for byte\n",
         n, b - a, n, c - b, n }'

# ---- 2. the flags are the defaults, a JSON line overrides them ----------------------------------
head -n 200 "$T/data/clicks.tsv" | jq -rR '
  split("\t") as [$u, $q] | input_line_number as $n
  | if $n % 4 == 1 then {q: $q, user: null}
    elif $n % 4 == 2 then {q: $q, user: $u, k: 2}
    elif $n % 4 == 3 then {q: $q, R: 200, k: 20}
    else $q end
  | if type == "string" then [., "", "", "", $q]
    elif has("user") then [tojson, (.user // "-"), (.k // "" | tostring), (.R // "" | tostring), $q]
    else [tojson, "", (.k // "" | tostring), (.R // "" | tostring), $q] end
  | join("\u001f")' >"$T/both2"
cut -d $'\x1f' -f1 "$T/both2" >"$T/batch2.in"
cut -d $'\x1f' -f2- "$T/both2" >"$T/spec2"
FLAGS=(--user u02 --k 4 --R 50)
"$P" search --index "$I" "${FLAGS[@]}" --queries "$T/batch2.in" >"$T/batch2.out" \
  || fail "the batch with flags failed"
run_singles "$T/spec2" "$T/single2.out" "${FLAGS[@]}"
strip_took "$T/batch2.out" >"$T/batch2.cmp"
strip_took "$T/single2.out" | cmp -s - "$T/batch2.cmp" \
  || fail "with ${FLAGS[*]}: the batch differs from the single calls: $(strip_took "$T/single2.out" | diff - "$T/batch2.cmp" | head -c 600)"
[ "$(jq -s 'map(select(.hits | length == 20)) | length' "$T/batch2.out")" -gt 0 ] \
  || fail "no line got the 20 hits its \"k\" asked for"
echo "  200 queries with ${FLAGS[*]} and per-line overrides: equal to the single calls"

# ---- 3. bad lines -------------------------------------------------------------------------------
q1=$(sed -n 1p "$T/batch.in")
{
  printf '%s\n' "$q1"                        # 1 good
  printf '~~~\n'                             # 2 no searchable token
  printf '\n'                                # 3 empty
  printf '\xff\xfe\n'                        # 4 invalid UTF-8
  printf 'a\0b\n'                            # 5 a NUL byte
  head -c 1100000 /dev/zero | tr '\0' a      # 6 over 1 MiB
  printf '\n'
  printf '{"q": "x"\n'                       # 7 bad JSON
  printf '{"q": 5}\n'                        # 8 q not a string
  printf '{"user": "u01"}\n'                 # 9 no q
  printf '{"q": "x", "k": 0}\n'              # 10 k out of range
  printf '{"q": "x", "query": "y"}\n'        # 11 unknown field
  printf '{"q": "%s", "user": "u01"}\n' "$q1" # 12 good JSON
  printf '%s\r\n' "$q1"                      # 13 good, CRLF
  printf '%s' "$q1"                          # 14 good, no newline at the end
} >"$T/bad.in"
set +e
"$P" search --index "$I" --queries "$T/bad.in" >"$T/bad.out" 2>"$T/bad.err"
rc=$?
set -e
[ $rc -eq 1 ] || fail "a batch with bad lines exited $rc, not 1"
[ "$(wc -l <"$T/bad.out")" -eq 14 ] || fail "14 lines in, $(wc -l <"$T/bad.out") out"
want=(ok invalid_query invalid_query invalid_utf8 invalid_argument too_large parse_error
  invalid_argument invalid_argument invalid_argument invalid_argument ok ok ok)
for i in $(seq 1 14); do
  got=$(sed -n "${i}p" "$T/bad.out" | jq -r 'if .error then "\(.error.code) \(.line)" else "ok" end')
  w=${want[$((i - 1))]}
  [ "$w" = ok ] || w="$w $i"
  [ "$got" = "$w" ] || fail "bad batch line $i: got '$got', want '$w': $(sed -n "${i}p" "$T/bad.out" | head -c 300)"
  if [ "$w" != ok ]; then
    grep -q "^persrv search: line $i: .*(${want[$((i - 1))]})\$" "$T/bad.err" \
      || fail "stderr does not name line $i: $(cat "$T/bad.err")"
    sed -n "${i}p" "$T/bad.out" | jq -e '.error.type == "invalid_request" and (.error.message | length > 0)' \
      >/dev/null || fail "line $i: the error object lacks type or message"
  fi
done
grep -q "10 of 14 queries failed (the first: line 2)" "$T/bad.err" || fail "no summary: $(tail -n 2 "$T/bad.err")"
# the good lines as single calls answer them; the errors as the single mode's --json prints them
"$P" search --index "$I" --json -- "$q1" >"$T/s1" || fail "single '$q1'"
"$P" search --index "$I" --json --user u01 -- "$q1" >"$T/s12" || fail "single '$q1' for u01"
for i in 1 13 14; do
  sed -n "${i}p" "$T/bad.out" >"$T/b"
  [ "$(strip_took "$T/b")" = "$(strip_took "$T/s1")" ] || fail "bad batch line $i differs from a single call"
done
sed -n 12p "$T/bad.out" >"$T/b"
[ "$(strip_took "$T/b")" = "$(strip_took "$T/s12")" ] || fail "bad batch line 12 differs from a single call"
i=0
for q in '~~~' '' $'\xff\xfe'; do
  i=$((i + 1))
  set +e
  "$P" search --index "$I" --json -- "$q" >"$T/se" 2>/dev/null
  rc=$?
  set -e
  [ $rc -eq 1 ] || fail "single --json '$q': exit $rc"
  [ "$(sed -n "$((i + 1))p" "$T/bad.out" | jq -c 'del(.line)')" = "$(jq -c . "$T/se")" ] \
    || fail "line $((i + 1)): the batch's error is not the single mode's $(cat "$T/se")"
done
echo "  bad lines: 10 error lines with their numbers, the 3 good ones answered, exit 1"

# ---- 4. a batch that cannot start ---------------------------------------------------------------
set +e
"$P" search --index "$I" --queries "$T/nowhere" >"$T/o" 2>"$T/e"; rc=$?
[ $rc -eq 1 ] && grep -q "nowhere.*(io_error)" "$T/e" || fail "missing queries file: rc=$rc $(cat "$T/e")"
"$P" search --index "$T/noindex" --queries "$T/batch2.in" >"$T/o" 2>"$T/e"; rc=$?
[ $rc -eq 1 ] && [ ! -s "$T/o" ] || fail "missing index: rc=$rc $(head -c 300 "$T/o")"
"$P" search --broker tcp://127.0.0.1:1 --queries "$T/batch2.in" >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ] || fail "--queries with --broker: rc=$rc"
"$P" search --index "$I" --queries "$T/batch2.in" hello >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ] || fail "--queries with a QUERY: rc=$rc"
set -e
echo "test_cli_batch: all checks passed"
