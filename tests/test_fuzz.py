"""Input fuzzing: many corrupted and hostile images and annotations, made with a fixed seed beside a
few real files, go through the three dataset builders and the predict command.

Each build and the prediction run in a subprocess (tests/fuzz_worker.py) under a time limit (no
hang), an address-space limit (bounded memory; its peak RSS is checked too) and an audit hook that
records every path the process opens or lists. Every hostile file must come out as a kept example,
or as a counted skip / an error entry naming the file with one of the known problems; nothing is
dropped silently, and nothing outside the dataset folder (a "secret" folder beside it, /etc/passwd)
is opened, whatever annotation paths, symlinks or XML entities point there.
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_files, detection_files, encode, read_built, smooth_image
from PIL import Image
from test_builders import LAUGHS, voc_xml

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "fuzz_worker.py"
SEED = 20240607
TIMEOUT_S = 240  # per subprocess; a build of this corpus takes a few seconds
MEMORY_LIMIT = 8 << 30  # address space of a worker; real use is far below (checked by MAX_RSS)
MAX_RSS = 1536 << 20  # a 100000 x 100000 RGB decode would need 30 GB

# Everything images.load_rgb, images.list_images, voc.parse_voc / resolve_image / clip_box and the
# builders may report for one file. Anything else (a traceback text, a new message) fails the test.
IMAGE_PROBLEMS = {
  "missing file",
  "not a file",
  "unreadable file",
  "zero-byte file",
  "not an image",
  "corrupt image",
  "truncated image",
  "image too large",
  "empty image",
  "too many JPEG scans",
  "unsupported mode",
}
LISTING_PROBLEMS = {"subfolder", "hidden file", "not an image extension", "link outside folder", "not a file"}
XML_PROBLEMS = {
  "missing file",
  "not a file",
  "unreadable file",
  "zero-byte file",
  "annotation too large",
  "unsafe XML",
  "malformed XML",
  "no <filename>",
  "bad <object>",
  "too many objects",
  "image path outside dataset folder",
  "image missing",
  "photo annotated twice",
}
FACE_PROBLEMS = {"unknown label", "inverted box", "zero-area box", "box outside photo", "non-finite box"}
DETECTION_PROBLEMS = (
  IMAGE_PROBLEMS
  | LISTING_PROBLEMS
  | XML_PROBLEMS
  | FACE_PROBLEMS
  | {"photo without annotation", "not an XML file", "class not in config: mask_weared_incorrect"}
)
OK = "ok"  # expected outcome: decoded and kept


# ----------------------------------------------------------------------------- hostile files


def png_chunk(kind: bytes, data: bytes) -> bytes:
  return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, mode: int = 2, idat: bytes = b"") -> bytes:
  """A PNG whose header declares width x height (colour type `mode`), with little or no data."""
  header = struct.pack(">IIBBBBB", width, height, 8, mode, 0, 0, 0)
  return (
    b"\x89PNG\r\n\x1a\n"
    + png_chunk(b"IHDR", header)
    + png_chunk(b"IDAT", idat or zlib.compress(b"\0" * 64))
    + png_chunk(b"IEND", b"")
  )


def png_bomb(side: int) -> bytes:
  """A real decompression bomb: a side x side grey PNG of zeros, complete and valid, a few dozen KB."""
  rows = zlib.compressobj(9)
  line = b"\0" * (side + 1)  # filter byte + pixels
  data = b"".join(rows.compress(line) for _ in range(side)) + rows.flush()
  return png_declaring(side, side, mode=0, idat=data)


def png_with_text_bomb(good_png: bytes, megabytes: int) -> bytes:
  """A valid PNG with a zTXt chunk that inflates to `megabytes` MB of metadata."""
  text = b"Comment\0\0" + zlib.compress(b"\0" * (megabytes << 20), 9)
  return good_png[:33] + png_chunk(b"zTXt", text) + good_png[33:]  # after the 33-byte signature + IHDR


def jpeg_declaring(good_jpeg: bytes, width: int, height: int) -> bytes:
  """A real JPEG whose frame header (SOF) is patched to declare width x height."""
  data = bytearray(good_jpeg)
  for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
    at = data.find(marker)
    if at > 0:
      data[at + 5 : at + 9] = struct.pack(">HH", height, width)
      return bytes(data)
  raise AssertionError("no SOF marker in the sample JPEG")


def bmp_declaring(width: int, height: int) -> bytes:
  info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
  return b"BM" + struct.pack("<IHHI", 14 + len(info) + 16, 0, 0, 14 + len(info)) + info + b"\0" * 16


def gif_declaring(width: int, height: int) -> bytes:
  small = encode(smooth_image(7, size=8), "GIF")
  return small[:6] + struct.pack("<HH", width, height) + small[10:]


def tiff_declaring(width: int, height: int) -> bytes:
  """Little-endian TIFF, 8-bit RGB, one strip that is far too short."""
  entries = [
    (256, 4, 1, width),
    (257, 4, 1, height),
    (258, 3, 1, 8),
    (259, 3, 1, 1),
    (262, 3, 1, 2),
    (273, 4, 1, 8 + 2 + 12 * 9 + 4),
    (277, 3, 1, 3),
    (278, 4, 1, height),
    (279, 4, 1, 16),
  ]
  ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
  return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0" * 16


def many_scans(good_jpeg: bytes, scans: int) -> bytes:
  sos = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
  return good_jpeg[:-2] + sos * scans + b"\xff\xd9"


def hostile_images(rng: random.Random, good_jpeg: bytes, good_png: bytes) -> dict[str, tuple[bytes, set[str]]]:
  """{file name: (content, acceptable outcomes)}; OK means decoded and kept."""
  files: dict[str, tuple[bytes, set[str]]] = {}
  decodes_or_fails = {OK} | IMAGE_PROBLEMS
  for i, ext in enumerate((".jpg", ".png", ".gif", ".bmp", ".webp", ".tiff", ".jpeg")):
    files[f"random_{i}{ext}"] = (rng.randbytes(rng.randint(1, 4096)), {"not an image", "corrupt image"})
  magics = {
    "png": b"\x89PNG\r\n\x1a\n",
    "jpg": b"\xff\xd8\xff",
    "gif": b"GIF89a",
    "bmp": b"BM",
    "tif": b"II*\x00",
    "webp": b"RIFF\x10\x00\x00\x00WEBPVP8 ",
  }
  for ext, magic in magics.items():
    files[f"magic_then_noise.{ext}"] = (
      magic + rng.randbytes(rng.randint(0, 2048)),
      {"corrupt image", "truncated image", "not an image", "image too large", "empty image"},
    )
  for i in range(8):
    source, ext = (good_jpeg, "jpg") if i < 5 else (good_png, "png")
    cut = rng.randint(1, len(source) - 3)
    # Too short for the signature: "not an image"; otherwise the header or the pixels end early.
    files[f"cut_{i}_at_{cut}.{ext}"] = (source[:cut], {"truncated image", "corrupt image", "not an image"})
  for i in range(4):
    flipped = bytearray(good_jpeg)
    for _ in range(12):
      flipped[rng.randrange(200, len(flipped) - 2)] ^= 1 << rng.randrange(8)
    files[f"bitflips_{i}.jpg"] = (bytes(flipped), decodes_or_fails)
  files["zero.jpg"] = (b"", {"zero-byte file"})
  files["zero.png"] = (b"", {"zero-byte file"})
  # Wrong extensions: content decides (a PNG named .jpg decodes); other formats are never tried.
  files["png_named.jpg"] = (good_png, {OK})
  files["jpeg_named.png"] = (good_jpeg, {OK})
  files["gif_named.jpeg"] = (encode(smooth_image(3, size=24), "GIF"), {OK})
  files["text_named.png"] = (b"just some text\n" * 10, {"not an image"})
  files["eps_named.jpg"] = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", {"not an image"})
  files["svg_named.png"] = (b'<svg xmlns="http://www.w3.org/2000/svg" width="99999" height="99999"/>', {"not an image"})
  files["ico_named.bmp"] = (encode(smooth_image(4, size=16), "ICO"), {"not an image", "corrupt image"})
  files["jpeg_named.txt"] = (good_jpeg, {"not an image extension"})
  # Huge declared dimensions: refused from the header, before any pixel is decoded.
  too_large = {"image too large"}
  files["huge_header.png"] = (png_declaring(100_000, 100_000), too_large)
  files["huge_header.jpg"] = (jpeg_declaring(good_jpeg, 65_000, 65_000), too_large)
  files["huge_header.bmp"] = (bmp_declaring(60_000, 60_000), too_large)
  files["huge_header.gif"] = (gif_declaring(65_535, 65_535), too_large)
  files["huge_header.tiff"] = (tiff_declaring(100_000, 100_000), too_large)
  files["bomb_49mpx.png"] = (png_bomb(7000), too_large)
  files["zero_width.png"] = (png_declaring(0, 64), {"empty image", "corrupt image"})
  files["text_bomb.png"] = (png_with_text_bomb(good_png, 64), {"corrupt image", OK})
  files["many_scans.jpg"] = (many_scans(good_jpeg, 1200), {"too many JPEG scans"})
  return files


def add_special_entries(folder: Path, secret: Path) -> dict[str, set[str]]:
  """Entries that are not plain files, made in `folder`: {name: acceptable outcomes}."""
  special = {}
  os.mkfifo(folder / "pipe.jpg")  # reading it would block forever
  special["pipe.jpg"] = {"not a file"}
  (folder / "folder.jpg").mkdir()
  special["folder.jpg"] = {"subfolder"}
  (folder / "escape.jpg").symlink_to(secret / "canary.jpg")
  special["escape.jpg"] = {"link outside folder"}
  (folder / "passwd.jpg").symlink_to("/etc/passwd")
  special["passwd.jpg"] = {"link outside folder"}
  (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
  special["loop.jpg"] = {"not a file", "link outside folder"}
  (folder / ".hidden.jpg").write_bytes(b"\xff\xd8\xff")
  special[".hidden.jpg"] = {"hidden file"}
  return special


def hostile_annotations(
  rng: random.Random, good_xml: bytes, real_photo: str, secret: Path
) -> dict[str, tuple[bytes, set[str]]]:
  """{xml file name: (content, acceptable outcomes)} for annotations that are bad by themselves."""
  face = [("with_mask", (1, 1, 20, 20))]
  text = lambda s: s.encode()
  files = {
    "laughs.xml": (text(LAUGHS), {"unsafe XML"}),
    "external_entity.xml": (
      text(
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        "<annotation><filename>&e;</filename></annotation>"
      ),
      {"unsafe XML"},
    ),
    "external_dtd.xml": (
      text(f'<!DOCTYPE annotation SYSTEM "file://{secret}/canary.dtd">' + voc_xml(real_photo, face)),
      {"unsafe XML"},
    ),
    "parameter_entity.xml": (
      text(f'<!DOCTYPE a [<!ENTITY % p SYSTEM "file://{secret}/canary.dtd"> %p;]><annotation/>'),
      {"unsafe XML"},
    ),
    "up_to_passwd.xml": (
      text(voc_xml("../../../../../../../../etc/passwd", face)),
      {"image path outside dataset folder"},
    ),
    "up_to_secret.xml": (text(voc_xml("../../secret/canary.jpg", face)), {"image path outside dataset folder"}),
    "absolute_secret.xml": (text(voc_xml(str(secret / "canary.jpg"), face)), {"image path outside dataset folder"}),
    "backslashes.xml": (text(voc_xml("..\\..\\secret\\canary.jpg", face)), {"image path outside dataset folder"}),
    "escape_link.xml": (text(voc_xml("escape.jpg", face)), {"image path outside dataset folder"}),
    "nul_in_name.xml": (text(voc_xml("a&#0;b.jpg", face)), {"malformed XML", "image path outside dataset folder"}),
    "no_filename.xml": (text(voc_xml("", face)), {"no <filename>"}),
    "ghost.xml": (text(voc_xml("ghost.jpg", face)), {"image missing"}),
    "hidden_photo.xml": (text(voc_xml(".hidden.jpg", face)), {"image missing"}),  # a skipped listing entry
    "zero.xml": (b"", {"zero-byte file"}),
    "random.xml": (rng.randbytes(3000), {"malformed XML", "unsafe XML"}),
    "bogus_encoding.xml": (
      text('<?xml version="1.0" encoding="x-bogus"?>' + voc_xml(real_photo, face)),
      {"malformed XML"},
    ),
    "deep_nesting.xml": (text("<a>" * 50_000 + "</a>" * 50_000), {"malformed XML", "no <filename>"}),
    "too_large.xml": (
      text(voc_xml(real_photo, face)[:-13] + "<pad>" + "x" * 1_100_000 + "</pad></annotation>"),
      {"annotation too large"},
    ),
    "nan_box.xml": (text(voc_xml(real_photo, [("with_mask", ("nan", 1, 20, 20))])), {"bad <object>"}),
    "word_box.xml": (text(voc_xml(real_photo, [("with_mask", ("1e999", 1, "abc", 20))])), {"bad <object>"}),
    # Thousands of identical faces in one photo: refused before the pairwise grouping (quadratic).
    "crowd.xml": (text(voc_xml(real_photo, face * 5000)), {"too many objects"}),
  }
  for i in range(4):
    end = good_xml.index(b"</annotation>")
    cut = rng.randint(1, end - 1)
    files[f"cut_{i}_at_{cut}.xml"] = (good_xml[:cut], {"malformed XML", "zero-byte file"})
  return files


# ----------------------------------------------------------------------------- running the worker


def run_worker(spec: dict, tmp_path: Path, name: str) -> dict:
  spec_path, result_path = tmp_path / f"{name}_spec.json", tmp_path / f"{name}_result.json"
  spec_path.write_text(json.dumps({**spec, "memory_limit_bytes": MEMORY_LIMIT}))
  scratch = tmp_path / f"{name}_tmp"  # the worker's own temporary files (allowed to be opened)
  scratch.mkdir()
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", TMPDIR=str(scratch))
  proc = subprocess.run(
    [sys.executable, str(WORKER), str(spec_path), str(result_path)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=TIMEOUT_S,
  )
  assert proc.returncode == 0, f"{name} worker failed:\n{proc.stderr[-4000:]}"
  result = json.loads(result_path.read_text())
  result["scratch"] = str(scratch.resolve())
  assert result["maxrss_bytes"] < MAX_RSS, f"{name}: peak RSS {result['maxrss_bytes'] >> 20} MiB"
  return result


def library_roots() -> list[str]:
  roots = {
    sys.prefix,
    sys.base_prefix,
    sys.exec_prefix,
    str(REPO),
    "/usr",
    "/lib",
    "/lib64",
    "/proc",
    "/sys",
    "/dev",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/os-release",
    "/etc/mime.types",
  }
  roots |= {str(Path(p).resolve()) for p in sys.path if p}
  return sorted(roots)


def check_opened(result: dict, allowed: list[Path], forbidden: list[Path], name: str) -> None:
  """Nothing under `forbidden` opened or listed; every opened path under `allowed` or a library."""
  forbidden = [str(p.resolve()) for p in forbidden]
  for path in result["opened"] + result["listed"]:
    resolved = os.path.realpath(path)
    for bad in forbidden:
      assert not (path.startswith(bad) or resolved.startswith(bad)), f"{name} opened {path} ({resolved})"
  roots = [str(p.resolve()) for p in allowed] + [result["scratch"]] + library_roots()
  unexpected = [
    p for p in result["opened"] if not any(os.path.realpath(p).startswith(r) or p.startswith(r) for r in roots)
  ]
  assert not unexpected, f"{name} opened files outside the dataset and the libraries: {unexpected[:10]}"


def skipped_files(report: dict) -> dict[str, list[str]]:
  """{file relative to the dataset folder: problem} from the build report (the worker keeps every
  example). A file with several problems (faces) appears once per problem."""
  out: dict[str, list[str]] = {}
  for problem, examples in report["skips"]["examples"].items():
    if problem.startswith("warning: "):
      continue
    for example in examples:
      file = example.split(" (", 1)[0]
      out.setdefault(file, []).append(problem)
  return out


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus(real_raw_root, tmp_path_factory):
  """Raw folders of all three datasets, each with a few real files plus the hostile ones, and a
  secret folder beside them that nothing may read."""
  rng = random.Random(SEED)
  root = tmp_path_factory.mktemp("fuzz")
  raw, secret = root / "raw", root / "secret"
  secret.mkdir()
  (secret / "canary.jpg").write_bytes(encode(smooth_image(99, size=64), "JPEG"))
  (secret / "canary.dtd").write_text('<!ENTITY secret "canary">\n')
  k12 = real_raw_root / "face-mask-12k" / "Face Mask Dataset"
  firsts = {
    (split, cls): sorted((k12 / split / cls).iterdir())[:3]
    for split in ("Train", "Validation", "Test")
    for cls in ("WithMask", "WithoutMask")
  }
  good_jpeg = next(p for p in firsts["Train", "WithoutMask"] if p.suffix == ".jpg").read_bytes()
  good_png = encode(np.asarray(Image.open(io.BytesIO(good_jpeg)).convert("RGB")), "PNG")
  images = hostile_images(rng, good_jpeg, good_png)

  # face_mask_observations and face_mask12k: the hostile files in one class folder.
  obs = raw / "face-mask-observations"
  for cls, source in (("with_mask", ("Train", "WithMask")), ("without_mask", ("Train", "WithoutMask"))):
    (obs / cls).mkdir(parents=True)
    for path in firsts[source]:
      (obs / cls / f"real_{path.name}").write_bytes(path.read_bytes())
  for (split, cls), paths in firsts.items():
    copy_files(k12 / split / cls, raw / "face-mask-12k" / "Face Mask Dataset" / split / cls, [p.name for p in paths])
  folders = {
    "face_mask_observations": obs / "with_mask",
    "face_mask12k": raw / "face-mask-12k" / "Face Mask Dataset" / "Train" / "WithMask",
  }
  expected = {}
  for dataset, folder in folders.items():
    for name, (content, _) in images.items():
      (folder / name).write_bytes(content)
    special = add_special_entries(folder, secret)
    expected[dataset] = {**{name: outcomes for name, (_, outcomes) in images.items()}, **special}

  # face_mask_detection: real photos and annotations, each hostile image with an annotation of its
  # own, and annotations that are hostile by themselves.
  det = raw / "face-mask-detection"
  photos = ("maksssksksss0", "maksssksksss2", "maksssksksss29")
  copy_files(real_raw_root / "face-mask-detection", det, detection_files(photos))
  good_xml = (det / "annotations" / f"{photos[0]}.xml").read_bytes()
  annotations = hostile_annotations(rng, good_xml, f"{photos[1]}.jpg", secret)
  det_expected = {f"{stem}.xml": {OK} for stem in photos}
  listing = {name: outcomes for name, outcomes in add_special_entries(det / "images", secret).items()}
  for name, (content, outcomes) in images.items():
    if name.endswith(".txt"):
      continue  # not an image name: would be "photo without annotation"
    (det / "images" / name).write_bytes(content)
    xml = f"img_{name}.xml"
    (det / "annotations" / xml).write_text(voc_xml(name, [("with_mask", (1, 1, 20, 20))]))
    det_expected[xml] = outcomes
  (det / "annotations" / "img_pipe.xml").write_text(voc_xml("pipe.jpg", [("with_mask", (1, 1, 20, 20))]))
  det_expected["img_pipe.xml"] = {"image missing"}
  for name, (content, outcomes) in annotations.items():
    (det / "annotations" / name).write_bytes(content)
    det_expected[name] = outcomes
  expected["face_mask_detection"] = det_expected
  return dict(
    raw=raw,
    secret=secret,
    folders=folders,
    expected=expected,
    listing=listing,
    detection=det,
    photos=photos,
    data_dir=root / "tfds",
  )


# ----------------------------------------------------------------------------- builders


FOLDER_DATASETS = {"face_mask_observations": "grouped", "face_mask12k": "grouped"}


def one_outcome(name: str, kept: set[str], skipped: dict[str, list[str]]) -> str:
  problems = skipped.get(name, [])
  assert len(problems) + (name in kept) == 1, f"{name}: kept {name in kept}, skipped as {problems}"
  return OK if name in kept else problems[0]


@pytest.mark.parametrize("dataset", sorted(FOLDER_DATASETS))
def test_folder_builders_count_every_hostile_file(corpus, dataset, tmp_path):
  from vaeaug.data import sources

  config = FOLDER_DATASETS[dataset]
  dataset_dir = corpus["raw"] / sources.RAW_FOLDERS[dataset]
  data_dir = tmp_path / "tfds"
  result = run_worker(
    {
      "action": "build",
      "dataset": dataset,
      "config": config,
      "raw_root": str(corpus["raw"]),
      "data_dir": str(data_dir),
    },
    tmp_path,
    dataset,
  )
  report = result["report"]
  rows = read_built(dataset, config, data_dir)
  kept, skipped = {row["file"] for row in rows}, skipped_files(report)
  folder = corpus["folders"][dataset].relative_to(dataset_dir).as_posix()
  for name, outcomes in corpus["expected"][dataset].items():
    outcome = one_outcome(f"{folder}/{name}", kept, skipped)
    assert outcome in outcomes, f"{folder}/{name}: {outcome}, expected one of {sorted(outcomes)}"
  # Nothing dropped silently: every entry of every class folder is an example or one counted skip.
  entries = [
    p for p in dataset_dir.rglob("*") if p.parent.name in ("with_mask", "without_mask", "WithMask", "WithoutMask")
  ]
  assert report["total"] == len(rows) == len(kept)
  assert len(rows) + sum(report["skips"]["counts"].values()) == len(entries)
  assert set(report["skips"]["counts"]) <= IMAGE_PROBLEMS | LISTING_PROBLEMS, report["skips"]["counts"]
  assert len(kept) >= 12  # the real files and the odd-but-valid ones
  check_opened(result, allowed=[dataset_dir, data_dir], forbidden=[corpus["secret"], Path("/etc/passwd")], name=dataset)
  assert any(p.startswith(str(dataset_dir)) for p in result["opened"])  # the hook saw the reads


def test_detection_builder_counts_every_hostile_annotation(corpus, tmp_path):
  dataset, config = "face_mask_detection", "3classes"
  data_dir = tmp_path / "tfds"
  result = run_worker(
    {
      "action": "build",
      "dataset": dataset,
      "config": config,
      "raw_root": str(corpus["raw"]),
      "data_dir": str(data_dir),
    },
    tmp_path,
    dataset,
  )
  report = result["report"]
  rows = read_built(dataset, config, data_dir)
  photos_built = {row["photo"] for row in rows}
  skipped = skipped_files(report)
  assert set(report["skips"]["counts"]) <= DETECTION_PROBLEMS, report["skips"]["counts"]
  annotations = corpus["detection"] / "annotations"
  assert sorted(corpus["expected"][dataset]) == sorted(os.listdir(annotations))
  kept_xml = 0
  for xml, outcomes in corpus["expected"][dataset].items():
    # Per-photo problems: at most one; face problems (boxes, labels) may come on top of a kept photo.
    problems = [p for p in skipped.get(f"annotations/{xml}", []) if p not in FACE_PROBLEMS]
    assert len(problems) <= 1, (xml, problems)
    outcome = problems[0] if problems else OK
    assert outcome in outcomes, f"annotations/{xml}: {outcome}, expected one of {sorted(outcomes)}"
    if outcome == OK:
      kept_xml += 1
      photo = xml.removeprefix("img_").removesuffix(".xml")
      assert f"images/{photo}" in photos_built or f"images/{photo}.jpg" in photos_built, xml
  # Every annotation file is a kept photo or one counted skip (above); the photos kept are exactly
  # those of the kept annotations; the special image entries are counted listing skips; no photo
  # is left without its annotation.
  assert len(photos_built) == kept_xml
  for name, outcomes in corpus["listing"].items():
    assert set(skipped.get(f"images/{name}", [])) & outcomes, (name, skipped.get(f"images/{name}"))
  assert "photo without annotation" not in report["skips"]["counts"]
  check_opened(
    result, allowed=[corpus["detection"], data_dir], forbidden=[corpus["secret"], Path("/etc/passwd")], name=dataset
  )


# ----------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def classifier_workdir(tmp_path_factory):
  """A classifier workdir (the tiny model of tests/test_predict.py), untrained: the inputs, not
  the predictions, are under test, and saving needs no compilation."""
  from test_predict import CLASSES, tiny_config

  from classifiers import train
  from vaeaug.training import checkpoints

  workdir = tmp_path_factory.mktemp("fuzz_classifier")
  config = tiny_config()
  state = train.create_train_state_for(config, len(CLASSES), steps_per_epoch=1)
  checkpoints.write_run_files(workdir, config, CLASSES)
  checkpointer = checkpoints.Checkpointer(workdir / "checkpoints")
  checkpointer.save(0, state, {"params": state.params, "model_state": state.model_state}, {"epochs_done": 0})
  checkpointer.close()
  return workdir


def test_predict_reports_every_hostile_file(corpus, classifier_workdir, tmp_path):
  folder = corpus["folders"]["face_mask_observations"]
  inputs = [str(folder), str(folder / "pipe.jpg"), str(folder / "missing.jpg")]
  result = run_worker(
    {"action": "predict", "checkpoint": str(classifier_workdir), "inputs": inputs}, tmp_path, "predict"
  )
  assert result["status"] == 1  # some inputs failed; the others were still classified
  results = result["results"]
  entries = sorted(os.listdir(folder))
  assert len(results) == len(entries) + 2
  by_name = {}
  for entry in results[: len(entries)]:
    by_name[Path(entry["file"]).name] = entry
  assert sorted(by_name) == entries
  expected = corpus["expected"]["face_mask_observations"]
  for name, entry in by_name.items():
    if "error" in entry:
      outcome = entry["error"]
      assert entry["label"] is None and entry["probabilities"] is None
    elif "skipped" in entry:
      outcome = entry["skipped"]
    else:
      outcome = OK
      assert entry["label"] in ("with_mask", "without_mask") and 0.0 <= entry["probability"] <= 1.0
    assert outcome in expected.get(name, {OK}), f"{name}: {outcome}, expected one of {expected.get(name)}"
  assert [r.get("error") for r in results[-2:]] == ["not a file", "missing file"]
  check_opened(
    result, allowed=[folder, classifier_workdir], forbidden=[corpus["secret"], Path("/etc/passwd")], name="predict"
  )
