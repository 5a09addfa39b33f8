"""The benchmark command (scripts/benchmark.py, a smoke run on one tiny model, from a folder outside the
checkout) and the PyTorch twins of experiments/torch_reference.py (same parameter tensors as the JAX
models; skipped without torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from flax import nnx

from classifiers import models
from vaeaug.models import autoencoders

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_smoke(tmp_path):
  """One tiny model, one repetition, a 4-step loop.fit: the script runs end to end and writes a
  JSON and a Markdown table with the fields the README promises (no timing is asserted)."""
  cmd = [
    sys.executable,
    str(REPO / "scripts" / "benchmark.py"),
    "--models=cnn_bn3",
    "--batch=4",
    "--image_size=16",
    "--repeats=1",
    "--steps=1",
    "--warmup=1",
    "--pipeline_models=cnn_bn3",
    "--pipeline_steps=4",
    "--profile=all",
    f"--out_dir={tmp_path}",
    "--name=smoke",
    "--notes=",
    "--cells=none",
    "--cells_preset=tiny",
    "--json",
  ]
  done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.splitlines()[-1])  # the whole document on stdout's last line
  assert json.loads((tmp_path / "smoke.json").read_text()) == result
  (row,) = result["models"]
  assert row["model"] == "cnn_bn3" and row["params"] == models.count_params(
    nnx.eval_shape(lambda: models.create_model("cnn_bn3", 2, rngs=nnx.Rngs(0), image_size=16))
  )
  assert row["jax_img_per_s"] > 0 and row["gflop_per_step"] > 0 and row["compile_s"] > 0
  assert 0 <= row["peak_percent"] < 100 and result["machine"]["peak_gflops"] > 0
  assert "GFLOP/s" in result["machine"]["peak_derivation"]
  assert row["profile"]["categories"] and row["profile"]["top_ops"]
  (pipe,) = result["pipeline"]
  # A share, not a speed: its size depends on the load on the machine (no timing assert).
  assert pipe["model"] == "cnn_bn3" and 0 < pipe["data_share"] < float("inf")
  (cell,) = result["cells"]
  assert cell["arm"] == "none" and cell["preset"] == "tiny" and cell["cells"] == 2
  assert cell["cells_per_hour"] == pytest.approx(3600 / cell["cell_s"], rel=0.01)
  assert 0 < cell["steps_s"] < cell["cell_s"] and 0 < cell["overhead_share"] < 1
  table = (tmp_path / "smoke.md").read_text()
  assert f"| none | {cell['cells_per_hour']:.1f} |" in table
  assert (
    f"| cnn_bn3 | {row['params']:,} |" in table
    and "fp32 peak" in table
    and "Command: `vaeaug-benchmark --models=cnn_bn3 --batch=4" in table
  )
  try:
    import torch  # noqa: F401
  except ImportError:
    assert row.get("ratio") is None and "torch not installed" in table
  else:
    assert row["ratio"] > 0 and row["torch_format"] in ("contiguous", "channels_last")


TWIN_CASES = [
  ("cnn96", {}),
  ("cnn_bn3", {}),
  ("cnn_lenet4", {}),
  ("cnn_lenet4", {"image_size": 32}),
  ("cnn", {"conv_features": (8, 16), "global_pool": "avg", "dense_features": (32,), "dropout": 0.2}),
  ("resnet18", {}),
  ("resnet50", {}),
  ("resnet18_small", {"num_filters": 16}),
  ("resnet34", {"num_filters": 8}),
  ("resnet18", {"num_filters": 8, "num_classes": 3}),
]
AE_CASES = [
  ("dae", {}),
  ("vae", {}),
  ("cvae", {}),
  ("vae", {"likelihood": "gaussian"}),
  ("cvae", {"upsample": "resize", "channels": (8, 16, 32)}),
  ("dae", {"upsample": "transpose"}),
]


def _sizes_equal(jax_model, twin):
  jax_sizes = sorted(p.size for p in jax.tree.leaves(nnx.state(jax_model, nnx.Param)))
  torch_sizes = sorted(p.numel() for p in twin.parameters())
  return jax_sizes == torch_sizes


@pytest.mark.parametrize("name, overrides", TWIN_CASES)
def test_torch_classifier_twin_has_the_same_parameters(name, overrides):
  pytest.importorskip("torch")
  from experiments import torch_reference

  overrides = dict(overrides)
  num_classes = overrides.pop("num_classes", 2)
  model = nnx.eval_shape(lambda: models.create_model(name, num_classes, rngs=nnx.Rngs(0), **overrides))
  twin = torch_reference.classifier(model)
  assert torch_reference.count_params(twin) == models.count_params(model)
  assert _sizes_equal(model, twin)


@pytest.mark.parametrize("kind, overrides", AE_CASES)
def test_torch_autoencoder_twin_has_the_same_parameters(kind, overrides):
  pytest.importorskip("torch")
  from experiments import torch_reference

  model = nnx.eval_shape(
    lambda: autoencoders.create_autoencoder(kind, image_size=64, num_classes=2, rngs=nnx.Rngs(0), **overrides)
  )
  twin = torch_reference.autoencoder(model)
  assert torch_reference.count_params(twin) == models.count_params(model)
  assert _sizes_equal(model, twin)
