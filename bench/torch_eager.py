#!/usr/bin/python3
"""torch_eager.py: an independent PyTorch eager implementation of the Matryoshka re-ranker, the
baseline of the mrank CPU benchmark.

It reads the checkpoint folder itself (config.json and model.safetensors parsed here, no
transformers), and scores exactly the rows bench_engine used (--rows, the JSON bench_engine
--rows-out writes: rows as token ids, configurations, C scores and C figures). Batches are
right-padded to the longest row of the batch with an attention mask, positions 0..len-1, and the
score is read at the last real token, as the transformers reference code does; every layer runs
on every (padded) position, the last one included. fp32, torch.inference_mode, the same thread
count as the C run (torch.set_num_threads). Width compression (mean pooling of passage tokens
in groups of r at the listed layers, positions restarted, batch re-padded) is implemented too,
so every configuration of the C grid runs here.

Architectures: Llama/Mistral (and Qwen2's q/k/v biases), Gemma2 ((1+w) norms, post norms,
GeGLU-tanh, embedding scale, attention/final soft-caps, query_pre_attn_scalar, sliding window
on even layers).

It checks its scores against the C scores (max relative difference, must be <= 1e-3) and
prints pairs/s per configuration; --out writes the figures as JSON for run_cpu.sh."""
import argparse
import json
import math
import mmap
import os
import struct
import sys
import time

import numpy as np
import torch


def load_safetensors(path):
    """name -> float32 torch tensor, parsed by hand (8-byte little-endian header length, JSON
    header, raw little-endian data)."""
    f = open(path, "rb")
    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    (hlen,) = struct.unpack("<Q", mm[:8])
    header = json.loads(mm[8:8 + hlen].decode("utf-8"))
    base = 8 + hlen
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        shape = info["shape"]
        raw = np.frombuffer(mm, dtype=np.uint8, count=b - a, offset=base + a)
        dt = info["dtype"]
        if dt == "F32":
            arr = raw.view("<f4").astype(np.float32)
        elif dt == "F16":
            arr = raw.view("<f2").astype(np.float32)
        elif dt == "BF16":
            arr = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(f"{path}: {name}: dtype {dt} not supported")
        out[name] = torch.from_numpy(arr.reshape(shape).copy())
    return out


def load_weights(model_dir):
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(single):
        return load_safetensors(single)
    index = os.path.join(model_dir, "model.safetensors.index.json")
    with open(index) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    w = {}
    for s in shards:
        w.update(load_safetensors(os.path.join(model_dir, s)))
    return w


class Reranker:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            c = json.load(f)
        self.gemma = c["model_type"] in ("gemma2", "cost_wise_gemma")
        self.L = c["num_hidden_layers"]
        self.d = c["hidden_size"]
        self.nh = c["num_attention_heads"]
        self.nkv = c.get("num_key_value_heads") or self.nh
        self.hd = c.get("head_dim") or self.d // self.nh
        self.eps = c.get("rms_norm_eps", 1e-6)
        theta = c.get("rope_theta") or (c.get("rope_parameters") or {}).get("rope_theta", 1e4)
        self.theta = float(theta)
        self.window = c.get("sliding_window") or 0
        self.start = c.get("start_layer", 1)
        self.sep = c.get("layer_sep", 1)
        self.attn_cap = c.get("attn_logit_softcapping") or 0.0 if self.gemma else 0.0
        self.final_cap = c.get("final_logit_softcapping") or 0.0 if self.gemma else 0.0
        qs = c.get("query_pre_attn_scalar") if self.gemma else None
        self.scale = 1.0 / math.sqrt(qs if qs else self.hd)
        self.norm_off = 1.0 if self.gemma else 0.0
        w = load_weights(model_dir)
        self.embed = w["model.embed_tokens.weight"]
        self.embed_scale = math.sqrt(self.d) if self.gemma else 1.0
        self.final_norm = w["model.norm.weight"] + self.norm_off
        self.layers = []
        for i in range(self.L):
            p = f"model.layers.{i}."
            g = lambda n: w.get(p + n)
            ly = {
                "q": g("self_attn.q_proj.weight"), "k": g("self_attn.k_proj.weight"),
                "v": g("self_attn.v_proj.weight"), "o": g("self_attn.o_proj.weight"),
                "qb": g("self_attn.q_proj.bias"), "kb": g("self_attn.k_proj.bias"),
                "vb": g("self_attn.v_proj.bias"),
                "gate": g("mlp.gate_proj.weight"), "up": g("mlp.up_proj.weight"),
                "down": g("mlp.down_proj.weight"),
                "attn_norm": g("input_layernorm.weight") + self.norm_off,
            }
            if self.gemma:
                ly["post_attn_norm"] = g("post_attention_layernorm.weight") + self.norm_off
                ly["ffn_norm"] = g("pre_feedforward_layernorm.weight") + self.norm_off
                ly["post_ffn_norm"] = g("post_feedforward_layernorm.weight") + self.norm_off
            else:
                ly["post_attn_norm"] = ly["post_ffn_norm"] = None
                ly["ffn_norm"] = g("post_attention_layernorm.weight") + self.norm_off
            self.layers.append(ly)
        self.heads = {}
        k = 0
        while f"lm_head.{k}.linear_head.weight" in w:
            self.heads[self.start + k * self.sep] = w[f"lm_head.{k}.linear_head.weight"][0]
            k += 1
        self.inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.hd, 2, dtype=torch.float64)
                                              / self.hd))

    def rmsnorm(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def rope(self, L):
        pos = torch.arange(L, dtype=torch.float64)
        f = torch.outer(pos, self.inv_freq)
        emb = torch.cat([f, f], dim=-1)
        return emb.cos().float(), emb.sin().float()

    @staticmethod
    def rotate_half(x):
        h = x.shape[-1] // 2
        return torch.cat([-x[..., h:], x[..., :h]], dim=-1)

    def layer(self, l, x, mask, cos, sin):
        ly = self.layers[l]
        B, T, _ = x.shape
        h = self.rmsnorm(x, ly["attn_norm"])
        q = torch.nn.functional.linear(h, ly["q"], ly["qb"])
        k = torch.nn.functional.linear(h, ly["k"], ly["kb"])
        v = torch.nn.functional.linear(h, ly["v"], ly["vb"])
        q = q.view(B, T, self.nh, self.hd).transpose(1, 2)
        k = k.view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = v.view(B, T, self.nkv, self.hd).transpose(1, 2)
        q = q * cos + self.rotate_half(q) * sin
        k = k * cos + self.rotate_half(k) * sin
        rep = self.nh // self.nkv
        if rep > 1:  # repeat_kv, as transformers does
            k = k[:, :, None].expand(B, self.nkv, rep, T, self.hd).reshape(B, self.nh, T, self.hd)
            v = v[:, :, None].expand(B, self.nkv, rep, T, self.hd).reshape(B, self.nh, T, self.hd)
        s = torch.matmul(q, k.transpose(2, 3)) * self.scale
        if self.attn_cap:
            s = torch.tanh(s / self.attn_cap) * self.attn_cap
        m = mask
        if self.window and (not self.gemma or l % 2 == 0):
            i = torch.arange(T)
            m = mask + torch.where(i[:, None] - i[None, :] >= self.window,
                                   torch.finfo(torch.float32).min, 0.0)
        s = torch.softmax(s + m, dim=-1)
        a = torch.matmul(s, v).transpose(1, 2).reshape(B, T, self.nh * self.hd)
        a = torch.nn.functional.linear(a, ly["o"])
        if ly["post_attn_norm"] is not None:
            a = self.rmsnorm(a, ly["post_attn_norm"])
        x = x + a
        h = self.rmsnorm(x, ly["ffn_norm"])
        g = torch.nn.functional.linear(h, ly["gate"])
        u = torch.nn.functional.linear(h, ly["up"])
        act = (torch.nn.functional.gelu(g, approximate="tanh") if self.gemma
               else torch.nn.functional.silu(g))
        f = torch.nn.functional.linear(act * u, ly["down"])
        if ly["post_ffn_norm"] is not None:
            f = self.rmsnorm(f, ly["post_ffn_norm"])
        return x + f

    @staticmethod
    def build_mask(lens, T):
        """(B, 1, T, T) additive: causal and key padding (finfo.min, as transformers)."""
        lens_t = torch.tensor(lens)
        i = torch.arange(T)
        ok = (i[None, :] <= i[:, None])[None] & (i[None, None, :] < lens_t[:, None, None])
        return torch.where(ok, 0.0, torch.finfo(torch.float32).min)[:, None]

    def compress(self, x, segs, ratio):
        """Mean-pools each row's passage tokens in groups of ratio; re-pads the batch."""
        rows, new_segs = [], []
        for b, (nq, np_, ns) in enumerate(segs):
            p = x[b, nq:nq + np_]
            G = (np_ + ratio - 1) // ratio
            pad = G * ratio - np_
            if pad:
                p = torch.cat([p, p.new_zeros(pad, p.shape[1])])
            cnt = torch.full((G, 1), float(ratio))
            cnt[-1, 0] = ratio - pad
            pooled = p.view(G, ratio, -1).sum(1) / cnt
            rows.append(torch.cat([x[b, :nq], pooled, x[b, nq + np_:nq + np_ + ns]]))
            new_segs.append((nq, G, ns))
        T = max(r.shape[0] for r in rows)
        out = x.new_zeros(len(rows), T, x.shape[2])
        for b, r in enumerate(rows):
            out[b, :r.shape[0]] = r
        return out, new_segs

    def score(self, batch, exit_layer, ratio=1, compress_layers=()):
        """batch: list of (q, p, s) id lists. Returns raw scores at exit_layer."""
        segs = [(len(q), len(p), len(s)) for q, p, s in batch]
        lens = [sum(t) for t in segs]
        T = max(lens)
        ids = torch.zeros(len(batch), T, dtype=torch.long)  # pad id 0, masked out
        for b, (q, p, s) in enumerate(batch):
            ids[b, :lens[b]] = torch.tensor(q + p + s)
        x = self.embed[ids]
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        mask = self.build_mask(lens, T)
        cos, sin = self.rope(T)
        for l in range(exit_layer):
            if ratio > 1 and l in compress_layers:
                x, segs = self.compress(x, segs, ratio)
                lens = [sum(t) for t in segs]
                T = x.shape[1]
                mask = self.build_mask(lens, T)
                cos, sin = self.rope(T)
            x = self.layer(l, x, mask, cos, sin)
        last = x[torch.arange(len(lens)), torch.tensor(lens) - 1]
        s = self.rmsnorm(last, self.final_norm) @ self.heads[exit_layer]
        if self.final_cap:
            s = self.final_cap * torch.tanh(s / self.final_cap)
        return s


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", required=True, help="JSON written by bench_engine --rows-out")
    ap.add_argument("--model", help="checkpoint folder (default: the one in --rows)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=0, help="0: all rows in one batch")
    ap.add_argument("--only", help="run configurations whose name contains this")
    ap.add_argument("--out", help="write the figures as JSON")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    with open(a.rows) as f:
        data = json.load(f)
    rows = [(r["q"], r["p"], r["s"]) for r in data["rows"]]
    n = len(rows)
    bs = a.batch_size or n
    batches = [rows[i:i + bs] for i in range(0, n, bs)]
    model = Reranker(a.model or data["model"])
    n_tok = sum(len(q) + len(p) + len(s) for q, p, s in rows)
    padded = sum(len(b) * max(len(q) + len(p) + len(s) for q, p, s in b) for b in batches)
    print(f"torch_eager: torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, "
          f"inference_mode, {'gemma2' if model.gemma else 'llama/mistral'} arch")
    print(f"rows: {n} pairs in {len(batches)} batch(es) of {bs}, {n_tok} tokens, "
          f"{padded} positions after right padding (+{100 * (padded / n_tok - 1):.1f}%)")
    print(f"timing: {a.warmup} warm-up run(s) of the first config, then the median of "
          f"{a.reps} runs per config; width compression implemented (mean pooling)\n")

    results, worst = [], 0.0
    warmed = False
    with torch.inference_mode():
        for cfg in data["configs"]:
            if a.only and a.only not in cfg["name"]:
                continue
            run = lambda: torch.cat([model.score(b, cfg["exit"], cfg["ratio"],
                                                 cfg["compress_layers"]) for b in batches])
            if not warmed:
                for _ in range(a.warmup):
                    run()
                warmed = True
            times, cpus = [], []
            for _ in range(a.reps):
                c0, t = time.process_time(), time.perf_counter()
                s = run()
                times.append(time.perf_counter() - t)
                cpus.append(time.process_time() - c0)
            mi = sorted(range(len(times)), key=times.__getitem__)[(len(times) - 1) // 2]
            med, cpu = times[mi], cpus[mi]
            c = torch.tensor(cfg["c_scores"], dtype=torch.float64)
            t64 = s.double()
            # relative to each score, floored at 1e-3 of the largest |score| so a score near
            # zero does not turn rounding noise into a huge relative figure
            floor = 1e-3 * c.abs().max().item()
            rel = ((t64 - c).abs() / c.abs().clamp_min(floor)).max().item()
            absd = (t64 - c).abs().max().item()
            worst = max(worst, rel)
            pps = n / med
            ratio = cfg["c_pairs_per_s"] / pps
            print(f"[{cfg['name']}]  time {med:.3f} s (min {min(times):.3f}, max {max(times):.3f})"
                  f"  {pps:.2f} pairs/s  cpu {cpu:.1f} s  C/torch = {ratio:.2f}x   "
                  f"scores vs C: max rel diff {rel:.2e} (max abs {absd:.2e})"
                  f"{'' if rel <= 1e-3 else '  MISMATCH'}", flush=True)
            results.append({"name": cfg["name"], "torch_pairs_per_s": pps, "time_s": med,
                            "cpu_s": cpu,
                            "max_rel_diff": rel, "max_abs_diff": absd})
    print(f"\nscores: max rel diff over all configs {worst:.2e} "
          f"({'OK, <= 1e-3' if worst <= 1e-3 else 'FAIL, > 1e-3'})")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "batch_size": bs,
                       "padded_positions": padded, "tokens": n_tok, "configs": results}, f,
                      indent=1)
    return 0 if worst <= 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
