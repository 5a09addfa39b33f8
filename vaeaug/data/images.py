"""Safe decoding of untrusted image files (users' web downloads).

Every problem with an input file surfaces as :class:`BadInputError`, which names
the file and says in a few stable words what is wrong (``e.problem`` is meant as
a skip-reason key for dataset builders).  Nothing here crashes deep in a stack,
drops a file silently, hangs, or allocates memory in proportion to what a header
merely *claims*.

Decisions (the documented conventions of this module)
------------------------------------------------------
* **Formats.**  Only JPEG (incl. MPO), PNG (incl. APNG), BMP, GIF, WebP and TIFF
  *content* is decoded, whatever the file is called: the extension is not
  trusted (a PNG named ``.jpg`` decodes), and PIL's other plugins -- some of
  which run external programs (EPS -> Ghostscript) or are rarely exercised --
  are never tried.  Anything else is ``"not an image"``.
* **Problems** (``BadInputError.problem``):

  ``"missing file"``       path does not exist (also a dangling symlink)
  ``"not a file"``         a directory, FIFO, device, socket ... (never opened,
                           so a FIFO cannot hang the reader)
  ``"unreadable file"``    permission denied or another OS error
  ``"zero-byte file"``     empty file
  ``"not an image"``       content is none of the formats above
  ``"corrupt image"``      starts like a supported format but the header or
                           data cannot be decoded
  ``"truncated image"``    the pixel data ends early (PIL's
                           ``LOAD_TRUNCATED_IMAGES`` stays ``False``; this
                           module never touches PIL globals)
  ``"image too large"``    width*height from the *header* exceeds
                           ``max_pixels`` (checked before any pixel is
                           decoded), PIL's own decompression-bomb limit
                           fired, or decoding ran out of memory
  ``"empty image"``        header declares a zero width or height
  ``"too many JPEG scans"`` a JPEG with more than ``MAX_JPEG_SCANS`` scans
                           (a crafted progressive JPEG can otherwise take
                           minutes of CPU to decode)
  ``"unsupported mode"``   decoded, but the pixel mode cannot be turned into RGB

* **Completeness.**  PIL's decoders judge whether the pixel data is complete: an
  image whose pixels all decode but whose file lacks only trailing bytes after
  the pixel data (a PNG without its ``IEND`` chunk, a GIF without its trailer)
  is accepted, because its pixels are exactly the intended ones.
* **EXIF orientation** is applied (``ImageOps.exif_transpose``), so rotated phone
  photos come out upright.  If the EXIF block is broken and cannot be parsed the
  image is returned *as stored* (no transpose) rather than rejected: the pixels
  are fine and the orientation tag is only a hint.
* **Modes -> RGB.**  ``1`` gives 0/255; ``L``/``P``/``CMYK``/``YCbCr``/... via
  PIL's ``convert("RGB")``.  Anything with transparency (an alpha band, or a
  ``transparency`` key/palette entry) is composited on **white** with integer
  arithmetic ``(c*a + 255*(255-a) + 127) // 255`` -- a fully transparent pixel
  becomes (255, 255, 255).  16-bit grey (``I;16``, ``I;16B``, ...) and 32-bit
  ``I`` are taken as 0..65535 (``I`` values clipped to that range) and scaled
  to the *nearest* 8-bit level, ``(v*255 + 32767) // 65535`` (65535 -> 255,
  257*k -> k); note PIL itself already reduces 16-bit *RGB(A)* PNGs to 8 bits
  by dropping the low byte, so the two paths can differ by one level.  ``F``
  (float) uses PIL's convention that ``F`` has the same scale as ``L``: values
  are rounded and clipped to 0..255, NaN becomes 0.
* **Animations / multi-page files**: the first frame / page only.
* **Paths.**  ``load_rgb`` opens exactly the path it is given (following
  symlinks like any ``open``); deciding *which* paths are inside a dataset is
  done by :func:`list_images` (and ``voc.resolve_image``).
* **Warnings.**  PIL may emit ``UserWarning``s about corrupt metadata; they are
  left alone (changing warning filters is process-global and not thread-safe).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
  "BadInputError",
  "IMAGE_EXTENSIONS",
  "MAX_PIXELS",
  "MAX_JPEG_SCANS",
  "PNG_COMPRESS_LEVEL",
  "load_rgb",
  "encode_png",
  "list_images",
  "sha256_of_pixels",
]


class BadInputError(ValueError):
  """A file that cannot be used.

  ``path`` names the file, ``problem`` says what is wrong in a few words
  (stable, used as a skip-reason key, e.g. ``"zero-byte file"``,
  ``"not an image"``, ``"truncated image"``, ``"image too large"``,
  ``"unsupported mode"``), ``detail`` optionally says more.
  ``str(e) == f"{path}: {problem}" + (f" ({detail})" if detail else "")``.
  """

  def __init__(self, path, problem: str, detail: str = ""):
    self.path = path
    self.problem = problem
    self.detail = detail
    message = f"{path}: {problem}" + (f" ({detail})" if detail else "")
    super().__init__(message)

  def __reduce__(self):  # picklable across processes (e.g. Beam workers)
    return (type(self), (self.path, self.problem, self.detail))


IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

MAX_PIXELS: int = 40_000_000
"""Decompression-bomb guard: width*height from the header, checked before decoding."""

MAX_JPEG_SCANS: int = 1000
"""Upper bound on SOS markers in a JPEG file (normal progressive JPEGs have ~10)."""

PNG_COMPRESS_LEVEL: int = 6
"""Fixed zlib level used by :func:`encode_png`."""

# PIL plugin ids that may be tried on content.  Multi-picture JPEGs (MPO, written
# by many phones/cameras) are opened by the JPEG plugin, which has no separate
# "MPO" opener registered (naming "MPO" here would raise KeyError in PIL).
_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")

# Leading bytes of the supported formats: a file that starts like one of them
# but cannot be opened is "corrupt image" rather than "not an image".
_SIGNATURES = (
  (b"\xff\xd8\xff", "JPEG"),
  (b"\x89PNG\r\n\x1a\n", "PNG"),
  (b"GIF87a", "GIF"),
  (b"GIF89a", "GIF"),
  (b"BM", "BMP"),
  (b"II*\x00", "TIFF"),
  (b"MM\x00*", "TIFF"),
  (b"II+\x00", "TIFF"),  # BigTIFF
  (b"MM\x00+", "TIFF"),
)

_CHUNK = 1 << 20


def _sniff(prefix: bytes) -> str | None:
  if len(prefix) >= 12 and prefix[:4] == b"RIFF" and prefix[8:12] == b"WEBP":
    return "WEBP"
  for magic, fmt in _SIGNATURES:
    if prefix.startswith(magic):
      return fmt
  return None


def _is_truncation(exc: BaseException) -> bool:
  if isinstance(exc, EOFError):
    return True
  text = str(exc).lower()
  return "truncated" in text or "premature end" in text or "unexpected end" in text


def _short(exc: BaseException) -> str:
  text = f"{type(exc).__name__}: {exc}"
  return text if len(text) <= 200 else text[:197] + "..."


def _open_regular(path: Path, shown):
  """Open ``path`` for binary reading if it is a non-empty regular file.

  Returns ``(file object, size)``.  Never opens FIFOs/devices (which could
  block) and never follows anything but the path itself.
  """
  try:
    st = os.stat(path)
  except (FileNotFoundError, NotADirectoryError):
    raise BadInputError(shown, "missing file") from None
  except OSError as e:  # permission denied, symlink loop, name too long ...
    raise BadInputError(shown, "unreadable file", _short(e)) from None
  if not stat.S_ISREG(st.st_mode):
    raise BadInputError(shown, "not a file")
  if st.st_size == 0:
    raise BadInputError(shown, "zero-byte file")
  try:
    # O_NONBLOCK: should the path be swapped for a FIFO after the check,
    # opening it still does not block; it is then rejected by fstat below.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
  except FileNotFoundError:
    raise BadInputError(shown, "missing file") from None
  except OSError as e:
    raise BadInputError(shown, "unreadable file", _short(e)) from None
  f = os.fdopen(fd, "rb")
  try:
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode):
      raise BadInputError(shown, "not a file")
    if st.st_size == 0:
      raise BadInputError(shown, "zero-byte file")
  except BaseException:
    f.close()
    raise
  return f, st.st_size


def _count_jpeg_scans(f, limit: int) -> int:
  """Number of SOS markers (FF DA) in the stream, stopping once above ``limit``.

  Entropy-coded data stuffs every 0xFF with 0x00, so FF DA only occurs as a
  marker (or, rarely, inside APPn metadata, which only makes this an upper
  bound).  Reads in fixed-size chunks: memory stays bounded.
  """
  f.seek(0)
  count = 0
  last = b""
  while True:
    chunk = f.read(_CHUNK)
    if not chunk:
      break
    count += (last + chunk).count(b"\xff\xda")
    if count > limit:
      break
    last = chunk[-1:]
    if last != b"\xff":
      last = b""
  f.seek(0)
  return count


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
  rgb = rgba[..., :3].astype(np.uint32)
  alpha = rgba[..., 3:4].astype(np.uint32)
  out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
  return out.astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
  return np.repeat(gray[..., None], 3, axis=2)


def _to_rgb_array(im: Image.Image, shown) -> np.ndarray:
  mode = im.mode
  has_transparency = "transparency" in im.info
  if mode == "RGB" and not has_transparency:
    arr = np.asarray(im)
  elif mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I (32-bit)
    raw = np.asarray(im)
    if raw.ndim != 2:
      raise BadInputError(shown, "unsupported mode", mode)
    wide = np.clip(raw.astype(np.int64), 0, 65535)
    gray = ((wide * 255 + 32767) // 65535).astype(np.uint8)
    key = im.info.get("transparency")
    if isinstance(key, int) and not isinstance(key, bool):
      gray = np.where(raw == key, np.uint8(255), gray)
    arr = _gray_to_rgb(gray)
  elif mode == "F":
    raw = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    arr = _gray_to_rgb(np.clip(np.rint(raw), 0, 255).astype(np.uint8))
  elif mode == "1":
    arr = _gray_to_rgb(np.asarray(im.convert("L")))
  elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or has_transparency:
    if mode == "La":  # PIL cannot convert La directly
      im = im.convert("LA")
    arr = _composite_on_white(np.asarray(im.convert("RGBA")))
  else:  # L, P, CMYK, YCbCr, RGBX, LAB, HSV, ...
    arr = np.asarray(im.convert("RGB"))
  if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
    raise BadInputError(shown, "unsupported mode", f"{mode} gave {arr.dtype} {arr.shape}")
  return np.ascontiguousarray(arr)


def load_rgb(path, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """Decode an image file to a uint8 RGB ``H x W x 3`` array.

  See the module docstring for the accepted formats, the problems reported
  (as :class:`BadInputError`) and the colour/orientation conventions.
  ``max_pixels`` bounds width*height as declared by the header and is checked
  before decoding.  PIL's own ``Image.MAX_IMAGE_PIXELS`` limit still applies
  on top (it is larger than the default ``max_pixels``).
  """
  shown = path
  path = Path(os.fspath(path))
  f, _size = _open_regular(path, shown)
  with f:
    try:
      prefix = f.read(16)
      f.seek(0)
    except OSError as e:
      raise BadInputError(shown, "unreadable file", _short(e)) from None
    kind = _sniff(prefix)
    if kind == "JPEG":
      try:
        scans = _count_jpeg_scans(f, MAX_JPEG_SCANS)
      except OSError as e:
        raise BadInputError(shown, "unreadable file", _short(e)) from None
      if scans > MAX_JPEG_SCANS:
        raise BadInputError(shown, "too many JPEG scans", f"more than {MAX_JPEG_SCANS}")

    # --- header ---------------------------------------------------------
    try:
      im = Image.open(f, formats=_FORMATS)
    except UnidentifiedImageError:
      if kind is None:
        raise BadInputError(shown, "not an image", "content is not JPEG/PNG/BMP/GIF/WebP/TIFF") from None
      raise BadInputError(shown, "corrupt image", f"{kind} header cannot be read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
      raise BadInputError(shown, "image too large", _short(e)) from None
    except MemoryError:
      raise BadInputError(shown, "image too large", "out of memory reading header") from None
    except Exception as e:  # hostile headers can raise nearly anything
      problem = "truncated image" if _is_truncation(e) else "corrupt image"
      raise BadInputError(shown, problem, _short(e)) from None

    with im:
      width, height = im.size
      if width * height > max_pixels:
        raise BadInputError(shown, "image too large", f"{width}x{height} > {max_pixels} pixels")
      if width < 1 or height < 1:
        raise BadInputError(shown, "empty image", f"{width}x{height}")

      # --- pixels ---------------------------------------------------------
      try:
        im.load()
      except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadInputError(shown, "image too large", _short(e)) from None
      except MemoryError:
        raise BadInputError(shown, "image too large", "out of memory decoding") from None
      except Exception as e:
        problem = "truncated image" if _is_truncation(e) else "corrupt image"
        raise BadInputError(shown, problem, _short(e)) from None

      # --- orientation ----------------------------------------------------
      try:
        oriented = ImageOps.exif_transpose(im)
      except MemoryError:
        raise BadInputError(shown, "image too large", "out of memory rotating") from None
      except Exception:
        oriented = im  # broken EXIF: keep the image as stored (documented)
      if oriented is None:  # only with in_place=True, defensive
        oriented = im

      # --- colour ---------------------------------------------------------
      try:
        return _to_rgb_array(oriented, shown)
      except BadInputError:
        raise
      except MemoryError:
        raise BadInputError(shown, "image too large", "out of memory converting") from None
      except Exception as e:
        raise BadInputError(shown, "unsupported mode", f"{im.mode}: {_short(e)}") from None


def encode_png(image: np.ndarray) -> bytes:
  """Deterministic lossless PNG bytes of a uint8 ``H x W x 3`` array.

  Fixed ``compress_level`` (:data:`PNG_COMPRESS_LEVEL`), no ``optimize``, no
  metadata chunks (no time, dpi, text or ICC), so repeated dataset builds with
  the same Pillow/zlib give bit-identical bytes.  Raises ``ValueError`` for an
  array that is not uint8 ``H x W x 3`` (a programming error, not bad input).
  """
  arr = np.asarray(image)
  if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
    raise ValueError(f"encode_png needs a uint8 HxWx3 array, got {arr.dtype} {arr.shape}")
  if arr.shape[0] < 1 or arr.shape[1] < 1:
    raise ValueError(f"encode_png needs a non-empty image, got shape {arr.shape}")
  im = Image.fromarray(np.ascontiguousarray(arr))
  buf = io.BytesIO()
  im.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
  return buf.getvalue()


def list_images(folder) -> tuple[list[Path], list[tuple[Path, str]]]:
  """Image files directly in ``folder`` and the entries skipped, with reasons.

  Returns ``(images, skips)``, both sorted by entry name (code-point order; not
  recursive).  ``images`` are regular files (symlinks allowed if they resolve
  inside ``folder``) with an extension in :data:`IMAGE_EXTENSIONS` (compared
  case-insensitively).  Every other entry is reported in ``skips`` as
  ``(path, reason)``, reasons checked in this order:

  ``"subfolder"``               a directory (or link to one)
  ``"hidden file"``             name starts with ``.`` (``.DS_Store``,
                                macOS ``._photo.jpg`` resource forks ...)
  ``"not an image extension"``  e.g. ``.txt``, ``.xml``, no extension
  ``"link outside folder"``     symlink resolving outside ``folder``
  ``"not a file"``              dangling symlink, FIFO, socket, device

  Raises ``BadInputError(folder, "missing folder")`` if it does not exist,
  ``(folder, "not a folder")`` if it is not a directory, and
  ``(folder, "unreadable folder")`` if it cannot be listed.
  """
  shown = folder
  folder = Path(os.fspath(folder))
  try:
    st = os.stat(folder)
  except (FileNotFoundError, NotADirectoryError):
    raise BadInputError(shown, "missing folder") from None
  except OSError as e:
    raise BadInputError(shown, "unreadable folder", _short(e)) from None
  if not stat.S_ISDIR(st.st_mode):
    raise BadInputError(shown, "not a folder")
  try:
    with os.scandir(folder) as it:
      entries = sorted(it, key=lambda e: e.name)
  except OSError as e:
    raise BadInputError(shown, "unreadable folder", _short(e)) from None

  root = folder.resolve()
  images: list[Path] = []
  skips: list[tuple[Path, str]] = []
  for entry in entries:
    path = folder / entry.name
    try:
      is_dir = entry.is_dir()  # follows symlinks
      is_file = entry.is_file()
      is_link = entry.is_symlink()
    except OSError:
      skips.append((path, "not a file"))
      continue
    if is_dir:
      skips.append((path, "subfolder"))
    elif entry.name.startswith("."):
      skips.append((path, "hidden file"))
    elif Path(entry.name).suffix.lower() not in IMAGE_EXTENSIONS:
      skips.append((path, "not an image extension"))
    elif is_link and not _inside(path, root):
      skips.append((path, "link outside folder"))
    elif not is_file:
      skips.append((path, "not a file"))
    else:
      images.append(path)
  return images, skips


def _inside(path: Path, root: Path) -> bool:
  try:
    return path.resolve().is_relative_to(root)
  except (OSError, RuntimeError):  # symlink loops
    return False


def sha256_of_pixels(image: np.ndarray) -> str:
  """Hex sha256 of an array's shape, dtype and C-order bytes.

  An exact-duplicate key that does not depend on how the file was encoded:
  the same pixels in a PNG and a BMP give the same key.  Hashed is
  ``repr((shape, dtype.str)).encode() + b"\\0" + bytes``.
  """
  arr = np.ascontiguousarray(np.asarray(image))
  h = hashlib.sha256()
  h.update(repr((tuple(int(s) for s in arr.shape), arr.dtype.str)).encode())
  h.update(b"\0")
  h.update(memoryview(arr).cast("B") if arr.size else b"")
  return h.hexdigest()
