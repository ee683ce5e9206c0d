#!/usr/bin/env bash
# `persrv click` (and `persrv search --broker`'s took) against a running cluster: one shard, a
# profile primary and a replica, one broker.
#   1. `persrv search --broker --json`: took and took_us integers, took = ⌊took_us/1000⌋; a user
#      with no clicks is not personalized.
#   2. `persrv click --json --click-id cli-1` prints the HTTP door's reply (acknowledged, user,
#      sticker_id, click_id, duplicate false, seq, history 1) and the primary holds the click;
#      the same id again (CLI, then HTTP POST /v1/click) answers duplicate and stores nothing;
#      without --click-id the text line names a random 32-hex-digit id, stored once. After the
#      clicks replicate, the user's searches are personalized.
#   3. Bad clicks — an unknown sticker, an empty user, a user that is not UTF-8, a click id with
#      a space, the same click id on another sticker — exit 1 with `persrv click: MESSAGE (code)`
#      on stderr and, under --json, the error object on stdout; a sticker id that is not an
#      unsigned 64-bit integer, or a missing argument, exit 2; no broker listening: exit 1
#      (connection_refused) at once. None stores anything (the primary's checksum).
# usage: test_cli_click.sh BUILDER SHARD SHARD_CLIENT BROKER PERSRV PROFILE PROFILE_CLIENT
set -euo pipefail
B=$1
S=$2
C=$3
BR=$4
P=$5
PD=$6
PC=$7
. "$(dirname "$0")/lib.sh"
ps_test_init cli_click
command -v curl >/dev/null || fail "curl is required (scripts/deps.sh installs it)"
command -v jq >/dev/null || fail "jq is required (scripts/deps.sh installs it)"

$B generate --out "$T/data" --stickers 3000 --dim 16 --users 4 --clicks 600 --pairs 100 \
  --queries 60 --no-progress
$B build --corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy" \
  --clicks "$T/data/clicks.tsv" --out "$T/cluster" --shards 1 >"$T/build.out" 2>&1 \
  || fail "build: $(cat "$T/build.out")"
start_profile pp --db "$T/pp" --role primary
start_profile r1 --db "$T/r1" --role replica --primary "${EP[pp]}"
start_shard s0 --workers 1 --index "$T/cluster/shard-000" --shard 0 --shards 1
start_broker broker "${EP[s0]}" --profile-replicas "${EP[r1]}" --profile-primary "${EP[pp]}" \
  --profile-staleness-ms 100

U=cli-user-1
mapfile -t ST < <(cut -f1 "$T/data/series.tsv" | head -n 8)
Q=$(head -n 1 "$T/data/clicks.tsv" | cut -f2)
nclicks() { "$PC" clicks "${EP[pp]}" "$U" | wc -l; }
sum_of() { "$PC" checksum "$1" | awk '{print $1}'; }
seq_of() { "$PC" checksum "$1" | awk '{print $3}'; }
# pclick ARGS…: persrv click against the broker; stdout $T/c.out, stderr $T/c.err, status in RC
pclick() {
  RC=0
  "$P" click --broker "$ZEP" "$@" >"$T/c.out" 2>"$T/c.err" || RC=$?
}

# ---- 1. search --broker: took in ms, took_us in µs ---------------------------------------------
"$P" search --broker "$ZEP" --json --user "$U" --k 5 -- "$Q" >"$T/s.json" \
  || fail "persrv search --broker: $(cat "$T/s.json")"
jq -e '(.took | type) == "number" and .took == (.took | floor) and .took_us == (.took_us | floor)
       and .took == (.took_us / 1000 | floor) and .personalized == false and (.hits | length) == 5' \
  "$T/s.json" >/dev/null || fail "search --broker --json: $(head -c 300 "$T/s.json")"
echo "  search --broker: took $(jq .took "$T/s.json") ms, took_us $(jq .took_us "$T/s.json")"

# ---- 2. clicks --------------------------------------------------------------------------------
pclick --json --query "$Q" --click-id cli-1 "$U" "${ST[0]}"
[ $RC -eq 0 ] || fail "persrv click: exit $RC: $(cat "$T/c.err")"
jq -e --arg u "$U" --arg s "${ST[0]}" '.acknowledged == true and .user == $u
       and .sticker_id == $s and .click_id == "cli-1" and .duplicate == false and .seq > 0
       and .history == 1 and .attempts == 1 and (.centroids | type) == "number"' "$T/c.out" \
  >/dev/null || fail "persrv click --json: $(cat "$T/c.out")"
[ "$(nclicks)" -eq 1 ] || fail "the primary holds $(nclicks) clicks of $U, not 1"
"$PC" clicks "${EP[pp]}" "$U" | grep -q "${ST[0]}" || fail "the primary's click is not on ${ST[0]}"
sum=$(sum_of "${EP[pp]}")
pclick --json --query "$Q" --click-id cli-1 "$U" "${ST[0]}"
[ $RC -eq 0 ] && [ "$(jq -r .duplicate "$T/c.out")" = true ] \
  || fail "cli-1 again: exit $RC $(cat "$T/c.out" "$T/c.err")"
st=$(curl -s -o "$T/h.json" -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
  --data "{\"user\": \"$U\", \"sticker_id\": \"${ST[0]}\", \"click_id\": \"cli-1\"}" "$URL/v1/click")
[ "$st" = 200 ] && [ "$(jq -r .duplicate "$T/h.json")" = true ] \
  || fail "cli-1 over HTTP: $st $(cat "$T/h.json")"
# the CLI's reply is the HTTP door's, plus attempts
[ "$(jq -S 'del(.attempts, .seq)' "$T/c.out")" = "$(jq -S 'del(.seq)' "$T/h.json")" ] \
  || fail "persrv click --json $(cat "$T/c.out") is not the HTTP reply $(cat "$T/h.json")"
[ "$(sum_of "${EP[pp]}")" = "$sum" ] || fail "a duplicate click stored something"
for i in 1 2 3; do
  pclick --query "$Q" "$U" "${ST[$i]}"
  [ $RC -eq 0 ] || fail "click on ${ST[$i]}: exit $RC: $(cat "$T/c.err")"
  grep -Eq '^stored click [0-9a-f]{32}: seq [0-9]+, history '$((i + 1))', [0-9]+ centroids \(1 attempt\)$' \
    "$T/c.out" || fail "persrv click text: $(cat "$T/c.out")"
done
id=$(awk '{print $3}' "$T/c.out" | tr -d :)
pclick --click-id "$id" "$U" "${ST[3]}"
[ $RC -eq 0 ] && grep -q "^duplicate click $id:" "$T/c.out" \
  || fail "the random id $id again: exit $RC $(cat "$T/c.out" "$T/c.err")"
[ "$(nclicks)" -eq 4 ] || fail "the primary holds $(nclicks) clicks of $U, not 4"
for _ in $(seq 1 200); do
  [ "$(seq_of "${EP[r1]}")" = "$(seq_of "${EP[pp]}")" ] && break
  sleep 0.05
done
pers=false
for _ in $(seq 1 100); do
  pers=$("$P" search --broker "$ZEP" --json --user "$U" -- "$Q" | jq -r .personalized)
  [ "$pers" = true ] && break
  sleep 0.1
done
[ "$pers" = true ] || fail "4 clicks of $U replicated, and its searches are not personalized"
echo "  4 clicks stored (2 retries answered duplicate, CLI and HTTP alike); $U now personalized"

# ---- 3. bad clicks ----------------------------------------------------------------------------
sum=$(sum_of "${EP[pp]}")
bad_click() { # CODE WHAT ARGS…: exit 1, the code on stderr and in the --json error object
  local code=$1 what=$2
  shift 2
  pclick --json "$@"
  [ $RC -eq 1 ] || fail "$what: exit $RC, not 1: $(cat "$T/c.out" "$T/c.err")"
  grep -q "^persrv click: .*($code)\$" "$T/c.err" || fail "$what: stderr $(cat "$T/c.err")"
  jq -e --arg c "$code" '.error.code == $c and (.error.message | length) > 0
                         and (.error.type | length) > 0' "$T/c.out" >/dev/null \
    || fail "$what: stdout $(cat "$T/c.out")"
}
unknown=1
while grep -q "^$unknown"$'\t' "$T/data/series.tsv"; do unknown=$((unknown + 1)); done
bad_click not_found "an unknown sticker" "$U" "$unknown"
[ "$(jq -r .error.type "$T/c.out")" = not_found ] || fail "unknown sticker: type $(cat "$T/c.out")"
bad_click invalid_argument "an empty user" "" "${ST[4]}"
bad_click invalid_utf8 "a user that is not UTF-8" $'\xff\xfe' "${ST[4]}"
bad_click invalid_argument "a click id with a space" --click-id 'has space' "$U" "${ST[4]}"
bad_click conflict "cli-1 on another sticker" --click-id cli-1 "$U" "${ST[4]}"
for args in "$U abc" "$U -5" "$U 18446744073709551616" "$U" ""; do
  # shellcheck disable=SC2086
  pclick $args
  [ $RC -eq 2 ] || fail "persrv click $args: exit $RC, not 2 (usage): $(cat "$T/c.err")"
done
port=$($C freeport)
t0=$SECONDS
RC=0
"$P" click --broker "tcp://127.0.0.1:$port" --json "$U" "${ST[4]}" >"$T/c.out" 2>"$T/c.err" || RC=$?
[ $RC -eq 1 ] && grep -q "(connection_refused)" "$T/c.err" \
  && [ "$(jq -r .error.code "$T/c.out")" = connection_refused ] \
  || fail "no broker: exit $RC $(cat "$T/c.err" "$T/c.out")"
[ $((SECONDS - t0)) -lt 5 ] || fail "no broker: persrv click waited $((SECONDS - t0)) s"
[ "$(sum_of "${EP[pp]}")" = "$sum" ] || fail "a bad click stored something"
[ "$(nclicks)" -eq 4 ] || fail "the primary holds $(nclicks) clicks of $U after the bad ones"
echo "  bad clicks: not_found, invalid_argument (2), invalid_utf8, conflict: exit 1; bad arguments: exit 2; no broker: exit 1"

stop broker
echo "test_cli_click: all checks passed"
