"""Checks of a whole resolved config before any work, against the registries the code already has.

Each check returns every problem it finds; a `ConfigError` carries them all, one line each
(`config.classifier.model: 'resnet19' is not a model; choose from cnn96, cnn_bn3, ...`), and the entry
points print each line as `error: <line>` and exit 2 before anything is written.
"""

from __future__ import annotations

import collections
import re

from classifiers import models as classifier_models
from classifiers import transfer
from experiments import arms as arms_lib
from experiments import sweep as sweep_lib
from experiments.configs import compare as compare_configs
from vaeaug import generators, kinds
from vaeaug.data import augment, pipeline, sources
from vaeaug.models import autoencoders, layers, noise
from vaeaug.training import run, state

_VERSION = re.compile(r"\d+\.\d+\.\d+")


class ConfigError(ValueError):
  """A config that cannot run; `problems` holds one line per bad field (the message joins them)."""

  def __init__(self, problems: list[str]):
    self.problems = list(problems)
    super().__init__("\n".join(self.problems))


# Fields the sweep sets per cell (dataset, n_per_class, seed, augment) or shares from the top level
# (checked there once): the nested configs' own values of these are never used as they stand.
_PER_CELL_FIELDS = ("dataset", "n_per_class", "seed", "augment")


def validate_classifier_config(config, *, prefix: str = "config", skip=(), data_cache: dict | None = None) -> None:
  """ConfigError unless `config` (experiments/configs/classifier.py) can train: known and built
  dataset, model, head, optimizer, schedule, augment preset, normalization, dtype and sizes."""
  _raise(_classifier_problems(config, _Checker(prefix, skip, data_cache)))


def validate_generator_config(config, *, prefix: str = "config", skip=(), data_cache: dict | None = None) -> None:
  """ConfigError unless `config` (experiments/configs/generator.py) can train: known and built
  dataset, autoencoder kind, noise kind, likelihood, upsampling, optimizer, schedule and sizes."""
  _raise(_generator_problems(config, _Checker(prefix, skip, data_cache)))


def validate_compare_config(config, *, grid_only: bool = False) -> None:
  """ConfigError unless every cell of the sweep `config` (experiments/configs/compare.py) can run:
  the grid (datasets, n_per_class without repeats, arms, seeds), the synthesis samplers, and the
  nested classifier and generator configs as each cell gets them. `grid_only` (`--tables_only`): the
  grid fields alone, and the datasets known but not necessarily built."""
  check = _Checker("config", (), None if grid_only else {})
  problems = _grid_problems(config, check)
  if not grid_only:
    problems += _sweep_problems(config, check)
  if not problems:
    try:  # what the sweep itself refuses (e.g. filter_tau without the 'none' arm)
      sweep_lib.cells_of(config)
    except ValueError as error:
      problems.append(f"config: {error}")
  _raise(problems)


# ----------------------------------------------------------------------------- the checks


def _raise(problems: list[str]) -> None:
  if problems:
    raise ConfigError(list(dict.fromkeys(problems)))


def _names(values) -> str:
  return ", ".join(map(str, values))


def known_datasets() -> list[str]:
  """`dataset/config` names of the datasets vaeaug-prepare builds."""
  from vaeaug.data import building  # deferred: imports TFDS

  return [f"{name}/{config}" for name in sources.RAW_FOLDERS for config in building.all_configs(name)]


class _Checker:
  """Problem lines for fields under `prefix` (fields in `skip` are not checked). `data_cache` maps a
  (dataset, data_dir) to its problem (None when built); None there: whether it is built is not checked."""

  def __init__(self, prefix: str, skip=(), data_cache: dict | None = None):
    self.prefix, self.skip, self.data_cache = prefix, set(skip), data_cache
    self._known = None

  def path(self, field: str) -> str:
    return f"{self.prefix}.{field}"

  def wanted(self, config, field: str) -> bool:
    return field not in self.skip and field in config

  def choice(self, config, field: str, choices, what: str, *, key=lambda v: v) -> list[str]:
    if not self.wanted(config, field):
      return []
    value = config[field]
    if isinstance(value, str) and key(value) in choices:
      return []
    return [f"{self.path(field)}: {value!r} is not {what}; choose from {_names(sorted(choices))}"]

  def positive(self, config, field: str, what: str = "a positive integer") -> list[str]:
    if not self.wanted(config, field):
      return []
    value = config[field]
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
      return []
    return [f"{self.path(field)}: {value!r} is not {what}"]

  def nonnegative(self, config, field: str, what: str = "a number >= 0") -> list[str]:
    if not self.wanted(config, field):
      return []
    value = config[field]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
      return []
    return [f"{self.path(field)}: {value!r} is not {what}"]

  def n_per_class(self, path: str, value) -> list[str]:
    try:
      run.check_n_per_class(value)
    except ValueError as error:
      return [f"{path}: {str(error).partition(': ')[2]}"]
    return []

  def dataset(self, path: str, name, data_dir, version=None) -> list[str]:
    if self._known is None:
      self._known = known_datasets()
    if not isinstance(name, str) or name not in self._known:
      return [f"{path}: {name!r} is not a dataset; choose from {_names(self._known)}"]
    if version is not None and (not isinstance(version, str) or not _VERSION.fullmatch(version)):
      return [f"config.dataset_version: {version!r} is not a version such as {sources.DATA_VERSION!r}"]
    if self.data_cache is None:
      return []
    key = (name, data_dir, version)
    if key not in self.data_cache:
      try:
        # Opens the built split's files (reads no image); says how to build a missing one.
        sources.data_source(sources.versioned(name, version), "train", data_dir)
        self.data_cache[key] = None
      except FileNotFoundError as error:
        self.data_cache[key] = str(error)
    problem = self.data_cache[key]
    return [f"{path}: {problem}"] if problem else []


def _common_problems(config, check: _Checker, *, pool_ok: bool = False) -> list[str]:
  """The fields every trainer shares (experiments/configs/default.py); `pool_ok`: the unlabeled face pool
  is a dataset too (generators)."""
  problems = []
  if check.wanted(config, "dataset") and not (pool_ok and config.dataset == generators.POOL_DATASET):
    problems += check.dataset(
      check.path("dataset"), config.dataset, config.get("data_dir"), config.get("dataset_version")
    )
  if check.wanted(config, "n_per_class"):
    problems += check.n_per_class(check.path("n_per_class"), config.n_per_class)
  for field in ("image_size", "batch_size", "eval_batch_size", "epochs"):
    problems += check.positive(config, field)
  problems += check.choice(config, "normalization", pipeline._NORMALIZATIONS, "a normalization")
  problems += check.choice(config, "optimizer", state.OPTIMIZERS, "an optimizer")
  problems += check.choice(config, "schedule", state.SCHEDULES, "a schedule")
  problems += check.choice(config, "compute_dtype", layers.COMPUTE_DTYPES, "a compute dtype")
  return problems


def _classifier_problems(config, check: _Checker) -> list[str]:
  problems = _common_problems(config, check)
  problems += check.choice(
    config, "model", classifier_models.MODELS, "a model", key=lambda name: name.lower().replace("-", "_")
  )
  problems += check.choice(config, "head", classifier_models.HEADS, "a head")
  problems += check.choice(config, "freeze", transfer.FREEZE_MODES, "a freeze mode")
  problems += check.nonnegative(config, "unfreeze_blocks", "an integer >= 0")
  problems += check.nonnegative(config, "backbone_learning_rate_scale")
  problems += check.nonnegative(config, "mixup_alpha")
  if check.wanted(config, "freeze") and config.freeze in transfer.FREEZE_MODES[1:] and not config.get("pretrained"):
    problems.append(f"{check.path('freeze')}: {config.freeze!r} freezes a pretrained backbone; set config.pretrained")
  if check.wanted(config, "augment") and isinstance(config.augment, str):  # a dict is an AugmentConfig
    problems += check.choice(config, "augment", augment.PRESETS, "an augment preset")
  if not problems and check.wanted(config, "model"):
    problems += _model_problems(config, check)
  return problems


def _model_problems(config, check: _Checker) -> list[str]:
  """The model built with its options (abstractly: no parameter is initialised) and run on one image of
  `image_size` (traced, not computed): catches bad options, and a map that collapses before the head
  (e.g. Inception's ImageNet stem at 32 px) before any data is read."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  size = config.get("image_size")
  if not isinstance(size, int) or isinstance(size, bool) or size < 1:
    return []  # reported by _common_problems
  try:
    model = nnx.eval_shape(
      lambda: classifier_models.create_model(
        config.model,
        2,
        rngs=nnx.Rngs(0),
        head=config.get("head", "auto"),
        image_size=size,
        **dict(config.get("model_overrides", {})),
      )
    )
    graphdef, variables = nnx.split(model)
    jax.eval_shape(
      lambda v, x: nnx.merge(graphdef, v)(x, train=False),
      variables,
      jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
    )
  except (ValueError, TypeError) as error:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return [f"{check.path('model')}: {config.model!r} at image_size {size}: {first}"]
  return []


def _generator_problems(config, check: _Checker) -> list[str]:
  problems = _common_problems(config, check, pool_ok=True)
  problems += check.choice(config, "model", kinds.names(), "a generator kind")
  if check.wanted(config, "dataset") and config.get("dataset") == generators.POOL_DATASET:
    if config.get("model") in kinds.names() and kinds.get(config.model).conditional:
      problems.append(
        f"{check.path('dataset')}: the pool has no labels; a conditional kind ({config.model}) cannot train on it"
      )
    if config.get("n_per_class") is not None:
      problems.append(f"{check.path('n_per_class')}: the pool is unlabeled; leave n_per_class None")
  if "free_bits" in config:
    problems += check.nonnegative(config, "free_bits")
  problems += check.choice(config, "likelihood", autoencoders.LIKELIHOODS, "a likelihood")
  problems += check.choice(config, "upsample", autoencoders.UPSAMPLE_MODES, "an upsample mode")
  problems += check.positive(config, "latent_dim")
  if "noise" in config and "noise" not in check.skip:
    problems += _Checker(check.path("noise")).choice(config.noise, "kind", noise.NOISE_KINDS, "a noise kind")
  return problems


def _arm_names() -> list[str]:
  return arms_lib.example_names()


def _repeats(values) -> list:
  return [value for value, count in collections.Counter(values).items() if count > 1]


def _sequence(config, field: str, check: _Checker, *, empty_ok: bool = False) -> tuple[list, list[str]]:
  value = config[field]
  if isinstance(value, (list, tuple)) and (value or empty_ok):
    return list(value), []
  return [], [f"{check.path(field)}: {value!r} is not a non-empty tuple"]


def _grid_problems(config, check: _Checker) -> list[str]:
  """datasets, n_per_class, arms, seeds and cross_test_datasets of a sweep config."""
  data_dir = config.get("data_dir")
  problems = []
  for field, empty_ok in (("datasets", False), ("cross_test_datasets", True)):
    values, bad = _sequence(config, field, check, empty_ok=empty_ok)
    problems += bad
    for i, name in enumerate(values):
      problems += check.dataset(f"config.{field}[{i}]", name, data_dir, config.get("dataset_version"))
    problems += [f"config.{field}: {v!r} is listed twice; give each dataset once" for v in _repeats(values)]
  sizes, bad = _sequence(config, "n_per_class", check)
  problems += bad
  for i, n in enumerate(sizes):
    problems += check.n_per_class(f"config.n_per_class[{i}]", n)
  problems += [
    f"config.n_per_class: {n!r} is listed twice; give each size once (the same cells would run twice)"
    for n in _repeats(sizes)
  ]
  arms, bad = _sequence(config, "arms", check)
  problems += bad
  for i, arm in enumerate(arms):
    try:
      arms_lib.Arm.parse(arm)
    except ValueError as error:
      problems.append(f"config.arms[{i}]: {error}")
    except (AttributeError, TypeError):
      problems.append(f"config.arms[{i}]: {arm!r} is not an arm; choose from {_names(_arm_names())}")
  problems += [f"config.arms: {arm!r} is listed twice; give each arm once" for arm in _repeats(arms)]
  problems += check.positive(config, "num_seeds", "a number of seeds (1 or more)")
  if not isinstance(config.first_seed, int) or isinstance(config.first_seed, bool) or config.first_seed < 0:
    problems.append(f"config.first_seed: {config.first_seed!r} is not a seed (an integer >= 0)")
  return problems


def _positive_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _sweep_problems(config, check: _Checker) -> list[str]:
  """Everything but the grid: sizes, classic augment, samplers, and the nested configs as cells get them."""
  problems = check.positive(config, "image_size") + check.positive(config, "min_epoch_size")
  problems += check.choice(config, "classic_augment", augment.PRESETS, "an augment preset")
  synth = _Checker("config.synthesis")
  for kind in kinds.names():
    if f"{kind}_sampler" in config.synthesis:
      problems += synth.choice(config.synthesis, f"{kind}_sampler", kinds.get(kind).samplers, f"a sampler for {kind}")
  ratios = config.synthesis.synthetic_ratios
  if (
    not isinstance(ratios, (list, tuple))
    or not ratios
    or any(not isinstance(r, (int, float)) or r <= 0 for r in ratios)
  ):
    problems.append(f"config.synthesis.synthetic_ratios: {ratios!r} is not a non-empty tuple of positive ratios")
  problems += synth.choice(config.synthesis, "placement", ("on_top", "mixed"), "a placement")
  problems += synth.choice(config.synthesis, "class_proportions", ("real", "equal"), "a class proportion rule")
  taus = config.synthesis.get("filter_taus", ())
  if not isinstance(taus, (list, tuple)) or any(
    isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < 1 for t in taus
  ):
    problems.append(f"config.synthesis.filter_taus: {taus!r} is not a tuple of thresholds in [0, 1)")
  alphas = config.get("mixup_alphas", (0.2,))
  if not isinstance(alphas, (list, tuple)) or not alphas or any(not _positive_number(a) for a in alphas):
    problems.append(f"config.mixup_alphas: {alphas!r} is not a non-empty tuple of positive numbers")
  k = config.get("validation_n_per_class")
  if k is not None:
    problems += check.n_per_class("config.validation_n_per_class", k)
  # Every cell's nested configs differ only in the per-cell fields (checked in the grid) and the
  # generator kind (an arm's): checking each nested config once covers every cell.
  skip = (*_PER_CELL_FIELDS, *compare_configs.SHARED_FIELDS)
  problems += _classifier_problems(config.classifier, _Checker("config.classifier", skip))
  parsed = []
  for arm in config.arms:
    try:
      parsed.append(arms_lib.Arm.parse(arm))
    except (ValueError, AttributeError, TypeError):
      continue  # reported with the grid
  if any(arm.kind and not arm.pool for arm in parsed):  # the sweep sets `model` to each arm's generator kind
    problems += _generator_problems(config.generator, _Checker("config.generator", (*skip, "model")))
  if any(arm.pool for arm in parsed):
    problems += _generator_problems(config.pool_generator, _Checker("config.pool_generator", (*skip, "model")))
  return problems
