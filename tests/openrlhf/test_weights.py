"""The teacher's weights over a run (`trainer.openrlhf.weights`) and the method state in
OpenRLHF's checkpoints: a run loads its own weights before its first call and after every HF
checkpoint, under run-unique versions; a restarted replica gets them back; old HF folders are
deleted; the method state (AntiSD's gate) is in every checkpoint and restored on resume.

A server of its own (the shared ones must keep weights version 0 for other tests).
"""

from __future__ import annotations

import logging
import shutil
import time
from types import SimpleNamespace
from unittest.mock import MagicMock

import httpx
import pytest
import torch

from client.launcher import ServerProcess
from trainer.openrlhf import plugin as plugin_mod
from trainer.openrlhf.config import PluginConfig
from trainer.openrlhf.plugin import TeacherCredit
from trainer.openrlhf.weights import STEP_SPAN, TeacherWeights

pytestmark = pytest.mark.openrlhf


@pytest.fixture(scope="module")
def weights_server(tmp_path_factory, make_server):
    root = tmp_path_factory.mktemp("weights-openrlhf")
    with make_server("weights-openrlhf-log", TC_WEIGHTS_ROOT=str(root)) as proc:
        proc.weights_root = root
        yield proc


def fake_trainer(orlhf, save_steps: int):
    cls = orlhf.ppo_trainer.BasePPOTrainer
    trainer = cls.__new__(cls)
    trainer.args = SimpleNamespace(
        ckpt=SimpleNamespace(save_hf=True, save_steps=save_steps),
        logger=SimpleNamespace(logging_steps=1000),
    )
    trainer.wandb_logger = trainer.tensorboard_logger = None
    trainer.best_eval_metric_key, trainer.best_eval_metric_value = "", float("-inf")
    trainer._latest_eval_metric_value = None
    trainer.actor_model_group = MagicMock()  # its save_checkpoint is the GPU side
    trainer.critic_model_group = None
    return trainer


def two_rollouts(orlhf):
    return orlhf.Experience(
        sequences=torch.tensor([[5, 6, 7, 8], [5, 6, 9, 0]]),
        attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        action_mask=torch.tensor([[0, 1, 1], [0, 1, 0]]),
        action_log_probs=torch.tensor([[0.0, -0.5, -0.25], [0.0, -1.0, 0.0]]),
        rewards=torch.tensor([1.0, 0.0]),
        index=[0, 1],
        labels=["14", "14"],
    )


def syncing_credit(url: str, run_epoch: int, **config) -> TeacherCredit:
    config = PluginConfig(
        urls=(url,), method="grpo", weights_prefix="run1", base_weights="base", **config
    )
    weights = TeacherWeights(
        config.urls, "run1", base_path="base", run_epoch=run_epoch, prune=config.prune_checkpoints
    )
    return TeacherCredit(config, weights=weights)


def pool_version(url: str) -> int:
    return httpx.get(url + "/readyz").json()["weights_version"]


def test_a_run_puts_its_own_weights_on_a_pool_that_served_an_earlier_run(
    orlhf, weights_server, model_path, tmp_path
):
    """An earlier run left version 30 on the pool. The new run loads its base model before its
    first call, under run-unique versions, so its first checkpoint loads (no 409), and earlier
    HF folders are deleted once the pool serves a later one."""
    root = weights_server.weights_root
    shutil.copytree(model_path, root / "base", dirs_exist_ok=True)
    for step in (2, 4):
        shutil.copytree(model_path, root / "run1" / f"global_step{step}_hf", dirs_exist_ok=True)
    if pool_version(weights_server.url) < 30:  # the earlier run
        res = httpx.post(
            weights_server.url + "/v1/weights", json={"path": "base", "version": 30}, timeout=120
        )
        assert res.status_code == 200, res.text

    epoch = int(time.time())
    credit = syncing_credit(weights_server.url, epoch)
    plugin_mod.set_plugin(credit)
    try:
        plugin_mod.patch_trainer(orlhf.ppo_trainer)
        result = credit.apply([two_rollouts(orlhf)], 2, step=0)
        v0 = epoch * STEP_SPAN
        assert result.weights_version == v0 > 30  # scored by this run's own weights
        assert credit.min_weights_version == v0 and pool_version(weights_server.url) == v0

        trainer = fake_trainer(orlhf, save_steps=2)
        trainer.args.ckpt.path = str(root / "run1")
        trainer.save_logs_and_checkpoints(1, {})  # no checkpoint at step 1: nothing loaded
        assert credit.min_weights_version == v0
        trainer.save_logs_and_checkpoints(2, {})  # OpenRLHF's own method, wrapped
        trainer.actor_model_group.async_run_method.assert_called_once()
        assert credit.min_weights_version == pool_version(weights_server.url) == v0 + 2
        trainer.save_logs_and_checkpoints(4, {})
        assert pool_version(weights_server.url) == v0 + 4
        # every replica serves step 4: step 2's folder is gone, step 4's kept for a resume
        assert sorted(p.name for p in (root / "run1").iterdir()) == ["global_step4_hf"]

        exp = two_rollouts(orlhf)
        result = credit.apply([exp], 2, step=4)
        assert result.weights_version == v0 + 4
        assert exp.advantages[:, 1].tolist() == pytest.approx([0.7071, -0.7071], abs=1e-3)
    finally:
        plugin_mod.set_plugin(None)
        credit.client.close()

    # A resume (a later start) from that checkpoint: versions above everything loaded before.
    resumed = syncing_credit(weights_server.url, epoch + 1)
    try:
        result = resumed.apply([two_rollouts(orlhf)], 2, step=4, ckpt_path=str(root / "run1"))
        assert result.weights_version == (epoch + 1) * STEP_SPAN + 4
    finally:
        resumed.client.close()


def test_a_restarted_replica_gets_the_weights_back(orlhf, model_path, server_env, tmp_path, caplog):
    """A replica restarts on its start-up model (version 0): the run's next call gets a 409,
    the plugin reloads the run's weights there and the step goes on."""
    root = tmp_path / "root"
    shutil.copytree(model_path, root / "base")
    env = server_env(TC_WEIGHTS_ROOT=str(root))
    proc = ServerProcess(env=env, log_path=tmp_path / "server.log").start()
    credit = syncing_credit(proc.url, int(time.time()), retries=1, step_retry=300)
    try:
        credit.apply([two_rollouts(orlhf)], 2, step=0)
        required = credit.min_weights_version
        proc.stop()
        proc.start()  # same port, weights version 0
        assert pool_version(proc.url) == 0
        with caplog.at_level(logging.WARNING, logger="tokencredit"):
            result = credit.apply([two_rollouts(orlhf)], 2, step=1)
        assert result.weights_version == required == pool_version(proc.url)
        assert any("lost the run's weights" in r.message for r in caplog.records)
    finally:
        credit.client.close()
        proc.stop()


def test_method_state_is_saved_with_the_checkpoint_and_restored_on_resume(orlhf, tmp_path):
    plugin_mod.patch_trainer(orlhf.ppo_trainer)
    before = TeacherCredit(PluginConfig(urls=("http://unused:1",), method="antisd"))
    before.state = {"gate": "open", "warmup_steps_seen": 7}  # opaque to the plugin
    before.calls = 7
    plugin_mod.set_plugin(before)
    ray_get = orlhf.ppo_trainer.ray.get
    try:
        trainer = fake_trainer(orlhf, save_steps=2)
        trainer.args.ckpt.path, trainer.args.ckpt.load_enable = str(tmp_path), True
        trainer.save_logs_and_checkpoints(2, {}, {"global_step": 2})  # OpenRLHF's own, wrapped
        saved = trainer.actor_model_group.async_run_method.call_args.kwargs["client_states"]
        assert saved["global_step"] == 2 and saved["tokencredit"]["calls"] == 7

        # a new process resumes: OpenRLHF reads the actor's checkpoint states back
        after = TeacherCredit(PluginConfig(urls=("http://unused:1",), method="antisd"))
        plugin_mod.set_plugin(after)
        (tmp_path / "_actor").mkdir()
        trainer.actor_model_group.async_run_method.return_value = [saved]
        orlhf.ppo_trainer.ray.get = lambda refs: refs  # ray is a stub here
        states = trainer.init_checkpoint_states()  # OpenRLHF's own, wrapped
        assert states["global_step"] == 2
        assert after.state == before.state and after.calls == 7
    finally:
        orlhf.ppo_trainer.ray.get = ray_get
        plugin_mod.set_plugin(None)


def test_method_state_is_in_the_best_checkpoint_too(orlhf):
    """`fit` hands its own client_states to save_best_checkpoint, and a best checkpoint saved
    at the same step becomes `latest`: the one a resume reads must carry the method state."""
    plugin_mod.patch_trainer(orlhf.ppo_trainer)
    credit = TeacherCredit(PluginConfig(urls=("http://unused:1",), method="antisd"))
    credit.state, credit.calls = {"gate": 1, "warmup_steps_seen": 3}, 3
    plugin_mod.set_plugin(credit)
    try:
        trainer = fake_trainer(orlhf, save_steps=1000)  # no regular checkpoint at this step
        client_states = {"global_step": 3}  # fit's dict, passed to both calls
        trainer.save_logs_and_checkpoints(3, {}, client_states)
        trainer.actor_model_group.async_run_method.assert_not_called()
        trainer.save_best_checkpoint({"eval_math_pass1": 0.5}, 3, client_states)
        call = trainer.actor_model_group.async_run_method.call_args.kwargs
        assert call["tag"] == "best_global_step3"
        assert call["client_states"]["tokencredit"] == {"state": credit.state, "calls": 3}
        trainer.save_best_checkpoint({"eval_math_pass1": 0.7}, 4)  # any caller, no dict given
        call = trainer.actor_model_group.async_run_method.call_args.kwargs
        assert call["client_states"]["tokencredit"]["calls"] == 3
    finally:
        plugin_mod.set_plugin(None)
