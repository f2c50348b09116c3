#!/usr/bin/env bash
# Builds the operator's OCI image without a container engine and pushes it:
#
#   scripts/image.sh REGISTRY/REPOSITORY:TAG      # e.g. registry.example.com/gpu-shopper:0.2.0
#
# The image is the release binary on a minimal root: the C runtime it links
# against (glibc and libgcc from Debian packages pinned below), an /etc/passwd
# naming the non-root user 65532, and an empty /tmp; no shell, no package
# manager. Every file has mtime 0 and root ownership, so the same binary always
# gives the same digest. crane (go-containerregistry, built from the Go module
# proxy by tests/oci/build.sh) assembles and pushes it; it uses your docker
# credentials (~/.docker/config.json) for the registry, and plain HTTP for
# localhost. BINARY=path uses an already built binary instead of building one.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ref=${1:?usage: scripts/image.sh REGISTRY/REPOSITORY:TAG}
# The Debian bookworm packages the C runtime comes from (override to update).
DEBIAN_PACKAGES=${DEBIAN_PACKAGES:-"libc6=2.36-9+deb12u14 libgcc-s1=12.2.0-14+deb12u1"}
tools=$("$root/tests/oci/build.sh")
binary=${BINARY:-}
if [[ -z $binary ]]; then
  (cd "$root" && cargo build --release --locked --bin gpu-shopper >&2)
  binary=$root/target/release/gpu-shopper
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# shellcheck disable=SC2086
(cd "$work" && apt-get download $DEBIAN_PACKAGES >/dev/null 2>&1) ||
  { echo "image.sh: cannot download $DEBIAN_PACKAGES from the Debian archive (set DEBIAN_PACKAGES to versions it serves)" >&2; exit 1; }
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/debs"; done

rootfs=$work/rootfs
mkdir -p "$rootfs/lib/x86_64-linux-gnu" "$rootfs/lib64" "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/tmp"
for lib in ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libgcc_s.so.1; do
  cp "$work/debs/lib/x86_64-linux-gnu/$lib" "$rootfs/lib/x86_64-linux-gnu/$lib"
done
ln -s /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$rootfs/lib64/ld-linux-x86-64.so.2"
install -m 0755 "$binary" "$rootfs/usr/local/bin/gpu-shopper"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
chmod 1777 "$rootfs/tmp"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"
find "$rootfs" -type d -not -path "$rootfs/tmp" -exec chmod 0755 {} +
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$rootfs" -cf "$work/layer.tar" .

crane="$tools/crane"
"$crane" append --oci-empty-base --platform linux/amd64 -f "$work/layer.tar" -t "$ref" >/dev/null
version=$("$binary" --version | awk '{print $2}')
"$crane" mutate "$ref" -t "$ref" \
  --set-platform linux/amd64 \
  --entrypoint /usr/local/bin/gpu-shopper --cmd controller --user 65532:65532 --exposed-ports 8080/tcp \
  -l org.opencontainers.image.title=gpu-shopper -l "org.opencontainers.image.version=$version" >/dev/null
echo "$ref@$("$crane" digest "$ref")"
