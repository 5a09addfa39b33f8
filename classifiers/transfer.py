"""Fine-tuning from ImageNet weights: what trains, at which learning rate, and what the checkpoint expects.

The published face-mask baselines start from an ImageNet backbone (`--config.pretrained=PATH`, read by
`classifiers.pretrained`) and train in one of these ways (`experiments/configs/transfer.py`):

* ``freeze="backbone"``: the backbone is frozen, with batch norm in inference mode (its running
  statistics are ImageNet's and stay so), and a new head is trained on top;
* plus ``unfreeze_blocks=k``: the last k of the backbone's blocks (`Classifier.block_paths()`) train too,
  at ``learning_rate * backbone_learning_rate_scale`` (`optax.multi_transform`); batch norm stays in
  inference mode, as Keras' fine-tuning guide recommends for small datasets;
* ``freeze="none"``: everything trains at one learning rate, batch norm in training mode.

`resolve` fills in what the checkpoint determines: input size and normalisation (when the config
leaves them unset) and model options such as batch-norm epsilon, so a rerun or `classifiers.predict`
rebuilds the same model from the saved config without reading the checkpoint again.
"""

from __future__ import annotations

import optax
from flax import nnx

from classifiers import models, pretrained

FREEZE_MODES = ("none", "backbone")
HEAD, BACKBONE, FROZEN = "head", "backbone", "frozen"


def resolve(config):
  """``config`` with the checkpoint's input size / normalisation (where unset: None), its required
  model options and its concrete source; the same object when there is no ``pretrained``.
  Raises `pretrained.PretrainedError` for a checkpoint that does not fit the model."""
  if not config.get("pretrained"):
    return config
  probe = _model(config, num_classes=2)
  info = pretrained.checkpoint_info(probe, config.pretrained, config.get("pretrained_source", "auto"))
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if config.get("image_size") is None:
      config.image_size = info.input_size
    if config.get("normalization") is None:
      config.normalization = info.normalization
    for option, value in info.overrides.items():
      given = config.model_overrides.get(option)
      if given is not None and given != value:
        raise pretrained.PretrainedError(
          f"pretrained checkpoint {config.pretrained}: {info.source} weights need model option {option}={value!r}, "
          f"config.model_overrides.{option} is {given!r}"
        )
      config.model_overrides[option] = value
    config.pretrained_source = info.source
  return config


def _model(config, num_classes: int, seed: int = 0) -> models.Classifier:
  return models.create_model(
    config.model,
    num_classes,
    rngs=nnx.Rngs(params=seed),
    head=config.get("head", "auto"),
    image_size=config.get("image_size") or 64,
    **dict(config.get("model_overrides", {})),
  )


def backbone_mode(config) -> str:
  """How a train step runs the backbone (`classifiers.train.train_step`): "train" (everything
  trains), "frozen" (no block unfrozen: features without gradient) or "inference" (some blocks
  unfrozen: batch norm in inference mode, gradients flow)."""
  if config.get("freeze", "none") == "none":
    return "train"
  return "inference" if config.get("unfreeze_blocks", 0) else "frozen"


def parameter_labels(model: nnx.Module, params: nnx.State, freeze: str, unfreeze_blocks: int) -> nnx.State:
  """Per-parameter labels for `optax.multi_transform`: "head", "backbone" (an unfrozen block) or
  "frozen"; with ``freeze="none"`` everything is "head" (one learning rate)."""
  if freeze not in FREEZE_MODES:
    raise ValueError(f"freeze must be one of {FREEZE_MODES}, got {freeze!r}")
  blocks = model.block_paths() if freeze != "none" else []
  if not 0 <= unfreeze_blocks <= len(blocks) and freeze != "none":
    raise ValueError(f"unfreeze_blocks={unfreeze_blocks}: {type(model).__name__} has {len(blocks)} blocks")
  trainable = (
    [prefix for block in blocks[len(blocks) - unfreeze_blocks :] for prefix in block] if unfreeze_blocks else []
  )

  def label(path) -> str:
    if freeze == "none" or path[0] == "head":
      return HEAD
    return BACKBONE if any(path[: len(p)] == p for p in trainable) else FROZEN

  return nnx.from_flat_state([(path, value.replace(label(path))) for path, value in nnx.to_flat_state(params)])


def optimizer(
  model: nnx.Module,
  params: nnx.State,
  head_tx: optax.GradientTransformation,
  backbone_tx: optax.GradientTransformation,
  *,
  freeze: str,
  unfreeze_blocks: int,
) -> optax.GradientTransformation:
  """``head_tx`` for the head (everything with ``freeze="none"``), ``backbone_tx`` for unfrozen blocks,
  zero updates (and no optimizer state) for frozen parameters."""
  if freeze == "none":
    return head_tx
  labels = parameter_labels(model, params, freeze, unfreeze_blocks)
  return optax.multi_transform({HEAD: head_tx, BACKBONE: backbone_tx, FROZEN: optax.set_to_zero()}, labels)


def trainable_count(model: nnx.Module, freeze: str, unfreeze_blocks: int) -> dict[str, int]:
  """Parameters by label: what a recipe trains (for logs and the run summary)."""
  params = nnx.state(model, nnx.Param)
  labels = nnx.to_flat_state(parameter_labels(model, params, freeze, unfreeze_blocks))
  counts = {HEAD: 0, BACKBONE: 0, FROZEN: 0}
  for (_, label), (_, value) in zip(labels, nnx.to_flat_state(params)):
    counts[label.get_value()] += value.get_value().size
  return counts
