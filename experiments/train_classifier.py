r"""Train and evaluate one face-mask classifier.

  python -m experiments.train_classifier --workdir=/tmp/cnn96 --config=experiments/configs/classifier.py
  python -m experiments.train_classifier --workdir=/tmp/r18 --config=experiments/configs/classifier.py \
      --config.model=resnet18_small --config.n_per_class=50 --config.seed=3

Rerunning the same command on the same workdir resumes from its latest checkpoint.
"""

import json

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from classifiers import train
from vaeaug.training import sharding

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and figures.", required=True)
_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/classifier.py", "Training configuration.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax and TFDS are chatty at INFO
  config = _CONFIG.value
  if config.distributed:
    sharding.initialize_distributed()
  summary = train.train_and_evaluate(config, _WORKDIR.value)
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


if __name__ == "__main__":
  app.run(main)
