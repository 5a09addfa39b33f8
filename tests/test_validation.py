"""A bad config is refused before any work: one `error:` line naming the field, the value and the allowed
values, exit 2, no traceback and no workdir (experiments/validation.py, vaeaug/cli.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import validation
from experiments.configs import classifier as classifier_configs
from experiments.configs import compare as compare_configs
from experiments.configs import generator as generator_configs
from vaeaug.data import sources

BIN = Path(sys.executable).parent


def run(args, cwd: Path) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed package only
  env.update(JAX_PLATFORMS="cpu")
  return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def refused(out: subprocess.CompletedProcess, workdir: Path) -> str:
  """The one error line of a command refused before any work."""
  assert out.returncode == 2, out.stderr[-2000:]
  assert "Traceback" not in out.stderr and out.stdout == ""
  (line,) = out.stderr.strip().splitlines()
  assert line.startswith("error: ")
  assert not workdir.exists()
  return line


def data_dir_flags(detection_built) -> list[str]:
  return [f"--config.data_dir={detection_built}"] if detection_built else []


# ----------------------------------------------------------------------------- the commands


@pytest.mark.parametrize("config_flag", [[], ["--config=compare:tiny"]])
def test_an_unknown_field_is_one_line_with_the_close_names(config_flag, tmp_path):
  # Without --config the default config takes its overrides as the flag is defined (at import), with
  # --config while the command line is parsed: both are one line.
  workdir = tmp_path / "w"
  out = run([BIN / "vaeaug-compare", *config_flag, f"--workdir={workdir}", "--config.classifier.modle=cnn96"], tmp_path)
  line = refused(out, workdir)
  assert line == (
    "error: --config.classifier.modle: no such field in this config (did you mean --config.classifier.model?)"
  )
  out = run([BIN / "vaeaug-compare", *config_flag, f"--workdir={workdir}", "--config.epochs=1"], tmp_path)
  assert refused(out, workdir).startswith("error: --config.epochs: no such field in this config")


def test_a_misspelt_second_dataset_fails_before_the_first_cell(detection_built, tmp_path):
  workdir = tmp_path / "w"
  datasets = '--config.datasets=("face_mask_detection/2classes","face_mask_12k/grouped")'
  args = [BIN / "vaeaug-compare", "--config=compare:tiny", f"--workdir={workdir}", datasets]
  line = refused(run(args + data_dir_flags(detection_built), tmp_path), workdir)
  assert line.startswith("error: config.datasets[1]: 'face_mask_12k/grouped' is not a dataset; choose from ")
  assert "face_mask12k/grouped" in line
  assert not (workdir / "runs").exists() and not (workdir / "cells.jsonl").exists()


@pytest.mark.parametrize(
  "override, expected",
  [
    ("--config.num_seeds=0", "error: config.num_seeds: 0 is not a number of seeds (1 or more)"),
    (
      "--config.n_per_class=(12,12)",
      "error: config.n_per_class: 12 is listed twice; give each size once (the same cells would run twice)",
    ),
  ],
)
def test_compare_refuses_a_bad_grid(override, expected, detection_built, tmp_path):
  workdir = tmp_path / "w"
  args = [BIN / "vaeaug-compare", "--config=compare:tiny", f"--workdir={workdir}", override]
  assert refused(run(args + data_dir_flags(detection_built), tmp_path), workdir) == expected
  # --tables_only checks the grid too, before it looks for cells.jsonl.
  assert refused(run(args + ["--tables_only"], tmp_path), workdir) == expected


def test_train_classifier_refuses_n_per_class_zero(detection_built, tmp_path):
  workdir = tmp_path / "c"
  args = [BIN / "vaeaug-train-classifier", f"--workdir={workdir}", "--config.n_per_class=0"]
  line = refused(run(args + data_dir_flags(detection_built), tmp_path), workdir)
  assert line == "error: config.n_per_class: 0 is not a size; use None for all training images"


# ----------------------------------------------------------------------------- the validation functions


def problems_of(validate, config, **kwargs) -> list[str]:
  with pytest.raises(validation.ConfigError) as raised:
    validate(config, **kwargs)
  assert str(raised.value) == "\n".join(raised.value.problems)
  return raised.value.problems


@pytest.fixture
def tiny(detection_built):
  config = compare_configs.get_config("tiny")
  config.data_dir = detection_built
  return config


def test_the_packaged_configs_pass(tiny, detection_built):
  validation.validate_compare_config(tiny)
  tiny.classifier.model = "mobilenet_v3_small"  # the ImageNet architectures are classifiers of the sweep too
  validation.validate_compare_config(tiny)
  for preset in ("default", "full", "gpu"):  # other datasets need not be built: only their grid
    validation.validate_compare_config(compare_configs.get_config(preset), grid_only=True)
  classifier = classifier_configs.get_config()
  classifier.data_dir = detection_built
  validation.validate_classifier_config(classifier)
  generator = generator_configs.get_config()
  generator.data_dir = detection_built
  validation.validate_generator_config(generator)


@pytest.mark.parametrize(
  "field, value, expected",
  [
    ("generator.optimizer", "adamm", "config.generator.optimizer: 'adamm' is not an optimizer; choose from adadelta, "),
    ("classifier.model", "resnet19", "config.classifier.model: 'resnet19' is not a model; choose from cnn, cnn96, "),
    ("classifier.schedule", "cosin", "config.classifier.schedule: 'cosin' is not a schedule; choose from constant, "),
    ("classifier.batch_size", 0, "config.classifier.batch_size: 0 is not a positive integer"),
    ("generator.noise.kind", "blur", "config.generator.noise.kind: 'blur' is not a noise kind; choose from "),
    ("generator.likelihood", "poisson", "config.generator.likelihood: 'poisson' is not a likelihood; choose from "),
    (
      "synthesis.vae_sampler",
      "prior",
      "config.synthesis.vae_sampler: 'prior' is not a sampler for vae; choose from counterfactual, gmm, ",
    ),
    (
      "arms",
      ("none", "dea"),
      "config.arms[1]: unknown arm 'dea': use none, or classic, mixup and at most one SOURCE[:SAMPLER] ",
    ),
    ("arms", ("none", "pool_cvae"), "config.arms[1]: unknown arm 'pool_cvae': the pool has no labels, so a "),
    ("arms", ("none", "none"), "config.arms: 'none' is listed twice; give each arm once"),
    ("classic_augment", "strong", "config.classic_augment: 'strong' is not an augment preset; choose from "),
    ("image_size", 0, "config.image_size: 0 is not a positive integer"),
    ("n_per_class", (0,), "config.n_per_class[0]: 0 is not a size; use None for all training images"),
    ("num_seeds", 0, "config.num_seeds: 0 is not a number of seeds (1 or more)"),
    ("cross_test_datasets", ("nope/x",), "config.cross_test_datasets[0]: 'nope/x' is not a dataset; choose from "),
    # any registry model is a sweep's classifier, checked at the sweep's image size (tiny: 16 px)
    ("classifier.model", "inception_v3", "config.classifier.model: 'inception_v3' at image_size 16: InceptionV3 "),
  ],
)
def test_a_bad_compare_field_is_named_with_its_value(tiny, field, value, expected):
  tiny.arms = ("none", "classic", "vae", "classic+cvae")  # every generator kind's fields are in use
  *parents, name = field.split(".")
  holder = tiny
  for parent in parents:
    holder = holder[parent]
  holder[name] = value
  (problem,) = problems_of(validation.validate_compare_config, tiny)
  assert problem.startswith(expected), problem


def test_every_problem_is_reported_one_per_line(tiny):
  tiny.classifier.model, tiny.num_seeds, tiny.n_per_class = "resnet19", 0, (12, 12)
  problems = problems_of(validation.validate_compare_config, tiny)
  assert [p.partition(":")[0] for p in problems] == [
    "config.n_per_class",
    "config.num_seeds",
    "config.classifier.model",
  ]


def test_an_unbuilt_dataset_says_how_to_build_it(tiny, tmp_path):
  tiny.data_dir = str(tmp_path / "empty")
  (problem,) = problems_of(validation.validate_compare_config, tiny)
  assert problem.startswith("config.datasets[0]: dataset face_mask_detection/2classes is not built in ")
  assert "vaeaug-prepare --datasets=face_mask_detection --configs=2classes" in problem
  # --tables_only reads no data: the grid alone is checked.
  validation.validate_compare_config(tiny, grid_only=True)


def test_the_sweep_own_rules_are_config_errors(tiny):
  tiny.synthesis.filter_tau, tiny.arms = 0.5, ("cvae",)
  (problem,) = problems_of(validation.validate_compare_config, tiny)
  assert problem.startswith("config: synthesis.filter_tau(s) > 0 filter with each cell's 'none' classifier")
  tiny.synthesis.filter_tau, tiny.arms = 0.0, ("classic", "pool_rvae:counterfactual")
  (problem,) = problems_of(validation.validate_compare_config, tiny)
  assert problem.startswith("config: pool_rvae:counterfactual keep what each cell's 'none' classifier agrees")


def test_a_pool_generator_config_is_checked_like_the_others(tiny):
  tiny.arms = ("none", "pool_rvae")
  tiny.pool_generator.likelihood = "poisson"
  (problem,) = problems_of(validation.validate_compare_config, tiny)
  assert problem.startswith("config.pool_generator.likelihood: 'poisson' is not a likelihood")
  generator = generator_configs.get_config("pool")
  generator.model, generator.n_per_class = "rcvae", 10
  assert problems_of(validation.validate_generator_config, generator) == [
    "config.dataset: the pool has no labels; a conditional kind (rcvae) cannot train on it",
    "config.n_per_class: the pool is unlabeled; leave n_per_class None",
  ]


def test_standalone_trainer_configs(detection_built):
  classifier = classifier_configs.get_config()
  classifier.data_dir, classifier.augment, classifier.head = detection_built, "keras2", "sigmoid"
  assert problems_of(validation.validate_classifier_config, classifier) == [
    "config.head: 'sigmoid' is not a head; choose from auto, binary, softmax",
    "config.augment: 'keras2' is not an augment preset; choose from flip, keras, none, standard",
  ]
  generator = generator_configs.get_config()
  generator.data_dir, generator.model, generator.upsample = detection_built, "gan", "nearest"
  assert problems_of(validation.validate_generator_config, generator) == [
    "config.model: 'gan' is not a generator kind; choose from cvae, dae, rcvae, rvae, vae",
    "config.upsample: 'nearest' is not an upsample mode; choose from resize, subpixel, transpose",
  ]


@pytest.mark.parametrize(
  "overrides, expected",
  [
    (
      {"model": "cnn_lenet4", "image_size": 8},
      "config.model: 'cnn_lenet4' at image_size 8: image_size=8 is too small for these conv blocks",
    ),
    (
      {"model": "resnet18", "model_overrides": {"width": 2}},
      "config.model: 'resnet18' at image_size 64: unknown option(s) ['width']",
    ),
    ({"freeze": "backbone"}, "config.freeze: 'backbone' freezes a pretrained backbone; set config.pretrained"),
    ({"freeze": "top"}, "config.freeze: 'top' is not a freeze mode; choose from backbone, none"),
  ],
)
def test_classifier_model_problems_before_any_work(detection_built, overrides, expected):
  """The model is built (abstractly) and traced at the config's image size during validation."""
  config = classifier_configs.get_config()
  config.data_dir = detection_built
  config.update(overrides)
  problems = problems_of(validation.validate_classifier_config, config)
  assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_a_dataset_version_that_is_not_built_or_not_a_version_is_named(tiny):
  tiny.dataset_version = "0.9.0"
  (problem,) = problems_of(validation.validate_compare_config, tiny)
  assert problem.startswith("config.datasets[0]: dataset face_mask_detection/2classes version 0.9.0 is not built in ")
  tiny.dataset_version = "new"
  (problem,) = problems_of(validation.validate_compare_config, tiny)
  assert problem == f"config.dataset_version: 'new' is not a version such as {sources.DATA_VERSION!r}"
  classifier = classifier_configs.get_config()
  classifier.data_dir, classifier.dataset_version = tiny.data_dir, "0.9.0"
  (problem,) = problems_of(validation.validate_classifier_config, classifier, data_cache={})
  assert problem.startswith("config.dataset: dataset face_mask_detection/2classes version 0.9.0 is not built")
