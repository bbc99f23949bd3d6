#!/usr/bin/env bash
# metrics_promtool.sh: the /metrics of a running worker and coordinator pass `promtool check
# metrics` (Prometheus's own linter: naming, units, HELP/TYPE, counter suffixes), and both carry
# mrank_build_info{version,revision,component} 1 and the process_* metrics with plausible values
# (RSS and open descriptors above 0, start time in the past, CPU seconds not negative); Ranker
# Info reports the workers' model dtype and the version `mrank --version` prints.
# A Rerank call through the coordinator first, so the per-tier series carry counts.
# promtool comes from Debian's prometheus package (scripts/setup.sh); without it: skip (77).
# Usage: bash tests/metrics_promtool.sh path/to/mrank   (from the repo root)
set -euo pipefail
MRANK=$(readlink -f "${1:?usage: metrics_promtool.sh path/to/mrank}")
cd "$(dirname "$0")/.."
command -v promtool >/dev/null || { echo "SKIP: promtool not installed (Debian prometheus)"; exit 77; }
command -v curl >/dev/null || { echo "FAIL: needs curl (scripts/setup.sh installs it)"; exit 1; }
PY=/usr/bin/python3
. tests/lib/harness.bash
mr_harness promtool

mr_ports 7
PM=$P2 PWM=$P3
mr_tiny_model
mr_tiny_config one ""
mr_start_worker --metrics-port "$PWM"
mr_start_coordinator --metrics-port "$PM"
mr_wait_serving
RC="$PY tests/clients/rerank_client.py"
printf 'a fox is a small mammal\nparis is in france\n' >"$work/docs.txt"
$RC rerank 127.0.0.1:$PC --query "what is a fox" --docs "$work/docs.txt" --timeout 60 \
  >"$work/rerank.json" || fail "rerank: $(cat "$work/rerank.json")"

# Ranker Info carries the workers' dtype (the checkpoint is f32) and the build's version
$RC info 127.0.0.1:$PC >"$work/info.json" || fail "Info: $(cat "$work/info.json")"
ver=$("$MRANK" --version | awk '{print $2}')
$PY - "$work/info.json" "$ver" <<'PYEOF' || fail "Info: $(cat "$work/info.json")"
import json, sys
info = json.load(open(sys.argv[1]))
assert info["dtype"] == "f32", info["dtype"]
assert info["version"] == "mrank-coordinator " + sys.argv[2], info["version"]
PYEOF
echo "ok: Ranker Info reports dtype f32 and version $ver"

check() {   # NAME URL COMPONENT
  curl -sf --max-time 10 "$2" >"$work/$1.txt" || fail "$1: no /metrics at $2"
  promtool check metrics <"$work/$1.txt" >"$work/$1.promtool" 2>&1 ||
    fail "$1: promtool check metrics: $(cat "$work/$1.promtool")"
  $PY - "$work/$1.txt" "$3" <<'PYEOF' || fail "$1: build/process metrics"
import re, sys, time
text, component = open(sys.argv[1]).read(), sys.argv[2]
def value(name):
    m = re.search(r"^" + name + r" (\S+)$", text, re.M)
    assert m, f"no {name}"
    return float(m.group(1))
m = re.search(r'^mrank_build_info\{version="(\d+\.\d+\.\d+)",revision="([^"]+)",component="([^"]+)"\} 1$',
              text, re.M)
assert m, "no mrank_build_info"
assert m.group(3) == component, f"component {m.group(3)} != {component}"
assert value("process_resident_memory_bytes") > 0
assert value("process_open_fds") > 0
assert value("process_cpu_seconds_total") >= 0
start = value("process_start_time_seconds")
# the process started before this scrape and (generously) within the last day
assert time.time() - 86400 < start <= time.time() + 1, f"start time {start}"
PYEOF
  echo "ok: $1 metrics pass promtool; build_info and process metrics present"
}
check worker "http://127.0.0.1:$PWM/metrics" worker
check coordinator "http://127.0.0.1:$PM/metrics" coordinator
grep -q '^mrank_coord_requests_total{tier="exact",outcome="ok"} 1$' "$work/coordinator.txt" ||
  fail "the Rerank call is not counted under its tier: $(grep requests_total "$work/coordinator.txt")"
echo "PASS"
