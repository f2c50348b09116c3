#!/usr/bin/env bash
# Builds Go commands from the published module pinned in a tools folder's go.mod
# (tests/helm, tests/promtool, tests/oci), once, into a cache outside the repo;
# a cached build is reused while go.mod, go.sum and LDFLAGS are unchanged. Prints the bin
# directory.
#
#   tests/go-tools.sh FOLDER MODULE PACKAGE...     (LDFLAGS adds to -s -w)
set -euo pipefail
folder=$(cd "$1" && pwd)
module=$2
shift 2
name=$(basename "$folder")
version=$(awk -v m="$module" '$1 == m {print $2}' "$folder/go.mod")
stamp=$( (cat "$folder/go.mod" "$folder/go.sum"; if [[ -n ${LDFLAGS:-} ]]; then echo "$LDFLAGS"; fi) | sha256sum | cut -c1-12)
cache_root=${GPU_SHOPPER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpu-shopper}
bin="$cache_root/$name/$version-$stamp/bin"
built=yes
for package in "$@"; do [[ -x $bin/$(basename "$package") ]] || built=no; done
if [[ $built == yes ]]; then
  echo "$bin"
  exit 0
fi
command -v go >/dev/null || { echo "go-tools.sh: the Go toolchain is needed to build $name (go not found)" >&2; exit 1; }
echo "go-tools.sh: building $* $version into $bin (first time only)" >&2
rm -rf "$bin.partial"
mkdir -p "$bin.partial"
cd "$folder"
start=$(date +%s)
GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w ${LDFLAGS:-}" -o "$bin.partial/" "$@" >&2
rm -rf "$bin"
mv "$bin.partial" "$bin"
echo "go-tools.sh: built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
