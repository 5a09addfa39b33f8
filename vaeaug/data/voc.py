"""Pascal VOC annotation XML (as in Kaggle "Face Mask Detection"), read safely.

Annotation files come from the web, so:

* they are parsed with :mod:`defusedxml` with DTDs, entity declarations and
  external references all forbidden (a VOC file needs none of them): any of
  those -> ``BadInputError(xml_path, "unsafe XML")``, raised when the parser
  *meets the declaration*, i.e. before any entity is expanded (billion laughs,
  ``<!ENTITY x SYSTEM "file:///etc/passwd">``);
* the size is checked before reading (``MAX_XML_BYTES``) and at most that many
  bytes (+1) are ever read;
* at most ``MAX_OBJECTS`` ``<object>`` elements are accepted: 1 MB of XML holds
  thousands of boxes, and the faces of one photo are linked pairwise when the
  dataset is grouped (quadratic time and memory: 1,000 identical boxes take
  ~17 s and ~4.5 GB there), while the largest real annotation has 115 faces;
* the image a file points at must be a plain file name inside the images
  folder (:func:`resolve_image`).

Problems (``BadInputError.problem``) raised by :func:`parse_voc`:
``"missing file"``, ``"not a file"``, ``"unreadable file"``, ``"zero-byte file"``,
``"annotation too large"``, ``"unsafe XML"``, ``"malformed XML"``,
``"no <filename>"``, ``"too many objects"`` and ``"bad <object>"``.  One bad ``<object>`` rejects the
*whole file* (the caller skips that photo with the reason): a photo whose
annotation is partly unusable cannot be trusted to say where *all* faces are.

Box convention (:func:`clip_box`, :func:`square_crop_box`): coordinates are
**pixel edges in 0-based pixel coordinates** -- pixel column ``x`` covers
``[x, x+1)``.  The VOC spec says boxes are 1-based and inclusive, but the Kaggle
face-mask set is 0-based (``xmin`` is 0 and ``xmax`` equals the width in places,
never the other way round), so a box ``(xmin, ymin, xmax, ymax)`` covers
``[xmin, xmax) x [ymin, ymax)`` and non-integer edges are rounded *outward*
(``floor`` for min, ``ceil`` for max).  Returned boxes are Python ints with
``xmax``/``ymax`` exclusive, ready for ``image[ymin:ymax, xmin:xmax]``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
import xml.etree.ElementTree as _std_et
from pathlib import Path, PurePosixPath, PureWindowsPath

import defusedxml
import defusedxml.ElementTree as _safe_et

from vaeaug.data.images import IMAGE_EXTENSIONS, BadInputError

__all__ = [
  "VocObject",
  "VocAnnotation",
  "MAX_XML_BYTES",
  "MAX_OBJECTS",
  "BoxError",
  "parse_voc",
  "resolve_image",
  "clip_box",
  "square_crop_box",
]

MAX_XML_BYTES = 1_000_000
MAX_OBJECTS = 256

_COORDS = ("xmin", "ymin", "xmax", "ymax")


@dataclasses.dataclass(frozen=True)
class VocObject:
  name: str  # label as written (stripped)
  box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax as parsed


@dataclasses.dataclass(frozen=True)
class VocAnnotation:
  xml_path: Path
  filename: str  # <filename> text (stripped)
  width: int | None  # <size><width>, None if absent/invalid
  height: int | None
  objects: tuple[VocObject, ...]


class BoxError(ValueError):
  """A box that cannot be used; ``problem`` is one of ``"inverted box"``,
  ``"zero-area box"``, ``"box outside photo"``, ``"non-finite box"``."""

  def __init__(self, problem: str):
    self.problem = problem
    super().__init__(problem)


# --------------------------------------------------------------------- parsing


def _read_bounded(path: Path, shown) -> bytes:
  try:
    st = os.stat(path)
  except (FileNotFoundError, NotADirectoryError):
    raise BadInputError(shown, "missing file") from None
  except OSError as e:
    raise BadInputError(shown, "unreadable file", f"{type(e).__name__}: {e}") from None
  if not stat.S_ISREG(st.st_mode):
    raise BadInputError(shown, "not a file")
  if st.st_size == 0:
    raise BadInputError(shown, "zero-byte file")
  if st.st_size > MAX_XML_BYTES:
    raise BadInputError(shown, "annotation too large", f"{st.st_size} > {MAX_XML_BYTES} bytes")
  try:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as f:
      if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        raise BadInputError(shown, "not a file")
      data = f.read(MAX_XML_BYTES + 1)  # the file may have grown since stat
  except FileNotFoundError:
    raise BadInputError(shown, "missing file") from None
  except OSError as e:
    raise BadInputError(shown, "unreadable file", f"{type(e).__name__}: {e}") from None
  if not data:
    raise BadInputError(shown, "zero-byte file")
  if len(data) > MAX_XML_BYTES:
    raise BadInputError(shown, "annotation too large", f"> {MAX_XML_BYTES} bytes")
  return data


def _positive_int(text: str | None) -> int | None:
  if text is None:
    return None
  text = text.strip()
  try:
    value = int(text)
  except ValueError:
    try:
      number = float(text)
    except ValueError:
      return None
    if not math.isfinite(number) or number != int(number):
      return None
    value = int(number)
  return value if value > 0 else None


def _brief(text: str) -> str:
  r = repr(text)
  return r if len(r) <= 40 else r[:37] + "..."


def parse_voc(xml_path) -> VocAnnotation:
  """Parse one VOC annotation file.

  ``filename`` and object names are stripped of surrounding whitespace; box
  coordinates are returned as floats exactly as written (``"12.0"`` -> 12.0,
  validated as finite numbers but not otherwise checked -- see
  :func:`clip_box`).  ``width``/``height`` are positive ints or ``None`` when
  absent or not a positive whole number.  Objects keep document order; only
  ``<object>`` children of the root count (nested ``<part>`` boxes do not).

  Raises :class:`BadInputError` naming ``xml_path`` (problems listed in the
  module docstring); a bad ``<object>`` gives ``"bad <object>"`` with a detail
  such as ``"object 2: <xmax> is not a number: 'abc'"`` (0-based index in
  document order) and rejects the whole file.
  """
  shown = xml_path
  xml_path = Path(os.fspath(xml_path))
  data = _read_bounded(xml_path, shown)
  try:
    root = _safe_et.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
  except defusedxml.DefusedXmlException as e:
    raise BadInputError(shown, "unsafe XML", type(e).__name__) from None
  except _std_et.ParseError as e:
    raise BadInputError(shown, "malformed XML", str(e)[:200]) from None
  except (ValueError, LookupError, UnicodeError, RecursionError) as e:
    # e.g. an unknown encoding= declaration, absurd nesting depth
    raise BadInputError(shown, "malformed XML", f"{type(e).__name__}: {str(e)[:160]}") from None

  filename = root.findtext("filename")
  if filename is None or not filename.strip():
    raise BadInputError(shown, "no <filename>")
  filename = filename.strip()

  width = _positive_int(root.findtext("size/width"))
  height = _positive_int(root.findtext("size/height"))

  elements = root.findall("object")
  if len(elements) > MAX_OBJECTS:
    raise BadInputError(shown, "too many objects", f"{len(elements)} > {MAX_OBJECTS}")
  objects = []
  for index, obj in enumerate(elements):
    name = obj.findtext("name")
    if name is None or not name.strip():
      raise BadInputError(shown, "bad <object>", f"object {index}: missing <name>")
    bndbox = obj.find("bndbox")
    if bndbox is None:
      raise BadInputError(shown, "bad <object>", f"object {index}: missing <bndbox>")
    coords = []
    for field in _COORDS:
      text = bndbox.findtext(field)
      if text is None or not text.strip():
        raise BadInputError(shown, "bad <object>", f"object {index}: missing <bndbox><{field}>")
      try:
        value = float(text.strip())
      except ValueError:
        value = math.nan
      if not math.isfinite(value):
        raise BadInputError(
          shown,
          "bad <object>",
          f"object {index}: <{field}> is not a number: {_brief(text.strip())}",
        )
      coords.append(value)
    objects.append(VocObject(name=name.strip(), box=tuple(coords)))

  return VocAnnotation(
    xml_path=xml_path,
    filename=filename,
    width=width,
    height=height,
    objects=tuple(objects),
  )


# ------------------------------------------------------------------ resolution


def _plain_name(name: str) -> bool:
  if not name or name in (".", "..") or "\x00" in name:
    return False
  if "/" in name or "\\" in name:
    return False
  if PurePosixPath(name).anchor or PureWindowsPath(name).anchor:  # "/x", "C:x"
    return False
  return True


def _inside(path: Path, root: Path) -> bool:
  try:
    return path.resolve().is_relative_to(root)
  except (OSError, RuntimeError):  # symlink loop
    return False


def _regular_file(path: Path) -> bool:
  try:
    return stat.S_ISREG(os.stat(path).st_mode)
  except (OSError, ValueError):
    return False


def resolve_image(annotation: VocAnnotation, images_dir) -> Path:
  """Path of the annotated photo inside ``images_dir`` (``images_dir / name``).

  * ``annotation.filename`` must be a plain file name: empty, ``.``/``..``,
    absolute paths, drive prefixes (``C:``), ``/`` or ``\\`` anywhere, NUL ->
    ``BadInputError(xml_path, "image path outside dataset folder")``.
  * The path must *resolve* inside ``images_dir`` (symlinks are followed and
    checked with ``resolve()`` + ``is_relative_to``); a link pointing outside,
    even a dangling one, gives the same error.
  * Fallback: if the exact name does not exist (or is not a regular file) but
    exactly one *other* regular file with the same stem and an image
    extension does (``IMAGE_EXTENSIONS``, probed in lower and upper case, e.g.
    the annotation says ``x.png`` and the folder has ``x.jpg`` or ``x.JPG``),
    that file is returned.  The fallback is only tried when the annotated name
    has an image extension or none.  No match, or several ->
    ``BadInputError(xml_path, "image missing", detail=filename)`` (with the
    candidates listed when ambiguous).

  Raises ``BadInputError(images_dir, "missing folder")`` if ``images_dir``
  is not a directory (a whole-dataset problem, not a per-photo one).
  """
  shown = annotation.xml_path
  name = annotation.filename
  if not _plain_name(name):
    raise BadInputError(shown, "image path outside dataset folder", _brief(name))
  images_dir = Path(os.fspath(images_dir))
  if not images_dir.is_dir():
    raise BadInputError(images_dir, "missing folder")
  root = images_dir.resolve()

  candidate = images_dir / name
  if os.path.lexists(candidate):
    if not _inside(candidate, root):
      raise BadInputError(shown, "image path outside dataset folder", f"{_brief(name)} is a link")
    if _regular_file(candidate):
      return candidate

  stem, suffix = os.path.splitext(name)
  if suffix.lower() not in IMAGE_EXTENSIONS and suffix != "":
    raise BadInputError(shown, "image missing", name)
  if suffix == "":
    stem = name
  found: dict[tuple[int, int], Path] = {}
  for ext in sorted(IMAGE_EXTENSIONS):
    for spelled in (ext, ext.upper()):
      other = images_dir / (stem + spelled)
      if other.name == name or not _regular_file(other) or not _inside(other, root):
        continue
      st = os.stat(other)
      # On case-insensitive file systems x.jpg and x.JPG are one file.
      found.setdefault((st.st_dev, st.st_ino), other)
  if len(found) == 1:
    return next(iter(found.values()))
  if len(found) > 1:
    names = ", ".join(sorted(p.name for p in found.values()))
    raise BadInputError(shown, "image missing", f"{name}; ambiguous: {names}")
  raise BadInputError(shown, "image missing", name)


# ----------------------------------------------------------------------- boxes


def clip_box(box, width: int, height: int) -> tuple[int, int, int, int]:
  """Validate a VOC box and clip it to a ``width`` x ``height`` photo.

  Returns integer ``(xmin, ymin, xmax, ymax)`` with ``xmax``/``ymax``
  exclusive (pixel-edge convention of the module docstring: min edges are
  floored, max edges ceiled, then clipped to ``[0, width] x [0, height]``).
  Boxes partly outside the photo are clipped.  Raises :class:`BoxError`,
  checked in this order: ``"non-finite box"``; ``"inverted box"`` (xmin > xmax
  or ymin > ymax as given); ``"box outside photo"`` (no pixel in common with
  the photo, including a box that only touches its border); ``"zero-area
  box"`` (after clipping, width or height < 1, e.g. xmin == xmax).
  ``ValueError`` if ``width``/``height`` are not positive.
  """
  width, height = int(width), int(height)
  if width < 1 or height < 1:
    raise ValueError(f"photo size must be positive, got {width}x{height}")
  xmin, ymin, xmax, ymax = (float(v) for v in box)
  if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
    raise BoxError("non-finite box")
  if xmin > xmax or ymin > ymax:
    raise BoxError("inverted box")
  x0, y0 = math.floor(xmin), math.floor(ymin)
  x1, y1 = math.ceil(xmax), math.ceil(ymax)
  if x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0:
    raise BoxError("box outside photo")
  x0, y0 = max(x0, 0), max(y0, 0)
  x1, y1 = min(x1, width), min(y1, height)
  if x1 - x0 < 1 or y1 - y0 < 1:
    raise BoxError("zero-area box")
  return int(x0), int(y0), int(x1), int(y1)


def square_crop_box(box, width: int, height: int, margin: float) -> tuple[int, int, int, int]:
  """Grow a face box to a square crop around it, clipped to the photo.

  ``box`` is first passed through :func:`clip_box` (a no-op for an already
  clipped integer box; invalid boxes raise :class:`BoxError`).  With
  ``w, h`` its size, the square's side is ``round(max(w, h) * (1 + margin))``
  (Python ``round``, at least 1) and its left/top edge is
  ``(xmin + xmax - side) // 2`` / ``(ymin + ymax - side) // 2`` -- the box
  centre in doubled integer coordinates, floored, so when side and box differ
  in parity the extra pixel goes right/bottom.  The square is then clipped to
  the photo, so **crops at photo edges are not square** (callers that need a
  square resize or pad).  ``margin=0`` keeps the long side exactly: the
  long-side extent equals the box's.  Raises ``ValueError`` for a non-finite
  margin or one that makes the side < 1.
  """
  margin = float(margin)
  if not math.isfinite(margin):
    raise ValueError(f"margin must be finite, got {margin}")
  x0, y0, x1, y1 = clip_box(box, width, height)
  long_side = max(x1 - x0, y1 - y0)
  side = round(long_side * (1.0 + margin))
  if side < 1:
    raise ValueError(f"margin {margin} makes the crop side {side} < 1")
  left = (x0 + x1 - side) // 2
  top = (y0 + y1 - side) // 2
  return (
    max(left, 0),
    max(top, 0),
    min(left + side, int(width)),
    min(top + side, int(height)),
  )
