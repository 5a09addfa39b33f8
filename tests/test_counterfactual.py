"""Tests for the counterfactual and noise_blur samplers, decision filtering, the registry's sampler
checks in `synthesize`, and the counterfactual pairs figure.

Models are tiny and untrained (16 px): the tests check labels, provenance, latents and determinism,
not image quality.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vaeaug import generator_figures, kinds
from vaeaug import synthesis as S
from vaeaug.data.pipeline import ArrayDataset, from_float, to_float
from vaeaug.models.noise import NoiseConfig, corrupt

CLASSES = ("with_mask", "without_mask")
NOISE = NoiseConfig("gaussian", sigma=0.2)


def _dataset(labels, seed=0, classes=CLASSES) -> ArrayDataset:
  labels = np.asarray(labels, np.int32)
  rng = np.random.default_rng(seed)
  # smooth-ish images (a per-image colour plus mild noise), so blurring has structure to act on
  base = rng.integers(40, 216, (len(labels), 1, 1, 3))
  images = np.clip(base + rng.integers(-40, 41, (len(labels), 16, 16, 3)), 0, 255).astype(np.uint8)
  return ArrayDataset(
    images,
    labels,
    [f"{classes[y]}/{i}.jpg" for i, y in enumerate(labels)],
    [f"g{i}" for i in range(len(labels))],
    classes,
    name="train",
  )


@pytest.fixture(scope="module")
def train():
  return _dataset([0] * 6 + [1] * 4)


@pytest.fixture(scope="module")
def models():
  return {
    k: kinds.get(k).create(image_size=16, num_classes=2, rngs=nnx.Rngs(0), latent_dim=8, channels=(8, 16))
    for k in ("vae", "cvae", "dae")
  }


class _Identity(nnx.Module):
  """An unconditional stand-in whose latent is the image itself (encode / generate are reshapes), so
  a latent shift shows up unchanged in the output."""

  kind = "vae"
  conditional = False
  num_classes = 0
  latent_dim = 16 * 16 * 3

  def encode(self, x, *, train, labels=None):
    del train, labels
    z = x.reshape(x.shape[0], -1)
    return z, jnp.zeros_like(z)

  def generate(self, z, *, labels=None):
    del labels
    return z.reshape(z.shape[0], 16, 16, 3)


# ----------------------------------------------------------------------------- counterfactual


@pytest.mark.parametrize("kind", ["vae", "cvae"])
def test_counterfactual_labels_sources_provenance(models, train, kind):
  syn = S.synthesize(models[kind], train, 3, "counterfactual", 0, generator_name=f"runs/{kind}")
  np.testing.assert_array_equal(syn.labels, [0, 0, 0, 1, 1, 1])
  assert syn.class_counts() == {c: 3 for c in CLASSES}
  assert (syn.sampler == "counterfactual").all() and (syn.generator == f"runs/{kind}").all()
  # every source is a real image of the other class
  assert (train.labels[syn.source_index] != syn.labels).all()
  np.testing.assert_array_equal(train.files[syn.source_index], syn.source_file)
  assert (syn.source_index_b == -1).all() and (syn.component == -1).all()
  method = "label_swap" if kind == "cvae" else "latent_direction"
  assert syn.options == {"strength": 1.0, "method": method}
  if kind == "cvae":
    assert np.isnan(syn.mix).all()
  else:
    np.testing.assert_array_equal(syn.mix, 1.0)
  again = S.synthesize(models[kind], train, 3, "counterfactual", 0, generator_name=f"runs/{kind}")
  np.testing.assert_array_equal(again.images, syn.images)
  np.testing.assert_array_equal(again.source_index, syn.source_index)
  other = S.synthesize(models[kind], train, 3, "counterfactual", 1)
  assert not np.array_equal(other.source_index, syn.source_index)


def test_counterfactual_cvae_decodes_with_the_target_label(models, train):
  model = models["cvae"]
  syn = S.sample_counterfactual(model, train, 3, 0)
  src = syn.source_index
  x = jnp.asarray(to_float(train.images[src]))
  mean, _ = model.encode(x, train=False, labels=jnp.asarray(train.labels[src]))
  swapped = np.asarray(from_float(model.generate(mean, labels=jnp.asarray(syn.labels))))
  np.testing.assert_allclose(syn.images, swapped, atol=1)
  # the swap matters: decoding with the source's own label gives other images
  kept = np.asarray(from_float(model.generate(mean, labels=jnp.asarray(train.labels[src]))))
  assert np.abs(syn.images.astype(int) - kept).max() > 1
  with pytest.raises(ValueError, match="label_swap.*strength must be 1"):
    S.sample_counterfactual(model, train, 3, 0, strength=0.5)


def test_counterfactual_vae_latent_shift(models, train):
  model = models["vae"]
  z, target, src, method = S.counterfactual_latents(model, train, 4, 0, strength=0.7)
  assert method == "latent_direction"
  mean, _ = model.encode(jnp.asarray(to_float(train.images)), train=False)
  mean = np.asarray(mean, np.float64)
  centres = np.stack([mean[train.labels == k].mean(0) for k in range(2)])
  np.testing.assert_allclose(z - mean[src], 0.7 * (centres[target] - centres[train.labels[src]]), atol=1e-4)
  # strength 0: the source's own code (a reconstruction)
  z0, _, src0, _ = S.counterfactual_latents(model, train, 4, 0, strength=0.0)
  np.testing.assert_array_equal(src0, src)
  np.testing.assert_allclose(z0, mean[src], atol=1e-4)


def test_counterfactual_shift_through_identity_model(train):
  syn = S.synthesize(_Identity(), train, 2, "counterfactual", 3, strength=0.5)
  x = to_float(train.images).astype(np.float64)
  centres = np.stack([x[train.labels == k].mean(0) for k in range(2)])
  src, target = syn.source_index, syn.labels
  expected = from_float(np.clip(x[src] + 0.5 * (centres[target] - centres[train.labels[src]]), 0, 1))
  np.testing.assert_allclose(syn.images.astype(int), expected.astype(int), atol=1)
  np.testing.assert_array_equal(syn.mix, 0.5)


def test_counterfactual_errors(models, train):
  with pytest.raises(ValueError, match="'without_mask' has no training images"):
    S.synthesize(models["vae"], _dataset([0, 0, 0]), 2, "counterfactual", 0)
  single = _dataset([0, 0, 0], classes=("only",))
  with pytest.raises(ValueError, match="at least two classes"):
    S.sample_counterfactual(models["vae"], single, 2, 0)
  with pytest.raises(ValueError, match="strength"):
    S.synthesize(models["vae"], train, 2, "counterfactual", 0, strength=-1.0)


def test_pairs_figure(models, train, tmp_path):
  syn = S.synthesize(models["vae"], train, 3, "counterfactual", 0)
  path = generator_figures.counterfactual_pairs_figure(syn, train, tmp_path / "pairs.png", per_class=2)
  assert path == tmp_path / "pairs.png" and path.stat().st_size > 0
  assert (tmp_path / "pairs.svg").stat().st_size > 0
  with pytest.raises(ValueError, match="not those of this train set"):
    generator_figures.counterfactual_pairs_figure(syn, _dataset([1] * 4 + [0] * 6), tmp_path / "x.png")
  with pytest.raises(ValueError, match="matching"):
    generator_figures.pairs_figure(train.images[:2], train.images[:3], ["a", "b"], tmp_path / "y.png")


# ----------------------------------------------------------------------------- decision filter


def _set(p1, labels, class_names=CLASSES):
  """A hand-made set whose image i is constant ``p1[i] * 255`` (read back by `_proba`)."""
  n = len(p1)
  values = np.round(np.asarray(p1) * 255).astype(np.uint8)
  return S.SyntheticSet(
    images=np.broadcast_to(values[:, None, None, None], (n, 4, 4, 3)).copy(),
    labels=np.asarray(labels),
    class_names=class_names,
    generator=np.full(n, "g"),
    sampler=np.full(n, "counterfactual"),
    seed=np.zeros(n),
    source_index=np.full(n, -1),
    source_file=np.full(n, ""),
    source_index_b=np.full(n, -1),
    source_file_b=np.full(n, ""),
    mix=np.full(n, np.nan),
    component=np.full(n, -1),
  )


def _proba(images):
  p1 = images[:, 0, 0, 0] / 255.0
  return np.stack([1 - p1, p1], 1)


def test_filter_by_decision_threshold():
  p1 = [0.0, 0.2, 0.4, 0.6, 0.2, 0.4, 0.6, 1.0]
  syn = _set(p1, [0, 0, 0, 0, 1, 1, 1, 1])
  kept, report = S.filter_by_decision(syn, _proba, batch_size=3)  # 0.5
  np.testing.assert_allclose(kept.images[:, 0, 0, 0] / 255, [0.0, 0.2, 0.4, 0.6, 1.0], atol=0.01)
  np.testing.assert_array_equal(kept.labels, [0, 0, 0, 1, 1])
  assert report == {
    "threshold": 0.5,
    "rule": "threshold",
    "kept": {"with_mask": 3, "without_mask": 2},
    "total": {"with_mask": 4, "without_mask": 4},
    "acceptance": {"with_mask": 0.75, "without_mask": 0.5},
  }
  # a low operating threshold calls more images class 1 (p1 = 0.2 is just above 0.19)
  kept, report = S.filter_by_decision(syn, _proba, threshold=0.19)
  np.testing.assert_array_equal(kept.labels, [0, 1, 1, 1, 1])
  np.testing.assert_allclose(kept.images[:, 0, 0, 0] / 255, [0.0, 0.2, 0.4, 0.6, 1.0], atol=0.01)
  assert report["threshold"] == 0.19 and report["acceptance"] == {"with_mask": 0.25, "without_mask": 1.0}
  with pytest.raises(ValueError, match="threshold must be"):
    S.filter_by_decision(syn, _proba, threshold=1.5)


def test_filter_by_decision_argmax_for_more_classes():
  names = ("a", "b", "c")
  syn = _set([0.0, 0.0, 0.0, 0.0], [0, 1, 2, 2], names)
  probs = np.array([[0.5, 0.3, 0.2], [0.5, 0.4, 0.1], [0.1, 0.2, 0.7], [0.3, 0.4, 0.3]])
  kept, report = S.filter_by_decision(syn, lambda x: probs[: len(x)])
  np.testing.assert_array_equal(kept.labels, [0, 2])
  assert report["rule"] == "argmax" and report["threshold"] is None
  with pytest.raises(ValueError, match="two classes"):
    S.filter_by_decision(syn, lambda x: probs[: len(x)], threshold=0.3)


def test_synthesize_filtered_by_decision(models, train):
  # p1 = 0.1 everywhere: at threshold 0 every image is called class 1, at 0.5 class 0
  always_one = lambda x: np.tile([0.9, 0.1], (len(x), 1))  # noqa: E731
  with pytest.warns(UserWarning, match="decision threshold=0.0"):
    syn, report = S.synthesize_filtered(
      models["vae"], train, 2, "counterfactual", 0, always_one, decision_threshold=0.0, max_rounds=2
    )
  assert syn.class_counts() == {"with_mask": 0, "without_mask": 2}
  assert report["filter"] == "decision" and report["threshold"] == 0.0 and report["tau"] is None
  # no tau: the decision at 0.5 (argmax) keeps only class 0 here
  with pytest.warns(UserWarning, match="short"):
    syn, report = S.synthesize_filtered(models["vae"], train, 2, "counterfactual", 0, always_one, max_rounds=1)
  assert syn.class_counts() == {"with_mask": 2, "without_mask": 0} and report["threshold"] == 0.5
  with pytest.raises(ValueError, match="not both"):
    S.synthesize_filtered(models["vae"], train, 2, "gmm", 0, always_one, 0.5, decision_threshold=0.5)


# ----------------------------------------------------------------------------- noise_blur


def test_noise_blur_sigma_zero_is_the_corruption(train):
  syn = S.synthesize(None, train, 4, "noise_blur", 5, noise=NOISE, blur_sigma=0.0)  # 8 images: one batch
  assert (syn.generator == "noise_blur").all() and (syn.sampler == "noise_blur").all()
  np.testing.assert_array_equal(train.labels[syn.source_index], syn.labels)
  np.testing.assert_array_equal(train.files[syn.source_index], syn.source_file)
  assert syn.options["blur_sigma"] == 0.0 and syn.options["noise"] == NOISE
  noisy = corrupt(
    jnp.asarray(to_float(train.images[syn.source_index])), jax.random.fold_in(jax.random.key(5), 0), NOISE
  )
  np.testing.assert_array_equal(syn.images, np.asarray(from_float(noisy)))
  again = S.sample_noise_blur(object(), train, 4, 5, noise=NOISE, blur_sigma=0.0)  # the model is ignored
  np.testing.assert_array_equal(again.images, syn.images)


def _high_frequency_energy(images) -> float:
  x = images.astype(np.float64)
  return float(np.square(np.diff(x, axis=1)).mean() + np.square(np.diff(x, axis=2)).mean())


def test_noise_blur_smooths_and_picks_denoise_sources(models, train):
  sharp = S.synthesize(None, train, 4, "noise_blur", 0, noise=NOISE, blur_sigma=0.5)
  blurred = S.synthesize(None, train, 4, "noise_blur", 0, noise=NOISE, blur_sigma=2.0)
  assert _high_frequency_energy(blurred.images) < 0.5 * _high_frequency_energy(sharp.images)
  denoised = S.synthesize(models["dae"], train, 4, "denoise", 0, noise=NOISE)
  np.testing.assert_array_equal(blurred.source_index, denoised.source_index)
  with pytest.raises(ValueError, match="needs option"):
    S.synthesize(None, train, 4, "noise_blur", 0, noise=NOISE)
  with pytest.raises(ValueError, match="blur sigma"):
    S.synthesize(None, train, 4, "noise_blur", 0, noise=NOISE, blur_sigma=-1.0)


def test_gaussian_blur_keeps_constants_and_mass():
  flat = np.full((1, 9, 9, 3), 0.3, np.float32)
  np.testing.assert_allclose(S.gaussian_blur(flat, 1.5), flat, atol=1e-6)
  dot = np.zeros((1, 15, 15, 3), np.float32)
  dot[0, 7, 7] = 1.0
  out = np.asarray(S.gaussian_blur(dot, 1.0))
  np.testing.assert_allclose(out.sum((1, 2)), 1.0, atol=1e-3)
  assert out[0, 7, 7, 0] < 0.2 and out[0, 7, 8, 0] == pytest.approx(out[0, 8, 7, 0])


def test_calibrate_blur_sigma_finds_the_dae_blur(train):
  dae = lambda noisy: S.gaussian_blur(noisy, 1.0)  # noqa: E731  a "DAE" that blurs with sigma 1
  best, table = S.calibrate_blur_sigma(dae, train.images, NOISE, [2.0, 0.0, 0.5, 1.0], batch_size=4)
  assert best == 1.0
  assert list(table) == [0.0, 0.5, 1.0, 2.0]
  assert table[1.0] < 1e-10 < min(table[0.0], table[0.5], table[2.0])


# ----------------------------------------------------------------------------- registry checks


def test_synthesize_checks_samplers_through_the_registry(models, train):
  with pytest.raises(ValueError, match="'denoise' does not apply to a 'vae' generator"):
    S.synthesize(models["vae"], train, 2, "denoise", 0, noise=NOISE)
  with pytest.raises(ValueError, match="'prior' does not apply to a 'vae' generator.*conditional model"):
    S.synthesize(models["vae"], train, 2, "prior", 0)
  with pytest.raises(ValueError, match="'gmm' needs a generator"):
    S.synthesize(None, train, 2, "gmm", 0)

  class Unknown(_Identity):
    kind = "mystery"

  with pytest.raises(ValueError, match="kind 'mystery': not a registered generator kind"):
    S.synthesize(Unknown(), train, 2, "counterfactual", 0)
  # a model-free sampler does not care what the model is
  assert len(S.synthesize(Unknown(), train, 1, "noise_blur", 0, noise=NOISE, blur_sigma=1.0)) == 2
