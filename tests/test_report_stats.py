"""Statistics over seeds: hand-computed values, scipy cross-checks, Monte Carlo power."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from hardseg.reports.stats import (
    MeanCI,
    PairedTest,
    mean_ci,
    min_detectable_difference,
    paired_power,
    paired_test,
    relative_robustness,
    seeds_needed,
)


# --- mean_ci -----------------------------------------------------------------


def test_mean_ci_hand_computed():
    # x = [1, 2, 3, 4]: mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5,
    # s = sqrt(5/3) = 1.2909944; t_{0.975,3} = 3.182446 (t table);
    # half-width = 3.182446 * 1.2909944 / sqrt(4) = 2.0542603 -> [0.4457397, 4.5542603].
    ci = mean_ci([1, 2, 3, 4])
    assert isinstance(ci, MeanCI) and ci.n == 4
    assert ci.mean == pytest.approx(2.5, abs=1e-12)
    assert ci.std == pytest.approx(math.sqrt(5 / 3), abs=1e-12)
    assert ci.std == pytest.approx(1.2909944, abs=1e-6)
    assert ci.half_width == pytest.approx(3.182446 * 1.2909944 / 2, abs=1e-6)
    assert ci.half_width == pytest.approx(2.0542603, abs=1e-6)
    assert ci.low == pytest.approx(0.4457397, abs=1e-6)
    assert ci.high == pytest.approx(4.5542603, abs=1e-6)


def test_mean_ci_confidence_widens_interval():
    assert mean_ci([1, 2, 3, 4], 0.99).half_width > mean_ci([1, 2, 3, 4], 0.90).half_width


def test_mean_ci_one_seed_has_no_interval():
    ci = mean_ci([0.71])
    assert ci == MeanCI(mean=0.71, low=None, high=None, half_width=None, n=1, std=None)


@pytest.mark.parametrize("bad", [[1.0, float("nan")], [float("inf"), 1.0]])
def test_mean_ci_rejects_nan_and_inf(bad):
    with pytest.raises(ValueError, match="NaN or inf"):
        mean_ci(bad)


def test_mean_ci_rejects_empty_and_bad_confidence():
    with pytest.raises(ValueError, match="empty"):
        mean_ci([])
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1, 2], confidence=1.0)


# --- paired_test -------------------------------------------------------------


def test_paired_test_hand_computed():
    # d = a - b = [0.02, 0.02, 0.01]; mean 0.05/3 = 0.0166667;
    # deviations [1/300, 1/300, -2/300] -> s^2 = (1 + 1 + 4)/300^2 / 2 = 1/30000,
    # s = 0.0057735; se = s/sqrt(3) = 1/300 = 0.0033333; t = 0.0166667/0.0033333 = 5.0, df 2.
    # For df = 2 the t CDF is closed-form: P(T > t) = 1/2 - t/(2 sqrt(2 + t^2)), so
    # p = 1 - 5/sqrt(27) = 0.0377496.
    r = paired_test([0.70, 0.72, 0.71], [0.68, 0.70, 0.70])
    assert isinstance(r, PairedTest) and r.n == 3 and r.alpha == 0.05
    assert r.delta_mean == pytest.approx(0.0166667, abs=1e-7)
    assert r.sd_diff == pytest.approx(0.0057735, abs=1e-7)
    assert r.t == pytest.approx(5.0, abs=1e-9)
    assert r.p_value == pytest.approx(1 - 5 / math.sqrt(27), abs=1e-9)
    assert r.p_value == pytest.approx(0.03775, abs=1e-5)
    assert r.significant
    # CI: 0.0166667 ± t_{0.975,2} (4.302653) * 0.0033333 = ± 0.0143422
    assert r.delta_ci_low == pytest.approx(0.0166667 - 4.302653 / 300, abs=1e-6)
    assert r.delta_ci_high == pytest.approx(0.0166667 + 4.302653 / 300, abs=1e-6)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([0.61, 0.64, 0.59, 0.66], [0.60, 0.60, 0.61, 0.62]),
        ([1.0, 2.0, 3.0, 4.0, 5.0], [1.5, 1.8, 3.9, 3.1, 5.5]),
        ([0.3, 0.2], [0.1, 0.25]),
    ],
)
def test_paired_test_matches_scipy_ttest_rel(a, b):
    r = paired_test(a, b)
    ref = stats.ttest_rel(a, b)
    assert r.t == pytest.approx(float(ref.statistic), rel=1e-10)
    assert r.p_value == pytest.approx(float(ref.pvalue), rel=1e-10)
    assert r.significant == (ref.pvalue < 0.05)
    assert r.delta_ci_low < r.delta_mean < r.delta_ci_high
    # The (1 - alpha) CI excludes 0 exactly when the test is significant at alpha.
    assert (r.delta_ci_low > 0 or r.delta_ci_high < 0) == r.significant


def test_paired_test_single_seed_is_not_a_test():
    r = paired_test([0.8], [0.7])
    assert r.delta_mean == pytest.approx(0.1)
    assert r.n == 1 and not r.significant
    assert r.p_value is None and r.t is None and r.delta_ci_low is None and r.delta_ci_high is None


def test_paired_test_zero_spread_edge_cases():
    same = paired_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same.p_value == 1.0 and same.t == 0.0 and not same.significant
    # 0.75 - 0.25 etc. are exact in binary floating point: identical non-zero differences.
    shifted = paired_test([1.0, 2.0, 3.0], [0.75, 1.75, 2.75])
    assert shifted.p_value == 0.0 and shifted.significant and shifted.t == math.inf
    assert shifted.delta_ci_low == shifted.delta_ci_high == 0.25
    assert paired_test([0.0, 1.0], [0.5, 1.5]).t == -math.inf


def test_paired_test_rejects_bad_input():
    with pytest.raises(ValueError, match="one value per seed"):
        paired_test([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        paired_test([1.0, float("nan")], [1.0, 2.0])


# --- power, MDD, seeds needed ----------------------------------------------


@pytest.mark.parametrize("n", [2, 5, 30])
def test_paired_power_at_zero_is_alpha(n):
    assert paired_power(0.0, 0.02, n) == pytest.approx(0.05, abs=1e-9)
    assert paired_power(0.0, 0.02, n, alpha=0.1) == pytest.approx(0.1, abs=1e-9)


def test_paired_power_increases_with_n_and_delta_and_is_symmetric():
    by_n = [paired_power(0.01, 0.01, n) for n in range(2, 15)]
    by_delta = [paired_power(d, 0.01, 5) for d in (0.002, 0.005, 0.01, 0.02, 0.04)]
    assert all(x < y for x, y in zip(by_n, by_n[1:]))
    assert all(x < y for x, y in zip(by_delta, by_delta[1:]))
    assert paired_power(-0.01, 0.01, 5) == paired_power(0.01, 0.01, 5)


def test_paired_power_matches_monte_carlo():
    delta, sd, n, sims = 0.01, 0.01, 5, 20000
    rng = np.random.default_rng(1234)
    d = rng.normal(delta, sd, size=(sims, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    rejected = np.mean(np.abs(t) > stats.t.ppf(0.975, n - 1))
    assert paired_power(delta, sd, n) == pytest.approx(rejected, abs=0.01)  # exact: 0.4014


def test_paired_power_of_differences_equal_but_for_rounding_is_one():
    # three seeds whose differences agree to 1e-16: scipy's noncentral t is NaN that far out
    d = np.array([0.03, 0.03, 0.03]) + np.array([0.0, 1e-17, -1e-17])
    assert paired_power(0.03, 3e-17, 3) == 1.0
    assert paired_power(0.03, float(d.std(ddof=1)) or 1e-17, 2, alpha=0.001) == 1.0


def test_paired_power_edge_cases():
    assert paired_power(0.01, 0.0, 3) == 1.0
    assert paired_power(0.0, 0.0, 3) == 0.0
    with pytest.raises(ValueError, match="at least 2 pairs"):
        paired_power(0.01, 0.01, 1)


def test_textbook_sample_size_effect_size_one():
    # Paired t-test, d = delta/sd = 1, alpha 0.05 two-sided, power 0.8: G*Power gives
    # n = 10 pairs (actual power 0.8031); 9 pairs give only 0.748.
    assert seeds_needed(1.0, 1.0) == 10
    assert paired_power(1.0, 1.0, 10) == pytest.approx(0.8031, abs=1e-4)
    assert paired_power(1.0, 1.0, 9) == pytest.approx(0.7480, abs=1e-4)


@pytest.mark.parametrize(("sd", "n"), [(0.01, 2), (0.01, 5), (0.03, 10)])
def test_mdd_and_seeds_needed_are_consistent(sd, n):
    mdd = min_detectable_difference(sd, n)
    assert mdd is not None and mdd > 0
    power = paired_power(mdd, sd, n)
    assert power == pytest.approx(0.8, abs=1e-4)
    # mdd is returned from the upper side of the bisection, so power(mdd) >= 0.8
    # at n, and power is strictly increasing in n, so n - 1 pairs fall short:
    # exactly n seeds are needed for mdd; a hair less needs one more seed.
    assert power >= 0.8
    assert seeds_needed(mdd, sd) == n
    assert seeds_needed(mdd * (1 - 1e-6), sd) == n + 1
    # The exact t-based MDD is larger than the normal approximation (z_.975 + z_.8) sd/sqrt(n).
    assert mdd > (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * sd / math.sqrt(n)


def test_mdd_and_seeds_needed_edge_cases():
    assert min_detectable_difference(0.01, 1) is None
    assert min_detectable_difference(0.0, 5) == 0.0
    assert seeds_needed(0.0, 0.01) is None
    assert seeds_needed(0.01, 0.0) == 2
    assert seeds_needed(1e-4, 1.0, max_n=50) is None
    with pytest.raises(ValueError, match="power must exceed alpha"):
        min_detectable_difference(0.01, 5, alpha=0.05, power=0.04)


# --- relative robustness -----------------------------------------------------


def test_relative_robustness():
    # (0.8/0.8 + 0.4/0.8) / 2 = (1.0 + 0.5) / 2 = 0.75
    assert relative_robustness(0.8, {1: 0.8, 2: 0.4}) == pytest.approx(0.75, abs=1e-12)
    with pytest.raises(ValueError, match="> 0"):
        relative_robustness(0.0, {1: 0.5})
    with pytest.raises(ValueError, match="at least one severity"):
        relative_robustness(0.8, {})
