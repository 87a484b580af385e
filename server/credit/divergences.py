"""Trainer-side full-vocabulary divergences (SDPO, OPSD), kept here to test the sampled-token forms.

SDPO ``compute_self_distillation_loss`` (github.com/lasgroup/SDPO, arXiv 2601.20802) and OPSD's GKD
loss (arXiv 2601.18734) use the generalised Jensen–Shannon divergence between student S and
teacher T over the vocabulary, M = (1−α)·S + α·T::

    α = 0:     KL(T‖S)                                  (forward KL)
    α = 1:     KL(S‖T)                                  (reverse KL)
    0 < α < 1: (1−α)·KL(S‖M) + α·KL(T‖M)               (α = ½: JSD)

SDPO restricts both distributions to the top-k entries (k = 100) plus one tail bucket
log(1 − Σ_top-k p) (`topk_with_tail`). The service returns only sampled-token forms; these are
the references the tests check them against (ALGORITHMS.md §6 T8/T9).
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
