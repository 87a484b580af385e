"""Everything a request needs, built once per app: engine, batcher, weights gate, metrics.

The model loads in the background after start-up, so ``/healthz`` answers at once and
``/readyz`` turns 200 only after load and a warm-up forward (Kubernetes startup probes wait for
that). Until then every model route answers 503.
"""

from __future__ import annotations

import asyncio
import logging
import time

from server.batcher import Batcher
from server.engine_guard import EngineUnavailable, GuardedEngine
from server.engines import create_engine
from server.errors import ServiceError
from server.metrics import Metrics
from server.settings import Settings
from server.weights import WeightsGate

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics()
        self.gate = WeightsGate()
        self.engine: GuardedEngine | None = None
        self.batcher: Batcher | None = None
        self.load_error: str | None = None
        self.draining = False
        self._load_task: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        return self.batcher is not None and not self.draining

    def start(self) -> None:
        if not self.settings.api_key_set:
            log.warning("no TC_API_KEYS configured: the server accepts unauthenticated requests")
        self._load_task = asyncio.create_task(self._load(), name="tokencredit-load")

    async def _load(self) -> None:
        started = time.perf_counter()
        try:
            engine = await create_engine(self.settings)
            await engine.warmup()
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model load failed")
            return
        guarded = GuardedEngine(engine, self.metrics, self.settings.engine_call_timeout)
        guarded.start_watch(self.settings.engine_watch_seconds)
        self.engine = guarded
        batcher = Batcher(
            guarded,
            self.metrics,
            max_batch_tokens=self.settings.max_batch_tokens,
            max_queue=self.settings.max_queue,
            batch_wait_ms=self.settings.batch_wait_ms,
            max_request_tokens=self.settings.max_request_tokens,
            max_generate_tokens=self.settings.max_generate_tokens,
        )
        batcher.start()
        self.batcher = batcher
        self.metrics.weights_version.set(self.gate.version)
        log.info(
            "model %s loaded on %s/%s in %.1fs",
            engine.info.model,
            engine.info.backend,
            engine.info.device,
            time.perf_counter() - started,
        )

    async def wait_ready(self, timeout: float | None = None) -> None:
        if self._load_task:
            await asyncio.wait_for(asyncio.shield(self._load_task), timeout)

    async def stop(self) -> None:
        if self._load_task and not self._load_task.done():
            self._load_task.cancel()
        if self.batcher:
            await self.batcher.stop()
        if self.engine:
            await self.engine.close()

    @property
    def engine_failure(self) -> str | None:
        return self.engine.failure if self.engine is not None else None

    def require_engine(self) -> tuple[GuardedEngine, Batcher]:
        if self.engine is None or self.batcher is None:
            if self.load_error:
                raise ServiceError(
                    503, f"model failed to load: {self.load_error}", type="load_failed"
                )
            raise ServiceError(
                503, "model is loading", type="not_ready", headers={"Retry-After": "5"}
            )
        if self.engine.failure is not None:
            raise EngineUnavailable(self.engine.failure)
        if self.draining:
            raise ServiceError(
                503, "server is shutting down", type="shutting_down", headers={"Retry-After": "1"}
            )
        return self.engine, self.batcher
