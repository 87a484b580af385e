"""Replicas: weights loading on a spare real server, then failover across two real servers while
one of them is stopped in the middle of a loop of calls (this module stops the spare last)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import threading
import time

import httpx
import numpy as np
import pytest

import client
from client import AsyncTeacherClient, RetryPolicy, TeacherClient
from client.launcher import free_port

# Separate requests may be batched differently, which moves the last float32 bits (on a GPU
# by up to ~2e-5 at |log p| ~ 18: other batch shapes pick other kernels).
ATOL = 1e-5 if os.environ.get("TC_TEST_DEVICE", "cpu") == "cpu" else 1e-4

RETRY = RetryPolicy(retries=4, backoff_base=0.05, backoff_max=0.5)


def served(url: str, route: str = "/v1/logprobs") -> float:
    """Successful requests ``url`` has answered on ``route`` (from its /metrics)."""
    text = httpx.get(url + "/metrics").text
    pattern = rf'tokencredit_requests_total\{{route="{re.escape(route)}",status="200"\}} (\S+)'
    return sum(float(m) for m in re.findall(pattern, text))


def calls(n: int, vocab: int) -> list[list[dict]]:
    rng = np.random.default_rng(5)
    return [
        [
            {
                "context_ids": rng.integers(0, vocab, int(rng.integers(2, 20))).tolist(),
                "target_ids": rng.integers(0, vocab, int(rng.integers(1, 12))).tolist(),
            }
        ]
        for _ in range(n)
    ]


def test_load_weights_then_min_weights_version(spare, model_path):
    proc = spare()
    shutil.copytree(model_path, proc.weights_root / "ckpt-7", dirs_exist_ok=True)
    with TeacherClient(proc.url) as c:
        before = c.logprobs([([1, 2, 3], [4, 5])])
        loaded = c.load_weights("ckpt-7", version=7)
        assert loaded.weights_version == 7 and loaded.load_seconds >= 0
        after = c.logprobs([([1, 2, 3], [4, 5])], min_weights_version=7)
        assert after.weights_version == 7
        np.testing.assert_allclose(before[0].logprobs, after[0].logprobs, atol=ATOL)  # same weights
        with pytest.raises(client.StaleWeightsError):
            c.load_weights("ckpt-7", version=7)  # versions must increase
        with pytest.raises(client.PermissionDeniedError) as info:
            c.load_weights("../../etc")
        assert info.value.field == "path"


def test_failover_when_a_replica_stops_mid_run(server, spare):
    replica = spare()
    with TeacherClient(server.url) as single:
        work = calls(24, single.model().vocab_size)
        expected = [single.logprobs(c, top_k=2) for c in work]
    before = served(replica.url)

    results: list = [None] * len(work)
    errors: list[BaseException] = []
    with TeacherClient([replica.url, server.url], retry=RETRY) as pool:

        def loop() -> None:
            try:
                for i, c in enumerate(work):
                    results[i] = pool.logprobs(c, top_k=2)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        runner = threading.Thread(target=loop)
        runner.start()
        deadline = time.monotonic() + 60
        while sum(r is not None for r in results) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert served(replica.url) > before  # round-robin sent it work before it went away
        replica.stop()
        runner.join(120)
    assert not errors, errors
    assert all(r is not None for r in results)
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got[0].logprobs, want[0].logprobs, atol=ATOL)
        np.testing.assert_allclose(got[0].topk_ids, want[0].topk_ids, atol=ATOL)


def test_async_failover_with_a_dead_replica(server):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with TeacherClient(server.url) as single:
        work = calls(6, single.model().vocab_size)
        expected = [single.logprobs(c) for c in work]

    async def run():
        async with AsyncTeacherClient([dead, server.url], retry=RETRY) as ac:
            return [await ac.logprobs(c) for c in work]

    for got, want in zip(asyncio.run(run()), expected):
        np.testing.assert_allclose(got[0].logprobs, want[0].logprobs, atol=ATOL)
