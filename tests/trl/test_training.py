"""Real TRL steps on the service's per-token advantages (trainer.trl)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client import TeacherClient
from trainer.trl import TeacherCreditError, TokenCreditConfig, TokenCreditGRPOTrainer
from trainer.trl.arith import boxed_reward


def params_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_two_real_steps_change_the_policy(tiny_config, make_trainer, trl_server):
    trainer = make_trainer(tiny_config("hsd"))
    before = params_of(trainer.model)
    trainer.train()

    assert trainer.state.global_step == 2
    assert trainer.credit_calls == 2  # one /v1/advantages call per step, none skipped
    after = params_of(trainer.model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before), f"unchanged: {set(before) - set(changed)}"
    # hsd's teacher is the current policy: pushed before each step's batch, and the server now
    # serves the weights of the second step's batch.
    with TeacherClient(trl_server.url) as tc:
        assert tc.model().weights_version == trainer.min_weights_version
    logged = [h for h in trainer.state.log_history if "tokencredit/mean_abs_advantage" in h]
    assert len(logged) == 2 and all(h["tokencredit/mean_abs_advantage"] > 0 for h in logged)


class Recording(TokenCreditGRPOTrainer):
    """Keeps the generation batch (before TRL shuffles it) and what reaches ``_compute_loss``."""

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        self.rec_inputs = [dict(x) for x in inputs]
        self.rec_batch = {k: v.clone() for k, v in out.items() if torch.is_tensor(v)}
        return out

    def _compute_loss(self, model, inputs):
        self.rec_loss_inputs = {k: v.clone() for k, v in inputs.items() if torch.is_tensor(v)}
        return super()._compute_loss(model, inputs)


def test_advantages_in_the_loss_equal_a_direct_call(tiny_config, make_trainer, trl_server):
    rewards: list[float] = []

    def reward(completions, answer, **kw):
        r = boxed_reward(completions, answer)
        rewards.extend(r)
        return r

    reward.__name__ = "boxed_reward"
    # One step: the server still holds the weights that scored it (pushed before the batch).
    cfg = tiny_config("hsd", max_steps=1, max_completion_length=24)
    trainer = make_trainer(cfg, trainer_cls=Recording, reward=reward)
    trainer.train()

    batch, rows = trainer.rec_batch, trainer.rec_inputs
    B, C = batch["completion_ids"].shape
    assert batch["advantages"].shape == (B, C)
    # The direct request, rebuilt from TRL's padded tensors and masks alone.
    groups = []
    for g in range(B // 4):
        rollouts = []
        for b in range(4 * g, 4 * g + 4):
            ids = batch["completion_ids"][b][batch["completion_mask"][b].bool()].tolist()
            rollouts.append({"response_ids": ids, "reward": rewards[b]})
        prompt = batch["prompt_ids"][4 * g][batch["prompt_mask"][4 * g].bool()].tolist()
        row = rows[4 * g]
        groups.append(
            {
                "prompt_ids": prompt,
                "problem": row["problem"],
                "reference_answer": row["answer"],
                "reference_solution": row["solution"],
                "rollouts": rollouts,
            }
        )
    with TeacherClient(trl_server.url) as tc:
        # No student_logprobs: the server computes them with the same weights as the policy's.
        direct = tc.advantages("hsd", groups, step=0, seed=cfg.credit_seed, encoding="json")
    expected = torch.zeros((B, C))
    for b, adv in enumerate(direct.flat()):
        expected[b, : len(adv)] = torch.from_numpy(np.asarray(adv))
    assert (expected != 0).any()
    torch.testing.assert_close(batch["advantages"], expected, atol=2e-4, rtol=0)
    assert (batch["advantages"][~batch["completion_mask"].bool()] == 0).all()  # padding

    # What reached the loss is the same rows, shuffled by TRL: each loss row matches a batch row.
    loss_in = trainer.rec_loss_inputs
    assert loss_in["advantages"].shape == (B, C)
    for b in range(B):
        ids, adv = loss_in["completion_ids"][b], loss_in["advantages"][b]
        assert any(
            torch.equal(ids, batch["completion_ids"][j])
            and torch.equal(adv, batch["advantages"][j])
            for j in range(B)
        ), f"loss row {b} has advantages that no generated rollout got"


def test_antisd_state_round_trips_through_a_checkpoint(tiny_config, make_trainer):
    cfg = tiny_config("antisd", max_steps=2, save_strategy="steps", save_steps=2)
    first = make_trainer(cfg)
    first.train()
    saved = first.credit_state
    assert len(saved["warmup_history"]) == 2  # one gate update per step

    class Spy(TokenCreditGRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            self.sent_states = [*getattr(self, "sent_states", []), self.credit_state]
            return super()._generate_and_score_completions(inputs)

    resumed = make_trainer(tiny_config("antisd", max_steps=3), trainer_cls=Spy)
    resumed.train(resume_from_checkpoint=str(first.args.output_dir) + "/checkpoint-2")
    assert resumed.sent_states == [saved]  # step 3 continued the saved gate, not a fresh one
    assert len(resumed.credit_state["warmup_history"]) == 3


@pytest.mark.parametrize("failure", ["bad_param", "unreachable"])
def test_a_server_error_fails_the_step(failure, tiny_config, make_trainer):
    from client.launcher import free_port

    if failure == "bad_param":
        cfg = tiny_config("hsd", credit_params={"no_such_param": 1})
        match = r"failed at step 0 .*no_such_param"
    else:
        cfg = tiny_config("grpo", teacher_url=f"http://127.0.0.1:{free_port()}")
        match = r"failed at step 0 .*after the client's retries.*Connect"
    trainer = make_trainer(cfg)
    before = params_of(trainer.model)
    with pytest.raises(TeacherCreditError, match=match):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(v, params_of(trainer.model)[k]) for k, v in before.items())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"credit_method": "hsd", "temperature": 0.7}, "temperature=1.0"),
        ({"credit_method": "antisd", "teacher_weights_root": None}, "teacher_weights_root"),
        ({"credit_method": "opsd", "teacher_weights_root": None}, "teacher_weights_root"),
        ({"credit_method": "nope"}, "not a method"),
        ({"credit_method": "grpo", "scale_rewards": "none"}, "credit_method"),
    ],
)
def test_configurations_that_would_mistrain_are_refused(tmp_path, overrides, message):
    kw = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    kw.setdefault("teacher_weights_root", str(tmp_path))
    with pytest.raises(ValueError, match=message):
        TokenCreditConfig(**{**kw, **overrides})


@pytest.mark.parametrize(
    "method", ["grpo", "dr_grpo", "opd", "opsd", "sdpo", "rlsd", "hsd", "antisd", "amrsd"]
)
def test_every_method_takes_a_step_by_name(method, tiny_config, make_trainer, trl_server):
    trainer = make_trainer(tiny_config(method, max_steps=1))
    trainer.train()
    assert trainer.credit_calls == 1
    assert trainer.last_credit.method == method
    pushed = trainer.min_weights_version is not None
    # Teachers that follow the policy, and OPSD's initial policy, start from the trainer's own
    # weights; OPD's teacher is the served model and GRPO has none: nothing is pushed.
    assert pushed == (method not in ("grpo", "dr_grpo", "opd"))


def test_sdpo_ema_teacher_resumes_from_the_checkpoint(tiny_config, make_trainer):
    cfg = tiny_config("sdpo", max_steps=2, save_strategy="steps", save_steps=2)
    first = make_trainer(cfg)
    first.train()
    ema_saved = params_of(first._ema)
    policy = params_of(first.model)
    assert any(not torch.equal(ema_saved[k], policy[k]) for k in policy)  # EMA lags the policy

    class Spy(TokenCreditGRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            self.ema_at_first_batch = params_of(self._ema)
            return super()._generate_and_score_completions(inputs)

    resumed = make_trainer(tiny_config("sdpo", max_steps=3), trainer_cls=Spy)
    resumed.train(resume_from_checkpoint=str(first.args.output_dir) + "/checkpoint-2")
    for k, v in ema_saved.items():
        torch.testing.assert_close(resumed.ema_at_first_batch[k], v, atol=0, rtol=0)
