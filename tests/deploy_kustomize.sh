#!/usr/bin/env bash
# deploy_kustomize.sh: `kubectl kustomize deploy/k8s` renders the Kubernetes set, all 10 objects
# (namespace, worker Deployments, Services and HPAs, the coordinator, its ConfigMap). kubectl is
# not a Debian package that scripts/setup.sh installs, so without it this prints why and exits
# 77 (ctest: Skipped); tests/deploy_check.sh checks the same manifests' contents without it.
# Usage: deploy_kustomize.sh MRANK  (MRANK unused; every script test gets it)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v kubectl >/dev/null; then
  echo "SKIP: kubectl is not installed: the kustomize rendering DID NOT RUN"
  exit 77
fi
out=$(kubectl kustomize deploy/k8s)
n=$(grep -c '^kind:' <<<"$out" || true)
[ "$n" = 10 ] || { echo "FAIL: kubectl kustomize rendered $n objects, expected 10"; exit 1; }
echo "kubectl kustomize: $n objects"
