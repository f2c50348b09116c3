#!/usr/bin/env bash
# Builds promtool from the published Prometheus Go module pinned in go.mod, once,
# into a cache directory outside the repo (like tests/helm/build.sh). Prints the
# path of the promtool binary.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1 == "github.com/prometheus/prometheus" {print $2}' "$here/go.mod")
stamp=$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)
cache_root=${GPU_SHOPPER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpu-shopper}
bin="$cache_root/promtool/$version-$stamp/bin"
if [[ -x $bin/promtool ]]; then
  echo "$bin/promtool"
  exit 0
fi
command -v go >/dev/null || { echo "promtool/build.sh: the Go toolchain is needed to build promtool (go not found)" >&2; exit 1; }
echo "promtool/build.sh: building promtool $version into $bin (first time only)" >&2
mkdir -p "$bin.partial"
cd "$here"
start=$(date +%s)
GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" \
  -o "$bin.partial/promtool" github.com/prometheus/prometheus/cmd/promtool >&2
rm -rf "$bin"
mv "$bin.partial" "$bin"
echo "promtool/build.sh: built in $(( $(date +%s) - start ))s" >&2
echo "$bin/promtool"
