"""SDPO: "Reinforcement Learning via Self-Distillation" (Hübotter et al.).

Paper: https://arxiv.org/abs/2601.20802; code: github.com/lasgroup/SDPO
(``compute_self_distillation_loss``, ``_maybe_build_self_distillation_batch``). The teacher (EMA of
the student) sees the first *other* successful rollout of the group and/or the environment
feedback. Sampled-token (service) form, the repo's non-full-logit mode (α = 1)::

    Â_{i,t} = u_t    if rollout i has a demonstration or feedback
    Â_{i,t} = 0      otherwise (self_distillation_mask = has_solution OR feedback_used)

The caller builds the contexts (`peers.sdpo_select_demo`) and passes ``context_mask_B``; the
context parameters below are validated here and read by the context builder.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from server.credit.base import CreditInputs, CreditParams, CreditResult, log_ratio
from server.credit.opsd import u_advantages


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
