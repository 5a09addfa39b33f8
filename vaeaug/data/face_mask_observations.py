"""Prajna Bhandary's face-mask "observations" dataset as a TFDS dataset.

Masks were pasted onto face photos by a script, and `augmented_image_*` files are mirrored copies
of other images, so a naive random split leaks. The `grouped` config splits ~80/10/10 by
near-duplicate group (vaeaug.data.grouping): an image, its mirror copies, re-encodes and the masked
version made from it share a group and a split.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow_datasets as tfds

from vaeaug.data import building, sources

CLASS_NAMES = ("with_mask", "without_mask")


class FaceMaskObservations(tfds.core.GeneratorBasedBuilder):
  """Face-mask observations (1,376 images), with_mask / without_mask."""

  VERSION = tfds.core.Version(sources.DATA_VERSION)
  RELEASE_NOTES = {
    sources.DATA_VERSION: "Groups by the aligned near-duplicate signal too (re-crops, re-scalings, colour shifts)",
    "1.0.0": "Leak-free grouped split.",
  }
  BUILDER_CONFIGS = [
    tfds.core.BuilderConfig(name="grouped", description="Leak-free ~80/10/10 split by near-duplicate group."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the `data/` folder of Prajna Bhandary's face-mask-detector repository
  (https://github.com/prajnasb/observations, experiements/data) so that
  `<manual_dir>/with_mask/*.jpg` and `<manual_dir>/without_mask/*.jpg` exist. vaeaug reads it from
  `<raw_dir>/face-mask-observations/` (--raw_dir or $VAEAUG_RAW_DATA).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=building.image_features(CLASS_NAMES),
      supervised_keys=("image", "label"),
      homepage="https://github.com/prajnasb/observations",
    )

  def _split_generators(self, dl_manager):
    root = Path(dl_manager.manual_dir)
    skips = building.SkipLog(root)
    records = []
    for label, class_name in enumerate(CLASS_NAMES):
      paths = building.list_folder_images(root / class_name, skips)
      for path, image in building.decode_images(paths, skips, class_name):
        records.append(dict(image=image, label=label, file=path.relative_to(root).as_posix()))
    return building.grouped_split_generators(self, records, CLASS_NAMES, skips)

  def _generate_examples(self, examples):
    for example in examples:
      yield example["file"], example
