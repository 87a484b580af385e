"""AntiSD: Anti-Self-Distillation (Shen et al., 2026). https://arxiv.org/abs/2605.11609

*Ascend* the Jensen–Shannon divergence between the context-conditioned teacher and the student,
added to the GRPO advantage and gated by the teacher's entropy::

    u_t     = t_t − s_t                                  # conditional PMI(y_t; c | x, y_<t)
    δ_t     = −φ(u_t) = ½ (log 2 − softplus(u_t))       # ≤ ½ log 2; δ(0) = 0; ≈ −u/2 for u ≫ 0
    Â_{i,t} = A_i + g · lam_max · δ_t                    # additive: survives group centring

Why −φ: JSD (β = ½) is the f-divergence with r = e^u and f(r) − r f'(r) = −½ log((1+r)/2) = −φ(u),
so descending JSD uses per-token reward +φ(u) and ascending it −φ(u) (checked in the tests, T9).

The gate g is a Schmitt trigger on a per-step teacher-entropy statistic H (median or mean over the
step's generated tokens): warm-up of ``warmup_steps`` steps with g = 0, then H_warm = median of the
warm-up H, τ_down = ratio_down · H_warm; g turns off when H < τ_down and back on when H ≥ H_warm.
Its state travels with the caller as JSON (`EntropyGate.to_dict`), one update per training step;
the H it used is returned (``CreditResult.teacher_entropy``), so the response reports what the gate
saw. Teacher message: ``ANTISD_TEACHER`` (``proto/prompts.py``) with a uniformly drawn other
success of the group, else the dataset's ``reference_solution``, <think> blocks removed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field

from proto import prompts
from server.credit.base import CreditInputs, CreditParams, CreditResult, log_ratio, masked
from server.credit.grpo import GrpoStd, sequence_advantages_of
from server.credit.method import ContextTools, CreditMethod, GroupView, RolloutView
from server.credit.peers import antisd_select_solutions

LOG2 = math.log(2.0)
GateStat = Literal["median", "mean"]
STATE_KEYS = ("warmup_history", "h_warm", "tau_down", "g")


class AntisdParams(CreditParams):
    # λ_max: weight of the token term when the gate is open (not confirmed by the paper [S]).
    lam_max: float = Field(default=0.5, ge=0.0)
    # W: steps with λ = 0 that set H_warm (median of their H).
    warmup_steps: int = Field(default=5, ge=1)
    # τ_down = ratio_down · H_warm: the gate closes below it.
    ratio_down: float = Field(default=0.93, gt=0.0, le=1.0)
    # Per-step statistic of the per-token teacher entropy over generated tokens.
    gate_stat: GateStat = "median"
    # A rollout is a verified solution (teacher context) when reward >= this.
    success_threshold: float = 0.5
    grpo_std: GrpoStd = "unbiased"
    eps: float = Field(default=1e-6, ge=0.0)


def softplus(u: torch.Tensor) -> torch.Tensor:
    """log(1 + e^u) = logaddexp(u, 0), computed as max + log1p(e^{−|u|}): no overflow, exact for
    large u (unlike F.softplus, which returns u above its threshold)."""
    return torch.logaddexp(u, torch.zeros((), dtype=u.dtype, device=u.device))


def antisd_token_signal(u: torch.Tensor) -> torch.Tensor:
    """δ(u) = −φ(u) = ½ (log 2 − softplus(u)); bounded above by ½ log 2 ≈ 0.346574."""
    return 0.5 * (LOG2 - softplus(u))


def _median(values_N: torch.Tensor) -> float:
    """numpy-style median (mean of the two middle values for an even count), one selection pass.

    For even N the upper middle is ``lo`` again when ``lo`` fills rank N/2 + 1 too, else the
    smallest value above ``lo``.
    """
    n = values_N.numel()
    lo = values_N.kthvalue((n + 1) // 2).values
    if n % 2:
        return float(lo)
    above_N = values_N > lo
    if n - int(above_N.count_nonzero()) >= n // 2 + 1:
        return float(lo)
    hi = torch.where(above_N, values_N, float("inf")).min()
    return (float(lo) + float(hi)) / 2.0


def _median_list(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2.0


@dataclass
class EntropyGate:
    """Schmitt trigger on the per-step teacher entropy; state = four JSON keys.

    >>> gate = EntropyGate(warmup_steps=2)
    >>> [gate.update_scalar(h) for h in (2.0, 2.0, 1.0, 1.9, 2.0)]
    [0, 0, 0, 0, 1]
    >>> gate.to_dict()
    {'warmup_history': [2.0, 2.0], 'h_warm': 2.0, 'tau_down': 1.86, 'g': 1}
    """

    warmup_steps: int = 5
    ratio_down: float = 0.93
    gate_stat: GateStat = "median"
    warmup_history: list[float] = field(default_factory=list)
    h_warm: float | None = None
    tau_down: float | None = None
    g: int = 1

    # ---- state round trip ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "warmup_history": list(self.warmup_history),
            "h_warm": self.h_warm,
            "tau_down": self.tau_down,
            "g": self.g,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any] | None, **config: Any) -> EntropyGate:
        """Gate from a returned state (None or {} = initial). Raises ValueError on a bad state."""
        state = {} if state is None else state
        if not isinstance(state, dict):
            raise ValueError(f"AntiSD state must be an object with keys {list(STATE_KEYS)}")
        unknown = sorted(set(state) - set(STATE_KEYS))
        if unknown:
            raise ValueError(
                f"AntiSD state has unknown keys {unknown}; expected {list(STATE_KEYS)}"
            )
        hist = state.get("warmup_history", [])
        if not isinstance(hist, list) or not all(_is_number(h) for h in hist):
            raise ValueError("AntiSD state: warmup_history must be a list of numbers")
        for key in ("h_warm", "tau_down"):
            if state.get(key) is not None and not _is_number(state[key]):
                raise ValueError(f"AntiSD state: {key} must be a number or null")
        g = state.get("g", 1)
        if isinstance(g, bool) or g not in (0, 1):
            raise ValueError(f"AntiSD state: g must be 0 or 1, got {g!r}")
        h_warm, tau_down = state.get("h_warm"), state.get("tau_down")
        return cls(
            **config,
            warmup_history=[float(h) for h in hist],
            h_warm=None if h_warm is None else float(h_warm),
            tau_down=None if tau_down is None else float(tau_down),
            g=int(g),
        )

    # ---- updates ---------------------------------------------------------------------------
    @property
    def warming_up(self) -> bool:
        return len(self.warmup_history) < self.warmup_steps

    @property
    def value(self) -> int:
        """The gate as applied now: 0 during warm-up, whatever g says."""
        return 0 if self.warming_up else self.g

    def statistic(self, entropy_BT: torch.Tensor, mask_BT: torch.Tensor) -> float | None:
        """H: median or mean teacher entropy over the masked tokens; None when there are none."""
        m_BT = mask_BT if mask_BT.dtype == torch.bool else mask_BT > 0
        vals_N = torch.masked_select(entropy_BT, m_BT)  # (N,) generated tokens only
        if vals_N.numel() == 0:
            return None
        if self.gate_stat == "median":
            return _median(vals_N)
        return float(vals_N.to(torch.float64).mean())

    def step(self, entropy_BT: torch.Tensor, mask_BT: torch.Tensor) -> tuple[int, float | None]:
        """Update once with this step's entropy; returns (the gate for this step, the H it used).

        A step with no generated token leaves the state unchanged (H is None).
        """
        h = self.statistic(entropy_BT, mask_BT)
        return (self.value if h is None else self.update_scalar(h)), h

    def update_scalar(self, h: float) -> int:
        """Update once with this step's statistic H = ``h``; returns the gate for this step."""
        if self.warming_up:  # λ = 0 while recording H
            self.warmup_history.append(float(h))
            if not self.warming_up:
                self._finish_warmup()
            return 0
        if self.h_warm is None or self.tau_down is None:  # state from a run with another W
            self._finish_warmup()
        assert self.h_warm is not None and self.tau_down is not None
        if self.g == 1 and h < self.tau_down:
            self.g = 0
        elif self.g == 0 and h >= self.h_warm:
            self.g = 1
        return self.g

    def _finish_warmup(self) -> None:
        self.h_warm = _median_list(self.warmup_history[: self.warmup_steps])
        self.tau_down = self.ratio_down * self.h_warm


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def antisd_advantages(
    u_BT: torch.Tensor, A_B: torch.Tensor, mask_BT: torch.Tensor, gate: int, lam_max: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Â_BT, term_BT) with term = g·lam_max·δ(u) and Â = A_i + term on the mask."""
    A_BT = A_B[:, None].expand(mask_BT.shape)  # (B, T)
    lam = gate * lam_max
    if lam == 0.0:  # gate closed or warm-up: exactly GRPO
        return masked(mask_BT, A_BT), torch.zeros_like(A_BT)
    term_BT = masked(mask_BT, lam * antisd_token_signal(u_BT))  # (B, T)
    return masked(mask_BT, A_BT + term_BT), term_BT


def compute_antisd(
    inputs: CreditInputs, params: AntisdParams, state: dict[str, Any] | None
) -> CreditResult:
    """One gate update with this call's teacher entropy (masked tokens), then Â.

    Rows with ``context_mask_B`` False count as teacher = student (δ(0) = 0): plain GRPO.
    """
    if inputs.teacher_entropy_BT is None:
        raise ValueError(
            "antisd: teacher_entropy_BT is required (the entropy gate needs the teacher's "
            "per-token entropy); score the teacher with entropy or pick another method"
        )
    inputs.check(teacher=True, entropy=True, method="antisd")
    dtype = inputs.dtype
    m_BT = inputs.bool_mask_BT()
    gate = EntropyGate.from_dict(
        state,
        warmup_steps=params.warmup_steps,
        ratio_down=params.ratio_down,
        gate_stat=params.gate_stat,
    )
    g, h = gate.step(inputs.teacher_entropy_BT, m_BT)
    A_B = sequence_advantages_of(inputs, params, dtype)  # (B,)
    u_BT = log_ratio(inputs, dtype)  # (B, T)
    row_B = inputs.row_mask_B()
    if row_B is not None:
        u_BT = torch.where(row_B[:, None], u_BT, 0.0)
    adv_BT, term_BT = antisd_advantages(u_BT, A_B, m_BT, g, params.lam_max)
    return CreditResult(
        adv_BT, term_BT, seq_advantages_B=A_B, state=gate.to_dict(), gate=g, teacher_entropy=h
    )


def select_solution(rewards, group_ids, seed: int, params: AntisdParams) -> list[int | None]:
    """A uniformly drawn other success (seeded); None: the dataset's solution."""
    peers = antisd_select_solutions(rewards, group_ids, seed, params.success_threshold)
    return [p if p >= 0 else None for p in peers]


def teacher_message(
    ctx: ContextTools,
    params: AntisdParams,
    group: GroupView,
    rollout: RolloutView,
    peer: RolloutView | None,
) -> str:
    problem = ctx.require(group, rollout, "problem")
    grade = "correct" if rollout.reward >= params.success_threshold else "incorrect"
    solution = peer.text if peer is not None else ctx.require(group, rollout, "reference_solution")

    def render(demo: str) -> str:
        return ctx.fill(
            rollout, prompts.ANTISD_TEACHER, problem=problem, solution=demo, grade=grade
        )

    return ctx.fit(rollout, render, ctx.strip_thinking(solution), limit=2**62)


METHOD = CreditMethod(
    id="antisd",
    paper="arXiv:2605.11609",
    formula="Â = A_i + g·lam_max·½(log 2 − softplus(u_t))",
    params_model=AntisdParams,
    compute_fn=compute_antisd,
    teacher_context="problem + a verified solution (other success, else the dataset's) + grade",
    teacher_message=teacher_message,
    select_peers=select_solution,
    needs_entropy=True,
)
