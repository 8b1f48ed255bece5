"""Intervals, two-sample comparisons and the verdict sentence every report prints. No torch, no Ray.

Callers pass values in the unit they print (usually percent), so every number here is in that unit. A
statistic that needs more observations than there are is NaN rather than an error: reports then print
"undecided" or "-" instead of failing on a study with one seed or one trial. A comparison that cannot
support a verdict says why in `Comparison.refusal` (too few seeds, no variance, every model at 0 % or
100 %), and the sentence prints "undecided (<why>)" instead of "yes" or "no".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, stats

from trainables.intervals import wilson

__all__ = ["Comparison", "Interval", "paired", "per_sample", "seeds_x_images", "t_interval", "verdict",
           "verdict_sentence", "welch", "wilson"]

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

    n: pairs for `paired`, observations in both samples together for `welch`, seeds for `seeds_x_images`
    (which also sets `images`). refusal: why no verdict can be drawn ("" when one can); p is then NaN.
    """

    diff: float
    lo: float
    hi: float
    half: float
    p: float
    n: int
    refusal: str = ""
    test: str = ""
    images: int = 0


def _refused(diff: float, n: int, why: str, test: str, images: int = 0) -> Comparison:
    return Comparison(diff, math.nan, math.nan, math.nan, math.nan, n, why, test, images)


def _constant(values: np.ndarray) -> float | None:
    """The one value every observation takes, else None."""
    return float(values.flat[0]) if values.size and bool((values == values.flat[0]).all()) else None


def _every_model_scores(a: np.ndarray, b: np.ndarray, scale: float, unit: str) -> str:
    """The refusal for two samples that are one constant (every model at 0 %, say), else ""."""
    both = np.concatenate([a.ravel(), b.ravel()])
    value = _constant(both)
    if value is None:
        return ""
    shown = f"{scale * value:g} %" if scale == 100 else f"{value:g}"
    return f"every model scores {shown} on every {unit}"


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

    `a` and `b` are aligned (pair i is a[i], b[i], e.g. seed i); `scale` converts the differences to the
    printed unit (100 for percentage points of accuracies in [0, 1]). Refused: fewer than two pairs, and
    identical differences (the t-test has no variance to work with: two seeds that both gain +1.4 pt on 500
    images are not a certainty).
    """
    test = "paired t over seeds"
    pairs = pd.DataFrame({"a": pd.Series(a, dtype=float).to_numpy(),
                          "b": pd.Series(b, dtype=float).to_numpy()}).dropna()
    d = scale * (pairs["a"] - pairs["b"])
    interval = t_interval(d, confidence)
    if interval.n < 2:
        return _refused(interval.mean, interval.n, f"too few seeds (n={interval.n}) for a {test}", test)
    if not d.std(ddof=1) > 0:
        why = (_every_model_scores(pairs["a"].to_numpy(), pairs["b"].to_numpy(), scale, "seed")
               or f"every seed gives the same difference ({interval.mean:+.1f} pt): no variance to test")
        return _refused(interval.mean, interval.n, why, test)
    p = float(stats.ttest_rel(pairs["a"], pairs["b"]).pvalue)
    return Comparison(interval.mean, interval.lo, interval.hi, interval.half, p, interval.n, test=test)


def seeds_x_images(a: np.ndarray | Sequence[Sequence[float]], b: np.ndarray | Sequence[Sequence[float]], *,
                   scale: float = 100.0, confidence: float = 0.95) -> Comparison:
    """Two training recipes, each trained with S seeds and scored on the same N test images (every seed
    sees the same images): a[s, i], b[s, i] in [0, 1] (1 = image i right for seed s). Mean of scale * (a - b),
    an interval that sees both sources of noise, and its p.

    Why this test. The claim ("RMSProp beats Adam") is about recipes, so it must hold for new seeds and new
    images alike. Seen as a crossed random-effects design (seed x image), the mean difference D has
    Var(D) = Var(seed means) / S + s2_image / N. The first term is what a t-test over the S seed means
    estimates (S - 1 df); the second is the image sampling that every seed shares because every seed sees
    the same images, which a t-test over seeds cannot see (it is common to all seeds). Its moment estimate is
    s2_image = max(0, MS_image - MS_residual) / S, with N - 1 df. Each part gets its own t quantile and the
    two half-widths add in quadrature; p is the level at which that interval reaches zero.
    - A bootstrap over 2-5 seeds has a handful of distinct resamples and shrinks the seed variance by
      (S - 1) / S; McNemar pooled over seeds ignores the seed variance altogether; a Satterthwaite-pooled
      interval undercovers with 2 seeds (its seed term has 1 df), and so does flooring the seed term at the
      residual with the residual's df. In simulated seed x image outcomes (tests/test_stats.py) this interval
      covers the truth 95-98 % of the time for 2, 3 and 5 seeds, and calls identical recipes different in
      about 5 % of the draws or fewer.
    Refused: fewer than two seeds; seeds whose mean differences are all equal (the seed variance estimate is
    zero, and with few seeds and 0.2-point accuracy steps that is luck, not certainty: two seeds that both
    gained +1.4 pt once read "p=1.6e-16"); every outcome the same (every model at 0 % or 100 %).
    """
    test = "seeds x images"
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"outcomes must be aligned seeds x images arrays: {x.shape} vs {y.shape}")
    seeds, images = x.shape
    d = scale * (x - y)
    diff = float(d.mean()) if d.size else math.nan
    if seeds < 2 or images < 2:
        return _refused(diff, seeds, f"too few seeds (n={seeds}) to tell seed-to-seed variation from a difference"
                        if seeds < 2 else f"too few images ({images})", test, images)
    if why := _every_model_scores(x, y, scale, "image and seed"):
        return _refused(diff, seeds, why, test, images)
    seed_means, image_means = d.mean(1), d.mean(0)
    ms_seed = images * float(((seed_means - diff) ** 2).sum()) / (seeds - 1)
    ms_image = seeds * float(((image_means - diff) ** 2).sum()) / (images - 1)
    residual = d - seed_means[:, None] - image_means[None, :] + diff
    ms_residual = float((residual ** 2).sum()) / ((seeds - 1) * (images - 1))
    if ms_seed <= 1e-12 * max(ms_residual, 1.0):
        return _refused(diff, seeds, f"every seed gives the same difference ({diff:+.1f} pt): seed-to-seed "
                        f"variation cannot be estimated from {seeds} seeds", test, images)
    se_seed = math.sqrt(ms_seed / (seeds * images))
    se_image = math.sqrt(max(ms_image - ms_residual, 0.0) / (seeds * images))

    def half(level: float) -> float:
        q = (1 + level) / 2
        return math.hypot(float(stats.t.ppf(q, seeds - 1)) * se_seed, float(stats.t.ppf(q, images - 1)) * se_image)

    h = half(confidence)
    top = 1.0 - 1e-15  # p below 1e-15 is reported as 1e-15
    p = (1.0 if diff == 0 else 1e-15 if half(top) < abs(diff)
         else 1.0 - float(optimize.brentq(lambda level: half(level) - abs(diff), 0.0, top)))
    return Comparison(diff, diff - h, diff + h, h, p, seeds, test=test, images=images)


def welch(a: Iterable[float] | pd.Series | np.ndarray, b: Iterable[float] | pd.Series | np.ndarray,
          z: float = Z95) -> Comparison:
    """Difference of means a - b of two independent samples: normal-approximation interval diff -+ z * se
    (Welch's standard error) and Welch's t-test p. The interval and p are NaN unless both samples have two or
    more values; the difference is NaN unless both have one."""
    test = "Welch t"
    va, vb = _clean(a), _clean(b)
    diff = float(va.mean() - vb.mean()) if len(va) and len(vb) else math.nan
    n = len(va) + len(vb)
    if len(va) < 2 or len(vb) < 2:
        return _refused(diff, n, f"too few observations ({len(va)} vs {len(vb)}) for a {test}-test", test)
    se = math.sqrt(va.var(ddof=1) / len(va) + vb.var(ddof=1) / len(vb))
    if se == 0:
        why = _every_model_scores(va.to_numpy(), vb.to_numpy(), 1.0, "trial") or "no variance within either sample"
        return _refused(diff, n, why, test)
    p = float(stats.ttest_ind(va, vb, equal_var=False).pvalue)
    return Comparison(diff, diff - z * se, diff + z * se, z * se, p, n, test=test)


def per_sample(a: Iterable[float] | np.ndarray, b: Iterable[float] | np.ndarray, *, scale: float = 100.0,
               confidence: float = 0.95) -> Comparison:
    """Two models scored on the same samples (per-sample scores in [0, 1], aligned): mean of scale * (a - b),
    its interval and p, with the test's name in `test`.

    Binary scores (correct or not): McNemar's exact test on the discordant pairs, and the Agresti-Min interval
    for a difference of matched proportions (Wald after adding 1/2 to each cell; sensible at 0 and n). Scores
    in between (e.g. the fraction of an eps grid a sample survives): the paired t-test over samples. Refused:
    no samples, and every sample of both models at the same score (both at 0 %, say).
    """
    x, y = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"per-sample scores must be aligned: {x.shape} vs {y.shape}")
    n = x.size
    if n == 0:
        return _refused(math.nan, 0, "no samples", "no samples")
    if why := _every_model_scores(x, y, scale, "sample"):
        return _refused(0.0, n, why, "McNemar exact")
    if not np.isin(np.concatenate([x, y]), (0.0, 1.0)).all():
        return dataclasses.replace(paired(x, y, scale=scale, confidence=confidence), test="paired t over samples")
    only_a = int(((x == 1) & (y == 0)).sum())
    only_b = int(((x == 0) & (y == 1)).sum())
    p = float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0
    ba, bb, m = only_a + 0.5, only_b + 0.5, n + 2
    centre = (ba - bb) / m
    half = float(stats.norm.ppf((1 + confidence) / 2)) * math.sqrt((ba + bb) - (ba - bb) ** 2 / m) / m
    diff = (only_a - only_b) / n
    return Comparison(scale * diff, scale * max(centre - half, -1.0), scale * min(centre + half, 1.0), scale * half, p, n,
                      test="McNemar exact")


def verdict(diff: float, p: float, alpha: float = ALPHA) -> str:
    """Does a beat b? "yes" / "no" when the test is significant, "not significantly" otherwise (also for a
    refused comparison, whose p is NaN)."""
    if p < alpha and diff > 0:
        return "yes"
    if p < alpha and diff < 0:
        return "no"
    return "not significantly"


def verdict_sentence(claim: str, comparison: Comparison, detail: str, p_label: str = "p",
                     unit: str = "seed") -> str:
    """'<claim>: <verdict>, +d pt [lo, hi], <p_label>=p (<detail>).' for a comparison in percentage points;
    a refused comparison (too few observations, in `unit`s; no variance; every model at 0 %) is "undecided"
    with the reason."""
    c = comparison
    if c.refusal or c.n < 2:
        why = c.refusal or f"n={c.n} {unit}{'s' if c.n != 1 else ''}, no test possible"
        return f"{claim}: undecided ({why}; difference {c.diff:+.1f} pt)."
    return (f"{claim}: {verdict(c.diff, c.p)}, {c.diff:+.1f} pt [{c.lo:+.1f}, {c.hi:+.1f}], "
            f"{p_label}={c.p:.2g} ({detail}).")


def t_quantile(df: int, confidence: float = 0.95) -> float:
    """The two-sided t quantile of a `confidence` interval with `df` degrees of freedom."""
    return float(stats.t.ppf((1 + confidence) / 2, df))


def detectable_difference(images: int, disagreement: float, *, power: float = 0.8, alpha: float = ALPHA) -> float:
    """The smallest accuracy difference (points) that two models scored on the same `images` test images can be
    told apart by at the given power and two-sided level, from the binomial noise of the images alone: the
    difference of two paired proportions has variance disagreement / images (the fraction of images on which
    the models disagree). Seeds cannot shrink it when every seed scores the same images."""
    z = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))
    return 100 * z * math.sqrt(disagreement / images)
