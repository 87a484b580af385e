"""RLSD: "Self-Distilled RLVR" (arXiv 2604.03128), Algorithm 1.

Paper: https://arxiv.org/abs/2604.03128; launch script github.com/iie-ycx/RLSD. The teacher (a
frozen copy, re-synced every 20 steps) sees only the gold final answer::

    Δ_t     = sg(t_t − s_t) = u_t
    w_t     = exp(sign(A_i) · u_t) = (P_T / P_S)^{sign(A_i)}
    λ_k     = lam_init · max(0, 1 − k / decay_steps)          # plain GRPO from k = decay_steps
    Â_{i,t} = A_i · [(1 − λ_k) + λ_k · clip(w_t, 1 − eps_w, 1 + eps_w)]

The bracket lies in [1 − λ·eps_w, 1 + λ·eps_w] > 0, so the sign of A never flips; A_i = 0 gives 0.
Teacher message: ``RLSD_TEACHER`` (``proto/prompts.py``).
``signal_BT`` is the modulation λ_k·(clip(w_t) − 1), i.e. Â = A·(1 + signal).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from proto import prompts
from server.credit.base import (
    CreditInputs,
    CreditParams,
    CreditResult,
    linear_decay,
    log_ratio,
    masked,
)
from server.credit.grpo import GrpoStd, sequence_advantages_of
from server.credit.method import ContextTools, CreditMethod, GroupView, RolloutView


class RlsdParams(CreditParams):
    # Clip range of the teacher/student ratio w: [1 − eps_w, 1 + eps_w].
    eps_w: float = Field(default=0.2, ge=0.0, lt=1.0)
    # λ at step 0, the weight of the clipped ratio.
    lam_init: float = Field(default=0.5, ge=0.0, le=1.0)
    # λ decays linearly to 0 over this many steps (0 = plain GRPO from the start).
    decay_steps: int = Field(default=50, ge=0)
    grpo_std: GrpoStd = "unbiased"
    eps: float = Field(default=1e-6, ge=0.0)


def rlsd_advantages(
    u_BT: torch.Tensor,
    A_B: torch.Tensor,
    mask_BT: torch.Tensor,
    lam: float,
    eps_w: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Â_BT, modulation_BT) for a given λ (already annealed)."""
    A_B1 = A_B[:, None]  # (B, 1)
    w_BT = torch.exp(torch.sign(A_B1) * u_BT)  # (B, T); inf is clipped below
    mod_BT = masked(mask_BT, lam * (w_BT.clamp(1.0 - eps_w, 1.0 + eps_w) - 1.0))  # (B, T)
    return masked(mask_BT, A_B1 * (1.0 + mod_BT)), mod_BT


def compute_rlsd(inputs: CreditInputs, params: RlsdParams, state: Any = None) -> CreditResult:
    """Rows with ``context_mask_B`` False count as teacher = student (w = 1): plain GRPO."""
    inputs.check(teacher=True, method="rlsd")
    dtype = inputs.dtype
    m_BT = inputs.bool_mask_BT()
    A_B = sequence_advantages_of(inputs, params, dtype)  # (B,)
    lam = params.lam_init * linear_decay(inputs.step, params.decay_steps)
    u_BT = log_ratio(inputs, dtype)  # (B, T)
    row_B = inputs.row_mask_B()
    if row_B is not None:
        u_BT = torch.where(row_B[:, None], u_BT, 0.0)
    adv_BT, mod_BT = rlsd_advantages(u_BT, A_B, m_BT, lam, params.eps_w)
    return CreditResult(adv_BT, mod_BT, seq_advantages_B=A_B)


def teacher_message(
    ctx: ContextTools, params: RlsdParams, group: GroupView, rollout: RolloutView, peer: None
) -> str:
    problem = ctx.require(group, rollout, "problem")
    answer = ctx.require(group, rollout, "reference_answer")
    return ctx.fill(rollout, prompts.RLSD_TEACHER, problem=problem, answer=answer)


METHOD = CreditMethod(
    id="rlsd",
    paper="arXiv:2604.03128",
    formula="Â = A_i·[(1 − λ_k) + λ_k·clip(exp(sign(A_i)·u_t), 1 − eps_w, 1 + eps_w)]",
    params_model=RlsdParams,
    compute_fn=compute_rlsd,
    teacher_context="problem + the gold final answer",
    teacher_message=teacher_message,
)
