r"""A timm or torchvision model with random weights, saved as a checkpoint file (the
`vaeaug-random-checkpoint` command): the transfer-learning path tried end to end where no model hub
can be reached. Needs PyTorch and timm (the `test` extra).

  vaeaug-random-checkpoint --model=mobilenetv2_100 --out=/tmp/mnv2/model.safetensors
  vaeaug-random-checkpoint --library=torchvision --model=resnet50 --out=/tmp/resnet50.pth

A `.safetensors` file gets timm's `config.json` beside it (input size, mean, std), as a Hugging Face
download has; a `.pth` file is a plain state dict, as torchvision's downloads are. The weights are
random, so a classifier fine-tuned from them shows the path works, not what ImageNet features give.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags

from vaeaug import cli

_MODEL = flags.DEFINE_string("model", "mobilenetv2_100", "The library's model name (timm: mobilenetv2_100, ...).")
_LIBRARY = flags.DEFINE_enum("library", "timm", ["timm", "torchvision"], "Where the architecture comes from.")
_OUT = flags.DEFINE_string("out", None, "Checkpoint file to write: .safetensors or .pth.", required=True)
_SEED = flags.DEFINE_integer("seed", 0, "torch.manual_seed for the random initialisation.")


def main(argv):
  del argv
  out = Path(_OUT.value).expanduser()
  if out.suffix not in (".safetensors", ".pth"):
    raise app.UsageError(f"--out={_OUT.value}: give a .safetensors or .pth file name")
  try:
    import torch

    from experiments import torch_reference
  except ImportError:
    print("error: vaeaug-random-checkpoint needs PyTorch and timm: pip install -e '.[test]'", file=sys.stderr)
    sys.exit(2)
  torch.manual_seed(_SEED.value)
  build = torch_reference.timm_model if _LIBRARY.value == "timm" else torch_reference.torchvision_model
  try:
    module = build(_MODEL.value)
  except (RuntimeError, AttributeError) as error:  # timm: "Unknown model"; torchvision: no such function
    print(f"error: --model={_MODEL.value}: not a {_LIBRARY.value} model ({error})", file=sys.stderr)
    sys.exit(2)
  state = {k: v.contiguous() for k, v in module.state_dict().items()}
  out.parent.mkdir(parents=True, exist_ok=True)
  if out.suffix == ".safetensors":
    from safetensors.torch import save_file

    save_file(state, str(out))
    cfg = getattr(module, "pretrained_cfg", None)
    if cfg:
      keys = ("input_size", "mean", "std", "num_classes")
      config = {"architecture": _MODEL.value, "pretrained_cfg": {k: cfg[k] for k in keys if k in cfg}}
      (out.parent / "config.json").write_text(json.dumps(config, indent=1) + "\n")
  else:
    torch.save(state, out)
  print(f"{out}: {len(state)} tensors of {_LIBRARY.value} {_MODEL.value}, random weights (seed {_SEED.value})")


def run():
  cli.run(main, __name__)


if __name__ == "__main__":
  run()
