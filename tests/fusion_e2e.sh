#!/usr/bin/env bash
# fusion_e2e.sh: the lexical stage and score fusion through a real coordinator. Usage: bash
# tests/fusion_e2e.sh path/to/mrank (from the repo root). deploy/local.json (its default
# profile: bm25 -> half-r2 -> full with weighted fusion) on free loopback ports with the bundled
# models/mrank-tiny, plus single-stage profiles to read each stage's raw scores:
#  0. a lexical stage configured with another stemming than its lexicon's is refused at start;
#  1. the README's request (scripts/run.sh's documents in its order): both Paris sentences rank
#     above "Berlin is the capital of Germany.", and relevance_score is non-increasing down the
#     response;
#  2. on a sample of MEDLINE queries (40 BM25 candidates each, in the run's order): the
#     coordinator's lexical stage equals `mrank lexicon score` with the stage's lexicon (the code
#     bench/fusion/ evaluates with), and the default profile's ranking and fused scores equal
#     bench/fusion/fusion_eval.py's offline replay of the per-stage scores and the request order
#     (input_order): the weights chosen offline mean what the cluster serves.
# Only loopback; every wait is bounded (a long gRPC deadline: the sanitizer build scores
# slowly, and admission refuses what the deadline cannot fit); everything started is killed.
set -euo pipefail
MRANK=$(readlink -f "$1")
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
IR=${MR_SHARED_DIR:-../shared}/data/ir
[ -d "$IR/medline" ] || { echo "SKIP: no $IR/medline"; exit 77; }
work=$(mktemp -d /tmp/mr_fus_XXXXXX)
uppid=
cleanup() {
  if [ -n "$uppid" ]; then kill -TERM "$uppid" 2>/dev/null || true; wait "$uppid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; tail -n 20 "$work/up.log" "$work/rr.err" >&2 || true; exit 1; }

read -r PC PW1 PW2 < <($PY -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
$PY - "$work/up.json" "$PC" "$PW1" "$PW2" <<'PYEOF'
import json, sys
out, pc, pw1, pw2 = sys.argv[1:]
c = json.load(open("deploy/local.json"))
c["coordinator"] = {"listen": "127.0.0.1:" + pc, "metrics_port": 0}
for pool, port in zip(c["pools"], (pw1, pw2)):
    pool["addresses"] = ["127.0.0.1:" + port]
    pool.pop("metrics_port_base", None)
c["profiles"].append({"name": "lexical-only", "stages": [{"stage": "bm25"}]})
# no deadline: answers depend on the workers only, not on the speed of a shared machine
c["tiers"].append({"name": "exact", "budget_ms": 0, "priority": 1, "profile": "cascade"})
json.dump(c, open(out, "w"))
PYEOF
echo "== 0. a stage whose stemming is not its lexicon's is refused at start, naming both"
$PY - "$work/up.json" "$work/bad.json" <<'PYEOF'
import json, sys
c = json.load(open(sys.argv[1]))
next(s for s in c["stages"] if s["name"] == "bm25")["stem"] = "none"
json.dump(c, open(sys.argv[2], "w"))
PYEOF
if timeout 60 "$MRANK" coordinator --config "$work/bad.json" > "$work/bad.log" 2>&1; then
  fail "a coordinator with stem none on a stemmed lexicon started"
fi
grep -q "stem 'none', but the terms of lexicon .* are stemmed 'english'" "$work/bad.log" ||
  { cat "$work/bad.log" >&2; fail "no clear error for the stemming mismatch"; }
"$MRANK" up --config "$work/up.json" --threads 1 > "$work/up.log" 2>&1 &
uppid=$!
for _ in $(seq 1 240); do
  grep -q '^coordinator: ' "$work/up.log" && break
  kill -0 $uppid 2>/dev/null || fail "mrank up exited"
  sleep 0.5
done
grep -q '^coordinator: ' "$work/up.log" || fail "cluster did not come up"
ADDR=127.0.0.1:$PC
rr() { "$MRANK" rerank --addr "$ADDR" --tier exact --timeout-ms 300000 --json "$@" 2>>"$work/rr.err"; }

echo "== 1. the README's request"
# scripts/run.sh's documents, in its (a retriever's) order
printf '%s\n' "Paris is the capital and most populous city of France." \
  "France is a country in Western Europe; its capital is Paris." \
  "Berlin is the capital of Germany." \
  "The population of China is over 1.4 billion people." > "$work/docs.txt"
rr --query "what is the capital of France?" --docs "$work/docs.txt" > "$work/readme.json" ||
  fail "rerank"
$PY - "$work/readme.json" <<'PYEOF' || fail "README request"
import json, sys
r = json.load(open(sys.argv[1]))
order = [x["index"] for x in r["results"]]
rel = [x["relevance_score"] for x in r["results"]]
print("  order", order, "relevance", [round(v, 4) for v in rel])
assert r["profile"] == "cascade" and [s["name"] for s in r["stages"]] == ["bm25", "half-r2", "full"]
assert set(order[:2]) == {0, 1}, order
assert all(a >= b for a, b in zip(rel, rel[1:])), rel
PYEOF

echo "== 2. coordinator == offline replay on MEDLINE queries"
$PY - "$IR/medline" "$work" <<'PYEOF'
import json, os, sys
coll, w = sys.argv[1:]
docs = {d["_id"]: d for d in map(json.loads, open(os.path.join(coll, "corpus.jsonl")))}
queries = {q["_id"]: q for q in map(json.loads, open(os.path.join(coll, "queries.jsonl")))}
run = {}
for line in open(os.path.join(coll, "bm25_top100.run")):
    q, _, d, *_ = line.split()
    run.setdefault(q, []).append(d)
mini = os.path.join(w, "mini")
os.makedirs(mini)
def flat(s): return " ".join(s.split())   # one line per document for mrank rerank --docs
with open(os.path.join(mini, "corpus.jsonl"), "w") as c, \
     open(os.path.join(mini, "queries.jsonl"), "w") as qf, \
     open(os.path.join(mini, "bm25_top100.run"), "w") as r:
    for k, q in enumerate(list(run)[:2]):
        qf.write(json.dumps({"_id": q, "text": queries[q]["text"]}) + "\n")
        with open(os.path.join(w, "q%d.docs" % k), "w") as f:
            for i, d in enumerate(run[q][:40]):
                t = flat(docs[d].get("title", "") + " " + docs[d]["text"])
                c.write(json.dumps({"_id": "%s-%d" % (q, i), "text": t}) + "\n")
                r.write("%s Q0 %s-%d %d 0 x\n" % (q, q, i, i + 1))
                f.write(t + "\n")
        open(os.path.join(w, "q%d.query" % k), "w").write(queries[q]["text"])
PYEOF
# the lexical stage's statistics as the config names them (none: the candidates')
lexicon=$($PY -c 'import json, sys
c = json.load(open(sys.argv[1]))
print(next(s for s in c["stages"] if s.get("kind") == "lexical").get("lexicon", ""))' "$work/up.json")
"$MRANK" lexicon score --collection "$work/mini" ${lexicon:+--lexicon "$lexicon"} \
  --out "$work/mini.lex.run" || fail "lexicon score"
for k in 0 1; do
  q=$(cat "$work/q$k.query")
  for p in cascade lexical-only cheap-only full-only; do
    rr --query "$q" --docs "$work/q$k.docs" --profile $p > "$work/q$k.$p.json" || fail "rerank $p"
  done
done
$PY - "$work" <<'PYEOF' || fail "coordinator vs offline replay"
import json, os, sys
sys.path.insert(0, "bench/fusion")
from fusion_eval import replay
w = sys.argv[1]
cfg = json.load(open(os.path.join(w, "up.json")))
prof = next(p for p in cfg["profiles"] if p["name"] == "cascade")
fus = prof["fusion"]
assert fus["method"] == "weighted" and fus.get("normalize", "minmax") == "minmax"
profile = [(s["stage"], s.get("keep_top_k", 0)) for s in prof["stages"]]
offline = {}
for line in open(os.path.join(w, "mini.lex.run")):
    q, _, d, _, s, _ = line.split()
    offline.setdefault(q, []).append(float(s))
qids = list(offline)
for k in range(2):
    raw = {}
    for p, st in (("lexical-only", "bm25"), ("cheap-only", "half-r2"), ("full-only", "full")):
        r = json.load(open(os.path.join(w, "q%d.%s.json" % (k, p))))
        raw[st] = {x["index"]: x["raw_score"] for x in r["results"]}
    n = len(raw["bm25"])
    # float32 on the wire vs %.9g in the run file: 1e-4 relative covers both roundings
    for i in range(n):
        a, b = raw["bm25"][i], offline[qids[k]][i]
        assert abs(a - b) <= 1e-4 * max(1, abs(b)), (k, i, a, b)
    got = json.load(open(os.path.join(w, "q%d.cascade.json" % k)))["results"]
    weights = dict(fus["weights"], input_order=fus.get("input_order", 0))
    want = replay(list(range(n)), raw, profile, weights)
    # the cascade's neural scores come from other batches than the single-stage profiles':
    # equal up to float32 noise (1e-3 after min-max scaling), so compare scores, not tie order
    # the fused group (the deepest stage's candidates) reports its fused score as
    # relevance_score (raw_score stays the head's logit); the others' replay scores are raw
    deepest = max(x["stage"] for x in got)
    for x, (i, s) in zip(got, want):
        v = x["relevance_score"] if x["stage"] == deepest else x["raw_score"]
        assert abs(v - s) <= 1e-3, (k, x, i, s)
    print("  query %d: %d candidates, lexical == mrank lexicon score, fused top-10 %s" %
          (k, n, [x["index"] for x in got[:10]]))
PYEOF
echo "fusion_e2e: OK"
