"""Calibration of the near-duplicate detector (`vaeaug.data.grouping`) on pairs the data labels.

  vaeaug-audit --calibrate [--json]

Labelled pairs, all from the 12K set (its `official` build, every split):
- positives: pairs of one `Augmented_<N>` family (augmentations of one source photo, by name),
  exact pixel copies, and synthetic copies: each of `synthetic` sampled images against a re-crop
  (70-95% of the side, anywhere), re-scaling (0.5-1.5x, then back), colour shift (brightness,
  contrast, per-channel gain) and JPEG re-encoding (quality 50-95) of itself;
- negatives: random pairs of one class, not of one family and not pixel copies;
- hard negatives: the aligned check's candidate pairs between two unmasked images (CelebA faces:
  distinct photos, aligned alike, so they are the look-alikes that matter), not pixel copies.
  Random pairs almost never reach the aligned check; these do. A few may be true re-crops
  inside CelebA, so their false-positive rate is an upper bound.

Families and synthetic images are split in two halves by a hash (calibration / held-out), the
negatives by position. On the calibration half, the aligned signal's two thresholds
(`aligned_ncc`, `aligned_chroma`; NCC from the coarse gate up) are swept over a grid, and the pair
with the highest recall on calibration positives (the mean of the synthetic and the family
recall) whose false-positive rate on calibration negatives is at most `max_fpr` is
chosen, if it links at most `max_hard_fpr` of the calibration hard negatives: a false link only
makes a split slightly less random (as long as false links stay rare enough not to chain
unrelated faces into large groups), a missed link is a leak. Recall
and false-positive rate are then measured once on the held-out half, with the thresholds in use
(`grouping.DEFAULT_PARAMS`); the report says whether those equal the chosen ones.

Many `Augmented_<N>` variants are strong augmentations (rotations, warps, heavy colour changes)
rather than near-copies, so pairwise family recall is low by design; the family-level figure
(members linked by content to at least one other member) is reported beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io

import numpy as np
from PIL import Image, ImageEnhance
from scipy import stats

from vaeaug.data import audit, face_mask12k, grouping

# Held-out synthetic recall is also reported by how much of the side the re-crop kept.
SYNTHETIC_CROP_BINS = ((0.90, 0.951), (0.85, 0.90), (0.80, 0.85), (0.70, 0.80))


def _half(key: str) -> int:
  """0 (calibration) or 1 (held-out), from a hash of the key: the same on every machine."""
  return hashlib.sha256(f"calibration:{key}".encode()).digest()[0] & 1


def _family_half(link_key: str) -> int:
  # Hashed as "WithMask/<N>", the form the published calibration drew its halves with.
  return _half(link_key.replace("/Augmented_", "/"))


def synthetic_copy(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
  """A re-cropped, re-scaled, colour-shifted, JPEG re-encoded copy of `image`, and the fraction of
  the side its crop kept."""
  height, width = image.shape[:2]
  keep = float(rng.uniform(0.70, 0.95))
  crop_h, crop_w = max(8, int(round(height * keep))), max(8, int(round(width * keep)))
  top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
  picture = Image.fromarray(image[top : top + crop_h, left : left + crop_w])
  scale = rng.uniform(0.5, 1.5)
  picture = picture.resize((max(8, round(crop_w * scale)), max(8, round(crop_h * scale))), Image.BILINEAR)
  picture = picture.resize((width, height), Image.BILINEAR)
  picture = ImageEnhance.Brightness(picture).enhance(rng.uniform(0.8, 1.2))
  picture = ImageEnhance.Contrast(picture).enhance(rng.uniform(0.8, 1.2))
  gains = rng.uniform(0.9, 1.1, 3)
  shifted = np.clip(np.asarray(picture, np.float32) * gains, 0, 255).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(shifted).save(buffer, "JPEG", quality=int(rng.integers(50, 96)))
  return np.asarray(Image.open(buffer).convert("RGB")), keep


@dataclasses.dataclass
class _Pairs:
  i: np.ndarray
  j: np.ndarray
  half: np.ndarray

  def select(self, half: int) -> tuple[np.ndarray, np.ndarray]:
    keep = self.half == half
    return self.i[keep], self.j[keep]


def _family_pairs(files: list[str]) -> tuple[_Pairs, dict[str, list[int]]]:
  families: dict[str, list[int]] = {}  # the builder's name rule: "WithMask/Augmented_<N>"
  for index, file in enumerate(files):
    for key in face_mask12k.link_keys(file):
      families.setdefault(key, []).append(index)
  rows = []
  for key, members in sorted(families.items()):
    a, b = np.triu_indices(len(members), 1)
    members_ = np.asarray(members)
    rows.append(np.stack([members_[a], members_[b], np.full(len(a), _family_half(key))], 1))
  table = np.concatenate(rows) if rows else np.zeros((0, 3), np.int64)
  return _Pairs(table[:, 0], table[:, 1], table[:, 2]), families


def _rate(hits: int, total: int) -> dict:
  upper = stats.binomtest(hits, total).proportion_ci(0.95, "exact").high if total else float("nan")
  return {"linked": int(hits), "pairs": int(total), "rate": hits / total if total else float("nan"), "upper95": upper}


def calibrate(
  data_dir=None,
  *,
  synthetic: int = 2000,
  negatives: int = 400_000,
  max_fpr: float = 1e-5,
  max_hard_fpr: float = 0.002,
  seed: int = 0,
  params: grouping.NearDuplicateParams = grouping.DEFAULT_PARAMS,
  examples: dict | None = None,
) -> dict:
  """The calibration report (see the module docstring); `examples` as `audit.load_examples` returns
  them (read from the built `face_mask12k/official` when not given)."""
  examples = examples if examples is not None else audit.load_examples("face_mask12k", "official", data_dir)
  rows = [example for split in grouping.SPLITS for example in examples.get(split, [])]
  if not rows:
    raise ValueError("face_mask12k/official has no examples to calibrate on")
  images = [np.asarray(row["image"]) for row in rows]
  files = [str(row["file"]) for row in rows]
  labels = np.asarray([int(row["label"]) for row in rows])
  rng = np.random.default_rng(seed)

  originals = rng.choice(len(images), size=min(synthetic, len(images)), replace=False)
  copies, kept = zip(*(synthetic_copy(images[k], rng) for k in originals.tolist())) if len(originals) else ((), ())
  copies, kept = list(copies), np.asarray(kept)
  fingerprints = grouping.fingerprint(images + copies, params)
  synthetic_pairs = _Pairs(
    originals, len(images) + np.arange(len(copies)), np.asarray([_half(files[k]) for k in originals.tolist()])
  )
  family_pairs, families = _family_pairs(files)
  by_sha: dict[str, list[int]] = {}
  for index, sha in enumerate(fingerprints.sha[: len(images)]):
    by_sha.setdefault(sha, []).append(index)
  exact = [(members[0], other) for members in by_sha.values() for other in members[1:]]
  exact_i, exact_j = (np.asarray(column, np.int64) for column in zip(*exact)) if exact else (np.zeros(0, int),) * 2

  family_of = np.full(len(images), -1)
  for number, members in enumerate(families.values()):
    family_of[members] = number
  ni, nj = rng.integers(0, len(images), negatives), rng.integers(0, len(images), negatives)
  same_sha = np.asarray([fingerprints.sha[a] == fingerprints.sha[b] for a, b in zip(ni.tolist(), nj.tolist())])
  keep = (ni != nj) & (labels[ni] == labels[nj]) & ~((family_of[ni] >= 0) & (family_of[ni] == family_of[nj]))
  keep &= ~same_sha
  negative_pairs = _Pairs(ni[keep], nj[keep], (np.arange(int(keep.sum())) % 2))

  candidate_keys = grouping.aligned_candidate_keys(fingerprints, params)
  unmasked = face_mask12k.CLASS_NAMES.index("without_mask")
  hi, hj = candidate_keys // len(fingerprints), candidate_keys % len(fingerprints)
  originals_only = (hj < len(images)) & (hi < len(images))
  hi, hj = hi[originals_only], hj[originals_only]
  hard = (labels[hi] == unmasked) & (labels[hj] == unmasked)
  hard &= np.asarray([fingerprints.sha[a] != fingerprints.sha[b] for a, b in zip(hi.tolist(), hj.tolist())], bool)
  hard_pairs = _Pairs(hi[hard], hj[hard], np.arange(int(hard.sum())) % 2)

  def signals(i, j, chunk=16384):
    """Per pair: linked by a rule other than aligned; the aligned NCC and chroma (-1, 0 when not
    an aligned candidate)."""
    other, candidate = np.zeros(len(i), bool), np.zeros(len(i), bool)
    for start in range(0, len(i), chunk):  # bounded memory for many pairs
      a, b = i[start : start + chunk], j[start : start + chunk]
      kinds = np.asarray(grouping.classify_pairs(fingerprints, a, b, params, aligned=False), object)
      other[start : start + chunk] = kinds != ""
      candidate[start : start + chunk] = grouping._is_aligned_candidate(fingerprints, a, b, params, candidate_keys)
    candidate &= ~other & fingerprints.informative[i] & fingerprints.informative[j]
    ncc, chroma = np.full(len(i), -1.0), np.zeros(len(i))
    scored = np.nonzero(candidate)[0]
    ncc[scored], chroma[scored] = grouping.aligned_similarity(fingerprints, i[scored], j[scored], params)
    return other, ncc, chroma

  def linked(signal, ncc_threshold, chroma_threshold):
    other, ncc, chroma = signal
    return other | ((ncc >= ncc_threshold) & (chroma >= chroma_threshold))

  halves = {}
  for half in (0, 1):
    halves[half] = {
      "synthetic": signals(*synthetic_pairs.select(half)),
      "family": signals(*family_pairs.select(half)),
      "negative": signals(*negative_pairs.select(half)),
      "hard": signals(*hard_pairs.select(half)),
    }

  # Sweep on the calibration half.
  grid = []
  calibration = halves[0]
  # Mean of the two recalls: the family pairs outnumber the synthetic ones, and most of them are
  # strong augmentations no near-duplicate rule should be tuned to.
  positives = lambda s, a, c: np.mean([linked(s["synthetic"], a, c).mean(), linked(s["family"], a, c).mean()])
  for ncc_threshold in np.round(np.arange(params.aligned_coarse_ncc, 0.951, 0.01), 2):
    for chroma_threshold in np.round(np.arange(0.0, 0.951, 0.05), 2):
      recall = float(positives(calibration, ncc_threshold, chroma_threshold))
      false = linked(calibration["negative"], ncc_threshold, chroma_threshold)
      hard_false = linked(calibration["hard"], ncc_threshold, chroma_threshold)
      grid.append(
        (float(ncc_threshold), float(chroma_threshold), recall, float(false.mean()), float(hard_false.mean()))
      )
  allowed = [row for row in grid if row[3] <= max_fpr and row[4] <= max_hard_fpr]
  chosen = max(allowed, key=lambda row: (row[2], row[0], row[1])) if allowed else None

  held_out = halves[1]
  threshold = (params.aligned_ncc, params.aligned_chroma)
  held_synthetic = linked(held_out["synthetic"], *threshold)
  held_kept = kept[synthetic_pairs.half == 1]
  by_crop = {}
  for low, high in SYNTHETIC_CROP_BINS:
    inside = (held_kept >= low) & (held_kept < high)
    by_crop[f"{low:.2f}-{high:.2f}"] = _rate(int(held_synthetic[inside].sum()), int(inside.sum()))
  members_linked = _family_members_linked(fingerprints, families, params, candidate_keys)
  report = {
    "images": len(images),
    "pairs": {
      "synthetic": len(synthetic_pairs.i),
      "family": len(family_pairs.i),
      "exact": len(exact_i),
      "negative": len(negative_pairs.i),
      "hard_negative": len(hard_pairs.i),
    },
    "max_fpr": max_fpr,
    "max_hard_fpr": max_hard_fpr,
    "grid": [dict(zip(("aligned_ncc", "aligned_chroma", "recall", "fpr", "hard_fpr"), row)) for row in grid],
    "chosen": None if chosen is None else {"aligned_ncc": chosen[0], "aligned_chroma": chosen[1]},
    "in_use": {"aligned_ncc": threshold[0], "aligned_chroma": threshold[1]},
    "in_use_is_chosen": chosen is not None and (chosen[0], chosen[1]) == threshold,
    "held_out": {
      "synthetic_recall": _rate(int(linked(held_out["synthetic"], *threshold).sum()), len(held_out["synthetic"][0])),
      "synthetic_recall_by_kept_side": by_crop,
      "synthetic_recall_without_aligned": _rate(int(held_out["synthetic"][0].sum()), len(held_out["synthetic"][0])),
      "family_pair_recall": _rate(int(linked(held_out["family"], *threshold).sum()), len(held_out["family"][0])),
      "family_pair_recall_without_aligned": _rate(int(held_out["family"][0].sum()), len(held_out["family"][0])),
      "false_positive": _rate(int(linked(held_out["negative"], *threshold).sum()), len(held_out["negative"][0])),
      "hard_false_positive": _rate(int(linked(held_out["hard"], *threshold).sum()), len(held_out["hard"][0])),
    },
    "exact_blank": int(sum(not fingerprints.informative[a] for a in exact_i.tolist())),
    "exact_recall": _rate(
      sum(
        kind == grouping.EXACT
        for kind in grouping.classify_pairs(fingerprints, exact_i, exact_j, params, aligned=False)
      ),
      len(exact_i),
    ),
    "family_members_linked": members_linked,
  }
  return report


def _family_members_linked(fingerprints, families: dict[str, list[int]], params, candidate_keys) -> dict:
  """Of the held-out families' members, how many are linked by content (no name rule) to at least
  one other member of their family."""
  linked_members = total = 0
  for key, members in families.items():
    if _family_half(key) != 1 or len(members) < 2:
      continue
    a, b = np.triu_indices(len(members), 1)
    members_ = np.asarray(members)
    kinds = grouping.classify_pairs(fingerprints, members_[a], members_[b], params, candidate_keys=candidate_keys)
    touched = {int(x) for x, y, kind in zip(members_[a], members_[b], kinds) if kind for x in (x, y)}
    linked_members += len(touched)
    total += len(members)
  return _rate(linked_members, total)


def format_report(report: dict) -> str:
  held = report["held_out"]
  pct = lambda r: f"{100 * r['rate']:.1f}% ({r['linked']}/{r['pairs']})"
  fp = held["false_positive"]
  chosen = report["chosen"]
  lines = [
    f"Near-duplicate detector calibration on face_mask12k/official ({report['images']} images)",
    f"  pairs: {', '.join(f'{k} {v}' for k, v in report['pairs'].items())}",
    f"  chosen on the calibration half (false-positive rate at most {report['max_fpr']:g} on random pairs, "
    f"{report['max_hard_fpr']:g} on hard negatives): "
    + (f"aligned_ncc {chosen['aligned_ncc']}, aligned_chroma {chosen['aligned_chroma']}" if chosen else "none"),
    f"  in use: aligned_ncc {report['in_use']['aligned_ncc']}, aligned_chroma {report['in_use']['aligned_chroma']}"
    + ("" if report["in_use_is_chosen"] else "  (differs from the chosen thresholds)"),
    "  held-out half, thresholds in use:",
    f"    synthetic re-crops/re-scalings/colour shifts: recall {pct(held['synthetic_recall'])}; "
    f"without the aligned signal {pct(held['synthetic_recall_without_aligned'])}",
    "      by the side the crop kept: "
    + ", ".join(f"{bin_} {pct(rate)}" for bin_, rate in held["synthetic_recall_by_kept_side"].items()),
    f"    Augmented_<N> family pairs: recall {pct(held['family_pair_recall'])}; "
    f"without the aligned signal {pct(held['family_pair_recall_without_aligned'])}",
    f"    family members linked by content to another member: {pct(report['family_members_linked'])}",
    f"    random same-class pairs linked (false positives): {fp['linked']}/{fp['pairs']} "
    f"(rate {fp['rate']:.2g}, 95% upper bound {fp['upper95']:.2g})",
    f"    hard negatives (unmasked look-alikes reaching the aligned check) linked: {pct(held['hard_false_positive'])}",
    f"  exact copies linked: {pct(report['exact_recall'])}; the other {report['exact_blank']} are blank images, "
    "which are never linked by content",
  ]
  return "\n".join(lines)
