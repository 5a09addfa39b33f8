"""Multi-process data parallelism: two processes joined by `jax.distributed` on 127.0.0.1 (CPU, gloo
collectives) train the CNN for a few steps (tests/distributed_worker.py); both end with identical
parameters, equal to a single-process run with the same global batch up to float rounding."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vaeaug.training import logs

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "distributed_worker.py"
TIMEOUT_S = 300


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def load_leaves(path: Path) -> list[np.ndarray]:
  with np.load(path, allow_pickle=False) as arrays:
    return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


def test_two_processes_train_like_one(tmp_path):
  from vaeaug.data import sources

  if sources.default_raw_root() is None:
    pytest.skip("shipped data (../shared/data) not found")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)  # one CPU device per process
  port = free_port()
  jobs = {
    f"process{i}": [str(i), "2", str(port), str(tmp_path / "shared_workdir"), str(tmp_path / f"process{i}.npz")]
    for i in range(2)
  }
  jobs["single"] = ["0", "1", "0", str(tmp_path / "single_workdir"), str(tmp_path / "single.npz")]
  procs = {
    name: subprocess.Popen(
      [sys.executable, str(WORKER), *args],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for name, args in jobs.items()
  }
  outputs = {}
  try:
    for name, proc in procs.items():
      outputs[name] = proc.communicate(timeout=TIMEOUT_S)[0]
      assert proc.returncode == 0, f"{name}:\n{outputs[name][-4000:]}"
  finally:
    for proc in procs.values():
      if proc.poll() is None:
        proc.kill()
  assert "process 1/2: 6 steps" in outputs["process1"]  # 48 images, global batch 16, 2 epochs

  first, second, single = (load_leaves(tmp_path / f"{name}.npz") for name in ("process0", "process1", "single"))
  assert len(first) == len(second) == len(single) > 0
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)  # replicated state: identical bits on both processes
  for a, b in zip(first, single):
    # Same maths, a different reduction order (two devices): equal up to float rounding.
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
  # Only the chief writes the metrics; its training losses follow the single-process run's.
  records = {name: logs.read_metrics(tmp_path / f"{name}_workdir" / "metrics.jsonl") for name in ("shared", "single")}
  losses = {name: [r["loss"] for r in rs if r["split"] == "train"] for name, rs in records.items()}
  assert len(losses["shared"]) == len(losses["single"]) == 6
  np.testing.assert_allclose(losses["shared"], losses["single"], rtol=1e-4)
  checkpoints = sorted(p.name for p in (tmp_path / "shared_workdir" / "checkpoints").iterdir())
  assert checkpoints == ["4", "6"], json.dumps(checkpoints)
