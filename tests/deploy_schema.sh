#!/usr/bin/env bash
# deploy_schema.sh: every object `kubectl kustomize` renders for deploy/k8s/base and the
# overlays cpu and gpu is valid against the Kubernetes API schemas (npm kubernetes-models, which
# scripts/setup.sh installs into third_party/k8s-schema, or $MR_K8S_SCHEMA_DIR;
# tests/deploy_schema.mjs). Without
# kubectl (not a Debian package setup.sh installs) or the npm package (no registry when setup.sh
# ran) this prints why and exits 77 (ctest: Skipped).
# Usage: deploy_schema.sh MRANK  (MRANK unused; every script test gets it)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${MR_K8S_SCHEMA_DIR:-third_party/k8s-schema}   # the folder holding node_modules/
if ! command -v kubectl >/dev/null; then
  echo "SKIP: kubectl is not installed: the schema validation DID NOT RUN"
  exit 77
fi
if ! command -v node >/dev/null || [ ! -f "$dir/node_modules/kubernetes-models/package.json" ]; then
  echo "SKIP: node or $dir/node_modules/kubernetes-models missing (scripts/setup.sh installs it): the schema validation DID NOT RUN"
  exit 77
fi
for v in base overlays/cpu overlays/gpu overlays/secure; do
  echo "== $v"
  kubectl kustomize "deploy/k8s/$v" |
    /usr/bin/python3 -c 'import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))' |
    node tests/deploy_schema.mjs "$dir"
done
