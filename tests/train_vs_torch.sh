#!/usr/bin/env bash
# Trainer loss and every parameter gradient against PyTorch autograd (float64) on tiny seeded
# checkpoints: Mistral full-parameter with compression, external teacher and cascade; Gemma2
# LoRA (softcaps, sliding window, GeGLU) with compression, cascade anchors every 2 layers and
# the cascade term weighted 2.5;
# Qwen2 full (q/k/v bias) at full width (cascade teacher = detached student); Mistral LoRA with
# attention pooling (its weights constants on both sides: the trainer's stop-gradient); Mistral
# LoRA with dropout 0.25 (the reference recomputes the trainer's masks, student and teacher pass).
# Usage: train_vs_torch.sh MRANK  (the C side is the test_train_model binary beside MRANK, in
# its dump mode; MR_TRAIN_DUMP_BIN overrides). Exchange: JSON batch in, safetensors out.
set -euo pipefail
bin=${MR_TRAIN_DUMP_BIN:-$(dirname "$1")/test_train_model}
[ -x "$bin" ] || { echo "train_vs_torch: $bin not built" >&2; exit 1; }
py=/usr/bin/python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tiny() { # out arch extra...
    local out=$1 arch=$2; shift 2
    $py tests/oracle/make_tiny.py "$out" --arch "$arch" --layers 4 --hidden 32 --heads 4 \
        --kv-heads 2 --head-dim 8 --intermediate 48 --vocab 64 --start-layer 1 --dtype f32 "$@"
}
tiny "$work/mistral" mistral --sliding-window 6 --seed 1
tiny "$work/gemma2" gemma2 --sliding-window 5 --seed 2
tiny "$work/qwen2" qwen2 --seed 3
groups='[[{"q":[1,5,9],"p":[10,11,12,13,14,15,16],"s":[3,7]},
          {"q":[1,5,9],"p":[20,21,22],"s":[3,7]},
          {"q":[1,5,9],"p":[],"s":[3,7]},
          {"q":[1,5,9],"p":[30,31,32,33,34,35,36,37,38],"s":[3,7]}],
         [{"q":[1,40],"p":[41,42,43,44,45],"s":[3,7,8]},
          {"q":[1,40],"p":[50,51],"s":[3,7,8]},
          {"q":[1,40],"p":[52,53,54,55,56,57],"s":[3,7,8]},
          {"q":[1,40],"p":[60],"s":[3,7,8]}]]'
teacher='[[2.0, 0.5, -1.0, 0.1], [1.5, -0.3, 0.7, -2.0]]'
cases=(
  "{\"model\":\"$work/mistral\",\"mode\":\"full\",\"groups\":$groups,\"teacher\":$teacher,\"ratio\":2,\"compress_layers\":[1,3],\"cascade\":1}"
  "{\"model\":\"$work/gemma2\",\"mode\":\"lora\",\"lora_rank\":4,\"lora_alpha\":8,\"lora_b_std\":0.05,\"groups\":$groups,\"teacher\":null,\"ratio\":4,\"compress_layers\":[0,2],\"cascade\":1,\"cascade_step\":2,\"cascade_weight\":2.5}"
  "{\"model\":\"$work/qwen2\",\"mode\":\"full\",\"groups\":$groups,\"teacher\":$teacher,\"ratio\":1,\"compress_layers\":[],\"cascade\":1}"
  "{\"model\":\"$work/mistral\",\"mode\":\"lora\",\"lora_rank\":4,\"lora_alpha\":8,\"lora_b_std\":0.05,\"groups\":$groups,\"teacher\":$teacher,\"ratio\":2,\"compress_layers\":[1,3],\"pooling\":\"attention\",\"cascade\":1}"
  "{\"model\":\"$work/mistral\",\"mode\":\"lora\",\"lora_rank\":4,\"lora_alpha\":8,\"lora_b_std\":0.05,\"lora_dropout\":0.25,\"seed\":5,\"drop_step\":77,\"groups\":$groups,\"teacher\":$teacher,\"ratio\":2,\"compress_layers\":[1,3],\"cascade\":1}"
)
fail=0
for i in "${!cases[@]}"; do
    mkdir -p "$work/c$i"
    printf '%s\n' "${cases[$i]}" > "$work/batch$i.json"
    echo "== case $i: $(printf '%s' "${cases[$i]}" | $py -c 'import json,sys; d=json.load(sys.stdin); print(d["model"].rsplit("/",1)[1], d["mode"], "ratio", d["ratio"], d["compress_layers"], d.get("pooling", "mean"), "teacher" if d["teacher"] else "", "dropout %g" % d["lora_dropout"] if d.get("lora_dropout") else "")')"
    "$bin" dump "$work/batch$i.json" "$work/c$i"
    $py tests/oracle/train_ref.py "$work/batch$i.json" "$work/c$i" || fail=1
done
exit $fail
