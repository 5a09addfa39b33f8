"""Inception-v3 (Szegedy et al. 2016) in Flax NNX, layer for layer torchvision's ``inception_v3``
(timm's ``inception_v3`` has the same modules and names), without the auxiliary classifier.

Registry (``MODELS``, merged into ``classifiers.models.MODELS``):

* ``inception_v3``: the ImageNet network; inputs of at least 75 x 75 px (299 px for the weights).
* ``inception_v3_small`` (``small_images=True``): for 32-64 px inputs. The ImageNet stem shrinks
  the map 8x before Mixed_5b (a 64 px input would leave Mixed_7a less than its 3x3 window); here
  Conv2d_1a_3x3 has stride 1 and the first max-pool is gone. The parameter shapes are unchanged,
  so the ImageNet checkpoints still load (the filters then see the image at 2x their scale).

Variables are named after the PyTorch modules (``Mixed_6b.branch7x7_2.conv.kernel`` holds
``Mixed_6b.branch7x7_2.conv.weight``), so the weight table is the layer list itself.

Pools: the branch average pools (3x3, stride 1, padding 1, zeros counted: PyTorch's default
``count_include_pad=True``) are two separable sums of shifted slices; the 3x3 / 2 VALID max-pools
(stem and the reduction blocks Mixed_6a / Mixed_7a) use strided slices with a custom backward,
like ``layers.max_pool_3x3_s2`` (which pads by 1, the ResNet stem's pool, so it is not this one):
XLA:CPU's ``reduce_window`` max-pool backward is slow.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from classifiers import models, pretrained
from vaeaug.models import layers

__all__ = ["MODELS", "InceptionV3", "avg_pool_3x3_s1", "max_pool_3x3_s2_valid"]

BN_EPSILON = 1e-3  # torchvision's BasicConv2d and timm's norm_eps
MIN_SIZE = 75  # smallest input of the ImageNet network (torchvision's "min_size")


# ----------------------------------------------------------------------------- pools


def avg_pool_3x3_s1(x: jax.Array) -> jax.Array:
  """3x3 average pool, stride 1, zero padding 1, divisor always 9 (``count_include_pad=True``)."""
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  rows = xp[:, :-2] + xp[:, 1:-1] + xp[:, 2:]
  return (rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]) / 9


def max_pool_3x3_s2_valid(x: jax.Array) -> jax.Array:
  """3x3 max-pool, stride 2, no padding (PyTorch ``MaxPool2d(3, 2)``): `layers.max_pool_3x3_s2`, whose
  backward is fast on XLA:CPU."""
  return layers.max_pool_3x3_s2(x, padding=0)


class BasicConv2d(nnx.Module):
  """Conv (no bias) -> BatchNorm -> ReLU. ``padding``: None = symmetric k // 2 per axis (what
  torchvision passes for every padded conv here, e.g. (0, 3) for 1x7), or "VALID"."""

  def __init__(self, cin, cout, k, stride=1, padding=None, *, rngs, dtype, epsilon):
    self.conv = models._conv(cin, cout, k, stride, rngs, dtype, padding=padding)
    self.bn = models._bn(cout, rngs, dtype=dtype, epsilon=epsilon)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return jax.nn.relu(self.bn(self.conv(x), use_running_average=not train))


class _Mixed(nnx.Module):
  """An Inception block: ``convs`` lists its BasicConv2d attribute names in checkpoint order."""

  convs: tuple[str, ...] = ()

  def _add(self, name, *args, **kwargs) -> None:
    setattr(self, name, BasicConv2d(*args, **kwargs))

  def _run(self, x, train, *names):
    for name in names:
      x = getattr(self, name)(x, train=train)
    return x


class InceptionA(_Mixed):
  """35x35 block: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg-pool -> 1x1."""

  convs = (
    "branch1x1",
    "branch5x5_1",
    "branch5x5_2",
    "branch3x3dbl_1",
    "branch3x3dbl_2",
    "branch3x3dbl_3",
    "branch_pool",
  )

  def __init__(self, cin: int, pool_features: int, **kw):
    self._add("branch1x1", cin, 64, 1, **kw)
    self._add("branch5x5_1", cin, 48, 1, **kw)
    self._add("branch5x5_2", 48, 64, 5, **kw)
    self._add("branch3x3dbl_1", cin, 64, 1, **kw)
    self._add("branch3x3dbl_2", 64, 96, 3, **kw)
    self._add("branch3x3dbl_3", 96, 96, 3, **kw)
    self._add("branch_pool", cin, pool_features, 1, **kw)
    self.out_features = 64 + 64 + 96 + pool_features

  def __call__(self, x, *, train):
    return jnp.concatenate(
      [
        self._run(x, train, "branch1x1"),
        self._run(x, train, "branch5x5_1", "branch5x5_2"),
        self._run(x, train, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
        self._run(avg_pool_3x3_s1(x), train, "branch_pool"),
      ],
      axis=-1,
    )


class InceptionB(_Mixed):
  """Reduction 35 -> 17: 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | max-pool 3x3/2."""

  convs = ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3")

  def __init__(self, cin: int, **kw):
    self._add("branch3x3", cin, 384, 3, 2, "VALID", **kw)
    self._add("branch3x3dbl_1", cin, 64, 1, **kw)
    self._add("branch3x3dbl_2", 64, 96, 3, **kw)
    self._add("branch3x3dbl_3", 96, 96, 3, 2, "VALID", **kw)
    self.out_features = 384 + 96 + cin

  def __call__(self, x, *, train):
    return jnp.concatenate(
      [
        self._run(x, train, "branch3x3"),
        self._run(x, train, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
        max_pool_3x3_s2_valid(x),
      ],
      axis=-1,
    )


class InceptionC(_Mixed):
  """17x17 block with factorised 7x7 convs: 1x1 | 1x1 -> 1x7 -> 7x1 | 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7 |
  avg-pool -> 1x1."""

  convs = (
    "branch1x1",
    "branch7x7_1",
    "branch7x7_2",
    "branch7x7_3",
    "branch7x7dbl_1",
    "branch7x7dbl_2",
    "branch7x7dbl_3",
    "branch7x7dbl_4",
    "branch7x7dbl_5",
    "branch_pool",
  )

  def __init__(self, cin: int, channels_7x7: int, **kw):
    c7 = channels_7x7
    self._add("branch1x1", cin, 192, 1, **kw)
    self._add("branch7x7_1", cin, c7, 1, **kw)
    self._add("branch7x7_2", c7, c7, (1, 7), **kw)
    self._add("branch7x7_3", c7, 192, (7, 1), **kw)
    self._add("branch7x7dbl_1", cin, c7, 1, **kw)
    self._add("branch7x7dbl_2", c7, c7, (7, 1), **kw)
    self._add("branch7x7dbl_3", c7, c7, (1, 7), **kw)
    self._add("branch7x7dbl_4", c7, c7, (7, 1), **kw)
    self._add("branch7x7dbl_5", c7, 192, (1, 7), **kw)
    self._add("branch_pool", cin, 192, 1, **kw)
    self.out_features = 4 * 192

  def __call__(self, x, *, train):
    return jnp.concatenate(
      [
        self._run(x, train, "branch1x1"),
        self._run(x, train, "branch7x7_1", "branch7x7_2", "branch7x7_3"),
        self._run(x, train, *(f"branch7x7dbl_{i}" for i in range(1, 6))),
        self._run(avg_pool_3x3_s1(x), train, "branch_pool"),
      ],
      axis=-1,
    )


class InceptionD(_Mixed):
  """Reduction 17 -> 8: 1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | max-pool 3x3/2."""

  convs = ("branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4")

  def __init__(self, cin: int, **kw):
    self._add("branch3x3_1", cin, 192, 1, **kw)
    self._add("branch3x3_2", 192, 320, 3, 2, "VALID", **kw)
    self._add("branch7x7x3_1", cin, 192, 1, **kw)
    self._add("branch7x7x3_2", 192, 192, (1, 7), **kw)
    self._add("branch7x7x3_3", 192, 192, (7, 1), **kw)
    self._add("branch7x7x3_4", 192, 192, 3, 2, "VALID", **kw)
    self.out_features = 320 + 192 + cin

  def __call__(self, x, *, train):
    return jnp.concatenate(
      [
        self._run(x, train, "branch3x3_1", "branch3x3_2"),
        self._run(x, train, *(f"branch7x7x3_{i}" for i in range(1, 5))),
        max_pool_3x3_s2_valid(x),
      ],
      axis=-1,
    )


class InceptionE(_Mixed):
  """8x8 block with split 3x3s: 1x1 | 1x1 -> (1x3, 3x1) | 1x1 -> 3x3 -> (1x3, 3x1) | avg-pool -> 1x1."""

  convs = (
    "branch1x1",
    "branch3x3_1",
    "branch3x3_2a",
    "branch3x3_2b",
    "branch3x3dbl_1",
    "branch3x3dbl_2",
    "branch3x3dbl_3a",
    "branch3x3dbl_3b",
    "branch_pool",
  )

  def __init__(self, cin: int, **kw):
    self._add("branch1x1", cin, 320, 1, **kw)
    self._add("branch3x3_1", cin, 384, 1, **kw)
    self._add("branch3x3_2a", 384, 384, (1, 3), **kw)
    self._add("branch3x3_2b", 384, 384, (3, 1), **kw)
    self._add("branch3x3dbl_1", cin, 448, 1, **kw)
    self._add("branch3x3dbl_2", 448, 384, 3, **kw)
    self._add("branch3x3dbl_3a", 384, 384, (1, 3), **kw)
    self._add("branch3x3dbl_3b", 384, 384, (3, 1), **kw)
    self._add("branch_pool", cin, 192, 1, **kw)
    self.out_features = 320 + 2 * 384 + 2 * 384 + 192

  def __call__(self, x, *, train):
    b3 = self._run(x, train, "branch3x3_1")
    b3dbl = self._run(x, train, "branch3x3dbl_1", "branch3x3dbl_2")
    return jnp.concatenate(
      [
        self._run(x, train, "branch1x1"),
        self._run(b3, train, "branch3x3_2a"),
        self._run(b3, train, "branch3x3_2b"),
        self._run(b3dbl, train, "branch3x3dbl_3a"),
        self._run(b3dbl, train, "branch3x3dbl_3b"),
        self._run(avg_pool_3x3_s1(x), train, "branch_pool"),
      ],
      axis=-1,
    )


# ----------------------------------------------------------------------------- the network

# (name, cin, cout, kernel, stride, padding); Conv2d_1a_3x3's stride is 1 with small_images.
STEM = (
  ("Conv2d_1a_3x3", None, 32, 3, 2, "VALID"),
  ("Conv2d_2a_3x3", 32, 32, 3, 1, "VALID"),
  ("Conv2d_2b_3x3", 32, 64, 3, 1, None),
  ("Conv2d_3b_1x1", 64, 80, 1, 1, None),
  ("Conv2d_4a_3x3", 80, 192, 3, 1, "VALID"),
)
# (name, block class, extra arguments) from Mixed_5b to Mixed_7c
MIXED = (
  ("Mixed_5b", InceptionA, {"pool_features": 32}),
  ("Mixed_5c", InceptionA, {"pool_features": 64}),
  ("Mixed_5d", InceptionA, {"pool_features": 64}),
  ("Mixed_6a", InceptionB, {}),
  ("Mixed_6b", InceptionC, {"channels_7x7": 128}),
  ("Mixed_6c", InceptionC, {"channels_7x7": 160}),
  ("Mixed_6d", InceptionC, {"channels_7x7": 160}),
  ("Mixed_6e", InceptionC, {"channels_7x7": 192}),
  ("Mixed_7a", InceptionD, {}),
  ("Mixed_7b", InceptionE, {}),
  ("Mixed_7c", InceptionE, {}),
)


def _final_size(size: int, small_images: bool) -> int:
  """Side of the Mixed_7c map for an input side ``size``; 0 when some VALID window does not fit."""
  valid = lambda s, k=3, stride=1: (s - k) // stride + 1 if s >= k else 0  # noqa: E731
  s = valid(size, stride=1 if small_images else 2)  # Conv2d_1a_3x3
  s = valid(s)  # Conv2d_2a_3x3 (2b, 3b keep the size)
  if not small_images:
    s = valid(s, stride=2)  # first max-pool
  s = valid(valid(s), stride=2)  # Conv2d_4a_3x3, second max-pool
  return valid(valid(s, stride=2), stride=2)  # Mixed_6a, Mixed_7a


def min_input_size(small_images: bool) -> int:
  """Smallest input side the network accepts: 75 px (ImageNet stem) or 21 px (small-image stem)."""
  return next(s for s in range(1, 1000) if _final_size(s, small_images) > 0)


class InceptionV3(models.Classifier):
  """Inception-v3: torchvision's ``Inception3`` (``aux_logits=False``) / timm's ``inception_v3``.

  Stem: Conv2d_1a_3x3 (3x3/2 VALID), Conv2d_2a_3x3 (3x3 VALID), Conv2d_2b_3x3 (3x3 pad 1), 3x3/2
  VALID max-pool, Conv2d_3b_1x1, Conv2d_4a_3x3 (3x3 VALID), 3x3/2 max-pool; every conv is
  conv (no bias) + BatchNorm (epsilon 1e-3) + ReLU. Then Mixed_5b-5d (InceptionA), Mixed_6a (B),
  Mixed_6b-6e (C), Mixed_7a (D), Mixed_7b-7c (E), global average pool, dropout, head. No auxiliary
  classifier: the ``AuxLogits.*`` tensors of torchvision's downloads are reported as known extras.

  Input scaling of the ImageNet weights: torchvision's and timm's Inception-v3 checkpoints were
  trained on images scaled to [-1, 1] (``(x - 0.5) / 0.5``, normalization "symmetric", the
  sources' default). torchvision's ``inception_v3(weights=...)`` sets ``transform_input=True``,
  which takes ImageNet-normalised inputs and rescales them to that range inside the model; this
  model has no such step, so feed it symmetric-normalised images (as timm does). timm's
  ``gluon_in1k`` weights expect ImageNet normalisation, which its ``config.json`` says and
  ``pretrained.checkpoint_info`` reads.

  Args:
    small_images: Conv2d_1a_3x3 with stride 1 and no first max-pool (4x the stem resolution), for
      32-64 px inputs (smallest 21 px); the ImageNet stem needs at least 75 px.
    num_classes, head: see ``models.resolve_head``.
    dropout: rate on the pooled features before the head (torchvision's 0.5; timm's default is 0).
    in_features: input channels.
    dtype: compute dtype (``layers.compute_dtype``); parameters stay float32.
    bn_epsilon: BatchNorm epsilon (1e-3, what both checkpoint families use).
  """

  def __init__(
    self,
    small_images: bool = False,
    *,
    num_classes: int,
    head: str = "auto",
    rngs: nnx.Rngs,
    dropout: float = 0.5,
    in_features: int = 3,
    dtype: Any = None,
    bn_epsilon: float = BN_EPSILON,
  ):
    if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
      raise ValueError(f"in_features must be a positive int, got {in_features!r}")
    if isinstance(bn_epsilon, bool) or not isinstance(bn_epsilon, (int, float)) or not bn_epsilon > 0:
      raise ValueError(f"bn_epsilon must be a positive number, got {bn_epsilon!r}")
    dropout = models._rate(dropout, "dropout")
    self.small_images = bool(small_images)
    self.in_features = in_features
    self.bn_epsilon = float(bn_epsilon)
    self.has_dropout = dropout > 0
    self.dtype = dtype = layers.compute_dtype(dtype)
    self.min_size = min_input_size(self.small_images)
    kw = {"rngs": rngs, "dtype": dtype, "epsilon": self.bn_epsilon}

    for name, cin, cout, k, stride, padding in STEM:
      if name == "Conv2d_1a_3x3":
        cin, stride = in_features, 1 if self.small_images else stride
      setattr(self, name, BasicConv2d(cin, cout, k, stride, padding, **kw))
    channels = STEM[-1][2]
    for name, block, extra in MIXED:
      module = block(channels, **extra, **kw)
      setattr(self, name, module)
      channels = module.out_features
    self.num_features = channels
    self.dropout = nnx.Dropout(dropout)
    self._init_head(channels, num_classes, head, rngs)

  def features(self, x: jax.Array, *, train: bool, rngs: models.RngsLike = None) -> jax.Array:
    """Output of Mixed_7c: (N, h, w, 2048); h = 8 at 299 px, 1 at 75 px (2 at 32 px with
    small_images)."""
    models._check_input(x, self.in_features)
    if min(x.shape[1], x.shape[2]) < self.min_size:
      hint = "" if self.small_images else "; for 32-64 px images use inception_v3_small (small_images=True)"
      raise ValueError(
        f"{type(self).__name__} needs inputs of at least {self.min_size}x{self.min_size} px, got "
        f"{x.shape[1]}x{x.shape[2]} (its VALID convs and pools would leave an empty map){hint}"
      )
    for name, *_ in STEM:
      x = getattr(self, name)(x, train=train)
      if (name == "Conv2d_2b_3x3" and not self.small_images) or name == "Conv2d_4a_3x3":
        x = max_pool_3x3_s2_valid(x)
    for name, *_ in MIXED:
      x = getattr(self, name)(x, train=train)
    return x

  def classify(self, features: jax.Array, *, train: bool, rngs: models.RngsLike = None) -> jax.Array:
    rngs = self._dropout_rngs(train, rngs)
    x = layers.global_avg_pool(features)
    x = self.dropout(x, deterministic=not train, rngs=rngs)
    return self._logits(x)

  # -- pretrained weights, fine-tuning, benchmark twin

  def weight_sources(self) -> dict[str, pretrained.Source]:
    # Both families use the same tensor names (timm kept torchvision's), so the tables agree and a
    # file's naming alone cannot tell them apart: "auto" reports torchvision (listed first), as for
    # the ResNets; pretrained_source="timm" picks timm's explicitly. The small-image stem has the
    # same shapes, so it loads the same checkpoints.
    common = {
      "input_size": 299,
      "normalization": "symmetric",
      "overrides": {"bn_epsilon": BN_EPSILON},
      "ignore": (r"^AuxLogits\.",),
      "models": ("inception_v3",),
    }
    return {"torchvision": pretrained.Source("torchvision", **common), "timm": pretrained.Source("timm", **common)}

  def _conv_paths(self) -> list[tuple]:
    """Every BasicConv2d's nnx path, input to output, in checkpoint order."""
    paths = [(name,) for name, *_ in STEM]
    for name, *_ in MIXED:
      paths += [(name, conv) for conv in getattr(self, name).convs]
    return paths

  def weight_table(self, source: str) -> list[pretrained.Entry]:
    if source not in self.weight_sources():
      raise ValueError(f"unknown weight source {source!r}; choose one of {sorted(self.weight_sources())}")
    table = []
    for path in self._conv_paths():
      key = ".".join(path)  # the attributes carry the PyTorch module names
      table += pretrained.conv((*path, "conv"), f"{key}.conv") + pretrained.bn((*path, "bn"), f"{key}.bn")
    return table + pretrained.linear(("head",), "fc", head=True)

  def block_paths(self) -> list[list[tuple]]:
    return [[(name,)] for name, *_ in STEM] + [[(name,)] for name, *_ in MIXED]

  def torch_twin(self) -> tuple[str, dict]:
    # small_images: the same timm model; experiments.torch_reference gives it the stride-1 stem without max-pool
    return "inception_v3", ({} if self.in_features == 3 else {"in_chans": self.in_features})


MODELS: dict = {
  "inception_v3": functools.partial(InceptionV3, small_images=False),
  "inception_v3_small": functools.partial(InceptionV3, small_images=True),
}
