#!/usr/bin/env bash
# Builds crane and an in-memory OCI registry from go-containerregistry (the Go
# module pinned in go.mod), once, into a cache outside the repo, like
# tests/helm/build.sh. Prints the directory holding `crane` and `registry`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1 == "github.com/google/go-containerregistry" {print $2}' "$here/go.mod")
stamp=$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)
cache_root=${GPU_SHOPPER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpu-shopper}
bin="$cache_root/oci/$version-$stamp/bin"
if [[ -x $bin/crane && -x $bin/registry ]]; then
  echo "$bin"
  exit 0
fi
command -v go >/dev/null || { echo "oci/build.sh: the Go toolchain is needed to build crane (go not found)" >&2; exit 1; }
echo "oci/build.sh: building crane and registry $version into $bin (first time only)" >&2
mkdir -p "$bin.partial"
cd "$here"
GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin.partial/" \
  github.com/google/go-containerregistry/cmd/crane github.com/google/go-containerregistry/cmd/registry >&2
rm -rf "$bin"
mv "$bin.partial" "$bin"
echo "$bin"
