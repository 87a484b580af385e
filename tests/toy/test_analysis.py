"""The analyses of trainer/toy/analysis.py on hand-made examples."""

from __future__ import annotations

import numpy as np
import pytest

from client import AdvantagesResult, CreditDetails, RolloutCredit
from proto import AdvantageStats
from trainer.toy import analysis


def test_first_divergence():
    assert analysis.first_divergence([1, 2, 3], [1, 2, 4]) == 2
    assert analysis.first_divergence([5], [6]) == 0
    assert analysis.first_divergence([1, 2], [1, 2, 3]) == 2  # a prefix: the shorter length
    assert analysis.first_divergence([], [1]) == 0


def test_window_mass_hand_example():
    # |signal| = [1, 0, 0, 4, 2, 0, 0, 3] (L = 8), tau = 3, window 1 -> indices 2..4:
    #   in-window 0 + 4 + 2 = 6, total 10, uniform: 10 * 3/8 = 3.75
    signal = np.array([1.0, 0.0, 0.0, -4.0, 2.0, 0.0, 0.0, -3.0])
    w, tot, uni = analysis.window_mass(signal, tau=3, window=1)
    assert (w, tot) == (6.0, 10.0)
    assert uni == pytest.approx(3.75)
    # Window clipped at both ends: tau = 0, window 8 covers everything.
    assert analysis.window_mass(signal, 0, 8) == (10.0, 10.0, 10.0)
    assert analysis.window_mass(np.zeros(0), 0, 8) == (0.0, 0.0, 0.0)


def _result(signals, peers):
    """An AdvantagesResult with one group whose rollouts carry ``signals`` and ``peers``."""
    group = [
        RolloutCredit(
            advantages=np.asarray(s, dtype=np.float32),
            details=CreditDetails(
                student_logprobs=np.zeros(len(s), np.float32),
                teacher_logprobs=np.zeros(len(s), np.float32),
                signal=np.asarray(s, dtype=np.float32),
                peer_index=p,
            ),
        )
        for s, p in zip(signals, peers)
    ]
    stats = AdvantageStats(rollouts=len(group), tokens=sum(len(s) for s in signals))
    return AdvantagesResult("hsd", 0, None, [group], stats)


def test_hsd_divergence_mass_uses_failed_rollouts_with_a_peer():
    # Rollout 0 succeeded; 1 failed with peer 0 and diverges at t = 2; 2 failed, no peer (fallback).
    responses = [[7, 8, 9, 10, 11], [7, 8, 5, 5, 5, 5], [1, 2]]
    rewards = np.array([1.0, 0.0, 0.0])
    signals = [
        [0.5, 0.5, 0.5, 0.5, 0.5],
        [0.0, 0.0, 3.0, 1.0, 0.0, 1.0],  # window 1 around tau=2: 0 + 3 + 1 = 4 of 5
        [9.0, 9.0],
    ]
    res = _result(signals, [1, 0, None])
    out = analysis.hsd_divergence_mass(responses, rewards, res, G=3, window=1)
    assert out.rollouts == 1
    assert out.share == pytest.approx(4 / 5)
    assert out.uniform_share == pytest.approx(3 / 6)
    # Another signal measured around the same tau (e.g. OPSD's u_t on these rollouts).
    flat = [np.ones(5), np.ones(6), np.ones(2)]
    other = analysis.hsd_divergence_mass(responses, rewards, res, G=3, window=1, signals_B=flat)
    assert other.share == pytest.approx(3 / 6)


def test_grpo_advantages_match_hand_values():
    # Group [1, 0, 0, 0]: mean 0.25, unbiased std 0.5 -> A = [1.5, -0.5, -0.5, -0.5].
    A = analysis.grpo_advantages(np.array([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]), G=4)
    np.testing.assert_allclose(A[:4], [1.5, -0.5, -0.5, -0.5], rtol=1e-5)
    np.testing.assert_allclose(A[4:], 0.0)  # uniform group


def test_sign_flips():
    A = np.array([1.5, -0.5, 0.0])
    keeps = [np.array([1.5, 3.0]), np.array([-0.5, -0.6]), np.array([0.0, 0.0])]
    assert analysis.sign_flips(keeps, A) == (0, 6)
    flipped = [np.array([-0.1, 3.0]), np.array([-0.5, 0.0]), np.array([0.2, 0.0])]
    assert analysis.sign_flips(flipped, A) == (2, 6)  # -0.1 under A>0, 0.2 under A=0


def test_amrsd_never_flips_a_sign_by_construction():
    """Â = A_i·(1 + Δ_t), Δ_t ≥ 0: a property of the formula (a unit test, not a result)."""
    import torch

    from server.credit.amrsd import amrsd_advantages

    gen = torch.Generator().manual_seed(0)
    u_BT = torch.randn(64, 30, generator=gen, dtype=torch.float64) * 6  # beyond ±kappa too
    A_B = torch.randn(64, generator=gen, dtype=torch.float64)
    A_B[::7] = 0.0
    mask_BT = torch.rand(64, 30, generator=gen) < 0.8
    adv_BT, delta_BT = amrsd_advantages(u_BT, A_B, mask_BT, lam=0.2, gamma=0.1)
    assert (delta_BT >= 0).all() and (delta_BT > 0).any()
    flips, total = analysis.sign_flips(list(adv_BT.numpy()), A_B.numpy())
    assert total == 64 * 30 and flips == 0
    # Amplifies, never shrinks: |Â| ≥ |A_i| on masked-in tokens.
    on = mask_BT
    assert (adv_BT.abs()[on] >= A_B[:, None].abs().expand_as(adv_BT)[on] - 1e-12).all()
