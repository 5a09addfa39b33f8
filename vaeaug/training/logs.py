"""metrics.jsonl writing (resume-aware), TensorBoard event files beside it, and a terminal progress line
with an ETA."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import struct
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def _plain(value):
  if isinstance(value, (np.generic, np.ndarray)):
    return value.tolist()
  if hasattr(value, "tolist"):  # jax arrays
    return np.asarray(value).tolist()
  if isinstance(value, float) and not math.isfinite(value):
    return None if math.isnan(value) else value
  return value


class MetricsWriter:
  """Appends one JSON object per line to `metrics.jsonl`. On resume from step S, lines written after
  S by the interrupted run are dropped first, so the finished file equals an uninterrupted run's."""

  def __init__(self, path: str | os.PathLike, *, resume_step: int | None = None, enabled: bool = True):
    self.path = Path(path)
    self.enabled = enabled
    if not enabled:
      return
    if resume_step is None:
      self.path.write_text("")
    elif self.path.exists():
      kept = [
        line
        for line in self.path.read_text().splitlines()
        if line.strip() and _complete(line) and json.loads(line).get("step", 0) <= resume_step
      ]
      self.path.write_text("".join(line + "\n" for line in kept))

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    with self.path.open("a") as f:
      f.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")


def _complete(line: str) -> bool:
  try:
    json.loads(line)
    return True
  except json.JSONDecodeError:  # a line cut by a kill mid-write
    return False


def read_metrics(path: str | os.PathLike) -> list[dict]:
  return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def format_seconds(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
  """`epoch 3/30 step 120/900 loss 0.231 | 812 img/s | ETA 1m20s` lines on stderr, ETA from the
  steps done in this process (compilation excluded after the first log)."""

  def __init__(self, total_steps: int, *, start_step: int = 0, enabled: bool = True, stream=None):
    self.total_steps = total_steps
    self.enabled = enabled
    self.stream = stream or sys.stderr
    self._start_step = start_step
    self._start_time = None

  def update(self, step: int, epoch: int, epochs: int, values: dict) -> None:
    now = time.perf_counter()
    if self._start_time is None:  # first call: after compilation
      self._start_time, self._start_step = now, step
      eta = ""
    else:
      rate = (step - self._start_step) / max(now - self._start_time, 1e-9)
      eta = f" | ETA {format_seconds((self.total_steps - step) / rate)}" if rate > 0 else ""
    if self.enabled:
      shown = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
      print(f"epoch {epoch + 1}/{epochs} step {step}/{self.total_steps} {shown}{eta}", file=self.stream, flush=True)


# ----------------------------------------------------------------------------- TensorBoard events

EVENT_FILE_GLOB = "events.out.tfevents.*"
_ILLEGAL_TAG_CHARACTERS = re.compile(r"[^-/\w.]")  # what TensorBoard would rename to "_" with a warning


def _tensorboardx():
  """tensorboardX's summary builders, its `Event` proto and its record checksum.

  Importing the package imports torch when it is installed (1.5 s and 250 MB per process, and a
  second framework's thread pools beside JAX's); tensorboardX only needs it for torch tensors,
  which are never passed here, so torch is hidden while tensorboardX loads."""
  hide_torch = "torch" not in sys.modules and "tensorboardX" not in sys.modules
  if hide_torch:
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
  try:
    from tensorboardX import summary
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c
  finally:
    if hide_torch:
      del sys.modules["torch"]
  return summary, event_pb2, masked_crc32c


def _tag(*parts) -> str:
  return "/".join(_ILLEGAL_TAG_CHARACTERS.sub("_", str(part)) for part in parts)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def flatten_hparams(config, prefix: str = "") -> dict[str, bool | int | float | str]:
  """A (nested) config as TensorBoard hyperparameters: dotted keys ("noise.kind"), bool/int/float/str
  values kept, anything else (None, tuples, lists) as its string."""
  if hasattr(config, "to_dict"):  # ml_collections.ConfigDict
    config = config.to_dict()
  if not isinstance(config, Mapping):
    raise TypeError(f"hyperparameters must be a mapping such as config.to_dict(), got {type(config).__name__}")
  flat = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if hasattr(value, "to_dict") or isinstance(value, Mapping):
      flat.update(flatten_hparams(value, prefix=f"{name}."))
      continue
    if isinstance(value, np.generic):
      value = value.item()
    flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
  return flat


def read_event_file(path: str | os.PathLike):
  """The `Event` protos of one event file, in order; stops quietly at a record cut short (a
  kill mid-write), at a damaged length header and at a record that does not parse."""
  from google.protobuf.message import DecodeError  # protobuf: installed with tensorboardX

  _, event_pb2, masked_crc32c = _tensorboardx()
  data = Path(path).read_bytes()
  position = 0
  while position + 12 <= len(data):
    header = data[position : position + 8]
    if struct.unpack("<I", data[position + 8 : position + 12])[0] != masked_crc32c(header):
      return
    (length,) = struct.unpack("<Q", header)
    end = position + 12 + length + 4  # header, its CRC, the record, its CRC
    if end > len(data):
      return
    try:
      event = event_pb2.Event.FromString(data[position + 12 : end - 4])
    except DecodeError:  # nothing after it can be trusted
      return
    yield event
    position = end


class _EventFile:
  """A new event file: TFRecord-framed `Event`s (what tensorboardX's writer writes, without its
  writer thread and without its fsync at every flush, a few ms each: the file is rebuilt from
  metrics.jsonl on resume anyway)."""

  def __init__(self, logdir: Path):
    _, self._event_pb2, self._crc = _tensorboardx()
    # TensorBoard's naming: creation time, then host (process 0 of a job is the only writer).
    self.path = logdir / f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
    self._file = self.path.open("wb")
    self.write(self._event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def write(self, event) -> None:
    data = event.SerializeToString()
    header = struct.pack("<Q", len(data))
    self._file.write(header + struct.pack("<I", self._crc(header)) + data + struct.pack("<I", self._crc(data)))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class EventWriter:
  """TensorBoard event file of a run in `logdir`, next to `metrics.jsonl` (which stays the source
  of truth): train scalars per log step, validation scalars per epoch, hyperparameters for the
  HParams dashboard, and images.

  A run starts (fresh or resumed) by deleting the event files already in `logdir` and starting a
  new one, so a killed and rerun run never shows duplicated or stale steps: the caller then
  `replay`s the already trimmed metrics.jsonl. Images are not in metrics.jsonl; those of steps up to
  `resume_step` are carried over from the old files (later ones are stale). Events are written
  synchronously and reach readers at each `flush`. Disabled (processes other than 0), it writes
  and deletes nothing."""

  def __init__(self, logdir: str | os.PathLike, *, resume_step: int | None = None, enabled: bool = True):
    self.logdir = Path(logdir)
    self.enabled = enabled
    self._file = None
    self._hparams_written = False
    if not enabled:
      return
    self._summary, self._event_pb2, _ = _tensorboardx()
    self.logdir.mkdir(parents=True, exist_ok=True)
    old = sorted(self.logdir.glob(EVENT_FILE_GLOB))
    kept = []
    if resume_step is not None:
      kept = [
        event
        for path in old
        for event in read_event_file(path)
        if event.step <= resume_step and any(value.HasField("image") for value in event.summary.value)
      ]
    # Read before deleting: the new file may get an old file's name (the name holds the time in seconds).
    for path in old:
      path.unlink()
    self._file = _EventFile(self.logdir)
    for event in kept:
      self._file.write(event)

  def _write(self, step: int, summary) -> None:
    self._file.write(self._event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def scalars(self, step: int, split: str, values: Mapping[str, float]) -> None:
    """`values` as scalars tagged "<split>/<name>"; None and non-numbers are skipped."""
    if not self.enabled:
      return
    for name, value in values.items():
      value = _plain(value)
      if _is_number(value):
        self._write(step, self._summary.scalar(_tag(split, name), value))

  def write(self, record: Mapping) -> None:
    """One metrics.jsonl record (`MetricsWriter.write`'s argument): its numbers as scalars of its
    split at its step."""
    if not self.enabled:
      return
    if "step" not in record or "split" not in record:
      raise ValueError(f"a metrics record needs 'step' and 'split', got keys {sorted(record)}")
    values = {name: value for name, value in record.items() if name not in ("step", "split", "epoch")}
    self.scalars(record["step"], record["split"], values)

  def replay(self, metrics_path: str | os.PathLike) -> None:
    """Writes the records of a (trimmed) metrics.jsonl, as a resumed run starts."""
    if not self.enabled or not Path(metrics_path).exists():
      return
    for record in read_metrics(metrics_path):
      self.write(record)
    self.flush()

  def images(self, step: int, tag: str, grid) -> None:
    """One image: `grid` a uint8 (H, W, C) array with C 1, 3 or 4 (e.g. `generator_figures` grids)."""
    if not self.enabled:
      return
    grid = np.asarray(grid)
    if grid.dtype != np.uint8 or grid.ndim != 3 or grid.shape[-1] not in (1, 3, 4):
      raise ValueError(f"image {tag!r} must be uint8 (H, W, 1|3|4), got {grid.dtype} {grid.shape}")
    self._write(step, self._summary.image(_tag(tag), grid, dataformats="HWC"))

  def hparams(self, config) -> None:
    """The run's hyperparameters (a config or its dict; see `flatten_hparams`) for the HParams
    dashboard. Only the session start is written, not an experiment summary: TensorBoard then
    builds the experiment from all runs under its logdir (every hyperparameter of every run, every
    scalar tag as a metric), where one run's summary would stand for the whole sweep."""
    if not self.enabled:
      return
    _, session_start, _ = self._summary.hparams(flatten_hparams(config), {})
    self._write(0, session_start)
    self._hparams_written = True
    self.flush()

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()

  def close(self) -> None:
    """Marks a run with hyperparameters as finished (HParams "status") and closes the file."""
    if self._file is None:
      return
    if self._hparams_written:
      _, _, session_end = self._summary.hparams({}, {})
      self._write(0, session_end)
    self._file.close()
    self._file = None


class SweepProgressWriter:
  """Progress events of a comparison sweep, step = cells finished: `sweep/cells_finished`,
  `sweep/cells_total`, `sweep/fraction_finished`, and the table as it fills, the mean over seeds of
  the test balanced accuracy and ROC-AUC per (dataset, n_per_class, arm):
  `test_balanced_accuracy/<dataset>/n<n_per_class>/<arm>`, `test_roc_auc/...`.

  `finished` (cells.jsonl records, in order) are replayed first, so a restarted sweep rewrites the
  whole curve; `add(record)` appends one finished cell. One writer per `logdir` (sharded sweeps:
  one folder per shard)."""

  METRICS = ("balanced_accuracy", "roc_auc")

  def __init__(self, logdir: str | os.PathLike, total_cells: int, finished=(), *, enabled: bool = True):
    if isinstance(total_cells, bool) or not isinstance(total_cells, (int, np.integer)) or total_cells < 0:
      raise ValueError(f"total_cells must be a non-negative int, got {total_cells!r}")
    self.total_cells = int(total_cells)
    self.events = EventWriter(logdir, enabled=enabled)
    self._values: dict[tuple, dict[str, list[float]]] = {}
    self.cells_finished = 0
    for record in finished:
      self._add(record)
    self.events.flush()

  def add(self, record: Mapping) -> None:
    self._add(record)
    self.events.flush()

  def _add(self, record: Mapping) -> None:
    missing = [key for key in ("dataset", "n_per_class", "arm", "test") if key not in record]
    if missing:
      raise ValueError(f"a cells.jsonl record needs {missing} (got keys {sorted(record)})")
    self.cells_finished += 1
    group = (record["dataset"], "all" if record["n_per_class"] is None else record["n_per_class"], record["arm"])
    values = self._values.setdefault(group, {name: [] for name in self.METRICS})
    step = self.cells_finished
    progress = {
      "cells_finished": self.cells_finished,
      "cells_total": self.total_cells,
      "fraction_finished": self.cells_finished / self.total_cells if self.total_cells else 1.0,
    }
    self.events.scalars(step, "sweep", progress)
    for name in self.METRICS:
      value = (record["test"] or {}).get(name)
      if _is_number(value) and math.isfinite(value):  # an undefined ROC-AUC (one class) is None
        values[name].append(value)
      if values[name]:
        dataset, n_per_class, arm = group
        self.events.scalars(step, f"test_{name}", {_tag(dataset, f"n{n_per_class}", arm): np.mean(values[name])})

  def close(self) -> None:
    self.events.close()
