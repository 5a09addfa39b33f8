"""Tests of the residual VAE / CVAE (`vaeaug.models.residual`) and its generator kinds "rvae" / "rcvae".

Kept fast: tiny widths (8, 16), 16-32 px, shapes by abstract tracing (`nnx.eval_shape` /
`jax.eval_shape`: no compilation) where values do not matter.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from vaeaug import kinds
from vaeaug.models import residual

TINY = {"channels": (8, 16), "latent_dim": 8}


def key(seed: int) -> jax.Array:
  # "rbg" keys: their random ops compile faster on CPU (model init compiles one per parameter shape)
  return jax.random.key(seed, impl="rbg")


def tiny(image_size: int = 16, **overrides) -> residual.ResidualVAE:
  return residual.ResidualVAE(image_size=image_size, rngs=nnx.Rngs(key(0)), **{**TINY, **overrides})


def abstract(**kwargs) -> residual.ResidualVAE:
  return nnx.eval_shape(lambda: residual.ResidualVAE(rngs=nnx.Rngs(0), **kwargs))


def count_params(model) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("image_size", [32, 64, 128])
def test_shapes_at_32_64_128_px(image_size):
  """Default widths (4 stages: a 2x2 / 4x4 / 8x8 bottleneck), traced abstractly."""
  model = abstract(image_size=image_size, num_classes=2)
  assert model.kind == "rcvae" and model.variational and model.bottleneck_shape == (image_size // 16,) * 2 + (256,)
  x = jax.ShapeDtypeStruct((2, image_size, image_size, 3), jnp.float32)
  labels = jnp.zeros((2,), jnp.int32)
  mean, logvar = nnx.eval_shape(lambda m, x: m.encode(x, train=True, labels=labels), model, x)
  assert mean.shape == logvar.shape == (2, 128) and mean.dtype == jnp.float32
  out = nnx.eval_shape(lambda m, z: m.decode(z, train=True, labels=labels), model, mean)
  assert out.shape == (2, image_size, image_size, 3) and out.dtype == jnp.float32


def test_bfloat16_compute_returns_float32():
  model = abstract(image_size=32, dtype="bfloat16", channels=(8, 16), latent_dim=8)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  mean, _ = nnx.eval_shape(lambda m, x: m.encode(x, train=False), model, x)
  out = nnx.eval_shape(lambda m, z: m.decode(z, train=False), model, mean)
  assert mean.dtype == out.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


@functools.cache
def _conditional():
  return tiny(num_classes=2)


def test_conditional_labels_are_required_and_used():
  model = _conditional()
  x = jax.random.uniform(key(1), (2, 16, 16, 3))
  with pytest.raises(ValueError, match="needs labels"):
    model.encode(x, train=False)
  with pytest.raises(ValueError, match="needs labels"):
    model.decode(jnp.zeros((2, 8)), train=False)
  with pytest.raises(ValueError, match="labels must be"):
    model.encode(x, train=False, labels=jnp.zeros((2, 3)))
  ids, one_hot = jnp.array([0, 1]), jax.nn.one_hot(jnp.array([0, 1]), 2)
  np.testing.assert_allclose(
    model.encode(x, train=False, labels=ids)[0], model.encode(x, train=False, labels=one_hot)[0], atol=1e-6
  )
  z = jnp.ones((2, 8))
  a = model.generate(z, labels=jnp.array([0, 0]))
  b = model.generate(z, labels=jnp.array([1, 1]))
  assert float(jnp.abs(a - b).max()) > 1e-4  # the label changes the decoded image
  assert (
    float(jnp.abs(model.encode(x, train=False, labels=ids)[0] - model.encode(x, train=False, labels=1 - ids)[0]).max())
    > 1e-5
  )


def test_bounded_scale_stays_inside_bounds_and_has_a_gradient():
  lo, hi = 0.02, 0.4
  model = tiny(likelihood="gaussian", scale_bounds=(lo, hi), fixed_scale=0.1)
  np.testing.assert_allclose(float(model.output_log_scale()), math.log(0.1), rtol=1e-5)  # starts at fixed_scale
  for raw in (-1e4, -50.0, 0.0, 50.0, 1e4):
    model.scale_logit.set_value(jnp.asarray(raw, jnp.float32))
    log_scale = float(model.output_log_scale())
    assert math.log(lo) - 1e-6 <= log_scale <= math.log(hi) + 1e-6 and math.isfinite(log_scale)
    assert float(model.log_scale) == log_scale
  model.scale_logit.set_value(jnp.asarray(0.0, jnp.float32))
  x = jax.random.uniform(key(2), (2, 16, 16, 3))

  def loss(m):
    return m.reconstruction_nll(m.decode(jnp.zeros((2, 8)), train=False), x).mean()

  grads = nnx.grad(loss)(model)
  assert abs(float(grads.scale_logit.get_value())) > 0
  fixed = tiny(likelihood="gaussian", learned_scale=False, fixed_scale=0.2)
  assert fixed.log_scale is None and float(fixed.output_log_scale()) == pytest.approx(math.log(0.2))
  assert tiny().output_log_scale() is None  # bernoulli


def test_interface_is_float32_and_in_range():
  model = tiny(likelihood="gaussian")
  x = jax.random.uniform(key(3), (3, 16, 16, 3))
  out, mean, logvar = model(x, train=True, rngs=nnx.Rngs(sample=4))
  assert out.shape == x.shape and mean.shape == logvar.shape == (3, 8)
  for images in (
    model.reconstruct(x, train=False),
    model.reconstruct(x, train=False, rngs=5, sample=True),
    model.generate(mean),
    model.sample(key(6), 4),
  ):
    assert images.dtype == jnp.float32 and images.shape[1:] == (16, 16, 3)
    assert float(images.min()) >= 0 and float(images.max()) <= 1
  assert model.reconstruction_nll(out, x).shape == (3,)
  with pytest.raises(ValueError, match="needs rngs"):
    model(x, train=False)
  with pytest.raises(ValueError, match="expects images"):
    model.encode(jnp.zeros((1, 32, 32, 3)), train=False)


@pytest.mark.parametrize(
  "overrides, match",
  [
    ({"image_size": 18}, "divisible"),
    ({"channels": ()}, "channels"),
    ({"channels": (8, 0)}, "channels"),
    ({"latent_dim": 0}, "latent_dim"),
    ({"blocks_per_stage": -1}, "blocks_per_stage"),
    ({"upsample": "transpose"}, "upsample"),
    ({"likelihood": "laplace"}, "likelihood"),
    ({"num_classes": 1}, "num_classes"),
    ({"learned_scale": 1}, "learned_scale"),
    ({"fixed_scale": 0.0}, "fixed_scale"),
    ({"scale_bounds": (0.5, 0.1)}, "scale_bounds"),
    ({"scale_bounds": (0.0, 0.1)}, "scale_bounds"),
    ({"likelihood": "gaussian", "fixed_scale": 0.9}, "inside scale_bounds"),
    ({"activation": "relu6"}, "activation"),
  ],
)
def test_bad_arguments_raise_clear_errors(overrides, match):
  kwargs = {"image_size": 16, **TINY, **overrides}
  with pytest.raises(ValueError, match=match):
    nnx.eval_shape(lambda: residual.ResidualVAE(rngs=nnx.Rngs(0), **kwargs))


def test_kinds_are_registered():
  assert {"rvae", "rcvae"} <= set(kinds.names())
  # abstract (no parameter init to compile): what matters is what the registry builds
  model = nnx.eval_shape(
    lambda: kinds.get("rvae").create(image_size=32, num_classes=2, rngs=nnx.Rngs(0), latent_dim=16, channels=(8, 16))
  )
  assert isinstance(model, residual.ResidualVAE) and model.kind == "rvae" and not model.conditional
  assert kinds.of(model).default_sampler == "posterior_jitter"
  rcvae = kinds.get("rcvae")
  assert rcvae.conditional and rcvae.default_sampler == "prior" and "prior" not in kinds.get("rvae").samplers
  model = nnx.eval_shape(
    lambda: rcvae.create(
      image_size=32, num_classes=3, rngs=nnx.Rngs(0), channels=[8, 16], scale_bounds=[0.05, 0.3], blocks_per_stage=2
    )
  )
  assert (
    model.kind == "rcvae" and model.num_classes == 3 and model.channels == (8, 16) and len(model.enc_blocks[0]) == 2
  )
  with pytest.raises(ValueError, match="unknown option"):
    rcvae.create(image_size=32, num_classes=2, rngs=nnx.Rngs(0), resize_method="bilinear")
  with pytest.raises(ValueError, match="num_classes >= 2"):
    rcvae.create(image_size=32, num_classes=0, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("likelihood, upsample", [("bernoulli", "subpixel"), ("gaussian", "resize")])
def test_a_few_training_steps_reduce_the_loss(likelihood, upsample):
  model = tiny(likelihood=likelihood, upsample=upsample, num_classes=2)
  images = jax.random.uniform(key(7), (8, 16, 16, 3))
  labels = jnp.arange(8) % 2
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
  options = kinds.LossOptions()

  @nnx.jit
  def step(model, optimizer, step_key):
    def loss_fn(model):
      return kinds.vae_losses(model, images, labels, step_key, train=True, beta=0.1, options=options)["loss"].mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer, jax.random.fold_in(key(8), i))) for i in range(12)]
  assert all(map(math.isfinite, losses)) and np.mean(losses[-3:]) < np.mean(losses[:3])


@pytest.mark.parametrize(
  "overrides",
  [
    {"image_size": 64},
    {"image_size": 32, "num_classes": 2, "likelihood": "gaussian", "upsample": "resize", "channels": (8, 16, 32)},
    {"image_size": 32, "blocks_per_stage": 2, "latent_dim": 64, "activation": "silu", "learned_scale": False},
    {"image_size": 32, "channels": (8, 16, 32), "blocks_per_stage": (0, 1, 2), "likelihood": "gaussian"},
  ],
)
def test_torch_twin_has_the_same_parameters(overrides):
  pytest.importorskip("torch")
  from experiments import torch_reference

  model = abstract(**overrides)
  twin = torch_reference.autoencoder(model)
  assert torch_reference.count_params(twin) == count_params(model)
  jax_sizes = sorted(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert sorted(p.numel() for p in twin.parameters()) == jax_sizes


def test_blocks_per_stage_per_resolution_are_mirrored_in_the_decoder():
  model = abstract(image_size=32, channels=(8, 16, 32), blocks_per_stage=(0, 1, 2))
  assert [len(stage) for stage in model.enc_blocks] == [0, 1, 2]
  assert [len(stage) for stage in model.dec_blocks] == [2, 1, 0]  # decoder stages run from deep to full size
  with pytest.raises(ValueError, match="one per stage"):
    abstract(image_size=32, channels=(8, 16, 32), blocks_per_stage=(1, 1))
