"""Tests for the safe-decoding layer: vaeaug.data.images and vaeaug.data.voc.

Every input is created in tmp_path; nothing is downloaded.  Fast (a few s).
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import time
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from vaeaug.data import images as images_mod
from vaeaug.data.images import (
  IMAGE_EXTENSIONS,
  MAX_PIXELS,
  BadInputError,
  encode_png,
  list_images,
  load_rgb,
  sha256_of_pixels,
)
from vaeaug.data.voc import (
  MAX_XML_BYTES,
  BoxError,
  VocAnnotation,
  VocObject,
  clip_box,
  parse_voc,
  resolve_image,
  square_crop_box,
)

# ----------------------------------------------------------------- helpers


def _rand_rgb(h=48, w=64, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path: Path, im: Image.Image, fmt: str, **kw) -> Path:
  buf = io.BytesIO()
  im.save(buf, format=fmt, **kw)
  path.write_bytes(buf.getvalue())
  return path


def _problem(path, **kw) -> str:
  with pytest.raises(BadInputError) as info:
    load_rgb(path, **kw)
  err = info.value
  assert str(path) in str(err)
  assert str(err).startswith(f"{path}: {err.problem}")
  return err.problem


def _mode(path) -> str:
  with Image.open(path) as im:
    return im.mode


def _png_chunks(data: bytes) -> list[bytes]:
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  pos, kinds = 8, []
  while pos < len(data):
    (length,) = struct.unpack(">I", data[pos : pos + 4])
    kinds.append(data[pos + 4 : pos + 8])
    pos += 12 + length
  return kinds


def _png_with_declared_size(width: int, height: int) -> bytes:
  """A real tiny PNG whose IHDR is patched to claim width x height (CRC fixed)."""
  data = bytearray(encode_png(np.zeros((1, 1, 3), np.uint8)))
  assert data[12:16] == b"IHDR"
  data[16:24] = struct.pack(">II", width, height)
  data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
  return bytes(data)


# -------------------------------------------------------------- BadInputError


def test_bad_input_error_format_and_pickle():
  e = BadInputError("d/x.jpg", "zero-byte file")
  assert str(e) == "d/x.jpg: zero-byte file"
  assert isinstance(e, ValueError)
  e2 = BadInputError(Path("d/x.jpg"), "truncated image", "12 bytes missing")
  assert str(e2) == "d/x.jpg: truncated image (12 bytes missing)"
  assert (e2.path, e2.problem, e2.detail) == (Path("d/x.jpg"), "truncated image", "12 bytes missing")
  e3 = pickle.loads(pickle.dumps(e2))
  assert type(e3) is BadInputError and str(e3) == str(e2) and e3.problem == e2.problem


def test_constants():
  assert IMAGE_EXTENSIONS == {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
  assert all(ext == ext.lower() for ext in IMAGE_EXTENSIONS)
  assert MAX_PIXELS == 40_000_000
  assert MAX_XML_BYTES == 1_000_000


# ------------------------------------------------------------ load_rgb: errors


def test_zero_byte(tmp_path):
  p = tmp_path / "empty.jpg"
  p.write_bytes(b"")
  assert _problem(p) == "zero-byte file"


def test_random_bytes(tmp_path):
  p = tmp_path / "noise.jpg"
  data = np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()
  p.write_bytes(b"\x00" + data)
  assert _problem(p) == "not an image"


def test_text_named_jpg(tmp_path):
  p = tmp_path / "readme.jpg"
  p.write_text("<html>404 Not Found</html>\n" * 20)
  assert _problem(p) == "not an image"


def test_other_pil_formats_are_not_tried(tmp_path):
  # PPM/ICO content is decodable by PIL but is not an accepted format.
  for fmt, name in (("PPM", "a.jpg"), ("ICO", "b.png")):
    p = _save(tmp_path / name, Image.fromarray(_rand_rgb(16, 16)), fmt)
    assert _problem(p) == "not an image"
  # EPS would make PIL run Ghostscript on load: never even identified.
  p = tmp_path / "c.jpg"
  p.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
  assert _problem(p) == "not an image"


def test_missing_and_not_a_file(tmp_path):
  assert _problem(tmp_path / "nope.jpg") == "missing file"
  assert _problem(tmp_path / "nodir" / "nope.jpg") == "missing file"
  d = tmp_path / "dir.jpg"
  d.mkdir()
  assert _problem(d) == "not a file"
  dangling = tmp_path / "dangling.jpg"
  dangling.symlink_to(tmp_path / "gone.jpg")
  assert _problem(dangling) == "missing file"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_does_not_hang(tmp_path):
  p = tmp_path / "pipe.jpg"
  os.mkfifo(p)
  start = time.monotonic()
  assert _problem(p) == "not a file"
  assert time.monotonic() - start < 2


@pytest.fixture(scope="module")
def jpeg_bytes():
  return _encoded(Image.fromarray(_rand_rgb(96, 128, seed=2)), "JPEG", quality=90)


@pytest.fixture(scope="module")
def png_bytes():
  return _encoded(Image.fromarray(_rand_rgb(96, 128, seed=3)), "PNG")


def _encoded(im, fmt, **kw):
  buf = io.BytesIO()
  im.save(buf, format=fmt, **kw)
  return buf.getvalue()


@pytest.mark.parametrize("cut", [0.25, 0.5, 0.75, 0.95, -2])
@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_truncated_in_pixel_data(tmp_path, kind, cut, jpeg_bytes, png_bytes):
  data = jpeg_bytes if kind == "jpeg" else png_bytes
  n = len(data) + cut if cut < 0 else int(len(data) * cut)
  if kind == "png" and cut == -2:
    # Only IEND would be lost there: all pixels decode (accepted, see
    # test_png_without_iend_is_accepted).  Cut into the last pixel bytes.
    n = len(data) - 40
  p = tmp_path / f"cut.{kind}"
  p.write_bytes(data[:n])
  assert _problem(p) == "truncated image"


@pytest.mark.parametrize("n", [2, 5, 10, 16, 30, 60])
@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_truncated_in_header(tmp_path, kind, n, jpeg_bytes, png_bytes):
  data = jpeg_bytes if kind == "jpeg" else png_bytes
  p = tmp_path / f"cut.{kind}"
  p.write_bytes(data[:n])
  # Cut before the signature is complete -> indistinguishable from non-images.
  allowed = {"truncated image", "corrupt image"} | ({"not an image"} if n < 8 else set())
  assert _problem(p) in allowed


def test_png_without_iend_is_accepted(tmp_path, png_bytes):
  p = tmp_path / "noiend.png"
  p.write_bytes(png_bytes[:-12])
  np.testing.assert_array_equal(load_rgb(p), _rand_rgb(96, 128, seed=3))


def test_corrupt_png_data(tmp_path, png_bytes):
  data = bytearray(png_bytes)
  idat = data.index(b"IDAT")
  data[idat + 20 : idat + 60] = b"\xff" * 40  # garbage in the zlib stream
  p = tmp_path / "bad.png"
  p.write_bytes(bytes(data))
  assert _problem(p) in {"corrupt image", "truncated image"}


def test_decompression_bomb_beyond_pil_limit(tmp_path):
  p = tmp_path / "bomb.png"
  p.write_bytes(_png_with_declared_size(100_000, 100_000))
  tracemalloc.start()
  start = time.monotonic()
  try:
    assert _problem(p) == "image too large"
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert time.monotonic() - start < 1.0
  assert peak < 5_000_000


def test_decompression_bomb_checked_from_header(tmp_path):
  # 64 Mpx: above MAX_PIXELS, below PIL's own limit -> our header check.
  p = tmp_path / "bomb.jpg"  # extension lies too
  p.write_bytes(_png_with_declared_size(8000, 8000))
  tracemalloc.start()
  start = time.monotonic()
  try:
    with pytest.raises(BadInputError) as info:
      load_rgb(p)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert info.value.problem == "image too large"
  assert "8000x8000" in str(info.value)
  assert time.monotonic() - start < 1.0
  assert peak < 5_000_000


def test_decompression_bomb_warning_as_error(tmp_path):
  # 100 Mpx triggers PIL's DecompressionBombWarning; even when warnings are
  # errors it comes out as our error.
  p = tmp_path / "bomb.png"
  p.write_bytes(_png_with_declared_size(10_000, 10_000))
  with warnings.catch_warnings():
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    assert _problem(p) == "image too large"
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    assert _problem(p) == "image too large"


def test_max_pixels_argument(tmp_path):
  p = _save(tmp_path / "a.png", Image.fromarray(_rand_rgb(100, 100)), "PNG")
  assert _problem(p, max_pixels=9_999) == "image too large"
  assert load_rgb(p, max_pixels=10_000).shape == (100, 100, 3)


def test_too_many_jpeg_scans(tmp_path, monkeypatch):
  p = _save(tmp_path / "prog.jpg", Image.fromarray(_rand_rgb()), "JPEG", progressive=True)
  assert load_rgb(p).shape == (48, 64, 3)  # ~10 scans: fine by default
  monkeypatch.setattr(images_mod, "MAX_JPEG_SCANS", 3)
  assert _problem(p) == "too many JPEG scans"


# ----------------------------------------------------------- load_rgb: decoding


@pytest.mark.parametrize(
  "fmt,name,kw",
  [
    ("PNG", "x.png", {}),
    ("PNG", "png_named.jpg", {}),  # extension not trusted
    ("BMP", "x.bmp", {}),
    ("TIFF", "x.tif", {}),
    ("WEBP", "x.webp", {"lossless": True}),
    ("PNG", "X.PNG", {}),
  ],
)
def test_lossless_formats_roundtrip(tmp_path, fmt, name, kw):
  arr = _rand_rgb()
  p = _save(tmp_path / name, Image.fromarray(arr), fmt, **kw)
  out = load_rgb(p)
  assert out.dtype == np.uint8 and out.shape == (48, 64, 3) and out.flags.c_contiguous
  np.testing.assert_array_equal(out, arr)


def test_jpeg_and_str_path(tmp_path):
  arr = np.zeros((32, 48, 3), np.uint8)
  arr[:] = (200, 100, 50)
  p = _save(tmp_path / "x.jpeg", Image.fromarray(arr), "JPEG", quality=95)
  out = load_rgb(str(p))
  assert out.shape == (32, 48, 3)
  assert np.abs(out.astype(int) - arr).max() <= 3


def test_cmyk_jpeg(tmp_path):
  im = Image.new("CMYK", (16, 16), (0, 0, 0, 0))
  im.paste((255, 0, 0, 0), (0, 0, 8, 16))  # left half: full cyan
  p = _save(tmp_path / "cmyk.jpg", im, "JPEG", quality=95)
  assert _mode(p) == "CMYK"
  out = load_rgb(p).astype(int)
  assert np.abs(out[8, 12] - (255, 255, 255)).max() <= 3
  assert np.abs(out[8, 2] - (0, 255, 255)).max() <= 3


def test_ycbcr(tmp_path):
  im = Image.new("RGB", (16, 16), (200, 30, 40)).convert("YCbCr")
  p = _save(tmp_path / "y.tif", im, "TIFF")
  assert _mode(p) == "YCbCr"
  assert np.abs(load_rgb(p)[0, 0].astype(int) - (200, 30, 40)).max() <= 3


def test_grayscale(tmp_path):
  g = np.random.default_rng(4).integers(0, 256, (20, 30), dtype=np.uint8)
  p = _save(tmp_path / "g.png", Image.fromarray(g), "PNG")
  out = load_rgb(p)
  assert out.shape == (20, 30, 3)
  for c in range(3):
    np.testing.assert_array_equal(out[..., c], g)


def test_la_composited_on_white(tmp_path):
  la = np.zeros((2, 3, 2), np.uint8)
  la[0, 0] = (0, 0)  # transparent black -> white
  la[0, 1] = (10, 255)  # opaque
  la[0, 2] = (0, 128)  # half: (0*128 + 255*127 + 127)//255 = 127
  la[1] = (77, 0)
  p = _save(tmp_path / "la.png", Image.fromarray(la), "PNG")
  assert _mode(p) == "LA"
  out = load_rgb(p)
  assert out[0, 0].tolist() == [255, 255, 255]
  assert out[0, 1].tolist() == [10, 10, 10]
  assert out[0, 2].tolist() == [127, 127, 127]
  assert (out[1] == 255).all()


def test_rgba_composited_on_white(tmp_path):
  rgba = np.zeros((2, 2, 4), np.uint8)
  rgba[0, 0] = (10, 20, 30, 0)  # fully transparent -> white
  rgba[0, 1] = (10, 20, 30, 255)  # opaque -> unchanged
  rgba[1, 0] = (0, 0, 0, 128)  # half black
  rgba[1, 1] = (255, 0, 0, 51)  # 20 % red
  p = _save(tmp_path / "rgba.png", Image.fromarray(rgba), "PNG")
  out = load_rgb(p)
  assert out[0, 0].tolist() == [255, 255, 255]
  assert out[0, 1].tolist() == [10, 20, 30]
  assert out[1, 0].tolist() == [127, 127, 127]
  assert out[1, 1].tolist() == [255, 204, 204]


def _palette_image():
  im = Image.new("P", (4, 2), 0)
  im.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
  im.paste(1, (2, 0, 4, 2))  # right half: index 1 (blue)
  return im


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(tmp_path, fmt):
  p = _save(tmp_path / f"p.{fmt.lower()}", _palette_image(), fmt, transparency=0)
  out = load_rgb(p)
  assert out[0, 0].tolist() == [255, 255, 255]  # transparent red -> white
  assert out[1, 3].tolist() == [0, 0, 255]


def test_palette_without_transparency(tmp_path):
  p = _save(tmp_path / "p.png", _palette_image(), "PNG")
  out = load_rgb(p)
  assert out[0, 0].tolist() == [255, 0, 0]
  assert out[1, 3].tolist() == [0, 0, 255]


def test_rgb_with_transparent_colour_key(tmp_path):
  arr = np.zeros((1, 2, 3), np.uint8)
  arr[0, 0] = (1, 2, 3)
  arr[0, 1] = (4, 5, 6)
  p = _save(tmp_path / "k.png", Image.fromarray(arr), "PNG", transparency=(1, 2, 3))
  out = load_rgb(p)
  assert out[0, 0].tolist() == [255, 255, 255]
  assert out[0, 1].tolist() == [4, 5, 6]


@pytest.mark.parametrize("fmt,dtype", [("PNG", "<u2"), ("TIFF", ">u2"), ("TIFF", "<u2")])
def test_16bit_grayscale_scaled_not_clipped(tmp_path, fmt, dtype):
  values = np.array([[0, 257, 32768, 65535, 1000, 65280]], dtype=np.uint16).astype(dtype)
  p = _save(tmp_path / f"g16.{fmt.lower()}", Image.fromarray(values), fmt)
  assert _mode(p).startswith("I;16")
  out = load_rgb(p)
  assert out[0, :, 0].tolist() == [0, 1, 128, 255, 4, 254]
  assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()


def test_32bit_int_and_float(tmp_path):
  i32 = np.array([[0, 65535, 70000, -1, 257]], dtype=np.int32)
  p = _save(tmp_path / "i.tif", Image.fromarray(i32), "TIFF")
  assert _mode(p) == "I"
  assert load_rgb(p)[0, :, 0].tolist() == [0, 255, 255, 0, 1]
  f32 = np.array([[0.0, 127.6, 300.0, -5.0, np.nan]], dtype=np.float32)
  p = _save(tmp_path / "f.tif", Image.fromarray(f32), "TIFF")
  assert _mode(p) == "F"
  assert load_rgb(p)[0, :, 0].tolist() == [0, 128, 255, 0, 0]


def test_bilevel(tmp_path):
  bits = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
  p = _save(tmp_path / "b.png", Image.fromarray(bits), "PNG")
  assert _mode(p) == "1"
  out = load_rgb(p)
  assert out[..., 0].tolist() == [[0, 255, 255], [255, 0, 0]]


def _oriented_jpeg(path: Path, orientation: int) -> Path:
  # 48 wide x 32 high, red 16x16 block in the stored top-left, blue elsewhere.
  arr = np.zeros((32, 48, 3), np.uint8)
  arr[:] = (0, 0, 255)
  arr[:16, :16] = (255, 0, 0)
  exif = Image.Exif()
  exif[0x0112] = orientation
  return _save(path, Image.fromarray(arr), "JPEG", quality=95, exif=exif)


@pytest.mark.parametrize(
  "orientation,shape,red_corner",
  [
    (1, (32, 48, 3), (0, 0)),
    (3, (32, 48, 3), (-1, -1)),  # 180
    (6, (48, 32, 3), (0, -1)),  # display rotated 90 cw: top-left -> top-right
    (8, (48, 32, 3), (-1, 0)),  # display rotated 90 ccw: top-left -> bottom-left
  ],
)
def test_exif_orientation(tmp_path, orientation, shape, red_corner):
  p = _oriented_jpeg(tmp_path / f"o{orientation}.jpg", orientation)
  out = load_rgb(p).astype(int)
  assert out.shape == shape
  corners = {(0, 0), (0, -1), (-1, 0), (-1, -1)}
  assert np.abs(out[red_corner] - (255, 0, 0)).max() <= 8
  for other in corners - {red_corner}:
    assert np.abs(out[other] - (0, 0, 255)).max() <= 8


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_broken_exif_does_not_crash(tmp_path, monkeypatch):
  arr = np.zeros((16, 32, 3), np.uint8)
  p = _save(tmp_path / "e.jpg", Image.fromarray(arr), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
  assert load_rgb(p).shape == (16, 32, 3)

  # Whatever the EXIF parser raises, the image is returned as stored.
  def boom(*a, **k):
    raise SyntaxError("bad EXIF")

  monkeypatch.setattr(ImageOps, "exif_transpose", boom)
  p6 = _oriented_jpeg(tmp_path / "o6.jpg", 6)
  assert load_rgb(p6).shape == (32, 48, 3)


def test_animated_gif_first_frame(tmp_path):
  frames = [Image.new("RGB", (8, 6), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
  p = tmp_path / "anim.gif"
  frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
  with Image.open(p) as im:
    assert im.n_frames == 3
  out = load_rgb(p)
  assert out.shape == (6, 8, 3)
  assert (out == (255, 0, 0)).all()


# ------------------------------------------------------------ encode / hashing


def test_encode_png_roundtrip_and_deterministic(tmp_path):
  arr = _rand_rgb(33, 17, seed=5)
  data = encode_png(arr)
  assert data == encode_png(arr.copy()) == encode_png(np.asfortranarray(arr))
  assert _png_chunks(data)[0] == b"IHDR" and _png_chunks(data)[-1] == b"IEND"
  assert set(_png_chunks(data)) == {b"IHDR", b"IDAT", b"IEND"}  # no metadata
  p = tmp_path / "e.png"
  p.write_bytes(data)
  np.testing.assert_array_equal(load_rgb(p), arr)


@pytest.mark.parametrize(
  "bad",
  [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.float32)],
)
def test_encode_png_rejects_wrong_arrays(bad):
  with pytest.raises(ValueError):
    encode_png(bad)


def test_sha256_of_pixels(tmp_path):
  arr = _rand_rgb(10, 12, seed=6)
  a = _save(tmp_path / "a.png", Image.fromarray(arr), "PNG")
  b = _save(tmp_path / "b.bmp", Image.fromarray(arr), "BMP")
  key = sha256_of_pixels(load_rgb(a))
  assert key == sha256_of_pixels(load_rgb(b)) == sha256_of_pixels(arr)
  assert len(key) == 64 and int(key, 16) >= 0
  assert sha256_of_pixels(arr.reshape(12, 10, 3)) != key  # same bytes, other shape
  changed = arr.copy()
  changed[0, 0, 0] ^= 1
  assert sha256_of_pixels(changed) != key


# ----------------------------------------------------------------- list_images


def test_list_images(tmp_path):
  d = tmp_path / "imgs"
  d.mkdir()
  for name in ("b.png", "a.jpg", "C.JPEG", "d.webp", ".DS_Store", "._a.jpg", "notes.txt", "noext"):
    (d / name).write_bytes(b"x")
  (d / "sub").mkdir()
  outside = tmp_path / "outside.jpg"
  outside.write_bytes(b"x")
  (d / "escape.jpg").symlink_to(outside)
  (d / "inner.jpg").symlink_to(d / "a.jpg")
  (d / "dangling.png").symlink_to(d / "gone.png")

  found, skips = list_images(d)
  assert found == [d / "C.JPEG", d / "a.jpg", d / "b.png", d / "d.webp", d / "inner.jpg"]
  assert skips == [
    (d / ".DS_Store", "hidden file"),  # code-point order: "D" < "_"
    (d / "._a.jpg", "hidden file"),
    (d / "dangling.png", "not a file"),
    (d / "escape.jpg", "link outside folder"),
    (d / "noext", "not an image extension"),
    (d / "notes.txt", "not an image extension"),
    (d / "sub", "subfolder"),
  ]
  assert list_images(str(d)) == (found, skips)


def test_list_images_errors(tmp_path):
  with pytest.raises(BadInputError) as info:
    list_images(tmp_path / "absent")
  assert info.value.problem == "missing folder"
  f = tmp_path / "file"
  f.write_bytes(b"x")
  with pytest.raises(BadInputError) as info:
    list_images(f)
  assert info.value.problem == "not a folder"
  assert list_images(tmp_path) == ([], [(f, "not an image extension")])


# ------------------------------------------------------------------------ VOC

VALID_XML = """<annotation>
    <folder>images</folder>
    <filename>{filename}</filename>
    <size>
        <width>{width}</width>
        <height>366</height>
        <depth>3</depth>
    </size>
    <segmented>0</segmented>
    {objects}
</annotation>"""

OBJECT_XML = """<object>
        <name>{name}</name>
        <pose>Unspecified</pose>
        <truncated>0</truncated>
        <occluded>0</occluded>
        <difficult>0</difficult>
        <bndbox>
            <xmin>{b[0]}</xmin>
            <ymin>{b[1]}</ymin>
            <xmax>{b[2]}</xmax>
            <ymax>{b[3]}</ymax>
        </bndbox>
    </object>"""


def _xml(tmp_path, text, name="a.xml"):
  p = tmp_path / name
  p.write_text(text)
  return p


def _voc(filename="maksssksksss0.jpg", width="512", objects=(("with_mask", (79, 105, 109, 142)),)):
  objs = "\n".join(OBJECT_XML.format(name=n, b=b) for n, b in objects)
  return VALID_XML.format(filename=filename, width=width, objects=objs)


def _voc_problem(path):
  with pytest.raises(BadInputError) as info:
    parse_voc(path)
  assert str(info.value).startswith(f"{path}: ")
  return info.value


def test_parse_valid(tmp_path):
  p = _xml(
    tmp_path,
    _voc(
      objects=(
        ("without_mask", (79, 105, 109, 142)),
        ("  with_mask \n", ("12.0", "100.5", "226", "144")),
      )
    ),
  )
  ann = parse_voc(p)
  assert ann == VocAnnotation(
    xml_path=p,
    filename="maksssksksss0.jpg",
    width=512,
    height=366,
    objects=(
      VocObject("without_mask", (79.0, 105.0, 109.0, 142.0)),
      VocObject("with_mask", (12.0, 100.5, 226.0, 144.0)),
    ),
  )
  assert parse_voc(str(p)).xml_path == p


def test_parse_no_objects_and_bad_size(tmp_path):
  ann = parse_voc(_xml(tmp_path, _voc(width="wide", objects=())))
  assert ann.objects == () and ann.width is None and ann.height == 366
  assert parse_voc(_xml(tmp_path, _voc(width="-3", objects=()), "b.xml")).width is None
  assert parse_voc(_xml(tmp_path, _voc(width="640.0", objects=()), "c.xml")).width == 640
  ann = parse_voc(_xml(tmp_path, "<annotation><filename> x.jpg </filename></annotation>", "d.xml"))
  assert ann.filename == "x.jpg" and ann.width is None and ann.height is None


def test_parse_real_annotation(real_raw_root):
  detection = real_raw_root / "face-mask-detection"
  ann = parse_voc(detection / "annotations" / "maksssksksss0.xml")
  assert ann.filename == "maksssksksss0.jpg"
  assert (ann.width, ann.height) == (512, 366)
  assert [o.name for o in ann.objects] == ["without_mask", "with_mask", "without_mask"]
  assert ann.objects[0].box == (79.0, 105.0, 109.0, 142.0)
  assert resolve_image(ann, detection / "images") == detection / "images" / "maksssksksss0.jpg"


def test_parse_malformed(tmp_path):
  for i, text in enumerate(
    [
      "<annotation><filename>a.jpg</annotation>",
      "not xml at all",
      "<a>\x01</a>",
      "<?xml version='1.0' encoding='nope'?><a/>",
    ]
  ):
    assert _voc_problem(_xml(tmp_path, text, f"m{i}.xml")).problem == "malformed XML"


def test_parse_zero_byte_missing_dir(tmp_path):
  assert _voc_problem(_xml(tmp_path, "")).problem == "zero-byte file"
  assert _voc_problem(tmp_path / "absent.xml").problem == "missing file"
  (tmp_path / "d.xml").mkdir()
  assert _voc_problem(tmp_path / "d.xml").problem == "not a file"


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotation><filename>&lol9;</filename></annotation>"""


def test_billion_laughs_rejected_quickly(tmp_path):
  p = _xml(tmp_path, BILLION_LAUGHS)
  start = time.monotonic()
  assert _voc_problem(p).problem == "unsafe XML"
  assert time.monotonic() - start < 1.0


@pytest.mark.parametrize(
  "text",
  [
    '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    "<annotation><filename>&x;</filename></annotation>",
    '<?xml version="1.0"?><!DOCTYPE a SYSTEM "http://example.invalid/voc.dtd">'
    "<annotation><filename>a.jpg</filename></annotation>",
    '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>'
    "<annotation><filename>a.jpg</filename></annotation>",
    "<!DOCTYPE annotation><annotation><filename>a.jpg</filename></annotation>",
  ],
)
def test_external_entities_and_dtds_rejected(tmp_path, text):
  err = _voc_problem(_xml(tmp_path, text))
  assert err.problem == "unsafe XML"
  assert "root:" not in str(err)  # nothing of /etc/passwd leaks


def test_oversized_annotation(tmp_path):
  pad = "<!--" + "x" * MAX_XML_BYTES + "-->"
  p = _xml(tmp_path, _voc().replace("<segmented>", pad + "<segmented>"))
  assert _voc_problem(p).problem == "annotation too large"
  # exactly at the limit is fine
  base = _voc()
  filler = MAX_XML_BYTES - len(base.encode()) - len("<!---->")
  p2 = _xml(tmp_path, base.replace("<segmented>", "<!--" + "x" * filler + "--><segmented>"), "b.xml")
  assert p2.stat().st_size == MAX_XML_BYTES
  assert parse_voc(p2).filename == "maksssksksss0.jpg"


def test_missing_filename(tmp_path):
  assert _voc_problem(_xml(tmp_path, "<annotation><size/></annotation>")).problem == "no <filename>"
  assert _voc_problem(_xml(tmp_path, _voc(filename="  "), "b.xml")).problem == "no <filename>"


@pytest.mark.parametrize(
  "objects,detail",
  [
    ((("ok", (1, 2, 3, 4)), ("", (1, 2, 3, 4))), "object 1: missing <name>"),
    ((("ok", (1, 2, 3, 4)), ("x", (1, 2, "abc", 4))), "object 1: <xmax> is not a number: 'abc'"),
    ((("x", ("nan", 2, 3, 4)),), "object 0: <xmin> is not a number"),
    ((("x", (1, "", 3, 4)),), "object 0: missing <bndbox><ymin>"),
  ],
)
def test_bad_object(tmp_path, objects, detail):
  err = _voc_problem(_xml(tmp_path, _voc(objects=objects)))
  assert err.problem == "bad <object>"
  assert detail in err.detail


def test_object_without_bndbox(tmp_path):
  text = "<annotation><filename>a.jpg</filename><object><name>x</name></object></annotation>"
  err = _voc_problem(_xml(tmp_path, text))
  assert (err.problem, err.detail) == ("bad <object>", "object 0: missing <bndbox>")


# ------------------------------------------------------------- resolve_image


def _ann(tmp_path, filename):
  return VocAnnotation(tmp_path / "ann.xml", filename, None, None, ())


@pytest.fixture()
def images_dir(tmp_path):
  d = tmp_path / "data" / "images"
  d.mkdir(parents=True)
  (d / "photo.jpg").write_bytes(b"x")
  return d


def test_resolve_plain(tmp_path, images_dir):
  assert resolve_image(_ann(tmp_path, "photo.jpg"), images_dir) == images_dir / "photo.jpg"
  assert resolve_image(_ann(tmp_path, "photo.jpg"), str(images_dir)) == images_dir / "photo.jpg"


@pytest.mark.parametrize(
  "name",
  ["../../etc/passwd", "/etc/passwd", "..", ".", "sub/photo.jpg", "..\\photo.jpg", "C:photo.jpg", "photo\x00.jpg", ""],
)
def test_resolve_rejects_paths(tmp_path, images_dir, name):
  (images_dir / "sub").mkdir()
  (images_dir / "sub" / "photo.jpg").write_bytes(b"x")
  with pytest.raises(BadInputError) as info:
    resolve_image(_ann(tmp_path, name), images_dir)
  assert info.value.problem == "image path outside dataset folder"
  assert info.value.path == tmp_path / "ann.xml"


def test_resolve_rejects_symlink_escape(tmp_path, images_dir):
  secret = tmp_path / "secret.jpg"
  secret.write_bytes(b"x")
  (images_dir / "evil.jpg").symlink_to(secret)
  (images_dir / "evil2.jpg").symlink_to("../../secret.jpg")
  (images_dir / "dangling.jpg").symlink_to("/nonexistent/x.jpg")
  (images_dir / "ok.jpg").symlink_to("photo.jpg")
  for name in ("evil.jpg", "evil2.jpg", "dangling.jpg"):
    with pytest.raises(BadInputError) as info:
      resolve_image(_ann(tmp_path, name), images_dir)
    assert info.value.problem == "image path outside dataset folder", name
  assert resolve_image(_ann(tmp_path, "ok.jpg"), images_dir) == images_dir / "ok.jpg"


def test_resolve_rejects_symlink_escape_via_stem_fallback(tmp_path, images_dir):
  secret = tmp_path / "secret.png"
  secret.write_bytes(b"x")
  (images_dir / "other.png").symlink_to(secret)
  with pytest.raises(BadInputError) as info:
    resolve_image(_ann(tmp_path, "other.jpg"), images_dir)
  assert info.value.problem == "image missing"


def test_resolve_missing(tmp_path, images_dir):
  with pytest.raises(BadInputError) as info:
    resolve_image(_ann(tmp_path, "absent.jpg"), images_dir)
  assert (info.value.problem, info.value.detail) == ("image missing", "absent.jpg")
  assert str(info.value) == f"{tmp_path / 'ann.xml'}: image missing (absent.jpg)"
  with pytest.raises(BadInputError) as info:
    resolve_image(_ann(tmp_path, "photo.jpg"), images_dir / "nope")
  assert info.value.problem == "missing folder"


def test_resolve_stem_fallback(tmp_path, images_dir):
  # annotation says .png, the folder has .jpg
  assert resolve_image(_ann(tmp_path, "photo.png"), images_dir) == images_dir / "photo.jpg"
  (images_dir / "UP.JPG").write_bytes(b"x")
  assert resolve_image(_ann(tmp_path, "UP.png"), images_dir).name.lower() == "up.jpg"
  # no extension in the annotation
  assert resolve_image(_ann(tmp_path, "photo"), images_dir) == images_dir / "photo.jpg"
  # a non-image extension is not guessed at
  with pytest.raises(BadInputError) as info:
    resolve_image(_ann(tmp_path, "photo.xml"), images_dir)
  assert info.value.problem == "image missing"
  # ambiguous: two candidates -> missing
  (images_dir / "photo.bmp").write_bytes(b"x")
  with pytest.raises(BadInputError) as info:
    resolve_image(_ann(tmp_path, "photo.png"), images_dir)
  assert info.value.problem == "image missing"
  assert "ambiguous" in info.value.detail
  # the exact name always wins
  assert resolve_image(_ann(tmp_path, "photo.bmp"), images_dir) == images_dir / "photo.bmp"


# ----------------------------------------------------------------------- boxes


def test_clip_box_inside_and_rounding():
  assert clip_box((79, 105, 109, 142), 512, 366) == (79, 105, 109, 142)
  assert clip_box((79.0, 105.0, 109.0, 142.0), 512, 366) == (79, 105, 109, 142)
  assert clip_box((10.2, 20.7, 30.2, 40.9), 512, 366) == (10, 20, 31, 41)  # outward
  assert clip_box((0, 0, 512, 366), 512, 366) == (0, 0, 512, 366)
  assert clip_box((5.2, 5.2, 5.7, 5.7), 10, 10) == (5, 5, 6, 6)
  assert all(type(v) is int for v in clip_box((1.5, 2, 3, 4), 10, 10))


def test_clip_box_partly_outside_is_clipped():
  assert clip_box((-20, -5, 30, 40), 100, 80) == (0, 0, 30, 40)
  assert clip_box((90, 70, 140, 95.5), 100, 80) == (90, 70, 100, 80)


@pytest.mark.parametrize(
  "box,problem",
  [
    ((50, 10, 40, 20), "inverted box"),
    ((10, 50, 20, 40), "inverted box"),
    ((10, 10, 10, 20), "zero-area box"),
    ((10, 10, 20, 10), "zero-area box"),
    ((200, 10, 300, 20), "box outside photo"),
    ((10, -50, 20, -10), "box outside photo"),
    ((-30, 10, 0, 20), "box outside photo"),  # touches the left border only
    ((100, 10, 120, 20), "box outside photo"),  # starts at the right border
    ((float("nan"), 1, 2, 3), "non-finite box"),
  ],
)
def test_clip_box_errors(box, problem):
  with pytest.raises(BoxError) as info:
    clip_box(box, 100, 80)
  assert info.value.problem == problem == str(info.value)
  assert isinstance(info.value, ValueError)


def test_square_crop_box_middle():
  # 30 x 37 box, margin 0.5 -> side round(37 * 1.5) = 56 (55.5 rounds to even)
  box = (79, 105, 109, 142)
  x0, y0, x1, y1 = square_crop_box(box, 512, 366, 0.5)
  assert x1 - x0 == y1 - y0 == round(37 * 1.5)
  assert (x0 + x1) - (79 + 109) in (0, 1, -1) and (y0 + y1) - (105 + 142) in (0, 1, -1)
  assert square_crop_box(box, 512, 366, 0.5) == (x0, y0, x1, y1)  # deterministic
  # 20 x 10 box, side 40: left (40 - 40) // 2 = 0, top (30 - 40) // 2 = -5 -> clipped
  assert square_crop_box((10, 10, 30, 20), 100, 100, 1.0) == (0, 0, 40, 35)


def test_square_crop_box_margin_zero_keeps_long_side():
  # side 37; left (79 + 109 - 37) // 2 = 75: 4 extra columns left, 3 right
  assert square_crop_box((79, 105, 109, 142), 512, 366, 0.0) == (75, 105, 112, 142)
  assert square_crop_box((10, 20, 50, 30), 100, 100, 0) == (10, 5, 50, 45)
  assert square_crop_box((10, 10, 20, 20), 100, 100, 0) == (10, 10, 20, 20)


def test_square_crop_box_clipped_at_edges():
  assert square_crop_box((0, 0, 20, 20), 100, 100, 1.0) == (0, 0, 30, 30)
  assert square_crop_box((90, 40, 100, 60), 100, 100, 0.0) == (85, 40, 100, 60)
  x0, y0, x1, y1 = square_crop_box((0, 0, 100, 50), 100, 50, 0.2)
  assert (x0, y0, x1, y1) == (0, 0, 100, 50)  # not square: clipped to the photo
  # float / partly outside boxes are clipped first
  # (0, 5, 21, 25) after clipping: side 21, top (5 + 25 - 21) // 2 = 4
  assert square_crop_box((-10.5, 5, 20.2, 25), 100, 100, 0) == (0, 4, 21, 25)


def test_square_crop_box_errors():
  with pytest.raises(BoxError):
    square_crop_box((50, 10, 40, 20), 100, 100, 0.2)
  with pytest.raises(ValueError):
    square_crop_box((10, 10, 20, 20), 100, 100, float("inf"))
  with pytest.raises(ValueError):
    square_crop_box((10, 10, 20, 20), 100, 100, -1.0)
