"""The Wilson score interval: the one interval of a proportion patchtune prints (the audit's rows and worst case,
the report's test-split accuracies). Light: scipy only, imported on first use."""

from __future__ import annotations


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (sensible at 0 % and 100 %); (0, 1) when n == 0."""
    if n == 0:
        return (0.0, 1.0)
    from scipy.stats import binomtest  # here: every trial actor imports the audit and never calls this

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return (max(0.0, float(ci.low)), min(1.0, float(ci.high)))
