"""Tests of classifiers.predict: a tiny classifier trained once into a tmp workdir (synthetic
32 px images) classifies real face images and bad files; the CLI's output and exit status; the
preprocessing matches the training run's evaluation; the OpenCV face-detection path.

Real images come from the shared data (`real_raw_root` of conftest; skipped when missing).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifiers import predict

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("with_mask", "without_mask")
SIZE = 32
K12_TEST = Path("face-mask-12k") / "Face Mask Dataset" / "Test"
PHOTO_WITH_FACE = "maksssksksss0.jpg"  # the Haar cascade finds one face here
PHOTO_WITHOUT_FACE = "maksssksksss10.jpg"  # ... and none here


def synthetic(n: int, seed: int):
  """ArrayDataset of dim noise with a bright square: top-left for without_mask (1), bottom-right
  for with_mask (0) - learnable in a couple of epochs."""
  from vaeaug.data import pipeline

  rng = np.random.default_rng(seed)
  labels = (np.arange(n) % 2).astype(np.int32)
  images = rng.integers(0, 60, (n, SIZE, SIZE, 3)).astype(np.uint8)
  for i, label in enumerate(labels):
    r, c = rng.integers(1, 6, 2) + (0 if label == 1 else 16)
    images[i, r : r + 10, c : c + 10] = rng.integers(180, 255)
  return pipeline.ArrayDataset(
    images=images,
    labels=labels,
    files=[f"synthetic/{seed}/{i}" for i in range(n)],
    groups=[f"{seed}-{i}" for i in range(n)],
    class_names=CLASSES,
  )


def tiny_config(**overrides):
  from experiments.configs import classifier

  config = classifier.get_config()
  config.update(
    dict(
      image_size=SIZE,
      model="cnn_bn3",
      epochs=2,
      batch_size=16,
      eval_batch_size=16,
      log_every_steps=2,
      figures=False,
      progress=False,
      gradcam_images=4,
    )
  )
  config.update(overrides)
  return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(workdir, summary, test dataset) of a tiny finished training run."""
  from classifiers import train

  workdir = tmp_path_factory.mktemp("tiny_classifier")
  data = train.Data(train=synthetic(64, 0), validation=synthetic(32, 1), test=synthetic(24, 2))
  summary = train.train_and_evaluate(tiny_config(), workdir, data=data)
  return workdir, summary, data.test


@pytest.fixture(scope="module")
def predictor(run):
  return predict.load_predictor(run[0])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, real_raw_root):
  """A folder of 6 real face images (3 WithMask, 3 WithoutMask), bad files beside it, and a
  folder mixing good and bad files."""
  root = tmp_path_factory.mktemp("predict_inputs")
  good = root / "faces"
  good.mkdir()
  for folder in ("WithMask", "WithoutMask"):
    for source in sorted((real_raw_root / K12_TEST / folder).iterdir())[:3]:
      shutil.copyfile(source, good / f"{folder}_{source.name}")
  jpeg = sorted(good.iterdir())[0].read_bytes()
  bad = {
    "empty.jpg": b"",
    "noise.jpg": np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes(),
    "truncated.jpg": jpeg[: len(jpeg) // 2],
  }
  for name, content in bad.items():
    (root / name).write_bytes(content)
  mixed = root / "mixed"
  mixed.mkdir()
  shutil.copyfile(sorted(good.iterdir())[0], mixed / "a_good.jpg")
  shutil.copyfile(root / "noise.jpg", mixed / "b_noise.jpg")
  (mixed / "notes.txt").write_text("not an image\n")
  return {
    "root": root,
    "good": good,
    "good_files": sorted(good.iterdir()),
    "mixed": mixed,
    "bad": {name: root / name for name in bad},
  }


BAD_PROBLEMS = {"empty.jpg": "zero-byte file", "noise.jpg": "not an image", "truncated.jpg": "truncated image"}


def check_good(result: dict, threshold: float) -> None:
  assert "error" not in result and "skipped" not in result
  assert result["label"] in CLASSES
  probabilities = result["probabilities"]
  assert set(probabilities) == set(CLASSES)
  assert all(0.0 <= p <= 1.0 for p in probabilities.values())
  assert math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-5)
  assert result["probability"] == probabilities[result["label"]]
  expected = "without_mask" if probabilities["without_mask"] >= threshold else "with_mask"
  assert result["label"] == expected


# ----------------------------------------------------------------------------- predict_files


def test_predict_files_good_bad_and_skipped(predictor, inputs, run):
  paths = [inputs["good"], *inputs["bad"].values(), inputs["mixed"], inputs["root"] / "missing.png"]
  results = predict.predict_files(predictor, paths)
  by_file = {Path(r["file"]).name: r for r in results}
  assert len(results) == len(by_file) == 6 + 3 + 3 + 1
  # Folder entries come in folder order (list_images: sorted), then the files as given.
  assert [Path(r["file"]) for r in results[:6]] == inputs["good_files"]
  assert predictor.threshold == pytest.approx(run[1]["threshold"])  # auto: the run's threshold
  for path in inputs["good_files"] + [inputs["mixed"] / "a_good.jpg"]:
    check_good(by_file[path.name], predictor.threshold)
  for name, problem in {**BAD_PROBLEMS, "b_noise.jpg": "not an image", "missing.png": "missing file"}.items():
    entry = by_file[name]
    assert entry["error"] == problem, entry
    assert entry["label"] is None and entry["probabilities"] is None
  assert by_file["notes.txt"]["skipped"] == "not an image extension"
  assert "error" not in by_file["notes.txt"]
  assert predict.failed(results)
  assert not predict.failed(results[:6] + [by_file["notes.txt"]])  # skipped folder entries are no failure


def test_threshold(predictor, inputs, run):
  workdir = run[0]
  assert predict.resolve_threshold(workdir, "auto", 2) == pytest.approx(run[1]["threshold"])
  assert predict.resolve_threshold(workdir, "auto", 3) == 0.5
  assert predict.resolve_threshold(workdir / "nowhere", "auto", 2) == 0.5
  assert predict.resolve_threshold(workdir, "0.3", 2) == 0.3
  for bad in ("1.5", "-0.1", "nan", "high"):
    with pytest.raises(ValueError, match="threshold"):
      predict.resolve_threshold(workdir, bad, 2)
  everything = predict.load_predictor(workdir, threshold=0.0)
  nothing = predict.load_predictor(workdir, threshold=1.0)
  assert {r["label"] for r in predict.predict_files(everything, [inputs["good"]])} == {"without_mask"}
  for r in predict.predict_files(nothing, [inputs["good"]]):
    assert r["label"] == ("without_mask" if r["probabilities"]["without_mask"] >= 1.0 else "with_mask")


def test_missing_workdir_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    predict.load_predictor(tmp_path)


# ----------------------------------------------------------------------------- consistency with training


def test_same_probabilities_as_the_training_evaluation(predictor, run, tmp_path, inputs):
  import jax

  from classifiers import train
  from vaeaug.data import images as image_io
  from vaeaug.data import pipeline
  from vaeaug.training import sharding

  workdir, _, test = run
  # 1. The test split saved as PNG files gets the probabilities the training run stored.
  paths = []
  for i, image in enumerate(test.images):
    paths.append(tmp_path / f"test_{i:02d}.png")
    Image.fromarray(image).save(paths[-1])
  stored = np.load(workdir / "test_predictions.npz")["probabilities"]
  got = np.array([[r["probabilities"][c] for c in CLASSES] for r in predict.predict_files(predictor, paths)])
  np.testing.assert_allclose(got, stored, atol=1e-5)
  # A different batch size (padded last batch) changes nothing.
  small_batches = predict.load_predictor(workdir, batch_size=5)
  got5 = np.array([[r["probabilities"][c] for c in CLASSES] for r in predict.predict_files(small_batches, paths)])
  np.testing.assert_allclose(got5, stored, atol=1e-5)

  # 2. Real photos of any size: predict == the training pipeline's evaluation of the same images
  #    decoded and resized as the datasets are.
  files = inputs["good_files"]
  images = np.stack([pipeline.resize_image(image_io.load_rgb(f), SIZE) for f in files])
  dataset = pipeline.ArrayDataset(
    images=images,
    labels=np.zeros(len(files), np.int32),
    files=[str(f) for f in files],
    groups=[str(f) for f in files],
    class_names=CLASSES,
  )
  config = predictor.config
  eval_fn = jax.jit(lambda state, x: train.eval_step(state, x, normalization=config.normalization))
  expected = train.predict_probabilities(eval_fn, predictor.state, dataset, 4, sharding.make_mesh(1))
  got = np.array([[r["probabilities"][c] for c in CLASSES] for r in predict.predict_files(predictor, files)])
  np.testing.assert_allclose(got, expected, atol=1e-5)


# ----------------------------------------------------------------------------- command line


def run_cli(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run(
    [sys.executable, "-m", "classifiers.predict", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )


def test_cli_json_with_failures_exits_1(run, inputs):
  bad = inputs["bad"]
  proc = run_cli(
    f"--checkpoint={run[0]}",
    f"--inputs={inputs['mixed']},{bad['empty.jpg']},{bad['truncated.jpg']}",
    "--json",
    "--batch_size=4",
  )
  assert proc.returncode == 1, proc.stderr
  results = json.loads(proc.stdout)  # one JSON document, nothing else on stdout
  by_file = {Path(r["file"]).name: r for r in results}
  assert set(by_file) == {"a_good.jpg", "b_noise.jpg", "notes.txt", "empty.jpg", "truncated.jpg"}
  check_good(by_file["a_good.jpg"], run[1]["threshold"])
  assert by_file["b_noise.jpg"]["error"] == "not an image"
  assert by_file["empty.jpg"]["error"] == "zero-byte file"
  assert by_file["truncated.jpg"]["error"] == "truncated image"
  assert by_file["notes.txt"]["skipped"] == "not an image extension"


def run_in_process(*args) -> int:
  """The command's `run` on its own absl FlagValues (no subprocess: JAX is already imported)."""
  from absl import flags

  flag_values = predict.define_flags(flags.FlagValues())
  extra = flag_values(["predict", *args])[1:]
  return predict.run(flag_values, extra)


def test_command_text_all_good_exits_0(run, inputs, capsys):
  files = inputs["good_files"][:2]
  status = run_in_process(f"--checkpoint={run[0]}", f"--inputs={files[0]}", str(files[1]), "--threshold=0.5")
  out, err = capsys.readouterr()
  assert status == 0, err
  lines = out.strip().splitlines()
  assert len(lines) == 2
  at_half = predict.load_predictor(run[0], threshold=0.5)
  for line, expected in zip(lines, predict.predict_files(at_half, files)):
    path, label, probability = line.split("  ")
    assert path == expected["file"] and label == expected["label"]
    assert float(probability) == pytest.approx(expected["probability"], abs=1e-4)
  assert "2 classified, 0 failed, 0 skipped" in err


def test_command_usage_errors_exit_2(run, inputs, tmp_path, capsys):
  good = str(inputs["good_files"][0])
  assert run_in_process(f"--checkpoint={tmp_path}", f"--inputs={good}") == 2
  assert "config.json" in capsys.readouterr().err
  assert run_in_process(f"--checkpoint={run[0]}") == 2
  assert "no inputs" in capsys.readouterr().err
  assert run_in_process(f"--checkpoint={run[0]}", f"--inputs={good}", "--threshold=high") == 2
  assert run_in_process(f"--checkpoint={run[0]}", f"--inputs={good}", "--detect_faces") == 2
  assert "--out_dir" in capsys.readouterr().err


def test_folders_without_images_exit_2_naming_them(run, inputs, tmp_path, capsys):
  empty, texts = tmp_path / "empty", tmp_path / "texts"
  empty.mkdir()
  texts.mkdir()
  (texts / "notes.txt").write_text("not an image\n")
  assert run_in_process(f"--checkpoint={run[0]}", f"--inputs={empty}") == 2
  out, err = capsys.readouterr()
  assert out == "" and err == f"error: no image files found in {empty}\n"
  assert run_in_process(f"--checkpoint={run[0]}", f"--inputs={empty},{texts}") == 2
  assert capsys.readouterr().err == f"error: no image files found in {empty}, {texts} (1 other entries skipped)\n"
  # An empty folder beside an image is not a usage error: the image is classified.
  assert run_in_process(f"--checkpoint={run[0]}", f"--inputs={empty},{inputs['good_files'][0]}") == 0
  assert "1 classified, 0 failed, 0 skipped" in capsys.readouterr().err


def test_text_format(capsys):
  results = [
    {"file": "a.jpg", "label": "with_mask", "probability": 0.91234, "probabilities": {}},
    {
      "file": "b.jpg",
      "label": None,
      "probability": None,
      "probabilities": None,
      "error": "truncated image",
      "detail": "image file is truncated",
    },
    {"file": "c.txt", "label": None, "probability": None, "probabilities": None, "skipped": "not an image extension"},
  ]
  predict.format_text(results, out=sys.stdout, err=sys.stderr)
  out, err = capsys.readouterr()
  assert out == "a.jpg  with_mask  0.9123\n"
  assert "error: b.jpg: truncated image (image file is truncated)" in err
  assert "skipped: c.txt: not an image extension" in err
  assert "1 classified, 1 failed, 1 skipped" in err


# ----------------------------------------------------------------------------- face detection


def test_detect_and_classify(predictor, real_raw_root, tmp_path, capsys):
  try:
    predict._cascade()
  except predict.DetectUnavailableError as error:
    pytest.skip(f"OpenCV face detection unavailable: {error}")
  photos = real_raw_root / "face-mask-detection" / "images"
  inputs = [photos / PHOTO_WITH_FACE, photos / PHOTO_WITHOUT_FACE, tmp_path / "missing.jpg"]
  out_dir = tmp_path / "annotated"
  results = predict.detect_and_classify(predictor, inputs, out_dir)
  assert [r["file"] for r in results] == [str(p) for p in inputs]
  found, none, missing = results
  assert missing["error"] == "missing file"
  assert found["num_faces"] == len(found["faces"]) >= 1
  assert none["num_faces"] == 0 and none["faces"] == []
  for result, photo in ((found, inputs[0]), (none, inputs[1])):
    annotated = Path(result["annotated"])
    assert annotated.parent == out_dir and annotated.stat().st_size > 0
    with Image.open(annotated) as im, Image.open(photo) as original:
      assert im.size == original.size
  width, height = Image.open(inputs[0]).size
  for face in found["faces"]:
    x0, y0, x1, y1 = face["box"]
    cx0, cy0, cx1, cy1 = face["crop_box"]
    assert 0 <= cx0 <= x0 < x1 <= cx1 <= width and 0 <= cy0 <= y0 < y1 <= cy1 <= height
    assert face["label"] in CLASSES
    assert math.isclose(sum(face["probabilities"].values()), 1.0, abs_tol=1e-5)
  # The annotation drew coloured boxes: the annotated photo differs from the original.
  assert not np.array_equal(
    np.asarray(Image.open(found["annotated"]).convert("RGB")), np.asarray(Image.open(inputs[0]).convert("RGB"))
  )
  # The text report counts the faces, zero included.
  capsys.readouterr()
  predict.format_text(results, out=sys.stdout, err=sys.stderr)
  out, err = capsys.readouterr()
  assert f"{inputs[0]}  {found['num_faces']} face(s)  annotated: {found['annotated']}" in out
  assert f"{inputs[1]}  0 faces (none detected)" in out
  assert "error: " in err and "missing file" in err


def test_detect_without_opencv_is_a_clear_error(monkeypatch, tmp_path):
  predict._cascade.cache_clear()
  try:
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` raises ImportError
    with pytest.raises(predict.DetectUnavailableError, match=r"pip install -e \.\[detect\]"):
      # Fails before touching the (nonexistent) checkpoint.
      predict.detect_and_classify(tmp_path / "no_workdir", [tmp_path / "photo.jpg"], tmp_path / "out")
    with pytest.raises(ImportError, match="OpenCV"):
      predict.detect_faces(np.zeros((8, 8, 3), np.uint8))
    # An OpenCV without Haar cascades (OpenCV 5 wheels) is reported the same way.
    fake = type(sys)("cv2")
    fake.__version__ = "5.0.0"
    monkeypatch.setitem(sys.modules, "cv2", fake)
    predict._cascade.cache_clear()
    with pytest.raises(predict.DetectUnavailableError, match="OpenCV 5"):
      predict.detect_and_classify(tmp_path / "no_workdir", [tmp_path / "photo.jpg"], tmp_path / "out")
  finally:
    predict._cascade.cache_clear()
  assert not (tmp_path / "out").exists()
