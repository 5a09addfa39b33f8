"""Grad-CAM and Grad-CAM++ class-activation heatmaps for the classifiers of `classifiers.models`.

    model = state.model()                                   # an NNX classifier
    x = pipeline.to_float(images_uint8, config.normalization)
    maps = grad_cam(model, x)                               # (N, H, W) in [0, 1], predicted class
    maps_pp = grad_cam(model, x, target_class=0, plus_plus=True)
    picture = overlay(images_uint8[0], maps[0])             # uint8 RGB blend

Both methods look at the last convolutional feature map ``A = model.features(x)`` (N, h, w, K)
and the gradient ``g = dS/dA`` of the target class *score* ``S`` computed by
``model.classify(A)`` (inference mode: BatchNorm running averages, no dropout):

* score: softmax head -> the target class's logit. Binary head (one logit ``z`` = the class-1
  logit, p(class 1) = sigmoid(z)) -> ``S = z`` for class 1 and ``S = -z`` for class 0 (the
  logit of class 0 against class 1), so the two classes' maps explain opposite evidence.
* target: ``None`` -> the predicted class (binary: ``z >= 0``, i.e. p(class 1) >= 0.5; softmax:
  argmax), an int for every image, or an int array (N,).
* Grad-CAM (Selvaraju et al. 2017): ``w_k = mean_ij g_kij``; map ``= ReLU(sum_k w_k A_k)``.
* Grad-CAM++ (Chattopadhyay et al. 2018), the closed form of the paper's implementation with the
  exponential score ``Y = exp(S)``: with ``g`` the first derivative the 2nd and 3rd derivatives of
  ``Y`` are ``exp(S) g^2`` and ``exp(S) g^3``, so
  ``alpha_kij = g^2 / (2 g^2 + sum_ab A_kab * g^3)`` (0 where the denominator is 0),
  ``w_k = sum_ij alpha_kij * ReLU(g_kij)`` and map ``= ReLU(sum_k w_k A_k)``. The common factor
  ``exp(S)`` cancels in ``alpha`` and only scales the weights of an image by a positive constant,
  which the per-image normalisation removes, so it is left out (it would overflow for large
  scores).

Maps are upsampled bilinearly (``jax.image.resize``) to the input's H x W, then divided by
their per-image maximum: values lie in [0, 1], and an all-zero map (no positive evidence, or a
model whose score does not depend on the features) stays all zero - never NaN.

``grad_cam`` is jit-compiled (``nnx.jit``; one compilation per model structure, input shape,
target kind and method) and is itself traceable, so it can be called inside a caller's
``jax.jit`` / ``nnx.jit`` as well.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["class_scores", "grad_cam", "overlay", "predicted_class"]


def class_scores(logits: jax.Array) -> jax.Array:
  """Per-class scores (N, C) whose gradients Grad-CAM explains: the logits of a softmax head,
  ``[-z, z]`` for a binary head's single logit ``z``."""
  if logits.shape[-1] == 1:
    return jnp.concatenate([-logits, logits], axis=-1)
  return logits


def predicted_class(logits: jax.Array) -> jax.Array:
  """Predicted class (N,) int32 at the default decision rule: binary ``z >= 0`` (p >= 0.5),
  softmax argmax (ties -> lowest index)."""
  if logits.shape[-1] == 1:
    return (logits[:, 0] >= 0).astype(jnp.int32)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def _channel_weights(activations: jax.Array, grads: jax.Array, plus_plus: bool) -> jax.Array:
  """(N, K) channel weights from the feature map A and dS/dA, both (N, h, w, K)."""
  if not plus_plus:
    return jnp.mean(grads, axis=(1, 2))
  grads_2 = grads * grads
  grads_3 = grads_2 * grads
  sum_activations = jnp.sum(activations, axis=(1, 2), keepdims=True)
  denominator = 2.0 * grads_2 + sum_activations * grads_3
  safe = jnp.where(denominator != 0, denominator, 1.0)
  alpha = jnp.where(denominator != 0, grads_2 / safe, 0.0)
  return jnp.sum(alpha * jax.nn.relu(grads), axis=(1, 2))


def _normalise(maps: jax.Array) -> jax.Array:
  """Divide each map (N, H, W) by its maximum; all-zero maps stay zero."""
  peak = jnp.max(maps, axis=(1, 2), keepdims=True)
  scaled = maps / jnp.where(peak > 0, peak, 1.0)
  return jnp.clip(jnp.where(peak > 0, scaled, 0.0), 0.0, 1.0)


def _grad_cam(model, images, targets, plus_plus: bool):
  """Traceable core; ``targets`` is None or an int array (N,)."""
  activations = model.features(images, train=False)

  def target_score(features):
    logits = model.classify(features, train=False)
    scores = class_scores(logits)
    chosen = jax.lax.stop_gradient(predicted_class(logits)) if targets is None else targets
    picked = jnp.take_along_axis(scores, chosen[:, None], axis=1)[:, 0]
    # Images are independent at inference, so the gradient of the sum is each image's own.
    return jnp.sum(picked)

  grads = jax.grad(target_score)(activations)
  activations = activations.astype(jnp.float32)
  grads = grads.astype(jnp.float32)
  weights = _channel_weights(activations, grads, plus_plus)  # (N, K)
  maps = jax.nn.relu(jnp.einsum("nhwk,nk->nhw", activations, weights))
  n, height, width = images.shape[0], images.shape[1], images.shape[2]
  maps = jax.image.resize(maps, (n, height, width), method="bilinear")
  return _normalise(jax.nn.relu(maps))


_grad_cam_jit = nnx.jit(_grad_cam, static_argnames=("plus_plus",))


def grad_cam(model, images_float, target_class=None, *, plus_plus: bool = False) -> jax.Array:
  """Heatmaps (N, H, W) float32 in [0, 1] of the classifier ``model`` for float NHWC images
  (normalised as in training), for the class ``target_class`` (None = predicted; an int for all
  images; or an int array (N,)). ``plus_plus`` selects Grad-CAM++ weights. See the module
  docstring for the exact definitions."""
  images = jnp.asarray(images_float)
  if images.ndim != 4:
    raise ValueError(f"grad_cam expects NHWC images, got shape {images.shape}")
  targets = None
  if target_class is not None:
    num_classes = int(model.num_classes)
    if isinstance(target_class, (int, np.integer)) and not isinstance(target_class, bool):
      if not 0 <= int(target_class) < num_classes:
        raise ValueError(f"target_class must lie in [0, {num_classes}), got {target_class}")
      targets = jnp.full((images.shape[0],), int(target_class), jnp.int32)
    else:
      targets = jnp.asarray(target_class)
      if targets.shape != (images.shape[0],) or not jnp.issubdtype(targets.dtype, jnp.integer):
        raise ValueError(
          f"target_class must be None, an int or an int array of shape "
          f"({images.shape[0]},), got {targets.dtype} {targets.shape}"
        )
      if (
        not isinstance(targets, jax.core.Tracer)
        and targets.size
        and (int(targets.min()) < 0 or int(targets.max()) >= num_classes)
      ):
        raise ValueError(f"target_class values must lie in [0, {num_classes})")
      targets = targets.astype(jnp.int32)
  if isinstance(images, jax.core.Tracer):  # already inside a caller's jit: trace inline
    return _grad_cam(model, images, targets, plus_plus)
  return _grad_cam_jit(model, images, targets, plus_plus=bool(plus_plus))


@functools.cache
def _colormap(name: str):
  import matplotlib  # noqa: PLC0415  (colormaps only; no pyplot state)

  return matplotlib.colormaps[name]


def overlay(image_uint8, heatmap, *, alpha: float = 0.45, colormap: str = "jet") -> np.ndarray:
  """Blend a heatmap (h, w) in [0, 1] over a uint8 RGB image (H, W, 3) with a matplotlib
  colormap: ``(1 - alpha) * image + alpha * colormap(heatmap)``, as uint8 RGB (H, W, 3). The
  heatmap is resized bilinearly to the image when their sizes differ (e.g. a 64 px model's map
  over the original photo). Grey images (H, W) / (H, W, 1) are repeated to RGB."""
  image = np.asarray(image_uint8)
  if image.dtype != np.uint8:
    raise TypeError(f"overlay expects a uint8 image, got {image.dtype}")
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"overlay expects an (H, W, 3) image, got shape {image.shape}")
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
  heat = np.asarray(heatmap, np.float32)
  if heat.ndim != 2:
    raise ValueError(f"overlay expects an (h, w) heatmap, got shape {heat.shape}")
  heat = np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0)
  if heat.shape != image.shape[:2]:
    from PIL import Image  # noqa: PLC0415

    heat = np.asarray(
      Image.fromarray(heat).resize((image.shape[1], image.shape[0]), Image.Resampling.BILINEAR), np.float32
    )
    heat = np.clip(heat, 0.0, 1.0)
  colours = _colormap(colormap)(heat)[..., :3].astype(np.float32) * 255.0
  blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
  return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
