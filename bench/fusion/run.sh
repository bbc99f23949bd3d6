#!/usr/bin/env bash
# bench/fusion/run.sh: the proof of the default profile (docs/results.md, "Lexical stage and
# fusion"). Usage: bash bench/fusion/run.sh [BUILD_DIR] [OUT_DIR] (defaults build, out/fusion);
# MODEL (default models/mrank-tiny) and MAXLEN (default deploy/local.json's
# limits.max_tokens_per_pair, the served max_len) pick what is scored.
# For each collection of ../shared/data/ir: the lexical stage's BM25 over the BM25 top-100
# candidates (`mrank lexicon score`: the coordinator's code) with three kinds of statistics: the
# candidates' own (lex), the general-English lexicon shipped beside the model (lexgen,
# MODEL/lexicon.txt: what deploy/local.json serves) and the collection's own lexicon from
# `mrank lexicon build` (lexcorpus); the workers' scores of the two neural stages of
# deploy/local.json at MAXLEN (`mrank eval --out`: the full model, and half-r2 = exit 2, ratio
# 2, compress layer 1, the vertical + width-2 adapters). Then bench/fusion/fusion_eval.py
# chooses the fusion weights on the first half of the judged queries and reports the second
# half, with the request order as a fusion term (--input-order, as shipped) and without it.
# Resumable: a step whose output exists is skipped (delete OUT_DIR to start over). Runs niced;
# about 10 minutes of one core at MAXLEN 64.
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${1:-build}
O=${2:-out/fusion}
MODEL=${MODEL:-models/mrank-tiny}
MAXLEN=${MAXLEN:-$(python3 -c 'import json
print(json.load(open("deploy/local.json"))["limits"]["max_tokens_per_pair"])')}
IR=../shared/data/ir
M="nice $B/mrank"
mkdir -p "$O"
for c in medline cacm npl cranfield; do
  [ -s "$O/$c.lexicon" ] || $M lexicon build --corpus $IR/$c/corpus.jsonl --out "$O/$c.lexicon"
  [ -s "$O/$c.lex.run" ] || $M lexicon score --collection $IR/$c --out "$O/$c.lex.run"
  [ -s "$O/$c.lexgen.run" ] ||
    $M lexicon score --collection $IR/$c --lexicon "$MODEL/lexicon.txt" --out "$O/$c.lexgen.run"
  [ -s "$O/$c.lexcorpus.run" ] ||
    $M lexicon score --collection $IR/$c --lexicon "$O/$c.lexicon" --out "$O/$c.lexcorpus.run"
  [ -s "$O/$c.full.log" ] ||
    $M eval --quiet --model "$MODEL" --collection $IR/$c --max-len "$MAXLEN" \
      --out "$O/$c.full.run" > "$O/$c.full.log"
  [ -s "$O/$c.cheap.log" ] ||
    $M eval --quiet --model "$MODEL" --collection $IR/$c --max-len "$MAXLEN" --exits 2 \
      --compress-ratio 2 --compress-layers 1 --adapter "$MODEL/adapters/vertical" \
      --adapter "$MODEL/adapters/width-2" --out "$O/$c.cheap.run" > "$O/$c.cheap.log"
done
colls="$IR/medline $IR/cacm $IR/npl $IR/cranfield"
for lex in lex lexgen lexcorpus; do
  for io in "" --input-order; do
    f="$O/fusion-$lex${io:+-input}.json"
    [ -s "$f" ] || nice python3 bench/fusion/fusion_eval.py --runs "$O" --lex $lex $io \
      --profile bm25:30,cheap:0,full:0 $colls > "$f"
    echo "== $f"
    python3 - "$f" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))
print("lexical statistics: %s; input order fused: %s; pooled weights (shipped): %s"
      % (o["lexical"], o["input_order"], o["pooled_weights"]))
print("%-10s %-58s %7s %7s %7s %7s %7s %7s %7s" % ("collection", "own weights (first half)",
      "BM25", "lexical", "neural", "own", "pooled", "no-nn", "compute"))
for c in o["collections"]:
    s = c["second_half"]
    w = ",".join("%s %g" % (k, v) for k, v in c["weights"].items())
    print("%-10s %-58s %7.4f %7.4f %7.4f %7.4f %7.4f %7.4f %7.4f" % (c["collection"], w,
          s["bm25_order"], s["lexical_stage"], s["neural_full"], s["profile_own_weights"],
          s["profile_pooled_weights"], s["no_neural_own_weights"], c["compute_vs_full_on_all"]))
PY
  done
done
