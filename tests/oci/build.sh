#!/usr/bin/env bash
# Builds crane and an in-memory OCI registry from go-containerregistry, the Go
# module pinned in go.mod (see tests/go-tools.sh). Prints the directory holding
# `crane` and `registry`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/../go-tools.sh" "$here" github.com/google/go-containerregistry \
  github.com/google/go-containerregistry/cmd/crane github.com/google/go-containerregistry/cmd/registry
