"""The aligned near-duplicate signal (re-crops, re-scalings, colour shifts, photo bursts) on the real
files where the grouping used to miss them, on synthetic copies of a real face, and its calibration
(`vaeaug.data.calibration`), old-build detection and the audit's per-signal counts."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_files, read_built
from PIL import Image, ImageEnhance

from vaeaug.data import audit, building, calibration, grouping, sources
from vaeaug.data import images as image_io

K12 = "face-mask-12k"
K12_ROOT = "Face Mask Dataset"
# Same photo, slightly different crop, scale or colour: each pair used to cross the grouped splits.
K12_PAIRS = (
  ("Train/WithMask/1091.jpg", "Train/WithMask/Augmented_62_5174451.jpg"),
  ("Train/WithMask/1145.jpg", "Train/WithMask/202.jpg"),
  ("Train/WithMask/1218.jpg", "Train/WithMask/388.jpg"),
  ("Train/WithMask/1331.jpg", "Train/WithMask/18.jpg"),
)
# CelebA faces of different people that line up closely (the look-alikes the chroma test is for).
K12_LOOK_ALIKES = (
  ("Train/WithoutMask/1518.jpg", "Train/WithoutMask/4457.jpg"),
  ("Train/WithoutMask/5639.jpg", "Train/WithoutMask/5040.jpg"),
  ("Train/WithoutMask/4124.jpg", "Validation/WithoutMask/44.jpg"),
  ("Train/WithoutMask/3129.jpg", "Validation/WithoutMask/233.jpg"),
)
BURST = ("maksssksksss17", "maksssksksss332")  # one person, one room, seconds apart
OTHER_PHOTOS = ("maksssksksss0", "maksssksksss108", "maksssksksss126", "maksssksksss153")


def k12_image(raw_root: Path, file: str) -> np.ndarray:
  return image_io.load_rgb(raw_root / K12 / K12_ROOT / file)


def linked_kinds(images, pairs, params=grouping.DEFAULT_PARAMS) -> list[str]:
  fingerprints = grouping.fingerprint(images, params)
  i, j = zip(*pairs)
  return grouping.classify_pairs(fingerprints, i, j, params)


# ----------------------------------------------------------------------------- real files


def test_real_recropped_pairs_are_linked_by_the_aligned_signal(real_raw_root):
  images = [k12_image(real_raw_root, file) for pair in K12_PAIRS for file in pair]
  pairs = [(2 * k, 2 * k + 1) for k in range(len(K12_PAIRS))]
  # The rules before this one missed every pair; the aligned signal finds each.
  assert linked_kinds(images, pairs, dataclasses.replace(grouping.DEFAULT_PARAMS, aligned_ncc=2.0)) == [""] * 4
  assert linked_kinds(images, pairs) == [grouping.ALIGNED] * 4


def test_real_look_alike_faces_of_different_people_are_not_linked(real_raw_root):
  images = [k12_image(real_raw_root, file) for pair in K12_LOOK_ALIKES for file in pair]
  pairs = [(2 * k, 2 * k + 1) for k in range(len(K12_LOOK_ALIKES))]
  fingerprints = grouping.fingerprint(images)
  ncc, chroma = grouping.aligned_similarity(fingerprints, *zip(*pairs))
  params = grouping.DEFAULT_PARAMS
  assert (ncc >= params.aligned_ncc).all()  # they line up: the detail match alone would link them
  assert (chroma < params.aligned_chroma).all()  # their colour layouts differ
  assert grouping.classify_pairs(fingerprints, *zip(*pairs)) == [""] * 4
  assert len(set(grouping.group_images(images).groups)) == len(images)


def test_burst_photos_are_linked_at_photo_level(real_raw_root):
  folder = real_raw_root / "face-mask-detection" / "images"
  photos = [image_io.load_rgb(folder / f"{name}.jpg") for name in BURST + OTHER_PHOTOS]
  kinds = linked_kinds(photos, [(0, 1)] + [(0, k) for k in range(2, len(photos))], grouping.PHOTO_PARAMS)
  assert kinds[0] == grouping.ALIGNED
  assert kinds[1:] == [""] * len(OTHER_PHOTOS)


def test_detection_build_puts_burst_faces_in_one_split(real_raw_root, tmp_path):
  names = BURST + OTHER_PHOTOS
  raw = tmp_path / "raw"
  source = real_raw_root / "face-mask-detection"
  copy_files(source, raw / "face-mask-detection", [f"images/{n}.jpg" for n in names])
  copy_files(source, raw / "face-mask-detection", [f"annotations/{n}.xml" for n in names])
  building.prepare("face_mask_detection", "3classes", data_dir=tmp_path / "tfds", raw_root=raw)
  rows = read_built("face_mask_detection", "3classes", tmp_path / "tfds")
  burst = [row for row in rows if Path(row["photo"]).stem in BURST]
  assert {Path(row["photo"]).stem for row in burst} == set(BURST)
  assert len({row["group"] for row in burst}) == 1 and len({row["split"] for row in burst}) == 1
  # And the audit, with the photos, sees the burst link inside one split.
  result = audit.audit("face_mask_detection", "3classes", data_dir=tmp_path / "tfds", raw_dir=raw)
  assert result.links_by_kind.get("photo aligned", 0) >= 1
  assert result.cross_split_pairs == 0
  assert "photos compared" in result.photo_check
  without_photos = audit.audit("face_mask_detection", "3classes", data_dir=tmp_path / "tfds", raw_dir=tmp_path)
  assert "not compared" in without_photos.photo_check and "--raw_dir" in without_photos.photo_check


def test_12k_build_groups_the_recropped_pairs(real_raw_root, tmp_path):
  files = [f"{K12_ROOT}/{file}" for pair in K12_PAIRS + K12_LOOK_ALIKES for file in pair]
  base = real_raw_root / K12 / K12_ROOT
  for folder in ("Validation/WithMask", "Test/WithMask", "Test/WithoutMask"):  # the builder wants all six
    files.append(f"{K12_ROOT}/{folder}/{sorted(p.name for p in (base / folder).iterdir())[0]}")
  raw = tmp_path / "raw"
  copy_files(real_raw_root / K12, raw / K12, files)
  report = building.prepare("face_mask12k", "grouped", data_dir=tmp_path / "tfds", raw_root=raw)
  assert report.links.get(grouping.ALIGNED) == len(K12_PAIRS)
  rows = {row["file"]: row for row in read_built("face_mask12k", "grouped", tmp_path / "tfds")}
  for a, b in K12_PAIRS:
    first, second = rows[f"{K12_ROOT}/{a}"], rows[f"{K12_ROOT}/{b}"]
    assert first["group"] == second["group"] and first["split"] == second["split"]
  look_alike_groups = {rows[f"{K12_ROOT}/{f}"]["group"] for pair in K12_LOOK_ALIKES for f in pair}
  assert len(look_alike_groups) == 2 * len(K12_LOOK_ALIKES)
  assert audit.audit("face_mask12k", "grouped", data_dir=tmp_path / "tfds").cross_split_pairs == 0


# ----------------------------------------------------------------------------- synthetic copies


def recrop(image, keep, top, left, scale=1.0):
  height, width = image.shape[:2]
  h, w = int(round(height * keep)), int(round(width * keep))
  y, x = int(round((height - h) * top)), int(round((width - w) * left))
  picture = Image.fromarray(image[y : y + h, x : x + w])
  picture = picture.resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.BILINEAR)
  return np.asarray(picture.resize((width, height), Image.BILINEAR))


def colour_shift(image, brightness=1.15, gains=(1.08, 1.0, 0.92)):
  picture = ImageEnhance.Brightness(Image.fromarray(image)).enhance(brightness)
  shifted = np.clip(np.asarray(picture, np.float32) * np.asarray(gains), 0, 255).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(shifted).save(buffer, "JPEG", quality=70)
  return np.asarray(Image.open(buffer).convert("RGB"))


def test_recrops_rescalings_and_colour_shifts_of_a_face_form_one_group(real_raw_root):
  face = k12_image(real_raw_root, K12_PAIRS[1][1])
  variants = [
    recrop(face, 0.9, 0.0, 0.0),
    recrop(face, 0.9, 1.0, 1.0),
    recrop(face, 0.85, 0.5, 0.5),
    recrop(face, 1.0, 0.0, 0.0, scale=0.5),  # re-scaled down and up
    colour_shift(face),
    colour_shift(recrop(face, 0.92, 0.3, 0.7)),
  ]
  strangers = [k12_image(real_raw_root, f) for pair in K12_LOOK_ALIKES for f in pair]
  groups = grouping.group_images([face, *variants, *strangers]).groups
  assert len(set(groups[: 1 + len(variants)])) == 1
  assert len(set(groups[1 + len(variants) :])) == len(strangers)
  assert groups[0] not in groups[1 + len(variants) :]


def test_aligned_similarity_is_symmetric_and_repeatable(real_raw_root):
  face = k12_image(real_raw_root, K12_PAIRS[0][0])
  fingerprints = grouping.fingerprint([face, recrop(face, 0.88, 0.2, 0.8), k12_image(real_raw_root, K12_PAIRS[2][0])])
  forward = grouping.aligned_similarity(fingerprints, [0, 0], [1, 2])
  backward = grouping.aligned_similarity(fingerprints, [1, 2], [0, 0])
  np.testing.assert_allclose(forward[0], backward[0], atol=1e-6)
  again = grouping.aligned_similarity(fingerprints, [0, 0], [1, 2])
  np.testing.assert_array_equal(forward[0], again[0])
  assert forward[0][0] > 0.9 > forward[0][1]


def test_fingerprints_take_selects_rows(real_raw_root):
  images = [k12_image(real_raw_root, f) for f in K12_PAIRS[0]]
  fingerprints = grouping.fingerprint(images)
  taken = fingerprints.take([1])
  assert taken.sha == (fingerprints.sha[1],)
  for field in dataclasses.fields(fingerprints):
    if field.name != "sha":
      np.testing.assert_array_equal(getattr(taken, field.name), getattr(fingerprints, field.name)[[1]])


# ----------------------------------------------------------------------------- calibration


def test_calibration_report_on_a_sample(real_raw_root):
  base = real_raw_root / K12 / K12_ROOT
  files = sorted(p.relative_to(base).as_posix() for p in base.glob("Train/WithMask/Augmented_10*_*"))[:40]
  files += sorted(p.relative_to(base).as_posix() for p in (base / "Train" / "WithoutMask").iterdir())[:60]
  rows = [
    {"image": image_io.load_rgb(base / f), "file": f"{K12_ROOT}/{f}", "label": int("WithoutMask" in f)} for f in files
  ]
  report = calibration.calibrate(examples={"train": rows}, synthetic=40, negatives=3000, seed=1)
  held = report["held_out"]
  assert report["pairs"]["synthetic"] == 40 and report["pairs"]["family"] > 0
  assert held["synthetic_recall"]["pairs"] + report["pairs"]["synthetic"] // 4 > 0
  # The aligned signal is what finds the re-crops: without it almost none are linked.
  assert held["synthetic_recall"]["rate"] > held["synthetic_recall_without_aligned"]["rate"] + 0.3
  assert held["false_positive"]["linked"] == 0 and 0 < held["false_positive"]["upper95"] < 0.01
  assert report["grid"] and all(0 <= row["recall"] <= 1 for row in report["grid"])
  text = calibration.format_report(json.loads(json.dumps(report)))
  assert "synthetic re-crops" in text and "random same-class pairs linked" in text


def test_synthetic_copy_is_deterministic_and_changes_the_image(real_raw_root):
  face = k12_image(real_raw_root, K12_PAIRS[0][0])
  first, kept = calibration.synthetic_copy(face, np.random.default_rng(3))
  second, _ = calibration.synthetic_copy(face, np.random.default_rng(3))
  np.testing.assert_array_equal(first, second)
  assert first.shape == face.shape and np.abs(first.astype(int) - face).mean() > 5 and 0.7 <= kept <= 0.95


# ----------------------------------------------------------------------------- old builds


def test_an_older_build_is_named_and_rebuilt(real_raw_root, tmp_path):
  data_dir = tmp_path / "tfds"
  old = data_dir / "face_mask_observations" / "grouped" / "1.0.0"
  old.mkdir(parents=True)
  (old / "dataset_info.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match=r"older build \(version 1\.0\.0.*rebuild it with `vaeaug-prepare"):
    sources.data_source("face_mask_observations/grouped", data_dir=data_dir)
  raw = tmp_path / "raw"
  copy_files(
    real_raw_root / "face-mask-observations",
    raw / "face-mask-observations",
    ["with_mask/0-with-mask.jpg", "without_mask/100.jpg", "without_mask/130.jpg"],
  )
  report = building.prepare("face_mask_observations", "grouped", data_dir=data_dir, raw_root=raw)
  current = sources.current_version("face_mask_observations")
  assert report.version == current != "1.0.0"
  assert len(report.notes) == 1 and "older build (version 1.0.0)" in report.notes[0]
  assert "note: found an older build" in report.summary()
  assert len(sources.data_source("face_mask_observations/grouped", data_dir=data_dir)["train"]) >= 1


def test_many_recrops_of_one_photo_are_not_checked_pair_by_pair(real_raw_root, monkeypatch):
  face = k12_image(real_raw_root, K12_PAIRS[1][1])
  rng = np.random.default_rng(0)
  copies = [recrop(face, rng.uniform(0.8, 0.9), rng.uniform(), rng.uniform()) for _ in range(120)]
  original = grouping.aligned_similarity

  def verified_pairs(chunk):
    scored = []
    monkeypatch.setattr(grouping, "ALIGNED_CHUNK", chunk)
    monkeypatch.setattr(
      grouping, "aligned_similarity", lambda fp, i, j, params: scored.append(len(i)) or original(fp, i, j, params)
    )
    groups = grouping.group_images(copies).groups
    return sum(scored), groups

  every_pair, groups = verified_pairs(10**9)  # one round: every candidate pair is checked
  in_rounds, groups_in_rounds = verified_pairs(64)
  assert len(set(groups)) == 1 and groups_in_rounds == groups
  assert in_rounds < every_pair / 3, (in_rounds, every_pair)
