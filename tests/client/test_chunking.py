"""Calls over ``max_request_tokens`` are split, sent concurrently and reassembled in order, with
the same numbers as one big call; stateful advantages are never split.

"The same numbers" means equal up to float32 rounding: the server batches sequences differently
when they arrive in other requests, and a padded batched forward can move the last bit of a
log-prob (seen: 1 element in 14 off by 4.8e-7). Ids, shapes and order must match exactly.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from client import AsyncTeacherClient, TeacherClient, UnprocessableEntityError

# Separate requests may be batched differently, which moves the last float32 bits.
ATOL = 1e-5


def sequences(vocab: int, n: int = 24, seed: int = 7) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "context_ids": rng.integers(0, vocab, int(rng.integers(1, 40))).tolist(),
            "target_ids": rng.integers(0, vocab, int(rng.integers(0, 25))).tolist(),
        }
        for _ in range(n)
    ]


def groups(vocab: int, n: int = 4, seed: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "prompt_ids": rng.integers(3, vocab, 5).tolist(),
            "problem": f"{g}*2=?",
            "reference_answer": str(2 * g),
            "reference_solution": f"{g}*2={2 * g}",
            "rollouts": [
                {
                    "response_ids": rng.integers(3, vocab, int(rng.integers(1, 10))).tolist(),
                    "reward": float(i % 2),
                    "text": f"{g}*2={2 * g + i % 2}",
                }
                for i in range(3)
            ],
        }
        for g in range(n)
    ]


@pytest.fixture(scope="module")
def vocab(server):
    with TeacherClient(server.url) as c:
        return c.model().vocab_size


def assert_close(x, y):
    if x is None or y is None:
        assert x is None and y is None
        return
    assert x.shape == y.shape and x.dtype == y.dtype
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def assert_same_scores(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for name in ("logprobs", "entropy", "topk_logprobs"):
            assert_close(getattr(x, name), getattr(y, name))
        if x.topk_ids is not None or y.topk_ids is not None:
            np.testing.assert_allclose(x.topk_ids, y.topk_ids, atol=ATOL)


def test_logprobs_chunked_equals_one_call(server, faults, vocab):
    seqs = sequences(vocab)
    with TeacherClient(server.url, max_request_tokens=None) as c:
        whole = c.logprobs(seqs, top_k=4, entropy=True)
    assert whole.chunks == 1
    with TeacherClient(faults.url, max_request_tokens=100, max_concurrency=3) as c:
        parts = c.logprobs(seqs, top_k=4, entropy=True)
    total = sum(len(s["context_ids"]) + len(s["target_ids"]) for s in seqs)
    assert parts.chunks >= total // 100 and parts.chunks == faults.hits_on("/v1/logprobs")
    assert_same_scores(parts, whole)
    assert parts.usage == whole.usage
    # chunks of one call share its request id, suffixed by position
    ids = sorted(rid for _, rid in faults.hits)
    base = ids[0].rsplit(".", 1)[0]
    assert ids == sorted(f"{base}.{i}" for i in range(parts.chunks))


def test_per_call_budget_and_async(server, vocab):
    seqs = sequences(vocab, n=10, seed=11)
    with TeacherClient(server.url) as c:
        whole = c.logprobs(seqs, entropy=True)
        one_each = c.logprobs(seqs, entropy=True, max_request_tokens=1)
    assert one_each.chunks == len(seqs)
    assert_same_scores(one_each, whole)

    async def run():
        async with AsyncTeacherClient(server.url, max_request_tokens=50) as ac:
            return await ac.logprobs(seqs, entropy=True)

    parts = asyncio.run(run())
    assert parts.chunks > 1
    assert_same_scores(parts, whole)


@pytest.mark.parametrize("method", ["grpo", "dr_grpo", "opsd"])
def test_stateless_advantages_chunked_equal_one_call(server, vocab, method):
    gs = groups(vocab)
    with TeacherClient(server.url) as c:
        whole = c.advantages(method, gs, return_details=True, max_request_tokens=None)
        parts = c.advantages(method, gs, return_details=True, max_request_tokens=30)
    assert whole.chunks == 1 and parts.chunks > 1
    for x, y in zip(parts.flat(), whole.flat()):
        assert_close(x, y)
    assert parts.stats.rollouts == whole.stats.rollouts
    assert parts.stats.tokens == whole.stats.tokens
    assert parts.stats.masked_rollouts == whole.stats.masked_rollouts
    assert parts.stats.mean_abs_signal == pytest.approx(whole.stats.mean_abs_signal, rel=1e-5)


@pytest.mark.parametrize("method", ["antisd", "hsd", "opd"])
def test_batch_dependent_advantages_are_never_split(server, faults, vocab, method):
    gs = groups(vocab)
    if method == "opd":  # the served model is opd's teacher: the student is the caller's
        for g in gs:
            for r in g["rollouts"]:
                r["student_logprobs"] = [-1.0] * len(r["response_ids"])
    with TeacherClient(faults.url, max_request_tokens=30) as c:
        res = c.advantages(method, gs)
    assert res.chunks == 1 and faults.hits_on("/v1/advantages") == 1
    assert len(res.groups) == len(gs)
    if method == "antisd":
        assert res.state is not None  # one gate update for the whole step


def test_amrsd_splits_only_with_given_reflections(server, faults, vocab):
    gs = groups(vocab)
    # Without reflections the server writes them (slow): let the proxy refuse the call and
    # count the requests it would have taken.
    faults.fail_always(422)
    refused = pytest.raises(UnprocessableEntityError)
    with TeacherClient(faults.url, max_request_tokens=30) as c, refused:
        c.advantages("amrsd", gs)
    assert faults.hits_on("/v1/advantages") == 1
    with TeacherClient(server.url, max_request_tokens=30) as c:
        for g in gs:
            for r in g["rollouts"]:
                r["reflection"] = "<hint>check the carry</hint>"
        whole = c.advantages("amrsd", gs, max_request_tokens=None)
        parts = c.advantages("amrsd", gs)
    assert parts.chunks > 1
    for x, y in zip(parts.flat(), whole.flat()):
        assert_close(x, y)
