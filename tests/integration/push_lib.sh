# push_lib.sh — helpers of the push tests (test_push.sh, test_push_faults.sh; issue 9), sourced
# after lib.sh. The caller sets S, C, BR as for lib.sh, and TOKEN_FILE (the admin token).
#
#   make_versions N_STICKERS      $T/data (generated), $T/v1 and $T/v2 (2 shards each, versions
#                                 1 and 2), $T/single1 and $T/single2 (single-node, same inputs);
#                                 version 2's corpus has the text of every 5th sticker changed
#                                 and other utility weights, so its answers differ
#   make_requests FILE            distinct click-log queries, each without a user and with one
#   start_shard_at NAME PORT ADMIN FLAGS…  a shard on ZeroMQ port PORT and admin port ADMIN
#                                 (0: a free one), sets PID, EP and ADM[NAME] (host:port)
#   start_cluster                 shards s0a s0b (shard 0), s1a s1b (shard 1) with data dirs
#                                 $T/d_NAME seeded from $T/v1, a broker with v1's profiles
#                                 (deadline BROKER_DEADLINE_MS, default 5000; a health probe may
#                                 take 2 s before a replica counts as down), all with admin ports
#                                 and the token; writes $T/topo.json; waits until the broker
#                                 serves version 1; sets BADM (its admin host:port), URL, ZEP
#   restart_replica NAME          start replica NAME again on its old ports and data dir
#   wait_until SECONDS WHAT CMD…  run CMD every 0.2 s until it succeeds (fail after SECONDS)
#   healthz HOSTPORT              GET /healthz of an admin port (body on stdout)
#   expect_consistent V           every replica's /healthz active == V, the broker's version ==
#                                 V, and searches through the broker are complete and name V

declare -gA ADM SHARD_ARGS
REPLICAS=(s0a s0b s1a s1b)

make_versions() {
  local n=$1
  $B generate --out "$T/data" --stickers "$n" --dim 32 --users 4 --clicks 3000 --pairs 500 \
    --queries 300 --no-progress
  # Version 2: every 5th sticker gets more OCR text (empty OCR included, so the corpus-wide
  # statistics move too), every 7th another emotion; line count and order are kept, so the
  # embeddings (one row per line) stay valid. Ids stay as they were (text edit, not JSON
  # numbers through jq, which would round 19-digit ids).
  awk 'NR % 5 == 0 { sub(/"ocr":"/, "\"ocr\":\"好累 加油 ") }
       NR % 7 == 0 { sub(/"emotion":"/, "\"emotion\":\"晚安\\n") } { print }' \
    "$T/data/corpus.jsonl" >"$T/data/corpus2.jsonl"
  [ "$(wc -l <"$T/data/corpus2.jsonl")" = "$(wc -l <"$T/data/corpus.jsonl")" ] \
    || fail "version 2's corpus lost lines"
  [ "$(cut -c1-40 "$T/data/corpus2.jsonl" | grep -o '"id":[0-9]*' | md5sum)" = \
    "$(cut -c1-40 "$T/data/corpus.jsonl" | grep -o '"id":[0-9]*' | md5sum)" ] \
    || fail "version 2's corpus changed ids"
  local common=(--embeddings "$T/data/embeddings.npy" --clicks "$T/data/clicks.tsv")
  local a1=(--corpus "$T/data/corpus.jsonl" "${common[@]}" --version 1)
  local a2=(--corpus "$T/data/corpus2.jsonl" "${common[@]}" --utility-w 1,0.5,2 --version 2)
  $B build "${a1[@]}" --out "$T/v1" --shards 2 >"$T/build.out" 2>&1 || fail "build v1: $(cat "$T/build.out")"
  $B build "${a1[@]}" --out "$T/single1" >"$T/build.out" 2>&1 || fail "build single1: $(cat "$T/build.out")"
  $B build "${a2[@]}" --out "$T/v2" --shards 2 >"$T/build.out" 2>&1 || fail "build v2: $(cat "$T/build.out")"
  $B build "${a2[@]}" --out "$T/single2" >"$T/build.out" 2>&1 || fail "build single2: $(cat "$T/build.out")"
  for v in 1 2; do
    jq -e --argjson v $v '.version == $v and .shards == 2' "$T/v$v/cluster.json" >/dev/null \
      || fail "v$v/cluster.json does not name version $v: $(cat "$T/v$v/cluster.json")"
  done
  [ "$(jq -r .fingerprint "$T/v1/cluster.json")" != "$(jq -r .fingerprint "$T/v2/cluster.json")" ] \
    || fail "the two builds have one fingerprint"
}

make_requests() {
  cut -f2 "$T/data/clicks.tsv" | sed '/^[[:space:]]*$/d' | sort -u >"$T/queries"
  [ "$(wc -l <"$T/queries")" -ge 100 ] || fail "too few queries"
  awk -v OFS='\t' '{ u = sprintf("u%02d", (NR % 4) + 1); print $0, ""; print $0, u }' \
    "$T/queries" >"$1"
}

# start_shard_at NAME PORT ADMIN FLAGS… (PORT 0: a free port, retried; ADMIN 0: the kernel's)
start_shard_at() {
  local name=$1 port=$2 admin=$3 pid try
  shift 3
  for try in 1 2 3 4 5; do
    local p=$port
    [ "$p" = 0 ] && p=$($C freeport)
    rm -f "$T/$name.ready"
    "$S" --listen "tcp://127.0.0.1:$p" --admin "127.0.0.1:$admin" --admin-token-file "$TOKEN_FILE" \
      --ready-file "$T/$name.ready" --pid-file "$T/$name.pid" "$@" 2>>"$T/$name.log" &
    pid=$!
    for _ in $(seq 1 1200); do
      [ -s "$T/$name.ready" ] && [ "$(wc -l <"$T/$name.ready")" -ge 2 ] && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    if [ -s "$T/$name.ready" ] && kill -0 "$pid" 2>/dev/null; then
      PID[$name]=$pid
      EP[$name]="tcp://127.0.0.1:$p"
      ADM[$name]=$(sed -n 2p "$T/$name.ready")
      grep -qx "${EP[$name]}" "$T/$name.ready" || fail "$name: ready file does not name its endpoint"
      [ -n "${ADM[$name]}" ] || fail "$name: ready file does not name its admin address"
      return 0
    fi
    wait "$pid" || true
    [ "$port" = 0 ] && grep -q "Address already in use" "$T/$name.log" && continue
    fail "$name did not start"
  done
  fail "$name: no free port in 5 attempts"
}

start_cluster() {
  local r s
  for r in "${REPLICAS[@]}"; do
    s=${r:1:1}
    SHARD_ARGS[$r]="--workers 1 --data $T/d_$r --shard $s --shards 2"
    # shellcheck disable=SC2086
    start_shard_at "$r" 0 0 ${SHARD_ARGS[$r]} --index "$T/v1/shard-00$s"
  done
  start_broker broker "${EP[s0a]}|${EP[s0b]},${EP[s1a]}|${EP[s1b]}" --profiles "$T/v1/profiles" \
    --deadline-ms "${BROKER_DEADLINE_MS:-5000}" --retries 1 --health-interval-ms 2000 --admin 127.0.0.1:0 \
    --admin-token-file "$TOKEN_FILE"
  BADM=$(sed -n 3p "$T/broker.ready")
  [ -n "$BADM" ] || fail "the broker's ready file does not name its admin address"
  # The broker adopts the version every shard answers from.
  broker_on_1() {
    curl -s -o /dev/null -G --data-urlencode "q=$(head -n 1 "$T/queries")" "$URL/v1/search"
    healthz "$BADM" | jq -e '.version == 1' >/dev/null
  }
  wait_until 120 "the broker to adopt version 1" broker_on_1
  jq -n --arg a "${ADM[s0a]}" --arg b "${ADM[s0b]}" --arg c "${ADM[s1a]}" --arg d "${ADM[s1b]}" \
    --arg br "$BADM" '{shards: [["http://\($a)", "http://\($b)"], ["http://\($c)", "http://\($d)"]],
    brokers: ["http://\($br)"]}' >"$T/topo.json"
}

restart_replica() {
  local name=$1 port=${EP[$1]##*:} admin=${ADM[$1]##*:}
  # shellcheck disable=SC2086
  start_shard_at "$name" "$port" "$admin" ${SHARD_ARGS[$name]}
}

wait_until() {
  local secs=$1 what=$2 i
  shift 2
  for ((i = 0; i < secs * 5; i++)); do
    "$@" && return 0
    sleep 0.2
  done
  fail "waited $secs s for $what"
}

healthz() {
  curl -sf --max-time 30 "http://$1/healthz"
}

expect_consistent() {
  local v=$1 r body q
  for r in "${REPLICAS[@]}"; do
    body=$(healthz "${ADM[$r]}") || fail "$r: /healthz does not answer"
    jq -e --argjson v "$v" '.active == $v' <<<"$body" >/dev/null \
      || fail "$r: active is not $v: $body"
  done
  body=$(healthz "$BADM") || fail "broker: /healthz does not answer"
  jq -e --argjson v "$v" '.version == $v' <<<"$body" >/dev/null \
    || fail "broker: version is not $v: $body"
  while read -r q; do
    body=$(curl -s --max-time 60 -G --data-urlencode "q=$q" --data-urlencode "user=u01" \
      "$URL/v1/search") || fail "search '$q': curl failed"
    jq -e --argjson v "$v" '.version == $v and .partial == false and (.hits | length) > 0' \
      <<<"$body" >/dev/null || fail "search '$q' is not a complete answer of version $v: $body"
  done < <(head -n 5 "$T/queries")
}
