"""Kaggle "Face Mask Detection" (andrewmvd) as a TFDS dataset of face crops.

The download is 853 street and crowd photos with Pascal VOC boxes. Each annotated face becomes one
example: the box is grown to a square of side `max(w, h) * (1 + margin)` around its centre
(margin 0.25 by default: forehead, chin and the mask's edges stay in view), then clipped to the
photo, so crops at a photo's edge are not square (the pipeline resizes); the build report counts
them, and boxes reaching past the photo (clipped to it), as warnings. Configs:

  2classes: with_mask, without_mask (mask_weared_incorrect dropped; counted in the build report)
  3classes: with_mask, without_mask, mask_weared_incorrect

The split is ~80/10/10 (per class) by photo group: all faces of one photo, and of near-duplicate photos, are in
one split (vaeaug.data.grouping). Problems in the download are counted skips in the build report:
a bad annotation or photo skips that photo, a bad box or unknown label skips that face.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from vaeaug.data import building, grouping, sources, voc
from vaeaug.data import images as image_io

ALL_CLASSES = ("with_mask", "without_mask", "mask_weared_incorrect")
DEFAULT_MARGIN = 0.25


@dataclasses.dataclass
class DetectionConfig(tfds.core.BuilderConfig):
  class_names: tuple[str, ...] = ALL_CLASSES
  margin: float = DEFAULT_MARGIN


# Build-report warnings (faces kept, counted over the faces of every class, so all configs agree).
BOX_CLIPPED = "face box partly outside the photo (clipped to it)"
CROP_NOT_SQUARE = "face crop clipped at the photo edge (not square)"


def link_keys(photo: str) -> list[str]:
  """All faces of one photo are linked."""
  return [f"photo:{photo}"]


def _annotation_files(folder: Path, skips: building.SkipLog) -> list[Path]:
  if not folder.is_dir():
    raise image_io.BadInputError(folder, "missing folder")
  files = []
  for path in sorted(folder.iterdir()):
    if path.name.startswith("."):
      skips.add(path, "hidden file")
    elif path.suffix.lower() != ".xml":
      skips.add(path, "not an XML file")
    elif not path.is_file():
      skips.add(path, "not a file")
    else:
      files.append(path)
  if not files:
    raise image_io.BadInputError(folder, "no annotation files in folder")
  return files


class FaceMaskDetection(tfds.core.GeneratorBasedBuilder):
  """Face crops from the Kaggle Face Mask Detection photos."""

  VERSION = tfds.core.Version(sources.DATA_VERSION)
  RELEASE_NOTES = {
    sources.DATA_VERSION: "Groups by the aligned near-duplicate signal too (re-crops, re-scalings, colour shifts, photo bursts)",
    "1.0.0": "Square face crops, photo-grouped split.",
  }
  BUILDER_CONFIGS = [
    DetectionConfig(
      name="2classes",
      class_names=ALL_CLASSES[:2],
      description="with_mask / without_mask; mask_weared_incorrect dropped.",
    ),
    DetectionConfig(
      name="3classes", class_names=ALL_CLASSES, description="with_mask / without_mask / mask_weared_incorrect."
    ),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download "Face Mask Detection" by andrewmvd from Kaggle
  (https://www.kaggle.com/datasets/andrewmvd/face-mask-detection) and unpack it so that
  `<manual_dir>/images/*.png|jpg` and `<manual_dir>/annotations/*.xml` exist. vaeaug reads it
  from `<raw_dir>/face-mask-detection/` (--raw_dir or $VAEAUG_RAW_DATA).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=building.image_features(
        self.builder_config.class_names,
        photo=tfds.features.Text(doc="photo file the face was cropped from"),
        face_index=tfds.features.Scalar(dtype=np.int32, doc="index of the <object> in the XML"),
        box=tfds.features.Tensor(
          shape=(4,), dtype=np.int32, doc="face box in the photo, clipped: xmin, ymin, xmax, ymax (exclusive)"
        ),
        crop_box=tfds.features.Tensor(shape=(4,), dtype=np.int32, doc="the crop's box in the photo"),
      ),
      supervised_keys=("image", "label"),
      homepage="https://www.kaggle.com/datasets/andrewmvd/face-mask-detection",
    )

  def _split_generators(self, dl_manager):
    root = Path(dl_manager.manual_dir)
    config = self.builder_config
    skips = building.SkipLog(root)
    images_dir, annotations_dir = root / "images", root / "annotations"
    photo_paths, skipped = image_io.list_images(images_dir)
    for path, reason in skipped:
      skips.add(path, reason)
    listed = {p.name for p in photo_paths}
    skipped_names = {path.name: reason for path, reason in skipped}
    claimed = set()

    photos, faces = [], []
    for xml_path in building.progress(_annotation_files(annotations_dir, skips), "annotations"):
      try:
        annotation = voc.parse_voc(xml_path)
        photo_path = voc.resolve_image(annotation, images_dir)
        if photo_path.name in claimed:
          raise image_io.BadInputError(xml_path, "photo annotated twice", photo_path.name)
        if photo_path.name not in listed:  # e.g. a hidden file: already counted as a listing skip
          raise image_io.BadInputError(
            xml_path, "image missing", f"{photo_path.name}: {skipped_names.get(photo_path.name, 'not listed')}"
          )
        # Claimed before decoding: a photo that cannot be decoded is one skip (of its annotation),
        # not also a "photo without annotation".
        claimed.add(photo_path.name)
        photo = image_io.load_rgb(photo_path)
      except image_io.BadInputError as error:
        skips.add(xml_path, error.problem, error.detail)
        continue
      height, width = photo.shape[:2]
      if annotation.width and annotation.height and (annotation.width, annotation.height) != (width, height):
        skips.warn(xml_path, "photo size differs from XML (boxes clipped to the photo)")
      photo_file = photo_path.relative_to(root).as_posix()
      photos.append(photo)
      for face_index, obj in enumerate(annotation.objects):
        if obj.name not in ALL_CLASSES:
          skips.add(xml_path, "unknown label", f"object {face_index}: {obj.name!r}")
          continue
        try:
          box = voc.clip_box(obj.box, width, height)
        except voc.BoxError as error:
          skips.add(xml_path, error.problem, f"object {face_index}: {obj.box}")
          continue
        xmin, ymin, xmax, ymax = obj.box
        if xmin < 0 or ymin < 0 or xmax > width or ymax > height:
          skips.warn(xml_path, BOX_CLIPPED, f"object {face_index}: {obj.box} in {width}x{height}")
        crop_box = voc.square_crop_box(box, width, height, config.margin)
        x0, y0, x1, y1 = crop_box
        # Kept as is (the datasets must not change), but counted: the pipeline resizes it to a square.
        if x1 - x0 != y1 - y0:
          skips.warn(xml_path, CROP_NOT_SQUARE, f"object {face_index}: crop {crop_box}")
        faces.append(
          dict(
            image=photo[y0:y1, x0:x1],
            class_name=obj.name,
            file=photo_file,
            photo_index=len(photos) - 1,
            face_index=face_index,
            box=box,
            crop_box=crop_box,
          )
        )
    for name in sorted(listed - claimed):
      skips.add(images_dir / name, "photo without annotation")

    # Near-duplicate photos first, then faces: linked by photo group and by their own pixels.
    # Grouping sees the faces of every class, so groups and splits are the same in every config.
    photo_groups = grouping.group_images(photos, params=grouping.PHOTO_PARAMS).groups
    result = grouping.group_images(
      [f["image"] for f in faces], link_keys=[link_keys(photo_groups[f["photo_index"]]) for f in faces]
    )
    # Splits are assigned over the faces of all classes too, then the config's classes are kept.
    all_splits = grouping.assign_splits(result.groups, [ALL_CLASSES.index(f["class_name"]) for f in faces])
    kept = []
    for face, group, split in zip(faces, result.groups, all_splits):
      if face["class_name"] in config.class_names:
        kept.append((face, group, split))
      else:
        skips.add(root / face["file"], f"class not in config: {face['class_name']}")
    split_of = [split for _, _, split in kept]
    labels = [config.class_names.index(face["class_name"]) for face, _, _ in kept]
    examples = [
      {
        "image": image_io.encode_png(np.ascontiguousarray(face["image"])),
        "label": label,
        "file": face["file"],
        "group": group,
        "photo": face["file"],
        "face_index": face["face_index"],
        "box": np.asarray(face["box"], np.int32),
        "crop_box": np.asarray(face["crop_box"], np.int32),
      }
      for (face, group, _), label in zip(kept, labels)
    ]
    self.report = building.make_report(
      self, split_of, labels, config.class_names, [group for _, group, _ in kept], result.kind_counts(), skips
    )
    return building.split_generators(self, examples, split_of, self._generate_examples)

  def _generate_examples(self, examples):
    for example in examples:
      yield f"{example['file']}#{example['face_index']}", example
