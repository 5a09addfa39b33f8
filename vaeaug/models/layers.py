"""Fast-path layer ops shared by the classifiers and the autoencoders.

Pooling
-------
XLA's ``reduce_window`` max-pool (what ``flax.linen.max_pool`` / ``nnx.max_pool`` lower to) has a
slow backward pass on CPU (``select_and_scatter_add``: ~3-7x slower than the ops here, measured on
the 2-core dev box). The pools below are written with reshapes / strided slices and elementwise
``jnp.maximum`` / means instead, which XLA fuses well in both directions.

* ``max_pool_2x2`` / ``avg_pool_2x2``: window 2, stride 2, ``VALID``. An odd height or width is
  handled like ``VALID`` pooling: the last row / column is cropped (dropped), so an input of
  ``(..., H, W, C)`` gives ``(..., H // 2, W // 2, C)``. The forward pass equals
  ``nnx.max_pool(x, (2, 2), (2, 2))`` / ``nnx.avg_pool(...)`` exactly.
* ``max_pool_3x3_s2``: window 3, stride 2, padding 1 on every side (the ResNet ImageNet stem,
  PyTorch convention; padded cells never win), output ``ceil(H / 2)``. Equals
  ``nnx.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))``, gradient included. Its backward
  is a custom VJP: the autodiff of the nine-way ``jnp.maximum`` chain was one XLA fusion that
  re-evaluates the chain per element (~9% of a ResNet-18 step at 64 px); the custom backward
  marks each window's first maximum and scatters with strided pads, one fused pass (-9% CPU
  time per ResNet-18 step).

Gradients at ties (max pools). Both max pools take a custom VJP that sends each window's
gradient to its first maximum in row-major order, the entry ``reduce_window``'s
``select_and_scatter`` (and PyTorch's ``max_pool2d``) picks, so the gradient equals
``nnx.max_pool``'s exactly, ties (ReLU zeros, repeated values) included. For the 2x2 pool the
autodiff of the ``jnp.maximum`` chain (which split tied gradients evenly) was one fusion that
re-read the upstream gradient per comparison: 3.5 ms of a 64 px ``cnn_bn3`` step at batch 64 on
one core, 0.7 ms as the custom backward.

Convolutions on tiny feature maps
---------------------------------
XLA's CPU convolution is pathologically slow when the *input* feature map is tiny: a 3x3 conv on a
2x2 map, batch 64, takes ~0.9 s at 512 channels and ~10 s at 1024 (vs ~8 ms / ~22 ms as an
explicit patches-times-kernel matmul), and 1x1 / 3x3 maps are also slower. That is exactly the last
stage of a ResNet at 32-64 px (ResNet-18, ImageNet stem, 64 px: 2.7 s of a 2.8 s forward pass).
``conv_general_dilated`` (a drop-in for ``jax.lax.conv_general_dilated``, for ``nnx.Conv``'s
``conv_general_dilated=`` argument) and ``Conv`` (``nnx.Conv`` using it) compute 2-D NHWC convs
whose input has ``H * W <= SMALL_SPATIAL_MAX`` (no dilation, no groups) as im2col + one matmul,
and everything else with XLA's convolution. Both give the same result up to float rounding.

Convolutions with few channels (CPU only). XLA:CPU runs a conv with a handful of channels at a few
GFLOP/s: ``cnn_bn3``'s 3x3 3 -> 4 first conv on 64x64 maps took 16 ms forward at batch 64 on one
core, a third of the train step. Stride-1 convs with at most ``SHIFT_CONV_MAX_MACS`` multiply-adds
per output pixel (``kh * kw * C_in * C_out``) therefore run forward as a sum of shifted input
channels times kernel rows, one fused loop (2 ms), and backward as XLA's convolution VJP on
``SHIFT_CONV_BACKWARD_CHUNKS`` batch chunks (XLA:CPU runs one small conv on one thread but
independent ones concurrently). Results equal XLA's up to float rounding.

BatchNorm. ``BatchNorm`` is ``nnx.BatchNorm`` (same arguments and variables) whose training-mode
statistics come from ``batch_statistics``: each example's pixels folded into rows of at least
``STATS_LANES`` values, so a 4-channel layer does not reduce 4-wide rows.

Precision
---------
``compute_dtype(name)``: the activation / matmul dtype of a model ("float32", "bfloat16",
"float16"; None = float32). Models take it as ``dtype=`` and keep float32 parameters.

Activations
-----------
``activation(name)`` maps a name ("relu", "tanh", "leaky_relu", "swish", ...) to a function;
``ACTIVATIONS`` lists them. Unknown names raise ``ValueError``.

Upsampling
----------
``pixel_shuffle(x, r)`` (depth-to-space, the sub-pixel convolution shuffle of Shi et al. 2016):
``(..., H, W, C * r * r) -> (..., H * r, W * r, C)`` with PyTorch's ``nn.PixelShuffle`` channel
order: input channel ``c * r * r + i * r + j`` goes to output channel ``c`` at row ``h * r + i``,
column ``w * r + j``. A pure reshape / transpose (fast both ways under XLA).

The im2col path is also taken when the conv's OUTPUT map has at most ``IM2COL_MAX_OUTPUT_PIXELS``
(16) pixels - e.g. a stride-2 conv from a 4x4 to a 2x2 map (256 -> 512 channels, batch 64: ~0.36 s
forward + backward in XLA vs ~0.012 s as im2col), the last encoder stage of the autoencoders.

Kernel gradients of large-map convs (CPU only). XLA computes d(conv)/d(kernel) as a convolution
over batch/feature-transposed activations: transposes (which re-run the fused BatchNorm / ReLU
producers) plus a conv whose "window" is the whole map - on CPU about 2x the time of the same
contraction as matmuls for a 3x3 32 -> 128 conv on 32x32 maps (the last decoder stage of the
autoencoders) and for the 3 -> 96 first conv of ``cnn96``. Convs with an input map of at least
``KERNEL_GRAD_MIN_PIXELS`` pixels and ``KERNEL_GRAD_MIN_FEATURES`` output channels therefore
take a custom VJP: forward and input gradient are XLA's, the kernel gradient is one matmul per
kernel tap contracting (N, H, W) (one per kernel row when the input has few channels). So do all
1x1 convs (``KERNEL_GRAD_1X1``; the bottlenecks of ResNet-50, where XLA's transposed
activations took a third of the step: -27% CPU time per step). Smaller maps / fewer channels
with larger kernels (e.g. 3x3 ResNet stages with 64 channels, the 32 -> 3 decoder output) were
measured faster with XLA's own kernel gradient and keep it. Results equal XLA's up to float
rounding; on GPU / TPU the plain XLA convolution is used.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

__all__ = [
  "ACTIVATIONS",
  "BatchNorm",
  "Conv",
  "IM2COL_MAX_OUTPUT_PIXELS",
  "SMALL_SPATIAL_MAX",
  "activation",
  "conv_general_dilated",
  "avg_pool_2x2",
  "batch_statistics",
  "compute_dtype",
  "global_avg_pool",
  "max_pool_2x2",
  "max_pool_3x3_s2",
  "pixel_shuffle",
  "pool_2x2",
]

# ----------------------------------------------------------------------------- activations


def _identity(x: jax.Array) -> jax.Array:
  return x


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "relu": jax.nn.relu,
  "tanh": jnp.tanh,
  "leaky_relu": jax.nn.leaky_relu,  # negative slope 0.01 (PyTorch default)
  "swish": jax.nn.swish,  # = silu: x * sigmoid(x)
  "silu": jax.nn.silu,
  "gelu": jax.nn.gelu,
  "elu": jax.nn.elu,
  "sigmoid": jax.nn.sigmoid,
  # MobileNets: ReLU6 (v2), hard-swish x * relu6(x + 3) / 6 and its gate relu6(x + 3) / 6 (v3).
  "relu6": jax.nn.relu6,
  "hard_swish": jax.nn.hard_swish,
  "hard_sigmoid": jax.nn.hard_sigmoid,
  "identity": _identity,
  "linear": _identity,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """The activation function called ``name`` (case-insensitive); ValueError if unknown."""
  if not isinstance(name, str) or name.lower() not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name.lower()]


# ----------------------------------------------------------------------------- precision

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def compute_dtype(value) -> jnp.dtype:
  """The activation / matmul dtype named by ``value`` ("float32" | "bfloat16" | "float16", a
  numpy / jax dtype, or None for float32). Parameters stay float32 whatever this is."""
  if value is None:
    return jnp.dtype(jnp.float32)
  try:
    dtype = jnp.dtype(value)
  except TypeError:
    dtype = None
  if dtype is None or dtype.name not in COMPUTE_DTYPES:
    raise ValueError(f"compute dtype must be one of {COMPUTE_DTYPES}, got {value!r}")
  return dtype


# ----------------------------------------------------------------------------- pooling


def _check_spatial(x: jax.Array, name: str, min_size: int) -> tuple[int, int]:
  if x.ndim < 3:
    raise ValueError(f"{name} expects (..., H, W, C) inputs, got shape {x.shape}")
  h, w = x.shape[-3], x.shape[-2]
  if h < min_size or w < min_size:
    raise ValueError(f"{name} needs H, W >= {min_size}, got shape {x.shape}")
  return h, w


def _windows_2x2(x: jax.Array, name: str) -> tuple[jax.Array, ...]:
  """The four entries of every 2x2 window, each (..., H//2, W//2, C); odd H/W cropped."""
  h, w = _check_spatial(x, name, 2)
  h2, w2 = h // 2, w // 2
  lead, c = x.shape[:-3], x.shape[-1]
  if h != 2 * h2 or w != 2 * w2:
    x = x[..., : 2 * h2, : 2 * w2, :]
  y = x.reshape(*lead, h2, 2, w2, 2, c)
  return y[..., 0, :, 0, :], y[..., 0, :, 1, :], y[..., 1, :, 0, :], y[..., 1, :, 1, :]


def _max_pool_2x2_plain(x: jax.Array) -> jax.Array:
  a, b, c, d = _windows_2x2(x, "max_pool_2x2")
  return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


def _with_backward(plain: Callable, backward: Callable) -> Callable:
  """The pool `plain` with the custom backward `backward((x, out), g) -> (dx,)`."""
  pool = jax.custom_vjp(plain)

  def forward(x):
    out = plain(x)
    return out, (x, out)

  pool.defvjp(forward, backward)
  return pool


def _max_pool_2x2_bwd(res, g):
  # Each window's gradient goes to its first maximum in row-major order (reduce_window's and
  # PyTorch's choice), computed at the pooled resolution and interleaved back in one pass.
  x, out = res
  a, b, c, _ = _windows_2x2(x, "max_pool_2x2")
  first_a = a == out
  first_b = (b == out) & ~first_a
  first_c = (c == out) & ~(first_a | first_b)
  first_d = ~(first_a | first_b | first_c)
  zero = jnp.zeros((), g.dtype)
  ga, gb, gc, gd = (jnp.where(m, g, zero) for m in (first_a, first_b, first_c, first_d))
  # (..., h2, w2, C) x 4 -> (..., h2, 2, w2, 2, C) -> (..., 2 h2, 2 w2, C)
  dx = jnp.stack([jnp.stack([ga, gb], axis=-2), jnp.stack([gc, gd], axis=-2)], axis=-4)
  *lead, h2, _, w2, _, channels = dx.shape
  dx = dx.reshape(*lead, 2 * h2, 2 * w2, channels)
  h, w = x.shape[-3], x.shape[-2]
  if (h, w) != (2 * h2, 2 * w2):  # the cropped odd row / column gets no gradient
    dx = jnp.pad(dx, [(0, 0)] * len(lead) + [(0, h - 2 * h2), (0, w - 2 * w2), (0, 0)])
  return (dx,)


_max_pool_2x2 = _with_backward(_max_pool_2x2_plain, _max_pool_2x2_bwd)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2, VALID (odd H/W: last row/column dropped). x: (..., H, W, C)."""
  _check_spatial(x, "max_pool_2x2", 2)
  return _max_pool_2x2(x)


def avg_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 average-pool, stride 2, VALID (odd H/W: last row/column dropped). x: (..., H, W, C)."""
  a, b, c, d = _windows_2x2(x, "avg_pool_2x2")
  return ((a + b) + (c + d)) * 0.25


def pool_2x2(kind: str | None) -> Callable[[jax.Array], jax.Array] | None:
  """The 2x2 pool called ``kind`` ("max", "avg"), or None for ``None`` / "none"."""
  if kind is None or kind == "none":
    return None
  if kind == "max":
    return max_pool_2x2
  if kind == "avg":
    return avg_pool_2x2
  raise ValueError(f"unknown pool {kind!r}; choose 'max', 'avg' or None")


def _windows_3x3_s2(x: jax.Array, padding: int) -> list[jax.Array]:
  """The nine (..., ho, wo, C) strided slices of the input padded by `padding` (-inf) on each side, in
  row-major window order: ho = (H + 2 * padding - 3) // 2 + 1."""
  h, w = x.shape[-3], x.shape[-2]
  ho, wo = (h + 2 * padding - 3) // 2 + 1, (w + 2 * padding - 3) // 2 + 1
  if padding:
    pad = [(0, 0)] * (x.ndim - 3) + [(padding, padding), (padding, padding), (0, 0)]
    x = jnp.pad(x, pad, constant_values=-jnp.inf)
  return [x[..., di : di + 2 * ho - 1 : 2, dj : dj + 2 * wo - 1 : 2, :] for di in range(3) for dj in range(3)]


def _max_pool_3x3_s2_plain(x: jax.Array, padding: int) -> jax.Array:
  return functools.reduce(jnp.maximum, _windows_3x3_s2(x, padding))


def _max_pool_3x3_s2_fwd(x, padding):
  out = _max_pool_3x3_s2_plain(x, padding)
  return out, (x, out)


def _max_pool_3x3_s2_bwd(padding, res, g):
  # Each window's gradient goes to its first maximum in row-major order (what reduce_window's
  # select_and_scatter and PyTorch pick), scattered back with strided (interior) pads that XLA fuses.
  x, out = res
  h, w = x.shape[-3], x.shape[-2]
  windows = _windows_3x3_s2(x, padding)
  first = jnp.full(out.shape, 8, jnp.int8)
  for k in range(7, -1, -1):
    first = jnp.where(windows[k] == out, jnp.int8(k), first)
  zero = jnp.zeros((), g.dtype)
  dxp = None
  ho, wo = out.shape[-3], out.shape[-2]
  hp, wp = h + 2 * padding, w + 2 * padding
  lead = [(0, 0, 0)] * (x.ndim - 3)
  for k in range(9):
    di, dj = divmod(k, 3)
    part = lax.pad(
      jnp.where(first == k, g, zero),
      zero,
      lead + [(di, hp - di - (2 * ho - 1), 1), (dj, wp - dj - (2 * wo - 1), 1), (0, 0, 0)],
    )
    dxp = part if dxp is None else dxp + part
  return (dxp[..., padding : h + padding, padding : w + padding, :],)


_max_pool_3x3_s2 = jax.custom_vjp(_max_pool_3x3_s2_plain, nondiff_argnums=(1,))
_max_pool_3x3_s2.defvjp(_max_pool_3x3_s2_fwd, _max_pool_3x3_s2_bwd)


def max_pool_3x3_s2(x: jax.Array, padding: int = 1) -> jax.Array:
  """3x3 max-pool, stride 2. ``padding=1`` (the ResNet stem's, PyTorch ``MaxPool2d(3, 2, 1)``): (..., H,
  W, C) -> (..., ceil(H/2), ceil(W/2), C), padded cells (-inf) never win; ``padding=0`` (Inception's
  ``MaxPool2d(3, 2)``): -> (..., (H - 3) // 2 + 1, ...). The gradient goes to each window's first
  maximum, as ``reduce_window`` and PyTorch do."""
  if padding not in (0, 1):
    raise ValueError(f"max_pool_3x3_s2: padding must be 0 or 1, got {padding!r}")
  _check_spatial(x, "max_pool_3x3_s2", 3 - 2 * padding)
  return _max_pool_3x3_s2(x, padding)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """Mean over the spatial axes: (..., H, W, C) -> (..., C)."""
  _check_spatial(x, "global_avg_pool", 1)
  return jnp.mean(x, axis=(-3, -2))


# ----------------------------------------------------------------------------- upsampling


def pixel_shuffle(x: jax.Array, r: int = 2) -> jax.Array:
  """Depth-to-space: (..., H, W, C*r*r) -> (..., H*r, W*r, C), PyTorch ``PixelShuffle`` order
  (input channel ``c*r*r + i*r + j`` -> output channel ``c`` at ``(h*r + i, w*r + j)``)."""
  if isinstance(r, bool) or not isinstance(r, int) or r < 1:
    raise ValueError(f"pixel_shuffle factor r must be a positive int, got {r!r}")
  if x.ndim < 3:
    raise ValueError(f"pixel_shuffle expects (..., H, W, C) inputs, got shape {x.shape}")
  *lead, h, w, cr = x.shape
  if cr % (r * r):
    raise ValueError(f"pixel_shuffle: channels {cr} not divisible by r*r = {r * r}")
  c = cr // (r * r)
  n = len(lead)
  y = x.reshape(*lead, h, w, c, r, r)
  # (..., h, w, c, i, j) -> (..., h, i, w, j, c)
  y = jnp.transpose(y, (*range(n), n, n + 3, n + 1, n + 4, n + 2))
  return y.reshape(*lead, h * r, w * r, c)


# ----------------------------------------------------------------------------- convolution

SMALL_SPATIAL_MAX = 9  # input H * W at or below which convs run as im2col + matmul (<= 3x3 maps)
IM2COL_MAX_OUTPUT_PIXELS = 16  # also when the output H * W is at most this (e.g. a stride-2 4x4 -> 2x2)
# XLA computes a conv's kernel gradient as a convolution over transposed activations, slow for
# large maps with many output channels (a 3x3 32->128 conv on 32x32 maps: ~2x the matmul form).
KERNEL_GRAD_MIN_PIXELS = 1024  # input H * W (32x32) ...
KERNEL_GRAD_MIN_FEATURES = 96  # ... and output channels from which the kernel grad is matmuls
KERNEL_GRAD_1X1 = True  # and for every 1x1 conv (outside the im2col path)
KERNEL_GRAD_ROW_MAX_CHANNELS = 8  # below this many input channels, one matmul per kernel row
# XLA:CPU runs convs with a handful of channels at a few GFLOP/s (cnn_bn3's 3x3 3 -> 4 conv on
# 64x64 maps: 16 ms forward at batch 64 on one core): stride-1 convs with at most this many
# multiply-adds per output pixel (kh * kw * C_in * C_out) run forward as a sum of shifted
# broadcast multiplies, one loop fusion (2 ms).
SHIFT_CONV_MAX_MACS = 288
# Their backward is XLA's, on this many batch chunks: XLA:CPU runs one small conv on one thread,
# but independent ones concurrently (cnn_bn3, 64 px, 2 cores: 21.7 -> 18.7 ms per step).
SHIFT_CONV_BACKWARD_CHUNKS = 4
# Depthwise convs (MobileNets, EfficientNet): XLA:CPU's grouped convolution ran a 3x3 depthwise conv
# on 64x16x16x192 maps at 84 ms forward and 378 ms forward + backward; as shifted multiply-adds,
# 3.2 ms and 86 ms, and with the kernel gradient reduced over batch chunks of this many images
# (a working set that stays in cache) instead of in one pass per tap, 8 ms of those 86 go to it.
DEPTHWISE_GRAD_CHUNK = 4
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _all_ones(values: Sequence[int] | None) -> bool:
  return values is None or all(v == 1 for v in values)


def _conv_im2col(lhs, rhs, strides, pads, precision, preferred_element_type):
  """NHWC x HWIO conv as patches @ kernel. pads: ((top, bottom), (left, right))."""
  n, h, w, c = lhs.shape
  kh, kw, _, out = rhs.shape
  (pt, pb), (pl, pr) = pads
  sh, sw = strides
  oh, ow = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
  if oh < 1 or ow < 1:
    raise ValueError(f"conv output would be empty: input {lhs.shape}, kernel {rhs.shape}")
  # Negative padding (cropping) is allowed by lax; lax.pad handles both signs.
  xp = lax.pad(lhs, jnp.zeros((), lhs.dtype), ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))
  patches = [
    xp[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :] for i in range(kh) for j in range(kw)
  ]
  cols = patches[0] if len(patches) == 1 else jnp.concatenate(patches, axis=-1)
  return jnp.einsum(
    "nhwk,ko->nhwo",
    cols,
    rhs.reshape(kh * kw * c, out),
    precision=precision,
    preferred_element_type=preferred_element_type,
  )


def conv_general_dilated(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  batch_group_count=1,
  precision=None,
  preferred_element_type=None,
  out_sharding=None,
):
  """``jax.lax.conv_general_dilated`` with fast paths for 2-D NHWC/HWIO convs (as ``nnx.Conv``
  builds them), undilated and ungrouped: im2col + matmul when the input map has
  ``H * W <= SMALL_SPATIAL_MAX`` or the output map at most ``IM2COL_MAX_OUTPUT_PIXELS`` pixels;
  on CPU, a matmul kernel gradient for 1x1 convs and when the input map has
  ``>= KERNEL_GRAD_MIN_PIXELS`` pixels and the output ``>= KERNEL_GRAD_MIN_FEATURES`` channels;
  otherwise ``lax.conv_general_dilated``.
  """
  plain = (
    lhs.ndim == 4
    and rhs.ndim == 4
    and _all_ones(lhs_dilation)
    and _all_ones(rhs_dilation)
    and feature_group_count == 1
    and batch_group_count == 1
    and out_sharding is None
    and (dimension_numbers == _NHWC or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC)
  )
  if plain:
    strides = tuple(window_strides)
    pads = (
      lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
      if isinstance(padding, str)
      else tuple(tuple(p) for p in padding)
    )
    oh = (lhs.shape[1] + pads[0][0] + pads[0][1] - rhs.shape[0]) // strides[0] + 1
    ow = (lhs.shape[2] + pads[1][0] + pads[1][1] - rhs.shape[1]) // strides[1] + 1
    if _small_spatial(lhs.shape) or (oh >= 1 and ow >= 1 and oh * ow <= IM2COL_MAX_OUTPUT_PIXELS):
      return _conv_im2col(lhs, rhs, strides, pads, precision, preferred_element_type)
    if _shift_conv_applies(lhs, rhs, strides, oh, ow, precision, preferred_element_type):
      return _conv_shift(lhs, rhs, tuple(tuple(p) for p in pads))
    if (
      jax.default_backend() == "cpu"
      and precision is None
      and preferred_element_type is None
      and lhs.dtype == rhs.dtype
      and (
        (lhs.shape[1] * lhs.shape[2] >= KERNEL_GRAD_MIN_PIXELS and rhs.shape[3] >= KERNEL_GRAD_MIN_FEATURES)
        or (KERNEL_GRAD_1X1 and rhs.shape[:2] == (1, 1))
      )
    ):
      return _conv_matmul_kernel_grad(lhs, rhs, strides, pads)
  if (
    jax.default_backend() == "cpu"
    and lhs.ndim == 4
    and rhs.ndim == 4
    and _all_ones(lhs_dilation)
    and _all_ones(rhs_dilation)
    and batch_group_count == 1
    and out_sharding is None
    and precision is None
    and preferred_element_type is None
    and lhs.dtype == rhs.dtype == jnp.float32
    and feature_group_count == lhs.shape[-1] == rhs.shape[3] > 1
    and rhs.shape[2] == 1
    and (dimension_numbers == _NHWC or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC)
  ):
    strides = tuple(window_strides)
    pads = (
      lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
      if isinstance(padding, str)
      else tuple(tuple(p) for p in padding)
    )
    if min(min(p) for p in pads) >= 0:
      return _depthwise(lhs, rhs, strides, pads)
  kwargs = {} if out_sharding is None else {"out_sharding": out_sharding}
  return lax.conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    batch_group_count=batch_group_count,
    precision=precision,
    preferred_element_type=preferred_element_type,
    **kwargs,
  )


def _xla_conv(lhs, rhs, strides, pads):
  return lax.conv_general_dilated(lhs, rhs, strides, pads, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_matmul_kernel_grad(lhs, rhs, strides, pads):
  return _xla_conv(lhs, rhs, strides, pads)


def _conv_matmul_kernel_grad_fwd(lhs, rhs, strides, pads):
  return _xla_conv(lhs, rhs, strides, pads), (lhs, rhs)


def _kernel_grad(x, g, kernel_shape, strides, pads):
  """d(sum(conv(x, k) * g)) / dk for NHWC x, g as matmuls contracting (N, H, W) - no
  transposes. One matmul per kernel tap, or per kernel row (taps concatenated along channels)
  when the input has few channels (tiny contractions are inefficient)."""
  kh, kw, ci, co = kernel_shape
  _, oh, ow, _ = g.shape
  (pt, pb), (pl, pr) = pads
  sh, sw = strides
  xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))
  tap = lambda i, j: xp[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :]  # noqa: E731
  contract = (((0, 1, 2), (0, 1, 2)), ((), ()))
  if ci < KERNEL_GRAD_ROW_MAX_CHANNELS:
    parts = [lax.dot_general(jnp.concatenate([tap(i, j) for j in range(kw)], axis=-1), g, contract) for i in range(kh)]
  else:
    parts = [lax.dot_general(tap(i, j), g, contract) for i in range(kh) for j in range(kw)]
  return jnp.stack(parts).reshape(kernel_shape)


def _conv_matmul_kernel_grad_bwd(strides, pads, res, g):
  lhs, rhs = res
  _, input_vjp = jax.vjp(lambda x: _xla_conv(x, rhs, strides, pads), lhs)
  (dx,) = input_vjp(g)
  return dx, _kernel_grad(lhs, g, rhs.shape, strides, pads).astype(rhs.dtype)


_conv_matmul_kernel_grad.defvjp(_conv_matmul_kernel_grad_fwd, _conv_matmul_kernel_grad_bwd)


def _shift_conv_applies(lhs, rhs, strides, oh, ow, precision, preferred_element_type) -> bool:
  return (
    jax.default_backend() == "cpu"
    and strides == (1, 1)
    and oh >= 1
    and ow >= 1
    and precision is None
    and preferred_element_type is None
    and lhs.dtype == rhs.dtype == jnp.float32
    and rhs.shape[0] * rhs.shape[1] * rhs.shape[2] * rhs.shape[3] <= SHIFT_CONV_MAX_MACS
  )


def _shifted_sum(x, kernel, pads, *, spare_row: bool = False):
  """Stride-1 NHWC x HWIO conv as sum over taps and input channels of a shifted input channel
  times that kernel row: elementwise ops that XLA fuses into one loop.

  `spare_row`: compute one output row more than needed and crop it. Then every tap reads a padded
  row, so no tap is the unpadded input itself; otherwise, when nothing else keeps the input in
  memory (inference), XLA fuses the input's producer (the previous conv, BatchNorm, ReLU and pool)
  into both the padding and the sum, computing it twice (cnn_bn3 forward, 256 images at 32 px:
  12.5 -> 8.7 ms). In training the crop would be fused into the sum's consumers instead."""
  kh, kw, cin, _ = kernel.shape
  (pt, pb), (pl, pr) = pads
  oh, ow = x.shape[1] + pt + pb - kh + 1, x.shape[2] + pl + pr - kw + 1
  rows = oh + int(spare_row)
  xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (pt, pb + int(spare_row), 0), (pl, pr, 0), (0, 0, 0)))
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = xp[:, i : i + rows, j : j + ow, :]
      for c in range(cin):
        term = tap[..., c : c + 1] * kernel[i, j, c]
        out = term if out is None else out + term
  return out[:, :oh] if spare_row else out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_shift(lhs, rhs, pads):
  return _shifted_sum(lhs, rhs, pads, spare_row=True)  # not differentiated: inference


def _conv_shift_fwd(lhs, rhs, pads):
  return _shifted_sum(lhs, rhs, pads), (lhs, rhs)


def _conv_shift_bwd(pads, res, g):
  lhs, rhs = res
  n = lhs.shape[0]
  # One device only: batch chunks of a batch sharded over devices would move data between them.
  chunks = min(n, SHIFT_CONV_BACKWARD_CHUNKS) if jax.device_count() == 1 else 1
  bounds = [n * i // chunks for i in range(chunks + 1)]
  dx, dk = [], None
  for start, stop in zip(bounds[:-1], bounds[1:]):
    _, vjp = jax.vjp(lambda x, k: _xla_conv(x, k, (1, 1), pads), lhs[start:stop], rhs)
    dx_part, dk_part = vjp(g[start:stop])
    dx.append(dx_part)
    dk = dk_part if dk is None else dk + dk_part
  return (dx[0] if chunks == 1 else jnp.concatenate(dx)), dk


_conv_shift.defvjp(_conv_shift_fwd, _conv_shift_bwd)


def _depthwise_taps(xp, kh, kw, strides, oh, ow):
  """(i, j, the input window that kernel tap (i, j) multiplies) of a padded NHWC input."""
  sh, sw = strides
  for i in range(kh):
    for j in range(kw):
      limit = (xp.shape[0], i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, xp.shape[3])
      yield i, j, lax.slice(xp, (0, i, j, 0), limit, (1, sh, sw, 1))


def _depthwise_sum(x, kernel, strides, pads):
  """Depthwise NHWC x (kh, kw, 1, C) conv as a sum over taps of a strided input window times that
  tap's per-channel weights: one loop fusion."""
  kh, kw = kernel.shape[:2]
  (pt, pb), (pl, pr) = pads
  oh = (x.shape[1] + pt + pb - kh) // strides[0] + 1
  ow = (x.shape[2] + pl + pr - kw) // strides[1] + 1
  xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))
  out = None
  for i, j, tap in _depthwise_taps(xp, kh, kw, strides, oh, ow):
    term = tap * kernel[i, j, 0]
    out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise(lhs, rhs, strides, pads):
  return _depthwise_sum(lhs, rhs, strides, pads)


def _depthwise_fwd(lhs, rhs, strides, pads):
  return _depthwise_sum(lhs, rhs, strides, pads), (lhs, rhs)


def _depthwise_bwd(strides, pads, res, g):
  x, kernel = res
  kh, kw = kernel.shape[:2]
  (pt, pb), (pl, pr) = pads
  n, h, w, c = x.shape
  oh, ow = g.shape[1:3]
  sh, sw = strides
  xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))
  # Input gradient: g spread to its strided positions, correlated with the flipped kernel.
  hp, wp = xp.shape[1:3]
  spread = (
    (0, 0, 0),
    (kh - 1, hp - (oh - 1) * sh - 1, sh - 1),
    (kw - 1, wp - (ow - 1) * sw - 1, sw - 1),
    (0, 0, 0),
  )
  gp = lax.pad(g, jnp.zeros((), g.dtype), spread)
  dx = _depthwise_sum(gp, kernel[::-1, ::-1], (1, 1), ((0, 0), (0, 0)))[:, pt : pt + h, pl : pl + w]

  # Kernel gradient: per tap, the sum over images and pixels of window x g, accumulated over batch
  # chunks (one device only: chunks of a batch sharded over devices would gather it).
  def tap_sums(xp_part, g_part):
    return jnp.stack(
      [jnp.sum(tap * g_part, axis=(0, 1, 2)) for _, _, tap in _depthwise_taps(xp_part, kh, kw, strides, oh, ow)]
    )

  chunk = DEPTHWISE_GRAD_CHUNK
  if jax.device_count() == 1 and n % chunk == 0 and n > chunk:
    xs = xp.reshape(n // chunk, chunk, *xp.shape[1:])
    gs = g.reshape(n // chunk, chunk, *g.shape[1:])
    sums, _ = lax.scan(lambda acc, xg: (acc + tap_sums(*xg), None), jnp.zeros((kh * kw, c), g.dtype), (xs, gs))
  else:
    sums = tap_sums(xp, g)
  return dx, sums.reshape(kh, kw, 1, c)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def _small_spatial(shape: Sequence[int]) -> bool:
  """Whether an NHWC input of this shape takes the im2col path."""
  return shape[1] * shape[2] <= SMALL_SPATIAL_MAX


class Conv(nnx.Conv):
  """``nnx.Conv`` whose convolution is ``conv_general_dilated`` above (same parameters, same
  results; fast on tiny feature maps). Any ``nnx.Conv`` argument is accepted."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("conv_general_dilated", conv_general_dilated)
    super().__init__(*args, **kwargs)


# ----------------------------------------------------------------------------- batch norm

STATS_LANES = 16  # a SIMD vector of float32 (AVX-512)


def batch_statistics(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and biased variance of x over every axis but the last (flax's fast variance,
  E[x^2] - E[x]^2). With few channels, each example's pixels are first folded into rows of
  ``k * C >= STATS_LANES`` values: reducing a 4-wide minor axis wasted most of each vector
  (cnn_bn3, 64 px, 2 cores: -1.4 ms of a 21 ms step). Same values up to summation order."""
  channels = x.shape[-1]
  pixels = math.prod(x.shape[1:-1]) if x.ndim > 1 else 1
  k = 1
  while k * channels < STATS_LANES and pixels % (2 * k) == 0:
    k *= 2
  rows = x.reshape(x.shape[0], -1, k * channels) if x.ndim > 1 else x.reshape(-1, channels)
  axes = tuple(range(rows.ndim - 1))
  count = x.size // channels
  mean = rows.sum(axes).reshape(k, channels).sum(0) / count
  mean_sq = (rows * rows).sum(axes).reshape(k, channels).sum(0) / count
  return mean, jnp.maximum(0.0, mean_sq - mean * mean)


class BatchNorm(nnx.BatchNorm):
  """``nnx.BatchNorm`` (same arguments, variables and results up to float rounding) whose
  training-mode statistics come from ``batch_statistics``. Configurations it does not cover
  (feature axis not last, ``axis_name``, masks, non-float32 compute, exact variance) run
  ``nnx.BatchNorm`` itself."""

  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    use_running_average = self.use_running_average if use_running_average is None else use_running_average
    if (
      use_running_average is not False
      or mask is not None
      or self.axis_name is not None
      or self.axis not in (-1, x.ndim - 1)
      or not self.use_fast_variance
      or self.scale is None
      or self.bias is None
      or x.dtype != jnp.float32
      or (self.dtype is not None and jnp.dtype(self.dtype) != jnp.float32)
    ):
      return super().__call__(x, use_running_average, mask=mask)
    mean, var = batch_statistics(x)
    self.mean[...] = lax.stop_gradient(self.momentum * self.mean[...] + (1 - self.momentum) * mean)
    self.var[...] = lax.stop_gradient(self.momentum * self.var[...] + (1 - self.momentum) * var)
    # flax's _normalize, in its order of operations
    return (x - mean) * (lax.rsqrt(var + self.epsilon) * self.scale[...]) + self.bias[...]
