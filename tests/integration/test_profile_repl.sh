#!/usr/bin/env bash
# The profile service's replication (DESIGN §2, §3.2): a primary with a 64 KB memtable and no
# WAL retention (--wal-ttl-s 0 --wal-size-mb 0), so the WAL of old writes is deleted at every
# flush, and three replica situations:
#   1. r2 tails the primary from the start, through 2,000 clicks.
#   2. r1 starts EMPTY after those clicks: the WAL from sequence 1 is gone, so it must catch up
#      through a checkpoint (its log says so) and reach the primary's checksum and seq.
#   3. r1 is stopped (SIGTERM, exit 0), 3,000 more clicks flush the WAL it would need, and r1
#      restarted must see it gone, bootstrap again and converge.
# Then: one user's clicks appear in get_clicks on every node in order; a click sent to a
# replica is refused; bad requests (wrong dim, empty user, garbage frame) get errors and store
# nothing (checksum unchanged); every daemon exits 0 on SIGTERM.
# usage: test_profile_repl.sh PROFILE PROFILE_CLIENT
set -euo pipefail
PD=$1
PC=$2
DIM=16
. "$(dirname "$0")/lib.sh"
ps_test_init profile_repl
START=$SECONDS


# converge NAME: within 60 s the replica's checksum line (checksum, keys, seq) equals the
# primary's, and it reports ready.
converge() {
  local want got
  want=$("$PC" checksum "${EP[pp]}")
  for _ in $(seq 1 1200); do
    got=$("$PC" checksum "${EP[$1]}")
    [ "$got" = "$want" ] && break
    sleep 0.05
  done
  [ "$got" = "$want" ] || fail "$1: checksum/keys/seq '$got', primary '$want' after 60 s"
  "$PC" health "${EP[$1]}" | grep -q '^ready=1 ' || fail "$1 converged but is not ready"
  echo "  $1 == primary: $got"
}

bootstraps() { grep -c 'event=bootstrap_done' "$T/$1.log" || true; }

start_profile pp --db "$T/pp" --role primary --write-buffer-kb 64 --wal-ttl-s 0 --wal-size-mb 0
"$PC" health "${EP[pp]}" | grep -q '^ready=1 seq=0$' || fail "a new primary: $("$PC" health "${EP[pp]}")"
start_profile r2 --db "$T/r2" --role replica --primary "${EP[pp]}" --poll-ms 2

# ---- 1. 2,000 clicks; r2 tails them ---------------------------------------------------------
"$PC" flood "${EP[pp]}" 50 2000 $DIM u | grep -qx 'acked=2000' || fail "flood 1"
converge r2

# ---- 2. an empty replica started late catches up through a checkpoint -----------------------
start_profile r1 --db "$T/r1" --role replica --primary "${EP[pp]}"
converge r1
[ "$(bootstraps r1)" -ge 1 ] || fail "r1 caught up without a checkpoint (WAL from seq 1 kept?)"
grep 'event=bootstrap_done' "$T/r1.log" | head -n 1 | sed 's/^/  r1: /'

# ---- 3. restarted after its WAL position is gone: bootstrap again ---------------------------
stop r1
"$PC" flood "${EP[pp]}" 60 3000 $DIM v | grep -qx 'acked=3000' || fail "flood 2"
start_profile r1 --db "$T/r1" --role replica --primary "${EP[pp]}"
converge r1
[ "$(bootstraps r1)" -ge 2 ] || fail "r1 restarted behind a deleted WAL without a new checkpoint"
grep 'event=bootstrap_done' "$T/r1.log" | tail -n 1 | sed 's/^/  r1: /'
grep -q 'event=bootstrap_start reason=wal_gone' "$T/r1.log" || fail "r1 never logged wal_gone"
converge r2
echo "  r2 bootstrapped $(bootstraps r2) time(s) while tailing"

# ---- 4. one user's clicks, in order, on every node --------------------------------------------
for s in 11 12 13 11 900; do
  "$PC" click "${EP[pp]}" alice "$s" $DIM "query $s" >/dev/null || fail "click alice $s"
done
converge r1
converge r2
for n in pp r1 r2; do
  got=$("$PC" clicks "${EP[$n]}" alice | tr '\n' ' ')
  [ "$got" = "11 12 13 11 900 " ] || fail "$n: alice's clicks '$got'"
  "$PC" profile "${EP[$n]}" alice | grep -q '^k=[1-5] ' || fail "$n: alice has no profile"
done
echo "  alice's 5 clicks in order on pp, r1, r2; profile $("$PC" profile "${EP[r1]}" alice)"

# ---- 5. replicas refuse writes; bad requests store nothing --------------------------------------
sum0=$("$PC" checksum "${EP[pp]}")
expect_error() { # WHAT CODE PATTERN CMD...
  local what=$1 code=$2 pat=$3 out rc=0
  shift 3
  out=$("$@" 2>&1) || rc=$?
  [ $rc -eq 3 ] || fail "$what: exit $rc ($out), expected an Error reply"
  echo "$out" | grep -q "^error $code: .*$pat" || fail "$what: '$out', expected $code /$pat/"
  echo "  $what -> $out"
}
expect_error "click on a replica" invalid_argument "replica" \
  "$PC" click "${EP[r1]}" bob 5 $DIM
expect_error "click of the wrong dim" invalid_argument "7 floats, this service holds $DIM" \
  "$PC" click "${EP[pp]}" bob 5 7
expect_error "click without a user" invalid_argument "click.user: empty" \
  "$PC" click "${EP[pp]}" "" 5 $DIM
expect_error "garbage frame" parse_error "" "$PC" raw "${EP[pp]}" ff00ff00deadbeef0102
expect_error "empty frame" parse_error "" "$PC" raw "${EP[pp]}" ""
[ "$("$PC" checksum "${EP[pp]}")" = "$sum0" ] || fail "a refused request changed the primary"
converge r1
"$PC" health "${EP[pp]}" | grep -q '^ready=1 ' || fail "the primary is not ready after bad input"

# ---- 6. clean exits ---------------------------------------------------------------------------
stop r1
stop r2
stop pp
echo "profile replication: 5,005 clicks; r1 bootstrapped $(bootstraps r1) times, r2" \
  "$(bootstraps r2); all converged; bad input refused; $((SECONDS - START)) s"
