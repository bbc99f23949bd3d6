#!/usr/bin/env python3
"""ablation_table.py DIR: the ablation tables (markdown, stdout) from DIR/grid-SYSTEM-COLL.tsv
(`mrank eval --grid --tsv`), and DIR/plot-SYSTEM-COLL.dat for trainer/ablation.gp.
Systems: full (naive truncation of the full-depth/width model), cascade (random width + cascaded
self-distillation), comp (cascade + compensation adapters)."""
import csv, glob, math, os, sys

d = sys.argv[1]
SYS = [("full", "naive truncation"), ("cascade", "self-distillation"), ("comp", "self-distill. + compensation")]
rows = {}  # (sys, coll) -> list of dicts
for p in sorted(glob.glob(os.path.join(d, "grid-*-*.tsv"))):
    with open(p) as f:
        for r in csv.DictReader(f, delimiter="\t"):
            s = os.path.basename(p)[5:-4].split("-")[0]
            rows.setdefault((s, r["collection"]), []).append(r)
colls = []
for (_, c) in rows:
    if c not in colls:
        colls.append(c)
order = ["cranfield", "medline", "cacm", "npl"]
colls.sort(key=lambda c: order.index(c) if c in order else 99)
F = lambda x: float(x)

def pts(s, c):
    return [r for r in rows.get((s, c), []) if r["system"] not in ("bm25", "random")]

def base(s, c, name):
    for r in rows.get((s, c), []):
        if r["system"] == name:
            return r
    return None

def full_pt(s, c):
    p = pts(s, c)
    return max(p, key=lambda r: (F(r["flops_frac"]), int(r["exit"]), -int(r["ratio"]))) if p else None

def subs(s, c, maxfrac=1.01):
    """sub-models: every grid point except the full model, FLOPs fraction <= maxfrac."""
    f = full_pt(s, c)
    return [r for r in pts(s, c) if r is not f and F(r["flops_frac"]) <= maxfrac]

def mean(v):
    return sum(v) / len(v) if v else float("nan")

for s, _ in SYS:  # plot data, sorted by FLOPs
    for c in colls:
        p = sorted(pts(s, c), key=lambda r: F(r["flops_frac"]))
        if p:
            with open(os.path.join(d, f"plot-{s}-{c}.dat"), "w") as f:
                f.write("# exit ratio flops_frac ndcg10 mrr10 top10 tau heldout_ce\n")
                for r in p:
                    f.write(f'{r["exit"]} {r["ratio"]} {r["flops_frac"]} {r["ndcg10"]} {r["mrr10"]} '
                            f'{r["top10"]} {r["tau"]} {r["heldout_ce"]}\n')
    for c in colls:
        for name in ("bm25", "random"):
            b = base(s, c, name)
            if b:
                with open(os.path.join(d, f"plot-{name}-{c}.dat"), "w") as f:
                    f.write(f'0 {b["ndcg10"]}\n1 {b["ndcg10"]}\n')

out = []
w = out.append
w("### Baselines and full models (nDCG@10 / MRR@10)\n")
w("| collection | queries | BM25 | random (expected) | " + " | ".join(f"full model: {l}" for _, l in SYS) + " |")
w("|---|---|---|---|" + "---|" * len(SYS))
for c in colls:
    b = base("full", c, "bm25") or base("cascade", c, "bm25")
    rnd = base("full", c, "random") or base("cascade", c, "random")
    cells = []
    for s, _ in SYS:
        f = full_pt(s, c)
        cells.append(f'{F(f["ndcg10"]):.4f} / {F(f["mrr10"]):.4f}' if f else "-")
    w(f'| {c} | {b["queries"]} | {F(b["ndcg10"]):.4f} / {F(b["mrr10"]):.4f} | '
      f'{F(rnd["ndcg10"]):.4f} / {F(rnd["mrr10"]):.4f} | ' + " | ".join(cells) + " |")
w("")
for c in colls:
    if not pts("full", c):
        continue
    w(f"### Grid on {c}: nDCG@10, top-10 overlap, Kendall tau (vs. the system's own full model)"
      + (", held-out listwise CE" if any(not math.isnan(F(r["heldout_ce"])) for r in pts("full", c)) else "") + "\n")
    has_ce = any(not math.isnan(F(r["heldout_ce"])) for r in pts("full", c))
    hdr = "| exit | ratio | FLOPs/pair | frac |"
    sep = "|---|---|---|---|"
    for s, l in SYS:
        hdr += f" {s}: nDCG | top10 | tau |" + (" CE |" if has_ce else "")
        sep += "---|---|---|" + ("---|" if has_ce else "")
    w(hdr)
    w(sep)
    keyed = {s: {(r["exit"], r["ratio"]): r for r in pts(s, c)} for s, _ in SYS}
    for r0 in sorted(pts("full", c), key=lambda r: (int(r["ratio"]), int(r["exit"]))):
        k = (r0["exit"], r0["ratio"])
        line = f'| {r0["exit"]} | {r0["ratio"]} | {F(r0["flops"]):.3g} | {F(r0["flops_frac"]):.3f} |'
        for s, _ in SYS:
            r = keyed[s].get(k)
            if r:
                line += f' {F(r["ndcg10"]):.4f} | {F(r["top10"]):.3f} | {F(r["tau"]):.3f} |' + \
                        (f' {F(r["heldout_ce"]):.4f} |' if has_ce else "")
            else:
                line += " - | - | - |" + (" - |" if has_ce else "")
        w(line)
    w("")

n_sub = max((len(subs(s, c)) for s, _ in SYS for c in colls), default=0)
w(f"### Ablation summary: means over the {n_sub} sub-models (all grid points but the full model)\n")
w("| collection | system | mean nDCG@10 | mean top-10 overlap | mean Kendall tau | mean held-out CE | "
  "points <= 25% FLOPs with top-10 >= 0.8 |")
w("|---|---|---|---|---|---|---|")
for c in colls:
    for s, l in SYS:
        sb = subs(s, c)
        if not sb:
            continue
        cheap = subs(s, c, 0.25)
        ok = sum(F(r["top10"]) >= 0.8 for r in cheap)
        ce = [F(r["heldout_ce"]) for r in sb if not math.isnan(F(r["heldout_ce"]))]
        w(f'| {c} | {l} | {mean([F(r["ndcg10"]) for r in sb]):.4f} | {mean([F(r["top10"]) for r in sb]):.3f} | '
          f'{mean([F(r["tau"]) for r in sb]):.3f} | {mean(ce):.4f} | {ok} of {len(cheap)} |'
          if ce else
          f'| {c} | {l} | {mean([F(r["ndcg10"]) for r in sb]):.4f} | {mean([F(r["top10"]) for r in sb]):.3f} | '
          f'{mean([F(r["tau"]) for r in sb]):.3f} | - | {ok} of {len(cheap)} |')
w("")
w("Random order of 100 candidates: expected top-10 overlap 0.100, Kendall tau 0. "
  "Chance listwise CE with 16 candidates: ln 16 = 2.7726.")
print("\n".join(out))
