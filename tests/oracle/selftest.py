#!/usr/bin/python3
"""selftest.py: checks the oracle (mr_ref.py) against facts that hold independently of it.

    /usr/bin/python3 tests/oracle/selftest.py      # prints "N passed, 0 failed", exit 0 on success

Includes a second, deliberately naive implementation (numpy, explicit loops per token and head,
RoPE written as pairwise rotations) that the vectorised torch oracle must match to ~1e-10, plus
structural identities (r=1 == no compression, identical-token pooling == shorter passage, B=0
LoRA == no LoRA, hand-computed scores with zeroed blocks, pruning semantics, bf16 / sharded
loading, head-by-position quirk, ...).
"""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import traceback

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from mr_ref import (Model, RefError, compress_row, load_checkpoint_tensors,  # noqa: E402
                    read_safetensors, score, write_safetensors)

PY = "/usr/bin/python3"
TMP = tempfile.mkdtemp(prefix="mr_oracle_selftest_")
RESULTS = []


def sh(*args):
    subprocess.run([PY] + [str(a) for a in args], check=True)


def make_tiny(name, *args):
    d = os.path.join(TMP, name)
    if not os.path.exists(d):
        sh(os.path.join(HERE, "make_tiny.py"), d, *args)
    return d


def make_adapter(model, name, *args):
    d = os.path.join(TMP, name)
    sh(os.path.join(HERE, "make_adapter.py"), model, d, *args)
    return d


def copy_model(src, name, edit_tensors=None, edit_config=None):
    """Copy of a checkpoint as F32 single file, tensors/config edited by callbacks."""
    d = os.path.join(TMP, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    t = load_checkpoint_tensors(src)
    if edit_tensors:
        edit_tensors(t)
    if edit_config:
        edit_config(cfg)
    cfg["torch_dtype"] = "float32"
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    write_safetensors(os.path.join(d, "model.safetensors"), t, "F32")
    return d


def check(name):
    def deco(fn):
        try:
            fn()
            RESULTS.append((name, True, ""))
            print("PASS %s" % name)
        except Exception:
            RESULTS.append((name, False, traceback.format_exc()))
            print("FAIL %s\n%s" % (name, traceback.format_exc()))
        return fn
    return deco


# Tolerances here are float64 ones: identities computed two ways agree to a few ulps (2.2e-16)
# per operation, so 1e-12..1e-15 where the paths are short; each other bound says why beside it.
# "Must differ" checks use thresholds far above that noise.
def close(a, b, rel=1e-12, abs_=1e-12):
    assert len(a) == len(b), (a, b)
    for ra, rb in zip(a, b):
        assert len(ra) == len(rb), (ra, rb)
        for x, y in zip(ra, rb):
            if x is None or y is None:
                assert x is None and y is None, (ra, rb)
                continue
            assert abs(x - y) <= abs_ + rel * max(abs(x), abs(y)), (a, b)


def rng_rows(seed, n, vocab=512, qlen=(2, 6), plen=(0, 14), slen=(1, 5)):
    r = np.random.RandomState(seed)
    rows = []
    for _ in range(n):
        q = [1] + list(r.randint(3, vocab, r.randint(qlen[0], qlen[1] + 1)))
        p = list(r.randint(3, vocab, r.randint(plen[0], plen[1] + 1)))
        s = list(r.randint(3, vocab, r.randint(slen[0], slen[1] + 1)))
        rows.append({"q": [int(v) for v in q], "p": [int(v) for v in p], "s": [int(v) for v in s]})
    return rows


# ------------------------------------------------------------------------------------------------
# naive second implementation (numpy, loops)
# ------------------------------------------------------------------------------------------------

def naive_scores(model_dir, rows, exits, r=1, clayers=(), pooling="mean", adapters=(),
                 sigmoid=False):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    W = {k: v.numpy().astype(np.float64) for k, v in load_checkpoint_tensors(model_dir).items()}
    for ad in adapters:
        with open(os.path.join(ad, "adapter_config.json")) as f:
            ac = json.load(f)
        sc = ac["lora_alpha"] / (math.sqrt(ac["r"]) if ac.get("use_rslora") else ac["r"])
        T = {k: v.numpy() for k, v in read_safetensors(os.path.join(ad, "adapter_model.safetensors")).items()}
        for k in T:
            if k.endswith("lora_A.weight"):
                mod = k[len("base_model.model."):-len(".lora_A.weight")]
                A, B = T[k], T[k.replace("lora_A", "lora_B")]
                W[mod + ".weight"] = W[mod + ".weight"] + sc * B.dot(A)
    mt = cfg["model_type"]
    gemma = "gemma" in mt
    qwen = mt == "qwen2"
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    D = cfg.get("head_dim") or H // nh
    eps = cfg.get("rms_norm_eps", 1e-6)
    theta = cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"]
    win = cfg.get("sliding_window") or 0
    if qwen and not cfg.get("use_sliding_window"):
        win = 0
    acap = cfg.get("attn_logit_softcapping") or 0 if gemma else 0
    fcap = cfg.get("final_logit_softcapping") or 0 if gemma else 0
    scale = 1.0 / math.sqrt(cfg.get("query_pre_attn_scalar", D) if gemma else D)

    def rms(x, w):
        ms = sum(v * v for v in x) / len(x)
        f = 1.0 / math.sqrt(ms + eps)
        return np.array([x[i] * f * ((1.0 + w[i]) if gemma else w[i]) for i in range(len(x))])

    def act(v):
        if gemma:
            return 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))
        return v / (1.0 + np.exp(-v))

    def lin(x, name):
        y = W[name + ".weight"].dot(x)
        if name + ".bias" in W:
            y = y + W[name + ".bias"]
        return y

    def rope(vec, pos):
        out = vec.copy()
        half = D // 2
        for i in range(half):
            ang = pos * theta ** (-2.0 * i / D)
            a, b = vec[i], vec[i + half]
            out[i] = a * math.cos(ang) - b * math.sin(ang)
            out[i + half] = b * math.cos(ang) + a * math.sin(ang)
        return out

    def layer(li, xs):
        p = "model.layers.%d." % li
        L = len(xs)
        hs = [rms(x, W[p + "input_layernorm.weight"]) for x in xs]
        Q = [lin(h, p + "self_attn.q_proj").reshape(nh, D) for h in hs]
        K = [lin(h, p + "self_attn.k_proj").reshape(nkv, D) for h in hs]
        V = [lin(h, p + "self_attn.v_proj").reshape(nkv, D) for h in hs]
        Q = [np.stack([rope(Q[t][h], t) for h in range(nh)]) for t in range(L)]
        K = [np.stack([rope(K[t][h], t) for h in range(nkv)]) for t in range(L)]
        sliding = win and ((li % 2 == 0) if gemma else True)
        att = []
        last = np.zeros(L)
        for t in range(L):
            o = []
            for h in range(nh):
                kh = h // (nh // nkv)
                keys = [j for j in range(t + 1) if not (sliding and t - j >= win)]
                logits = []
                for j in keys:
                    s = float(np.dot(Q[t][h], K[j][kh])) * scale
                    if acap:
                        s = acap * math.tanh(s / acap)
                    logits.append(s)
                m = max(logits)
                e = [math.exp(v - m) for v in logits]
                z = sum(e)
                pr = [v / z for v in e]
                o.append(sum(pr[i] * V[keys[i]][kh] for i in range(len(keys))))
                if t == L - 1:
                    for i, j in enumerate(keys):
                        last[j] += pr[i]
            att.append(lin(np.concatenate(o), p + "self_attn.o_proj"))
        out = []
        for t in range(L):
            if gemma:
                h1 = xs[t] + rms(att[t], W[p + "post_attention_layernorm.weight"])
                g = rms(h1, W[p + "pre_feedforward_layernorm.weight"])
                m = lin(act(lin(g, p + "mlp.gate_proj")) * lin(g, p + "mlp.up_proj"), p + "mlp.down_proj")
                out.append(h1 + rms(m, W[p + "post_feedforward_layernorm.weight"]))
            else:
                h1 = xs[t] + att[t]
                g = rms(h1, W[p + "post_attention_layernorm.weight"])
                m = lin(act(lin(g, p + "mlp.gate_proj")) * lin(g, p + "mlp.up_proj"), p + "mlp.down_proj")
                out.append(h1 + m)
        return out, last

    start, sep = cfg["start_layer"], cfg.get("layer_sep", 1)
    res = []
    for row in rows:
        ids = row["q"] + row["p"] + row["s"]
        es = math.sqrt(H) if gemma else 1.0
        xs = [W["model.embed_tokens.weight"][t] * es for t in ids]
        nq, npass = len(row["q"]), len(row["p"])
        last = None
        sc = {}
        for li in range(max(exits)):
            if r > 1 and li in clayers:
                groups = []
                for g0 in range(0, npass, r):
                    idx = list(range(nq + g0, min(nq + g0 + r, nq + npass)))
                    if pooling == "mean":
                        groups.append(sum(xs[i] for i in idx) / len(idx))
                    else:
                        wsum = sum(last[i] for i in idx)
                        if wsum == 0.0:   # whole group outside the sliding window: plain mean
                            groups.append(sum(xs[i] for i in idx) / len(idx))
                        else:
                            groups.append(sum(last[i] * xs[i] for i in idx) / wsum)
                xs = xs[:nq] + groups + xs[nq + npass:]
                npass = len(groups)
            xs, last = layer(li, xs)
            if li + 1 in exits:
                y = rms(xs[-1], W["model.norm.weight"])
                k = (li + 1 - start) // sep
                s = float(np.dot(y, W["lm_head.%d.linear_head.weight" % k][0]))
                if fcap:
                    s = fcap * math.tanh(s / fcap)
                if sigmoid:
                    s = 1.0 / (1.0 + math.exp(-s))
                sc[li + 1] = s
        res.append([sc[e] for e in exits])
    return res


def ref(model_dir, rows, exits, adapters=(), **kw):
    return score(Model(model_dir, adapters), rows, exits, **kw)


# ------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------

MISTRAL = make_tiny("mistral", "--arch", "mistral", "--layers", "6", "--start-layer", "2",
                    "--sliding-window", "8", "--seed", "3")
QWEN = make_tiny("qwen2", "--arch", "qwen2", "--layers", "5", "--start-layer", "1", "--seed", "4")
GEMMA = make_tiny("gemma2", "--arch", "gemma2", "--layers", "6", "--start-layer", "2",
                  "--sliding-window", "8", "--seed", "5")
GEMMA_BF16 = make_tiny("gemma2_bf16", "--arch", "cost_wise_gemma", "--layers", "4",
                       "--start-layer", "1", "--dtype", "bf16", "--seed", "6", "--rope-nested")
ROWS = rng_rows(0, 3, plen=(9, 14))
ROWS[0]["p"] = ROWS[0]["p"][:9]          # some partial groups for r = 2, 4, 8


for arch, mdir, exits in (("mistral", MISTRAL, [6, 2, 4]), ("qwen2", QWEN, [1, 3, 5]),
                          ("gemma2", GEMMA, [3, 6]), ("gemma2-bf16", GEMMA_BF16, [1, 4])):
    for r, cl, pool in ((1, [], "mean"), (2, [1, 3], "mean"), (4, [0, 2], "mean"),
                        (2, [1, 2], "attention"), (8, [3], "attention")):
        @check("naive == oracle %s r=%d layers=%s %s" % (arch, r, cl, pool))
        def _(mdir=mdir, exits=exits, r=r, cl=cl, pool=pool):
            a = ref(mdir, ROWS, exits, compress_ratio=r, compress_layers=cl, pooling=pool)
            b = naive_scores(mdir, ROWS, exits, r=r, clayers=cl, pooling=pool)
            # two float64 implementations, other summation orders: measured 3.5e-14 at most
            close(a, b, rel=1e-12)


@check("naive == oracle with two LoRA adapters (rslora + heads), sigmoid")
def _():
    a1 = make_adapter(MISTRAL, "ad_naive1", "--rank", "4", "--alpha", "8", "--heads")
    a2 = make_adapter(MISTRAL, "ad_naive2", "--rank", "2", "--alpha", "4", "--rslora",
                      "--targets", "q_proj,down_proj", "--seed", "9")
    a = ref(MISTRAL, ROWS, [3, 6], adapters=[a1, a2], compress_ratio=2, compress_layers=[2],
            pooling="attention", sigmoid=True)
    b = naive_scores(MISTRAL, ROWS, [3, 6], r=2, clayers=[2], pooling="attention",
                     adapters=[a1, a2], sigmoid=True)
    close(a, b, rel=1e-12)   # measured 7.6e-16
    base = ref(MISTRAL, ROWS, [3, 6], compress_ratio=2, compress_layers=[2], pooling="attention",
               sigmoid=True)
    assert [len(r) for r in a] == [len(r) for r in base] == [2] * len(ROWS), (a, base)
    assert max(abs(x - y) for ra, rb in zip(a, base) for x, y in zip(ra, rb)) > 1e-3, "LoRA no effect"


for mdir, nm in ((MISTRAL, "mistral"), (GEMMA, "gemma2")):
    @check("compress_ratio 1 == no compression (%s)" % nm)
    def _(mdir=mdir):
        base = ref(mdir, ROWS, [2, 5])
        for pool in ("mean", "attention"):
            got = ref(mdir, ROWS, [2, 5], compress_ratio=1, compress_layers=[1, 2, 3], pooling=pool)
            assert got == base
        got = ref(mdir, ROWS, [2, 5], compress_ratio=4, compress_layers=[])
        assert got == base

    @check("compress layers at/after the deepest exit are ignored (%s)" % nm)
    def _(mdir=mdir):
        base = ref(mdir, ROWS, [4])
        assert ref(mdir, ROWS, [4], compress_ratio=2, compress_layers=[4, 5]) == base
        assert ref(mdir, ROWS, [4], compress_ratio=2, compress_layers=[4], pooling="attention") == base

    @check("compression changes the score, shallow exits before it unaffected (%s)" % nm)
    def _(mdir=mdir):
        base = ref(mdir, ROWS, [2, 3, 6])
        got = ref(mdir, ROWS, [2, 3, 6], compress_ratio=2, compress_layers=[3])
        assert [len(r) for r in base] == [len(r) for r in got] == [3] * len(ROWS), (base, got)
        for rb, rg in zip(base, got):
            assert rb[0] == rg[0] and rb[1] == rg[1]
            assert abs(rb[2] - rg[2]) > 1e-6

    @check("identical passage tokens, mean r=2 at layer 0 == passage of ceil(P/2) tokens (%s)" % nm)
    def _(mdir=mdir):
        rows_c, rows_s = [], []
        for i, P in enumerate((1, 4, 5, 7)):
            q, s = [1, 10 + i, 11], [20 + i, 21]
            rows_c.append({"q": q, "p": [77] * P, "s": s})
            rows_s.append({"q": q, "p": [77] * ((P + 1) // 2), "s": s})
        a = ref(mdir, rows_c, [2, 6], compress_ratio=2, compress_layers=[0])
        b = ref(mdir, rows_s, [2, 6])
        close(a, b, rel=1e-12)

    @check("mean pooling with r >= P gives one passage vector (%s)" % nm)
    def _(mdir=mdir):
        m = Model(mdir)
        row = {"q": [1, 5, 6], "p": [40, 41, 42, 43, 44], "s": [7, 8]}
        x = m.embed(row["q"] + row["p"] + row["s"])
        y, npass = compress_row(x, 3, 5, 8, "mean", None)
        assert npass == 1 and y.shape[0] == 3 + 1 + 2
        assert torch.equal(y[:3], x[:3]) and torch.equal(y[4:], x[8:])
        assert torch.allclose(y[3], x[3:8].mean(0), rtol=0, atol=1e-15)
        emb = [(torch.cat([x[:3], x[3:8].mean(0, keepdim=True), x[8:]]), 3, 1)]
        a = score(m, [row], [2, 5], compress_ratio=8, compress_layers=[0])
        b = score(m, [row], [2, 5], row_embeds=emb)
        close(a, b, rel=1e-12)

    @check("passage-free rows unaffected by compression (%s)" % nm)
    def _(mdir=mdir):
        rows = [{"q": [1, 5, 6], "p": [], "s": [7, 8, 9]}]
        assert ref(mdir, rows, [5], compress_ratio=8, compress_layers=[1, 2], pooling="attention") \
            == ref(mdir, rows, [5])


@check("attention pooling weights: probabilities of last token, normalised per group")
def _():
    m = Model(MISTRAL)
    x = torch.randn(10, 64, dtype=torch.float64)
    w = torch.rand(10, dtype=torch.float64)
    y, npass = compress_row(x, 2, 5, 2, "attention", w)
    assert npass == 3 and y.shape[0] == 2 + 3 + 3
    exp0 = (w[2] * x[2] + w[3] * x[3]) / (w[2] + w[3])
    exp2 = x[6]  # last partial group of one token: weight cancels
    assert torch.allclose(y[2], exp0, atol=1e-14) and torch.allclose(y[4], exp2, atol=1e-14)
    assert torch.equal(y[5:], x[7:])
    # a group whose weights are all zero (every token outside the sliding window): plain mean
    w0 = w.clone()
    w0[2:4] = 0.0
    y0, _ = compress_row(x, 2, 5, 2, "attention", w0)
    assert torch.allclose(y0[2], (x[2] + x[3]) / 2, atol=1e-15)
    # the probabilities summed over heads add up to the number of heads
    _, last = m.layer(0, m.embed([1, 2, 3, 4, 5]))
    assert abs(float(last.sum()) - m.cfg.n_heads) < 1e-12


for mdir, nm in ((MISTRAL, "mistral"), (GEMMA, "gemma2")):
    @check("hand-computed score with zeroed blocks (%s)" % nm)
    def _(mdir=mdir, nm=nm):
        def zero(t):
            for k in t:
                if k.endswith("o_proj.weight") or k.endswith("down_proj.weight"):
                    t[k] = torch.zeros_like(t[k])
        d = copy_model(mdir, nm + "_zeroed", edit_tensors=zero)
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
        t = load_checkpoint_tensors(d)
        row = {"q": [1, 9], "p": [10, 11, 12], "s": [13, 14]}
        got = ref(d, [row], [2, 6], compress_ratio=2, compress_layers=[1])[0]
        gemma = nm == "gemma2"
        e = t["model.embed_tokens.weight"][14].numpy() * (8.0 if gemma else 1.0)
        nw = t["model.norm.weight"].numpy()
        eps = cfg["rms_norm_eps"]
        y = e / np.sqrt(np.mean(e * e) + eps) * ((1 + nw) if gemma else nw)
        for j, ex in enumerate((2, 6)):
            s = float(y @ t["lm_head.%d.linear_head.weight" % (ex - 2)].numpy()[0])
            if gemma:
                s = cfg["final_logit_softcapping"] * math.tanh(s / cfg["final_logit_softcapping"])
            assert abs(s - got[j]) < 1e-12, (s, got[j])


@check("gemma final softcap bounds huge scores, attention softcap active")
def _():
    def big(t):
        for k in t:
            if "linear_head" in k:
                t[k] = t[k] * 1000.0
    d = copy_model(GEMMA, "gemma_bighead", edit_tensors=big)
    got = ref(d, ROWS, [2, 6])
    cap = 5.0
    for rr in got:
        for v in rr:
            assert abs(v) <= cap and abs(v) > cap * 0.999, got

    def nocap(c):
        c["attn_logit_softcapping"] = None
    d2 = copy_model(GEMMA, "gemma_noattncap", edit_config=nocap)
    a, b = ref(GEMMA, ROWS, [6]), ref(d2, ROWS, [6])
    assert [len(r) for r in a] == [len(r) for r in b] == [1] * len(ROWS), (a, b)
    assert max(abs(x[0] - y[0]) for x, y in zip(a, b)) > 1e-4, "attention softcap has no effect"


@check("LoRA with B = 0 changes nothing; order of adapters irrelevant; rslora scale")
def _():
    z = make_adapter(MISTRAL, "ad_zero", "--zero-b", "--heads")
    base = ref(MISTRAL, ROWS, [2, 6])
    assert ref(MISTRAL, ROWS, [2, 6], adapters=[z]) == base
    a1 = make_adapter(MISTRAL, "ad_o1", "--seed", "11")
    a2 = make_adapter(MISTRAL, "ad_o2", "--seed", "12", "--heads")
    close(ref(MISTRAL, ROWS, [2, 6], adapters=[a1, a2]),
          ref(MISTRAL, ROWS, [2, 6], adapters=[a2, a1]), rel=1e-12)
    rs = make_adapter(MISTRAL, "ad_rs", "--seed", "13", "--rank", "4", "--alpha", "8", "--rslora")
    pl = make_adapter(MISTRAL, "ad_pl", "--seed", "13", "--rank", "4", "--alpha", "16")
    close(ref(MISTRAL, ROWS, [6], adapters=[rs]), ref(MISTRAL, ROWS, [6], adapters=[pl]), rel=1e-13)


@check("LoRA == checkpoint with weights merged by hand")
def _():
    ad = make_adapter(MISTRAL, "ad_hand", "--seed", "21", "--heads", "--targets", "k_proj,up_proj")
    T = read_safetensors(os.path.join(ad, "adapter_model.safetensors"))

    def merge(t):
        for k in list(T):
            if k.endswith("lora_A.weight"):
                mod = k.split("base_model.model.")[1].rsplit(".lora_A", 1)[0]
                B = T[k.replace("lora_A", "lora_B")]
                t[mod + ".weight"] = (t[mod + ".weight"].numpy() + 2.0 * B.numpy() @ T[k].numpy())
                t[mod + ".weight"] = torch.from_numpy(t[mod + ".weight"])
    d = copy_model(MISTRAL, "mistral_handmerged", edit_tensors=merge)
    # the copy is stored as F32, so compare at float32 precision (measured 1.7e-5 relative on
    # a near-zero score, inside the 1e-6 absolute term; float32 rounding is 6e-8 per weight)
    close(ref(MISTRAL, ROWS, [3, 6], adapters=[ad]), ref(d, ROWS, [3, 6]), rel=1e-5, abs_=1e-6)


@check("pruning: top_k keeps the best rows, ties to the lower index, dropped rows null deeper")
def _():
    rows = rng_rows(5, 6, plen=(2, 6))
    rows[4] = dict(rows[1])            # exact tie with row 1
    full = ref(MISTRAL, rows, [2, 4, 6])
    got = ref(MISTRAL, rows, [6, 2, 4], prune=[{"layer": 2, "top_k": 3}, {"layer": 4, "top_k": 1}])
    order2 = sorted(range(6), key=lambda i: (-full[i][0], i))[:3]
    order4 = sorted(order2, key=lambda i: (-full[i][1], i))[:1]
    assert 4 not in order2 or 1 in order2
    for i in range(6):
        assert got[i][1] == full[i][0]
        assert got[i][2] == (full[i][1] if i in order2 else None)
        assert got[i][0] == (full[i][2] if i in order4 else None)
    # a tie at the top_k boundary: rows 1 and 4 equal, top_k picks 1
    tie_rows = [rows[1], rows[1], rows[1]]
    got = ref(MISTRAL, tie_rows, [2, 6], prune=[{"layer": 2, "top_k": 2}])
    assert got[0][1] is not None and got[1][1] is not None and got[2][1] is None


@check("pruning: min_score on the raw score (before sigmoid)")
def _():
    rows = rng_rows(6, 6, plen=(2, 6))
    full = ref(MISTRAL, rows, [3, 5])
    thr = sorted(r[0] for r in full)[3]
    got = ref(MISTRAL, rows, [3, 5], sigmoid=True, prune=[{"layer": 3, "min_score": thr}])
    for i in range(6):
        assert abs(got[i][0] - 1 / (1 + math.exp(-full[i][0]))) < 1e-15
        if full[i][0] >= thr:
            assert abs(got[i][1] - 1 / (1 + math.exp(-full[i][1]))) < 1e-15
        else:
            assert got[i][1] is None
    assert sum(g[1] is None for g in got) == 3


@check("head_by_position == by-layer scoring with heads moved")
def _():
    def move(t):
        h0 = t["lm_head.0.linear_head.weight"].clone()
        h1 = t["lm_head.1.linear_head.weight"].clone()
        t["lm_head.1.linear_head.weight"] = h0      # exit 3 -> head 0
        t["lm_head.3.linear_head.weight"] = h1      # exit 5 -> head 1
    d = copy_model(MISTRAL, "mistral_moved", edit_tensors=move)
    # the heads are moved, not recomputed, and the copy keeps the f32 values: bit-equal
    # (measured 0; was rel 1e-6)
    close(ref(MISTRAL, ROWS, [5, 3], head_by_position=True), ref(d, ROWS, [5, 3]), rel=0, abs_=0)
    assert ref(MISTRAL, ROWS, [5, 3], head_by_position=True) != ref(MISTRAL, ROWS, [5, 3])


@check("exit subsets from one pass agree with single-exit passes")
def _():
    allx = ref(GEMMA, ROWS, [2, 4, 6], compress_ratio=2, compress_layers=[1, 3], pooling="attention")
    for j, e in enumerate((2, 4, 6)):
        one = ref(GEMMA, ROWS, [e], compress_ratio=2, compress_layers=[1, 3], pooling="attention")
        assert [r[j] for r in allx] == [r[0] for r in one]


@check("bf16 / f16 checkpoints load the exact rounded values; sharded == single file")
def _():
    f32 = make_tiny("ld_f32", "--arch", "qwen2", "--seed", "8", "--layers", "3", "--start-layer", "1")
    b16 = make_tiny("ld_bf16", "--arch", "qwen2", "--seed", "8", "--layers", "3", "--start-layer", "1",
                    "--dtype", "bf16")
    h16 = make_tiny("ld_f16", "--arch", "qwen2", "--seed", "8", "--layers", "3", "--start-layer", "1",
                    "--dtype", "f16")
    sh3 = make_tiny("ld_shard", "--arch", "qwen2", "--seed", "8", "--layers", "3", "--start-layer", "1",
                    "--shards", "3")
    A, B, C, S = (load_checkpoint_tensors(x) for x in (f32, b16, h16, sh3))
    assert set(A) == set(B) == set(C) == set(S)
    assert os.path.exists(os.path.join(sh3, "model.safetensors.index.json"))
    for k in A:
        assert torch.equal(B[k], A[k].float().to(torch.bfloat16).double()), k
        assert torch.equal(C[k], A[k].float().half().double()), k
        assert torch.equal(S[k], A[k]), k
        assert not torch.equal(B[k], A[k]) or A[k].abs().max() == 0
    assert ref(sh3, ROWS, [2, 3]) == ref(f32, ROWS, [2, 3])


@check("qwen2 with zero biases == same weights as a llama config")
def _():
    def zb(t):
        for k in list(t):
            if k.endswith(".bias"):
                t[k] = torch.zeros_like(t[k])

    def llama(c):
        c["model_type"] = "llama"
        c["architectures"] = ["LlamaForCausalLM"]
    d1 = copy_model(QWEN, "qwen_zb", edit_tensors=zb)
    d2 = copy_model(QWEN, "qwen_as_llama", edit_tensors=zb, edit_config=llama)
    assert ref(d1, ROWS, [2, 5], compress_ratio=2, compress_layers=[2]) == \
        ref(d2, ROWS, [2, 5], compress_ratio=2, compress_layers=[2])
    assert ref(d1, ROWS, [5]) != ref(QWEN, ROWS, [5])


@check("sliding window: >= sequence length == none; window 8 matters on long rows")
def _():
    def nowin(c):
        c["sliding_window"] = None

    def bigwin(c):
        c["sliding_window"] = 1000
    d0 = copy_model(MISTRAL, "mistral_nowin", edit_config=nowin)
    d1 = copy_model(MISTRAL, "mistral_bigwin", edit_config=bigwin)
    assert ref(d0, ROWS, [6]) == ref(d1, ROWS, [6])
    assert ref(d0, ROWS, [6]) != ref(MISTRAL, ROWS, [6])
    short = [{"q": [1, 2], "p": [3, 4], "s": [5, 6]}]   # 6 tokens < window 8
    assert ref(d0, short, [6]) == ref(MISTRAL, short, [6])


@check("rope_theta nested in rope_parameters == top level")
def _():
    def flat(c):
        c["rope_theta"] = c.pop("rope_parameters")["rope_theta"]
    d = copy_model(GEMMA_BF16, "gemma_flatrope", edit_config=flat)
    close(ref(GEMMA_BF16, ROWS, [1, 4]), ref(d, ROWS, [1, 4]), rel=0, abs_=0)

    def other(c):
        c["rope_theta"] = 5.0
    d2 = copy_model(GEMMA_BF16, "gemma_otherrope", edit_config=flat)
    with open(os.path.join(d2, "config.json")) as f:
        cfg = json.load(f)
    other(cfg)
    with open(os.path.join(d2, "config.json"), "w") as f:
        json.dump(cfg, f)
    assert ref(d2, ROWS, [4]) != ref(d, ROWS, [4])


@check("errors: attention pooling at layer 0, bad exits, prune layer not an exit")
def _():
    for kw in (dict(exits=[4], compress_ratio=2, compress_layers=[0], pooling="attention"),
               dict(exits=[1]), dict(exits=[7]), dict(exits=[4], compress_ratio=3),
               dict(exits=[4], prune=[{"layer": 3, "top_k": 1}])):
        ex = kw.pop("exits")
        try:
            ref(MISTRAL, ROWS, ex, **kw)
        except RefError:
            continue
        raise AssertionError("no error for %s" % kw)


@check("CLI: mr_ref.py REQUEST.json prints the in-process scores; errors exit 2")
def _():
    ad = make_adapter(GEMMA, "ad_cli", "--heads")
    req = {"model": GEMMA, "rows": ROWS, "exits": [6, 3], "compress_ratio": 2,
           "compress_layers": [2], "pooling": "attention", "sigmoid": True, "adapters": [ad],
           "head_by_position": False, "prune": [{"layer": 3, "top_k": 2}]}
    p = os.path.join(TMP, "req.json")
    with open(p, "w") as f:
        json.dump(req, f)
    out = subprocess.run([PY, os.path.join(HERE, "mr_ref.py"), p], check=True,
                         capture_output=True, text=True).stdout
    got = json.loads(out)["scores"]
    exp = ref(GEMMA, ROWS, [6, 3], adapters=[ad], compress_ratio=2, compress_layers=[2],
              pooling="attention", sigmoid=True, prune=[{"layer": 3, "top_k": 2}])
    assert got == exp and sum(r[0] is None for r in got) == 1
    req["compress_layers"] = [0]
    with open(p, "w") as f:
        json.dump(req, f)
    rc = subprocess.run([PY, os.path.join(HERE, "mr_ref.py"), p], capture_output=True).returncode
    assert rc == 2


FAKE_TRANSFORMERS = r"""
import types
import torch
import mr_ref
__version__ = "fake (mr_ref-backed)"


class _Layer(torch.nn.Module):
    def __init__(self, m, i):
        super().__init__()
        self.m, self.i = m, i

    def forward(self, x):
        return (self.m.layer(self.i, x[0])[0].unsqueeze(0),)


class _Norm(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m.rmsnorm(x, "model.norm.weight")


class _Base(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m
        self.layers = torch.nn.ModuleList([_Layer(m, i) for i in range(m.cfg.n_layers)])
        self.norm = _Norm(m)

    def forward(self, ids):
        x = self.m.embed(ids[0].tolist()).unsqueeze(0)
        hs = [x]
        for layer in self.layers:
            x = layer(x)[0]
            hs.append(x)
        hs[-1] = self.norm(x)
        return hs


class AutoModelForCausalLM(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.model = _Base(m)

    @classmethod
    def from_pretrained(cls, d, dtype=None, attn_implementation=None):
        return cls(mr_ref.Model(d))

    def forward(self, input_ids=None, output_hidden_states=True, use_cache=False):
        return types.SimpleNamespace(hidden_states=self.model(input_ids))


MistralForCausalLM = Gemma2ForCausalLM = Qwen2ForCausalLM = LlamaForCausalLM = AutoModelForCausalLM
"""

FAKE_SAFETENSORS = r"""
import mr_ref


class safe_open:
    def __init__(self, path, framework="pt"):
        self.t = mr_ref.read_safetensors(path)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def keys(self):
        return list(self.t)

    def get_tensor(self, name):
        return self.t[name].float()
"""


@check("scripts/gpu_check_transformers.py logic, run against a fake transformers backed by mr_ref")
def _():
    fake = os.path.join(TMP, "fake_pkgs")
    os.makedirs(os.path.join(fake, "safetensors"), exist_ok=True)
    with open(os.path.join(fake, "transformers.py"), "w") as f:
        f.write(FAKE_TRANSFORMERS)
    with open(os.path.join(fake, "safetensors", "__init__.py"), "w") as f:
        f.write(FAKE_SAFETENSORS)
    script = os.path.join(os.path.dirname(os.path.dirname(HERE)), "scripts",
                          "gpu_check_transformers.py")
    env = dict(os.environ, PYTHONPATH=fake + os.pathsep + HERE)
    for mdir, exits, hbp in ((GEMMA, [6, 2, 4], False), (MISTRAL, [5, 3], True)):
        req = {"model": mdir, "rows": ROWS, "exits": exits, "head_by_position": hbp, "sigmoid": hbp}
        rp, sp = os.path.join(TMP, "greq.json"), os.path.join(TMP, "gscores.json")
        with open(rp, "w") as f:
            json.dump(req, f)
        scores = ref(mdir, ROWS, exits, head_by_position=hbp, sigmoid=hbp)

        def as_mrank_json(rows):   # what the script reads: `mrank score --json`
            return {"exits": exits, "results": [{"index": i, "scores": r}
                                                for i, r in enumerate(rows)]}
        with open(sp, "w") as f:
            json.dump(as_mrank_json(scores), f)
        pr = subprocess.run([PY, script, rp, sp, "--attn", "eager", "--dtypes", "float32"],
                            capture_output=True, text=True, env=env)
        assert pr.returncode == 0 and "RESULT: PASS" in pr.stdout, pr.stdout + pr.stderr
        bad = [[v + (0.01 if j == 1 else 0.0) for j, v in enumerate(rw)] for rw in scores]
        with open(sp, "w") as f:
            json.dump(as_mrank_json(bad), f)
        pr = subprocess.run([PY, script, rp, sp, "--attn", "eager", "--dtypes", "float32"],
                            capture_output=True, text=True, env=env)
        assert pr.returncode == 1 and "RESULT: FAIL" in pr.stdout, pr.stdout + pr.stderr


def main():
    n_ok = sum(1 for r in RESULTS if r[1])
    n_bad = len(RESULTS) - n_ok
    print("%d passed, %d failed" % (n_ok, n_bad))
    if n_bad == 0:
        shutil.rmtree(TMP, ignore_errors=True)
    else:
        print("scratch kept in %s" % TMP)
    return 0 if n_bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
