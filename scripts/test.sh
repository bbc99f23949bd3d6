#!/usr/bin/env bash
# The test command of the README (and of CI): installs dependencies, builds mrank three times
# (optimised, with AddressSanitizer + UBSan, with ThreadSanitizer), runs the ctest suite on the
# first two and the threaded tests on the third, then a fuzz smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
phase() { echo "== test.sh: $1 at ${SECONDS} s"; }   # each phase's start, for the CI log
phase setup
bash scripts/setup.sh
jobs=$(nproc)
phase "optimised build"

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs"
phase "ctest (optimised)"
(cd build && ctest --output-on-failure -j"$jobs")

# Sanitizer build: the unit and worker tests again under ASan + UBSan (the long numeric and
# cluster scripts, label slow, ran above); no -march=native, no CUDA.
phase "ASan build and ctest -LE slow"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DMR_SANITIZE=ON -DMR_CUDA=OFF >/dev/null
cmake --build build-asan -j"$jobs"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j"$jobs" -LE slow)

# ThreadSanitizer build: the threaded tests (gRPC server and client, the metrics endpoint, the
# worker, the in-process coordinator with failover and with chunking, its HTTP/JSON front end,
# the coordinator's config and cascade rules, and one tokenizer shared by concurrent encoders)
# under TSan, with the engine's forward pass and GEMM paths (test_forward, test_gemm:
# ~10 s; with one-thread teams they check every GEMM path against a reference and shared
# query prefixes against unshared ones); about a minute on 2 cores after the build. No
# suppressions: libgrpc, absl, libgomp and OpenBLAS are not instrumented, so TSan cannot see their own synchronisation:
# ignore_noninstrumented_modules skips the accesses made inside them (every access of mrank code
# is still checked), rpc/tsan/grpc_hb.c annotates the tags gRPC's completion queues hand between
# threads, and OMP_THREAD_LIMIT=1 runs the engine's OpenMP loops on one thread (libgomp's
# barriers are invisible to TSan; the loops are data-parallel and run threaded in the builds
# above).
tsan_tests="test_forward test_gemm test_rpc test_prom test_worker test_failover test_fused_stages test_coord_config test_cascade test_admission test_discovery test_security test_chunking test_tokenizer_threads test_http"
phase "TSan build and tests"
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMR_TSAN=ON -DMR_CUDA=OFF >/dev/null
cmake --build build-tsan -j"$jobs" --target mrank ${tsan_tests/test_tokenizer_threads/test_tokenizer}
(cd build-tsan &&
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ignore_noninstrumented_modules=1" \
  OMP_THREAD_LIMIT=1 ctest --output-on-failure -j"$jobs" -R "^($(echo $tsan_tests | tr ' ' '|'))\$")

# Fuzz smoke run: every parser of untrusted bytes (safetensors, config JSON, tokenizer input,
# protobuf requests) under libFuzzer + ASan/UBSan for a bounded time each.
phase "fuzz build and smoke"
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DMR_FUZZ=ON -DMR_NATIVE=OFF \
  -DMR_CUDA=OFF >/dev/null
cmake --build build-fuzz -j"$jobs" --target $(cd fuzz && ls fuzz_*.c | sed 's/\.c$//' | tr '\n' ' ')
bash scripts/fuzz.sh build-fuzz "${MR_FUZZ_SECONDS:-15}"
phase done
