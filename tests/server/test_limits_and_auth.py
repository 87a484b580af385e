"""Auth (401/403), body limit (413) and backpressure (429 + Retry-After) on a strict server."""

from __future__ import annotations

import concurrent.futures as cf
import json

import httpx
import numpy as np
import pytest

from proto.arrays import encode_packed


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


# ---- admission for generation, token caps, per-route body limits (a server of its own) ---------

LIMITS = {
    "TC_MAX_QUEUE": "1",
    "TC_MAX_GENERATE_TOKENS": "256",
    "TC_MAX_REQUEST_TOKENS": "4096",
    "TC_MAX_TEXT_BODY_BYTES": "65536",
    "TC_MAX_JSON_ITEMS": "8000",
    "TC_BATCH_WAIT_MS": "0",
}


@pytest.fixture(scope="module")
def limits_server(make_server):
    proc = make_server("server-limits", **LIMITS).start()
    yield proc
    proc.stop()


def hints_body(rollouts: int, max_tokens: int) -> dict:
    return {
        "groups": [
            {
                "problem": "What is 12+7-5?",
                "rollouts": [
                    {"text": f"12+7=19. 19-5={14 + i % 2}.", "correct": i % 2 == 0}
                    for i in range(rollouts)
                ],
            }
        ],
        "max_tokens": max_tokens,
        "temperature": 0.7,
    }


def test_generation_is_admitted_like_scoring(limits_server):
    """TC_MAX_QUEUE=1: of 8 concurrent /v1/hints calls some wait their turn and the rest get 429
    with Retry-After (all 8 were accepted before generation went through the queue)."""
    body = hints_body(rollouts=4, max_tokens=64)

    def send(_):
        return httpx.post(limits_server.url + "/v1/hints", json=body, timeout=300)

    with cf.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(send, range(8)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, [r.text[:200] for r in responses]
    assert 429 in codes and 200 in codes, codes
    limited = next(r for r in responses if r.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["type"] == "queue_full"


def test_generated_tokens_per_request_are_capped(limits_server):
    # 8 rollouts x 64 tokens = 512 > TC_MAX_GENERATE_TOKENS=256
    res = httpx.post(limits_server.url + "/v1/hints", json=hints_body(8, 64), timeout=120)
    assert res.status_code == 413, res.text
    error = res.json()["error"]
    assert error["type"] == "too_many_tokens" and error["field"] == "max_tokens"
    assert "TC_MAX_GENERATE_TOKENS" in error["message"]
    # AMR-SD writes its reflections through the same gate (reflection_max_tokens 64 x 8 rollouts)
    body = {
        "method": "amrsd",
        "params": {"reflection_max_tokens": 64},
        "groups": [
            {
                "problem": "What is 12+7-5?",
                "rollouts": [{"response_ids": [20, 21], "reward": float(i % 2)} for i in range(8)],
            }
        ],
    }
    res = httpx.post(limits_server.url + "/v1/advantages", json=body, timeout=120)
    assert res.status_code == 413, res.text
    assert res.json()["error"]["type"] == "too_many_tokens"


def test_scored_tokens_per_request_are_capped(limits_server):
    seq = {"context_ids": [1] * 500, "target_ids": [2] * 100}
    res = httpx.post(
        limits_server.url + "/v1/logprobs", json={"sequences": [seq] * 7}, timeout=120
    )  # 4200 tokens > 4096
    assert res.status_code == 413, res.text
    assert res.json()["error"]["type"] == "too_many_tokens"
    assert "TC_MAX_REQUEST_TOKENS" in res.json()["error"]["message"]
    res = httpx.post(limits_server.url + "/v1/logprobs", json={"sequences": [seq] * 6}, timeout=120)
    assert res.status_code == 200, res.text


def test_text_routes_have_their_own_body_limit(limits_server):
    text = "12+34=46 " * 8000  # 72 KB: over TC_MAX_TEXT_BODY_BYTES, far under TC_MAX_BODY_BYTES
    for path, body in (
        ("/v1/tokenize", {"text": text}),
        ("/get_reward", {"query": [text], "labels": ["46"]}),
        ("/v1/hints", {**hints_body(1, 4), "groups": [{"problem": text, "rollouts": []}]}),
    ):
        res = httpx.post(limits_server.url + path, json=body, timeout=60)
        assert res.status_code == 413, (path, res.text[:300])
        assert "TC_MAX_TEXT_BODY_BYTES" in res.json()["error"]["message"]
    # the scoring routes keep the general limit: 107 KB of packed ids pass the byte check (and
    # are then refused for their 20,000 tokens, a different limit)
    seq = {"context_ids": encode_packed(np.ones(20_000, np.int32)), "target_ids": [2]}
    res = httpx.post(limits_server.url + "/v1/logprobs", json={"sequences": [seq]}, timeout=60)
    assert len(res.request.content) > 65536
    assert "TC_MAX_TEXT_BODY_BYTES" not in res.text, res.text[:300]


def test_json_bodies_are_capped_by_their_parse_cost(limits_server):
    """TC_MAX_JSON_ITEMS=8000: commas plus 32 per object, counted while the body streams in,
    so a body whose parsing would hold the event loop is refused before it is parsed."""

    def refused(res):
        assert res.status_code == 413, res.text[:300]
        error = res.json()["error"]
        return error["type"] == "payload_too_large" and "TC_MAX_JSON_ITEMS" in error["message"]

    def grpo(ids):  # GRPO scores nothing: only the JSON limit can refuse 9,000 ids
        rollouts = [{"response_ids": ids, "reward": 1.0}, {"response_ids": ids, "reward": 0.0}]
        return {"method": "grpo", "groups": [{"rollouts": rollouts}]}

    url = limits_server.url + "/v1/advantages"
    assert refused(httpx.post(url, json=grpo([1] * 4500), timeout=60))
    assert httpx.post(url, json=grpo([1] * 3000), timeout=60).status_code == 200
    packed = httpx.post(url, json=grpo(encode_packed(np.ones(4500, np.int32))), timeout=60)
    assert packed.status_code == 200, packed.text[:300]

    def chunked():  # no Content-Length: counted while it streams
        body = json.dumps(grpo([1] * 4500)).encode()
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    headers = {"Content-Type": "application/json"}
    assert refused(httpx.post(url, content=chunked(), headers=headers, timeout=60))
    tiny = {"sequences": [{"context_ids": [1], "target_ids": [2]}] * 300}  # 9,600 items
    assert refused(httpx.post(limits_server.url + "/v1/logprobs", json=tiny, timeout=60))
