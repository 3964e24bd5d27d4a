#!/usr/bin/env bash
# Helm, pinned, for the chart test (tests/test_deploy_manifests.py renders deploy/helm/memeguard with it).
# Built from Helm's own Go module with the machine's Go toolchain into .cache/tools/bin (a few minutes, once);
# skipped when that version is already there. Not needed to run memeguard, only to test the chart.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_VERSION=v3.22.0
HELM=.cache/tools/bin/helm
if "$HELM" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "error: building Helm $HELM_VERSION needs Go >= 1.24 (https://go.dev/dl/); or put helm $HELM_VERSION at $HELM" >&2
  exit 1
fi
mkdir -p "$(dirname "$HELM")"
# GOTOOLCHAIN=local: the machine's Go, never a downloaded toolchain. The version is stamped as the release does.
GOTOOLCHAIN=local GOBIN="$PWD/$(dirname "$HELM")" go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
echo "helm $("$HELM" version --short) in $HELM"
