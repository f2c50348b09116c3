#!/usr/bin/env bash
# Starts a real etcd + kube-apiserver (+ kube-controller-manager for garbage
# collection and namespace deletion) on loopback, the way envtest does it.
# Builds them first with build.sh (cached). Prints the kubeconfig path.
# Idempotent: when the control plane in the state directory is already up, it
# is reused. Stop it with stop.sh.
#
#   STATE dir: $GPU_SHOPPER_CONTROL_PLANE_DIR (default ${TMPDIR:-/tmp}/gpu-shopper-control-plane)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
state=${GPU_SHOPPER_CONTROL_PLANE_DIR:-${TMPDIR:-/tmp}/gpu-shopper-control-plane}
kubeconfig="$state/kubeconfig"
log() { echo "start.sh: $*" >&2; }

alive() { [[ -f $state/$1.pid ]] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }
ready() {
  curl -fsS --max-time 2 --cacert "$state/pki/ca.crt" --cert "$state/pki/admin.crt" --key "$state/pki/admin.key" \
    "https://127.0.0.1:$(cat "$state/apiserver.port")/readyz" >/dev/null 2>&1
}

# A control plane started by another version of this script (other flags) is replaced.
version=$(sha256sum "$0" | cut -c1-16)
if alive etcd && alive kube-apiserver && [[ -f $kubeconfig ]] && [[ $(cat "$state/started-by" 2>/dev/null) == "$version" ]] && ready; then
  log "reusing the control plane in $state"
  echo "$kubeconfig"
  exit 0
fi
"$here/stop.sh" >/dev/null 2>&1 || true

bin=$("$here/build.sh")
start_ms=$(( $(date +%s%N) / 1000000 ))
rm -rf "$state"
mkdir -p "$state/pki" "$state/etcd"
cd "$state/pki"

# Certificates: one CA signs the serving cert (127.0.0.1/localhost) and an
# admin client cert in system:masters. A separate key pair signs service
# account tokens.
openssl_quiet() { openssl "$@" >/dev/null 2>&1; }
openssl_quiet req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 -subj "/CN=gpu-shopper-test-ca"
openssl_quiet req -newkey rsa:2048 -nodes -keyout serving.key -out serving.csr -subj "/CN=kube-apiserver"
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n' >serving.ext
openssl_quiet x509 -req -in serving.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out serving.crt -days 30 -extfile serving.ext
openssl_quiet req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=gpu-shopper-test-admin"
printf 'extendedKeyUsage=clientAuth\n' >client.ext
openssl_quiet x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt -days 30 -extfile client.ext
openssl_quiet genrsa -out sa.key 2048
openssl_quiet rsa -in sa.key -pubout -out sa.pub
cd "$state"

# Free loopback ports: random, checked by trying to connect.
used_ports=" "
free_port() {
  local p
  while :; do
    p=$(( 20000 + RANDOM % 30000 ))
    [[ $used_ports == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then used_ports+="$p "; echo "$p"; return; fi
  done
}
etcd_port=$(free_port); etcd_peer_port=$(free_port); api_port=$(free_port)
echo "$api_port" >apiserver.port

b64() { base64 -w0 <"$1"; }
cat >"$kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: gpu-shopper-test
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $(b64 pki/ca.crt)
users:
- name: admin
  user:
    client-certificate-data: $(b64 pki/admin.crt)
    client-key-data: $(b64 pki/admin.key)
contexts:
- name: gpu-shopper-test
  context: {cluster: gpu-shopper-test, user: admin, namespace: default}
current-context: gpu-shopper-test
KUBECONFIG

launch() {
  local name=$1; shift
  setsid "$@" >"$state/$name.log" 2>&1 </dev/null &
  echo $! >"$state/$name.pid"
}

launch etcd "$bin/etcd" --name=test --data-dir="$state/etcd" \
  --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
  --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster="test=http://127.0.0.1:$etcd_peer_port" --unsafe-no-fsync --log-level=warn

launch kube-apiserver "$bin/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$etcd_port" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" \
  --tls-cert-file="$state/pki/serving.crt" --tls-private-key-file="$state/pki/serving.key" \
  --client-ca-file="$state/pki/ca.crt" \
  --service-account-key-file="$state/pki/sa.pub" --service-account-signing-key-file="$state/pki/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc \
  --service-cluster-ip-range=10.0.0.0/24 --allow-privileged=true \
  --authorization-mode=RBAC --disable-admission-plugins=ServiceAccount \
  --enable-admission-plugins=OwnerReferencesPermissionEnforcement \
  --cert-dir="$state/pki"

deadline=$(( $(date +%s) + 120 ))
until ready; do
  for p in etcd kube-apiserver; do
    if ! alive "$p"; then log "$p exited; its log ($state/$p.log) ends with:"; tail -20 "$state/$p.log" >&2; exit 1; fi
  done
  if (( $(date +%s) > deadline )); then log "kube-apiserver not ready after 120s; see $state/kube-apiserver.log"; exit 1; fi
  sleep 0.3
done

launch kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig="$kubeconfig" --authentication-kubeconfig="$kubeconfig" --authorization-kubeconfig="$kubeconfig" \
  --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false \
  --controllers=garbagecollector,namespace,clusterrole-aggregation

echo "$bin" >"$state/bin.path"
echo "$version" >"$state/started-by"
elapsed_ms=$(( $(date +%s%N) / 1000000 - start_ms ))
log "control plane ready in $((elapsed_ms / 1000)).$(printf '%03d' $((elapsed_ms % 1000)))s: kube-apiserver https://127.0.0.1:$api_port, state in $state"
echo "$kubeconfig"
