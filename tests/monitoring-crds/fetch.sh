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
  # Outside any Go module or workspace, so nothing around decides what is downloaded.
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  # With -json, go reports a failed download in its JSON on stdout: show it.
  answer=$(cd "$scratch" && GOWORK=off GOFLAGS=-mod=mod go mod download -json "$module@$version") || true
  dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$answer")
  if [[ -z $dir || ! -d $dir ]]; then
    echo "fetch.sh: go mod download $module@$version failed:" >&2
    echo "$answer" >&2
    exit 1
  fi
  rm -rf "$root.partial"
  mkdir -p "$root.partial"
  for name in "${names[@]}"; do
    # The module cache's files are read-only: the copies are not.
    install -m 0644 "$dir/example/prometheus-operator-crd/$name" "$root.partial/$name"
  done
  rm -rf "$root"
  mv "$root.partial" "$root"
fi
echo "$root"
