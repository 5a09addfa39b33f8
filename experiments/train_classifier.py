r"""Train and evaluate one face-mask classifier.

  vaeaug-train-classifier --workdir=/tmp/cnn96                # or: python -m experiments.train_classifier
  vaeaug-train-classifier --workdir=/tmp/r18 --config=classifier \
      --config.model=resnet18_small --config.n_per_class=50 --config.seed=3

Rerunning the same command on the same workdir resumes from its latest checkpoint. A workdir belongs to
one config: a rerun that changes a result-changing field is refused (exit 2) unless `--overwrite`,
which starts the run over; execution-only fields (progress, logging, figures, checkpoint frequency,
devices) may change.
"""

import json
import sys

import jax
from absl import flags, logging

from classifiers import pretrained, train, transfer
from experiments import configs, validation
from vaeaug import cli
from vaeaug.training import run as run_lib
from vaeaug.training import sharding

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and figures.", required=True)
_OVERWRITE = flags.DEFINE_bool(
  "overwrite",
  False,
  "Start over: remove the run files of a previous run in --workdir (checkpoints, metrics, summaries).",
)
_CONFIG = configs.define_config_flag("config", "classifier", "Training configuration.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax and TFDS are chatty at INFO
  config = _CONFIG.value
  if config.distributed:  # before anything starts JAX's backends (the config check traces the model)
    sharding.initialize_distributed()
  try:  # the whole config, before the workdir is made
    config = transfer.resolve(config)  # a pretrained checkpoint's input size, normalisation, options
    validation.validate_classifier_config(config)
  except pretrained.PretrainedError as error:
    print(f"error: config.pretrained: {error}", file=sys.stderr)
    sys.exit(2)
  except validation.ConfigError as error:
    print("\n".join(f"error: {line}" for line in error.problems), file=sys.stderr)
    sys.exit(2)
  try:
    summary = train.train_and_evaluate(config, _WORKDIR.value, overwrite=_OVERWRITE.value)
  except run_lib.WorkdirConfigMismatch as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  if jax.process_index() == 0:
    test = summary["test"]
    shown = {
      k: round(test[k], 4)
      for k in ("balanced_accuracy", "accuracy", "f1", "specificity", "roc_auc")
      if isinstance(test.get(k), float)
    }
    print(
      f"best epoch {summary['best_epoch'] + 1} of {summary['epochs_run']}, threshold "
      f"{summary['threshold']:.3f}; test: {json.dumps(shown)}"
    )


def run():
  cli.run(main, __name__)


if __name__ == "__main__":
  run()
