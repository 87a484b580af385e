"""Reliability under load and faults: a small-queue server under many clients, and a replica
killed (SIGKILL) under the client's failover.

    python benchmarks/reliability.py --clients 64 --seconds 30 --queue 16
    python benchmarks/reliability.py --model /tmp/tiny --clients 16 --seconds 5    # a quick look
    python benchmarks/reliability.py --skip-load --skip-fault --flood-seconds 30   # flood only

Two scenarios, each on real uvicorn servers on real ports (``client.launcher.ServerProcess``):

* **load**: ``--clients`` concurrent clients (asyncio + httpx, one pooled connection each) send a
  fixed mix of ``/v1/logprobs`` and ``/v1/advantages`` requests for ``--seconds`` to one server
  started with ``TC_MAX_QUEUE=--queue``. A 429 must carry ``Retry-After`` (the client then waits
  a random part of it, at most a second); anything but 200/429 is an error; every 200 must equal
  (``atol``) the answer the idle server gave to the same request. A monitor samples
  ``/metrics`` (queue depth, in-flight) and ``/proc/<pid>/status`` (VmRSS, VmHWM) every 100 ms.
* **fault**: two servers; ``TeacherClient([a, b])`` runs ``--fault-requests`` calls from
  ``--fault-concurrency`` threads; once a third of them are done and a request is in flight on
  ``b``, ``b`` is SIGKILLed. Every call must complete with the numbers of a clean single-server
  run (``atol`` 1e-5): requests lost = calls that raised or never returned.

* **flood**: small ``/v1/logprobs`` calls from one client, alone and then while
  ``--flood-clients`` clients send ``/v1/hints`` (8 rollouts x 64 tokens) back to back:
  scoring p50/p99 in both phases (generation is admitted like scoring but runs in its own lane,
  so scoring is not starved; server/batcher.py).

Prints one table row per scenario: requests, errors, 429s, p50/p99 latency of the 200s,
throughput, peak RSS (and its growth over the warm server), requests lost. The tests in
``tests/reliability/test_load.py`` and ``test_faults.py`` run the same functions, smaller, and
assert on the reports. Timings on a shared 2-core machine vary 2-4x between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import json
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client import TeacherClient, Timeout
from client.launcher import ServerProcess
from proto import decode_packed
from server.settings import DEFAULT_MODEL_DIR

JSON = {"Content-Type": "application/json"}
KEEPALIVE_EXPIRY = float(os.environ.get("TC_BENCH_KEEPALIVE_EXPIRY", "2.0"))  # seconds

# ---- health latency ------------------------------------------------------------------------------

HEALTH_PROBE_TIMEOUT_S = 10.0  # a health answer slower than this (or failed) counts as this


class HealthProber:
    """Asks /healthz every 50 ms until stopped; ``worst`` is the slowest answer in seconds."""

    def __init__(self, url: str):
        self.url = url + "/healthz"
        self.worst = 0.0
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=HEALTH_PROBE_TIMEOUT_S) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get(self.url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                took = time.perf_counter() - started
                self.worst = max(self.worst, took if ok else HEALTH_PROBE_TIMEOUT_S)
                self.count += 1
                self._stop.wait(0.05)

    def __enter__(self) -> HealthProber:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def idle_health_worst(url: str, seconds: float = 1.0) -> float:
    """The slowest /healthz answer of the idle server over ``seconds`` (the machine's noise)."""
    with HealthProber(url) as prober:
        time.sleep(seconds)
    return prober.worst


# ---- the workload ------------------------------------------------------------------------------


@dataclass
class Request:
    """One request of the mix: its route and body, and how to send it through TeacherClient."""

    name: str
    path: str
    body: dict[str, Any]

    @property
    def content(self) -> bytes:
        return json.dumps(self.body).encode()

    def call(self, tc: TeacherClient) -> list[np.ndarray]:
        """Send through the client (retries, failover); the answer's arrays."""
        b = self.body
        if self.path == "/v1/logprobs":
            res = tc.logprobs(
                b["sequences"], top_k=b.get("top_k", 0), entropy=b.get("entropy", False)
            )
            out = []
            for s in res.sequences:
                out += [a for a in (s.logprobs, s.entropy, s.topk_logprobs) if a is not None]
                if s.topk_ids is not None:
                    out.append(s.topk_ids)
            return [np.asarray(a, np.float64) for a in out]
        res = tc.advantages(b["method"], b["groups"], seed=b.get("seed", 0))
        return [np.asarray(a, np.float64) for a in res.flat()]


def _array(value: Any) -> np.ndarray:
    return decode_packed(value) if isinstance(value, dict) else np.asarray(value)


def response_arrays(path: str, payload: dict[str, Any]) -> list[np.ndarray]:
    """The arrays of a raw JSON answer, in the order `Request.call` returns them."""
    out = []
    if path == "/v1/logprobs":
        for r in payload["results"]:
            for name in ("logprobs", "entropy", "topk_logprobs", "topk_ids"):
                if r.get(name) is not None:
                    out.append(_array(r[name]))
    else:
        for g in payload["groups"]:
            out += [_array(r["advantages"]) for r in g["rollouts"]]
    return [np.asarray(a, np.float64) for a in out]


def same(got: list[np.ndarray], want: list[np.ndarray], atol: float) -> bool:
    return len(got) == len(want) and all(
        g.shape == w.shape and np.allclose(g, w, atol=atol, rtol=0, equal_nan=True)
        for g, w in zip(got, want)
    )


def workload(vocab: int, seed: int = 0) -> list[Request]:
    """A fixed mix: small and large scoring calls (JSON and packed, top-k, entropy, a shared
    prefix) and credit calls that score on the server (opd, hsd, antisd) or do not (grpo)."""
    rng = np.random.default_rng(seed)

    def ids(n: int) -> list[int]:
        return rng.integers(3, vocab, n).tolist()

    def seqs(n: int, ctx: int, tgt: int, shared: bool = False) -> list[dict[str, list[int]]]:
        prefix = ids(ctx)
        return [
            {"context_ids": prefix if shared else ids(ctx), "target_ids": ids(tgt)}
            for _ in range(n)
        ]

    def groups(n_groups: int, n_rollouts: int) -> list[dict[str, Any]]:
        return [
            {
                "prompt_ids": ids(16),
                "problem": f"{g}+{g + 3}=",
                "reference_answer": str(2 * g + 3),
                "rollouts": [
                    {
                        "response_ids": ids(int(rng.integers(4, 33))),
                        "reward": float(i % 2),
                        "text": str(2 * g + 3 + i % 2),
                    }
                    for i in range(n_rollouts)
                ],
            }
            for g in range(n_groups)
        ]

    lp, adv = "/v1/logprobs", "/v1/advantages"
    return [
        Request("logprobs small", lp, {"sequences": seqs(4, 32, 32)}),
        Request(
            "logprobs top-k+entropy",
            lp,
            {"sequences": seqs(8, 64, 48), "top_k": 5, "entropy": True},
        ),
        Request(
            "logprobs long, packed", lp, {"sequences": seqs(1, 200, 100), "encoding": "base64"}
        ),
        Request("logprobs shared prefix", lp, {"sequences": seqs(16, 48, 16, shared=True)}),
        Request(
            "advantages opd",
            adv,
            {
                "method": "opd",
                "groups": [
                    {
                        **g,
                        "rollouts": [
                            {**r, "student_logprobs": [-1.0] * len(r["response_ids"])}
                            for r in g["rollouts"]
                        ],
                    }
                    for g in groups(2, 4)
                ],
            },
        ),
        Request("advantages hsd", adv, {"method": "hsd", "groups": groups(2, 4), "seed": 3}),
        Request("advantages antisd", adv, {"method": "antisd", "groups": groups(1, 8)}),
        Request("advantages grpo", adv, {"method": "grpo", "groups": groups(4, 8)}),
    ]


def references(url: str, requests: list[Request], timeout: float = 120.0) -> list[list[np.ndarray]]:
    """Each request's answer from an idle server, one at a time."""
    out = []
    with httpx.Client(timeout=timeout) as http:
        for req in requests:
            res = http.post(url + req.path, content=req.content, headers=JSON)
            res.raise_for_status()
            out.append(response_arrays(req.path, res.json()))
    return out


# ---- server observation ----------------------------------------------------------------------


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def proc_memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def wait_idle(url: str, timeout: float = 30.0) -> tuple[float, float]:
    """Poll /metrics until nothing is queued or in flight (but this poll); the last (in_flight,
    queue_depth) seen."""
    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(url + "/metrics", timeout=10).text
        in_flight = metric(text, "tokencredit_in_flight") or 0.0
        depth = metric(text, "tokencredit_queue_depth") or 0.0
        if (in_flight <= 1 and depth == 0) or time.monotonic() > deadline:
            return in_flight - 1, depth
        time.sleep(0.1)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# ---- load ------------------------------------------------------------------------------------


class RunStats:
    """Latency percentiles, throughput and a JSON summary, shared by the load and fault reports
    (dataclasses with ``latencies``, ``ok``, ``elapsed``, ``errors`` and ``mismatches``)."""

    @property
    def p50_ms(self) -> float:
        return 1000 * percentile(self.latencies, 50)

    @property
    def p99_ms(self) -> float:
        return 1000 * percentile(self.latencies, 99)

    @property
    def throughput(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def summary(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "latencies"}
        d.update(
            errors=len(self.errors),
            mismatches=len(self.mismatches),
            p50_ms=self.p50_ms,
            p99_ms=self.p99_ms,
            throughput=self.throughput,
            error_examples=self.errors[:5],
            mismatch_examples=self.mismatches[:5],
        )
        return d


@dataclass
class LoadReport(RunStats):
    clients: int
    seconds: float
    max_queue: int
    requests: int = 0  # answered (200 or not)
    ok: int = 0
    rejected: int = 0  # 429
    bad_retry_after: int = 0  # 429s without a usable Retry-After, or not of type queue_full
    errors: list[str] = field(default_factory=list)  # other statuses, timeouts, broken connections
    mismatches: list[str] = field(default_factory=list)  # 200s whose numbers differ from idle
    latencies: list[float] = field(default_factory=list)  # seconds, 200s only
    elapsed: float = 0.0
    depth_max: float = 0.0
    in_flight_max: float = 0.0
    samples: int = 0
    rss_base: int = 0  # warm server, before the load
    rss_peak: int = 0  # highest VmRSS sampled during the load
    hwm_end: int = 0  # VmHWM after the load (includes start-up)
    rss_after: int = 0
    rejected_metric: float = 0.0  # tokencredit_rejected_total growth on the server
    in_flight_after: float = -1.0  # requests in flight once idle (should be 0)
    depth_after: float = -1.0
    ready_after: int = 0  # /readyz status after the load


async def _load(
    url: str,
    pid: int,
    requests: list[Request],
    refs: list[list[np.ndarray]],
    report: LoadReport,
    timeout: float,
    atol: float,
) -> None:
    bodies = [req.content for req in requests]
    # Idle pooled connections are dropped after KEEPALIVE_EXPIRY, well before uvicorn closes
    # them (--timeout-keep-alive, 5 s): a request sent on a connection the server is closing at
    # that moment fails with a ReadError before any response (the keep-alive race).
    limits = httpx.Limits(
        max_connections=report.clients + 4,
        max_keepalive_connections=report.clients + 4,
        keepalive_expiry=KEEPALIVE_EXPIRY,
    )
    stop = asyncio.Event()

    async def client(i: int, http: httpx.AsyncClient, deadline: float) -> None:
        rng = random.Random(i)
        while time.monotonic() < deadline:
            k = rng.randrange(len(requests))
            req = requests[k]
            started = time.perf_counter()
            try:
                res = await http.post(url + req.path, content=bodies[k], headers=JSON)
            except httpx.HTTPError as exc:
                report.errors.append(f"{req.name}: {type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - started
            report.requests += 1
            if res.status_code == 200:
                report.ok += 1
                report.latencies.append(elapsed)
                if not same(response_arrays(req.path, res.json()), refs[k], atol):
                    report.mismatches.append(f"{req.name}: numbers differ from the idle answer")
            elif res.status_code == 429:
                report.rejected += 1
                retry_after = res.headers.get("retry-after", "")
                kind = res.json().get("error", {}).get("type")
                if not retry_after.isdigit() or int(retry_after) < 1 or kind != "queue_full":
                    report.bad_retry_after += 1
                    retry_after = "1"
                await asyncio.sleep(rng.uniform(0, min(float(retry_after), 1.0)))
            else:
                report.errors.append(f"{req.name}: {res.status_code} {res.text[:200]}")

    async def monitor(http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            try:
                text = (await http.get(url + "/metrics")).text
            except httpx.HTTPError as exc:
                report.errors.append(f"/metrics: {type(exc).__name__}: {exc}")
            else:
                report.depth_max = max(
                    report.depth_max, metric(text, "tokencredit_queue_depth") or 0
                )
                in_flight = (metric(text, "tokencredit_in_flight") or 1) - 1
                report.in_flight_max = max(report.in_flight_max, in_flight)
                report.samples += 1
            rss, _ = proc_memory(pid)
            report.rss_peak = max(report.rss_peak, rss)
            await asyncio.sleep(0.1)

    async with (
        httpx.AsyncClient(timeout=timeout, limits=limits) as http,
        httpx.AsyncClient(timeout=timeout) as probe,
    ):
        watcher = asyncio.create_task(monitor(probe))
        started = time.monotonic()
        deadline = started + report.seconds
        await asyncio.gather(*(client(i, http, deadline) for i in range(report.clients)))
        report.elapsed = time.monotonic() - started
        stop.set()
        await watcher


def run_load(
    url: str,
    pid: int,
    requests: list[Request],
    *,
    clients: int = 64,
    seconds: float = 30.0,
    max_queue: int = 16,
    timeout: float = 120.0,
    atol: float = 1e-5,
) -> LoadReport:
    """The load scenario against a running server (``pid``: its process, for memory)."""
    refs = references(url, requests, timeout)
    report = LoadReport(clients=clients, seconds=seconds, max_queue=max_queue)
    before = metric(httpx.get(url + "/metrics").text, "tokencredit_rejected_total") or 0.0
    report.rss_base, _ = proc_memory(pid)
    asyncio.run(_load(url, pid, requests, refs, report, timeout, atol))
    report.in_flight_after, report.depth_after = wait_idle(url)
    report.ready_after = httpx.get(url + "/readyz", timeout=10).status_code
    after = metric(httpx.get(url + "/metrics").text, "tokencredit_rejected_total") or 0.0
    report.rejected_metric = after - before
    report.rss_after, report.hwm_end = proc_memory(pid)
    return report


# ---- fault -----------------------------------------------------------------------------------


@dataclass
class FaultReport(RunStats):
    calls: int
    concurrency: int
    ok: int = 0
    errors: list[str] = field(default_factory=list)  # calls that raised
    mismatches: list[str] = field(default_factory=list)  # calls whose numbers differ
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    killed_after: int = -1  # calls completed when the replica was killed (-1: never killed)
    in_flight_at_kill: float = -1.0  # requests the killed replica was working on
    served_by_survivor: float = 0.0  # scoring requests the surviving replica answered

    @property
    def lost(self) -> int:
        return self.calls - self.ok

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "lost": self.lost}


def run_calls(
    urls: list[str], requests: list[Request], calls: int, concurrency: int, **client_kw: Any
) -> tuple[list[list[np.ndarray] | None], list[str]]:
    """``calls`` calls (request ``i % len(requests)``) through one TeacherClient; each call's
    arrays (None where it raised) and the errors."""
    results: list[list[np.ndarray] | None] = [None] * calls
    errors: list[str] = []
    with TeacherClient(urls, **client_kw) as tc, cf.ThreadPoolExecutor(concurrency) as pool:
        futures = {pool.submit(requests[i % len(requests)].call, tc): i for i in range(calls)}
        for fut in cf.as_completed(futures):
            i = futures[fut]
            try:
                results[i] = fut.result()
            except Exception as exc:
                errors.append(f"call {i} ({requests[i % len(requests)].name}): {exc!r}")
    return results, errors


def _survivor_requests(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        scoring = 'route="/v1/logprobs"' in line or 'route="/v1/advantages"' in line
        if line.startswith("tokencredit_requests_total{") and 'status="200"' in line and scoring:
            total += float(line.split()[-1])
    return total


def run_fault(
    survivor: ServerProcess,
    victim: ServerProcess,
    requests: list[Request],
    *,
    calls: int = 200,
    concurrency: int = 8,
    kill_fraction: float = 1 / 3,
    atol: float = 1e-5,
    timeout: float = 60.0,
    kill: Callable[[], None] | None = None,
) -> FaultReport:
    """The fault scenario: reference on ``survivor`` alone, then both replicas with ``victim``
    SIGKILLed mid-run, or with ``kill()`` called instead (e.g. to kill only its engine process,
    leaving the server up to answer 503)."""
    client_kw: dict[str, Any] = {"timeout": Timeout(timeout, connect=5.0)}
    refs, ref_errors = run_calls([survivor.url], requests, len(requests), concurrency, **client_kw)
    if ref_errors:
        raise RuntimeError(f"the clean single-server run failed: {ref_errors[:3]}")
    report = FaultReport(calls=calls, concurrency=concurrency)
    served_before = _survivor_requests(survivor.url)
    completed = 0
    lock = threading.Lock()
    finished = threading.Event()

    def killer() -> None:
        target = max(1, int(calls * kill_fraction))
        while completed < target:
            if finished.wait(0.005):
                return  # the run ended first: nothing killed
        deadline = time.monotonic() + 10.0  # kill while the victim is working on something
        in_flight = 0.0
        while time.monotonic() < deadline:
            try:
                text = httpx.get(victim.url + "/metrics", timeout=2).text
                in_flight = (metric(text, "tokencredit_in_flight") or 1) - 1
            except httpx.HTTPError:
                break
            if in_flight >= 1:
                break
            time.sleep(0.005)
        if kill is None:
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(30)
        else:
            kill()
        with lock:
            report.killed_after = completed
        report.in_flight_at_kill = in_flight

    def timed(i: int, tc: TeacherClient) -> list[np.ndarray]:
        nonlocal completed
        started = time.perf_counter()
        try:
            return requests[i % len(requests)].call(tc)
        finally:
            report.latencies.append(time.perf_counter() - started)
            with lock:
                completed += 1

    results: list[list[np.ndarray] | None] = [None] * calls
    kill_thread = threading.Thread(target=killer, daemon=True)
    kill_thread.start()
    started = time.monotonic()
    with (
        TeacherClient([survivor.url, victim.url], **client_kw) as tc,
        cf.ThreadPoolExecutor(concurrency) as pool,
    ):
        futures = {pool.submit(timed, i, tc): i for i in range(calls)}
        for fut in cf.as_completed(futures):
            i = futures[fut]
            try:
                results[i] = fut.result()
            except Exception as exc:
                report.errors.append(f"call {i} ({requests[i % len(requests)].name}): {exc!r}")
    report.elapsed = time.monotonic() - started
    finished.set()
    kill_thread.join(60)
    for i, got in enumerate(results):
        if got is None:
            continue
        if same(got, refs[i % len(requests)], atol):
            report.ok += 1
        else:
            report.mismatches.append(f"call {i} ({requests[i % len(requests)].name})")
    report.served_by_survivor = _survivor_requests(survivor.url) - served_before
    return report


# ---- command line ------------------------------------------------------------------------------


# ---- scoring during a generation flood -----------------------------------------------------------


def hints_request(rollouts: int, max_tokens: int) -> dict[str, Any]:
    return {
        "groups": [
            {
                "problem": "What is 12+7-5?",
                "rollouts": [
                    {"text": f"12+7=19. 19-5={14 + i % 2}.", "correct": i % 2 == 0}
                    for i in range(rollouts)
                ],
            }
        ],
        "max_tokens": max_tokens,
        "temperature": 0.7,
    }


SMALL_SCORE = {"sequences": [{"context_ids": [1, 2, 3, 4, 5, 6, 7, 8], "target_ids": [9, 10]}]}


def _score_latencies(url: str, seconds: float) -> tuple[list[float], list[int]]:
    """One client sending small /v1/logprobs calls back to back for ``seconds``."""
    latencies, codes = [], []
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=120.0) as client:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            res = client.post(url + "/v1/logprobs", json=SMALL_SCORE)
            codes.append(res.status_code)
            if res.status_code == 200:
                latencies.append(time.perf_counter() - started)
    return latencies, codes


def run_generation_flood(
    url: str,
    *,
    seconds: float,
    hint_clients: int,
    rollouts: int,
    max_tokens: int,
) -> dict[str, Any]:
    """Small scoring calls alone for ``seconds / 2``, then for ``seconds`` while ``hint_clients``
    clients send /v1/hints (``rollouts`` x ``max_tokens``) back to back: p50/p99 of the scoring
    calls in both phases, the hints' status counts, and any answer that is neither 200 nor 429."""
    alone, alone_codes = _score_latencies(url, seconds / 2)
    stop = threading.Event()
    hint_codes: dict[int, int] = {}
    lock = threading.Lock()

    def flood() -> None:
        body = hints_request(rollouts, max_tokens)
        with httpx.Client(timeout=600.0) as client:
            while not stop.is_set():
                code = client.post(url + "/v1/hints", json=body).status_code
                with lock:
                    hint_codes[code] = hint_codes.get(code, 0) + 1
                if code == 429:
                    stop.wait(0.5)

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(hint_clients)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # the flood is running
    during, during_codes = _score_latencies(url, seconds)
    stop.set()
    for t in threads:
        t.join()
    return {
        "scoring_alone_n": len(alone),
        "scoring_alone_p50_ms": round(1000 * percentile(alone, 50), 1),
        "scoring_alone_p99_ms": round(1000 * percentile(alone, 99), 1),
        "scoring_flood_n": len(during),
        "scoring_flood_p50_ms": round(1000 * percentile(during, 50), 1),
        "scoring_flood_p99_ms": round(1000 * percentile(during, 99), 1),
        "hints_200": hint_codes.get(200, 0),
        "hints_429": hint_codes.get(429, 0),
        "errors": sorted(
            {c for c in [*alone_codes, *during_codes] if c != 200}
            | {c for c in hint_codes if c not in (200, 429)}
        ),
    }


def server_env(model: str, torch_threads: int = 1, **extra: str) -> dict[str, str]:
    """Server settings for the scenarios. ``torch_threads`` (OMP_NUM_THREADS; 0: torch's default)
    is 1 by default: on a small shared machine two OpenMP threads per forward spend most of their
    time waiting for each other at barriers whenever another process holds a core."""
    env = {
        "TC_MODEL": model,
        "TC_DEVICE": "cpu",
        "TC_DTYPE": "float32",
        "TC_LOG_LEVEL": "warning",
        **extra,
    }
    if torch_threads > 0:
        env["OMP_NUM_THREADS"] = str(torch_threads)
    return env


def table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    head = (
        "| scenario | requests | errors | 429s | p50 ms | p99 ms | throughput req/s "
        "| peak RSS MiB (growth) | requests lost |"
    )
    lines = [head, "|" + "---|" * 9]
    mib = 1 / 2**20
    for name, r in rows:
        if "rss_peak" in r:
            requests = r["requests"]
            rss = f"{r['rss_peak'] * mib:.0f} (+{(r['rss_peak'] - r['rss_base']) * mib:.0f})"
            lost = str(r["errors"])  # neither answered nor refused with 429
        else:
            requests = r["calls"]
            rss = "-"
            lost = str(r["lost"])
        lines.append(
            f"| {name} | {requests} | {r['errors']} | {r.get('rejected', 0)} | {r['p50_ms']:.0f} "
            f"| {r['p99_ms']:.0f} | {r['throughput']:.1f} | {rss} | {lost} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=os.environ.get("TC_TEST_MODEL") or str(DEFAULT_MODEL_DIR)
    )
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--queue", type=int, default=16, help="TC_MAX_QUEUE of the load server")
    parser.add_argument("--fault-requests", type=int, default=300)
    parser.add_argument("--fault-concurrency", type=int, default=8)
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="OMP_NUM_THREADS of each server (0: default)"
    )
    parser.add_argument("--flood-clients", type=int, default=4, help="/v1/hints clients")
    parser.add_argument("--flood-seconds", type=float, default=30.0)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-flood", action="store_true")
    parser.add_argument("--skip-fault", action="store_true")
    parser.add_argument("--json", help="also write the reports to this file")
    args = parser.parse_args(argv)

    import torch

    threads = args.torch_threads or torch.get_num_threads()
    print(
        f"# {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, torch {torch.__version__} "
        f"({threads} thread(s) per server), model {args.model}",
        flush=True,
    )
    rows: list[tuple[str, dict[str, Any]]] = []
    failures = []
    if not args.skip_load:
        env = server_env(args.model, args.torch_threads, TC_MAX_QUEUE=str(args.queue))
        with ServerProcess(env=env) as server:
            info = httpx.get(server.url + "/v1/model").json()
            requests = workload(info["vocab_size"])
            report = run_load(
                server.url,
                server.proc.pid,
                requests,
                clients=args.clients,
                seconds=args.seconds,
                max_queue=args.queue,
            )
        s = report.summary()
        rows.append((f"load: {args.clients} clients x {args.seconds:g} s, queue {args.queue}", s))
        print(json.dumps(s, indent=1), flush=True)
        if s["errors"] or s["mismatches"] or s["bad_retry_after"] or s["depth_max"] > args.queue:
            failures.append("load")
    if not args.skip_fault:
        env = server_env(args.model, args.torch_threads)
        with ServerProcess(env=env) as a, ServerProcess(env=env) as b:
            info = httpx.get(a.url + "/v1/model").json()
            requests = workload(info["vocab_size"])
            report = run_fault(
                a, b, requests, calls=args.fault_requests, concurrency=args.fault_concurrency
            )
        s = report.summary()
        rows.append(
            (
                f"fault: {args.fault_requests} calls x {args.fault_concurrency} threads, "
                "1 of 2 replicas SIGKILLed",
                s,
            )
        )
        print(json.dumps(s, indent=1), flush=True)
        if s["lost"] or s["mismatches"]:
            failures.append("fault")
    if not args.skip_flood:
        env = server_env(args.model, args.torch_threads)
        with ServerProcess(env=env) as server:
            flood = run_generation_flood(
                server.url,
                seconds=args.flood_seconds,
                hint_clients=args.flood_clients,
                rollouts=8,
                max_tokens=64,
            )
        print("generation flood:", json.dumps(flood, indent=1), flush=True)
        print(
            "\n| small scoring calls | n | p50 ms | p99 ms |\n|---|---|---|---|\n"
            f"| alone | {flood['scoring_alone_n']} | {flood['scoring_alone_p50_ms']} | "
            f"{flood['scoring_alone_p99_ms']} |\n"
            f"| during {args.flood_clients} /v1/hints clients (8 rollouts x 64 tokens; "
            f"{flood['hints_200']} answered, {flood['hints_429']} x 429) | "
            f"{flood['scoring_flood_n']} | {flood['scoring_flood_p50_ms']} | "
            f"{flood['scoring_flood_p99_ms']} |"
        )
        if flood["errors"]:
            failures.append("flood")
    print()
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(rows), indent=1))
    if failures:
        print(f"\nFAILED: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
