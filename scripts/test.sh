#!/usr/bin/env bash
# The test command of the README (and of CI): installs dependencies, builds mrank twice
# (optimised, and with AddressSanitizer + UBSan), and runs the ctest suite on both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
jobs=$(nproc)

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs")

# Sanitizer build: the unit and worker tests again under ASan + UBSan (the long numeric and
# cluster scripts, label slow, ran above); no -march=native, no CUDA.
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DMR_SANITIZE=ON -DMR_CUDA=OFF >/dev/null
cmake --build build-asan -j"$jobs"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j"$jobs" -LE slow)

# Fuzz smoke run: every parser of untrusted bytes (safetensors, config JSON, tokenizer input,
# protobuf requests) under libFuzzer + ASan/UBSan for a bounded time each.
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DMR_FUZZ=ON -DMR_NATIVE=OFF \
  -DMR_CUDA=OFF >/dev/null
cmake --build build-fuzz -j"$jobs" --target $(cd fuzz && ls fuzz_*.c | sed 's/\.c$//' | tr '\n' ' ')
bash scripts/fuzz.sh build-fuzz "${MR_FUZZ_SECONDS:-20}"
