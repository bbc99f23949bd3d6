#!/usr/bin/python3
"""make_calibration_pairs.py: labelled (query, passage) pairs for `mrank calibrate`, made from
WordNet's noun glosses (Debian wordnet-base, /usr/share/wordnet/data.noun; never from
../shared/data/ir, which is for evaluation only).

A query is "what is <noun>?" for a noun with a gloss; its relevant passage is the noun's own
gloss, introduced by the noun ("<noun>: <gloss>"), and its non-relevant passages are glosses of
other nouns drawn at random, introduced by their own nouns. Labels are thus true by
construction: a gloss defines its noun and not a random other one. Deterministic for a seed.

  make_calibration_pairs.py OUT.jsonl [--queries N] [--negatives K] [--seed S]
"""
import argparse
import json
import random

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--queries", type=int, default=600)
ap.add_argument("--negatives", type=int, default=3)
ap.add_argument("--seed", type=int, default=17)
ap.add_argument("--data", default="/usr/share/wordnet/data.noun")
a = ap.parse_args()

senses = []   # (noun, gloss) of synsets whose first lemma is a plain word
for line in open(a.data, encoding="utf-8", errors="replace"):
    if line.startswith("  ") or "|" not in line:
        continue   # the licence header
    head, gloss = line.split("|", 1)
    f = head.split()
    noun = f[4].replace("_", " ")
    gloss = gloss.split(";")[0].strip()   # the definition, without the examples
    if noun.isalpha() and noun.islower() and 3 <= len(noun) and len(gloss.split()) >= 4:
        senses.append((noun, gloss))
rng = random.Random(a.seed)
rng.shuffle(senses)
seen, chosen = set(), []
for noun, gloss in senses:   # one sense per noun: a query has one relevant gloss
    if noun not in seen:
        seen.add(noun)
        chosen.append((noun, gloss))
    if len(chosen) == a.queries:
        break
with open(a.out, "w") as out:
    for noun, gloss in chosen:
        q = f"what is {noun}?"
        out.write(json.dumps({"query": q, "passage": f"{noun}: {gloss}", "label": 1}) + "\n")
        for _ in range(a.negatives):
            other, og = rng.choice(senses)
            while other == noun:
                other, og = rng.choice(senses)
            out.write(json.dumps({"query": q, "passage": f"{other}: {og}", "label": 0}) + "\n")
print(f"{a.out}: {len(chosen)} queries, {len(chosen) * (1 + a.negatives)} pairs")
