#!/usr/bin/env bash
# Stops the control plane started by start.sh and removes its state.
set -uo pipefail
state=${GPU_SHOPPER_CONTROL_PLANE_DIR:-${TMPDIR:-/tmp}/gpu-shopper-control-plane}
[[ -d $state ]] || exit 0
for name in kube-controller-manager kube-apiserver etcd; do
  pidfile="$state/$name.pid"
  [[ -f $pidfile ]] || continue
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null
  rm -f "$pidfile"
done
rm -rf "$state"
echo "stop.sh: control plane stopped" >&2
