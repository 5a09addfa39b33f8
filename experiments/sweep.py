"""The comparison sweep behind `vaeaug-compare`: cells, their training, resume.

A cell is (dataset, n_per_class, arm, seed). Cells of one (dataset, n_per_class, seed) share the real
training subset, and the arms that use the same generator share it (trained once, on that subset).
Everything a cell produces lives in its own workdir under `runs/<config hash>/`, written through
the same functions `experiments.train_classifier` / `train_generator` / `synthesize` call, so a
cell interrupted at any point resumes from its checkpoints; a finished cell is one line of
`cells.jsonl` and is never recomputed. Tables and figures are rebuilt from `cells.jsonl` alone
(`experiments.tables`).
"""

from __future__ import annotations

import collections
import dataclasses
import fcntl
import functools
import hashlib
import inspect
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np

from classifiers import metrics as metrics_lib
from classifiers import train as classifier_train
from experiments import arms as arms_lib
from experiments import cell_quality
from experiments.arms import Arm
from vaeaug import fileio, generators, provenance, synthesis
from vaeaug.data import pipeline, sources
from vaeaug.training import checkpoints, logs, run, sharding, timing
from vaeaug.training import recipe as recipe_lib


@dataclasses.dataclass(frozen=True)
class Cell:
  dataset: str
  n_per_class: int | None  # None: all training images
  seed: int
  arm: Arm

  @property
  def key(self) -> str:
    return f"{self.dataset}|n={n_label(self.n_per_class)}|seed={self.seed}|{self.arm.name}"

  @property
  def group(self) -> tuple:
    return self.dataset, self.n_per_class, self.seed


def n_label(n_per_class: int | None) -> str:
  return "all" if n_per_class is None else str(n_per_class)


def _slug(dataset: str) -> str:
  return dataset.replace("/", "-")


def cells_of(config) -> list[Cell]:
  """The grid in run order: dataset, n_per_class, seed, then arms ("none" first: filtering uses it)."""
  arms = [Arm.parse(a) for a in config.arms]
  if len({a.name for a in arms}) != len(arms):
    raise ValueError(f"duplicate arms in {tuple(config.arms)}")
  filtering = config.synthesis.filter_tau > 0 or any(t > 0 for t in config.synthesis.get("filter_taus", ()))
  if filtering and any(a.generator for a in arms) and "none" not in config.arms:
    raise ValueError("synthesis.filter_tau(s) > 0 filter with each cell's 'none' classifier: add the 'none' arm")
  counterfactual = [a.name for a in arms if a.sampler_name(config.synthesis) == arms_lib.COUNTERFACTUAL]
  if counterfactual and "none" not in config.arms:
    raise ValueError(f"{', '.join(counterfactual)} keep what each cell's 'none' classifier agrees with: add 'none'")
  arms.sort(key=lambda a: a.name != "none")
  for n in config.n_per_class:
    run.check_n_per_class(n)
  seeds = range(config.first_seed, config.first_seed + config.num_seeds)
  return [
    Cell(dataset, n, seed, arm)
    for dataset in config.datasets
    for n in config.n_per_class
    for seed in seeds
    for arm in arms
  ]


_NEUTRAL_FIELDS = {
  "compute_dtype": "float32",
  "mixup_alpha": 0.0,
  "dataset_version": "1.0.0",  # the splits every recorded cell used
  "free_bits": 0.0,
  "pool_validation_fraction": 0.05,
  # transfer learning (classifiers.transfer): off
  "pretrained": None,
  "pretrained_source": "auto",
  "freeze": "none",
  "unfreeze_blocks": 0,
  "backbone_learning_rate_scale": 0.1,
}
# Fields added with the pool, counterfactual and noise+blur arms, which no recorded cell used: at these
# values they are left out of the hash (a changed value, or changed defaults, give a new hash).
_NEUTRAL_SYNTHESIS = {
  "blur_sigma": 1.0,
  "strength": 1.0,
  "placement": "mixed",
  "class_proportions": "equal",
  "filter_taus": [],
}
# Top-level fields added with protocol v2 (mixup arms, a small validation set): at these values they change
# no recorded cell, so they are left out of the hash.
_NEUTRAL_TOP = {"mixup_alphas": [0.2, 1.0], "validation_n_per_class": None}
_POOL_GENERATOR_AS_ADDED = "94f96b64a6"  # hash of the default/full presets' pool_generator when added
# Recorded alongside results, never changing them: not hashed.
_NOT_RESULTS = ("quality",)
# Recorded cells were hashed before the nested configs referenced the shared top-level fields (see
# experiments/configs/compare.py); these keep the recipe text of those cells:
# - the nested configs held their own defaults for these two, never used by a cell (the top-level
#   values, hashed, were copied in per cell): a nested value equal to the top-level one is hashed as that;
_NESTED_BEFORE_SHARING = {"image_size": 64, "log_every_steps": 10}
# - these top-level fields reached only the cross-dataset test, and were hashed; now they are the cells'
#   devices, which the nested recipes leave out (float rounding only), so they are hashed at these values.
_TOP_LEVEL_BEFORE_SHARING = {"num_devices": None, "distributed": False}


# Grid fields: cells of an extended grid are reused. data_seed and compute_dtype were added to the top
# level after results were recorded; the nested configs' copies are hashed.
_NOT_RECIPE = ("preset", "datasets", "n_per_class", "arms", "num_seeds", "first_seed", "cross_test_datasets")
_NOT_RECIPE_SINCE_SHARING = ("data_seed", "compute_dtype", "dataset_version")
# Execution-only fields (vaeaug.training.recipe) that recorded hashes covered: still hashed, at their
# values, so that recorded cells stay valid.
_HASHED_EXECUTION_FIELDS = {
  "top": (
    "figures",
    "gradcam_images",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "xla_cpu_ynn_fusions",
  ),
  "nested": ("gradcam_images", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints"),
}


def recipe_of(config_dict: dict) -> dict:
  """What `config_hash` hashes of a sweep config (as a dict, e.g. a workdir's config.json): its result
  fields (`recipe.result_fields`), not the grid, with the recorded cells' conventions."""
  recipe = recipe_lib.result_fields(config_dict)
  for key in _HASHED_EXECUTION_FIELDS["top"]:
    if key in config_dict:
      recipe[key] = config_dict[key]
  for key in _NOT_RECIPE + _NOT_RECIPE_SINCE_SHARING:
    recipe.pop(key, None)
  recipe.update(_TOP_LEVEL_BEFORE_SHARING)
  for key in _NOT_RESULTS:
    recipe.pop(key, None)
  for key, value in _NEUTRAL_SYNTHESIS.items():
    if key in recipe.get("synthesis", {}) and recipe_lib.plain(recipe["synthesis"][key]) == value:
      recipe["synthesis"].pop(key)
  for key, value in _NEUTRAL_TOP.items():
    if key in recipe and recipe_lib.plain(recipe[key]) == value:
      recipe.pop(key)
  if recipe.get("pool_generator", {}).get("dataset_version") == _NEUTRAL_FIELDS["dataset_version"]:
    recipe["pool_generator"].pop("dataset_version")
  if "pool_generator" in recipe and _short_hash(recipe["pool_generator"]) == _POOL_GENERATOR_AS_ADDED:
    recipe.pop("pool_generator")
  for sub in ("classifier", "generator"):
    for key in _HASHED_EXECUTION_FIELDS["nested"]:
      if key in config_dict[sub]:
        recipe[sub][key] = config_dict[sub][key]
    # Fields added after results were recorded: at these values they reproduce the earlier behaviour,
    # so they stay out of the hash and recorded cells remain valid.
    for key, value in _NEUTRAL_FIELDS.items():
      if key in recipe[sub] and recipe[sub][key] == value:
        recipe[sub].pop(key)
    for key, value in _NESTED_BEFORE_SHARING.items():
      if recipe[sub].get(key) == config_dict.get(key):
        recipe[sub][key] = value
  return recipe


def _short_hash(value) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:10]


def config_hash(config) -> str:
  """Hash of everything that changes a cell's result (not the grid itself, not progress/logging),
  so cells of an extended grid are reused and cells of a changed recipe are not."""
  return _short_hash(recipe_of(config.to_dict()))


# ----------------------------------------------------------------------------- compilation cache


def use_compilation_cache(config) -> None:
  """JAX's persistent compilation cache in `config.compilation_cache_dir` (if set): cells share
  shapes, so the second cell onwards loads compiled steps instead of recompiling them."""
  if config.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(config.compilation_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# ----------------------------------------------------------------------------- data


class DataCache:
  """Splits loaded once per (dataset, image size) for the whole sweep."""

  def __init__(self, data_dir: str | None, image_size: int, version: str | None = None):
    self.data_dir, self.image_size, self.version = data_dir, image_size, version
    self._splits: dict[str, dict[str, pipeline.ArrayDataset]] = {}

    self.seconds = 0.0  # spent loading (decoding on first use, then the .npz cache)

  def splits(self, dataset: str) -> dict[str, pipeline.ArrayDataset]:
    if dataset not in self._splits:
      start = time.perf_counter()
      self._splits[dataset] = pipeline.load_splits(
        sources.versioned(dataset, self.version), data_dir=self.data_dir, image_size=self.image_size
      )
      self.seconds += time.perf_counter() - start
    return self._splits[dataset]


def repeat_to(dataset: pipeline.ArrayDataset, min_size: int) -> pipeline.ArrayDataset:
  """`dataset` repeated whole until it has at least `min_size` rows (each epoch shuffles the copies)."""
  repeats = max(1, math.ceil(min_size / max(len(dataset), 1)))
  return dataset if repeats == 1 else dataset.take(np.tile(np.arange(len(dataset)), repeats))


_capped_epochs = run.capped_epochs


# ----------------------------------------------------------------------------- per-cell configs


def cell_config(sub: ml_collections.ConfigDict, dataset: str, n_per_class, seed: int) -> ml_collections.ConfigDict:
  """A standalone copy of the nested config `sub` for one cell group. The fields it shares with the
  top level are references (experiments/configs/compare.py), so only the cell's own are set here."""
  sub = ml_collections.ConfigDict(sub.to_dict())  # references resolved
  sub.dataset, sub.n_per_class, sub.seed = dataset, n_per_class, seed
  return sub


def generator_config(config, dataset: str, n_per_class, seed: int, kind: str, train_size: int):
  sub = cell_config(config.generator, dataset, n_per_class, seed)
  sub.model = kind
  sub.epochs = _capped_epochs(sub, train_size)
  return sub


def pool_generator_config(config, kind: str):
  """The config of the `kind` generator pretrained on the unlabeled face pool (`config.pool_generator`)."""
  sub = cell_config(config.pool_generator, generators.POOL_DATASET, None, 0)
  sub.model = kind
  return sub


def cas_config(config, cell: Cell):
  """The classifier recipe of a cell, without augmentation: trained on a synthetic set alone (CAS)."""
  sub = cell_config(config.classifier, *cell.group)
  sub.augment = "none"
  return sub


def classifier_config(config, cell: Cell, train_size: int):
  sub = cell_config(config.classifier, *cell.group)
  sub.augment = config.classic_augment if cell.arm.classic else "none"
  sub.epochs = _capped_epochs(sub, train_size)
  return sub


# ----------------------------------------------------------------------------- the sweep


class NoCellsOfThisConfig(ValueError):
  """`--tables_only` with a config none of the recorded cells belong to."""


class Sweep:
  """Runs the cells of `config` in `workdir`; see the module docstring."""

  def __init__(self, config, workdir: str | os.PathLike, *, stream=None):
    self.config = config
    self.workdir = Path(workdir)
    self.stream = stream or sys.stderr
    self.hash = config_hash(config)
    self.runs = self.workdir / "runs" / self.hash
    self.cells_path = self.workdir / "cells.jsonl"
    self.data = DataCache(config.data_dir, config.image_size, config.dataset_version)
    self.mesh = sharding.make_mesh(config.num_devices)
    self._synthetic: dict[tuple, synthesis.SyntheticSet] = {}

  # --- bookkeeping

  def finished(self, *, repair: bool = True) -> dict[str, dict]:
    """Finished cells of this recipe, by key. A line cut by a kill mid-write is dropped (and, with
    `repair`, removed from the file)."""
    if not self.cells_path.exists():
      return {}
    lines = self.cells_path.read_text().splitlines()
    records, intact = {}, []
    for line in lines:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      intact.append(line)
      if record.get("config_hash") == self.hash:
        records[record["key"]] = record
    if repair and len(intact) != len([line for line in lines if line.strip()]):
      self.cells_path.write_text("".join(line + "\n" for line in intact))
    return records

  def tables_only_records(self) -> dict[str, dict]:
    """The finished cells `--tables_only` builds tables from, read without changing any file. When
    none belongs to this config (a changed recipe or grid), `NoCellsOfThisConfig`: empty tables would
    replace the recorded ones."""
    records = self.finished(repair=False)
    keys = {c.key for c in cells_of(self.config)}
    if any(key in keys for key in records):
      return records
    where = self.cells_path
    if records:
      raise NoCellsOfThisConfig(
        f"--tables_only: {len(records)} cells of {where} have this config's hash {self.hash}, but none is in its "
        "grid (datasets, n_per_class, arms, seeds); pass the grid that made them, or run the sweep"
      )
    hashes = collections.Counter()
    for line in where.read_text().splitlines():
      try:
        hashes[json.loads(line).get("config_hash")] += 1
      except (json.JSONDecodeError, AttributeError):
        continue
    found = ", ".join(f"{h}: {n}" for h, n in hashes.most_common()) or "none readable"
    differ = ""
    recorded_path = self.workdir / "config.json"
    try:
      recorded = json.loads(recorded_path.read_text())
      changed = recipe_lib.changed(recipe_of(recorded), recipe_of(self.config.to_dict()))
      differ = f"; it differs from {recorded_path} in {recipe_lib.describe(changed)}" if changed else ""
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # no or foreign config.json: say nothing
      pass
    raise NoCellsOfThisConfig(
      f"--tables_only: no line of {where} has this config's hash {self.hash} ({sum(hashes.values())} lines, "
      f"by hash: {found}){differ}; pass the config that made them, or run the sweep to compute this one's cells"
    )

  def _append(self, record: dict) -> None:
    # One locked write per line: shards of one sweep may append to the same file concurrently.
    line = (json.dumps(record, default=classifier_train._json_default) + "\n").encode()
    with self.cells_path.open("ab") as f:
      fcntl.flock(f, fcntl.LOCK_EX)
      try:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
      finally:
        fcntl.flock(f, fcntl.LOCK_UN)

  def real_train(self, dataset: str, n_per_class, seed: int) -> pipeline.ArrayDataset:
    """The cell group's real training images: those a standalone run of its config trains on
    (`run.real_train`; classifier and generator share `data_seed`, so they see the same ones)."""
    return run.real_train(
      self.data.splits(dataset)["train"], cell_config(self.config.classifier, dataset, n_per_class, seed)
    )

  def validation(self, dataset: str, seed: int) -> pipeline.ArrayDataset:
    """The validation images a cell group selects on: the whole validation split, or with
    `validation_n_per_class` a stratified subset of that many per class drawn with the group's seed (a
    researcher with few labelled images has a small validation set too)."""
    validation = self.data.splits(dataset)["validation"]
    k = self.config.get("validation_n_per_class")
    return validation if k is None else pipeline.subsample(validation, k, seed)

  def group_dir(self, dataset: str, n_per_class, seed: int) -> Path:
    return self.runs / _slug(dataset) / f"n{n_label(n_per_class)}" / f"seed{seed}"

  def _say(self, text: str) -> None:
    print(text, file=self.stream, flush=True)

  # --- generators and synthetic data

  def generator(self, dataset: str, n_per_class, seed: int, kind: str):
    """(model, summary) of the cell group's `kind` autoencoder; trained on first use, then restored."""
    workdir = self.group_dir(dataset, n_per_class, seed) / f"generator_{kind}"
    summary_path = workdir / "generator_metrics.json"
    if not summary_path.exists():
      real = self.real_train(dataset, n_per_class, seed)
      train = repeat_to(real, self.config.min_epoch_size)
      sub = generator_config(self.config, dataset, n_per_class, seed, kind, len(train))
      data = generators.Data(train=train, validation=self.validation(dataset, seed))
      generators.train_generator(sub, workdir, data=data)
    _, model, _ = generators.restore_generator(workdir)
    return model, json.loads(summary_path.read_text())

  def pool_generator(self, kind: str):
    """(model, summary, workdir) of the `kind` autoencoder pretrained on the unlabeled face pool, shared by
    every cell (and shard: a file lock lets one process train it while the others wait); resumable."""
    workdir = self.runs / f"pool_{kind}"
    summary_path = workdir / "generator_metrics.json"

    def pretrain():
      self._say(f"pretraining {kind} on the unlabeled face pool in {workdir}")
      generators.train_generator(pool_generator_config(self.config, kind), workdir)

    _build_once(workdir, summary_path, pretrain)
    _, model, _ = generators.restore_generator(workdir)
    return model, json.loads(summary_path.read_text()), workdir

  def _synthetic_path(self, cell: Cell, tau: float | None = None) -> Path:
    suffix = f"_tau{tau:g}" if tau else ""  # a filter candidate of `synthesis.filter_taus`
    return self.group_dir(*cell.group) / f"synthetic_{cell.arm.source}{suffix}.npz"

  def synthetic(self, cell: Cell, tau: float | None = None) -> tuple[synthesis.SyntheticSet, dict]:
    """The largest synthetic set any ratio needs, for the cell group's arm source (cached on disk, with
    its quality); smaller ratios take a prefix per class, so candidate sets are nested. `tau`: a filter
    candidate (`synthesis.filter_taus`; 0 unfiltered), None: `synthesis.filter_tau`."""
    arm = cell.arm
    path = self._synthetic_path(cell, tau)
    real = self.real_train(*cell.group)
    per_class = int(self._per_class(real, max(self.config.synthesis.synthetic_ratios)).max())
    info = {"generator_seconds": 0.0, "synthesis_seconds": 0.0}
    info_path = Path(str(path) + ".timing.json")
    if not self._synthetic_cached(path):
      model, summary, generator_dir = None, None, None
      if arm.pool:
        pool_start = time.perf_counter()
        model, summary, generator_dir = self.pool_generator(arm.kind)
        info["pool_generator"] = True  # its time is counted once, in the pool workdir
        # Training it (the first pool cell) or restoring it is this cell's generator work.
        info["generator_step_seconds"] = round(time.perf_counter() - pool_start, 2)
      elif arm.kind is not None:
        model, summary = self.generator(*cell.group, arm.kind)
        info["generator_seconds"] = summary["seconds"]
        info["generator_step_seconds"] = summary.get("timing", {}).get("steps", 0.0)
        generator_dir = self.group_dir(*cell.group) / f"generator_{arm.kind}"
      start = time.perf_counter()
      sampler = arm.sampler_name(self.config.synthesis)
      options = self._sampler_options(sampler)
      name = arm.generator
      filter_by = self._filter(cell, sampler, tau)
      if filter_by is not None:
        synthetic, report = synthesis.synthesize_filtered(
          model, real, per_class, sampler, cell.seed, generator_name=name, **filter_by, **options
        )
        info["filter"] = report
      else:
        synthetic = synthesis.synthesize(model, real, per_class, sampler, cell.seed, generator_name=name, **options)
      synthetic.save(path)
      info["synthesis_seconds"] = round(time.perf_counter() - start, 2)
      info["sampler"] = sampler
      quality_start = time.perf_counter()
      info["quality"] = self._quality(cell, model, generator_dir, synthetic, info.get("filter"), path)
      info["quality_seconds"] = round(time.perf_counter() - quality_start, 2)
      fileio.atomic_write_text(info_path, json.dumps(info, default=classifier_train._json_default) + "\n")
    elif info_path.exists():
      info = {**json.loads(info_path.read_text()), "reused": True}
    return synthesis.load_synthetic(path), info

  def _filter(self, cell: Cell, sampler: str, tau: float | None = None) -> dict | None:
    """How the cell's synthetic images are filtered by its `none` classifier: counterfactuals always (kept
    when the classifier's decision, at its threshold chosen on validation, is the target class); the others
    when `tau` (None: `synthesis.filter_tau`) > 0 (the intended class's probability >= tau)."""
    if sampler == arms_lib.COUNTERFACTUAL:
      predict, threshold = self._none_classifier(cell)
      return {"predict_proba": predict, "decision_threshold": threshold}
    tau = self.config.synthesis.filter_tau if tau is None else tau
    if tau > 0:
      predict, _ = self._none_classifier(cell)
      return {"predict_proba": predict, "tau": tau}
    return None

  def _synthetic_cached(self, path: Path) -> bool:
    """Whether `path` holds a complete synthetic set. An npz without its matching sidecar (what a kill
    mid-save leaves) is reported and made again, not fatal."""
    if not path.exists():
      return False
    try:
      synthesis.load_synthetic(path)
    except synthesis.SyntheticMissingError as error:
      self._say(f"warning: {error}; regenerating it")
      return False
    if not Path(str(path) + ".timing.json").exists():  # killed before its quality was recorded
      return False
    return True

  def _sampler_options(self, sampler: str) -> dict:
    """The sampler's keyword options from the sweep config: `noise` is the generator config's DAE corruption,
    any other option the `synthesis` field of the same name (temperature, blur_sigma, strength, ...)."""
    parameters = inspect.signature(synthesis.SAMPLERS[sampler]).parameters
    options = {}
    for name in parameters:
      if name == "noise":
        options["noise"] = generators.noise_config(self.config.generator)
      elif name not in ("model", "train", "per_class", "seed", "generator", "batch_size") and name in (
        self.config.synthesis
      ):
        value = self.config.synthesis[name]
        options[name] = tuple(value) if isinstance(value, list) else value
    return options

  def _quality(self, cell: Cell, model, generator_dir: Path | None, synthetic, filter_report, path: Path) -> dict:
    """The synthetic set's quality on the cell dataset's validation split (never test): see
    `experiments.cell_quality`; None when `quality.enabled` is off."""
    if not self.config.quality.enabled:
      return None
    generator_sub = checkpoints.read_run_config(generator_dir) if generator_dir is not None else None
    none_classifier = self._none_classifier(cell) if "none" in self.config.arms else None
    return cell_quality.measure(
      self.config,
      model=model,
      generator_config=generator_sub,
      synthetic=synthetic,
      validation=self.validation(cell.dataset, cell.seed),
      features=self.feature_extractor(cell.dataset),
      classifier=none_classifier,
      filter_report=filter_report,
      cas_workdir=path.with_suffix("") / "cas",
      cas_config=cas_config(self.config, cell),
      mesh=self.mesh,
    )

  def feature_extractor(self, dataset: str):
    """The fixed feature space of a dataset's quality figures: penultimate features of one classifier (the
    sweep's classifier recipe, seed 0, no augmentation) trained once on all its training images and selected
    on validation; shared by every cell of the dataset."""
    if not self.config.quality.enabled:
      return None
    workdir = self.runs / "features" / _slug(dataset)

    def train():
      splits = self.data.splits(dataset)
      train = repeat_to(splits["train"], self.config.min_epoch_size)
      sub = cell_config(self.config.classifier, dataset, None, 0)
      sub.augment = "none"
      sub.epochs = _capped_epochs(sub, len(train))
      data = classifier_train.Data(train=train, validation=splits["validation"])
      classifier_train.train_and_evaluate(sub, workdir, data=data, score_test=False)

    _build_once(workdir, workdir / "validation_metrics.json", train)  # shared by every shard
    config, state, _ = classifier_train.restore_best(workdir)
    embed = jax.jit(functools.partial(classifier_train.embed_step, normalization=config.normalization))
    return lambda dataset_: classifier_train.predict_probabilities(embed, state, dataset_, 256, self.mesh)

  def _none_classifier(self, cell: Cell):
    """(predict_proba, threshold chosen on validation) of the cell group's `none` classifier."""
    workdir = self.group_dir(*cell.group) / "none"
    config, state, _ = classifier_train.restore_best(workdir)
    predict = jax.jit(functools.partial(classifier_train.eval_step, normalization=config.normalization))
    threshold = json.loads((workdir / "test_metrics.json").read_text())["threshold"]
    return (lambda images: np.asarray(predict(state, images))), threshold

  # --- one cell

  def _train_classifier(self, cell: Cell, train, workdir: Path, *, score_test: bool, mixup_alpha: float | None = None):
    """`train` (an ArrayDataset, or real images with synthetic ones on top: `pipeline.WithExtraRows`) with
    its real part repeated to `min_epoch_size` rows, the cell's classifier recipe and `mixup_alpha`."""
    if isinstance(train, pipeline.WithExtraRows):
      train = dataclasses.replace(train, base=repeat_to(train.base, self.config.min_epoch_size))
    else:
      train = repeat_to(train, self.config.min_epoch_size)
    sub = classifier_config(self.config, cell, len(train))
    if mixup_alpha:
      sub.mixup_alpha = mixup_alpha
    data = classifier_train.Data(
      train=train, validation=self.validation(cell.dataset, cell.seed), test=self.data.splits(cell.dataset)["test"]
    )
    return classifier_train.train_and_evaluate(sub, workdir, data=data, score_test=score_test), sub

  def _variants(self, cell: Cell) -> list[tuple[float | None, float | None, float | None]]:
    """The (synthetic ratio, filter tau, mixup alpha) candidates of a cell, one classifier each; the one with
    the best validation value is the cell's. A single candidate trains in the cell's workdir."""
    ratios = tuple(self.config.synthesis.synthetic_ratios) if cell.arm.generator else (None,)
    taus = (None,)
    if cell.arm.generator and self.config.synthesis.get("filter_taus"):
      if cell.arm.sampler_name(self.config.synthesis) != arms_lib.COUNTERFACTUAL:  # filtered by construction
        taus = tuple(self.config.synthesis.filter_taus)
    alphas = tuple(self.config.mixup_alphas) if cell.arm.mixup else (None,)
    return [(r, t, a) for r in ratios for t in taus for a in alphas]

  def _training_data(self, real: pipeline.ArrayDataset, synthetic, ratio: float | None):
    """(training data, synthetic images used) for a ratio: `synthesis.placement` "on_top" adds them to
    every batch of the real images (each real image seen as often as without them), "mixed" puts them
    into the training set (each epoch then holds fewer real images per step); training data None when
    a filter kept no synthetic image."""
    if ratio is None:
      return real, None
    chosen = self._take_ratio(synthetic, real, ratio)
    if len(chosen) == 0:
      return None, chosen
    if self.config.synthesis.get("placement", "mixed") == "on_top":
      return pipeline.WithExtraRows(real, chosen.to_dataset(provenance=False), ratio), chosen
    return synthesis.combine(real, chosen), chosen

  def run_cell(self, cell: Cell) -> dict:
    start, compile_start, data_start = time.perf_counter(), timing.COMPILE_CLOCK.start(), self.data.seconds
    real = self.real_train(*cell.group)
    workdir = self.group_dir(*cell.group) / cell.arm.name
    seconds = {}
    variants = self._variants(cell)
    sets = {}  # filter tau -> (synthetic set, its info)
    if cell.arm.generator is not None:
      for tau in dict.fromkeys(t for _, t, _ in variants):
        sets[tau] = self.synthetic(cell, tau)
      infos = [info for _, info in sets.values()]
      seconds.update(
        generator_seconds=infos[0].get("generator_seconds", 0.0),
        generator_step_seconds=infos[0].get("generator_step_seconds", 0.0),
        synthesis_seconds=round(sum(info.get("synthesis_seconds", 0.0) for info in infos), 2),
        quality_seconds=round(sum(info.get("quality_seconds", 0.0) for info in infos), 2),
        generator_reused=all(info.get("reused", False) for info in infos),
      )
    fits = []  # the timing of every classifier trained for this cell
    candidates, empty = [], []
    for ratio, tau, alpha in variants:
      train, chosen = self._training_data(real, sets[tau][0] if tau in sets else None, ratio)
      if train is None:  # the filter kept no image: nothing to add
        empty.append(_variant_name(ratio, tau, alpha))
        continue
      candidate_dir = workdir if len(variants) == 1 else workdir / _variant_name(ratio, tau, alpha)
      summary, sub = self._train_classifier(
        cell, train, candidate_dir, score_test=len(variants) == 1, mixup_alpha=alpha
      )
      fits.append(summary.get("timing", {}))
      candidates.append((summary["best_validation_value"], ratio, tau, alpha, candidate_dir, train, chosen))
    if not candidates:
      raise ValueError(f"{cell.key}: the filter kept no synthetic image for any candidate ({', '.join(empty)})")
    if empty:
      self._say(f"    {len(empty)} candidates without synthetic images skipped: {', '.join(empty)}")
    # Ties go to the smaller ratio, then no or the lower filter threshold, then the smaller alpha.
    best = max(candidates, key=lambda c: (c[0], -(c[1] or 0), -(c[2] or 0), -(c[3] or 0)))
    _, ratio, tau, alpha, classifier_dir, train, chosen = best
    if len(variants) > 1:  # chosen on validation; only the choice scores test
      summary, sub = self._train_classifier(cell, train, classifier_dir, score_test=True, mixup_alpha=alpha)
      fits.append(summary.get("timing", {}))
    quality = sets[tau][1].get("quality") if tau in sets else None
    synthetic_counts = chosen.class_counts() if chosen is not None else None
    seconds["classifier_seconds"] = summary["seconds"]
    for phase in ("steps", "validation", "checkpoints"):
      seconds[f"classifier_{phase}_seconds"] = round(sum(fit.get(phase, 0.0) for fit in fits), 2)
    record = {
      "key": cell.key,
      "config_hash": self.hash,
      "dataset": cell.dataset,
      "n_per_class": cell.n_per_class,
      "seed": cell.seed,
      "arm": cell.arm.name,
      "classic": cell.arm.classic,
      "mixup": cell.arm.mixup,
      "generator": cell.arm.generator,
      "sampler": cell.arm.sampler_name(self.config.synthesis),
      "pool": cell.arm.pool,
      "image_size": self.config.image_size,
      "model": self.config.classifier.model,
      "synthetic_ratio": ratio,
      "mixup_alpha": alpha,
      "synthetic_placement": self.config.synthesis.get("placement", "mixed") if ratio is not None else None,
      "synthetic_counts": synthetic_counts,
      "real_train_size": len(real),
      "real_class_counts": dict(zip(real.class_names, map(int, real.class_counts()))),
      "validation_size": len(self.validation(cell.dataset, cell.seed)),
      "threshold": summary["threshold"],
      "best_epoch": summary["best_epoch"],
      "epochs_run": summary["epochs_run"],
      "steps": summary["steps"],
      "test": _strip(summary["test"]),
      "validation": _strip(summary["validation"]),
      "cross": self._cross(cell, classifier_dir, summary["threshold"]),
      "classifier_config": sub.to_dict(),
      "generator_config": self._generator_record(cell),
      # Validation quality of the arm's synthetic set (experiments.cell_quality); None without one.
      "quality": quality,
      # The classifier used its whole budget (the step cap or its epochs) instead of stopping early.
      "capped": not summary["stopped_early"],
      "synthesis_config": self.config.synthesis.to_dict(),
      "timing": cell_timing(
        seconds,
        data_seconds=self.data.seconds - data_start,
        compile_seconds=timing.COMPILE_CLOCK.seconds - compile_start,
        cell_seconds=time.perf_counter() - start,
      ),
      "provenance": provenance.collect(),
    }
    if len(sets) > 1:  # the filter threshold chosen on validation (0: unfiltered)
      record["filter_tau"] = tau
      record["empty_candidates"] = empty
    return record

  def _generator_record(self, cell: Cell) -> dict | None:
    if cell.arm.kind is None:
      return None
    if cell.arm.pool:
      workdir = self.runs / f"pool_{cell.arm.kind}"
    else:
      workdir = self.group_dir(*cell.group) / f"generator_{cell.arm.kind}"
    return checkpoints.read_run_config(workdir).to_dict()

  def _per_class(self, real: pipeline.ArrayDataset, ratio: float) -> np.ndarray:
    """Synthetic images per class at `ratio` synthetic images per real one: in the real subset's class
    proportions (`synthesis.class_proportions` "real"), or split equally over the classes ("equal")."""
    if self.config.synthesis.get("class_proportions", "equal") == "real":
      return np.ceil(ratio * real.class_counts()).astype(int)
    return np.full(real.num_classes, math.ceil(ratio * len(real) / real.num_classes))

  def _take_ratio(self, synthetic: synthesis.SyntheticSet, real: pipeline.ArrayDataset, ratio: float):
    """The first images of each class of `synthetic` (sets of smaller ratios are nested in larger ones)."""
    per_class = self._per_class(real, ratio)
    keep = np.concatenate([np.flatnonzero(synthetic.labels == c)[: per_class[c]] for c in range(real.num_classes)])
    return synthetic.take(np.sort(keep))

  def _cross(self, cell: Cell, workdir: Path, threshold: float) -> dict:
    targets = [d for d in self.config.cross_test_datasets if d != cell.dataset]
    if not targets:
      return {}
    config, state, class_names = classifier_train.restore_best(workdir)
    predict = jax.jit(functools.partial(classifier_train.eval_step, normalization=config.normalization))
    results = {}
    for target in targets:
      test = self.data.splits(target)["test"]
      if tuple(test.class_names) != tuple(class_names):
        raise ValueError(
          f"cross-dataset test {target} has classes {test.class_names}, the classifier {class_names}: they must match"
        )
      probabilities = classifier_train.predict_probabilities(predict, state, test, config.eval_batch_size, self.mesh)
      results[target] = _strip(
        metrics_lib.classification_metrics(test.labels, probabilities, threshold=threshold, class_names=class_names)
      )
    return results

  # --- the whole grid

  def run(self, shard_index: int = 0, shard_count: int = 1) -> dict[str, dict]:
    """Runs the unfinished cells (of shard `shard_index` of `shard_count`: whole cell groups, dealt
    round-robin, so shards can run as separate processes or array jobs on one workdir)."""
    if not 0 <= shard_index < shard_count:
      raise ValueError(f"shard index {shard_index} is not in [0, {shard_count})")
    self.workdir.mkdir(parents=True, exist_ok=True)
    recorded = {**self.config.to_dict(), checkpoints.PROVENANCE_KEY: provenance.collect()}
    fileio.atomic_write_text(self.workdir / "config.json", json.dumps(recorded, indent=1, default=str) + "\n")
    all_cells = cells_of(self.config)
    groups = list(dict.fromkeys(c.group for c in all_cells))
    mine = {g for i, g in enumerate(groups) if i % shard_count == shard_index}
    cells = [c for c in all_cells if c.group in mine]
    done = self.finished()
    todo = [c for c in cells if c.key not in done]
    # TensorBoard progress (one folder per shard), replayed from cells.jsonl; step = cells finished.
    keys = {c.key for c in all_cells}
    progress_dir = self.runs / ("progress" if shard_count == 1 else f"progress_shard{shard_index + 1}of{shard_count}")
    progress_events = logs.SweepProgressWriter(
      progress_dir, len(all_cells), [r for k, r in done.items() if k in keys], enabled=jax.process_index() == 0
    )
    shard = f" (shard {shard_index + 1}/{shard_count})" if shard_count > 1 else ""
    self._say(f"compare: {len(cells)} cells{shard} ({len(cells) - len(todo)} already finished) in {self.workdir}")
    start = time.perf_counter()
    for i, cell in enumerate(todo):
      elapsed = time.perf_counter() - start
      eta = f", ETA {logs.format_seconds(elapsed / i * (len(todo) - i))}" if i else ""
      self._say(
        f"[cell {len(cells) - len(todo) + i + 1}/{len(cells)} | {logs.format_seconds(elapsed)} elapsed{eta}] "
        f"{cell.dataset} n_per_class={n_label(cell.n_per_class)} seed={cell.seed} arm={cell.arm.name}"
      )
      record = self.run_cell(cell)
      if jax.process_index() == 0:
        self._append(record)
      done[cell.key] = record
      progress_events.add(record)
      test = record["test"]
      self._say(
        f"    test balanced accuracy {test['balanced_accuracy']:.3f}, ROC-AUC {test['roc_auc']:.3f} "
        f"({record['timing']['cell_seconds']:.0f} s)"
      )
    progress_events.close()
    finished = self.finished()  # other shards' cells too
    return {c.key: finished[c.key] for c in all_cells if c.key in finished}


def _variant_name(ratio: float | None, tau: float | None, alpha: float | None) -> str:
  """The workdir of one candidate classifier of a cell: `ratio2`, `mixup0.2`, `ratio2_tau0.5_mixup0.2`."""
  parts = [
    f"{name}{value:g}" for name, value in (("ratio", ratio), ("tau", tau), ("mixup", alpha)) if value is not None
  ]
  return "_".join(parts)


def _build_once(workdir: Path, done: Path, build: Callable[[], None]) -> None:
  """`build()` (which writes `done`, its last file, into `workdir`) unless `done` exists. A file
  lock beside `workdir` lets one process of a sharded sweep build it while the others wait for it."""
  if done.exists():
    return
  workdir.parent.mkdir(parents=True, exist_ok=True)
  with (workdir.parent / f"{workdir.name}.lock").open("w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      build()


def cell_timing(seconds: dict, *, data_seconds: float, compile_seconds: float, cell_seconds: float) -> dict:
  """A cell's timing record. Its work is the train steps of the classifiers and of the generator it
  trained, the synthesis and the synthetic set's quality; `overhead_seconds` is the rest of the cell
  (validation, metric fetches, checkpoints, data, compile, setup), `overhead_share` its share."""
  out = {
    **seconds,
    "data_seconds": round(data_seconds, 2),
    "compile_seconds": round(compile_seconds, 2),
    "cell_seconds": round(cell_seconds, 2),
  }
  work = out.get("classifier_steps_seconds", 0.0)
  if not out.get("generator_reused", False):
    work += out.get("generator_step_seconds", 0.0) + out.get("synthesis_seconds", 0.0) + out.get("quality_seconds", 0.0)
  # A reused generator's cost was counted in the cell that trained it, and is not in this cell's wall time.
  overhead = max(0.0, cell_seconds - work)
  out["overhead_seconds"] = round(overhead, 2)
  out["overhead_share"] = round(overhead / cell_seconds, 4) if cell_seconds > 0 else None
  return out


def _strip(metrics: dict | None) -> dict | None:
  """The scalar metrics plus support and confusion matrix (per-class detail stays in the run's workdir)."""
  if metrics is None:
    return None
  keep = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) or v is None}
  keep["support"], keep["confusion_matrix"] = metrics.get("support"), metrics.get("confusion_matrix")
  return keep
