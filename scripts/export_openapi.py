"""Write the app's OpenAPI schema to proto/openapi.json: python scripts/export_openapi.py

The committed file is the contract in machine-readable form; tests/proto/test_openapi.py fails
when it drifts from what the app generates.
"""

from __future__ import annotations

import json
from pathlib import Path

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "proto" / "openapi.json"


def generate() -> str:
    from server.app import create_app

    return json.dumps(create_app().openapi(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OPENAPI_PATH.write_text(generate())
    print(f"wrote {OPENAPI_PATH}")
