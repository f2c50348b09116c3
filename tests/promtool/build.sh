#!/usr/bin/env bash
# Builds promtool from the published Prometheus Go module pinned in go.mod (see
# tests/go-tools.sh). Prints the path of the promtool binary.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$("$here/../go-tools.sh" "$here" github.com/prometheus/prometheus github.com/prometheus/prometheus/cmd/promtool)
echo "$bin/promtool"
