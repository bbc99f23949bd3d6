"""deploy_k8s.py: the checks of a Kubernetes object set for mrank, shared by
tests/deploy_check.sh (on deploy/k8s/base as written, without kubectl) and
tests/deploy_kustomize.sh (on what `kubectl kustomize` renders for the base and each overlay).

check(objs, cfg, kust_images, root) returns a list of problems (empty: all good):
* restricted Pod Security on every pod template: runAsNonRoot, seccompProfile RuntimeDefault,
  allowPrivilegeEscalation false, capabilities drop ALL (nothing added), no host namespaces or
  hostPath, only the volume types the restricted profile allows; plus readOnlyRootFilesystem,
  no service-account token, requests (cpu, memory) and a memory limit on every container;
* shutdown: a preStop sleep, and a grace period that covers it plus the process's drain
  (--drain-ms; the worker's default 10 s, the coordinator's 5 s) with time to spare;
* topology spread constraints that select the pod; a PodDisruptionBudget for every Deployment;
  no `replicas` on a Deployment an HPA scales; the image pinned to a version (not latest);
* HPAs scale on Pods metrics that the Prometheus Adapter rules expose and that the worker
  (worker/worker_metrics.c) or the coordinator (coordinator/coord_metrics.c) writes;
* NetworkPolicies: a default deny, the workers' gRPC port open only to the coordinator's pods;
* cluster.json agrees: every dns pool names a headless Service of the namespace on the workers'
  --listen and probe port that selects a Deployment of workers, whose --model is the config's
  model on a read-only PersistentVolumeClaim mount, laid out as the bundled model folder
  (adapters/...), adapters equal the pool's, --max-len covers max_tokens_per_pair, and an HPA
  scales it; the coordinator reads the mounted cluster.json ConfigMap, and its Service and probe
  use the config's listen port.
"""
import os
import re

import yaml

RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret", "image"}
DRAIN_DEFAULT_S = {"worker": 10.0, "coordinator": 5.0}   # cli/cmd_worker.c, cli/cmd_coordinator.c
METRIC_SOURCES = ["worker/worker_metrics.c", "coordinator/coord_metrics.c"]


def load_files(paths):
    objs = []
    for p in paths:
        with open(p) as f:
            objs += [d for d in yaml.safe_load_all(f) if d]
    return objs


def arg(args, flag):
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def probe_port(probe):
    """The port a readiness probe checks: a gRPC probe's, or an exec probe's `mrank health
    --addr localhost:PORT` (TLS ports, which the kubelet's gRPC probe cannot speak)."""
    if "grpc" in probe:
        return probe["grpc"]["port"]
    cmd = [str(x) for x in probe.get("exec", {}).get("command", [])]
    if cmd[:2] == ["mrank", "health"] and "--addr" in cmd:
        addr = cmd[cmd.index("--addr") + 1]
        if addr.startswith(("localhost:", "127.0.0.1:")):
            return int(addr.rsplit(":", 1)[1])
    return None


def selects(selector, labels):
    return bool(selector) and labels.items() >= selector.items()


def check(objs, cfg, root, configmap_names):
    fail = []

    def need(ok, what):
        if not ok:
            fail.append(what)

    by = {}
    for d in objs:
        by.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    deps = by.get("Deployment", {})
    hpas = by.get("HorizontalPodAutoscaler", {})
    pdbs = by.get("PodDisruptionBudget", {})
    svcs = by.get("Service", {})
    nss = by.get("Namespace", {})
    need(len(nss) == 1, "expected one Namespace, found %d" % len(nss))
    for ns in nss.values():
        need(ns["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce")
             == "restricted", "Namespace %s does not enforce restricted" % ns["metadata"]["name"])
    need(len(deps) >= 3, "expected the coordinator and two pools, found %d Deployments" % len(deps))

    # ---- every pod template ----
    scaled = {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()}
    for name, d in deps.items():
        t = d["spec"]["template"]
        labels = t["metadata"]["labels"]
        ps = t["spec"]
        psc = ps.get("securityContext", {})
        need(name not in scaled or "replicas" not in d["spec"],
             "%s: fixed replicas beside an HPA" % name)
        need(any(selects(p["spec"]["selector"].get("matchLabels"), labels) for p in pdbs.values()),
             "%s: no PodDisruptionBudget" % name)
        need(ps.get("automountServiceAccountToken") is False,
             "%s: the service-account token is mounted" % name)
        for k in ("hostNetwork", "hostPID", "hostIPC"):
            need(not ps.get(k), "%s: %s" % (name, k))
        for v in ps.get("volumes", []):
            kinds = set(v) - {"name"}
            need(kinds <= RESTRICTED_VOLUMES, "%s: volume %s of type %s" % (name, v["name"], kinds))
        tsc = ps.get("topologySpreadConstraints", [])
        need(tsc and all(selects(c["labelSelector"].get("matchLabels"), labels) for c in tsc),
             "%s: no topology spread constraint selecting its pods" % name)
        grace = ps.get("terminationGracePeriodSeconds", 30)
        for c in ps["containers"] + ps.get("initContainers", []):
            w = "%s/%s" % (name, c["name"])
            sc = c.get("securityContext", {})
            non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
            need(non_root is True, "%s: runAsNonRoot is not true" % w)
            need(sc.get("runAsUser", psc.get("runAsUser", 1)) != 0, "%s: runAsUser 0" % w)
            seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
            need(seccomp in ("RuntimeDefault", "Localhost"), "%s: seccompProfile %s" % (w, seccomp))
            need(sc.get("allowPrivilegeEscalation") is False, "%s: allowPrivilegeEscalation" % w)
            need(not sc.get("privileged"), "%s: privileged" % w)
            caps = sc.get("capabilities", {})
            need("ALL" in caps.get("drop", []), "%s: capabilities not dropped (ALL)" % w)
            need(set(caps.get("add", [])) <= {"NET_BIND_SERVICE"}, "%s: capabilities added" % w)
            need(sc.get("readOnlyRootFilesystem") is True, "%s: writable root filesystem" % w)
            res = c.get("resources", {})
            need({"cpu", "memory"} <= set(res.get("requests", {})), "%s: no cpu/memory request" % w)
            need("memory" in res.get("limits", {}), "%s: no memory limit" % w)
            img = c.get("image", "")
            tag = img.rsplit("@", 1)[1] if "@" in img else (
                img.rsplit(":", 1)[1] if ":" in img.rsplit("/", 1)[-1] else "")
            need(tag and tag != "latest", "%s: image %r is not pinned to a version" % (w, img))
            a = [str(x) for x in c.get("args", [])]
            role = a[0] if a else ""
            if role in DRAIN_DEFAULT_S:
                drain = arg(a, "--drain-ms")
                drain_s = int(drain[0]) / 1000 if drain else DRAIN_DEFAULT_S[role]
                cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
                ok = len(cmd) == 2 and cmd[0].endswith("sleep")
                need(ok, "%s: no preStop sleep" % w)
                pre_s = float(cmd[1]) if ok else 0
                need(grace > pre_s + drain_s, "%s: grace %ss does not cover preStop %ss + drain %ss"
                     % (w, grace, pre_s, drain_s))

    # ---- autoscaling on mrank's own metrics ----
    with open(os.path.join(root, "deploy/k8s/prometheus-adapter-rules.yaml")) as f:
        rules = yaml.safe_load(f)["rules"]
    exposed = {r["name"]["as"] for r in rules}
    written = "".join(open(os.path.join(root, p)).read() for p in METRIC_SOURCES)
    for r in rules:
        base = re.match(r"'?(\w+)", r["seriesQuery"]).group(1)
        need('"%s' % base.replace("_sum", "") in written or base in written,
             "adapter rule %s: no such metric in %s" % (base, METRIC_SOURCES))
    for name, h in hpas.items():
        need(h["spec"]["scaleTargetRef"]["name"] in deps, "HPA %s: no such Deployment" % name)
        for m in h["spec"].get("metrics", []):
            need(m["type"] == "Pods", "HPA %s scales on %s, not on mrank's metrics" % (name, m["type"]))
            if m["type"] == "Pods":
                mn = m["pods"]["metric"]["name"]
                need(mn in exposed, "HPA %s: metric %s is not in the adapter rules" % (name, mn))
                need(mn in written, "HPA %s: metric %s is written by neither binary" % (name, mn))
    for name in deps:
        need(name in scaled, "%s: no HPA" % name)

    # ---- network policies ----
    nps = by.get("NetworkPolicy", {})
    need(any(n["spec"]["podSelector"] == {} and set(n["spec"]["policyTypes"]) == {"Ingress", "Egress"}
             and not n["spec"].get("ingress") and not n["spec"].get("egress") for n in nps.values()),
         "no default-deny NetworkPolicy")

    # ---- cluster.json against the objects ----
    ns = next(iter(nss)) if nss else ""
    coord_labels = None
    cd = deps.get("mrank-coordinator")
    need(cd is not None, "no Deployment mrank-coordinator")
    if cd:
        coord_labels = cd["spec"]["template"]["metadata"]["labels"]
    for pool in cfg["pools"]:
        m = re.fullmatch(r"dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)",
                         pool.get("dns", ""))
        need(m is not None, "pool %s: dns target %r" % (pool["name"], pool.get("dns")))
        if not m:
            continue
        svc_name, svc_ns, port = m.group(1), m.group(2), int(m.group(3))
        need(svc_ns == ns, "pool %s: namespace %s, objects use %s" % (pool["name"], svc_ns, ns))
        svc, dep = svcs.get(svc_name), deps.get(svc_name)
        need(svc is not None and dep is not None, "pool %s: no Service/Deployment %s" % (pool["name"], svc_name))
        if not svc or not dep:
            continue
        need(svc["spec"].get("clusterIP") == "None", "Service %s is not headless" % svc_name)
        need(port in [p["port"] for p in svc["spec"]["ports"]], "Service %s lacks port %d" % (svc_name, port))
        labels = dep["spec"]["template"]["metadata"]["labels"]
        need(selects(svc["spec"]["selector"], labels), "Service %s does not select its Deployment" % svc_name)
        ps = dep["spec"]["template"]["spec"]
        c = ps["containers"][0]
        a = [str(x) for x in c["args"]]
        need(a[0] == "worker", "%s: not a worker" % svc_name)
        need(arg(a, "--listen") == ["0.0.0.0:%d" % port], "%s: --listen %s, dns port %d" % (svc_name, arg(a, "--listen"), port))
        need(probe_port(c["readinessProbe"]) == port, "%s: readiness probe port" % svc_name)
        model = arg(a, "--model")
        need(model == [cfg["model"]], "%s: --model %s, cluster.json model %s" % (svc_name, model, cfg["model"]))
        vols = {v["name"]: v for v in ps.get("volumes", [])}
        mounts = [vm for vm in c.get("volumeMounts", []) if model and
                  (model[0] + "/").startswith(vm["mountPath"].rstrip("/") + "/")]
        ok = len(mounts) == 1 and mounts[0].get("readOnly") is True
        need(ok, "%s: --model %s is not on a read-only mount" % (svc_name, model))
        if ok:
            v = vols.get(mounts[0]["name"], {})
            pvc = v.get("persistentVolumeClaim")
            need((pvc and pvc.get("readOnly") is True and pvc["claimName"] in by.get("PersistentVolumeClaim", {}))
                 or "image" in v, "%s: the checkpoint volume is not a read-only PVC of the set (or an image volume)" % svc_name)
        ads = dict(x.split("=", 1) for x in arg(a, "--adapter"))
        need(set(ads) == set(pool.get("adapters", {})), "%s: adapters %s, pool declares %s" % (svc_name, sorted(ads), sorted(pool.get("adapters", {}))))
        for aname, p in ads.items():  # the volume holds an mrank model folder: the bundled layout
            rel = os.path.relpath(p, cfg["model"])
            need(not rel.startswith("..") and os.path.exists(os.path.join(root, "models/mrank-tiny", rel, "adapter_config.json")),
                 "%s: adapter %s=%s is not at a model folder's %s" % (svc_name, aname, p, rel))
        mx = arg(a, "--max-len")
        need(mx and int(mx[0]) >= cfg["limits"]["max_tokens_per_pair"], "%s: --max-len %s below max_tokens_per_pair" % (svc_name, mx))
        # only the coordinator reaches the gRPC port
        opened = [r for n in nps.values() if selects(n["spec"]["podSelector"].get("matchLabels"), labels)
                  for r in n["spec"].get("ingress", []) if any(pp.get("port") in (port, "grpc") for pp in r.get("ports", []))]
        need(opened and all(r.get("from") and all(
            set(f) == {"podSelector"} and coord_labels and selects(f["podSelector"].get("matchLabels"), coord_labels)
            for f in r["from"]) for r in opened), "%s: port %d is open to more than the coordinator" % (svc_name, port))

    if cd:
        c = cd["spec"]["template"]["spec"]["containers"][0]
        a = [str(x) for x in c["args"]]
        conf = arg(a, "--config")
        mounts = {v["mountPath"]: v["name"] for v in c.get("volumeMounts", [])}
        vols = {v["name"]: v for v in cd["spec"]["template"]["spec"].get("volumes", [])}
        ok = conf and conf[0].rsplit("/", 1)[0] in mounts and conf[0].rsplit("/", 1)[1] == "cluster.json"
        need(ok, "coordinator: --config %s is not the mounted cluster.json" % conf)
        if ok:
            v = vols[mounts[conf[0].rsplit("/", 1)[0]]]
            need(v.get("configMap", {}).get("name") in configmap_names,
                 "coordinator: volume %s is not the cluster.json ConfigMap %s" % (v, configmap_names))
        listen_port = int(cfg["coordinator"]["listen"].rsplit(":", 1)[1])
        svc = svcs.get("mrank")
        need(svc is not None and listen_port in [p["port"] for p in svc["spec"]["ports"]],
             "Service mrank lacks the coordinator port %d" % listen_port)
        need(probe_port(c["readinessProbe"]) == listen_port, "coordinator readiness probe port")
        # the coordinator reads MODEL/calibration.json: the model folder must be mounted there
        # (read-only, the workers' claim), or every relevance score is silently uncalibrated
        pvc_mounts = [vm["mountPath"].rstrip("/") + "/" for vm in c.get("volumeMounts", [])
                      if "persistentVolumeClaim" in vols.get(vm["name"], {}) and vm.get("readOnly")]
        need(any((cfg["model"].rstrip("/") + "/").startswith(m) for m in pvc_mounts),
             "coordinator: the model folder %s (its calibration.json) is not on a read-only "
             "PersistentVolumeClaim mount" % cfg["model"])
        # a lexical stage's lexicon is a file of the image (deploy/Dockerfile copies
        # models/mrank-tiny to /opt/mrank/models/mrank-tiny): a relative path from the
        # container's workingDir /opt/mrank, which names the same file in this checkout
        for st in cfg["stages"]:
            lex = st.get("lexicon")
            if st.get("kind") != "lexical" or not lex:
                continue
            need(not lex.startswith("/") and lex.startswith("models/mrank-tiny/") and
                 c.get("workingDir") == "/opt/mrank" and os.path.exists(os.path.join(root, lex)),
                 "coordinator: lexicon %s is not models/mrank-tiny/... under workingDir /opt/mrank "
                 "(workingDir %s)" % (lex, c.get("workingDir")))
    return fail


def check_secure(objs, cfg, sec_cfg):
    """The secure overlay: its cluster.json is the base's plus a "security" section and nothing
    else; every file that section names sits on a read-only Secret mount of the coordinator;
    every worker serves mTLS (--tls-cert/--tls-key/--tls-client-ca) from files on a read-only
    Secret mount and signed by the same internal CA the coordinator trusts. Returns problems."""
    probs = []
    rest = {k: v for k, v in sec_cfg.items() if k != "security"}
    if rest != cfg:
        probs.append("secure cluster.json differs from the base's beyond its security section")
    sec = sec_cfg.get("security", {})
    if not (sec.get("tls") and sec.get("internal") and sec.get("api_keys")):
        probs.append("secure cluster.json lacks tls, internal or api_keys")

    def secret_mounts(pod):
        vols = {v["name"]: v for v in pod["spec"]["template"]["spec"].get("volumes", [])}
        c = pod["spec"]["template"]["spec"]["containers"][0]
        return [vm["mountPath"].rstrip("/") + "/" for vm in c.get("volumeMounts", [])
                if "secret" in vols.get(vm["name"], {}) and vm.get("readOnly") is True]

    def on_secret(path, mounts):
        return any(path.startswith(m) for m in mounts)

    # a Secret's files are root-owned: the pod's uid reads them only through the "other" bits
    # of the mode, or the group bits with fsGroup equal to the pod's group (the secure overlay
    # once mounted 0440 without fsGroup on the coordinator: it could not read its own keys)
    for d in objs:
        if d["kind"] != "Deployment":
            continue
        ps = d["spec"]["template"]["spec"]
        psc = ps.get("securityContext", {})
        for v in ps.get("volumes", []):
            if "secret" not in v:
                continue
            mode = v["secret"].get("defaultMode", 0o644)
            readable = mode & 0o004 or (mode & 0o040 and psc.get("fsGroup") is not None and
                                        psc.get("fsGroup") == psc.get("runAsGroup"))
            if not readable:
                probs.append("%s: Secret volume %s (mode %o) is unreadable by uid %s (fsGroup %s)" %
                             (d["metadata"]["name"], v["name"], mode, psc.get("runAsUser"),
                              psc.get("fsGroup")))

    deps = {d["metadata"]["name"]: d for d in objs if d["kind"] == "Deployment"}
    co = deps.get("mrank-coordinator")
    files = [sec.get("api_keys", "")] + list(sec.get("tls", {}).values()) + \
        list(sec.get("internal", {}).values())
    if co:
        m = secret_mounts(co)
        for f in files:
            if not on_secret(f, m):
                probs.append("coordinator: %s is not on a read-only Secret mount" % f)
    for name, d in deps.items():
        if d["metadata"]["labels"].get("role") != "worker":
            continue
        a = [str(x) for x in d["spec"]["template"]["spec"]["containers"][0]["args"]]
        m = secret_mounts(d)
        for flag, want in (("--tls-cert", "cert"), ("--tls-key", "key"), ("--tls-client-ca", "ca")):
            v = arg(a, flag)
            if len(v) != 1 or not on_secret(v[0], m):
                probs.append("%s: %s %s is not one file on a read-only Secret mount" % (name, flag, v))
            elif v[0] != sec.get("internal", {}).get(want):
                probs.append("%s: %s %s, the coordinator's internal %s is %s" %
                             (name, flag, v[0], want, sec.get("internal", {}).get(want)))
    return probs
