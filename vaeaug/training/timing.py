"""Where a run's wall time goes: JAX compile time and named phases.

`COMPILE_CLOCK` adds up the seconds JAX reports (jax.monitoring) for tracing, lowering and
compiling, or fetching an executable from the persistent compilation cache. `Phases` books wall time
to named phases ("steps", "validation", "checkpoints", ...) with the compile time that happened
inside a phase moved to "compile", so a phase's seconds are its own work.
"""

from __future__ import annotations

import contextlib
import time

import jax


class CompileClock:
  """Seconds JAX spends tracing, lowering and compiling (or fetching from the persistent
  compilation cache), from jax.monitoring events; the listener is registered on first use."""

  def __init__(self):
    self.seconds = 0.0
    self._registered = False

  def __call__(self, event: str, duration: float, **kwargs) -> None:
    if event.startswith("/jax/core/compile/"):
      self.seconds += duration

  def start(self) -> float:
    if not self._registered:
      jax.monitoring.register_event_duration_secs_listener(self)
      self._registered = True
    return self.seconds


COMPILE_CLOCK = CompileClock()


class Phases:
  """Wall seconds per named phase; compile time inside a phase is booked to "compile". A phase
  entered inside another pauses the outer one, so every second is booked once."""

  def __init__(self):
    self.seconds: dict[str, float] = {}
    self._start = time.perf_counter()
    self._open: list[str] = []  # the innermost phase last
    self._mark = (0.0, 0.0)  # (wall clock, compile clock) when the innermost phase last resumed

  def _book_open(self) -> None:
    now, compiled = time.perf_counter(), COMPILE_CLOCK.start()
    if self._open:
      wall, compile_start = self._mark
      self.add(self._open[-1], now - wall - (compiled - compile_start))
      self.add("compile", compiled - compile_start)
    self._mark = (now, compiled)

  @contextlib.contextmanager
  def phase(self, name: str):
    self._book_open()
    self._open.append(name)
    try:
      yield
    finally:
      self._book_open()
      self._open.pop()

  def add(self, name: str, seconds: float) -> None:
    self.seconds[name] = self.seconds.get(name, 0.0) + seconds

  def summary(self) -> dict[str, float]:
    """Seconds per phase, "other" for the wall time since construction outside every phase, and
    "total"."""
    total = time.perf_counter() - self._start
    out = {name: round(value, 3) for name, value in self.seconds.items()}
    out["other"] = round(max(0.0, total - sum(self.seconds.values())), 3)
    out["total"] = round(total, 3)
    return out
