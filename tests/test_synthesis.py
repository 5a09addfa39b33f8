"""Tests for vaeaug.synthesis: samplers, provenance, persistence, GMM, classifier filtering.

Models are tiny and untrained (16 px, two conv stages, latent_dim 4): the tests check shapes,
labels, provenance and determinism, not image quality.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from flax import nnx

from vaeaug import synthesis as S
from vaeaug.data.pipeline import ArrayDataset
from vaeaug.models.autoencoders import create_autoencoder
from vaeaug.models.noise import NoiseConfig

CLASSES = ("with_mask", "without_mask")
PER_CLASS = 3
NOISE = NoiseConfig("gaussian", sigma=0.2)
VALID = [
  ("dae", "posterior_jitter"),
  ("dae", "interpolation"),
  ("dae", "gmm"),
  ("dae", "denoise"),
  ("vae", "posterior_jitter"),
  ("vae", "interpolation"),
  ("vae", "gmm"),
  ("cvae", "prior"),
  ("cvae", "posterior_jitter"),
  ("cvae", "interpolation"),
  ("cvae", "gmm"),
]


def _options(sampler):
  return {"noise": NOISE} if sampler == "denoise" else {}


@pytest.fixture(scope="module")
def train():
  rng = np.random.default_rng(0)
  n = 10
  labels = np.array([0] * 6 + [1] * 4, np.int32)
  images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
  return ArrayDataset(
    images,
    labels,
    [f"{CLASSES[y]}/{i}.jpg" for i, y in enumerate(labels)],
    [f"g{i}" for i in range(n)],
    CLASSES,
    name="train",
  )


@pytest.fixture(scope="module")
def models():
  return {
    k: create_autoencoder(k, image_size=16, num_classes=2, rngs=nnx.Rngs(0), channels=(4, 8), latent_dim=4)
    for k in ("dae", "vae", "cvae")
  }


@pytest.fixture(scope="module")
def synthetic(models, train):
  """One set per valid (kind, sampler), seed 0."""
  return {
    (k, s): S.synthesize(models[k], train, PER_CLASS, s, 0, generator_name=f"runs/{k}", **_options(s)) for k, s in VALID
  }


# ----------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("kind,sampler", VALID)
def test_sampler_counts_labels_provenance(synthetic, train, kind, sampler):
  syn = synthetic[kind, sampler]
  n = 2 * PER_CLASS
  assert syn.images.shape == (n, 16, 16, 3) and syn.images.dtype == np.uint8
  assert syn.labels.dtype == np.int32
  assert syn.class_counts() == {c: PER_CLASS for c in CLASSES}
  assert syn.class_names == CLASSES
  assert (syn.generator == f"runs/{kind}").all() and (syn.sampler == sampler).all()
  assert (syn.seed == 0).all()
  uses_source = sampler in ("posterior_jitter", "interpolation", "denoise")
  if uses_source:
    assert (syn.source_index >= 0).all()
    np.testing.assert_array_equal(train.labels[syn.source_index], syn.labels)
    np.testing.assert_array_equal(train.files[syn.source_index], syn.source_file)
  else:
    assert (syn.source_index == -1).all() and (syn.source_file == "").all()
  if sampler == "interpolation":
    np.testing.assert_array_equal(train.labels[syn.source_index_b], syn.labels)
    np.testing.assert_array_equal(train.files[syn.source_index_b], syn.source_file_b)
    assert (syn.source_index != syn.source_index_b).all()  # both classes have > 1 image
    assert ((syn.mix >= 0.2) & (syn.mix <= 0.8)).all()
  else:
    assert (syn.source_index_b == -1).all() and (syn.source_file_b == "").all()
    assert np.isnan(syn.mix).all()
  if sampler == "gmm":
    assert (syn.component >= 0).all() and (syn.component < 5).all()
  else:
    assert (syn.component == -1).all()


@pytest.mark.parametrize(
  "kind,sampler", [("vae", "posterior_jitter"), ("cvae", "prior"), ("dae", "denoise"), ("dae", "interpolation")]
)
def test_deterministic_per_seed(models, train, synthetic, kind, sampler):
  again = S.synthesize(models[kind], train, PER_CLASS, sampler, 0, generator_name=f"runs/{kind}", **_options(sampler))
  first = synthetic[kind, sampler]
  np.testing.assert_array_equal(again.images, first.images)
  np.testing.assert_array_equal(again.source_index, first.source_index)
  np.testing.assert_array_equal(again.mix, first.mix)
  other = S.synthesize(models[kind], train, PER_CLASS, sampler, 1, **_options(sampler))
  assert not np.array_equal(other.images, first.images)
  assert (other.seed == 1).all()


def test_cvae_prior_decodes_each_class_with_its_label(models, train, monkeypatch):
  model = models["cvae"]
  calls = []
  real_decode = S._decode

  def recording(m, z, labels, batch_size=256):
    calls.append((np.array(z), np.array(labels)))
    return real_decode(m, z, labels, batch_size)

  monkeypatch.setattr(S, "_decode", recording)
  syn = S.synthesize(model, train, PER_CLASS, "prior", 0)
  ((z, labels),) = calls
  np.testing.assert_array_equal(labels, syn.labels)
  for c in range(2):
    sel = syn.labels == c
    direct = np.asarray(model.generate(z[sel].astype(np.float32), labels=np.full(sel.sum(), c)))
    np.testing.assert_allclose(syn.images[sel], np.round(direct * 255), atol=1)
  # the label matters: the same z decoded as the other class gives other images
  flipped = np.asarray(model.generate(z.astype(np.float32), labels=1 - labels))
  assert not np.allclose(syn.images, np.round(flipped * 255), atol=1)


def test_prior_needs_conditional_model(models, train):
  for kind in ("vae", "dae"):
    with pytest.raises(ValueError, match="conditional model.*posterior-based"):
      S.synthesize(models[kind], train, PER_CLASS, "prior", 0)


def test_denoise_only_for_dae(models, train):
  for kind in ("vae", "cvae"):
    with pytest.raises(ValueError, match="needs a DAE"):
      S.synthesize(models[kind], train, PER_CLASS, "denoise", 0, noise=NOISE)
  with pytest.raises(ValueError, match="noise=NoiseConfig"):
    S.synthesize(models["dae"], train, PER_CLASS, "denoise", 0)


def test_synthesize_validates_arguments(models, train):
  with pytest.raises(ValueError, match="unknown sampler"):
    S.synthesize(models["vae"], train, PER_CLASS, "magic", 0)
  with pytest.raises(ValueError, match="per_class"):
    S.synthesize(models["vae"], train, 0, "gmm", 0)
  with pytest.raises(ValueError, match="seed"):
    S.synthesize(models["vae"], train, PER_CLASS, "gmm", -1)
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['noise'\] for sampler 'gmm'"):
    S.synthesize(models["vae"], train, PER_CLASS, "gmm", 0, noise=NOISE)


def test_no_classifier_dependency():
  import ast
  import inspect

  tree = ast.parse(inspect.getsource(S))
  imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
  imported += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
  assert not any("classifier" in (m or "") for m in imported), imported


# ----------------------------------------------------------------------------- GMM


def test_gmm_recovers_two_clusters_and_samples_from_them():
  rng = np.random.default_rng(0)
  x = np.concatenate([rng.normal([0, 0], 0.5, (200, 2)), rng.normal([10, 5], [0.5, 1.0], (200, 2))])
  gmm = S.fit_diag_gmm(x, components=2, seed=3)
  order = np.argsort(gmm.means[:, 0])
  np.testing.assert_allclose(gmm.means[order], [[0, 0], [10, 5]], atol=0.2)
  np.testing.assert_allclose(gmm.weights, [0.5, 0.5], atol=0.02)
  np.testing.assert_allclose(np.sqrt(gmm.variances[order]), [[0.5, 0.5], [0.5, 1.0]], rtol=0.2)
  assert gmm.converged
  z, comp = gmm.sample(4000, np.random.default_rng(1))
  assert abs((comp == order[0]).mean() - 0.5) < 0.05
  for k, mu in zip(order, ([0, 0], [10, 5])):
    np.testing.assert_allclose(z[comp == k].mean(0), mu, atol=0.1)
    np.testing.assert_allclose(z[comp == k].std(0), np.sqrt(gmm.variances[k]), rtol=0.1)


def test_gmm_components_capped_and_variance_floored():
  x = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
  gmm = S.fit_diag_gmm(x, components=5, seed=0)
  assert len(gmm.weights) == 2  # two distinct points
  assert (gmm.variances > 0).all()
  single = S.fit_diag_gmm(np.ones((1, 3)), components=5)
  assert len(single.weights) == 1 and (single.variances > 0).all()


# ----------------------------------------------------------------------------- persistence


def test_save_load_round_trip(synthetic, tmp_path):
  syn = synthetic["vae", "interpolation"].concatenate(synthetic["dae", "gmm"])
  path = syn.save(tmp_path / "sub" / "set")
  assert path.name == "set.npz" and (tmp_path / "sub" / "set.npz.json").is_file()
  back = S.load_synthetic(path)
  assert back.class_names == syn.class_names
  for name in ("images", "labels", *S._PROVENANCE):
    np.testing.assert_array_equal(getattr(back, name), getattr(syn, name), err_msg=name)
  with np.load(path, allow_pickle=False) as z:  # plain arrays only
    assert all(z[k].dtype != object for k in z.files)
  meta = json.loads((tmp_path / "sub" / "set.npz.json").read_text())
  assert meta["counts"] == {c: 2 * PER_CLASS for c in CLASSES}
  assert meta["sampler"] == ["gmm", "interpolation"] and meta["seed"] == 0
  assert meta["created_by"].startswith("vaeaug")
  assert not list((tmp_path / "sub").glob("*.tmp"))  # temp files replaced


def test_save_records_options_as_json(synthetic, tmp_path):
  path = synthetic["dae", "denoise"].save(tmp_path / "d.npz")
  meta = json.loads(path.with_name("d.npz.json").read_text())
  assert meta["options"]["noise"]["kind"] == "gaussian" and meta["generator"] == "runs/dae"


def test_load_errors_name_the_file(synthetic, tmp_path):
  syn = synthetic["vae", "gmm"]
  path = syn.save(tmp_path / "s.npz")
  side = tmp_path / "s.npz.json"
  good_npz, good_side = path.read_bytes(), side.read_text()

  path.write_bytes(good_npz[: len(good_npz) // 2])  # truncated
  with pytest.raises(S.SyntheticFileError, match=f"{path}.*cannot read"):
    S.load_synthetic(path)
  path.write_bytes(b"not a zip at all")
  with pytest.raises(S.SyntheticFileError, match=str(path)):
    S.load_synthetic(path)
  path.write_bytes(good_npz)

  side.unlink()
  with pytest.raises(S.SyntheticFileError, match=f"{path}.*sidecar.*missing"):
    S.load_synthetic(path)

  meta = json.loads(good_side)
  meta["counts"]["with_mask"] = 99
  side.write_text(json.dumps(meta))
  with pytest.raises(S.SyntheticFileError, match=f"{path}.*inconsistent: counts"):
    S.load_synthetic(path)
  meta = json.loads(good_side)
  meta["class_names"] = ["a", "b"]
  side.write_text(json.dumps(meta))
  with pytest.raises(S.SyntheticFileError, match=f"{path}.*class_names"):
    S.load_synthetic(path)
  side.write_text(good_side)

  # labels out of range, written as an otherwise valid npz
  arrays = {**syn._arrays(), "class_names": np.asarray(CLASSES)}
  arrays["labels"] = arrays["labels"].copy()
  arrays["labels"][0] = 7
  np.savez(path, **arrays)
  with pytest.raises(S.SyntheticFileError, match=f"{path}.*labels out of range"):
    S.load_synthetic(path)
  path.write_bytes(good_npz)
  assert len(S.load_synthetic(path)) == len(syn)

  with pytest.raises(S.SyntheticFileError, match="not found"):
    S.load_synthetic(tmp_path / "nope.npz")


def test_load_rejects_object_arrays(synthetic, tmp_path):
  syn = synthetic["vae", "gmm"]
  path = syn.save(tmp_path / "o.npz")
  arrays = {**syn._arrays(), "class_names": np.asarray(CLASSES, dtype=object)}
  with open(path, "wb") as f:
    np.savez(f, **arrays)
  assert zipfile.is_zipfile(path)
  with pytest.raises(S.SyntheticFileError, match=f"{path}.*cannot read"):
    S.load_synthetic(path)


# ----------------------------------------------------------------------------- datasets


def test_to_dataset_and_combine_with_real(synthetic, train):
  syn = synthetic["cvae", "posterior_jitter"].concatenate(synthetic["cvae", "prior"])
  ds = syn.to_dataset(provenance=False)
  both = train.concatenate(ds)
  assert len(both) == len(train) + len(syn)
  np.testing.assert_array_equal(both.labels[len(train) :], syn.labels)
  assert ds.files[0] == "synthetic/posterior_jitter/0"
  # made from a real image: the marker names the source file; no source: its own id
  assert ds.groups[0] == f"synthetic:{syn.source_file[0]}"
  assert ds.groups[-1] == f"synthetic:prior/{len(syn) - 1}"

  mixed = S.combine(train, syn)
  assert len(mixed) == len(train) + len(syn)
  assert mixed.extras["synthetic"].sum() == len(syn)
  assert (mixed.extras["sampler"][: len(train)] == "real").all()
  np.testing.assert_array_equal(mixed.extras["source_index"][len(train) :], syn.source_index)


# ----------------------------------------------------------------------------- filtering


def _brightness_set(values, labels):
  """A hand-made set: image i is constant ``values[i]``."""
  n = len(values)
  images = np.broadcast_to(np.asarray(values, np.uint8)[:, None, None, None], (n, 4, 4, 3))
  return S.SyntheticSet(
    images=images.copy(),
    labels=np.asarray(labels),
    class_names=CLASSES,
    generator=np.full(n, "g"),
    sampler=np.full(n, "prior"),
    seed=np.zeros(n),
    source_index=np.full(n, -1),
    source_file=np.full(n, ""),
    source_index_b=np.full(n, -1),
    source_file_b=np.full(n, ""),
    mix=np.full(n, np.nan),
    component=np.full(n, -1),
  )


def _brightness_proba(images):
  """p(without_mask) = mean brightness / 255."""
  p1 = images.reshape(len(images), -1).mean(1) / 255.0
  return np.stack([1 - p1, p1], 1)


def test_filter_by_classifier_keeps_expected_samples():
  values = [0, 50, 200, 255, 0, 100, 230, 255]
  labels = [0, 0, 0, 0, 1, 1, 1, 1]
  syn = _brightness_set(values, labels)
  kept, report = S.filter_by_classifier(syn, _brightness_proba, tau=0.6, batch_size=3)
  # class 0 needs 1 - v/255 >= 0.6 (v <= 102): 0, 50; class 1 needs v/255 >= 0.6: 230, 255
  np.testing.assert_array_equal(kept.images[:, 0, 0, 0], [0, 50, 230, 255])
  np.testing.assert_array_equal(kept.labels, [0, 0, 1, 1])
  assert report == {
    "tau": 0.6,
    "kept": {"with_mask": 2, "without_mask": 2},
    "total": {"with_mask": 4, "without_mask": 4},
    "acceptance": {"with_mask": 0.5, "without_mask": 0.5},
  }
  with pytest.raises(ValueError, match="predict_proba must return shape"):
    S.filter_by_classifier(syn, lambda x: np.ones((len(x), 3)), tau=0.5)


def _parity_proba(images):
  """Accepts class 0 for images with an even byte sum, class 1 otherwise (about half each)."""
  odd = images.reshape(len(images), -1).astype(np.int64).sum(1) % 2
  return np.stack([1 - odd, odd], 1).astype(np.float64)


def test_synthesize_filtered_reaches_per_class(models, train):
  syn, report = S.synthesize_filtered(models["vae"], train, PER_CLASS, "posterior_jitter", 0, _parity_proba, tau=0.5)
  assert syn.class_counts() == {c: PER_CLASS for c in CLASSES}
  assert report["complete"] and report["shortfall"] == {}
  assert (_parity_proba(syn.images)[np.arange(len(syn)), syn.labels] == 1).all()
  assert report["kept"] == {c: PER_CLASS for c in CLASSES}
  for c in CLASSES:
    assert report["acceptance"][c] == report["accepted"][c] / report["generated"][c]
  assert set(syn.seed.tolist()) <= set(report["seeds"]) and report["seeds"][0] == 0


def test_synthesize_filtered_reports_shortfall(models, train):
  never_class_1 = lambda x: np.tile([1.0, 0.0], (len(x), 1))  # noqa: E731
  with pytest.warns(UserWarning, match="short"):
    syn, report = S.synthesize_filtered(models["vae"], train, PER_CLASS, "gmm", 0, never_class_1, tau=0.5, max_rounds=2)
  assert syn.class_counts() == {"with_mask": PER_CLASS, "without_mask": 0}
  assert report["shortfall"] == {"without_mask": PER_CLASS} and not report["complete"]
  assert report["rounds"] == 2 and report["acceptance"]["without_mask"] == 0.0
  assert report["acceptance"]["with_mask"] == 1.0
