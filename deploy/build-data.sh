#!/usr/bin/env bash
# The docker-compose `builder` service (one shot): generates the demo corpus and builds it
# into 2 shards in the named volume mounted at /data, unless a build of the same size is
# there already. Layout (the shards and the broker read it through their deploy/*.conf):
#   /data/data/      corpus.jsonl, embeddings.npy, clicks.tsv (builder generate)
#   /data/cluster/   shard-000, shard-001, profiles, cluster.json (builder build --shards 2
#                    --version 1: the first version the shards import; `builder push` brings
#                    later ones)
#   PERSRV_DEMO_STICKERS  corpus size (default 543098)
set -euo pipefail
N=${PERSRV_DEMO_STICKERS:-543098}
D=${PERSRV_DATA_DIR:-/data}
if [ "$(cat "$D/cluster/.stickers" 2>/dev/null)" = "$N" ] && [ -e "$D/cluster/cluster.json" ]; then
  echo "persrv-build-data: $D/cluster already holds the $N-sticker build"
  exit 0
fi
rm -rf "$D/data" "$D/cluster" "$D/cluster.tmp"
builder generate --out "$D/data" --stickers "$N" --no-progress
builder build --corpus "$D/data/corpus.jsonl" --embeddings "$D/data/embeddings.npy" \
  --clicks "$D/data/clicks.tsv" --out "$D/cluster.tmp" --shards 2 --version 1
echo "$N" >"$D/cluster.tmp/.stickers"
mv "$D/cluster.tmp" "$D/cluster" # a half-built cluster is never taken for a complete one
echo "persrv-build-data: built $D/cluster ($N stickers, 2 shards)"
