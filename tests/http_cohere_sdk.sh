#!/usr/bin/env bash
# http_cohere_sdk.sh: one real client nobody here wrote: the npm `cohere-ai` SDK (installed by
# scripts/setup.sh into the git-ignored third_party/cohere), unchanged, with its base URL
# option pointed at the coordinator's HTTP front end of a local `mrank up` cluster: its v2 and
# v1 rerank calls must succeed (tests/clients/cohere_sdk.cjs checks the results). Usage:
# bash tests/http_cohere_sdk.sh path/to/mrank (from the repo root). Skips (77) only when the
# SDK is absent and `npm install` cannot fetch it.
set -euo pipefail
MRANK=$(readlink -f "$1")
cd "$(dirname "$0")/.."
SDK=third_party/cohere
if [ ! -f "$SDK/node_modules/cohere-ai/package.json" ]; then
  npm install --silent --no-audit --no-fund --prefix "$SDK" cohere-ai@8.1.0 >/dev/null 2>&1 || {
    echo "SKIP: npm could not install cohere-ai (no registry?)"; exit 77; }
fi
. tests/clients/http_cluster.bash
# the SDK sends "Authorization: Bearer <token>" and parses the answer with its own types
node tests/clients/cohere_sdk.cjs "$PWD/$SDK/node_modules" "$H" "$KEY_ALL" >"$work/sdk.out" ||
  fail "the cohere-ai SDK's rerank calls failed"
cat "$work/sdk.out"
grep -q '"call":"v2.rerank"' "$work/sdk.out" && grep -q '"call":"v1.rerank"' "$work/sdk.out" ||
  fail "missing SDK results"
# a wrong key is refused the way the SDK reports it (UnauthorizedError from a 401)
if node tests/clients/cohere_sdk.cjs "$PWD/$SDK/node_modules" "$H" wrong-key 2>"$work/sdk.err"; then
  fail "a wrong API key was accepted"
fi
grep -q "Unauthorized\|401" "$work/sdk.err" || fail "no 401 for a wrong key: $(head -3 "$work/sdk.err")"
echo "PASS: cohere-ai SDK (v2 and v1 rerank) against mrank's HTTP front end"
