#!/usr/bin/env bash
# fused_stages.sh: stages that continue (docs/cluster.md) measured on models/mrank-tiny-d8.
#
#   bash bench/cluster/fused_stages.sh [BUILD_DIR]        (from anywhere; default build)
#
# Env: DA (the shallower exit, default 3), KEEP (its keep_top_k, default 4), DOCS (documents per
# request, default 16), CONC (closed-loop concurrency, default 4), DUR (seconds per point,
# default 6), ROUNDS (default 3), PORT_BASE (coordinator, metrics, worker: +0, +1, +2; default
# 17400).
#
# 1. The engine's own token-layer count (bench_prefill --fused DA:KEEP, DOCS rows of 64 tokens):
#    the split cascade's two passes (exit DA over every row, exit 8 over the KEEP best) against
#    the fused pass (exits [DA, 8], prune to KEEP at DA), and their median times.
# 2. Saturation of a cluster (`mrank up`: one worker, one compute thread, and a coordinator)
#    whose profiles "split" (fuse never) and "fused" (fuse always) run the same two stages (exit
#    DA keeping KEEP, then exit 8), closed loop (bench/cluster/loadgen, CONC in flight, DOCS
#    documents per request), after 2 s of each unrecorded, alternated ROUNDS times in the same
#    run (split first on odd rounds): requests/s of each (and the worker's passes and their
#    mean tokens, from its /metrics), the median of each and fused / split; then DUR seconds
#    of profile "auto" (fuse auto): how many of its requests it ran fused.
# Everything it starts is stopped on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
B=$(readlink -f "${1:-build}")
DA=${DA:-3}
KEEP=${KEEP:-4}
DOCS=${DOCS:-16}
CONC=${CONC:-4}
DUR=${DUR:-6}
ROUNDS=${ROUNDS:-3}
PORT_BASE=${PORT_BASE:-17400}
MODEL=models/mrank-tiny-d8

cmake --build "$B" --target mrank loadgen bench_prefill >/dev/null
work=$(mktemp -d /tmp/mr_fused_XXXXXX)
up_pid=
cleanup() {
  if [ -n "$up_pid" ] && kill -0 "$up_pid" 2>/dev/null; then
    kill -INT "$up_pid"
    for _ in $(seq 1 100); do kill -0 "$up_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$up_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "# $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (dirty)')," \
  "nproc $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# DA=$DA KEEP=$KEEP DOCS=$DOCS CONC=$CONC DUR=$DUR ROUNDS=$ROUNDS"

# ---- 1. the engine ----
OMP_NUM_THREADS=1 "$B/bench/bench_prefill" "$MODEL" --rows "$DOCS" --len 64 --query 12 \
  --reps 21 --fused "$DA:$KEEP"

# ---- 2. the cluster ----
pc=$PORT_BASE pm=$((PORT_BASE + 1)) pw=$((PORT_BASE + 2))
stages="[{\"stage\": \"a\", \"keep_top_k\": $KEEP}, {\"stage\": \"b\"}]"
cat >"$work/cluster.json" <<EOF
{"model": "$MODEL",
 "coordinator": {"listen": "127.0.0.1:$pc", "metrics_port": $pm, "http_listen": "off"},
 "limits": {"max_documents": 1000, "max_tokens_per_pair": 256},
 "pools": [{"name": "p", "addresses": ["127.0.0.1:$pw"], "metrics_port_base": $((PORT_BASE + 3))}],
 "stages": [{"name": "a", "pool": "p", "depth": $DA}, {"name": "b", "pool": "p", "depth": 8}],
 "profiles": [{"name": "split", "fuse": "never", "stages": $stages},
              {"name": "fused", "fuse": "always", "stages": $stages},
              {"name": "auto", "stages": $stages}],
 "tiers": [{"name": "batch", "budget_ms": 0, "profile": "split"}]}
EOF
"$B/mrank" up --config "$work/cluster.json" --threads 1 >"$work/up.log" 2>&1 &
up_pid=$!
printf 'Paris is the capital of France.\nBerlin is in Germany.\n' >"$work/probe.txt"
for i in $(seq 1 300); do
  "$B/mrank" rerank --addr "127.0.0.1:$pc" --query q --docs "$work/probe.txt" \
    --timeout-ms 2000 >/dev/null 2>&1 && break
  [ "$i" = 300 ] && { echo "cluster did not answer in 60 s" >&2; tail -20 "$work/up.log" >&2; exit 1; }
  sleep 0.2
done

wm() {   # wm SERIES: a sample of the worker's /metrics
  curl -s "http://127.0.0.1:$((PORT_BASE + 3))/metrics" | sed -n "s/^$1 //p"
}
point() {   # point PROFILE: one closed-loop point; its JSON line (with the worker's passes and
            # their mean tokens over the whole point) into results
  local b0 t0 b1 t1 c0 c1
  b0=$(wm mrank_worker_batch_tokens_count) t0=$(wm mrank_worker_batch_tokens_sum)
  c0=$(wm mrank_worker_compute_seconds_sum)
  "$B/bench/cluster/loadgen" --addr "127.0.0.1:$pc" --mode rerank --concurrency "$CONC" \
    --duration "$DUR" --warmup-s 1 --docs "$DOCS" --tier batch --profile "$1" \
    --timeout-ms 30000 --label "$1" | sed -n 's/^JSON //p' >"$work/point.json"
  b1=$(wm mrank_worker_batch_tokens_count) t1=$(wm mrank_worker_batch_tokens_sum)
  c1=$(wm mrank_worker_compute_seconds_sum)
  /usr/bin/python3 -c 'import json, sys
r = json.load(open(sys.argv[1])); b = float(sys.argv[3]) - float(sys.argv[2])
r["worker_passes"] = b; r["worker_mean_pass_tokens"] = (float(sys.argv[5]) - float(sys.argv[4])) / b
r["worker_compute_s"] = float(sys.argv[7]) - float(sys.argv[6])
print(json.dumps(r))' "$work/point.json" "$b0" "$b1" "$t0" "$t1" "$c0" "$c1" | tee -a "$work/results.jsonl"
}
for p in split fused; do   # warm-up, not recorded: cost models, first touches
  "$B/bench/cluster/loadgen" --addr "127.0.0.1:$pc" --mode rerank --concurrency "$CONC" \
    --duration 2 --docs "$DOCS" --tier batch --profile "$p" --timeout-ms 30000 >/dev/null
done
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then point split; point fused; else point fused; point split; fi
done
cm() { curl -s "http://127.0.0.1:$pm/metrics" | sed -n "s/^$1 //p"; }
echo "# fused stage pairs counted on profile fused: $(cm 'mrank_coord_fused_stages_total{profile="fused"}')"
# what "auto" picks under the same load: its fused pairs against its requests
a0=$(cm 'mrank_coord_stage_candidates_total{stage="a",tier="batch"}')
f0=$(cm 'mrank_coord_fused_stages_total{profile="auto"}')
"$B/bench/cluster/loadgen" --addr "127.0.0.1:$pc" --mode rerank --concurrency "$CONC" \
  --duration "$DUR" --docs "$DOCS" --tier batch --profile auto --timeout-ms 30000 \
  | sed -n 's/^JSON //p' >"$work/auto.json"
a1=$(cm 'mrank_coord_stage_candidates_total{stage="a",tier="batch"}')
f1=$(cm 'mrank_coord_fused_stages_total{profile="auto"}')
echo "# auto: $(/usr/bin/python3 -c "print(round(float('$f1') - float('$f0')))") fused pairs in" \
  "$(/usr/bin/python3 -c "print(round((float('$a1') - float('$a0')) / $DOCS))") requests," \
  "$(/usr/bin/python3 -c "import json; print(json.load(open('$work/auto.json'))['throughput'])") req/s"
/usr/bin/python3 - "$work/results.jsonl" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by, tok = {}, {}
for r in rows:
    tok.setdefault(r["label"], []).append(r["worker_mean_pass_tokens"])
    if any(r["errors"].values()) or r["degraded"]:
        sys.exit(f"{r['label']}: errors {r['errors']}, degraded {r['degraded']}")
    by.setdefault(r["label"], []).append(float(r["throughput"]))
med = {k: statistics.median(v) for k, v in by.items()}
print("| profile | req/s per round | median | worker tokens per pass (median) |")
print("|---|---|---|---|")
for k in ("split", "fused"):
    print(f"| {k} | {', '.join(f'{x:.1f}' for x in by[k])} | {med[k]:.1f} | "
          f"{statistics.median(tok[k]):.0f} |")
print(f"fused / split (medians): {med['fused'] / med['split']:.3f}")
EOF
