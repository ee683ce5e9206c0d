#!/usr/bin/env bash
# The broker end to end, on a small generated corpus: real `shard` processes (3 shards, 2
# replicas of shard 0) and a `broker` on 127.0.0.1 (shard ports picked at run time, the broker
# on port 0, readiness from --ready-file), queried over HTTP with curl, JSON read with jq:
#   - configuration: --help, missing/bad settings;
#   - /v1/search == `persrv search --index SINGLE --json` (ids, order, scores) for >= 100
#     distinct click-log queries, with and without a user; not partial;
#   - bad input: invalid UTF-8, empty/symbol-only/10 KB q, k = 0/100000/abc, unknown user
#     (200, unpersonalized), unknown and non-numeric sticker ids, unknown path, wrong method,
#     a 10 MB body (413), each a JSON error with the right status, and the broker still answers;
#   - the ZeroMQ front door (shard_client front-bad): garbage, empty and oversized frames, wrong
#     version, empty / invalid UTF-8 / 10 KB queries, k = 100000, unknown sticker -> Error;
#     unknown user -> unpersonalized; still serving afterwards;
#   - the persrv CLI over libpersrv (--broker): the same hits and stored fields as the single
#     node and as HTTP explain=1; sticker, health, and errors with their codes;
#   - /v1/stickers/{id}, /healthz, /readyz, /metrics (requests per door, build info);
#   - kill -9 of one replica of shard 0: still complete answers; of both: partial, shard 0
#     named, one partial answer counted per door, both replicas down in /metrics; of every
#     shard: 503 unavailable;
#   - SIGTERM -> exit status 0, pid and ready files removed.
# usage: test_broker.sh BUILDER SHARD SHARD_CLIENT BROKER PERSRV
set -euo pipefail
B=$1
S=$2
C=$3
BR=$4
P=$5
. "$(dirname "$0")/lib.sh"
ps_test_init broker
command -v curl >/dev/null || fail "curl is required (scripts/deps.sh installs it)"
command -v jq >/dev/null || fail "jq is required (scripts/deps.sh installs it)"

$B generate --out "$T/data" --stickers 20000 --dim 32 --users 4 --clicks 3000 --pairs 500 \
  --queries 300 --no-progress
$B build --corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy" \
  --clicks "$T/data/clicks.tsv" --out "$T/single" >/dev/null 2>&1 || fail "single-node build"
$B build --corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy" \
  --clicks "$T/data/clicks.tsv" --out "$T/cluster" --shards 3 >"$T/build.out" 2>&1 \
  || fail "3-shard build: $(cat "$T/build.out")"

# ---- configuration -----------------------------------------------------------------------
$BR --help >"$T/help" || fail "--help exited non-zero"
for f in --shards --profiles --http --deadline-ms --retries --max-query-bytes --max-k --max-body \
  --ready-file PERSRV_SHARDS; do
  grep -q -- "$f" "$T/help" || fail "--help does not mention $f"
done
set +e
$BR 2>"$T/err"; rc=$?
[ $rc -eq 2 ] && grep -q "shards is required" "$T/err" || fail "no --shards: rc=$rc $(cat "$T/err")"
$BR --shards "tcp://127.0.0.1:1,,tcp://127.0.0.1:2" 2>"$T/err"; rc=$?
[ $rc -eq 2 ] && grep -q "shard 1 replica 0: empty endpoint" "$T/err" \
  || fail "empty shard: rc=$rc $(cat "$T/err")"
$BR --shards tcp://127.0.0.1:1 --http nowhere 2>"$T/err"; rc=$?
[ $rc -eq 2 ] && grep -q "http: 'nowhere' is not host:port" "$T/err" \
  || fail "bad --http: rc=$rc $(cat "$T/err")"
$BR --shards tcp://127.0.0.1:1 --profiles "$T/nowhere" --http 127.0.0.1:0 2>"$T/err"; rc=$?
[ $rc -eq 1 ] && grep -q "event=start_failed" "$T/err" || fail "bad --profiles: rc=$rc $(cat "$T/err")"
set -e

# ---- the cluster -------------------------------------------------------------------------
start_shard s0a --workers 1 --index "$T/cluster/shard-000" --shard 0 --shards 3
start_shard s0b --workers 1 --index "$T/cluster/shard-000" --shard 0 --shards 3
start_shard s1 --workers 1 --index "$T/cluster/shard-001" --shard 1 --shards 3
start_shard s2 --workers 1 --index "$T/cluster/shard-002" --shard 2 --shards 3
TOPO="${EP[s0a]}|${EP[s0b]},${EP[s1]},${EP[s2]}"
start_broker broker "$TOPO" --profiles "$T/cluster/profiles" --deadline-ms 300 --retries 1 \
  --health-interval-ms 200
echo "broker at $URL, shards $TOPO"

# get PATH_AND_QUERY [curl args...]: body to $T/body, prints the status code.
get() {
  local path=$1
  shift
  curl -s -o "$T/body" -w '%{http_code}' "$@" "$URL$path" || echo "curl_failed_$?"
}
# expect_error STATUS CODE DESCRIPTION PATH [curl args...]
expect_error() {
  local want=$1 code=$2 what=$3 st
  shift 3
  st=$(get "$@")
  [ "$st" = "$want" ] || fail "$what: status $st, expected $want: $(head -c 300 "$T/body")"
  [ "$(jq -r .error.code "$T/body")" = "$code" ] \
    || fail "$what: error code $(jq -r .error.code "$T/body"), expected $code"
  [ -n "$(jq -r '.error.type // empty' "$T/body")" ] && [ -n "$(jq -r '.error.message // empty' "$T/body")" ] \
    || fail "$what: error without type or message: $(cat "$T/body")"
  echo "  $what -> $st $code: $(jq -r .error.message "$T/body")"
}

[ "$(get /healthz)" = 200 ] && [ "$(jq -r .status "$T/body")" = ok ] || fail "/healthz"
[ "$(get /readyz)" = 200 ] || fail "/readyz: $(cat "$T/body")"

# ---- (a) the broker answers exactly what the single node answers -------------------------
cut -f2 "$T/data/clicks.tsv" | sort -u | head -n 120 >"$T/queries"
cut -f1 "$T/data/clicks.tsv" | sort -u >"$T/users"
mapfile -t USERS <"$T/users"
nq=$(wc -l <"$T/queries")
[ "$nq" -ge 100 ] || fail "only $nq distinct queries in the click log"
i=0
personalized=0
while IFS= read -r q; do
  u=${USERS[$((i % ${#USERS[@]}))]}
  for who in "" "$u"; do
    uargs=()
    pargs=()
    if [ -n "$who" ]; then
      uargs=(--data-urlencode "user=$who")
      pargs=(--user "$who")
    fi
    st=$(get /v1/search -G --data-urlencode "q=$q" --data-urlencode k=10 "${uargs[@]}")
    [ "$st" = 200 ] || fail "search '$q' user '$who': status $st: $(head -c 300 "$T/body")"
    jq -e '.partial == false and .timed_out == false and .shards.total == 3 and
           .shards.successful == 3 and .shards.failed == 0 and .version == $v' \
           --argjson v "$(jq .version "$T/cluster/cluster.json")" "$T/body" \
      >/dev/null || fail "search '$q': not a complete answer: $(head -c 300 "$T/body")"
    [ "$(jq -r .personalized "$T/body")" = true ] && personalized=$((personalized + 1))
    got=$(jq -c '[.hits[] | [.id, .score, .recall, .relevance, .utility, .preference, .centroid]]' "$T/body")
    "$P" search --index "$T/single" --json --k 10 "${pargs[@]}" -- "$q" >"$T/single.json" \
      || fail "persrv search '$q' failed"
    want=$(jq -c '[.hits[] | [.id, .score, .recall, .relevance, .utility, .preference, .centroid]]' "$T/single.json")
    [ "$got" = "$want" ] || fail "search '$q' user '$who' differs from the single node:
  broker: $got
  single: $want"
  done
  i=$((i + 1))
done <"$T/queries"
[ $personalized -gt 0 ] || fail "no search was personalized"
echo "  $nq queries x (no user, user) equal the single node ($personalized personalized)"

# ---- (b) bad input -----------------------------------------------------------------------
expect_error 400 invalid_utf8 "invalid UTF-8" "/v1/search?q=%FF%FEabc"
expect_error 400 invalid_query "empty q" "/v1/search?q="
expect_error 400 invalid_query "no q" "/v1/search"
expect_error 400 invalid_query "symbols only" "/v1/search?q=~~~%20!!"
big=$(head -c 10240 /dev/zero | tr '\0' a)
expect_error 413 too_large "10 KB q" "/v1/search?q=$big"
expect_error 400 invalid_argument "k=0" "/v1/search?q=hello&k=0"
expect_error 400 invalid_argument "k=100000" "/v1/search?q=hello&k=100000"
expect_error 400 invalid_argument "k=abc" "/v1/search?q=hello&k=abc"
expect_error 400 invalid_argument "k=-1" "/v1/search?q=hello&k=-1"
expect_error 400 invalid_argument "q twice" "/v1/search?q=a&q=b"
q1=$(head -n 1 "$T/queries")
st=$(get /v1/search -G --data-urlencode "q=$q1" --data-urlencode "user=nobody-at-all")
[ "$st" = 200 ] && [ "$(jq -r .personalized "$T/body")" = false ] \
  || fail "unknown user: status $st $(head -c 300 "$T/body")"
"$P" search --index "$T/single" --json --k 10 -- "$q1" | jq -c '[.hits[].id]' >"$T/want"
[ "$(jq -c '[.hits[].id]' "$T/body")" = "$(cat "$T/want")" ] || fail "unknown user is not unpersonalized"
st=$(get /v1/search -G --data-urlencode "q=$q1" --data-urlencode k=100)
[ "$st" = 200 ] && [ "$(jq '.hits | length' "$T/body")" -le 100 ] || fail "k=100: $st"
expect_error 404 not_found "unknown sticker" "/v1/stickers/18446744073709551615"
expect_error 400 invalid_argument "non-numeric sticker id" "/v1/stickers/12ab"
expect_error 400 invalid_argument "sticker id over 2^64" "/v1/stickers/18446744073709551616"
expect_error 404 not_found "unknown path" "/v1/nothing"
expect_error 405 method_not_allowed "PUT /v1/search" "/v1/search?q=a" -X PUT
expect_error 405 method_not_allowed "DELETE /healthz" "/healthz" -X DELETE
expect_error 400 invalid_argument "user with a control character" "/v1/search?q=a&user=u%01x"
expect_error 400 invalid_argument "user with a C1 control" "/v1/search?q=a&user=u%C2%85x"
expect_error 400 invalid_argument "click user with a control character" /v1/click -X POST \
  -H 'Content-Type: application/json' --data '{"user": "u\u001b[31m", "sticker_id": "1"}'
# raw REQUEST: the status code of the broker's answer to REQUEST sent as is
raw() {
  local hp=${URL#http://}
  exec 9<>"/dev/tcp/${hp%:*}/${hp##*:}"
  printf '%b' "$1" >&9 2>/dev/null || true # the broker may answer and close before reading all
  timeout 10 head -n 1 <&9 | awk '{print $2}'
  exec 9<&-
}
body='{"user":"u1","sticker_id":"1"}'
st=$(raw "POST /v1/click HTTP/1.1\r\nHost: x\r\nContent-Length: ${#body}\r\nContent-Length: 5\r\n\r\n$body")
[ "$st" = 400 ] || fail "two different Content-Length headers: status $st"
# (headers alone: libevent refuses these before the body, and a body it never reads would
# make the kernel reset the connection, losing the answer)
st=$(raw "POST /v1/click HTTP/1.1\r\nHost: x\r\nContent-Length: ${#body}\r\nTransfer-Encoding: chunked\r\n\r\n")
[ "$st" = 400 ] || fail "Content-Length with Transfer-Encoding: status $st"
st=$(raw "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n")
[ "$st" = 200 ] || fail "a repeated identical Content-Length: status $st"
echo "  control characters in user ids, conflicting Content-Length, CL + Transfer-Encoding -> 400"
head -c $((10 << 20)) /dev/zero >"$T/big.bin"
st=$(get "/v1/search?q=a" --data-binary "@$T/big.bin" -H "Content-Type: application/octet-stream")
[ "$st" = 413 ] || [ "$st" = 405 ] || fail "10 MB body: status $st"
echo "  10 MB body -> $st"
[ "$(get /healthz)" = 200 ] || fail "the broker does not answer after the 10 MB body"

# ---- (b2) the ZeroMQ front door: bad input, and the persrv CLI over libpersrv ------------------
"$C" front-bad "$ZEP" 2097152 "$q1" >"$T/front.out" 2>&1 || fail "front door bad input: $(cat "$T/front.out")"
sed 's/^/  zmq: /' "$T/front.out" | tail -n 18
FIELDS='[.hits[] | [.id, .score, .recall, .relevance, .utility, .preference, .centroid, .ocr, .queries, .keywords, .desc, .emotion]]'
n=0
while IFS= read -r q && [ $n -lt 20 ]; do
  u=${USERS[$((n % ${#USERS[@]}))]}
  "$P" search --broker "$ZEP" --json --k 10 --user "$u" -- "$q" >"$T/z.json" 2>"$T/z.err" \
    || fail "persrv --broker '$q': $(cat "$T/z.err")"
  "$P" search --index "$T/single" --json --k 10 --user "$u" -- "$q" >"$T/single.json"
  [ "$(jq -c "$FIELDS" "$T/z.json")" = "$(jq -c "$FIELDS" "$T/single.json")" ] \
    || fail "persrv --broker '$q' user $u: hits or stored fields differ from the single node"
  st=$(get /v1/search -G --data-urlencode "q=$q" --data-urlencode "user=$u" --data-urlencode explain=1)
  [ "$st" = 200 ] && [ "$(jq -c "$FIELDS" "$T/body")" = "$(jq -c "$FIELDS" "$T/single.json")" ] \
    || fail "HTTP explain=1 '$q' user $u: hits or stored fields differ from the single node"
  n=$((n + 1))
done <"$T/queries"
echo "  persrv --broker and HTTP explain=1: $n queries, hits and stored fields equal the single node"
id1=$(jq -r '.hits[0].id' "$T/single.json")
"$P" sticker --broker "$ZEP" --json "$id1" >"$T/z.json" || fail "persrv sticker $id1"
[ "$(jq -r .id "$T/z.json")" = "$id1" ] && [ "$(jq -r .keywords "$T/z.json")" = "$(jq -r '.hits[0].keywords' "$T/single.json")" ] \
  || fail "persrv sticker $id1: $(head -c 300 "$T/z.json")"
"$P" health --broker "$ZEP" >"$T/z.out" || fail "persrv health: $(cat "$T/z.out")"
rc=0
"$P" sticker --broker "$ZEP" 18446744073709551615 >"$T/z.out" 2>&1 || rc=$?
[ $rc -eq 1 ] && grep -q "not_found" "$T/z.out" || fail "persrv sticker of an unknown id: rc=$rc $(cat "$T/z.out")"
rc=0
"$P" search --broker "$ZEP" -- "~~ !!" >"$T/z.out" 2>&1 || rc=$?
[ $rc -eq 1 ] && grep -q "invalid_query" "$T/z.out" || fail "persrv search without tokens: rc=$rc $(cat "$T/z.out")"
rc=0
"$P" search --broker "$ZEP" --k 100000 -- "$q1" >"$T/z.out" 2>&1 || rc=$?
[ $rc -ne 0 ] || fail "persrv search --k 100000 succeeded"
echo "  persrv sticker, health and errors over the front door"

# ---- stickers ----------------------------------------------------------------------------
for id in $(jq -r '.hits[].id' "$T/single.json" | head -n 5); do
  st=$(get "/v1/stickers/$id")
  [ "$st" = 200 ] && [ "$(jq -r .id "$T/body")" = "$id" ] || fail "sticker $id: status $st"
  jq -e 'has("ocr") and has("queries") and has("keywords") and has("desc") and has("emotion")
         and (.utility | type) == "number"' "$T/body" >/dev/null || fail "sticker $id: fields"
done
# jq reads numbers as doubles: take the 19-digit id from the text, the keywords with jq.
id=$(sed -n '1s/^{"id":\([0-9]*\),.*/\1/p' "$T/data/corpus.jsonl")
[ ${#id} -ge 15 ] || fail "no id on the first corpus line"
want=$(head -n 1 "$T/data/corpus.jsonl" | jq -c --arg id "$id" '{id: $id, keywords}')
[ "$(get "/v1/stickers/$id")" = 200 ] || fail "sticker $id of the corpus"
[ "$(jq -c '{id, keywords}' "$T/body")" = "$want" ] \
  || fail "sticker $id: $(jq -c '{id, keywords}' "$T/body") != $want"

# ---- (d) metrics -------------------------------------------------------------------------
[ "$(get /metrics)" = 200 ] || fail "/metrics"
for m in 'persrv_requests_total{door="http",endpoint="search",code="200"}' \
  'persrv_requests_total{door="http",endpoint="search",code="400"}' \
  'persrv_requests_total{door="zmq",endpoint="search",code="200"}' \
  'persrv_request_duration_seconds_bucket{door="http",endpoint="search",le="+Inf"}' \
  'persrv_request_duration_seconds_bucket{door="zmq",endpoint="search",le="+Inf"}' \
  'persrv_shard_request_duration_seconds_count{shard="2"}' 'persrv_shard_failovers_total{shard="0"}' \
  'persrv_shard_failures_total{shard="0"}' 'persrv_build_info{version="'; do
  grep -qF "$m" "$T/body" || fail "/metrics lacks $m"
done
# the 20 searches of the persrv CLI above came through the ZeroMQ door, none partial yet
zs=$(sed -n 's/^persrv_requests_total{door="zmq",endpoint="search",code="200"} //p' "$T/body")
[ "${zs:-0}" -ge 20 ] || fail "/metrics: $zs ZeroMQ searches counted, want >= 20"
grep -q '^persrv_requests_total{endpoint=\|^persrv_http_requests_total\|endpoint="zmq_' "$T/body" \
  && fail "/metrics still has the old request metric names"
for d in http zmq; do
  grep -qx "persrv_broker_partial_answers_total{door=\"$d\"} 0" "$T/body" \
    || fail "/metrics: partial answers on $d before any shard is down"
done

# ---- (c) failover, partial answers, all shards down ---------------------------------------
kill -9 "${PID[s0a]}"
wait "${PID[s0a]}" 2>/dev/null || true
unset "PID[s0a]"
for q in $(head -n 10 "$T/queries" | tr ' ' '_'); do
  st=$(get /v1/search -G --data-urlencode "q=${q//_/ }")
  [ "$st" = 200 ] && jq -e '.partial == false and .shards.successful == 3' "$T/body" >/dev/null \
    || fail "one replica of shard 0 down: status $st $(head -c 300 "$T/body")"
done
echo "  one replica of shard 0 killed: 10 searches complete"
kill -9 "${PID[s0b]}"
wait "${PID[s0b]}" 2>/dev/null || true
unset "PID[s0b]"
st=$(get /v1/search -G --data-urlencode "q=$q1")
[ "$st" = 200 ] || fail "shard 0 down: status $st $(head -c 300 "$T/body")"
# a replica known gone fails at once ("not connected"); one that is silent times out
jq -e '.partial == true and .shards.successful == 2 and
       .shards.failed == 1 and .shards.failures[0].shard == 0 and (.hits | length) > 0 and
       (.timed_out == true or (.shards.failures[0].reason | test("not connected")))' \
  "$T/body" >/dev/null || fail "shard 0 down: not a partial answer: $(head -c 400 "$T/body")"
echo "  shard 0 down: partial, reason: $(jq -r '.shards.failures[0].reason' "$T/body")"
# the same search through the ZeroMQ door (the CLI warns on stderr, exits 0): one partial
# answer counted per door
"$P" search --broker "$ZEP" --json -- "$q1" >"$T/z.json" 2>"$T/z.err" \
  || fail "persrv --broker with shard 0 down: $(cat "$T/z.err")"
jq -e '.partial == true' "$T/z.json" >/dev/null || fail "persrv --broker: not partial: $(head -c 300 "$T/z.json")"
[ "$(get /readyz)" = 503 ] || fail "/readyz with shard 0 down: $(cat "$T/body")"
get /metrics >/dev/null
grep -q '^persrv_shard_failures_total{shard="0"} [1-9]' "$T/body" || fail "no shard 0 failure counted"
grep -q '^persrv_shard_failovers_total{shard="0"} [1-9]' "$T/body" || fail "no failover counted"
for d in http zmq; do
  grep -qx "persrv_broker_partial_answers_total{door=\"$d\"} 1" "$T/body" \
    || fail "/metrics: not 1 partial answer on $d: $(grep partial_answers "$T/body")"
done
# health: both killed replicas end up down (a transport error or missed probes: a replica whose
# connection has not yet been seen gone may first be slow), shard 0's two and no other
for _ in $(seq 1 300); do
  grep -q '^persrv_broker_replicas{state="down"} 2$' "$T/body" && break
  sleep 0.1
  get /metrics >/dev/null
done
grep -q '^persrv_broker_replicas{state="down"} 2$' "$T/body" \
  || fail "/metrics: not 2 replicas down: $(grep persrv_broker_replica "$T/body")"
grep -q '^persrv_broker_replica_down_total{reason="\(transport\|missed_probes\)"} [1-9]' "$T/body" \
  || fail "/metrics: no replica marked down: $(grep persrv_broker_replica "$T/body")"
for n in s1 s2; do
  kill -9 "${PID[$n]}"
  wait "${PID[$n]}" 2>/dev/null || true
  unset "PID[$n]"
done
expect_error 503 unavailable "all shards down" /v1/search -G --data-urlencode "q=$q1"
[ "$(get /healthz)" = 200 ] || fail "/healthz with every shard down"

# ---- (e) SIGTERM -------------------------------------------------------------------------
rc=0
kill -TERM "${PID[broker]}"
wait "${PID[broker]}" || rc=$?
unset "PID[broker]"
[ $rc -eq 0 ] || fail "broker exited with status $rc after SIGTERM"
[ ! -e "$T/broker.pid" ] && [ ! -e "$T/broker.ready" ] || fail "broker left its pid/ready file"
grep -q "event=exit status=0" "$T/broker.log" || fail "broker did not log a clean exit"
echo "test_broker: all checks passed"
