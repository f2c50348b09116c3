#!/usr/bin/env bash
# The main job, end to end on this machine: a real Kubernetes control plane on
# loopback, the CRDs, the operator, and the example resources; then shows what
# `kubectl get` shows, deletes the sessions and shows that they went away
# through the operator's cleanup step.
#
# It never spends money by accident: marketplace keys in the environment are
# ignored (the simulated marketplaces run instead) unless
# GPU_SHOPPER_DEMO_REAL_MARKETPLACES=yes; every demo session carries a budget
# and a lifetime, and whatever way the script exits, the sessions are deleted
# and their machines destroyed before the operator is stopped.
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
k delete namespace "$ns" --ignore-not-found --wait=true --timeout=120s >/dev/null
k create namespace "$ns" >/dev/null

pids=()
operator_started=no
cleanup() {
  # Sessions first, while the operator runs: their finalizers destroy the machines.
  if [[ $operator_started == yes ]]; then
    k -n "$ns" delete gs --all --wait=true --timeout=300s >/dev/null 2>&1 ||
      echo "WARNING: sessions in $ns did not finish their cleanup; check the marketplaces for machines labelled gpushopper.${DEPLOYMENT_ID}-*" >&2
  fi
  kill "${pids[@]}" 2>/dev/null || true
}
trap cleanup EXIT
real=${GPU_SHOPPER_DEMO_REAL_MARKETPLACES:-no}
if [[ $real == yes ]]; then
  [[ -n ${VASTAI_API_KEY:-}${TENSORDOCK_API_TOKEN:-}${RUNPOD_API_KEY:-} ]] ||
    { echo "GPU_SHOPPER_DEMO_REAL_MARKETPLACES=yes needs a marketplace key in the environment" >&2; exit 2; }
  say "REAL MARKETPLACES: each demo session may spend up to its budget (\$1, 30 minutes at most)"
else
  if [[ -n ${VASTAI_API_KEY:-}${TENSORDOCK_API_TOKEN:-}${RUNPOD_API_KEY:-} ]]; then
    say "marketplace keys found in the environment are NOT used (set GPU_SHOPPER_DEMO_REAL_MARKETPLACES=yes to rent real machines)"
  fi
  unset VASTAI_API_KEY TENSORDOCK_AUTH_ID TENSORDOCK_API_TOKEN RUNPOD_API_KEY
  say "starting the simulated marketplaces (gpu-shopper simulate)"
  sim_env=$(mktemp -t gpu-shopper-sim.XXXXXX.env)
  target/debug/gpu-shopper simulate >"$sim_env" 2>/dev/null &
  pids+=($!)
  for _ in $(seq 100); do grep -q RUNPOD_BASE_URL "$sim_env" && break; sleep 0.1; done
  # shellcheck disable=SC1090
  source <(grep '^export ' "$sim_env")
  grep '^#' "$sim_env"
  SIM_CONTROL_URL=$(sed -n 's/^# simulated marketplaces; control endpoint: \(.*\)\/state$/\1/p' "$sim_env")
fi

port=$(( 20000 + RANDOM % 20000 ))
log=$(mktemp -t gpu-shopper-demo.XXXXXX.log)
say "starting the operator (log: $log)"
DEPLOYMENT_ID=${DEPLOYMENT_ID:-demo}
KUBECONFIG=$kubeconfig DEPLOYMENT_ID=$DEPLOYMENT_ID WATCH_NAMESPACE=$ns HTTP_ADDR=127.0.0.1:$port \
  target/debug/gpu-shopper controller >"$log" 2>&1 &
pids+=($!)
operator_started=yes
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
curl -sS "http://127.0.0.1:$port/readyz"

say "applying e2e/demo (a filter and one session per workload kind)"
k -n "$ns" apply -f e2e/demo/
for obj in $(k -n "$ns" get gof -o name); do
  k -n "$ns" wait "$obj" --for=jsonpath='{.status.observedGeneration}'=1 --timeout=60s >/dev/null
done
say "the live market for the filter"
k -n "$ns" get gof cheap-4090 -o jsonpath='{range .status.bestOffers[*]}{.provider}{"\t"}{.gpuModel}{"\t"}{.vramGb}GiB{"\t"}CUDA {.cudaVersion}{"\t"}${.pricePerHour}/h{"\t"}{.location}{"\n"}{end}'

if [[ $real != yes ]]; then
  say "a Job that carries its work: a dataset from a bucket, a config from a ConfigMap, a token from a Secret, checkpoints saved back"
  s3bin=$(tests/s3/build.sh)
  s3root=$(mktemp -d -t gpu-shopper-bucket.XXXXXX)
  mkdir -p "$s3root/datasets/mini" "$s3root/results"
  head -c 200000 /dev/urandom >"$s3root/datasets/mini/shard-0.bin"
  head -c 100000 /dev/urandom >"$s3root/datasets/mini/shard-1.bin"
  s3port=$(( 20000 + RANDOM % 20000 ))
  "$s3bin" --host 127.0.0.1 --port "$s3port" --access-key demo-access --secret-key demo-secret-0123456789 "$s3root" >/dev/null 2>&1 &
  pids+=($!)
  k -n "$ns" create secret generic bucket-keys --from-literal=AWS_ACCESS_KEY_ID=demo-access \
    --from-literal=AWS_SECRET_ACCESS_KEY=demo-secret-0123456789 >/dev/null
  k -n "$ns" create secret generic hf --from-literal=token=hf_demo_token >/dev/null
  k -n "$ns" create configmap train --from-literal=config.yaml='epochs: 2' >/dev/null
  k -n "$ns" apply -f - <<YAML
apiVersion: gpushopper.dev/v1alpha1
kind: GpuSession
metadata: {name: train-with-data}
spec:
  requirements: {gpuModels: ["RTX 4090"], maxPricePerHour: 0.45}
  env:
    - name: HF_TOKEN
      valueFrom: {secretKeyRef: {name: hf, key: token}}
  workload:
    kind: Job
    command: cat config.yaml; ls -l data; test -n "\$HF_TOKEN" && echo "token present"; mkdir -p ckpt; cat data/* > ckpt/model.bin; echo done
    inputs:
      - {path: data, s3: {bucket: datasets, prefix: mini/, endpoint: "http://127.0.0.1:$s3port", credentialsSecretRef: {name: bucket-keys}}}
      - {path: config.yaml, configMap: {name: train, key: config.yaml}}
    outputs:
      - {path: ckpt, s3: {bucket: results, prefix: run-1/, endpoint: "http://127.0.0.1:$s3port", credentialsSecretRef: {name: bucket-keys}}}
  lifetime: {maxDuration: 30m}
  budget: {maxCostUsd: 1}
YAML
fi

say "waiting for the sessions to be Ready (rent, SSH, real CUDA, workload)"
k -n "$ns" wait gs/interactive-4090 gs/llama-inference --for=condition=Ready --timeout=120s
k -n "$ns" wait gs/finetune-job --for=jsonpath='{.status.phase}'=Succeeded --timeout=120s

say "kubectl get gof,gs"
k -n "$ns" get gof,gs -o wide

say "why each session is where it is"
k -n "$ns" get gs -o jsonpath='{range .items[*]}{.metadata.name}: {.status.phase} ({.status.reason}): {.status.message}{"\n"}  chosen: {.status.selection}{"\n"}  verified: {.status.verified.gpuCount}x {.status.verified.gpuName}, driver {.status.verified.driverVersion}, CUDA {.status.verified.cudaVersion}{"\n"}{end}'
echo "finetune-job log tail:"
k -n "$ns" get gs finetune-job -o jsonpath='{.status.job.logTail}'
if [[ $real != yes ]]; then
  k -n "$ns" wait gs/train-with-data --for=jsonpath='{.status.phase}'=Succeeded --timeout=120s
  echo "train-with-data: inputs $(k -n "$ns" get gs train-with-data -o jsonpath='{.status.conditions[?(@.type=="InputsReady")].message}')"
  echo "train-with-data: outputs $(k -n "$ns" get gs train-with-data -o jsonpath='{.status.conditions[?(@.type=="OutputsSaved")].message}')"
  k -n "$ns" get gs train-with-data -o jsonpath='{range .status.job.outputs[*]}  saved {.url} ({.bytes} bytes){"\n"}{end}  log: {.status.job.log}{"\n"}'
  echo "the bucket afterwards (s3s-fs keeps it as files):"
  (cd "$s3root/results" && find . -type f -printf '  results/%P  %s bytes\n' | sort)
fi

say "logging in with the key from the Secret interactive-4090-ssh"
keyfile=$(mktemp -t gpu-shopper-demo-key.XXXXXX)
k -n "$ns" get secret interactive-4090-ssh -o jsonpath='{.data.ssh-privatekey}' | base64 -d >"$keyfile"
chmod 600 "$keyfile"
host=$(k -n "$ns" get secret interactive-4090-ssh -o jsonpath='{.data.host}' | base64 -d)
sshport=$(k -n "$ns" get secret interactive-4090-ssh -o jsonpath='{.data.port}' | base64 -d)
user=$(k -n "$ns" get secret interactive-4090-ssh -o jsonpath='{.data.user}' | base64 -d)
echo "pinned host key: $(k -n "$ns" get gs interactive-4090 -o jsonpath='{.status.ssh.hostKeyFingerprint}')"
echo "\$ ssh -i <key> -p $sshport $user@$host nvidia-smi"
ssh -i "$keyfile" -p "$sshport" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "$user@$host" nvidia-smi
rm -f "$keyfile"

say "the model, in the cluster: the Service llama-inference in front of its gateway"
k -n "$ns" get svc,deploy,role,rolebinding,serviceaccount,lease,secret -l app.kubernetes.io/instance=llama-inference
k -n "$ns" get secret llama-inference-api-key -o name
target/debug/gpu-shopper --kubeconfig "$kubeconfig" endpoint llama-inference -n "$ns"
# This control plane runs no pods (no kubelet): the gateway runs here as its Deployment
# would run it, with the same arguments and environment and a token of its own
# ServiceAccount, so it can do no more than its Role allows.
gwdir=$(mktemp -d -t gpu-shopper-gateway.XXXXXX)
k config view --raw --minify >"$gwdir/kubeconfig"
"$bin/kubectl" --kubeconfig "$gwdir/kubeconfig" config set-credentials gateway \
  --token="$(k -n "$ns" create token llama-inference-gateway)" >/dev/null
"$bin/kubectl" --kubeconfig "$gwdir/kubeconfig" config set-context --current --user=gateway --namespace="$ns" >/dev/null
gwport=$(( 20000 + RANDOM % 20000 ))
(
  while IFS='=' read -r name value; do [[ -n $name && -n $value ]] && export "$name=$value"; done < <(
    k -n "$ns" get deploy llama-inference-gateway \
      -o jsonpath='{range .spec.template.spec.containers[0].env[*]}{.name}={.value}{"\n"}{end}')
  POD_NAME=llama-inference-gateway-demo GATEWAY_LISTEN=127.0.0.1:$gwport KUBECONFIG=$gwdir/kubeconfig \
    exec target/debug/gpu-shopper gateway
) >"$gwdir/gateway.log" 2>&1 &
pids+=($!)
k -n "$ns" wait gs/llama-inference --for=condition=EndpointReady --timeout=60s
eval "$(target/debug/gpu-shopper --kubeconfig "$kubeconfig" endpoint llama-inference -n "$ns" --env)"
echo "OPENAI_BASE_URL=$OPENAI_BASE_URL (in the cluster; here the gateway listens on 127.0.0.1:$gwport)"
echo "\$ curl 127.0.0.1:$gwport/v1/completions -H 'Authorization: Bearer \$OPENAI_API_KEY' ..."
curl -sS "127.0.0.1:$gwport/v1/completions" -H "Authorization: Bearer $OPENAI_API_KEY" \
  -H 'Content-Type: application/json' -d '{"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": "Say hello.", "max_tokens": 8}'
echo
echo "without the key: HTTP $(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$gwport/v1/models")"
fwport=$(( 20000 + RANDOM % 20000 ))
echo "\$ gpu-shopper port-forward llama-inference $fwport:8000   (from a laptop: the same SSH forwarding)"
target/debug/gpu-shopper --kubeconfig "$kubeconfig" port-forward llama-inference "$fwport:8000" -n "$ns" 2>/dev/null &
pids+=($!)
for _ in $(seq 50); do curl -fsS "127.0.0.1:$fwport/v1/models" >/dev/null 2>&1 && break; sleep 0.2; done
curl -sS "127.0.0.1:$fwport/v1/models"
echo

say "deleting the sessions: the finalizer holds each until the operator's cleanup ran"
k -n "$ns" delete gs --all --wait=true --timeout=60s
echo "instances still alive at the simulated marketplaces: $(curl -s "${SIM_CONTROL_URL:-}/state" 2>/dev/null | grep -o '"destroyed":false' | wc -l)"
k -n "$ns" get events --field-selector reason=CleanupComplete -o custom-columns=SESSION:.involvedObject.name,REASON:.reason,MESSAGE:.message
k delete namespace "$ns" --wait=false >/dev/null

say "done. The control plane keeps running for the next run; stop it with tests/control-plane/stop.sh"
