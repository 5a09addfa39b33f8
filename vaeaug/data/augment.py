"""Classic image augmentation in JAX: per-example random, jit-able.

Everything works on float NHWC batches. Each example draws its own
parameters. The geometric transforms (rotation, shear, zoom, translation)
are composed into one 3x3 affine matrix per example and applied in a single
bilinear resampling pass, so stacking transforms does not blur the image more
than once. Horizontal flip is an exact array reversal, not a resampling.

Conventions (all matrices use them):

* Coordinates are ``(row, col)`` pixel indices, with ``row`` pointing down,
  and pixel centres at integer positions.
* A matrix ``M`` maps *output* pixel coordinates to *input* (source)
  coordinates: ``[r_src, c_src, 1] = M @ [r_out, c_out, 1]``. This is the
  inverse-mapping convention of ``scipy.ndimage.affine_transform`` and Keras.
* The random transforms are built about the image centre
  ``((H - 1) / 2, (W - 1) / 2)``, as ``C(+ctr) @ R @ T @ S @ Z @ C(-ctr)``,
  the order Keras' ``ImageDataGenerator`` uses.
* Rotation by positive ``theta`` turns the content counter-clockwise as
  displayed (row 0 at the top); +90 degrees on a square image equals
  ``np.rot90(image)`` (axes 0, 1).
* Shear is an angle in **radians**: ``S = [[1, -sin(s)], [0, cos(s)]]``, as in
  Keras <= 2.2.0 ``shear_range``. (Later ``keras_preprocessing`` and
  ``tf.keras`` read the same number as *degrees*, so their
  ``shear_range=0.2`` is a near no-op shear of 0.2 degrees.)
* Zoom follows Keras: the sampled factor ``z`` in ``[1 - r, 1 + r]`` scales
  the *source* coordinates, so ``z < 1`` zooms in (content looks bigger) and
  ``z > 1`` zooms out. Like Keras, rows and columns get independent factors
  unless ``zoom_xy_independent=False``.
* Translation shifts the source coordinates by ``u * translation * H`` rows
  and ``u * translation * W`` columns, ``u`` uniform in ``[-1, 1]``.

Fill modes for pixels that map outside the input are applied per bilinear
corner, matching ``scipy.ndimage`` order-1 modes: ``nearest`` (repeat the edge
pixel; Keras' default), ``constant`` (``cval``; scipy's ``grid-constant``, so
values blend towards ``cval`` within one pixel of the edge), ``reflect``
(``d c b a | a b c d | d c b a``) and ``wrap`` (periodic; scipy's
``grid-wrap``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

FILL_MODES = ("nearest", "constant", "reflect", "wrap")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Augmentation ranges. Frozen and hashable so it can be a static jit arg.

  Attributes:
    flip_prob: probability of a horizontal flip, in [0, 1].
    rotation_degrees: angle uniform in [-d, d] degrees.
    shear: shear angle uniform in [-s, s] radians, s < pi/2.
    zoom: Keras-style zoom factor uniform in [1 - z, 1 + z], z < 1.
    translation: shift uniform in [-t, t] times the height/width.
    brightness: additive delta uniform in [-b, b].
    contrast: factor uniform in [1 - c, 1 + c] about each channel's mean
      (as ``tf.image.adjust_contrast``), c <= 1.
    fill_mode: one of ``FILL_MODES``.
    clip: ``(lo, hi)`` to clip the output to, or None.
    zoom_xy_independent: draw separate row/column zoom factors (Keras).
    cval: fill value for ``fill_mode="constant"``.
  """

  flip_prob: float = 0.0
  rotation_degrees: float = 0.0
  shear: float = 0.0
  zoom: float = 0.0
  translation: float = 0.0
  brightness: float = 0.0
  contrast: float = 0.0
  fill_mode: str = "nearest"
  clip: tuple[float, float] | None = (0.0, 1.0)
  zoom_xy_independent: bool = True
  cval: float = 0.0

  def __post_init__(self):
    # Normalise numbers to float and clip to a tuple so that equal configs
    # hash equally (a list clip would not be hashable at all).
    for name in ("flip_prob", "rotation_degrees", "shear", "zoom", "translation", "brightness", "contrast", "cval"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
          value = float(value)  # numpy scalars, 0-d arrays
        except (TypeError, ValueError):
          raise ValueError(f"AugmentConfig.{name} must be a number, got {value!r}") from None
      if not math.isfinite(value):
        raise ValueError(f"AugmentConfig.{name} must be finite, got {value!r}")
      object.__setattr__(self, name, float(value))

    _check_range("flip_prob", self.flip_prob, 0.0, 1.0)
    _check_range("rotation_degrees", self.rotation_degrees, 0.0, None)
    _check_range("shear", self.shear, 0.0, math.pi / 2, hi_open=True)
    _check_range("zoom", self.zoom, 0.0, 1.0, hi_open=True)
    _check_range("translation", self.translation, 0.0, None)
    _check_range("brightness", self.brightness, 0.0, None)
    _check_range("contrast", self.contrast, 0.0, 1.0)

    if self.fill_mode not in FILL_MODES:
      raise ValueError(f"AugmentConfig.fill_mode must be one of {FILL_MODES}, got {self.fill_mode!r}")
    object.__setattr__(self, "zoom_xy_independent", bool(self.zoom_xy_independent))

    if self.clip is not None:
      try:
        lo, hi = (float(v) for v in self.clip)
      except (TypeError, ValueError):
        raise ValueError(f"AugmentConfig.clip must be None or a (lo, hi) pair, got {self.clip!r}") from None
      if not lo <= hi:
        raise ValueError(f"AugmentConfig.clip needs lo <= hi, got {self.clip!r}")
      object.__setattr__(self, "clip", (lo, hi))

  @classmethod
  def from_dict(cls, d: Mapping[str, Any] | Any) -> AugmentConfig:
    """Builds a config from a dict or ``ml_collections.ConfigDict``.

    Missing keys take their defaults; unknown keys raise ValueError.
    """
    if hasattr(d, "to_dict"):  # ConfigDict / FrozenConfigDict
      d = d.to_dict()
    if not isinstance(d, Mapping):
      raise ValueError(f"AugmentConfig.from_dict needs a mapping, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in d if k not in known)
    if unknown:
      raise ValueError(f"Unknown AugmentConfig key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    return cls(**dict(d))

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @property
  def is_geometric_identity(self) -> bool:
    return self.rotation_degrees == 0.0 and self.shear == 0.0 and self.zoom == 0.0 and self.translation == 0.0

  @property
  def is_identity(self) -> bool:
    """True when no transform is enabled (``clip`` alone does not count)."""
    return self.flip_prob == 0.0 and self.is_geometric_identity and self.brightness == 0.0 and self.contrast == 0.0


def _check_range(name, value, lo, hi, hi_open=False):
  ok = value >= lo and (hi is None or (value < hi if hi_open else value <= hi))
  if not ok:
    if hi is None:
      want = f">= {lo}"
    else:
      want = f"in [{lo}, {hi}{')' if hi_open else ']'}"
    raise ValueError(f"AugmentConfig.{name} must be {want}, got {value!r}")


# Keras ImageDataGenerator(horizontal_flip=True, shear_range=0.2, zoom_range=0.2).
KERAS_RECIPE = AugmentConfig(flip_prob=0.5, shear=0.2, zoom=0.2)

PRESETS: dict[str, AugmentConfig] = {
  "none": AugmentConfig(),
  "keras": KERAS_RECIPE,
  "flip": AugmentConfig(flip_prob=0.5),
  "standard": AugmentConfig(
    flip_prob=0.5,
    rotation_degrees=10.0,
    zoom=0.1,
    translation=0.1,
    brightness=0.1,
    contrast=0.1,
  ),
}


# ---------------------------------------------------------------------------
# Geometry.


def flip_horizontal(images: jax.Array) -> jax.Array:
  """Mirrors every image left-right (NHWC)."""
  return images[:, :, ::-1, :]


def affine_from_params(angle, shear, zoom_row, zoom_col, shift_row, shift_col, height: int, width: int) -> jax.Array:
  """Composes per-example parameters into (B, 3, 3) output->input matrices.

  ``angle`` and ``shear`` are in radians, zooms are source scale factors
  (< 1 zooms in), shifts are in pixels. All arguments have shape (B,).
  """
  angle, shear, zoom_row, zoom_col, shift_row, shift_col = (
    jnp.asarray(a, jnp.float32) for a in (angle, shear, zoom_row, zoom_col, shift_row, shift_col)
  )
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  sh_s, sh_c = jnp.sin(shear), jnp.cos(shear)

  # Linear part A = R @ S @ Z, translation t = R @ shift (T sits between R
  # and S, so the shift is expressed in the rotated frame, as in Keras).
  # R = [[cos, sin], [-sin, cos]], S = [[1, -sh_s], [0, sh_c]],
  # Z = diag(zoom_row, zoom_col); written out to avoid tiny matmuls.
  rs00, rs01 = cos, -cos * sh_s + sin * sh_c
  rs10, rs11 = -sin, sin * sh_s + cos * sh_c
  a00, a01 = rs00 * zoom_row, rs01 * zoom_col
  a10, a11 = rs10 * zoom_row, rs11 * zoom_col
  t0 = cos * shift_row + sin * shift_col
  t1 = -sin * shift_row + cos * shift_col

  # Conjugate by the centre shift: src = A @ (out - ctr) + t + ctr.
  cr, cc = (height - 1) / 2.0, (width - 1) / 2.0
  b0 = t0 + cr - (a00 * cr + a01 * cc)
  b1 = t1 + cc - (a10 * cr + a11 * cc)

  zeros, ones = jnp.zeros_like(cos), jnp.ones_like(cos)
  return jnp.stack(
    [
      jnp.stack([a00, a01, b0], -1),
      jnp.stack([a10, a11, b1], -1),
      jnp.stack([zeros, zeros, ones], -1),
    ],
    axis=-2,
  )


def affine_matrices(key: jax.Array, batch_size: int, config: AugmentConfig, height: int, width: int) -> jax.Array:
  """Samples one (3, 3) output->input matrix per example: (B, 3, 3) float32.

  Disabled transforms contribute exact identities, and each parameter
  always uses the same column of one uniform draw, so enabling one
  transform does not change the values drawn for the others.
  """
  u = jax.random.uniform(key, (batch_size, 6), jnp.float32, -1.0, 1.0)
  angle = u[:, 0] * math.radians(config.rotation_degrees)
  shear = u[:, 1] * config.shear
  zoom_row = 1.0 + u[:, 2] * config.zoom
  zoom_col = 1.0 + (u[:, 3] if config.zoom_xy_independent else u[:, 2]) * config.zoom
  shift_row = u[:, 4] * (config.translation * height)
  shift_col = u[:, 5] * (config.translation * width)
  return affine_from_params(angle, shear, zoom_row, zoom_col, shift_row, shift_col, height, width)


def _fix_index(idx, size, fill_mode):
  """Maps integer source indices into [0, size); returns (index, in_bounds)."""
  if fill_mode == "nearest":
    return jnp.clip(idx, 0, size - 1), None
  if fill_mode == "constant":
    valid = (idx >= 0) & (idx < size)
    return jnp.clip(idx, 0, size - 1), valid
  if fill_mode == "reflect":
    m = jnp.mod(idx, 2 * size)
    return jnp.where(m >= size, 2 * size - 1 - m, m), None
  if fill_mode == "wrap":
    return jnp.mod(idx, size), None
  raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")


def apply_affine(images: jax.Array, matrices: jax.Array, fill_mode: str = "nearest", cval: float = 0.0) -> jax.Array:
  """Resamples each image with its own output->input matrix (bilinear).

  Args:
    images: (B, H, W, C) float array.
    matrices: (B, 3, 3) or (B, 2, 3); see the module docstring.
    fill_mode: one of ``FILL_MODES``.
    cval: fill value for ``constant``.
  """
  if fill_mode not in FILL_MODES:
    raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")
  b, h, w, c = images.shape
  dtype = images.dtype
  x = images.astype(jnp.float32).reshape(b, h * w, c)
  m = jnp.asarray(matrices, jnp.float32)

  rows = jnp.repeat(jnp.arange(h, dtype=jnp.float32), w)[None]  # (1, HW)
  cols = jnp.tile(jnp.arange(w, dtype=jnp.float32), h)[None]
  # Elementwise rather than a matmul: accelerators may run float32 matmuls
  # at reduced precision, which would jitter the sampling positions.
  src_r = m[:, 0, 0:1] * rows + m[:, 0, 1:2] * cols + m[:, 0, 2:3]
  src_c = m[:, 1, 0:1] * rows + m[:, 1, 1:2] * cols + m[:, 1, 2:3]

  r0f, c0f = jnp.floor(src_r), jnp.floor(src_c)
  fr, fc = src_r - r0f, src_c - c0f
  r0, c0 = r0f.astype(jnp.int32), c0f.astype(jnp.int32)

  ri = (_fix_index(r0, h, fill_mode), _fix_index(r0 + 1, h, fill_mode))
  ci = (_fix_index(c0, w, fill_mode), _fix_index(c0 + 1, w, fill_mode))
  wr = (1.0 - fr, fr)
  wc = (1.0 - fc, fc)

  gather = jax.vmap(lambda img, idx: img[idx])  # (HW, C), (HW,) -> (HW, C)
  out = jnp.zeros_like(x)
  for i in range(2):
    (r_idx, r_ok) = ri[i]
    for j in range(2):
      (c_idx, c_ok) = ci[j]
      vals = gather(x, r_idx * w + c_idx)
      if fill_mode == "constant":
        ok = (r_ok & c_ok)[..., None]
        vals = jnp.where(ok, vals, jnp.asarray(cval, jnp.float32))
      out = out + (wr[i] * wc[j])[..., None] * vals
  return out.reshape(b, h, w, c).astype(dtype)


# ---------------------------------------------------------------------------
# Full pipeline.


def augment_batch(images: jax.Array, key: jax.Array, config: AugmentConfig) -> jax.Array:
  """Randomly augments a (B, H, W, C) float batch, independently per example.

  Order: flip, geometric (one resampling), contrast, brightness, clip.
  ``config`` must be static under jit (it is hashable). An identity config
  returns ``images`` itself, untouched and unclipped.
  """
  if not isinstance(config, AugmentConfig):
    raise TypeError(f"config must be an AugmentConfig, got {type(config).__name__}")
  if images.ndim != 4:
    raise ValueError(f"images must be NHWC (4-D), got shape {images.shape}")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"images must be floating point, got {images.dtype}")
  if config.is_identity:
    return images

  b, h, w, _ = images.shape
  dtype = images.dtype
  # Fixed split regardless of which transforms are on, so switching one
  # transform on or off leaves the randomness of the others unchanged.
  k_flip, k_geo, k_contrast, k_bright = jax.random.split(key, 4)
  x = images.astype(jnp.float32)

  if config.flip_prob > 0.0:
    do_flip = jax.random.bernoulli(k_flip, config.flip_prob, (b,))
    x = jnp.where(do_flip[:, None, None, None], flip_horizontal(x), x)

  if not config.is_geometric_identity:
    mats = affine_matrices(k_geo, b, config, h, w)
    x = apply_affine(x, mats, config.fill_mode, config.cval)

  if config.contrast > 0.0:
    factor = jax.random.uniform(k_contrast, (b, 1, 1, 1), jnp.float32, 1.0 - config.contrast, 1.0 + config.contrast)
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    x = (x - mean) * factor + mean

  if config.brightness > 0.0:
    delta = jax.random.uniform(k_bright, (b, 1, 1, 1), jnp.float32, -config.brightness, config.brightness)
    x = x + delta

  if config.clip is not None:
    x = jnp.clip(x, config.clip[0], config.clip[1])
  return x.astype(dtype)
