"""The unlabeled face pool (vaeaug.data.pool): planted leaks are excluded, the pool built from the
real data samples (all five configs) keeps no near-duplicate of any validation/test image, the
cache, and `vaeaug-audit --pool`. The full-data pool is the `slow` test at the end."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaeaug.data import building, pipeline, pool, sources

REPO = Path(__file__).resolve().parents[1]
OBSERVATIONS = "face_mask_observations"


@pytest.fixture(scope="module")
def sample_dir(built) -> Path:
  """data_dir with the shared real-data samples of every config the pool reads."""
  dirs = {built(dataset, config).data_dir for dataset, config in pool.ALL_CONFIGS}
  (data_dir,) = dirs
  return data_dir


@pytest.fixture(scope="module")
def sample_pool(sample_dir) -> pool.Pool:
  return pool.build_pool(sample_dir, image_size=16)


def rows_by_split(data_dir: Path, dataset: str, config: str) -> dict[str, list[dict]]:
  from vaeaug.data import audit

  return audit.load_examples(dataset, config, data_dir)


def test_held_out_covers_every_config_and_the_pool_only_train_splits():
  configs = {(dataset, config) for dataset in sources.RAW_FOLDERS for config in building.all_configs(dataset)}
  assert set(pool.ALL_CONFIGS) == configs
  assert {(d, c, s) for d, c in configs for s in ("validation", "test")} == set(pool.HELD_OUT)
  assert {s for _, _, s in pool.POOL_SOURCES} == {"train"}
  assert {(d, c) for d, c, _ in pool.POOL_SOURCES} <= configs


def reencode(image: np.ndarray, gain: float = 1.0, offset: float = 0.0, quality: int = 80) -> np.ndarray:
  changed = np.clip(image.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(changed).save(buffer, format="JPEG", quality=quality)
  return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def test_planted_near_duplicates_of_a_test_image_are_excluded_and_unrelated_faces_kept(built):
  obs = built(OBSERVATIONS, "grouped").by_file
  k12 = built("face_mask12k", "grouped").rows
  test_face = obs["with_mask/1-with-mask.jpg"]
  unrelated = next(row for row in k12 if "WithoutMask" in row["file"])  # a CelebA face
  as_example = lambda row, source, file, image=None, keys=(): pool.Example(
    image=row["image"] if image is None else image,
    dataset=source.split("/")[0],
    source=source,
    file=file,
    group="g" + file,
    label="with_mask",
    link_keys=keys,
  )
  held_out = [as_example(test_face, f"{OBSERVATIONS}/grouped:test", test_face["file"])]
  pool_source = "face_mask_detection/3classes:train"
  candidates = [
    as_example(test_face, pool_source, "brighter", reencode(test_face["image"], 1.15, 12)),  # near
    as_example(test_face, pool_source, "mirrored", reencode(test_face["image"][:, ::-1], quality=90)),
    as_example(unrelated, pool_source, "unrelated"),
    as_example(unrelated, pool_source, "same pixels as unrelated"),
    as_example(unrelated, pool_source, "black", np.zeros((40, 40, 3), np.uint8)),
    # Same photo as the brighter copy, no pixel link to the test image: excluded by its group.
    as_example(obs["without_mask/130.jpg"], pool_source, "same photo", keys=("face_mask_detection:p1",)),
  ]
  candidates[0] = dataclasses.replace(candidates[0], link_keys=("face_mask_detection:p1",))
  selection = pool.select_pool(candidates, held_out)
  assert selection.kept.tolist() == [2]
  report = selection.report
  assert report["excluded_by_reason"] == {"blank": 1, "duplicate-in-pool": 1, "linked-to-held-out": 3}
  assert report["excluded_by_kind"] == {"indirect": 1, "mirror": 1, "near": 1}
  assert report["sources"] == {
    pool_source: {
      "candidates": 6,
      "excluded": 5,
      "kept": 1,
      "excluded_by_reason": {"blank": 1, "duplicate-in-pool": 1, "linked-to-held-out": 3},
    }
  }
  assert report["crossing_pairs_before_exclusion"] == 2 and report["crossing_pairs_after_exclusion"] == 0
  # Without the test image nothing links the planted copies to held-out data.
  assert pool.select_pool(candidates, []).kept.tolist() == [0, 1, 2, 5]


def test_sample_pool_has_no_pair_with_held_out_images_and_hides_labels(sample_pool, sample_dir):
  ds, report = sample_pool.dataset, sample_pool.report
  assert report["crossing_pairs_after_exclusion"] == 0
  assert report["excluded_by_reason"]["linked-to-held-out"] > 0
  assert report["kept"] == len(ds) > 0 and report["candidates"] == report["kept"] + report["excluded"]
  assert ds.class_names == ("face",) and set(ds.labels.tolist()) == {0} and ds.images.shape[1:] == (16, 16, 3)
  assert len(set(ds.files.tolist())) == len(ds)
  assert {f.split(":")[0] for f in ds.files.tolist()} == {f"{d}/{c}" for d, c, _ in pool.POOL_SOURCES}
  assert all(g.split(":")[0] == f.split(":")[0] for f, g in zip(ds.files.tolist(), ds.groups.tolist()))
  assert "label" not in json.dumps(report)
  # Independently of the grouping code: no 12K pool file or Augmented_<N> source is in an official
  # validation/test split (the sample plants both kinds of leak across the official splits).
  official = rows_by_split(sample_dir, "face_mask12k", "official")
  held_files = {row["file"] for split in ("validation", "test") for row in official[split]}
  source_of = lambda file: (re.match(r"Augmented_(\d+)_", Path(file).name) or [None, None])[1]
  pool_files = {f.partition(":")[2] for f in ds.files.tolist() if f.startswith("face_mask12k/")}
  assert pool_files and not pool_files & held_files
  held_sources = {source_of(f) for f in held_files} - {None}
  assert held_sources and not {source_of(f) for f in pool_files} & held_sources
  assert report["held_out_total"] == sum(report["held_out"].values()) > 0


def test_cache_round_trip_and_corrupt_files_are_rebuilt(sample_pool, sample_dir, monkeypatch):
  calls = []
  select = pool.select_pool
  monkeypatch.setattr(pool, "select_pool", lambda *a, **k: calls.append(1) or select(*a, **k))
  again = pool.build_pool(sample_dir, image_size=16)
  assert not calls  # both files read back
  assert again.report == sample_pool.report
  np.testing.assert_array_equal(again.dataset.images, sample_pool.dataset.images)
  assert again.dataset.files.tolist() == sample_pool.dataset.files.tolist()
  assert again.dataset.groups.tolist() == sample_pool.dataset.groups.tolist()

  cache = sample_dir / pipeline.CACHE_DIRNAME
  (images_file,) = cache.glob("face_pool_16_*.npz")
  (report_file,) = cache.glob("face_pool_*.json")
  images_file.write_bytes(images_file.read_bytes()[:1000])  # truncated
  with pytest.warns(pipeline.CacheWarning, match=images_file.name):
    rebuilt = pool.build_pool(sample_dir, image_size=16)
  assert not calls  # the selection was still valid: only the images were rebuilt
  np.testing.assert_array_equal(rebuilt.dataset.images, sample_pool.dataset.images)

  stored = json.loads(report_file.read_text())
  stored["key"]["format"] = -1  # stale
  report_file.write_text(json.dumps(stored))
  with pytest.warns(pipeline.CacheWarning, match=report_file.name):
    rebuilt = pool.build_pool(sample_dir, image_size=16)
  assert calls == [1] and rebuilt.report["kept"] == sample_pool.report["kept"]
  assert rebuilt.dataset.files.tolist() == sample_pool.dataset.files.tolist()

  report_file.write_text("{not json")
  with pytest.warns(pipeline.CacheWarning, match=report_file.name):
    pool.build_pool(sample_dir, image_size=16)
  assert calls == [1, 1]
  uncached = pool.build_pool(sample_dir, image_size=16, cache=False)
  assert uncached.dataset.files.tolist() == sample_pool.dataset.files.tolist()  # deterministic


def test_unbuilt_datasets_are_a_one_line_error(sample_dir, tmp_path):
  with pytest.raises(ValueError) as error:
    pool.build_pool(tmp_path)
  message = str(error.value)
  assert "\n" not in message and "face_mask12k/official" in message and "face_mask_observations/grouped" in message
  assert f"vaeaug-prepare --datasets=face_mask12k,face_mask_detection,face_mask_observations --data_dir={tmp_path}" in (
    message
  )
  # One config missing: named, with the command that builds it.
  for dataset, config in pool.ALL_CONFIGS[1:]:
    (tmp_path / dataset).mkdir(exist_ok=True)
    (tmp_path / dataset / config).symlink_to(sample_dir / dataset / config)
  with pytest.raises(ValueError, match=r"needs face_mask12k/official: .*vaeaug-prepare --datasets=face_mask12k"):
    pool.build_pool(tmp_path)


def test_audit_cli_pool_json(sample_pool, sample_dir, tmp_path):
  command = [sys.executable, "-m", "vaeaug.data.audit_cli", "--pool", "--image_size=16", f"--data_dir={sample_dir}"]
  out = subprocess.run([*command, "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  data = json.loads(out.stdout.strip().splitlines()[-1])
  assert data["crossing_pairs_after_exclusion"] == 0
  assert data["candidates"] == sample_pool.report["candidates"] and data["excluded"] == sample_pool.report["excluded"]
  bad = subprocess.run([*command, "--dataset=face_mask12k"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and bad.stdout == ""
  assert bad.stderr.strip().splitlines()[-1] == "error: --pool audits the pool of all datasets; drop --dataset"


# ============================================================================ full data (slow)


@pytest.mark.slow
def test_full_pool(real_raw_root, tmp_path_factory):
  """The pool of the full datasets: from the default data dir when all configs are built there."""
  try:
    data_dir = None
    pool._open_all(None)
  except ValueError:
    data_dir = tmp_path_factory.mktemp("tfds_full_pool")
    for dataset, config in pool.ALL_CONFIGS:
      building.prepare(dataset, config, data_dir=data_dir, raw_root=real_raw_root)
  start = time.perf_counter()
  result = pool.build_pool(data_dir, image_size=64, cache=False)
  print(f"\n[slow] pool built in {time.perf_counter() - start:.1f} s: {json.dumps(result.report)}")
  report = result.report
  assert report["candidates"] == 9434 + 3258 + 1101 and report["held_out_total"] == 6029
  assert report["crossing_pairs_after_exclusion"] == 0
  assert report["sources"]["face_mask12k/grouped:train"]["excluded_by_reason"]["linked-to-held-out"] > 1000
  assert len(result.dataset) == report["kept"] > 10000
