#!/usr/bin/env bash
# The OpenAPI description against a running cluster: 2 shards, a profile primary (clicks) and a
# broker on 127.0.0.1; tests/check_openapi.py fetches /openapi.json (it must equal
# broker/www/openapi.json), sends good and bad requests to every operation it documents and
# validates every answer against the schema the document gives for its status. Then a request
# id sent with a search and a click shows in the profile replica's and primary's log lines.
# usage: test_openapi.sh BUILDER SHARD SHARD_CLIENT BROKER PROFILE
set -euo pipefail
B=$1
S=$2
C=$3
BR=$4
PD=$5
. "$(dirname "$0")/lib.sh"
ps_test_init openapi
python3 -c 'import jsonschema' 2>/dev/null || fail "python3-jsonschema is required (scripts/deps.sh)"
SRC=$(cd "$(dirname "$0")/../.." && pwd)

$B generate --out "$T/data" --stickers 5000 --dim 32 --users 4 --clicks 2000 --pairs 300 \
  --queries 200 --no-progress
BARGS=(--corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy"
  --clicks "$T/data/clicks.tsv")
$B build "${BARGS[@]}" --out "$T/cluster" --shards 2 >"$T/build.out" 2>&1 \
  || fail "build: $(cat "$T/build.out")"
start_profile pp --db "$T/pp" --role primary --log-level debug
start_profile r1 --db "$T/r1" --role replica --primary "${EP[pp]}" --log-level debug
$B push-profiles "${BARGS[@]}" --primary "${EP[pp]}" >"$T/push.out" 2>&1 \
  || fail "push-profiles: $(cat "$T/push.out")"
start_shard s0 --workers 1 --index "$T/cluster/shard-000" --shard 0 --shards 2
start_shard s1 --workers 1 --index "$T/cluster/shard-001" --shard 1 --shards 2
start_broker broker "${EP[s0]},${EP[s1]}" --profile-primary "${EP[pp]}" \
  --profile-replicas "${EP[r1]}" --profile-staleness-ms 0 --deadline-ms 2000

IFS=$'\t' read -r user query sticker < <(head -1 "$T/data/clicks.tsv")
python3 "$SRC/tests/check_openapi.py" "$URL" "$SRC/broker/www/openapi.json" "$sticker" "$user" \
  "$query" || fail "the broker's answers do not match its OpenAPI description"

# The request id reaches the profile service too: a search's profile read (replica), a click
# (primary).
enc=$(jq -rn --arg q "$query" '$q | @uri')
curl -sf -o /dev/null -H "X-Request-Id: prof-read-1" "$URL/v1/search?q=$enc&user=$user&k=3" \
  || fail "search with a request id"
grep -q "event=get_profile .*trace=prof-read-1 " "$T/r1.log" \
  || fail "the replica's log has no profile read for prof-read-1"
curl -sf -o /dev/null -H "X-Request-Id: prof-click-1" -X POST "$URL/v1/click" \
  -d "{\"user\": \"$user\", \"sticker_id\": \"$sticker\", \"query\": \"x\"}" || fail "click"
grep -q "event=click .*trace=prof-click-1 " "$T/pp.log" \
  || fail "the primary's log has no click for prof-click-1"
echo "PASS: OpenAPI description, request ids at the profile service"
