#!/usr/bin/env bash
# deploy/ is consistent: the Kubernetes manifests parse, `mrank coordinator --check` accepts
# their cluster.json, and names, ports, adapters and paths agree between cluster.json, the
# worker and coordinator Deployments, the Services and the Dockerfile (whose "# runtime:" comment
# lists the packages its apt line installs). Two checks are their own tests, so that where they
# cannot run they show Skipped: the `kubectl kustomize` rendering (tests/deploy_kustomize.sh)
# and the runtime packages against the libraries a Release `mrank` links
# (tests/deploy_image_libs.sh).
# Usage: deploy_check.sh MRANK
set -euo pipefail
cd "$(dirname "$0")/.."
M=$1
"$M" coordinator --config deploy/k8s/cluster.json --check
/usr/bin/python3 - <<'PY'
import json, re, sys
import yaml

fail = []
def check(ok, what):
    if not ok:
        fail.append(what)

docs = {}
for f in ["namespace", "workers", "coordinator", "hpa"]:
    for d in yaml.safe_load_all(open("deploy/k8s/%s.yaml" % f)):
        docs[(d["kind"], d["metadata"]["name"])] = d
cfg = json.load(open("deploy/k8s/cluster.json"))
kust = yaml.safe_load(open("deploy/k8s/kustomization.yaml"))
ns = kust["namespace"]
check(("Namespace", ns) in docs, "namespace %s is not created" % ns)
dockerfile = open("deploy/Dockerfile").read()
copies = dict((dst, src) for src, dst in re.findall(r"^COPY (?!--)(\S+) (\S+)$", dockerfile, re.M))

def image_path_exists(p):  # a path inside the image, served from a COPY of the repo
    for dst, src in copies.items():
        if p == dst or p.startswith(dst.rstrip("/") + "/"):
            import os
            return os.path.exists(src + p[len(dst.rstrip("/")):])
    return False

def container(kind_name):
    d = docs[kind_name]
    return d["spec"]["template"]["spec"]["containers"][0], d

def arg(args, flag):
    return [args[i + 1] for i, a in enumerate(args) if a == flag]

for pool in cfg["pools"]:
    m = re.fullmatch(r"dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", pool.get("dns", ""))
    check(m is not None, "pool %s: dns target %r" % (pool["name"], pool.get("dns")))
    if not m:
        continue
    svc_name, svc_ns, port = m.group(1), m.group(2), int(m.group(3))
    check(svc_ns == ns, "pool %s: namespace %s, manifests use %s" % (pool["name"], svc_ns, ns))
    svc = docs.get(("Service", svc_name))
    check(svc is not None, "pool %s: no Service %s" % (pool["name"], svc_name))
    if not svc:
        continue
    check(svc["spec"].get("clusterIP") == "None", "Service %s is not headless" % svc_name)
    check(port in [p["port"] for p in svc["spec"]["ports"]], "Service %s lacks port %d" % (svc_name, port))
    dep = docs.get(("Deployment", svc_name))
    check(dep is not None, "pool %s: no Deployment %s" % (pool["name"], svc_name))
    if not dep:
        continue
    c, _ = container(("Deployment", svc_name))
    check(dep["spec"]["template"]["metadata"]["labels"].items() >= svc["spec"]["selector"].items(),
          "Service %s does not select Deployment %s" % (svc_name, svc_name))
    a = [str(x) for x in c["args"]]
    check(a[0] == "worker", "%s: not a worker" % svc_name)
    check(arg(a, "--listen") == ["0.0.0.0:%d" % port], "%s: --listen %s, dns port %d" % (svc_name, arg(a, "--listen"), port))
    check(c["readinessProbe"]["grpc"]["port"] == port, "%s: readiness probe port" % svc_name)
    model = arg(a, "--model")
    check(model == [cfg["model"]], "%s: --model %s, cluster.json model %s" % (svc_name, model, cfg["model"]))
    check(all(image_path_exists(p) for p in model), "%s: model %s is not in the image" % (svc_name, model))
    ads = dict(x.split("=", 1) for x in arg(a, "--adapter"))
    check(set(ads) == set(pool.get("adapters", {})), "%s: adapters %s, pool declares %s" % (svc_name, sorted(ads), sorted(pool.get("adapters", {}))))
    for name, p in ads.items():
        check(image_path_exists(p + "/adapter_config.json"), "%s: adapter %s=%s is not in the image" % (svc_name, name, p))
    mx = arg(a, "--max-len")
    check(mx and int(mx[0]) >= cfg["limits"]["max_tokens_per_pair"], "%s: --max-len %s below max_tokens_per_pair" % (svc_name, mx))
    hpa = docs.get(("HorizontalPodAutoscaler", svc_name))
    check(hpa is not None and hpa["spec"]["scaleTargetRef"]["name"] == svc_name, "no HPA for %s" % svc_name)

c, dep = container(("Deployment", "mrank-coordinator"))
a = [str(x) for x in c["args"]]
conf = arg(a, "--config")
mounts = {v["mountPath"]: v["name"] for v in c["volumeMounts"]}
vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
ok = conf and conf[0].rsplit("/", 1)[0] in mounts and conf[0].rsplit("/", 1)[1] == "cluster.json"
check(ok, "coordinator: --config %s is not the mounted cluster.json" % conf)
if ok:
    v = vols[mounts[conf[0].rsplit("/", 1)[0]]]
    gen = [g["name"] for g in kust["configMapGenerator"] if "cluster.json" in g["files"]]
    check(v.get("configMap", {}).get("name") in gen, "coordinator: volume is not the cluster.json ConfigMap")
listen_port = int(cfg["coordinator"]["listen"].rsplit(":", 1)[1])
svc = docs[("Service", "mrank")]
check(listen_port in [p["port"] for p in svc["spec"]["ports"]], "Service mrank lacks the coordinator port %d" % listen_port)
check(c["readinessProbe"]["grpc"]["port"] == listen_port, "coordinator readiness probe port")

m = re.search(r"^# runtime: (.*)$", dockerfile, re.M)
listed = set(m.group(1).split()) if m else set()
check(listed, "Dockerfile: no '# runtime:' comment")
runtime = dockerfile.split("FROM debian:bookworm-slim", 1)[1].replace("\\\n", " ")
a = re.search(r"apt-get install([^&\n]*)", runtime)   # continuation lines joined above
apt = set(w for w in a.group(1).split() if not w.startswith("-")) if a else set()
check(apt == listed, "Dockerfile: runtime packages only in the comment %s, only on the apt line %s"
      % (sorted(listed - apt), sorted(apt - listed)))
for f in fail:
    print("FAIL:", f)
print("deploy_check: %d objects, %d pools, %d problems" % (len(docs), len(cfg["pools"]), len(fail)))
sys.exit(1 if fail else 0)
PY
