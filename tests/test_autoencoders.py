"""Tests of the autoencoders (DAE / VAE / CVAE), their losses, the DAE noise and pixel_shuffle.

Kept fast: tiny channels, 32 px in most tests, shape checks by abstract tracing
(``jax.eval_shape``: no compilation), a few jitted optimisation steps on real face crops.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from PIL import Image

from vaeaug.data import sources
from vaeaug.models import autoencoders as ae
from vaeaug.models import layers
from vaeaug.models.noise import NOISE_KINDS, NoiseConfig, corrupt

# Tiny models with few distinct parameter shapes: on CPU every new shape costs an XLA compile of
# the random initialiser (seconds on a loaded machine), so tests share shapes and cached models.
TINY = {"dae": (8, 8, 8, 8), "vae": (8, 8, 8, 8, 8), "cvae": (8, 8, 8, 8, 8)}
LATENT = 8
# cheaper XLA compile of the jitted train steps (this is a correctness test, not a benchmark)
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def key(seed: int) -> jax.Array:
  """A PRNG key of the "rbg" implementation: its random ops compile ~3x faster on CPU than the
  default threefry (model init compiles one random op per parameter shape). The models do not
  depend on the key implementation; test_noise_jit_and_validation uses default keys."""
  return jax.random.key(seed, impl="rbg")


def tiny(kind: str, image_size: int = 32, seed: int = 0, **overrides):
  overrides.setdefault("channels", TINY[kind])
  overrides.setdefault("latent_dim", LATENT)
  return ae.create_autoencoder(kind, image_size=image_size, num_classes=2, rngs=nnx.Rngs(key(seed)), **overrides)


@functools.cache
def _cached(kind: str, likelihood: str = "bernoulli"):
  return tiny(kind, likelihood=likelihood)


def cached(kind: str, likelihood: str = "bernoulli"):
  """A fresh copy of a cached tiny 32 px model (safe to train / mutate)."""
  return nnx.clone(_cached(kind, likelihood))


# ----------------------------------------------------------------------------- pixel_shuffle


def _pixel_shuffle_reference(x: np.ndarray, r: int) -> np.ndarray:
  n, h, w, cr = x.shape
  c = cr // (r * r)
  out = np.zeros((n, h * r, w * r, c), x.dtype)
  for ch in range(c):
    for i in range(r):
      for j in range(r):
        out[:, i::r, j::r, ch] = x[:, :, :, ch * r * r + i * r + j]
  return out


@pytest.mark.parametrize("r", [2, 3])
def test_pixel_shuffle_matches_numpy_reference(r):
  x = np.random.default_rng(0).normal(size=(2, 3, 5, 2 * r * r)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(layers.pixel_shuffle(jnp.asarray(x), r)), _pixel_shuffle_reference(x, r))


def test_pixel_shuffle_bad_args():
  with pytest.raises(ValueError, match="divisible"):
    layers.pixel_shuffle(jnp.zeros((1, 2, 2, 6)), 2)
  with pytest.raises(ValueError, match="positive int"):
    layers.pixel_shuffle(jnp.zeros((1, 2, 2, 4)), 0)


@pytest.mark.parametrize(
  "size, stride, padding",
  [
    (2, 1, "SAME"),
    (4, 2, "SAME"),
    (5, 2, "SAME"),
    (5, 1, "VALID"),
    (4, 1, ((1, 0), (2, 1))),
    (8, 1, "SAME"),
  ],
)
def test_conv_fast_matches_xla(size, stride, padding):
  x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
  w = np.random.default_rng(1).normal(size=(3, 3, 3, 4)).astype(np.float32)
  dn = ("NHWC", "HWIO", "NHWC")
  ref = jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=dn, precision="highest")
  got = layers.conv_general_dilated(
    jnp.asarray(x), jnp.asarray(w), (stride, stride), padding, dimension_numbers=dn, precision="highest"
  )
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_subpixel_icnr_init_is_nearest_neighbour_upsampling():
  block = ae.UpBlock(8, 8, mode="subpixel", resize_method="nearest", rngs=nnx.Rngs(key(0)))
  x = jax.random.normal(key(1), (1, 4, 4, 8))
  y = np.asarray(layers.pixel_shuffle(block.conv(x), 2))
  for i in range(2):
    for j in range(2):
      np.testing.assert_allclose(y[:, i::2, j::2], y[:, ::2, ::2], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("kind", ae.KINDS)
@pytest.mark.parametrize("image_size", [32, 64, 128])
def test_output_shapes_every_kind_size_and_upsample(kind, image_size):
  n = 2
  labels = jnp.array([0, 1])

  for upsample in ae.UPSAMPLE_MODES:

    def forward(x, z):  # traced abstractly: shapes only, nothing compiled or run
      model = tiny(kind, image_size, upsample=upsample)
      out, mean, logvar = model(x, train=True, labels=labels, rngs=nnx.Rngs(sample=key(1)))
      return out, mean, logvar, model.generate(z, labels=labels)

    x = jax.ShapeDtypeStruct((n, image_size, image_size, 3), jnp.float32)
    z = jax.ShapeDtypeStruct((n, LATENT), jnp.float32)
    out, mean, logvar, gen = jax.eval_shape(forward, x, z)
    assert out.shape == gen.shape == (n, image_size, image_size, 3), upsample
    assert mean.shape == (n, LATENT)
    if kind == "dae":
      assert logvar is None
    else:
      assert logvar.shape == (n, LATENT)


def test_encode_reconstruct_shapes():
  x = jnp.zeros((2, 32, 32, 3))
  labels = jnp.array([0, 1])
  for kind in ae.KINDS:

    def forward(x):
      model = _cached(kind)
      return model.encode(x, train=False, labels=labels), model.reconstruct(x, train=False, labels=labels)

    (mean, logvar), rec = jax.eval_shape(forward, x)
    assert mean.shape == (2, LATENT) and rec.shape == x.shape
    assert (logvar is None) == (kind == "dae")


def test_default_channels_and_attributes():
  dae = nnx.eval_shape(lambda: ae.create_autoencoder("dae", image_size=32, rngs=nnx.Rngs(key(0))))
  vae = nnx.eval_shape(lambda: ae.create_autoencoder("vae", image_size=32, rngs=nnx.Rngs(key(0))))
  cvae = nnx.eval_shape(lambda: ae.create_autoencoder("cvae", image_size=32, num_classes=3, rngs=nnx.Rngs(key(0))))
  assert (dae.kind, dae.channels, dae.latent_dim, dae.num_classes, dae.conditional) == (
    "dae",
    (32, 64, 128, 256),
    128,
    0,
    False,
  )
  assert (vae.kind, vae.channels, vae.num_classes, vae.conditional) == ("vae", (32, 64, 128, 256, 512), 0, False)
  assert (cvae.kind, cvae.num_classes, cvae.conditional) == ("cvae", 3, True)
  assert isinstance(cvae, ae.CVAE) and isinstance(cvae, ae.VAE)
  for m in (dae, vae, cvae):
    assert (m.image_size, m.likelihood, m.upsample, m.log_scale) == (32, "bernoulli", "subpixel", None)
  assert cvae.enc_convs[0].in_features == 3 + 3  # label channels on the encoder input
  assert cvae.dec_dense.in_features == 128 + 3  # label concatenated to z


def test_gaussian_likelihood_scale():
  model = cached("vae", "gaussian")
  assert isinstance(model.log_scale, nnx.Param) and model.log_scale.shape == ()
  assert "log_scale" in nnx.state(model, nnx.Param)  # trained with the other parameters
  np.testing.assert_allclose(float(model.output_log_scale()), math.log(0.1), rtol=1e-6)
  fixed = nnx.eval_shape(lambda: tiny("vae", likelihood="gaussian", learned_scale=False, fixed_scale=0.2))
  assert fixed.log_scale is None
  np.testing.assert_allclose(float(fixed.output_log_scale()), math.log(0.2), rtol=1e-6)
  assert cached("vae").output_log_scale() is None
  # gaussian decoder outputs are means in [0, 1]; generate == decode for them
  z = jax.random.normal(key(0), (2, LATENT))
  out = model.decode(z, train=False)
  assert float(out.min()) >= 0 and float(out.max()) <= 1
  np.testing.assert_allclose(model.generate(z), out)


# ----------------------------------------------------------------------------- losses


def test_kl_divergence_closed_form():
  # KL = 0.5 * sum(exp(logvar) + mean^2 - 1 - logvar)
  #   dim 1: mean 1, var 1 -> 0.5 * (1 + 1 - 1 - 0)        = 0.5
  #   dim 2: mean 0, var 4 -> 0.5 * (4 + 0 - 1 - log 4)    = 1.5 - log 2
  #   total = 2 - log 2 = 1.30685...
  mean = jnp.array([[1.0, 0.0], [0.0, 0.0]])
  logvar = jnp.array([[0.0, math.log(4.0)], [0.0, 0.0]])
  kl = ae.kl_divergence(mean, logvar)
  assert kl.shape == (2,)
  np.testing.assert_allclose(np.asarray(kl), [2.0 - math.log(2.0), 0.0], rtol=1e-6, atol=1e-7)


def test_reconstruction_nll_gaussian_hand_formula():
  rng = np.random.default_rng(0)
  means = rng.uniform(size=(3, 4, 4, 3)).astype(np.float32)
  targets = rng.uniform(size=(3, 4, 4, 3)).astype(np.float32)
  log_scale = math.log(0.3)
  sigma = 0.3
  per_pixel = 0.5 * ((targets - means) / sigma) ** 2 + math.log(sigma) + 0.5 * math.log(2 * math.pi)
  expected = per_pixel.reshape(3, -1).sum(-1)
  got = ae.reconstruction_nll(jnp.asarray(means), jnp.asarray(targets), "gaussian", log_scale)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)
  got_param = ae.reconstruction_nll(
    jnp.asarray(means), jnp.asarray(targets), "gaussian", nnx.Param(jnp.asarray(log_scale))
  )
  np.testing.assert_allclose(np.asarray(got_param), expected, rtol=1e-5)
  with pytest.raises(ValueError, match="log_scale"):
    ae.reconstruction_nll(jnp.asarray(means), jnp.asarray(targets), "gaussian")


def test_reconstruction_nll_bernoulli_is_bce():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 3, 3, 3)).astype(np.float32)
  targets = rng.uniform(size=(2, 3, 3, 3)).astype(np.float32)
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  expected = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).reshape(2, -1).sum(-1)
  got = ae.reconstruction_nll(jnp.asarray(logits), jnp.asarray(targets), "bernoulli")
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)
  with pytest.raises(ValueError, match="likelihood"):
    ae.reconstruction_nll(jnp.asarray(logits), jnp.asarray(targets), "laplace")
  with pytest.raises(ValueError, match="shape"):
    ae.reconstruction_nll(jnp.asarray(logits), jnp.asarray(targets[:1]), "bernoulli")


def test_beta_schedule_warmup():
  values = [float(ae.beta_schedule(s, beta=2.0, warmup_steps=10)) for s in (0, 5, 10, 50)]
  np.testing.assert_allclose(values, [0.0, 1.0, 2.0, 2.0])
  assert float(ae.beta_schedule(0, beta=0.5, warmup_steps=0)) == 0.5
  jitted = jax.jit(lambda s: ae.beta_schedule(s, beta=1.0, warmup_steps=4))
  np.testing.assert_allclose([float(jitted(jnp.int32(s))) for s in (1, 2, 8)], [0.25, 0.5, 1.0])
  with pytest.raises(ValueError, match="beta"):
    ae.beta_schedule(0, beta=-1.0, warmup_steps=10)
  with pytest.raises(ValueError, match="warmup_steps"):
    ae.beta_schedule(0, beta=1.0, warmup_steps=-1)


def test_reparameterize_statistics():
  n = 200_000
  mean = jnp.broadcast_to(jnp.array([1.0, -2.0]), (n, 2))
  logvar = jnp.broadcast_to(jnp.array([0.0, math.log(4.0)]), (n, 2))
  z = np.asarray(ae.reparameterize(mean, logvar, key(0)))
  np.testing.assert_allclose(z.mean(0), [1.0, -2.0], atol=0.02)
  np.testing.assert_allclose(z.std(0), [1.0, 2.0], rtol=0.02)
  assert abs(np.corrcoef(z.T)[0, 1]) < 0.01
  # different keys, different samples; same key, same sample
  z2 = np.asarray(ae.reparameterize(mean[:4], logvar[:4], key(1)))
  assert not np.allclose(z2, z[:4])


# ----------------------------------------------------------------------------- conditioning


def test_cvae_uses_the_label():
  model = cached("cvae")
  z = jax.random.normal(key(0), (2, LATENT))
  zeros, ones = jnp.zeros(2, jnp.int32), jnp.ones(2, jnp.int32)
  img0, img1 = model.generate(z, labels=zeros), model.generate(z, labels=ones)
  assert float(jnp.abs(img0 - img1).max()) > 1e-4
  # float one-hot vectors are the same as int ids
  np.testing.assert_allclose(model.generate(z, labels=jax.nn.one_hot(ones, 2)), img1, rtol=1e-5, atol=1e-6)
  x = jax.random.uniform(key(1), (2, 32, 32, 3))
  (m0, lv0), (m1, lv1) = model.encode(x, train=False, labels=zeros), model.encode(x, train=False, labels=ones)
  assert float(jnp.abs(m0 - m1).max()) > 1e-5 and float(jnp.abs(lv0 - lv1).max()) > 1e-5
  with pytest.raises(ValueError, match="labels"):
    model.generate(z)
  with pytest.raises(ValueError, match="labels"):
    model.generate(z, labels=jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match="labels"):
    model.generate(z, labels=jnp.zeros(3, jnp.int32))


def test_unconditional_models_ignore_labels():
  for kind in ("dae", "vae"):
    model = cached(kind)
    z = jax.random.normal(key(0), (2, LATENT))
    np.testing.assert_array_equal(model.generate(z), model.generate(z, labels=jnp.array([0, 1])))


def test_reconstruct_posterior_mean_or_sample():
  model = cached("vae")
  x = jax.random.uniform(key(2), (2, 32, 32, 3))
  mean, _ = model.encode(x, train=False)
  mean_rec = model.reconstruct(x, train=False)
  np.testing.assert_allclose(mean_rec, model.generate(mean), rtol=1e-5, atol=1e-6)
  sampled = model.reconstruct(x, train=False, rngs=key(3), sample=True)
  assert sampled.shape == x.shape and float(jnp.abs(sampled - mean_rec).max()) > 1e-5
  with pytest.raises(ValueError, match="rngs"):
    model.reconstruct(x, train=False, sample=True)


# ----------------------------------------------------------------------------- noise


def _uniform_images(n=32, size=32, seed=0):
  return jax.random.uniform(key(seed), (n, size, size, 3), minval=0.05, maxval=0.95)


def test_gaussian_noise_std_and_identity():
  x = jnp.full((32, 32, 32, 3), 0.5)
  y = corrupt(x, key(0), NoiseConfig("gaussian", sigma=0.1))
  diff = np.asarray(y - x)
  assert abs(diff.std() - 0.1) < 0.005 and abs(diff.mean()) < 0.005
  assert not np.allclose(diff[0], diff[1])  # per-example noise
  wide = corrupt(x, key(0), NoiseConfig("gaussian", sigma=2.0))
  assert float(wide.min()) == 0.0 and float(wide.max()) == 1.0  # clipped to [0, 1]
  xr = _uniform_images()
  np.testing.assert_array_equal(corrupt(xr, key(0), NoiseConfig("gaussian", sigma=0.0)), xr)


def test_salt_pepper_fraction_values_and_identity():
  x = _uniform_images()
  y = np.asarray(corrupt(x, key(0), NoiseConfig("salt_pepper", p=0.1)))
  changed = np.any(y != np.asarray(x), axis=-1)  # (N, H, W)
  assert abs(changed.mean() - 0.1) < 0.01
  vals = y[changed]  # (k, 3): all channels of a replaced pixel are the same 0 or 1
  assert np.all((vals == 0) | (vals == 1)) and np.all(vals == vals[:, :1])
  assert abs((vals[:, 0] == 0).mean() - 0.5) < 0.05
  np.testing.assert_array_equal(corrupt(x, key(0), NoiseConfig("salt_pepper", p=0.0)), x)


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_masking_area_rectangle_and_identity(fraction):
  x = _uniform_images()
  y = np.asarray(corrupt(x, key(3), NoiseConfig("masking", mask_fraction=fraction)))
  masked = np.all(y == 0.5, axis=-1)  # uniform inputs are never exactly 0.5
  areas = masked.reshape(32, -1).mean(-1)
  assert np.all(np.abs(areas - fraction) < 0.05), areas
  for m in masked:  # one filled axis-aligned rectangle
    rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    assert m[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    assert m.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
  np.testing.assert_array_equal(y[~masked], np.asarray(x)[~masked])
  positions = {tuple(np.argwhere(m)[0]) for m in masked}
  assert len(positions) > 5  # random per example
  np.testing.assert_array_equal(corrupt(x, key(0), NoiseConfig("masking", mask_fraction=0.0)), x)


def test_noise_jit_and_validation():
  x = _uniform_images()
  for kind in NOISE_KINDS:
    config = NoiseConfig(kind)
    fn = jax.jit(corrupt, static_argnums=2)
    y = fn(x, jax.random.key(0), config)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0 and float(y.max()) <= 1
  for kwargs, field in [
    ({"kind": "blur"}, "kind"),
    ({"sigma": -0.1}, "sigma"),
    ({"p": 1.5}, "p"),
    ({"mask_fraction": -0.2}, "mask_fraction"),
    ({"sigma": float("nan")}, "sigma"),
  ]:
    with pytest.raises(ValueError, match=field):
      NoiseConfig(**kwargs)
  with pytest.raises(ValueError, match="NoiseConfig"):
    corrupt(x, jax.random.key(0), {"kind": "gaussian"})
  with pytest.raises(ValueError, match="float"):
    corrupt(jnp.zeros((1, 4, 4, 3), jnp.uint8), jax.random.key(0), NoiseConfig())


# ----------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
  "kind, kwargs, match",
  [
    ("gan", {}, "kind"),
    ("vae", {"depth": 3}, "unknown option"),
    ("vae", {"image_size": 48}, "divisible"),
    ("dae", {"image_size": 40}, "divisible"),
    ("vae", {"upsample": "deconv"}, "upsample"),
    ("vae", {"likelihood": "laplace"}, "likelihood"),
    ("vae", {"resize_method": "bicubic"}, "resize_method"),
    ("vae", {"latent_dim": 0}, "latent_dim"),
    ("vae", {"channels": ()}, "channels"),
    ("vae", {"fixed_scale": 0.0}, "fixed_scale"),
    ("cvae", {"num_classes": 1}, "num_classes"),
  ],
)
def test_bad_arguments_raise(kind, kwargs, match):
  kwargs = {"image_size": 32, "channels": (4, 4, 4, 4, 4), **kwargs}
  if kind == "dae" and kwargs["channels"] == (4, 4, 4, 4, 4):
    kwargs["channels"] = (4, 4, 4, 4)
  with pytest.raises(ValueError, match=match):
    nnx.eval_shape(lambda: ae.create_autoencoder(kind, rngs=nnx.Rngs(key(0)), **kwargs))


def test_bad_constructor_and_call_arguments():
  with pytest.raises(ValueError, match="num_classes"):
    ae.VAE(image_size=32, channels=(4,) * 5, num_classes=1, rngs=nnx.Rngs(key(0)))
  with pytest.raises(ValueError, match="num_classes"):
    ae.CVAE(image_size=32, channels=(4,) * 5, num_classes=0, rngs=nnx.Rngs(key(0)))
  model = cached("vae")
  with pytest.raises(ValueError, match="expects images"):
    model.encode(jnp.zeros((1, 64, 64, 3)), train=False)
  with pytest.raises(ValueError, match="rngs"):
    model(jnp.zeros((1, 32, 32, 3)), train=True)
  with pytest.raises(ValueError, match="z must be"):
    model.decode(jnp.zeros((1, LATENT + 1)), train=False)
  with pytest.raises(ValueError, match="shape"):
    ae.kl_divergence(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


# ----------------------------------------------------------------------------- training on real crops

K12_TRAIN = ("face-mask-12k", "Face Mask Dataset", "Train")


@pytest.fixture(scope="module")
def face_batch():
  root = sources.default_raw_root()
  base = None if root is None else root.joinpath(*K12_TRAIN)
  if base is None or not base.is_dir():
    pytest.skip("real face-mask-12k data not found")
  images, labels = [], []
  for label, folder in enumerate(("WithoutMask", "WithMask")):
    files = sorted(Path(base, folder).glob("*.jpg"))[:16]
    for f in files:
      with Image.open(f) as im:
        images.append(np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR)))
      labels.append(label)
  x = jnp.asarray(np.stack(images), jnp.float32) / 255.0
  return x, jnp.asarray(labels, jnp.int32)


def _train(model, x, labels, steps, loss_kind):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)
  noise = NoiseConfig("gaussian", sigma=0.1)

  def step(params, rest, opt_state, key):
    model = nnx.merge(graphdef, params, rest)
    noise_key, sample_key = jax.random.split(key)

    def loss_fn(model):
      if loss_kind == "dae":
        out, _, _ = model(corrupt(x, noise_key, noise), train=True)
        return model.reconstruction_nll(out, x).mean()
      out, mean, logvar = model(x, train=True, labels=labels, rngs=nnx.Rngs(sample=sample_key))
      loss, _, _ = ae.negative_elbo(out, x, mean, logvar, model.likelihood, model.output_log_scale(), 1.0)
      return loss.mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    _, _, new_rest = nnx.split(model, nnx.Param, ...)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_rest, opt_state, loss

  step = jax.jit(step).lower(params, rest, opt_state, key(0)).compile(compiler_options=FAST_COMPILE)
  losses = []
  for i in range(steps):
    params, rest, opt_state, loss = step(params, rest, opt_state, key(i))
    losses.append(float(loss))
  nnx.update(model, params, rest)
  return losses


@pytest.mark.parametrize("kind, likelihood", [("dae", "bernoulli"), ("vae", "gaussian"), ("cvae", "bernoulli")])
def test_a_few_steps_lower_the_loss_on_real_faces(face_batch, kind, likelihood):
  x, labels = face_batch
  model = cached(kind, likelihood)
  losses = _train(model, x, labels, 15, kind)
  assert all(math.isfinite(v) for v in losses), losses
  final = float(np.mean(losses[-3:]))
  # BCE against real-valued pixels has a floor (the targets' entropy, ~1900 nats here), so the
  # drop is judged in absolute terms: > 5% of the initial loss (about 110 nats per image).
  assert final < losses[0] - 0.05 * abs(losses[0]), losses
  images = model.reconstruct(x[:4], train=False, labels=labels[:4])
  assert images.shape == (4, 32, 32, 3) and float(images.min()) >= 0 and float(images.max()) <= 1


def test_bfloat16_compute_train_step_keeps_float32_params():
  """dtype="bfloat16": the convs run in bf16, while parameters, BatchNorm statistics, the
  codes, the decoder output and the loss stay float32."""
  model = tiny("cvae", dtype="bfloat16")
  x = jnp.asarray(np.random.default_rng(5).uniform(size=(4, 32, 32, 3)).astype(np.float32))
  labels = jnp.array([0, 1, 0, 1])
  forward = lambda x: model(x, train=False, labels=labels, rngs=key(1))  # noqa: E731
  jaxpr = jax.make_jaxpr(forward)(x)
  convs = [e for e in jaxpr.jaxpr.eqns if str(e.primitive) == "conv_general_dilated"]
  assert convs and all(e.invars[0].aval.dtype == jnp.bfloat16 for e in convs)
  out, mean, logvar = jax.eval_shape(forward, x)
  assert out.dtype == mean.dtype == logvar.dtype == jnp.float32
  losses = _train(model, x, labels, 3, "cvae")
  assert all(math.isfinite(v) for v in losses), losses
  dtypes = {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))}
  dtypes |= {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model, nnx.BatchStat))}
  assert dtypes == {jnp.dtype(jnp.float32)}
