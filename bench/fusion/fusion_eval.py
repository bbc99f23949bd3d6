#!/usr/bin/env python3
"""Offline replay of a cascade profile with score fusion over scores mrank produced.

    fusion_eval.py --collection DIR --lexical RUN --full RUN [--cheap RUN] [--profile SPEC]
                   [--flops-full F --flops-cheap F] [--weights W] [--json OUT]

RUN files are TREC runs over the collection's bm25_top100.run candidates: --lexical from
`mrank lexicon score` (the coordinator's BM25 code), --full/--cheap from `mrank eval --out`
(the workers' scoring at the served max_len). The candidates' request order is the BM25 run's.

The replay follows the coordinator (docs/cluster.md): each stage scores the survivors of the
previous one, keep_top_k keeps the best by the merge rule (score desc, index asc); the final
order is deeper stage first; fusion (coordinator/fusion.h) replaces the scores of the group the
deepest stage scored: weighted sum of min-max-normalised per-stage scores.

Judged queries (a relevant grade > 0, in queries.jsonl order) are split in halves: the fusion
weights are chosen on the first half (grid of --grid steps, best mean nDCG@10, first best in grid
order) and every figure is reported on the second half. nDCG@10 is bm25_eval.py's ndcg_at.
"""
import argparse
import itertools
import json
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "tools"))
from bm25_eval import ndcg_at, read_jsonl, read_qrels  # noqa: E402


def read_run(path):
    run = {}
    for line in open(path, encoding="utf-8"):
        q, _, d, _, s, _ = line.split()
        run.setdefault(q, {})[d] = float(s)
    return run


def minmax(xs):
    lo, hi = min(xs), max(xs)
    return [(x - lo) / (hi - lo) if hi > lo else 0.0 for x in xs]


def replay(cands, scores, profile, weights):
    """cands: doc ids in request order; scores: stage -> {doc: score}; profile: [(stage, keep)]
    weights: stage -> weight (fusion) or None. Returns [(doc, final score)] best first."""
    n = len(cands)
    stage_of = [-1] * n
    score = [float("nan")] * n
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
            if pos > deepest or not w:
                continue
            norm = minmax([scores[name][cands[i]] for i in group])
            fused = [f + w * v for f, v in zip(fused, norm)]
        for i, f in zip(group, fused):
            score[i] = f
    order = sorted(range(n), key=lambda i: (-stage_of[i], -score[i], i))
    return [(cands[i], score[i]) for i in order]


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--collection", required=True)
    ap.add_argument("--lexical", required=True)
    ap.add_argument("--full", required=True)
    ap.add_argument("--cheap")
    ap.add_argument("--profile", default="bm25:0,full:0",
                    help="stage:keep_top_k,... (0 = keep all); stages bm25, cheap, full")
    ap.add_argument("--grid", type=int, default=20, help="weight steps per unit")
    ap.add_argument("--weights", help="stage:w,... to evaluate instead of searching")
    ap.add_argument("--flops-full", type=float, default=0)
    ap.add_argument("--flops-cheap", type=float, default=0)
    ap.add_argument("--json")
    a = ap.parse_args()
    coll = a.collection
    queries = [q["_id"] for q in read_jsonl(os.path.join(coll, "queries.jsonl"))]
    qrels = read_qrels(os.path.join(coll, "qrels", "test.tsv"))
    bm25 = read_run(os.path.join(coll, "bm25_top100.run"))
    judged = [q for q in queries if q in bm25 and any(g > 0 for g in qrels.get(q, {}).values())]
    half = (len(judged) + 1) // 2
    first, second = judged[:half], judged[half:]
    cands = {q: sorted(bm25[q], key=lambda d: -bm25[q][d]) for q in judged}
    for q in judged:  # the run's own order (ties as written)
        cands[q] = [d for d, _ in sorted(enumerate(bm25[q]), key=lambda t: t[0])] and \
            list(bm25[q].keys())
    scores = {"bm25": read_run(a.lexical), "full": read_run(a.full)}
    if a.cheap:
        scores["cheap"] = read_run(a.cheap)
    profile = [(s.split(":")[0], int(s.split(":")[1])) for s in a.profile.split(",")]
    names = [s for s, _ in profile]
    per_q = {q: {s: scores[s][q] for s in names} for q in judged}

    def ndcg(qs, prof, w):
        return mean([ndcg_at(replay(cands[q], per_q[q], prof, w), qrels[q], 10) for q in qs])

    if a.weights:
        best = {s.split(":")[0]: float(s.split(":")[1]) for s in a.weights.split(",")}
        best_first = ndcg(first, profile, best)
    else:
        best, best_first = None, -1.0
        steps = [i / a.grid for i in range(a.grid + 1)]
        for ws in itertools.product(steps, repeat=len(names) - 1):
            if sum(ws) > 1 + 1e-9:
                continue
            w = dict(zip(names[:-1], ws))
            w[names[-1]] = round(1 - sum(ws), 6)
            v = ndcg(first, profile, w)
            if v > best_first + 1e-12:
                best, best_first = w, v
    full_only = [("full", 0)]
    bm25_only = [("bm25", 0)]
    res = {
        "collection": os.path.basename(os.path.normpath(coll)),
        "judged": len(judged), "first_half": len(first), "second_half": len(second),
        "profile": a.profile, "weights": best, "first_half_ndcg10_profile": round(best_first, 4),
        "ndcg10_bm25_order": round(ndcg(second, [("bm25", 0)], None) if False else
                                   mean([ndcg_at([(d, 0) for d in cands[q]], qrels[q], 10)
                                         for q in second]), 4),
        "ndcg10_lexical_stage": round(ndcg(second, bm25_only, None), 4),
        "ndcg10_neural_full": round(ndcg(second, full_only, None), 4),
        "ndcg10_profile": round(ndcg(second, profile, best), 4),
    }
    if a.flops_full:
        n_full = n_cheap = n_all = 0
        for q in second:
            n = len(cands[q])
            n_all += n
            m = n
            for name, keep in profile:
                if name == "full":
                    n_full += m
                elif name == "cheap":
                    n_cheap += m
                if keep:
                    m = min(m, keep)
        prof = n_full * a.flops_full + n_cheap * a.flops_cheap
        res["compute_profile_vs_full_all"] = round(prof / (n_all * a.flops_full), 4)
        res["pairs_per_request"] = {"full": n_full / len(second), "cheap": n_cheap / len(second),
                                    "all": n_all / len(second)}
    print(json.dumps(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f)


if __name__ == "__main__":
    main()
