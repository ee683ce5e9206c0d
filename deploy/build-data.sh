#!/usr/bin/env bash
# The docker-compose `builder` service (one shot): generates the demo corpus and builds it
# into 2 shards in the named volume mounted at /data, unless a build of the same size is
# there already. Layout (the shards and the broker read it through their deploy/*.conf):
#   /data/data/      corpus.jsonl, embeddings.npy, clicks.tsv, images/ (builder generate; the
#                    broker serves images/ to its search page: image-root in broker.conf)
#   /data/cluster/   shard-000, shard-001, profiles, cluster.json (builder build --shards 2
#                    --version 1: the first version the shards import; `builder push` brings
#                    later ones)
#   PERSRV_DEMO_STICKERS  corpus size (default 543098)
#   PERSRV_DEMO_IMAGES    stickers with a placeholder picture: N, P% or all (default 25%;
#                         `builder generate --images`)
set -euo pipefail
N=${PERSRV_DEMO_STICKERS:-543098}
IMAGES=${PERSRV_DEMO_IMAGES:-25%}
D=${PERSRV_DATA_DIR:-/data}
KEY="$N images=$IMAGES"
if [ "$(cat "$D/cluster/.stickers" 2>/dev/null)" = "$KEY" ] && [ -e "$D/cluster/cluster.json" ]; then
  echo "persrv-build-data: $D/cluster already holds the $N-sticker build"
  exit 0
fi
rm -rf "$D/data" "$D/cluster" "$D/cluster.tmp"
builder generate --out "$D/data" --stickers "$N" --images "$IMAGES" --no-progress
mkdir -p "$D/data/images" # the broker's image-root, even with no pictures
builder build --corpus "$D/data/corpus.jsonl" --embeddings "$D/data/embeddings.npy" \
  --clicks "$D/data/clicks.tsv" --out "$D/cluster.tmp" --shards 2 --version 1
echo "$KEY" >"$D/cluster.tmp/.stickers"
mv "$D/cluster.tmp" "$D/cluster" # a half-built cluster is never taken for a complete one
echo "persrv-build-data: built $D/cluster ($N stickers, 2 shards)"
