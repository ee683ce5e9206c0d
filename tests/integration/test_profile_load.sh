#!/usr/bin/env bash
# Offline profile loads merge, never wipe (issue 9), and the profile service's admin port.
# A generated corpus built with --shards 2 (its profiles directory holds the builder's offline
# profiles); a primary and a replica, both with an admin port and a token file.
#   1. Ready files name the endpoint (line 1) and the admin address (line 2).
#   2. push-profiles over ZeroMQ: every user's centroids equal the builder's, bit for bit. A
#      second load over ZeroMQ and a third over the admin port (--admin, in batches) leave the
#      primary's checksum unchanged.
#   3. Clicks for a loaded user and a new one; loading again (ZeroMQ, then admin) keeps the
#      click logs, the click-made centroids and the whole store (checksum equal), and users
#      without online clicks still have exactly the offline centroids.
#   4. A load bringing stickers the user does not hold yet: the history grows by them, online
#      clicks stay (log and newest history), the centroids are recomputed; the same load again
#      changes nothing; a fresh load's centroids are stored as given.
#   5. Admin calls without a token (401) or with a wrong one (403), bad load bodies (a bad
#      frame after a good one, a truncated frame, a wrong dimension, a click envelope, a load
#      on the replica), push-profiles --admin with a wrong token, to the replica or without a
#      token, and checkpoint paths escaping checkpoint-root get errors and change nothing
#      (checksum equal; a bad frame's good neighbours are not applied either).
#   6. /healthz and /metrics of both nodes (clicks, loads, checkpoints, lag, histogram);
#      /admin/checkpoint writes a checkpoint a daemon opens with the primary's checksum; the
#      replica converges to the primary.
#   7. deploy/load-profiles.sh (the docker-compose profile-loader) run twice against a fresh
#      primary with clicks in between: the clicks are kept; deploy/secrets-init.sh makes a
#      64-hex-digit token once and keeps it.
#   8. docker-compose.yml and deploy/*.conf: no token committed, every daemon reads the
#      generated one and has an admin port; `docker-compose config -q` when installed.
# usage: test_profile_load.sh BUILDER PROFILE PROFILE_CLIENT
set -euo pipefail
B=$1
PD=$2
PC=$3
DIM=32
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$(dirname "$0")/lib.sh"
ps_test_init profile_load
command -v curl >/dev/null || fail "curl is required (scripts/deps.sh installs it)"
command -v jq >/dev/null || fail "jq is required (scripts/deps.sh installs it)"
START=$SECONDS

$B generate --out "$T/d/data" --stickers 5000 --dim $DIM --users 4 --clicks 1200 --pairs 300 \
  --queries 200 --no-progress >"$T/gen.out" 2>&1 || fail "generate: $(cat "$T/gen.out")"
BARGS=(--corpus "$T/d/data/corpus.jsonl" --embeddings "$T/d/data/embeddings.npy"
  --clicks "$T/d/data/clicks.tsv")
$B build "${BARGS[@]}" --out "$T/cluster" --shards 2 >"$T/build.out" 2>&1 \
  || fail "build: $(cat "$T/build.out")"
OFF="$T/cluster/profiles"
USERS=(u01 u02 u03 u04)
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$T/token"
TOKEN=$(cat "$T/token")

# start_profile NAME FLAGS...: a profile daemon, ZeroMQ and admin ports picked at start; sets
# PID, EP and ADM[NAME] (http://host:port).
declare -A ADM
start_profile() {
  local name=$1
  shift
  rm -f "$T/$name.ready"
  "$PD" --listen 'tcp://127.0.0.1:*' --ready-file "$T/$name.ready" --pid-file "$T/$name.pid" \
    --admin-token-file "$T/token" "$@" 2>>"$T/$name.log" &
  PID[$name]=$!
  for _ in $(seq 1 600); do
    [ -e "$T/$name.ready" ] && break
    kill -0 "${PID[$name]}" 2>/dev/null || fail "$name exited before it was ready"
    sleep 0.05
  done
  [ -e "$T/$name.ready" ] || fail "$name not ready after 30 s"
  [ "$(wc -l <"$T/$name.ready")" -eq 2 ] || fail "$name: ready file is not 2 lines: $(cat "$T/$name.ready")"
  EP[$name]=$(sed -n 1p "$T/$name.ready")
  ADM[$name]="http://$(sed -n 2p "$T/$name.ready")"
  [[ ${EP[$name]} == tcp://127.0.0.1:* ]] || fail "$name: ready line 1 '${EP[$name]}'"
  [[ ${ADM[$name]} =~ ^http://127\.0\.0\.1:[0-9]+$ ]] || fail "$name: ready line 2 '${ADM[$name]}'"
}
sum_of() { "$PC" checksum "${EP[$1]}" | awk '{print $1, $2}'; } # checksum and keys, not seq
seq_of() { "$PC" checksum "${EP[$1]}" | awk '{print $3}'; }
cent() { "$PC" centroids "${EP[$1]}" "$2"; }
clicks_of() { "$PC" clicks "${EP[$1]}" "$2" | tr '\n' ' '; }
# offline_equal NAME USER...: each user's centroids on NAME == the builder's, bit for bit.
offline_equal() {
  local n=$1 u
  shift
  for u in "$@"; do
    [ "$(cent "$n" "$u")" = "$("$PC" offline "$OFF" "$u")" ] \
      || fail "$u on $n: centroids $(cent "$n" "$u"), offline $("$PC" offline "$OFF" "$u")"
  done
}
push_zmq() {
  $B push-profiles "${BARGS[@]}" --primary "${EP[$1]}" >"$T/push.out" 2>&1 \
    || fail "push-profiles --primary: $(cat "$T/push.out")"
  grep -q "pushed 4 user profiles" "$T/push.out" || fail "push-profiles: $(cat "$T/push.out")"
}
push_admin() {
  PERSRV_ADMIN_TOKEN=$TOKEN $B push-profiles "${BARGS[@]}" --admin "${ADM[$1]}" --batch 3 \
    >"$T/push.out" 2>&1 || fail "push-profiles --admin: $(cat "$T/push.out")"
  grep -q "pushed 4 user profiles" "$T/push.out" || fail "push-profiles: $(cat "$T/push.out")"
  ! grep -q "$TOKEN" "$T/push.out" || fail "push-profiles printed the token"
}
# http METHOD URL [CURL ARGS...]: body to $T/body, prints the status.
http() {
  local m=$1 u=$2
  shift 2
  curl -s -o "$T/body" -w '%{http_code}' -X "$m" "$@" "$u" || echo curl_failed
}
AUTH=(-H "Authorization: Bearer $TOKEN")

# ---- 1. ready files ------------------------------------------------------------------------
start_profile pp --db "$T/pp" --role primary --checkpoint-root "$T/ckroot"
start_profile r1 --db "$T/r1" --role replica --primary "${EP[pp]}" --poll-ms 2
[ -d "$T/ckroot" ] || fail "the primary did not create its checkpoint-root"
echo "  primary ${EP[pp]} admin ${ADM[pp]}; replica ${EP[r1]} admin ${ADM[r1]}"

# ---- 2. load, load again, load over the admin port -------------------------------------------
push_zmq pp
offline_equal pp "${USERS[@]}"
S1=$(sum_of pp)
echo "  push-profiles (ZeroMQ): 4 users == the builder's offline centroids; checksum $S1"
push_zmq pp
[ "$(sum_of pp)" = "$S1" ] || fail "a second identical load changed the store: $(sum_of pp) != $S1"
push_admin pp
[ "$(sum_of pp)" = "$S1" ] || fail "the same load over the admin port changed the store: $(sum_of pp) != $S1"
offline_equal pp "${USERS[@]}"
echo "  loaded again over ZeroMQ and over the admin port ($(tail -n 1 "$T/push.out" | sed 's/.* in /in /')): checksum unchanged"

# ---- 3. clicks survive loads -------------------------------------------------------------------
C_BEFORE=$(cent pp u01)
for s in 4000001 4000002 4000003 4000001; do "$PC" click "${EP[pp]}" u01 $s $DIM "q$s" >/dev/null; done
for s in 4000010 4000011; do "$PC" click "${EP[pp]}" newbie $s $DIM q >/dev/null; done
NCLICKS=6
C_CLICKED=$(cent pp u01)
[ "$C_CLICKED" != "$C_BEFORE" ] || fail "4 clicks did not change u01's centroids (the test shows nothing)"
L_U01=$(clicks_of pp u01)
L_NEW=$(clicks_of pp newbie)
C_NEW=$(cent pp newbie)
[ "$L_U01" = "4000001 4000002 4000003 4000001 " ] || fail "u01's click log: '$L_U01'"
S2=$(sum_of pp)
for way in zmq admin; do
  "push_$way" pp
  [ "$(clicks_of pp u01)" = "$L_U01" ] || fail "$way load: u01's click log '$(clicks_of pp u01)', was '$L_U01'"
  [ "$(clicks_of pp newbie)" = "$L_NEW" ] || fail "$way load: newbie's click log changed"
  [ "$(cent pp u01)" = "$C_CLICKED" ] || fail "$way load: u01's click-made centroids $C_CLICKED became $(cent pp u01)"
  [ "$(cent pp newbie)" = "$C_NEW" ] || fail "$way load: newbie's centroids changed"
  offline_equal pp u02 u03 u04
  [ "$(sum_of pp)" = "$S2" ] || fail "$way load after clicks changed the store: $(sum_of pp) != $S2"
done
echo "  after 6 clicks, loads over ZeroMQ and admin kept the click logs and click-made centroids (checksum $S2 unchanged); u02..u04 == offline"

# ---- 4. a load with stickers the user does not hold ---------------------------------------------
"$PC" loadframe mix $DIM 5 7000 >"$T/mix5.bin"
st=$(http POST "${ADM[pp]}/admin/load-profiles" "${AUTH[@]}" --data-binary "@$T/mix5.bin")
[ "$st" = 200 ] && [ "$(jq -c . "$T/body")" = "{\"users\":1,\"seq\":$(seq_of pp)}" ] \
  || fail "load-profiles mix: $st $(cat "$T/body")"
[[ $(cent pp mix) == k=1\ * ]] || fail "a fresh load's centroids are not as given: $(cent pp mix)"
"$PC" click "${EP[pp]}" mix 7100 $DIM q >/dev/null
"$PC" loadframe mix $DIM 8 7000 >"$T/mix8.bin"
st=$(http POST "${ADM[pp]}/admin/load-profiles" "${AUTH[@]}" --data-binary "@$T/mix8.bin")
[ "$st" = 200 ] || fail "load-profiles mix (8): $st $(cat "$T/body")"
[ "$(clicks_of pp mix)" = "7100 " ] || fail "mix: click log '$(clicks_of pp mix)'"
[[ $(cent pp mix) != k=1\ * ]] || fail "mix: centroids not recomputed over the merged history: $(cent pp mix)"
S3=$(sum_of pp)
C_MIX=$(cent pp mix)
st=$(http POST "${ADM[pp]}/admin/load-profiles" "${AUTH[@]}" --data-binary "@$T/mix8.bin")
[ "$st" = 200 ] && [ "$(sum_of pp)" = "$S3" ] || fail "the same load again changed the store ($st)"
# 8 loaded + 1 online click in the history; the next click makes 10, and the online click
# is still there (a wipe would leave 9 at most).
h=$("$PC" click "${EP[pp]}" mix 7101 $DIM q | sed 's/.*history=\([0-9]*\).*/\1/')
[ "$h" = 10 ] || fail "mix: history $h after 8 loaded + 2 clicks, want 10"
NCLICKS=$((NCLICKS + 2))
echo "  a load bringing 3 new stickers: history 5+1 -> 9 (then 10), click log kept, centroids $C_MIX recomputed; the same load again: no change"

# ---- 5. refused admin calls change nothing ---------------------------------------------------
S4=$(sum_of pp)
"$PC" loadframe ghost $DIM 3 9000 >"$T/ghost.bin"
expect() { # STATUS CODE WHAT METHOD URL CURL_ARGS...
  local want=$1 code=$2 what=$3 st
  shift 3
  st=$(http "$@")
  [ "$st" = "$want" ] || fail "$what: status $st, want $want: $(head -c 300 "$T/body")"
  [ "$(jq -r .error.code "$T/body")" = "$code" ] || fail "$what: $(head -c 300 "$T/body")"
  echo "  $what -> $st $code: $(jq -r .error.message "$T/body")"
}
L=${ADM[pp]}/admin/load-profiles
expect 401 unauthorized "load without a token" POST "$L" --data-binary "@$T/ghost.bin"
expect 403 forbidden "load with a wrong token" POST "$L" -H "Authorization: Bearer x$TOKEN" --data-binary "@$T/ghost.bin"
expect 401 unauthorized "checkpoint without a token" POST "${ADM[pp]}/admin/checkpoint?dir=nope"
expect 403 forbidden "checkpoint with a wrong token" POST "${ADM[pp]}/admin/checkpoint?dir=nope" -H "Authorization: Bearer wrong"
{ cat "$T/ghost.bin"; printf '\x05\x00\x00\x00hello'; } >"$T/bad1.bin"
expect 400 parse_error "a good frame then a garbage one" POST "$L" "${AUTH[@]}" --data-binary "@$T/bad1.bin"
grep -q "frame 1" "$T/body" || fail "the error does not name frame 1: $(cat "$T/body")"
{ cat "$T/ghost.bin"; head -c 30 "$T/ghost.bin"; } >"$T/bad2.bin"
expect 400 parse_error "a truncated second frame" POST "$L" "${AUTH[@]}" --data-binary "@$T/bad2.bin"
"$PC" loadframe ghost2 16 3 9000 >"$T/dim16.bin"
cat "$T/ghost.bin" "$T/dim16.bin" >"$T/bad3.bin"
expect 400 invalid_argument "a frame of another dimension" POST "$L" "${AUTH[@]}" --data-binary "@$T/bad3.bin"
grep -q "frame 1" "$T/body" || fail "the error does not name frame 1: $(cat "$T/body")"
expect 400 invalid_argument "an empty body" POST "$L" "${AUTH[@]}" --data-binary ''
expect 405 method_not_allowed "GET load-profiles" GET "$L" "${AUTH[@]}"
expect 400 invalid_argument "a load on the replica" POST "${ADM[r1]}/admin/load-profiles" "${AUTH[@]}" --data-binary "@$T/ghost.bin"
expect 400 invalid_argument "checkpoint dir=../escape" POST "${ADM[pp]}/admin/checkpoint?dir=../escape" "${AUTH[@]}"
expect 400 invalid_argument "checkpoint dir=$T" POST "${ADM[pp]}/admin/checkpoint?dir=$T/abs" "${AUTH[@]}"
ln -s "$T" "$T/ckroot/link"
expect 400 invalid_argument "checkpoint through a symlink out" POST "${ADM[pp]}/admin/checkpoint?dir=link/x" "${AUTH[@]}"
expect 400 invalid_argument "checkpoint without dir" POST "${ADM[pp]}/admin/checkpoint" "${AUTH[@]}"
rc=0
PERSRV_ADMIN_TOKEN=wrong$TOKEN $B push-profiles "${BARGS[@]}" --admin "${ADM[pp]}" >"$T/push.out" 2>&1 || rc=$?
[ $rc = 1 ] && grep -q "HTTP 403" "$T/push.out" && ! grep -q "$TOKEN" "$T/push.out" \
  || fail "push-profiles with a wrong token: status $rc: $(cat "$T/push.out")"
echo "  push-profiles --admin with a wrong token -> exit 1: $(tail -n 1 "$T/push.out")"
rc=0
PERSRV_ADMIN_TOKEN=$TOKEN $B push-profiles "${BARGS[@]}" --admin "${ADM[r1]}" >"$T/push.out" 2>&1 || rc=$?
[ $rc = 1 ] && grep -q "not a profile primary" "$T/push.out" \
  || fail "push-profiles to the replica: status $rc: $(cat "$T/push.out")"
rc=0
$B push-profiles "${BARGS[@]}" --admin "${ADM[pp]}" >"$T/push.out" 2>&1 || rc=$?
[ $rc = 2 ] || fail "push-profiles --admin without a token: status $rc: $(cat "$T/push.out")"
[ "$(cent pp ghost)" = "k=0 hash=cbf29ce484222325" ] || fail "a refused request stored ghost: $(cent pp ghost)"
[ "$(sum_of pp)" = "$S4" ] || fail "refused admin calls changed the store: $(sum_of pp) != $S4"
[ ! -e "$T/escape" ] && [ ! -e "$T/abs" ] && [ ! -e "$T/x" ] || fail "a refused checkpoint wrote outside checkpoint-root"
echo "  refused admin calls stored nothing (checksum $S4 unchanged)"

# ---- 6. health, metrics, checkpoint, replication ----------------------------------------------
st=$(http GET "${ADM[pp]}/healthz")
[ "$st" = 200 ] && [ "$(jq -r '.role, .ready, .seq' "$T/body" | tr '\n' ' ')" = "primary true $(seq_of pp) " ] \
  || fail "primary /healthz: $st $(cat "$T/body")"
st=$(http POST "${ADM[pp]}/admin/checkpoint?dir=ck1" "${AUTH[@]}")
[ "$st" = 200 ] && [ "$(jq -r .dir "$T/body")" = "$(cd "$T/ckroot" && pwd -P)/ck1" ] \
  || fail "checkpoint: $st $(cat "$T/body")"
expect 409 already_exists "the same checkpoint dir again" POST "${ADM[pp]}/admin/checkpoint?dir=ck1" "${AUTH[@]}"
S5=$("$PC" checksum "${EP[pp]}" | awk '{print $1, $2}')
start_profile ck --db "$T/ckroot/ck1" --role primary
[ "$(sum_of ck)" = "$S5" ] || fail "the checkpoint's checksum $(sum_of ck) != the primary's $S5"
stop ck
echo "  /admin/checkpoint?dir=ck1: a daemon opened on it has the primary's checksum"
curl -s "${ADM[pp]}/metrics" >"$T/metrics.pp"
m() { awk -v n="$1" '$1 == n {print $2}' "$T/metrics.$2"; }
[ "$(m persrv_profile_clicks_total pp)" = $NCLICKS ] || fail "clicks_total $(m persrv_profile_clicks_total pp), want $NCLICKS"
[ "$(m persrv_profile_click_duration_seconds_count pp)" = $NCLICKS ] || fail "click histogram count"
[ "$(m persrv_profile_loads_total pp)" -ge 20 ] || fail "loads_total $(m persrv_profile_loads_total pp)"
[ "$(m persrv_profile_checkpoints_total pp)" -ge 1 ] || fail "checkpoints_total $(m persrv_profile_checkpoints_total pp)"
for n in persrv_profile_replication_lag_seq persrv_profile_replication_lag_seconds \
  'persrv_profile_click_duration_seconds_bucket{le="+Inf"}'; do
  [ -n "$(m "$n" pp)" ] || fail "primary /metrics lacks $n"
done
want=$("$PC" checksum "${EP[pp]}")
for _ in $(seq 1 600); do
  [ "$("$PC" checksum "${EP[r1]}")" = "$want" ] && break
  sleep 0.05
done
[ "$("$PC" checksum "${EP[r1]}")" = "$want" ] || fail "replica: $("$PC" checksum "${EP[r1]}"), primary $want"
st=$(http GET "${ADM[r1]}/healthz")
[ "$st" = 200 ] && [ "$(jq -r '.role, .ready, .lag_seq' "$T/body" | tr '\n' ' ')" = "replica true 0 " ] \
  || fail "replica /healthz: $st $(cat "$T/body")"
curl -s "${ADM[r1]}/metrics" >"$T/metrics.r1"
[ "$(m persrv_profile_replication_lag_seq r1)" = 0 ] || fail "replica lag $(m persrv_profile_replication_lag_seq r1)"
[ "$(m persrv_profile_clicks_total r1)" = 0 ] || fail "replica counted clicks"
grep -q '^persrv_profile_info{role="replica"} 1$' "$T/metrics.r1" || fail "replica /metrics: no role"
echo "  /healthz and /metrics: clicks $NCLICKS, loads $(m persrv_profile_loads_total pp), checkpoints $(m persrv_profile_checkpoints_total pp); replica converged, lag 0"

# ---- 7. the docker-compose loader script, twice, with clicks in between -----------------------
start_profile p2 --db "$T/p2" --role primary
loader() {
  PATH="$(dirname "$B"):$PATH" PERSRV_DATA_DIR="$T/d" PERSRV_PROFILE_ADMIN="${ADM[p2]}" \
    PERSRV_ADMIN_TOKEN_FILE="$T/token" PERSRV_LOADER_WAIT_S=10 \
    bash "$ROOT/deploy/load-profiles.sh" >"$T/loader.out" 2>&1 || fail "load-profiles.sh: $(cat "$T/loader.out")"
  ! grep -q "$TOKEN" "$T/loader.out" || fail "load-profiles.sh printed the token"
}
loader
offline_equal p2 "${USERS[@]}"
for s in 5000001 5000002; do "$PC" click "${EP[p2]}" u02 $s $DIM q >/dev/null; done
L2=$(clicks_of p2 u02)
C2=$(cent p2 u02)
S6=$(sum_of p2)
loader
[ "$(clicks_of p2 u02)" = "$L2" ] && [ "$L2" = "5000001 5000002 " ] || fail "the loader run again lost u02's clicks"
[ "$(cent p2 u02)" = "$C2" ] || fail "the loader run again changed u02's click-made centroids"
[ "$(sum_of p2)" = "$S6" ] || fail "the loader run again changed the store"
offline_equal p2 u01 u03 u04
echo "  deploy/load-profiles.sh run twice with 2 clicks in between: clicks and their centroids kept"
BPATH="$(cd "$(dirname "$B")" && pwd):$PATH" # secrets-init runs `builder keys`
PATH=$BPATH sh "$ROOT/deploy/secrets-init.sh" "$T/secrets" >/dev/null || fail "secrets-init.sh failed"
tok1=$(cat "$T/secrets/admin-token")
pub1=$(cat "$T/secrets/curve/broker.pub")
PATH=$BPATH sh "$ROOT/deploy/secrets-init.sh" "$T/secrets" >/dev/null \
  || fail "secrets-init.sh (again) failed"
[ "$(cat "$T/secrets/curve/broker.pub")" = "$pub1" ] || fail "secrets-init.sh: new CURVE keys"
# every CURVE file a compose config names is made, and every key is a pair that loads
for f in $(sed -n 's|^curve-[a-z]* = /run/secrets/persrv/||p' "$ROOT"/deploy/*.conf | sort -u); do
  [ -s "$T/secrets/$f" ] || fail "secrets-init.sh did not make $f (named in deploy/*.conf)"
done
[ "$(stat -c %a "$T/secrets/curve/shard0a.key")" = 400 ] || fail "secrets-init.sh: key file mode"
[[ $tok1 =~ ^[0-9a-f]{64}$ ]] && [ "$(cat "$T/secrets/admin-token")" = "$tok1" ] \
  || fail "secrets-init.sh: token '$tok1' then '$(cat "$T/secrets/admin-token")'"
[ "$(stat -c %a "$T/secrets/admin-token")" = 400 ] || fail "secrets-init.sh: token file mode"
echo "  deploy/secrets-init.sh: a 64-hex-digit token and the CURVE keys every deploy/*.conf names," \
  "kept on the second run, mode 0400"

# ---- 8. the compose files ---------------------------------------------------------------------
! grep -En '^ *admin-token *=' "$ROOT"/deploy/*.conf || fail "a token is committed in deploy/"
! grep -En 'PERSRV_ADMIN_TOKEN *:|--admin-token"' "$ROOT/docker-compose.yml" \
  || fail "a token is committed in docker-compose.yml"
for f in "$ROOT"/deploy/shard*.conf "$ROOT"/deploy/profile*.conf "$ROOT/deploy/broker.conf"; do
  grep -qx 'admin-token-file = /run/secrets/persrv/admin-token' "$f" || fail "$f: no admin-token-file"
  grep -Eq '^admin = 0\.0\.0\.0:[0-9]+$' "$f" || fail "$f: no admin port"
done
[ "$(grep -c 'persrv-secrets:/run/secrets/persrv:ro' "$ROOT/docker-compose.yml")" -ge 9 ] \
  || fail "docker-compose.yml: not every daemon mounts the token read-only"
grep -q 'command: \["persrv-load-profiles"\]' "$ROOT/docker-compose.yml" \
  || fail "docker-compose.yml: profile-loader does not run deploy/load-profiles.sh"
if command -v docker-compose >/dev/null; then
  (cd "$ROOT" && docker-compose -f docker-compose.yml config -q) >"$T/compose.out" 2>&1 \
    || fail "docker-compose.yml is invalid: $(cat "$T/compose.out")"
  echo "  docker-compose.yml: config -q passes; no token committed, every daemon reads the generated one"
fi

for n in p2 r1 pp; do stop "$n"; done
echo "test_profile_load: all checks passed in $((SECONDS - START)) s"
