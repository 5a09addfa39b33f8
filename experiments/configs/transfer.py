r"""Fine-tuning an ImageNet backbone on face masks, the published baselines' recipe.

  # timm / Hugging Face: the folder of e.g. timm/mobilenetv2_100.ra_in1k (model.safetensors, config.json)
  vaeaug-train-classifier --config=transfer --workdir=/tmp/mnv2 \
      --config.pretrained=~/models/mobilenetv2_100/model.safetensors
  # then the last 3 blocks too, at a tenth of the learning rate:
  vaeaug-train-classifier --config=transfer:finetune --workdir=/tmp/mnv2_ft --config.pretrained=...
  # torchvision's download (read with PyTorch's weights_only loader; needs `pip install torch`):
  vaeaug-train-classifier --config=transfer --workdir=/tmp/r50 --config.model=resnet50 \
      --config.pretrained=~/.cache/torch/hub/checkpoints/resnet50-11ad3fa6.pth

Presets: "frozen" (default: frozen backbone with batch norm in inference mode, a new head), "finetune"
(the last 3 blocks unfrozen at learning_rate x 0.1), "full" (everything trains at learning_rate 1e-4).
The input size and normalisation come from the checkpoint (`config.json` beside it, else the
architecture's published defaults: 224 px and ImageNet mean / std; 299 px and [-1, 1] for Inception)
unless set here; model options a checkpoint family needs (torchvision MobileNetV3's batch-norm
epsilon) are set from it. Model names: mobilenet_v2, mobilenet_v3_small, mobilenet_v3_large,
efficientnet_b0, vgg19, vgg19_bn, inception_v3, resnet18 / 34 / 50 (README: which timm / torchvision
checkpoints fit).

Expected result: no ImageNet weights can be downloaded where this project was built, so no accuracy
is claimed for real ImageNet checkpoints here; the README's transfer section runs this config on a
randomly initialised timm checkpoint to show the path works end to end (one epoch, 224 px, 2-core
CPU: a few minutes).
"""

import ml_collections

from experiments.configs import classifier

PRESETS = ("frozen", "finetune", "full")


def get_config(preset: str = "frozen"):
  if preset not in PRESETS:
    raise ValueError(f"unknown transfer preset {preset!r}; choose one of {PRESETS}")
  config = classifier.get_config()
  config.model = "mobilenet_v2"
  config.image_size = ml_collections.config_dict.placeholder(int)  # None: the checkpoint's
  config.normalization = ml_collections.config_dict.placeholder(str)  # None: the checkpoint's
  config.freeze = "backbone"
  config.unfreeze_blocks = 3 if preset == "finetune" else 0
  config.backbone_learning_rate_scale = 0.1
  config.learning_rate = 1e-3
  if preset == "full":
    config.freeze = "none"
    config.learning_rate = 1e-4
  config.batch_size = 32
  config.epochs = 10
  config.patience = 3
  config.augment = "flip"
  return config
