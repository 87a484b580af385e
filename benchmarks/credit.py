"""The cost of per-token credit: round trip split, and what shared prefixes save.

    python benchmarks/credit.py            # both parts (a few minutes on 2 CPU cores)
    python benchmarks/credit_math.py       # the math alone: every method on 1M tokens

Part 1, round trip: one ``/v1/advantages`` call for 64 rollouts (8 groups x 8) with server-side
student and teacher scoring on the embedded model, per method. The server reports its scoring and
math time in ``Server-Timing``; transport (HTTP, JSON, validation, encoding) is the rest.
Part 2, shared prefix: 8 rollouts scored under one teacher context as long as the responses,
with the hf engine's KV reuse on and off.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tables import print_table

from client.launcher import ServerProcess
from server.engines.base import ScoreItem
from server.engines.hf import HFEngine
from server.settings import DEFAULT_MODEL_DIR, Settings
from trainer.toy.arith import generate_problems

METHODS = ["grpo", "opd", "opsd", "sdpo", "rlsd", "hsd", "antisd", "amrsd"]


def server_timing(header: str) -> dict[str, float]:
    out = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, dur = part.partition(";dur=")
        out[name] = float(dur) / 1000
    return out


def make_groups(
    url: str, n_groups: int, group_size: int, response_tokens: int, seed: int
) -> list[dict]:
    rng = np.random.default_rng(seed)
    vocab = httpx.get(url + "/v1/model").json()["vocab_size"]
    groups = []
    for problem in generate_problems(n_groups, seed=seed):
        rollouts = []
        for _ in range(group_size):
            ids = rng.integers(
                0, vocab, int(rng.integers(response_tokens // 2, response_tokens + 1))
            ).tolist()
            rollouts.append(
                {
                    "response_ids": ids,
                    "reward": float(rng.random() < 0.4),
                    "text": problem.solution,
                    "reflection": "Recheck the second step.",
                }
            )
        groups.append(
            {
                "problem": problem.question,
                "reference_answer": problem.answer,
                "reference_solution": problem.solution,
                "rollouts": rollouts,
            }
        )
    return groups


def with_student_logprobs(groups: list[dict]) -> list[dict]:
    """The groups with a (constant) policy log-prob per response token, as a trainer sends."""
    return [
        {
            **g,
            "rollouts": [
                {**r, "student_logprobs": [-1.0] * len(r["response_ids"])} for r in g["rollouts"]
            ],
        }
        for g in groups
    ]


def round_trip(model: str, repeats: int) -> list[tuple]:
    rows = []
    env = {"TC_MODEL": model, "TC_DEVICE": "cpu", "TC_LOG_LEVEL": "warning"}
    with ServerProcess(env=env) as server, httpx.Client(timeout=600) as client:
        groups = make_groups(server.url, 8, 8, 128, seed=0)
        for method in METHODS:
            body = {"method": method, "groups": groups, "encoding": "base64", "seed": 1}
            if method == "opd":  # the served model is opd's teacher: the student is the caller's
                body["groups"] = with_student_logprobs(groups)
            client.post(server.url + "/v1/advantages", json=body).raise_for_status()  # warm-up
            totals, scores, maths = [], [], []
            for _ in range(repeats):
                t = time.perf_counter()
                res = client.post(server.url + "/v1/advantages", json=body)
                res.raise_for_status()
                res.json()
                totals.append(time.perf_counter() - t)
                timing = server_timing(res.headers.get("server-timing", ""))
                scores.append(timing.get("score", 0.0))
                maths.append(timing.get("math", 0.0))
            total, score, math = (statistics.median(x) for x in (totals, scores, maths))
            transport = max(total - score - math, 0.0)
            rows.append(
                (
                    method,
                    total * 1e3,
                    score * 1e3,
                    math * 1e3,
                    transport * 1e3,
                    100 * (math + transport) / total,
                )
            )
    return rows


def shared_prefix(model: str, repeats: int, length: int) -> list[tuple]:
    engine = HFEngine.load(
        Settings(model=model, device="cpu", dtype="float32", max_batch_tokens=65536)
    )
    rng = np.random.default_rng(0)
    V = engine.info.vocab_size
    context = tuple(rng.integers(0, V, length).tolist())
    items = [
        ScoreItem(context, tuple(rng.integers(0, V, length).tolist()), entropy=True)
        for _ in range(8)
    ]
    rows, times = [], {}
    for share in (False, True):
        engine.share_prefixes = share
        engine.score_sync(items)
        samples = []
        for _ in range(repeats):
            t = time.perf_counter()
            out = engine.score_sync(items)
            samples.append(time.perf_counter() - t)
        times[share] = (min(samples), out)  # min: the least disturbed run on a shared machine
    diff = max(
        float(np.abs(a.logprobs - b.logprobs).max())
        for a, b in zip(times[False][1], times[True][1])
    )
    rows.append(
        (
            f"8 x ({length} context + {length} response)",
            times[False][0] * 1e3,
            times[True][0] * 1e3,
            times[True][0] / times[False][0],
            diff,
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prefix-length", type=int, default=256)
    args = parser.parse_args()
    rt = round_trip(args.model, args.repeats)
    sp = shared_prefix(args.model, args.repeats, args.prefix_length)
    print_table(
        "/v1/advantages round trip, 64 rollouts (8 groups x 8, 64-128 response tokens), packed",
        ("method", "total ms", "scoring ms", "math ms", "transport ms", "math+transport %"),
        rt,
    )
    print_table(
        "Shared teacher context: KV reuse off vs on (hf engine, entropy on)",
        ("batch", "independent ms", "shared ms", "shared/independent", "max |Δ logprob|"),
        sp,
    )


if __name__ == "__main__":
    main()
