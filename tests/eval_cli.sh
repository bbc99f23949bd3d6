#!/usr/bin/env bash
# eval_cli.sh MRANK: `mrank eval` and `mrank lexicon score` on a tiny collection with a seeded
# 2-layer model (seconds): a query whose run lines are apart is one query (one rank 1 each, the
# same lexical scores as with its lines together); candidates are ordered by the run's score,
# not its rank column; a document repeated in the run and a pair judged twice in the qrels are
# refused naming file:line; 4-column TREC qrels are read as such; write errors on --out and
# --tsv fail the command; --max-len is bounded (a bound, then the model's positions); a model
# score that is not finite is refused; --heldout rows are whole or refused. The loaders'
# cases in detail: tests/test_eval.c.
set -euo pipefail
mrank=$(realpath "$1")
root=$(cd "$(dirname "$0")/.." && pwd)
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
cd "$t"
export OMP_NUM_THREADS=1
fail() { echo "FAIL: $*" >&2; exit 1; }
# refused CMD... : runs CMD, which must fail; prints its stderr
refused() { if "$@" > out.txt 2> err.txt; then fail "accepted: $*"; fi; cat err.txt; }
expect() { case $1 in *"$2"*) ;; *) fail "expected '$2' in: $1" ;; esac; }

"$mrank" init-checkpoint --arch mistral --layers 2 --hidden 16 --heads 2 --kv-heads 1 \
    --intermediate 32 --vocab-from "$root/third_party/tokenizers/llama2/tokenizer.json" \
    --start-layer 1 --dtype f32 --seed 3 --out m > /dev/null
mkdir -p c/qrels
printf '{"_id": "d1", "title": "wing", "text": "the wing gives lift"}\n   \n{"_id": "d2", "text": "dogs bark at night"}\n\t\n{"_id": "d3", "text": "lift of a dog"}\n' > c/corpus.jsonl
printf '{"_id": "q1", "text": "wing lift"}\n{"_id": "q2", "text": "dogs"}\n' > c/queries.jsonl
printf 'query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n' > c/qrels/test.tsv
# q1's lines apart, and its rank column against its scores: d1 (9.0) is its first candidate
printf 'q1 Q0 d3 1 7.0 bm25\nq2 Q0 d2 1 9.0 bm25\nq1 Q0 d1 2 9.0 bm25\nq2 Q0 d3 2 8.0 bm25\n' \
    > c/bm25_top100.run
ev=$("$mrank" eval --model m --collection c --out ev.run --quiet)
expect "$ev" "2 judged queries, 4 pairs"
echo "$ev" | awk '$1 == "bm25" { ok = $2 == "1.0000" && $3 == "1.0000" } END { exit !ok }' ||
    fail "bm25 order is not the score order: $ev"
[ "$(awk '$4 == 1' ev.run | wc -l)" = 2 ] && [ "$(cut -d' ' -f1 ev.run | uniq | wc -l)" = 2 ] ||
    fail "one query, one rank 1, lines together: $(cat ev.run)"

# lexicon score: the same scores as with the query's lines together (statistics per query)
printf 'q1 Q0 d1 2 9.0 bm25\nq1 Q0 d3 1 7.0 bm25\nq2 Q0 d2 1 9.0 bm25\nq2 Q0 d3 2 8.0 bm25\n' > together.run
"$mrank" lexicon score --collection c --stem none --out lexA.run
"$mrank" lexicon score --collection c --stem none --candidates together.run --out lexB.run
cmp lexA.run lexB.run || fail "lexicon score: lines apart score differently"
[ "$(awk '$4 == 1' lexA.run | wc -l)" = 2 ] || fail "lexicon score: rank 1 lines: $(cat lexA.run)"

# the loaders' refusals reach the command, naming file:line
cp -r c cd
printf 'q1 Q0 d1 1 9.0 bm25\nq1 Q0 d1 2 8.0 bm25\n' > cd/bm25_top100.run
expect "$(refused "$mrank" eval --model m --collection cd --out x.run --quiet)" \
    "cd/bm25_top100.run:2: document d1 repeated for query q1 (first at line 1)"
cp c/bm25_top100.run cd/
printf 'query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t1\n' > cd/qrels/test.tsv
expect "$(refused "$mrank" eval --model m --collection cd --out x.run --quiet)" \
    "cd/qrels/test.tsv:3: query q1, document d1 judged again (first at line 2)"
printf '{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n' > cd/corpus.jsonl
expect "$(refused "$mrank" lexicon score --collection cd --out x.run)" \
    "cd/corpus.jsonl:2: _id d1 repeated (first at line 1)"
# TREC qrels (qid iteration docid grade): d1 is q1's relevant document, as in c
cp c/corpus.jsonl cd/
printf 'q1 0 d1 1\nq2 0 d2 1\nq2 0 d3 0\n' > cd/qrels/test.tsv
ev=$("$mrank" eval --model m --collection cd --out x.run --quiet)
echo "$ev" | awk '$1 == "bm25" { ok = $2 == "1.0000" } END { exit !ok }' ||
    fail "4-column qrels: $ev"

# write errors (/dev/full: every write fails with ENOSPC)
[ -w /dev/full ] || fail "no /dev/full"
expect "$(refused "$mrank" eval --model m --collection c --out /dev/full --quiet)" \
    "/dev/full: write"
expect "$(refused "$mrank" eval --model m --collection c --grid --grid-ratios 1 --out g.run \
          --tsv /dev/full --quiet)" "/dev/full: write"
expect "$(refused "$mrank" eval --model m --collection c --grid --grid-ratios 1 --out /dev/full \
          --quiet)" "/dev/full: write"

# --max-len: (1431655755 + the prompt) times the candidates overflowed an int; the tiny
# model has 4096 positions
expect "$(refused "$mrank" eval --model m --collection c --max-len 1431655755 --quiet)" \
    "--max-len must be in [8, 1048576]"
expect "$(refused "$mrank" eval --model m --collection c --max-len 4096 --quiet)" \
    "exceed the model's max_position_embeddings 4096"

# --heldout: rows are read whole or refused naming path:line and field; a file without a row
# is refused (its CE was printed as nan); --heldout-group is bounded (it was capped at 64
# silently)
printf '{"query": "wing", "pos": ["the wing gives lift"], "neg": ["dogs bark", "night"]}\n\n' > h.jsonl
ev=$("$mrank" eval --model m --collection c --grid --grid-ratios 1 --out g.run --heldout h.jsonl \
     --quiet)
echo "$ev" | awk '$1 == "model" && $10 + 0 > 0 { ok = 1 } $1 == "model" && $10 == "nan" { ok = 0 }
                  END { exit !ok }' || fail "--heldout: no finite CE: $ev"
printf '{"query": "wing", "pos": ["a"], "neg": ["b"]}\n{"query": "wing", "pos": [1], "neg": ["b"]}\n' > hb.jsonl
expect "$(refused "$mrank" eval --model m --collection c --grid --grid-ratios 1 --out g.run \
          --heldout hb.jsonl --quiet)" "hb.jsonl:2: \"pos\" is not an array whose first item"
printf '{"query": "wing", "pos": ["a"], "neg": ["b"]} x\n' > hb.jsonl
expect "$(refused "$mrank" eval --model m --collection c --grid --grid-ratios 1 --out g.run \
          --heldout hb.jsonl --quiet)" "hb.jsonl:1: not one JSON object"
printf '\n' > hb.jsonl
expect "$(refused "$mrank" eval --model m --collection c --grid --grid-ratios 1 --out g.run \
          --heldout hb.jsonl --quiet)" "hb.jsonl: no held-out row"
expect "$(refused "$mrank" eval --model m --collection c --grid --grid-ratios 1 --out g.run \
          --heldout h.jsonl --heldout-group 65 --quiet)" "--heldout-group must be in [2, 64]"

# a model whose deepest exit scores NaN: the engine refuses the pass (common/forward.c), before
# eval's own check of the scores it gets
cp -r m mnan
/usr/bin/python3 - mnan/model.safetensors <<'PY'
import json, struct, sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
n = struct.unpack("<Q", b[:8])[0]
v = json.loads(b[8:8 + n])["lm_head.1.linear_head.weight"]
s, e = (8 + n + o for o in v["data_offsets"])
b[s:e] = struct.pack("<f", float("nan")) * ((e - s) // 4)
open(p, "wb").write(b)
PY
expect "$(refused "$mrank" eval --model mnan --collection c --out x.run --quiet)" \
    "row 0: its score at exit 2 is not finite"
expect "$(refused "$mrank" eval --model mnan --collection c --grid --grid-ratios 1 --out x.run \
          --quiet)" "its score at exit 2 is not finite"
echo "eval_cli: ok"
