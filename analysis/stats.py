"""Intervals, two-sample comparisons and the verdict sentence every report prints. No torch, no Ray.

Callers pass values in the unit they print (usually percent), so every number here is in that unit. A
statistic that needs more observations than there are is NaN rather than an error: reports then print
"undecided" or "-" instead of failing on a study with one seed or one trial.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05  # significance level of every verdict
Z95 = 1.96  # the normal quantile the Welch intervals have always been printed with


@dataclasses.dataclass(frozen=True)
class Interval:
    """Mean and its t confidence interval lo..hi = mean -+ half over n observations (NaN values dropped)."""

    mean: float
    lo: float
    hi: float
    half: float
    n: int


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Mean difference a - b with its confidence interval diff -+ half and the test's p-value.

    n: pairs for `paired`, observations in both samples together for `welch`.
    """

    diff: float
    lo: float
    hi: float
    half: float
    p: float
    n: int


def _clean(values: Iterable[float] | pd.Series | np.ndarray) -> pd.Series:
    return pd.Series(values, dtype=float).dropna().reset_index(drop=True)


def _t_half(values: pd.Series, confidence: float) -> float:
    """Half-width of the t interval of the mean (needs two or more values)."""
    n = len(values)
    return float(stats.t.ppf((1 + confidence) / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))


def t_interval(values: Iterable[float] | pd.Series | np.ndarray, confidence: float = 0.95) -> Interval:
    """The t interval of the mean; for fewer than two values, lo, hi and half are NaN (mean too, for none)."""
    v = _clean(values)
    mean = float(v.mean()) if len(v) else math.nan
    if len(v) < 2:
        return Interval(mean, math.nan, math.nan, math.nan, len(v))
    half = _t_half(v, confidence)
    return Interval(mean, mean - half, mean + half, half, len(v))


def paired(a: Iterable[float] | pd.Series | np.ndarray, b: Iterable[float] | pd.Series | np.ndarray, *,
           scale: float = 1.0, confidence: float = 0.95) -> Comparison:
    """Mean of scale * (a - b) over the pairs where both are present, its t interval and the paired t-test p.

    `a` and `b` are aligned (pair i is a[i], b[i]); `scale` converts the differences to the printed unit
    (100 for percentage points of accuracies in [0, 1]). With identical differences the t-test is undefined:
    p is then 0 for a non-zero difference and 1 for none.
    """
    pairs = pd.DataFrame({"a": pd.Series(a, dtype=float).to_numpy(),
                          "b": pd.Series(b, dtype=float).to_numpy()}).dropna()
    d = scale * (pairs["a"] - pairs["b"])
    interval = t_interval(d, confidence)
    if interval.n < 2:
        return Comparison(interval.mean, math.nan, math.nan, math.nan, math.nan, interval.n)
    if d.std(ddof=1) > 0:
        p = float(stats.ttest_rel(pairs["a"], pairs["b"]).pvalue)
    else:
        p = 0.0 if interval.mean != 0 else 1.0
    return Comparison(interval.mean, interval.lo, interval.hi, interval.half, p, interval.n)


def welch(a: Iterable[float] | pd.Series | np.ndarray, b: Iterable[float] | pd.Series | np.ndarray,
          z: float = Z95) -> Comparison:
    """Difference of means a - b of two independent samples: normal-approximation interval diff -+ z * se
    (Welch's standard error) and Welch's t-test p. The interval and p are NaN unless both samples have two or
    more values; the difference is NaN unless both have one."""
    va, vb = _clean(a), _clean(b)
    diff = float(va.mean() - vb.mean()) if len(va) and len(vb) else math.nan
    if len(va) < 2 or len(vb) < 2:
        return Comparison(diff, math.nan, math.nan, math.nan, math.nan, len(va) + len(vb))
    se = math.sqrt(va.var(ddof=1) / len(va) + vb.var(ddof=1) / len(vb))
    p = float(stats.ttest_ind(va, vb, equal_var=False).pvalue)
    return Comparison(diff, diff - z * se, diff + z * se, z * se, p, len(va) + len(vb))


def per_sample(a: Iterable[float] | np.ndarray, b: Iterable[float] | np.ndarray, *, scale: float = 100.0,
               confidence: float = 0.95) -> tuple[Comparison, str]:
    """Two models scored on the same samples (per-sample scores in [0, 1], aligned): mean of scale * (a - b),
    its interval and p, and the test's name.

    Binary scores (correct or not): McNemar's exact test on the discordant pairs, and the Agresti-Min interval
    for a difference of matched proportions (Wald after adding 1/2 to each cell; sensible at 0 and n). Scores
    in between (e.g. the fraction of an eps grid a sample survives): the paired t-test over samples.
    """
    x, y = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"per-sample scores must be aligned: {x.shape} vs {y.shape}")
    n = x.size
    if n == 0:
        return Comparison(math.nan, math.nan, math.nan, math.nan, math.nan, 0), "no samples"
    if not np.isin(np.concatenate([x, y]), (0.0, 1.0)).all():
        return paired(x, y, scale=scale, confidence=confidence), "paired t over samples"
    only_a = int(((x == 1) & (y == 0)).sum())
    only_b = int(((x == 0) & (y == 1)).sum())
    p = float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0
    ba, bb, m = only_a + 0.5, only_b + 0.5, n + 2
    centre = (ba - bb) / m
    half = float(stats.norm.ppf((1 + confidence) / 2)) * math.sqrt((ba + bb) - (ba - bb) ** 2 / m) / m
    diff = (only_a - only_b) / n
    return (Comparison(scale * diff, scale * max(centre - half, -1.0), scale * min(centre + half, 1.0), scale * half, p, n),
            "McNemar exact")


def verdict(diff: float, p: float, alpha: float = ALPHA) -> str:
    """Does a beat b? "yes" / "no" when the test is significant, "not significantly" otherwise."""
    if p < alpha and diff > 0:
        return "yes"
    if p < alpha and diff < 0:
        return "no"
    return "not significantly"


def verdict_sentence(claim: str, comparison: Comparison, detail: str, p_label: str = "p",
                     unit: str = "seed") -> str:
    """'<claim>: <verdict>, +d pt [lo, hi], <p_label>=p (<detail>).' for a comparison in percentage points;
    with fewer than two observations (in `unit`s) no test is possible and the claim is "undecided"."""
    c = comparison
    if c.n < 2:
        return (f"{claim}: undecided (n={c.n} {unit}{'s' if c.n != 1 else ''}; difference {c.diff:+.1f} pt, "
                "no test possible).")
    return (f"{claim}: {verdict(c.diff, c.p)}, {c.diff:+.1f} pt [{c.lo:+.1f}, {c.hi:+.1f}], "
            f"{p_label}={c.p:.2g} ({detail}).")
