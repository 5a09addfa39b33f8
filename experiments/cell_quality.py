"""Quality of one sweep cell's synthetic set, measured on the cell dataset's validation split (never test).

Recorded in `cells.jsonl` (`quality`) for every cell that uses a generator or a synthetic control, so the
gain of an arm can be related to the quality of what it added:

* `validation_loss`, `negative_elbo` (VAEs), `psnr_db`: the generator on the validation images (the
  denoising loss for a DAE; nats per image); None for model-free samplers;
* `frechet`, `precision`, `recall` (k-NN, k = 3): the synthetic images against the validation images in a
  fixed feature space per dataset (`Sweep.feature_extractor`: one classifier trained once on the
  dataset's training split), so values are comparable across cells, arms and seeds;
* `acceptance`: the share of synthetic images of each class that the cell's real-data classifier (`none`
  arm, at its threshold chosen on validation) assigns to their label, and its minimum over classes
  (`acceptance_min`); for a filtered set, the acceptance the filter saw while sampling (`filtered` True);
* `cas`: classification accuracy score: the cell's classifier recipe trained on the synthetic set alone,
  its epoch chosen on one half of the validation split and scored on the other half.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from classifiers import train as classifier_train
from vaeaug import generators, quality, synthesis
from vaeaug.data import pipeline


def validation_halves(validation: pipeline.ArrayDataset) -> tuple[pipeline.ArrayDataset, pipeline.ArrayDataset]:
  """Every other image of each class: (selection half, scoring half), deterministic."""
  first, second = [], []
  for c in range(validation.num_classes):
    idx = np.flatnonzero(validation.labels == c)
    first.append(idx[0::2])
    second.append(idx[1::2])
  return validation.take(np.sort(np.concatenate(first))), validation.take(np.sort(np.concatenate(second)))


def classification_accuracy_score(cas_config, synthetic: synthesis.SyntheticSet, validation, workdir: Path, min_size):
  """CAS on validation: trained on `synthetic` only, selected on one validation half, scored on the other."""
  select, score = validation_halves(validation)
  train = synthetic.to_dataset(provenance=False)
  repeats = max(1, math.ceil(min_size / max(len(train), 1)))
  if repeats > 1:
    train = train.take(np.tile(np.arange(len(train)), repeats))
  sub = cas_config
  if sub.get("max_steps"):  # the sweep's recipe caps its steps, not its epochs
    steps_per_epoch = max(1, len(train) // sub.batch_size)
    sub.epochs = max(1, min(sub.epochs, math.ceil(sub.max_steps / steps_per_epoch)))
  summary = classifier_train.train_and_evaluate(
    sub, workdir, data=classifier_train.Data(train=train, validation=select, test=score)
  )
  return {
    "balanced_accuracy": summary["test"]["balanced_accuracy"],
    "roc_auc": summary["test"]["roc_auc"],
    "scored_on": f"validation half ({len(score)} images; epoch chosen on the other {len(select)})",
  }


def measure(
  config,
  *,
  model,
  generator_config,
  synthetic: synthesis.SyntheticSet,
  validation: pipeline.ArrayDataset,
  features,
  classifier,
  filter_report: dict | None,
  cas_workdir: Path,
  cas_config,
  mesh,
) -> dict:
  """The quality record of one synthetic set (see the module docstring); `classifier` is the cell's
  (predict_proba, threshold) or None, `features` a dataset -> features function or None."""
  out: dict = {"n_synthetic": len(synthetic)}
  if model is not None and generator_config is not None:
    terms = generators.evaluate_model(model, validation, generators.loss_options(generator_config), mesh)
    out["validation_loss"] = terms["loss"]
    out["negative_elbo"] = terms.get("negative_elbo")
    out["psnr_db"] = terms["psnr"]
  else:
    out.update(validation_loss=None, negative_elbo=None, psnr_db=None)
  if features is not None:
    fake = synthetic.to_dataset(provenance=False)
    metrics = quality.feature_metrics(
      features(validation), validation.labels, features(fake), fake.labels, validation.class_names, k=3
    )
    out.update(frechet=metrics["frechet_distance"], precision=metrics["precision"], recall=metrics["recall"])
  acceptance = None
  if filter_report is not None:  # what the filter accepted while sampling (the kept set passes by construction)
    acceptance = filter_report.get("acceptance")
  elif classifier is not None:
    predict, threshold = classifier
    acceptance = synthesis.filter_by_decision(synthetic, predict, threshold)[1]["acceptance"]
  shares = [v for v in (acceptance or {}).values() if v is not None]
  out["filtered"] = filter_report is not None
  out["acceptance"] = acceptance
  out["acceptance_min"] = min(shares) if shares else None
  if config.quality.cas:
    out["cas"] = classification_accuracy_score(cas_config, synthetic, validation, cas_workdir, config.min_epoch_size)
  return out
