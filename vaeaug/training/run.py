"""How a training run is set up from its config: its data, device mesh, batch size and train state.

Classifier and autoencoder training (`classifiers.train`, `vaeaug.generators`) and the comparison
sweep (`experiments.sweep`) all set their runs up here, so a config field means one thing to all of
them: `n_per_class` None is every training image (0 is no size and is rejected), the real subset is
drawn with `data_seed` (None: `seed`), the mesh has `num_devices` devices (None: all), the global
batch is `batch_size` shrunk to fit small training sets, and the learning-rate schedule spans
`epochs` epochs. A workdir belongs to one config (`check_workdir`): a run whose result-changing
fields differ from the workdir's recorded config is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils

from vaeaug.data import pipeline, sources
from vaeaug.training import checkpoints, logs, loop, recipe, sharding
from vaeaug.training import state as state_lib


@dataclasses.dataclass
class Data:
  """A run's splits: the real training images (all, or the `n_per_class` subset), validation, and
  test only for runs that score it."""

  train: pipeline.ArrayDataset
  validation: pipeline.ArrayDataset
  test: pipeline.ArrayDataset | None = None

  @property
  def class_names(self):
    return self.train.class_names


def check_n_per_class(n_per_class):
  """`n_per_class` as an int, or None for all training images; anything else (0 included) is an error."""
  if n_per_class is None:
    return None
  if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1:
    raise ValueError(f"n_per_class: {n_per_class!r} is not a size; use None for all training images")
  return int(n_per_class)


def subset_seed(config) -> int:
  """The seed that draws the real training subset: `data_seed`, else `seed`."""
  return config.seed if config.get("data_seed") is None else config.data_seed


def real_train(train: pipeline.ArrayDataset, config) -> pipeline.ArrayDataset:
  """The real training images a run of `config` (its `n_per_class`, `seed`, `data_seed`) trains on:
  stratified and nested over `n_per_class` for one subset seed (`pipeline.subsample`)."""
  n_per_class = check_n_per_class(config.n_per_class)
  return train if n_per_class is None else pipeline.subsample(train, n_per_class, subset_seed(config))


def load_data(config, *, test: bool = False) -> Data:
  """`config.dataset`'s real training images (`real_train`) and validation split at
  `config.image_size`; the test split only with `test=True` (runs that never score it never read it)."""
  check_n_per_class(config.n_per_class)  # before a possibly slow first decode
  names = ("train", "validation", "test") if test else ("train", "validation")
  name = sources.versioned(config.dataset, config.get("dataset_version"))
  splits = pipeline.load_splits(name, names, data_dir=config.data_dir, image_size=config.image_size)
  return Data(train=real_train(splits["train"], config), validation=splits["validation"], test=splits.get("test"))


@dataclasses.dataclass(frozen=True)
class Setup:
  mesh: jax.sharding.Mesh  # config.num_devices devices (None: all)
  batch_size: int  # global batch: config.batch_size, shrunk to fit a small training set on the mesh
  steps_per_epoch: int  # full batches per epoch (the last partial batch is dropped)


def plan(config, train_size: int) -> Setup:
  """Mesh, global batch size and steps per epoch of a run of `config` on `train_size` examples."""
  mesh = sharding.make_mesh(config.num_devices)
  batch_size = loop.fitting_batch_size(config.batch_size, train_size, mesh)
  if batch_size < 1:
    raise ValueError(f"{train_size} training examples cannot fill one batch on {mesh.devices.size} devices")
  return Setup(mesh=mesh, batch_size=batch_size, steps_per_epoch=pipeline.num_batches(train_size, batch_size, "drop"))


def capped_epochs(config, train_size: int) -> int:
  """`config.epochs`, fewer when `config.max_steps` (None: no cap) steps come first."""
  if not config.get("max_steps"):
    return config.epochs
  steps_per_epoch = plan(config, train_size).steps_per_epoch
  return max(1, min(config.epochs, math.ceil(config.max_steps / steps_per_epoch)))


class WorkdirConfigMismatch(ValueError):
  """A workdir holds a run of another config (a result-changing field differs)."""


# What a training run writes in its workdir; `--overwrite` removes these and nothing else.
RUN_FILES = (
  "config.json",
  "class_names.json",
  "metrics.jsonl",
  "test_metrics.json",
  "validation_metrics.json",
  "test_predictions.npz",
  "generator_metrics.json",
)
RUN_DIRS = ("checkpoints",)


def check_workdir(config, workdir: str | os.PathLike, *, overwrite: bool = False) -> None:
  """Refuses (`WorkdirConfigMismatch`) to continue a run of another config in `workdir`; execution-only
  fields (`recipe.EXECUTION_ONLY`) may differ. With `overwrite`, the previous run's files are removed."""
  workdir = Path(workdir)
  if overwrite:
    if jax.process_index() == 0:
      remove_run_files(workdir)
    if jax.process_count() > 1:  # no process reads the old checkpoints while the first removes them
      multihost_utils.sync_global_devices("vaeaug_workdir_overwritten")
    return
  if not (workdir / "config.json").is_file():
    return
  try:
    recorded = checkpoints.read_run_config(workdir).to_dict()
  except ValueError as error:  # cut or garbled JSON: not a config this run can be checked against
    raise WorkdirConfigMismatch(
      f"{workdir / 'config.json'}: unreadable ({error}); use a new --workdir, or --overwrite to start over"
    ) from None
  changed = recipe.differences(recorded, config.to_dict())
  if changed:
    raise WorkdirConfigMismatch(
      f"{workdir} holds a run of another config ({recipe.describe(changed)}); use a new --workdir, or "
      "--overwrite to start over (removes that run's checkpoints, metrics and summaries)"
    )


def remove_run_files(workdir: Path) -> None:
  """The files and folders a training run writes in `workdir` (`RUN_FILES`, `RUN_DIRS`, TensorBoard
  event files, figures/*.png); other files are left alone."""
  for name in RUN_FILES:
    (workdir / name).unlink(missing_ok=True)
  for name in RUN_DIRS:
    shutil.rmtree(workdir / name, ignore_errors=True)
  for path in workdir.glob(logs.EVENT_FILE_GLOB):
    path.unlink(missing_ok=True)
  figures = workdir / "figures"
  if figures.is_dir():
    for path in figures.glob("*.png"):
      path.unlink(missing_ok=True)
    if not any(figures.iterdir()):
      figures.rmdir()


def setup(config, workdir: str | os.PathLike, data: Data, *, overwrite: bool = False) -> Setup:
  """Checks that `workdir` holds no run of another config (`check_workdir`; `overwrite` starts over),
  creates it, writes the files `checkpoints.restore_best_state` reads back (the resolved config, the
  class names) and plans the run on `data.train`."""
  check_workdir(config, workdir, overwrite=overwrite)
  Path(workdir).mkdir(parents=True, exist_ok=True)
  checkpoints.write_run_files(workdir, config, data.class_names)
  return plan(config, len(data.train))


def make_tx(config, steps_per_epoch: int, learning_rate: float | None = None) -> optax.GradientTransformation:
  """The optimizer `config` names, on its learning-rate schedule over `config.epochs` epochs (peak
  `learning_rate`, default `config.learning_rate`)."""
  schedule = state_lib.make_schedule(
    config.schedule,
    config.learning_rate if learning_rate is None else learning_rate,
    steps_per_epoch * config.epochs,
    warmup_steps=round(config.warmup_epochs * steps_per_epoch),
  )
  return state_lib.make_optimizer(
    config.optimizer,
    schedule,
    weight_decay=config.weight_decay,
    momentum=config.momentum,
    nesterov=config.nesterov,
    grad_clip_norm=config.grad_clip_norm,
  )


def create_train_state(config, model, steps_per_epoch: int) -> state_lib.TrainState:
  """Train state of `model` with `config`'s optimizer and schedule."""
  return state_lib.create_train_state(model, make_tx(config, steps_per_epoch))
