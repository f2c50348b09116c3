#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian machine, when it is
# missing: openssl and curl (control plane certificates and readiness checks),
# the OpenSSH client (the demo logs in with the session key),
# Go (to build the real Kubernetes control plane; Go fetches the toolchain
# version go.mod asks for through the module proxy), Lua 5.4 (the Argo CD
# health checks are tested in a real Lua interpreter), rustfmt and clippy.
set -euo pipefail
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl ca-certificates)
command -v ssh >/dev/null || need+=(openssh-client)
command -v go >/dev/null || need+=(golang-go)
command -v lua5.4 >/dev/null || need+=(lua5.4)
if ((${#need[@]})); then
  echo "setup.sh: installing ${need[*]}" >&2
  sudo_cmd=""
  [[ $(id -u) == 0 ]] || sudo_cmd=sudo
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup.sh: Rust (cargo) is required: install it with rustup" >&2; exit 1; }
if command -v rustup >/dev/null; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
# Go may fetch a newer toolchain named in go.mod from the module proxy.
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
echo "setup.sh: ok (go: $(go version | cut -d' ' -f3), cargo: $(cargo --version | cut -d' ' -f2))" >&2
