"""Shared parts of the dataset builders: skip accounting, decoding with progress, grouped splits,
and `prepare`, which builds datasets and writes each one's build report."""

from __future__ import annotations

import collections
import contextvars
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence, Sized
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from vaeaug.data import grouping, sources
from vaeaug.data import images as image_io

REPORT_FILE = "build_report.json"

# progress(stage, done, total): per-file and per-example progress of `prepare`; total may be None.
Progress = Callable[[str, int, int | None], None]
# Set by `prepare` while it builds: builders report through `progress()` without taking a parameter.
_PROGRESS: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("vaeaug_build_progress", default=None)


class SkipLog:
  """Counts skipped files by problem and keeps a few examples of each, for the build summary."""

  def __init__(self, root: Path, max_examples: int = 5):
    self.root = Path(root)
    self.counts: collections.Counter[str] = collections.Counter()
    self.examples: dict[str, list[str]] = {}
    self.warnings: collections.Counter[str] = collections.Counter()
    self._max_examples = max_examples

  def add(self, path, problem: str, detail: str = "") -> None:
    self.counts[problem] += 1
    self.add_example(problem, path, detail)

  def warn(self, path, problem: str, detail: str = "") -> None:
    """Something odd that was handled without skipping (counted, shown in the summary)."""
    self.warnings[problem] += 1
    self.add_example(f"warning: {problem}", path, detail)

  def add_example(self, key: str, path, detail: str = "") -> None:
    shown = self.relative(path) + (f" ({detail})" if detail else "")
    examples = self.examples.setdefault(key, [])
    if len(examples) < self._max_examples:
      examples.append(shown)

  def relative(self, path) -> str:
    try:
      return Path(path).relative_to(self.root).as_posix()
    except ValueError:
      return str(path)

  def to_json(self) -> dict:
    return {
      "counts": dict(sorted(self.counts.items())),
      "warnings": dict(sorted(self.warnings.items())),
      "examples": dict(sorted(self.examples.items())),
    }


def list_folder_images(folder: Path, skips: SkipLog, *, required: bool = True) -> list[Path]:
  """Sorted image files of one class folder; other entries are counted skips.

  A missing folder, or (when `required`) one without any image, is an error: it means the
  download is incomplete or unpacked in the wrong place.
  """
  paths, skipped = image_io.list_images(folder)
  for path, reason in skipped:
    skips.add(path, reason)
  if required and not paths:
    raise image_io.BadInputError(folder, "no images in folder")
  return paths


def progress(items: Iterable, description: str):
  """`items`, each reported to the callback given to `prepare`, else with a tqdm bar."""
  if _PROGRESS.get() is None:
    return tqdm.tqdm(items, desc=description, unit="file", leave=False, mininterval=1.0)
  return _reported(items, description)


def _reported(items: Iterable, stage: str, total: int | None = None) -> Iterable:
  """`items`, each reported to the callback given to `prepare` (unchanged without one). The callback
  is looked up now, not when iteration starts: TFDS may consume split generators elsewhere."""
  report = _PROGRESS.get()
  if report is None:
    return items
  if total is None and isinstance(items, Sized):
    total = len(items)

  def reporting():
    report(stage, 0, total)
    for done, item in enumerate(items, 1):
      yield item
      report(stage, done, total)

  return reporting()


def decode_images(paths: Sequence[Path], skips: SkipLog, description: str) -> list[tuple[Path, np.ndarray]]:
  """Decode every file to RGB uint8, with a progress bar; undecodable files become counted skips."""
  decoded = []
  for path in progress(paths, description):
    try:
      decoded.append((path, image_io.load_rgb(path)))
    except image_io.BadInputError as error:
      skips.add(path, error.problem, error.detail)
  return decoded


def image_features(class_names: Sequence[str], **extra) -> tfds.features.FeaturesDict:
  """Features every builder shares; `extra` adds dataset-specific ones (box, photo, ...)."""
  return tfds.features.FeaturesDict(
    {
      # Images are given to TFDS as PNG bytes (encoded by PIL), so no TensorFlow is needed.
      "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
      "label": tfds.features.ClassLabel(names=list(class_names)),
      "file": tfds.features.Text(doc="source path relative to the dataset root"),
      "group": tfds.features.Text(doc="leakage group: near-duplicates share it (vaeaug.data.grouping)"),
      **extra,
    }
  )


@dataclasses.dataclass
class Report:
  """What a build produced and skipped; written as `build_report.json` beside the dataset."""

  dataset: str
  config: str
  version: str
  counts: dict[str, dict[str, int]]
  groups: int
  links: dict[str, int]
  skips: dict
  seconds: float | None = None
  notes: list[str] = dataclasses.field(default_factory=list)

  @property
  def total(self) -> int:
    return sum(sum(by_class.values()) for by_class in self.counts.values())

  def summary(self) -> str:
    lines = [
      f"{self.dataset}/{self.config} v{self.version}: {self.total} examples, {self.groups} groups"
      + (f", built in {self.seconds:.1f} s" if self.seconds is not None else "")
    ]
    for split, by_class in self.counts.items():
      parts = ", ".join(f"{name} {count}" for name, count in by_class.items())
      lines.append(f"  {split:<10} {sum(by_class.values()):>6}  ({parts})")
    if self.links:
      lines.append("  near-duplicate links: " + ", ".join(f"{k} {v}" for k, v in self.links.items()))
    skip_counts = self.skips.get("counts", {})
    if skip_counts:
      lines.append(f"  skipped {sum(skip_counts.values())}:")
      for problem, count in skip_counts.items():
        example = self.skips.get("examples", {}).get(problem, [""])[0]
        lines.append(f"    {count:>5}  {problem}  (e.g. {example})")
    else:
      lines.append("  skipped 0")
    for problem, count in self.skips.get("warnings", {}).items():
      example = self.skips.get("examples", {}).get(f"warning: {problem}", [""])[0]
      lines.append(f"  warning {count:>5}  {problem}  (e.g. {example})")
    lines.extend(f"  note: {note}" for note in self.notes)
    return "\n".join(lines)


def make_report(
  builder: tfds.core.DatasetBuilder,
  split_of: Sequence[str],
  labels: Sequence[int],
  class_names: Sequence[str],
  groups: Sequence[str],
  links: dict[str, int],
  skips: SkipLog,
) -> Report:
  counts = {}
  for split in grouping.SPLITS:
    by_class = collections.Counter(label for s, label in zip(split_of, labels) if s == split)
    counts[split] = {name: by_class.get(index, 0) for index, name in enumerate(class_names)}
  return Report(
    dataset=builder.name,
    config=builder.builder_config.name,
    version=str(builder.version),
    counts=counts,
    groups=len(set(groups)),
    links=links,
    skips=skips.to_json(),
  )


def split_generators(builder, examples: Sequence[dict], split_of: Sequence[str], generate: Callable):
  """{split: generator} for the builder, in the fixed split order.

  A split that receives no example (a small download) is left out: TFDS cannot write an empty
  split, and readers (e.g. the audit) skip absent splits. No example at all is an error.
  """
  if not examples:
    raise ValueError(
      f"{builder.name}/{builder.builder_config.name}: no usable examples "
      f"(every file was skipped, see the problems counted in the build log)"
    )
  by_split = {split: [] for split in grouping.SPLITS}
  for example, split in zip(examples, split_of):
    by_split[split].append(example)
  return {
    split: _reported(generate(items), f"writing {split}", len(items)) for split, items in by_split.items() if items
  }


def grouped_split_generators(
  builder,
  records: Sequence[dict],
  class_names: Sequence[str],
  skips: SkipLog,
  *,
  link_keys: Sequence[Sequence[str]] | None = None,
  fixed_splits: Sequence[str] | None = None,
  extra_fields: Sequence[str] = (),
):
  """Group decoded `records` (dicts with image, label, file and `extra_fields`), assign class-
  balanced grouped splits (or keep `fixed_splits`), record the build report and return the
  split generators."""
  labels = [record["label"] for record in records]
  report = _PROGRESS.get() or (lambda *_: None)
  report("grouping", 0, 1)  # one step: grouping has no per-image progress
  result = grouping.group_images([record["image"] for record in records], labels=labels, link_keys=link_keys)
  report("grouping", 1, 1)
  split_of = list(fixed_splits) if fixed_splits is not None else grouping.assign_splits(result.groups, labels)
  examples = [
    {
      "image": image_io.encode_png(record["image"]),
      "label": record["label"],
      "file": record["file"],
      "group": group,
      **{field: record[field] for field in extra_fields},
    }
    for record, group in _reported(zip(records, result.groups), "encoding", len(records))
  ]
  builder.report = make_report(builder, split_of, labels, class_names, result.groups, result.kind_counts(), skips)
  return split_generators(builder, examples, split_of, builder._generate_examples)


def builder_class(dataset: str):
  """The TFDS builder class of a dataset name (imports its module so it is registered)."""
  from vaeaug.data import face_mask12k, face_mask_detection, face_mask_observations  # noqa: F401

  classes = {
    "face_mask_detection": face_mask_detection.FaceMaskDetection,
    "face_mask12k": face_mask12k.FaceMask12k,
    "face_mask_observations": face_mask_observations.FaceMaskObservations,
  }
  if dataset not in classes:
    raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(classes)}")
  return classes[dataset]


def prepare(dataset: str, config: str, *, data_dir=None, raw_root=None, progress: Progress | None = None) -> Report:
  """Build one dataset config from the user's download (no-op when already built) and return its report.

  `progress(stage, done, total)`, when given, is called per file decoded and per example encoded and
  written, in stages (a class folder, "grouping", "encoding", "writing <split>"), instead of the
  builders' own tqdm bars.
  """
  cls = builder_class(dataset)
  data_dir = Path(data_dir).expanduser() if data_dir else sources.default_data_dir()
  builder = cls(config=config, data_dir=os.fspath(data_dir), file_format="array_record")
  report_path = Path(builder.data_dir) / REPORT_FILE
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  if builder.is_prepared():
    if report_path.is_file():
      return Report(**json.loads(report_path.read_text()))
    # Built without its report (by `tfds build`, or interrupted before the report was written):
    # TFDS would reuse the data and no report would exist, so rebuild it.
    mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
  manual_dir = sources.raw_dir(dataset, raw_root)
  notes = _older_builds(builder)
  start = time.perf_counter()
  token = _PROGRESS.set(progress)
  try:
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir), download_mode=mode)
    )
  finally:
    _PROGRESS.reset(token)
  report = builder.report
  report.seconds = round(time.perf_counter() - start, 1)
  report.notes = notes
  report_path = Path(builder.data_dir) / REPORT_FILE
  report_path.write_text(json.dumps(dataclasses.asdict(report), indent=1) + "\n")
  return report


def _older_builds(builder) -> list[str]:
  """Notes on other versions of this config found beside the one about to be built."""
  version_dir = Path(builder.data_dir)
  current = version_dir.name
  older = sorted(
    path.parent.name for path in version_dir.parent.glob("*/dataset_info.json") if path.parent.name != current
  )
  if not older:
    return []
  change = builder.RELEASE_NOTES.get(current, "")
  return [
    f"found an older build (version {', '.join(older)}) in {version_dir.parent}; built version {current} beside it"
    + (f" ({change})" if change else "")
    + "; the project reads only the new one"
  ]


def all_configs(dataset: str) -> list[str]:
  return [config.name for config in builder_class(dataset).BUILDER_CONFIGS]
