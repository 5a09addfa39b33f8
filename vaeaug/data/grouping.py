"""Duplicate and near-duplicate groups, and deterministic leak-free splits.

The public face-mask datasets leak: the same photo appears re-encoded or resized, mirrored
(`augmented_image_*`), augmented (`Augmented_<N>_*` in the 12K set) or with a mask pasted on
(the observations set). Any such pair must land in one split, so the builders link images into
groups and assign whole groups to splits. The audit (`vaeaug.data.audit`) reuses
`find_duplicate_pairs` to count pairs that cross the splits of a built dataset.

Near-duplicate method (measured on the shipped data, see `scripts/audit_data.py`):

1. Exact duplicates: equal SHA-256 of the decoded pixels (and shape).
2. Candidates: a 128-bit difference hash (dHash, 8x9 horizontal + 9x8 vertical gradients of a
   box-filtered grayscale thumbnail) is computed for each image, its mirror image, and its top
   part. Pairs within `hash_candidate_bits` (24 of 128) Hamming distance become candidates; this
   is only a cheap filter, the decision is step 3.
3. Verification: the mean absolute difference (MAD) between 24x24 grayscale thumbnails, each
   standardised to zero mean and unit variance (so brightness/contrast changes and JPEG
   re-encoding do not matter), must be <= `near_mad` (0.20). On the 12K set, pairs below 0.2
   are re-encodes and resizes of one photo, while different CelebA faces start at about 0.25.
   Mirrored pairs compare against the mirrored thumbnail with the same threshold.
4. Masked-from-unmasked: a face with a pasted mask differs from its source only below the eyes,
   so the top `top_fraction` (45%) of the two images is compared with threshold `masked_mad`
   (0.25). This rule only links images of *different* labels: applied within a class it would
   chain look-alike aligned faces into giant groups.
5. Name rules given by the builder (e.g. `Augmented_<N>_*` of one source photo in the 12K set)
   and photo ids (all faces cropped from one photo) link images directly.

Blank images (grayscale std < `blank_std`, e.g. the all-black files in the 12K set) are not
linked by content: they carry no identity, and linking them would chain unrelated photos into one
group. Name rules still apply to them.

Groups are the connected components of all links. A group's id is derived from its members'
pixel hashes and its split from a hash of that id, so splits do not depend on file order, file
names or the machine, and adding an unrelated image does not move any other group.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from vaeaug.data import images as image_io

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class NearDuplicateParams:
  hash_candidate_bits: int = 24
  near_mad: float = 0.20
  masked_mad: float = 0.25
  top_fraction: float = 0.45
  thumb_size: int = 24
  blank_std: float = 2.0


DEFAULT_PARAMS = NearDuplicateParams()

# Link kinds, in the order a pair is reported when several apply.
EXACT, NEAR, MIRROR, MASKED, NAME = "exact", "near", "mirror", "masked-from-unmasked", "same-source"


def _gray(image: np.ndarray) -> np.ndarray:
  image = image.astype(np.float32)
  return image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114


def _resize(gray: np.ndarray, width: int, height: int) -> np.ndarray:
  return np.asarray(
    Image.fromarray(np.ascontiguousarray(gray, np.float32)).resize((width, height), Image.BOX), np.float32
  )


def _dhash(gray: np.ndarray) -> np.ndarray:
  horizontal = _resize(gray, 9, 8)
  vertical = _resize(gray, 8, 9)
  bits = np.concatenate(
    [(horizontal[:, 1:] > horizontal[:, :-1]).ravel(), (vertical[1:, :] > vertical[:-1, :]).ravel()]
  )
  return np.packbits(bits)


def _thumb(gray: np.ndarray, size: int) -> np.ndarray:
  thumb = _resize(gray, size, size)
  return (thumb - thumb.mean()) / (thumb.std() + 1e-3)


@dataclasses.dataclass(frozen=True)
class Fingerprints:
  """Per-image hashes and thumbnails used to find duplicates (arrays indexed like the images)."""

  sha: tuple[str, ...]
  hashes: np.ndarray  # (n, 16) uint8 packed dHash of the image
  mirror_hashes: np.ndarray  # of the horizontally mirrored image
  top_hashes: np.ndarray  # of the top part (eyes and forehead)
  thumbs: np.ndarray  # (n, s, s) standardised grayscale thumbnails
  top_thumbs: np.ndarray
  informative: np.ndarray  # (n,) bool: False for blank (near-constant) images

  def __len__(self) -> int:
    return len(self.sha)


def fingerprint(images: Sequence[np.ndarray], params: NearDuplicateParams = DEFAULT_PARAMS) -> Fingerprints:
  sha, hashes, mirror_hashes, top_hashes, thumbs, top_thumbs, informative = [], [], [], [], [], [], []
  for image in images:
    gray = _gray(image)
    informative.append(float(gray.std()) >= params.blank_std)
    top = gray[: max(1, int(round(gray.shape[0] * params.top_fraction)))]
    sha.append(image_io.sha256_of_pixels(image))
    hashes.append(_dhash(gray))
    mirror_hashes.append(_dhash(gray[:, ::-1]))
    top_hashes.append(_dhash(top))
    thumbs.append(_thumb(gray, params.thumb_size))
    top_thumbs.append(_thumb(top, params.thumb_size))
  size = params.thumb_size
  as_array = lambda rows, shape, dtype: np.asarray(rows, dtype).reshape((len(rows),) + shape)
  return Fingerprints(
    sha=tuple(sha),
    hashes=as_array(hashes, (16,), np.uint8),
    mirror_hashes=as_array(mirror_hashes, (16,), np.uint8),
    top_hashes=as_array(top_hashes, (16,), np.uint8),
    thumbs=as_array(thumbs, (size, size), np.float32),
    top_thumbs=as_array(top_thumbs, (size, size), np.float32),
    informative=np.asarray(informative, bool).reshape(len(informative)),
  )


def _hash_candidates(a: np.ndarray, b: np.ndarray, max_bits: int, chunk: int = 2048):
  """Index pairs (i, j), i < j, whose packed hashes a[i], b[j] differ in <= max_bits bits."""
  a_words = np.ascontiguousarray(a).view(np.uint64)  # 16 bytes -> 2 words: 2 popcounts per pair
  b_words = np.ascontiguousarray(b).view(np.uint64)
  rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
  for start in range(0, len(a_words), chunk):
    block = a_words[start : start + chunk]
    distance = np.bitwise_count(block[:, None, 0] ^ b_words[None, :, 0]).astype(np.int32)
    for word in range(1, a_words.shape[1]):
      distance += np.bitwise_count(block[:, None, word] ^ b_words[None, :, word])
    i, j = np.nonzero(distance <= max_bits)
    i = i + start
    keep = i < j
    rows.append(i[keep])
    cols.append(j[keep])
  return np.concatenate(rows), np.concatenate(cols)


def _mad(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return np.abs(a - b).mean(axis=(1, 2))


def find_duplicate_pairs(
  fingerprints: Fingerprints,
  labels: Sequence[int] | None = None,
  link_keys: Sequence[Sequence[str]] | None = None,
  params: NearDuplicateParams = DEFAULT_PARAMS,
) -> dict[tuple[int, int], str]:
  """All linked pairs {(i, j): kind} with i < j.

  `labels` enables the masked-from-unmasked rule (different labels only). `link_keys[i]` are
  strings such as a photo id or a source name: images sharing a key are linked ("same-source").
  """
  pairs: dict[tuple[int, int], str] = {}

  informative = fingerprints.informative

  def add(i, j, kind, by_content=True):
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    if by_content:
      keep = informative[i] & informative[j]
      i, j = i[keep], j[keep]
    for a, b in zip(i.tolist(), j.tolist()):
      key = (a, b) if a < b else (b, a)
      if a != b and key not in pairs:
        pairs[key] = kind

  by_sha: dict[str, list[int]] = {}
  for index, sha in enumerate(fingerprints.sha):
    by_sha.setdefault(sha, []).append(index)
  for members in by_sha.values():
    _add_clique(add, members, EXACT)

  i, j = _hash_candidates(fingerprints.hashes, fingerprints.hashes, params.hash_candidate_bits)
  keep = _mad(fingerprints.thumbs[i], fingerprints.thumbs[j]) <= params.near_mad
  add(i[keep], j[keep], NEAR)

  # Mirror: image i against the mirror of image j (the candidate filter is not symmetric).
  i, j = _hash_candidates(fingerprints.hashes, fingerprints.mirror_hashes, params.hash_candidate_bits)
  i2, j2 = _hash_candidates(fingerprints.mirror_hashes, fingerprints.hashes, params.hash_candidate_bits)
  i, j = np.concatenate([i, i2]), np.concatenate([j, j2])
  keep = _mad(fingerprints.thumbs[i], fingerprints.thumbs[j][:, :, ::-1]) <= params.near_mad
  add(i[keep], j[keep], MIRROR)

  if labels is not None:
    labels = np.asarray(labels)
    i, j = _hash_candidates(fingerprints.top_hashes, fingerprints.top_hashes, params.hash_candidate_bits)
    cross = labels[i] != labels[j]
    i, j = i[cross], j[cross]
    keep = _mad(fingerprints.top_thumbs[i], fingerprints.top_thumbs[j]) <= params.masked_mad
    add(i[keep], j[keep], MASKED)

  if link_keys is not None:
    by_key: dict[str, list[int]] = {}
    for index, keys in enumerate(link_keys):
      for key in keys:
        by_key.setdefault(key, []).append(index)
    for members in by_key.values():
      _add_clique(add, members, NAME, by_content=False)
  return pairs


def _add_clique(add, members: list[int], kind: str, **kwargs) -> None:
  # Every pair, not a chain: the audit counts pairs and direct siblings across splits.
  if len(members) > 1:
    i, j = np.triu_indices(len(members), 1)
    members = np.asarray(members)
    add(members[i], members[j], kind, **kwargs)


def connected_components(n: int, pairs) -> np.ndarray:
  """Component index per item (union-find over the pairs); components numbered by first member."""
  parent = list(range(n))

  def find(x):
    while parent[x] != x:
      parent[x] = parent[parent[x]]
      x = parent[x]
    return x

  for a, b in pairs:
    root_a, root_b = find(a), find(b)
    if root_a != root_b:
      parent[max(root_a, root_b)] = min(root_a, root_b)
  roots = [find(x) for x in range(n)]
  numbering: dict[int, int] = {}
  return np.asarray([numbering.setdefault(root, len(numbering)) for root in roots], np.int64)


def group_ids(
  content_keys: Sequence[str], components: np.ndarray, informative: Sequence[bool] | None = None
) -> list[str]:
  """A stable id per item: the smallest content key (pixel hash) in its component, shortened.

  With `informative`, blank members are only used when the component has no informative one: a
  blank image (e.g. all black) can sit in several name-linked components, and taking its hash
  as their id would merge those unrelated components into one group.
  """
  informative = [True] * len(content_keys) if informative is None else [bool(x) for x in informative]
  smallest: dict[int, tuple[bool, str]] = {}
  for key, component, useful in zip(content_keys, components.tolist(), informative):
    rank = (not useful, key)  # informative members first, then by key
    if component not in smallest or rank < smallest[component]:
      smallest[component] = rank
  return ["g" + smallest[component][1][:20] for component in components.tolist()]


def assign_split(group_id: str, fractions: Sequence[float] = (0.8, 0.1, 0.1), salt: str = "vaeaug-v1") -> str:
  """Deterministic split of a group from a hash of its id: same answer on every machine and order."""
  if len(fractions) != len(SPLITS) or abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
    raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, got {tuple(fractions)}")
  value = int.from_bytes(hashlib.sha256(f"{salt}:{group_id}".encode()).digest()[:8], "big") / 2.0**64
  cumulative = 0.0
  for split, fraction in zip(SPLITS, fractions):
    cumulative += fraction
    if value < cumulative:
      return split
  return SPLITS[-1]


def assign_splits(
  groups: Sequence[str], labels: Sequence[int], fractions: Sequence[float] = (0.8, 0.1, 0.1), salt: str = "vaeaug-v1"
) -> list[str]:
  """Split of every example such that whole groups go to one split and each class is divided
  close to `fractions` (hashing groups alone gives lumpy splits when a few groups are large,
  e.g. a crowd photo with 100 faces).

  Groups are placed largest first (ties in a hash order of their ids), each into the split whose
  per-class shortfall against its target is largest for the group's classes. The result depends
  only on the set of (group, label) pairs: not on file order, file names or the machine. Unlike
  `assign_split`, adding images can move other groups.
  """
  if len(fractions) != len(SPLITS) or abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
    raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, got {tuple(fractions)}")
  labels = np.asarray(labels, np.int64)
  if len(groups) != len(labels):
    raise ValueError(f"{len(groups)} groups for {len(labels)} labels")
  if len(labels) == 0:
    return []
  num_classes = int(labels.max()) + 1
  counts: dict[str, np.ndarray] = {}
  for group, label in zip(groups, labels.tolist()):
    counts.setdefault(group, np.zeros(num_classes, np.int64))[label] += 1
  class_totals = np.maximum(sum(counts.values()), 1).astype(np.float64)
  targets = np.asarray(fractions, np.float64)[:, None] * class_totals[None, :]
  assigned = np.zeros((len(SPLITS), num_classes), np.float64)

  def order(group):
    return (-int(counts[group].sum()), hashlib.sha256(f"{salt}:{group}".encode()).hexdigest())

  split_of_group = {}
  for group in sorted(counts, key=order):
    shortfall = ((targets - assigned) / class_totals) @ counts[group]
    index = int(np.argmax(shortfall))  # ties: the first split
    assigned[index] += counts[group]
    split_of_group[group] = SPLITS[index]
  return [split_of_group[group] for group in groups]


@dataclasses.dataclass(frozen=True)
class Grouping:
  groups: list[str]
  pairs: dict[tuple[int, int], str]

  def kind_counts(self) -> dict[str, int]:
    counts: dict[str, int] = {}
    for kind in self.pairs.values():
      counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def group_images(
  images: Sequence[np.ndarray],
  labels: Sequence[int] | None = None,
  link_keys: Sequence[Sequence[str]] | None = None,
  params: NearDuplicateParams = DEFAULT_PARAMS,
) -> Grouping:
  """Leakage group id of every image (see the module docstring for the rules)."""
  fingerprints = fingerprint(images, params)
  pairs = find_duplicate_pairs(fingerprints, labels, link_keys, params)
  components = connected_components(len(images), pairs)
  return Grouping(group_ids(fingerprints.sha, components, fingerprints.informative), pairs)
