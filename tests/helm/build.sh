#!/usr/bin/env bash
# Builds Helm from the published Go module pinned in go.mod (see tests/go-tools.sh).
# Prints the path of the helm binary.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1 == "helm.sh/helm/v3" {print $2}' "$here/go.mod")
# The Kubernetes version `helm template` assumes, as Helm's own release builds set it
# (unset, Helm assumes 1.20, older than the chart's kubeVersion).
export LDFLAGS="-X helm.sh/helm/v3/internal/version.version=$version -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=35"
bin=$("$here/../go-tools.sh" "$here" helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm)
echo "$bin/helm"
