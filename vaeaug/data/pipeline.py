"""In-memory input pipeline: TFDS array_record splits -> fixed-size numpy arrays.

The face-mask datasets are small (at most ~12k face crops), so a whole split is
read once, every image is resized to ``image_size x image_size`` and the result
is held in memory as an :class:`ArrayDataset` (plain numpy, uint8 NHWC).
Everything downstream (stratified few-shot subsets, shuffled epochs, padded
evaluation batches, multi-host slicing) is deterministic numpy indexing.

Overview::

    ds = load_split("face_mask12k/grouped", "train", image_size=64)
    print(ds.summary())
    small = subsample(ds, n_per_class=50, seed=0)       # nested in n, stratified
    for batch in epoch_batches(small, 32, seed=0, epoch=3, remainder="drop"):
        x = to_float(batch["image"], "symmetric")         # float32 in [-1, 1]
        y = batch["label"]                                # int32
        m = batch["mask"]                                 # bool, False = padding

Determinism contract
--------------------
* :func:`subsample` depends only on ``(labels, n_per_class, seed)``; for one
  dataset and seed, the 25-per-class subset is contained in the 50-per-class
  one, which is in the 100-per-class one.
* :func:`epoch_batches` orders examples by a permutation that depends only on
  ``(seed, epoch, len(dataset))``, so training can resume mid-run exactly with
  ``epoch=e, start_batch=k`` (see :func:`resume_point`).

On-disk cache
-------------
:func:`load_split` can cache the resized arrays as an ``.npz`` file under
``<data_dir>/_vaeaug_cache/``.  The file is written with ``allow_pickle=False``
(strings are stored as fixed-width unicode arrays, never as object arrays) and
read back with ``np.load(..., allow_pickle=False)``.  It is keyed by dataset
name, split, image size, fit, resize method, extra features and a fingerprint
of the dataset's files (names, sizes and mtimes of everything in the TFDS
version directory), so rebuilding the dataset invalidates the cache.  A cache
file that cannot be read (truncated, corrupt, inconsistent) is reported with a
:class:`CacheWarning` naming the file and rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import tempfile
import types
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vaeaug.data import sources

__all__ = [
  "ArrayDataset",
  "CacheWarning",
  "IMAGENET_MEAN",
  "IMAGENET_STD",
  "normalize_unit",
  "cache_path",
  "epoch_batches",
  "epoch_permutation",
  "from_float",
  "load_split",
  "load_splits",
  "num_batches",
  "resize_image",
  "resume_point",
  "subsample",
  "subsample_indices",
  "to_float",
]

# Bump when the cache file layout or the preprocessing changes.
CACHE_FORMAT_VERSION = 1
CACHE_DIRNAME = "_vaeaug_cache"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESAMPLE = {
  "nearest": Image.Resampling.NEAREST,
  "bilinear": Image.Resampling.BILINEAR,
  "bicubic": Image.Resampling.BICUBIC,
  "lanczos": Image.Resampling.LANCZOS,
  "hamming": Image.Resampling.HAMMING,
  "area": Image.Resampling.BOX,
  "box": Image.Resampling.BOX,
}
_FITS = ("stretch", "pad", "center_crop")
_REMAINDERS = ("drop", "pad", "keep")
_PAD_MODES = ("repeat", "zeros")
_NORMALIZATIONS = ("unit", "imagenet", "symmetric")
_BASE_FEATURES = ("image", "label", "file", "group")


class CacheWarning(UserWarning):
  """A cache file was unreadable or could not be written (it is rebuilt)."""


# ---------------------------------------------------------------------------
# ArrayDataset
# ---------------------------------------------------------------------------


def _readonly(a: np.ndarray) -> np.ndarray:
  """A read-only view (the caller's array keeps its own flags)."""
  v = a.view()
  v.flags.writeable = False
  return v


def _as_str_array(values: Any, what: str) -> np.ndarray:
  """1-D fixed-width unicode array (never an object array); bytes are decoded as UTF-8."""
  if isinstance(values, np.ndarray) and values.dtype.kind == "U":
    arr = values
  elif isinstance(values, np.ndarray) and values.dtype.kind == "S":
    arr = np.char.decode(values, "utf-8") if values.size else values.astype("U1")
  else:
    items = values.tolist() if isinstance(values, np.ndarray) else list(values)
    out = []
    for v in items:
      if isinstance(v, bytes):
        out.append(v.decode("utf-8"))
      elif isinstance(v, str):
        out.append(v)
      else:
        raise TypeError(f"{what} must contain str or bytes, got {type(v).__name__}: {v!r}")
    arr = np.asarray(out, dtype=str) if out else np.zeros((0,), dtype="U1")
  if arr.ndim != 1:
    raise ValueError(f"{what} must be a 1-D sequence of strings, got shape {arr.shape}")
  return arr


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class ArrayDataset:
  """An in-memory labelled image dataset (all arrays share the first axis).

  Attributes:
    images: uint8 array ``(N, H, W, 3)`` (``H == W == image_size`` after
      :func:`load_split`).
    labels: int32 array ``(N,)`` with values in ``[0, num_classes)``.
    files: unicode array ``(N,)``: path of each image relative to the
      dataset root (synthetic examples may use any descriptive string).
    groups: unicode array ``(N,)``: leakage-group id of each example.
    class_names: names of the classes, index = label.
    extras: optional further per-example arrays (e.g. ``box``), each with
      first axis ``N``; never object arrays.
    name: free-form description used in ``repr``/``summary``.

  The arrays are stored as read-only views; use :meth:`take` /
  :meth:`concatenate` to derive new datasets.
  """

  images: np.ndarray
  labels: np.ndarray
  files: np.ndarray
  groups: np.ndarray
  class_names: tuple[str, ...]
  extras: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
  name: str = ""

  def __post_init__(self):
    images = self.images
    if not isinstance(images, np.ndarray):
      images = np.asarray(images)
    if images.dtype != np.uint8:
      raise TypeError(f"images must be uint8, got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must have shape (N, H, W, 3), got {images.shape}")
    n = images.shape[0]

    labels = np.asarray(self.labels)
    if labels.ndim != 1:
      raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if labels.size == 0:
      labels = labels.astype(np.int32)
    if labels.dtype.kind not in "iu":
      raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")

    class_names = tuple(self.class_names)
    if not class_names:
      raise ValueError("class_names must not be empty")
    if not all(isinstance(c, str) for c in class_names):
      raise TypeError(f"class_names must be str, got {class_names!r}")
    if len(set(class_names)) != len(class_names):
      raise ValueError(f"class_names must be unique, got {class_names!r}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
      bad = labels[(labels < 0) | (labels >= len(class_names))]
      raise ValueError(
        f"labels must be in [0, {len(class_names)}) for classes {class_names}, found {sorted(set(bad.tolist()))[:10]}"
      )
    labels = labels.astype(np.int32, copy=False)

    files = _as_str_array(self.files, "files")
    groups = _as_str_array(self.groups, "groups")
    lengths = {"images": n, "labels": len(labels), "files": len(files), "groups": len(groups)}

    extras = {}
    for key, value in dict(self.extras).items():
      arr = np.asarray(value)
      if arr.dtype.kind in "SO":
        arr = _as_str_array(value, f"extras[{key!r}]")
      if arr.ndim == 0:
        raise ValueError(f"extras[{key!r}] must have a leading example axis")
      extras[str(key)] = _readonly(arr)
      lengths[f"extras[{key!r}]"] = arr.shape[0]
    if len(set(lengths.values())) != 1:
      raise ValueError(f"ArrayDataset fields have different lengths: {lengths}")

    object.__setattr__(self, "images", _readonly(images))
    object.__setattr__(self, "labels", _readonly(labels))
    object.__setattr__(self, "files", _readonly(files))
    object.__setattr__(self, "groups", _readonly(groups))
    object.__setattr__(self, "class_names", class_names)
    object.__setattr__(self, "extras", types.MappingProxyType(extras))
    object.__setattr__(self, "name", str(self.name))

  # -- basic properties ---------------------------------------------------

  def __len__(self) -> int:
    return int(self.images.shape[0])

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

  def class_counts(self) -> np.ndarray:
    """Number of examples per class, int64 array of length ``num_classes``."""
    return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)

  # -- derivation -----------------------------------------------------------

  def take(self, indices: Any, name: str | None = None) -> ArrayDataset:
    """New dataset of the rows ``indices`` (integer indices or a bool mask), in that order."""
    idx = np.asarray(indices)
    if idx.dtype == bool:
      if idx.shape != (len(self),):
        raise ValueError(f"boolean mask must have shape ({len(self)},), got {idx.shape}")
      idx = np.flatnonzero(idx)
    elif idx.size == 0:
      idx = idx.astype(np.int64)
    elif idx.dtype.kind not in "iu":
      raise TypeError(f"indices must be integers or a boolean mask, got dtype {idx.dtype}")
    if idx.ndim != 1:
      raise ValueError(f"indices must be 1-D, got shape {idx.shape}")
    if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
      raise IndexError(f"indices out of range for dataset of length {len(self)}")
    return ArrayDataset(
      images=self.images[idx],
      labels=self.labels[idx],
      files=self.files[idx],
      groups=self.groups[idx],
      class_names=self.class_names,
      extras={k: v[idx] for k, v in self.extras.items()},
      name=self.name if name is None else name,
    )

  def concatenate(self, other: ArrayDataset, name: str | None = None) -> ArrayDataset:
    """Rows of ``self`` followed by rows of ``other`` (e.g. real + synthetic).

    Class names must be identical (same order), image shapes must match and
    both datasets must carry the same ``extras`` keys.
    """
    if not isinstance(other, ArrayDataset):
      raise TypeError(f"can only concatenate ArrayDataset, got {type(other).__name__}")
    if self.class_names != other.class_names:
      raise ValueError(f"class_names differ: {self.class_names} vs {other.class_names}")
    if self.image_shape != other.image_shape:
      raise ValueError(f"image shapes differ: {self.image_shape} vs {other.image_shape}")
    if set(self.extras) != set(other.extras):
      raise ValueError(f"extras keys differ: {sorted(self.extras)} vs {sorted(other.extras)}")
    if name is None:
      name = "+".join(s for s in (self.name, other.name) if s)
    return ArrayDataset(
      images=np.concatenate([self.images, other.images]),
      labels=np.concatenate([self.labels, other.labels]),
      files=np.concatenate([self.files, other.files]),
      groups=np.concatenate([self.groups, other.groups]),
      class_names=self.class_names,
      extras={k: np.concatenate([v, other.extras[k]]) for k, v in self.extras.items()},
      name=name,
    )

  # -- display ---------------------------------------------------------------

  def _counts_str(self) -> str:
    counts = self.class_counts()
    return "{" + ", ".join(f"{c!r}: {int(k)}" for c, k in zip(self.class_names, counts)) + "}"

  def __repr__(self) -> str:
    name = f"name={self.name!r}, " if self.name else ""
    return f"ArrayDataset({name}n={len(self)}, image_shape={self.image_shape}, classes={self._counts_str()})"

  def summary(self) -> str:
    """Multi-line description: size, image shape, per-class counts, groups."""
    n = len(self)
    counts = self.class_counts()
    width = max(len(c) for c in self.class_names)
    lines = [
      f"ArrayDataset {self.name!r}" if self.name else "ArrayDataset",
      f"  examples:    {n}",
      f"  image shape: {self.image_shape} uint8",
      f"  groups:      {len(np.unique(self.groups))} distinct",
    ]
    if self.extras:
      lines.append("  extras:      " + ", ".join(f"{k} {v.dtype}{tuple(v.shape[1:])}" for k, v in self.extras.items()))
    lines.append(f"  classes ({self.num_classes}):")
    for i, (c, k) in enumerate(zip(self.class_names, counts)):
      pct = 100.0 * k / n if n else 0.0
      lines.append(f"    {i}: {c:<{width}}  {int(k):>7}  ({pct:5.1f}%)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Resizing
# ---------------------------------------------------------------------------


def resize_image(
  image: np.ndarray,
  size: int,
  method: str = "bilinear",
  fit: str = "stretch",
  pad_value: int = 0,
) -> np.ndarray:
  """Resize one uint8 image to ``(size, size, 3)`` with PIL.

  PIL's resampling filters widen their support when downscaling, so every
  method except ``"nearest"`` is antialiased.  ``"area"`` (alias ``"box"``)
  averages source pixels, which suits large reductions.

  Args:
    image: uint8 ``(H, W, 3)``; ``(H, W)`` and ``(H, W, 1)`` grey images
      are repeated to three channels.
    size: output side length in pixels.
    method: ``"bilinear"``, ``"bicubic"``, ``"lanczos"``, ``"hamming"``,
      ``"area"``/``"box"`` or ``"nearest"``.
    fit: how a non-square image becomes square:
      ``"stretch"`` resizes straight to ``size x size`` and does NOT
      preserve the aspect ratio (fine for face crops, which are roughly
      square); ``"pad"`` scales the longer side to ``size``, keeping the
      aspect ratio, and centres the result on a ``pad_value`` canvas;
      ``"center_crop"`` cuts the central square of side ``min(H, W)`` and
      scales it to ``size``.
    pad_value: fill value (0..255) for ``fit="pad"``.
  """
  if method not in _RESAMPLE:
    raise ValueError(f"unknown resize method {method!r}; choose from {sorted(_RESAMPLE)}")
  if fit not in _FITS:
    raise ValueError(f"unknown fit {fit!r}; choose from {_FITS}")
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
    raise ValueError(f"size must be a positive int, got {size!r}")
  size = int(size)
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise TypeError(f"image must be uint8, got dtype {image.dtype}")
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 2:
    image = np.stack([image] * 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must have shape (H, W, 3), got {image.shape}")
  h, w = image.shape[:2]
  if h == 0 or w == 0:
    raise ValueError(f"cannot resize an empty image of shape {image.shape}")
  resample = _RESAMPLE[method]

  if fit == "center_crop":
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = image[top : top + side, left : left + side]
    h = w = side

  pil = Image.fromarray(np.ascontiguousarray(image))
  if fit == "pad":
    scale = size / max(h, w)
    new_h = min(size, max(1, round(h * scale)))
    new_w = min(size, max(1, round(w * scale)))
    resized = np.asarray(pil.resize((new_w, new_h), resample=resample))
    out = np.full((size, size, 3), pad_value, dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resized
    return out
  if (h, w) == (size, size):
    return np.array(image, dtype=np.uint8, copy=True)
  return np.asarray(pil.resize((size, size), resample=resample), dtype=np.uint8)


# ---------------------------------------------------------------------------
# Loading from TFDS (+ cache)
# ---------------------------------------------------------------------------


def _to_str(v: Any) -> str:
  if isinstance(v, bytes):
    return v.decode("utf-8")
  if isinstance(v, np.ndarray) and v.ndim == 0:
    return _to_str(v.item())
  return str(v)


def _dataset_root(info: Any) -> Path:
  """``<data_dir>`` of a TFDS dataset from its ``<data_dir>/<name>[/<config>]/<version>`` dir."""
  version_dir = Path(os.fspath(info.data_dir))
  depth = len(str(info.full_name).split("/"))
  root = version_dir
  for _ in range(depth):
    root = root.parent
  return root


def _fingerprint(info: Any) -> list:
  """Names, sizes and mtimes of the files of the dataset version directory."""
  version_dir = Path(os.fspath(info.data_dir))
  entries = []
  if version_dir.is_dir():
    for p in sorted(version_dir.iterdir()):
      if p.is_file():
        st = p.stat()
        entries.append([p.name, st.st_size, st.st_mtime_ns])
  return entries


def _cache_key(name, split, image_size, fit, method, extra_features, info) -> dict:
  return {
    "format": CACHE_FORMAT_VERSION,
    "name": str(name),
    "full_name": str(info.full_name),
    "split": str(split),
    "image_size": int(image_size),
    "fit": fit,
    "method": method,
    "extra_features": list(extra_features),
    "files": _fingerprint(info),
  }


def cache_path(cache_dir: str | os.PathLike, key: Mapping[str, Any]) -> Path:
  """File of the cache entry ``key`` inside ``cache_dir`` (readable name + key hash)."""
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  readable = f"{key['name']}_{key['split']}_{key['image_size']}_{key['fit']}"
  readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", readable)
  return Path(cache_dir) / f"{readable}_{digest}.npz"


def _save_cache(path: Path, ds: ArrayDataset, key: Mapping[str, Any]) -> None:
  arrays = {
    "images": ds.images,
    "labels": ds.labels,
    "files": np.asarray(ds.files, dtype=str),
    "groups": np.asarray(ds.groups, dtype=str),
    "class_names": np.asarray(ds.class_names, dtype=str),
    "key": np.asarray(json.dumps(key, sort_keys=True), dtype=str),
  }
  for k, v in ds.extras.items():
    arrays[f"extra__{k}"] = v
  for k, v in arrays.items():
    if v.dtype.kind == "O":  # would need pickle: never
      raise TypeError(f"refusing to cache object array {k!r}")
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, allow_pickle=False, **arrays)
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except OSError:
      pass
    raise


def _load_cache(path: Path, key: Mapping[str, Any], name: str) -> ArrayDataset:
  with np.load(path, allow_pickle=False) as z:
    stored_key = json.loads(str(z["key"][()]))
    if stored_key != json.loads(json.dumps(key, sort_keys=True)):
      raise ValueError("cache key does not match")
    extras = {k[len("extra__") :]: z[k] for k in z.files if k.startswith("extra__")}
    return ArrayDataset(
      images=z["images"],
      labels=z["labels"],
      files=z["files"],
      groups=z["groups"],
      class_names=tuple(str(c) for c in z["class_names"]),
      extras=extras,
      name=name,
    )


def _read_split(source: Any, image_size, fit, method, extra_features, chunk=256):
  n = len(source)
  images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
  labels = np.empty((n,), dtype=np.int64)
  files: list[str] = []
  groups: list[str] = []
  extras: dict[str, list] = {k: [] for k in extra_features}
  getitems = getattr(source, "__getitems__", None)
  for start in range(0, n, chunk):
    idx = list(range(start, min(n, start + chunk)))
    examples = getitems(idx) if getitems is not None else [source[i] for i in idx]
    for i, ex in zip(idx, examples):
      missing = [k for k in (*_BASE_FEATURES, *extra_features) if k not in ex]
      if missing:
        raise KeyError(f"example {i} lacks feature(s) {missing}; it has {sorted(ex)}")
      try:
        images[i] = resize_image(np.asarray(ex["image"]), image_size, method=method, fit=fit)
      except (TypeError, ValueError) as e:
        raise ValueError(f"example {i} ({_to_str(ex['file'])!r}): {e}") from e
      labels[i] = int(ex["label"])
      files.append(_to_str(ex["file"]))
      groups.append(_to_str(ex["group"]))
      for k in extra_features:
        v = ex[k]
        extras[k].append(_to_str(v) if isinstance(v, (bytes, str)) else np.asarray(v))
  extra_arrays = {}
  for k, vals in extras.items():
    if vals and isinstance(vals[0], str):
      extra_arrays[k] = np.asarray(vals, dtype=str)
      continue
    try:
      arr = np.stack(vals) if vals else np.zeros((0,))
    except ValueError as e:
      raise ValueError(f"extra feature {k!r} has a variable shape and cannot be stacked: {e}") from e
    if arr.dtype.kind == "O":
      raise TypeError(f"extra feature {k!r} is not a plain numeric/string array")
    extra_arrays[k] = arr
  return images, labels, files, groups, extra_arrays


def load_split(
  name: str,
  split: str,
  *,
  data_dir: str | os.PathLike | None = None,
  image_size: int = 64,
  fit: str = "stretch",
  method: str = "bilinear",
  extra_features: Sequence[str] = (),
  cache: bool = True,
  cache_dir: str | os.PathLike | None = None,
) -> ArrayDataset:
  """Read a whole TFDS split (array_record) into memory, resized to ``image_size``.

  Examples keep their stored order.  ``file`` and ``group`` become ``str``;
  class names come from the dataset's ``label`` ClassLabel feature.  The
  dataset must already be prepared (nothing is downloaded or built).

  Args:
    name: TFDS name with config, e.g. ``"face_mask12k/grouped"``.
    split: split string, slicing allowed (``"train[:80%]"``).
    data_dir: TFDS data directory (``None``: the TFDS default).
    image_size: output side length.
    fit, method: see :func:`resize_image`.
    extra_features: further features to keep in ``ArrayDataset.extras``
      (e.g. ``("box", "photo")``); they must stack to a fixed shape.
    cache: read/write the ``.npz`` cache (see module docstring).
    cache_dir: cache directory (default ``<data_dir>/_vaeaug_cache``).
  """
  if fit not in _FITS:
    raise ValueError(f"unknown fit {fit!r}; choose from {_FITS}")
  if method not in _RESAMPLE:
    raise ValueError(f"unknown resize method {method!r}; choose from {sorted(_RESAMPLE)}")
  if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
    raise ValueError(f"image_size must be a positive int, got {image_size!r}")
  image_size = int(image_size)
  extra_features = tuple(str(k) for k in extra_features)
  clash = set(extra_features) & set(_BASE_FEATURES)
  if clash:
    raise ValueError(f"extra_features must not repeat base features {sorted(clash)}")

  source = sources.data_source(name, split, data_dir)
  info = source.dataset_info
  label_feature = info.features["label"]
  class_names = tuple(str(c) for c in label_feature.names)
  ds_name = f"{name}:{split}"

  path = None
  key = None
  if cache:
    key = _cache_key(name, split, image_size, fit, method, extra_features, info)
    root = (
      Path(cache_dir)
      if cache_dir is not None
      else ((Path(data_dir) if data_dir is not None else _dataset_root(info)) / CACHE_DIRNAME)
    )
    path = cache_path(root, key)
    if path.exists():
      try:
        ds = _load_cache(path, key, ds_name)
        if ds.class_names != class_names or len(ds) != len(source):
          raise ValueError("cached contents do not match the dataset")
        return ds
      except Exception as e:  # corrupt / truncated / inconsistent: rebuild
        warnings.warn(
          f"ignoring unreadable cache file {path} ({type(e).__name__}: {e}); rebuilding it",
          CacheWarning,
          stacklevel=2,
        )

  images, labels, files, groups, extras = _read_split(source, image_size, fit, method, extra_features)
  ds = ArrayDataset(
    images=images,
    labels=labels,
    files=files,
    groups=groups,
    class_names=class_names,
    extras=extras,
    name=ds_name,
  )
  if cache:
    try:
      _save_cache(path, ds, key)
    except OSError as e:
      warnings.warn(f"could not write cache file {path}: {e}", CacheWarning, stacklevel=2)
  return ds


def load_splits(
  name: str,
  splits: Sequence[str] = ("train", "validation", "test"),
  **kwargs: Any,
) -> dict[str, ArrayDataset]:
  """``{split: load_split(name, split, **kwargs)}`` for each split."""
  return {split: load_split(name, split, **kwargs) for split in splits}


# ---------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------


def _array_module(x: Any):
  jax = sys.modules.get("jax")
  if jax is not None and isinstance(x, jax.Array):
    import jax.numpy as jnp

    return jnp
  return np


def to_float(images: Any, normalization: str = "unit"):
  """uint8 images -> float32.

  ``"unit"``: ``x / 255`` in ``[0, 1]``; ``"symmetric"``: ``x / 127.5 - 1``
  in ``[-1, 1]``; ``"imagenet"``: ``(x / 255 - IMAGENET_MEAN) / IMAGENET_STD``
  per channel (last axis).  Numpy in -> numpy out, jax in -> jax out.
  Raises ``TypeError`` for non-uint8 input (guards against normalising twice).
  """
  if normalization not in _NORMALIZATIONS:
    raise ValueError(f"unknown normalization {normalization!r}; choose from {_NORMALIZATIONS}")
  xp = _array_module(images)
  x = images if xp is not np else np.asarray(images)
  if x.dtype != np.uint8:
    raise TypeError(f"to_float expects uint8 images, got dtype {x.dtype}")
  return normalize_unit(x.astype(xp.float32) / xp.float32(255.0), normalization)


def normalize_unit(images: Any, normalization: str = "unit"):
  """Float images in ``[0, 1]`` -> the given normalisation (as in :func:`to_float`).

  For code that works on ``[0, 1]`` floats first (augmentation) and normalises after.
  """
  if normalization not in _NORMALIZATIONS:
    raise ValueError(f"unknown normalization {normalization!r}; choose from {_NORMALIZATIONS}")
  xp = _array_module(images)
  if normalization == "unit":
    return images
  if normalization == "symmetric":
    return images * xp.float32(2.0) - xp.float32(1.0)
  mean = xp.asarray(IMAGENET_MEAN, dtype=xp.float32)
  std = xp.asarray(IMAGENET_STD, dtype=xp.float32)
  return (images - mean) / std


def from_float(images: Any, normalization: str = "unit"):
  """Inverse of :func:`to_float`: float images -> uint8 (rounded, clipped)."""
  if normalization not in _NORMALIZATIONS:
    raise ValueError(f"unknown normalization {normalization!r}; choose from {_NORMALIZATIONS}")
  xp = _array_module(images)
  x = images if xp is not np else np.asarray(images)
  x = x.astype(xp.float32)
  if normalization == "unit":
    x = x * 255.0
  elif normalization == "symmetric":
    x = (x + 1.0) * 127.5
  else:
    mean = xp.asarray(IMAGENET_MEAN, dtype=xp.float32)
    std = xp.asarray(IMAGENET_STD, dtype=xp.float32)
    x = (x * std + mean) * 255.0
  return xp.clip(xp.round(x), 0, 255).astype(xp.uint8)


# ---------------------------------------------------------------------------
# Stratified, nested subsampling
# ---------------------------------------------------------------------------


def _check_seed(seed: Any, what: str = "seed") -> int:
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"{what} must be a non-negative int, got {seed!r}")
  return int(seed)


def subsample_indices(
  labels: np.ndarray,
  n_per_class: int | str | None,
  seed: int,
  *,
  num_classes: int | None = None,
  class_names: Sequence[str] | None = None,
  allow_fewer: bool = False,
) -> np.ndarray:
  """Sorted indices of a stratified, nested subset; see :func:`subsample`."""
  labels = np.asarray(labels)
  if n_per_class is None or (isinstance(n_per_class, str) and n_per_class == "all"):
    return np.arange(len(labels))
  if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)) or n_per_class < 0:
    raise ValueError(f"n_per_class must be a non-negative int, None or 'all', got {n_per_class!r}")
  seed = _check_seed(seed)
  n = int(n_per_class)
  if num_classes is None:
    num_classes = len(class_names) if class_names is not None else int(labels.max(initial=-1)) + 1
  chosen = []
  short = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)  # stored order
    # The permutation depends only on (seed, class), not on n: nested subsets.
    perm = np.random.default_rng([seed, c]).permutation(members)
    if len(perm) < n:
      short.append((c, len(perm)))
    chosen.append(perm[:n])
  if short and not allow_fewer:
    names = class_names if class_names is not None else [str(i) for i in range(num_classes)]
    detail = ", ".join(f"class {c} ({names[c]!r}) has {k}" for c, k in short)
    raise ValueError(f"n_per_class={n} but {detail} example(s); pass allow_fewer=True to take all of them")
  out = np.concatenate(chosen) if chosen else np.zeros((0,), np.int64)
  return np.sort(out).astype(np.int64)


def subsample(
  dataset: ArrayDataset,
  n_per_class: int | str | None,
  seed: int,
  *,
  allow_fewer: bool = False,
) -> ArrayDataset:
  """Stratified subset with ``n_per_class`` examples of every class.

  Nested: per class, examples are ranked by a permutation drawn from
  ``np.random.default_rng([seed, class_index])`` and the first
  ``n_per_class`` are taken, so for one dataset and seed the 25-per-class
  subset is contained in the 50-per-class subset.  The result keeps the
  dataset's stored order (selected indices are sorted).

  ``n_per_class=None`` or ``"all"`` returns the whole dataset.  A class with
  fewer than ``n_per_class`` examples raises ``ValueError`` unless
  ``allow_fewer=True``, in which case all of its examples are taken.
  """
  if n_per_class is None or (isinstance(n_per_class, str) and n_per_class == "all"):
    return dataset
  idx = subsample_indices(
    dataset.labels,
    n_per_class,
    seed,
    num_classes=dataset.num_classes,
    class_names=dataset.class_names,
    allow_fewer=allow_fewer,
  )
  base = dataset.name or "dataset"
  return dataset.take(idx, name=f"{base}[{n_per_class}/class, seed={seed}]")


# ---------------------------------------------------------------------------
# Epoch batching
# ---------------------------------------------------------------------------


def num_batches(n: int, batch_size: int, remainder: str = "drop") -> int:
  """Batches per epoch of ``n`` examples: ``n // B`` for "drop", ``ceil(n / B)`` otherwise."""
  if remainder not in _REMAINDERS:
    raise ValueError(f"unknown remainder {remainder!r}; choose from {_REMAINDERS}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if n < 0:
    raise ValueError(f"n must be non-negative, got {n}")
  return n // batch_size if remainder == "drop" else math.ceil(n / batch_size)


def resume_point(global_step: int, steps_per_epoch: int) -> tuple[int, int]:
  """``(epoch, start_batch)`` to continue after ``global_step`` completed steps."""
  if steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
  if global_step < 0:
    raise ValueError(f"global_step must be non-negative, got {global_step}")
  return divmod(int(global_step), int(steps_per_epoch))


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
  """Example order of one epoch: depends only on ``(n, seed, epoch)``."""
  if not shuffle:
    return np.arange(n)
  return np.random.default_rng([_check_seed(seed), _check_seed(epoch, "epoch")]).permutation(n)


def _unpack(data: Any) -> tuple[np.ndarray, np.ndarray]:
  if isinstance(data, ArrayDataset):
    images, labels = data.images, data.labels
  elif isinstance(data, Mapping):
    images, labels = data["image"], data["label"]
  elif isinstance(data, (tuple, list)) and len(data) == 2:
    images, labels = data
  else:
    raise TypeError(
      "expected an ArrayDataset, a (images, labels) pair or a mapping with "
      f"'image' and 'label', got {type(data).__name__}"
    )
  images, labels = np.asarray(images), np.asarray(labels)
  if images.shape[0] != labels.shape[0]:
    raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
  return images, labels


def even_batch_size(num_examples: int, max_batch: int, multiple: int = 1) -> int:
  """The smallest batch size, a multiple of `multiple`, that covers `num_examples` in as few batches
  as `max_batch` allows: evaluation pads the last batch, so 395 examples at 256 run as 2 x 200
  (400 rows) instead of 2 x 256 (512)."""
  if num_examples < 1 or max_batch < 1 or multiple < 1:
    raise ValueError(f"need positive sizes, got {num_examples} examples, batch {max_batch}, multiple {multiple}")
  max_batch = max(multiple, max_batch - max_batch % multiple)
  batches = -(-num_examples // max_batch)
  size = -(-num_examples // batches)
  return -(-size // multiple) * multiple


def epoch_batches(
  data: Any,
  batch_size: int,
  *,
  seed: int,
  epoch: int,
  shuffle: bool = True,
  remainder: str = "drop",
  pad_mode: str = "repeat",
  start_batch: int = 0,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """Batches of one epoch as dicts of numpy arrays.

  Each batch is ``{"image": uint8 (b, H, W, C), "label": int32 (b,),
  "mask": bool (b,), "index": int64 (b,)}``: ``mask`` is False for padding
  rows and ``index`` is the dataset row of each example (-1 for padding).

  Order: with ``shuffle=True`` the epoch's permutation comes from
  ``np.random.default_rng([seed, epoch])`` and depends on nothing else
  (not on batch size, start batch or host), so a run resumed with
  ``start_batch=k`` sees exactly the batches ``k, k+1, ...`` of the full
  epoch (see :func:`resume_point`).  ``shuffle=False`` keeps stored order.

  Last partial batch (``remainder``):
    * ``"drop"``: discarded (training; every batch is full, so an example
      may miss an epoch, but a different one each epoch);
    * ``"pad"``: filled up to ``batch_size`` (evaluation under ``jit``: fixed
      shapes) with ``mask=False`` rows; ``pad_mode="repeat"`` repeats real
      examples from the start of the epoch order (images stay realistic),
      ``pad_mode="zeros"`` uses all-zero images with label 0.  Exclude
      padding by weighting with ``mask``;
    * ``"keep"``: yielded as a smaller batch (shape changes: jit retraces).

  Multi-host: ``batch_size`` is the GLOBAL batch size and must be divisible
  by ``process_count``.  Every host computes the same global batch and
  yields rows ``[p * b, (p + 1) * b)`` of it, with ``b = batch_size //
  process_count`` and ``p = process_index``: slices are disjoint and, in
  process order, form the global batch.  ``remainder="keep"`` is refused
  with ``process_count > 1`` because hosts would get unequal shapes.
  """
  images, labels = _unpack(data)
  if remainder not in _REMAINDERS:
    raise ValueError(f"unknown remainder {remainder!r}; choose from {_REMAINDERS}")
  if pad_mode not in _PAD_MODES:
    raise ValueError(f"unknown pad_mode {pad_mode!r}; choose from {_PAD_MODES}")
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got {process_index} and {process_count}")
  if batch_size % process_count:
    raise ValueError(f"global batch_size {batch_size} is not divisible by process_count {process_count}")
  if remainder == "keep" and process_count > 1:
    raise ValueError('remainder="keep" gives hosts unequal batch shapes; use "drop" or "pad"')
  n = len(labels)
  total = num_batches(n, batch_size, remainder)
  if not 0 <= start_batch <= total:
    raise ValueError(f"start_batch must be in [0, {total}], got {start_batch}")
  # Validate even if shuffle=False, so a typo in seed/epoch fails early.
  _check_seed(seed)
  _check_seed(epoch, "epoch")
  order = epoch_permutation(n, seed, epoch, shuffle)
  local = batch_size // process_count
  lo, hi = process_index * local, (process_index + 1) * local

  return _batch_iter(images, labels, order, batch_size, start_batch, total, remainder, pad_mode, lo, hi)


def _batch_iter(images, labels, order, batch_size, start_batch, total, remainder, pad_mode, lo, hi):
  n = len(order)
  for b in range(start_batch, total):
    idx = order[b * batch_size : (b + 1) * batch_size]
    real = len(idx)
    if remainder == "pad" and real < batch_size:
      missing = batch_size - real
      if pad_mode == "repeat":
        pad_src = order[np.arange(missing) % n]
      else:
        pad_src = np.full(missing, -1, dtype=order.dtype)
      src = np.concatenate([idx, pad_src])
      mask = np.arange(batch_size) < real
    else:
      src = idx
      mask = np.ones(real, dtype=bool)
    # This host's rows of the global batch (everything when process_count == 1).
    src, mask = src[lo:hi], mask[lo:hi]
    gather = np.where(src >= 0, src, 0)
    img = images[gather]
    lab = labels[gather].astype(np.int32)
    zero = src < 0
    if zero.any():
      img[zero] = 0
      lab[zero] = 0
    yield {
      "image": img,
      "label": lab,
      "mask": mask,
      "index": np.where(mask, src, -1).astype(np.int64),
    }


# ---------------------------------------------------------------------------
# Extra rows on top of every batch
# ---------------------------------------------------------------------------


def extra_rows_per_batch(ratio: float, batch_size: int, multiple: int = 1) -> int:
  """Extra rows that go with a batch of `batch_size` base rows at `ratio` extra rows per base row:
  the nearest multiple of `multiple` (the device count, so the whole batch splits evenly), at least
  `multiple` for any positive ratio."""
  if not ratio > 0:
    raise ValueError(f"extra-row ratio must be positive, got {ratio!r}")
  return max(multiple, multiple * round(ratio * batch_size / multiple))


@dataclasses.dataclass(frozen=True)
class WithExtraRows:
  """Training data whose every batch is the batch :func:`epoch_batches` gives for `base` alone, followed
  by extra rows drawn from `extra` (e.g. synthetic images).

  The base rows of a batch do not depend on `extra` at all, so a run with extra rows sees each base
  image exactly as often, and in the same order, as a run on `base` alone: the extra rows come on
  top rather than in place of base rows. An epoch is an epoch of `base`. Each epoch's extra rows run
  through shuffled copies of `extra` (order from ``(seed, epoch)`` only, so a resumed run gets the same
  rows); with ``len(extra) = ratio * len(base)``, every extra image is seen about once per epoch.
  """

  base: ArrayDataset
  extra: ArrayDataset
  ratio: float  # extra rows per base row in every batch

  def __post_init__(self):
    if self.base.class_names != self.extra.class_names:
      raise ValueError(f"class_names differ: {self.base.class_names} vs {self.extra.class_names}")
    if self.base.image_shape != self.extra.image_shape:
      raise ValueError(f"image shapes differ: {self.base.image_shape} vs {self.extra.image_shape}")
    if len(self.extra) == 0:
      raise ValueError("no extra rows to add")
    extra_rows_per_batch(self.ratio, 1)  # a positive ratio

  def __len__(self) -> int:
    return len(self.base)

  @property
  def labels(self) -> np.ndarray:
    return self.base.labels

  @property
  def class_names(self) -> tuple[str, ...]:
    return self.base.class_names

  @property
  def num_classes(self) -> int:
    return self.base.num_classes

  def epoch_batches(
    self,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    start_batch: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    multiple: int = 1,
  ) -> Iterator[dict[str, np.ndarray]]:
    """Training batches of one epoch (full batches only): `batch_size` base rows plus
    `extra_rows_per_batch(ratio, batch_size, multiple)` extra rows, this process's share of each."""
    extra = extra_rows_per_batch(self.ratio, batch_size, multiple)
    if extra % process_count:
      raise ValueError(f"{extra} extra rows per batch do not split over {process_count} processes")
    base = epoch_batches(
      self.base,
      batch_size,
      seed=seed,
      epoch=epoch,
      remainder="drop",
      start_batch=start_batch,
      process_index=process_index,
      process_count=process_count,
    )
    total = num_batches(len(self.base), batch_size, "drop")
    copies = math.ceil(total * extra / len(self.extra))
    # A stream of its own: (seed, epoch, 1) never equals the base order's (seed, epoch).
    rng = np.random.default_rng([_check_seed(seed), _check_seed(epoch, "epoch"), 1])
    order = np.concatenate([rng.permutation(len(self.extra)) for _ in range(copies)])
    local = extra // process_count
    for b, batch in enumerate(base, start=start_batch):
      rows = order[b * extra : (b + 1) * extra][process_index * local : (process_index + 1) * local]
      yield {
        "image": np.concatenate([batch["image"], self.extra.images[rows]]),
        "label": np.concatenate([batch["label"], self.extra.labels[rows].astype(np.int32)]),
        "mask": np.concatenate([batch["mask"], np.ones(local, bool)]),
        # Extra rows are not rows of the base dataset: -1, like padding.
        "index": np.concatenate([batch["index"], np.full(local, -1, np.int64)]),
      }
