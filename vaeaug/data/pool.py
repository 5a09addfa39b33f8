"""An unlabeled face pool for generative models, leak-free against every validation and test split.

    pool = build_pool(image_size=64)        # Pool(dataset: ArrayDataset, report: dict)
    pool.dataset.images                     # uint8 (N, 64, 64, 3); labels all 0, class_names ("face",)
    pool.report["crossing_pairs_after_exclusion"]  # 0, verified on every build

Candidates are the training faces of the grouped configs of all three datasets (`POOL_SOURCES`).
A classifier of any study may be scored on any validation or test split of any config
(`HELD_OUT`), so a candidate is excluded when it shares a leakage group with any held-out image:

1. The project's grouping (`vaeaug.data.grouping`) runs over the union of all candidates and all
   held-out images: fingerprints of the stored images, `find_duplicate_pairs` with each dataset's
   link keys (`audit._RULES`: photo ids for detection, `Augmented_<N>` names for 12K), prefixed by
   the dataset so keys never collide across datasets. The masked-from-unmasked rule reads class
   labels (grouping is not training) and, as in the audit, applies only to the datasets whose
   rules enable it (12K, observations), in a second pass over those images.
2. A candidate whose connected component contains a held-out image is excluded (stronger than
   "has a direct pair"). The same image stored in two configs (12K official vs grouped, detection
   2classes vs 3classes) is an exact pair, so a training face of one config that is a test face of
   another is excluded.
3. Also dropped: blank candidates (near-constant, e.g. the all-black 12K files: no face, and the
   grouping never links them by content) and exact pixel duplicates within the pool (the first in
   pool order is kept).
4. Verification: `find_duplicate_pairs` is run again over the kept pool plus all held-out images;
   a pair between the two raises `RuntimeError` (the report's `crossing_pairs_after_exclusion`).

Order and content are deterministic: sources in `POOL_SOURCES` order, each split in stored order.
Pool `files` are `"<dataset>/<config>:<file>"` (detection adds `#<face_index>`: one photo has many
faces) and `groups` are the source groups prefixed the same way. Class labels of pool images are
never exposed (they are all 0, class "face").

Cache (under the pipeline's `<data_dir>/_vaeaug_cache`, like `pipeline.load_split`): a JSON file
with the report and the kept indices, keyed by the builders' versions, the fingerprints of the
built dataset files and the grouping parameters (independent of the image size), and an `.npz`
(allow_pickle=False) of the pool images per image size. A file that does not match its key or
cannot be read is reported with a `pipeline.CacheWarning` and rebuilt.

Measured on the shipped data (all five configs built at version 1.1.0; 2 CPU cores), `vaeaug-audit --pool`:

  | source                               | candidates | excluded |  kept | excluded because               |
  |--------------------------------------|-----------:|---------:|------:|--------------------------------|
  | face_mask12k/grouped:train           |       9434 |     3986 |  5448 | held-out 3947, dup 36, blank 3 |
  | face_mask_detection/3classes:train   |       3258 |       34 |  3224 | held-out 32, dup 2             |
  | face_mask_observations/grouped:train |       1101 |       97 |  1004 | dup 97                         |
  | total                                |      13793 |     4117 |  9676 |                                |

  The 3979 linked ones are in one group with a validation/test image, nearly all of the 12K
  *official* split (direct links: same-source 1854, exact 1463, aligned 94, near 14, mirror 8;
  indirect 546); the 32 detection faces are re-crops of 12K validation/test faces. 4481 pairs
  crossed before exclusion, 0 after (one re-check round), against 6029 held-out images. Build:
  about 3 minutes cold (three grouping passes over 19,822 images), seconds from the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vaeaug import fileio
from vaeaug.data import audit, grouping, pipeline, sources

__all__ = [
  "HELD_OUT",
  "POOL_SOURCES",
  "Example",
  "Pool",
  "Selection",
  "build_pool",
  "example_from_row",
  "format_report",
  "select_pool",
]

# Bump when the selection rules, the report or the cache layout change.
POOL_FORMAT_VERSION = 2
CLASS_NAMES = ("face",)

# (dataset, config, split) of the pool candidates.
POOL_SOURCES: tuple[tuple[str, str, str], ...] = (
  ("face_mask12k", "grouped", "train"),
  ("face_mask_detection", "3classes", "train"),  # train faces of all three classes; labels are dropped
  ("face_mask_observations", "grouped", "train"),
)
# Every config of every dataset (a test checks this against the builders).
ALL_CONFIGS: tuple[tuple[str, str], ...] = (
  ("face_mask12k", "official"),
  ("face_mask12k", "grouped"),
  ("face_mask_detection", "2classes"),
  ("face_mask_detection", "3classes"),
  ("face_mask_observations", "grouped"),
)
HELD_OUT: tuple[tuple[str, str, str], ...] = tuple(
  (dataset, config, split) for dataset, config in ALL_CONFIGS for split in ("validation", "test")
)

# Rounds of re-checking the kept pool against the held-out images (see `select_pool`).
_MAX_RECHECKS = 5
# Exclusion reasons, in the order they are checked.
LINKED, BLANK, DUPLICATE = "linked-to-held-out", "blank", "duplicate-in-pool"
INDIRECT = "indirect"  # linked to held-out only through other images
_KIND_RANK = {kind: rank for rank, kind in enumerate(grouping.KINDS)}


def source_name(dataset: str, config: str, split: str) -> str:
  return f"{dataset}/{config}:{split}"


@dataclasses.dataclass(frozen=True, eq=False)
class Example:
  """One stored image and what the grouping reads of it."""

  image: np.ndarray  # uint8 (H, W, 3), as stored
  dataset: str  # selects the link rules of `audit._RULES`
  source: str  # "dataset/config:split"
  file: str  # unique within its dataset config
  group: str
  label: str  # class name; read only by the masked-from-unmasked rule
  link_keys: tuple[str, ...] = ()  # prefixed by the dataset


def example_from_row(dataset: str, config: str, split: str, row: dict, class_names: Sequence[str]) -> Example:
  """An `Example` from a decoded TFDS row (as `audit.load_examples` returns them)."""
  _, keys_of = audit._RULES[dataset]
  file = str(row["file"])
  if "face_index" in row:  # detection: many faces per photo file
    file = f"{file}#{int(row['face_index'])}"
  return Example(
    image=np.asarray(row["image"]),
    dataset=dataset,
    source=source_name(dataset, config, split),
    file=file,
    group=str(row["group"]),
    label=str(class_names[int(row["label"])]),
    link_keys=tuple(f"{dataset}:{key}" for key in keys_of(row)),
  )


@dataclasses.dataclass(frozen=True)
class Selection:
  kept: np.ndarray  # int64 indices into the candidates, increasing
  report: dict


def _pairs(examples: Sequence[Example], fingerprints, params) -> dict[tuple[int, int], str]:
  """The audit's links over examples of several datasets: one pass without labels, then the
  masked-from-unmasked rule over the images of datasets that use it (kinds merged by priority)."""
  pairs = grouping.find_duplicate_pairs(fingerprints, None, [e.link_keys for e in examples], params)
  masked = [i for i, e in enumerate(examples) if audit._RULES[e.dataset][0]]
  if len(masked) > 1:
    vocabulary: dict[str, int] = {}
    labels = [vocabulary.setdefault(examples[i].label, len(vocabulary)) for i in masked]
    sub = grouping.find_duplicate_pairs(fingerprints.take(masked), labels, None, params)
    for (a, b), kind in sub.items():
      key = (masked[a], masked[b])  # masked is increasing, so still i < j
      if key not in pairs or _KIND_RANK[kind] < _KIND_RANK[pairs[key]]:
        pairs[key] = kind
  return pairs


def _counts(values) -> dict[str, int]:
  out: dict[str, int] = {}
  for value in values:
    out[value] = out.get(value, 0) + 1
  return dict(sorted(out.items()))


def select_pool(
  candidates: Sequence[Example],
  held_out: Sequence[Example],
  params: grouping.NearDuplicateParams = grouping.DEFAULT_PARAMS,
  *,
  fingerprints: grouping.Fingerprints | None = None,
) -> Selection:
  """Which candidates may join the pool (see the module docstring), and the report.

  `fingerprints`: of `[*candidates, *held_out]`, when already computed. Raises RuntimeError if a
  near-duplicate pair between the kept candidates and the held-out images survives.
  """
  examples = [*candidates, *held_out]
  n = len(candidates)
  if fingerprints is None:
    fingerprints = grouping.fingerprint([e.image for e in examples], params)
  if len(fingerprints) != len(examples):
    raise ValueError(f"{len(fingerprints)} fingerprints for {len(examples)} examples")
  pairs = _pairs(examples, fingerprints, params)
  components = grouping.connected_components(len(examples), pairs)
  held_components = set(components[n:].tolist())

  # Per candidate: the best direct link kind to a held-out image, and which held-out splits reach it.
  direct: dict[int, str] = {}
  crossing_before = 0
  for (i, j), kind in pairs.items():
    if i < n <= j:
      crossing_before += 1
      if i not in direct or _KIND_RANK[kind] < _KIND_RANK[direct[i]]:
        direct[i] = kind
  sources_of_component: dict[int, set[str]] = {}
  for e, component in zip(held_out, components[n:].tolist()):
    sources_of_component.setdefault(component, set()).add(e.source)

  reasons: list[str | None] = []
  first_of_sha: set[str] = set()
  for i in range(n):
    if int(components[i]) in held_components:
      reasons.append(LINKED)
    elif not fingerprints.informative[i]:
      reasons.append(BLANK)
    elif fingerprints.sha[i] in first_of_sha:
      reasons.append(DUPLICATE)
    else:
      first_of_sha.add(fingerprints.sha[i])
      reasons.append(None)
  kept = np.asarray([i for i, reason in enumerate(reasons) if reason is None], np.int64)
  # Held-out sources each excluded candidate's group reaches.
  reached_splits = {i: sources_of_component[int(components[i])] for i, reason in enumerate(reasons) if reason == LINKED}

  # Verification, independent of the components: the links between kept and held-out, recomputed.
  # The aligned rule's candidates depend on the image set (nearest signatures), so the smaller set
  # can show a link the full one did not: such candidates are excluded too, until none is left.
  rechecks = 0
  while True:
    check = [*kept.tolist(), *range(n, len(examples))]
    check_pairs = _pairs([examples[i] for i in check], fingerprints.take(check), params)
    crossing_after = sum(1 for i, j in check_pairs if i < len(kept) <= j)
    if not crossing_after:
      break
    rechecks += 1
    if rechecks > _MAX_RECHECKS:
      raise RuntimeError(
        f"face pool: {crossing_after} near-duplicate pairs remain between the pool and held-out images"
      )
    check_components = grouping.connected_components(len(check), check_pairs)
    reached_by: dict[int, set[str]] = {}
    for position in range(len(kept), len(check)):
      reached_by.setdefault(int(check_components[position]), set()).add(examples[check[position]].source)
    for position, candidate in enumerate(kept.tolist()):
      if int(check_components[position]) in reached_by:
        reasons[candidate] = LINKED
        reached_splits[candidate] = reached_by[int(check_components[position])]
    for (i, j), kind in check_pairs.items():
      if i < len(kept) <= j and _KIND_RANK[kind] < _KIND_RANK.get(direct.get(int(kept[i]), ""), len(_KIND_RANK)):
        direct[int(kept[i])] = kind
    kept = np.asarray([i for i, reason in enumerate(reasons) if reason is None], np.int64)

  linked = [i for i, reason in enumerate(reasons) if reason == LINKED]
  per_source: dict[str, dict] = {}
  for e, reason in zip(candidates, reasons):
    row = per_source.setdefault(e.source, {"candidates": 0, "excluded": 0, "kept": 0, "excluded_by_reason": {}})
    row["candidates"] += 1
    if reason is None:
      row["kept"] += 1
    else:
      row["excluded"] += 1
      row["excluded_by_reason"][reason] = row["excluded_by_reason"].get(reason, 0) + 1
  for row in per_source.values():
    row["excluded_by_reason"] = dict(sorted(row["excluded_by_reason"].items()))
  report = {
    "sources": per_source,
    "candidates": n,
    "excluded": n - len(kept),
    "kept": len(kept),
    "excluded_by_reason": _counts(reason for reason in reasons if reason is not None),
    # Kind of the candidate's strongest direct link to a held-out image; "indirect": via other images.
    "excluded_by_kind": _counts(direct.get(i, INDIRECT) for i in linked),
    # Candidates whose group reaches each held-out split (one candidate can count for several).
    "excluded_by_held_out_split": _counts(source for i in linked for source in reached_splits[i]),
    "held_out": _counts(e.source for e in held_out),
    "held_out_total": len(held_out),
    "pairs_by_kind": _counts(pairs.values()),
    "crossing_pairs_before_exclusion": crossing_before,
    "crossing_pairs_after_exclusion": crossing_after,
    "rechecks": rechecks,
    "notes": (
      "excluded: every candidate whose near-duplicate group (over candidates and held-out images) "
      "contains a validation/test image of any config; blank candidates; exact pixel duplicates within "
      "the pool (the first in pool order is kept)"
    ),
  }
  return Selection(kept=kept, report=report)


@dataclasses.dataclass(frozen=True)
class Pool:
  dataset: pipeline.ArrayDataset
  report: dict


# ----------------------------------------------------------------------------- loading and cache


def _open_all(data_dir) -> dict[tuple[str, str], dict]:
  """Data sources of every config the pool reads; one line naming every unbuilt one."""
  opened, failed = {}, []
  for dataset, config in ALL_CONFIGS:
    try:
      opened[dataset, config] = sources.data_source(f"{dataset}/{config}", data_dir=data_dir)
    except FileNotFoundError as error:
      failed.append((f"{dataset}/{config}", str(error)))
  if len(failed) == 1:
    raise ValueError(f"the face pool needs {failed[0][0]}: {failed[0][1]}")
  if failed:
    where = os.fspath(Path(data_dir).expanduser()) if data_dir is not None else os.fspath(sources.default_data_dir())
    datasets = ",".join(dict.fromkeys(name.split("/")[0] for name, _ in failed))
    raise ValueError(
      f"the face pool needs {', '.join(name for name, _ in failed)}, not built or unreadable in {where}: "
      f"build them with `vaeaug-prepare --datasets={datasets} --data_dir={where}`"
    )
  return opened


def _info(source: dict):
  return next(iter(source.values())).dataset_info


def _key(opened, params) -> dict:
  return {
    "format": POOL_FORMAT_VERSION,
    "sources": [list(s) for s in POOL_SOURCES],
    "held_out": [list(s) for s in HELD_OUT],
    "params": dataclasses.asdict(params),
    "datasets": {
      f"{dataset}/{config}": {
        "full_name": str(_info(source).full_name),
        "version": str(_info(source).version),
        "files": pipeline._fingerprint(_info(source)),  # the same staleness test as the split cache
      }
      for (dataset, config), source in opened.items()
    },
  }


def _digest(key: dict) -> str:
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _read_split(opened, dataset: str, config: str, split: str) -> list[Example]:
  source = opened[dataset, config]
  if split not in source:
    return []
  data = source[split]
  class_names = _info(source).features["label"].names
  rows = data.__getitems__(list(range(len(data))))
  return [
    example_from_row(
      dataset,
      config,
      split,
      {key: value.decode() if isinstance(value, bytes) else value for key, value in row.items()},
      class_names,
    )
    for row in rows
  ]


def _dataset(candidates: Sequence[Example], image_size: int) -> pipeline.ArrayDataset:
  # The resize of `pipeline.load_split` (bilinear, stretch), so pool and classifier inputs match.
  images = np.empty((len(candidates), image_size, image_size, 3), np.uint8)
  for index, e in enumerate(candidates):
    images[index] = pipeline.resize_image(e.image, image_size)
  prefix = [e.source.rpartition(":")[0] for e in candidates]
  return pipeline.ArrayDataset(
    images=images,
    labels=np.zeros(len(candidates), np.int32),
    files=[f"{p}:{e.file}" for p, e in zip(prefix, candidates)],
    groups=[f"{p}:{e.group}" for p, e in zip(prefix, candidates)],
    class_names=CLASS_NAMES,
    name="face_pool",
  )


def _load_report(path: Path, key: dict) -> tuple[dict, dict[str, list[int]]]:
  stored = json.loads(path.read_text(encoding="utf-8"))
  if stored.get("key") != json.loads(json.dumps(key, sort_keys=True)):
    raise ValueError("cache key does not match")
  report, kept = stored["report"], stored["kept"]
  if sorted(kept) != sorted(source_name(*s) for s in POOL_SOURCES):
    raise ValueError("kept indices of other sources")
  if report["crossing_pairs_after_exclusion"] != 0 or sum(len(v) for v in kept.values()) != report["kept"]:
    raise ValueError("inconsistent report")
  return report, kept


def _load_images(path: Path, key: dict, report: dict, image_size: int) -> pipeline.ArrayDataset:
  with np.load(path, allow_pickle=False) as z:
    if json.loads(str(z["key"][()])) != json.loads(json.dumps(key, sort_keys=True)):
      raise ValueError("cache key does not match")
    images, files, groups = z["images"], z["files"], z["groups"]
  if images.shape != (report["kept"], image_size, image_size, 3) or images.dtype != np.uint8:
    raise ValueError(f"images of shape {images.shape} {images.dtype}, expected {report['kept']} at {image_size}")
  return pipeline.ArrayDataset(
    images=images,
    labels=np.zeros(len(images), np.int32),
    files=files,
    groups=groups,
    class_names=CLASS_NAMES,
    name="face_pool",
  )


def _warn(path: Path, error: Exception) -> None:
  warnings.warn(
    f"ignoring unreadable cache file {path} ({type(error).__name__}: {error}); rebuilding it",
    pipeline.CacheWarning,
    stacklevel=3,
  )


def _write(path: Path, write) -> None:
  try:
    fileio.atomic_write(path, write)
  except OSError as error:  # a read-only data dir still gets its pool, only slower next time
    warnings.warn(f"could not write cache file {path}: {error}", pipeline.CacheWarning, stacklevel=3)


def build_pool(
  data_dir: str | os.PathLike | None = None,
  image_size: int = 64,
  *,
  cache: bool = True,
  params: grouping.NearDuplicateParams = grouping.DEFAULT_PARAMS,
) -> Pool:
  """The leak-free unlabeled face pool at `image_size` (see the module docstring).

  All five dataset configs must be built in `data_dir` (default $TFDS_DATA_DIR or
  ~/tensorflow_datasets); a missing one is a one-line ValueError saying how to build it.
  """
  if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
    raise ValueError(f"image_size must be a positive int, got {image_size!r}")
  image_size = int(image_size)
  start = time.perf_counter()
  opened = _open_all(data_dir)
  key = _key(opened, params)
  images_key = {**key, "image_size": image_size}
  root = (Path(data_dir).expanduser() if data_dir is not None else sources.default_data_dir()) / pipeline.CACHE_DIRNAME
  report_path = root / f"face_pool_{_digest(key)}.json"
  images_path = root / f"face_pool_{image_size}_{_digest(images_key)}.npz"

  report = kept = None
  if cache and report_path.exists():
    try:
      report, kept = _load_report(report_path, key)
    except Exception as error:  # corrupt, truncated or stale: rebuilt below
      _warn(report_path, error)
  if report is not None and images_path.exists():
    try:
      return Pool(_load_images(images_path, images_key, report, image_size), {**report, "image_size": image_size})
    except Exception as error:
      _warn(images_path, error)

  candidates_by_source = {source_name(*s): _read_split(opened, *s) for s in POOL_SOURCES}
  if report is not None and any(
    max(kept[name], default=-1) >= len(examples) or min(kept[name], default=0) < 0
    for name, examples in candidates_by_source.items()
  ):
    _warn(report_path, ValueError("kept indices out of range"))
    report = None
  if report is None:
    candidates = [e for examples in candidates_by_source.values() for e in examples]
    held_out = [e for s in HELD_OUT for e in _read_split(opened, *s)]
    selection = select_pool(candidates, held_out, params)
    report = {**selection.report, "build_seconds": round(time.perf_counter() - start, 1)}
    kept, offset = {}, 0
    for name, examples in candidates_by_source.items():
      in_source = selection.kept[(selection.kept >= offset) & (selection.kept < offset + len(examples))]
      kept[name] = (in_source - offset).tolist()
      offset += len(examples)
    if cache:
      text = json.dumps({"key": key, "report": report, "kept": kept}, sort_keys=True)
      _write(report_path, lambda f: f.write(text.encode()))
  chosen = [candidates_by_source[name][i] for name in candidates_by_source for i in kept[name]]
  dataset = _dataset(chosen, image_size)
  if cache:
    arrays = {
      "images": dataset.images,
      "files": np.asarray(dataset.files, str),
      "groups": np.asarray(dataset.groups, str),
      "key": np.asarray(json.dumps(images_key, sort_keys=True), str),
    }
    _write(images_path, lambda f: np.savez(f, allow_pickle=False, **arrays))
  return Pool(dataset, {**report, "image_size": image_size})


def format_report(report: dict) -> str:
  """The report as text, for `vaeaug-audit --pool`."""
  lines = [
    f"Face pool at {report.get('image_size', '?')} px: {report['candidates']} candidates, "
    f"{report['excluded']} excluded, {report['kept']} kept",
  ]
  width = max(len(name) for name in report["sources"])
  for name, row in report["sources"].items():
    reasons = ", ".join(f"{reason} {count}" for reason, count in row["excluded_by_reason"].items())
    lines.append(
      f"  {name:<{width}}  {row['candidates']:>6} candidates  {row['excluded']:>5} excluded  {row['kept']:>6} kept"
      + (f"  ({reasons})" if reasons else "")
    )
  lines.append("  excluded by reason: " + ", ".join(f"{k} {v}" for k, v in report["excluded_by_reason"].items()))
  if report["excluded_by_kind"]:
    lines.append("  linked to held-out by: " + ", ".join(f"{k} {v}" for k, v in report["excluded_by_kind"].items()))
  for name, count in report["excluded_by_held_out_split"].items():
    lines.append(f"    in a group with {name}: {count}")
  lines.append(
    f"  held-out images checked: {report['held_out_total']} ({len(report['held_out'])} validation/test splits)"
  )
  lines.append(
    "  near-duplicate pairs between the pool and any validation/test image: "
    f"{report['crossing_pairs_before_exclusion']} before exclusion, {report['crossing_pairs_after_exclusion']} after"
  )
  return "\n".join(lines)


def split_by_group(
  dataset: pipeline.ArrayDataset, fraction: float
) -> tuple[pipeline.ArrayDataset, pipeline.ArrayDataset]:
  """(training part, held-out part) of the pool: whole groups held out by a hash of the group id, so a
  held-out image never has a near-duplicate in the training part; about `fraction` of the images."""
  if not 0 < fraction < 1:
    raise ValueError(f"pool_validation_fraction must be in (0, 1), got {fraction!r}")
  buckets = np.asarray(
    [int.from_bytes(hashlib.sha256(f"pool-holdout:{group}".encode()).digest()[:8], "big") for group in dataset.groups]
  )
  held = buckets < fraction * 2.0**64
  return dataset.take(np.flatnonzero(~held)), dataset.take(np.flatnonzero(held))


def pool_splits(data_dir, image_size: int, fraction: float = 0.05):
  """(train, validation) of the unlabeled pool at `image_size` (`build_pool`, then `split_by_group`): what
  a generator pretrained on the pool trains on and stops early on."""
  return split_by_group(build_pool(data_dir, image_size).dataset, fraction)
