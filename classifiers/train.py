"""Classifier training and evaluation on the shared loop (`vaeaug.training.loop.fit`).

`train_and_evaluate(config, workdir)` loads the data, trains with model selection on validation,
chooses the decision threshold on validation, then scores the test split exactly once with the
best-on-validation parameters and writes `test_metrics.json` (and figures).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from classifiers import metrics as metrics_lib
from classifiers import models, pretrained, transfer
from vaeaug import fileio
from vaeaug.data import augment, pipeline
from vaeaug.training import checkpoints, loop, run, sharding
from vaeaug.training import state as state_lib
from vaeaug.training.state import TrainState, split_model, step_compiler_options

log = logging.getLogger(__name__)


def create_model_for(config: ml_collections.ConfigDict, num_classes: int) -> models.Classifier:
  """The model `config` names, initialised from `config.seed` (no pretrained weights)."""
  return models.create_model(
    config.model,
    num_classes,
    rngs=nnx.Rngs(params=config.seed),
    head=config.head,
    image_size=config.image_size,
    dtype=config.get("compute_dtype", "float32"),
    **dict(config.model_overrides),
  )


def create_train_state_for(
  config: ml_collections.ConfigDict, num_classes: int, steps_per_epoch: int, *, model: models.Classifier | None = None
) -> TrainState:
  """`model` (default: `create_model_for`) with `config`'s optimizer. A frozen backbone
  (`config.freeze`) gets zero updates through `transfer.optimizer`."""
  model = create_model_for(config, num_classes) if model is None else model
  tx = run.make_tx(config, steps_per_epoch)
  freeze = config.get("freeze", "none")
  if freeze != "none":
    scaled = config.learning_rate * config.backbone_learning_rate_scale
    backbone_tx = run.make_tx(config, steps_per_epoch, learning_rate=scaled)
    tx = transfer.optimizer(
      model, nnx.state(model, nnx.Param), tx, backbone_tx, freeze=freeze, unfreeze_blocks=config.unfreeze_blocks
    )
  return state_lib.create_train_state(model, tx)


def class_weights(spec: str, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Per-class loss weights: none (all 1), balanced (n / (C * count_c), mean 1 over the training
  set), or explicit comma-separated numbers."""
  if spec == "none":
    return np.ones(num_classes, np.float32)
  if spec == "balanced":
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if np.any(counts == 0):
      raise ValueError(f"class_weights=balanced needs every class in the training data, counts {counts.tolist()}")
    return (len(labels) / (num_classes * counts)).astype(np.float32)
  weights = np.asarray([float(w) for w in spec.split(",")], np.float32)
  if weights.shape != (num_classes,) or np.any(weights <= 0):
    raise ValueError(f"class_weights {spec!r}: need {num_classes} positive comma-separated numbers")
  return weights


def loss_and_probabilities(logits, labels, *, num_classes: int, label_smoothing: float, weights):
  """Per-example loss and class probabilities for a binary (one logit) or softmax head."""
  if logits.shape[-1] == 1:
    targets = labels.astype(jnp.float32) * (1 - label_smoothing) + 0.5 * label_smoothing
    losses = optax.sigmoid_binary_cross_entropy(logits[:, 0], targets)
    p1 = jax.nn.sigmoid(logits[:, 0])
    probabilities = jnp.stack([1 - p1, p1], axis=-1)
  else:
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    losses = optax.softmax_cross_entropy(logits, targets)
    probabilities = jax.nn.softmax(logits)
  return losses * jnp.asarray(weights)[labels], probabilities


def _prepare_images(images, normalization: str, augment_config: augment.AugmentConfig | None, key):
  """uint8 batch -> float model input; augmentation (if any) works on [0, 1] before normalising."""
  images = pipeline.to_float(images, "unit")
  if augment_config is not None and not augment_config.is_identity:
    images = augment.augment_batch(images, key, augment_config)
  return pipeline.normalize_unit(images, normalization)


def train_step(
  state: TrainState,
  batch,
  base_key,
  *,
  num_classes: int,
  label_smoothing: float,
  weights,
  normalization: str,
  augment_config,
  backbone: str = "train",
  mixup_alpha: float = 0.0,
):
  """One optimisation step. Randomness (dropout, augmentation, mixup) comes from (base_key, step).
  `backbone` (`transfer.backbone_mode`): "train"; "inference": the backbone runs as in evaluation
  (a pretrained backbone keeps its batch-norm statistics) and the rest in training mode; "frozen":
  inference, and no gradient is computed through the backbone at all. `mixup_alpha` > 0: mixup
  (Zhang et al. 2018) after augmentation, one weight lam ~ Beta(alpha, alpha) per batch, each image
  mixed with another of the batch and the loss mixed the same way."""
  step_key = jax.random.fold_in(base_key, state.step)
  augment_key, dropout_key = jax.random.split(step_key)
  images = _prepare_images(batch["image"], normalization, augment_config, augment_key)
  labels = batch["label"]
  if mixup_alpha > 0:  # its own key: runs without mixup keep their random streams
    lam_key, partner_key = jax.random.split(jax.random.fold_in(step_key, 2))
    lam = jax.random.beta(lam_key, mixup_alpha, mixup_alpha)
    partners = jax.random.permutation(partner_key, images.shape[0])
    images = lam * images + (1 - lam) * images[partners]
  model = state.model()

  def batch_loss(logits):
    losses, probabilities = loss_and_probabilities(
      logits, labels, num_classes=num_classes, label_smoothing=label_smoothing, weights=weights
    )
    if mixup_alpha > 0:  # cross-entropy is linear in the target: mixing losses is mixing labels
      partner_losses, _ = loss_and_probabilities(
        logits, labels[partners], num_classes=num_classes, label_smoothing=label_smoothing, weights=weights
      )
      losses = lam * losses + (1 - lam) * partner_losses
    return losses.mean(), probabilities

  def loss_fn(model):
    rngs = nnx.Rngs(dropout=dropout_key)
    if backbone != "train":
      features = model.features(images, train=False)
      if backbone == "frozen":  # the backward pass stops at the head: a third of the step's work
        features = jax.lax.stop_gradient(features)
      logits = model.classify(features, train=True, rngs=rngs)
    else:
      logits = model(images, train=True, rngs=rngs)
    return batch_loss(logits)

  (loss, probabilities), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  _, model_state = split_model(model)
  accuracy = jnp.mean(jnp.argmax(probabilities, -1) == batch["label"])
  new_state = state.apply_gradients(grads, model_state)
  return new_state, {"loss": loss, "accuracy": accuracy, "grad_norm": optax.global_norm(grads)}


def eval_step(state: TrainState, images, *, normalization: str):
  """Class probabilities (N, C) of a batch with the running batch-norm statistics."""
  logits = state.model()(_prepare_images(images, normalization, None, None), train=False)
  if logits.shape[-1] == 1:
    p1 = jax.nn.sigmoid(logits[:, 0])
    return jnp.stack([1 - p1, p1], axis=-1)
  return jax.nn.softmax(logits)


def predict_probabilities(predict_fn, state, dataset: pipeline.ArrayDataset, batch_size: int, mesh) -> np.ndarray:
  """`predict_fn(state, images)` for every example of `dataset`, in order (padded last batch
  masked out): probabilities from `eval_step`, features from `embed_step`."""
  batch_size = pipeline.even_batch_size(len(dataset), batch_size, mesh.devices.size)
  outputs = []
  for batch in pipeline.epoch_batches(dataset, batch_size, seed=0, epoch=0, shuffle=False, remainder="pad"):
    images = sharding.shard_global_batch({"image": batch["image"]}, mesh)["image"]
    probabilities = np.asarray(sharding.fetch(predict_fn(state, images)))
    outputs.append(probabilities[batch["mask"]])
  return np.concatenate(outputs)


def embed_step(state: TrainState, images, *, normalization: str):
  """Globally averaged last convolutional feature map: the classifier's feature space (used for
  Frechet distance and precision/recall of synthetic images)."""
  model = state.model()
  features = model.features(_prepare_images(images, normalization, None, None), train=False)
  return features.mean(axis=(1, 2))


def weighted_log_loss(labels, probabilities, weights) -> float:
  p = np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1.0)
  return float(np.mean(-np.log(p) * weights[labels]))


Data = run.Data


# One jitted function per step configuration for the whole process: the cells of a sweep reuse its
# compiled executables instead of tracing and fetching them again (about 0.3 s per warm cell).
@functools.lru_cache(maxsize=64)
def jitted_train_step(
  num_classes: int,
  label_smoothing: float,
  weights: tuple,
  normalization: str,
  augment_config,
  options: tuple,
  backbone: str = "train",
  mixup_alpha: float = 0.0,
):
  return jax.jit(
    functools.partial(
      train_step,
      num_classes=num_classes,
      label_smoothing=label_smoothing,
      weights=np.asarray(weights, np.float32),
      normalization=normalization,
      augment_config=augment_config,
      backbone=backbone,
      mixup_alpha=mixup_alpha,
    ),
    donate_argnums=0,
    compiler_options=dict(options),
  )


@functools.lru_cache(maxsize=64)
def jitted_eval_step(normalization: str, options: tuple):
  return jax.jit(functools.partial(eval_step, normalization=normalization), compiler_options=dict(options))


def load_data(config) -> Data:
  """The real training images (`run.real_train`), validation and test splits of `config`."""
  return run.load_data(config, test=True)


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str | Path,
  data: Data | None = None,
  *,
  score_test: bool = True,
  overwrite: bool = False,
) -> dict:
  """Train, select on validation, score test once; returns (and writes) the test metrics.

  `score_test=False` stops after validation (summary `test` is None): for candidates of a choice made on
  validation, so that only the chosen one ever reads the test split. A workdir holding a run of another
  config is refused (`run.WorkdirConfigMismatch`) unless `overwrite`, which starts over.
  """
  workdir = Path(workdir)
  start = time.perf_counter()
  config = transfer.resolve(config)  # the checkpoint's input size, normalisation and model options
  data = data or load_data(config)
  num_classes = len(data.class_names)
  setup = run.setup(config, workdir, data, overwrite=overwrite)
  mesh = setup.mesh
  model = create_model_for(config, num_classes)
  report = None
  if config.get("pretrained"):  # (a resumed run's checkpoint then replaces these weights)
    report = pretrained.load(model, config.pretrained, source=config.pretrained_source)
    if jax.process_index() == 0 and config.progress:
      print(f"pretrained: {report.summary()}", flush=True)
  state = create_train_state_for(config, num_classes, setup.steps_per_epoch, model=model)
  weights = class_weights(config.class_weights, data.train.labels, num_classes)
  augment_config = (
    augment.PRESETS[config.augment]
    if isinstance(config.augment, str)
    else (augment.AugmentConfig.from_dict(config.augment))
  )

  options = tuple(sorted(step_compiler_options(config).items()))
  step_fn = jitted_train_step(
    num_classes,
    float(config.label_smoothing),
    tuple(map(float, weights)),
    config.normalization,
    augment_config,
    options,
    transfer.backbone_mode(config),
    float(config.get("mixup_alpha", 0.0)),
  )
  predict_fn = jitted_eval_step(config.normalization, options)

  def evaluate(state):
    probabilities = predict_probabilities(predict_fn, state, data.validation, config.eval_batch_size, mesh)
    # Diverged parameters: stop as a training failure (the loop names epoch and step), not a metrics ValueError.
    bad = ~np.isfinite(probabilities).all(axis=-1)
    if bad.any():
      raise loop.NonFiniteError(f"non-finite validation probabilities ({bad.sum()} of {bad.size} examples)")
    result = metrics_lib.classification_metrics(data.validation.labels, probabilities, class_names=data.class_names)
    scalars = {k: v for k, v in result.items() if isinstance(v, (int, float))}
    scalars["loss"] = weighted_log_loss(data.validation.labels, probabilities, np.ones(num_classes))
    return scalars

  loop_config = loop.LoopConfig.from_config(config, setup.batch_size, config.selection_metric, config.selection_mode)
  result = loop.fit(state, step_fn, evaluate, data.train, loop_config, workdir, mesh=mesh, hparams=config.to_dict())

  # Threshold from validation; test scored once, with the best-on-validation parameters.
  val_probabilities = predict_probabilities(predict_fn, result.state, data.validation, config.eval_batch_size, mesh)
  threshold = 0.5
  if num_classes == 2:
    threshold, _ = metrics_lib.best_threshold(data.validation.labels, val_probabilities[:, 1], config.threshold_metric)
  test = test_at_half = test_probabilities = None
  if score_test:
    test_probabilities = predict_probabilities(predict_fn, result.state, data.test, config.eval_batch_size, mesh)
    test = metrics_lib.classification_metrics(
      data.test.labels, test_probabilities, threshold=threshold, class_names=data.class_names
    )
    test_at_half = metrics_lib.classification_metrics(
      data.test.labels, test_probabilities, threshold=0.5, class_names=data.class_names
    )
  validation = metrics_lib.classification_metrics(
    data.validation.labels, val_probabilities, threshold=threshold, class_names=data.class_names
  )
  summary = {
    "dataset": config.dataset,
    "model": config.model,
    "seed": config.seed,
    "n_per_class": config.n_per_class,
    "train_size": len(data.train),
    "class_names": list(data.class_names),
    "best_epoch": result.best_epoch,
    "epochs_run": len(result.history),
    "stopped_early": result.stopped_early,
    "selection_metric": config.selection_metric,
    "best_validation_value": result.best_value,
    "threshold": threshold,
    "test": test,
    "test_at_threshold_0.5": test_at_half,
    "validation": validation,
    "steps": result.steps,
    "seconds": round(time.perf_counter() - start, 1),
    "timing": result.timing,  # the training loop's seconds by phase
  }
  if config.get("pretrained"):
    model = result.state.model()
    summary["pretrained"] = {
      "path": config.pretrained,
      "source": config.pretrained_source,
      "freeze": config.freeze,
      "unfreeze_blocks": config.unfreeze_blocks,
      "parameters": transfer.trainable_count(model, config.freeze, config.unfreeze_blocks),
      "report": report.to_dict(),
    }
  if jax.process_index() == 0 and not score_test:
    fileio.atomic_write_text(
      workdir / "validation_metrics.json", json.dumps(summary, indent=1, default=_json_default) + "\n"
    )
  elif jax.process_index() == 0:
    # Predictions first: test_metrics.json is what marks the run finished.
    fileio.atomic_write(
      workdir / "test_predictions.npz",
      lambda f: np.savez(f, probabilities=test_probabilities, labels=data.test.labels),
      size_hint=np.asarray(test_probabilities).nbytes + np.asarray(data.test.labels).nbytes,
    )
    fileio.atomic_write_text(workdir / "test_metrics.json", json.dumps(summary, indent=1, default=_json_default) + "\n")
    if config.figures:
      from classifiers import figures  # matplotlib only when figures are asked for

      figures.write_training_figures(workdir, summary, data.test, test_probabilities, result.state, config)
  return summary


def _json_default(value):
  if isinstance(value, (np.generic, np.ndarray)):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def restore_best(workdir: str | Path) -> tuple[ml_collections.ConfigDict, TrainState, tuple[str, ...]]:
  """(config, state with the best-on-validation parameters, class names) of a classifier workdir,
  for prediction and explanations."""
  return checkpoints.restore_best_state(
    workdir, lambda config, num_classes: create_train_state_for(config, num_classes, steps_per_epoch=1)
  )
