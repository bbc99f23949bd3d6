#!/usr/bin/python3
"""train_ref.py: PyTorch autograd reference for the trainer's loss and gradients (float64).

Usage:
    train_ref.py BATCH.json C_OUT_DIR [--tol 1e-4]

BATCH.json (also read by `test_train_model dump`):
    {"model": DIR, "mode": "full" | "lora", "lora_rank": 4, "lora_alpha": 8,
     "groups": [[{"q": [ids], "p": [ids], "s": [ids]}, ...G rows, positive first], ...],
     "teacher": [[score per row], ...] or null,      # external teacher scores
     "ratio": 2, "compress_layers": [1, 3],          # width of the student pass
     "pooling": "mean" | "attention",                # attention: weights are constants
     "cascade": 1, "cascade_step": 0}
C_OUT_DIR holds what the C trainer wrote: grads.safetensors, params.safetensors (the trainable
tensors; in LoRA mode the A/B values to use here) and result.json (loss parts and scores).

The loss is matryoshka-method.md section 6: per query and exit, listwise cross-entropy against
the positive (row 0 of the group), plus -sum softmax(teacher) log softmax(s_l) when teacher
scores are given, plus the cascade term -sum softmax(f_a(l)) log softmax(s_l) for l < D with
f from a detached full-width pass and a(l) = min(D, k ceil((l+1)/k)) rounded up to an exit
layer, k = cascade_step or max(1, D // 4). Averaged over queries, summed over exits.

Backbone pieces (layers, RMSNorm, RoPE, attention, mean compression) come from mr_ref.py, the
float64 scoring oracle; only the exit score is rewritten here so that it stays a tensor.
Prints per-tensor relative errors; exit status 0 when everything is within --tol, 1 if not,
2 on a usage or input error.
"""
import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mr_ref import Model, compress_row, read_safetensors  # noqa: E402

F64 = torch.float64
LIN = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
       "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def exits_of(cfg):
    return list(range(cfg.start_layer, cfg.n_layers + 1, cfg.layer_sep))


def anchor(exits, l, step):
    D = exits[-1]
    k = step if step > 0 else max(1, D // 4)
    a = k * ((l + 1 + k - 1) // k)
    if a > D or l >= D:
        a = D
    for e in exits:
        if e >= a:
            return e
    return D


def forward(model, rows, ratio, clayers, pooling="mean"):
    """Scores (n_exits, n_rows) as a tensor; every row alone (no packing needed in torch).
    Attention pooling takes the previous layer's last-query attention detached, as the trainer
    does (stop-gradient through the pooling weights)."""
    c = model.cfg
    exits = exits_of(c)
    D = exits[-1]
    out = [[None] * len(rows) for _ in exits]
    for ri, row in enumerate(rows):
        x = model.embed(row["q"] + row["p"] + row["s"])
        nq, npass = len(row["q"]), len(row["p"])
        probs = None
        for li in range(D):
            if ratio > 1 and li in clayers:
                w = probs.detach() if pooling == "attention" else None
                x, npass = compress_row(x, nq, npass, ratio, pooling, w)
            x, probs = model.layer(li, x)
            if li + 1 in exits:
                e = exits.index(li + 1)
                y = model.rmsnorm(x[-1], "model.norm.weight")
                s = torch.dot(y, model.head_weight(e))
                if c.final_softcap:
                    s = c.final_softcap * torch.tanh(s / c.final_softcap)
                out[e][ri] = s
    return torch.stack([torch.stack(r) for r in out])


def xent(s, target):
    """-sum target log softmax(s); target None = one-hot at 0."""
    ls = torch.log_softmax(s, dim=0)
    return -ls[0] if target is None else -(target * ls).sum()


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("batch")
    ap.add_argument("c_out")
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args(argv[1:])
    with open(a.batch) as f:
        req = json.load(f)
    model = Model(req["model"])
    cfg = model.cfg
    cgrads = read_safetensors(os.path.join(a.c_out, "grads.safetensors"))
    cparams = read_safetensors(os.path.join(a.c_out, "params.safetensors"))
    with open(os.path.join(a.c_out, "result.json")) as f:
        cres = json.load(f)

    leaves = {}
    base = dict(model.w)
    if req.get("mode", "full") == "lora":
        rank = int(req.get("lora_rank", 4))
        scale = float(req.get("lora_alpha", 8)) / rank
        for n, t in cparams.items():
            leaves[n] = t.clone().requires_grad_(True)

        def apply_lora():
            w = dict(base)
            for n in leaves:
                if not n.endswith(".lora_A.weight"):
                    continue
                mod = n[len("base_model.model."):-len(".lora_A.weight")]
                A, B = leaves[n], leaves[n.replace("lora_A", "lora_B")]
                w[mod + ".weight"] = base[mod + ".weight"] + scale * (B @ A)
            model.w = w
    else:
        for n in cgrads:
            leaves[n] = base[n].clone().requires_grad_(True)

        def apply_lora():
            w = dict(base)
            w.update(leaves)
            model.w = w

    groups = req["groups"]
    G = len(groups[0])
    rows = [r for g in groups for r in g]
    ratio = int(req.get("ratio", 1))
    clayers = set(req.get("compress_layers", []))
    exits = exits_of(cfg)
    D = exits[-1]
    cascade = bool(req.get("cascade", 0))
    step = int(req.get("cascade_step", 0))
    teacher = req.get("teacher")

    apply_lora()
    f = None
    if cascade:
        with torch.no_grad():
            f = forward(model, rows, 1, set()).detach()
    s = forward(model, rows, ratio, clayers, req.get("pooling", "mean"))
    B = len(groups)
    ce = ext = cas = torch.zeros((), dtype=F64)
    for g in range(B):
        sl = slice(g * G, (g + 1) * G)
        tp = torch.softmax(torch.tensor(teacher[g], dtype=F64), 0) if teacher else None
        for e, l in enumerate(exits):
            ce = ce + xent(s[e, sl], None)
            if tp is not None:
                ext = ext + xent(s[e, sl], tp)
            if cascade and l < D:
                ae = exits.index(anchor(exits, l, step))
                cas = cas + xent(s[e, sl], torch.softmax(f[ae, sl], 0))
    loss = (ce + ext + cas) / B
    loss.backward()

    bad = 0

    def rel(a_, b_):
        return float((a_ - b_).norm() / max(float(b_.norm()), 1e-12))

    def report(what, err, tol):
        nonlocal bad
        ok = err <= tol
        bad += not ok
        print("%-72s %.2e %s" % (what, err, "ok" if ok else "FAIL"))

    report("loss (%.6f vs C %.6f)" % (float(loss), cres["loss"]),
           abs(float(loss) - cres["loss"]) / max(abs(float(loss)), 1e-12), a.tol)
    for part, v in (("ce", ce), ("ext", ext), ("cascade", cas)):
        report("  %s" % part, abs(float(v) / B - cres[part]) / max(abs(float(v) / B), 1e-6), a.tol)
    report("scores", rel(torch.tensor(cres["scores"], dtype=F64), s.detach()), a.tol)
    missing = [n for n in leaves if n not in cgrads]
    if missing:
        print("C wrote no gradient for: %s" % ", ".join(missing[:5]))
        bad += 1
    worst = 0.0
    for n in sorted(leaves):
        g = leaves[n].grad
        if g is None:
            g = torch.zeros_like(leaves[n])
        if n in cgrads:
            err = rel(cgrads[n].reshape(g.shape), g)
            worst = max(worst, err)
            if err > a.tol or os.environ.get("MR_VERBOSE"):
                report("grad " + n, err, a.tol)
    print("%d gradient tensors, worst relative error %.2e" % (len(leaves), worst))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
