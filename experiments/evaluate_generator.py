r"""Offline quality of a trained generator on validation (never test): reconstruction, likelihood, CAS,
Frechet distance, k-NN precision/recall, diversity and filter acceptance.

  vaeaug-evaluate-generator --generator=/tmp/cvae             # or: python -m experiments.evaluate_generator
  vaeaug-evaluate-generator --generator=/tmp/dae --classifier=/tmp/cnn_bn3 --per_class=300
  vaeaug-evaluate-generator --generator=/tmp/pool_rvae --dataset=face_mask_detection/2classes \
      --sampler=counterfactual --quality_json=experiments/results/generators/quality.json

Feature-space metrics and acceptance use a classifier trained on the dataset's real training images
(--classifier, or one is trained into GENERATOR/quality/reference_classifier); pass the same one for every
generator so the values share one feature space. Writes GENERATOR/quality/quality_<dataset>_<sampler>.json;
`--quality_json` adds (or replaces) this setting's row in a table of rows (experiments/results/generators/
quality.json) and prints that table as Markdown.
"""

import sys

from absl import flags, logging

from experiments import generator_eval
from vaeaug import cli, synthesis

_GENERATOR = flags.DEFINE_string("generator", None, "Generator training workdir.", required=True)
_CLASSIFIER = flags.DEFINE_string(
  "classifier", None, "Classifier workdir trained on the dataset's real training split."
)
_DATASET = flags.DEFINE_string(
  "dataset", None, "Labelled dataset to synthesize from and score on (default: the generator's; required for pool)."
)
_PER_CLASS = flags.DEFINE_integer("per_class", 200, "Synthetic images per class.")
_SAMPLER = flags.DEFINE_enum("sampler", None, list(synthesis.SAMPLERS), "Sampler (default: the kind's default one).")
_K = flags.DEFINE_integer("k", 3, "Neighbours for k-NN precision/recall.")
_CAS_EPOCHS = flags.DEFINE_integer("cas_epochs", 10, "Epochs for the CAS and reference classifiers.")
_CLASSIFIER_MODEL = flags.DEFINE_string("classifier_model", "cnn_bn3", "Model of the CAS and reference classifiers.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling and CAS seed.")
_BLUR_SIGMA = flags.DEFINE_float(
  "blur_sigma",
  None,
  "noise_blur: the blur's std in pixels (default: the one matching --generator, a DAE, on validation).",
)
_STRENGTH = flags.DEFINE_float("strength", 1.0, "counterfactual: how far along the class direction.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "prior, posterior_jitter, gmm: the latent noise's scale.")
_QUALITY_JSON = flags.DEFINE_string("quality_json", None, "Add this setting's row to this JSON table of rows.")
_FIGURES_DIR = flags.DEFINE_string("figures_dir", None, "Also write the sample sheet (and counterfactual pairs) here.")

cli.require_training_workdir("generator")
cli.require_training_workdir("classifier")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  options = {
    "noise_blur": {"blur_sigma": _BLUR_SIGMA.value},
    "counterfactual": {"strength": _STRENGTH.value},
    **{s: {"temperature": _TEMPERATURE.value} for s in ("prior", "posterior_jitter", "gmm")},
  }
  try:
    report, row = generator_eval.evaluate_generator(
      _GENERATOR.value,
      classifier_dir=_CLASSIFIER.value,
      dataset=_DATASET.value,
      per_class=_PER_CLASS.value,
      sampler=_SAMPLER.value,
      k=_K.value,
      cas_epochs=_CAS_EPOCHS.value,
      classifier_model=_CLASSIFIER_MODEL.value,
      seed=_SEED.value,
      sampler_options=options.get(_SAMPLER.value, {}),
      figures_dir=_FIGURES_DIR.value,
    )
  except ValueError as error:  # a sampler the kind lacks, a pool generator without --dataset, ...
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  print(report.format_table())
  if _QUALITY_JSON.value:
    rows = generator_eval.update_rows(_QUALITY_JSON.value, row)
    print()
    print(generator_eval.markdown_table(rows))


def run():
  cli.run(main, __name__)


if __name__ == "__main__":
  run()
