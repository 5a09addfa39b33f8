"""Generator training on the shared loop, its resume, figures, synthesis CLI and quality evaluation."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from test_training import real_crops, tiny_config

from classifiers import train as classifier_train
from experiments import generator_eval
from experiments.configs import generator as generator_config
from vaeaug import generators, synthesis
from vaeaug.training import logs

REPO = Path(__file__).resolve().parents[1]


def tiny_generator_config(model, **overrides):
  config = generator_config.get_config()
  config.update(
    dict(
      model=model,
      image_size=16,
      latent_dim=8,
      batch_size=16,
      eval_batch_size=32,
      epochs=2,
      learning_rate=2e-3,
      log_every_steps=1,
      patience=None,
      figures=False,
      progress=False,
      kl_warmup_epochs=0.5,
    )
  )
  config.channels = (8, 8, 8, 8) if model == "dae" else (8, 8, 8, 8, 8)
  if model != "dae":
    config.image_size = 32  # five stride-2 convolutions
  config.update(overrides)
  return config


@pytest.fixture(scope="module")
def data16():
  return generators.Data(train=real_crops(24, 16), validation=real_crops(8, 16, "Validation"))


@pytest.fixture(scope="module")
def data32():
  return generators.Data(train=real_crops(24, 32), validation=real_crops(8, 32, "Validation"))


def data_for(config, data16, data32):
  return data16 if config.image_size == 16 else data32


def param_leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves((state.params, state.model_state))]


@pytest.mark.parametrize("model", ["dae", "vae", "cvae"])
def test_training_on_real_crops_lowers_the_loss(model, data16, data32, tmp_path):
  config = tiny_generator_config(model, epochs=8, learning_rate=5e-3)
  summary = generators.train_generator(config, tmp_path, data=data_for(config, data16, data32))
  records = logs.read_metrics(tmp_path / "metrics.jsonl")
  nll = [r["nll"] for r in records if r["split"] == "train"]
  # Binary cross-entropy on [0, 1] pixels cannot go below the pixels' own entropy: measure the
  # progress against that floor.
  t = np.clip(data_for(config, data16, data32).train.images / 255.0, 1e-6, 1 - 1e-6)
  floor = np.mean(np.sum(-(t * np.log(t) + (1 - t) * np.log(1 - t)), axis=(1, 2, 3)))
  assert np.mean(nll[-3:]) - floor < 0.8 * (np.mean(nll[:3]) - floor)
  assert np.isfinite(summary["validation"]["loss"]) and summary["validation"]["psnr"] > 0
  if model != "dae":
    assert summary["validation"]["negative_elbo"] >= summary["validation"]["nll"]  # KL >= 0


def test_generator_resume_equals_uninterrupted(data16, data32, tmp_path):
  config = tiny_generator_config("cvae", epochs=2, checkpoint_every_steps=1)
  data = data_for(config, data16, data32)
  generators.train_generator(config, tmp_path / "full", data=data)
  _, full, _ = generators.restore_state(tmp_path / "full")

  real_fit = generators.loop.fit
  calls = {"n": 0}

  class Killed(Exception):
    pass

  def fit_that_dies(state, step_fn, *args, **kwargs):
    def dying(state, batch, key):
      calls["n"] += 1
      if calls["n"] > 2:
        raise Killed
      return step_fn(state, batch, key)

    return real_fit(state, dying, *args, **kwargs)

  generators.loop.fit = fit_that_dies
  try:
    with pytest.raises(Killed):
      generators.train_generator(config, tmp_path / "resumed", data=data)
  finally:
    generators.loop.fit = real_fit
  generators.train_generator(config, tmp_path / "resumed", data=data)
  _, resumed, _ = generators.restore_state(tmp_path / "resumed")
  for a, b in zip(param_leaves(full), param_leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  strip = lambda path: [{k: v for k, v in r.items() if k != "img_per_s"} for r in logs.read_metrics(path)]
  assert strip(tmp_path / "full" / "metrics.jsonl") == strip(tmp_path / "resumed" / "metrics.jsonl")


@pytest.fixture(scope="module")
def trained_cvae(data32, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("cvae")
  config = tiny_generator_config("cvae", figures=True)
  generators.train_generator(config, workdir, data=data32)
  return workdir


def test_generator_figures_are_written(trained_cvae):
  from PIL import Image

  for name in ("reconstructions", "samples", "interpolation", "curves"):
    with Image.open(trained_cvae / "figures" / f"{name}.png") as image:
      assert image.size[0] > 200 and image.size[1] > 100
      assert np.asarray(image.convert("L")).std() > 5  # not blank


def test_restored_generator_decodes_like_the_trained_one(trained_cvae, data32):
  config, model, class_names = generators.restore_generator(trained_cvae)
  assert class_names == data32.class_names and model.kind == "cvae"
  z = np.zeros((2, model.latent_dim), np.float32)
  images = np.asarray(model.generate(z, labels=np.array([0, 1])))
  assert images.shape == (2, 32, 32, 3) and np.all((0 <= images) & (images <= 1))
  assert not np.allclose(images[0], images[1])  # the label changes the decoded image


def test_synthesize_cli_round_trip(trained_cvae, tmp_path, monkeypatch):
  # The CLI reloads the generator's training data through the pipeline: point it at the arrays.
  out = tmp_path / "synthetic.npz"
  code = (
    "import sys; sys.path.insert(0, {tests!r}); import test_training, test_generators as tg;"
    "from vaeaug import generators;"
    "generators.load_data = lambda config: generators.Data(train=test_training.real_crops(24, 32),"
    " validation=test_training.real_crops(8, 32, 'Validation'));"
    "from experiments import synthesize; from absl import app;"
    "sys.argv = ['synthesize', '--generator={gen}', '--per_class=5', '--sampler=prior', '--out={out}'];"
    "app.run(synthesize.main)"
  ).format(tests=str(REPO / "tests"), gen=trained_cvae, out=out)
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "5 with_mask, 5 without_mask" in result.stdout
  loaded = synthesis.load_synthetic(out)
  assert len(loaded.labels) == 10 and set(loaded.sampler.tolist()) == {"prior"}
  assert json.loads(out.with_name(out.name + ".json").read_text())["sampler"] == "prior"


def test_evaluate_generator_reports_every_quality_measure_on_validation_only(
  trained_cvae, data32, tmp_path, monkeypatch
):
  splits = {"train": data32.train, "validation": data32.validation}
  monkeypatch.setattr(generator_eval.pipeline, "load_splits", lambda *args, **kwargs: splits)
  monkeypatch.setattr(generator_eval.pipeline, "load_split", lambda *a, **k: pytest.fail("test split read"))
  classifier_dir = tmp_path / "classifier"
  classifier_train.train_and_evaluate(
    tiny_config(image_size=32, epochs=1),
    classifier_dir,
    data=classifier_train.Data(train=data32.train, validation=data32.validation),
    score_test=False,
  )
  small = tiny_config(image_size=32)
  monkeypatch.setattr(generator_eval.classifier_config, "get_config", small.copy_and_resolve_references)
  report, row = generator_eval.evaluate_generator(
    trained_cvae,
    classifier_dir=classifier_dir,
    per_class=10,
    cas_epochs=1,
    classifier_model="cnn_bn3",
    sampler="counterfactual",
    figures_dir=tmp_path / "figures",
  )
  assert report.negative_elbo > 0 and report.bits_per_dim > 0
  assert np.isfinite(report.frechet_distance) and 0 <= report.precision <= 1 and 0 <= report.recall <= 1
  assert 0 <= report.cas["balanced_accuracy"] <= 1 and "validation half" in report.cas["scored_on"]
  acceptance = report.extra["acceptance"]["acceptance"]
  assert set(acceptance) == {"with_mask", "without_mask"} and row["acceptance"] == min(acceptance.values())
  assert set(generator_eval.ROW_KEYS) <= set(row) and row["generator"] == "cvae" and row["pool"] is False
  assert isinstance(row["capped"], bool) and row["sampler"] == "counterfactual"
  assert (trained_cvae / "quality" / "quality_face_mask_detection-2classes_counterfactual.json").is_file()
  assert (tmp_path / "figures" / f"pairs_{trained_cvae.name}_counterfactual_32px.png").is_file()
  assert "Frechet" in report.format_table()
  # quality.json: one row per setting, replaced when the setting is evaluated again
  table = tmp_path / "quality.json"
  generator_eval.update_rows(table, row)
  rows = generator_eval.update_rows(table, {**row, "cas_balanced_accuracy": 0.5})
  assert len(rows) == 1 and json.loads(table.read_text())[0]["cas_balanced_accuracy"] == 0.5
  assert f"| cvae | counterfactual | no | {len(data32.train)} |" in generator_eval.markdown_table(rows)
  # another setting of a sampler makes another set: its CAS is trained anew, not read from the first's run
  for temperature in (1.0, 2.0, 2.0):
    generator_eval.evaluate_generator(
      trained_cvae,
      classifier_dir=classifier_dir,
      per_class=10,
      cas_epochs=1,
      sampler="prior",
      sampler_options={"temperature": temperature},
    )
  assert len(list((trained_cvae / "quality").glob("cas_*_prior_*"))) == 2  # the repeated setting reuses its run
  # the model-free control: its own row, its PSNR that of the noisy blurred validation images
  _, control = generator_eval.evaluate_generator(
    trained_cvae,
    classifier_dir=classifier_dir,
    per_class=10,
    cas_epochs=1,
    sampler="noise_blur",
    sampler_options={"blur_sigma": 1.0},
  )
  assert (control["generator"], control["pool"], control["capped"]) == ("noise_blur", False, None)
  assert 10 < control["val_psnr_db"] < 40 and control["options"] == {"blur_sigma": 1.0}
  with pytest.raises(ValueError, match="calibrates against a denoising generator"):
    generator_eval.evaluate_generator(trained_cvae, classifier_dir=classifier_dir, sampler="noise_blur")


def test_step_compiler_options_switch_off_ynn_fusions_with_equal_results():
  """The generator config compiles its steps without XLA:CPU's YNNPACK fusions (faster here): the
  option reaches XLA (no ynn fusion left in the compiled step), and three steps give the same
  losses as with the fusions, up to float rounding."""
  import functools

  from vaeaug.training.state import step_compiler_options

  config = tiny_generator_config("dae")
  assert config.xla_cpu_ynn_fusions is False and step_compiler_options(config) == (
    {"xla_cpu_experimental_ynn_fusion_type": ""} if jax.default_backend() == "cpu" else {}
  )
  with_ynn = tiny_generator_config("dae", xla_cpu_ynn_fusions=True)
  assert step_compiler_options(with_ynn) == {}
  batch = {
    "image": np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
    "label": np.arange(16, dtype=np.int32) % 2,
  }
  losses, texts = [], []
  for cfg in (with_ynn, config):
    state = generators.create_generator_state(cfg, 2, steps_per_epoch=10)
    step = jax.jit(
      functools.partial(generators.train_step, beta=cfg.beta, warmup_steps=0, options=generators.loss_options(cfg)),
      compiler_options=step_compiler_options(cfg),
    )
    texts.append(step.lower(state, batch, jax.random.key(0)).compile().as_text())
    run = []
    for _ in range(3):
      state, metrics = step(state, batch, jax.random.key(0))
      run.append(float(metrics["loss"]))
    losses.append(run)
  if jax.default_backend() == "cpu":
    assert "%ynn_fusion" in texts[0] and "%ynn_fusion" not in texts[1]
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)
