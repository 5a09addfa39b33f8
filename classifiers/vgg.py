"""VGG-19 (Simonyan & Zisserman, 2014) in Flax NNX, with and without batch norm, as torchvision builds it.

Features: torchvision's configuration "E": five stages of 3x3 convs (padding 1, with bias, also
before a batch norm, as torchvision) with 2 / 2 / 4 / 4 / 4 convs of 64 / 128 / 256 / 512 / 512
channels, each conv followed by [BatchNorm (``batch_norm=True``)] and ReLU, a 2x2/2 max-pool after
every stage. ``features`` returns the last conv's ReLU output, before the fifth pool (Grad-CAM's map);
``classify`` starts with that pool.

Classifier (``classifier=``):

* ``"fc"`` (default, torchvision's): adaptive average pool to 7x7 with PyTorch's bins, flatten in
  NCHW order (C, h, w), Linear 25088 -> 4096, ReLU, Dropout, Linear 4096 -> 4096, ReLU, Dropout, head.
  143.7M parameters (1000 classes), 119.5M of them in the two 4096-wide layers.
* ``"avg"``: global average pool -> Dropout -> head; no 4096-wide layers (20M parameters), a light
  head for small images. Pretrained backbones still load; the checkpoints' fc6 / fc7 are reported as
  known extras.

Registry: ``vgg19``, ``vgg19_bn``. Inputs from 32 px (the fifth pool needs a 2x2 map). ``depths=``
builds configurations A / B / D (VGG-11 / 13 / 16), whose checkpoints load the same way.

Pretrained weights: torchvision (``features.N``, ``classifier.0 / 3 / 6``) and timm (``features.N``,
``pre_logits.fc1`` a 7x7 conv and ``pre_logits.fc2`` a 1x1 conv, loaded into fc6 / fc7 as dense
layers, ``head.fc``). timm's ConvMlp adaptive-pools only maps smaller than 7x7 and otherwise slides
its 7x7 ``fc1`` over the map and averages after ``fc2``: up to 224 px (a map of at most 7x7) both
libraries compute what this model computes; above 224 px this model follows torchvision (pool to 7x7,
then the dense layers), so timm's logits differ there. With ``classifier="avg"`` the two namings
coincide (``features.N``): any VGG file is reported as torchvision's, its classifier tensors as extras.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from classifiers import models, pretrained
from vaeaug.models import layers

__all__ = ["MODELS", "VGG", "VGG19", "VGG19BN", "adaptive_avg_pool"]

DEPTHS = (2, 2, 4, 4, 4)  # configuration "E"
# torchvision's / timm's configurations A, B, D, E: the same layers and names, other depths.
NAMES = {(1, 1, 2, 2, 2): "vgg11", (2, 2, 2, 2, 2): "vgg13", (2, 2, 3, 3, 3): "vgg16", DEPTHS: "vgg19"}
WIDTHS = (64, 128, 256, 512, 512)
POOLED = 7  # torchvision's AdaptiveAvgPool2d((7, 7)) / timm's 7x7 fc1
HIDDEN = 4096
CLASSIFIERS = ("fc", "avg")
MIN_SIZE = 2 ** len(WIDTHS)  # the fifth max-pool needs a 2x2 map

_linear_init = nnx.initializers.normal(0.01)  # torchvision: nn.init.normal_(fc.weight, 0, 0.01), bias 0


@functools.cache
def _bins(size: int, out: int) -> np.ndarray:
  """(out, size) averaging matrix of PyTorch's adaptive_avg_pool: bin i spans
  [floor(i * size / out), ceil((i + 1) * size / out)), so bins overlap or repeat pixels when
  size is not a multiple of out (size < out replicates)."""
  matrix = np.zeros((out, size), np.float32)
  for i in range(out):
    start, end = (i * size) // out, -((-(i + 1) * size) // out)
    matrix[i, start:end] = 1.0 / (end - start)
  return matrix


def adaptive_avg_pool(x: jax.Array, out: int = POOLED) -> jax.Array:
  """PyTorch's ``adaptive_avg_pool2d(x, out)`` on NHWC maps of any size >= 1 (static averaging
  matrices: a 7x7 map passes through unchanged)."""
  h, w = x.shape[-3:-1]
  if (h, w) == (out, out):
    return x
  rows, cols = (jnp.asarray(_bins(n, out), x.dtype) for n in (h, w))
  return jnp.einsum("ih,jw,...hwc->...ijc", rows, cols, x)


class VGG(models.Classifier):
  """VGG with torchvision's layout (configuration "E" by default).

  Args:
    depths: convs per stage (five stages of 64 / 128 / 256 / 512 / 512 channels); VGG-19's by default,
      VGG-11 / 13 / 16's (``NAMES``) also load their torchvision / timm weights.
    batch_norm: BatchNorm (``bn_epsilon``) after every conv (the conv keeps its bias, as torchvision).
    classifier: "fc" (torchvision's 7x7 pool + two 4096-wide layers) or "avg" (global average pool).
    num_classes, head: see ``models.resolve_head``.
    dropout: rate after each 4096-wide layer ("fc") or on the pooled features ("avg"); torchvision's 0.5.
    in_features: input channels.
    dtype: compute dtype (``layers.compute_dtype``; None = float32); parameters stay float32.
    bn_epsilon: batch-norm epsilon (1e-5 in torchvision and timm).
  """

  def __init__(
    self,
    depths: Sequence[int] = DEPTHS,
    batch_norm: bool = False,
    classifier: str = "fc",
    *,
    num_classes: int,
    head: str = "auto",
    rngs: nnx.Rngs,
    dropout: float = 0.5,
    in_features: int = 3,
    dtype: Any = None,
    bn_epsilon: float = models.BN_EPSILON,
  ):
    depths = tuple(depths) if isinstance(depths, (list, tuple)) else None
    if depths is None or len(depths) != len(WIDTHS) or not all(isinstance(d, int) and d > 0 for d in depths):
      raise ValueError(f"depths must be {len(WIDTHS)} positive ints (convs per stage), got {depths!r}")
    if classifier not in CLASSIFIERS:
      raise ValueError(f"unknown classifier {classifier!r}; choose one of {CLASSIFIERS}")
    if not isinstance(in_features, int) or isinstance(in_features, bool) or in_features < 1:
      raise ValueError(f"in_features must be a positive int, got {in_features!r}")
    if not float(bn_epsilon) > 0:
      raise ValueError(f"bn_epsilon must be > 0, got {bn_epsilon!r}")
    dropout = models._rate(dropout, "dropout")
    self.dtype = dtype = layers.compute_dtype(dtype)
    self.depths = depths
    self.batch_norm = bool(batch_norm)
    self.classifier = classifier
    self.in_features = in_features
    self.bn_epsilon = float(bn_epsilon)
    self.dropout_rate = dropout
    self.has_dropout = dropout > 0

    convs, norms, channels = [], [], in_features
    for depth, width in zip(depths, WIDTHS):
      for _ in range(depth):
        convs.append(models._conv(channels, width, 3, 1, rngs, dtype, bias=True))
        if self.batch_norm:
          norms.append(models._bn(width, rngs, dtype=dtype, epsilon=self.bn_epsilon))
        channels = width
    self.convs = nnx.List(convs)
    self.norms = nnx.List(norms) if self.batch_norm else None
    self.num_features = channels
    if classifier == "fc":
      dense = functools.partial(nnx.Linear, dtype=dtype, kernel_init=_linear_init, rngs=rngs)
      self.fc6 = dense(channels * POOLED * POOLED, HIDDEN)
      self.fc7 = dense(HIDDEN, HIDDEN)
      width = HIDDEN
    else:
      self.fc6 = self.fc7 = None
      width = channels
    self.dropout = nnx.Dropout(dropout)
    self._init_head(width, num_classes, head, rngs)

  def _stages(self) -> list[range]:
    """Indices into ``convs`` of each stage's convs."""
    ends = np.cumsum(self.depths)
    return [range(end - depth, end) for depth, end in zip(self.depths, ends)]

  def features(self, x: jax.Array, *, train: bool, rngs: models.RngsLike = None) -> jax.Array:
    """The last conv's ReLU output, before the fifth max-pool: (N, H / 16, W / 16, 512)."""
    models._check_input(x, self.in_features)
    if min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(f"VGG needs inputs of at least {MIN_SIZE}x{MIN_SIZE} px (five 2x2 max-pools), got {x.shape}")
    stages = self._stages()
    for s, stage in enumerate(stages):
      if s > 0:
        x = layers.max_pool_2x2(x)
      for i in stage:
        x = self.convs[i](x)
        if self.batch_norm:
          x = self.norms[i](x, use_running_average=not train)
        x = jax.nn.relu(x)
    return x

  def classify(self, features: jax.Array, *, train: bool, rngs: models.RngsLike = None) -> jax.Array:
    rngs = self._dropout_rngs(train, rngs)
    x = layers.max_pool_2x2(features)
    if self.classifier == "avg":
      x = self.dropout(layers.global_avg_pool(x), deterministic=not train, rngs=rngs)
      return self._logits(x)
    x = adaptive_avg_pool(x)
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # NCHW flatten: torchvision's fc6 rows
    for fc in (self.fc6, self.fc7):
      x = self.dropout(jax.nn.relu(fc(x)), deterministic=not train, rngs=rngs)
    return self._logits(x)

  # ----------------------------------------------------------------------------- pretrained weights

  def _name(self) -> str | None:
    name = NAMES.get(self.depths)
    return None if name is None else name + "_bn" * self.batch_norm

  def weight_sources(self) -> dict[str, pretrained.Source]:
    name = self._name()
    if name is None or self.in_features != 3:
      return {}  # no published checkpoint has these shapes
    overrides = {"bn_epsilon": models.BN_EPSILON} if self.batch_norm else {}
    timm_fc, torchvision_fc = (r"^pre_logits\.fc[12]\.",), (r"^classifier\.[03]\.",)
    timm_ignore = torchvision_ignore = ()
    if self.classifier == "avg":
      # Without fc6 / fc7 both tables are the same `features.N` names (timm kept torchvision's), so any
      # VGG file matches the first source, torchvision: each source knows both namings' classifiers.
      timm_ignore = torchvision_ignore = (*timm_fc, r"^head\.fc\.", *torchvision_fc, r"^classifier\.6\.")
    return {
      "torchvision": pretrained.Source("torchvision", overrides=overrides, ignore=torchvision_ignore, models=(name,)),
      "timm": pretrained.Source("timm", overrides=overrides, ignore=timm_ignore, models=(name,)),
    }

  def weight_table(self, source: str) -> list[pretrained.Entry]:
    if source not in ("timm", "torchvision"):
      raise ValueError(f"unknown source {source!r}; VGG has 'timm' and 'torchvision' tables")
    table, index = [], 0  # index into torchvision's / timm's `features` Sequential
    for s, stage in enumerate(self._stages()):
      if s > 0:
        index += 1  # the max-pool
      for i in stage:
        table += pretrained.conv(("convs", i), f"features.{index}", bias=True)
        if self.batch_norm:
          table += pretrained.bn(("norms", i), f"features.{index + 1}")
        index += 3 if self.batch_norm else 2  # conv, [bn], relu
    if source == "torchvision":
      if self.classifier == "fc":
        table += pretrained.linear(("fc6",), "classifier.0") + pretrained.linear(("fc7",), "classifier.3")
      return table + pretrained.linear(("head",), "classifier.6", head=True)
    if self.classifier == "fc":
      table += pretrained.linear(("fc6",), "pre_logits.fc1", layout="conv_as_linear")
      table += pretrained.linear(("fc7",), "pre_logits.fc2", layout="conv_as_linear")
    return table + pretrained.linear(("head",), "head.fc", head=True)

  def block_paths(self) -> list[list[tuple]]:
    blocks = []
    for stage in self._stages():
      blocks.append([("convs", i) for i in stage] + ([("norms", i) for i in stage] if self.batch_norm else []))
    if self.classifier == "fc":
      blocks += [[("fc6",)], [("fc7",)]]
    return blocks

  def torch_twin(self) -> tuple[str, dict]:
    name = self._name()
    if self.classifier != "fc" or name is None:
      raise NotImplementedError(
        f"VGG(classifier={self.classifier!r}, depths={self.depths}) has no timm twin: timm's VGGs are "
        "configurations A / B / D / E with the 4096-wide ConvMlp pre-logits (classifier='fc')"
      )
    return name, {"in_chans": self.in_features, "drop_rate": self.dropout_rate}


VGG19 = functools.partial(VGG, depths=DEPTHS, batch_norm=False)
VGG19BN = functools.partial(VGG, depths=DEPTHS, batch_norm=True)

MODELS: dict = {"vgg19": VGG19, "vgg19_bn": VGG19BN}
