"""Shared fixtures for the data tests: the real downloads, small samples of them copied into
tmp dirs, and helpers to build a sample and read it back.

The real data (read-only) is found with `vaeaug.data.sources.default_raw_root()` (`../shared/data`
beside the checkout, or `$VAEAUG_RAW_DATA`); tests that need it are skipped with a clear reason
when it is missing. Samples are copied into pytest tmp dirs, never into the repository, and each
sample is built once per session.

With `VAEAUG_REQUIRE_DATA=1` (set by `.ci/run`) a skip is a failure, so CI proves that every test
ran: a missing dataset or optional package cannot pass silently. The README names the skips that
remain allowed then (`ALLOWED_SKIPS`).
"""

from __future__ import annotations

import collections
import functools
import io
import math
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaeaug.data import sources

STRICT_ENV = "VAEAUG_REQUIRE_DATA"
# Skip reasons (substrings) allowed even under STRICT_ENV; each one is named in the README.
ALLOWED_SKIPS: tuple[str, ...] = ()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  outcome = yield
  report = outcome.get_result()
  if not os.environ.get(STRICT_ENV) or not report.skipped or hasattr(report, "wasxfail"):
    return
  reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
  if not any(allowed in reason for allowed in ALLOWED_SKIPS):
    report.outcome = "failed"
    report.longrepr = f"skipped, but {STRICT_ENV} is set, so every test must run: {reason}"


# ----------------------------------------------------------------------------- sample contents

# Face Mask Detection: photos with mask_weared_incorrect faces, and photos with several faces.
DETECTION_PHOTOS = (
  "maksssksksss130",
  "maksssksksss145",
  "maksssksksss173",
  "maksssksksss2",
  "maksssksksss250",
  "maksssksksss276",
  "maksssksksss29",
  "maksssksksss307",
  "maksssksksss0",
  "maksssksksss108",
  "maksssksksss113",
  "maksssksksss114",
  "maksssksksss126",
  "maksssksksss153",
)

# Face Mask 12K (paths under "Face Mask Dataset/"): every file of sources 104 and 106 (4 Train,
# 1 Validation, 1 Test each) and 105 (3 Train, 2 Test), a cross-split exact duplicate pair, and
# three WithoutMask files per split.
K12_AUGMENTED_SOURCES = (104, 105, 106)
K12_DUPLICATE_PAIR = ("Test/WithMask/1404.jpg", "Train/WithMask/279.jpg")
K12_WITHOUT_MASK_PER_SPLIT = 3
K12_ROOT = "Face Mask Dataset"
K12_SPLIT_FOLDERS = {"Train": "train", "Validation": "validation", "Test": "test"}

# Observations: a photo with its three mirrored/re-encoded augmented copies; two masked/unmasked
# pairs; a masked/unmasked pair with a mirrored copy; a without_mask mirror pair; singletons.
OBSERVATIONS_FILES = (
  "with_mask/0-with-mask.jpg",
  "with_mask/augmented_image_238.jpg",
  "with_mask/augmented_image_239.jpg",
  "with_mask/augmented_image_240.jpg",
  "with_mask/100-with-mask.jpg",
  "without_mask/100.jpg",
  "with_mask/101-with-mask.jpg",
  "without_mask/101.jpg",
  "with_mask/122-with-mask.jpg",
  "with_mask/augmented_image_75.jpg",
  "without_mask/122.jpg",
  "without_mask/130.jpg",
  "without_mask/augmented_image_33.jpg",
  "with_mask/1-with-mask.jpg",
  "with_mask/103-with-mask.jpg",
  "with_mask/11-with-mask.jpg",
  "without_mask/augmented_image_296.jpg",
  "without_mask/augmented_image_299.jpg",
)
OBSERVATIONS_MIRROR_PAIR = ("without_mask/130.jpg", "without_mask/augmented_image_33.jpg")
OBSERVATIONS_MASKED_PAIR = ("with_mask/100-with-mask.jpg", "without_mask/100.jpg")


# ----------------------------------------------------------------------------- helpers


def copy_files(src_root: Path, dst_root: Path, relative_paths: Iterable[str]) -> list[str]:
  """Copy files (relative paths) from src_root to dst_root, keeping the layout."""
  copied = []
  for rel in relative_paths:
    target = dst_root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src_root / rel, target)
    copied.append(rel)
  return copied


def k12_sample_files(raw_root: Path) -> list[str]:
  """Paths (relative to face-mask-12k/) of the 12K sample."""
  base = raw_root / sources.RAW_FOLDERS["face_mask12k"] / K12_ROOT
  files = []
  for n in K12_AUGMENTED_SOURCES:
    files += sorted(p.relative_to(base).as_posix() for p in base.glob(f"*/WithMask/Augmented_{n}_*"))
  files += list(K12_DUPLICATE_PAIR)
  for folder in K12_SPLIT_FOLDERS:
    names = sorted(p.name for p in (base / folder / "WithoutMask").iterdir())
    files += [f"{folder}/WithoutMask/{name}" for name in names[:K12_WITHOUT_MASK_PER_SPLIT]]
  return [f"{K12_ROOT}/{f}" for f in files]


def read_built(dataset: str, config: str, data_dir: Path) -> list[dict]:
  """Every example of a built dataset as a dict (bytes decoded to str), with its "split"."""
  import tensorflow_datasets as tfds

  source = tfds.data_source(f"{dataset}/{config}", data_dir=str(data_dir), download=False)
  rows = []
  for split in ("train", "validation", "test"):
    if split not in source:
      continue
    data = source[split]
    for index in range(len(data)):
      row = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in data[index].items()}
      row["split"] = split
      rows.append(row)
  return rows


def by_file(rows: Sequence[dict]) -> dict[str, dict]:
  out = {}
  for row in rows:
    key = row["file"] if "face_index" not in row else f"{row['file']}#{int(row['face_index'])}"
    assert key not in out, f"duplicate example {key}"
    out[key] = row
  return out


def smooth_image(seed: int, size: int = 56, grid: int = 7) -> np.ndarray:
  """A structured random RGB image: low-resolution noise upsampled (a smooth 'face')."""
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (grid, grid, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))


def encode(image: np.ndarray | Image.Image, fmt: str, **kwargs) -> bytes:
  im = image if isinstance(image, Image.Image) else Image.fromarray(image)
  buf = io.BytesIO()
  im.save(buf, format=fmt, **kwargs)
  return buf.getvalue()


def voc_objects(xml_path: Path) -> list[tuple[str, tuple[float, float, float, float]]]:
  """(name, box) of every <object> of a trusted (shipped) annotation file."""
  root = ET.parse(xml_path).getroot()
  out = []
  for obj in root.findall("object"):
    box = tuple(float(obj.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
    out.append((obj.findtext("name").strip(), box))
  return out


def class_counts(rows: Sequence[dict], class_names: Sequence[str]) -> dict[str, dict[str, int]]:
  counts = {s: collections.Counter() for s in ("train", "validation", "test")}
  for row in rows:
    counts[row["split"]][class_names[int(row["label"])]] += 1
  return {s: {name: c.get(name, 0) for name in class_names} for s, c in counts.items()}


# ----------------------------------------------------------------------------- models


def _hashable(overrides: dict):
  try:
    key = tuple(sorted(overrides.items()))
    hash(key)
    return key
  except TypeError:
    return None


@functools.cache
def _abstract(name, num_classes, head, overrides):
  return _eval_shape(name, num_classes, head, dict(overrides))


def _eval_shape(name, num_classes, head, overrides):
  from flax import nnx  # imported by the model tests only

  from classifiers.models import create_model

  return nnx.eval_shape(lambda: create_model(name, num_classes, head=head, rngs=nnx.Rngs(0), **overrides))


def abstract_model(name: str, num_classes: int = 2, head: str = "auto", **overrides):
  """The classifier with abstract (ShapeDtypeStruct) parameters: shapes, counts and tables without
  compute; one per configuration (tracing a large model's constructor takes seconds)."""
  key = _hashable(overrides)
  return _eval_shape(name, num_classes, head, overrides) if key is None else _abstract(name, num_classes, head, key)


def numpy_model(name: str, num_classes: int = 2, *, seed: int = 0, head: str = "auto", **overrides):
  """The classifier with parameters filled from numpy instead of jax.random (whose eager calls
  compile once per shape: slow in tests): kernels ~ N(0, 2 / fan_in), biases 0, BatchNorm scale 1 /
  bias 0 / mean 0 / var 1."""
  import jax.numpy as jnp
  from flax import nnx

  graphdef, state = nnx.split(abstract_model(name, num_classes, head, **overrides))
  rng = np.random.default_rng(seed)
  filled = []
  for path, var in nnx.to_flat_state(state):
    if path[-1] == "kernel":
      value = rng.standard_normal(var.shape, dtype=np.float32) * np.sqrt(2.0 / math.prod(var.shape[:-1]))
    elif path[-1] in ("scale", "var"):
      value = np.ones(var.shape, np.float32)
    else:
      value = np.zeros(var.shape, np.float32)
    filled.append((path, var.replace(jnp.asarray(value))))
  return nnx.merge(graphdef, nnx.from_flat_state(filled))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def real_raw_root() -> Path:
  root = sources.default_raw_root()
  if root is None or not all((root / folder).is_dir() for folder in sources.RAW_FOLDERS.values()):
    pytest.skip(
      "real face-mask data not found (expected ../shared/data beside the checkout or "
      f"${sources.RAW_DATA_ENV}; folders {sorted(sources.RAW_FOLDERS.values())})"
    )
  return root


def _sample_raw(real_raw_root: Path, dst_raw: Path, dataset: str, files: Iterable[str]) -> Path:
  folder = sources.RAW_FOLDERS[dataset]
  copy_files(real_raw_root / folder, dst_raw / folder, files)
  return dst_raw


def detection_files(photos: Iterable[str] = DETECTION_PHOTOS) -> list[str]:
  return [f for stem in photos for f in (f"images/{stem}.jpg", f"annotations/{stem}.xml")]


@pytest.fixture(scope="session")
def detection_built(real_raw_root, tmp_path_factory) -> str | None:
  """data_dir holding face_mask_detection/2classes: None when the user's built copy is found in the
  default place, else a session folder where it is built here from the shipped raw data (~20 s)."""
  from vaeaug.data import building

  try:
    sources.data_source("face_mask_detection/2classes", "train", None)
    return None
  except FileNotFoundError:
    data_dir = tmp_path_factory.mktemp("tfds")
    building.prepare("face_mask_detection", "2classes", data_dir=data_dir, raw_root=real_raw_root)
    return str(data_dir)


@pytest.fixture(scope="session")
def detection_sample(real_raw_root, tmp_path_factory) -> Path:
  """raw root holding face-mask-detection/ with the DETECTION_PHOTOS sample."""
  return _sample_raw(real_raw_root, tmp_path_factory.mktemp("raw_detection"), "face_mask_detection", detection_files())


@pytest.fixture(scope="session")
def k12_sample(real_raw_root, tmp_path_factory) -> Path:
  return _sample_raw(real_raw_root, tmp_path_factory.mktemp("raw_12k"), "face_mask12k", k12_sample_files(real_raw_root))


@pytest.fixture(scope="session")
def observations_sample(real_raw_root, tmp_path_factory) -> Path:
  return _sample_raw(
    real_raw_root, tmp_path_factory.mktemp("raw_observations"), "face_mask_observations", OBSERVATIONS_FILES
  )


class Built:
  """A sample built into its own data_dir: the report and the examples read back."""

  def __init__(self, dataset: str, config: str, raw_root: Path, data_dir: Path):
    from vaeaug.data import building

    self.dataset, self.config, self.raw_root, self.data_dir = dataset, config, raw_root, data_dir
    self.report = building.prepare(dataset, config, data_dir=data_dir, raw_root=raw_root)
    self.rows = read_built(dataset, config, data_dir)
    self.by_file = by_file(self.rows)

  @property
  def dataset_dir(self) -> Path:
    (path,) = (self.data_dir / self.dataset / self.config).iterdir()
    return path


@pytest.fixture(scope="session")
def built(tmp_path_factory, detection_sample, k12_sample, observations_sample):
  """built(dataset, config) -> Built of the shared sample, built once per session."""
  raw = {
    "face_mask_detection": detection_sample,
    "face_mask12k": k12_sample,
    "face_mask_observations": observations_sample,
  }
  data_dir = tmp_path_factory.mktemp("tfds_samples")
  cache: dict[tuple[str, str], Built] = {}

  def get(dataset: str, config: str) -> Built:
    if (dataset, config) not in cache:
      cache[dataset, config] = Built(dataset, config, raw[dataset], data_dir)
    return cache[dataset, config]

  return get
