"""Figures of a generator workdir: reconstructions, samples per class, latent interpolations, and
loss curves (`figures/*.png`). Standalone matplotlib Figures with the Agg renderer (no pyplot).
`tensorboard_grids` makes the same reconstructions and samples as plain image grids for TensorBoard
during training."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vaeaug import kinds, synthesis
from vaeaug.data import pipeline
from vaeaug.models import noise as noise_lib


def _figure(figsize: tuple[float, float]):
  # matplotlib only when a figure is drawn: the TensorBoard grids of a training run need none.
  from matplotlib.figure import Figure

  return Figure(figsize=figsize)


def _save(figure, path: Path) -> Path:
  from matplotlib.backends.backend_agg import FigureCanvasAgg

  FigureCanvasAgg(figure)
  figure.savefig(path, dpi=100, bbox_inches="tight")
  return path


def image_grid(rows: list[np.ndarray], row_titles: list[str], title: str, path: Path) -> Path:
  """One row of images per entry of `rows` (each (n, H, W, 3) uint8 or float in [0, 1])."""
  columns = max(len(row) for row in rows)
  figure = _figure((1.1 * columns + 1.2, 1.15 * len(rows) + 0.5))
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


def pairs_figure(
  originals: np.ndarray, counterfactuals: np.ndarray, titles, path: Path, title: str = "Counterfactuals"
) -> Path:
  """One column per pair: the original above, the counterfactual below (uint8 or float in [0, 1]),
  `titles[i]` over column i (e.g. "without_mask -> with_mask"); written as `path` (PNG) and the same name
  with .svg."""
  originals, counterfactuals, titles = np.asarray(originals), np.asarray(counterfactuals), list(titles)
  if originals.shape != counterfactuals.shape or originals.ndim != 4 or len(titles) != len(originals):
    raise ValueError(
      f"pairs_figure needs matching (n, H, W, 3) originals and counterfactuals and n titles, got "
      f"{originals.shape}, {counterfactuals.shape} and {len(titles)} titles"
    )
  if not len(originals):
    raise ValueError("pairs_figure needs at least one pair")
  n = len(originals)
  figure = _figure((1.25 * n + 1.2, 3.6))
  figure.suptitle(title)
  figure.subplots_adjust(top=0.8)  # room for the column titles under the title
  for c, pair in enumerate(zip(originals, counterfactuals)):
    for r, image in enumerate(pair):
      axis = figure.add_subplot(2, n, r * n + c + 1)
      axis.set_xticks([])
      axis.set_yticks([])
      axis.imshow(image if image.dtype == np.uint8 else np.clip(image, 0, 1))
      if r == 0:
        axis.set_title(titles[c].replace(" -> ", "\n-> "), fontsize=7)
      if c == 0:
        axis.set_ylabel(("original", "counterfactual")[r], fontsize=8)
  path = _save(figure, Path(path))
  figure.savefig(path.with_suffix(".svg"), bbox_inches="tight")
  return path


def counterfactual_pairs_figure(
  synthetic: synthesis.SyntheticSet, train: pipeline.ArrayDataset, path: Path, per_class: int = 4
) -> Path:
  """`pairs_figure` of the first `per_class` counterfactuals of each class next to the real `train`
  images they were made from (provenance `source_index`)."""
  made = synthetic.sampler == "counterfactual"
  if not made.any():
    raise ValueError("counterfactual_pairs_figure needs samples of the 'counterfactual' sampler")
  if synthetic.class_names != train.class_names:
    raise ValueError(f"class names differ: {synthetic.class_names} vs {train.class_names}")
  index = np.concatenate(
    [np.flatnonzero(made & (synthetic.labels == c))[:per_class] for c in range(len(synthetic.class_names))]
  )
  source = synthetic.source_index[index]
  # the provenance names the real image by index and file: a different `train` would pair wrongly
  if (source < 0).any() or (source >= len(train)).any() or (train.files[source] != synthetic.source_file[index]).any():
    raise ValueError("the counterfactuals' source images are not those of this train set (source_index/source_file)")
  names = synthetic.class_names
  titles = [f"{names[train.labels[s]]} -> {names[y]}" for s, y in zip(source, synthetic.labels[index])]
  method = synthetic.options.get("method", "")
  return pairs_figure(
    train.images[source],
    synthetic.images[index],
    titles,
    path,
    f"Counterfactuals ({method})" if method else "Counterfactuals",
  )


def _first_per_class(dataset: pipeline.ArrayDataset, per_class: int) -> np.ndarray:
  return np.concatenate([np.flatnonzero(dataset.labels == c)[:per_class] for c in range(dataset.num_classes)])


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct_jit(graphdef, state, x, labels):
  return nnx.merge(graphdef, state).reconstruct(x, train=False, labels=labels)


def _reconstruction_rows(model, images: np.ndarray, labels: np.ndarray, noise: noise_lib.NoiseConfig):
  """([input, (noisy, for a DAE), reconstruction] as float images in [0, 1], their titles); the DAE's
  corruption uses a fixed key."""
  x = jnp.asarray(pipeline.to_float(images))
  rows, titles = [np.asarray(x)], ["input"]
  if not kinds.of(model).variational:  # a denoising model: show what it was given
    x = noise_lib.corrupt(x, jax.random.key(0), noise)
    rows.append(np.asarray(x))
    titles.append(f"noisy ({noise.kind})")
  graphdef, state = nnx.split(model)
  labels = jnp.asarray(labels) if model.conditional else None
  rows.append(np.asarray(_reconstruct_jit(graphdef, state, x, labels)))
  titles.append("reconstruction")
  return rows, titles


def reconstruction_figure(
  model, dataset: pipeline.ArrayDataset, noise: noise_lib.NoiseConfig, path: Path, per_class: int = 6
) -> Path:
  index = _first_per_class(dataset, per_class)
  rows, titles = _reconstruction_rows(model, dataset.images[index], dataset.labels[index], noise)
  names = ", ".join(f"{per_class} {name}" for name in dataset.class_names)
  return image_grid(rows, titles, f"Validation reconstructions ({names})", path)


def _natural_samples(model, source: pipeline.ArrayDataset, noise: noise_lib.NoiseConfig, per_class: int):
  """(uint8 samples per class, sampler name) with the kind's default sampler (`vaeaug.kinds`): prior
  (CVAE), posterior jitter (VAE), denoised real images (DAE), from `source`'s images; seed 0."""
  sampler = kinds.of(model).default_sampler
  options = {"noise": noise} if sampler == "denoise" else {}
  synthetic = synthesis.synthesize(model, source, per_class, sampler, seed=0, **options)
  return [synthetic.images[synthetic.labels == c] for c in range(len(source.class_names))], sampler


def samples_figure(
  model, train: pipeline.ArrayDataset, noise: noise_lib.NoiseConfig, path: Path, per_class: int = 10
) -> Path:
  """Samples per class with the kind's natural sampler: prior (CVAE), posterior jitter (VAE),
  denoised real images (DAE)."""
  rows, sampler = _natural_samples(model, train, noise, per_class)
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
  figure = _figure((11, 3.8))
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


def _noise(config) -> noise_lib.NoiseConfig:
  return noise_lib.NoiseConfig(
    kind=config.noise.kind, sigma=config.noise.sigma, p=config.noise.p, mask_fraction=config.noise.mask_fraction
  )


def write_generator_figures(workdir: Path, state, data, config) -> dict[str, Path]:
  out = Path(workdir) / "figures"
  out.mkdir(parents=True, exist_ok=True)
  model = state.model()
  noise = _noise(config)
  draw = {  # the figures a kind lists (`GeneratorKind.figures`)
    "reconstructions": lambda: reconstruction_figure(model, data.validation, noise, out / "reconstructions.png"),
    "samples": lambda: samples_figure(model, data.train, noise, out / "samples.png"),
    "interpolations": lambda: interpolation_figure(model, data.validation, out / "interpolation.png"),
    "curves": lambda: curves_figure(Path(workdir) / "metrics.jsonl", out / "curves.png"),
  }
  return {name: draw[name]() for name in kinds.of(model).figures}


# ----------------------------------------------------------------------------- TensorBoard


def tile(rows: list[np.ndarray], pad: int = 2, background: int = 128) -> np.ndarray:
  """One uint8 (H, W, 3) image of `rows` (each (n, h, w, 3), uint8 or float in [0, 1]), `pad`
  pixels of `background` around and between the images; short rows are left blank at the end."""
  rows = [np.asarray(row) for row in rows]
  rows = [row if row.dtype == np.uint8 else pipeline.from_float(row) for row in rows]
  if not rows or any(row.ndim != 4 or row.shape[-1] != 3 for row in rows):
    raise ValueError(f"tile needs rows of (n, h, w, 3) images, got shapes {[np.shape(row) for row in rows]}")
  height, width = rows[0].shape[1:3]
  if any(row.shape[1:3] != (height, width) for row in rows):
    raise ValueError(f"tile needs images of one size, got {sorted({row.shape[1:3] for row in rows})}")
  columns = max(len(row) for row in rows)
  grid = np.full((pad + len(rows) * (height + pad), pad + columns * (width + pad), 3), background, np.uint8)
  for r, row in enumerate(rows):
    for c, image in enumerate(row):
      top, left = pad + r * (height + pad), pad + c * (width + pad)
      grid[top : top + height, left : left + width] = image
  return grid


def preview_subset(dataset: pipeline.ArrayDataset, per_class: int = 4) -> pipeline.ArrayDataset:
  """The first `per_class` images of each class: fixed inputs for `tensorboard_grids` at every epoch."""
  return dataset.take(_first_per_class(dataset, per_class))


def tensorboard_grids(state, preview: pipeline.ArrayDataset, config) -> dict[str, np.ndarray]:
  """A generator's reconstructions and samples as uint8 (H, W, 3) grids for `logs.EventWriter.images`
  (a `loop.fit` epoch hook). `state` is the generator's train state, `preview` a few fixed validation
  images (`preview_subset`), `config` its config (the DAE's noise). "reconstructions": rows input,
  (noisy,) reconstruction, one column per preview image; "samples": one row per class, as many as
  the preview has of the class, with the kind's natural sampler (`samples_figure`'s). Fixed keys
  and seed, so the grids of one state are always the same."""
  model = state.model()
  noise = _noise(config)
  rows, _ = _reconstruction_rows(model, preview.images, preview.labels, noise)
  per_class = int(preview.class_counts().min())
  if per_class < 1:
    raise ValueError(f"preview needs images of every class {preview.class_names}, got {preview.class_counts()}")
  samples, _ = _natural_samples(model, preview, noise, per_class)
  return {"reconstructions": tile(rows), "samples": tile(samples)}
