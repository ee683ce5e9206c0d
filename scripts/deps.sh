#!/usr/bin/env bash
# Installs the Debian 12 packages PerSRV builds and tests with (needs root or sudo).
set -euo pipefail
pkgs=(build-essential cmake pkg-config curl jq libicu-dev libjansson-dev librocksdb-dev
      libopenblas-dev libcmocka-dev libzmq3-dev libprotobuf-c-dev protobuf-c-compiler
      libevent-dev libcurl4-openssl-dev zlib1g-dev docker-compose
      libtesseract-dev tesseract-ocr-chi-sim tesseract-ocr-eng libleptonica-dev libfreetype-dev
      fonts-wqy-zenhei python3-yaml python3-jsonschema chromium)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
