#!/usr/bin/env bash
# `builder enrich` against model servers that misbehave, end to end through the test model
# server (fake_models, one instance; its fault file is replaced before each scenario). Each
# scenario enriches the same N rendered stickers into its own output directory and checks the
# exit status (0 all done, 1 some failed, 130 interrupted), errors.jsonl, the corpus.jsonl line
# count, the embeddings.npy shape and, from the server's request log, which stickers a rerun
# (faults removed) asked the models about:
#   slow      every sticker's first embedding reply 10 s late against --timeout-ms 3000: timed
#             out, retried, all done; chat replies 300 ms late against 10 s: waited for, never
#             resent;
#   dim       one sticker's embedding 8 values, another's 32, every time, against --dim 16:
#             those two alone in errors.jsonl (stage model, the dimension named), one embedding
#             request each (not retried); the rerun asks only about them;
#   drop1     every sticker's first embedding connection dropped: retried, all done;
#   dropall   one sticker's embedding connection dropped every time: its error after
#             --retries (the message says 3 tries; the server may see more: libcurl resends a
#             request whose reused connection died), the others done; the rerun asks only
#             about it;
#   sigint    the last 4 stickers' replies held 60 s: SIGINT while they are in flight -> 130,
#             the 4 stickers done are kept, the rerun asks only about the others, and the final
#             corpus has every sticker exactly once.
# The reply cap (max_reply) has no `builder enrich` flag: tests/unit/test_models.c covers it.
# No assertion on durations: delays are far from the timeouts they are measured against.
# usage: test_enrich_faults.sh BUILDER RENDER_STICKERS FAKE_MODELS VOCAB FONT
set -euo pipefail
B=$1
R=$2
FM=$3
VOCAB=$4
FONT=$5
N=8
DIM=16
. "$(dirname "$0")/lib.sh"
ps_test_init enrich_faults
command -v jq >/dev/null || fail "jq is required (scripts/deps.sh installs it)"

. "$(dirname "$0")/enrich_lib.sh"
render_images "$R" $N 17 "$VOCAB" "$FONT"
mapfile -t IMGS < <(ls "$T/img" | LC_ALL=C sort) # the builder's order
CRC=()
for f in "${IMGS[@]}"; do CRC+=("$(image_crc "$T/img/$f")"); done

start_fake_models "$FM" --dim $DIM --faults "$T/faults" --log "$T/fm.log"
PID[fm]=$FM_PID
URL=$MURL
touch "$T/fm.log"

# faults NAME RULE...: replace the fault file. The server re-reads it on its next request when
# its bytes changed (the first line names the scenario, so they always do), which also resets
# its per-image attempt counts.
faults() {
  printf '# %s\n' "$1" >"$T/faults.new"
  shift
  for r in "$@"; do printf '%s\n' "$r" >>"$T/faults.new"; done
  mv "$T/faults.new" "$T/faults"
}

# enrich OUT [FLAGS...]: one run; sets RC (exit status) and NEW (its lines of the server log).
enrich() {
  local out=$1
  shift
  local before
  before=$(wc -l <"$T/fm.log")
  RC=0
  "$B" enrich --input "$T/img" --out "$T/$out" --vlm-url "$URL" --embed-url "$URL" --dim $DIM \
    "$@" >"$T/$out.stdout" 2>"$T/$out.stderr" || RC=$?
  tail -n +$((before + 1)) "$T/fm.log" >"$T/$out.requests"
  NEW=$(wc -l <"$T/$out.requests")
}

# check OUT RC NDONE NERR: exit status, corpus lines (distinct ids), errors lines, and an
# embeddings.npy of NDONE rows of DIM float32 (shape in its header, size = header + rows).
check() {
  local out=$1 rc=$2 ndone=$3 nerr=$4 d=$T/$1
  [ "$RC" -eq "$rc" ] || fail "$out: exit status $RC, not $rc: $(tail -n 5 "$d.stderr")"
  [ "$(wc -l <"$d/corpus.jsonl")" -eq "$ndone" ] \
    || fail "$out: corpus.jsonl has $(wc -l <"$d/corpus.jsonl") lines, not $ndone"
  [ "$(jq -r .id "$d/corpus.jsonl" | sort -u | wc -l)" -eq "$ndone" ] \
    || fail "$out: corpus.jsonl repeats a sticker"
  [ "$(wc -l <"$d/errors.jsonl")" -eq "$nerr" ] \
    || fail "$out: errors.jsonl has $(wc -l <"$d/errors.jsonl") lines, not $nerr: $(cat "$d/errors.jsonl")"
  if jq -e 'select(.stage != "model")' "$d/errors.jsonl" | grep -q .; then
    fail "$out: an error not of stage model: $(cat "$d/errors.jsonl")"
  fi
  jq -e 'select((.keywords | length) == 0 or (.desc | length) == 0 or (.emotion | length) == 0)' \
    "$d/corpus.jsonl" | grep -q . && fail "$out: a sticker without VLM fields"
  local bytes hdr
  bytes=$(stat -c %s "$d/embeddings.npy")
  hdr=$((bytes - ndone * DIM * 4))
  [ "$hdr" -gt 0 ] && [ $((hdr % 16)) -eq 0 ] \
    || fail "$out: embeddings.npy is $bytes bytes for $ndone rows of $DIM"
  head -c "$hdr" "$d/embeddings.npy" | grep -aq "'shape': ($ndone, $DIM)" \
    || fail "$out: embeddings.npy header: $(head -c "$hdr" "$d/embeddings.npy" | tr -d '\0')"
}

# count OUT PATTERN...: lines of OUT's request log matching every pattern (grep -E).
count() {
  local out=$1
  shift
  local cmd="cat '$T/$out.requests'"
  for p in "$@"; do cmd+=" | grep -E -- '$p'"; done
  eval "$cmd" | wc -l
}

# The stickers a run asked the models about (crcs of its requests, sorted).
asked() { grep -o 'crc=[0-9a-f]*' "$T/$1.requests" | sort -u | sed 's/crc=//'; }

# rerun OUT FLAGS...: with the faults gone, the rerun must ask only about the stickers that the
# first run did not finish (given as crcs in WANT), one request per kind each, and end with all.
rerun() {
  local out=$1
  shift
  faults "$out-rerun"
  enrich "$out" "$@"
  check "$out" 0 $N 0
  [ "$NEW" -eq $((3 * ${#WANT[@]})) ] \
    || fail "$out rerun: $NEW model requests, not 3 for each of ${#WANT[@]} stickers"
  [ "$(asked "$out")" = "$(printf '%s\n' "${WANT[@]}" | sort)" ] \
    || fail "$out rerun asked about $(asked "$out" | tr '\n' ' '), not ${WANT[*]}"
  # a third run has nothing left to do
  enrich "$out" "$@"
  check "$out" 0 $N 0
  [ "$NEW" -eq 0 ] || fail "$out: a run with everything done made $NEW model requests"
}

# ---- slow replies ----------------------------------------------------------------------------
faults slow "kind=embed tries=1 delay=10000"
enrich slow --inflight 4 --timeout-ms 3000 --retries 3
check slow 0 $N 0
# each sticker's first embedding request was held past the timeout and sent again (the server
# saw attempt 2, answered on time); nothing else needed a retry for it
late=$(count slow 'kind=embed' 'attempt=1 ' 'action=ok delay=10000')
again=$(count slow 'kind=embed' 'attempt=2 ' 'action=ok$')
[ "$late" -eq $N ] && [ "$again" -eq $N ] \
  || fail "slow: $late first embedding requests held, $again answered on retry, not $N each"
echo "  slow: $N stickers done; $late embedding replies 10 s late timed out at 3 s and retried"
faults slow-chat "kind=chat delay=300"
rm -rf "$T/slow"
enrich slow --inflight 4 --timeout-ms 10000 --retries 3
check slow 0 $N 0
held=$(count slow 'kind=(keywords|describe)' 'delay=300')
[ "$held" -eq $((2 * N)) ] && [ "$NEW" -eq $((3 * N)) ] \
  || fail "slow: $held chat replies held 300 ms of $NEW requests, not $((2 * N)) of $((3 * N))"
[ "$(count slow 'attempt=1 ')" -eq "$NEW" ] || fail "slow: a reply within the timeout was resent"
echo "  slow: $N stickers done; $held chat replies 300 ms late waited for, $NEW requests, none resent"

# ---- a wrong embedding dimension --------------------------------------------------------------
small=${CRC[2]} large=${CRC[5]}
faults dim "crc=$small kind=embed dim=8" "crc=$large kind=embed dim=32"
enrich dim --inflight 4 --timeout-ms 30000 --retries 3
check dim 1 $((N - 2)) 2
for v in "2 8" "5 32"; do
  set -- $v
  line=$(grep -F "\"${IMGS[$1]}\"" "$T/dim/errors.jsonl") || fail "dim: ${IMGS[$1]} not in errors.jsonl"
  jq -e --arg d "$2" '.message | test("embedding.* " + $d + " dimensions")' <<<"$line" >/dev/null \
    || fail "dim: the error of ${IMGS[$1]} does not name $2 dimensions: $line"
  n=$(count dim "crc=${CRC[$1]}" 'kind=embed')
  [ "$n" -eq 1 ] || fail "dim: ${IMGS[$1]}'s embedding of $2 values was asked $n times, not once"
done
echo "  dim: $((N - 2)) stickers done, 2 in errors.jsonl (8 and 32 dimensions against $DIM), each asked once"
WANT=("$small" "$large")
rerun dim --inflight 4 --timeout-ms 30000 --retries 3
echo "  dim rerun: only those 2 stickers asked again (6 requests), $N done"

# ---- dropped connections ----------------------------------------------------------------------
faults drop1 "kind=embed tries=1 drop"
enrich drop1 --inflight 4 --timeout-ms 30000 --retries 3
check drop1 0 $N 0
dropped=$(count drop1 'kind=embed' 'action=drop')
[ "$dropped" -eq $N ] || fail "drop1: $dropped embedding connections dropped, not $N"
echo "  drop1: $N stickers done after $dropped dropped embedding connections ($NEW requests)"

victim=${CRC[3]}
faults dropall "crc=$victim kind=embed drop"
enrich dropall --inflight 4 --timeout-ms 30000 --retries 2
check dropall 1 $((N - 1)) 1
grep -qF "\"${IMGS[3]}\"" "$T/dropall/errors.jsonl" || fail "dropall: ${IMGS[3]} not the failure"
jq -e '.message | test("^embedding: .*\\(3 tries\\)")' "$T/dropall/errors.jsonl" >/dev/null \
  || fail "dropall: the error does not say 3 tries: $(cat "$T/dropall/errors.jsonl")"
# libcurl resends by itself a request whose reused keep-alive connection died (how often
# depends on which connection each try got): at least 1 + retries reached the server
n=$(count dropall "crc=$victim" 'kind=embed' 'action=drop')
[ "$n" -ge 3 ] || fail "dropall: $n dropped embedding requests, not at least 3"
[ "$(count dropall 'action=drop')" -eq "$n" ] || fail "dropall: another sticker was dropped"
echo "  dropall: $((N - 1)) stickers done, ${IMGS[3]} failed after --retries 2 ($n connections dropped)"
WANT=("$victim")
rerun dropall --inflight 4 --timeout-ms 30000 --retries 2
echo "  dropall rerun: only ${IMGS[3]} asked again (3 requests), $N done"

# ---- SIGINT with requests in flight -----------------------------------------------------------
# The last 4 stickers' replies are held 60 s (timeout 120 s); the first 4 answer at once. Once
# those 4 are recorded and a held request reached the server, SIGINT.
rules=()
SLOW=()
for i in 4 5 6 7; do
  rules+=("crc=${CRC[$i]} delay=60000")
  SLOW+=("${CRC[$i]}")
done
faults sigint "${rules[@]}"
before=$(wc -l <"$T/fm.log")
"$B" enrich --input "$T/img" --out "$T/sigint" --vlm-url "$URL" --embed-url "$URL" --dim $DIM \
  --inflight 16 --timeout-ms 120000 --retries 3 >"$T/sigint.stdout" 2>"$T/sigint.stderr" &
PID[enrich]=$!
held=0 ok=0
for _ in $(seq 1 600); do
  held=$(tail -n +$((before + 1)) "$T/fm.log" | grep -c 'delay=60000' || true)
  ok=$(grep -c '"ok":true' "$T/sigint/state/done.jsonl" 2>/dev/null || true)
  [ "$held" -ge 1 ] && [ "$ok" = 4 ] && break
  kill -0 "${PID[enrich]}" 2>/dev/null \
    || fail "sigint: builder enrich exited early ($held held, $ok done): $(tail -n 3 "$T/sigint.stderr")"
  sleep 0.1
done
[ "$held" -ge 1 ] && [ "$ok" = 4 ] || fail "sigint: after 60 s $held requests held, $ok stickers done"
kill -INT "${PID[enrich]}"
RC=0
wait "${PID[enrich]}" || RC=$?
unset "PID[enrich]"
tail -n +$((before + 1)) "$T/fm.log" >"$T/sigint.requests"
check sigint 130 4 0
[ "$(count sigint 'action=ok$')" -eq 12 ] || fail "sigint: not 12 requests answered before SIGINT"
grep -q 'interrupted: 4 not done' "$T/sigint.stdout" \
  || fail "sigint: the summary does not say 4 not done: $(cat "$T/sigint.stdout")"
echo "  sigint: exit 130 with $held requests in flight, the 4 stickers done kept"
WANT=("${SLOW[@]}")
rerun sigint --inflight 16 --timeout-ms 120000 --retries 3
[ "$(jq -r .image "$T/sigint/corpus.jsonl" | LC_ALL=C sort)" = "$(printf '%s\n' "${IMGS[@]}")" ] \
  || fail "sigint: the final corpus does not hold every sticker once"
echo "  sigint rerun: only the 4 interrupted stickers asked (12 requests), every sticker once"

# Every scenario ends with the same corpus and embeddings (rows in corpus order).
for out in dim dropall sigint; do
  cmp -s "$T/slow/corpus.jsonl" "$T/$out/corpus.jsonl" || fail "$out: corpus differs from slow's"
  cmp -s "$T/slow/embeddings.npy" "$T/$out/embeddings.npy" || fail "$out: embeddings differ"
done
kill -TERM "${PID[fm]}"
wait "${PID[fm]}" 2>/dev/null || true
unset "PID[fm]"
echo "test_enrich_faults: all checks passed"
