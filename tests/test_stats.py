"""experiments.stats against known values: t intervals (per arm and paired), the paired t-test, the sign-flip
test, the BCa check interval and the Holm and Benjamini-Hochberg adjustments (worked by hand here)."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from experiments import stats


def test_paired_t_test_matches_the_textbook_value():
  # d = 1..5: mean 3, sd sqrt(2.5), t = 4.2426 on 4 degrees of freedom -> two-sided p = 0.01324.
  assert stats.paired_t_p_value([1, 2, 3, 4, 5], [0] * 5) == pytest.approx(0.013236, abs=1e-5)
  assert stats.paired_t_p_value([2, 3, 4], [1, 2, 3]) == 0.0  # constant non-zero difference
  assert stats.paired_t_p_value([1, 2, 3], [1, 2, 3]) == 1.0
  assert np.isnan(stats.paired_t_p_value([1.0], [0.5]))


def test_paired_t_interval_is_scipys_ttest_rel_interval():
  rng = np.random.default_rng(4)
  a, b = rng.normal(0.85, 0.03, 7), rng.normal(0.83, 0.03, 7)
  for confidence in (0.95, stats.simultaneous_confidence(40)):
    expected = scipy_stats.ttest_rel(a, b).confidence_interval(confidence)
    mean, lower, upper = stats.paired_t_interval(a, b, confidence)
    assert mean == pytest.approx(np.mean(a - b)) and (lower, upper) == pytest.approx(tuple(expected), rel=1e-12)
  assert stats.paired_t_p_value(a, b) == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue, rel=1e-12)
  # A missing seed (NaN on either side) drops its pair only.
  a_missing, b_missing = a.copy(), b.copy()
  a_missing[2], b_missing[5] = np.nan, np.nan
  keep = [0, 1, 3, 4, 6]
  expected = scipy_stats.ttest_rel(a[keep], b[keep]).confidence_interval()
  assert stats.paired_t_interval(a_missing, b_missing)[1:] == pytest.approx(tuple(expected), rel=1e-12)
  # Bonferroni over 40 comparisons: wider than the single 95% interval.
  single = stats.paired_t_interval(a, b)
  simultaneous = stats.paired_t_interval(a, b, stats.simultaneous_confidence(40))
  assert stats.simultaneous_confidence(40) == pytest.approx(1 - 0.05 / 40)
  assert simultaneous[1] < single[1] < single[2] < simultaneous[2]
  assert np.isnan(stats.paired_t_interval([0.9], [0.8])[1:]).all()
  assert stats.paired_t_interval([0.75, 0.5], [0.5, 0.25]) == (0.25, 0.25, 0.25)  # no spread: the point
  with pytest.raises(ValueError, match="equal lengths"):
    stats.paired_t_interval([1, 2], [1])


def test_sign_flip_test_is_exact_for_small_samples():
  # All five differences positive: only the all-plus and all-minus patterns are as extreme -> 2/32.
  assert stats.sign_flip_p_value([1, 2, 3, 4, 5], [0] * 5) == pytest.approx(2 / 32)
  # d = (1, -1, 2), sum 2: the 8 signed sums are +-2, +-2, +-4, 0, 0 -> 6 of 8 reach |2|.
  assert stats.sign_flip_p_value([1, -1, 2], [0, 0, 0]) == pytest.approx(0.75)
  assert stats.sign_flip_p_value([0.3, -0.3], [0, 0]) == 1.0


def test_sign_flip_monte_carlo_agrees_with_exact():
  d = np.random.default_rng(0).normal(0.4, 1.0, 14)
  exact = stats.sign_flip_p_value(d, np.zeros_like(d))
  approx = stats.sign_flip_p_value(d, np.zeros_like(d), exact_max=4, resamples=200_000)
  assert approx == pytest.approx(exact, abs=0.005)


def test_t_interval_matches_known_quantile():
  mean, half = stats.mean_ci([1, 2, 3, 4, 5])
  # t(0.975, 4) = 2.776445; sd/sqrt(n) = sqrt(2.5/5).
  assert mean == 3.0 and half == pytest.approx(2.776445 * np.sqrt(0.5), rel=1e-6)
  assert np.isnan(stats.mean_ci([0.7])[1])
  assert stats.mean_ci([0.5, np.nan, 0.7])[0] == pytest.approx(0.6)  # a missing seed is skipped


def test_bounded_t_interval_is_scipys_t_interval_clipped_to_the_range():
  values = [0.81, 0.86, 0.9]
  expected = scipy_stats.t.interval(0.95, df=2, loc=np.mean(values), scale=scipy_stats.sem(values))
  mean, lower, upper = stats.mean_ci_bounded(values)
  assert mean == pytest.approx(np.mean(values)) and (lower, upper) == pytest.approx(expected, rel=1e-9)
  # Two seeds: t has 1 degree of freedom (t(.975) = 12.71), so the plain interval is .588 +- 4.93.
  assert stats.mean_ci([0.2, 0.976])[1] == pytest.approx(12.7062 * 0.388, rel=1e-4)
  assert stats.mean_ci_bounded([0.2, 0.976]) == pytest.approx((0.588, 0.0, 1.0))
  assert stats.mean_ci_bounded([0.97, 0.99, 0.999]) == pytest.approx((0.986333, 0.9494, 1.0), abs=1e-4)
  assert stats.mean_ci_bounded([0.1, 0.3], lower=-1, upper=1)[1:] == pytest.approx((-1.0, 1.0))
  assert np.isnan(stats.mean_ci_bounded([0.7])[1:]).all()


def test_bca_interval_covers_like_the_normal_interval_and_needs_ten_pairs():
  rng = np.random.default_rng(1)
  a, b = rng.normal(1.0, 2.0, 400), np.zeros(400)
  mean, lower, upper = stats.bca_interval(a, b, seed=3)
  se = a.std(ddof=1) / np.sqrt(a.size)
  assert mean == pytest.approx(a.mean())
  assert lower == pytest.approx(mean - 1.96 * se, abs=0.25 * se)
  assert upper == pytest.approx(mean + 1.96 * se, abs=0.25 * se)
  assert stats.bca_interval(a, b, seed=3) == (mean, lower, upper)  # a fixed generator: reproducible tables
  # Below MIN_BCA_PAIRS pairs the acceleration estimate is unreliable: no interval, the mean still.
  d = rng.normal(0.02, 0.01, stats.MIN_BCA_PAIRS)
  short = stats.bca_interval(d[:-1], np.zeros(d.size - 1))
  assert short[0] == pytest.approx(d[:-1].mean()) and np.isnan(short[1:]).all()
  assert np.isfinite(stats.bca_interval(d, np.zeros_like(d))[1:]).all()
  with pytest.raises(ValueError, match="equal lengths"):
    stats.bca_interval([1, 2], [1])


def test_holm_by_hand():
  # p = .01, .04, .03, .005 (m = 4). Sorted: .005 * 4 = .02, .01 * 3 = .03, .03 * 2 = .06, .04 * 1 = .04;
  # step-down keeps them monotone, so the last becomes max(.06, .04) = .06.
  assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
  assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # .5 * 2 = 1, then max(1, .6): capped at 1
  # NaN (fewer than 2 seeds) is not in the family: m = 2 here.
  adjusted = stats.holm([0.01, np.nan, 0.04])
  assert adjusted[[0, 2]] == pytest.approx([0.02, 0.04]) and np.isnan(adjusted[1])
  assert stats.holm([]).size == 0


def test_benjamini_hochberg_by_hand_and_against_scipy():
  # m = 4, sorted .005, .01, .03, .04 -> p * 4 / rank = .02, .02, .04, .04 (already monotone).
  assert stats.benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
  # Step-up: .01 * 3 = .03 and .02 * 3 / 2 = .03 are lowered to the larger rank's .021.
  assert stats.benjamini_hochberg([0.01, 0.02, 0.021]) == pytest.approx([0.021, 0.021, 0.021])
  p = np.random.default_rng(2).uniform(0, 0.2, 12)
  assert stats.benjamini_hochberg(p) == pytest.approx(scipy_stats.false_discovery_control(p))
  with_nan = np.insert(p, [3, 7], np.nan)
  adjusted = stats.benjamini_hochberg(with_nan)
  assert np.isnan(adjusted[[3, 8]]).all()
  assert adjusted[np.isfinite(with_nan)] == pytest.approx(scipy_stats.false_discovery_control(p))
  assert stats.benjamini_hochberg([]).size == 0


def test_compare_paired_reports_t_primary_and_checks():
  a = np.array([0.86, 0.88, 0.84, 0.9, 0.87])
  b = np.array([0.84, 0.85, 0.84, 0.86, 0.85])
  out = stats.compare_paired(a, b, bounds=(-1, 1))
  mean, lower, upper = stats.paired_t_interval(a, b)
  assert (out["mean_difference"], out["ci_lower"], out["ci_upper"]) == pytest.approx((mean, lower, upper))
  assert out["p_value"] == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)
  assert out["p_value_signflip"] == pytest.approx(stats.sign_flip_p_value(a, b))
  assert out["n_pairs"] == 5 and np.isnan([out["bca_lower"], out["bca_upper"]]).all()  # 5 pairs: no BCa
  # Two seeds: t(.975, 1) = 12.7 reaches past the range of a difference, so the ends are clipped.
  wide = stats.compare_paired([0.2, 0.9], [0.5, 0.3], bounds=(-1, 1))
  assert (wide["ci_lower"], wide["ci_upper"]) == (-1, 1)
