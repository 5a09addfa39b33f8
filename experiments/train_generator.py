r"""Train one autoencoder (DAE, VAE or CVAE) for synthesizing face-mask training data.

  python -m experiments.train_generator --workdir=/tmp/cvae --config=experiments/configs/generator.py
  python -m experiments.train_generator --workdir=/tmp/dae --config=experiments/configs/generator.py --config.model=dae

Rerunning the same command on the same workdir resumes from its latest checkpoint.
"""

import json

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from vaeaug import generators
from vaeaug.training import sharding

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and figures.", required=True)
_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/generator.py", "Training configuration.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax and TFDS are chatty at INFO
  config = _CONFIG.value
  if config.distributed:
    sharding.initialize_distributed()
  summary = generators.train_generator(config, _WORKDIR.value)
  if jax.process_index() == 0:
    shown = {k: round(v, 4) for k, v in summary["validation"].items()}
    bits = summary["validation_bits_per_dim"]
    print(
      f"best epoch {summary['best_epoch'] + 1} of {summary['epochs_run']}; validation: {json.dumps(shown)}; "
      + (f"bits/dim {bits:.4f}; " if bits is not None else "")
      + f"{summary['train_img_per_s']} img/s"
    )


if __name__ == "__main__":
  app.run(main)
