"""The three TFDS builders on small samples of the real downloads (copied into tmp dirs).

Each sample is tens of files and is built once per session (conftest `built`); bad-input cases add
files the test makes to a copied sample. Full-data builds are in the `slow` tests (test_audit.py).
"""

from __future__ import annotations

import collections
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import (
  DETECTION_PHOTOS,
  K12_AUGMENTED_SOURCES,
  K12_DUPLICATE_PAIR,
  K12_ROOT,
  K12_SPLIT_FOLDERS,
  OBSERVATIONS_FILES,
  OBSERVATIONS_MASKED_PAIR,
  OBSERVATIONS_MIRROR_PAIR,
  Built,
  by_file,
  class_counts,
  copy_files,
  detection_files,
  encode,
  k12_sample_files,
  smooth_image,
  voc_objects,
)
from PIL import Image, ImageOps

from vaeaug.data import building, face_mask_detection, grouping, sources
from vaeaug.data import images as image_io

DETECTION = "face_mask_detection"
K12 = "face_mask12k"
OBSERVATIONS = "face_mask_observations"
ALL_DETECTION_CLASSES = ("with_mask", "without_mask", "mask_weared_incorrect")


def array_record_files(built: Built) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in sorted(built.dataset_dir.glob("*.array_record*"))}


def split_and_group(rows) -> dict[str, tuple[str, str]]:
  return {key: (row["split"], row["group"]) for key, row in by_file(rows).items()}


def decode_photo(path: Path) -> np.ndarray:
  """The shipped photos are plain RGB JPEGs: PIL's decode (with EXIF orientation) is the truth."""
  with Image.open(path) as im:
    return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def assert_skip(report, problem: str, name: str, count: int = 1):
  counts = report.skips["counts"]
  assert counts.get(problem) == count, f"{problem!r}: {counts}"
  examples = report.skips["examples"][problem]
  assert any(name in example for example in examples), (name, examples)


# ============================================================================ face_mask_detection


@pytest.fixture(scope="module")
def detection_xml(detection_sample):
  """{photo stem: [(name, box)]} read independently from the copied XMLs."""
  annotations = detection_sample / sources.RAW_FOLDERS[DETECTION] / "annotations"
  return {stem: voc_objects(annotations / f"{stem}.xml") for stem in DETECTION_PHOTOS}


@pytest.mark.parametrize(
  "config, classes", [("2classes", ALL_DETECTION_CLASSES[:2]), ("3classes", ALL_DETECTION_CLASSES)]
)
def test_detection_face_counts_and_labels(built, detection_xml, config, classes):
  b = built(DETECTION, config)
  names = collections.Counter(name for objects in detection_xml.values() for name, _ in objects)
  assert names["mask_weared_incorrect"] > 0 and names["without_mask"] > 0  # the sample is useful
  expected = sum(names[c] for c in classes)
  assert b.report.total == expected == len(b.rows)
  by_class = collections.Counter()
  for split_counts in b.report.counts.values():
    by_class.update(split_counts)
  assert dict(by_class) == {c: names[c] for c in classes}
  assert b.report.counts == class_counts(b.rows, classes)
  for row in b.rows:
    stem = Path(row["photo"]).stem
    assert row["photo"] == row["file"] == f"images/{stem}.jpg"
    assert detection_xml[stem][int(row["face_index"])][0] == classes[int(row["label"])]
  dropped = b.report.skips["counts"].get("class not in config: mask_weared_incorrect", 0)
  assert dropped == (names["mask_weared_incorrect"] if config == "2classes" else 0)
  assert sum(b.report.skips["counts"].values()) == dropped


def test_detection_boxes_and_crops(built, detection_xml, detection_sample):
  b = built(DETECTION, "3classes")
  folder = detection_sample / sources.RAW_FOLDERS[DETECTION]
  photos = {}
  for row in b.rows:
    stem = Path(row["photo"]).stem
    if stem not in photos:
      photos[stem] = decode_photo(folder / row["photo"])
    photo = photos[stem]
    height, width = photo.shape[:2]
    xmin, ymin, xmax, ymax = detection_xml[stem][int(row["face_index"])][1]
    expected_box = (
      max(math.floor(xmin), 0),
      max(math.floor(ymin), 0),
      min(math.ceil(xmax), width),
      min(math.ceil(ymax), height),
    )
    box = tuple(int(v) for v in row["box"])
    x0, y0, x1, y1 = (int(v) for v in row["crop_box"])
    assert box == expected_box
    assert 0 <= x0 <= box[0] < box[2] <= x1 <= width and 0 <= y0 <= box[1] < box[3] <= y1 <= height
    assert row["image"].shape == (y1 - y0, x1 - x0, 3)
    np.testing.assert_array_equal(row["image"], photo[y0:y1, x0:x1])
    # A square of side round(1.25 * long side) unless clipped by the photo's edge.
    side = round(max(box[2] - box[0], box[3] - box[1]) * 1.25)
    assert x1 - x0 <= side and y1 - y0 <= side
    if x0 > 0 and x1 < width:
      assert x1 - x0 == side
    if y0 > 0 and y1 < height:
      assert y1 - y0 == side


def test_detection_faces_of_a_photo_share_split_and_group(built):
  for config in ("2classes", "3classes"):
    rows = built(DETECTION, config).rows
    splits, groups = collections.defaultdict(set), collections.defaultdict(set)
    for row in rows:
      splits[row["photo"]].add(row["split"])
      groups[row["photo"]].add(row["group"])
    assert len(splits) == len(DETECTION_PHOTOS)
    assert all(len(s) == 1 for s in splits.values()), splits
    assert all(len(g) == 1 for g in groups.values()), groups


def test_detection_configs_agree_on_splits_and_groups(built):
  two = split_and_group(built(DETECTION, "2classes").rows)
  three = split_and_group(built(DETECTION, "3classes").rows)
  assert set(two) < set(three)
  assert {key: three[key] for key in two} == two
  assert built(DETECTION, "2classes").report.groups == len({g for _, g in two.values()})


# ============================================================================ face_mask12k


def k12_split_of_file(file: str) -> str:
  return K12_SPLIT_FOLDERS[Path(file).parts[1]]


def test_12k_sample_has_the_known_duplicate(real_raw_root):
  base = real_raw_root / sources.RAW_FOLDERS[K12] / K12_ROOT
  a, b = (image_io.load_rgb(base / f) for f in K12_DUPLICATE_PAIR)
  assert image_io.sha256_of_pixels(a) == image_io.sha256_of_pixels(b)


def test_12k_official_keeps_the_download_split(built, k12_sample):
  b = built(K12, "official")
  on_disk = sorted(
    p.relative_to(k12_sample / "face-mask-12k").as_posix() for p in (k12_sample / "face-mask-12k").rglob("*.jpg")
  )
  assert sorted(b.by_file) == on_disk
  assert b.report.total == len(on_disk)
  for file, row in b.by_file.items():
    assert row["split"] == row["official_split"] == k12_split_of_file(file)
    assert int(row["label"]) == (0 if Path(file).parts[2] == "WithMask" else 1)
  assert b.report.counts == class_counts(b.rows, ("with_mask", "without_mask"))
  assert b.report.skips["counts"] == {}


def test_12k_grouped_no_group_straddles_splits(built):
  b = built(K12, "grouped")
  official = built(K12, "official")
  assert b.report.total == official.report.total
  splits_of_group = collections.defaultdict(set)
  for row in b.rows:
    splits_of_group[row["group"]].add(row["split"])
  assert all(len(s) == 1 for s in splits_of_group.values())
  assert b.report.groups == len(splits_of_group)
  for n in K12_AUGMENTED_SOURCES:
    members = [row for file, row in b.by_file.items() if Path(file).name.startswith(f"Augmented_{n}_")]
    assert len({k12_split_of_file(row["file"]) for row in members}) > 1  # straddled officially
    assert len({row["split"] for row in members}) == 1
    assert len({row["group"] for row in members}) == 1
  a, c = (b.by_file[f"{K12_ROOT}/{f}"] for f in K12_DUPLICATE_PAIR)
  assert (a["split"], a["group"]) == (c["split"], c["group"])
  assert b.report.links.get("exact", 0) >= 1 and b.report.links.get("same-source", 0) >= 1
  # Grouping does not depend on the config.
  assert {f: r["group"] for f, r in b.by_file.items()} == {f: r["group"] for f, r in official.by_file.items()}


def test_12k_grouped_loads_through_the_pipeline(built):
  from vaeaug.data import pipeline

  b = built(K12, "grouped")
  loaded = pipeline.load_splits(f"{K12}/grouped", data_dir=b.data_dir, image_size=16, cache=False)
  for split, counts in b.report.counts.items():
    ds = loaded[split]
    assert len(ds) == sum(counts.values())
    assert ds.images.shape[1:] == (16, 16, 3)
    assert ds.class_counts().tolist() == list(counts.values())


# ============================================================================ observations


def test_observation_pairs_are_linked_in_the_real_files(observations_sample):
  folder = observations_sample / sources.RAW_FOLDERS[OBSERVATIONS]
  pairs = {OBSERVATIONS_MIRROR_PAIR: grouping.MIRROR, OBSERVATIONS_MASKED_PAIR: grouping.MASKED}
  for (a, b), kind in pairs.items():
    images = [image_io.load_rgb(folder / f) for f in (a, b)]
    labels = [0 if f.startswith("with_mask/") else 1 for f in (a, b)]
    assert grouping.group_images(images, labels=labels).pairs == {(0, 1): kind}


def test_observations_sample_build(built):
  b = built(OBSERVATIONS, "grouped")
  assert sorted(b.by_file) == sorted(OBSERVATIONS_FILES)
  assert b.report.total == len(OBSERVATIONS_FILES)
  assert b.report.skips["counts"] == {}
  for file, row in b.by_file.items():
    assert int(row["label"]) == (0 if file.startswith("with_mask/") else 1)
  families = [
    OBSERVATIONS_MIRROR_PAIR,
    OBSERVATIONS_MASKED_PAIR,
    (
      "with_mask/0-with-mask.jpg",
      "with_mask/augmented_image_238.jpg",
      "with_mask/augmented_image_239.jpg",
      "with_mask/augmented_image_240.jpg",
    ),
    ("with_mask/122-with-mask.jpg", "with_mask/augmented_image_75.jpg", "without_mask/122.jpg"),
  ]
  for family in families:
    assert len({(b.by_file[f]["split"], b.by_file[f]["group"]) for f in family}) == 1, family
  assert len({b.by_file[family[0]]["group"] for family in families}) == len(families)
  assert {"mirror", "masked-from-unmasked"} <= set(b.report.links)
  splits_of_group = collections.defaultdict(set)
  for row in b.rows:
    splits_of_group[row["group"]].add(row["split"])
  assert all(len(s) == 1 for s in splits_of_group.values())


# ============================================================================ determinism


def test_rebuild_is_byte_identical(built, tmp_path):
  first = built(K12, "grouped")
  again = Built(K12, "grouped", first.raw_root, tmp_path / "tfds")
  files = array_record_files(first)
  assert len(files) == 3
  assert array_record_files(again) == files


def test_copy_order_and_location_do_not_matter(built, real_raw_root, tmp_path):
  first = built(K12, "grouped")
  files = k12_sample_files(real_raw_root)
  raw = tmp_path / "some" / "other place"
  copy_files(real_raw_root / "face-mask-12k", raw / "face-mask-12k", reversed(files))
  other = Built(K12, "grouped", raw, tmp_path / "tfds")
  assert split_and_group(other.rows) == split_and_group(first.rows)
  assert array_record_files(other) == array_record_files(first)


def test_renaming_a_file_moves_nothing(built, tmp_path):
  # Splits are a function of the content (group ids are pixel hashes), not of file names. Adding
  # images may move other groups: assign_splits rebalances classes over the whole set.
  first = built(K12, "grouped")
  reference = split_and_group(first.rows)
  raw = tmp_path / "raw"
  shutil.copytree(first.raw_root / "face-mask-12k", raw / "face-mask-12k")
  folder = raw / "face-mask-12k" / K12_ROOT / "Train" / "WithoutMask"
  old_name = sorted(p.name for p in folder.iterdir())[0]
  (folder / old_name).rename(folder / "zz_renamed.jpg")
  other = split_and_group(Built(K12, "grouped", raw, tmp_path / "tfds").rows)
  renamed_old = f"{K12_ROOT}/Train/WithoutMask/{old_name}"
  renamed_new = f"{K12_ROOT}/Train/WithoutMask/zz_renamed.jpg"
  assert other.pop(renamed_new) == reference.pop(renamed_old)
  assert other == reference


# ============================================================================ bad input


def _make_exif_rotated(path: Path) -> np.ndarray:
  """A 48x32 JPEG with EXIF orientation 6 (display rotated 90 degrees clockwise); returns
  the upright pixels it should give."""
  stored = smooth_image(seed=77, size=48)[:32]  # 32 tall, 48 wide
  stored = stored.copy()
  stored[:8, :8] = (255, 0, 0)
  exif = Image.Exif()
  exif[0x0112] = 6
  path.write_bytes(encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
  with Image.open(path) as im:
    decoded = np.asarray(im.convert("RGB"))
  return np.rot90(decoded, k=-1)


@pytest.fixture(scope="module")
def observations_with_bad_files(real_raw_root, tmp_path_factory):
  """The observations sample plus bad and odd files; built once."""
  raw = tmp_path_factory.mktemp("raw_obs_bad")
  folder = raw / "face-mask-observations"
  copy_files(real_raw_root / "face-mask-observations", folder, OBSERVATIONS_FILES)
  good = (real_raw_root / "face-mask-observations" / OBSERVATIONS_FILES[-3]).read_bytes()
  (folder / "with_mask" / "truncated.jpg").write_bytes(good[: len(good) // 2])
  (folder / "with_mask" / "random.jpg").write_bytes(np.random.default_rng(5).bytes(3000))
  (folder / "without_mask" / "empty.jpg").write_bytes(b"")
  (folder / "without_mask" / "notes.txt").write_text("not an image\n")
  # A nested folder (its image is not read: the folder is the counted skip) and a link leaving
  # the class folder.
  (folder / "with_mask" / "more").mkdir()
  (folder / "with_mask" / "more" / "nested.jpg").write_bytes(good)
  outside = raw / "outside.jpg"
  outside.write_bytes(good)
  (folder / "without_mask" / "link.jpg").symlink_to(outside)
  odd = {}
  rgb = lambda seed: smooth_image(seed=seed, size=64)
  odd["with_mask/cmyk.jpg"] = encode(Image.fromarray(rgb(201)).convert("CMYK"), "JPEG", quality=95)
  odd["without_mask/gray.jpg"] = encode(Image.fromarray(rgb(202)).convert("L"), "JPEG", quality=95)
  rgba = np.dstack([rgb(203), np.full((64, 64), 255, np.uint8)])
  rgba[:, :16, 3] = 0  # a fully transparent band on the left
  odd["with_mask/rgba.png"] = encode(Image.fromarray(rgba), "PNG")
  odd["without_mask/palette.png"] = encode(Image.fromarray(rgb(204)).convert("P"), "PNG")
  deep = rgb(205)[..., 0].astype(np.uint16) * 257
  odd["with_mask/deep16.png"] = encode(Image.fromarray(deep), "PNG")
  for name, data in odd.items():
    (folder / name).write_bytes(data)
  upright = _make_exif_rotated(folder / "without_mask" / "rotated.jpg")
  offered = sum(1 for cls in ("with_mask", "without_mask") for _ in (folder / cls).iterdir())
  built = Built(OBSERVATIONS, "grouped", raw, tmp_path_factory.mktemp("tfds_obs_bad"))
  return dict(built=built, folder=folder, offered=offered, upright=upright, rgba=rgba, deep=deep)


@pytest.mark.parametrize(
  "name, problem",
  [
    ("with_mask/truncated.jpg", "truncated image"),
    ("with_mask/random.jpg", "not an image"),
    ("without_mask/empty.jpg", "zero-byte file"),
    ("without_mask/notes.txt", "not an image extension"),
    ("with_mask/more", "subfolder"),
    ("without_mask/link.jpg", "link outside folder"),
  ],
)
def test_bad_files_are_counted_skips(observations_with_bad_files, name, problem):
  b = observations_with_bad_files["built"]
  assert_skip(b.report, problem, name)
  assert name not in b.by_file


def test_bad_files_nothing_dropped_silently(observations_with_bad_files):
  b = observations_with_bad_files["built"]
  skipped = sum(b.report.skips["counts"].values())
  assert skipped == 6
  assert b.report.total + skipped == observations_with_bad_files["offered"]
  assert b.report.total == len(OBSERVATIONS_FILES) + 6 == len(b.rows)
  assert "skipped 6" in b.report.summary() and "truncated image" in b.report.summary()
  assert not any("nested" in f or "link" in f for f in b.by_file)


def test_odd_modes_are_accepted_and_converted(observations_with_bad_files):
  b = observations_with_bad_files["built"]
  folder = observations_with_bad_files["folder"]
  for name in (
    "with_mask/cmyk.jpg",
    "without_mask/gray.jpg",
    "with_mask/rgba.png",
    "without_mask/palette.png",
    "with_mask/deep16.png",
    "without_mask/rotated.jpg",
  ):
    assert name in b.by_file, name
    assert b.by_file[name]["image"].dtype == np.uint8 and b.by_file[name]["image"].shape[2] == 3
  gray = b.by_file["without_mask/gray.jpg"]["image"]
  np.testing.assert_array_equal(
    gray, np.repeat(np.asarray(Image.open(folder / "without_mask/gray.jpg"))[..., None], 3, 2)
  )
  rgba = observations_with_bad_files["rgba"]
  stored = b.by_file["with_mask/rgba.png"]["image"]
  assert (stored[:, :16] == 255).all()
  np.testing.assert_array_equal(stored[:, 16:], rgba[:, 16:, :3])
  deep = b.by_file["with_mask/deep16.png"]["image"]
  np.testing.assert_array_equal(
    deep, np.repeat((observations_with_bad_files["deep"] // 257).astype(np.uint8)[..., None], 3, 2)
  )
  with Image.open(folder / "without_mask/palette.png") as im:
    np.testing.assert_array_equal(b.by_file["without_mask/palette.png"]["image"], np.asarray(im.convert("RGB")))
  cmyk = b.by_file["with_mask/cmyk.jpg"]["image"].astype(int)
  assert np.abs(cmyk - smooth_image(seed=201, size=64).astype(int)).mean() < 12


def test_exif_rotated_photo_comes_out_upright(observations_with_bad_files):
  b = observations_with_bad_files["built"]
  image = b.by_file["without_mask/rotated.jpg"]["image"]
  assert image.shape == (48, 32, 3)
  np.testing.assert_array_equal(image, observations_with_bad_files["upright"])
  red, green, blue = image[1:7, -7:-1].reshape(-1, 3).mean(axis=0)  # the red corner is now top-right
  assert red > 200 and green < 80 and blue < 80


def _copy_observations(real_raw_root: Path, raw: Path, files=OBSERVATIONS_FILES[:6]) -> Path:
  copy_files(real_raw_root / "face-mask-observations", raw / "face-mask-observations", files)
  return raw / "face-mask-observations"


def test_missing_class_folder_names_the_folder(real_raw_root, tmp_path):
  folder = _copy_observations(real_raw_root, tmp_path / "raw")
  shutil.rmtree(folder / "without_mask")
  with pytest.raises(image_io.BadInputError) as error:
    building.prepare(OBSERVATIONS, "grouped", data_dir=tmp_path / "tfds", raw_root=tmp_path / "raw")
  assert error.value.problem == "missing folder"
  assert str(folder / "without_mask") in str(error.value)


def test_empty_class_folder_names_the_folder(real_raw_root, tmp_path):
  folder = _copy_observations(real_raw_root, tmp_path / "raw")
  for path in (folder / "with_mask").iterdir():
    path.unlink()
  (folder / "with_mask" / "README.txt").write_text("nothing here\n")
  with pytest.raises(image_io.BadInputError) as error:
    building.prepare(OBSERVATIONS, "grouped", data_dir=tmp_path / "tfds", raw_root=tmp_path / "raw")
  assert error.value.problem == "no images in folder"
  assert str(folder / "with_mask") in str(error.value)


@pytest.fixture(scope="module")
def k12_tiny_files(real_raw_root):
  base = real_raw_root / "face-mask-12k" / K12_ROOT
  files = []
  for split in K12_SPLIT_FOLDERS:
    for cls in ("WithMask", "WithoutMask"):
      files += [f"{K12_ROOT}/{split}/{cls}/{n}" for n in sorted(os.listdir(base / split / cls))[:2]]
  return files


def test_12k_bad_files_are_counted(real_raw_root, k12_tiny_files, tmp_path):
  raw = tmp_path / "raw"
  copy_files(real_raw_root / "face-mask-12k", raw / "face-mask-12k", k12_tiny_files)
  base = raw / "face-mask-12k" / K12_ROOT
  good = (base / k12_tiny_files[0].split("/", 1)[1]).read_bytes()
  (base / "Test" / "WithMask" / "cut.jpg").write_bytes(good[: len(good) // 2])
  (base / "Validation" / "WithoutMask" / "empty.png").write_bytes(b"")
  (base / "Train" / "WithoutMask" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
  (base / "Train" / "WithMask" / "gray.png").write_bytes(
    encode(Image.fromarray(smooth_image(9, 64)).convert("L"), "PNG")
  )
  for config in ("official", "grouped"):
    b = Built(K12, config, raw, tmp_path / "tfds")
    assert_skip(b.report, "truncated image", "Test/WithMask/cut.jpg")
    assert_skip(b.report, "zero-byte file", "Validation/WithoutMask/empty.png")
    assert_skip(b.report, "hidden file", "Train/WithoutMask/.DS_Store")
    assert b.report.total == len(k12_tiny_files) + 1
    assert b.report.total + 3 == sum(1 for p in base.rglob("*") if p.is_file())
    assert f"{K12_ROOT}/Train/WithMask/gray.png" in b.by_file


def test_12k_missing_split_folder_names_it(real_raw_root, k12_tiny_files, tmp_path):
  raw = tmp_path / "raw"
  copy_files(real_raw_root / "face-mask-12k", raw / "face-mask-12k", k12_tiny_files)
  missing = raw / "face-mask-12k" / K12_ROOT / "Validation" / "WithoutMask"
  shutil.rmtree(missing)
  with pytest.raises(image_io.BadInputError, match="missing folder") as error:
    building.prepare(K12, "official", data_dir=tmp_path / "tfds", raw_root=raw)
  assert str(missing) in str(error.value)


# --------------------------------------------------------------------------- detection bad input

LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotation><filename>&lol9;</filename></annotation>
"""


def voc_xml(filename: str, objects, size=None) -> str:
  size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
  body = "".join(
    f"<object><name>{name}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
    f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
    for name, b in objects
  )
  return f"<annotation><folder>images</folder><filename>{filename}</filename>{size_xml}{body}</annotation>"


DETECTION_BAD_SAMPLE = DETECTION_PHOTOS[:4]


@pytest.fixture(scope="module")
def detection_with_bad_files(real_raw_root, tmp_path_factory):
  raw = tmp_path_factory.mktemp("raw_det_bad")
  folder = raw / "face-mask-detection"
  copy_files(real_raw_root / "face-mask-detection", folder, detection_files(DETECTION_BAD_SAMPLE))
  images, annotations = folder / "images", folder / "annotations"
  (annotations / "malformed.xml").write_text("<annotation><filename>maksssksksss0.jpg</filename><object>")
  (annotations / "ghost.xml").write_text(voc_xml("ghost.jpg", [("with_mask", (1, 1, 10, 10))]))
  (annotations / "evil.xml").write_text(voc_xml("../../etc/passwd", [("with_mask", (1, 1, 10, 10))]))
  (annotations / "laughs.xml").write_text(LAUGHS)
  (annotations / "notes.txt").write_text("annotation notes\n")
  # A second annotation of a photo that already has one (sorted after it): skipped, not doubled.
  (annotations / "zz_second.xml").write_text(voc_xml(f"{DETECTION_BAD_SAMPLE[0]}.jpg", [("with_mask", (1, 1, 10, 10))]))
  photo = np.asarray(Image.fromarray(smooth_image(31, size=40)).resize((160, 120), Image.BICUBIC))
  (images / "synthetic.png").write_bytes(encode(photo, "PNG"))
  (annotations / "synthetic.xml").write_text(
    voc_xml(
      "synthetic.png",
      [
        ("with_mask", (10, 10, 40, 50)),
        ("without_mask", (150, 100, 175, 130)),  # partly outside: clipped, kept
        ("with_mask", (170, 10, 200, 40)),  # entirely outside
        ("without_mask", (60, 60, 60, 80)),  # zero width
        ("with_mask", (100, 50, 80, 70)),  # inverted
        ("mask_on_chin", (80, 20, 110, 60)),  # unknown label
        ("mask_weared_incorrect", (110, 20, 140, 60)),
      ],
      size=(160, 120),
    )
  )
  (images / "orphan.jpg").write_bytes(encode(smooth_image(32, size=64), "JPEG"))
  # A declared size that differs from the photo: a warning, faces kept.
  (images / "resized.png").write_bytes(encode(smooth_image(33, size=80), "PNG"))
  (annotations / "resized.xml").write_text(voc_xml("resized.png", [("without_mask", (5, 5, 30, 30))], size=(160, 160)))
  built = Built(DETECTION, "3classes", raw, tmp_path_factory.mktemp("tfds_det_bad"))
  return dict(built=built, folder=folder)


@pytest.mark.parametrize(
  "name, problem",
  [
    ("annotations/malformed.xml", "malformed XML"),
    ("annotations/ghost.xml", "image missing"),
    ("annotations/evil.xml", "image path outside dataset folder"),
    ("annotations/laughs.xml", "unsafe XML"),
    ("annotations/notes.txt", "not an XML file"),
    ("annotations/synthetic.xml", "box outside photo"),
    ("annotations/synthetic.xml", "zero-area box"),
    ("annotations/synthetic.xml", "inverted box"),
    ("annotations/synthetic.xml", "unknown label"),
    ("images/orphan.jpg", "photo without annotation"),
    ("annotations/zz_second.xml", "photo annotated twice"),
  ],
)
def test_detection_bad_input_is_counted(detection_with_bad_files, name, problem):
  assert_skip(detection_with_bad_files["built"].report, problem, name)


def test_detection_bad_input_keeps_the_good_faces(detection_with_bad_files):
  b = detection_with_bad_files["built"]
  folder = detection_with_bad_files["folder"]
  real = sum(len(voc_objects(folder / "annotations" / f"{s}.xml")) for s in DETECTION_BAD_SAMPLE)
  assert b.report.total == real + 3 + 1 == len(b.rows)
  assert sum(b.report.skips["counts"].values()) == 11
  synthetic = sorted(
    (int(r["face_index"]), tuple(int(v) for v in r["box"])) for r in b.rows if r["photo"] == "images/synthetic.png"
  )
  assert synthetic == [(0, (10, 10, 40, 50)), (1, (150, 100, 160, 120)), (6, (110, 20, 140, 60))]
  # Boxes reaching past the photo: the synthetic face 1 and any in the real sample.
  outside = 1
  for s in DETECTION_BAD_SAMPLE:
    width, height = Image.open(folder / "images" / f"{s}.jpg").size
    boxes = [box for _, box in voc_objects(folder / "annotations" / f"{s}.xml")]
    outside += sum(b[0] < 0 or b[1] < 0 or b[2] > width or b[3] > height for b in boxes)
  not_square = sum(int(r["crop_box"][2] - r["crop_box"][0]) != int(r["crop_box"][3] - r["crop_box"][1]) for r in b.rows)
  assert not_square >= 1  # the synthetic face 1: its square (142, 97, 167, 122) clipped to (142, 97, 160, 120)
  assert b.report.skips["warnings"] == {
    "photo size differs from XML (boxes clipped to the photo)": 1,
    face_mask_detection.BOX_CLIPPED: outside,
    face_mask_detection.CROP_NOT_SQUARE: not_square,
  }
  summary = b.report.summary()
  assert f"warning {outside:>5}  {face_mask_detection.BOX_CLIPPED}" in summary
  assert f"warning {not_square:>5}  {face_mask_detection.CROP_NOT_SQUARE}" in summary
  assert not any("passwd" in r["photo"] or "ghost" in r["photo"] for r in b.rows)


def test_detection_missing_annotations_folder(real_raw_root, tmp_path):
  raw = tmp_path / "raw"
  copy_files(
    real_raw_root / "face-mask-detection",
    raw / "face-mask-detection",
    [f"images/{s}.jpg" for s in DETECTION_BAD_SAMPLE],
  )
  with pytest.raises(image_io.BadInputError, match="missing folder") as error:
    building.prepare(DETECTION, "2classes", data_dir=tmp_path / "tfds", raw_root=raw)
  assert str(raw / "face-mask-detection" / "annotations") in str(error.value)


# ============================================================================ prepare()


def test_prepare_is_idempotent(built, tmp_path):
  b = built(OBSERVATIONS, "grouped")
  stamps = {p: p.stat().st_mtime_ns for p in b.dataset_dir.iterdir()}
  # No raw data is needed (nor read) the second time.
  again = building.prepare(OBSERVATIONS, "grouped", data_dir=b.data_dir, raw_root=tmp_path / "gone")
  assert again == b.report
  assert {p: p.stat().st_mtime_ns for p in b.dataset_dir.iterdir()} == stamps
  assert again.summary() == b.report.summary()


def test_prepare_missing_raw_folder_names_the_path(tmp_path):
  (tmp_path / "raw").mkdir()
  with pytest.raises(FileNotFoundError) as error:
    building.prepare(K12, "official", data_dir=tmp_path / "tfds", raw_root=tmp_path / "raw")
  assert str(tmp_path / "raw" / "face-mask-12k") in str(error.value)


def test_prepare_unknown_dataset(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset"):
    building.prepare("face_mask_nope", "grouped", data_dir=tmp_path)


# ============================================================================ tiny downloads


def test_tiny_download_with_empty_splits_builds(real_raw_root, tmp_path):
  """Two images cannot fill three splits: the empty ones are left out, the rest is built."""
  import tensorflow_datasets as tfds

  files = ("with_mask/1-with-mask.jpg", "without_mask/augmented_image_296.jpg")
  _copy_observations(real_raw_root, tmp_path / "raw", files)
  b = Built(OBSERVATIONS, "grouped", tmp_path / "raw", tmp_path / "tfds")
  assert b.report.total == 2 == len(b.rows)
  filled = {split for split, counts in b.report.counts.items() if sum(counts.values())}
  assert len(filled) < 3
  source = tfds.data_source(f"{OBSERVATIONS}/grouped", data_dir=str(tmp_path / "tfds"))
  assert set(source) == filled
  assert {row["split"] for row in b.rows} == filled


def test_all_files_unusable_is_a_clear_error(tmp_path):
  folder = tmp_path / "raw" / "face-mask-observations"
  for cls in ("with_mask", "without_mask"):
    (folder / cls).mkdir(parents=True)
    (folder / cls / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  with pytest.raises(ValueError, match="no usable examples"):
    building.prepare(OBSERVATIONS, "grouped", data_dir=tmp_path / "tfds", raw_root=tmp_path / "raw")


def test_prepare_rebuilds_when_the_report_is_missing(real_raw_root, tmp_path):
  """A dataset built without its build_report.json (e.g. by `tfds build`, or a build interrupted
  before the report was written) is rebuilt, not a crash."""
  _copy_observations(real_raw_root, tmp_path / "raw")
  first = Built(OBSERVATIONS, "grouped", tmp_path / "raw", tmp_path / "tfds")
  records = array_record_files(first)
  (first.dataset_dir / building.REPORT_FILE).unlink()
  again = building.prepare(OBSERVATIONS, "grouped", data_dir=tmp_path / "tfds", raw_root=tmp_path / "raw")
  assert again.counts == first.report.counts and again.skips == first.report.skips
  assert (first.dataset_dir / building.REPORT_FILE).is_file()
  assert array_record_files(first) == records
