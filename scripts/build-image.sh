#!/usr/bin/env bash
# build-image.sh: builds deploy/Dockerfile with Debian's podman where no registry is reachable,
# then runs the image as Kubernetes would and reranks through it. The base images
# (debian:bookworm, debian:bookworm-slim) are one Debian 12 minbase made by debootstrap from the
# Debian mirror and imported locally; apt inside the build reaches the mirror over the host
# network. Sandbox workarounds, both harmless elsewhere: runc instead of crun (crun refuses
# hybrid cgroup v1+v2 hosts) and no default ulimits (podman's exceed a hard RLIMIT_NOFILE that
# root without CAP_SYS_RESOURCE cannot raise).
# Smoke run (uid 65532, read-only root, all capabilities dropped, no new privileges, host
# network on ports 17601-17603): a worker per pool and a coordinator from the image, on a
# config with the image's model paths, then `mrank rerank` from the image; exits 1 unless the
# coordinator answers with a ranking.
# Usage (root): scripts/build-image.sh [TAG]   (default localhost/mrank:0.1.0)
# Needs: podman runc debootstrap (apt-get install --no-install-recommends podman runc debootstrap).
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-localhost/mrank:0.1.0}
work=$(mktemp -d)
conf=$work/containers.conf
printf '[containers]\ndefault_ulimits = []\n' > "$conf"
export CONTAINERS_CONF=$conf
P=(podman --runtime runc)
NAMES=()
cleanup() {
  for n in "${NAMES[@]}"; do "${P[@]}" rm -f "$n" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

if ! "${P[@]}" image exists docker.io/library/debian:bookworm; then
  debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >/dev/null
  tar -C "$work/rootfs" -c . | "${P[@]}" import - docker.io/library/debian:bookworm >/dev/null
  rm -rf "$work/rootfs"
fi
"${P[@]}" image exists docker.io/library/debian:bookworm-slim ||
  "${P[@]}" tag docker.io/library/debian:bookworm docker.io/library/debian:bookworm-slim
"${P[@]}" build --network host -f deploy/Dockerfile -t "$TAG" .

# ---- smoke run, hardened as the Kubernetes pods are ----
/usr/bin/python3 - "$work/cluster.json" <<'PY'
import json, sys
c = json.load(open("deploy/local.json"))
m = "/opt/mrank/models/mrank-tiny"
c["model"] = m
c["coordinator"] = {"listen": "127.0.0.1:17600", "metrics_port": 0}
c["pools"][0].update(addresses=["127.0.0.1:17601"], adapters={"vert": "", "w2": ""})
c["pools"][1].update(addresses=["127.0.0.1:17602"])
for p in c["pools"]:
    p.pop("metrics_port_base", None)
json.dump(c, open(sys.argv[1], "w"))
PY
chmod 644 "$work/cluster.json"; chmod 755 "$work"
run() {  # NAME ARGS...: a detached container as a restricted pod runs
  local n=mrank-smoke-$$-$1; shift
  NAMES+=("$n")
  "${P[@]}" run -d --name "$n" --network host --user 65532:65532 --read-only \
    --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
    -v "$work/cluster.json:/etc/mrank/cluster.json:ro" "$TAG" "$@" >/dev/null
}
M=/opt/mrank/models/mrank-tiny
run cheap worker --model $M --listen 127.0.0.1:17601 --threads 1 --max-len 64 \
  --adapter vert=$M/adapters/vertical --adapter w2=$M/adapters/width-2
run full worker --model $M --listen 127.0.0.1:17602 --threads 1 --max-len 64
run coord coordinator --config /etc/mrank/cluster.json
printf 'a cascade reranks documents\nthe weather is sunny\nranking with matryoshka models\n' \
  > "$work/docs.txt"
chmod 644 "$work/docs.txt"
for i in $(seq 60); do
  if out=$("${P[@]}" run --rm --network host --user 65532:65532 --read-only --cap-drop ALL \
      -v "$work/docs.txt:/docs.txt:ro" "$TAG" rerank --addr 127.0.0.1:17600 \
      --query "what reranks documents?" --docs /docs.txt --json 2>&1); then
    echo "$out"
    echo "build-image: $TAG built, and its containers answered a rerank"
    exit 0
  fi
  sleep 2
done
echo "$out"
for n in "${NAMES[@]}"; do echo "--- $n"; "${P[@]}" logs "$n" 2>&1 | tail -5; done
echo "FAIL: no rerank answer from the image's containers in 120 s"
exit 1
