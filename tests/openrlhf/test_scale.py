"""A step at scale: the batch scored on every replica with the batch statistics computed once
(exactly), timeouts sized from the work, concurrency from the pool, a step that rides out a
replica restart, and advantages that are not finite refused.

Two real replicas: the shared ``server`` (hf backend) and ``hf_server``, the same model at
weights version 0.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import httpx
import numpy as np
import pytest
import torch

from client import TeacherClient
from client.launcher import ServerProcess, free_port
from tests.openrlhf.test_advantages import N_SAMPLES, left_padded_experience, rollouts
from trainer.openrlhf.config import PluginConfig
from trainer.openrlhf.experiences import build_batch
from trainer.openrlhf.plugin import NonFiniteAdvantages, TeacherCredit
from trainer.openrlhf.sharded import group_tokens, shard_ranges, sharded_advantages

pytestmark = pytest.mark.openrlhf

CASES = [  # (method, params): the methods whose numbers depend on the whole batch
    ("antisd", {"warmup_steps": 1}),
    ("hsd", {}),
    ("hsd", {"mix": 0.5}),
    ("opd", {}),
]


@pytest.fixture(scope="module")
def groups(orlhf, hf_model):
    exp = left_padded_experience(orlhf, hf_model, rollouts(hf_model[1]))
    return build_batch([exp], N_SAMPLES).groups


def assert_same_state(got: dict | None, want: dict | None) -> None:
    """Method state (AntiSD's gate) equal up to the float32 noise of another batch composition."""
    assert (got is None) == (want is None)
    if got is None:
        return
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, float | list):
            np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=2e-5, err_msg=key)
        else:
            assert got[key] == value, key


@pytest.mark.parametrize("method,params", CASES, ids=[f"{m}{p}" for m, p in CASES])
def test_split_scoring_equals_one_unsplit_call(groups, server, hf_server, method, params):
    """Shards of 1 group on 3 requests over 2 replicas, then one math-only call: the same
    advantages, state and statistics as the whole batch in one request (two steps, so
    AntiSD's gate state travels too)."""
    one = TeacherClient(server.url, timeout=300)
    # Two replicas of one backend (a pool never mixes backends: vLLM's entropy is a top-k lower
    # bound, docs/vllm.md); the vLLM run sends its shards to one replica as separate requests.
    urls = [server.url, hf_server.url] if server.backend == "hf" else [server.url]
    pool = TeacherClient(urls, timeout=300)
    state_one = state_split = None
    try:
        for step in (0, 1):
            common = {"params": params, "step": step, "seed": 11 + step}
            whole = one.advantages(method, groups, state=state_one, **common)
            split = sharded_advantages(
                pool,
                method,
                groups,
                shards=3,
                state=state_split,
                min_weights_version=None,
                timeout=300.0,
                tokens_per_second=1000.0,
                **common,
            )
            assert whole.chunks == 1 and split.chunks == 4  # 3 shards + the math call
            # Same math on the same numbers: what differs is the engine's float32 forward in
            # another batch composition (padding, kernel shapes), ~1e-6. A wrong peer draw or
            # batch statistic moves advantages by 1e-2 or more.
            for got, want in zip(split.flat(), whole.flat()):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)
            assert_same_state(split.state, whole.state)
            a, b = split.stats, whole.stats
            assert (a.rollouts, a.tokens, a.gate, a.masked_rollouts) == (
                b.rollouts,
                b.tokens,
                b.gate,
                b.masked_rollouts,
            )
            assert a.mean_abs_signal == pytest.approx(b.mean_abs_signal, abs=2e-5)
            if method == "antisd":
                assert a.teacher_entropy == pytest.approx(b.teacher_entropy, abs=2e-5)
            state_one, state_split = whole.state, split.state
    finally:
        one.close()
        pool.close()


def test_the_plugin_spreads_a_step_over_the_pool(orlhf, hf_model, server, hf_server):
    exp = left_padded_experience(orlhf, hf_model, rollouts(hf_model[1]))
    credit = TeacherCredit(
        PluginConfig(urls=(server.url, hf_server.url), method="opd", timeout=300.0)
    )
    try:
        result = credit.apply([exp], N_SAMPLES, step=0)
        assert result.chunks == 3  # a shard per replica, then the math
        assert credit.client.max_concurrency >= 2  # from the pool, not a fixed 4
    finally:
        credit.client.close()
    big = TeacherCredit(PluginConfig(urls=tuple(f"http://t{i}:1" for i in range(8)), method="opd"))
    assert big.client.max_concurrency >= 8


def test_shards_are_whole_groups_balanced_by_tokens():
    assert shard_ranges([10, 10, 10, 10], 2) == [range(0, 2), range(2, 4)]
    assert shard_ranges([30, 5, 5, 5, 5], 2) == [range(0, 1), range(1, 5)]
    assert shard_ranges([1, 1], 8) == [range(0, 1), range(1, 2)]
    assert shard_ranges([4, 4, 4], 1) == [range(0, 3)]


def test_read_timeouts_grow_with_the_work(groups):
    """A shard's read timeout is the base plus its tokens at the configured throughput."""
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"]["read"])
        body = json.loads(request.content)
        answer = {
            "method": body["method"],
            "weights_version": 0,
            "state": None,
            "groups": [
                {"rollouts": [{"advantages": [0.0] * 1} for _ in g["rollouts"]]}
                for g in body["groups"]
            ],
            "stats": {"rollouts": 1, "tokens": 1},
        }
        return httpx.Response(200, json=answer)

    client = TeacherClient("http://t:1", http_transport=httpx.MockTransport(handler))
    sharded_advantages(
        client,
        "opd",
        groups,
        shards=1,
        params={},
        step=0,
        state=None,
        seed=0,
        min_weights_version=None,
        timeout=60.0,
        tokens_per_second=10.0,
    )
    tokens = sum(group_tokens(g) for g in groups)
    assert tokens > 600
    assert seen == [pytest.approx(60.0 + tokens / 10.0)]


def nan_answer(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    groups = []
    for g in body["groups"]:
        rollouts = []
        for r in g["rollouts"]:
            n = r["response_ids"]["shape"][0] if isinstance(r["response_ids"], dict) else 0
            rollouts.append({"advantages": [float("nan")] * n})
        groups.append({"rollouts": rollouts})
    answer = {
        "method": body["method"],
        "weights_version": 0,
        "state": None,
        "groups": groups,
        "stats": {"rollouts": 1, "tokens": 1},
    }
    return httpx.Response(
        200, content=json.dumps(answer), headers={"content-type": "application/json"}
    )


def test_non_finite_advantages_never_reach_the_experiences(orlhf, hf_model):
    """A pool that answers NaN (a bug, a broken replica): the step fails, nothing is written."""
    exp = left_padded_experience(orlhf, hf_model, rollouts(hf_model[1]))
    exp.advantages = sentinel = torch.full(exp.action_mask.shape, 7.0)
    client = TeacherClient("http://t:1", http_transport=httpx.MockTransport(nan_answer))
    credit = TeacherCredit(PluginConfig(urls=("http://t:1",), method="grpo"), client=client)
    with pytest.raises(NonFiniteAdvantages, match="rollout 0"):
        credit.apply([exp], N_SAMPLES, step=0)
    assert exp.advantages is sentinel and credit.calls == 0


def test_a_step_waits_for_a_teacher_that_comes_back(orlhf, hf_model, server_env, tmp_path, caplog):
    """The pool is down when the step starts and up ~seconds later: the transport gives up
    after its retries, the step's call is tried again (each wait logged) and succeeds."""
    exp = left_padded_experience(orlhf, hf_model, rollouts(hf_model[1]))
    port = free_port()
    proc = ServerProcess(env=server_env(), port=port, log_path=tmp_path / "server.log")
    starter = threading.Thread(target=lambda: (time.sleep(2.0), proc.start()))
    credit = TeacherCredit(
        PluginConfig(urls=(proc.url,), method="grpo", retries=1, step_retry=600.0)
    )
    starter.start()
    try:
        with caplog.at_level(logging.WARNING, logger="tokencredit"):
            result = credit.apply([exp], N_SAMPLES, step=0)
        assert result.stats.rollouts == len(exp.index)
        waits = [r.message for r in caplog.records if "trying again" in r.message]
        assert waits and "ConnectError" in waits[0]
    finally:
        starter.join()
        credit.client.close()
        proc.stop()
