"""OPD: on-policy distillation from an external teacher (Thinking Machines, 2025).

Blog: https://thinkingmachines.ai/blog/on-policy-distillation; code: tinker-cookbook
``incorporate_kl_penalty`` (tinker_cookbook/rl/metrics.py). Reverse KL KL(π_S‖π_T) on the sampled
token, discount 0, centred by the token-masked batch mean::

    d_t     = s_t − t_t                                   # per-token reverse-KL estimate
    Â_{i,t} = kl_coef · (mean_batch(d) − d_t)             # center=True (default)
    Â_{i,t} = kl_coef · (−d_t) = kl_coef · u_t            # center=False

Rewards are unused; the signal is nonzero on uniform groups. The served model is the external
teacher, scoring the response under the student's own prompt (``STUDENT``), so the student's
log-probs must come from the caller's policy: scored by the same model on the same prompt they
would equal the teacher's and give Â = 0 (a 422 says so instead). The batch is every masked token of
the call; its mean divides by max(count, 1), so an all-masked batch returns zeros.
"""

from __future__ import annotations

from typing import Any

import torch

from server.credit.base import CreditInputs, CreditParams, CreditResult, masked
from server.credit.method import ContextTools, CreditMethod, GroupView, RolloutView


class OpdParams(CreditParams):
    # β_KL: weight of the per-token reverse-KL advantage.
    kl_coef: float = 1.0
    # Subtract the token-masked batch mean of s − t (tinker-cookbook); False gives kl_coef·u_t.
    center: bool = True


def opd_advantages(
    student_lp_BT: torch.Tensor,
    teacher_lp_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    kl_coef: float = 1.0,
    center: bool = True,
) -> torch.Tensor:
    """Â_BT = kl_coef·(mean_batch(s−t) − (s_t−t_t)) on the mask, 0 elsewhere. shape (B, T)"""
    d_BT = masked(mask_BT, student_lp_BT - teacher_lp_BT)  # (B, T) s − t, 0 off the mask
    if center:
        n = mask_BT.count_nonzero().clamp(min=1)  # (bool .sum() is ~50x slower on CPU)
        avg = d_BT.sum() / n  # () token-masked batch mean
        return masked(mask_BT, (avg - d_BT).mul_(kl_coef))
    return masked(mask_BT, d_BT.mul_(-kl_coef))


def compute_opd(inputs: CreditInputs, params: OpdParams, state: Any = None) -> CreditResult:
    """Rows with ``context_mask_B`` False are masked and left out of the batch mean."""
    inputs.check(teacher=True, method="opd")
    m_BT = inputs.bool_mask_BT()
    row_B = inputs.row_mask_B()
    if row_B is not None:
        m_BT = m_BT & row_B[:, None]
    s_BT, t_BT = inputs.student_lp_BT.to(inputs.dtype), inputs.teacher_lp_BT.to(inputs.dtype)
    adv_BT = opd_advantages(s_BT, t_BT, m_BT, params.kl_coef, params.center)  # (B, T)
    return CreditResult(adv_BT, adv_BT)


def teacher_message(
    ctx: ContextTools, params: OpdParams, group: GroupView, rollout: RolloutView, peer: None
) -> str:
    return ctx.student_message(rollout, ctx.require(group, rollout, "problem"))


METHOD = CreditMethod(
    id="opd",
    paper="https://thinkingmachines.ai/blog/on-policy-distillation",
    formula="Â = kl_coef·(mean_batch(s − t) − (s_t − t_t))",
    params_model=OpdParams,
    compute_fn=compute_opd,
    teacher_context="the student prompt itself (the served model is the external teacher)",
    teacher_message=teacher_message,
    student_from_caller=(
        "the served model is opd's teacher on the student's own prompt, so it cannot also score "
        "the student (that gives all-zero advantages): send your policy's student_logprobs"
    ),
)
