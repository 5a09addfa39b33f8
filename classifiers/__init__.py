"""Face-mask classifiers: models, training, metrics, Grad-CAM, prediction.

The ImageNet architectures live in modules of their own, each with a ``MODELS`` dict; importing the
package registers them in `classifiers.models.MODELS` (here, so that importing any one module first
finds the base classes already defined).
"""

from classifiers import inception, mobilenet, models, vgg

for _module in (mobilenet, vgg, inception):
  models.register(_module.MODELS, _module.__name__)
