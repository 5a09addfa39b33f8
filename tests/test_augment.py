"""Tests for vaeaug.data.augment (tiny images, CPU-fast)."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaeaug.data import augment as aug
from vaeaug.data.augment import (
  KERAS_RECIPE,
  PRESETS,
  AugmentConfig,
  affine_from_params,
  affine_matrices,
  apply_affine,
  augment_batch,
  flip_horizontal,
)

# One jitted entry point shared by the tests, so each config compiles once.
augment_jit = jax.jit(augment_batch, static_argnames="config")
# Jitted wrappers: eager dispatch of the many small ops is slower than compiling.
apply_jit = jax.jit(apply_affine, static_argnames="fill_mode")
_from_params_jit = jax.jit(affine_from_params, static_argnames=("height", "width"))


def _images(b=4, h=8, w=8, c=3, seed=0):
  return np.random.default_rng(seed).uniform(size=(b, h, w, c)).astype(np.float32)


def _params(b, **kw):
  """Identity parameters for affine_from_params, with overrides."""
  p = dict(angle=0.0, shear=0.0, zoom_row=1.0, zoom_col=1.0, shift_row=0.0, shift_col=0.0)
  p.update(kw)
  return {k: jnp.full((b,), v, jnp.float32) for k, v in p.items()}


def _matrices(b, h, w, **kw):
  return _from_params_jit(**_params(b, **kw), height=h, width=w)


# --------------------------------------------------------------------------
# Config.


def test_defaults_are_identity_and_presets():
  assert AugmentConfig().is_identity
  assert PRESETS["none"].is_identity
  assert PRESETS["keras"] is KERAS_RECIPE
  assert KERAS_RECIPE == AugmentConfig(flip_prob=0.5, shear=0.2, zoom=0.2)
  assert not KERAS_RECIPE.is_identity
  assert PRESETS["flip"].flip_prob == 0.5 and PRESETS["flip"].is_geometric_identity
  std = PRESETS["standard"]
  assert (std.flip_prob, std.rotation_degrees, std.zoom, std.translation, std.brightness, std.contrast) == (
    0.5,
    10.0,
    0.1,
    0.1,
    0.1,
    0.1,
  )
  # clip alone is not an augmentation.
  assert AugmentConfig(clip=None).is_identity
  assert not AugmentConfig(brightness=0.1).is_identity


def test_config_hashable_and_normalised():
  a = AugmentConfig(rotation_degrees=10, clip=[0, 1])
  b = AugmentConfig(rotation_degrees=10.0, clip=(0.0, 1.0))
  assert a == b and hash(a) == hash(b)
  assert a.clip == (0.0, 1.0) and isinstance(a.rotation_degrees, float)
  with pytest.raises(dataclasses.FrozenInstanceError):
    a.zoom = 0.3  # type: ignore[misc]


def test_from_dict_and_configdict():
  d = {"flip_prob": 0.5, "zoom": 0.2, "clip": [0.0, 1.0], "fill_mode": "reflect"}
  cfg = AugmentConfig.from_dict(d)
  assert cfg == AugmentConfig(flip_prob=0.5, zoom=0.2, fill_mode="reflect")
  ml_collections = pytest.importorskip("ml_collections")
  cd = ml_collections.ConfigDict({"shear": 0.2, "clip": None})
  assert AugmentConfig.from_dict(cd) == AugmentConfig(shear=0.2, clip=None)
  assert AugmentConfig.from_dict(KERAS_RECIPE.to_dict()) == KERAS_RECIPE


def test_from_dict_rejects_unknown_key():
  with pytest.raises(ValueError, match="rotation_range"):
    AugmentConfig.from_dict({"flip_prob": 0.5, "rotation_range": 10})


@pytest.mark.parametrize(
  "field, value",
  [
    ("flip_prob", -0.1),
    ("flip_prob", 1.5),
    ("rotation_degrees", -1.0),
    ("shear", -0.2),
    ("shear", 2.0),
    ("zoom", -0.1),
    ("zoom", 1.0),
    ("translation", -0.1),
    ("brightness", -0.1),
    ("contrast", -0.1),
    ("contrast", 1.5),
    ("rotation_degrees", float("nan")),
    ("zoom", "big"),
    ("fill_mode", "mirror"),
    ("clip", (1.0, 0.0)),
    ("clip", (0.0,)),
  ],
)
def test_bad_config_raises_naming_field(field, value):
  with pytest.raises(ValueError, match=field):
    AugmentConfig(**{field: value})


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="fill_mode"):
    apply_affine(jnp.zeros((1, 4, 4, 1)), jnp.eye(3)[None], "mirror")
  with pytest.raises(ValueError, match="NHWC"):
    augment_batch(jnp.zeros((4, 4, 1)), jax.random.key(0), KERAS_RECIPE)
  with pytest.raises(ValueError, match="floating"):
    augment_batch(jnp.zeros((1, 4, 4, 1), jnp.uint8), jax.random.key(0), KERAS_RECIPE)


# --------------------------------------------------------------------------
# Identity paths.


def test_identity_config_returns_input_unchanged():
  x = jnp.asarray(_images() * 3.0 - 1.0)  # outside [0, 1]: must not be clipped
  y = augment_batch(x, jax.random.key(0), AugmentConfig())
  assert y is x
  np.testing.assert_array_equal(np.asarray(augment_jit(x, jax.random.key(0), AugmentConfig())), np.asarray(x))


@pytest.mark.parametrize("fill_mode", aug.FILL_MODES)
def test_apply_affine_identity_is_exact(fill_mode):
  x = _images(b=2, h=6, w=7, c=2)
  eye = jnp.broadcast_to(jnp.eye(3), (2, 3, 3))
  np.testing.assert_array_equal(np.asarray(apply_jit(x, eye, fill_mode)), x)
  # Identity parameters through the composition give the identity too.
  m = _matrices(2, 6, 7)
  np.testing.assert_allclose(np.asarray(m), np.asarray(eye), atol=1e-6)
  np.testing.assert_allclose(np.asarray(apply_jit(x, m, fill_mode)), x, atol=1e-6)


def test_apply_affine_accepts_2x3():
  x = _images(b=2)
  m = _matrices(2, 8, 8, angle=0.3)
  np.testing.assert_allclose(np.asarray(apply_jit(x, m[:, :2])), np.asarray(apply_jit(x, m)), atol=0)


# --------------------------------------------------------------------------
# Flip.


def test_flip_horizontal():
  x = _images()
  f = np.asarray(flip_horizontal(jnp.asarray(x)))
  np.testing.assert_array_equal(f, x[:, :, ::-1, :])
  np.testing.assert_array_equal(np.asarray(flip_horizontal(f)), x)


def test_flip_prob_one_and_zero():
  x = _images(b=8)
  always = AugmentConfig(flip_prob=1.0)
  # A tiny brightness keeps the pipeline from taking the identity shortcut.
  never = AugmentConfig(flip_prob=0.0, brightness=1e-9, clip=None)
  for seed in range(3):
    k = jax.random.key(seed)
    np.testing.assert_array_equal(np.asarray(augment_jit(x, k, always)), x[:, :, ::-1, :])
    np.testing.assert_allclose(np.asarray(augment_jit(x, k, never)), x, atol=1e-8)


def test_flip_half_flips_some_exactly():
  x = _images(b=64, h=4, w=4, c=1)
  y = np.asarray(augment_jit(x, jax.random.key(1), PRESETS["flip"]))
  flipped = np.all(y == x[:, :, ::-1, :], axis=(1, 2, 3))
  kept = np.all(y == x, axis=(1, 2, 3))
  assert np.all(flipped | kept)  # each example is exactly one or the other
  assert 10 < flipped.sum() < 54


# --------------------------------------------------------------------------
# Geometry conventions.


def test_rotation_90_matches_rot90():
  x = _images(b=2, h=8, w=8, c=2)
  m = _matrices(2, 8, 8, angle=math.pi / 2)
  y = np.asarray(apply_jit(x, m))
  np.testing.assert_allclose(y, np.rot90(x, k=1, axes=(1, 2)), atol=1e-5)
  m = _matrices(2, 8, 8, angle=-math.pi / 2)
  y = np.asarray(apply_jit(x, m))
  np.testing.assert_allclose(y, np.rot90(x, k=-1, axes=(1, 2)), atol=1e-5)


def test_rotation_odd_size_180():
  x = _images(b=1, h=7, w=7, c=1)
  y = np.asarray(apply_jit(x, _matrices(1, 7, 7, angle=math.pi)))
  np.testing.assert_allclose(y, x[:, ::-1, ::-1, :], atol=1e-5)


@pytest.mark.parametrize("dr, dc", [(2, 0), (0, -3), (1, 2)])
def test_integer_translation_shifts(dr, dc):
  # Source = output + shift, so content moves by -shift.
  x = _images(b=2, h=12, w=12, c=1)
  y = np.asarray(apply_jit(x, _matrices(2, 12, 12, shift_row=dr, shift_col=dc)))
  expected = np.roll(x, shift=(-dr, -dc), axis=(1, 2))
  inner = (slice(None), slice(4, 8), slice(4, 8), slice(None))
  np.testing.assert_allclose(y[inner], expected[inner], atol=1e-6)


def test_fractional_translation_interpolates():
  x = _images(b=1, h=6, w=6, c=1)
  y = np.asarray(apply_jit(x, _matrices(1, 6, 6, shift_col=0.5)))
  np.testing.assert_allclose(y[:, :, :-1], 0.5 * (x[:, :, :-1] + x[:, :, 1:]), atol=1e-6)


def _centred_square(size=16, half=3):
  x = np.zeros((1, size, size, 1), np.float32)
  lo, hi = size // 2 - half, size // 2 + half
  x[:, lo:hi, lo:hi] = 1.0
  return x


def test_zoom_factor_below_one_enlarges_content():
  x = _centred_square()
  zin = np.asarray(apply_jit(x, _matrices(1, 16, 16, zoom_row=0.5, zoom_col=0.5), "constant"))
  zout = np.asarray(apply_jit(x, _matrices(1, 16, 16, zoom_row=2.0, zoom_col=2.0), "constant"))
  area = x.sum()
  assert zin.sum() > 3 * area  # ~4x
  assert zout.sum() < area / 3  # ~1/4
  # Still centred: symmetric under the 180-degree flip.
  np.testing.assert_allclose(zin, zin[:, ::-1, ::-1], atol=1e-6)


def test_anisotropic_zoom_only_stretches_one_axis():
  x = _centred_square()
  y = np.asarray(apply_jit(x, _matrices(1, 16, 16, zoom_row=0.5), "constant"))
  rows = np.nonzero(y[0, :, 8, 0] > 0.5)[0]
  cols = np.nonzero(y[0, 8, :, 0] > 0.5)[0]
  assert len(rows) > 1.5 * len(cols)
  assert len(cols) == 6


def test_fill_modes_at_borders():
  x = np.zeros((1, 8, 8, 1), np.float32)
  x[:, :, 0] = 1.0  # left column bright
  shift = _matrices(1, 8, 8, shift_col=-3)  # reads 3 columns left of the image
  nearest = np.asarray(apply_jit(x, shift, "nearest"))
  constant = np.asarray(apply_jit(x, shift, "constant", cval=0.25))
  np.testing.assert_array_equal(nearest[0, :, :4, 0], 1.0)  # edge column repeated
  np.testing.assert_array_equal(nearest[0, :, 4:, 0], 0.0)
  np.testing.assert_array_equal(constant[0, :, :3, 0], 0.25)
  np.testing.assert_array_equal(constant[0, :, 3, 0], 1.0)


@pytest.mark.parametrize(
  "mode, scipy_mode",
  [("nearest", "nearest"), ("constant", "grid-constant"), ("reflect", "reflect"), ("wrap", "grid-wrap")],
)
def test_matches_scipy_affine_transform(mode, scipy_mode):
  ndimage = pytest.importorskip("scipy.ndimage")
  x = _images(b=2, h=9, w=8, c=2)
  m = np.asarray(
    affine_matrices(
      jax.random.key(3), 2, AugmentConfig(rotation_degrees=40, shear=0.3, zoom=0.3, translation=0.2), 9, 8
    )
  )
  y = np.asarray(apply_jit(x, m, mode, cval=0.5))
  for i in range(2):
    for ch in range(2):
      ref = ndimage.affine_transform(x[i, :, :, ch].astype(np.float64), m[i], order=1, mode=scipy_mode, cval=0.5)
      np.testing.assert_allclose(y[i, :, :, ch], ref, atol=1e-5)


# --------------------------------------------------------------------------
# Random matrices.


def test_affine_matrices_ranges():
  cfg = AugmentConfig(zoom=0.2)
  m = np.asarray(affine_matrices(jax.random.key(0), 256, cfg, 16, 16))
  assert m.shape == (256, 3, 3) and m.dtype == np.float32
  np.testing.assert_array_equal(m[:, 2], np.tile([0.0, 0.0, 1.0], (256, 1)))
  zr, zc = m[:, 0, 0], m[:, 1, 1]
  assert np.all((zr >= 0.8 - 1e-6) & (zr <= 1.2 + 1e-6))
  assert not np.allclose(zr, zc)  # Keras-style independent x/y zoom
  np.testing.assert_array_equal(m[:, 0, 1], 0.0)
  tied = np.asarray(affine_matrices(jax.random.key(0), 256, AugmentConfig(zoom=0.2, zoom_xy_independent=False), 16, 16))
  np.testing.assert_array_equal(tied[:, 0, 0], tied[:, 1, 1])

  rot = np.asarray(affine_matrices(jax.random.key(1), 256, AugmentConfig(rotation_degrees=30), 16, 16))
  angles = np.degrees(np.arctan2(rot[:, 0, 1], rot[:, 0, 0]))
  assert np.all(np.abs(angles) <= 30 + 1e-3)
  assert angles.min() < -20 and angles.max() > 20
  # Rotations are about the centre: the centre pixel maps to itself.
  ctr = np.array([7.5, 7.5, 1.0])
  np.testing.assert_allclose(rot @ ctr, np.tile(ctr, (256, 1)), atol=1e-4)

  tr = np.asarray(affine_matrices(jax.random.key(2), 256, AugmentConfig(translation=0.25), 16, 8))
  assert np.all(np.abs(tr[:, 0, 2]) <= 4 + 1e-5) and np.all(np.abs(tr[:, 1, 2]) <= 2 + 1e-5)
  assert np.abs(tr[:, 0, 2]).max() > 3


def test_shear_matrix_convention():
  m = np.asarray(_matrices(1, 8, 8, shear=0.2))[0]
  np.testing.assert_allclose(m[:2, :2], [[1.0, -math.sin(0.2)], [0.0, math.cos(0.2)]], atol=1e-6)


# --------------------------------------------------------------------------
# Randomness and jit.


def test_per_example_randomness_and_determinism():
  cfg = AugmentConfig(rotation_degrees=30)
  x = np.repeat(_images(b=1, h=16, w=16), 6, axis=0)  # identical inputs
  y1 = np.asarray(augment_jit(x, jax.random.key(0), cfg))
  for i in range(1, 6):
    assert not np.allclose(y1[0], y1[i], atol=1e-4)
  y2 = np.asarray(augment_jit(x, jax.random.key(0), cfg))
  np.testing.assert_array_equal(y1, y2)
  y3 = np.asarray(augment_jit(x, jax.random.key(1), cfg))
  assert not np.allclose(y1, y3, atol=1e-4)


def test_legacy_uint32_key():
  x = _images(b=3, h=16, w=16)
  legacy = np.asarray(augment_jit(x, jax.random.PRNGKey(5), PRESETS["standard"]))
  assert legacy.shape == x.shape and np.all(np.isfinite(legacy))
  assert not np.allclose(legacy, x)


def test_enabling_one_transform_keeps_others_randomness():
  # Brightness delta is drawn from its own key: adding a flip must not change it.
  x = np.full((4, 4, 4, 1), 0.5, np.float32)  # flip-invariant image
  a = np.asarray(augment_jit(x, jax.random.key(9), AugmentConfig(brightness=0.2)))
  b = np.asarray(augment_jit(x, jax.random.key(9), AugmentConfig(brightness=0.2, flip_prob=0.5)))
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_shape_dtype_range(name):
  x = _images(b=1, h=16, w=16)
  y = augment_jit(x, jax.random.key(0), PRESETS[name])
  assert y.shape == x.shape and y.dtype == jnp.float32
  y = np.asarray(y)
  assert np.all(np.isfinite(y)) and y.min() >= 0.0 and y.max() <= 1.0


def test_half_precision_dtype_preserved():
  x = jnp.asarray(_images(b=2), jnp.bfloat16)
  y = augment_jit(x, jax.random.key(0), KERAS_RECIPE)
  assert y.dtype == jnp.bfloat16 and y.shape == x.shape


def test_inside_outer_jit_with_closure():
  cfg = KERAS_RECIPE

  @jax.jit
  def step(images, key):
    return augment_batch(images, key, cfg).mean()

  assert np.isfinite(float(step(_images(b=2), jax.random.key(0))))


# --------------------------------------------------------------------------
# Photometric.


def test_brightness_bounded_and_per_example():
  x = np.full((32, 4, 4, 3), 0.5, np.float32)
  cfg = AugmentConfig(brightness=0.1)
  y = np.asarray(augment_jit(x, jax.random.key(0), cfg))
  delta = y - x
  # One delta per image, shared by all pixels and channels.
  np.testing.assert_allclose(delta, delta[:, :1, :1, :1] * np.ones_like(delta), atol=1e-7)
  d = delta[:, 0, 0, 0]
  assert np.all(np.abs(d) <= 0.1 + 1e-6)
  assert len(np.unique(np.round(d, 6))) > 20


def test_contrast_preserves_mean_and_bounded():
  x = _images(b=16, h=8, w=8, c=3) * 0.5 + 0.25  # stays inside [0, 1] after +-30%
  cfg = AugmentConfig(contrast=0.3, clip=None)
  y = np.asarray(augment_jit(x, jax.random.key(0), cfg))
  np.testing.assert_allclose(y.mean(axis=(1, 2)), x.mean(axis=(1, 2)), atol=1e-5)
  np.testing.assert_allclose(y.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), atol=1e-5)
  mean = x.mean(axis=(1, 2), keepdims=True)
  factor = (y - mean) / (x - mean)
  f = factor[:, 0, 0, 0]
  np.testing.assert_allclose(factor, f[:, None, None, None] * np.ones_like(factor), atol=1e-3)
  assert np.all((f >= 0.7 - 1e-4) & (f <= 1.3 + 1e-4))
  assert f.std() > 0.05


def test_clip_respected_and_optional():
  x = np.full((8, 4, 4, 1), 0.95, np.float32)
  cfg = AugmentConfig(brightness=0.5)
  y = np.asarray(augment_jit(x, jax.random.key(0), cfg))
  assert y.max() <= 1.0 and y.min() >= 0.0 and np.any(y == 1.0)
  y = np.asarray(augment_jit(x, jax.random.key(0), dataclasses.replace(cfg, clip=None)))
  assert y.max() > 1.0
  y = np.asarray(augment_jit(x, jax.random.key(0), dataclasses.replace(cfg, clip=(-1.0, 0.9))))
  assert y.max() <= 0.9


def test_batch_of_one():
  x = _images(b=1, h=8, w=8, c=1)
  for cfg in PRESETS.values():
    y = augment_jit(x, jax.random.key(2), cfg)
    assert y.shape == (1, 8, 8, 1)
