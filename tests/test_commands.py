"""The installed commands, run from a folder outside the checkout: console scripts and scripts/*.py
answer --help with their flags, configs resolve by name, errors are one line, the comparison runs
end to end, summarize gives Student's t interval, and `scripts` is not an installed package.

Needs the package installed (`pip install -e .`), so that .venv/bin holds the console scripts."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from absl import flags
from scipy import stats as scipy_stats

from experiments import configs
from vaeaug.data import building

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Console script -> flags its --help must list.
COMMANDS = {
  "vaeaug-prepare": ("datasets", "configs", "data_dir", "raw_dir"),
  "vaeaug-audit": ("dataset", "config", "data_dir", "json"),
  "vaeaug-train-classifier": ("workdir", "config"),
  "vaeaug-train-generator": ("workdir", "config"),
  "vaeaug-synthesize": ("generator", "out", "per_class", "sampler"),
  "vaeaug-evaluate-generator": ("generator", "classifier", "per_class"),
  "vaeaug-compare": ("config", "workdir", "shard", "shards", "tables_only"),
  "vaeaug-predict": ("checkpoint", "inputs", "json"),
  "vaeaug-summarize": ("metrics",),
  "vaeaug-benchmark": ("models", "out_dir", "notes", "cells"),
  "vaeaug-sweep-modes": ("modes", "preset", "num_seeds", "out_dir"),
  "vaeaug-random-checkpoint": ("model", "library", "out", "seed"),
}
# scripts/*.py -> the console script it wraps.
SCRIPTS = {
  "prepare_data.py": "vaeaug-prepare",
  "audit_data.py": "vaeaug-audit",
  "summarize_runs.py": "vaeaug-summarize",
  "benchmark.py": "vaeaug-benchmark",
  "sweep_modes.py": "vaeaug-sweep-modes",
  "random_checkpoint.py": "vaeaug-random-checkpoint",
}


def run(args, cwd: Path, timeout=120, **kwargs) -> subprocess.CompletedProcess:
  # No PYTHONPATH to the checkout: only the installed package may be found.
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(JAX_PLATFORMS="cpu", **kwargs.pop("env", {}))
  return subprocess.run(
    [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, **kwargs
  )


def assert_lists_flags(out: subprocess.CompletedProcess, names) -> None:
  assert out.returncode == 0, out.stderr[-2000:]
  for name in names:
    assert re.search(rf"^\s+--(\[no\])?{name}:", out.stdout, re.M), f"--{name} missing from:\n{out.stdout}"


# ----------------------------------------------------------------------------- installation


def test_pyproject_declares_every_console_script():
  scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
  assert set(scripts) == set(COMMANDS)
  assert sorted(SCRIPTS) == sorted(p.name for p in (REPO / "scripts").glob("*.py"))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_console_script_help_lists_its_flags(command, tmp_path):
  path = BIN / command
  assert path.is_file(), f"{path} missing: re-run `pip install -e .`"
  out = run([path, "--help"], tmp_path)
  assert_lists_flags(out, COMMANDS[command])
  assert not any(tmp_path.iterdir()), "--help wrote into the working directory"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_wrapper_help_lists_its_flags(script, tmp_path):
  out = run([sys.executable, REPO / "scripts" / script, "--help"], tmp_path)
  assert_lists_flags(out, COMMANDS[SCRIPTS[script]])
  assert f"python scripts/{script}" in out.stdout  # the wrapper's own usage


def test_scripts_is_not_an_installed_package(tmp_path):
  out = run([sys.executable, "-c", "import vaeaug, classifiers, experiments; import scripts"], tmp_path)
  assert out.returncode != 0 and "No module named 'scripts'" in out.stderr, out.stderr


def test_vaeaug_never_imports_classifiers_or_experiments(tmp_path):
  code = (
    "import sys, vaeaug.cli, vaeaug.data.prepare, vaeaug.generators, vaeaug.synthesis; "
    "print([m for m in sys.modules if m.split('.')[0] in ('classifiers', 'experiments')])"
  )
  out = run([sys.executable, "-c", code], tmp_path)
  assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


# ----------------------------------------------------------------------------- config names


def test_names_resolve_to_the_packaged_files_from_any_folder(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert configs.resolve("compare:tiny") == f"{configs.CONFIG_DIR / 'compare.py'}:tiny"
  assert configs.resolve("classifier") == str(configs.CONFIG_DIR / "classifier.py")
  assert {"classifier", "compare", "default", "generator"} <= set(configs.names())
  with pytest.raises(ValueError, match=r"'experiments/configs/compare.py' is neither a config file"):
    configs.resolve("experiments/configs/compare.py:full")  # a relative path stays a path


def _config_flag(argv, default="compare"):
  fv = flags.FlagValues()
  holder = configs.define_config_flag("config", default, flag_values=fv, sys_argv=argv)
  fv(argv)
  return holder


def test_config_flag_takes_names_paths_and_overrides(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert _config_flag(["prog"]).value.preset == "default"
  tiny = _config_flag(["prog", "--config=compare:tiny", "--config.num_seeds=5"]).value
  assert tiny.preset == "tiny" and tiny.num_seeds == 5 and tiny.image_size == 16
  assert _config_flag(["prog", "--config=classifier"], default="classifier").value.model == "cnn96"
  # A file that exists wins over a name.
  (tmp_path / "generator").write_text(
    "import ml_collections\ndef get_config(arg='x'):\n  return ml_collections.ConfigDict({'mine': arg})\n"
  )
  assert _config_flag(["prog", "--config=generator:y"]).value.mine == "y"
  by_path = _config_flag(["prog", f"--config={configs.CONFIG_DIR / 'compare.py'}:full"]).value
  assert by_path.preset == "full"


@pytest.mark.parametrize(
  "value, message",
  [
    ("nope", r"'nope' is neither a config file .* config name \(classifier, compare, default, generator, transfer;"),
    ("compare:bogus", r"unknown compare preset 'bogus'; choose default, full, v2, v2_large_n, .*, gpu or tiny"),
  ],
)
def test_config_flag_errors_are_one_line(value, message, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(flags.IllegalFlagValueError, match=message) as error:
    _config_flag(["prog", f"--config={value}"])
  assert "\n" not in str(error.value)


def test_default_must_be_a_packaged_config():
  with pytest.raises(ValueError, match="not a packaged config"):
    configs.define_config_flag("config", "nope", flag_values=flags.FlagValues(), sys_argv=["prog"])


def test_results_dir_is_in_the_checkout_or_an_error(monkeypatch):
  assert configs.checkout_root() == (REPO if (REPO / ".git").exists() else None)
  monkeypatch.setattr(configs, "checkout_root", lambda: REPO)
  assert configs.results_dir("tiny") == REPO / "experiments" / "results" / "tiny"
  monkeypatch.setattr(configs, "checkout_root", lambda: None)
  with pytest.raises(FileNotFoundError, match="not in a git checkout"):
    configs.results_dir("tiny")


def test_unknown_config_name_is_one_line_without_traceback(tmp_path):
  out = run([BIN / "vaeaug-compare", "--config=nope"], tmp_path)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  (line,) = out.stderr.strip().splitlines()
  assert line.startswith("error: flag --config=nope: 'nope' is neither a config file")
  assert "classifier, compare, default, generator, transfer" in line


@pytest.mark.parametrize("shard", ["abc", "3/2", "0/2", "1/0"])
def test_a_bad_shard_is_one_line_before_any_work(shard, tmp_path):
  out = run([BIN / "vaeaug-compare", f"--shard={shard}", f"--workdir={tmp_path / 'sweep'}"], tmp_path)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  (line,) = out.stderr.strip().splitlines()
  assert line.startswith(f"error: flag --shard={shard}: expected") and not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
  "command, flag, args",
  [
    ("vaeaug-synthesize", "generator", ["--out=x.npz"]),
    ("vaeaug-synthesize", "filter_classifier", ["--generator=real_run", "--out=x.npz"]),
    ("vaeaug-evaluate-generator", "classifier", ["--generator=real_run"]),
  ],
)
def test_a_workdir_typo_is_one_line_before_any_work(command, flag, args, tmp_path):
  (tmp_path / "real_run").mkdir()
  (tmp_path / "real_run" / "config.json").write_text("{}")
  out = run([BIN / command, f"--{flag}=typo", *args], tmp_path)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  (line,) = out.stderr.strip().splitlines()
  assert line == f"error: flag --{flag}=typo: not a training workdir (no config.json there) (--help for the flags)"
  assert not (tmp_path / "x.npz").exists()


def test_compare_outside_a_checkout_needs_workdir(tmp_path):
  code = (
    "import sys; from experiments import compare, configs; configs.checkout_root = lambda: None; "
    "sys.argv = ['vaeaug-compare', '--config=compare:tiny']; compare.run()"
  )
  out = run([sys.executable, "-c", code], tmp_path)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  (line,) = out.stderr.strip().splitlines()
  assert "not in a git checkout" in line and line.endswith("pass --workdir=DIR")


def test_tables_only_on_a_workdir_typo_is_one_line(tmp_path):
  out = run([BIN / "vaeaug-compare", "--config=compare:tiny", "--tables_only", "--workdir=typo"], tmp_path)
  assert out.returncode == 2 and out.stdout == "" and not (tmp_path / "typo").exists()
  assert (
    out.stderr.strip() == "error: --tables_only: no cells.jsonl in typo (run the sweep first, or pass its --workdir)"
  )


def test_compare_runs_from_any_folder(detection_built, tmp_path):
  """`vaeaug-compare --config=compare:tiny` from an empty folder: the table is printed and written
  to --workdir, nothing to the working directory."""
  cwd, workdir = tmp_path / "cwd", tmp_path / "sweep"
  cwd.mkdir()
  args = [
    BIN / "vaeaug-compare",
    "--config=compare:tiny",
    f"--workdir={workdir}",
    '--config.datasets=("face_mask_detection/2classes",)',
    "--config.arms=('none','classic')",  # the generator arms are covered by test_compare
    "--config.compilation_cache_dir=",
  ] + ([f"--config.data_dir={detection_built}"] if detection_built else [])
  out = run(args, cwd, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  table = (workdir / "table.md").read_text()
  assert "n_per_class = 12" in table and "classic" in table and table.strip() in out.stdout
  assert not any(cwd.iterdir())


# ----------------------------------------------------------------------------- summarize


def _fake_run(workdir: Path, seed: int, balanced_accuracy: float) -> Path:
  workdir.mkdir(parents=True)
  test = {m: 0.5 for m in ("accuracy", "f1", "specificity", "roc_auc")}
  summary = dict(dataset="d/c", model="cnn96", n_per_class=50, seed=seed, best_epoch=2, seconds=10.0)
  (workdir / "test_metrics.json").write_text(
    json.dumps({**summary, "test": test | {"balanced_accuracy": balanced_accuracy}})
  )
  return workdir


def test_summarize_gives_the_t_interval_and_reports_skips(tmp_path):
  values = [0.80, 0.90]
  paths = [_fake_run(tmp_path / f"seed{i}", i, v) for i, v in enumerate(values)]
  unfinished = tmp_path / "unfinished"
  unfinished.mkdir()
  out = run([BIN / "vaeaug-summarize", *paths, unfinished], tmp_path)
  assert out.returncode == 0, out.stderr
  half_width = scipy_stats.t.ppf(0.975, df=1) * np.std(values, ddof=1) / math.sqrt(2)
  (row,) = [line for line in out.stdout.splitlines() if line.startswith("| d/c ")]
  assert row.startswith(f"| d/c | cnn96 | 50 | 2 | 0.850 ± {half_width:.3f} | 0.500 ± 0.000 |"), row
  assert row.endswith("| 3.0 | 10 |")
  assert f"skipped {unfinished}: no test_metrics.json" in out.stderr


def test_summarize_without_workdirs_is_a_usage_error(tmp_path):
  out = run([BIN / "vaeaug-summarize"], tmp_path)
  assert out.returncode == 1 and "give one or more training workdirs" in out.stderr


def test_summarize_with_no_finished_run_is_an_error_not_an_empty_table(tmp_path):
  out = run([BIN / "vaeaug-summarize", tmp_path / "typo"], tmp_path)
  assert out.returncode == 1 and out.stdout == ""
  assert out.stderr.strip() == "error: none of the 1 paths is a finished training workdir (with test_metrics.json)"


# ----------------------------------------------------------------------------- prepare's progress


def test_prepare_reports_progress_per_stage(observations_sample, tmp_path):
  calls = []
  record = lambda stage, done, total: calls.append((stage, done, total))
  report = building.prepare(
    "face_mask_observations", "grouped", data_dir=tmp_path, raw_root=observations_sample, progress=record
  )
  stages = list(dict.fromkeys(stage for stage, _, _ in calls))
  writes = {s for s in stages if s.startswith("writing ")}
  assert stages[:4] == ["with_mask", "without_mask", "grouping", "encoding"]
  assert writes == {f"writing {split}" for split, by_class in report.counts.items() if sum(by_class.values())}
  for stage in stages:  # each counts from 0 to its total
    seen = [(done, total) for s, done, total in calls if s == stage]
    total = seen[0][1]
    assert [done for done, _ in seen] == list(range(total + 1)) and {t for _, t in seen} == {total}
  for split, by_class in report.counts.items():
    if n := sum(by_class.values()):
      assert (f"writing {split}", n, n) in calls
  assert next(total for stage, _, total in calls if stage == "encoding") == report.total
  # Built: nothing to report the second time.
  calls.clear()
  building.prepare(
    "face_mask_observations", "grouped", data_dir=tmp_path, raw_root=observations_sample, progress=record
  )
  assert calls == []
