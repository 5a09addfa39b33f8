"""Face-mask classifiers in Flax NNX: a configurable CNN with named presets, and ResNets.

Build a model by name::

    model = create_model("cnn96", num_classes=2, rngs=nnx.Rngs(0))            # 64 px by default
    model = create_model("cnn96", 3, rngs=nnx.Rngs(0), image_size=32)         # flatten size for 32 px
    model = create_model("resnet18_small", 2, rngs=nnx.Rngs(0), num_filters=16)

Interface of every model
------------------------
``model(x, *, train, rngs=None) -> logits``
    ``x``: float32 NHWC images (any H = W >= 16; for flatten-based CNNs H = W must equal the
    ``image_size`` the model was built for). ``logits``: ``(N, 1)`` for ``head_kind == "binary"``
    (the class-1 logit; train with sigmoid / binary cross-entropy) or ``(N, num_classes)`` for
    ``"softmax"``. ``head="auto"`` picks "binary" when ``num_classes == 2``, else "softmax".

    ``train=True``: dropout is active and draws its masks from ``rngs`` (an ``nnx.Rngs`` whose
    ``dropout`` stream - or ``default`` stream - is used, an ``nnx.RngStream``, or a raw
    ``jax.random`` key); BatchNorm normalises with the batch statistics and updates its running
    averages (``nnx.BatchStat`` variables). ``train=False``: deterministic, BatchNorm uses the
    running averages, no ``rngs`` needed. ``train=True`` without ``rngs`` raises ``ValueError``
    when dropout would run (models hold no rng state of their own, so ``nnx.state(model)`` is
    only ``nnx.Param`` + ``nnx.BatchStat``). Under ``nnx.grad`` / ``nnx.value_and_grad`` pass an
    ``nnx.Rngs`` into the differentiated function as an argument (``grad(loss)(model, rngs)``),
    not by closure: NNX refuses to advance a stream created outside the transform (a raw key
    may be closed over).
``model.features(x, *, train, rngs=None)``
    The last convolutional feature map ``(N, h, w, C)`` (after its activation, before any
    pooling) - the map to use for Grad-CAM.
``model.classify(features, *, train, rngs=None)``
    The rest of the network, so ``model(x) == model.classify(model.features(x))`` (same ``rngs``
    object, so dropout masks follow the same stream).
Attributes: ``head_kind`` ("binary" | "softmax"), ``num_classes``, ``num_logits``.

Models
------
``CNN``: conv blocks (conv -> [BatchNorm] -> activation -> [2x2 pool] -> [conv dropout]), then
flatten (``global_pool="flatten"``, needs ``image_size``) or global average pool (``"avg"``),
dropout, dense layers, head. Presets in ``MODELS``:

* ``cnn96``: conv 96 3x3 + ReLU + 2x2 max-pool, dropout 0.3, flatten, dense 128 ReLU, head.
* ``cnn_bn3``: 3 x (conv 3x3 + BN + ReLU + 2x2 max-pool) with 4 / 8 / 16 channels, flatten, head.
* ``cnn_lenet4``: 4 x (conv 5x5 + ReLU + 2x2 max-pool) with 6 / 16 / 32 / 64 channels ("SAME"
  padding, so 32 px inputs reach 2x2x64), flatten, dense 512 / 256 / 128 ReLU, head.

Convolutions use "SAME" padding (override ``padding="VALID"`` for Keras-style valid convs); a
convolution followed by BatchNorm has no bias (the BN shift replaces it).

``image_size``: flatten models need the flattened size at construction, so ``CNN`` takes
``image_size`` (default 64). ``create_model`` accepts ``image_size=`` for every model and passes
it on only to models that take it (ResNets and ``global_pool="avg"`` CNNs are size-agnostic).

``ResNet`` (v1.5: stride on the 3x3 conv of the bottleneck, projection shortcut - 1x1 conv + BN -
when the shape changes, BN after every conv, global average pool, head): ``ResNet18`` / ``34`` /
``50`` partials; ``small_images=False`` uses the ImageNet stem (7x7/2 conv + BN + ReLU + 3x3/2
max-pool), ``small_images=True`` a 3x3/1 conv + BN + ReLU stem without max-pool, for 32-64 px
inputs. Registry: ``resnet18``, ``resnet34``, ``resnet50`` (ImageNet stem) and ``resnet18_small``,
``resnet34_small``, ``resnet50_small``. ``num_filters`` (default 64) sets the width of the first
stage (stage i has ``num_filters * 2**i`` channels, times 4 at the output of bottleneck blocks).
Conv kernels use He-normal (fan-out) init as in torchvision; BN momentum 0.9 (= PyTorch 0.1).

Speed (``vaeaug.models.layers``): pooling uses the reshape / slice pools (XLA's reduce_window
max-pool backward is several times slower on CPU; the 3x3/2 stem pool has a custom backward) and
convs are ``layers.Conv``, which runs convs on maps of at most 3x3 as im2col + matmul (XLA's CPU
conv takes ~1 s for a 3x3 conv on a 2x2x512 map at batch 64: the last ResNet stage at 32-64 px)
and, on CPU, computes the kernel gradient of large-map, wide convs as matmuls. Parameters and
results are nnx.Conv's. ``scripts/benchmark.py`` measures the train steps against PyTorch.

Mixed precision: every model takes ``dtype`` ("float32" default, "bfloat16"; see
``layers.compute_dtype``): convs, matmuls and activations run in that dtype, parameters and
BatchNorm statistics stay float32 (same checkpoints), and the logits are returned as float32.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from classifiers import pretrained
from vaeaug.models import layers

__all__ = [
  "CNN",
  "MODELS",
  "BasicBlock",
  "BottleneckBlock",
  "Classifier",
  "ResNet",
  "ResNet18",
  "ResNet34",
  "ResNet50",
  "count_params",
  "create_model",
  "resolve_head",
]

HEADS = ("auto", "binary", "softmax")
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

RngsLike = nnx.Rngs | nnx.RngStream | jax.Array | int | None


# ----------------------------------------------------------------------------- helpers


def resolve_head(head: str, num_classes: int) -> str:
  """The head kind ("binary" | "softmax") for ``head`` in ("auto", "binary", "softmax")."""
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
  if head not in HEADS:
    raise ValueError(f"unknown head {head!r}; choose one of {HEADS}")
  if head == "auto":
    return "binary" if num_classes == 2 else "softmax"
  if head == "binary" and num_classes != 2:
    raise ValueError(f"head='binary' (one sigmoid logit) needs num_classes == 2, got {num_classes}")
  return head


def count_params(model: nnx.Module) -> int:
  """Number of trainable parameters (``nnx.Param`` entries; BatchNorm statistics excluded)."""
  return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _as_rngs(rngs: RngsLike) -> nnx.Rngs | nnx.RngStream | None:
  """nnx.Rngs / RngStream as given; a raw key or int seed becomes ``nnx.Rngs(dropout=...)``."""
  if rngs is None or isinstance(rngs, (nnx.Rngs, nnx.RngStream)):
    return rngs
  if isinstance(rngs, (int, jax.Array)):
    return nnx.Rngs(dropout=rngs)
  raise TypeError(f"rngs must be nnx.Rngs, nnx.RngStream, a jax key or an int, got {type(rngs)}")


def _rate(value: float, name: str) -> float:
  value = float(value)
  if not 0.0 <= value < 1.0:
    raise ValueError(f"{name} must be in [0, 1), got {value}")
  return value


def _per_block(value: Any, n: int, name: str) -> tuple:
  """A per-block tuple from a single value or a sequence of length n."""
  if isinstance(value, (list, tuple)):
    if len(value) != n:
      raise ValueError(f"{name} has {len(value)} entries but there are {n} conv blocks")
    return tuple(value)
  return (value,) * n


def _check_input(x: jax.Array, in_features: int) -> None:
  if x.ndim != 4:
    raise ValueError(f"expected NHWC images (N, H, W, C), got shape {x.shape}")
  if x.shape[-1] != in_features:
    raise ValueError(f"model takes {in_features} input channels, got shape {x.shape}")


class Classifier(nnx.Module):
  """Base class: ``__call__ = classify(features(x))``, dropout rng handling, the head."""

  head_kind: str
  num_classes: int
  has_dropout: bool = False
  dtype: Any = None  # compute dtype (layers.compute_dtype); parameters are float32

  def _init_head(self, in_features: int, num_classes: int, head: str, rngs: nnx.Rngs) -> None:
    self.head_kind = resolve_head(head, num_classes)
    self.num_classes = num_classes
    self.num_logits = 1 if self.head_kind == "binary" else num_classes
    self.head = nnx.Linear(in_features, self.num_logits, dtype=self.dtype, rngs=rngs)

  def _dropout_rngs(self, train: bool, rngs: RngsLike, needed: bool | None = None):
    """``rngs`` as nnx.Rngs / RngStream; ValueError if dropout will run (train mode and
    ``needed``, default: the model has dropout anywhere) and there are none."""
    rngs = _as_rngs(rngs)
    needed = self.has_dropout if needed is None else needed
    if train and needed and rngs is None:
      raise ValueError(
        f"{type(self).__name__} has dropout: train=True needs rngs, e.g. "
        "model(x, train=True, rngs=nnx.Rngs(dropout=key))"
      )
    return rngs

  def features(self, x: jax.Array, *, train: bool, rngs: RngsLike = None) -> jax.Array:
    raise NotImplementedError

  # Pretrained weights (`classifiers.pretrained`) and fine-tuning (`classifiers.transfer`).
  def weight_sources(self) -> dict[str, pretrained.Source]:
    """Checkpoint namings this model (with its options) can load, by name ("timm", "torchvision");
    empty when no published checkpoint has its shape."""
    return {}

  def weight_table(self, source: str) -> list[pretrained.Entry]:
    """Every variable of the model and the checkpoint tensor it comes from, in ``source``'s names."""
    raise NotImplementedError(f"{type(self).__name__} has no weight table")

  def weight_overrides(self) -> dict[str, Any]:
    """The model's values of the options that pretrained sources may require (`Source.overrides`)."""
    return {"bn_epsilon": self.bn_epsilon} if hasattr(self, "bn_epsilon") else {}

  def block_paths(self) -> list[list[tuple]]:
    """The backbone's blocks from input to output, each a list of nnx path prefixes that together
    hold its variables; everything outside ``head``. Fine-tuning unfreezes the last k of them."""
    raise NotImplementedError(f"{type(self).__name__} does not list its blocks")

  def classify(self, features: jax.Array, *, train: bool, rngs: RngsLike = None) -> jax.Array:
    raise NotImplementedError

  def __call__(self, x: jax.Array, *, train: bool, rngs: RngsLike = None) -> jax.Array:
    rngs = self._dropout_rngs(train, rngs)  # convert once: one stream for both halves
    return self.classify(self.features(x, train=train, rngs=rngs), train=train, rngs=rngs)

  def _logits(self, x: jax.Array) -> jax.Array:
    # float32 logits whatever the compute dtype: losses and probabilities need the range
    return self.head(x).astype(jnp.float32)


# ----------------------------------------------------------------------------- CNN


class CNN(Classifier):
  """Configurable CNN.

  Block i: ``Conv(conv_features[i], kernel_sizes[i])`` -> [BatchNorm] -> activation ->
  [2x2 pool ``pool[i]``] -> [Dropout ``conv_dropout``]. Then ``global_pool`` ("flatten" or
  "avg" global average), Dropout ``dropout``, dense layers ``dense_features`` (each followed by
  the activation and Dropout ``dense_dropout``), and the head (a Linear layer).

  Args:
    conv_features: output channels of each conv block (non-empty).
    kernel_sizes: one int for all blocks or one per block.
    batch_norm: BatchNorm after every conv (the conv then has no bias).
    pool: "max" | "avg" | None, for all blocks or one per block.
    dense_features: widths of the hidden dense layers (may be empty).
    dropout: rate applied once to the pooled / flattened features, before the dense layers.
    activation: "relu" | "tanh" | "leaky_relu" | "swish" | ... (``layers.ACTIVATIONS``).
    num_classes, head: see ``resolve_head``.
    conv_dropout: rate applied after every conv block (after its pool).
    global_pool: "flatten" (needs ``image_size``) or "avg".
    image_size: input height = width, used by "flatten" to size the first dense layer.
    in_features: input channels.
    padding: "SAME" (default) or "VALID" for the convs.
    dense_dropout: rate applied after every hidden dense layer.
    dtype: compute dtype (``layers.compute_dtype``; None = float32); parameters stay float32.
  """

  def __init__(
    self,
    conv_features: Sequence[int],
    kernel_sizes: int | Sequence[int] = 3,
    *,
    batch_norm: bool = False,
    pool: str | None | Sequence[str | None] = "max",
    dense_features: Sequence[int] = (),
    dropout: float = 0.0,
    activation: str = "relu",
    num_classes: int,
    head: str = "auto",
    rngs: nnx.Rngs,
    conv_dropout: float = 0.0,
    global_pool: str = "flatten",
    image_size: int = 64,
    in_features: int = 3,
    padding: str = "SAME",
    dense_dropout: float = 0.0,
    dtype: Any = None,
  ):
    conv_features = tuple(conv_features) if isinstance(conv_features, (list, tuple)) else None
    if not conv_features or not all(isinstance(f, int) and f > 0 for f in conv_features):
      raise ValueError("conv_features must be a non-empty sequence of positive ints")
    n = len(conv_features)
    kernel_sizes = _per_block(kernel_sizes, n, "kernel_sizes")
    if not all(isinstance(k, int) and k > 0 for k in kernel_sizes):
      raise ValueError(f"kernel_sizes must be positive ints, got {kernel_sizes}")
    pools = tuple(None if p in (None, "none") else p for p in _per_block(pool, n, "pool"))
    for p in pools:
      layers.pool_2x2(p)  # validates
    dense_features = tuple(dense_features)
    if not all(isinstance(f, int) and f > 0 for f in dense_features):
      raise ValueError(f"dense_features must be positive ints, got {dense_features}")
    self.activation_name = activation
    self.act = layers.activation(activation)
    if global_pool not in ("flatten", "avg"):
      raise ValueError(f"unknown global_pool {global_pool!r}; choose 'flatten' or 'avg'")
    if padding not in ("SAME", "VALID"):
      raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    if not isinstance(image_size, int) or image_size < 1:
      raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    dropout = _rate(dropout, "dropout")
    conv_dropout = _rate(conv_dropout, "conv_dropout")
    dense_dropout = _rate(dense_dropout, "dense_dropout")
    self.dtype = dtype = layers.compute_dtype(dtype)

    self.conv_features = conv_features
    self.kernel_sizes = kernel_sizes
    self.pools = pools
    self.batch_norm = bool(batch_norm)
    self.global_pool = global_pool
    self.in_features = in_features
    self.has_dropout = dropout > 0 or conv_dropout > 0 or (dense_dropout > 0 and bool(dense_features))

    convs, norms = [], []
    size, channels = image_size, in_features
    for features, k, p in zip(conv_features, kernel_sizes, pools):
      convs.append(
        layers.Conv(channels, features, (k, k), padding=padding, use_bias=not self.batch_norm, dtype=dtype, rngs=rngs)
      )
      if self.batch_norm:
        norms.append(layers.BatchNorm(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, rngs=rngs))
      channels = features
      if padding == "VALID":
        size -= k - 1
      if p is not None:
        size //= 2
      if size < 1 and global_pool == "flatten":
        raise ValueError(
          f"image_size={image_size} is too small for these conv blocks "
          f"(kernels {kernel_sizes}, pools {pools}, padding {padding})"
        )
    self.convs = nnx.List(convs)
    self.norms = nnx.List(norms)
    self.conv_dropout = nnx.Dropout(conv_dropout)

    if global_pool == "flatten":
      self.image_size = image_size
      self.flat_shape = (size, size, channels)
      width = size * size * channels
    else:
      self.image_size = None
      self.flat_shape = None
      width = channels
    self.dropout = nnx.Dropout(dropout)
    dense = []
    for features in dense_features:
      dense.append(nnx.Linear(width, features, dtype=dtype, rngs=rngs))
      width = features
    self.dense = nnx.List(dense)
    self.dense_dropout = nnx.Dropout(dense_dropout)
    self._init_head(width, num_classes, head, rngs)

  def _block(self, i: int, x: jax.Array, train: bool) -> jax.Array:
    x = self.convs[i](x)
    if self.batch_norm:
      x = self.norms[i](x, use_running_average=not train)
    return self.act(x)

  def _pool_dropout(self, i: int, x: jax.Array, train: bool, rngs) -> jax.Array:
    pool = layers.pool_2x2(self.pools[i])
    if pool is not None:
      x = pool(x)
    return self.conv_dropout(x, deterministic=not train, rngs=rngs)

  def features(self, x: jax.Array, *, train: bool, rngs: RngsLike = None) -> jax.Array:
    """Output of the last conv block's activation (before its pool): (N, h, w, C_last)."""
    _check_input(x, self.in_features)
    last = len(self.convs) - 1
    rngs = self._dropout_rngs(train, rngs, needed=last > 0 and self.conv_dropout.rate > 0)
    for i in range(last):
      x = self._pool_dropout(i, self._block(i, x, train), train, rngs)
    return self._block(last, x, train)

  def classify(self, features: jax.Array, *, train: bool, rngs: RngsLike = None) -> jax.Array:
    rngs = self._dropout_rngs(train, rngs)
    x = self._pool_dropout(len(self.convs) - 1, features, train, rngs)
    if self.global_pool == "flatten":
      if tuple(x.shape[1:]) != self.flat_shape:
        raise ValueError(
          f"this flatten model was built for image_size={self.image_size} (final map "
          f"{self.flat_shape}) but the final map is {tuple(x.shape[1:])}; pass "
          "image_size= to create_model / CNN, or use global_pool='avg'"
        )
      x = x.reshape(x.shape[0], -1)
    else:
      x = layers.global_avg_pool(x)
    x = self.dropout(x, deterministic=not train, rngs=rngs)
    for dense in self.dense:
      x = self.dense_dropout(self.act(dense(x)), deterministic=not train, rngs=rngs)
    return self._logits(x)


# ----------------------------------------------------------------------------- ResNet

_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")  # kaiming_normal_


def _conv(
  cin: int,
  cout: int,
  k: int | tuple[int, int],
  stride: int,
  rngs: nnx.Rngs,
  dtype=None,
  *,
  groups: int = 1,
  bias: bool = False,
  padding: Any = None,
) -> layers.Conv:
  """Conv with PyTorch-style symmetric padding k // 2 (output = ceil(H / stride)) unless ``padding``
  is given ("VALID", or per-axis pairs); ``groups=cin`` is a depthwise conv. Bias-free by default
  (a batch norm follows)."""
  kh, kw = (k, k) if isinstance(k, int) else k
  if padding is None:
    padding = ((kh // 2, kh // 2), (kw // 2, kw // 2))
  return layers.Conv(
    cin,
    cout,
    (kh, kw),
    strides=(stride, stride),
    padding=padding,
    feature_group_count=groups,
    use_bias=bias,
    kernel_init=_conv_init,
    dtype=dtype,
    rngs=rngs,
  )


def _bn(features: int, rngs: nnx.Rngs, zero: bool = False, dtype=None, epsilon: float = BN_EPSILON) -> nnx.BatchNorm:
  return nnx.BatchNorm(
    features,
    momentum=BN_MOMENTUM,
    epsilon=epsilon,
    dtype=dtype,
    rngs=rngs,
    scale_init=nnx.initializers.zeros_init() if zero else nnx.initializers.ones_init(),
  )


class BasicBlock(nnx.Module):
  """3x3 conv (stride) -> BN -> act -> 3x3 conv -> BN, + shortcut, act. Output: features."""

  expansion = 1

  def __init__(
    self,
    in_features: int,
    features: int,
    strides: int,
    *,
    act: Callable,
    zero_init_residual: bool,
    rngs: nnx.Rngs,
    dtype=None,
  ):
    out = features * self.expansion
    self.act = act
    self.conv1 = _conv(in_features, features, 3, strides, rngs, dtype)
    self.bn1 = _bn(features, rngs, dtype=dtype)
    self.conv2 = _conv(features, out, 3, 1, rngs, dtype)
    self.bn2 = _bn(out, rngs, zero=zero_init_residual, dtype=dtype)
    if strides != 1 or in_features != out:
      self.proj_conv = _conv(in_features, out, 1, strides, rngs, dtype)
      self.proj_bn = _bn(out, rngs, dtype=dtype)
    else:
      self.proj_conv = self.proj_bn = None

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    ura = not train
    y = self.act(self.bn1(self.conv1(x), use_running_average=ura))
    y = self.bn2(self.conv2(y), use_running_average=ura)
    if self.proj_conv is not None:
      x = self.proj_bn(self.proj_conv(x), use_running_average=ura)
    return self.act(x + y)


class BottleneckBlock(nnx.Module):
  """ResNet v1.5 bottleneck: 1x1 -> BN -> act -> 3x3 (stride) -> BN -> act -> 1x1 (4x) -> BN,
  + shortcut, act. Output: 4 * features."""

  expansion = 4

  def __init__(
    self,
    in_features: int,
    features: int,
    strides: int,
    *,
    act: Callable,
    zero_init_residual: bool,
    rngs: nnx.Rngs,
    dtype=None,
  ):
    out = features * self.expansion
    self.act = act
    self.conv1 = _conv(in_features, features, 1, 1, rngs, dtype)
    self.bn1 = _bn(features, rngs, dtype=dtype)
    self.conv2 = _conv(features, features, 3, strides, rngs, dtype)
    self.bn2 = _bn(features, rngs, dtype=dtype)
    self.conv3 = _conv(features, out, 1, 1, rngs, dtype)
    self.bn3 = _bn(out, rngs, zero=zero_init_residual, dtype=dtype)
    if strides != 1 or in_features != out:
      self.proj_conv = _conv(in_features, out, 1, strides, rngs, dtype)
      self.proj_bn = _bn(out, rngs, dtype=dtype)
    else:
      self.proj_conv = self.proj_bn = None

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    ura = not train
    y = self.act(self.bn1(self.conv1(x), use_running_average=ura))
    y = self.act(self.bn2(self.conv2(y), use_running_average=ura))
    y = self.bn3(self.conv3(y), use_running_average=ura)
    if self.proj_conv is not None:
      x = self.proj_bn(self.proj_conv(x), use_running_average=ura)
    return self.act(x + y)


BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


class ResNet(Classifier):
  """ResNet v1.5.

  Args:
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    block: "basic" | "bottleneck".
    num_filters: channels of the first stage (stage i: ``num_filters * 2**i``); also the stem width.
    small_images: 3x3/1 stem conv without max-pool (32-64 px inputs) instead of the ImageNet
      stem (7x7/2 conv, 3x3/2 max-pool).
    num_classes, head: see ``resolve_head``.
    activation: activation used everywhere ReLU is in the standard ResNet.
    dropout: rate applied to the pooled features before the head (0 = standard ResNet).
    zero_init_residual: init the last BN scale of every block to 0 (Goyal et al.). Off by
      default (as torchvision): with it on, the residual-branch convs get zero gradients at step 0.
    in_features: input channels.
    dtype: compute dtype (``layers.compute_dtype``; None = float32); parameters stay float32.
  """

  def __init__(
    self,
    stage_sizes: Sequence[int],
    block: str = "basic",
    num_filters: int = 64,
    small_images: bool = False,
    *,
    num_classes: int,
    head: str = "auto",
    rngs: nnx.Rngs,
    activation: str = "relu",
    dropout: float = 0.0,
    zero_init_residual: bool = False,
    in_features: int = 3,
    dtype: Any = None,
  ):
    stage_sizes = tuple(stage_sizes) if isinstance(stage_sizes, (list, tuple)) else None
    if not stage_sizes or not all(isinstance(s, int) and s > 0 for s in stage_sizes):
      raise ValueError("stage_sizes must be a non-empty sequence of positive ints")
    if block not in BLOCKS:
      raise ValueError(f"unknown block {block!r}; choose one of {sorted(BLOCKS)}")
    if not isinstance(num_filters, int) or num_filters < 1:
      raise ValueError(f"num_filters must be a positive int, got {num_filters!r}")
    self.activation_name = activation
    self.act = layers.activation(activation)
    dropout = _rate(dropout, "dropout")
    self.has_dropout = dropout > 0
    self.stage_sizes = stage_sizes
    self.block_kind = block
    self.small_images = bool(small_images)
    self.in_features = in_features
    self.dtype = dtype = layers.compute_dtype(dtype)

    if self.small_images:
      self.stem_conv = _conv(in_features, num_filters, 3, 1, rngs, dtype)
    else:
      self.stem_conv = _conv(in_features, num_filters, 7, 2, rngs, dtype)
    self.stem_bn = _bn(num_filters, rngs, dtype=dtype)
    block_cls = BLOCKS[block]
    blocks, channels = [], num_filters
    for i, n in enumerate(stage_sizes):
      for j in range(n):
        strides = 2 if i > 0 and j == 0 else 1
        blocks.append(
          block_cls(
            channels,
            num_filters * 2**i,
            strides,
            act=self.act,
            zero_init_residual=zero_init_residual,
            rngs=rngs,
            dtype=dtype,
          )
        )
        channels = num_filters * 2**i * block_cls.expansion
    self.blocks = nnx.List(blocks)
    self.num_features = channels
    self.dropout = nnx.Dropout(dropout)
    self._init_head(channels, num_classes, head, rngs)

  def features(self, x: jax.Array, *, train: bool, rngs: RngsLike = None) -> jax.Array:
    """Output of the last stage: (N, h, w, num_features)."""
    _check_input(x, self.in_features)
    x = self.act(self.stem_bn(self.stem_conv(x), use_running_average=not train))
    if not self.small_images:
      x = layers.max_pool_3x3_s2(x)
    for block in self.blocks:
      x = block(x, train=train)
    return x

  def classify(self, features: jax.Array, *, train: bool, rngs: RngsLike = None) -> jax.Array:
    rngs = self._dropout_rngs(train, rngs)
    x = layers.global_avg_pool(features)
    x = self.dropout(x, deterministic=not train, rngs=rngs)
    return self._logits(x)

  def weight_sources(self) -> dict[str, pretrained.Source]:
    if self.small_images:
      return {}  # the 3x3 stem has no ImageNet counterpart
    names = {
      (2, 2, 2, 2): "resnet18",
      (3, 4, 6, 3): "resnet34" if self.block_kind == "basic" else "resnet50",
    }.get(self.stage_sizes)
    # timm's ResNets keep torchvision's names (and "resnet18" is the model name in both): one source.
    return {"torchvision": pretrained.Source("torchvision", models=(names,) if names else ())}

  def weight_table(self, source: str) -> list[pretrained.Entry]:
    table = pretrained.conv(("stem_conv",), "conv1") + pretrained.bn(("stem_bn",), "bn1")
    i = 0
    for stage, n in enumerate(self.stage_sizes):
      for j in range(n):
        block, key = ("blocks", i), f"layer{stage + 1}.{j}"
        for c in range(1, 4 if self.block_kind == "bottleneck" else 3):
          table += pretrained.conv((*block, f"conv{c}"), f"{key}.conv{c}") + pretrained.bn(
            (*block, f"bn{c}"), f"{key}.bn{c}"
          )
        if self.blocks[i].proj_conv is not None:
          table += pretrained.conv((*block, "proj_conv"), f"{key}.downsample.0")
          table += pretrained.bn((*block, "proj_bn"), f"{key}.downsample.1")
        i += 1
    return table + pretrained.linear(("head",), "fc", head=True)

  def block_paths(self) -> list[list[tuple]]:
    return [[("stem_conv",), ("stem_bn",)]] + [[("blocks", i)] for i in range(len(self.blocks))]


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block="basic")
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="basic")
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="bottleneck")


# ----------------------------------------------------------------------------- registry

MODELS: dict[str, Callable[..., Classifier]] = {
  # Generic, fully configurable (pass conv_features=..., stage_sizes=... as overrides).
  "cnn": CNN,
  "resnet": ResNet,
  # CNN presets.
  "cnn96": functools.partial(
    CNN,
    conv_features=(96,),
    kernel_sizes=3,
    batch_norm=False,
    pool="max",
    dense_features=(128,),
    dropout=0.3,
    activation="relu",
  ),
  "cnn_bn3": functools.partial(
    CNN,
    conv_features=(4, 8, 16),
    kernel_sizes=3,
    batch_norm=True,
    pool="max",
    dense_features=(),
    dropout=0.0,
    activation="relu",
  ),
  "cnn_lenet4": functools.partial(
    CNN,
    conv_features=(6, 16, 32, 64),
    kernel_sizes=5,
    batch_norm=False,
    pool="max",
    dense_features=(512, 256, 128),
    dropout=0.0,
    activation="relu",
  ),
  # ResNets: ImageNet stem, and the small-image stem.
  "resnet18": ResNet18,
  "resnet34": ResNet34,
  "resnet50": ResNet50,
  "resnet18_small": functools.partial(ResNet18, small_images=True),
  "resnet34_small": functools.partial(ResNet34, small_images=True),
  "resnet50_small": functools.partial(ResNet50, small_images=True),
}


def register(entries: dict[str, Callable[..., Classifier]], owner: str) -> None:
  """Add an architecture module's registry entries to ``MODELS`` (`classifiers/__init__.py` calls it for
  each module: adding an architecture is a module and a line there)."""
  clash = sorted(set(entries) & set(MODELS))
  if clash:
    raise ValueError(f"{owner} redefines models {clash}")
  MODELS.update(entries)


def _parameters(factory: Callable) -> dict[str, inspect.Parameter]:
  """Keyword parameters of a registry entry (a Module class or a partial of one).

  ``inspect.signature`` of an NNX Module class shows the metaclass's ``(*args, **kwargs)``, so
  read ``__init__`` and apply the partials' keywords as defaults."""
  if isinstance(factory, functools.partial):
    params = _parameters(factory.func)
    for key, value in factory.keywords.items():
      if key in params:
        params[key] = params[key].replace(default=value)
    return params
  target = factory.__init__ if isinstance(factory, type) else factory
  params = dict(inspect.signature(target).parameters)
  params.pop("self", None)
  return params


def create_model(name: str, num_classes: int, *, rngs: nnx.Rngs, head: str = "auto", **overrides: Any) -> Classifier:
  """Build the registry model ``name`` (see ``MODELS``; case-insensitive, '-' == '_').

  ``overrides`` replace the preset's options (e.g. ``dropout=0.5``, ``activation="swish"``,
  ``num_filters=16``, ``small_images=True``). ``image_size`` (default 64) is accepted for
  every model and used only by models that need it (flatten CNNs). Unknown names, unknown
  options and bad values raise ``ValueError``.
  """
  key = name.lower().replace("-", "_") if isinstance(name, str) else name
  if key not in MODELS:
    raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
  factory = MODELS[key]
  params = _parameters(factory)
  if "image_size" in overrides and "image_size" not in params:
    overrides.pop("image_size")
  unknown = sorted(set(overrides) - set(params))
  if unknown:
    options = sorted(set(params) - {"num_classes", "head", "rngs"})
    raise ValueError(f"unknown option(s) {unknown} for model {name!r}; valid: {options}")
  kwargs = dict(overrides, num_classes=num_classes, head=head, rngs=rngs)
  missing = sorted(
    p.name
    for p in params.values()
    if p.default is inspect.Parameter.empty and p.name not in kwargs and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
  )
  if missing:
    raise ValueError(f"model {name!r} needs option(s) {missing}")
  resolve_head(head, num_classes)  # validate before building anything
  return factory(**kwargs)
