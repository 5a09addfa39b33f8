"""Offline quality of a trained generator (where `vaeaug` generators meet `classifiers`).

Reconstruction MSE/PSNR and the negative ELBO (bits/dim) on validation; a sample of synthetic
images per class; a classifier trained on the same real data gives the feature space for Frechet
distance, k-NN precision/recall and diversity, and the filter acceptance rate at `tau`; the
Classification Accuracy Score trains a classifier on synthetic images only and scores it once on
the real test split.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import numpy as np

from classifiers import train as classifier_train
from experiments.configs import classifier as classifier_config
from vaeaug import generators, quality, synthesis
from vaeaug.data import pipeline
from vaeaug.training import sharding

NATURAL_SAMPLER = {"cvae": "prior", "vae": "posterior_jitter", "dae": "denoise"}


def reference_classifier(
  generator_config, workdir: Path, data: classifier_train.Data, *, epochs: int, model: str
) -> Path:
  """A classifier trained on the generator's real training images (trained once per workdir)."""
  config = classifier_config.get_config()
  config.update(
    dict(
      dataset=generator_config.dataset,
      image_size=generator_config.image_size,
      seed=generator_config.seed,
      model=model,
      epochs=epochs,
      figures=False,
      progress=False,
      data_dir=generator_config.data_dir,
    )
  )
  classifier_train.train_and_evaluate(config, workdir, data=data)
  return workdir


def evaluate_generator(
  generator_dir: str | Path,
  *,
  classifier_dir: str | Path | None = None,
  per_class: int = 200,
  sampler: str | None = None,
  tau: float = 0.5,
  k: int = 3,
  cas_epochs: int = 10,
  classifier_model: str = "cnn96",
  seed: int = 0,
) -> quality.QualityReport:
  generator_dir = Path(generator_dir)
  config, state, class_names = generators.restore_state(generator_dir)
  model = state.model()
  sampler = sampler or NATURAL_SAMPLER[model.kind]
  real = generators.load_data(config)
  test = pipeline.load_split(config.dataset, "test", data_dir=config.data_dir, image_size=config.image_size)
  data = classifier_train.Data(train=real.train, validation=real.validation, test=test)
  mesh = sharding.make_mesh(config.num_devices)

  # Likelihood and reconstruction on validation.
  eval_fn = jax.jit(functools.partial(generators.eval_step, noise=generators.noise_config(config)))
  validation = generators.evaluate_dataset(
    eval_fn, state, real.validation, config.eval_batch_size, mesh, seed=config.seed
  )
  negative_elbo = validation.get("negative_elbo")

  # Classifier trained on the same real data: features, filter acceptance.
  classifier_dir = (
    Path(classifier_dir)
    if classifier_dir
    else reference_classifier(
      config, generator_dir / "quality" / "reference_classifier", data, epochs=cas_epochs, model=classifier_model
    )
  )
  classifier_cfg, classifier_state, _ = classifier_train.restore_best(classifier_dir)
  normalization = classifier_cfg.normalization
  embed = jax.jit(functools.partial(classifier_train.embed_step, normalization=normalization))
  predict = jax.jit(functools.partial(classifier_train.eval_step, normalization=normalization))
  options = {"noise": generators.noise_config(config)} if sampler == "denoise" else {}
  synthetic = synthesis.synthesize(
    model, real.train, per_class, sampler, seed, generator_name=str(generator_dir), **options
  )
  synthetic_data = synthetic.to_dataset()
  features = lambda dataset: classifier_train.predict_probabilities(embed, classifier_state, dataset, 256, mesh)
  _, acceptance = synthesis.filter_by_classifier(
    synthetic, lambda images: np.asarray(predict(classifier_state, images)), tau
  )

  # Classification Accuracy Score: train on synthetic only, select on real validation, test once.
  cas_config = classifier_config.get_config()
  cas_config.update(
    dict(
      dataset=config.dataset,
      image_size=config.image_size,
      seed=seed,
      model=classifier_model,
      epochs=cas_epochs,
      figures=False,
      progress=False,
    )
  )
  cas = classifier_train.train_and_evaluate(
    cas_config,
    generator_dir / "quality" / f"cas_{sampler}",
    data=classifier_train.Data(train=synthetic_data, validation=real.validation, test=test),
  )
  cas_summary = {name: cas["test"][name] for name in ("accuracy", "balanced_accuracy", "roc_auc", "f1")}

  report = quality.QualityReport.build(
    f"{model.kind} {sampler} ({generator_dir})",
    features=quality.feature_metrics(
      features(real.train), real.train.labels, features(synthetic_data), synthetic_data.labels, class_names, k=k
    ),
    reconstruction={"mse": validation["mse"], "psnr": validation["psnr"], "n": len(real.validation)},
    negative_elbo=negative_elbo,
    num_dims=config.image_size**2 * 3,
    cas=cas_summary,
    acceptance=acceptance,
    sampler=sampler,
    per_class=per_class,
  )
  out = generator_dir / "quality"
  out.mkdir(parents=True, exist_ok=True)
  (out / f"quality_{sampler}.json").write_text(report.to_json() + "\n")
  return report
