"""GRPO and Dr.GRPO: one sequence-level advantage on every token of a rollout.

GRPO, DeepSeekMath (https://arxiv.org/abs/2402.03300); Dr.GRPO (``dr_grpo.py``) is GRPO without
the std division; std convention of verl's
``compute_grpo_outcome_advantage`` (github.com/lasgroup/SDPO, verl/trainer/ppo/core_algos.py)::

    GRPO:     A_i = (r_i − mean_g r) / (std_g r + eps)     std unbiased (N−1) by default
    Dr.GRPO:  A_i =  r_i − mean_g r                        (grpo_std = "none")
    Â_{i,t} = A_i on every generated token of y_i

A size-1 group uses mean 0 and std 1 (verl), so A = r/(1+eps), exactly r for Dr.GRPO. All-equal
rewards give A = 0/(0+eps) = 0.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from server.credit.base import CreditInputs, CreditParams, CreditResult, masked
from server.credit.method import CreditMethod

GrpoStd = Literal["unbiased", "population", "none"]


def sequence_advantages(
    rewards_B: torch.Tensor,
    group_ids_B: torch.Tensor,
    grpo_std: GrpoStd = "unbiased",
    eps: float = 1e-6,
) -> torch.Tensor:
    """A_B, the GRPO advantage of each rollout within its group. shape (B,)

    Group statistics use scatter-adds over ``group_ids_B`` (any integer ids, any order). Naive
    reference::

        for g in unique(group_ids):
            r = rewards[group_ids == g]
            mu, sd = (0, 1) if len(r) == 1 else (r.mean(), r.std(ddof=1 if unbiased else 0))
            A[group_ids == g] = r - mu if grpo_std == "none" else (r - mu) / (sd + eps)
    """
    if grpo_std not in ("unbiased", "population", "none"):
        raise ValueError(f"grpo_std must be unbiased, population or none, got {grpo_std!r}")
    r_B = rewards_B if rewards_B.is_floating_point() else rewards_B.to(torch.get_default_dtype())
    if r_B.numel() == 0:
        return r_B.clone()
    _, gid_B = torch.unique(group_ids_B, return_inverse=True)  # (B,) dense ids 0..G-1
    G = int(gid_B.max()) + 1
    n_G = torch.zeros(G, dtype=r_B.dtype, device=r_B.device).index_add_(
        0, gid_B, torch.ones_like(r_B)
    )
    sum_G = torch.zeros_like(n_G).index_add_(0, gid_B, r_B)
    single_G = n_G == 1
    mean_G = torch.where(single_G, 0.0, sum_G / n_G)  # (G,) size-1 group: mean 0
    dev_B = r_B - mean_G[gid_B]  # (B,)
    if grpo_std == "none":
        return dev_B
    ss_G = torch.zeros_like(n_G).index_add_(0, gid_B, dev_B * dev_B)  # two-pass: Σ (r − μ)²
    dof_G = n_G - 1 if grpo_std == "unbiased" else n_G
    std_G = torch.where(single_G, 1.0, (ss_G / dof_G.clamp(min=1)).sqrt())  # size-1: std 1
    return dev_B / (std_G[gid_B] + eps)


class GrpoParams(CreditParams):
    # Group std: "unbiased" (N−1, verl), "population" (N), "none" (Dr.GRPO, no division).
    grpo_std: GrpoStd = "unbiased"
    # Added to the std before dividing.
    eps: float = Field(default=1e-6, ge=0.0)


def sequence_advantages_of(inputs: CreditInputs, params: Any, dtype: torch.dtype) -> torch.Tensor:
    """A_B for a method whose params carry ``grpo_std`` and ``eps``. shape (B,)"""
    return sequence_advantages(
        inputs.rewards_B.to(dtype), inputs.group_ids_B, params.grpo_std, params.eps
    )


def broadcast(inputs: CreditInputs, params: GrpoParams, method: str) -> CreditResult:
    """Â_BT = A_B on every generated token."""
    inputs.check(method=method)
    m_BT = inputs.bool_mask_BT()
    A_B = sequence_advantages_of(inputs, params, inputs.dtype)
    adv_BT = masked(m_BT, A_B[:, None].expand(m_BT.shape))  # (B, T)
    return CreditResult(adv_BT, torch.zeros_like(adv_BT), seq_advantages_B=A_B)


def compute_grpo(inputs: CreditInputs, params: GrpoParams, state: Any = None) -> CreditResult:
    """Â_BT = A_B broadcast over the generated tokens (rewards only, no teacher)."""
    return broadcast(inputs, params, "grpo")


METHOD = CreditMethod(
    id="grpo",
    paper="arXiv:2402.03300",
    formula="Â = (r_i − mean_g r) / (std_g r + eps)",
    params_model=GrpoParams,
    compute_fn=compute_grpo,
)
