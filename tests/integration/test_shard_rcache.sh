#!/usr/bin/env bash
# The shard's recall cache end to end (issue 13): answers with the cache on are those of the
# single-node engine without it, bit for bit (shard_client compare: every id, order and score),
# on the hits as on the misses:
#   - one shard on the whole index with the default cache, one with a 64 KiB cache that evicts
#     on nearly every insert, and one with the cache off; each answers 200 click-log queries
#     (each with and without a user's centroids: the second of a pair hits) twice;
#   - a 3-shard cluster with the cache on, likewise, merged;
#   - /metrics: hits and misses counted, bytes within the bound, evictions on the small one,
#     a capacity of 0 and no hits on the one without;
#   - a size below the minimum is a configuration error (exit 2).
# usage: test_shard_rcache.sh BUILDER SHARD SHARD_CLIENT
set -euo pipefail
B=$1
S=$2
C=$3
. "$(dirname "$0")/lib.sh"
ps_test_init shard_rcache
NQ=200

$B generate --out "$T/data" --stickers 12000 --dim 32 --users 4 --clicks 3000 --pairs 500 \
  --queries 300 --no-progress
$B build --corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy" \
  --clicks "$T/data/clicks.tsv" --out "$T/single" >/dev/null 2>&1 || fail "single-node build"
$B build --corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy" \
  --clicks "$T/data/clicks.tsv" --out "$T/cluster" --shards 3 >"$T/build.out" 2>&1 \
  || fail "3-shard build: $(cat "$T/build.out")"

# metric NAME SHARD: the value of an unlabelled metric on the shard's admin port
metric() {
  local adm
  adm=$(sed -n 2p "$T/$2.ready")
  curl -sf "http://$adm/metrics" | awk -v m="$1" '$1 == m { print $2 }'
}

compare() { # compare NAME EP…: twice, so the second round is all hits where the cache is on
  local name=$1
  shift
  for round in 1 2; do
    $C compare "$T/single" "$T/cluster/profiles" "$T/data/clicks.tsv" $NQ "$@" \
      >"$T/compare.out" 2>&1 || fail "$name, round $round: $(tail -5 "$T/compare.out")"
  done
}

# ---- configuration ----------------------------------------------------------------------------
$S --help >"$T/help" || fail "--help exited non-zero"
grep -q -- "rcache-bytes" "$T/help" || fail "--help does not mention rcache-bytes"
set +e
$S --index "$T/single" --listen tcp://127.0.0.1:1 --rcache-bytes 100 2>"$T/err"; rc=$?
set -e
[ $rc -eq 2 ] && grep -q "rcache-bytes.*below the minimum" "$T/err" \
  || fail "rcache-bytes 100: rc=$rc $(cat "$T/err")"

# ---- one shard on the whole index: default cache, a small one, none --------------------------
start_shard on --index "$T/single" --workers 2
start_shard small --index "$T/single" --workers 2 --rcache-bytes 65536
start_shard off --index "$T/single" --workers 2 --rcache-bytes 0
grep "event=config" "$T/on.log" | grep -q "rcache_bytes=67108864" \
  || fail "the default cache size is not in the effective config: $(grep config "$T/on.log")"
for s in on small off; do compare "$s" "${EP[$s]}"; done

req=$((2 * 2 * NQ)) # requests per shard: 2 rounds x (no user, a user) x NQ
hits=$(metric persrv_shard_rcache_hits_total on)
misses=$(metric persrv_shard_rcache_misses_total on)
entries=$(metric persrv_shard_rcache_entries on)
bytes=$(metric persrv_shard_rcache_bytes on)
[ $((hits + misses)) -eq $req ] || fail "on: hits $hits + misses $misses != $req requests"
[ "$misses" -eq "$entries" ] && [ "$misses" -le "$NQ" ] && [ "$hits" -ge $((3 * NQ)) ] \
  || fail "on: $hits hits, $misses misses, $entries entries for $NQ distinct queries"
[ "$bytes" -gt 0 ] && [ "$bytes" -le 67108864 ] || fail "on: $bytes bytes"
[ "$(metric persrv_shard_rcache_evictions_total on)" -eq 0 ] || fail "on: evictions"

sbytes=$(metric persrv_shard_rcache_bytes small)
evictions=$(metric persrv_shard_rcache_evictions_total small)
[ "$sbytes" -le 65536 ] || fail "small: $sbytes bytes held, bound 65536"
[ "$evictions" -gt 0 ] || fail "small: no eviction"
[ "$(metric persrv_shard_rcache_hits_total small)" -gt 0 ] || fail "small: no hit"

[ "$(metric persrv_shard_rcache_capacity_bytes off)" -eq 0 ] && \
  [ "$(metric persrv_shard_rcache_hits_total off)" -eq 0 ] && \
  [ "$(metric persrv_shard_rcache_misses_total off)" -eq 0 ] || fail "off: the cache was used"
for s in on small off; do stop $s; done

# ---- a 3-shard cluster with the cache on ----------------------------------------------------
for i in 0 1 2; do
  start_shard "s$i" --index "$T/cluster/shard-00$i" --shard $i --shards 3 --workers 2
done
compare "3 shards" "${EP[s0]}" "${EP[s1]}" "${EP[s2]}"
for i in 0 1 2; do
  [ "$(metric persrv_shard_rcache_hits_total s$i)" -ge $((3 * NQ)) ] || fail "s$i: too few hits"
  stop "s$i"
done
echo "test_shard_rcache: all checks passed ($hits hits, $misses misses on one shard; $evictions evictions in 64 KiB)"
