#!/usr/bin/env bash
# Fetches the Prometheus Operator's own ServiceMonitor and PrometheusRule CRDs
# (from its published Go module, checked against the Go checksum database) so
# the API server can dry-run the chart's monitoring objects. Prints the folder
# holding the two YAML files.
set -euo pipefail
module=github.com/prometheus-operator/prometheus-operator
version=v0.86.1
root=${GPU_SHOPPER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpu-shopper}/monitoring-crds-$version
names=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_prometheusrules.yaml)
have=yes
for name in "${names[@]}"; do [[ -s $root/$name ]] || have=no; done
if [[ $have == no ]]; then
  command -v go >/dev/null || { echo "fetch.sh: the Go toolchain is needed to download $module (go not found)" >&2; exit 1; }
  dir=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [[ -d $dir ]] || { echo "fetch.sh: go mod download $module@$version gave no module folder" >&2; exit 1; }
  mkdir -p "$root.partial"
  for name in "${names[@]}"; do
    cp "$dir/example/prometheus-operator-crd/$name" "$root.partial/$name"
  done
  rm -rf "$root"
  mv "$root.partial" "$root"
fi
echo "$root"
