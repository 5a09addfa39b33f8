"""Statistics for multi-seed comparisons: t intervals, paired t intervals and tests, multiplicity corrections.

Arms are compared pairwise *by seed*: a seed fixes the real training subset, the classifier's
initialisation and its data order, so `arm - baseline` per seed removes much of the seed noise (in the
committed `full` study the SD over seeds of `none`'s balanced accuracy at 25 detection images per
class is .038, the SD of the paired `classic - none` difference .021: experiments/results/README.md,
"Facts the design relies on").

**The primary interval and test are Student's t on the paired differences** (`paired_t_interval`,
`paired_t_p_value`: scipy.stats.ttest_rel). With the 5 to 10 seeds a sweep affords, the resampling
alternatives fail in known ways: a percentile bootstrap of the mean of 5 differences is over a third
too narrow (it uses the plug-in SD, divisor n rather than n - 1, and normal rather than t quantiles with 4
degrees of freedom: sqrt(4/5) * 1.96 / 2.776 = .63 of the t half-width), and the exact sign-flip
test cannot give a p-value below 2/2^n (.0625 with 5 seeds), whatever the effect. The t interval
assumes roughly normal differences; the two distribution-free numbers beside it are checks on that:

* `sign_flip_p_value`: two-sided paired permutation test of "mean difference = 0" (each difference
  equally likely positive or negative under the null). Exact (all 2^n sign patterns) up to `exact_max`
  pairs, Monte Carlo beyond.
* `bca_interval`: bias-corrected and accelerated bootstrap interval of the mean difference
  (scipy.stats.bootstrap, fixed generator seed so tables are reproducible); only with at least
  `MIN_BCA_PAIRS` pairs, NaN below, where its acceleration estimate is unreliable.

Several comparisons: `holm` (family-wise error, for the few primary comparisons declared up front)
and `benjamini_hochberg` (false discovery rate, for the many secondary ones) adjust p-values;
`simultaneous_confidence` gives the Bonferroni level 1 - alpha/m at which m t intervals hold together.

Per arm: `mean_ci` (mean and t half-width over seeds) and `mean_ci_bounded` (the same interval clipped
to the metric's range: with 2 seeds t(.975) = 12.7 and an interval of a proportion can reach past 0 or
1; values outside the range cannot hold the true mean, so clipping keeps its coverage).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
MIN_BCA_PAIRS = 10


def _finite(values) -> np.ndarray:
  values = np.asarray(values, np.float64).ravel()
  return values[np.isfinite(values)]


def mean_ci(values, confidence: float = CONFIDENCE) -> tuple[float, float]:
  """(mean, half-width of the t interval); half-width NaN with fewer than 2 finite values."""
  values = _finite(values)
  if values.size == 0:
    return float("nan"), float("nan")
  if values.size < 2:
    return float(values.mean()), float("nan")
  t = scipy_stats.t.ppf(0.5 + confidence / 2, df=values.size - 1)
  return float(values.mean()), float(t * values.std(ddof=1) / math.sqrt(values.size))


def mean_ci_bounded(
  values, lower: float = 0.0, upper: float = 1.0, confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
  """(mean, lower end, upper end) of `mean_ci`'s t interval clipped to [lower, upper]; ends NaN with
  fewer than 2 finite values."""
  mean, half = mean_ci(values, confidence)
  if not math.isfinite(half):
    return mean, float("nan"), float("nan")
  return mean, max(mean - half, lower), min(mean + half, upper)


def _pairs(a, b) -> tuple[np.ndarray, np.ndarray]:
  """The pairs of `a` and `b` where both are finite (a missing seed drops its pair)."""
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  if a.shape != b.shape:
    raise ValueError(f"paired samples need equal lengths, got {a.size} and {b.size}")
  keep = np.isfinite(a) & np.isfinite(b)
  return a[keep], b[keep]


def _paired(a, b) -> np.ndarray:
  a, b = _pairs(a, b)
  return a - b


def paired_t_interval(a, b, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
  """(mean of a - b, lower, upper) of Student's t interval on the paired differences; ends NaN with
  fewer than 2 pairs, both equal to the mean when every difference is the same."""
  a, b = _pairs(a, b)
  d = a - b
  if d.size == 0:
    return float("nan"), float("nan"), float("nan")
  mean = float(d.mean())
  if d.size < 2:
    return mean, float("nan"), float("nan")
  if np.ptp(d) == 0:  # no spread: scipy warns and may return NaN; the interval is the point
    return mean, mean, mean
  interval = scipy_stats.ttest_rel(a, b).confidence_interval(confidence)
  return mean, float(interval.low), float(interval.high)


def paired_t_p_value(a, b) -> float:
  """Two-sided paired t-test p-value; NaN with fewer than 2 pairs, 1 when all differences are 0 and
  0 when all are the same non-zero value."""
  a, b = _pairs(a, b)
  d = a - b
  if d.size < 2:
    return float("nan")
  if np.ptp(d) == 0:
    return 1.0 if d[0] == 0 else 0.0
  return float(scipy_stats.ttest_rel(a, b).pvalue)


def simultaneous_confidence(m: int, confidence: float = CONFIDENCE) -> float:
  """Bonferroni: the level of each of m intervals so that all m hold together with `confidence`."""
  return 1 - (1 - confidence) / max(m, 1)


def bca_interval(
  a, b, *, confidence: float = CONFIDENCE, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
  """(mean of a - b, lower, upper) of the BCa bootstrap over pairs; ends NaN with fewer than
  `MIN_BCA_PAIRS` pairs, both equal to the mean when every difference is the same."""
  d = _paired(a, b)
  if d.size == 0:
    return float("nan"), float("nan"), float("nan")
  mean = float(d.mean())
  if d.size < MIN_BCA_PAIRS:
    return mean, float("nan"), float("nan")
  if np.ptp(d) == 0:  # degenerate: BCa's acceleration is 0/0
    return mean, mean, mean
  result = scipy_stats.bootstrap(
    (d,), np.mean, method="BCa", confidence_level=confidence, n_resamples=resamples, rng=np.random.default_rng(seed)
  )
  return mean, float(result.confidence_interval.low), float(result.confidence_interval.high)


def sign_flip_p_value(a, b, *, exact_max: int = 16, resamples: int = 100_000, seed: int = 0) -> float:
  """Two-sided paired sign-flip permutation p-value for mean(a - b) = 0."""
  d = _paired(a, b)
  if d.size == 0:
    return float("nan")
  observed = abs(d.mean())
  if d.size <= exact_max:
    # Every sign pattern: rows of a (2^n, n) +-1 matrix.
    patterns = ((np.arange(2**d.size)[:, None] >> np.arange(d.size)) & 1) * 2 - 1
  else:
    patterns = np.random.default_rng(seed).choice((-1, 1), size=(resamples, d.size))
  null = np.abs((patterns * d).mean(axis=1))
  # Small tolerance: patterns equal to the observed mean up to rounding count as "as extreme".
  p = float(np.mean(null >= observed - 1e-12 * max(1.0, observed)))
  if d.size > exact_max:  # Monte Carlo: never report exactly zero
    p = (p * resamples + 1) / (resamples + 1)
  return p


def _adjust_finite(pvalues, adjust) -> np.ndarray:
  """`adjust` applied to the finite p-values only (the family is those); NaN stays NaN."""
  pvalues = np.asarray(pvalues, np.float64)
  out = np.full(pvalues.shape, np.nan)
  finite = np.isfinite(pvalues)
  if finite.any():
    out[finite] = adjust(pvalues[finite])
  return out


def _holm(p: np.ndarray) -> np.ndarray:
  order = np.argsort(p, kind="stable")
  m = p.size
  # The i-th smallest p times (m - i); the running maximum keeps the adjusted p-values in p's order.
  stepped = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
  out = np.empty(m)
  out[order] = stepped
  return out


def holm(pvalues) -> np.ndarray:
  """Holm's step-down adjusted p-values (family-wise error rate); NaN entries are not in the family."""
  return _adjust_finite(pvalues, _holm)


def benjamini_hochberg(pvalues) -> np.ndarray:
  """Benjamini-Hochberg adjusted p-values (q-values, false discovery rate); NaN entries are not in the family."""
  return _adjust_finite(pvalues, lambda p: scipy_stats.false_discovery_control(p, method="bh"))


def compare_paired(a, b, *, seed: int = 0, bounds: tuple[float, float] = (-math.inf, math.inf)) -> dict:
  """Everything the tables show for one paired comparison of arm `a` against baseline `b`: the t interval
  and t-test p (primary), the sign-flip p and BCa interval (checks). Intervals are clipped to `bounds`,
  the range of a difference (e.g. [-1, 1] for metrics in [0, 1])."""
  mean, lower, upper = paired_t_interval(a, b)
  _, bca_lower, bca_upper = bca_interval(a, b, seed=seed)

  def clip(lo: float, hi: float) -> tuple[float, float]:
    return (max(lo, bounds[0]), min(hi, bounds[1])) if math.isfinite(lo) else (lo, hi)

  lower, upper = clip(lower, upper)
  bca_lower, bca_upper = clip(bca_lower, bca_upper)
  return {
    "n_pairs": int(_paired(a, b).size),
    "mean_difference": mean,
    "ci_lower": lower,
    "ci_upper": upper,
    "p_value": paired_t_p_value(a, b),
    "p_value_signflip": sign_flip_p_value(a, b, seed=seed),
    "bca_lower": bca_lower,
    "bca_upper": bca_upper,
  }
