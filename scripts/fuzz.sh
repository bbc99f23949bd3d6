#!/usr/bin/env bash
# Runs every libFuzzer target in BUILD_DIR for SECONDS each, from the seed corpora in
# fuzz/corpus/<target>/ (new inputs go to a scratch copy, the repo is not modified).
# Usage: fuzz.sh BUILD_DIR SECONDS (MR_FUZZ_JOBS: targets at a time, default nproc). Fails on
# a crash, leak or sanitizer report, with that fuzzer's exit status and its whole output (a
# clean run prints its last 4 lines).
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
  # no pipe: the status is the fuzzer's, and its whole output is kept for a failure
  "$bin" -max_total_time="$secs" -rss_limit_mb=4096 -print_final_stats=1 "$scratch" \
    >"$log" 2>&1 || rc=$?
  echo "fuzzed $2 for ${secs}s"
  if [ "$rc" -ne 0 ]; then
    cat "$log"   # all of it: the sanitizer report, the crashing input's file, the stats
    echo "FAIL: $2 exited with status $rc (its whole output is above; libFuzzer leaves the" \
      "input as crash-*/leak-*/oom-*/timeout-* in $PWD)"
  else
    tail -4 "$log"   # a clean run: the final stats only
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
