"""Unit tests for vaeaug.data.grouping on images the tests make (no real data, a few seconds)."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from conftest import encode, smooth_image
from PIL import Image

from vaeaug.data import grouping
from vaeaug.data.grouping import EXACT, MASKED, MIRROR, NAME, NEAR
from vaeaug.data.images import sha256_of_pixels

MASK_COLOUR = (40, 90, 200)


def jpeg(image: np.ndarray, quality: int = 70) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(encode(image, "JPEG", quality=quality))).convert("RGB"))


def resized(image: np.ndarray, size: int) -> np.ndarray:
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def with_mask(image: np.ndarray, start: float = 0.5) -> np.ndarray:
  """A solid 'mask' rectangle pasted over the image from `start` of its height down."""
  out = image.copy()
  out[int(round(image.shape[0] * start)) :, :] = MASK_COLOUR
  return out


def pairs_of(images, labels=None, link_keys=None):
  return grouping.find_duplicate_pairs(grouping.fingerprint(images), labels=labels, link_keys=link_keys)


@pytest.fixture(scope="module")
def face():
  return smooth_image(seed=1, size=56)


@pytest.fixture(scope="module")
def strangers():
  """Unrelated smooth images (no two of them are near-duplicates)."""
  return [smooth_image(seed, size=56) for seed in range(100, 140)]


# ----------------------------------------------------------------------------- content links


def test_exact_copy_is_exact(face):
  assert pairs_of([face, face.copy()]) == {(0, 1): EXACT}


@pytest.mark.parametrize("variant", ["jpeg70", "jpeg40", "resize64", "resize48", "brighter"])
def test_reencode_resize_and_brightness_are_near_duplicates(face, variant):
  other = {
    "jpeg70": lambda: jpeg(face, 70),
    "jpeg40": lambda: jpeg(face, 40),
    "resize64": lambda: resized(face, 64),
    "resize48": lambda: resized(face, 48),
    "brighter": lambda: np.clip(face.astype(np.int32) * 0.8 + 30, 0, 255).astype(np.uint8),
  }[variant]()
  assert not np.array_equal(other, face)
  assert pairs_of([face, other]) == {(0, 1): NEAR}


def test_near_duplicate_of_a_resized_jpeg(face):
  assert pairs_of([face, jpeg(resized(face, 64), 70)]) == {(0, 1): NEAR}


def test_mirror_is_linked_as_mirror(face):
  assert pairs_of([face, face[:, ::-1]]) == {(0, 1): MIRROR}
  # Also in the other order and after re-encoding the mirror.
  assert pairs_of([jpeg(face[:, ::-1]), face]) == {(0, 1): MIRROR}


def test_vertical_flip_is_not_a_mirror(face):
  assert pairs_of([face, face[::-1]]) == {}


def test_masked_copy_with_other_label_is_linked(face):
  masked = with_mask(face)
  assert pairs_of([face, masked], labels=[1, 0]) == {(0, 1): MASKED}
  # The mask copy re-encoded still links (its top is only JPEG-noisy).
  assert pairs_of([face, jpeg(masked, 70)], labels=[1, 0]) == {(0, 1): MASKED}


def test_masked_rule_is_cross_label_only(face):
  masked = with_mask(face)
  assert pairs_of([face, masked], labels=[0, 0]) == {}
  assert pairs_of([face, masked], labels=None) == {}


def test_masked_rule_needs_the_same_top(face, strangers):
  # A different face with a mask is not linked to the unmasked face.
  assert pairs_of([face, with_mask(strangers[0])], labels=[1, 0]) == {}
  # A mask reaching far into the top part changes the eyes region: no link.
  assert pairs_of([face, with_mask(face, start=0.15)], labels=[1, 0]) == {}


def test_unrelated_images_are_not_linked(strangers):
  labels = [i % 2 for i in range(len(strangers))]
  assert pairs_of(strangers, labels=labels) == {}
  # Nor are different faces wearing the identical mask.
  masked = [with_mask(s) for s in strangers[:20]]
  assert pairs_of(masked, labels=[0] * 20) == {}
  assert pairs_of(masked[:10] + strangers[10:20], labels=[0] * 10 + [1] * 10) == {}


def test_mixed_set_links_exactly_the_expected_pairs(face, strangers):
  images = [strangers[0], face, strangers[1], jpeg(face), strangers[2], face[:, ::-1], strangers[3]]
  pairs = pairs_of(images, labels=[0] * len(images))
  assert pairs == {(1, 3): NEAR, (1, 5): MIRROR, (3, 5): MIRROR}


# ----------------------------------------------------------------------------- blank images, keys


def test_blank_images_not_linked_by_content():
  black = np.zeros((48, 48, 3), np.uint8)
  grey = np.full((56, 56, 3), 128, np.uint8)
  nearly_black = black.copy()
  nearly_black[0, 0] = 1
  images = [black, black.copy(), grey, nearly_black]
  fingerprints = grouping.fingerprint(images)
  assert not fingerprints.informative.any()
  assert grouping.find_duplicate_pairs(fingerprints, labels=[0, 1, 0, 1]) == {}
  groups = grouping.group_images(images, labels=[0, 1, 0, 1]).groups
  # Different blank images stay apart (identical pixels may share a content-derived id).
  assert len({groups[0], groups[2], groups[3]}) == 3


def test_shared_blank_image_does_not_merge_name_linked_groups(strangers):
  # As in the 12K set: an all-black file in each of several `Augmented_<N>` sources.
  black = np.zeros((64, 64, 3), np.uint8)
  # Faces whose pixel hash sorts after the black image's, so the blank one is the smallest key.
  black_key = sha256_of_pixels(black)
  faces = [s for s in strangers if sha256_of_pixels(s) > black_key][:5]
  assert len(faces) == 5
  images = [faces[0], faces[1], black, faces[2], faces[3], black.copy(), faces[4]]
  keys = [["src:1"], ["src:1"], ["src:1"], ["src:2"], ["src:2"], ["src:2"], []]
  groups = grouping.group_images(images, link_keys=keys).groups
  assert groups[0] == groups[1] == groups[2]
  assert groups[3] == groups[4] == groups[5]
  assert len({groups[0], groups[3], groups[6]}) == 3


def test_blank_images_are_linked_by_a_shared_key(face):
  black = np.zeros((48, 48, 3), np.uint8)
  images = [black, black.copy(), face, black.copy()]
  keys = [["photo:a"], ["photo:a"], ["photo:a"], []]
  assert pairs_of(images, link_keys=keys) == {(0, 1): NAME, (0, 2): NAME, (1, 2): NAME}


def test_informative_flag_separates_blank_from_textured(face):
  flat_noise = np.full((40, 40, 3), 100, np.uint8)
  flat_noise[::7, ::7] = 101  # std well under the blank threshold
  assert grouping.fingerprint([face, flat_noise]).informative.tolist() == [True, False]


def test_link_keys_make_cliques(strangers):
  images = strangers[:7]
  keys = [["photo:a"], ["photo:a", "src:x"], ["photo:b"], ["photo:a"], ["src:x"], ["photo:b"], []]
  pairs = pairs_of(images, link_keys=keys)
  expected = {
    (0, 1),
    (0, 3),
    (1, 3),  # photo:a, every pair (not a chain)
    (1, 4),  # src:x
    (2, 5),
  }  # photo:b
  assert set(pairs) == expected
  assert set(pairs.values()) == {NAME}
  groups = grouping.group_images(images, link_keys=keys).groups
  assert groups[0] == groups[1] == groups[3] == groups[4]
  assert groups[2] == groups[5]
  assert len({groups[0], groups[2], groups[6]}) == 3


def test_content_kind_wins_over_name_kind(face):
  pairs = pairs_of([face, face.copy(), face[:, ::-1]], link_keys=[["k"], ["k"], ["k"]])
  assert pairs == {(0, 1): EXACT, (0, 2): MIRROR, (1, 2): MIRROR}


# ----------------------------------------------------------------------------- components, ids


def test_connected_components_numbering_and_transitivity():
  components = grouping.connected_components(7, [(5, 6), (3, 4), (0, 2), (4, 6)])
  assert components.tolist() == [0, 1, 0, 2, 2, 2, 2]
  assert grouping.connected_components(3, []).tolist() == [0, 1, 2]
  assert grouping.connected_components(0, []).tolist() == []


def test_connected_components_long_chain():
  n = 2000
  pairs = [(i + 1, i) for i in range(n - 1)][::-1]
  assert set(grouping.connected_components(n, pairs).tolist()) == {0}


def _variant_set(strangers, face):
  """Images with known groups: a face, its re-encode, resize, mirror and masked copy, strangers."""
  images = [face, jpeg(face), resized(face, 64), face[:, ::-1], with_mask(face)] + strangers[:15]
  labels = [1, 1, 1, 1, 0] + [i % 2 for i in range(15)]
  keys = [[] for _ in images]
  keys[6] = keys[8] = ["src:1"]  # two strangers of one source
  return images, labels, keys


def test_group_ids_follow_the_links(face, strangers):
  images, labels, keys = _variant_set(strangers, face)
  groups = grouping.group_images(images, labels=labels, link_keys=keys).groups
  assert len(set(groups[:5])) == 1
  assert groups[6] == groups[8]
  assert len(set(groups)) == 1 + 1 + 13  # face family, src:1 pair, 13 other strangers
  assert all(isinstance(g, str) and g for g in groups)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_ids_stable_under_permutation(face, strangers, seed):
  images, labels, keys = _variant_set(strangers, face)
  reference = grouping.group_images(images, labels=labels, link_keys=keys).groups
  order = list(range(len(images)))
  random.Random(seed).shuffle(order)
  shuffled = grouping.group_images(
    [images[i] for i in order], labels=[labels[i] for i in order], link_keys=[keys[i] for i in order]
  ).groups
  assert {i: shuffled[k] for k, i in enumerate(order)} == dict(enumerate(reference))


def test_adding_an_unrelated_image_moves_no_group(face, strangers):
  images, labels, keys = _variant_set(strangers, face)
  before = grouping.group_images(images, labels=labels, link_keys=keys).groups
  after = grouping.group_images([strangers[30]] + images, labels=[0] + labels, link_keys=[[]] + keys).groups
  assert after[1:] == before


def test_group_id_is_content_derived_not_position_derived(face, strangers):
  # The same image gets the same id in two unrelated sets.
  a = grouping.group_images([strangers[0], face, strangers[1]]).groups
  b = grouping.group_images([face, strangers[5], strangers[6], strangers[7]]).groups
  assert a[1] == b[0]
  assert a[0] != b[1]


# ----------------------------------------------------------------------------- assign_splits


def _groups_and_labels(seed=0, n_groups=600):
  """Groups of very uneven size (a few crowd photos), two imbalanced classes."""
  rng = np.random.default_rng(seed)
  groups, labels = [], []
  for g in range(n_groups):
    size = int(rng.choice([1, 1, 1, 2, 3, 5, 40])) if g % 50 else 120
    for _ in range(size):
      groups.append(f"g{g:04d}")
      labels.append(int(rng.random() < 0.2))
  return groups, labels


def test_assign_splits_keeps_groups_whole_and_classes_on_target():
  groups, labels = _groups_and_labels()
  splits = grouping.assign_splits(groups, labels)
  by_group = {}
  for group, split in zip(groups, splits):
    assert by_group.setdefault(group, split) == split  # a group never straddles splits
  labels = np.asarray(labels)
  for cls in (0, 1):
    total = np.sum(labels == cls)
    for split, fraction in zip(grouping.SPLITS, (0.8, 0.1, 0.1)):
      share = np.sum((labels == cls) & (np.asarray(splits) == split)) / total
      assert abs(share - fraction) < 0.02, (cls, split, share)


def test_assign_splits_beats_hashing_on_lumpy_groups():
  groups, labels = _groups_and_labels(seed=1)
  balanced = np.asarray(grouping.assign_splits(groups, labels))
  hashed = np.asarray([grouping.assign_split(g) for g in groups])
  error = lambda splits: max(abs(np.mean(splits == "test") - 0.1), abs(np.mean(splits == "validation") - 0.1))
  assert error(balanced) < error(hashed)


def test_assign_splits_does_not_depend_on_input_order():
  groups, labels = _groups_and_labels(seed=2, n_groups=200)
  reference = dict(zip(groups, grouping.assign_splits(groups, labels)))
  order = np.random.default_rng(0).permutation(len(groups))
  shuffled = grouping.assign_splits([groups[i] for i in order], [labels[i] for i in order])
  assert {groups[i]: s for i, s in zip(order, shuffled)} == reference


def test_assign_splits_same_in_a_fresh_process():
  groups, labels = _groups_and_labels(seed=3, n_groups=60)
  code = f"from vaeaug.data import grouping; print(','.join(grouping.assign_splits({groups!r}, {labels!r})))"
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONHASHSEED="12345")
  out = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, check=True)
  assert out.stdout.strip().split(",") == grouping.assign_splits(groups, labels)


def test_assign_splits_degenerate_and_bad_fractions():
  groups, labels = _groups_and_labels(seed=4, n_groups=100)
  assert set(grouping.assign_splits(groups, labels, (1.0, 0.0, 0.0))) == {"train"}
  assert set(grouping.assign_splits(groups, labels, (0.0, 0.0, 1.0))) == {"test"}
  assert grouping.assign_splits([], []) == []
  for fractions in [(0.8, 0.1), (0.8, 0.3, 0.1), (1.1, -0.05, -0.05)]:
    with pytest.raises(ValueError, match="fractions"):
      grouping.assign_splits(groups, labels, fractions)
    with pytest.raises(ValueError, match="fractions"):
      grouping.assign_split("g0", fractions)


def test_assign_split_hash_is_deterministic_and_salted():
  ids = [f"id{i}" for i in range(500)]
  first = [grouping.assign_split(g) for g in ids]
  assert first == [grouping.assign_split(g) for g in ids] and set(first) <= set(grouping.SPLITS)
  assert first != [grouping.assign_split(g, salt="other") for g in ids]


def test_grouping_kind_counts(face, strangers):
  result = grouping.group_images([face, face.copy(), face[:, ::-1], strangers[0]])
  assert result.kind_counts() == {EXACT: 1, MIRROR: 2}
