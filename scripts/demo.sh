#!/usr/bin/env bash
# The README's first command: on a fresh Debian 12 machine, installs the dependencies, builds,
# generates the demo corpus, builds it into 2 shards, starts a local cluster (2 shards x 2
# replicas and the HTTP broker on 127.0.0.1:8080) and answers a personalized query through it
# (all of that is scripts/cluster-up.sh; scripts/cluster-down.sh stops the cluster).
#   PERSRV_DEMO_STICKERS  corpus size (default 543098, the paper's)
#   PERSRV_DEMO_DIR       where data, shards, logs and pid files go (default ./demo)
# and the other PERSRV_* settings of scripts/cluster-up.sh (ports, PERSRV_SKIP_BUILD, ...).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
DIR=$(abspath "${PERSRV_DEMO_DIR:-$ROOT/demo}")
BIN=$(abspath "${PERSRV_BIN_DIR:-$ROOT/build}")
"$ROOT/scripts/cluster-up.sh"
B=$BIN/builder/builder
P=$BIN/client/persrv
D=$DIR/data
build_single=""
[ -e "$DIR/index" ] || build_single="
  $B build --corpus $D/corpus.jsonl --embeddings $D/embeddings.npy \\
           --clicks $D/clicks.tsv --out $DIR/index"
cat <<MSG

The same corpus also runs in one process, without the cluster (a single-node index):$build_single
  $P search --index $DIR/index --user u01 --k 5 --explain "好累"
  $P search --index $DIR/index --json "thumbs up"
and the paper's evaluation (Table 3):
  $B eval --data $D
MSG
