#!/usr/bin/env bash
# Installs every dependency of mrank from Debian's packages and the npm registry.
# Idempotent: re-running it only installs what is missing. Run as root (or with sudo).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

pkgs=(build-essential cmake pkg-config git clang libclang-rt-14-dev curl
      libopenblas-dev libdnnl-dev libcjson-dev libpcre2-dev libutf8proc-dev libstemmer-dev libcmocka-dev
      libgrpc-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler libprotobuf-dev grpc-proto
      libmicrohttpd-dev libgnutls28-dev libssl-dev openssl libcurl4-openssl-dev prometheus python3-grpcio python3-protobuf golang-go golang-google-grpc-dev golang-goprotobuf-dev
      python3 python3-venv python3-pip python3-setuptools python3-torch python3-numpy python3-yaml gnuplot-nox
      wordnet-base   # noun glosses: labelled pairs for `mrank calibrate` (make_calibration_pairs.py)
      dnsmasq-base iproute2)   # the last two: tests/multihost.sh (cluster DNS, network namespaces)
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
# Kubernetes API schemas for tests/deploy_schema.sh (git-ignored, under third_party/).
[ -f "$here/third_party/k8s-schema/node_modules/kubernetes-models/package.json" ] ||
  npm install --silent --no-audit --no-fund --prefix "$here/third_party/k8s-schema" kubernetes-models@5.1.0
# The Cohere SDK, a real client of the coordinator's HTTP front end (tests/http_cohere_sdk.sh).
[ -f "$here/third_party/cohere/node_modules/cohere-ai/package.json" ] ||
  npm install --silent --no-audit --no-fund --prefix "$here/third_party/cohere" cohere-ai@8.1.0
# Real tokenizer.json files (test data and the vocab of the bundled model).
"$here/scripts/fetch-testdata.sh"
