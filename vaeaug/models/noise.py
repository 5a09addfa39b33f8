"""Input corruption for the denoising autoencoder (jit-able, independent randomness per example).

``corrupt(images, key, config)`` returns a corrupted copy of a batch of float images
``(N, H, W, C)`` in [0, 1] (same shape and dtype; the result stays in [0, 1]). Every example gets
its own noise draw (one ``key`` for the batch, split internally). ``config`` is a frozen
``NoiseConfig``; it is hashable, so it can be a static argument of ``jax.jit`` (or be closed over
with ``functools.partial``).

Kinds
-----
``"gaussian"``
    ``clip(x + sigma * eps, 0, 1)`` with ``eps ~ N(0, 1)`` i.i.d. per pixel and channel. Because
    of the clipping the realised noise std is a bit below ``sigma`` near 0 and 1.
``"salt_pepper"``
    Each pixel (all of its channels together) is, independently, set to 0 with probability
    ``p / 2``, to 1 with probability ``p / 2``, and kept otherwise: a fraction ``p`` of the pixels
    is replaced on average, half black, half white.
``"masking"``
    Random erasing: one axis-aligned rectangle per image, filled with the constant 0.5 (mid-grey,
    the mean of the [0, 1] range - neither black nor white, so it is not confused with
    salt-and-pepper or with real dark/bright regions). Its area is ``mask_fraction`` of the image
    up to rounding to whole pixels: the aspect ratio ``h / w`` is drawn log-uniformly from
    ``[max(f, 1/3), min(1/f, 3)]`` (``f = mask_fraction``), which keeps both sides within the
    image, so no clipping changes the area; the position is uniform over the positions where the
    rectangle fits. ``mask_fraction = 0`` leaves the image unchanged, ``1`` fills all of it.

``sigma = 0`` / ``p = 0`` / ``mask_fraction = 0`` give the identity (exactly).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

__all__ = ["NOISE_KINDS", "NoiseConfig", "corrupt"]

NOISE_KINDS = ("gaussian", "salt_pepper", "masking")
MASK_FILL = 0.5


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
  """What ``corrupt`` does. Invalid values raise ``ValueError`` (naming the field) on creation.

  Attributes:
    kind: "gaussian" | "salt_pepper" | "masking".
    sigma: std of the additive Gaussian noise (images in [0, 1]); result clipped to [0, 1].
    p: salt-and-pepper fraction of pixels replaced (half by 0, half by 1; all channels of a
      pixel together), in [0, 1].
    mask_fraction: masking: area fraction, in [0, 1], of the one rectangle erased per image
      (filled with 0.5).
  """

  kind: str = "gaussian"
  sigma: float = 0.1
  p: float = 0.05
  mask_fraction: float = 0.25

  def __post_init__(self):
    self.validate()

  def validate(self) -> None:
    if self.kind not in NOISE_KINDS:
      raise ValueError(f"NoiseConfig.kind must be one of {NOISE_KINDS}, got {self.kind!r}")
    checks = (("sigma", 0.0, math.inf), ("p", 0.0, 1.0), ("mask_fraction", 0.0, 1.0))
    for name, lo, hi in checks:
      value = getattr(self, name)
      if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not lo <= value <= hi
      ):
        bounds = f">= {lo}" if hi == math.inf else f"in [{lo}, {hi}]"
        raise ValueError(f"NoiseConfig.{name} must be a finite number {bounds}, got {value!r}")


def _check_images(images: jax.Array) -> None:
  if images.ndim != 4:
    raise ValueError(f"corrupt expects NHWC images (N, H, W, C), got shape {images.shape}")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(
      f"corrupt expects float images in [0, 1], got dtype {images.dtype} "
      "(convert uint8 with vaeaug.data.pipeline.to_float first)"
    )


def _gaussian(images, key, sigma):
  if sigma == 0:
    return images
  noise = jax.random.normal(key, images.shape, jnp.float32) * sigma
  return jnp.clip(images + noise.astype(images.dtype), 0.0, 1.0)


def _salt_pepper(images, key, p):
  if p == 0:
    return images
  n, h, w, _ = images.shape
  u = jax.random.uniform(key, (n, h, w, 1))
  out = jnp.where(u < p / 2, jnp.zeros((), images.dtype), images)
  return jnp.where((u >= p / 2) & (u < p), jnp.ones((), images.dtype), out)


def _masking(images, key, fraction):
  if fraction == 0:
    return images
  n, h, w, _ = images.shape
  k_ratio, k_top, k_left = jax.random.split(key, 3)
  lo, hi = math.log(max(fraction, 1 / 3)), math.log(min(1 / fraction, 3.0))
  ratio = jnp.exp(jax.random.uniform(k_ratio, (n,), minval=lo, maxval=hi))  # mask h / w
  mh = jnp.clip(jnp.round(jnp.sqrt(fraction * ratio) * h), 0, h).astype(jnp.int32)
  mw = jnp.clip(jnp.round(jnp.sqrt(fraction / ratio) * w), 0, w).astype(jnp.int32)
  # uniform position among the (h - mh + 1) x (w - mw + 1) positions where it fits
  top = jnp.floor(jax.random.uniform(k_top, (n,)) * (h - mh + 1)).astype(jnp.int32)
  left = jnp.floor(jax.random.uniform(k_left, (n,)) * (w - mw + 1)).astype(jnp.int32)
  rows, cols = jnp.arange(h), jnp.arange(w)
  in_rows = (rows[None, :] >= top[:, None]) & (rows[None, :] < (top + mh)[:, None])  # (n, h)
  in_cols = (cols[None, :] >= left[:, None]) & (cols[None, :] < (left + mw)[:, None])  # (n, w)
  mask = in_rows[:, :, None, None] & in_cols[:, None, :, None]
  return jnp.where(mask, jnp.asarray(MASK_FILL, images.dtype), images)


def corrupt(images: jax.Array, key: jax.Array, config: NoiseConfig) -> jax.Array:
  """Corrupted copy of float NHWC ``images`` in [0, 1] (same shape / dtype), see module doc.

  ``config`` must be a ``NoiseConfig`` (validated here too); ``key`` a ``jax.random`` key.
  """
  if not isinstance(config, NoiseConfig):
    raise ValueError(f"config must be a NoiseConfig, got {type(config).__name__}")
  config.validate()
  images = jnp.asarray(images)
  _check_images(images)
  if config.kind == "gaussian":
    return _gaussian(images, key, float(config.sigma))
  if config.kind == "salt_pepper":
    return _salt_pepper(images, key, float(config.p))
  return _masking(images, key, float(config.mask_fraction))
