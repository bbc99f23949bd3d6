#!/usr/bin/env python3
"""gpu_check_transformers.py: compare exit scores from the C engine (or mr_ref.py) with the
Hugging Face transformers implementation of the same checkpoint.

For a machine with transformers (5.x or 4.4x), torch 2.x, safetensors and (for --peft) peft.

Usage:
    gpu_check_transformers.py REQUEST.json SCORES.json [--model DIR] [--attn eager,sdpa]
                              [--dtypes config,float32] [--device cuda] [--peft]
                              [--rtol R] [--atol A]

REQUEST.json is the oracle's request format (tests/oracle/mr_ref.py):
    {"model": DIR, "rows": [{"q": [ids], "p": [ids], "s": [ids]}, ...], "exits": [..],
     "sigmoid": false, "head_by_position": false, "adapters": [DIR, ...], ...}
Width compression is not a transformers feature: the request must have compress_ratio 1 or no
compress layer below the deepest exit. "prune" is ignored here (null scores are skipped).
SCORES.json holds the scores to check, as printed by `mrank score ... --json` or mr_ref.py:
    {"scores": [[score per exit, in the request's "exits" order] per row]}
(a bare list of lists, or rows given as {"scores": [...]}, are accepted too).

Each row is run alone (batch 1, no padding) through XForCausalLM; the residual stream after l
decoder layers is captured with forward hooks on model.model.layers[l-1] (so the final norm that
transformers applies to its last hidden state does not get in the way), then
    score = lm_head.{k}.linear_head.weight . model.model.norm(residual)[last token]
(k = (l - start_layer) / layer_sep, or the exit's position in the sorted exits with
head_by_position), gemma: final_logit_softcapping * tanh(score / cap), optional sigmoid.
The heads are read from the checkpoint's safetensors directly.

Passes:
  --dtypes float32: load the weights (exact bf16/f16 values) upcast to float32; this is what the
                    C engine's CPU backend computes, so tolerance 1e-4 (abs + rel * |score|).
  --dtypes config : compute in the checkpoint's dtype (torch_dtype / dtype in config.json).
                    For bf16/f16 transformers' own rounding grows with depth (0.07-0.13 absolute
                    at exits 16-32 of a seeded Mistral-7B shape), so a fixed tolerance says
                    little. When the run has a float32 pass too, a low-precision pass is judged
                    against it: per exit, max |scores - ref_f32| must be at most
                    --low-ratio (2) x max |ref_low - ref_f32| + 1e-3, i.e. the checked engine
                    is no further from exact arithmetic than transformers' own low-precision
                    pass, give or take 2x. Without a float32 pass: rtol=atol=2e-2.
  --f32-reference-only: the float32 passes are not judged, only used as that reference (for
                    scores computed in bf16, like the CUDA backend's).
  each with every --attn implementation (eager, sdpa). Gemma2 with sdpa may ignore the attention
  logit softcap in some transformers versions; that pass is reported but not counted as failure.
--peft: merge the request's adapters with peft.PeftModel.from_pretrained(...).merge_and_unload()
  (adapter body only; exit-head LoRAs, lm_head.{k}.linear_head, are merged here by hand as
  W += scale * B @ A, scale = alpha / r, or alpha / sqrt(r) with use_rslora).
Exit status 0 when every counted pass is within tolerance, 1 otherwise, 2 on usage errors.
"""
import argparse
import glob
import json
import math
import os
import shutil
import sys
import tempfile

import torch

LLAMA_TYPES = ("mistral", "llama", "cost_wise_mistral")
GEMMA_TYPES = ("gemma2", "cost_wise_gemma")
QWEN_TYPES = ("qwen2",)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def die(msg):
    sys.stderr.write("gpu_check_transformers: error: %s\n" % msg)
    sys.exit(2)


def load_config(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        return json.load(f)


def safetensors_files(model_dir):
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            return [os.path.join(model_dir, x) for x in sorted(set(json.load(f)["weight_map"].values()))]
    one = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(one):
        return [one]
    return sorted(p for p in glob.glob(os.path.join(model_dir, "*.safetensors"))
                  if not os.path.basename(p).startswith("adapter_model"))


def load_heads(model_dir):
    """{k: float64 tensor [hidden]} for every lm_head.{k}.linear_head.weight."""
    from safetensors import safe_open
    heads = {}
    for p in safetensors_files(model_dir):
        with safe_open(p, framework="pt") as f:
            for name in f.keys():
                if name.startswith("lm_head.") and name.endswith(".linear_head.weight"):
                    k = int(name.split(".")[1])
                    heads[k] = f.get_tensor(name).to(torch.float64).reshape(-1)
    if not heads:
        die("%s: no lm_head.{k}.linear_head.weight tensors" % model_dir)
    return heads


def merge_head_loras(heads, adapters):
    from safetensors import safe_open
    for ad in adapters:
        with open(os.path.join(ad, "adapter_config.json")) as f:
            ac = json.load(f)
        r = int(ac["r"])
        scale = float(ac["lora_alpha"]) / (math.sqrt(r) if ac.get("use_rslora") else r)
        with safe_open(os.path.join(ad, "adapter_model.safetensors"), framework="pt") as f:
            names = list(f.keys())
            for name in names:
                if ".linear_head.lora_A" in name:
                    k = int(name.split("lm_head.")[1].split(".")[0])
                    A = f.get_tensor(name).to(torch.float64)
                    B = f.get_tensor(name.replace("lora_A", "lora_B")).to(torch.float64)
                    heads[k] = heads[k] + scale * (B @ A).reshape(-1)
    return heads


def body_only_adapter(ad, tmp):
    """Copy of adapter `ad` without exit-head tensors (transformers' lm_head is a plain Linear)."""
    from safetensors.torch import load_file, save_file
    out = os.path.join(tmp, os.path.basename(os.path.normpath(ad)) + "_body")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(ad, "adapter_config.json")) as f:
        ac = json.load(f)
    tm = ac.get("target_modules")
    if isinstance(tm, list):
        ac["target_modules"] = [m for m in tm if "linear_head" not in m]
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump(ac, f)
    t = load_file(os.path.join(ad, "adapter_model.safetensors"))
    t = {k: v.contiguous() for k, v in t.items() if "linear_head" not in k}
    save_file(t, os.path.join(out, "adapter_model.safetensors"), metadata={"format": "pt"})
    return out


def model_class(model_type):
    import transformers
    if model_type in ("mistral", "cost_wise_mistral"):
        return transformers.MistralForCausalLM
    if model_type == "llama":
        return transformers.LlamaForCausalLM
    if model_type in QWEN_TYPES:
        return transformers.Qwen2ForCausalLM
    if model_type in GEMMA_TYPES:
        return transformers.Gemma2ForCausalLM
    die("unsupported model_type %r" % model_type)


def load_model(model_dir, cfg, dtype, attn, device, adapters, tmp):
    import transformers
    mt = cfg.get("model_type")
    cls = transformers.AutoModelForCausalLM if mt in ("mistral", "llama", "qwen2", "gemma2") \
        else model_class(mt)
    kw = dict(attn_implementation=attn)
    try:
        model = cls.from_pretrained(model_dir, dtype=dtype, **kw)
    except TypeError:
        model = cls.from_pretrained(model_dir, torch_dtype=dtype, **kw)
    if adapters:
        from peft import PeftModel
        for ad in adapters:
            model = PeftModel.from_pretrained(model, body_only_adapter(ad, tmp))
            model = model.merge_and_unload()
    model.to(device)
    model.eval()
    return model


@torch.no_grad()
def scores_for(model, cfg, heads, rows, exits, head_by_position, sigmoid, device):
    n_layers = int(cfg["num_hidden_layers"])
    start = int(cfg["start_layer"])
    sep = int(cfg.get("layer_sep") or 1)
    uniq = sorted(set(exits))
    head_of = {e: (uniq.index(e) if head_by_position else (e - start) // sep) for e in uniq}
    cap = cfg.get("final_logit_softcapping") if cfg.get("model_type") in GEMMA_TYPES else None
    base = model.model
    layers = base.layers
    captured = {}

    def hook(i):
        def fn(_mod, _inp, out):
            captured[i + 1] = (out[0] if isinstance(out, (tuple, list)) else out).detach()
        return fn

    handles = [layers[i].register_forward_hook(hook(i)) for i in range(n_layers)]
    pre = {}
    handles.append(base.norm.register_forward_pre_hook(
        lambda _m, inp: pre.__setitem__("x", inp[0].detach())))
    out_rows = []
    hs_check = 0.0
    try:
        for row in rows:
            ids = list(row["q"]) + list(row.get("p", [])) + list(row["s"])
            x = torch.tensor([ids], dtype=torch.long, device=device)
            captured.clear()
            o = model(input_ids=x, output_hidden_states=True, use_cache=False)
            # sanity: hooks agree with hidden_states for l < n_layers, and with norm's input at n
            hs = o.hidden_states
            for l in range(1, n_layers):
                if l < len(hs):
                    hs_check = max(hs_check, float((hs[l].float() - captured[l].float()).abs().max()))
            hs_check = max(hs_check, float((pre["x"].float() - captured[n_layers].float()).abs().max()))
            vals = []
            for e in exits:
                h = base.norm(captured[e])[0, -1].to(torch.float64).cpu()
                s = float(torch.dot(h, heads[head_of[e]]))
                if cap:
                    s = cap * math.tanh(s / cap)
                if sigmoid:
                    s = 1.0 / (1.0 + math.exp(-s))
                vals.append(s)
            out_rows.append(vals)
    finally:
        for h in handles:
            h.remove()
    return out_rows, hs_check


def read_scores(path):
    with open(path) as f:
        d = json.load(f)
    if isinstance(d, dict):  # `mrank score --json`: {"exits": [..], "results": [{index, scores}]}
        d = sorted(d["results"], key=lambda r: r["index"])
    rows = []
    for r in d:
        if isinstance(r, dict):
            r = r["scores"]
        rows.append([None if v is None else float(v) for v in r])
    return rows


def compare(ref, got, rtol, atol, exits):
    """Per exit: (max abs diff, max rel diff, ok)."""
    res = []
    ok_all = True
    for j, e in enumerate(exits):
        mabs = mrel = 0.0
        ok = True
        for rr, gg in zip(ref, got):
            a, b = rr[j], gg[j]
            if b is None:
                continue
            d = abs(a - b)
            mabs = max(mabs, d)
            mrel = max(mrel, d / max(abs(a), 1e-30))
            if d > atol + rtol * abs(a):
                ok = False
        res.append((e, mabs, mrel, ok))
        ok_all = ok_all and ok
    return res, ok_all


def report_vs_f32(tag, ref_low, got, ref32, exits, ratio):
    """Low-precision pass: the checked scores' error against the float32 reference, next to
    transformers' own low-precision error against it. True when within ratio x + 1e-3."""
    ok_all = True
    print("%s: judged against the float32 pass: max|got - f32| <= %g x max|hf_low - f32| + 1e-3"
          % (tag, ratio))
    for j, e in enumerate(exits):
        eg = eh = 0.0
        for rl, g, r32 in zip(ref_low, got, ref32):
            if g[j] is None:
                continue
            eg = max(eg, abs(g[j] - r32[j]))
            eh = max(eh, abs(rl[j] - r32[j]))
        ok = eg <= ratio * eh + 1e-3
        ok_all = ok_all and ok
        print("  exit %3d: checked vs f32 %.3e  transformers %s vs f32 %.3e  %s"
              % (e, eg, tag.split()[0], eh, "ok" if ok else "FAIL"))
    return ok_all


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("request")
    ap.add_argument("scores")
    ap.add_argument("--model", help="checkpoint folder (default: the request's model)")
    ap.add_argument("--attn", default="eager,sdpa")
    ap.add_argument("--dtypes", default="config,float32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peft", action="store_true", help="merge the request's adapters with peft")
    ap.add_argument("--rtol", type=float, help="override the relative tolerance")
    ap.add_argument("--atol", type=float, help="override the absolute tolerance")
    ap.add_argument("--low-ratio", type=float, default=2.0,
                    help="low-precision passes: allowed error vs float32, in units of "
                         "transformers' own low-precision error")
    ap.add_argument("--f32-reference-only", action="store_true",
                    help="float32 passes only serve as the reference of the low-precision ones "
                         "(for scores computed in bf16, e.g. the CUDA backend's)")
    a = ap.parse_args()

    with open(a.request) as f:
        req = json.load(f)
    model_dir = a.model or req["model"]
    cfg = load_config(model_dir)
    exits = [int(e) for e in req["exits"]]
    rows = req["rows"]
    r = int(req.get("compress_ratio", 1))
    if r > 1 and any(int(c) < max(exits) for c in req.get("compress_layers", [])):
        die("the request compresses tokens; transformers cannot check that")
    adapters = list(req.get("adapters", []))
    if adapters and not a.peft:
        die("the request has adapters: pass --peft")
    got = read_scores(a.scores)
    if len(got) != len(rows) or any(len(g) != len(exits) for g in got):
        die("%s: expected %d rows of %d scores" % (a.scores, len(rows), len(exits)))
    cfg_dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32")
    heads = load_heads(model_dir)
    if adapters:
        heads = merge_head_loras(heads, adapters)
    import transformers
    print("transformers %s, torch %s, device %s, model %s (%s, %s)"
          % (transformers.__version__, torch.__version__, a.device, model_dir,
             cfg.get("model_type"), cfg_dtype))
    if cfg.get("model_type") in GEMMA_TYPES:
        hidden = int(cfg["hidden_size"])
        if math.sqrt(hidden) != float(torch.tensor(math.sqrt(hidden), dtype=DTYPES.get(cfg_dtype, torch.float32))):
            print("note: sqrt(hidden_size) is not exact in %s; HF's float32 pass scales embeddings by "
                  "the float32 value" % cfg_dtype)
    tmp = tempfile.mkdtemp(prefix="gpu_check_")
    all_ok = True
    names = [x.strip() for x in a.dtypes.split(",") if x.strip()]
    resolved = [cfg_dtype if n == "config" else n for n in names]
    # float32 first, so the low-precision passes can be judged against it
    names = sorted(names, key=lambda n: resolved[names.index(n)] != "float32")
    f32_ref = {}
    judged = 0  # passes whose result counts
    try:
        for dname in names:
            tname = cfg_dtype if dname == "config" else dname
            if tname not in DTYPES:
                die("unknown dtype %s" % tname)
            low = tname != "float32"
            rtol = a.rtol if a.rtol is not None else (2e-2 if low else 1e-4)
            atol = a.atol if a.atol is not None else (2e-2 if low else 1e-4)
            for attn in [x.strip() for x in a.attn.split(",") if x.strip()]:
                tag = "dtype=%s attn=%s" % (tname, attn)
                informational = (attn != "eager" and cfg.get("model_type") in GEMMA_TYPES
                                 and cfg.get("attn_logit_softcapping"))
                try:
                    model = load_model(model_dir, cfg, DTYPES[tname], attn, a.device, adapters, tmp)
                    ref, hs_check = scores_for(model, cfg, heads, rows, exits,
                                               bool(req.get("head_by_position", False)),
                                               bool(req.get("sigmoid", False)), a.device)
                    del model
                except Exception as e:  # report and go on with the other passes
                    print("%s: could not run: %s: %s" % (tag, type(e).__name__, e))
                    if not informational:
                        all_ok = False
                    continue
                if not low:
                    f32_ref[attn] = ref
                    if a.f32_reference_only:
                        print("%s: reference for the low-precision passes" % tag)
                        continue
                judged += not informational
                if low and attn in f32_ref:
                    ok = report_vs_f32(tag, ref, got, f32_ref[attn], exits, a.low_ratio)
                    if not ok and not informational:
                        all_ok = False
                    continue
                res, ok = compare(ref, got, rtol, atol, exits)
                note = " (informational: sdpa may drop gemma's attention softcap)" if informational else ""
                print("%s: tolerance |d| <= %g + %g*|ref|; hooks vs hidden_states max diff %.3g%s"
                      % (tag, atol, rtol, hs_check, note))
                for e, mabs, mrel, eok in res:
                    print("  exit %3d: max abs diff %.3e  max rel diff %.3e  %s"
                          % (e, mabs, mrel, "ok" if eok else "FAIL"))
                if not ok and not informational:
                    all_ok = False
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not judged:
        print("no pass was judged (all failed to run or were informational)")
        all_ok = False
    print("RESULT: %s" % ("PASS" if all_ok else "FAIL"))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
