"""Dynamic batching: concurrent requests are merged into engine calls under a token budget.

Each request submits its ``ScoreItem``s as one job. A single loop takes the oldest job, waits up
to ``batch_wait_ms`` for more (only while other HTTP requests are in flight but not yet queued:
a lone request never waits), packs jobs until ``max_batch_tokens`` is reached (always at least
one job, so an oversized request still runs; the engine splits it), and resolves every job's
future with its slice of the results. The queue is bounded: a full queue raises ``QueueFull``,
which the routes turn into 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from server.engines.base import ScoreItem, ScoreOutput, TeacherEngine
from server.metrics import Metrics

log = logging.getLogger(__name__)


class QueueFull(Exception):
    def __init__(self, retry_after: float):
        super().__init__(f"scoring queue is full; retry after {retry_after:.0f}s")
        self.retry_after = retry_after


@dataclass
class _Job:
    items: list[ScoreItem]
    future: asyncio.Future
    tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = sum(item.num_tokens for item in self.items)


class Batcher:
    def __init__(
        self,
        engine: TeacherEngine,
        metrics: Metrics,
        max_batch_tokens: int,
        max_queue: int,
        batch_wait_ms: float,
    ):
        self.engine = engine
        self.metrics = metrics
        self.max_batch_tokens = max_batch_tokens
        self.max_queue = max_queue
        self.batch_wait = batch_wait_ms / 1000.0
        self._queue: deque[_Job] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._tokens_per_second = 20_000.0  # refined from measured batches, for Retry-After

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tokencredit-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self._queue:
            if not job.future.done():
                job.future.set_exception(RuntimeError("server is shutting down"))
        self._queue.clear()

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def score(self, items: list[ScoreItem]) -> list[ScoreOutput]:
        if not items:
            return []
        if len(self._queue) >= self.max_queue:
            self.metrics.rejected.inc()
            queued = sum(job.tokens for job in self._queue)
            raise QueueFull(retry_after=max(1.0, round(queued / self._tokens_per_second)))
        job = _Job(items, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self.metrics.queue_depth.set(len(self._queue))
        self._wakeup.set()
        return await job.future

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.batch_wait > 0 and self._more_may_arrive():
                await asyncio.sleep(self.batch_wait)  # let concurrent requests arrive
            jobs = [self._queue.popleft()]
            tokens = jobs[0].tokens
            while self._queue and tokens + self._queue[0].tokens <= self.max_batch_tokens:
                job = self._queue.popleft()
                jobs.append(job)
                tokens += job.tokens
            self.metrics.queue_depth.set(len(self._queue))
            jobs = [job for job in jobs if not job.future.cancelled()]  # client went away
            if jobs:
                await self._run_batch(jobs, tokens)

    def _more_may_arrive(self) -> bool:
        """Some request is being handled that has not queued a job yet (still being read or
        validated): worth a short wait. Each queued job belongs to one such request."""
        return self.metrics.requests_in_flight > len(self._queue)

    async def _run_batch(self, jobs: list[_Job], tokens: int) -> None:
        items = [item for job in jobs for item in job.items]
        started = time.perf_counter()
        try:
            outputs = await self.engine.score(items)
        except Exception as exc:
            log.exception("engine scoring failed for a batch of %d sequences", len(items))
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - started
        self._tokens_per_second = 0.8 * self._tokens_per_second + 0.2 * tokens / max(elapsed, 1e-6)
        self.metrics.batch_size.observe(len(items))
        self.metrics.forward_seconds.observe(elapsed)
        self.metrics.tokens_processed.inc(tokens)
        self.metrics.tokens_scored.inc(sum(len(item.target_ids) for item in items))
        start = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result(outputs[start : start + len(job.items)])
            start += len(job.items)
