#!/usr/bin/env bash
# A Mistral-7B-shaped bf16 checkpoint (32 layers, hidden 4096, 14.5 GB) is written, loaded and
# scored on this 24 GiB machine; peak RSS of the scoring process must stay within the file size
# plus 2 GB (weights are mapped, converted to f32 one matrix at a time, never held in f32).
# Usage: rss_7b.sh MRANK_BINARY. Needs ~15 GB of free disk under $MR_BIG_TMP (default /tmp).
set -euo pipefail
mrank=$1
dir="${MR_BIG_TMP:-/tmp}/mrank-rss7b-$$"
trap 'rm -rf "$dir"' EXIT
avail=$(df -Pk "$(dirname "$dir")" | awk 'NR==2 {print $4}')
if [ "$avail" -lt $((16 * 1024 * 1024)) ]; then
  echo "FAIL: needs 16 GB free disk in $(dirname "$dir"), has $((avail / 1024)) MB" >&2
  exit 1
fi
"$mrank" init-checkpoint --shape mistral-7b --vocab-from third_party/tokenizers/llama2/tokenizer.json \
  --seed 3 --out "$dir"
size=$(stat -c %s "$dir/model.safetensors")
echo "checkpoint: $size bytes"
/usr/bin/python3 - "$mrank" "$dir" "$size" <<'PY'
import resource, subprocess, sys, math
mrank, d, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
cmd = [mrank, "score", "--model", d, "--exits", "4,16,32", "--compress-ratio", "2",
       "--compress-layers", "8", "--query", "what is the capital of France?",
       "--passage", "Paris is the capital and most populous city of France.",
       "--passage", "The population of China is over 1.4 billion people."]
out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(out, end="")
rows = [l.split() for l in out.strip().splitlines()]
assert len(rows) == 2 and all(len(r) == 3 for r in rows), out
assert all(math.isfinite(float(x)) for r in rows for x in r), out
limit = size + 2 * 1024**3
print(f"peak RSS {rss / 2**30:.2f} GiB, file {size / 2**30:.2f} GiB, limit {limit / 2**30:.2f} GiB")
assert rss <= limit, "peak RSS over file size + 2 GB"
print("1 passed, 0 failed")
PY
