#!/usr/bin/env python3
"""The compute of a cascade against the full model on every candidate, and how much of the full
model's top 10 it keeps, replayed offline over scores mrank produced (bench/cascade/run.sh makes
them; docs/perf.md has the figures).

    cascade_eval.py --runs DIR --profiles "e1-r1:40,full;e1-r1:40,e2-r4:15,full" COLLECTION...

DIR holds, per collection C: C.full.run / C.full.log (`mrank eval --out` of the full model and
its log with the linear FLOPs per pair) and C.NAME.run / C.NAME.log per sub-model NAME. A profile
is its stages in order, NAME:K (keep the best K for the next stage), the last one `full`.
Candidates: the collection's bm25_top100.run in its order, all judged queries. The cascade is
the coordinator's (bench/fusion/fusion_eval.py's replay): each stage scores the survivors of
the one before, the best K (score desc, request order) go on, the final order is the deepest
stage's survivors first. Per query: top-10 overlap with the full model's ranking of every
candidate, and compute = sum over stages of (candidates it scored x its FLOPs per pair) over
(n x the full model's), FLOPs being the linear FLOPs per pair (attention and adapters not
counted). Prints a markdown table (overlap / compute per collection) and the profiles that
keep >= 0.95 of the top 10 at <= 0.25 of the compute on every collection.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fusion"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "shared", "tools"))
from bm25_eval import read_jsonl, read_qrels  # noqa: E402
from fusion_eval import flops, mean, read_run, replay  # noqa: E402


def parse_profile(text):
    stages = []
    for s in text.split(","):
        name, _, keep = s.partition(":")
        stages.append((name, int(keep or 0)))
    return stages


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True)
    ap.add_argument("--profiles", required=True, help="profiles separated by ';'")
    ap.add_argument("collections", nargs="+")
    a = ap.parse_args()
    profiles = [parse_profile(p) for p in a.profiles.split(";") if p]
    names = sorted({s for p in profiles for s, _ in p} | {"full"})
    cells = {i: [] for i in range(len(profiles))}
    ok = [True] * len(profiles)
    heads = []
    for path in a.collections:
        coll = os.path.basename(os.path.normpath(path))
        qrels = read_qrels(os.path.join(path, "qrels", "test.tsv"))
        bm25 = read_run(os.path.join(path, "bm25_top100.run"))
        qs = [q["_id"] for q in read_jsonl(os.path.join(path, "queries.jsonl"))
              if q["_id"] in bm25 and any(g > 0 for g in qrels.get(q["_id"], {}).values())]
        runs = {s: read_run(os.path.join(a.runs, "%s.%s.run" % (coll, s))) for s in names}
        fl = {s: flops(os.path.join(a.runs, "%s.%s.log" % (coll, s))) for s in names}
        heads.append("%s (%d q)" % (coll, len(qs)))
        for i, prof in enumerate(profiles):
            ov, cp = [], []
            for q in qs:
                cands = list(bm25[q])
                sc = {s: runs[s][q] for s in names}
                full_top = {d for d, _ in replay(cands, sc, [("full", 0)], None)[:10]}
                top = {d for d, _ in replay(cands, sc, prof, None)[:10]}
                ov.append(len(full_top & top) / len(full_top))
                n = m = len(cands)
                used = 0.0
                for s, keep in prof:
                    used += m * fl[s]
                    m = min(m, keep) if keep else m
                cp.append(used / (n * fl["full"]))
            o, p = mean(ov), mean(cp)
            ok[i] &= o >= 0.95 and p <= 0.25
            cells[i].append("%.3f / %.3f" % (o, p))
    print("| profile (top-10 overlap / compute) | " + " | ".join(heads) + " |")
    print("|---|" + "---|" * len(heads))
    label = [" → ".join("%s%s" % (s, " K %d" % k if k else "") for s, k in p) for p in profiles]
    for i in range(len(profiles)):
        print("| %s | %s |" % (label[i], " | ".join(cells[i])))
    met = [label[i] for i in range(len(profiles)) if ok[i]]
    print("\nProfiles with >= 0.95 top-10 overlap at <= 0.25 of the compute on every collection: "
          "%s" % ("; ".join(met) if met else "none"))


if __name__ == "__main__":
    main()
