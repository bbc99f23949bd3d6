#!/usr/bin/env bash
# deploy/ is consistent: the Kubernetes manifests parse, `mrank coordinator --check` accepts
# their cluster.json, and names, ports, adapters and paths agree between cluster.json, the
# worker and coordinator Deployments, the Services and the Dockerfile. The Dockerfile's runtime
# packages cover every library a Release `mrank` links directly (readelf NEEDED -> dpkg -S),
# except CUDA (the image is built with -DMR_CUDA=OFF). `kubectl kustomize` renders
# the set where kubectl is installed (the test says when it did not run that step).
# Usage: deploy_check.sh MRANK
set -euo pipefail
cd "$(dirname "$0")/.."
M=$1
"$M" coordinator --config deploy/k8s/cluster.json --check
if command -v kubectl >/dev/null; then
  n=$(kubectl kustomize deploy/k8s | grep -c '^kind:')
  [ "$n" = 10 ] || { echo "kubectl kustomize rendered $n objects, expected 10"; exit 1; }
  echo "kubectl kustomize: $n objects"
else
  echo "NOTE: kubectl not installed: the kustomize rendering step DID NOT RUN"
fi
# The image holds a Release build; a sanitizer build links more (and its runtimes): there the
# library step is left to the main build's run. CUDA libraries are not in the CPU image.
needed=$(readelf -d "$M" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
if grep -q 'san\.so' <<<"$needed"; then
  echo "NOTE: $M is a sanitizer build: the image-library step DID NOT RUN (the Release build's run does it)"
  needed=""
fi
needed=$(grep -v '^libcu' <<<"$needed" || true)
pkgs=""
for lib in $needed; do
  f=$(ldconfig -p | awk -v l="$lib" '!f && $1 == l && /x86-64/ {print $NF; f = 1}')
  [ -n "$f" ] || { echo "cannot locate $lib"; exit 1; }
  r=$(readlink -f "$f")
  owner=""  # usrmerge: dpkg may know the file under /lib or /usr/lib
  for cand in "$f" "$r" "${r#/usr}" "/usr$r"; do
    owner=$(dpkg -S "$cand" 2>/dev/null | head -1 | cut -d: -f1) && [ -n "$owner" ] && break
  done
  [ -n "$owner" ] || { echo "no Debian package owns $lib ($r)"; exit 1; }
  pkgs="$pkgs $owner"
done
/usr/bin/python3 - "$pkgs" <<'PY'
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
runtime = dockerfile.split("FROM debian:bookworm-slim", 1)[1]
check(all(re.search(r"\b%s\b" % re.escape(p), runtime) for p in listed), "Dockerfile: the runtime comment and apt line differ")
base = {"libc6", "libgcc-s1", "libstdc++6"}
for p in sorted(set(sys.argv[1].split()) - base):
    check(p in listed, "Dockerfile runtime stage lacks %s (mrank links a library of it)" % p)
for f in fail:
    print("FAIL:", f)
print("deploy_check: %d objects, %d pools, %d problems" % (len(docs), len(cfg["pools"]), len(fail)))
sys.exit(1 if fail else 0)
PY
