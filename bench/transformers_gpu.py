#!/usr/bin/env python3
"""transformers_gpu.py: the Hugging Face transformers baseline for bench_cuda on a GPU.

Times the same rows bench_cuda scored (bench_cuda --dump-rows FILE): for each batch of --cands
rows (one query's candidates), a bf16 forward with attn_implementation="sdpa" over the rows
right-padded to the batch's longest row, truncated to the exit layer, then the exit head on each
row's last token (final norm + head, Gemma's final softcap). No width compression, no pruning:
the plain baseline the Matryoshka engine is compared with.

    python3 bench/transformers_gpu.py --model DIR --rows rows.jsonl [--cands 100] [--exit L]

Prints pairs/s and TFLOP/s with the same FLOP count as bench_cuda (2 * linear MACs per real,
unpadded token, attention excluded), so the two lines compare directly.
"""
import argparse
import json
import os
import time

import torch


def load_rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def linear_flops(cfg, n_tok, exit_layer):
    d = cfg.hidden_size
    hd = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    qd = cfg.num_attention_heads * hd
    kvd = getattr(cfg, "num_key_value_heads", cfg.num_attention_heads) * hd
    per_tok = 2 * d * kvd + d * qd + qd * d + 3 * d * cfg.intermediate_size
    return 2.0 * n_tok * per_tok * exit_layer


def exit_head(model_dir, k, d, device):
    """Head k (1, d) from the checkpoint (lm_head.{k}.linear_head.weight) or random."""
    try:
        from safetensors import safe_open
        for name in sorted(os.listdir(model_dir)):
            if not name.endswith(".safetensors"):
                continue
            with safe_open(os.path.join(model_dir, name), "pt", device="cpu") as f:
                key = f"lm_head.{k}.linear_head.weight"
                if key in f.keys():
                    return f.get_tensor(key).to(device, torch.float32).reshape(d)
    except Exception:
        pass
    return torch.randn(d, device=device) * 0.02


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--rows", required=True, help="bench_cuda --dump-rows output")
    ap.add_argument("--cands", type=int, default=100)
    ap.add_argument("--exit", type=int, default=0, help="exit layer (default: all layers)")
    ap.add_argument("--queries", type=int, default=0, help="batches to time (default: all)")
    args = ap.parse_args()

    from transformers import AutoConfig, AutoModel

    dev = "cuda"
    cfg = AutoConfig.from_pretrained(args.model)
    model = AutoModel.from_pretrained(args.model, torch_dtype=torch.bfloat16,
                                      attn_implementation="sdpa").to(dev).eval()
    n_layers = cfg.num_hidden_layers
    exit_layer = args.exit or n_layers
    model.layers = model.layers[:exit_layer]
    start = getattr(cfg, "start_layer", 1) or 1
    sep = getattr(cfg, "layer_sep", 1) or 1
    head = exit_head(args.model, (exit_layer - start) // sep, cfg.hidden_size, dev)
    final_cap = getattr(cfg, "final_logit_softcapping", None)

    rows = load_rows(args.rows)
    batches = [rows[i:i + args.cands] for i in range(0, len(rows), args.cands)]
    if args.queries:
        batches = batches[:args.queries]

    def run(batch):
        seqs = [r["q"] + r["p"] + r["s"] for r in batch]
        L = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), L), dtype=torch.long)
        mask = torch.zeros((len(seqs), L), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state  # final norm applied
        last = mask.sum(1) - 1
        h = out[torch.arange(len(seqs), device=dev), last].float()
        s = h @ head
        if final_cap:
            s = final_cap * torch.tanh(s / final_cap)
        return s, sum(len(x) for x in seqs)

    with torch.inference_mode():
        run(batches[0])  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        pairs, flops = 0, 0.0
        for b in batches:
            _, n_tok = run(b)
            pairs += len(b)
            flops += linear_flops(cfg, n_tok, exit_layer)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    print(f"transformers {torch.__version__} bf16 sdpa on {torch.cuda.get_device_name()}")
    print(f"model {args.model}: exit {exit_layer} of {n_layers}, {len(batches)} batches x "
          f"{args.cands}")
    print(f"pairs/s {pairs / dt:.1f}  TFLOP/s {flops / dt / 1e12:.2f} (linear layers)  "
          f"ms/query {dt * 1e3 / len(batches):.2f}")


if __name__ == "__main__":
    main()
