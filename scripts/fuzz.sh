#!/usr/bin/env bash
# Runs every libFuzzer target in BUILD_DIR for SECONDS each, from the seed corpora in
# fuzz/corpus/<target>/ (new inputs go to a scratch copy, the repo is not modified).
# Usage: fuzz.sh BUILD_DIR SECONDS. Fails on the first crash, leak or sanitizer report.
set -euo pipefail
build=$1
secs=$2
cd "$(dirname "$0")/.."
export MR_FUZZ_TOKENIZER="$PWD/third_party/tokenizers/qwen3/tokenizer.json"
for bin in "$build"/fuzz_*; do
  name=$(basename "$bin")
  scratch=$(mktemp -d)
  [ -d "fuzz/corpus/$name" ] && cp -r "fuzz/corpus/$name/." "$scratch/"
  echo "fuzzing $name for ${secs}s"
  "$bin" -max_total_time="$secs" -rss_limit_mb=4096 -print_final_stats=1 "$scratch" 2>&1 | tail -4
  rm -rf "$scratch"
done
echo "fuzz smoke: all targets ran clean"
