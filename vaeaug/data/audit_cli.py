r"""Leak audit of a built dataset: near-duplicate pairs that cross its splits.

  vaeaug-audit --dataset=face_mask12k --config=official        # or: python scripts/audit_data.py
  vaeaug-audit --dataset=face_mask12k --config=grouped --json
  vaeaug-audit --pool [--image_size=64] [--json]               # the unlabeled face pool
  vaeaug-audit --calibrate [--json]                            # the near-duplicate detector's calibration

The logic is `vaeaug.data.audit.audit`; this is its command line. `--pool` builds (or loads from the
cache) the face pool of `vaeaug.data.pool` and reports how many candidates each dataset gave, how
many were excluded and that no near-duplicate pair is left between the pool and any validation or
test image of any dataset config. `--calibrate` measures the near-duplicate detector on the pairs the
12K set labels (`vaeaug.data.calibration`): the thresholds it would choose, recall on held-out
`Augmented_<N>` families and synthetic re-crops, false positives on random pairs.
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
_RAW_DIR = flags.DEFINE_string(
  "raw_dir", None, "Downloads (default $VAEAUG_RAW_DATA or ../shared/data): detection photos are compared too."
)
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of the report.")
_EXAMPLES = flags.DEFINE_integer("examples", 5, "Example file pairs shown per split pair.")
_POOL = flags.DEFINE_bool(
  "pool", False, "Audit the unlabeled face pool (all datasets) instead of one dataset's splits."
)
_CALIBRATE = flags.DEFINE_bool(
  "calibrate", False, "Calibrate the near-duplicate detector on face_mask12k/official instead of auditing."
)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "With --pool: side of the pool images.", lower_bound=1)


def main(argv):
  del argv
  if _CALIBRATE.value:
    given = [
      f"--{name}" for name in ("dataset", "config", "examples", "pool", "image_size") if flags.FLAGS[name].present
    ]
    if given:
      sys.exit(f"error: --calibrate reads face_mask12k/official; drop {', '.join(given)}")
    from vaeaug.data import calibration  # deferred: only this mode needs it

    try:
      report = calibration.calibrate(_DATA_DIR.value)
    except (FileNotFoundError, ValueError) as error:
      sys.exit(f"error: {error}")
    print(json.dumps(report, sort_keys=True) if _JSON.value else calibration.format_report(report))
    return
  if _POOL.value:
    given = [f"--{name}" for name in ("dataset", "config", "examples") if flags.FLAGS[name].present]
    if given:  # the pool reads every dataset: a dataset flag would be silently ignored
      sys.exit(f"error: --pool audits the pool of all datasets; drop {', '.join(given)}")
    from vaeaug.data import pool  # deferred: only this mode needs it

    try:
      result = pool.build_pool(_DATA_DIR.value, _IMAGE_SIZE.value)
    except (FileNotFoundError, ValueError) as error:
      sys.exit(f"error: {error}")
    print(json.dumps(result.report, sort_keys=True) if _JSON.value else pool.format_report(result.report))
    return
  if flags.FLAGS["image_size"].present:
    sys.exit("error: --image_size is for --pool only")
  try:
    result = audit.audit(
      _DATASET.value, _CONFIG.value, data_dir=_DATA_DIR.value, max_examples=_EXAMPLES.value, raw_dir=_RAW_DIR.value
    )
  except (FileNotFoundError, ValueError) as error:  # bad paths or input: no traceback
    sys.exit(f"error: {error}")
  print(json.dumps(result.to_json()) if _JSON.value else result.report())


def run():
  cli.run(main, __name__)


if __name__ == "__main__":
  run()
