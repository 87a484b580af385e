#!/usr/bin/env bash
# Set up and start the server: bash scripts/serve.sh [uvicorn args]
# With no TC_MODEL it serves the embedded tiny model on the CPU at http://127.0.0.1:8000.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install -q -e .
exec "$PYTHON" -m uvicorn server.app:app --host "${TC_HOST:-127.0.0.1}" --port "${TC_PORT:-8000}" \
  --timeout-graceful-shutdown "${TC_DRAIN_SECONDS:-30}" "$@"
