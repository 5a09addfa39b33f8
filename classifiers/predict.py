r"""Classify face images (or the faces found in photos) with a trained classifier.

  vaeaug-predict --checkpoint=/tmp/cnn96 --inputs=face1.jpg,faces/     # or: python -m classifiers.predict
  vaeaug-predict --checkpoint=/tmp/cnn96 --inputs=faces/ --json
  vaeaug-predict --checkpoint=/tmp/cnn96 --inputs=photos/ --detect_faces --out_dir=/tmp/annotated

``--checkpoint`` is a training workdir of ``classifiers.train`` (its best-on-validation parameters
are used). ``--inputs`` takes files and folders (comma-separated); a folder stands for the image
files directly in it (``vaeaug.data.images.list_images``: not recursive; other entries are reported
as skipped and are not errors). Every image is decoded with ``load_rgb`` (EXIF orientation applied,
transparency on white), resized to the model's ``image_size`` exactly as the datasets are
(``pipeline.resize_image``: bilinear, stretched to a square) and normalised as in training without
augmentation, so a face crop gets the probabilities the evaluation of the training run would give.

Output: one line per image, ``path  label  probability`` (the probability of the predicted label),
on stdout; unreadable inputs as ``error: path: problem (detail)`` and skipped folder entries as
``skipped: path: reason`` on stderr. ``--json`` prints one JSON document instead: a list with, per
input, ``{"file", "label", "probability", "probabilities": {class: p}}`` or ``{"file", "label":
null, "probabilities": null, "error": problem, "detail"}`` (``"skipped": reason`` for skipped folder
entries; ``"faces": [...]`` per face with ``--detect_faces``).

Decision rule: binary models predict class 1 (``without_mask``) when p(class 1) >= threshold;
``--threshold=auto`` (default) takes the validation-chosen ``threshold`` from the workdir's
``test_metrics.json`` and falls back to 0.5 when the run has not finished. Models with more classes
take the argmax (a threshold is ignored).

``--detect_faces`` (needs the ``detect`` extra, ``pip install -e .[detect]``, i.e. OpenCV) treats
inputs as whole photos: OpenCV's Haar frontal-face cascade finds the faces, each face box is grown to
a square crop around its centre like the dataset builder (``voc.square_crop_box`` with margin
``face_mask_detection.DEFAULT_MARGIN``), classified, and an annotated copy of the photo is written to
``--out_dir`` (green box: with_mask, red: without_mask, orange: other classes; label and probability
above each box). A photo without a detected face is reported, not an error. The Haar cascade was
trained on unmasked frontal faces, so it misses many masked or turned faces.

Exit status: 0 when every input was classified, 1 when any input failed (each failure is reported
and the other inputs are still classified), 2 for usage errors (bad flags, not a training workdir,
OpenCV missing, inputs that are only folders without image files).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from vaeaug.data import images as image_io
from vaeaug.data import pipeline

__all__ = [
  "DetectUnavailableError",
  "Predictor",
  "detect_and_classify",
  "detect_faces",
  "expand_inputs",
  "failed",
  "format_text",
  "define_flags",
  "load_predictor",
  "predict_files",
  "resolve_threshold",
  "run",
]

DETECT_INSTALL_HINT = "pip install -e .[detect]  (or: pip install 'opencv-python-headless<5')"
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
BOX_COLOURS = {"with_mask": (0, 200, 0), "without_mask": (230, 0, 0)}
OTHER_COLOUR = (255, 140, 0)


class DetectUnavailableError(ImportError):
  """Face detection cannot run: OpenCV (the ``detect`` extra) is missing, or it has no Haar
  frontal-face cascade (OpenCV 5 wheels dropped them)."""


# ----------------------------------------------------------------------------- model


@dataclasses.dataclass
class Predictor:
  """A restored classifier: ``probabilities(images_uint8) -> (N, C)`` for resized uint8 images."""

  workdir: Path
  config: object
  state: object
  class_names: tuple[str, ...]
  threshold: float
  batch_size: int = 64

  @property
  def image_size(self) -> int:
    return int(self.config.image_size)

  @functools.cached_property
  def _eval_fn(self):
    import jax  # noqa: PLC0415

    from classifiers import train  # noqa: PLC0415

    return jax.jit(functools.partial(train.eval_step, normalization=self.config.normalization))

  def probabilities(self, images_uint8: np.ndarray) -> np.ndarray:
    """(N, C) float64 class probabilities of uint8 (N, S, S, 3) images at the model's size, in
    batches of ``batch_size`` (the last one padded, so one compilation serves every batch)."""
    images = np.asarray(images_uint8)
    size = self.image_size
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
      raise ValueError(f"expected uint8 images (N, {size}, {size}, 3), got {images.dtype} {images.shape}")
    n = len(images)
    if n == 0:
      return np.zeros((0, len(self.class_names)))
    batch = max(1, min(int(self.batch_size), n))
    outputs = []
    for start in range(0, n, batch):
      chunk = images[start : start + batch]
      count = len(chunk)
      if count < batch:
        chunk = np.concatenate([chunk, np.zeros((batch - count, *chunk.shape[1:]), np.uint8)])
      outputs.append(np.asarray(self._eval_fn(self.state, chunk), np.float64)[:count])
    return np.concatenate(outputs)

  def labels_of(self, probabilities: np.ndarray) -> np.ndarray:
    """Predicted class indices: binary ``p1 >= threshold``, else argmax."""
    p = np.asarray(probabilities)
    if p.shape[1] == 2:
      return (p[:, 1] >= self.threshold).astype(np.int64)
    return np.argmax(p, axis=1).astype(np.int64)

  def prepare(self, image: np.ndarray) -> np.ndarray:
    """One decoded uint8 RGB image of any size -> the model's input size (like the datasets)."""
    return pipeline.resize_image(image, self.image_size)

  def result(self, file: str, probabilities: np.ndarray) -> dict:
    label = int(self.labels_of(probabilities[None])[0])
    return {
      "file": file,
      "label": self.class_names[label],
      "probability": float(probabilities[label]),
      "probabilities": {name: float(p) for name, p in zip(self.class_names, probabilities)},
    }


def resolve_threshold(workdir: str | os.PathLike, threshold: str | float, num_classes: int) -> float:
  """The binary decision threshold: a number in [0, 1], or ``"auto"`` = ``threshold`` of
  ``workdir/test_metrics.json`` when present (binary models), else 0.5."""
  if isinstance(threshold, str) and threshold.strip().lower() == "auto":
    path = Path(workdir) / "test_metrics.json"
    if num_classes == 2 and path.is_file():
      value = json.loads(path.read_text()).get("threshold")
      if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return 0.5
  try:
    value = float(threshold)
  except (TypeError, ValueError):
    raise ValueError(f"threshold must be 'auto' or a number in [0, 1], got {threshold!r}") from None
  if not (math.isfinite(value) and 0.0 <= value <= 1.0):
    raise ValueError(f"threshold must be 'auto' or a number in [0, 1], got {threshold!r}")
  return value


def load_predictor(workdir: str | os.PathLike, *, threshold: str | float = "auto", batch_size: int = 64) -> Predictor:
  """Restore the best-on-validation classifier of a training workdir (``train.restore_best``)."""
  from classifiers import train  # noqa: PLC0415  (JAX: imported only when a model is loaded)

  if int(batch_size) < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  config, state, class_names = train.restore_best(workdir)
  return Predictor(
    workdir=Path(workdir),
    config=config,
    state=state,
    class_names=tuple(class_names),
    threshold=resolve_threshold(workdir, threshold, len(class_names)),
    batch_size=int(batch_size),
  )


def _predictor(model: Predictor | str | os.PathLike, threshold, batch_size) -> Predictor:
  if isinstance(model, Predictor):
    return model
  return load_predictor(model, threshold=threshold, batch_size=batch_size)


# ----------------------------------------------------------------------------- inputs


def expand_inputs(paths: Iterable[str | os.PathLike]) -> list[tuple[str, str | None, str | None]]:
  """Inputs -> ``(path, skip_reason, folder_problem)`` entries, in order.

  A folder becomes its image files (``list_images``) followed by its skipped entries (with
  their reason); a folder that cannot be listed is one entry with its ``BadInputError`` problem.
  Anything else is passed through as a file (decoding decides whether it is an image).
  """
  entries: list[tuple[str, str | None, str | None]] = []
  for raw in paths:
    path = os.fspath(raw)
    if os.path.isdir(path):
      try:
        found, skipped = image_io.list_images(path)
      except image_io.BadInputError as error:
        entries.append((path, None, error.problem))
        continue
      entries += [(str(p), None, None) for p in found]
      entries += [(str(p), reason, None) for p, reason in skipped]
    else:
      entries.append((path, None, None))
  return entries


def _error(file: str, problem: str, detail: str = "") -> dict:
  return {"file": file, "label": None, "probability": None, "probabilities": None, "error": problem, "detail": detail}


def _skipped(file: str, reason: str) -> dict:
  return {"file": file, "label": None, "probability": None, "probabilities": None, "skipped": reason}


def predict_files(
  model: Predictor | str | os.PathLike,
  paths: Sequence[str | os.PathLike],
  *,
  threshold: str | float = "auto",
  batch_size: int = 64,
) -> list[dict]:
  """Classify image files (folders expanded, see :func:`expand_inputs`) with a training workdir's
  model (or a loaded :class:`Predictor`, whose own threshold and batch size then apply).

  Returns one dict per entry, in input order: ``{"file", "label", "probability",
  "probabilities": {class: p}}`` (``probability`` = that of the predicted label); for an unreadable
  file ``label``/``probability``/``probabilities`` are None, ``"error"`` holds the
  ``BadInputError`` problem and ``"detail"`` more; skipped folder entries carry ``"skipped"``.
  """
  predictor = _predictor(model, threshold, batch_size)
  results: list[dict | None] = []
  pending: list[tuple[int, str, np.ndarray]] = []  # (index in results, file, resized image)
  for path, skip, folder_problem in expand_inputs(paths):
    if folder_problem is not None:
      results.append(_error(path, folder_problem))
    elif skip is not None:
      results.append(_skipped(path, skip))
    else:
      try:
        image = image_io.load_rgb(path)
      except image_io.BadInputError as error:
        results.append(_error(path, error.problem, error.detail))
        continue
      pending.append((len(results), path, predictor.prepare(image)))
      results.append(None)
  if pending:
    probabilities = predictor.probabilities(np.stack([image for _, _, image in pending]))
    for (index, path, _), p in zip(pending, probabilities):
      results[index] = predictor.result(path, p)
  return results


# ----------------------------------------------------------------------------- face detection


def _import_cv2():
  try:
    import cv2  # noqa: PLC0415
  except ImportError as error:
    raise DetectUnavailableError(
      f"face detection (--detect_faces) needs OpenCV, the 'detect' extra: {DETECT_INSTALL_HINT}"
    ) from error
  return cv2


@functools.cache
def _cascade():
  cv2 = _import_cv2()
  haar_dir = getattr(getattr(cv2, "data", None), "haarcascades", None)
  path = os.path.join(haar_dir, HAAR_CASCADE) if haar_dir else None
  if not hasattr(cv2, "CascadeClassifier") or path is None or not os.path.isfile(path):
    # OpenCV 5 moved the Haar cascades out of the main package (and its wheels no longer ship them).
    raise DetectUnavailableError(
      f"OpenCV {getattr(cv2, '__version__', '?')} has no Haar cascade classifier / "
      f"{HAAR_CASCADE} (OpenCV 5 dropped them): {DETECT_INSTALL_HINT}"
    )
  cascade = cv2.CascadeClassifier(path)
  if cascade.empty():
    raise DetectUnavailableError(f"OpenCV could not load its Haar cascade {path}: {DETECT_INSTALL_HINT}")
  return cascade


def detect_faces(
  image_rgb: np.ndarray, *, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 20
) -> list[tuple[int, int, int, int]]:
  """Face boxes ``(xmin, ymin, xmax, ymax)`` (exclusive max, pixel edges) found by OpenCV's Haar
  frontal-face cascade in a uint8 RGB photo (grey, histogram-equalised), top to bottom then left
  to right. Needs OpenCV (:class:`DetectUnavailableError` otherwise)."""
  cv2 = _import_cv2()
  image = np.ascontiguousarray(np.asarray(image_rgb, np.uint8))
  grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
  found = _cascade().detectMultiScale(
    grey, scaleFactor=scale_factor, minNeighbors=min_neighbors, minSize=(min_size, min_size)
  )
  boxes = [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h in np.asarray(found).reshape(-1, 4)]
  return sorted(boxes, key=lambda b: (b[1], b[0]))


def _annotate(image: np.ndarray, faces: list[dict], class_names: Sequence[str]) -> np.ndarray:
  from PIL import Image, ImageDraw, ImageFont  # noqa: PLC0415

  picture = Image.fromarray(image)
  draw = ImageDraw.Draw(picture)
  height, width = image.shape[:2]
  line = max(2, round(min(width, height) / 200))
  font_size = max(12, round(min(width, height) / 40))
  try:
    font = ImageFont.load_default(size=font_size)
  except TypeError:  # Pillow < 10.1
    font = ImageFont.load_default()
  for face in faces:
    x0, y0, x1, y1 = face["box"]
    colour = BOX_COLOURS.get(face["label"], OTHER_COLOUR)
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=line)
    text = f"{face['label']} {face['probability']:.2f}"
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    text_w, text_h = right - left, bottom - top
    ty = y0 - text_h - 2 * line if y0 - text_h - 2 * line >= 0 else y1 + line
    draw.rectangle((x0, ty, x0 + text_w + 2 * line, ty + text_h + 2 * line), fill=colour)
    draw.text((x0 + line - left, ty + line - top), text, fill=(255, 255, 255), font=font)
  return np.asarray(picture)


def _annotated_path(out_dir: Path, source: str, used: set[Path]) -> Path:
  stem = Path(source).stem or "image"
  candidate = out_dir / f"{stem}_faces.png"
  counter = 1
  while candidate in used or candidate.resolve() == Path(source).resolve():
    candidate = out_dir / f"{stem}_faces_{counter}.png"
    counter += 1
  used.add(candidate)
  return candidate


def detect_and_classify(
  model: Predictor | str | os.PathLike,
  paths: Sequence[str | os.PathLike],
  out_dir: str | os.PathLike,
  *,
  threshold: str | float = "auto",
  batch_size: int = 64,
  margin: float | None = None,
  scale_factor: float = 1.1,
  min_neighbors: int = 5,
  min_size: int = 20,
) -> list[dict]:
  """Find faces in photos (folders expanded), classify each face crop, write annotated copies.

  Each detected box becomes a square crop around its centre, ``voc.square_crop_box(box, w, h,
  margin)`` with the dataset builder's margin (default ``face_mask_detection.DEFAULT_MARGIN``),
  resized like the datasets and classified. Returns one dict per entry: ``{"file", "faces":
  [{"box", "crop_box", "label", "probability", "probabilities"}], "num_faces", "annotated":
  path of the annotated PNG in out_dir}``, or the ``error`` / ``skipped`` entries of
  :func:`predict_files`. Zero faces is not an error (``num_faces`` 0, annotated copy still written).
  Raises :class:`DetectUnavailableError` without OpenCV (before loading the model).
  """
  from vaeaug.data import face_mask_detection, voc  # noqa: PLC0415

  _import_cv2()
  _cascade()
  margin = face_mask_detection.DEFAULT_MARGIN if margin is None else float(margin)
  predictor = _predictor(model, threshold, batch_size)
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  used: set[Path] = set()
  results = []
  for path, skip, folder_problem in expand_inputs(paths):
    if folder_problem is not None:
      results.append(_error(path, folder_problem))
      continue
    if skip is not None:
      results.append(_skipped(path, skip))
      continue
    try:
      photo = image_io.load_rgb(path)
    except image_io.BadInputError as error:
      results.append(_error(path, error.problem, error.detail))
      continue
    height, width = photo.shape[:2]
    boxes = detect_faces(photo, scale_factor=scale_factor, min_neighbors=min_neighbors, min_size=min_size)
    faces = []
    if boxes:
      crop_boxes = [voc.square_crop_box(box, width, height, margin) for box in boxes]
      crops = np.stack([predictor.prepare(photo[y0:y1, x0:x1]) for x0, y0, x1, y1 in crop_boxes])
      for box, crop_box, p in zip(boxes, crop_boxes, predictor.probabilities(crops)):
        face = predictor.result(path, p)
        del face["file"]
        faces.append({"box": list(box), "crop_box": list(crop_box), **face})
    annotated = _annotated_path(out_dir, path, used)
    _write_png(_annotate(photo, faces, predictor.class_names), annotated)
    results.append({"file": path, "num_faces": len(faces), "faces": faces, "annotated": str(annotated)})
  return results


def _write_png(image: np.ndarray, path: Path) -> None:
  path.write_bytes(image_io.encode_png(image))


# ----------------------------------------------------------------------------- command line


def failed(results: Iterable[dict]) -> bool:
  """Whether any entry is an error (skipped folder entries are not failures)."""
  return any("error" in r for r in results)


def format_text(results: Sequence[dict], out=None, err=None) -> None:
  """Print results as text lines (see the module docstring) to ``out`` / ``err`` (default: the
  current ``sys.stdout`` / ``sys.stderr``)."""
  out = sys.stdout if out is None else out
  err = sys.stderr if err is None else err
  counts = {"classified": 0, "failed": 0, "skipped": 0}
  for r in results:
    if "error" in r:
      counts["failed"] += 1
      detail = f" ({r['detail']})" if r.get("detail") else ""
      print(f"error: {r['file']}: {r['error']}{detail}", file=err)
    elif "skipped" in r:
      counts["skipped"] += 1
      print(f"skipped: {r['file']}: {r['skipped']}", file=err)
    elif "faces" in r:
      counts["classified"] += 1
      for i, face in enumerate(r["faces"]):
        box = ",".join(str(v) for v in face["box"])
        print(f"{r['file']}#{i}  {face['label']}  {face['probability']:.4f}  box={box}", file=out)
      found = f"{r['num_faces']} face(s)" if r["num_faces"] else "0 faces (none detected)"
      print(f"{r['file']}  {found}  annotated: {r['annotated']}", file=out)
    else:
      counts["classified"] += 1
      print(f"{r['file']}  {r['label']}  {r['probability']:.4f}", file=out)
  print(f"{counts['classified']} classified, {counts['failed']} failed, {counts['skipped']} skipped", file=err)


def _skipped_when_no_images(inputs: Sequence[str]) -> int | None:
  """When every input is a readable folder holding no image file (nothing to classify: most likely a
  wrong path, so a usage error), how many of their entries were skipped; else None."""
  entries = expand_inputs(inputs)
  if any(skip is None for _, skip, _ in entries):  # a file to read, or a folder that could not be listed
    return None
  return len(entries)


def run(flag_values, extra_inputs: Sequence[str] = ()) -> int:
  """The command: classify ``--inputs`` (plus ``extra_inputs``) as the parsed ``flag_values``
  (an absl ``FlagValues`` with the flags of :func:`define_flags`) say; prints the results and
  returns the exit status (0 all classified, 1 some input failed, 2 usage error)."""
  inputs = list(flag_values.inputs or []) + [str(p) for p in extra_inputs]
  if not inputs:
    print("error: no inputs (--inputs=PATH[,PATH...])", file=sys.stderr)
    return 2
  if flag_values.detect_faces and not flag_values.out_dir:
    print("error: --detect_faces needs --out_dir for the annotated photos", file=sys.stderr)
    return 2
  skipped = _skipped_when_no_images(inputs)
  if skipped is not None:
    others = f" ({skipped} other entries skipped)" if skipped else ""
    print(f"error: no image files found in {', '.join(inputs)}{others}", file=sys.stderr)
    return 2
  try:
    if flag_values.detect_faces:
      _cascade()  # fail fast, before loading the model
    predictor = load_predictor(
      flag_values.checkpoint, threshold=flag_values.threshold, batch_size=flag_values.batch_size
    )
  except (DetectUnavailableError, FileNotFoundError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  if str(flag_values.threshold).strip().lower() != "auto" and len(predictor.class_names) != 2:
    print("note: --threshold is ignored for models with more than two classes (argmax)", file=sys.stderr)
  if flag_values.detect_faces:
    results = detect_and_classify(predictor, inputs, flag_values.out_dir)
  else:
    results = predict_files(predictor, inputs)
  if flag_values.json:
    print(json.dumps(results, indent=1))
  else:
    format_text(results)
  return 1 if failed(results) else 0


def main(argv):
  from absl import flags  # noqa: PLC0415
  from absl import logging as absl_logging  # noqa: PLC0415

  if not flags.FLAGS["verbosity"].present:  # checkpoint-restore chatter off unless -v/--verbosity is given
    absl_logging.set_verbosity(absl_logging.ERROR)
  return run(flags.FLAGS, argv[1:])


def define_flags(flag_values=None):
  """Define the command's flags on ``flag_values`` (default: absl's global ``FLAGS``)."""
  from absl import flags  # noqa: PLC0415

  fv = flags.FLAGS if flag_values is None else flag_values
  flags.DEFINE_string(
    "checkpoint", None, "Classifier training workdir (config.json, checkpoints/).", required=True, flag_values=fv
  )
  flags.DEFINE_list(
    "inputs", [], "Image files and folders, comma-separated (more may follow as arguments).", flag_values=fv
  )
  flags.DEFINE_bool("json", False, "Print one JSON document (a list of per-input results).", flag_values=fv)
  flags.DEFINE_integer("batch_size", 64, "Images per model call.", lower_bound=1, flag_values=fv)
  flags.DEFINE_string(
    "threshold",
    "auto",
    "Binary decision threshold on p(class 1): auto (the run's "
    "validation-chosen threshold from test_metrics.json, else 0.5) or a number in [0, 1].",
    flag_values=fv,
  )
  flags.DEFINE_bool(
    "detect_faces",
    False,
    "Inputs are photos: detect faces with OpenCV (pip install -e "
    ".[detect]), classify each and write annotated copies to --out_dir.",
    flag_values=fv,
  )
  flags.DEFINE_string("out_dir", None, "Folder for annotated photos (--detect_faces).", flag_values=fv)
  return fv


def _parse_flags(argv):
  """absl's flag parsing, but a bad command line exits with 2 (usage error), not 1 (which here
  means an input failed)."""
  from absl import flags  # noqa: PLC0415

  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    print(f"FATAL Flags parsing error: {error}\nPass --helpshort or --helpfull to see help on flags.", file=sys.stderr)
    sys.exit(2)
  except SystemExit as done:  # absl exits 1 after printing the help that was asked for
    from vaeaug import cli as cli_lib  # noqa: PLC0415

    if done.code == 1 and cli_lib.asked_for_help(argv):
      sys.exit(0)
    raise


def cli():
  """The `vaeaug-predict` console script (`run` is the command on already parsed flags)."""
  from vaeaug import cli as cli_lib  # noqa: PLC0415

  define_flags()
  cli_lib.run(main, __name__, flags_parser=_parse_flags)


if __name__ == "__main__":
  cli()
