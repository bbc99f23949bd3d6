#!/usr/bin/env bash
# run_cluster.sh: cluster benchmark of mrank (coordinator + workers on loopback, seeded model).
#
#   bash bench/run_cluster.sh [BUILD_DIR]          (from anywhere; BUILD_DIR default build-cl)
#
# Env: DUR (seconds per measured point, default 8), WARM (warm-up seconds excluded at the start
# of each point, default 1), DOCS (documents per request, default 16), CONC (closed-loop
# concurrency for saturation, default 8), LOW_RATE (req/s for the overhead comparison, default
# 20), C_DOCS (documents per request for the overhead comparison, default 2), THREADS (compute threads per worker, default 1), RESULTS (output folder, default a new
# /tmp/mrank-bench-cluster.XXXX).
#
# Measures, on a seeded 4-layer hidden-128 Mistral-shaped checkpoint (untrained: only the
# machinery is timed), with bench/cluster/loadgen (open-loop Poisson over mr_rpc_unary_async):
#  (a) saturation throughput per profile (closed loop, CONC in flight: cascade on tier standard,
#      full-only on tier batch), then p50/p99 per tier at open-loop Poisson rates of 25%, 50%,
#      90% of its profile's saturation (interactive and standard use cascade);
#  (b) saturation throughput of the cheap pool alone (profile cheap-only) with 1, 2, 4 workers;
#  (c) coordinator overhead: Rerank (profile full-only, one stage, one Score call) vs Score sent
#      straight to the same full-pool worker with the same documents and sub-architecture, at
#      LOW_RATE, 2*DUR seconds each, alternated three times (A B A B A B);
#  (d) cost-model check: tier interactive at 2 req/s on a fresh coordinator, then after a 4 s
#      closed-loop burst of full-only (tier batch), then after 6 s of tier standard.
# Every process it starts is killed on exit (trap). Prints markdown tables at the end and keeps
# raw loadgen output + results.jsonl in RESULTS.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
B=$(readlink -f "${1:-build-cl}")
DUR=${DUR:-8}
WARM=${WARM:-1}
DOCS=${DOCS:-16}
CONC=${CONC:-8}
LOW_RATE=${LOW_RATE:-20}
C_DOCS=${C_DOCS:-2}
THREADS=${THREADS:-1}
PY=/usr/bin/python3

# ---- build: mrank and loadgen ----
cmake -S "$ROOT" -B "$B" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$B" -j"$(nproc)" --target mrank loadgen >/dev/null
MRANK=$B/mrank
LG=$B/bench/cluster/loadgen

RESULTS=${RESULTS:-$(mktemp -d /tmp/mrank-bench-cluster.XXXX)}
mkdir -p "$RESULTS"
work=$(mktemp -d /tmp/mr_bench_cl_XXXXXX)
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() { stop_all; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[$(date +%T)] $*" | tee -a "$RESULTS/run.log"; }
{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo ?)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
  echo "nproc: $(nproc)"
  echo "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "DUR=$DUR WARM=$WARM DOCS=$DOCS CONC=$CONC LOW_RATE=$LOW_RATE THREADS=$THREADS"
} | tee "$RESULTS/machine.txt"

free_ports() { $PY -c '
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))
for s in ss: s.close()' "$1"; }

model=$work/model
"$MRANK" init-checkpoint --arch mistral --layers 4 --hidden 128 --heads 4 --kv-heads 2 \
  --intermediate 384 --vocab-from third_party/tokenizers/llama2/tokenizer.json \
  --start-layer 1 --dtype bf16 --seed 1 --out "$model" >/dev/null
printf 'Paris is the capital of France.\nBerlin is in Germany.\n' >"$work/probe.txt"

# start_cluster NCHEAP: NCHEAP cheap-pool workers, one full-pool worker, a coordinator.
# Sets COORD, FULL (worker address).
start_cluster() {
  local n=$1 ports i addrs=""
  read -r -a ports <<<"$(free_ports $((n + 3)))"
  local pc=${ports[0]} pm=${ports[1]} pf=${ports[2]}
  for ((i = 0; i < n; i++)); do
    addrs+="${addrs:+, }\"127.0.0.1:${ports[$((3 + i))]}\""
  done
  sed -e "s|@MODEL@|$model|" -e "s|@COORD_PORT@|$pc|" -e "s|@METRICS_PORT@|$pm|" \
      -e "s|@CHEAP_ADDRS@|$addrs|" -e "s|@FULL_PORT@|$pf|" \
      bench/cluster/cluster.template.json >"$work/cluster-$n.json"
  for ((i = 0; i < n; i++)); do
    "$MRANK" worker --model "$model" --listen "127.0.0.1:${ports[$((3 + i))]}" \
      --threads "$THREADS" --max-len 256 2>"$work/w-cheap$i.log" &
    pids+=($!)
  done
  "$MRANK" worker --model "$model" --listen "127.0.0.1:$pf" --threads "$THREADS" --max-len 256 \
    2>"$work/w-full.log" &
  pids+=($!)
  COORD=127.0.0.1:$pc
  FULL=127.0.0.1:$pf
  METRICS=127.0.0.1:$pm
  CONF=$work/cluster-$n.json
  start_coord
}

# start_coord: (re)starts the coordinator of the current cluster (a fresh cost model, warmed up
# by the coordinator's own warm-up Score calls) and waits until it answers a Rerank.
start_coord() {
  if [ -n "${COORD_PID:-}" ] && kill -0 "$COORD_PID" 2>/dev/null; then
    kill -TERM "$COORD_PID"
    wait "$COORD_PID" 2>/dev/null || true
    local keep=() p
    for p in "${pids[@]}"; do [ "$p" != "$COORD_PID" ] && keep+=("$p"); done
    pids=("${keep[@]}")
  fi
  "$MRANK" coordinator --config "$CONF" 2>>"$work/coord.log" &
  COORD_PID=$!
  pids+=($COORD_PID)
  for _ in $(seq 1 300); do
    "$MRANK" rerank --addr "$COORD" --query q --docs "$work/probe.txt" --timeout-ms 2000 \
      >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "cluster ($CONF) did not answer in 60 s" >&2
  tail -5 "$work"/*.log >&2
  exit 1
}

# lg LABEL loadgen-args...: one measured point; raw output to run.log, JSON to results.jsonl.
lg() {
  local label=$1; shift
  local out
  out=$("$LG" --label "$label" --seed 42 --docs "$DOCS" "$@")
  echo "$out" >>"$RESULTS/run.log"
  echo "$out" | grep -v '^JSON' | sed 's/^/    /'
  echo "$out" | sed -n 's/^JSON //p' >>"$RESULTS/results.jsonl"
  echo "$out" | sed -n 's/^JSON //p' | $PY -c 'import json,sys; print(json.load(sys.stdin)["throughput"])'
}
: >"$RESULTS/results.jsonl"

# ---- cluster: 1 cheap + 1 full ----
log "start cluster: 1 cheap worker, 1 full worker, coordinator"
start_cluster 1
log "warm-up (discarded)"
"$LG" --addr "$COORD" --concurrency 4 --duration 2 --docs "$DOCS" --tier standard >/dev/null
"$LG" --addr "$COORD" --concurrency 4 --duration 1 --docs "$DOCS" --tier batch >/dev/null

log "(c) coordinator overhead at $LOW_RATE req/s: Score direct vs Rerank full-only (A B A B A B)"
for rep in 1 2 3; do
  lg "c-score-direct-$rep" --addr "$FULL" --mode score --depth 4 --compress-ratio 1 \
    --max-len 256 --rate "$LOW_RATE" --duration $((DUR * 2)) --warmup-s "$WARM" --docs "$C_DOCS" \
    >/dev/null
  lg "c-rerank-full-only-$rep" --addr "$COORD" --tier batch --profile full-only \
    --rate "$LOW_RATE" --duration $((DUR * 2)) --warmup-s "$WARM" --docs "$C_DOCS" >/dev/null
done
tail -n 6 "$RESULTS/results.jsonl" | $PY -c '
import json, sys
for l in sys.stdin:
    r = json.loads(l); print("    %-24s p50 %7.2f  p99 %7.2f ms  ok %d/%d" % (r["label"], r["p50"], r["p99"], r["ok"], r["sent"]))'

log "(a) saturation per profile (closed loop, $CONC in flight), then per tier 25/50/90% open loop"
# Saturation is measured per profile on the tier without a tight budget (cascade: standard;
# full-only: batch); the interactive tier (cascade, 150 ms budget) is offered the cascade's rates.
sat_cascade=$(lg "a-standard-sat" --addr "$COORD" --tier standard --concurrency "$CONC" \
              --duration "$DUR" --warmup-s "$WARM" | tail -1)
sat_full=$(lg "a-batch-sat" --addr "$COORD" --tier batch --concurrency "$CONC" \
           --duration "$DUR" --warmup-s "$WARM" | tail -1)
log "  saturation: cascade (tier standard) $sat_cascade req/s, full-only (tier batch) $sat_full req/s"
for tier in interactive standard batch; do
  sat=$sat_cascade
  [ $tier = batch ] && sat=$sat_full
  if ! $PY -c "import sys; sys.exit(0 if float('$sat') > 0 else 1)"; then
    log "  $tier: saturation throughput is 0 (every request failed), rates skipped"
    continue
  fi
  # A fresh coordinator per tier: the cost model of a stage is inflated by a preceding
  # saturation run and only recovers when the stage runs again (see docs/bench-cluster.md).
  start_coord
  for pct in 25 50 90; do
    rate=$($PY -c "print(round($sat * $pct / 100, 3))")
    lg "a-$tier-$pct" --addr "$COORD" --tier "$tier" --rate "$rate" --duration "$DUR" \
      --warmup-s "$WARM" >/dev/null
  done
done
log "(d) cost model after a burst: interactive 2 req/s, fresh / after batch burst / after standard"
nsptl() { curl -s "http://$METRICS/metrics" | sed -n 's/^mrank_coord_stage_seconds_per_token_layer{stage="full"} //p' | awk '{printf "%.0f\n", $1 * 1e9}'; }
start_coord
lg "d-interactive-fresh" --addr "$COORD" --tier interactive --rate 2 --duration 6 >/dev/null
n1=$(nsptl)
lg "d-batch-burst" --addr "$COORD" --tier batch --concurrency "$CONC" --duration 4 >/dev/null
n2=$(nsptl)
lg "d-interactive-after-burst" --addr "$COORD" --tier interactive --rate 2 --duration 6 >/dev/null
n3=$(nsptl)
lg "d-standard" --addr "$COORD" --tier standard --rate 2 --duration 6 >/dev/null
n4=$(nsptl)
lg "d-interactive-after-standard" --addr "$COORD" --tier interactive --rate 2 --duration 6 >/dev/null
n5=$(nsptl)
echo "{\"label\":\"d-ns\",\"ns\":[${n1:-0},${n2:-0},${n3:-0},${n4:-0},${n5:-0}]}" >>"$RESULTS/results.jsonl"
curl -s "http://$METRICS/metrics" 2>/dev/null | grep -E '^mrank_coord_(requests_total|degraded_total|deadline_misses_total|retries_total)' \
  >"$RESULTS/coord-metrics-1.txt" || true
stop_all

log "(b) cheap pool alone (profile cheap-only), closed loop $((CONC * 2)) in flight"
for n in 1 2 4; do
  start_cluster "$n"
  "$LG" --addr "$COORD" --concurrency 4 --duration 2 --docs "$DOCS" --profile cheap-only \
    >/dev/null
  t=$(lg "b-cheap-$n" --addr "$COORD" --profile cheap-only --concurrency $((CONC * 2)) \
      --duration "$DUR" --warmup-s "$WARM" | tail -1)
  log "  $n cheap workers: $t req/s"
  stop_all
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RESULTS/machine.txt"

# ---- tables ----
$PY - "$RESULTS/results.jsonl" <<'EOF' | tee "$RESULTS/tables.md"
import json, sys
rs = {r["label"]: r for r in map(json.loads, open(sys.argv[1]))}
def err(r):
    e = dict(r["errors"])
    if r.get("not_sent"): e["not_sent"] = r["not_sent"]
    return ", ".join(f"{k} {v}" for k, v in e.items()) or "0"
print("### (a) latency per tier (open-loop Poisson, rate = % of the profile's closed-loop saturation)\n")
print("| tier | profile | load | rate req/s | sent | ok | degraded | errors | throughput | p50 ms | p90 ms | p99 ms | max ms |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
prof = {"interactive": "cascade (budget 150 ms)", "standard": "cascade (budget 1000 ms)", "batch": "full-only (no budget)"}
for t in ["interactive", "standard", "batch"]:
    for p in ["sat", "25", "50", "90"]:
        r = rs.get(f"a-{t}-{p}")
        if not r: continue
        load = "saturation (closed, %d in flight)" % r["concurrency"] if p == "sat" else p + "%"
        rate = "-" if p == "sat" else "%.2f" % r["rate"]
        print(f"| {t} | {prof[t]} | {load} | {rate} | {r['sent']} | {r['ok']} | {r['degraded']} | {err(r)} | {r['throughput']:.2f} | {r['p50']:.2f} | {r['p90']:.2f} | {r['p99']:.2f} | {r['max']:.2f} |")
print("\n### (b) cheap pool scaling (profile cheap-only, closed loop)\n")
print("| cheap workers | in flight | ok | errors | throughput req/s | vs 1 worker | p50 ms | p99 ms |")
print("|---|---|---|---|---|---|---|---|")
base = rs.get("b-cheap-1", {}).get("throughput")
for n in [1, 2, 4]:
    r = rs.get(f"b-cheap-{n}")
    if not r: continue
    ratio = "%.2fx" % (r["throughput"] / base) if base else "-"
    print(f"| {n} | {r['concurrency']} | {r['ok']} | {err(r)} | {r['throughput']:.2f} | {ratio} | {r['p50']:.2f} | {r['p99']:.2f} |")
print("\n### (c) coordinator overhead (same worker, same documents, same rate)\n")
print("| run | path | rate req/s | ok/sent | p50 ms | p90 ms | p99 ms | max ms | client - server-reported p50 / p99 ms | coordinator outside stages p50 / p99 ms | sender lag max ms |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for rep in [1, 2, 3]:
    for lab, path in [("c-score-direct", "Worker/Score direct"), ("c-rerank-full-only", "Ranker/Rerank, full-only")]:
        r = rs.get(f"{lab}-{rep}")
        inner = f"{r['inner_p50']:.3f} / {r['inner_p99']:.3f}" if r and r.get("inner_p50", -1) >= 0 else "-"
        if r: print(f"| {rep} | {path} | {r['rate']:.1f} | {r['ok']}/{r['sent']} | {r['p50']:.2f} | {r['p90']:.2f} | {r['p99']:.2f} | {r['max']:.2f} | {r.get('xport_p50', -1):.2f} / {r.get('xport_p99', -1):.2f} | {inner} | {r.get('sender_lag_ms', 0):.1f} |")
print("\n| run | overhead p50 ms | overhead p99 ms |")
print("|---|---|---|")
for rep in [1, 2, 3]:
    a, b = rs.get(f"c-score-direct-{rep}"), rs.get(f"c-rerank-full-only-{rep}")
    if a and b: print(f"| {rep} | {b['p50'] - a['p50']:+.2f} | {b['p99'] - a['p99']:+.2f} |")
print("\n### (d) cost model after a burst (tier interactive at 2 req/s, 16 docs)\n")
ns = rs.get("d-ns", {}).get("ns", [])
print("| step | sent | ok | degraded | errors | p50 ms | p99 ms | full-stage ns/token-layer after |")
print("|---|---|---|---|---|---|---|---|")
for i, lab in enumerate(["d-interactive-fresh", "d-batch-burst", "d-interactive-after-burst", "d-standard", "d-interactive-after-standard"]):
    r = rs.get(lab)
    if r: print(f"| {lab[2:]} | {r['sent']} | {r['ok']} | {r['degraded']} | {err(r)} | {r['p50']:.2f} | {r['p99']:.2f} | {ns[i] if i < len(ns) else '-'} |")
EOF
log "results in $RESULTS"
