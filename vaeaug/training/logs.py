"""metrics.jsonl writing (resume-aware) and a terminal progress line with an ETA."""

from __future__ import annotations

import json
import math
import os
import sys
import time
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
