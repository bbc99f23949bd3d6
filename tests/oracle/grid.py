#!/usr/bin/python3
"""grid.py: the C engine (`mrank score`) against the PyTorch oracle (mr_ref.py) over a grid.

Usage: grid.py MRANK_BINARY WORKDIR [--quick]

Checkpoints: tiny Mistral, Qwen2 and Gemma2 models written independently of the C code by
make_tiny.py (f32; bf16 and sharded variants; Gemma2 with a sliding window shorter than the
rows), one written by `mrank init-checkpoint`, with real tokenizer.json files (Mistral's; Qwen's
byte-level BPE for the Qwen2 model).
Grid: exits x compress ratio x compress layers x pooling x LoRA (none, one, two adapters in
order, merged and unmerged) x head indexing x sigmoid x pruning. Token ids come from
`mrank tokenize --json`, so the oracle scores exactly the C engine's input.
Tolerance: |c - ref| <= 1e-4 * max(|ref|, 1e-2) (fp32 engine against a float64 oracle).
Prints 'N passed, M failed'; exit status 1 on any failure.
"""
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mr_ref  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
TOK = os.path.join(REPO, "third_party", "tokenizers")
# RTOL: the engine is float32, the oracle float64; the error grows with depth and width:
# measured worst 1.1e-5 here (initckpt-mistral), 5.2e-5 on the bundled 8-layer model with its
# adapters (bundled.py, same bound); a wrong term is off by 1e-3 or more. FLOOR: a score is a
# sum of O(1) terms, so near 0 its error stays absolute: below |ref| 1e-2 the bound is 1e-6.
RTOL, FLOOR = 1e-4, 1e-2
# A low-precision GEMM path (MR_GEMM=bf16) is checked against its own stated bound: oracle_grid.sh
# passes it in ORACLE_RTOL with its reason.
RTOL = float(os.environ.get("ORACLE_RTOL", RTOL))
FLOOR = float(os.environ.get("ORACLE_FLOOR", FLOOR))

QUERY = "what is the capital of France?"
PASSAGES = [
    "Paris is the capital and most populous city of France, on the Seine.",
    "The population of China is over 1.4 billion people.",
    "A",
    "Lyon and Marseille are large French cities; Paris, however, is where the government "
    "sits, with the president at the Elysee Palace and parliament at the Palais Bourbon. "
    "The city has been the seat of power for most of the last thousand years.",
]


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), r.returncode, r.stderr))
    return r.stdout


def engine_rows(mrank, d, query, passages):
    """The engine's token ids of the (query, passage) rows: `mrank tokenize --json`."""
    cmd = [mrank, "tokenize", "--model", d, "--json", "--query", query]
    for p in passages:
        cmd += ["--passage", p]
    return json.loads(run(cmd))["rows"]


def make_models(mrank, work):
    py = "/usr/bin/python3"
    specs = [
        ("mistral-f32", "mistral", "llama2", ["--dtype", "f32"]),
        ("mistral-bf16-shards", "mistral", "llama2", ["--dtype", "bf16", "--shards", "3",
                                                      "--rope-nested"]),
        ("qwen2-f32", "qwen2", "qwen3", ["--dtype", "f32"]),
        # Gemma2 with the Mistral vocabulary: the 262k Gemma vocabulary would make every call
        # of the grid parse a 33 MB tokenizer.json (tokenizers are checked on their own)
        ("gemma2-f32", "gemma2", "llama2", ["--dtype", "f32", "--sliding-window", "12"]),
    ]
    models = []
    for name, arch, tok, extra in specs:
        d = os.path.join(work, name)
        vocab = json.load(open(os.path.join(TOK, tok, "tokenizer.json")))
        n_vocab = max(max(vocab["model"]["vocab"].values()),
                      max((t["id"] for t in vocab.get("added_tokens", [])), default=0)) + 1
        run([py, os.path.join(HERE, "make_tiny.py"), d, "--arch", arch, "--layers", "5",
             "--hidden", "32", "--heads", "4", "--kv-heads", "2", "--head-dim", "8",
             "--intermediate", "48", "--vocab", str(n_vocab), "--start-layer", "1",
             "--seed", "5"] + extra)
        shutil.copy(os.path.join(TOK, tok, "tokenizer.json"), d)
        models.append((name, d))
    d = os.path.join(work, "initckpt-mistral")
    run([mrank, "init-checkpoint", "--arch", "mistral", "--layers", "4", "--hidden", "32",
         "--heads", "4", "--kv-heads", "2", "--intermediate", "64", "--vocab-from",
         os.path.join(TOK, "llama2", "tokenizer.json"), "--start-layer", "2", "--dtype", "f32",
         "--seed", "9", "--out", d])
    models.append(("initckpt-mistral", d))
    for name, d in models:
        for i, seed in enumerate((1, 2)):
            run([py, os.path.join(HERE, "make_adapter.py"), d, os.path.join(d, "lora%d" % i),
                 "--rank", "4", "--alpha", "8", "--seed", str(seed), "--heads"])
    return models


def cases(n_layers, start, quick):
    """Widths x pooling x two exit sets without LoRA; LoRA variants (one adapter merged, two
    merged in order, two unmerged) on a few widths; then head indexing, sigmoid and pruning."""
    exits_sets = [[n_layers], sorted({start, n_layers - 2, n_layers})]
    base = dict(lora=0, merged=True, head_by_position=False, sigmoid=False, prune=[])
    widths = [(1, [], "mean")] + [
        (r, cl, pool) for r in (2, 4, 8) for cl in ([1], [1, 3], [0, 2])
        for pool in ("mean", "attention") if not (pool == "attention" and 0 in cl)]
    if quick:
        widths = widths[::3]
    for exits in exits_sets:
        for ratio, clayers, pooling in widths:
            yield dict(base, exits=exits, ratio=ratio, clayers=clayers, pooling=pooling)
    for lora, merged in ((1, True), (2, True), (2, False)):
        for ratio, clayers, pooling in ((1, [], "mean"), (2, [1, 3], "mean"),
                                        (4, [1], "attention")):
            yield dict(base, exits=exits_sets[1], ratio=ratio, clayers=clayers, pooling=pooling,
                       lora=lora, merged=merged)
    ext = sorted({start, n_layers - 1, n_layers})
    yield dict(base, exits=ext, ratio=2, clayers=[2], pooling="mean", lora=2,
               head_by_position=True, sigmoid=True)
    deep = [n_layers - 2, n_layers - 1, n_layers]
    yield dict(base, exits=deep, ratio=1, clayers=[], pooling="mean",
               prune=[{"layer": deep[0], "top_k": "auto"}, {"layer": deep[1], "top_k": "auto"}])
    # a prune exit right before an attention-pooled compression: weights move with the rows
    yield dict(base, exits=deep, ratio=2, clayers=[deep[0]], pooling="attention",
               prune=[{"layer": deep[0], "top_k": "auto"}])
    yield dict(base, exits=ext, ratio=4, clayers=[1], pooling="attention", lora=1,
               merged=False, prune=[{"layer": ext[-2], "min_score": "auto"}])


def fix_prune(case, ref_full):
    """Turns 'auto' prune steps into concrete ones whose cut falls in the widest gap of the
    reference scores, so that which rows survive does not hinge on float rounding."""
    alive = list(range(len(ref_full)))
    steps = []
    for j, st in enumerate(case["prune"]):
        e = case["exits"].index(st["layer"])
        vals = sorted(((ref_full[r][e], r) for r in alive), key=lambda v: (-v[0], v[1]))
        lo = 2 if j + 1 < len(case["prune"]) else 1   # leave rows for the next step
        gaps = [(vals[i][0] - vals[i + 1][0], i + 1) for i in range(lo - 1, len(vals) - 1)]
        gap, k = max(gaps)
        # 1e-3, ten times RTOL: a cut the engine's rounding could move is refused
        if gap < 1e-3 * max(abs(vals[k][0]), FLOOR):
            raise RuntimeError("prune test at layer %d: reference scores have no clear gap %s"
                               % (st["layer"], vals))
        if "top_k" in st:
            steps.append({"layer": st["layer"], "top_k": k})
        else:
            steps.append({"layer": st["layer"],
                          "min_score": (vals[k - 1][0] + vals[k][0]) / 2})
        alive = [r for _, r in vals[:k]]
    case["prune"] = steps


def engine_scores(mrank, d, query, passages, exits, ratio, clayers, adapters=(), unmerged=False,
                  extra=()):
    """`mrank score --json` of (query, passage) rows: one list of scores (per exit) per row."""
    cmd = [mrank, "score", "--model", d, "--json", "--query", query,
           "--exits", ",".join(map(str, exits))]
    if ratio > 1 or clayers:
        cmd += ["--compress-ratio", str(ratio), "--compress-layers", ",".join(map(str, clayers))]
    for a in adapters:
        cmd += ["--adapter", a]
    if unmerged:
        cmd.append("--unmerged")
    cmd += list(extra)
    for p in passages:
        cmd += ["--passage", p]
    return [r["scores"] for r in json.loads(run(cmd))["results"]]


def c_scores(mrank, d, case):
    extra = ["--pooling", case["pooling"]]
    if case["head_by_position"]:
        extra.append("--head-by-position")
    if case["sigmoid"]:
        extra.append("--sigmoid")
    for p in case["prune"]:
        extra += ["--prune", "%d:top=%d" % (p["layer"], p["top_k"]) if "top_k" in p
                  else "%d:min=%.9g" % (p["layer"], p["min_score"])]
    return engine_scores(mrank, d, QUERY, PASSAGES, case["exits"], case["ratio"], case["clayers"],
                         [os.path.join(d, "lora%d" % i) for i in range(case["lora"])],
                         not case["merged"], extra)


def main(argv):
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    mrank, work, quick = argv[1], argv[2], "--quick" in argv
    os.makedirs(work, exist_ok=True)
    models = make_models(mrank, work)
    passed = failed = 0
    worst = 0.0
    for name, d in models:
        rows = engine_rows(mrank, d, QUERY, PASSAGES)
        cfg = json.load(open(os.path.join(d, "config.json")))
        n_layers, start = cfg["num_hidden_layers"], cfg["start_layer"]
        oracles = {}
        model_worst = 0.0
        for case in cases(n_layers, start, quick):
            # merged adapters are rounded to the weights' dtype; unmerged ones are exact
            key = (case["lora"], case["merged"])
            if key not in oracles:
                oracles[key] = mr_ref.Model(d, [os.path.join(d, "lora%d" % i)
                                                for i in range(case["lora"])],
                                            round_merged=case["merged"])
            if case["prune"]:
                fix_prune(case, mr_ref.score(oracles[key], rows, case["exits"], case["ratio"],
                                             case["clayers"], case["pooling"]))
            ref = mr_ref.score(oracles[key], rows, case["exits"], case["ratio"], case["clayers"],
                               case["pooling"], case["sigmoid"], case["head_by_position"],
                               case["prune"])
            try:
                got = c_scores(mrank, d, case)
            except RuntimeError as e:
                failed += 1
                print("FAIL %s %s: %s" % (name, case, e))
                continue
            bad = None
            # zip() below stops at the shorter list: a missing row or exit must fail first
            if [len(g) for g in got] != [len(w) for w in ref]:
                bad = "C gave %s scores per row, the reference %s" % (
                    [len(g) for g in got], [len(w) for w in ref])
                got = []
            for r, (g, w) in enumerate(zip(got, ref)):
                for e, (a, b) in enumerate(zip(g, w)):
                    if (a is None) != (b is None):
                        bad = "row %d exit %d: pruned mismatch (C %s, ref %s)" % (r, e, a, b)
                    elif a is not None:
                        err = abs(a - b) / max(abs(b), FLOOR)
                        worst = max(worst, err)
                        model_worst = max(model_worst, err)
                        if not err <= RTOL:
                            bad = "row %d exit %d: C %.9g ref %.9g (rel %.2e)" % (r, e, a, b, err)
            if bad:
                failed += 1
                print("FAIL %s %s: %s" % (name, case, bad), flush=True)
            else:
                passed += 1
        print("%s: worst relative error %.2e; %d passed so far, %d failed"
              % (name, model_worst, passed, failed), flush=True)
    print("worst relative error %.2e (tolerance %.0e)" % (worst, RTOL))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
