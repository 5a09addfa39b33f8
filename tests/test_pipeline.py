"""Tests for vaeaug.data.pipeline (tiny in-memory data plus a toy TFDS dataset)."""

from __future__ import annotations

import importlib
import io
import os
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from vaeaug.data import pipeline as P
from vaeaug.data.pipeline import (
  ArrayDataset,
  CacheWarning,
  epoch_batches,
  from_float,
  load_split,
  load_splits,
  num_batches,
  resize_image,
  resume_point,
  subsample,
  subsample_indices,
  to_float,
)

CLASSES = ("with_mask", "without_mask", "incorrect")


def make_dataset(counts=(150, 120, 110), size=4, seed=0) -> ArrayDataset:
  rng = np.random.default_rng(seed)
  labels = np.concatenate([np.full(k, c) for c, k in enumerate(counts)])
  rng.shuffle(labels)
  n = len(labels)
  images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
  files = [f"img/{i:05d}.png" for i in range(n)]
  groups = [f"g{i // 3}" for i in range(n)]
  return ArrayDataset(images, labels, files, groups, CLASSES[: len(counts)], name="synthetic")


# ---------------------------------------------------------------------------
# ArrayDataset
# ---------------------------------------------------------------------------


def test_array_dataset_basics():
  ds = make_dataset()
  assert len(ds) == 380
  assert ds.num_classes == 3
  assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
  assert ds.files.dtype.kind == "U" and ds.groups.dtype.kind == "U"
  np.testing.assert_array_equal(ds.class_counts(), [150, 120, 110])
  r = repr(ds)
  assert "n=380" in r and "'with_mask': 150" in r and "'incorrect': 110" in r
  s = ds.summary()
  assert "without_mask" in s and "120" in s and "380" in s
  with pytest.raises(ValueError):
    ds.images[0, 0, 0, 0] = 1  # read-only


def test_array_dataset_decodes_bytes_and_keeps_caller_arrays_writable():
  images = np.zeros((2, 3, 3, 3), np.uint8)
  ds = ArrayDataset(images, np.array([0, 1], np.int64), [b"a.png", b"b.png"], [b"g", "h"], ("x", "y"))
  assert ds.files.tolist() == ["a.png", "b.png"] and ds.groups.tolist() == ["g", "h"]
  assert ds.labels.dtype == np.int32
  images[0, 0, 0, 0] = 7  # caller's array is untouched by the read-only view
  assert ds.images[0, 0, 0, 0] == 7


@pytest.mark.parametrize(
  "kwargs, err, match",
  [
    (dict(labels=[0, 1]), ValueError, "different lengths"),
    (dict(labels=[0, 1, 3]), ValueError, r"labels must be in \[0, 2\)"),
    (dict(labels=[0, -1, 1]), ValueError, "labels must be in"),
    (dict(labels=[0.0, 1.0, 1.0]), TypeError, "integer"),
    (dict(images=np.zeros((3, 2, 2, 3), np.float32)), TypeError, "uint8"),
    (dict(images=np.zeros((3, 2, 2), np.uint8)), ValueError, r"\(N, H, W, 3\)"),
    (dict(files=["a", "b"]), ValueError, "different lengths"),
    (dict(groups=[1, 2, 3]), TypeError, "groups"),
    (dict(class_names=("a", "a")), ValueError, "unique"),
    (dict(class_names=()), ValueError, "empty"),
    (dict(extras={"box": np.zeros((2, 4))}), ValueError, "different lengths"),
  ],
)
def test_array_dataset_validation(kwargs, err, match):
  base = dict(
    images=np.zeros((3, 2, 2, 3), np.uint8),
    labels=[0, 1, 1],
    files=["a", "b", "c"],
    groups=["g", "g", "h"],
    class_names=("x", "y"),
  )
  base.update(kwargs)
  with pytest.raises(err, match=match):
    ArrayDataset(**base)


def test_take_and_concatenate():
  ds = make_dataset()
  sub = ds.take([5, 2, 9])
  np.testing.assert_array_equal(sub.images, ds.images[[5, 2, 9]])
  np.testing.assert_array_equal(sub.labels, ds.labels[[5, 2, 9]])
  assert sub.files.tolist() == [ds.files[5], ds.files[2], ds.files[9]]
  masked = ds.take(ds.labels == 1)
  assert len(masked) == 120 and set(masked.labels.tolist()) == {1}

  synth = ArrayDataset(
    np.full((4, 4, 4, 3), 9, np.uint8),
    [2, 2, 0, 1],
    ["vae/0", "vae/1", "vae/2", "vae/3"],
    ["synthetic"] * 4,
    CLASSES,
    name="vae",
  )
  both = ds.concatenate(synth)
  assert len(both) == len(ds) + 4
  np.testing.assert_array_equal(both.class_counts(), ds.class_counts() + [1, 1, 2])
  np.testing.assert_array_equal(both.images[-4:], synth.images)
  assert both.files[-1] == "vae/3" and both.name == "synthetic+vae"

  with pytest.raises(ValueError, match="class_names differ"):
    ds.concatenate(synth.take([0]).__class__(synth.images, synth.labels % 2, synth.files, synth.groups, ("a", "b")))
  with pytest.raises(ValueError, match="image shapes differ"):
    ds.concatenate(ArrayDataset(np.zeros((1, 5, 5, 3), np.uint8), [0], ["f"], ["g"], CLASSES))
  with pytest.raises(IndexError):
    ds.take([len(ds)])


# ---------------------------------------------------------------------------
# resize / to_float
# ---------------------------------------------------------------------------


def test_resize_image_shapes_and_fits():
  rng = np.random.default_rng(0)
  for h, w in [(20, 20), (200, 37), (7, 90), (1, 1)]:
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for method in ("bilinear", "area", "bicubic", "nearest", "lanczos"):
      for fit in ("stretch", "pad", "center_crop"):
        out = resize_image(img, 16, method=method, fit=fit)
        assert out.shape == (16, 16, 3) and out.dtype == np.uint8

  # Constant images stay constant.
  const = np.full((31, 17, 3), (10, 200, 77), np.uint8)
  np.testing.assert_array_equal(resize_image(const, 8), np.broadcast_to(const[0, 0], (8, 8, 3)))

  # pad keeps the aspect ratio: a white 10x20 image becomes a centred 4x8 band.
  white = np.full((10, 20, 3), 255, np.uint8)
  padded = resize_image(white, 8, fit="pad")
  assert (padded[:2] == 0).all() and (padded[6:] == 0).all() and (padded[2:6] == 255).all()
  assert (resize_image(white, 8, fit="pad", pad_value=128)[0] == 128).all()

  # center_crop keeps only the central square.
  img = np.zeros((10, 30, 3), np.uint8)
  img[:, 10:20] = 255
  assert (resize_image(img, 5, fit="center_crop") == 255).all()
  # ... while stretch squeezes the black sides in.
  assert (resize_image(img, 5, fit="stretch") < 255).any()

  # grey images become RGB
  assert resize_image(np.zeros((4, 6), np.uint8), 3).shape == (3, 3, 3)
  assert resize_image(np.zeros((4, 6, 1), np.uint8), 3).shape == (3, 3, 3)


def test_resize_is_antialiased():
  checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
  checker = np.stack([checker] * 3, -1)
  smooth = resize_image(checker, 8, method="area").astype(int)
  assert np.abs(smooth - 127.5).max() <= 1  # averaged, no aliasing
  smooth = resize_image(checker, 8, method="bilinear").astype(int)
  assert np.abs(smooth - 127.5).max() <= 2


def test_resize_errors():
  img = np.zeros((4, 4, 3), np.uint8)
  with pytest.raises(ValueError, match="method"):
    resize_image(img, 4, method="fancy")
  with pytest.raises(ValueError, match="fit"):
    resize_image(img, 4, fit="squash")
  with pytest.raises(TypeError, match="uint8"):
    resize_image(img.astype(np.float32), 4)
  with pytest.raises(ValueError, match="empty"):
    resize_image(np.zeros((0, 4, 3), np.uint8), 4)
  with pytest.raises(ValueError, match="size"):
    resize_image(img, 0)


def test_to_float_numpy():
  x = np.array([[[[0, 128, 255]]]], np.uint8)
  u = to_float(x, "unit")
  assert u.dtype == np.float32 and isinstance(u, np.ndarray)
  np.testing.assert_allclose(u.ravel(), [0, 128 / 255, 1], rtol=1e-6)
  s = to_float(x, "symmetric")
  np.testing.assert_allclose(s.ravel(), [-1, 128 / 127.5 - 1, 1], rtol=1e-6, atol=1e-7)
  i = to_float(x, "imagenet")
  expect = (np.array([0, 128, 255]) / 255 - np.array(P.IMAGENET_MEAN)) / np.array(P.IMAGENET_STD)
  np.testing.assert_allclose(i.ravel(), expect, rtol=1e-5)

  ds = make_dataset()
  f = to_float(ds.images, "symmetric")
  assert f.shape == ds.images.shape and f.min() >= -1 and f.max() <= 1
  for norm in ("unit", "symmetric", "imagenet"):
    np.testing.assert_array_equal(from_float(to_float(ds.images, norm), norm), ds.images)
  with pytest.raises(TypeError, match="uint8"):
    to_float(u)
  with pytest.raises(ValueError, match="normalization"):
    to_float(x, "zscore")


def test_to_float_jax():
  jax = pytest.importorskip("jax")
  jnp = jax.numpy
  x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
  for norm in ("unit", "symmetric", "imagenet"):
    j = to_float(jnp.asarray(x), norm)
    assert isinstance(j, jax.Array) and j.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(j), to_float(x, norm), rtol=1e-6, atol=1e-6)
  # also usable inside jit
  jitted = jax.jit(lambda a: to_float(a, "unit"))(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(jitted), x / 255.0, rtol=1e-6)


# ---------------------------------------------------------------------------
# subsample
# ---------------------------------------------------------------------------


def test_subsample_stratified_and_nested():
  ds = make_dataset()
  subsets = {n: subsample(ds, n, seed=3) for n in (25, 50, 100)}
  for n, sub in subsets.items():
    np.testing.assert_array_equal(sub.class_counts(), [n, n, n])
    assert len(set(sub.files.tolist())) == 3 * n  # no duplicates
  f25, f50, f100 = (set(subsets[n].files.tolist()) for n in (25, 50, 100))
  assert f25 < f50 < f100

  idx = subsample_indices(ds.labels, 50, 3, num_classes=3)
  assert (np.diff(idx) > 0).all()  # sorted, stored order
  np.testing.assert_array_equal(subsets[50].images, ds.images[idx])
  # deterministic
  np.testing.assert_array_equal(subsample_indices(ds.labels, 50, 3, num_classes=3), idx)
  # different seeds -> different subsets (but same counts)
  other = subsample_indices(ds.labels, 50, 4, num_classes=3)
  assert set(other.tolist()) != set(idx.tolist())
  np.testing.assert_array_equal(np.bincount(ds.labels[other]), [50, 50, 50])


def test_subsample_all_and_errors():
  ds = make_dataset()
  assert subsample(ds, None, seed=0) is ds
  assert len(subsample(ds, "all", seed=0)) == len(ds)
  assert len(subsample(ds, 0, seed=0)) == 0

  with pytest.raises(ValueError, match=r"class 2 \('incorrect'\) has 110") as info:
    subsample(ds, 115, seed=0)
  assert "with_mask" not in str(info.value).replace("without_mask", "")  # only the short class
  with pytest.raises(ValueError, match="without_mask.*120.*incorrect.*110"):
    subsample(ds, 130, seed=0)
  fewer = subsample(ds, 130, seed=0, allow_fewer=True)
  np.testing.assert_array_equal(fewer.class_counts(), [130, 120, 110])
  with pytest.raises(ValueError, match="n_per_class"):
    subsample(ds, -1, seed=0)
  with pytest.raises(ValueError, match="seed"):
    subsample(ds, 5, seed=-1)


# ---------------------------------------------------------------------------
# epoch_batches
# ---------------------------------------------------------------------------


def _epoch(ds, bs, **kw):
  kw.setdefault("seed", 0)
  kw.setdefault("epoch", 0)
  return list(epoch_batches(ds, bs, **kw))


def test_even_batch_size_covers_the_examples_in_the_fewest_batches_with_least_padding():
  from vaeaug.data.pipeline import even_batch_size

  for n in (1, 7, 64, 255, 256, 257, 395, 1000):
    for max_batch, multiple in ((256, 1), (256, 4), (64, 8), (5, 2)):
      size = even_batch_size(n, max_batch, multiple)
      cap = max(multiple, max_batch - max_batch % multiple)
      batches = -(-n // size)
      assert size % multiple == 0 and size <= cap and batches == -(-n // cap)  # as few batches as the cap allows
      assert size - multiple < -(-n // batches)  # no smaller multiple covers n in that many batches
  assert even_batch_size(395, 256) == 198 and even_batch_size(395, 256, 4) == 200
  with pytest.raises(ValueError, match="positive"):
    even_batch_size(0, 256)


def test_num_batches_and_resume_point():
  assert num_batches(10, 3, "drop") == 3
  assert num_batches(10, 3, "pad") == 4
  assert num_batches(10, 3, "keep") == 4
  assert num_batches(9, 3, "pad") == 3
  assert num_batches(2, 3, "drop") == 0
  assert resume_point(0, 7) == (0, 0)
  assert resume_point(23, 7) == (3, 2)
  with pytest.raises(ValueError):
    num_batches(10, 3, "truncate")


def test_epoch_determinism_and_coverage():
  ds = make_dataset(counts=(20, 17), size=2)  # n = 37
  a = _epoch(ds, 8, seed=1, epoch=2, remainder="keep")
  b = _epoch(ds, 8, seed=1, epoch=2, remainder="keep")
  c = _epoch(ds, 8, seed=1, epoch=3, remainder="keep")
  d = _epoch(ds, 8, seed=2, epoch=2, remainder="keep")
  order = lambda bs: np.concatenate([x["index"] for x in bs])  # noqa: E731
  np.testing.assert_array_equal(order(a), order(b))
  assert not np.array_equal(order(a), order(c))
  assert not np.array_equal(order(a), order(d))
  # every example exactly once per epoch
  np.testing.assert_array_equal(np.sort(order(a)), np.arange(37))
  for batch in a:
    np.testing.assert_array_equal(batch["image"], ds.images[batch["index"]])
    np.testing.assert_array_equal(batch["label"], ds.labels[batch["index"]])
    assert batch["image"].dtype == np.uint8 and batch["label"].dtype == np.int32
    assert batch["mask"].dtype == bool and batch["mask"].all()
  # order does not depend on batch size
  np.testing.assert_array_equal(order(_epoch(ds, 5, seed=1, epoch=2, remainder="keep")), order(a))
  # unshuffled keeps stored order
  np.testing.assert_array_equal(order(_epoch(ds, 8, shuffle=False, remainder="keep")), np.arange(37))


def test_remainder_policies():
  ds = make_dataset(counts=(6, 4), size=2)  # n = 10
  drop = _epoch(ds, 4, remainder="drop")
  assert [len(b["label"]) for b in drop] == [4, 4]
  assert all(b["mask"].all() for b in drop)

  keep = _epoch(ds, 4, remainder="keep")
  assert [len(b["label"]) for b in keep] == [4, 4, 2]
  assert keep[-1]["image"].shape == (2, 2, 2, 3)

  for pad_mode in ("repeat", "zeros"):
    pad = _epoch(ds, 4, remainder="pad", pad_mode=pad_mode)
    assert len(pad) == num_batches(10, 4, "pad") == 3
    assert all(b["image"].shape == (4, 2, 2, 3) and b["label"].shape == (4,) for b in pad)
    last = pad[-1]
    np.testing.assert_array_equal(last["mask"], [True, True, False, False])
    np.testing.assert_array_equal(last["index"][2:], [-1, -1])
    real = np.concatenate([b["index"][b["mask"]] for b in pad])
    np.testing.assert_array_equal(np.sort(real), np.arange(10))  # each exactly once
    assert sum(int(b["mask"].sum()) for b in pad) == 10
    if pad_mode == "zeros":
      assert (last["image"][2:] == 0).all() and (last["label"][2:] == 0).all()
    else:  # repeats the first examples of the epoch
      first = pad[0]["index"][:2]
      np.testing.assert_array_equal(last["image"][2:], ds.images[first])
      np.testing.assert_array_equal(last["label"][2:], ds.labels[first])

  # drop and pad share the full batches
  for x, y in zip(drop, _epoch(ds, 4, remainder="pad")):
    np.testing.assert_array_equal(x["index"], y["index"])


def test_start_batch_resume_equals_tail():
  ds = make_dataset(counts=(13, 10), size=2)
  for remainder in ("drop", "pad", "keep"):
    full = _epoch(ds, 5, seed=7, epoch=4, remainder=remainder)
    for k in range(len(full) + 1):
      tail = _epoch(ds, 5, seed=7, epoch=4, remainder=remainder, start_batch=k)
      assert len(tail) == len(full) - k
      for x, y in zip(tail, full[k:]):
        for key in ("image", "label", "mask", "index"):
          np.testing.assert_array_equal(x[key], y[key])
  # resume from a global step
  steps = num_batches(len(ds), 5, "drop")
  epoch, start = resume_point(2 * steps + 3, steps)
  assert (epoch, start) == (2, 3)
  with pytest.raises(ValueError, match="start_batch"):
    _epoch(ds, 5, remainder="drop", start_batch=steps + 1)


@pytest.mark.parametrize("remainder", ["drop", "pad"])
def test_multi_host_slices(remainder):
  ds = make_dataset(counts=(15, 10), size=2)  # n = 25
  global_batches = _epoch(ds, 8, seed=5, epoch=1, remainder=remainder)
  per_host = [_epoch(ds, 8, seed=5, epoch=1, remainder=remainder, process_index=p, process_count=4) for p in range(4)]
  assert all(len(h) == len(global_batches) for h in per_host)
  for b, g in enumerate(global_batches):
    parts = [h[b] for h in per_host]
    assert all(p["image"].shape[0] == 2 for p in parts)
    real = [set(p["index"][p["mask"]].tolist()) for p in parts]
    for i in range(4):
      for j in range(i + 1, 4):
        assert not real[i] & real[j]  # disjoint
    for key in ("image", "label", "mask", "index"):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), g[key])
  with pytest.raises(ValueError, match="divisible"):
    _epoch(ds, 6, process_count=4)
  with pytest.raises(ValueError, match="keep"):
    _epoch(ds, 8, process_count=4, process_index=0, remainder="keep")
  with pytest.raises(ValueError, match="process_index"):
    _epoch(ds, 8, process_count=4, process_index=4)


def test_epoch_batches_accepts_arrays():
  images = np.arange(6 * 2 * 2 * 3, dtype=np.uint8).reshape(6, 2, 2, 3)
  labels = np.array([0, 1, 0, 1, 0, 1])
  from_tuple = _epoch((images, labels), 4, remainder="pad")
  from_dict = _epoch({"image": images, "label": labels}, 4, remainder="pad")
  for x, y in zip(from_tuple, from_dict):
    np.testing.assert_array_equal(x["image"], y["image"])
  assert from_tuple[0]["label"].dtype == np.int32
  with pytest.raises(ValueError, match="labels"):
    _epoch((images, labels[:5]), 4)


# ---------------------------------------------------------------------------
# TFDS loading + cache
# ---------------------------------------------------------------------------

TOY_MODULE = """
import io
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image


def _png(a):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


# Colour of every image: a function of its label, so values survive resizing.
COLORS = [(255, 0, 0), (0, 0, 255)]
SIZES = {"train": 12, "test": 5}


class VaeaugPipelineToy(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="grouped")]

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=["with_mask", "without_mask"]),
                "file": tfds.features.Text(),
                "group": tfds.features.Text(),
                "box": tfds.features.Tensor(shape=(4,), dtype=np.int32),
                "photo": tfds.features.Text(),
            })
        )

    def _split_generators(self, dl_manager):
        return {s: self._generate_examples(s, n) for s, n in SIZES.items()}

    def _generate_examples(self, split, n):
        rng = np.random.default_rng(len(split))
        for i in range(n):
            h, w = (int(v) for v in rng.integers(20, 60, size=2))
            label = i % 2
            img = np.empty((h, w, 3), np.uint8)
            img[:] = COLORS[label]
            yield f"{split}_{i}", {
                "image": _png(img),
                "label": label,
                "file": f"{split}/img_{i:03d}.png",
                "group": f"photo_{i // 2}",
                "box": np.array([0, 0, w, h], np.int32),
                "photo": f"photo_{i // 2}.jpg",
            }
"""

TOY_NAME = "vaeaug_pipeline_toy/grouped"


@pytest.fixture(scope="module")
def toy_data_dir(tmp_path_factory):
  tfds = pytest.importorskip("tensorflow_datasets")
  root = tmp_path_factory.mktemp("toy")
  pkg = root / "vaeaug_toypkg"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  (pkg / "toy.py").write_text(textwrap.dedent(TOY_MODULE))
  sys.path.insert(0, str(root))
  try:
    mod = importlib.import_module("vaeaug_toypkg.toy")
  finally:
    sys.path.remove(str(root))
  data_dir = root / "tfds"
  builder = mod.VaeaugPipelineToy(data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare()
  source = tfds.data_source(TOY_NAME, split="train", data_dir=str(data_dir))
  assert len(source) == 12
  return data_dir


def _same(a: ArrayDataset, b: ArrayDataset):
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.labels, b.labels)
  np.testing.assert_array_equal(a.files, b.files)
  np.testing.assert_array_equal(a.groups, b.groups)
  assert a.class_names == b.class_names
  assert set(a.extras) == set(b.extras)
  for k in a.extras:
    np.testing.assert_array_equal(a.extras[k], b.extras[k])


def test_load_split(toy_data_dir):
  import tensorflow_datasets as tfds

  ds = load_split(TOY_NAME, "train", data_dir=toy_data_dir, image_size=16, cache=False)
  assert len(ds) == 12
  assert ds.images.shape == (12, 16, 16, 3) and ds.images.dtype == np.uint8
  assert ds.labels.dtype == np.int32
  assert ds.class_names == ("with_mask", "without_mask")
  np.testing.assert_array_equal(ds.class_counts(), [6, 6])
  assert ds.files.dtype.kind == "U" and ds.groups.dtype.kind == "U"
  assert all(f.startswith("train/img_") for f in ds.files)
  assert not ds.extras and not (toy_data_dir / P.CACHE_DIRNAME).exists()

  # stored order, exact resize of the stored images, labels <-> colour
  source = tfds.data_source(TOY_NAME, split="train", data_dir=str(toy_data_dir))
  for i in range(len(source)):
    ex = source[i]
    assert ds.files[i] == ex["file"].decode()
    assert ds.groups[i] == ex["group"].decode()
    assert ds.labels[i] == ex["label"]
    np.testing.assert_array_equal(ds.images[i], resize_image(ex["image"], 16))
  red = ds.images[ds.labels == 0]
  blue = ds.images[ds.labels == 1]
  assert (red[..., 0] == 255).all() and (red[..., 2] == 0).all()
  assert (blue[..., 2] == 255).all() and (blue[..., 0] == 0).all()

  x = to_float(ds.images, "unit")
  assert x.dtype == np.float32 and x.shape == (12, 16, 16, 3)
  assert x.min() == 0.0 and x.max() == 1.0
  s = to_float(ds.images, "symmetric")
  assert s.min() == -1.0 and s.max() == 1.0

  # extras, fit, split slicing, load_splits
  ex = load_split(
    TOY_NAME, "test", data_dir=toy_data_dir, image_size=8, fit="pad", extra_features=("box", "photo"), cache=False
  )
  assert ex.images.shape == (5, 8, 8, 3)
  assert ex.extras["box"].shape == (5, 4) and ex.extras["photo"].dtype.kind == "U"
  for f, photo, box in zip(ex.files, ex.extras["photo"], ex.extras["box"]):
    i = int(f[len("test/img_") : -len(".png")])
    assert photo == f"photo_{i // 2}.jpg"
    assert box[0] == box[1] == 0 and 20 <= box[2] < 60 and 20 <= box[3] < 60
  half = load_split(TOY_NAME, "train[:50%]", data_dir=toy_data_dir, image_size=16, cache=False)
  _same(half, ds.take(np.arange(6)))
  both = load_splits(TOY_NAME, ("train", "test"), data_dir=toy_data_dir, image_size=8, cache=False)
  assert set(both) == {"train", "test"} and len(both["test"]) == 5
  with pytest.raises(KeyError, match="nope"):
    load_split(TOY_NAME, "test", data_dir=toy_data_dir, extra_features=("nope",), cache=False)


def _npz_files(cache_dir: Path):
  return sorted(p for p in cache_dir.glob("*.npz"))


def test_cache_round_trip_and_corruption(toy_data_dir, monkeypatch):
  cache_dir = toy_data_dir / P.CACHE_DIRNAME
  kw = dict(data_dir=toy_data_dir, image_size=12, fit="center_crop", extra_features=("box", "photo"))
  first = load_split(TOY_NAME, "train", **kw)
  files = _npz_files(cache_dir)
  assert len(files) == 1
  path = files[0]
  assert "train" in path.name and "12" in path.name

  # No pickle: every member is a plain (non-object) array loadable with allow_pickle=False.
  with np.load(path, allow_pickle=False) as z:
    assert {"images", "labels", "files", "groups", "class_names", "key"} <= set(z.files)
    for k in z.files:
      assert z[k].dtype.kind != "O"

  # Second load comes from the cache (reading the split again would fail) and is identical.
  def boom(*a, **k):
    raise AssertionError("split was re-read instead of using the cache")

  with monkeypatch.context() as m:
    m.setattr(P, "_read_split", boom)
    cached = load_split(TOY_NAME, "train", **kw)
  _same(first, cached)
  assert cached.images.dtype == np.uint8 and cached.labels.dtype == np.int32

  # Different parameters -> a different cache entry.
  load_split(TOY_NAME, "train", **{**kw, "image_size": 10})
  assert len(_npz_files(cache_dir)) == 2

  # Corrupt file: warning naming it, rebuilt, identical result, file valid again.
  for garbage in (b"this is not a zip file", path.read_bytes()[:100]):
    path.write_bytes(garbage)
    with pytest.warns(CacheWarning, match=path.name):
      rebuilt = load_split(TOY_NAME, "train", **kw)
    _same(first, rebuilt)
    with np.load(path, allow_pickle=False) as z:
      np.testing.assert_array_equal(z["images"], first.images)

  # A valid zip with missing members is also treated as corrupt.
  with zipfile.ZipFile(path, "w") as zf:
    buf = io.BytesIO()
    np.save(buf, np.zeros(3), allow_pickle=False)
    zf.writestr("images.npy", buf.getvalue())
  with pytest.warns(CacheWarning, match=path.name):
    _same(first, load_split(TOY_NAME, "train", **kw))


def test_cache_invalidated_when_dataset_files_change(toy_data_dir, tmp_path):
  cache_dir = tmp_path / "cache"
  kw = dict(data_dir=toy_data_dir, image_size=9, cache_dir=cache_dir)
  load_split(TOY_NAME, "test", **kw)
  assert len(_npz_files(cache_dir)) == 1
  # "Rebuild" the dataset: touch its array_record files (new mtimes).
  version_dir = toy_data_dir / "vaeaug_pipeline_toy" / "grouped" / "1.0.0"
  for f in version_dir.glob("*.array_record*"):
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  load_split(TOY_NAME, "test", **kw)
  assert len(_npz_files(cache_dir)) == 2


def test_no_pickle_in_source():
  src = Path(P.__file__).read_text()
  assert "import pickle" not in src
  assert "allow_pickle=True" not in src
  assert src.count("allow_pickle=False") >= 2
