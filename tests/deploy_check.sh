#!/usr/bin/env bash
# deploy/ is consistent, read without kubectl: `mrank coordinator --check` accepts the
# Kubernetes cluster.json, and the objects of deploy/k8s/base as written (the files its
# kustomization lists, with its namespace and pinned image applied as kustomize would) pass
# tests/deploy_k8s.py: restricted Pod Security on every pod, drain-matched shutdown, PDBs,
# topology spread, NetworkPolicies, HPAs on mrank's own metrics through the Prometheus Adapter
# rules, and names, ports, adapters and paths that agree with cluster.json. The Dockerfile's
# "# runtime:" comment lists the packages its apt line installs; it builds without
# -march=native and runs from /opt/mrank. Where kubectl is installed,
# tests/deploy_kustomize.sh runs the same checks on the rendered base and overlays and
# tests/deploy_schema.sh validates them against the API schemas; tests/deploy_image_libs.sh
# checks the runtime packages against the libraries a Release `mrank` links.
# Usage: deploy_check.sh MRANK
set -euo pipefail
cd "$(dirname "$0")/.."
M=$1
"$M" coordinator --config deploy/k8s/base/cluster.json --check
/usr/bin/python3 - <<'PY'
import json, re, sys
import yaml
sys.path.insert(0, "tests")
import deploy_k8s

base = "deploy/k8s/base"
kust = yaml.safe_load(open(base + "/kustomization.yaml"))
objs = deploy_k8s.load_files([base + "/" + r for r in kust["resources"]])
images = {i["name"]: i for i in kust.get("images", [])}
for d in objs:   # what kustomize's namespace and images transformers do
    if d["kind"] != "Namespace":
        d["metadata"]["namespace"] = kust["namespace"]
    for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
        i = images.get(c["image"])
        if i:
            c["image"] = "%s:%s" % (i.get("newName", c["image"]), i["newTag"])
cfg = json.load(open(base + "/cluster.json"))
gen = [g["name"] for g in kust["configMapGenerator"] if "cluster.json" in g["files"]]
fail = deploy_k8s.check(objs, cfg, ".", gen)

dockerfile = open("deploy/Dockerfile").read()
m = re.search(r"^# runtime: (.*)$", dockerfile, re.M)
listed = set(m.group(1).split()) if m else set()
if not listed:
    fail.append("Dockerfile: no '# runtime:' comment")
runtime = dockerfile.split("FROM debian:bookworm-slim", 1)[1].replace("\\\n", " ")
a = re.search(r"apt-get install([^&\n]*)", runtime)   # continuation lines joined above
apt = set(w for w in a.group(1).split() if not w.startswith("-")) if a else set()
if apt != listed:
    fail.append("Dockerfile: runtime packages only in the comment %s, only on the apt line %s"
                % (sorted(listed - apt), sorted(apt - listed)))
# the image runs on other nodes than its build host, from the folder its configs are relative to
build = dockerfile.split("FROM debian:bookworm-slim", 1)[0].replace("\\\n", " ")
if "-DMR_NATIVE=OFF" not in build:
    fail.append("Dockerfile: the build does not set -DMR_NATIVE=OFF (-march=native of the build host)")
if not re.search(r"^WORKDIR /opt/mrank$", runtime, re.M):
    fail.append("Dockerfile: the runtime stage has no WORKDIR /opt/mrank (relative lexicon paths)")
for f in fail:
    print("FAIL:", f)
print("deploy_check: %d objects, %d pools, %d problems" % (len(objs), len(cfg["pools"]), len(fail)))
sys.exit(1 if fail else 0)
PY
