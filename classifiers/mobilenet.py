"""MobileNetV2, MobileNetV3-Small / -Large and EfficientNet-B0 in Flax NNX, layer for layer as
torchvision and timm build them.

All four are a stem conv, a sequence of inverted-residual blocks (one implementation,
`InvertedResidual`: [1x1 expand conv + BN + act] -> kxk depthwise conv + BN + act -> [squeeze-
excitation] -> 1x1 project conv + BN, no activation; identity shortcut when the stride is 1 and the
width is kept, with optional drop-path on the residual branch), a 1x1 conv + BN + act to the final
width (``features`` returns its output), global average pooling, [pre-logits layer], dropout, head.

* ``MobileNetV2`` (``mobilenet_v2``; torchvision ``mobilenet_v2``, timm ``mobilenetv2_100`` /
  ``_140`` ...): ReLU6, no SE. ``width`` scales every channel count as
  ``make_divisible(c * width, 8)``; the final 1280 only grows (``width > 1``), as both references.
* ``MobileNetV3`` (``mobilenet_v3_small`` / ``mobilenet_v3_large``; torchvision
  ``mobilenet_v3_small / large``, timm ``mobilenetv3_small_100 / large_100``): ReLU or hard-swish
  per block, SE with ``make_divisible(expanded / 4, 8)`` squeeze channels, ReLU in the reduce and a
  hard-sigmoid gate; after pooling a 576 -> 1024 / 960 -> 1280 pre-logits layer with bias and
  hard-swish, then dropout and the head.
* ``EfficientNet`` (``efficientnet_b0``; torchvision and timm ``efficientnet_b0``): SiLU, SE with
  ``max(1, block input / 4)`` squeeze channels, SiLU in the reduce and a sigmoid gate; stochastic depth
  (``drop_path``, torchvision's ``stochastic_depth_prob``) on the residual branch of block i (of 16) with
  probability ``drop_path * i / 16``, in train mode; a 320 -> 1280 conv + BN + SiLU.

``small_images=True``: the stem conv has stride 1 instead of 2 (same parameters, so the ImageNet
weights still load), for 32-64 px inputs: 4x the resolution in every block. The ImageNet stem reduces
by 32 (a 2x2 map at 64 px, 1x1 at 32 px).

Batch-norm epsilon: timm's checkpoints use 1e-5 everywhere; torchvision's MobileNetV3 was trained
with 1e-3 (its Source overrides ``bn_epsilon``), its MobileNetV2 and EfficientNet-B0 with 1e-5.

Pretrained weights (``classifiers.pretrained``): both namings for each model. timm keeps the blocks
in stages (``blocks.<stage>.<i>``, ``conv_pw`` / ``conv_dw`` / ``conv_pwl``, ``se.conv_reduce`` /
``conv_expand``; MobileNetV3's last 1x1 conv is a stage of its own and its pre-logits layer is the
1x1 conv ``conv_head`` with bias), torchvision numbers the layers of each block's Sequential
(``features.<i>.conv.<k>`` in MobileNetV2, ``.block.<k>`` with ``fc1`` / ``fc2`` SE convs in the
others; EfficientNet's ``features`` are stages). The SE and pre-logits 1x1 convs are dense layers
here (they run on pooled vectors).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx

from classifiers import models, pretrained
from vaeaug.models import layers

__all__ = [
  "MODELS",
  "BlockSpec",
  "EfficientNet",
  "InvertedResidual",
  "MobileNetV2",
  "MobileNetV3",
  "SqueezeExcite",
  "make_divisible",
]

DROPOUT = 0.2  # torchvision's classifier dropout in all four
EFFICIENTNET_DROP_PATH = 0.2  # torchvision's efficientnet_b0 stochastic_depth_prob
# timm's MobileNetV2 variants with published (or named) configurations, by width.
TIMM_MOBILENETV2 = {
  0.35: "mobilenetv2_035",
  0.5: "mobilenetv2_050",
  0.75: "mobilenetv2_075",
  1.0: "mobilenetv2_100",
  1.4: "mobilenetv2_140",
}


def make_divisible(value: float, divisor: int = 8) -> int:
  """torchvision's ``_make_divisible`` / timm's ``make_divisible``: the nearest multiple of ``divisor``
  (at least ``divisor``), bumped up one step if rounding lost more than 10%."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One inverted-residual block: ``cin`` -> ``expanded`` (no expand conv when equal) -> ``cout``.
  ``se``: squeeze channels of the SE layer (0 = none). ``act``: activation name (`layers.activation`)."""

  cin: int
  cout: int
  expanded: int
  kernel: int
  stride: int
  act: str
  se: int = 0
  drop_path: float = 0.0


class SqueezeExcite(nnx.Module):
  """Squeeze-excitation: global average pool -> reduce (with bias) -> act -> expand (with bias) -> gate,
  times the input. The references' 1x1 convs on the pooled map are dense layers here."""

  def __init__(self, features: int, squeeze: int, *, act: Callable, gate: Callable, rngs: nnx.Rngs, dtype=None):
    self.act, self.gate = act, gate
    self.reduce = nnx.Linear(features, squeeze, dtype=dtype, rngs=rngs)
    self.expand = nnx.Linear(squeeze, features, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.gate(self.expand(self.act(self.reduce(layers.global_avg_pool(x)))))
    return x * scale[..., None, None, :]


class InvertedResidual(nnx.Module):
  """MobileNetV2's inverted residual / EfficientNet's MBConv / MobileNetV3's bneck (see the module
  docstring). Variables: ``expand_conv`` / ``expand_bn`` (None when ``expanded == cin``), ``dw_conv`` /
  ``dw_bn``, ``se`` (None without SE), ``project_conv`` / ``project_bn``."""

  def __init__(
    self,
    spec: BlockSpec,
    *,
    se_act: Callable,
    se_gate: Callable,
    bn_epsilon: float,
    rngs: nnx.Rngs,
    dtype=None,
  ):
    self.spec = spec
    self.act = layers.activation(spec.act)
    bn = functools.partial(models._bn, rngs=rngs, dtype=dtype, epsilon=bn_epsilon)
    mid = spec.expanded
    if mid != spec.cin:
      self.expand_conv = models._conv(spec.cin, mid, 1, 1, rngs, dtype)
      self.expand_bn = bn(mid)
    else:
      self.expand_conv = self.expand_bn = None
    self.dw_conv = models._conv(mid, mid, spec.kernel, spec.stride, rngs, dtype, groups=mid)
    self.dw_bn = bn(mid)
    self.se = SqueezeExcite(mid, spec.se, act=se_act, gate=se_gate, rngs=rngs, dtype=dtype) if spec.se else None
    self.project_conv = models._conv(mid, spec.cout, 1, 1, rngs, dtype)
    self.project_bn = bn(spec.cout)
    self.residual = spec.stride == 1 and spec.cin == spec.cout
    # Stochastic depth: one keep / drop per example, survivors scaled by 1 / (1 - p) (torchvision "row").
    self.drop_path = nnx.Dropout(spec.drop_path if self.residual else 0.0, broadcast_dims=(1, 2, 3))

  def __call__(self, x: jax.Array, *, train: bool, rngs=None) -> jax.Array:
    ura = not train
    y = x
    if self.expand_conv is not None:
      y = self.act(self.expand_bn(self.expand_conv(y), use_running_average=ura))
    y = self.act(self.dw_bn(self.dw_conv(y), use_running_average=ura))
    if self.se is not None:
      y = self.se(y)
    y = self.project_bn(self.project_conv(y), use_running_average=ura)
    if self.residual:
      y = self.drop_path(y, deterministic=not train, rngs=rngs) + x
    return y

  def table(self, path: tuple, key: str, style: str) -> list[pretrained.Entry]:
    """This block's entries; ``style``: "timm", "torchvision" (Sequential ``key.<k>``, SE ``fc1`` /
    ``fc2``) or "torchvision_v2" (MobileNetV2's: the project conv and its BN are ``key.<k>``,
    ``key.<k + 1>``)."""
    conv_bn = lambda conv, bn, conv_key, bn_key: (  # noqa: E731
      pretrained.conv((*path, conv), conv_key) + pretrained.bn((*path, bn), bn_key)
    )

    def se(reduce_key, expand_key):
      if self.se is None:
        return []
      return pretrained.linear((*path, "se", "reduce"), reduce_key, layout="conv_as_linear") + pretrained.linear(
        (*path, "se", "expand"), expand_key, layout="conv_as_linear"
      )

    if style == "timm":
      if self.expand_conv is None:  # timm's DepthwiseSeparableConv
        return (
          conv_bn("dw_conv", "dw_bn", f"{key}.conv_dw", f"{key}.bn1")
          + se(f"{key}.se.conv_reduce", f"{key}.se.conv_expand")
          + conv_bn("project_conv", "project_bn", f"{key}.conv_pw", f"{key}.bn2")
        )
      return (
        conv_bn("expand_conv", "expand_bn", f"{key}.conv_pw", f"{key}.bn1")
        + conv_bn("dw_conv", "dw_bn", f"{key}.conv_dw", f"{key}.bn2")
        + se(f"{key}.se.conv_reduce", f"{key}.se.conv_expand")
        + conv_bn("project_conv", "project_bn", f"{key}.conv_pwl", f"{key}.bn3")
      )
    table, k = [], 0
    if self.expand_conv is not None:
      table += conv_bn("expand_conv", "expand_bn", f"{key}.{k}.0", f"{key}.{k}.1")
      k += 1
    table += conv_bn("dw_conv", "dw_bn", f"{key}.{k}.0", f"{key}.{k}.1")
    k += 1
    if self.se is not None:
      table += se(f"{key}.{k}.fc1", f"{key}.{k}.fc2")
      k += 1
    if style == "torchvision_v2":
      return table + conv_bn("project_conv", "project_bn", f"{key}.{k}", f"{key}.{k + 1}")
    return table + conv_bn("project_conv", "project_bn", f"{key}.{k}.0", f"{key}.{k}.1")


def _check_options(in_features, bn_epsilon, small_images) -> None:
  if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
    raise ValueError(f"in_features must be a positive int, got {in_features!r}")
  if isinstance(bn_epsilon, bool) or not isinstance(bn_epsilon, (int, float)) or not bn_epsilon > 0:
    raise ValueError(f"bn_epsilon must be a positive number, got {bn_epsilon!r}")
  if not isinstance(small_images, bool):
    raise ValueError(f"small_images must be True or False, got {small_images!r}")


class _MobileNet(models.Classifier):
  """The shared network: stem conv + BN + act, ``stages`` of `InvertedResidual` blocks, final 1x1 conv +
  BN + act, average pool, [pre-logits dense + act], dropout, head. Subclasses choose the
  configuration and name the checkpoint tensors (``_names``)."""

  def _build(
    self,
    *,
    stem: int,
    stages: Sequence[Sequence[BlockSpec]],
    last: int,
    act: str,
    se_act: str,
    se_gate: str,
    pre_logits: int,
    small_images: bool,
    num_classes: int,
    head: str,
    rngs: nnx.Rngs,
    dropout: float,
    in_features: int,
    dtype: Any,
    bn_epsilon: float,
  ) -> None:
    _check_options(in_features, bn_epsilon, small_images)
    dropout = models._rate(dropout, "dropout")
    self.dtype = dtype = layers.compute_dtype(dtype)
    self.in_features = in_features
    self.bn_epsilon = float(bn_epsilon)
    self.small_images = small_images
    self.dropout_rate = dropout
    self.stage_sizes = tuple(len(stage) for stage in stages)
    specs = [spec for stage in stages for spec in stage]
    self.act = layers.activation(act)

    self.stem_conv = models._conv(in_features, stem, 3, 1 if small_images else 2, rngs, dtype)
    self.stem_bn = models._bn(stem, rngs, dtype=dtype, epsilon=self.bn_epsilon)
    se = {"se_act": layers.activation(se_act), "se_gate": layers.activation(se_gate)}
    self.blocks = nnx.List(
      [InvertedResidual(s, **se, bn_epsilon=self.bn_epsilon, rngs=rngs, dtype=dtype) for s in specs]
    )
    self.has_dropout = dropout > 0 or any(block.drop_path.rate > 0 for block in self.blocks)
    self.final_conv = models._conv(specs[-1].cout, last, 1, 1, rngs, dtype)
    self.final_bn = models._bn(last, rngs, dtype=dtype, epsilon=self.bn_epsilon)
    self.num_features = last
    self.pre_logits = nnx.Linear(last, pre_logits, dtype=dtype, rngs=rngs) if pre_logits else None
    self.dropout = nnx.Dropout(dropout)
    self._init_head(pre_logits or last, num_classes, head, rngs)

  def features(self, x: jax.Array, *, train: bool, rngs: models.RngsLike = None) -> jax.Array:
    """The final 1x1 conv's activation: (N, H / 32, W / 32, num_features) (H / 16 with small_images)."""
    models._check_input(x, self.in_features)
    rngs = self._dropout_rngs(train, rngs, needed=any(b.drop_path.rate > 0 for b in self.blocks))
    ura = not train
    x = self.act(self.stem_bn(self.stem_conv(x), use_running_average=ura))
    for block in self.blocks:
      x = block(x, train=train, rngs=rngs)
    return self.act(self.final_bn(self.final_conv(x), use_running_average=ura))

  def classify(self, features: jax.Array, *, train: bool, rngs: models.RngsLike = None) -> jax.Array:
    rngs = self._dropout_rngs(train, rngs, needed=self.dropout.rate > 0)
    x = layers.global_avg_pool(features)
    if self.pre_logits is not None:
      x = self.act(self.pre_logits(x))
    x = self.dropout(x, deterministic=not train, rngs=rngs)
    return self._logits(x)

  # -- pretrained weights, fine-tuning, benchmark twin

  def _stage_index(self) -> list[tuple[int, int]]:
    """(stage, index in stage) of every block."""
    return [(s, j) for s, n in enumerate(self.stage_sizes) for j in range(n)]

  def _names(self, source: str) -> dict:
    """Checkpoint names: "stem" / "final" (conv key, BN key), "blocks" ([(key, style)] per block),
    "pre_logits" (key, layout) or None, "head"."""
    raise NotImplementedError

  def _sources(self, timm_name: str | None, torchvision_name: str | None, torchvision_epsilon: float):
    """Both namings (their tables hold for any option; the loader refuses other shapes); ``models``
    lists the published checkpoints of this configuration."""
    if self.in_features != 3:
      return {}  # no published checkpoint has this stem
    timm = (timm_name,) if timm_name else ()
    torchvision = (torchvision_name,) if torchvision_name else ()
    return {
      "timm": pretrained.Source("timm", overrides={"bn_epsilon": models.BN_EPSILON}, models=timm),
      "torchvision": pretrained.Source(
        "torchvision", overrides={"bn_epsilon": torchvision_epsilon}, models=torchvision
      ),
    }

  def weight_table(self, source: str) -> list[pretrained.Entry]:
    if source not in ("timm", "torchvision"):
      raise ValueError(f"unknown weight source {source!r}; {type(self).__name__} has 'timm' and 'torchvision'")
    names = self._names(source)
    table = pretrained.conv(("stem_conv",), names["stem"][0]) + pretrained.bn(("stem_bn",), names["stem"][1])
    for i, (block, (key, style)) in enumerate(zip(self.blocks, names["blocks"])):
      table += block.table(("blocks", i), key, style)
    table += pretrained.conv(("final_conv",), names["final"][0]) + pretrained.bn(("final_bn",), names["final"][1])
    if self.pre_logits is not None:
      key, layout = names["pre_logits"]
      table += pretrained.linear(("pre_logits",), key, layout=layout)
    return table + pretrained.linear(("head",), names["head"], head=True)

  def block_paths(self) -> list[list[tuple]]:
    paths = [[("stem_conv",), ("stem_bn",)]] + [[("blocks", i)] for i in range(len(self.blocks))]
    paths.append([("final_conv",), ("final_bn",)])
    return paths + ([[("pre_logits",)]] if self.pre_logits is not None else [])

  def _twin(self, name: str | None, **kwargs) -> tuple[str, dict]:
    # small_images: the same timm model; experiments.torch_reference sets its stem to stride 1
    if name is None:
      raise NotImplementedError(f"{type(self).__name__} has no timm twin for this configuration")
    kwargs = {"drop_rate": self.dropout_rate, "bn_eps": self.bn_epsilon, **kwargs}
    return name, kwargs | ({} if self.in_features == 3 else {"in_chans": self.in_features})


class MobileNetV2(_MobileNet):
  """MobileNetV2 (Sandler et al. 2018), torchvision's ``mobilenet_v2`` / timm's ``mobilenetv2_*``.

  Args:
    width: channel multiplier (torchvision's ``width_mult``, timm's ``mobilenetv2_<width x 100>``).
    small_images: stride-1 stem for 32-64 px inputs (same parameters).
    num_classes, head: see ``models.resolve_head``.
    dropout: rate on the pooled features (torchvision's 0.2).
    in_features: input channels.
    dtype: compute dtype (``layers.compute_dtype``); parameters stay float32.
    bn_epsilon: batch-norm epsilon (1e-5 in both references).
  """

  # (expansion t, channels c, repeats n, first stride s), the paper's table 2
  SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

  def __init__(
    self,
    width: float = 1.0,
    small_images: bool = False,
    *,
    num_classes: int,
    head: str = "auto",
    rngs: nnx.Rngs,
    dropout: float = DROPOUT,
    in_features: int = 3,
    dtype: Any = None,
    bn_epsilon: float = models.BN_EPSILON,
  ):
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 10:
      raise ValueError(f"width must be a number in (0, 10], got {width!r}")
    self.width = float(width)
    stem = make_divisible(32 * self.width)
    stages, cin = [], stem
    for t, c, n, s in self.SETTINGS:
      cout, stage = make_divisible(c * self.width), []
      for i in range(n):
        stage.append(BlockSpec(cin, cout, int(round(cin * t)), 3, s if i == 0 else 1, "relu6"))
        cin = cout
      stages.append(stage)
    self._build(
      stem=stem,
      stages=stages,
      last=make_divisible(1280 * max(1.0, self.width)),
      act="relu6",
      se_act="relu",
      se_gate="sigmoid",
      pre_logits=0,
      small_images=small_images,
      num_classes=num_classes,
      head=head,
      rngs=rngs,
      dropout=dropout,
      in_features=in_features,
      dtype=dtype,
      bn_epsilon=bn_epsilon,
    )

  def _names(self, source: str) -> dict:
    if source == "timm":
      blocks = [(f"blocks.{s}.{j}", "timm") for s, j in self._stage_index()]
      return {"stem": ("conv_stem", "bn1"), "blocks": blocks, "final": ("conv_head", "bn2"), "head": "classifier"}
    n = len(self.blocks)
    blocks = [(f"features.{i + 1}.conv", "torchvision_v2") for i in range(n)]
    return {
      "stem": ("features.0.0", "features.0.1"),
      "blocks": blocks,
      "final": (f"features.{n + 1}.0", f"features.{n + 1}.1"),
      "head": "classifier.1",
    }

  def weight_sources(self) -> dict[str, pretrained.Source]:
    return self._sources(
      TIMM_MOBILENETV2.get(self.width), "mobilenet_v2" if self.width == 1.0 else None, models.BN_EPSILON
    )

  def torch_twin(self) -> tuple[str, dict]:
    if self.width not in TIMM_MOBILENETV2:
      raise NotImplementedError(
        f"MobileNetV2(width={self.width}) has no timm twin: timm names widths {sorted(TIMM_MOBILENETV2)}"
      )
    return self._twin(TIMM_MOBILENETV2[self.width])


def _v3_specs(rows) -> list[list[BlockSpec]]:
  """Stages of BlockSpecs from torchvision's (cin, kernel, expanded, cout, se, act, stride) rows,
  grouped in stages by timm's stage index (the first item of each row)."""
  stages: list[list[BlockSpec]] = []
  for stage, cin, k, exp, cout, se, act, stride in rows:
    if stage == len(stages):
      stages.append([])
    squeeze = make_divisible(exp // 4) if se else 0
    stages[stage].append(BlockSpec(cin, cout, exp, k, stride, "hard_swish" if act == "HS" else "relu", squeeze))
  return stages


# torchvision's `_mobilenet_v3_conf` rows, each prefixed with timm's stage index.
V3_LARGE = (
  (0, 16, 3, 16, 16, False, "RE", 1),
  (1, 16, 3, 64, 24, False, "RE", 2),
  (1, 24, 3, 72, 24, False, "RE", 1),
  (2, 24, 5, 72, 40, True, "RE", 2),
  (2, 40, 5, 120, 40, True, "RE", 1),
  (2, 40, 5, 120, 40, True, "RE", 1),
  (3, 40, 3, 240, 80, False, "HS", 2),
  (3, 80, 3, 200, 80, False, "HS", 1),
  (3, 80, 3, 184, 80, False, "HS", 1),
  (3, 80, 3, 184, 80, False, "HS", 1),
  (4, 80, 3, 480, 112, True, "HS", 1),
  (4, 112, 3, 672, 112, True, "HS", 1),
  (5, 112, 5, 672, 160, True, "HS", 2),
  (5, 160, 5, 960, 160, True, "HS", 1),
  (5, 160, 5, 960, 160, True, "HS", 1),
)
V3_SMALL = (
  (0, 16, 3, 16, 16, True, "RE", 2),
  (1, 16, 3, 72, 24, False, "RE", 2),
  (1, 24, 3, 88, 24, False, "RE", 1),
  (2, 24, 5, 96, 40, True, "HS", 2),
  (2, 40, 5, 240, 40, True, "HS", 1),
  (2, 40, 5, 240, 40, True, "HS", 1),
  (3, 40, 5, 120, 48, True, "HS", 1),
  (3, 48, 5, 144, 48, True, "HS", 1),
  (4, 48, 5, 288, 96, True, "HS", 2),
  (4, 96, 5, 576, 96, True, "HS", 1),
  (4, 96, 5, 576, 96, True, "HS", 1),
)
V3_CONFIGS = {"small": (V3_SMALL, 576, 1024), "large": (V3_LARGE, 960, 1280)}  # rows, final conv, pre-logits


class MobileNetV3(_MobileNet):
  """MobileNetV3 (Howard et al. 2019), torchvision's ``mobilenet_v3_small / large`` / timm's
  ``mobilenetv3_small_100 / large_100``.

  Args:
    size: "small" | "large".
    small_images: stride-1 stem for 32-64 px inputs (same parameters).
    num_classes, head: see ``models.resolve_head``.
    dropout: rate after the pre-logits layer (torchvision's 0.2).
    in_features: input channels.
    dtype: compute dtype (``layers.compute_dtype``); parameters stay float32.
    bn_epsilon: batch-norm epsilon: 1e-5 (timm's checkpoints) or 1e-3 (torchvision's).
  """

  def __init__(
    self,
    size: str = "large",
    small_images: bool = False,
    *,
    num_classes: int,
    head: str = "auto",
    rngs: nnx.Rngs,
    dropout: float = DROPOUT,
    in_features: int = 3,
    dtype: Any = None,
    bn_epsilon: float = models.BN_EPSILON,
  ):
    if size not in V3_CONFIGS:
      raise ValueError(f"unknown MobileNetV3 size {size!r}; choose one of {sorted(V3_CONFIGS)}")
    self.size = size
    rows, last, pre_logits = V3_CONFIGS[size]
    self._build(
      stem=16,
      stages=_v3_specs(rows),
      last=last,
      act="hard_swish",
      se_act="relu",
      se_gate="hard_sigmoid",
      pre_logits=pre_logits,
      small_images=small_images,
      num_classes=num_classes,
      head=head,
      rngs=rngs,
      dropout=dropout,
      in_features=in_features,
      dtype=dtype,
      bn_epsilon=bn_epsilon,
    )

  def _names(self, source: str) -> dict:
    if source == "timm":
      last = len(self.stage_sizes)  # timm's final 1x1 conv is a stage of its own
      return {
        "stem": ("conv_stem", "bn1"),
        "blocks": [(f"blocks.{s}.{j}", "timm") for s, j in self._stage_index()],
        "final": (f"blocks.{last}.0.conv", f"blocks.{last}.0.bn1"),
        "pre_logits": ("conv_head", "conv_as_linear"),
        "head": "classifier",
      }
    n = len(self.blocks)
    return {
      "stem": ("features.0.0", "features.0.1"),
      "blocks": [(f"features.{i + 1}.block", "torchvision") for i in range(n)],
      "final": (f"features.{n + 1}.0", f"features.{n + 1}.1"),
      "pre_logits": ("classifier.0", "linear"),
      "head": "classifier.3",
    }

  def weight_sources(self) -> dict[str, pretrained.Source]:
    return self._sources(f"mobilenetv3_{self.size}_100", f"mobilenet_v3_{self.size}", 1e-3)

  def torch_twin(self) -> tuple[str, dict]:
    return self._twin(f"mobilenetv3_{self.size}_100")


# EfficientNet-B0: (expansion, kernel, first stride, cin, cout, repeats), torchvision's MBConvConfig rows.
B0 = (
  (1, 3, 1, 32, 16, 1),
  (6, 3, 2, 16, 24, 2),
  (6, 5, 2, 24, 40, 2),
  (6, 3, 2, 40, 80, 3),
  (6, 5, 1, 80, 112, 3),
  (6, 5, 2, 112, 192, 4),
  (6, 3, 1, 192, 320, 1),
)


class EfficientNet(_MobileNet):
  """EfficientNet-B0 (Tan & Le 2019), torchvision's / timm's ``efficientnet_b0``.

  Args:
    small_images: stride-1 stem for 32-64 px inputs (same parameters).
    num_classes, head: see ``models.resolve_head``.
    dropout: rate on the pooled features (torchvision's 0.2).
    drop_path: stochastic depth (torchvision's ``stochastic_depth_prob``, 0.2): in train mode block i
      of 16 drops its residual branch, per example, with probability ``drop_path * i / 16`` (blocks
      without a shortcut never drop).
    in_features: input channels.
    dtype: compute dtype (``layers.compute_dtype``); parameters stay float32.
    bn_epsilon: batch-norm epsilon (1e-5 in both references).
  """

  def __init__(
    self,
    small_images: bool = False,
    *,
    num_classes: int,
    head: str = "auto",
    rngs: nnx.Rngs,
    dropout: float = DROPOUT,
    drop_path: float = EFFICIENTNET_DROP_PATH,
    in_features: int = 3,
    dtype: Any = None,
    bn_epsilon: float = models.BN_EPSILON,
  ):
    self.drop_path_rate = drop_path = models._rate(drop_path, "drop_path")
    total = sum(row[-1] for row in B0)
    stages, index = [], 0
    for t, k, stride, cin, cout, n in B0:
      stage = []
      for i in range(n):
        c = cin if i == 0 else cout
        rate = drop_path * index / total
        stage.append(BlockSpec(c, cout, c * t, k, stride if i == 0 else 1, "swish", max(1, c // 4), rate))
        index += 1
      stages.append(stage)
    self._build(
      stem=32,
      stages=stages,
      last=1280,
      act="swish",
      se_act="swish",
      se_gate="sigmoid",
      pre_logits=0,
      small_images=small_images,
      num_classes=num_classes,
      head=head,
      rngs=rngs,
      dropout=dropout,
      in_features=in_features,
      dtype=dtype,
      bn_epsilon=bn_epsilon,
    )

  def _names(self, source: str) -> dict:
    if source == "timm":
      blocks = [(f"blocks.{s}.{j}", "timm") for s, j in self._stage_index()]
      return {"stem": ("conv_stem", "bn1"), "blocks": blocks, "final": ("conv_head", "bn2"), "head": "classifier"}
    last = len(self.stage_sizes) + 1
    return {
      "stem": ("features.0.0", "features.0.1"),
      "blocks": [(f"features.{s + 1}.{j}.block", "torchvision") for s, j in self._stage_index()],
      "final": (f"features.{last}.0", f"features.{last}.1"),
      "head": "classifier.1",
    }

  def weight_sources(self) -> dict[str, pretrained.Source]:
    return self._sources("efficientnet_b0", "efficientnet_b0", models.BN_EPSILON)

  def torch_twin(self) -> tuple[str, dict]:
    return self._twin("efficientnet_b0", drop_path_rate=self.drop_path_rate)


MODELS: dict = {
  "mobilenet_v2": functools.partial(MobileNetV2, width=1.0),
  "mobilenet_v3_small": functools.partial(MobileNetV3, size="small"),
  "mobilenet_v3_large": functools.partial(MobileNetV3, size="large"),
  "efficientnet_b0": functools.partial(EfficientNet),
}
