"""Tests of vaeaug.quality on hand-computed cases (fast, numpy only)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vaeaug import quality as q

pytestmark = pytest.mark.filterwarnings("error")

NAMES = ("with_mask", "without_mask")


# ----------------------------------------------------------------------------- pixels


def test_psnr_of_known_mse():
  a = np.full((3, 4, 4, 3), 0.5)
  b = a + 0.1
  np.testing.assert_allclose(q.mse(a, b), 0.01, rtol=1e-9)
  np.testing.assert_allclose(q.psnr(a, b), 20.0, rtol=1e-9)
  np.testing.assert_allclose(q.psnr(a * 255, b * 255, max_value=255.0), 20.0, rtol=1e-9)


def test_uint8_is_rescaled_without_wraparound():
  a = np.full((2, 5, 5), 100, np.uint8)
  b = np.full((2, 5, 5), 110, np.uint8)
  expected_mse = (10 / 255) ** 2
  np.testing.assert_allclose(q.mse(a, b), expected_mse)
  np.testing.assert_allclose(q.mse(b, a), expected_mse)  # 100 - 110 must not wrap to 246
  np.testing.assert_allclose(q.psnr(a, b), 20 * math.log10(25.5))
  np.testing.assert_allclose(q.mse(a, b.astype(np.float32) / 255), expected_mse, rtol=1e-6)
  with pytest.raises(TypeError):
    q.mse(a.astype(np.int32), b.astype(np.int32))
  with pytest.raises(ValueError):
    q.mse(a, b[:1])


def test_identical_images_psnr_inf_and_mean_over_finite():
  a = np.random.default_rng(0).random((3, 4, 4))
  b = a.copy()
  b[1] += 0.1
  p = q.psnr(a, b)
  assert np.isinf(p[0]) and np.isinf(p[2]) and p[1] == pytest.approx(20.0)
  assert q.mean_psnr(p) == pytest.approx(20.0)
  assert q.mean_psnr(q.psnr(a, a)) == math.inf
  rec = q.reconstruction_metrics(a, b)
  assert rec["psnr"] == pytest.approx(20.0) and rec["psnr_inf_count"] == 2 and rec["n"] == 3
  assert rec["mse"] == pytest.approx(0.01 / 3)


def test_bits_per_dim():
  assert q.bits_per_dim(100 * math.log(2), 100) == pytest.approx(1.0)
  assert q.bits_per_dim(0.0, 10) == 0.0
  np.testing.assert_allclose(q.bits_per_dim([math.log(2) * 6, math.log(2) * 12], 3), [2.0, 4.0])
  with pytest.raises(ValueError):
    q.bits_per_dim(1.0, 0)


# ----------------------------------------------------------------------------- Frechet


def _cross(mu, c):
  """2d points mu +- c_i e_i: sample mean mu, sample covariance exactly diag(2 c^2 / (2d - 1))."""
  mu, c = np.asarray(mu, float), np.asarray(c, float)
  eye = np.eye(len(mu))
  return np.concatenate([mu + eye * c, mu - eye * c])


def test_frechet_identical_is_zero():
  x = np.random.default_rng(1).normal(size=(200, 8)) * 3 + 5
  assert q.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6 * np.trace(np.cov(x.T)))
  assert q.frechet_distance(x, x) >= 0.0


def test_frechet_1d_closed_form():
  rng = np.random.default_rng(2)
  a, b = rng.normal(1.0, 2.0, 500), rng.normal(-0.5, 0.7, 400)
  m1, m2, s1, s2 = a.mean(), b.mean(), a.std(ddof=1), b.std(ddof=1)
  expected = (m1 - m2) ** 2 + s1**2 + s2**2 - 2 * s1 * s2
  assert q.frechet_distance(a[:, None], b[:, None]) == pytest.approx(expected, rel=1e-9)
  assert q.frechet_distance_from_stats(3.0, 4.0, 1.0, 1.0) == pytest.approx(4 + 4 + 1 - 4)


def test_frechet_diagonal_closed_form():
  mu_a, mu_b = [0.0, 1.0, 2.0], [1.0, 1.0, -1.0]
  ca, cb = np.array([1.0, 2.0, 3.0]), np.array([0.5, 2.0, 4.0])
  va, vb = 2 * ca**2 / 5, 2 * cb**2 / 5
  expected = 1 + 9 + np.sum(va + vb - 2 * np.sqrt(va * vb))
  assert q.frechet_distance(_cross(mu_a, ca), _cross(mu_b, cb)) == pytest.approx(expected, rel=1e-9)


def test_frechet_commuting_full_covariances():
  rot = np.linalg.qr(np.random.default_rng(3).normal(size=(4, 4)))[0]
  da, db = np.array([1.0, 2.0, 0.5, 3.0]), np.array([4.0, 1.0, 0.5, 0.0])  # db singular
  sa, sb = rot @ np.diag(da) @ rot.T, rot @ np.diag(db) @ rot.T
  expected = np.sum((np.sqrt(da) - np.sqrt(db)) ** 2)
  # sqrt of a rounding-level eigenvalue (~1e-16) costs ~1e-8 absolute accuracy
  zero = np.zeros(4)
  assert q.frechet_distance_from_stats(zero, sa, zero, sb) == pytest.approx(expected, abs=1e-7)
  assert q.frechet_distance_from_stats(zero, sa, zero, sa) == pytest.approx(0.0, abs=1e-9)


def test_frechet_symmetric_order_invariant_and_translation():
  rng = np.random.default_rng(4)
  a = rng.normal(size=(300, 5))
  b = rng.normal(size=(250, 5)) @ rng.normal(size=(5, 5)) + 0.3
  d = q.frechet_distance(a, b)
  assert q.frechet_distance(b, a) == pytest.approx(d, rel=1e-9)
  shuffled = q.frechet_distance(a[rng.permutation(300)], b[rng.permutation(250)])
  assert shuffled == pytest.approx(d, rel=1e-9)
  shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
  assert q.frechet_distance(a, a + shift) == pytest.approx(np.sum(shift**2), rel=1e-9)
  with pytest.raises(ValueError):
    q.frechet_distance(a[:1], b)
  with pytest.raises(ValueError):
    q.frechet_distance(a, b[:, :3])


# ----------------------------------------------------------------------------- precision / recall


def test_pr_identical_sets():
  x = np.random.default_rng(5).normal(size=(100, 6))
  assert q.knn_precision_recall(x, x, k=3) == {"precision": 1.0, "recall": 1.0}


def test_pr_half_modes_and_far_away():
  rng = np.random.default_rng(6)
  centres = np.array([[0.0, 0.0], [50.0, 0.0]])
  real = np.concatenate([rng.normal(size=(400, 2)) + c for c in centres])
  fake = rng.normal(size=(400, 2)) + centres[0]
  pr = q.knn_precision_recall(real, fake, k=3)
  assert pr["precision"] > 0.9
  assert 0.4 < pr["recall"] <= 0.5
  far = q.knn_precision_recall(real, fake + 1000.0, k=3)
  assert far == {"precision": 0.0, "recall": 0.0}


def test_pr_chunking_matches(monkeypatch):
  rng = np.random.default_rng(7)
  real, fake = rng.normal(size=(90, 4)), rng.normal(size=(70, 4)) * 1.3
  full, div = q.knn_precision_recall(real, fake, k=2), q.diversity(real)["overall"]
  monkeypatch.setattr(q, "_MAX_ELEMS", 200)  # chunks of 2 rows
  assert q.knn_precision_recall(real, fake, k=2) == full
  assert q.diversity(real)["overall"] == pytest.approx(div, rel=1e-12)


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_pr_k_validation(k):
  x = np.zeros((10, 2))
  with pytest.raises(ValueError):
    q.knn_precision_recall(x, x, k=k)


def test_pr_needs_more_than_k_samples():
  with pytest.raises(ValueError):
    q.knn_precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)


# ----------------------------------------------------------------------------- diversity


def test_diversity():
  collapsed = np.tile([[1.5, -2.0, 3.0]], (20, 1))
  assert q.diversity(collapsed)["overall"] == 0.0
  spread = np.random.default_rng(8).normal(size=(20, 3))
  assert q.diversity(spread)["overall"] > 1.0
  # two points at distance 5 and a class of one
  pts = np.array([[0.0, 0.0], [3.0, 4.0], [100.0, 100.0]])
  d = q.diversity(pts, [0, 0, 1], NAMES)
  assert d["per_class"]["with_mask"] == pytest.approx(5.0)
  assert math.isnan(d["per_class"]["without_mask"])
  # overall: mean of distances 5, |(100,100)|, |(97,96)|
  expected = (5 + math.hypot(100, 100) + math.hypot(97, 96)) / 3
  assert d["overall"] == pytest.approx(expected)
  # images are flattened (pixel space)
  assert q.diversity(np.zeros((4, 2, 2, 3)))["overall"] == 0.0


# ----------------------------------------------------------------------------- feature_metrics / report


def _two_class_data():
  rng = np.random.default_rng(9)
  real = np.concatenate([rng.normal(size=(60, 3)), rng.normal(size=(50, 3)) + 5])
  real_labels = np.array([0] * 60 + [1] * 50)
  fake = np.concatenate([rng.normal(size=(40, 3)) * 0.8, np.tile([[5.0, 5.0, 5.0]], (5, 1))])
  fake_labels = np.array([0] * 40 + [1] * 5)
  return real, real_labels, fake, fake_labels


def test_feature_metrics_consistent():
  real, rl, fake, fl = _two_class_data()
  fm = q.feature_metrics(real, rl, fake, fl, NAMES, k=3)
  assert fm["frechet_distance"] == pytest.approx(q.frechet_distance(real, fake))
  pr = q.knn_precision_recall(real, fake, 3)
  assert (fm["precision"], fm["recall"]) == (pr["precision"], pr["recall"])
  assert fm["counts"] == {"real": 110, "fake": 45}
  assert set(fm["per_class"]) == set(NAMES)
  c0 = fm["per_class"]["with_mask"]
  assert c0["n_real"] == 60 and c0["n_fake"] == 40
  assert c0["frechet_distance"] == pytest.approx(q.frechet_distance(real[:60], fake[:40]))
  pr0 = q.knn_precision_recall(real[:60], fake[:40], 3)
  assert (c0["precision"], c0["recall"]) == (pr0["precision"], pr0["recall"])
  c1 = fm["per_class"]["without_mask"]  # 5 fakes < 2k+1 = 7
  assert c1["n_fake"] == 5 and c1["frechet_distance"] is None and c1["precision"] is None
  # mode collapse visible in diversity
  assert fm["diversity"]["fake"]["per_class"]["without_mask"] == 0.0
  assert fm["diversity"]["real"]["per_class"]["without_mask"] > 1.0
  assert fm["diversity"]["real"]["overall"] == pytest.approx(q.diversity(real)["overall"])
  # one-hot labels accepted
  fm2 = q.feature_metrics(real, np.eye(2)[rl], fake, np.eye(2)[fl], NAMES, k=3)
  assert fm2["per_class"] == fm["per_class"]


def test_quality_report_json_round_trip_and_table():
  real, rl, fake, fl = _two_class_data()
  fm = q.feature_metrics(real, rl, fake, fl, NAMES, k=3)
  a = np.random.default_rng(10).random((4, 8, 8, 3))
  b = a.copy()
  b[0] += 0.1
  rec = q.reconstruction_metrics(a, b)
  report = q.QualityReport.build(
    "vae_beta1",
    features=fm,
    reconstruction=rec,
    negative_elbo=123.4,
    num_dims=192,
    cas={"accuracy": 0.875, "macro_f1": 0.8},
    seed=0,
  )
  assert report.bits_per_dim == pytest.approx(123.4 / (192 * math.log(2)))
  text = report.to_json()
  json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
  back = q.QualityReport.from_json(text)
  assert back.to_json() == text
  assert back.frechet_distance == report.frechet_distance
  assert back.per_class == report.per_class and back.cas == report.cas

  # inf survives the round trip
  inf_report = q.QualityReport(name="ae", reconstruction_psnr=math.inf, reconstruction_mse=0.0)
  assert q.QualityReport.from_json(inf_report.to_json()).reconstruction_psnr == math.inf
  assert "inf" in inf_report.format_table()

  table = report.format_table()
  assert "vae_beta1" in table
  for value in (
    report.frechet_distance,
    report.precision,
    report.recall,
    report.reconstruction_mse,
    report.reconstruction_psnr,
    report.bits_per_dim,
    0.875,
    fm["per_class"]["with_mask"]["frechet_distance"],
    fm["diversity"]["real"]["per_class"]["without_mask"],
  ):
    assert f"{value:.4f}" in table, value
  assert all(name in table for name in NAMES)
  assert len(table.splitlines()) >= 8
