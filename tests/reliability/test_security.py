"""Security: API keys on every route but health and metrics, admin key for weights, weights
paths confined to TC_WEIGHTS_ROOT, the body limit also for chunked bodies, keys never logged,
and no unpickling anywhere (statically, and a pickled checkpoint is refused at run time).

One strict server (keys, 64 KiB body limit, debug logging) serves the whole module. Routes come
from ``server.app.create_app().routes``, so a route added later is covered without editing
this file.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import tokenize
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM

REPO = Path(__file__).resolve().parents[2]
API_KEY = "sec-api-" + secrets.token_hex(8)
ADMIN_KEY = "sec-admin-" + secrets.token_hex(8)
WRONG_KEY = "sec-wrong-" + secrets.token_hex(8)
BODY_LIMIT = 64 * 1024

# docs/api.md: the only routes open without a key.
PUBLIC = {"/healthz", "/readyz", "/metrics", "/health"}  # /health: open, as on vLLM
ADMIN = {"/v1/weights", "/v1/weights/transfer/init", "/v1/weights/transfer/update"}
# The vLLM/SGLang-compatible routes answer in vLLM's error shape: {"error": {"type": ...}}
# with vLLM's types (docs/protocols.md).
VLLM_SHAPED = {"/v1/models", "/v1/completions", "/generate"}
ERROR_TYPE = {
    401: ("unauthorized", "AuthenticationError"),
    403: ("forbidden", "PermissionDeniedError"),
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory, model_path):
    root = tmp_path_factory.mktemp("sec-weights")
    outside = tmp_path_factory.mktemp("sec-outside")
    (outside / "evil").mkdir()
    (root / "inside").mkdir()
    os.symlink(outside / "evil", root / "escape")  # a symlink out of the root
    os.symlink(root / "inside", root / "inside-link")  # a symlink that stays inside
    os.symlink(root / "loop", root / "loop")  # a symlink to itself
    # A complete, loadable checkpoint, but as pytorch_model.bin (a pickle): must be refused.
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.save_pretrained(root / "good")  # safetensors: loads
    model.config.save_pretrained(root / "pickled")
    torch.save(model.state_dict(), root / "pickled" / "pytorch_model.bin")
    return root, outside


@pytest.fixture(scope="module")
def secure(make_server, weights_root):
    root, _ = weights_root
    env = {
        "TC_LOG_LEVEL": "debug",
        "TC_API_KEYS": f"other-key-1,{API_KEY}",
        "TC_ADMIN_KEYS": ADMIN_KEY,
        "TC_MAX_BODY_BYTES": str(BODY_LIMIT),
        "TC_WEIGHTS_ROOT": str(root),
    }
    with make_server("sec-server", **env) as server:
        yield server


def app_routes() -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, HEAD aside."""
    from server.app import create_app

    app = create_app()
    docs = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    out = []
    for route in app.routes:
        if route.path in docs:
            continue
        for method in sorted(getattr(route, "methods", None) or ()):
            if method != "HEAD":
                out.append((method, route.path))
    return out


ROUTES = app_routes()
PROTECTED = [r for r in ROUTES if r[1] not in PUBLIC]


def send(url: str, method: str, path: str, headers: dict[str, str] | None = None):
    path = re.sub(r"\{[^}]+\}", "x", path)  # path parameters, should a route grow one
    body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    return httpx.request(method, url + path, headers=headers, timeout=60, **body)


def test_route_list_covers_the_schema():
    """The routes iterated here are the ones the committed schema documents (nothing hidden)."""
    import json

    schema = json.loads((REPO / "proto" / "openapi.json").read_text())
    documented = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    assert documented == set(ROUTES)
    assert {p for _, p in ROUTES} >= PUBLIC and len(PROTECTED) >= 6


@pytest.mark.parametrize("method,path", PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
def test_every_route_but_health_needs_a_key(secure, method, path):
    native = path not in VLLM_SHAPED

    def error_type(status: int) -> str:
        return ERROR_TYPE[status][0 if native else 1]

    res = send(secure.url, method, path)
    assert res.status_code == 401, res.text
    assert res.json()["error"]["type"] == error_type(401)
    assert res.headers["www-authenticate"] == "Bearer"
    for bad in (
        bearer(WRONG_KEY),
        bearer(API_KEY[:-1]),  # a prefix of a real key
        bearer(API_KEY + "x"),
        bearer("other-key-1,"),  # not split on commas
        {"Authorization": f"Bearer {API_KEY.upper()}"},
    ):
        res = send(secure.url, method, path, bad)
        assert res.status_code == 403, (bad, res.text)
        assert res.json()["error"]["type"] == error_type(403)
        assert bad["Authorization"].split()[-1] not in res.text  # never echoed back
    for bad in ({"Authorization": f"Basic {API_KEY}"}, {"Authorization": API_KEY}):
        assert send(secure.url, method, path, bad).status_code == 401
    # Odd bytes in the header are a 4xx, not a crash.
    res = send(secure.url, method, path, {"Authorization": b"Bearer \xff\xfe"})
    assert res.status_code in (400, 401, 403), res.text
    # The right key gets through auth (the empty body is then a 422, or the route answers).
    res = send(secure.url, method, path, bearer(API_KEY))
    if path in ADMIN:
        assert res.status_code == 403 and "admin" in res.json()["error"]["message"]
    else:
        assert res.status_code not in (401, 403), res.text
        assert res.status_code < 500, res.text
    res = send(secure.url, method, path, bearer(ADMIN_KEY))  # admin keys are API keys too
    assert res.status_code not in (401, 403) and res.status_code < 500, res.text


@pytest.mark.parametrize("path", sorted(PUBLIC))
def test_health_and_metrics_are_open(secure, path):
    assert httpx.get(secure.url + path, timeout=30).status_code == 200
    # A bad key on an open route is not an error either (probes may carry one).
    assert httpx.get(secure.url + path, headers=bearer(WRONG_KEY), timeout=30).status_code == 200


def test_interactive_docs_are_off_when_keys_are_set(secure):
    """With keys, nothing but health and metrics answers without one: no open docs pages."""
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert httpx.get(secure.url + path, timeout=30).status_code == 404


def admin_load(server, path: str) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/weights", json={"path": path}, headers=bearer(ADMIN_KEY), timeout=120
    )


def test_weights_paths_are_confined_to_the_root(secure, weights_root):
    root, outside = weights_root
    before = httpx.get(secure.url + "/readyz").json()["weights_version"]
    escapes = [
        "..",
        "../",
        f"../{outside.name}/evil",
        "inside/../../x",
        "inside/../..",
        "./../inside",
        "/",
        "/etc",
        "//etc",
        "/proc/self",
        str(outside / "evil"),  # absolute, outside
        str(root) + "/../" + outside.name,
        "escape",  # symlink leaving the root
        "escape/",
        "inside-link/../escape",
    ]
    for path in escapes:
        res = admin_load(secure, path)
        assert res.status_code == 403, (path, res.text)
        assert res.json()["error"]["field"] == "path"
    not_models = [
        "inside",
        "inside-link",  # a symlink that stays inside is fine; the folder just holds no model
        "missing",
        "loop",
        "%2e%2e",  # no URL decoding: a (missing) folder literally named so
        "~",
        "a\x00b",
        "x" * 5000,
        str(root / "missing"),  # absolute, but inside the root
    ]
    for path in not_models:
        res = admin_load(secure, path)
        assert res.status_code == 422, (path[:40], res.text[:300])
        assert res.json()["error"]["field"] == "path"
    assert httpx.get(secure.url + "/readyz").json()["weights_version"] == before


def test_pickled_checkpoint_is_refused(secure):
    """A loadable pytorch_model.bin (a pickle) is not loaded: safetensors only."""
    before = httpx.get(secure.url + "/readyz").json()["weights_version"]
    res = admin_load(secure, "pickled")
    assert res.status_code == 422, res.text
    assert "safetensors" in res.json()["error"]["message"]
    assert httpx.get(secure.url + "/readyz").json()["weights_version"] == before


def test_weights_need_the_admin_key(secure):
    for headers in ({}, bearer(API_KEY), bearer(WRONG_KEY)):
        res = httpx.post(secure.url + "/v1/weights", json={"path": "inside"}, headers=headers)
        assert res.status_code in (401, 403), res.text


def logprobs_body(n_ids: int) -> dict:
    return {"sequences": [{"context_ids": [1] * n_ids, "target_ids": [2]}]}


def test_body_limit_with_content_length(secure):
    res = httpx.post(
        secure.url + "/v1/logprobs", json=logprobs_body(BODY_LIMIT // 2), headers=bearer(API_KEY)
    )
    assert res.status_code == 413 and res.json()["error"]["type"] == "payload_too_large"


def chunks(payload: bytes, size: int = 4096):
    """A generator body: httpx sends it chunked, with no Content-Length."""
    for i in range(0, len(payload), size):
        yield payload[i : i + size]


@pytest.mark.parametrize("size", [16, 4096, 60_000])
def test_body_limit_with_chunked_transfer(secure, size):
    import json

    payload = json.dumps(logprobs_body(BODY_LIMIT)).encode()
    assert len(payload) > 2 * BODY_LIMIT
    res = httpx.post(
        secure.url + "/v1/logprobs",
        content=chunks(payload, size),
        headers={**bearer(API_KEY), "Content-Type": "application/json"},
        timeout=60,
    )
    assert "content-length" not in res.request.headers
    assert res.request.headers["transfer-encoding"] == "chunked"
    assert res.status_code == 413, res.text[:300]
    assert res.json()["error"]["type"] == "payload_too_large"
    assert res.headers["x-request-id"]
    # A chunked body under the limit is served.
    small = json.dumps({"sequences": [{"context_ids": [1, 2], "target_ids": [3]}]}).encode()
    res = httpx.post(
        secure.url + "/v1/logprobs",
        content=chunks(small, 7),
        headers={**bearer(API_KEY), "Content-Type": "application/json"},
        timeout=60,
    )
    assert res.status_code == 200, res.text


def test_keys_never_logged(secure):
    """Authenticated, wrong-key, admin and failing requests on a debug-level server: no key
    string appears in its log (or in any error body)."""
    url = secure.url
    wrong_admin = "sec-wrong-admin-" + secrets.token_hex(8)
    calls = [
        ("POST", "/v1/logprobs", bearer(API_KEY), logprobs_body(3)),
        ("POST", "/v1/logprobs", bearer(API_KEY), {"sequences": [{"context_ids": [10**9]}]}),
        ("POST", "/v1/logprobs", bearer(WRONG_KEY), logprobs_body(3)),
        ("POST", "/v1/logprobs", {"Authorization": f"Basic {API_KEY}"}, logprobs_body(3)),
        ("GET", "/v1/model", bearer(API_KEY), None),
        ("GET", "/v1/model", bearer(WRONG_KEY), None),
        ("POST", "/v1/tokenize", bearer(API_KEY), {"text": "1+1="}),
        ("POST", "/v1/weights", bearer(API_KEY), {"path": "inside"}),
        ("POST", "/v1/weights", bearer(wrong_admin), {"path": "inside"}),
        ("POST", "/v1/weights", bearer(ADMIN_KEY), {"path": "../x"}),
        ("POST", "/v1/weights", bearer(ADMIN_KEY), {"path": "inside"}),
        ("POST", "/v1/weights", bearer(ADMIN_KEY), {"path": "good"}),  # 200, logged
        ("POST", "/v1/logprobs", bearer(API_KEY), logprobs_body(BODY_LIMIT)),  # 413
        ("GET", "/metrics", bearer(WRONG_KEY), None),
    ]
    for method, path, headers, body in calls:
        res = httpx.request(method, url + path, headers=headers, json=body, timeout=60)
        assert res.status_code < 500, (path, res.text[:300])
        for key in (API_KEY, ADMIN_KEY, WRONG_KEY, wrong_admin):
            assert key not in res.text
    log = secure.log_path.read_text()
    # The log does record these requests (access lines, the weights load), just not the keys.
    assert log.count('"POST /v1/weights"') >= 5  # the server's own access lines
    assert "loaded from good" in log
    for key in (API_KEY, ADMIN_KEY, WRONG_KEY, wrong_admin):
        assert key not in log
        assert key[-8:] not in log  # not even its tail


# ---- static: nothing deserialises with pickle, nothing evaluates request data ------------------

SCANNED = ("server", "proto")


def code_tokens(path: Path) -> list[tokenize.TokenInfo]:
    """A file's tokens without comments and strings (docstrings may name what code must not do)."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return [t for t in tokens if t.type in (tokenize.NAME, tokenize.OP)]


def unsafe_calls(path: Path) -> list[str]:
    toks = code_tokens(path)
    name = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
    found = []
    for i, tok in enumerate(toks):
        prev = toks[i - 1].string if i else ""
        nxt = toks[i + 1].string if i + 1 < len(toks) else ""
        after = toks[i + 2].string if i + 2 < len(toks) else ""
        where = f"{name}:{tok.start[0]}"
        if tok.string in (
            "pickle",
            "cPickle",
            "dill",
            "marshal",
            "shelve",
            "joblib",
            "cloudpickle",
        ):
            found.append(f"{where}: {tok.string}")
        elif tok.string in ("eval", "exec", "compile") and nxt == "(" and prev != ".":
            found.append(f"{where}: {tok.string}(")
        elif (
            tok.string == "load"
            and prev == "."
            and i >= 2
            and toks[i - 2].string in ("torch", "yaml")
        ):
            found.append(f"{where}: {toks[i - 2].string}.load")
        elif tok.string in ("unsafe_load", "full_load", "UnsafeLoader", "FullLoader"):
            found.append(f"{where}: yaml {tok.string}")
        elif tok.string in ("allow_pickle", "trust_remote_code") and nxt == "=" and after == "True":
            found.append(f"{where}: {tok.string}=True")
        elif tok.string == "weights_only" and nxt == "=" and after == "False":
            found.append(f"{where}: weights_only=False")
        elif tok.string == "use_safetensors" and nxt == "=" and after != "True":
            found.append(f"{where}: use_safetensors={after}")
    return found


def test_scanner_sees_what_it_should(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nx = torch.load(p)\ny = eval(s)\nmodel.eval()\n"
        "# torch.load in a comment is fine\n'''eval( in a docstring too'''\n"
        "m = f(trust_remote_code=True)\n"
    )
    got = [f.split(": ", 1)[1] for f in unsafe_calls(bad)]
    assert got == ["pickle", "torch.load", "eval(", "trust_remote_code=True"]


def test_no_pickle_or_eval_in_server_sources():
    files = [
        f
        for d in SCANNED
        for f in sorted((REPO / d).rglob("*.py"))
        if "default_model" not in f.parts and "__pycache__" not in f.parts
    ]
    assert len(files) > 10
    found = [hit for f in files for hit in unsafe_calls(f)]
    assert not found, "unsafe deserialisation or eval in server code:\n" + "\n".join(found)


def test_models_load_from_safetensors_only():
    """Every transformers model load in the server passes use_safetensors=True."""
    for f in sorted((REPO / "server").rglob("*.py")):
        if "default_model" in f.parts:
            continue
        text = f.read_text()
        for m in re.finditer(r"ModelFor\w+\.from_pretrained\(", text):
            call = text[m.end() : text.index(")", m.end())]
            assert "use_safetensors=True" in call, f"{f.relative_to(REPO)}: {call!r}"
