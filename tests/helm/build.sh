#!/usr/bin/env bash
# Builds Helm from the published Go module pinned in go.mod (see tests/go-tools.sh).
# Prints the path of the helm binary.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1 == "helm.sh/helm/v3" {print $2}' "$here/go.mod")
export LDFLAGS="-X helm.sh/helm/v3/internal/version.version=$version"
bin=$("$here/../go-tools.sh" "$here" helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm)
echo "$bin/helm"
