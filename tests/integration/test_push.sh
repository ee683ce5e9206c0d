#!/usr/bin/env bash
# Issue 9, must-show 1: a push of a second build under load, then a rollback, costs no failed
# request, and every answer names exactly one version and equals that version's single node.
#
# A 20,000-sticker generated corpus is built as version 1 (2 shards, and single-node) and,
# with the text of every 5th sticker changed and other utility weights, as version 2 (same
# click log and embeddings, so the same user profiles). 2 shards × 2 replicas (data dirs seeded
# with version 1, admin ports with a token) and a broker serving version 1's profiles run on
# loopback. push_load sends closed-loop searches through both front doors (2 keep-alive HTTP
# connections, 2 libpersrv threads; every request once without a user and once with one) and
# records every answer. During the load:
#   1. `builder push --build v2` (then every replica and the broker report version 2),
#   2. once both doors have answers of version 2, `builder activate --version 1` (rollback;
#      the replicas still hold version 2 next to it),
# and the load runs on until >= 5,000 HTTP and >= 2,000 libpersrv answers. Then:
#   - no request failed (push_load's count of errors is 0);
#   - verify_answers: every answer is complete, names version 1 or 2, and its hits (ids, order,
#     scores bit for bit) equal the single node of that version (every answer, none sampled);
#     the profiles the broker serves equal both builds' for every user;
#   - both versions appear through both doors;
#   - the switch is atomic as a client sees it: answers that completed before the push began
#     name 1; a request sent after `builder push` returned (its sequence number is past every
#     request started before) and answered before the rollback began names 2; every request
#     sent after `builder activate` returned names 1;
#   - verify_answers can fail: the same answers with the version labels swapped fail (most of
#     them: the versions answer differently), and an answer naming version 3 fails.
# usage: test_push.sh BUILDER SHARD SHARD_CLIENT BROKER PUSH_LOAD VERIFY_ANSWERS
set -euo pipefail
B=$1
S=$2
C=$3
BR=$4
PL=$5
VA=$6
HTTP_CONNS=2
ZMQ_THREADS=2
MIN_HTTP=5000
MIN_ZMQ=2000
MIN_PER_VERSION=500 # answers of a version per door before the next switch
WAIT=600            # seconds any one condition may take (a loaded 2-core machine)
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/push_lib.sh"
ps_test_init push
for tool in curl jq; do command -v $tool >/dev/null || fail "$tool is required (scripts/deps.sh)"; done
START=$SECONDS

TOKEN_FILE=$T/token
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TOKEN_FILE"
make_versions 20000
make_requests "$T/requests"
start_cluster
expect_consistent 1
echo "cluster up: 2 shards x 2 replicas at version 1, broker $URL $ZEP (admin $BADM)"

# ---- load, push, rollback ----------------------------------------------------------------------
A=$T/answers.jsonl
"$PL" --requests "$T/requests" --http "${URL#http://}" --zmq "$ZEP" --out "$A" \
  --http-conns $HTTP_CONNS --zmq-threads $ZMQ_THREADS --count 100000000 \
  --stop-file "$T/stop" --timeout-ms 60000 >"$T/load.out" 2>"$T/load.err" &
LPID=$!
PID[push_load]=$LPID

# door_count DOOR [VERSION]: answers recorded so far (of VERSION).
door_count() {
  local pat="\"door\":\"$1\"" n=0
  if [ -e "$A" ]; then
    if [ $# -gt 1 ]; then
      n=$(grep "$pat" "$A" | grep -c "\"version\":$2,") || true
    else
      n=$(grep -c "$pat" "$A") || true
    fi
  fi
  echo "${n:-0}"
}
load_alive() { kill -0 $LPID 2>/dev/null || fail "push_load exited early: $(cat "$T/load.err")"; }
have() { # have DOOR N [VERSION]
  load_alive
  [ "$(door_count "$1" "${@:3}")" -ge "$2" ]
}

wait_until $WAIT "answers of version 1 before the push" \
  eval "have http $MIN_PER_VERSION && have zmq $MIN_PER_VERSION"
L_PUSH0=$(wc -l <"$A")
echo "before the push: $L_PUSH0 answers"
$B push --build "$T/v2" --topology "$T/topo.json" --token-file "$TOKEN_FILE" >"$T/push.out" \
  2>"$T/push.log" || fail "builder push failed: $(tail -n 5 "$T/push.log")"
P_HTTP=$(door_count http)
P_ZMQ=$(door_count zmq)
echo "builder push: $(tail -n 1 "$T/push.out")"
expect_consistent 2
wait_until $WAIT "answers of version 2 through both doors" \
  eval "have http $MIN_PER_VERSION 2 && have zmq $MIN_PER_VERSION 2"
L_ACT0=$(wc -l <"$A")
$B activate --version 1 --topology "$T/topo.json" --token-file "$TOKEN_FILE" >"$T/activate.out" \
  2>"$T/activate.log" || fail "builder activate --version 1 failed: $(tail -n 5 "$T/activate.log")"
R_HTTP=$(door_count http)
R_ZMQ=$(door_count zmq)
expect_consistent 1
for r in "${REPLICAS[@]}"; do # the rollback keeps version 2 loaded next to version 1
  healthz "${ADM[$r]}" | jq -e '[.versions[].version] | sort == [1, 2]' >/dev/null \
    || fail "$r does not hold versions 1 and 2 after the rollback: $(healthz "${ADM[$r]}")"
done
wait_until $WAIT "$MIN_HTTP HTTP and $MIN_ZMQ libpersrv answers, and version 1 again after the rollback" \
  eval "have http $MIN_HTTP && have zmq $MIN_ZMQ &&
        have http $((R_HTTP + HTTP_CONNS + MIN_PER_VERSION)) && have zmq $((R_ZMQ + ZMQ_THREADS + MIN_PER_VERSION))"
touch "$T/stop"
wait $LPID || fail "push_load: $(cat "$T/load.err")"
unset "PID[push_load]"
echo "push_load: $(cat "$T/load.out")"
jq -e '.http.errors == 0 and .zmq.errors == 0' "$T/load.out" >/dev/null \
  || fail "failed requests: $(cat "$T/load.out"); first: $(grep -m3 '"error"' "$A")"
jq -e --argjson h $MIN_HTTP --argjson z $MIN_ZMQ '.http.answers >= $h and .zmq.answers >= $z' \
  "$T/load.out" >/dev/null || fail "too few answers: $(cat "$T/load.out")"

# ---- every answer against its version's single node ----------------------------------------------
VARGS=(--index "1=$T/single1" --index "2=$T/single2" --k 10)
"$VA" "${VARGS[@]}" --profiles "$T/v1/profiles" --json "$A" >"$T/verify.json" 2>"$T/verify.err" \
  || fail "verify_answers: $(cat "$T/verify.json") $(head -c 3000 "$T/verify.err")"
echo "verify_answers: $(cat "$T/verify.json")"
jq -e --argjson m $MIN_PER_VERSION '.failed == 0 and
  ([.versions[] | .http >= $m and .zmq >= $m] | all) and (.versions | length) == 2' \
  "$T/verify.json" >/dev/null || fail "a version is missing from a door: $(cat "$T/verify.json")"

pers=$(grep -c '"personalized":true' "$A") || true
total=$(wc -l <"$A")
[ $((pers * 4)) -ge "$total" ] || fail "only $pers of $total answers are personalized"
echo "personalized: $pers of $total answers"

# ---- the switches as a client sees them (file order = completion order; seq = send order) ---------
jq -r '[.door, .seq, .version] | @tsv' "$A" >"$T/order.tsv"
win=$(awk -F'\t' -v l0="$L_PUSH0" -v l1="$L_ACT0" -v ph=$((P_HTTP + HTTP_CONNS)) \
  -v pz=$((P_ZMQ + ZMQ_THREADS)) -v rh=$((R_HTTP + HTTP_CONNS)) -v rz=$((R_ZMQ + ZMQ_THREADS)) '
  { after_push = ($1 == "http") ? $2 >= ph : $2 >= pz
    after_rollback = ($1 == "http") ? $2 >= rh : $2 >= rz
    if (NR <= l0) { a++; if ($3 != 1) { print "line " NR ": answered before the push, names " $3; n++ } }
    else if (NR <= l1 && after_push) { b++; if ($3 != 2) { print "line " NR ": sent after the push, names " $3; n++ } }
    else if (after_rollback) { c++; if ($3 != 1) { print "line " NR ": sent after the rollback, names " $3; n++ } } }
  END { if (!n) print a + 0, b + 0, c + 0; exit n > 0 }' "$T/order.tsv" | head -n 5) \
  || fail "a switch was not atomic for clients: $win"
read -r n_before n_push n_back <<<"$win"
[ "$n_before" -gt 0 ] && [ "$n_push" -gt 0 ] && [ "$n_back" -gt 0 ] \
  || fail "a window of the switch check is empty: $win"
echo "switches: $n_before answers before the push name 1; $n_push sent after it (answered before" \
  "the rollback) name 2; $n_back sent after the rollback name 1"

# ---- verify_answers must be able to fail ----------------------------------------------------------
sed -e 's/"version":1,/"version":X,/; s/"version":2,/"version":1,/; s/"version":X,/"version":2,/' \
  "$A" >"$T/swapped.jsonl"
rc=0
"$VA" "${VARGS[@]}" --json --show 0 "$T/swapped.jsonl" >"$T/swapped.json" 2>/dev/null || rc=$?
[ $rc = 1 ] || fail "verify_answers passed answers with swapped versions (exit $rc)"
jq -e '.failed * 10 >= .answers * 9' "$T/swapped.json" >/dev/null \
  || fail "swapped versions: under 90% failed, the versions do not answer differently: $(cat "$T/swapped.json")"
head -n 1 "$A" | sed 's/"version":[0-9]*,/"version":3,/' >"$T/v3.jsonl"
rc=0
"$VA" "${VARGS[@]}" --show 0 "$T/v3.jsonl" >/dev/null 2>&1 || rc=$?
[ $rc = 1 ] || fail "verify_answers passed an answer naming version 3 (exit $rc)"
echo "self-check: swapped labels fail $(jq -c '{answers, failed}' "$T/swapped.json"), version 3 fails"

stop broker
for r in "${REPLICAS[@]}"; do stop "$r"; done
echo "test_push: all checks passed in $((SECONDS - START)) s"
