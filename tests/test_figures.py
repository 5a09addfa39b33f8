"""Tests of classifiers.figures: the figures a tiny training run writes, and the plot functions on
3-class and degenerate inputs (no mistakes, one class, no metrics). Every PNG must open with PIL,
have a sensible size and not be blank."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifiers import figures
from vaeaug.data import pipeline

CLASSES3 = ("with_mask", "without_mask", "mask_weared_incorrect")


def check_png(path: Path, min_size=(300, 150)) -> np.ndarray:
  path = Path(path)
  assert path.is_file() and path.stat().st_size > 1000, path
  with Image.open(path) as im:
    assert im.format == "PNG"
    assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1], im.size
    pixels = np.asarray(im.convert("RGB"))
  assert pixels.std() > 5, f"{path.name} looks blank"
  return pixels


def dataset(labels, class_names, size=16, seed=0) -> pipeline.ArrayDataset:
  rng = np.random.default_rng(seed)
  labels = np.asarray(labels, np.int32)
  images = rng.integers(0, 256, (len(labels), size, size, 3), dtype=np.uint8)
  return pipeline.ArrayDataset(
    images=images,
    labels=labels,
    files=[f"f{i}" for i in range(len(labels))],
    groups=[f"g{i}" for i in range(len(labels))],
    class_names=class_names,
  )


# ----------------------------------------------------------------------------- a training run


def squares(n: int, seed: int, size: int = 32) -> pipeline.ArrayDataset:
  """Dim noise with a bright square, top-left for without_mask (1), bottom-right for with_mask (0)."""
  rng = np.random.default_rng(seed)
  labels = (np.arange(n) % 2).astype(np.int32)
  images = rng.integers(0, 60, (n, size, size, 3)).astype(np.uint8)
  for i, label in enumerate(labels):
    r, c = rng.integers(1, 6, 2) + (0 if label == 1 else size // 2)
    images[i, r : r + 10, c : c + 10] = rng.integers(180, 255)
  return pipeline.ArrayDataset(
    images=images,
    labels=labels,
    files=[f"s{seed}/{i}" for i in range(n)],
    groups=[f"{seed}-{i}" for i in range(n)],
    class_names=CLASSES3[:2],
  )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny training run with config.figures on (train.train_and_evaluate then calls
  write_training_figures)."""
  from classifiers import train
  from experiments.configs import classifier

  config = classifier.get_config()
  config.update(
    dict(
      image_size=32,
      model="cnn_bn3",
      epochs=2,
      batch_size=16,
      eval_batch_size=16,
      log_every_steps=2,
      figures=True,
      progress=False,
      gradcam_images=5,
    )
  )
  workdir = tmp_path_factory.mktemp("tiny_figures")
  data = train.Data(train=squares(64, 0), validation=squares(32, 1), test=squares(24, 2))
  summary = train.train_and_evaluate(config, workdir, data=data)
  return workdir, summary, data


def test_training_run_writes_all_figures(trained):
  workdir, summary, data = trained
  written = sorted(p.name for p in (workdir / "figures").iterdir())
  assert written == sorted(f"{name}.png" for name in figures.FIGURE_NAMES)
  for name in figures.FIGURE_NAMES:
    check_png(workdir / "figures" / f"{name}.png")
  with Image.open(workdir / "figures" / "gradcam.png") as im:
    assert im.size[0] >= 5 * 100  # 5 columns of images


def test_write_training_figures_directly(trained, tmp_path):
  """Called again on the restored best state (as a user re-drawing figures would), with the
  threshold moved so that some test images are misclassified, and with Grad-CAM off."""
  from classifiers import train

  workdir, summary, data = trained
  config, state, class_names = train.restore_best(workdir)
  probabilities = np.load(workdir / "test_predictions.npz")["probabilities"]
  (tmp_path / "metrics.jsonl").write_text((workdir / "metrics.jsonl").read_text())
  moved = dict(summary, threshold=float(np.median(probabilities[:, 1])))
  paths = figures.write_training_figures(tmp_path, moved, data.test, probabilities, state, config)
  assert set(paths) == set(figures.FIGURE_NAMES)
  for path in paths.values():
    check_png(path)
  config.gradcam_images = 0
  paths = figures.write_training_figures(tmp_path, summary, data.test, probabilities, state, config)
  check_png(paths["gradcam"], min_size=(200, 100))


# ----------------------------------------------------------------------------- plot functions


def test_plot_curves(tmp_path):
  records = []
  for epoch in range(3):
    for k in (1, 2):
      step = epoch * 4 + 2 * k
      records.append(
        {"split": "train", "step": step, "epoch": epoch, "loss": 1.0 / step, "accuracy": 0.5 + 0.1 * epoch}
      )
    records.append(
      {
        "split": "validation",
        "epoch": epoch,
        "step": 4 * (epoch + 1),
        "loss": 0.9 - 0.1 * epoch,
        "balanced_accuracy": 0.6 + 0.1 * epoch,
        "roc_auc": None if epoch == 0 else 0.8,
        "best_epoch": min(epoch, 1),
      }
    )
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  check_png(figures.plot_curves(path, tmp_path / "curves.png"), min_size=(800, 300))
  # Training logs only (the first epoch still running), and an empty log.
  path.write_text("".join(json.dumps(r) + "\n" for r in records[:2]))
  check_png(figures.plot_curves(path, tmp_path / "curves_train_only.png"))
  path.write_text("")
  check_png(figures.plot_curves(path, tmp_path / "curves_empty.png"), min_size=(200, 100))


def test_plot_roc_binary_and_three_classes(tmp_path):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 50)
  p1 = np.clip(labels * 0.4 + rng.uniform(0, 0.6, 50), 0, 1)
  check_png(figures.plot_roc(labels, p1, tmp_path / "roc2.png", class_names=CLASSES3[:2]), min_size=(400, 400))
  check_png(figures.plot_roc(labels, np.stack([1 - p1, p1], 1), tmp_path / "roc2b.png"))

  labels3 = rng.integers(0, 3, 60)
  logits = rng.normal(size=(60, 3)) + 2.0 * np.eye(3)[labels3]
  p3 = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  check_png(figures.plot_roc(labels3, p3, tmp_path / "roc3.png", class_names=CLASSES3), min_size=(400, 400))
  # A class absent from the labels is left out (noted in the title); one class only: a message.
  check_png(figures.plot_roc(np.where(labels3 == 2, 0, labels3), p3, tmp_path / "roc3_absent.png"))
  check_png(figures.plot_roc(np.zeros(10, int), rng.uniform(size=10), tmp_path / "roc_one.png"), min_size=(200, 100))
  with pytest.raises(ValueError):
    figures.plot_roc(labels, p3[:50], tmp_path / "bad.png", class_names=CLASSES3[:2])


def test_plot_confusion(tmp_path):
  cm3 = np.array([[10, 2, 1], [3, 20, 0], [0, 0, 0]])  # last class absent: a zero row, no NaN
  check_png(figures.plot_confusion(cm3, CLASSES3, tmp_path / "cm3.png"), min_size=(600, 300))
  check_png(figures.plot_confusion(np.array([[5, 1], [2, 7]]), CLASSES3[:2], tmp_path / "cm2.png"))
  with pytest.raises(ValueError):
    figures.plot_confusion(cm3, CLASSES3[:2], tmp_path / "bad.png")


def test_misclassified_gallery(tmp_path):
  labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 1])
  ds = dataset(labels, CLASSES3)
  right = np.eye(3)[labels] * 0.8 + 0.2 / 3
  wrong = right.copy()
  wrong[[1, 4, 8]] = right[[0, 0, 0]]  # three mistakes, all predicted class 0
  check_png(figures.misclassified_gallery(ds, wrong, None, tmp_path / "wrong3.png"))
  check_png(figures.misclassified_gallery(ds, wrong, None, tmp_path / "wrong3_max2.png", max_images=2))
  # Nothing misclassified: a figure that says so.
  check_png(figures.misclassified_gallery(ds, right, None, tmp_path / "none.png"), min_size=(200, 100))
  # Binary: the threshold decides.
  labels2 = np.array([0, 1, 1, 0])
  p1 = np.array([0.2, 0.4, 0.9, 0.6])
  assert np.array_equal(figures.predictions_at(np.stack([1 - p1, p1], 1), 0.5), [0, 0, 1, 1])
  assert np.array_equal(figures.predictions_at(np.stack([1 - p1, p1], 1), 0.3), [0, 1, 1, 1])
  ds2 = dataset(labels2, CLASSES3[:2])
  check_png(figures.misclassified_gallery(ds2, np.stack([1 - p1, p1], 1), 0.5, tmp_path / "wrong2.png"))
  check_png(figures.misclassified_gallery(ds2, np.stack([1 - p1, p1], 1), 0.3, tmp_path / "wrong2b.png"))


def test_no_pyplot_state(tmp_path):
  """Figures never go through pyplot, so nothing accumulates in its global figure registry."""
  before = set(sys.modules["matplotlib.pyplot"].get_fignums()) if "matplotlib.pyplot" in sys.modules else set()
  figures.plot_confusion(np.array([[1, 2], [3, 4]]), CLASSES3[:2], tmp_path / "cm.png")
  after = set(sys.modules["matplotlib.pyplot"].get_fignums()) if "matplotlib.pyplot" in sys.modules else set()
  assert after == before
  source = Path(figures.__file__).read_text()
  assert "import matplotlib.pyplot" not in source and "from matplotlib import pyplot" not in source
