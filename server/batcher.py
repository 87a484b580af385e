"""Dynamic batching and admission: every engine call, scoring or generation, goes through here.

Scoring. Each request submits its ``ScoreItem``s as one job. A single loop takes the oldest job,
waits up to ``batch_wait_ms`` for more (only while other HTTP requests are in flight but not yet
queued: a lone request never waits), packs jobs until ``max_batch_tokens`` is reached (always at
least one job, so an oversized request still runs; the engine splits it), and resolves every
job's future with its slice of the results.

Generation (``/v1/hints``, AMR-SD reflections) is admitted the same way but runs in its own
lane, one job at a time, beside scoring: scoring batches never wait behind a generation (a long
one would hold them for its whole length), and generation jobs wait for each other, bounded by
the same queue. A job is generated in slices of ``max_batch_tokens`` (prompt + ``max_tokens``
per item, at least one item), so a client that went away stops costing the engine after the
current slice.

Admission. Jobs waiting (scoring and generation together; the generation job being sliced is
running, not waiting) are bounded by ``max_queue``: a full queue raises ``QueueFull``, a 429 with
``Retry-After`` (a ``ServiceError``). One request may not ask for more than
``max_request_tokens`` scored tokens (context + target, summed) or ``max_generate_tokens``
generated tokens (``max_tokens`` summed over its items): 413 ``too_many_tokens``, so that one
small body cannot hold the engine for minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from server.engines.base import (
    GenerateItem,
    GenerateOutput,
    ScoreItem,
    ScoreOutput,
    TeacherEngine,
)
from server.errors import ServiceError
from server.metrics import Metrics

log = logging.getLogger(__name__)


class QueueFull(ServiceError):
    """429 with ``Retry-After``: ``max_queue`` jobs (scoring or generation) already wait."""

    def __init__(self, retry_after: float):
        super().__init__(
            429,
            f"the engine queue is full; retry after {retry_after:.0f}s",
            headers={"Retry-After": str(int(retry_after))},
        )
        self.retry_after = retry_after


@dataclass
class _Job:
    items: list[ScoreItem]
    future: asyncio.Future
    tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = sum(item.num_tokens for item in self.items)


@dataclass
class _GenerateJob:
    items: list[GenerateItem]
    future: asyncio.Future
    outputs: list[GenerateOutput] = field(default_factory=list)  # of items[: len(outputs)]
    tokens: int = field(init=False)  # prompt + max_tokens, summed: what it may still cost

    def __post_init__(self) -> None:
        self.tokens = sum(len(item.prompt_ids) + item.max_tokens for item in self.items)

    def next_slice(self, budget: int) -> list[GenerateItem]:
        """The next items that fit ``budget`` (prompt + max_tokens each); at least one."""
        start = len(self.outputs)
        end, used = start, 0
        while end < len(self.items):
            cost = len(self.items[end].prompt_ids) + self.items[end].max_tokens
            if end > start and used + cost > budget:
                break
            used += cost
            end += 1
        return self.items[start:end]


class Batcher:
    def __init__(
        self,
        engine: TeacherEngine,
        metrics: Metrics,
        max_batch_tokens: int,
        max_queue: int,
        batch_wait_ms: float,
        max_request_tokens: int | None = None,
        max_generate_tokens: int | None = None,
    ):
        self.engine = engine
        self.metrics = metrics
        self.max_batch_tokens = max_batch_tokens
        self.max_queue = max_queue
        self.batch_wait = batch_wait_ms / 1000.0
        self.max_request_tokens = max_request_tokens
        self.max_generate_tokens = max_generate_tokens
        self._queue: deque[_Job] = deque()
        self._generate_queue: deque[_GenerateJob] = deque()
        self._generating: _GenerateJob | None = None  # the job being sliced
        self._wakeup = asyncio.Event()
        self._generate_wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._generate_task: asyncio.Task | None = None
        self._tokens_per_second = 20_000.0  # refined from measured batches, for Retry-After
        self._generated_per_second = 200.0  # generated tokens, refined from measured slices

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tokencredit-batcher")
        self._generate_task = asyncio.create_task(
            self._run_generation(), name="tokencredit-generation"
        )

    async def stop(self) -> None:
        for task in (self._task, self._generate_task):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        pending = [*self._queue, *self._generate_queue]
        if self._generating is not None:
            pending.append(self._generating)
        for job in pending:
            if not job.future.done():
                job.future.set_exception(RuntimeError("server is shutting down"))
        self._queue.clear()
        self._generate_queue.clear()
        self._generating = None

    @property
    def depth(self) -> int:
        """Jobs waiting for the engine (scoring and generation; not the one being generated)."""
        return len(self._queue) + len(self._generate_queue)

    def _admit(self) -> None:
        """Raise ``QueueFull`` when ``max_queue`` jobs already wait."""
        if self.depth >= self.max_queue:
            self.metrics.rejected.inc()
            seconds = sum(job.tokens for job in self._queue) / self._tokens_per_second
            generating = [*self._generate_queue]
            if self._generating is not None:
                generating.append(self._generating)
            seconds += sum(
                it.max_tokens for job in generating for it in job.items[len(job.outputs) :]
            ) / max(self._generated_per_second, 1.0)
            raise QueueFull(retry_after=max(1.0, round(seconds)))

    def _set_depth(self) -> None:
        self.metrics.queue_depth.set(self.depth)

    async def score(self, items: list[ScoreItem]) -> list[ScoreOutput]:
        if not items:
            return []
        job = _Job(items, asyncio.get_running_loop().create_future())
        if self.max_request_tokens is not None and job.tokens > self.max_request_tokens:
            raise ServiceError(
                413,
                f"the request needs {job.tokens} tokens scored (context + target over all its "
                f"sequences), over this server's TC_MAX_REQUEST_TOKENS={self.max_request_tokens}: "
                "split it into smaller requests",
                type="too_many_tokens",
            )
        self._admit()
        self._queue.append(job)
        self._set_depth()
        self._wakeup.set()
        return await job.future

    async def generate(self, items: list[GenerateItem]) -> list[GenerateOutput]:
        """Generate under the same admission control as scoring (see the module docstring)."""
        if not items:
            return []
        total = sum(item.max_tokens for item in items)
        if self.max_generate_tokens is not None and total > self.max_generate_tokens:
            raise ServiceError(
                413,
                f"the request may generate {total} tokens ({len(items)} generations × max_tokens), "
                f"over this server's TC_MAX_GENERATE_TOKENS={self.max_generate_tokens}: lower "
                "max_tokens or send fewer rollouts per request",
                type="too_many_tokens",
                field="max_tokens",
            )
        self._admit()
        job = _GenerateJob(items, asyncio.get_running_loop().create_future())
        self._generate_queue.append(job)
        self._set_depth()
        self._generate_wakeup.set()
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
            self._set_depth()
            jobs = [job for job in jobs if not job.future.cancelled()]  # client went away
            if jobs:
                await self._run_batch(jobs, tokens)

    async def _run_generation(self) -> None:
        while True:
            if not self._generate_queue and self._generating is None:
                self._generate_wakeup.clear()
                await self._generate_wakeup.wait()
            await self._generate_slice()

    async def _generate_slice(self) -> None:
        """One slice of the current generation job (starting the next one if none runs)."""
        if self._generating is None:
            if not self._generate_queue:
                return
            self._generating = self._generate_queue.popleft()
            self._set_depth()
        job = self._generating
        if job.future.done():  # the client went away (cancelled): generate no more for it
            self._generating = None
            return
        chunk = job.next_slice(self.max_batch_tokens)
        started = time.perf_counter()
        try:
            outputs = await self.engine.generate(chunk)
        except Exception as exc:
            log.exception("engine generation failed for a slice of %d prompts", len(chunk))
            self._generating = None
            if not job.future.done():
                job.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - started
        made = sum(len(out.token_ids) for out in outputs)
        self._generated_per_second = 0.8 * self._generated_per_second + 0.2 * made / max(
            elapsed, 1e-6
        )
        job.outputs.extend(outputs)
        if len(job.outputs) == len(job.items):
            self._generating = None
            if not job.future.done():
                job.future.set_result(job.outputs)

    def _more_may_arrive(self) -> bool:
        """Some request is being handled that has not queued a job yet (still being read or
        validated): worth a short wait. Each queued or generating job belongs to one such
        request."""
        generating = len(self._generate_queue) + (self._generating is not None)
        return self.metrics.requests_in_flight > len(self._queue) + generating

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
