#!/usr/bin/env python3
"""Builds lm.txt and rerank.jsonl from the Brown corpus and WordNet (see make-train-data.sh).

BM25 (k1 0.9, b 0.4, lowercase alphanumeric tokens, English stopwords removed: the settings of
../shared/tools/bm25_eval.py) picks hard negatives and gives the external-teacher scores,
multiplied by --teacher-scale so that softmax over a group is not one-hot.
"""
import argparse
import collections
import glob
import json
import math
import os
import random
import re

STOP = frozenset("""a about above after again against all am an and any are as at be because been
before being below between both but by can could did do does doing down during each few for from
further had has have having he her here hers herself him himself his how i if in into is it its
itself just me more most my myself no nor not of off on once only or other our ours ourselves out
over own same she should so some such than that the their theirs them themselves then there these
they this those through to too under until up very was we were what when where which while who
whom why will with would you your yours yourself yourselves also may might must shall upon via
within without yet etc""".split())
TOK = re.compile(r"[a-z0-9]+")


def toks(s):
    return [t for t in TOK.findall(s.lower()) if t not in STOP]


class BM25:
    def __init__(self, docs, k1=0.9, b=0.4):
        self.k1, self.b = k1, b
        self.tf = [collections.Counter(toks(d)) for d in docs]
        self.dl = [sum(c.values()) for c in self.tf]
        self.avg = sum(self.dl) / max(1, len(self.dl))
        self.post = collections.defaultdict(list)
        for i, c in enumerate(self.tf):
            for t in c:
                self.post[t].append(i)
        n = len(docs)
        self.idf = {t: math.log(1 + (n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in self.post.items()}

    def score_text(self, q, text):
        c = collections.Counter(toks(text))
        dl = sum(c.values())
        s = 0.0
        for t in toks(q):
            f = c.get(t, 0)
            if f:
                s += self.idf.get(t, 0.0) * f * (self.k1 + 1) / (f + self.k1 * (1 - self.b + self.b * dl / self.avg))
        return s

    def search(self, q, k):
        acc = collections.defaultdict(float)
        for t in toks(q):
            idf = self.idf.get(t)
            if idf is None:
                continue
            for i in self.post[t]:
                f = self.tf[i][t]
                acc[i] += idf * f * (self.k1 + 1) / (f + self.k1 * (1 - self.b + self.b * self.dl[i] / self.avg))
        return sorted(acc, key=lambda i: (-acc[i], i))[:k]


def detok(words):
    s = " ".join(words)
    s = s.replace("``", '"').replace("''", '"')
    s = re.sub(r" ([,.;:?!)])", r"\1", s)
    s = re.sub(r"([(]) ", r"\1", s)
    s = re.sub(r" ('s|n't|'re|'ll|'ve|'d|'m)\b", r"\1", s)
    return s


def brown_paragraphs(d):
    paras = []
    for f in sorted(glob.glob(os.path.join(d, "c[a-r][0-9][0-9]"))):
        cur = []
        for line in open(f, encoding="latin-1"):
            line = line.strip()
            if not line:
                if cur:
                    paras.append(cur)
                cur = []
                continue
            words = [w.rsplit("/", 1)[0] for w in line.split()]
            cur.append(detok(words))
        if cur:
            paras.append(cur)
    return paras


def wordnet_synsets(d):
    out = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in open(os.path.join(d, "data." + pos), encoding="latin-1"):
            if line.startswith("  "):
                continue
            head, _, gloss = line.partition(" | ")
            f = head.split()
            n = int(f[3], 16)
            words = [f[4 + 2 * i].replace("_", " ") for i in range(n)]
            words = [re.sub(r"\(.*\)$", "", w) for w in words]
            definition = gloss.split(";")[0].strip()
            if definition and len(definition.split()) >= 3:
                out.append((words, definition, gloss.strip()))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brown", required=True)
    ap.add_argument("--wordnet", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-kw", type=int, default=20000)
    ap.add_argument("--n-nat", type=int, default=0)
    ap.add_argument("--n-ict", type=int, default=4000)
    ap.add_argument("--n-wordnet", type=int, default=1000)
    ap.add_argument("--neg", type=int, default=15)
    ap.add_argument("--bm25-neg", type=int, default=5,
                    help="BM25 hard negatives per row, the rest random (-1: all --neg)")
    ap.add_argument("--heldout", type=int, default=300,
                    help="rows kept out of rerank-train.jsonl in rerank-heldout.jsonl")
    ap.add_argument("--kw-words", type=int, default=70, help="passage words in keyword rows")
    ap.add_argument("--base-tokenizer", help="tokenizer.json to copy as OUT/tokenizer.json with a"
                    " Lowercase normalizer in front")
    ap.add_argument("--teacher-scale", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    os.makedirs(a.out, exist_ok=True)

    paras = brown_paragraphs(a.brown)
    syn = wordnet_synsets(a.wordnet)
    with open(os.path.join(a.out, "lm.txt"), "w") as f:
        for p in paras:
            f.write(" ".join(p) + "\n")
        for words, _, gloss in syn:
            f.write("%s: %s\n" % (", ".join(words), gloss))

    rows = []
    # inverse cloze over Brown paragraphs of 3..12 sentences
    cand = [p for p in paras if 3 <= len(p) <= 12]
    texts = [" ".join(p) for p in cand]
    bm = BM25(texts)
    order = list(range(len(cand)))
    rnd.shuffle(order)

    n_hard = a.neg if a.bm25_neg < 0 else min(a.bm25_neg, a.neg)

    def row(q, pos, neg, index):
        """One jsonl row; the index's BM25 scores, scaled, are the external teacher."""
        return {"query": q, "pos": [pos], "neg": neg,
                "pos_scores": [round(a.teacher_scale * index.score_text(q, pos), 4)],
                "neg_scores": [round(a.teacher_scale * index.score_text(q, n), 4) for n in neg]}

    def negatives(hits, own):
        """n_hard BM25 hits, then random paragraphs up to a.neg (never own)."""
        out = [h for h in hits if h != own][:n_hard]
        while len(out) < a.neg:
            h = rnd.randrange(len(cand))
            if h != own and h not in out:
                out.append(h)
        return out

    # keyword queries: 2..6 content words of a passage (the first kw_words words of a paragraph),
    # drawn with weight idf^2 like the terms a searcher would type, in random order, half of them
    # wrapped in function words; negatives are passages cut the same way, so length says nothing
    def head(p):
        return " ".join(" ".join(p).split()[: a.kw_words])

    glue = ["what is", "the", "of", "on", "and", "in", "for", "how does", "effect of", "with"]
    for i in range(a.n_kw):   # after the inverse-cloze paragraphs, cycling with new queries
        pi = order[(a.n_ict + i) % len(order)]
        pos = head(cand[pi])
        words = sorted({t for t in toks(pos) if len(t) >= 3 and not t.isdigit()})
        if len(words) < 4:
            continue
        k = min(len(words), rnd.choice([2, 3, 3, 4, 4, 5, 6]))
        wts = [bm.idf.get(w, 0.0) ** 2 + 1e-6 for w in words]
        q = []
        while len(q) < k:
            w = rnd.choices(words, wts)[0]
            if w not in q:
                q.append(w)
        if rnd.random() < 0.5:
            q = [x for w in q for x in ([w] if rnd.random() < 0.5 else [rnd.choice(glue), w])]
        q = " ".join(q)
        neg = [head(cand[h]) for h in negatives(bm.search(q, n_hard + 1), pi)]
        rows.append(row(q, pos, neg, bm))

    # natural queries: a span of 8..16 words of the passage, each content word kept with
    # probability 0.6 and each function word with 0.8, plus 0..2 content words of other
    # paragraphs (query terms the relevant passage lacks), like a question typed from memory
    for i in range(a.n_nat):
        pi = order[(a.n_ict + a.n_kw + i) % len(order)]
        pos = head(cand[pi])
        w = TOK.findall(pos.lower())
        if len(w) < 8:
            continue
        n = rnd.randint(8, min(16, len(w)))
        at = rnd.randrange(len(w) - n + 1)
        q = [x for x in w[at: at + n] if rnd.random() < (0.8 if x in STOP else 0.6)]
        for _ in range(rnd.choice([0, 1, 1, 2])):
            other = toks(" ".join(cand[rnd.randrange(len(cand))]))
            if other:
                q.insert(rnd.randrange(len(q) + 1), rnd.choice(other))
        if len([x for x in q if x not in STOP]) < 2:
            continue
        q = " ".join(q)
        neg = [head(cand[h]) for h in negatives(bm.search(q, n_hard + 1), pi)]
        rows.append(row(q, pos, neg, bm))

    def drop_one(p, avoid=None):
        i = avoid if avoid is not None else rnd.randrange(len(p))
        return " ".join(s for j, s in enumerate(p) if j != i)

    for pi in order[: a.n_ict]:
        p = cand[pi]
        si = rnd.choice([i for i, s in enumerate(p) if len(s.split()) >= 6] or [0])
        q = p[si]
        pos = drop_one(p, si)
        hits = negatives(bm.search(q, n_hard + 1), pi)
        neg = [drop_one(cand[h]) for h in hits]  # one sentence removed, like the positive
        rows.append(row(q, pos, neg, bm))
    n_pairs = len(rows)

    # WordNet: gloss -> headwords and headword -> gloss
    rnd.shuffle(syn)
    syn = syn[: 4 * a.n_wordnet]
    heads = ["%s" % ", ".join(w) for w, _, _ in syn]
    defs = [d for _, d, _ in syn]
    bm_h, bm_d = BM25(heads), BM25(defs)
    for i in range(min(a.n_wordnet, len(syn))):
        if i % 2 == 0:  # gloss -> headword
            q, pos, idx, coll, bmx = defs[i], heads[i], bm_h.search(defs[i], a.neg + 1), heads, bm_h
        else:  # headword -> gloss
            q, pos, idx, coll, bmx = heads[i], defs[i], bm_d.search(heads[i], a.neg + 1), defs, bm_d
        hits = [h for h in idx if h != i and coll[h] != pos][: a.neg]
        while len(hits) < a.neg:  # random fill where BM25 finds too few
            h = rnd.randrange(len(coll))
            if h != i and h not in hits:
                hits.append(h)
        neg = [coll[h] for h in hits]
        rows.append(row(q, pos, neg, bmx))
    rnd.shuffle(rows)
    lines = [json.dumps(r) + "\n" for r in rows]
    for name, part in (("rerank.jsonl", lines), ("rerank-heldout.jsonl", lines[: a.heldout]),
                       ("rerank-train.jsonl", lines[a.heldout:])):
        with open(os.path.join(a.out, name), "w") as f:
            f.writelines(part)
    if a.base_tokenizer:
        tj = json.load(open(a.base_tokenizer, encoding="utf-8"))
        nz = tj.get("normalizer")
        seq = nz["normalizers"] if nz and nz.get("type") == "Sequence" else ([nz] if nz else [])
        tj["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Lowercase"}] + seq}
        with open(os.path.join(a.out, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tj, f, ensure_ascii=False)
    print("lm.txt: %d paragraphs + %d glosses; rerank.jsonl: %d keyword + inverse-cloze, %d wordnet rows"
          % (len(paras), len(syn), n_pairs, len(rows) - n_pairs))


if __name__ == "__main__":
    main()
