"""A residual convolutional VAE / CVAE in Flax NNX (NHWC) for 32-128 px faces, registered as the
generator kinds "rvae" (unconditional) and "rcvae" (class-conditional).

    from vaeaug import kinds
    model = kinds.get("rvae").create(image_size=64, num_classes=2, rngs=nnx.Rngs(0))
    model = ResidualVAE(image_size=64, num_classes=2, rngs=nnx.Rngs(0), blocks_per_stage=2)

Same public interface as ``vaeaug.models.autoencoders.VAE`` (``encode``, ``decode``, ``__call__``,
``reconstruct``, ``generate``, ``sample``, ``to_image``, ``output_log_scale``,
``reconstruction_nll`` and the attributes ``kind``, ``variational``, ``latent_dim``, ``image_size``,
``likelihood``, ``num_classes``, ``conditional``, ``channels``, ``upsample``, ``learned_scale``,
``fixed_scale``, ``log_scale``); conditioning as there (the one-hot label as constant extra input
channels of the encoder and concatenated to z).

Architecture (``n = len(channels)``, default ``(32, 64, 128, 256)``: 64 px -> a 4x4 bottleneck)
-------------------------------------------------------------------------------------------------
Encoder: 3x3 stem conv to ``channels[0]`` at full resolution -> BN -> act; then per stage ``i``:
``blocks_per_stage`` residual blocks at width ``channels[i]`` and a 3x3 stride-2 conv -> BN -> act
to ``channels[i + 1]`` (the last stage keeps ``channels[-1]``); flatten; dense heads for the
posterior mean and log-variance (``latent_dim`` each).

Decoder: dense from z (+ the label vector) to the ``(s, s, channels[-1])`` bottleneck map -> BN ->
act; then per stage a x2 upsampling (``upsample="subpixel"``: 3x3 conv to 4x the channels,
ICNR-initialised, + ``layers.pixel_shuffle``; ``"resize"``: nearest repeat + 3x3 conv) -> BN -> act
to ``channels[-2], ..., channels[0], channels[0]`` followed by ``blocks_per_stage`` residual
blocks; a final 3x3 conv (with bias) to 3 channels.

Residual block (post-activation, ResNet v1 "basic"): ``act(x + BN(conv(act(BN(conv(x))))))`` with
3x3 convs without bias; the second BN's scale starts at 0, so every block starts as the identity
(stable early training of a deep VAE). BatchNorm as in the rest of the project (momentum 0.9,
eps 1e-5); the activation is LeakyReLU(0.2) as in ``autoencoders`` (``activation="silu"``: SiLU; its
sigmoid made the train step ~5% slower on XLA:CPU), which XLA fuses with the BatchNorm into one
elementwise pass. Convs are ``layers.Conv`` (im2col + matmul on maps
of <= 4x4 pixels, matmul kernel gradients on large maps: the CPU fast paths of ``layers``).

Likelihoods: "bernoulli" (``decode`` returns logits) or "gaussian" (``decode`` returns means in
[0, 1]) whose std is bounded: ``log_scale = log(lo) + (log(hi) - log(lo)) * sigmoid(raw)`` with
``(lo, hi) = scale_bounds`` (default (0.01, 0.5)) and ``raw`` a learned scalar
(``model.scale_logit``, initialised so the std starts at ``fixed_scale``), so the std can neither
collapse onto the data nor blow up. ``learned_scale=False``: the constant ``fixed_scale``.
``model.log_scale`` / ``model.output_log_scale()`` give the bounded value (None for "bernoulli";
``log_scale`` is also None for a fixed scale, as in ``autoencoders``).

``dtype`` ("float32" | "bfloat16"; ``layers.compute_dtype``) sets the compute dtype; parameters
and BatchNorm statistics stay float32 and ``encode`` / ``decode`` return float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vaeaug import kinds
from vaeaug.models import autoencoders, layers

__all__ = ["ACTIVATIONS", "UPSAMPLE_MODES", "ResidualBlock", "ResidualVAE"]

UPSAMPLE_MODES = ("subpixel", "resize")
ACTIVATIONS = ("silu", "leaky_relu")
LEAKY_SLOPE = 0.2
IN_CHANNELS = 3


def _leaky_relu(x: jax.Array) -> jax.Array:
  return jax.nn.leaky_relu(x, LEAKY_SLOPE)


def _activation(name: str):
  # module-level functions, not lambdas: equal models then have equal (static) graph definitions
  return jax.nn.silu if name == "silu" else _leaky_relu


def _conv(cin: int, cout: int, rngs: nnx.Rngs, dtype, *, strides=1, use_bias=False, kernel_init=None) -> layers.Conv:
  kwargs = {"kernel_init": kernel_init} if kernel_init is not None else {}
  return layers.Conv(
    cin, cout, (3, 3), strides=(strides, strides), padding="SAME", use_bias=use_bias, dtype=dtype, rngs=rngs, **kwargs
  )


def _bn(features: int, rngs: nnx.Rngs, dtype, *, zero_scale: bool = False) -> nnx.BatchNorm:
  return nnx.BatchNorm(
    features,
    momentum=autoencoders.BN_MOMENTUM,
    epsilon=autoencoders.BN_EPSILON,
    scale_init=nnx.initializers.zeros_init() if zero_scale else nnx.initializers.ones_init(),
    dtype=dtype,
    rngs=rngs,
  )


class ResidualBlock(nnx.Module):
  """``act(x + BN(conv(act(BN(conv(x))))))``, 3x3 convs, same width; starts as the identity."""

  def __init__(self, features: int, *, activation: str, rngs: nnx.Rngs, dtype=None):
    self.act = _activation(activation)
    self.conv1 = _conv(features, features, rngs, dtype)
    self.norm1 = _bn(features, rngs, dtype)
    self.conv2 = _conv(features, features, rngs, dtype)
    self.norm2 = _bn(features, rngs, dtype, zero_scale=True)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    h = self.act(self.norm1(self.conv1(x), use_running_average=not train))
    return self.act(x + self.norm2(self.conv2(h), use_running_average=not train))


class ConvNormAct(nnx.Module):
  """conv (3x3, stride 1 or 2) -> BN -> act."""

  def __init__(self, cin: int, cout: int, *, strides: int, activation: str, rngs: nnx.Rngs, dtype=None):
    self.act = _activation(activation)
    self.conv = _conv(cin, cout, rngs, dtype, strides=strides)
    self.norm = _bn(cout, rngs, dtype)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return self.act(self.norm(self.conv(x), use_running_average=not train))


class Upsample(nnx.Module):
  """x2: sub-pixel conv (ICNR) + pixel_shuffle, or nearest repeat + conv; then BN -> act."""

  def __init__(self, cin: int, cout: int, *, mode: str, activation: str, rngs: nnx.Rngs, dtype=None):
    self.mode = mode
    self.act = _activation(activation)
    if mode == "subpixel":
      # ICNR: the four sub-pixel kernels start equal (a nearest upsampling: no checkerboard at init)
      self.conv = _conv(cin, 4 * cout, rngs, dtype, kernel_init=autoencoders._icnr_init(2))
    else:
      self.conv = _conv(cin, cout, rngs, dtype)
    self.norm = _bn(cout, rngs, dtype)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if self.mode == "subpixel":
      x = layers.pixel_shuffle(self.conv(x), 2)
    else:
      x = self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
    return self.act(self.norm(x, use_running_average=not train))


def _positive_number(value: Any) -> bool:
  return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


class ResidualVAE(nnx.Module):
  """Residual conv VAE (``num_classes=0``, kind "rvae") or CVAE (``num_classes >= 2``, "rcvae");
  see the module docstring."""

  variational = True

  def __init__(
    self,
    *,
    image_size: int,
    latent_dim: int = 128,
    channels: Sequence[int] = (32, 64, 128, 256),
    blocks_per_stage: int = 1,
    upsample: str = "subpixel",
    likelihood: str = "bernoulli",
    num_classes: int = 0,
    learned_scale: bool = True,
    fixed_scale: float = 0.1,
    scale_bounds: Sequence[float] = (0.01, 0.5),
    activation: str = "leaky_relu",
    rngs: nnx.Rngs,
    dtype: Any = None,
  ):
    image_size = autoencoders._positive_int(image_size, "image_size")
    latent_dim = autoencoders._positive_int(latent_dim, "latent_dim")
    channels, factor = autoencoders._stages(image_size, channels)
    # One count for every stage, or one per encoder stage (mirrored in the decoder): on a CPU, blocks at the
    # full and half resolution cost most of the step, so deep-only blocks train several times faster.
    counts = blocks_per_stage if isinstance(blocks_per_stage, (list, tuple)) else (blocks_per_stage,) * len(channels)
    if len(counts) != len(channels) or any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in counts):
      raise ValueError(
        f"blocks_per_stage must be an int >= 0 or {len(channels)} of them (one per stage), got {blocks_per_stage!r}"
      )
    blocks_per_stage = tuple(counts) if isinstance(blocks_per_stage, (list, tuple)) else blocks_per_stage
    if upsample not in UPSAMPLE_MODES:
      raise ValueError(f"unknown upsample {upsample!r} for a residual VAE; choose one of {UPSAMPLE_MODES}")
    if likelihood not in autoencoders.LIKELIHOODS:
      raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {autoencoders.LIKELIHOODS}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0 or num_classes == 1:
      raise ValueError(f"num_classes must be 0 (unconditional) or an int >= 2, got {num_classes!r}")
    if not isinstance(learned_scale, bool):
      raise ValueError(f"learned_scale must be a bool, got {learned_scale!r}")
    if not _positive_number(fixed_scale):
      raise ValueError(f"fixed_scale must be a finite number > 0, got {fixed_scale!r}")
    if (
      not isinstance(scale_bounds, (list, tuple))
      or len(scale_bounds) != 2
      or not all(_positive_number(b) for b in scale_bounds)
      or not scale_bounds[0] < scale_bounds[1]
    ):
      raise ValueError(f"scale_bounds must be two finite numbers 0 < min < max, got {scale_bounds!r}")
    scale_bounds = (float(scale_bounds[0]), float(scale_bounds[1]))
    if learned_scale and likelihood == "gaussian" and not scale_bounds[0] < fixed_scale < scale_bounds[1]:
      raise ValueError(
        f"fixed_scale={fixed_scale} (the initial learned std) must lie inside scale_bounds={scale_bounds}"
      )
    if activation not in ACTIVATIONS:
      raise ValueError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")

    self.image_size = image_size
    self.latent_dim = latent_dim
    self.channels = channels
    self.blocks_per_stage = blocks_per_stage
    self.upsample = upsample
    self.likelihood = likelihood
    self.num_classes = num_classes
    self.conditional = num_classes > 0
    self.kind = "rcvae" if self.conditional else "rvae"
    self.learned_scale = learned_scale
    self.fixed_scale = float(fixed_scale)
    self.scale_bounds = scale_bounds
    self.activation = activation
    self.bottleneck_shape = (image_size // factor, image_size // factor, channels[-1])
    self.dtype = dtype = layers.compute_dtype(dtype)
    extra = num_classes if self.conditional else 0
    act = _activation(activation)
    self._act = act

    def blocks(width, count):
      return nnx.List([ResidualBlock(width, activation=activation, rngs=rngs, dtype=dtype) for _ in range(count)])

    # encoder
    self.stem = ConvNormAct(IN_CHANNELS + extra, channels[0], strides=1, activation=activation, rngs=rngs, dtype=dtype)
    self.enc_blocks = nnx.List([blocks(c, n) for c, n in zip(channels, counts)])
    widths = (*channels[1:], channels[-1])
    self.enc_down = nnx.List(
      [
        ConvNormAct(cin, cout, strides=2, activation=activation, rngs=rngs, dtype=dtype)
        for cin, cout in zip(channels, widths)
      ]
    )
    flat = math.prod(self.bottleneck_shape)
    self.mean_head = nnx.Linear(flat, latent_dim, dtype=dtype, rngs=rngs)
    self.logvar_head = nnx.Linear(flat, latent_dim, dtype=dtype, rngs=rngs)

    # decoder
    self.dec_dense = nnx.Linear(latent_dim + extra, flat, dtype=dtype, rngs=rngs)
    self.dec_norm = _bn(channels[-1], rngs, dtype)
    outs = (*reversed(channels[:-1]), channels[0])
    ups, cin = [], channels[-1]
    for c in outs:
      ups.append(Upsample(cin, c, mode=upsample, activation=activation, rngs=rngs, dtype=dtype))
      cin = c
    self.dec_up = nnx.List(ups)
    # decoder stage j works at the resolution of encoder stage n - 1 - j
    self.dec_blocks = nnx.List([blocks(c, n) for c, n in zip(outs, reversed(counts))])
    self.dec_out = _conv(cin, IN_CHANNELS, rngs, dtype, use_bias=True)

    # raw parameter of the bounded std, initialised so that the std starts at fixed_scale
    if likelihood == "gaussian" and learned_scale:
      lo, hi = (math.log(b) for b in scale_bounds)
      fraction = (math.log(self.fixed_scale) - lo) / (hi - lo)
      self.scale_logit = nnx.Param(jnp.asarray(math.log(fraction / (1 - fraction)), jnp.float32))
    else:
      self.scale_logit = None

  # -- pieces
  # The interface every kind shares, taken from the plain autoencoders rather than copied: label vectors,
  # input checks, the training forward pass, reconstruction, decoding to images, sampling and the NLL.
  _labels = autoencoders.Autoencoder._labels
  _check_images = autoencoders.Autoencoder._check_images
  __call__ = autoencoders.VAE.__call__
  reconstruct = autoencoders.VAE.reconstruct
  to_image = autoencoders.Autoencoder.to_image
  generate = autoencoders.Autoencoder.generate
  sample = autoencoders.Autoencoder.sample
  reconstruction_nll = autoencoders.Autoencoder.reconstruction_nll

  def encode(self, x: jax.Array, *, train: bool, labels=None) -> tuple[jax.Array, jax.Array]:
    """(mean, logvar) of q(z | x[, y]), each (N, latent_dim), float32."""
    self._check_images(x)
    y = self._labels(labels, x.shape[0])
    if y is not None:
      maps = jnp.broadcast_to(y[:, None, None, :].astype(x.dtype), (*x.shape[:3], y.shape[-1]))
      x = jnp.concatenate([x, maps], axis=-1)
    h = self.stem(x, train=train)
    for stage, down in zip(self.enc_blocks, self.enc_down):
      for block in stage:
        h = block(h, train=train)
      h = down(h, train=train)
    h = h.reshape(h.shape[0], -1)
    # float32 codes whatever the compute dtype (sampling, KL and the loss need the range)
    return self.mean_head(h).astype(jnp.float32), self.logvar_head(h).astype(jnp.float32)

  def decode(self, z: jax.Array, *, train: bool, labels=None) -> jax.Array:
    """(N, H, W, 3) float32: logits ("bernoulli") or means in [0, 1] ("gaussian")."""
    if z.ndim != 2 or z.shape[1] != self.latent_dim:
      raise ValueError(f"z must be (N, {self.latent_dim}), got shape {z.shape}")
    y = self._labels(labels, z.shape[0])
    if y is not None:
      z = jnp.concatenate([z, y.astype(z.dtype)], axis=-1)
    h = self.dec_dense(z).reshape(z.shape[0], *self.bottleneck_shape)
    h = self._act(self.dec_norm(h, use_running_average=not train))
    for up, stage in zip(self.dec_up, self.dec_blocks):
      h = up(h, train=train)
      for block in stage:
        h = block(h, train=train)
    out = self.dec_out(h).astype(jnp.float32)
    return jax.nn.sigmoid(out) if self.likelihood == "gaussian" else out

  @property
  def log_scale(self) -> jax.Array | None:
    """The bounded learned log std (None for "bernoulli" or a fixed scale)."""
    if self.scale_logit is None:
      return None
    lo, hi = (math.log(b) for b in self.scale_bounds)
    return lo + (hi - lo) * jax.nn.sigmoid(self.scale_logit.get_value())

  def output_log_scale(self) -> jax.Array | None:
    """log std of the gaussian likelihood (bounded learned or fixed); None for "bernoulli"."""
    if self.likelihood != "gaussian":
      return None
    if self.scale_logit is not None:
      return self.log_scale
    return jnp.asarray(math.log(self.fixed_scale), jnp.float32)


# ----------------------------------------------------------------------------- kinds

_OPTIONS = ("latent_dim", "channels", "upsample", "likelihood", "learned_scale", "blocks_per_stage", "scale_bounds")
_LATENT_SAMPLERS = ("posterior_jitter", "interpolation", "gmm", "counterfactual")


def _build(conditional: bool):
  def build(*, image_size, num_classes, rngs, dtype, **options):
    if conditional and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2):
      raise ValueError(f"generator kind 'rcvae' needs num_classes >= 2, got {num_classes!r}")
    # configs hold lists where the model takes tuples
    for name in ("channels", "scale_bounds"):
      if isinstance(options.get(name), list):
        options[name] = tuple(options[name])
    return ResidualVAE(
      image_size=image_size, num_classes=num_classes if conditional else 0, rngs=rngs, dtype=dtype, **options
    )

  return build


kinds.register(
  kinds.GeneratorKind(
    name="rvae",
    build=_build(conditional=False),
    options=_OPTIONS,
    losses=kinds.vae_losses,
    samplers=_LATENT_SAMPLERS,
    default_sampler="posterior_jitter",
    description="residual VAE (ResNet blocks, sub-pixel decoder, bounded gaussian scale)",
  )
)
kinds.register(
  kinds.GeneratorKind(
    name="rcvae",
    build=_build(conditional=True),
    options=_OPTIONS,
    losses=kinds.vae_losses,
    samplers=("prior", *_LATENT_SAMPLERS),
    default_sampler="prior",
    conditional=True,
    description="class-conditional residual VAE",
  )
)
