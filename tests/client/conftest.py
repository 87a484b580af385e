"""Fixtures of the client tests: a fault-injecting proxy in front of the real server, and a spare
real server that a test may stop.

`FaultProxy` is a real HTTP server (Starlette under uvicorn, in a thread, on a free port). It
answers the next faults of its plan (a status with a JSON error body and maybe ``Retry-After``,
or a delay) and forwards everything else to the real server unchanged, so the client under test
talks to a network peer that behaves like a flaky replica. Nothing of the client is mocked.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from client.launcher import ServerProcess, free_port


@dataclass
class Fault:
    status: int | None = None  # answer with this status (None: forward after `delay`)
    retry_after: str | None = None
    delay: float = 0.0
    type: str = "injected"


class FaultProxy:
    """Fails requests by plan, then forwards them to ``upstream``."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.plan: list[Fault] = []
        self.always: Fault | None = None  # applied to every request while set
        self.hits: list[tuple[str, str | None]] = []  # (path, X-Request-Id) of every request
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._client: httpx.AsyncClient | None = None
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("fault proxy did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    def reset(self) -> None:
        self.plan.clear()
        self.always = None
        self.hits.clear()

    def fail(self, times: int, status: int, retry_after: str | None = None) -> None:
        """Answer the next ``times`` requests with ``status``."""
        self.plan.extend(Fault(status, retry_after) for _ in range(times))

    def fail_always(self, status: int, retry_after: str | None = None) -> None:
        self.always = Fault(status, retry_after)

    def delay(self, seconds: float) -> None:
        """Hold the next request ``seconds`` before forwarding it."""
        self.plan.append(Fault(delay=seconds))

    def hits_on(self, path: str) -> int:
        return sum(1 for p, _ in self.hits if p == path)

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        rid = request.headers.get("x-request-id")
        self.hits.append((request.url.path, rid))
        fault = self.plan.pop(0) if self.plan else self.always
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status is not None:
                headers = {"X-Request-Id": rid or "-"}
                if fault.retry_after is not None:
                    headers["Retry-After"] = fault.retry_after
                content = {"error": {"type": fault.type, "message": "injected", "field": None}}
                return JSONResponse(content, status_code=fault.status, headers=headers)
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.upstream, timeout=120)
        forward = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("content-type", "authorization", "x-request-id", "accept")
        }
        upstream = await self._client.request(
            request.method, request.url.path, content=body, headers=forward
        )
        keep = {
            k: v
            for k, v in upstream.headers.items()
            if k.lower() in ("content-type", "x-request-id", "retry-after")
        }
        return Response(upstream.content, status_code=upstream.status_code, headers=keep)


@pytest.fixture(scope="session")
def proxy(server):
    """A fault proxy in front of the session server (plan and hits reset per test)."""
    p = FaultProxy(server.url).start()
    yield p
    p.stop()


@pytest.fixture
def make_proxy():
    """Factory of extra fault proxies, stopped at the end of the test."""
    made: list[FaultProxy] = []

    def make(upstream: str) -> FaultProxy:
        made.append(FaultProxy(upstream).start())
        return made[-1]

    yield make
    for p in made:
        p.stop()


@pytest.fixture
def faults(proxy):
    proxy.reset()
    yield proxy
    proxy.reset()


@pytest.fixture(scope="session")
def spare(server, tmp_path_factory, make_server):
    """Factory of a second real server (same backend as `server`) that a test may stop; a
    stopped one is replaced on the next call."""
    state: dict[str, ServerProcess] = {}

    def get() -> ServerProcess:
        proc = state.get("proc")
        if proc is None or proc.proc.poll() is not None:
            root = tmp_path_factory.mktemp("spare-weights")
            proc = make_server(
                "spare",
                TC_BACKEND=getattr(server, "backend", "hf"),
                TC_WEIGHTS_ROOT=str(root),
                TC_DRAIN_SECONDS="5",
            ).start()
            proc.weights_root = root
            state["proc"] = proc
        return proc

    yield get
    if "proc" in state:
        state["proc"].stop()
