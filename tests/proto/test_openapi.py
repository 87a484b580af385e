"""The committed proto/openapi.json is exactly what the app generates."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_exporter():
    spec = importlib.util.spec_from_file_location(
        "export_openapi", ROOT / "scripts" / "export_openapi.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_openapi_matches_app():
    exporter = load_exporter()
    committed = (ROOT / "proto" / "openapi.json").read_text()
    assert json.loads(committed) == json.loads(exporter.generate()), (
        "proto/openapi.json is stale: run `python scripts/export_openapi.py` and commit the result"
    )


def test_every_api_route_is_in_the_schema():
    paths = json.loads((ROOT / "proto" / "openapi.json").read_text())["paths"]
    for path in (
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/model",
        "/v1/tokenize",
        "/v1/logprobs",
        "/v1/advantages",
        "/v1/weights",
    ):
        assert path in paths, path
