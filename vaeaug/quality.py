"""Offline generator-quality metrics (no internet, no Inception weights).

Pixel metrics: `mse`, `psnr`, `reconstruction_metrics`; likelihood: `bits_per_dim`.
Feature-space metrics take features computed by the caller, normally the penultimate layer of a
classifier trained on the *real* data (this package never imports `classifiers`; pass features,
or pass flattened pixels to get pixel-space values): `frechet_distance` (FID-like),
`knn_precision_recall` (Kynkaanniemi et al. 2019), `diversity`, and `feature_metrics`, which
computes all of them overall and per class.

CAS (classification accuracy score: train a classifier on synthetic data only, test on the real
test split) needs a classifier trainer, so it is computed in the experiments layer; its result
dict is stored in `QualityReport.cas`. `QualityReport` collects everything, with `to_json()` /
`from_json()` and `format_table()`.

Non-finite values (e.g. PSNR of identical images = inf) are written to JSON as the strings
"inf", "-inf", "nan" (strict JSON) and read back as floats by `QualityReport.from_json`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence

import numpy as np

_MAX_ELEMS = 1 << 22  # elements of one pairwise-distance chunk (32 MiB in float64)


# ----------------------------------------------------------------------------- pixels


def _as_unit_float(x) -> np.ndarray:
  """uint8 -> float64 / 255; floats as is (assumed in [0, 1]); other integer dtypes -> error."""
  x = np.asarray(x)
  if x.dtype == np.uint8:
    return x.astype(np.float64) / 255.0
  if np.issubdtype(x.dtype, np.floating):
    return x.astype(np.float64)
  raise TypeError(f"images must be uint8 (0..255) or float (0..1), got {x.dtype}")


def mse(a, b) -> np.ndarray:
  """Per-image mean squared error, shape (N,), of image batches (N, ...) on the [0, 1] scale.

  uint8 inputs are converted to [0, 1] (x / 255) before subtracting (no uint8 wrap-around);
  a uint8 batch may be compared with a float one.
  """
  a, b = _as_unit_float(a), _as_unit_float(b)
  if a.shape != b.shape or a.ndim < 1:
    raise ValueError(f"shapes differ or are scalar: {a.shape} vs {b.shape}")
  return np.mean((a - b).reshape(len(a), -1) ** 2, axis=1)


def psnr(a, b, max_value: float = 1.0) -> np.ndarray:
  """Per-image PSNR in dB, shape (N,): 10 log10(max_value^2 / MSE); identical images -> inf.

  Inputs as in `mse` (uint8 is rescaled to [0, 1], so keep max_value=1.0 for uint8).
  """
  err = mse(a, b)
  with np.errstate(divide="ignore"):
    return 10.0 * np.log10(max_value**2 / err)


def mean_psnr(values) -> float:
  """Mean of the finite per-image PSNRs; inf when every image is reproduced exactly."""
  values = np.asarray(values, dtype=np.float64)
  finite = values[np.isfinite(values)]
  return float(finite.mean()) if finite.size else math.inf


def reconstruction_metrics(originals, reconstructions, max_value: float = 1.0) -> dict:
  """{"mse": mean MSE, "psnr": `mean_psnr`, "psnr_inf_count": images with PSNR inf, "n"}."""
  p = psnr(originals, reconstructions, max_value)
  return {
    "mse": float(mse(originals, reconstructions).mean()),
    "psnr": mean_psnr(p),
    "psnr_inf_count": int(np.isinf(p).sum()),
    "n": int(len(p)),
  }


def bits_per_dim(nll_nats_per_image, num_dims: int):
  """nll / (num_dims ln 2): negative log-likelihood (or negative ELBO) in bits per dimension.

  For a Bernoulli/BCE likelihood on [0, 1] pixels this is a cross-entropy, not a true discrete
  NLL of 8-bit images: compare values only between models using the same likelihood.
  """
  if num_dims <= 0:
    raise ValueError(f"num_dims must be positive, got {num_dims}")
  out = np.asarray(nll_nats_per_image, dtype=np.float64) / (num_dims * math.log(2.0))
  return float(out) if out.ndim == 0 else out


# ----------------------------------------------------------------------------- features


def _features(x, name: str = "features", min_rows: int = 1) -> np.ndarray:
  x = np.asarray(x, dtype=np.float64)
  x = x.reshape(len(x), -1) if x.ndim != 2 else x
  if len(x) < min_rows:
    raise ValueError(f"{name}: need at least {min_rows} samples, got {len(x)}")
  return x


def _row_chunks(n_rows: int, n_cols: int):
  step = max(1, _MAX_ELEMS // max(1, n_cols))
  for start in range(0, n_rows, step):
    yield start, min(n_rows, start + step)


def _sq_dists(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Squared Euclidean distances (len x, len y), clipped at 0 (inputs should be centred)."""
  d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
  return np.maximum(d, 0.0)


def frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b) -> float:
  """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}), clipped at 0.

  Tr((S_a S_b)^{1/2}) = sum of sqrt(eigenvalues) of the symmetric PSD matrix
  sqrt(S_a) S_b sqrt(S_a) (sqrt(S_a) by eigh, eigenvalues clipped at 0): no scipy needed.
  """
  mu_a, mu_b = np.atleast_1d(np.asarray(mu_a, np.float64)), np.atleast_1d(np.asarray(mu_b, np.float64))
  cov_a = np.atleast_2d(np.asarray(cov_a, np.float64))
  cov_b = np.atleast_2d(np.asarray(cov_b, np.float64))
  w, v = np.linalg.eigh((cov_a + cov_a.T) / 2)
  sqrt_a = (v * np.sqrt(np.maximum(w, 0.0))) @ v.T
  m = sqrt_a @ cov_b @ sqrt_a
  tr_sqrt = np.sqrt(np.maximum(np.linalg.eigvalsh((m + m.T) / 2), 0.0)).sum()
  value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_sqrt)
  return max(value, 0.0)


def frechet_distance(features_a, features_b) -> float:
  """Frechet distance between Gaussians fitted (mean, ddof=1 covariance, float64) to two sets.

  Small-sample warning: the covariance estimate is poor (and the value biased upwards) when the
  number of samples is not well above the feature dimension; compare values only at equal n.
  """
  a, b = _features(features_a, "features_a", 2), _features(features_b, "features_b", 2)
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"feature dims differ: {a.shape[1]} vs {b.shape[1]}")
  return frechet_distance_from_stats(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def _knn_sq_radii(x: np.ndarray, k: int) -> np.ndarray:
  """Squared distance of each row to its k-th nearest other row (self counted as 0th)."""
  out = np.empty(len(x))
  for i0, i1 in _row_chunks(len(x), len(x)):
    out[i0:i1] = np.partition(_sq_dists(x[i0:i1], x), k, axis=1)[:, k]
  return out


def _coverage(points: np.ndarray, centres: np.ndarray, sq_radii: np.ndarray) -> float:
  """Fraction of points inside at least one ball (centre, radius)."""
  inside = np.zeros(len(points), dtype=bool)
  for i0, i1 in _row_chunks(len(points), len(centres)):
    inside[i0:i1] = (_sq_dists(points[i0:i1], centres) <= sq_radii[None, :]).any(axis=1)
  return float(inside.mean())


def knn_precision_recall(real_features, fake_features, k: int = 3) -> dict:
  """Improved precision/recall (Kynkaanniemi et al. 2019) -> {"precision", "recall"}.

  Precision: fraction of fakes inside any real k-NN ball (radius = distance of a real to its
  k-th nearest other real); recall: fraction of reals inside any fake k-NN ball. Distances are
  float64 and computed in memory-bounded chunks. Needs more than k samples in each set.
  """
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
    raise ValueError(f"k must be a positive integer, got {k!r}")
  real = _features(real_features, "real_features", k + 1)
  fake = _features(fake_features, "fake_features", k + 1)
  if real.shape[1] != fake.shape[1]:
    raise ValueError(f"feature dims differ: {real.shape[1]} vs {fake.shape[1]}")
  centre = np.concatenate([real, fake]).mean(0)
  real, fake = real - centre, fake - centre
  return {
    "precision": _coverage(fake, real, _knn_sq_radii(real, k)),
    "recall": _coverage(real, fake, _knn_sq_radii(fake, k)),
  }


def _mean_pairwise_distance(x: np.ndarray) -> float:
  n = len(x)
  if n < 2:
    return math.nan
  x = x - x.mean(0)
  total = 0.0
  for i0, i1 in _row_chunks(n, n):
    d = np.sqrt(_sq_dists(x[i0:i1], x))
    d[np.arange(i1 - i0), np.arange(i0, i1)] = 0.0
    total += d.sum()
  return float(total / (n * (n - 1)))


def _labels(labels, n: int) -> np.ndarray:
  labels = np.asarray(labels)
  labels = labels.argmax(-1) if labels.ndim == 2 else labels  # one-hot accepted
  if labels.shape != (n,):
    raise ValueError(f"labels shape {labels.shape} does not match {n} samples")
  return labels.astype(np.int64)


def diversity(features, labels=None, class_names: Sequence[str] | None = None) -> dict:
  """Mean pairwise Euclidean distance -> {"overall": float, "per_class": {name: float}}.

  Measured in the space of `features` (a classifier's feature space, or pixel space if the
  caller passes pixels); nan for a class with fewer than 2 samples. A collapsed set gives 0.
  """
  x = _features(features)
  out = {"overall": _mean_pairwise_distance(x), "per_class": {}}
  if labels is not None:
    labels = _labels(labels, len(x))
    names = list(class_names) if class_names is not None else [str(c) for c in range(int(labels.max()) + 1)]
    out["per_class"] = {name: _mean_pairwise_distance(x[labels == c]) for c, name in enumerate(names)}
  return out


def feature_metrics(
  real_features, real_labels, fake_features, fake_labels, class_names: Sequence[str], k: int = 3
) -> dict:
  """Frechet distance, k-NN precision/recall (overall and per class) and diversity.

  Per-class Frechet and P/R are None unless both sets hold >= 2k+1 samples of the class.
  Compare "diversity" real vs fake per class to spot mode collapse (fake << real).
  """
  real, fake = _features(real_features), _features(fake_features)
  rl, fl = _labels(real_labels, len(real)), _labels(fake_labels, len(fake))
  names = list(class_names)
  min_n = 2 * k + 1
  per_class = {}
  for c, name in enumerate(names):
    r, f = real[rl == c], fake[fl == c]
    entry = {"n_real": int(len(r)), "n_fake": int(len(f)), "frechet_distance": None, "precision": None, "recall": None}
    if len(r) >= min_n and len(f) >= min_n:
      entry["frechet_distance"] = frechet_distance(r, f)
      entry.update(knn_precision_recall(r, f, k))
    per_class[name] = entry
  return {
    "frechet_distance": frechet_distance(real, fake),
    **knn_precision_recall(real, fake, k),
    "k": k,
    "counts": {"real": int(len(real)), "fake": int(len(fake))},
    "diversity": {"real": diversity(real, rl, names), "fake": diversity(fake, fl, names)},
    "per_class": per_class,
  }


# ----------------------------------------------------------------------------- report


def _encode(obj):
  if isinstance(obj, dict):
    return {str(key): _encode(value) for key, value in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_encode(value) for value in obj]
  if isinstance(obj, (np.integer,)):
    return int(obj)
  if isinstance(obj, (float, np.floating)):
    obj = float(obj)
    return obj if math.isfinite(obj) else str(obj)  # "inf", "-inf", "nan"
  return obj


def _decode(obj):
  if isinstance(obj, dict):
    return {key: _decode(value) for key, value in obj.items()}
  if isinstance(obj, list):
    return [_decode(value) for value in obj]
  return float(obj) if obj in ("inf", "-inf", "nan") else obj


def _fmt(x) -> str:
  if x is None:
    return "-"
  if isinstance(x, (float, np.floating)):
    return f"{float(x):.4f}"
  return str(x)


@dataclasses.dataclass
class QualityReport:
  """Every quality measure of one generator (None = not computed)."""

  name: str = ""
  reconstruction_mse: float | None = None
  reconstruction_psnr: float | None = None  # mean over finite per-image values (see mean_psnr)
  negative_elbo: float | None = None  # nats per image
  bits_per_dim: float | None = None
  cas: dict | None = None  # from the experiments layer, e.g. {"accuracy": ..., "macro_f1": ...}
  frechet_distance: float | None = None
  precision: float | None = None
  recall: float | None = None
  k: int | None = None
  diversity: dict | None = None  # {"real": diversity(...), "fake": diversity(...)}
  per_class: dict | None = None  # {class: {"n_real", "n_fake", "frechet_distance", ...}}
  counts: dict = dataclasses.field(default_factory=dict)
  extra: dict = dataclasses.field(default_factory=dict)

  @classmethod
  def build(
    cls,
    name: str = "",
    *,
    features: dict | None = None,
    reconstruction: dict | None = None,
    negative_elbo: float | None = None,
    num_dims: int | None = None,
    cas: dict | None = None,
    **extra,
  ) -> QualityReport:
    """From `feature_metrics(...)`, `reconstruction_metrics(...)` and -ELBO (nats/image)."""
    report = cls(name=name, cas=cas, extra=extra)
    if reconstruction is not None:
      report.reconstruction_mse = reconstruction["mse"]
      report.reconstruction_psnr = reconstruction["psnr"]
      report.counts["reconstruction"] = reconstruction.get("n")
    if negative_elbo is not None:
      report.negative_elbo = float(negative_elbo)
      if num_dims is not None:
        report.bits_per_dim = bits_per_dim(negative_elbo, num_dims)
    if features is not None:
      for key in ("frechet_distance", "precision", "recall", "k", "diversity", "per_class"):
        setattr(report, key, features[key])
      report.counts.update(features["counts"])
    return report

  def to_dict(self) -> dict:
    return _encode(dataclasses.asdict(self))

  def to_json(self, indent: int | None = 2) -> str:
    return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

  @classmethod
  def from_json(cls, text: str) -> QualityReport:
    return cls(**_decode(json.loads(text)))

  def format_table(self) -> str:
    """A readable multi-line text block for the terminal."""
    lines = [f"Quality report{': ' + self.name if self.name else ''}"]
    if self.reconstruction_mse is not None or self.reconstruction_psnr is not None:
      lines.append(f"  reconstruction  MSE {_fmt(self.reconstruction_mse)}  PSNR {_fmt(self.reconstruction_psnr)} dB")
    if self.negative_elbo is not None:
      lines.append(f"  likelihood      -ELBO {_fmt(self.negative_elbo)} nats/image  {_fmt(self.bits_per_dim)} bits/dim")
    if self.cas:
      scalars = {key: v for key, v in self.cas.items() if not isinstance(v, (dict, list))}
      lines.append("  CAS             " + "  ".join(f"{key} {_fmt(v)}" for key, v in scalars.items()))
    if self.frechet_distance is not None:
      lines.append(
        f"  features        Frechet {_fmt(self.frechet_distance)}  precision "
        f"{_fmt(self.precision)}  recall {_fmt(self.recall)}  (k={self.k})"
      )
    if self.diversity:
      lines.append(
        f"  diversity       real {_fmt(self.diversity['real']['overall'])}  "
        f"fake {_fmt(self.diversity['fake']['overall'])}"
      )
    if self.per_class:
      header = ("class", "n_real", "n_fake", "Frechet", "precision", "recall", "div_real", "div_fake")
      rows = []
      for name, entry in self.per_class.items():
        div = [(self.diversity or {}).get(s, {}).get("per_class", {}).get(name) for s in ("real", "fake")]
        rows.append(
          [name]
          + [_fmt(entry.get(key)) for key in ("n_real", "n_fake", "frechet_distance", "precision", "recall")]
          + [_fmt(d) for d in div]
        )
      widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
      for row in [header, *rows]:
        lines.append(
          "  " + "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        )
    if self.counts:
      lines.append("  counts          " + "  ".join(f"{key} {v}" for key, v in self.counts.items()))
    for key, value in self.extra.items():
      lines.append(f"  {key:<15} {_fmt(value)}")
    return "\n".join(lines)
