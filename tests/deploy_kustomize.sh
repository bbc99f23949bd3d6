#!/usr/bin/env bash
# deploy_kustomize.sh: `kubectl kustomize` renders deploy/k8s/base and the overlays cpu, gpu and
# secure (TLS, mTLS and API keys from Secrets: tests/deploy_k8s.py check_secure)
# (19 objects each: namespace, service account, checkpoint PVC, two worker pools and the
# coordinator with their Services, HPAs and PDBs, four NetworkPolicies, the cluster.json
# ConfigMap), and each rendering passes tests/deploy_k8s.py (restricted Pod Security, shutdown,
# autoscaling, network policies, agreement with cluster.json: see there). The gpu overlay's
# workers run --backend cuda with a GPU and the CUDA image; the cpu overlay's do not. kubectl is
# not a Debian package that scripts/setup.sh installs, so without it this prints why and exits
# 77 (ctest: Skipped); tests/deploy_check.sh runs the same checks on the base as written.
# Usage: deploy_kustomize.sh MRANK  (MRANK unused; every script test gets it)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v kubectl >/dev/null; then
  echo "SKIP: kubectl is not installed: the kustomize rendering DID NOT RUN"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for v in base overlays/cpu overlays/gpu overlays/secure; do
  kubectl kustomize "deploy/k8s/$v" > "$tmp/$(basename "$v").yaml"
done
/usr/bin/python3 - "$tmp" <<'PY'
import json, sys
sys.path.insert(0, "tests")
import deploy_k8s

cfg = json.load(open("deploy/k8s/base/cluster.json"))
fail = []
sec_cfg = json.load(open("deploy/k8s/overlays/secure/cluster.json"))
for v in ["base", "cpu", "gpu", "secure"]:
    objs = deploy_k8s.load_files([sys.argv[1] + "/%s.yaml" % v])
    cms = [d["metadata"]["name"] for d in objs if d["kind"] == "ConfigMap"]
    probs = deploy_k8s.check(objs, sec_cfg if v == "secure" else cfg, ".", cms)
    if v == "secure":
        probs += deploy_k8s.check_secure(objs, cfg, sec_cfg)
    if len(objs) != 19:
        probs.append("rendered %d objects, expected 19" % len(objs))
    for d in objs:
        if d["kind"] != "Deployment" or d["metadata"]["labels"].get("role") != "worker":
            continue
        c = d["spec"]["template"]["spec"]["containers"][0]
        cuda = [str(a) for a in c["args"]][-2:] == ["--backend", "cuda"]
        gpu = "nvidia.com/gpu" in c["resources"].get("limits", {})
        want = v == "gpu"   # secure builds on cpu
        if cuda != want or gpu != want or c["image"].endswith("-cuda") != want:
            probs.append("%s: --backend cuda %s, GPU limit %s, image %s" % (d["metadata"]["name"], cuda, gpu, c["image"]))
    for p in probs:
        fail.append("%s: %s" % (v, p))
    print("kubectl kustomize %s: %d objects, %d problems" % (v, len(objs), len(probs)))
for f in fail:
    print("FAIL:", f)
sys.exit(1 if fail else 0)
PY
