"""Fine-tuning recipes (`classifiers.transfer`): what a frozen or partly unfrozen backbone trains, at
which learning rate, batch norm in inference mode, the checkpoint's settings, and a run end to end."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import save_file

from classifiers import pretrained, train, transfer
from experiments import torch_reference
from experiments.configs import transfer as transfer_config
from vaeaug.data import pipeline

LR = 1e-2


@pytest.fixture(scope="module")
def resnet18_checkpoint(tmp_path_factory):
  torch.manual_seed(0)
  path = tmp_path_factory.mktemp("weights") / "model.safetensors"
  module = torch_reference.timm_model("resnet18")
  with torch.no_grad():  # timm zero-initialises each block's last BN scale: no gradient would reach its convs
    for layer in module.modules():
      if isinstance(layer, torch.nn.BatchNorm2d):
        layer.weight.uniform_(0.5, 1.5)
  save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
  return path


def _config(checkpoint, **overrides):
  config = transfer_config.get_config()
  config.update(
    dict(
      model="resnet18", pretrained=str(checkpoint), image_size=32, learning_rate=LR, batch_size=8, eval_batch_size=16
    )
  )
  config.update(overrides)
  return config


def _flat(tree) -> dict:
  return {path: np.array(v.get_value()) for path, v in nnx.to_flat_state(tree)}  # copies: the step donates its state


def _one_step(config, steps=1):
  config = transfer.resolve(config)
  model = train.create_model_for(config, 2)
  pretrained.load(model, config.pretrained)
  state = train.create_train_state_for(config, 2, steps_per_epoch=10, model=model)
  # the step training compiles (the frozen / unfrozen backbone modes of train_and_evaluate)
  step = train.jitted_train_step(2, 0.0, (1.0, 1.0), config.normalization, None, (), transfer.backbone_mode(config))
  rng = np.random.default_rng(0)
  batch = {
    "image": jnp.asarray(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)),
    "label": jnp.asarray(rng.integers(0, 2, 8)),
  }
  before = _flat(state.params), _flat(state.model_state)
  for _ in range(steps):
    state, _ = step(state, batch, jax.random.key(0))
  return config, state, before, (_flat(state.params), _flat(state.model_state))


def _changed(before, after, prefix=()):
  return {p for p in before if p[: len(prefix)] == prefix and not np.array_equal(before[p], after[p])}


def test_frozen_backbone_trains_only_the_head(resnet18_checkpoint):
  config, _, (params0, stats0), (params1, stats1) = _one_step(_config(resnet18_checkpoint), steps=2)
  assert transfer.backbone_mode(config) == "frozen"
  assert _changed(params0, params1) == {("head", "kernel"), ("head", "bias")}
  assert not _changed(stats0, stats1), "batch-norm statistics of a frozen backbone moved"


def test_unfrozen_blocks_train_at_the_scaled_rate(resnet18_checkpoint):
  config, state, (params0, stats0), (params1, stats1) = _one_step(_config(resnet18_checkpoint, unfreeze_blocks=2))
  assert transfer.backbone_mode(config) == "inference"
  model = state.model()
  last_two = [prefix for block in model.block_paths()[-2:] for prefix in block]
  changed = _changed(params0, params1)
  assert {p for p in changed if p[0] != "head"} == {p for p in params0 if any(p[: len(q)] == q for q in last_two)}, (
    "exactly the last two blocks' parameters train"
  )
  assert not _changed(stats0, stats1), "batch norm stays in inference mode"
  # Adam's first update is about the learning rate in size: the head's LR, the blocks' LR x 0.1.
  head_step = max(np.abs(params1[p] - params0[p]).max() for p in changed if p[0] == "head")
  block_step = max(np.abs(params1[p] - params0[p]).max() for p in changed if p[0] != "head")
  assert 0.5 * LR < head_step <= 1.01 * LR
  assert 0.5 * LR * 0.1 < block_step <= 1.01 * LR * 0.1


def test_full_fine_tuning_trains_everything_with_batch_statistics(resnet18_checkpoint):
  config, _, (params0, stats0), (params1, stats1) = _one_step(_config(resnet18_checkpoint, freeze="none"))
  assert transfer.backbone_mode(config) == "train"
  assert _changed(params0, params1) == set(params0)
  assert _changed(stats0, stats1) == set(stats0)


def test_frozen_step_matches_inference_step_on_the_head(resnet18_checkpoint):
  """Stopping the gradient at the features changes no head update (the backbone is frozen either way)."""
  _, frozen, _, _ = _one_step(_config(resnet18_checkpoint))
  _, partly, _, _ = _one_step(_config(resnet18_checkpoint, unfreeze_blocks=1))
  np.testing.assert_allclose(
    np.asarray(frozen.params["head"]["kernel"].get_value()),
    np.asarray(partly.params["head"]["kernel"].get_value()),
    rtol=1e-5,
    atol=1e-7,
  )


def test_labels_reject_too_many_blocks(resnet18_checkpoint):
  config = transfer.resolve(_config(resnet18_checkpoint))
  model = train.create_train_state_for(config, 2, 1).model()
  params = nnx.state(model, nnx.Param)
  n = len(model.block_paths())
  counts = transfer.trainable_count(model, "backbone", n)
  assert counts["frozen"] == 0 and counts["backbone"] > 0
  with pytest.raises(ValueError, match=f"has {n} blocks"):
    transfer.parameter_labels(model, params, "backbone", n + 1)


def test_resolve_takes_size_and_normalization_from_the_checkpoint(resnet18_checkpoint):
  config = transfer.resolve(_config(resnet18_checkpoint, image_size=None))
  assert (config.image_size, config.normalization, config.pretrained_source) == (224, "imagenet", "torchvision")
  explicit = transfer.resolve(_config(resnet18_checkpoint, image_size=48, normalization="unit"))
  assert (explicit.image_size, explicit.normalization) == (48, "unit")
  plain = transfer_config.get_config()
  assert transfer.resolve(plain) is plain  # nothing to resolve without a checkpoint


def test_resolve_refuses_a_conflicting_model_option(resnet18_checkpoint, monkeypatch):
  """A source's required options (e.g. torchvision MobileNetV3's bn_epsilon) are set, or refused when
  the config says otherwise; here with a ResNet source made to require its width."""
  needs_width = pretrained.Source("torchvision", overrides={"num_filters": 64})
  monkeypatch.setattr(train.models.ResNet, "weight_sources", lambda self: {"torchvision": needs_width})
  assert transfer.resolve(_config(resnet18_checkpoint)).model_overrides.num_filters == 64
  config = _config(resnet18_checkpoint)
  config.model_overrides.num_filters = 32
  with pytest.raises(pretrained.PretrainedError, match="num_filters=64"):
    transfer.resolve(config)


def _random_split(n, size, seed):
  rng = np.random.default_rng(seed)
  return pipeline.ArrayDataset(
    images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
    labels=np.arange(n, dtype=np.int32) % 2,
    files=np.asarray([f"{seed}_{i}.png" for i in range(n)]),
    groups=np.asarray([f"{seed}_{i}" for i in range(n)]),
    class_names=("with_mask", "without_mask"),
  )


def test_train_and_evaluate_from_a_checkpoint_then_restore(resnet18_checkpoint, tmp_path):
  config = _config(resnet18_checkpoint, epochs=2, progress=False, figures=False)
  data = train.Data(train=_random_split(32, 32, 0), validation=_random_split(16, 32, 1), test=_random_split(16, 32, 2))
  summary = train.train_and_evaluate(config, tmp_path, data)
  assert summary["pretrained"]["source"] == "torchvision" == summary["pretrained"]["report"]["source"]
  assert summary["pretrained"]["report"]["unexpected"] == []
  counts = summary["pretrained"]["parameters"]
  assert counts["head"] == 513 and counts["backbone"] == 0 and counts["frozen"] > 10_000_000
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["image_size"] == 32 and saved["pretrained_source"] == "torchvision"
  restored_config, state, _ = train.restore_best(tmp_path)
  tensors = pretrained.read_tensors(resnet18_checkpoint)
  kernel = np.asarray(state.params["stem_conv"]["kernel"].get_value())
  np.testing.assert_array_equal(kernel, tensors["conv1.weight"].transpose(2, 3, 1, 0))  # frozen, as loaded
  assert restored_config.freeze == "backbone"
