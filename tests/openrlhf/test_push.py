"""``TOKENCREDIT_WEIGHTS_SYNC=push``: the actor's weights reach every replica over gloo, with
the run's versions, through OpenRLHF's own actor classes (`trainer.openrlhf.push`).

Two real servers without a weights root (no HF folder can be loaded there); the actor is
OpenRLHF's real ``Actor`` around the test model, inside OpenRLHF's real ``BaseModelActor`` (its
``execute_batch`` is the dispatch the trainer's process uses). Ray is the one stub: the actor
group calls the actors in this process where Ray would call them remotely.
"""

from __future__ import annotations

import logging
import sys
import time
from types import SimpleNamespace

import httpx
import pytest
import torch

from client import TeacherClient
from client.launcher import start_all
from trainer.openrlhf import plugin as plugin_mod
from trainer.openrlhf import push as push_mod
from trainer.openrlhf.config import PluginConfig
from trainer.openrlhf.plugin import STEP_ATTR, TeacherCredit

from .test_advantages import make_experiences, rollouts
from .test_weights import fake_trainer, two_rollouts

pytestmark = pytest.mark.openrlhf

CONTEXT, TARGET = [3, 14, 15, 92, 65], [35, 89, 79, 32, 38, 46]


@pytest.fixture(scope="module")
def pool(make_server):
    """Two replicas, no TC_WEIGHTS_ROOT."""
    procs = start_all([make_server(f"push-openrlhf-{i}", OMP_NUM_THREADS="1") for i in range(2)])
    yield procs
    for proc in procs:
        proc.stop()


class InProcessGroup:
    """OpenRLHF's ``RayActorGroup.async_run_method``, with each actor called here (Ray is
    stubbed): the results stand in for the object refs, and ``ray.get`` is the identity."""

    def __init__(self, actors):
        self.actors = actors

    def async_run_method(self, method_name, *args, **kwargs):
        return [getattr(actor, method_name)(*args, **kwargs) for actor in self.actors]


def policy_actor(orlhf, model_path):
    """OpenRLHF's BaseModelActor holding OpenRLHF's Actor (rank 0, no ZeRO-3), as
    ``PolicyModelActor.init_model_from_pretrained`` leaves it."""
    from transformers import AutoModelForCausalLM

    push_mod.install_push_method(orlhf.launcher)  # what the hook does in an actor's process
    cls = orlhf.launcher.BaseModelActor
    proc = cls.__new__(cls)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    proc.actor = orlhf.Actor(model)
    ds = SimpleNamespace(zero_stage=0, tensor_parallel_size=1)
    proc.strategy = SimpleNamespace(args=SimpleNamespace(ds=ds), is_rank_0=lambda: True)
    return proc


def train(actor_proc, seed: int) -> None:
    """A stand-in for a PPO update: every weight moves."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in actor_proc.actor.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)


def own_logprobs(actor_proc) -> torch.Tensor:
    model = push_mod.hf_model(actor_proc.actor)
    with torch.no_grad():
        logits = model(torch.tensor([CONTEXT + TARGET])).logits[0, len(CONTEXT) - 1 : -1]
    return torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(TARGET)[:, None])[:, 0]


def served(url: str, version: int) -> torch.Tensor:
    with TeacherClient(url) as tc:
        res = tc.logprobs(
            [{"context_ids": CONTEXT, "target_ids": TARGET}], min_weights_version=version
        )
    assert res.weights_version == version
    return torch.as_tensor(res.sequences[0].logprobs, dtype=torch.float32)


def pool_version(url: str) -> int:
    return httpx.get(url + "/readyz").json()["weights_version"]


def push_credit(urls, run_epoch: int, **config) -> TeacherCredit:
    """The plugin as `get_plugin` builds it from TOKENCREDIT_WEIGHTS_SYNC=push (run epoch
    pinned: two runs of this file in one second must not share versions)."""
    credit = TeacherCredit(
        PluginConfig(urls=tuple(urls), method="grpo", weights_sync="push", **config)
    )
    credit.weights.run_epoch = run_epoch
    return credit


@pytest.fixture
def ray_get_identity(orlhf):
    modules = (orlhf.ppo_trainer, orlhf.experience_maker)
    saved = [m.ray.get for m in modules]
    for m in modules:
        m.ray.get = lambda refs: refs  # ray is a stub here
    yield
    for m, get in zip(modules, saved):
        m.ray.get = get
    plugin_mod.set_plugin(None)
    push_mod.close_clients()


def test_a_publish_pushes_the_actor_weights_to_every_replica(
    orlhf, pool, model_path, hf_model, tmp_path, ray_get_identity
):
    torch.set_num_threads(1)
    urls = [p.url for p in pool]
    epoch = max(int(time.time()), max(pool_version(u) for u in urls) // 1_000_000 + 1)
    credit = push_credit(urls, epoch)
    plugin_mod.set_plugin(credit)  # the actors' processes read the same configuration
    plugin_mod.patch_trainer(orlhf.ppo_trainer)
    actor = policy_actor(orlhf, model_path)
    train(actor, seed=1)  # not the model the replicas started with
    group = InProcessGroup([actor])

    # The first step, through OpenRLHF's own compute_advantages_and_returns (wrapped): it binds
    # the experience maker's actor group, and the run's weights reach the pool before the call.
    plugin_mod.patch_experience_maker(orlhf.experience_maker)
    maker, batches = make_experiences(orlhf, hf_model, rollouts(hf_model[1]), dynamic=False)
    maker.actor_model_group = group
    setattr(maker, STEP_ATTR, 0)
    for exp in batches:
        exp.kl = torch.zeros_like(exp.action_log_probs)
    maker.compute_advantages_and_returns(batches)
    result = credit.last
    v0 = credit.weights.version_of(0)
    assert result.weights_version == v0 == credit.min_weights_version
    for url in urls:
        assert pool_version(url) == v0
        torch.testing.assert_close(served(url, v0), own_logprobs(actor), atol=1e-5, rtol=0)

    # A training step later, OpenRLHF's save_logs_and_checkpoints (wrapped) publishes step 1:
    # no checkpoint is due and none is written, the push alone moves the pool.
    before = own_logprobs(actor)
    train(actor, seed=2)
    trainer = fake_trainer(orlhf, save_steps=1000)
    trainer.args.ckpt.save_hf, trainer.args.ckpt.path = False, str(tmp_path)
    trainer.actor_model_group = group
    trainer.save_logs_and_checkpoints(1, {})
    assert credit.min_weights_version == v0 + 1
    for url in urls:
        assert pool_version(url) == v0 + 1
        now = served(url, v0 + 1)
        torch.testing.assert_close(now, own_logprobs(actor), atol=1e-5, rtol=0)
        assert not torch.allclose(now, before, atol=1e-4)  # the new weights, not the old
    assert list(tmp_path.iterdir()) == []  # no HF folder anywhere

    result = credit.apply([two_rollouts(orlhf)], 2, step=1)
    assert result.weights_version == v0 + 1


def test_a_restarted_replica_gets_the_pushed_weights_back(
    orlhf, pool, model_path, caplog, ray_get_identity
):
    """A replica restarts on its start-up model (version 0, no transfer group): the run's next
    call gets a 409, the plugin pushes the run's version to that replica alone, and the step goes
    on; the next publish rejoins the restarted replica's group and reaches both."""
    torch.set_num_threads(1)
    urls = [p.url for p in pool]
    epoch = max(int(time.time()), max(pool_version(u) for u in urls) // 1_000_000 + 1)
    credit = push_credit(urls, epoch, retries=1, step_retry=300)
    plugin_mod.set_plugin(credit)
    plugin_mod.patch_trainer(orlhf.ppo_trainer)
    actor = policy_actor(orlhf, model_path)
    train(actor, seed=3)
    group = InProcessGroup([actor])
    credit.bind_actor_group(group, lambda refs: refs)
    credit.apply([two_rollouts(orlhf)], 2, step=0)
    required = credit.min_weights_version

    restarted = pool[1]
    restarted.stop()
    restarted.start()  # same port, weights version 0
    assert pool_version(restarted.url) == 0
    with caplog.at_level(logging.WARNING, logger="tokencredit"):
        result = credit.apply([two_rollouts(orlhf)], 2, step=0)
    assert result.weights_version == required == pool_version(restarted.url)
    assert any("lost the run's weights" in r.message for r in caplog.records)
    torch.testing.assert_close(
        served(restarted.url, required), own_logprobs(actor), atol=1e-5, rtol=0
    )

    train(actor, seed=4)
    trainer = fake_trainer(orlhf, save_steps=1000)
    trainer.args.ckpt.save_hf = False
    trainer.actor_model_group = group
    trainer.save_logs_and_checkpoints(1, {})
    for url in urls:
        assert pool_version(url) == required + 1
        torch.testing.assert_close(
            served(url, required + 1), own_logprobs(actor), atol=1e-5, rtol=0
        )


class ZeroThreeStub:
    """DeepSpeed (GPU-only, absent here) as ZeRO-3 leaves the model: every parameter is an empty
    shard until ``zero.GatheredParameters([p])`` gathers it for the context's duration."""

    def __init__(self, model):
        self.full = {id(p): p.data for p in model.parameters()}
        self.gathers: list[int] = []
        for p in model.parameters():
            p.data = torch.empty(0)
        self.zero = SimpleNamespace(GatheredParameters=self.gathered)

    def gathered(self, params, enabled=True):
        import contextlib

        @contextlib.contextmanager
        def ctx():
            assert enabled and len(params) == 1
            (p,) = params
            self.gathers.append(id(p))
            p.data = self.full[id(p)]
            try:
                yield
            finally:
                p.data = torch.empty(0)

        return ctx()


@pytest.mark.parametrize("rank0", [True, False])
def test_zero3_parameters_are_gathered_one_by_one_on_every_rank(model_path, monkeypatch, rank0):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    stub = ZeroThreeStub(model)
    monkeypatch.setitem(sys.modules, "deepspeed", stub)

    state = push_mod.gathered_state(model, rank0=rank0, zero3=True, device="cpu")
    unique = {id(p) for p in model.parameters()}
    # every rank takes part in each gather, once per parameter (a tied one once)
    assert sorted(stub.gathers) == sorted(unique) and len(stub.gathers) == len(unique)
    if not rank0:
        assert state is None
        return
    assert set(state) == set(expected)  # parameters under all their names, persistent buffers
    for name, tensor in expected.items():
        torch.testing.assert_close(state[name], tensor, atol=0, rtol=0)
    assert state["lm_head.weight"] is state["model.embed_tokens.weight"]  # tied: one copy
    assert all(p.numel() == 0 for p in model.parameters())  # the shards are left as they were
