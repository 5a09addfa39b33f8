"""Protocol v2 of the comparison: synthetic images on top of the real ones (equal real exposure), synthetic
class proportions, mixup arms, candidates chosen on validation, a small validation set."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from classifiers import models
from classifiers import train as classifier_train
from experiments import arms as arms_lib
from experiments import sweep, validation
from experiments.configs import compare as compare_config
from vaeaug.data import pipeline
from vaeaug.training import state as state_lib


def _dataset(n: int, labels=None, value_offset: int = 0, classes=("a", "b")) -> pipeline.ArrayDataset:
  labels = np.arange(n) % len(classes) if labels is None else np.asarray(labels)
  images = np.zeros((n, 4, 4, 3), np.uint8)
  images[:, 0, 0, 0] = (np.arange(n) + value_offset) % 256  # each image says which row it is
  images[:, 0, 0, 1] = (np.arange(n) + value_offset) // 256
  return pipeline.ArrayDataset(images, labels, [f"f{i}" for i in range(n)], [f"g{i}" for i in range(n)], classes)


def _row_ids(batch) -> np.ndarray:
  return batch["image"][:, 0, 0, 0].astype(int) + 256 * batch["image"][:, 0, 0, 1].astype(int)


# ----------------------------------------------------------------------------- equal real exposure


@pytest.mark.parametrize("ratio", [0.5, 1.0, 2.0])
def test_extra_rows_come_on_top_of_the_batches_of_the_real_images(ratio):
  real, extra = _dataset(200), _dataset(int(200 * ratio), value_offset=1000)
  data = pipeline.WithExtraRows(real, extra, ratio)
  seen = np.zeros(len(extra), int)
  for epoch in range(3):
    alone = list(pipeline.epoch_batches(real, 32, seed=5, epoch=epoch, remainder="drop"))
    on_top = list(data.epoch_batches(32, seed=5, epoch=epoch))
    assert len(on_top) == len(alone) == 200 // 32  # an epoch is an epoch of the real images
    for plain, mixed in zip(alone, on_top):
      ids = _row_ids(mixed)
      # the first 32 rows are exactly the batch the real images alone give: same images, same order
      np.testing.assert_array_equal(ids[:32], _row_ids(plain))
      np.testing.assert_array_equal(mixed["label"][:32], plain["label"])
      assert len(ids) == 32 + round(32 * ratio) and (ids[32:] >= 1000).all()
      np.testing.assert_array_equal(mixed["label"][32:], extra.labels[ids[32:] - 1000])
      seen += np.bincount(ids[32:] - 1000, minlength=len(extra))
  # every extra image is drawn about once per epoch (shuffled copies of the set, not with replacement;
  # the epoch's dropped last batch leaves a few out)
  assert seen.min() >= 1 and seen.max() <= 3


def test_extra_rows_resume_mid_epoch_and_split_over_processes():
  data = pipeline.WithExtraRows(_dataset(96), _dataset(96, value_offset=500), 1.0)
  full = list(data.epoch_batches(16, seed=1, epoch=2))
  resumed = list(data.epoch_batches(16, seed=1, epoch=2, start_batch=3))
  for a, b in zip(full[3:], resumed, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
  halves = [list(data.epoch_batches(16, seed=1, epoch=2, process_index=p, process_count=2)) for p in (0, 1)]
  for whole, first, second in zip(full, *halves):
    # the real rows of both processes, then the extra rows of both, make the whole batch
    ids = np.concatenate([_row_ids(first)[:8], _row_ids(second)[:8], _row_ids(first)[8:], _row_ids(second)[8:]])
    np.testing.assert_array_equal(ids, _row_ids(whole))
  # extra rows round to the device count, so the grown batch still splits evenly
  assert pipeline.extra_rows_per_batch(0.5, 20, multiple=8) == 8
  assert pipeline.extra_rows_per_batch(0.01, 64, multiple=4) == 4
  with pytest.raises(ValueError, match="positive"):
    pipeline.WithExtraRows(_dataset(8), _dataset(8), 0.0)
  with pytest.raises(ValueError, match="class_names differ"):
    pipeline.WithExtraRows(_dataset(8), _dataset(8, classes=("a", "c")), 1.0)


def test_synthetic_class_proportions_follow_the_real_subset():
  config = compare_config.get_config("tiny")
  runner = sweep.Sweep(config, "/nonexistent", stream=open(os.devnull, "w"))
  real = _dataset(40, labels=[0] * 30 + [1] * 10)
  np.testing.assert_array_equal(runner._per_class(real, 2.0), [60, 20])
  config.synthesis.class_proportions = "equal"  # the v1 protocol: half each
  np.testing.assert_array_equal(runner._per_class(real, 2.0), [40, 40])


# ----------------------------------------------------------------------------- mixup


def test_arms_with_mixup_parse():
  assert arms_lib.Arm.parse("mixup").mixup and arms_lib.Arm.parse("mixup").generator is None
  arm = arms_lib.Arm.parse("classic+mixup+cvae")
  assert (arm.classic, arm.mixup, arm.kind) == (True, True, "cvae")
  assert not arms_lib.Arm.parse("classic+cvae").mixup
  with pytest.raises(ValueError, match="unknown arm"):
    arms_lib.Arm.parse("mixup+mixup")
  assert "mixup" in arms_lib.example_names()


def _step(batch, mixup_alpha):
  model = models.create_model("cnn_bn3", 2, rngs=nnx.Rngs(params=0), image_size=16)
  state = state_lib.create_train_state(model, optax.sgd(0.1))
  step = classifier_train.jitted_train_step(2, 0.0, (1.0, 1.0), "unit", None, (), "train", mixup_alpha)
  new_state, metrics = step(state, batch, jax.random.key(0))
  return jax.tree.leaves(new_state.params), float(metrics["loss"])


def test_mixup_mixes_images_and_labels_of_the_batch():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
  labels = np.array([0, 1] * 4, np.int32)
  plain_params, plain_loss = _step({"image": images, "label": labels}, 0.0)
  mixed_params, mixed_loss = _step({"image": images, "label": labels}, 1.0)
  assert mixed_loss != plain_loss
  # mixing a batch of copies of one labelled image with itself changes nothing
  same = {"image": np.repeat(images[:1], 8, axis=0), "label": np.zeros(8, np.int32)}
  for a, b in zip(_step(same, 0.0)[0], _step(same, 1.0)[0], strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  assert any(not np.allclose(a, b) for a, b in zip(plain_params, mixed_params))


def test_mixup_loss_is_the_mixture_of_the_two_labels_losses():
  logits = jnp.array([[2.0], [-1.0], [0.5]])
  a, b, lam = jnp.array([1, 0, 1]), jnp.array([0, 0, 1]), 0.3
  loss = lambda labels: classifier_train.loss_and_probabilities(  # noqa: E731
    logits, labels, num_classes=2, label_smoothing=0.0, weights=jnp.ones(2)
  )[0]
  soft = optax.sigmoid_binary_cross_entropy(logits[:, 0], lam * a + (1 - lam) * b)
  np.testing.assert_allclose(lam * loss(a) + (1 - lam) * loss(b), soft, rtol=1e-6)


# ----------------------------------------------------------------------------- the sweep


def test_v2_presets_validate_and_keep_the_v1_hashes():
  for preset in compare_config.V2_PRESETS:
    config = compare_config.get_config(preset)
    validation.validate_compare_config(config, grid_only=True)
    assert config.synthesis.placement == "on_top" and config.synthesis.class_proportions == "real"
  v2 = compare_config.get_config("v2")
  assert sweep.config_hash(v2) != sweep.config_hash(compare_config.get_config("v2_small_validation"))
  # the mixup alphas change mixup cells: a new hash
  v2_alphas = compare_config.get_config("v2")
  v2_alphas.mixup_alphas = (0.4,)
  assert sweep.config_hash(v2_alphas) != sweep.config_hash(v2)
  with pytest.raises(validation.ConfigError, match="mixup_alphas"):
    v2.mixup_alphas = (0.0,)
    validation.validate_compare_config(v2, grid_only=False)


def test_every_arm_sees_each_real_image_equally_often_and_candidates_are_chosen_on_validation(
  detection_built, tmp_path
):
  config = compare_config.get_config("tiny")
  config.arms, config.num_seeds, config.compilation_cache_dir = ("none", "mixup", "noise_blur"), 1, ""
  config.data_dir = detection_built
  config.synthesis.synthetic_ratios = (0.5, 2.0)
  config.synthesis.filter_taus = (0.0, 0.6)
  config.mixup_alphas = (0.2, 1.0)
  config.validation_n_per_class = 10
  runner = sweep.Sweep(config, tmp_path, stream=open(os.devnull, "w"))
  records = {r["arm"]: r for r in runner.run().values()}
  # the same number of steps per epoch for every arm: synthetic images grew the batches, not the epoch
  per_epoch = {arm: r["steps"] / r["epochs_run"] for arm, r in records.items()}
  assert len(set(per_epoch.values())) == 1, per_epoch
  assert {r["validation_size"] for r in records.values()} == {20}
  blur = records["noise_blur"]
  assert blur["synthetic_placement"] == "on_top"
  if blur["filter_tau"] == 0:  # unfiltered: exactly ratio x the real images (a filter may keep fewer)
    assert sum(blur["synthetic_counts"].values()) == round(blur["synthetic_ratio"] * blur["real_train_size"])
  # ratio x filter threshold: four candidates, the choice is the best on validation, only it reads test
  group = runner.group_dir(*sweep.cells_of(config)[0].group)
  scores = {
    (r, t): json.loads((group / "noise_blur" / f"ratio{r:g}_tau{t:g}" / "validation_metrics.json").read_text())
    for r in (0.5, 2.0)
    for t in (0.0, 0.6)
  }
  best = max(scores, key=lambda c: (scores[c]["best_validation_value"], -c[0], -c[1]))
  assert (blur["synthetic_ratio"], blur["filter_tau"]) == best
  assert [p.parent.name for p in (group / "noise_blur").glob("*/test_metrics.json")] == [
    f"ratio{best[0]:g}_tau{best[1]:g}"
  ]
  filtered = json.loads((group / "synthetic_noise_blur_tau0.6.npz.timing.json").read_text())
  assert filtered["filter"]["tau"] == 0.6 and "filter" not in json.loads(
    (group / "synthetic_noise_blur.npz.timing.json").read_text()
  )
  arm_dir = group / "mixup"
  scores = {a: json.loads((arm_dir / f"mixup{a:g}" / "validation_metrics.json").read_text()) for a in (0.2, 1.0)}
  best = max(scores, key=lambda a: (scores[a]["best_validation_value"], -a))
  assert records["mixup"]["mixup_alpha"] == best and records["mixup"]["classifier_config"]["mixup_alpha"] == best
  assert [p.parent.name for p in arm_dir.glob("mixup*/test_metrics.json")] == [f"mixup{best:g}"]
