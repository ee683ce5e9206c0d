#!/usr/bin/env bash
# Online personalization through the whole cluster: a generated corpus (with its ground-truth
# series.tsv) in 2 shards; the profile service (a primary and 2 replicas) loaded by
# `builder push-profiles`; brokers reading profiles from the replicas and sending clicks to
# the primary.
#   1. Users of the click log are personalized from the service exactly as the single node
#      personalizes them from the builder's profiles (ids, order, scores).
#   2. A user with no history gets the unpersonalized answer (personalized: false).
#   3. After POST /v1/click on 8 stickers of one series, the same query for that user ranks
#      that series higher (its best rank and its share of the top 10 both improve); once
#      replicated, a broker reading only replica 1 and one reading only replica 2 give the
#      identical answer.
#   4. A profile replica killed with SIGKILL under 2,000 searches (libpersrv, 4 threads, users
#      with profiles) costs no failed search, and every answer stays personalized.
#   5. Bad clicks — unknown sticker, malformed JSON, invalid UTF-8, oversized user id, missing
#      or malformed fields, wrong method — get a 4xx JSON error and store nothing (the
#      primary's checksum over every key is unchanged).
# usage: test_click.sh BUILDER SHARD SHARD_CLIENT BROKER PERSRV PROFILE PROFILE_CLIENT LOAD_CLIENT
set -euo pipefail
B=$1
S=$2
C=$3
BR=$4
P=$5
PD=$6
PC=$7
LC=$8
. "$(dirname "$0")/lib.sh"
ps_test_init click
command -v curl >/dev/null || fail "curl is required (scripts/deps.sh installs it)"
command -v jq >/dev/null || fail "jq is required (scripts/deps.sh installs it)"
START=$SECONDS

$B generate --out "$T/data" --stickers 20000 --dim 32 --users 4 --clicks 3000 --pairs 500 \
  --queries 300 --no-progress
BARGS=(--corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy"
  --clicks "$T/data/clicks.tsv")
$B build "${BARGS[@]}" --out "$T/single" >"$T/build.out" 2>&1 || fail "build: $(cat "$T/build.out")"
$B build "${BARGS[@]}" --out "$T/cluster" --shards 2 >"$T/build.out" 2>&1 \
  || fail "build: $(cat "$T/build.out")"

start_profile pp --db "$T/pp" --role primary
start_profile r1 --db "$T/r1" --role replica --primary "${EP[pp]}"
start_profile r2 --db "$T/r2" --role replica --primary "${EP[pp]}"
$B push-profiles "${BARGS[@]}" --primary "${EP[pp]}" >"$T/push.out" 2>&1 \
  || fail "push-profiles: $(cat "$T/push.out")"
grep -q "pushed 4 user profiles" "$T/push.out" || fail "push-profiles: $(cat "$T/push.out")"
echo "  $(cat "$T/push.out" | tail -n 1)"

start_shard s0 --workers 1 --index "$T/cluster/shard-000" --shard 0 --shards 2
start_shard s1 --workers 1 --index "$T/cluster/shard-001" --shard 1 --shards 2
TOPO="${EP[s0]},${EP[s1]}"
PFLAGS=(--profile-primary "${EP[pp]}" --profile-staleness-ms 100 --deadline-ms 2000)
start_broker broker "$TOPO" --profile-replicas "${EP[r1]}|${EP[r2]}" "${PFLAGS[@]}"

# wait_replicated: until both replicas have applied the primary's latest sequence number.
seq_of() { "$PC" checksum "$1" | awk '{print $3}'; }
wait_replicated() {
  local want i
  want=$(seq_of "${EP[pp]}")
  for i in $(seq 1 200); do
    [ "$(seq_of "${EP[r1]}")" = "$want" ] && [ "$(seq_of "${EP[r2]}")" = "$want" ] && return 0
    sleep 0.05
  done
  fail "replicas did not reach seq $want"
}
wait_replicated

# search USER Q K: the /v1/search body to $T/body; prints the status.
search() {
  local uargs=()
  [ -n "$1" ] && uargs=(--data-urlencode "user=$1")
  curl -s -o "$T/body" -w '%{http_code}' -G --data-urlencode "q=$2" --data-urlencode "k=$3" \
    "${uargs[@]}" "${4:-$URL}/v1/search" || echo "curl_failed"
}
HITS='[.hits[] | [.id, .score, .recall, .relevance, .utility, .preference, .centroid]]'

# ---- 1. click-log users: the service's profiles == the builder's ------------------------------
cut -f2 "$T/data/clicks.tsv" | sort -u | head -n 40 >"$T/queries"
n=0
while IFS= read -r q; do
  u=u0$((n % 4 + 1))
  [ "$(search "$u" "$q" 10)" = 200 ] || fail "search '$q' user $u: $(head -c 300 "$T/body")"
  [ "$(jq -r .personalized "$T/body")" = true ] || fail "user $u not personalized from the service"
  "$P" search --index "$T/single" --json --k 10 --user "$u" -- "$q" >"$T/single.json"
  [ "$(jq -c "$HITS" "$T/body")" = "$(jq -c "$HITS" "$T/single.json")" ] \
    || fail "'$q' user $u: the profile service's answer differs from the single node's"
  n=$((n + 1))
done <"$T/queries"
echo "  $n searches personalized from the profile service == the single node"

# ---- 2. no history: unpersonalized ----------------------------------------------------------
NEW=newbie-42
Q=""
while IFS= read -r q; do # a query with a full page of 100 hits
  [ "$(search "" "$q" 100)" = 200 ] || fail "search '$q'"
  if [ "$(jq '.hits | length' "$T/body")" -eq 100 ]; then Q=$q; break; fi
done <"$T/queries"
[ -n "$Q" ] || fail "no query with 100 hits"
[ "$(search "$NEW" "$Q" 100)" = 200 ] || fail "search for $NEW"
[ "$(jq -r .personalized "$T/body")" = false ] || fail "$NEW (no history) is personalized"
"$P" search --index "$T/single" --json --k 100 -- "$Q" >"$T/single.json"
[ "$(jq -c "$HITS" "$T/body")" = "$(jq -c "$HITS" "$T/single.json")" ] \
  || fail "$NEW: not the unpersonalized answer"
jq -r '.hits[].id' "$T/body" >"$T/before.ids"
echo "  $NEW (no history): unpersonalized, $(wc -l <"$T/before.ids") hits"

# ---- 3. clicks on one series move it up -------------------------------------------------------
# The series of the hit ranked 40th (a series the unpersonalized ranking does not favour).
target=$(sed -n 40p "$T/before.ids")
[ -n "$target" ] || fail "fewer than 40 hits for '$Q'"
SER=$(awk -F'\t' -v id="$target" '$1 == id {print $2}' "$T/data/series.tsv")
[ -n "$SER" ] || fail "sticker $target has no series"
# rank_stats IDS_FILE: "best_rank count_in_top10" of series SER.
rank_stats() {
  awk -F'\t' -v s="$SER" 'NR == FNR { if ($2 == s) in_s[$1] = 1; next }
    { if ($1 in in_s) { if (!best) best = FNR; if (FNR <= 10) top++ } }
    END { print (best ? best : 999), top + 0 }' "$T/data/series.tsv" "$1"
}
read -r best0 top0 <<<"$(rank_stats "$T/before.ids")"
awk -F'\t' -v s="$SER" '$2 == s {print $1}' "$T/data/series.tsv" | head -n 8 >"$T/clicked"
[ "$(wc -l <"$T/clicked")" -eq 8 ] || fail "series $SER has fewer than 8 stickers"
sum0=$("$PC" checksum "${EP[pp]}" | awk '{print $1}')
while IFS= read -r id; do
  st=$(curl -s -o "$T/body" -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    --data "{\"user\": \"$NEW\", \"sticker_id\": \"$id\", \"query\": \"$Q\"}" "$URL/v1/click")
  [ "$st" = 200 ] && [ "$(jq -r .acknowledged "$T/body")" = true ] \
    || fail "click on $id: status $st $(head -c 300 "$T/body")"
done <"$T/clicked"
[ "$("$PC" checksum "${EP[pp]}" | awk '{print $1}')" != "$sum0" ] || fail "8 clicks changed nothing"
[ "$("$PC" clicks "${EP[pp]}" "$NEW" | tr -s ' \n' ' ' | sed 's/ $//')" = "$(tr '\n' ' ' <"$T/clicked" | sed 's/ $//')" ] \
  || fail "the primary's click log of $NEW: $("$PC" clicks "${EP[pp]}" "$NEW")"
[ "$(search "$NEW" "$Q" 100)" = 200 ] || fail "search for $NEW after clicks"
[ "$(jq -r .personalized "$T/body")" = true ] || fail "$NEW not personalized after 8 clicks"
jq -r '.hits[].id' "$T/body" >"$T/after.ids"
read -r best1 top1 <<<"$(rank_stats "$T/after.ids")"
echo "  series $SER for '$Q': best rank $best0 -> $best1, in the top 10: $top0 -> $top1"
[ "$best1" -lt "$best0" ] && [ "$top1" -gt "$top0" ] \
  || fail "8 clicks on series $SER did not move it up (best $best0 -> $best1, top 10 $top0 -> $top1)"

# Identical from every replica once replicated.
wait_replicated
MAIN_URL=$URL
MAIN_ZEP=$ZEP
start_broker b1 "$TOPO" --profile-replicas "${EP[r1]}" "${PFLAGS[@]}"
U1=$URL
start_broker b2 "$TOPO" --profile-replicas "${EP[r2]}" "${PFLAGS[@]}"
U2=$URL
[ "$(search "$NEW" "$Q" 100 "$U1")" = 200 ] || fail "search via replica 1"
jq -c "$HITS" "$T/body" >"$T/r1.hits"
[ "$(search "$NEW" "$Q" 100 "$U2")" = 200 ] || fail "search via replica 2"
jq -c "$HITS" "$T/body" >"$T/r2.hits"
jq -r '.[][0]' "$T/r1.hits" | cmp -s - "$T/after.ids" || fail "replica 1 answers differently from the primary's read"
cmp -s "$T/r1.hits" "$T/r2.hits" || fail "replica 1 and replica 2 answer differently"
echo "  after replication: replica 1 and replica 2 give the identical personalized answer"
stop b1
stop b2
URL=$MAIN_URL
ZEP=$MAIN_ZEP

# ---- 4. a profile replica killed under load ----------------------------------------------------
"$LC" "$ZEP" "$T/queries" 2000 4 u01,u02,u03,u04 5000 personalized >"$T/load.out" 2>&1 &
lpid=$!
sleep 0.5
kill -0 $lpid 2>/dev/null || fail "the load ended before the kill: $(cat "$T/load.out")"
kill -9 "${PID[r1]}"
unset "PID[r1]"
rc=0
wait $lpid || rc=$?
echo "  profile replica 1 killed under load: $(cat "$T/load.out")"
[ $rc -eq 0 ] || fail "searches failed or lost personalization when a profile replica died"

# ---- 5. bad clicks: 4xx, nothing stored ------------------------------------------------------
sum=$("$PC" checksum "${EP[pp]}")
good=$(head -n 1 "$T/clicked")
# bad_click STATUS CODE WHAT CURL_ARGS...
bad_click() {
  local want=$1 code=$2 what=$3 st
  shift 3
  st=$(curl -s -o "$T/body" -w '%{http_code}' "$@" "$URL/v1/click") || st=curl_failed
  [ "$st" = "$want" ] || fail "$what: status $st, expected $want: $(head -c 300 "$T/body")"
  [ "$(jq -r .error.code "$T/body")" = "$code" ] || fail "$what: $(head -c 300 "$T/body")"
  echo "  $what -> $st $code: $(jq -r .error.message "$T/body")"
}
J=(-X POST -H 'Content-Type: application/json')
bad_click 404 not_found "unknown sticker" "${J[@]}" --data '{"user": "x", "sticker_id": "18446744073709551615"}'
bad_click 400 parse_error "malformed JSON" "${J[@]}" --data '{"user": "x", "sticker_id": '
bad_click 400 parse_error "not JSON at all" "${J[@]}" --data 'user=x&sticker_id=1'
printf '{"user": "\xff\xfe", "sticker_id": "%s"}' "$good" >"$T/badutf8.json"
bad_click 400 invalid_utf8 "invalid UTF-8 user" "${J[@]}" --data-binary "@$T/badutf8.json"
long=$(head -c 300 /dev/zero | tr '\0' u)
bad_click 413 too_large "300-byte user id" "${J[@]}" --data "{\"user\": \"$long\", \"sticker_id\": \"$good\"}"
bad_click 400 invalid_argument "missing user" "${J[@]}" --data "{\"sticker_id\": \"$good\"}"
bad_click 400 invalid_argument "empty user" "${J[@]}" --data "{\"user\": \"\", \"sticker_id\": \"$good\"}"
bad_click 400 invalid_argument "missing sticker_id" "${J[@]}" --data '{"user": "x"}'
bad_click 400 invalid_argument "sticker_id abc" "${J[@]}" --data '{"user": "x", "sticker_id": "abc"}'
bad_click 400 invalid_argument "negative sticker_id" "${J[@]}" --data '{"user": "x", "sticker_id": -5}'
bad_click 400 invalid_argument "query not a string" "${J[@]}" --data "{\"user\": \"x\", \"sticker_id\": \"$good\", \"query\": 7}"
bad_click 400 invalid_argument "an array" "${J[@]}" --data '[1, 2]'
bad_click 405 method_not_allowed "GET /v1/click" -G
[ "$("$PC" checksum "${EP[pp]}")" = "$sum" ] || fail "a bad click changed the stored state"
echo "  bad clicks stored nothing (checksum $(echo "$sum" | awk '{print $1}') unchanged)"

stop broker
for n in s0 s1 r2 pp; do stop "$n"; done
echo "test_click: all checks passed in $((SECONDS - START)) s"
