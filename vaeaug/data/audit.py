"""Leak audit: exact and near-duplicate pairs that cross the splits of a built dataset.

The audit recomputes links from the stored pixels with the same rules the builders use
(`vaeaug.data.grouping.find_duplicate_pairs` plus each dataset's name/photo rules), so on a
`grouped` config it must find nothing, and on the 12K `official` split it shows the leak. For the
detection dataset it also compares the whole photos (`grouping.PHOTO_PARAMS`), read from the
download, since bursts of one scene are found there and not in the face crops; pairs of photos
count as "photo <kind>". Every link is counted by the rule that made it (`links_by_kind`: what each
signal adds to the others).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Callable

from vaeaug.data import face_mask12k, face_mask_detection, grouping, sources
from vaeaug.data import images as image_io

# dataset -> (whether the masked-from-unmasked rule applies, name/photo link keys of an example)
_RULES: dict[str, tuple[bool, Callable[[dict], list[str]]]] = {
  "face_mask12k": (True, lambda example: face_mask12k.link_keys(example["file"])),
  "face_mask_observations": (True, lambda example: []),
  "face_mask_detection": (False, lambda example: face_mask_detection.link_keys(example["photo"])),
}


@dataclasses.dataclass
class AuditResult:
  dataset: str
  config: str
  split_sizes: dict[str, int]
  cross_split_pairs: int
  pairs_by_split_pair: dict[str, int]
  pairs_by_kind: dict[str, int]
  images_with_train_sibling: dict[str, int]
  images_in_group_with_train: dict[str, int]
  examples: dict[str, list[tuple[str, str, str]]]
  links_by_kind: dict[str, int]
  photo_check: str = ""  # detection: how many photos were compared, or why not

  def to_json(self) -> dict:
    return {
      "dataset": self.dataset,
      "config": self.config,
      "cross_split_pairs": self.cross_split_pairs,
      "images_with_train_sibling": self.images_with_train_sibling,
      "images_in_group_with_train": self.images_in_group_with_train,
      "pairs_by_split_pair": self.pairs_by_split_pair,
      "pairs_by_kind": self.pairs_by_kind,
      "links_by_kind": self.links_by_kind,
      "photo_check": self.photo_check,
      "split_sizes": self.split_sizes,
    }

  def report(self) -> str:
    lines = [
      f"Leak audit of {self.dataset}/{self.config} ({', '.join(f'{s} {n}' for s, n in self.split_sizes.items())})",
      f"  pairs crossing splits: {self.cross_split_pairs}",
    ]
    for split_pair, count in self.pairs_by_split_pair.items():
      lines.append(f"    {split_pair:<22} {count}")
    if self.pairs_by_kind:
      lines.append("  by kind: " + ", ".join(f"{k} {v}" for k, v in self.pairs_by_kind.items()))
    lines.append("  links by the rule that made them (all pairs): " + _counts_text(self.links_by_kind))
    if self.photo_check:
      lines.append(f"  photos: {self.photo_check}")
    for split, count in self.images_with_train_sibling.items():
      size = self.split_sizes.get(split, 0)
      share = f" ({100 * count / size:.1f}%)" if size else ""
      lines.append(
        f"  {split} images with a near-duplicate in train: {count}{share}; "
        f"in a group reaching train: {self.images_in_group_with_train.get(split, 0)}"
      )
    for split_pair, rows in self.examples.items():
      lines.append(f"  e.g. {split_pair}:")
      lines.extend(f"    [{kind}] {a}  <->  {b}" for a, b, kind in rows)
    return "\n".join(lines)


def _counts_text(counts: dict[str, int]) -> str:
  return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def _photo_pairs(dataset: str, rows, raw_root) -> tuple[list[tuple[int, int, str]], str]:
  """Detection only: (face index, face index, "photo <kind>") for a face of each pair of linked
  photos, and what was checked (or why the photos could not be read)."""
  if dataset != "face_mask_detection":
    return [], ""
  first_face: dict[str, int] = {}
  for index, (_, example) in enumerate(rows):
    first_face.setdefault(example["photo"], index)
  photos = sorted(first_face)
  try:
    folder = sources.raw_dir(dataset, raw_root)
    images = [image_io.load_rgb(folder / photo) for photo in photos]
  except (FileNotFoundError, image_io.BadInputError) as error:
    return [], f"not compared ({error}); pass --raw_dir to include the photo-level check"
  fingerprints = grouping.fingerprint(images, grouping.PHOTO_PARAMS)
  pairs = grouping.find_duplicate_pairs(fingerprints, params=grouping.PHOTO_PARAMS)
  linked = [(first_face[photos[a]], first_face[photos[b]], f"photo {kind}") for (a, b), kind in sorted(pairs.items())]
  return linked, f"{len(photos)} photos compared from {folder}, {len(pairs)} linked pairs"


def load_examples(dataset: str, config: str, data_dir=None) -> dict[str, list[dict]]:
  """All examples of every split of a built dataset, as dicts of numpy values / str."""
  source = sources.data_source(f"{dataset}/{config}", data_dir=data_dir)
  examples = {}
  for split in grouping.SPLITS:
    if split not in source:
      continue
    rows = source[split].__getitems__(list(range(len(source[split]))))
    examples[split] = [
      {key: value.decode() if isinstance(value, bytes) else value for key, value in row.items()} for row in rows
    ]
  return examples


def audit(dataset: str, config: str, data_dir=None, max_examples: int = 5, raw_dir=None) -> AuditResult:
  if dataset not in _RULES:
    raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(_RULES)}")
  use_labels, keys_of = _RULES[dataset]
  by_split = load_examples(dataset, config, data_dir)
  rows = [(split, example) for split, examples in by_split.items() for example in examples]
  splits = [split for split, _ in rows]
  fingerprints = grouping.fingerprint([example["image"] for _, example in rows])
  pairs = grouping.find_duplicate_pairs(
    fingerprints,
    labels=[int(example["label"]) for _, example in rows] if use_labels else None,
    link_keys=[keys_of(example) for _, example in rows],
  )

  photo_links, photo_check = _photo_pairs(dataset, rows, raw_dir)
  for a, b, kind in photo_links:
    pairs.setdefault((min(a, b), max(a, b)), kind)
  links_by_kind = dict(sorted(collections.Counter(pairs.values()).items()))

  order = {split: index for index, split in enumerate(grouping.SPLITS)}
  by_split_pair: collections.Counter[str] = collections.Counter()
  by_kind: collections.Counter[str] = collections.Counter()
  examples: dict[str, list] = {}
  with_train_sibling: dict[str, set[int]] = {split: set() for split in grouping.SPLITS[1:]}
  for (i, j), kind in sorted(pairs.items()):
    if splits[i] == splits[j]:
      continue
    a, b = sorted((i, j), key=lambda k: order[splits[k]])
    split_pair = f"{splits[a]}-{splits[b]}"
    by_split_pair[split_pair] += 1
    by_kind[kind] += 1
    shown = examples.setdefault(split_pair, [])
    if len(shown) < max_examples:
      shown.append((rows[a][1]["file"], rows[b][1]["file"], kind))
    if splits[a] == "train":
      with_train_sibling[splits[b]].add(b)
  split_pairs = [f"{a}-{b}" for a, b in itertools.combinations(by_split, 2)]
  components = grouping.connected_components(len(rows), pairs)
  train_components = {c for c, split in zip(components.tolist(), splits) if split == "train"}
  in_group_with_train = collections.Counter(
    split for c, split in zip(components.tolist(), splits) if split != "train" and c in train_components
  )
  return AuditResult(
    dataset=dataset,
    config=config,
    split_sizes={split: len(examples_) for split, examples_ in by_split.items()},
    cross_split_pairs=sum(by_split_pair.values()),
    pairs_by_split_pair={pair: by_split_pair.get(pair, 0) for pair in split_pairs},
    pairs_by_kind=dict(sorted(by_kind.items())),
    images_with_train_sibling={split: len(members) for split, members in with_train_sibling.items()},
    images_in_group_with_train={split: in_group_with_train.get(split, 0) for split in with_train_sibling},
    examples=examples,
    links_by_kind=links_by_kind,
    photo_check=photo_check,
  )
