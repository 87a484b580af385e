#!/usr/bin/env bash
# Install TRL 1.16.0 beside the project for the TRL integration (trainer/trl) and the tests that
# drive TRL's own clients against the server: bash scripts/install_trl.sh
# The constraint keeps pip from replacing torch 2.13.0+cpu with another (multi-GB CUDA) build;
# TRL's own requirements (accelerate, datasets, pandas, pyarrow) fit the project's pins.
# Idempotent: does nothing when trl 1.16.0 already imports.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VERSION=1.16.0

if [ "$("$PYTHON" -c 'import trl; print(trl.__version__)' 2>/dev/null || true)" = "$VERSION" ]; then
  echo "trl $VERSION already imports; nothing to do"
  exit 0
fi

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==2.13.0" >"$constraints"
"$PYTHON" -m pip install -q --constraint "$constraints" "trl==$VERSION"

"$PYTHON" - <<'PY'
import torch
import trl

assert torch.__version__.startswith("2.13.0"), f"torch changed to {torch.__version__}"
print(f"trl {trl.__version__} with torch {torch.__version__}")
PY
