#!/usr/bin/env bash
# make-certs.sh DIR: throwaway certificates and an API key for a local mrank cluster (openssl
# CLI; P-256 keys, valid 30 days). NOT for production: the CA keys sit next to the certificates.
#   DIR/ca.pem, ca-key.pem                public CA: signs the coordinator's server certificate
#                                         and client certificates
#   DIR/server.pem, server-key.pem        the coordinator's public certificate (localhost,
#                                         127.0.0.1, ::1 and $MRANK_CERT_HOSTS, comma-separated)
#   DIR/client.pem, client-key.pem        a client certificate (mTLS on the public port)
#   DIR/internal-ca.pem, internal-ca-key.pem  internal CA: coordinator <-> workers only
#   DIR/internal.pem, internal-key.pem    the certificate the coordinator and the workers present
#                                         to each other (server and client use)
#   DIR/client-ca.pem                     what the public port accepts: the public CA plus the
#                                         internal CA (mrank up checks its coordinator with the
#                                         internal certificate)
#   DIR/api-key.txt, DIR/keys.json        one API key ("local", tiers of deploy/local.json) and
#                                         the key file holding its SHA-256
#   DIR/security.json                     the "security" section to paste into a cluster config
# Prints how a client connects. Usage: scripts/make-certs.sh DIR (DIR is created).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
dir=$1
command -v openssl >/dev/null || { echo "make-certs.sh: openssl not found (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
umask 077
days=30
hosts="DNS:localhost,IP:127.0.0.1,IP:::1"
if [ -n "${MRANK_CERT_HOSTS:-}" ]; then
  IFS=, read -ra extra <<<"$MRANK_CERT_HOSTS"
  for h in "${extra[@]}"; do
    if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then hosts+=",IP:$h"; else hosts+=",DNS:$h"; fi
  done
fi

ca() {  # ca NAME SUBJECT: a self-signed CA
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj "/CN=$2" -keyout "$dir/$1-key.pem" -out "$dir/$1.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    2>/dev/null
}

leaf() {  # leaf NAME CA SUBJECT EKU [SAN]: a key and a certificate signed by CA
  local name=$1 signer=$2 subj=$3 eku=$4 san=${5:-} ext
  ext=$(mktemp)
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [ -n "$san" ] && echo "subjectAltName=$san"
  } >"$ext"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$subj" \
    -keyout "$dir/$name-key.pem" -out "$dir/$name.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/$signer.pem" -CAkey "$dir/$signer-key.pem" \
    -CAcreateserial -days "$days" -extfile "$ext" -out "$dir/$name.pem" 2>/dev/null
  rm -f "$dir/$name.csr" "$ext"
}

ca ca "mrank local public CA"
ca internal-ca "mrank local internal CA"
leaf server ca "mrank coordinator" serverAuth "$hosts"
leaf client ca "mrank client" clientAuth
leaf internal internal-ca "mrank internal" serverAuth,clientAuth "$hosts"
cat "$dir/ca.pem" "$dir/internal-ca.pem" >"$dir/client-ca.pem"
rm -f "$dir"/*.srl

key=$(openssl rand -hex 24)
printf '%s\n' "$key" >"$dir/api-key.txt"
sum=$(printf '%s' "$key" | openssl dgst -sha256 -r | cut -d' ' -f1)
cat >"$dir/keys.json" <<EOF
[{"name": "local", "sha256": "$sum", "tiers": ["interactive", "standard", "batch"]}]
EOF
cat >"$dir/security.json" <<EOF
"security": {
  "tls": {"cert": "$dir/server.pem", "key": "$dir/server-key.pem",
          "client_ca": "$dir/client-ca.pem"},
  "internal": {"ca": "$dir/internal-ca.pem", "cert": "$dir/internal.pem",
               "key": "$dir/internal-key.pem"},
  "api_keys": "$dir/keys.json"
}
EOF
chmod 644 "$dir"/*.pem "$dir/keys.json" "$dir/security.json"
chmod 600 "$dir"/*-key.pem "$dir/api-key.txt"

cat <<EOF
make-certs.sh: throwaway certificates in $dir (valid $days days; not for production)
add this to the cluster config (or copy $dir/security.json):
$(cat "$dir/security.json")
then a client connects with:
  MRANK_API_KEY=\$(cat $dir/api-key.txt) mrank rerank --addr 127.0.0.1:7100 \\
    --ca $dir/ca.pem --cert $dir/client.pem --key $dir/client-key.pem \\
    --query 'what is the capital of France?' --docs FILE
  python3 tests/clients/rerank_client.py rerank 127.0.0.1:7100 --ca $dir/ca.pem \\
    --cert $dir/client.pem --key $dir/client-key.pem --api-key \$(cat $dir/api-key.txt) \\
    --query 'what is the capital of France?' --docs FILE
EOF
