"""Orbax checkpoints of the train state, the best-on-validation parameters and the loop's own state.

A checkpoint step that cannot be restored (truncated or deleted files, say after a kill during a
write on a filesystem without atomic renames) is reported with a warning naming the step and the
error, and the previous step is tried.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2):
    self.directory = Path(directory).absolute()
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "best", "loop"),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def save(self, step: int, state, best, loop: dict) -> None:
    """Saves synchronously-visible state; `loop` is JSON (epoch, counters, early-stopping record)."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), best=ocp.args.StandardSave(best), loop=ocp.args.JsonSave(loop)),
        force=True)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def steps(self) -> list[int]:
    self._manager.reload()  # see steps written by an earlier (killed) process
    return sorted(self._manager.all_steps())

  def restore_latest(self, state_target, best_target) -> tuple[int, Any, Any, dict] | None:
    """(step, state, best, loop) of the newest readable checkpoint, or None when there is none."""
    abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    for step in reversed(self.steps()):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract(state_target)),
            best=ocp.args.StandardRestore(abstract(best_target)),
            loop=ocp.args.JsonRestore()))
      except Exception as error:  # orbax raises many types for damaged files
        log.warning("checkpoint step %d in %s cannot be restored (%s: %s); trying the previous one",
                    step, self.directory, type(error).__name__, str(error).splitlines()[0][:300])
        continue
      return step, restored.state, restored.best, dict(restored.loop)
    return None

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def write_run_files(workdir: str | os.PathLike, config: ml_collections.ConfigDict, class_names) -> None:
  """The files `restore_best_state` reads back: the resolved config and the class names."""
  if jax.process_index() == 0:
    Path(workdir, "config.json").write_text(config.to_json(indent=1) + "\n")
    Path(workdir, "class_names.json").write_text(json.dumps(list(class_names)) + "\n")


def restore_best_state(workdir: str | os.PathLike, make_state: Callable[[ml_collections.ConfigDict, int], Any]):
  """(config, train state holding the best-on-validation parameters, class names) of a training
  workdir. `make_state(config, num_classes)` builds a state of the right structure; it is only
  traced for shapes (`jax.eval_shape`), since the restore fills every array."""
  workdir = Path(workdir)
  for name in ("config.json", "class_names.json"):
    if not (workdir / name).is_file():
      raise FileNotFoundError(f"{workdir / name}: missing; is {workdir} a training workdir?")
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  class_names = tuple(json.loads((workdir / "class_names.json").read_text()))
  state = jax.eval_shape(lambda: make_state(config, len(class_names)))
  best = {"params": state.params, "model_state": state.model_state}
  checkpointer = Checkpointer(workdir / "checkpoints")
  restored = checkpointer.restore_latest(state, best)
  checkpointer.close()
  if restored is None:
    raise FileNotFoundError(f"{workdir / 'checkpoints'}: no readable checkpoint")
  _, state, best, _ = restored
  return config, state.replace(params=best["params"], model_state=best["model_state"]), class_names
