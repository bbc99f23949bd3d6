#!/usr/bin/env bash
# release_speed.sh: CPU speed of the released checkpoints' example stages (docs/checkpoints.md,
# "Speed"). Writes the seeded stand-in of NAME (or uses DIR when given), then for every stage of
# deploy/examples/NAME/cluster.json times `mrank score` at that stage's depth, width and adapters
# on 8 pairs (one query, 8 passages of 30 to 42 words), twice: the first run pays reading the
# weights that the page cache does not hold yet, the second is the steady state. Prints one line
# per stage and run: wall seconds, pairs/s, tokens/s (tokens from `mrank tokenize`).
# Usage: bench/release_speed.sh MRANK NAME [DIR]   (from the repository root; removes a stand-in
# it wrote). Timings on shared cores are noisy: compare stages within one run.
set -euo pipefail
M=$(readlink -f "$1")
name=$2
dir=${3:-}
if [ -z "$dir" ]; then
  dir=${MR_BIG_TMP:-/tmp}/mrank-speed-$name-$$
  trap 'rm -rf "$dir"' EXIT
  "$M" init-checkpoint --release "$name" --seed 7 --out "$dir" > /dev/null
fi
/usr/bin/python3 - "$M" "$dir" "deploy/examples/$name/cluster.json" <<'PY'
import json, subprocess, sys, time
mrank, d, cfg_path = sys.argv[1:]
cfg = json.load(open(cfg_path))
pools = {p["name"]: p for p in cfg["pools"]}
query = "what is the capital of France?"
words = ("Paris is the capital and most populous city of France with an estimated population "
         "of two million residents in an area of more than one hundred square kilometres and "
         "a long history as a centre of finance diplomacy commerce fashion and science").split()
passages = [" ".join(words[: 30 + 4 * i]) for i in range(8)]  # 30..42 words: the list has 42
tok_cmd = [mrank, "tokenize", "--model", d, "--query", query, "--json"]
for p in passages:
    tok_cmd += ["--passage", p]
rows = json.loads(subprocess.run(tok_cmd, check=True, capture_output=True, text=True).stdout)
toks = sum(len(r["q"]) + len(r["p"]) + len(r["s"]) for r in rows["rows"])
for s in cfg["stages"]:
    cmd = [mrank, "score", "--model", d, "--exits", str(s["depth"]), "--query", query]
    if s.get("compress_ratio", 1) > 1:
        cmd += ["--compress-ratio", str(s["compress_ratio"]), "--compress-layers",
                ",".join(map(str, s["compress_layers"]))]
    for a in s.get("adapters", []):
        rel = pools[s["pool"]]["adapters"][a].split("/", 2)[2]  # models/NAME/<subdir>
        cmd += ["--adapter", f"{d}/{rel}", "--unmerged"]
    for p in passages:
        cmd += ["--passage", p]
    for run in ("first", "second"):
        t = time.monotonic()
        subprocess.run(cmd, check=True, capture_output=True)
        w = time.monotonic() - t
        print(f"{s['name']:8s} {run:6s} run: {w:6.1f} s wall, {8 / w:5.2f} pairs/s, "
              f"{toks / w:6.1f} tokens/s ({toks} tokens, 8 pairs)", flush=True)
PY
