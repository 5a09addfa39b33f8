"""Where the user's downloads (raw data) and the built TFDS datasets live.

Raw data: `--raw_dir` flag, else `$VAEAUG_RAW_DATA`, else `../shared/data` next to the checkout (or
the working directory) when it exists. Each dataset reads its own sub-folder of that root.
Built datasets: `--data_dir` flag, else `$TFDS_DATA_DIR`, else `~/tensorflow_datasets` (TFDS's own
default), so datasets built once are found by every entry point.
"""

from __future__ import annotations

import os
from pathlib import Path

RAW_DATA_ENV = "VAEAUG_RAW_DATA"

# Dataset name -> the folder its download unpacks to, under the raw-data root.
RAW_FOLDERS = {
  "face_mask_detection": "face-mask-detection",
  "face_mask12k": "face-mask-12k",
  "face_mask_observations": "face-mask-observations",
}

_REPO_ROOT = Path(__file__).resolve().parents[2]


def default_raw_root() -> Path | None:
  """The raw-data root from the environment, or `../shared/data` beside the checkout or cwd."""
  if os.environ.get(RAW_DATA_ENV):
    return Path(os.environ[RAW_DATA_ENV]).expanduser()
  for candidate in (_REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
    if candidate.is_dir():
      return candidate
  return None


def raw_dir(dataset: str, raw_root: str | os.PathLike | None = None) -> Path:
  """The folder holding `dataset`'s download; a clear error when it cannot be found."""
  if dataset not in RAW_FOLDERS:
    raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(RAW_FOLDERS)}")
  root = Path(raw_root).expanduser() if raw_root else default_raw_root()
  if root is None:
    raise FileNotFoundError(
      f"no raw data folder for {dataset}: pass --raw_dir=DIR or set ${RAW_DATA_ENV} to the folder "
      f"that holds {RAW_FOLDERS[dataset]}/ (see the dataset's MANUAL_DOWNLOAD_INSTRUCTIONS)"
    )
  folder = root / RAW_FOLDERS[dataset]
  if not folder.is_dir():
    raise FileNotFoundError(
      f"{folder}: missing folder; {dataset} expects its download unpacked there "
      f"(raw-data root {root}, from --raw_dir or ${RAW_DATA_ENV})"
    )
  return folder


def default_data_dir() -> Path:
  return Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def data_source(name: str, split: str | None = None, data_dir=None):
  """`tfds.data_source` of a built dataset (never downloads); says how to build a missing one."""
  import tensorflow_datasets as tfds  # deferred: slow import

  data_dir = os.fspath(Path(data_dir).expanduser()) if data_dir is not None else os.fspath(default_data_dir())
  dataset, _, config = name.partition("/")
  how = (
    f"build it with `vaeaug-prepare --datasets={dataset}"
    f"{f' --configs={config}' if config else ''} --data_dir={data_dir}`"
  )
  # Checked first: for a registered builder TFDS would otherwise try to build it, or complain
  # about the wrong file format.
  if not list(Path(data_dir, dataset, config).glob("*/dataset_info.json")):
    raise FileNotFoundError(f"dataset {name} is not built in {data_dir}: {how}")
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except (
    AssertionError,
    FileNotFoundError,
    ValueError,
    NotImplementedError,
    tfds.core.registered.DatasetNotFoundError,
  ) as error:
    first_line = (str(error).strip().splitlines() or [""])[0]
    raise FileNotFoundError(
      f"dataset {name}{f' split {split!r}' if split else ''} cannot be read from {data_dir} "
      f"({type(error).__name__}: {first_line}); {how}"
    ) from None
