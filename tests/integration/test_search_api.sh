#!/usr/bin/env bash
# The search API a chat backend integrates with (broker/http.c), end to end on a small generated
# corpus: 2 shards and a broker on 127.0.0.1, queried over HTTP with curl, JSON read with jq:
#   - GET /v1/search parameters: an unknown or repeated parameter is a 400 naming it; offset
#     pages through the same ranking (offset + k beyond the recall depth: 400); exclude (ids
#     never returned; unpersonalized, excluding the first e hits gives the next ones; over 100
#     ids: 413; not ids: 400); timeout and allow_partial bad values: 400;
#   - POST /v1/search with a JSON body answers as GET does; malformed JSON, a non-object, an
#     unknown member, wrong types, parameters in the URL: 4xx with the error shape;
#   - POST /v1/msearch: one request per shard for the whole batch (the shards' logs); every
#     answer equals the single search's hits, explain included; a bad search of the batch
#     gets its own error and the others their answers; over 32 searches: 413; no searches, not
#     JSON, an unknown member: 400;
#   - request ids: X-Request-Id echoed (header and body) and in the broker's and the shards' log
#     lines for that search; a traceparent's trace id used and the traceparent echoed; a bad
#     X-Request-Id: 400; none sent: one generated;
#   - one shard stopped: partial (200) by default, 503 with allow_partial=false;
#   - the persrv CLI (libpersrv, the ZeroMQ front door) with --offset, --exclude, --timeout-ms
#     and --no-partial: the same hits as HTTP.
# usage: test_search_api.sh BUILDER SHARD SHARD_CLIENT BROKER PERSRV
set -euo pipefail
B=$1
S=$2
C=$3
BR=$4
P=$5
. "$(dirname "$0")/lib.sh"
ps_test_init search_api
command -v curl >/dev/null || fail "curl is required (scripts/deps.sh installs it)"
command -v jq >/dev/null || fail "jq is required (scripts/deps.sh installs it)"

$B generate --out "$T/data" --stickers 20000 --dim 32 --users 4 --clicks 3000 --pairs 500 \
  --queries 300 --no-progress
$B build --corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy" \
  --clicks "$T/data/clicks.tsv" --out "$T/cluster" --shards 2 >"$T/build.out" 2>&1 \
  || fail "2-shard build: $(cat "$T/build.out")"

start_shard s0 --workers 1 --index "$T/cluster/shard-000" --shard 0 --shards 2 --log-level debug
start_shard s1 --workers 1 --index "$T/cluster/shard-001" --shard 1 --shards 2 --log-level debug
start_broker broker "${EP[s0]},${EP[s1]}" --profiles "$T/cluster/profiles" --deadline-ms 2000 \
  --retries 0 --health-interval-ms 200 --access-log
USER1=$(cut -f1 "$T/data/clicks.tsv" | sort -u | awk 'NR == 1')
echo "broker at $URL, user $USER1"

# req PATH [curl args...]: body to $T/body, headers to $T/headers, prints the status code.
req() {
  local path=$1
  shift
  curl -s -o "$T/body" -D "$T/headers" -w '%{http_code}' "$@" "$URL$path" || echo "curl_failed_$?"
}
# expect STATUS CODE DESCRIPTION PATH [curl args...]: the status, and the error shape with CODE.
expect() {
  local want=$1 code=$2 what=$3 st
  shift 3
  st=$(req "$@")
  [ "$st" = "$want" ] || fail "$what: status $st, expected $want: $(head -c 300 "$T/body")"
  jq -e --arg c "$code" '.error.code == $c and (.error.type | type == "string")
      and (.error.message | length > 0)' "$T/body" >/dev/null \
    || fail "$what: not the error shape with code $code: $(head -c 300 "$T/body")"
}
post() { req "$1" -X POST -H "Content-Type: application/json" --data-binary "$2" "${@:3}"; }
ids() { jq -c '[.hits[].id]' "$T/body"; }

# Queries from the click log that have at least 30 hits unpersonalized.
Q=()
while IFS= read -r q; do
  enc=$(jq -rn --arg q "$q" '$q | @uri')
  [ "$(req "/v1/search?q=$enc&k=30")" = 200 ] || fail "search '$q': $(cat "$T/body")"
  [ "$(jq '.hits | length' "$T/body")" -eq 30 ] && Q+=("$q")
  [ ${#Q[@]} -ge 12 ] && break
done < <(cut -f2 "$T/data/clicks.tsv" | sort -u | head -200)
[ ${#Q[@]} -ge 12 ] || fail "only ${#Q[@]} click-log queries with 30 hits"

# ---- GET parameters ------------------------------------------------------------------------
expect 400 invalid_argument "unknown parameter" "/v1/search?q=a&form=1"
grep -q '"message":"form: not a search parameter' "$T/body" || fail "unknown parameter not named"
expect 400 invalid_argument "misspelt offset" "/v1/search?q=a&ofset=10"
grep -q 'ofset' "$T/body" || fail "misspelt parameter not named: $(cat "$T/body")"
expect 400 invalid_argument "repeated k" "/v1/search?q=a&k=1&k=2"
expect 400 invalid_argument "offset not a number" "/v1/search?q=a&offset=-1"
expect 400 invalid_argument "offset beyond R" "/v1/search?q=a&offset=100&k=1"
grep -q "recall depth" "$T/body" || fail "offset beyond R: $(cat "$T/body")"
expect 400 invalid_argument "offset + k beyond R" "/v1/search?q=a&offset=95&k=10"
expect 400 invalid_argument "exclude not ids" "/v1/search?q=a&exclude=12,abc"
expect 400 invalid_argument "exclude trailing comma" "/v1/search?q=a&exclude=12,"
many=$(seq 1 101 | paste -sd, -)
expect 413 too_large "101 excluded ids" "/v1/search?q=a&exclude=$many"
expect 400 invalid_argument "timeout 0" "/v1/search?q=a&timeout=0"
expect 400 invalid_argument "timeout too long" "/v1/search?q=a&timeout=61s"
expect 400 invalid_argument "timeout unit" "/v1/search?q=a&timeout=5m"
expect 400 invalid_argument "allow_partial" "/v1/search?q=a&allow_partial=maybe"
for t in 150 150ms 2s; do
  [ "$(req "/v1/search?q=a&timeout=$t")" = 200 ] || fail "timeout=$t: $(cat "$T/body")"
done

for q in "${Q[@]:0:6}"; do
  enc=$(jq -rn --arg q "$q" '$q | @uri')
  for u in "" "$USER1"; do
    req "/v1/search?q=$enc&user=$u&k=30" >/dev/null
    all=$(ids)
    # paging: three pages of 10 are the 30
    pages=$(for o in 0 10 20; do req "/v1/search?q=$enc&user=$u&k=10&offset=$o" >/dev/null; ids; done \
      | jq -sc 'add')
    [ "$pages" = "$all" ] || fail "'$q' user '$u': pages $pages != $all"
    # excluded ids are never returned
    ex=$(echo "$all" | jq -r '.[0:5] | join(",")')
    req "/v1/search?q=$enc&user=$u&k=30&exclude=$ex" >/dev/null
    jq -e --argjson a "$all" '[.hits[].id] as $h | ($a[0:5] - $h) == $a[0:5]' "$T/body" >/dev/null \
      || fail "'$q': an excluded id was returned"
    if [ -z "$u" ]; then
      # unpersonalized, the ranking is by recall: excluding the first 5 gives the next ones
      req "/v1/search?q=$enc&k=20&exclude=$ex" >/dev/null
      [ "$(ids)" = "$(echo "$all" | jq -c '.[5:25]')" ] || fail "'$q': exclude: $(ids) vs $all"
    fi
  done
done

# ---- POST /v1/search -------------------------------------------------------------------------
for q in "${Q[@]:0:6}"; do
  enc=$(jq -rn --arg q "$q" '$q | @uri')
  req "/v1/search?q=$enc&user=$USER1&k=7&offset=3&exclude=1,2&explain=1" >/dev/null
  want=$(jq -c '.hits' "$T/body")
  body=$(jq -cn --arg q "$q" --arg u "$USER1" \
    '{q: $q, user: $u, k: 7, offset: 3, exclude: ["1", 2], explain: true, timeout: "2s",
      allow_partial: true}')
  [ "$(post /v1/search "$body")" = 200 ] || fail "POST '$q': $(cat "$T/body")"
  [ "$(jq -c '.hits' "$T/body")" = "$want" ] || fail "POST '$q' differs from GET"
done
expect 400 parse_error "malformed JSON body" /v1/search -X POST --data-binary '{"q": "a",'
expect 400 invalid_argument "body not an object" /v1/search -X POST --data-binary '["a"]'
expect 400 invalid_argument "unknown member" /v1/search -X POST --data-binary '{"q":"a","size":3}'
grep -q 'body.size: not a search parameter' "$T/body" || fail "unknown member: $(cat "$T/body")"
expect 400 invalid_argument "k a string" /v1/search -X POST --data-binary '{"q":"a","k":"3"}'
expect 400 invalid_argument "exclude not an array" /v1/search -X POST --data-binary '{"q":"a","exclude":"1"}'
expect 400 invalid_argument "explain not a boolean" /v1/search -X POST --data-binary '{"q":"a","explain":1}'
expect 400 invalid_argument "parameters in the URL of a POST" "/v1/search?q=a" -X POST --data-binary '{"q":"a"}'
expect 400 invalid_utf8 "body not UTF-8" /v1/search -X POST --data-binary $'{"q":"\xff"}'
expect 400 invalid_query "empty q in a body" /v1/search -X POST --data-binary '{"q":""}'
expect 413 too_large "101 ids in a body" /v1/search -X POST \
  --data-binary "{\"q\":\"a\",\"exclude\":[$many]}"
expect 405 method_not_allowed "PUT /v1/search" /v1/search -X PUT --data-binary '{}'

# ---- POST /v1/msearch ------------------------------------------------------------------------
batch=$(for q in "${Q[@]}"; do jq -cn --arg q "$q" --arg u "$USER1" '{q: $q, user: $u, k: 12, explain: true}'; done \
  | jq -sc '{searches: .}')
[ "$(post /v1/msearch "$batch")" = 200 ] || fail "msearch: $(cat "$T/body")"
cp "$T/body" "$T/msearch.json"
[ "$(jq '.responses | length' "$T/msearch.json")" -eq ${#Q[@]} ] || fail "msearch: answer count"
i=0
for q in "${Q[@]}"; do
  enc=$(jq -rn --arg q "$q" '$q | @uri')
  req "/v1/search?q=$enc&user=$USER1&k=12&explain=1" >/dev/null
  jq -e '.hits[0].ocr | type == "string"' "$T/body" >/dev/null || fail "explain: no fields"
  [ "$(jq -c --argjson i $i '.responses[$i].hits' "$T/msearch.json")" = "$(jq -c .hits "$T/body")" ] \
    || fail "msearch answer $i ('$q') differs from the single search"
  i=$((i + 1))
done
mixed=$(jq -cn --arg q "${Q[0]}" '{searches: [{q: $q, k: 3}, {q: "", k: 3}, {q: $q, k: 0}, {q: $q, bogus: 1}, {q: $q}]}')
[ "$(post /v1/msearch "$mixed")" = 200 ] || fail "mixed msearch: $(cat "$T/body")"
jq -e '.responses[0].hits | length == 3' "$T/body" >/dev/null || fail "mixed: first answer"
jq -e '.responses[1].status == 400 and .responses[1].error.code == "invalid_query"' "$T/body" \
  >/dev/null || fail "mixed: empty q not its own 400: $(cat "$T/body")"
jq -e '.responses[2].status == 400 and .responses[3].status == 400' "$T/body" >/dev/null \
  || fail "mixed: k 0 / unknown member not a 400"
jq -e '.responses[3].error.message | startswith("searches[3].bogus")' "$T/body" >/dev/null \
  || fail "mixed: the bad member is not named: $(cat "$T/body")"
jq -e '.responses[4].hits | length == 10' "$T/body" >/dev/null || fail "mixed: last answer"
big=$(jq -cn '{searches: [range(33) | {q: "a"}]}')
expect 413 too_large "33 searches" /v1/msearch -X POST --data-binary "$big"
expect 400 invalid_argument "no searches" /v1/msearch -X POST --data-binary '{"searches": []}'
expect 400 invalid_argument "searches not an array" /v1/msearch -X POST --data-binary '{"searches": {}}'
expect 400 invalid_argument "msearch unknown member" /v1/msearch -X POST --data-binary '{"searches": [{"q":"a"}], "x": 1}'
expect 400 parse_error "msearch not JSON" /v1/msearch -X POST --data-binary 'q=a'
expect 405 method_not_allowed "GET /v1/msearch" /v1/msearch

# ---- request ids -------------------------------------------------------------------------------
rid="chat-42-$RANDOM$RANDOM"
enc=$(jq -rn --arg q "${Q[0]}" '$q | @uri')
[ "$(req "/v1/search?q=$enc&k=3" -H "X-Request-Id: $rid")" = 200 ] || fail "search with an id"
grep -qi "^x-request-id: $rid" "$T/headers" || fail "X-Request-Id not echoed: $(cat "$T/headers")"
[ "$(jq -r .request_id "$T/body")" = "$rid" ] || fail "request_id not in the body"
grep -q "event=request method=GET path=\"/v1/search\" request_id=$rid " "$T/broker.log" \
  || fail "the broker's access log line does not name $rid"
for s in s0 s1; do
  grep -q "event=search .*trace=$rid " "$T/$s.log" || fail "$s's log has no search line for $rid"
done
tp="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
[ "$(req "/v1/search?q=$enc&k=3" -H "traceparent: $tp")" = 200 ] || fail "search with traceparent"
grep -qi "^traceparent: $tp" "$T/headers" || fail "traceparent not echoed"
[ "$(jq -r .request_id "$T/body")" = 4bf92f3577b34da6a3ce929d0e0e4736 ] \
  || fail "traceparent's trace id not the request id: $(jq -r .request_id "$T/body")"
grep -q "trace=4bf92f3577b34da6a3ce929d0e0e4736 " "$T/s0.log" || fail "traceparent id not at shard 0"
[ "$(req "/v1/search?q=$enc&k=3" -H "traceparent: 00-zz-00-01")" = 200 ] || fail "bad traceparent"
[ "$(jq -r '.request_id | length' "$T/body")" -eq 16 ] || fail "no generated id for a bad traceparent"
expect 400 invalid_argument "X-Request-Id with a space" "/v1/search?q=a" -H "X-Request-Id: a b"
long=$(head -c 129 /dev/zero | tr '\0' x)
expect 413 too_large "X-Request-Id of 129 bytes" "/v1/search?q=a" -H "X-Request-Id: $long"
[ "$(req "/v1/search?q=$enc&k=3")" = 200 ] || fail "search without an id"
gen=$(jq -r .request_id "$T/body")
[[ "$gen" =~ ^[0-9a-f]{16}$ ]] || fail "generated request id '$gen'"
grep -qi "^x-request-id: $gen" "$T/headers" || fail "generated id not in the header"
mid="batch-$RANDOM"
[ "$(post /v1/msearch "$batch" -H "X-Request-Id: $mid")" = 200 ] || fail "msearch with an id"
[ "$(jq -r .request_id "$T/body")" = "$mid" ] || fail "msearch: request_id"
grep -q "event=search .*trace=$mid.3 " "$T/s1.log" || fail "msearch: search 3's id not at shard 1"
# one request per shard for the whole batch
for s in s0 s1; do
  [ "$(grep -c "event=batch .*trace=$mid searches=${#Q[@]}\$" "$T/$s.log")" -eq 1 ] \
    || fail "msearch: $s did not get the ${#Q[@]} searches in one batch request"
done

# ---- the CLI over libpersrv --------------------------------------------------------------------
req "/v1/search?q=$enc&user=$USER1&k=5&offset=2&exclude=1,2" >/dev/null
want=$(ids)
got=$($P search --broker "$ZEP" --user "$USER1" --k 5 --offset 2 --exclude 1,2 --timeout-ms 2000 \
  --no-partial --request-id cli-77 --json "${Q[0]}" | jq -c '[.hits[].id]') \
  || fail "persrv search with options"
[ "$got" = "$want" ] || fail "CLI with options: $got, HTTP: $want"
grep -q "event=search .*trace=cli-77 " "$T/s0.log" || fail "the CLI's --request-id is not in shard 0's log"
# --explain (human output): the hits with their stored fields
$P search --broker "$ZEP" --user "$USER1" --k 3 --explain "${Q[0]}" >"$T/explain.out" \
  || fail "persrv search --explain"
req "/v1/search?q=$enc&user=$USER1&k=3&explain=1" >/dev/null
ocr=$(jq -r '.hits[0].ocr' "$T/body")
grep -qF "$(jq -r '.hits[0].id' "$T/body")" "$T/explain.out" || fail "--explain: first hit missing"
[ -z "$ocr" ] || grep -qF "$ocr" "$T/explain.out" || fail "--explain: stored fields missing: $(head "$T/explain.out")"
set +e
$P search --broker "$ZEP" --offset 100 --k 5 "${Q[0]}" >"$T/cli.out" 2>&1
rc=$?
set -e
[ $rc -ne 0 ] && grep -q "recall depth" "$T/cli.out" || fail "CLI offset beyond R: rc=$rc $(cat "$T/cli.out")"

# ---- partial answers -----------------------------------------------------------------------------
kill -9 "${PID[s1]}"
wait "${PID[s1]}" 2>/dev/null || true
unset "PID[s1]"
[ "$(req "/v1/search?q=$enc&k=3")" = 200 ] || fail "one shard down: $(cat "$T/body")"
jq -e '.partial == true and .shards.failed == 1' "$T/body" >/dev/null || fail "not partial"
expect 503 unavailable "allow_partial=false, a shard down" "/v1/search?q=$enc&k=3&allow_partial=false"
grep -q "allow_partial is false" "$T/body" || fail "503 does not say why: $(cat "$T/body")"
[ "$(post /v1/search "{\"q\":\"${Q[0]}\",\"allow_partial\":false}")" = 503 ] || fail "POST allow_partial"
echo "PASS: search API (${#Q[@]} queries, paging, exclude, JSON body, msearch, request ids)"
