"""Inputs, outputs and shared helpers of the credit methods.

Every method reads one `CreditInputs` (padded ``[B, T]`` tensors plus per-rollout ``[B]`` tensors)
and returns one `CreditResult`. Axis suffixes: ``_B`` rollouts, ``_T`` response positions, ``_G``
groups. Position t is the t-th *generated* token of a rollout, never an absolute position
(docs/algorithms.md §3).

Masking rule (§3.3): everything outside ``mask_BT`` is exactly 0, written ``torch.where(mask, x, 0)``
and never ``mask * x``, so ``-inf`` or NaN in padding cannot leak. A row with no generated token is
all zeros and never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict


class CreditParams(BaseModel):
    """Base of every method's parameter model: unknown names are an error naming them."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class CreditInputs:
    """One batch of rollouts, right-padded to ``[B, T]``.

    ``context_mask_B`` False means the rollout has no teacher context (SDPO without demonstration
    and feedback; HSD with ``fallback=False`` and no peer). The u-methods (opsd, sdpo, hsd) and opd
    mask such rows (Â = 0); the modulating methods (rlsd, antisd, amrsd) treat them as teacher =
    student (u = 0), which is exactly their GRPO advantage.
    """

    mask_BT: torch.Tensor  # bool, True on generated response tokens
    rewards_B: torch.Tensor  # float, r_i
    group_ids_B: torch.Tensor  # long, any ids; equal id = same prompt
    student_lp_BT: torch.Tensor | None = None  # s_t = log π(y_t | x, y_<t)
    teacher_lp_BT: torch.Tensor | None = None  # t_t = log π(y_t | x, c, y_<t)
    teacher_entropy_BT: torch.Tensor | None = None  # −Σ_v p_T log p_T, AntiSD gate only
    context_mask_B: torch.Tensor | None = None  # bool, False = no teacher context
    step: int = 0  # the trainer's 0-based global optimizer step (annealing)

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype: float32 or float64, promoted over the floating inputs given."""
        dtype: torch.dtype | None = None
        for x in (self.student_lp_BT, self.teacher_lp_BT, self.rewards_B):
            if x is not None and x.is_floating_point():
                dtype = x.dtype if dtype is None else torch.promote_types(dtype, x.dtype)
        if dtype not in (torch.float32, torch.float64):
            dtype = torch.float32 if dtype is None or dtype.itemsize <= 4 else torch.float64
        return dtype

    def check(self, *, teacher: bool = False, entropy: bool = False, method: str = "") -> None:
        """Raise ValueError naming the first missing or mis-shaped input."""
        who = f"{method}: " if method else ""
        if self.mask_BT.dim() != 2:
            raise ValueError(f"{who}mask_BT must be [B, T], got shape {tuple(self.mask_BT.shape)}")
        B, T = self.mask_BT.shape
        for name in ("rewards_B", "group_ids_B", "context_mask_B"):
            x = getattr(self, name)
            if x is not None and tuple(x.shape) != (B,):
                raise ValueError(f"{who}{name} must have shape ({B},), got {tuple(x.shape)}")
        if self.group_ids_B.is_floating_point():
            raise ValueError(f"{who}group_ids_B must be an integer tensor")
        need = {"student_lp_BT": teacher, "teacher_lp_BT": teacher, "teacher_entropy_BT": entropy}
        for name, required in need.items():
            x = getattr(self, name)
            if x is None:
                if required:
                    raise ValueError(f"{who}{name} is required by this method but was not given")
                continue
            if tuple(x.shape) != (B, T):
                raise ValueError(f"{who}{name} must have shape ({B}, {T}), got {tuple(x.shape)}")
        if self.step < 0:
            raise ValueError(f"{who}step must be >= 0, got {self.step}")

    def bool_mask_BT(self) -> torch.Tensor:
        m = self.mask_BT
        return m if m.dtype == torch.bool else m > 0

    def row_mask_B(self) -> torch.Tensor | None:
        c = self.context_mask_B
        if c is None:
            return None
        return c if c.dtype == torch.bool else c > 0


@dataclass
class CreditResult:
    """Per-token advantages and the token-level term behind them, both 0 outside the mask.

    ``signal_BT`` per method: u for opsd/sdpo/hsd; the whole Â for opd; g·λ_max·δ for antisd; the
    multiplicative modulation for rlsd (λ·(clip(w)−1)) and amrsd (Δ), so Â = A·(1 + signal);
    0 for grpo and dr_grpo. The two may be one tensor (opd, and u-methods with mix = 0): treat
    them as read-only.
    """

    advantages_BT: torch.Tensor  # (B, T) Â
    signal_BT: torch.Tensor  # (B, T) token-level term
    seq_advantages_B: torch.Tensor | None = None  # (B,) A_i where the method uses it
    state: dict[str, Any] | None = None  # AntiSD gate state to send back
    gate: int | None = None  # AntiSD gate used for this call
    teacher_entropy: float | None = None  # the statistic an entropy gate saw (None: no gate)


def masked(mask_BT: torch.Tensor, x_BT: torch.Tensor) -> torch.Tensor:
    """``x`` on the mask, exactly 0 elsewhere (NaN/-inf in padding never leak)."""
    return torch.where(mask_BT, x_BT, 0.0)


def log_ratio(inputs: CreditInputs, dtype: torch.dtype) -> torch.Tensor:
    """u_BT = teacher_lp_BT − student_lp_BT  # (B, T), garbage allowed outside the mask."""
    assert inputs.teacher_lp_BT is not None and inputs.student_lp_BT is not None
    return inputs.teacher_lp_BT.to(dtype) - inputs.student_lp_BT.to(dtype)


def linear_decay(step: int, total: int | float) -> float:
    """max(0, 1 − step/total); 0 when total <= 0 (schedule switched off)."""
    return max(0.0, 1.0 - step / total) if total > 0 else 0.0
