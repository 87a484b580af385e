"""Intervals and curve statistics for the toy comparison (paired seeds, 95% intervals).

- :func:`t_interval`: mean ± t_{0.975, n−1} · sd / √n over seeds (sd with n − 1).
- :func:`bootstrap_ratio_interval`: percentile bootstrap of Σ num / Σ den over resampled units.
- :func:`auc`: area under an accuracy curve by the trapezoid rule, divided by the step span, so it
  is the curve's mean accuracy over training (same units as accuracy).
- :func:`steps_to_reach`: first step at which a curve, smoothed by a 3-point moving average and
  linearly interpolated between evaluations, reaches a target.
- :func:`verdict`: reproduced / not reproduced / inconclusive from an interval and the claim's side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# t_{0.975, df} for df = 1..30 (beyond: 1.96 is within 4%).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip


@dataclass
class Interval:
    mean: float
    lo: float  # nan when n < 2
    hi: float
    n: int

    def fmt(self, scale: float = 1.0, digits: int = 1, sign: bool = False) -> str:
        m = f"{self.mean * scale:+.{digits}f}" if sign else f"{self.mean * scale:.{digits}f}"
        if math.isnan(self.lo):
            return f"{m} (n={self.n})"
        return f"{m} [{self.lo * scale:.{digits}f}, {self.hi * scale:.{digits}f}]"

    def as_dict(self) -> dict:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n}


def t_quantile(df: int) -> float:
    return _T975[df - 1] if df <= len(_T975) else 1.96


def t_interval(values: Sequence[float]) -> Interval:
    """95% t-interval of the mean over seeds; a single value gives no interval (nan bounds)."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half = t_quantile(n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def bootstrap_ratio_interval(
    num: Sequence[float], den: Sequence[float], resamples: int = 2000, seed: int = 0
) -> Interval:
    """Σ num / Σ den with a 95% percentile bootstrap over units (e.g. rollouts)."""
    a, b = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    n = a.size
    point = float(a.sum() / b.sum()) if n and b.sum() > 0 else math.nan
    if n < 2:
        return Interval(point, math.nan, math.nan, n)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    ratios = a[idx].sum(1) / np.maximum(b[idx].sum(1), 1e-300)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return Interval(point, float(lo), float(hi), n)


def bootstrap_diff_interval(
    num_a: Sequence[float],
    den_a: Sequence[float],
    num_b: Sequence[float],
    den_b: Sequence[float],
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Σ num_a / Σ den_a − Σ num_b / Σ den_b, the same units resampled for both (paired)."""
    na, da, nb, db = (np.asarray(v, dtype=np.float64) for v in (num_a, den_a, num_b, den_b))
    n = na.size
    if n == 0 or da.sum() <= 0 or db.sum() <= 0:
        return Interval(math.nan, math.nan, math.nan, n)
    point = float(na.sum() / da.sum() - nb.sum() / db.sum())
    if n < 2:
        return Interval(point, math.nan, math.nan, n)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    diffs = na[idx].sum(1) / np.maximum(da[idx].sum(1), 1e-300) - nb[idx].sum(1) / np.maximum(
        db[idx].sum(1), 1e-300
    )
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return Interval(point, float(lo), float(hi), n)


def auc(curve: Sequence[tuple[int, float]]) -> float:
    """Mean accuracy over the run: ∫ acc d(step) / (last step − first step), trapezoid rule."""
    steps = np.array([s for s, _ in curve], dtype=np.float64)
    acc = np.array([a for _, a in curve], dtype=np.float64)
    if steps.size < 2 or steps[-1] == steps[0]:
        return float(acc.mean())
    area = float(((acc[1:] + acc[:-1]) / 2 * np.diff(steps)).sum())
    return area / float(steps[-1] - steps[0])


def smooth(values: Sequence[float]) -> np.ndarray:
    """3-point moving average (2 points at the ends)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 3:
        return v.copy()
    out = np.convolve(v, np.ones(3) / 3, mode="same")
    out[0], out[-1] = v[:2].mean(), v[-2:].mean()
    return out


def steps_to_reach(curve: Sequence[tuple[int, float]], target: float) -> float | None:
    """First step at which the smoothed, linearly interpolated curve reaches ``target``; else None.

    >>> steps_to_reach([(0, 0.1), (10, 0.2), (20, 0.3)], 0.2)
    10.0
    """
    steps = np.array([s for s, _ in curve], dtype=np.float64)
    acc = smooth([a for _, a in curve])
    if acc[0] >= target:
        return float(steps[0])
    for i in range(1, steps.size):
        if acc[i] >= target:
            frac = (target - acc[i - 1]) / (acc[i] - acc[i - 1])
            return float(steps[i - 1] + frac * (steps[i] - steps[i - 1]))
    return None


def verdict(
    interval: Interval, threshold: float, higher_is_claim: bool = True, margin: float = 0.0
) -> str:
    """Claim "value > threshold" (or "< threshold"): reproduced if the whole 95% interval is on the
    claim's side, not reproduced if it is wholly on the other side, else inconclusive.

    ``margin`` > 0 makes the claim "value > threshold + margin" (a claim of a large effect): an
    interval wholly below threshold + margin rules it out even if it lies above the threshold.
    """
    if math.isnan(interval.lo):
        return "inconclusive"
    lo, hi = (interval.lo, interval.hi) if higher_is_claim else (-interval.hi, -interval.lo)
    t = threshold if higher_is_claim else -threshold
    if lo > t + margin:
        return "reproduced"
    if hi <= t + margin:
        return "not reproduced"
    return "inconclusive"
