"""The shared training loop and classifier training: learning, exact resume, model selection on
validation only, optimizers/schedules, data parallelism on fake devices."""

import functools
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from classifiers import train
from experiments.configs import classifier as classifier_config
from vaeaug.data import pipeline, sources
from vaeaug.training import logs, loop, sharding, timing
from vaeaug.training.state import make_optimizer, make_schedule

REPO = Path(__file__).resolve().parents[1]
CLASS_NAMES = ("with_mask", "without_mask")


def real_crops(per_class: int, size: int, split: str = "Train", offset: int = 0) -> pipeline.ArrayDataset:
  """Real 12K face images (read straight from the shipped download), resized to `size`."""
  root = sources.default_raw_root()
  if root is None:
    pytest.skip("shipped data (../shared/data) not found")
  images, labels, files = [], [], []
  for label, folder in enumerate(("WithMask", "WithoutMask")):
    paths = sorted((root / "face-mask-12k" / "Face Mask Dataset" / split / folder).glob("*.jpg"))
    for path in paths[offset : offset + per_class]:
      image = np.asarray(Image.open(path).convert("RGB"))
      images.append(pipeline.resize_image(image, size))
      labels.append(label)
      files.append(str(path))
  return pipeline.ArrayDataset(
    images=np.stack(images),
    labels=np.asarray(labels, np.int32),
    files=np.asarray(files),
    groups=np.asarray(files),
    class_names=CLASS_NAMES,
  )


def tiny_config(**overrides):
  config = classifier_config.get_config()
  config.update(
    dict(
      model="cnn_bn3",
      image_size=16,
      batch_size=16,
      eval_batch_size=32,
      epochs=3,
      learning_rate=3e-3,
      log_every_steps=1,
      patience=None,
      figures=False,
      progress=False,
    )
  )
  config.update(overrides)
  return config


@pytest.fixture(scope="module")
def data():
  return train.Data(
    train=real_crops(24, 16), validation=real_crops(8, 16, "Validation"), test=real_crops(8, 16, "Test")
  )


def make_step(config, num_classes=2):
  return jax.jit(
    functools.partial(
      train.train_step,
      num_classes=num_classes,
      label_smoothing=config.label_smoothing,
      weights=jnp.ones(num_classes),
      normalization=config.normalization,
      augment_config=None,
    )
  )


def fit_tiny(config, data, workdir, step_fn=None):
  steps_per_epoch = pipeline.num_batches(len(data.train), config.batch_size, "drop")
  state = train.create_train_state_for(config, 2, steps_per_epoch)
  predict = jax.jit(functools.partial(train.eval_step, normalization=config.normalization))
  mesh = sharding.make_mesh()

  def evaluate(state):
    probabilities = train.predict_probabilities(predict, state, data.validation, 32, mesh)
    return {"loss": train.weighted_log_loss(data.validation.labels, probabilities, np.ones(2))}

  loop_config = loop.LoopConfig(
    epochs=config.epochs,
    batch_size=config.batch_size,
    seed=config.seed,
    log_every_steps=config.log_every_steps,
    checkpoint_every_steps=config.checkpoint_every_steps,
    checkpoint_every_epochs=config.checkpoint_every_epochs,
    checkpoint_min_seconds=config.get("checkpoint_min_seconds", 0.0),
    keep_checkpoints=config.keep_checkpoints,
    progress=False,
  )
  return loop.fit(state, step_fn or make_step(config), evaluate, data.train, loop_config, workdir, mesh=mesh)


def leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves((state.params, state.model_state))]


def without_timing(path):
  return [{k: v for k, v in record.items() if k != "img_per_s"} for record in logs.read_metrics(path)]


def test_loss_falls_on_real_crops(data, tmp_path):
  config = tiny_config(epochs=6)
  fit_tiny(config, data, tmp_path)
  train_losses = [r["loss"] for r in logs.read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "train"]
  assert np.mean(train_losses[-3:]) < 0.7 * np.mean(train_losses[:3])


@pytest.mark.parametrize("kill_after", [5, 7])  # mid-epoch (after a step checkpoint) and near an epoch end
def test_interrupted_run_resumes_exactly(data, tmp_path, kill_after):
  config = tiny_config(checkpoint_every_steps=2)
  uninterrupted = fit_tiny(config, data, tmp_path / "full")

  class Killed(Exception):
    pass

  step_fn = make_step(config)
  calls = {"n": 0}

  def dying_step(state, batch, key):
    calls["n"] += 1
    if calls["n"] > kill_after:
      raise Killed
    return step_fn(state, batch, key)

  with pytest.raises(Killed):
    fit_tiny(config, data, tmp_path / "resumed", step_fn=dying_step)
  resumed = fit_tiny(config, data, tmp_path / "resumed")
  assert resumed.resumed_from is not None and 0 < resumed.resumed_from <= kill_after
  for a, b in zip(leaves(uninterrupted.state), leaves(resumed.state)):
    np.testing.assert_array_equal(a, b)  # bitwise on CPU
  assert resumed.history == uninterrupted.history
  assert without_timing(tmp_path / "resumed" / "metrics.jsonl") == without_timing(tmp_path / "full" / "metrics.jsonl")


def test_sparse_epoch_checkpoints_resume_exactly(data, tmp_path):
  """checkpoint_every_epochs=2 saves after epochs 2, 4 and the last; a run killed in epoch 4
  resumes from epoch 2's save, replays epoch 3, and ends equal to an uninterrupted run."""
  config = tiny_config(epochs=5, checkpoint_every_epochs=2, keep_checkpoints=10)
  steps_per_epoch = pipeline.num_batches(len(data.train), config.batch_size, "drop")
  uninterrupted = fit_tiny(config, data, tmp_path / "full")
  saved = sorted(int(p.name) for p in (tmp_path / "full" / "checkpoints").iterdir() if p.name.isdigit())
  assert saved == [2 * steps_per_epoch, 4 * steps_per_epoch, 5 * steps_per_epoch]

  step_fn, calls = make_step(config), {"n": 0}

  def dying_step(state, batch, key):
    calls["n"] += 1
    if calls["n"] > 3 * steps_per_epoch + 1:  # one step into the 4th epoch
      # Saves are asynchronous: let epoch 2's commit finish, as it would have in a longer epoch.
      deadline = time.monotonic() + 60
      while not (tmp_path / "resumed" / "checkpoints" / str(2 * steps_per_epoch)).is_dir():
        assert time.monotonic() < deadline, "epoch 2's checkpoint was never committed"
        time.sleep(0.05)
      raise KeyboardInterrupt
    return step_fn(state, batch, key)

  with pytest.raises(KeyboardInterrupt):
    fit_tiny(config, data, tmp_path / "resumed", step_fn=dying_step)
  resumed = fit_tiny(config, data, tmp_path / "resumed")
  assert resumed.resumed_from == 2 * steps_per_epoch
  for a, b in zip(leaves(uninterrupted.state), leaves(resumed.state)):
    np.testing.assert_array_equal(a, b)
  assert resumed.history == uninterrupted.history and resumed.best_epoch == uninterrupted.best_epoch
  assert without_timing(tmp_path / "resumed" / "metrics.jsonl") == without_timing(tmp_path / "full" / "metrics.jsonl")
  with pytest.raises(ValueError, match="checkpoint_every_epochs"):
    loop.LoopConfig(epochs=1, batch_size=1, checkpoint_every_epochs=0)


def test_checkpoint_min_seconds_keeps_only_the_final_save_of_a_short_run(data, tmp_path):
  config = tiny_config(epochs=3, checkpoint_min_seconds=3600.0, keep_checkpoints=10)
  steps_per_epoch = pipeline.num_batches(len(data.train), config.batch_size, "drop")
  result = fit_tiny(config, data, tmp_path)
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert saved == [3 * steps_per_epoch] and result.steps == 3 * steps_per_epoch
  with pytest.raises(ValueError, match="checkpoint_min_seconds"):
    loop.LoopConfig(epochs=1, batch_size=1, checkpoint_min_seconds=-1.0)


def test_fit_reports_its_time_by_phase(data, tmp_path):
  result = fit_tiny(tiny_config(epochs=2), data, tmp_path)
  phases = result.timing
  for name in ("steps", "input", "validation", "checkpoints", "compile", "other", "total"):
    assert phases[name] >= 0, name
  assert phases["steps"] > 0 and phases["validation"] > 0 and phases["checkpoints"] > 0
  assert phases["compile"] > 0  # the first step and validation compiled in this process
  booked = sum(v for k, v in phases.items() if k != "total")
  assert booked == pytest.approx(phases["total"], abs=0.01)


def test_phases_book_every_second_once_and_compile_apart():
  phases = timing.Phases()
  with phases.phase("outer"):
    time.sleep(0.05)
    with phases.phase("inner"):
      time.sleep(0.05)
      jax.jit(lambda x: x * 3 + 1)(jnp.arange(7.0)).block_until_ready()  # a fresh compile
    time.sleep(0.05)
  summary = phases.summary()
  assert 0.1 <= summary["outer"] < 0.2 and 0.05 <= summary["inner"] < 0.1 + summary["compile"]
  assert summary["compile"] > 0
  assert sum(v for k, v in summary.items() if k != "total") == pytest.approx(summary["total"], abs=0.005)


def test_finished_run_is_not_retrained(data, tmp_path):
  config = tiny_config(epochs=1)
  first = fit_tiny(config, data, tmp_path)

  def must_not_run(*args):
    raise AssertionError("a finished run trained again")

  again = fit_tiny(config, data, tmp_path, step_fn=must_not_run)
  for a, b in zip(leaves(first.state), leaves(again.state)):
    np.testing.assert_array_equal(a, b)


def test_early_stopping_keeps_best_epoch_and_stops():
  records = []
  values = iter([0.5, 0.4, 0.45, 0.41, 0.42, 0.1])  # best at epoch 1; patience 3 stops after epoch 4

  class FakeState:
    pass

  # Exercise the selection rule directly (the loop's own logic).
  best, best_epoch, bad = None, -1, 0
  for epoch in range(6):
    value = next(values)
    if loop._improved(value, best, "min", 0.0):
      best, best_epoch, bad = value, epoch, 0
    else:
      bad += 1
    records.append((epoch, best_epoch, bad))
    if bad >= 3:
      break
  assert records[-1] == (4, 1, 3)
  assert not loop._improved(0.39, 0.4, "min", 0.05)  # smaller than min_delta
  assert loop._improved(0.6, 0.5, "max", 0.05)
  assert not loop._improved(float("nan"), 0.5, "max", 0.0)


def test_fit_selects_best_epoch_by_validation_and_stops(data, tmp_path):
  config = tiny_config(epochs=8)
  steps_per_epoch = pipeline.num_batches(len(data.train), config.batch_size, "drop")
  state = train.create_train_state_for(config, 2, steps_per_epoch)
  scores = iter([0.3, 0.9, 0.5, 0.6, 0.7, 0.95, 0.99, 0.99])
  snapshots = []

  def evaluate(state):
    snapshots.append(leaves(state))
    return {"score": next(scores)}

  loop_config = loop.LoopConfig(
    epochs=8, batch_size=16, selection_metric="score", selection_mode="max", patience=3, progress=False
  )
  result = loop.fit(state, make_step(config), evaluate, data.train, loop_config, tmp_path)
  assert result.best_epoch == 1 and result.stopped_early and len(result.history) == 5
  for a, b in zip(leaves(result.state), snapshots[1]):
    np.testing.assert_array_equal(a, b)


def test_test_split_is_read_only_after_model_selection(data, tmp_path, monkeypatch):
  fitting = {"active": False}
  real_fit = loop.fit

  def watched_fit(*args, **kwargs):
    fitting["active"] = True
    try:
      return real_fit(*args, **kwargs)
    finally:
      fitting["active"] = False

  class GuardedData(train.Data):
    @property
    def test(self):
      assert not fitting["active"], "the test split was read during training / model selection"
      return self._test

    @test.setter
    def test(self, value):
      self._test = value

  monkeypatch.setattr(loop, "fit", watched_fit)
  guarded = GuardedData(train=data.train, validation=data.validation, test=data.test)
  summary = train.train_and_evaluate(tiny_config(epochs=2), tmp_path, data=guarded)
  assert summary["test"]["n"] == len(data.test)
  written = json.loads((tmp_path / "test_metrics.json").read_text())
  assert 0.0 <= written["test"]["balanced_accuracy"] <= 1.0
  assert written["best_epoch"] in (0, 1)


def test_nonfinite_loss_stops_with_step_named(data, tmp_path):
  config = tiny_config(epochs=2, checkpoint_every_steps=2)
  step_fn = make_step(config)

  def poisoned(state, batch, key):
    state, metrics = step_fn(state, batch, key)
    return state, {**metrics, "loss": jnp.where(state.step == 3, jnp.nan, metrics["loss"])}

  with pytest.raises(loop.NonFiniteError, match="loss.*step 3"):
    fit_tiny(config, data, tmp_path, step_fn=poisoned)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "rmsprop", "adadelta"])
@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_optimizers_and_schedules_take_finite_steps(optimizer, schedule):
  params = {"w": jnp.ones(3)}
  tx = make_optimizer(
    optimizer,
    make_schedule(schedule, 0.1, total_steps=10, warmup_steps=2),
    weight_decay=0.01,
    nesterov=optimizer == "sgd",
  )
  opt_state = tx.init(params)
  for _ in range(3):
    updates, opt_state = tx.update({"w": jnp.ones(3)}, opt_state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  assert np.all(np.isfinite(params["w"])) and not np.allclose(params["w"], 1.0)


def test_schedules_shape():
  cosine = make_schedule("cosine", 1.0, total_steps=100, warmup_steps=10)
  assert float(cosine(0)) == 0.0 and float(cosine(10)) == pytest.approx(1.0) and float(cosine(100)) < 1e-3
  onecycle = make_schedule("onecycle", 1.0, total_steps=100)
  assert float(onecycle(0)) < 0.1 and float(onecycle(30)) == pytest.approx(1.0, abs=0.05)
  with pytest.raises(ValueError, match="schedule"):
    make_schedule("linear", 1.0, 10)
  with pytest.raises(ValueError, match="optimizer"):
    make_optimizer("lion", make_schedule("constant", 1.0, 10))


def test_class_weights_and_loss():
  labels = np.array([0, 0, 0, 1])
  balanced = train.class_weights("balanced", labels, 2)
  np.testing.assert_allclose(balanced, [4 / 6, 4 / 2])
  assert np.mean(balanced[labels]) == pytest.approx(1.0)
  np.testing.assert_allclose(train.class_weights("1,3", labels, 2), [1, 3])
  with pytest.raises(ValueError):
    train.class_weights("1,2,3", labels, 2)
  logits = jnp.zeros((2, 1))
  losses, probabilities = train.loss_and_probabilities(
    logits, jnp.array([0, 1]), num_classes=2, label_smoothing=0.0, weights=jnp.array([1.0, 3.0])
  )
  np.testing.assert_allclose(losses, [np.log(2), 3 * np.log(2)], rtol=1e-6)
  np.testing.assert_allclose(probabilities, 0.5)
  # Label smoothing pulls a confident correct prediction's loss up.
  confident = jnp.array([[-10.0]])
  plain, _ = train.loss_and_probabilities(
    confident, jnp.array([0]), num_classes=2, label_smoothing=0.0, weights=jnp.ones(2)
  )
  smoothed, _ = train.loss_and_probabilities(
    confident, jnp.array([0]), num_classes=2, label_smoothing=0.2, weights=jnp.ones(2)
  )
  assert float(smoothed[0]) > float(plain[0]) + 0.5


_DEVICE_RUN = textwrap.dedent("""
    import sys, numpy as np, jax
    sys.path.insert(0, {tests!r})
    from test_training import fit_tiny, tiny_config, train, pipeline
    rng = np.random.default_rng(0)
    def synthetic(n):
        labels = np.arange(n) % 2
        images = rng.integers(0, 60, (n, 16, 16, 3)).astype(np.uint8)
        images[labels == 1, 4:12, 4:12] += 150
        return pipeline.ArrayDataset(images=images, labels=labels.astype(np.int32), files=np.arange(n).astype(str),
                                     groups=np.arange(n).astype(str), class_names=("with_mask", "without_mask"))
    data = train.Data(train=synthetic(64), validation=synthetic(16), test=synthetic(16))
    result = fit_tiny(tiny_config(epochs=2, model="cnn_bn3", optimizer="sgd", learning_rate=0.05), data, {workdir!r})
    assert len(jax.devices()) == {devices}, jax.devices()
    np.savez({out!r}, *[np.asarray(x) for x in jax.tree.leaves((result.state.params, result.state.model_state))])
""")


def test_four_fake_devices_match_one_device(tmp_path):
  results = {}
  for devices in (1, 4):
    out = tmp_path / f"params{devices}.npz"
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    code = _DEVICE_RUN.format(
      tests=str(REPO / "tests"), workdir=str(tmp_path / f"w{devices}"), devices=devices, out=str(out)
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO, timeout=300)
    with np.load(out, allow_pickle=False) as arrays:
      results[devices] = [arrays[k] for k in sorted(arrays.files, key=lambda k: int(k.split("_")[1]))]
  for one, four in zip(results[1], results[4]):
    # Same maths, different reduction order across devices: equal up to float rounding.
    np.testing.assert_allclose(one, four, rtol=1e-3, atol=1e-4)
