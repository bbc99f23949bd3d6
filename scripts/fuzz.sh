#!/usr/bin/env bash
# Runs every libFuzzer target in BUILD_DIR for SECONDS each, from the seed corpora in
# fuzz/corpus/<target>/ (new inputs go to a scratch copy, the repo is not modified).
# Usage: fuzz.sh BUILD_DIR SECONDS. Fails on the first crash, leak or sanitizer report, with
# that fuzzer's exit status and its whole output (a clean run prints its last 4 lines).
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
  echo "fuzzing $2 for ${secs}s"
  # no pipe: the status is the fuzzer's, and its whole output is kept for a failure
  "$bin" -max_total_time="$secs" -rss_limit_mb=4096 -print_final_stats=1 "$scratch" \
    >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    cat "$log"   # all of it: the sanitizer report, the crashing input's file, the stats
    echo "FAIL: $2 exited with status $rc (its whole output is above; libFuzzer leaves the" \
      "input as crash-*/leak-*/oom-*/timeout-* in $PWD)"
    rm -rf "$scratch" "$log"
    exit "$rc"
  fi
  tail -4 "$log"   # a clean run: the final stats only
  rm -rf "$scratch" "$log"
}
for bin in "$build"/fuzz_*; do
  run "$bin" "$(basename "$bin")"
done
# the tokenizer again with the bundled model's (SentencePiece BPE, byte fallback, Lowercase)
if [ -x "$build/fuzz_tokenizer" ]; then
  MR_FUZZ_TOKENIZER="$PWD/models/mrank-tiny/tokenizer.json" \
    run "$build/fuzz_tokenizer" "fuzz_tokenizer (models/mrank-tiny/tokenizer.json)"
fi
echo "fuzz smoke: all targets ran clean"
