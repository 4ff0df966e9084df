"""Paired comparisons over seeds: is method A above method B?

Every method of one seed shares that seed's data set (and some share a classifier), so
results of two methods move together across seeds. The right unit is the per-seed difference
d_i = A_i - B_i, not the two spreads. For a claim "A > B" over n seeds:

- mean(d) and its standard error se = sd(d) / sqrt(n) (sample sd, ddof = 1);
- the sign count: how many d_i are > 0, < 0, = 0;
- the one-sided paired t-test: t = mean(d) / se with n - 1 degrees of freedom,
  p_greater = P(T >= t), p_less = P(T <= t) under H0: E[d] = 0;
- the verdict at level ``alpha``: **holds** when p_greater < alpha, **does not hold** when
  p_less < alpha (the opposite order is significant), **not separable** otherwise, and
  always with fewer than 2 seeds (no spread to judge by);
- the smallest detectable difference: t_{1-alpha, n-1} x se, the smallest mean difference
  that this run's spread of d would have called significant (a detection at 50 % power; a
  difference of that size is missed half of the time);
- the Pearson correlation of A and B over seeds: near 1 means the seeds move both methods
  alike and pairing removes most of the seed-to-seed spread; near 0 means each run's own
  noise dominates, and more seeds (or less training noise) are the only remedy.

The Student t CDF is computed here (scipy is not a dependency) from the regularised
incomplete beta function, F(t; v) = 1 - I_x(v/2, 1/2) / 2 for t >= 0 with x = v / (v + t^2),
evaluated with the Lentz continued fraction (Numerical Recipes, 3rd ed., sec. 6.4);
its quantile by bisection. Pure functions of lists of floats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

VERDICTS = ("holds", "does not hold", "not separable")

__all__ = ["VERDICTS", "PairedComparison", "paired_comparison", "t_cdf", "t_quantile", "pearson",
           "regularized_incomplete_beta"]


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz); converges fast for x < (a+1)/(a+b+2)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0):
        raise ValueError(f"need a, b > 0, got {a}, {b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"need 0 <= x <= 1, got {x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))  # P(T >= |t|)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (0 < p < 1), by bisection on :func:`t_cdf`."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation of two equally long sequences; NaN with < 3 values or no spread."""
    n = len(a)
    if n != len(b):
        raise ValueError(f"sequences of different lengths: {n} and {len(b)}")
    if n < 3:
        return math.nan
    ma, mb = math.fsum(a) / n, math.fsum(b) / n
    sab = math.fsum((x - ma) * (y - mb) for x, y in zip(a, b))
    saa = math.fsum((x - ma) ** 2 for x in a)
    sbb = math.fsum((y - mb) ** 2 for y in b)
    if saa == 0.0 or sbb == 0.0:
        return math.nan
    return sab / math.sqrt(saa * sbb)


@dataclass(frozen=True)
class PairedComparison:
    """The outcome of :func:`paired_comparison` (numbers in the units of the inputs)."""

    n: int
    mean: float  # mean(d)
    se: float  # standard error of mean(d); NaN with n < 2
    positive: int  # seeds with d > 0
    negative: int  # seeds with d < 0
    t: float
    df: int
    p_greater: float  # one-sided p of "A > B"
    p_less: float  # one-sided p of "A < B"
    alpha: float
    verdict: str
    detectable: float  # t_{1-alpha, n-1} x se; NaN with n < 2
    correlation: float  # Pearson r of A and B over the seeds

    def as_dict(self) -> dict:
        return asdict(self)


def paired_comparison(a: Sequence[float], b: Sequence[float], *, alpha: float = 0.05) -> PairedComparison:
    """The claim "A > B" over paired seeds (a[i], b[i]): see the module docstring."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    n = len(d)
    pos, neg = sum(x > 0 for x in d), sum(x < 0 for x in d)
    mean = math.fsum(d) / n if n else math.nan
    corr = pearson([float(x) for x in a], [float(y) for y in b]) if n >= 3 else math.nan
    if n < 2:
        return PairedComparison(n, mean, math.nan, pos, neg, math.nan, max(n - 1, 0), math.nan, math.nan,
                                alpha, "not separable", math.nan, corr)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (n - 1))
    se = sd / math.sqrt(n)
    df = n - 1
    if se == 0.0:  # every seed gave the same difference
        t = math.copysign(math.inf, mean) if mean != 0.0 else 0.0
    else:
        t = mean / se
    p_less, p_greater = t_cdf(t, df), t_cdf(-t, df)  # symmetric: each tail computed directly
    verdict = "holds" if p_greater < alpha else "does not hold" if p_less < alpha else "not separable"
    detectable = t_quantile(1.0 - alpha, df) * se
    return PairedComparison(n, mean, se, pos, neg, t, df, p_greater, p_less, alpha, verdict, detectable, corr)
