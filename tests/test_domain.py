"""Values outside their domain: non-finite validation outputs stop training with `NonFiniteError`
naming the epoch and step (not a metrics `ValueError`), while an undefined validation metric (an AUC
with one class present) does not."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_predict import synthetic, tiny_config

from classifiers import train
from vaeaug.data import pipeline
from vaeaug.training import loop, sharding


def test_diverging_classifier_stops_with_nonfinite_error_naming_validation(tmp_path):
  # One step per epoch: the step metrics of step 1 are finite (computed before the update), so the
  # first non-finite value is the validation output after epoch 1.
  data = train.Data(train=synthetic(16, 0), validation=synthetic(16, 1), test=synthetic(8, 2))
  config = tiny_config(learning_rate=1e6, epochs=3, batch_size=16)
  with pytest.raises(loop.NonFiniteError) as error:
    train.train_and_evaluate(config, tmp_path, data=data)
  message = str(error.value)
  assert "non-finite validation probabilities (16 of 16 examples) after epoch 1 (step 1)" in message, message
  assert "last checkpoint: none" in message
  assert not (tmp_path / "test_metrics.json").exists()


def _fit(tmp_path, evaluate_extra: dict, selection_metric: str = "loss"):
  config = tiny_config(epochs=2, batch_size=16)
  data = synthetic(16, 0)
  state = train.create_train_state_for(config, 2, pipeline.num_batches(len(data), config.batch_size, "drop"))
  step = jax.jit(
    functools.partial(
      train.train_step,
      num_classes=2,
      label_smoothing=0.0,
      weights=jnp.ones(2),
      normalization=config.normalization,
      augment_config=None,
    )
  )
  loop_config = loop.LoopConfig(
    epochs=2, batch_size=16, log_every_steps=1, selection_metric=selection_metric, progress=False
  )
  return loop.fit(
    state, step, lambda state: {"loss": 0.5, **evaluate_extra}, data, loop_config, tmp_path, mesh=sharding.make_mesh()
  )


def test_loop_stops_on_a_nonfinite_validation_loss(tmp_path):
  with pytest.raises(loop.NonFiniteError, match=r"non-finite validation loss \(nan\) after epoch 1 \(step 1\)"):
    _fit(tmp_path, {"loss": float("nan")})


def test_an_undefined_validation_metric_is_not_a_failure(tmp_path):
  result = _fit(tmp_path, {"roc_auc": float("nan")})
  assert result.best_epoch == 0 and np.isnan(result.history[-1]["roc_auc"])
