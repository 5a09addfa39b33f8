"""Convolutional autoencoders in Flax NNX: denoising (DAE), variational (VAE) and conditional
variational (CVAE), plus their losses.

Build one by name::

    model = create_autoencoder("vae", image_size=64, rngs=nnx.Rngs(0))
    model = create_autoencoder("cvae", image_size=64, num_classes=2, rngs=nnx.Rngs(0))
    model = create_autoencoder("dae", image_size=32, rngs=nnx.Rngs(0), channels=(16, 32, 64, 64))

Images are float32 NHWC RGB in [0, 1] (``vaeaug.data.pipeline.to_float`` converts uint8), with
``H == W == image_size`` (the bottleneck is a dense layer, so the size is fixed at construction).

Architecture
------------
Encoder: ``len(channels)`` stages of 3x3 conv, stride 2, "SAME" padding (no bias) -> BatchNorm
-> LeakyReLU(0.2); flatten; dense to the latent code. ``image_size`` must be divisible by
``2 ** len(channels)``: DAE (4 stages, default ``channels=(32, 64, 128, 256)``) and VAE / CVAE
(5 stages, default ``(32, 64, 128, 256, 512)``) both take 32, 64 and 128 px.

* DAE: dense to ``z`` of size ``latent_dim`` (deterministic, linear).
* VAE / CVAE: two dense heads, the posterior mean and log-variance (``latent_dim`` each; the
  log-variance is unconstrained).

Decoder (the mirror): dense from ``z`` to the bottleneck map ``(s, s, channels[-1])``
(``s = image_size / 2**len(channels)``) -> BatchNorm -> LeakyReLU(0.2); then one upsampling stage
(x2) per encoder stage, with output channels ``channels[-2], ..., channels[0], channels[0]``,
each followed by BatchNorm -> LeakyReLU(0.2); then a final 3x3 conv to 3 channels (with bias, no
BN / activation). Upsampling (``upsample=``):

* ``"subpixel"`` (default): 3x3 conv to ``4 * out`` channels then ``layers.pixel_shuffle(x, 2)``
  (depth-to-space). The conv kernel is ICNR-initialised (the four sub-pixel kernels start equal,
  so the initial output is a nearest-neighbour upsampling: no checkerboard at init).
* ``"resize"``: 2x resize (``resize_method="nearest"`` - default, a ``jnp.repeat`` - or
  ``"bilinear"``, ``jax.image.resize``) then a 3x3 conv.
* ``"transpose"``: ``nnx.ConvTranspose`` 3x3, stride 2, "SAME". Kept as an option, but its
  backward pass (a strided / dilated convolution) is slow under XLA on CPU - prefer the others
  there.

Convolutions are ``layers.Conv`` (an ``nnx.Conv``: same parameters) computing with
``layers.conv_general_dilated``: im2col + matmul when the output map has at most 4x4 pixels (XLA's CPU
convolution takes seconds for a 3x3 conv on 2x2 maps with 512+ channels), the XLA convolution
elsewhere, with (on CPU) a matmul kernel gradient for the 32x32+ decoder stage (about half the
time of XLA's) - same results up to float rounding. ``upsample="transpose"``'s ``nnx.ConvTranspose``
has no such path. Convolutions followed by BatchNorm have no bias; BN momentum 0.9 (= PyTorch
0.1), eps 1e-5, as in ``classifiers.models``. ``train=True`` normalises with batch statistics and updates the
running averages (``nnx.BatchStat``); ``train=False`` uses the running averages.

Mixed precision: ``dtype=`` ("float32" default, "bfloat16"; ``layers.compute_dtype``) sets the
dtype of the convs, dense layers and activations; parameters and BatchNorm statistics stay
float32, and ``encode`` / ``decode`` return float32 (codes, logits / means), so sampling, the KL
and the likelihood are computed in float32.

Conditioning (CVAE, or ``VAE(num_classes=K >= 2)``): the label's one-hot vector is appended to
the encoder input as ``K`` constant extra channels and concatenated to ``z`` before the
decoder's dense layer. ``labels`` are int class ids ``(N,)`` or float ``(N, K)`` vectors (one-hot
or soft - e.g. to interpolate between classes). A conditional model called without labels raises
``ValueError``; unconditional models (DAE, VAE) ignore ``labels``.

Likelihood / decoder output (``likelihood=``):

* ``"bernoulli"`` (default): ``decode`` returns LOGITS; the image is ``sigmoid(logits)``.
* ``"gaussian"``: ``decode`` returns the MEANS, already in [0, 1] (sigmoid applied). The std is
  ``exp(model.log_scale)``: a learned scalar ``nnx.Param`` when ``learned_scale=True`` (default;
  initialised to ``log(fixed_scale)``), else the constant ``fixed_scale`` (default 0.1) and
  ``model.log_scale`` is None. ``model.output_log_scale()`` gives the value to pass to
  ``reconstruction_nll`` either way (None for "bernoulli"), and ``model.reconstruction_nll`` does
  it for you.

Interface (all kinds)
---------------------
``model.encode(x, *, train, labels=None) -> (mean, logvar)``; DAE: ``(z, None)``.
``model.decode(z, *, train, labels=None) -> (N, H, W, 3)`` logits ("bernoulli") or means
    ("gaussian").
``model(x, *, train, labels=None, rngs=None) -> (decoder_output, mean, logvar)``: the training
    forward pass. VAE / CVAE sample ``z = reparameterize(mean, logvar, key)`` with the key from
    ``rngs`` (required: an ``nnx.Rngs`` - its ``sample`` stream, else ``default`` - an
    ``nnx.RngStream``, a raw key or an int seed). DAE: ``(decoder_output, z, None)``, no rngs
    (corrupt the input yourself with ``vaeaug.models.noise.corrupt`` and score the output
    against the clean images).
``model.reconstruct(x, *, train, labels=None, rngs=None, sample=False) -> images in [0, 1]``:
    VAE / CVAE decode the posterior mean (``sample=True``: a posterior sample drawn with
    ``rngs``); DAE decodes ``z`` (``rngs`` unused).
``model.generate(z, *, labels=None) -> images in [0, 1]``: eval-mode decode + sigmoid where
    needed. ``model.sample(key, num, *, labels=None)``: ``generate`` of ``z ~ N(0, I)`` (VAE /
    CVAE; for a DAE the prior is not a model of the codes, but it runs).
``model.to_image(decoder_output)``: decoder output -> images in [0, 1].
Attributes: ``kind`` ("dae" | "vae" | "cvae"), ``latent_dim``, ``image_size``, ``likelihood``,
``num_classes`` (0 = unconditional), ``conditional``, ``channels``, ``upsample``,
``learned_scale``, ``fixed_scale``, ``log_scale``.

Losses (pure functions, per example, units: nats per image - summed over pixels and channels)
-----------------------------------------------------------------------------------------------
``reconstruction_nll(decoder_output, targets, likelihood, log_scale=None) -> (N,)``
``kl_divergence(mean, logvar) -> (N,)``, ``reparameterize(mean, logvar, key)``,
``beta_schedule(step, *, beta, warmup_steps)``, ``negative_elbo(...)`` (recon + beta * KL).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vaeaug.models import layers

__all__ = [
  "CVAE",
  "DAE",
  "KINDS",
  "LIKELIHOODS",
  "RESIZE_METHODS",
  "UPSAMPLE_MODES",
  "VAE",
  "Autoencoder",
  "UpBlock",
  "beta_schedule",
  "create_autoencoder",
  "kl_divergence",
  "negative_elbo",
  "reconstruction_nll",
  "reparameterize",
]

KINDS = ("dae", "vae", "cvae")
LIKELIHOODS = ("bernoulli", "gaussian")
UPSAMPLE_MODES = ("subpixel", "resize", "transpose")
RESIZE_METHODS = ("nearest", "bilinear")
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
LEAKY_SLOPE = 0.2
IN_CHANNELS = 3
LOG_2PI = math.log(2 * math.pi)

RngsLike = nnx.Rngs | nnx.RngStream | jax.Array | int | None


# ----------------------------------------------------------------------------- losses


def _sum_per_example(x: jax.Array) -> jax.Array:
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def reconstruction_nll(
  decoder_output: jax.Array, targets: jax.Array, likelihood: str, log_scale: Any = None
) -> jax.Array:
  """Per-example reconstruction loss ``(N,)`` in nats per image (summed over H, W, C).

  ``"bernoulli"``: sigmoid binary cross-entropy of the logits ``decoder_output`` against
  ``targets`` in [0, 1]. For targets strictly between 0 and 1 this is a cross-entropy, not the
  negative log-likelihood of real-valued pixels under a proper density (that would need the
  continuous Bernoulli normaliser): it is minimised at ``sigmoid(logit) == target`` but its
  minimum is the targets' binary entropy, not 0, so it is not comparable across likelihoods.
  ``"gaussian"``: ``-log N(target; mean, exp(log_scale)**2)`` summed, with ``decoder_output``
  the means; ``log_scale`` (scalar or broadcastable array, or an ``nnx.Variable`` holding one)
  is required.
  """
  if likelihood not in LIKELIHOODS:
    raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")
  if decoder_output.shape != targets.shape:
    raise ValueError(f"decoder_output {decoder_output.shape} and targets {targets.shape} differ in shape")
  if decoder_output.ndim < 2:
    raise ValueError(f"expected batched outputs (N, ...), got shape {decoder_output.shape}")
  targets = targets.astype(decoder_output.dtype)
  if likelihood == "bernoulli":
    return _sum_per_example(optax.sigmoid_binary_cross_entropy(decoder_output, targets))
  if log_scale is None:
    raise ValueError("likelihood='gaussian' needs log_scale (log of the std)")
  if isinstance(log_scale, nnx.Variable):
    log_scale = log_scale.get_value()
  log_scale = jnp.asarray(log_scale, decoder_output.dtype)
  z = (targets - decoder_output) * jnp.exp(-log_scale)
  nll = 0.5 * jnp.square(z) + log_scale + 0.5 * LOG_2PI
  return _sum_per_example(jnp.broadcast_to(nll, decoder_output.shape))


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """``KL(N(mean, diag(exp(logvar))) || N(0, I))`` per example ``(N,)``, summed over the latent
  dims (nats): ``0.5 * sum(exp(logvar) + mean**2 - 1 - logvar)``."""
  if mean.shape != logvar.shape:
    raise ValueError(f"mean {mean.shape} and logvar {logvar.shape} differ in shape")
  return _sum_per_example(0.5 * (jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar))


def reparameterize(mean: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
  """``z = mean + exp(logvar / 2) * eps``, ``eps ~ N(0, I)`` drawn with ``key``."""
  if mean.shape != logvar.shape:
    raise ValueError(f"mean {mean.shape} and logvar {logvar.shape} differ in shape")
  eps = jax.random.normal(key, mean.shape, mean.dtype)
  return mean + jnp.exp(0.5 * logvar) * eps


def beta_schedule(step, *, beta: float, warmup_steps: int) -> jax.Array:
  """KL weight at ``step``: linear warm-up from 0 (step 0) to ``beta`` (step >= warmup_steps),
  constant ``beta`` when ``warmup_steps == 0``. ``step`` may be a traced int / array."""
  if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
    raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
  if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
    raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
  step = jnp.asarray(step, jnp.float32)
  if warmup_steps == 0:
    return jnp.full(step.shape, beta, jnp.float32)
  return beta * jnp.clip(step / warmup_steps, 0.0, 1.0)


def negative_elbo(
  decoder_output, targets, mean, logvar, likelihood: str, log_scale=None, beta=1.0
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(recon + beta * kl, recon, kl)``, each ``(N,)`` in nats per image (``beta=1``: the
  negative ELBO; for "bernoulli" see ``reconstruction_nll`` on what the recon term is)."""
  recon = reconstruction_nll(decoder_output, targets, likelihood, log_scale)
  kl = kl_divergence(mean, logvar)
  return recon + beta * kl, recon, kl


# ----------------------------------------------------------------------------- layers


def _leaky(x: jax.Array) -> jax.Array:
  return jax.nn.leaky_relu(x, LEAKY_SLOPE)


def _bn(features: int, rngs: nnx.Rngs, dtype=None) -> nnx.BatchNorm:
  return nnx.BatchNorm(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, rngs=rngs)


_default_kernel_init = nnx.initializers.lecun_normal()
# im2col + matmul on maps of <= 4x4 output pixels, XLA conv otherwise (XLA's CPU conv is
# ~100x slower on 2x2 maps with many channels; see vaeaug.models.layers for this and the kernel grad)
_CONV = layers.conv_general_dilated


def _icnr_init(scale: int = 2, base_init=_default_kernel_init):
  """ICNR (Aitken et al. 2017): a sub-pixel conv kernel (kh, kw, cin, cout * scale**2) whose
  scale**2 sub-kernels per output channel are equal, so conv + pixel_shuffle starts out as a
  nearest-neighbour upsampling of a normal conv (matches ``layers.pixel_shuffle``'s order)."""

  def init(key, shape, dtype=jnp.float32):
    r2 = scale * scale
    base = base_init(key, (*shape[:-1], shape[-1] // r2), dtype)
    return jnp.repeat(base, r2, axis=-1)  # channel c * r2 + k <- base channel c

  return init


class UpBlock(nnx.Module):
  """x2 upsampling stage: (subpixel | resize | transpose) conv -> BatchNorm -> LeakyReLU(0.2)."""

  def __init__(self, in_features: int, out_features: int, *, mode: str, resize_method: str, rngs: nnx.Rngs, dtype=None):
    self.mode = mode
    self.resize_method = resize_method
    if mode == "subpixel":
      self.conv = layers.Conv(
        in_features,
        4 * out_features,
        (3, 3),
        padding="SAME",
        use_bias=False,
        kernel_init=_icnr_init(2),
        conv_general_dilated=_CONV,
        dtype=dtype,
        rngs=rngs,
      )
    elif mode == "resize":
      self.conv = layers.Conv(
        in_features,
        out_features,
        (3, 3),
        padding="SAME",
        use_bias=False,
        conv_general_dilated=_CONV,
        dtype=dtype,
        rngs=rngs,
      )
    else:
      self.conv = nnx.ConvTranspose(
        in_features, out_features, (3, 3), strides=(2, 2), padding="SAME", use_bias=False, dtype=dtype, rngs=rngs
      )
    self.norm = _bn(out_features, rngs, dtype)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if self.mode == "subpixel":
      x = layers.pixel_shuffle(self.conv(x), 2)
    elif self.mode == "resize":
      if self.resize_method == "nearest":
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
      else:
        n, h, w, c = x.shape
        x = jax.image.resize(x, (n, 2 * h, 2 * w, c), method="bilinear")
      x = self.conv(x)
    else:
      x = self.conv(x)
    return _leaky(self.norm(x, use_running_average=not train))


# ----------------------------------------------------------------------------- models


def _as_key(rngs: RngsLike, who: str) -> jax.Array:
  if rngs is None:
    raise ValueError(f"{who} needs rngs to sample z, e.g. rngs=nnx.Rngs(sample=key) or a jax key")
  if isinstance(rngs, nnx.Rngs):
    return rngs["sample"]()  # falls back to the default stream
  if isinstance(rngs, nnx.RngStream):
    return rngs()
  if isinstance(rngs, int) and not isinstance(rngs, bool):
    return jax.random.key(rngs)
  if isinstance(rngs, jax.Array):
    return rngs
  raise ValueError(f"rngs must be nnx.Rngs, nnx.RngStream, a jax key or an int, got {type(rngs).__name__}")


def _stages(image_size: int, channels: Any) -> tuple[tuple[int, ...], int]:
  """(channels as a tuple, the total downsampling 2**stages) of an encoder with one stride-2 stage
  per entry of `channels`; ValueError unless they are positive ints that divide `image_size`."""
  if (
    not isinstance(channels, (list, tuple))
    or not channels
    or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels)
  ):
    raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels!r}")
  channels = tuple(channels)
  factor = 2 ** len(channels)
  if image_size % factor:
    raise ValueError(
      f"image_size={image_size} must be divisible by 2**{len(channels)} = {factor} "
      f"({len(channels)} stride-2 stages, channels={channels})"
    )
  return channels, factor


def _positive_int(value: Any, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}")
  return value


class Autoencoder(nnx.Module):
  """Shared encoder / decoder machinery of DAE, VAE and CVAE (see the module docstring)."""

  kind: str
  variational: bool

  def __init__(
    self,
    *,
    image_size: int,
    latent_dim: int,
    channels: Sequence[int],
    upsample: str,
    likelihood: str,
    num_classes: int,
    learned_scale: bool,
    fixed_scale: float,
    resize_method: str,
    rngs: nnx.Rngs,
    dtype: Any = None,
  ):
    image_size = _positive_int(image_size, "image_size")
    latent_dim = _positive_int(latent_dim, "latent_dim")
    channels, factor = _stages(image_size, channels)
    if upsample not in UPSAMPLE_MODES:
      raise ValueError(f"unknown upsample {upsample!r}; choose one of {UPSAMPLE_MODES}")
    if resize_method not in RESIZE_METHODS:
      raise ValueError(f"unknown resize_method {resize_method!r}; choose one of {RESIZE_METHODS}")
    if likelihood not in LIKELIHOODS:
      raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0 or num_classes == 1:
      raise ValueError(f"num_classes must be 0 (unconditional) or an int >= 2, got {num_classes!r}")
    if not isinstance(learned_scale, bool):
      raise ValueError(f"learned_scale must be a bool, got {learned_scale!r}")
    if (
      isinstance(fixed_scale, bool)
      or not isinstance(fixed_scale, (int, float))
      or not math.isfinite(fixed_scale)
      or fixed_scale <= 0
    ):
      raise ValueError(f"fixed_scale must be a finite number > 0, got {fixed_scale!r}")

    self.image_size = image_size
    self.latent_dim = latent_dim
    self.channels = channels
    self.upsample = upsample
    self.resize_method = resize_method
    self.likelihood = likelihood
    self.num_classes = num_classes
    self.conditional = num_classes > 0
    self.learned_scale = learned_scale
    self.fixed_scale = float(fixed_scale)
    self.bottleneck_shape = (image_size // factor, image_size // factor, channels[-1])
    self.dtype = dtype = layers.compute_dtype(dtype)
    extra = num_classes if self.conditional else 0

    # encoder
    convs, norms = [], []
    cin = IN_CHANNELS + extra
    for c in channels:
      convs.append(
        layers.Conv(
          cin,
          c,
          (3, 3),
          strides=(2, 2),
          padding="SAME",
          use_bias=False,
          conv_general_dilated=_CONV,
          dtype=dtype,
          rngs=rngs,
        )
      )
      norms.append(_bn(c, rngs, dtype))
      cin = c
    self.enc_convs = nnx.List(convs)
    self.enc_norms = nnx.List(norms)
    flat = math.prod(self.bottleneck_shape)
    self._init_latent_heads(flat, latent_dim, rngs)

    # decoder
    self.dec_dense = nnx.Linear(latent_dim + extra, flat, dtype=dtype, rngs=rngs)
    self.dec_norm = _bn(channels[-1], rngs, dtype)
    outs = tuple(reversed(channels[:-1])) + (channels[0],)
    blocks, cin = [], channels[-1]
    for c in outs:
      blocks.append(UpBlock(cin, c, mode=upsample, resize_method=resize_method, rngs=rngs, dtype=dtype))
      cin = c
    self.dec_blocks = nnx.List(blocks)
    self.dec_out = layers.Conv(
      cin, IN_CHANNELS, (3, 3), padding="SAME", use_bias=True, conv_general_dilated=_CONV, dtype=dtype, rngs=rngs
    )

    if likelihood == "gaussian" and learned_scale:
      self.log_scale = nnx.Param(jnp.asarray(math.log(self.fixed_scale), jnp.float32))
    else:
      self.log_scale = None

  # -- pieces
  def _init_latent_heads(self, flat: int, latent_dim: int, rngs: nnx.Rngs) -> None:
    raise NotImplementedError

  def _latent(self, h: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    raise NotImplementedError

  def _labels(self, labels, n: int) -> jax.Array | None:
    """(N, K) float label vectors of a conditional model; None for unconditional ones."""
    if not self.conditional:
      return None
    if labels is None:
      raise ValueError(
        f"conditional {self.kind} (num_classes={self.num_classes}) needs labels: "
        "int class ids (N,) or float vectors (N, num_classes)"
      )
    labels = jnp.asarray(labels)
    if labels.ndim == 1 and jnp.issubdtype(labels.dtype, jnp.integer):
      vectors = jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
    elif labels.ndim == 2 and labels.shape[1] == self.num_classes:
      vectors = labels.astype(jnp.float32)
    else:
      raise ValueError(
        f"labels must be int class ids (N,) or float vectors (N, {self.num_classes}), "
        f"got shape {labels.shape} dtype {labels.dtype}"
      )
    if vectors.shape[0] != n:
      raise ValueError(f"{vectors.shape[0]} labels for a batch of {n}")
    return vectors

  def _check_images(self, x: jax.Array) -> None:
    expected = (self.image_size, self.image_size, IN_CHANNELS)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
      raise ValueError(
        f"{self.kind} built for image_size={self.image_size} expects images "
        f"(N, {', '.join(map(str, expected))}), got shape {x.shape}"
      )

  # -- public interface
  def encode(self, x: jax.Array, *, train: bool, labels=None) -> tuple[jax.Array, jax.Array | None]:
    """(mean, logvar) of q(z | x[, y]), each (N, latent_dim); DAE: (z, None)."""
    self._check_images(x)
    y = self._labels(labels, x.shape[0])
    if y is not None:
      maps = jnp.broadcast_to(y[:, None, None, :].astype(x.dtype), (*x.shape[:3], y.shape[-1]))
      x = jnp.concatenate([x, maps], axis=-1)
    for conv, norm in zip(self.enc_convs, self.enc_norms):
      x = _leaky(norm(conv(x), use_running_average=not train))
    # float32 codes whatever the compute dtype (sampling, KL and the loss need the range)
    return jax.tree.map(lambda a: a.astype(jnp.float32), self._latent(x.reshape(x.shape[0], -1)))

  def decode(self, z: jax.Array, *, train: bool, labels=None) -> jax.Array:
    """(N, H, W, 3): logits ("bernoulli") or means in [0, 1] ("gaussian")."""
    if z.ndim != 2 or z.shape[1] != self.latent_dim:
      raise ValueError(f"z must be (N, {self.latent_dim}), got shape {z.shape}")
    y = self._labels(labels, z.shape[0])
    if y is not None:
      z = jnp.concatenate([z, y.astype(z.dtype)], axis=-1)
    h = self.dec_dense(z).reshape(z.shape[0], *self.bottleneck_shape)
    h = _leaky(self.dec_norm(h, use_running_average=not train))
    for block in self.dec_blocks:
      h = block(h, train=train)
    out = self.dec_out(h).astype(jnp.float32)
    return jax.nn.sigmoid(out) if self.likelihood == "gaussian" else out

  def to_image(self, decoder_output: jax.Array) -> jax.Array:
    """Decoder output -> images in [0, 1] (sigmoid of the logits for "bernoulli")."""
    return jax.nn.sigmoid(decoder_output) if self.likelihood == "bernoulli" else decoder_output

  def generate(self, z: jax.Array, *, labels=None) -> jax.Array:
    """Images in [0, 1] decoded from z in eval mode (running BatchNorm statistics)."""
    return self.to_image(self.decode(z, train=False, labels=labels))

  def sample(self, key: jax.Array, num: int, *, labels=None) -> jax.Array:
    """``generate`` of ``num`` codes z ~ N(0, I) drawn with ``key``."""
    num = _positive_int(num, "num")
    return self.generate(jax.random.normal(key, (num, self.latent_dim)), labels=labels)

  def output_log_scale(self) -> jax.Array | None:
    """log std of the gaussian likelihood (learned or fixed); None for "bernoulli"."""
    if self.likelihood != "gaussian":
      return None
    if self.log_scale is not None:
      return self.log_scale.get_value()
    return jnp.asarray(math.log(self.fixed_scale), jnp.float32)

  def reconstruction_nll(self, decoder_output: jax.Array, targets: jax.Array) -> jax.Array:
    """``reconstruction_nll`` with this model's likelihood and scale: (N,) nats per image."""
    return reconstruction_nll(decoder_output, targets, self.likelihood, self.output_log_scale())


class DAE(Autoencoder):
  """Denoising autoencoder: 4 stride-2 conv stages (default ``channels=(32, 64, 128, 256)``),
  dense to ``z`` (``latent_dim``, default 128), mirrored decoder. Labels are ignored."""

  kind = "dae"
  variational = False

  def __init__(
    self,
    *,
    image_size: int,
    latent_dim: int = 128,
    channels: Sequence[int] = (32, 64, 128, 256),
    upsample: str = "subpixel",
    likelihood: str = "bernoulli",
    learned_scale: bool = True,
    fixed_scale: float = 0.1,
    resize_method: str = "nearest",
    rngs: nnx.Rngs,
    dtype: Any = None,
  ):
    super().__init__(
      image_size=image_size,
      latent_dim=latent_dim,
      channels=channels,
      upsample=upsample,
      likelihood=likelihood,
      num_classes=0,
      learned_scale=learned_scale,
      fixed_scale=fixed_scale,
      resize_method=resize_method,
      rngs=rngs,
      dtype=dtype,
    )

  def _init_latent_heads(self, flat, latent_dim, rngs):
    self.latent_head = nnx.Linear(flat, latent_dim, dtype=self.dtype, rngs=rngs)

  def _latent(self, h):
    return self.latent_head(h), None

  def __call__(self, x: jax.Array, *, train: bool, labels=None, rngs: RngsLike = None):
    """(decoder_output, z, None). ``x`` is the (already corrupted) input; ``rngs`` unused."""
    z, _ = self.encode(x, train=train)
    return self.decode(z, train=train), z, None

  def reconstruct(
    self, x: jax.Array, *, train: bool, labels=None, rngs: RngsLike = None, sample: bool = False
  ) -> jax.Array:
    """Images in [0, 1]: decode(encode(x)). ``labels``, ``rngs``, ``sample`` unused."""
    z, _ = self.encode(x, train=train)
    return self.to_image(self.decode(z, train=train))


class VAE(Autoencoder):
  """Variational autoencoder: 5 stride-2 conv stages (default ``channels=(32, 64, 128, 256,
  512)``), dense heads for the posterior mean and log-variance (``latent_dim``, default 128),
  mirrored decoder. ``num_classes=0``: unconditional (labels ignored); ``num_classes >= 2``:
  conditional (what ``CVAE`` builds; ``kind`` is then "cvae")."""

  variational = True

  def __init__(
    self,
    *,
    image_size: int,
    latent_dim: int = 128,
    channels: Sequence[int] = (32, 64, 128, 256, 512),
    upsample: str = "subpixel",
    likelihood: str = "bernoulli",
    num_classes: int = 0,
    learned_scale: bool = True,
    fixed_scale: float = 0.1,
    resize_method: str = "nearest",
    rngs: nnx.Rngs,
    dtype: Any = None,
  ):
    super().__init__(
      image_size=image_size,
      latent_dim=latent_dim,
      channels=channels,
      upsample=upsample,
      likelihood=likelihood,
      num_classes=num_classes,
      learned_scale=learned_scale,
      fixed_scale=fixed_scale,
      resize_method=resize_method,
      rngs=rngs,
      dtype=dtype,
    )
    self.kind = "cvae" if self.conditional else "vae"

  def _init_latent_heads(self, flat, latent_dim, rngs):
    self.mean_head = nnx.Linear(flat, latent_dim, dtype=self.dtype, rngs=rngs)
    self.logvar_head = nnx.Linear(flat, latent_dim, dtype=self.dtype, rngs=rngs)

  def _latent(self, h):
    return self.mean_head(h), self.logvar_head(h)

  def __call__(self, x: jax.Array, *, train: bool, labels=None, rngs: RngsLike = None):
    """(decoder_output, mean, logvar), decoding ``z = reparameterize(mean, logvar, key)``
    with the key from ``rngs`` (required)."""
    key = _as_key(rngs, f"{self.kind}(x)")
    mean, logvar = self.encode(x, train=train, labels=labels)
    z = reparameterize(mean, logvar, key)
    return self.decode(z, train=train, labels=labels), mean, logvar

  def reconstruct(
    self, x: jax.Array, *, train: bool, labels=None, rngs: RngsLike = None, sample: bool = False
  ) -> jax.Array:
    """Images in [0, 1] decoded from the posterior mean (``sample=True``: from a posterior
    sample drawn with ``rngs``)."""
    mean, logvar = self.encode(x, train=train, labels=labels)
    z = reparameterize(mean, logvar, _as_key(rngs, "reconstruct(sample=True)")) if sample else mean
    return self.to_image(self.decode(z, train=train, labels=labels))


class CVAE(VAE):
  """Conditional VAE: a ``VAE`` with ``num_classes >= 2`` (required, no default); the one-hot
  label is appended to the encoder input as constant channels and concatenated to z."""

  def __init__(
    self,
    *,
    image_size: int,
    num_classes: int,
    latent_dim: int = 128,
    channels: Sequence[int] = (32, 64, 128, 256, 512),
    upsample: str = "subpixel",
    likelihood: str = "bernoulli",
    learned_scale: bool = True,
    fixed_scale: float = 0.1,
    resize_method: str = "nearest",
    rngs: nnx.Rngs,
    dtype: Any = None,
  ):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
      raise ValueError(f"CVAE needs num_classes >= 2, got {num_classes!r}")
    super().__init__(
      image_size=image_size,
      latent_dim=latent_dim,
      channels=channels,
      upsample=upsample,
      likelihood=likelihood,
      num_classes=num_classes,
      learned_scale=learned_scale,
      fixed_scale=fixed_scale,
      resize_method=resize_method,
      rngs=rngs,
      dtype=dtype,
    )


_CLASSES = {"dae": DAE, "vae": VAE, "cvae": CVAE}
_FIXED_ARGS = {"self", "image_size", "num_classes", "rngs"}


def create_autoencoder(kind: str, *, image_size: int, num_classes: int = 2, rngs: nnx.Rngs, **overrides) -> Autoencoder:
  """Build a "dae" | "vae" | "cvae". ``num_classes`` is used by "cvae" only ("dae" and "vae"
  are unconditional). ``overrides``: the constructor's other keyword arguments (latent_dim,
  channels, upsample, likelihood, learned_scale, fixed_scale, resize_method); unknown ones
  raise ValueError."""
  if kind not in _CLASSES:
    raise ValueError(f"unknown autoencoder kind {kind!r}; choose one of {KINDS}")
  cls = _CLASSES[kind]
  allowed = set(inspect.signature(cls.__init__).parameters) - _FIXED_ARGS
  unknown = sorted(set(overrides) - allowed)
  if unknown:
    raise ValueError(f"unknown option(s) {unknown} for {kind!r}; allowed: {sorted(allowed)}")
  if kind == "cvae":
    return cls(image_size=image_size, num_classes=num_classes, rngs=rngs, **overrides)
  return cls(image_size=image_size, rngs=rngs, **overrides)
