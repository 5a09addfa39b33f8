r"""Does autoencoder augmentation help? Runs the comparison sweep and prints its table.

  python -m experiments.compare                                             # preset "default"
  python -m experiments.compare --config=experiments/configs/compare.py:full
  python -m experiments.compare --config=experiments/configs/compare.py:full --config.num_seeds=10

Writes cells.jsonl, table.md/.csv, cross_dataset.md/.csv, summary.json and figures/ in --workdir
(default experiments/results/<preset>). Rerunning the same command skips finished cells and resumes an
interrupted one from its checkpoints; `--tables_only` rebuilds the outputs from cells.jsonl.
`--shard=i/k` runs every k-th group of cells (shards share the workdir; e.g. two one-core processes,
`taskset -c 0 ... --shard=1/2 & taskset -c 1 ... --shard=2/2`, or a SLURM array).
See experiments/configs/compare.py for the grid, the presets and how hyperparameters are chosen.
"""

import os
from pathlib import Path

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import sweep as sweep_lib
from experiments import tables
from vaeaug.training import sharding

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/compare.py", "Sweep configuration.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory; default experiments/results/<preset>.")
_TABLES_ONLY = flags.DEFINE_bool("tables_only", False, "Only rebuild tables and figures from cells.jsonl.")
_SHARD = flags.DEFINE_string(
  "shard",
  "1/1",
  'Run only shard i of k ("i/k", 1-based) of the cell groups, e.g. one '
  "per process or array-job task; tables cover every finished cell.",
)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax and TFDS are chatty at INFO
  config = _CONFIG.value
  if config.distributed:
    sharding.initialize_distributed()
  if config.compilation_cache_dir:
    # Cells share shapes: the second cell onwards loads compiled steps instead of recompiling them.
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(config.compilation_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  workdir = Path(_WORKDIR.value or Path("experiments/results") / config.preset)
  sweep = sweep_lib.Sweep(config, workdir)
  index, count = (int(part) for part in _SHARD.value.split("/"))
  records = sweep.finished() if _TABLES_ONLY.value else sweep.run(index - 1, count)
  if jax.process_index() == 0:
    print(tables.write_outputs(sweep, records))
    print(f"tables, summary and figures in {workdir}")


if __name__ == "__main__":
  app.run(main)
