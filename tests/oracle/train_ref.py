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
     "cascade": 1, "cascade_step": 0, "cascade_weight": 1.0,
     "lora_dropout": 0.25, "seed": 1, "drop_step": 7}  # LoRA mode only
C_OUT_DIR holds what the C trainer wrote: grads.safetensors, params.safetensors (the trainable
tensors; in LoRA mode the A/B values to use here) and result.json (loss parts and scores).

The loss is matryoshka-method.md section 6: per query and exit, listwise cross-entropy against
the positive (row 0 of the group), plus -sum softmax(teacher) log softmax(s_l) when teacher
scores are given, plus the cascade term -sum softmax(f_a(l)) log softmax(s_l) for l < D with
f from a detached full-width pass and a(l) = min(D, k ceil((l+1)/k)) rounded up to an exit
layer, k = cascade_step or max(1, D // 4), times cascade_weight (default 1, the spec's).
Averaged over queries, summed over exits.

LoRA dropout (PEFT semantics: y = W x + scale B A (x * mask / (1 - p)), the exit heads' LoRA
included) is done here unmerged, with the masks recomputed from the trainer's documented
counter-based hash of (seed, drop_step, pass, layer, linear, element index in the packed
layer input); pass 0 is the student, pass 1 the full-width cascade teacher.

Backbone pieces (layers, RMSNorm, RoPE, attention, mean compression) come from mr_ref.py, the
float64 scoring oracle; only the exit score is rewritten here so that it stays a tensor.
Prints per-tensor relative errors; exit status 0 when everything is within --tol, 1 if not,
2 on a usage or input error.
"""
import argparse
import json
import math
import os
import struct
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


M64 = (1 << 64) - 1
GOLDEN = 0x9e3779b97f4a7c15
DROP_HEAD = 1 << 20


def mix64(z):
    """splitmix64's output function at state z + golden (common/prng.h mr_prng_mix)."""
    z = (z + GOLDEN) & M64
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M64
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M64
    return z ^ (z >> 31)


def f32(v):
    return struct.unpack("f", struct.pack("f", v))[0]


class Dropout:
    """The trainer's LoRA dropout: element i of a LoRA input under key is kept (x 1/(1-p)) when
    mix64(key + i * golden) >> 11 >= p 2^53, with p and 1/(1-p) in float32 as in C."""

    def __init__(self, p, seed, step):
        self.p = f32(p)
        self.keep = f32(1.0 / f32(1.0 - self.p))
        self.thr = int(self.p * 9007199254740992.0)
        self.seed, self.step = seed, step

    def pass_key(self, pas):
        return mix64(mix64(mix64(self.seed ^ 0xd40b0c7) ^ self.step) ^ pas)

    @staticmethod
    def unit_key(pk, unit, j):
        return mix64(pk ^ mix64(((unit << 8) + j) & M64))

    def factors(self, key, start, shape):
        n = math.prod(shape)
        f = [self.keep if (mix64((key + i * GOLDEN) & M64) >> 11) >= self.thr else 0.0
             for i in range(start, start + n)]
        return torch.tensor(f, dtype=F64).reshape(shape)


def layer_offsets(rows, D, ratio, clayers):
    """off[li][ri]: first token of row ri in the packed input of layer li (rows back to back,
    the trainer's layout; passages pooled to ceil(P / ratio) at each compress layer)."""
    npass = [len(r["p"]) for r in rows]
    off = []
    for li in range(D):
        if ratio > 1 and li in clayers:
            npass = [(n + ratio - 1) // ratio for n in npass]
        lens = [len(r["q"]) + n + len(r["s"]) for r, n in zip(rows, npass)]
        off.append([sum(lens[:i]) for i in range(len(rows))])
    return off


class DroppedLinears:
    """model.linear with the LoRA pairs unmerged and their inputs dropped: the layer index and
    linear come from the tensor name, the row's packed offset from forward()."""

    def __init__(self, model, lora, scale, drop, pas):
        self.model, self.lora, self.scale, self.drop = model, lora, scale, drop
        self.pk = drop.pass_key(pas)
        self.base = Model.linear.__get__(model)
        self.tok0 = 0

    def __call__(self, x, name):
        y = self.base(x, name)
        pair = self.lora.get(name)
        if pair is None:
            return y
        li = int(name.split(".")[2])
        j = LIN.index(name.split(".", 3)[3])
        key = Dropout.unit_key(self.pk, li, j)
        xd = x * self.drop.factors(key, self.tok0 * x.shape[1], tuple(x.shape))
        A, B = pair
        return y + self.scale * (xd @ A.T) @ B.T

    def head(self, e, ri):
        d = self.model.cfg.hidden
        A, B = self.lora["lm_head.%d.linear_head" % e]
        key = Dropout.unit_key(self.pk, DROP_HEAD + e, 0)
        delta = (self.scale * (B @ A)).reshape(-1)
        return self.model.head_weight(e) + delta * self.drop.factors(key, ri * d, (d,))


def forward(model, rows, ratio, clayers, pooling="mean", dropped=None):
    """Scores (n_exits, n_rows) as a tensor; every row alone (no packing needed in torch).
    Attention pooling takes the previous layer's last-query attention detached, as the trainer
    does (stop-gradient through the pooling weights). dropped: a DroppedLinears (LoRA dropout)
    or None (LoRA merged into model.w)."""
    c = model.cfg
    exits = exits_of(c)
    D = exits[-1]
    out = [[None] * len(rows) for _ in exits]
    off = layer_offsets(rows, D, ratio, clayers)
    if dropped:
        model.linear = dropped
    for ri, row in enumerate(rows):
        x = model.embed(row["q"] + row["p"] + row["s"])
        nq, npass = len(row["q"]), len(row["p"])
        probs = None
        for li in range(D):
            if ratio > 1 and li in clayers:
                w = probs.detach() if pooling == "attention" else None
                x, npass = compress_row(x, nq, npass, ratio, pooling, w)
            if dropped:
                dropped.tok0 = off[li][ri]
            x, probs = model.layer(li, x)
            if li + 1 in exits:
                e = exits.index(li + 1)
                y = model.rmsnorm(x[-1], "model.norm.weight")
                s = torch.dot(y, dropped.head(e, ri) if dropped else model.head_weight(e))
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
    # 1e-4: the C trainer runs in float32, this reference in float64: measured at most 9.8e-6
    # (gradient norms, qwen2 full), 9.5e-8 (scores), 4e-8 (loss) in tests/train_vs_torch.sh;
    # a missing term or a wrong factor is off by 1e-2 or more
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
    lora = req.get("mode", "full") == "lora"
    pairs, drop, scale = {}, None, 0.0
    if lora:
        scale = float(req.get("lora_alpha", 8)) / int(req.get("lora_rank", 4))
        for n, t in cparams.items():
            leaves[n] = t.clone().requires_grad_(True)
        for n in leaves:
            if n.endswith(".lora_A.weight"):
                mod = n[len("base_model.model."):-len(".lora_A.weight")]
                pairs[mod] = (leaves[n], leaves[n.replace("lora_A", "lora_B")])
        if float(req.get("lora_dropout", 0)) > 0:
            drop = Dropout(float(req["lora_dropout"]), int(req.get("seed", 1)),
                           int(req.get("drop_step", 0)))
    else:  # every tensor, not only those C wrote a gradient for (checked below)
        for n in base:
            leaves[n] = base[n].clone().requires_grad_(True)
    w = dict(base)
    if not lora:
        w.update(leaves)
    elif not drop:  # no dropout: the LoRA pairs merged, W + scale B A
        for mod, (A, B) in pairs.items():
            w[mod + ".weight"] = base[mod + ".weight"] + scale * (B @ A)
    model.w = w

    def dropped(pas):
        return DroppedLinears(model, pairs, scale, drop, pas) if drop else None

    groups = req["groups"]
    G = len(groups[0])
    rows = [r for g in groups for r in g]
    ratio = int(req.get("ratio", 1))
    clayers = set(req.get("compress_layers", []))
    exits = exits_of(cfg)
    D = exits[-1]
    cascade = bool(req.get("cascade", 0))
    step = int(req.get("cascade_step", 0))
    cw = float(req.get("cascade_weight", 1.0))
    teacher = req.get("teacher")

    f = None
    if cascade:
        with torch.no_grad():
            f = forward(model, rows, 1, set(), dropped=dropped(1)).detach()
    s = forward(model, rows, ratio, clayers, req.get("pooling", "mean"), dropped(0))
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
    loss = (ce + ext + cw * cas) / B
    loss.backward()

    bad = 0

    def rel(a_, b_):
        assert a_.shape == b_.shape, (a_.shape, b_.shape)   # no broadcasting past a missing row
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
    # C's gradients name exactly its trainable tensors: in full mode checkpoint tensors, in
    # LoRA mode its parameters; a tensor without one must have no gradient in the reference
    # either (full mode: the LM head lm_head.weight, which no score reads)
    extra = sorted(set(cgrads) - set(leaves))
    if extra or (lora and (not pairs or set(cgrads) != set(cparams))):
        print("C gradients for unknown tensors: %s (%d LoRA pairs)" % (extra[:5], len(pairs)))
        bad += 1
    missing = [n for n in leaves if n not in cgrads and leaves[n].grad is not None
               and bool(leaves[n].grad.abs().max() > 0)]
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
    print("%d gradient tensors, worst relative error %.2e" % (len(set(leaves) & set(cgrads)), worst))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
