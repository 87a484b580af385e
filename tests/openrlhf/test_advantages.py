"""The plugin inside OpenRLHF's own experience pipeline, against a live server.

Rollouts become ``Experience`` objects through OpenRLHF's code (``SamplesGenerator.
_process_response_into_experience``, ``RemoteExperienceMaker.split_rollout_samples``, with and
without dynamic batching), the actor's log-probs come from OpenRLHF's ``Actor.forward`` on the
real model, and the wrapped ``compute_advantages_and_returns`` calls the server. The oracle is
an independent ``/v1/advantages`` call built from the known token lists, and ``/v1/logprobs`` for
the alignment of ``action_log_probs``.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch

from client import ConnectError
from client.launcher import free_port
from trainer.openrlhf import plugin as plugin_mod
from trainer.openrlhf.config import PluginConfig
from trainer.openrlhf.experiences import AlignmentError, build_batch
from trainer.openrlhf.plugin import STEP_ATTR, TeacherCredit, UnsupportedConfig

pytestmark = pytest.mark.openrlhf

N_SAMPLES = 4
# AntiSD with one warm-up step: the gate is closed at step 0 and open at step 1, so step 1's
# advantages carry the per-token term (and depend on the student log-probs sent).
PARAMS = {"warmup_steps": 1}
WRONG = "{a}+1=7. \\boxed{{{b}}}"  # a short wrong attempt


# ---- rollouts, the way OpenRLHF builds them ------------------------------------------------


def rollouts(tokenizer):
    """3 prompts x 4 samples: prompts of different lengths, responses of different lengths,
    correct and wrong ones, each ending with the chat template's end token as vLLM leaves it."""
    problems = [
        SimpleNamespace(question=q, answer=a, solution=sol)
        for q, a, sol in (
            ("What is 37+48-19?", "66", "37+48=85. 85-19=66. \\boxed{66}"),
            ("What is 64+77?", "141", "64+77=141. \\boxed{141}"),
            ("What is 7+10+44?", "61", "7+10=17. 17+44=61. \\boxed{61}"),
        )
    ]
    out = []
    for i, p in enumerate(problems):
        system = [{"role": "system", "content": "Be brief. " * i}] if i else []
        prompt = tokenizer.apply_chat_template(
            [*system, {"role": "user", "content": p.question}],
            tokenize=False,
            add_generation_prompt=True,
        )
        label = json.dumps({"problem": p.question, "answer": p.answer, "solution": p.solution})
        texts = [
            p.solution,
            WRONG.format(a=i, b=int(p.answer) + 1),
            "Let me think. " + p.solution,
            WRONG.format(a=i + 3, b=int(p.answer) - 1) + " hmm",
        ]
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for j, text in enumerate(texts):
            response_ids = tokenizer(text + "<|im_end|>", add_special_tokens=False)["input_ids"]
            out.append(
                {
                    "prompt": prompt,
                    "label": label,
                    "images": None,
                    "mm_train_inputs": None,
                    "observation_tokens": prompt_ids + response_ids,
                    "action_ranges": [(len(prompt_ids), len(prompt_ids) + len(response_ids))],
                    "rollout_log_probs": None,
                    "truncated": False,
                    "reward": 1.0 if j % 2 == 0 else 0.0,
                    "scores": 1.0 if j % 2 == 0 else 0.0,
                    "extra_logs": {},
                    # for the oracle
                    "_prompt_ids": prompt_ids,
                    "_response_ids": response_ids,
                }
            )
    return out


def make_args(dynamic: bool):
    return SimpleNamespace(
        train=SimpleNamespace(dynamic_batch_enable=dynamic),
        rollout=SimpleNamespace(
            micro_batch_size=5, n_samples_per_prompt=N_SAMPLES, max_tokens_per_gpu=200
        ),
        actor=SimpleNamespace(num_nodes=1, num_gpus_per_node=2),
        ds=SimpleNamespace(ring_attn_size=1, tensor_parallel_size=1),
        algo=SimpleNamespace(
            advantage=SimpleNamespace(estimator="dr_grpo", gamma=1.0, lambd=1.0, no_std_norm=False),
            kl=SimpleNamespace(use_loss=True),
        ),
        reward=SimpleNamespace(clip_range=(-10, 10)),
        data=SimpleNamespace(max_len=1024),
    )


def make_maker(orlhf, tokenizer, args):
    maker = orlhf.experience_maker.RemoteExperienceMaker.__new__(
        orlhf.experience_maker.RemoteExperienceMaker
    )
    maker.strategy = SimpleNamespace(args=args)
    maker.args = args
    maker.advantage_estimator = args.algo.advantage.estimator
    maker.kl_ctl = SimpleNamespace(value=0.0)
    maker.initial_model_group = None
    maker.tokenizer = tokenizer
    return maker


def actor_of(orlhf, model):
    actor = orlhf.Actor(model)  # an nn.Module: OpenRLHF wraps it as is
    actor.packing_samples = False  # set by the from-pretrained branch only
    return actor


def make_experiences(orlhf, hf_model, samples, dynamic: bool):
    """What ``make_experience_batch`` has made by the time it calls
    ``compute_advantages_and_returns``: micro-batches with the actor's log-probs, kl zeros."""
    model, tokenizer = hf_model
    gen = orlhf.samples_generator.SamplesGenerator.__new__(orlhf.samples_generator.SamplesGenerator)
    singles = [gen._process_response_into_experience(s, max_len=1024) for s in samples]
    maker = make_maker(orlhf, tokenizer, make_args(dynamic))
    batches = maker.split_rollout_samples(singles)
    actor = actor_of(orlhf, model)
    with torch.no_grad():
        for exp in batches:
            exp.action_log_probs = actor(exp.sequences, exp.action_mask, exp.attention_mask)
            exp.kl = torch.zeros_like(exp.action_log_probs)
    return maker, batches


# ---- the oracle ----------------------------------------------------------------------------


def server_logprobs(server, context_ids, target_ids):
    body = {"sequences": [{"context_ids": context_ids, "target_ids": target_ids}]}
    res = httpx.post(server.url + "/v1/logprobs", json=body, timeout=120)
    assert res.status_code == 200, res.text
    return np.asarray(res.json()["results"][0]["logprobs"])


def direct_advantages(server, samples, method, step, state, student):
    """One unsplit call; ``student=None`` lets the server score the student."""
    groups = []
    for g in range(len(samples) // N_SAMPLES):
        members = samples[g * N_SAMPLES : (g + 1) * N_SAMPLES]
        label = json.loads(members[0]["label"])
        groups.append(
            {
                "prompt_ids": members[0]["_prompt_ids"],
                "problem": label["problem"],
                "reference_answer": label["answer"],
                "reference_solution": label["solution"],
                "rollouts": [
                    {
                        "response_ids": s["_response_ids"],
                        "reward": s["reward"],
                    }
                    | (
                        {"student_logprobs": student[g * N_SAMPLES + k].tolist()}
                        if student is not None
                        else {}
                    )
                    for k, s in enumerate(members)
                ],
            }
        )
    body = {
        "method": method,
        "params": PARAMS,
        "groups": groups,
        "step": step,
        "state": state,
        "seed": step,
    }
    res = httpx.post(server.url + "/v1/advantages", json=body, timeout=300)
    assert res.status_code == 200, res.text
    out = res.json()
    flat = [np.asarray(r["advantages"]) for g in out["groups"] for r in g["rollouts"]]
    return flat, out["state"]


def written(batches, samples):
    """Per rollout (in rollout order): its row of advantages/returns/action_mask/log-probs."""
    rows = {}
    for exp in batches:
        for b, i in enumerate(exp.index):
            rows[i] = (
                exp.advantages[b],
                exp.returns[b],
                exp.action_mask[b].bool(),
                exp.action_log_probs[b],
                exp.sequences[b],
                exp.attention_mask[b],
            )
    return [rows[i] for i in range(len(samples))]


@pytest.fixture(params=["trainer"])
def teacher(server, request):
    credit = TeacherCredit(
        PluginConfig(
            urls=(server.url,),
            method="antisd",
            params=PARAMS,
            timeout=300.0,
            student=request.param,
        )
    )
    plugin_mod.set_plugin(credit)
    yield credit
    plugin_mod.set_plugin(None)
    credit.client.close()


# ---- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("teacher", ["server"], indirect=True)
@pytest.mark.parametrize("dynamic", [False, True], ids=["micro_batches", "dynamic_batching"])
def test_wrapped_advantages_equal_direct_call_token_by_token(
    orlhf, hf_model, server, teacher, dynamic
):
    """AntiSD's teacher is the current policy: without syncing every step the plugin runs it
    with the pool scoring the student too (``student=server``)."""
    plugin_mod.patch_experience_maker(orlhf.experience_maker)
    samples = rollouts(hf_model[1])
    maker, batches = make_experiences(orlhf, hf_model, samples, dynamic)
    if dynamic:  # dynamic batching reorders rollouts across micro-batches
        assert [i for e in batches for i in e.index] != list(range(len(samples)))
    assert len({len(s["_prompt_ids"]) for s in samples}) == 3  # three prompt lengths
    assert len({len(s["_response_ids"]) for s in samples}) >= 4  # ragged responses

    # Step 0 and step 1: the AntiSD state of step 0 must travel into step 1.
    expected_state = None
    for step in (0, 1):
        setattr(maker, STEP_ATTR, step)
        for exp in batches:
            exp.kl = torch.zeros_like(exp.action_log_probs)
        out = maker.compute_advantages_and_returns(batches)
        assert out is batches
        rows = written(batches, samples)

        # Alignment: action_log_probs column j is token T - A + j = j + 1, so the response's
        # columns hold log p(response token | prompt + earlier response), as /v1/logprobs says.
        for s, (_, _, mask, lp, seq, _) in zip(samples, rows):
            P, R = len(s["_prompt_ids"]), len(s["_response_ids"])
            cols = torch.arange(P - 1, P - 1 + R)
            assert mask.nonzero().flatten().tolist() == cols.tolist()
            assert seq[cols + 1].tolist() == s["_response_ids"]
            assert seq[:P].tolist() == s["_prompt_ids"]
            expected_lp = server_logprobs(server, s["_prompt_ids"], s["_response_ids"])
            np.testing.assert_allclose(lp[cols].numpy(), expected_lp, atol=1e-4)
        direct, expected_state = direct_advantages(
            server, samples, "antisd", step, expected_state, None
        )
        for (adv, ret, mask, *_), want in zip(rows, direct):
            got = adv[mask].numpy()
            np.testing.assert_allclose(got, want, atol=1e-5)
            assert torch.count_nonzero(adv[~mask]) == 0  # outside the response: masked columns
            assert torch.equal(ret, adv)
        assert teacher.state == expected_state
        assert teacher.last.stats.rollouts == len(samples)
        assert teacher.last.stats.gate == step  # closed in warm-up, then open
        # the step's numbers reach OpenRLHF's own per-sample logging (wandb / tensorboard)
        for exp in batches:
            B = exp.sequences.shape[0]
            assert exp.info["tokencredit/gate"].tolist() == [float(step)] * B
            assert exp.info["tokencredit/advantage_mean"].shape == (B,)
        if step == 1:  # token-level credit: advantages vary inside a response
            assert any(np.ptp(adv[mask].numpy()) > 1e-3 for adv, _, mask, *_ in rows)
    assert teacher.calls == 2


def left_padded_experience(orlhf, hf_model, samples):
    """The layout of OpenRLHF versions before 0.10 (and of any caller that pads prompts left):
    prompts left-padded to P, responses right-padded to A = R (not T - 1)."""
    model, _ = hf_model
    P = max(len(s["_prompt_ids"]) for s in samples)
    A = max(len(s["_response_ids"]) for s in samples)
    B = len(samples)
    seq = torch.zeros(B, P + A, dtype=torch.long)
    attn = torch.zeros(B, P + A, dtype=torch.long)
    act = torch.zeros(B, A, dtype=torch.bool)
    for b, s in enumerate(samples):
        p, r = s["_prompt_ids"], s["_response_ids"]
        seq[b, P - len(p) : P] = torch.tensor(p)
        seq[b, P : P + len(r)] = torch.tensor(r)
        attn[b, P - len(p) : P + len(r)] = 1
        act[b, : len(r)] = True
    with torch.no_grad():
        lp = actor_of(orlhf, model)(seq, act, attn)  # log_probs[:, -A:]: column j is token P + j
    return orlhf.Experience(
        sequences=seq,
        attention_mask=attn,
        action_mask=act,
        action_log_probs=lp,
        rewards=torch.tensor([s["reward"] for s in samples]),
        index=list(range(B)),
        prompts=[s["prompt"] for s in samples],
        labels=[s["label"] for s in samples],
    )


def test_left_padded_prompts(orlhf, hf_model, server, teacher):
    samples = rollouts(hf_model[1])
    exp = left_padded_experience(orlhf, hf_model, samples)
    batch = build_batch([exp], N_SAMPLES)
    flat = [r for g in batch.groups for r in g["rollouts"]]
    student = []
    for s, g_prompt, r in zip(
        samples, [g["prompt_ids"] for g in batch.groups for _ in range(4)], flat
    ):
        # NumPy views of the experience's tensors, packed by the client (no list per token)
        assert isinstance(g_prompt, np.ndarray) and isinstance(r["response_ids"], np.ndarray)
        assert g_prompt.tolist() == s["_prompt_ids"]
        assert r["response_ids"].tolist() == s["_response_ids"]
        want = server_logprobs(server, s["_prompt_ids"], s["_response_ids"])
        np.testing.assert_allclose(r["student_logprobs"], want, atol=1e-4)
        student.append(r["student_logprobs"])
    teacher.apply([exp], N_SAMPLES, step=0)
    direct, _ = direct_advantages(server, samples, "antisd", 0, None, student)
    for b, want in enumerate(direct):
        n = len(want)
        np.testing.assert_allclose(exp.advantages[b, :n].numpy(), want, atol=1e-6)
        assert torch.count_nonzero(exp.advantages[b, n:]) == 0


def test_server_down_raises_after_retries_and_writes_nothing(orlhf, hf_model):
    samples = rollouts(hf_model[1])
    exp = left_padded_experience(orlhf, hf_model, samples)
    exp.advantages = sentinel = torch.full(exp.action_mask.shape, 7.0)
    dead = TeacherCredit(
        PluginConfig(
            urls=(f"http://127.0.0.1:{free_port()}",), method="antisd", retries=2, step_retry=0
        )
    )
    with pytest.raises(ConnectError) as info:
        dead.apply([exp], N_SAMPLES, step=3)
    assert info.value.attempts == 3  # the client's transport retried; no step retry (0 s)
    assert exp.advantages is sentinel and dead.state is None and dead.calls == 0
    dead.client.close()


def test_groups_must_share_prompt_and_label(orlhf, hf_model):
    samples = rollouts(hf_model[1])
    exp = left_padded_experience(orlhf, hf_model, samples)
    with pytest.raises(AlignmentError, match="share one prompt"):
        build_batch([exp], 3)  # groups of 3 straddle two prompts
    with pytest.raises(AlignmentError, match="groups of"):
        build_batch([exp], 5)


def test_multi_turn_action_spans_are_refused(orlhf, hf_model):
    samples = rollouts(hf_model[1])[:4]
    exp = left_padded_experience(orlhf, hf_model, samples)
    exp.action_mask[0, 1] = False  # a hole: an observation between two actions
    with pytest.raises(AlignmentError, match="contiguous"):
        build_batch([exp], N_SAMPLES)


@pytest.mark.parametrize(
    "estimator,use_loss,ref,match",
    [("gae", True, None, "gae"), ("dr_grpo", False, object(), "use_loss")],
)
def test_settings_that_would_be_dropped_are_refused(
    orlhf, hf_model, estimator, use_loss, ref, match
):
    args = make_args(False)
    args.algo.advantage.estimator = estimator
    args.algo.kl.use_loss = use_loss
    plugin_mod.patch_experience_maker(orlhf.experience_maker)
    maker = make_maker(orlhf, hf_model[1], args)
    maker.initial_model_group = ref
    with pytest.raises(UnsupportedConfig, match=match):
        maker.compute_advantages_and_returns([])


def test_train_step_passes_the_global_step(orlhf):
    plugin_mod.patch_trainer(orlhf.ppo_trainer)
    cls = orlhf.ppo_trainer.BasePPOTrainer
    seen = {}
    trainer = cls.__new__(cls)
    trainer.experience_maker = SimpleNamespace()

    def make_experience_batch(rollout_samples):
        seen["step"] = getattr(trainer.experience_maker, STEP_ATTR)
        raise RuntimeError("stop here")

    trainer.experience_maker.make_experience_batch = make_experience_batch
    with pytest.raises(RuntimeError, match="stop here"):
        trainer.train_step([], 17)  # OpenRLHF's own train_step, wrapped
    assert seen["step"] == 17
