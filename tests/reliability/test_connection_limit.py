"""Above uvicorn's ``--limit-concurrency`` (connections + requests in flight) a request is refused
before the app runs: 503 in the service's JSON error shape, with ``Retry-After``, and the
connection closed (server/http_protocol.py). A real server with the limit lowered to 2."""

from __future__ import annotations

import socket

import httpx
import pytest


@pytest.fixture(scope="module")
def small_server(make_server):
    with make_server("server-connection-limit", uvicorn_args=("--limit-concurrency", "2")) as proc:
        yield proc


def test_over_the_connection_limit_is_a_json_503_with_retry_after(small_server):
    url = small_server.url + "/healthz"
    assert httpx.get(url, timeout=30).status_code == 200  # alone: under the limit
    # An idle open connection counts; with it, the next connection reaches the limit of 2.
    with socket.create_connection(("127.0.0.1", small_server.port), timeout=30):
        r = httpx.get(url, timeout=30)
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/json"
    assert r.headers["retry-after"] == "1"
    assert r.headers["connection"] == "close"
    assert r.json()["error"]["type"] == "over_capacity"
    assert "limit-concurrency" in r.json()["error"]["message"]
    assert httpx.get(url, timeout=30).status_code == 200  # the idle one closed: served again
