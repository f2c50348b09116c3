#!/usr/bin/env bash
# Builds the real kube-apiserver, kube-controller-manager, etcd and kubectl from
# the published Go modules pinned in go.mod, once, into a cache directory
# outside the repo. Prints that bin directory. A cached build is reused as long
# as go.mod and go.sum are unchanged.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s_version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/go.mod")
stamp=$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)
cache_root=${GPU_SHOPPER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpu-shopper}
bin="$cache_root/control-plane/$k8s_version-$stamp/bin"

if [[ -x $bin/kube-apiserver && -x $bin/kube-controller-manager && -x $bin/etcd && -x $bin/kubectl ]]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: the Go toolchain is needed to build the control plane (go not found)" >&2; exit 1; }
echo "build.sh: building Kubernetes $k8s_version control plane into $bin (first time only, several minutes)" >&2
mkdir -p "$bin.partial"
cd "$here"
minor=$(echo "$k8s_version" | cut -d. -f2)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
export GOFLAGS=-mod=mod CGO_ENABLED=0
start=$(date +%s)
go build -trimpath -ldflags "$ldflags" -o "$bin.partial/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl >&2
go build -trimpath -ldflags "-s -w" -o "$bin.partial/etcd" go.etcd.io/etcd/server/v3 >&2
rm -rf "$bin"
mv "$bin.partial" "$bin"
echo "build.sh: built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
