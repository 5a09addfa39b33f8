"""Tests of classifiers.gradcam: shapes, ranges, degenerate models, determinism, and sanity checks
that the heatmaps point at the evidence - on a hand-built model whose decision is exactly "is
there a green or a red square", and on a small CNN trained on such images.

The squares sit at random places, so a map that is flipped, transposed or mis-upsampled misses
them. (A square's *position* deciding the class, e.g. top-left vs bottom-right, is a poor test of
Grad-CAM: with a flatten head the gradient of a "bright" channel is positive in one quadrant and
negative in the other, and Grad-CAM's spatially averaged weights cancel - a known limitation of
the method, not of this implementation.)
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from classifiers import gradcam, models

SIZE = 24
SQUARE = 6
GREEN, RED = (0.1, 0.9, 0.1), (0.9, 0.1, 0.1)


def square_images(n: int, seed: int, *, size: int = SIZE):
  """Dim noise in [0, 0.3] with one SQUARE x SQUARE square: green (label 1) or red (label 0),
  at a random position. Returns images (n, size, size, 3) float32, labels, top-left corners."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.0, 0.3, (n, size, size, 3)).astype(np.float32)
  labels = rng.integers(0, 2, n).astype(np.int32)
  corners = rng.integers(0, size - SQUARE + 1, (n, 2))
  for i, (r, c) in enumerate(corners):
    x[i, r : r + SQUARE, c : c + SQUARE] = GREEN if labels[i] == 1 else RED
  return x, labels, corners


def mass_in_square(maps, corners, pad: int = 2) -> np.ndarray:
  """Fraction of each map's total mass inside its square grown by `pad` pixels (0 for empty maps)."""
  maps = np.asarray(maps)
  out = []
  for m, (r, c) in zip(maps, corners):
    inside = m[max(r - pad, 0) : r + SQUARE + pad, max(c - pad, 0) : c + SQUARE + pad].sum()
    out.append(inside / m.sum() if m.sum() > 0 else 0.0)
  return np.asarray(out)


def colour_detector() -> models.CNN:
  """Binary CNN built by hand: block 1 passes the image through (1x1 identity conv, ReLU, 2x2 max
  pool); block 2 = the Grad-CAM layer, two 1x1 detectors relu(G - R - 0.3) ("green") and
  relu(R - G - 0.3) ("red"); average pool; logit z = 10 (green - red). On the dim noise both
  detectors are exactly 0, so the evidence for a class sits exactly on its square."""
  model = quick_model("cnn", 2, conv_features=(3, 2), kernel_sizes=1, pool="max", global_pool="avg")
  model.convs[0].kernel.value = jnp.eye(3).reshape(1, 1, 3, 3)
  model.convs[0].bias.value = jnp.zeros(3)
  detectors = jnp.array([[-1.0, 1.0], [1.0, -1.0], [0.0, 0.0]])  # rows R, G, B -> (green, red)
  model.convs[1].kernel.value = detectors.reshape(1, 1, 3, 2)
  model.convs[1].bias.value = jnp.full(2, -0.3)
  model.head.kernel.value = jnp.array([[10.0], [-10.0]])
  model.head.bias.value = jnp.zeros(1)
  return model


def quick_model(name: str, num_classes: int, seed: int = 0, **options):
  """A registry model with He-normal weights drawn by numpy (BatchNorm at mean 0 / var 1).

  Same structure as ``models.create_model`` but skips its initializers, whose truncated-normal
  sampling costs about a second of XLA compilation per distinct weight shape on CPU."""
  abstract = nnx.eval_shape(lambda: models.create_model(name, num_classes, rngs=nnx.Rngs(0), **options))
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(seed)

  def fill(path, value):
    leaf = re.findall(r"\['(\w+)'\]", jax.tree_util.keystr(path))[-1]
    if leaf in ("mean", "bias"):
      return jnp.zeros(value.shape, value.dtype)
    if leaf in ("var", "scale"):
      return jnp.ones(value.shape, value.dtype)
    fan_in = max(int(np.prod(value.shape[:-1])), 1)
    return jnp.asarray(rng.normal(0.0, np.sqrt(2.0 / fan_in), value.shape), value.dtype)

  return nnx.merge(graphdef, jax.tree.map_with_path(fill, state))


@pytest.fixture(scope="module")
def small_models():
  return {
    "binary": quick_model("cnn_bn3", 2, image_size=SIZE),
    "softmax3": quick_model("cnn", 3, conv_features=(4, 8), global_pool="avg"),
    "resnet": quick_model("resnet", 2, stage_sizes=(1, 1), num_filters=4, small_images=True),
  }


# ----------------------------------------------------------------------------- basic properties


@pytest.mark.parametrize("name", ["binary", "softmax3", "resnet"])
@pytest.mark.parametrize("plus_plus", [False, True])
def test_shapes_range_and_determinism(small_models, name, plus_plus):
  model = small_models[name]
  x = jax.random.uniform(jax.random.key(1), (3, SIZE, SIZE, 3))
  maps = gradcam.grad_cam(model, x, plus_plus=plus_plus)
  assert maps.shape == (3, SIZE, SIZE) and maps.dtype == jnp.float32
  maps = np.asarray(maps)
  assert np.all(np.isfinite(maps)) and maps.min() >= 0.0 and maps.max() <= 1.0
  peaks = maps.reshape(3, -1).max(axis=1)
  assert np.all((peaks == 0.0) | np.isclose(peaks, 1.0)), peaks  # normalised per image
  again = np.asarray(gradcam.grad_cam(model, x, plus_plus=plus_plus))
  np.testing.assert_array_equal(maps, again)
  # The predicted class is the default target.
  logits = model(x, train=False)
  explicit = gradcam.grad_cam(model, x, gradcam.predicted_class(logits), plus_plus=plus_plus)
  np.testing.assert_array_equal(maps, np.asarray(explicit))


def test_target_class_forms_and_validation(small_models):
  model = small_models["softmax3"]
  x = jax.random.uniform(jax.random.key(2), (2, SIZE, SIZE, 3))
  as_int = gradcam.grad_cam(model, x, 2)
  as_array = gradcam.grad_cam(model, x, np.array([2, 2]))
  np.testing.assert_array_equal(np.asarray(as_int), np.asarray(as_array))
  with pytest.raises(ValueError, match="target_class"):
    gradcam.grad_cam(model, x, 3)
  with pytest.raises(ValueError, match="target_class"):
    gradcam.grad_cam(model, x, np.array([0, -1]))
  with pytest.raises(ValueError, match="target_class"):
    gradcam.grad_cam(model, x, np.array([0, 1, 2]))
  with pytest.raises(ValueError, match="NHWC"):
    gradcam.grad_cam(model, x[0])


@pytest.mark.parametrize("plus_plus", [False, True])
def test_zero_gradient_and_zero_feature_models_give_zero_maps(plus_plus):
  x = jax.random.uniform(jax.random.key(3), (2, 16, 16, 3))
  # Head weights 0: the score does not depend on the features at all.
  no_gradient = quick_model("cnn", 2, conv_features=(4,), global_pool="avg")
  no_gradient.head.kernel.value = jnp.zeros_like(no_gradient.head.kernel.value)
  # Conv weights and bias 0: the (ReLU) feature map itself is all zero.
  no_features = quick_model("cnn", 2, conv_features=(4,), global_pool="avg")
  no_features.convs[0].kernel.value = jnp.zeros_like(no_features.convs[0].kernel.value)
  no_features.convs[0].bias.value = jnp.zeros_like(no_features.convs[0].bias.value)
  for model in (no_gradient, no_features):
    for target in (None, 0, 1):
      maps = np.asarray(gradcam.grad_cam(model, x, target, plus_plus=plus_plus))
      assert not np.any(np.isnan(maps))
      np.testing.assert_array_equal(maps, np.zeros((2, 16, 16), np.float32))


def test_traceable_inside_a_callers_jit(small_models):
  model = small_models["binary"]
  x = jax.random.uniform(jax.random.key(4), (2, SIZE, SIZE, 3))

  @nnx.jit
  def both(model, x):
    return gradcam.grad_cam(model, x), gradcam.grad_cam(model, x, jnp.array([0, 1]), plus_plus=True)

  plain, plus = both(model, x)
  np.testing.assert_allclose(np.asarray(plain), np.asarray(gradcam.grad_cam(model, x)), atol=1e-6)
  np.testing.assert_allclose(
    np.asarray(plus), np.asarray(gradcam.grad_cam(model, x, np.array([0, 1]), plus_plus=True)), atol=1e-6
  )


def test_grad_cam_plus_plus_weights_match_the_papers_closed_form():
  """Numpy transcription of the authors' implementation (Y = exp(S): first, second and third
  derivatives exp(S) g, exp(S) g^2, exp(S) g^3); it differs from ours only by the factor exp(S) per
  image, which the normalisation removes."""
  rng = np.random.default_rng(0)
  activations = np.maximum(rng.normal(size=(2, 3, 4, 5)), 0).astype(np.float32)
  grads = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  grads[0, :, :, 0] = 0.0  # a channel without gradient: denominator 0 -> alpha 0
  score = np.array([3.0, -1.5])
  expected = []
  for a, g, s in zip(activations, grads, score):
    first, second, third = np.exp(s) * g, np.exp(s) * g**2, np.exp(s) * g**3
    global_sum = a.reshape(-1, a.shape[-1]).sum(axis=0)
    denominator = 2.0 * second + third * global_sum
    alphas = second / np.where(denominator != 0.0, denominator, 1.0)
    expected.append(np.sum((np.maximum(first, 0.0) * alphas).reshape(-1, a.shape[-1]), axis=0) / np.exp(s))
  got = np.asarray(gradcam._channel_weights(jnp.asarray(activations), jnp.asarray(grads), True))
  np.testing.assert_allclose(got, np.stack(expected), rtol=1e-4, atol=1e-6)
  assert np.all(got[0, 0] == 0.0)
  plain = np.asarray(gradcam._channel_weights(jnp.asarray(activations), jnp.asarray(grads), False))
  np.testing.assert_allclose(plain, grads.mean(axis=(1, 2)), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- the maps point at the evidence


@pytest.mark.parametrize("plus_plus", [False, True])
def test_hand_built_model_maps_its_square(plus_plus):
  model = colour_detector()
  x, labels, corners = square_images(16, seed=0)
  logits = np.asarray(model(x, train=False))[:, 0]
  np.testing.assert_array_equal((logits >= 0).astype(int), labels)  # the model is right by construction

  predicted = np.asarray(gradcam.grad_cam(model, x, plus_plus=plus_plus))
  assert np.all(mass_in_square(predicted, corners) > 0.95)
  assert np.all(predicted.reshape(16, -1).max(axis=1) == pytest.approx(1.0))
  # The peak lies on the square, not elsewhere (catches flipped or transposed maps).
  for m, (r, c) in zip(predicted, corners):
    pr, pc = np.unravel_index(np.argmax(m), m.shape)
    assert r - 1 <= pr <= r + SQUARE and c - 1 <= pc <= c + SQUARE

  # Binary head: class-0 score is -z. The other class has no positive evidence anywhere.
  other = np.asarray(gradcam.grad_cam(model, x, 1 - labels, plus_plus=plus_plus))
  np.testing.assert_array_equal(other, np.zeros_like(other))
  green = labels == 1
  class1 = np.asarray(gradcam.grad_cam(model, x, 1, plus_plus=plus_plus))
  class0 = np.asarray(gradcam.grad_cam(model, x, 0, plus_plus=plus_plus))
  np.testing.assert_array_equal(class1[green], predicted[green])
  np.testing.assert_array_equal(class0[~green], predicted[~green])


@pytest.fixture(scope="module")
def trained_colour_model():
  """A small CNN (two conv blocks, average pool, binary head) trained on square_images."""
  model = quick_model("cnn", 2, conv_features=(8, 16), kernel_sizes=3, pool="max", global_pool="avg")
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, y):
    def loss_fn(model):
      return optax.sigmoid_binary_cross_entropy(model(x, train=True)[:, 0], y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  for i in range(60):
    x, y, _ = square_images(32, seed=100 + i)
    step(model, optimizer, x, y.astype(np.float32))
  return model


@pytest.mark.parametrize("plus_plus", [False, True])
def test_trained_model_maps_concentrate_on_the_square(trained_colour_model, plus_plus):
  model = trained_colour_model
  x, labels, corners = square_images(48, seed=7)
  logits = np.asarray(model(x, train=False))[:, 0]
  assert np.mean((logits >= 0) == labels) >= 0.95, "the tiny CNN did not learn the task"

  own = mass_in_square(gradcam.grad_cam(model, x, labels, plus_plus=plus_plus), corners)
  other = mass_in_square(gradcam.grad_cam(model, x, 1 - labels, plus_plus=plus_plus), corners)
  # The square (with its border) is 100 of 576 pixels (17%); the own-class map puts far more there.
  for cls in (0, 1):
    assert own[labels == cls].mean() > 0.3, (plus_plus, cls, own[labels == cls].mean())
    assert own[labels == cls].mean() > other[labels == cls].mean() + 0.2


# ----------------------------------------------------------------------------- overlay


def test_overlay():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
  heat = rng.uniform(size=(20, 30)).astype(np.float32)
  out = gradcam.overlay(image, heat)
  assert out.shape == image.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(gradcam.overlay(image, heat, alpha=0.0), image)
  # alpha 1: the colormap alone (jet: 0 -> dark blue, 1 -> dark red).
  pure = gradcam.overlay(image, np.stack([np.zeros(30), np.ones(30)] * 10), alpha=1.0)
  assert pure[0, 0, 2] > 100 and pure[0, 0, 0] < 50
  assert pure[1, 0, 0] > 100 and pure[1, 0, 2] < 50
  # A low-resolution map is resized to the image; NaN is treated as 0; grey images become RGB.
  assert gradcam.overlay(image, heat[::4, ::4]).shape == image.shape
  assert gradcam.overlay(image, np.full((5, 5), np.nan)).shape == image.shape
  assert gradcam.overlay(image[..., 0], heat).shape == image.shape
  with pytest.raises(TypeError):
    gradcam.overlay(image.astype(np.float32), heat)
  with pytest.raises(ValueError):
    gradcam.overlay(image, heat[None])
