#!/usr/bin/env bash
# Sets up everything on a fresh Debian 12 machine and runs the main job: generate the demo
# corpus, build its index, answer a personalized query.
#   PERSRV_DEMO_STICKERS  corpus size (default 543098, the paper's)
#   PERSRV_DEMO_DIR       where data and index go (default ./demo)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${PERSRV_DEMO_STICKERS:-543098}
DIR=${PERSRV_DEMO_DIR:-demo}
scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
B=build/builder/builder
P=build/client/persrv
if [ "$(cat "$DIR/.stickers" 2>/dev/null)" != "$N" ]; then
  rm -rf "$DIR"
  mkdir -p "$DIR"
  $B generate --out "$DIR/data" --stickers "$N"
  $B build --corpus "$DIR/data/corpus.jsonl" --embeddings "$DIR/data/embeddings.npy" \
           --clicks "$DIR/data/clicks.tsv" --out "$DIR/index"
  echo "$N" > "$DIR/.stickers"
fi
echo
echo "\$ persrv search --index $DIR/index --user u01 --k 5 --explain 好累"
$P search --index "$DIR/index" --user u01 --k 5 --explain "好累"
cat <<MSG

The index is in $DIR/index. Try:
  $P search --index $DIR/index --user u03 --k 10 --explain "晚安"
  $P search --index $DIR/index --json "thumbs up"
  $B eval --data $DIR/data
MSG
