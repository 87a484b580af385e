"""Engine health: notice a dead or hung engine within seconds and answer 503, never 500 or hang.

``GuardedEngine`` wraps the loaded ``TeacherEngine``; every caller (batcher, hints, weights) goes
through it unchanged. It declares the engine *failed*, for good, when

- a call outlives its deadline (``TC_ENGINE_CALL_TIMEOUT``): a hung forward;
- a call raises and the engine then reports itself broken (``health_error()``: vLLM's core
  process died, a CUDA error); a ``ValueError`` is the request's fault and becomes a 422;
- the watch task polls ``health_error()`` every ``TC_ENGINE_WATCH_SECONDS`` and it answers: the
  engine died between calls.

A failed engine is not restarted in-process (a hung thread or a broken CUDA context cannot be
trusted again): every call, queued or new, raises ``EngineUnavailable`` (503, ``Retry-After``,
type ``engine_unavailable``), ``/readyz`` and ``/healthz`` answer 503 so the orchestrator restarts
the pod, and ``tokencredit_engine_failures_total`` counts it. Clients fail over to other replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from server.engines.base import TeacherEngine
from server.errors import ServiceError
from server.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")


class EngineUnavailable(ServiceError):
    """The engine has failed; the request may be retried on another replica."""

    def __init__(self, reason: str):
        super().__init__(
            503,
            f"the model engine is unavailable ({reason}); retry on another replica",
            type="engine_unavailable",
            headers={"Retry-After": "5"},
        )


class GuardedEngine:
    """A ``TeacherEngine`` whose calls have a deadline and whose failure is sticky."""

    def __init__(self, engine: TeacherEngine, metrics: Metrics, call_timeout: float):
        self._engine = engine
        self._metrics = metrics
        self.call_timeout = call_timeout
        self.failure: str | None = None
        self._watch_task: asyncio.Task | None = None

    def __getattr__(self, name: str) -> Any:  # info, tokenizer, prepare_weights, ...
        return getattr(self._engine, name)

    @property
    def inner(self) -> TeacherEngine:
        return self._engine

    # ---- guarded calls --------------------------------------------------------------------------

    async def score(self, items):
        return await self._call("scoring", self._engine.score(items))

    async def generate(self, items):
        return await self._call("generation", self._engine.generate(items))

    async def swap_weights(self, prepared) -> None:
        await self._call("weights swap", self._engine.swap_weights(prepared))

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        if self.failure is not None:
            with contextlib.suppress(Exception):
                call.close()  # never started: no "coroutine was never awaited" warning
            raise EngineUnavailable(self.failure)
        try:
            return await asyncio.wait_for(call, self.call_timeout)
        except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
            self.fail(f"{what} exceeded its {self.call_timeout:g}s deadline", kind="deadline")
            raise EngineUnavailable(self.failure) from None
        except ServiceError:
            raise
        except ValueError as exc:
            # Engines raise ValueError for a request they cannot serve (e.g. vLLM's sampling
            # limits, temperature <= 2): the caller's input, so a 422, never a 500.
            field = getattr(exc, "field", None) or getattr(exc, "parameter", None)
            raise ServiceError(422, f"the engine refused the request: {exc}", field=field) from exc
        except Exception as exc:
            broken = self._health_error() or fatal_reason(exc)
            if broken is None:
                raise  # a problem of this request, not of the engine
            self.fail(broken, kind="died")
            raise EngineUnavailable(self.failure) from exc

    # ---- failure --------------------------------------------------------------------------------

    def fail(self, reason: str, kind: str) -> None:
        if self.failure is not None:
            return
        self.failure = reason
        self._metrics.engine_failures.labels(kind=kind).inc()
        self._metrics.engine_up.set(0)
        log.error("engine failed (%s): %s; answering 503 from now on", kind, reason)

    def _health_error(self) -> str | None:
        check = getattr(self._engine, "health_error", None)
        try:
            return check() if check else None
        except Exception as exc:  # a health check that itself fails means the engine is gone
            return f"health check raised {type(exc).__name__}: {exc}"

    async def watch(self, interval: float) -> None:
        """Poll the engine's own health until it fails (run as a task)."""
        self._metrics.engine_up.set(1)
        while self.failure is None:
            await asyncio.sleep(interval)
            reason = self._health_error()
            if reason is not None:
                self.fail(reason, kind="died")

    def start_watch(self, interval: float) -> None:
        self._watch_task = asyncio.create_task(
            self.watch(interval), name="tokencredit-engine-watch"
        )

    async def close(self) -> None:
        if self._watch_task:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        await self._engine.close()


def fatal_reason(exc: BaseException) -> str | None:
    """Errors after which no engine on this device can be trusted (CUDA errors, device OOM)."""
    text = f"{type(exc).__name__}: {exc}"
    if type(exc).__name__ == "OutOfMemoryError" or "CUDA error" in text or "CUBLAS" in text:
        return text[:500]
    return None
