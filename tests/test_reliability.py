"""Reliability: the training commands killed at a random point resume to the uninterrupted result,
damaged checkpoints fall back to the previous step, non-finite values stop training before they
are checkpointed, nothing loaded from disk is unpickled or eval-ed, and a command run twice gives
identical files.

The crash-resume and determinism tests run the real commands (`python -m
experiments.train_classifier` / `train_generator`) as subprocesses on the built
face_mask_detection/2classes dataset (skipped when it is not built); the others train in-process
on real 12K crops with the helpers of tests/test_training.py.

Wall-time fields are the only ones left out when files are compared: `img_per_s` in metrics.jsonl
(images per second over a log interval), `seconds` (the run's duration) in test_metrics.json and
generator_metrics.json, and `train_img_per_s` (the median of the `img_per_s` values) in
generator_metrics.json. Everything else, floats included, must be equal.
"""

from __future__ import annotations

import ast
import functools
import gc
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_generators import tiny_generator_config
from test_training import fit_tiny, leaves, make_step, real_crops, tiny_config, without_timing

from classifiers import train
from vaeaug import generators
from vaeaug.data import sources
from vaeaug.training import checkpoints, logs, loop

# A failed orbax restore leaves its other concurrent reads un-awaited; they are reported at garbage
# collection. Damaged checkpoints are what these tests make: the fixture below collects after each
# test, so the reports come (and are ignored) there rather than at the end of the session.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def _collect_abandoned_reads():
  yield
  gc.collect()


REPO = Path(__file__).resolve().parents[1]
DATASET = "face_mask_detection/2classes"
KILL_SEED = 7  # picks the checkpoint and the delay of each kill (the moment itself still varies)

# ============================================================================ crash-resume and determinism

COMMON = [
  f"--config.dataset={DATASET}",
  "--config.image_size=16",
  "--config.n_per_class=32",
  "--config.batch_size=16",
  "--config.eval_batch_size=256",
  "--config.log_every_steps=2",
  "--config.checkpoint_every_steps=2",
  "--config.figures=False",
]
COMMANDS = {
  # 64 training images, 4 steps an epoch: checkpoints every 2 steps and at epoch ends.
  "classifier": dict(
    module="experiments.train_classifier",
    config="experiments/configs/classifier.py",
    args=["--config.model=cnn_bn3", "--config.epochs=5"],
    summary="test_metrics.json",
    wall_time=("seconds", "timing"),
    arrays="test_predictions.npz",
    steps=20,
    make_state=lambda config, n: train.create_train_state_for(config, n, 1),
  ),
  # 64 training images, 4 steps an epoch.
  "generator": dict(
    module="experiments.train_generator",
    config="experiments/configs/generator.py",
    args=["--config.model=cvae", "--config.latent_dim=8", "--config.channels=(8,16)", "--config.epochs=4"],
    summary="generator_metrics.json",
    wall_time=("seconds", "timing", "train_img_per_s"),
    arrays=None,
    steps=16,
    make_state=lambda config, n: generators.create_generator_state(config, n, 1),
  ),
}
RUN_TIMEOUT_S = 400


@pytest.fixture(scope="module")
def built_dataset(detection_built):
  """The data_dir holding DATASET; the commands below find it through $TFDS_DATA_DIR."""
  if detection_built is None:
    yield sources.default_data_dir()
    return
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("TFDS_DATA_DIR", detection_built)
    yield Path(detection_built)


def step_numbers(workdir: Path) -> list[int]:
  """Finalized checkpoint steps (orbax writes a step under a temporary name, then renames it)."""
  folder = Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


class Run:
  """One command as a subprocess, output in `<workdir>.<n>.log`."""

  def __init__(self, kind: str, workdir: Path, cache: Path | None):
    spec = COMMANDS[kind]
    self.workdir = workdir
    self.log = workdir.parent / f"{workdir.name}.{len(list(workdir.parent.glob(workdir.name + '.*.log')))}.log"
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    if cache is not None:
      # XLA compilation is most of a tiny run; runs after the first load its executables.
      env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    with open(self.log, "w") as out:
      self.proc = subprocess.Popen(
        [
          sys.executable,
          "-m",
          spec["module"],
          f"--workdir={workdir}",
          f"--config={spec['config']}",
          *COMMON,
          *spec["args"],
        ],
        cwd=REPO,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
      )

  def output(self) -> str:
    return self.log.read_text()

  def wait_for_step(self, step: int) -> None:
    """Until a checkpoint of `step` or later is on disk."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not step_numbers(self.workdir) or max(step_numbers(self.workdir)) < step:
      if self.proc.poll() is not None:
        pytest.fail(f"exited ({self.proc.returncode}) before checkpoint {step}:\n{self.output()[-3000:]}")
      if time.monotonic() > deadline:
        self.proc.kill()
        pytest.fail(f"no checkpoint {step} after {RUN_TIMEOUT_S} s:\n{self.output()[-3000:]}")
      time.sleep(0.005)

  def finish(self) -> str:
    try:
      returncode = self.proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      raise
    assert returncode == 0, self.output()[-3000:]
    return self.output()


def restore_latest(workdir: Path, kind: str):
  """(step, state leaves, best leaves, loop record) of a workdir's latest checkpoint."""
  config = checkpoints.read_run_config(workdir)
  class_names = json.loads((workdir / "class_names.json").read_text())
  state = jax.eval_shape(lambda: COMMANDS[kind]["make_state"](config, len(class_names)))
  checkpointer = checkpoints.Checkpointer(workdir / "checkpoints")
  try:
    step, state, best, record = checkpointer.restore_latest(
      state, {"params": state.params, "model_state": state.model_state}
    )
  finally:
    checkpointer.close()
  return step, [np.asarray(x) for x in jax.tree.leaves(state)], [np.asarray(x) for x in jax.tree.leaves(best)], record


def assert_same_run(expected: Path, got: Path, kind: str) -> None:
  """The files of two runs are equal (wall-time fields aside) and their checkpoints bitwise equal."""
  spec = COMMANDS[kind]
  assert without_timing(got / "metrics.jsonl") == without_timing(expected / "metrics.jsonl")
  summaries = [
    {k: v for k, v in json.loads((w / spec["summary"]).read_text()).items() if k not in spec["wall_time"]}
    for w in (expected, got)
  ]
  assert summaries[0] == summaries[1]
  if spec["arrays"]:
    with (
      np.load(expected / spec["arrays"], allow_pickle=False) as a,
      np.load(got / spec["arrays"], allow_pickle=False) as b,
    ):
      assert sorted(a.files) == sorted(b.files)
      for name in a.files:
        np.testing.assert_array_equal(a[name], b[name])
  assert step_numbers(got) == step_numbers(expected)
  (step_a, state_a, best_a, loop_a), (step_b, state_b, best_b, loop_b) = (
    restore_latest(w, kind) for w in (expected, got)
  )
  assert step_a == step_b and loop_a == loop_b
  assert len(state_a) == len(state_b) and len(best_a) == len(best_b)
  for a, b in zip(state_a + best_a, state_b + best_b):
    np.testing.assert_array_equal(a, b)  # bitwise on CPU


def kill_at_random_point(run: Run, rng: random.Random, last_step: int) -> str:
  """SIGKILLs `run` a random moment (up to 0.2 s) after a random checkpoint (not among the last
  few steps, so that the kill lands before the end); says where."""
  step = rng.randrange(2, last_step - 4, 2)
  delay = rng.uniform(0.0, 0.2)
  run.wait_for_step(step)
  time.sleep(delay)
  run.proc.send_signal(signal.SIGKILL)
  returncode = run.proc.wait(timeout=RUN_TIMEOUT_S)
  where = f"{delay:.2f} s after checkpoint {step} (checkpoints on disk: {step_numbers(run.workdir)})"
  assert returncode == -signal.SIGKILL, f"finished before the kill {where}"
  return where


@pytest.fixture(scope="module")
def runs(built_dataset, tmp_path_factory):
  """runs(kind) -> ({"reference", "killed", ("again")}, where the kill was), made once per kind:
  an uninterrupted run, one SIGKILLed at a random point after a checkpoint (not resumed yet), and
  for the classifier the same command again. The reference fills a compilation cache that the
  killed run (and its resumption) load; "again" compiles everything itself, alongside the
  reference, so that determinism does not rest on the cache."""
  root = tmp_path_factory.mktemp("commands")
  made = {}

  def get(kind):
    if kind not in made:
      reference = Run(kind, root / f"{kind}_reference", root / "jax_cache")
      again = Run(kind, root / f"{kind}_again", None) if kind == "classifier" else None
      reference.finish()
      killed = Run(kind, root / f"{kind}_killed", root / "jax_cache")
      where = kill_at_random_point(killed, random.Random(f"{KILL_SEED}-{kind}"), COMMANDS[kind]["steps"])
      workdirs = {"reference": reference.workdir, "killed": killed.workdir}
      if again is not None:
        again.finish()
        workdirs["again"] = again.workdir
      made[kind] = workdirs, where
    return made[kind]

  return get


@pytest.mark.parametrize("kind", sorted(COMMANDS))
def test_killed_command_resumes_to_the_uninterrupted_result(kind, runs):
  workdirs, where = runs(kind)
  killed = workdirs["killed"]
  assert not (killed / COMMANDS[kind]["summary"]).exists(), where
  output = Run(kind, killed, killed.parent / "jax_cache").finish()  # the same command again
  resumed = re.search(rf"resuming {re.escape(str(killed))} from checkpoint step (\d+)", output)
  assert resumed, f"killed {where} but did not resume:\n{output[-2000:]}"
  assert int(resumed.group(1)) < COMMANDS[kind]["steps"], where
  assert_same_run(workdirs["reference"], killed, kind)


def test_same_command_twice_gives_identical_files(runs):
  workdirs, _ = runs("classifier")
  # The wall-time field left out is there in both runs: the comparison below is not vacuous.
  rates = [
    [r["img_per_s"] for r in logs.read_metrics(workdirs[name] / "metrics.jsonl") if r["split"] == "train"]
    for name in ("reference", "again")
  ]
  assert len(rates[0]) == len(rates[1]) > 0
  assert_same_run(workdirs["reference"], workdirs["again"], "classifier")


# ============================================================================ damaged checkpoints

# 48 training images, 3 steps an epoch, 9 steps: the two kept checkpoints are steps 8 and 9.
FALLBACK_CONFIG = dict(epochs=3, checkpoint_every_steps=2)


@pytest.fixture(scope="module")
def data():
  return train.Data(
    train=real_crops(24, 16), validation=real_crops(8, 16, "Validation"), test=real_crops(8, 16, "Test")
  )


@pytest.fixture(scope="module")
def step_fn():
  return make_step(tiny_config(**FALLBACK_CONFIG))  # compiled once for the module


@pytest.fixture(scope="module")
def finished(data, step_fn, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("finished") / "run"
  result = fit_tiny(tiny_config(**FALLBACK_CONFIG), data, workdir, step_fn=step_fn)
  assert step_numbers(workdir) == [8, 9]
  return workdir, result


def truncate(path: Path) -> None:
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def array_files(item: Path) -> list[Path]:
  return [p for p in item.rglob("*") if p.is_file() and p.parent.name == "d"]


DAMAGE = {
  # name: (damage done to the latest step folder, what the warning must name)
  "truncated metadata": (
    lambda step: truncate(step / "state" / "_METADATA"),
    ["item 'state'", "damaged JSON files: state/_METADATA"],
  ),
  "truncated array data": (lambda step: [truncate(p) for p in array_files(step / "best")], ["item 'best'"]),
  "deleted array data": (lambda step: [p.unlink() for p in array_files(step / "state")], ["item 'state'"]),
  "emptied loop record": (
    lambda step: (step / "loop" / "metadata").write_bytes(b""),
    ["item 'loop'", "empty files: loop/metadata"],
  ),
  "deleted item": (lambda step: shutil.rmtree(step / "best"), ["item 'best' missing"]),
}


def restore_copy(reference: Path, workdir: Path):
  """restore_latest of the classifier checkpoints in `workdir` (a copy of `reference`)."""
  state = train.create_train_state_for(tiny_config(**FALLBACK_CONFIG), 2, 3)
  checkpointer = checkpoints.Checkpointer(workdir / "checkpoints")
  try:
    return checkpointer.restore_latest(state, {"params": state.params, "model_state": state.model_state})
  finally:
    checkpointer.close()


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_checkpoint_falls_back_with_a_warning_naming_it(damage, finished, tmp_path, caplog):
  reference, _ = finished
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  do_damage, named = DAMAGE[damage]
  do_damage(workdir / "checkpoints" / "9")
  with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
    step, state, best, record = restore_copy(reference, workdir)
  assert step == 8 and record["epochs_done"] == 2 and not record["finished"]
  warnings = [r.getMessage() for r in caplog.records if "checkpoint step 9" in r.getMessage()]
  assert warnings, [r.getMessage() for r in caplog.records]
  for text in named:
    assert text in warnings[0], warnings[0]
  # Kept aside for inspection, out of orbax's sight (so a resumed run can write step 9 again).
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["8", "9.unreadable"]


def test_resume_from_a_damaged_checkpoint_ends_like_the_undamaged_run(finished, data, step_fn, tmp_path, caplog):
  reference, full = finished
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  truncate(workdir / "checkpoints" / "9" / "state" / "_METADATA")
  with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
    result = fit_tiny(tiny_config(**FALLBACK_CONFIG), data, workdir, step_fn=step_fn)
  assert result.resumed_from == 8
  assert any("using checkpoint step 8" in r.getMessage() for r in caplog.records)
  # Step 9 was trained and written again; the run ended exactly where the undamaged one did.
  assert step_numbers(workdir) == [8, 9] and (workdir / "checkpoints" / "9.unreadable").is_dir()
  for a, b in zip(leaves(full.state), leaves(result.state)):
    np.testing.assert_array_equal(a, b)
  assert without_timing(workdir / "metrics.jsonl") == without_timing(reference / "metrics.jsonl")


def test_every_checkpoint_damaged_means_starting_over(finished, tmp_path, caplog):
  reference, _ = finished
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  for step in (8, 9):
    truncate(workdir / "checkpoints" / str(step) / "loop" / "metadata")
  with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
    assert restore_copy(reference, workdir) is None  # the loop then starts from step 0
  assert any("no readable checkpoint" in r.getMessage() for r in caplog.records)
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["8.unreadable", "9.unreadable"]


def test_checkpoints_of_another_model_are_an_error_not_damage(finished, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished[0], workdir)
  other = train.create_train_state_for(tiny_config(image_size=32), 2, 3)  # a larger head
  checkpointer = checkpoints.Checkpointer(workdir / "checkpoints")
  with pytest.raises(checkpoints.CheckpointMismatchError, match=r"changed config.*step 9.*step 8"):
    checkpointer.restore_latest(other, {"params": other.params, "model_state": other.model_state})
  checkpointer.close()
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["8", "9"]  # nothing set aside


# ============================================================================ non-finite guard

BAD_STEP = 5  # 1-based, as the loop counts; with checkpoints every 2 steps and epoch ends (3 steps)


@jax.custom_vjp
def _scale_gradient(x, scale):
  return x


_scale_gradient.defvjp(lambda x, scale: (x, scale), lambda scale, g: (g * scale, jnp.zeros_like(scale)))


def poisoned(loss, step, kind: str):
  """`loss` made non-finite at step BAD_STEP: Inf in the forward pass ("loss"), or a NaN gradient
  behind a finite loss ("gradient")."""
  hit = step + 1 == BAD_STEP  # state.step counts the steps done before this one
  if kind == "loss":
    return loss * jnp.where(hit, jnp.inf, 1.0)
  return _scale_gradient(loss, jnp.where(hit, jnp.nan, 1.0))


def assert_stopped_before_checkpointing(error, workdir: Path, kind: str, make_state) -> None:
  message = str(error)
  quantities = message.split(" at step")[0]
  assert f"at step {BAD_STEP};" in message and "last checkpoint: step 4" in message, message
  if kind == "gradient":
    assert "grad_norm (nan)" in quantities and "loss" not in quantities, message
  else:
    assert re.search(r"\bloss \((inf|nan)\)", quantities), message
  assert step_numbers(workdir) and max(step_numbers(workdir)) < BAD_STEP
  assert max(r["step"] for r in logs.read_metrics(workdir / "metrics.jsonl")) < BAD_STEP
  config = checkpoints.read_run_config(workdir)
  state = jax.eval_shape(lambda: make_state(config, 2))
  checkpointer = checkpoints.Checkpointer(workdir / "checkpoints")
  _, state, best, _ = checkpointer.restore_latest(state, {"params": state.params, "model_state": state.model_state})
  checkpointer.close()
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves((state, best)) if jnp.issubdtype(x.dtype, jnp.inexact))


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_classifier_stops_on_nonfinite_loss_or_gradient(kind, data, tmp_path):
  config = tiny_config(epochs=3, log_every_steps=2, checkpoint_every_steps=2)
  real_loss = train.loss_and_probabilities

  def step_with_poison(state, batch, base_key, **kwargs):  # the real train step, its loss poisoned
    def loss_and_probabilities(*args, **kw):
      losses, probabilities = real_loss(*args, **kw)
      return poisoned(losses, state.step, kind), probabilities

    train.loss_and_probabilities = loss_and_probabilities  # while this step is traced
    try:
      return train.train_step(state, batch, base_key, **kwargs)
    finally:
      train.loss_and_probabilities = real_loss

  step_fn = jax.jit(
    functools.partial(
      step_with_poison,
      num_classes=2,
      label_smoothing=0.0,
      weights=jnp.ones(2),
      normalization=config.normalization,
      augment_config=None,
    )
  )
  checkpoints.write_run_files(tmp_path, config, data.class_names)  # for the restore below
  with pytest.raises(loop.NonFiniteError) as error:
    fit_tiny(config, data, tmp_path, step_fn=step_fn)
  assert_stopped_before_checkpointing(error.value, tmp_path, kind, COMMANDS["classifier"]["make_state"])


def test_generator_stops_on_nonfinite_gradient(data, tmp_path):
  config = tiny_generator_config("dae", channels=(8, 16), epochs=3, log_every_steps=2, checkpoint_every_steps=2)
  real_losses = generators.losses

  def step_with_poison(state, batch, base_key, **kwargs):  # the real train step, its loss poisoned
    def losses(*args, **kw):
      terms = real_losses(*args, **kw)
      return {**terms, "loss": poisoned(terms["loss"], state.step, "gradient")}

    generators.losses = losses  # while this step is traced
    try:
      return generators.train_step(state, batch, base_key, **kwargs)
    finally:
      generators.losses = real_losses

  step_fn = jax.jit(
    functools.partial(step_with_poison, beta=config.beta, warmup_steps=0, options=generators.loss_options(config))
  )
  state = generators.create_generator_state(config, 2, steps_per_epoch=3)
  checkpoints.write_run_files(tmp_path, config, data.class_names)  # for the restore below
  loop_config = loop.LoopConfig(epochs=3, batch_size=16, log_every_steps=2, checkpoint_every_steps=2, progress=False)
  with pytest.raises(loop.NonFiniteError) as error:
    # Validation is not under test here: a constant stands in for it (no compilation).
    loop.fit(state, step_fn, lambda state: {"loss": 0.0}, data.train, loop_config, tmp_path)
  assert_stopped_before_checkpointing(error.value, tmp_path, "gradient", COMMANDS["generator"]["make_state"])


def test_nonfinite_state_is_never_checkpointed(data, step_fn, tmp_path):
  def corrupting(state, batch, key):
    state, metrics = step_fn(state, batch, key)
    if int(state.step) == 3:  # an optimizer statistic goes NaN while every step metric stays finite
      state = state.replace(
        opt_state=jax.tree.map(lambda x: x * jnp.nan if jnp.issubdtype(x.dtype, jnp.floating) else x, state.opt_state)
      )
    return state, metrics

  with pytest.raises(loop.NonFiniteError, match=r"non-finite state at step 3 \(opt_state/.*last checkpoint: step 2"):
    fit_tiny(tiny_config(**FALLBACK_CONFIG), data, tmp_path, step_fn=corrupting)
  assert step_numbers(tmp_path) == [2]


# ============================================================================ safe loading

SCANNED = ("vaeaug", "classifiers", "experiments", "scripts")
UNPICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
STDLIB_XML_PARSERS = {
  "xml.etree.ElementTree": {"parse", "fromstring", "fromstringlist", "iterparse", "XML", "XMLParser", "XMLPullParser"},
  "xml.etree.cElementTree": {"parse", "fromstring", "iterparse", "XML", "XMLParser"},
  "xml.dom.minidom": {"parse", "parseString"},
  "xml.dom.pulldom": {"parse", "parseString"},
  "xml.sax": {"parse", "parseString", "make_parser"},
  "lxml.etree": {"parse", "fromstring", "XML", "XMLParser"},
}


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
  """Full dotted name of a call target (`np.load` -> "numpy.load"), through the imports."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if not isinstance(node, ast.Name):
    return None
  return ".".join([aliases.get(node.id, node.id), *reversed(parts)])


def _keyword(call: ast.Call, name: str):
  for keyword in call.keywords:
    if keyword.arg == name:
      return keyword.value.value if isinstance(keyword.value, ast.Constant) else keyword.value
  return None


def unsafe_loading(source: str) -> tuple[list[str], list[str]]:
  """(findings, loads checked and found safe) in Python source: unpickling modules, eval/exec,
  allow_pickle other than False, numpy.load without allow_pickle=False, yaml.load without a safe
  loader, torch.load without weights_only=True, stdlib/lxml XML parsing, defusedxml parsing with
  DTDs, entities or external references allowed."""
  tree = ast.parse(source)
  aliases: dict[str, str] = {}
  findings, safe = [], []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        if alias.name.split(".")[0] in UNPICKLING_MODULES:
          findings.append(f"line {node.lineno}: import {alias.name}")
    elif isinstance(node, ast.ImportFrom) and node.module:
      for alias in node.names:
        aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
      if node.module.split(".")[0] in UNPICKLING_MODULES:
        findings.append(f"line {node.lineno}: from {node.module} import ...")
  for node in ast.walk(tree):
    if not isinstance(node, ast.Call):
      continue
    name = _dotted(node.func, aliases)
    where = f"line {node.lineno}: {name}"
    allow_pickle = _keyword(node, "allow_pickle")
    if any(k.arg == "allow_pickle" for k in node.keywords) and allow_pickle is not False:
      findings.append(
        f"{where}(allow_pickle={ast.unparse(allow_pickle) if isinstance(allow_pickle, ast.AST) else allow_pickle})"
      )
    if name in ("eval", "exec"):
      findings.append(where)
    elif name in ("numpy.load", "jax.numpy.load"):
      (safe if allow_pickle is False else findings).append(where)
    elif name in ("yaml.load", "yaml.load_all"):
      loader = _keyword(node, "Loader")
      loader_name = _dotted(loader, aliases) if isinstance(loader, ast.AST) else None
      (safe if loader_name in ("yaml.SafeLoader", "yaml.CSafeLoader") else findings).append(where)
    elif name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "pandas.read_pickle"):
      findings.append(where)
    elif name == "torch.load":
      (safe if _keyword(node, "weights_only") is True else findings).append(where)
    elif name and name.rpartition(".")[2] in STDLIB_XML_PARSERS.get(name.rpartition(".")[0], ()):
      findings.append(where)
    elif (
      name
      and name.startswith("defusedxml.")
      and name.rpartition(".")[2] in ("parse", "fromstring", "iterparse", "XML", "parseString")
    ):
      strict = (
        _keyword(node, "forbid_dtd") is True
        and _keyword(node, "forbid_entities") is not False
        and _keyword(node, "forbid_external") is not False
      )
      (safe if strict else findings).append(where)
  return findings, safe


@pytest.mark.parametrize(
  "source, finding",
  [
    ("import pickle\npickle.loads(b'')", "import pickle"),
    ("from joblib import load\nload('x')", "from joblib"),
    ("import numpy as np\nnp.load('x.npz')", "numpy.load"),
    ("import numpy\nnumpy.load('x.npy', allow_pickle=True)", "allow_pickle=True"),
    ("from numpy import load\nflag = True\nload('x', allow_pickle=flag)", "allow_pickle=flag"),
    ("import yaml\nyaml.load(open('c.yaml'))", "yaml.load"),
    ("import yaml\nyaml.load(text, Loader=yaml.FullLoader)", "yaml.load"),
    ("x = eval(open('c').read())", "eval"),
    ("exec(code)", "exec"),
    ("import torch\ntorch.load('w.pt')", "torch.load"),
    ("import xml.etree.ElementTree as ET\nET.parse('a.xml')", "xml.etree.ElementTree.parse"),
    ("from xml.dom import minidom\nminidom.parseString(data)", "xml.dom.minidom.parseString"),
    ("import defusedxml.ElementTree as D\nD.fromstring(data)", "defusedxml.ElementTree.fromstring"),
    ("import defusedxml.ElementTree as D\nD.parse(p, forbid_dtd=True, forbid_entities=False)", "defusedxml"),
  ],
)
def test_scanner_finds_unsafe_loading(source, finding):
  findings, _ = unsafe_loading(source)
  assert any(finding in f for f in findings), findings


def test_scanner_accepts_safe_loading():
  source = (
    "import numpy as np, yaml, torch\nimport defusedxml.ElementTree as D\n"
    "np.load('x.npz', allow_pickle=False)\nyaml.load(t, Loader=yaml.SafeLoader)\n"
    "torch.load('w.pt', weights_only=True)\nD.fromstring(b, forbid_dtd=True, forbid_entities=True)\n"
    "model.eval()\nre.compile('x')\n"
  )
  findings, safe = unsafe_loading(source)
  assert findings == [] and len(safe) == 4


def test_nothing_loaded_from_disk_is_unpickled_or_evaluated():
  files = sorted(p for folder in SCANNED for p in (REPO / folder).rglob("*.py"))
  assert len(files) > 40
  findings, safe = [], []
  for path in files:
    found, ok = unsafe_loading(path.read_text())
    findings += [f"{path.relative_to(REPO)} {f}" for f in found]
    safe += [f"{path.relative_to(REPO)} {s}" for s in ok]
  assert not findings, "\n".join(findings)
  # The scan did see the code's real loads: the dataset cache, synthetic sets and VOC annotations.
  for expected in ("vaeaug/data/pipeline.py", "vaeaug/synthesis.py", "vaeaug/data/voc.py"):
    assert any(s.startswith(expected) for s in safe), (expected, safe)


def test_a_saved_loop_record_is_the_one_at_save_time(tmp_path):
  """Saves finish in the background: the loop's record, changed right after a save (as the loop does
  at the next epoch end), must not leak into that checkpoint."""
  state, best = {"w": jnp.zeros(3)}, {"w": jnp.ones(3)}
  record = {"epochs_done": 2, "history": [{"epoch": 1}], "finished": False}
  checkpointer = checkpoints.Checkpointer(tmp_path / "checkpoints")
  checkpointer.save(8, state, best, record)
  record["epochs_done"] = 3
  record["history"].append({"epoch": 2})
  record["finished"] = True
  checkpointer.close()
  checkpointer = checkpoints.Checkpointer(tmp_path / "checkpoints")
  step, _, _, restored = checkpointer.restore_latest(state, best)
  checkpointer.close()
  assert step == 8 and restored == {"epochs_done": 2, "history": [{"epoch": 1}], "finished": False}
