#!/usr/bin/env bash
# Set up and start the server: bash scripts/serve.sh [uvicorn args]
# With no TC_MODEL it serves the embedded tiny model on the CPU at http://127.0.0.1:8000.
# The install runs once (again only when pyproject.toml changes), so a restart starts at once.
# Connection limits (header size, connections, keep-alive): client/launcher.py UVICORN_LIMITS.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

stamp="build/.serve-installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ] || ! "$PYTHON" -c "import torch, transformers, fastapi, uvicorn" 2>/dev/null; then
  "$PYTHON" -m pip install -q -e .
  mkdir -p build && touch "$stamp"
fi

# --no-access-log: the server writes its own access line, which carries the request id.
exec "$PYTHON" -m uvicorn server.app:app --host "${TC_HOST:-127.0.0.1}" --port "${TC_PORT:-8000}" \
  --timeout-graceful-shutdown "${TC_DRAIN_SECONDS:-30}" --no-access-log \
  --http server.http_protocol:HeaderDeadlineH11Protocol --h11-max-incomplete-event-size 65536 \
  --limit-concurrency 1024 --backlog 2048 --timeout-keep-alive 5 "$@"
