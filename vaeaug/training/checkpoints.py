"""Orbax checkpoints of the train state, the best-on-validation parameters and the loop's own state.

A checkpoint step that cannot be restored (truncated, deleted or bit-flipped files, say after a
kill during a write on a filesystem without atomic renames, or a disk fault) is reported with a
warning naming the step, the damaged item (state, best, loop), the files the error names and any
empty files, and the previous step is tried. Once a readable step is found, the unreadable newer
ones are renamed to `<step>.unreadable` (kept for inspection, ignored by orbax), so the resumed
run can write those steps again. Checkpoints that hold a different model than the run builds (a
changed config in an old workdir) are not damage: that is a `CheckpointMismatchError`, and nothing
is moved.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from vaeaug import fileio, provenance

log = logging.getLogger(__name__)


PROVENANCE_KEY = "provenance"  # in config.json, beside the config's own fields


class CheckpointMismatchError(ValueError):
  """A workdir's checkpoints hold a different model than the run builds (not damage)."""


def _is_mismatch(error: Exception) -> bool:
  text = str(error)
  return isinstance(error, ValueError) and (
    "Structure mismatch" in text
    or "not compatible with the stored shape" in text
    or "tree structures do not match" in text
  )


_MAX_JSON_BYTES = 1 << 20
_PATH_TAIL = r"/[^\s\"',;)\]\\]+"  # the rest of a path quoted in an error message


def _first_line(error: BaseException) -> str:
  text = str(error).split("See full TensorStore details")[0].strip()
  return f"{type(error).__name__}: {(text.splitlines() or [''])[0][:240]}"


def _inner(error: BaseException) -> BaseException | None:
  """The exception `error` was raised from (as a traceback shows it)."""
  return error.__cause__ if error.__cause__ is not None else None if error.__suppress_context__ else error.__context__


def _listed(failed, renamed: bool) -> str:
  return ", ".join(str(step) for step, _, _ in failed) + (" (renamed to <step>.unreadable)" if renamed else "")


def _relative(path, root: Path) -> str:
  try:
    return Path(path).relative_to(root).as_posix()
  except ValueError:
    return str(path)


class Checkpointer:
  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2):
    self.directory = Path(directory).absolute()
    self._manager = ocp.CheckpointManager(
      self.directory,
      item_names=("state", "best", "loop"),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )

  def save(self, step: int, state, best, loop: dict) -> None:
    """Saves synchronously-visible state; `loop` is JSON (epoch, counters, early-stopping record)."""
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        best=ocp.args.StandardSave(best),
        # A copy: the save finishes in the background while the loop goes on updating its record.
        loop=ocp.args.JsonSave(copy.deepcopy(loop)),
      ),
      force=True,
    )

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def steps(self) -> list[int]:
    self._manager.reload()  # see steps written by an earlier (killed) process
    return sorted(self._manager.all_steps())

  def restore_latest(self, state_target, best_target, *, set_aside: bool = True) -> tuple[int, Any, Any, dict] | None:
    """(step, state, best, loop) of the newest readable checkpoint, or None when there is none.

    Unreadable newer steps are warned about and, with `set_aside` (a run that will save again),
    renamed out of the way (see the module docstring); readers pass False and change nothing. When
    every step fails because it holds a different model, `CheckpointMismatchError` is raised."""
    targets = {"state": state_target, "best": best_target, "loop": None}
    failed: list[tuple[int, str, bool]] = []  # (step, what is wrong, model mismatch)
    for step in reversed(self.steps()):
      try:
        restored = self._restore(step, targets)
      except Exception as error:  # orbax and tensorstore raise many types for damaged files
        problem = self._diagnose(step, error, targets)
        log.warning(
          "checkpoint step %d in %s cannot be restored: %s; trying the previous step", step, self.directory, problem
        )
        failed.append((step, problem, _is_mismatch(error)))
        continue
      if set_aside:
        self._set_aside([s for s, _, _ in failed])
      if failed:
        log.warning(
          "using checkpoint step %d of %s; newer step(s) unreadable: %s",
          step,
          self.directory,
          _listed(failed, set_aside),
        )
      return step, restored.state, restored.best, dict(restored.loop)
    if any(mismatch for _, _, mismatch in failed):
      # Most likely the config changed: starting over would discard the old run's checkpoints.
      raise CheckpointMismatchError(
        f"{self.directory}: no checkpoint matches the model this run builds (changed config? use a new "
        f"workdir): " + "; ".join(f"step {s}: {problem}" for s, problem, _ in failed)
      )
    if set_aside:
      self._set_aside([s for s, _, _ in failed])
    if failed:
      log.warning("no readable checkpoint in %s; unreadable step(s): %s", self.directory, _listed(failed, set_aside))
    return None

  def _restore(self, step: int, targets: dict):
    abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    args = {
      name: ocp.args.JsonRestore() if target is None else ocp.args.StandardRestore(abstract(target))
      for name, target in targets.items()
    }
    return self._manager.restore(step, args=ocp.args.Composite(**args))

  def _diagnose(self, step: int, error: Exception, targets: dict) -> str:
    """What is wrong with a step, in words: the failing items (each restored alone), the files
    their errors name and the empty files of the step."""
    step_dir = self.directory / str(step)
    missing = [name for name in targets if not (step_dir / name).is_dir()]
    if missing:
      failures = {name: None for name in missing}
    else:
      failures = {}
      for name, target in targets.items():
        try:
          self._restore(step, {name: target})
        except Exception as item_error:
          failures[name] = item_error
      failures = failures or {"checkpoint": error}  # items read alone, but not together
    parts = []
    for name, item_error in failures.items():
      if item_error is None:
        parts.append(f"item '{name}' missing")
        continue
      # The outermost error says what failed, the innermost (tensorstore's) often which array and file.
      chain = [item_error]
      while len(chain) < 8 and (inner := _inner(chain[-1])) is not None:
        chain.append(inner)
      shown = " <- ".join(dict.fromkeys(_first_line(e) for e in (chain[0], chain[-1])))
      found = {
        path.rstrip(".") for path in re.findall(re.escape(str(step_dir)) + _PATH_TAIL, "\n".join(str(e) for e in chain))
      }
      named = sorted(_relative(path, step_dir) for path in found if not Path(path).is_dir())
      parts.append(f"item '{name}' unreadable ({shown})" + (f", files named: {', '.join(named)}" if named else ""))
    # Orbax's metadata files are JSON: a cut or garbled one is named here even when the error is not.
    empty, broken_json = [], []
    for path in sorted(step_dir.rglob("*")) if step_dir.is_dir() else ():
      size = path.stat().st_size if path.is_file() else None
      if size == 0:
        empty.append(_relative(path, step_dir))
      elif size is not None and size <= _MAX_JSON_BYTES:  # array data is binary and can be large
        data = path.read_bytes()
        try:
          if data[:1] in (b"{", b"["):
            json.loads(data)
        except ValueError:
          broken_json.append(_relative(path, step_dir))
    if empty:
      parts.append(f"empty files: {', '.join(empty)}")
    if broken_json:
      parts.append(f"damaged JSON files: {', '.join(broken_json)}")
    return "; ".join(parts)

  def _set_aside(self, steps) -> None:
    """Rename unreadable steps to `<step>.unreadable[N]`: out of orbax's sight, so a resumed run
    can save those steps again, but kept for inspection."""
    # Several processes (one shared filesystem) all try the steps before one renames any, and all
    # list them again after; every process calls this once per restore, so the barriers match.
    many = jax.process_count() > 1
    if many:
      multihost_utils.sync_global_devices("vaeaug_checkpoints_tried")
    if jax.process_index() == 0:
      for step in steps:
        source = self.directory / str(step)
        target, n = self.directory / f"{step}.unreadable", 1
        while target.exists():
          target, n = self.directory / f"{step}.unreadable{n}", n + 1
        try:
          source.rename(target)
        except OSError as error:
          log.warning(
            "cannot rename unreadable checkpoint %s (%s); the run may fail to save step %d", source, error, step
          )
    if many:
      multihost_utils.sync_global_devices("vaeaug_checkpoints_set_aside")
    if steps:
      self._manager.reload()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def write_run_files(workdir: str | os.PathLike, config: ml_collections.ConfigDict, class_names) -> None:
  """The files `restore_best_state` reads back: the resolved config (with the run's provenance
  under the key "provenance") and the class names."""
  if jax.process_index() == 0:
    recorded = {**config.to_dict(), PROVENANCE_KEY: provenance.collect()}
    fileio.atomic_write_text(Path(workdir, "config.json"), json.dumps(recorded, indent=1, default=str) + "\n")
    fileio.atomic_write_text(Path(workdir, "class_names.json"), json.dumps(list(class_names)) + "\n")


def read_run_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config a training workdir was run with (its `config.json`, provenance left out)."""
  recorded = json.loads(Path(workdir, "config.json").read_text())
  recorded.pop(PROVENANCE_KEY, None)
  return ml_collections.ConfigDict(recorded)


def restore_best_state(workdir: str | os.PathLike, make_state: Callable[[ml_collections.ConfigDict, int], Any]):
  """(config, train state holding the best-on-validation parameters, class names) of a training
  workdir. `make_state(config, num_classes)` builds a state of the right structure; it is only
  traced for shapes (`jax.eval_shape`), since the restore fills every array."""
  workdir = Path(workdir)
  for name in ("config.json", "class_names.json"):
    if not (workdir / name).is_file():
      raise FileNotFoundError(f"{workdir / name}: missing; is {workdir} a training workdir?")
  config = read_run_config(workdir)
  class_names = tuple(json.loads((workdir / "class_names.json").read_text()))
  # Every array onto this process's first device, whichever devices wrote it: without a target
  # sharding orbax wants the saving topology back (a run of several processes on a cluster, read
  # on one machine, would be "no readable checkpoint").
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  state = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device) if isinstance(x, jax.ShapeDtypeStruct) else x,
    jax.eval_shape(lambda: make_state(config, len(class_names))),
  )
  best = {"params": state.params, "model_state": state.model_state}
  checkpointer = Checkpointer(workdir / "checkpoints")
  restored = checkpointer.restore_latest(state, best, set_aside=False)  # reading: change nothing
  checkpointer.close()
  if restored is None:
    raise FileNotFoundError(f"{workdir / 'checkpoints'}: no readable checkpoint")
  _, state, best, _ = restored
  return config, state.replace(params=best["params"], model_state=best["model_state"]), class_names
