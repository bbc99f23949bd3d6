#!/usr/bin/env bash
# On the GPU machine (device tool): transformers' own MistralForCausalLM / Gemma2ForCausalLM on
# seeded checkpoints written by `mrank init-checkpoint` (real Mistral-7B shape, and a smaller
# Gemma2), against `mrank score` depth-only scores at several exits.
# Each is also scored by the CUDA backend (bf16), judged against transformers' float32 pass
# relative to transformers' own bf16 error (gpu_check_transformers.py --f32-reference-only).
# Then the bundled models (models/mrank-tiny, models/mrank-tiny-d8) with their vertical adapters
# merged by peft, and their lowercasing tokenizer.json (one file, the same in both) against the
# tokenizers library.
# Usage: bash scripts/gpu_check.sh [OUT_DIR [CHECK...]]   (CHECK: bundled bundled-d8 mistral-7b
#        gemma2-small tokenizer; default all. Needs ~16 GB disk, transformers, torch, cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/mrank-gpu-check}
only=" ${*:2} "
want() { [ "$only" = "  " ] || [[ "$only" == *" $1 "* ]]; }
mkdir -p "$out"
[ -x build/mrank ] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build -j"$(nproc)" --target mrank; }

check() { # name exits init-args...  (bundled, bundled-d8: a bundled model + its vertical adapter)
  local name=$1 exits=$2; shift 2
  want "$name" || return 0
  local d="$out/$name" A=() peft=()
  if [ "$name" = bundled ] || [ "$name" = bundled-d8 ]; then
    d=models/mrank-tiny
    [ "$name" = bundled ] || d=models/mrank-tiny-d8
    A=(--adapter $d/adapters/vertical) peft=(--peft)
  else # the seeded checks borrow llama2's vocabulary (below)
    [ -s third_party/tokenizers/llama2/tokenizer.json ] || bash scripts/fetch-testdata.sh
    [ -f "$d/model.safetensors" ] || ./build/mrank init-checkpoint "$@" --seed 11 --out "$d"
  fi
  local P=(--query "what is the capital of France?"
           --passage "Paris is the capital and most populous city of France."
           --passage "The population of China is over 1.4 billion people."
           --passage "A")
  ./build/mrank tokenize --model "$d" --json "${P[@]}" > "$out/$name.rows.json"
  ./build/mrank score --model "$d" "${A[@]}" --exits "$exits" --json "${P[@]}" > "$out/$name.scores.json"
  ./build/mrank score --backend cuda --model "$d" "${A[@]}" --exits "$exits" --json "${P[@]}" \
    > "$out/$name.cuda.json"
  python3 - "$d" "$exits" "$out/$name.rows.json" "$out/$name.req.json" "${A[@]:1}" <<'PY'
import json, sys
d, exits, rows, req = sys.argv[1:5]
json.dump({"model": d, "rows": json.load(open(rows))["rows"], "adapters": sys.argv[5:],
           "exits": [int(e) for e in exits.split(",")]}, open(req, "w"))
PY
  echo "== $name: the CPU backend (f32) against transformers"
  python3 scripts/gpu_check_transformers.py "$out/$name.req.json" "$out/$name.scores.json" \
    --attn eager,sdpa --dtypes float32,config --device cuda "${peft[@]}" || fail=1
  echo "== $name: the CUDA backend (bf16) against transformers"
  python3 scripts/gpu_check_transformers.py "$out/$name.req.json" "$out/$name.cuda.json" \
    --attn eager --dtypes float32,bfloat16 --f32-reference-only --device cuda "${peft[@]}" || fail=1
}

fail=0
check bundled 1,2,3,4
check bundled-d8 1,2,3,4,5,6,7,8
check mistral-7b 4,16,32 --shape mistral-7b --vocab-from third_party/tokenizers/llama2/tokenizer.json
# the vocabulary does not matter to the architecture check: llama2's 32k keeps the file small
check gemma2-small 8,12,16 --arch gemma2 --layers 16 --hidden 1024 --heads 8 --kv-heads 4 \
  --head-dim 128 --intermediate 4096 --start-layer 8 --dtype bf16 \
  --vocab-from third_party/tokenizers/llama2/tokenizer.json
# the bundled tokenizer (Mistral's + Lowercase) against the tokenizers library: the query
# segment of `mrank tokenize` is [BOS] tok("A: " + query) tok("\n")
want tokenizer && python3 - models/mrank-tiny/tokenizer.json <<'PY'
import json, subprocess, sys
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
bad = 0
for t in ["MEASUREMENT OF DIELECTRIC CONSTANT", "What articles deal with TSS (Time Sharing System)?",
          "\u0130stanbul \u00c4rger \u03a3\u0391\u03a3"]:
    want = [1] + tok.encode("A: " + t, add_special_tokens=False).ids + \
        tok.encode("\n", add_special_tokens=False).ids
    out = subprocess.run(["./build/mrank", "tokenize", "--model", "models/mrank-tiny", "--query", t,
                          "--passage", "x", "--json"], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)["rows"][0]["q"]
    bad += want != got
    print("ok" if want == got else "MISMATCH", repr(t), want, got)
sys.exit(1 if bad else 0)
PY
[ "$fail" = 0 ] || { echo "gpu_check: a model check FAILED (above)"; exit 1; }
