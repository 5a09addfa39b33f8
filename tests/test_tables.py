"""experiments.tables and experiments.study_figures on records built here (no training): intervals inside
the metrics' range, pairing by seed, the primary comparisons (best generative arm chosen on validation,
Holm) and the secondary ones (BH), the real-data equivalent, the capped share, the files and their
columns, byte-identical reruns, and the committed `full` study rebuilt without any data."""

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from experiments import stats, study_figures, sweep, tables
from experiments.configs import compare as compare_config
from vaeaug import synthesis
from vaeaug.data import pipeline

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("with_mask", "without_mask")


def tiny_config(arms, num_seeds=3, n_per_class=(12,)):
  config = compare_config.get_config("tiny")
  config.arms, config.num_seeds, config.n_per_class = tuple(arms), num_seeds, tuple(n_per_class)
  return config


def make_record(cell, test, validation=None, **extra) -> dict:
  """A cells.jsonl line with what the tables read; `test`/`validation`: one value for every metric, or
  {metric: value} (other metrics .5)."""

  def metrics(value):
    if isinstance(value, dict):
      return {m: value.get(m, 0.5) for m in tables.stats_metrics()}
    return dict.fromkeys(tables.stats_metrics(), value)

  record = {
    "key": cell.key,
    "dataset": cell.dataset,
    "n_per_class": cell.n_per_class,
    "seed": cell.seed,
    "arm": cell.arm.name,
    "generator": cell.arm.generator,
    "test": metrics(test),
    "real_train_size": 200 if cell.n_per_class is None else 2 * cell.n_per_class,
    "real_class_counts": {"with_mask": 100, "without_mask": 100}
    if cell.n_per_class is None
    else dict.fromkeys(CLASSES, cell.n_per_class),
  }
  if validation is not None:
    record["validation"] = metrics(validation)
  record.update(extra)
  return record


def row_of(summary, arm, n="12"):
  return next(r for r in summary["rows"] if r["arm"] == arm and r["n_per_class"] == n)


# ----------------------------------------------------------------------------- intervals and pairing


def test_tables_keep_intervals_of_proportions_inside_zero_one():
  config = tiny_config(("none", "classic"), num_seeds=2)
  cells = sweep.cells_of(config)
  records = {}
  for cell in cells:
    value = (0.2, 0.976)[cell.seed - config.first_seed] if cell.arm.name == "none" else 0.9 + 0.01 * cell.seed
    records[cell.key] = {"test": {m: value for m in tables.stats_metrics()}}
  summary = tables.summarize(cells, records)
  none = row_of(summary, "none")
  spec = none["specificity"]
  assert (spec["ci_lower"], spec["ci_upper"], spec["ci_clipped"]) == (0.0, 1.0, True)
  assert spec["ci95"] > 4  # the plain half-width is still there for consumers
  classic = row_of(summary, "classic")["specificity"]
  assert not classic["ci_clipped"] and classic["ci_lower"] == pytest.approx(classic["mean"] - classic["ci95"])
  markdown = tables.table_markdown(summary)
  assert "0.588 [0.000, 1.000]" in markdown and "0.588 ±" not in markdown and "clipped" in markdown
  header, *rows = list(csv.reader(io.StringIO(tables.table_csv(summary))))
  row = dict(zip(header, rows[0]))
  assert (row["specificity_ci_lower"], row["specificity_ci_upper"]) == ("0", "1")
  ends = ("_mean", "_t_lower", "_t_upper", "_bca_lower", "_bca_upper")
  for name, value in row.items():  # every interval end of a metric in [0, 1], every difference in [-1, 1]
    if value and ("_ci_" in name or name.endswith(ends)):
      assert -1 <= float(value) <= 1 and ("_diff_" in name or 0 <= float(value)), (name, value)


def test_tables_pair_arms_by_seed():
  config = tiny_config(("none", "classic"), num_seeds=4)
  cells = sweep.cells_of(config)
  rng = np.random.default_rng(0)
  records = {}
  for cell in cells:
    base = 0.6 + 0.1 * cell.seed  # large seed effect, constant +0.02 effect of the arm
    value = base + (0.02 if cell.arm.name == "classic" else 0.0) + rng.normal(0, 1e-9)
    records[cell.key] = {"test": {m: value for m in tables.stats_metrics()}}
  summary = tables.summarize(cells, records)
  classic = row_of(summary, "classic")
  diff = classic["differences"]["none"]["balanced_accuracy"]
  assert diff["mean_difference"] == pytest.approx(0.02, abs=1e-6)
  # Paired: the seed effect cancels, so the interval is tight although the arms' own CIs are wide.
  assert diff["ci_upper"] - diff["ci_lower"] < 1e-6 < classic["balanced_accuracy"]["ci95"]
  assert diff["p_value"] < 1e-6  # the t-test sees the consistent effect...
  assert diff["p_value_signflip"] == pytest.approx(2 / 16)  # ...the sign-flip test cannot go below 2/2^4
  markdown = tables.table_markdown(summary)
  assert "+0.020" in markdown and "n_per_class = 12" in markdown
  assert tables.table_csv(summary).count("\n") == 1 + 2


# ----------------------------------------------------------------------------- primary and secondary


def test_best_generative_arm_is_chosen_on_validation_not_test():
  """Test and validation disagree: cvae is best on test, classic+cvae (balanced accuracy) and dae (ROC-AUC)
  on validation; classic and noise_blur are better still on validation but not generative."""
  arms = ("none", "classic", "noise_blur", "dae", "cvae", "classic+cvae")
  config = tiny_config(arms, num_seeds=4)
  cells = sweep.cells_of(config)
  test = {"none": 0.80, "classic": 0.85, "noise_blur": 0.83, "dae": 0.78, "cvae": 0.90, "classic+cvae": 0.82}
  validation = {
    "none": {"balanced_accuracy": 0.80, "roc_auc": 0.85},
    "classic": {"balanced_accuracy": 0.99, "roc_auc": 0.99},
    "noise_blur": {"balanced_accuracy": 0.97, "roc_auc": 0.98},
    "dae": {"balanced_accuracy": 0.85, "roc_auc": 0.95},
    "cvae": {"balanced_accuracy": 0.75, "roc_auc": 0.80},
    "classic+cvae": {"balanced_accuracy": 0.92, "roc_auc": 0.90},
  }
  rng = np.random.default_rng(5)
  records = {}
  for cell in cells:
    value = test[cell.arm.name] + 0.01 * cell.seed + rng.normal(0, 0.01)
    seen = {m: v + 0.001 * cell.seed for m, v in validation[cell.arm.name].items()}
    records[cell.key] = make_record(cell, value, seen)
  summary = tables.summarize(cells, records)
  chosen = {(c["metric"], c["baseline"]): c["arm"] for c in summary["primary"]}
  assert chosen == {
    ("balanced_accuracy", "none"): "classic+cvae",
    ("balanced_accuracy", "classic"): "classic+cvae",
    ("roc_auc", "none"): "dae",
    ("roc_auc", "classic"): "dae",
  }
  assert tables.primary_comparisons(summary) == [
    {k: v for k, v in c.items() if k not in ("p_holm", "simultaneous_lower", "simultaneous_upper")}
    for c in summary["primary"]
  ]
  # Holm over the primary family, with its simultaneous (Bonferroni) intervals.
  primary_p = [c["p_raw"] for c in summary["primary"]]
  assert [c["p_holm"] for c in summary["primary"]] == pytest.approx(list(stats.holm(primary_p)))
  confidence = stats.simultaneous_confidence(4)
  assert summary["families"]["primary"] == {"size": 4, "adjustment": "holm", "simultaneous_confidence": confidence}
  for c in summary["primary"]:
    d = row_of(summary, c["arm"])["differences"][c["baseline"]][c["metric"]]
    assert d["primary"] and d["p_holm"] == c["p_holm"] and math.isnan(d["p_bh"])
    assert c["simultaneous_lower"] < c["t_lower"] < c["mean_difference"] < c["t_upper"] < c["simultaneous_upper"]
  # BH per metric over the rest; a comparison and its mirror (classic vs none, none vs classic) count once.
  for metric, primary_arm in (("balanced_accuracy", "classic+cvae"), ("roc_auc", "dae")):
    secondary = [row_of(summary, "classic")["differences"]["none"][metric]]
    for arm in ("noise_blur", "dae", "cvae", "classic+cvae"):
      if arm != primary_arm:
        secondary += [row_of(summary, arm)["differences"][b][metric] for b in ("none", "classic")]
    expected = stats.benjamini_hochberg([d["p_value"] for d in secondary])
    assert [d["p_bh"] for d in secondary] == pytest.approx(list(expected))
    assert all(not d["primary"] and math.isnan(d["p_holm"]) for d in secondary)
    mirror = row_of(summary, "none")["differences"]["classic"][metric]
    assert mirror["p_bh"] == secondary[0]["p_bh"]
    assert summary["families"]["secondary"]["size_by_metric"][metric] == 7
  markdown = tables.table_markdown(summary)
  assert markdown.startswith("## Primary comparisons")
  assert "| face_mask_detection/2classes | 12 | classic+cvae | none | bal. acc. | 4 |" in markdown
  assert markdown.count(" Holm=") == 4 and "q=" in markdown


def test_no_primary_comparison_without_validation_or_generative_arms():
  config = tiny_config(("none", "classic", "noise_blur"))
  cells = sweep.cells_of(config)
  summary = tables.summarize(cells, {c.key: make_record(c, 0.8 + 0.01 * c.seed, 0.9) for c in cells})
  assert summary["primary"] == [] and "None: no generative arm" in tables.table_markdown(summary)
  config = tiny_config(("none", "dae"))
  cells = sweep.cells_of(config)
  summary = tables.summarize(cells, {c.key: make_record(c, 0.8 + 0.01 * c.seed) for c in cells})  # no validation
  assert summary["primary"] == []


# ----------------------------------------------------------------------------- real-data equivalent, capped


def test_real_data_equivalent_interpolates_in_log_n():
  ns, means = [25, 50, 100], [0.80, 0.85, 0.90]
  assert tables.real_data_equivalent(ns, means, 0.825) == pytest.approx(math.sqrt(25 * 50))
  assert tables.real_data_equivalent(ns, means, 0.85) == pytest.approx(50)
  assert tables.real_data_equivalent(ns, means, 0.80) == 25
  assert tables.real_data_equivalent(ns, means, 0.79) == "<25"
  assert tables.real_data_equivalent(ns, means, 0.95) == ">100"
  assert tables.real_data_equivalent(ns, means, 0.95, ["25", "50", "all"]) == ">all"
  # Not monotone: the first n at which `none` reaches the target.
  assert tables.real_data_equivalent(ns, [0.80, 0.90, 0.85], 0.86) == pytest.approx(25 * 2**0.6)
  assert tables.real_data_equivalent(ns, [np.nan] * 3, 0.8) is None  # no `none` cells
  assert tables.real_data_equivalent(ns, means, np.nan) is None
  assert tables.real_data_equivalent([], [], 0.8) is None


def test_real_data_equivalent_in_the_tables():
  config = tiny_config(("none", "classic"), num_seeds=2, n_per_class=(12, 24, None))
  cells = sweep.cells_of(config)
  by_n = {"none": {12: 0.70, 24: 0.80, None: 0.90}, "classic": {12: 0.75, 24: 0.95, None: 0.65}}
  records = {c.key: make_record(c, by_n[c.arm.name][c.n_per_class] + 0.001 * c.seed) for c in cells}
  summary = tables.summarize(cells, records)
  # `all` sits at its mean images per class (200 images, 2 classes: 100).
  assert row_of(summary, "none", "all")["real_equivalent"]["balanced_accuracy"] == pytest.approx(100)
  assert row_of(summary, "classic", "12")["real_equivalent"]["balanced_accuracy"] == pytest.approx(math.sqrt(12 * 24))
  assert row_of(summary, "classic", "24")["real_equivalent"]["balanced_accuracy"] == ">all"
  assert row_of(summary, "classic", "all")["real_equivalent"]["balanced_accuracy"] == "<12"
  markdown = tables.table_markdown(summary)
  assert "| 17 | 17 |" in markdown and "| >all | >all |" in markdown
  header, *rows = list(csv.reader(io.StringIO(tables.table_csv(summary))))
  assert [dict(zip(header, r))["balanced_accuracy_real_equivalent"] for r in rows] == [
    "12",
    "16.9706",
    "24",
    ">all",
    "100",
    "<12",
  ]
  # Without `none` there is no curve: blank.
  config = tiny_config(("classic", "dae"))
  cells = sweep.cells_of(config)
  summary = tables.summarize(cells, {c.key: make_record(c, 0.8) for c in cells})
  assert all(r["real_equivalent"]["balanced_accuracy"] is None for r in summary["rows"])


def test_capped_share_with_and_without_the_field():
  assert tables.capped_share([{"capped": True}, {"capped": False}, {"capped": True}]) == {
    "cells": 3,
    "known": 3,
    "capped": 2,
    "share": pytest.approx(2 / 3),
  }
  old = tables.capped_share([{}, {}])  # recorded before the field: unknown, not uncapped
  assert old == {"cells": 2, "known": 0, "capped": 0, "share": None}
  assert tables.capped_share([{"capped": True}, {}])["share"] == 1.0
  config = tiny_config(("none", "classic", "dae"), num_seeds=2)
  cells = sweep.cells_of(config)
  capped = {"none": {}, "classic": {"capped": False}, "dae": {"capped": True}}
  records = {}
  for cell in cells:
    extra = capped[cell.arm.name] if cell.seed == config.first_seed or cell.arm.name != "dae" else {}
    records[cell.key] = make_record(cell, 0.8 + 0.01 * cell.seed, **extra)
  summary = tables.summarize(cells, records)
  assert summary["capped_by_arm"]["none"]["share"] is None
  assert summary["capped_by_arm"]["classic"] == {"cells": 2, "known": 2, "capped": 0, "share": 0.0}
  assert summary["capped_by_arm"]["dae"] == {"cells": 2, "known": 1, "capped": 1, "share": 1.0}
  markdown = tables.table_markdown(summary)
  assert "| unknown |" in markdown and "| 0/2 |" in markdown and "| 1/1 (1 unknown) |" in markdown
  assert "none unknown, classic 0/2, dae 1/1 (1 unknown)." in markdown
  header, *rows = list(csv.reader(io.StringIO(tables.table_csv(summary))))
  assert [(dict(zip(header, r))["capped_share"], dict(zip(header, r))["capped_known"]) for r in rows] == [
    ("unknown", "0"),
    ("0", "2"),
    ("1", "1"),
  ]


# ----------------------------------------------------------------------------- files and figures


class FakeSweep:
  """What `tables.write_outputs` uses of a Sweep, with real images from memory instead of a dataset."""

  group_dir = sweep.Sweep.group_dir

  def __init__(self, config, workdir: Path):
    self.config, self.workdir, self.hash = config, workdir, sweep.config_hash(config)
    self.runs = workdir / "runs" / self.hash
    self.real_reads = 0

  def real_train(self, dataset, n_per_class, seed):
    self.real_reads += 1
    labels = np.repeat(np.arange(len(CLASSES)), n_per_class)
    images = np.random.default_rng(seed).integers(0, 256, (labels.size, 8, 8, 3), dtype=np.uint8)
    files = [f"real/{i}" for i in range(labels.size)]
    return pipeline.ArrayDataset(images, labels, files, files, CLASSES)


def synthetic_set(per_class: int) -> synthesis.SyntheticSet:
  n = per_class * len(CLASSES)
  return synthesis.SyntheticSet(
    images=np.random.default_rng(1).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
    labels=np.repeat(np.arange(len(CLASSES)), per_class),
    class_names=CLASSES,
    generator=["dae"] * n,
    sampler=["denoise"] * n,
    seed=[0] * n,
    source_index=[-1] * n,
    source_file=[""] * n,
    source_index_b=[-1] * n,
    source_file_b=[""] * n,
    mix=[np.nan] * n,
    component=[-1] * n,
  )


def study_records(config):
  cells = sweep.cells_of(config)
  effect = {"none": 0.0, "classic": 0.03, "dae": 0.01, "cvae": -0.02}
  rng = np.random.default_rng(3)
  records = {}
  for cell in cells:
    n_effect = 0.0 if cell.n_per_class == 12 else 0.05
    value = 0.8 + n_effect + effect[cell.arm.name] + 0.01 * cell.seed + rng.normal(0, 0.005)
    quality = None
    if cell.arm.generator and not (cell.arm.name == "cvae" and cell.seed == config.first_seed):
      quality = {"frechet": 10 + 20 * rng.random(), "precision": 0.5}
    records[cell.key] = make_record(
      cell, value, value + 0.01, capped=bool(cell.seed % 2), quality=quality, cross={}, timing={"cell_seconds": 1.0}
    )
  return cells, records


def test_write_outputs_files_columns_and_byte_identical_rerun(tmp_path):
  config = tiny_config(("none", "classic", "dae", "cvae"), n_per_class=(12, 24))
  cells, records = study_records(config)
  fake = FakeSweep(config, tmp_path)
  for n in (12, 24):  # the dae sets of the first seed; runs/ has no cvae set
    group = fake.group_dir(cells[0].dataset, n, config.first_seed)
    group.mkdir(parents=True)
    synthetic_set(config.synthesis.figure_samples).save(group / "synthetic_dae.npz")
  markdown = tables.write_outputs(fake, records)
  assert markdown == (tmp_path / "table.md").read_text() and "PARTIAL" not in markdown
  assert fake.real_reads == 1  # one real row, from the first group with a synthetic set
  figures = tmp_path / "figures"
  for name in (
    "forest",
    "balanced_accuracy_vs_n",
    "roc_auc_vs_n",
    "quality_vs_gain",
    "samples_face_mask_detection-2classes_dae",
  ):
    for suffix in (".png", ".svg"):
      assert (figures / f"{name}{suffix}").stat().st_size > 1000, name + suffix
  assert not list(figures.glob("samples_*cvae*"))
  header, *rows = list(csv.reader(io.StringIO((tmp_path / "table.csv").read_text())))
  assert len(rows) == 2 * 4
  for b in ("none", "classic"):
    for m in tables.stats_metrics():
      for suffix in ("", "_t_lower", "_t_upper", "_p", "_p_holm", "_p_bh", "_p_signflip", "_bca_lower", "_bca_upper"):
        assert f"{m}_diff_vs_{b}{suffix}" in header
  for name in ("capped_share", "balanced_accuracy_real_equivalent", "roc_auc_real_equivalent", "roc_auc_ci_lower"):
    assert name in header
  table = [dict(zip(header, r)) for r in rows]
  assert all(r["capped_share"] == "0.333333" for r in table)  # seeds 0, 1, 2: only seed 1 capped
  primary_rows = [r for r in table if r["balanced_accuracy_diff_vs_none_p_holm"]]
  assert primary_rows and all(not r["balanced_accuracy_diff_vs_none_p_bh"] for r in primary_rows)
  primary_header, *primary = list(csv.reader(io.StringIO((tmp_path / "primary.csv").read_text())))
  assert tuple(primary_header) == tables.PRIMARY_CSV_COLUMNS
  assert len(primary) == 2 * 2 * 2  # n values x metrics x baselines
  summary = json.loads(
    (tmp_path / "summary.json").read_text(), parse_constant=lambda name: pytest.fail(f"{name} in summary.json")
  )
  assert len(summary["table"]["primary"]) == 8 and summary["table"]["capped_by_arm"]["dae"]["known"] == 2 * 3
  before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "runs" not in p.parts}
  tables.write_outputs(fake, records)
  after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "runs" not in p.parts}
  assert sorted(after) == sorted(before)
  changed = [str(p.relative_to(tmp_path)) for p in before if before[p] != after[p]]
  assert not changed


def test_quality_figure_needs_a_quality_record(tmp_path):
  cells, records = study_records(tiny_config(("none", "classic", "dae", "cvae")))
  assert study_figures.quality_vs_gain_figure(cells, records, tmp_path / "quality")
  for record in records.values():
    record["quality"] = None
  assert not study_figures.quality_vs_gain_figure(cells, records, tmp_path / "none")
  assert not (tmp_path / "none.png").exists()


def test_committed_full_study_rebuilds_without_data():
  """experiments/results/full: the 1.0.0-split cells, tabled without any dataset or runs/ folder."""
  config = compare_config.get_config("full")
  config.dataset_version = "1.0.0"
  records = sweep.Sweep(config, ROOT / "experiments" / "results" / "full").tables_only_records()
  assert len(records) == 300
  summary = tables.summarize(sweep.cells_of(config), records)
  assert len(summary["primary"]) == 2 * 5 * 2 * 2  # datasets x n x metrics x baselines
  assert all(c["seeds"] == 5 and c["arm"] in ("dae", "vae", "cvae", "classic+cvae") for c in summary["primary"])
  assert summary["families"]["primary"]["size"] == 40
  assert all(c["share"] is None for c in summary["capped_by_arm"].values())  # recorded before the field
  assert tables.table_markdown(summary).startswith("## Primary comparisons")
