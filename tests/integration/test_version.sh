#!/usr/bin/env bash
# --version on every binary we ship (issue 14): broker, shard, profile, builder and the persrv
# CLI each print one line "<name> <version> (commit <commit>, <build type>)" on stdout, nothing
# on stderr, and exit 0 — before any other setting is checked (no --shards, no --listen). The
# version and build type are CMake's (passed in by ctest), the commit is the source tree's
# `git rev-parse --short HEAD`, or "unknown" when the source is not a git checkout.
# Also: `builder build --version V` still names a snapshot version (not this flag), and the
# broker's own snapshot setting is --snapshot-version.
# cmake/build_info.cmake outside a git checkout (a tarball): "unknown", or PERSRV_COMMIT's
# value (a docker build); a value that could break the C string or the metric label is refused.
# usage: test_version.sh SOURCE_DIR VERSION BUILD_TYPE BROKER SHARD PROFILE BUILDER PERSRV CMAKE
set -euo pipefail
SRC=$1
VERSION=$2
BUILD_TYPE=$3
BR=$4
S=$5
PD=$6
B=$7
P=$8
CMAKE=$9
T=$(mktemp -d /tmp/ps_test_version_XXXXXX)
trap 'rm -rf "$T"' EXIT
fail() {
  echo "FAIL: $*" >&2
  exit 1
}

commit=unknown
if top=$(git -C "$SRC" rev-parse --show-toplevel 2>/dev/null) \
  && [ "$(realpath "$top")" = "$(realpath "$SRC")" ]; then
  commit=$(git -C "$SRC" rev-parse --short HEAD)
fi

check() { # NAME BINARY ARGS...
  local name=$1 bin=$2 rc=0
  shift 2
  "$bin" "$@" >"$T/out" 2>"$T/err" || rc=$?
  [ $rc -eq 0 ] || fail "$name $*: exit status $rc: $(cat "$T/err")"
  [ ! -s "$T/err" ] || fail "$name $*: wrote to stderr: $(cat "$T/err")"
  [ "$(wc -l <"$T/out")" -eq 1 ] || fail "$name $*: not one line: $(cat "$T/out")"
  local want="$name $VERSION (commit $commit, $BUILD_TYPE)"
  [ "$(cat "$T/out")" = "$want" ] || fail "$name $*: '$(cat "$T/out")', want '$want'"
}

check persrv-broker "$BR" --version
check persrv-shard "$S" --version
check persrv-profile "$PD" --version
check persrv-builder "$B" --version
check persrv "$P" --version
# the flag wins over any other setting, good or bad, and over a config file that is not there
check persrv-broker "$BR" --shards tcp://127.0.0.1:1 --bogus --version
check persrv-shard "$S" --config "$T/none.conf" --version
PERSRV_LOG_LEVEL=nonsense check persrv-profile "$PD" --version

# --version is listed in --help
for bin in "$BR" "$S" "$PD" "$B" "$P"; do
  "$bin" --help >"$T/help"
  grep -q -- --version "$T/help" || fail "$bin --help does not mention --version"
done
# the broker's snapshot setting moved to --snapshot-version; --version=N is no setting
"$BR" --help >"$T/help"
grep -q -- "--snapshot-version" "$T/help" || fail "broker --help lacks --snapshot-version"
rc=0
"$BR" --shards tcp://127.0.0.1:1 --version=3 2>"$T/err" || rc=$?
[ $rc -eq 2 ] && grep -q "unknown flag --version" "$T/err" || fail "--version=3: rc=$rc $(cat "$T/err")"
# a builder subcommand's --version is its own option (a snapshot version), not this flag
rc=0
"$B" activate --version 1 >"$T/out" 2>"$T/err" || rc=$?
[ $rc -ne 0 ] && ! grep -q "persrv-builder" "$T/out" || fail "builder activate --version: rc=$rc"
# the header the binaries' line comes from, written for a tree that is no git checkout
mkdir "$T/tarball"
info() { # [FALLBACK]: the commit build_info.cmake writes for $T/tarball
  "$CMAKE" -DSRC="$T/tarball" -DOUT="$T/info.h" -DVERSION="$VERSION" -DBUILD_TYPE=Release \
    ${1:+"-DFALLBACK_COMMIT=$1"} -P "$SRC/cmake/build_info.cmake" 2>"$T/cmake.err" \
    || fail "build_info.cmake: $(cat "$T/cmake.err")"
  sed -n 's/^#define PS_BUILD_COMMIT "\(.*\)"$/\1/p' "$T/info.h"
}
[ "$(info)" = unknown ] || fail "not a checkout: commit $(info), want unknown"
[ "$(info 1a2b3c4)" = 1a2b3c4 ] || fail "PERSRV_COMMIT=1a2b3c4 not used: $(info 1a2b3c4)"
[ "$(info 'x"y')" = unknown ] && grep -q "letters, digits" "$T/cmake.err" \
  || fail "PERSRV_COMMIT with a quote not refused"
grep -qx "#define PS_BUILD_VERSION \"$VERSION\"" "$T/info.h" || fail "info.h: $(cat "$T/info.h")"
echo "test_version: OK (commit $commit)"
