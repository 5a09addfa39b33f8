"""TensorBoard event files beside metrics.jsonl, read back with TensorBoard's own reader: the loop's
train and validation scalars, hyperparameters and epoch-hook images, a killed and rerun run without
stale or repeated steps, generator image grids, and the sweep's progress events."""

import functools
import io
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import api_pb2 as hparams_api
from tensorboard.plugins.hparams import metadata as hparams_metadata
from test_generators import tiny_generator_config
from test_training import make_step, tiny_config

from classifiers import train
from vaeaug import generator_figures, generators
from vaeaug.data import pipeline
from vaeaug.training import logs, loop, sharding

CLASS_NAMES = ("with_mask", "without_mask")


def synthetic(n: int, size: int = 16, seed: int = 0) -> pipeline.ArrayDataset:
  """Two separable classes of random images (no dataset needed)."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % 2
  images = rng.integers(0, 60, (n, size, size, 3)).astype(np.uint8)
  images[labels == 1, size // 4 : -size // 4, size // 4 : -size // 4] += 150
  names = np.asarray([f"image{i}" for i in range(n)])
  return pipeline.ArrayDataset(
    images=images, labels=labels.astype(np.int32), files=names, groups=names, class_names=CLASS_NAMES
  )


TRAIN, VALIDATION = synthetic(48), synthetic(16, seed=1)  # 3 steps an epoch at batch 16
CONFIG = tiny_config(epochs=3, checkpoint_every_steps=2)
STEP_FN = make_step(CONFIG)  # compiled once for the module
PREDICT = jax.jit(functools.partial(train.eval_step, normalization=CONFIG.normalization))


def hook_image(epoch: int) -> np.ndarray:
  return np.full((6, 10, 3), 40 * (epoch + 1), np.uint8)


@functools.cache
def initial_state():
  # One, copied for each run: a new one would bring new optimizer functions, and so a recompiled step.
  return train.create_train_state_for(CONFIG, 2, steps_per_epoch=3)


def fit(workdir, step_fn=STEP_FN, epoch_hook=None):
  state = jax.tree.map(jnp.copy, initial_state())
  mesh = sharding.make_mesh()

  def evaluate(state):
    probabilities = train.predict_probabilities(PREDICT, state, VALIDATION, 32, mesh)
    return {"loss": train.weighted_log_loss(VALIDATION.labels, probabilities, np.ones(2))}

  loop_config = loop.LoopConfig(
    epochs=CONFIG.epochs, batch_size=16, log_every_steps=1, checkpoint_every_steps=2, progress=False
  )

  def write_image(state, epoch, step, writer):
    writer.images(step, "hook/epoch", hook_image(epoch))
    if epoch_hook is not None:
      epoch_hook(state, epoch, step, writer)

  return loop.fit(
    state, step_fn, evaluate, TRAIN, loop_config, workdir, mesh=mesh, hparams=CONFIG.to_dict(), epoch_hook=write_image
  )


def load(logdir) -> event_accumulator.EventAccumulator:
  accumulator = event_accumulator.EventAccumulator(
    str(logdir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0}
  )
  return accumulator.Reload()


def scalars(accumulator, tag):
  return [e.step for e in accumulator.Scalars(tag)], [e.value for e in accumulator.Scalars(tag)]


def decoded(event) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run; its hook records which train steps were already on disk at each epoch end."""
  workdir = tmp_path_factory.mktemp("reference")
  live = []
  fit(
    workdir, epoch_hook=lambda state, epoch, step, writer: live.append((step, scalars(load(workdir), "train/loss")[0]))
  )
  return workdir, live


def test_scalars_equal_metrics_jsonl_and_hparams_are_there(reference):
  workdir, live = reference
  accumulator = load(workdir)
  records = logs.read_metrics(workdir / "metrics.jsonl")
  expected_tags = set()
  for split in ("train", "validation"):
    lines = [r for r in records if r["split"] == split]
    names = [k for k in lines[0] if k not in ("split", "step", "epoch")]
    assert names, lines[0]
    for name in names:
      steps, values = scalars(accumulator, f"{split}/{name}")
      assert steps == [r["step"] for r in lines], name
      np.testing.assert_array_equal(values, np.float32([r[name] for r in lines]), err_msg=name)
      expected_tags.add(f"{split}/{name}")
  assert set(accumulator.Tags()["scalars"]) == expected_tags
  # Curves are live: every train step up to an epoch's end is on disk when the epoch ends.
  assert live == [(step, list(range(1, step + 1))) for step in (3, 6, 9)]

  content = accumulator.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
  start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
  assert start.hparams["model"].string_value == CONFIG.model
  assert start.hparams["learning_rate"].number_value == CONFIG.learning_rate
  assert start.hparams["epochs"].number_value == CONFIG.epochs
  assert start.hparams["nesterov"].bool_value is CONFIG.nesterov
  assert start.hparams["n_per_class"].string_value == "None"
  end = hparams_metadata.parse_session_end_info_plugin_data(content[hparams_metadata.SESSION_END_INFO_TAG])
  assert end.status == hparams_api.STATUS_SUCCESS  # closed at the end of fit


def test_hparams_are_flattened_to_plain_values():
  config = {"noise": {"kind": "masking", "p": np.float32(0.5)}, "channels": (8, 16), "seed": 3, "flip": True, "x": None}
  assert logs.flatten_hparams(config) == {
    "noise.kind": "masking",
    "noise.p": 0.5,
    "channels": "(8, 16)",
    "seed": 3,
    "flip": True,
    "x": "None",
  }
  with pytest.raises(TypeError, match="mapping"):
    logs.flatten_hparams(["lr", 0.1])


@pytest.mark.parametrize("kill_after", [5, 7])  # one step after a checkpoint: mid-epoch (4), at an epoch end (6)
def test_killed_and_rerun_run_has_each_step_once(reference, tmp_path, kill_after):
  workdir = tmp_path / "run"
  calls = {"n": 0}

  def dying_step(state, batch, key):
    calls["n"] += 1
    if calls["n"] > kill_after:
      # Saves are asynchronous: a real kill stops them, in-process they would race the rerun's own
      # saves. Let the last one commit (as it would have in a longer step) before dying.
      deadline = time.monotonic() + 60
      while not (workdir / "checkpoints" / str(kill_after - 1)).is_dir():
        assert time.monotonic() < deadline, f"checkpoint {kill_after - 1} was never committed"
        time.sleep(0.05)
      raise KeyboardInterrupt
    return STEP_FN(state, batch, key)

  with pytest.raises(KeyboardInterrupt):
    fit(workdir, step_fn=dying_step)
  # The killed run got further than its last checkpoint: its last step is stale for the rerun.
  assert scalars(load(workdir), "train/loss")[0][-1] == kill_after
  assert fit(workdir).resumed_from == kill_after - 1

  expected, got = load(reference[0]), load(workdir)
  assert len(list(workdir.glob(logs.EVENT_FILE_GLOB))) == 1
  assert set(got.Tags()["scalars"]) == set(expected.Tags()["scalars"])
  for tag in expected.Tags()["scalars"]:
    steps, values = scalars(got, tag)
    assert steps == scalars(expected, tag)[0], tag
    assert np.all(np.diff(steps) > 0), tag
    if tag != "train/img_per_s":  # wall time
      np.testing.assert_array_equal(values, scalars(expected, tag)[1], err_msg=tag)
  # Images are not in metrics.jsonl: those up to the checkpoint are carried over from the killed run.
  images = got.Images("hook/epoch")
  assert [e.step for e in images] == [e.step for e in expected.Images("hook/epoch")] == [3, 6, 9]
  assert [e.encoded_image_string for e in images] == [e.encoded_image_string for e in expected.Images("hook/epoch")]


def test_epoch_hook_images_are_image_events(reference):
  images = load(reference[0]).Images("hook/epoch")
  assert [(e.step, e.width, e.height) for e in images] == [(3, 10, 6), (6, 10, 6), (9, 10, 6)]
  for epoch, event in enumerate(images):
    np.testing.assert_array_equal(decoded(event), hook_image(epoch))


@pytest.mark.parametrize("model", ["dae", "cvae"])
def test_generator_grids_are_deterministic_images(model, tmp_path):
  config = tiny_generator_config(model)
  state = generators.create_generator_state(config, 2, steps_per_epoch=1)
  preview = generator_figures.preview_subset(synthetic(16, size=config.image_size), per_class=3)
  grids = generator_figures.tensorboard_grids(state, preview, config)
  again = generator_figures.tensorboard_grids(state, preview, config)
  size, rows = config.image_size, 3 if model == "dae" else 2  # input, (noisy,) reconstruction
  assert grids["reconstructions"].shape == (2 + rows * (size + 2), 2 + 6 * (size + 2), 3)
  assert grids["samples"].shape == (2 + 2 * (size + 2), 2 + 3 * (size + 2), 3)  # a row per class
  for name, grid in grids.items():
    assert grid.dtype == np.uint8
    np.testing.assert_array_equal(grid, again[name])
  first = grids["reconstructions"][2 : 2 + size, 2 : 2 + size]
  np.testing.assert_array_equal(first, preview.images[0])  # the input row is the preview itself

  writer = logs.EventWriter(tmp_path)
  for name, grid in grids.items():
    writer.images(4, f"generator/{name}", grid)
  with pytest.raises(ValueError, match="uint8"):
    writer.images(4, "generator/float", grids["samples"] / 255.0)
  writer.close()
  written = load(tmp_path)
  for name, grid in grids.items():
    (event,) = written.Images(f"generator/{name}")
    assert (event.step, event.height, event.width) == (4, *grid.shape[:2])
    np.testing.assert_array_equal(decoded(event), grid)


def test_images_of_a_cut_event_file_are_kept_up_to_the_resume_step(tmp_path):
  writer = logs.EventWriter(tmp_path)
  for step in range(1, 6):
    writer.scalars(step, "train", {"loss": 1.0 / step})
    writer.images(step, "grid", hook_image(step))
  writer.flush()  # not closed: killed
  (path,) = tmp_path.glob(logs.EVENT_FILE_GLOB)
  path.write_bytes(path.read_bytes()[:-7])  # mid-write
  # Each step's scalar and image, but the last image, which the cut damaged.
  assert [event.step for event in logs.read_event_file(path) if event.summary.value] == [1, 1, 2, 2, 3, 3, 4, 4, 5]
  logs.EventWriter(tmp_path, resume_step=3).close()
  assert len(list(tmp_path.glob(logs.EVENT_FILE_GLOB))) == 1
  written = load(tmp_path)
  assert [e.step for e in written.Images("grid")] == [1, 2, 3]
  np.testing.assert_array_equal(decoded(written.Images("grid")[2]), hook_image(3))
  assert written.Tags()["scalars"] == []  # scalars come back from metrics.jsonl, not from old events


def cell(dataset, n_per_class, arm, seed, balanced_accuracy, roc_auc):
  return {
    "dataset": dataset,
    "n_per_class": n_per_class,
    "arm": arm,
    "seed": seed,
    "test": {"balanced_accuracy": balanced_accuracy, "roc_auc": roc_auc},
  }


def test_sweep_progress_events(tmp_path):
  dataset = "face_mask_detection/2classes"
  cells = [
    cell(dataset, 10, "none", 0, 0.6, 0.7),
    cell(dataset, 10, "classic+cvae", 0, 0.8, None),  # an undefined ROC-AUC is left out of the mean
    cell(dataset, 10, "none", 1, 0.7, 0.9),
    cell(dataset, None, "none", 0, 0.9, 0.95),
    cell(dataset, 10, "classic+cvae", 1, 0.6, 0.5),
  ]
  progress = logs.SweepProgressWriter(tmp_path, total_cells=8, finished=cells[:3])
  progress.add(cells[3])
  progress.close()
  # A restarted sweep replays cells.jsonl: the curves are rewritten, not continued twice.
  progress = logs.SweepProgressWriter(tmp_path, total_cells=8, finished=cells[:4])
  progress.add(cells[4])
  progress.close()

  written = load(tmp_path)
  assert scalars(written, "sweep/cells_finished") == ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5])
  assert scalars(written, "sweep/cells_total") == ([1, 2, 3, 4, 5], [8] * 5)
  np.testing.assert_allclose(scalars(written, "sweep/fraction_finished")[1], np.arange(1, 6) / 8)
  none_10 = f"{dataset}/n10/none"
  steps, values = scalars(written, f"test_balanced_accuracy/{none_10}")
  assert steps == [1, 3]
  np.testing.assert_allclose(values, [0.6, 0.65], rtol=1e-6)
  steps, values = scalars(written, f"test_balanced_accuracy/{dataset}/n10/classic_cvae")
  assert steps == [2, 5]
  np.testing.assert_allclose(values, [0.8, 0.7], rtol=1e-6)
  assert scalars(written, f"test_roc_auc/{dataset}/n10/classic_cvae") == ([5], [0.5])
  assert scalars(written, f"test_roc_auc/{dataset}/nall/none")[0] == [4]
  with pytest.raises(ValueError, match="arm"):
    progress = logs.SweepProgressWriter(tmp_path / "bad", total_cells=1, finished=[{"dataset": dataset}])
