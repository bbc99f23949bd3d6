#!/usr/bin/env bash
# bench/cascade/run.sh: the cascade's compute against the full model on every candidate, and the
# share of the full model's top 10 it keeps (issue P10; docs/perf.md "Cascade compute").
# Usage: bash bench/cascade/run.sh [BUILD_DIR] [OUT_DIR] (defaults build, out/cascade).
# For each collection of ../shared/data/ir, all judged queries, the BM25 top-100 in run order,
# models/mrank-tiny-d8 at the served max_len 64: `mrank eval --out` of the full model (exit 8)
# and of cheap sub-models (exit E, width R, the bundled vertical + width-R compensation
# adapters); then bench/cascade/cascade_eval.py replays cascades of two and three stages
# (below). Resumable: a step whose output exists is skipped. Runs niced; about 5 minutes of
# both cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${1:-build}
O=${2:-out/cascade}
IR=../shared/data/ir
M=models/mrank-tiny-d8
# exit:ratio[:compress layers]; without layers, the engine's default (every layer from 1 below
# the deepest exit); with layers given (here all from 0 on: pooling the embeddings), the name
# ends in z (outputs are reused by name: remove them after changing a z entry's layers)
CHEAP="1:1 1:4 2:4 2:8 3:8 2:4:0 2:8:0 3:8:0 3:4:0,2"
mkdir -p "$O"
for c in cranfield medline cacm npl; do
  [ -s "$O/$c.full.log" ] ||
    nice "$B/mrank" eval --quiet --model $M --collection $IR/$c --max-len 64 \
      --out "$O/$c.full.run" > "$O/$c.full.log"
  for p in $CHEAP; do
    IFS=: read -r e r layers <<< "$p"
    name="e$e-r$r${layers:+z}"
    [ -s "$O/$c.$name.log" ] && continue
    args=(--exits "$e" --compress-ratio "$r" --adapter $M/adapters/vertical)
    [ -n "$layers" ] && args+=(--compress-layers "$layers")
    [ "$r" -gt 1 ] && args+=(--adapter "$M/adapters/width-$r")
    nice "$B/mrank" eval --quiet --model $M --collection $IR/$c --max-len 64 "${args[@]}" \
      --out "$O/$c.$name.run" > "$O/$c.$name.log"
  done
done
# two stages (each cheap model, keep 15/20/30) and three (exit 1, keep 30/40/50, then exit 2
# at width 4, keep 12/15/20), the full model last
P=""
for e in e1-r1 e2-r4 e3-r8; do for k in 15 20 30; do P="$P$e:$k,full;"; done; done
for k1 in 30 40 50; do for k2 in 12 15 20; do P="${P}e1-r1:$k1,e2-r4:$k2,full;"; done; done
# pooled from the embeddings (docs/perf.md, "Three more levers"): alone, and after exit 1
for e in e2-r4z e2-r8z e3-r8z e3-r4z; do for k in 15 20 25; do P="$P$e:$k,full;"; done; done
for k1 in 40 50 60; do for k2 in 15 18 20; do P="${P}e1-r1:$k1,e2-r8z:$k2,full;"; done; done
nice python3 bench/cascade/cascade_eval.py --runs "$O" --profiles "$P" \
  $IR/cranfield $IR/medline $IR/cacm $IR/npl | tee "$O/cascade.md"
