#!/usr/bin/python3
"""make_tiny.py: write a seeded tiny layer-wise checkpoint (HF folder) without the C code.

Usage:
    make_tiny.py OUT_DIR [--arch mistral|qwen2|gemma2|llama|cost_wise_mistral|cost_wise_gemma]
                 [--layers 6] [--hidden 64] [--heads 4] [--kv-heads 2] [--head-dim 16]
                 [--intermediate 128] [--vocab 512] [--start-layer 2] [--layer-sep 1]
                 [--dtype f32|bf16|f16] [--seed 0] [--sliding-window 8 (0 = none)]
                 [--rope-theta 1000] [--rope-nested] [--shards 1] [--tie 0|1]
                 [--attn-softcap 2.0] [--final-softcap 5.0] [--query-pre-attn-scalar 32]
                 [--std 0.05] [--qk-std 0.15] [--embed-std 0.5] [--head-std 0.25]

Writes OUT_DIR/config.json and OUT_DIR/model.safetensors (or --shards N files plus
model.safetensors.index.json). Weights ~ N(0, std) (q/k projections use --qk-std so attention is
not uniform; exit heads --head-std so scores are O(1)); norm weights 1 + N(0, 0.05) (gemma2 stores
w with the (1 + w) convention, so N(0, 0.05) there); qwen2 q/k/v biases N(0, std).
Exit heads lm_head.{k}.linear_head.weight [1, hidden] for k = 0 .. (layers - start)/sep.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mr_ref import write_safetensors  # noqa: E402

ARCHS = {
    "mistral": ("mistral", "MistralForCausalLM", "llama"),
    "cost_wise_mistral": ("cost_wise_mistral", "CostWiseMistralForCausalLM", "llama"),
    "llama": ("llama", "LlamaForCausalLM", "llama"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM", "qwen2"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM", "gemma2"),
    "cost_wise_gemma": ("cost_wise_gemma", "CostWiseGemmaForCausalLM", "gemma2"),
}
DTYPES = {"f32": ("F32", "float32"), "bf16": ("BF16", "bfloat16"), "f16": ("F16", "float16")}


def build(a):
    model_type, arch_name, family = ARCHS[a.arch]
    g = torch.Generator().manual_seed(a.seed)

    def rn(*shape, std=a.std):
        return torch.randn(*shape, generator=g, dtype=torch.float32) * std

    def norm_w(n):
        if family == "gemma2":
            return rn(n, std=0.05)            # used as (1 + w)
        return 1.0 + rn(n, std=0.05)

    H, D, nh, nkv, F, V = a.hidden, a.head_dim, a.heads, a.kv_heads, a.intermediate, a.vocab
    t = {}
    t["model.embed_tokens.weight"] = rn(V, H, std=a.embed_std)
    for i in range(a.layers):
        p = "model.layers.%d." % i
        t[p + "input_layernorm.weight"] = norm_w(H)
        t[p + "self_attn.q_proj.weight"] = rn(nh * D, H, std=a.qk_std)
        t[p + "self_attn.k_proj.weight"] = rn(nkv * D, H, std=a.qk_std)
        t[p + "self_attn.v_proj.weight"] = rn(nkv * D, H)
        if family == "qwen2":
            t[p + "self_attn.q_proj.bias"] = rn(nh * D)
            t[p + "self_attn.k_proj.bias"] = rn(nkv * D)
            t[p + "self_attn.v_proj.bias"] = rn(nkv * D)
        t[p + "self_attn.o_proj.weight"] = rn(H, nh * D)
        t[p + "post_attention_layernorm.weight"] = norm_w(H)
        if family == "gemma2":
            t[p + "pre_feedforward_layernorm.weight"] = norm_w(H)
            t[p + "post_feedforward_layernorm.weight"] = norm_w(H)
        t[p + "mlp.gate_proj.weight"] = rn(F, H)
        t[p + "mlp.up_proj.weight"] = rn(F, H)
        t[p + "mlp.down_proj.weight"] = rn(H, F)
    t["model.norm.weight"] = norm_w(H)
    if not a.tie:
        t["lm_head.weight"] = rn(V, H)
    n_heads_exit = (a.layers - a.start_layer) // a.layer_sep + 1
    for k in range(n_heads_exit):
        t["lm_head.%d.linear_head.weight" % k] = rn(1, H, std=a.head_std)

    cfg = {
        "architectures": [arch_name],
        "model_type": model_type,
        "hidden_size": H,
        "intermediate_size": F,
        "num_hidden_layers": a.layers,
        "num_attention_heads": nh,
        "num_key_value_heads": nkv,
        "head_dim": D,
        "vocab_size": V,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5 if family != "gemma2" else 1e-6,
        "tie_word_embeddings": bool(a.tie),
        "bos_token_id": 1 if family != "gemma2" else 2,
        "eos_token_id": 2 if family != "gemma2" else 1,
        "pad_token_id": 0,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": DTYPES[a.dtype][1],
        "layer_wise": True,
        "start_layer": a.start_layer,
        "layer_sep": a.layer_sep,
    }
    if a.rope_nested:
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": a.rope_theta}
    else:
        cfg["rope_theta"] = a.rope_theta
    sw = a.sliding_window if a.sliding_window > 0 else None
    if family == "llama":
        cfg["hidden_act"] = "silu"
        if model_type != "llama":
            cfg["sliding_window"] = sw
        else:
            cfg["attention_bias"] = False
            cfg["mlp_bias"] = False
    elif family == "qwen2":
        cfg["hidden_act"] = "silu"
        cfg["use_sliding_window"] = False
        cfg["sliding_window"] = None
        cfg["max_window_layers"] = a.layers
    else:
        cfg["hidden_act"] = "gelu_pytorch_tanh"
        cfg["hidden_activation"] = "gelu_pytorch_tanh"
        cfg["query_pre_attn_scalar"] = a.query_pre_attn_scalar
        cfg["attn_logit_softcapping"] = a.attn_softcap
        cfg["final_logit_softcapping"] = a.final_softcap
        cfg["sliding_window"] = sw if sw else 4096
        cfg["attention_bias"] = False
        cfg["cache_implementation"] = "hybrid"
    return cfg, t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--arch", default="mistral", choices=sorted(ARCHS))
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=16)
    ap.add_argument("--intermediate", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--start-layer", type=int, default=2)
    ap.add_argument("--layer-sep", type=int, default=1)
    ap.add_argument("--dtype", default="f32", choices=sorted(DTYPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sliding-window", type=int, default=8)
    ap.add_argument("--rope-theta", type=float, default=1000.0)
    ap.add_argument("--rope-nested", action="store_true")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--tie", type=int, default=None, help="tie_word_embeddings (default: gemma2 1, else 0)")
    ap.add_argument("--attn-softcap", type=float, default=2.0)
    ap.add_argument("--final-softcap", type=float, default=5.0)
    ap.add_argument("--query-pre-attn-scalar", type=float, default=32.0)
    ap.add_argument("--std", type=float, default=0.05)
    ap.add_argument("--qk-std", type=float, default=0.15)
    ap.add_argument("--embed-std", type=float, default=0.5)
    ap.add_argument("--head-std", type=float, default=0.25)
    a = ap.parse_args()
    if a.tie is None:
        a.tie = 1 if ARCHS[a.arch][2] == "gemma2" else 0
    if (a.layers - a.start_layer) % a.layer_sep or a.start_layer < 1 or a.start_layer > a.layers:
        ap.error("start_layer/layer_sep do not fit the number of layers")
    cfg, t = build(a)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    st_dt = DTYPES[a.dtype][0]
    names = list(t)
    if a.shards <= 1:
        write_safetensors(os.path.join(a.out, "model.safetensors"), t, st_dt)
        return 0
    per = (len(names) + a.shards - 1) // a.shards
    wmap = {}
    total = 0
    for s in range(a.shards):
        part = {n: t[n] for n in names[s * per:(s + 1) * per]}
        fn = "model-%05d-of-%05d.safetensors" % (s + 1, a.shards)
        write_safetensors(os.path.join(a.out, fn), part, st_dt)
        for n in part:
            wmap[n] = fn
            total += part[n].numel() * (4 if st_dt == "F32" else 2)
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, f, indent=2)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
