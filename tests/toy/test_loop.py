"""A 3-step smoke run of the toy RL loop against a real server (hf backend, own weights root).

The loop pushes weights, so it gets a server of its own rather than the shared ``server`` fixture.
Model: ``TC_TEST_MODEL`` or the embedded model (as tests/conftest.py).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from client import TeacherClient
from server.settings import DEFAULT_MODEL_DIR
from trainer.toy import loop
from trainer.toy.__main__ import config_from_args
from trainer.toy.arith import generate_problems

MODEL = os.environ.get("TC_TEST_MODEL") or str(DEFAULT_MODEL_DIR)


@pytest.fixture(scope="module")
def toy_server(tmp_path_factory, make_server):
    root = tmp_path_factory.mktemp("toy-weights")
    env = {
        "TC_MODEL": MODEL,
        "TC_BACKEND": "hf",
        "TC_WEIGHTS_ROOT": str(root),
        "OMP_NUM_THREADS": "1",
    }
    with make_server("toy-server", **env) as proc:
        proc.weights_root = root
        yield proc


def small_config(tmp_path: Path, **kw) -> loop.Config:
    base = dict(
        model=MODEL,
        steps=3,
        prompts_per_step=3,
        group_size=4,
        max_new_tokens=40,
        eval_every=3,
        eval_problems=6,
        run_dir=str(tmp_path / "run"),
        progress=False,
    )
    return loop.Config(**{**base, **kw})


def test_three_steps_push_weights_and_log(toy_server, tmp_path):
    cfg = small_config(tmp_path, method="antisd", weights_root=str(toy_server.weights_root))
    with TeacherClient(toy_server.url, timeout=120.0) as client:
        v0 = client.model().weights_version
        summary = loop.main(cfg, client=client)
        assert client.model().weights_version == v0 + 4  # initial push + one per step

    logs = [json.loads(x) for x in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in logs] == [1, 2, 3]
    versions = [x["weights_version"] for x in logs]
    assert versions == sorted(versions) and len(set(versions)) == 3  # increases after each push
    for x in logs:
        for key in ("reward", "mean_abs_adv", "loss", "grad_norm", "seconds_scoring"):
            assert math.isfinite(x[key]), (key, x)
        assert x["stats"]["rollouts"] == 12
    # AntiSD carries its gate state: warm-up history grows by one per step, gate closed in warm-up.
    assert len(summary["final_state"]["warmup_history"]) == 3
    assert all(x["gate"] == 0 for x in logs)
    assert summary["eval_curve"][0][0] == 0 and summary["eval_curve"][-1][0] == 3
    for key in ("sampled", "greedy", "pass_at_k"):
        assert 0.0 <= summary["final"][key] <= 1.0
    assert summary["final"]["pass_at_k"] >= summary["final"]["sampled"]
    # Per-step diagnostics: entropy of the policy, KL to the initial policy (exactly 0 before the
    # first update), share of zero-variance groups, the method's own state.
    assert all(x["entropy"] > 0 for x in logs)
    assert logs[0]["kl_initial"] == pytest.approx(0.0, abs=1e-9)
    assert all(x["kl_initial"] >= 0 for x in logs)
    assert all(0.0 <= x["zero_variance_groups"] <= 1.0 for x in logs)
    assert summary["per_step"]["entropy"] == [round(x["entropy"], 5) for x in logs]
    assert summary["gate_open_share"] is None  # 3 steps: still inside the 5-step warm-up
    # Only the newest checkpoint folder is kept.
    assert len(list((toy_server.weights_root / Path(cfg.run_dir).name).iterdir())) == 1


def test_push_sync_keeps_the_teacher_on_policy_without_a_weights_root(toy_server, tmp_path):
    """``weights_sync="push"``: the weights go over a gloo group (no checkpoint folder), one
    version per step, and the teacher then scores with the trained policy, not the initial one."""
    cfg = small_config(tmp_path, method="hsd", steps=2, weights_sync="push", weights_root="")
    seq = [{"context_ids": [1, 2, 3, 4], "target_ids": [5, 6, 7]}]
    with TeacherClient(toy_server.url, timeout=120.0) as client:
        v0 = client.model().weights_version
        before = client.logprobs(seq)[0].logprobs
        loop.main(cfg, client=client)
        res = client.logprobs(seq)
    assert res.weights_version == v0 + 3  # initial push + one per step
    assert not np.array_equal(res[0].logprobs, before)
    assert not any(Path(cfg.run_dir).glob("**/*.safetensors"))


def test_advantages_have_response_shapes(toy_server, tmp_path):
    """One step's pieces by hand: shapes, masking and the HSD details the analyses use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = small_config(tmp_path, method="hsd")
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    torch.manual_seed(0)
    batch = loop.sample_batch(model, tokenizer, generate_problems(3, seed=1), cfg)
    B = 3 * cfg.group_size
    assert len(batch.response_ids_B) == B and batch.rewards_B.shape == (B,)
    lengths = [len(r) for r in batch.response_ids_B]
    assert batch.resp_mask_BT.sum(1).tolist() == lengths
    lp_BT = loop.response_logprobs(model, batch)
    assert torch.isfinite(lp_BT).all() and (lp_BT[batch.resp_mask_BT == 0] == 0).all()

    with TeacherClient(toy_server.url, timeout=120.0) as client:
        groups = loop.request_groups(batch, lp_BT.detach(), cfg.group_size)
        res = client.advantages("hsd", groups, step=0, seed=0, return_details=True)
    flat = res.flat()
    assert [len(a) for a in flat] == lengths
    assert all(np.isfinite(a).all() for a in flat)
    for b, r in enumerate(g for grp in res.groups for g in grp):
        np.testing.assert_allclose(
            r.details.student_logprobs, lp_BT[b, : lengths[b]].detach().numpy(), atol=1e-6
        )
    adv_BT = loop.advantages_BT(res, batch.resp_mask_BT.shape[1])
    assert adv_BT.shape == batch.resp_mask_BT.shape
    assert (adv_BT[batch.resp_mask_BT == 0] == 0).all()

    # The PPO loss is finite and, with ratio 1, its gradient is −mean(Â ∇log π).
    loss = loop.ppo_loss(lp_BT, lp_BT.detach(), adv_BT, batch.resp_mask_BT, 0.2, "token_mean", 40)
    assert torch.isfinite(loss)
    loss.backward()


def test_learner_logprobs_use_the_sampling_temperature(tmp_path):
    """π_old, π_θ and the sent student_logprobs are log softmax(z / T) at the sampling T."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = small_config(tmp_path, method="grpo", temperature=0.7)
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    torch.manual_seed(0)
    batch = loop.sample_batch(model, tokenizer, generate_problems(2, seed=3), cfg)
    lp_BT, ent_BT = loop.response_logprobs_entropy(model, batch, cfg.temperature)
    with torch.no_grad():
        pos = (batch.attn_BS.cumsum(1) - 1).clamp(min=0)
        logits = model(input_ids=batch.input_ids_BS, attention_mask=batch.attn_BS, position_ids=pos)
        z = logits.logits[:, batch.prompt_len - 1 : -1] / 0.7
        want = torch.log_softmax(z, -1).gather(-1, batch.input_ids_BS[:, batch.prompt_len :, None])
    m = batch.resp_mask_BT.bool()
    torch.testing.assert_close(lp_BT[m], want[..., 0][m], atol=1e-5, rtol=0)
    # And not the T = 1 log-probs (the loop sent those before).
    assert not torch.allclose(lp_BT[m], loop.response_logprobs(model, batch)[m], atol=1e-3)
    p = torch.softmax(z, -1)
    torch.testing.assert_close(ent_BT[m], -(p * p.log()).sum(-1)[m], atol=1e-5, rtol=0)
    sent = loop.request_groups(batch, lp_BT.detach(), cfg.group_size)
    np.testing.assert_allclose(
        sent[0]["rollouts"][0]["student_logprobs"],
        lp_BT[0, : len(batch.response_ids_B[0])].detach().numpy(),
    )


def test_diagnostics_on_hand_values():
    # Groups [1,1,1,1] and [0,1,0,0]: one of two has zero variance.
    assert loop.zero_variance_share(np.array([1, 1, 1, 1, 0, 1, 0, 0.0]), G=4) == 0.5
    # k3 = ρ − 1 − log ρ with log ρ = init − θ: log ρ = log 2 -> 1 − log 2; masked token ignored.
    lp = torch.tensor([[0.0, -1.0, 5.0]])
    init = torch.tensor([[0.0, -1.0 + np.log(2.0), 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    assert loop.kl_to_initial(lp, init, mask) == pytest.approx((0 + 1 - np.log(2)) / 2)
    # Â vs A_i: 1 of the 2 tokens of the A_i ≠ 0 rollout changed; the A_i = 0 rollout ignored.
    adv = [np.array([1.5, 1.8]), np.array([0.3, 0.0])]
    assert loop.modulated_share(adv, np.array([1.5, 0.0])) == 0.5


def test_schedules_scale_to_the_run_and_feedback_names_the_answer():
    assert loop.method_params(loop.Config(method="amrsd", steps=120)) == {"t_decay": 120}
    assert loop.method_params(loop.Config(method="rlsd", steps=80)) == {"decay_steps": 80}
    fixed = loop.Config(method="amrsd", steps=120, method_params={"t_decay": 50})
    assert loop.method_params(fixed) == {"t_decay": 50}
    off = loop.Config(method="amrsd", steps=120, scale_schedules=False)
    assert loop.method_params(off) == {}
    assert loop.feedback_for("2+2=5. \\boxed{5}", 0.0) == "The final answer 5 is wrong."
    assert "no final answer" in loop.feedback_for("2+2=", 0.0)
    assert loop.feedback_for("2+2=4. \\boxed{4}", 1.0) is None


def test_cli_builds_config():
    cfg = config_from_args(
        ["--method", "amrsd", "--steps", "7", "--lr", "5e-6", "--no-progress", "--param", "tau=1.0"]
    )
    assert (cfg.method, cfg.steps, cfg.lr, cfg.progress) == ("amrsd", 7, 5e-6, False)
    assert cfg.method_params == {"tau": 1.0}
    open_gate = config_from_args(["--method", "antisd", "--method-state", '{"g": 1}'])
    assert open_gate.method_state == {"g": 1}
    assert cfg.teacher_policy == "current"
    assert loop.Config(method="opsd").teacher_policy == "initial"
    assert loop.Config(method="dr_grpo").agg == "seq_sum_const"
    with pytest.raises(ValueError, match="method must be one of"):
        loop.Config(method="ppo")
