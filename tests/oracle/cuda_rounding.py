#!/usr/bin/python3
"""cuda_rounding.py: the CUDA backends' rounding emulated in the float64 oracle (mr_ref.py), the
measurement behind test_backend.c's CUDA_RTOL / CUDA_FLOOR and FP8_REL_L2. Not a test (it asserts
nothing): a tool to re-derive those bounds on a machine without a GPU, or when the kernels change.

Usage:
    build/test_backend write DIR                # the seeded checkpoints the CUDA cases use
    /usr/bin/python3 tests/oracle/cuda_rounding.py bf16 DIR
    /usr/bin/python3 tests/oracle/cuda_rounding.py fp8 DIR

bf16 (the "cuda" backend): every GEMM input, activations and weights, rounded to bf16 (round to
nearest even), products summed exactly; in attention q, k (after RoPE), v and the softmax
probabilities rounded to bf16; everything else exact. Rows and cases are test_backend.c's
(make_rows, case_opts). Prints the worst |emulated - exact| / max(|exact|, floor) for a few
floors, and the worst relative error of scores at least 1 in size.

fp8 ("cuda-fp8"): the bf16 GEMM inputs further scaled per tensor to e4m3 (scale = max|x| / 448,
3 mantissa bits, subnormals below 2^-6); prints ||emulated - exact|| / ||exact|| per exit over
the batch, the figure test_cuda_fp8_near_cpu bounds, for its three cases.

What it leaves out (why the tests keep a margin over its figures): the GPU's summation orders
(cuBLAS, flash attention's online softmax), fast exp, bf16 outputs of some kernels.
"""
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mr_ref  # noqa: E402

BF16_MODELS = ["llama-f32", "llama-bf16", "qwen2-f32", "qwen2-bf16", "gemma2-f32",
               "gemma2-bf16", "llama-hd128", "qwen2-hd64", "gemma2-hd256"]
FP8_MODELS = ["fp8-hd8", "fp8-hd128"]
N_ROWS = 12


def bf(t):
    return t.to(torch.float32).to(torch.bfloat16).to(torch.float64)


def e4m3(t):
    """Round to the nearest e4m3 value (ties to even), saturating at 448."""
    a = t.abs().clamp(max=448.0)
    e = torch.floor(torch.log2(a.clamp(min=2.0 ** -6)))
    step = 2.0 ** (e - 3)
    return torch.sign(t) * (torch.round(a / step) * step).clamp(max=448.0)


def q8(t):
    amax = float(t.abs().max())
    s = amax / 448.0 if amax > 0 else 1.0
    return e4m3(t / s) * s


def linear_with(rnd):
    def linear(self, x, name):
        y = rnd(bf(x)) @ rnd(bf(self.w[name + ".weight"])).T
        b = self.w.get(name + ".bias")
        return y + b if b is not None else y
    return linear


def attention_bf16(self, i, h):
    """mr_ref.Model.attention with q, k, v and the probabilities rounded to bf16."""
    c = self.cfg
    p = "model.layers.%d.self_attn." % i
    L = h.shape[0]
    q = self.linear(h, p + "q_proj").reshape(L, c.n_heads, c.head_dim)
    k = self.linear(h, p + "k_proj").reshape(L, c.n_kv, c.head_dim)
    v = bf(self.linear(h, p + "v_proj").reshape(L, c.n_kv, c.head_dim))
    q, k = bf(self.rope(q)), bf(self.rope(k))
    g = c.n_heads // c.n_kv
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    s = torch.einsum("qhd,khd->hqk", q, k) * c.attn_scale
    if c.attn_softcap:
        s = c.attn_softcap * torch.tanh(s / c.attn_softcap)
    qp, kp = torch.arange(L)[:, None], torch.arange(L)[None, :]
    mask = kp > qp
    if c.layer_is_sliding(i):
        mask = mask | (qp - kp >= c.sliding_window)
    pr = torch.softmax(s.masked_fill(mask[None, :, :], float("-inf")), dim=-1)
    o = torch.einsum("hqk,khd->qhd", bf(pr), v).reshape(L, c.n_heads * c.head_dim)
    return self.linear(o, p + "o_proj"), pr[:, -1, :].sum(0)


def make_rows(n):
    """test_backend.c's make_rows: row i has 3 + 7 i passage tokens from frand (seed 9)."""
    st, rows = 9, []
    for i in range(n):
        ids = []
        for _ in range(3 + 7 * i):
            st = (st * 1664525 + 1013904223) & 0xffffffff
            ids.append(2 + (((st >> 8) & 0xffff) * 15) // 16384)   # 2 + (frand + 1) * 30
        rows.append({"q": [1, 10, 11, 12], "p": ids, "s": [13, 14, 15]})
    return rows


def case(i):
    """test_backend.c's case_opts (adapters aside): exits and score() keywords."""
    pr = {5: [{"layer": 1, "top_k": 6}, {"layer": 2, "top_k": 3}],
          6: [{"layer": 2, "min_score": 0.0}], 8: [{"layer": 2, "top_k": 5}]}.get(i, [])
    ex = {1: [2, 4], 2: [2, 4], 3: [2, 4], 4: [4], 5: [1, 2, 4], 6: [2, 3], 7: [3, 4],
          8: [2, 4]}.get(i, [1, 2, 3, 4])
    kw = {2: dict(compress_ratio=2, compress_layers=[1, 3]),
          3: dict(compress_ratio=2, compress_layers=[1, 3], pooling="attention"),
          4: dict(compress_ratio=4, compress_layers=[0]),
          7: dict(sigmoid=True, head_by_position=True),
          8: dict(compress_ratio=8, compress_layers=[2], pooling="attention")}.get(i, {})
    return ex, dict(kw, prune=pr)


def emulated(model, rows, ex, kw, rnd):
    saved = mr_ref.Model.linear, mr_ref.Model.attention
    mr_ref.Model.linear, mr_ref.Model.attention = linear_with(rnd), attention_bf16
    try:
        return mr_ref.score(model, rows, ex, **kw)
    finally:
        mr_ref.Model.linear, mr_ref.Model.attention = saved


def main(argv):
    if len(argv) != 3 or argv[1] not in ("bf16", "fp8"):
        sys.stderr.write(__doc__)
        return 2
    mode, root = argv[1], argv[2]
    rows, errs = make_rows(N_ROWS), []
    for name in BF16_MODELS if mode == "bf16" else FP8_MODELS:
        model = mr_ref.Model(os.path.join(root, name))
        for i in range(9) if mode == "bf16" else range(3):
            ex, kw = case(i)
            ref = mr_ref.score(model, rows, ex, **kw)
            got = emulated(model, rows, ex, kw, (lambda t: t) if mode == "bf16" else q8)
            if mode == "fp8":
                for e in range(len(ex)):
                    num = sum((got[r][e] - ref[r][e]) ** 2 for r in range(N_ROWS))
                    den = sum(ref[r][e] ** 2 for r in range(N_ROWS))
                    print("%s case %d exit %d: ||fp8 - exact|| / ||exact|| %.4f"
                          % (name, i, ex[e], math.sqrt(num / den)))
                continue
            for r in range(N_ROWS):
                for e in range(len(ex)):
                    a, b = got[r][e], ref[r][e]
                    if (a is None) != (b is None):
                        print("%s case %d row %d exit %d: pruning flips" % (name, i, r, ex[e]))
                    elif a is not None:
                        errs.append((abs(a - b), abs(b), name, i, r, ex[e]))
    if mode == "bf16":
        a = np.array([(x[0], x[1]) for x in errs])
        print("%d scores, |exact| from %.3g to %.3g (median %.3g)"
              % (len(a), a[:, 1].min(), a[:, 1].max(), np.median(a[:, 1])))
        for floor in (0.1, 0.3, 1.0):
            rel = a[:, 0] / np.maximum(a[:, 1], floor)
            j = int(rel.argmax())
            print("worst |emulated - exact| / max(|exact|, %.1f): %.3g (%s case %d row %d exit %d)"
                  % ((floor, rel[j]) + errs[j][2:]))
        big = a[:, 1] >= 1
        if big.any():
            print("worst relative error where |exact| >= 1: %.3g" % (a[big, 0] / a[big, 1]).max())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
