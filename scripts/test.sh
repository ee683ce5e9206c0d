#!/usr/bin/env bash
# Installs dependencies, builds with warnings as errors and runs every test (ctest).
#   PERSRV_SANITIZE=1  build in build-asan with AddressSanitizer + UBSan instead
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
if [ "${PERSRV_SANITIZE:-0}" = 1 ]; then
  dir=build-asan
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Debug -DPERSRV_WERROR=ON -DPERSRV_SANITIZE=ON >/dev/null
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1
else
  dir=build
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPERSRV_WERROR=ON >/dev/null
fi
cmake --build "$dir" -j"$(nproc)"
ctest --test-dir "$dir" --output-on-failure -j"$(nproc)"
