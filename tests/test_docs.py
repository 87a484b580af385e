"""docs/api.md is the contract: its routes and fields stay in step with proto/openapi.json, and
every reference inside the repository points inside it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
API = (ROOT / "docs" / "api.md").read_text()
SPEC = json.loads((ROOT / "proto" / "openapi.json").read_text())
# Keys of objects the schema leaves free-form: AntiSD's gate state (docs/algorithms.md §1).
FREE_FORM_KEYS = {"warmup_history", "h_warm", "tau_down", "g"}
# Routes whose shapes are other projects' protocols (vLLM, SGLang): named in docs/api.md's
# "Compatibility routes", fields documented in docs/protocols.md.
COMPAT = API.split("## Compatibility routes", 1)[1] if "## Compatibility routes" in API else ""
COMPAT_ROUTES = {f"{m} {p}" for m, p in re.findall(r"\b(GET|POST) (/[A-Za-z0-9_/]+)", COMPAT)}


def resolve(schema: dict) -> dict:
    while "$ref" in schema:
        schema = SPEC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def field_names(schema: dict, seen: set[str] | None = None) -> set[str]:
    """Every property name reachable from ``schema`` (refs, arrays, unions followed)."""
    seen = set() if seen is None else seen
    names: set[str] = set()
    if "$ref" in schema:
        ref = schema["$ref"]
        if ref in seen:
            return names
        seen.add(ref)
    schema = resolve(schema)
    for name, sub in schema.get("properties", {}).items():
        names.add(name)
        names |= field_names(sub, seen)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            names |= field_names(schema[key], seen)
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            names |= field_names(sub, seen)
    return names


def spec_routes() -> set[str]:
    return {f"{m.upper()} {p}" for p, ops in SPEC["paths"].items() for m in ops}


def route_schemas():
    """Per route, its request and 200-response schemas. Routes that stream a pre-serialised body
    declare their response as a string; their model is the request's name with Response."""
    components = SPEC["components"]["schemas"]
    for path, ops in SPEC["paths"].items():
        for method, op in ops.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            ok = op["responses"].get("200", {}).get("content", {}).get("application/json", {})
            schemas = [s["schema"] for s in (body, ok) if "$ref" in s.get("schema", {})]
            request = body.get("schema", {}).get("$ref", "")
            paired = request.removesuffix("Request") + "Response"
            if request.endswith("Request") and paired.rsplit("/", 1)[1] in components:
                schemas.append({"$ref": paired})
            yield f"{method.upper()} {path}", schemas


def test_every_route_is_documented_and_every_documented_route_exists():
    documented = set(re.findall(r"\b(GET|POST) (/[A-Za-z0-9_/]+)", API))
    documented = {f"{m} {p}" for m, p in documented}
    assert documented == spec_routes()


def test_every_field_of_every_route_is_documented():
    missing = {}
    for route, schemas in route_schemas():
        if route in COMPAT_ROUTES:
            continue
        names = set().union(*(field_names(s) for s in schemas)) if schemas else set()
        absent = sorted(n for n in names if f'"{n}"' not in API and f"`{n}`" not in API)
        if absent:
            missing[route] = absent
    assert not missing, f"fields in proto/openapi.json that docs/api.md never names: {missing}"


def test_every_documented_json_key_is_a_field():
    known = set(FREE_FORM_KEYS)
    for route, schemas in route_schemas():
        if route in COMPAT_ROUTES:
            continue
        for s in schemas:
            known |= field_names(s)
    known |= field_names({"$ref": "#/components/schemas/ErrorResponse"})
    known |= field_names({"$ref": "#/components/schemas/PackedArray"})
    blocks = re.findall(r"```json\n(.*?)```", API, flags=re.DOTALL)
    keys = {k for block in blocks for k in re.findall(r'"([A-Za-z_]+)":', block)}
    assert keys <= known, f"docs/api.md examples use keys the schema lacks: {sorted(keys - known)}"


def test_references_stay_inside_the_repository():
    outside = re.compile(r"\.\./" + "shared|" + "FIELD" + "_NOTES")  # split: no self-match
    # The repository's own files (tracked, or new and not ignored): generated, ignored files
    # such as an egg-info written from an older README are not the product's text.
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    found = []
    for path in (ROOT / name for name in listed):
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # binary files (weights, images)
        found += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in outside.finditer(text)]
    assert not found, found


def test_doc_links_resolve():
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
