#!/usr/bin/env bash
# The main job, end to end on this machine: a real Kubernetes control plane on
# loopback, the CRDs, the operator, and the example resources; then shows what
# `kubectl get` shows, deletes the sessions and shows that they went away
# through the operator's cleanup step.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
say() { printf '\n=== %s\n' "$*"; }

scripts/setup.sh
say "building gpu-shopper"
cargo build --quiet
say "starting the Kubernetes control plane (the first run builds it from source: several minutes)"
kubeconfig=$(tests/control-plane/start.sh)
bin=$(tests/control-plane/build.sh)
k() { "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }

say "installing the CRDs"
k apply --server-side -f crds/
k wait --for condition=established --timeout=60s crd/gpusessions.gpushopper.dev crd/gpuofferfilters.gpushopper.dev

ns=gpu-shopper-demo
k create namespace "$ns" --dry-run=client -o yaml | k apply -f - >/dev/null

port=$(( 20000 + RANDOM % 20000 ))
log=$(mktemp -t gpu-shopper-demo.XXXXXX.log)
say "starting the operator (log: $log)"
KUBECONFIG=$kubeconfig DEPLOYMENT_ID=${DEPLOYMENT_ID:-demo} WATCH_NAMESPACE=$ns HTTP_ADDR=127.0.0.1:$port \
  target/debug/gpu-shopper controller >"$log" 2>&1 &
controller=$!
trap 'kill $controller 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
curl -sS "http://127.0.0.1:$port/readyz"

say "applying deploy/examples"
k -n "$ns" apply -f deploy/examples/
for gs in $(k -n "$ns" get gs -o name); do
  k -n "$ns" wait "$gs" --for=jsonpath='{.status.observedGeneration}'=1 --timeout=60s >/dev/null
done

say "kubectl get gof,gs"
k -n "$ns" get gof,gs -o wide
say "why each session waits (Ready condition)"
k -n "$ns" get gs -o jsonpath='{range .items[*]}{.metadata.name}: {.status.conditions[?(@.type=="Ready")].reason}: {.status.conditions[?(@.type=="Ready")].message}{"\n"}{end}'

say "deleting the sessions: the finalizer holds each until the operator's cleanup ran"
k -n "$ns" delete gs --all --wait=true --timeout=60s
k -n "$ns" get events --field-selector reason=CleanupComplete -o custom-columns=SESSION:.involvedObject.name,REASON:.reason,MESSAGE:.message
k -n "$ns" delete gof --all >/dev/null

say "done. The control plane keeps running for the next run; stop it with tests/control-plane/stop.sh"
