"""Synthetic training images from trained autoencoders (DAE / VAE / CVAE), with provenance.

Overview::

    syn = synthesize(model, train, per_class=200, sampler="posterior_jitter", seed=0,
                     generator_name="runs/vae_s0", temperature=1.0)
    syn.save("synthetic/vae_s0_jitter.npz")          # .npz + .npz.json sidecar, atomic
    syn = load_synthetic("synthetic/vae_s0_jitter.npz")
    kept, report = filter_by_classifier(syn, predict_proba, tau=0.8)
    kept, report = filter_by_decision(syn, predict_proba, threshold=0.42)   # or: the classifier's decision
    augmented = combine(train, kept)                  # real + synthetic ArrayDataset

Samplers (``SAMPLERS``), each returning exactly ``per_class`` images for every class of
``train.class_names``; randomness is numpy (latents, picks) seeded by ``(seed, class)``, plus a
jax key for the corruption (``denoise``, ``noise_blur``), so a seed fixes the result. Which
samplers apply to a model is its kind's business (`vaeaug.kinds`, ``check_sampler``):

* ``prior`` (CVAE only): ``z ~ N(0, temperature^2 I)`` decoded with label ``c``.  An
  unconditional VAE cannot make "class c" images from its prior, and a DAE has no prior.
* ``posterior_jitter``: a real image of class ``c`` (uniform, with replacement) is encoded and
  ``z = mean + temperature * exp(logvar / 2) * eps``.  DAE (deterministic code, no variance):
  ``z = code + temperature * noise_scale * std_c * eps`` where ``std_c`` is the per-dimension
  std of the codes of class ``c`` (``noise_scale`` default 0.1), so the jitter is relative to
  how spread the class is in latent space (a one-image class gets no jitter).
* ``interpolation``: two distinct real images of class ``c`` (the same one if the class has a
  single image), ``z = (1 - t) mean_a + t mean_b``, ``t ~ U(t_range)`` (default (0.2, 0.8)).
* ``gmm``: ex-post density estimation (Ghosh et al. 2020): a diagonal Gaussian mixture
  (scikit-learn's) fitted to the latent means of the class's training images, sampled and decoded.
* ``denoise`` (DAE only): a real image of class ``c`` corrupted with ``noise`` (option, default
  the model's ``noise`` attribute) and reconstructed.
* ``counterfactual``: a real image of another class, turned into class ``c``: a conditional model
  encodes it with its own label and decodes with ``c`` ("label_swap"); an unconditional one moves
  its latent mean along the class direction, ``z + strength * (mu_c - mu_source_class)`` with the
  class means of the training images' latent means ("latent_direction").
* ``noise_blur`` (no model: a non-learned control for ``denoise``): the same real images as
  ``denoise`` with the same seed, corrupted with ``noise`` and Gaussian-blurred (``blur_sigma``
  pixels); :func:`calibrate_blur_sigma` picks the blur closest to a trained DAE's output.

The class label is passed to ``decode``/``encode`` only for a conditional model.
Nothing here depends on the classifiers: filtering takes a ``predict_proba`` function.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vaeaug import fileio, kinds
from vaeaug.data.pipeline import ArrayDataset, from_float, to_float
from vaeaug.models.noise import NoiseConfig, corrupt

__all__ = [
  "SAMPLERS",
  "DiagGMM",
  "SyntheticFileError",
  "SyntheticMissingError",
  "SyntheticSet",
  "calibrate_blur_sigma",
  "combine",
  "counterfactual_latents",
  "filter_by_classifier",
  "filter_by_decision",
  "fit_diag_gmm",
  "gaussian_blur",
  "load_synthetic",
  "sample_counterfactual",
  "sample_denoise",
  "sample_gmm",
  "sample_interpolation",
  "sample_noise_blur",
  "sample_posterior_jitter",
  "sample_prior",
  "synthesize",
  "synthesize_filtered",
]

FORMAT = "vaeaug.synthetic"
FORMAT_VERSION = 1
_STR_FIELDS = ("generator", "sampler", "source_file", "source_file_b")
_INT_FIELDS = ("seed", "source_index", "source_index_b", "component")
_PROVENANCE = (
  "generator",
  "sampler",
  "seed",
  "source_index",
  "source_file",
  "source_index_b",
  "source_file_b",
  "mix",
  "component",
)


def _version() -> str:
  try:
    from importlib.metadata import version

    return f"vaeaug {version('vaeaug')}"
  except Exception:  # not installed (e.g. run from a source tree)
    return "vaeaug (unknown version)"


class SyntheticFileError(ValueError):
  """A synthetic-set file (or its sidecar) is missing, unreadable or inconsistent."""


class SyntheticMissingError(SyntheticFileError):
  """No complete synthetic set at the path: no npz, or an npz without a valid sidecar or whose sidecar
  names another digest (what a kill mid-`save` leaves). Safe to regenerate."""


# ----------------------------------------------------------------------------- SyntheticSet


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticSet:
  """Synthetic images (uint8 NHWC), int32 labels and per-sample provenance arrays.

  ``source_index``/``source_file``: the real training image used (-1 / "" for none);
  ``*_b``: the interpolation partner; ``mix``: interpolation ``t`` (nan otherwise);
  ``component``: GMM component (-1 otherwise). ``options``: sampler options (JSON-able).
  """

  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]
  generator: np.ndarray
  sampler: np.ndarray
  seed: np.ndarray
  source_index: np.ndarray
  source_file: np.ndarray
  source_index_b: np.ndarray
  source_file_b: np.ndarray
  mix: np.ndarray
  component: np.ndarray
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    set_ = functools.partial(object.__setattr__, self)
    set_("class_names", tuple(str(c) for c in self.class_names))
    set_("images", np.asarray(self.images))
    set_("labels", np.asarray(self.labels))
    for name in _STR_FIELDS:  # fixed-width unicode, never object arrays (allow_pickle=False)
      arr = np.asarray(self.__dict__[name], dtype=str)
      set_(name, arr if arr.size else np.zeros((0,), "U1"))
    for name in _INT_FIELDS:
      set_(name, np.asarray(self.__dict__[name]).astype(np.int64))
    set_("mix", np.asarray(self.mix, dtype=np.float32))
    set_("options", dict(self.options))
    problems = _check_arrays(self.__dict__, len(self.class_names))
    if problems:
      raise ValueError("invalid SyntheticSet: " + "; ".join(problems))

  def __len__(self) -> int:
    return int(self.images.shape[0])

  def class_counts(self) -> dict[str, int]:
    counts = np.bincount(self.labels, minlength=len(self.class_names))
    return {c: int(k) for c, k in zip(self.class_names, counts)}

  def _arrays(self) -> dict[str, np.ndarray]:
    return {"images": self.images, "labels": self.labels, **{k: getattr(self, k) for k in _PROVENANCE}}

  def take(self, indices) -> SyntheticSet:
    idx = np.asarray(indices)
    return SyntheticSet(
      **{k: v[idx] for k, v in self._arrays().items()}, class_names=self.class_names, options=self.options
    )

  def concatenate(self, other: SyntheticSet) -> SyntheticSet:
    if self.class_names != other.class_names:
      raise ValueError(f"class_names differ: {self.class_names} vs {other.class_names}")
    a, b = self._arrays(), other._arrays()
    return SyntheticSet(
      **{k: np.concatenate([a[k], b[k]]) for k in a}, class_names=self.class_names, options=self.options
    )

  def to_dataset(self, provenance: bool = True, name: str = "") -> ArrayDataset:
    """As an ArrayDataset: files ``synthetic/<sampler>/<i>``; groups ``synthetic:<source_file>``
    (``synthetic:<sampler>/<i>`` without a source), so every image made from the same real
    image shares one marker of it (group-aware splits / leakage audits can keep them
    together). ``provenance`` adds the provenance arrays (and ``synthetic=True``) as extras;
    :func:`combine` joins such a dataset with a real one (``provenance=False`` for a plain
    ``real.concatenate(...)``, which needs equal extras keys).
    """
    i = np.arange(len(self)).astype(str)
    files = np.char.add(np.char.add(np.char.add("synthetic/", self.sampler), "/"), i)
    own = np.char.add(np.char.add(self.sampler, "/"), i)
    groups = np.char.add("synthetic:", np.where(self.source_file != "", self.source_file, own))
    extras = {}
    if provenance:
      extras = {"synthetic": np.ones(len(self), bool), **{k: getattr(self, k) for k in _PROVENANCE}}
    return ArrayDataset(
      self.images, self.labels, files, groups, self.class_names, extras=extras, name=name or "synthetic"
    )

  # -- persistence ---------------------------------------------------------------

  def metadata(self) -> dict[str, Any]:
    def one_or_list(a):
      u = sorted(set(a.tolist()))
      return u[0] if len(u) == 1 else u

    return {
      "format": FORMAT,
      "format_version": FORMAT_VERSION,
      "created_by": _version(),
      "class_names": list(self.class_names),
      "num_images": len(self),
      "image_shape": list(self.images.shape[1:]),
      "counts": self.class_counts(),
      "generator": one_or_list(self.generator),
      "sampler": one_or_list(self.sampler),
      "seed": one_or_list(self.seed),
      "options": _jsonable(self.options),
    }

  def save(self, path: str | os.PathLike) -> Path:
    """Write ``path`` (``.npz`` added if missing) and ``<path>.json``, each atomically."""
    path = Path(path)
    if path.suffix != ".npz":
      path = path.with_name(path.name + ".npz")
    arrays = {**self._arrays(), "class_names": np.asarray(self.class_names, dtype=str)}
    size = sum(a.nbytes for a in arrays.values())
    digest = fileio.atomic_write(path, lambda f: np.savez(f, **arrays), size_hint=size)
    # The sidecar goes last and names the npz's digest: a kill between the two writes leaves an npz
    # without a matching sidecar, which `load_synthetic` reports as missing (`SyntheticMissingError`).
    meta = {**self.metadata(), "npz_file": path.name, "npz_sha256": digest}
    fileio.atomic_write_text(_sidecar(path), json.dumps(meta, indent=2))
    return path


def _check_arrays(d: Mapping[str, Any], num_classes: int) -> list[str]:
  """Shape / dtype / range problems of a set of arrays (empty list when valid)."""
  problems = []
  images, labels = d["images"], d["labels"]
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    problems.append(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
  n = images.shape[0] if images.ndim else -1
  if labels.ndim != 1 or labels.dtype.kind not in "iu":
    problems.append(f"labels must be 1-D integers, got {labels.dtype} {labels.shape}")
  elif labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    problems.append(
      f"labels out of range [0, {num_classes}): "
      f"{sorted(set(labels[(labels < 0) | (labels >= num_classes)].tolist()))[:10]}"
    )
  for k in ("labels", *_PROVENANCE):
    a = np.asarray(d[k])
    if a.shape != (n,):
      problems.append(f"{k} must have shape ({n},), got {a.shape}")
    elif a.dtype.kind == "O":
      problems.append(f"{k} is an object array")
  return problems


def _sidecar(path: Path) -> Path:
  return path.with_name(path.name + ".json")


def _sha256(path: Path) -> str:
  with path.open("rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _jsonable(x: Any) -> Any:
  if dataclasses.is_dataclass(x) and not isinstance(x, type):
    return {"__type__": type(x).__name__, **_jsonable(dataclasses.asdict(x))}
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple, np.ndarray)):
    return [_jsonable(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
  if isinstance(x, np.generic):
    return x.item()
  if x is None or isinstance(x, (bool, int, float, str)):
    return x
  return repr(x)


def load_synthetic(path: str | os.PathLike) -> SyntheticSet:
  """Read a set written by :meth:`SyntheticSet.save`; raises SyntheticFileError naming the file
  (SyntheticMissingError when no complete set is there: no npz, or no sidecar matching it)."""
  path = Path(path)

  def fail(problem: str, error: type[SyntheticFileError] = SyntheticFileError) -> SyntheticFileError:
    return error(f"{path}: {problem}")

  side = _sidecar(path)
  if not path.is_file():
    raise fail("file not found", SyntheticMissingError)
  if not side.is_file():
    raise fail(f"metadata sidecar {side.name} is missing", SyntheticMissingError)
  try:
    meta = json.loads(side.read_text())
  except (OSError, ValueError) as e:
    raise fail(f"unreadable sidecar {side.name}: {e}", SyntheticMissingError) from e
  if not isinstance(meta, dict):
    raise fail(f"sidecar {side.name} is not a JSON object", SyntheticMissingError)
  # A sidecar naming another digest belongs to an earlier write: this npz was never completed, so
  # whatever is wrong with it, the set is missing (and may be regenerated), not damaged.
  stale = meta.get("npz_sha256") not in (None, _sha256(path))
  if stale:
    fail = functools.partial(fail, error=SyntheticMissingError)
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except Exception as e:  # zipfile.BadZipFile, EOFError, ValueError (object arrays), ...
    raise fail(f"cannot read as an .npz of plain arrays ({type(e).__name__}: {e})") from e
  missing = {"images", "labels", "class_names", *_PROVENANCE} - set(arrays)
  if missing:
    raise fail(f"missing arrays {sorted(missing)}")
  class_names = tuple(arrays.pop("class_names").tolist())
  problems = _check_arrays(arrays, len(class_names))
  if problems:
    raise fail("; ".join(problems))
  if meta.get("format") != FORMAT:
    raise fail(f"sidecar {side.name} is not a {FORMAT} sidecar")
  if stale:
    raise fail(f"sidecar {side.name} does not match the file (sha256 differs; stale sidecar?)")
  syn = SyntheticSet(**arrays, class_names=class_names, options=meta.get("options", {}))
  expected = syn.metadata()
  for key in ("class_names", "num_images", "image_shape", "counts", "generator", "sampler", "seed"):
    if meta.get(key) != expected[key]:
      raise fail(
        f"sidecar {side.name} is inconsistent: {key} is {meta.get(key)!r} but the file gives {expected[key]!r}"
      )
  return syn


# ----------------------------------------------------------------------------- jitted model calls


# Module-level jits keyed by the (hashable) graphdef, so repeated calls do not recompile.
@functools.partial(jax.jit, static_argnums=0)
def _generate_jit(graphdef, state, z, labels):
  return nnx.merge(graphdef, state).generate(z, labels=labels)


@functools.partial(jax.jit, static_argnums=0)
def _encode_jit(graphdef, state, x, labels):
  return nnx.merge(graphdef, state).encode(x, train=False, labels=labels)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _denoise_jit(graphdef, state, x, key, noise):
  model = nnx.merge(graphdef, state)
  return model.reconstruct(corrupt(x, key, noise), train=False)


def _gaussian_kernel(sigma: float) -> np.ndarray:
  radius = max(1, math.ceil(3.0 * sigma))  # +-3 sigma holds all but 0.3% of the weight
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  kernel = np.exp(-0.5 * (x / sigma) ** 2)
  return (kernel / kernel.sum()).astype(np.float32)


def _blur(x: jax.Array, sigma: float) -> jax.Array:
  """Separable Gaussian blur of NHWC ``x`` over H and W, mirrored ("symmetric") borders."""
  if sigma == 0:
    return x
  kernel = _gaussian_kernel(sigma)
  radius = len(kernel) // 2
  for axis in (1, 2):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    padded = jnp.pad(x, pad, mode="symmetric")
    size = x.shape[axis]
    x = sum(float(w) * jax.lax.slice_in_dim(padded, i, i + size, axis=axis) for i, w in enumerate(kernel))
  return x


_blur_jit = jax.jit(_blur, static_argnums=1)
_corrupt_jit = jax.jit(corrupt, static_argnums=2)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _noise_blur_jit(x, key, noise, sigma):
  return _blur(corrupt(x, key, noise), sigma)


def _batched(fn, n: int, inputs, batch_size: int):
  """Apply ``fn(batch, batch_index)`` over ``inputs`` (pytree of arrays with leading n)."""
  # Batches are padded (repeating the last row) to a power of two <= batch_size, so the
  # varying class sizes and remainders share a handful of compiled shapes.
  bs = min(batch_size, 1 << max(n - 1, 0).bit_length())
  outs = []
  for b, start in enumerate(range(0, n, bs)):
    idx = np.minimum(np.arange(start, start + bs), n - 1)
    out = fn(jax.tree.map(lambda a: a[idx], inputs), b)
    outs.append(jax.tree.map(lambda o: np.asarray(o)[: min(bs, n - start)], out))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def _labels_for(model, labels: np.ndarray):
  return np.asarray(labels, np.int32) if getattr(model, "conditional", False) else None


def _decode(model, z: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """Latents -> uint8 images, with the labels given to the model only if it is conditional."""
  graphdef, state = nnx.split(model)
  out = _batched(
    lambda b, _: _generate_jit(graphdef, state, b[0], b[1]),
    len(z),
    (np.asarray(z, np.float32), _labels_for(model, labels)),
    batch_size,
  )
  return np.asarray(from_float(out))


def _encode(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 256):
  """uint8 images -> (mean, logvar) numpy (logvar None for a DAE)."""
  graphdef, state = nnx.split(model)
  return _batched(
    lambda b, _: _encode_jit(graphdef, state, b[0], b[1]),
    len(images),
    (to_float(np.asarray(images)), _labels_for(model, labels)),
    batch_size,
  )


# ----------------------------------------------------------------------------- samplers


def _class_rng(seed: int, c: int) -> np.random.Generator:
  return np.random.default_rng([seed, c])  # per class: adding a class leaves the others as is


def _class_indices(train: ArrayDataset, c: int) -> np.ndarray:
  idx = np.flatnonzero(train.labels == c)
  if idx.size == 0:
    raise ValueError(f"class {train.class_names[c]!r} has no training images to sample from")
  return idx


def _assemble(
  model, train, labels, z, seed, sampler, generator, options, batch_size=256, images=None, **prov
) -> SyntheticSet:
  n = len(labels)
  if images is None:
    images = _decode(model, z, labels, batch_size)
  src = prov.get("source_index", np.full(n, -1))
  src_b = prov.get("source_index_b", np.full(n, -1))
  files = lambda s: np.where(s >= 0, train.files[np.maximum(s, 0)], "") if n else []  # noqa: E731
  return SyntheticSet(
    images=images,
    labels=np.asarray(labels, np.int32),
    class_names=train.class_names,
    generator=np.full(n, generator or getattr(model, "kind", "model")),
    sampler=np.full(n, sampler),
    seed=np.full(n, seed),
    source_index=src,
    source_file=files(src),
    source_index_b=src_b,
    source_file_b=files(src_b),
    mix=prov.get("mix", np.full(n, np.nan)),
    component=prov.get("component", np.full(n, -1)),
    options=options,
  )


def sample_prior(model, train, per_class, seed, *, temperature=1.0, generator="", batch_size=256):
  """CVAE: ``z ~ N(0, temperature^2 I)`` decoded with label c."""
  if not getattr(model, "conditional", False):
    raise ValueError(
      f"sampler 'prior' cannot make per-class images with an unconditional "
      f"{getattr(model, 'kind', 'model')!r}: its prior carries no class. Use a conditional "
      "model (cvae) or a posterior-based sampler (posterior_jitter, interpolation, gmm)."
    )
  zs = [
    temperature * _class_rng(seed, c).standard_normal((per_class, model.latent_dim)) for c in range(train.num_classes)
  ]
  labels = np.repeat(np.arange(train.num_classes), per_class)
  return _assemble(
    model, train, labels, np.concatenate(zs), seed, "prior", generator, {"temperature": temperature}, batch_size
  )


def sample_posterior_jitter(
  model, train, per_class, seed, *, temperature=1.0, noise_scale=0.1, generator="", batch_size=256
):
  """Real image of class c -> encode -> jitter the code -> decode (see module doc for DAE)."""
  zs, srcs = [], []
  for c in range(train.num_classes):
    rng, pool = _class_rng(seed, c), _class_indices(train, c)
    src = rng.choice(pool, per_class, replace=True)
    eps = rng.standard_normal((per_class, model.latent_dim))
    if getattr(model, "kind", "") == "dae":
      codes, _ = _encode(model, train.images[pool], train.labels[pool], batch_size)
      pos = np.searchsorted(pool, src)
      zs.append(codes[pos] + temperature * noise_scale * codes.std(0) * eps)
    else:
      mean, logvar = _encode(model, train.images[src], train.labels[src], batch_size)
      zs.append(mean + temperature * np.exp(0.5 * logvar) * eps)
    srcs.append(src)
  src = np.concatenate(srcs)
  return _assemble(
    model,
    train,
    train.labels[src],
    np.concatenate(zs),
    seed,
    "posterior_jitter",
    generator,
    {"temperature": temperature, "noise_scale": noise_scale},
    batch_size,
    source_index=src,
  )


def sample_interpolation(model, train, per_class, seed, *, t_range=(0.2, 0.8), generator="", batch_size=256):
  """Two real images of class c, ``z = (1 - t) mean_a + t mean_b``."""
  lo, hi = map(float, t_range)
  if not 0.0 <= lo <= hi <= 1.0:
    raise ValueError(f"t_range must satisfy 0 <= low <= high <= 1, got {t_range!r}")
  a_all, b_all, t_all = [], [], []
  for c in range(train.num_classes):
    rng, pool = _class_rng(seed, c), _class_indices(train, c)
    ia = rng.integers(0, len(pool), per_class)
    # a distinct partner: shift by 1..len-1 (mod len); a single-image class pairs with itself
    ib = (ia + rng.integers(1, max(len(pool), 2), per_class)) % len(pool)
    a_all.append(pool[ia])
    b_all.append(pool[ib])
    t_all.append(rng.uniform(lo, hi, per_class))
  a, b, t = map(np.concatenate, (a_all, b_all, t_all))
  ua, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
  mean, _ = _encode(model, train.images[ua], train.labels[ua], batch_size)
  za, zb = mean[inv[: len(a)]], mean[inv[len(a) :]]
  z = (1.0 - t[:, None]) * za + t[:, None] * zb
  return _assemble(
    model,
    train,
    train.labels[a],
    z,
    seed,
    "interpolation",
    generator,
    {"t_range": [lo, hi]},
    batch_size,
    source_index=a,
    source_index_b=b,
    mix=t,
  )


def sample_gmm(
  model,
  train,
  per_class,
  seed,
  *,
  components=5,
  temperature=1.0,
  var_floor=1e-3,
  max_iter=200,
  generator="",
  batch_size=256,
):
  """Per-class diagonal GMM on the latent means of the class's training images."""
  zs, comps = [], []
  for c in range(train.num_classes):
    pool = _class_indices(train, c)
    mean, _ = _encode(model, train.images[pool], train.labels[pool], batch_size)
    gmm = fit_diag_gmm(mean, components, seed=seed + c, var_floor=var_floor, max_iter=max_iter)
    z, comp = gmm.sample(per_class, _class_rng(seed, c), temperature)
    zs.append(z)
    comps.append(comp)
  labels = np.repeat(np.arange(train.num_classes), per_class)
  return _assemble(
    model,
    train,
    labels,
    np.concatenate(zs),
    seed,
    "gmm",
    generator,
    {"components": components, "temperature": temperature, "var_floor": var_floor},
    batch_size,
    component=np.concatenate(comps),
  )


def _corruption_sources(train, per_class, seed) -> np.ndarray:
  """The real images `denoise` and `noise_blur` corrupt (the same ones for the same seed)."""
  return np.concatenate(
    [_class_rng(seed, c).choice(_class_indices(train, c), per_class) for c in range(train.num_classes)]
  )


def sample_denoise(model, train, per_class, seed, *, noise: NoiseConfig | None = None, generator="", batch_size=256):
  """DAE: corrupt a real image of class c with ``noise`` and reconstruct it."""
  noise = noise if noise is not None else getattr(model, "noise", None)
  if not isinstance(noise, NoiseConfig):
    raise ValueError(
      f"sampler 'denoise' needs noise=NoiseConfig(...) (the model has no 'noise' attribute), got {noise!r}"
    )
  src = _corruption_sources(train, per_class, seed)
  graphdef, state = nnx.split(model)
  key = jax.random.key(seed)
  out = _batched(
    lambda x, b: _denoise_jit(graphdef, state, x, jax.random.fold_in(key, b), noise),
    len(src),
    to_float(train.images[src]),
    batch_size,
  )
  return _assemble(
    model,
    train,
    train.labels[src],
    None,
    seed,
    "denoise",
    generator,
    {"noise": noise},
    images=np.asarray(from_float(out)),
    source_index=src,
  )


def _blur_sigma(sigma) -> float:
  if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.integer, np.floating)):
    raise ValueError(f"blur sigma must be a number >= 0 (pixels), got {sigma!r}")
  if not (math.isfinite(sigma) and sigma >= 0):
    raise ValueError(f"blur sigma must be a finite number >= 0 (pixels), got {sigma!r}")
  return float(sigma)


def gaussian_blur(images, sigma: float) -> jax.Array:
  """Gaussian blur (std ``sigma`` pixels, separable, mirrored borders) of NHWC images: uint8 or float
  in [0, 1] in, float32 out. ``sigma = 0``: unchanged."""
  x = to_float(images) if np.asarray(images).dtype == np.uint8 else jnp.asarray(images, jnp.float32)
  return _blur_jit(jnp.asarray(x), _blur_sigma(sigma))


def sample_noise_blur(
  model, train, per_class, seed, *, noise: NoiseConfig, blur_sigma: float, generator="", batch_size=256
):
  """Control without a model (``model`` is ignored, may be None): the real images ``denoise`` picks
  with this seed, corrupted with ``noise`` (the same draws as ``denoise`` with the same batch_size)
  and blurred with std ``blur_sigma`` pixels."""
  del model
  if not isinstance(noise, NoiseConfig):
    raise ValueError(f"sampler 'noise_blur' needs noise=NoiseConfig(...) (the DAE's corruption), got {noise!r}")
  sigma = _blur_sigma(blur_sigma)
  src = _corruption_sources(train, per_class, seed)
  key = jax.random.key(seed)
  out = _batched(
    lambda x, b: _noise_blur_jit(x, jax.random.fold_in(key, b), noise, sigma),
    len(src),
    to_float(train.images[src]),
    batch_size,
  )
  return _assemble(
    None,
    train,
    train.labels[src],
    None,
    seed,
    "noise_blur",
    generator or "noise_blur",
    {"noise": noise, "blur_sigma": sigma},
    images=np.asarray(from_float(out)),
    source_index=src,
  )


def calibrate_blur_sigma(
  denoise_fn: Callable, images, noise: NoiseConfig, sigmas, seed: int = 0, batch_size: int = 256
) -> tuple[float, dict[float, float]]:
  """The blur that matches a DAE: ``(best_sigma, {sigma: mse})``.

  ``images`` (validation images, uint8 or float in [0, 1]) are corrupted once with ``noise`` (key
  from ``seed``); ``denoise_fn`` maps those corrupted float images to denoised ones (e.g. a trained
  DAE's ``reconstruct``). Each sigma's blur of the same corrupted images is compared with them by
  mean squared error (float images in [0, 1]); the smallest wins (a tie goes to the smaller sigma).
  """
  if not isinstance(noise, NoiseConfig):
    raise ValueError(f"noise must be a NoiseConfig, got {noise!r}")
  grid = sorted({_blur_sigma(s) for s in sigmas})
  if not grid:
    raise ValueError("calibrate_blur_sigma needs at least one sigma")
  x = to_float(images) if np.asarray(images).dtype == np.uint8 else np.asarray(images, np.float32)
  if x.ndim != 4 or len(x) == 0:
    raise ValueError(f"calibrate_blur_sigma needs a non-empty NHWC batch of images, got shape {x.shape}")
  key = jax.random.key(seed)

  def errors(batch, b):
    noisy = _corrupt_jit(batch, jax.random.fold_in(key, b), noise)
    target = jnp.asarray(denoise_fn(noisy), jnp.float32)
    if target.shape != noisy.shape:
      raise ValueError(f"denoise_fn must return images of shape {noisy.shape}, got {target.shape}")
    return jnp.stack([jnp.mean(jnp.square(_blur_jit(noisy, s) - target), axis=(1, 2, 3)) for s in grid], axis=1)

  mse = _batched(errors, len(x), x, batch_size).mean(0)
  table = {s: float(m) for s, m in zip(grid, mse)}
  return grid[int(np.argmin(mse))], table


def _counterfactual_sources(train: ArrayDataset, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(source indices, target classes): per target c, images of the other classes (uniform, with
  replacement), seeded by ``(seed, c)``."""
  if train.num_classes < 2:
    raise ValueError(f"sampler 'counterfactual' needs at least two classes, got {train.class_names}")
  for c in range(train.num_classes):
    _class_indices(train, c)  # a class without images has no mean to move towards or from
  src = [_class_rng(seed, c).choice(np.flatnonzero(train.labels != c), per_class) for c in range(train.num_classes)]
  return np.concatenate(src), np.repeat(np.arange(train.num_classes), per_class)


def counterfactual_latents(model, train: ArrayDataset, per_class: int, seed: int, *, strength=1.0, batch_size=256):
  """What ``sample_counterfactual`` decodes: ``(z, target labels, source indices, method)``.

  Conditional model ("label_swap"): ``z`` is the posterior mean of the source image encoded with its
  own label (decoded with the target). Unconditional ("latent_direction"): ``z = mean(source) +
  strength * (mu_target - mu_source_class)``, ``mu_k`` the mean of the latent means of ``train``'s
  class-k images.
  """
  if isinstance(strength, bool) or not isinstance(strength, (int, float, np.integer, np.floating)):
    raise ValueError(f"strength must be a number >= 0, got {strength!r}")
  if not (math.isfinite(strength) and strength >= 0):
    raise ValueError(f"strength must be a finite number >= 0, got {strength!r}")
  src, target = _counterfactual_sources(train, per_class, seed)
  if getattr(model, "conditional", False):
    if strength != 1:
      raise ValueError(
        f"a conditional {getattr(model, 'kind', 'model')!r} swaps the label (method label_swap): "
        f"strength must be 1, got {strength!r}"
      )
    z, _ = _encode(model, train.images[src], train.labels[src], batch_size)
    return z, target, src, "label_swap"
  mean, _ = _encode(model, train.images, train.labels, batch_size)
  mean = np.asarray(mean, np.float64)
  centres = np.stack([mean[train.labels == k].mean(0) for k in range(train.num_classes)])
  z = mean[src] + float(strength) * (centres[target] - centres[train.labels[src]])
  return z.astype(np.float32), target, src, "latent_direction"


def sample_counterfactual(model, train, per_class, seed, *, strength=1.0, generator="", batch_size=256):
  """A real image of another class turned into class c (see :func:`counterfactual_latents`)."""
  z, target, src, method = counterfactual_latents(
    model, train, per_class, seed, strength=strength, batch_size=batch_size
  )
  mix = np.full(len(src), float(strength) if method == "latent_direction" else np.nan)
  return _assemble(
    model,
    train,
    target,
    z,
    seed,
    "counterfactual",
    generator,
    {"strength": float(strength), "method": method},
    batch_size,
    source_index=src,
    mix=mix,
  )


SAMPLERS: dict[str, Callable[..., SyntheticSet]] = {
  "prior": sample_prior,
  "posterior_jitter": sample_posterior_jitter,
  "interpolation": sample_interpolation,
  "gmm": sample_gmm,
  "denoise": sample_denoise,
  "counterfactual": sample_counterfactual,
  "noise_blur": sample_noise_blur,
}


# Why a sampler may not apply, added to the registry's refusal.
_SAMPLER_HINTS = {
  "prior": "It makes per-class images only with a conditional model (cvae), as an unconditional prior carries "
  "no class; otherwise use a posterior-based sampler (posterior_jitter, interpolation, gmm, counterfactual).",
  "denoise": "It needs a DAE (it reconstructs corrupted images).",
}


def synthesize(
  model, train: ArrayDataset, per_class: int, sampler: str, seed: int, generator_name: str = "", **options
) -> SyntheticSet:
  """Validate the request (the sampler must apply to the model's kind, `vaeaug.kinds`) and run
  ``SAMPLERS[sampler]``. ``model`` may be None for a model-free sampler (``noise_blur``)."""
  if sampler not in SAMPLERS:
    raise ValueError(f"unknown sampler {sampler!r}; choose from {sorted(SAMPLERS)}")
  if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
    raise ValueError(f"per_class must be a positive int, got {per_class!r}")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}")
  kind = getattr(model, "kind", None)
  if model is not None and sampler not in kinds.MODEL_FREE_SAMPLERS and kind not in kinds.names():
    raise ValueError(
      f"cannot check sampler {sampler!r} for a model of kind {kind!r}: not a registered generator kind "
      f"{kinds.names()} (register it with vaeaug.kinds.register)"
    )
  try:
    kinds.check_sampler(kind, sampler)
  except ValueError as e:
    hint = _SAMPLER_HINTS.get(sampler)
    raise ValueError(f"{e}. {hint}" if hint else str(e)) from None
  if getattr(model, "conditional", False) and model.num_classes != train.num_classes:
    raise ValueError(
      f"conditional model has {model.num_classes} classes, the training set {train.num_classes} ({train.class_names})"
    )
  fn = SAMPLERS[sampler]
  parameters = inspect.signature(fn).parameters
  allowed = set(parameters) - {"model", "train", "per_class", "seed", "generator"}
  if set(options) - allowed:
    raise ValueError(
      f"unknown option(s) {sorted(set(options) - allowed)} for sampler {sampler!r}; allowed: {sorted(allowed)}"
    )
  missing = sorted(k for k in allowed - set(options) if parameters[k].default is inspect.Parameter.empty)
  if missing:
    raise ValueError(f"sampler {sampler!r} needs option(s) {missing}")
  return fn(model, train, int(per_class), int(seed), generator=generator_name, **options)


# ----------------------------------------------------------------------------- GMM (scikit-learn)


@dataclasses.dataclass(frozen=True)
class DiagGMM:
  """A fitted diagonal-covariance mixture; sampled with the caller's generator (seeded per class)."""

  weights: np.ndarray  # (K,)
  means: np.ndarray  # (K, D)
  variances: np.ndarray  # (K, D)
  log_likelihood: float  # mean per sample, at the end of EM
  n_iter: int
  converged: bool

  def sample(self, n: int, rng: np.random.Generator, temperature: float = 1.0):
    comp = rng.choice(len(self.weights), n, p=self.weights / self.weights.sum())
    eps = rng.standard_normal((n, self.means.shape[1]))
    return self.means[comp] + temperature * np.sqrt(self.variances[comp]) * eps, comp


def fit_diag_gmm(
  x, components: int = 5, seed: int = 0, max_iter: int = 200, tol: float = 1e-6, var_floor: float = 1e-3
) -> DiagGMM:
  """scikit-learn's `GaussianMixture(covariance_type="diag")`, k-means init (seeded).

  ``components`` is capped by the number of distinct points (a cell's class may have a handful of
  images). ``var_floor`` times the mean per-dimension data variance (1 if the data has none) is
  added to every variance (`reg_covar`), so a component on a single point does not collapse to a
  delta.
  """
  from sklearn.mixture import GaussianMixture  # deferred: only the gmm sampler needs it

  x = np.asarray(x, np.float64)
  k = max(1, min(int(components), len(np.unique(x, axis=0))))
  spread = x.var(0).mean()
  mixture = GaussianMixture(
    n_components=k,
    covariance_type="diag",
    tol=tol,
    reg_covar=var_floor * (spread if spread > 0 else 1.0),
    max_iter=max_iter,
    random_state=seed,
  )
  if len(x) == 1:  # scikit-learn needs as many samples as components; one point is its own mean
    mixture.fit(np.concatenate([x, x]))
  else:
    mixture.fit(x)
  return DiagGMM(
    weights=mixture.weights_,
    means=mixture.means_,
    variances=mixture.covariances_,
    log_likelihood=float(mixture.score(x)),
    n_iter=int(mixture.n_iter_),
    converged=bool(mixture.converged_),
  )


# ----------------------------------------------------------------------------- filtering


def _probabilities(synthetic: SyntheticSet, predict_proba, batch_size: int) -> np.ndarray:
  n = len(synthetic)
  probs = [np.asarray(predict_proba(synthetic.images[s : s + batch_size])) for s in range(0, n, batch_size)]
  probs = np.concatenate(probs) if probs else np.zeros((0, len(synthetic.class_names)))
  if probs.shape != (n, len(synthetic.class_names)):
    raise ValueError(f"predict_proba must return shape ({n}, {len(synthetic.class_names)}), got {probs.shape}")
  return probs


def _keep(synthetic: SyntheticSet, keep: np.ndarray, **head):
  kept = synthetic.take(np.flatnonzero(keep))
  total, kept_n = synthetic.class_counts(), kept.class_counts()
  report = {
    **head,
    "kept": kept_n,
    "total": total,
    "acceptance": {c: (kept_n[c] / total[c] if total[c] else None) for c in total},
  }
  return kept, report


def filter_by_classifier(synthetic: SyntheticSet, predict_proba, tau: float, batch_size: int = 256):
  """Keep samples with ``predict_proba(images)[i, label_i] >= tau``; returns (kept, report)."""
  probs = _probabilities(synthetic, predict_proba, batch_size)
  return _keep(synthetic, probs[np.arange(len(synthetic)), synthetic.labels] >= tau, tau=float(tau))


def filter_by_decision(synthetic: SyntheticSet, predict_proba, threshold: float | None = None, batch_size: int = 256):
  """Keep samples whose classifier decision is their label; returns (kept, report).

  Two classes: the decision is class 1 iff ``p[:, 1] >= threshold`` (the operating threshold the
  classifier chose on validation; None: 0.5). More classes: argmax (``threshold`` must be None).
  The report is `filter_by_classifier`'s with ``threshold`` (None for argmax) and ``rule``.
  """
  num_classes = len(synthetic.class_names)
  if threshold is not None:
    if num_classes != 2:
      raise ValueError(f"a decision threshold needs two classes, got {num_classes} {synthetic.class_names}")
    if isinstance(threshold, bool) or not (isinstance(threshold, (int, float, np.number)) and 0 <= threshold <= 1):
      raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
  probs = _probabilities(synthetic, predict_proba, batch_size)
  if num_classes == 2:
    threshold = 0.5 if threshold is None else float(threshold)
    decision = (probs[:, 1] >= threshold).astype(np.int64)
  else:
    decision = probs.argmax(1)
  rule = "threshold" if num_classes == 2 else "argmax"
  return _keep(synthetic, decision == synthetic.labels, threshold=threshold, rule=rule)


def synthesize_filtered(
  model,
  train: ArrayDataset,
  per_class: int,
  sampler: str,
  seed: int,
  predict_proba,
  tau: float | None = None,
  max_rounds: int = 5,
  max_factor: float = 10.0,
  generator_name: str = "",
  decision_threshold: float | None = None,
  **options,
):
  """Sample and filter in rounds until ``per_class`` accepted images per class.

  Filter: with ``tau``, `filter_by_classifier` (probability of the label >= tau); with
  ``decision_threshold`` or with neither, `filter_by_decision` (the classifier's decision at that
  threshold, 0.5 / argmax when None). Giving both is an error.

  Round r uses seed ``seed`` (r = 0) or one derived from ``(seed, r)``, and draws enough for
  the neediest class at the acceptance seen so far (at most ``max_factor * per_class``).
  Returns (set, report); a class short of ``per_class`` after ``max_rounds`` is listed in
  ``report["shortfall"]`` and warned about.
  """
  if tau is not None and decision_threshold is not None:
    raise ValueError(
      f"give tau (confidence filter) or decision_threshold (decision filter), not both: {tau}, {decision_threshold}"
    )
  if tau is None:
    accept = functools.partial(filter_by_decision, predict_proba=predict_proba, threshold=decision_threshold)
  else:
    accept = functools.partial(filter_by_classifier, predict_proba=predict_proba, tau=tau)
  names = train.class_names
  need = {c: per_class for c in names}
  generated, accepted = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
  parts, seeds, rate = [], [], 1.0
  for r in range(max_rounds):
    if not any(need.values()):
      break
    round_seed = seed if r == 0 else int(np.random.SeedSequence([seed, r]).generate_state(1)[0])
    seeds.append(round_seed)
    n = min(math.ceil(max(need.values()) / max(rate, 1.0 / max_factor)), math.ceil(max_factor * per_class))
    syn = synthesize(model, train, n, sampler, round_seed, generator_name, **options)
    kept, rep = accept(syn)
    take = []
    for ci, c in enumerate(names):
      generated[c] += rep["total"][c]
      accepted[c] += rep["kept"][c]
      idx = np.flatnonzero(kept.labels == ci)[: need[c]]
      need[c] -= len(idx)
      take.append(idx)
    parts.append(kept.take(np.concatenate(take)))
    needy = [c for c in names if need[c]]
    rate = min((accepted[c] / generated[c] for c in needy), default=1.0)
  result = functools.reduce(SyntheticSet.concatenate, parts)
  shortfall = {c: k for c, k in need.items() if k}
  report = {
    "tau": None if tau is None else float(tau),
    "filter": "confidence" if tau is not None else "decision",
    "threshold": rep.get("threshold") if seeds else decision_threshold,
    "per_class": per_class,
    "rounds": len(seeds),
    "seeds": seeds,
    "generated": generated,
    "accepted": accepted,
    "kept": result.class_counts(),
    "acceptance": {c: accepted[c] / generated[c] if generated[c] else None for c in names},
    "shortfall": shortfall,
    "complete": not shortfall,
  }
  if shortfall:
    warnings.warn(
      f"synthesize_filtered: after {len(seeds)} rounds ({_filter_name(tau, report['threshold'])}) still short "
      f"of {per_class} per class: missing {shortfall}",
      stacklevel=2,
    )
  return result, report


def _filter_name(tau, threshold) -> str:
  return f"tau={tau}" if tau is not None else f"decision threshold={threshold}"


def combine(real: ArrayDataset, synthetic: SyntheticSet, name: str | None = None) -> ArrayDataset:
  """Real + synthetic as one ArrayDataset, both carrying the provenance extras
  (real rows: ``synthetic=False``, generator/sampler "real", no source, mix nan)."""
  n = len(real)
  prov = {
    "synthetic": np.zeros(n, bool),
    "generator": np.full(n, "real"),
    "sampler": np.full(n, "real"),
    "seed": np.full(n, -1, np.int64),
    "source_index": np.full(n, -1, np.int64),
    "source_file": np.full(n, ""),
    "source_index_b": np.full(n, -1, np.int64),
    "source_file_b": np.full(n, ""),
    "mix": np.full(n, np.nan, np.float32),
    "component": np.full(n, -1, np.int64),
  }
  if real.extras:  # ArrayDataset.concatenate needs identical extras keys on both sides
    raise ValueError(f"real dataset has extras {sorted(real.extras)}; drop them before combining")
  tagged = ArrayDataset(
    real.images, real.labels, real.files, real.groups, real.class_names, extras=prov, name=real.name
  )
  return tagged.concatenate(synthetic.to_dataset(provenance=True), name=name)
