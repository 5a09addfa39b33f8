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
# The version of the project's datasets this code builds and reads: their splits change with it
# (1.1.0: the aligned near-duplicate signal). Configs record it (`dataset_version`), so runs and
# sweep cells of other splits are never mixed; 1.0.0 builds stay readable as "dataset/config:1.0.0".
DATA_VERSION = "1.1.0"

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


def versioned(name: str, version: str | None) -> str:
  """`name` ("dataset/config") at `version` ("dataset/config:version"; `name` when None)."""
  return f"{name}:{version}" if version else name


def current_version(dataset: str) -> str | None:
  """The version this code builds and reads of one of the project's datasets (None for others)."""
  return DATA_VERSION if dataset in RAW_FOLDERS else None


def data_source(name: str, split: str | None = None, data_dir=None):
  """`tfds.data_source` of a built dataset (never downloads); says how to build a missing one.

  `name` is "dataset/config", read at the version this code builds (an older build alone is an
  error that says how to rebuild), or "dataset/config:version" for that version."""
  import tensorflow_datasets as tfds  # deferred: slow import

  data_dir = os.fspath(Path(data_dir).expanduser()) if data_dir is not None else os.fspath(default_data_dir())
  name, _, version = name.partition(":")  # "dataset/config:1.0.0" reads that version
  dataset, _, config = name.partition("/")
  how = (
    f"build it with `vaeaug-prepare --datasets={dataset}"
    f"{f' --configs={config}' if config else ''} --data_dir={data_dir}`"
  )
  # Checked first: for a registered builder TFDS would otherwise try to build it, or complain
  # about the wrong file format.
  built = sorted(path.parent.name for path in Path(data_dir, dataset, config).glob("*/dataset_info.json"))
  if not built:
    raise FileNotFoundError(f"dataset {name} is not built in {data_dir}: {how}")
  current = version or current_version(dataset)
  if version and version not in built:
    raise FileNotFoundError(f"dataset {name} version {version} is not built in {data_dir} (built: {', '.join(built)})")
  if current is not None and current not in built:
    raise FileNotFoundError(
      f"dataset {name} in {data_dir} is an older build (version {', '.join(built)}; this code reads {current}, "
      f"whose splits differ): rebuild it with `vaeaug-prepare --datasets={dataset}"
      f"{f' --configs={config}' if config else ''} --data_dir={data_dir}`"
    )
  try:
    return tfds.data_source(f"{name}:{version}" if version else name, split=split, data_dir=data_dir, download=False)
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
