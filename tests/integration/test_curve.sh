#!/usr/bin/env bash
# CURVE on every internal ZeroMQ socket (DESIGN §6): a cluster where each daemon has a key
# pair of its own (`builder keys`) and admits only the clients on its allow-list.
#   1. An outsider — no CURVE, a stranger's key pair, or the allowed key pair talking to a
#      server whose key it cannot verify — sends every message the wire knows (each Envelope
#      body: searches, clicks, profile loads, WAL and checkpoint requests, checksums ...) to
#      the profile primary, a replica, a shard and the broker's front door: none is answered,
#      and the primary's and the replica's checksums over every key are unchanged.
#   2. The same messages from an allowed client are answered (the probe can tell).
#   3. With the keys, the cluster serves: a search through the broker personalized from the
#      replica, a click through HTTP stored on the primary and replicated.
#   4. Refusals are logged at most once a second per daemon, the secret keys never.
#   5. Configuration errors: a topology endpoint the known-servers file has no key for, a
#      key file whose secret does not match, and an allow-list without a key pair are refused
#      at start (exit 2, naming the file); plain mode logs its warning.
# usage: test_curve.sh BUILDER SHARD SHARD_CLIENT BROKER PROFILE PROFILE_CLIENT CURVE_PROBE PERSRV
set -euo pipefail
B=$1
S=$2
C=$3
BR=$4
PD=$5
PC=$6
PROBE=$7
P=$8
. "$(dirname "$0")/lib.sh"
ps_test_init curve
# this test makes its own keys: none inherited from the suite's defaults
unset PERSRV_CURVE_KEY PERSRV_CURVE_ALLOW PERSRV_CURVE_SERVERS
command -v curl >/dev/null || fail "curl is required (scripts/deps.sh installs it)"
command -v jq >/dev/null || fail "jq is required (scripts/deps.sh installs it)"

$B generate --out "$T/data" --stickers 3000 --dim 16 --users 3 --clicks 600 --pairs 100 \
  --queries 60 --no-progress
BARGS=(--corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy"
  --clicks "$T/data/clicks.tsv")
$B build "${BARGS[@]}" --out "$T/cluster" --shards 1 >"$T/build.out" 2>&1 \
  || fail "build: $(cat "$T/build.out")"

K=$T/keys
$B keys --out "$K" shard0 profile0 profile1 broker builder client >"$T/keys.out" \
  || fail "builder keys failed"
[ "$(wc -l <"$T/keys.out")" -eq 6 ] || fail "builder keys: expected 6 public keys"
[ "$(stat -c %a "$K/shard0.key")" = 600 ] || fail "a secret key file is not mode 0600"
$B keys --out "$K" shard0 >/dev/null 2>&1 && fail "builder keys overwrote an existing key"
pub() { cut -d' ' -f1 "$K/$1.pub"; }
cat "$K/broker.pub" "$K/client.pub" >"$K/shard.allow"
cat "$K/broker.pub" "$K/profile1.pub" "$K/builder.pub" "$K/client.pub" >"$K/primary.allow"
cat "$K/broker.pub" "$K/client.pub" >"$K/replica.allow"
cat "$K/client.pub" >"$K/front.allow"
: >"$K/servers"

# curve_profile NAME KEYNAME ALLOW FLAGS...: a profile daemon with its own keys, its endpoint
# and public key added to the known-servers file
curve_profile() {
  local name=$1 key=$2 allow=$3
  shift 3
  start_profile "$name" --curve-key "$K/$key.key" --curve-allow "$K/$allow" \
    --curve-servers "$K/servers" "$@"
  echo "${EP[$name]} $(pub "$key")" >>"$K/servers"
}
curve_profile pp profile0 primary.allow --db "$T/pp" --role primary
curve_profile r1 profile1 replica.allow --db "$T/r1" --role replica --primary "${EP[pp]}"
PERSRV_CURVE_KEY=$K/builder.key PERSRV_CURVE_SERVERS=$K/servers \
  $B push-profiles "${BARGS[@]}" --primary "${EP[pp]}" >"$T/push.out" 2>&1 \
  || fail "push-profiles over CURVE: $(cat "$T/push.out")"
echo "  $(tail -n 1 "$T/push.out")"

start_shard s0 --workers 1 --index "$T/cluster/shard-000" --shard 0 --shards 1 \
  --curve-key "$K/shard0.key" --curve-allow "$K/shard.allow"
echo "${EP[s0]} $(pub shard0)" >>"$K/servers"
grep -qF "event=curve public_key=$(pub shard0)" "$T/s0.log" || fail "shard did not log CURVE on"
start_broker broker "${EP[s0]}" --profile-replicas "${EP[r1]}" --profile-primary "${EP[pp]}" \
  --profile-staleness-ms 100 --deadline-ms 2000 \
  --curve-key "$K/broker.key" --curve-allow "$K/front.allow" --curve-servers "$K/servers"
echo "$ZEP $(pub broker)" >>"$K/servers"

# the allowed client's view (the tools read PERSRV_CURVE_KEY / PERSRV_CURVE_SERVERS)
export PERSRV_CURVE_KEY=$K/client.key PERSRV_CURVE_SERVERS=$K/servers
wait_seq() { # wait until the replica applied the primary's sequence number
  local want got
  want=$($PC checksum "${EP[pp]}" | cut -d' ' -f3)
  for _ in $(seq 1 600); do
    got=$($PC checksum "${EP[r1]}" | cut -d' ' -f3)
    [ "$got" = "$want" ] && return 0
    sleep 0.05
  done
  fail "replica stuck at seq $got, primary at $want"
}
wait_seq
SUM_PP=$($PC checksum "${EP[pp]}")
SUM_R1=$($PC checksum "${EP[r1]}")
HEALTH_S0=$($C health "${EP[s0]}")

# ---- 1. outsiders --------------------------------------------------------------------------
for d in pp r1 s0 front; do
  ep=${EP[$d]:-$ZEP}
  for mode in plain stranger impostor; do
    out=$($PROBE "$ep" "$mode") || fail "curve_probe $d $mode failed"
    case $out in
      sent=*" answered=0") ;;
      *) fail "$d: an outsider ($mode) got answers: $out" ;;
    esac
  done
  echo "  $d: plain, stranger and impostor clients: $out each (nothing answered)"
done
[ "$($PC checksum "${EP[pp]}")" = "$SUM_PP" ] || fail "the primary's data changed under outsiders"
[ "$($PC checksum "${EP[r1]}")" = "$SUM_R1" ] || fail "the replica's data changed under outsiders"
[ "$($C health "${EP[s0]}")" = "$HEALTH_S0" ] || fail "the shard's state changed under outsiders"
echo "  checksums unchanged: primary '$SUM_PP', replica '$SUM_R1'"

# ---- 2. the allowed client is answered -------------------------------------------------------
for d in s0 front r1; do # (not the primary: its answers would store the probe's messages)
  ep=${EP[$d]:-$ZEP}
  out=$($PROBE "$ep" allowed) || fail "curve_probe $d allowed failed"
  sent=${out#sent=}
  sent=${sent%% *}
  [ "$out" = "sent=$sent answered=$sent" ] || fail "$d: the allowed client was not answered: $out"
done
echo "  allowed client: every message answered ($out)"

# ---- 3. the cluster serves with the keys -----------------------------------------------------
# (awk reading the file: `cut | head` can fail on SIGPIPE under pipefail)
USER_ID=$(awk -F'\t' 'NR == 1 {print $1; exit}' "$T/data/clicks.tsv")
Q=$(awk -F'\t' 'NR == 1 {print $2; exit}' "$T/data/clicks.tsv")
code=$(curl -s -o "$T/search.json" -w '%{http_code}' -G "$URL/v1/search" \
  --data-urlencode "q=$Q" --data-urlencode "user=$USER_ID" --data-urlencode k=5)
[ "$code" = 200 ] || fail "search over CURVE: HTTP $code $(cat "$T/search.json")"
grep -q '"personalized":true' "$T/search.json" || fail "search over CURVE not personalized"
"$P" search --broker "$ZEP" --k 3 -- "$Q" >"$T/cli.out" 2>&1 \
  || fail "persrv CLI over CURVE: $(cat "$T/cli.out")"
ID=$(jq -r '.hits[0].id' "$T/search.json")
code=$(curl -s -o "$T/click.json" -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
  --data "{\"user\": \"curve-user\", \"sticker_id\": \"$ID\", \"query\": \"$Q\"}" "$URL/v1/click")
[ "$code" = 200 ] || fail "click over CURVE: HTTP $code $(cat "$T/click.json")"
[ "$($PC clicks "${EP[pp]}" curve-user)" = "$ID" ] || fail "the click is not on the primary"
wait_seq
[ "$($PC clicks "${EP[r1]}" curve-user)" = "$ID" ] || fail "the click did not replicate"
echo "  with the keys: personalized search, CLI search, click stored and replicated"

# ---- 4. logs ---------------------------------------------------------------------------------
for d in pp r1 s0 broker; do
  grep -q "event=peer_refused" "$T/$d.log" || fail "$d did not log a refused peer"
  n=$(grep -c "event=peer_refused" "$T/$d.log")
  secs=$(grep "event=peer_refused" "$T/$d.log" | sed 's/^ts=\([^ .]*\).*/\1/' | sort -u | wc -l)
  [ "$n" -eq "$secs" ] || fail "$d logged $n refusals in $secs distinct seconds"
  for k in shard0 profile0 profile1 broker client; do
    sec=$(sed -n 's/^secret = //p' "$K/$k.key")
    if grep -qF -- "$sec" "$T/$d.log"; then fail "$d logged the secret key of $k"; fi
  done
done
echo "  refusals logged at most once a second; no secret key in any log"

# ---- 5. configuration errors ----------------------------------------------------------------
unset PERSRV_CURVE_KEY PERSRV_CURVE_SERVERS
expect_refused() { # WHAT PATTERN DAEMON ARGS...
  local what=$1 pat=$2 rc=0
  shift 2
  "$@" >"$T/cfg.out" 2>&1 || rc=$?
  [ $rc -eq 2 ] || fail "$what: exit $rc, want 2: $(cat "$T/cfg.out")"
  grep -q -- "$pat" "$T/cfg.out" || fail "$what: message does not say '$pat': $(cat "$T/cfg.out")"
}
expect_refused "unknown shard key" "no server key" "$BR" --shards tcp://127.0.0.1:1 \
  --http 127.0.0.1:0 --curve-key "$K/broker.key" --curve-servers "$K/servers"
sed 's/^secret = .*/secret = '"$(sed -n 's/^secret = //p' "$K/client.key" | sed 's/[&/\]/\\&/g')"'/' \
  "$K/shard0.key" >"$K/bad.key"
expect_refused "mismatched key pair" "does not match" "$S" --index "$T/cluster/shard-000" \
  --listen tcp://127.0.0.1:1 --curve-key "$K/bad.key" --curve-allow "$K/shard.allow"
expect_refused "allow-list without a key" "curve-key is not" "$S" --index "$T/cluster/shard-000" \
  --listen tcp://127.0.0.1:1 --curve-allow "$K/shard.allow"
echo "x y" >"$K/bad.allow"
expect_refused "malformed allow-list" "bad.allow:1" "$S" --index "$T/cluster/shard-000" \
  --listen tcp://127.0.0.1:1 --curve-key "$K/shard0.key" --curve-allow "$K/bad.allow"
rc=0
"$S" --index "$T/nonexistent" --listen tcp://0.0.0.0:1 >"$T/cfg.out" 2>&1 || rc=$?
grep -q "event=plain_zmq .*development only.*not loopback" "$T/cfg.out" \
  || fail "plain mode on a non-loopback address did not warn: $(cat "$T/cfg.out")"
echo "  bad key files, allow-lists and topologies refused at start; plain mode warns"

stop broker
stop s0
for d in r1 pp; do
  kill -TERM "${PID[$d]}"
  wait "${PID[$d]}" || fail "$d exited non-zero"
  unset "PID[$d]"
done
echo "PASS"
