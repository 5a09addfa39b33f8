"""Generator (any kind of `vaeaug.kinds`: DAE, VAE, CVAE, residual VAE, ...) training on the shared loop (`vaeaug.training.loop.fit`).

The generator of a comparison cell is trained on that cell's real training subset only, with
model selection on the validation split (lowest validation loss: the negative ELBO for the VAE and
CVAE, the denoising reconstruction loss for the DAE). `train_generator(config, workdir, data)`
writes `metrics.jsonl`, checkpoints, `generator_metrics.json` and figures; `restore_generator`
loads the best-on-validation model back for synthesis and evaluation.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from vaeaug import fileio, generator_figures, kinds  # imports matplotlib only to draw figures
from vaeaug.data import pipeline
from vaeaug.models import autoencoders
from vaeaug.models import noise as noise_lib
from vaeaug.training import checkpoints, logs, loop, run, sharding
from vaeaug.training.state import TrainState, split_model, step_compiler_options


def noise_config(config) -> noise_lib.NoiseConfig:
  return noise_lib.NoiseConfig(
    kind=config.noise.kind, sigma=config.noise.sigma, p=config.noise.p, mask_fraction=config.noise.mask_fraction
  )


def loss_options(config) -> kinds.LossOptions:
  return kinds.LossOptions(noise=noise_config(config), free_bits=float(config.get("free_bits") or 0.0))


def create_model(config, num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
  """The generator of `config.model`, a kind of the registry (`vaeaug.kinds`), built with the config fields
  that kind takes."""
  kind = kinds.get(config.model)
  options = {name: config[name] for name in kind.options if config.get(name) is not None}
  for name, value in options.items():
    if isinstance(value, list):  # ConfigDict round trips turn tuples into lists
      options[name] = tuple(value)
  return kind.create(
    image_size=config.image_size,
    num_classes=num_classes,
    rngs=rngs,
    dtype=config.get("compute_dtype", "float32"),
    **options,
  )


def create_generator_state(config, num_classes: int, steps_per_epoch: int) -> TrainState:
  model = create_model(config, num_classes, nnx.Rngs(params=config.seed))
  return run.create_train_state(config, model, steps_per_epoch)


def losses(model, images, labels, key, *, train: bool, beta, options: kinds.LossOptions):
  """Per-example loss terms (nats per image) of the model's kind (`GeneratorKind.losses`)."""
  return kinds.of(model).losses(model, images, labels, key, train=train, beta=beta, options=options)


def train_step(state: TrainState, batch, base_key, *, beta: float, warmup_steps: int, options: kinds.LossOptions):
  key = jax.random.fold_in(base_key, state.step)
  images = pipeline.to_float(batch["image"], "unit")
  beta_t = autoencoders.beta_schedule(state.step, beta=beta, warmup_steps=warmup_steps)
  model = state.model()

  def loss_fn(model):
    terms = losses(model, images, batch["label"], key, train=True, beta=beta_t, options=options)
    return terms["loss"].mean(), terms

  (loss, terms), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  _, model_state = split_model(model)
  metrics = {name: value.mean() for name, value in terms.items()}
  metrics["beta"] = jnp.asarray(beta_t, jnp.float32)
  metrics["grad_norm"] = optax.global_norm(grads)  # the loop stops on a non-finite gradient
  return state.apply_gradients(grads, model_state), metrics


def eval_step(state: TrainState, images, labels, key, *, options: kinds.LossOptions, reconstruction: bool = True):
  """Per-example validation terms with the true ELBO (beta = 1) and, with `reconstruction`, the
  reconstruction errors (a second pass through the model: the per-epoch model selection reads only
  the loss, so training validates without it)."""
  return eval_terms(state.model(), images, labels, key, options=options, reconstruction=reconstruction)


def eval_terms(model, images, labels, key, *, options: kinds.LossOptions, reconstruction: bool = True):
  """`eval_step` of a model (rather than a train state)."""
  x = pipeline.to_float(images, "unit")
  terms = losses(model, x, labels, key, train=False, beta=1.0, options=options)
  if not reconstruction:
    return terms
  reconstruction = model.reconstruct(x, train=False, labels=labels if model.conditional else None)
  squared = jnp.mean((reconstruction - x) ** 2, axis=(1, 2, 3))
  return {**terms, "mse": squared, "psnr": -10.0 * jnp.log10(jnp.maximum(squared, 1e-10))}


def evaluate_dataset(eval_fn, state, dataset: pipeline.ArrayDataset, batch_size: int, mesh, seed: int = 0) -> dict:
  """Means over `dataset` of the per-example terms (a fixed key per batch: deterministic)."""
  batch_size = max(mesh.devices.size, batch_size - batch_size % mesh.devices.size)
  sums, count = {}, 0
  for index, batch in enumerate(
    pipeline.epoch_batches(dataset, batch_size, seed=0, epoch=0, shuffle=False, remainder="pad")
  ):
    arrays = sharding.shard_global_batch({"image": batch["image"], "label": batch["label"]}, mesh)
    key = jax.random.fold_in(jax.random.key(seed), index)
    terms = sharding.fetch(eval_fn(state, arrays["image"], arrays["label"], key))
    mask = batch["mask"]
    for name, values in terms.items():
      sums[name] = sums.get(name, 0.0) + float(np.asarray(values)[mask].sum())
    count += int(mask.sum())
  return {name: total / count for name, total in sums.items()}


@functools.partial(jax.jit, static_argnums=(0, 5))
def _eval_model(graphdef, state, images, labels, key, options):
  return eval_terms(nnx.merge(graphdef, state), images, labels, key, options=options)


def evaluate_model(model, dataset: pipeline.ArrayDataset, options: kinds.LossOptions, mesh, batch_size=256, seed=0):
  """`evaluate_dataset` of a trained model (e.g. a restored generator on another dataset's validation split)."""
  graphdef, state = nnx.split(model)
  eval_fn = lambda _, images, labels, key: _eval_model(graphdef, state, images, labels, key, options)  # noqa: E731
  return evaluate_dataset(eval_fn, None, dataset, batch_size, mesh, seed=seed)


Data = run.Data


POOL_DATASET = "pool"


# One jitted function per step configuration for the whole process: the cells of a sweep reuse its
# compiled executables instead of tracing and fetching them again.
@functools.lru_cache(maxsize=64)
def jitted_train_step(beta: float, warmup_steps: int, options: kinds.LossOptions, compiler_options: tuple):
  return jax.jit(
    functools.partial(train_step, beta=beta, warmup_steps=warmup_steps, options=options),
    donate_argnums=0,
    compiler_options=dict(compiler_options),
  )


@functools.lru_cache(maxsize=64)
def jitted_eval_step(options: kinds.LossOptions, compiler_options: tuple, reconstruction: bool = True):
  return jax.jit(
    functools.partial(eval_step, options=options, reconstruction=reconstruction),
    compiler_options=dict(compiler_options),
  )


def load_data(config) -> Data:
  """The real training images (`run.real_train`: the ones the classifier of the same config sees)
  and the validation split. Test is never read here. `config.dataset == "pool"`: the unlabeled face pool
  (`vaeaug.data.pool`), split into training and a held-out part for early stopping
  (`config.pool_validation_fraction`, by group)."""
  if config.dataset == POOL_DATASET:
    from vaeaug.data import pool  # deferred: builds or loads the pool (reads every dataset)

    return Data(*pool.pool_splits(config.data_dir, config.image_size, config.get("pool_validation_fraction", 0.05)))
  return run.load_data(config)


def train_generator(
  config: ml_collections.ConfigDict, workdir: str | Path, data: Data | None = None, *, overwrite: bool = False
) -> dict:
  """Train a DAE / VAE / CVAE with model selection on validation; returns (and writes) its summary. A
  workdir holding a run of another config is refused (`run.WorkdirConfigMismatch`) unless `overwrite`,
  which starts over."""
  workdir = Path(workdir)
  start = time.perf_counter()
  data = data or load_data(config)
  if config.get("max_steps"):  # the step cap as an epoch cap (a safety net: early stopping should end training)
    config = ml_collections.ConfigDict(config.to_dict())
    config.epochs = run.capped_epochs(config, len(data.train))
  setup = run.setup(config, workdir, data, overwrite=overwrite)
  state = create_generator_state(config, len(data.class_names), setup.steps_per_epoch)
  options = loss_options(config)
  compiler_options = tuple(sorted(step_compiler_options(config).items()))
  warmup_steps = round(config.kl_warmup_epochs * setup.steps_per_epoch)
  step_fn = jitted_train_step(float(config.beta), warmup_steps, options, compiler_options)
  selection_eval_fn = jitted_eval_step(options, compiler_options, reconstruction=False)

  def evaluate(state, eval_fn=selection_eval_fn):
    return evaluate_dataset(eval_fn, state, data.validation, config.eval_batch_size, setup.mesh, seed=config.seed)

  # Lowest validation loss: the negative ELBO (VAE, CVAE) or the denoising loss (DAE).
  loop_config = loop.LoopConfig.from_config(config, setup.batch_size, "loss", "min")
  # TensorBoard: reconstructions and samples of a few fixed validation images after each epoch.
  preview = generator_figures.preview_subset(data.validation)

  def epoch_hook(state, epoch, step, writer):
    for name, grid in generator_figures.tensorboard_grids(state, preview, config).items():
      writer.images(step, f"generator/{name}", grid)

  result = loop.fit(
    state,
    step_fn,
    evaluate,
    data.train,
    loop_config,
    workdir,
    mesh=setup.mesh,
    hparams=config.to_dict(),
    epoch_hook=epoch_hook,
  )
  validation = evaluate(result.state, jitted_eval_step(options, compiler_options))  # with reconstruction errors
  train_rates = [r["img_per_s"] for r in logs.read_metrics(workdir / "metrics.jsonl") if r.get("split") == "train"]
  summary = {
    "model": config.model,
    "dataset": config.dataset,
    "image_size": config.image_size,
    "seed": config.seed,
    "n_per_class": config.n_per_class,
    "train_size": len(data.train),
    "class_names": list(data.class_names),
    "best_epoch": result.best_epoch,
    "epochs_run": len(result.history),
    "stopped_early": result.stopped_early,
    # Ran out of epochs (or of its step cap) instead of stopping early on validation.
    "capped": not result.stopped_early,
    "validation": validation,
    # Only the VAEs bound a likelihood; a DAE's denoising loss is no ELBO.
    "validation_bits_per_dim": (
      validation["negative_elbo"] / (config.image_size**2 * 3 * np.log(2)) if "negative_elbo" in validation else None
    ),
    # Median over log intervals after the first (which includes compilation).
    "train_img_per_s": float(np.median(train_rates[1:])) if len(train_rates) > 1 else None,
    "steps": result.steps,
    "seconds": round(time.perf_counter() - start, 1),
    "timing": result.timing,  # the training loop's seconds by phase
  }
  if jax.process_index() == 0:
    fileio.atomic_write_text(workdir / "generator_metrics.json", json.dumps(summary, indent=1) + "\n")
    if config.figures:
      generator_figures.write_generator_figures(workdir, result.state, data, config)
  return summary


def restore_state(workdir: str | Path):
  """(config, train state with the best-on-validation parameters, class names) of a generator workdir."""
  return checkpoints.restore_best_state(
    workdir, lambda config, num_classes: create_generator_state(config, num_classes, steps_per_epoch=1)
  )


def restore_generator(workdir: str | Path):
  """(config, best-on-validation model, class names) of a generator workdir."""
  config, state, class_names = restore_state(workdir)
  return config, state.model(), class_names
