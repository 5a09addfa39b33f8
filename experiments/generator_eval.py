"""Offline quality of a trained generator (where `vaeaug` generators meet `classifiers`). Never reads test.

Reconstruction MSE/PSNR and the negative ELBO (bits/dim) on validation; a sample of synthetic
images per class made from a labelled dataset's training images; a classifier trained on that
dataset's real training images gives the feature space for Frechet distance, k-NN precision/recall
and diversity against the real validation images, and the filter acceptance (its decision at the
threshold it chose on validation); the Classification Accuracy Score trains a classifier on the
synthetic images only, selects its epoch on one half of the validation split and scores it on the
other half.

A generator pretrained on the unlabeled face pool is evaluated on a labelled dataset (`dataset`):
its samplers encode that dataset's labelled training images.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shlex
import sys
from pathlib import Path

import jax
import numpy as np

from classifiers import train as classifier_train
from experiments import cell_quality
from experiments.configs import classifier as classifier_config
from vaeaug import fileio, generator_figures, generators, kinds, quality, synthesis
from vaeaug.data import pipeline, sources
from vaeaug.models import noise as noise_lib
from vaeaug.training import recipe, sharding

# The rows of experiments/results/generators/quality.json (`quality_row`).
BLUR_SIGMAS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0)  # candidates of the noise_blur calibration
ROW_KEYS = (
  "generator",
  "sampler",
  "pool",
  "image_size",
  "val_psnr_db",
  "cas_balanced_accuracy",
  "frechet",
  "precision",
  "recall",
  "acceptance",
  "capped",
  "command",
)


def reference_classifier(dataset: str, image_size: int, data_dir, workdir: Path, data, *, epochs: int, model: str):
  """A classifier trained on a dataset's real training images, selected on validation (trained once per
  workdir; test is not scored)."""
  config = classifier_config.get_config()
  config.update(
    dict(
      dataset=dataset,
      image_size=image_size,
      seed=0,
      model=model,
      epochs=epochs,
      figures=False,
      progress=False,
      data_dir=data_dir,
    )
  )
  classifier_train.train_and_evaluate(config, workdir, data=data, score_test=False)
  return workdir


def _sampler_options(sampler: str, config, synthesis_options: dict) -> dict:
  options = dict(synthesis_options)
  if sampler in ("denoise", "noise_blur"):
    options.setdefault("noise", generators.noise_config(config))
  return options


def evaluate_generator(
  generator_dir: str | Path,
  *,
  classifier_dir: str | Path | None = None,
  dataset: str | None = None,
  per_class: int = 200,
  sampler: str | None = None,
  k: int = 3,
  cas_epochs: int = 10,
  classifier_model: str = "cnn_bn3",
  seed: int = 0,
  sampler_options: dict | None = None,
  figures_dir: str | Path | None = None,
) -> tuple[quality.QualityReport, dict]:
  """(report, summary row) of a generator; `dataset` is the labelled dataset synthesis starts from and
  quality is measured on (default: the generator's own; required for a pool generator)."""
  generator_dir = Path(generator_dir)
  config, state, class_names = generators.restore_state(generator_dir)
  model = state.model()
  kind = kinds.of(model)
  sampler = sampler or kind.default_sampler
  kinds.check_sampler(kind.name, sampler)
  pool = config.dataset == generators.POOL_DATASET
  dataset = dataset or config.dataset
  if dataset == generators.POOL_DATASET:
    raise ValueError(f"{generator_dir} was trained on the unlabeled pool: pass --dataset, a labelled dataset")
  # The splits the generator was trained with (configs recorded before the field: 1.0.0).
  version = config.get("dataset_version", recipe.NEUTRAL["dataset_version"])
  splits = pipeline.load_splits(
    sources.versioned(dataset, version), ("train", "validation"), data_dir=config.data_dir, image_size=config.image_size
  )
  train, validation = splits["train"], splits["validation"]
  if pool:
    class_names = train.class_names
  data = classifier_train.Data(train=train, validation=validation)
  mesh = sharding.make_mesh(config.num_devices)

  # Likelihood and reconstruction on the dataset's validation split.
  terms = generators.evaluate_model(model, validation, generators.loss_options(config), mesh, seed=config.seed)

  # Classifier trained on the same real data: the fixed feature space, filter acceptance.
  classifier_dir = (
    Path(classifier_dir)
    if classifier_dir
    else reference_classifier(
      dataset,
      config.image_size,
      config.data_dir,
      generator_dir / "quality" / "reference_classifier",
      data,
      epochs=cas_epochs,
      model=classifier_model,
    )
  )
  classifier_cfg, classifier_state, _ = classifier_train.restore_best(classifier_dir)
  threshold = classifier_threshold(classifier_dir)
  normalization = classifier_cfg.normalization
  embed = jax.jit(functools.partial(classifier_train.embed_step, normalization=normalization))
  predict = jax.jit(functools.partial(classifier_train.eval_step, normalization=normalization))
  options = _sampler_options(sampler, config, sampler_options or {})
  control = sampler in kinds.MODEL_FREE_SAMPLERS
  if sampler == "noise_blur" and options.get("blur_sigma") is None:
    # The blur that matches this (denoising) generator's output on validation: the control for its arm.
    if kind.variational:
      raise ValueError("noise_blur without --blur_sigma calibrates against a denoising generator (dae)")
    reconstruct = jax.jit(lambda x: model.reconstruct(x, train=False))
    options["blur_sigma"], blur_table = synthesis.calibrate_blur_sigma(
      reconstruct, validation.images, options["noise"], BLUR_SIGMAS, seed=seed
    )
  else:
    blur_table = None
  synthetic = synthesis.synthesize(model, train, per_class, sampler, seed, generator_name=str(generator_dir), **options)
  synthetic_data = synthetic.to_dataset()
  features = lambda d: classifier_train.predict_probabilities(embed, classifier_state, d, 256, mesh)  # noqa: E731
  _, acceptance = synthesis.filter_by_decision(
    synthetic, lambda images: np.asarray(predict(classifier_state, images)), threshold
  )

  # Classification Accuracy Score on validation (epoch chosen on one half, scored on the other).
  cas_config = classifier_config.get_config()
  cas_config.update(
    dict(
      dataset=dataset,
      image_size=config.image_size,
      seed=seed,
      model=classifier_model,
      epochs=cas_epochs,
      figures=False,
      progress=False,
      data_dir=config.data_dir,
    )
  )
  # One CAS run per synthetic set (its content's digest): another setting of the sampler is another set.
  digest = hashlib.sha256(synthetic.images.tobytes() + synthetic.labels.tobytes()).hexdigest()[:10]
  cas_dir = generator_dir / "quality" / f"cas_{dataset.replace('/', '-')}_{sampler}_{digest}"
  cas = cell_quality.classification_accuracy_score(cas_config, synthetic, validation, cas_dir, 1024)

  if figures_dir is not None:  # the sample sheet (and counterfactual pairs) committed beside quality.json
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    changed = {k: v for k, v in (sampler_options or {}).items() if k in ("temperature", "strength") and v != 1.0}
    setting = "".join(f"_{k}{v:g}" for k, v in sorted(changed.items()))
    # named after the generator's workdir, so every figure traces back to the command that made it
    name = f"{generator_dir.name}_{sampler}{setting}_{config.image_size}px"
    rows = [synthetic.images[synthetic.labels == c][:10] for c in range(len(class_names))]
    generator_figures.image_grid(
      rows, list(class_names), f"{name} samples from {dataset} training images", figures_dir / f"samples_{name}.png"
    )
    if sampler == "counterfactual":
      generator_figures.counterfactual_pairs_figure(synthetic, train, figures_dir / f"pairs_{name}.png", per_class=6)
  summary = json.loads((generator_dir / "generator_metrics.json").read_text())
  report = quality.QualityReport.build(
    f"{kind.name} {sampler} ({generator_dir})",
    features=quality.feature_metrics(
      features(validation), validation.labels, features(synthetic_data), synthetic_data.labels, class_names, k=k
    ),
    reconstruction={"mse": terms["mse"], "psnr": terms["psnr"], "n": len(validation)},
    negative_elbo=terms.get("negative_elbo"),
    num_dims=config.image_size**2 * 3,
    cas=cas,
    acceptance=acceptance,
    sampler=sampler,
    per_class=per_class,
    dataset=dataset,
  )
  out = generator_dir / "quality"
  out.mkdir(parents=True, exist_ok=True)
  fileio.atomic_write_text(out / f"quality_{dataset.replace('/', '-')}_{sampler}.json", report.to_json() + "\n")
  shares = [v for v in acceptance["acceptance"].values() if v is not None]
  if control:  # no model: the PSNR of the control's own output (noisy, blurred validation images)
    clean = pipeline.to_float(validation.images)
    noisy = noise_lib.corrupt(jax.numpy.asarray(clean), jax.random.key(seed), options["noise"])
    val_psnr = quality.mean_psnr(quality.psnr(clean, np.asarray(synthesis.gaussian_blur(noisy, options["blur_sigma"]))))
  row = {
    "generator": sampler if control else kind.name,
    "sampler": sampler,
    "pool": pool and not control,
    "image_size": config.image_size,
    "dataset": dataset,
    "val_psnr_db": val_psnr if control else terms["psnr"],
    "val_negative_elbo": None if control else terms.get("negative_elbo"),
    "options": {k: v for k, v in options.items() if k != "noise"} | ({"blur_mse": blur_table} if blur_table else {}),
    "cas_balanced_accuracy": cas["balanced_accuracy"],
    "cas_roc_auc": cas["roc_auc"],
    "frechet": report.frechet_distance,
    "precision": report.precision,
    "recall": report.recall,
    "acceptance": min(shares) if shares else None,
    "acceptance_by_class": acceptance["acceptance"],
    "capped": None if control else not summary["stopped_early"],
    # the generator's training (none for the control, which has no model)
    "train_size": None if control else summary["train_size"],  # images the generator was trained on
    "epochs_run": None if control else summary["epochs_run"],
    "steps": None if control else summary["steps"],
    "train_img_per_s": None if control else summary.get("train_img_per_s"),
    "generator_seconds": None if control else summary["seconds"],
    "command": " ".join(["vaeaug-evaluate-generator", *(shlex.quote(a) for a in sys.argv[1:])]),
  }
  return report, row


def classifier_threshold(classifier_dir) -> float:
  """The decision threshold a classifier run chose on validation."""
  for name in ("validation_metrics.json", "test_metrics.json"):
    path = Path(classifier_dir) / name
    if path.exists():
      return float(json.loads(path.read_text())["threshold"])
  raise ValueError(f"{classifier_dir}: no validation_metrics.json or test_metrics.json (an unfinished classifier run?)")


def update_rows(path: str | Path, row: dict) -> list[dict]:
  """Adds `row` to the JSON list at `path`, replacing the row of the same (generator, sampler, pool,
  image_size, dataset); written atomically."""
  path = Path(path)
  rows = json.loads(path.read_text()) if path.exists() else []
  if not isinstance(rows, list):
    raise ValueError(f"{path}: not a JSON list of rows")
  key = lambda r: (  # noqa: E731
    r["generator"],
    r["sampler"],
    r["pool"],
    r["image_size"],
    r.get("dataset"),
    r.get("train_size"),
    _setting(r),
  )
  rows = [r for r in rows if key(r) != key(row)] + [row]
  rows.sort(key=lambda r: (r["pool"], r["generator"], r["sampler"]))
  path.parent.mkdir(parents=True, exist_ok=True)
  fileio.atomic_write_text(path, json.dumps(rows, indent=1) + "\n")
  return rows


def _shown_options(row: dict) -> str:
  options = {k: v for k, v in (row.get("options") or {}).items() if k not in ("blur_mse", "noise", "method")}
  return f" ({', '.join(f'{k} {v:g}' for k, v in options.items())})" if options else ""


def _setting(row: dict) -> str:
  """The sampler options that tell two rows of one (generator, sampler) apart (not the calibration table)."""
  options = {k: v for k, v in (row.get("options") or {}).items() if k != "blur_mse"}
  if row["sampler"] == "noise_blur":
    options.pop("blur_sigma", None)  # calibrated: one row per generator it matches
  return json.dumps(options, sort_keys=True)


def markdown_table(rows: list[dict]) -> str:
  """The README's generator table from quality.json rows."""

  def fmt(value, spec=".3f"):
    return "n/a" if value is None else format(value, spec)

  capped = {True: "yes", False: "no", None: "n/a"}
  lines = [
    "| generator | sampler | pool | trained on | val PSNR dB | CAS bal. acc. | Frechet | precision / recall "
    "| acceptance (min) | capped | epochs |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
  ]
  for r in rows:
    lines.append(
      f"| {r['generator']} | {r['sampler']}{_shown_options(r)} | {'yes' if r['pool'] else 'no'} | "
      f"{r.get('train_size') or 'n/a'} | {fmt(r['val_psnr_db'], '.2f')} | "
      f"{fmt(r['cas_balanced_accuracy'])} | {fmt(r['frechet'], '.2f')} | {fmt(r['precision'], '.2f')} / "
      f"{fmt(r['recall'], '.2f')} | {fmt(r['acceptance'], '.2f')} | {capped[r['capped']]} | "
      f"{r.get('epochs_run') or 'n/a'} |"
    )
  return "\n".join(lines) + "\n"
