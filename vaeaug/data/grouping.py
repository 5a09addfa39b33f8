"""Duplicate and near-duplicate groups, and deterministic leak-free splits.

The public face-mask datasets leak: the same photo appears re-encoded or resized, mirrored
(`augmented_image_*`), augmented (`Augmented_<N>_*` in the 12K set) or with a mask pasted on
(the observations set). Any such pair must land in one split, so the builders link images into
groups and assign whole groups to splits. The audit (`vaeaug.data.audit`) reuses
`find_duplicate_pairs` to count pairs that cross the splits of a built dataset.

Near-duplicate method (measured on the shipped data, see `scripts/audit_data.py`):

1. Exact duplicates: equal SHA-256 of the decoded pixels (and shape).
2. Candidates: a 128-bit difference hash (dHash, 8x9 horizontal + 9x8 vertical gradients of a
   box-filtered grayscale thumbnail) is computed for each image, its mirror image, and its top
   part. Pairs within `hash_candidate_bits` (24 of 128) Hamming distance become candidates; this
   is only a cheap filter, the decision is step 3.
3. Verification: the mean absolute difference (MAD) between 24x24 grayscale thumbnails, each
   standardised to zero mean and unit variance (so brightness/contrast changes and JPEG
   re-encoding do not matter), must be <= `near_mad` (0.20). On the 12K set, pairs below 0.2
   are re-encodes and resizes of one photo, while different CelebA faces start at about 0.25.
   Mirrored pairs compare against the mirrored thumbnail with the same threshold.
4. Masked-from-unmasked: a face with a pasted mask differs from its source only below the eyes,
   so the top `top_fraction` (45%) of the two images is compared with threshold `masked_mad`
   (0.25). This rule only links images of *different* labels: applied within a class it would
   chain look-alike aligned faces into giant groups.
5. Aligned (re-crops, re-scalings, colour shifts, photo bursts): steps 2-3 compare whole images
   in place, so a photo cropped 10% tighter, or shot again a second later, fails them.
   Candidates: the dHash pairs of step 2 plus pairs whose centre crop (`crop_fraction` of the
   side) hashes close to the other's whole image, kept when the plain or crop thumbnail MAD is
   at most `aligned_prefilter_mad`; and each image with its `signature_neighbours` nearest
   images by a Fourier-Mellin signature (amplitude spectrum, log-polar, amplitude along
   log-radius: little changed by shifts and scale). Verification, only between images the other
   rules left in different groups: the central `aligned_inner` of one image's *detail*
   (grayscale at `detail_size` px minus its Gaussian blur: edges and texture, without lighting
   and colour) is searched at every position and at scales between 1/`aligned_max_scale` and
   `aligned_max_scale` in the other's detail, the template taken from the image with the smaller
   pixel hash (so the order of the pair does not matter; coarse to fine: half size first,
   `aligned_coarse_ncc` to go on); the best normalised cross-correlation (OpenCV's
   `TM_CCOEFF_NORMED`) must reach `aligned_ncc`, and the blurred chroma (Cr, Cb) of the aligned
   regions must correlate at `aligned_chroma` or more. Aligned faces of different people (CelebA)
   agree in their coarse layout and shading, which is why edges and colour layout are compared
   and not the plain thumbnail. The two thresholds are chosen by `vaeaug-audit --calibrate`
   (`vaeaug.data.calibration`); whole photos use `PHOTO_PARAMS`.
6. Name rules given by the builder (e.g. `Augmented_<N>_*` of one source photo in the 12K set)
   and photo ids (all faces cropped from one photo) link images directly.

Blank images (grayscale std < `blank_std`, e.g. the all-black files in the 12K set) are not
linked by content: they carry no identity, and linking them would chain unrelated photos into one
group. Name rules still apply to them.

Groups are the connected components of all links. A group's id is derived from its members'
pixel hashes and its split from a hash of that id, so splits do not depend on file order, file
names or the machine, and adding an unrelated image does not move any other group.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from vaeaug.data import images as image_io

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class NearDuplicateParams:
  hash_candidate_bits: int = 24
  near_mad: float = 0.20
  masked_mad: float = 0.25
  top_fraction: float = 0.45
  thumb_size: int = 24
  blank_std: float = 2.0
  # Aligned signal (rule 5). Candidates:
  crop_fraction: float = 0.8
  aligned_prefilter_mad: float = 0.40
  signature_size: int = 48
  signature_neighbours: int = 1
  # Verification:
  detail_size: int = 48
  detail_sigma: float = 3.0
  chroma_sigma: float = 0.75
  aligned_inner: float = 0.75
  aligned_scales: int = 15
  aligned_coarse_scales: int = 6
  aligned_max_scale: float = 1.4
  aligned_coarse_ncc: float = 0.60
  # Chosen by `vaeaug-audit --calibrate` (vaeaug.data.calibration) on the 12K set.
  aligned_ncc: float = 0.77
  aligned_chroma: float = 0.55


DEFAULT_PARAMS = NearDuplicateParams()
# Aligned candidates verified per round (see `find_duplicate_pairs`).
ALIGNED_CHUNK = 1024
# Whole photos (the detection dataset's, before its faces are cropped): photos of one burst or
# one session differ by more than a re-crop (the person moves), and colour layout does not tell
# them from other photos, so the aligned check links at a lower NCC, without the chroma test,
# and looks at more signature neighbours (photos are few). Set on the shipped photos: see the
# README's leak audit section.
PHOTO_PARAMS = dataclasses.replace(
  DEFAULT_PARAMS,
  aligned_prefilter_mad=0.6,
  aligned_coarse_ncc=0.5,
  aligned_ncc=0.6,
  aligned_chroma=-1.0,
  signature_neighbours=5,
)

# Link kinds, in the order a pair is reported when several apply.
EXACT, NEAR, MIRROR, MASKED, ALIGNED, NAME = "exact", "near", "mirror", "masked-from-unmasked", "aligned", "same-source"
KINDS = (EXACT, NEAR, MIRROR, MASKED, ALIGNED, NAME)


def _gray(image: np.ndarray) -> np.ndarray:
  image = image.astype(np.float32)
  return image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114


def _resize(gray: np.ndarray, width: int, height: int) -> np.ndarray:
  return np.asarray(
    Image.fromarray(np.ascontiguousarray(gray, np.float32)).resize((width, height), Image.BOX), np.float32
  )


def _dhash(gray: np.ndarray) -> np.ndarray:
  horizontal = _resize(gray, 9, 8)
  vertical = _resize(gray, 8, 9)
  bits = np.concatenate(
    [(horizontal[:, 1:] > horizontal[:, :-1]).ravel(), (vertical[1:, :] > vertical[:-1, :]).ravel()]
  )
  return np.packbits(bits)


def _thumb(gray: np.ndarray, size: int) -> np.ndarray:
  thumb = _resize(gray, size, size)
  return (thumb - thumb.mean()) / (thumb.std() + 1e-3)


def _centre(gray: np.ndarray, fraction: float) -> np.ndarray:
  height, width = gray.shape[:2]
  top, left = int(round(height * (1 - fraction) / 2)), int(round(width * (1 - fraction) / 2))
  return gray[top : max(top + 1, height - top), left : max(left + 1, width - left)]


def _resample(image: np.ndarray, width: int, height: int) -> np.ndarray:
  # Area averaging to shrink; linear to enlarge (area would repeat pixels, and the detail image
  # would then see the block edges of every small face).
  shrinking = width <= image.shape[1] and height <= image.shape[0]
  return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _chroma(image: np.ndarray, size: int, sigma: float) -> np.ndarray:
  """Blurred Cr and Cb channels at size x size."""
  square = cv2.GaussianBlur(_resample(np.ascontiguousarray(image, np.float32) / 255.0, size, size), (0, 0), sigma)
  return cv2.cvtColor(square, cv2.COLOR_RGB2YCrCb)[..., 1:]


@functools.lru_cache(maxsize=4)
def _hann(size: int) -> np.ndarray:
  return np.outer(np.hanning(size), np.hanning(size)).astype(np.float32)


def _signature(gray: np.ndarray, size: int) -> np.ndarray:
  """A Fourier-Mellin signature: the amplitude spectrum does not move when the picture shifts, a
  change of scale shifts it along the log-radius of its log-polar resampling, and the amplitude of
  a Fourier transform along that axis does not move with that shift. Crops change it gradually."""
  square = _resample(np.ascontiguousarray(gray, np.float32), size, size)
  transform = cv2.dft((square - square.mean()) * _hann(size), flags=cv2.DFT_COMPLEX_OUTPUT)
  spectrum = np.log1p(np.fft.fftshift(cv2.magnitude(transform[..., 0], transform[..., 1])))
  centre = size / 2
  polar = cv2.warpPolar(spectrum, (24, 32), (centre, centre), centre, cv2.WARP_POLAR_LOG + cv2.INTER_LINEAR)
  # Rows are angles (the spectrum is point-symmetric: half suffice), columns log-radius without
  # the radii nearest DC.
  signature = np.abs(np.fft.rfft(polar[:16, 2:], axis=1))[:, :8].ravel()
  signature = signature - signature.mean()
  return (signature / (np.linalg.norm(signature) + 1e-9)).astype(np.float32)


def _detail(gray: np.ndarray, size: int, sigma: float) -> np.ndarray:
  """Grayscale at size x size minus its blur: edges and texture, without lighting and colour."""
  square = _resample(np.ascontiguousarray(gray, np.float32), size, size)
  return square - cv2.GaussianBlur(square, (0, 0), sigma)


@dataclasses.dataclass(frozen=True)
class Fingerprints:
  """Per-image hashes and thumbnails used to find duplicates (arrays indexed like the images)."""

  sha: tuple[str, ...]
  hashes: np.ndarray  # (n, 16) uint8 packed dHash of the image
  mirror_hashes: np.ndarray  # of the horizontally mirrored image
  top_hashes: np.ndarray  # of the top part (eyes and forehead)
  thumbs: np.ndarray  # (n, s, s) standardised grayscale thumbnails
  top_thumbs: np.ndarray
  informative: np.ndarray  # (n,) bool: False for blank (near-constant) images
  crop_hashes: np.ndarray  # of the centre crop (`crop_fraction`)
  crop_thumbs: np.ndarray  # (n, s, s) of the centre crop
  details: np.ndarray  # (n, d, d) detail images for the aligned signal
  coarse_details: np.ndarray  # (n, d/2, d/2) the same at half the size
  chroma: np.ndarray  # (n, d/2, d/2, 2) blurred Cr and Cb
  signatures: np.ndarray  # (n, 128) unit-norm shift- and scale-tolerant signatures

  def __len__(self) -> int:
    return len(self.sha)

  def take(self, index: Sequence[int]) -> Fingerprints:
    """The fingerprints of the images at `index`, in that order."""
    index = np.asarray(index, np.int64)
    arrays = {field.name: getattr(self, field.name)[index] for field in dataclasses.fields(self) if field.name != "sha"}
    return Fingerprints(sha=tuple(self.sha[i] for i in index.tolist()), **arrays)


def fingerprint(images: Sequence[np.ndarray], params: NearDuplicateParams = DEFAULT_PARAMS) -> Fingerprints:
  columns = {
    name: []
    for name in (
      "sha", "hashes", "mirror_hashes", "top_hashes", "thumbs", "top_thumbs", "informative", "crop_hashes",
      "crop_thumbs", "details", "coarse_details", "chroma", "signatures",
    )
  }  # fmt: skip
  for image in images:
    gray = _gray(image)
    top = gray[: max(1, int(round(gray.shape[0] * params.top_fraction)))]
    crop = _centre(gray, params.crop_fraction)
    row = dict(
      sha=image_io.sha256_of_pixels(image),
      hashes=_dhash(gray),
      mirror_hashes=_dhash(gray[:, ::-1]),
      top_hashes=_dhash(top),
      thumbs=_thumb(gray, params.thumb_size),
      top_thumbs=_thumb(top, params.thumb_size),
      informative=float(gray.std()) >= params.blank_std,
      crop_hashes=_dhash(crop),
      crop_thumbs=_thumb(crop, params.thumb_size),
      details=_detail(gray, params.detail_size, params.detail_sigma),
      coarse_details=_detail(gray, params.detail_size // 2, params.detail_sigma / 2),
      chroma=_chroma(image, params.detail_size // 2, params.chroma_sigma),
      signatures=_signature(gray, params.signature_size),
    )
    for name, value in row.items():
      columns[name].append(value)
  size, detail, n = params.thumb_size, params.detail_size, len(columns["sha"])
  as_array = lambda name, shape, dtype: np.asarray(columns[name], dtype).reshape((n,) + shape)
  return Fingerprints(
    sha=tuple(columns["sha"]),
    hashes=as_array("hashes", (16,), np.uint8),
    mirror_hashes=as_array("mirror_hashes", (16,), np.uint8),
    top_hashes=as_array("top_hashes", (16,), np.uint8),
    thumbs=as_array("thumbs", (size, size), np.float32),
    top_thumbs=as_array("top_thumbs", (size, size), np.float32),
    informative=as_array("informative", (), bool),
    crop_hashes=as_array("crop_hashes", (16,), np.uint8),
    crop_thumbs=as_array("crop_thumbs", (size, size), np.float32),
    details=as_array("details", (detail, detail), np.float32),
    coarse_details=as_array("coarse_details", (detail // 2, detail // 2), np.float32),
    chroma=as_array("chroma", (detail // 2, detail // 2, 2), np.float32),
    signatures=as_array("signatures", (128,), np.float32),
  )


def _hash_candidates(a: np.ndarray, b: np.ndarray, max_bits: int, chunk: int = 2048):
  """Index pairs (i, j), i < j, whose packed hashes a[i], b[j] differ in <= max_bits bits."""
  a_words = np.ascontiguousarray(a).view(np.uint64)  # 16 bytes -> 2 words: 2 popcounts per pair
  b_words = np.ascontiguousarray(b).view(np.uint64)
  rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
  for start in range(0, len(a_words), chunk):
    block = a_words[start : start + chunk]
    distance = np.bitwise_count(block[:, None, 0] ^ b_words[None, :, 0]).astype(np.int32)
    for word in range(1, a_words.shape[1]):
      distance += np.bitwise_count(block[:, None, word] ^ b_words[None, :, word])
    i, j = np.nonzero(distance <= max_bits)
    i = i + start
    keep = i < j
    rows.append(i[keep])
    cols.append(j[keep])
  return np.concatenate(rows), np.concatenate(cols)


def _mad(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return np.abs(a - b).mean(axis=(1, 2))


def _bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Row-wise Hamming distance of packed hashes."""
  return np.bitwise_count(a ^ b).sum(axis=1, dtype=np.int64)


def _unique_pairs(*index_pairs) -> tuple[np.ndarray, np.ndarray]:
  i = np.concatenate([pair[0] for pair in index_pairs]).astype(np.int64)
  j = np.concatenate([pair[1] for pair in index_pairs]).astype(np.int64)
  low, high = np.minimum(i, j), np.maximum(i, j)
  keys = np.unique(np.stack([low, high], 1), axis=0) if len(low) else np.zeros((0, 2), np.int64)
  return keys[:, 0], keys[:, 1]


def _aligned_candidates(fingerprints: Fingerprints, params: NearDuplicateParams):
  """Pairs for the aligned check: whole images or one's centre crop against the other within the
  dHash distance, then plain or crop thumbnail MAD at most `aligned_prefilter_mad`."""
  bits = params.hash_candidate_bits
  i, j = _unique_pairs(
    _hash_candidates(fingerprints.hashes, fingerprints.hashes, bits),
    _hash_candidates(fingerprints.crop_hashes, fingerprints.hashes, bits),
    _hash_candidates(fingerprints.hashes, fingerprints.crop_hashes, bits),
  )
  keep = _aligned_prefilter(fingerprints, i, j, params)
  ni, nj = _signature_neighbours(fingerprints.signatures, params.signature_neighbours)
  return _unique_pairs((i[keep], j[keep]), (ni, nj))


def _signature_neighbours(signatures: np.ndarray, k: int, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
  """Each image with its k most similar others by signature."""
  n = len(signatures)
  k = min(k, n - 1)
  if k <= 0:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  rows, cols = [], []
  for start in range(0, n, chunk):
    similarity = signatures[start : start + chunk] @ signatures.T
    similarity[np.arange(len(similarity)), np.arange(start, start + len(similarity))] = -np.inf
    nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    rows.append(np.repeat(np.arange(start, start + len(similarity)), k))
    cols.append(nearest.ravel())
  return np.concatenate(rows), np.concatenate(cols)


def _aligned_prefilter(fingerprints: Fingerprints, i: np.ndarray, j: np.ndarray, params: NearDuplicateParams):
  thumbs, crops = fingerprints.thumbs, fingerprints.crop_thumbs
  mad = np.full(len(i), np.inf, np.float32)
  for start in range(0, len(i), 8192):  # bounded memory for many candidates
    a, b = i[start : start + 8192], j[start : start + 8192]
    mad[start : start + 8192] = np.minimum.reduce(
      [_mad(thumbs[a], thumbs[b]), _mad(crops[a], thumbs[b]), _mad(thumbs[a], crops[b])]
    )
  return mad <= params.aligned_prefilter_mad


def aligned_candidate_keys(fingerprints: Fingerprints, params: NearDuplicateParams = DEFAULT_PARAMS) -> np.ndarray:
  """The aligned check's candidate pairs of these images, as sorted keys `low * n + high`."""
  i, j = _aligned_candidates(fingerprints, params)
  return np.sort(i * len(fingerprints) + j)


def _is_aligned_candidate(fingerprints: Fingerprints, i, j, params: NearDuplicateParams, keys=None) -> np.ndarray:
  """Whether each pair is among `_aligned_candidates` (`keys` from `aligned_candidate_keys`, computed
  when not given: the signature neighbours depend on every image)."""
  keys = aligned_candidate_keys(fingerprints, params) if keys is None else keys
  i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
  return np.isin(np.minimum(i, j) * len(fingerprints) + np.maximum(i, j), keys)


def _scales(params: NearDuplicateParams, count: int) -> np.ndarray:
  return np.geomspace(1 / params.aligned_max_scale, params.aligned_max_scale, count)


@dataclasses.dataclass(frozen=True)
class _Alignment:
  score: float  # normalised cross-correlation of the detail images
  reverse: bool  # the template came from the second image
  scale: float
  y: int  # the template's top-left corner in the other image
  x: int
  side: int  # the rescaled template's side


def _best_alignment(first, second, inner: float, scales, directions=(False, True)) -> _Alignment:
  """Best normalised cross-correlation of the central `inner` of one detail image, rescaled, at
  any position in the other (each way round in `directions`)."""
  size = first.shape[0]
  best = _Alignment(-1.0, False, 1.0, 0, 0, 0)
  for reverse in directions:
    source, target = (second, first) if reverse else (first, second)
    template = _centre(source, inner)
    for scale in scales:
      side = int(round(template.shape[0] * scale))
      if side > size or side < 4:
        continue
      scores = cv2.matchTemplate(target, _resample(template, side, side), cv2.TM_CCOEFF_NORMED)
      _, top, _, (x, y) = cv2.minMaxLoc(scores)
      if top > best.score:
        best = _Alignment(float(top), reverse, float(scale), int(y), int(x), side)
  return best


def _chroma_agreement(first, second, alignment: _Alignment, inner: float, detail_size: int) -> float:
  """Mean per-channel correlation of the two images' chroma (Cr, Cb) over the aligned region: a
  colour-shifted copy keeps its colour layout, a look-alike face of another person does not."""
  source, target = (second, first) if alignment.reverse else (first, second)
  factor = target.shape[0] / detail_size  # alignment in detail pixels; chroma is smaller
  side = max(2, int(round(alignment.side * factor)))
  y, x = int(round(alignment.y * factor)), int(round(alignment.x * factor))
  region = target[y : y + side, x : x + side]
  template = _resample(_centre(source, inner), region.shape[1], region.shape[0])
  agreement = []
  for channel in range(template.shape[-1]):
    u, v = template[..., channel].ravel(), region[..., channel].ravel()
    su, sv = u.std(), v.std()
    if su < 1e-3 or sv < 1e-3:  # a gray image: colour agrees only with another gray one
      agreement.append(float(su < 1e-3 and sv < 1e-3))
    else:
      agreement.append(float(((u - u.mean()) * (v - v.mean())).mean() / (su * sv)))
  return float(np.mean(agreement))


def aligned_similarity(
  fingerprints: Fingerprints, i: Sequence[int], j: Sequence[int], params: NearDuplicateParams = DEFAULT_PARAMS
) -> tuple[np.ndarray, np.ndarray]:
  """The aligned signal of each pair (i[k], j[k]): the best detail-image NCC over scales and
  positions, and the chroma agreement at that alignment.

  Coarse to fine: every scale at half the size; pairs reaching `aligned_coarse_ncc` there are
  refined at full size around the coarse scale. Pairs below keep their coarse score (and chroma
  0). One thread: the calls are small, and Python threads sharing them ran slower (GIL)."""
  i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
  coarse_scales = _scales(params, params.aligned_coarse_scales)
  fine_scales = _scales(params, params.aligned_scales)
  step = coarse_scales[1] / coarse_scales[0]
  fp, inner = fingerprints, params.aligned_inner

  def score(k: int) -> tuple[float, float]:
    # One way round, the template from the image with the smaller pixel hash: the result does not
    # depend on the pair's order, and a re-crop is found either way (scales go both ways).
    a, b = (i[k], j[k]) if fp.sha[i[k]] <= fp.sha[j[k]] else (j[k], i[k])
    coarse = _best_alignment(fp.coarse_details[a], fp.coarse_details[b], inner, coarse_scales, (False,))
    if coarse.score < params.aligned_coarse_ncc:
      return coarse.score, 0.0
    near = fine_scales[(fine_scales >= coarse.scale / step * 0.999) & (fine_scales <= coarse.scale * step * 1.001)]
    fine = _best_alignment(fp.details[a], fp.details[b], inner, near, (coarse.reverse,))
    return fine.score, _chroma_agreement(fp.chroma[a], fp.chroma[b], fine, inner, params.detail_size)

  results = [score(k) for k in range(len(i))]
  results = np.asarray(results, np.float32).reshape(len(i), 2)
  return results[:, 0], results[:, 1]


def _aligned(fingerprints: Fingerprints, i, j, params: NearDuplicateParams) -> np.ndarray:
  ncc, chroma = aligned_similarity(fingerprints, i, j, params)
  return (ncc >= params.aligned_ncc) & (chroma >= params.aligned_chroma)


def classify_pairs(
  fingerprints: Fingerprints,
  i: Sequence[int],
  j: Sequence[int],
  params: NearDuplicateParams = DEFAULT_PARAMS,
  *,
  aligned: bool = True,
  candidate_keys: np.ndarray | None = None,
) -> list[str]:
  """The content link `find_duplicate_pairs` makes between each given pair ("" for none), for
  the label-free content rules (exact, near, mirror, aligned), in their priority order. Used to
  calibrate and test the detector on chosen pairs without searching all pairs. `aligned=False`
  leaves the aligned signal out; `candidate_keys` (from `aligned_candidate_keys`) saves computing
  the candidates again on every call."""
  i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
  fp, bits = fingerprints, params.hash_candidate_bits
  kinds = np.full(len(i), "", object)
  usable = fp.informative[i] & fp.informative[j]
  exact = usable & np.asarray([fp.sha[a] == fp.sha[b] for a, b in zip(i.tolist(), j.tolist())], bool)
  near = usable & (_bits(fp.hashes[i], fp.hashes[j]) <= bits) & (_mad(fp.thumbs[i], fp.thumbs[j]) <= params.near_mad)
  mirrored = (_bits(fp.hashes[i], fp.mirror_hashes[j]) <= bits) | (_bits(fp.mirror_hashes[i], fp.hashes[j]) <= bits)
  mirror = usable & mirrored & (_mad(fp.thumbs[i], fp.thumbs[j][:, :, ::-1]) <= params.near_mad)
  linked_aligned = np.zeros(len(i), bool)
  if aligned:
    linked_aligned = usable & ~exact & ~near & ~mirror & _is_aligned_candidate(fp, i, j, params, candidate_keys)
    scored = np.nonzero(linked_aligned)[0]
    linked_aligned[scored] = _aligned(fp, i[scored], j[scored], params)
  for kind, mask in reversed(((EXACT, exact), (NEAR, near), (MIRROR, mirror), (ALIGNED, linked_aligned))):
    kinds[mask] = kind
  return kinds.tolist()


def find_duplicate_pairs(
  fingerprints: Fingerprints,
  labels: Sequence[int] | None = None,
  link_keys: Sequence[Sequence[str]] | None = None,
  params: NearDuplicateParams = DEFAULT_PARAMS,
) -> dict[tuple[int, int], str]:
  """All linked pairs {(i, j): kind} with i < j.

  Aligned pairs are only looked for between images that the other rules leave in different
  groups, so they are the links the aligned signal adds, not every pair it would find.

  `labels` enables the masked-from-unmasked rule (different labels only). `link_keys[i]` are
  strings such as a photo id or a source name: images sharing a key are linked ("same-source").
  """
  pairs: dict[tuple[int, int], str] = {}

  informative = fingerprints.informative

  def add(i, j, kind, by_content=True):
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    if by_content:
      keep = informative[i] & informative[j]
      i, j = i[keep], j[keep]
    for a, b in zip(i.tolist(), j.tolist()):
      key = (a, b) if a < b else (b, a)
      if a != b and key not in pairs:
        pairs[key] = kind

  by_sha: dict[str, list[int]] = {}
  for index, sha in enumerate(fingerprints.sha):
    by_sha.setdefault(sha, []).append(index)
  for members in by_sha.values():
    _add_clique(add, members, EXACT)

  i, j = _hash_candidates(fingerprints.hashes, fingerprints.hashes, params.hash_candidate_bits)
  keep = _mad(fingerprints.thumbs[i], fingerprints.thumbs[j]) <= params.near_mad
  add(i[keep], j[keep], NEAR)

  # Mirror: image i against the mirror of image j (the candidate filter is not symmetric).
  i, j = _hash_candidates(fingerprints.hashes, fingerprints.mirror_hashes, params.hash_candidate_bits)
  i2, j2 = _hash_candidates(fingerprints.mirror_hashes, fingerprints.hashes, params.hash_candidate_bits)
  i, j = np.concatenate([i, i2]), np.concatenate([j, j2])
  keep = _mad(fingerprints.thumbs[i], fingerprints.thumbs[j][:, :, ::-1]) <= params.near_mad
  add(i[keep], j[keep], MIRROR)

  if labels is not None:
    labels = np.asarray(labels)
    i, j = _hash_candidates(fingerprints.top_hashes, fingerprints.top_hashes, params.hash_candidate_bits)
    cross = labels[i] != labels[j]
    i, j = i[cross], j[cross]
    keep = _mad(fingerprints.top_thumbs[i], fingerprints.top_thumbs[j]) <= params.masked_mad
    add(i[keep], j[keep], MASKED)

  if link_keys is not None:
    by_key: dict[str, list[int]] = {}
    for index, keys in enumerate(link_keys):
      for key in keys:
        by_key.setdefault(key, []).append(index)
    for members in by_key.values():
      _add_clique(add, members, NAME, by_content=False)

  # The costly check last, and only between images not yet in one group: a pair inside a group
  # cannot change the groups. Candidates go in chunks, in a fixed order, and the groups grow after
  # each chunk, so many re-crops of one photo cost about one chunk, not a check per pair of them.
  links = _UnionFind(len(fingerprints))
  for a, b in pairs:
    links.union(a, b)
  i, j = _aligned_candidates(fingerprints, params)
  usable = informative[i] & informative[j]
  i, j = i[usable], j[usable]
  for start in range(0, len(i), ALIGNED_CHUNK):
    a, b = i[start : start + ALIGNED_CHUNK], j[start : start + ALIGNED_CHUNK]
    apart = np.asarray([links.find(x) != links.find(y) for x, y in zip(a.tolist(), b.tolist())], bool)
    a, b = a[apart.reshape(len(a))], b[apart.reshape(len(b))]
    keep = _aligned(fingerprints, a, b, params)
    add(a[keep], b[keep], ALIGNED)
    for x, y in zip(a[keep].tolist(), b[keep].tolist()):
      links.union(x, y)
  return pairs


def _add_clique(add, members: list[int], kind: str, **kwargs) -> None:
  # Every pair, not a chain: the audit counts pairs and direct siblings across splits.
  if len(members) > 1:
    i, j = np.triu_indices(len(members), 1)
    members = np.asarray(members)
    add(members[i], members[j], kind, **kwargs)


class _UnionFind:
  def __init__(self, n: int):
    self.parent = list(range(n))

  def find(self, x: int) -> int:
    parent = self.parent
    while parent[x] != x:
      parent[x] = parent[parent[x]]
      x = parent[x]
    return x

  def union(self, a: int, b: int) -> None:
    root_a, root_b = self.find(a), self.find(b)
    if root_a != root_b:
      self.parent[max(root_a, root_b)] = min(root_a, root_b)


def connected_components(n: int, pairs) -> np.ndarray:
  """Component index per item (union-find over the pairs); components numbered by first member."""
  links = _UnionFind(n)
  for a, b in pairs:
    links.union(a, b)
  roots = [links.find(x) for x in range(n)]
  numbering: dict[int, int] = {}
  return np.asarray([numbering.setdefault(root, len(numbering)) for root in roots], np.int64)


def group_ids(
  content_keys: Sequence[str], components: np.ndarray, informative: Sequence[bool] | None = None
) -> list[str]:
  """A stable id per item: the smallest content key (pixel hash) in its component, shortened.

  With `informative`, blank members are only used when the component has no informative one: a
  blank image (e.g. all black) can sit in several name-linked components, and taking its hash
  as their id would merge those unrelated components into one group.
  """
  informative = [True] * len(content_keys) if informative is None else [bool(x) for x in informative]
  smallest: dict[int, tuple[bool, str]] = {}
  for key, component, useful in zip(content_keys, components.tolist(), informative):
    rank = (not useful, key)  # informative members first, then by key
    if component not in smallest or rank < smallest[component]:
      smallest[component] = rank
  return ["g" + smallest[component][1][:20] for component in components.tolist()]


def assign_split(group_id: str, fractions: Sequence[float] = (0.8, 0.1, 0.1), salt: str = "vaeaug-v1") -> str:
  """Deterministic split of a group from a hash of its id: same answer on every machine and order."""
  if len(fractions) != len(SPLITS) or abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
    raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, got {tuple(fractions)}")
  value = int.from_bytes(hashlib.sha256(f"{salt}:{group_id}".encode()).digest()[:8], "big") / 2.0**64
  cumulative = 0.0
  for split, fraction in zip(SPLITS, fractions):
    cumulative += fraction
    if value < cumulative:
      return split
  return SPLITS[-1]


def assign_splits(
  groups: Sequence[str], labels: Sequence[int], fractions: Sequence[float] = (0.8, 0.1, 0.1), salt: str = "vaeaug-v1"
) -> list[str]:
  """Split of every example such that whole groups go to one split and each class is divided
  close to `fractions` (hashing groups alone gives lumpy splits when a few groups are large,
  e.g. a crowd photo with 100 faces).

  Groups are placed largest first (ties in a hash order of their ids), each into the split whose
  per-class shortfall against its target is largest for the group's classes. The result depends
  only on the set of (group, label) pairs: not on file order, file names or the machine. Unlike
  `assign_split`, adding images can move other groups.
  """
  if len(fractions) != len(SPLITS) or abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
    raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, got {tuple(fractions)}")
  labels = np.asarray(labels, np.int64)
  if len(groups) != len(labels):
    raise ValueError(f"{len(groups)} groups for {len(labels)} labels")
  if len(labels) == 0:
    return []
  num_classes = int(labels.max()) + 1
  counts: dict[str, np.ndarray] = {}
  for group, label in zip(groups, labels.tolist()):
    counts.setdefault(group, np.zeros(num_classes, np.int64))[label] += 1
  class_totals = np.maximum(sum(counts.values()), 1).astype(np.float64)
  targets = np.asarray(fractions, np.float64)[:, None] * class_totals[None, :]
  assigned = np.zeros((len(SPLITS), num_classes), np.float64)

  def order(group):
    return (-int(counts[group].sum()), hashlib.sha256(f"{salt}:{group}".encode()).hexdigest())

  split_of_group = {}
  for group in sorted(counts, key=order):
    shortfall = ((targets - assigned) / class_totals) @ counts[group]
    index = int(np.argmax(shortfall))  # ties: the first split
    assigned[index] += counts[group]
    split_of_group[group] = SPLITS[index]
  return [split_of_group[group] for group in groups]


@dataclasses.dataclass(frozen=True)
class Grouping:
  groups: list[str]
  pairs: dict[tuple[int, int], str]

  def kind_counts(self) -> dict[str, int]:
    counts: dict[str, int] = {}
    for kind in self.pairs.values():
      counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def group_images(
  images: Sequence[np.ndarray],
  labels: Sequence[int] | None = None,
  link_keys: Sequence[Sequence[str]] | None = None,
  params: NearDuplicateParams = DEFAULT_PARAMS,
) -> Grouping:
  """Leakage group id of every image (see the module docstring for the rules)."""
  fingerprints = fingerprint(images, params)
  pairs = find_duplicate_pairs(fingerprints, labels, link_keys, params)
  components = connected_components(len(images), pairs)
  return Grouping(group_ids(fingerprints.sha, components, fingerprints.informative), pairs)
