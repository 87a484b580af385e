"""Auth (401/403), body limit (413) and backpressure (429 + Retry-After) on a strict server."""

from __future__ import annotations

import concurrent.futures as cf

import httpx


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


SMALL = {"sequences": [{"context_ids": [1, 2], "target_ids": [3]}]}


def test_keys_required_except_health_and_metrics(strict_server):
    url = strict_server.url
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(url + path).status_code == 200
    res = httpx.post(url + "/v1/logprobs", json=SMALL)
    assert res.status_code == 401 and res.json()["error"]["type"] == "unauthorized"
    res = httpx.post(url + "/v1/logprobs", json=SMALL, headers=bearer("wrong"))
    assert res.status_code == 403
    assert httpx.get(url + "/v1/model").status_code == 401
    res = httpx.post(url + "/v1/logprobs", json=SMALL, headers=bearer(strict_server.api_key))
    assert res.status_code == 200, res.text


def test_weights_need_admin_key(strict_server):
    body = {"path": "nowhere"}
    res = httpx.post(
        strict_server.url + "/v1/weights", json=body, headers=bearer(strict_server.api_key)
    )
    assert res.status_code == 403
    res = httpx.post(
        strict_server.url + "/v1/weights",
        json={"path": "../etc"},
        headers=bearer(strict_server.admin_key),
    )
    assert res.status_code == 403 and res.json()["error"]["field"] == "path"


def test_body_over_limit_is_413(strict_server):
    big = {"sequences": [{"context_ids": [1] * 40_000, "target_ids": [2]}]}
    res = httpx.post(
        strict_server.url + "/v1/logprobs", json=big, headers=bearer(strict_server.api_key)
    )
    assert res.status_code == 413 and res.json()["error"]["type"] == "payload_too_large"


def test_full_queue_answers_429_with_retry_after(strict_server):
    """Queue of one: a burst of concurrent requests sees some 429s, never a 5xx."""
    seq = {"context_ids": list(range(1, 200)), "target_ids": list(range(1, 50))}
    body = {"sequences": [seq] * 4, "entropy": True, "top_k": 5}

    def send(_):
        return httpx.post(
            strict_server.url + "/v1/logprobs",
            json=body,
            headers=bearer(strict_server.api_key),
            timeout=120,
        )

    with cf.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(send, range(32)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    assert 429 in codes and 200 in codes
    limited = next(r for r in responses if r.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["type"] == "queue_full"
