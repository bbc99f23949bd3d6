#!/usr/bin/env bash
# The main job of the README: installs dependencies, builds mrank, writes a small seeded
# (untrained) checkpoint with the Mistral tokenizer and scores two passages against a query.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
model=out/seeded-mistral
if [ ! -f "$model/model.safetensors" ]; then
  ./build/mrank init-checkpoint --arch mistral --layers 8 --hidden 256 --heads 8 --kv-heads 4 \
    --intermediate 768 --vocab-from third_party/tokenizers/llama2/tokenizer.json \
    --start-layer 2 --dtype bf16 --seed 1 --out "$model"
fi
echo "scores at exits 2,4,8 (model is seeded, untrained: the numbers are not relevance):"
./build/mrank score --model "$model" --exits 2,4,8 --compress-ratio 2 --compress-layers 4 \
  --query "what is the capital of France?" \
  --passage "Paris is the capital of France." \
  --passage "The population of China is over 1.4 billion people."
