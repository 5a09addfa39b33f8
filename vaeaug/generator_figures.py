"""Figures of a generator workdir: reconstructions, samples per class, latent interpolations, and
loss curves (`figures/*.png`). Standalone matplotlib Figures with the Agg renderer (no pyplot)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vaeaug import synthesis
from vaeaug.data import pipeline
from vaeaug.models import noise as noise_lib


def _save(figure: Figure, path: Path) -> Path:
  FigureCanvasAgg(figure)
  figure.savefig(path, dpi=100, bbox_inches="tight")
  return path


def image_grid(rows: list[np.ndarray], row_titles: list[str], title: str, path: Path) -> Path:
  """One row of images per entry of `rows` (each (n, H, W, 3) uint8 or float in [0, 1])."""
  columns = max(len(row) for row in rows)
  figure = Figure(figsize=(1.1 * columns + 1.2, 1.15 * len(rows) + 0.5))
  figure.suptitle(title)
  for r, (images, row_title) in enumerate(zip(rows, row_titles)):
    for c in range(columns):
      axis = figure.add_subplot(len(rows), columns, r * columns + c + 1)
      axis.set_xticks([])
      axis.set_yticks([])
      if c < len(images):
        image = np.asarray(images[c])
        axis.imshow(image if image.dtype == np.uint8 else np.clip(image, 0, 1))
      else:
        axis.axis("off")
      if c == 0:
        axis.set_ylabel(row_title, fontsize=8)
  return _save(figure, path)


def _first_per_class(dataset: pipeline.ArrayDataset, per_class: int) -> np.ndarray:
  return np.concatenate([np.flatnonzero(dataset.labels == c)[:per_class] for c in range(dataset.num_classes)])


def reconstruction_figure(
  model, dataset: pipeline.ArrayDataset, noise: noise_lib.NoiseConfig, path: Path, per_class: int = 6
) -> Path:
  index = _first_per_class(dataset, per_class)
  images = pipeline.to_float(dataset.images[index])
  labels = jnp.asarray(dataset.labels[index]) if model.conditional else None
  rows, titles = [images], ["input"]
  if model.kind == "dae":
    noisy = noise_lib.corrupt(jnp.asarray(images), jax.random.key(0), noise)
    rows.append(np.asarray(noisy))
    titles.append(f"noisy ({noise.kind})")
    images = noisy
  rows.append(np.asarray(model.reconstruct(jnp.asarray(images), train=False, labels=labels)))
  titles.append("reconstruction")
  names = ", ".join(f"{per_class} {name}" for name in dataset.class_names)
  return image_grid(rows, titles, f"Validation reconstructions ({names})", path)


def samples_figure(
  model, train: pipeline.ArrayDataset, noise: noise_lib.NoiseConfig, path: Path, per_class: int = 10
) -> Path:
  """Samples per class with the kind's natural sampler: prior (CVAE), posterior jitter (VAE),
  denoised real images (DAE)."""
  sampler = {"cvae": "prior", "vae": "posterior_jitter", "dae": "denoise"}[model.kind]
  options = {"noise": noise} if sampler == "denoise" else {}
  synthetic = synthesis.synthesize(model, train, per_class, sampler, seed=0, **options)
  rows = [synthetic.images[synthetic.labels == c] for c in range(len(train.class_names))]
  return image_grid(rows, list(train.class_names), f"{model.kind.upper()} samples ({sampler})", path)


def interpolation_figure(model, dataset: pipeline.ArrayDataset, path: Path, strips: int = 4, steps: int = 8) -> Path:
  """Decoded straight lines in latent space between two images of the same class."""
  rows, titles = [], []
  for strip in range(strips):
    label = strip % dataset.num_classes
    a, b = np.flatnonzero(dataset.labels == label)[[strip, strip + strips]]
    x = jnp.asarray(pipeline.to_float(dataset.images[[a, b]]))
    labels = jnp.asarray([label, label]) if model.conditional else None
    z, _ = model.encode(x, train=False, labels=labels)
    t = jnp.linspace(0.0, 1.0, steps)[:, None]
    path_z = (1 - t) * z[0] + t * z[1]
    decoded = model.generate(path_z, labels=jnp.full((steps,), label) if model.conditional else None)
    rows.append(np.asarray(decoded))
    titles.append(dataset.class_names[label])
  return image_grid(rows, titles, "Latent interpolation (validation pairs of one class)", path)


def curves_figure(metrics_path: Path, path: Path) -> Path:
  records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
  train = [r for r in records if r.get("split") == "train"]
  validation = [r for r in records if r.get("split") == "validation"]
  figure = Figure(figsize=(11, 3.8))
  for position, names in enumerate((("loss", "nll"), ("kl", "beta"))):
    axis = figure.add_subplot(1, 2, position + 1)
    for name in names:
      points = [(r["step"], r[name]) for r in train if r.get(name) is not None]
      if points:
        axis.plot(*zip(*points), label=f"train {name}")
      points = [(r["step"], r[name]) for r in validation if r.get(name) is not None]
      if points:
        axis.plot(*zip(*points), marker="o", label=f"validation {name}")
    axis.set_xlabel("step")
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
      axis.legend(fontsize=8)
  figure.suptitle("Loss terms (nats per image)")
  return _save(figure, path)


def write_generator_figures(workdir: Path, state, data, config) -> dict[str, Path]:
  out = Path(workdir) / "figures"
  out.mkdir(parents=True, exist_ok=True)
  model = state.model()
  noise = noise_lib.NoiseConfig(
    kind=config.noise.kind, sigma=config.noise.sigma, p=config.noise.p, mask_fraction=config.noise.mask_fraction
  )
  return {
    "reconstructions": reconstruction_figure(model, data.validation, noise, out / "reconstructions.png"),
    "samples": samples_figure(model, data.train, noise, out / "samples.png"),
    "interpolation": interpolation_figure(model, data.validation, out / "interpolation.png"),
    "curves": curves_figure(Path(workdir) / "metrics.jsonl", out / "curves.png"),
  }
