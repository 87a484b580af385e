"""HSD: Hindsight Self-Distillation, "Localizing Credit at the Divergence: Path-Conditioned
Self-Distillation for LLM Reasoning" (Li, Hong, Lan, 2026). https://arxiv.org/abs/2606.15576

The teacher (current policy) sees the ground-truth answer a* plus a uniformly drawn *other*
successful rollout of the group, o⁺; without one it falls back to a* alone (``fallback=True``) or
gives no signal (``fallback=False``, row masked). Service form [R]::

    credit_{i,t} = u_t = log π(y_t | q, a*, o⁺, y_<t) − log π(y_t | q, y_<t)
    Â_{i,t}      = u_t + mix · A_i          # mix = 0: pure distillation (the paper's form)

mix > 0 approximates the "GRPO + OPSD" hybrid Â = A_i + μ·u_t up to scale (μ = 1/mix). Peers are
seeded uniform draws (`peers.hsd_select_peers`). A rollout without a peer and ``fallback=False``
has no context (`has_context`), in both modes: a masked row is 0, its mix·A_i included. Teacher
message: ``HSD_TEACHER`` (peer right-truncated to ``max_reprompt_len`` tokens) or
``HSD_TEACHER_FALLBACK`` (``proto/prompts.py``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from proto import prompts
from server.credit.base import CreditInputs, CreditParams, CreditResult, log_ratio
from server.credit.grpo import GrpoStd, sequence_advantages_of
from server.credit.method import ContextTools, CreditMethod, GroupView, RolloutView
from server.credit.opsd import u_advantages
from server.credit.peers import hsd_select_peers


class HsdParams(CreditParams):
    # Weight of the GRPO advantage added to u_t (0 = the paper's pure distillation).
    mix: float = Field(default=0.0, ge=0.0)
    # A rollout is a success (a possible peer) when reward >= this.
    success_threshold: float = 0.5
    # How the peer is drawn among the other successes (the paper's default; ablations not served).
    peer_rule: Literal["uniform"] = "uniform"
    # No peer: True = teacher sees a* alone; False = the rollout gets no signal (masked).
    fallback: bool = True
    # Strip <think>...</think> blocks from the peer rollout.
    remove_thinking_from_demonstration: bool = True
    # Teacher prompt is right-truncated to this many tokens.
    max_reprompt_len: int = Field(default=10240, ge=1)
    # GRPO advantage used by mix > 0.
    grpo_std: GrpoStd = "unbiased"
    eps: float = Field(default=1e-6, ge=0.0)


def compute_hsd(inputs: CreditInputs, params: HsdParams, state: Any = None) -> CreditResult:
    inputs.check(teacher=True, method="hsd")
    dtype = inputs.dtype
    u_BT = log_ratio(inputs, dtype)  # (B, T)
    A_B = sequence_advantages_of(inputs, params, dtype) if params.mix else None  # (B,)
    adv_BT, signal_BT = u_advantages(
        u_BT, inputs.bool_mask_BT(), inputs.row_mask_B(), A_B, params.mix
    )
    return CreditResult(adv_BT, signal_BT, seq_advantages_B=A_B)


def select_peer(rewards, group_ids, seed: int, params: HsdParams) -> list[int | None]:
    """A uniformly drawn other success of the group, seeded by the request's ``seed``."""
    peers = hsd_select_peers(
        rewards, group_ids, seed, params.success_threshold, True, params.peer_rule
    )
    return [p if p is not None and p >= 0 else None for p in peers]


def has_context(params: HsdParams, rollout: RolloutView, peer: RolloutView | None) -> bool:
    return peer is not None or params.fallback


def teacher_message(
    ctx: ContextTools,
    params: HsdParams,
    group: GroupView,
    rollout: RolloutView,
    peer: RolloutView | None,
) -> str:
    problem = ctx.require(group, rollout, "problem")
    answer = ctx.require(group, rollout, "reference_answer")
    if peer is None:
        return ctx.fill(rollout, prompts.HSD_TEACHER_FALLBACK, problem=problem, answer=answer)

    def render(demo: str) -> str:
        return ctx.fill(rollout, prompts.HSD_TEACHER, problem=problem, peer=demo, answer=answer)

    text = ctx.strip_thinking(peer.text) if params.remove_thinking_from_demonstration else peer.text
    return ctx.fit(rollout, render, text, params.max_reprompt_len)


METHOD = CreditMethod(
    id="hsd",
    paper="arXiv:2606.15576",
    formula="Â = u_t + mix·A_i",
    params_model=HsdParams,
    compute_fn=compute_hsd,
    teacher_context="problem + a* + a uniformly drawn other success; none: a* alone (fallback)",
    teacher_message=teacher_message,
    select_peers=select_peer,
    has_context=has_context,
)
