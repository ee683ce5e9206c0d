#!/usr/bin/env bash
# Issue 11, must-show 2: API keys on the broker's HTTP door (--api-keys FILE). A 2,000-sticker
# cluster (one shard, the profile service's primary) behind a broker with three keys:
#   searcher  search        1000/s
#   clicker   click         3/min    (a bucket of 3, refilled at one per 20 s)
#   both      search,click  -        (no limit)
#   operator  admin         10/s
#   1. search, sticker and click without a key: 401 (WWW-Authenticate), with an unknown key:
#      401, with a key lacking the scope: 403; every refused click stores nothing (the primary's
#      checksum and sequence number are unchanged); /healthz, /readyz, /metrics stay open. The
#      admin path (POST /admin/switch on the admin port): 401 / 401 / 403 likewise, the admin
#      key gets through to the switch itself; the version served never changes.
#   2. A burst of 8 clicks with the 3/min key: the first 3 are stored, the rest get 429 with
#      Retry-After (>= 1 s) and store nothing (the user's click log grows by the 200s alone).
#   3. The keys with the scope search and click; no key appears in the broker's log; the
#      refusals are counted in /metrics by status.
#   4. Bad key files (wrong field count, unknown scope, bad rate, short key, repeated key, no
#      key, missing file): the broker refuses to start, naming the file and line.
#   5. The ZeroMQ front door (libpersrv, the persrv CLI with PERSRV_API_KEY): search and
#      sticker without a key: unauthorized, with the click-only key: forbidden, with the search
#      key: answered; health stays open.
# usage: test_api_keys.sh BUILDER SHARD SHARD_CLIENT BROKER PROFILE PROFILE_CLIENT PERSRV
set -euo pipefail
B=$1
S=$2
C=$3
BR=$4
PD=$5
PC=$6
P=$7
. "$(dirname "$0")/lib.sh"
ps_test_init api_keys
command -v curl >/dev/null || fail "curl is required (scripts/deps.sh installs it)"
command -v jq >/dev/null || fail "jq is required (scripts/deps.sh installs it)"

$B generate --out "$T/data" --stickers 2000 --dim 16 --users 4 --clicks 500 --pairs 100 \
  --queries 50 --no-progress
$B build --corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy" \
  --clicks "$T/data/clicks.tsv" --out "$T/cluster" --shards 1 >"$T/build.out" 2>&1 \
  || fail "build: $(cat "$T/build.out")"

start_profile pp --db "$T/pp" --role primary
start_shard s0 --workers 1 --index "$T/cluster/shard-000" --shard 0 --shards 1

K_SEARCH=sk-search-7f3a9c21d4e8b605
K_CLICK=ck-click-2b8e4f61a0c9d375
K_BOTH=bk-both-91d0e6a4c7f2b358
K_ADMIN=ak-admin-5c1e7b93f02d4a68
cat >"$T/keys" <<EOF
# name     scopes        rate    key
searcher   search        1000/s  $K_SEARCH
clicker    click         3/min   $K_CLICK
both       search,click  -       $K_BOTH
operator   admin         10/s    $K_ADMIN
EOF
chmod 600 "$T/keys"
start_broker broker "${EP[s0]}" --profile-primary "${EP[pp]}" --profile-replicas "${EP[pp]}" \
  --deadline-ms 5000 --api-keys "$T/keys"
grep -q "event=api_keys .*keys=4" "$T/broker.log" || fail "the broker did not load 4 keys"
ADMIN_URL="http://$(sed -n 3p "$T/broker.ready")"

# req METHOD PATH [KEY [BODY]]: status into ST, body into $T/body, headers into $T/hdr
req() {
  local m=$1 path=$2 key=${3:-} body=${4:-} a=()
  [ -n "$key" ] && a+=(-H "Authorization: Bearer $key")
  [ -n "$body" ] && a+=(-H 'Content-Type: application/json' --data "$body")
  ST=$(curl -s -X "$m" -D "$T/hdr" -o "$T/body" -w '%{http_code}' "${a[@]}" "$URL$path") || ST=curl_failed
}
# expect STATUS CODE WHAT
expect() {
  [ "$ST" = "$1" ] || fail "$3: status $ST, not $1: $(head -c 300 "$T/body")"
  [ -z "$2" ] || [ "$(jq -r .error.code "$T/body")" = "$2" ] \
    || fail "$3: error code $(jq -r .error.code "$T/body" 2>/dev/null), not $2"
}
state() { "$PC" checksum "${EP[pp]}"; } # checksum keys seq
stored() { "$PC" clicks "${EP[pp]}" u-keys | grep -c . || true; } # u-keys' click log

Q=$(awk -F'\t' '$2 ~ /[^[:space:]]/ {print $2; exit}' "$T/data/clicks.tsv")
QS="/v1/search?q=$(jq -rn --arg q "$Q" '$q | @uri')&k=5"
req GET "$QS" "$K_SEARCH"
expect 200 "" "search with the search key"
ID=$(grep -oE '"id":"[0-9]+"' "$T/body" | awk 'NR == 1' | tr -dc 0-9)
[ -n "$ID" ] || fail "the search with the search key returned no hit"
CLICK="{\"user\": \"u-keys\", \"sticker_id\": \"$ID\", \"query\": \"$Q\"}"

# ---- 1. no key, unknown key, missing scope ----------------------------------------------------
before=$(state)
for p in "$QS" "/v1/stickers/$ID"; do
  req GET "$p"
  expect 401 unauthorized "GET ${p%%\?*} without a key"
  grep -qi '^WWW-Authenticate: Bearer' "$T/hdr" || fail "401 without WWW-Authenticate"
  [ "$(jq -r .error.type "$T/body")" = authentication_error ] || fail "401: error type"
  req GET "$p" not-a-key-of-this-broker
  expect 401 unauthorized "GET ${p%%\?*} with an unknown key"
  req GET "$p" "$K_CLICK"
  expect 403 forbidden "GET ${p%%\?*} with the click-only key"
  grep -q "lacks the scope 'search'" "$T/body" || fail "403 does not name the scope"
done
req POST /v1/click "" "$CLICK"
expect 401 unauthorized "click without a key"
req POST /v1/click "$K_CLICK-x" "$CLICK"
expect 401 unauthorized "click with an unknown key"
req POST /v1/click "$K_SEARCH" "$CLICK"
expect 403 forbidden "click with the search-only key"
[ "$(state)" = "$before" ] || fail "a refused click changed the profile store: $before -> $(state)"
for p in /healthz /readyz /metrics; do
  req GET "$p"
  [ "$ST" = 200 ] || fail "$p without a key: $ST"
done
# the admin path (the broker's admin port, no admin token configured): only the admin scope
version() { curl -s "$ADMIN_URL/healthz" | jq -r .version; }
v0=$(version)
areq() { # KEY: POST /admin/switch to a version no replica holds; status into ST
  local a=()
  [ -n "$1" ] && a+=(-H "Authorization: Bearer $1")
  ST=$(curl -s -X POST -o "$T/body" -w '%{http_code}' "${a[@]}" \
    "$ADMIN_URL/admin/switch?version=424242") || ST=curl_failed
}
areq ""
expect 401 unauthorized "admin switch without a key"
areq not-a-key-of-this-broker
expect 401 unauthorized "admin switch with an unknown key"
areq "$K_BOTH"
expect 403 forbidden "admin switch with a search,click key"
grep -q "lacks the 'admin' scope" "$T/body" || fail "admin 403 does not name the scope"
areq "$K_ADMIN"
AST=$ST
[ "$AST" != 401 ] && [ "$AST" != 403 ] || fail "admin switch with the admin key: $AST"
[ "$(version)" = "$v0" ] || fail "the version changed: $v0 -> $(version)"
req GET "$QS" "$K_ADMIN"
expect 403 forbidden "search with the admin-only key"
echo "  admin path: 401 without or with an unknown key, 403 with a search,click key; the admin"
echo "  key reaches the switch (HTTP $AST: no replica holds 424242), the version stays $v0"
echo "  401 without or with an unknown key, 403 without the scope (search, sticker, click);"
echo "  the primary unchanged ($before); /healthz, /readyz, /metrics open"

# ---- 2. a burst over the rate -------------------------------------------------------------------
s0=$(stored)
ok=0 limited=0
for i in $(seq 1 8); do
  req POST /v1/click "$K_CLICK" "$CLICK"
  if [ "$ST" = 200 ]; then
    ok=$((ok + 1))
  else
    expect 429 rate_limited "click $i over the rate"
    ra=$(grep -i '^Retry-After:' "$T/hdr" | tr -dc 0-9)
    [ -n "$ra" ] && [ "$ra" -ge 1 ] || fail "429 without a Retry-After >= 1: $(cat "$T/hdr")"
    limited=$((limited + 1))
  fi
done
s1=$(stored)
# 3 in the bucket; one more only if the burst took over 20 s (a very slow machine)
[ $ok -ge 3 ] && [ $ok -le 4 ] || fail "burst: $ok of 8 clicks accepted with a 3/min key"
[ $((s1 - s0)) -eq $ok ] || fail "burst: $((s1 - s0)) clicks stored, $ok accepted"
echo "  burst of 8 clicks at 3/min: $ok accepted and stored ($((s1 - s0)) in the click log), $limited got 429 (Retry-After $ra s)"

# ---- 3. the unlimited key with both scopes; logs and metrics ------------------------------------
req GET "$QS" "$K_BOTH"
expect 200 "" "search with the both key"
for i in 1 2 3 4 5; do
  req POST /v1/click "$K_BOTH" "$CLICK"
  expect 200 "" "click $i with the unlimited key"
done
[ $(($(stored) - s1)) -eq 5 ] || fail "the unlimited key's 5 clicks were not all stored"
for k in "$K_SEARCH" "$K_CLICK" "$K_BOTH"; do
  grep -qF -- "$k" "$T/broker.log" && fail "the broker logged a key"
done
req GET /metrics
for code in 401 403 429; do
  grep -qE "^persrv_requests_total\{door=\"http\"[^}]*code=\"$code\"[^}]*\} [1-9]" "$T/body" \
    || fail "/metrics does not count the $code answers"
done
echo "  the unlimited key searches and clicks (5 stored); no key in the log; 401/403/429 in /metrics"

# ---- 4. bad key files ----------------------------------------------------------------------------
bad() { # WHAT FILE-CONTENT EXPECTED-MESSAGE
  printf '%s\n' "$2" >"$T/bad.keys"
  local rc=0
  "$BR" --shards "${EP[s0]}" --http 127.0.0.1:0 --api-keys "$T/bad.keys" >/dev/null 2>"$T/bad.err" || rc=$?
  [ $rc -ne 0 ] || fail "bad key file ($1): the broker started"
  grep -qF -- "$3" "$T/bad.err" || fail "bad key file ($1): $(grep start_failed "$T/bad.err")"
}
bad "3 fields" "a search 1/s" "bad.keys:1: want NAME SCOPES RATE KEY"
bad "scope" "a root 1/s 0123456789abcdef01" "bad.keys:1: SCOPES"
bad "rate" "a search 5/h 0123456789abcdef01" "bad.keys:1: RATE"
bad "short key" "a search 1/s short" "bad.keys:1: KEY must be"
bad "repeated key" "$(printf 'a search - 0123456789abcdef01\nb click - 0123456789abcdef01')" \
  "bad.keys:2: a NAME or KEY repeats"
bad "no key" "# nothing" "no key in it"
grep -qF "0123456789abcdef01" "$T/bad.err" && fail "a refused key file's key was printed"
rc=0
"$BR" --shards "${EP[s0]}" --http 127.0.0.1:0 --api-keys "$T/none.keys" >/dev/null 2>"$T/bad.err" || rc=$?
[ $rc -ne 0 ] && grep -qF "none.keys: No such file" "$T/bad.err" \
  || fail "a missing key file: rc=$rc $(grep start_failed "$T/bad.err")"
echo "  bad key files refused at start, naming file and line"

# ---- 5. the front door ----------------------------------------------------------------------------
cli() { # KEY CMD ARGS...: the persrv CLI over the front door; output in $T/cli.out, status in CST
  local key=$1
  shift
  CST=0
  env ${key:+PERSRV_API_KEY=$key} "$P" "$1" --broker "$ZEP" --json "${@:2}" >"$T/cli.out" 2>&1 || CST=$?
}
unset PERSRV_API_KEY
for k in "" not-a-key-of-this-broker; do
  cli "$k" search -- "$Q"
  [ $CST -ne 0 ] && grep -q "unauthorized" "$T/cli.out" \
    || fail "front door search with key '$k': status $CST: $(head -c 300 "$T/cli.out")"
done
cli "$K_CLICK" search -- "$Q"
[ $CST -ne 0 ] && grep -q "forbidden" "$T/cli.out" || fail "front door search, click key: $(cat "$T/cli.out")"
cli "" sticker "$ID"
[ $CST -ne 0 ] && grep -q "unauthorized" "$T/cli.out" || fail "front door sticker without a key"
cli "$K_SEARCH" search -- "$Q"
[ $CST -eq 0 ] && [ "$(jq '.hits | length' "$T/cli.out")" -gt 0 ] \
  || fail "front door search with the search key: $(head -c 300 "$T/cli.out")"
cli "$K_SEARCH" sticker "$ID"
[ $CST -eq 0 ] && [ "$(jq -r .id "$T/cli.out")" = "$ID" ] || fail "front door sticker with the key"
cli "" health
[ $CST -eq 0 ] || fail "front door health without a key: $(cat "$T/cli.out")"
for k in "$K_SEARCH" "$K_CLICK" "$K_BOTH"; do
  grep -qF -- "$k" "$T/broker.log" && fail "the broker logged a key"
done
echo "  front door: unauthorized without a valid key, forbidden without the scope, answered with it; health open"

stop broker
echo "test_api_keys: all checks passed"
