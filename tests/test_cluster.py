"""Cluster jobs on a real scheduler: a one-node SLURM cluster on 127.0.0.1 (scripts/cluster/local_slurm.sh:
munge, slurmctld and slurmd with a throwaway config under a temporary folder, stopped by pid when the
module ends) runs the cluster scripts end to end.

Default (CI, about 30 s): the harness itself (what it says when SLURM is missing, and that it stops
its daemons even when the command it ran failed), the errors of a distributed start in a bad SLURM
environment, a one-task array job that trains the tiny preset for a step, and the launch logic the
scripts share (common.sh: every array task learns its shard, and the CPU, GPU and TPU scripts start
the same training command; a stand-in python prints what it was given). `-m slow` (a few minutes): the tiny sweep as a 2-task array plus a dependent tables job
gives the cells and table of a local unsharded run, and `srun -n 2` training (jax.distributed from
SLURM's environment) equals the single-process run, and resumes after a cancelled job and after one
of its tasks is killed.

Needs the Debian packages slurm-wlm and munge and root (slurmd starts job steps); without them the
tests are skipped with the install command, and under VAEAUG_REQUIRE_DATA=1 (CI) that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "scripts" / "cluster"
LOCAL_SLURM = CLUSTER / "local_slurm.sh"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}
# The tiny classifier of the training tests: 48 images, 3 steps of 16 per epoch, a checkpoint per epoch.
TRAIN_FLAGS = [
  "--config.model=cnn_bn3",
  "--config.image_size=16",
  "--config.n_per_class=24",
  "--config.batch_size=16",
  "--config.epochs=8",
  "--config.figures=False",
]


class Slurm:
  """The clients of one local cluster: submit, wait, read a job's output."""

  def __init__(self, folder: Path):
    self.folder = folder
    self.env = dict(os.environ, SLURM_CONF=str(folder / "slurm.conf"), VAEAUG_ROOT=str(REPO), VENV=sys.prefix)
    self.env.update(TF_CPP_MIN_LOG_LEVEL="3")
    self.env.pop("XLA_FLAGS", None)  # one CPU device per process, as on a real node
    self.submit_dir = folder / "submit"  # not the checkout: the scripts find it through VAEAUG_ROOT
    self.submit_dir.mkdir(exist_ok=True)

  def run(self, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
      args, cwd=self.submit_dir, env=env or self.env, capture_output=True, text=True, timeout=120, check=False
    )
    if check and done.returncode:
      raise AssertionError(f"{shlex.join(args)} exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    return done

  def sbatch(self, *args: str, name: str, env: dict | None = None) -> str:
    """Submits and returns the job id; its output goes to `output(job)` (%j: one file per array task)."""
    out = self.folder / "out" / f"{name}-%j.out"
    out.parent.mkdir(exist_ok=True)
    return self.run("sbatch", "--parsable", f"--output={out}", *args, env=env).stdout.strip().split(";")[0]

  def jobs(self, job: str) -> list[dict]:
    """`scontrol show job` records of a job (one per array task), as dicts."""
    text = self.run("scontrol", "show", "job", "-o", job).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in text.splitlines() if line.strip()]

  def wait(self, job: str, timeout: float = 600) -> list[dict]:
    """Every task of `job` once all reached a final state (a dependency that can never be met is final)."""
    deadline = time.monotonic() + timeout
    while True:
      records = self.jobs(job)
      final = all(r["JobState"] in TERMINAL or r.get("Reason") == "DependencyNeverSatisfied" for r in records)
      # squeue lists a job until its processes are gone (COMPLETING), or for ever when its dependency fails.
      if final and (not self.run("squeue", "-h", "-t", "CG", "-j", job, check=False).stdout.strip()):
        return records
      if time.monotonic() > deadline:
        raise AssertionError(f"job {job} not finished after {timeout} s: {[r['JobState'] for r in records]}")
      time.sleep(0.5)

  def output(self, records: list[dict]) -> str:
    return "".join(Path(r["StdOut"]).read_text() for r in records if Path(r["StdOut"]).is_file())

  def wait_ok(self, job: str, timeout: float = 600) -> tuple[list[dict], str]:
    records = self.wait(job, timeout)
    output = self.output(records)
    bad = [(r["JobId"], r["JobState"], r["ExitCode"]) for r in records if r["JobState"] != "COMPLETED"]
    assert not bad, f"job {job}: {bad}\n{output[-6000:]}"
    return records, output


def _missing_requirements() -> str | None:
  done = subprocess.run(["bash", str(LOCAL_SLURM), "check"], capture_output=True, text=True)
  if done.returncode:
    return done.stderr.strip()
  if os.geteuid() != 0:
    return "the local SLURM cluster runs as root (slurmd starts job steps as the submitting user)"
  return None


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
  missing = _missing_requirements()
  if missing:
    pytest.skip(missing)
  folder = tmp_path_factory.mktemp("slurm")
  started = subprocess.run(["bash", str(LOCAL_SLURM), "start", str(folder)], capture_output=True, text=True)
  try:
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == f"export SLURM_CONF={folder}/slurm.conf"
    cluster = Slurm(folder)
    assert cluster.run("sinfo", "-h", "-o", "%t").stdout.strip() == "idle"
    yield cluster
  finally:
    subprocess.run(["bash", str(LOCAL_SLURM), "stop", str(folder)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def data_flags(detection_built) -> list[str]:
  return [f"--config.data_dir={detection_built}"] if detection_built else []


def _fake_venv(folder: Path) -> Path:
  """A VENV whose python prints its arguments and the environment the launch logic sets."""
  python = folder / "bin" / "python"
  python.parent.mkdir(parents=True)
  python.write_text(
    "#!/bin/bash\n"
    'echo "ARGS $*"\n'
    'echo "ENV PROCID=${SLURM_PROCID:-} JAX_PLATFORMS=${JAX_PLATFORMS:-} '
    'JAX_LOCAL_DEVICE_IDS=${JAX_LOCAL_DEVICE_IDS:-} PWD=$PWD"\n'
  )
  python.chmod(0o755)
  return folder


def _args_lines(output: str) -> list[str]:
  return sorted(line.split("ARGS ", 1)[1] for line in output.splitlines() if "ARGS " in line)


# ----------------------------------------------------------------------------- default (CI)


def test_harness_names_the_packages_when_slurm_is_missing(tmp_path):
  done = subprocess.run(
    ["/bin/bash", str(LOCAL_SLURM), "check"], env={"PATH": str(tmp_path)}, capture_output=True, text=True
  )
  assert done.returncode == 3
  assert (
    "missing SLURM/munge programs: " in done.stderr and " sbatch srun sinfo squeue scancel scontrol;" in done.stderr
  )
  assert "apt-get install -y slurm-wlm munge" in done.stderr


def test_harness_stops_its_daemons_even_when_the_command_fails(tmp_path):
  missing = _missing_requirements()
  if missing:
    pytest.skip(missing)
  folder = tmp_path / "cluster"
  pid_files = " ".join(str(folder / f"{name}.pid") for name in ("munged", "slurmctld", "slurmd"))
  done = subprocess.run(
    ["bash", str(LOCAL_SLURM), "run", str(folder), "bash", "-c", f"sinfo -h -o %t; cat {pid_files}; exit 7"],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 7, done.stderr
  state, *pids = done.stdout.split()
  assert state == "idle" and len(pids) == 3, done.stdout
  for pid in pids:  # gone (or the number reused by a process that is not one of ours)
    cmdline = Path(f"/proc/{pid}/cmdline")
    assert not cmdline.exists() or str(folder) not in cmdline.read_text(errors="replace"), pid
  again = subprocess.run(["bash", str(LOCAL_SLURM), "start", str(folder)], capture_output=True, text=True)
  assert again.returncode == 1 and "is not empty" in again.stderr  # never reuses (or clobbers) a cluster's folder


def test_distributed_start_names_the_fix_for_a_bad_slurm_environment(monkeypatch):
  """Two first-cluster-job mistakes fail at once with what to do, before jax waits for a coordinator:
  processes not started by srun (no step environment) and a first node whose name does not resolve."""
  from vaeaug.training import sharding

  for name in list(os.environ):
    if name.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR")):
      monkeypatch.delenv(name)
  sharding._check_slurm_environment()  # not in a SLURM job: nothing to check
  monkeypatch.setenv("SLURM_JOB_ID", "4242")
  with pytest.raises(RuntimeError, match="start the processes with srun"):
    sharding._check_slurm_environment()
  for name, value in {"SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}.items():
    monkeypatch.setenv(name, value)
  monkeypatch.setenv("SLURM_STEP_NODELIST", "no-such-node-vaeaug[07-08]")
  with pytest.raises(RuntimeError, match="'no-such-node-vaeaug07', but that name does not resolve"):
    sharding._check_slurm_environment()
  monkeypatch.setenv("SLURM_STEP_NODELIST", "localhost")
  sharding._check_slurm_environment()


def test_one_task_array_job_trains_the_tiny_preset_for_a_step(slurm, data_flags, tmp_path):
  """CI's smoke test: the sweep script as a one-task array runs shard 1/1 of the tiny preset, cut to
  one cell and one training step."""
  workdir = tmp_path / "sweep"
  job = slurm.sbatch(
    "--array=0-0",
    str(CLUSTER / "slurm_sweep.sbatch"),
    str(workdir),
    "--config=compare:tiny",
    "--config.arms=('none',)",
    "--config.num_seeds=1",
    "--config.classifier.epochs=1",
    "--config.min_epoch_size=16",  # one batch of 16 per epoch
    "--config.compilation_cache_dir=",
    *data_flags,
    name="smoke",
  )
  _, output = slurm.wait_ok(job, timeout=300)
  assert "array task 0 of 0-0 runs shard 1/1" in output
  (cell,) = [json.loads(line) for line in (workdir / "cells.jsonl").read_text().splitlines()]
  assert cell["arm"] == "none" and cell["steps"] == 1 and cell["epochs_run"] == 1
  assert not (workdir / "table.md").exists()  # array tasks leave the tables to the job after them
  assert 0.0 <= cell["test"]["balanced_accuracy"] <= 1.0


def test_array_tasks_learn_their_shard(slurm, tmp_path):
  """Task t of a contiguous array of k runs --shard=(t - first + 1)/k without tables; a gapped array,
  a --shard of the user's or --tables_only inside an array is refused before anything runs."""
  env = dict(slurm.env, VENV=str(_fake_venv(tmp_path / "venv")))
  sweep = str(CLUSTER / "slurm_sweep.sbatch")
  cases = {
    "--array=0-2": ["1/3", "2/3", "3/3"],
    "--array=4-5": ["1/2", "2/2"],
  }
  jobs = {array: slurm.sbatch(array, sweep, "w", "--config=compare:tiny", name="shard", env=env) for array in cases}
  for array, shards in cases.items():
    _, output = slurm.wait_ok(jobs[array], timeout=120)
    # A relative workdir is the submit folder's, whatever folder a task starts in.
    expected = [
      f"-m experiments.compare --workdir={slurm.submit_dir / 'w'} --config=compare:tiny --shard={s} --notables"
      for s in shards
    ]
    assert _args_lines(output) == expected, output
  refused = {
    "--array=0-4:2": "one task per shard needs a contiguous array",
    "--array=0-1 --tables_only": "--tables_only is the job after the array",
    "--array=0-1 --shard=1/2": "--shard=1/2: the array job sets each task's shard",
  }
  for flags, message in refused.items():
    array, *extra = flags.split()
    records = slurm.wait(slurm.sbatch(array, sweep, "w", *extra, name="refused", env=env), timeout=120)
    output = slurm.output(records)
    assert {r["JobState"] for r in records} == {"FAILED"} and message in output, output
    assert "ARGS" not in output


def test_cpu_gpu_and_tpu_scripts_start_the_same_training_command(slurm, tmp_path):
  """The launch logic is common.sh's: the CPU and GPU sbatch scripts (run here as 2-task jobs) and the
  TPU script (run with a stand-in for gcloud that runs its command on two "hosts") start the same
  command, distributed, on the same absolute workdir; only the platform settings differ."""
  venv = _fake_venv(tmp_path / "venv")
  env = dict(slurm.env, VENV=str(venv), CUDA_VISIBLE_DEVICES="0,1,2,3")
  workdir = tmp_path / "run"
  two_tasks = ["--ntasks=2", "--ntasks-per-node=2", "--cpus-per-task=1"]
  outputs = {}
  for kind in ("cpu", "gpu"):
    script = str(CLUSTER / f"slurm_{kind}.sbatch")
    job = slurm.sbatch(*two_tasks, script, str(workdir), "--config.model=cnn_bn3", name=kind, env=env)
    outputs[kind] = slurm.wait_ok(job, timeout=120)[1]
  fake_bin = tmp_path / "bin"
  fake_bin.mkdir()
  gcloud = fake_bin / "gcloud"
  gcloud.write_text(
    "#!/bin/bash\n"
    'for a in "$@"; do case $a in --command=*) command=${a#--command=} ;; esac; done\n'
    'for host in 0 1; do HOME="$FAKE_HOME" bash -c "$command" || exit; done\n'
  )
  gcloud.chmod(0o755)
  home = tmp_path / "home"
  home.mkdir()
  (home / "vaeaug").symlink_to(REPO)
  tpu_env = dict(
    os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}", FAKE_HOME=str(home), TPU="v4-16", ZONE="z", VENV=str(venv)
  )
  tpu_env.pop("VAEAUG_ROOT", None)  # the hosts' ~/vaeaug
  done = subprocess.run(
    ["bash", str(CLUSTER / "tpu_pod.sh"), str(workdir), "--config.model=cnn_bn3"],
    env=tpu_env,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert done.returncode == 0, done.stderr
  outputs["tpu"] = done.stdout
  command = f"-m experiments.train_classifier --workdir={workdir} --config=classifier --config.distributed=True"
  assert _args_lines(outputs["cpu"]) == [f"{command} --config.model=cnn_bn3"] * 2
  assert _args_lines(outputs["gpu"]) == [f"{command} --config.batch_size=256 --config.model=cnn_bn3"] * 2
  assert _args_lines(outputs["tpu"]) == [f"{command} --config.batch_size=512 --config.model=cnn_bn3"] * 2
  assert "0: ENV PROCID=0 JAX_PLATFORMS=cpu" in outputs["cpu"] and "1: ENV PROCID=1 JAX_PLATFORMS=cpu" in outputs["cpu"]
  # One process per node drives all its GPUs (jax.distributed alone would give task i only GPU i).
  assert outputs["gpu"].count("JAX_LOCAL_DEVICE_IDS=0,1,2,3") == 2
  assert f"PWD={slurm.submit_dir}" in outputs["gpu"]
  one_task = slurm.sbatch("--ntasks=1", str(CLUSTER / "slurm_cpu.sbatch"), str(workdir), name="cpu1", env=env)
  assert _args_lines(slurm.wait_ok(one_task, timeout=120)[1]) == [
    f"-m experiments.train_classifier --workdir={workdir} --config=classifier"
  ]  # one process: no jax.distributed


# ----------------------------------------------------------------------------- slow


def _cells(workdir: Path) -> dict[str, dict]:
  records = [json.loads(line) for line in (workdir / "cells.jsonl").read_text().splitlines()]
  cells = {record["key"]: record for record in records}
  assert len(cells) == len(records), "a cell recorded twice"
  return cells


@pytest.mark.slow
def test_sweep_as_array_job_equals_a_local_run(slurm, data_flags, tmp_path):
  """The tiny preset as a 2-task array (one shard per task, one shared workdir) and a tables job that
  waits for it (afterok) ends with the cells, metrics and table of one local, unsharded run."""
  flags = ["--config=compare:tiny", "--config.compilation_cache_dir=", *data_flags]
  local = tmp_path / "local"
  done = subprocess.run(
    [sys.executable, "-m", "experiments.compare", f"--workdir={local}", *flags],
    cwd=REPO,
    env=slurm.env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert done.returncode == 0, done.stderr[-3000:]

  workdir = tmp_path / "cluster"
  sweep = str(CLUSTER / "slurm_sweep.sbatch")
  array = slurm.sbatch("--array=0-1", sweep, str(workdir), *flags, name="array")
  tables = slurm.sbatch(f"--dependency=afterok:{array}", sweep, str(workdir), *flags, "--tables_only", name="tables")
  assert slurm.jobs(tables)[0]["JobState"] == "PENDING"
  records, output = slurm.wait_ok(array, timeout=900)
  assert len(records) == 2 and "runs shard 1/2" in output and "runs shard 2/2" in output
  # Both shards ran at once, one CPU each.
  starts = sorted(r["StartTime"] for r in records)
  ends = sorted(r["EndTime"] for r in records)
  assert starts[-1] < ends[0], records
  assert not (workdir / "table.md").exists()  # shards write no tables
  _, tables_output = slurm.wait_ok(tables, timeout=300)
  assert "n_per_class = 12" in tables_output

  cells, expected = _cells(workdir), _cells(local)
  assert sorted(cells) == sorted(expected) and len(cells) == 8
  for key, cell in cells.items():
    assert cell["test"] == expected[key]["test"], key
    assert cell["validation"] == expected[key]["validation"], key
  assert (workdir / "table.md").read_text() == (local / "table.md").read_text()
  assert (workdir / "table.csv").read_text() == (local / "table.csv").read_text()


def _latest_checkpoint(workdir: Path) -> int | None:
  folder = workdir / "checkpoints"
  steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
  return max(steps, default=None)


def _wait_for_checkpoint(slurm: Slurm, job: str, workdir: Path, after: int) -> int:
  """The first finished checkpoint past step `after` of running `job`."""
  deadline = time.monotonic() + 600
  while time.monotonic() < deadline:
    step = _latest_checkpoint(workdir)
    if step is not None and step > after:
      return step
    state = slurm.jobs(job)[0]["JobState"]
    assert state in ("PENDING", "RUNNING"), f"job {job} ended ({state}) before a checkpoint past step {after}"
    time.sleep(0.1)
  raise AssertionError(f"no checkpoint past step {after} in {workdir}")


def _state_arrays(workdir: Path) -> list[np.ndarray]:
  """The best-on-validation parameters and model state a run's checkpoints hold, in tree order."""
  import jax

  from classifiers import train

  _, state, _ = train.restore_best(workdir)
  return [np.asarray(x) for x in jax.tree.leaves((state.params, state.model_state))]


def _train_losses(workdir: Path) -> list[float]:
  from vaeaug.training import logs

  return [r["loss"] for r in logs.read_metrics(workdir / "metrics.jsonl") if r["split"] == "train"]


@pytest.mark.slow
def test_two_tasks_train_like_one_and_resume_after_a_kill(slurm, data_flags, tmp_path):
  """`srun -n 2` (slurm_cpu.sbatch): jax.distributed from SLURM's environment, gloo collectives; the
  result equals the one-task run up to float rounding (tests/test_distributed.py's tolerance), process
  0 alone writes the logs. A cancelled job and, in its resubmission, one killed task (the other is
  stopped at once: srun --kill-on-bad-exit) are resumed from the checkpoint by submitting again, and
  end exactly where the uninterrupted run ends."""
  script = str(CLUSTER / "slurm_cpu.sbatch")
  flags = [*TRAIN_FLAGS, *data_flags]
  single = slurm.sbatch("--ntasks=1", script, str(tmp_path / "single"), *flags, name="single")
  two = slurm.sbatch("--ntasks=2", script, str(tmp_path / "two"), *flags, name="two")
  _, single_output = slurm.wait_ok(single)
  _, two_output = slurm.wait_ok(two)
  assert "jax.distributed" not in single_output
  assert "0: jax.distributed: process 0 of 2" in two_output and "1: jax.distributed: process 1 of 2" in two_output
  assert "0: best epoch" in two_output and "1: best epoch" not in two_output  # process 0 reports
  assert "1: epoch" not in two_output  # ... and shows progress
  assert len(list((tmp_path / "two").glob("events.out.tfevents.*"))) == 1

  single_leaves, two_leaves = _state_arrays(tmp_path / "single"), _state_arrays(tmp_path / "two")
  assert len(single_leaves) == len(two_leaves) > 0
  for a, b in zip(two_leaves, single_leaves):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
  single_losses, two_losses = _train_losses(tmp_path / "single"), _train_losses(tmp_path / "two")
  assert len(two_losses) == len(single_losses) > 0
  np.testing.assert_allclose(two_losses, single_losses, rtol=1e-4)

  # Interrupted twice: scancel of the job, then one task killed; each time the same sbatch resumes.
  workdir = tmp_path / "interrupted"
  first = slurm.sbatch("--ntasks=2", script, str(workdir), *flags, name="interrupted")
  saved = _wait_for_checkpoint(slurm, first, workdir, after=0)
  slurm.run("scancel", first)
  assert {r["JobState"] for r in slurm.wait(first, timeout=120)} == {"CANCELLED"}
  assert not (workdir / "test_metrics.json").exists()

  second = slurm.sbatch("--ntasks=2", script, str(workdir), *flags, name="resumed")
  later = _wait_for_checkpoint(slurm, second, workdir, after=saved)
  pids = slurm.run("scontrol", "listpids", f"{second}.0").stdout.splitlines()[1:]
  (task1,) = [int(row.split()[0]) for row in pids if row.split()[3:5] == ["1", "1"]]
  killed_at = time.monotonic()
  os.kill(task1, signal.SIGKILL)
  records = slurm.wait(second, timeout=120)
  assert records[0]["JobState"] == "FAILED" and time.monotonic() - killed_at < 60  # no hang in a collective
  second_output = slurm.output(records)
  assert re.search(rf"resuming {workdir} from checkpoint step {saved} ", second_output), second_output[-3000:]
  assert re.search(r"srun: error: \S+: task 1: Killed", second_output), second_output[-3000:]

  third = slurm.sbatch("--ntasks=2", script, str(workdir), *flags, name="resumed-again")
  _, third_output = slurm.wait_ok(third)
  resumed = int(re.search(rf"resuming {workdir} from checkpoint step (\d+) ", third_output)[1])
  assert resumed >= later
  for a, b in zip(_state_arrays(workdir), two_leaves):
    np.testing.assert_array_equal(a, b)
  assert _train_losses(workdir) == two_losses
  assert (
    json.loads((workdir / "test_metrics.json").read_text())["test"]
    == json.loads((tmp_path / "two" / "test_metrics.json").read_text())["test"]
  )
