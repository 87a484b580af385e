"""Checkpoints: after OpenRLHF's ``save_logs_and_checkpoints`` wrote an HF checkpoint, the
teacher loads it (``POST /v1/weights``) and later calls require that version; the method state
(AntiSD's gate) is saved in the checkpoint and restored when a run resumes.

A server of its own (the shared ones must keep weights version 0 for other tests).
"""

from __future__ import annotations

import shutil
from types import SimpleNamespace
from unittest.mock import MagicMock

import httpx
import pytest
import torch

from client import StaleWeightsError
from server.launcher import ServerProcess
from trainer.openrlhf import plugin as plugin_mod
from trainer.openrlhf.config import PluginConfig
from trainer.openrlhf.plugin import TeacherCredit

pytestmark = pytest.mark.openrlhf


@pytest.fixture(scope="module")
def weights_server(tmp_path_factory, model_path):
    root = tmp_path_factory.mktemp("weights-openrlhf")
    log = tmp_path_factory.mktemp("weights-openrlhf-log") / "server.log"
    env = {
        "TC_MODEL": model_path,
        "TC_DEVICE": "cpu",
        "TC_DTYPE": "float32",
        "TC_LOG_LEVEL": "warning",
        "TC_WEIGHTS_ROOT": str(root),
    }
    with ServerProcess(env=env, log_path=log) as proc:
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


def test_checkpoint_is_loaded_into_the_teacher_and_then_required(
    orlhf, hf_model, weights_server, model_path
):
    # OpenRLHF writes {ckpt.path}/global_step{N}_hf; here ckpt.path is <weights root>/run1.
    shutil.copytree(model_path, weights_server.weights_root / "run1" / "global_step2_hf")
    credit = TeacherCredit(
        PluginConfig(urls=(weights_server.url,), method="grpo", weights_prefix="run1")
    )
    plugin_mod.set_plugin(credit)
    try:
        plugin_mod.patch_trainer(orlhf.ppo_trainer)
        trainer = fake_trainer(orlhf, save_steps=2)
        trainer.save_logs_and_checkpoints(1, {})  # no checkpoint at step 1: nothing loaded
        assert credit.min_weights_version is None
        trainer.save_logs_and_checkpoints(2, {})  # OpenRLHF's own method, wrapped
        trainer.actor_model_group.async_run_method.assert_called_once()
        assert credit.min_weights_version == 2
        ready = httpx.get(weights_server.url + "/readyz").json()
        assert ready["weights_version"] == 2

        exp = orlhf.Experience(
            sequences=torch.tensor([[5, 6, 7, 8], [5, 6, 9, 0]]),
            attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
            action_mask=torch.tensor([[0, 1, 1], [0, 1, 0]]),
            action_log_probs=torch.tensor([[0.0, -0.5, -0.25], [0.0, -1.0, 0.0]]),
            rewards=torch.tensor([1.0, 0.0]),
            index=[0, 1],
            labels=["14", "14"],
        )
        result = credit.apply([exp], 2, step=2)  # min_weights_version=2: the new weights answer
        assert result.weights_version == 2
        assert exp.advantages[:, 1].tolist() == pytest.approx([0.7071, -0.7071], abs=1e-3)

        credit.min_weights_version = 3  # a replica behind the trainer: the step fails loudly
        with pytest.raises(StaleWeightsError):
            credit.apply([exp], 2, step=3)
    finally:
        plugin_mod.set_plugin(None)
        credit.client.close()


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
