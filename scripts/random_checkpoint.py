r"""A timm / torchvision model with random weights saved as a checkpoint (the `vaeaug-random-checkpoint` command).

  python scripts/random_checkpoint.py --model=mobilenetv2_100 --out=/tmp/mnv2/model.safetensors

The command lives in experiments/random_checkpoint.py; --help lists its flags.
"""

from experiments import random_checkpoint

if __name__ == "__main__":
  random_checkpoint.run()
