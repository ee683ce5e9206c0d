#!/usr/bin/env bash
# The broker's search page (GET /) in headless Chromium (issue 14): a 2-shard cluster of a
# generated corpus with pictures for half of its stickers, the profile service, and a broker
# serving the pictures (--image-root). search_page.py drives the page over the DevTools protocol:
# types a query and a user, searches, checks the hits' pictures loaded (and the fallback boxes),
# opens a score breakdown, presses "click" on a hit and checks the page shows the stored click
# and the ranking change, and saves a screenshot. Then the click must be in the profile
# primary's log for that user.
# usage: test_search_page.sh BUILDER SHARD SHARD_CLIENT BROKER PROFILE PROFILE_CLIENT SCREENSHOT
set -euo pipefail
B=$1
S=$2
C=$3
BR=$4
PD=$5
PC=$6
SHOT=$7
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
ps_test_init search_page
CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
[ -n "$CHROMIUM" ] || fail "chromium is required (scripts/deps.sh installs it)"
PY=$(command -v python3 || true)
[ -n "$PY" ] || fail "python3 is required"

$B generate --out "$T/data" --stickers 3000 --dim 16 --users 2 --clicks 300 --pairs 60 \
  --queries 40 --images 1500 --no-progress 2>"$T/gen.log" || fail "generate: $(cat "$T/gen.log")"
BARGS=(--corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy"
  --clicks "$T/data/clicks.tsv")
$B build "${BARGS[@]}" --out "$T/cluster" --shards 2 >"$T/build.out" 2>&1 \
  || fail "build: $(cat "$T/build.out")"
start_profile pp --db "$T/pp" --role primary
$B push-profiles "${BARGS[@]}" --primary "${EP[pp]}" >"$T/push.out" 2>&1 \
  || fail "push-profiles: $(cat "$T/push.out")"
start_shard s0 --workers 1 --index "$T/cluster/shard-000" --shard 0 --shards 2
start_shard s1 --workers 1 --index "$T/cluster/shard-001" --shard 1 --shards 2
start_broker broker "${EP[s0]},${EP[s1]}" --profile-replicas "${EP[pp]}" \
  --profile-primary "${EP[pp]}" --profile-staleness-ms 100 --deadline-ms 2000 \
  --image-root "$T/data/images"

# The click log's most asked query: it has hits to spare. A user with no history, so the click
# makes a visible difference (the answer becomes personalized).
Q=$(cut -f2 "$T/data/clicks.tsv" | sort | uniq -c | sort -k1,1nr -k2 | awk 'NR == 1' | sed -E 's/^ *[0-9]+ //')
[ -n "$Q" ] || fail "no query in the click log"
U=page-user

mkdir -p "$T/chrome"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
  --no-default-browser-check --disable-extensions --disable-background-networking \
  --disable-sync --disable-component-update --remote-debugging-address=127.0.0.1 \
  --remote-debugging-port=0 --user-data-dir="$T/chrome" about:blank >"$T/chromium.out" 2>&1 &
PID[chromium]=$!

rm -f "$SHOT"
"$PY" "$HERE/search_page.py" "$T/chrome" "$URL" "$Q" "$U" "$SHOT" >"$T/page.out" 2>&1 \
  || { cat "$T/page.out" >&2; fail "the search page test failed"; }
sed 's/^/  /' "$T/page.out" | grep -v '^  clicked='
read -r clicked old new <<<"$(grep '^clicked=' "$T/page.out" | sed -E 's/[a-z_]+=//g')"
[ -n "$clicked" ] || fail "search_page.py named no clicked sticker"

# The click is stored: the primary's log for the user holds exactly that sticker.
[ "$("$PC" clicks "${EP[pp]}" "$U")" = "$clicked" ] \
  || fail "the primary's click log of $U is '$("$PC" clicks "${EP[pp]}" "$U")', want $clicked"
[ -s "$SHOT" ] && [ "$(head -c 8 "$SHOT" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] \
  || fail "no PNG screenshot at $SHOT"
echo "  click of $clicked (rank $old -> $new) stored for $U; screenshot $SHOT ($(wc -c <"$SHOT") bytes)"

kill -TERM "${PID[chromium]}"
wait "${PID[chromium]}" || true
unset "PID[chromium]"
stop broker
stop s0
stop s1
stop pp
echo "PASS"
