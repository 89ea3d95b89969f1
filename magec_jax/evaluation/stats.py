"""Paired Student's t-test (the paper's significance test between inversion methods), the number of pairs it
needs for a given power, and Pearson's correlation, without scipy.

The two-sided p-value of ``t`` with ``df`` degrees of freedom is the regularised incomplete beta function
``I_x(df / 2, 1 / 2)`` at ``x = df / (df + t^2)``, evaluated by its continued fraction (modified Lentz), with
the symmetry ``I_x(a, b) = 1 - I_{1-x}(b, a)`` where the fraction converges slowly. Float64 throughout;
agrees with ``scipy.stats`` to about 1e-13 (checked in the tests).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

_TINY = 1e-300
_EPS = 1e-15


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of ``I_x(a, b)`` (converges fast for ``x < (a + 1) / (a + b + 2)``)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + num / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` for ``a, b > 0`` and ``0 <= x <= 1``."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"betainc needs a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def student_t_two_sided_p(t: float, df: float) -> float:
    """``P(|T| >= |t|)`` for Student's T with ``df`` degrees of freedom (0 for infinite ``t``)."""
    if math.isnan(t) or not df > 0:
        return math.nan
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def student_t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's T with ``df`` degrees of freedom, for ``0.5 <= q < 1``: the root of
    ``student_t_two_sided_p(t, df) = 2 (1 - q)``, bracketed by doubling and found by bisection to 1e-12."""
    if not (0.5 <= q < 1.0 and df > 0):
        raise ValueError(f"student_t_quantile needs 0.5 <= q < 1 and df > 0, got q={q}, df={df}")
    target, hi = 2.0 * (1.0 - q), 1.0
    while student_t_two_sided_p(hi, df) > target:
        hi *= 2.0
    lo = 0.0
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if student_t_two_sided_p(mid, df) > target else (lo, mid)
    return 0.5 * (lo + hi)


class TTest(NamedTuple):
    """A paired t-test of ``a - b``.

    Attributes:
      statistic: ``mean(d) / (std(d, ddof=1) / sqrt(n))``; ``±inf`` when every difference is the same
        non-zero value, NaN when there are none or all are zero (as scipy).
      p_value: two-sided.
      df: ``n - 1``.
      mean_difference: ``mean(a - b)``.
      n: number of pairs.
      ci_low, ci_high: the 95% confidence interval of the mean difference,
        ``mean(d) -/+ t_{0.975, n-1} std(d, ddof=1) / sqrt(n)`` (NaN for fewer than two pairs).
    """

    statistic: float
    p_value: float
    df: int
    mean_difference: float
    n: int
    ci_low: float = math.nan
    ci_high: float = math.nan


def paired_ttest(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> TTest:
    """Paired Student's t-test of two equally long samples (``scipy.stats.ttest_rel`` semantics, two-sided)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if d.ndim != 1:
        raise ValueError(f"paired samples must be 1-D and of equal length, got {np.shape(a)} and {np.shape(b)}")
    n = d.size
    if n < 2:
        return TTest(math.nan, math.nan, max(n - 1, 0), float(d.mean()) if n else math.nan, n)
    mean = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0.0:
        statistic = math.nan if mean == 0.0 else math.copysign(math.inf, mean)
    else:
        statistic = mean / se
    half = student_t_quantile(0.975, n - 1) * se
    return TTest(statistic, student_t_two_sided_p(statistic, n - 1), n - 1, mean, n, mean - half, mean + half)


def pairs_for_power(sd: float, difference: float, *, alpha: float = 0.05, power: float = 0.8,
                    max_pairs: int = 1_000_000) -> int:
    """The number of pairs a two-sided paired t-test at level ``alpha`` needs to detect a true mean difference
    ``difference`` with probability ``power``, when the differences have standard deviation ``sd``.

    The smallest ``n >= 2`` with ``|difference| sqrt(n) / sd >= t_{1-alpha/2, n-1} + t_{power, n-1}``: the usual
    central-t approximation of the noncentral-t power (within one pair of the exact answer for power >= 0.5;
    checked against ``scipy.stats.nct`` in the tests). Raises ``ValueError`` when ``max_pairs`` do not suffice.
    """
    if not (sd > 0 and math.isfinite(sd) and math.isfinite(difference) and difference != 0):
        raise ValueError(f"pairs_for_power needs a finite sd > 0 and difference != 0, got sd={sd}, "
                         f"difference={difference}")
    if not (0 < alpha < 1 and 0.5 <= power < 1):
        raise ValueError(f"pairs_for_power needs 0 < alpha < 1 and 0.5 <= power < 1, got {alpha}, {power}")
    effect = abs(difference) / sd

    def enough(n: int) -> bool:
        return effect * math.sqrt(n) >= student_t_quantile(1 - alpha / 2, n - 1) + student_t_quantile(power, n - 1)

    hi = 2
    while not enough(hi):
        if hi >= max_pairs:
            raise ValueError(f"more than {max_pairs} pairs needed for difference {difference} at sd {sd}")
        hi = min(2 * hi, max_pairs)
    lo = max(2, hi // 2)
    if enough(lo):
        return lo
    while hi - lo > 1:  # enough(hi) holds, enough(lo) does not
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi


def pearson(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Pearson's correlation of the pairs where both values are finite (NaN for fewer than three such pairs or
    a constant sample)."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"pearson needs two 1-D samples of equal length, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return math.nan
    x, y = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
    denominator = math.sqrt(float(np.sum(x * x)) * float(np.sum(y * y)))
    if denominator == 0.0:
        return math.nan
    return float(np.sum(x * y)) / denominator


def detectable_difference(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided paired t-test of ``n`` pairs at level ``alpha`` detects
    with probability ``power`` when the differences have standard deviation ``sd``:
    ``(t_{1-alpha/2, n-1} + t_{power, n-1}) sd / sqrt(n)`` (the approximation of :func:`pairs_for_power`).
    NaN for fewer than two pairs or a non-finite ``sd``. A non-significant test says little about differences
    below this size."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    if not (0 < alpha < 1 and 0.5 <= power < 1):
        raise ValueError(f"detectable_difference needs 0 < alpha < 1 and 0.5 <= power < 1, got {alpha}, {power}")
    return (student_t_quantile(1 - alpha / 2, n - 1) + student_t_quantile(power, n - 1)) * sd / math.sqrt(n)
