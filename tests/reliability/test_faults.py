"""Faults: one of two replicas is SIGKILLed while TeacherClient([a, b]) is sending calls.

The scenario is ``benchmarks/reliability.py``'s ``run_fault``: a clean single-server run gives
the reference numbers; then 8 threads send ``TC_FAULT_CALLS`` (default 96) calls through one
client with both URLs, and once a third are done and a request is in flight on ``b``, ``b`` is
killed with SIGKILL. The client's transport retries the calls that were in flight (idempotent
scoring calls) and the ones that find ``b`` refusing connections, on ``a``. Asserted: every call
completes, with numbers equal (1e-5) to the clean run; none lost.
"""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from client.launcher import start_all

CALLS = int(os.environ.get("TC_FAULT_CALLS", "96"))
CONCURRENCY = 8


@pytest.fixture(scope="module")
def replicas(make_server):
    servers = [make_server(f"replica-{n}", OMP_NUM_THREADS="1") for n in "ab"]
    try:
        yield start_all(servers)
    finally:
        for s in servers:
            s.stop()


@pytest.fixture(scope="module")
def report(bench, replicas):
    survivor, victim = replicas
    info = httpx.get(survivor.url + "/v1/model", timeout=30).json()
    return bench.run_fault(
        survivor,
        victim,
        bench.workload(info["vocab_size"]),
        calls=CALLS,
        concurrency=CONCURRENCY,
        atol=1e-5,
    )


def test_replica_killed_mid_run(report, replicas):
    _, victim = replicas
    assert victim.proc.returncode == -signal.SIGKILL
    assert 0 < report.killed_after < CALLS
    assert report.in_flight_at_kill >= 1, "nothing was in flight on the killed replica"


def test_no_call_lost(report):
    assert not report.errors, report.errors[:5]
    assert report.lost == 0


def test_numbers_equal_the_clean_single_server_run(report):
    assert not report.mismatches, report.mismatches[:5]
    assert report.ok == CALLS


def test_survivor_took_over(report, replicas):
    survivor, _ = replicas
    # Round-robin sends about half the calls to each replica until the kill; after it, all
    # go to the survivor.
    assert report.served_by_survivor >= CALLS - report.killed_after
    assert httpx.get(survivor.url + "/readyz", timeout=30).status_code == 200
