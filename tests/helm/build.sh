#!/usr/bin/env bash
# Builds Helm from the published Go module pinned in go.mod, once, into a cache
# directory outside the repo. Prints the path of the helm binary.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1 == "helm.sh/helm/v3" {print $2}' "$here/go.mod")
stamp=$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)
cache_root=${GPU_SHOPPER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpu-shopper}
bin="$cache_root/helm/$version-$stamp/bin"
if [[ -x $bin/helm ]]; then
  echo "$bin/helm"
  exit 0
fi
command -v go >/dev/null || { echo "helm/build.sh: the Go toolchain is needed to build Helm (go not found)" >&2; exit 1; }
echo "helm/build.sh: building Helm $version into $bin (first time only)" >&2
mkdir -p "$bin.partial"
cd "$here"
start=$(date +%s)
GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$version" \
  -o "$bin.partial/helm" helm.sh/helm/v3/cmd/helm >&2
rm -rf "$bin"
mv "$bin.partial" "$bin"
echo "helm/build.sh: built in $(( $(date +%s) - start ))s" >&2
echo "$bin/helm"
