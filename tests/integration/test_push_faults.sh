#!/usr/bin/env bash
# Issue 9, must-shows 2 and 3: faults during a push leave the cluster on one consistent
# version with the failure named; shards refuse the wrong slice, shard count or build; admin
# calls without or with a wrong token change nothing.
#
# Versions 1 and 2 of a 20,000-sticker corpus as in test_push.sh; 2 shards × 2 replicas (data
# dirs, admin ports, a token) and a broker, with push_load's light background load (one HTTP
# connection and one libpersrv thread, 20 ms between requests) running the whole time. stall_proxy, put in the topology in front of one admin port, holds one chosen
# request so a replica is killed at an exact step, never by racing the push:
#   1. a push with a wrong token: exits non-zero naming the refusal (403); every /healthz as
#      before;
#   2. a corrupt upload (a byte of shard-001's largest file flipped after the build wrote its
#      manifest) and 3. a truncated one (shard-000's embeddings.f32 cut short): the push exits non-zero naming the
#      file; version 2 is held nowhere; the same two uploads made by hand (curl) to one replica:
#      prepare answers 500 corrupt naming the file and the staging is gone;
#   4. kill -9 of replica s0b while staging (its 2nd file chunk held): the push fails naming
#      s0b; restarted, s0b serves version 1 (its pointer); version 2 is held nowhere;
#   5. kill -9 of s0b between prepare and activate (its activate held): the push fails; the
#      replicas already moved go back to version 1; restarted, s0b serves 1;
#   6. kill -9 of s0b right after activate (the broker's switch held, every pointer names 2):
#      the push fails, the broker stays on 1; restarted, s0b serves 2 (its pointer); the
#      operator's `builder activate --version 2` then moves the whole cluster to 2;
#   7. a push of version 1 onto that cluster succeeds (a roll back by push).
# After each: every replica's /healthz "active" and the broker's "version" agree, and sample
# searches are complete answers of that version. At the end every answer of the background load
# is a success, complete, and equal to the single node of the version it names.
#   8. must-show 3: admin calls without a token get 401, with a wrong one 403, on every admin
#      route of a shard and the broker, and every /healthz is unchanged; a shard started on
#      the wrong slice, with the wrong shard count, or on another build than its data dir
#      names refuses to start (non-zero exit, the log names the mismatch).
# usage: test_push_faults.sh BUILDER SHARD SHARD_CLIENT BROKER PUSH_LOAD VERIFY_ANSWERS STALL_PROXY
set -euo pipefail
B=$1
S=$2
C=$3
BR=$4
PL=$5
VA=$6
SP=$7
WAIT=600 # seconds any one condition may take (a loaded 2-core machine)
# The broker's switch asks every replica with 10 × its deadline; a dead replica makes it wait
# that long. builder push and activate get a per-request timeout far beyond it, so a slow answer
# is never taken for a lost one (which the push would retry).
BROKER_DEADLINE_MS=2000
PT=(--timeout-ms 600000)
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/push_lib.sh"
ps_test_init push_faults
for tool in curl jq; do command -v $tool >/dev/null || fail "$tool is required (scripts/deps.sh)"; done
START=$SECONDS

TOKEN_FILE=$T/token
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TOKEN_FILE"
TOKEN=$(cat "$TOKEN_FILE")
make_versions 20000
make_requests "$T/requests"
start_cluster
expect_consistent 1
echo "cluster up: 2 shards x 2 replicas at version 1, broker $URL $ZEP (admin $BADM)"

A=$T/answers.jsonl
"$PL" --requests "$T/requests" --http "${URL#http://}" --zmq "$ZEP" --out "$A" --http-conns 1 \
  --zmq-threads 1 --count 100000000 --stop-file "$T/stop" --timeout-ms 60000 --pause-ms 20 \
  >"$T/load.out" 2>"$T/load.err" &
PID[push_load]=$!

# all_healthz: every replica's and the broker's /healthz, one line each.
all_healthz() {
  local r
  for r in "${REPLICAS[@]}"; do echo "$r $(healthz "${ADM[$r]}")"; done
  echo "broker $(healthz "$BADM")"
}
# held_nowhere V [staging]: no replica holds version V (nor stages it, with "staging").
held_nowhere() {
  local r body
  for r in "${REPLICAS[@]}"; do
    body=$(healthz "${ADM[$r]}")
    jq -e --argjson v "$1" --arg st "${2:-}" '([.versions[].version] | index($v)) == null and
      ($st == "" or ((.staging // []) | index($v)) == null)' <<<"$body" >/dev/null \
      || fail "$r still holds${2:+ or stages} version $1: $body"
  done
}
# push_fails NAME ARGS…: builder push ARGS must exit non-zero; its log is $T/NAME.log.
push_fails() {
  local name=$1 rc=0
  shift
  "$B" push "${PT[@]}" "$@" >"$T/$name.out" 2>"$T/$name.log" || rc=$?
  [ $rc -ne 0 ] || fail "$name: builder push succeeded: $(cat "$T/$name.out")"
  echo "  $name: builder push exit $rc: $(grep -v '^\s*$' "$T/$name.log" | tail -n 1)"
}
# proxy_topo NAME TARGET_HOSTPORT STALL [NTH]: a stall_proxy NAME in front of TARGET; writes
# $T/NAME.topo.json (the topology with TARGET replaced by the proxy); sets PX (its address).
proxy_topo() {
  local name=$1 target=$2 stall=$3 nth=${4:-1}
  rm -f "$T/$name.ready" "$T/$name.stalled" "$T/$name.release"
  "$SP" --to "$target" --ready-file "$T/$name.ready" --stall "$stall" --nth "$nth" \
    --stalled-file "$T/$name.stalled" --release-file "$T/$name.release" 2>>"$T/$name.log" &
  PID[$name]=$!
  wait_until 60 "$name to listen" test -s "$T/$name.ready"
  PX=$(cat "$T/$name.ready")
  sed "s|http://$target\"|http://$PX\"|" "$T/topo.json" >"$T/$name.topo.json"
  grep -q "$PX" "$T/$name.topo.json" || fail "$name: $target is not in the topology"
}
# kill_at NAME VICTIM: run the push through proxy NAME's topology in the background, wait until
# the proxy holds its request, kill -9 VICTIM, release; the push must fail naming PX_NAMED.
kill_at() {
  local name=$1 victim=$2 ppid rc=0
  "$B" push "${PT[@]}" --build "$T/v2" --topology "$T/$name.topo.json" \
    --token-file "$TOKEN_FILE" --chunk-bytes 262144 >"$T/$name.out" 2>"$T/$name.push.log" &
  ppid=$!
  for ((i = 0; i < WAIT * 5; i++)); do
    [ -e "$T/$name.stalled" ] && break
    kill -0 $ppid 2>/dev/null || fail "$name: the push ended before the proxy held its request: $(tail -n 3 "$T/$name.push.log")"
    sleep 0.2
  done
  [ -e "$T/$name.stalled" ] || fail "$name: the proxy held nothing in $WAIT s"
  echo "  $name: holding '$(cat "$T/$name.stalled")'; kill -9 $victim"
  kill -9 "${PID[$victim]}"
  wait "${PID[$victim]}" 2>/dev/null || true
  unset "PID[$victim]"
  touch "$T/$name.release"
  wait $ppid || rc=$?
  [ $rc -ne 0 ] || fail "$name: builder push succeeded with $victim killed"
  echo "  $name: builder push exit $rc: $(grep -v '^\s*$' "$T/$name.push.log" | tail -n 1)"
  kill "${PID[$name]}"
  wait "${PID[$name]}" 2>/dev/null || true
  unset "PID[$name]"
}

# ---- 1. a wrong token --------------------------------------------------------------------------
before=$(all_healthz)
echo wrong-token-0123456789 >"$T/wrong_token"
push_fails wrong_token --build "$T/v2" --topology "$T/topo.json" --token-file "$T/wrong_token"
grep -Eqi 'forbidden|403' "$T/wrong_token.log" || fail "the wrong-token push does not name the refusal"
[ "$(all_healthz)" = "$before" ] || fail "a push with a wrong token changed the cluster:
$before
---
$(all_healthz)"
expect_consistent 1
echo "1. wrong token: push refused, nothing changed"

# ---- 2, 3. corrupt and truncated uploads ---------------------------------------------------------
cp -r "$T/v2" "$T/v2corrupt"
cp -r "$T/v2" "$T/v2trunc"
biggest() { jq -r '.files | max_by(.bytes) | .name' "$1/snapshot.json"; }
CF=$(biggest "$T/v2corrupt/shard-001")
cf="$T/v2corrupt/shard-001/$CF"
off=$(($(stat -c %s "$cf") / 2))
orig=$(od -An -tu1 -j $off -N1 "$cf" | tr -d ' ')
printf "$(printf '\\%03o' $(((orig + 1) % 256)))" | dd of="$cf" bs=1 seek=$off conv=notrunc status=none
cmp -s "$cf" "$T/v2/shard-001/$CF" && fail "the byte flip did not change $cf"
TF=embeddings.f32
truncate -s -100 "$T/v2trunc/shard-000/$TF"
push_fails corrupt --build "$T/v2corrupt" --topology "$T/topo.json" --token-file "$TOKEN_FILE"
grep -q "$CF" "$T/corrupt.log" || fail "the corrupt push does not name $CF"
held_nowhere 2 staging
expect_consistent 1
push_fails truncated --build "$T/v2trunc" --topology "$T/topo.json" --token-file "$TOKEN_FILE"
grep -q "$TF" "$T/truncated.log" || fail "the truncated push does not name $TF"
held_nowhere 2 staging
expect_consistent 1
echo "2-3. corrupt ($CF) and truncated ($TF) uploads: refused, named, nothing held"

# The same by hand against one replica, so the shard's own checks are seen (not the pusher's).
# stage_by_hand DIR: stage version 2 from shard dir DIR on s1a, file by file, then prepare;
# prints prepare's status and body.
adm() { # adm METHOD PATH [curl args…]: an admin call with the token; prints "STATUS BODY"
  local m=$1 p=$2
  shift 2
  curl -s -o "$T/adm.body" -w '%{http_code}' -X "$m" -H "Authorization: Bearer $TOKEN" "$@" \
    "http://${ADM[s1a]}$p" >"$T/adm.status" || echo 000 >"$T/adm.status"
  echo "$(cat "$T/adm.status") $(cat "$T/adm.body")"
}
stage_by_hand() {
  local dir=$1 f out
  out=$(adm POST "/admin/stage?version=2" --data-binary "@$dir/snapshot.json")
  [ "${out%% *}" = 200 ] || fail "stage by hand: $out"
  for f in $(jq -r '.files[].name' "$dir/snapshot.json"); do
    # Files of this small corpus are < 8 MiB; larger ones would need chunks.
    out=$(adm PUT "/admin/stage/2/$f?offset=0" --data-binary "@$dir/$f")
    [ "${out%% *}" = 200 ] || fail "stage by hand: PUT $f: $out"
  done
  adm POST "/admin/prepare?version=2"
}
mkdir -p "$T/hand"
cp -r "$T/v2corrupt/shard-001" "$T/hand/corrupt"
cp -r "$T/v2/shard-001" "$T/hand/trunc"
tf1=$(biggest "$T/hand/trunc")
truncate -s -100 "$T/hand/trunc/$tf1"
for kind in corrupt trunc; do
  out=$(stage_by_hand "$T/hand/$kind")
  name=$CF
  [ $kind = trunc ] && name=$tf1
  [ "${out%% *}" = 500 ] && grep -q '"corrupt"' <<<"$out" && grep -q "$name" <<<"$out" \
    || fail "prepare of a $kind upload by hand: expected 500 corrupt naming $name, got: $out"
  held_nowhere 2 staging
done
out=$(adm POST "/admin/stage?version=2" --data-binary "@$T/v2/shard-001/snapshot.json")
f=$(jq -r '.files[0].name' "$T/v2/shard-001/snapshot.json")
out=$(adm PUT "/admin/stage/2/$f?offset=5" --data-binary "@$T/v2/shard-001/$f")
[ "${out%% *}" = 409 ] || fail "a chunk at the wrong offset: expected 409, got $out"
head -c 10 /dev/zero >"$T/ten"
sz=$(jq -r '.files[0].bytes' "$T/v2/shard-001/snapshot.json")
out=$(adm PUT "/admin/stage/2/$f?offset=0" --data-binary "@$T/v2/shard-001/$f")
out=$(adm PUT "/admin/stage/2/$f?offset=$sz" --data-binary "@$T/ten")
[ "${out%% *}" = 400 ] || fail "bytes beyond the manifest's size: expected 400, got $out"
out=$(adm POST "/admin/abort?version=2")
[ "${out%% *}" = 200 ] || fail "abort: $out"
held_nowhere 2 staging
expect_consistent 1
echo "    by hand on s1a: corrupt and truncated files -> 500 corrupt naming the file; wrong offset 409, beyond the size 400"

# ---- 4. kill -9 of a replica while staging --------------------------------------------------------
proxy_topo px_stage "${ADM[s0b]}" "PUT /admin/stage/" 2
kill_at px_stage s0b
grep -q "$PX" "$T/px_stage.push.log" || fail "the push does not name the replica it lost ($PX)"
restart_replica s0b
healthz "${ADM[s0b]}" | jq -e '.active == 1' >/dev/null || fail "restarted s0b does not serve 1"
expect_consistent 1
held_nowhere 2
echo "4. kill -9 while staging: push failed naming $PX; s0b restarted on 1; version 2 held nowhere"

# ---- 5. kill -9 between prepare and activate --------------------------------------------------------
proxy_topo px_act "${ADM[s0b]}" "POST /admin/activate"
kill_at px_act s0b
restart_replica s0b
healthz "${ADM[s0b]}" | jq -e '.active == 1' >/dev/null || fail "restarted s0b does not serve 1"
expect_consistent 1
echo "5. kill -9 between prepare and activate: push failed; all on 1; s0b restarted on 1"

# ---- 6. kill -9 right after activate (the broker's switch held) -------------------------------------
proxy_topo px_switch "$BADM" "POST /admin/switch"
kill_at px_switch s0b
healthz "$BADM" | jq -e '.version == 1' >/dev/null || fail "the broker switched without s0b"
restart_replica s0b
healthz "${ADM[s0b]}" | jq -e '.active == 2' >/dev/null \
  || fail "restarted s0b does not serve its pointer's version 2: $(healthz "${ADM[s0b]}")"
"$B" activate "${PT[@]}" --version 2 --topology "$T/topo.json" --token-file "$TOKEN_FILE" >"$T/act2.out" \
  2>"$T/act2.log" || fail "builder activate --version 2: $(tail -n 3 "$T/act2.log")"
expect_consistent 2
echo "6. kill -9 after activate: push failed, broker stayed on 1; s0b restarted on 2 (its pointer); activate 2 -> all on 2"

# ---- 7. a push after all that --------------------------------------------------------------------
"$B" push "${PT[@]}" --build "$T/v1" --topology "$T/topo.json" --token-file "$TOKEN_FILE" >"$T/push1.out" \
  2>"$T/push1.log" || fail "builder push --build v1: $(tail -n 3 "$T/push1.log")"
expect_consistent 1
echo "7. push of version 1: all on 1"

touch "$T/stop"
wait "${PID[push_load]}" || fail "push_load: $(cat "$T/load.err")"
unset "PID[push_load]"
echo "push_load: $(cat "$T/load.out")"
jq -e '.http.errors == 0 and .zmq.errors == 0 and .http.answers > 0 and .zmq.answers > 0' \
  "$T/load.out" >/dev/null || fail "failed requests: $(cat "$T/load.out"); $(grep -m3 '"error"' "$A")"
"$VA" --index 1="$T/single1" --index 2="$T/single2" --k 10 --json "$A" >"$T/verify.json" \
  2>"$T/verify.err" || fail "verify_answers: $(cat "$T/verify.json") $(head -c 3000 "$T/verify.err")"
echo "verify_answers: $(cat "$T/verify.json")"

# ---- 8. must-show 3: tokens ------------------------------------------------------------------------
before=$(all_healthz)
ROUTES=("POST ${ADM[s1a]} /admin/activate?version=2" "POST ${ADM[s1a]} /admin/retire?version=2"
  "POST ${ADM[s1a]} /admin/prepare?version=2" "POST ${ADM[s1a]} /admin/abort?version=2"
  "POST ${ADM[s1a]} /admin/stage?version=9" "PUT ${ADM[s1a]} /admin/stage/9/CURRENT?offset=0"
  "POST $BADM /admin/switch?version=2")
for route in "${ROUTES[@]}"; do
  read -r m hp p <<<"$route"
  for auth in none wrong; do
    hdr=()
    want=401
    [ $auth = wrong ] && hdr=(-H "Authorization: Bearer wrong-$TOKEN") && want=403
    st=$(curl -s -o "$T/tok.body" -w '%{http_code}' -X "$m" "${hdr[@]}" \
      --data-binary "@$T/v2/shard-001/snapshot.json" "http://$hp$p") || st=000
    [ "$st" = $want ] || fail "$m $hp$p with $auth token: status $st (want $want): $(cat "$T/tok.body")"
    jq -e '.error.code' "$T/tok.body" >/dev/null || fail "$m $p: not a JSON error: $(cat "$T/tok.body")"
  done
done
[ "$(all_healthz)" = "$before" ] || fail "admin calls without a valid token changed the cluster"
echo "8. ${#ROUTES[@]} admin routes: 401 without a token, 403 with a wrong one; nothing changed"

# ---- 8. must-show 3: shards that must refuse to start ----------------------------------------------
# refuses NAME PATTERN FLAGS…: the shard must exit non-zero and log PATTERN (extended regex).
refuses() {
  local name=$1 pat=$2 pid rc=0
  shift 2
  rm -rf "$T/d_$name"
  "$S" --listen "tcp://127.0.0.1:$($C freeport)" --admin 127.0.0.1:0 --admin-token-file "$TOKEN_FILE" \
    --ready-file "$T/$name.ready" "$@" 2>"$T/$name.log" &
  pid=$!
  PID[$name]=$pid
  for ((i = 0; i < WAIT * 5; i++)); do
    kill -0 $pid 2>/dev/null || break
    [ -e "$T/$name.ready" ] && fail "$name started: $*"
    sleep 0.2
  done
  wait $pid || rc=$?
  unset "PID[$name]"
  [ $rc -ne 0 ] || fail "$name exited 0: $*"
  grep -Eqi "$pat" "$T/$name.log" || fail "$name: the log does not name the mismatch ($pat): $(tail -n 3 "$T/$name.log")"
  echo "  $name: exit $rc: $(grep -Ei "$pat" "$T/$name.log" | head -n 1)"
}
refuses wrong_slice 'wrong slice' --data "$T/d_wrong_slice" --index "$T/v1/shard-000" --shard 1 --shards 2
refuses wrong_count 'shards = 3' --data "$T/d_wrong_count" --index "$T/v1/shard-000" --shard 0 --shards 3
# A foreign build: a build of the same version number from another corpus, where the shard is
# configured for build 1's fingerprint (--fingerprint, from cluster.json).
$B build --corpus "$T/data/corpus2.jsonl" --embeddings "$T/data/embeddings.npy" \
  --clicks "$T/data/clicks.tsv" --version 1 --shards 2 --out "$T/foreign" >"$T/build.out" 2>&1 \
  || fail "foreign build: $(cat "$T/build.out")"
FP1=$(jq -r .fingerprint "$T/v1/cluster.json")
[ "$(jq -r .fingerprint "$T/foreign/cluster.json")" != "$FP1" ] || fail "the foreign build has build 1's fingerprint"
refuses foreign 'foreign build' --data "$T/d_foreign" --index "$T/foreign/shard-001" --shard 1 \
  --shards 2 --fingerprint "$FP1"
refuses foreign_inplace 'foreign build' --index "$T/foreign/shard-001" --shard 1 --shards 2 \
  --fingerprint "$FP1"
# A replica's own data dir started as the other shard.
stop s1b
refuses restart_as_shard0 'wrong slice' --data "$T/d_s1b" --shard 0 --shards 2
echo "8. the wrong slice (fresh and on restart), the wrong shard count and a foreign build are refused"

stop broker
for r in s0a s0b s1a; do stop "$r"; done
echo "test_push_faults: all checks passed in $((SECONDS - START)) s"
