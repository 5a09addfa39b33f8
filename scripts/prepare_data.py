r"""Build the face-mask TFDS datasets from the user's downloads (the `vaeaug-prepare` command).

  python scripts/prepare_data.py                                  # all datasets, all configs
  python scripts/prepare_data.py --datasets=face_mask12k --raw_dir=~/downloads --data_dir=~/tfds

The command lives in vaeaug/data/prepare.py; --help lists its flags.
"""

from vaeaug.data import prepare

if __name__ == "__main__":
  prepare.run()
