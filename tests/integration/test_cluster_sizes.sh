#!/usr/bin/env bash
# Sharding does not change answers, for several cluster sizes: one small generated corpus,
# built once single-node and once per N in {1, 2, 4, 7} with `builder build --shards N`. For
# each N, N `shard` processes (one replica each; the even ones search on their server thread,
# --workers 0, the odd ones in a worker, --workers 1) and a `broker` run on 127.0.0.1 (shard ports
# picked at run time, the broker on port 0, readiness from --ready-file); >= 300 distinct
# queries, each without and with a user (u01..u04 in turn), must give over /v1/search, and
# through libpersrv over the broker's ZeroMQ front door (`persrv search --broker EP --json`),
# exactly the ids, order and scores of `persrv search --index SINGLE --json --k 10` (read with
# jq), as complete answers from all N shards. The single-node answers are computed once and reused
# for every N. For N > 1 a second broker whose first round asks each shard for 1 hit
# (--shard-depth 1, so that nearly every search asks some shards again at R) must give the
# same answers. Each cluster is stopped with SIGTERM (exit status 0) before the next starts.
# The HTTP searches of a cluster go through one curl (-K config, keep-alive) and every phase's
# answers are read by one jq, so that the test costs searches rather than process starts.
# usage: test_cluster_sizes.sh BUILDER SHARD SHARD_CLIENT BROKER PERSRV
# PS_TEST_SINGLE_K (default 10) is the k of the single-node reference; set it to another
# value to see this test fail.
set -euo pipefail
B=$1
S=$2
C=$3
BR=$4
P=$5
SIZES=(1 2 4 7)
NQ=300
K=10
SINGLE_K=${PS_TEST_SINGLE_K:-10}
USERS=(u01 u02 u03 u04)
. "$(dirname "$0")/lib.sh"
ps_test_init cluster_sizes
command -v curl >/dev/null || fail "curl is required (scripts/deps.sh installs it)"
command -v jq >/dev/null || fail "jq is required (scripts/deps.sh installs it)"
START=$SECONDS

# ---- data and indexes --------------------------------------------------------------------
$B generate --out "$T/data" --stickers 20000 --dim 32 --users 4 --clicks 3000 --pairs 500 \
  --queries 300 --no-progress
BARGS=(--corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy"
  --clicks "$T/data/clicks.tsv")
$B build "${BARGS[@]}" --out "$T/single" >"$T/build.out" 2>&1 \
  || fail "single-node build: $(cat "$T/build.out")"
for n in "${SIZES[@]}"; do
  $B build "${BARGS[@]}" --out "$T/cluster$n" --shards "$n" >"$T/build.out" 2>&1 \
    || fail "$n-shard build: $(cat "$T/build.out")"
  for ((s = 0; s < n; s++)); do
    [ -d "$T/cluster$n/shard-$(printf %03d $s)" ] || fail "$n-shard build: no shard-$(printf %03d $s)"
  done
done
cut -f1 "$T/data/clicks.tsv" | sort -u >"$T/users"
for u in "${USERS[@]}"; do grep -qx "$u" "$T/users" || fail "user $u not in the click log"; done

# ---- queries: distinct click-log queries, topped up with OCR phrases of the corpus -----------
cut -f2 "$T/data/clicks.tsv" | sed '/^[[:space:]]*$/d' | sort -u >"$T/queries"
if [ "$(wc -l <"$T/queries")" -lt $NQ ]; then
  jq -r '.ocr' "$T/data/corpus.jsonl" | sed '/^[[:space:]]*$/d' | sort -u \
    | grep -vxF -f "$T/queries" >"$T/extra" || true
  head -n $((NQ - $(wc -l <"$T/queries"))) "$T/extra" >>"$T/queries"
fi
mapfile -t Q <"$T/queries"
nq=${#Q[@]}
[ "$nq" -ge $NQ ] || fail "only $nq distinct queries"
[ "$(sort -u "$T/queries" | wc -l)" -eq "$nq" ] || fail "queries are not distinct"

# ---- the single-node reference, computed once ---------------------------------------------
# One process per answer only where the answer needs one (persrv); the answers are read by one
# jq per phase and the HTTP searches sent by one curl per cluster (keep-alive), so the test's
# cost is the searches, not ~10,000 process starts (which made it time out on a loaded box).
HITS='[.hits[] | [.id, .score, .recall, .relevance, .utility, .preference, .centroid]]'
WHO=()
for ((i = 0; i < nq; i++)); do WHO+=("" "${USERS[$((i % ${#USERS[@]}))]}"); done
NA=${#WHO[@]}
answers() { # DIR: the files DIR/0.json .. DIR/(NA-1).json, in order
  local j
  for ((j = 0; j < NA; j++)); do printf '%s\n' "$1/$j.json"; done
}
mkdir -p "$T/ref"
for ((j = 0; j < NA; j++)); do
  pargs=()
  [ -n "${WHO[$j]}" ] && pargs=(--user "${WHO[$j]}")
  "$P" search --index "$T/single" --json --k "$SINGLE_K" "${pargs[@]}" -- "${Q[$((j / 2))]}" \
    >"$T/ref/$j.json" || fail "persrv search '${Q[$((j / 2))]}' user '${WHO[$j]}' failed"
done
mapfile -t WANT < <(answers "$T/ref" | xargs jq -r "$HITS | tojson")
[ ${#WANT[@]} -eq "$NA" ] || fail "the single-node answers do not all parse: ${#WANT[@]} of $NA"
nonempty=0
for w in "${WANT[@]}"; do [ "$w" != "[]" ] && nonempty=$((nonempty + 1)); done
[ $nonempty -ge $nq ] || fail "only $nonempty of $NA single-node answers have hits"
echo "single node: $NA reference answers ($nq queries x (no user, user)), $nonempty with hits"

# The curl config of every HTTP search (URL-encoded by jq), answers into $T/http/J.json.
printf '%s\n' "${Q[@]}" | jq -R -r --arg k "$K" --arg out "$T/http" \
  --argjson users "$(printf '%s\n' "${USERS[@]}" | jq -R . | jq -s -c .)" '
  [inputs] as $rest | ([.] + $rest) | to_entries[] | .key as $i | .value as $q |
  ("", $users[$i % ($users | length)]) as $u |
  "url = \"/v1/search?q=\($q | @uri)&k=\($k)\(if $u == "" then "" else "&user=\($u | @uri)" end)\"",
  "output = \"\($out)/\($i * 2 + (if $u == "" then 0 else 1 end)).json\""' >"$T/curl.conf.tmpl"
[ "$(grep -c '^url' "$T/curl.conf.tmpl")" -eq "$NA" ] || fail "curl config: wrong number of URLs"

# check_answers N KIND DIR: every answer in DIR complete from N shards and equal to WANT.
check_answers() {
  local n=$1 kind=$2 dir=$3 j ok pers got lines
  mapfile -t lines < <(answers "$dir" | xargs jq -r --argjson n "$n" "(.partial == false and
    (.timed_out // false) == false and .shards.total == \$n and .shards.successful == \$n and
    (.shards.failed // 0) == 0) as \$ok | \"\(\$ok) \(.personalized) \($HITS | tojson)\"")
  [ ${#lines[@]} -eq "$NA" ] || fail "$n shards, $kind: ${#lines[@]} of $NA answers are JSON"
  personalized=0
  for ((j = 0; j < NA; j++)); do
    read -r ok pers got <<<"${lines[$j]}"
    [ "$ok" = true ] || fail "$n shards, $kind: search '${Q[$((j / 2))]}': not a complete answer: $(head -c 300 "$dir/$j.json")"
    [ "$pers" = true ] && personalized=$((personalized + 1))
    [ "$got" = "${WANT[$j]}" ] || fail "$n shards, $kind: search '${Q[$((j / 2))]}' user '${WHO[$j]}' differs from the single node
  ($j of $NA matched before it):
  $kind: $got
  single: ${WANT[$j]}"
  done
}

# http_searches N: every search over HTTP to $URL: one curl, one status line per search.
http_searches() {
  local n=$1 j
  rm -rf "$T/http"
  mkdir -p "$T/http"
  sed "s|^url = \"|url = \"$URL|" "$T/curl.conf.tmpl" >"$T/curl.conf"
  curl -s -K "$T/curl.conf" -w '%{http_code}\n' >"$T/status" || fail "$n shards: curl failed ($?)"
  mapfile -t ST <"$T/status"
  [ ${#ST[@]} -eq "$NA" ] || fail "$n shards: ${#ST[@]} of $NA HTTP searches answered"
  for ((j = 0; j < NA; j++)); do
    [ "${ST[$j]}" = 200 ] || fail "$n shards: search '${Q[$((j / 2))]}' user '${WHO[$j]}': status ${ST[$j]}: $(head -c 300 "$T/http/$j.json")"
  done
}

# ---- every cluster size ------------------------------------------------------------------
for n in "${SIZES[@]}"; do
  topo=""
  for ((s = 0; s < n; s++)); do
    start_shard "n${n}s$s" --workers $((s % 2)) --index "$T/cluster$n/shard-$(printf %03d $s)" --shard $s --shards "$n"
    topo+="${topo:+,}${EP[n${n}s$s]}"
  done
  start_broker "broker$n" "$topo" --profiles "$T/cluster$n/profiles" --deadline-ms 5000 \
    --retries 1 --health-interval-ms 200

  http_searches "$n"
  check_answers "$n" broker "$T/http"
  [ $personalized -gt 0 ] || fail "$n shards: no search was personalized"
  echo "N=$n: $NA/$NA searches ($nq queries x (no user, user)) equal the single node" \
    "($personalized personalized)"

  # The same searches through libpersrv (the persrv CLI over the ZeroMQ front door).
  rm -rf "$T/z"
  mkdir -p "$T/z"
  for ((j = 0; j < NA; j++)); do
    pargs=()
    [ -n "${WHO[$j]}" ] && pargs=(--user "${WHO[$j]}")
    "$P" search --broker "$ZEP" --json --k "$K" --timeout 10000 "${pargs[@]}" -- "${Q[$((j / 2))]}" \
      >"$T/z/$j.json" 2>"$T/zerr" \
      || fail "$n shards: persrv --broker '${Q[$((j / 2))]}' user '${WHO[$j]}': $(cat "$T/zerr")"
  done
  check_answers "$n" libpersrv "$T/z"
  echo "N=$n: $NA/$NA searches through libpersrv equal the single node"

  stop "broker$n"
  [ ! -e "$T/broker$n.ready" ] || fail "broker ($n shards) left its ready file"

  # The broker asks each shard for its best few first and asks again, at R, only the shards
  # whose unseen hits could still rank in the top R. With a first-round depth of 1 nearly every
  # search takes that second round: the answers must not change.
  if [ "$n" -gt 1 ]; then
    start_broker "deep$n" "$topo" --profiles "$T/cluster$n/profiles" --deadline-ms 5000 \
      --retries 1 --health-interval-ms 200 --shard-depth 1
    http_searches "$n"
    check_answers "$n" "broker --shard-depth 1" "$T/http"
    rounds=$(curl -s "$URL/metrics" | awk '$1 == "persrv_broker_second_rounds_total" {print $2}')
    [ "${rounds:-0}" -gt $((NA / 2)) ] \
      || fail "$n shards, --shard-depth 1: only ${rounds:-0} of $NA searches took a second round"
    echo "N=$n: $NA/$NA searches with a first round of depth 1 ($rounds second rounds) equal the single node"
    stop "deep$n"
  fi
  for ((s = 0; s < n; s++)); do stop "n${n}s$s"; done
done
echo "test_cluster_sizes: all checks passed in $((SECONDS - START)) s"
