r"""Classifier training: a face-mask CNN or ResNet, model selection on validation, test scored once.

  vaeaug-train-classifier --workdir=/tmp/cnn96 --config=classifier
  vaeaug-train-classifier --workdir=/tmp/r18 --config=classifier \
      --config.model=resnet18_small --config.dataset=face_mask12k/grouped

Overrides: --config.x=y for any field below (dataset, image_size, model, optimizer, epochs,
n_per_class, seed, augment, ...). Expected result of the default (cnn96 on face_mask_detection
2classes, 64 px, about 130 img/s on a 2-core CPU, so 5-10 minutes): test balanced accuracy about
.94 and ROC-AUC about .98 at the validation-chosen threshold (3 seeds with --config.epochs=15
--config.patience=5: .940 +- .005); see the README's classifier table.
"""

import ml_collections

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.model = "cnn96"  # see classifiers.models.MODELS
  config.model_overrides = ml_collections.ConfigDict()  # e.g. {"num_filters": 32} for ResNets
  config.head = "auto"  # auto: binary (one sigmoid logit) for 2 classes, softmax otherwise

  config.label_smoothing = 0.0
  config.class_weights = "none"  # none, balanced, or comma-separated weights per class "1,3"
  config.augment = "none"  # preset of vaeaug.data.augment.PRESETS (none, flip, keras, standard)
  config.mixup_alpha = 0.0  # > 0: mixup of every training batch, weights ~ Beta(alpha, alpha)

  # Model selection on validation only: the epoch with the best `selection_metric` is kept, and
  # training stops after `patience` epochs without an improvement of at least `min_delta`.
  # ROC-AUC is threshold-free and far steadier than accuracy at small n; the decision threshold
  # is then chosen on validation to maximise `threshold_metric` and applied once to test.
  config.selection_metric = "roc_auc"
  config.selection_mode = "max"
  config.patience = 8
  config.min_delta = 0.0
  config.threshold_metric = "balanced_accuracy"

  # Transfer learning (classifiers.transfer; experiments/configs/transfer.py): start from an ImageNet
  # checkpoint of the same architecture, a timm / Hugging Face .safetensors or a torchvision .pth.
  config.pretrained = ml_collections.config_dict.placeholder(str)
  config.pretrained_source = "auto"  # the checkpoint's naming: auto, timm, torchvision
  config.freeze = "none"  # none: all trains; backbone: frozen backbone (BN in inference mode), new head
  config.unfreeze_blocks = 0  # with freeze=backbone: the last k backbone blocks train too ...
  config.backbone_learning_rate_scale = 0.1  # ... at learning_rate times this

  config.figures = True
  config.gradcam_images = 8
  return config
