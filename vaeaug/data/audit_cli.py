r"""Leak audit of a built dataset: near-duplicate pairs that cross its splits.

  vaeaug-audit --dataset=face_mask12k --config=official        # or: python scripts/audit_data.py
  vaeaug-audit --dataset=face_mask12k --config=grouped --json

The logic is `vaeaug.data.audit.audit`; this is its command line.
"""

import json
import sys

from absl import flags

from vaeaug import cli
from vaeaug.data import audit

_DATASET = flags.DEFINE_enum(
  "dataset", "face_mask12k", ["face_mask_detection", "face_mask12k", "face_mask_observations"], "Dataset."
)
_CONFIG = flags.DEFINE_string("config", "official", "Builder config, e.g. official, grouped, 2classes.")
_DATA_DIR = flags.DEFINE_string(
  "data_dir", None, "Built TFDS datasets (default $TFDS_DATA_DIR or ~/tensorflow_datasets)."
)
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of the report.")
_EXAMPLES = flags.DEFINE_integer("examples", 5, "Example file pairs shown per split pair.")


def main(argv):
  del argv
  try:
    result = audit.audit(_DATASET.value, _CONFIG.value, data_dir=_DATA_DIR.value, max_examples=_EXAMPLES.value)
  except (FileNotFoundError, ValueError) as error:  # bad paths or input: no traceback
    sys.exit(f"error: {error}")
  print(json.dumps(result.to_json()) if _JSON.value else result.report())


def run():
  cli.run(main, __name__)


if __name__ == "__main__":
  run()
