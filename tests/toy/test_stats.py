"""Intervals, curve statistics and verdicts of trainer/toy/stats.py on hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.toy import stats


def test_t_interval_hand_values():
    # [1, 2, 3]: mean 2, sd 1, half-width t_{.975,2} · 1/√3 = 4.303 / 1.732 = 2.4843.
    iv = stats.t_interval([1.0, 2.0, 3.0])
    assert iv.mean == 2.0 and iv.n == 3
    assert (iv.lo, iv.hi) == pytest.approx((2 - 2.48434, 2 + 2.48434), abs=1e-4)
    one = stats.t_interval([0.4])
    assert one.mean == 0.4 and math.isnan(one.lo)
    assert one.fmt(100) == "40.0 (n=1)"  # no interval from one seed


def test_verdict_sides():
    above = stats.Interval(0.08, 0.06, 0.10, 5)
    assert stats.verdict(above, 0.05) == "reproduced"
    assert stats.verdict(stats.Interval(0.02, 0.01, 0.04, 5), 0.05) == "not reproduced"
    assert stats.verdict(stats.Interval(0.05, 0.02, 0.08, 5), 0.05) == "inconclusive"
    assert stats.verdict(stats.Interval(0.5, math.nan, math.nan, 1), 0.0) == "inconclusive"
    # A claim that the value is lower than the threshold.
    assert stats.verdict(stats.Interval(-0.2, -0.3, -0.1, 3), 0.0, higher_is_claim=False) == (
        "reproduced"
    )


def test_auc_is_mean_accuracy_over_steps():
    assert stats.auc([(0, 0.2), (10, 0.4)]) == pytest.approx(0.3)
    # Unequal spacing: (0.2+0.4)/2·10 + (0.4+0.4)/2·30 = 3 + 12 = 15 over 40 steps.
    assert stats.auc([(0, 0.2), (10, 0.4), (40, 0.4)]) == pytest.approx(15 / 40)


def test_steps_to_reach_smooths_and_interpolates():
    # Smoothed: [0.15, 0.2, 0.3, 0.35] from [0.1, 0.2, 0.3, 0.4].
    curve = [(0, 0.1), (10, 0.2), (20, 0.3), (30, 0.4)]
    np.testing.assert_allclose(stats.smooth([c[1] for c in curve]), [0.15, 0.2, 0.3, 0.35])
    assert stats.steps_to_reach(curve, 0.25) == pytest.approx(15.0)
    assert stats.steps_to_reach(curve, 0.1) == 0.0
    assert stats.steps_to_reach(curve, 0.5) is None
    # A single spike is smoothed away: it does not count as reaching the target.
    assert stats.steps_to_reach([(0, 0.1), (10, 0.5), (20, 0.1), (30, 0.1)], 0.4) is None


def test_bootstrap_intervals_contain_the_point_and_pair_units():
    rng = np.random.default_rng(1)
    num = rng.uniform(0, 1, 300)
    den = np.ones(300)
    iv = stats.bootstrap_ratio_interval(num, den)
    assert iv.lo < iv.mean < iv.hi and iv.hi - iv.lo < 0.1
    # Paired difference of a series with itself plus 0.1 per unit: exactly 0.1, zero width.
    d = stats.bootstrap_diff_interval(num + 0.1, den, num, den)
    assert (d.mean, d.lo, d.hi) == pytest.approx((0.1, 0.1, 0.1))


def test_verdict_margin_rules_out_a_large_claimed_effect():
    # Claimed: a gap of tens of points; measured −0.5 [−1.7, +0.7]: ruled out with a 5-point margin.
    small = stats.Interval(-0.005, -0.017, 0.007, 1000)
    assert stats.verdict(small, 0.0) == "inconclusive"
    assert stats.verdict(small, 0.0, margin=0.05) == "not reproduced"
    assert stats.verdict(stats.Interval(0.3, 0.2, 0.4, 9), 0.0, margin=0.05) == "reproduced"
