#!/bin/bash
# Start etcd + the cached kube-apiserver on loopback, write a kubeconfig and install the five vendored CRDs
# (tests/k8s/crds: PyTorchJob, TrainJob, TrainingRuntime, ClusterTrainingRuntime, JobSet).
# No kubelet/scheduler/operator: objects are validated and stored, pods never run; tests patch a job's
# status subresource to play the training operator.
# Usage: up.sh STATE_DIR   -> prints STATE_DIR/kubeconfig
# Env:   ETCD_PORT (2379), ETCD_PEER_PORT (2380), API_PORT (6443): the pytest fixture passes free ports so a
#        stray daemon on the defaults cannot be mistaken for ours. PYTHON: interpreter with `kubernetes`.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); REPO=$(cd "$HERE/../.." && pwd)
D=$(mkdir -p "${1:?STATE_DIR}" && cd "$1" && pwd); mkdir -p "$D/etcd" "$D/pki"
ETCD_PORT=${ETCD_PORT:-2379}; ETCD_PEER_PORT=${ETCD_PEER_PORT:-2380}; API_PORT=${API_PORT:-6443}
PYTHON=${PYTHON:-$( [ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3 )}
BIN=$("$HERE/build.sh")
command -v etcd >/dev/null || { echo "up.sh: etcd not installed (build.sh installs etcd-server)" >&2; exit 1; }

[ -s "$D/pki/sa.key" ] || openssl genrsa -out "$D/pki/sa.key" 2048 2>/dev/null
[ -s "$D/pki/sa.pub" ] || openssl rsa -in "$D/pki/sa.key" -pubout -out "$D/pki/sa.pub" 2>/dev/null
TOKEN=$(openssl rand -hex 16)
echo "$TOKEN,admin,admin,system:masters" > "$D/pki/tokens.csv"

# setsid: the daemons leave the caller's process group, so only down.sh (by PID file) stops them.
setsid etcd --data-dir "$D/etcd" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" > "$D/etcd.log" 2>&1 < /dev/null &
echo $! > "$D/etcd.pid"
for _ in $(seq 1 80); do curl -sf "http://127.0.0.1:$ETCD_PORT/health" >/dev/null 2>&1 && break; sleep 0.25; done
curl -sf "http://127.0.0.1:$ETCD_PORT/health" >/dev/null || { echo "up.sh: etcd did not come up, see $D/etcd.log" >&2; exit 1; }

setsid "$BIN" --etcd-servers="http://127.0.0.1:$ETCD_PORT" --bind-address=127.0.0.1 --secure-port="$API_PORT" \
  --advertise-address=127.0.0.1 --cert-dir="$D/pki" --token-auth-file="$D/pki/tokens.csv" \
  --authorization-mode=RBAC --service-cluster-ip-range=10.96.0.0/24 \
  --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$D/pki/sa.pub" \
  --service-account-signing-key-file="$D/pki/sa.key" --disable-admission-plugins=ServiceAccount \
  > "$D/apiserver.log" 2>&1 < /dev/null &
echo $! > "$D/apiserver.pid"

cat > "$D/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://127.0.0.1:$API_PORT", insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: $TOKEN}}]
contexts: [{name: local, context: {cluster: local, user: admin, namespace: default}}]
current-context: local
KC
for _ in $(seq 1 240); do
  curl -sk -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$API_PORT/readyz" 2>/dev/null | grep -q '^ok' && break
  kill -0 "$(cat "$D/apiserver.pid")" 2>/dev/null || { echo "up.sh: kube-apiserver exited, see $D/apiserver.log" >&2; exit 1; }
  sleep 0.25
done
curl -sk -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$API_PORT/readyz" | grep -q '^ok' \
  || { echo "up.sh: kube-apiserver not ready, see $D/apiserver.log" >&2; exit 1; }
"$PYTHON" "$HERE/install_crd.py" "$D/kubeconfig" "$REPO"/tests/k8s/crds/*.yaml >&2
echo "$D/kubeconfig"
