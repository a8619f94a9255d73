#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/k8s against the official API
# schemas (kubernetes-validate, strict: unknown fields are errors). Nothing is
# applied: no API server runs here.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_K8S="${WEIR_CI_VENV_K8S:-$HOME/.cache/weir-ci/venv-k8s}"
PACKAGE="kubernetes-validate==1.37.0"
if ! "$VENV_K8S/bin/kubernetes-validate" --version 2>/dev/null | grep -q '1.37.0'; then
  python3 -m venv "$VENV_K8S"
  "$VENV_K8S/bin/pip" install -q "$PACKAGE"
fi
"$VENV_K8S/bin/kubernetes-validate" --strict --quiet --kubernetes-version 1.33.0 deploy/k8s/*.yaml
echo "deploy/k8s: every manifest is valid for Kubernetes 1.33 (strict)"
