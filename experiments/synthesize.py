r"""Synthesize labelled face images with a trained generator, for mixing with real training data.

  vaeaug-synthesize --generator=/tmp/cvae --per_class=500 --sampler=prior --out=/tmp/cvae_prior.npz
  vaeaug-synthesize --generator=/tmp/vae --per_class=500 --sampler=gmm --out=/tmp/vae_gmm.npz \
      --filter_classifier=/tmp/cnn96 --tau=0.8
  vaeaug-synthesize --generator=/tmp/pool_rvae --dataset=face_mask_detection/2classes --per_class=500 \
      --sampler=counterfactual --filter_classifier=/tmp/cnn_bn3 --out=/tmp/counterfactual.npz

Writes PATH (.npz, no pickle) and PATH.json (class names, generator, sampler, seed, options, counts);
every sample keeps its provenance (source image for jitter/interpolation/denoise). Load with
`vaeaug.synthesis.load_synthetic(PATH)`. With --filter_classifier, only samples that classifier
assigns to the intended class with probability >= tau are kept (acceptance printed per class); counterfactuals
are kept when the classifier's decision, at the threshold it chose on validation, is the target class.
A generator pretrained on the unlabeled pool synthesizes around a labelled dataset's training images
(--dataset).
"""

import functools
import json
import sys

import jax
import numpy as np
from absl import flags, logging

from experiments import generator_eval
from vaeaug import cli, generators, kinds, synthesis

_GENERATOR = flags.DEFINE_string("generator", None, "Generator training workdir.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output .npz path.", required=True)
_PER_CLASS = flags.DEFINE_integer("per_class", 200, "Images per class.")
_SAMPLER = flags.DEFINE_enum("sampler", "prior", list(synthesis.SAMPLERS), "Sampler.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Latent temperature (prior, jitter, gmm).")
_FILTER = flags.DEFINE_string("filter_classifier", None, "Classifier workdir for filtering.")
_TAU = flags.DEFINE_float("tau", 0.5, "Filter threshold.")
_DATASET = flags.DEFINE_string("dataset", None, "Labelled dataset to synthesize from (default: the generator's).")
_BLUR_SIGMA = flags.DEFINE_float("blur_sigma", 1.0, "noise_blur: the blur's std in pixels.")
_STRENGTH = flags.DEFINE_float("strength", 1.0, "counterfactual: how far along the class direction.")

cli.require_training_workdir("generator")
cli.require_training_workdir("filter_classifier")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config, model, _ = generators.restore_generator(_GENERATOR.value)
  sampler = _SAMPLER.value
  try:
    kinds.check_sampler(model.kind, sampler)
  except ValueError as error:
    print(f"error: --sampler: {error}", file=sys.stderr)
    sys.exit(2)
  if _DATASET.value:
    config.dataset = _DATASET.value
  elif config.dataset == generators.POOL_DATASET:
    print("error: --dataset: the generator was trained on the unlabeled pool; name a labelled dataset", file=sys.stderr)
    sys.exit(2)
  train = generators.load_data(config).train
  options = {
    "denoise": {"noise": generators.noise_config(config)},
    "noise_blur": {"noise": generators.noise_config(config), "blur_sigma": _BLUR_SIGMA.value},
    "counterfactual": {"strength": _STRENGTH.value},
  }.get(sampler, {})
  if sampler in ("prior", "posterior_jitter", "gmm"):
    options["temperature"] = _TEMPERATURE.value
  if _FILTER.value:
    from classifiers import train as classifier_train  # experiments layer: classifiers meet vaeaug here

    classifier_cfg, state, _ = classifier_train.restore_best(_FILTER.value)
    predict = jax.jit(functools.partial(classifier_train.eval_step, normalization=classifier_cfg.normalization))
    if sampler == "counterfactual":  # kept when the classifier's decision agrees
      rule = {"decision_threshold": generator_eval.classifier_threshold(_FILTER.value)}
    else:
      rule = {"tau": _TAU.value}
    synthetic, report = synthesis.synthesize_filtered(
      model,
      train,
      _PER_CLASS.value,
      sampler,
      _SEED.value,
      lambda images: np.asarray(predict(state, images)),
      generator_name=_GENERATOR.value,
      **rule,
      **options,
    )
    print("filter:", json.dumps(report))
  else:
    synthetic = synthesis.synthesize(
      model, train, _PER_CLASS.value, sampler, _SEED.value, generator_name=_GENERATOR.value, **options
    )
  synthetic.save(_OUT.value)
  counts = np.bincount(synthetic.labels, minlength=len(synthetic.class_names))
  print(f"wrote {_OUT.value}: " + ", ".join(f"{n} {c}" for c, n in zip(synthetic.class_names, counts)))


def run():
  cli.run(main, __name__)


if __name__ == "__main__":
  run()
