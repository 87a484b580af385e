"""SIGTERM: stop accepting, finish every accepted request, exit cleanly."""

from __future__ import annotations

import concurrent.futures as cf
import signal
import time

import httpx

from client.launcher import ServerProcess


def wait_in_flight(url: str, n: int, timeout: float = 60.0) -> None:
    """Poll /metrics until ``n`` requests (besides this poll) are in flight."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in httpx.get(url + "/metrics").text.splitlines():
            if line.startswith("tokencredit_in_flight ") and float(line.split()[1]) >= n + 1:
                return
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {n} requests in flight after {timeout}s")


def test_sigterm_drains_in_flight_requests(server_env, tmp_path):
    env = server_env(TC_LOG_LEVEL="info", TC_BATCH_WAIT_MS="0")
    server = ServerProcess(env=env, log_path=tmp_path / "server.log").start()
    seq = {
        "context_ids": [1 + i % 250 for i in range(300)],
        "target_ids": [1 + i % 250 for i in range(200)],
    }
    body = {"sequences": [seq] * 24, "entropy": True, "top_k": 5}

    def call(_):
        return httpx.post(server.url + "/v1/logprobs", json=body, timeout=120)

    try:
        with cf.ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(call, i) for i in range(6)]
            wait_in_flight(server.url, 6)  # all six accepted: read by the server, queued or running
            server.proc.send_signal(signal.SIGTERM)
            results = [f.result() for f in futures]
        assert [r.status_code for r in results] == [200] * 6
        assert all(len(r.json()["results"]) == 24 for r in results)
        # uvicorn re-raises the signal after a clean shutdown, so the exit status is 0 or -SIGTERM
        assert server.proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        server.stop()
    log = (tmp_path / "server.log").read_text()
    assert "Shutting down" in log or "Finished server process" in log


def test_request_outliving_the_drain_window_gets_a_json_503(server_env, tmp_path):
    """uvicorn cancels what is still running after --timeout-graceful-shutdown; that request used
    to get a text/plain 500. Queue far more work than one second drains, SIGTERM, and every
    answer is a 200 or a JSON 503 ``shutting_down``, never a 500."""
    env = server_env(TC_LOG_LEVEL="info", TC_BATCH_WAIT_MS="0", TC_DRAIN_SECONDS="1")
    server = ServerProcess(env=env, log_path=tmp_path / "server.log").start()
    seq = {
        "context_ids": [1 + i % 250 for i in range(300)],
        "target_ids": [1 + i % 250 for i in range(200)],
    }
    body = {"sequences": [seq] * 24, "entropy": True, "top_k": 5}

    def call(_):
        try:
            return httpx.post(server.url + "/v1/logprobs", json=body, timeout=120)
        except httpx.TransportError as exc:  # connection closed after the answer: not a 500
            return exc

    try:
        with cf.ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(call, i) for i in range(12)]
            wait_in_flight(server.url, 12)
            server.proc.send_signal(signal.SIGTERM)
            results = [f.result() for f in futures]
        server.proc.wait(60)
    finally:
        server.stop()
    answers = [r for r in results if isinstance(r, httpx.Response)]
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503}, codes
    assert 503 in codes, f"nothing outlived a 1 s drain window: {codes}"
    for r in answers:
        if r.status_code == 503:
            assert r.headers["content-type"].startswith("application/json")
            assert r.json()["error"]["type"] == "shutting_down"
