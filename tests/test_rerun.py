"""A workdir belongs to one config: a rerun that changes the result is refused before anything is
written, an execution-only change resumes, `--overwrite` starts over; `--tables_only` never replaces
recorded tables with ones of another config, and tables of an unfinished grid say they are partial."""

import json
import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from experiments import sweep, tables
from experiments.configs import compare as compare_config
from vaeaug.training import checkpoints, recipe, run

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = [
  "--config=classifier",
  "--config.dataset=face_mask_detection/2classes",
  "--config.image_size=16",
  "--config.n_per_class=32",
  "--config.batch_size=16",
  "--config.log_every_steps=2",
  "--config.epochs=1",
  "--config.figures=False",
  "--config.progress=False",
]


def command(name: str, *args, data_dir=None, cache=None) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  if cache is not None:  # compilation is most of a tiny run
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  extra = [f"--config.data_dir={data_dir}"] if data_dir and name.startswith("vaeaug-train") else []
  return subprocess.run(
    [str(BIN / name), *args, *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )


def files(workdir: Path) -> dict[str, bytes]:
  return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file()}


def scored(workdir: Path) -> dict:
  summary = json.loads((workdir / "test_metrics.json").read_text())
  summary.pop("seconds")
  summary.pop("timing")  # wall seconds by phase
  return summary


# ----------------------------------------------------------------------------- the shared rule


def test_differences_ignore_execution_fields_and_provenance():
  recorded = {"seed": 0, "progress": True, "log_every_steps": 10, "sub": {"lr": 0.1, "num_devices": 1}, "provenance": 1}
  assert recipe.differences(recorded, {**recorded, "progress": False, "log_every_steps": 3, "provenance": 2}) == []
  new = {"seed": 7, "sub": {"lr": 0.5, "num_devices": 4}, "extra": (1, 2)}
  assert recipe.differences(recorded, new) == ["extra: (absent) -> [1, 2]", "seed: 0 -> 7", "sub.lr: 0.1 -> 0.5"]
  # a field added later, at the value that reproduces the earlier behaviour, is no difference
  assert recipe.differences(recorded, {**recorded, "compute_dtype": "float32"}) == []
  assert recipe.describe([f"f{i}" for i in range(8)]) == "f0; f1; f2; f3; f4; and 3 more"


def test_sweep_hashes_are_unchanged():
  # On the splits they were recorded with (dataset version 1.0.0), the committed cells keep their hash;
  # the rebuilt splits give every preset a new one, so cells of the two are never mixed.
  for preset, recorded in (("full", "7619e9a3df"), ("default", "b378ce168f")):
    config = compare_config.get_config(preset)
    current = sweep.config_hash(config)
    config.dataset_version = "1.0.0"
    config.synthesis.update(placement="mixed", class_proportions="equal")  # the v1 protocol (full sets it)
    assert sweep.config_hash(config) == recorded and current != recorded


def test_check_workdir_for_a_generator_config(tmp_path):
  from experiments.configs import generator

  config = generator.get_config()
  checkpoints.write_run_files(tmp_path, config, ["a", "b"])
  run.check_workdir(config, tmp_path)
  config.progress, config.num_devices, config.checkpoint_every_epochs = False, 1, 3
  run.check_workdir(config, tmp_path)
  config.beta = 2.5
  with pytest.raises(run.WorkdirConfigMismatch, match=r"beta: 1\.0 -> 2\.5.*new --workdir.*--overwrite"):
    run.check_workdir(config, tmp_path)
  (tmp_path / "notes.txt").write_text("mine")
  run.check_workdir(config, tmp_path, overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# ----------------------------------------------------------------------------- training commands


@pytest.fixture(scope="module")
def trained(detection_built, tmp_path_factory):
  """A finished tiny classifier run, and a compilation cache the later runs share."""
  root = tmp_path_factory.mktemp("rerun")
  workdir, cache = root / "run", root / "cache"
  result = command("vaeaug-train-classifier", f"--workdir={workdir}", *TINY, data_dir=detection_built, cache=cache)
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir, cache, detection_built


def test_config_change_is_refused_before_anything_is_written(trained):
  workdir, cache, data_dir = trained
  before = files(workdir)
  changed = ["--config.normalization=imagenet", "--config.learning_rate=0.5", "--config.seed=7"]
  result = command("vaeaug-train-classifier", f"--workdir={workdir}", *TINY, *changed, data_dir=data_dir, cache=cache)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
  for text in ('normalization: "unit" -> "imagenet"', "learning_rate: 0.001 -> 0.5", "seed: 0 -> 7", "--overwrite"):
    assert text in lines[0]
  assert files(workdir) == before  # config.json, metrics and checkpoints untouched
  # another model is refused the same way, not by a CheckpointMismatchError after config.json was rewritten
  result = command(
    "vaeaug-train-classifier", f"--workdir={workdir}", *TINY, "--config.model=cnn_bn3", data_dir=data_dir, cache=cache
  )
  assert result.returncode == 2 and 'model: "cnn96" -> "cnn_bn3"' in result.stderr
  assert files(workdir) == before


def test_execution_only_change_resumes(trained):
  workdir, cache, data_dir = trained
  expected = scored(workdir)
  result = command(
    "vaeaug-train-classifier",
    f"--workdir={workdir}",
    *TINY,
    "--config.log_every_steps=4",
    "--config.keep_checkpoints=3",
    data_dir=data_dir,
    cache=cache,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert scored(workdir) == expected
  assert checkpoints.read_run_config(workdir).log_every_steps == 4


def test_overwrite_starts_over_like_a_fresh_run(trained, tmp_path):
  workdir, cache, data_dir = trained
  (workdir / "notes.txt").write_text("not a run file")
  seed = "--config.seed=7"
  args = ("vaeaug-train-classifier", *TINY, seed)
  result = command(*args[:1], f"--workdir={workdir}", *args[1:], "--overwrite", data_dir=data_dir, cache=cache)
  assert result.returncode == 0, result.stderr[-2000:]
  fresh = tmp_path / "fresh"
  assert command(*args[:1], f"--workdir={fresh}", *args[1:], data_dir=data_dir, cache=cache).returncode == 0
  assert scored(workdir) == scored(fresh)
  assert checkpoints.read_run_config(workdir).seed == 7
  assert (workdir / "metrics.jsonl").read_text().count("\n") == (fresh / "metrics.jsonl").read_text().count("\n")
  assert (workdir / "notes.txt").read_text() == "not a run file"
  assert sorted(os.listdir(workdir / "checkpoints")) == sorted(os.listdir(fresh / "checkpoints"))


# ----------------------------------------------------------------------------- --tables_only


def fake_records(config, cells) -> list[dict]:
  """cells.jsonl lines as a sweep of `config` writes them (only what the tables read)."""
  metrics = {m: 0.5 + 0.01 * i for i, m in enumerate(tables.stats_metrics())}
  return [
    {
      "key": c.key,
      "config_hash": sweep.config_hash(config),
      "dataset": c.dataset,
      "n_per_class": c.n_per_class,
      "seed": c.seed,
      "arm": c.arm.name,
      "test": {**metrics, "balanced_accuracy": 0.6 + 0.01 * c.seed},
      "cross": {},
      "timing": {"cell_seconds": 1.0, "classifier_seconds": 1.0},
    }
    for c in cells
  ]


def tiny_sweep_workdir(tmp_path: Path, finished: int | None = None) -> tuple[Path, ml_collections.ConfigDict]:
  config = compare_config.get_config("tiny")
  config.arms, config.num_seeds, config.cross_test_datasets = ("none", "classic"), 2, ()
  cells = sweep.cells_of(config)[:finished]
  workdir = tmp_path / "sweep"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({**config.to_dict(), "provenance": {}}, default=str))
  (workdir / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fake_records(config, cells)))
  return workdir, config


GRID = ["--config.arms=('none','classic')", "--config.num_seeds=2", "--config.cross_test_datasets=()"]


def test_tables_only_with_another_config_writes_nothing(tmp_path):
  workdir, config = tiny_sweep_workdir(tmp_path)
  before = files(workdir)
  result = command(
    "vaeaug-compare", "--config=compare:tiny", *GRID, "--config.image_size=24", "--tables_only", f"--workdir={workdir}"
  )
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: --tables_only: no line of ")
  n = len(sweep.cells_of(config))
  assert f"({n} lines, by hash: {sweep.config_hash(config)}: {n})" in lines[0]
  assert f"image_size: {config.image_size} -> 24" in lines[0]
  assert files(workdir) == before


def test_partial_tables_say_so(tmp_path):
  workdir, config = tiny_sweep_workdir(tmp_path, finished=2)
  result = command("vaeaug-compare", "--config=compare:tiny", *GRID, "--tables_only", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-2000:]
  n = len(sweep.cells_of(config))
  assert (workdir / "table.md").read_text().splitlines()[0] == f"# PARTIAL: 2 of {n} cells"
  assert f"PARTIAL: 2 of {n} cells" in result.stdout
  assert json.loads((workdir / "summary.json").read_text())["partial"] is True
  # the whole grid: no mark
  (workdir / "cells.jsonl").write_text(
    "".join(json.dumps(r) + "\n" for r in fake_records(config, sweep.cells_of(config)))
  )
  result = command("vaeaug-compare", "--config=compare:tiny", *GRID, "--tables_only", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "PARTIAL" not in (workdir / "table.md").read_text()
  assert json.loads((workdir / "summary.json").read_text())["partial"] is False
