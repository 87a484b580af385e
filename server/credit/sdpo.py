"""SDPO: "Reinforcement Learning via Self-Distillation" (Hübotter et al.).

Paper: https://arxiv.org/abs/2601.20802; code: github.com/lasgroup/SDPO
(``compute_self_distillation_loss``, ``_maybe_build_self_distillation_batch``). The teacher (EMA of
the student) sees the first *other* successful rollout of the group and/or the environment
feedback. Sampled-token (service) form, the repo's non-full-logit mode (α = 1)::

    Â_{i,t} = u_t    if rollout i has a demonstration or feedback
    Â_{i,t} = 0      otherwise (self_distillation_mask = has_solution OR feedback_used)

The mask is part of the method (`has_context`): it holds whether the server scored the teacher
or the caller sent ``teacher_logprobs``. Teacher message: ``SDPO_REPROMPT`` (``proto/prompts.py``)
around the student prompt, with ``SDPO_SOLUTION`` (the demonstration, <think> blocks removed,
right-truncated to ``max_reprompt_len`` tokens) and/or ``SDPO_FEEDBACK``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from proto import prompts
from server.credit.base import CreditInputs, CreditParams, CreditResult, log_ratio
from server.credit.method import ContextTools, CreditMethod, GroupView, RolloutView
from server.credit.opsd import u_advantages
from server.credit.peers import sdpo_select_demo


class SdpoParams(CreditParams):
    # A rollout is a success (a possible demonstration) when reward >= this.
    success_threshold: float = 0.5
    # Never use a rollout's own response as its demonstration.
    dont_reprompt_on_self_success: bool = True
    # Strip <think>...</think> blocks from the demonstration.
    remove_thinking_from_demonstration: bool = True
    # Add the rollout's environment feedback to the teacher prompt.
    include_environment_feedback: bool = True
    # Use feedback only when the rollout has no demonstration.
    environment_feedback_only_without_solution: bool = True
    # Teacher reprompt is right-truncated to this many tokens.
    max_reprompt_len: int = Field(default=10240, ge=1)


def compute_sdpo(inputs: CreditInputs, params: SdpoParams, state: Any = None) -> CreditResult:
    """Â = u_t; rows with ``context_mask_B`` False (no demonstration, no feedback) are 0."""
    inputs.check(teacher=True, method="sdpo")
    u_BT = log_ratio(inputs, inputs.dtype)  # (B, T)
    adv_BT, signal_BT = u_advantages(u_BT, inputs.bool_mask_BT(), inputs.row_mask_B())
    return CreditResult(adv_BT, signal_BT)


def select_demo(rewards, group_ids, seed: int, params: SdpoParams) -> list[int | None]:
    """The first *other* success of the group (the rollout itself with
    ``dont_reprompt_on_self_success=False``); unseeded."""
    return sdpo_select_demo(
        rewards, group_ids, params.success_threshold, params.dont_reprompt_on_self_success
    )


def uses_feedback(params: SdpoParams, rollout: RolloutView, demo: RolloutView | None) -> bool:
    return (
        params.include_environment_feedback
        and bool(rollout.feedback)
        and (demo is None or not params.environment_feedback_only_without_solution)
    )


def has_context(params: SdpoParams, rollout: RolloutView, demo: RolloutView | None) -> bool:
    """self_distillation_mask = has_solution OR feedback_used."""
    return demo is not None or uses_feedback(params, rollout, demo)


def teacher_message(
    ctx: ContextTools,
    params: SdpoParams,
    group: GroupView,
    rollout: RolloutView,
    demo: RolloutView | None,
) -> str:
    prompt = ctx.student_message(rollout, ctx.require(group, rollout, "problem"))
    feedback = (
        ctx.fill(rollout, prompts.SDPO_FEEDBACK, feedback_raw=rollout.feedback or "")
        if uses_feedback(params, rollout, demo)
        else ""
    )

    def render(demo_text: str) -> str:
        solution = (
            ctx.fill(rollout, prompts.SDPO_SOLUTION, successful_previous_attempt=demo_text)
            if demo is not None
            else ""
        )
        return ctx.fill(
            rollout, prompts.SDPO_REPROMPT, prompt=prompt, solution=solution, feedback=feedback
        )

    if demo is None:
        return render("")
    text = ctx.strip_thinking(demo.text) if params.remove_thinking_from_demonstration else demo.text
    return ctx.fit(rollout, render, text, params.max_reprompt_len)


METHOD = CreditMethod(
    id="sdpo",
    paper="arXiv:2601.20802",
    formula="Â = u_t if the rollout has a demonstration or feedback, else 0",
    params_model=SdpoParams,
    compute_fn=compute_sdpo,
    teacher_context="student prompt + first other success + feedback; neither: masked",
    teacher_message=teacher_message,
    select_peers=select_demo,
    has_context=has_context,
)
