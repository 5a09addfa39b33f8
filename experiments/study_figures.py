"""Figures of a comparison sweep (protocol v2), rebuilt from `cells.jsonl` and `tables.summarize`'s numbers.

Each figure is written as .png and .svg in the sweep's `figures/`, the same bytes on every rerun:

* `forest`: the headline. One panel per baseline and metric; per (dataset, n_per_class) the primary
  comparison (bold: the best generative arm on validation, `experiments.tables`) with its paired mean
  difference, 95% t interval (thick) and simultaneous Bonferroni interval (thin), and every other
  generative arm lighter; a line at 0 and dotted lines at ±0.02.
* `<metric>_vs_n`: the test metric vs n_per_class per arm (top row, t interval as a band) and, under it,
  each arm's paired difference from `none` with its t interval: arms share seed noise, so the bands of
  the top row overlap where the paired differences are clear.
* `quality_vs_gain`: per cell with a synthetic set, its validation quality (`QUALITY_KEY` of the record's
  `quality`, `experiments.cell_quality`) against its paired gain over `none` in test balanced accuracy.
* `samples_<dataset>_<source>`: real images of the cell group (first row) and synthetic images of each
  arm source per n_per_class, from the runs/ folder (nothing when it is gone).

matplotlib is imported inside the functions (Agg backend), so building tables needs no display.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments import tables
from experiments.sweep import Cell, n_label

# Comparable across arms, cells and seeds of a dataset (one fixed feature space per dataset), and recorded
# for model-free controls too; lower is closer to the validation images.
QUALITY_KEY = "frechet"
QUALITY_LABEL = "Fréchet distance of the synthetic set to validation (fixed features; lower: closer)"
MARGIN = 0.02  # the dotted lines of the forest plot: differences too small to matter in practice


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def save(fig, stem: Path, dpi: int = 110) -> None:
  """`stem`.png and `stem`.svg, byte-identical on rerun (no dates, fixed SVG ids); closes `fig`."""
  import matplotlib
  import matplotlib.pyplot as plt

  stem.parent.mkdir(parents=True, exist_ok=True)
  with matplotlib.rc_context({"svg.hashsalt": "vaeaug"}):
    fig.savefig(stem.parent / f"{stem.name}.png", dpi=dpi)
    fig.savefig(stem.parent / f"{stem.name}.svg", metadata={"Date": None})
  plt.close(fig)


def _colors(arms: Sequence[str]) -> dict[str, str]:
  return {arm: f"C{i % 10}" for i, arm in enumerate(arms)}


def _short(dataset: str) -> str:
  return dataset.split("/")[0]


def forest_figure(summary: dict, stem: Path) -> bool:
  """The forest plot (module docstring); False (nothing written) without primary comparisons."""
  primary = {(c["dataset"], c["n_per_class"], c["arm"], c["baseline"], c["metric"]): c for c in summary["primary"]}
  if not primary:
    return False
  plt = _pyplot()
  from matplotlib.lines import Line2D

  panels = [(metric, baseline) for metric in tables.PRIMARY_METRICS for baseline in tables.BASELINES]
  entries = {}
  for metric, baseline in panels:
    entries[metric, baseline] = [
      (
        row,
        row["differences"][baseline][metric],
        primary.get((row["dataset"], row["n_per_class"], row["arm"], baseline, metric)),
      )
      for row in summary["rows"]
      if row["generative"]
      and baseline in row["differences"]
      and math.isfinite(row["differences"][baseline][metric]["mean_difference"])
    ]
  most = max(len(e) for e in entries.values())
  fig, axes = plt.subplots(
    len(tables.PRIMARY_METRICS), len(tables.BASELINES), figsize=(12, 1.6 + 0.2 * most), squeeze=False
  )
  for ax, (metric, baseline) in zip(axes.ravel(), panels):
    panel = entries[metric, baseline]
    previous_group = None
    for y, (row, d, chosen) in enumerate(panel):
      group = row["dataset"], row["n_per_class"]
      if previous_group is not None and group != previous_group:
        ax.axhline(y - 0.5, color="0.85", lw=0.6)
      previous_group = group
      if chosen is not None:
        if math.isfinite(chosen["simultaneous_lower"]):
          ax.plot([chosen["simultaneous_lower"], chosen["simultaneous_upper"]], [y, y], color="k", lw=0.9)
        if math.isfinite(d["ci_lower"]):
          ax.plot([d["ci_lower"], d["ci_upper"]], [y, y], color="k", lw=2.6, solid_capstyle="butt")
        ax.plot(d["mean_difference"], y, "D", color="k", ms=4)
      else:
        if math.isfinite(d["ci_lower"]):
          ax.plot([d["ci_lower"], d["ci_upper"]], [y, y], color="0.65", lw=1.2)
        ax.plot(d["mean_difference"], y, "o", color="0.65", ms=3)
    ax.axvline(0, color="0.3", lw=0.8)
    for margin in (-MARGIN, MARGIN):
      ax.axvline(margin, color="0.4", lw=0.8, ls=":")
    labels = [f"{_short(row['dataset'])} n={row['n_per_class']}  {row['arm']}" for row, _, _ in panel]
    ax.set_yticks(np.arange(len(panel)), labels, fontsize=6)
    for tick, (_, _, chosen) in zip(ax.get_yticklabels(), panel):
      if chosen is not None:
        tick.set_fontweight("bold")
    ax.set_ylim(len(panel) - 0.5, -0.5)  # first group at the top
    ax.set_title(f"Δ test {tables.SHORT[metric]} vs {baseline}", fontsize=9)
    ax.set_xlabel("paired difference (same seed)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
  family = summary["families"]["primary"]
  handles = [
    Line2D([], [], color="k", lw=2.6, marker="D", ms=4, label="primary comparison: mean, 95% t interval"),
    Line2D(
      [], [], color="k", lw=0.9, label=f"simultaneous interval (Bonferroni, {family['size']} primary comparisons)"
    ),
    Line2D([], [], color="0.65", lw=1.2, marker="o", ms=3, label="other generative arms: mean, 95% t interval"),
    Line2D([], [], color="0.4", lw=0.8, ls=":", label=f"±{MARGIN:g}"),
  ]
  fig.legend(handles=handles, loc="upper center", ncol=4, fontsize=7, frameon=False)
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
  save(fig, stem, dpi=120)
  return True


def metric_vs_n_figure(summary: dict, stem: Path, metric: str = "balanced_accuracy") -> None:
  """Test `metric` vs n_per_class per arm (top row, t interval band) and each arm's paired difference from
  `none` with its t interval (bottom row); one column per dataset."""
  plt = _pyplot()
  datasets = list(dict.fromkeys(r["dataset"] for r in summary["rows"]))
  colors = _colors(list(dict.fromkeys(r["arm"] for r in summary["rows"])))
  fig, axes = plt.subplots(2, len(datasets), figsize=(5.5 * len(datasets), 7), squeeze=False, sharex="col")
  for column, dataset in enumerate(datasets):
    top, bottom = axes[0][column], axes[1][column]
    rows = [r for r in summary["rows"] if r["dataset"] == dataset]
    ns = list(dict.fromkeys(r["n_per_class"] for r in rows))
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    x = np.arange(len(ns))
    for index, arm in enumerate(arms):
      points = [next((r for r in rows if r["arm"] == arm and r["n_per_class"] == n), None) for n in ns]
      mean = np.array([p[metric]["mean"] if p else np.nan for p in points])
      lower = np.array([p[metric]["ci_lower"] if p else np.nan for p in points])
      upper = np.array([p[metric]["ci_upper"] if p else np.nan for p in points])
      top.plot(x, mean, marker="o", label=arm, color=colors[arm])
      # No interval (one seed): a band of zero width at the mean.
      top.fill_between(
        x, np.where(np.isnan(lower), mean, lower), np.where(np.isnan(upper), mean, upper), alpha=0.15, color=colors[arm]
      )
      diffs = [p["differences"].get("none", {}).get(metric) if p else None for p in points]
      if arm == "none" or not any(diffs):
        continue
      offset = (index - (len(arms) - 1) / 2) * 0.06  # side by side, not on top of each other
      d_mean = np.array([d["mean_difference"] if d else np.nan for d in diffs])
      d_lower = np.array([d["ci_lower"] if d else np.nan for d in diffs])
      d_upper = np.array([d["ci_upper"] if d else np.nan for d in diffs])
      errors = np.nan_to_num(np.stack([d_mean - d_lower, d_upper - d_mean]))
      bottom.errorbar(x + offset, d_mean, yerr=errors, marker="o", ms=4, capsize=2, color=colors[arm], label=arm)
    top.set_ylabel(f"test {tables.SHORT.get(metric, metric)}")
    top.set_title(dataset)
    top.grid(alpha=0.3)
    top.legend(fontsize=8)
    bottom.axhline(0, color="0.3", lw=0.8)
    bottom.set_xticks(x, ns)
    bottom.set_xlabel("real training images per class")
    bottom.set_ylabel(f"Δ {tables.SHORT.get(metric, metric)} vs none (paired, 95% t)")
    bottom.grid(alpha=0.3)
  fig.tight_layout()
  save(fig, stem)


def quality_vs_gain_figure(cells: Sequence[Cell], records: dict[str, dict], stem: Path) -> bool:
  """Per cell with a synthetic set: its validation quality against its paired gain over `none` in test
  balanced accuracy, one colour per arm, one panel per dataset. False (nothing written) when no cell has
  a quality record."""
  none = {cell.group: records[cell.key] for cell in cells if cell.arm.name == "none" and cell.key in records}
  points: dict[str, list[tuple[str, float, float]]] = {}
  without_quality = without_none = 0
  for cell in cells:
    record = records.get(cell.key)
    if record is None or cell.arm.generator is None:  # no synthetic set, so no quality to relate
      continue
    quality = (record.get("quality") or {}).get(QUALITY_KEY)
    if quality is None or not math.isfinite(quality):
      without_quality += 1
    elif cell.group not in none:
      without_none += 1
    else:
      gain = record["test"]["balanced_accuracy"] - none[cell.group]["test"]["balanced_accuracy"]
      points.setdefault(cell.dataset, []).append((cell.arm.name, float(quality), gain))
  if not points:
    return False
  from scipy import stats as scipy_stats

  plt = _pyplot()
  colors = _colors(list(dict.fromkeys(c.arm.name for c in cells if c.arm.generator is not None)))
  fig, axes = plt.subplots(1, len(points), figsize=(5.5 * len(points), 4.4), squeeze=False)
  for ax, (dataset, dataset_points) in zip(axes[0], points.items()):
    for arm in dict.fromkeys(arm for arm, _, _ in dataset_points):
      x, y = zip(*((q, g) for a, q, g in dataset_points if a == arm))
      ax.scatter(x, y, s=16, color=colors[arm], label=arm, alpha=0.8)
    ax.axhline(0, color="0.3", lw=0.8)
    title = f"{dataset} ({len(dataset_points)} cells)"
    if len(dataset_points) >= 3:
      rho = scipy_stats.spearmanr([q for _, q, _ in dataset_points], [g for _, _, g in dataset_points]).statistic
      title += f", Spearman ρ = {rho:.2f}" if math.isfinite(rho) else ""
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(QUALITY_LABEL, fontsize=8)
    ax.set_ylabel("test bal. acc. − none's (same seed)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  skipped = [f"{without_quality} cells without a quality record skipped"]
  if without_none:
    skipped.append(f"{without_none} without a `none` cell")
  fig.suptitle("Synthetic-set quality (validation) vs gain over none (test)\n" + ", ".join(skipped), fontsize=9)
  fig.tight_layout()
  save(fig, stem)
  return True


def _per_class(images: np.ndarray, labels: np.ndarray, num_classes: int, per_class: int) -> np.ndarray:
  """The first `per_class` images of each class side by side, black where a class has fewer."""
  picks = []
  for c in range(num_classes):
    chosen = images[np.flatnonzero(labels == c)[:per_class]]
    if len(chosen) < per_class:
      chosen = np.concatenate([chosen, np.zeros((per_class - len(chosen),) + images.shape[1:], images.dtype)])
    picks.append(chosen)
  return np.concatenate(picks)


def sample_grid_figure(
  sweep, dataset: str, source: str, n_values: Sequence, seed: int, per_class: int, stem: Path
) -> bool:
  """Rows: real images of the first cell group found (the subsets are nested over n_per_class), then per
  n_per_class `per_class` synthetic images of each class from that group's arm source (`Arm.source`).
  False when none of the synthetic sets exists (runs/ deleted): then no data is read either."""
  from vaeaug import synthesis

  rows = []
  for n in n_values:
    file = sweep.group_dir(dataset, n, seed) / f"synthetic_{source}.npz"
    if not file.exists():
      continue
    synthetic = synthesis.load_synthetic(file)
    num_classes = len(synthetic.class_names)
    if not rows:
      real = sweep.real_train(dataset, n, seed)
      rows.append((f"real, n={n_label(n)}", _per_class(real.images, real.labels, num_classes, per_class)))
    rows.append((f"n={n_label(n)}", _per_class(synthetic.images, synthetic.labels, num_classes, per_class)))
    class_names = synthetic.class_names
  if not rows:
    return False
  plt = _pyplot()
  columns = len(rows[0][1])
  fig, axes = plt.subplots(len(rows), columns, figsize=(columns * 0.8, len(rows) * 0.9 + 0.5), squeeze=False)
  for r, (label, images) in enumerate(rows):
    for c in range(columns):
      ax = axes[r][c]
      ax.imshow(images[c])
      ax.set_xticks([])
      ax.set_yticks([])
      if c == 0:
        ax.set_ylabel(label, fontsize=7)
      if r == 0 and c % per_class == 0:
        ax.set_title(class_names[c // per_class], fontsize=8, loc="left")
  fig.suptitle(
    f"{source} samples, {dataset} (seed {seed}; first row: real training images, then synthetic images of the "
    "cell groups with n real images per class)",
    fontsize=8,
  )
  fig.tight_layout()
  save(fig, stem, dpi=100)
  return True


def write_figures(sweep, cells: Sequence[Cell], records: dict[str, dict], summary: dict, figures: Path) -> None:
  """Every figure of the module docstring into `figures`."""
  config = sweep.config
  forest_figure(summary, figures / "forest")
  for metric in tables.PRIMARY_METRICS:
    metric_vs_n_figure(summary, figures / f"{metric}_vs_n", metric)
  quality_vs_gain_figure(cells, records, figures / "quality_vs_gain")
  sources = list(dict.fromkeys(c.arm.source for c in cells if c.arm.source))  # one synthetic set each
  for dataset in config.datasets:
    for source in sources:
      sample_grid_figure(
        sweep,
        dataset,
        source,
        list(config.n_per_class),
        config.first_seed,
        config.synthesis.figure_samples,
        figures / f"samples_{dataset.replace('/', '-')}_{source}",
      )
