#!/usr/bin/env bash
# The README's local cluster end to end, small and on ports picked at run time:
# scripts/demo.sh (the README's first command: cluster-up.sh, then how to use the single node)
# with a 20,000-sticker corpus in a temporary directory and the
# binaries of this build tree (no rebuild) must start 2 shards x 2 replicas and the broker,
# print a sample query with hits; the broker then answers /v1/search (complete, 2 shards),
# /v1/stickers/{id} and /metrics, and the persrv CLI (libpersrv) answers search, sticker and
# health over the broker's ZeroMQ front door; a second cluster-up in the same directory and one on a port
# already taken are refused; scripts/cluster-down.sh stops every process (their pids are
# gone) and removes the pid files; the search page at / and the generated pictures at /images/
# answer. The cluster is always stopped on exit. When the
# docker-compose command exists, docker-compose.yml must pass `docker-compose config -q`.
# usage: test_demo.sh BUILD_DIR   (the build tree: BUILD_DIR/shard/shard, BUILD_DIR/broker/broker ...)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(cd "$1" && pwd)
T=$(mktemp -d /tmp/ps_test_demo_XXXXXX)
export PERSRV_DEMO_STICKERS=20000 PERSRV_DEMO_DIR=$T/demo PERSRV_SKIP_BUILD=1 PERSRV_BIN_DIR=$BIN
export PERSRV_READY_TIMEOUT=120 PERSRV_STOP_TIMEOUT=20
RUN=$T/demo/run
cleanup() {
  "$ROOT/scripts/cluster-down.sh" >/dev/null 2>&1 || true
  local f
  for f in "$RUN"/*.pid; do [ -e "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
  rm -rf "$T"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  for f in "$T"/*.out "$RUN"/*.log; do [ -e "$f" ] && { echo "--- $f"; tail -n 20 "$f"; } >&2; done
  exit 1
}
command -v curl >/dev/null || fail "curl is required (scripts/deps.sh installs it)"
command -v jq >/dev/null || fail "jq is required (scripts/deps.sh installs it)"
. "$(dirname "$0")/demo_lib.sh"
# alive PID: running and not a zombie
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  [ ! -r "/proc/$1/stat" ] || [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]
}

# ---- the README's first command on free ports: scripts/demo.sh (cluster-up.sh and more) -------
UP_SCRIPT=demo.sh cluster_up_free_ports
grep -qF "search --index $T/demo/index" "$T/up.out" \
  || fail "demo.sh did not tell how to search the single-node index: $(tail -5 "$T/up.out")"
grep -qF "eval --data" "$T/up.out" || fail "demo.sh did not tell how to run the evaluation"
base=$BASE http=$HTTP
echo "  cluster-up.sh: shards on $((base + 1))..$((base + 4)), broker on $http"

# ---- what it printed and left ----------------------------------------------------------------
grep -qF "/v1/search?q=" "$T/up.out" || fail "cluster-up.sh did not print the sample query"
grep -qE '"hits": \[' "$T/up.out" || fail "cluster-up.sh printed no hits array"
grep -qE '"id": "[0-9]+"' "$T/up.out" || fail "the sample query printed no hit"
grep -qE 'sample query returned [1-9][0-9]* hits' "$T/up.out" || fail "no hit count printed"
grep -qF '"acknowledged":true' "$T/up.out" || fail "cluster-up.sh's sample click was not acknowledged"
for w in "curl 'http://127.0.0.1:$http/v1/search" "/v1/stickers/" "/metrics" "cluster-down.sh"; do
  grep -qF -- "$w" "$T/up.out" || fail "cluster-up.sh does not tell how to use: $w"
done
declare -A PIDS=()
for n in shard0a shard0b shard1a shard1b profile0 profile1 broker; do
  [ -s "$RUN/$n.pid" ] || fail "no pid file $RUN/$n.pid"
  [ -e "$RUN/$n.ready" ] || fail "no ready file $RUN/$n.ready"
  [ -s "$RUN/$n.log" ] || fail "no log $RUN/$n.log"
  PIDS[$n]=$(cat "$RUN/$n.pid")
  alive "${PIDS[$n]}" || fail "$n (pid ${PIDS[$n]}) is not running"
done
[ "$(sed -n 1p "$RUN/broker.ready")" = "127.0.0.1:$http" ] || fail "broker.ready: $(cat "$RUN/broker.ready")"
[ "$(sed -n 2p "$RUN/broker.ready")" = "tcp://127.0.0.1:$base" ] || fail "broker.ready: $(cat "$RUN/broker.ready")"
ZEP="tcp://127.0.0.1:$base"
grep -qF "persrv search --broker $ZEP" "$T/up.out" || fail "cluster-up.sh does not tell how to use the persrv CLI"

# ---- the persrv CLI (libpersrv) against the running cluster -----------------------------------
P=$BIN/client/persrv
# the front door runs CURVE: without the client's key pair nothing is answered
rc=0
env -u PERSRV_CURVE_KEY -u PERSRV_CURVE_SERVERS "$P" health --broker "$ZEP" --timeout 500 \
  >"$T/cli.json" 2>&1 || rc=$?
[ $rc -ne 0 ] || fail "the front door answered a client without CURVE keys"
grep -qF "export PERSRV_CURVE_KEY=$T/demo/keys/client.key" "$T/up.out" \
  || fail "cluster-up.sh does not tell how to reach the front door with CURVE"
export PERSRV_CURVE_KEY=$T/demo/keys/client.key PERSRV_CURVE_SERVERS=$T/demo/keys/servers
grep -q "event=curve " "$RUN/shard0a.log" || fail "shard0a does not run CURVE"
"$P" search --broker "$ZEP" --json --user u01 --k 5 -- "${PERSRV_DEMO_QUERY:-好累}" >"$T/cli.json" 2>"$T/cli.err" \
  || fail "persrv search --broker: $(cat "$T/cli.err")"
jq -e '.partial == false and .shards.total == 2 and .shards.successful == 2 and (.hits | length) == 5
       and all(.hits[]; (.id | test("^[0-9]+$")) and (.score | type) == "number")' "$T/cli.json" >/dev/null \
  || fail "persrv search --broker: $(head -c 400 "$T/cli.json")"
cid=$(jq -r '.hits[0].id' "$T/cli.json")
"$P" sticker --broker "$ZEP" --json "$cid" >"$T/cli.json" || fail "persrv sticker --broker $cid"
[ "$(jq -r .id "$T/cli.json")" = "$cid" ] || fail "persrv sticker: $(head -c 300 "$T/cli.json")"
"$P" health --broker "$ZEP" --json >"$T/cli.json" || fail "persrv health --broker: $(cat "$T/cli.json")"
echo "  persrv CLI over the front door: search (5 hits, 2 shards), sticker, health"
URL="http://127.0.0.1:$http"

# ---- the cluster answers ---------------------------------------------------------------------
st=$(curl -s -o "$T/body" -w '%{http_code}' -G --data-urlencode "q=thumbs up" \
  --data-urlencode user=u02 --data-urlencode k=5 "$URL/v1/search") || fail "curl /v1/search"
[ "$st" = 200 ] || fail "/v1/search: status $st: $(head -c 300 "$T/body")"
jq -e '.partial == false and .shards.total == 2 and .shards.successful == 2 and
       (.hits | length) > 0 and (.hits[0].score | type) == "number"' "$T/body" >/dev/null \
  || fail "/v1/search: not a complete answer with hits: $(head -c 400 "$T/body")"
id=$(grep -oE '"id":"?[0-9]+' "$T/body" | awk 'NR == 1' | tr -dc 0-9)
st=$(curl -s -o "$T/body" -w '%{http_code}' "$URL/v1/stickers/$id")
{ [ "$st" = 200 ] && grep -q "$id" "$T/body"; } || fail "/v1/stickers/$id: status $st"
st=$(curl -s -o "$T/body" -w '%{http_code}' "$URL/metrics")
{ [ "$st" = 200 ] && grep -q '^persrv_requests_total' "$T/body"; } || fail "/metrics: status $st"
echo "  /v1/search, /v1/stickers/$id, /metrics answer"
# the search page and the generated pictures (PERSRV_DEMO_IMAGES, --image-root)
st=$(curl -s -o "$T/body" -w '%{http_code}' "$URL/")
{ [ "$st" = 200 ] && grep -q '<title>PerSRV' "$T/body"; } || fail "the search page /: status $st"
grep -qF "search page in a browser: $URL/" "$T/up.out" || fail "cluster-up.sh does not name the search page"
img=$(curl -s -G --data-urlencode "q=${PERSRV_DEMO_QUERY:-好累}" --data-urlencode k=50 \
  --data-urlencode explain=1 "$URL/v1/search" | jq -r '[.hits[].image_url | select(.)][0]')
case $img in /images/*) ;; *) fail "no hit of the demo query has a picture (image_url '$img')" ;; esac
st=$(curl -s -o "$T/img" -w '%{http_code}' "$URL$img")
{ [ "$st" = 200 ] && cmp -s "$T/img" "$T/demo/data/images/${img#/images/}"; } \
  || fail "$img: status $st, or not the generated file"
echo "  the search page at /, and the demo's pictures at /images/ ($img)"

# ---- README "Versions": push a second build into the running cluster, roll back ---------------
DEMO=$(dirname "$RUN")
B=$BIN/builder/builder
BADM="http://$(sed -n 3p "$RUN/broker.ready")"
"$B" build --corpus "$DEMO/data/corpus.jsonl" --embeddings "$DEMO/data/embeddings.npy" \
  --clicks "$DEMO/data/clicks.tsv" --utility-w 1,0.5,2 --shards 2 --version 2 --out "$DEMO/v2" \
  >"$T/v2.out" 2>&1 || fail "builder build --version 2: $(tail -n 5 "$T/v2.out")"
PERSRV_ADMIN_TOKEN=$(cat "$DEMO/admin.token") "$B" push --build "$DEMO/v2" \
  --topology "$DEMO/topology.json" >"$T/push.out" 2>&1 || fail "builder push: $(tail -n 5 "$T/push.out")"
grep -qF "$(cat "$DEMO/admin.token")" "$T/push.out" && fail "builder push printed the admin token"
[ "$(curl -s "$BADM/healthz" | jq .version)" = 2 ] || fail "broker not at version 2 after the push"
curl -s "http://$(sed -n 2p "$RUN/shard0a.ready")/healthz" \
  | jq -e '.active == 2 and (.versions | length) == 2' >/dev/null || fail "shard0a after the push"
curl -s -G --data-urlencode "q=thumbs up" "$URL/v1/search" | jq -e '.version == 2 and .partial == false' \
  >/dev/null || fail "a search after the push does not name version 2"
v1=$(jq .version "$DEMO/cluster/cluster.json")
PERSRV_ADMIN_TOKEN=wrong-token "$B" activate --version "$v1" --topology "$DEMO/topology.json" \
  >"$T/act.out" 2>&1 && fail "builder activate with a wrong token succeeded"
[ "$(curl -s "$BADM/healthz" | jq .version)" = 2 ] || fail "a refused rollback changed the version"
PERSRV_ADMIN_TOKEN=$(cat "$DEMO/admin.token") "$B" activate --version "$v1" \
  --topology "$DEMO/topology.json" >"$T/act.out" 2>&1 || fail "builder activate: $(tail -n 5 "$T/act.out")"
curl -s -G --data-urlencode "q=thumbs up" "$URL/v1/search" | jq -e --argjson v "$v1" '.version == $v' \
  >/dev/null || fail "a search after the rollback does not name version $v1"
echo "  README push: version 2 pushed and served, a wrong token refused, rolled back to $v1"

# ---- a second cluster is refused ------------------------------------------------------------
rc=0
PERSRV_BASE_PORT=$base PERSRV_HTTP_PORT=$http "$ROOT/scripts/cluster-up.sh" >"$T/again.out" 2>&1 || rc=$?
{ [ $rc = 3 ] && grep -q "already running" "$T/again.out"; } \
  || fail "a second cluster-up in the same directory: status $rc: $(cat "$T/again.out")"
rc=0
PERSRV_DEMO_DIR=$T/other PERSRV_BASE_PORT=$((base + 10)) PERSRV_HTTP_PORT=$http \
  "$ROOT/scripts/cluster-up.sh" >"$T/taken.out" 2>&1 || rc=$?
{ [ $rc = 3 ] && grep -q "port $http (broker HTTP) on 127.0.0.1 is already in use" "$T/taken.out"; } \
  || fail "cluster-up with the HTTP port taken: status $rc: $(cat "$T/taken.out")"
[ ! -e "$T/other/data" ] || fail "cluster-up with a port taken generated data anyway"
for n in "${!PIDS[@]}"; do alive "${PIDS[$n]}" || fail "$n died after the refused starts"; done
echo "  a second cluster and a taken port are refused"

# ---- cluster-down --------------------------------------------------------------------------
"$ROOT/scripts/cluster-down.sh" >"$T/down.out" 2>&1 || fail "cluster-down.sh failed: $(cat "$T/down.out")"
grep -q "SIGKILL" "$T/down.out" && fail "cluster-down.sh needed SIGKILL: $(cat "$T/down.out")"
for n in "${!PIDS[@]}"; do
  ! alive "${PIDS[$n]}" || fail "$n (pid ${PIDS[$n]}) still runs after cluster-down.sh"
  [ ! -e "$RUN/$n.pid" ] || fail "$RUN/$n.pid left behind"
  [ ! -e "$RUN/$n.ready" ] || fail "$RUN/$n.ready left behind"
  grep -q "event=exit status=0" "$RUN/$n.log" || fail "$n did not log a clean exit"
done
! port_in_use "$http" || fail "port $http still answers after cluster-down.sh"
"$ROOT/scripts/cluster-down.sh" >"$T/down2.out" 2>&1 || fail "a second cluster-down.sh failed"
echo "  cluster-down.sh: $(cat "$T/down.out")"

# ---- docker-compose.yml ------------------------------------------------------------------------
if command -v docker-compose >/dev/null; then
  (cd "$ROOT" && docker-compose -f docker-compose.yml config -q) >"$T/compose.out" 2>&1 \
    || fail "docker-compose.yml is invalid: $(cat "$T/compose.out")"
  echo "  docker-compose.yml: docker-compose config -q passes"
else
  echo "  docker-compose.yml not validated: the docker-compose command is not installed"
fi
echo "test_demo: all checks passed"
