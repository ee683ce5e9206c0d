#!/usr/bin/env bash
# Sharding does not change answers, for several cluster sizes: one small generated corpus,
# built once single-node and once per N in {1, 2, 4, 7} with `builder build --shards N`. For
# each N, N `shard` processes (one replica each) and a `broker` run on 127.0.0.1 (shard ports
# picked at run time, the broker on port 0, readiness from --ready-file); >= 300 distinct
# queries, each without and with a user (u01..u04 in turn), must give over /v1/search, and
# through libpersrv over the broker's ZeroMQ front door (`persrv search --broker EP --json`),
# exactly the ids, order and scores of `persrv search --index SINGLE --json --k 10` (read with
# jq), as complete answers from all N shards. The single-node answers are computed once and reused
# for every N. Each cluster is stopped with SIGTERM (exit status 0) before the next starts.
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
HITS='[.hits[] | [.id, .score, .recall, .relevance, .utility, .preference, .centroid]]'
WANT=()
WHO=()
for ((i = 0; i < nq; i++)); do
  u=${USERS[$((i % ${#USERS[@]}))]}
  for who in "" "$u"; do
    pargs=()
    [ -n "$who" ] && pargs=(--user "$who")
    "$P" search --index "$T/single" --json --k "$SINGLE_K" "${pargs[@]}" -- "${Q[$i]}" \
      >"$T/single.json" || fail "persrv search '${Q[$i]}' user '$who' failed"
    WANT+=("$(jq -r "$HITS | tojson" "$T/single.json")")
    WHO+=("$who")
  done
done
nonempty=0
for w in "${WANT[@]}"; do [ "$w" != "[]" ] && nonempty=$((nonempty + 1)); done
[ $nonempty -ge $nq ] || fail "only $nonempty of ${#WANT[@]} single-node answers have hits"
echo "single node: ${#WANT[@]} reference answers ($nq queries x (no user, user)), $nonempty with hits"

# ---- every cluster size ------------------------------------------------------------------
for n in "${SIZES[@]}"; do
  topo=""
  for ((s = 0; s < n; s++)); do
    start_shard "n${n}s$s" --workers 1 --index "$T/cluster$n/shard-$(printf %03d $s)" --shard $s --shards "$n"
    topo+="${topo:+,}${EP[n${n}s$s]}"
  done
  start_broker "broker$n" "$topo" --profiles "$T/cluster$n/profiles" --deadline-ms 5000 \
    --retries 1 --health-interval-ms 200

  matched=0
  personalized=0
  for ((j = 0; j < ${#WANT[@]}; j++)); do
    q=${Q[$((j / 2))]}
    who=${WHO[$j]}
    uargs=()
    [ -n "$who" ] && uargs=(--data-urlencode "user=$who")
    st=$(curl -s -o "$T/body" -w '%{http_code}' -G --data-urlencode "q=$q" \
      --data-urlencode "k=$K" "${uargs[@]}" "$URL/v1/search") || st="curl_failed_$?"
    [ "$st" = 200 ] || fail "$n shards: search '$q' user '$who': status $st: $(head -c 300 "$T/body")"
    # One jq per answer: "complete personalized hits".
    line=$(jq -r --argjson n "$n" "(.partial == false and .timed_out == false and
           .shards.total == \$n and .shards.successful == \$n and .shards.failed == 0) as \$ok |
           \"\(\$ok) \(.personalized) \($HITS | tojson)\"" "$T/body") \
      || fail "$n shards: search '$q': not JSON: $(head -c 300 "$T/body")"
    read -r ok pers got <<<"$line"
    [ "$ok" = true ] || fail "$n shards: search '$q': not a complete answer: $(head -c 300 "$T/body")"
    [ "$pers" = true ] && personalized=$((personalized + 1))
    [ "$got" = "${WANT[$j]}" ] || fail "$n shards: search '$q' user '$who' differs from the single node
  ($matched of ${#WANT[@]} matched before it):
  broker: $got
  single: ${WANT[$j]}"
    matched=$((matched + 1))
  done
  [ $personalized -gt 0 ] || fail "$n shards: no search was personalized"
  echo "N=$n: $matched/${#WANT[@]} searches ($nq queries x (no user, user)) equal the single node" \
    "($personalized personalized)"

  # The same searches through libpersrv (the persrv CLI over the ZeroMQ front door).
  zmatched=0
  for ((j = 0; j < ${#WANT[@]}; j++)); do
    q=${Q[$((j / 2))]}
    who=${WHO[$j]}
    pargs=()
    [ -n "$who" ] && pargs=(--user "$who")
    "$P" search --broker "$ZEP" --json --k "$K" --timeout 10000 "${pargs[@]}" -- "$q" \
      >"$T/zbody" 2>"$T/zerr" || fail "$n shards: persrv --broker '$q' user '$who': $(cat "$T/zerr")"
    line=$(jq -r --argjson n "$n" "(.partial == false and .shards.total == \$n and
           .shards.successful == \$n) as \$ok | \"\(\$ok) \($HITS | tojson)\"" "$T/zbody") \
      || fail "$n shards: persrv --broker '$q': not JSON: $(head -c 300 "$T/zbody")"
    read -r ok got <<<"$line"
    [ "$ok" = true ] || fail "$n shards: persrv --broker '$q': not complete: $(head -c 300 "$T/zbody")"
    [ "$got" = "${WANT[$j]}" ] || fail "$n shards: persrv --broker '$q' user '$who' differs from the single node
  ($zmatched of ${#WANT[@]} matched before it):
  libpersrv: $got
  single:    ${WANT[$j]}"
    zmatched=$((zmatched + 1))
  done
  echo "N=$n: $zmatched/${#WANT[@]} searches through libpersrv equal the single node"

  stop "broker$n"
  [ ! -e "$T/broker$n.ready" ] || fail "broker ($n shards) left its ready file"
  for ((s = 0; s < n; s++)); do stop "n${n}s$s"; done
done
echo "test_cluster_sizes: all checks passed in $((SECONDS - START)) s"
