"""The comparison sweep: the grid, a tiny sweep end to end, and resume after a kill mid-cell giving the same
table as an uninterrupted sweep. Its statistics are tested in tests/test_stats.py, its tables and figures in
tests/test_tables.py."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

from experiments import sweep
from experiments.configs import compare as compare_config
from vaeaug import provenance

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the grid


def test_arms_parse_and_reject_unknown_names():
  assert sweep.Arm.parse("classic+cvae") == sweep.Arm("classic+cvae", True, "cvae")
  assert sweep.Arm.parse("none") == sweep.Arm("none", False, None)
  assert sweep.Arm.parse("dae").generator == "dae"
  pool = sweep.Arm.parse("classic+pool_rvae:counterfactual")
  assert (pool.classic, pool.kind, pool.pool, pool.sampler, pool.source) == (
    True,
    "rvae",
    True,
    "counterfactual",
    "pool_rvae-counterfactual",
  )
  control = sweep.Arm.parse("noise_blur")
  assert control.kind is None and control.sampler_name({}) == "noise_blur" and not control.pool
  # the configured sampler of a kind, else the kind's default
  assert sweep.Arm.parse("vae").sampler_name({"vae_sampler": "gmm"}) == "gmm"
  assert sweep.Arm.parse("rvae").sampler_name({}) == "posterior_jitter"
  for bad in ("gan", "classic+classic", "dae+vae", "none+dae", "vae:denoise", "pool_cvae", "noise_blur:prior"):
    with pytest.raises(ValueError, match="unknown arm"):
      sweep.Arm.parse(bad)


def test_grid_order_and_all_images():
  config = compare_config.get_config("tiny")
  config.arms = ("cvae", "classic", "none")
  config.n_per_class = (12, None)
  cells = sweep.cells_of(config)
  assert len(cells) == 2 * 2 * 3
  assert [c.arm.name for c in cells[:3]] == ["none", "cvae", "classic"]  # "none" first: filtering uses it
  assert {c.n_per_class for c in cells} == {12, None}
  assert len({c.key for c in cells}) == len(cells)


def test_config_hash_ignores_the_grid_but_not_the_recipe():
  config = compare_config.get_config("tiny")
  base = sweep.config_hash(config)
  config.num_seeds, config.arms, config.progress = 7, ("none",), True
  assert sweep.config_hash(config) == base  # extending the grid reuses finished cells
  config.classifier.learning_rate = 3e-4
  assert sweep.config_hash(config) != base


def test_presets_build():
  for preset in ("default", "full", "gpu", "tiny"):
    config = compare_config.get_config(preset)
    assert sweep.cells_of(config)
  full = compare_config.get_config("full")
  assert set(full.arms) == set(compare_config.ALL_ARMS) and full.num_seeds >= 5
  with pytest.raises(ValueError, match="unknown compare preset"):
    compare_config.get_config("huge")


# ----------------------------------------------------------------------------- end to end


def _compare_command(workdir: Path, data_dir: str | None) -> list[str]:
  return [
    sys.executable,
    "-m",
    "experiments.compare",
    "--config=experiments/configs/compare.py:tiny",
    f"--workdir={workdir}",
    "--config.arms=('none','cvae','classic+cvae')",
    "--config.compilation_cache_dir=",
  ] + ([f"--config.data_dir={data_dir}"] if data_dir else [])


def _run(workdir: Path, data_dir: str | None, timeout=300) -> subprocess.CompletedProcess:
  return subprocess.run(_compare_command(workdir, data_dir), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, detection_built):
  workdir = tmp_path_factory.mktemp("compare") / "uninterrupted"
  result = _run(workdir, detection_built)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result, detection_built


def test_tiny_sweep_end_to_end(uninterrupted):
  workdir, result, data_dir = uninterrupted
  lines = [json.loads(line) for line in (workdir / "cells.jsonl").read_text().splitlines()]
  assert len(lines) == 6 and len({line["key"] for line in lines}) == 6
  for line in lines:
    assert 0.0 <= line["test"]["balanced_accuracy"] <= 1.0 and line["classifier_config"]["seed"] == line["seed"]
  augmented = [line for line in lines if line["generator"]]
  # Ratio 1: as many synthetic images as real ones, split over the classes.
  assert all(sum(line["synthetic_counts"].values()) == line["real_train_size"] for line in augmented)
  # One CVAE per seed, shared by the two arms that use it.
  assert sorted(line["timing"]["generator_reused"] for line in augmented) == [False, False, True, True]
  assert "[cell 6/6" in result.stderr and "n_per_class = 12" in result.stdout
  for name in (
    "table.md",
    "table.csv",
    "summary.json",
    "figures/balanced_accuracy_vs_n.png",
    "figures/samples_face_mask_detection-2classes_cvae.png",
  ):
    assert (workdir / name).stat().st_size > 0, name
  # Provenance: every cell and the summary name the code and machine that computed them.
  for line in lines:
    assert line["provenance"]["git_commit"] == provenance.git_state()["git_commit"]
    assert line["provenance"]["versions"]["jax"] == jax.__version__ and line["provenance"]["device_count"] >= 1
  # Per-cell timing: work (train steps, synthesis, quality) and the overhead that is the rest.
  for line in lines:
    t = line["timing"]
    assert t["classifier_steps_seconds"] > 0 and 0 < t["overhead_share"] < 1
    work = t["classifier_steps_seconds"]
    if not t.get("generator_reused", False):
      work += t.get("generator_step_seconds", 0) + t.get("synthesis_seconds", 0) + t.get("quality_seconds", 0)
    assert t["overhead_seconds"] == pytest.approx(t["cell_seconds"] - work, abs=0.05)
  summary = json.loads((workdir / "summary.json").read_text())
  compute = summary["compute_seconds"]
  assert compute["cells"] == 6 and compute["cells_per_hour"] == pytest.approx(
    3600 * 6 / compute["cell_seconds"], rel=0.01
  )
  assert compute["overhead_share"] == pytest.approx(compute["overhead_seconds"] / compute["cell_seconds"], abs=0.01)
  assert set(compute["overhead_share_by_arm"]) == {line["arm"] for line in lines}
  assert summary["provenance"]["versions"] == lines[0]["provenance"]["versions"]
  commit = provenance.git_state()["git_commit"] + ("+dirty" if provenance.git_state()["git_dirty"] else "")
  assert summary["cell_commits"] == {commit: 6}
  assert "provenance" not in lines[-1]["generator_config"]  # the generator's config, not its run record
  # TensorBoard: every cell's training is a run of the sweep's logdir, beside the sweep's progress.
  from tensorboard.backend.event_processing import event_multiplexer

  events = event_multiplexer.EventMultiplexer()
  events.AddRunsFromDirectory(str(workdir))
  events.Reload()
  runs = events.Runs()
  progress = next(run for run in runs if run.endswith("/progress"))
  assert [e.value for e in events.Scalars(progress, "sweep/cells_finished")] == [1, 2, 3, 4, 5, 6]
  cells = [run for run in runs if run.rsplit("/", 1)[-1] in ("none", "cvae", "classic+cvae")]
  assert len(cells) == 6 and all("validation/roc_auc" in runs[run]["scalars"] for run in cells)
  generators_runs = [run for run in runs if run.endswith("/generator_cvae")]
  assert len(generators_runs) == 2 and all("generator/samples" in runs[run]["images"] for run in generators_runs)
  rerun = _run(workdir, data_dir)
  assert "6 already finished" in rerun.stderr and "[cell" not in rerun.stderr


def test_shards_run_one_single_core_process_each_and_one_table(uninterrupted, tmp_path):
  """--shards=2: two pinned shard processes (their lines prefixed), every cell once, one table; the
  cells equal the one-process run's (its `none` cells: one arm keeps this test short)."""
  reference, _, data_dir = uninterrupted
  workdir = tmp_path / "sharded"
  command = [a for a in _compare_command(workdir, data_dir) if not a.startswith("--config.arms=")]
  command += ["--config.arms=('none',)", "--shards=2"]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "[shard 1/2] compare: " in result.stderr and "[shard 2/2] compare: " in result.stderr
  assert result.stdout.count("n_per_class = 12") == 1  # the parent's table only
  cells = {json.loads(line)["key"]: json.loads(line) for line in (workdir / "cells.jsonl").read_text().splitlines()}
  expected = {
    record["key"]: record
    for record in map(json.loads, (reference / "cells.jsonl").read_text().splitlines())
    if record["arm"] == "none"
  }
  assert len(cells) == 2 and sorted(cells) == sorted(expected)
  for key, cell in cells.items():
    for metric in ("balanced_accuracy", "roc_auc"):
      assert cell["test"][metric] == expected[key]["test"][metric], (key, metric)
  for bad, message in ((["--shards=0"], "--shards"), (["--shards=2", "--shard=1/2"], "cannot be combined")):
    done = subprocess.run(_compare_command(tmp_path / "bad", data_dir) + bad, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr and not (tmp_path / "bad").exists()


def _build_counting(workdir: str) -> None:
  workdir = Path(workdir)

  def build():
    with (workdir.parent / "builds.txt").open("a") as f:
      f.write("built\n")
    time.sleep(0.5)  # the other process arrives while this one builds
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "done.json").write_text("{}")

  sweep._build_once(workdir, workdir / "done.json", build)
  assert (workdir / "done.json").exists()  # never returns before the shared thing exists


def test_shared_builds_happen_once_across_shard_processes(tmp_path):
  """The feature classifier and the pool generator are shared by every shard: two processes asking
  at once build it once, and the second waits for it instead of reading a half-written run."""
  import multiprocessing

  context = multiprocessing.get_context("spawn")
  workers = [context.Process(target=_build_counting, args=(str(tmp_path / "features" / "d"),)) for _ in range(2)]
  for worker in workers:
    worker.start()
  for worker in workers:
    worker.join(timeout=120)
    assert worker.exitcode == 0
  assert (tmp_path / "features" / "builds.txt").read_text() == "built\n"


def test_kill_mid_cell_then_rerun_gives_the_same_table(uninterrupted, tmp_path):
  reference, _, data_dir = uninterrupted
  workdir = tmp_path / "killed"
  process = subprocess.Popen(
    _compare_command(workdir, data_dir),
    cwd=ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    start_new_session=True,
  )
  # Kill at a random moment once the second seed's cells have written a checkpoint: mid-generator,
  # mid-classifier or between cells, wherever that lands.
  delay = random.Random(os.getpid()).uniform(0.0, 1.5)
  deadline = time.monotonic() + 240
  killed_after = None
  while time.monotonic() < deadline and process.poll() is None:
    if list(workdir.glob("runs/*/*/*/seed1/*/checkpoints/*")):
      time.sleep(delay)
      os.killpg(process.pid, signal.SIGKILL)
      cells = workdir / "cells.jsonl"
      killed_after = len(cells.read_text().splitlines()) if cells.exists() else 0
      break
    time.sleep(0.05)
  process.wait(timeout=30)
  # Not a skip: a run that cannot be killed mid-cell would leave resumption untested.
  assert killed_after is not None, "the sweep finished before it could be killed mid-cell"
  before = (workdir / "cells.jsonl").read_text() if killed_after else ""
  result = _run(workdir, data_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"{killed_after} already finished" in result.stderr
  assert (workdir / "cells.jsonl").read_text().startswith(before)  # finished cells were not recomputed
  for name in ("table.md", "table.csv"):
    assert (workdir / name).read_text() == (reference / name).read_text(), name

  # Every metric of every cell, not only the aggregates, equals the uninterrupted sweep's.
  def metrics_by_key(path):
    lines = [json.loads(line) for line in (path / "cells.jsonl").read_text().splitlines()]
    return {r["key"]: (r["test"], r["validation"], r["best_epoch"], r["synthetic_counts"]) for r in lines}

  assert metrics_by_key(workdir) == metrics_by_key(reference)


def test_synthetic_ratio_is_chosen_on_validation_and_only_the_choice_reads_test(detection_built, tmp_path):
  config = compare_config.get_config("tiny")
  config.arms, config.num_seeds, config.compilation_cache_dir = ("cvae",), 1, ""
  config.data_dir = detection_built
  config.synthesis.synthetic_ratios = (0.5, 2.0)
  runner = sweep.Sweep(config, tmp_path, stream=open(os.devnull, "w"))
  (record,) = runner.run().values()
  arm_dir = runner.group_dir(*sweep.cells_of(config)[0].group) / "cvae"
  validation = {r: json.loads((arm_dir / f"ratio{r:g}" / "validation_metrics.json").read_text()) for r in (0.5, 2.0)}
  best = max(validation, key=lambda r: (validation[r]["best_validation_value"], -r))
  assert record["synthetic_ratio"] == best
  assert sum(record["synthetic_counts"].values()) == round(best * record["real_train_size"])
  assert [p.parent.name for p in arm_dir.glob("ratio*/test_metrics.json")] == [f"ratio{best:g}"]
