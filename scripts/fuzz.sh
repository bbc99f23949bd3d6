#!/usr/bin/env bash
# Runs every libFuzzer target in BUILD_DIR for SECONDS each, from the seed corpora in
# fuzz/corpus/<target>/ (new inputs go to a scratch copy, the repo is not modified).
# Usage: fuzz.sh BUILD_DIR SECONDS (MR_FUZZ_JOBS: targets at a time, default nproc). Fails on
# a crash, leak, hang (an input over 20 s) or sanitizer report, with that fuzzer's exit status
# and its whole output (a clean run prints its executions, their rate and its peak memory).
# fuzz_tokenizer runs twice: Qwen3's byte-level tokenizer, then the bundled model's.
set -euo pipefail
build=$1
secs=$2
cd "$(dirname "$0")/.."
export MR_FUZZ_TOKENIZER="$PWD/third_party/tokenizers/qwen3/tokenizer.json"
run() {  # run BIN LABEL: BIN for $secs from a scratch copy of its seed corpus
  local bin=$1 name scratch log rc=0
  name=$(basename "$bin")
  scratch=$(mktemp -d)
  log=$(mktemp)
  [ -d "fuzz/corpus/$name" ] && cp -r "fuzz/corpus/$name/." "$scratch/"
  # -timeout: one input taking over 20 s is a hang, reported as a crash. fuzz_worker_request
  # answers each input over loopback from gRPC's threads, so every input looks like a leak
  # candidate and the per-input leak scan held it to ~8 inputs/s: it runs without leak
  # detection (the worker's leaks are checked by the ASan ctest run with detect_leaks=1).
  local flags=(-timeout=20)
  [ "$name" = fuzz_worker_request ] && flags+=(-detect_leaks=0)
  # no pipe: the status is the fuzzer's, and its whole output is kept for a failure
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "$bin" -max_total_time="$secs" -rss_limit_mb=4096 -print_final_stats=1 "${flags[@]}" \
    "$scratch" >"$log" 2>&1 || rc=$?
  # a sanitizer report that did not end the run (a recoverable check) still fails it
  if [ "$rc" -eq 0 ] && grep -qE 'runtime error:|ERROR: [A-Za-z]+Sanitizer' "$log"; then rc=1; fi
  echo "fuzzed $2 for ${secs}s"
  if [ "$rc" -ne 0 ]; then
    cat "$log"   # all of it: the sanitizer report, the crashing input's file, the stats
    echo "FAIL: $2 exited with status $rc (its whole output is above; libFuzzer leaves the" \
      "input as crash-*/leak-*/oom-*/timeout-* in $PWD)"
  else
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
  fi
  rm -rf "$scratch" "$log"
  return "$rc"
}
# The targets run $par at a time (each fuzzer is one process on one core; default: every
# core), each for the full $secs; the first batch with a failure stops the run with its status.
par=${MR_FUZZ_JOBS:-$(nproc)}
bins=() labels=() envs=()
for bin in "$build"/fuzz_*; do
  bins+=("$bin") labels+=("$(basename "$bin")") envs+=("$MR_FUZZ_TOKENIZER")
done
# the tokenizer again with the bundled model's (SentencePiece BPE, byte fallback, Lowercase)
if [ -x "$build/fuzz_tokenizer" ]; then
  bins+=("$build/fuzz_tokenizer") labels+=("fuzz_tokenizer (models/mrank-tiny/tokenizer.json)")
  envs+=("$PWD/models/mrank-tiny/tokenizer.json")
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for ((i = 0; i < ${#bins[@]}; i += par)); do
  pids=()
  for ((j = i; j < i + par && j < ${#bins[@]}; j++)); do
    MR_FUZZ_TOKENIZER="${envs[j]}" run "${bins[j]}" "${labels[j]}" >"$out/$j" 2>&1 &
    pids+=($!)
  done
  rc=0
  for ((j = i; j < i + ${#pids[@]}; j++)); do   # each report whole, in target order
    wait "${pids[j - i]}" || rc=$?
    cat "$out/$j"
  done
  [ "$rc" -eq 0 ] || exit "$rc"
done
echo "fuzz smoke: all targets ran clean"
