#!/usr/bin/env bash
# bench/fusion/run.sh: the proof of the default profile (docs/results.md, "Lexical stage and
# fusion"). Usage: bash bench/fusion/run.sh [BUILD_DIR] [OUT_DIR] (defaults build, out/fusion).
# For each collection of ../shared/data/ir: the lexical stage's BM25 over the BM25 top-100
# candidates (`mrank lexicon score`: the coordinator's code; with the candidates' own statistics
# as deploy/local.json ships, and with the collection's lexicon from `mrank lexicon build`), the
# workers' scores of the two neural stages of deploy/local.json at the served max_len 64
# (`mrank eval --out`: models/mrank-tiny full model, and half-r2 = exit 2, ratio 2, compress
# layer 1, the vertical + width-2 adapters), then bench/fusion/fusion_eval.py chooses the fusion
# weights on the first half of the judged queries and reports the second half. Resumable: a
# step whose output exists is skipped (delete OUT_DIR to start over). Runs niced; about 10
# minutes of one core.
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${1:-build}
O=${2:-out/fusion}
IR=../shared/data/ir
M="nice $B/mrank"
mkdir -p "$O"
for c in medline cacm npl cranfield; do
  [ -s "$O/$c.lexicon" ] || $M lexicon build --corpus $IR/$c/corpus.jsonl --out "$O/$c.lexicon"
  [ -s "$O/$c.lex.run" ] || $M lexicon score --collection $IR/$c --out "$O/$c.lex.run"
  [ -s "$O/$c.lexcorpus.run" ] ||
    $M lexicon score --collection $IR/$c --lexicon "$O/$c.lexicon" --out "$O/$c.lexcorpus.run"
  [ -s "$O/$c.full.log" ] ||
    $M eval --quiet --model models/mrank-tiny --collection $IR/$c --max-len 64 \
      --out "$O/$c.full.run" > "$O/$c.full.log"
  [ -s "$O/$c.cheap.log" ] ||
    $M eval --quiet --model models/mrank-tiny --collection $IR/$c --max-len 64 --exits 2 \
      --compress-ratio 2 --compress-layers 1 --adapter models/mrank-tiny/adapters/vertical \
      --adapter models/mrank-tiny/adapters/width-2 --out "$O/$c.cheap.run" > "$O/$c.cheap.log"
done
colls="$IR/medline $IR/cacm $IR/npl $IR/cranfield"
for lex in lex lexcorpus; do
  nice python3 bench/fusion/fusion_eval.py --runs "$O" --lex $lex \
    --profile bm25:30,cheap:0,full:0 $colls > "$O/fusion-$lex.json"
  echo "== $O/fusion-$lex.json"
  python3 - "$O/fusion-$lex.json" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))
print("lexical statistics: %s; pooled weights (shipped): %s" % (o["lexical"], o["pooled_weights"]))
print("%-10s %-40s %7s %7s %7s %7s %7s %7s" % ("collection", "own weights (first half)", "BM25",
      "lexical", "neural", "own", "pooled", "compute"))
for c in o["collections"]:
    s = c["second_half"]
    print("%-10s %-40s %7.4f %7.4f %7.4f %7.4f %7.4f %7.4f" % (c["collection"], c["weights"],
          s["bm25_order"], s["lexical_stage"], s["neural_full"], s["profile_own_weights"],
          s["profile_pooled_weights"], c["compute_vs_full_on_all"]))
PY
done
