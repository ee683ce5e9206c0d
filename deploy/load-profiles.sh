#!/usr/bin/env bash
# The docker-compose `profile-loader` service (one shot, run on every `docker-compose up`):
# loads the demo build's offline user profiles into the profile service's primary through its
# admin port (`builder push-profiles --admin`). Safe to run any number of times: the primary
# MERGES a load with what it holds (a user's stored history becomes the union of both, online
# clicks stay the newest, the click log is never touched, and a user who clicked since keeps
# the centroids those clicks made), and loading the same profiles again changes nothing.
#
#   PERSRV_DATA_DIR          the builder service's volume (default /data): data/corpus.jsonl,
#                            data/embeddings.npy, data/clicks.tsv
#   PERSRV_PROFILE_ADMIN     the primary's admin URL (default http://profile0:7201)
#   PERSRV_ADMIN_TOKEN_FILE  the admin token (default /run/secrets/persrv/admin-token, written
#                            by the secrets-init service)
#   PERSRV_LOADER_WAIT_S     how long to wait for the primary's admin port (default 300)
# The same script runs outside Docker (tests/integration/test_profile_load.sh runs it against
# local daemons, twice, with clicks in between) with `builder` on PATH.
set -euo pipefail
D=${PERSRV_DATA_DIR:-/data}
ADMIN=${PERSRV_PROFILE_ADMIN:-http://profile0:7201}
TOKEN_FILE=${PERSRV_ADMIN_TOKEN_FILE:-/run/secrets/persrv/admin-token}
WAIT_S=${PERSRV_LOADER_WAIT_S:-300}
me=persrv-load-profiles

for f in corpus.jsonl embeddings.npy clicks.tsv; do
  [ -r "$D/data/$f" ] || { echo "$me: $D/data/$f is missing (has the builder service run?)" >&2; exit 1; }
done
[ -r "$TOKEN_FILE" ] || { echo "$me: cannot read the admin token file $TOKEN_FILE" >&2; exit 1; }

# The primary, not a replica (a replica refuses loads anyway, with a clearer error here).
deadline=$((SECONDS + WAIT_S))
until health=$(curl -fsS --max-time 5 "$ADMIN/healthz" 2>/dev/null) && [[ $health == *'"role":"primary"'* ]]; do
  if [ $SECONDS -ge $deadline ]; then
    echo "$me: no primary answered $ADMIN/healthz within $WAIT_S s (last answer: ${health:-none})" >&2
    exit 1
  fi
  sleep 1
done

builder push-profiles --corpus "$D/data/corpus.jsonl" --embeddings "$D/data/embeddings.npy" \
  --clicks "$D/data/clicks.tsv" --admin "$ADMIN" --token-file "$TOKEN_FILE"
echo "$me: merged the offline profiles into $ADMIN"
