#!/usr/bin/env bash
# Every artifact of a release, from one command (`make release VERSION=x.y.z`),
# into dist/x.y.z/. The same sources give the same bytes (mtime 0, sorted,
# root-owned archives; gzip without names or times):
#
#   gpu-shopper-x.y.z-linux-amd64.tar.gz  the binary: operator, CLI and, named
#                                         kubectl-gpu_shopper, the kubectl plugin
#   gpu-shopper-image-x.y.z.oci.tar       the image as an OCI layout (crane push DIR,
#                                         skopeo copy oci-archive:FILE docker://...)
#   gpu-shopper-x.y.z.tgz                 the Helm chart (helm push ... oci://REGISTRY/charts)
#   gpu-shopper.krew.yaml                 the krew manifest, with the archive's sha256
#   RELEASE_NOTES.md                      the CHANGELOG's section for x.y.z
#   SHA256SUMS                            of all of the above
#
# The version must already be the one Cargo.toml, Chart.yaml (version and
# appVersion) and CHANGELOG.md name. BINARY=path packs an already built binary;
# otherwise a release build is made, with glibc linked in statically
# (crt-static), so the binary runs on any x86_64 Linux. RELEASE_URL is where the
# archives will be downloaded from (the krew manifest names it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=${1:?usage: scripts/release.sh VERSION}
out=${DIST:-$root/dist}/$version
release_url=${RELEASE_URL:-https://github.com/gpu-shopper/gpu-shopper/releases/download/v$version}
fail() { echo "release.sh: $*" >&2; exit 1; }

cargo_version=$(awk -F'"' '/^version = / {print $2; exit}' "$root/Cargo.toml")
chart_version=$(awk '/^version:/ {print $2}' "$root/charts/gpu-shopper/Chart.yaml")
app_version=$(awk -F'"' '/^appVersion:/ {print $2}' "$root/charts/gpu-shopper/Chart.yaml")
[[ $cargo_version == "$version" ]] || fail "Cargo.toml says $cargo_version, not $version"
[[ $chart_version == "$version" && $app_version == "$version" ]] ||
  fail "Chart.yaml says version $chart_version, appVersion $app_version, not $version"
notes=$(awk -v v="$version" '$0 ~ "^## "v"( |$)" {on=1; next} on && /^## / {exit} on {print}' "$root/CHANGELOG.md")
[[ -n ${notes//[[:space:]]/} ]] || fail "CHANGELOG.md has no section \"## $version\""

rm -rf "$out"
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"; [[ -n ${registry_pid:-} ]] && kill "$registry_pid" 2>/dev/null || true' EXIT

binary=${BINARY:-}
if [[ -z $binary ]]; then
  (cd "$root" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target x86_64-unknown-linux-gnu --bin gpu-shopper >&2)
  binary=$root/target/x86_64-unknown-linux-gnu/release/gpu-shopper
fi
"$binary" --version | grep -qx "gpu-shopper $version" || fail "$binary is not gpu-shopper $version"

# Deterministic archives: same files, same bytes.
pack() { tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 "$@"; }

# The binary, and the same file as the kubectl plugin.
mkdir -p "$work/bin"
install -m 0755 "$binary" "$work/bin/gpu-shopper"
cp "$root/README.md" "$work/bin/README.md"
chmod 0644 "$work/bin/README.md"
archive=gpu-shopper-$version-linux-amd64.tar.gz
pack -C "$work/bin" -cf - gpu-shopper README.md | gzip -9n >"$out/$archive"

# The image, built by scripts/image.sh into a registry on loopback, saved as an OCI layout.
tools=$("$root/tests/oci/build.sh")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
  echo $((20000 + RANDOM % 20000)))
"$tools/registry" -port "$port" >/dev/null 2>&1 &
registry_pid=$!
for _ in $(seq 50); do "$tools/crane" catalog "127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.1; done
reference=$(BINARY=$work/bin/gpu-shopper "$root/scripts/image.sh" "127.0.0.1:$port/gpu-shopper:$version")
"$tools/crane" pull --format oci "${reference%@*}" "$work/layout"
find "$work/layout" -exec touch -h -d @0 {} +
pack -C "$work/layout" -cf "$out/gpu-shopper-image-$version.oci.tar" .
echo "${reference#*@}" >"$work/image-digest"

# The chart, its image pinned to this version, repacked deterministically.
helm=${GPU_SHOPPER_HELM:-$("$root/tests/helm/build.sh")}
"$helm" package "$root/charts/gpu-shopper" --version "$version" --app-version "$version" -d "$work/chart" >/dev/null
mkdir -p "$work/chart/unpacked"
tar -xzf "$work/chart/gpu-shopper-$version.tgz" -C "$work/chart/unpacked"
pack -C "$work/chart/unpacked" -cf - gpu-shopper | gzip -9n >"$out/gpu-shopper-$version.tgz"

# The krew manifest.
sum=$(sha256sum "$out/$archive" | cut -d' ' -f1)
cat >"$out/gpu-shopper.krew.yaml" <<EOF
apiVersion: krew.googlecontainertools.github.com/v1alpha2
kind: Plugin
metadata:
  name: gpu-shopper
spec:
  version: v$version
  homepage: https://github.com/gpu-shopper/gpu-shopper
  shortDescription: Rent GPUs from cheap marketplaces and use them from the cluster
  description: |
    kubectl gpu-shopper lists the GPU market, shows a GpuSession's status and
    what to do next, logs in to its machine, copies files, follows its logs,
    forwards ports and prints an Inference session's endpoint.
  platforms:
    - selector:
        matchLabels: {os: linux, arch: amd64}
      uri: $release_url/$archive
      sha256: $sum
      files:
        - {from: gpu-shopper, to: kubectl-gpu_shopper}
        - {from: README.md, to: .}
      bin: kubectl-gpu_shopper
EOF

printf '%s\n' "$notes" | sed -e '/./,$!d' >"$out/RELEASE_NOTES.md"
printf '\nImage digest: %s\n' "$(cat "$work/image-digest")" >>"$out/RELEASE_NOTES.md"
(cd "$out" && sha256sum -- * | grep -v ' SHA256SUMS$' >SHA256SUMS)
echo "$out"
