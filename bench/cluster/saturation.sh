#!/usr/bin/env bash
# saturation.sh: the cascade's requests/s at saturation with and without the two ways it saves
# compute: stages that continue (a fused stage pair) and query-prefix sharing (docs/cluster.md,
# docs/perf.md); measured on models/mrank-tiny-d8 by default, on any checkpoint with MODEL.
#
#   bash bench/cluster/saturation.sh [BUILD_DIR]        (from anywhere; default build)
#
# Env: MODEL (default models/mrank-tiny-d8), DA (the shallower exit, default 3), KEEP (its
# keep_top_k, default 4), DB (the deeper exit, default 8), DOCS (documents per request, default
# 16), CONC (closed-loop concurrency, default 4), DUR (seconds per point, default 6), ROUNDS
# (default 3), SHARE (both: prefix sharing on and off; on: on only; default both), THREADS (the
# worker's compute threads, default 1), WARM_UP_ROWS (the worker's start-up measurement, 1..8,
# default 8), WARM_S (unrecorded seconds per profile after each start, default 2), START_S (how
# long a start may take, default 60), TIMEOUT_MS (per request, default 30000), ENGINE_REPS
# (step 1's repetitions, default 21; 0 skips it), PORT_BASE (coordinator, its metrics, the
# worker, its metrics: +0..+3; default 17400), BACKEND (the worker's scorer backend, default
# cpu; cuda on a GPU), NO_BUILD (1: use BUILD_DIR's binaries as they are, for a machine without
# the build's tools: scripts/gpu_bundle.sh), PY (the python3 that reads the results, default
# /usr/bin/python3).
#
# 1. The engine's own token-layer count (bench_prefill --fused DA:KEEP, DOCS rows of 64 tokens,
#    the model's deepest exit as the second stage; always the CPU engine, whatever BACKEND):
#    the split cascade's two passes against the fused pass, and their median times.
# 2. Saturation of a cluster: one `mrank worker` and a coordinator whose profiles "split" (fuse
#    never) and "fused" (fuse always) run the same two stages (exit DA keeping KEEP, then exit
#    DB), closed loop (bench/cluster/loadgen, CONC in flight, DOCS documents per request).
#    Each round starts the cluster once per prefix-sharing arm (the worker with and without
#    --no-prefix-share; the arms' order flips each round), runs WARM_S of each profile
#    unrecorded, then a point of each (split first on odd rounds): requests/s, the worker's
#    token-layers per request (mrank_worker_token_layers_total over the coordinator's requests)
#    and its mean tokens per pass. Then medians per arm and the ratios, measured in the same
#    run. In the last round, the shared arm also runs DUR seconds of profile "auto" (fuse
#    auto): how many of its requests it ran fused.
# Everything it starts is stopped on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
B=$(readlink -f "${1:-build}")
MODEL=${MODEL:-models/mrank-tiny-d8}
DA=${DA:-3}
KEEP=${KEEP:-4}
DB=${DB:-8}
DOCS=${DOCS:-16}
CONC=${CONC:-4}
DUR=${DUR:-6}
ROUNDS=${ROUNDS:-3}
SHARE=${SHARE:-both}
THREADS=${THREADS:-1}
WARM_UP_ROWS=${WARM_UP_ROWS:-8}
WARM_S=${WARM_S:-2}
START_S=${START_S:-60}
TIMEOUT_MS=${TIMEOUT_MS:-30000}
ENGINE_REPS=${ENGINE_REPS:-21}
PORT_BASE=${PORT_BASE:-17400}
BACKEND=${BACKEND:-cpu}
PY=${PY:-/usr/bin/python3}
case "$SHARE" in both) arms="on off" ;; on) arms="on" ;;
  *) echo "SHARE: '$SHARE' is not both or on" >&2; exit 2 ;; esac

[ "${NO_BUILD:-0}" = 1 ] || cmake --build "$B" --target mrank loadgen bench_prefill >/dev/null
if [ "$ENGINE_REPS" -gt 0 ] && [ ! -x "$B/bench/bench_prefill" ]; then
  echo "saturation.sh: $B/bench/bench_prefill is missing (ENGINE_REPS=0 skips step 1)" >&2
  exit 2
fi
work=$(mktemp -d /tmp/mr_saturation_XXXXXX)
pids=""
stop_cluster() {
  for p in $pids; do kill -INT "$p" 2>/dev/null || true; done
  for p in $pids; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  pids=""
}
cleanup() { stop_cluster; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "# $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (dirty)')," \
  "nproc $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg), OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}," \
  "MR_GEMM=${MR_GEMM:-unset}"
echo "# MODEL=$MODEL DA=$DA KEEP=$KEEP DB=$DB DOCS=$DOCS CONC=$CONC DUR=$DUR ROUNDS=$ROUNDS" \
  "SHARE=$SHARE THREADS=$THREADS BACKEND=$BACKEND"

# ---- 1. the engine ----
if [ "$ENGINE_REPS" -gt 0 ]; then
  OMP_NUM_THREADS=$THREADS "$B/bench/bench_prefill" "$MODEL" --rows "$DOCS" --len 64 --query 12 \
    --reps "$ENGINE_REPS" --fused "$DA:$KEEP"
fi

# ---- 2. the cluster ----
pc=$PORT_BASE pm=$((PORT_BASE + 1)) pw=$((PORT_BASE + 2)) pwm=$((PORT_BASE + 3))
stages="[{\"stage\": \"a\", \"keep_top_k\": $KEEP}, {\"stage\": \"b\"}]"
cat >"$work/cluster.json" <<JSON
{"model": "$MODEL",
 "coordinator": {"listen": "127.0.0.1:$pc", "metrics_port": $pm, "http_listen": "off"},
 "limits": {"max_documents": 1000, "max_tokens_per_pair": 256},
 "pools": [{"name": "p", "addresses": ["127.0.0.1:$pw"]}],
 "stages": [{"name": "a", "pool": "p", "depth": $DA}, {"name": "b", "pool": "p", "depth": $DB}],
 "profiles": [{"name": "split", "fuse": "never", "stages": $stages},
              {"name": "fused", "fuse": "always", "stages": $stages},
              {"name": "auto", "stages": $stages}],
 "tiers": [{"name": "batch", "budget_ms": 0, "profile": "split"}]}
JSON
printf 'Paris is the capital of France.\nBerlin is in Germany.\n' >"$work/probe.txt"

start_cluster() {   # start_cluster on|off: the worker (prefix sharing as given) and a coordinator
  local flag=""
  [ "$1" = off ] && flag=--no-prefix-share
  OMP_NUM_THREADS=$THREADS "$B/mrank" worker --model "$MODEL" --listen "127.0.0.1:$pw" \
    --threads "$THREADS" --metrics-port "$pwm" --warm-up-rows "$WARM_UP_ROWS" \
    --backend "$BACKEND" $flag \
    >"$work/worker.log" 2>&1 &
  pids="$pids $!"
  "$B/mrank" coordinator --config "$work/cluster.json" --listen "127.0.0.1:$pc" \
    --metrics-port "$pm" --http-listen off >"$work/coord.log" 2>&1 &
  pids="$pids $!"
  local t0=$SECONDS
  until "$B/mrank" rerank --addr "127.0.0.1:$pc" --query q --docs "$work/probe.txt" \
      --timeout-ms 10000 >/dev/null 2>&1; do
    if [ $((SECONDS - t0)) -ge "$START_S" ]; then
      echo "cluster did not answer in $START_S s" >&2
      tail -5 "$work/worker.log" "$work/coord.log" >&2
      exit 1
    fi
    sleep 0.5
  done
}
scrape() {   # scrape PORT: a /metrics page (curl, or python3 where there is no curl)
  if command -v curl >/dev/null; then curl -s "http://127.0.0.1:$1/metrics"
  else "$PY" -c 'import sys, urllib.request as u
url = "http://127.0.0.1:%s/metrics" % sys.argv[1]
sys.stdout.write(u.urlopen(url, timeout=10).read().decode())' "$1"
  fi
}
wm() { scrape "$pwm" | sed -n "s/^$1 //p"; }   # worker series
cm() { scrape "$pm" | sed -n "s/^$1 //p"; }    # coordinator series
load() {   # load PROFILE SECONDS [loadgen options...]: closed loop, its JSON line on stdout
  local p=$1 d=$2
  shift 2
  "$B/bench/cluster/loadgen" --addr "127.0.0.1:$pc" --mode rerank --concurrency "$CONC" \
    --duration "$d" --docs "$DOCS" --tier batch --profile "$p" --timeout-ms "$TIMEOUT_MS" "$@" |
    sed -n 's/^JSON //p'
}
point() {   # point ARM PROFILE: one recorded point, its JSON line into results
  local cand='mrank_coord_stage_candidates_total{stage="a",tier="batch"}' b0 t0 l0 a0 b1 t1 l1 a1
  b0=$(wm mrank_worker_batch_tokens_count) t0=$(wm mrank_worker_batch_tokens_sum)
  l0=$(wm mrank_worker_token_layers_total) a0=$(cm "$cand")
  load "$2" "$DUR" --warmup-s 1 --label "$2" >"$work/point.json"
  b1=$(wm mrank_worker_batch_tokens_count) t1=$(wm mrank_worker_batch_tokens_sum)
  l1=$(wm mrank_worker_token_layers_total) a1=$(cm "$cand")
  "$PY" -c 'import json, sys
r = json.load(open(sys.argv[1])); v = [float(x) for x in sys.argv[3:11]]
b, req = v[1] - v[0], (v[7] - v[6]) / float(sys.argv[2])
r["share"] = sys.argv[11]; r["worker_passes"] = b
r["worker_mean_pass_tokens"] = (v[3] - v[2]) / b
r["token_layers_per_request"] = (v[5] - v[4]) / req
print(json.dumps(r))' "$work/point.json" "$DOCS" "$b0" "$b1" "$t0" "$t1" "$l0" "$l1" "$a0" "$a1" \
    "$1" | tee -a "$work/results.jsonl"
}

for r in $(seq 1 "$ROUNDS"); do
  order=$arms
  [ $((r % 2)) = 0 ] && [ "$SHARE" = both ] && order="off on"
  for arm in $order; do
    echo "# round $r, prefix sharing $arm: starting ($(date -u +%T))"
    start_cluster "$arm"
    for p in split fused; do load "$p" "$WARM_S" >/dev/null; done   # cost models, first touches
    if [ $((r % 2)) = 1 ]; then point "$arm" split; point "$arm" fused
    else point "$arm" fused; point "$arm" split; fi
    if [ "$r" = "$ROUNDS" ] && [ "$arm" = on ]; then   # what "auto" picks under the same load
      a0=$(cm 'mrank_coord_stage_candidates_total{stage="a",tier="batch"}')
      f0=$(cm 'mrank_coord_fused_stages_total{profile="auto"}')
      load auto "$DUR" >"$work/auto.json"
      a1=$(cm 'mrank_coord_stage_candidates_total{stage="a",tier="batch"}')
      f1=$(cm 'mrank_coord_fused_stages_total{profile="auto"}')
      "$PY" -c 'import json, sys
t = json.load(open(sys.argv[1]))["throughput"]; f = float(sys.argv[3]) - float(sys.argv[2])
n = (float(sys.argv[5]) - float(sys.argv[4])) / float(sys.argv[6])
print(f"# auto (prefix sharing on): {f:.0f} fused pairs in {n:.0f} requests, {t} req/s")' \
        "$work/auto.json" "$f0" "$f1" "$a0" "$a1" "$DOCS"
    fi
    stop_cluster
  done
done

"$PY" - "$work/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by, tok, tl = {}, {}, {}
for r in rows:
    if any(r["errors"].values()) or r["degraded"]:
        sys.exit(f"{r['share']}/{r['label']}: errors {r['errors']}, degraded {r['degraded']}")
    k = (r["share"], r["label"])
    by.setdefault(k, []).append(float(r["throughput"]))
    tok.setdefault(k, []).append(r["worker_mean_pass_tokens"])
    tl.setdefault(k, []).append(r["token_layers_per_request"])
med = {k: statistics.median(v) for k, v in by.items()}
print("| prefix sharing | profile | req/s per round | median | token-layers per request "
      "(median) | worker tokens per pass (median) |")
print("|---|---|---|---|---|---|")
for k in sorted(by, key=lambda k: (k[0] != "on", k[1])):
    print(f"| {k[0]} | {k[1]} | {', '.join(f'{x:.2f}' for x in by[k])} | {med[k]:.2f} | "
          f"{statistics.median(tl[k]):,.0f} | {statistics.median(tok[k]):,.0f} |")
m = lambda a, p: med.get((a, p))
print(f"fused / split, sharing on (medians): {m('on', 'fused') / m('on', 'split'):.3f}")
if m("off", "split"):
    print(f"fused / split, sharing off: {m('off', 'fused') / m('off', 'split'):.3f}")
    print(f"sharing on / off, split: {m('on', 'split') / m('off', 'split'):.3f}; fused: "
          f"{m('on', 'fused') / m('off', 'fused'):.3f}")
    print(f"both (shared fused) / neither (unshared split): "
          f"{m('on', 'fused') / m('off', 'split'):.3f}")
PY
