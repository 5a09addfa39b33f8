"""Tests of classifiers.metrics against hand-computed values on small explicit cases.

Binary convention: 0 = with_mask, 1 = without_mask; the positive class is 1.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from classifiers.metrics import THRESHOLD_METRICS, best_threshold, classification_metrics, confusion_matrix, roc_curve

pytestmark = pytest.mark.filterwarnings("error")  # degenerate cases must not warn

NAMES = ("with_mask", "without_mask")

# Main binary case. Predictions at 0.5: [0, 0, 0, 1, 0, 1, 1, 0]
#   TP = 2 (0.7, 0.8), FN = 1 (0.45), FP = 1 (0.6), TN = 4.
Y = [0, 0, 0, 0, 0, 1, 1, 1]
P1 = [0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.45]


def _close(a, b):
  assert a == pytest.approx(b, abs=1e-12), (a, b)


def _assert_plain(obj):
  """Only plain Python (JSON) types."""
  if isinstance(obj, dict):
    assert all(isinstance(k, str) for k in obj)
    for v in obj.values():
      _assert_plain(v)
  elif isinstance(obj, list):
    for v in obj:
      _assert_plain(v)
  else:
    assert obj is None or type(obj) in (int, float, str), type(obj)


def _random_binary(n=200, seed=0, decimals=None):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, n)
  p = np.clip(0.5 + 0.25 * (2 * y - 1) + 0.3 * rng.standard_normal(n), 0, 1)
  return y, (np.round(p, decimals) if decimals is not None else p)


# ----------------------------------------------------------------------------- confusion matrix


def test_confusion_matrix_hand_case():
  cm = confusion_matrix([0, 1, 2, 2, 1], [0, 2, 2, 1, 1], 3)
  assert cm.dtype == np.int64
  np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 1], [0, 1, 1]])
  np.testing.assert_array_equal(confusion_matrix([], [], 2), np.zeros((2, 2)))


# ----------------------------------------------------------------------------- binary metrics


def test_binary_hand_case():
  m = classification_metrics(Y, P1, class_names=NAMES)
  assert m["n"] == 8 and m["num_classes"] == 2 and m["threshold"] == 0.5
  assert m["positive_class"] == 1
  assert m["confusion_matrix"] == [[4, 1], [1, 2]]
  assert m["support"] == {"with_mask": 5, "without_mask": 3}
  _close(m["accuracy"], 6 / 8)  # TP + TN = 6 of 8
  _close(m["precision"], 2 / 3)  # TP=2, FP=1
  _close(m["recall"], 2 / 3)  # TP=2, FN=1
  _close(m["f1"], 2 / 3)  # 2TP / (2TP + FP + FN) = 4/6
  _close(m["specificity"], 4 / 5)  # TN=4, FP=1
  _close(m["npv"], 4 / 5)  # TN=4, FN=1
  _close(m["balanced_accuracy"], 11 / 15)  # (2/3 + 4/5) / 2
  # with_mask as positive: TP=4, FP=1, FN=1 -> P = R = F1 = 4/5
  wm = m["per_class"]["with_mask"]
  _close(wm["precision"], 4 / 5), _close(wm["recall"], 4 / 5), _close(wm["f1"], 4 / 5)
  _close(wm["specificity"], 2 / 3), _close(wm["npv"], 2 / 3)
  assert wm["support"] == 5 and m["per_class"]["without_mask"]["support"] == 3
  _close(m["macro_f1"], 11 / 15)  # (2/3 + 4/5) / 2
  _close(m["macro_precision"], 11 / 15)  # (2/3 + 4/5) / 2
  # AUC: 0.7 and 0.8 beat all 5 negatives, 0.45 beats 4 (not 0.6) -> 14/15
  _close(m["roc_auc"], 14 / 15)
  _close(wm["roc_auc"], 14 / 15)  # binary AUC is symmetric in the positive class
  p_true = [0.9, 0.8, 0.7, 0.4, 0.6, 0.7, 0.8, 0.45]
  _close(m["log_loss"], -np.mean(np.log(p_true)))
  _assert_plain(m)
  json.dumps(m)


def test_positive_class_zero_swaps_roles():
  m = classification_metrics(Y, P1, positive_class=0)
  _close(m["precision"], 4 / 5), _close(m["recall"], 4 / 5)
  _close(m["specificity"], 2 / 3)  # recall of class 1
  _close(m["npv"], 2 / 3)  # precision of class 1
  _close(m["roc_auc"], 14 / 15)


def test_perfect_prediction():
  m = classification_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
  for key in (
    "accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
    "specificity",
    "npv",
    "f1",
    "macro_f1",
    "roc_auc",
  ):
    _close(m[key], 1.0)
  assert m["confusion_matrix"] == [[2, 0], [0, 2]]


def test_all_wrong():
  # TP=0, FP=2, FN=2, TN=0: every ratio is 0 (defined denominators), AUC 0 (every pair inverted)
  m = classification_metrics([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1])
  for key in (
    "accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
    "specificity",
    "npv",
    "f1",
    "macro_f1",
    "roc_auc",
  ):
    _close(m[key], 0.0)
  assert m["confusion_matrix"] == [[0, 2], [2, 0]]


def test_class_never_predicted():
  # all p < 0.5 -> nothing predicted positive: TP=0, FP=0, FN=3, TN=2
  m = classification_metrics([0, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.4, 0.35])
  _close(m["precision"], 0.0)  # 0/0 -> 0.0 (zero_division=0)
  _close(m["recall"], 0.0)  # 0/3
  _close(m["f1"], 0.0)
  _close(m["specificity"], 1.0)  # 2/2
  _close(m["npv"], 2 / 5)  # TN=2, FN=3
  _close(m["accuracy"], 2 / 5)
  _close(m["balanced_accuracy"], 1 / 2)  # (0 + 1) / 2
  _close(m["macro_f1"], 2 / 7)  # class 0: 2*2/(4+3+0) = 4/7; class 1: 0
  _close(m["roc_auc"], 1.0)  # ranking is still perfect


def test_class_absent_from_labels():
  # only with_mask; predictions [0, 1, 0]: for class 1 TP=0, FP=1, FN=0, TN=2
  m = classification_metrics([0, 0, 0], [0.2, 0.7, 0.4], class_names=NAMES)
  _close(m["precision"], 0.0)  # 0/1
  _close(m["recall"], 0.0)  # 0/0 -> 0.0
  _close(m["f1"], 0.0)  # 0/(0+1+0)
  _close(m["specificity"], 2 / 3)
  _close(m["npv"], 1.0)  # 2/2
  _close(m["balanced_accuracy"], 2 / 3)  # only the present class: recall of class 0
  _close(m["macro_recall"], 1 / 3)  # (2/3 + 0) / 2 over all classes
  assert math.isnan(m["roc_auc"])  # one class only
  assert math.isnan(m["per_class"]["without_mask"]["roc_auc"])
  assert m["support"] == {"with_mask": 3, "without_mask": 0}
  json.dumps(m)


def test_all_one_class_positive():
  m = classification_metrics([1, 1, 1], [0.9, 0.2, 0.6])
  assert math.isnan(m["roc_auc"])
  _close(m["recall"], 2 / 3), _close(m["precision"], 1.0)
  _close(m["specificity"], 0.0), _close(m["npv"], 0.0)  # TN=0, FP=0, FN=1
  _close(m["balanced_accuracy"], 2 / 3)


def test_threshold_effect():
  # 0.65: predicted positive {0.7, 0.8}: TP=2, FP=0, FN=1, TN=5
  m = classification_metrics(Y, P1, threshold=0.65)
  _close(m["precision"], 1.0), _close(m["recall"], 2 / 3)
  _close(m["specificity"], 1.0), _close(m["accuracy"], 7 / 8)
  # 0.42: predicted positive {0.6, 0.7, 0.8, 0.45}: TP=3, FP=1, FN=0, TN=4
  m = classification_metrics(Y, P1, threshold=0.42)
  _close(m["precision"], 3 / 4), _close(m["recall"], 1.0)
  _close(m["specificity"], 4 / 5), _close(m["accuracy"], 7 / 8)
  # p >= threshold: a probability equal to the threshold is positive
  assert classification_metrics([1], [0.7], threshold=0.7)["recall"] == 1.0
  # threshold-free metrics do not move
  a, b = classification_metrics(Y, P1, threshold=0.1), classification_metrics(Y, P1)
  assert a["roc_auc"] == b["roc_auc"] and a["log_loss"] == b["log_loss"]


def test_vector_and_matrix_probabilities_agree():
  y, p = _random_binary()
  a = classification_metrics(y, p, threshold=0.4)
  b = classification_metrics(y, np.stack([1 - p, p], axis=1), threshold=0.4)
  assert a == b
  c = classification_metrics(list(y), list(p.astype(np.float32)), threshold=0.4)
  assert c["confusion_matrix"] == a["confusion_matrix"]


# ----------------------------------------------------------------------------- AUC


def test_auc_ties_count_half():
  _close(classification_metrics([0, 1], [0.5, 0.5])["roc_auc"], 0.5)
  # pos 0.6: beats 0.2, ties 0.6 -> 1.5; pos 0.9 beats both -> 2; (1.5 + 2) / 4 = 7/8
  _close(classification_metrics([0, 0, 1, 1], [0.2, 0.6, 0.6, 0.9])["roc_auc"], 7 / 8)
  _close(classification_metrics([0, 1, 0, 1], [0.3] * 4)["roc_auc"], 0.5)


def test_auc_invariant_to_monotone_transforms():
  y, p = _random_binary(decimals=2)  # with ties
  auc = classification_metrics(y, p)["roc_auc"]
  for q in (p**3, np.sqrt(p), 0.2 + 0.5 * p):
    _close(classification_metrics(y, q)["roc_auc"], auc)
  _close(classification_metrics(y, 1 - p)["roc_auc"], 1 - auc)  # reversed ranking


def test_auc_matches_pairwise_definition():
  y, p = _random_binary(n=60, seed=3, decimals=1)
  pos, neg = p[y == 1], p[y == 0]
  diff = pos[:, None] - neg[None, :]
  expected = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
  _close(classification_metrics(y, p)["roc_auc"], expected)


# ----------------------------------------------------------------------------- multi-class

PROBS3 = [
  [0.7, 0.2, 0.1],  # y=0 -> 0
  [0.3, 0.4, 0.3],  # y=0 -> 1
  [0.2, 0.6, 0.2],  # y=1 -> 1
  [0.1, 0.3, 0.6],  # y=1 -> 2
  [0.1, 0.1, 0.8],  # y=2 -> 2
  [0.2, 0.5, 0.3],
]  # y=2 -> 1
Y3 = [0, 0, 1, 1, 2, 2]


def test_three_class_macro_metrics():
  m = classification_metrics(Y3, PROBS3, threshold=0.99, class_names=("a", "b", "c"))
  assert m["threshold"] is None and m["positive_class"] is None
  assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 1], [0, 1, 1]]
  # a: TP1 FP0 FN1 TN4 -> P 1,   R 1/2, F1 2/3, spec 1,   npv 4/5
  # b: TP1 FP2 FN1 TN2 -> P 1/3, R 1/2, F1 2/5, spec 1/2, npv 2/3
  # c: TP1 FP1 FN1 TN3 -> P 1/2, R 1/2, F1 1/2, spec 3/4, npv 3/4
  pc = m["per_class"]
  for name, (prec, rec, f1, spec, npv) in {
    "a": (1, 1 / 2, 2 / 3, 1, 4 / 5),
    "b": (1 / 3, 1 / 2, 2 / 5, 1 / 2, 2 / 3),
    "c": (1 / 2, 1 / 2, 1 / 2, 3 / 4, 3 / 4),
  }.items():
    _close(pc[name]["precision"], prec), _close(pc[name]["recall"], rec)
    _close(pc[name]["f1"], f1), _close(pc[name]["specificity"], spec)
    _close(pc[name]["npv"], npv)
    assert pc[name]["support"] == 2
  _close(m["accuracy"], 1 / 2)
  _close(m["balanced_accuracy"], 1 / 2)
  _close(m["precision"], 11 / 18)  # (1 + 1/3 + 1/2) / 3
  _close(m["recall"], 1 / 2)
  _close(m["f1"], 47 / 90)  # (2/3 + 2/5 + 1/2) / 3 = (20 + 12 + 15) / 90
  _close(m["macro_f1"], 47 / 90)
  _close(m["specificity"], (1 + 1 / 2 + 3 / 4) / 3)
  _close(m["npv"], (4 / 5 + 2 / 3 + 3 / 4) / 3)
  # one-vs-rest AUC:
  #   a: pos {.7, .3} vs neg {.2, .1, .1, .2}: 8/8
  #   b: pos {.6, .3} vs neg {.2, .4, .1, .5}: 4 + 2 = 6/8
  #   c: pos {.8, .3} vs neg {.1, .3, .2, .6}: 4 + (2 + 0.5 tie) = 6.5/8
  _close(pc["a"]["roc_auc"], 1.0), _close(pc["b"]["roc_auc"], 3 / 4)
  _close(pc["c"]["roc_auc"], 13 / 16)
  _close(m["roc_auc"], 41 / 48)  # (16 + 12 + 13) / 16 / 3
  _close(m["log_loss"], -np.mean(np.log([0.7, 0.3, 0.6, 0.3, 0.8, 0.3])))
  _assert_plain(m)


def test_three_class_positive_class():
  m = classification_metrics(Y3, PROBS3, positive_class=1)
  _close(m["precision"], 1 / 3), _close(m["recall"], 1 / 2), _close(m["f1"], 2 / 5)
  _close(m["roc_auc"], 3 / 4)
  _close(m["macro_f1"], 47 / 90)


def test_three_class_with_absent_class():
  probs = [[0.6, 0.3, 0.1], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.3, 0.4, 0.3]]
  m = classification_metrics([0, 0, 1, 1], probs)  # predictions [0, 2, 1, 1]
  assert m["confusion_matrix"] == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]
  _close(m["balanced_accuracy"], 3 / 4)  # (1/2 + 1) / 2, class 2 absent
  _close(m["macro_recall"], 1 / 2)  # (1/2 + 1 + 0) / 3
  _close(m["per_class"]["2"]["precision"], 0.0)  # TP=0, FP=1
  # OvR over present classes: class 0 pos {.6,.2} vs {.1,.3} -> 3/4; class 1 -> 1
  _close(m["roc_auc"], 7 / 8)
  assert math.isnan(m["per_class"]["2"]["roc_auc"])
  assert math.isnan(classification_metrics([2, 2], probs[:2])["roc_auc"])


def test_argmax_ties_pick_lowest_index():
  m = classification_metrics([1], [[0.4, 0.4, 0.2]])
  assert m["confusion_matrix"][1] == [1, 0, 0]


# ----------------------------------------------------------------------------- best_threshold


def test_best_threshold_hand_case():
  # distinct p: .1 .2 .3 .4 .45 .6 .7 .8
  # cut .425 (between .4/.45): TP3 FP1 -> BA (1 + 4/5)/2 = 9/10 (best); acc 7/8
  # cut .65  (between .6/.7):  TP2 FP0 -> BA (2/3 + 1)/2 = 5/6;        acc 7/8
  t, v = best_threshold(Y, P1)
  _close(t, 0.425), _close(v, 9 / 10)
  # accuracy ties at .425 and .65 -> the one closest to 0.5
  t, v = best_threshold(Y, P1, metric="accuracy")
  _close(t, 0.425), _close(v, 7 / 8)
  t, v = best_threshold(Y, P1, metric="precision")  # precision 1 only above .6
  _close(t, 0.65), _close(v, 1.0)


def test_best_threshold_equidistant_tie_takes_smaller():
  # cuts .25 (pred [0,1,1,1]) and .75 (pred [0,0,0,1]) both give accuracy 3/4; .5 gives 2/4
  t, v = best_threshold([0, 1, 0, 1], [0.125, 0.375, 0.625, 0.875], metric="accuracy")
  assert (t, v) == (0.25, 0.75)


def test_best_threshold_trivial_cuts():
  # all negative: predicting everything negative (cut above max, halfway to 1) is perfect
  t, v = best_threshold([0, 0], [0.2, 0.7], metric="accuracy")
  _close(t, 0.85), _close(v, 1.0)
  t, v = best_threshold([1, 1], [0.2, 0.7], metric="accuracy")  # cut below min, halfway to 0
  _close(t, 0.1), _close(v, 1.0)
  t, v = best_threshold([0, 0], [1.0, 1.0], metric="accuracy")  # cut above 1.0 still exists
  assert t > 1.0 and v == 1.0


@pytest.mark.parametrize("metric", THRESHOLD_METRICS)
def test_best_threshold_consistent_and_optimal(metric):
  y, p = _random_binary(n=120, seed=1, decimals=2)
  t, v = best_threshold(y, p, metric=metric)
  _close(classification_metrics(y, p, threshold=t)[metric], v)
  # brute force over every partition: each distinct value as cut, plus "nothing positive"
  for cut in [*np.unique(p), 1.5]:
    assert classification_metrics(y, p, threshold=cut)[metric] <= v + 1e-12


# ----------------------------------------------------------------------------- roc_curve


def test_roc_curve_hand_case():
  fpr, tpr, thr = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
  np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
  np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
  np.testing.assert_allclose(thr, [np.inf, 0.8, 0.4, 0.35, 0.1])


def test_roc_curve_ties_are_one_step():
  fpr, tpr, thr = roc_curve([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.9])
  np.testing.assert_allclose(fpr, [0, 0, 1]), np.testing.assert_allclose(tpr, [0, 0.5, 1])
  np.testing.assert_allclose(thr, [np.inf, 0.9, 0.3])


@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_roc_curve_area_equals_roc_auc(decimals):
  y, p = _random_binary(n=300, seed=2, decimals=decimals)
  fpr, tpr, _ = roc_curve(y, p)
  assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
  assert fpr[-1] == 1.0 and tpr[-1] == 1.0
  _close(np.trapezoid(tpr, fpr), classification_metrics(y, p)["roc_auc"])
  logits = np.log(np.clip(p, 1e-9, 1)) - np.log(np.clip(1 - p, 1e-9, 1))  # any real scores
  _close(np.trapezoid(*roc_curve(y, logits)[1::-1]), classification_metrics(y, p)["roc_auc"])


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
  "labels, probs, kwargs, match",
  [
    ([], [], {}, "at least one example"),
    ([0, 1], [0.5], {}, "rows"),
    ([0, 2], [0.1, 0.9], {}, r"\[0, 2\)"),
    ([-1, 1], [0.1, 0.9], {}, "non-negative"),
    ([0, 0.5], [0.1, 0.9], {}, "integer"),
    ([[0, 1]], [0.1, 0.9], {}, "1-D"),
    ([0, 1], [0.1, np.nan], {}, "finite"),
    ([0, 1], [0.1, np.inf], {}, "finite"),
    ([0, 1], [0.1, 1.2], {}, r"\[0, 1\]"),
    ([0, 1], [[0.1], [0.9]], {}, "C >= 2"),
    ([0, 1], np.zeros((2, 2, 2)), {}, "shape"),
    ([0, 1], [0.1, 0.9], {"class_names": ("a",)}, "class_names"),
    ([0, 1], [0.1, 0.9], {"class_names": ("a", "a")}, "class_names"),
    ([0, 1], [0.1, 0.9], {"positive_class": 2}, "positive_class"),
    ([0, 1], [0.1, 0.9], {"threshold": float("nan")}, "threshold"),
  ],
)
def test_classification_metrics_validation(labels, probs, kwargs, match):
  with pytest.raises(ValueError, match=match):
    classification_metrics(labels, probs, **kwargs)


def test_other_validation():
  with pytest.raises(ValueError, match="differ in length"):
    confusion_matrix([0, 1], [0], 2)
  with pytest.raises(ValueError, match="predictions"):
    confusion_matrix([0, 1], [0, 3], 2)
  with pytest.raises(ValueError, match="metric"):
    best_threshold([0, 1], [0.1, 0.9], metric="roc_auc")
  with pytest.raises(ValueError, match="at least one"):
    best_threshold([], [])
  with pytest.raises(ValueError, match="binary"):
    best_threshold([0, 1], [[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])
  with pytest.raises(ValueError, match="both classes"):
    roc_curve([1, 1], [0.2, 0.3])
  with pytest.raises(ValueError, match="shape"):
    roc_curve([0, 1], [0.2])
  with pytest.raises(ValueError, match="finite"):
    roc_curve([0, 1], [0.2, np.nan])


# ----------------------------------------------------------------------------- optional sklearn


def test_cross_check_with_sklearn():
  skm = pytest.importorskip("sklearn.metrics")
  y, p = _random_binary(n=200, seed=4, decimals=2)
  m = classification_metrics(y, p, threshold=0.45)
  pred = (p >= 0.45).astype(int)
  _close(m["roc_auc"], skm.roc_auc_score(y, p))
  _close(m["f1"], skm.f1_score(y, pred))
  _close(m["macro_f1"], skm.f1_score(y, pred, average="macro"))
  _close(m["balanced_accuracy"], skm.balanced_accuracy_score(y, pred))
  q = np.clip(p, 0.01, 0.99)  # away from 0/1: the two libraries clip with different eps
  _close(classification_metrics(y, q)["log_loss"], skm.log_loss(y, np.stack([1 - q, q], 1)))
  rng = np.random.default_rng(5)
  probs = rng.dirichlet(np.ones(3), 90)
  y3 = rng.integers(0, 3, 90)
  m3 = classification_metrics(y3, probs)
  _close(m3["roc_auc"], skm.roc_auc_score(y3, probs, multi_class="ovr", average="macro"))
  _close(m3["f1"], skm.f1_score(y3, probs.argmax(1), average="macro"))
