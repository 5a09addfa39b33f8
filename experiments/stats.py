"""Statistics for multi-seed comparisons: t confidence intervals, paired bootstrap, paired tests.

Arms are compared pairwise *by seed*: a seed fixes the real training subset, the classifier's
initialisation and its data order, so `arm - none` per seed removes much of the seed noise (in the
committed `full` study the SD over seeds of `none`'s balanced accuracy at 25 detection images per
class is .038, the SD of the paired `classic - none` difference .021: experiments/results/README.md,
"Facts the design relies on").

* `mean_ci`: mean and the half-width of Student's t 95% interval over seeds.
* `mean_ci_bounded`: the same t interval with its ends clipped to the metric's range (e.g. [0, 1]
  for balanced accuracy or ROC-AUC): with few seeds the plain t interval of a proportion can reach
  past 0 or 1 (2 seeds: t has 1 degree of freedom, t(.975) = 12.7), and values outside the range
  cannot hold the true mean, so clipping keeps the t interval's coverage. A clipped interval is
  asymmetric: the tables show it as `mean [lower, upper]`.
* `paired_bootstrap_ci`: percentile bootstrap 95% interval of the mean paired difference
  (seeds resampled with replacement; a fixed generator seed, so tables are reproducible). Its ends
  are means of observed differences, so they stay inside the differences' range; `compare_paired`
  clips them to that range (e.g. [-1, 1]) all the same.
* `sign_flip_p_value`: two-sided paired permutation test of "mean difference = 0" - under the
  null each difference is equally likely positive or negative. Exact (all 2^n sign patterns)
  up to `exact_max` pairs, Monte Carlo beyond. Distribution-free, so it does not assume the
  (bounded, skewed) metric differences are normal.
* `paired_t_p_value`: the classic paired t-test, reported beside it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95


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


def _paired(a, b) -> np.ndarray:
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  if a.shape != b.shape:
    raise ValueError(f"paired samples need equal lengths, got {a.size} and {b.size}")
  d = a - b
  return d[np.isfinite(d)]


def paired_bootstrap_ci(
  a, b, *, confidence: float = CONFIDENCE, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
  """(mean of a - b, lower, upper) with a percentile bootstrap over pairs."""
  d = _paired(a, b)
  if d.size == 0:
    return float("nan"), float("nan"), float("nan")
  if d.size == 1:
    return float(d[0]), float("nan"), float("nan")
  rng = np.random.default_rng(seed)
  means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
  alpha = (1 - confidence) / 2
  lower, upper = np.quantile(means, [alpha, 1 - alpha])
  return float(d.mean()), float(lower), float(upper)


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


def paired_t_p_value(a, b) -> float:
  """Two-sided paired t-test p-value; NaN with fewer than 2 pairs, 1 when all differences are 0."""
  d = _paired(a, b)
  if d.size < 2:
    return float("nan")
  sd = d.std(ddof=1)
  if sd == 0:
    return 1.0 if d.mean() == 0 else 0.0
  t = d.mean() / (sd / math.sqrt(d.size))
  return float(2 * scipy_stats.t.sf(abs(t), df=d.size - 1))


def compare_paired(a, b, *, seed: int = 0, bounds: tuple[float, float] = (-math.inf, math.inf)) -> dict:
  """Everything the tables show for one paired comparison of arm `a` against baseline `b`; the
  interval is clipped to `bounds`, the range of a difference (e.g. [-1, 1] for metrics in [0, 1])."""
  mean, lower, upper = paired_bootstrap_ci(a, b, seed=seed)
  if math.isfinite(lower):
    lower, upper = max(lower, bounds[0]), min(upper, bounds[1])
  return {
    "n_pairs": int(_paired(a, b).size),
    "mean_difference": mean,
    "ci_lower": lower,
    "ci_upper": upper,
    "p_value": sign_flip_p_value(a, b, seed=seed),
    "p_value_t": paired_t_p_value(a, b),
  }
