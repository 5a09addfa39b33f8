"""The one training loop: epochs of jit-compiled steps, validation, early stopping on a validation
metric with best-parameter tracking, orbax checkpoints with exact resume, metric logs, progress.

Models plug in a `train_step(state, batch, key) -> (state, metrics)` (jit-compiled by the caller;
derives its randomness from `key` and `state.step`) and an `evaluate(state) -> {name: float}` on
validation data; a non-finite validation `loss`, or a `NonFiniteError` raised by `evaluate` (e.g. for
NaN model outputs), stops training with the epoch and step named. Other validation metrics may be
NaN (an AUC with one class present is undefined): such an epoch is just never the best. The loop
never sees test data: callers score test once, after `fit`, with `FitResult.state` (the
best-on-validation parameters).

Determinism: data order for epoch e depends only on (seed, e), step randomness on (seed, step), and
checkpoints hold the train state, the best parameters and the early-stopping record, so a run
killed at any point and restarted ends exactly where an uninterrupted run ends (bitwise on CPU).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vaeaug.data import pipeline
from vaeaug.training import logs, sharding, timing
from vaeaug.training.checkpoints import Checkpointer

PREFETCH_BATCHES = 2  # batches on their way to the devices ahead of the running step


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  epochs: int
  batch_size: int  # global batch, split over devices and processes
  seed: int = 0
  log_every_steps: int = 20
  checkpoint_every_steps: int = 0  # besides every epoch end; 0: epoch ends only
  checkpoint_every_epochs: int = 1  # epoch-end saves every N epochs (and always the last)
  # ... and only when this many seconds passed since the last save: short runs (sweep cells)
  # save once, at the end; resume replays the epochs since the last save exactly.
  checkpoint_min_seconds: float = 0.0
  keep_checkpoints: int = 2
  selection_metric: str = "loss"  # validation metric that picks the best epoch
  selection_mode: str = "min"  # "min" or "max"
  patience: int | None = None  # epochs without improvement before stopping; None: never
  min_delta: float = 0.0  # improvement smaller than this does not count
  progress: bool = True

  def __post_init__(self):
    if self.epochs < 1 or self.batch_size < 1:
      raise ValueError(f"epochs and batch_size must be positive, got {self.epochs}, {self.batch_size}")
    if self.selection_mode not in ("min", "max"):
      raise ValueError(f"selection_mode must be 'min' or 'max', got {self.selection_mode!r}")
    if self.checkpoint_every_steps % self.log_every_steps:
      # Log intervals must not straddle a checkpoint, or a resumed run would average differently.
      raise ValueError(
        f"checkpoint_every_steps ({self.checkpoint_every_steps}) must be a multiple of "
        f"log_every_steps ({self.log_every_steps})"
      )
    if self.checkpoint_every_epochs < 1:
      raise ValueError(f"checkpoint_every_epochs must be >= 1, got {self.checkpoint_every_epochs}")
    if not self.checkpoint_min_seconds >= 0:
      raise ValueError(f"checkpoint_min_seconds must be >= 0, got {self.checkpoint_min_seconds}")
    if self.patience is not None and self.patience < 1:
      raise ValueError(f"patience must be >= 1 or None, got {self.patience}")

  @classmethod
  def from_config(cls, config, batch_size: int, selection_metric: str, selection_mode: str) -> LoopConfig:
    """From an experiment config (experiments/configs/default.py fields)."""
    return cls(
      epochs=config.epochs,
      batch_size=batch_size,
      seed=config.seed,
      log_every_steps=config.log_every_steps,
      checkpoint_every_steps=config.checkpoint_every_steps,
      checkpoint_every_epochs=config.checkpoint_every_epochs,
      checkpoint_min_seconds=config.get("checkpoint_min_seconds", 0.0),
      keep_checkpoints=config.keep_checkpoints,
      selection_metric=selection_metric,
      selection_mode=selection_mode,
      patience=config.patience,
      min_delta=config.min_delta,
      progress=config.progress,
    )


def fitting_batch_size(requested: int, num_examples: int, mesh) -> int:
  """The requested global batch, shrunk for small training sets (n_per_class * classes < batch)
  to the largest multiple of the device count that fits."""
  devices = mesh.devices.size
  return min(requested, num_examples - num_examples % devices)


@dataclasses.dataclass
class FitResult:
  state: object  # train state holding the best-on-validation parameters
  best_epoch: int  # 0-based
  best_value: float
  history: list[dict]  # validation metrics per evaluated epoch
  stopped_early: bool
  steps: int
  resumed_from: int | None
  # Wall seconds by phase: steps (the step loop with its metric fetches), input (waiting for the
  # next batch), validation, checkpoints, compile, other (setup); total (`timing.Phases.summary`).
  timing: dict = dataclasses.field(default_factory=dict)


class NonFiniteError(FloatingPointError):
  """Training produced a non-finite value (a step metric such as loss or grad_norm, the validation
  outputs or loss, or the state about to be saved); the message names the step and the quantities.
  Nothing non-finite was checkpointed: step metrics are checked before every save, and the saved
  state itself too."""


def _improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
  if value is None or not math.isfinite(value):
    return False
  if best is None:
    return True
  return value > best + min_delta if mode == "max" else value < best - min_delta


_all_finite = jax.jit(
  lambda tree: jnp.all(
    jnp.asarray(
      [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
      or [True]
    )
  )
)


def _first_nonfinite(value) -> float:
  flat = np.asarray(value, np.float64).ravel()
  return float(flat[~np.isfinite(flat)][0])


def _nonfinite_leaves(tree, limit: int = 3) -> list[str]:
  """Paths ("params/convs/0/kernel") of the first few float leaves holding NaN or Inf."""
  found = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if jnp.issubdtype(leaf.dtype, jnp.inexact) and not np.all(np.isfinite(np.asarray(leaf))):
      found.append("/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path))
      if len(found) == limit:
        break
  return found


def fit(
  state,
  train_step: Callable,
  evaluate: Callable[[object], dict],
  train_data,
  config: LoopConfig,
  workdir: str | Path,
  *,
  mesh=None,
  hparams: dict | None = None,
  epoch_hook: Callable | None = None,
) -> FitResult:
  """Train `state` on `train_data` (an ArrayDataset, {"image", "label"} arrays, or `pipeline.WithExtraRows`:
  extra rows on top of every batch) in `workdir`.

  Besides `metrics.jsonl`, the workdir gets TensorBoard event files with the same train and validation
  scalars and, if given, `hparams` (the run's config as a dict). `epoch_hook(state, epoch, step,
  writer)` runs on process 0 after each epoch's validation, with the `logs.EventWriter` (e.g. to add
  images); it must not keep `state`, whose buffers the next train step may donate.
  """
  phases = timing.Phases()
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = mesh or sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  n = len(train_data) if hasattr(train_data, "__len__") else len(train_data["label"])
  steps_per_epoch = pipeline.num_batches(n, config.batch_size, "drop")
  if steps_per_epoch == 0:
    raise ValueError(f"batch size {config.batch_size} is larger than the training set ({n} examples)")
  total_steps = steps_per_epoch * config.epochs
  rows_per_step = config.batch_size
  if isinstance(train_data, pipeline.WithExtraRows):
    rows_per_step += pipeline.extra_rows_per_batch(train_data.ratio, config.batch_size, mesh.devices.size)
  is_chief = jax.process_index() == 0
  base_key = jax.random.key(config.seed)

  state = sharding.replicate(state, mesh)
  best = jax.tree.map(jnp.copy, {"params": state.params, "model_state": state.model_state})
  record = {
    "epochs_done": 0,
    "best_value": None,
    "best_epoch": -1,
    "bad_epochs": 0,
    "history": [],
    "stopped_early": False,
    "finished": False,
  }
  checkpointer = Checkpointer(workdir / "checkpoints", max_to_keep=config.keep_checkpoints)
  try:
    with phases.phase("checkpoints"):
      restored = checkpointer.restore_latest(state, best)
    resumed_from = None
    if restored is not None:
      resumed_from, state, best, record = restored
      state, best = sharding.replicate(state, mesh), sharding.replicate(best, mesh)
      if config.progress and is_chief:
        print(
          f"resuming {workdir} from checkpoint step {resumed_from} ({record['epochs_done']} epochs done)",
          file=sys.stderr,
          flush=True,
        )
    writer = logs.MetricsWriter(workdir / "metrics.jsonl", resume_step=resumed_from, enabled=is_chief)
    # Rewritten from the trimmed metrics.jsonl, so a resumed run's curves have no stale or repeated steps.
    events = logs.EventWriter(workdir, resume_step=resumed_from, enabled=is_chief)
    if hparams is not None:
      events.hparams(hparams)
    events.replay(writer.path)

    step = int(state.step)
    progress = logs.Progress(total_steps, start_step=step, enabled=config.progress and is_chief)

    last_saved = resumed_from
    last_saved_at = time.perf_counter()

    def save(step_now):
      nonlocal last_saved, last_saved_at
      # The step metrics up to here were checked by flush(); this also catches a state that went
      # non-finite without its metrics showing it (e.g. an optimizer statistic).
      tree = {"params": state.params, "model_state": state.model_state, "opt_state": state.opt_state, "best": best}
      with phases.phase("checkpoints"):
        if not bool(_all_finite(tree)):
          raise NonFiniteError(
            f"non-finite state at step {step_now} ({', '.join(_nonfinite_leaves(tree))}); "
            f"not checkpointed, last checkpoint: {'none' if last_saved is None else f'step {last_saved}'}"
          )
        checkpointer.save(step_now, state, best, record)
      last_saved, last_saved_at = step_now, time.perf_counter()

    pending: list[tuple[int, dict]] = []  # device-side step metrics not yet fetched
    interval_start, interval_steps = time.perf_counter(), 0

    def flush(step_now, epoch):
      nonlocal interval_start, interval_steps
      if not pending:
        return
      fetched = jax.device_get([metrics for _, metrics in pending])
      for (s, _), values in zip(pending, fetched):
        bad = {name: value for name, value in values.items() if not np.all(np.isfinite(value))}
        if bad:  # the earliest bad step, with every quantity that went non-finite in it
          shown = ", ".join(f"{name} ({_first_nonfinite(value)})" for name, value in bad.items())
          raise NonFiniteError(
            f"non-finite {shown} at step {s}; training stopped, last checkpoint: "
            f"{'none' if last_saved is None else f'step {last_saved}'}"
          )
      elapsed = time.perf_counter() - interval_start
      mean = {name: float(np.mean([values[name] for values in fetched])) for name in fetched[0]}
      rate = interval_steps * rows_per_step / elapsed if elapsed > 0 else float("nan")
      line = {"split": "train", "step": step_now, "epoch": epoch, **mean, "img_per_s": round(rate, 1)}
      writer.write(line)
      events.write(line)
      events.flush()  # live curves: on disk at every log interval
      progress.update(step_now, epoch, config.epochs, {**mean, "img/s": round(rate)})
      pending.clear()
      interval_start, interval_steps = time.perf_counter(), 0

    epoch = record["epochs_done"]
    start_batch = step - epoch * steps_per_epoch if not record["finished"] else 0
    while not record["finished"] and epoch < config.epochs:
      where_in_run = dict(
        seed=config.seed,
        epoch=epoch,
        start_batch=start_batch,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
      )
      if isinstance(train_data, pipeline.WithExtraRows):  # extra rows on top: the batch grows by them
        batches = train_data.epoch_batches(config.batch_size, multiple=mesh.devices.size, **where_in_run)
      else:
        batches = pipeline.epoch_batches(train_data, config.batch_size, remainder="drop", **where_in_run)
      # The next batch is gathered and sent to the devices while this step runs.
      prefetched = sharding.prefetch_to_device(batches, mesh, size=PREFETCH_BATCHES, keys=("image", "label"))
      with phases.phase("steps"):  # the input and saves inside book to their own phases
        while True:
          with phases.phase("input"):
            batch = next(prefetched, None)
          if batch is None:
            break
          state, metrics = train_step(state, batch, base_key)
          step += 1
          interval_steps += 1
          pending.append((step, metrics))
          if step % config.log_every_steps == 0:
            flush(step, epoch)
          at_epoch_end = step % steps_per_epoch == 0
          if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0 and not at_epoch_end:
            flush(step, epoch)
            save(step)
        flush(step, epoch)
      start_batch = 0

      where = (
        f"after epoch {epoch + 1} (step {step}); training stopped, last checkpoint: "
        f"{'none' if last_saved is None else f'step {last_saved}'}"
      )
      try:
        with phases.phase("validation"):
          values = {name: float(value) for name, value in evaluate(state).items()}
      except NonFiniteError as error:
        raise NonFiniteError(f"{error} {where}") from error
      # A validation loss is always defined; NaN there means the model's outputs are.
      if "loss" in values and not math.isfinite(values["loss"]):
        raise NonFiniteError(f"non-finite validation loss ({values['loss']}) {where}")
      value = values.get(config.selection_metric)
      if value is None:
        raise KeyError(f"selection metric {config.selection_metric!r} not among validation metrics {sorted(values)}")
      epoch_record = {"epoch": epoch, "step": step, **values}
      record["history"].append(epoch_record)
      if _improved(value, record["best_value"], config.selection_mode, config.min_delta):
        record.update(best_value=value, best_epoch=epoch, bad_epochs=0)
        # A copy: train steps may donate (and so delete) the state's buffers.
        best = jax.tree.map(jnp.copy, {"params": state.params, "model_state": state.model_state})
      else:
        record["bad_epochs"] += 1
      line = {"split": "validation", **epoch_record, "best_epoch": record["best_epoch"]}
      writer.write(line)
      events.write(line)
      if epoch_hook is not None and is_chief:
        # Another process may hold part of a global array: the hook gets a host copy then.
        with phases.phase("validation"):
          epoch_hook(state if jax.process_count() == 1 else jax.device_get(state), epoch, step, events)
      events.flush()
      if config.progress and is_chief:
        print(
          f"epoch {epoch + 1}/{config.epochs} validation {config.selection_metric} {value:.4g} "
          f"(best {record['best_value']:.4g} at epoch {record['best_epoch'] + 1})",
          file=sys.stderr,
          flush=True,
        )
      epoch += 1
      record["epochs_done"] = epoch
      if config.patience is not None and record["bad_epochs"] >= config.patience:
        record["stopped_early"] = True
      record["finished"] = record["stopped_early"] or epoch >= config.epochs
      # A resume replays the epochs since the last save exactly, so sparser saves cost only redone
      # work after a kill; on short epochs each save (~50-80 ms) is a large share of the epoch.
      if record["finished"] or (
        epoch % config.checkpoint_every_epochs == 0
        and time.perf_counter() - last_saved_at >= config.checkpoint_min_seconds
      ):
        save(step)
      interval_start = time.perf_counter()  # throughput excludes evaluation and checkpointing
  finally:
    # On an exception too (Ctrl-C in a notebook, NonFiniteError): pending background saves finish
    # before the caller, or a rerun in the same process, touches the checkpoints.
    with phases.phase("checkpoints"):
      checkpointer.close()
  events.close()

  if record["best_epoch"] < 0:
    raise NonFiniteError(f"validation {config.selection_metric} was never finite; no best epoch")
  best_state = state.replace(params=best["params"], model_state=best["model_state"])
  return FitResult(
    state=best_state,
    best_epoch=record["best_epoch"],
    best_value=record["best_value"],
    history=record["history"],
    stopped_early=record["stopped_early"],
    steps=step,
    resumed_from=resumed_from,
    timing=phases.summary(),
  )
