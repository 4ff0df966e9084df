"""banacli.stats: the t distribution against closed forms and tables, paired verdicts by hand."""

import math

import pytest

from banacli.stats import paired_comparison, pearson, regularized_incomplete_beta, t_cdf, t_quantile


@pytest.mark.parametrize("t", [-7.0, -1.3, -0.2, 0.0, 0.4, 1.0, 2.245, 9.5])
def test_t_cdf_matches_the_closed_forms_for_one_and_two_degrees_of_freedom(t):
    # df = 1 is the Cauchy distribution; df = 2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_t_cdf_large_df_tends_to_the_normal():
    phi = 0.5 * (1 + math.erf(1.5 / math.sqrt(2)))
    assert t_cdf(1.5, 1e6) == pytest.approx(phi, abs=1e-6)


@pytest.mark.parametrize("df, crit", [(1, 6.3138), (2, 2.9200), (4, 2.1318), (7, 1.8946), (10, 1.8125), (30, 1.6973)])
def test_t_quantile_reproduces_the_printed_table_of_one_sided_5_percent_points(df, crit):
    assert t_quantile(0.95, df) == pytest.approx(crit, abs=5e-5)
    assert t_quantile(0.05, df) == pytest.approx(-crit, abs=5e-5)


def test_incomplete_beta_symmetric_and_uniform_cases():
    # I_x(1, 1) = x; I_x(a, b) = 1 - I_{1-x}(b, a); I_x(2, 1) = x^2
    assert regularized_incomplete_beta(1, 1, 0.3) == pytest.approx(0.3, abs=1e-14)
    assert regularized_incomplete_beta(2, 1, 0.7) == pytest.approx(0.49, abs=1e-14)
    assert regularized_incomplete_beta(2.5, 0.5, 0.8) == pytest.approx(1 - regularized_incomplete_beta(0.5, 2.5, 0.2),
                                                                       abs=1e-13)


def test_paired_comparison_by_hand_three_seeds():
    # the example: BAP Ycrf - w/o u0 per seed +4.6, +1.3, +1.4 (points)
    a, b = [74.6, 71.3, 66.4], [70.0, 70.0, 65.0]
    r = paired_comparison(a, b)
    mean = (4.6 + 1.3 + 1.4) / 3
    sd = math.sqrt(((4.6 - mean) ** 2 + (1.3 - mean) ** 2 + (1.4 - mean) ** 2) / 2)
    se = sd / math.sqrt(3)
    t = mean / se
    assert (r.n, r.df, r.positive, r.negative) == (3, 2, 3, 0)
    assert r.mean == pytest.approx(mean) and r.se == pytest.approx(se) and r.t == pytest.approx(t)
    p = 0.5 - t / (2 * math.sqrt(2 + t * t))  # df = 2 closed form: about 0.077
    assert r.p_greater == pytest.approx(p, abs=1e-12) and r.p_less == pytest.approx(1 - p, abs=1e-12)
    assert r.verdict == "not separable"  # 3 of 3 positive, but p > 0.05
    assert r.detectable == pytest.approx(2.919986 * se, rel=1e-5)


def test_verdicts_hold_do_not_hold_and_not_separable():
    hi = [0.80, 0.82, 0.81, 0.79, 0.83]
    lo = [0.70, 0.73, 0.70, 0.71, 0.72]
    assert paired_comparison(hi, lo).verdict == "holds"
    assert paired_comparison(lo, hi).verdict == "does not hold"
    assert paired_comparison(hi, hi).verdict == "not separable"  # d = 0 everywhere
    assert paired_comparison([0.9], [0.1]).verdict == "not separable"  # one seed: no spread
    same = paired_comparison([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])  # the same difference every seed
    assert same.verdict == "holds" and same.p_greater == 0.0 and same.detectable == 0.0


def test_pairing_separates_what_the_spread_of_the_seeds_hides():
    # seeds differ by ~10 points, the methods by ~1 point, always in the same direction
    b = [0.60, 0.70, 0.55, 0.75, 0.65, 0.58, 0.72, 0.68]
    a = [x + 0.01 + 0.002 * (k % 3) for k, x in enumerate(b)]
    r = paired_comparison(a, b)
    assert r.verdict == "holds" and r.positive == 8 and r.correlation > 0.99
    assert r.detectable < r.mean


def test_pearson():
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 2], [3, 4]))  # too few seeds
    assert math.isnan(pearson([1, 1, 1], [3, 4, 5]))  # no spread


def test_unequal_lengths_rejected():
    with pytest.raises(ValueError):
        paired_comparison([1.0, 2.0], [1.0])
