"""The batcher merges requests that arrive together, and never makes a lone request wait."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from server.batcher import Batcher
from server.engines.base import ScoreItem
from server.engines.hf import HFEngine
from server.metrics import Metrics
from server.settings import Settings


class RecordingEngine:
    """The real engine, with the size of every batch it was given written down."""

    def __init__(self, engine: HFEngine):
        self.engine = engine
        self.batches: list[int] = []

    async def score(self, items):
        self.batches.append(len(items))
        return await self.engine.score(items)


@pytest.fixture(scope="module")
def engine(model_path):
    return HFEngine.load(Settings(model=model_path, device="cpu", dtype="float32"))


def items(n: int, seed: int) -> list[ScoreItem]:
    rng = np.random.default_rng(seed)
    return [ScoreItem((1, *rng.integers(0, 100, 5).tolist()), (2, 3, 4)) for _ in range(n)]


async def two_requests_10ms_apart(engine, requests_in_flight: int) -> list[int]:
    recording = RecordingEngine(engine)
    metrics = Metrics()
    metrics.requests_in_flight = requests_in_flight
    batcher = Batcher(recording, metrics, max_batch_tokens=4096, max_queue=8, batch_wait_ms=200)
    batcher.start()
    try:
        first = asyncio.create_task(batcher.score(items(2, 0)))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(batcher.score(items(3, 1)))
        a, b = await asyncio.gather(first, second)
    finally:
        await batcher.stop()
    assert (len(a), len(b)) == (2, 3)
    return recording.batches


def test_waits_for_a_request_still_being_read(engine):
    # two requests in the server: the second is still being read when the first is queued
    assert asyncio.run(two_requests_10ms_apart(engine, requests_in_flight=2)) == [5]


def test_lone_request_does_not_wait(engine):
    # one request in the server: it runs at once (the 200 ms wait would have merged them)
    assert asyncio.run(two_requests_10ms_apart(engine, requests_in_flight=1)) == [2, 3]
