"""Retries, Retry-After, no-retry statuses, timeouts and round-robin, through `FaultProxy` (a
real HTTP server that fails by plan and forwards the rest to the real server)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

import client
from client import AsyncTeacherClient, RetryPolicy, TeacherClient, Timeout
from client.launcher import free_port

# Separate requests may be batched differently, which moves the last float32 bits.
ATOL = 1e-5

SEQS = [{"context_ids": [1, 2, 3], "target_ids": [4, 5, 6]}]
FAST = RetryPolicy(retries=4, backoff_base=0.01, backoff_max=0.05)


@pytest.fixture(scope="module")
def reference(server):
    with TeacherClient(server.url) as c:
        return c.logprobs(SEQS)[0].logprobs


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_retried_statuses_then_success(faults, reference, status):
    faults.fail(2, status)
    with TeacherClient(faults.url, retry=FAST) as c:
        res = c.logprobs(SEQS)
    np.testing.assert_allclose(res[0].logprobs, reference, atol=ATOL)
    assert faults.hits_on("/v1/logprobs") == 3
    ids = {rid for _, rid in faults.hits}
    assert len(ids) == 1  # the same X-Request-Id on every attempt of the call


def test_retry_after_is_honoured(faults, reference):
    faults.fail(2, 429, retry_after="1")
    with TeacherClient(faults.url, retry=FAST) as c:
        started = time.monotonic()
        res = c.logprobs(SEQS)
        elapsed = time.monotonic() - started
    np.testing.assert_allclose(res[0].logprobs, reference, atol=ATOL)
    assert faults.hits_on("/v1/logprobs") == 3
    assert 1.9 <= elapsed < 10.0  # two waits of Retry-After: 1 s (backoff alone is < 0.1 s)


def test_retry_after_is_capped(faults):
    faults.fail(1, 503, retry_after="3600")
    policy = RetryPolicy(retries=2, backoff_base=0.01, max_retry_after=0.5)
    with TeacherClient(faults.url, retry=policy) as c:
        started = time.monotonic()
        c.logprobs(SEQS)
        assert time.monotonic() - started < 5.0


def test_retries_run_out_with_the_last_error(faults):
    faults.fail(10, 429, retry_after="0")
    policy = RetryPolicy(retries=2, backoff_base=0.01)
    with TeacherClient(faults.url, retry=policy) as c, pytest.raises(client.RateLimitError) as info:
        c.logprobs(SEQS)
    err = info.value
    assert err.attempts == 3 and err.status == 429 and err.retry_after == 0.0
    assert faults.hits_on("/v1/logprobs") == 3
    assert "after 3 attempts" in str(err)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, client.BadRequestError),
        (401, client.AuthenticationError),
        (403, client.PermissionDeniedError),
        (409, client.ConflictError),
        (413, client.PayloadTooLargeError),
        (422, client.UnprocessableEntityError),
        (500, client.InternalServerError),
    ],
)
def test_never_retried(faults, status, cls):
    faults.fail(3, status)
    with TeacherClient(faults.url, retry=FAST) as c, pytest.raises(cls) as info:
        c.logprobs(SEQS)
    assert info.value.attempts == 1 and info.value.type == "injected"
    assert faults.hits_on("/v1/logprobs") == 1


def test_real_422_is_not_retried(faults):
    with TeacherClient(faults.url, retry=FAST) as c, pytest.raises(client.UnprocessableEntityError):
        c.logprobs([{"context_ids": [], "target_ids": [1]}])
    assert faults.hits_on("/v1/logprobs") == 1


def test_read_timeout_is_typed_and_not_retried(faults):
    faults.delay(3.0)
    with TeacherClient(faults.url, retry=FAST, timeout=Timeout(10.0, read=0.3)) as c:
        started = time.monotonic()
        with pytest.raises(client.ReadTimeout) as info:
            c.logprobs(SEQS)
        assert time.monotonic() - started < 2.0
        assert isinstance(info.value, client.TimeoutException) and info.value.attempts == 1
        assert faults.hits_on("/v1/logprobs") == 1
        # a per-call timeout overrides the client's; None disables it
        faults.delay(0.5)
        assert len(c.logprobs(SEQS, timeout=None)) == 1
        faults.delay(0.5)
        with pytest.raises(client.ReadTimeout):
            c.logprobs(SEQS, timeout=0.2)


def test_connect_error_is_retried_then_typed():
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}"
    with TeacherClient(url, retry=FAST) as c, pytest.raises(client.ConnectError) as info:
        c.model()
    assert info.value.attempts == 5
    assert isinstance(info.value, client.TransportError)


def test_round_robin_spreads_calls(server, make_proxy, reference):
    a, b = make_proxy(server.url), make_proxy(server.url)
    with TeacherClient([a.url, b.url]) as c:
        for _ in range(10):
            np.testing.assert_allclose(c.logprobs(SEQS)[0].logprobs, reference, atol=ATOL)
    assert a.hits_on("/v1/logprobs") == 5 and b.hits_on("/v1/logprobs") == 5


def test_failover_from_a_failing_replica(server, faults, reference):
    faults.fail_always(503, retry_after="30")
    with TeacherClient([faults.url, server.url], retry=FAST) as c:
        for _ in range(6):
            np.testing.assert_allclose(c.logprobs(SEQS)[0].logprobs, reference, atol=ATOL)
    # asked once, then skipped for its Retry-After while the healthy replica answers
    assert faults.hits_on("/v1/logprobs") == 1


def test_async_retries_and_retry_after(faults, reference):
    faults.fail(1, 429, retry_after="1")
    faults.fail(1, 503)

    async def run():
        async with AsyncTeacherClient(faults.url, retry=FAST) as ac:
            started = time.monotonic()
            res = await ac.logprobs(SEQS)
            return res, time.monotonic() - started

    res, elapsed = asyncio.run(run())
    np.testing.assert_allclose(res[0].logprobs, reference, atol=ATOL)
    assert faults.hits_on("/v1/logprobs") == 3 and 0.9 <= elapsed < 10.0
