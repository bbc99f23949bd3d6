#!/usr/bin/python3
"""chunk_eval.py: nDCG@10 of a running coordinator re-ranking BM25 top-100 candidates with plain
truncation against per-request chunking (docs/results.md, "Chunking"; run by run.sh).

  chunk_eval.py ADDR DIR [DIR ...] --profile P --settings plain,W:S[:M],... [--queries N]
        [--per-query FILE]

For each BEIR collection DIR (corpus.jsonl, queries.jsonl, qrels/test.tsv, bm25_top100.run) and
each judged query (the first N when --queries is set, in queries.jsonl order), one Rerank per
setting over the query's BM25 top-100 documents (the title before the text unless the text
starts with it, as `mrank eval` builds passages), profile P, no budget. A setting is `plain`
(no chunking: truncation at the pair budget) or window:stride[:max_chunks] in estimated passage
tokens; `max` as the window is the largest window the coordinator accepts for that query (its
refusal names it: "leaves about N"), and a stride of `half` is half the window. A window above
a query's room is lowered to the room the same way (counted as `clamped`). Prints one JSON
line per collection and setting: nDCG@10 (bm25_eval.py's metric), Score rows and tokens of
the first stage (StageStats.rows, usage.prompt_tokens), their ratios to plain, the share of
documents whose best chunk was not the first, and the truncated share; against the first
setting, the queries whose nDCG@10 rose and fell. --per-query writes each query's nDCG@10 per
collection and setting (JSON lines).
"""
import argparse
import importlib.util
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "clients"))
import grpc  # noqa: E402
import rerank_client as rc  # noqa: E402

TOOLS = os.path.join(REPO, "..", "shared", "tools", "bm25_eval.py")


def load_eval():
    spec = importlib.util.spec_from_file_location("bm25_eval", TOOLS)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def passage(d):
    title, text = d.get("title") or "", d.get("text") or ""
    return text if not title or text.startswith(title) else title + " " + text


def candidates(path):
    run = {}
    with open(path) as f:
        for line in f:
            q, _, doc, rank, _, _ = line.split()
            run.setdefault(q, []).append((int(rank), doc))
    return {q: [d for _, d in sorted(v)] for q, v in run.items()}


ROOM = re.compile(r"leaves about (\d+)")


def parse_setting(s):
    if s == "plain":
        return None
    parts = s.split(":")
    return (parts[0], parts[1], int(parts[2]) if len(parts) > 2 else 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("addr")
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--profile", default="full-only")
    ap.add_argument("--settings", default="plain,max:max,max:half")
    ap.add_argument("--queries", type=int, default=0)
    ap.add_argument("--per-query")
    a = ap.parse_args()
    pq = open(a.per_query, "w") if a.per_query else None
    ev = load_eval()
    pb = rc.load_pb2()
    ch = grpc.insecure_channel(a.addr)
    call = ch.unary_unary("/mrank.v1.Ranker/Rerank",
                          request_serializer=pb.RerankRequest.SerializeToString,
                          response_deserializer=pb.RerankResponse.FromString)
    settings = [(s, parse_setting(s)) for s in a.settings.split(",")]
    for d in a.dirs:
        name = os.path.basename(os.path.normpath(d))
        corpus = {x["_id"]: passage(x) for x in ev.read_jsonl(os.path.join(d, "corpus.jsonl"))}
        queries = [(x["_id"], x["text"]) for x in ev.read_jsonl(os.path.join(d, "queries.jsonl"))]
        qrels = ev.read_qrels(os.path.join(d, "qrels", "test.tsv"))
        cand = candidates(os.path.join(d, "bm25_top100.run"))
        judged = [(q, t) for q, t in queries
                  if q in cand and any(g > 0 for g in qrels.get(q, {}).values())]
        if a.queries:
            judged = judged[:a.queries]
        base = None
        for label, st in settings:
            per_q = {}
            nd = rows = tokens = later = trunc = ndocs = clamped = 0
            for q, text in judged:
                docs = cand[q]
                req = pb.RerankRequest(query=text, profile=a.profile)
                for doc in docs:
                    req.documents.add(text=corpus[doc], id=doc)
                if st:
                    w, s, m = st
                    room = 1 << 20
                    win = room if w == "max" else int(w)
                    for _ in range(2):
                        ws = win // 2 if s == "half" else (win if s == "max" else int(s))
                        req.chunking.window, req.chunking.stride = win, max(1, min(ws, win))
                        req.chunking.max_chunks = m
                        try:
                            resp = call(req, timeout=600)
                            break
                        except grpc.RpcError as e:
                            got = ROOM.search(e.details() or "")
                            if e.code() != grpc.StatusCode.INVALID_ARGUMENT or not got:
                                raise
                            clamped += w != "max"
                            win = int(got.group(1))
                    else:
                        raise SystemExit(f"{name} {q}: no window accepted")
                else:
                    resp = call(req, timeout=600)
                ranked = [(r.id, r.raw_score) for r in resp.results]
                per_q[q] = ev.ndcg_at(ranked, qrels[q], 10)
                nd += per_q[q]
                rows += resp.stages[0].rows
                tokens += resp.usage.prompt_tokens
                later += sum(1 for r in resp.results if r.chunk > 0)
                trunc += sum(1 for r in resp.results if r.truncated)
                ndocs += len(resp.results)
            n = len(judged)
            out = {"collection": name, "setting": label, "queries": n,
                   "ndcg@10": round(nd / n, 4), "rows_per_query": round(rows / n, 1),
                   "tokens_per_query": round(tokens / n, 1),
                   "best_chunk_not_first": round(later / ndocs, 4),
                   "truncated": round(trunc / ndocs, 4), "clamped_queries": clamped}
            if base is None:
                base = (rows, tokens, per_q)
            out["rows_ratio"] = round(rows / base[0], 2)
            out["tokens_ratio"] = round(tokens / base[1], 2)
            out["queries_up"] = sum(1 for q in per_q if per_q[q] > base[2][q] + 1e-9)
            out["queries_down"] = sum(1 for q in per_q if per_q[q] < base[2][q] - 1e-9)
            print(json.dumps(out), flush=True)
            if pq:
                pq.write(json.dumps({"collection": name, "setting": label, "ndcg@10": per_q})
                         + "\n")
                pq.flush()


if __name__ == "__main__":
    main()
