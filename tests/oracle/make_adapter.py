#!/usr/bin/python3
"""make_adapter.py: write a random PEFT LoRA adapter for a layer-wise checkpoint.

Usage:
    make_adapter.py MODEL_DIR OUT_DIR [--rank 4] [--alpha 8] [--seed 1]
                    [--targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]
                    [--heads] [--rslora] [--std 0.05] [--zero-b]

Writes OUT_DIR/adapter_config.json and OUT_DIR/adapter_model.safetensors (F32) with
base_model.model.<module>.lora_A.weight [r, in] and .lora_B.weight [out, r] for every layer's
listed modules (self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj) and, with --heads, for every
exit head lm_head.{k}.linear_head. A and B ~ N(0, std) (B nonzero unless --zero-b), so the merged
update (alpha/r) B A has entries of std about (alpha/r) sqrt(r) std^2 (0.01 at the defaults,
against base weights of std 0.05).
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mr_ref import load_checkpoint_tensors, write_safetensors  # noqa: E402

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--targets", default=",".join(ATTN + MLP))
    ap.add_argument("--heads", action="store_true")
    ap.add_argument("--rslora", action="store_true")
    ap.add_argument("--std", type=float, default=0.05)
    ap.add_argument("--zero-b", action="store_true", help="B = 0 (adapter is a no-op)")
    a = ap.parse_args()

    with open(os.path.join(a.model, "config.json")) as f:
        cfg = json.load(f)
    w = load_checkpoint_tensors(a.model)
    targets = [x.strip() for x in a.targets.split(",") if x.strip()]
    for x in targets:
        if x not in ATTN + MLP:
            ap.error("unknown target %s" % x)
    g = torch.Generator().manual_seed(a.seed)
    r = a.rank
    out = {}
    modules = []
    for i in range(int(cfg["num_hidden_layers"])):
        for x in targets:
            modules.append("model.layers.%d.%s.%s" % (i, "self_attn" if x in ATTN else "mlp", x))
    if a.heads:
        k = 0
        while "lm_head.%d.linear_head.weight" % k in w:
            modules.append("lm_head.%d.linear_head" % k)
            k += 1
    for m in modules:
        W = w[m + ".weight"]
        n_out, n_in = W.shape
        A = torch.randn(r, n_in, generator=g, dtype=torch.float32) * a.std
        B = torch.randn(n_out, r, generator=g, dtype=torch.float32) * a.std
        if a.zero_b:
            B.zero_()
        out["base_model.model.%s.lora_A.weight" % m] = A
        out["base_model.model.%s.lora_B.weight" % m] = B
    os.makedirs(a.out, exist_ok=True)
    write_safetensors(os.path.join(a.out, "adapter_model.safetensors"), out, "F32")
    tm = list(targets) + (["linear_head"] if a.heads else [])
    ac = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": os.path.abspath(a.model),
        "r": r,
        "lora_alpha": a.alpha,
        "lora_dropout": 0.0,
        "use_rslora": bool(a.rslora),
        "target_modules": tm,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    with open(os.path.join(a.out, "adapter_config.json"), "w") as f:
        json.dump(ac, f, indent=2)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
