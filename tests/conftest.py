"""Shared fixtures: the real model, and real servers.

One way to start a server, ``start_server`` (``TC_TEST_DEVICE`` and the test model honoured);
test modules reach it through the ``server_env`` and ``make_server`` fixtures (they must not import
``tests.conftest``: OpenRLHF's wheel installs a top-level ``tests`` package that shadows ours).
Session-scoped subprocesses (``client.launcher.ServerProcess``) running ``uvicorn server.app:app``
on real ports, for what needs a real process (concurrency, signals, failover, load). ``server`` is
parametrised over the backends present: ``hf`` always, ``vllm`` when vllm imports (set
``TC_TEST_BACKENDS=hf`` to pick). ``TC_TEST_DEVICE=cuda`` runs the servers on a GPU (reference
numbers stay on the CPU). ``app_server`` is the same app in this process, reached through
``httpx.ASGITransport``: for validation and error paths, which need no process of their own.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from pathlib import Path

import httpx
import pytest

from client.launcher import ServerProcess
from server.settings import DEFAULT_MODEL_DIR


def _model_path() -> str:
    return os.environ.get("TC_TEST_MODEL") or str(DEFAULT_MODEL_DIR)


def _backends() -> list[str]:
    chosen = os.environ.get("TC_TEST_BACKENDS")
    if chosen:
        return [b.strip() for b in chosen.split(",") if b.strip()]
    return ["hf"] + (["vllm"] if importlib.util.find_spec("vllm") else [])


@pytest.fixture(scope="session")
def model_path() -> str:
    return _model_path()


@pytest.fixture(scope="session")
def hf_model(model_path):
    """The model and tokenizer loaded independently of the server, for reference numbers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_path)


def server_env(**env: str) -> dict[str, str]:
    """The TC_* settings of every test server (test model and device), overridden by ``env``."""
    base = {
        "TC_MODEL": _model_path(),
        "TC_DEVICE": os.environ.get("TC_TEST_DEVICE", "cpu"),
        "TC_DTYPE": "float32",
        "TC_LOG_LEVEL": "warning",
    }
    return {**base, **env}


def new_server(tmp_path_factory, name: str, env: dict[str, str], **kw) -> ServerProcess:
    """A server on ``server_env(**env)`` logging to a fresh folder ``name``, not yet started;
    ``kw`` goes to ``ServerProcess`` (``port``, ``ready_timeout``)."""
    log = Path(tmp_path_factory.mktemp(name)) / "server.log"
    return ServerProcess(env=server_env(**env), log_path=log, **kw)


def start_server(tmp_path_factory, name: str, env: dict[str, str]) -> ServerProcess:
    return new_server(tmp_path_factory, name, env).start()


@pytest.fixture(scope="session", name="server_env")
def server_env_fixture():
    """`server_env` for test modules: ``server_env(**overrides) -> env``."""
    return server_env


@pytest.fixture(scope="session")
def make_server(tmp_path_factory):
    """``make_server(name, port=None, ready_timeout=300, uvicorn_args=(), **env) ->
    ServerProcess``, unstarted (``with`` or ``.start()``), on ``server_env(**env)``, its log under a
    fresh folder ``name``."""

    def make(
        name: str,
        *,
        port: int | None = None,
        ready_timeout: float = 300.0,
        uvicorn_args: tuple[str, ...] = (),
        **env: str,
    ):
        return new_server(
            tmp_path_factory,
            name,
            env,
            port=port,
            ready_timeout=ready_timeout,
            uvicorn_args=uvicorn_args,
        )

    return make


class AppServer:
    """``server.app`` in this process, with its lifespan running on a private event loop thread;
    ``request`` goes through ``httpx.ASGITransport`` (no socket, no subprocess)."""

    backend = "hf"

    def __init__(self, **env: str):
        from server.app import create_app
        from server.settings import Settings

        settings = {k.removeprefix("TC_").lower(): v for k, v in server_env(**env).items()}
        self.app = create_app(Settings(**settings))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stop: asyncio.Event | None = None
        self._done: asyncio.Future | None = None
        self.url = "http://in-process"

    def start(self) -> AppServer:
        self._thread.start()
        ready = self._call(self._start())
        return ready

    async def _start(self) -> AppServer:
        self._stop = asyncio.Event()
        started = asyncio.get_running_loop().create_future()

        async def lifespan() -> None:
            async with self.app.router.lifespan_context(self.app):
                await self.app.state.runtime.wait_ready(timeout=300)
                started.set_result(None)
                await self._stop.wait()

        self._done = asyncio.ensure_future(lifespan())
        await asyncio.wait({started, self._done}, return_when=asyncio.FIRST_COMPLETED)
        if self._done.done():
            self._done.result()  # raises the start-up error
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url=self.url, timeout=300
        )
        return self

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def request(self, method: str, path: str, **kw) -> httpx.Response:
        return self._call(self.client.request(method, path, **kw))

    def post(self, path: str, **kw) -> httpx.Response:
        return self.request("POST", path, **kw)

    def get(self, path: str, **kw) -> httpx.Response:
        return self.request("GET", path, **kw)

    def stop(self) -> None:
        async def close() -> None:
            await self.client.aclose()
            self._stop.set()
            await self._done

        self._call(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


@pytest.fixture(scope="session")
def app_server():
    """The hf app in process (validation and error paths); see `AppServer`."""
    proc = AppServer().start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session", params=_backends())
def server(request, tmp_path_factory):
    """An open server (no keys) on each backend present."""
    backend = request.param
    if backend == "vllm":
        request.applymarker(pytest.mark.vllm)
    weights_root = tmp_path_factory.mktemp(f"weights-{backend}")
    proc = start_server(
        tmp_path_factory,
        f"server-{backend}",
        {"TC_BACKEND": backend, "TC_WEIGHTS_ROOT": str(weights_root)},
    )
    proc.backend = backend
    proc.weights_root = weights_root
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def hf_server(tmp_path_factory):
    """The hf backend alone (for tests of hf-only features: temperature, exact entropy)."""
    weights_root = tmp_path_factory.mktemp("weights-hf-only")
    proc = start_server(tmp_path_factory, "server-hf-only", {"TC_WEIGHTS_ROOT": str(weights_root)})
    proc.weights_root = weights_root
    yield proc
    proc.stop()


API_KEY, ADMIN_KEY = "test-key-123", "admin-key-456"


@pytest.fixture(scope="session")
def strict_server(tmp_path_factory):
    """API keys on, a 64 KiB body limit and a one-request queue (401/403/413/429 paths)."""
    weights_root = tmp_path_factory.mktemp("weights-strict")
    proc = start_server(
        tmp_path_factory,
        "server-strict",
        {
            "TC_API_KEYS": API_KEY,
            "TC_ADMIN_KEYS": ADMIN_KEY,
            "TC_MAX_BODY_BYTES": str(64 * 1024),
            "TC_MAX_QUEUE": "1",
            "TC_MAX_BATCH_TOKENS": "256",
            "TC_BATCH_WAIT_MS": "0",
            "TC_WEIGHTS_ROOT": str(weights_root),
        },
    )
    proc.weights_root = weights_root
    proc.api_key, proc.admin_key = API_KEY, ADMIN_KEY
    yield proc
    proc.stop()
