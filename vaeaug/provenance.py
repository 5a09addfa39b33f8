"""Where a result came from: code version, library versions, devices and XLA flags.

`collect()` is recorded in every run's `config.json`, in each line of a sweep's `cells.jsonl` and
in its `summary.json`, so a committed table can be tied to the code and machine that made it
(float rounding differs between CPU kernels, e.g. AVX2 and AVX-512 machines, and between
library versions).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "tensorflow-datasets")
UNKNOWN = "unknown"

_PACKAGE_DIR = Path(__file__).resolve().parent


def _git(*args: str, cwd: Path) -> str | None:
  try:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
  except (OSError, subprocess.SubprocessError):  # no git, or it hangs
    return None
  return done.stdout.strip() if done.returncode == 0 else None


@functools.cache
def git_state() -> dict:
  """{"git_commit", "git_dirty"} of the checkout this package was imported from; "unknown" (and
  None) for an installed copy outside a checkout, or a checkout of some other project."""
  top = _git("rev-parse", "--show-toplevel", cwd=_PACKAGE_DIR)
  if top is None or Path(top).resolve() != _PACKAGE_DIR.parent:
    return {"git_commit": UNKNOWN, "git_dirty": None}
  commit = _git("rev-parse", "HEAD", cwd=_PACKAGE_DIR.parent)
  status = _git("status", "--porcelain", "--untracked-files=no", cwd=_PACKAGE_DIR.parent)
  return {"git_commit": commit or UNKNOWN, "git_dirty": None if status is None else bool(status)}


@functools.cache
def versions() -> dict:
  out = {}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


@functools.cache
def _cpu() -> tuple[str, str]:
  """(model name, widest x86 vector extension): XLA:CPU picks its kernels by the latter, so AVX2 and
  AVX-512 machines round differently."""
  model, simd = platform.processor() or platform.machine(), "unknown"
  try:
    text = Path("/proc/cpuinfo").read_text()
  except OSError:
    return model, simd
  for line in text.splitlines():
    if line.startswith("model name"):
      model = line.split(":", 1)[1].strip()
    elif line.startswith("flags"):
      flags = set(line.split(":", 1)[1].split())
      simd = next((name for name in ("avx512f", "avx2", "avx", "sse4_2") if name in flags), "other")
      break
  return model, simd


def collect() -> dict:
  """Provenance of a result computed in this process, as a JSON-able dict."""
  devices = jax.devices()
  return {
    **git_state(),
    "versions": versions(),
    "python": platform.python_version(),
    "backend": jax.default_backend(),
    "device_kind": devices[0].device_kind,
    "device_count": len(devices),
    "process_count": jax.process_count(),
    "cpu": _cpu()[0],
    "cpu_simd": _cpu()[1],
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def commits_of(records) -> dict[str, int]:
  """How many of `records` (cells.jsonl lines) each commit produced ("unknown" for lines written
  before provenance was recorded, or outside a checkout; "+dirty" marks uncommitted changes)."""
  counts: dict[str, int] = {}
  for record in records:
    found = record.get("provenance") or {}
    commit = found.get("git_commit", UNKNOWN)
    if found.get("git_dirty"):
      commit += "+dirty"
    counts[commit] = counts.get(commit, 0) + 1
  return dict(sorted(counts.items()))
