#!/usr/bin/env python3
"""Fusion weights of a cascade profile, chosen on the first half of each collection's judged
queries and reported on the second half, by replaying the coordinator offline over scores mrank
produced (bench/fusion/run.sh makes them; docs/results.md has the figures).

    fusion_eval.py --runs DIR --profile bm25:30,cheap:0,full:0 [--grid 20] [--input-order]
                   [--lex lex|lexgen|lexcorpus] COLLECTION_DIR...

DIR holds, per collection C: C.lex.run (`mrank lexicon score`, the coordinator's BM25 code, with
the candidates' own statistics), C.lexgen.run (with the general-English lexicon shipped beside
the bundled model, models/mrank-tiny/lexicon.txt: the shipped profile), C.lexcorpus.run (with
the collection's own lexicon), C.cheap.run and C.full.run (`mrank eval
--out`, the workers' scoring at the served max_len), C.cheap.log / C.full.log (their FLOPs per
pair). Candidates are the collection's bm25_top100.run in its order (the request order).

Replay (coordinator/rerank.c, fuse.c, fusion.h): each stage scores the survivors of the previous
one and keep_top_k keeps the best (score desc, index asc); the final order is deeper stage first;
the group the deepest stage scored gets sum(w * minmax(stage score)) in place of its score, plus
w_input * minmax(-request position) with --input-order (fusion's "input_order": the request's
own order, here the BM25 run's).
Judged queries (a grade > 0, queries.jsonl order) split in halves, the first ceil(n/2) first.
Weights: a grid of --grid steps per unit summing to 1, best mean nDCG@10 on the first half, the
first best in grid order (the lexical weight descending: ties keep the lexical order). "pooled"
weights maximise the mean over the collections of the first halves' nDCG@10: the shipped
default. nDCG@10 is shared/tools/bm25_eval.py's ndcg_at. Prints one JSON object.
"""
import argparse
import itertools
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "shared", "tools"))
from bm25_eval import ndcg_at, read_jsonl, read_qrels  # noqa: E402


INPUT = "input_order"     # the weights' key of the request order's term


def read_run(path):
    run = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            q, _, d, _, s, _ = line.split()
            run.setdefault(q, {})[d] = float(s)
    return run


def minmax(xs):
    lo, hi = min(xs), max(xs)
    return [(x - lo) / (hi - lo) if hi > lo else 0.0 for x in xs]


def replay(cands, scores, profile, weights):
    """Final ranking [(doc, score)] of cands (request order) through profile [(stage, keep)]
    with fusion weights {stage: w} (None: no fusion); scores: stage -> {doc: raw score}."""
    n = len(cands)
    stage_of, score = [-1] * n, [0.0] * n
    active = list(range(n))
    for pos, (name, keep) in enumerate(profile):
        for i in active:
            stage_of[i], score[i] = pos, scores[name][cands[i]]
        if pos + 1 < len(profile) and keep:
            active = sorted(active, key=lambda i: (-score[i], i))[:keep]
    deepest = max(stage_of)
    group = [i for i in range(n) if stage_of[i] == deepest]
    if weights:
        fused = [0.0] * len(group)
        for pos, (name, _) in enumerate(profile):
            w = weights.get(name, 0.0)
            if pos <= deepest and w:
                norm = minmax([scores[name][cands[i]] for i in group])
                fused = [f + w * v for f, v in zip(fused, norm)]
        w = weights.get(INPUT, 0.0)
        if w:
            fused = [f + w * v for f, v in zip(fused, minmax([-i for i in group]))]
        for i, f in zip(group, fused):
            score[i] = f
    order = sorted(range(n), key=lambda i: (-stage_of[i], -score[i], i))
    return [(cands[i], score[i]) for i in order]


def mean(xs):
    return sum(xs) / len(xs)


def flops(log):
    m = re.search(r"linear FLOPs per pair ([0-9.e+]+)", open(log).read())
    return float(m.group(1))


class Coll:
    def __init__(self, path, runs, lex):
        self.name = os.path.basename(os.path.normpath(path))
        queries = [q["_id"] for q in read_jsonl(os.path.join(path, "queries.jsonl"))]
        self.qrels = read_qrels(os.path.join(path, "qrels", "test.tsv"))
        bm25 = read_run(os.path.join(path, "bm25_top100.run"))
        judged = [q for q in queries
                  if q in bm25 and any(g > 0 for g in self.qrels.get(q, {}).values())]
        half = (len(judged) + 1) // 2
        self.first, self.second = judged[:half], judged[half:]
        self.cands = {q: list(bm25[q]) for q in judged}   # file order = rank order
        sc = {s: read_run(os.path.join(runs, "%s.%s.run" % (self.name, f)))
              for s, f in (("bm25", lex), ("cheap", "cheap"), ("full", "full"))}
        self.scores = {q: {s: sc[s][q] for s in sc} for q in judged}
        self.flops = {s: flops(os.path.join(runs, "%s.%s.log" % (self.name, s)))
                      for s in ("cheap", "full")}

    def ndcg(self, qs, profile, w):
        return mean([ndcg_at(replay(self.cands[q], self.scores[q], profile, w), self.qrels[q], 10)
                     for q in qs])

    def compute(self, qs, profile):
        """Linear FLOPs of the profile's neural stages over the full model on every candidate."""
        used = total = 0.0
        for q in qs:
            m = n = len(self.cands[q])
            total += n * self.flops["full"]
            for name, keep in profile:
                if name != "bm25":
                    used += m * self.flops[name]
                m = min(m, keep) if keep else m
        return used / total


def grid(names, steps):
    """Weight dicts summing to 1, the first stage's weight descending."""
    vals = [i / steps for i in range(steps, -1, -1)]
    for ws in itertools.product(vals, repeat=len(names) - 1):
        if sum(ws) <= 1 + 1e-9:
            yield dict(zip(names, list(ws) + [round(1 - sum(ws), 9)]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True)
    ap.add_argument("--profile", default="bm25:30,cheap:0,full:0")
    ap.add_argument("--grid", type=int, default=20)
    ap.add_argument("--lex", default="lexgen", help="lexical run suffix: lex (the candidates' "
                    "statistics), lexgen (the general lexicon, as shipped) or lexcorpus (the "
                    "collection's lexicon)")
    ap.add_argument("--input-order", action="store_true",
                    help="fuse the request order too (fusion's input_order)")
    ap.add_argument("collections", nargs="+")
    a = ap.parse_args()
    profile = [(s.split(":")[0], int(s.split(":")[1])) for s in a.profile.split(",")]
    names = [s for s, _ in profile] + ([INPUT] if a.input_order else [])
    colls = [Coll(c, a.runs, a.lex) for c in a.collections]
    cand = list(grid(names, a.grid))
    first = [[c.ndcg(c.first, profile, w) for w in cand] for c in colls]
    pooled = max(range(len(cand)), key=lambda k: (mean([f[k] for f in first]), -k))
    # the same choice among weights without the neural stages: what they add
    lex_only = [k for k, w in enumerate(cand) if all(not w[s] for s in names
                                                       if s not in ("bm25", INPUT))]
    out = {"profile": a.profile, "grid_steps": a.grid, "lexical": a.lex,
           "input_order": a.input_order, "pooled_weights": cand[pooled],
           "collections": []}
    for c, f in zip(colls, first):
        best = max(range(len(cand)), key=lambda k: (f[k], -k))
        best_lex = max(lex_only, key=lambda k: (f[k], -k))
        out["collections"].append({
            "collection": c.name, "judged": len(c.first) + len(c.second),
            "n_first": len(c.first), "n_second": len(c.second),
            "weights": cand[best],
            "first_half": {"bm25_order": round(mean(
                [ndcg_at([(d, 0) for d in c.cands[q]], c.qrels[q], 10) for q in c.first]), 4),
                "profile": round(f[best], 4)},
            "second_half": {
                "bm25_order": round(mean([ndcg_at([(d, 0) for d in c.cands[q]], c.qrels[q], 10)
                                          for q in c.second]), 4),
                "lexical_stage": round(c.ndcg(c.second, [("bm25", 0)], None), 4),
                "neural_full": round(c.ndcg(c.second, [("full", 0)], None), 4),
                "profile_own_weights": round(c.ndcg(c.second, profile, cand[best]), 4),
                "profile_pooled_weights": round(c.ndcg(c.second, profile, cand[pooled]), 4),
                "no_neural_own_weights": round(c.ndcg(c.second, profile, cand[best_lex]), 4)},
            "no_neural_weights": cand[best_lex],
            "compute_vs_full_on_all": round(c.compute(c.second, profile), 4),
        })
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
