"""Face Mask ~12K Images Dataset (Kaggle, ashishjangra27) as a TFDS dataset.

Configs:
  official: the split the download ships (Train/Validation/Test). It leaks: most masked images are
    `Augmented_<N>_*` variants of ~900 source photos, spread over all three splits, and exact
    duplicates cross the splits too. Kept so that published numbers can be reproduced and audited.
  grouped: a leak-free ~80/10/10 split of the same 11,792 images: every near-duplicate group
    (vaeaug.data.grouping, plus all `Augmented_<N>_*` files of one source N) lies in one split.

Every example also records `official_split`, where the download put it.
"""

from __future__ import annotations

import re
from pathlib import Path

import tensorflow_datasets as tfds

from vaeaug.data import building, sources

CLASS_NAMES = ("with_mask", "without_mask")
_CLASS_FOLDERS = {"WithMask": 0, "WithoutMask": 1}
_OFFICIAL_SPLITS = {"Train": "train", "Validation": "validation", "Test": "test"}
_ROOT = "Face Mask Dataset"
_AUGMENTED = re.compile(r"^Augmented_(\d+)_")


def link_keys(file: str) -> list[str]:
  """Name rule: `WithMask/Augmented_<N>_*` files are augmentations of one source photo N."""
  parts = Path(file).parts
  match = _AUGMENTED.match(parts[-1])
  return [f"{parts[-2]}/Augmented_{match.group(1)}"] if match else []


class FaceMask12k(tfds.core.GeneratorBasedBuilder):
  """Face Mask ~12K: 64x64 face images, with_mask / without_mask."""

  VERSION = tfds.core.Version(sources.DATA_VERSION)
  RELEASE_NOTES = {
    sources.DATA_VERSION: "Groups by the aligned near-duplicate signal too (re-crops, re-scalings, colour shifts)",
    "1.0.0": "Official and leak-free grouped splits.",
  }
  BUILDER_CONFIGS = [
    tfds.core.BuilderConfig(name="official", description="The split shipped with the download (leaky)."),
    tfds.core.BuilderConfig(name="grouped", description="Leak-free ~80/10/10 split by near-duplicate group."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download "Face Mask ~12K Images Dataset" by Ashish Jangra from Kaggle
  (https://www.kaggle.com/datasets/ashishjangra27/face-mask-12k-images-dataset) and unpack it so
  that `<manual_dir>/Face Mask Dataset/{Train,Validation,Test}/{WithMask,WithoutMask}/*.png|jpg`
  exist. vaeaug reads it from `<raw_dir>/face-mask-12k/` (--raw_dir or $VAEAUG_RAW_DATA).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=building.image_features(CLASS_NAMES, official_split=tfds.features.Text(doc="split in the download")),
      supervised_keys=("image", "label"),
      homepage="https://www.kaggle.com/datasets/ashishjangra27/face-mask-12k-images-dataset",
    )

  def _split_generators(self, dl_manager):
    root = Path(dl_manager.manual_dir)
    skips = building.SkipLog(root)
    records = []
    for folder, official in _OFFICIAL_SPLITS.items():
      for class_folder, label in _CLASS_FOLDERS.items():
        paths = building.list_folder_images(root / _ROOT / folder / class_folder, skips)
        for path, image in building.decode_images(paths, skips, f"{folder}/{class_folder}"):
          records.append(
            dict(image=image, label=label, official_split=official, file=path.relative_to(root).as_posix())
          )
    official = self.builder_config.name == "official"
    return building.grouped_split_generators(
      self,
      records,
      CLASS_NAMES,
      skips,
      link_keys=[link_keys(r["file"]) for r in records],
      fixed_splits=[r["official_split"] for r in records] if official else None,
      extra_fields=("official_split",),
    )

  def _generate_examples(self, examples):
    for example in examples:
      yield example["file"], example
