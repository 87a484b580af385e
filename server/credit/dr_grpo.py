"""Dr.GRPO: "Understanding R1-Zero-Like Training" (Liu et al., 2025). https://arxiv.org/abs/2503.20783

GRPO without the division by the group std (the length normalisation is the trainer's)::

    A_i     = r_i − mean_g r            # a size-1 group uses mean 0: A = r
    Â_{i,t} = A_i on every generated token of y_i
"""

from __future__ import annotations

from typing import Any

from server.credit.base import CreditInputs, CreditResult
from server.credit.grpo import GrpoParams, GrpoStd, broadcast
from server.credit.method import CreditMethod


class DrGrpoParams(GrpoParams):
    grpo_std: GrpoStd = "none"


def compute_dr_grpo(inputs: CreditInputs, params: DrGrpoParams, state: Any = None) -> CreditResult:
    """Â_BT = r_i − mean_g r on every generated token (Dr.GRPO defaults: grpo_std="none")."""
    return broadcast(inputs, params, "dr_grpo")


METHOD = CreditMethod(
    id="dr_grpo",
    paper="arXiv:2503.20783",
    formula="Â = r_i − mean_g r",
    params_model=DrGrpoParams,
    compute_fn=compute_dr_grpo,
)
