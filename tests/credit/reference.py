"""Reference helpers the credit tests check the service against (test-only, not served).

- Trainer-side full-vocabulary divergences (SDPO ``compute_self_distillation_loss``,
  github.com/lasgroup/SDPO, arXiv 2601.20802; OPSD's GKD loss, arXiv 2601.18734): the generalised
  Jensen–Shannon divergence between student S and teacher T, M = (1−α)·S + α·T::

      α = 0:     KL(T‖S)                                  (forward KL)
      α = 1:     KL(S‖T)                                  (reverse KL)
      0 < α < 1: (1−α)·KL(S‖M) + α·KL(T‖M)               (α = ½: JSD)

  SDPO restricts both to the top-k entries plus one tail bucket (`topk_with_tail`). The service
  returns only sampled-token forms; these are what the tests check them against (T8/T9 in
  docs/algorithms.md).
- Peer candidate lists (`other_successes`) and HSD's coverage curve (`hsd_coverage`).
"""

from __future__ import annotations

import math

import torch

from server.credit.antisd import antisd_token_signal


def _kl(logp_V: torch.Tensor, logq_V: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) = Σ_v p_v (log p_v − log q_v) over the last axis; entries with p_v = 0 add 0."""
    p_V = logp_V.exp()
    return torch.where(p_V > 0, p_V * (logp_V - logq_V), 0.0).sum(-1)


def sdpo_token_loss(
    student_logp_V: torch.Tensor, teacher_logp_V: torch.Tensor, alpha: float = 0.5
) -> torch.Tensor:
    """Generalised JSD per position, shape ``[...]`` from log-probs ``[..., V]``.

    Naive reference::

        S, T = student_logp, teacher_logp
        M = log((1 - alpha) * exp(S) + alpha * exp(T))
        loss = (1 - alpha) * sum(exp(S) * (S - M)) + alpha * sum(exp(T) * (T - M))
    """
    S_V, T_V = student_logp_V, teacher_logp_V
    if alpha == 0.0:
        return _kl(T_V, S_V)  # KL(T‖S)
    if alpha == 1.0:
        return _kl(S_V, T_V)  # KL(S‖T)
    M_V = torch.logaddexp(S_V + math.log(1.0 - alpha), T_V + math.log(alpha))  # log M
    return (1.0 - alpha) * _kl(S_V, M_V) + alpha * _kl(T_V, M_V)


def topk_with_tail(logp_V: torch.Tensor, idx_K: torch.Tensor) -> torch.Tensor:
    """Kept entries ``idx_K`` plus a tail bucket log(1 − Σ kept p): ``[..., K+1]``."""
    kept_K = logp_V[..., idx_K]
    tail_1 = torch.log1p(-kept_K.exp().sum(-1, keepdim=True))
    return torch.cat([kept_K, tail_1], dim=-1)


def phi(u: torch.Tensor) -> torch.Tensor:
    """φ(u) = ½ (softplus(u) − log 2): the per-token reward of *descending* JSD (β = ½) in u.

    With r = e^u, f(r) = ½[r log r − (1+r) log((1+r)/2)] and f(r) − r f'(r) = −φ(u), so
    ∇_θ JSD = E_{y∼π_S}[−φ(u_y) ∇_θ log π_S(y)]; AntiSD ascends with advantage −φ(u).
    """
    return -antisd_token_signal(u)


def other_successes(rewards_B, group_ids_B, success_threshold: float = 0.5) -> list[list[int]]:
    """cands(b) for every rollout: other successes of its group, ascending."""
    r_B = torch.as_tensor(rewards_B, dtype=torch.float64).reshape(-1)
    g_B = torch.as_tensor(group_ids_B).reshape(-1)
    same_BB = (g_B[:, None] == g_B[None, :]) & (r_B[None, :] >= success_threshold)  # (B, B)
    same_BB.fill_diagonal_(False)
    return [torch.nonzero(row).reshape(-1).tolist() for row in same_BB]


def hsd_coverage(p: float, G: int) -> float:
    """P(a rollout failed AND has a successful peer) = (1−p)·[1 − (1−p)^{G−1}].

    For G = 8 it peaks at p ≈ 0.257 (0.650).
    """
    return (1.0 - p) * (1.0 - (1.0 - p) ** (G - 1))
