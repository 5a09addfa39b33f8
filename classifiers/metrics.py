"""Classification metrics computed on the host (pure numpy) from labels and predicted probabilities.

Conventions for this project:

* Labels are integer class indices. In the binary task 0 = ``with_mask`` and 1 = ``without_mask``.
  The *positive* class of binary precision / recall / F1 is ``without_mask`` (index 1, the case
  one wants to detect), so ``specificity`` is the recall of ``with_mask``.
* Binary predictions are ``p(class 1) >= threshold``; multi-class predictions are the argmax
  (ties -> lowest index) and the threshold is ignored.
* Undefined ratios (0/0: precision of a class never predicted, recall of a class absent from the
  labels, ...) are 0.0, like scikit-learn's ``zero_division=0``. No warnings are emitted.
* ``roc_auc`` is NaN when fewer than two classes occur in the labels.
* Thresholds are chosen on validation data with :func:`best_threshold`, then applied once to test.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np

LOG_LOSS_EPS = 1e-15  # probabilities are clipped to [eps, 1] before the log
PROB_TOLERANCE = 1e-6  # probabilities may stray this far outside [0, 1] (then are clipped)
THRESHOLD_METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "specificity", "npv", "f1", "macro_f1")


# ----------------------------------------------------------------------------- validation helpers


def _labels(labels, num_classes: int | None = None, name: str = "labels") -> np.ndarray:
  """1-D int64 class indices, checked to lie in [0, num_classes)."""
  y = np.asarray(labels)
  if y.ndim != 1:
    raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
  if y.dtype != bool and not np.issubdtype(y.dtype, np.integer):
    if not np.issubdtype(y.dtype, np.floating) or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
      raise ValueError(f"{name} must be integer class indices, got dtype {y.dtype}")
  y = y.astype(np.int64)
  if y.size and (y.min() < 0 or (num_classes is not None and y.max() >= num_classes)):
    bound = "non-negative" if num_classes is None else f"in [0, {num_classes})"
    raise ValueError(f"{name} must be {bound}, got values in [{y.min()}, {y.max()}]")
  return y


def _probabilities(probabilities, n: int) -> np.ndarray:
  """(n, C) float64 probabilities; a 1-D input is p(class 1) of a binary problem."""
  p = np.asarray(probabilities, dtype=np.float64)
  if p.ndim == 1:
    p = np.stack([1.0 - p, p], axis=1)
  if p.ndim != 2 or p.shape[1] < 2:
    raise ValueError(f"probabilities must have shape (N,) or (N, C) with C >= 2, got {p.shape}")
  if p.shape[0] != n:
    raise ValueError(f"probabilities have {p.shape[0]} rows but there are {n} labels")
  if not np.all(np.isfinite(p)):
    raise ValueError("probabilities must be finite (found NaN or inf)")
  if p.size and (p.min() < -PROB_TOLERANCE or p.max() > 1 + PROB_TOLERANCE):
    raise ValueError(f"probabilities must lie in [0, 1], got values in [{p.min()}, {p.max()}]")
  return np.clip(p, 0.0, 1.0)


def _safe_div(num, den) -> np.ndarray:
  """num / den, with 0.0 where den == 0 (no warnings)."""
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def _rates(tp, fp, fn, tn) -> dict[str, np.ndarray]:
  """Per-class (or per-threshold) ratios from the four counts; 0/0 -> 0.0."""
  return {
    "precision": _safe_div(tp, tp + fp),
    "recall": _safe_div(tp, tp + fn),
    "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
    "specificity": _safe_div(tn, tn + fp),
    "npv": _safe_div(tn, tn + fn),
  }


def _average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of x, tied values sharing their mean rank."""
  order = np.argsort(x, kind="mergesort")
  xs = x[order]
  starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
  ends = np.r_[starts[1:], x.size]
  ranks = np.empty(x.size)
  ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
  return ranks


def _auc(is_positive: np.ndarray, scores: np.ndarray) -> float:
  """Mann-Whitney AUC = P(score_pos > score_neg) + 0.5 P(tie); NaN if a class is missing."""
  n_pos = int(is_positive.sum())
  n_neg = is_positive.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  rank_sum = _average_ranks(scores)[is_positive].sum()
  return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# ----------------------------------------------------------------------------- public API


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
  """(num_classes, num_classes) int64 counts; rows = true class, columns = predicted class."""
  num_classes = operator.index(num_classes)
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  y = _labels(labels, num_classes)
  y_hat = _labels(predictions, num_classes, "predictions")
  if y.shape != y_hat.shape:
    raise ValueError(f"labels {y.shape} and predictions {y_hat.shape} differ in length")
  counts = np.bincount(y * num_classes + y_hat, minlength=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes).astype(np.int64)


def classification_metrics(
  labels,
  probabilities,
  *,
  threshold: float = 0.5,
  positive_class: int | None = None,
  class_names: Sequence[str] | None = None,
) -> dict:
  """Metrics of predicted probabilities (N, C) (binary: also (N,) = p(class 1)) against labels.

  Headline ``precision``/``recall``/``specificity``/``npv``/``f1``/``roc_auc`` refer to
  ``positive_class`` (one-vs-rest); it defaults to 1 (``without_mask``) for binary problems and
  to None (= macro average over all C classes; roc_auc over the classes present) otherwise.
  ``balanced_accuracy`` is the mean recall over the classes present in ``labels``; ``macro_*``
  average over all C classes. Binary roc_auc uses p(class 1) for either positive class (it is
  symmetric). Returns plain Python types; roc_auc is NaN with fewer than 2 classes present.
  """
  y = _labels(labels)
  if y.size == 0:
    raise ValueError("classification_metrics needs at least one example, got empty labels")
  p = _probabilities(probabilities, y.size)
  n, c = p.shape
  y = _labels(y, c)
  names = [str(k) for k in range(c)] if class_names is None else [str(s) for s in class_names]
  if len(names) != c or len(set(names)) != c:
    raise ValueError(f"class_names must be {c} distinct names, got {class_names!r}")

  if c == 2:
    threshold = float(threshold)
    if not np.isfinite(threshold):
      raise ValueError(f"threshold must be finite, got {threshold}")
    pred = (p[:, 1] >= threshold).astype(np.int64)
    positive_class = 1 if positive_class is None else positive_class
  else:
    pred, threshold = np.argmax(p, axis=1), None
  if positive_class is not None:
    positive_class = operator.index(positive_class)
    if not 0 <= positive_class < c:
      raise ValueError(f"positive_class must lie in [0, {c}), got {positive_class}")

  cm = confusion_matrix(y, pred, c)
  support = cm.sum(axis=1)
  tp = np.diag(cm)
  fp, fn = cm.sum(axis=0) - tp, support - tp
  rates = _rates(tp, fp, fn, n - tp - fp - fn)
  if c == 2:
    auc = np.full(2, _auc(y == 1, p[:, 1]))
  else:
    auc = np.array([_auc(y == k, p[:, k]) for k in range(c)])
  present = support > 0
  macro_auc = float(np.mean(auc[present])) if present.sum() >= 2 else float("nan")

  def headline(key: str) -> float:
    values = rates[key]
    return float(np.mean(values) if positive_class is None else values[positive_class])

  return {
    "n": int(n),
    "num_classes": int(c),
    "threshold": threshold,
    "positive_class": positive_class,
    "accuracy": float(np.mean(pred == y)),
    "balanced_accuracy": float(np.mean(rates["recall"][present])),
    **{key: headline(key) for key in ("precision", "recall", "specificity", "npv", "f1")},
    "macro_precision": float(np.mean(rates["precision"])),
    "macro_recall": float(np.mean(rates["recall"])),
    "macro_f1": float(np.mean(rates["f1"])),
    "roc_auc": macro_auc if positive_class is None else float(auc[positive_class]),
    "log_loss": float(-np.mean(np.log(np.clip(p[np.arange(n), y], LOG_LOSS_EPS, 1.0)))),
    "support": {name: int(s) for name, s in zip(names, support)},
    "per_class": {
      name: {**{key: float(rates[key][k]) for key in rates}, "support": int(support[k]), "roc_auc": float(auc[k])}
      for k, name in enumerate(names)
    },
    "confusion_matrix": cm.tolist(),
  }


def best_threshold(labels, prob_positive, metric: str = "balanced_accuracy") -> tuple[float, float]:
  """Decision threshold on p(class 1) maximising a binary ``metric``; returns (threshold, value).

  Candidates are the midpoints between consecutive distinct probabilities plus one cut below
  all of them (everything positive) and one above (everything negative), halfway to 0 and 1.
  Metric values agree with :func:`classification_metrics` (positive class 1). Ties (within 1e-12)
  go to the threshold closest to 0.5, then to the smaller one.
  """
  if metric not in THRESHOLD_METRICS:
    raise ValueError(f"metric must be one of {THRESHOLD_METRICS}, got {metric!r}")
  y = _labels(labels, 2)
  if y.size == 0:
    raise ValueError("best_threshold needs at least one example, got empty labels")
  p = _probabilities(prob_positive, y.size)
  if p.shape[1] != 2:
    raise ValueError(f"best_threshold is binary: prob_positive must be (N,) or (N, 2), got {p.shape}")
  s = p[:, 1]
  u = np.unique(s)
  mids = u[:-1] + np.diff(u) / 2.0
  mids = np.where(mids > u[:-1], mids, u[1:])  # adjacent floats: the midpoint may round down
  hi = (u[-1] + 1.0) / 2.0
  hi = hi if hi > u[-1] else np.nextafter(u[-1], np.inf)
  t = np.concatenate([[u[0] / 2.0], mids, [hi]])

  pos, neg = np.sort(s[y == 1]), np.sort(s[y == 0])
  tp = pos.size - np.searchsorted(pos, t, side="left")  # positives with s >= t
  fp = neg.size - np.searchsorted(neg, t, side="left")
  fn, tn = pos.size - tp, neg.size - fp
  r1, r0 = _rates(tp, fp, fn, tn), _rates(tn, fn, fp, tp)  # class 1 / class 0 as positive
  present = [r for r, size in ((r1, pos.size), (r0, neg.size)) if size > 0]
  values = {
    **r1,
    "accuracy": (tp + tn) / y.size,
    "macro_f1": (r1["f1"] + r0["f1"]) / 2.0,
    "balanced_accuracy": np.mean([r["recall"] for r in present], axis=0),
  }[metric]
  tied = np.flatnonzero(values >= values.max() - 1e-12)
  best = tied[np.argmin(np.abs(t[tied] - 0.5))]  # argmin: first = smallest t among equal distances
  return float(t[best]), float(values[best])


def roc_curve(labels, prob_positive) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """ROC points (fpr, tpr, thresholds) for binary labels (class 1 positive) and scores.

  Point i predicts positive for ``score >= thresholds[i]`` (thresholds decrease; the first is
  +inf, giving (0, 0)). Tied scores give one diagonal step, so the trapezoid area equals the
  Mann-Whitney ``roc_auc``. Scores may be any finite reals. Needs both classes in ``labels``.
  """
  y = _labels(labels, 2)
  s = np.asarray(prob_positive, dtype=np.float64)
  if s.shape != y.shape:
    raise ValueError(f"prob_positive must have shape {y.shape} (like labels), got {s.shape}")
  if not np.all(np.isfinite(s)):
    raise ValueError("prob_positive must be finite (found NaN or inf)")
  n_pos = int(y.sum())
  if n_pos == 0 or n_pos == y.size:
    raise ValueError("roc_curve needs both classes (0 and 1) in labels")
  order = np.argsort(-s, kind="mergesort")
  s_desc, y_desc = s[order], y[order]
  last = np.r_[np.flatnonzero(np.diff(s_desc)), y.size - 1]  # last index of each distinct score
  tps = np.cumsum(y_desc)[last]
  fps = last + 1 - tps
  return (np.r_[0.0, fps / (y.size - n_pos)], np.r_[0.0, tps / n_pos], np.r_[np.inf, s_desc[last]])
