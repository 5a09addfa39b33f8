"""Provenance of results: the commit, library versions, devices and XLA flags recorded with them."""

import importlib.metadata
import json
import os
import subprocess
from pathlib import Path

import jax
import ml_collections
import pytest

from vaeaug import provenance
from vaeaug.training import checkpoints

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_cache():
  provenance.git_state.cache_clear()
  yield
  provenance.git_state.cache_clear()


def _git(*args, cwd=REPO):
  return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_records_the_checkouts_commit_versions_and_devices(fresh_cache, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
  found = provenance.collect()
  assert found["git_commit"] == _git("rev-parse", "HEAD")
  assert found["git_dirty"] == bool(_git("status", "--porcelain", "--untracked-files=no"))
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "tensorflow-datasets"):
    assert found["versions"][name] == importlib.metadata.version(name)
  assert found["device_count"] == len(jax.devices()) and found["device_kind"] == jax.devices()[0].device_kind
  assert found["process_count"] == jax.process_count() and found["backend"] == jax.default_backend()
  assert found["xla_flags"] == "--xla_cpu_enable_fast_math=false"
  cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
  if " avx2" in cpuinfo:  # x86 Linux: the widest vector extension the CPU reports
    assert found["cpu_simd"] == ("avx512f" if " avx512f" in cpuinfo else "avx2")
  json.dumps(found)  # recorded as JSON


def test_outside_a_checkout_or_in_another_projects_checkout_the_commit_is_unknown(fresh_cache, monkeypatch, tmp_path):
  package = tmp_path / "site-packages" / "vaeaug"
  package.mkdir(parents=True)
  monkeypatch.setattr(provenance, "_PACKAGE_DIR", package)
  assert provenance.git_state() == {"git_commit": "unknown", "git_dirty": None}
  # A virtual environment inside some other project's checkout: that project's commit is not ours.
  _git("init", "-q", cwd=tmp_path)
  _git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "x", cwd=tmp_path)
  provenance.git_state.cache_clear()
  assert provenance.git_state()["git_commit"] == "unknown"


def test_a_dirty_tree_is_reported(fresh_cache, monkeypatch, tmp_path):
  package = tmp_path / "vaeaug"
  package.mkdir()
  (package / "module.py").write_text("x = 1\n")
  _git("init", "-q", cwd=tmp_path)
  _git("add", ".", cwd=tmp_path)
  _git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "-m", "x", cwd=tmp_path)
  monkeypatch.setattr(provenance, "_PACKAGE_DIR", package)
  clean = provenance.git_state()
  assert clean == {"git_commit": _git("rev-parse", "HEAD", cwd=tmp_path), "git_dirty": False}
  (package / "module.py").write_text("x = 2\n")
  provenance.git_state.cache_clear()
  assert provenance.git_state() == {**clean, "git_dirty": True}


def test_run_config_records_provenance_and_reads_back_without_it(tmp_path):
  config = ml_collections.ConfigDict({"model": "cnn_bn3", "seed": 3, "n_per_class": None, "sizes": (1, 2)})
  checkpoints.write_run_files(tmp_path, config, ("with_mask", "without_mask"))
  recorded = json.loads((tmp_path / "config.json").read_text())
  assert recorded["provenance"]["git_commit"] and recorded["provenance"]["versions"]["jax"] == jax.__version__
  assert checkpoints.read_run_config(tmp_path).to_dict() == {**config.to_dict(), "sizes": [1, 2]}


def test_commits_of_counts_cells_per_commit():
  records = [
    {"provenance": {"git_commit": "abc", "git_dirty": False}},
    {"provenance": {"git_commit": "abc", "git_dirty": True}},
    {"provenance": {"git_commit": "abc", "git_dirty": False}},
    {},  # a line from before provenance was recorded
  ]
  assert provenance.commits_of(records) == {"abc": 2, "abc+dirty": 1, "unknown": 1}


def test_git_missing_means_unknown(fresh_cache, monkeypatch):
  monkeypatch.setenv("PATH", os.devnull)
  assert provenance.git_state() == {"git_commit": "unknown", "git_dirty": None}
