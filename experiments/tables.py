"""Tables, summary and figures of a comparison sweep, rebuilt from its `cells.jsonl` alone.

`table.md` / `table.csv`: per dataset and n_per_class, each arm's mean and 95% t interval over seeds
of the test metrics, clipped to the metrics' range [0, 1] (`stats.mean_ci_bounded`; a clipped
interval is shown as `mean [lower, upper]`, an unclipped one as `mean ± half-width`; the csv and
summary.json carry both ends), and the paired difference (same seed) of each arm against `none` and
against `classic`: mean, percentile-bootstrap 95% interval (clipped to [-1, 1]) and the sign-flip
permutation p-value (the paired t-test p-value is in the csv too). Rows are ordered by the config's
grid, never by finishing time, so an interrupted-and-resumed sweep writes byte-identical tables.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments import stats
from experiments.sweep import Cell, n_label
from vaeaug import provenance

TABLE_METRICS = ("balanced_accuracy", "f1", "specificity", "roc_auc")
DIFF_METRICS = ("balanced_accuracy", "roc_auc")  # shown in table.md; the csv has every metric
BASELINES = ("none", "classic")
SHORT = {"balanced_accuracy": "bal. acc.", "f1": "F1", "specificity": "specificity", "roc_auc": "ROC-AUC"}
# Every metric in the tables is a proportion or an AUC; a paired difference of two lies in [-1, 1].
RANGE = (0.0, 1.0)
DIFF_RANGE = (RANGE[0] - RANGE[1], RANGE[1] - RANGE[0])


def _interval(values) -> dict:
  """Mean, the plain t half-width (`ci95`, kept for consumers) and the t interval clipped to RANGE."""
  mean, half = stats.mean_ci(values)
  _, lower, upper = stats.mean_ci_bounded(values, *RANGE)
  clipped = math.isfinite(half) and (mean - half < RANGE[0] or mean + half > RANGE[1])
  return {"mean": mean, "ci95": half, "ci_lower": lower, "ci_upper": upper, "ci_clipped": clipped}


def _fmt(m: dict) -> str:
  if not math.isfinite(m["mean"]):
    return "-"
  if not math.isfinite(m["ci95"]):
    return f"{m['mean']:.3f}"
  # A clipped interval is asymmetric, so it shows both ends.
  if m["ci_clipped"]:
    return f"{m['mean']:.3f} [{m['ci_lower']:.3f}, {m['ci_upper']:.3f}]"
  return f"{m['mean']:.3f} ± {m['ci95']:.3f}"


def _fmt_diff(d: dict) -> str:
  if not math.isfinite(d["mean_difference"]):
    return "-"
  ci = f" [{d['ci_lower']:+.3f}, {d['ci_upper']:+.3f}]" if math.isfinite(d["ci_lower"]) else ""
  p = f" p={d['p_value']:.2g}" if math.isfinite(d["p_value"]) else ""
  return f"{d['mean_difference']:+.3f}{ci}{p}"


def _groups(cells: Sequence[Cell], records: dict[str, dict]):
  """{(dataset, n): {arm: {seed: record}}} in grid order (only finished cells)."""
  out: dict[tuple, dict[str, dict[int, dict]]] = {}
  for cell in cells:
    group = out.setdefault((cell.dataset, cell.n_per_class), {})
    arm = group.setdefault(cell.arm.name, {})
    if cell.key in records:
      arm[cell.seed] = records[cell.key]
  return out


def _values(by_seed: dict[int, dict], metric: str, seeds: Sequence[int], part: str = "test", target=None):
  out = []
  for s in seeds:
    record = by_seed.get(s)
    value = None
    if record is not None:
      source = record[part] if target is None else record.get("cross", {}).get(target, {})
      value = source.get(metric)
    out.append(np.nan if value is None else float(value))
  return np.asarray(out)


def summarize(cells: Sequence[Cell], records: dict[str, dict]) -> dict:
  """The numbers behind every table: per (dataset, n): arms with means/CIs and paired differences."""
  rows = []
  for (dataset, n), arms in _groups(cells, records).items():
    seeds = sorted({s for by_seed in arms.values() for s in by_seed})
    for arm, by_seed in arms.items():
      row = {"dataset": dataset, "n_per_class": n_label(n), "arm": arm, "seeds": len(by_seed)}
      for metric in stats_metrics():
        row[metric] = _interval(_values(by_seed, metric, seeds))
      row["differences"] = {}
      for baseline in BASELINES:
        if baseline not in arms or baseline == arm:
          continue
        row["differences"][baseline] = {
          metric: stats.compare_paired(
            _values(by_seed, metric, seeds), _values(arms[baseline], metric, seeds), bounds=DIFF_RANGE
          )
          for metric in stats_metrics()
        }
      rows.append(row)
  return {"rows": rows}


def stats_metrics():
  return ("balanced_accuracy", "accuracy", "f1", "specificity", "roc_auc")


def table_markdown(summary: dict) -> str:
  lines = []
  current = None
  for row in summary["rows"]:
    if (row["dataset"], row["n_per_class"]) != current:
      current = row["dataset"], row["n_per_class"]
      header = (
        ["arm", "seeds"]
        + [SHORT[m] for m in TABLE_METRICS]
        + [f"Δ {SHORT[m]} vs {b}" for b in BASELINES for m in DIFF_METRICS]
      )
      lines += [
        "",
        f"### {row['dataset']}, n_per_class = {row['n_per_class']}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
      ]
    cols = [row["arm"], str(row["seeds"])] + [_fmt(row[m]) for m in TABLE_METRICS]
    for b in BASELINES:
      for m in DIFF_METRICS:
        d = row["differences"].get(b, {}).get(m)
        cols.append(_fmt_diff(d) if d else "")
    lines.append("| " + " | ".join(cols) + " |")
  legend = (
    "Test metrics, mean ± 95% t interval over seeds, clipped to the metrics' range [0, 1] and then shown as "
    "mean [lower, upper]; Δ: paired (same seed) difference, mean "
    "[percentile-bootstrap 95% interval] and the two-sided sign-flip permutation p-value. "
    "The threshold of each classifier is chosen on validation. With n seeds the permutation "
    "p-value cannot fall below 2/2^n, and with fewer than about 10 seeds the bootstrap interval "
    "is too narrow: read such rows by their p-values."
  )
  return "\n".join([legend] + lines).strip() + "\n"


def table_csv(summary: dict) -> str:
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  header = ["dataset", "n_per_class", "arm", "seeds"]
  for m in stats_metrics():
    header += [f"{m}_mean", f"{m}_ci95", f"{m}_ci_lower", f"{m}_ci_upper"]
  for b in BASELINES:
    for m in stats_metrics():
      header += [
        f"{m}_diff_vs_{b}",
        f"{m}_diff_vs_{b}_ci_lower",
        f"{m}_diff_vs_{b}_ci_upper",
        f"{m}_diff_vs_{b}_p",
        f"{m}_diff_vs_{b}_p_ttest",
      ]
  writer.writerow(header)
  for row in summary["rows"]:
    out = [row["dataset"], row["n_per_class"], row["arm"], row["seeds"]]
    for m in stats_metrics():
      out += [_num(row[m][k]) for k in ("mean", "ci95", "ci_lower", "ci_upper")]
    for b in BASELINES:
      for m in stats_metrics():
        d = row["differences"].get(b, {}).get(m)
        out += (
          [
            _num(d["mean_difference"]),
            _num(d["ci_lower"]),
            _num(d["ci_upper"]),
            _num(d["p_value"]),
            _num(d["p_value_t"]),
          ]
          if d
          else [""] * 5
        )
    writer.writerow(out)
  return buffer.getvalue()


def _num(x: float) -> str:
  return "" if x is None or not math.isfinite(x) else f"{x:.6g}"


def cross_summary(cells: Sequence[Cell], records: dict[str, dict], targets: Sequence[str]) -> dict:
  rows = []
  for (dataset, n), arms in _groups(cells, records).items():
    seeds = sorted({s for by_seed in arms.values() for s in by_seed})
    for arm, by_seed in arms.items():
      row = {"dataset": dataset, "n_per_class": n_label(n), "arm": arm, "seeds": len(by_seed), "targets": {}}
      for target in [dataset] + [t for t in targets if t != dataset]:
        cross = None if target == dataset else target
        row["targets"][target] = {
          m: _interval(_values(by_seed, m, seeds, target=cross)) for m in ("balanced_accuracy", "roc_auc")
        }
      rows.append(row)
  return {"targets": list(targets), "rows": rows}


def cross_markdown(summary: dict) -> str:
  targets = summary["targets"]
  header = ["trained on", "n_per_class", "arm"] + [f"{t}: bal. acc. / ROC-AUC" for t in targets]
  lines = [
    "Balanced accuracy and ROC-AUC on each dataset's test split (mean ± 95% t interval over seeds, "
    "clipped to [0, 1] and then shown as mean [lower, upper]); "
    "the threshold is the one chosen on the training dataset's validation split.",
    "",
    "| " + " | ".join(header) + " |",
    "|" + "---|" * len(header),
  ]
  for row in summary["rows"]:
    cols = [row["dataset"], row["n_per_class"], row["arm"]]
    for t in targets:
      m = row["targets"].get(t, {})
      cols.append(f"{_fmt(m['balanced_accuracy'])} / {_fmt(m['roc_auc'])}" if m else "")
    lines.append("| " + " | ".join(cols) + " |")
  return "\n".join(lines) + "\n"


def cross_csv(summary: dict) -> str:
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(
    [
      "trained_on",
      "n_per_class",
      "arm",
      "seeds",
      "tested_on",
      *(f"{m}_{k}" for m in ("balanced_accuracy", "roc_auc") for k in ("mean", "ci95", "ci_lower", "ci_upper")),
    ]
  )
  for row in summary["rows"]:
    for target, m in row["targets"].items():
      writer.writerow(
        [
          row["dataset"],
          row["n_per_class"],
          row["arm"],
          row["seeds"],
          target,
          *(
            _num(m[metric][k])
            for metric in ("balanced_accuracy", "roc_auc")
            for k in ("mean", "ci95", "ci_lower", "ci_upper")
          ),
        ]
      )
  return buffer.getvalue()


_TIMING_KEYS = (
  "classifier_seconds",
  "classifier_steps_seconds",
  "classifier_validation_seconds",
  "classifier_checkpoints_seconds",
  "generator_seconds",
  "generator_step_seconds",
  "synthesis_seconds",
  "quality_seconds",
  "data_seconds",
  "compile_seconds",
  "overhead_seconds",
  "cell_seconds",
)
_GENERATOR_WORK = ("generator_seconds", "generator_step_seconds", "synthesis_seconds", "quality_seconds")


def timing_summary(records: dict[str, dict]) -> dict:
  """Where the sweep's compute went: seconds summed over cells (a shared generator and its synthetic
  set counted once), the share of cell time that was overhead rather than train steps, synthesis or
  quality (`experiments.sweep.cell_timing`), overall and per arm, and cells per hour."""
  total = dict.fromkeys(_TIMING_KEYS, 0.0)
  by_arm: dict[str, list[float]] = {}
  for record in records.values():
    timing = record.get("timing", {})
    for key in total:
      if key in _GENERATOR_WORK and timing.get("generator_reused"):
        continue
      total[key] += float(timing.get(key, 0.0) or 0.0)
    arm = by_arm.setdefault(record["arm"], [0.0, 0.0])
    arm[0] += float(timing.get("overhead_seconds", 0.0) or 0.0)
    arm[1] += float(timing.get("cell_seconds", 0.0) or 0.0)
  out = {k: round(v, 1) for k, v in total.items()}
  cell_seconds = total["cell_seconds"]
  out["cells"] = len(records)
  out["cells_per_hour"] = round(3600 * len(records) / cell_seconds, 1) if cell_seconds > 0 else None
  out["overhead_share"] = round(total["overhead_seconds"] / cell_seconds, 3) if cell_seconds > 0 else None
  out["overhead_share_by_arm"] = {arm: round(o / c, 3) if c > 0 else None for arm, (o, c) in by_arm.items()}
  return out


# ----------------------------------------------------------------------------- figures


def accuracy_figure(summary: dict, path: Path, metric: str = "balanced_accuracy") -> None:
  """Test `metric` vs n_per_class per arm, with the 95% interval as a band; one panel per dataset."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  datasets = list(dict.fromkeys(r["dataset"] for r in summary["rows"]))
  fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
  for ax, dataset in zip(axes[0], datasets):
    rows = [r for r in summary["rows"] if r["dataset"] == dataset]
    ns = list(dict.fromkeys(r["n_per_class"] for r in rows))
    for arm in dict.fromkeys(r["arm"] for r in rows):
      points = [next((r for r in rows if r["arm"] == arm and r["n_per_class"] == n), None) for n in ns]
      mean = np.array([p[metric]["mean"] if p else np.nan for p in points])
      lower = np.array([p[metric]["ci_lower"] if p else np.nan for p in points])
      upper = np.array([p[metric]["ci_upper"] if p else np.nan for p in points])
      x = np.arange(len(ns))
      ax.plot(x, mean, marker="o", label=arm)
      # No interval (one seed): a band of zero width at the mean.
      ax.fill_between(x, np.where(np.isnan(lower), mean, lower), np.where(np.isnan(upper), mean, upper), alpha=0.15)
    ax.set_xticks(np.arange(len(ns)), ns)
    ax.set_xlabel("real training images per class")
    ax.set_ylabel(f"test {SHORT.get(metric, metric)}")
    ax.set_title(dataset)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def sample_grid_figure(
  sweep, dataset: str, source: str, n_values: Sequence, seed: int, per_class: int, path: Path
) -> bool:
  """Rows: n_per_class; columns: `per_class` synthetic images of each class from that cell group's
  arm source (`Arm.source`: generator and sampler). False when none of the synthetic sets exists (runs/
  deleted)."""
  from vaeaug import synthesis

  rows = []
  for n in n_values:
    file = sweep.group_dir(dataset, n, seed) / f"synthetic_{source}.npz"
    if not file.exists():
      continue
    synthetic = synthesis.load_synthetic(file)
    picks = []
    for c in range(len(synthetic.class_names)):
      idx = np.flatnonzero(synthetic.labels == c)[:per_class]
      images = synthetic.images[idx]
      if len(images) < per_class:
        images = np.concatenate(
          [images, np.zeros((per_class - len(images),) + synthetic.images.shape[1:], synthetic.images.dtype)]
        )
      picks.append(images)
    rows.append((n, np.concatenate(picks), synthetic.class_names))
  if not rows:
    return False
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  columns = len(rows[0][1])
  fig, axes = plt.subplots(len(rows), columns, figsize=(columns * 0.8, len(rows) * 0.9 + 0.5), squeeze=False)
  for r, (n, images, class_names) in enumerate(rows):
    for c in range(columns):
      ax = axes[r][c]
      ax.imshow(images[c])
      ax.set_xticks([])
      ax.set_yticks([])
      if c == 0:
        ax.set_ylabel(f"n={n_label(n)}", fontsize=8)
      if r == 0 and c % per_class == 0:
        ax.set_title(class_names[c // per_class], fontsize=8, loc="left")
  fig.suptitle(f"{source} samples, {dataset} (seed {seed}; rows: real images per class it was trained on)", fontsize=9)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def write_outputs(sweep, records: dict[str, dict]) -> str:
  """Writes table.md/.csv, cross_dataset.md/.csv, summary.json and figures; returns table.md's text."""
  config, workdir = sweep.config, sweep.workdir
  from experiments.sweep import cells_of

  cells = cells_of(config)
  summary = summarize(cells, records)
  finished = sum(c.key in records for c in cells)
  partial = finished < len(cells)
  # Tables of an unfinished grid (e.g. a shard done before the others) say so in their first line.
  markdown = (f"# PARTIAL: {finished} of {len(cells)} cells\n\n" if partial else "") + table_markdown(summary)
  (workdir / "table.md").write_text(markdown)
  (workdir / "table.csv").write_text(table_csv(summary))
  out = {
    "preset": config.preset,
    "config_hash": sweep.hash,
    "cells_finished": len(records),
    "cells_total": len(cells),
    "partial": partial,
    "table": summary,
    "compute_seconds": timing_summary(records),
    # Who wrote these tables, and which commits computed the cells they summarise.
    "provenance": provenance.collect(),
    "cell_commits": provenance.commits_of(records.values()),
  }
  if config.cross_test_datasets:
    cross = cross_summary(cells, records, list(config.cross_test_datasets))
    (workdir / "cross_dataset.md").write_text(cross_markdown(cross))
    (workdir / "cross_dataset.csv").write_text(cross_csv(cross))
    out["cross_dataset"] = cross
  (workdir / "summary.json").write_text(json.dumps(_finite_or_null(out), indent=1) + "\n")
  figures = workdir / "figures"
  accuracy_figure(summary, figures / "balanced_accuracy_vs_n.png")
  accuracy_figure(summary, figures / "roc_auc_vs_n.png", metric="roc_auc")
  sources = list(dict.fromkeys(c.arm.source for c in cells if c.arm.source))  # one synthetic set each
  n_values = list(config.n_per_class)
  for dataset in config.datasets:
    for source in sources:
      sample_grid_figure(
        sweep,
        dataset,
        source,
        n_values,
        config.first_seed,
        config.synthesis.figure_samples,
        figures / f"samples_{dataset.replace('/', '-')}_{source}.png",
      )
  return markdown


def _finite_or_null(value):
  """NaN/inf -> null, so summary.json is strict JSON."""
  if isinstance(value, dict):
    return {k: _finite_or_null(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite_or_null(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  return value
