"""Request ids in logs and error bodies, and the content-type error, in-process (ASGI transport).

The app is ``server.app.create_app()`` itself, driven through ``httpx.ASGITransport`` without its
lifespan (no model is loaded: these paths never reach the engine). One route that raises is added
to reach the last-resort 500 path, which no correct route takes on purpose.
"""

from __future__ import annotations

import logging

import httpx
import pytest

from server.app import create_app
from server.middleware import RequestIdFilter

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def app():
    app = create_app()

    @app.get("/boom")
    async def boom():
        raise RuntimeError("kaboom")

    return app


@pytest.fixture
def records():
    """Every log record of the app, with the request id the filter gives it."""
    got: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    handler = Keep(level=logging.DEBUG)
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield got
    root.removeHandler(handler)
    root.setLevel(old_level)


async def send(app, method: str, path: str, **kw) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, path, **kw)


async def test_unhandled_error_names_its_request_id(app, records):
    r = await send(app, "GET", "/boom", headers={"X-Request-Id": "trace-42"})
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "trace-42"
    assert r.json()["error"]["type"] == "internal_error"
    assert "trace-42" in r.json()["error"]["message"]
    errors = [rec for rec in records if rec.getMessage() == "unhandled error"]
    assert len(errors) == 1, "logged once, not again by the framework"
    assert errors[0].request_id == "trace-42" and errors[0].exc_info is not None


async def test_access_line_carries_the_request_id(app, records):
    r = await send(app, "GET", "/healthz", headers={"X-Request-Id": "abc.DEF-1:2_3"})
    assert r.headers["x-request-id"] == "abc.DEF-1:2_3"
    access = [rec for rec in records if rec.name == "server.access"]
    assert len(access) == 1
    assert access[0].request_id == "abc.DEF-1:2_3"
    assert '"GET /healthz"' in access[0].getMessage()


@pytest.mark.parametrize("given", ["a b", "x" * 129, "id\u2028forged", "<script>", ""])
async def test_unsafe_request_ids_are_replaced(app, records, given):
    r = await send(app, "GET", "/healthz", headers={"X-Request-Id": given.encode("utf-8")})
    rid = r.headers["x-request-id"]
    assert rid != given and len(rid) == 32
    (access,) = [rec for rec in records if rec.name == "server.access"]
    assert access.request_id == rid


async def test_json_body_without_content_type_is_415_naming_it(app):
    r = await send(app, "POST", "/v1/tokenize", content=b'{"text": "1+1"}')
    assert r.status_code == 415
    body = r.json()["error"]
    assert body["type"] == "unsupported_media_type" and body["field"] == "Content-Type"
    assert "application/json" in body["message"]


async def test_json_content_type_still_validates_fields(app):
    r = await send(app, "POST", "/v1/tokenize", json={"textz": "1+1"})
    assert r.status_code == 422
