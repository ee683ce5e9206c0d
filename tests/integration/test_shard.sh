#!/usr/bin/env bash
# The shard daemon end to end, on a small generated corpus: real `shard` processes on
# 127.0.0.1 (ports picked at run time, readiness from --ready-file), queried over ZeroMQ by
# shard_client:
#   - configuration: --help, missing/bad settings, an unknown config key with its line number,
#     precedence flag > env > file (as logged in the effective config line);
#   - a 3-shard cluster (builder build --shards 3) merged == the single-node engine, with and
#     without profiles; a 1-shard cluster serving the single-node index, likewise;
#   - bad input (garbage, empty, version 99, no/300/invalid-UTF-8 tokens, oversized frame ...)
#     answered with errors while the shard keeps serving; GetSticker; health over DEALER and REQ,
#     answered by the server loop itself (its drain log counts them), also behind 2,000
#     searches queued at a one-worker shard (before the last of them);
#   - SIGTERM -> exit status 0, pid and ready files removed.
# usage: test_shard.sh BUILDER SHARD SHARD_CLIENT
set -euo pipefail
B=$1
S=$2
C=$3
. "$(dirname "$0")/lib.sh"
ps_test_init shard

$B generate --out "$T/data" --stickers 20000 --dim 32 --users 4 --clicks 3000 --pairs 500 \
  --queries 300 --no-progress
$B build --corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy" \
  --clicks "$T/data/clicks.tsv" --out "$T/single" >/dev/null 2>&1 || fail "single-node build"
$B build --corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy" \
  --clicks "$T/data/clicks.tsv" --out "$T/cluster" --shards 3 >"$T/build.out" 2>&1 \
  || fail "3-shard build: $(cat "$T/build.out")"

# ---- configuration -----------------------------------------------------------------------
$S --help >"$T/help" || fail "--help exited non-zero"
for f in --index --listen --workers --max-frame --ready-file PERSRV_LISTEN; do
  grep -q -- "$f" "$T/help" || fail "--help does not mention $f"
done
set +e
$S --index "$T/cluster/shard-000" 2>"$T/err"; rc=$?
[ $rc -eq 2 ] && grep -q "listen is required" "$T/err" || fail "no --listen: rc=$rc $(cat "$T/err")"
$S --index "$T/cluster/shard-000" --listen tcp://127.0.0.1:1 --workers many 2>"$T/err"; rc=$?
[ $rc -eq 2 ] && grep -q -- "--workers: 'many'" "$T/err" || fail "bad --workers: rc=$rc $(cat "$T/err")"
$S --index "$T/cluster/shard-000" --listen tcp://127.0.0.1:1 --bogus 1 2>"$T/err"; rc=$?
[ $rc -eq 2 ] && grep -q -- "unknown flag --bogus" "$T/err" || fail "unknown flag: rc=$rc $(cat "$T/err")"
printf '# shard config\nindex = %s\n\nwokers = 3\n' "$T/cluster/shard-000" >"$T/bad.conf"
$S --config "$T/bad.conf" --listen tcp://127.0.0.1:1 2>"$T/err"; rc=$?
[ $rc -eq 2 ] && grep -q "bad.conf:4: unknown key 'wokers'" "$T/err" \
  || fail "unknown config key: rc=$rc $(cat "$T/err")"
$S --index "$T/nowhere" --listen tcp://127.0.0.1:1 2>"$T/err"; rc=$?
[ $rc -eq 1 ] && grep -q "event=start_failed" "$T/err" || fail "missing index: rc=$rc $(cat "$T/err")"
set -e

# ---- a 1-shard cluster on the single-node index, configured by file + env + flag ----------
printf 'index = %s   # the whole corpus\nworkers = 1\nlog-level = warn\nshards = 1\n' \
  "$T/single" >"$T/one.conf"
PERSRV_WORKERS=3 PERSRV_LOG_LEVEL=info start_shard one --config "$T/one.conf" --workers 2
grep "event=config" "$T/one.log" | grep -q "workers=2 .*log_level=info" \
  || fail "precedence flag > env > file not in the effective config: $(grep config "$T/one.log")"
$C health "${EP[one]}" --expect-shard 0 --expect-stickers 20000 >/dev/null
$C compare "$T/single" "$T/cluster/profiles" "$T/data/clicks.tsv" 25 "${EP[one]}" \
  || fail "1-shard cluster differs from the single node"
stop one

# ---- the 3-shard cluster ---------------------------------------------------------------
total=0
for i in 0 1 2; do
  start_shard "s$i" --index "$T/cluster/shard-00$i" --shard $i --shards 3 --max-frame 262144 \
    --workers 2
  n=$(sed -n "s|.*shard-00$i: \([0-9]*\) stickers.*|\1|p" "$T/build.out")
  [ -n "$n" ] || fail "builder did not report shard $i"
  $C health "${EP[s$i]}" --expect-shard $i --expect-stickers "$n" || fail "health of shard $i"
  total=$((total + n))
done
[ $total -eq 20000 ] || fail "shards hold $total stickers, not 20000"
$C health "${EP[s0]}" --req --expect-shard 0 >/dev/null || fail "health from a REQ peer"
# a busy shard still answers health at once: 2,000 searches then a health request on one
# connection to a shard with one worker; the health reply comes before the last search's (the
# server loop answers it; queued at the worker it would come after all 2,000)
start_shard busy --index "$T/cluster/shard-002" --shard 2 --shards 3 --workers 1 \
  --max-inflight 4096 --hwm 4096
$C health-busy "${EP[busy]}" 2000 || fail "health waited behind the searches"
stop busy

$C bad "${EP[s1]}" 262144 || fail "bad input"
grep -q "level=warn comp=shard event=request_failed" "$T/s1.log" \
  || fail "bad requests were not logged at warn"
$C compare "$T/single" "$T/cluster/profiles" "$T/data/clicks.tsv" 60 \
  "${EP[s0]}" "${EP[s1]}" "${EP[s2]}" || fail "3-shard cluster differs from the single node"
$C stickers "$T/single" "${EP[s0]}" "${EP[s1]}" "${EP[s2]}" || fail "GetSticker"

for i in 0 1 2; do stop "s$i"; done
# health is answered by the server loop itself (never queued behind searches at the workers):
# s0 answered its two health requests there
grep "event=drained" "$T/s0.log" | grep -q "served_inline=2 " \
  || fail "s0 did not answer health inline: $(grep drained "$T/s0.log")"
echo "test_shard: all checks passed"
