#!/usr/bin/env bash
# Builds the kstatus reader (main.go) against sigs.k8s.io/cli-utils pinned in go.mod
# (see tests/go-tools.sh). Prints the path of the binary.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# The source is part of what is built: a change to it makes a new build.
export LDFLAGS="-X main.source=$(sha256sum "$here/main.go" | cut -c1-12)"
bin=$("$here/../go-tools.sh" "$here" sigs.k8s.io/cli-utils gpushopper.dev/kstatus)
echo "$bin/kstatus"
