"""One set-up for every training run (`vaeaug.training.run`): the real subset (n_per_class, data_seed),
the mesh, batch and steps, and the compare config's shared fields reaching every cell's training."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from classifiers import train as classifier_train
from experiments import sweep
from experiments.configs import classifier as classifier_config
from experiments.configs import compare as compare_config
from vaeaug import generators
from vaeaug.data import pipeline
from vaeaug.training import run

REPO = Path(__file__).resolve().parents[1]
DATASET = "face_mask_detection/2classes"
ZERO_MESSAGE = "n_per_class: 0 is not a size; use None for all training images"


def synthetic_split(per_class: int, image_size: int, seed: int) -> pipeline.ArrayDataset:
  """Two classes told apart by a bright square; distinct file names, so subsets can be compared."""
  labels = np.repeat(np.arange(2, dtype=np.int32), per_class)
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 60, (len(labels), image_size, image_size, 3)).astype(np.uint8)
  images[labels == 1, image_size // 4 : -image_size // 4, image_size // 4 : -image_size // 4] += 150
  files = np.asarray([f"split{seed}/{i}.png" for i in range(len(labels))])
  return pipeline.ArrayDataset(
    images=images, labels=labels, files=files, groups=files, class_names=("with_mask", "without_mask")
  )


def fake_load_splits(name, splits=("train", "validation", "test"), *, image_size=64, **kwargs):
  """Stands in for `pipeline.load_splits` (same signature): no built dataset needed."""
  sizes = {"train": 20, "validation": 8, "test": 8}
  return {split: synthetic_split(sizes[split], image_size, seed) for seed, split in enumerate(splits)}


def parse_compare(*overrides: str):
  """The compare config as `python -m experiments.compare --config=...:tiny OVERRIDES` parses it."""
  config_file = f"{REPO / 'experiments/configs/compare.py'}:tiny"
  argv = ["compare", f"--config={config_file}", *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", config_file, "", flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def files(dataset: pipeline.ArrayDataset) -> list[str]:
  return dataset.files.tolist()


# ----------------------------------------------------------------------------- n_per_class


def test_none_is_all_images_and_zero_is_rejected_with_one_line(monkeypatch):
  train = synthetic_split(20, 8, 0)
  config = classifier_config.get_config()
  assert config.n_per_class is None and run.real_train(train, config) is train
  config.n_per_class = 5
  assert run.real_train(train, config).class_counts().tolist() == [5, 5]
  for bad in (0, -3, True, "all"):
    with pytest.raises(ValueError, match="is not a size; use None for all training images"):
      run.check_n_per_class(bad)
  with pytest.raises(ValueError) as error:
    run.check_n_per_class(0)
  assert str(error.value) == ZERO_MESSAGE

  # The entry points reject it before reading any data.
  def must_not_load(*args, **kwargs):
    raise AssertionError("data loaded for an invalid n_per_class")

  monkeypatch.setattr(pipeline, "load_splits", must_not_load)
  config.n_per_class = 0
  for load in (classifier_train.load_data, generators.load_data):
    with pytest.raises(ValueError, match=ZERO_MESSAGE):
      load(config)


def test_compare_grid_takes_none_for_all_and_rejects_zero():
  config = parse_compare("--config.n_per_class=(12,None)")
  assert tuple(config.n_per_class) == (12, None)
  cells = sweep.cells_of(config)
  assert {c.n_per_class for c in cells} == {12, None} and any("|n=all|" in c.key for c in cells)
  config.n_per_class = (12, 0)
  with pytest.raises(ValueError) as error:
    sweep.cells_of(config)
  assert str(error.value) == ZERO_MESSAGE
  for preset in ("default", "full", "gpu", "tiny"):
    assert 0 not in compare_config.get_config(preset).n_per_class


# ----------------------------------------------------------------------------- the real subset


def test_sweep_and_standalone_runs_draw_the_same_subset_and_honour_data_seed(monkeypatch, tmp_path):
  monkeypatch.setattr(pipeline, "load_splits", fake_load_splits)
  train = fake_load_splits(DATASET, ("train",), image_size=16)["train"]
  config = compare_config.get_config("tiny")
  config.data_seed = 7
  runner = sweep.Sweep(config, tmp_path, stream=open(os.devnull, "w"))
  seven, zero = files(pipeline.subsample(train, 12, 7)), files(pipeline.subsample(train, 12, 0))
  assert seven != zero
  # data_seed fixes the subset for every seed; the cell's configs (as a standalone trainer loads them) agree.
  assert files(runner.real_train(DATASET, 12, 0)) == files(runner.real_train(DATASET, 12, 1)) == seven
  cell = sweep.cells_of(config)[0]
  standalone = classifier_train.load_data(sweep.classifier_config(config, cell, 64))
  assert files(standalone.train) == seven and standalone.test is not None
  generator = generators.load_data(sweep.generator_config(config, *cell.group, "cvae", 64))
  assert files(generator.train) == seven and generator.test is None  # a generator never reads test

  config.data_seed = None  # each seed its own subset
  runner = sweep.Sweep(config, tmp_path, stream=open(os.devnull, "w"))
  assert files(runner.real_train(DATASET, 12, 0)) == zero
  assert files(runner.real_train(DATASET, 12, 1)) == files(pipeline.subsample(train, 12, 1))
  assert files(runner.real_train(DATASET, None, 1)) == files(train)


# ----------------------------------------------------------------------------- mesh, batch, steps


def test_plan_fits_the_batch_to_the_training_set():
  config = classifier_config.get_config()
  config.batch_size = 32
  setup = run.plan(config, 100)
  assert (setup.mesh.devices.size, setup.batch_size, setup.steps_per_epoch) == (len(jax.devices()), 32, 3)
  small = run.plan(config, 21)  # fewer images than a batch: one batch of all of them
  assert (small.batch_size, small.steps_per_epoch) == (21 - 21 % small.mesh.devices.size, 1)


# ----------------------------------------------------------------------------- shared compare fields


def test_shared_overrides_reach_both_nested_configs_and_every_cell():
  config = parse_compare(
    "--config.image_size=24", "--config.data_dir=/elsewhere", "--config.data_seed=5", "--config.num_devices=1"
  )
  config.generator.log_every_steps = 4  # the nested field is the shared one: set anywhere, set everywhere
  expected = {"image_size": 24, "data_dir": "/elsewhere", "data_seed": 5, "num_devices": 1, "log_every_steps": 4}
  assert {key: config[key] for key in expected} == expected
  for nested in (config.classifier, config.generator):
    assert {key: nested[key] for key in expected} == expected
    for key in compare_config.SHARED_FIELDS:
      assert nested.get_ref(key) is config.get_ref(key), key
  cell = sweep.cells_of(config)[0]
  for sub in (sweep.classifier_config(config, cell, 64), sweep.generator_config(config, *cell.group, "cvae", 64)):
    recorded = json.loads(sub.to_json())  # what cells.jsonl and the run's config.json hold
    assert {key: recorded[key] for key in expected} == expected
    assert (recorded["dataset"], recorded["seed"], recorded["n_per_class"]) == (cell.dataset, cell.seed, 12)


def test_config_hash_of_the_committed_results_is_unchanged():
  # experiments/results/full/cells.jsonl is keyed by this hash: a change would orphan every cell.
  # (at the dataset version they were recorded with: the rebuilt splits hash differently)
  for preset, recorded in (("full", "7619e9a3df"), ("default", "b378ce168f")):
    config = compare_config.get_config(preset)
    config.dataset_version = "1.0.0"
    config.synthesis.update(placement="mixed", class_proportions="equal")  # the v1 protocol (full sets it)
    assert sweep.config_hash(config) == recorded
  base = sweep.config_hash(parse_compare())
  assert sweep.config_hash(parse_compare("--config.num_devices=1", "--config.data_dir=/x")) == base  # how, not what
  for override in (
    "--config.image_size=24",
    "--config.data_seed=5",
    "--config.compute_dtype=bfloat16",
    "--config.dataset_version=1.0.0",
  ):
    assert sweep.config_hash(parse_compare(override)) != base, override


_MESH_RUN = textwrap.dedent("""
  import json, sys
  sys.path.insert(0, {tests!r})
  import jax
  import test_run_setup
  from experiments import sweep
  from vaeaug.data import pipeline
  from vaeaug.training import loop

  config = test_run_setup.parse_compare(
    "--config.num_devices=1",
    "--config.arms=('cvae',)",
    "--config.num_seeds=1",
    "--config.compilation_cache_dir=",
    "--config.quality.enabled=True",
    "--config.quality.cas=True",
  )
  pipeline.load_splits = test_run_setup.fake_load_splits
  meshes, real_fit = [], loop.fit
  def fit(*args, **kwargs):
    meshes.append([args[2].__module__, kwargs["mesh"].devices.size])  # the evaluate closure's trainer
    return real_fit(*args, **kwargs)
  loop.fit = fit
  (record,) = sweep.Sweep(config, {workdir!r}, stream=sys.stderr).run().values()
  print(json.dumps({{"devices": len(jax.devices()), "meshes": meshes, "record": record}}))
""")


def test_num_devices_on_compare_reaches_every_cells_training_mesh(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  code = _MESH_RUN.format(tests=str(REPO / "tests"), workdir=str(tmp_path))
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.splitlines()[-1])
  assert out["devices"] == 2  # without the override each run would take both
  # the cell's classifier, its quality's feature space and CAS classifiers, and the generator
  assert sorted(out["meshes"]) == [["classifiers.train", 1]] * 3 + [["vaeaug.generators", 1]]
  assert out["record"]["classifier_config"]["num_devices"] == 1
  assert out["record"]["generator_config"]["num_devices"] == 1
