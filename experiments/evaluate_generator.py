r"""Offline quality of a trained generator: reconstruction, likelihood, CAS, Frechet distance,
k-NN precision/recall, diversity and filter acceptance.

  vaeaug-evaluate-generator --generator=/tmp/cvae             # or: python -m experiments.evaluate_generator
  vaeaug-evaluate-generator --generator=/tmp/dae --classifier=/tmp/cnn96 --per_class=300

Feature-space metrics use a classifier trained on the same real data (--classifier, or one is
trained into GENERATOR/quality/reference_classifier). Writes GENERATOR/quality/quality_<sampler>.json.
"""

from absl import flags, logging

from experiments import generator_eval
from vaeaug import cli, synthesis

_GENERATOR = flags.DEFINE_string("generator", None, "Generator training workdir.", required=True)
_CLASSIFIER = flags.DEFINE_string("classifier", None, "Classifier workdir trained on the same real data.")
_PER_CLASS = flags.DEFINE_integer("per_class", 200, "Synthetic images per class.")
_SAMPLER = flags.DEFINE_enum("sampler", None, list(synthesis.SAMPLERS), "Sampler (default: the model's natural one).")
_TAU = flags.DEFINE_float("tau", 0.5, "Filter threshold on the intended class's probability.")
_K = flags.DEFINE_integer("k", 3, "Neighbours for k-NN precision/recall.")
_CAS_EPOCHS = flags.DEFINE_integer("cas_epochs", 10, "Epochs for the CAS and reference classifiers.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling and CAS seed.")

cli.require_training_workdir("generator")
cli.require_training_workdir("classifier")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  report = generator_eval.evaluate_generator(
    _GENERATOR.value,
    classifier_dir=_CLASSIFIER.value,
    per_class=_PER_CLASS.value,
    sampler=_SAMPLER.value,
    tau=_TAU.value,
    k=_K.value,
    cas_epochs=_CAS_EPOCHS.value,
    seed=_SEED.value,
  )
  print(report.format_table())


def run():
  cli.run(main, __name__)


if __name__ == "__main__":
  run()
