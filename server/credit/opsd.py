"""OPSD: "Self-Distilled Reasoner", on-policy self-distillation (Zhao et al.).

Paper: https://arxiv.org/abs/2601.18734; code: github.com/siyan-zhao/OPSD (``--use_tinker_loss``).
One network in both roles; the teacher is the fixed initial policy shown the full reference
solution. Sampled-token (service) form::

    u_t     = t_t − s_t          # log π(y_t | x, solution, y_<t) − log π(y_t | x, y_<t)
    Â_{i,t} = u_t                # rewards unused; nonzero whatever the outcome

The paper's default full-vocabulary JSD (β = 0.5) is the trainer's. Teacher message:
``OPSD_TEACHER`` (``proto/prompts.py``). `u_advantages` is shared with SDPO (row mask) and HSD (row mask, + mix·A_i).
"""

from __future__ import annotations

from typing import Any

import torch

from proto import prompts
from server.credit.base import CreditInputs, CreditParams, CreditResult, log_ratio, masked
from server.credit.method import ContextTools, CreditMethod, GroupView, RolloutView


class OpsdParams(CreditParams):
    """No parameters: Â = u_t."""


def u_advantages(
    u_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    row_mask_B: torch.Tensor | None = None,
    A_B: torch.Tensor | None = None,
    mix: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Â_BT, signal_BT) with Â = u_t + mix·A_i on the mask, 0 elsewhere and on masked rows.

    ``row_mask_B`` False drops a whole rollout (no teacher context), mix·A_i included.
    Naive reference::

        m = mask & row_mask[:, None]
        adv = where(m, u + mix * A[:, None], 0);  signal = where(m, u, 0)
    """
    m_BT = mask_BT if row_mask_B is None else mask_BT & row_mask_B[:, None]  # (B, T)
    signal_BT = masked(m_BT, u_BT)
    if A_B is None or mix == 0.0:
        return signal_BT, signal_BT
    return masked(m_BT, u_BT + mix * A_B[:, None]), signal_BT


def compute_opsd(inputs: CreditInputs, params: OpsdParams, state: Any = None) -> CreditResult:
    inputs.check(teacher=True, method="opsd")
    u_BT = log_ratio(inputs, inputs.dtype)  # (B, T)
    adv_BT, signal_BT = u_advantages(u_BT, inputs.bool_mask_BT(), inputs.row_mask_B())
    return CreditResult(adv_BT, signal_BT)


def teacher_message(
    ctx: ContextTools, params: OpsdParams, group: GroupView, rollout: RolloutView, peer: None
) -> str:
    problem = ctx.require(group, rollout, "problem")
    solution = ctx.require(group, rollout, "reference_solution")
    return ctx.fill(rollout, prompts.OPSD_TEACHER, problem=problem, solution=solution)


METHOD = CreditMethod(
    id="opsd",
    paper="arXiv:2601.18734",
    formula="Â = u_t",
    params_model=OpsdParams,
    compute_fn=compute_opsd,
    teacher_context="problem + the dataset's reference solution",
    teacher_message=teacher_message,
)
