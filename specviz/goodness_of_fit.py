"""Goodness of fit of observed counts to a known distribution, in pure Python (no scipy).

- `chi_square_statistic(counts, expected_probs, n)`: Pearson's chi-square and its degrees of freedom, with
  every cell whose expected count is below 5 pooled into one cell (so the chi-square approximation holds).
- `chi_square_p_value(statistic, df)`: P(X >= statistic) for X ~ chi-square(df), via the regularized upper
  incomplete gamma function Q(df/2, statistic/2) (`regularized_gamma_q`: a series below a + 1, a continued
  fraction above it, as in Numerical Recipes' gammq).
- `chi_square_critical(df, alpha)`: the upper alpha quantile (Wilson-Hilferty), for tests that only need a bound.
- `total_variation(p, q)`: half the L1 distance between two distributions given as dicts.
- `chi_square_test(counts, expected_probs, n)`: all of it at once, as a `ChiSquareTest`.

Example: a fair die rolled 60 times, every face 10 times, fits perfectly:

>>> test = chi_square_test({face: 10 for face in range(6)}, {face: 1 / 6 for face in range(6)}, 60)
>>> (test.statistic, test.df, round(test.p_value, 6))
(0.0, 5, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

MIN_EXPECTED = 5.0  # cells expecting fewer observations than this are pooled
_EPSILON = 1e-15  # relative accuracy of the series and the continued fraction
_MAX_ITERATIONS = 10_000
_TINY = 1e-300  # Lentz's guard against division by zero


def regularized_gamma_p(a: float, x: float) -> float:
    """P(a, x) = gamma(a, x) / Gamma(a), the regularized lower incomplete gamma function (a > 0, x >= 0).

    >>> round(regularized_gamma_p(1.0, 1.0), 12) == round(1 - math.exp(-1.0), 12)
    True
    """
    _check_gamma_args(a, x)
    if x == 0:
        return 0.0
    if math.isinf(x):
        return 1.0
    if x < a + 1.0:
        return _gamma_series(a, x)
    return 1.0 - _gamma_continued_fraction(a, x)


def regularized_gamma_q(a: float, x: float) -> float:
    """Q(a, x) = 1 - P(a, x), the regularized upper incomplete gamma function (a > 0, x >= 0).

    Computed directly (not as 1 - P) where it is small, so tail probabilities keep their relative accuracy.

    >>> round(regularized_gamma_q(1.0, 2.0), 12) == round(math.exp(-2.0), 12)
    True
    """
    _check_gamma_args(a, x)
    if x == 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    if x < a + 1.0:
        return 1.0 - _gamma_series(a, x)
    return _gamma_continued_fraction(a, x)


def _check_gamma_args(a: float, x: float) -> None:
    if not a > 0 or math.isnan(a) or math.isinf(a):
        raise ValueError(f"the shape a must be a positive finite number, got {a!r}")
    if not x >= 0:  # also refuses NaN
        raise ValueError(f"x must be >= 0, got {x!r}")


def _log_prefactor(a: float, x: float) -> float:
    """log(x^a e^-x / Gamma(a)), the factor both expansions share."""
    return a * math.log(x) - x - math.lgamma(a)


def _gamma_series(a: float, x: float) -> float:
    """P(a, x) by its power series: x^a e^-x / Gamma(a) * sum_n x^n / (a (a+1) ... (a+n)); converges fast for x < a + 1."""
    term = total = 1.0 / a
    denominator = a
    for _ in range(_MAX_ITERATIONS):
        denominator += 1.0
        term *= x / denominator
        total += term
        if abs(term) < abs(total) * _EPSILON:
            break
    return min(1.0, total * math.exp(_log_prefactor(a, x)))


def _gamma_continued_fraction(a: float, x: float) -> float:
    """Q(a, x) by its continued fraction (modified Lentz); converges fast for x >= a + 1."""
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITERATIONS):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPSILON:
            break
    return max(0.0, min(1.0, math.exp(_log_prefactor(a, x)) * h))


def chi_square_p_value(statistic: float, df: int) -> float:
    """P(X >= statistic) for X ~ chi-square(df): the p-value of Pearson's test.

    >>> round(chi_square_p_value(3.841458820694124, 1), 6)
    0.05
    """
    if not isinstance(df, int) or isinstance(df, bool) or df < 1:
        raise ValueError(f"degrees of freedom must be an integer >= 1, got {df!r}")
    if math.isnan(statistic):
        raise ValueError("the statistic is NaN")
    if statistic <= 0:
        return 1.0
    return regularized_gamma_q(df / 2.0, statistic / 2.0)


def chi_square_critical(df: int, alpha: float = 1e-3) -> float:
    """Upper alpha quantile of chi-square(df), Wilson-Hilferty approximation (alpha 1e-2, 1e-3 or 1e-4)."""
    z = {1e-2: 2.3263, 1e-3: 3.0902, 1e-4: 3.7190}[alpha]
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + z * math.sqrt(h)) ** 3


def chi_square_statistic(counts: Mapping[Hashable, int], expected_probs: Mapping[Hashable, float], n: int,
                         min_expected: float = MIN_EXPECTED) -> tuple[float, int]:
    """Pearson's chi-square of observed counts vs expected probabilities, and its degrees of freedom.

    Cells whose expected count is below min_expected are pooled into one cell (with every
    observation outside the support of expected_probs), so the chi-square approximation holds.
    `expected_probs` should cover the whole distribution (put the unlisted mass under a key of its own):
    the pooled cell expects only the mass it lists.
    """
    stat, cells = 0.0, 0
    pooled_expected, pooled_observed = 0.0, 0
    # 1. every listed cell: counted on its own when it expects enough, else pooled
    for key, prob in expected_probs.items():
        expected = n * prob
        observed = counts.get(key, 0)
        if expected >= min_expected:
            stat += (observed - expected) ** 2 / expected
            cells += 1
        else:
            pooled_expected += expected
            pooled_observed += observed
    # 2. observations the distribution cannot produce join the pooled cell
    pooled_observed += sum(c for key, c in counts.items() if key not in expected_probs)
    if pooled_expected > 0 or pooled_observed > 0:
        if pooled_expected <= 0:
            return math.inf, max(cells, 1)
        stat += (pooled_observed - pooled_expected) ** 2 / pooled_expected
        cells += 1
    return stat, max(cells - 1, 1)


def total_variation(p: Mapping[Hashable, float], q: Mapping[Hashable, float]) -> float:
    """Half the L1 distance: the largest difference in probability the two give any event (0 = identical, 1 = disjoint)."""
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


@dataclass(frozen=True)
class ChiSquareTest:
    """Pearson's goodness-of-fit test of n observations against a known distribution."""

    statistic: float
    df: int
    p_value: float
    n: int

    def rejects(self, alpha: float = 1e-3) -> bool:
        """True when the observations are this unlikely (p < alpha) under the distribution."""
        return self.p_value < alpha


def chi_square_test(counts: Mapping[Hashable, int], expected_probs: Mapping[Hashable, float], n: int,
                    min_expected: float = MIN_EXPECTED) -> ChiSquareTest:
    """`chi_square_statistic` and its p-value (an infinite statistic, an impossible observation: p = 0)."""
    stat, df = chi_square_statistic(counts, expected_probs, n, min_expected)
    p_value = 0.0 if math.isinf(stat) else chi_square_p_value(stat, df)
    return ChiSquareTest(stat, df, p_value, n)
