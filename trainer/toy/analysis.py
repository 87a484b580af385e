"""Checks of the papers' claims on the toy loop's own rollouts.

- **HSD localisation** (docs/algorithms.md §4.6): "about 55% of the credit mass lies within ±8 tokens of
  the divergence position τ". For a failed rollout i whose teacher saw a successful peer p
  (``details.peer_index``), τ = the first response index where ``response_ids`` of i and p differ
  (the shorter length if one is a prefix of the other), and the share is::

      share = Σ_{|t−τ| ≤ w} |signal_t|  /  Σ_t |signal_t|        (w = 8)

  pooled over rollouts (sums of numerators over sums of denominators). Responses here are short
  (~20–40 tokens), so a window of 17 tokens covers much of a response; :class:`DivergenceMass`
  therefore also reports the share a *uniform* |signal| would give, the baseline to beat.
- **AMR-SD never flips a sign** (§4.8): Â_{i,t} = A_i·(1+Δ_t) with Δ_t ≥ 0, so for every token
  sign(Â_{i,t}) == sign(A_i) or Â_{i,t} == 0. :func:`sign_flips` counts the tokens that break it
  (for any method; additive AntiSD is expected to flip some, multiplicative AMR-SD and RLSD none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DivergenceMass",
    "first_divergence",
    "grpo_advantages",
    "hsd_divergence_mass",
    "sign_flips",
    "window_mass",
]


def grpo_advantages(rewards_B: np.ndarray, G: int, eps: float = 1e-6) -> np.ndarray:
    """GRPO A_i per rollout, groups of G consecutive rollouts, unbiased std (docs/algorithms.md §4.1).

    A_i = (r_i − mean_g r) / (std_g r + eps); a size-1 group has mean 0, std 1.  # (B,)
    """
    r_PG = np.asarray(rewards_B, dtype=np.float64).reshape(-1, G)
    if G == 1:
        return (r_PG / (1.0 + eps)).reshape(-1)
    A_PG = (r_PG - r_PG.mean(1, keepdims=True)) / (r_PG.std(1, ddof=1, keepdims=True) + eps)
    return A_PG.reshape(-1)


def sign_flips(advantages_B: Sequence[np.ndarray], A_B: np.ndarray) -> tuple[int, int]:
    """(tokens whose Â has a sign other than A_i's and is not 0, tokens checked).

    >>> sign_flips([np.array([0.5, 0.0]), np.array([-0.2, 0.1])], np.array([1.0, -1.0]))
    (1, 4)
    """
    flips = total = 0
    for adv_T, a in zip(advantages_B, A_B):
        adv_T = np.asarray(adv_T, dtype=np.float64)
        bad = (np.sign(adv_T) != np.sign(a)) & (adv_T != 0)
        flips += int(bad.sum())
        total += adv_T.size
    return flips, total


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int:
    """First index where token lists ``a`` and ``b`` differ; ``min(len)`` if one prefixes the other.

    >>> first_divergence([1, 2, 3, 4], [1, 2, 9])
    2
    """
    n = min(len(a), len(b))
    for t in range(n):
        if a[t] != b[t]:
            return t
    return n


def window_mass(signal_T: np.ndarray, tau: int, window: int) -> tuple[float, float, float]:
    """(in-window |signal| mass, total |signal| mass, in-window mass if |signal| were uniform).

    The window is ``[tau − window, tau + window]`` clipped to the response.
    """
    s = np.abs(np.asarray(signal_T, dtype=np.float64))
    L = s.size
    if L == 0:
        return 0.0, 0.0, 0.0
    lo, hi = max(0, tau - window), min(L, tau + window + 1)
    total = float(s.sum())
    return float(s[lo:hi].sum()), total, total * (hi - lo) / L


@dataclass
class DivergenceMass:
    """HSD credit mass around τ, pooled over the failed rollouts that had a peer."""

    window_mass: float = 0.0
    total_mass: float = 0.0
    uniform_window_mass: float = 0.0
    rollouts: int = 0
    shares: list[float] | None = None  # per-rollout share (for a histogram)

    @property
    def share(self) -> float:
        return self.window_mass / self.total_mass if self.total_mass else float("nan")

    @property
    def uniform_share(self) -> float:
        return self.uniform_window_mass / self.total_mass if self.total_mass else float("nan")

    def add(self, other: DivergenceMass) -> DivergenceMass:
        return DivergenceMass(
            self.window_mass + other.window_mass,
            self.total_mass + other.total_mass,
            self.uniform_window_mass + other.uniform_window_mass,
            self.rollouts + other.rollouts,
            (self.shares or []) + (other.shares or []),
        )


def hsd_divergence_mass(
    response_ids_B: Sequence[Sequence[int]],
    rewards_B: np.ndarray,
    result,
    G: int,
    window: int = 8,
    success_threshold: float = 0.5,
    signals_B: Sequence[np.ndarray] | None = None,
) -> DivergenceMass:
    """Divergence mass of an ``hsd`` answer (``return_details=True``), rollouts in batch order.

    ``signals_B`` replaces the answer's signal (e.g. OPSD's u_t on the same rollouts, measured
    around HSD's τ); the peers always come from ``result``.
    """
    out = DivergenceMass(shares=[])
    flat = [r for g in result.groups for r in g]
    for b, credit in enumerate(flat):
        d = credit.details
        if d is None or d.peer_index is None or rewards_B[b] >= success_threshold:
            continue
        peer_b = (b // G) * G + d.peer_index
        tau = first_divergence(response_ids_B[b], response_ids_B[peer_b])
        signal = d.signal if signals_B is None else signals_B[b]
        w, tot, uni = window_mass(signal, tau, window)
        if tot <= 0:
            continue
        out = out.add(DivergenceMass(w, tot, uni, 1, [w / tot]))
    return out
