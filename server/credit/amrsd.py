"""AMR-SD: Asymmetric Meta-Reflective Self-Distillation (Wei et al., 2026).

Paper: https://arxiv.org/abs/2605.18529. The policy writes its own ``<hint>`` (success) or
``<critique>`` (failure), c_i, with no ground truth; the same policy rescoring the rollout under c_i
gives the Causal Information Gain, which *amplifies* the GRPO advantage::

    I_t     = t_t − s_t = u_t,   Î_t = clip(I_t, −kappa, kappa)
    f(k)    = max(0, 1 − k / t_decay)                          # k = global optimizer step
    Δ_t     = 1{A_i ≥ 0} · lam·f(k) · ReLU(Î_t − tau)
            + 1{A_i < 0} · gamma·f(k) · ReLU(−Î_t − tau)
    Â_{i,t} = A_i · (1 + Δ_t)                                  # Δ ≥ 0: never flips, never shrinks

Success tokens the teacher endorses (Î > tau) get more credit, failure tokens it rejects
(Î < −tau) more blame. A_i = 0 gives 0; from k = t_decay on, exactly GRPO. An empty reflection
(``context_mask_B`` False) means teacher prompt = student prompt: I = 0, Δ = 0. tau = 0.5 is this
service's choice [R] (not in the sources). A rollout sent without ``reflection`` gets one written
by the policy (``server/hints.py``, ``needs_reflections``); teacher message: ``AMRSD_TEACHER``
(``proto/prompts.py``), ``<hint>`` when reward >= success_threshold, else ``<critique>``.
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


class AmrsdParams(CreditParams):
    # Amplification of endorsed tokens in successful rollouts (A_i >= 0).
    lam: float = Field(default=0.2, ge=0.0)
    # Amplification of rejected tokens in failed rollouts (A_i < 0).
    gamma: float = Field(default=0.1, ge=0.0)
    # I is clipped to [−kappa, kappa].
    kappa: float = Field(default=5.0, gt=0.0)
    # Dead zone: only |Î| > tau modulates [R].
    tau: float = Field(default=0.5, ge=0.0)
    # lam and gamma decay linearly to 0 over this many steps (0 = plain GRPO from the start).
    t_decay: int = Field(default=50, ge=0)
    grpo_std: GrpoStd = "unbiased"
    eps: float = Field(default=1e-6, ge=0.0)
    # A rollout is correct (its reflection is a hint, else a critique) when reward >= this.
    success_threshold: float = 0.5
    # Meta-Reflection written by the server for rollouts that carry no `reflection` [R].
    reflection_max_tokens: int = Field(default=128, ge=1, le=4096)
    reflection_temperature: float = Field(default=0.7, ge=0.0, le=10.0)


def amrsd_advantages(
    u_BT: torch.Tensor,
    A_B: torch.Tensor,
    mask_BT: torch.Tensor,
    lam: float,
    gamma: float,
    kappa: float = 5.0,
    tau: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Â_BT, Δ_BT) for already-annealed lam and gamma.

    Naive reference::

        I = clip(u, -kappa, kappa)
        delta = where(A >= 0, lam * relu(I - tau), gamma * relu(-I - tau))
        adv = where(mask, A * (1 + delta), 0)
    """
    A_B1 = A_B[:, None]  # (B, 1)
    pos_B1 = A_B1 >= 0
    # One branch-free form: with σ = ±1 the side of A, σ·clip(I, −κ, κ) = clip(σ·I, −κ, κ) and the
    # ReLU removes the lower clip, so Δ = coef·ReLU(min(σ·I, κ) − τ).
    sign_B1 = torch.where(pos_B1, 1.0, -1.0).to(u_BT.dtype)  # (B, 1) σ
    lam_t, gamma_t = (torch.tensor(c, dtype=u_BT.dtype, device=u_BT.device) for c in (lam, gamma))
    coef_B1 = torch.where(pos_B1, lam_t, gamma_t)  # (B, 1) lam or gamma, in the compute dtype
    gain_BT = ((sign_B1 * u_BT).clamp(max=kappa) - tau).clamp(min=0.0) * coef_B1  # (B, T)
    delta_BT = masked(mask_BT, gain_BT)  # (B, T) Δ ≥ 0
    return masked(mask_BT, A_B1 * (1.0 + delta_BT)), delta_BT


def compute_amrsd(inputs: CreditInputs, params: AmrsdParams, state: Any = None) -> CreditResult:
    inputs.check(teacher=True, method="amrsd")
    dtype = inputs.dtype
    A_B = sequence_advantages_of(inputs, params, dtype)  # (B,)
    f = linear_decay(inputs.step, params.t_decay)
    u_BT = log_ratio(inputs, dtype)  # (B, T)
    row_B = inputs.row_mask_B()
    if row_B is not None:
        u_BT = torch.where(row_B[:, None], u_BT, 0.0)
    adv_BT, delta_BT = amrsd_advantages(
        u_BT, A_B, inputs.bool_mask_BT(), params.lam * f, params.gamma * f, params.kappa, params.tau
    )
    return CreditResult(adv_BT, delta_BT, seq_advantages_B=A_B)


def teacher_message(
    ctx: ContextTools, params: AmrsdParams, group: GroupView, rollout: RolloutView, peer: None
) -> str:
    """An empty reflection gives the student prompt: teacher = student, I = 0 (plain GRPO)."""
    problem = ctx.require(group, rollout, "problem")
    reflection = (rollout.reflection or "").strip()
    if not reflection:
        return ctx.student_message(rollout, problem)
    kind = "hint" if rollout.reward >= params.success_threshold else "critique"
    return ctx.fill(
        rollout, prompts.AMRSD_TEACHER, problem=problem, kind=kind, reflection=reflection
    )


METHOD = CreditMethod(
    id="amrsd",
    paper="arXiv:2605.18529",
    formula="Â = A_i·(1 + Δ_t), Δ_t = lam·f(k)·ReLU(Î_t − tau) or gamma·f(k)·ReLU(−Î_t − tau)",
    params_model=AmrsdParams,
    compute_fn=compute_amrsd,
    teacher_context="problem + the rollout's own <hint>/<critique>; empty: the student prompt",
    teacher_message=teacher_message,
    needs_reflections=True,
)
