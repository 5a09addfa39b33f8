"""Tables and summary of a comparison sweep (protocol v2), rebuilt from its `cells.jsonl` alone.

Per dataset and n_per_class, each arm's test metrics: mean and 95% t interval over seeds, clipped to
the metrics' range [0, 1] (`stats.mean_ci_bounded`; a clipped interval is shown as `mean [lower,
upper]`, an unclipped one as `mean ± half-width`; the csv and summary.json carry both ends). Each arm
is compared with `none` and with `classic` *paired by seed*: mean difference, Student's t 95% interval
of the paired differences and the paired t-test p-value (primary: `experiments.stats` says why), plus,
in the csv and summary.json, the sign-flip permutation p-value and the BCa bootstrap interval (from 10
pairs) as checks.

**Primary comparisons, declared before any result is read.** Per (dataset, n_per_class) and metric
(balanced accuracy, ROC-AUC): the *best generative arm* against `classic` and against `none`. The
generative arms are those whose synthetic images come from a trained generator (the record's
`generator` is neither null, as for none / classic / mixup, nor the model-free `noise_blur` control):
a kind trained on the cell's subset or a `pool_<kind>`, with any sampler, with or without `classic+`.
The best is the one with the highest mean *validation* value of the metric over its seeds (ties: grid
order): chosen on validation, never on test, so picking the best of several arms adds no winner's-curse
bias to its test comparison. The family is every primary comparison of the table (all datasets and n,
both metrics and baselines); their paired t-test p-values are Holm-adjusted across it, and each also
gets the t interval at the Bonferroni level 1 - .05/m (m: the family's size), which holds for all m
together (the forest figure shows both). Every other arm-vs-baseline comparison is secondary: its
p-value is Benjamini-Hochberg-adjusted (q) within one family per metric, over the whole table (every
dataset, n, arm and baseline; `classic` vs `none` and `none` vs `classic` count once). The tables give
raw and adjusted p-values.

**Real-data equivalent** of an arm at n: the number of real images per class at which `none`'s mean
test metric, as a curve over the grid's n values of the dataset (linear in log n between grid points;
`all` at its mean images per class), first reaches the arm's mean; `<n_min` below the curve's first
point, `>n_max` when `none` never reaches it; blank without `none`.

**Capped share**: the share of an arm's cells whose classifier used its whole step budget instead of
stopping early (record field `capped`; cells recorded before the field are unknown, not uncapped).

Rows are ordered by the config's grid, never by finishing time, so an interrupted-and-resumed sweep writes
byte-identical tables. Figures: `experiments.study_figures`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence

import numpy as np

from experiments import stats
from experiments.arms import NOISE_BLUR
from experiments.sweep import Cell, n_label
from vaeaug import provenance

TABLE_METRICS = ("balanced_accuracy", "f1", "specificity", "roc_auc")
DIFF_METRICS = ("balanced_accuracy", "roc_auc")  # shown in table.md; the csv has every metric
PRIMARY_METRICS = ("balanced_accuracy", "roc_auc")
BASELINES = ("none", "classic")
SHORT = {
  "balanced_accuracy": "bal. acc.",
  "accuracy": "accuracy",
  "f1": "F1",
  "specificity": "specificity",
  "roc_auc": "ROC-AUC",
}
# Every metric in the tables is a proportion or an AUC; a paired difference of two lies in [-1, 1].
RANGE = (0.0, 1.0)
DIFF_RANGE = (RANGE[0] - RANGE[1], RANGE[1] - RANGE[0])
PRIMARY_CSV_COLUMNS = (
  "dataset",
  "n_per_class",
  "arm",
  "baseline",
  "metric",
  "seeds",
  "mean_difference",
  "t_lower",
  "t_upper",
  "p_raw",
  "p_holm",
  "simultaneous_lower",
  "simultaneous_upper",
)
_DIFF_CSV_FIELDS = (  # (csv suffix, key of the difference dict)
  ("", "mean_difference"),
  ("_t_lower", "ci_lower"),
  ("_t_upper", "ci_upper"),
  ("_p", "p_value"),
  ("_p_holm", "p_holm"),
  ("_p_bh", "p_bh"),
  ("_p_signflip", "p_value_signflip"),
  ("_bca_lower", "bca_lower"),
  ("_bca_upper", "bca_upper"),
)


def stats_metrics():
  return ("balanced_accuracy", "accuracy", "f1", "specificity", "roc_auc")


def is_generative(generator: str | None) -> bool:
  """Synthetic images from a trained generator: not an arm without one (none, classic, mixup) nor the
  model-free noise_blur control."""
  return generator is not None and generator != NOISE_BLUR


def _interval(values) -> dict:
  """Mean, the plain t half-width (`ci95`, kept for consumers) and the t interval clipped to RANGE."""
  mean, half = stats.mean_ci(values)
  _, lower, upper = stats.mean_ci_bounded(values, *RANGE)
  clipped = math.isfinite(half) and (mean - half < RANGE[0] or mean + half > RANGE[1])
  return {"mean": mean, "ci95": half, "ci_lower": lower, "ci_upper": upper, "ci_clipped": clipped}


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
      source = (record.get(part) or {}) if target is None else record.get("cross", {}).get(target, {})
      value = source.get(metric)
    out.append(np.nan if value is None else float(value))
  return np.asarray(out)


def capped_share(records: Iterable[dict]) -> dict:
  """{cells, known: cells that recorded `capped`, capped: how many of those were, share: capped / known
  (None when no cell recorded it)}."""
  records = list(records)
  known = [bool(r["capped"]) for r in records if r.get("capped") is not None]
  share = sum(known) / len(known) if known else None
  return {"cells": len(records), "known": len(known), "capped": sum(known), "share": share}


def real_data_equivalent(ns: Sequence[float], means: Sequence[float], target: float, labels: Sequence[str] = ()):
  """Real images per class at which the curve (`ns`, `means`) first reaches `target`, linear in log n
  between points: a number; `<n_min` when `target` is below the first point, `>n_max` when the curve
  never reaches it (`labels`: how to print the points, default the numbers); None without a curve or target."""
  labels = list(labels) or [f"{n:g}" for n in ns]
  points = sorted((float(n), float(v), label) for n, v, label in zip(ns, means, labels) if math.isfinite(v))
  if not points or not math.isfinite(target):
    return None
  n0, v0, label0 = points[0]
  if target <= v0:
    return n0 if target == v0 else f"<{label0}"
  for (n1, v1, _), (n2, v2, _) in zip(points, points[1:]):
    if v1 < target <= v2:
      fraction = (target - v1) / (v2 - v1)
      return float(math.exp(math.log(n1) + fraction * (math.log(n2) - math.log(n1))))
  return f">{points[-1][2]}"


def _images_per_class(n_per_class, records: Iterable[dict]) -> float:
  """n_per_class, or for all images (None) the mean per class of the cells' real training sets (NaN
  when the records do not say)."""
  if n_per_class is not None:
    return float(n_per_class)
  sizes = [r["real_train_size"] / len(r["real_class_counts"]) for r in records if r.get("real_class_counts")]
  return float(np.mean(sizes)) if sizes else float("nan")


def _add_real_equivalents(rows: list[dict], groups: dict) -> None:
  for dataset in dict.fromkeys(d for d, _ in groups):
    # (images per class, label) of each n of the dataset's grid that has `none` cells
    curve = [
      (_images_per_class(n, arms["none"].values()), n_label(n))
      for (d, n), arms in groups.items()
      if d == dataset and "none" in arms
    ]
    curve = [(x, label) for x, label in curve if math.isfinite(x)]
    none_rows = {r["n_per_class"]: r for r in rows if r["dataset"] == dataset and r["arm"] == "none"}
    for row in (r for r in rows if r["dataset"] == dataset):
      row["real_equivalent"] = {
        metric: real_data_equivalent(
          [x for x, _ in curve],
          [none_rows[label][metric]["mean"] for _, label in curve],
          row[metric]["mean"],
          [label for _, label in curve],
        )
        for metric in stats_metrics()
      }


def primary_comparisons(summary: dict) -> list[dict]:
  """The primary comparisons (module docstring): per (dataset, n_per_class) and metric of PRIMARY_METRICS,
  the generative arm with the highest mean validation value of the metric (first in grid order on a tie)
  against each baseline of BASELINES in the grid; the numbers are the summary's paired differences."""
  groups: dict[tuple, list[dict]] = {}
  for row in summary["rows"]:
    groups.setdefault((row["dataset"], row["n_per_class"]), []).append(row)
  out = []
  for (dataset, n), rows in groups.items():
    for metric in PRIMARY_METRICS:
      candidates = [r for r in rows if r["generative"] and math.isfinite(r["validation_mean"][metric])]
      if not candidates:
        continue
      best = max(candidates, key=lambda r: r["validation_mean"][metric])  # max keeps the first of equals
      for baseline in BASELINES:
        d = best["differences"].get(baseline, {}).get(metric)
        if d is None:
          continue
        out.append(
          {
            "dataset": dataset,
            "n_per_class": n,
            "arm": best["arm"],
            "baseline": baseline,
            "metric": metric,
            "validation_mean": best["validation_mean"][metric],
            "candidates": [r["arm"] for r in candidates],
            "seeds": d["n_pairs"],
            "mean_difference": d["mean_difference"],
            "t_lower": d["ci_lower"],
            "t_upper": d["ci_upper"],
            "p_raw": d["p_value"],
          }
        )
  return out


def _clip_difference(lower: float, upper: float) -> tuple[float, float]:
  return (max(lower, DIFF_RANGE[0]), min(upper, DIFF_RANGE[1])) if math.isfinite(lower) else (lower, upper)


def _adjust(rows: list[dict], primary: list[dict], paired: dict) -> dict:
  """Holm over the primary family (with its simultaneous intervals), BH per metric over the rest; returns
  the families' description for summary.json."""
  for row in rows:
    for by_metric in row["differences"].values():
      for d in by_metric.values():
        d.update(primary=False, p_holm=math.nan, p_bh=math.nan)
  by_key = {(r["dataset"], r["n_per_class"], r["arm"]): r for r in rows}
  holm = stats.holm([c["p_raw"] for c in primary])
  size = int(np.isfinite(holm).sum())
  confidence = stats.simultaneous_confidence(size)
  for comparison, p in zip(primary, holm):
    key = (comparison["dataset"], comparison["n_per_class"], comparison["arm"])
    _, lower, upper = stats.paired_t_interval(*paired[key + (comparison["baseline"], comparison["metric"])], confidence)
    comparison["p_holm"] = float(p)
    comparison["simultaneous_lower"], comparison["simultaneous_upper"] = _clip_difference(lower, upper)
    by_key[key]["differences"][comparison["baseline"]][comparison["metric"]].update(primary=True, p_holm=float(p))
  secondary_sizes = {}
  for metric in stats_metrics():
    family: dict[tuple, list[dict]] = {}  # one comparison -> its rows (a comparison and its mirror share a p)
    for row in rows:
      for baseline, by_metric in row["differences"].items():
        if not by_metric[metric]["primary"]:
          pair = frozenset((row["arm"], baseline))
          family.setdefault((row["dataset"], row["n_per_class"], pair), []).append(by_metric[metric])
    adjusted = stats.benjamini_hochberg([ds[0]["p_value"] for ds in family.values()])
    for ds, q in zip(family.values(), adjusted):
      for d in ds:
        d["p_bh"] = float(q)
    secondary_sizes[metric] = int(np.isfinite(adjusted).sum())
  return {
    "primary": {"size": size, "adjustment": "holm", "simultaneous_confidence": confidence},
    "secondary": {"size_by_metric": secondary_sizes, "adjustment": "benjamini_hochberg, one family per metric"},
  }


def summarize(cells: Sequence[Cell], records: dict[str, dict]) -> dict:
  """The numbers behind every table: per (dataset, n): arms with means/CIs, paired differences with their
  adjusted p-values, capped share and real-data equivalent; the primary comparisons; capped share per arm."""
  groups = _groups(cells, records)
  generator_of = {cell.arm.name: cell.arm.generator for cell in cells}  # what run_cell records as `generator`
  rows, paired = [], {}
  for (dataset, n), arms in groups.items():
    seeds = sorted({s for by_seed in arms.values() for s in by_seed})
    for arm, by_seed in arms.items():
      generator = generator_of[arm]
      row = {
        "dataset": dataset,
        "n_per_class": n_label(n),
        "arm": arm,
        "seeds": len(by_seed),
        "generator": generator,
        "generative": is_generative(generator),
      }
      for metric in stats_metrics():
        row[metric] = _interval(_values(by_seed, metric, seeds))
      row["validation_mean"] = {m: stats.mean_ci(_values(by_seed, m, seeds, "validation"))[0] for m in PRIMARY_METRICS}
      row["differences"] = {}
      for baseline in BASELINES:
        if baseline not in arms or baseline == arm:
          continue
        row["differences"][baseline] = {}
        for metric in stats_metrics():
          a, b = _values(by_seed, metric, seeds), _values(arms[baseline], metric, seeds)
          paired[(dataset, row["n_per_class"], arm, baseline, metric)] = (a, b)
          row["differences"][baseline][metric] = stats.compare_paired(a, b, bounds=DIFF_RANGE)
      row["capped"] = capped_share(by_seed.values())
      rows.append(row)
  _add_real_equivalents(rows, groups)
  summary = {"rows": rows}
  summary["primary"] = primary_comparisons(summary)
  summary["families"] = _adjust(rows, summary["primary"], paired)
  by_arm: dict[str, list[dict]] = {}
  for arms in groups.values():
    for arm, by_seed in arms.items():
      by_arm.setdefault(arm, []).extend(by_seed.values())
  summary["capped_by_arm"] = {arm: capped_share(arm_records) for arm, arm_records in by_arm.items()}
  return summary


# ----------------------------------------------------------------------------- table.md


def _fmt(m: dict) -> str:
  if not math.isfinite(m["mean"]):
    return "-"
  if not math.isfinite(m["ci95"]):
    return f"{m['mean']:.3f}"
  # A clipped interval is asymmetric, so it shows both ends.
  if m["ci_clipped"]:
    return f"{m['mean']:.3f} [{m['ci_lower']:.3f}, {m['ci_upper']:.3f}]"
  return f"{m['mean']:.3f} ± {m['ci95']:.3f}"


def _p(p: float) -> str:
  return f"{p:.2g}" if math.isfinite(p) else "-"


def _fmt_interval(mean: float, lower: float, upper: float) -> str:
  if not math.isfinite(mean):
    return "-"
  return f"{mean:+.3f}" + (f" [{lower:+.3f}, {upper:+.3f}]" if math.isfinite(lower) else "")


def _fmt_diff(d: dict) -> str:
  if not math.isfinite(d["mean_difference"]):
    return "-"
  text = _fmt_interval(d["mean_difference"], d["ci_lower"], d["ci_upper"])
  if math.isfinite(d["p_value"]):
    text += f" p={_p(d['p_value'])}" + (f" Holm={_p(d['p_holm'])}" if d["primary"] else f" q={_p(d['p_bh'])}")
  return f"**{text}**" if d["primary"] else text


def _fmt_capped(capped: dict) -> str:
  if capped["cells"] == 0:
    return ""
  if capped["known"] == 0:
    return "unknown"
  text = f"{capped['capped']}/{capped['known']}"
  return text + (f" ({capped['cells'] - capped['known']} unknown)" if capped["known"] < capped["cells"] else "")


def _fmt_equivalent(value) -> str:
  if value is None:
    return ""
  return value if isinstance(value, str) else f"{value:.0f}"


def _table_lines(header: Sequence[str]) -> list[str]:
  return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]


def primary_markdown(summary: dict) -> list[str]:
  families = summary["families"]["primary"]
  lines = [
    "## Primary comparisons",
    "",
    "Declared before any result was read: per dataset and n_per_class, the best generative arm (a trained "
    "generator's synthetic images; the highest mean validation value of the metric over its seeds, never "
    "chosen on test) against `classic` and against `none`, on balanced accuracy and ROC-AUC. Δ: paired "
    "(same seed) difference in the test metric, mean [Student's t 95% interval]; simultaneous: the t "
    + (
      f"interval at the Bonferroni level {families['simultaneous_confidence']:.4g} (1 - .05/{families['size']}), "
      f"which holds for all {families['size']} together"
      if families["size"]
      else "interval at the Bonferroni level over the comparisons with two seeds or more (none yet)"
    )
    + "; p: paired t-test; Holm: p adjusted by Holm's step-down method across these comparisons.",
    "",
  ]
  if not summary["primary"]:
    return lines + ["None: no generative arm with validation metrics in this grid.", ""]
  lines += _table_lines(
    [
      "dataset",
      "n_per_class",
      "arm (best on validation)",
      "baseline",
      "metric",
      "seeds",
      "Δ [95% t interval]",
      "simultaneous",
      "p",
      "Holm p",
    ]
  )
  for c in summary["primary"]:
    simultaneous = (
      f"[{c['simultaneous_lower']:+.3f}, {c['simultaneous_upper']:+.3f}]"
      if math.isfinite(c["simultaneous_lower"])
      else "-"
    )
    cols = [
      c["dataset"],
      c["n_per_class"],
      c["arm"],
      c["baseline"],
      SHORT[c["metric"]],
      str(c["seeds"]),
      _fmt_interval(c["mean_difference"], c["t_lower"], c["t_upper"]),
      simultaneous,
      _p(c["p_raw"]),
      _p(c["p_holm"]),
    ]
    lines.append("| " + " | ".join(cols) + " |")
  return lines + [""]


def table_markdown(summary: dict) -> str:
  lines = primary_markdown(summary)
  lines += [
    "## Every arm",
    "",
    "Test metrics, mean ± 95% t interval over seeds, clipped to the metrics' range [0, 1] and then shown as "
    "mean [lower, upper]. The threshold of each classifier is chosen on validation. Δ: paired (same seed) "
    "difference, mean [Student's t 95% interval], p: paired t-test; a primary comparison (bold) gives its "
    "Holm-adjusted p, every other one q, its Benjamini-Hochberg-adjusted p within its metric over the whole "
    "table. The csv adds the sign-flip permutation p-value (never below 2/2^n with n seeds) and the BCa "
    "bootstrap interval (from 10 seeds) as checks. capped: classifiers that used their whole step budget "
    "instead of stopping early (unknown: cells recorded before the field). real n: images per class at "
    "which `none`'s mean curve over n (linear in log n) reaches the arm's mean; <n_min below its first "
    "point, >n_max never.",
  ]
  current = None
  for row in summary["rows"]:
    if (row["dataset"], row["n_per_class"]) != current:
      current = row["dataset"], row["n_per_class"]
      header = (
        ["arm", "seeds"]
        + [SHORT[m] for m in TABLE_METRICS]
        + [f"Δ {SHORT[m]} vs {b}" for b in BASELINES for m in DIFF_METRICS]
        + ["capped"]
        + [f"real n ({SHORT[m]})" for m in DIFF_METRICS]
      )
      lines += ["", f"### {row['dataset']}, n_per_class = {row['n_per_class']}", "", *_table_lines(header)]
    cols = [row["arm"], str(row["seeds"])] + [_fmt(row[m]) for m in TABLE_METRICS]
    for b in BASELINES:
      for m in DIFF_METRICS:
        d = row["differences"].get(b, {}).get(m)
        cols.append(_fmt_diff(d) if d else "")
    cols.append(_fmt_capped(row["capped"]))
    cols += [_fmt_equivalent(row["real_equivalent"][m]) for m in DIFF_METRICS]
    lines.append("| " + " | ".join(cols) + " |")
  capped = [f"{arm} {_fmt_capped(c)}" for arm, c in summary["capped_by_arm"].items() if c["cells"]]
  if capped:
    lines += ["", "## Capped classifiers per arm (all datasets and n)", "", ", ".join(capped) + "."]
  return "\n".join(lines).strip() + "\n"


# ----------------------------------------------------------------------------- csv


def _num(x) -> str:
  if isinstance(x, str):
    return x
  return "" if x is None or not math.isfinite(x) else f"{x:.6g}"


def _capped_csv(capped: dict) -> str:
  if capped["cells"] == 0:
    return ""
  return "unknown" if capped["share"] is None else _num(capped["share"])


def table_csv(summary: dict) -> str:
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  header = ["dataset", "n_per_class", "arm", "seeds"]
  for m in stats_metrics():
    header += [f"{m}_mean", f"{m}_ci95", f"{m}_ci_lower", f"{m}_ci_upper"]
  header += [f"{m}_validation_mean" for m in PRIMARY_METRICS]
  for b in BASELINES:
    for m in stats_metrics():
      header += [f"{m}_diff_vs_{b}{suffix}" for suffix, _ in _DIFF_CSV_FIELDS]
  header += ["capped_share", "capped_known"] + [f"{m}_real_equivalent" for m in stats_metrics()]
  writer.writerow(header)
  for row in summary["rows"]:
    out = [row["dataset"], row["n_per_class"], row["arm"], row["seeds"]]
    for m in stats_metrics():
      out += [_num(row[m][k]) for k in ("mean", "ci95", "ci_lower", "ci_upper")]
    out += [_num(row["validation_mean"][m]) for m in PRIMARY_METRICS]
    for b in BASELINES:
      for m in stats_metrics():
        d = row["differences"].get(b, {}).get(m)
        out += [_num(d[key]) for _, key in _DIFF_CSV_FIELDS] if d else [""] * len(_DIFF_CSV_FIELDS)
    out += [_capped_csv(row["capped"]), row["capped"]["known"]]
    out += [_num(row["real_equivalent"][m]) for m in stats_metrics()]
    writer.writerow(out)
  return buffer.getvalue()


def primary_csv(summary: dict) -> str:
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(PRIMARY_CSV_COLUMNS)
  for c in summary["primary"]:
    writer.writerow([_num(c[k]) if isinstance(c[k], float) else c[k] for k in PRIMARY_CSV_COLUMNS])
  return buffer.getvalue()


# ----------------------------------------------------------------------------- cross-dataset


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
    *_table_lines(header),
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


# ----------------------------------------------------------------------------- timing

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


# ----------------------------------------------------------------------------- all outputs


def write_outputs(sweep, records: dict[str, dict]) -> str:
  """Writes table.md/.csv, primary.csv, cross_dataset.md/.csv, summary.json and figures; returns table.md's text."""
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
  (workdir / "primary.csv").write_text(primary_csv(summary))
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
  from experiments import study_figures  # imports this module

  study_figures.write_figures(sweep, cells, records, summary, workdir / "figures")
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
