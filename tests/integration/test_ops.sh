#!/usr/bin/env bash
# Operating the daemons (issue 14): build info, log files and SIGHUP, on a small cluster (2
# shards, a profile primary, a broker on 127.0.0.1, ports picked at run time), each daemon
# started with a config file that sets its log-level and log-file:
#   - persrv_build_info{version,commit,build_type} 1 on every /metrics (the broker's HTTP port
#     and admin port, the shard's and the profile service's admin ports), the same version,
#     commit and build type as --version prints;
#   - log-file: the daemons' lines go to the file, not stderr;
#   - SIGHUP after the log file was moved away and the config changed (log-level = debug, and
#     on the broker max-k, which lanes load per request, and drain-ms, read at start only): the
#     daemon is still alive, writes a new log file, the moved file keeps the old lines, the
#     reload line names log-level and max-k as changed and drain-ms as restart_needed, debug
#     lines now appear (the broker's event=request, the shard's event=search), and the new
#     max-k holds (k = 80 over it: 400, k = 50: 200);
#   - 20 SIGHUPs among 20 searches: every search answered, the daemons alive;
#   - SIGHUP with a broken config file: still alive, event=reload_failed naming the line, the
#     level unchanged; with an unchanged one (profile): changed=- restart_needed=-; to
#     log-level warn: the reload line is still written, the info exit line no longer;
#   - SIGTERM after all that: exit status 0, the exit line in the log file.
# usage: test_ops.sh BUILDER SHARD SHARD_CLIENT BROKER PROFILE
set -euo pipefail
B=$1
S=$2
C=$3
BR=$4
PD=$5
. "$(dirname "$0")/lib.sh"
ps_test_init ops
command -v curl >/dev/null || fail "curl is required (scripts/deps.sh installs it)"

$B generate --out "$T/data" --stickers 2000 --dim 16 --users 4 --clicks 500 --pairs 100 \
  --queries 50 --no-progress
$B build --corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy" \
  --clicks "$T/data/clicks.tsv" --out "$T/cluster" --shards 2 >"$T/build.out" 2>&1 \
  || fail "2-shard build: $(cat "$T/build.out")"
q=$(head -n 1 "$T/data/clicks.tsv" | cut -f2)

# wait_for FILE PATTERN: until FILE exists and holds a line matching PATTERN (grep -E), at most
# 30 s (a bound for a stalled daemon, not a timing check).
wait_for() {
  for _ in $(seq 1 600); do
    [ -e "$1" ] && grep -qE -- "$2" "$1" && return 0
    sleep 0.05
  done
  fail "no line matching '$2' in $1"
}
alive() { kill -0 "${PID[$1]}" 2>/dev/null || fail "$1 died: $2"; }

# ---- the cluster, each daemon logging to its file --------------------------------------------
for n in s0 s1; do printf 'log-level = info\nlog-file = %s\n' "$T/$n.file.log" >"$T/$n.conf"; done
start_shard s0 --config "$T/s0.conf" --workers 1 --index "$T/cluster/shard-000" --shard 0 --shards 2
start_shard s1 --config "$T/s1.conf" --workers 1 --index "$T/cluster/shard-001" --shard 1 --shards 2
printf 'log-level = info\nlog-file = %s\n' "$T/p.file.log" >"$T/p.conf"
start_profile p --config "$T/p.conf" --db "$T/pdb"
printf 'log-level = info\nlog-file = "%s"\nmax-k = 100\ndrain-ms = 200\n' "$T/broker.file.log" \
  >"$T/broker.conf"
start_broker broker "${EP[s0]},${EP[s1]}" --config "$T/broker.conf" --health-interval-ms 200
for n in s0 s1 p broker; do
  grep -q "event=config" "$T/$n.file.log" || fail "$n: no config line in its log file"
  grep -q "event=config" "$T/$n.log" && fail "$n: logged to stderr though log-file is set"
done

# ---- build info on every /metrics ------------------------------------------------------------
"$BR" --version >"$T/version"
read -r _ version _ commit build_type <"$T/version"
commit=${commit%,}
build_type=${build_type%)}
want="persrv_build_info{version=\"$version\",commit=\"$commit\",build_type=\"$build_type\"} 1"
for at in "broker $URL" "broker-admin http://$(sed -n 3p "$T/broker.ready")" \
  "s0-admin http://$(sed -n 2p "$T/s0.ready")" "p-admin http://$(sed -n 2p "$T/p.ready")"; do
  read -r who url <<<"$at"
  curl -fsS "$url/metrics" >"$T/metrics" || fail "$who: GET /metrics"
  grep -qxF "$want" "$T/metrics" || fail "$who /metrics: no '$want': $(grep build_info "$T/metrics")"
  grep -qx '# TYPE persrv_build_info gauge' "$T/metrics" || fail "$who /metrics: build_info TYPE"
done
echo "  persrv_build_info on 4 /metrics: version=$version commit=$commit build_type=$build_type"

# ---- SIGHUP: rotate the logs, re-read the config ---------------------------------------------
search() { # GET /v1/search?q=$q&k=$1: prints the status
  curl -s -o "$T/body" -w '%{http_code}' -G --data-urlencode "q=$q" --data-urlencode "k=$1" \
    "$URL/v1/search"
}
[ "$(search 10)" = 200 ] || fail "search before the reload"
grep -q "event=request" "$T/broker.file.log" && fail "a debug line at log-level info"
grep -q "event=search" "$T/s0.file.log" && fail "shard: a debug line at log-level info"

sed -i 's/^log-level = info/log-level = debug/; s/^max-k = 100/max-k = 50/; s/^drain-ms = 200/drain-ms = 300/' \
  "$T/broker.conf"
sed -i 's/^log-level = info/log-level = debug/' "$T/s0.conf"
for n in broker s0 p; do mv "$T/$n.file.log" "$T/$n.file.log.1"; done
for n in broker s0 p; do kill -HUP "${PID[$n]}"; done
for n in broker s0 p; do wait_for "$T/$n.file.log" "event=reload"; done
for n in broker s0 p; do alive "$n" "after SIGHUP"; done
grep -q "event=reload " "$T/broker.file.log.1" && fail "the reload line went to the moved file"
grep -q "event=config" "$T/broker.file.log.1" || fail "the moved file lost its lines"
grep -qE "level=info comp=broker event=reload changed=log-level,max-k restart_needed=drain-ms log_level=debug log_file=$T/broker.file.log$" \
  "$T/broker.file.log" || fail "broker reload line: $(grep event=reload "$T/broker.file.log")"
grep -qE "comp=shard event=reload changed=log-level restart_needed=- log_level=debug" \
  "$T/s0.file.log" || fail "shard reload line: $(grep event=reload "$T/s0.file.log")"
grep -qE "comp=profile event=reload changed=- restart_needed=- log_level=info" "$T/p.file.log" \
  || fail "profile reload line: $(grep event=reload "$T/p.file.log")"
echo "  SIGHUP: $(grep -o 'event=reload.*' "$T/broker.file.log")"

# the new level is in effect, and the new max-k (lanes load it per request)
[ "$(search 80)" = 400 ] || fail "k=80 after the reload to max-k 50: $(cat "$T/body")"
grep -q "k: must be an integer in 1..50" "$T/body" || fail "k=80: $(cat "$T/body")"
[ "$(search 50)" = 200 ] || fail "k=50 after the reload: $(cat "$T/body")"
wait_for "$T/broker.file.log" "level=debug comp=broker event=request"
wait_for "$T/s0.file.log" "level=debug comp=shard event=search"
grep -q "event=request" "$T/broker.file.log.1" && fail "a debug line in the moved file"
echo "  debug lines after the reload: broker event=request, shard event=search"

# SIGHUPs while searching (both doors' threads busy): every search answered, one reload each
for i in $(seq 1 20); do
  kill -HUP "${PID[broker]}" "${PID[s0]}"
  [ "$(search 10)" = 200 ] || fail "search $i among SIGHUPs: $(cat "$T/body")"
done
for _ in $(seq 1 600); do
  [ "$(grep -c "event=reload " "$T/broker.file.log")" -ge 2 ] && break
  sleep 0.05
done
for n in broker s0; do alive "$n" "after 20 SIGHUPs"; done
grep -q "event=reload_failed" "$T/broker.file.log" "$T/s0.file.log" && fail "a reload failed"
echo "  20 SIGHUPs among 20 searches: all answered, $(grep -c "event=reload " "$T/broker.file.log") broker reloads"

# a config that no longer parses: nothing changes, the daemon lives on
echo "max-k is many" >>"$T/broker.conf"
mv "$T/broker.file.log" "$T/broker.file.log.2"
kill -HUP "${PID[broker]}"
wait_for "$T/broker.file.log" "event=reload_failed"
alive broker "after SIGHUP with a broken config"
grep -q "reload_failed msg=\"$T/broker.conf:5: expected 'key = value', got 'max-k is many'\"" \
  "$T/broker.file.log" || fail "reload_failed line: $(grep reload_failed "$T/broker.file.log")"
grep -q "log_level=debug" "$T/broker.file.log" || fail "reload_failed: the level changed"
[ "$(search 10)" = 200 ] || fail "search after a failed reload"
echo "  a broken config: $(grep -o 'event=reload_failed msg="[^"]*"' "$T/broker.file.log")"

# a quieter level: the reload line itself is still written, info lines no longer are
sed -i 's/^log-level = info/log-level = warn/' "$T/p.conf"
kill -HUP "${PID[p]}"
wait_for "$T/p.file.log" "event=reload changed=log-level restart_needed=- log_level=warn"
alive p "after SIGHUP to log-level warn"

# ---- SIGTERM still stops them cleanly, logging to the file -----------------------------------
for n in broker s0 s1 p; do
  rc=0
  kill -TERM "${PID[$n]}"
  wait "${PID[$n]}" || rc=$?
  unset "PID[$n]"
  [ $rc -eq 0 ] || fail "$n exited with status $rc after SIGTERM"
  if [ "$n" = p ]; then # at warn: no info exit line
    grep -q "event=exit" "$T/$n.file.log" && fail "p logged an info line at log-level warn"
  else
    grep -q "event=exit status=0" "$T/$n.file.log" || fail "$n did not log a clean exit to its file"
  fi
done
echo "test_ops: all checks passed"
