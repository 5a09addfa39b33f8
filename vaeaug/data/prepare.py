r"""Build the face-mask TFDS datasets (array_record) from the user's downloads.

  python scripts/prepare_data.py                                  # all datasets, all configs
  python scripts/prepare_data.py --datasets=face_mask12k --raw_dir=~/downloads --data_dir=~/tfds

Raw data: --raw_dir, else $VAEAUG_RAW_DATA, else ../shared/data beside the checkout. Idempotent:
a built config is not rebuilt; its stored build report is printed again.
"""

import sys
import time

from absl import app, flags

from vaeaug.data import building, sources

_DATASETS = flags.DEFINE_list("datasets", list(sources.RAW_FOLDERS), "Datasets to build.")
_CONFIGS = flags.DEFINE_list("configs", [], "Configs to build (default: all of each dataset).")
_DATA_DIR = flags.DEFINE_string(
  "data_dir", None, "Where built datasets go (default $TFDS_DATA_DIR or ~/tensorflow_datasets)."
)
_RAW_DIR = flags.DEFINE_string(
  "raw_dir", None, f"Folder holding the downloads (default ${sources.RAW_DATA_ENV} or ../shared/data)."
)


def main(argv):
  del argv
  start = time.perf_counter()
  for dataset in _DATASETS.value:
    configs = _CONFIGS.value or building.all_configs(dataset)
    for config in configs:
      print(f"== {dataset}/{config}", flush=True)
      try:
        report = building.prepare(dataset, config, data_dir=_DATA_DIR.value, raw_root=_RAW_DIR.value)
      except (FileNotFoundError, ValueError) as error:  # bad paths or input: no traceback
        sys.exit(f"error: {error}")
      print(report.summary(), flush=True)
  print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
  app.run(main)
