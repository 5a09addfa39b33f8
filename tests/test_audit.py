"""The leak audit (vaeaug.data.audit) and the two commands (scripts/audit_data.py, scripts/prepare_data.py,
run from a folder outside the checkout), on small samples with known leaks;
plus the `slow` full-data tests (all configs built from the real downloads, exact counts, audit
figures): `pytest -m slow -s tests/test_audit.py`."""

from __future__ import annotations

import collections
import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import K12_DUPLICATE_PAIR, K12_ROOT, K12_SPLIT_FOLDERS, copy_files, read_built

from vaeaug.data import audit, building, grouping

REPO = Path(__file__).resolve().parents[1]
K12 = "face_mask12k"
SPLIT_ORDER = {split: i for i, split in enumerate(grouping.SPLITS)}


def expected_12k_leaks(files: list[str]) -> dict:
  """Cross-split pairs of the 12K sample from its composition alone: same-source Augmented_<N>
  files in different download folders, plus the known exact duplicate pair."""
  split_of = {f: K12_SPLIT_FOLDERS[Path(f).parts[1]] for f in files}
  linked = []
  by_source = collections.defaultdict(list)
  for f in files:
    match = re.match(r"Augmented_(\d+)_", Path(f).name)
    if match:
      by_source[match.group(1)].append(f)
  for members in by_source.values():
    linked += [(a, b, "same-source") for a, b in itertools.combinations(members, 2)]
  a, b = (f"{K12_ROOT}/{f}" for f in K12_DUPLICATE_PAIR)
  linked.append((a, b, "exact"))
  by_pair, by_kind = collections.Counter(), collections.Counter()
  with_train = {"validation": set(), "test": set()}
  for a, b, kind in linked:
    sa, sb = sorted((split_of[a], split_of[b]), key=SPLIT_ORDER.get)
    if sa == sb:
      continue
    by_pair[f"{sa}-{sb}"] += 1
    by_kind[kind] += 1
    if sa == "train":
      with_train[sb].add(b if split_of[b] == sb else a)
  return dict(
    cross=sum(by_pair.values()),
    by_pair=by_pair,
    by_kind=dict(by_kind),
    with_train={s: len(v) for s, v in with_train.items()},
  )


@pytest.fixture(scope="module")
def k12_official(built):
  return built(K12, "official")


def test_audit_counts_the_known_leaks_of_the_official_split(k12_official):
  files = [row["file"] for row in k12_official.rows]
  expected = expected_12k_leaks(files)
  assert expected["cross"] > 10 and expected["with_train"]["validation"] > 0  # the sample leaks
  result = audit.audit(K12, "official", data_dir=k12_official.data_dir, max_examples=100)
  assert result.cross_split_pairs == expected["cross"]
  assert result.pairs_by_split_pair == {
    p: expected["by_pair"].get(p, 0) for p in ("train-validation", "train-test", "validation-test")
  }
  assert result.pairs_by_kind == expected["by_kind"]
  assert result.images_with_train_sibling == expected["with_train"]
  assert result.images_in_group_with_train == expected["with_train"]
  sizes = collections.Counter(row["split"] for row in k12_official.rows)
  assert result.split_sizes == {s: sizes[s] for s in grouping.SPLITS}
  text = result.report()
  assert f"pairs crossing splits: {expected['cross']}" in text
  dup = tuple(f"{K12_ROOT}/{f}" for f in K12_DUPLICATE_PAIR)
  assert f"[exact] {dup[1]}  <->  {dup[0]}" in text


def test_audit_json_round_trip(k12_official):
  result = audit.audit(K12, "official", data_dir=k12_official.data_dir)
  data = json.loads(json.dumps(result.to_json()))
  assert data["cross_split_pairs"] == result.cross_split_pairs
  assert data["images_with_train_sibling"] == result.images_with_train_sibling


@pytest.mark.parametrize(
  "dataset, config",
  [
    (K12, "grouped"),
    ("face_mask_observations", "grouped"),
    ("face_mask_detection", "2classes"),
    ("face_mask_detection", "3classes"),
  ],
)
def test_audit_of_grouped_configs_finds_nothing(built, dataset, config):
  b = built(dataset, config)
  result = audit.audit(dataset, config, data_dir=b.data_dir)
  assert result.cross_split_pairs == 0
  assert result.images_with_train_sibling == {"validation": 0, "test": 0}
  assert result.images_in_group_with_train == {"validation": 0, "test": 0}
  assert sum(result.split_sizes.values()) == b.report.total


def test_audit_of_an_unbuilt_dataset_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="not built"):
    audit.audit(K12, "official", data_dir=tmp_path)


def run_script(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
  return subprocess.run(
    [sys.executable, str(REPO / "scripts" / script), *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_audit_script_json(k12_official, tmp_path):
  out = run_script(
    "audit_data.py",
    "--dataset=face_mask12k",
    "--config=official",
    f"--data_dir={k12_official.data_dir}",
    "--json",
    cwd=tmp_path,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  data = json.loads(out.stdout)
  assert data["dataset"] == K12 and data["config"] == "official"
  expected = expected_12k_leaks([row["file"] for row in k12_official.rows])
  assert data["cross_split_pairs"] == expected["cross"]
  assert data["images_with_train_sibling"] == expected["with_train"]
  assert set(data["images_with_train_sibling"]) == {"validation", "test"}


def test_prepare_script_prints_summary(real_raw_root, tmp_path):
  files = ["with_mask/0-with-mask.jpg", "with_mask/1-with-mask.jpg", "without_mask/100.jpg", "without_mask/130.jpg"]
  raw = tmp_path / "raw"
  copy_files(real_raw_root / "face-mask-observations", raw / "face-mask-observations", files)
  (raw / "face-mask-observations" / "with_mask" / "notes.txt").write_text("x\n")
  args = (
    "prepare_data.py",
    "--datasets=face_mask_observations",
    f"--raw_dir={raw}",
    f"--data_dir={tmp_path / 'tfds'}",
  )
  out = run_script(*args, cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "== face_mask_observations/grouped" in out.stdout
  # Quiet console: TFDS's logs and prints go to the log file, which one stderr line names.
  log = tmp_path / "tfds" / "prepare.log"
  assert out.stderr.strip() == f"library messages: {log} (--verbosity=1 shows them here)"
  assert "Generating dataset face_mask_observations" in log.read_text()
  assert "Downloading and preparing" not in out.stdout and "Downloading and preparing" in log.read_text()
  version = building.builder_class("face_mask_observations").VERSION
  assert f"face_mask_observations/grouped v{version}: 4 examples" in out.stdout
  assert re.search(r"skipped 1:\n\s+1\s+not an image extension\s+\(e\.g\. with_mask/notes\.txt\)", out.stdout)
  split_lines = re.findall(
    r"^\s+(train|validation|test)\s+(\d+)\s+\(with_mask (\d+), without_mask (\d+)\)", out.stdout, re.M
  )
  assert len(split_lines) == 3 and sum(int(n) for _, n, _, _ in split_lines) == 4
  # Idempotent: the second run reads the stored report and prints the same summary.
  again = run_script(*args, cwd=tmp_path)
  assert again.returncode == 0, again.stderr[-2000:]
  summary = lambda text: text[text.index(f"face_mask_observations/grouped v{version}") : text.rindex("done in")]
  assert summary(again.stdout) == summary(out.stdout)


def test_prepare_script_missing_raw_dir_is_clear(tmp_path):
  out = run_script(
    "prepare_data.py",
    "--datasets=face_mask12k",
    f"--raw_dir={tmp_path}",
    f"--data_dir={tmp_path / 'tfds'}",
    cwd=tmp_path,
  )
  assert out.returncode != 0
  assert f"{tmp_path / 'face-mask-12k'}: missing folder" in out.stderr


# ============================================================================ full data (slow)

FULL_CONFIGS = [
  ("face_mask_detection", "2classes"),
  ("face_mask_detection", "3classes"),
  (K12, "official"),
  (K12, "grouped"),
  ("face_mask_observations", "grouped"),
]


@pytest.fixture(scope="module")
def full_builds(real_raw_root, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds_full")
  reports = {}
  for dataset, config in FULL_CONFIGS:
    start = time.perf_counter()
    reports[dataset, config] = building.prepare(dataset, config, data_dir=data_dir, raw_root=real_raw_root)
    print(f"\n[slow] built {dataset}/{config} in {time.perf_counter() - start:.1f} s")
    print(reports[dataset, config].summary())
  return data_dir, reports


@pytest.mark.slow
def test_full_detection_counts(full_builds):
  _, reports = full_builds
  two, three = reports["face_mask_detection", "2classes"], reports["face_mask_detection", "3classes"]
  assert three.total == 4072 and two.total == 3949
  totals = lambda r: {c: sum(r.counts[s][c] for s in grouping.SPLITS) for c in r.counts["train"]}
  assert totals(three) == {"with_mask": 3232, "without_mask": 717, "mask_weared_incorrect": 123}
  assert totals(two) == {"with_mask": 3232, "without_mask": 717}
  assert two.skips["counts"] == {"class not in config: mask_weared_incorrect": 123}
  assert three.skips["counts"] == {}
  # The same photos in the same splits in both configs.
  for split in grouping.SPLITS:
    assert {c: three.counts[split][c] for c in two.counts[split]} == two.counts[split]


@pytest.mark.slow
def test_full_12k_counts(full_builds):
  _, reports = full_builds
  official, grouped = reports[K12, "official"], reports[K12, "grouped"]
  assert official.counts == {
    "train": {"with_mask": 5000, "without_mask": 5000},
    "validation": {"with_mask": 400, "without_mask": 400},
    "test": {"with_mask": 483, "without_mask": 509},
  }
  assert official.total == grouped.total == 11792
  assert official.skips["counts"] == grouped.skips["counts"] == {}
  assert official.groups == grouped.groups
  # ~80/10/10 of the groups.
  data_dir, _ = full_builds
  rows = read_built(K12, "grouped", data_dir)
  groups_by_split = collections.defaultdict(set)
  for row in rows:
    groups_by_split[row["split"]].add(row["group"])
  n_groups = sum(len(g) for g in groups_by_split.values())
  assert n_groups == grouped.groups  # no group in two splits
  for split, fraction in zip(grouping.SPLITS, (0.8, 0.1, 0.1)):
    assert abs(len(groups_by_split[split]) / n_groups - fraction) < 0.02
  sources_split = collections.defaultdict(set)
  for row in rows:
    match = re.match(r"Augmented_(\d+)_", Path(row["file"]).name)
    if match:
      sources_split[match.group(1)].add(row["split"])
  assert len(sources_split) > 800 and all(len(s) == 1 for s in sources_split.values())


@pytest.mark.slow
def test_full_observations_counts(full_builds):
  _, reports = full_builds
  report = reports["face_mask_observations", "grouped"]
  totals = {c: sum(report.counts[s][c] for s in grouping.SPLITS) for c in ("with_mask", "without_mask")}
  assert totals == {"with_mask": 690, "without_mask": 686} and report.total == 1376
  assert report.skips["counts"] == {}
  assert report.links.get("mirror", 0) > 100 and report.links.get("masked-from-unmasked", 0) > 100


@pytest.mark.slow
def test_full_audit(full_builds):
  data_dir, _ = full_builds
  figures = {}
  for dataset, config in FULL_CONFIGS:
    start = time.perf_counter()
    result = audit.audit(dataset, config, data_dir=data_dir)
    figures[dataset, config] = result
    print(f"\n[slow] audit {dataset}/{config} ({time.perf_counter() - start:.1f} s): {json.dumps(result.to_json())}")
  official = figures[K12, "official"]
  assert official.cross_split_pairs > 1000
  assert official.images_with_train_sibling["validation"] >= 100
  assert official.images_with_train_sibling["test"] >= 100
  assert official.pairs_by_kind.get("exact", 0) > 0 and official.pairs_by_kind.get("same-source", 0) > 0
  for key, result in figures.items():
    if key != (K12, "official"):
      assert result.cross_split_pairs == 0, key
      assert result.images_in_group_with_train == {"validation": 0, "test": 0}, key
