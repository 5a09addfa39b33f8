"""Figures of a classifier training run (matplotlib, Agg; PNG files).

``write_training_figures(workdir, summary, test_dataset, test_probabilities, state, config)``
(called by ``classifiers.train.train_and_evaluate`` when ``config.figures``) writes
``workdir/figures/``:

* ``curves.png``: training loss / accuracy per logged step and validation loss, balanced
  accuracy and ROC-AUC per epoch (x axis in epochs), best epoch marked.
* ``roc.png``: test ROC curve with its AUC (one-vs-rest curves for more than two classes).
* ``confusion.png``: test confusion matrix at the validation-chosen threshold, counts and
  row-normalised (each row = one true class, sums to 1).
* ``misclassified.png``: the wrongly classified test images, most confident mistakes first.
* ``gradcam.png``: ``config.gradcam_images`` test images, taken in turn from each class (test sets
  are imbalanced), with Grad-CAM and Grad-CAM++ heatmaps of the predicted class.

Every function builds a standalone ``matplotlib.figure.Figure`` (no pyplot, so no global figure
registry to leak into or to close) and writes it with the Agg renderer. Errors propagate: a bug in a
figure should be seen, not hidden. Empty cases (nothing misclassified, one class only in the labels,
no metrics logged yet) produce a figure that says so.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from classifiers import metrics as metrics_lib

__all__ = [
  "misclassified_gallery",
  "plot_confusion",
  "plot_curves",
  "plot_roc",
  "predictions_at",
  "write_training_figures",
]

DPI = 100
FIGURE_NAMES = ("curves", "roc", "confusion", "misclassified", "gradcam")


# ----------------------------------------------------------------------------- helpers


def _figure(width: float, height: float) -> Figure:
  fig = Figure(figsize=(width, height), dpi=DPI)
  FigureCanvasAgg(fig)  # Agg canvas attached explicitly: independent of the pyplot backend
  return fig


def _save(fig: Figure, out_png: str | os.PathLike) -> Path:
  out = Path(out_png)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, format="png", dpi=DPI)
  fig.clear()
  return out


def _message_figure(out_png, title: str, message: str) -> Path:
  fig = _figure(6, 2.5)
  fig.suptitle(title)
  fig.text(0.5, 0.45, message, ha="center", va="center", fontsize=11, wrap=True)
  return _save(fig, out_png)


def _float(value) -> float:
  """JSON value -> float (None, written for NaN by the metrics log, -> NaN)."""
  return float("nan") if value is None else float(value)


def predictions_at(probabilities, threshold: float | None = 0.5) -> np.ndarray:
  """Predicted labels (N,) from probabilities (N, C): binary ``p1 >= threshold`` (the rule of
  ``classifiers.metrics``), else argmax (threshold ignored)."""
  p = np.asarray(probabilities, np.float64)
  if p.ndim != 2 or p.shape[1] < 2:
    raise ValueError(f"probabilities must have shape (N, C) with C >= 2, got {p.shape}")
  if p.shape[1] == 2:
    return (p[:, 1] >= (0.5 if threshold is None else float(threshold))).astype(np.int64)
  return np.argmax(p, axis=1).astype(np.int64)


# ----------------------------------------------------------------------------- curves


def plot_curves(metrics_jsonl_path: str | os.PathLike, out_png: str | os.PathLike) -> Path:
  """Learning curves from a training ``metrics.jsonl`` (records of ``vaeaug.training.loop``).

  Left: training loss (per logged step) and validation loss (per epoch). Right: training
  accuracy, validation balanced accuracy and ROC-AUC. The x axis is in epochs (a training log at
  step s sits at s / steps_per_epoch); the best epoch (``best_epoch`` of the last validation
  record, 0-based) is marked by a dashed line and markers.
  """
  from vaeaug.training import logs  # noqa: PLC0415

  records = logs.read_metrics(metrics_jsonl_path)
  train = [r for r in records if r.get("split") == "train"]
  validation = [r for r in records if r.get("split") == "validation"]
  if not train and not validation:
    return _message_figure(out_png, "Learning curves", f"no metrics logged in {Path(metrics_jsonl_path).name}")

  # Validation record of epoch e sits at the step ending epoch e: steps_per_epoch from them.
  steps_per_epoch = None
  for r in validation:
    if r.get("step") and r.get("epoch") is not None:
      steps_per_epoch = r["step"] / (r["epoch"] + 1)
      break
  if steps_per_epoch:
    train_x = np.array([r["step"] / steps_per_epoch for r in train])
    x_label = "epoch"
  else:  # no validation yet: steps
    train_x = np.array([float(r["step"]) for r in train])
    x_label = "step"
  val_x = (
    np.array([r["epoch"] + 1.0 for r in validation])
    if steps_per_epoch
    else np.array([float(r["step"]) for r in validation])
  )
  best_epoch = validation[-1].get("best_epoch") if validation else None
  best_index = next((i for i, r in enumerate(validation) if r["epoch"] == best_epoch), None)

  fig = _figure(11, 4.2)
  ax_loss, ax_acc = fig.subplots(1, 2)

  def series(rows, key):
    return np.array([_float(r.get(key)) for r in rows])

  if train:
    ax_loss.plot(train_x, series(train, "loss"), color="tab:blue", alpha=0.8, lw=1.2, label="train loss")
    if any("accuracy" in r for r in train):
      ax_acc.plot(train_x, series(train, "accuracy"), color="tab:blue", alpha=0.8, lw=1.2, label="train accuracy")
  for key, colour, axis, label in (
    ("loss", "tab:orange", ax_loss, "validation loss"),
    ("balanced_accuracy", "tab:orange", ax_acc, "validation balanced acc."),
    ("roc_auc", "tab:green", ax_acc, "validation ROC-AUC"),
  ):
    if validation and any(key in r for r in validation):
      values = series(validation, key)
      axis.plot(val_x, values, "o-", color=colour, ms=4, lw=1.5, label=label)
      if best_index is not None and math.isfinite(values[best_index]):
        axis.plot(val_x[best_index], values[best_index], "*", color="black", ms=12, zorder=5)
  for axis in (ax_loss, ax_acc):
    if best_index is not None:
      axis.axvline(
        val_x[best_index],
        color="grey",
        ls="--",
        lw=1,
        label=f"best epoch ({best_epoch + 1})" if axis is ax_loss else None,
      )
    axis.set_xlabel(x_label)
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
      axis.legend(fontsize=8)
  ax_loss.set_ylabel("loss")
  ax_loss.set_title("Loss")
  ax_acc.set_ylabel("accuracy / AUC")
  ax_acc.set_title("Accuracy")
  ax_acc.set_ylim(-0.02, 1.02)
  fig.tight_layout()
  return _save(fig, out_png)


# ----------------------------------------------------------------------------- ROC


def plot_roc(
  labels,
  prob_positive,
  out_png: str | os.PathLike,
  *,
  class_names: Sequence[str] | None = None,
  title: str = "ROC curve",
) -> Path:
  """ROC curve(s) with the AUC in the legend.

  Binary: ``prob_positive`` is p(class 1) (N,) or the probabilities (N, 2); class 1
  (``without_mask``) is the positive class. More than two classes: probabilities (N, C) give one
  one-vs-rest curve per class present (and absent) in ``labels``; the title shows the macro AUC.
  The AUC is the trapezoid area under ``metrics.roc_curve`` (= the Mann-Whitney ``roc_auc`` of
  ``classification_metrics``). Labels with a single class give a figure saying the ROC is
  undefined.
  """
  p = np.asarray(prob_positive, np.float64)
  y = np.asarray(labels).astype(np.int64)
  if p.ndim == 1:
    p = np.stack([1.0 - p, p], axis=1)
  if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[1] < 2:
    raise ValueError(f"prob_positive must be (N,) or (N, C) with N = {y.shape[0]} labels, got {p.shape}")
  num_classes = p.shape[1]
  names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
  if len(names) != num_classes:
    raise ValueError(f"{len(names)} class names for {num_classes} classes")

  if num_classes == 2:
    curves = [(f"{names[1]} (positive) vs {names[0]}", y == 1, p[:, 1])]
  else:
    curves = [(f"{names[k]} vs rest", y == k, p[:, k]) for k in range(num_classes)]
  usable = [(name, positive, score) for name, positive, score in curves if 0 < positive.sum() < positive.size]
  if not usable:
    present = sorted({names[k] for k in np.unique(y)}) if y.size else []
    return _message_figure(out_png, title, f"ROC undefined: labels hold only {present or 'no examples'}")

  fig = _figure(5.5, 5.2)
  ax = fig.subplots()
  aucs = []
  for name, positive, score in usable:
    fpr, tpr, _ = metrics_lib.roc_curve(positive.astype(np.int64), score)
    auc = float(np.trapezoid(tpr, fpr))
    aucs.append(auc)
    ax.plot(fpr, tpr, lw=1.8, label=f"{name}: AUC {auc:.3f}")
  ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="chance")
  ax.set_xlim(-0.01, 1.01)
  ax.set_ylim(-0.01, 1.01)
  ax.set_aspect("equal")
  ax.set_xlabel("false positive rate")
  ax.set_ylabel("true positive rate")
  skipped = len(curves) - len(usable)
  suffix = f" (macro AUC {np.mean(aucs):.3f})" if num_classes > 2 else ""
  ax.set_title(title + suffix + (f"\n{skipped} class(es) absent from the labels" if skipped else ""), fontsize=10)
  ax.legend(loc="lower right", fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return _save(fig, out_png)


# ----------------------------------------------------------------------------- confusion matrix


def plot_confusion(
  cm, class_names: Sequence[str], out_png: str | os.PathLike, *, title: str = "Confusion matrix"
) -> Path:
  """Confusion matrix (rows = true class, columns = predicted), as counts (left) and
  row-normalised (right: each row divided by its total, i.e. per-class recall on the diagonal;
  a class with no examples gives a row of zeros)."""
  cm = np.asarray(cm)
  names = [str(n) for n in class_names]
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(names):
    raise ValueError(f"confusion matrix must be ({len(names)}, {len(names)}) for {names}, got {cm.shape}")
  totals = cm.sum(axis=1, keepdims=True).astype(np.float64)
  normalised = np.divide(cm, totals, out=np.zeros(cm.shape), where=totals > 0)

  size = max(4.0, 1.3 * len(names) + 2.0)
  fig = _figure(2 * size + 0.8, size)
  axes = fig.subplots(1, 2)
  panels = (
    (axes[0], cm, "counts", lambda v: f"{int(v)}", max(int(cm.max(initial=0)), 1)),
    (axes[1], normalised, "row-normalised (recall)", lambda v: f"{v:.2f}", 1.0),
  )
  for ax, values, name, fmt, vmax in panels:
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    for i in range(values.shape[0]):
      for j in range(values.shape[1]):
        ax.text(
          j,
          i,
          fmt(values[i, j]),
          ha="center",
          va="center",
          fontsize=10,
          color="white" if values[i, j] > 0.6 * vmax else "black",
        )
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(name, fontsize=10)
  fig.suptitle(f"{title} (n = {int(cm.sum())})")
  fig.tight_layout()
  return _save(fig, out_png)


# ----------------------------------------------------------------------------- galleries


def misclassified_gallery(
  dataset, probabilities, threshold: float | None, out_png: str | os.PathLike, max_images: int = 32, *, columns: int = 8
) -> Path:
  """Grid of the wrongly classified images of ``dataset`` (an ``ArrayDataset``), most confident
  mistakes first, each titled with its true label, the predicted label and the probability of
  the predicted label. Predictions: binary ``p1 >= threshold``, otherwise argmax. With no
  mistakes the figure says so."""
  p = np.asarray(probabilities, np.float64)
  labels = np.asarray(dataset.labels).astype(np.int64)
  if p.ndim != 2 or p.shape[0] != len(labels):
    raise ValueError(f"probabilities must be (N, C) with N = {len(labels)}, got {p.shape}")
  names = list(dataset.class_names)
  predicted = predictions_at(p, threshold)
  wrong = np.flatnonzero(predicted != labels)
  shown_threshold = f", threshold {threshold:.3f}" if p.shape[1] == 2 and threshold is not None else ""
  if wrong.size == 0:
    return _message_figure(
      out_png, "Misclassified test images", f"no misclassified images ({len(labels)} classified{shown_threshold})"
    )
  confidence = p[wrong, predicted[wrong]]
  order = wrong[np.argsort(-confidence, kind="stable")][: max(int(max_images), 1)]
  columns = max(1, min(columns, len(order)))
  rows = math.ceil(len(order) / columns)
  fig = _figure(max(1.6 * columns, 5.0), 1.9 * rows + 0.6)
  axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
  for ax in axes:
    ax.axis("off")
  for ax, index in zip(axes, order):
    ax.imshow(dataset.images[index], interpolation="nearest")
    ax.set_title(
      f"true {names[labels[index]]}\npred {names[predicted[index]]} {p[index, predicted[index]]:.2f}",
      fontsize=7,
      color="tab:red",
    )
  fig.suptitle(
    f"Misclassified: {wrong.size} of {len(labels)}{shown_threshold}"
    + (f" (showing {len(order)}, most confident first)" if len(order) < wrong.size else ""),
    fontsize=10,
  )
  fig.tight_layout()
  return _save(fig, out_png)


def gradcam_figure(
  images_uint8, heatmaps: dict[str, np.ndarray], titles: Sequence[str], out_png: str | os.PathLike
) -> Path:
  """Rows: the images, then one row of overlays per heatmap method (``{name: (N, H, W)}``)."""
  from classifiers import gradcam  # noqa: PLC0415

  images = np.asarray(images_uint8)
  n = len(images)
  if n == 0:
    return _message_figure(out_png, "Grad-CAM", "no images")
  rows = 1 + len(heatmaps)
  fig = _figure(max(1.7 * n, 4.0), 1.8 * rows + 0.4)
  axes = fig.subplots(rows, n, squeeze=False)
  for j in range(n):
    axes[0, j].imshow(images[j], interpolation="nearest")
    axes[0, j].set_title(titles[j], fontsize=7)
    for i, (name, maps) in enumerate(heatmaps.items(), start=1):
      axes[i, j].imshow(gradcam.overlay(images[j], np.asarray(maps[j])), interpolation="nearest")
      if j == 0:
        axes[i, j].set_ylabel(name, fontsize=9)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle("Grad-CAM of the predicted class", fontsize=10)
  fig.tight_layout()
  return _save(fig, out_png)


# ----------------------------------------------------------------------------- training run


def _local_model(state):
  """The NNX model of a train state, with arrays this process can compute on alone (figures are
  drawn by process 0 only; in multi-host runs the replicated parameters span all hosts)."""
  import jax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  def local(value):
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
      return jax.numpy.asarray(value.addressable_data(0))
    return value

  return nnx.merge(state.graphdef, jax.tree.map(local, state.params), jax.tree.map(local, state.model_state))


def _round_robin_by_class(labels: np.ndarray, count: int) -> np.ndarray:
  """Indices of the first images of each class, taken in turn, so every class is shown."""
  queues = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
  chosen = []
  while len(chosen) < count and any(queues):
    for queue in queues:
      if queue and len(chosen) < count:
        chosen.append(queue.pop(0))
  return np.asarray(chosen, np.int64)


def write_training_figures(workdir, summary: dict, test_dataset, test_probabilities, state, config) -> dict[str, Path]:
  """Write ``workdir/figures/{curves,roc,confusion,misclassified,gradcam}.png`` for a finished
  run (``summary`` as returned by ``train_and_evaluate``; ``state`` the best-on-validation train
  state). Returns ``{name: path}``."""
  from classifiers import gradcam  # noqa: PLC0415
  from vaeaug.data import pipeline  # noqa: PLC0415

  workdir = Path(workdir)
  out = workdir / "figures"
  out.mkdir(parents=True, exist_ok=True)
  names = list(summary.get("class_names") or test_dataset.class_names)
  probabilities = np.asarray(test_probabilities, np.float64)
  labels = np.asarray(test_dataset.labels).astype(np.int64)
  threshold = summary.get("threshold")
  threshold = 0.5 if threshold is None else float(threshold)
  predicted = predictions_at(probabilities, threshold)
  binary = probabilities.shape[1] == 2
  at = f" at threshold {threshold:.3f}" if binary else ""
  paths = {}

  metrics_path = workdir / "metrics.jsonl"
  if metrics_path.is_file():
    paths["curves"] = plot_curves(metrics_path, out / "curves.png")
  else:
    paths["curves"] = _message_figure(out / "curves.png", "Learning curves", "no metrics.jsonl in the workdir")
  paths["roc"] = plot_roc(
    labels, probabilities[:, 1] if binary else probabilities, out / "roc.png", class_names=names, title="Test ROC"
  )
  cm = metrics_lib.confusion_matrix(labels, predicted, len(names))
  paths["confusion"] = plot_confusion(cm, names, out / "confusion.png", title=f"Test confusion matrix{at}")
  paths["misclassified"] = misclassified_gallery(test_dataset, probabilities, threshold, out / "misclassified.png")

  count = min(int(config.get("gradcam_images", 8) or 0), len(test_dataset))
  if count <= 0:
    paths["gradcam"] = _message_figure(
      out / "gradcam.png", "Grad-CAM", "no images (config.gradcam_images = 0 or empty test set)"
    )
    return paths
  chosen = _round_robin_by_class(labels, count)
  images = np.asarray(test_dataset.images[chosen])
  x = pipeline.to_float(images, config.normalization)  # = train._prepare_images without augmentation
  model = _local_model(state)
  targets = predicted[chosen].astype(np.int32)
  heatmaps = {
    "Grad-CAM": np.asarray(gradcam.grad_cam(model, x, targets)),
    "Grad-CAM++": np.asarray(gradcam.grad_cam(model, x, targets, plus_plus=True)),
  }
  titles = [f"true {names[labels[i]]}\npred {names[predicted[i]]} {probabilities[i, predicted[i]]:.2f}" for i in chosen]
  paths["gradcam"] = gradcam_figure(images, heatmaps, titles, out / "gradcam.png")
  return paths
