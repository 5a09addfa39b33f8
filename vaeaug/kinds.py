"""The registry of generator kinds: one place that says, per kind, how to build it, what it is
trained to minimise, which samplers and figures apply and which sampler is its default.

Everything else (`vaeaug.generators` training, `vaeaug.synthesis` sampler checks, the figures,
`experiments.generator_eval`, the compare sweep's arms, the validation of configs, the benchmark)
looks kinds up here, so adding a kind is one module that calls `register` (plus its tests)::

    from vaeaug import kinds

    kinds.register(kinds.GeneratorKind(
      name="myvae",
      build=lambda *, image_size, num_classes, rngs, dtype, **options: MyVAE(image_size=image_size, ...),
      options=("latent_dim", "channels"),        # generator-config fields handed to `build`
      losses=kinds.vae_losses,                    # per-example terms; "loss" is minimised
      samplers=("posterior_jitter", "interpolation", "gmm", "counterfactual"),
      default_sampler="posterior_jitter",
    ))

A model built by a kind has the interface of `vaeaug.models.autoencoders.Autoencoder`: `kind`,
`latent_dim`, `conditional`, `num_classes`, `likelihood`, `encode`, `decode`, `reconstruct`,
`generate`, `sample`, `to_image`, `output_log_scale`. The built-in kinds are DAE, VAE and CVAE
(`vaeaug.models.autoencoders`) and the residual VAE / CVAE (`vaeaug.models.residual`, registered by
that module alone).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from vaeaug.models import autoencoders
from vaeaug.models import noise as noise_lib

__all__ = [
  "FIGURES",
  "GeneratorKind",
  "LossOptions",
  "check_sampler",
  "dae_losses",
  "get",
  "names",
  "register",
  "vae_losses",
]

# Figures `vaeaug.generator_figures` knows how to draw.
FIGURES = ("reconstructions", "samples", "interpolations", "curves")
# Samplers that use no model at all (controls): any kind may be asked for them.
MODEL_FREE_SAMPLERS = ("noise_blur",)


@dataclasses.dataclass(frozen=True)
class LossOptions:
  """Static (hashable) loss settings from the generator config; `beta` is traced (warm-up)."""

  noise: noise_lib.NoiseConfig = noise_lib.NoiseConfig()
  # Free bits (Kingma et al. 2016): each latent dimension's KL is counted as at least this many nats
  # per example in the training loss, so the posterior is not pushed onto the prior early on.
  free_bits: float = 0.0


@dataclasses.dataclass(frozen=True)
class GeneratorKind:
  name: str
  # build(*, image_size, num_classes, rngs, dtype, **options) -> model
  build: Callable[..., nnx.Module]
  # Generator-config fields passed to `build` when set (not None).
  options: tuple[str, ...]
  # losses(model, images, labels, key, *, train, beta, options: LossOptions) -> per-example terms (N,), nats
  # per image; "loss" is minimised in training, and its validation mean at beta = 1 selects the epoch.
  losses: Callable[..., dict]
  samplers: tuple[str, ...]
  default_sampler: str
  figures: tuple[str, ...] = FIGURES
  conditional: bool = False  # needs labels to encode / decode
  variational: bool = True  # has a posterior and a prior (an ELBO)
  description: str = ""

  def __post_init__(self):
    if self.default_sampler not in self.samplers:
      raise ValueError(f"kind {self.name!r}: default sampler {self.default_sampler!r} is not in {self.samplers}")
    unknown = set(self.figures) - set(FIGURES)
    if unknown:
      raise ValueError(f"kind {self.name!r}: unknown figures {sorted(unknown)}; known: {FIGURES}")

  def create(self, *, image_size: int, num_classes: int, rngs: nnx.Rngs, dtype="float32", **options) -> nnx.Module:
    unknown = sorted(set(options) - set(self.options))
    if unknown:
      raise ValueError(f"unknown option(s) {unknown} for generator kind {self.name!r}; allowed: {list(self.options)}")
    return self.build(image_size=image_size, num_classes=num_classes, rngs=rngs, dtype=dtype, **options)


_KINDS: dict[str, GeneratorKind] = {}


def register(kind: GeneratorKind, *, replace: bool = False) -> GeneratorKind:
  """Add `kind` to the registry (`replace=True` to redefine one, e.g. in a test)."""
  if kind.name in _KINDS and not replace:
    raise ValueError(f"generator kind {kind.name!r} is already registered")
  _KINDS[kind.name] = kind
  return kind


def unregister(name: str) -> None:
  _KINDS.pop(name, None)


def get(name: str) -> GeneratorKind:
  _load_builtin()
  if name not in _KINDS:
    raise ValueError(f"unknown generator kind {name!r}; choose one of {names()}")
  return _KINDS[name]


def names() -> tuple[str, ...]:
  _load_builtin()
  return tuple(_KINDS)


def of(model) -> GeneratorKind:
  """The registered kind of a built model."""
  return get(getattr(model, "kind", None))


def check_sampler(kind: str | None, sampler: str) -> None:
  """ValueError unless `sampler` applies to generators of `kind` (None: no model)."""
  if sampler in MODEL_FREE_SAMPLERS:
    return
  if kind is None:
    raise ValueError(f"sampler {sampler!r} needs a generator; only {MODEL_FREE_SAMPLERS} run without one")
  allowed = get(kind).samplers
  if sampler not in allowed:
    raise ValueError(f"sampler {sampler!r} does not apply to a {kind!r} generator; choose one of {allowed}")


# ----------------------------------------------------------------------------- losses


def _log_scale(model):
  return model.output_log_scale() if model.likelihood == "gaussian" else None


def dae_losses(model, images, labels, key, *, train: bool, beta, options: LossOptions) -> dict:
  """Denoising: reconstruct the clean images from copies corrupted with `options.noise`."""
  del labels, beta
  noise_key, _ = jax.random.split(key)
  noisy = noise_lib.corrupt(images, noise_key, options.noise)
  code, _ = model.encode(noisy, train=train)
  nll = autoencoders.reconstruction_nll(model.decode(code, train=train), images, model.likelihood, _log_scale(model))
  return {"loss": nll, "nll": nll}


def vae_losses(model, images, labels, key, *, train: bool, beta, options: LossOptions) -> dict:
  """One-sample negative ELBO with the KL weighted by `beta` (and floored per dimension by free bits in
  the training loss only; `negative_elbo` is always the true bound)."""
  labels = labels if model.conditional else None
  mean, logvar = model.encode(images, train=train, labels=labels)
  z = autoencoders.reparameterize(mean, logvar, key)
  nll = autoencoders.reconstruction_nll(
    model.decode(z, train=train, labels=labels), images, model.likelihood, _log_scale(model)
  )
  kl_per_dim = 0.5 * (jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar)
  kl = kl_per_dim.sum(-1)
  penalised = jnp.maximum(kl_per_dim, options.free_bits).sum(-1) if train and options.free_bits > 0 else kl
  return {"loss": nll + beta * penalised, "nll": nll, "kl": kl, "negative_elbo": nll + kl}


# ----------------------------------------------------------------------------- built-in kinds

_CONV_OPTIONS = ("latent_dim", "channels", "upsample", "likelihood", "learned_scale")
_LATENT_SAMPLERS = ("posterior_jitter", "interpolation", "gmm", "counterfactual")


def _autoencoder(kind: str):
  def build(*, image_size, num_classes, rngs, dtype, **options):
    return autoencoders.create_autoencoder(
      kind, image_size=image_size, num_classes=num_classes, rngs=rngs, dtype=dtype, **options
    )

  return build


register(
  GeneratorKind(
    name="dae",
    build=_autoencoder("dae"),
    options=_CONV_OPTIONS,
    losses=dae_losses,
    samplers=("denoise", "posterior_jitter", "interpolation", "gmm", "counterfactual"),
    default_sampler="denoise",
    variational=False,
    description="denoising autoencoder (plain conv), trained on corrupted copies",
  )
)
register(
  GeneratorKind(
    name="vae",
    build=_autoencoder("vae"),
    options=_CONV_OPTIONS,
    losses=vae_losses,
    samplers=_LATENT_SAMPLERS,
    default_sampler="posterior_jitter",
    description="variational autoencoder (plain conv)",
  )
)
register(
  GeneratorKind(
    name="cvae",
    build=_autoencoder("cvae"),
    options=_CONV_OPTIONS,
    losses=vae_losses,
    samplers=("prior", *_LATENT_SAMPLERS),
    default_sampler="prior",
    conditional=True,
    description="class-conditional VAE (plain conv)",
  )
)

# Modules that register further kinds when imported (each is the only file its kind needs).
BUILTIN_MODULES = ("vaeaug.models.residual",)
_loaded = False


def _load_builtin() -> None:
  global _loaded
  if not _loaded:
    _loaded = True
    for module in BUILTIN_MODULES:
      importlib.import_module(module)
