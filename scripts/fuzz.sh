#!/usr/bin/env bash
# Runs every libFuzzer target in BUILD_DIR for SECONDS each, from the seed corpora in
# fuzz/corpus/<target>/ (new inputs go to a scratch copy, the repo is not modified).
# Usage: fuzz.sh BUILD_DIR SECONDS. Fails on the first crash, leak or sanitizer report.
# fuzz_tokenizer runs twice: Qwen3's byte-level tokenizer, then the bundled model's.
set -euo pipefail
build=$1
secs=$2
cd "$(dirname "$0")/.."
export MR_FUZZ_TOKENIZER="$PWD/third_party/tokenizers/qwen3/tokenizer.json"
run() {  # run BIN LABEL: BIN for $secs from a scratch copy of its seed corpus
  local bin=$1 name scratch
  name=$(basename "$bin")
  scratch=$(mktemp -d)
  [ -d "fuzz/corpus/$name" ] && cp -r "fuzz/corpus/$name/." "$scratch/"
  echo "fuzzing $2 for ${secs}s"
  "$bin" -max_total_time="$secs" -rss_limit_mb=4096 -print_final_stats=1 "$scratch" 2>&1 | tail -4
  rm -rf "$scratch"
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
