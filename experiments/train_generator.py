r"""Train one autoencoder (DAE, VAE or CVAE) for synthesizing face-mask training data.

  vaeaug-train-generator --workdir=/tmp/cvae                  # or: python -m experiments.train_generator
  vaeaug-train-generator --workdir=/tmp/dae --config=generator --config.model=dae

Rerunning the same command on the same workdir resumes from its latest checkpoint. A workdir belongs to
one config: a rerun that changes a result-changing field is refused (exit 2) unless `--overwrite`,
which starts the run over; execution-only fields (progress, logging, figures, checkpoint frequency,
devices) may change.
"""

import json
import sys

import jax
from absl import flags, logging

from experiments import configs, validation
from vaeaug import cli, generators
from vaeaug.training import run as run_lib
from vaeaug.training import sharding

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and figures.", required=True)
_OVERWRITE = flags.DEFINE_bool(
  "overwrite",
  False,
  "Start over: remove the run files of a previous run in --workdir (checkpoints, metrics, summaries).",
)
_CONFIG = configs.define_config_flag("config", "generator", "Training configuration.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax and TFDS are chatty at INFO
  config = _CONFIG.value
  try:  # the whole config, before the workdir is made
    validation.validate_generator_config(config)
  except validation.ConfigError as error:
    print("\n".join(f"error: {line}" for line in error.problems), file=sys.stderr)
    sys.exit(2)
  if config.distributed:
    sharding.initialize_distributed()
  try:
    summary = generators.train_generator(config, _WORKDIR.value, overwrite=_OVERWRITE.value)
  except run_lib.WorkdirConfigMismatch as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  if jax.process_index() == 0:
    shown = {k: round(v, 4) for k, v in summary["validation"].items()}
    bits = summary["validation_bits_per_dim"]
    print(
      f"best epoch {summary['best_epoch'] + 1} of {summary['epochs_run']}; validation: {json.dumps(shown)}; "
      + (f"bits/dim {bits:.4f}; " if bits is not None else "")
      + f"{summary['train_img_per_s']} img/s"
    )


def run():
  cli.run(main, __name__)


if __name__ == "__main__":
  run()
