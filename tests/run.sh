#!/usr/bin/env bash
# The whole suite (`make test`): a real control plane, Helm, then every test,
# the integration tests included. A control plane this run started is stopped
# afterwards, pass or fail, unless KEEP_CONTROL_PLANE=1; one that was already
# running is left running.
set -euo pipefail
cd "$(dirname "$0")/.."
state=${GPU_SHOPPER_CONTROL_PLANE_DIR:-${TMPDIR:-/tmp}/gpu-shopper-control-plane}
was_running=no
if [[ -f $state/kube-apiserver.pid ]] && kill -0 "$(cat "$state/kube-apiserver.pid")" 2>/dev/null; then
  was_running=yes
fi
kubeconfig=$(tests/control-plane/start.sh)
if [[ $was_running == no && ${KEEP_CONTROL_PLANE:-0} != 1 ]]; then
  trap 'tests/control-plane/stop.sh' EXIT
fi
helm=$(tests/helm/build.sh)
promtool=$(tests/promtool/build.sh)
s3=$(tests/s3/build.sh)
kstatus=$(tests/kstatus/build.sh)
monitoring_crds=$(tests/monitoring-crds/fetch.sh)
GPU_SHOPPER_TEST_KUBECONFIG=$kubeconfig GPU_SHOPPER_HELM=$helm GPU_SHOPPER_PROMTOOL=$promtool GPU_SHOPPER_S3_SERVER=$s3 \
  GPU_SHOPPER_KSTATUS=$kstatus GPU_SHOPPER_MONITORING_CRDS=$monitoring_crds \
  cargo test --all-targets -- --include-ignored
