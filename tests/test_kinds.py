"""The registry of generator kinds (vaeaug.kinds): a kind registered in a test is usable end to end
(training, restore, synthesis, figures, a sweep arm with per-cell quality); free bits; the new arms
(pool-pretrained, counterfactual, noise+blur) run by name in a sweep and record their quality; pool
pretraining resumes after a kill."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from test_generators import tiny_generator_config
from test_training import real_crops

from experiments import sweep
from experiments.configs import compare as compare_config
from vaeaug import generators, kinds, synthesis
from vaeaug.data import pipeline
from vaeaug.models import autoencoders
from vaeaug.training import loop

TOY = "toyvae"


class ToyVAE(autoencoders.VAE):
  """A kind defined outside the package: a plain VAE under another name."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.kind = TOY


def toy_losses(model, images, labels, key, *, train, beta, options):
  terms = kinds.vae_losses(model, images, labels, key, train=train, beta=beta, options=options)
  terms["toy_term"] = terms["kl"] * 0  # a loss term the kind adds: logged like the others
  return terms


def toy_kind_spec(figures: tuple[str, ...]) -> kinds.GeneratorKind:
  return kinds.GeneratorKind(
    name=TOY,
    build=lambda *, image_size, num_classes, rngs, dtype, **options: ToyVAE(
      image_size=image_size, rngs=rngs, dtype=dtype, **options
    ),
    options=("latent_dim", "channels"),
    losses=toy_losses,
    samplers=("posterior_jitter", "interpolation"),
    default_sampler="interpolation",
    figures=figures,
  )


@pytest.fixture
def toy_kind():
  kind = kinds.register(toy_kind_spec(("samples", "curves")))
  yield kind
  kinds.unregister(TOY)


def test_registry_rejects_duplicates_unknown_kinds_and_samplers_they_lack():
  assert {"dae", "vae", "cvae", "rvae", "rcvae"} <= set(kinds.names())
  with pytest.raises(ValueError, match="already registered"):
    kinds.register(kinds.get("vae"))
  with pytest.raises(ValueError, match="unknown generator kind 'gan'; choose one of"):
    kinds.get("gan")
  with pytest.raises(ValueError, match="does not apply to a 'vae' generator"):
    kinds.check_sampler("vae", "denoise")
  kinds.check_sampler(None, "noise_blur")  # the control needs no model
  with pytest.raises(ValueError, match="needs a generator"):
    kinds.check_sampler(None, "prior")
  with pytest.raises(ValueError, match="default sampler"):
    kinds.GeneratorKind("x", build=None, options=(), losses=None, samplers=("gmm",), default_sampler="prior")


def test_free_bits_floor_each_dimension_in_training_only():
  model = kinds.get("vae").create(image_size=16, num_classes=2, rngs=nnx.Rngs(0), latent_dim=8, channels=(8, 8))
  images = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3))
  key = jax.random.key(2)
  plain = kinds.vae_losses(model, images, None, key, train=True, beta=1.0, options=kinds.LossOptions())
  floored = kinds.vae_losses(model, images, None, key, train=True, beta=1.0, options=kinds.LossOptions(free_bits=5.0))
  # an untrained encoder's KL per dimension is far below 5 nats: the floor is what counts
  assert np.all(np.asarray(plain["kl"]) < 8 * 5.0)
  np.testing.assert_allclose(floored["loss"], floored["nll"] + 8 * 5.0, rtol=1e-5)
  np.testing.assert_allclose(floored["negative_elbo"], plain["negative_elbo"], rtol=1e-6)
  at_eval = kinds.vae_losses(model, images, None, key, train=False, beta=1.0, options=kinds.LossOptions(free_bits=5.0))
  np.testing.assert_allclose(at_eval["loss"], at_eval["negative_elbo"], rtol=1e-6)


def test_a_kind_registered_in_a_test_trains_restores_synthesizes_and_draws(toy_kind, tmp_path):
  data = generators.Data(train=real_crops(12, 16), validation=real_crops(6, 16, "Validation"))
  config = tiny_generator_config("vae", image_size=16, channels=(8, 8), figures=True)
  config.model = TOY
  summary = generators.train_generator(config, tmp_path, data=data)
  assert summary["model"] == TOY and np.isfinite(summary["validation"]["loss"])
  logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert any("toy_term" in record for record in logged if record.get("split") == "train")
  # only the figures the kind lists
  assert sorted(p.name for p in (tmp_path / "figures").glob("*.png")) == ["curves.png", "samples.png"]
  _, model, _ = generators.restore_generator(tmp_path)
  assert model.kind == TOY and kinds.of(model) is toy_kind
  made = synthesis.synthesize(model, data.train, 3, toy_kind.default_sampler, seed=0)
  assert made.class_counts() == {"with_mask": 3, "without_mask": 3}
  with pytest.raises(ValueError, match="does not apply"):
    synthesis.synthesize(model, data.train, 3, "gmm", seed=0)


def _tiny_pool(data_dir, image_size, fraction):
  pool = real_crops(20, image_size, offset=40)
  unlabeled = pipeline.ArrayDataset(
    pool.images, np.zeros(len(pool), np.int32), pool.files, pool.groups, ("face",), name="pool"
  )
  held = np.arange(len(unlabeled)) % 10 == 0
  return unlabeled.take(np.flatnonzero(~held)), unlabeled.take(np.flatnonzero(held))


@pytest.fixture(scope="module")
def new_arms_sweep(detection_built, tmp_path_factory):
  """A tiny sweep of the toy kind, the pool arms (posterior jitter, counterfactual) and the control."""
  from vaeaug.data import pool

  patch = pytest.MonkeyPatch()
  patch.setattr(pool, "pool_splits", _tiny_pool)
  kinds.register(toy_kind_spec(()), replace=True)
  config = compare_config.get_config("tiny")
  config.arms = ("none", TOY, "pool_rvae", "pool_rvae:counterfactual", "noise_blur")
  config.num_seeds, config.compilation_cache_dir, config.data_dir = 1, "", detection_built
  config.quality.enabled = config.quality.cas = True
  workdir = tmp_path_factory.mktemp("new_arms")
  try:
    runner = sweep.Sweep(config, workdir, stream=open(os.devnull, "w"))
    records = runner.run()
  finally:
    kinds.unregister(TOY)
    patch.undo()
  return runner, records


def test_every_new_arm_runs_by_name_and_records_its_validation_quality(new_arms_sweep):
  runner, records = new_arms_sweep
  by_arm = {r["arm"]: r for r in records.values()}
  assert set(by_arm) == {"none", TOY, "pool_rvae", "pool_rvae:counterfactual", "noise_blur"}
  assert by_arm["none"]["quality"] is None
  for arm in (TOY, "pool_rvae", "pool_rvae:counterfactual", "noise_blur"):
    quality = by_arm[arm]["quality"]
    assert quality["n_synthetic"] > 0 and np.isfinite(quality["frechet"]), arm
    assert 0 <= quality["precision"] <= 1 and 0 <= quality["recall"] <= 1
    assert 0 <= quality["cas"]["balanced_accuracy"] <= 1 and "validation half" in quality["cas"]["scored_on"]
    assert 0 <= quality["acceptance_min"] <= 1
    assert isinstance(by_arm[arm]["capped"], bool)
  assert by_arm["noise_blur"]["quality"]["psnr_db"] is None  # no model
  assert by_arm["pool_rvae"]["pool"] and by_arm["pool_rvae"]["sampler"] == "posterior_jitter"
  assert np.isfinite(by_arm["pool_rvae"]["quality"]["psnr_db"])
  assert by_arm[TOY]["sampler"] == "interpolation"
  # the counterfactual set is filtered by the cell's `none` classifier at its validation threshold
  counterfactual = by_arm["pool_rvae:counterfactual"]
  assert counterfactual["sampler"] == "counterfactual" and counterfactual["quality"]["filtered"]
  # one pool generator, shared: trained once in the sweep's runs folder
  assert (runner.runs / "pool_rvae" / "generator_metrics.json").is_file()
  assert by_arm["pool_rvae"]["generator_config"]["dataset"] == "pool"


def test_pool_pretraining_resumes_after_a_kill(detection_built, tmp_path, monkeypatch):
  from vaeaug.data import pool

  monkeypatch.setattr(pool, "pool_splits", _tiny_pool)
  config = compare_config.get_config("tiny")
  config.data_dir, config.compilation_cache_dir = detection_built, ""
  config.pool_generator.epochs, config.pool_generator.max_steps = 3, 100
  sub = sweep.pool_generator_config(config, "rvae")
  uninterrupted = generators.train_generator(sub, tmp_path / "whole")
  # killed in its second epoch: the rerun resumes from the checkpoint and ends where the whole run did
  real_fit = loop.fit

  def fit_then_die(*args, epoch_hook=None, **kwargs):
    def hook(state, epoch, step, writer):
      if epoch_hook:
        epoch_hook(state, epoch, step, writer)
      if epoch == 1:  # after the first epoch's checkpoint
        raise KeyboardInterrupt

    return real_fit(*args, epoch_hook=hook, **kwargs)

  monkeypatch.setattr(loop, "fit", fit_then_die)
  with pytest.raises(KeyboardInterrupt):
    generators.train_generator(sub, tmp_path / "killed")
  monkeypatch.setattr(loop, "fit", real_fit)
  assert (tmp_path / "killed" / "checkpoints").is_dir()
  resumed = generators.train_generator(sub, tmp_path / "killed")
  assert resumed["steps"] == uninterrupted["steps"]
  np.testing.assert_allclose(resumed["validation"]["loss"], uninterrupted["validation"]["loss"], rtol=1e-5)
