r"""Does autoencoder augmentation help? Runs the comparison sweep and prints its table.

  vaeaug-compare                                      # preset "default" (or: python -m experiments.compare)
  vaeaug-compare --config=compare:full
  vaeaug-compare --config=compare:full --config.num_seeds=10
  vaeaug-compare --config=my_sweep.py:full --workdir=/data/sweeps/mine   # any config file

Writes cells.jsonl, table.md/.csv, cross_dataset.md/.csv, summary.json and figures/ in --workdir
(default experiments/results/<preset> of the checkout the package is installed from, whatever the
working directory; installed outside a checkout, --workdir is required). Rerunning the same command
skips finished cells and resumes an interrupted one from its checkpoints; `--tables_only` rebuilds
the outputs from cells.jsonl, and refuses (exit 2, nothing written) when no recorded cell belongs to
this config. Tables of a grid not yet finished (a shard done before the others) say
`PARTIAL: k of n cells`.
`--shards=auto` (the fastest way on a CPU machine) runs one single-core shard process per core and
prints one table at the end; `--shard=i/k` runs every k-th group of cells by itself (shards share the
workdir: separate processes, machines or SLURM array tasks; `--shards` starts them for you).
See experiments/configs/compare.py for the grid, the presets and how hyperparameters are chosen.
"""

import re
import sys
from pathlib import Path

import jax
from absl import flags, logging

from experiments import configs, tables, validation
from experiments import shards as shards_lib
from experiments import sweep as sweep_lib
from vaeaug import cli
from vaeaug.training import sharding

_CONFIG = configs.define_config_flag("config", "compare", "Sweep configuration.")
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Output directory; default experiments/results/<preset> of the checkout holding this package."
)
_TABLES_ONLY = flags.DEFINE_bool("tables_only", False, "Only rebuild tables and figures from cells.jsonl.")
_SHARD = flags.DEFINE_string(
  "shard",
  "1/1",
  'Run only shard i of k ("i/k", 1-based) of the cell groups, e.g. one '
  "per process or array-job task; tables cover every finished cell.",
)
_SHARDS = flags.DEFINE_string(
  "shards",
  "1",
  'Run the sweep as N single-core shard processes on this machine ("auto": one per core) and print '
  "one table at the end.",
)
_TABLES = flags.DEFINE_bool("tables", True, "Write and print the tables at the end (shard children: off).")
flags.register_validator(
  "shard",
  lambda text: (found := re.fullmatch(r"(\d+)/(\d+)", text)) is not None and 1 <= int(found[1]) <= int(found[2]),
  'expected "i/k" with 1 <= i <= k (1-based), e.g. 1/2',
)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax and TFDS are chatty at INFO
  config = _CONFIG.value
  if config.distributed:  # before anything starts JAX's backends (the config check traces models)
    sharding.initialize_distributed()
  # Every cell's config before the first trains (only the grid for --tables_only, which trains nothing).
  exit_on_config_error(validation.validate_compare_config, config, grid_only=_TABLES_ONLY.value)
  try:
    # Not relative to the working directory: the same command from any folder resumes the same sweep.
    workdir = Path(_WORKDIR.value) if _WORKDIR.value else configs.results_dir(config.preset)
  except FileNotFoundError as error:
    usage_error(f"{error}; pass --workdir=DIR")
  if _TABLES_ONLY.value and not (workdir / "cells.jsonl").is_file():
    usage_error(f"--tables_only: no cells.jsonl in {workdir} (run the sweep first, or pass its --workdir)")
  try:
    shards = shards_lib.parse_shards(_SHARDS.value)
  except ValueError as error:
    usage_error(str(error))
  if shards > 1 and (_SHARD.value != "1/1" or _TABLES_ONLY.value or config.distributed):
    usage_error(
      "--shards starts its own shard processes: it cannot be combined with --shard, --tables_only or distributed"
    )
  # Shards deal whole cell groups (dataset, n_per_class, seed): more shards than groups would idle.
  shards = min(shards, len({cell.group for cell in sweep_lib.cells_of(config)}))
  sweep_lib.use_compilation_cache(config)
  sweep = sweep_lib.Sweep(config, workdir)
  index, count = (int(part) for part in _SHARD.value.split("/"))
  if shards > 1:
    failures = shards_lib.run_shards(sys.argv[1:], shards)
    if failures:
      for line in failures:
        print(f"error: {line}; rerun the same command to resume", file=sys.stderr)
      sys.exit(1)
    records = sweep.tables_only_records()
  elif _TABLES_ONLY.value:
    try:
      records = sweep.tables_only_records()
    except sweep_lib.NoCellsOfThisConfig as error:
      usage_error(str(error))
  else:
    records = sweep.run(index - 1, count)
  if jax.process_index() == 0 and _TABLES.value:
    print(tables.write_outputs(sweep, records))
    print(f"tables, summary and figures in {workdir}")


def usage_error(message: str) -> None:
  """A user mistake: one `error:` line and exit status 2, before anything is written."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def exit_on_config_error(validate, config, **kwargs) -> None:
  """`validate(config)`; a ConfigError is one `error:` line per problem on stderr and exit 2."""
  try:
    validate(config, **kwargs)
  except validation.ConfigError as error:
    for problem in error.problems:
      print(f"error: {problem}", file=sys.stderr)
    sys.exit(2)


def run():
  cli.run(main, __name__)


if __name__ == "__main__":
  run()
