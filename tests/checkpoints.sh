#!/usr/bin/env bash
# checkpoints.sh: the released BAAI checkpoints served by name, on full-size seeded stand-ins
# (`mrank init-checkpoint --release`: the release's config.json, tensor names, shards and PEFT
# adapters; docs/checkpoints.md). For each release in turn (one written, served and removed
# before the next, so the disk holds one at a time):
#   1. write it; `mrank score` at three exits with width compression: finite scores and peak RSS
#      <= the weights' size + 2 GB (weights mapped, converted one matrix at a time, never held
#      whole in f32; this replaces the former rss_7b.sh on a Mistral-7B shape);
#   2. start the workers with deploy/examples/NAME/workers.sh and a coordinator with that
#      folder's cluster.json (only model path, adapter folders and ports rewritten for the test:
#      loopback, ports from a random block); Info lists every stage with the adapters the config
#      gives it;
#   3. a Rerank through every profile of the config: answered, not degraded, one finite score
#      per document, each result reporting the depth and compress_ratio of the stage that scored
#      it last (read from the config, not hard-coded), the last stage reached by some result;
#   4. where a stage names adapters: the cluster's raw scores equal `mrank score` with those
#      adapters at the stage's configuration and differ from the scores without them.
# Needs ~20 GB free disk under $MR_BIG_TMP (default /tmp): the gemma2 stand-in is 18.5 GB in
# bf16 (the release itself is float32, 37 GB). Too little disk is a failure with a message, not
# a skip (CI must have it). Everything started is stopped by the harness trap; waits are bounded.
# Usage: checkpoints.sh MRANK [NAME...]   (default: both releases)
set -euo pipefail
MRANK=$(readlink -f "$1")
shift
cd "$(dirname "$0")/.."
. tests/lib/harness.bash
RC="$PY tests/clients/rerank_client.py"
big=${MR_BIG_TMP:-/tmp}
mr_harness ckpt
MR_FAIL_TAIL=20  # read by the harness's fail
t0=$(date +%s)
step() { echo "[$(( $(date +%s) - t0 ))s] $*"; }
releases=("$@")
[ ${#releases[@]} -gt 0 ] || releases=(matroyshka-reranker-passage bge-reranker-v2.5-gemma2-lightweight)

need_kb=$((20 * 1024 * 1024))
avail=$(df -Pk "$big" | awk 'NR==2 {print $4}')
[ "$avail" -ge "$need_kb" ] ||
  fail "needs 20 GB free disk in $big (MR_BIG_TMP) for the 18.5 GB gemma2 stand-in, has $((avail / 1024)) MB"

base=$(( 21000 + (RANDOM % 1500) * 8 ))
QUERY="what is the capital of France?"
printf '%s\n' "Paris is the capital and most populous city of France." \
  "The population of China is over 1.4 billion people." \
  "Berlin is the capital of Germany." > "$work/docs.txt"

check_release() {
  local name=$1 dir=$big/mrank-ckpt-$1-$$ ex=deploy/examples/$1
  ckpt_dir=$dir
  step "$name: write the seeded stand-in"
  "$MRANK" init-checkpoint --release "$name" --seed 7 --out "$dir" > "$work/init.log" 2>&1 ||
    fail "$name: init-checkpoint failed"
  cat "$work/init.log"

  step "$name: mrank score (peak RSS)"
  "$PY" - "$MRANK" "$dir" <<'PY' || fail "$name: the RSS check failed"
import glob, json, math, os, resource, subprocess, sys, time
mrank, d = sys.argv[1:3]
cfg = json.load(open(os.path.join(d, "config.json")))
size = sum(os.path.getsize(f) for f in glob.glob(os.path.join(d, "*.safetensors")))
L, s = cfg["num_hidden_layers"], cfg["start_layer"]
exits = [s, (s + L) // 2, L]
cmd = [mrank, "score", "--model", d, "--exits", ",".join(map(str, exits)),
       "--compress-ratio", "2", "--compress-layers", str(s + 4),
       "--query", "what is the capital of France?",
       "--passage", "Paris is the capital and most populous city of France.",
       "--passage", "The population of China is over 1.4 billion people."]
t = time.monotonic()
out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
wall = time.monotonic() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
rows = [l.split() for l in out.strip().splitlines()]
assert len(rows) == 2 and all(len(r) == 3 for r in rows), out
assert all(math.isfinite(float(x)) for r in rows for x in r), out
limit = size + 2 * 1024**3
print(f"exits {exits}, 2 pairs: {wall:.1f} s wall (first pass after writing); peak RSS {rss / 2**30:.2f} GiB, "
      f"weights {size / 2**30:.2f} GiB, limit {limit / 2**30:.2f} GiB")
assert rss <= limit, "peak RSS over the weights' size + 2 GB"
PY

  step "$name: cluster from $ex"
  local pc=$base pm=$((base + 1)) ph=$((base + 2))
  local p1=$((base + 3)) p2=$((base + 4)) m1=$((base + 5)) m2=$((base + 6))
  "$PY" - "$ex/cluster.json" "$dir" "$name" "$work/cluster.json" "$pc" "$pm" "$ph" \
    "$p1:$m1" "$p2:$m2" <<'PY' || fail "$name: cannot rewrite $ex/cluster.json"
import json, sys
src, d, name, dst, pc, pm, ph, *pools = sys.argv[1:]
c = json.load(open(src))
rel = lambda p: p.replace("models/" + name, d, 1)
c["model"] = rel(c["model"])
c["coordinator"].update(listen=f"127.0.0.1:{pc}", metrics_port=int(pm),
                        http_listen=f"127.0.0.1:{ph}")
assert len(c["pools"]) == len(pools), "the test starts one worker per pool"
for pool, pm in zip(c["pools"], pools):
    port, metrics = pm.split(":")
    pool["addresses"] = [f"127.0.0.1:{port}"]
    pool["metrics_port_base"] = int(metrics)
    pool["adapters"] = {k: rel(v) for k, v in pool.get("adapters", {}).items()}
json.dump(c, open(dst, "w"), indent=1)
PY
  # the pools in file order are the workers.sh ports in order (first: cheap/light, then full)
  local envs=(MODEL="$dir")
  case $name in
    matroyshka-*) envs+=("CHEAP_PORT=$p1" "CHEAP_METRICS=$m1" "FULL_PORT=$p2" "FULL_METRICS=$m2") ;;
    *) envs+=("LIGHT_PORT=$p1" "LIGHT_METRICS=$m1" "FULL_PORT=$p2" "FULL_METRICS=$m2") ;;
  esac
  # two workers share the 2 CI cores: OpenMP threads that spin while waiting would take the
  # cores from the worker that computes (the first warm-ups then ran past their deadline)
  # WARM_UP_ROWS=0: the workers' own start-up measurement (full depth) would take minutes here;
  # the coordinator's warm-up still measures every stage before SERVING
  env "${envs[@]}" WARM_UP_ROWS=0 OMP_WAIT_POLICY=passive setsid bash "$ex/workers.sh" "$MRANK" > "$work/workers.log" 2>&1 &
  local wpid=$!
  pids+=("-$wpid")  # its own process group: the trap stops workers.sh and both workers
  "$MRANK" coordinator --config "$work/cluster.json" --drain-ms 1000 > "$work/coord.log" 2>&1 &
  local cpid=$!
  pids+=("$cpid")
  $RC wait "127.0.0.1:$pc" --timeout 600 > /dev/null || fail "$name: the coordinator never became SERVING"
  $RC info "127.0.0.1:$pc" > "$work/info.json" || fail "$name: Info failed"

  step "$name: a Rerank through every profile"
  for prof in $("$PY" -c 'import json,sys; print(" ".join(p["name"] for p in json.load(open(sys.argv[1]))["profiles"]))' "$work/cluster.json"); do
    $RC rerank "127.0.0.1:$pc" --query "$QUERY" --docs "$work/docs.txt" --profile "$prof" \
      --tier standard --timeout 900 > "$work/r_$prof.json" || fail "$name: profile $prof: Rerank failed"
  done
  "$PY" - "$work" "$MRANK" "$dir" "$QUERY" <<'PY' || fail "$name: a profile check failed"
import json, math, subprocess, sys
work, mrank, d, query = sys.argv[1:]
cfg = json.load(open(f"{work}/cluster.json"))
docs = open(f"{work}/docs.txt").read().splitlines()
stages = {s["name"]: s for s in cfg["stages"]}
pools = {p["name"]: p for p in cfg["pools"]}
info = json.load(open(f"{work}/info.json"))
# Info: every configured stage, with the adapters the config names
got = {s["name"]: s for s in info["stages"]}
for n, s in stages.items():
    assert n in got, f"Info lacks stage {n}: {sorted(got)}"
    assert list(got[n]["arch"].get("adapters", [])) == s.get("adapters", []), (n, got[n])

def arch(s):  # (depth, compress_ratio) a result scored by stage s reports
    return (s["depth"], s.get("compress_ratio", 1))

for prof in cfg["profiles"]:
    r = json.load(open(f"{work}/r_{prof['name']}.json"))
    assert not r["degraded"], (prof["name"], r)
    res = r["results"]
    assert sorted(x["index"] for x in res) == list(range(len(docs))), (prof["name"], res)
    names = [st["stage"] for st in prof["stages"]]
    for x in res:
        assert math.isfinite(x["raw_score"]) and math.isfinite(x["relevance_score"]), x
        want = arch(stages[names[x["stage"]]])
        assert (x["depth"], x["compress_ratio"]) == want, (prof["name"], x, want)
    assert any(x["stage"] == len(names) - 1 for x in res), (prof["name"], "last stage unreached")
    print(f"profile {prof['name']} ({r['total_ms'] / 1000:.1f} s; " + ", ".join(
        f"{st['name']} {st['ms'] / 1000:.1f} s" for st in r["stages"]) + "): " + ", ".join(
        f"doc {x['index']}: stage {names[x['stage']]} depth {x['depth']} r {x['compress_ratio']} "
        f"raw {x['raw_score']:.4f}" for x in sorted(res, key=lambda x: x["index"])))
# adapters: the shallowest one-stage profile whose stage names adapters (one comparison per
# release keeps the test short; every stage's adapters are in Info above)
cands = [p["stages"][0]["stage"] for p in cfg["profiles"]
         if len(p["stages"]) == 1 and stages[p["stages"][0]["stage"]].get("adapters")]
if any(s.get("adapters") for s in stages.values()):
    assert cands, "no one-stage profile to check the adapters through"
if cands:
    n = min(cands, key=lambda n: stages[n]["depth"])
    s = stages[n]
    res = json.load(open(f"{work}/r_" + next(p["name"] for p in cfg["profiles"]
                         if [st["stage"] for st in p["stages"]] == [n]) + ".json"))["results"]
    base = [mrank, "score", "--model", d, "--exits", str(s["depth"]), "--query", query]
    if s.get("compress_ratio", 1) > 1:
        base += ["--compress-ratio", str(s["compress_ratio"]), "--compress-layers",
                 ",".join(map(str, s["compress_layers"]))]
    for t in docs:
        base += ["--passage", t]
    ad = []
    for a in s["adapters"]:
        ad += ["--adapter", pools[s["pool"]]["adapters"][a]]
    run = lambda extra: [float(v) for v in subprocess.run(
        base + extra, check=True, capture_output=True, text=True).stdout.split()]
    with_ad, without = run(ad + ["--unmerged"]), run([])
    cl = [x["raw_score"] for x in sorted(res, key=lambda x: x["index"])]
    # same engine, GEMM path and truncation: the cluster batches rows differently and splits
    # sums over other thread counts, which moves f32 scores by ~1e-5 relative; 1e-3 of
    # max(|s|, 1) leaves room for that and is still far below what the adapter changes
    tol = [1e-3 * max(abs(w), 1.0) for w in with_ad]
    assert all(abs(c - w) <= t for c, w, t in zip(cl, with_ad, tol)), (n, cl, with_ad)
    assert any(abs(c - w) > 10 * t for c, w, t in zip(cl, without, tol)), \
        (n, "the adapter changes nothing", cl, without)
    print(f"stage {n}: cluster {cl} == mrank score with {s['adapters']} {with_ad}; "
          f"without: {without}")
PY
  kill -TERM "$cpid" "-$wpid" 2>/dev/null || true
  wait "$cpid" "$wpid" 2>/dev/null || true
  rm -rf "$dir"
  base=$((base + 8))
  step "$name: passed"
}

cleanup_big() { [ -n "${ckpt_dir:-}" ] && rm -rf "$ckpt_dir"; mr_harness_cleanup; }
trap cleanup_big EXIT
for r in "${releases[@]}"; do check_release "$r"; done
echo "${#releases[@]} passed, 0 failed"
