"""``teacher_weights_sync="push"``: the TRL trainer keeps the teacher on-policy over a gloo group
(``TeacherClient.push_weights``), against a server that has no weights root at all."""

from __future__ import annotations

import pytest
import torch

from client import TeacherClient
from server.settings import DEFAULT_MODEL_DIR
from trainer.trl import TokenCreditConfig, TokenCreditGRPOTrainer


@pytest.fixture(scope="module")
def push_server(make_server):
    """An hf server without TC_WEIGHTS_ROOT: POST /v1/weights cannot load anything there, so
    the only way the trainer's weights get in is the push."""
    proc = make_server(
        "trl-push-server", TC_MODEL=str(DEFAULT_MODEL_DIR), TC_BACKEND="hf", OMP_NUM_THREADS="1"
    ).start()
    proc.weights_root = None
    yield proc
    proc.stop()


class PushRecording(TokenCreditGRPOTrainer):
    """Keeps a copy of the policy's weights at every push (the served weights from then on)."""

    def _sync_teacher(self):
        before = self.min_weights_version
        super()._sync_teacher()
        if self.min_weights_version != before:
            model = self.accelerator.unwrap_model(self.model)
            self.pushed = {k: v.detach().clone() for k, v in model.state_dict().items()}


def logprobs_of(state: dict[str, torch.Tensor], context: list[int], target: list[int]):
    """log p(target_j | context, target_<j) under ``state``, computed here (float32)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(DEFAULT_MODEL_DIR), dtype=torch.float32)
    model.load_state_dict(state)
    ids = torch.tensor([context + target])
    with torch.no_grad():
        logits = model(ids).logits[0, len(context) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(target)[:, None])[:, 0]


def test_hsd_with_push_sync_keeps_the_server_on_the_policy(config_for, make_trainer, push_server):
    cfg = config_for(push_server, "hsd", teacher_weights_sync="push")
    assert cfg.teacher_weights_root is None
    trainer = make_trainer(cfg, trainer_cls=PushRecording)
    initial = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()

    assert trainer.state.global_step == 2 and trainer.credit_calls == 2
    assert trainer._pusher.pushes == 2  # before each step's batch, as with the disk path
    with TeacherClient(push_server.url) as tc:
        assert tc.model().weights_version == trainer.min_weights_version >= 2
        context, target = [3, 14, 15, 92, 65], [35, 89, 79, 32, 38, 46]
        served = tc.logprobs([{"context_ids": context, "target_ids": target}])
    served_lp = torch.as_tensor(served.sequences[0].logprobs, dtype=torch.float32)
    # The served weights are the policy of the last push (after step 1's update), not the start.
    torch.testing.assert_close(
        served_lp, logprobs_of(trainer.pushed, context, target), atol=1e-5, rtol=0
    )
    assert not torch.allclose(served_lp, logprobs_of(initial, context, target), atol=1e-4)


def test_push_sync_needs_no_weights_root(tmp_path):
    kw = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    cfg = TokenCreditConfig(credit_method="hsd", teacher_weights_sync="push", **kw)
    assert cfg.teacher_weights_root is None
    with pytest.raises(ValueError, match=r"teacher_weights_root .* or teacher_weights_sync"):
        TokenCreditConfig(credit_method="hsd", **kw)  # disk (the default) without a root
    with pytest.raises(ValueError, match="teacher_weights_sync must be"):
        TokenCreditConfig(credit_method="grpo", teacher_weights_sync="nfs", **kw)
    with pytest.raises(ValueError, match="teacher_push_backend must be"):
        TokenCreditConfig(
            credit_method="hsd", teacher_weights_sync="push", teacher_push_backend="mpi", **kw
        )
