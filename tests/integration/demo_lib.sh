# demo_lib.sh — scripts/cluster-up.sh on ports picked at run time, for the tests that run the
# README's local cluster (test_demo.sh, test_enrich_e2e.sh); sourced, not run. The caller
# exports the PERSRV_* settings (PERSRV_DEMO_DIR, PERSRV_SKIP_BUILD=1, PERSRV_BIN_DIR ...),
# and defines ROOT (the source tree), T (its temp dir), RUN ($PERSRV_DEMO_DIR/run) and fail.
#
#   cluster_up_free_ports   runs cluster-up.sh (or $UP_SCRIPT: demo.sh, which runs it and then
#                           tells about the single node; output in $T/up.out) on a random free base
#                           port; another process may take a port between the pick and the
#                           bind: then it retries (5 attempts). Sets BASE (the front door,
#                           shards on BASE+1..BASE+4, profiles BASE+5, BASE+6) and HTTP.

port_in_use() { (: <>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

cluster_up_free_ports() {
  local attempt p busy rc
  for attempt in 1 2 3 4 5; do
    BASE=$((20000 + RANDOM % 30000))
    HTTP=$((BASE + 7))
    busy=0
    for p in $BASE $((BASE + 1)) $((BASE + 2)) $((BASE + 3)) $((BASE + 4)) $((BASE + 5)) \
      $((BASE + 6)) $HTTP; do
      port_in_use "$p" && busy=1
    done
    [ $busy = 0 ] || continue
    rc=0
    PERSRV_BASE_PORT=$BASE PERSRV_HTTP_PORT=$HTTP "$ROOT/scripts/${UP_SCRIPT:-cluster-up.sh}" \
      >"$T/up.out" 2>&1 || rc=$?
    [ $rc = 0 ] && return 0
    [ $rc = 3 ] || grep -q "Address already in use" "$RUN"/*.log 2>/dev/null \
      || fail "cluster-up.sh exited with status $rc (attempt $attempt)"
    echo "  attempt $attempt: a port was taken, retrying"
  done
  fail "cluster-up.sh: no free ports in 5 attempts"
}
