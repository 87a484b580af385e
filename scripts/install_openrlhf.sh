#!/usr/bin/env bash
# Install OpenRLHF 0.11.2 for the plugin and its CPU tests: bash scripts/install_openrlhf.sh
#
# --no-deps: OpenRLHF pins flash-attn 2.8.3, deepspeed 0.19.6, ray 2.55 and transformers 5.15,
# which clash with this stack (and flash-attn does not build without CUDA). The CPU tests stub
# those modules (tests/openrlhf/conftest.py). What the tested code paths import for real is
# installed here: pylatexenc (openrlhf.utils.math_utils) and aiohttp (its reward client), and
# ray (the version OpenRLHF 0.11.2 pins, 2.55.x) so the tests that start real Ray workers with
# the plugin's setup hook run instead of skipping. ray is a large wheel with no torch dependency.
# torch is never installed, upgraded or removed: the script fails if torch changed.
# Idempotent: a second run installs nothing.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VERSION=0.11.2
RAY_VERSION=2.55.1

version_of() {
  "$PYTHON" -c "from importlib.metadata import version; print(version('$1'))" 2>/dev/null || true
}

torch_before=$(version_of torch)

if [ "$(version_of openrlhf)" != "$VERSION" ]; then
  "$PYTHON" -m pip install -q --no-deps "openrlhf==$VERSION"
fi
if [ -z "$(version_of pylatexenc)" ]; then
  "$PYTHON" -m pip install -q --no-deps pylatexenc
fi
if [ -z "$(version_of aiohttp)" ]; then
  # aiohttp's own dependencies are small pure/C extensions (multidict, yarl, ...), never torch;
  # the constraint below makes pip refuse rather than touch it.
  constraint=$(mktemp)
  [ -n "$torch_before" ] && echo "torch==$torch_before" >"$constraint"
  "$PYTHON" -m pip install -q -c "$constraint" aiohttp
  rm -f "$constraint"
fi

if [ "$(version_of ray)" != "$RAY_VERSION" ]; then
  constraint=$(mktemp)
  [ -n "$torch_before" ] && echo "torch==$torch_before" >"$constraint"
  "$PYTHON" -m pip install -q -c "$constraint" "ray==$RAY_VERSION"
  rm -f "$constraint"
fi

torch_after=$(version_of torch)
if [ "$torch_before" != "$torch_after" ]; then
  echo "install_openrlhf.sh: torch changed ($torch_before -> $torch_after); this must not happen" >&2
  exit 1
fi
"$PYTHON" -c "import openrlhf.trainer.ppo_utils.experience, openrlhf.utils.agent, ray" \
  || { echo "install_openrlhf.sh: openrlhf $VERSION does not import" >&2; exit 1; }
echo "openrlhf $VERSION and ray $RAY_VERSION ready (torch $torch_after untouched)"
