#!/usr/bin/env bash
# libpersrv as a chat service gets it (issue 12): `cmake --install` into a fresh prefix, then
#   1. the README's example program is client/example.c, as it is;
#   2. it builds against the installed library with `pkg-config --cflags --libs persrv` alone,
#      and runs against a real cluster (a shard and a broker on loopback): the hits it prints
#      are the ones `persrv search --broker` prints;
#   3. libpersrv.so needs libzmq, libprotobuf-c and libc and nothing else (no ICU, OpenBLAS,
#      RocksDB, libevent), exports persrv_* only, and the example needs only libpersrv and libc;
#   4. the CMake package: a project with find_package(persrv) links persrv::persrv_static and
#      persrv::persrv_event, and its static build runs too.
# usage: test_install.sh BUILD_DIR SOURCE_DIR BUILDER SHARD SHARD_CLIENT BROKER PERSRV
set -euo pipefail
BUILD=$1
SRC=$2
B=$3
S=$4
C=$5
BR=$6
P=$7
. "$(dirname "$0")/lib.sh"
ps_test_init install
command -v pkg-config >/dev/null || fail "pkg-config is required (scripts/deps.sh installs it)"
CC=${CC:-cc}
PREFIX=$T/prefix

# ---- 1. install; the README's example is client/example.c ---------------------------------
cmake --install "$BUILD" --prefix "$PREFIX" >"$T/install.log" 2>&1 || fail "cmake --install: $(tail -5 "$T/install.log")"
LIBDIR=$(dirname "$(find "$PREFIX" -name persrv.pc | awk 'NR == 1')")/..
[ -e "$LIBDIR/libpersrv.so" ] && [ -e "$LIBDIR/libpersrv.a" ] || fail "no libpersrv.so / libpersrv.a installed"
for f in include/persrv.h include/persrv_event.h; do [ -e "$PREFIX/$f" ] || fail "$f not installed"; done
[ -e "$LIBDIR/cmake/persrv/persrvConfig.cmake" ] || fail "no CMake package config installed"
awk '/^<!-- example: client\/example.c -->/{on=1; next} on && /^```c/{p=1; next} p && /^```/{exit} p' \
  "$SRC/README.md" >"$T/readme_example.c"
[ -s "$T/readme_example.c" ] || fail "README has no example block after <!-- example: client/example.c -->"
diff -u "$SRC/client/example.c" "$T/readme_example.c" >&2 || fail "the README's example is not client/example.c"
lines=$(grep -cv '^\s*$' "$SRC/client/example.c")
echo "example: $lines non-blank lines"

# ---- 2. build it with pkg-config alone ---------------------------------------------------
export PKG_CONFIG_PATH=$LIBDIR/pkgconfig
flags=$(pkg-config --cflags --libs persrv) || fail "pkg-config --cflags --libs persrv failed"
echo "pkg-config --cflags --libs persrv: $flags"
# shellcheck disable=SC2086
$CC ${PS_USER_CFLAGS:-} -o "$T/example" "$SRC/client/example.c" $flags 2>"$T/cc.log" || fail "example does not build: $(cat "$T/cc.log")"

# ---- 3. what the library and the example need --------------------------------------------
needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sed 's/\.so.*//' | sort | tr '\n' ' '; }
lib_needs=$(needed "$LIBDIR/libpersrv.so")
echo "libpersrv.so NEEDED: $lib_needs"
[ "$lib_needs" = "libc libprotobuf-c libzmq " ] || [ -n "${PS_USER_CFLAGS:-}" ] || fail "libpersrv.so needs $lib_needs (want libc libprotobuf-c libzmq)"
ex_needs=$(needed "$T/example")
echo "example NEEDED: $ex_needs"
[ "$ex_needs" = "libc libpersrv " ] || [ -n "${PS_USER_CFLAGS:-}" ] || fail "the example needs $ex_needs (want libc libpersrv)"
others=$(nm -D --defined-only "$LIBDIR/libpersrv.so" | awk '$3 !~ /^persrv_/ && $2 ~ /[TDBR]/ {print $3}')
[ -z "$others" ] || [ -n "${PS_USER_CFLAGS:-}" ] || fail "libpersrv.so exports more than persrv_*: $others"

# ---- the cluster it talks to ----------------------------------------------------------------
$B generate --out "$T/data" --stickers 3000 --dim 16 --users 3 --clicks 600 --pairs 100 \
  --queries 60 --no-progress
$B build --corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy" \
  --clicks "$T/data/clicks.tsv" --out "$T/cluster" --shards 1 >"$T/build.out" 2>&1 \
  || fail "build: $(cat "$T/build.out")"
start_shard s0 --index "$T/cluster/shard-000" --shard 0 --shards 1
start_broker br "${EP[s0]}"
q=$(awk -F'\t' 'NR == 1 {print $2}' "$T/data/clicks.tsv")
LD_LIBRARY_PATH=$LIBDIR "$T/example" "$ZEP" "$q" >"$T/example.out" 2>"$T/example.err" \
  || fail "example against the cluster: $(cat "$T/example.err")"
[ -s "$T/example.out" ] || fail "example printed no hits for '$q'"
"$P" search --broker "$ZEP" --k 5 --json "$q" | jq -r '.hits[].id' >"$T/cli.out" \
  || fail "persrv search --broker failed"
diff "$T/cli.out" "$T/example.out" >&2 || fail "the example's hits differ from persrv search's"
echo "example against the cluster: $(wc -l <"$T/example.out") hits for '$q', the same as persrv search"
# A closed port is refused at once (PERSRV_EREFUSED), not waited out: the message says so (a
# timeout would say "no reply from ... within ... ms").
LD_LIBRARY_PATH=$LIBDIR "$T/example" "tcp://127.0.0.1:1" "$q" >/dev/null 2>"$T/refused.err" \
  && fail "example succeeded against a closed port"
grep -q '^tcp://127.0.0.1:1: connection refused$' "$T/refused.err" \
  || fail "example against a closed port: not the refused error: $(cat "$T/refused.err")"
echo "example against a closed port: $(cat "$T/refused.err")"

# ---- 4. the CMake package ----------------------------------------------------------------
mkdir -p "$T/pkg"
cat >"$T/pkg/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.20)
project(persrv_user C)
find_package(persrv 0.1 REQUIRED)
add_executable(example_static example.c)
target_link_libraries(example_static PRIVATE persrv::persrv_static)
add_executable(uses_event uses_event.c)
target_link_libraries(uses_event PRIVATE persrv::persrv_event)
CMAKE
cp "$SRC/client/example.c" "$T/pkg/example.c"
cat >"$T/pkg/uses_event.c" <<'C'
#include <event2/event.h>
#include <persrv_event.h>
int main(void)
{
    struct event_base *base = event_base_new();
    persrv_async_t *a = persrv_async_new(base, "tcp://127.0.0.1:1", NULL);
    int ok = a != NULL;
    persrv_async_free(a);
    event_base_free(base);
    return ok ? 0 : 1;
}
C
cmake -S "$T/pkg" -B "$T/pkg/build" -DCMAKE_PREFIX_PATH="$PREFIX" \
  -DCMAKE_C_FLAGS="${PS_USER_CFLAGS:-}" -DCMAKE_EXE_LINKER_FLAGS="${PS_USER_CFLAGS:-}" >"$T/pkg.log" 2>&1 \
  || fail "find_package(persrv): $(tail -20 "$T/pkg.log")"
cmake --build "$T/pkg/build" >>"$T/pkg.log" 2>&1 || fail "CMake package build: $(tail -20 "$T/pkg.log")"
static_needs=$(needed "$T/pkg/build/example_static")
case "$static_needs" in *libpersrv*) fail "example_static needs libpersrv.so: $static_needs" ;; esac
"$T/pkg/build/example_static" "$ZEP" "$q" >"$T/static.out" 2>"$T/static.err" \
  || fail "example_static against the cluster: $(cat "$T/static.err")"
diff "$T/cli.out" "$T/static.out" >&2 || fail "example_static's hits differ"
LD_LIBRARY_PATH=$LIBDIR "$T/pkg/build/uses_event" || fail "a persrv_event user did not run"
echo "CMake package: persrv::persrv_static ($static_needs) and persrv::persrv_event build and run"
stop br
stop s0
echo "PASS"
