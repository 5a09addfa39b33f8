r"""Build the face-mask TFDS datasets (array_record) from the user's downloads.

  vaeaug-prepare                                          # all datasets, all configs
  vaeaug-prepare --datasets=face_mask12k --raw_dir=~/downloads --data_dir=~/tfds
  python scripts/prepare_data.py                          # the same, from a checkout

Raw data: --raw_dir, else $VAEAUG_RAW_DATA, else ../shared/data beside the checkout. Built datasets:
--data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets. Idempotent: a built config is not
rebuilt; its stored build report is printed again.

Console: one progress bar per dataset config (stderr, on a terminal) and each build summary
(stdout). Messages of TFDS and the other libraries go to prepare.log in the data dir; with
--verbosity (absl's flag, e.g. --verbosity=1) they appear on the console instead.
"""

import contextlib
import logging
import sys
import time
from pathlib import Path

import tqdm
from absl import flags
from absl import logging as absl_logging

from vaeaug import cli
from vaeaug.data import building, sources

LOG_FILE = "prepare.log"

_DATASETS = flags.DEFINE_list("datasets", list(sources.RAW_FOLDERS), "Datasets to build.")
flags.register_validator(
  "datasets", lambda names: set(names) <= set(sources.RAW_FOLDERS), f"known datasets: {', '.join(sources.RAW_FOLDERS)}"
)
_CONFIGS = flags.DEFINE_list("configs", [], "Configs to build (default: all of each dataset).")
_DATA_DIR = flags.DEFINE_string(
  "data_dir", None, "Where built datasets go (default $TFDS_DATA_DIR or ~/tensorflow_datasets)."
)
_RAW_DIR = flags.DEFINE_string(
  "raw_dir", None, f"Folder holding the downloads (default ${sources.RAW_DATA_ENV} or ../shared/data)."
)


class ProgressBar:
  """The one bar of a dataset config, for `building.prepare(progress=...)`: each stage (a class
  folder, grouping, encoding, writing a split) restarts it with its own total. Created on the first
  report, so an already built config shows none; off when stderr is not a terminal."""

  def __init__(self, name: str):
    self.name = name
    self.stage = None
    self.bar = None

  def __call__(self, stage: str, done: int, total: int | None) -> None:
    if self.bar is None:
      self.bar = tqdm.tqdm(unit="item", leave=False, disable=None, file=sys.stderr, mininterval=0.5, delay=0.5)
    if stage != self.stage:
      self.stage = stage
      self.bar.set_description(f"{self.name} {stage}", refresh=False)
      self.bar.total = total  # reset(None) would keep the previous stage's total
      self.bar.reset(total)
    self.bar.update(done - self.bar.n)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def logs_to_file(path: Path):
  """Route Python/absl logging and warnings to `path` (appended; errors still reach stderr); returns
  the open file, for output that libraries print."""
  path.parent.mkdir(parents=True, exist_ok=True)
  stream = open(path, "a", encoding="utf-8")  # open for the whole process
  to_file = logging.StreamHandler(stream)
  errors = logging.StreamHandler(sys.stderr)
  errors.setLevel(logging.ERROR)
  for handler in (to_file, errors):
    handler.setFormatter(absl_logging.PythonFormatter())
  root = logging.getLogger()
  for handler in list(root.handlers):  # absl's stderr handler
    root.removeHandler(handler)
  root.addHandler(to_file)
  root.addHandler(errors)
  logging.captureWarnings(True)
  stream.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n")
  return stream


def main(argv):
  del argv
  import tensorflow_datasets as tfds  # deferred: slow import (already loaded by `building`)

  tfds.disable_progress_bar()  # ours replaces TFDS's bars (per split, shuffling, writing)
  data_dir = Path(_DATA_DIR.value).expanduser() if _DATA_DIR.value else sources.default_data_dir()
  library_output = contextlib.nullcontext()
  if not flags.FLAGS["verbosity"].present:
    try:
      log = logs_to_file(data_dir / LOG_FILE)
    except OSError as error:
      sys.exit(f"error: cannot write the log file: {error}")
    library_output = contextlib.redirect_stdout(log)  # TFDS prints "Downloading and preparing ..."
    print(f"library messages: {log.name} (--verbosity=1 shows them here)", file=sys.stderr, flush=True)
  start = time.perf_counter()
  for dataset in _DATASETS.value:
    for config in _CONFIGS.value or building.all_configs(dataset):
      print(f"== {dataset}/{config}", flush=True)
      bar = ProgressBar(f"{dataset}/{config}")
      try:
        with library_output:
          report = building.prepare(dataset, config, data_dir=data_dir, raw_root=_RAW_DIR.value, progress=bar)
      except (FileNotFoundError, ValueError) as error:  # bad paths or input: no traceback
        sys.exit(f"error: {error}")
      finally:
        bar.close()
      print(report.summary(), flush=True)
  print(f"done in {time.perf_counter() - start:.1f} s")


def run():
  cli.run(main, __name__)


if __name__ == "__main__":
  run()
