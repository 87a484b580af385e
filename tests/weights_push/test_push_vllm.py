"""Weights pushed into a real vLLM (CPU) replica: received in vLLM's worker process (over gloo, or
mapped from the trainer's shared-memory segment) and loaded through the model's own
``load_weights`` (server/engines/vllm_push.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from client import UnprocessableEntityError
from client.launcher import ServerProcess

from .conftest import perturbed
from .test_push_hf import SEQS, client, scores

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def vllm_replica(tmp_path_factory, weights_root, replica_env):
    pytest.importorskip("vllm")
    log = tmp_path_factory.mktemp("push-vllm") / "replica.log"
    env = replica_env(weights_root, backend="vllm")
    proc = ServerProcess(env=env, log_path=log, ready_timeout=900)  # vLLM starts slowly on CPU
    with proc:
        yield proc


@pytest.mark.parametrize("backend", ["gloo", "shm"])
def test_vllm_push_equals_the_same_weights_from_disk(vllm_replica, model, weights_root, backend):
    url = vllm_replica.url
    before = scores(None, url)
    state = perturbed(model, seed=21 if backend == "gloo" else 23)
    with client(url) as tc:
        res = tc.push_weights(state, before[0] + 1, backend=backend)
    assert res.weights_version == before[0] + 1 and res.backend == backend
    pushed = scores(None, url)
    assert pushed[0] == before[0] + 1
    assert np.abs(pushed[1][0] - before[1][0]).max() > 1e-2

    reference = copy.deepcopy(model)
    reference.load_state_dict(state, strict=False)
    reference.save_pretrained(weights_root / f"vllm-push-vs-disk-{backend}")
    with client(url) as tc:
        tc.load_weights(f"vllm-push-vs-disk-{backend}", before[0] + 2)
    from_disk = scores(None, url)
    assert from_disk[0] == before[0] + 2
    for a, b in zip(pushed[1], from_disk[1]):
        np.testing.assert_array_equal(a, b)


def test_vllm_refuses_a_wrong_shape_and_keeps_serving(vllm_replica, model):
    url = vllm_replica.url
    before = scores(None, url)
    state = perturbed(model, seed=22)
    name = "model.layers.1.self_attn.q_proj.weight"
    state[name] = state[name][:-1].contiguous()
    with client(url) as tc, pytest.raises(UnprocessableEntityError) as err:
        tc.push_weights(state, before[0] + 1, backend="gloo")
    assert name in str(err.value)
    after = scores(None, url)
    assert after[0] == before[0]
    for a, b in zip(before[1], after[1]):
        np.testing.assert_array_equal(a, b)
    assert len(SEQS) == len(after[1])
