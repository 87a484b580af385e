"""Start a local tokencredit server in a subprocess on a free port and wait until it is ready.

It runs `python -m uvicorn server.app:app` and talks to it over HTTP only (it imports nothing
from `server`), so tests, benchmarks and the trainers share one way to start a server.

Used by the tests, the benchmarks and the toy trainer to run the real server on a real port::

    with ServerProcess(env={"TC_MAX_QUEUE": "8"}) as server:
        httpx.get(server.url + "/readyz")
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent

# uvicorn's connection limits, the same in scripts/serve.sh and deploy/Dockerfile* (a test checks):
# h11 with a deadline on each request's head (TC_HEADER_TIMEOUT, server/http_protocol.py) and the
# request line + headers capped at 64 KiB (larger is a 400 before the app sees it); at most 1024 connections + requests at once (uvicorn answers
# 503 above it); a 2048-connection accept backlog; idle keep-alive connections closed after 5 s.
UVICORN_LIMITS = (
    "--http", "server.http_protocol:HeaderDeadlineH11Protocol",
    "--h11-max-incomplete-event-size", "65536",
    "--limit-concurrency", "1024",
    "--backlog", "2048",
    "--timeout-keep-alive", "5",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(
        self,
        env: dict[str, str] | None = None,
        port: int | None = None,
        ready_timeout: float = 300.0,
        log_path: str | os.PathLike | None = None,
        wrapper: list[str] | None = None,
        uvicorn_args: Sequence[str] = (),
    ):
        """``wrapper``: a command the server's command line is appended to (a namespace, a
        container runtime, ``taskset`` ...). ``uvicorn_args`` come after ``UVICORN_LIMITS``
        and override them (``--limit-concurrency 2``)."""
        self.env = env or {}
        self.wrapper = list(wrapper or [])
        self.uvicorn_args = list(uvicorn_args)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_timeout = ready_timeout
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    def start(self) -> ServerProcess:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        # Sleeping (not spinning) OpenMP workers: on a few shared cores, spinning threads of
        # several processes slowed scoring 10x or more. No effect on results.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        out = subprocess.DEVNULL
        if self.log_path:
            self._log_file = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
            out = self._log_file
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "server.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        cmd += ["--timeout-graceful-shutdown", env.get("TC_DRAIN_SECONDS", "30"), "--no-access-log"]
        cmd += [*UVICORN_LIMITS, *self.uvicorn_args]
        self.proc = subprocess.Popen(
            self.wrapper + cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT
        )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with code {self.proc.returncode}; log: {self.log_path}"
                )
            try:
                res = httpx.get(self.url + "/readyz", timeout=2.0)
            except httpx.HTTPError:
                res = None
            if res is not None and res.status_code == 200:
                return
            if res is not None and res.status_code == 503 and "load_failed" in res.text:
                self.stop()
                raise RuntimeError(
                    f"server could not load its model: {res.text}; log: {self.log_path}"
                )
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"server not ready after {self.ready_timeout}s; log: {self.log_path}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        return self.proc.returncode if self.proc else None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def start_all(servers: Sequence[ServerProcess]) -> list[ServerProcess]:
    """Start ``servers`` side by side and wait until every one is ready: their start-ups
    overlap (two vLLM replicas on 2 cores: 69 s, against 43-47 s for one). If one fails, all
    are stopped and its error is raised."""
    servers = list(servers)
    with ThreadPoolExecutor(max(1, len(servers))) as pool:
        futures = [pool.submit(s.start) for s in servers]
        errors = [f.exception() for f in futures]
    failed = next((e for e in errors if e is not None), None)
    if failed is not None:
        for s in servers:
            s.stop()
        raise failed
    return servers
