#!/usr/bin/env bash
# On the GPU machine (device tool): transformers' own MistralForCausalLM / Gemma2ForCausalLM on
# seeded checkpoints written by `mrank init-checkpoint` (real Mistral-7B shape, and a smaller
# Gemma2), against `mrank score` depth-only scores at several exits.
# Usage: bash scripts/gpu_check.sh [OUT_DIR]   (needs ~16 GB disk, transformers, torch, cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/mrank-gpu-check}
mkdir -p "$out"
[ -x build/mrank ] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build -j"$(nproc)" --target mrank; }
[ -s third_party/tokenizers/llama2/tokenizer.json ] || bash scripts/fetch-testdata.sh

check() { # name exits init-args...
  local name=$1 exits=$2; shift 2
  local d="$out/$name"
  [ -f "$d/model.safetensors" ] || ./build/mrank init-checkpoint "$@" --seed 11 --out "$d"
  local P=(--query "what is the capital of France?"
           --passage "Paris is the capital and most populous city of France."
           --passage "The population of China is over 1.4 billion people."
           --passage "A")
  ./build/mrank tokenize --model "$d" --json "${P[@]}" > "$out/$name.rows.json"
  ./build/mrank score --model "$d" --exits "$exits" --json "${P[@]}" > "$out/$name.scores.json"
  python3 - "$d" "$exits" "$out/$name.rows.json" "$out/$name.req.json" <<'PY'
import json, sys
d, exits, rows, req = sys.argv[1:]
json.dump({"model": d, "rows": json.load(open(rows))["rows"],
           "exits": [int(e) for e in exits.split(",")]}, open(req, "w"))
PY
  python3 scripts/gpu_check_transformers.py "$out/$name.req.json" "$out/$name.scores.json" \
    --attn eager,sdpa --dtypes config,float32 --device cuda
}

check mistral-7b 4,16,32 --shape mistral-7b --vocab-from third_party/tokenizers/llama2/tokenizer.json
check gemma2-small 8,12,16 --arch gemma2 --layers 16 --hidden 1024 --heads 8 --kv-heads 4 \
  --head-dim 128 --intermediate 4096 --start-layer 8 --dtype bf16 \
  --vocab-from third_party/tokenizers/gemma3/tokenizer.json
