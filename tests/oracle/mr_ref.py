#!/usr/bin/python3
"""mr_ref.py: independent float64 PyTorch reference ("oracle") for Matryoshka Re-Ranker scoring.

Implements sections 2-5 of docs' matryoshka-method.md (backbone forward, exit heads, depth, width
compression) plus PEFT LoRA merging and pruning, as plainly as possible. It is the numerical
reference the C engine (mrank) is tested against; it is not fast and is meant for tiny models.

Usage:
    /usr/bin/python3 mr_ref.py REQUEST.json            # prints {"scores": [[...], ...]}

REQUEST.json:
    {"model": DIR,
     "rows": [{"q": [ids], "p": [ids], "s": [ids]}, ...],
     "exits": [4, 8],                       # output order = this order
     "compress_ratio": 1,                   # 1|2|4|8 (default 1)
     "compress_layers": [],                 # default []
     "pooling": "mean",                     # "mean" | "attention" (default mean)
     "sigmoid": false,                      # default false
     "adapters": [DIR, ...],                # PEFT LoRA folders merged in order (default [])
     "head_by_position": false,             # released-code quirk (default false)
     "prune": [{"layer": L, "top_k": K} | {"layer": L, "min_score": T}, ...]}   # default []

q = [BOS] + tok("A: "+query) + tok("\n"); p = tok("B: "+passage); s = tok("\n") + tok(prompt).
Sequence = q + p + s, score at its last token. Only p is compressed.

Everything is computed in float64 from the exact stored weight values (F32, F16 or BF16).
Errors: message on stderr, exit status 2.
"""
import glob
import json
import math
import os
import struct
import sys

import numpy as np
import torch

F64 = torch.float64


class RefError(Exception):
    pass


# ----------------------------------------------------------------------------------------------
# safetensors, read and write (no external package)
# ----------------------------------------------------------------------------------------------

_ST_NP = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
          "F64": np.dtype("<f8"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4")}


def read_safetensors(path):
    """Returns {name: float64 torch tensor} holding the exact stored values."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise RefError("%s: file too short" % path)
    (hlen,) = struct.unpack("<Q", raw[:8])
    if 8 + hlen > len(raw):
        raise RefError("%s: header length %d past end of file" % (path, hlen))
    header = json.loads(raw[8:8 + hlen].decode("utf-8"))
    base = 8 + hlen
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        if dt not in _ST_NP:
            raise RefError("%s: tensor %s has unsupported dtype %s" % (path, name, dt))
        npdt = _ST_NP[dt]
        shape = [int(s) for s in info["shape"]]
        start, end = [int(v) for v in info["data_offsets"]]
        n = int(np.prod(shape)) if shape else 1
        if end - start != n * npdt.itemsize or base + end > len(raw):
            raise RefError("%s: tensor %s has bad data_offsets" % (path, name))
        arr = np.frombuffer(raw, dtype=npdt, count=n, offset=base + start)
        if dt == "BF16":
            # bf16 is the top half of an f32: shift the 16 bits up and reinterpret.
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        t = torch.from_numpy(arr.astype(np.float64)).reshape(shape)
        out[name] = t
    return out


def read_safetensors_header(path):
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(hlen).decode("utf-8"))


def _to_bytes(t, dtype):
    """t: torch tensor or numpy array (any float type); dtype: F32, F16 or BF16."""
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(t))
    t = t.detach().contiguous()
    if dtype == "F32":
        return t.to(torch.float32).numpy().astype("<f4").tobytes()
    if dtype == "F16":
        return t.to(torch.float16).numpy().astype("<f2").tobytes()
    if dtype == "BF16":
        # round-to-nearest-even via torch, then take the 16 raw bits
        return t.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2").tobytes()
    raise RefError("unsupported dtype for writing: %s" % dtype)


def write_safetensors(path, tensors, dtype="F32", metadata=None):
    """tensors: ordered {name: tensor}; every tensor stored as `dtype` (F32, F16, BF16)."""
    header = {"__metadata__": dict(metadata or {"format": "pt"})}
    blobs = []
    off = 0
    for name, t in tensors.items():
        shape = list(t.shape)
        b = _to_bytes(t, dtype)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


def load_checkpoint_tensors(model_dir):
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(model_dir, x) for x in files]
    elif os.path.exists(os.path.join(model_dir, "model.safetensors")):
        files = [os.path.join(model_dir, "model.safetensors")]
    else:
        files = sorted(p for p in glob.glob(os.path.join(model_dir, "*.safetensors"))
                       if not os.path.basename(p).startswith("adapter_model"))
    if not files:
        raise RefError("%s: no safetensors files" % model_dir)
    w = {}
    for p in files:
        for k, v in read_safetensors(p).items():
            if k in w:
                raise RefError("%s: tensor %s appears twice" % (p, k))
            w[k] = v
    return w


# ----------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------

class Config:
    def __init__(self, d, path="config.json"):
        def get(*keys, default=None):
            for k in keys:
                if k in d and d[k] is not None:
                    return d[k]
            return default

        mt = str(get("model_type", default="")).lower()
        self.model_type = mt
        if mt in ("mistral", "llama", "cost_wise_mistral"):
            self.arch = "llama"
        elif mt == "qwen2":
            self.arch = "qwen2"
        elif mt in ("gemma2", "cost_wise_gemma"):
            self.arch = "gemma2"
        else:
            raise RefError("%s: unsupported model_type %r" % (path, mt))
        self.n_layers = int(d["num_hidden_layers"])
        self.hidden = int(d["hidden_size"])
        self.n_heads = int(d["num_attention_heads"])
        self.n_kv = int(get("num_key_value_heads", default=self.n_heads))
        self.head_dim = int(get("head_dim", default=self.hidden // self.n_heads))
        self.inter = int(d["intermediate_size"])
        self.vocab = int(d["vocab_size"])
        rp = d.get("rope_parameters") or {}
        self.rope_theta = float(get("rope_theta", default=rp.get("rope_theta", 10000.0)))
        self.eps = float(get("rms_norm_eps", default=1e-6))
        self.dtype = str(get("torch_dtype", "dtype", default="float32"))
        act = get("hidden_activation", "hidden_act", default="silu") if self.arch == "gemma2" \
            else get("hidden_act", default="silu")
        if act in ("silu", "swish"):
            self.act = "silu"
        elif act in ("gelu_pytorch_tanh", "gelu_tanh", "gelu_new"):
            self.act = "gelu_tanh"
        elif act == "gelu":
            self.act = "gelu"
        else:
            raise RefError("%s: unsupported activation %r" % (path, act))
        # sliding window: which layers use it
        sw = get("sliding_window")
        if self.arch == "qwen2" and not get("use_sliding_window", default=False):
            sw = None
        self.sliding_window = int(sw) if sw else 0
        self.max_window_layers = int(get("max_window_layers", default=0))
        # gemma2 extras
        self.attn_softcap = 0.0
        self.final_softcap = 0.0
        self.attn_scale = 1.0 / math.sqrt(self.head_dim)
        if self.arch == "gemma2":
            self.attn_softcap = float(get("attn_logit_softcapping", default=0.0))
            self.final_softcap = float(get("final_logit_softcapping", default=0.0))
            self.attn_scale = 1.0 / math.sqrt(float(get("query_pre_attn_scalar",
                                                        default=self.head_dim)))
        if "start_layer" not in d:
            raise RefError("%s: missing start_layer (not a layer-wise checkpoint)" % path)
        self.start_layer = int(d["start_layer"])
        self.layer_sep = int(get("layer_sep", default=1))
        if self.n_heads % self.n_kv:
            raise RefError("%s: num_attention_heads not a multiple of num_key_value_heads" % path)

    def layer_is_sliding(self, i):
        if not self.sliding_window:
            return False
        if self.arch == "gemma2":
            return i % 2 == 0
        if self.arch == "qwen2":
            return i >= self.max_window_layers
        return True


# ----------------------------------------------------------------------------------------------
# LoRA (PEFT) merging
# ----------------------------------------------------------------------------------------------

def checkpoint_dtypes(model_dir):
    """{tensor name: stored dtype (F32, F16, BF16)} over every safetensors file of model_dir."""
    out = {}
    for p in glob.glob(os.path.join(model_dir, "*.safetensors")):
        if not os.path.basename(p).startswith("adapter_model"):
            out.update({k: v["dtype"] for k, v in read_safetensors_header(p).items()
                        if k != "__metadata__"})
    return out


_ROUND = {"BF16": torch.bfloat16, "F16": torch.float16}


def merge_lora(w, adapter_dir, dtypes=None):
    """W += scale B A for every pair, in float64. With dtypes ({name: stored dtype}), a merged
    decoder matrix stored in BF16/F16 is rounded back to that dtype, as PEFT's merge_and_unload
    on a half-precision model does and as the engine's in-place merge does; exit heads stay
    exact (the engine keeps them in f32)."""
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        ac = json.load(f)
    if ac.get("rank_pattern") or ac.get("alpha_pattern"):
        raise RefError("%s: rank_pattern/alpha_pattern not supported" % adapter_dir)
    if ac.get("use_dora"):
        raise RefError("%s: DoRA not supported" % adapter_dir)
    if ac.get("fan_in_fan_out"):
        raise RefError("%s: fan_in_fan_out not supported" % adapter_dir)
    r = int(ac["r"])
    alpha = float(ac["lora_alpha"])
    scale = alpha / math.sqrt(r) if ac.get("use_rslora") else alpha / r
    path = os.path.join(adapter_dir, "adapter_model.safetensors")
    t = read_safetensors(path)
    pre = "base_model.model."
    n = 0
    for name in sorted(t):
        if not name.endswith(".lora_A.weight"):
            continue
        if not name.startswith(pre):
            raise RefError("%s: unexpected tensor name %s" % (path, name))
        module = name[len(pre):-len(".lora_A.weight")]
        b_name = name[:-len(".lora_A.weight")] + ".lora_B.weight"
        if b_name not in t:
            raise RefError("%s: %s has no lora_B" % (path, name))
        A, B = t[name], t[b_name]
        target = module + ".weight"
        if target not in w:
            raise RefError("%s: LoRA target %s not in the model" % (path, target))
        W = w[target]
        if A.shape[0] != B.shape[1] or B.shape[0] != W.shape[0] or A.shape[1] != W.shape[1]:
            raise RefError("%s: LoRA shapes for %s do not match" % (path, module))
        merged = W + scale * (B @ A)
        rdt = _ROUND.get((dtypes or {}).get(target))
        if rdt is not None and not target.startswith("lm_head."):
            merged = merged.to(rdt).to(F64)
        w[target] = merged
        n += 1
    for name in t:
        if name.endswith(".lora_B.weight") and name.replace(".lora_B.", ".lora_A.") not in t:
            raise RefError("%s: %s has no lora_A" % (path, name))
    if n == 0:
        raise RefError("%s: no LoRA tensors" % path)
    return w


# ----------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------

_TORCH_DT = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
             "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Model:
    def __init__(self, model_dir, adapters=(), round_merged=False):
        cp = os.path.join(model_dir, "config.json")
        with open(cp) as f:
            self.cfg = Config(json.load(f), cp)
        self.w = load_checkpoint_tensors(model_dir)
        dtypes = checkpoint_dtypes(model_dir) if round_merged else None
        for a in adapters:
            merge_lora(self.w, a, dtypes)
        c = self.cfg
        need = ["model.embed_tokens.weight", "model.norm.weight"]
        for i in range(c.n_layers):
            p = "model.layers.%d." % i
            need += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
            need += [p + "self_attn.%s_proj.weight" % x for x in "qkvo"]
            need += [p + "mlp.%s_proj.weight" % x for x in ("gate", "up", "down")]
            if c.arch == "gemma2":
                need += [p + "pre_feedforward_layernorm.weight",
                         p + "post_feedforward_layernorm.weight"]
            if c.arch == "qwen2":
                need += [p + "self_attn.%s_proj.bias" % x for x in "qkv"]
        for n in need:
            if n not in self.w:
                raise RefError("%s: missing tensor %s" % (model_dir, n))
        # gemma: HF multiplies embeddings by sqrt(hidden) cast to the model dtype
        self.embed_scale = 1.0
        if c.arch == "gemma2":
            tdt = _TORCH_DT.get(c.dtype, torch.float32)
            self.embed_scale = float(torch.tensor(math.sqrt(c.hidden), dtype=tdt).item())
        inv = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=F64) / c.head_dim))
        self.inv_freq = inv

    # -- pieces ------------------------------------------------------------------------------
    def rmsnorm(self, x, name):
        wt = self.w[name]
        y = x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.cfg.eps)
        return y * (1.0 + wt) if self.cfg.arch == "gemma2" else y * wt

    def linear(self, x, name):
        y = x @ self.w[name + ".weight"].T
        b = self.w.get(name + ".bias")
        return y + b if b is not None else y

    def act(self, x):
        a = self.cfg.act
        if a == "silu":
            return torch.nn.functional.silu(x)
        if a == "gelu_tanh":
            return torch.nn.functional.gelu(x, approximate="tanh")
        return torch.nn.functional.gelu(x)

    def embed(self, ids):
        ids = torch.tensor(ids, dtype=torch.long)
        return self.w["model.embed_tokens.weight"][ids] * self.embed_scale

    def rope(self, x):
        """x: (L, heads, head_dim), positions 0..L-1, rotate-half convention."""
        L = x.shape[0]
        ang = torch.arange(L, dtype=F64)[:, None] * self.inv_freq[None, :]
        ang = torch.cat([ang, ang], dim=-1)[:, None, :]
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * torch.cos(ang) + rot * torch.sin(ang)

    def attention(self, i, h):
        """Returns (output (L, hidden), attention probs of the last query summed over heads (L,))."""
        c = self.cfg
        p = "model.layers.%d.self_attn." % i
        L = h.shape[0]
        q = self.linear(h, p + "q_proj").reshape(L, c.n_heads, c.head_dim)
        k = self.linear(h, p + "k_proj").reshape(L, c.n_kv, c.head_dim)
        v = self.linear(h, p + "v_proj").reshape(L, c.n_kv, c.head_dim)
        q, k = self.rope(q), self.rope(k)
        g = c.n_heads // c.n_kv
        k = k.repeat_interleave(g, dim=1)        # query head j uses kv head j // g
        v = v.repeat_interleave(g, dim=1)
        s = torch.einsum("qhd,khd->hqk", q, k) * c.attn_scale
        if c.attn_softcap:
            s = c.attn_softcap * torch.tanh(s / c.attn_softcap)
        qp = torch.arange(L)[:, None]
        kp = torch.arange(L)[None, :]
        mask = kp > qp
        if c.layer_is_sliding(i):
            mask = mask | (qp - kp >= c.sliding_window)
        s = s.masked_fill(mask[None, :, :], float("-inf"))
        pr = torch.softmax(s, dim=-1)
        o = torch.einsum("hqk,khd->qhd", pr, v).reshape(L, c.n_heads * c.head_dim)
        return self.linear(o, p + "o_proj"), pr[:, -1, :].sum(0)

    def mlp(self, i, h):
        p = "model.layers.%d.mlp." % i
        return self.linear(self.act(self.linear(h, p + "gate_proj")) * self.linear(h, p + "up_proj"),
                           p + "down_proj")

    def layer(self, i, x):
        p = "model.layers.%d." % i
        a, last_probs = self.attention(i, self.rmsnorm(x, p + "input_layernorm.weight"))
        if self.cfg.arch == "gemma2":
            h = x + self.rmsnorm(a, p + "post_attention_layernorm.weight")
            m = self.mlp(i, self.rmsnorm(h, p + "pre_feedforward_layernorm.weight"))
            return h + self.rmsnorm(m, p + "post_feedforward_layernorm.weight"), last_probs
        h = x + a
        return h + self.mlp(i, self.rmsnorm(h, p + "post_attention_layernorm.weight")), last_probs

    def head_weight(self, k):
        name = "lm_head.%d.linear_head.weight" % k
        if name not in self.w:
            raise RefError("missing exit head %s" % name)
        return self.w[name].reshape(-1)

    def exit_score(self, x_last, k):
        y = self.rmsnorm(x_last, "model.norm.weight")
        s = float(torch.dot(y, self.head_weight(k)))
        if self.cfg.final_softcap:
            s = self.cfg.final_softcap * math.tanh(s / self.cfg.final_softcap)
        return s


# ----------------------------------------------------------------------------------------------
# width compression
# ----------------------------------------------------------------------------------------------

def compress_row(x, nq, npass, r, pooling, last_probs):
    """x: (L, hidden) residual stream of one row laid out [query nq | passage npass | suffix].
    Returns (new x, new passage length ceil(npass / r))."""
    P = x[nq:nq + npass]
    groups = []
    for g0 in range(0, npass, r):
        seg = P[g0:g0 + r]
        if pooling == "mean":
            groups.append(seg.mean(0))
        else:
            wts = last_probs[nq + g0:nq + g0 + seg.shape[0]]
            tot = wts.sum()
            if tot > 0:
                groups.append((wts[:, None] * seg).sum(0) / tot)
            else:   # every token of the group masked out (sliding window): plain mean
                groups.append(seg.mean(0))
    pooled = torch.stack(groups) if groups else P
    return torch.cat([x[:nq], pooled, x[nq + npass:]], dim=0), pooled.shape[0]


# ----------------------------------------------------------------------------------------------
# scoring
# ----------------------------------------------------------------------------------------------

def score(model, rows, exits, compress_ratio=1, compress_layers=(), pooling="mean",
          sigmoid=False, head_by_position=False, prune=(), row_embeds=None):
    """rows: list of {"q","p","s"} id lists. row_embeds (tests only): list of (x, nq, np) to use
    instead of embedding the ids. Returns [[score or None per exit in `exits` order] per row]."""
    c = model.cfg
    exits = [int(e) for e in exits]
    if not exits:
        raise RefError("no exits requested")
    for e in exits:
        if e < c.start_layer or e > c.n_layers or (e - c.start_layer) % c.layer_sep:
            raise RefError("exit %d is not a valid exit layer (start %d, sep %d, layers %d)"
                           % (e, c.start_layer, c.layer_sep, c.n_layers))
    uniq = sorted(set(exits))
    if head_by_position:
        head_of = {e: j for j, e in enumerate(uniq)}
    else:
        head_of = {e: (e - c.start_layer) // c.layer_sep for e in uniq}
    r = int(compress_ratio)
    if r not in (1, 2, 4, 8):
        raise RefError("compress_ratio must be 1, 2, 4 or 8")
    if pooling not in ("mean", "attention"):
        raise RefError("pooling must be mean or attention")
    deepest = max(exits)
    clayers = sorted(set(int(v) for v in compress_layers))
    for v in clayers:
        if v < 0 or v > c.n_layers:
            raise RefError("compress layer %d out of range" % v)
    active_c = [v for v in clayers if v < deepest] if r > 1 else []
    if pooling == "attention" and 0 in active_c:
        raise RefError("attention pooling needs a previous layer: compress layer 0 not allowed")
    prunes = {}
    for pr in prune:
        L = int(pr["layer"])
        if L not in exits:
            raise RefError("prune layer %d is not one of the exits" % L)
        if ("top_k" in pr) == ("min_score" in pr):
            raise RefError("prune entry needs exactly one of top_k, min_score")
        prunes.setdefault(L, []).append(pr)

    n = len(rows)
    state = []   # per row: [x, nq, np, alive, last_probs]
    for ri in range(n):
        if row_embeds is not None:
            x, nq, npass = row_embeds[ri]
            state.append([x.clone().to(F64), nq, npass, True, None])
            continue
        row = rows[ri]
        q, p, s = list(row["q"]), list(row.get("p", [])), list(row["s"])
        if not s:
            raise RefError("row %d: empty suffix" % ri)
        for t in q + p + s:
            if t < 0 or t >= c.vocab:
                raise RefError("row %d: token %d out of vocabulary" % (ri, t))
        state.append([model.embed(q + p + s), len(q), len(p), True, None])

    raw = [dict() for _ in range(n)]   # row -> {exit layer: raw score}
    for li in range(deepest):
        if li in active_c:
            for st in state:
                if st[3]:
                    st[0], st[2] = compress_row(st[0], st[1], st[2], r, pooling, st[4])
        for st in state:
            if st[3]:
                st[0], st[4] = model.layer(li, st[0])
        done = li + 1
        if done in head_of:
            for ri, st in enumerate(state):
                if st[3]:
                    raw[ri][done] = model.exit_score(st[0][-1], head_of[done])
        for pr in prunes.get(done, []):
            alive = [ri for ri in range(n) if state[ri][3]]
            if "top_k" in pr:
                k = int(pr["top_k"])
                order = sorted(alive, key=lambda ri: (-raw[ri][done], ri))
                keep = set(order[:max(k, 0)])
            else:
                keep = set(ri for ri in alive if raw[ri][done] >= float(pr["min_score"]))
            for ri in alive:
                if ri not in keep:
                    state[ri][3] = False

    out = []
    for ri in range(n):
        vals = []
        for e in exits:
            v = raw[ri].get(e)
            if v is not None and sigmoid:
                v = 1.0 / (1.0 + math.exp(-v))
            vals.append(v)
        out.append(vals)
    return out


def run_request(req):
    model = Model(req["model"], req.get("adapters", []))
    return score(model, req["rows"], req["exits"],
                 compress_ratio=req.get("compress_ratio", 1),
                 compress_layers=req.get("compress_layers", []),
                 pooling=req.get("pooling", "mean"),
                 sigmoid=bool(req.get("sigmoid", False)),
                 head_by_position=bool(req.get("head_by_position", False)),
                 prune=req.get("prune", []))


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: mr_ref.py REQUEST.json\n")
        return 2
    try:
        with open(argv[1]) as f:
            req = json.load(f)
        scores = run_request(req)
    except (RefError, OSError, KeyError, ValueError) as e:
        sys.stderr.write("mr_ref: error: %s\n" % e)
        return 2
    sys.stdout.write(json.dumps({"scores": scores}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
